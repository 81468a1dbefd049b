//! Group and snapshot arguments as PBS names them, with or without their namespace path.
//!
//! `vm/100` and `vm/100/2024-06-05T15:06:40Z` live in `--ns` (default: the root);
//! `ns/prod/vm/100` and `ns/prod/vm/100/2024-06-05T15:06:40Z` carry their namespace, as the paths
//! in a datastore do, so that a path copied from `ls` or from an error message works as is.

use std::fmt;
use std::str::FromStr;

use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace, GroupPath, SnapshotPath};

use crate::error::UsageError;

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
    snapshot: BackupDir,
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
    /// The snapshot and its namespace (`--ns` applies unless the argument has its own).
    pub(crate) fn resolve(
        &self,
        global_ns: Option<&BackupNamespace>,
    ) -> Result<(BackupNamespace, BackupDir), UsageError> {
        Ok((
            pick_ns(self.ns.as_ref(), global_ns, &self.snapshot)?,
            self.snapshot.clone(),
        ))
    }
}

impl FromStr for GroupArg {
    type Err = keepsake_hierarchy::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.matches('/').count() <= 1 {
            // Parsed directly, so that the error names the group and not a path around it.
            return Ok(Self {
                ns: None,
                group: s.parse()?,
            });
        }
        let path: GroupPath = s.parse()?;
        Ok(Self {
            ns: Some(path.ns),
            group: path.group,
        })
    }
}

impl FromStr for SnapshotArg {
    type Err = keepsake_hierarchy::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.matches('/').count() <= 2 {
            return Ok(Self {
                ns: None,
                snapshot: s.parse()?,
            });
        }
        let path: SnapshotPath = s.parse()?;
        Ok(Self {
            ns: Some(path.ns),
            snapshot: path.snapshot,
        })
    }
}

impl FromStr for TargetArg {
    type Err = keepsake_hierarchy::Error;
    /// A snapshot if it parses as one, else a group; the error shown is the one of the shape the
    /// input looks like (a last component that starts with a digit and holds a `:` is a time).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let snapshot = match s.parse::<SnapshotArg>() {
            Ok(snapshot) => return Ok(TargetArg::Snapshot(snapshot)),
            Err(e) => e,
        };
        let group = match s.parse::<GroupArg>() {
            Ok(group) => return Ok(TargetArg::Group(group)),
            Err(e) => e,
        };
        let last = s.rsplit('/').next().unwrap_or("");
        let looks_like_time = last.starts_with(|c: char| c.is_ascii_digit()) && last.contains(':');
        Err(if looks_like_time { snapshot } else { group })
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
        assert_eq!(s.resolve(None).unwrap().0, BackupNamespace::root());
        let s: SnapshotArg = "ns/prod/vm/100/2024-06-05T15:06:40Z".parse().unwrap();
        assert_eq!(s.resolve(None).unwrap().0, ns("prod"));
        for bad in [
            "vm/100",
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
