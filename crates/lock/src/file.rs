//! The flock primitive under both PBS schemes: open (creating if needed), lock with a timeout,
//! double-stat, release on drop, remove while held.
//!
//! Why the double-stat: a lock file may be unlinked by its exclusive holder (when the locked object
//! is destroyed). A process that opened the file just before the unlink and was waiting for the
//! flock then locks an inode that no longer has a name, while a newcomer creates a fresh file at the
//! path and locks that: two "exclusive" holders. Checking after the flock that the path still names
//! the locked inode, and otherwise starting over, closes that hole. It is only sound if removers
//! unlink *while holding* the exclusive flock, which [`HeldFile::remove`] does.

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::{Error, ExclusiveGuard, HeldLock, LockGuard, LockMode, Result, holders_of};

/// Permissions of a new lock file, as PBS creates them (user and group may read and write).
pub const LOCK_FILE_MODE: u32 = 0o660;

/// How often a lock is retried after the double-stat check found it replaced, before giving up
/// with [`Error::Replaced`] (a caller with a timeout keeps retrying until its deadline instead). A
/// replacement means the previous holder released, so one retry normally suffices; the bound only
/// stops a livelock against a process that keeps unlinking.
const MAX_REPLACED_RETRIES: u32 = 16;

/// First sleep between tries of a busy lock. Doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_micros(200);
/// Longest sleep between tries: bounds how late a waiter notices a release (and how often an idle
/// waiter wakes up: at most 50 times a second).
const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// Owner (user and group id) given to lock files and lock folders this process creates.
///
/// PBS runs as the `backup` user (uid and gid 34 on Debian): a process running as root that creates
/// lock files PBS must also open should hand them to that user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileOwner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl FileOwner {
    /// The owner of the file or folder at `path` (links are not followed): on a PBS host, the
    /// datastore's `.chunks` folder belongs to PBS's `backup` user, which must be able to use
    /// what keepsake creates.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `path` cannot be looked at.
    pub fn of(path: impl AsRef<Path>) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let path = path.as_ref();
        let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }

    /// Gives `fd` (a file or folder this process just created) this owner.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming `path` when the change is refused.
    pub fn apply(&self, fd: impl rustix::fd::AsFd, path: &Path) -> Result<()> {
        rustix::fs::fchown(
            fd,
            Some(rustix::process::Uid::from_raw(self.uid)),
            Some(rustix::process::Gid::from_raw(self.gid)),
        )
        .map_err(|e| Error::io(path, e.into()))
    }
}

/// A lock file at a path of the caller's choosing, with PBS's semantics (see the crate docs): for
/// locks outside the group/snapshot/manifest scheme, such as a datastore-wide journal lock.
///
/// ```
/// use std::time::Duration;
/// use keepsake_lock::{LockFile, LockMode};
///
/// let dir = tempfile::tempdir()?;
/// let file = LockFile::new(dir.path().join("sub/journal.lck"));
/// let guard = file.lock(LockMode::Exclusive, Duration::ZERO)?;
/// assert!(file.lock(LockMode::Shared, Duration::ZERO).unwrap_err().is_busy());
/// drop(guard);
/// file.lock(LockMode::Shared, Duration::ZERO)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct LockFile {
    path: PathBuf,
    owner: Option<FileOwner>,
}

impl LockFile {
    /// The lock file at `path`; nothing is touched until it is locked.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            owner: None,
        }
    }

    /// Creates the file and missing folders owned by `owner` (needs the privilege to chown).
    pub fn owner(mut self, owner: FileOwner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the file (and its folders) if missing, mode 0660, and locks it in `mode`, waiting at
    /// most `timeout` (zero: a single try), with the double-stat check.
    ///
    /// # Errors
    ///
    /// See [`Locker::lock`](crate::Locker::lock).
    pub fn lock(&self, mode: LockMode, timeout: Duration) -> Result<LockGuard> {
        let held = acquire(
            self.path.clone(),
            LockKind::File { owner: self.owner },
            mode,
            timeout,
            |_| {},
        )?;
        Ok(LockGuard::new(Box::new(held)))
    }

    /// [`lock`](Self::lock) in exclusive mode, giving a guard that can remove the file.
    ///
    /// # Errors
    ///
    /// See [`Locker::lock`](crate::Locker::lock).
    pub fn lock_exclusive(&self, timeout: Duration) -> Result<ExclusiveGuard> {
        self.lock(LockMode::Exclusive, timeout)
            .map(|guard| guard.into_exclusive().expect("locked exclusively"))
    }
}

