//! Snapshots (`vm/100/2024-06-05T15:06:40Z`) and full relative paths of groups and snapshots.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::group::{BackupGroup, BackupType};
use crate::namespace::BackupNamespace;
use crate::time::BackupTime;

/// A snapshot (PBS's "backup dir"): a group and a time. Only constructible from a valid group and time.
///
/// ```
/// use keepsake_hierarchy::{BackupDir, BackupNamespace};
///
/// let dir: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse()?;
/// assert_eq!(dir.group().to_string(), "vm/100");
/// assert_eq!(dir.time().epoch(), 1_717_600_000);
/// let ns = BackupNamespace::new("a")?;
/// assert_eq!(dir.relative_path(&ns), "ns/a/vm/100/2024-06-05T15:06:40Z");
/// assert_eq!(
///     dir.file_path(&ns, "index.json.blob")?,
///     "ns/a/vm/100/2024-06-05T15:06:40Z/index.json.blob"
/// );
/// # Ok::<(), keepsake_hierarchy::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupDir {
    group: BackupGroup,
    time: BackupTime,
}

impl BackupDir {
    /// A snapshot of `group` at `time`.
    pub fn new(group: BackupGroup, time: BackupTime) -> Self {
        Self { group, time }
    }

    /// A snapshot from its parts, checking the id and the epoch.
    pub fn from_parts(ty: BackupType, id: &str, epoch: i64) -> Result<Self> {
        Ok(Self {
            group: BackupGroup::new(ty, id)?,
            time: BackupTime::from_epoch(epoch)?,
        })
    }

    /// The group the snapshot belongs to.
    pub fn group(&self) -> &BackupGroup {
        &self.group
    }

    /// The snapshot time.
    pub fn time(&self) -> BackupTime {
        self.time
    }

    /// Path of the snapshot folder relative to the datastore root: `[<ns path>/]<type>/<id>/<time>`.
    pub fn relative_path(&self, ns: &BackupNamespace) -> String {
        let mut out = String::with_capacity(self.path_len(ns));
        self.push_path(ns, &mut out);
        out
    }

    /// Path of a file inside the snapshot folder, relative to the datastore root. The file name must be
    /// a plain name (see [`check_file_name`](crate::check_file_name)).
    pub fn file_path(&self, ns: &BackupNamespace, file_name: &str) -> Result<String> {
        crate::archive::check_file_name(file_name)?;
        // One string of the right size: every read of a snapshot file starts here.
        let mut out = String::with_capacity(self.path_len(ns) + 1 + file_name.len());
        self.push_path(ns, &mut out);
        out.push('/');
        out.push_str(file_name);
        Ok(out)
    }

    fn push_path(&self, ns: &BackupNamespace, out: &mut String) {
        self.group.push_path(ns, out);
        out.push('/');
        self.time.push_to(out);
    }

    /// `<group path>/` and the 20 bytes of the time.
    fn path_len(&self, ns: &BackupNamespace) -> usize {
        self.group.path_len(ns) + 21
    }
}

impl fmt::Display for BackupDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.time)
    }
}

impl fmt::Debug for BackupDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupDir({:?})", self.to_string())
    }
}

impl FromStr for BackupDir {
    type Err = Error;
    /// Parses `<type>/<id>/<time>`.
    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidSnapshotPath {
            input: s.to_owned(),
            reason,
        };
        let (group, time) = s
            .rsplit_once('/')
            .ok_or_else(|| invalid("expected <type>/<id>/<time>".to_owned()))?;
        let group: BackupGroup = group.parse().map_err(|e: Error| invalid(e.to_string()))?;
        let time: BackupTime = time.parse().map_err(|e: Error| invalid(e.to_string()))?;
        Ok(Self { group, time })
    }
}

crate::serde_via_str!(BackupDir);

/// A group together with its namespace: the full relative path `ns/a/ns/b/vm/100`.
///
/// [`Display`](fmt::Display) and [`FromStr`] use the relative path form and round-trip.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupPath {
    /// The namespace holding the group.
    pub ns: BackupNamespace,
    /// The group.
    pub group: BackupGroup,
}

impl fmt::Display for GroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.group.relative_path(&self.ns))
    }
}

impl FromStr for GroupPath {
    type Err = Error;
    /// Parses `[ns/<a>/…/]<type>/<id>`: the namespace part is everything before the second `/` from
    /// the right.
    fn from_str(s: &str) -> Result<Self> {
        let (ns, group) = split_from_right(s, 2);
        let invalid = |reason: String| Error::InvalidSnapshotPath {
            input: s.to_owned(),
            reason,
        };
        Ok(Self {
            ns: parse_ns_part(ns).map_err(|e| invalid(e.to_string()))?,
            group: group.parse().map_err(|e: Error| invalid(e.to_string()))?,
        })
    }
}

