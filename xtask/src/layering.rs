//! The layering check: every dependency between workspace crates must be allowed by the
//! ```` ```layering ```` block of `docs/ARCHITECTURE.md`, only the crates it names may depend on
//! the heavy external crates it lists (the S3 stack), and `keepsake-hierarchy` must do no I/O.
//!
//! Grammar of the block, one rule a line (`#` starts a comment):
//!
//! ```text
//! keepsake-lock -> keepsake-hierarchy            normal (and build) dependencies allowed
//! keepsake-hierarchy ->                          a crate with no internal dependencies
//! dev * -> keepsake-testkit                      dev-dependencies allowed for every crate
//! dev keepsake-datastore -> keepsake-manifest    dev-dependencies allowed for one crate
//! uses tokio: keepsake-backend[s3], keepsake-x   only these may depend on tokio directly;
//!                                                keepsake-backend only optionally, through its
//!                                                feature `s3`
//! ```
//!
//! Every workspace package must have a (non-dev) rule, so that a new crate is a written decision.
//! A `uses` rule is about normal (and build) dependencies; dev-dependencies are free (they never
//! reach a user's build). Every crate it names must exist and use the crate (a stale entry is a
//! problem too), and with `[feature]` declare it optional and enabled by that feature.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rules {
    normal: BTreeMap<String, BTreeSet<String>>,
    dev: BTreeMap<String, BTreeSet<String>>,
    /// External crate -> the workspace packages that may depend on it, each with the feature
    /// that must be the only way in (`None`: any dependency).
    uses: BTreeMap<String, BTreeMap<String, Option<String>>>,
}

/// A workspace package's normal (or build) dependency on an external crate, as `uses` rules
/// judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExternalUse {
    pub(crate) package: String,
    pub(crate) dependency: String,
    /// The features of `package` that enable it; `None` if it is not optional.
    pub(crate) enabled_by: Option<BTreeSet<String>>,
}

/// One dependency edge between two workspace packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edge {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) dev: bool,
}

pub(crate) fn check_workspace(root: &Path) -> Result<()> {
    let doc_path = root.join("docs/ARCHITECTURE.md");
    let doc = std::fs::read_to_string(&doc_path)
        .with_context(|| format!("cannot read {}", doc_path.display()))?;
    let rules = parse_rules(&doc)?;
    let metadata = crate::workspace_metadata(root)?;
    let (packages, edges) = workspace_edges(&metadata)?;
    let mut problems = check(&rules, &packages, &edges);
    problems.extend(check_uses(&rules, &packages, &external_uses(&metadata)?));
    problems.extend(check_no_io(&root.join("crates/hierarchy/src"))?);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("layering: {p}");
        }
        bail!("{} layering problem(s)", problems.len());
    }
    eprintln!(
        "layering: {} packages, {} internal edges, all allowed; uses of {} as written",
        packages.len(),
        edges.len(),
        rules.uses.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

pub(crate) fn parse_rules(doc: &str) -> Result<Rules> {
    let mut rules = Rules::default();
    let mut in_block = false;
    let mut found = false;
    for (n, line) in doc.lines().enumerate() {
        let trimmed = line.trim();
        if !in_block {
            if trimmed == "```layering" {
                in_block = true;
                found = true;
            }
            continue;
        }
        if trimmed.starts_with("```") {
            in_block = false;
            continue;
        }
        let content = trimmed.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        if let Some(rule) = content.strip_prefix("uses ") {
            let (external, users) = parse_uses(rule).with_context(|| {
                format!(
                    "ARCHITECTURE.md line {}: expected `uses crate: A[feature], B`",
                    n + 1
                )
            })?;
            rules.uses.entry(external).or_default().extend(users);
            continue;
        }
        let (lhs, rhs) = content
            .split_once("->")
            .with_context(|| format!("ARCHITECTURE.md line {}: expected `A -> B, C`", n + 1))?;
        let lhs = lhs.trim();
        let (dev, from) = match lhs.strip_prefix("dev ") {
            Some(from) => (true, from.trim()),
            None => (false, lhs),
        };
        if from.is_empty() || (from == "*" && !dev) {
            bail!("ARCHITECTURE.md line {}: bad rule source {lhs:?}", n + 1);
        }
        let targets: BTreeSet<String> = rhs
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let map = if dev {
            &mut rules.dev
        } else {
            &mut rules.normal
        };
        map.entry(from.to_owned()).or_default().extend(targets);
    }
    if !found {
        bail!("docs/ARCHITECTURE.md has no ```layering block");
    }
    Ok(rules)
}

/// `tokio: keepsake-backend[s3], keepsake-lease` (after `uses `).
fn parse_uses(rule: &str) -> Result<(String, BTreeMap<String, Option<String>>)> {
    let (external, users) = rule.split_once(':').context("no `:`")?;
    let external = external.trim();
    if external.is_empty() || external.contains(char::is_whitespace) {
        bail!("bad crate name {external:?}");
    }
    let mut parsed = BTreeMap::new();
    for user in users.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (package, feature) = match user.strip_suffix(']') {
            Some(rest) => {
                let (package, feature) = rest.split_once('[').context("`]` without `[`")?;
                (package.trim(), Some(feature.trim().to_owned()))
            }
            None => (user, None),
        };
        if package.is_empty() || package.contains(['[', ']']) || feature.as_deref() == Some("") {
            bail!("bad entry {user:?}");
        }
        parsed.insert(package.to_owned(), feature);
    }
    Ok((external.to_owned(), parsed))
}

