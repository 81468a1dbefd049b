//! The lock interface: what can be locked ([`LockTarget`]), how ([`LockMode`]), by whom
//! ([`Locker`]) and what the caller holds meanwhile ([`LockGuard`], [`ExclusiveGuard`]).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace, MANIFEST_LOCK_NAME};

use crate::Result;

/// Shared (many holders) or exclusive (one holder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// Any number of shared holders, no exclusive holder (readers, verify, the base snapshot of a
    /// running backup).
    Shared,
    /// A single holder (a backup session, destroy, prune, manifest updates).
    Exclusive,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Shared => "shared",
            LockMode::Exclusive => "exclusive",
        })
    }
}

/// PBS's timeout for group locks: a single try.
pub const GROUP_LOCK_TIMEOUT: Duration = Duration::ZERO;
/// PBS's timeout for snapshot locks, shared or exclusive: a single try.
pub const SNAPSHOT_LOCK_TIMEOUT: Duration = Duration::ZERO;
/// PBS's timeout for manifest locks (taken for short read-modify-write cycles, so worth a wait).
pub const MANIFEST_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a lock protects: a backup group, a snapshot, or a snapshot's manifest, each in its
/// namespace. It borrows the names, so building one costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockTarget<'a> {
    /// A backup group (`vm/100`): held for a whole backup session, and to destroy or move a group.
    Group {
        /// The namespace holding the group.
        ns: &'a BackupNamespace,
        /// The group.
        group: &'a BackupGroup,
    },
    /// A snapshot (`vm/100/<time>`): exclusive to create, destroy or (un)protect it, shared to
    /// read or verify it.
    Snapshot {
        /// The namespace holding the snapshot.
        ns: &'a BackupNamespace,
        /// The snapshot.
        snapshot: &'a BackupDir,
    },
    /// The manifest (`index.json.blob`) of a snapshot: held while it is rewritten.
    Manifest {
        /// The namespace holding the snapshot.
        ns: &'a BackupNamespace,
        /// The snapshot whose manifest is locked.
        snapshot: &'a BackupDir,
    },
}

impl<'a> LockTarget<'a> {
    /// The lock of `group` in `ns`.
    pub fn group(ns: &'a BackupNamespace, group: &'a BackupGroup) -> Self {
        LockTarget::Group { ns, group }
    }

    /// The lock of `snapshot` in `ns`.
    pub fn snapshot(ns: &'a BackupNamespace, snapshot: &'a BackupDir) -> Self {
        LockTarget::Snapshot { ns, snapshot }
    }

    /// The manifest lock of `snapshot` in `ns`.
    pub fn manifest(ns: &'a BackupNamespace, snapshot: &'a BackupDir) -> Self {
        LockTarget::Manifest { ns, snapshot }
    }

    /// The namespace of the locked object.
    pub fn ns(&self) -> &'a BackupNamespace {
        match *self {
            LockTarget::Group { ns, .. }
            | LockTarget::Snapshot { ns, .. }
            | LockTarget::Manifest { ns, .. } => ns,
        }
    }

    /// PBS's timeout for this kind of lock: [`GROUP_LOCK_TIMEOUT`], [`SNAPSHOT_LOCK_TIMEOUT`] or
    /// [`MANIFEST_LOCK_TIMEOUT`].
    pub fn default_timeout(&self) -> Duration {
        match self {
            LockTarget::Group { .. } => GROUP_LOCK_TIMEOUT,
            LockTarget::Snapshot { .. } => SNAPSHOT_LOCK_TIMEOUT,
            LockTarget::Manifest { .. } => MANIFEST_LOCK_TIMEOUT,
        }
    }

    /// The object's path without its namespace part, which PBS 4 escapes into the lock file name:
    /// `vm/100`, `vm/100/<time>` or `vm/100/<time>/.index.json.lck`.
    pub fn relative_path(&self) -> String {
        match self {
            LockTarget::Group { group, .. } => group.to_string(),
            LockTarget::Snapshot { snapshot, .. } => snapshot.to_string(),
            LockTarget::Manifest { snapshot, .. } => format!("{snapshot}/{MANIFEST_LOCK_NAME}"),
        }
    }
}

