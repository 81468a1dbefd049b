//! Group and snapshot arguments as PBS names them, with or without their namespace path.
//!
//! `vm/100` and `vm/100/2024-06-05T15:06:40Z` live in `--ns` (default: the root);
//! `ns/prod/vm/100` and `ns/prod/vm/100/2024-06-05T15:06:40Z` carry their namespace, as the paths
//! in a datastore do, so that a path copied from `ls` or from an error message works as is.
//!
//! Wherever a snapshot is accepted, `vm/100/latest` names the group's newest finished snapshot
//! (as PBS's client picks one for a group); it is looked up once the datastore is open.

use std::fmt;
use std::str::FromStr;

use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace, GroupPath, SnapshotPath};

use keepsake_datastore::DataStore;

use crate::error::{Advice, UsageError};

/// Why a `GROUP` or `SNAPSHOT` argument was refused: a malformed name, or a well-formed name of
/// the other kind (the operator gave a group where a snapshot was wanted, or the reverse).
#[derive(Debug)]
pub(crate) enum ArgError {
    /// The text is no name of the wanted kind (the hierarchy's own error).
    Invalid(keepsake_hierarchy::Error),
    /// A group was given where a snapshot is wanted.
    GroupNotSnapshot(String),
    /// A snapshot was given where a group is wanted.
    SnapshotNotGroup {
        /// As given.
        input: String,
        /// The group of that snapshot, as it would be given.
        group: String,
    },
    /// A path with more components than a group has, and no `ns/` before them.
    NoNamespacePrefix(String),
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Invalid(e) => write!(f, "{e}"),
            ArgError::GroupNotSnapshot(input) => write!(
                f,
                "`{input}` is a group; a snapshot is `{input}/<time>` (`{input}/2024-06-05T15:06:40Z`)"
            ),
            ArgError::SnapshotNotGroup { input, group } => {
                write!(f, "`{input}` is a snapshot; its group is `{group}`")
            }
            ArgError::NoNamespacePrefix(input) => write!(
                f,
                "`{input}` is not a group: a group is `<type>/<id>` (`vm/100`), in a namespace \
                 `ns/<name>/…/<type>/<id>` (`ns/prod/vm/100`)"
            ),
        }
    }
}

impl std::error::Error for ArgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ArgError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

impl From<keepsake_hierarchy::Error> for ArgError {
    fn from(e: keepsake_hierarchy::Error) -> Self {
        ArgError::Invalid(e)
    }
}

/// A `GROUP` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupArg {
    ns: Option<BackupNamespace>,
    group: BackupGroup,
}

/// A `SNAPSHOT` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotArg {
    ns: Option<BackupNamespace>,
    snapshot: Which,
}

/// The word that names a group's newest finished snapshot in place of its time.
pub(crate) const LATEST: &str = "latest";

/// A snapshot by its time, or the newest of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Which {
    /// `vm/100/2024-06-05T15:06:40Z`.
    At(BackupDir),
    /// `vm/100/latest`.
    Latest(BackupGroup),
}

impl Which {
    /// The group of the snapshot.
    fn group(&self) -> &BackupGroup {
        match self {
            Which::At(dir) => dir.group(),
            Which::Latest(group) => group,
        }
    }
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Which::At(dir) => write!(f, "{dir}"),
            Which::Latest(group) => write!(f, "{group}/{LATEST}"),
        }
    }
}

/// A `GROUP|SNAPSHOT` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetArg {
    /// A group.
    Group(GroupArg),
    /// A snapshot.
    Snapshot(SnapshotArg),
}

/// The namespace an argument names explicitly, checked against `--ns`.
fn pick_ns(
    own: Option<&BackupNamespace>,
    global: Option<&BackupNamespace>,
    what: &dyn fmt::Display,
) -> Result<BackupNamespace, UsageError> {
    match (own, global) {
        (Some(own), Some(global)) if own != global => Err(UsageError(format!(
            "`{what}` names namespace `{own}` but --ns is `{global}`: give the namespace once"
        ))),
        (Some(ns), _) | (None, Some(ns)) => Ok(ns.clone()),
        (None, None) => Ok(BackupNamespace::root()),
    }
}

