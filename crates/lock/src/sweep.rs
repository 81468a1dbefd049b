//! The lock-folder sweep: removes the lock files nobody holds from a datastore's lock folder
//! (`<lock root>/<store>`), and nothing else.
//!
//! Why so narrow: lock files are the only thing in a lock folder that is safe to delete, and only
//! while held exclusively (see the crate docs on removal). A sweep that deleted "whatever it can
//! flock" deleted a whole datastore once, when it was pointed at the datastore's parent folder as
//! the lock root, and it deletes PBS's `move-journal`, which lives in the lock folder too. So this
//! sweep refuses a lock root that could hold or be the datastore, removes only entries whose names
//! are exactly lock file names of the scheme, and leaves everything else where it is, reported.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keepsake_hierarchy::{
    BackupDir, BackupGroup, BackupNamespace, BackupTime, BackupType, MANIFEST_LOCK_NAME,
    MAX_NAMESPACE_DEPTH, NAMESPACE_DIR_NAME,
};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::file::{LockKind, acquire};
use crate::path::HASHED_KEEP;
use crate::scheme::store_lock_dir;
use crate::{
    Error, HASHED_DIR_NAME, LockGuard, LockMode, LockRootRefusal, LockScheme, LockTarget, Result,
    relative_lock_path, unescape_unit_path,
};

/// Whether the sweep removes the unused lock files it finds or only reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SweepMode {
    /// Only look: take each lock file briefly to see whether it is in use, change nothing.
    #[default]
    ReportOnly,
    /// Remove every lock file nobody holds (while holding it), and lock folders left empty.
    Remove,
}

/// What [`sweep_lock_folder`] sweeps, and how.
///
/// ```
/// use keepsake_lock::{LockScheme, SweepMode, SweepOptions};
///
/// let options = SweepOptions::new("/run/proxmox-backup/locks", "store1", "/srv/store1")
///     .scheme(LockScheme::Both)
///     .mode(SweepMode::Remove);
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct SweepOptions {
    lock_root: PathBuf,
    store: String,
    datastore_root: PathBuf,
    scheme: LockScheme,
    mode: SweepMode,
}

impl SweepOptions {
    /// Sweeps `<lock_root>/<store>`, the lock folder of datastore `store` whose root (for an S3
    /// datastore: its local cache folder) is `datastore_root`; scheme
    /// [`LockScheme::LockFiles`], mode [`SweepMode::ReportOnly`] until changed.
    pub fn new(
        lock_root: impl Into<PathBuf>,
        store: impl Into<String>,
        datastore_root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            lock_root: lock_root.into(),
            store: store.into(),
            datastore_root: datastore_root.into(),
            scheme: LockScheme::LockFiles,
            mode: SweepMode::ReportOnly,
        }
    }

    /// The lock scheme whose lock files the sweep may remove; [`LockScheme::Both`] accepts the
    /// lock files of either.
    pub fn scheme(mut self, scheme: LockScheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// Whether to remove or only report.
    pub fn mode(mut self, mode: SweepMode) -> Self {
        self.mode = mode;
        self
    }
}

/// What [`sweep_lock_folder`] found and did. Paths are full paths below the lock folder, sorted
/// within each list.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct SweepReport {
    /// The lock folder swept, `<lock root>/<store>`.
    pub lock_folder: PathBuf,
    /// The mode the sweep ran in.
    pub mode: SweepMode,
    /// Lock files of the scheme that nobody held: removed in [`SweepMode::Remove`] (a removal
    /// that failed is in [`errors`](Self::errors) instead), removable in
    /// [`SweepMode::ReportOnly`].
    pub free_lock_files: Vec<PathBuf>,
    /// Lock files of the scheme that someone held; left alone.
    pub lock_files_in_use: Vec<PathBuf>,
    /// Entries that are not lock files or lock folders of the scheme (PBS's `move-journal`,
    /// symlinks, anything else); never touched, never descended into.
    pub foreign_entries: Vec<PathBuf>,
    /// Lock folders of the scheme that were empty after the sweep and removed
    /// ([`SweepMode::Remove`] only).
    pub removed_folders: Vec<PathBuf>,
    /// What went wrong along the way; the sweep went on with the next entry.
    pub errors: Vec<Error>,
}

