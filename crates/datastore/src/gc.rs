//! Garbage collection as PBS does it (spec 2.8, 6.3, 10.3), so that keepsake and PBS can take
//! turns on one datastore: the exclusive process lock on `.lock`, phase 1 marks every chunk an
//! index references (atime = now), phase 2 removes the chunks whose atime is older than the
//! cutoff, and `.gc-status` records the result in PBS's format.
//!
//! Faster than PBS in two ways that change nothing on disk: indexes are read in parallel and each
//! distinct chunk is touched once per run (a set of digests, 32 bytes each), and the prefix
//! folders of `.chunks` are swept in parallel.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use keepsake_backend::{Backend, ChunkDigest, WriteMode};
use keepsake_manifest::index::{ChunkIndex, IndexFile};
use rustix::fs::{
    AtFlags, CWD, Dir, FileType, Mode, OFlags, Timespec, Timestamps, statat, unlinkat, utimensat,
};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::chunks::{Encryption, Touch};
use crate::error::{Error, GcRefusal, Result};
use crate::process_lock::ExclusiveProcessGuard;
use crate::store::{CHUNK_DIR_NAME, DataStore, path};
use crate::writer::epoch_now;

/// Name of the file at the datastore root where GC records its last result (PBS's).
pub const GC_STATUS_FILE_NAME: &str = ".gc-status";

/// How much older than phase 1's start an unreferenced chunk must be to be removed: PBS 4's
/// default `gc-atime-cutoff` (24 h 5 min; the 5 minutes cover relatime's and clocks' slack).
pub const DEFAULT_ATIME_CUTOFF_SECS: i64 = 24 * 3600 + 300;

/// How far below the oldest writer's start the cutoff goes (PBS's 300 s).
const WRITER_SLACK_SECS: i64 = 300;

/// Whether GC removes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GcMode {
    /// Mark, sweep and record `.gc-status` (the default).
    #[default]
    Run,
    /// Change nothing: no lock, no mark, no removal, no `.gc-status`. The chunks that a run would
    /// remove (unreferenced, atime older than the cutoff) are counted as removed.
    DryRun,
}

/// Where GC is (for [`GcOptions::on_phase`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GcPhase {
    /// The lock is taken and the atime check passed; marking starts.
    Mark,
    /// S3 only: the cache's indexes are marked; the bucket's indexes are read and marked.
    MarkBucket,
    /// Marking is done; the cutoff is computed next and the sweep starts (on S3: of the
    /// bucket's chunk objects).
    Sweep,
    /// S3 only: the bucket is swept; the cache's copies and markers are swept.
    SweepCache,
}

/// Called at each [`GcPhase`] (from the thread that runs GC).
pub type PhaseHook = Arc<dyn Fn(GcPhase) + Send + Sync>;

/// How far a phase is ([`GcOptions::on_progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcProgress {
    /// The phase.
    pub phase: GcPhase,
    /// Units done in this phase: indexes read (marking), prefix folders swept (a local sweep),
    /// objects listed (a bucket sweep).
    pub done: u64,
    /// The units known so far, when known (marking: the indexes found; it grows when a walk
    /// finds more; a local sweep: the prefix folders). `None` for a bucket sweep, whose size
    /// the listing only tells at its end.
    pub total: Option<u64>,
}

/// Called with [`GcProgress`], from any of GC's threads, often (every index, prefix folder or
/// listing page): it should be cheap, as a progress bar's update is, and must not write to the
/// datastore (GC may hold the chunk locks that writers of this process wait for).
pub type ProgressHook = Arc<dyn Fn(GcProgress) + Send + Sync>;

/// How [`DataStore::garbage_collect`] runs.
#[derive(Clone, Default)]
pub struct GcOptions {
    pub(crate) mode: GcMode,
    threads: Option<usize>,
    pub(crate) upid: Option<String>,
    on_phase: Option<PhaseHook>,
    on_progress: Option<ProgressHook>,
    cutoff_secs: Option<i64>,
}

impl fmt::Debug for GcOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcOptions")
            .field("mode", &self.mode)
            .field("threads", &self.threads)
            .field("upid", &self.upid)
            .field("cutoff_secs", &self.cutoff_secs)
            .finish_non_exhaustive()
    }
}

impl GcOptions {
    /// Run or dry run.
    #[must_use]
    pub fn mode(mut self, mode: GcMode) -> Self {
        self.mode = mode;
        self
    }

