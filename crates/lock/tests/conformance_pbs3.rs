//! The lock conformance suite on the PBS 3 scheme ([`DirLocker`]): directory flocks for groups and
//! snapshots, lock files for manifests.

use std::path::Path;

use keepsake_lock::conformance::LockerFixture;
use keepsake_lock::{DirLocker, LockTarget, Locker};

struct DirectoryLocks;

impl LockerFixture for DirectoryLocks {
    fn locker(&self, scratch: &Path) -> Box<dyn Locker> {
        Box::new(
            DirLocker::new(scratch.join("datastore"), scratch.join("locks"), "store1")
                .expect("valid store name"),
        )
    }

    fn prepare(&self, scratch: &Path, target: &LockTarget<'_>) {
        let dir = match *target {
            LockTarget::Group { ns, group } => group.relative_path(ns),
            LockTarget::Snapshot { ns, snapshot } => snapshot.relative_path(ns),
            LockTarget::Manifest { .. } => return,
        };
        std::fs::create_dir_all(scratch.join("datastore").join(dir))
            .expect("create datastore folder");
    }
}

keepsake_lock::conformance_tests!(DirectoryLocks);
