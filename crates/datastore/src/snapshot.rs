//! Snapshots: protection, blobs, the manifest, lock, destroy.

use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

use keepsake_backend::{BackendPath, EntryKind, KeepFilter, WriteMode};
use keepsake_hierarchy::{
    ArchiveKind, BackupDir, BackupNamespace, CLIENT_LOG_BLOB_NAME, MANIFEST_BLOB_NAME,
    PROTECTED_MARKER_FILENAME,
};
use keepsake_lock::{LockGuard, LockMode, LockTarget, MANIFEST_LOCK_TIMEOUT};
use keepsake_manifest::blob::{BlobCodec, Compression, DataBlob, MAX_RAW_BLOB_SIZE};
use keepsake_manifest::manifest::{BackupManifest, VerifyState};

use crate::error::{Error, Leftover, Result};
use crate::group::Group;
use crate::hold::HeldSnapshot;
use crate::info::BackupInfo;
use crate::store::{DataStore, owned_path, path};

/// A handle on a snapshot in a datastore (`vm/100/<time>` in a namespace). Cheap to clone; the
/// snapshot need not exist.
///
/// The datastore-side counterpart of [`keepsake_hierarchy::BackupDir`], which is only the name.
#[derive(Clone)]
pub struct Snapshot {
    store: DataStore,
    ns: BackupNamespace,
    dir: BackupDir,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Snapshot({}:{})",
            self.store.name(),
            self.relative_path()
        )
    }
}

impl Snapshot {
    pub(crate) fn new(store: DataStore, ns: BackupNamespace, dir: BackupDir) -> Self {
        Self { store, ns, dir }
    }

    /// The datastore.
    pub fn store(&self) -> &DataStore {
        &self.store
    }

    /// The namespace holding the snapshot's group.
    pub fn ns(&self) -> &BackupNamespace {
        &self.ns
    }

    /// The snapshot's name (group and time).
    pub fn dir(&self) -> &BackupDir {
        &self.dir
    }

    /// The snapshot's group.
    pub fn group(&self) -> Group {
        self.store.group(&self.ns, self.dir.group())
    }

    /// The snapshot folder relative to the datastore root.
    pub fn relative_path(&self) -> String {
        self.dir.relative_path(&self.ns)
    }

    pub(crate) fn file(&self, name: &str) -> Result<BackendPath> {
        owned_path(self.dir.file_path(&self.ns, name)?)
    }

    fn file_exists(&self, name: &str) -> Result<bool> {
        let file = self.file(name)?;
        self.store
            .backend()
            .exists(&file)
            .map_err(|e| Error::backend(file.as_str(), e))
    }

    /// Whether the snapshot folder exists.
    pub fn exists(&self) -> Result<bool> {
        let p = self.relative_path();
        self.store
            .backend()
            .exists(&path(&p)?)
            .map_err(|e| Error::backend(&p, e))
    }

    /// Whether the manifest exists (the backup finished).
    pub fn is_finished(&self) -> Result<bool> {
        self.file_exists(MANIFEST_BLOB_NAME)
    }

    /// Whether the `.protected` marker exists.
    pub fn is_protected(&self) -> Result<bool> {
        self.file_exists(PROTECTED_MARKER_FILENAME)
    }

    /// The backup files (`*.fidx`, `*.didx`, `*.blob`) and the protection flag, from one listing.
    pub fn info(&self) -> Result<BackupInfo> {
        let p = self.relative_path();
        let listing = self
            .store
            .backend()
            .list(&path(&p)?)
            .map_err(|e| Error::from_backend("snapshot", &p, e))?;
        let mut files = Vec::new();
        let mut protected = false;
        for entry in listing {
            let entry = entry.map_err(|e| Error::backend(&p, e))?;
            if entry.name == PROTECTED_MARKER_FILENAME {
                protected = true;
            } else if entry.kind == EntryKind::File && ArchiveKind::is_backup_file(&entry.name) {
                files.push(entry.name);
            }
        }
        Ok(BackupInfo {
            ns: self.ns.clone(),
            snapshot: self.dir.clone(),
            files,
            protected,
        })
    }

