//! `cargo xtask package`: every publishable crate of the workspace packages and builds from its
//! `.crate` file alone, as it would from crates.io.
//!
//! The crates are packaged together (`cargo package -p a -p b …`, cargo ≥ 1.89): cargo puts the
//! packages it just made into a local registry overlay, so a crate that depends on another
//! unpublished workspace crate (`keepsake-datastore` on `keepsake-backend`, every crate's
//! dev-dependency on `keepsake-testkit`) resolves it from there, in dependency order. Each
//! `.crate` is then unpacked and built on its own (cargo's verification), which is what catches
//! a file the package leaves out (a README that `include_str!` reads, a fixture), a dependency
//! declared only through the workspace, or a feature that does not build alone. `--no-verify`
//! skips that build (packaging and the manifest checks only).
//!
//! Which crates: every workspace package whose `publish` is not `false` (from `cargo metadata`).
//! `xtask` is `publish = false`; the library crates, `keepsake-testkit` (their packages name it
//! as a dev-dependency) and the `keepsake` CLI (`cargo install keepsake-cli`) are published.
//!
//! `--offline`: the crates.io index and crates come from cargo's local cache, which every build of
//! the workspace fills; nothing is uploaded and no network is needed.
//!
//! First, every publishable library crate's README must be its crate documentation: `src/lib.rs`
//! starts with [`README_AS_CRATE_DOCS`], so the README's examples are doc tests and crates.io,
//! docs.rs and the repository show one text.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// The first line of a library crate's `src/lib.rs`: its README is its crate documentation.
pub(crate) const README_AS_CRATE_DOCS: &str = "#![doc = include_str!(\"../README.md\")]";

/// Library crates whose README is not their crate documentation yet (each is being reworked;
/// take it off this list when its `lib.rs` starts with [`README_AS_CRATE_DOCS`]).
const README_NOT_YET_CRATE_DOCS: &[&str] = &["keepsake-datastore"];

/// The workspace packages that may be published (no `publish = false`), sorted by name.
pub(crate) fn publishable_packages(metadata: &serde_json::Value) -> Result<Vec<String>> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")?;
    let mut names: Vec<String> = packages
        .iter()
        .filter(|p| publishable(&p["publish"]))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// `cargo metadata`'s `publish`: `null` for any registry, a list of the allowed registries, or
/// an empty list for `publish = false`.
fn publishable(publish: &serde_json::Value) -> bool {
    match publish.as_array() {
        Some(registries) => !registries.is_empty(),
        None => true,
    }
}

pub(crate) fn check(root: &Path, args: &[String]) -> Result<()> {
    let verify = match args {
        [] => true,
        [flag] if flag == "--no-verify" => false,
        _ => bail!("usage: cargo xtask package [--no-verify]"),
    };
    let metadata = crate::workspace_metadata(root)?;
    let packages = publishable_packages(&metadata)?;
    if packages.is_empty() {
        bail!("no publishable package in the workspace: nothing to check");
    }
    check_readmes(&metadata)?;
    forget_stale_extractions(&metadata, &packages)?;
    // The packages are built in a target folder of their own, emptied first: cargo takes a
    // registry crate for immutable and would reuse what an earlier run built from an older
    // package of the same version.
    let target = root.join("target").join("package-verify");
    match std::fs::remove_dir_all(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot empty {}", target.display())),
    }
    let mut cmd = crate::cargo();
    cmd.current_dir(root)
        .env("CARGO_TARGET_DIR", &target)
        // The check is about what the packages contain, not about the state of the checkout.
        .args(["package", "--offline", "--allow-dirty"]);
    for package in &packages {
        cmd.args(["-p", package]);
    }
    if !verify {
        cmd.arg("--no-verify");
    }
    crate::run(&mut cmd)?;
    eprintln!(
        "package: {} packaged{}",
        packages.join(", "),
        if verify {
            ", each built from its .crate alone"
        } else {
            " (not built: --no-verify)"
        }
    );
    Ok(())
}

