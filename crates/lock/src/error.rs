//! The one error type of this crate.
//!
//! Rules: every error names the lock it is about (a path, or a resource name for implementations
//! that are not files). A busy lock is its own pair of variants ([`Error::WouldBlock`],
//! [`Error::Timeout`]) carrying who holds it, so callers can tell "someone else has it" from "the
//! lock machinery failed". Looking up the holders is best-effort and never changes which error is
//! returned. Messages are keepsake's own; the cause of an I/O error is the `source`, not part of
//! the message.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Holder, LockMode};

/// Why a lock could not be taken or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock is held in a conflicting mode and the caller asked for a single try (timeout 0).
    #[error("{mode} lock {path:?} is busy: {}", HolderList(holders))]
    WouldBlock {
        /// The lock file or directory.
        path: PathBuf,
        /// The mode that was asked for.
        mode: LockMode,
        /// Who holds it, as far as could be found out (may be empty).
        holders: Vec<Holder>,
    },
    /// The lock stayed busy for the whole timeout.
    #[error(
        "{mode} lock {path:?} still busy after {timeout:?}: {}",
        HolderList(holders)
    )]
    Timeout {
        /// The lock file or directory.
        path: PathBuf,
        /// The mode that was asked for.
        mode: LockMode,
        /// How long the caller was willing to wait.
        timeout: Duration,
        /// Who held it when the wait ended, as far as could be found out (may be empty).
        holders: Vec<Holder>,
    },
    /// Opening, creating, locking, checking or removing the lock failed.
    #[error("I/O error on lock {path:?}")]
    Io {
        /// The lock file or directory (or the folder that could not be created).
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The locked file kept being unlinked or replaced between opening and locking it (the
    /// double-stat check failed on every retry): other processes keep removing this lock.
    #[error("lock {path:?} was replaced while it was being taken, retries exhausted")]
    Replaced {
        /// The lock file or directory.
        path: PathBuf,
    },
    /// A datastore name that cannot be a lock folder name (PBS's safe-id rule, 3 to 32 bytes).
    #[error(
        "invalid datastore name {name:?}: expected 3 to 32 of [A-Za-z0-9_.-], not starting with . or -"
    )]
    InvalidStoreName {
        /// The refused name.
        name: String,
    },
    /// A lock root that could be (part of) the datastore: refused by [`check_lock_root`] and by
    /// the lock-folder sweep before anything was touched.
    ///
    /// [`check_lock_root`]: crate::check_lock_root
    #[error("refused lock root {lock_root:?} for datastore {datastore_root:?}: {reason}")]
    UnsafeLockRoot {
        /// The lock root as given.
        lock_root: PathBuf,
        /// The datastore root as given.
        datastore_root: PathBuf,
        /// Why.
        reason: LockRootRefusal,
        /// The error that made a path impossible to resolve, for the `*Unresolvable` reasons.
        #[source]
        source: Option<io::Error>,
    },
    /// A lock held in the past is no longer this holder's (a lease that ran out and was taken over,
    /// or is about to run out): the fencing check of [`Locker::check_fence`] refuses the write
    /// the holder was about to make.
    ///
    /// [`Locker::check_fence`]: crate::Locker::check_fence
    #[error("lock {resource} lost: {reason}")]
    Lost {
        /// What was locked, in the implementation's terms (for leases: the object key).
        resource: String,
        /// What the check found.
        reason: LostReason,
    },
    /// A lock scheme name other than `files`, `dirs` or `both` (see
    /// [`LockScheme`](crate::LockScheme)).
    #[error("unknown lock scheme {name:?}: expected files, dirs or both")]
    UnknownLockScheme {
        /// The refused name.
        name: String,
    },
    /// A failure of a lock implementation that is not built on local files (for example lease
    /// locks in an object store), reported through this crate's interface.
    #[error("lock backend error on {resource}")]
    Backend {
        /// What was being locked, in the implementation's own terms (for example an object key).
        resource: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Whether the lock was simply held by someone else ([`Error::WouldBlock`] or
    /// [`Error::Timeout`]), as opposed to a failure of the lock machinery.
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::WouldBlock { .. } | Error::Timeout { .. })
    }

    /// The holders reported by a busy error; empty for every other error.
    pub fn holders(&self) -> &[Holder] {
        match self {
            Error::WouldBlock { holders, .. } | Error::Timeout { holders, .. } => holders,
            _ => &[],
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Why a held lock is no longer its holder's ([`Error::Lost`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// This locker holds no such lock (it was released, or the guard is another locker's).
    NotHeld,
    /// A renewal found the lock taken over.
    TakenOver,
    /// The lock's record is gone.
    Gone,
    /// Another holder has it now, at this epoch.
    Replaced {
        /// The epoch the lock is at now.
        epoch: u64,
        /// The epoch this holder was granted.
        ours: u64,
    },
    /// The lock runs out within the clock-skew bound.
    RunningOut,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::NotHeld => f.write_str("this process holds no such lock"),
            LostReason::TakenOver => f.write_str("a renewal found it taken over"),
            LostReason::Gone => f.write_str("its record is gone"),
            LostReason::Replaced { epoch, ours } => {
                write!(f, "taken over (epoch {epoch} now, ours was {ours})")
            }
            LostReason::RunningOut => f.write_str("it is about to run out"),
        }
    }
}