    /// Threads reading indexes and sweeping prefix folders (default: the machine's parallelism).
    #[must_use]
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads.max(1));
        self
    }

    /// The task id written as `upid` into `.gc-status` (PBS writes its task's UPID there).
    #[must_use]
    pub fn upid(mut self, upid: impl Into<String>) -> Self {
        self.upid = Some(upid.into());
        self
    }

    /// How much older than phase 1's start an unreferenced chunk must be to be removed (PBS's
    /// `gc-atime-cutoff` tuning option; default [`DEFAULT_ATIME_CUTOFF_SECS`]). keepsake's own
    /// decisions do not depend on it being long (a marked chunk is kept whatever its atime, and
    /// writers of this process lower it), but PBS writers that relied on a chunk before the GC
    /// started, and on S3 uploads in flight, are protected only by it: keep PBS's default
    /// outside tests.
    #[must_use]
    pub fn atime_cutoff_secs(mut self, secs: u64) -> Self {
        self.cutoff_secs = Some(i64::try_from(secs).unwrap_or(i64::MAX / 2));
        self
    }

    /// Called as each phase advances (see [`GcProgress`]): for progress bars.
    #[must_use]
    pub fn on_progress(mut self, hook: ProgressHook) -> Self {
        self.on_progress = Some(hook);
        self
    }

    pub(crate) fn progress(&self, phase: GcPhase, done: u64, total: Option<u64>) {
        if let Some(hook) = &self.on_progress {
            hook(GcProgress { phase, done, total });
        }
    }

    /// The cutoff for a phase 1 that started at `started`, lowered to 5 minutes before the
    /// start of the oldest writer of this process that ran during the GC (`guard`'s).
    pub(crate) fn cutoff(&self, started: i64, guard: Option<&ExclusiveProcessGuard>) -> i64 {
        let cutoff = started.saturating_sub(self.cutoff_secs.unwrap_or(DEFAULT_ATIME_CUTOFF_SECS));
        match guard.and_then(ExclusiveProcessGuard::oldest_writer) {
            Some(oldest) => cutoff.min(oldest - WRITER_SLACK_SECS),
            None => cutoff,
        }
    }

    /// Called when GC enters each phase: for progress display, and for tests that act between
    /// phases (a backup started during marking).
    #[must_use]
    pub fn on_phase(mut self, hook: PhaseHook) -> Self {
        self.on_phase = Some(hook);
        self
    }

    pub(crate) fn thread_count(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    pub(crate) fn enter(&self, phase: GcPhase) {
        if let Some(hook) = &self.on_phase {
            hook(phase);
        }
    }
}

/// PBS's `GarbageCollectionStatus`, as `.gc-status` holds it (compact JSON, kebab-case keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct GcStatus {
    /// The task that ran GC (PBS: its UPID), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upid: Option<String>,
    /// Index files read in phase 1.
    #[serde(default)]
    pub index_file_count: u64,
    /// The bytes those indexes describe (the archives' sizes).
    #[serde(default)]
    pub index_data_bytes: u64,
    /// Bytes of the chunks kept (bad chunks included).
    #[serde(default)]
    pub disk_bytes: u64,
    /// Chunks kept (bad chunks and pending ones not included).
    #[serde(default)]
    pub disk_chunks: u64,
    /// Bytes removed.
    #[serde(default)]
    pub removed_bytes: u64,
    /// Chunks removed.
    #[serde(default)]
    pub removed_chunks: u64,
    /// Bytes of the unreferenced chunks kept because they are younger than the cutoff.
    #[serde(default)]
    pub pending_bytes: u64,
    /// Unreferenced chunks kept because they are younger than the cutoff.
    #[serde(default)]
    pub pending_chunks: u64,
    /// Bad chunks (`<digest>.<n>.bad`) removed.
    #[serde(default)]
    pub removed_bad: u64,
    /// Bad chunks kept.
    #[serde(default)]
    pub still_bad: u64,
}

/// What [`DataStore::garbage_collect`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Run or dry run.
    pub mode: GcMode,
    /// The counts, as written to `.gc-status` (on a run).
    pub status: GcStatus,
    /// Phase 1's start (epoch seconds).
    pub started: i64,
    /// Chunks with an atime before this (epoch seconds) were removable.
    pub cutoff: i64,
    /// Distinct chunks referenced by the indexes.
    pub referenced_chunks: u64,
    /// Referenced chunks that are not in the chunk store (their `.bad` copies, if any, are kept).
    /// On S3: referenced chunks the bucket's listing did not show.
    pub missing_chunks: u64,
    /// On S3 ([`DataStore::garbage_collect_s3`]): what the bucket side did, with its requests.
    #[cfg(feature = "s3")]
    pub bucket: Option<crate::gc_s3::BucketGc>,
}

impl GcReport {
    #[cfg(feature = "s3")]
    pub(crate) fn new(
        mode: GcMode,
        status: GcStatus,
        (started, cutoff): (i64, i64),
        (referenced_chunks, missing_chunks): (u64, u64),
        bucket: Option<crate::gc_s3::BucketGc>,
    ) -> Self {
        Self {
            mode,
            status,
            started,
            cutoff,
            referenced_chunks,
            missing_chunks,
            bucket,
        }
    }
}

