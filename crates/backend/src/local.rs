//! [`LocalBackend`]: a datastore directory on a local filesystem.

use std::ffi::CStr;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{
    self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags, RenameFlags, XattrFlags,
};
use rustix::io::Errno;

use crate::chunk::ChunkDigest;
use crate::error::{Error, Result};
use crate::keep::KeepFilter;
use crate::path::{BackendPath, check_component};
use crate::version::Version;
use crate::{
    Backend, Capabilities, Entry, EntryKind, FileContents, Listing, RemoveReport, Stat, WriteMode,
    check_file_path, check_folder_removable, check_rename, incomplete_unless_empty, unique_sorted,
};

/// How much a local write forces to disk (PBS's datastore tuning option `sync-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SyncLevel {
    /// Nothing is forced: fastest, and a crash can lose recent writes or leave empty files.
    None,
    /// The file's bytes are fsynced before the file is renamed into place, so a crash never
    /// leaves a visible empty or partial file; the rename itself may be lost.
    File,
    /// Like `File`, and the folder is fsynced after the rename, so a write is durable when it
    /// returns. PBS's default. (PBS implements this level with a `syncfs` at the end of a
    /// backup; per-write folder fsyncs give at least that durability for metadata.)
    #[default]
    Filesystem,
}

impl SyncLevel {
    /// The name PBS uses in the `tuning` option.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncLevel::None => "none",
            SyncLevel::File => "file",
            SyncLevel::Filesystem => "filesystem",
        }
    }
}

impl fmt::Display for SyncLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SyncLevel {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(SyncLevel::None),
            "file" => Ok(SyncLevel::File),
            "filesystem" => Ok(SyncLevel::Filesystem),
            other => Err(format!(
                "unknown sync level `{other}` (expected none, file or filesystem)"
            )),
        }
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
// NONBLOCK so that a FIFO planted in the datastore cannot make an open hang.
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC);
const TEMP_FLAGS: OFlags = OFlags::WRONLY
    .union(OFlags::CREATE)
    .union(OFlags::EXCL)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
/// What `openat2` resolves: nothing through a symbolic link (magic ones included), nothing out of
/// the folder it starts from.
const BENEATH: rfs::ResolveFlags = rfs::ResolveFlags::BENEATH
    .union(rfs::ResolveFlags::NO_SYMLINKS)
    .union(rfs::ResolveFlags::NO_MAGICLINKS);

/// The most a whole-file read returns, locally and from an object store (4 GiB: the index of an
/// image of some 500 TiB). A larger file, or one whose room cannot be allocated, is
/// [`Error::TooLarge`], never an abort for want of memory: a hostile sparse file claims any size
/// for free.
pub const MAX_WHOLE_FILE_READ: u64 = 4 << 30;

/// The most a chunk file read returns: a chunk is a blob, and PBS's largest blob is 128 MiB
/// of data and an encrypted header (keepsake-manifest's `MAX_RAW_BLOB_SIZE`, which a test of
/// the datastore checks this against).
pub const MAX_CHUNK_READ: u64 = 128 * 1024 * 1024 + 44;

/// PBS's mode for the files of a datastore, set explicitly when an owner is given.
const FILE_MODE: u32 = 0o644;
/// PBS's mode for the folders of a datastore, set explicitly when an owner is given.
const DIR_MODE: u32 = 0o755;

/// The marker in every temporary file name; no PBS listing regex matches a name holding it at
/// the end (`.tmp_` followed by hex), and the leading `.` hides it from PBS's GC walk too.
const TEMP_INFIX: &str = ".tmp_";

/// A datastore directory on a local filesystem.
///
/// Implements the [`Backend`] contract with these specifics:
/// - **Never leaves the root.** Every path is walked component by component from a handle on
///   the root with `openat(O_NOFOLLOW)`: a symbolic link anywhere on the way, or as the final
///   component, is refused with [`Error::RefusedPath`], never followed. Folders are first opened
///   with one `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the kernel has it (the
///   kernel then refuses links and escapes itself); any failure of that falls back to the walk,
///   which names the error. Reads look at the whole path first (`fstatat`, never opening a
///   device or FIFO), then open the file with one such `openat2` and check with `fstat` that it
///   is the regular file they looked at; reads that return bytes only (`read_data`, chunks)
///   read instead at most the size the look saw, and accept exactly that size. (The root
///   itself may be a symbolic link: it is
///   resolved once, when opening.) Listings report links as
///   [`EntryKind::Other`], and tree removal unlinks them without following.
/// - **Writes**: a temporary file `.<name>.tmp_<hex>` in the same folder, fsynced per
///   [`SyncLevel`], renamed into place; create-only uses `renameat2(RENAME_NOREPLACE)` (or
///   `link` where the filesystem lacks it), so exactly one concurrent creator wins and nothing
///   half-written is ever visible. An empty create-only file (a `.protected` marker) cannot be
///   half-written: it is made in place with `O_CREAT | O_EXCL` (one winner too), and its folder
///   fsynced unless the level is `None`. Files are created with mode 0644 (less the umask), folders
///   0755; with [`LocalBackend::with_owner`] every file and folder this backend creates gets
///   that owner and exactly these modes.
/// - **Versions** are the length and SHA-256 of the content (reads hash what they read).
/// - **Compare-and-swap** takes an exclusive `flock` on the current file, checks that the path
///   still names that file and that its content is at the expected version, and renames the new
///   file over it while holding the lock; replace and remove take the same lock. So concurrent
///   writers through `LocalBackend` (any process) are linearizable per file. Writers that
///   rename files without this lock (PBS itself) are not excluded: against them, callers must
///   hold the PBS manifest lock, as PBS's own `update_manifest` does.
/// - **Listings** stream the directory in its own order (`getdents`), without sorting, and
///   skip names that are not valid [`BackendPath`] components (not UTF-8, control characters).
pub struct LocalBackend {
    root: PathBuf,
    root_fd: OwnedFd,
    sync: SyncLevel,
    temp_counter: AtomicU64,
    /// The process id for temporary names, asked once (a forked child that keeps using this
    /// backend may draw a name its parent uses: `O_EXCL` makes it draw again).
    pid: u32,
    /// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` works here (Linux 5.6+, not
    /// filtered by a seccomp policy); cleared on the first `ENOSYS`/`EPERM`.
    openat2: AtomicBool,
    /// Who owns what this backend creates; `None` leaves it to the process.
    owner: Option<Ownership>,
    /// Whether extended attributes are used (tests turn them off to stand for a filesystem
    /// that refuses them).
    attributes: Attributes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attributes {
    Used,
    // Only the S3 cache's tests refuse them.
    #[cfg_attr(not(all(test, feature = "s3")), allow(dead_code))]
    Refused,
}

/// The owner given to created files and folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ownership {
    uid: u32,
    gid: u32,
}

/// How a crate-internal write forces its bytes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Durability {
    /// Per the backend's [`SyncLevel`], like [`Backend::write`].
    #[default]
    PerSyncLevel,
    /// Not at all: the caller syncs many files at once afterwards
    /// ([`LocalBackend::sync_filesystem`]).
    Deferred,
}

/// What a crate-internal write adds to [`Backend::write`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WriteOptions<'a> {
    /// An extended attribute (name, value) set on the temporary file before it is renamed into
    /// place, so that the file and its attribute appear together.
    pub(crate) attribute: Option<(&'a CStr, &'a [u8])>,
    /// How the write forces its bytes to disk.
    pub(crate) durability: Durability,
}

/// Whether the attribute of a [`WriteOptions`] was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttributeOutcome {
    /// None was asked for.
    NotAsked,
    /// The file has it.
    Set,
    /// The filesystem refused it (no user attributes, e.g. some tmpfs; or no room): the file was
    /// written without it.
    Refused,
}