    /// Sets or clears protection, under the exclusive snapshot lock (taken without waiting).
    ///
    /// # Errors
    /// [`Error::NotFound`] if the snapshot does not exist; [`Error::Locked`] if it is in use.
    pub fn set_protected(&self, protected: bool) -> Result<()> {
        let guard = self.lock()?;
        let backend = self.store.backend();
        let marker = self.file(PROTECTED_MARKER_FILENAME)?;
        if let (true, Some(local)) = (backend.capabilities().own_authority, backend.host_local()) {
            // A local store: the marker made or removed in place, under the snapshot lock that
            // serializes every change of it (PBS's too). A missing folder is never made, so no
            // separate look is needed for a snapshot destroyed meanwhile.
            self.store.require_writable("protection change")?;
            self.store.check_fence(&guard)?;
            let missing = || Error::NotFound {
                what: "snapshot",
                path: self.relative_path(),
            };
            let result = if protected {
                local.create_marker(&marker).map(|_| ())
            } else {
                match local.remove_marker(&marker) {
                    Err(keepsake_backend::Error::NotFound { .. }) if self.exists()? => Ok(()),
                    other => other,
                }
            };
            return match result {
                Err(keepsake_backend::Error::NotFound { .. }) => Err(missing()),
                other => other.map_err(|e| Error::backend(marker.as_str(), e)),
            };
        }
        if !protected && backend.capabilities().own_authority {
            // A marker removed was in the snapshot, so it exists: ask only when there was none.
            self.store.check_fence(&guard)?;
            return match backend.remove_file(&marker) {
                Ok(()) => Ok(()),
                Err(keepsake_backend::Error::NotFound { .. }) if self.exists()? => Ok(()),
                Err(keepsake_backend::Error::NotFound { .. }) => Err(Error::NotFound {
                    what: "snapshot",
                    path: self.relative_path(),
                }),
                Err(e) => Err(Error::backend(marker.as_str(), e)),
            };
        }
        // Checked under the lock, in the authority (on S3 the bucket): a destroy that just
        // finished, here or on another host, must not leave a marker behind that makes the
        // snapshot exist again.
        let folder = path(&self.relative_path())?;
        let exists = self.exists()?
            && (backend.capabilities().own_authority
                || backend
                    .exists_authoritative(&folder)
                    .map_err(|e| Error::backend(folder.as_str(), e))?);
        if !exists {
            return Err(Error::NotFound {
                what: "snapshot",
                path: self.relative_path(),
            });
        }
        self.store.check_fence(&guard)?;
        let result = if protected {
            match self
                .store
                .backend()
                .write(&marker, b"", WriteMode::CreateOnly)
            {
                Err(keepsake_backend::Error::AlreadyExists { .. }) => Ok(()),
                other => other.map(|_| ()),
            }
        } else {
            match self.store.backend().remove_file(&marker) {
                Err(keepsake_backend::Error::NotFound { .. }) => Ok(()),
                other => other,
            }
        };
        result.map_err(|e| Error::backend(marker.as_str(), e))
    }

    /// Reads a blob file of the snapshot and decodes it (decrypting with the store's key).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Corrupt`] for a bad magic, CRC or payload, or a missing key.
    pub fn load_blob(&self, name: &str) -> Result<Vec<u8>> {
        let raw = self.read_file(name)?;
        with_codec(|codec, _| codec.decode(&raw, self.store.crypt_config())).map_err(|source| {
            Error::Corrupt {
                path: self.dir.file_path(&self.ns, name).unwrap_or_default(),
                source,
            }
        })
    }

