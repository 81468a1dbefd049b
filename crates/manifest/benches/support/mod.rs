//! Shared by the benches: reading criterion's medians back and printing keepsake/baseline ratios.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where criterion writes its estimates: `$CRITERION_HOME`, `$CARGO_TARGET_DIR/criterion`, or
/// `<target>/criterion` derived from this executable's path (`<target>/release/deps/<bench>`).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Path::new(&target).join("criterion");
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .nth(3)
        .map(|target| target.join("criterion"))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// The median time in nanoseconds of `<group>/<id>`, if measured by this run.
pub(crate) fn median_ns(group: &str, id: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// One line of the ratio table: keepsake's bench and the baseline it is compared with.
pub(crate) struct Pair {
    pub(crate) group: &'static str,
    pub(crate) keepsake: String,
    pub(crate) baseline: String,
    /// Bytes processed per iteration, for a throughput column (0: none).
    pub(crate) bytes: u64,
}

fn human(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// Prints medians and ratios (keepsake / baseline) of the pairs measured since `since`.
pub(crate) fn print_ratios(title: &str, pairs: &[Pair], since: SystemTime) {
    println!(
        "\n{title}: medians of this run, ratio = keepsake / baseline (target <= the stated bound)"
    );
    println!(
        "{:<58} {:>11} {:>11} {:>7} {:>10}",
        "keepsake vs baseline", "keepsake", "baseline", "ratio", "MiB/s"
    );
    for pair in pairs {
        let (Some(k), Some(b)) = (
            median_ns(pair.group, &pair.keepsake, since),
            median_ns(pair.group, &pair.baseline, since),
        ) else {
            continue;
        };
        let throughput = if pair.bytes > 0 {
            format!("{:.0}", pair.bytes as f64 / (k / 1e9) / (1024.0 * 1024.0))
        } else {
            String::new()
        };
        println!(
            "{:<58} {:>11} {:>11} {:>7.3} {:>10}",
            format!("{}/{} vs {}", pair.group, pair.keepsake, pair.baseline),
            human(k),
            human(b),
            k / b,
            throughput
        );
    }
}
