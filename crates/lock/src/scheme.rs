//! The two PBS lock schemes as [`Locker`] implementations — lock files under a lock root (PBS 4,
//! [`FileLocker`]) and directory flocks (PBS 3, [`DirLocker`]) — and both at once
//! ([`DualSchemeLocker`]), for a host whose PBS version is not known.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use keepsake_hierarchy::MANIFEST_LOCK_NAME;

use crate::file::{HeldFile, LockKind, Wait, acquire, acquire_within, join};
use crate::path::push_lock_path;
use crate::{Error, FileOwner, HeldLock, LockGuard, LockMode, LockTarget, Locker, Result};

/// The lock root of a PBS server (`/run/proxmox-backup/locks`, a tmpfs). Pass it as the lock root
/// to exclude a PBS server on the same host; nothing in keepsake uses it by default.
pub const PBS_LOCK_ROOT: &str = "/run/proxmox-backup/locks";

/// The file whose existence makes PBS 4 fall back to the PBS 3 scheme (its "old-locking" mode),
/// for [`LockScheme::from_old_locking_flag`].
pub const PBS_OLD_LOCKING_FLAG: &str = "/run/proxmox-backup/old-locking";

/// Which PBS lock scheme to follow: the one the PBS server on the same host uses, if any.
///
/// Its text form (for a `--lock-scheme` option) is `files`, `dirs` or `both`:
///
/// ```
/// use keepsake_lock::LockScheme;
///
/// assert_eq!("both".parse::<LockScheme>()?, LockScheme::Both);
/// assert_eq!(LockScheme::DirectoryLocks.to_string(), "dirs");
/// assert!("flock".parse::<LockScheme>().is_err());
/// # Ok::<(), keepsake_lock::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LockScheme {
    /// PBS 4: lock files under the lock root ([`FileLocker`]).
    #[default]
    LockFiles,
    /// PBS 3 (and PBS 4 in old-locking mode): flocks on the group and snapshot directories, and
    /// the manifest lock file at PBS 3's path ([`DirLocker`]).
    DirectoryLocks,
    /// Both of the above at once ([`DualSchemeLocker`]): excludes a PBS 3 and a PBS 4 server
    /// alike, for a host where it is not known which one runs (or both do, during an upgrade).
    Both,
}

impl LockScheme {
    /// Every scheme, in the order of [`LockScheme::NAMES`].
    pub const ALL: [LockScheme; 3] = [
        LockScheme::LockFiles,
        LockScheme::DirectoryLocks,
        LockScheme::Both,
    ];

    /// The text forms of [`LockScheme::ALL`]: `files`, `dirs`, `both`.
    pub const NAMES: [&'static str; 3] = ["files", "dirs", "both"];

    /// The text form: `files`, `dirs` or `both`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LockScheme::LockFiles => Self::NAMES[0],
            LockScheme::DirectoryLocks => Self::NAMES[1],
            LockScheme::Both => Self::NAMES[2],
        }
    }
}

impl fmt::Display for LockScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockScheme {
    type Err = Error;

    /// Parses `files`, `dirs` or `both` (exactly; no aliases).
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|scheme| scheme.as_str() == s)
            .ok_or_else(|| Error::UnknownLockScheme { name: s.to_owned() })
    }
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
        self.locker_owned_by(lock_root, store, datastore_root, None)
    }

    /// [`locker`](Self::locker) whose lock files and folders are created owned by `owner` (on a
    /// PBS host when running as root: the datastore's owner, PBS's `backup` user).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStoreName`] if `store` is not a valid datastore name.
    pub fn locker_owned_by(
        self,
        lock_root: impl AsRef<Path>,
        store: &str,
        datastore_root: impl AsRef<Path>,
        owner: Option<FileOwner>,
    ) -> Result<Box<dyn Locker>> {
        let root = datastore_root.as_ref();
        Ok(match (self, owner) {
            (LockScheme::LockFiles, None) => Box::new(FileLocker::new(lock_root, store)?),
            (LockScheme::LockFiles, Some(o)) => {
                Box::new(FileLocker::new(lock_root, store)?.owner(o))
            }
            (LockScheme::DirectoryLocks, None) => Box::new(DirLocker::new(root, lock_root, store)?),
            (LockScheme::DirectoryLocks, Some(o)) => {
                Box::new(DirLocker::new(root, lock_root, store)?.owner(o))
            }
            (LockScheme::Both, None) => Box::new(DualSchemeLocker::new(root, lock_root, store)?),
            (LockScheme::Both, Some(o)) => {
                Box::new(DualSchemeLocker::new(root, lock_root, store)?.owner(o))
            }
        })
    }
}

