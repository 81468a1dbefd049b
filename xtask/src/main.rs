//! `cargo xtask`: the one entry point for the workspace's developer tasks.
//!
//! ```text
//! cargo xtask ci        fmt check, clippy (-D warnings), layering, deps, fuzz targets build, tests (with the S3 server), package, rustdoc (-D warnings)
//! cargo xtask test      every test of the workspace (or those the cargo test args select), with a
//!                       real S3 server (moto) on loopback
//! cargo xtask stress    the multi-process stress test of keepsake-datastore (local and S3),
//!                       `--secs N` per backend (default 30; `cargo xtask ci` runs it for 4 s)
//! cargo xtask fuzz      the cargo-fuzz targets of `fuzz/`, `--secs N` each (default 60)
//! cargo xtask bench     the criterion benches (extra arguments go to `cargo bench`)
//! cargo xtask s3        start the S3 test server and print its endpoint until Ctrl-C
//! cargo xtask syscalls  system calls per operation of keepsake-datastore's API bench and of
//!                       each operation's floor, counted with strace (installed if missing)
//! cargo xtask layering  only the crate layering check
//! cargo xtask deps      crates built without `s3` have no tokio, object_store, HTTP or TLS crate;
//!                       their clippy and tests pass without default features
//! cargo xtask package   `cargo package` of every publishable crate, each built from its .crate
//!                       alone (`--no-verify`: package only)
//! cargo xtask man       the CLI's man pages and bash, zsh and fish completions, written into
//!                       crates/cli/doc (shipped in its package; a test checks they are current)
//! cargo xtask gen-store DIR [options]
//!                       writes a datastore of generated backups (the package
//!                       `xtask-gen-store`, built in release; `--help` lists the options)
//! ```

mod deps;
mod fuzz;
mod layering;
mod moto;
mod package;
mod syscalls;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Paths the user gives (gen-store's DIR) are relative to where they ran cargo.
    let invoked_in = std::env::current_dir().context("cannot read the current folder")?;
    let root = workspace_root();
    std::env::set_current_dir(&root)
        .with_context(|| format!("cannot enter workspace root {}", root.display()))?;
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => ("help", &[][..]),
    };
    match task {
        "ci" => ci(&root),
        "test" => test(&root, rest),
        "stress" => stress(&root, rest),
        "fuzz" => fuzz::run(&root, rest),
        "bench" => bench(&root, rest),
        "s3" => s3(&root),
        "syscalls" => syscalls::run_all(&root, rest),
        "layering" => layering::check_workspace(&root),
        "deps" => deps::check(&root),
        "package" => package::check(&root, rest),
        "gen-store" => gen_store(&invoked_in, rest),
        "man" => man(&root),
        "help" | "--help" | "-h" => {
            print_help();
            Ok(())
        }
        other => {
            print_help();
            bail!("unknown task {other:?}")
        }
    }
}

fn print_help() {
    eprintln!(
        "usage: cargo xtask <task>\n\n\
         tasks:\n  \
         ci        fmt, clippy -D warnings, layering, deps, fuzz targets build, tests (with S3), package, rustdoc -D warnings\n  \
         test      all tests with a real S3 server (moto) on loopback [cargo test args to select]\n  \
         stress    multi-process stress of keepsake-datastore on local and S3 [--secs N, default 30]\n  \
         fuzz      cargo-fuzz targets of fuzz/ [--secs N, default 60] [TARGET...]\n  \
         bench     criterion benches [extra cargo bench args]\n  \
         s3        start the S3 test server and print its endpoint\n  \
         syscalls  system calls per operation of the API bench and its floors (strace) [-n N]\n  \
         layering  check the crate dependency edges against docs/ARCHITECTURE.md\n  \
         deps      without `s3`: no tokio/object_store/HTTP/TLS crate, clippy and tests pass\n  \
         package   cargo package of every publishable crate, built from its .crate [--no-verify]\n  \
         man       write the CLI's man pages and shell completions into crates/cli/doc\n  \
         gen-store DIR [options]: write a datastore of generated backups (--help for the options)"
    );
}

/// `keepsake docs` into crates/cli/doc, after emptying what it writes (a command removed loses
/// its page).
fn man(root: &Path) -> Result<()> {
    let doc = root.join("crates/cli/doc");
    for folder in ["man", "completions"] {
        let path = doc.join(folder);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot empty {}", path.display())),
        }
    }
    run(cargo()
        .args([
            "run",
            "--quiet",
            "-p",
            "keepsake-cli",
            "--bin",
            "keepsake",
            "--",
            "docs",
        ])
        .arg(&doc))
}

