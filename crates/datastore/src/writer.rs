//! Writing a new backup: what a downstream backup server needs to produce a snapshot PBS can read.

use keepsake_backend::{BackendPath, WriteMode};
use keepsake_hierarchy::{Authid, BackupDir, BackupTime, CLIENT_LOG_BLOB_NAME, MANIFEST_BLOB_NAME};
use keepsake_lock::LockGuard;
use keepsake_manifest::blob::{Compression, DataBlob};
use keepsake_manifest::index::{DynamicIndexWriter, FixedIndexWriter};
use keepsake_manifest::manifest::{
    BackupManifest, ChunkUploadStats, CryptMode, FileInfo, VerifyOutcome, check_archive_name,
};
use sha2::{Digest, Sha256};

use crate::chunks::Encryption;
use crate::error::{ArgumentProblem, Error, Result};
use crate::group::{Group, Unfinished};
use crate::process_lock::SharedProcessGuard;
use crate::snapshot::Snapshot;
use crate::store::path;

/// A backup in progress: holds the group lock and the new snapshot's lock until it is finished or
/// dropped. Files are written as they are added; [`BackupWriter::finish`] writes the manifest,
/// which is what makes the snapshot finished. Dropping an unfinished writer removes the snapshot.
///
/// ```
/// use keepsake_datastore::{DataStore, Encryption};
/// use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};
///
/// let dir = tempfile::tempdir()?;
/// let store = DataStore::builder("store1", dir.path().join("store1"))
///     .lock_root(dir.path().join("locks"))
///     .chunk_prefix_dirs(false)
///     .create()?;
/// let group = store.group(&BackupNamespace::root(), &"vm/100".parse::<BackupGroup>()?);
/// let owner: Authid = "root@pam".parse()?;
/// let mut backup = group.start_backup(&owner, BackupTime::from_epoch(1_717_600_000)?)?;
/// backup.add_blob("qemu-server.conf.blob", b"memory: 2048\n", Encryption::None)?;
/// let disk = vec![7u8; 200_000];
/// backup.add_fixed_archive("drive-scsi0.img.fidx", &disk, 65_536, Encryption::None)?;
/// let snapshot = backup.finish()?;
/// assert!(snapshot.is_finished()?);
/// assert_eq!(snapshot.load_manifest()?.files().len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
/// use keepsake_datastore::{Encryption, Unfinished};
pub struct BackupWriter {
    snapshot: Snapshot,
    manifest: BackupManifest,
    stats: ChunkUploadStats,
    finished: bool,
    // Released on drop, snapshot lock first.
    snapshot_lock: Option<LockGuard>,
    _group_lock: LockGuard,
    // PBS's shared process lock on `.lock` for the whole backup: no GC of another process runs
    // meanwhile, and one of this process lowers its cutoff to this backup's start. Released last.
    _process_hold: Option<SharedProcessGuard>,
}