fn workspace_edges(metadata: &serde_json::Value) -> Result<(BTreeSet<String>, Vec<Edge>)> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")?;
    let names: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    let mut edges = Vec::new();
    for p in packages {
        let from = p["name"].as_str().unwrap_or_default().to_owned();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let to = d["name"].as_str().unwrap_or_default();
            if names.contains(to) {
                edges.push(Edge {
                    from: from.clone(),
                    to: to.to_owned(),
                    dev: d["kind"].as_str() == Some("dev"),
                });
            }
        }
    }
    Ok((names, edges))
}

/// Every normal or build dependency of a workspace package on a crate some `uses` rule could
/// name (anything outside the workspace).
fn external_uses(metadata: &serde_json::Value) -> Result<Vec<ExternalUse>> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")?;
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut uses: Vec<ExternalUse> = Vec::new();
    for p in packages {
        let package = p["name"].as_str().unwrap_or_default();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dependency = d["name"].as_str().unwrap_or_default();
            if names.contains(dependency) || d["kind"].as_str() == Some("dev") {
                continue;
            }
            // The name a feature uses for it: the rename, if any.
            let key = d["rename"].as_str().unwrap_or(dependency);
            let enabled_by = d["optional"].as_bool().unwrap_or(false).then(|| {
                p["features"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, enables)| {
                        enables.as_array().into_iter().flatten().any(|e| {
                            let e = e.as_str().unwrap_or_default();
                            e == key
                                || e.strip_prefix("dep:") == Some(key)
                                || e.split_once('/').map(|(dep, _)| dep) == Some(key)
                        })
                    })
                    .map(|(feature, _)| feature.clone())
                    .collect::<BTreeSet<String>>()
            });
            // A crate that is both an optional normal and a build dependency is judged by the
            // least restricted of the two.
            match uses
                .iter_mut()
                .find(|u| u.package == package && u.dependency == dependency)
            {
                Some(seen) => {
                    if enabled_by.is_none() {
                        seen.enabled_by = None;
                    }
                }
                None => uses.push(ExternalUse {
                    package: package.to_owned(),
                    dependency: dependency.to_owned(),
                    enabled_by,
                }),
            }
        }
    }
    Ok(uses)
}

/// The `uses` rules against what the packages depend on.
pub(crate) fn check_uses(
    rules: &Rules,
    packages: &BTreeSet<String>,
    uses: &[ExternalUse],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (external, allowed) in &rules.uses {
        for (package, feature) in allowed {
            if !packages.contains(package) {
                problems.push(format!(
                    "`uses {external}` names {package}, which is not a workspace package"
                ));
                continue;
            }
            let found = uses
                .iter()
                .find(|u| &u.package == package && &u.dependency == external);
            match (found, feature) {
                (None, _) => problems.push(format!(
                    "`uses {external}` names {package}, which does not depend on {external} (stale rule)"
                )),
                (Some(u), Some(feature)) => match &u.enabled_by {
                    None => problems.push(format!(
                        "{package} depends on {external} unconditionally; docs/ARCHITECTURE.md allows it only through its feature `{feature}`"
                    )),
                    Some(features) if !features.contains(feature) => problems.push(format!(
                        "{package}'s feature `{feature}` does not enable {external} (enabled by: {})",
                        features.iter().cloned().collect::<Vec<_>>().join(", ")
                    )),
                    Some(_) => {}
                },
                (Some(_), None) => {}
            }
        }
        for u in uses.iter().filter(|u| &u.dependency == external) {
            if !allowed.contains_key(&u.package) {
                problems.push(format!(
                    "{} depends on {external}, which docs/ARCHITECTURE.md does not allow (add it to `uses {external}:`)",
                    u.package
                ));
            }
        }
    }
    problems
}