/// Every entry below a folder, by kind.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    /// Regular files.
    pub(crate) files: Vec<BackendPath>,
    /// Symbolic links, sockets, FIFOs, devices (never followed or opened).
    pub(crate) others: Vec<BackendPath>,
    /// Folders, parents before their children.
    pub(crate) dirs: Vec<BackendPath>,
}

impl fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBackend")
            .field("root", &self.root)
            .field("sync", &self.sync)
            .finish()
    }
}

/// Whether [`LocalBackend::create_empty`] made the file.
enum Created {
    Yes,
    TakeTheLongWay,
}

/// What is currently at a file path, for writers.
enum Current {
    Missing,
    Dir,
    /// The file, opened and exclusively flocked; the lock goes with the descriptor.
    Locked(File),
}

impl LocalBackend {
    /// Opens the datastore directory `root`, which must exist.
    ///
    /// # Errors
    /// [`Error::Io`] if `root` cannot be opened as a directory.
    pub fn open(root: impl AsRef<Path>, sync: SyncLevel) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let root_fd = rfs::open(
            &root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Io {
            path: root.clone(),
            source: e.into(),
        })?;
        Ok(Self {
            root,
            root_fd,
            sync,
            temp_counter: AtomicU64::new(0),
            pid: std::process::id(),
            openat2: AtomicBool::new(true),
            owner: None,
            attributes: Attributes::Used,
        })
    }

    /// This backend as on a filesystem that refuses extended attributes.
    #[cfg(all(test, feature = "s3"))]
    pub(crate) fn refusing_attributes(mut self) -> Self {
        self.attributes = Attributes::Refused;
        self
    }

    /// Gives every file and folder this backend creates from now on the owner `uid`:`gid` and
    /// PBS's modes, set explicitly (not left to the umask): files 0644, folders 0755. For a
    /// process running as root next to a PBS server, whose `backup` user must be able to use
    /// what keepsake writes.
    ///
    /// Files get the owner on their temporary file, before the rename, so a file is never
    /// visible with another owner; folders right after they are made. Files and folders that
    /// exist already are left alone. Changing the owner needs the privilege to (`CAP_CHOWN`):
    /// without it writes fail with [`Error::Io`].
    ///
    /// ```no_run
    /// use keepsake_backend::{LocalBackend, SyncLevel};
    ///
    /// // PBS's `backup` user and group are 34:34 on Debian.
    /// let store = LocalBackend::open("/srv/datastore", SyncLevel::Filesystem)?.with_owner(34, 34);
    /// # Ok::<(), keepsake_backend::Error>(())
    /// ```
    pub fn with_owner(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some(Ownership { uid, gid });
        self
    }

    /// The datastore directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sync level writes use.
    pub fn sync_level(&self) -> SyncLevel {
        self.sync
    }

    /// The local path of `path`, for messages and for tools that need one. Opening it with
    /// `std::fs` follows symbolic links; this backend's own methods do not.
    pub fn local_path(&self, path: &BackendPath) -> PathBuf {
        if path.is_root() {
            self.root.clone()
        } else {
            self.root.join(path.as_str())
        }
    }

    fn io_error(&self, path: &BackendPath, errno: Errno) -> Error {
        Error::Io {
            path: self.local_path(path),
            source: errno.into(),
        }
    }

    fn io_error_name(&self, folder: &BackendPath, name: &str, errno: Errno) -> Error {
        Error::Io {
            path: self.local_path(folder).join(name),
            source: errno.into(),
        }
    }

    /// Opens the folder `dir`, walking from the root without following links; with `create`,
    /// makes missing folders on the way.
    fn open_dir(&self, dir: &BackendPath, create: bool) -> Result<OwnedFd> {
        self.open_dir_from(self.root_fd.as_fd(), &BackendPath::root(), dir, create)
    }

    /// Opens `base_path/rel` starting from `base`, an open handle on `base_path`.
    fn open_dir_from(
        &self,
        base: BorrowedFd<'_>,
        base_path: &BackendPath,
        rel: &BackendPath,
        create: bool,
    ) -> Result<OwnedFd> {
        // Fast path: one `openat2` that the kernel refuses to resolve through any symbolic link or
        // out of `base`. Any failure falls back to the walk below, which gives the precise error
        // (and creates folders when asked), so both paths mean the same.
        if !rel.is_root() && self.openat2.load(Ordering::Relaxed) {
            match rfs::openat2(base, rel.as_str(), DIR_FLAGS, Mode::empty(), BENEATH) {
                Ok(fd) => return Ok(fd),
                Err(Errno::NOSYS | Errno::PERM) => self.openat2.store(false, Ordering::Relaxed),
                Err(Errno::NOENT) if !create => {
                    return Err(Error::NotFound {
                        path: base_path.join_path(rel)?,
                    });
                }
                Err(_) => {}
            }
        }
        let mut current = rfs::openat(base, c".", DIR_FLAGS, Mode::empty())
            .map_err(|e| self.io_error(base_path, e))?;
        let mut walked = base_path.clone();
        for name in rel.components() {
            let next = loop {
                match rfs::openat(&current, name, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => break fd,
                    Err(Errno::NOENT) if create => {
                        match rfs::mkdirat(&current, name, Mode::from_raw_mode(DIR_MODE)) {
                            Ok(()) => {
                                if let Some(made) = self.own_new_dir(&current, &walked, name)? {
                                    // A new folder is only durable once its parent is synced.
                                    self.sync_dir(&current, &walked)?;
                                    break made;
                                }
                                self.sync_dir(&current, &walked)?;
                            }
                            // Another writer made it first: fine, open it.
                            Err(Errno::EXIST) => {}
                            Err(e) => return Err(self.io_error_name(&walked, name, e)),
                        }
                        continue;
                    }
                    Err(Errno::NOENT) => {
                        return Err(Error::NotFound {
                            path: base_path.join_path(rel)?,
                        });
                    }
                    Err(Errno::LOOP) => return Err(symlink_refused(&walked, name)),
                    Err(Errno::NOTDIR) => {
                        // Some kernels report a link to a non-folder as "not a folder".
                        if is_symlink(&current, name) {
                            return Err(symlink_refused(&walked, name));
                        }
                        if create {
                            return Err(self.io_error_name(&walked, name, Errno::NOTDIR));
                        }
                        return Err(Error::NotFound {
                            path: base_path.join_path(rel)?,
                        });
                    }
                    Err(e) => return Err(self.io_error_name(&walked, name, e)),
                }
            };
            current = next;
            walked = walked.join(name)?;
        }
        Ok(current)
    }

    /// Looks at the file at `folder/name` for a writer, locking it if it is a regular file.
    fn lock_current(&self, parent: &OwnedFd, folder: &BackendPath, name: &str) -> Result<Current> {
        // A replace between our open and our lock would leave us holding a stale file: after
        // locking, check that the name still points at it, and start over if not.
        loop {
            let before = match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => return Ok(Current::Missing),
                Err(e) => return Err(self.io_error_name(folder, name, e)),
            };
            match FileType::from_raw_mode(before.st_mode) {
                FileType::RegularFile => {}
                FileType::Directory => return Ok(Current::Dir),
                FileType::Symlink => return Err(symlink_refused(folder, name)),
                _ => return Err(not_regular_refused(folder, name)),
            }
            let fd = match rfs::openat(parent, name, READ_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => continue,
                Err(Errno::LOOP) => return Err(symlink_refused(folder, name)),
                Err(e) => return Err(self.io_error_name(folder, name, e)),
            };
            rfs::flock(&fd, FlockOperation::LockExclusive)
                .map_err(|e| self.io_error_name(folder, name, e))?;
            let locked = rfs::fstat(&fd).map_err(|e| self.io_error_name(folder, name, e))?;
            match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(now) if now.st_dev == locked.st_dev && now.st_ino == locked.st_ino => {
                    return Ok(Current::Locked(File::from(fd)));
                }
                Ok(_) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(self.io_error_name(folder, name, e)),
            }
        }
    }

    /// Creates and fills a temporary file next to `name` (owned per [`LocalBackend::with_owner`],
    /// with the attribute of `options`, synced per `options`); returns its name.
    fn write_temp(
        &self,
        parent: &OwnedFd,
        folder: &BackendPath,
        name: &str,
        data: &[u8],
        options: &WriteOptions<'_>,
    ) -> Result<(String, AttributeOutcome)> {
        let (temp, fd) = loop {
            let temp = self.temp_name(name);
            match rfs::openat(
                parent,
                temp.as_str(),
                TEMP_FLAGS,
                Mode::from_raw_mode(FILE_MODE),
            ) {
                Ok(fd) => break (temp, fd),
                // Names are unique per backend; a collision means another process: draw again.
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(self.io_error_name(folder, &temp, e)),
            }
        };
        let mut file = File::from(fd);
        let mut outcome = AttributeOutcome::NotAsked;
        let written = file
            .write_all(data)
            .and_then(|()| self.apply_owner(&file, FILE_MODE))
            .and_then(|()| {
                // Before the fsync, so that the sync covers the attribute too.
                if let Some((attribute, value)) = options.attribute {
                    outcome = match self.set_attribute(&file, attribute, value) {
                        Ok(()) => AttributeOutcome::Set,
                        Err(e) => {
                            tracing::debug!(
                                folder = %folder,
                                name,
                                error = %e,
                                "the filesystem refuses an extended attribute"
                            );
                            AttributeOutcome::Refused
                        }
                    };
                }
                if self.sync == SyncLevel::None || options.durability == Durability::Deferred {
                    Ok(())
                } else {
                    file.sync_all()
                }
            });
        if let Err(source) = written {
            let _ = rfs::unlinkat(parent, temp.as_str(), AtFlags::empty());
            return Err(Error::Io {
                path: self.local_path(folder).join(&temp),
                source,
            });
        }
        Ok((temp, outcome))
    }

    fn set_attribute(&self, fd: &File, attribute: &CStr, value: &[u8]) -> rustix::io::Result<()> {
        match self.attributes {
            Attributes::Used => rfs::fsetxattr(fd, attribute, value, XattrFlags::empty()),
            Attributes::Refused => Err(Errno::OPNOTSUPP),
        }
    }

    /// Gives a file or folder this backend just created its owner and mode, if one is set.
    fn apply_owner(&self, fd: impl AsFd, mode: u32) -> std::io::Result<()> {
        let Some(owner) = self.owner else {
            return Ok(());
        };
        std::os::unix::fs::fchown(&fd, Some(owner.uid), Some(owner.gid))?;
        // After the chown, which may clear mode bits; explicit, so the umask cannot narrow it.
        rfs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        Ok(())
    }

    /// Opens the folder `name` just made in `parent` and gives it its owner, when an owner is
    /// set; `None` when none is set, or the folder went away meanwhile (the caller opens or
    /// makes it again).
    fn own_new_dir(
        &self,
        parent: &OwnedFd,
        folder: &BackendPath,
        name: &str,
    ) -> Result<Option<OwnedFd>> {
        if self.owner.is_none() {
            return Ok(None);
        }
        let fd = match rfs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(symlink_refused(folder, name)),
            Err(e) => return Err(self.io_error_name(folder, name, e)),
        };
        self.apply_owner(&fd, DIR_MODE)
            .map_err(|source| Error::Io {
                path: self.local_path(folder).join(name),
                source,
            })?;
        Ok(Some(fd))
    }

    fn temp_name(&self, name: &str) -> String {
        // Keep the name recognisable but short enough that the temp name fits NAME_MAX.
        let mut cut = name.len().min(200);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let count = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!(
            ".{}{TEMP_INFIX}{:x}{:x}{:08x}",
            &name[..cut],
            self.pid,
            count,
            nanos
        )
    }

    fn sync_dir(&self, fd: &OwnedFd, folder: &BackendPath) -> Result<()> {
        if self.sync == SyncLevel::Filesystem {
            rfs::fsync(fd).map_err(|e| self.io_error(folder, e))?;
        }
        Ok(())
    }

    /// Moves the temporary file into place per `mode`; the caller removes it on error.
    fn commit(
        &self,
        parent: &OwnedFd,
        folder: &BackendPath,
        file: &BackendPath,
        name: &str,
        temp: &str,
        mode: &WriteMode,
    ) -> Result<()> {
        match mode {
            WriteMode::Replace => {
                let _lock = match self.lock_current(parent, folder, name)? {
                    Current::Dir => return Err(self.io_error(file, Errno::ISDIR)),
                    current => current,
                };
                rfs::renameat(parent, temp, parent, name).map_err(|e| self.io_error(file, e))
            }
            WriteMode::CreateOnly => {
                match rfs::renameat_with(parent, temp, parent, name, RenameFlags::NOREPLACE) {
                    Ok(()) => Ok(()),
                    Err(Errno::EXIST) => Err(Error::AlreadyExists { path: file.clone() }),
                    // Filesystems without RENAME_NOREPLACE: link() fails atomically on an
                    // existing name, and the temp name goes afterwards.
                    Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                        match rfs::linkat(parent, temp, parent, name, AtFlags::empty()) {
                            Ok(()) => {
                                let _ = rfs::unlinkat(parent, temp, AtFlags::empty());
                                Ok(())
                            }
                            Err(Errno::EXIST) => Err(Error::AlreadyExists { path: file.clone() }),
                            Err(e) => Err(self.io_error(file, e)),
                        }
                    }
                    Err(e) => Err(self.io_error(file, e)),
                }
            }
            WriteMode::Update(expected) => {
                let locked = match self.lock_current(parent, folder, name)? {
                    Current::Locked(f) => f,
                    Current::Missing | Current::Dir => {
                        return Err(Error::Precondition { path: file.clone() });
                    }
                };
                let current = self.read_all(file, locked.as_fd(), None, MAX_WHOLE_FILE_READ)?;
                if Version::of_content(&current) != *expected {
                    return Err(Error::Precondition { path: file.clone() });
                }
                rfs::renameat(parent, temp, parent, name).map_err(|e| self.io_error(file, e))
            }
        }
    }

    /// [`Backend::write`] with the extras of `options`; also tells whether the attribute was set.
    pub(crate) fn write_with(
        &self,
        file: &BackendPath,
        data: &[u8],
        mode: WriteMode,
        options: &WriteOptions<'_>,
    ) -> Result<(Version, AttributeOutcome)> {
        let (folder, name) = split_file(file)?;
        if data.is_empty()
            && mode == WriteMode::CreateOnly
            && options.attribute.is_none()
            && options.durability == Durability::PerSyncLevel
        {
            match self.create_empty(file, &folder, name)? {
                Created::Yes => return Ok((Version::of_content(data), AttributeOutcome::NotAsked)),
                Created::TakeTheLongWay => {}
            }
        }
        let parent = self.open_dir(&folder, true)?;
        let (temp, outcome) = self.write_temp(&parent, &folder, name, data, options)?;
        if let Err(e) = self.commit(&parent, &folder, file, name, &temp, &mode) {
            let _ = rfs::unlinkat(&parent, temp.as_str(), AtFlags::empty());
            return Err(e);
        }
        if options.durability == Durability::PerSyncLevel {
            self.sync_dir(&parent, &folder)?;
        }
        Ok((Version::of_content(data), outcome))
    }

    /// Creates the empty marker file `file` (a `.protected`) in its folder, which must exist: it
    /// is never made, so a marker cannot bring back a folder removed meanwhile. In place with
    /// `O_CREAT | O_EXCL` (see [`Backend::write`]'s empty create-only files), beneath the root
    /// without following links, the folder fsynced per sync level; `Ok(false)`
    /// if the file was there already. For callers that serialize every change of the marker
    /// with a lock of their own (a snapshot's lock, as PBS does).
    ///
    /// # Errors
    /// [`Error::NotFound`] if the folder is missing; [`Error::RefusedPath`] for a link on the way;
    /// [`Error::Io`].
    pub fn create_marker(&self, file: &BackendPath) -> Result<bool> {
        let (folder, name) = split_file(file)?;
        match self.create_empty(file, &folder, name) {
            Ok(Created::Yes) => return Ok(true),
            Err(Error::AlreadyExists { .. }) => return Ok(false),
            Err(e) => return Err(e),
            Ok(Created::TakeTheLongWay) => {}
        }
        // The walk names the error (a missing folder, a link); it makes no folder.
        let parent = self.open_dir(&folder, false)?;
        let mode = Mode::from_raw_mode(FILE_MODE);
        let fd = match rfs::openat(&parent, name, TEMP_FLAGS, mode) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => return Ok(false),
            Err(e) => return Err(self.io_error(file, e)),
        };
        if let Err(source) = self.apply_owner(&fd, FILE_MODE) {
            drop(fd);
            // Ours (O_EXCL): taken back rather than left with the wrong owner.
            let _ = rfs::unlinkat(&parent, name, AtFlags::empty());
            return Err(Error::Io {
                path: self.local_path(file),
                source,
            });
        }
        drop(fd);
        self.sync_dir(&parent, &folder)?;
        Ok(true)
    }

    /// Removes the marker file `file` (a `.protected`): one `unlinkat` in its folder, the folder
    /// fsynced per sync level. No compare-and-swap lock on the file as
    /// [`Backend::remove_file`] takes: a marker is only ever created or removed, never
    /// rewritten, and the caller serializes those with a lock of its own.
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no such file; [`Error::Io`].
    pub fn remove_marker(&self, file: &BackendPath) -> Result<()> {
        self.unlink_unlocked(file)
    }

    /// Creates the empty file `file` (`folder/name`) in place: an empty file cannot be seen
    /// half-written, so it needs no temporary file and rename (a `.protected` marker). Made with
    /// `O_CREAT | O_EXCL`, so exactly one concurrent creator wins, beneath the root without
    /// following links. With [`SyncLevel::File`] or [`SyncLevel::Filesystem`] the folder is
    /// fsynced afterwards: the file's only content is its name.
    ///
    /// [`Created::TakeTheLongWay`] when this cannot decide (no `openat2`, a missing folder to
    /// make, a link on the way, any other failure): the temporary-file path then does the work
    /// and gives the precise error.
    fn create_empty(
        &self,
        file: &BackendPath,
        folder: &BackendPath,
        name: &str,
    ) -> Result<Created> {
        if !self.openat2.load(Ordering::Relaxed) {
            return Ok(Created::TakeTheLongWay);
        }
        let mode = Mode::from_raw_mode(FILE_MODE);
        let (fd, parent) = if self.sync == SyncLevel::None {
            match rfs::openat2(&self.root_fd, file.as_str(), TEMP_FLAGS, mode, BENEATH) {
                Ok(fd) => (fd, None),
                Err(Errno::EXIST) => return Err(Error::AlreadyExists { path: file.clone() }),
                Err(Errno::NOSYS | Errno::PERM) => {
                    self.openat2.store(false, Ordering::Relaxed);
                    return Ok(Created::TakeTheLongWay);
                }
                Err(_) => return Ok(Created::TakeTheLongWay),
            }
        } else {
            // The folder's handle is needed for its fsync.
            let parent = match self.open_dir(folder, false) {
                Ok(parent) => parent,
                Err(Error::NotFound { .. }) => return Ok(Created::TakeTheLongWay),
                Err(e) => return Err(e),
            };
            match rfs::openat(&parent, name, TEMP_FLAGS, mode) {
                Ok(fd) => (fd, Some(parent)),
                Err(Errno::EXIST) => return Err(Error::AlreadyExists { path: file.clone() }),
                Err(_) => return Ok(Created::TakeTheLongWay),
            }
        };
        if let Err(source) = self.apply_owner(&fd, FILE_MODE) {
            drop(fd);
            // Ours (O_EXCL): take it back rather than leave a file with the wrong owner.
            let _ = match &parent {
                Some(parent) => rfs::unlinkat(parent, name, AtFlags::empty()),
                None => rfs::openat2(
                    &self.root_fd,
                    folder.as_str(),
                    DIR_FLAGS,
                    Mode::empty(),
                    BENEATH,
                )
                .and_then(|parent| rfs::unlinkat(&parent, name, AtFlags::empty())),
            };
            return Err(Error::Io {
                path: self.local_path(file),
                source,
            });
        }
        drop(fd);
        if let Some(parent) = parent {
            rfs::fsync(&parent).map_err(|e| self.io_error(folder, e))?;
        }
        Ok(Created::Yes)
    }

    /// Opens the regular file `file` for reading, never through a link; with its status.
    fn open_regular(&self, file: &BackendPath) -> Result<(OwnedFd, rfs::Stat)> {
        if let Some(opened) = self.open_regular_beneath(file) {
            return Ok(opened);
        }
        let (folder, name) = split_file(file)?;
        let parent = self.open_dir(&folder, false).map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound { path: file.clone() },
            e => e,
        })?;
        // Look before opening: opening a device can have effects (a tape rewinds).
        match rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => {}
                FileType::Directory => return Err(Error::NotFound { path: file.clone() }),
                FileType::Symlink => return Err(symlink_refused(&folder, name)),
                _ => return Err(not_regular_refused(&folder, name)),
            },
            Err(Errno::NOENT) => return Err(Error::NotFound { path: file.clone() }),
            Err(e) => return Err(self.io_error(file, e)),
        }
        let fd = match rfs::openat(&parent, name, READ_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(Error::NotFound { path: file.clone() }),
            Err(Errno::LOOP) => return Err(symlink_refused(&folder, name)),
            Err(e) => return Err(self.io_error(file, e)),
        };
        let st = rfs::fstat(&fd).map_err(|e| self.io_error(file, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(not_regular_refused(&folder, name));
        }
        Ok((fd, st))
    }

    /// [`LocalBackend::open_regular`] in three system calls where all is well: a look at the whole
    /// path (never opening anything: a device must not be opened, a tape would rewind), one
    /// `openat2` beneath the root that the kernel refuses to resolve through any link, and an
    /// `fstat` that must show the regular file the look saw. The look may pass through a link
    /// on the way (`fstatat` resolves the folders of a path); only the open decides, and it
    /// never does. `None` for anything else (missing, a link, not regular, changed in between,
    /// no `openat2`): the walk then decides and names the error.
    fn open_regular_beneath(&self, file: &BackendPath) -> Option<(OwnedFd, rfs::Stat)> {
        let (fd, seen) = self.look_and_open_beneath(file)?;
        let st = rfs::fstat(&fd).ok()?;
        let same = st.st_dev == seen.st_dev && st.st_ino == seen.st_ino;
        (same && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then_some((fd, st))
    }

    /// The look at the whole path (a regular file, or `None`) and the one `openat2` of the fast
    /// reads; the descriptor and what the look saw.
    fn look_and_open_beneath(&self, file: &BackendPath) -> Option<(OwnedFd, rfs::Stat)> {
        if file.is_root() || !self.openat2.load(Ordering::Relaxed) {
            return None;
        }
        let seen = rfs::statat(
            &self.root_fd,
            file.as_str(),
            AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT,
        )
        .ok()?;
        if FileType::from_raw_mode(seen.st_mode) != FileType::RegularFile {
            return None;
        }
        match rfs::openat2(
            &self.root_fd,
            file.as_str(),
            READ_FLAGS,
            Mode::empty(),
            BENEATH,
        ) {
            Ok(fd) => Some((fd, seen)),
            Err(Errno::NOSYS | Errno::PERM) => {
                self.openat2.store(false, Ordering::Relaxed);
                None
            }
            Err(_) => None,
        }
    }

    /// The content of the regular file `file`, for reads that return only bytes
    /// ([`Backend::read_data`], [`Backend::read_chunk`]): the fast path of
    /// [`LocalBackend::open_regular_beneath`] without its `fstat`, else the checked open.
    fn read_bytes(&self, file: &BackendPath, max: u64) -> Result<Vec<u8>> {
        if let Some(data) = self.read_beneath_bounded(file, max) {
            return Ok(data);
        }
        let (fd, st) = self.open_regular(file)?;
        self.read_all(file, fd.as_fd(), Some(&st), max)
    }

    /// The look and the one `openat2` of [`LocalBackend::open_regular_beneath`], then reads of
    /// at most one byte more than the size the look saw, accepted only when they end at exactly
    /// that size. The `fstat` that would confirm the open found the file the look saw is not
    /// needed here: what can be swapped in between is a file of that size (any reader after
    /// the swap reads the same bytes), a FIFO (opened without blocking: it yields what its
    /// writer, who could as well have written the file, writes, at most that many bytes), or
    /// a device, which only a process allowed to make device nodes can place (the checked open
    /// would have opened it as well: its `fstat` comes after the open). Anything else (another
    /// size, a read error, a link, no `openat2`) is `None`: the checked open then decides and
    /// names the error.
    fn read_beneath_bounded(&self, file: &BackendPath, max: u64) -> Option<Vec<u8>> {
        let (fd, seen) = self.look_and_open_beneath(file)?;
        // Too large (the checked open names it) or negative.
        let size = u64::try_from(seen.st_size)
            .ok()
            .filter(|&size| size <= max)?;
        let size = usize::try_from(size).ok()?;
        // Room for the size and the one byte that would show the file is longer.
        let limit = size.checked_add(1)?;
        let mut data = Vec::new();
        data.try_reserve_exact(limit).ok()?;
        while data.len() < limit {
            match rustix::io::read(&fd, rustix::buffer::spare_capacity(&mut data)) {
                Ok(0) => break,
                Ok(_) | Err(Errno::INTR) => {}
                Err(_) => return None,
            }
        }
        (data.len() == size).then_some(data)
    }

    /// Reads the whole file behind `fd` (opened by [`LocalBackend::open_regular`]).
    fn read_open(&self, file: &BackendPath, fd: OwnedFd, st: &rfs::Stat) -> Result<FileContents> {
        self.read_open_max(file, fd, st, MAX_WHOLE_FILE_READ)
    }

    /// [`LocalBackend::read_open`] of at most `max` bytes.
    fn read_open_max(
        &self,
        file: &BackendPath,
        fd: OwnedFd,
        st: &rfs::Stat,
        max: u64,
    ) -> Result<FileContents> {
        let data = self.read_all(file, fd.as_fd(), Some(st), max)?;
        let version = Version::of_content(&data);
        Ok(FileContents { data, version })
    }

    /// Reads what is left of the file behind `fd`, with room for `st`'s size from the start.
    /// At most `max` bytes ([`Error::TooLarge`] beyond, and where the room cannot be allocated):
    /// a size above `max` is refused before anything is read.
    fn read_all(
        &self,
        file: &BackendPath,
        fd: BorrowedFd<'_>,
        st: Option<&rfs::Stat>,
        max: u64,
    ) -> Result<Vec<u8>> {
        let too_large = |size: u64| Error::TooLarge {
            path: file.to_string(),
            size,
            limit: max,
        };
        let size = st.map_or(0, |st| u64::try_from(st.st_size).unwrap_or(0));
        if size > max {
            return Err(too_large(size));
        }
        // Room for the size and one byte more, so that the read finding the end needs no
        // growth; and no `read_to_end`, which asks the size again (`statx`, `lseek`).
        let room = if st.is_some() {
            usize::try_from(size.saturating_add(1)).unwrap_or(usize::MAX)
        } else {
            8 * 1024
        };
        let mut data = Vec::new();
        data.try_reserve_exact(room).map_err(|_| too_large(size))?;
        loop {
            if data.len() as u64 > max {
                return Err(too_large(data.len() as u64));
            }
            if data.len() == data.capacity() {
                data.try_reserve(data.len().max(8 * 1024))
                    .map_err(|_| too_large(data.len() as u64))?;
            }
            match rustix::io::read(fd, rustix::buffer::spare_capacity(&mut data)) {
                Ok(0) => break,
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(self.io_error(file, e)),
            }
        }
        Ok(data)
    }

    // The S3 cache's side of the local backend.
    #[cfg(feature = "s3")]
    /// [`Backend::read`], and the value of the extended attribute `attribute` of the same file
    /// (`None` if it has none, or the filesystem keeps none).
    pub(crate) fn read_with_attribute(
        &self,
        file: &BackendPath,
        attribute: &CStr,
    ) -> Result<(FileContents, Option<Vec<u8>>)> {
        let (fd, st) = self.open_regular(file)?;
        let value = self.get_attribute(&fd, attribute);
        Ok((self.read_open(file, fd, &st)?, value))
    }

    // The S3 cache's side of the local backend.
    #[cfg(feature = "s3")]
    /// The size of the file `file` and the value of its extended attribute `attribute`, without
    /// reading the file.
    pub(crate) fn stat_with_attribute(
        &self,
        file: &BackendPath,
        attribute: &CStr,
    ) -> Result<(u64, Option<Vec<u8>>)> {
        let (fd, st) = self.open_regular(file)?;
        Ok((
            u64::try_from(st.st_size).unwrap_or(0),
            self.get_attribute(&fd, attribute),
        ))
    }

    // The S3 cache's side of the local backend.
    #[cfg(feature = "s3")]
    /// The value of the extended attribute `attribute` of the open file `fd`, if it has one that
    /// fits the buffer (records are far smaller); `None` also where the filesystem keeps none.
    fn get_attribute(&self, fd: &OwnedFd, attribute: &CStr) -> Option<Vec<u8>> {
        if self.attributes == Attributes::Refused {
            return None;
        }
        let mut buffer = vec![0u8; 4096];
        match rfs::fgetxattr(fd, attribute, &mut buffer[..]) {
            Ok(len) => {
                buffer.truncate(len);
                Some(buffer)
            }
            Err(_) => None,
        }
    }

    // The S3 cache's side of the local backend.
    #[cfg(feature = "s3")]
    /// Removes the extended attribute `attribute` of `file`, if it has it.
    pub(crate) fn remove_attribute(&self, file: &BackendPath, attribute: &CStr) -> Result<()> {
        let (fd, _) = self.open_regular(file)?;
        match rfs::fremovexattr(&fd, attribute) {
            Ok(()) | Err(Errno::NODATA | Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(self.io_error(file, e)),
        }
    }

    /// Every entry below `folder`, by kind, walking without following links.
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no such folder.
    pub(crate) fn walk(&self, folder: &BackendPath) -> Result<Tree> {
        let fd = self.open_dir(folder, false)?;
        self.collect_tree(&fd, folder)
    }

    /// Opens (creating it and its folders if missing) the lock file `file` beneath the root,
    /// never following a link, for a `flock` by the caller (the cache's refresh lock, the intent
    /// journal's locks). Created files and folders get this backend's owner.
    ///
    /// # Errors
    /// [`Error::RefusedPath`] for a link on the way; [`Error::Io`].
    pub fn open_lock_file(&self, file: &BackendPath) -> Result<OwnedFd> {
        check_file_path(file)?;
        let parent = file.parent().unwrap_or_default();
        let name = file.file_name().unwrap_or_default();
        let dir = self.open_dir(&parent, true)?;
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(&dir, name, flags, Mode::from_raw_mode(0o644))
            .map_err(|e| self.io_error(file, e))?;
        self.apply_owner(&fd, FILE_MODE).map_err(|e| Error::Io {
            path: self.local_path(file),
            source: e,
        })?;
        Ok(fd)
    }

    /// Removes the lock file `file` (opened with [`LocalBackend::open_lock_file`] and held by the
    /// caller), beneath the root, never following a link. Unlike [`Backend::remove_file`] it takes
    /// no lock of its own on the file: the caller's lock is the one that matters, and taking
    /// another would wait for the caller itself.
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no such file; [`Error::RefusedPath`]; [`Error::Io`].
    pub fn remove_lock_file(&self, file: &BackendPath) -> Result<()> {
        self.unlink_unlocked(file)
    }

    /// One `unlinkat` of `file` in its folder (opened beneath the root, never through a link),
    /// the folder fsynced per sync level, without the compare-and-swap lock of
    /// [`Backend::remove_file`]: for files whose callers serialize removals themselves.
    fn unlink_unlocked(&self, file: &BackendPath) -> Result<()> {
        let (folder, name) = split_file(file)?;
        let parent = self.open_dir(&folder, false).map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound { path: file.clone() },
            e => e,
        })?;
        match rfs::unlinkat(&parent, name, AtFlags::empty()) {
            Ok(()) => self.sync_dir(&parent, &folder),
            Err(Errno::NOENT) => Err(Error::NotFound { path: file.clone() }),
            Err(e) => Err(self.io_error(file, e)),
        }
    }

    /// Opens the existing file `file` beneath the root for reading, never following a link and
    /// never creating anything: to try a lock without leaving a trace.
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no such file; [`Error::RefusedPath`]; [`Error::Io`].
    pub fn open_existing_file(&self, file: &BackendPath) -> Result<OwnedFd> {
        check_file_path(file)?;
        let parent = file.parent().unwrap_or_default();
        let name = file.file_name().unwrap_or_default();
        let dir = self.open_dir(&parent, false)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rfs::openat(&dir, name, flags, Mode::empty()).map_err(|e| match e {
            Errno::NOENT => Error::NotFound { path: file.clone() },
            e => self.io_error(file, e),
        })
    }

    // The S3 cache's side of the local backend.
    #[cfg(feature = "s3")]
    /// Forces everything written to the cache's filesystem to disk, once, per the
    /// [`SyncLevel`] (`syncfs`; nothing for `None`): for writes made with
    /// [`Durability::Deferred`].
    pub(crate) fn sync_filesystem(&self) -> Result<()> {
        if self.sync == SyncLevel::None {
            return Ok(());
        }
        rfs::syncfs(&self.root_fd).map_err(|e| self.io_error(&BackendPath::root(), e))
    }

    /// Collects every entry below `folder`, by kind.
    fn collect_tree(&self, folder_fd: &OwnedFd, folder: &BackendPath) -> Result<Tree> {
        let mut tree = Tree::default();
        let first = rfs::openat(folder_fd, c".", DIR_FLAGS, Mode::empty())
            .map_err(|e| self.io_error(folder, e))?;
        let mut stack = vec![(folder.clone(), first)];
        while let Some((path, fd)) = stack.pop() {
            let mut dir = rfs::Dir::new(fd).map_err(|e| self.io_error(&path, e))?;
            while let Some(entry) = dir.read() {
                let entry = entry.map_err(|e| self.io_error(&path, e))?;
                let Some(name) = entry_name(entry.file_name(), &path) else {
                    continue;
                };
                let child = path.join(name)?;
                let kind = match entry.file_type() {
                    FileType::Unknown => {
                        let fd = dir.fd().map_err(|e| self.io_error(&path, e))?;
                        match rfs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                            Ok(st) => FileType::from_raw_mode(st.st_mode),
                            Err(Errno::NOENT) => continue,
                            Err(e) => return Err(self.io_error(&child, e)),
                        }
                    }
                    known => known,
                };
                match kind {
                    FileType::Directory => {
                        let fd = dir.fd().map_err(|e| self.io_error(&path, e))?;
                        match rfs::openat(fd, name, DIR_FLAGS, Mode::empty()) {
                            Ok(sub) => {
                                tree.dirs.push(child.clone());
                                stack.push((child, sub));
                            }
                            Err(Errno::NOENT) => {}
                            // Replaced by a link or file since the listing: not a folder.
                            Err(Errno::LOOP | Errno::NOTDIR) => tree.others.push(child),
                            Err(e) => return Err(self.io_error(&child, e)),
                        }
                    }
                    FileType::RegularFile => tree.files.push(child),
                    _ => tree.others.push(child),
                }
            }
        }
        Ok(tree)
    }
}