impl Group {
    /// Starts a new backup in this group at `time`, as `auth_id`: makes the group with that owner if
    /// it is missing (else `auth_id` must be allowed to act as its owner), takes the group lock for
    /// the whole backup, and makes the snapshot folder under its own lock.
    ///
    /// # Errors
    /// [`Error::NotOwner`]; [`Error::TimeNotNewer`] unless `time` is newer than the last finished
    /// snapshot (one whose verification failed does not count, as in PBS);
    /// [`Error::AlreadyExists`] if the snapshot exists; [`Error::Locked`] if a backup runs;
    /// [`Error::ProcessLocked`] if another process runs a garbage collection (it holds PBS's
    /// exclusive process lock on `.lock`; the writer holds the shared one until it is finished
    /// or dropped, and every chunk it reuses gets its atime set to now, as in PBS).
    pub fn start_backup(&self, auth_id: &Authid, time: BackupTime) -> Result<BackupWriter> {
        // First, as PBS's backup session does: a GC running in another process refuses the
        // backup before anything is made.
        let process_hold = match self.store().process_lock()? {
            Some(lock) => Some(lock.shared(epoch_now())?),
            None => None,
        };
        let (owner, group_lock) = self.create_locked(auth_id)?;
        if !auth_id.may_act_as_owner(&owner) {
            return Err(Error::NotOwner {
                group: self.relative_path(),
                owner,
                auth_id: auth_id.clone(),
            });
        }
        if let Some(last) = self.last_backup(Unfinished::Skip)? {
            let snapshot = self.store().snapshot(self.ns(), &last.snapshot);
            let failed = matches!(
                snapshot.verify_state(),
                Ok(Some(state)) if state.state == VerifyOutcome::Failed
            );
            if !failed && time <= last.snapshot.time() {
                return Err(Error::TimeNotNewer {
                    group: self.relative_path(),
                    time,
                    last: last.snapshot.time(),
                });
            }
        }
        let dir = BackupDir::new(self.name().clone(), time);
        let snapshot = self.store().snapshot(self.ns(), &dir);
        let rel = snapshot.relative_path();
        if snapshot.exists()? {
            return Err(Error::AlreadyExists {
                what: "snapshot",
                path: rel,
            });
        }
        let folder = path(&rel)?;
        self.store()
            .backend()
            .create_dir_all(&folder)
            .map_err(|e| Error::backend(&rel, e))?;
        let snapshot_lock = match snapshot.lock() {
            Ok(lock) => lock,
            Err(e) => {
                // A reader that listed the new folder holds it: the backup does not start, and
                // the empty folder it made must not stay behind as an unfinished snapshot.
                let _ = self.store().backend().remove_folder_if_empty(&folder);
                return Err(e);
            }
        };
        Ok(BackupWriter {
            manifest: BackupManifest::new(&dir),
            snapshot,
            stats: ChunkUploadStats::default(),
            finished: false,
            snapshot_lock: Some(snapshot_lock),
            _group_lock: group_lock,
            _process_hold: process_hold,
        })
    }
}

