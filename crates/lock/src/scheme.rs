//! The two PBS lock schemes as [`Locker`] implementations: lock files under a lock root (PBS 4,
//! [`FileLocker`]) and directory flocks (PBS 3, [`DirLocker`]).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keepsake_hierarchy::MANIFEST_LOCK_NAME;

use crate::file::{LockKind, acquire, join};
use crate::path::{format_time, push_lock_path};
use crate::{Error, FileOwner, LockGuard, LockMode, LockTarget, Locker, Result};

/// The lock root of a PBS server (`/run/proxmox-backup/locks`, a tmpfs). Pass it as the lock root
/// to exclude a PBS server on the same host; nothing in keepsake uses it by default.
pub const PBS_LOCK_ROOT: &str = "/run/proxmox-backup/locks";

/// The file whose existence makes PBS 4 fall back to the PBS 3 scheme (its "old-locking" mode),
/// for [`LockScheme::from_old_locking_flag`].
pub const PBS_OLD_LOCKING_FLAG: &str = "/run/proxmox-backup/old-locking";

/// Which PBS lock scheme to follow: the one the PBS server on the same host uses, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LockScheme {
    /// PBS 4: lock files under the lock root ([`FileLocker`]).
    #[default]
    LockFiles,
    /// PBS 3 (and PBS 4 in old-locking mode): flocks on the group and snapshot directories, and
    /// the manifest lock file at PBS 3's path ([`DirLocker`]).
    DirectoryLocks,
}

impl LockScheme {
    /// [`DirectoryLocks`](Self::DirectoryLocks) if `flag` exists (pass [`PBS_OLD_LOCKING_FLAG`] on
    /// a PBS host), else [`LockFiles`](Self::LockFiles), as PBS 4 decides.
    pub fn from_old_locking_flag(flag: impl AsRef<Path>) -> Self {
        if flag.as_ref().exists() {
            LockScheme::DirectoryLocks
        } else {
            LockScheme::LockFiles
        }
    }

    /// A locker of this scheme for datastore `store` rooted at `datastore_root` (the PBS 3 scheme
    /// locks its directories; the PBS 4 scheme ignores it), with lock files under `lock_root`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStoreName`] if `store` is not a valid datastore name.
    pub fn locker(
        self,
        lock_root: impl AsRef<Path>,
        store: &str,
        datastore_root: impl AsRef<Path>,
    ) -> Result<Box<dyn Locker>> {
        Ok(match self {
            LockScheme::LockFiles => Box::new(FileLocker::new(lock_root, store)?),
            LockScheme::DirectoryLocks => {
                Box::new(DirLocker::new(datastore_root.as_ref(), lock_root, store)?)
            }
        })
    }
}

/// `<lock root>/<store>`, refusing store names PBS would refuse (which also keeps the path inside
/// the lock root).
fn store_lock_dir(lock_root: &Path, store: &str) -> Result<PathBuf> {
    let valid = (3..=32).contains(&store.len())
        && store.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if !valid {
        return Err(Error::InvalidStoreName {
            name: store.to_owned(),
        });
    }
    Ok(lock_root.join(store))
}

/// PBS 4 locks: one lock file per group, snapshot and manifest at
/// `<lock root>/<store>/[<ns components joined by ':'>/]<escaped relative path>` (see
/// [`relative_lock_path`](crate::relative_lock_path)), byte for byte PBS's path, so that keepsake
/// and a PBS 4 server with the same lock root exclude each other.
///
/// ```
/// use keepsake_hierarchy::{BackupDir, BackupNamespace};
/// use keepsake_lock::{FileLocker, LockTarget};
///
/// let locker = FileLocker::new("/run/proxmox-backup/locks", "store1")?;
/// let ns: BackupNamespace = "a/b".parse()?;
/// let dir: BackupDir = "vm/100/2022-05-02T08:11:33Z".parse()?;
/// assert_eq!(
///     locker.lock_path(&LockTarget::manifest(&ns, &dir)).to_str(),
///     Some(r"/run/proxmox-backup/locks/store1/a:b/vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z-.index.json.lck")
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileLocker {
    store_dir: PathBuf,
    owner: Option<FileOwner>,
}

impl FileLocker {
    /// The locker of datastore `store` with lock files under `lock_root` (PBS: [`PBS_LOCK_ROOT`]).
    /// Nothing is created until a lock is taken.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStoreName`] if `store` is not a valid datastore name.
    pub fn new(lock_root: impl AsRef<Path>, store: &str) -> Result<Self> {
        Ok(Self {
            store_dir: store_lock_dir(lock_root.as_ref(), store)?,
            owner: None,
        })
    }