/// Sweeps the lock folder `<lock root>/<store>` of a datastore: finds the lock files of the
/// scheme, tells the free ones from those in use, and in [`SweepMode::Remove`] removes the free
/// ones and the lock folders left empty. Entries that are not lock files of the scheme are never
/// touched.
///
/// # What is a lock file
///
/// An entry whose name is exactly what a locker of the scheme creates (spec §2.2–2.6):
///
/// * PBS 4 ([`LockScheme::LockFiles`]): a regular file named [`escape_unit_path`] of
///   `<type>/<id>`, `<type>/<id>/<time>` or `<type>/<id>/<time>/.index.json.lck` whose parts parse
///   as a group and a snapshot time and that escapes back to the same name
///   ([`unescape_unit_path`]); in the lock folder itself or in a namespace folder (`c1:c2:…`, each
///   component a valid namespace component). In a `hashed/` folder beneath either: a name of the
///   exact hashed form (80 escaped bytes, `...`, 80 escaped bytes, `-`, 64 lowercase hex digits,
///   starting with a backup type).
/// * PBS 3 ([`LockScheme::DirectoryLocks`]): `<ns path>/<type>/<id>/<time>/<time>.index.json.lck`,
///   every folder on the way valid (`ns/<component>` pairs, a backup type, a backup id, a snapshot
///   time spelled as keepsake and PBS write it).
/// * Both schemes ([`LockScheme::Both`]): either.
///
/// Each lock file is opened without following links and without creating anything, taken
/// exclusively without waiting (busy means in use: left alone), and in [`SweepMode::Remove`]
/// unlinked while still held ([`ExclusiveGuard::remove`](crate::ExclusiveGuard::remove)), so a
/// process waiting for it notices and starts over on a fresh file. Folders are never removed,
/// except lock folders of the scheme (namespace folders, `hashed/`, PBS 3's folders on the way to
/// a manifest lock) that are empty once swept (`rmdir`, best effort); never the lock folder itself.
///
/// # Refusals
///
/// Nothing is read or touched, and [`Error::UnsafeLockRoot`] returned, when the lock root is the
/// datastore root, contains it or lies inside it (compared after resolving both to canonical
/// paths; a path that cannot be resolved is refused too), or when the lock folder is a symlink, is
/// not a folder, or holds `.chunks` or `.lock` as a datastore does. A lock folder that does not
/// exist has nothing to sweep: an empty report.
///
/// # Caveat: PBS 3 servers
///
/// PBS 3 does not re-check a lock file after locking it (PBS 4 does, and so does keepsake). A PBS 3
/// server that opened a manifest lock file just before the sweep removed it would then hold a
/// lock on a file without a name, the same window PBS 3's own snapshot removal opens. Sweep a
/// [`DirectoryLocks`](LockScheme::DirectoryLocks) or [`Both`](LockScheme::Both) lock folder when
/// no PBS 3 server is updating manifests of this datastore.
///
/// # Errors
///
/// [`Error::InvalidStoreName`], [`Error::UnsafeLockRoot`], and [`Error::Io`] when the lock folder
/// itself cannot be examined. Failures on single entries are collected in
/// [`SweepReport::errors`] instead.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use keepsake_hierarchy::{BackupDir, BackupNamespace};
/// use keepsake_lock::{
///     FileLocker, LockTarget, Locker, SweepMode, SweepOptions, sweep_lock_folder,
/// };
///
/// let scratch = tempfile::tempdir()?;
/// let (lock_root, datastore) = (scratch.path().join("locks"), scratch.path().join("store1"));
/// std::fs::create_dir_all(&datastore)?;
/// let locker = FileLocker::new(&lock_root, "store1")?;
/// let ns: BackupNamespace = "prod".parse()?;
/// let (old, new): (BackupDir, BackupDir) =
///     ("vm/100/2024-06-05T15:06:40Z".parse()?, "vm/100/2024-06-06T15:06:40Z".parse()?);
/// drop(locker.lock_exclusive(&LockTarget::manifest(&ns, &old), Duration::ZERO)?);
/// let held = locker.lock_shared(&LockTarget::snapshot(&ns, &new), Duration::ZERO)?;
/// std::fs::write(lock_root.join("store1/move-journal"), b"/srv/store1/...\n")?;
///
/// let report = sweep_lock_folder(
///     &SweepOptions::new(&lock_root, "store1", &datastore).mode(SweepMode::Remove),
/// )?;
/// assert_eq!(report.free_lock_files.len(), 1); // the old manifest's lock file, now gone
/// assert_eq!(report.lock_files_in_use, [held.resource()]);
/// assert_eq!(report.foreign_entries, [lock_root.join("store1/move-journal")]);
/// assert!(report.errors.is_empty());
///
/// // Pointed at the datastore's parent folder as lock root, it refuses and touches nothing.
/// let err = sweep_lock_folder(
///     &SweepOptions::new(scratch.path(), "store1", &datastore).mode(SweepMode::Remove),
/// )
/// .unwrap_err();
/// assert!(matches!(err, keepsake_lock::Error::UnsafeLockRoot { .. }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`escape_unit_path`]: crate::escape_unit_path
pub fn sweep_lock_folder(options: &SweepOptions) -> Result<SweepReport> {
    let lock_folder = store_lock_dir(&options.lock_root, &options.store)?;
    check_roots(options)?;
    let mut report = SweepReport {
        lock_folder: lock_folder.clone(),
        mode: options.mode,
        ..SweepReport::default()
    };
    let refuse = |reason| Error::UnsafeLockRoot {
        lock_root: options.lock_root.clone(),
        datastore_root: options.datastore_root.clone(),
        reason,
        source: None,
    };
    match std::fs::symlink_metadata(&lock_folder) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(refuse(LockRootRefusal::LockFolderIsSymlink));
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(refuse(LockRootRefusal::LockFolderNotAFolder));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(Error::io(lock_folder, e)),
    }
    for marker in [".chunks", ".lock"] {
        let path = lock_folder.join(marker);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => return Err(refuse(LockRootRefusal::LockFolderLooksLikeDatastore)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Cannot tell: assume the worst.
            Err(e) => return Err(Error::io(path, e)),
        }
    }

    let roles: &[Role] = match options.scheme {
        LockScheme::LockFiles => &[Role::Pbs4Names { top: true }],
        LockScheme::DirectoryLocks => &[Role::Pbs3Namespace(BackupNamespace::root())],
        LockScheme::Both => &[
            Role::Pbs4Names { top: true },
            Role::Pbs3Namespace(BackupNamespace::root()),
        ],
    };
    sweep_folder(&lock_folder, roles, Depth::LockFolder, &mut report);
    for list in [
        &mut report.free_lock_files,
        &mut report.lock_files_in_use,
        &mut report.foreign_entries,
        &mut report.removed_folders,
    ] {
        list.sort();
    }
    Ok(report)
}