/// `<lock root>/<store>`, refusing store names PBS would refuse (which also keeps the path inside
/// the lock root).
pub(crate) fn store_lock_dir(lock_root: &Path, store: &str) -> Result<PathBuf> {
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
        match snapshot.map(|s| s.time().rfc3339()) {
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

/// Both PBS schemes at once: every lock is the PBS 4 lock ([`FileLocker`]) *and* the PBS 3 lock
/// ([`DirLocker`]: a flock on the group or snapshot directory, PBS 3's manifest lock file), so that
/// keepsake excludes a PBS 3 server, a PBS 4 server and a PBS 4 server in old-locking mode on the
/// same host.
///
/// # How a lock is taken
///
/// The PBS 4 lock file first, then the PBS 3 lock, both in the requested mode and within the one
/// timeout. If the second part is busy or fails, the first is released and the second part's error
/// returned: a [`WouldBlock`](Error::WouldBlock) or [`Timeout`](Error::Timeout) naming the
/// directory or PBS 3 lock file for contention, an [`Io`](Error::Io) error for anything else.
/// Every keepsake process takes the parts in the same order, so waiting lockers cannot deadlock.
///
/// A group or snapshot directory that does not exist has no PBS 3 lock (a PBS 3 server cannot hold
/// a lock on a missing folder); that part is skipped, and the lock is the PBS 4 lock file alone.
/// The directory is opened `O_DIRECTORY | O_NOFOLLOW`: a symlink in its place is an error. To tell
/// a missing directory from a wrong datastore root, a missing directory is only skipped while the
/// datastore root itself is a directory; otherwise the lock fails with [`Error::Io`].
///
/// [`ExclusiveGuard::remove`](crate::ExclusiveGuard::remove) removes the lock files of both parts
/// (the PBS 3 manifest lock file and the PBS 4 lock file), each while held, never a directory.
///
/// ```
/// use std::time::Duration;
/// use keepsake_hierarchy::{BackupDir, BackupNamespace};
/// use keepsake_lock::{DualSchemeLocker, LockTarget, Locker};
///
/// let scratch = tempfile::tempdir()?;
/// let datastore = scratch.path().join("store1");
/// let snapshot: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse()?;
/// let ns = BackupNamespace::root();
/// std::fs::create_dir_all(datastore.join(snapshot.relative_path(&ns)))?;
///
/// let locker = DualSchemeLocker::new(&datastore, scratch.path().join("locks"), "store1")?;
/// let target = LockTarget::snapshot(&ns, &snapshot);
/// let [pbs4, pbs3] = locker.lock_paths(&target);
/// assert!(pbs4.ends_with(r"locks/store1/vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z"));
/// assert_eq!(pbs3, datastore.join("vm/100/2024-06-05T15:06:40Z"));
///
/// let guard = locker.lock_exclusive(&target, Duration::ZERO)?;
/// assert!(locker.lock_shared(&target, Duration::ZERO).unwrap_err().is_busy());
/// guard.remove()?;
/// assert!(!pbs4.exists() && pbs3.is_dir());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct DualSchemeLocker {
    files: FileLocker,
    dirs: DirLocker,
}

impl DualSchemeLocker {
    /// The locker of datastore `store` whose directories are under `datastore_root`, with lock
    /// files (both schemes') under `lock_root` (PBS: [`PBS_LOCK_ROOT`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStoreName`] if `store` is not a valid datastore name.
    pub fn new(
        datastore_root: impl Into<PathBuf>,
        lock_root: impl AsRef<Path>,
        store: &str,
    ) -> Result<Self> {
        let lock_root = lock_root.as_ref();
        Ok(Self {
            files: FileLocker::new(lock_root, store)?,
            dirs: DirLocker::new(datastore_root, lock_root, store)?,
        })
    }

    /// Creates lock files and their folders (both schemes') owned by `owner`.
    pub fn owner(self, owner: FileOwner) -> Self {
        Self {
            files: self.files.owner(owner),
            dirs: self.dirs.owner(owner),
        }
    }

    /// The PBS 4 part: its lock file paths.
    pub fn file_locker(&self) -> &FileLocker {
        &self.files
    }

    /// The PBS 3 part: its directories and manifest lock file paths.
    pub fn dir_locker(&self) -> &DirLocker {
        &self.dirs
    }

    /// What is flocked for `target`, in the order taken: the PBS 4 lock file, then the PBS 3
    /// directory (group, snapshot) or lock file (manifest).
    pub fn lock_paths(&self, target: &LockTarget<'_>) -> [PathBuf; 2] {
        [self.files.lock_path(target), self.dirs.lock_path(target)]
    }

    /// The PBS 3 part of a lock, or `None` when there is none to take (see the type docs).
    fn lock_pbs3(
        &self,
        target: &LockTarget<'_>,
        mode: LockMode,
        wait: Wait,
    ) -> Result<Option<HeldFile>> {
        let path = self.dirs.lock_path(target);
        let kind = match target {
            LockTarget::Group { .. } | LockTarget::Snapshot { .. } => LockKind::Dir,
            LockTarget::Manifest { .. } => {
                let kind = LockKind::File {
                    owner: self.dirs.owner,
                };
                return acquire_within(path, kind, mode, wait, |_| {}).map(Some);
            }
        };
        match acquire_within(path, kind, mode, wait, |_| {}) {
            Ok(held) => Ok(Some(held)),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                // Without its datastore there is no telling whether a PBS 3 server holds the
                // folder: fail rather than lock half.
                let root = &self.dirs.datastore_root;
                match std::fs::metadata(root) {
                    Ok(meta) if meta.is_dir() => Ok(None),
                    Ok(_) => Err(Error::io(
                        root.clone(),
                        io::Error::new(io::ErrorKind::NotADirectory, "datastore root"),
                    )),
                    Err(e) => Err(Error::io(root.clone(), e)),
                }
            }
            Err(e) => Err(e),
        }
    }
}