pub(crate) fn check(rules: &Rules, packages: &BTreeSet<String>, edges: &[Edge]) -> Vec<String> {
    let mut problems = Vec::new();
    for p in packages {
        if !rules.normal.contains_key(p) {
            problems.push(format!(
                "package {p} has no rule in docs/ARCHITECTURE.md (add `{p} -> ...`)"
            ));
        }
    }
    let empty = BTreeSet::new();
    // A crate may dev-depend on itself (to enable a test-only feature such as `conformance`).
    for e in edges.iter().filter(|e| !(e.dev && e.from == e.to)) {
        let normal = rules.normal.get(&e.from).unwrap_or(&empty);
        let allowed = normal.contains(&e.to)
            || (e.dev
                && (rules.dev.get(&e.from).is_some_and(|s| s.contains(&e.to))
                    || rules.dev.get("*").is_some_and(|s| s.contains(&e.to))));
        if !allowed {
            problems.push(format!(
                "{} {}-> {} is not allowed by docs/ARCHITECTURE.md",
                e.from,
                if e.dev { "(dev) " } else { "" },
                e.to
            ));
        }
    }
    problems
}

/// Architecture invariant: the hierarchy crate is pure (names and paths), so it never touches the
/// filesystem, the network, processes or the environment.
fn check_no_io(src: &Path) -> Result<Vec<String>> {
    const FORBIDDEN: &[&str] = &[
        "std::fs",
        "std::net",
        "std::process",
        "std::env",
        "File::open",
        "File::create",
    ];
    let mut problems = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)?;
                for (n, line) in text.lines().enumerate() {
                    if let Some(bad) = FORBIDDEN.iter().find(|f| line.contains(*f)) {
                        problems.push(format!(
                            "{}:{}: keepsake-hierarchy does no I/O, found `{bad}`",
                            path.display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "text\n```layering\n# comment\na ->\nb -> a\nc -> a, b # trailing\ndev * -> t\ndev b -> c\nt -> a\n```\n";

    fn edge(from: &str, to: &str, dev: bool) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            dev,
        }
    }

    fn check_edges(edges: &[Edge]) -> Vec<String> {
        let rules = parse_rules(DOC).unwrap();
        let packages = ["a", "b", "c", "t"].map(String::from).into();
        check(&rules, &packages, edges)
    }

    #[test]
    fn allowed_edges_pass() {
        let edges = [
            edge("b", "a", false),
            edge("c", "a", false),
            edge("c", "b", false),
            edge("a", "t", true),
            edge("b", "c", true),
            edge("c", "a", true),
        ];
        assert_eq!(check_edges(&edges), Vec::<String>::new());
    }

    #[test]
    fn dev_dependency_on_itself_is_allowed_but_not_a_normal_one() {
        assert_eq!(check_edges(&[edge("b", "b", true)]), Vec::<String>::new());
        assert_eq!(check_edges(&[edge("b", "b", false)]).len(), 1);
    }

    #[test]
    fn upward_edge_is_refused() {
        let problems = check_edges(&[edge("a", "b", false)]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("a -> b"));
    }

    #[test]
    fn dev_only_target_is_refused_as_normal_dependency() {
        assert_eq!(check_edges(&[edge("a", "t", false)]).len(), 1);
        assert_eq!(check_edges(&[edge("b", "c", false)]).len(), 1);
        assert_eq!(check_edges(&[edge("a", "c", true)]).len(), 1);
    }

    #[test]
    fn package_without_rule_is_reported() {
        let rules = parse_rules(DOC).unwrap();
        let packages = ["a", "new"].map(String::from).into();
        let problems = check(&rules, &packages, &[]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("new"));
    }

    #[test]
    fn missing_block_and_bad_lines_are_errors() {
        assert!(parse_rules("no block here").is_err());
        assert!(parse_rules("```layering\nnonsense\n```").is_err());
        assert!(parse_rules("```layering\n* -> a\n```").is_err());
    }

    #[test]
    fn real_architecture_doc_parses_and_has_every_crate() {
        let root = crate::workspace_root();
        let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
        let rules = parse_rules(&doc).unwrap();
        for krate in ["keepsake-hierarchy", "xtask"] {
            assert!(rules.normal.contains_key(krate), "{krate} has no rule");
        }
        assert!(rules.normal["keepsake-hierarchy"].is_empty());
    }

    fn uses(package: &str, dependency: &str, enabled_by: Option<&[&str]>) -> ExternalUse {
        ExternalUse {
            package: package.into(),
            dependency: dependency.into(),
            enabled_by: enabled_by.map(|f| f.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn check_uses_of(found: &[ExternalUse]) -> Vec<String> {
        let doc = "```layering\na ->\nb ->\nc ->\nuses tokio: a[s3], b # b any way\n```\n";
        let rules = parse_rules(doc).unwrap();
        let packages = ["a", "b", "c"].map(String::from).into();
        check_uses(&rules, &packages, found)
    }

    #[test]
    fn uses_rules_parse() {
        let rules = parse_rules(
            "```layering\nuses tokio: a[s3], b\nuses object_store: a[s3 ]\nuses tokio: c\n```",
        )
        .unwrap();
        assert_eq!(rules.uses["tokio"]["a"].as_deref(), Some("s3"));
        assert_eq!(rules.uses["tokio"]["b"], None);
        assert_eq!(rules.uses["tokio"]["c"], None);
        assert_eq!(rules.uses["object_store"]["a"].as_deref(), Some("s3"));
        for bad in [
            "uses tokio a",
            "uses : a",
            "uses tokio: a[",
            "uses tokio: a[]",
            "uses tokio: [s3]",
        ] {
            assert!(
                parse_rules(&format!("```layering\n{bad}\n```")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn allowed_uses_pass() {
        let found = [
            uses("a", "tokio", Some(&["s3", "default"])),
            uses("b", "tokio", None),
            uses("c", "serde", None),
        ];
        assert_eq!(check_uses_of(&found), Vec::<String>::new());
    }

    #[test]
    fn a_crate_not_listed_may_not_use_it() {
        let found = [
            uses("a", "tokio", Some(&["s3"])),
            uses("b", "tokio", None),
            uses("c", "tokio", Some(&["rt"])),
        ];
        let problems = check_uses_of(&found);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("c depends on tokio"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_feature_gated_use_must_be_optional_and_behind_that_feature() {
        let unconditional = check_uses_of(&[uses("a", "tokio", None), uses("b", "tokio", None)]);
        assert_eq!(unconditional.len(), 1, "{unconditional:?}");
        assert!(unconditional[0].contains("unconditionally"));
        let other_feature =
            check_uses_of(&[uses("a", "tokio", Some(&["rt"])), uses("b", "tokio", None)]);
        assert_eq!(other_feature.len(), 1, "{other_feature:?}");
        assert!(other_feature[0].contains("does not enable"));
    }

    #[test]
    fn stale_and_unknown_entries_are_problems() {
        let stale = check_uses_of(&[uses("a", "tokio", Some(&["s3"]))]);
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert!(stale[0].contains("stale"));
        let rules = parse_rules("```layering\nuses tokio: nope\n```").unwrap();
        let unknown = check_uses(&rules, &BTreeSet::new(), &[]);
        assert_eq!(unknown.len(), 1);
        assert!(unknown[0].contains("not a workspace package"));
    }

    /// The check itself, on this workspace: `cargo test -p xtask` fails where `cargo xtask
    /// layering` would.
    #[test]
    fn the_workspace_keeps_its_layering() {
        check_workspace(&crate::workspace_root()).unwrap();
    }

    #[test]
    fn io_in_hierarchy_is_found() {
        let dir = std::env::temp_dir().join(format!("xtask-noio-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("ok.rs"), "fn f() {}\n").unwrap();
        std::fs::write(dir.join("sub/bad.rs"), "use std::fs::File;\n").unwrap();
        let problems = check_no_io(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("bad.rs:1"));
    }
}
