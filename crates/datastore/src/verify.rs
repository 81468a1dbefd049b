//! Metadata-level verification of snapshots, groups, namespaces and whole datastores.
//!
//! For every finished snapshot: the manifest decodes (blob magic and CRC, JSON) and names this
//! snapshot; every file it lists exists, with the size and checksum it records (blob: length and
//! SHA-256 of the stored file; index: archive size and index checksum); every blob's magic and
//! CRC hold (also blobs the manifest does not list, such as `client.log.blob`); every index passes
//! its own checks (header, length, checksum over its entries); every chunk an index references is
//! in the chunk store; and, when a key is given, the manifest's signature matches.
//!
//! With [`ChunkVerification::Content`] (PBS's verify job, `verify --read-data`) every chunk the
//! snapshots reference is also read and checked once per run, on several threads: blob magic and
//! CRC, decryption with the key, zstd stream, the size the index expects and the digest. A
//! corrupt chunk is set aside as PBS does (`<digest>.<n>.bad`, see
//! [`Backend::quarantine_chunk`](keepsake_backend::Backend::quarantine_chunk)) and every snapshot
//! using it fails; on an S3 datastore the bucket's copy decides, not the cache's.
//!
//! Each snapshot gets a [`SnapshotVerification`] with typed [`Problem`]s; the outcome can be
//! recorded in the manifest's `verify_state`, as PBS's verify job does.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use keepsake_backend::ChunkDigest;
use keepsake_hierarchy::{
    ArchiveKind, BackupDir, BackupGroup, BackupNamespace, MANIFEST_BLOB_NAME,
};
use keepsake_manifest::blob::DataBlob;
use keepsake_manifest::crypt::CryptConfig;
use keepsake_manifest::index::{ChunkIndex, IndexFile};
use keepsake_manifest::manifest::{BackupManifest, CryptMode, VerifyOutcome, VerifyState};
use sha2::{Digest, Sha256};

use crate::error::{ArgumentProblem, Error, Result};
use crate::read::{ChunkCheck, ChunkDefect, ChunkReader};
use crate::recover::InterruptedIntent;
use crate::snapshot::Snapshot;
use crate::store::DataStore;

/// What to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyScope {
    /// Every snapshot of the datastore.
    Store,
    /// A namespace and the namespaces below it, down to `max_depth` levels (`None`: all).
    Namespace {
        /// The namespace.
        ns: BackupNamespace,
        /// How many levels below it (`Some(0)`: only its own groups).
        max_depth: Option<usize>,
    },
    /// One group.
    Group {
        /// Its namespace.
        ns: BackupNamespace,
        /// The group.
        group: BackupGroup,
    },
    /// One snapshot.
    Snapshot {
        /// Its namespace.
        ns: BackupNamespace,
        /// The snapshot.
        snapshot: BackupDir,
    },
}

/// Called after each snapshot is verified, with its result: for progress displays.
pub type VerifyProgress = Arc<dyn Fn(&SnapshotVerification) + Send + Sync>;

/// Called after each chunk is read by a content verify, with the bytes read (0 for a missing
/// chunk); from the verifying threads, so it must be quick.
pub type ChunkProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// How far the chunks an index references are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ChunkVerification {
    /// Not at all: the indexes only.
    Skip,
    /// Each chunk is in the chunk store (the default; no chunk is read).
    #[default]
    Presence,
    /// Each chunk is read and its content checked (PBS's verify job). Required to record a
    /// verify state.
    Content,
}

/// Which snapshots with a recorded verify state are verified again (PBS's `ignore-verified` and
/// `outdated-after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Reverify {
    /// Every snapshot (the default).
    #[default]
    All,
    /// Only those not recorded `ok`: a snapshot recorded `ok` is
    /// [`SnapshotOutcome::Skipped`]. (PBS skips snapshots recorded `failed` as well; keepsake
    /// checks them again, as a failed snapshot may have been repaired.)
    NotOk,
    /// As [`Reverify::NotOk`], and those recorded `ok` more than `days` days ago.
    OutdatedAfter {
        /// Age in days after which an `ok` is checked again.
        days: u32,
    },
}

/// How to verify.
#[derive(Clone)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// The key to check manifest signatures with (and to authenticate encrypted blobs); the
    /// store's key when `None`. Without any key, signatures are not checked.
    pub key: Option<CryptConfig>,
    /// Record each outcome in the snapshot's manifest (`unprotected.verify_state`) under this task
    /// id (a PBS UPID, or any text).
    pub record_state: Option<String>,
    /// How far referenced chunks are checked (default: that they exist).
    pub chunks: ChunkVerification,
    /// Which snapshots verified before are verified again (default: all).
    pub reverify: Reverify,
    /// Threads reading and checking chunks in a content verify (default: the number of cores).
    pub threads: usize,
    /// Called by [`DataStore::verify`] after each snapshot, in the order they are verified.
    pub progress: Option<VerifyProgress>,
    /// Called after each chunk a content verify reads.
    pub chunk_progress: Option<ChunkProgress>,
}