crate::serde_via_str!(GroupPath);

/// A snapshot together with its namespace: the full relative path `ns/a/ns/b/vm/100/<time>`.
///
/// ```
/// use keepsake_hierarchy::SnapshotPath;
///
/// let p: SnapshotPath = "ns/a/ns/b/vm/100/2024-06-05T15:06:40Z".parse()?;
/// assert_eq!(p.ns.to_string(), "a/b");
/// assert_eq!(p.snapshot.to_string(), "vm/100/2024-06-05T15:06:40Z");
/// assert_eq!(p.to_string(), "ns/a/ns/b/vm/100/2024-06-05T15:06:40Z");
/// assert!("ns/../vm/100/2024-06-05T15:06:40Z".parse::<SnapshotPath>().is_err());
/// # Ok::<(), keepsake_hierarchy::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotPath {
    /// The namespace holding the snapshot's group.
    pub ns: BackupNamespace,
    /// The snapshot.
    pub snapshot: BackupDir,
}

impl fmt::Display for SnapshotPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.snapshot.relative_path(&self.ns))
    }
}

impl FromStr for SnapshotPath {
    type Err = Error;
    /// Parses `[ns/<a>/…/]<type>/<id>/<time>`: as PBS does, the namespace part is everything before the
    /// third `/` from the right.
    fn from_str(s: &str) -> Result<Self> {
        let (ns, snapshot) = split_from_right(s, 3);
        let invalid = |reason: String| Error::InvalidSnapshotPath {
            input: s.to_owned(),
            reason,
        };
        Ok(Self {
            ns: parse_ns_part(ns).map_err(|e| invalid(e.to_string()))?,
            snapshot: snapshot
                .parse()
                .map_err(|e: Error| invalid(e.to_string()))?,
        })
    }
}

crate::serde_via_str!(SnapshotPath);

/// Splits `s` at its `n`-th `/` from the right: (`before`, `after`). Without that many slashes,
/// `before` is `None` and `after` is the whole string.
fn split_from_right(s: &str, n: usize) -> (Option<&str>, &str) {
    match s.rmatch_indices('/').nth(n - 1) {
        Some((i, _)) => (Some(&s[..i]), &s[i + 1..]),
        None => (None, s),
    }
}

fn parse_ns_part(ns: Option<&str>) -> Result<BackupNamespace> {
    match ns {
        None => Ok(BackupNamespace::root()),
        // "/vm/100/..." would leave an empty namespace part that is not the root: refuse it.
        Some("") => Err(Error::InvalidNamespacePath {
            path: String::new(),
            reason: "empty namespace part",
        }),
        Some(path) => BackupNamespace::from_path(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_paths() {
        let p: SnapshotPath = "vm/100/2024-06-05T15:06:40Z".parse().unwrap();
        assert!(p.ns.is_root());
        for bad in [
            "",
            "/vm/100/2024-06-05T15:06:40Z",
            "ns/vm/100/2024-06-05T15:06:40Z",
            "x/vm/100/2024-06-05T15:06:40Z",
            "ns/a/vm/100",
            "ns/a/vm/100/2024-06-05T15:06:40Z/",
            "ns/a/vm/100/2024-06-05T15:06:40Z/index.json.blob",
            "ns/a/vm/../2024-06-05T15:06:40Z",
            "ns/a/ns/b/ns/c/ns/d/ns/e/ns/f/ns/g/ns/h/vm/1/2024-06-05T15:06:40Z",
        ] {
            assert!(
                matches!(
                    bad.parse::<SnapshotPath>(),
                    Err(Error::InvalidSnapshotPath { .. })
                ),
                "{bad:?}"
            );
        }
        let g: GroupPath = "ns/a/ct/200".parse().unwrap();
        assert_eq!(g.ns.to_string(), "a");
        assert_eq!(g.to_string(), "ns/a/ct/200");
        assert!("ns/a/ct".parse::<GroupPath>().is_err());
        assert!("/ct/200".parse::<GroupPath>().is_err());
    }

    #[test]
    fn file_paths_refuse_traversal() {
        let dir: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse().unwrap();
        let ns = BackupNamespace::root();
        assert_eq!(
            dir.file_path(&ns, ".protected").unwrap(),
            "vm/100/2024-06-05T15:06:40Z/.protected"
        );
        for bad in ["", ".", "..", "a/b", "/etc/passwd", "a\0b"] {
            assert!(
                matches!(dir.file_path(&ns, bad), Err(Error::InvalidFileName { .. })),
                "{bad:?}"
            );
        }
    }
}
