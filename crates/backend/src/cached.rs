//! [`CachedBackend`]: PBS's S3 datastore, a bucket as the authority plus a local cache.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};

use crate::error::{Error, Result};
use crate::keep::KeepFilter;
use crate::layout::{ChunkDigest, NAMESPACE_MARKER};
use crate::local::LocalBackend;
use crate::object::{CONCURRENCY, ObjectBackend};
use crate::path::BackendPath;
use crate::requests::RequestCounts;
use crate::version::Version;
use crate::{
    Backend, Capabilities, ChunkInsert, FileContents, Listing, RemoveReport, Stat, WriteMode,
};

/// The top-level folders a refresh swaps in: the backup types of the root namespace and `ns`.
const SWAPPED_FOLDERS: [&str; 4] = ["vm", "ct", "host", "ns"];

/// PBS's S3 datastore: an object store is the authority, a local datastore directory the cache.
///
/// Implements the [`Backend`] contract like this (PBS's order):
/// - **Writes, removals and renames** go to the object store first, then to the cache. If the
///   object store refuses (a create-only or compare-and-swap conflict, an error), the cache is not
///   touched. If the cache then fails, the bucket is already changed and the error is returned:
///   [`CachedBackend::refresh`] repairs the cache.
/// - **Listings and stat** come from the cache, with the local filesystem's semantics (unsorted
///   listings; empty folders exist in the cache until the next refresh).
/// - **Reads** come from the cache. Their [`Version`] is the object's version in the bucket, so
///   that compare-and-swap works across several writers sharing the bucket. The backend
///   remembers, per file, which bucket version the cached bytes are; a read of a file it has no
///   such record for (first read after start, or the cache file was changed behind its back)
///   fetches the file from the bucket once and rewrites the cached copy. After a refresh every
///   file is recorded. A compare-and-swap that loses forgets the record, so the next read
///   fetches the winner's bytes.
pub struct CachedBackend {
    cache: LocalBackend,
    remote: ObjectBackend,
    /// Per file: the cache's content version and the bucket version those bytes are.
    versions: Mutex<HashMap<BackendPath, (Version, Version)>>,
    refreshes: AtomicU64,
}

impl fmt::Debug for CachedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedBackend")
            .field("cache", &self.cache)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// What [`CachedBackend::refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RefreshReport {
    /// Content objects found in the bucket.
    pub listed: u64,
    /// Objects downloaded into the cache.
    pub downloaded: u64,
    /// `.namespace` markers skipped (an empty namespace is not recreated locally).
    pub skipped_markers: u64,
    /// Keys skipped because no [`BackendPath`] can name them.
    pub skipped_invalid: u64,
    /// Requests the refresh sent to the object store.
    pub requests: RequestCounts,
}

impl CachedBackend {
    /// The datastore whose authority is `remote` and whose cache is `cache`.
    pub fn new(cache: LocalBackend, remote: ObjectBackend) -> Self {
        Self {
            cache,
            remote,
            versions: Mutex::new(HashMap::new()),
            refreshes: AtomicU64::new(0),
        }
    }

    /// The local cache.
    pub fn cache(&self) -> &LocalBackend {
        &self.cache
    }

    /// The object store (the authority).
    pub fn remote(&self) -> &ObjectBackend {
        &self.remote
    }

    fn versions(&self) -> std::sync::MutexGuard<'_, HashMap<BackendPath, (Version, Version)>> {
        // The map holds no invariant a panicking holder could break half-way.
        self.versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn forget_tree(&self, folder: &BackendPath) {
        self.versions().retain(|path, _| !path.starts_with(folder));
    }