impl fmt::Debug for VerifyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("key", &self.key.as_ref().map(|k| k.fingerprint().short()))
            .field("record_state", &self.record_state)
            .field("chunks", &self.chunks)
            .field("reverify", &self.reverify)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("chunk_progress", &self.chunk_progress.is_some())
            .finish()
    }
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            key: None,
            record_state: None,
            chunks: ChunkVerification::default(),
            reverify: Reverify::default(),
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            progress: None,
            chunk_progress: None,
        }
    }
}

impl VerifyOptions {
    /// Checks signatures with `key`.
    #[must_use]
    pub fn key(mut self, key: CryptConfig) -> Self {
        self.key = Some(key);
        self
    }

    /// Records the outcome in each manifest under the task id `upid`. Only with
    /// [`ChunkVerification::Content`]: [`DataStore::verify`] refuses otherwise.
    #[must_use]
    pub fn record_state(mut self, upid: impl Into<String>) -> Self {
        self.record_state = Some(upid.into());
        self
    }

    /// How far to check referenced chunks.
    #[must_use]
    pub fn chunks(mut self, level: ChunkVerification) -> Self {
        self.chunks = level;
        self
    }

    /// Which snapshots verified before to verify again.
    #[must_use]
    pub fn reverify(mut self, reverify: Reverify) -> Self {
        self.reverify = reverify;
        self
    }

    /// Reads and checks chunks on `threads` threads (at least one).
    #[must_use]
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Calls `progress` after each chunk a content verify reads, with its stored size.
    #[must_use]
    pub fn chunk_progress(mut self, progress: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.chunk_progress = Some(Arc::new(progress));
        self
    }

    /// Calls `progress` after each snapshot with its result (for a progress display; it runs on
    /// the verifying thread, so it should be quick).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use keepsake_datastore::VerifyOptions;
    ///
    /// let done = Arc::new(AtomicUsize::new(0));
    /// let counter = Arc::clone(&done);
    /// let options = VerifyOptions::default().progress(move |_snapshot| {
    ///     counter.fetch_add(1, Ordering::Relaxed);
    /// });
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn progress(
        mut self,
        progress: impl Fn(&SnapshotVerification) + Send + Sync + 'static,
    ) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    fn report(&self, done: &SnapshotVerification) {
        if let Some(progress) = &self.progress {
            progress(done);
        }
    }
}