    /// Reads a file of the snapshot as stored (raw bytes).
    ///
    /// A blob (`*.blob`) larger than PBS's largest ([`MAX_RAW_BLOB_SIZE`]) is refused before it
    /// is read, any other file past [`keepsake_backend::MAX_WHOLE_FILE_READ`]
    /// ([`keepsake_backend::Error::TooLarge`] inside [`Error::Backend`]): a hostile sparse file
    /// claims any size for free.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>> {
        let file = self.file(name)?;
        let backend = self.store.backend();
        let read = if name.ends_with(".blob") {
            backend.read_data_max(&file, MAX_RAW_BLOB_SIZE as u64)
        } else {
            backend.read_data(&file)
        };
        read.map_err(|e| Error::from_backend("file", file.as_str(), e))
    }

    /// Loads and parses the manifest (`index.json.blob`).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unfinished snapshot; [`Error::Corrupt`] if it does not decode or
    /// parse.
    pub fn load_manifest(&self) -> Result<BackupManifest> {
        let file = self.file(MANIFEST_BLOB_NAME)?;
        let data = self
            .store
            .backend()
            .read_data_max(&file, MAX_RAW_BLOB_SIZE as u64)
            .map_err(|e| Error::from_backend("manifest", file.as_str(), e))?;
        decode_manifest(&data).map_err(|source| self.corrupt_manifest(source))
    }

    fn corrupt_manifest(&self, source: keepsake_manifest::Error) -> Error {
        Error::Corrupt {
            path: self
                .dir
                .file_path(&self.ns, MANIFEST_BLOB_NAME)
                .unwrap_or_default(),
            source,
        }
    }

    /// The manifest and the version it was read at, from the authority (on S3 the bucket: a
    /// compare-and-swap must start from the current version, not from a cache copy).
    fn load_manifest_versioned(&self) -> Result<(BackupManifest, keepsake_backend::Version)> {
        let file = self.file(MANIFEST_BLOB_NAME)?;
        let contents = self
            .store
            .backend()
            .read_authoritative_max(&file, MAX_RAW_BLOB_SIZE as u64)
            .map_err(|e| Error::from_backend("manifest", file.as_str(), e))?;
        let manifest = decode_manifest(&contents.data).map_err(|source| Error::Corrupt {
            path: file.as_str().to_owned(),
            source,
        })?;
        Ok((manifest, contents.version))
    }

    /// Changes the manifest under the manifest lock (waiting up to PBS's 5 s): load, apply
    /// `change`, write back atomically as PBS writes it (sorted keys, compressed blob). On an S3
    /// datastore the bucket is written first. When the backend can compare-and-swap, the write
    /// only succeeds if nobody changed the file since it was read (a writer that ignores the lock
    /// cannot be overwritten silently).
    ///
    /// A compare-and-swap that loses (another host wrote in between, or the local cache held an
    /// older copy) is retried from a fresh read, up to 8 times, so `change` may run more than
    /// once and must only depend on the manifest it is given. In multi-host mode the lease's
    /// fencing token is checked before each write ([`Error::LeaseLost`]).
    ///
    /// A signed manifest stays valid: when `change` alters the signed part (files, type, id,
    /// time, unknown top-level keys), the manifest is signed again with the store's key; without
    /// a key the update is refused with [`Error::SignatureWouldBreak`], unless `change` cleared
    /// the signature itself ([`BackupManifest::clear_signature`]). Changes to `unprotected`
    /// (notes, verify state) never touch the signature.
    ///
    /// Returns the manifest as written. If `change` fails, nothing is written.
    pub fn update_manifest<F>(&self, mut change: F) -> Result<BackupManifest>
    where
        F: FnMut(&mut BackupManifest) -> Result<()>,
    {
        const RETRIES: usize = 8;
        self.store.require_writable("manifest update")?;
        let guard = self.lock_manifest(MANIFEST_LOCK_TIMEOUT)?;
        let mut attempt = 0;
        loop {
            let (mut manifest, version) = self.load_manifest_versioned()?;
            let signed_before = manifest
                .signature()
                .map(|_| manifest.canonical_json())
                .transpose()
                .map_err(|source| self.corrupt_manifest(source))?;
            change(&mut manifest)?;
            if let (Some(before), Some(_)) = (signed_before, manifest.signature()) {
                let after = manifest
                    .canonical_json()
                    .map_err(|source| self.corrupt_manifest(source))?;
                if after != before {
                    // The signed part changed: sign it again, or refuse to leave a signature
                    // that PBS would report as wrong.
                    let Some(key) = self.store.crypt_config() else {
                        return Err(Error::SignatureWouldBreak {
                            path: self.file(MANIFEST_BLOB_NAME)?.as_str().to_owned(),
                        });
                    };
                    manifest
                        .sign(key)
                        .map_err(|source| self.corrupt_manifest(source))?;
                }
            }
            self.store.check_fence(&guard)?;
            match self.write_manifest(&manifest, Some(version)) {
                Err(Error::Precondition { .. }) if attempt < RETRIES => attempt += 1,
                Err(e) => return Err(e),
                Ok(()) => return Ok(manifest),
            }
        }
    }

    /// Writes the manifest blob (create-only when `version` is `None`).
    pub(crate) fn write_manifest(
        &self,
        manifest: &BackupManifest,
        version: Option<keepsake_backend::Version>,
    ) -> Result<()> {
        let file = self.file(MANIFEST_BLOB_NAME)?;
        let blob = encode_manifest(manifest).map_err(|source| Error::Encode {
            path: file.as_str().to_owned(),
            source,
        })?;
        let mode = match version {
            None => WriteMode::CreateOnly,
            Some(v) if self.store.backend().capabilities().compare_and_swap => WriteMode::Update(v),
            Some(_) => WriteMode::Replace,
        };
        self.store
            .backend()
            .write(&file, blob.as_bytes(), mode)
            .map_err(|e| Error::from_backend("manifest", file.as_str(), e))?;
        Ok(())
    }

    /// The verify state recorded in the manifest.
    pub fn verify_state(&self) -> Result<Option<VerifyState>> {
        let file = self.dir.file_path(&self.ns, MANIFEST_BLOB_NAME)?;
        self.load_manifest()?
            .verify_state()
            .map_err(|source| Error::Corrupt { path: file, source })
    }

    /// Records a verify state in the manifest.
    pub fn set_verify_state(&self, state: &VerifyState) -> Result<()> {
        self.update_manifest(|m| {
            m.set_verify_state(Some(state));
            Ok(())
        })
        .map(|_| ())
    }

    /// The snapshot notes (the manifest's `unprotected.notes`).
    pub fn notes(&self) -> Result<Option<String>> {
        let file = self.dir.file_path(&self.ns, MANIFEST_BLOB_NAME)?;
        let manifest = self.load_manifest()?;
        manifest
            .notes()
            .map(|n| n.map(str::to_owned))
            .map_err(|source| Error::Corrupt { path: file, source })
    }

    /// Replaces (or with `None` clears) the snapshot notes.
    pub fn set_notes(&self, notes: Option<&str>) -> Result<()> {
        self.update_manifest(|m| {
            m.set_notes(notes);
            Ok(())
        })
        .map(|_| ())
    }

    /// Takes the snapshot lock exclusively, without waiting.
    pub fn lock(&self) -> Result<LockGuard> {
        self.store.lock(
            &LockTarget::snapshot(&self.ns, &self.dir),
            LockMode::Exclusive,
            Duration::ZERO,
        )
    }

    /// Takes the snapshot lock shared (readers, verify), without waiting.
    pub fn lock_shared(&self) -> Result<LockGuard> {
        self.store.lock(
            &LockTarget::snapshot(&self.ns, &self.dir),
            LockMode::Shared,
            Duration::ZERO,
        )
    }

    /// Takes the manifest lock, waiting up to `timeout`.
    pub fn lock_manifest(&self, timeout: Duration) -> Result<LockGuard> {
        self.store.lock(
            &LockTarget::manifest(&self.ns, &self.dir),
            LockMode::Exclusive,
            timeout,
        )
    }

    /// Destroys the snapshot in PBS's order: the snapshot lock (no wait) and the manifest lock
    /// (5 s); refuse if protected, asking the authority (on S3
    /// the bucket, not the cache); remove the files, the manifest first (so that an interrupted
    /// destroy leaves an unfinished snapshot, not a finished one with files missing); remove the
    /// lock files; then, if the group has no snapshot left and its lock can be had at once, remove
    /// the group's folder, owner and notes.
    ///
    /// On S3 only the objects listed in the bucket under the snapshot are deleted (never a prefix
    /// delete judged from the cache), and a `.protected` marker found there refuses the destroy.
    ///
    /// # Errors
    /// [`Error::Protected`]; [`Error::Locked`] (the snapshot is unchanged); [`Error::NotFound`].
    pub fn destroy(&self) -> Result<()> {
        let held = HeldSnapshot::take(self.clone())?;
        self.remove_now(Some(&held))?;
        held.release_gone();
        let group = self.group();
        if let Ok(guard) = group.lock() {
            // Best effort, as in PBS: a group that cannot be removed now stays.
            let _ = group.remove_folder(guard);
        }
        Ok(())
    }

    /// Whether the authority holds the `.protected` marker: the bucket on an S3 datastore (another
    /// host or cache may have protected the snapshot since this cache saw it), else the folder.
    pub fn is_protected_authoritative(&self) -> Result<bool> {
        let marker = self.file(PROTECTED_MARKER_FILENAME)?;
        Ok(self.is_protected()?
            || self
                .store
                .backend()
                .exists_authoritative(&marker)
                .map_err(|e| Error::backend(marker.as_str(), e))?)
    }

    /// Removes the snapshot's files while the caller holds its locks (`held`, whose fencing token
    /// is checked before each destructive request in multi-host mode), or forces. Protection is
    /// checked first, from the authority.
    pub(crate) fn remove_now(&self, held: Option<&HeldSnapshot>) -> Result<()> {
        let p = self.relative_path();
        let folder = path(&p)?;
        let backend = self.store.backend();
        let fence = || match held {
            Some(held) => self.store.check_fence(held.guard()),
            None => Ok(()),
        };
        let exists = self.exists()?
            || backend
                .exists_authoritative(&folder)
                .map_err(|e| Error::backend(&p, e))?;
        if !exists {
            return Err(Error::NotFound {
                what: "snapshot",
                path: p,
            });
        }
        if self.is_protected_authoritative()? {
            return Err(Error::Protected { path: p });
        }
        // The manifest goes first: a destroy interrupted after it leaves an unfinished snapshot
        // (which listings, verify and prune treat as an aborted backup), never a finished one
        // whose files are partly gone.
        fence()?;
        match backend.remove_file(&self.file(MANIFEST_BLOB_NAME)?) {
            Ok(()) | Err(keepsake_backend::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::backend(&p, e)),
        }
        // Exactly what the authority lists now, and only that: never a prefix delete.
        let files = match backend.list_files_authoritative(&folder) {
            Ok(files) => files,
            Err(keepsake_backend::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(Error::backend(&p, e)),
        };
        if files
            .iter()
            .any(|f| f.file_name() == Some(PROTECTED_MARKER_FILENAME))
        {
            // Protected between the check and the listing (a writer that ignores the locks).
            return Err(Error::Protected { path: p });
        }
        fence()?;
        backend
            .remove_files(&files)
            .map_err(|e| Error::backend(&p, e))?;
        if backend
            .remove_folder_if_empty(&folder)
            .map_err(|e| Error::backend(&p, e))?
        {
            return Ok(());
        }
        // Something is left. Files the authority lists now appeared after the listing (a writer
        // that ignores the locks): they are not ours to remove.
        let left = match backend.list_files_authoritative(&folder) {
            Ok(files) => files,
            Err(keepsake_backend::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(Error::backend(&p, e)),
        };
        if !backend.capabilities().empty_folders && left.is_empty() {
            // An object store has no folders to leave: it is gone.
            return Ok(());
        }
        if let Some(first) = left.first() {
            return Err(Error::LeftInPlace {
                path: p,
                left: Leftover::Files {
                    count: left.len(),
                    first: first.as_str().to_owned(),
                },
            });
        }
        // Only folders or links without files (never followed): the snapshot's own leftovers on
        // a filesystem, removed under the snapshot lock. (A cached S3 store got here only if a
        // key appeared in the bucket between two listings: never a prefix delete there.)
        if !backend.capabilities().atomic_rename {
            return Err(Error::LeftInPlace {
                path: p,
                left: Leftover::BucketChanged,
            });
        }
        match backend.remove_tree(&folder, &KeepFilter::nothing()) {
            Ok(_) | Err(keepsake_backend::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::backend(&p, e)),
        }
    }

    /// Removes every file of the snapshot that the manifest does not name, except the manifest,
    /// the client log and `.protected` (PBS removes `.protected` here; keepsake keeps it, since
    /// losing protection silently is worse than a stray marker). Returns the removed names.
    pub fn cleanup_unreferenced_files(&self, manifest: &BackupManifest) -> Result<Vec<String>> {
        let p = self.relative_path();
        let listing = self
            .store
            .backend()
            .list(&path(&p)?)
            .map_err(|e| Error::from_backend("snapshot", &p, e))?;
        let names: Vec<String> = listing
            .filter_map(|e| e.ok())
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.name)
            .collect();
        let mut removed = Vec::new();
        for name in names {
            let keep = name == MANIFEST_BLOB_NAME
                || name == CLIENT_LOG_BLOB_NAME
                || name == PROTECTED_MARKER_FILENAME
                || manifest.file(&name).is_some();
            if keep {
                continue;
            }
            let file = self.file(&name)?;
            if self.store.backend().remove_file(&file).is_ok() {
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

/// Above this many bytes a thread's JSON buffer is given back after use, so that one huge
/// manifest does not stay in memory for the thread's lifetime.
const KEPT_BUFFER: usize = 1 << 20;

thread_local! {
    /// One codec per thread: a zstd context costs about 15 µs to make, more than the rest of a
    /// manifest load (issue 22), and a datastore is used from many threads at once.
    static CODEC: RefCell<(BlobCodec, Vec<u8>)> = RefCell::new((BlobCodec::new(), Vec::new()));
}

/// Runs `f` with this thread's codec and a scratch buffer (or fresh ones, should `f` ever be
/// reached again from inside itself).
pub(crate) fn with_codec<R>(f: impl FnOnce(&mut BlobCodec, &mut Vec<u8>) -> R) -> R {
    CODEC.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => {
            let (codec, buffer) = &mut *kept;
            let result = f(codec, buffer);
            if buffer.capacity() > KEPT_BUFFER {
                *buffer = Vec::new();
            }
            result
        }
        Err(_) => f(&mut BlobCodec::new(), &mut Vec::new()),
    })
}

/// Decodes and parses a manifest blob with this thread's codec.
fn decode_manifest(raw: &[u8]) -> keepsake_manifest::Result<BackupManifest> {
    with_codec(|codec, json| BackupManifest::from_blob_bytes_with(codec, raw, json))
}

/// Encodes a manifest as PBS stores it ([`BackupManifest::to_blob`]) with this thread's codec.
fn encode_manifest(manifest: &BackupManifest) -> keepsake_manifest::Result<DataBlob> {
    let json = manifest.to_json();
    with_codec(|codec, _| codec.encode(json.as_bytes(), None, Compression::Zstd))
}