impl BackupWriter {
    /// The snapshot being written.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<BackendPath> {
        let file = self.snapshot.file(name)?;
        self.snapshot
            .store()
            .backend()
            .write(&file, bytes, WriteMode::CreateOnly)
            .map_err(|e| Error::from_backend("file", file.as_str(), e))?;
        Ok(file)
    }

    fn crypt_mode(&self, encryption: Encryption) -> Result<CryptMode> {
        match encryption {
            Encryption::None => Ok(CryptMode::None),
            Encryption::StoreKey if self.snapshot.store().crypt_config().is_none() => {
                Err(Error::InvalidArgument(ArgumentProblem::NoKey))
            }
            Encryption::StoreKey => Ok(CryptMode::Encrypt),
        }
    }

    fn add_to_manifest(
        &mut self,
        name: &str,
        mode: CryptMode,
        size: u64,
        csum: [u8; 32],
    ) -> Result<()> {
        let info = FileInfo::new(name, mode, size, csum).map_err(|source| Error::Encode {
            path: name.to_owned(),
            source,
        })?;
        self.manifest
            .add_file(info)
            .map_err(|source| Error::Encode {
                path: name.to_owned(),
                source,
            })
    }

    /// Adds a blob file (`<name>.blob`), compressed when smaller and encrypted with the store's key
    /// with [`Encryption::StoreKey`]. Its manifest entry records the stored file's size and
    /// SHA-256, as PBS does.
    pub fn add_blob(&mut self, name: &str, data: &[u8], encryption: Encryption) -> Result<()> {
        check_name(name)?;
        let mode = self.crypt_mode(encryption)?;
        let crypt = match encryption {
            Encryption::StoreKey => self.snapshot.store().crypt_config(),
            Encryption::None => None,
        };
        let blob =
            DataBlob::encode(data, crypt, Compression::Zstd).map_err(|source| Error::Encode {
                path: name.to_owned(),
                source,
            })?;
        let raw = blob.as_bytes();
        self.write_file(name, raw)?;
        self.add_to_manifest(name, mode, raw.len() as u64, Sha256::digest(raw).into())
    }

    fn insert(&mut self, chunk: &[u8], encryption: Encryption) -> Result<[u8; 32]> {
        let inserted = self.snapshot.store().insert_chunk(chunk, encryption)?;
        self.stats.count += 1;
        self.stats.size += chunk.len() as u64;
        if inserted.duplicate {
            self.stats.duplicates += 1;
        } else {
            self.stats.compressed_size += inserted.encoded_size;
        }
        Ok(inserted.digest)
    }

    /// Adds a fixed-size chunk index (`<name>.fidx`, a disk image): cuts `data` into `chunk_size`
    /// pieces, inserts each into the chunk store (encrypted with the store's key with
    /// [`Encryption::StoreKey`]) and writes the index. For an image that does not fit in memory,
    /// [`BackupWriter::start_fixed_archive`] takes it chunk by chunk.
    pub fn add_fixed_archive(
        &mut self,
        name: &str,
        data: &[u8],
        chunk_size: u64,
        encryption: Encryption,
    ) -> Result<()> {
        let mut archive =
            self.start_fixed_archive(name, data.len() as u64, chunk_size, encryption)?;
        let step = usize::try_from(chunk_size).unwrap_or(usize::MAX).max(1);
        for chunk in data.chunks(step) {
            archive.push(chunk)?;
        }
        archive.finish()
    }

    /// Starts a fixed-size chunk index (`<name>.fidx`) of an image of `size` bytes that is given
    /// chunk by chunk ([`FixedArchive::push`]), so that memory stays bounded by one chunk
    /// whatever the image's size. Nothing is written for the archive until
    /// [`FixedArchive::finish`]; an archive dropped before it is not in the snapshot (its chunks
    /// stay in the chunk store, for garbage collection to judge).
    ///
    /// ```
    /// # use keepsake_datastore::{DataStore, Encryption};
    /// # use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = DataStore::builder("store1", dir.path().join("store1"))
    /// #     .lock_root(dir.path().join("locks"))
    /// #     .chunk_prefix_dirs(false)
    /// #     .create()?;
    /// # let group = store.group(&BackupNamespace::root(), &"vm/100".parse::<BackupGroup>()?);
    /// # let owner: Authid = "root@pam".parse()?;
    /// let mut backup = group.start_backup(&owner, BackupTime::from_epoch(1_717_600_000)?)?;
    /// // 150 KiB in chunks of 64 KiB: two full chunks, then the 22 KiB left.
    /// let mut disk = backup.start_fixed_archive(
    ///     "drive-scsi0.img.fidx", 150 * 1024, 65_536, Encryption::None,
    /// )?;
    /// for (i, len) in [65_536, 65_536, 22 * 1024].into_iter().enumerate() {
    ///     disk.push(&vec![i as u8; len])?;
    /// }
    /// disk.finish()?;
    /// let snapshot = backup.finish()?;
    /// assert_eq!(snapshot.load_manifest()?.files()[0].size(), 150 * 1024);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Encode`] for an invalid archive name or a chunk size of 0;
    /// [`Error::InvalidArgument`] ([`ArgumentProblem::NoKey`]) for encryption without a key.
    pub fn start_fixed_archive(
        &mut self,
        name: &str,
        size: u64,
        chunk_size: u64,
        encryption: Encryption,
    ) -> Result<FixedArchive<'_>> {
        check_name(name)?;
        let mode = self.crypt_mode(encryption)?;
        let ctime = self.snapshot.dir().time().epoch();
        let index =
            FixedIndexWriter::new(size, chunk_size, ctime).map_err(|source| Error::Encode {
                path: name.to_owned(),
                source,
            })?;
        Ok(FixedArchive {
            writer: self,
            name: name.to_owned(),
            mode,
            encryption,
            index,
            size,
            chunk_size,
            pushed: 0,
        })
    }

    /// Adds a dynamic chunk index (`<name>.didx`, e.g. a pxar archive) over the given chunks, in
    /// order; each is inserted into the chunk store (encrypted with the store's key with
    /// [`Encryption::StoreKey`]). The chunks may be borrowed (`&[u8]`) or owned (`Vec<u8>`, made
    /// as the iterator advances), so an archive of owned chunks needs memory for one chunk at a
    /// time; [`BackupWriter::start_dynamic_archive`] takes them one call at a time.
    pub fn add_dynamic_archive<C: AsRef<[u8]>>(
        &mut self,
        name: &str,
        chunks: impl IntoIterator<Item = C>,
        encryption: Encryption,
    ) -> Result<()> {
        let mut archive = self.start_dynamic_archive(name, encryption)?;
        for chunk in chunks {
            archive.push(chunk.as_ref())?;
        }
        archive.finish()
    }

    /// Starts a dynamic chunk index (`<name>.didx`) given chunk by chunk
    /// ([`DynamicArchive::push`]); as [`BackupWriter::start_fixed_archive`], nothing is written
    /// for the archive until [`DynamicArchive::finish`].
    ///
    /// # Errors
    /// [`Error::Encode`] for an invalid archive name; [`Error::InvalidArgument`]
    /// ([`ArgumentProblem::NoKey`]) for encryption without a key.
    pub fn start_dynamic_archive(
        &mut self,
        name: &str,
        encryption: Encryption,
    ) -> Result<DynamicArchive<'_>> {
        check_name(name)?;
        let mode = self.crypt_mode(encryption)?;
        let index = DynamicIndexWriter::new(self.snapshot.dir().time().epoch());
        Ok(DynamicArchive {
            writer: self,
            name: name.to_owned(),
            mode,
            encryption,
            index,
        })
    }

    /// The chunk upload statistics so far (what [`BackupWriter::finish`] records in the
    /// manifest): chunks inserted, their plain and stored sizes, and how many were duplicates.
    pub fn chunk_upload_stats(&self) -> ChunkUploadStats {
        self.stats
    }

    /// The manifest as it will be written, for callers that add `unprotected` data (notes, ...).
    pub fn manifest_mut(&mut self) -> &mut BackupManifest {
        &mut self.manifest
    }

    /// Writes the manifest (with the chunk upload statistics), which finishes the snapshot, and
    /// releases the locks. When a file was encrypted with the store's key, the manifest gets the
    /// key's fingerprint and is signed with it, as the PBS client does.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if no file was added (PBS refuses empty backups).
    pub fn finish(mut self) -> Result<Snapshot> {
        if self.manifest.files().is_empty() {
            return Err(Error::InvalidArgument(ArgumentProblem::EmptyBackup));
        }
        self.manifest.set_chunk_upload_stats(Some(self.stats));
        // As the PBS client does for a backup with a key: the key's fingerprint, and a
        // signature over the files (PBS checks it when the key is given).
        let encrypted = self
            .manifest
            .files()
            .iter()
            .any(|f| f.crypt_mode() != CryptMode::None);
        if let (true, Some(key)) = (encrypted, self.snapshot.store().crypt_config()) {
            if self.manifest.key_fingerprint().ok().flatten().is_none() {
                self.manifest.set_key_fingerprint(Some(key.fingerprint()));
            }
            self.manifest.sign(key).map_err(|source| Error::Encode {
                path: MANIFEST_BLOB_NAME.to_owned(),
                source,
            })?;
        }
        self.snapshot.write_manifest(&self.manifest, None)?;
        self.finished = true;
        Ok(self.snapshot.clone())
    }
}

