//! The lock conformance suite on PBS 4 lock files ([`FileLocker`]).

use std::path::Path;

use keepsake_lock::conformance::LockerFixture;
use keepsake_lock::{FileLocker, Locker};

struct LockFiles;

impl LockerFixture for LockFiles {
    fn locker(&self, scratch: &Path) -> Box<dyn Locker> {
        Box::new(FileLocker::new(scratch.join("locks"), "store1").expect("valid store name"))
    }
}

keepsake_lock::conformance_tests!(LockFiles);