/// Refuses a lock root that is, holds or lies inside the datastore root (strictly: both must
/// resolve, as a sweep only runs on an existing lock root).
fn check_roots(options: &SweepOptions) -> Result<()> {
    let refuse = |reason, source| Error::UnsafeLockRoot {
        lock_root: options.lock_root.clone(),
        datastore_root: options.datastore_root.clone(),
        reason,
        source,
    };
    let lock_root = std::fs::canonicalize(&options.lock_root)
        .map_err(|e| refuse(LockRootRefusal::LockRootUnresolvable, Some(e)))?;
    let datastore_root = std::fs::canonicalize(&options.datastore_root)
        .map_err(|e| refuse(LockRootRefusal::DatastoreRootUnresolvable, Some(e)))?;
    overlap(&lock_root, &datastore_root).map_or(Ok(()), |reason| Err(refuse(reason, None)))
}

/// How a (canonical) lock root overlaps a (canonical) datastore root, if it does.
fn overlap(lock_root: &Path, datastore_root: &Path) -> Option<LockRootRefusal> {
    if lock_root == datastore_root {
        Some(LockRootRefusal::IsDatastoreRoot)
    } else if datastore_root.starts_with(lock_root) {
        Some(LockRootRefusal::ContainsDatastoreRoot)
    } else if lock_root.starts_with(datastore_root) {
        Some(LockRootRefusal::InsideDatastoreRoot)
    } else {
        None
    }
}