impl BackupWriter {
    /// Writes a file of the snapshot as given (raw stored bytes: an index or a blob copied from
    /// another datastore), create-only. Sync uses it; the caller adds the file to nothing, as the
    /// manifest it will write with [`BackupWriter::finish_raw`] lists it already.
    pub(crate) fn add_raw_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        // The client log is a file of the snapshot that no manifest lists (its name is refused
        // as an archive name for that reason).
        if name != CLIENT_LOG_BLOB_NAME {
            check_name(name)?;
        }
        self.write_file(name, bytes).map(|_| ())
    }

    /// Writes `manifest` (a manifest blob's raw bytes, copied from another datastore) as the
    /// snapshot's manifest, which finishes it, and releases the locks. Nothing of it is changed:
    /// a signed manifest stays signed.
    pub(crate) fn finish_raw(mut self, manifest: &[u8]) -> Result<Snapshot> {
        self.write_file(MANIFEST_BLOB_NAME, manifest)?;
        self.finished = true;
        Ok(self.snapshot.clone())
    }
}

/// A fixed-size chunk index being written chunk by chunk: made by
/// [`BackupWriter::start_fixed_archive`], added to the snapshot by [`FixedArchive::finish`].
#[must_use = "an archive is only added to the snapshot by `finish`"]
pub struct FixedArchive<'w> {
    writer: &'w mut BackupWriter,
    name: String,
    mode: CryptMode,
    encryption: Encryption,
    index: FixedIndexWriter,
    size: u64,
    chunk_size: u64,
    pushed: u64,
}

