//! `cargo xtask deps`: a crate built without its `s3` feature pulls in no part of the S3 stack.
//!
//! For every package [`local_only_packages`] names, `cargo tree -e normal --no-default-features`
//! must contain none of [`S3_STACK`] (an async runtime, the object store, the HTTP client, TLS,
//! the C crypto library); a hit fails with the path that pulls it in (`cargo tree -i`). Then
//! the package is linted and tested without default features, so that its `cfg(feature = "s3")`
//! gating cannot rot: clippy over every target (`-D warnings`), the library's unit tests and its
//! doc tests.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Crates (and their `<name>-…` family: `tokio-util`, `hyper-rustls`, `rustls-pki-types`) that
/// a local-only build must not contain.
pub(crate) const S3_STACK: &[&str] = &[
    "tokio",
    "object_store",
    "reqwest",
    "hyper",
    "rustls",
    "aws-lc-sys",
];

/// The packages that must build local-only with `--no-default-features`: every workspace
/// package that has an `s3` feature (today `keepsake-backend`; `keepsake-datastore` joins the
/// check by declaring its own `s3` feature). Extend here for a package whose S3 feature is
/// named differently.
pub(crate) fn local_only_packages(metadata: &serde_json::Value) -> Result<Vec<String>> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")?;
    let mut names: Vec<String> = packages
        .iter()
        .filter(|p| p["features"].get("s3").is_some())
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

pub(crate) fn check(root: &Path) -> Result<()> {
    let metadata = crate::workspace_metadata(root)?;
    let packages = local_only_packages(&metadata)?;
    if packages.is_empty() {
        bail!(
            "no workspace package has an `s3` feature: nothing to check (a check that checks nothing fails)"
        );
    }
    for package in &packages {
        check_tree(root, package)?;
    }
    for package in &packages {
        crate::run(
            crate::cargo()
                .current_dir(root)
                .args(["clippy", "-p", package, "--no-default-features"])
                .args(["--all-targets", "--locked", "--", "-D", "warnings"]),
        )?;
        // The library's own tests and its doc tests: what the gating changes. The integration
        // tests run with every feature in `ci`'s test step (clippy above checks they build
        // without S3); running the slow multi-process ones twice would only double their cost.
        for target in ["--lib", "--doc"] {
            crate::run(crate::cargo().current_dir(root).args([
                "test",
                "-p",
                package,
                "--no-default-features",
                "--locked",
                target,
            ]))?;
        }
    }
    eprintln!(
        "deps: {} without default features: none of {} in the normal dependency tree; clippy and tests pass",
        packages.join(", "),
        S3_STACK.join(", ")
    );
    Ok(())
}

/// `cargo tree` of `package` without default features, normal dependencies only: fails with the
/// inverted tree of each crate of the S3 stack found there.
fn check_tree(root: &Path, package: &str) -> Result<()> {
    let tree = cargo_tree(root, package, &["--prefix", "none", "--format", "{p}"])?;
    let found = offending(&tree);
    if found.is_empty() {
        eprintln!("deps: {package} --no-default-features: no S3 stack");
        return Ok(());
    }
    let mut report = String::new();
    for name in &found {
        let paths = cargo_tree(root, package, &["--invert", name])?;
        report.push_str(&format!("\n{name} is pulled in by:\n{paths}"));
    }
    bail!(
        "{package} built with --no-default-features depends on {}:{report}",
        found.join(", ")
    )
}

fn cargo_tree(root: &Path, package: &str, extra: &[&str]) -> Result<String> {
    let output = crate::cargo()
        .current_dir(root)
        .args(["tree", "--locked", "-p", package, "--no-default-features"])
        .args(["-e", "normal"])
        .args(extra)
        .output()
        .context("cannot run cargo tree")?;
    if !output.status.success() {
        bail!(
            "cargo tree -p {package} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The names of the S3 stack's crates in a `cargo tree --prefix none --format {p}` listing
/// (`name vX.Y.Z [(path)] [(*)]` a line), each once, in order of appearance.
pub(crate) fn offending(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in tree.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let forbidden = S3_STACK.iter().any(|stack| {
            name == *stack
                || name
                    .strip_prefix(stack)
                    .is_some_and(|rest| rest.starts_with('-'))
        });
        if forbidden && !found.iter().any(|f| f == name) {
            found.push(name.to_owned());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s3_stack_and_its_families_are_found_once() {
        let tree = "keepsake-backend v0.1.0 (/w/crates/backend)\n\
                    rustix v1.1.6\n\
                    tokio v1.54.1\n\
                    tokio-util v0.7.1\n\
                    hyper-rustls v0.27.0\n\
                    tokio v1.54.1 (*)\n\
                    aws-lc-sys v0.30.0\n";
        assert_eq!(
            offending(tree),
            ["tokio", "tokio-util", "hyper-rustls", "aws-lc-sys"]
        );
    }

    #[test]
    fn look_alike_names_are_not_the_s3_stack() {
        let tree = "hyperloglog v1.0.0\ntokiox v0.1.0\nobject_store_like v1.0.0\nserde v1.0.0\n";
        assert_eq!(offending(tree), Vec::<String>::new());
    }

    #[test]
    fn packages_with_an_s3_feature_are_checked() {
        let metadata = serde_json::json!({"packages": [
            {"name": "b", "features": {"s3": [], "default": ["s3"]}},
            {"name": "a", "features": {"s3": ["dep:object_store"]}},
            {"name": "c", "features": {}},
        ]});
        assert_eq!(local_only_packages(&metadata).unwrap(), ["a", "b"]);
    }

    #[test]
    fn keepsake_backend_is_checked() {
        let metadata = crate::workspace_metadata(&crate::workspace_root()).unwrap();
        assert!(
            local_only_packages(&metadata)
                .unwrap()
                .iter()
                .any(|p| p == "keepsake-backend")
        );
    }
}