/// Refuses a lock root that is, holds or lies inside the datastore root: lock files would be
/// created among the datastore's own files, and a sweep of them would take the datastore's files
/// for lock files. Paths are compared after resolving symbolic links; a lock root that does not
/// exist yet is resolved through its nearest existing ancestor.
///
/// ```
/// use keepsake_lock::{Error, LockRootRefusal, check_lock_root};
///
/// let dir = tempfile::tempdir()?;
/// let store = dir.path().join("store1");
/// std::fs::create_dir(&store)?;
/// assert!(check_lock_root(dir.path().join("locks"), &store).is_ok());
/// let err = check_lock_root(dir.path(), &store).unwrap_err();
/// assert!(matches!(err, Error::UnsafeLockRoot { reason: LockRootRefusal::ContainsDatastoreRoot, .. }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::UnsafeLockRoot`].
pub fn check_lock_root(
    lock_root: impl AsRef<Path>,
    datastore_root: impl AsRef<Path>,
) -> Result<()> {
    let (lock_root, datastore_root) = (lock_root.as_ref(), datastore_root.as_ref());
    let refuse = |reason, source| Error::UnsafeLockRoot {
        lock_root: lock_root.to_owned(),
        datastore_root: datastore_root.to_owned(),
        reason,
        source,
    };
    let resolved_lock = resolve_existing_prefix(lock_root)
        .map_err(|e| refuse(LockRootRefusal::LockRootUnresolvable, Some(e)))?;
    let resolved_store = resolve_existing_prefix(datastore_root)
        .map_err(|e| refuse(LockRootRefusal::DatastoreRootUnresolvable, Some(e)))?;
    overlap(&resolved_lock, &resolved_store).map_or(Ok(()), |reason| Err(refuse(reason, None)))
}

/// `path` with its longest existing prefix canonicalized and the rest appended as given.
fn resolve_existing_prefix(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(resolved) => {
                let mut out = resolved;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            // Missing, or below a regular file (then it can never exist, so it overlaps nothing):
            // resolve the part that exists.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Err(e);
                };
                rest.push(name.to_owned());
                existing = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a folder is the lock folder itself (never removed) or one below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    LockFolder,
    Below,
}

/// What a folder of the lock folder can be, which decides the names it may hold. A folder can be
/// several things at once (`hashed` is also a valid namespace name; PBS 3's `ns` and `vm` folders
/// are valid PBS 4 namespace folder names): an entry counts as a lock file or lock folder if any of
/// its folder's roles accepts it.
#[derive(Debug, Clone)]
enum Role {
    /// PBS 4: the lock folder (`top`) or a namespace folder: plain lock file names, a `hashed/`
    /// folder, and at the top namespace folders.
    Pbs4Names { top: bool },
    /// PBS 4: a `hashed/` folder, holding hashed lock file names.
    Pbs4Hashed,
    /// PBS 3: the folder of a namespace (the lock folder for the root): its `ns/` folder and
    /// backup type folders.
    Pbs3Namespace(BackupNamespace),
    /// PBS 3: the `ns/` folder of a namespace, holding its child namespaces.
    Pbs3Children(BackupNamespace),
    /// PBS 3: a backup type folder, holding group folders.
    Pbs3Type(BackupType),
    /// PBS 3: a group folder, holding snapshot folders.
    Pbs3Group,
    /// PBS 3: a snapshot folder, holding `<time>.index.json.lck`.
    Pbs3Snapshot(BackupTime),
}