/// One thing wrong with a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The manifest does not decode or parse.
    #[error("manifest cannot be loaded")]
    ManifestUnreadable {
        /// Why.
        #[source]
        source: Error,
    },
    /// The manifest names another snapshot.
    #[error("manifest belongs to snapshot {found}")]
    ManifestMismatch {
        /// The snapshot the manifest names.
        found: BackupDir,
    },
    /// The manifest's signature or key fingerprint does not match the key given.
    #[error("manifest signature check failed")]
    Signature {
        /// What the check found.
        #[source]
        source: keepsake_manifest::Error,
    },
    /// A file the manifest lists does not exist.
    #[error("`{file}` is listed in the manifest but missing")]
    FileMissing {
        /// The file name.
        file: String,
    },
    /// A file could not be read.
    #[error("`{file}` cannot be read")]
    FileUnreadable {
        /// The file name.
        file: String,
        /// Why.
        #[source]
        source: Error,
    },
    /// A blob's magic, CRC or (with a key) encryption does not check out.
    #[error("blob `{file}` is damaged")]
    BlobCorrupt {
        /// The file name.
        file: String,
        /// What the decoder found.
        #[source]
        source: keepsake_manifest::Error,
    },
    /// An index file is damaged: bad magic, length or checksum over its entries.
    #[error("index `{file}` is damaged")]
    IndexCorrupt {
        /// The file name.
        file: String,
        /// What the reader found.
        #[source]
        source: keepsake_manifest::Error,
    },
    /// A file's size is not the one the manifest records.
    #[error("`{file}` has size {found}, the manifest records {expected}")]
    SizeMismatch {
        /// The file name.
        file: String,
        /// The size in the manifest.
        expected: u64,
        /// The size found.
        found: u64,
    },
    /// A file's checksum is not the one the manifest records.
    #[error("`{file}` has checksum {found}, the manifest records {expected}")]
    ChecksumMismatch {
        /// The file name.
        file: String,
        /// The checksum in the manifest (hex).
        expected: String,
        /// The checksum found (hex).
        found: String,
    },
    /// A chunk an index references is not in the chunk store.
    #[error("chunk {digest} of `{file}` is missing")]
    ChunkMissing {
        /// The index file.
        file: String,
        /// The chunk digest (hex).
        digest: String,
    },
    /// A chunk's content does not check out; it was set aside (renamed `<digest>.<n>.bad`)
    /// unless [`Problem::ChunkNotSetAside`] says why not.
    #[error("chunk {digest} of `{file}` is corrupt{}", set_aside.as_ref().map(|p| format!(" (set aside as {p})")).unwrap_or_default())]
    ChunkCorrupt {
        /// The index file.
        file: String,
        /// The chunk digest (hex).
        digest: String,
        /// What is wrong with it.
        #[source]
        defect: Arc<ChunkDefect>,
        /// Where the corrupt chunk was moved.
        set_aside: Option<String>,
    },
    /// A chunk decodes (to content matching its digest) to another size than the index records
    /// for it: the index is wrong, not the chunk, which is kept.
    #[error("chunk {digest} of `{file}` holds {found} bytes, the index records {expected}")]
    ChunkSizeMismatch {
        /// The index file.
        file: String,
        /// The chunk digest (hex).
        digest: String,
        /// The size the index records.
        expected: u64,
        /// The size of the chunk's content.
        found: u64,
    },
    /// A corrupt chunk could not be set aside (a read-only store, a storage error).
    #[error("corrupt chunk {digest} could not be set aside")]
    ChunkNotSetAside {
        /// The chunk digest (hex).
        digest: String,
        /// Why.
        #[source]
        source: Arc<Error>,
    },
    /// The chunk store could not be asked about a chunk.
    #[error("chunk {digest} of `{file}` cannot be checked")]
    ChunkUnchecked {
        /// The index file.
        file: String,
        /// The chunk digest (hex).
        digest: String,
        /// Why.
        #[source]
        source: Error,
    },
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotOutcome {
    /// Everything checked out.
    Ok,
    /// At least one [`Problem`].
    Failed,
    /// No manifest: a backup still running or aborted (not a problem; PBS's prune handles it).
    Unfinished,
    /// Someone holds the snapshot exclusively (a backup, a move): not checked now.
    InUse,
    /// Recorded `ok` recently enough ([`VerifyOptions::reverify`]): not checked again.
    Skipped,
}

/// What verifying one snapshot found.
#[derive(Debug)]
#[non_exhaustive]
pub struct SnapshotVerification {
    /// The namespace.
    pub ns: BackupNamespace,
    /// The snapshot.
    pub snapshot: BackupDir,
    /// The verdict.
    pub outcome: SnapshotOutcome,
    /// Every problem found.
    pub problems: Vec<Problem>,
    /// Files checked (manifest entries and unlisted blobs).
    pub files_checked: u64,
    /// Chunk references checked (each distinct chunk is asked about, or read, once per run).
    pub chunks_checked: u64,
    /// Whether the outcome was recorded in the manifest.
    pub recorded: bool,
    /// Why recording failed, if it was asked for and failed.
    pub record_error: Option<Error>,
}

impl SnapshotVerification {
    /// The snapshot's folder relative to the datastore root.
    pub fn relative_path(&self) -> String {
        self.snapshot.relative_path(&self.ns)
    }
}

/// What [`DataStore::verify`] found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Interrupted operations waiting in the intent journal (verify does not complete them: see
    /// [`DataStore::recover`]); a half-done operation is not "ok".
    pub interrupted: Vec<InterruptedIntent>,
    /// One entry per snapshot, namespaces and groups in listing order, snapshots oldest first.
    pub snapshots: Vec<SnapshotVerification>,
    /// Errors while walking the hierarchy (unreadable folders, names that do not parse).
    pub errors: Vec<Error>,
    /// What a content verify read ([`ChunkVerification::Content`]).
    pub content: ContentStats,
}

/// What a content verify read: each distinct chunk counts once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContentStats {
    /// Chunks read and checked in full.
    pub verified: u64,
    /// Encrypted chunks without a key: only their CRC was checked.
    pub crc_only: u64,
    /// Chunks not in the chunk store.
    pub missing: u64,
    /// Chunks whose content did not check out.
    pub corrupt: u64,
    /// Corrupt chunks renamed `<digest>.<n>.bad`.
    pub set_aside: u64,
    /// S3 only: chunks whose cache copy was damaged and whose bucket copy was good (the cache
    /// now holds the good one).
    pub cache_repaired: u64,
    /// Bytes read (stored size).
    pub bytes_read: u64,
    /// Bytes of data the verified chunks decode to.
    pub bytes_decoded: u64,
}