/// Permissions of a folder created for lock files. PBS makes these folders with `create_dir_all`
/// (0777 less the umask: 0755 under the usual umask 022) and gives no mode of its own; keepsake sets
/// 0755 explicitly, so that a narrower umask cannot lock out the other party. Only the owner may add
/// lock files, which is why the folders get the configured [`FileOwner`] too.
pub const LOCK_DIR_MODE: u32 = 0o755;

/// What is being flocked.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LockKind {
    /// A lock file, created (with its folders) when missing.
    File { owner: Option<FileOwner> },
    /// An existing directory (PBS 3 group and snapshot locks), never created, never followed
    /// through a symlink.
    Dir,
    /// An existing regular lock file, never created and never followed through a symlink: what
    /// the lock-folder sweep takes, so that it cannot create what it found gone, nor lock (and
    /// later unlink) anything a link points to.
    Existing,
}

/// A held flock. The lock belongs to the open file description; drop unlocks it, then closes.
pub(crate) struct HeldFile {
    fd: OwnedFd,
    path: PathBuf,
    mode: LockMode,
    kind: LockKind,
}

impl fmt::Debug for HeldFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldFile")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Drop for HeldFile {
    fn drop(&mut self) {
        unlock(&self.fd);
    }
}

/// Releases the flock explicitly instead of relying on the close: a child forked by another thread
/// shares the open file description until it execs (`O_CLOEXEC` only acts then), and as long as any
/// copy is open, a close would leave the lock held.
fn unlock(fd: &OwnedFd) {
    // Unlocking an open flocked descriptor cannot fail in a way worth reporting on drop.
    let _ = rustix::fs::flock(fd, FlockOperation::Unlock);
}

impl HeldLock for HeldFile {
    fn mode(&self) -> LockMode {
        self.mode
    }

    fn resource(&self) -> &Path {
        &self.path
    }

    fn remove(self: Box<Self>) -> Result<()> {
        debug_assert_eq!(self.mode, LockMode::Exclusive);
        if let LockKind::Dir = self.kind {
            // The directory is the group or snapshot itself: it belongs to the datastore.
            return Ok(());
        }
        // Unlink first and close (release) after: a waiter that gets the flock on the old inode then
        // sees the name gone in its double-stat check and starts over on a fresh file. The other
        // order would let it lock the old file *and* pass the check. The name is only ours to
        // unlink if it still leads to the locked inode.
        let result = match same_file(&self.fd, &self.path) {
            Ok(true) => match rustix::fs::unlink(&self.path) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(Error::io(&self.path, e.into())),
            },
            Ok(false) => Ok(()),
            Err(e) => Err(Error::io(&self.path, e)),
        };
        drop(self);
        result
    }
}

/// How long a caller is willing to wait for a lock: the timeout it asked for and the deadline that
/// follows from it. Locks taken in several parts share one, so that the parts together take no
/// longer than the timeout, and a part that runs out reports the caller's timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wait {
    timeout: Duration,
    until: Option<Instant>,
}

impl Wait {
    /// A wait of `timeout` starting now.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            until: deadline(timeout),
        }
    }
}

/// The end of the wait; `None` for a single try (no clock read on the fast path) and for timeouts
/// too large to represent, which wait forever.
fn deadline(timeout: Duration) -> Option<Instant> {
    if timeout.is_zero() {
        None
    } else {
        Instant::now().checked_add(timeout)
    }
}

/// Opens, flocks and double-stats `path`, waiting at most `timeout`. `after_flock` runs between
/// the flock and the check (tests use it to replace the file at the worst moment); it is a no-op
/// otherwise.
pub(crate) fn acquire(
    path: PathBuf,
    kind: LockKind,
    mode: LockMode,
    timeout: Duration,
    after_flock: impl FnMut(&Path),
) -> Result<HeldFile> {
    acquire_within(path, kind, mode, Wait::new(timeout), after_flock)
}