impl DataStore {
    /// Garbage collection, as PBS's (see the module docs): under the exclusive process lock on
    /// `.lock`, after checking that the filesystem takes atime updates, every chunk referenced by
    /// an index anywhere below the datastore (every namespace; hidden folders skipped, as PBS
    /// does) gets its atime set to now; then every chunk of `.chunks` whose atime is older than
    /// the cutoff and that no index references is removed. The cutoff is phase 1's start less
    /// 24 h 5 min, lowered to 5 minutes before the start of the oldest backup writer of this
    /// process that ran during GC (writers of other processes exclude GC altogether). A `.bad`
    /// chunk ages out like any other, but is kept (touched) while an index references its digest
    /// and no good copy exists. Indexes are walked again until a walk finds none not read yet,
    /// so that a snapshot moved during the walk is still marked.
    ///
    /// Killed or failing at any point, it never removes a referenced chunk: only phase 2 removes,
    /// and only chunks that phase 1 left unmarked.
    ///
    /// ```
    /// use keepsake_datastore::{DataStore, GcMode, GcOptions};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DataStore::builder("store1", dir.path().join("store1"))
    ///     .lock_root(dir.path().join("locks"))
    ///     .chunk_prefix_dirs(false)
    ///     .create()?;
    /// let new = store.insert_chunk(b"not referenced, but new", keepsake_datastore::Encryption::None)?;
    /// let report = store.garbage_collect(&GcOptions::default())?;
    /// // Younger than the cutoff: kept (a day later it would be pending, two days later removed).
    /// assert_eq!(report.status.removed_chunks, 0);
    /// assert!(store.chunk_exists(&new.digest)?);
    /// assert_eq!(store.gc_status()?, Some(report.status));
    ///
    /// let dry = store.garbage_collect(&GcOptions::default().mode(GcMode::DryRun))?;
    /// assert_eq!(dry.status.removed_chunks, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ProcessLocked`] if another process holds `.lock` (a backup runs there: its pid
    /// is named where the system tells it) or a GC runs in this process;
    /// [`Error::GcRefused`] for a store without a local folder, in object storage, or on a
    /// filesystem that ignores atime updates; [`Error::ReadOnly`] for a run on a read-only store;
    /// [`Error::Corrupt`] for an index that cannot be read (nothing is removed then);
    /// [`Error::Io`].
    pub fn garbage_collect(&self, options: &GcOptions) -> Result<GcReport> {
        let refused = |refusal| Error::GcRefused {
            store: self.name().to_owned(),
            refusal,
        };
        let Some(local) = self.backend().host_local() else {
            return Err(refused(GcRefusal::NoLocalFolder));
        };
        if self
            .backend()
            .bucket_state()
            .map_err(|e| Error::backend("", e))?
            .is_some()
        {
            return Err(refused(GcRefusal::ObjectStorage));
        }
        let root = local.root().to_path_buf();
        let started = epoch_now();
        let guard = self.gc_guard(&root, options.mode, started)?;
        options.enter(GcPhase::Mark);
        let marked = DigestSet::new();
        let mut status = GcStatus {
            upid: options.upid.clone(),
            ..GcStatus::default()
        };
        let missing = self.mark(&root, options, &marked, &mut status)?;

        options.enter(GcPhase::Sweep);
        let cutoff = options.cutoff(started, guard.as_ref());
        let chunks = ChunkDir::open(&root)?;
        let sweep = Sweep {
            chunks: &chunks,
            marked: &marked,
            guard: guard.as_ref(),
            cutoff,
            started,
            mode: options.mode,
            progress: (options, GcPhase::Sweep),
        };
        sweep.run(options.thread_count(), &mut status)?;

        if options.mode == GcMode::Run {
            // As PBS: the status is informational, a failed write does not fail the GC.
            if let Ok(json) = serde_json::to_vec(&status) {
                let _ = local.write(&path(GC_STATUS_FILE_NAME)?, &json, WriteMode::Replace);
            }
        }
        drop(guard);
        Ok(GcReport {
            mode: options.mode,
            status,
            started,
            cutoff,
            referenced_chunks: marked.len(),
            missing_chunks: missing,
            #[cfg(feature = "s3")]
            bucket: None,
        })
    }