impl VerifyReport {
    /// Whether the verify passed: at least one snapshot was verified (or skipped as recorded
    /// `ok`), none failed, the walk had no error, and no interrupted operation waits in the
    /// journal. A verify that checked nothing (every snapshot in use or unfinished, or none in
    /// scope) does not pass.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
            && self.interrupted.is_empty()
            && self.failed().next().is_none()
            && self.verified() + self.skipped() > 0
    }

    /// How many snapshots were skipped as recorded `ok` ([`VerifyOptions::reverify`]).
    pub fn skipped(&self) -> usize {
        self.snapshots
            .iter()
            .filter(|s| s.outcome == SnapshotOutcome::Skipped)
            .count()
    }

    /// How many snapshots were verified (passed or failed); in-use and unfinished ones were not.
    pub fn verified(&self) -> usize {
        self.snapshots
            .iter()
            .filter(|s| matches!(s.outcome, SnapshotOutcome::Ok | SnapshotOutcome::Failed))
            .count()
    }

    /// The snapshots that failed.
    pub fn failed(&self) -> impl Iterator<Item = &SnapshotVerification> {
        self.snapshots
            .iter()
            .filter(|s| s.outcome == SnapshotOutcome::Failed)
    }

    /// Every problem found, with its snapshot.
    pub fn problems(&self) -> impl Iterator<Item = (&SnapshotVerification, &Problem)> {
        self.snapshots
            .iter()
            .flat_map(|s| s.problems.iter().map(move |p| (s, p)))
    }
}

/// What one run found about a chunk, shared by every snapshot that references it.
#[derive(Clone)]
enum Verdict {
    Present,
    Missing,
    /// The content checks out; the size it decodes to (`None`: encrypted without a key). The
    /// size each index expects is compared per reference: a wrong size is the index's fault, and
    /// never gets a good chunk set aside.
    Good {
        plain: Option<u64>,
    },
    Corrupt {
        defect: Arc<ChunkDefect>,
        set_aside: Option<String>,
        not_set_aside: Option<Arc<Error>>,
    },
}

/// The verdicts of one run, and what reading chunks cost.
struct ChunkCache {
    verdicts: HashMap<[u8; 32], Verdict>,
    reader: Option<ChunkReader>,
    stats: ContentStats,
}

impl ChunkCache {
    fn new(store: &DataStore, options: &VerifyOptions) -> Self {
        let reader = (options.chunks == ChunkVerification::Content).then(|| {
            let reader = ChunkReader::new(store);
            match &options.key {
                Some(key) => reader.key(key.clone()),
                None => reader,
            }
        });
        Self {
            verdicts: HashMap::new(),
            reader,
            stats: ContentStats::default(),
        }
    }
}