impl fmt::Display for LockTarget<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockTarget::Group { group, .. } => write!(f, "group {group}")?,
            LockTarget::Snapshot { snapshot, .. } => write!(f, "snapshot {snapshot}")?,
            LockTarget::Manifest { snapshot, .. } => write!(f, "manifest of {snapshot}")?,
        }
        let ns = self.ns();
        if !ns.is_root() {
            write!(f, " in namespace {ns}")?;
        }
        Ok(())
    }
}

/// Takes locks on the groups, snapshots and manifests of one datastore.
///
/// # Contract
///
/// Every implementation passes the conformance suite (`keepsake_lock::conformance`, cargo feature
/// `conformance`), which checks:
///
/// * An exclusive lock excludes every other lock of the same target; shared locks admit each other
///   and exclude exclusive ones. Different targets never conflict (a group lock does not cover its
///   snapshots).
/// * Locks are not re-entrant: each [`LockGuard`] is its own holder, so a second lock of the same
///   target from the same process, thread or [`Locker`] conflicts like any other.
/// * `timeout` zero means a single try, failing with [`Error::WouldBlock`](crate::Error::WouldBlock);
///   a positive timeout waits, without spinning, and fails with
///   [`Error::Timeout`](crate::Error::Timeout) at the deadline, or succeeds as soon as the
///   holders release within it. Busy errors name the holders where the implementation can know them.
/// * Dropping a guard releases the lock; a holder that dies (even by `SIGKILL`) releases its locks
///   (at once for flock-based implementations, when its lease runs out for lease-based ones).
/// * [`ExclusiveGuard::remove`] deletes the lock's backing state while still holding the lock,
///   and a waiter that obtained the lock on the deleted state notices and retries on the current
///   one, so two holders never both believe they hold the lock.
///
/// Implementations are `Send + Sync` and blocking; guards are `Send + Sync` and may be dropped on
/// any thread.
pub trait Locker: Send + Sync + fmt::Debug {
    /// Takes the lock of `target` in `mode`, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`](crate::Error::WouldBlock) / [`Error::Timeout`](crate::Error::Timeout)
    /// when it is held in a conflicting mode, [`Error::Replaced`](crate::Error::Replaced) when the
    /// lock kept being removed under the caller, and [`Error::Io`](crate::Error::Io) (or
    /// [`Error::Backend`](crate::Error::Backend)) when the lock could not be created or checked.
    fn lock(&self, target: &LockTarget<'_>, mode: LockMode, timeout: Duration)
    -> Result<LockGuard>;

    /// Takes the lock of `target` exclusively; see [`Locker::lock`].
    fn lock_exclusive(&self, target: &LockTarget<'_>, timeout: Duration) -> Result<ExclusiveGuard> {
        let guard = self.lock(target, LockMode::Exclusive, timeout)?;
        debug_assert_eq!(
            guard.mode(),
            LockMode::Exclusive,
            "{self:?} returned a shared lock for an exclusive request"
        );
        Ok(ExclusiveGuard { inner: guard })
    }

    /// Takes the lock of `target` shared; see [`Locker::lock`].
    fn lock_shared(&self, target: &LockTarget<'_>, timeout: Duration) -> Result<LockGuard> {
        self.lock(target, LockMode::Shared, timeout)
    }

    /// The fencing check: whether `guard` (taken from this locker) still holds its lock, asked
    /// right before a write made under it. Locks that cannot be lost while their guard lives
    /// (flocks) always pass; leases, which run out, check that nobody took them over.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`](crate::Error::Lost) when the lock is no longer the guard's; other errors
    /// when it could not be checked (never read them as "still held").
    fn check_fence(&self, guard: &LockGuard) -> Result<()> {
        let _ = guard;
        Ok(())
    }
}

/// A lock held by a [`Locker`] implementation. Implement this (and [`Locker`]) to add a lock
/// implementation; users hold it through a [`LockGuard`]. Dropping it must release the lock.
pub trait HeldLock: Send + Sync + fmt::Debug {
    /// The mode the lock is held in.
    fn mode(&self) -> LockMode;

    /// The lock file or directory (or, for implementations that are not files, the resource name
    /// as a path, such as an object key).
    fn resource(&self) -> &Path;