    /// What a run takes before marking (none for a dry run): a writable store, its `.lock`
    /// (never made here: a new one would not exclude a writer still holding a removed one),
    /// PBS's process lock exclusively, and atime updates that work.
    pub(crate) fn gc_guard(
        &self,
        root: &Path,
        mode: GcMode,
        started: i64,
    ) -> Result<Option<ExclusiveProcessGuard>> {
        if mode == GcMode::DryRun {
            return Ok(None);
        }
        let refused = |refusal| Error::GcRefused {
            store: self.name().to_owned(),
            refusal,
        };
        self.require_writable("garbage collection")?;
        if std::fs::symlink_metadata(root.join(crate::store::LOCK_FILE_NAME)).is_err() {
            return Err(refused(GcRefusal::NoLockFile));
        }
        let lock = self
            .process_lock()?
            .ok_or_else(|| refused(GcRefusal::NoLocalFolder))?;
        // The builder's lock wait covers this lock too (PBS's GC fails at once): a backup that
        // ends within the wait lets the GC start.
        // A wait too long to represent (`Duration::MAX`) waits forever, as the other locks do.
        let wait = self.lock_wait();
        let deadline = std::time::Instant::now().checked_add(wait);
        let guard = loop {
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(std::time::Instant::now()),
                None => wait,
            };
            match lock.exclusive() {
                Err(Error::ProcessLocked { .. }) if !left.is_zero() => {
                    std::thread::sleep(left.min(std::time::Duration::from_millis(100)));
                }
                taken => break taken?,
            }
        };
        self.check_atime_updates(started)?;
        Ok(Some(guard))
    }

    /// The last GC's result from `.gc-status` (written by PBS or keepsake), `None` if there is
    /// none. Unreadable content counts as a default status, as PBS reads it.
    ///
    /// # Errors
    /// [`Error::Backend`] if the file cannot be read for another reason than being missing.
    pub fn gc_status(&self) -> Result<Option<GcStatus>> {
        let file = path(GC_STATUS_FILE_NAME)?;
        let read = match self.backend().host_local() {
            Some(local) => local.read(&file),
            None => self.backend().read(&file),
        };
        match read {
            Ok(contents) => Ok(Some(
                serde_json::from_slice(&contents.data).unwrap_or_default(),
            )),
            Err(keepsake_backend::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::backend(GC_STATUS_FILE_NAME, e)),
        }
    }

    /// PBS's check before marking: a chunk's atime, set into the past, must move to now when
    /// touched; otherwise marks would protect nothing. Uses the chunk of 4 MiB of zeros (PBS
    /// uses it too), inserted if missing; setting its atime back is safe because marking follows
    /// and a GC that dies before it removes nothing.
    pub(crate) fn check_atime_updates(&self, started: i64) -> Result<()> {
        let zero = self.insert_chunk(&vec![0u8; 4 * 1024 * 1024], Encryption::None)?;
        let rel = ChunkDigest::new(zero.digest).local_path();
        let file = self
            .backend()
            .host_local()
            .map(|local| local.local_path(&rel))
            .unwrap_or_default();
        let failed = || Error::GcRefused {
            store: self.name().to_owned(),
            refusal: GcRefusal::AtimeUpdatesIgnored {
                chunk: rel.as_str().to_owned(),
            },
        };
        let past = Timespec {
            tv_sec: started - 2 * 24 * 3600,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: past,
            last_modification: Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
        };
        let io = |source: std::io::Error| Error::Io {
            path: file.clone(),
            source,
        };
        utimensat(CWD, &file, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| io(e.into()))?;
        let before = std::fs::symlink_metadata(&file).map_err(io)?.atime();
        if self.touch_local(&rel)? != Touch::Touched {
            return Err(failed());
        }
        let after = std::fs::symlink_metadata(&file).map_err(io)?.atime();
        if before != past.tv_sec || after < started - 1 {
            return Err(failed());
        }
        Ok(())
    }

    /// Phase 1: reads every index (in parallel), touches each distinct chunk once; walks again
    /// until no index is new. Returns how many referenced chunks are missing.
    pub(crate) fn mark(
        &self,
        root: &Path,
        options: &GcOptions,
        marked: &DigestSet,
        status: &mut GcStatus,
    ) -> Result<u64> {
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let missing = AtomicU64::new(0);
        let chunks = &ChunkDir::open(root)?;
        let read = AtomicU64::new(0);
        loop {
            let mut fresh = Vec::new();
            for (file, id) in find_indexes(root)? {
                if seen.insert(id) {
                    fresh.push((file, id));
                }
            }
            // Indexes gone between the walk and their read: pruned, or moved (a group or
            // namespace move renames folders). Forgotten again, so that a later walk that finds
            // one at its new place reads it.
            let vanished: Mutex<Vec<(u64, u64)>> = Mutex::default();
            if fresh.is_empty() {
                return Ok(missing.into_inner());
            }
            let files = AtomicU64::new(0);
            let bytes = AtomicU64::new(0);
            let next = AtomicUsize::new(0);
            let failure: Mutex<Option<Error>> = Mutex::new(None);
            std::thread::scope(|scope| {
                for _ in 0..options.thread_count().min(fresh.len()) {
                    scope.spawn(|| {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some((file, id)) = fresh.get(i) else {
                                break;
                            };
                            let result = self.mark_index(root, chunks, file, options.mode, marked);
                            match result {
                                Ok(Some((size, gone))) => {
                                    let done = read.fetch_add(1, Ordering::Relaxed) + 1;
                                    options.progress(GcPhase::Mark, done, Some(seen.len() as u64));
                                    files.fetch_add(1, Ordering::Relaxed);
                                    bytes.fetch_add(size, Ordering::Relaxed);
                                    missing.fetch_add(gone, Ordering::Relaxed);
                                }
                                Ok(None) => vanished
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .push(*id),
                                Err(e) => {
                                    let mut slot =
                                        failure.lock().unwrap_or_else(PoisonError::into_inner);
                                    slot.get_or_insert(e);
                                    // Stop the others early: the GC fails anyway.
                                    next.store(usize::MAX / 2, Ordering::Relaxed);
                                    break;
                                }
                            }
                        }
                    });
                }
            });
            if let Some(e) = failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
                return Err(e);
            }
            status.index_file_count += files.into_inner();
            status.index_data_bytes += bytes.into_inner();
            for id in vanished
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner)
            {
                seen.remove(&id);
            }
        }
    }

    /// Marks the chunks of one index; `None` if it vanished meanwhile (pruned). Returns the
    /// archive's size and how many of its chunks (newly seen) are missing.
    fn mark_index(
        &self,
        root: &Path,
        chunks: &ChunkDir,
        file: &Path,
        mode: GcMode,
        marked: &DigestSet,
    ) -> Result<Option<(u64, u64)>> {
        let io = |source| Error::Io {
            path: file.to_path_buf(),
            source,
        };
        let opened = match std::fs::File::open(file) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io(source)),
        };
        let len = opened.metadata().map_err(io)?.len();
        // Header first: a huge file that is no index is refused without being read whole.
        let index =
            IndexFile::read_from(std::io::BufReader::new(opened), len).map_err(|source| {
                Error::Corrupt {
                    path: file
                        .strip_prefix(root)
                        .unwrap_or(file)
                        .display()
                        .to_string(),
                    source,
                }
            })?;
        let mut missing = 0;
        let mut size = 0;
        for chunk in index.chunks() {
            size = size.max(chunk.range.end);
            if !marked.insert(chunk.digest) {
                continue;
            }
            let found = match mode {
                GcMode::Run => match chunks.touch(chunk.digest, None)? {
                    Touch::Missing => {
                        // Keep its bad copies while the chunk is referenced and missing: a
                        // good copy uploaded later replaces them, as in PBS.
                        for n in 0..keepsake_backend::BAD_CHUNK_SLOTS {
                            chunks.touch(chunk.digest, Some(n))?;
                        }
                        false
                    }
                    Touch::Touched | Touch::NoLocalFolder => true,
                },
                GcMode::DryRun => chunks.exists(chunk.digest)?,
            };
            if !found {
                missing += 1;
            }
        }
        Ok(Some((size, missing)))
    }
}