impl DataStore {
    /// Verifies the metadata of everything in `scope` and reports per snapshot: for every finished
    /// snapshot, the manifest decodes and names this snapshot; every file it lists exists with the
    /// size and checksum it records; blob magics and CRCs hold (also for blobs it does not list);
    /// every index passes its own checks; every referenced chunk is in the chunk store; and, with a
    /// key, the signature matches. Chunk contents are not read. Interrupted operations in the intent
    /// journal are reported ([`VerifyReport::interrupted`]), not completed: verify changes
    /// nothing unless [`VerifyOptions::record_state`] is set.
    ///
    /// With [`ChunkVerification::Content`] the chunks are read and checked too (each distinct chunk
    /// once per run, on [`VerifyOptions::threads`] threads); a corrupt one is set aside as
    /// `<digest>.<n>.bad` (see the module docs) and fails every snapshot using it.
    ///
    /// Each snapshot is checked under its shared lock; one held exclusively (a running backup or
    /// move) is reported as [`SnapshotOutcome::InUse`]. Nothing is changed unless
    /// [`VerifyOptions::record_state`] is set.
    ///
    /// ```
    /// use keepsake_datastore::Encryption;
    /// use keepsake_datastore::{ChunkVerification, DataStore, SnapshotOutcome, VerifyOptions, VerifyScope};
    /// use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};
    /// use keepsake_manifest::manifest::VerifyOutcome;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DataStore::builder("store1", dir.path().join("store1"))
    ///     .lock_root(dir.path().join("locks"))
    ///     .chunk_prefix_dirs(false)
    ///     .create()?;
    /// let group = store.group(&BackupNamespace::root(), &"vm/100".parse::<BackupGroup>()?);
    /// let mut backup = group.start_backup(&"root@pam".parse::<Authid>()?, BackupTime::from_epoch(1_000)?)?;
    /// backup.add_fixed_archive("drive-scsi0.img.fidx", &vec![1u8; 100_000], 65_536, Encryption::None)?;
    /// let snapshot = backup.finish()?;
    ///
    /// let options = VerifyOptions::default()
    ///     .chunks(ChunkVerification::Content)
    ///     .record_state("job-1");
    /// let report = store.verify(&VerifyScope::Store, &options)?;
    /// assert!(report.is_ok());
    /// assert_eq!(report.content.verified, 2);
    /// assert_eq!(report.snapshots[0].outcome, SnapshotOutcome::Ok);
    /// assert_eq!(snapshot.verify_state()?.unwrap().state, VerifyOutcome::Ok);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`] if the namespace or group of the scope does not exist;
    /// [`Error::InvalidArgument`] ([`ArgumentProblem::RecordWithoutContent`]) when a state would be
    /// recorded without a content verify; problems below that are in the report.
    pub fn verify(&self, scope: &VerifyScope, options: &VerifyOptions) -> Result<VerifyReport> {
        refuse_record_without_content(options)?;
        let mut report = VerifyReport::default();
        match self.interrupted_intents() {
            Ok(interrupted) => report.interrupted = interrupted,
            Err(e) => report.errors.push(e),
        }
        let mut chunks = ChunkCache::new(self, options);
        match scope {
            VerifyScope::Snapshot { ns, snapshot } => {
                let snapshot = self.snapshot(ns, snapshot);
                if !snapshot.exists()? {
                    return Err(Error::NotFound {
                        what: "snapshot",
                        path: snapshot.relative_path(),
                    });
                }
                let done = self.verify_one(&snapshot, options, &mut chunks);
                options.report(&done);
                report.snapshots.push(done);
            }
            VerifyScope::Group { ns, group } => {
                self.verify_group(ns, group, options, &mut chunks, &mut report)?;
            }
            VerifyScope::Namespace { ns, max_depth } => {
                self.verify_namespaces(ns, *max_depth, options, &mut chunks, &mut report)?;
            }
            VerifyScope::Store => {
                self.verify_namespaces(
                    &BackupNamespace::root(),
                    None,
                    options,
                    &mut chunks,
                    &mut report,
                )?;
            }
        }
        report.content = chunks.stats;
        Ok(report)
    }

    fn verify_namespaces(
        &self,
        anchor: &BackupNamespace,
        max_depth: Option<usize>,
        options: &VerifyOptions,
        chunks: &mut ChunkCache,
        report: &mut VerifyReport,
    ) -> Result<()> {
        if !self.namespace_exists(anchor)? {
            return Err(Error::NotFound {
                what: "namespace",
                path: anchor.to_string(),
            });
        }
        let namespaces: Vec<_> = self.iter_namespaces_recursive(anchor, max_depth)?.collect();
        for ns in namespaces {
            let ns = match ns {
                Ok(ns) => ns,
                Err(e) => {
                    report.errors.push(e);
                    continue;
                }
            };
            let groups: Vec<_> = match self.iter_groups(&ns) {
                Ok(groups) => groups.collect(),
                Err(e) => {
                    report.errors.push(e);
                    continue;
                }
            };
            for group in groups {
                match group {
                    Ok(group) => {
                        if let Err(e) =
                            self.verify_group(&ns, group.name(), options, chunks, report)
                        {
                            report.errors.push(e);
                        }
                    }
                    Err(e) => report.errors.push(e),
                }
            }
        }
        Ok(())
    }

    fn verify_group(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
        options: &VerifyOptions,
        chunks: &mut ChunkCache,
        report: &mut VerifyReport,
    ) -> Result<()> {
        let mut snapshots = Vec::new();
        for snapshot in self.group(ns, group).iter_snapshots()? {
            match snapshot {
                Ok(s) => snapshots.push(s),
                Err(e) => report.errors.push(e),
            }
        }
        snapshots.sort_by_key(|s| s.dir().time());
        for snapshot in snapshots {
            let done = self.verify_one(&snapshot, options, chunks);
            options.report(&done);
            report.snapshots.push(done);
        }
        Ok(())
    }