    /// Deletes the lock's backing state (the lock file) while still holding the lock, then
    /// releases it. Only called on locks held exclusively.
    ///
    /// # Errors
    ///
    /// When the deletion failed; the lock is released either way.
    fn remove(self: Box<Self>) -> Result<()>;
}

/// A held lock of any mode; dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    held: Box<dyn HeldLock>,
}

impl LockGuard {
    /// Wraps a lock held by a [`Locker`] implementation.
    pub fn new(held: Box<dyn HeldLock>) -> Self {
        Self { held }
    }

    /// The mode the lock is held in.
    pub fn mode(&self) -> LockMode {
        self.held.mode()
    }

    /// The lock file or directory (or the implementation's resource name).
    pub fn resource(&self) -> &Path {
        self.held.resource()
    }

    /// The guard as an [`ExclusiveGuard`] if it holds the lock exclusively, else itself back.
    pub fn into_exclusive(self) -> std::result::Result<ExclusiveGuard, LockGuard> {
        match self.mode() {
            LockMode::Exclusive => Ok(ExclusiveGuard { inner: self }),
            LockMode::Shared => Err(self),
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("mode", &self.mode())
            .field("resource", &self.resource())
            .finish()
    }
}

/// A lock held exclusively; dropping it releases the lock. Only an exclusive holder may remove the
/// lock file, so [`remove`](Self::remove) exists only here.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ExclusiveGuard {
    inner: LockGuard,
}

impl ExclusiveGuard {
    /// The lock file or directory (or the implementation's resource name).
    pub fn resource(&self) -> &Path {
        self.inner.resource()
    }

    /// Deletes the lock file while still holding the lock, then releases it, so the next locker
    /// starts from a fresh file. Call it when the locked object is gone (the snapshot or group was
    /// destroyed or moved). Directory locks (PBS 3 scheme) only release: the directory belongs to
    /// the datastore.
    ///
    /// # Errors
    ///
    /// [`Error::Io`](crate::Error::Io) when the file could not be deleted; the lock is released
    /// either way.
    pub fn remove(self) -> Result<()> {
        self.inner.held.remove()
    }

    /// The guard as a [`LockGuard`] (still exclusive).
    pub fn into_guard(self) -> LockGuard {
        self.inner
    }
}

impl fmt::Debug for ExclusiveGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExclusiveGuard")
            .field("resource", &self.resource())
            .finish()
    }
}

impl From<ExclusiveGuard> for LockGuard {
    fn from(guard: ExclusiveGuard) -> Self {
        guard.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DirLocker, DualSchemeLocker, Error, FileLocker};

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn everything_shared_is_send_and_sync() {
        send_sync::<FileLocker>();
        send_sync::<DirLocker>();
        send_sync::<DualSchemeLocker>();
        send_sync::<Box<dyn Locker>>();
        send_sync::<LockGuard>();
        send_sync::<ExclusiveGuard>();
        send_sync::<LockTarget<'_>>();
        send_sync::<Error>();
    }

    #[test]
    fn targets_describe_themselves() {
        let root = BackupNamespace::root();
        let ns: BackupNamespace = "a/b".parse().unwrap();
        let group: BackupGroup = "vm/100".parse().unwrap();
        let dir: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse().unwrap();
        let check = |target: LockTarget<'_>, display: &str, relative: &str, timeout: Duration| {
            assert_eq!(target.to_string(), display);
            assert_eq!(target.relative_path(), relative);
            assert_eq!(target.default_timeout(), timeout);
        };
        check(
            LockTarget::group(&root, &group),
            "group vm/100",
            "vm/100",
            Duration::ZERO,
        );
        check(
            LockTarget::snapshot(&ns, &dir),
            "snapshot vm/100/2024-06-05T15:06:40Z in namespace a/b",
            "vm/100/2024-06-05T15:06:40Z",
            Duration::ZERO,
        );
        check(
            LockTarget::manifest(&ns, &dir),
            "manifest of vm/100/2024-06-05T15:06:40Z in namespace a/b",
            "vm/100/2024-06-05T15:06:40Z/.index.json.lck",
            Duration::from_secs(5),
        );
        assert_eq!(LockTarget::manifest(&ns, &dir).ns(), &ns);
        assert_eq!(LockMode::Shared.to_string(), "shared");
        assert_eq!(LockMode::Exclusive.to_string(), "exclusive");
    }
}