/// `.chunks`, open: chunks are touched, looked at and removed relative to it, by names built on
/// the stack (a path walk of two components per chunk instead of the whole store path, and no
/// allocation). Opened without following a symlink: a `.chunks` that is one fails GC.
pub(crate) struct ChunkDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// `<4 hex>/<64 hex>[.<n>.bad]` and the terminating NUL.
const CHUNK_NAME_MAX: usize = 4 + 1 + 64 + 6 + 1;

impl ChunkDir {
    pub(crate) fn open(root: &Path) -> Result<Self> {
        let path = root.join(CHUNK_DIR_NAME);
        let fd = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(Self { fd, path })
    }

    /// Calls `f` with the chunk's name relative to `.chunks` (its bad copy `n`'s with `Some(n)`).
    fn with_name<T>(digest: &[u8; 32], bad: Option<u8>, f: impl FnOnce(&CStr) -> T) -> T {
        let mut buf = [0u8; CHUNK_NAME_MAX];
        let mut hex = [0u8; 64];
        // Cannot fail: the output is exactly twice the input.
        let _ = hex::encode_to_slice(digest, &mut hex);
        buf[..4].copy_from_slice(&hex[..4]);
        buf[4] = b'/';
        buf[5..69].copy_from_slice(&hex);
        let mut len = 69;
        if let Some(n) = bad {
            // BAD_CHUNK_SLOTS is 10: one digit.
            let suffix = [b'.', b'0' + n % 10, b'.', b'b', b'a', b'd'];
            buf[len..len + suffix.len()].copy_from_slice(&suffix);
            len += suffix.len();
        }
        let name = CStr::from_bytes_with_nul(&buf[..=len]).unwrap_or_default();
        f(name)
    }