    fn verify_one(
        &self,
        snapshot: &Snapshot,
        options: &VerifyOptions,
        chunks: &mut ChunkCache,
    ) -> SnapshotVerification {
        let mut result = SnapshotVerification {
            ns: snapshot.ns().clone(),
            snapshot: snapshot.dir().clone(),
            outcome: SnapshotOutcome::Ok,
            problems: Vec::new(),
            files_checked: 0,
            chunks_checked: 0,
            recorded: false,
            record_error: None,
        };
        let _lock = match snapshot.lock_shared() {
            Ok(lock) => lock,
            // Held by someone else: not checked now. A lock that could not be taken at all is
            // a failure (below), never "in use".
            Err(e) if e.is_locked() => {
                result.outcome = SnapshotOutcome::InUse;
                return result;
            }
            Err(e) => {
                result.problems.push(Problem::FileUnreadable {
                    file: String::new(),
                    source: e,
                });
                result.outcome = SnapshotOutcome::Failed;
                return result;
            }
        };
        let info = match snapshot.info() {
            Ok(info) => info,
            Err(e) => {
                result.problems.push(Problem::FileUnreadable {
                    file: String::new(),
                    source: e,
                });
                result.outcome = SnapshotOutcome::Failed;
                return result;
            }
        };
        if !info.is_finished() {
            result.outcome = SnapshotOutcome::Unfinished;
            return result;
        }
        let key = options.key.as_ref().or(self.crypt_config());
        match snapshot.load_manifest() {
            Ok(manifest) if recently_ok(&manifest, options.reverify) => {
                result.outcome = SnapshotOutcome::Skipped;
                return result;
            }
            Ok(manifest) => {
                check_manifest(snapshot, &manifest, key, options, chunks, &mut result);
                for name in &info.files {
                    if name.ends_with(".blob")
                        && name != MANIFEST_BLOB_NAME
                        && manifest.file(name).is_none()
                    {
                        check_unlisted_blob(snapshot, name, &mut result);
                    }
                }
            }
            Err(e) => result
                .problems
                .push(Problem::ManifestUnreadable { source: e }),
        }
        result.files_checked += 1;
        if !result.problems.is_empty() {
            result.outcome = SnapshotOutcome::Failed;
        }
        if let Some(upid) = &options.record_state {
            // An unreadable manifest cannot carry a state.
            if !matches!(
                result.problems.first(),
                Some(Problem::ManifestUnreadable { .. })
            ) {
                let state = VerifyState {
                    upid: upid.clone(),
                    state: if result.outcome == SnapshotOutcome::Ok {
                        VerifyOutcome::Ok
                    } else {
                        VerifyOutcome::Failed
                    },
                };
                match snapshot.set_verify_state(&state) {
                    Ok(()) => result.recorded = true,
                    Err(e) => result.record_error = Some(e),
                }
            }
        }
        result
    }
}

fn check_manifest(
    snapshot: &Snapshot,
    manifest: &BackupManifest,
    key: Option<&CryptConfig>,
    options: &VerifyOptions,
    chunks: &mut ChunkCache,
    result: &mut SnapshotVerification,
) {
    let found = manifest.snapshot();
    if found != *snapshot.dir() {
        result.problems.push(Problem::ManifestMismatch { found });
    }
    if let Some(key) = key {
        if let Err(source) = manifest.verify_signature(key) {
            result.problems.push(Problem::Signature { source });
        }
    }
    for file in manifest.files() {
        let name = file.filename().to_owned();
        result.files_checked += 1;
        let raw = match snapshot.read_file(&name) {
            Ok(raw) => raw,
            Err(Error::NotFound { .. }) => {
                result.problems.push(Problem::FileMissing { file: name });
                continue;
            }
            Err(source) => {
                result
                    .problems
                    .push(Problem::FileUnreadable { file: name, source });
                continue;
            }
        };
        let (size, csum) = match file.kind() {
            ArchiveKind::Blob => {
                let size = raw.len() as u64;
                let csum: [u8; 32] = Sha256::digest(&raw).into();
                let decoded = if file.crypt_mode() == CryptMode::Encrypt && key.is_some() {
                    // With the key, the GCM tag authenticates the content too.
                    keepsake_manifest::blob::decode(&raw, key).map(|_| ())
                } else {
                    DataBlob::from_raw(raw).map(|_| ())
                };
                if let Err(source) = decoded {
                    result.problems.push(Problem::BlobCorrupt {
                        file: name.clone(),
                        source,
                    });
                }
                (size, csum)
            }
            ArchiveKind::FixedIndex | ArchiveKind::DynamicIndex => {
                let index = match IndexFile::from_bytes(raw) {
                    Ok(index) => index,
                    Err(source) => {
                        result
                            .problems
                            .push(Problem::IndexCorrupt { file: name, source });
                        continue;
                    }
                };
                if options.chunks != ChunkVerification::Skip {
                    check_chunks(snapshot.store(), &name, &index, options, chunks, result);
                }
                (index.archive_size(), *index.index_csum())
            }
        };
        if size != file.size() {
            result.problems.push(Problem::SizeMismatch {
                file: name.clone(),
                expected: file.size(),
                found: size,
            });
        }
        if csum != *file.csum() {
            result.problems.push(Problem::ChecksumMismatch {
                file: name,
                expected: hex::encode(file.csum()),
                found: hex::encode(csum),
            });
        }
    }
}