impl GroupArg {
    /// The group and its namespace (`--ns` applies unless the argument has its own).
    pub(crate) fn resolve(
        &self,
        global_ns: Option<&BackupNamespace>,
    ) -> Result<(BackupNamespace, BackupGroup), UsageError> {
        Ok((
            pick_ns(self.ns.as_ref(), global_ns, &self.group)?,
            self.group.clone(),
        ))
    }
}

impl SnapshotArg {
    /// The snapshot's namespace (`--ns` applies unless the argument has its own): the check
    /// that needs no datastore, for commands that make it before opening one.
    pub(crate) fn namespace(
        &self,
        global_ns: Option<&BackupNamespace>,
    ) -> Result<BackupNamespace, UsageError> {
        pick_ns(self.ns.as_ref(), global_ns, &self.snapshot)
    }

    /// The snapshot and its namespace; `latest` becomes the group's newest finished snapshot.
    ///
    /// # Errors
    ///
    /// A namespace that disagrees with `--ns` (usage); for `latest`, a missing namespace or group
    /// and a group without a finished snapshot (not found).
    pub(crate) fn resolve(
        &self,
        global_ns: Option<&BackupNamespace>,
        store: &DataStore,
    ) -> anyhow::Result<(BackupNamespace, BackupDir)> {
        let ns = self.namespace(global_ns)?;
        match &self.snapshot {
            Which::At(dir) => Ok((ns, dir.clone())),
            Which::Latest(group) => {
                let handle = crate::commands::existing_group(store, &ns, group)?;
                let mut newest: Option<BackupDir> = None;
                for snapshot in handle.iter_snapshots()? {
                    let snapshot = match snapshot {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "skipping an entry that is not a snapshot");
                            continue;
                        }
                    };
                    let newer = newest
                        .as_ref()
                        .is_none_or(|n| snapshot.dir().time() > n.time());
                    if newer && snapshot.is_finished()? {
                        newest = Some(snapshot.dir().clone());
                    }
                }
                match newest {
                    Some(dir) => Ok((ns, dir)),
                    None => Err(Advice {
                        error: keepsake_datastore::Error::NotFound {
                            what: "snapshot",
                            path: format!("{}/{LATEST}", handle.relative_path()),
                        }
                        .into(),
                        advice: format!(
                            "group `{}` has no finished snapshot",
                            handle.relative_path()
                        ),
                    }
                    .into()),
                }
            }
        }
    }
}

impl FromStr for GroupArg {
    type Err = ArgError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = parse_group(s);
        if parsed.is_err() {
            if let Ok(snapshot) = parse_snapshot(s) {
                return Err(ArgError::SnapshotNotGroup {
                    input: s.to_owned(),
                    group: match &snapshot.ns {
                        Some(ns) => GroupPath {
                            ns: ns.clone(),
                            group: snapshot.snapshot.group().clone(),
                        }
                        .to_string(),
                        None => snapshot.snapshot.group().to_string(),
                    },
                });
            }
            if s.matches('/').count() > 1 && !s.starts_with("ns/") {
                return Err(ArgError::NoNamespacePrefix(s.to_owned()));
            }
        }
        parsed.map_err(ArgError::Invalid)
    }
}

/// A group with or without its namespace path, as the hierarchy parses it.
fn parse_group(s: &str) -> Result<GroupArg, keepsake_hierarchy::Error> {
    if s.matches('/').count() <= 1 {
        // Parsed directly, so that the error names the group and not a path around it.
        return Ok(GroupArg {
            ns: None,
            group: s.parse()?,
        });
    }
    let path: GroupPath = s.parse()?;
    Ok(GroupArg {
        ns: Some(path.ns),
        group: path.group,
    })
}

impl FromStr for SnapshotArg {
    type Err = ArgError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = parse_snapshot(s);
        if parsed.is_err() && parse_group(s).is_ok() {
            return Err(ArgError::GroupNotSnapshot(s.to_owned()));
        }
        parsed.map_err(ArgError::Invalid)
    }
}