    /// Sets the chunk's atime to now (its mtime unchanged), as PBS's mark does.
    fn touch(&self, digest: &[u8; 32], bad: Option<u8>) -> Result<Touch> {
        let now = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            },
            last_modification: Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
        };
        Self::with_name(digest, bad, |name| {
            match utimensat(&self.fd, name, &now, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(()) => Ok(Touch::Touched),
                Err(Errno::NOENT) => Ok(Touch::Missing),
                Err(e) => Err(Error::Io {
                    path: self.path.join(name.to_string_lossy().as_ref()),
                    source: e.into(),
                }),
            }
        })
    }

    /// Whether the chunk is there (anything at its name).
    fn exists(&self, digest: &[u8; 32]) -> Result<bool> {
        Self::with_name(digest, None, |name| {
            match statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(_) => Ok(true),
                Err(Errno::NOENT) => Ok(false),
                Err(e) => Err(Error::Io {
                    path: self.path.join(name.to_string_lossy().as_ref()),
                    source: e.into(),
                }),
            }
        })
    }
}

/// Every `.fidx`/`.didx` below `root` with its (device, inode), hidden ones included, skipping
/// the folders whose name starts with `.` (so `.chunks`), as PBS's walk does; a top-level
/// `lost+found` that cannot be read is skipped.
fn find_indexes(root: &Path) -> Result<Vec<(PathBuf, (u64, u64))>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed since its parent was listed (a prune, a move).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::PermissionDenied
                    && dir == root.join("lost+found") =>
            {
                continue;
            }
            Err(source) => return Err(Error::Io { path: dir, source }),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(source) => {
                    return Err(Error::Io {
                        path: dir.clone(),
                        source,
                    });
                }
            };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let hidden = name.starts_with('.');
            // The entry's type from the listing (a symlink is neither); only an index is looked
            // at, for its device and inode (the walk's identity of it, see `mark`).
            let Ok(kind) = entry.file_type() else {
                continue; // gone meanwhile
            };
            // Hidden folders (`.chunks` above all) hold no snapshot. A hidden index file is
            // marked all the same: PBS's walk skips it, but marking more never loses anything.
            if kind.is_dir() {
                if !hidden {
                    stack.push(entry.path());
                }
            } else if kind.is_file() && (name.ends_with(".fidx") || name.ends_with(".didx")) {
                let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                    continue; // gone meanwhile
                };
                if meta.is_file() {
                    found.push((entry.path(), (meta.dev(), meta.ino())));
                }
            }
        }
    }
    Ok(found)
}

/// Phase 2 over `.chunks`.
pub(crate) struct Sweep<'a> {
    pub(crate) chunks: &'a ChunkDir,
    pub(crate) marked: &'a DigestSet,
    pub(crate) guard: Option<&'a ExclusiveProcessGuard>,
    pub(crate) cutoff: i64,
    pub(crate) started: i64,
    pub(crate) mode: GcMode,
    /// The options (for progress) and the phase to report it under.
    pub(crate) progress: (&'a GcOptions, GcPhase),
}