/// [`acquire`] within a wait that may have started earlier.
pub(crate) fn acquire_within(
    path: PathBuf,
    kind: LockKind,
    mode: LockMode,
    wait: Wait,
    mut after_flock: impl FnMut(&Path),
) -> Result<HeldFile> {
    let Wait { timeout, until } = wait;
    let mut backoff = Backoff::new();
    let mut replaced = 0;
    loop {
        let fd = open(&path, kind)?;
        flock_until(&fd, &path, mode, timeout, until, &mut backoff)?;
        after_flock(&path);
        match same_file(&fd, &path) {
            Ok(true) => {
                return Ok(HeldFile {
                    fd,
                    path,
                    mode,
                    kind,
                });
            }
            Ok(false) => {
                unlock(&fd);
                drop(fd);
                replaced += 1;
                // Each replacement means another holder released and removed the file: progress,
                // not a livelock of ours. A caller that waits keeps trying until its deadline (under
                // heavy contention many removals can come in a row); a single try, or a wait
                // without a deadline, gives up after a bounded number of replacements.
                let patient = !timeout.is_zero() && until.is_some_and(|u| Instant::now() < u);
                if replaced > MAX_REPLACED_RETRIES && !patient {
                    return Err(Error::Replaced { path });
                }
            }
            Err(e) => {
                unlock(&fd);
                return Err(Error::io(path, e));
            }
        }
    }
}

/// Non-blocking flock tries with sleeps in between until `until`. A blocking flock cannot be
/// interrupted without signals, which a library must not own; polling with a bounded backoff
/// costs at most a few wake-ups a second while waiting.
fn flock_until(
    fd: &OwnedFd,
    path: &Path,
    mode: LockMode,
    timeout: Duration,
    until: Option<Instant>,
    backoff: &mut Backoff,
) -> Result<()> {
    let operation = match mode {
        LockMode::Shared => FlockOperation::NonBlockingLockShared,
        LockMode::Exclusive => FlockOperation::NonBlockingLockExclusive,
    };
    loop {
        match rustix::fs::flock(fd, operation) {
            Ok(()) => return Ok(()),
            Err(Errno::WOULDBLOCK) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(Error::io(path, e.into())),
        }
        if timeout.is_zero() {
            return Err(Error::WouldBlock {
                path: path.to_owned(),
                mode,
                holders: holders_of(fd),
            });
        }
        let remaining = match until {
            Some(until) => until.saturating_duration_since(Instant::now()),
            None => MAX_BACKOFF,
        };
        if remaining.is_zero() {
            return Err(Error::Timeout {
                path: path.to_owned(),
                mode,
                timeout,
                holders: holders_of(fd),
            });
        }
        // Sleeping at most the remaining time makes the last try land on the deadline.
        std::thread::sleep(backoff.next().min(remaining));
    }
}

/// Bounded exponential backoff with jitter, so that waiters started together do not retry in
/// lockstep.
struct Backoff {
    next: Duration,
    rng: u64,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: FIRST_BACKOFF,
            // Seeded lazily: the uncontended path never pays for it.
            rng: 0,
        }
    }

    fn next(&mut self) -> Duration {
        if self.rng == 0 {
            self.rng = RandomState::new().build_hasher().finish() | 1;
        }
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let step = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        // Somewhere in [step/2, step].
        let half = step / 2;
        half + Duration::from_nanos(self.rng % (half.as_nanos() as u64 + 1))
    }
}

/// Whether `path` still names the file open as `fd` (same device and inode); `false` if the path is
/// gone.
fn same_file(fd: &OwnedFd, path: &Path) -> io::Result<bool> {
    let locked = rustix::fs::fstat(fd)?;
    match rustix::fs::stat(path) {
        Ok(named) => Ok(named.st_dev == locked.st_dev && named.st_ino == locked.st_ino),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn open(path: &Path, kind: LockKind) -> Result<OwnedFd> {
    match kind {
        // A symlink where a group or snapshot folder should be is an error, not a lock on
        // whatever it points to.
        LockKind::Dir => rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(path, e.into())),
        LockKind::File { owner } => open_or_create(path, owner),
        LockKind::Existing => open_existing(path),
    }
}

/// Opens an existing regular lock file without following a symlink, and without blocking on
/// anything that is not a regular file (a FIFO swapped in since the caller looked).
fn open_existing(path: &Path) -> Result<OwnedFd> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| Error::io(path, e.into()))?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| Error::io(path, e.into()))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Error::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    Ok(fd)
}