/// A snapshot with or without its namespace path, as the hierarchy parses it, or a group's
/// `…/latest`.
fn parse_snapshot(s: &str) -> Result<SnapshotArg, keepsake_hierarchy::Error> {
    if let Some(group) = s.strip_suffix(LATEST).and_then(|g| g.strip_suffix('/')) {
        let group = parse_group(group)?;
        return Ok(SnapshotArg {
            ns: group.ns,
            snapshot: Which::Latest(group.group),
        });
    }
    if s.matches('/').count() <= 2 {
        return Ok(SnapshotArg {
            ns: None,
            snapshot: Which::At(s.parse()?),
        });
    }
    let path: SnapshotPath = s.parse()?;
    Ok(SnapshotArg {
        ns: Some(path.ns),
        snapshot: Which::At(path.snapshot),
    })
}

impl FromStr for TargetArg {
    type Err = ArgError;
    /// A snapshot if it parses as one, else a group; the error shown is the one of the shape the
    /// input looks like (a last component that starts with a digit and holds a `:` is a time).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let snapshot = match parse_snapshot(s) {
            Ok(snapshot) => return Ok(TargetArg::Snapshot(snapshot)),
            Err(e) => e,
        };
        let group = match parse_group(s) {
            Ok(group) => return Ok(TargetArg::Group(group)),
            Err(e) => e,
        };
        let last = s.rsplit('/').next().unwrap_or("");
        let looks_like_time = last.starts_with(|c: char| c.is_ascii_digit()) && last.contains(':');
        if !looks_like_time && s.matches('/').count() > 1 && !s.starts_with("ns/") {
            return Err(ArgError::NoNamespacePrefix(s.to_owned()));
        }
        Err(ArgError::Invalid(if looks_like_time {
            snapshot
        } else {
            group
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> BackupNamespace {
        s.parse().unwrap()
    }

    #[test]
    fn group_arguments() {
        let g: GroupArg = "vm/100".parse().unwrap();
        assert_eq!(g.resolve(None).unwrap().0, BackupNamespace::root());
        assert_eq!(g.resolve(Some(&ns("prod"))).unwrap().0, ns("prod"));
        let g: GroupArg = "ns/prod/ns/a/vm/100".parse().unwrap();
        assert_eq!(
            g.resolve(None).unwrap(),
            (ns("prod/a"), "vm/100".parse().unwrap())
        );
        assert_eq!(g.resolve(Some(&ns("prod/a"))).unwrap().0, ns("prod/a"));
        assert!(g.resolve(Some(&ns("prod"))).is_err());
        for bad in [
            "vm",
            "vm/",
            "xx/100",
            "vm/1 0",
            "ns/../vm/100",
            "../vm/100",
            "/vm/100",
        ] {
            assert!(bad.parse::<GroupArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshot_arguments() {
        let s: SnapshotArg = "vm/100/2024-06-05T15:06:40Z".parse().unwrap();
        assert_eq!(s.namespace(None).unwrap(), BackupNamespace::root());
        let s: SnapshotArg = "ns/prod/vm/100/2024-06-05T15:06:40Z".parse().unwrap();
        assert_eq!(s.namespace(None).unwrap(), ns("prod"));
        let s: SnapshotArg = "ns/prod/vm/100/latest".parse().unwrap();
        assert_eq!(s.namespace(None).unwrap(), ns("prod"));
        assert!(matches!(s.snapshot, Which::Latest(_)));
        for bad in [
            "vm/100",
            "vm/latest",
            "latest",
            "vm/100/2024-06-05",
            "vm/100/2024-02-31T00:00:00Z",
            "ns/../vm/100/2024-06-05T15:06:40Z",
        ] {
            assert!(bad.parse::<SnapshotArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_pick_the_right_shape_and_error() {
        assert!(matches!("vm/100".parse(), Ok(TargetArg::Group(_))));
        assert!(matches!("ns/a/vm/100".parse(), Ok(TargetArg::Group(_))));
        assert!(matches!(
            "vm/100/2024-06-05T15:06:40Z".parse(),
            Ok(TargetArg::Snapshot(_))
        ));
        let e = "vm/100/2024-13-05T15:06:40Z"
            .parse::<TargetArg>()
            .unwrap_err();
        assert!(e.to_string().contains("2024-13-05"), "{e}");
        let e = "vm/1$0".parse::<TargetArg>().unwrap_err();
        assert!(e.to_string().contains("1$0"), "{e}");
    }
}
