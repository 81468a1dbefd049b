#![doc = include_str!("../README.md")]

mod error;
mod file;
mod holders;
mod locker;
mod path;
mod scheme;
mod sweep;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{Error, LockRootRefusal, LostReason, Result};
pub use file::{FileOwner, LOCK_DIR_MODE, LOCK_FILE_MODE, LockFile};
pub use holders::{Holder, holders_of, holders_of_path, parse_flock_holders};
pub use locker::{
    ExclusiveGuard, GROUP_LOCK_TIMEOUT, HeldLock, LockGuard, LockMode, LockTarget, Locker,
    MANIFEST_LOCK_TIMEOUT, SNAPSHOT_LOCK_TIMEOUT,
};
pub use path::{
    HASHED_DIR_NAME, MAX_PLAIN_LOCK_NAME, escape_unit_path, relative_lock_path, unescape_unit_path,
};
pub use scheme::{
    DirLocker, DualSchemeLocker, FileLocker, LockScheme, PBS_LOCK_ROOT, PBS_OLD_LOCKING_FLAG,
};
pub use sweep::{SweepMode, SweepOptions, SweepReport, check_lock_root, sweep_lock_folder};