/// Opens the lock file `O_RDWR|O_CLOEXEC|O_APPEND`, creating it (and its folders) when missing.
///
/// The common case (the file exists) is a single `open`. Creation uses `O_EXCL` so that only the
/// creator sets the mode (explicitly, so the umask cannot narrow 0660) and the owner.
fn open_or_create(path: &Path, owner: Option<FileOwner>) -> Result<OwnedFd> {
    let flags = OFlags::RDWR | OFlags::CLOEXEC | OFlags::APPEND;
    // Each round trip ends in success unless another process removes what we just saw: a bound
    // turns a pathological race into an error instead of a hang.
    let mut last = Errno::NOENT;
    for _ in 0..64 {
        match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(Error::io(path, e.into())),
        }
        match rustix::fs::open(
            path,
            flags | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(LOCK_FILE_MODE),
        ) {
            Ok(fd) => return finish_create(path, fd, owner),
            Err(Errno::EXIST) => last = Errno::EXIST,
            Err(Errno::NOENT) => {
                let parent = path.parent().unwrap_or(Path::new("/"));
                create_dirs(parent, owner).map_err(|e| Error::io(parent, e))?;
                last = Errno::NOENT;
            }
            Err(e) => return Err(Error::io(path, e.into())),
        }
    }
    Err(Error::io(path, last.into()))
}

fn finish_create(path: &Path, fd: OwnedFd, owner: Option<FileOwner>) -> Result<OwnedFd> {
    let result = rustix::fs::fchmod(&fd, Mode::from_raw_mode(LOCK_FILE_MODE))
        .map_err(io::Error::from)
        .and_then(|()| match owner {
            Some(owner) => std::os::unix::fs::fchown(&fd, Some(owner.uid), Some(owner.gid)),
            None => Ok(()),
        });
    match result {
        Ok(()) => Ok(fd),
        Err(e) => {
            // A file with the wrong owner would lock out the other party for good; anyone who
            // opened it meanwhile fails the double-stat check and retries on a fresh one.
            let _ = rustix::fs::unlink(path);
            Err(Error::io(path, e))
        }
    }
}

/// `mkdir -p`, giving every folder it creates mode [`LOCK_DIR_MODE`] and `owner`.
///
/// A folder removed again right after it was created (an empty lock folder swept meanwhile) is not
/// an error here: the caller's open fails with `ENOENT` and comes back, a bounded number of times.
fn create_dirs(dir: &Path, owner: Option<FileOwner>) -> io::Result<()> {
    let mode = Mode::from_raw_mode(LOCK_DIR_MODE);
    match rustix::fs::mkdir(dir, mode) {
        Ok(()) => {}
        Err(Errno::EXIST) => return Ok(()),
        Err(Errno::NOENT) => {
            let parent = dir.parent().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "no existing ancestor folder")
            })?;
            create_dirs(parent, owner)?;
            match rustix::fs::mkdir(dir, mode) {
                Ok(()) => {}
                Err(Errno::EXIST | Errno::NOENT) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    }
    // Through a descriptor of the folder just made, so that mode and owner land on it and not on
    // whatever a symlink swapped in at the path points to.
    let fd = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // The umask may have narrowed the mode given to mkdir.
    rustix::fs::fchmod(&fd, mode)?;
    if let Some(owner) = owner {
        std::os::unix::fs::fchown(&fd, Some(owner.uid), Some(owner.gid))?;
    }
    Ok(())
}