fn workspace_root() -> PathBuf {
    // xtask lives in <root>/xtask.
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

fn ci(root: &Path) -> Result<()> {
    step("fmt", || {
        run(cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    step("clippy", || {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step("layering", || layering::check_workspace(root))?;
    step("deps", || deps::check(root))?;
    // The fuzz targets live outside the workspace (libFuzzer's flags); CI checks that they still
    // compile against the crates' APIs, and `cargo xtask fuzz` runs them.
    step("fuzz targets", || fuzz::check(root))?;
    step("test", || test(root, &[]))?;
    step("package", || package::check(root, &[]))?;
    step("rustdoc", || {
        run(cargo()
            .args(["doc", "--workspace", "--no-deps", "--locked"])
            .env("RUSTDOCFLAGS", "-D warnings"))
    })?;
    eprintln!("xtask ci: all steps passed");
    Ok(())
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    test_with_env(root, extra, &[])
}

/// `cargo xtask stress [--secs N]`: crates/datastore/tests/stress.rs for N seconds per backend,
/// with the S3 server, printing its figures. (`cargo xtask ci` runs the same test with its short
/// default as part of every test.)
fn stress(root: &Path, args: &[String]) -> Result<()> {
    let secs = match args {
        [] => 30,
        [flag, n] if flag == "--secs" => n
            .parse::<u64>()
            .with_context(|| format!("--secs {n:?}: not a number of seconds"))?,
        _ => bail!("usage: cargo xtask stress [--secs N]"),
    };
    let selection: Vec<String> = [
        "-p",
        "keepsake-datastore",
        "--test",
        "stress",
        "--",
        "--nocapture",
    ]
    .map(str::to_owned)
    .to_vec();
    test_with_env(
        root,
        &selection,
        &[("KEEPSAKE_STRESS_SECS", secs.to_string())],
    )
}

fn test_with_env(root: &Path, extra: &[String], env: &[(&str, String)]) -> Result<()> {
    // With no arguments every test of the workspace; otherwise the arguments select, as for
    // `cargo test` (`cargo xtask test -p keepsake-datastore --test moves -- --nocapture`).
    let selection: Vec<String> = if extra.is_empty() {
        vec!["--workspace".to_owned()]
    } else {
        extra.to_vec()
    };
    // Build first, so that the S3 server is not kept waiting through a cold build.
    let build_args: Vec<&String> = selection.iter().take_while(|a| *a != "--").collect();
    run(cargo()
        .args(["test", "--locked", "--no-run"])
        .args(build_args))?;
    let server = moto::MotoServer::start(root)?;
    eprintln!("xtask: S3 test server at {}", server.endpoint());
    let mut cmd = cargo();
    cmd.args(["test", "--locked"]).args(&selection);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    server.export_to(&mut cmd);
    let result = run(&mut cmd);
    drop(server);
    result
}

fn bench(root: &Path, extra: &[String]) -> Result<()> {
    // With no arguments every bench of the workspace; arguments select as for `cargo bench`
    // (`cargo xtask bench -p keepsake-manifest --bench blob -- --measurement-time 3`). The S3
    // figures need the test server: built first, then the server runs while the benches do.
    let selection: Vec<String> = if extra.is_empty() {
        vec!["--workspace".to_owned()]
    } else {
        extra.to_vec()
    };
    let build_args: Vec<&String> = selection.iter().take_while(|a| *a != "--").collect();
    run(cargo()
        .args(["bench", "--locked", "--no-run"])
        .args(build_args))?;
    let server = moto::MotoServer::start(root)?;
    eprintln!("xtask: S3 test server at {}", server.endpoint());
    let mut cmd = cargo();
    cmd.args(["bench", "--locked"]).args(&selection);
    server.export_to(&mut cmd);
    let result = run(&mut cmd);
    drop(server);
    result
}

fn s3(root: &Path) -> Result<()> {
    let server = moto::MotoServer::start(root)?;
    println!("export {}", server.env_lines().join(" "));
    println!("# server running; press Ctrl-C to stop");
    server.wait()
}

/// `cargo xtask gen-store DIR [options]`: the generator is its own package (`xtask/gen-store`)
/// so that xtask itself depends on no workspace crate; it runs as a release build, because
/// debug builds of zstd and SHA-256 make a few GiB take minutes instead of seconds.
fn gen_store(invoked_in: &Path, args: &[String]) -> Result<()> {
    let status = cargo()
        .args([
            "run",
            "--release",
            "--locked",
            "--quiet",
            "--package",
            "xtask-gen-store",
            "--bin",
            "gen-store",
            "--",
        ])
        .args(args)
        .current_dir(invoked_in)
        .status()
        .context("cannot start cargo run for gen-store")?;
    // The generator (or cargo) said what went wrong; its exit code (2: usage) is ours.
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    eprintln!("==> xtask ci: {name}");
    let start = std::time::Instant::now();
    let result = f().with_context(|| format!("xtask ci step {name:?} failed"));
    eprintln!(
        "<== xtask ci: {name} {} in {:.1}s",
        if result.is_ok() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    result
}

/// `cargo metadata` of the workspace's own packages (no dependencies resolved beyond the lock
/// file), as JSON.
pub(crate) fn workspace_metadata(root: &Path) -> Result<serde_json::Value> {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps", "--locked"])
        .current_dir(root)
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("cargo metadata printed no JSON")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