impl Role {
    /// The roles of the folder `name` inside a folder of this role (none: a foreign folder).
    fn child_folder(&self, name: &str, out: &mut Vec<Role>) {
        match self {
            Role::Pbs4Names { top } => {
                if name == HASHED_DIR_NAME {
                    out.push(Role::Pbs4Hashed);
                }
                if *top && is_namespace_folder_name(name) {
                    out.push(Role::Pbs4Names { top: false });
                }
            }
            Role::Pbs4Hashed | Role::Pbs3Snapshot(_) => {}
            Role::Pbs3Namespace(ns) => {
                if name == NAMESPACE_DIR_NAME && ns.depth() < MAX_NAMESPACE_DEPTH {
                    out.push(Role::Pbs3Children(ns.clone()));
                }
                if let Some(ty) = BackupType::ALL.into_iter().find(|ty| ty.as_str() == name) {
                    out.push(Role::Pbs3Type(ty));
                }
            }
            Role::Pbs3Children(ns) => {
                if let Ok(child) = ns.child(name) {
                    out.push(Role::Pbs3Namespace(child));
                }
            }
            Role::Pbs3Type(ty) => {
                if BackupGroup::new(*ty, name).is_ok() {
                    out.push(Role::Pbs3Group);
                }
            }
            Role::Pbs3Group => {
                if let Some(time) = canonical_time(name) {
                    out.push(Role::Pbs3Snapshot(time));
                }
            }
        }
    }

    /// Whether a regular file `name` inside a folder of this role is a lock file of the scheme.
    fn accepts_file(&self, name: &str) -> bool {
        match self {
            Role::Pbs4Names { .. } => is_plain_lock_name(name),
            Role::Pbs4Hashed => is_hashed_lock_name(name),
            Role::Pbs3Snapshot(time) => name
                .strip_prefix(time.to_string().as_str())
                .is_some_and(|rest| rest == MANIFEST_LOCK_NAME),
            Role::Pbs3Namespace(_)
            | Role::Pbs3Children(_)
            | Role::Pbs3Type(_)
            | Role::Pbs3Group => false,
        }
    }
}

/// A time as keepsake and PBS spell snapshot folders, and only that spelling.
fn canonical_time(name: &str) -> Option<BackupTime> {
    let time: BackupTime = name.parse().ok()?;
    (time.to_string() == name).then_some(time)
}

/// A PBS 4 namespace folder name: namespace components joined by `:`.
fn is_namespace_folder_name(name: &str) -> bool {
    !name.is_empty() && BackupNamespace::from_components(name.split(':')).is_ok()
}

/// A PBS 4 lock file name outside `hashed/`: the escaped relative path of a group, snapshot or
/// manifest, escaping back to exactly `name`.
fn is_plain_lock_name(name: &str) -> bool {
    let Some(raw) = unescape_unit_path(name) else {
        return false;
    };
    let Ok(raw) = String::from_utf8(raw) else {
        return false;
    };
    let root = BackupNamespace::root();
    let parts: Vec<&str> = raw.split('/').collect();
    let relative = match parts.as_slice() {
        [_, _] => match raw.parse::<BackupGroup>() {
            Ok(group) => LockTarget::group(&root, &group).relative_path(),
            Err(_) => return false,
        },
        [_, _, _] => match raw.parse::<BackupDir>() {
            Ok(dir) => LockTarget::snapshot(&root, &dir).relative_path(),
            Err(_) => return false,
        },
        [ty, id, time, MANIFEST_LOCK_NAME] => {
            match format!("{ty}/{id}/{time}").parse::<BackupDir>() {
                Ok(dir) => LockTarget::manifest(&root, &dir).relative_path(),
                Err(_) => return false,
            }
        }
        _ => return false,
    };
    relative_lock_path::<&str>(&[], relative.as_bytes()) == name
}