impl Locker for DualSchemeLocker {
    fn lock(
        &self,
        target: &LockTarget<'_>,
        mode: LockMode,
        timeout: Duration,
    ) -> Result<LockGuard> {
        let wait = Wait::new(timeout);
        let pbs4 = acquire_within(
            self.files.lock_path(target),
            LockKind::File {
                owner: self.files.owner,
            },
            mode,
            wait,
            |_| {},
        )?;
        // On an error `pbs4` is dropped here, which releases it.
        let pbs3 = self.lock_pbs3(target, mode, wait)?;
        Ok(LockGuard::new(Box::new(DualHeld { pbs3, pbs4 })))
    }
}

/// A lock of [`DualSchemeLocker`]. Fields drop in declaration order: the PBS 3 part is released
/// before the PBS 4 part, the reverse of taking them.
#[derive(Debug)]
struct DualHeld {
    pbs3: Option<HeldFile>,
    pbs4: HeldFile,
}

impl HeldLock for DualHeld {
    fn mode(&self) -> LockMode {
        self.pbs4.mode()
    }

    fn resource(&self) -> &Path {
        self.pbs4.resource()
    }

    fn remove(self: Box<Self>) -> Result<()> {
        let DualHeld { pbs3, pbs4 } = *self;
        // Each part removes its own lock file while holding it (a directory part only releases);
        // both are attempted, the first failure is reported.
        let pbs3 = pbs3.map_or(Ok(()), |held| Box::new(held).remove());
        let pbs4 = Box::new(pbs4).remove();
        pbs3.and(pbs4)
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
    fn scheme_names_round_trip_and_build_their_locker() {
        let dir = tempfile::tempdir().unwrap();
        for (scheme, name) in LockScheme::ALL.into_iter().zip(LockScheme::NAMES) {
            assert_eq!(scheme.to_string(), name);
            assert_eq!(name.parse::<LockScheme>().unwrap(), scheme);
            let locker = scheme.locker(dir.path(), "store1", dir.path()).unwrap();
            let expected = match scheme {
                LockScheme::LockFiles => "FileLocker",
                LockScheme::DirectoryLocks => "DirLocker",
                LockScheme::Both => "DualSchemeLocker",
            };
            assert!(format!("{locker:?}").starts_with(expected), "{locker:?}");
            assert!(scheme.locker(dir.path(), "x", dir.path()).is_err());
        }
        for bad in ["", "Files", "file", "dir", " both", "both ", "pbs3"] {
            let err = bad.parse::<LockScheme>().unwrap_err();
            assert!(
                matches!(&err, Error::UnknownLockScheme { name } if name == bad),
                "{bad:?}: {err:?}"
            );
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