fn check_chunks(
    store: &DataStore,
    file: &str,
    index: &IndexFile,
    options: &VerifyOptions,
    chunks: &mut ChunkCache,
    result: &mut SnapshotVerification,
) {
    if options.chunks == ChunkVerification::Content {
        read_new_chunks(store, file, index, options, chunks, result);
    }
    for i in 0..index.chunk_count() {
        let Some(digest) = index.digest(i) else {
            break;
        };
        result.chunks_checked += 1;
        let verdict = match chunks.verdicts.get(digest) {
            Some(verdict) => verdict.clone(),
            // Asked about below when only presence is checked; when contents are read, a
            // chunk without a verdict could not be read (its error is recorded already).
            None if chunks.reader.is_some() => continue,
            None => match store.chunk_exists(digest) {
                Ok(present) => {
                    let verdict = if present {
                        Verdict::Present
                    } else {
                        Verdict::Missing
                    };
                    chunks.verdicts.insert(*digest, verdict.clone());
                    verdict
                }
                Err(source) => {
                    result.problems.push(Problem::ChunkUnchecked {
                        file: file.to_owned(),
                        digest: hex::encode(digest),
                        source,
                    });
                    continue;
                }
            },
        };
        match verdict {
            Verdict::Present | Verdict::Good { plain: None } => {}
            Verdict::Good { plain: Some(found) } => {
                let expected = index.chunk_range(i).map_or(found, |r| r.end - r.start);
                if found != expected {
                    result.problems.push(Problem::ChunkSizeMismatch {
                        file: file.to_owned(),
                        digest: hex::encode(digest),
                        expected,
                        found,
                    });
                }
            }
            Verdict::Missing => result.problems.push(Problem::ChunkMissing {
                file: file.to_owned(),
                digest: hex::encode(digest),
            }),
            Verdict::Corrupt {
                defect,
                set_aside,
                not_set_aside,
            } => {
                result.problems.push(Problem::ChunkCorrupt {
                    file: file.to_owned(),
                    digest: hex::encode(digest),
                    defect,
                    set_aside,
                });
                if let Some(source) = not_set_aside {
                    result.problems.push(Problem::ChunkNotSetAside {
                        digest: hex::encode(digest),
                        source,
                    });
                }
            }
        }
    }
}

/// Reads and checks every chunk of `index` this run has no verdict on yet, on
/// `options.threads` threads, in digest order (the chunk store's order on disk). Chunks that
/// could not be read at all (a storage error) get no verdict: the error goes to this snapshot.
fn read_new_chunks(
    store: &DataStore,
    file: &str,
    index: &IndexFile,
    options: &VerifyOptions,
    chunks: &mut ChunkCache,
    result: &mut SnapshotVerification,
) {
    let Some(reader) = &chunks.reader else {
        return;
    };
    let mut todo: Vec<[u8; 32]> = (0..index.chunk_count())
        .filter_map(|i| index.digest(i))
        .filter(|digest| !chunks.verdicts.contains_key(*digest))
        .copied()
        .collect();
    todo.sort_unstable();
    todo.dedup();
    if todo.is_empty() {
        return;
    }
    let next = AtomicUsize::new(0);
    let stats = Mutex::new(ContentStats::default());
    let found: Mutex<Vec<([u8; 32], Result<Verdict>)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..options.threads.min(todo.len()) {
            scope.spawn(|| {
                let mut local = ContentStats::default();
                let mut verdicts = Vec::new();
                while let Some(digest) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let before = local.bytes_read;
                    let verdict = judge_chunk(store, reader, digest, &mut local);
                    if let Some(progress) = &options.chunk_progress {
                        progress(local.bytes_read - before);
                    }
                    verdicts.push((*digest, verdict));
                }
                lock(&found).extend(verdicts);
                add_stats(&mut lock(&stats), &local);
            });
        }
    });
    add_stats(&mut chunks.stats, &lock(&stats));
    let mut found = found
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    found.sort_unstable_by_key(|(digest, _)| *digest);
    for (digest, verdict) in found {
        match verdict {
            Ok(verdict) => {
                chunks.verdicts.insert(digest, verdict);
            }
            Err(source) => result.problems.push(Problem::ChunkUnchecked {
                file: file.to_owned(),
                digest: hex::encode(digest),
                source,
            }),
        }
    }
}