    /// Rebuilds the cache from the bucket (PBS's `s3-refresh`).
    ///
    /// Downloads every content object except `.namespace` markers into a temporary folder
    /// inside the cache root (`.tmp_refresh_*`), then, for each of `vm`, `ct`, `host` and `ns`,
    /// removes the cached folder and moves the downloaded one into its place. The swap of the
    /// four folders is not atomic as a whole: PBS runs it in the `s3-refresh` maintenance mode,
    /// and callers should keep other users away likewise. Other top-level cache entries (such as
    /// `.chunks`, `.lock`, `.gc-status`) are left alone.
    ///
    /// # Errors
    /// Any listing, download or cache error; the temporary folder is removed, and the cache is
    /// untouched if the failure came before the swap.
    pub fn refresh(&self) -> Result<RefreshReport> {
        let before = self.remote.requests();
        let n = self.refreshes.fetch_add(1, Ordering::Relaxed);
        let temp =
            BackendPath::root().join(&format!(".tmp_refresh_{:x}_{n:x}", std::process::id()))?;
        self.cache.create_dir_all(&temp)?;
        let result = self.download_into(&temp).and_then(|(report, fetched)| {
            self.swap_in(&temp)?;
            Ok((report, fetched))
        });
        let cleanup = match self.cache.remove_tree(&temp, &KeepFilter::nothing()) {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        let (mut report, fetched) = result?;
        cleanup?;
        let mut versions = self.versions();
        versions.clear();
        versions.extend(fetched.into_iter().filter(|(path, _)| {
            path.components()
                .next()
                .is_some_and(|top| SWAPPED_FOLDERS.contains(&top))
        }));
        report.requests = self.remote.requests() - before;
        Ok(report)
    }

    /// Downloads the content objects into `temp`; returns the report and the versions seen.
    #[allow(clippy::type_complexity)]
    fn download_into(
        &self,
        temp: &BackendPath,
    ) -> Result<(RefreshReport, Vec<(BackendPath, (Version, Version))>)> {
        let store = std::sync::Arc::clone(self.remote.object_store());
        let layout = self.remote.layout().clone();
        let root = layout.content_root();
        let list_store = std::sync::Arc::clone(&store);
        let objects: Vec<ObjectMeta> = self.remote.block_on(async move {
            list_store
                .list(Some(&root))
                .try_collect()
                .await
                .map_err(|e| Error::backend(root.as_ref(), e))
        })??;
        let mut report = RefreshReport {
            listed: objects.len() as u64,
            ..RefreshReport::default()
        };
        let mut wanted = Vec::new();
        for meta in objects {
            match layout.path_of_content_key(&meta.location) {
                Some(path) if path.file_name() == Some(NAMESPACE_MARKER) => {
                    report.skipped_markers += 1;
                }
                Some(path) if !path.is_root() => wanted.push((meta.location, path)),
                _ => {
                    tracing::warn!(key = %meta.location, "refresh skips a key no path can name");
                    report.skipped_invalid += 1;
                }
            }
        }

        // Downloads run on the object store's runtime, writes on this thread: a bounded
        // channel between them keeps memory flat and the runtime's workers unblocked.
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Result<(BackendPath, Vec<u8>, Version)>>(2 * CONCURRENCY);
        self.remote.runtime().handle().spawn(async move {
            let mut downloads = futures::stream::iter(wanted)
                .map(|(key, path): (Path, BackendPath)| {
                    let store = std::sync::Arc::clone(&store);
                    async move {
                        let fetch = async {
                            let result = store.get(&key).await?;
                            let meta = result.meta.clone();
                            Ok::<_, object_store::Error>((result.bytes().await?, meta))
                        };
                        let (bytes, meta) =
                            fetch.await.map_err(|e| Error::backend(key.as_ref(), e))?;
                        Ok((
                            path,
                            Vec::from(bytes),
                            Version::of_object(meta.e_tag, meta.version),
                        ))
                    }
                })
                .buffer_unordered(CONCURRENCY);
            while let Some(item) = downloads.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });

        let mut fetched = Vec::new();
        loop {
            let (back, batch) = self.remote.block_on(async move {
                let mut batch = Vec::new();
                rx.recv_many(&mut batch, 2 * CONCURRENCY).await;
                (rx, batch)
            })?;
            rx = back;
            if batch.is_empty() {
                break;
            }
            for item in batch {
                let (path, data, remote_version) = item?;
                let local_version =
                    self.cache
                        .write(&temp.join_path(&path)?, &data, WriteMode::Replace)?;
                report.downloaded += 1;
                fetched.push((path, (local_version, remote_version)));
            }
        }
        Ok((report, fetched))
    }

    fn swap_in(&self, temp: &BackendPath) -> Result<()> {
        for name in SWAPPED_FOLDERS {
            let target = BackendPath::root().join(name)?;
            match self.cache.remove_tree(&target, &KeepFilter::nothing()) {
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            let downloaded = temp.join(name)?;
            match self.cache.rename(&downloaded, &target) {
                Ok(()) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Backend for CachedBackend {
    /// PBS's order: a chunk the cache holds (in full, or as an empty marker of an evicted chunk)
    /// is a duplicate without a request; otherwise a no-replace upload, then the cache copy.
    fn insert_chunk(&self, digest: &ChunkDigest, blob: &[u8]) -> Result<ChunkInsert> {
        let local = digest.local_path();
        if self.cache.exists(&local)? {
            return Ok(ChunkInsert::Duplicate);
        }
        let outcome = self.remote.insert_chunk(digest, blob)?;
        match self.cache.write(&local, blob, WriteMode::CreateOnly) {
            Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(outcome),
            Err(e) => Err(e),
        }
    }

    /// From the cache when it holds the chunk in full; otherwise (missing, or an empty marker)
    /// from the bucket, and the cache keeps a copy.
    fn read_chunk(&self, digest: &ChunkDigest) -> Result<Vec<u8>> {
        let local = digest.local_path();
        match self.cache.read(&local) {
            Ok(contents) if !contents.data.is_empty() => return Ok(contents.data),
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let data = self.remote.read_chunk(digest)?;
        if let Err(e) = self.cache.write(&local, &data, WriteMode::Replace) {
            tracing::warn!(path = %local, error = %e, "cannot cache a chunk");
        }
        Ok(data)
    }

    fn chunk_exists(&self, digest: &ChunkDigest) -> Result<bool> {
        if self.cache.exists(&digest.local_path())? {
            return Ok(true);
        }
        self.remote.chunk_exists(digest)
    }

    fn host_local(&self) -> Option<&LocalBackend> {
        Some(&self.cache)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            sorted_listing: false,
            empty_folders: true,
            atomic_rename: false,
            compare_and_swap: self.remote.capabilities().compare_and_swap,
        }
    }

    fn list(&self, folder: &BackendPath) -> Result<Listing<'_>> {
        self.cache.list(folder)
    }

    fn read(&self, file: &BackendPath) -> Result<FileContents> {
        if let Ok(local) = self.cache.read(file) {
            let recorded = self.versions().get(file).cloned();
            // Not a let-chain: the MSRV (1.85) predates them.
            if let Some((cached, remote)) = recorded {
                if cached == local.version {
                    return Ok(FileContents {
                        data: local.data,
                        version: remote,
                    });
                }
            }
        }
        let fresh = self.remote.read(file)?;
        match self.cache.write(file, &fresh.data, WriteMode::Replace) {
            Ok(local) => {
                self.versions()
                    .insert(file.clone(), (local, fresh.version.clone()));
            }
            // The bytes and version are right; only the cache stays behind.
            Err(e) => tracing::warn!(path = %file, error = %e, "cannot update the cache"),
        }
        Ok(fresh)
    }

    fn write(&self, file: &BackendPath, data: &[u8], mode: WriteMode) -> Result<Version> {
        let remote = match self.remote.write(file, data, mode) {
            Ok(version) => version,
            Err(e) => {
                if matches!(e, Error::Precondition { .. } | Error::AlreadyExists { .. }) {
                    self.versions().remove(file);
                }
                return Err(e);
            }
        };
        let local = self.cache.write(file, data, WriteMode::Replace)?;
        self.versions()
            .insert(file.clone(), (local, remote.clone()));
        Ok(remote)
    }

    fn remove_file(&self, file: &BackendPath) -> Result<()> {
        let remote = self.remote.remove_file(file);
        self.versions().remove(file);
        match remote {
            Ok(()) => match self.cache.remove_file(file) {
                Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            },
            // Gone from the bucket: a cached copy is stale, and removing it is still right.
            Err(Error::NotFound { .. }) => self.cache.remove_file(file),
            Err(e) => Err(e),
        }
    }

    fn remove_tree(&self, folder: &BackendPath, keep: &KeepFilter) -> Result<RemoveReport> {
        let remote = self.remote.remove_tree(folder, keep);
        self.forget_tree(folder);
        match remote {
            Ok(report) => match self.cache.remove_tree(folder, keep) {
                Ok(_) | Err(Error::NotFound { .. }) => Ok(report),
                Err(e) => Err(e),
            },
            Err(Error::NotFound { .. }) => self.cache.remove_tree(folder, keep),
            Err(e) => Err(e),
        }
    }

    fn rename(&self, from: &BackendPath, to: &BackendPath) -> Result<()> {
        crate::check_rename(from, to)?;
        if self.cache.exists(to)? {
            // The bucket may not know it, but the cache cannot take the tree.
            return Err(Error::AlreadyExists { path: to.clone() });
        }
        let remote = self.remote.rename(from, to);
        self.forget_tree(from);
        self.forget_tree(to);
        remote?;
        match self.cache.rename(from, to) {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn stat(&self, path: &BackendPath) -> Result<Stat> {
        self.cache.stat(path)
    }

    fn create_dir_all(&self, folder: &BackendPath) -> Result<()> {
        self.remote.create_dir_all(folder)?;
        self.cache.create_dir_all(folder)
    }
}
