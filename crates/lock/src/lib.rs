//! Locks on the groups, snapshots and manifests of a Proxmox Backup Server (PBS) compatible
//! datastore, with PBS's own lock files, so that keepsake and a PBS server on the same host exclude
//! each other.
//!
//! # What a lock is
//!
//! A [`Locker`] takes a lock on a [`LockTarget`] (a group, a snapshot, or a snapshot's manifest, in
//! its namespace) in a [`LockMode`] (shared or exclusive), waiting up to a timeout, and hands back a
//! guard that releases the lock on drop. Three implementations follow PBS's two schemes:
//!
//! * [`FileLocker`] (PBS 4): a BSD `flock` on a lock file at
//!   `<lock root>/<store>/[<ns components joined by ':'>/]<escaped relative path>`, the name escaped
//!   systemd-style ([`escape_unit_path`]) and moved to `hashed/` when 255 bytes or longer
//!   ([`relative_lock_path`]). The lock root is the caller's: [`PBS_LOCK_ROOT`] on a PBS host.
//! * [`DirLocker`] (PBS 3, or PBS 4 with its old-locking flag): a `flock` on the group or snapshot
//!   directory, and a manifest lock file at PBS 3's path.
//! * [`DualSchemeLocker`] (both): the PBS 4 lock file, then the PBS 3 lock, so that neither a PBS 3
//!   nor a PBS 4 server gets in; for hosts where it is not known which one runs.
//!
//! [`LockScheme`] (`files`, `dirs`, `both`) picks one.
//!
//! Lock files are created with their folders, mode 0660 (folders [`LOCK_DIR_MODE`] 0755), owned by
//! the given [`FileOwner`] if any, opened `O_RDWR|O_CLOEXEC|O_APPEND`. After
//! the flock, a *double-stat* check (the locked file's device and inode equal those at the path)
//! detects a lock file that its exclusive holder removed meanwhile, and retries on the new file.
//! Only an exclusive holder removes a lock file ([`ExclusiveGuard::remove`]), unlinking it *before*
//! releasing, which is what keeps the check sound.
//!
//! Timeouts: zero is a single try ([`Error::WouldBlock`]); a positive timeout polls with a bounded,
//! jittered exponential backoff (no signals, no busy loop) and ends in [`Error::Timeout`]. PBS's
//! defaults are [`LockTarget::default_timeout`]: 0 s for groups and snapshots, 5 s for manifests.
//! Busy errors list the [`Holder`]s (pid, mode, command line) found in `/proc/locks`. Only
//! contention is busy: every other failure (a lock root that cannot be written, a file where a
//! folder should be, a read-only file system) is an [`Error::Io`] carrying the errno.
//!
//! Locks are per guard, not per process: a second lock of the same target from the same process
//! conflicts like any other (flock belongs to the open file).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use keepsake_hierarchy::{BackupDir, BackupNamespace};
//! use keepsake_lock::{FileLocker, LockMode, LockTarget, Locker};
//!
//! let lock_root = tempfile::tempdir()?;
//! let locker = FileLocker::new(lock_root.path(), "store1")?;
//! let ns: BackupNamespace = "prod".parse()?;
//! let snapshot: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse()?;
//! let target = LockTarget::snapshot(&ns, &snapshot);
//!
//! // A reader and a verifier may share the snapshot...
//! let reader = locker.lock(&target, LockMode::Shared, target.default_timeout())?;
//! let verifier = locker.lock_shared(&target, Duration::ZERO)?;
//! // ...but nobody may destroy it meanwhile; the error says who is in the way.
//! let err = locker.lock_exclusive(&target, Duration::ZERO).unwrap_err();
//! assert!(err.is_busy());
//! assert!(err.holders().iter().any(|h| h.pid == std::process::id()));
//!
//! drop((reader, verifier));
//! let destroyer = locker.lock_exclusive(&target, Duration::from_millis(100))?;
//! assert_eq!(
//!     destroyer.resource(),
//!     lock_root.path().join(r"store1/prod/vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z")
//! );
//! // The snapshot is gone: its lock file goes too, still under the lock.
//! destroyer.remove()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Sweeping a lock folder
//!
//! Lock files outlive their objects (PBS 3 never removes most of them). [`sweep_lock_folder`]
//! removes the ones nobody holds from `<lock root>/<store>`, each while holding it, and nothing
//! else: only names a locker of the scheme writes count as lock files; PBS's `move-journal` and any
//! other entry are left and reported; a lock root that is, holds or lies inside the datastore root
//! is refused before anything is read.
//!
//! ```
//! use keepsake_lock::{Error, LockScheme, SweepMode, SweepOptions, sweep_lock_folder};
//!
//! let scratch = tempfile::tempdir()?;
//! let datastore = scratch.path().join("store1");
//! std::fs::create_dir_all(datastore.join(".chunks"))?;
//! std::fs::create_dir_all(scratch.path().join("locks/store1"))?;
//! std::fs::write(scratch.path().join("locks/store1/vm-100"), b"")?; // group vm/100's lock file
//!
//! let sweep = |lock_root: &std::path::Path| {
//!     sweep_lock_folder(
//!         &SweepOptions::new(lock_root, "store1", &datastore)
//!             .scheme(LockScheme::Both)
//!             .mode(SweepMode::Remove),
//!     )
//! };
//! let report = sweep(&scratch.path().join("locks"))?;
//! assert_eq!(report.free_lock_files, [scratch.path().join("locks/store1/vm-100")]);
//!
//! // A lock root whose `<lock root>/store1` is the datastore itself is refused.
//! assert!(matches!(sweep(scratch.path()), Err(Error::UnsafeLockRoot { .. })));
//! assert!(datastore.join(".chunks").is_dir());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Which crate for what
//!
//! This crate only locks. The datastore operations that take these locks (destroy, prune, manifest
//! updates, backup sessions) are in `keepsake-datastore`; names and relative paths in
//! `keepsake-hierarchy`.

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
