//! The PBS fixture: a small datastore written by Proxmox Backup Server 3.2.4's own code.
//!
//! The tarball and its README live in `crates/testkit/fixtures/` (copied from the shared
//! fixtures; sha256 `ed7cbd5c…2308`). Every test gets its own unpacked copy, so tests may
//! change it freely.

use std::io;
use std::path::{Path, PathBuf};

/// Path of the fixture tarball inside the repository.
pub fn tarball() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pbs-3.2.4-store1.tar")
}

/// An unpacked copy of the fixture; the folder is deleted on drop.
#[derive(Debug)]
pub struct PbsFixture {
    dir: tempfile::TempDir,
}

impl PbsFixture {
    /// Unpacks a fresh copy of the fixture into a new temporary folder.
    pub fn unpack() -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("keepsake-pbs-fixture-")
            .tempdir()?;
        let file = std::fs::File::open(tarball())?;
        tar::Archive::new(io::BufReader::new(file)).unpack(dir.path())?;
        Ok(Self { dir })
    }

    /// The datastore root (`<tmp>/store1`).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("store1")
    }
}

/// One snapshot of the fixture, as the fixture README lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixtureSnapshot {
    /// Namespace in name form (`""` = root, `prod/site-a`).
    pub namespace: &'static str,
    /// `<type>/<id>`.
    pub group: &'static str,
    /// RFC 3339 UTC time, the snapshot folder name.
    pub time: &'static str,
    /// `.protected` exists.
    pub protected: bool,
    /// `index.json.blob` exists.
    pub finished: bool,
}

/// Every namespace of the fixture in name form, root first.
pub const NAMESPACES: &[&str] = &["", "dev", "prod", "prod/site-a"];

/// Every group of the fixture: (namespace, group, owner).
pub const GROUPS: &[(&str, &str, &str)] = &[
    ("", "ct/200", "user@pbs!tok"),
    ("", "vm/100", "root@pam"),
    ("", "host/myhost", "root@pam"),
    ("prod", "host/myhost", "user@pbs!tok"),
    ("prod/site-a", "ct/200", "root@pam"),
    ("prod/site-a", "vm/100", "user@pbs!tok"),
];

/// Every snapshot of the fixture.
pub const SNAPSHOTS: &[FixtureSnapshot] = &[
    snap("", "ct/200", "2024-06-05T16:06:40Z", false, true),
    snap("", "vm/100", "2024-06-05T15:06:40Z", true, true),
    snap("", "vm/100", "2024-06-06T15:06:40Z", false, true),
    snap("", "vm/100", "2024-06-07T15:06:40Z", false, false),
    snap("", "host/myhost", "2024-06-05T17:06:40Z", false, true),
    snap("prod", "host/myhost", "2024-06-05T18:06:40Z", false, true),
    snap("prod/site-a", "ct/200", "2024-06-05T20:06:40Z", false, true),
    snap("prod/site-a", "vm/100", "2024-06-05T19:06:40Z", true, true),
];

const fn snap(
    namespace: &'static str,
    group: &'static str,
    time: &'static str,
    protected: bool,
    finished: bool,
) -> FixtureSnapshot {
    FixtureSnapshot {
        namespace,
        group,
        time,
        protected,
        finished,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacked_fixture_matches_the_listed_facts() {
        let fx = PbsFixture::unpack().unwrap();
        let root = fx.path();
        assert!(root.join(".lock").is_file());
        for (ns, group, owner) in GROUPS {
            let ns_path: String = ns
                .split('/')
                .filter(|c| !c.is_empty())
                .map(|c| format!("ns/{c}/"))
                .collect();
            let text =
                std::fs::read_to_string(root.join(format!("{ns_path}{group}/owner"))).unwrap();
            assert_eq!(text, format!("{owner}\n"));
        }
        for s in SNAPSHOTS {
            let ns_path: String = s
                .namespace
                .split('/')
                .filter(|c| !c.is_empty())
                .map(|c| format!("ns/{c}/"))
                .collect();
            let dir = root.join(format!("{ns_path}{}/{}", s.group, s.time));
            assert!(dir.is_dir(), "{dir:?}");
            assert_eq!(dir.join(".protected").exists(), s.protected, "{dir:?}");
            assert_eq!(dir.join("index.json.blob").exists(), s.finished, "{dir:?}");
        }
    }
}
