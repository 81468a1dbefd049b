//! `cargo xtask syscalls`: the system calls per operation of keepsake-datastore's API bench
//! (`benches/api.rs`) and of each operation's floor, counted with `strace -f`.
//!
//! The bench binary, run with `KEEPSAKE_COUNT=<operation>`, sets up its fixture, then runs the
//! operation `n` times between two marker calls (a stat of `/keepsake-count/start` and of
//! `/keepsake-count/end`); only the calls between the markers are counted, so neither the setup
//! nor the teardown (removing the temporary store) is. strace is a Debian package: installed
//! with apt-get when missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, run};

/// The operations of the bench's counting mode; each has a `.floor` twin.
const OPERATIONS: &[(&str, &str)] = &[
    (
        "list_backups",
        "iter_groups -> list_backups, 10,000 snapshots (per listing)",
    ),
    ("load_manifest", "Snapshot::load_manifest"),
    ("set.none", "set_protected(true), sync none"),
    ("clear.none", "set_protected(false), sync none"),
    ("set.filesystem", "set_protected(true), sync filesystem"),
    ("clear.filesystem", "set_protected(false), sync filesystem"),
    ("update_manifest", "update_manifest, sync none"),
    ("lock", "Snapshot::lock"),
    ("lock_shared", "Snapshot::lock_shared"),
    ("group_lock", "Group::lock"),
];

pub(crate) fn run_all(root: &Path, args: &[String]) -> Result<()> {
    let n: usize = match args {
        [] => 200,
        [flag, n] if flag == "-n" => n.parse().context("-n takes a number")?,
        _ => bail!("usage: cargo xtask syscalls [-n OPERATIONS]"),
    };
    ensure_strace()?;
    let exe = build_bench(root)?;
    let scratch = root.join("target").join("syscalls");
    std::fs::create_dir_all(&scratch)?;
    println!("| operation | keepsake calls/op | keepsake calls | floor calls/op | floor calls |");
    println!("|---|---|---|---|---|");
    for (operation, title) in OPERATIONS {
        // A listing makes tens of thousands of calls: a few suffice.
        let n = if operation.starts_with("list") { 3 } else { n };
        let ours = count(&exe, &scratch, operation, n)?;
        let floor = count(&exe, &scratch, &format!("{operation}.floor"), n)?;
        println!(
            "| {title} | {} | {} | {} | {} |",
            per_op(&ours, n),
            breakdown(&ours, n),
            per_op(&floor, n),
            breakdown(&floor, n)
        );
    }
    Ok(())
}

fn ensure_strace() -> Result<()> {
    if Command::new("strace").arg("-V").output().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: installing strace (apt-get)");
    run(Command::new("apt-get").args(["install", "-y", "--no-install-recommends", "strace"]))
}

/// Builds the bench and returns its executable (from cargo's JSON messages).
fn build_bench(root: &Path) -> Result<PathBuf> {
    let output = cargo()
        .current_dir(root)
        .args([
            "bench",
            "--locked",
            "-p",
            "keepsake-datastore",
            "--bench",
            "api",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo bench --no-run")?;
    if !output.status.success() {
        bail!("building the api bench failed");
    }
    for line in output.stdout.split(|b| *b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if message["target"]["name"] == "api" {
            if let Some(exe) = message["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo built no executable for the api bench")
}

/// The calls (by name) the bench makes for `n` runs of `operation`.
fn count(exe: &Path, scratch: &Path, operation: &str, n: usize) -> Result<BTreeMap<String, usize>> {
    let trace = scratch.join(format!("{operation}.trace"));
    let status = Command::new("strace")
        .arg("-f")
        .arg("-o")
        .arg(&trace)
        .arg(exe)
        .env("KEEPSAKE_COUNT", operation)
        .env("KEEPSAKE_COUNT_N", n.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run strace")?;
    if !status.success() {
        bail!("{operation}: the bench failed under strace ({status})");
    }
    let text = std::fs::read_to_string(&trace)?;
    let mut calls = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        if line.contains("/keepsake-count/start") {
            inside = true;
            continue;
        }
        if line.contains("/keepsake-count/end") {
            std::fs::remove_file(&trace)?;
            return Ok(calls);
        }
        if !inside || line.contains("resumed>") || line.contains("+++") || line.contains("---") {
            continue;
        }
        // `[pid] name(args) = result`: with -f the pid comes first.
        let call = line
            .trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ')
            .split('(')
            .next()
            .unwrap_or_default();
        if !call.is_empty() && call.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            *calls.entry(call.to_owned()).or_insert(0) += 1;
        }
    }
    bail!("{operation}: the trace has no end marker")
}

fn per_op(calls: &BTreeMap<String, usize>, n: usize) -> String {
    format_count(calls.values().sum::<usize>(), n)
}

fn breakdown(calls: &BTreeMap<String, usize>, n: usize) -> String {
    let mut by_count: Vec<_> = calls.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    by_count
        .iter()
        // Calls made once in hundreds of operations (an allocator growing its heap) are noise.
        .filter(|(_, count)| **count * 20 >= n)
        .map(|(name, count)| format!("{name} {}", format_count(**count, n)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn format_count(count: usize, n: usize) -> String {
    if count % n == 0 {
        (count / n).to_string()
    } else {
        format!("{:.2}", count as f64 / n as f64)
    }
}