/// Reads one chunk and decides: good, missing, or corrupt (then set aside). A damaged copy in
/// an S3 datastore's cache is not a damaged chunk: the bucket's copy decides.
fn judge_chunk(
    store: &DataStore,
    reader: &ChunkReader,
    digest: &[u8; 32],
    stats: &mut ContentStats,
) -> Result<Verdict> {
    // The size is not asked here: it is the referencing index's claim, checked per reference.
    let first = reader.check_chunk(digest, None);
    let checked = match first {
        Err(Error::ChunkCorrupt { .. }) => {
            let second = reader.check_chunk_authoritative(digest, None);
            if second.is_ok() {
                stats.cache_repaired += 1;
            }
            second
        }
        other => other,
    };
    match checked {
        Ok(check) => {
            stats.bytes_read += check.stored();
            match check {
                ChunkCheck::Verified { plain, .. } => {
                    stats.verified += 1;
                    stats.bytes_decoded += plain;
                    Ok(Verdict::Good { plain: Some(plain) })
                }
                ChunkCheck::CrcOnly { .. } => {
                    stats.crc_only += 1;
                    Ok(Verdict::Good { plain: None })
                }
            }
        }
        Err(Error::NotFound { .. }) => {
            stats.missing += 1;
            Ok(Verdict::Missing)
        }
        Err(Error::ChunkCorrupt { defect, .. }) => {
            stats.corrupt += 1;
            let (set_aside, not_set_aside) =
                match store.backend().quarantine_chunk(&ChunkDigest::new(*digest)) {
                    Ok(path) => {
                        stats.set_aside += 1;
                        (Some(path.to_string()), None)
                    }
                    Err(e) => (
                        None,
                        Some(Arc::new(Error::backend(
                            &crate::chunks::chunk_path(digest),
                            e,
                        ))),
                    ),
                };
            Ok(Verdict::Corrupt {
                defect: Arc::new(defect),
                set_aside,
                not_set_aside,
            })
        }
        Err(e) => Err(e),
    }
}

fn add_stats(total: &mut ContentStats, more: &ContentStats) {
    total.verified += more.verified;
    total.crc_only += more.crc_only;
    total.missing += more.missing;
    total.corrupt += more.corrupt;
    total.set_aside += more.set_aside;
    total.cache_repaired += more.cache_repaired;
    total.bytes_read += more.bytes_read;
    total.bytes_decoded += more.bytes_decoded;
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the manifest records an `ok` verify recent enough for `reverify` to skip it. An
/// unreadable state or a task id whose start time does not parse is not skipped.
fn recently_ok(manifest: &BackupManifest, reverify: Reverify) -> bool {
    let max_days = match reverify {
        Reverify::All => return false,
        Reverify::NotOk => None,
        Reverify::OutdatedAfter { days } => Some(days),
    };
    let Ok(Some(state)) = manifest.verify_state() else {
        return false;
    };
    if state.state != VerifyOutcome::Ok {
        return false;
    }
    let Some(max_days) = max_days else {
        return true;
    };
    let Some(started) = upid_start_time(&state.upid) else {
        return false;
    };
    let now = jiff::Timestamp::now().as_second();
    (now - started) / 86_400 <= i64::from(max_days)
}

/// The start time (epoch seconds) of a PBS UPID:
/// `UPID:<node>:<pid>:<pstart>:<task id>:<start time>:<type>:<id>:<user>:`, numbers in hex.
fn upid_start_time(upid: &str) -> Option<i64> {
    let field = upid.strip_prefix("UPID:")?.split(':').nth(4)?;
    i64::from_str_radix(field, 16).ok()
}

fn refuse_record_without_content(options: &VerifyOptions) -> Result<()> {
    if options.record_state.is_some() && options.chunks != ChunkVerification::Content {
        return Err(Error::InvalidArgument(
            ArgumentProblem::RecordWithoutContent,
        ));
    }
    Ok(())
}

fn check_unlisted_blob(snapshot: &Snapshot, name: &str, result: &mut SnapshotVerification) {
    result.files_checked += 1;
    match snapshot.read_file(name) {
        Ok(raw) => {
            if let Err(source) = DataBlob::from_raw(raw) {
                result.problems.push(Problem::BlobCorrupt {
                    file: name.to_owned(),
                    source,
                });
            }
        }
        // Removed since the listing (a concurrent cleanup): nothing to check.
        Err(Error::NotFound { .. }) => {}
        Err(source) => result.problems.push(Problem::FileUnreadable {
            file: name.to_owned(),
            source,
        }),
    }
}

impl Snapshot {
    /// Verifies this snapshot's metadata; see [`DataStore::verify`].
    ///
    /// # Errors
    /// [`Error::NotFound`] if the snapshot does not exist.
    pub fn verify(&self, options: &VerifyOptions) -> Result<SnapshotVerification> {
        refuse_record_without_content(options)?;
        if !self.exists()? {
            return Err(Error::NotFound {
                what: "snapshot",
                path: self.relative_path(),
            });
        }
        Ok(self
            .store()
            .verify_one(self, options, &mut ChunkCache::new(self.store(), options)))
    }
}