/// Removes the copies of this workspace's packages that earlier runs left in cargo's registry
/// folders. cargo extracts the packages of its local registry overlay to
/// `$CARGO_HOME/registry/src/<registry>/<name>-<version>` like any registry crate, and reuses an
/// extraction that exists: with the version unchanged, a later run would build the dependents
/// against the sources of an earlier one. These names are never on crates.io (the crates are not
/// published), so nothing else is removed.
fn forget_stale_extractions(metadata: &serde_json::Value, packages: &[String]) -> Result<()> {
    let home = match std::env::var_os("CARGO_HOME") {
        Some(home) => std::path::PathBuf::from(home),
        None => match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(".cargo"),
            None => return Ok(()),
        },
    };
    let versioned: Vec<String> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            let version = p["version"].as_str()?;
            packages
                .iter()
                .any(|wanted| wanted == name)
                .then(|| format!("{name}-{version}"))
        })
        .collect();
    for (kind, suffix) in [("src", ""), ("cache", ".crate")] {
        let Ok(registries) = std::fs::read_dir(home.join("registry").join(kind)) else {
            continue;
        };
        for registry in registries.flatten() {
            for name in &versioned {
                let stale = registry.path().join(format!("{name}{suffix}"));
                let removed = if suffix.is_empty() {
                    std::fs::remove_dir_all(&stale)
                } else {
                    std::fs::remove_file(&stale)
                };
                match removed {
                    Ok(()) => eprintln!("package: removed the stale {}", stale.display()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("cannot remove {}", stale.display()));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Every publishable library crate (but those on [`README_NOT_YET_CRATE_DOCS`]) has a README
/// and its `lib.rs` starts with [`README_AS_CRATE_DOCS`].
fn check_readmes(metadata: &serde_json::Value) -> Result<()> {
    let mut problems = Vec::new();
    let publishable = publishable_packages(metadata)?;
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().unwrap_or_default();
        if !publishable.iter().any(|p| p == name) || README_NOT_YET_CRATE_DOCS.contains(&name) {
            continue;
        }
        let library = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| {
                t["kind"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k == "lib")
            });
        let Some(lib_rs) = library.and_then(|t| t["src_path"].as_str()) else {
            continue;
        };
        let lib_rs = Path::new(lib_rs);
        let readme = lib_rs
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("README.md"));
        if !readme.as_deref().is_some_and(Path::is_file) {
            problems.push(format!("{name} has no README.md beside its Cargo.toml"));
        }
        let text = std::fs::read_to_string(lib_rs)
            .with_context(|| format!("cannot read {}", lib_rs.display()))?;
        if text.lines().next().map(str::trim) != Some(README_AS_CRATE_DOCS) {
            problems.push(format!(
                "{}: the first line must be `{README_AS_CRATE_DOCS}` (the README is the crate docs)",
                lib_rs.display()
            ));
        }
    }
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("package: {problem}");
        }
        bail!("{} README problem(s)", problems.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_false_packages_are_left_out() {
        let metadata = serde_json::json!({"packages": [
            {"name": "lib-b", "publish": null},
            {"name": "xtask", "publish": []},
            {"name": "lib-a", "publish": null},
            {"name": "internal", "publish": ["my-registry"]},
        ]});
        assert_eq!(
            publishable_packages(&metadata).unwrap(),
            ["internal", "lib-a", "lib-b"]
        );
    }

    #[test]
    fn the_workspace_publishes_its_crates_but_not_xtask() {
        let metadata = crate::workspace_metadata(&crate::workspace_root()).unwrap();
        let packages = publishable_packages(&metadata).unwrap();
        for library in [
            "keepsake-hierarchy",
            "keepsake-lock",
            "keepsake-manifest",
            "keepsake-backend",
            "keepsake-testkit",
        ] {
            assert!(packages.iter().any(|p| p == library), "{library}");
        }
        assert!(!packages.iter().any(|p| p == "xtask"));
    }

    #[test]
    fn library_readmes_are_their_crate_docs() {
        let metadata = crate::workspace_metadata(&crate::workspace_root()).unwrap();
        check_readmes(&metadata).unwrap();
    }
}