/// Why a lock root was refused ([`Error::UnsafeLockRoot`]). "The lock folder" is
/// `<lock root>/<store>`, the folder the sweep would walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockRootRefusal {
    /// The lock root is the datastore root.
    IsDatastoreRoot,
    /// The datastore root lies inside the lock root (so a lock folder may be the datastore or
    /// hold it).
    ContainsDatastoreRoot,
    /// The lock root lies inside the datastore root.
    InsideDatastoreRoot,
    /// The lock root cannot be resolved to a canonical path (it may not exist), so it cannot be
    /// compared with the datastore root.
    LockRootUnresolvable,
    /// The datastore root cannot be resolved to a canonical path.
    DatastoreRootUnresolvable,
    /// The lock folder holds `.chunks` or `.lock`, as a datastore does.
    LockFolderLooksLikeDatastore,
    /// The lock folder is a symlink (the sweep never follows one).
    LockFolderIsSymlink,
    /// The lock folder is not a folder.
    LockFolderNotAFolder,
}

impl fmt::Display for LockRootRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockRootRefusal::IsDatastoreRoot => "it is the datastore root",
            LockRootRefusal::ContainsDatastoreRoot => "it contains the datastore root",
            LockRootRefusal::InsideDatastoreRoot => "it lies inside the datastore root",
            LockRootRefusal::LockRootUnresolvable => "it cannot be resolved",
            LockRootRefusal::DatastoreRootUnresolvable => "the datastore root cannot be resolved",
            LockRootRefusal::LockFolderLooksLikeDatastore => {
                "its folder for this datastore holds .chunks or .lock, like a datastore"
            }
            LockRootRefusal::LockFolderIsSymlink => "its folder for this datastore is a symlink",
            LockRootRefusal::LockFolderNotAFolder => {
                "its folder for this datastore is not a folder"
            }
        })
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Formats holders for a message: `held by pid 12 (exclusive: keepsake prune), pid 13 (shared)`.
struct HolderList<'a>(&'a [Holder]);

impl fmt::Display for HolderList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("holder unknown");
        }
        f.write_str("held by ")?;
        for (i, holder) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{holder}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_messages_name_path_mode_and_holders() {
        let err = Error::WouldBlock {
            path: "/locks/store1/vm-100".into(),
            mode: LockMode::Shared,
            holders: vec![
                Holder::new(
                    12,
                    LockMode::Exclusive,
                    Some("keepsake prune vm/100".into()),
                ),
                Holder::new(13, LockMode::Exclusive, None),
            ],
        };
        assert_eq!(
            err.to_string(),
            "shared lock \"/locks/store1/vm-100\" is busy: held by pid 12 (exclusive: keepsake prune vm/100), pid 13 (exclusive)"
        );
        assert!(err.is_busy());
        assert_eq!(err.holders().len(), 2);

        let err = Error::Timeout {
            path: "/l".into(),
            mode: LockMode::Exclusive,
            timeout: Duration::from_secs(5),
            holders: Vec::new(),
        };
        assert_eq!(
            err.to_string(),
            "exclusive lock \"/l\" still busy after 5s: holder unknown"
        );
        assert!(err.is_busy());
    }

    #[test]
    fn other_errors_are_not_busy_and_keep_their_cause() {
        let err = Error::io("/l", io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!err.is_busy());
        assert!(err.holders().is_empty());
        let source = std::error::Error::source(&err).expect("cause");
        assert_eq!(
            source.to_string(),
            io::Error::from(io::ErrorKind::PermissionDenied).to_string()
        );
        assert!(!Error::Replaced { path: "/l".into() }.is_busy());
    }
}