fn symlink_refused(folder: &BackendPath, name: &str) -> Error {
    Error::refused(
        join_display(folder, name),
        "a symbolic link is on the way; links are never followed",
    )
}

fn not_regular_refused(folder: &BackendPath, name: &str) -> Error {
    Error::refused(join_display(folder, name), "not a regular file")
}

fn join_display(folder: &BackendPath, name: &str) -> String {
    if folder.is_root() {
        name.to_owned()
    } else {
        format!("{folder}/{name}")
    }
}

fn is_symlink(dir: &OwnedFd, name: &str) -> bool {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
        .unwrap_or(false)
}

/// The entry's name if it can be a path component; `.`/`..` and unusable names give `None`.
fn entry_name<'a>(raw: &'a CStr, folder: &BackendPath) -> Option<&'a str> {
    let bytes = raw.to_bytes();
    if bytes == b"." || bytes == b".." {
        return None;
    }
    match raw.to_str() {
        Ok(name) if check_component(name).is_ok() => Some(name),
        _ => {
            tracing::warn!(
                folder = %folder,
                name = %raw.to_string_lossy(),
                "skipping a name that is not a valid path component"
            );
            None
        }
    }
}

fn split_file(file: &BackendPath) -> Result<(BackendPath, &str)> {
    check_file_path(file)?;
    let folder = file.parent().unwrap_or_default();
    let name = file.file_name().unwrap_or_default();
    Ok((folder, name))
}