impl Sweep<'_> {
    pub(crate) fn run(&self, threads: usize, status: &mut GcStatus) -> Result<()> {
        let io = |source: Errno| Error::Io {
            path: self.chunks.path.clone(),
            source: source.into(),
        };
        let mut prefixes = Vec::new();
        for entry in Dir::read_from(&self.chunks.fd).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            if name.to_bytes().len() == 4 && name.to_bytes().iter().all(u8::is_ascii_hexdigit) {
                prefixes.push(name.to_owned());
            }
        }
        let next = AtomicUsize::new(0);
        let swept = AtomicU64::new(0);
        let total: Mutex<(GcStatus, Option<Error>)> = Mutex::new(Default::default());
        std::thread::scope(|scope| {
            for _ in 0..threads.min(prefixes.len()).max(1) {
                scope.spawn(|| {
                    let mut mine = GcStatus::default();
                    let mut names = Vec::new();
                    let mut error = None;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(prefix) = prefixes.get(i) else { break };
                        if let Err(e) = self.sweep_prefix(prefix, &mut names, &mut mine) {
                            error = Some(e);
                            next.store(usize::MAX / 2, Ordering::Relaxed);
                            break;
                        }
                        let done = swept.fetch_add(1, Ordering::Relaxed) + 1;
                        let (options, phase) = self.progress;
                        options.progress(phase, done, Some(prefixes.len() as u64));
                    }
                    let mut total = total.lock().unwrap_or_else(PoisonError::into_inner);
                    add(&mut total.0, &mine);
                    if total.1.is_none() {
                        total.1 = error;
                    }
                });
            }
        });
        let (counts, error) = total.into_inner().unwrap_or_else(PoisonError::into_inner);
        add(status, &counts);
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One prefix folder, opened relative to `.chunks` and read in one go into `names` (reused),
    /// then each chunk looked at and judged relative to it.
    fn sweep_prefix(
        &self,
        prefix: &CStr,
        names: &mut Vec<CString>,
        s: &mut GcStatus,
    ) -> Result<()> {
        let folder = self.chunks.path.join(prefix.to_string_lossy().as_ref());
        let io = |name: Option<&CStr>, source: Errno| Error::Io {
            path: match name {
                Some(name) => folder.join(name.to_string_lossy().as_ref()),
                None => folder.clone(),
            },
            source: source.into(),
        };
        let fd = match rustix::fs::openat(
            &self.chunks.fd,
            prefix,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(io(None, e)),
        };
        let mut dir = Dir::new(fd).map_err(|e| io(None, e))?;
        names.clear();
        for entry in dir.by_ref() {
            let entry = entry.map_err(|e| io(None, e))?;
            // Chunk names only: temporary files and strangers are never touched.
            if matches!(entry.file_name().to_bytes().len(), 64 | 70) {
                names.push(entry.file_name().to_owned());
            }
        }
        let fd = dir.fd().map_err(|e| io(None, e))?;
        for name in names.iter() {
            let Some((digest, bad)) = std::str::from_utf8(name.to_bytes())
                .ok()
                .and_then(parse_chunk_name)
            else {
                continue;
            };
            // A writer of this process cannot find the chunk and rely on it while we decide.
            let _shard = self.guard.map(|g| g.lock().chunk_shard(digest[0]));
            let stat = match statat(fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile => stat,
                Ok(_) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(io(Some(name), e)),
            };
            // `c_long` on 64-bit Linux, narrower elsewhere.
            #[allow(clippy::useless_conversion)]
            let atime = i64::from(stat.st_atime);
            let size = u64::try_from(stat.st_size).unwrap_or(0);
            // Dry run: a referenced chunk's atime was not moved, the set says it is in use. On a
            // run the set only repeats what the atime says (a chunk marked but with an old
            // atime, whatever the cause, is kept).
            let referenced = !bad && self.marked.contains(&digest);
            // A run touches the bad copies of a referenced chunk only while the good copy is
            // missing (see `mark_index`); a dry run, which touches nothing, counts the same.
            let bad_kept_by_mark = bad
                && self.mode == GcMode::DryRun
                && self.marked.contains(&digest)
                && !CString::new(&name.to_bytes()[..64]).is_ok_and(|good| {
                    statat(fd, good.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok()
                });
            if !referenced && !bad_kept_by_mark && atime < self.cutoff {
                if self.mode == GcMode::Run {
                    match unlinkat(fd, name.as_c_str(), AtFlags::empty()) {
                        Ok(()) => {}
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Err(io(Some(name), e)),
                    }
                }
                s.removed_bytes += size;
                if bad {
                    s.removed_bad += 1;
                } else {
                    s.removed_chunks += 1;
                }
            } else if bad {
                s.still_bad += 1;
                s.disk_bytes += size;
            } else if !referenced && atime < self.started {
                s.pending_chunks += 1;
                s.pending_bytes += size;
            } else {
                s.disk_chunks += 1;
                s.disk_bytes += size;
            }
        }
        Ok(())
    }
}

fn add(total: &mut GcStatus, part: &GcStatus) {
    total.disk_bytes += part.disk_bytes;
    total.disk_chunks += part.disk_chunks;
    total.removed_bytes += part.removed_bytes;
    total.removed_chunks += part.removed_chunks;
    total.pending_bytes += part.pending_bytes;
    total.pending_chunks += part.pending_chunks;
    total.removed_bad += part.removed_bad;
    total.still_bad += part.still_bad;
}

/// A chunk file name: 64 hex (a chunk) or `<64 hex>.<digit>.bad` (a bad one).
pub(crate) fn parse_chunk_name(name: &str) -> Option<([u8; 32], bool)> {
    let (hex, bad) = match name.len() {
        64 => (name, false),
        70 if name.as_bytes()[64] == b'.' && name.ends_with(".bad") => (&name[..64], true),
        _ => return None,
    };
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex, &mut digest).ok()?;
    // Chunk names are lowercase; another spelling is not a chunk of this store.
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    Some((digest, bad))
}

/// Digests are uniformly random: eight of their bytes are a hash already.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(2) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

const SET_SHARDS: usize = 64;

/// The digests seen in phase 1: 32 bytes each plus the table's slack, sharded for the threads.
pub(crate) struct DigestSet {
    shards: Vec<Mutex<HashSet<[u8; 32], BuildHasherDefault<DigestHasher>>>>,
}

impl DigestSet {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SET_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(
        &self,
        digest: &[u8; 32],
    ) -> &Mutex<HashSet<[u8; 32], BuildHasherDefault<DigestHasher>>> {
        &self.shards[usize::from(digest[31]) % SET_SHARDS]
    }

    /// Whether `digest` was new.
    pub(crate) fn insert(&self, digest: &[u8; 32]) -> bool {
        self.shard(digest)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(*digest)
    }