/// Builds `<base>/<rest>` as a path in one allocation.
pub(crate) fn join(base: &Path, rest: &str) -> PathBuf {
    let base = base.as_os_str().as_encoded_bytes();
    let mut bytes = Vec::with_capacity(base.len() + 1 + rest.len());
    bytes.extend_from_slice(base);
    if !bytes.ends_with(b"/") {
        bytes.push(b'/');
    }
    bytes.extend_from_slice(rest.as_bytes());
    PathBuf::from(OsString::from_vec(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn exclusive(path: &Path) -> Result<HeldFile> {
        acquire(
            path.to_owned(),
            LockKind::File { owner: None },
            LockMode::Exclusive,
            Duration::ZERO,
            |_| {},
        )
    }

    #[test]
    fn creates_folders_and_file_with_mode_0660_despite_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c/lock");
        let held = exclusive(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, LOCK_FILE_MODE);
        let flags = rustix::fs::fcntl_getfl(&held.fd).unwrap();
        assert!(flags.contains(OFlags::RDWR | OFlags::APPEND), "{flags:?}");
        assert!(
            rustix::io::fcntl_getfd(&held.fd)
                .unwrap()
                .contains(rustix::io::FdFlags::CLOEXEC)
        );
    }

    #[test]
    fn owner_is_applied_to_new_file_and_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x/y/lock");
        // As root, foreign ids prove the chown; otherwise only our own ids may be given away to.
        let owner = if rustix::process::getuid().is_root() {
            FileOwner {
                uid: 4242,
                gid: 4343,
            }
        } else {
            FileOwner {
                uid: rustix::process::getuid().as_raw(),
                gid: rustix::process::getgid().as_raw(),
            }
        };
        let guard = LockFile::new(&path)
            .owner(owner)
            .lock_exclusive(Duration::ZERO)
            .unwrap();
        drop(guard);
        for p in [dir.path().join("x"), dir.path().join("x/y"), path] {
            let meta = std::fs::metadata(&p).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (owner.uid, owner.gid), "{p:?}");
        }
    }

    #[test]
    fn replaced_file_is_retried_then_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        // Replace once: the retry lands on the new file, which then is the one locked.
        let mut rounds = 0;
        let held = acquire(
            path.clone(),
            LockKind::File { owner: None },
            LockMode::Exclusive,
            Duration::ZERO,
            |p| {
                rounds += 1;
                if rounds == 1 {
                    std::fs::remove_file(p).unwrap();
                    std::fs::write(p, b"").unwrap();
                }
            },
        )
        .unwrap();
        assert_eq!(rounds, 2);
        assert!(same_file(&held.fd, &path).unwrap());
        assert!(exclusive(&path).unwrap_err().is_busy());
        drop(held);

        // Replace every time: bounded retries, then a typed error.
        let mut rounds = 0;
        let err = acquire(
            path.clone(),
            LockKind::File { owner: None },
            LockMode::Shared,
            Duration::ZERO,
            |p| {
                rounds += 1;
                std::fs::remove_file(p).unwrap();
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::Replaced { path: ref p } if *p == path),
            "{err:?}"
        );
        assert_eq!(rounds, MAX_REPLACED_RETRIES + 1);

        // A caller with a timeout outlasts more replacements than that, until its deadline.
        let mut rounds = 0;
        let held = acquire(
            path.clone(),
            LockKind::File { owner: None },
            LockMode::Shared,
            Duration::from_secs(10),
            |p| {
                rounds += 1;
                if rounds <= MAX_REPLACED_RETRIES * 2 {
                    std::fs::remove_file(p).unwrap();
                }
            },
        )
        .unwrap();
        assert_eq!(rounds, MAX_REPLACED_RETRIES * 2 + 1);
        assert!(same_file(&held.fd, &path).unwrap());
        drop(held);

        // ... but not past it.
        let started = Instant::now();
        let err = acquire(
            path.clone(),
            LockKind::File { owner: None },
            LockMode::Shared,
            Duration::from_millis(50),
            |p| {
                let _ = std::fs::remove_file(p);
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::Replaced { .. }), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn remove_unlinks_only_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = Box::new(exclusive(&path).unwrap());
        held.remove().unwrap();
        assert!(!path.exists());

        // Someone else's file at the path (not the one we locked) is left alone.
        let held = Box::new(exclusive(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"other").unwrap();
        held.remove().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"other");
    }

    #[test]
    fn dir_locks_need_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = acquire(
            missing.clone(),
            LockKind::Dir,
            LockMode::Shared,
            Duration::ZERO,
            |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::Io { path, source } if *path == missing && source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(!missing.exists());
        let held = acquire(
            dir.path().to_owned(),
            LockKind::Dir,
            LockMode::Exclusive,
            Duration::ZERO,
            |_| {},
        )
        .unwrap();
        // Removing a directory lock only releases it.
        Box::new(held).remove().unwrap();
        assert!(dir.path().is_dir());
    }

    #[test]
    fn a_file_where_a_folder_should_be_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let err = exclusive(&dir.path().join("file/lock")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let mut backoff = Backoff::new();
        let steps: Vec<Duration> = (0..20).map(|_| backoff.next()).collect();
        assert!(steps[0] >= FIRST_BACKOFF / 2 && steps[0] <= FIRST_BACKOFF);
        assert!(steps.iter().all(|s| *s <= MAX_BACKOFF));
        assert!(steps[19] >= MAX_BACKOFF / 2);
    }

    #[test]
    fn join_builds_one_path() {
        assert_eq!(
            join(Path::new("/run/x"), "a:b/vm-1"),
            Path::new("/run/x/a:b/vm-1")
        );
        assert_eq!(join(Path::new("/run/x/"), "vm-1"), Path::new("/run/x/vm-1"));
    }
}