fn kind_of(file_type: FileType) -> EntryKind {
    match file_type {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        _ => EntryKind::Other,
    }
}

/// A streamed local listing.
struct LocalListing {
    dir: rfs::Dir,
    folder: BackendPath,
    root: PathBuf,
}

impl LocalListing {
    fn error(&self, errno: Errno) -> Error {
        Error::Io {
            path: if self.folder.is_root() {
                self.root.clone()
            } else {
                self.root.join(self.folder.as_str())
            },
            source: errno.into(),
        }
    }
}

impl Iterator for LocalListing {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            let entry = match self.dir.read()? {
                Ok(entry) => entry,
                Err(e) => return Some(Err(self.error(e))),
            };
            let Some(name) = entry_name(entry.file_name(), &self.folder) else {
                continue;
            };
            let kind = match entry.file_type() {
                // Filesystems without d_type: one stat, never following.
                FileType::Unknown => {
                    let fd = match self.dir.fd() {
                        Ok(fd) => fd,
                        Err(e) => return Some(Err(self.error(e))),
                    };
                    match rfs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => kind_of(FileType::from_raw_mode(st.st_mode)),
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Some(Err(self.error(e))),
                    }
                }
                known => kind_of(known),
            };
            return Some(Ok(Entry {
                name: name.to_owned(),
                kind,
            }));
        }
    }
}