    pub(crate) fn contains(&self, digest: &[u8; 32]) -> bool {
        self.shard(digest)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(digest)
    }

    pub(crate) fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_chunk_name(&hex), Some(([0xab; 32], false)));
        assert_eq!(
            parse_chunk_name(&format!("{hex}.3.bad")),
            Some(([0xab; 32], true))
        );
        assert_eq!(parse_chunk_name(&format!("{hex}.tmp")), None);
        assert_eq!(parse_chunk_name(&"AB".repeat(32)), None);
        assert_eq!(parse_chunk_name("0000"), None);
    }

    #[test]
    fn the_status_file_has_pbs_keys() {
        let json = serde_json::to_value(GcStatus::default()).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "disk-bytes",
                "disk-chunks",
                "index-data-bytes",
                "index-file-count",
                "pending-bytes",
                "pending-chunks",
                "removed-bad",
                "removed-bytes",
                "removed-chunks",
                "still-bad"
            ]
        );
    }
}

/// What [`DataStore::usage`] found: the numbers of `keepsake status`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreUsage {
    /// Size of the filesystem holding the datastore folder, in bytes.
    pub fs_total: u64,
    /// Bytes used on it (by anything).
    pub fs_used: u64,
    /// Bytes available to unprivileged users.
    pub fs_available: u64,
    /// Chunk files in `.chunks` (bad ones not counted).
    pub chunk_count: u64,
    /// Their bytes.
    pub chunk_bytes: u64,
    /// Index files below the datastore (every namespace, unfinished snapshots too).
    pub index_count: u64,
    /// The archive bytes those indexes describe (what a restore of everything would produce).
    pub logical_bytes: u64,
    /// The last garbage collection's result (`.gc-status`), if any.
    pub last_gc: Option<GcStatus>,
}

impl StoreUsage {
    /// Logical bytes per stored chunk byte (0 without chunks).
    pub fn dedup_factor(&self) -> f64 {
        if self.chunk_bytes == 0 {
            0.0
        } else {
            self.logical_bytes as f64 / self.chunk_bytes as f64
        }
    }
}

impl DataStore {
    /// The datastore's usage: its filesystem's size and use, the chunks stored, the archive
    /// bytes the indexes describe, and the last GC's status. Reads only (every index header and
    /// table, and a listing of `.chunks`); for a datastore with a local folder (for S3: the cache,
    /// whose chunk files may be empty markers).
    ///
    /// # Errors
    /// [`Error::GcRefused`] ([`GcRefusal::NoLocalFolder`]) without a local folder;
    /// [`Error::Corrupt`] for an unreadable index; [`Error::Io`].
    pub fn usage(&self) -> Result<StoreUsage> {
        let Some(local) = self.backend().host_local() else {
            return Err(Error::GcRefused {
                store: self.name().to_owned(),
                refusal: GcRefusal::NoLocalFolder,
            });
        };
        let root = local.root().to_path_buf();
        let fs = rustix::fs::statvfs(&root).map_err(|e| Error::Io {
            path: root.clone(),
            source: e.into(),
        })?;
        let block = fs.f_frsize;
        let mut usage = StoreUsage {
            fs_total: fs.f_blocks * block,
            fs_used: (fs.f_blocks - fs.f_bfree) * block,
            fs_available: fs.f_bavail * block,
            chunk_count: 0,
            chunk_bytes: 0,
            index_count: 0,
            logical_bytes: 0,
            last_gc: self.gc_status()?,
        };
        for (file, _) in find_indexes(&root)? {
            let bytes = match std::fs::read(&file) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(Error::Io { path: file, source }),
            };
            let index = IndexFile::from_bytes(bytes).map_err(|source| Error::Corrupt {
                path: file
                    .strip_prefix(&root)
                    .unwrap_or(&file)
                    .display()
                    .to_string(),
                source,
            })?;
            usage.index_count += 1;
            usage.logical_bytes += index.chunks().last().map_or(0, |c| c.range.end);
        }
        let chunks = root.join(CHUNK_DIR_NAME);
        let io = |path: &Path, source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        for prefix in std::fs::read_dir(&chunks).map_err(|e| io(&chunks, e))? {
            let prefix = prefix.map_err(|e| io(&chunks, e))?.path();
            let Ok(entries) = std::fs::read_dir(&prefix) else {
                continue; // not a folder, or gone
            };
            for entry in entries {
                let entry = entry.map_err(|e| io(&prefix, e))?;
                if !matches!(
                    parse_chunk_name(&entry.file_name().to_string_lossy()),
                    Some((_, false))
                ) {
                    continue;
                }
                if let Ok(meta) = entry.metadata() {
                    usage.chunk_count += 1;
                    usage.chunk_bytes += meta.len();
                }
            }
        }
        Ok(usage)
    }
}
