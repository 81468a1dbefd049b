//! Metadata-level verification of snapshots, groups, namespaces and whole datastores.
//!
//! For every finished snapshot: the manifest decodes (blob magic and CRC, JSON) and names this
//! snapshot; every file it lists exists, with the size and checksum it records (blob: length and
//! SHA-256 of the stored file; index: archive size and index checksum); every blob's magic and
//! CRC hold (also blobs the manifest does not list, such as `client.log.blob`); every index passes
//! its own checks (header, length, checksum over its entries); every chunk an index references is
//! in the chunk store; and, when a key is given, the manifest's signature matches. Chunk contents
//! are not read (that is a data-level verify).
//!
//! Each snapshot gets a [`SnapshotVerification`] with typed [`Problem`]s; the outcome can be
//! recorded in the manifest's `verify_state`, as PBS's verify job does.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use keepsake_hierarchy::{
    ArchiveKind, BackupDir, BackupGroup, BackupNamespace, MANIFEST_BLOB_NAME,
};
use keepsake_manifest::blob::DataBlob;
use keepsake_manifest::crypt::CryptConfig;
use keepsake_manifest::index::{ChunkIndex, IndexFile};
use keepsake_manifest::manifest::{BackupManifest, CryptMode, VerifyOutcome, VerifyState};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
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
    /// Check that every referenced chunk exists (default: yes).
    pub check_chunks: bool,
    /// Called by [`DataStore::verify`] after each snapshot, in the order they are verified.
    pub progress: Option<VerifyProgress>,
}

impl fmt::Debug for VerifyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("key", &self.key.as_ref().map(|k| k.fingerprint().short()))
            .field("record_state", &self.record_state)
            .field("check_chunks", &self.check_chunks)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            key: None,
            record_state: None,
            check_chunks: true,
            progress: None,
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

    /// Records the outcome in each manifest under the task id `upid`.
    #[must_use]
    pub fn record_state(mut self, upid: impl Into<String>) -> Self {
        self.record_state = Some(upid.into());
        self
    }

    /// Whether to check that referenced chunks exist.
    #[must_use]
    pub fn check_chunks(mut self, check: bool) -> Self {
        self.check_chunks = check;
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
    /// Chunk references checked (each distinct chunk is asked about once per run).
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
}

impl VerifyReport {
    /// Whether the verify passed: at least one snapshot was verified, none failed, the walk had
    /// no error, and no interrupted operation waits in the journal. A verify that checked nothing
    /// (every snapshot in use or unfinished, or none in scope) does not pass.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
            && self.interrupted.is_empty()
            && self.failed().next().is_none()
            && self.verified() > 0
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

/// Chunk existence answers shared by every snapshot of one run.
type ChunkCache = HashMap<[u8; 32], bool>;

impl DataStore {
    /// Verifies the metadata of everything in `scope` and reports per snapshot: for every finished
    /// snapshot, the manifest decodes and names this snapshot; every file it lists exists with the
    /// size and checksum it records; blob magics and CRCs hold (also for blobs it does not list);
    /// every index passes its own checks; every referenced chunk is in the chunk store; and, with a
    /// key, the signature matches. Chunk contents are not read. Interrupted operations in the intent
    /// journal are reported ([`VerifyReport::interrupted`]), not completed: verify changes
    /// nothing unless [`VerifyOptions::record_state`] is set.
    ///
    /// Each snapshot is checked under its shared lock; one held exclusively (a running backup or
    /// move) is reported as [`SnapshotOutcome::InUse`]. Nothing is changed unless
    /// [`VerifyOptions::record_state`] is set.
    ///
    /// ```
    /// use keepsake_datastore::Encryption;
    /// use keepsake_datastore::{DataStore, SnapshotOutcome, VerifyOptions, VerifyScope};
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
    /// let report = store.verify(&VerifyScope::Store, &VerifyOptions::default().record_state("job-1"))?;
    /// assert!(report.is_ok());
    /// assert_eq!(report.snapshots[0].outcome, SnapshotOutcome::Ok);
    /// assert_eq!(snapshot.verify_state()?.unwrap().state, VerifyOutcome::Ok);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`] if the namespace or group of the scope does not exist; problems below
    /// that are in the report.
    pub fn verify(&self, scope: &VerifyScope, options: &VerifyOptions) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        match self.interrupted_intents() {
            Ok(interrupted) => report.interrupted = interrupted,
            Err(e) => report.errors.push(e),
        }
        let mut chunks = ChunkCache::new();
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
                if options.check_chunks {
                    check_chunks(snapshot.store(), &name, &index, chunks, result);
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
    chunks: &mut ChunkCache,
    result: &mut SnapshotVerification,
) {
    for i in 0..index.chunk_count() {
        let Some(digest) = index.digest(i) else {
            break;
        };
        result.chunks_checked += 1;
        let present = match chunks.get(digest) {
            Some(&present) => present,
            None => match store.chunk_exists(digest) {
                Ok(present) => {
                    chunks.insert(*digest, present);
                    present
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
        if !present {
            result.problems.push(Problem::ChunkMissing {
                file: file.to_owned(),
                digest: hex::encode(digest),
            });
        }
    }
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
        if !self.exists()? {
            return Err(Error::NotFound {
                what: "snapshot",
                path: self.relative_path(),
            });
        }
        Ok(self
            .store()
            .verify_one(self, options, &mut ChunkCache::new()))
    }
}