impl Backend for LocalBackend {
    fn host_local(&self) -> Option<&LocalBackend> {
        Some(self)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            sorted_listing: false,
            empty_folders: true,
            atomic_rename: true,
            compare_and_swap: true,
            own_authority: true,
        }
    }

    fn list(&self, folder: &BackendPath) -> Result<Listing<'_>> {
        let fd = self.open_dir(folder, false)?;
        let dir = rfs::Dir::new(fd).map_err(|e| self.io_error(folder, e))?;
        Ok(Box::new(LocalListing {
            dir,
            folder: folder.clone(),
            root: self.root.clone(),
        }))
    }

    fn read(&self, file: &BackendPath) -> Result<FileContents> {
        let (fd, st) = self.open_regular(file)?;
        self.read_open(file, fd, &st)
    }

    fn read_data(&self, file: &BackendPath) -> Result<Vec<u8>> {
        self.read_bytes(file, MAX_WHOLE_FILE_READ)
    }

    /// The size the look (or `fstat`) saw decides before anything is read or allocated.
    fn read_data_max(&self, file: &BackendPath, max: u64) -> Result<Vec<u8>> {
        self.read_bytes(file, max.min(MAX_WHOLE_FILE_READ))
    }

    /// The size `fstat` saw decides before anything is read or allocated.
    fn read_authoritative_max(&self, file: &BackendPath, max: u64) -> Result<FileContents> {
        let (fd, st) = self.open_regular(file)?;
        self.read_open_max(file, fd, &st, max.min(MAX_WHOLE_FILE_READ))
    }

    /// As [`Backend::read`] without the version: a chunk is never compared and swapped, and
    /// hashing megabytes for a version nobody asks for would double the cost of reading data.
    fn read_chunk(&self, digest: &ChunkDigest) -> Result<Vec<u8>> {
        self.read_bytes(&digest.local_path(), MAX_CHUNK_READ)
    }

    fn write(&self, file: &BackendPath, data: &[u8], mode: WriteMode) -> Result<crate::Version> {
        self.write_with(file, data, mode, &WriteOptions::default())
            .map(|(version, _)| version)
    }

    fn remove_file(&self, file: &BackendPath) -> Result<()> {
        let (folder, name) = split_file(file)?;
        let parent = self.open_dir(&folder, false).map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound { path: file.clone() },
            e => e,
        })?;
        let _lock = match self.lock_current(&parent, &folder, name)? {
            Current::Missing | Current::Dir => return Err(Error::NotFound { path: file.clone() }),
            locked => locked,
        };
        match rfs::unlinkat(&parent, name, AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::NOENT) => return Err(Error::NotFound { path: file.clone() }),
            Err(e) => return Err(self.io_error(file, e)),
        }
        self.sync_dir(&parent, &folder)
    }

    fn remove_tree(&self, folder: &BackendPath, keep: &KeepFilter) -> Result<RemoveReport> {
        let tree = self.open_dir(folder, false)?;
        let Tree {
            mut files,
            others,
            mut dirs,
        } = self.collect_tree(&tree, folder)?;
        // Links and other non-folders go like files (unlinked, never followed).
        files.extend(others);
        let plan = keep.plan(&files);
        files.sort();
        let mut report = RemoveReport::default();
        let mut failed = 0usize;
        let mut first_error = None;
        let mut note = |e: Error| {
            failed += 1;
            first_error.get_or_insert(e);
        };
        // Files only from the first pass: a `.protected` created meanwhile is never removed
        // unseen. Sorted, so each folder is opened once.
        let mut open: Option<(BackendPath, OwnedFd)> = None;
        for file in &files {
            if plan.keeps(file) {
                report.kept += 1;
                continue;
            }
            let parent_path = file.parent().unwrap_or_default();
            let name = file.file_name().unwrap_or_default();
            if open.as_ref().is_none_or(|(p, _)| *p != parent_path) {
                let rel = parent_path.strip_prefix(folder).unwrap_or_default();
                match self.open_dir_from(tree.as_fd(), folder, &rel, false) {
                    Ok(fd) => open = Some((parent_path.clone(), fd)),
                    Err(Error::NotFound { .. }) => continue,
                    Err(e) => {
                        note(e);
                        continue;
                    }
                }
            }
            let Some((_, parent)) = &open else { continue };
            match rfs::unlinkat(parent, name, AtFlags::empty()) {
                Ok(()) => report.removed += 1,
                Err(Errno::NOENT) => {}
                Err(e) => note(self.io_error(file, e)),
            }
        }
        drop(open);
        // Deepest first; a folder still holding something kept (or new) stays.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.depth()));
        for dir in &dirs {
            let parent_path = dir.parent().unwrap_or_default();
            let rel = parent_path.strip_prefix(folder).unwrap_or_default();
            let parent = match self.open_dir_from(tree.as_fd(), folder, &rel, false) {
                Ok(fd) => fd,
                Err(Error::NotFound { .. }) => continue,
                Err(e) => {
                    note(e);
                    continue;
                }
            };
            let name = dir.file_name().unwrap_or_default();
            match rfs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT | Errno::NOTEMPTY | Errno::EXIST) => {}
                Err(e) => note(self.io_error(dir, e)),
            }
        }
        drop(tree);
        if let Some(parent_path) = folder.parent() {
            let name = folder.file_name().unwrap_or_default();
            match self.open_dir(&parent_path, false) {
                Ok(parent) => {
                    match rfs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
                        Ok(()) | Err(Errno::NOENT | Errno::NOTEMPTY | Errno::EXIST) => {}
                        Err(e) => note(self.io_error(folder, e)),
                    }
                    if let Err(e) = self.sync_dir(&parent, &parent_path) {
                        note(e);
                    }
                }
                Err(Error::NotFound { .. }) => {}
                Err(e) => note(e),
            }
        }
        match first_error {
            None => Ok(report),
            Some(source) => Err(Error::Incomplete {
                path: folder.clone(),
                failed,
                source: Box::new(source),
            }),
        }
    }

    fn rename(&self, from: &BackendPath, to: &BackendPath) -> Result<()> {
        check_rename(from, to)?;
        let (from_folder, from_name) = split_file(from)?;
        let (to_folder, to_name) = split_file(to)?;
        let from_parent = self.open_dir(&from_folder, false).map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound { path: from.clone() },
            e => e,
        })?;
        match rfs::statat(&from_parent, from_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                return Err(symlink_refused(&from_folder, from_name));
            }
            Ok(_) => {}
            Err(Errno::NOENT) => return Err(Error::NotFound { path: from.clone() }),
            Err(e) => return Err(self.io_error(from, e)),
        }
        let to_parent = self.open_dir(&to_folder, true)?;
        match rfs::renameat_with(
            &from_parent,
            from_name,
            &to_parent,
            to_name,
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(Errno::EXIST | Errno::NOTEMPTY) => {
                return Err(Error::AlreadyExists { path: to.clone() });
            }
            Err(Errno::NOENT) => return Err(Error::NotFound { path: from.clone() }),
            // Without RENAME_NOREPLACE the check and the rename are two steps: a target created
            // in between is replaced (files) or refused by the kernel (non-empty folders).
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                match rfs::statat(&to_parent, to_name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(_) => return Err(Error::AlreadyExists { path: to.clone() }),
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(self.io_error(to, e)),
                }
                rfs::renameat(&from_parent, from_name, &to_parent, to_name)
                    .map_err(|e| self.io_error(to, e))?;
            }
            Err(e) => return Err(self.io_error(to, e)),
        }
        self.sync_dir(&to_parent, &to_folder)?;
        self.sync_dir(&from_parent, &from_folder)
    }

    fn stat(&self, path: &BackendPath) -> Result<Stat> {
        let Some(folder) = path.parent() else {
            return Ok(Stat {
                kind: EntryKind::Dir,
                size: None,
            });
        };
        let name = path.file_name().unwrap_or_default();
        let parent = self.open_dir(&folder, false).map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound { path: path.clone() },
            e => e,
        })?;
        let st = match rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Err(Error::NotFound { path: path.clone() }),
            Err(e) => return Err(self.io_error(path, e)),
        };
        let file_type = FileType::from_raw_mode(st.st_mode);
        if file_type == FileType::Symlink {
            return Err(symlink_refused(&folder, name));
        }
        let kind = kind_of(file_type);
        Ok(Stat {
            kind,
            size: (kind == EntryKind::File).then(|| u64::try_from(st.st_size).unwrap_or(0)),
        })
    }

    fn create_dir_all(&self, folder: &BackendPath) -> Result<()> {
        self.open_dir(folder, true).map(drop)
    }

    /// One `openat2(O_PATH)` beneath the root, which opens nothing (no device, no FIFO) and
    /// resolves no link; anything but "there" or "missing" goes through [`Backend::stat`],
    /// which names the error (a link is refused, not reported as missing).
    fn exists(&self, path: &BackendPath) -> Result<bool> {
        if !path.is_root() && self.openat2.load(Ordering::Relaxed) {
            let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rfs::openat2(&self.root_fd, path.as_str(), flags, Mode::empty(), BENEATH) {
                Ok(_) => return Ok(true),
                Err(Errno::NOENT) => return Ok(false),
                Err(Errno::NOSYS | Errno::PERM) => self.openat2.store(false, Ordering::Relaxed),
                Err(_) => {}
            }
        }
        match self.stat(path) {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn list_files_authoritative(&self, folder: &BackendPath) -> Result<Vec<BackendPath>> {
        let mut files = self.walk(folder)?.files;
        files.sort();
        Ok(files)
    }

    /// Each file under the same lock as compare-and-swap writes (a symbolic link is refused and
    /// counts as a failure); each folder synced once, per the [`SyncLevel`].
    fn remove_files(&self, files: &[BackendPath]) -> Result<RemoveReport> {
        for file in files {
            check_file_path(file)?;
        }
        let mut report = RemoveReport::default();
        let mut failures = Vec::new();
        // Sorted, so each folder is opened (and synced) once; `None` for a folder not there.
        let mut open: Option<(BackendPath, Option<OwnedFd>, bool)> = None;
        let finish = |open: Option<(BackendPath, Option<OwnedFd>, bool)>,
                      failures: &mut Vec<Error>| {
            if let Some((folder, Some(fd), true)) = open {
                if let Err(e) = self.sync_dir(&fd, &folder) {
                    failures.push(e);
                }
            }
        };
        for file in unique_sorted(files) {
            let (folder, name) = split_file(file)?;
            if open.as_ref().is_none_or(|(f, _, _)| *f != folder) {
                finish(open.take(), &mut failures);
                let fd = match self.open_dir(&folder, false) {
                    Ok(fd) => Some(fd),
                    Err(Error::NotFound { .. }) => None,
                    Err(e) => {
                        failures.push(e);
                        None
                    }
                };
                open = Some((folder.clone(), fd, false));
            }
            let Some((_, Some(parent), removed_here)) = &mut open else {
                continue;
            };
            let _lock = match self.lock_current(parent, &folder, name) {
                Ok(Current::Missing | Current::Dir) => continue,
                Ok(locked) => locked,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            match rfs::unlinkat(&*parent, name, AtFlags::empty()) {
                Ok(()) => {
                    report.removed += 1;
                    *removed_here = true;
                }
                Err(Errno::NOENT) => {}
                Err(e) => failures.push(self.io_error(file, e)),
            }
        }
        finish(open, &mut failures);
        incomplete_unless_empty(files, failures).map(|()| report)
    }

    fn remove_folder_if_empty(&self, folder: &BackendPath) -> Result<bool> {
        check_folder_removable(folder)?;
        let parent_path = folder.parent().unwrap_or_default();
        let name = folder.file_name().unwrap_or_default();
        let parent = match self.open_dir(&parent_path, false) {
            Ok(fd) => fd,
            Err(Error::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(e),
        };
        // One rmdir: the kernel checks emptiness and removes atomically, so nothing written
        // into the folder meanwhile is ever lost.
        match rfs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
            Ok(()) => {
                self.sync_dir(&parent, &parent_path)?;
                Ok(true)
            }
            Err(Errno::NOENT) => Ok(true),
            // Something is in it; or it is a file or a link, not a folder (never followed).
            Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR) => Ok(false),
            Err(e) => Err(self.io_error(folder, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_level_names_round_trip() {
        for level in [SyncLevel::None, SyncLevel::File, SyncLevel::Filesystem] {
            assert_eq!(level.as_str().parse::<SyncLevel>(), Ok(level));
        }
        assert!("fs".parse::<SyncLevel>().is_err());
        assert_eq!(SyncLevel::default(), SyncLevel::Filesystem);
    }

    #[test]
    fn temp_names_match_no_pbs_listing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBackend::open(dir.path(), SyncLevel::None).unwrap();
        for name in [
            "index.json.blob",
            "drive-scsi0.img.fidx",
            "catalog.pcat1.didx",
            ".protected",
            "owner",
            &"x".repeat(255),
        ] {
            let temp = store.temp_name(name);
            assert!(temp.starts_with('.'), "{temp}");
            assert!(temp.len() <= 255, "{temp}");
            assert!(temp.contains(TEMP_INFIX));
            for suffix in [".fidx", ".didx", ".blob"] {
                assert!(!temp.ends_with(suffix), "{temp}");
            }
            assert_ne!(temp, ".protected");
            assert!(check_component(&temp).is_ok());
        }
        assert_ne!(store.temp_name("a"), store.temp_name("a"));
    }

    #[test]
    fn empty_create_only_files_are_made_in_place() {
        for level in [SyncLevel::None, SyncLevel::File, SyncLevel::Filesystem] {
            let dir = tempfile::tempdir().unwrap();
            let store = LocalBackend::open(dir.path(), level).unwrap();
            // A missing folder takes the long way, which makes it.
            let marker: BackendPath = "vm/100/.protected".parse().unwrap();
            store.write(&marker, b"", WriteMode::CreateOnly).unwrap();
            assert!(matches!(
                store.write(&marker, b"", WriteMode::CreateOnly),
                Err(Error::AlreadyExists { .. })
            ));
            let other: BackendPath = "vm/100/other".parse().unwrap();
            store.write(&other, b"", WriteMode::CreateOnly).unwrap();
            let mut names: Vec<_> = std::fs::read_dir(dir.path().join("vm/100"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, [".protected", "other"], "{level}");
            // A link on the way is refused, never followed.
            std::os::unix::fs::symlink(dir.path().join("vm"), dir.path().join("link")).unwrap();
            let through: BackendPath = "link/100/x".parse().unwrap();
            assert!(matches!(
                store.write(&through, b"", WriteMode::CreateOnly),
                Err(Error::RefusedPath { .. })
            ));
            assert!(!dir.path().join("vm/100/x").exists());
        }
    }

    #[test]
    fn exists_and_read_never_follow_or_open_what_is_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBackend::open(dir.path(), SyncLevel::None).unwrap();
        let file: BackendPath = "a/b".parse().unwrap();
        store.write(&file, b"bytes", WriteMode::CreateOnly).unwrap();
        assert!(store.exists(&file).unwrap());
        assert!(!store.exists(&"a/missing".parse().unwrap()).unwrap());
        assert!(!store.exists(&"missing/b".parse().unwrap()).unwrap());
        assert_eq!(store.read(&file).unwrap().data, b"bytes");
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("link")).unwrap();
        let through: BackendPath = "link/b".parse().unwrap();
        assert!(matches!(
            store.exists(&through),
            Err(Error::RefusedPath { .. })
        ));
        assert!(matches!(
            store.read(&through),
            Err(Error::RefusedPath { .. })
        ));
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("a/fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let fifo: BackendPath = "a/fifo".parse().unwrap();
        assert!(store.exists(&fifo).unwrap());
        assert!(matches!(store.read(&fifo), Err(Error::RefusedPath { .. })));
    }

    #[test]
    fn no_temp_file_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBackend::open(dir.path(), SyncLevel::Filesystem).unwrap();
        let file: BackendPath = "a/b".parse().unwrap();
        let v = store.write(&file, b"1", WriteMode::CreateOnly).unwrap();
        store.write(&file, b"2", WriteMode::CreateOnly).unwrap_err();
        store
            .write(&file, b"3", WriteMode::Update(Version::of_content(b"x")))
            .unwrap_err();
        store.write(&file, b"4", WriteMode::Update(v)).unwrap();
        store.write(&file, b"5", WriteMode::Replace).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["b"]);
        assert_eq!(std::fs::read(dir.path().join("a/b")).unwrap(), b"5");
    }
}
