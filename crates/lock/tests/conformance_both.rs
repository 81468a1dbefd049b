//! The lock conformance suite on both PBS schemes at once ([`DualSchemeLocker`]): once with the
//! group and snapshot directories present (every lock is a lock file and a directory flock), once
//! without them (the directory part is skipped, the lock file alone must still conform).

use std::path::Path;

use keepsake_lock::conformance::LockerFixture;
use keepsake_lock::{DualSchemeLocker, LockTarget, Locker};

fn locker(scratch: &Path) -> Box<dyn Locker> {
    let datastore = scratch.join("datastore");
    std::fs::create_dir_all(&datastore).expect("create datastore root");
    Box::new(
        DualSchemeLocker::new(datastore, scratch.join("locks"), "store1")
            .expect("valid store name"),
    )
}

/// The datastore holds every group and snapshot the suite locks.
struct WithFolders;

impl LockerFixture for WithFolders {
    fn locker(&self, scratch: &Path) -> Box<dyn Locker> {
        locker(scratch)
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

/// An empty datastore: groups and snapshots that do not exist (yet), as when a backup starts.
struct WithoutFolders;

impl LockerFixture for WithoutFolders {
    fn locker(&self, scratch: &Path) -> Box<dyn Locker> {
        locker(scratch)
    }
}

mod with_folders {
    keepsake_lock::conformance_tests!(super::WithFolders);
}

mod without_folders {
    keepsake_lock::conformance_tests!(super::WithoutFolders);
}
