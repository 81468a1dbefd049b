//! The layering check: every dependency between workspace crates must be allowed by the
//! ```` ```layering ```` block of `docs/ARCHITECTURE.md`, and `keepsake-hierarchy` must do no I/O.
//!
//! Grammar of the block, one rule a line (`#` starts a comment):
//!
//! ```text
//! keepsake-lock -> keepsake-hierarchy            normal (and build) dependencies allowed
//! keepsake-hierarchy ->                          a crate with no internal dependencies
//! dev * -> keepsake-testkit                      dev-dependencies allowed for every crate
//! dev keepsake-datastore -> keepsake-manifest    dev-dependencies allowed for one crate
//! ```
//!
//! Every workspace package must have a (non-dev) rule, so that a new crate is a written decision.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rules {
    normal: BTreeMap<String, BTreeSet<String>>,
    dev: BTreeMap<String, BTreeSet<String>>,
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
    problems.extend(check_no_io(&root.join("crates/hierarchy/src"))?);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("layering: {p}");
        }
        bail!("{} layering problem(s)", problems.len());
    }
    eprintln!(
        "layering: {} packages, {} internal edges, all allowed",
        packages.len(),
        edges.len()
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