    /// Creates lock files and folders owned by `owner` (on a PBS host: the `backup` user).
    pub fn owner(mut self, owner: FileOwner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The folder holding this datastore's lock files, `<lock root>/<store>`.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The lock file of `target`.
    pub fn lock_path(&self, target: &LockTarget<'_>) -> PathBuf {
        let store = self.store_dir.as_os_str().as_encoded_bytes();
        let mut out = Vec::with_capacity(store.len() + 96);
        out.extend_from_slice(store);
        out.push(b'/');
        let ns = target.ns().components().iter().map(String::as_str);
        let (group, snapshot) = match *target {
            LockTarget::Group { group, .. } => (group, None),
            LockTarget::Snapshot { snapshot, .. } | LockTarget::Manifest { snapshot, .. } => {
                (snapshot.group(), Some(snapshot))
            }
        };
        let ty = group.ty().as_str().as_bytes();
        let id = group.id().as_str().as_bytes();
        match snapshot.map(|s| format_time(s.time().epoch())) {
            None => push_lock_path(&mut out, ns, &[ty, id]),
            Some(time) if matches!(target, LockTarget::Snapshot { .. }) => {
                push_lock_path(&mut out, ns, &[ty, id, &time]);
            }
            Some(time) => push_lock_path(
                &mut out,
                ns,
                &[ty, id, &time, MANIFEST_LOCK_NAME.as_bytes()],
            ),
        }
        PathBuf::from(OsString::from_vec(out))
    }
}

impl Locker for FileLocker {
    fn lock(
        &self,
        target: &LockTarget<'_>,
        mode: LockMode,
        timeout: Duration,
    ) -> Result<LockGuard> {
        let held = acquire(
            self.lock_path(target),
            LockKind::File { owner: self.owner },
            mode,
            timeout,
            |_| {},
        )?;
        Ok(LockGuard::new(Box::new(held)))
    }
}

/// PBS 3 locks (also PBS 4 in its old-locking mode): a flock on the group or snapshot directory
/// itself, and for manifests a lock file at
/// `<lock root>/<store>/<ns path with ns/ prefixes>/<type>/<id>/<time>/<time>.index.json.lck`.
///
/// Group and snapshot locks need the directory to exist (a missing one is an
/// [`Error::Io`] with [`NotFound`](std::io::ErrorKind::NotFound)) and never create it; removing
/// such a lock only releases it.
///
/// ```
/// use keepsake_hierarchy::{BackupDir, BackupNamespace};
/// use keepsake_lock::{DirLocker, LockTarget};
///
/// let locker = DirLocker::new("/srv/store1", "/run/proxmox-backup/locks", "store1")?;
/// let ns: BackupNamespace = "a".parse()?;
/// let dir: BackupDir = "vm/100/2022-05-02T08:11:33Z".parse()?;
/// assert_eq!(
///     locker.lock_path(&LockTarget::snapshot(&ns, &dir)).to_str(),
///     Some("/srv/store1/ns/a/vm/100/2022-05-02T08:11:33Z")
/// );
/// assert_eq!(
///     locker.lock_path(&LockTarget::manifest(&ns, &dir)).to_str(),
///     Some("/run/proxmox-backup/locks/store1/ns/a/vm/100/2022-05-02T08:11:33Z/2022-05-02T08:11:33Z.index.json.lck")
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct DirLocker {
    datastore_root: PathBuf,
    store_dir: PathBuf,
    owner: Option<FileOwner>,
}

impl DirLocker {
    /// The locker of datastore `store` whose directories are under `datastore_root`, with
    /// manifest lock files under `lock_root` (PBS: [`PBS_LOCK_ROOT`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStoreName`] if `store` is not a valid datastore name.
    pub fn new(
        datastore_root: impl Into<PathBuf>,
        lock_root: impl AsRef<Path>,
        store: &str,
    ) -> Result<Self> {
        Ok(Self {
            datastore_root: datastore_root.into(),
            store_dir: store_lock_dir(lock_root.as_ref(), store)?,
            owner: None,
        })
    }

    /// Creates manifest lock files and their folders owned by `owner`.
    pub fn owner(mut self, owner: FileOwner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The directory (group, snapshot) or file (manifest) that is flocked for `target`.
    pub fn lock_path(&self, target: &LockTarget<'_>) -> PathBuf {
        match *target {
            LockTarget::Group { ns, group } => join(&self.datastore_root, &group.relative_path(ns)),
            LockTarget::Snapshot { ns, snapshot } => {
                join(&self.datastore_root, &snapshot.relative_path(ns))
            }
            LockTarget::Manifest { ns, snapshot } => {
                let time = snapshot.time();
                join(
                    &self.store_dir,
                    &format!("{}/{time}{MANIFEST_LOCK_NAME}", snapshot.relative_path(ns)),
                )
            }
        }
    }
}

impl Locker for DirLocker {
    fn lock(
        &self,
        target: &LockTarget<'_>,
        mode: LockMode,
        timeout: Duration,
    ) -> Result<LockGuard> {
        let kind = match target {
            LockTarget::Group { .. } | LockTarget::Snapshot { .. } => LockKind::Dir,
            LockTarget::Manifest { .. } => LockKind::File { owner: self.owner },
        };
        let held = acquire(self.lock_path(target), kind, mode, timeout, |_| {})?;
        Ok(LockGuard::new(Box::new(held)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_follow_pbs_rules() {
        for good in ["store1", "abc", "a_b", "_x.y-z", &"s".repeat(32)] {
            assert!(FileLocker::new("/l", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ab",
            "..",
            "...",
            "-abc",
            ".abc",
            "a/b/c",
            "st re",
            "störe",
            &"s".repeat(33),
        ] {
            let err = FileLocker::new("/l", bad).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidStoreName { name } if name == bad),
                "{bad}: {err:?}"
            );
            assert!(DirLocker::new("/d", "/l", bad).is_err());
        }
    }

    #[test]
    fn old_locking_flag_selects_the_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("old-locking");
        assert_eq!(
            LockScheme::from_old_locking_flag(&flag),
            LockScheme::LockFiles
        );
        std::fs::write(&flag, b"").unwrap();
        assert_eq!(
            LockScheme::from_old_locking_flag(&flag),
            LockScheme::DirectoryLocks
        );
        assert!(
            LockScheme::DirectoryLocks
                .locker(dir.path(), "store1", dir.path())
                .is_ok()
        );
        assert!(
            LockScheme::LockFiles
                .locker(dir.path(), "x", dir.path())
                .is_err()
        );
    }
}