/// The exact shape of a hashed PBS 4 lock file name:
/// `<80 escaped bytes>...<80 escaped bytes>-<64 lowercase hex>`, starting with a backup type.
fn is_hashed_lock_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let (head, dots, tail, dash, hash) = (
        0..HASHED_KEEP,
        HASHED_KEEP..HASHED_KEEP + 3,
        HASHED_KEEP + 3..2 * HASHED_KEEP + 3,
        2 * HASHED_KEEP + 3,
        2 * HASHED_KEEP + 4..,
    );
    let escaped = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'\\');
    bytes.len() == 2 * HASHED_KEEP + 4 + 64
        && BackupType::ALL
            .iter()
            .any(|ty| bytes.starts_with(ty.as_str().as_bytes()) && bytes[ty.as_str().len()] == b'-')
        && bytes[head].iter().all(escaped)
        && &bytes[dots] == b"..."
        && bytes[tail].iter().all(escaped)
        && bytes[dash] == b'-'
        && bytes[hash]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Sweeps the entries of `dir`, a folder of the given roles, then (in [`SweepMode::Remove`], below
/// the lock folder) tries to remove it in case it is now empty.
fn sweep_folder(dir: &Path, roles: &[Role], depth: Depth, report: &mut SweepReport) {
    let fd = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // Removed meanwhile (by a concurrent sweep): nothing left to do here.
        Err(Errno::NOENT) if depth == Depth::Below => return,
        Err(e) => return report.errors.push(Error::io(dir, e.into())),
    };
    let entries = match rustix::fs::Dir::read_from(&fd) {
        Ok(entries) => entries,
        Err(e) => return report.errors.push(Error::io(dir, e.into())),
    };
    let mut children = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                report.errors.push(Error::io(dir, e.into()));
                break;
            }
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let file_type = match entry.file_type() {
            FileType::Unknown => match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                Err(Errno::NOENT) => continue,
                Err(e) => {
                    report
                        .errors
                        .push(Error::io(dir.join(lossy(name)), e.into()));
                    continue;
                }
            },
            known => known,
        };
        children.push((name.to_owned(), file_type));
    }
    drop(fd);

    let mut child_roles = Vec::new();
    for (name, file_type) in children {
        // Lock names are ASCII; anything else is foreign (and shown as best we can).
        let Ok(text) = name.to_str() else {
            report.foreign_entries.push(dir.join(lossy(&name)));
            continue;
        };
        let path = dir.join(text);
        match file_type {
            FileType::Directory => {
                child_roles.clear();
                for role in roles {
                    role.child_folder(text, &mut child_roles);
                }
                if child_roles.is_empty() {
                    report.foreign_entries.push(path);
                } else {
                    let roles = std::mem::take(&mut child_roles);
                    sweep_folder(&path, &roles, Depth::Below, report);
                }
            }
            FileType::RegularFile if roles.iter().any(|role| role.accepts_file(text)) => {
                sweep_lock_file(path, report);
            }
            _ => report.foreign_entries.push(path),
        }
    }

    if depth == Depth::Below && report.mode == SweepMode::Remove {
        match rustix::fs::rmdir(dir) {
            Ok(()) => report.removed_folders.push(dir.to_owned()),
            // Not empty (a foreign entry, a lock in use, a lock file created meanwhile) or gone.
            Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOENT) => {}
            Err(e) => report.errors.push(Error::io(dir, e.into())),
        }
    }
}

