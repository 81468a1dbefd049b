//! `cargo xtask fuzz`: the cargo-fuzz (libFuzzer) targets of `fuzz/`, each for a set time.
//!
//! cargo-fuzz is installed on first use into `<target dir>/tools` (from crates.io, pinned by
//! `--locked`). libFuzzer's instrumentation needs nightly compiler flags: the `nightly` toolchain
//! when rustup has it, else the stable compiler with `RUSTC_BOOTSTRAP=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Every target in `fuzz/Cargo.toml`.
pub(crate) const TARGETS: [&str; 6] = [
    "blob_decode",
    "manifest_parse",
    "index_read",
    "names",
    "group_filter",
    "keyfile_parse",
];

const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let (secs, targets) = parse_args(args)?;
    let tool = install(root)?;
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut summary = Vec::new();
    for target in &targets {
        eprintln!("xtask fuzz: {target} for {secs} s");
        let mut cmd = Command::new(&tool);
        cmd.current_dir(root)
            .args(["fuzz", "run", "--fuzz-dir", "fuzz", target, "--"])
            .arg(format!("-max_total_time={secs}"))
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1")
            .stderr(Stdio::piped());
        if nightly {
            cmd.env("RUSTUP_TOOLCHAIN", "nightly");
        } else {
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
        let started = Instant::now();
        let output = cmd
            .output()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_else(|| "?".to_owned());
        if !output.status.success() {
            eprintln!("{log}");
            bail!(
                "fuzz target {target} failed after {runs} runs ({:?}): see the crash file above",
                started.elapsed()
            );
        }
        summary.push(format!(
            "{target}: {runs} executions in {:.0} s, 0 crashes",
            started.elapsed().as_secs_f64()
        ));
    }
    println!("xtask fuzz: every target ran without a crash");
    for line in summary {
        println!("  {line}");
    }
    Ok(())
}

/// Checks the fuzz targets' formatting and types (without libFuzzer's instrumentation, so on the
/// stable compiler), with the fuzz crate's own lock file.
pub(crate) fn check(root: &Path) -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    crate::run(
        crate::cargo()
            .current_dir(root.join("fuzz"))
            .args(["fmt", "--", "--check"]),
    )?;
    crate::run(
        crate::cargo()
            .current_dir(root.join("fuzz"))
            .args(["check", "--locked", "--bins"])
            .env("CARGO_TARGET_DIR", target.join("fuzz-check")),
    )
}

fn parse_args(args: &[String]) -> Result<(u64, Vec<String>)> {
    let mut secs = 60;
    let mut targets = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--secs" {
            let n = rest.next().context("--secs needs a number of seconds")?;
            secs = n
                .parse()
                .with_context(|| format!("--secs {n:?}: not a number of seconds"))?;
        } else if TARGETS.contains(&arg.as_str()) {
            targets.push(arg.clone());
        } else {
            bail!(
                "usage: cargo xtask fuzz [--secs N] [TARGET...]; targets: {}",
                TARGETS.join(", ")
            );
        }
    }
    if targets.is_empty() {
        targets = TARGETS.map(str::to_owned).to_vec();
    }
    Ok((secs, targets))
}

/// The cargo-fuzz binary, installed into the target dir's `tools` on first use.
fn install(root: &Path) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let tools = target.join("tools");
    let tool = tools.join("bin").join("cargo-fuzz");
    if tool.exists() {
        return Ok(tool);
    }
    eprintln!(
        "xtask fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {}",
        tools.display()
    );
    crate::run(
        crate::cargo()
            .args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                CARGO_FUZZ_VERSION,
            ])
            .arg("--root")
            .arg(&tools)
            .env("CARGO_TARGET_DIR", target.join("tools-build")),
    )?;
    Ok(tool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let all = parse_args(&[]).unwrap();
        assert_eq!(all.0, 60);
        assert_eq!(all.1.len(), TARGETS.len());
        let some = parse_args(&["--secs".into(), "5".into(), "names".into()]).unwrap();
        assert_eq!(some, (5, vec!["names".to_owned()]));
        assert!(parse_args(&["nope".into()]).is_err());
        assert!(parse_args(&["--secs".into()]).is_err());
    }

    #[test]
    fn every_target_has_a_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();
        for target in TARGETS {
            assert!(root.join(format!("fuzz/fuzz_targets/{target}.rs")).exists());
            assert!(manifest.contains(&format!("name = \"{target}\"")));
        }
    }
}