impl FixedArchive<'_> {
    /// Inserts the next chunk of the image into the chunk store and appends its digest. Every
    /// chunk is `chunk_size` bytes long but the last, which holds what is left of the image.
    ///
    /// # Errors
    /// [`Error::Encode`] for a chunk of the wrong length or one past the image's end (the index
    /// is not changed); [`Error::Backend`] if the chunk cannot be stored.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        let left = self.size - self.pushed;
        let expected = left.min(self.chunk_size);
        if left == 0 || chunk.len() as u64 != expected {
            return Err(Error::Encode {
                path: self.name.clone(),
                source: keepsake_manifest::Error::InvalidInput {
                    reason: format!(
                        "chunk of {} bytes at offset {} of an image of {} bytes in chunks of {}",
                        chunk.len(),
                        self.pushed,
                        self.size,
                        self.chunk_size
                    ),
                },
            });
        }
        let digest = self.writer.insert(chunk, self.encryption)?;
        self.index.push(&digest).map_err(|source| Error::Encode {
            path: self.name.clone(),
            source,
        })?;
        self.pushed += expected;
        Ok(())
    }

    /// Writes the index file and adds it to the manifest.
    ///
    /// # Errors
    /// [`Error::Encode`] unless the whole image was pushed; [`Error::AlreadyExists`] or
    /// [`Error::Backend`] if the file cannot be written.
    pub fn finish(self) -> Result<()> {
        let bad = |source| Error::Encode {
            path: self.name.clone(),
            source,
        };
        let csum = self.index.index_csum();
        let bytes = self.index.finish().map_err(bad)?;
        self.writer.write_file(&self.name, &bytes)?;
        self.writer
            .add_to_manifest(&self.name, self.mode, self.size, csum)
    }
}

/// A dynamic chunk index being written chunk by chunk: made by
/// [`BackupWriter::start_dynamic_archive`], added to the snapshot by [`DynamicArchive::finish`].
#[must_use = "an archive is only added to the snapshot by `finish`"]
pub struct DynamicArchive<'w> {
    writer: &'w mut BackupWriter,
    name: String,
    mode: CryptMode,
    encryption: Encryption,
    index: DynamicIndexWriter,
}

impl DynamicArchive<'_> {
    /// Inserts the next chunk of the stream into the chunk store and appends its end offset and
    /// digest.
    ///
    /// # Errors
    /// [`Error::Encode`] if the stream would pass 2^64 - 1 bytes; [`Error::Backend`] if the chunk
    /// cannot be stored.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        let digest = self.writer.insert(chunk, self.encryption)?;
        self.index
            .push_chunk(chunk.len() as u64, &digest)
            .map_err(|source| Error::Encode {
                path: self.name.clone(),
                source,
            })
    }

    /// Writes the index file and adds it to the manifest.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] or [`Error::Backend`] if the file cannot be written.
    pub fn finish(self) -> Result<()> {
        let size = self.index.archive_size();
        let csum = self.index.index_csum();
        let bytes = self.index.finish().map_err(|source| Error::Encode {
            path: self.name.clone(),
            source,
        })?;
        self.writer.write_file(&self.name, &bytes)?;
        self.writer
            .add_to_manifest(&self.name, self.mode, size, csum)
    }
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        if !self.finished {
            // An aborted backup leaves nothing behind, as in PBS (a forced destroy: we hold the
            // snapshot lock ourselves). Best effort: an error here cannot be reported.
            let _ = self.snapshot.remove_now(None);
        }
        drop(self.snapshot_lock.take());
    }
}

/// Now, in seconds since the epoch (a clock before 1970 counts as 0).
pub(crate) fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn check_name(name: &str) -> Result<()> {
    check_archive_name(name)
        .map(|_| ())
        .map_err(|source| Error::Encode {
            path: name.to_owned(),
            source,
        })?;
    // PBS's GC walk skips hidden names: a hidden index would lose its chunks to it.
    if name.starts_with('.') {
        return Err(Error::InvalidArgument(ArgumentProblem::HiddenArchiveName {
            name: name.to_owned(),
        }));
    }
    Ok(())
}