/// Takes one lock file exclusively without waiting; in [`SweepMode::Remove`] removes it while held.
fn sweep_lock_file(path: PathBuf, report: &mut SweepReport) {
    let held = match acquire(
        path.clone(),
        LockKind::Existing,
        LockMode::Exclusive,
        Duration::ZERO,
        |_| {},
    ) {
        Ok(held) => held,
        Err(e) if e.is_busy() => return report.lock_files_in_use.push(path),
        // Its holder removed it meanwhile: nothing to sweep.
        Err(Error::Io { ref source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return;
        }
        Err(e) => return report.errors.push(e),
    };
    let guard = LockGuard::new(Box::new(held));
    match report.mode {
        SweepMode::ReportOnly => drop(guard),
        SweepMode::Remove => {
            let exclusive = guard.into_exclusive().expect("taken exclusively");
            if let Err(e) = exclusive.remove() {
                return report.errors.push(e);
            }
        }
    }
    report.free_lock_files.push(path);
}

fn lossy(name: &CStr) -> String {
    name.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lock_names_are_exactly_what_lockers_write() {
        let accepted = [
            "vm-100",
            "vm-100x",
            "ct-0",
            r"host-my\x2dhost.example",
            r"vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z",
            r"vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z-.index.json.lck",
        ];
        for name in accepted {
            assert!(is_plain_lock_name(name), "{name}");
        }
        let refused = [
            "move-journal",
            "notes",
            "owner",
            "vm",
            "vm-",
            "vm-100-",
            "VM-100",
            "vx-100",
            r"vm-\x2d100",
            r"vm-10\x30",
            "vm-100-2024-06-05T15:06:40Z",
            r"vm-100-2024\x2d13\x2d05T15\x3a06\x3a40Z",
            r"vm-100-2024\x2d02\x2d31T15\x3a06\x3a40Z",
            r"vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z-index.json.lck",
            r"vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z-.index.json.lck-",
            r"vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z-.index.json.lck.tmp",
            r"vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z-x-y",
            ".lock",
            ".chunks",
            "-",
        ];
        for name in refused {
            assert!(!is_plain_lock_name(name), "{name}");
        }
        // Too long for a plain name: such an object's lock lives in hashed/.
        let long = crate::escape_unit_path(format!("host/{}", "x".repeat(251)).as_bytes());
        assert!(long.len() >= crate::MAX_PLAIN_LOCK_NAME);
        assert!(!is_plain_lock_name(&long));
    }

    #[test]
    fn hashed_lock_names_have_the_exact_shape() {
        let path = relative_lock_path::<&str>(
            &[],
            format!("host/{}/2024-06-05T15:06:40Z", "x-".repeat(120)).as_bytes(),
        );
        let name = path.strip_prefix("hashed/").expect("hashed");
        assert!(is_hashed_lock_name(name), "{name}");
        let mutate = |at: usize, with: u8| {
            let mut bytes = name.as_bytes().to_vec();
            bytes[at] = with;
            String::from_utf8(bytes).unwrap()
        };
        for bad in [
            mutate(0, b'x'),
            mutate(80, b'x'),
            mutate(163, b'_'),
            mutate(170, b'A'),
            mutate(100, b'/'),
            mutate(10, b':'),
            name[..227].to_owned(),
            format!("{name}0"),
            "vm-100".to_owned(),
        ] {
            assert!(!is_hashed_lock_name(&bad), "{bad}");
        }
    }

    #[test]
    fn namespace_folder_names() {
        for good in ["a", "a:b", "hashed", "ns", "vm", "a:b:c:d:e:f:g"] {
            assert!(is_namespace_folder_name(good), "{good}");
        }
        for bad in [
            "",
            ":",
            "a:",
            ":a",
            "a::b",
            ".a",
            "a:b:c:d:e:f:g:h",
            "a b",
            "-a",
        ] {
            assert!(!is_namespace_folder_name(bad), "{bad}");
        }
    }

    #[test]
    fn times_must_be_spelled_canonically() {
        assert!(canonical_time("2024-06-05T15:06:40Z").is_some());
        for bad in [
            "2024-06-05T15:06:40",
            "2024-02-31T00:00:00Z",
            "2024-6-05T15:06:40Z",
        ] {
            assert!(canonical_time(bad).is_none(), "{bad}");
        }
    }
}
