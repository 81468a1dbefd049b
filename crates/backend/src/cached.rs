//! [`CachedBackend`]: PBS's S3 datastore, a bucket as the authority plus a local cache.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};

use crate::check_size;
use crate::chunk::ChunkDigest;
use crate::error::{Error, Result};
use crate::in_use::BucketState;
use crate::keep::KeepFilter;
use crate::layout::NAMESPACE_MARKER;
use crate::local::{AttributeOutcome, Durability, LocalBackend, WriteOptions};
use crate::marker::{marker_path, read_marker};
use crate::object::{CONCURRENCY, ObjectBackend};
use crate::path::BackendPath;
use crate::record::{ATTRIBUTE, RemoteRecord};
use crate::requests::RequestCounts;
use crate::version::Version;
use crate::{
    Backend, Capabilities, ChunkInsert, FileContents, Listing, RemoveReport, Stat, WriteMode,
};

/// The top-level folders of content that a refresh brings in line with the bucket: the backup
/// types of the root namespace and `ns`.
const CONTENT_FOLDERS: [&str; 4] = ["vm", "ct", "host", "ns"];

/// The cache's own folder at its root (identity marker, refresh lock): not listed as content.
const BOOKKEEPING_FOLDER: &str = ".keepsake";

/// The lock file that keeps a cache refresh and the cache's writers apart, in the cache folder:
/// every change through a [`CachedBackend`] (any process) holds it shared, a refresh
/// exclusively.
pub const REFRESH_LOCK: &str = ".keepsake/refresh.lock";
/// How long a change waits for a running refresh to end.
const WRITER_WAIT: Duration = Duration::from_secs(60);
/// How long a refresh waits for the changes in progress to end (they are short; a refresh that
/// cannot start says who is busy rather than starving them).
const REFRESH_WAIT: Duration = Duration::from_secs(10);

/// A held refresh lock (shared or exclusive); closing the descriptor releases it.
struct RefreshLock {
    _fd: std::os::fd::OwnedFd,
}

impl CachedBackend {
    /// Takes the refresh lock shared (a change) or exclusively (a refresh), waiting up to `wait`.
    fn refresh_lock(&self, exclusive: bool, wait: Duration) -> Result<RefreshLock> {
        use rustix::fs::{FlockOperation, flock};
        let file = BackendPath::new(REFRESH_LOCK)?;
        let fd = self.cache.open_lock_file(&file)?;
        let operation = if exclusive {
            FlockOperation::NonBlockingLockExclusive
        } else {
            FlockOperation::NonBlockingLockShared
        };
        let deadline = std::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            match flock(&fd, operation) {
                Ok(()) => return Ok(RefreshLock { _fd: fd }),
                Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(Error::Busy {
                        path: self.cache.local_path(&file),
                        what: if exclusive {
                            "changes to this cache are in progress: the refresh did not start"
                        } else {
                            "the cache is being refreshed: the change did not start"
                        },
                    });
                }
                Err(e) => {
                    return Err(Error::Io {
                        path: self.cache.local_path(&file),
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// The shared refresh lock every change holds.
    fn changing(&self) -> Result<RefreshLock> {
        self.refresh_lock(false, self.waits.0)
    }
}

/// PBS's S3 datastore: an object store is the authority, a local datastore directory the cache.
///
/// Implements the [`Backend`] contract like this (PBS's order):
/// - **Writes, removals and renames** go to the object store first, then to the cache. If the
///   object store refuses (a create-only or compare-and-swap conflict, an error), the cache is not
///   written; on a conflict the cache copy is brought in line with the bucket instead (one GET),
///   so that a later decision from the cache sees what the bucket holds. If the cache fails after
///   the bucket was changed, the error is returned: [`CachedBackend::refresh`] repairs the cache.
/// - **Listings and stat** come from the cache, with the local filesystem's semantics (unsorted
///   listings; empty folders exist in the cache until the next refresh), without a request.
/// - **Reads** come from the cache, without a request. Their [`Version`] is the object's version
///   in the bucket, so that compare-and-swap works across several writers sharing the bucket.
///   Every cache file carries a record of the bucket version its bytes are: the extended
///   attribute `user.keepsake.remote` (the path, the SHA-256 of the bytes, the ETag and object
///   version), set on the temporary file before it is renamed into place, so bytes and record
///   change together and survive the process. A read whose bytes hash to the recorded hash
///   returns them with the recorded version. A file without a valid record (written by PBS or
///   by hand, changed behind the backend's back, moved) is fetched from the bucket once and
///   rewritten with its record. Where the filesystem refuses user attributes (some tmpfs), the
///   records are kept in memory instead, for the life of this value.
/// - **Authoritative methods** ([`Backend::read_authoritative`],
///   [`Backend::exists_authoritative`], [`Backend::list_files_authoritative`],
///   [`Backend::remove_folder_if_empty`]) ask the bucket; an authoritative read also repairs the
///   cache copy (rewrites it, or removes it when the bucket has no such file).
/// - **Identity**: the cache folder may name the bucket datastore it belongs to in
///   [`CACHE_MARKER`](crate::CACHE_MARKER) (see [`CacheIdentity`](crate::CacheIdentity));
///   [`CachedBackend::open`] refuses a folder that names
///   another one, [`CachedBackend::claim`] writes it.
pub struct CachedBackend {
    cache: LocalBackend,
    remote: ObjectBackend,
    /// Records of cache files whose filesystem refused the attribute.
    fallback: Mutex<HashMap<BackendPath, RemoteRecord>>,
    /// How long a change waits for a refresh, and a refresh for the changes in progress.
    waits: (Duration, Duration),
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
    /// Objects the cache held already (same ETag and size): not downloaded.
    pub unchanged: u64,
    /// Cache files removed because the bucket no longer has them.
    pub removed: u64,
    /// `.namespace` markers skipped (an empty namespace is not recreated locally).
    pub skipped_markers: u64,
    /// Keys skipped because no [`BackendPath`] can name them or they lie outside `vm`, `ct`,
    /// `host` and `ns` (PBS's refresh refuses them too).
    pub skipped_invalid: u64,
    /// Requests the refresh sent to the object store.
    pub requests: RequestCounts,
}

/// What a cache read saw, for the fetch that follows.
struct CacheCopy {
    /// The content version of the cache file.
    content: Version,
    /// The bucket version its record names, if it has a valid one.
    recorded: Option<Version>,
}

impl CachedBackend {
    /// Keeps a chunk fetched from the bucket in the cache, in place of what the cache held (a
    /// marker, nothing, or a damaged copy). A cache that cannot take it costs a later fetch,
    /// nothing more: a warning, not an error.
    fn keep_chunk(&self, digest: &ChunkDigest, data: &[u8]) {
        let local = digest.local_path();
        if let Err(e) = self.cache.write(&local, data, WriteMode::Replace) {
            tracing::warn!(path = %local, error = %e, "cannot cache a chunk");
        }
    }

    /// The datastore whose authority is `remote` and whose cache is `cache`, without checking
    /// the cache folder's marker (see [`CachedBackend::open`], which does). For callers that
    /// checked already, and for tests.
    pub fn new(cache: LocalBackend, remote: ObjectBackend) -> Self {
        Self {
            cache,
            remote,
            fallback: Mutex::new(HashMap::new()),
            waits: (WRITER_WAIT, REFRESH_WAIT),
        }
    }

    /// How long a change waits for a running refresh of this cache (default 60 s), and a refresh
    /// for the changes in progress (default 10 s), before each gives up with [`Error::Busy`].
    pub fn with_lock_waits(mut self, change: Duration, refresh: Duration) -> Self {
        self.waits = (change, refresh);
        self
    }

    /// The datastore whose authority is `remote` and whose cache is `cache`, if the cache folder
    /// may be its cache: its marker ([`CACHE_MARKER`](crate::CACHE_MARKER)) names `remote`'s
    /// [`identity`](ObjectBackend::identity), or it has none (PBS's own caches have none; opening
    /// never writes one, see [`CachedBackend::claim`]). Sends no request.
    ///
    /// # Errors
    /// [`Error::CacheMismatch`] if the marker names another bucket datastore; [`Error::Io`] if
    /// it cannot be read or parsed.
    pub fn open(cache: LocalBackend, remote: ObjectBackend) -> Result<Self> {
        let backend = Self::new(cache, remote);
        backend.check_identity()?;
        Ok(backend)
    }

    /// Marks the cache folder as this bucket datastore's cache: writes [`CACHE_MARKER`](crate::CACHE_MARKER)
    /// (atomically) unless it names this datastore already. For the commands that write a
    /// cache: creating a datastore, and [`CachedBackend::refresh`] (which calls it).
    ///
    /// # Errors
    /// [`Error::CacheMismatch`] if the marker names another bucket datastore (it is never
    /// overwritten: remove it by hand to reuse the folder); cache errors.
    pub fn claim(&self) -> Result<()> {
        if self.check_identity()? {
            return Ok(());
        }
        let marker = marker_path()?;
        let mut json =
            serde_json::to_vec_pretty(self.remote.identity()).map_err(|e| Error::Io {
                path: self.cache.local_path(&marker),
                source: e.into(),
            })?;
        json.push(b'\n');
        self.cache
            .write(&marker, &json, WriteMode::Replace)
            .map(drop)
    }

    /// Whether the marker names this datastore (`false`: there is none).
    ///
    /// # Errors
    /// [`Error::CacheMismatch`] if it names another one.
    fn check_identity(&self) -> Result<bool> {
        let expected = self.remote.identity();
        match read_marker(&self.cache)? {
            None => Ok(false),
            Some(found) if found == *expected => Ok(true),
            Some(found) => Err(Error::CacheMismatch {
                cache: self.cache.root().to_path_buf(),
                expected: Box::new(expected.clone()),
                found: Box::new(found),
            }),
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

    fn fallback(&self) -> MutexGuard<'_, HashMap<BackendPath, RemoteRecord>> {
        // The map holds no invariant a panicking holder could break half-way.
        self.fallback.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forget_tree(&self, folder: &BackendPath) {
        self.fallback().retain(|path, _| !path.starts_with(folder));
    }

    /// Drops what is known about `file`'s bucket version, so that its next read asks the bucket.
    fn forget(&self, file: &BackendPath) {
        self.fallback().remove(file);
        match self.cache.remove_attribute(file, ATTRIBUTE) {
            Ok(()) | Err(Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(path = %file, error = %e, "cannot drop a cache record"),
        }
    }

    /// Writes `data`, which is `remote` in the bucket, into the cache at `file` with its record.
    fn store_in_cache(
        &self,
        file: &BackendPath,
        data: &[u8],
        remote: &Version,
        mode: WriteMode,
        durability: Durability,
    ) -> Result<()> {
        let record = RemoteRecord::new(file.clone(), data, remote.clone());
        let value = record.encode();
        let options = WriteOptions {
            attribute: value.as_deref().map(|value| (ATTRIBUTE, value)),
            durability,
        };
        let (_, outcome) = self.cache.write_with(file, data, mode, &options)?;
        let mut fallback = self.fallback();
        if outcome == AttributeOutcome::Set {
            fallback.remove(file);
        } else {
            fallback.insert(file.clone(), record);
        }
        Ok(())
    }

    /// The bucket version of the cache file `file` holding `content`, from its attribute or the
    /// in-memory records; `None` if neither holds a valid record.
    fn recorded_version(
        &self,
        file: &BackendPath,
        content: &Version,
        attribute: Option<&[u8]>,
    ) -> Option<Version> {
        if let Some(record) = attribute.and_then(RemoteRecord::decode) {
            if let Some(version) = record.version_for(file, content) {
                return Some(version.clone());
            }
        }
        self.fallback()
            .get(file)
            .and_then(|record| record.version_for(file, content))
            .cloned()
    }

    /// Reads the cache copy of `file` with its recorded bucket version; `None` if there is no
    /// readable copy.
    fn cache_copy(&self, file: &BackendPath) -> Option<(FileContents, CacheCopy)> {
        let (local, attribute) = self.cache.read_with_attribute(file, ATTRIBUTE).ok()?;
        let recorded = self.recorded_version(file, &local.version, attribute.as_deref());
        let copy = CacheCopy {
            content: local.version.clone(),
            recorded,
        };
        Some((local, copy))
    }

    /// Reads `file` from the bucket and brings the cache copy (`seen`, as read before) in line:
    /// rewritten with its record. A file the bucket does not have is `NotFound`, and its cache
    /// copy stays (a read never removes). A copy another writer changed since `seen` is left to
    /// that writer.
    fn fetch(&self, file: &BackendPath, seen: Option<CacheCopy>) -> Result<FileContents> {
        let fresh = match self.remote.read(file) {
            Ok(fresh) => fresh,
            // A read never removes anything, not even a copy the bucket does not hold: the cache
            // may be PBS's (no identity marker) and the bucket the wrong one. Writes, removals
            // and refresh bring the cache in line.
            Err(Error::NotFound { .. }) => {
                self.fallback().remove(file);
                return Err(Error::NotFound { path: file.clone() });
            }
            Err(e) => return Err(e),
        };
        let mode = match seen {
            Some(copy)
                if copy.recorded.as_ref() == Some(&fresh.version)
                    && copy.content == Version::of_content(&fresh.data) =>
            {
                // The cache holds exactly this already.
                return Ok(fresh);
            }
            // Only over the copy that was looked at: never over a newer one another writer
            // put there meanwhile.
            Some(copy) => WriteMode::Update(copy.content),
            None => WriteMode::CreateOnly,
        };
        match self.store_in_cache(
            file,
            &fresh.data,
            &fresh.version,
            mode,
            Durability::PerSyncLevel,
        ) {
            Ok(()) | Err(Error::Precondition { .. } | Error::AlreadyExists { .. }) => {}
            // The bytes and version are right; only the cache stays behind.
            Err(e) => tracing::warn!(path = %file, error = %e, "cannot update the cache"),
        }
        Ok(fresh)
    }

    /// After the bucket refused a conditional write because it holds something else: brings the
    /// cache copy in line with the bucket, so that decisions taken from the cache see what the
    /// bucket has (and the next read returns the winner's bytes and version).
    fn repair(&self, file: &BackendPath) {
        match self.read_authoritative(file) {
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(path = %file, error = %e, "cannot repair the cache after a conflict");
                self.forget(file);
            }
        }
    }

    /// Brings the cache in line with the bucket (PBS's `s3-refresh`), incrementally.
    ///
    /// 1. One listing of the bucket's content (`<store>/.cnt/`, a request per 1,000 keys).
    /// 2. Below `vm`, `ct`, `host` and `ns` of the cache: every file the bucket does not have
    ///    goes (links and other non-files too), then the folders left empty. `.namespace`
    ///    markers are never downloaded (an empty namespace is not recreated locally, as in PBS);
    ///    a cached marker the bucket still has stays. Nothing else of the cache is touched:
    ///    `.chunks`, `.lock`, `.keepsake` and every other top-level entry stay.
    /// 3. An object whose cache file exists with a record of the same ETag and the same size is
    ///    not downloaded ([`RefreshReport::unchanged`]); the others are, 16 at a time, and
    ///    written in place (each atomically, with its record) without a per-file fsync.
    /// 4. One `syncfs` of the cache's filesystem (unless its [`SyncLevel`](crate::SyncLevel) is `None`), then
    ///    [`CachedBackend::claim`].
    ///
    /// Readers during a refresh see each file whole, old or new, but a mix of refreshed and
    /// unrefreshed files: PBS runs it in the `s3-refresh` maintenance mode, and callers should
    /// keep other users away likewise. A refresh that fails part-way leaves the files it
    /// refreshed (each whole, with its record); running it again finishes the work. After a
    /// crash before the final sync, a file may be short or empty: its record's size or hash no
    /// longer matches, so the next refresh downloads it again and reads fetch it.
    ///
    /// # Errors
    /// [`Error::CacheMismatch`] if the cache folder belongs to another bucket datastore (nothing
    /// is changed); listing, download and cache errors.
    pub fn refresh(&self) -> Result<RefreshReport> {
        self.check_identity()?;
        // No change through any backend on this cache runs meanwhile.
        let _exclusive = self.refresh_lock(true, self.waits.1)?;
        let before = self.remote.requests();
        let objects = self.list_content()?;
        let layout = self.remote.layout();
        let mut report = RefreshReport {
            listed: objects.len() as u64,
            ..RefreshReport::default()
        };
        let mut in_bucket = HashSet::with_capacity(objects.len());
        let mut wanted = Vec::with_capacity(objects.len());
        for meta in objects {
            match layout.path_of_content_key(&meta.location) {
                Some(path) if !in_content_folder(&path) => {
                    tracing::warn!(key = %meta.location, "refresh skips a key outside the content folders");
                    report.skipped_invalid += 1;
                }
                Some(path) if path.file_name() == Some(NAMESPACE_MARKER) => {
                    report.skipped_markers += 1;
                    in_bucket.insert(path);
                }
                Some(path) => {
                    in_bucket.insert(path.clone());
                    wanted.push((meta, path));
                }
                None => {
                    tracing::warn!(key = %meta.location, "refresh skips a key no path can name");
                    report.skipped_invalid += 1;
                }
            }
        }

        let in_bucket = Arc::new(in_bucket);
        for top in CONTENT_FOLDERS {
            let folder = BackendPath::root().join(top)?;
            let known = Arc::clone(&in_bucket);
            let keep = KeepFilter::nothing().or_predicate(move |path| known.contains(path));
            match self.cache.remove_tree(&folder, &keep) {
                Ok(removed) => report.removed += removed.removed,
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.fallback()
            .retain(|path, _| !in_content_folder(path) || in_bucket.contains(path));

        let mut download = Vec::new();
        for (meta, path) in wanted {
            if self.is_current(&path, &meta) {
                report.unchanged += 1;
            } else {
                download.push((meta.location, path));
            }
        }
        report.downloaded = self.download(download)?;
        self.cache.sync_filesystem()?;
        self.claim()?;
        report.requests = self.remote.requests() - before;
        Ok(report)
    }

    /// Every content object of the bucket (one listing, paged).
    fn list_content(&self) -> Result<Vec<ObjectMeta>> {
        let store = Arc::clone(self.remote.object_store());
        let root = self.remote.layout().content_root();
        self.remote.block_on(async move {
            store
                .list(Some(&root))
                .try_collect()
                .await
                .map_err(|e| Error::backend(root.as_ref(), e))
        })?
    }

    /// Whether the cache file at `path` is the listed object already: a record of the same ETag
    /// and the same size.
    pub(crate) fn is_current(&self, path: &BackendPath, meta: &ObjectMeta) -> bool {
        let Some(e_tag) = meta.e_tag.as_deref() else {
            return false;
        };
        let Ok((size, attribute)) = self.cache.stat_with_attribute(path, ATTRIBUTE) else {
            return false;
        };
        if size != meta.size {
            return false;
        }
        let record = attribute
            .as_deref()
            .and_then(RemoteRecord::decode)
            .filter(|record| record.is_about(path))
            .or_else(|| self.fallback().get(path).cloned());
        record.is_some_and(|record| record.is_about(path) && record.e_tag() == Some(e_tag))
    }

    /// The bytes of the cache copy of `file` if they are the bucket's version `e_tag`: its record
    /// names that ETag and was made for exactly these bytes (SHA-256), so a copy rewritten in
    /// place, even with the same size and attributes, is not taken for it. `None` otherwise:
    /// read the bucket's.
    pub fn cached_copy_of(&self, file: &BackendPath, e_tag: &str) -> Option<Vec<u8>> {
        let (local, attribute) = self.cache.read_with_attribute(file, ATTRIBUTE).ok()?;
        let recorded = self.recorded_version(file, &local.version, attribute.as_deref())?;
        (recorded.e_tag() == Some(e_tag)).then_some(local.data)
    }

    /// Downloads `objects` into the cache (in place, records included, no per-file fsync);
    /// returns how many.
    fn download(&self, objects: Vec<(Path, BackendPath)>) -> Result<u64> {
        let store = Arc::clone(self.remote.object_store());
        // Downloads run on the object store's runtime, writes on this thread: a bounded
        // channel between them keeps memory flat and the runtime's workers unblocked.
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Result<(BackendPath, Vec<u8>, Version)>>(2 * CONCURRENCY);
        self.remote.runtime().handle().spawn(async move {
            let mut downloads = futures::stream::iter(objects)
                .map(|(key, path): (Path, BackendPath)| {
                    let store = Arc::clone(&store);
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

        let mut downloaded = 0;
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
                let (path, data, remote) = item?;
                self.store_in_cache(
                    &path,
                    &data,
                    &remote,
                    WriteMode::Replace,
                    Durability::Deferred,
                )?;
                downloaded += 1;
            }
        }
        Ok(downloaded)
    }
}

/// Whether `path` lies below one of the [`CONTENT_FOLDERS`].
fn in_content_folder(path: &BackendPath) -> bool {
    path.depth() > 1
        && path
            .components()
            .next()
            .is_some_and(|top| CONTENT_FOLDERS.contains(&top))
}

impl Backend for CachedBackend {
    /// The bucket's, never the cache's.
    fn bucket_state(&self) -> Result<Option<BucketState>> {
        self.remote.bucket_state()
    }

    fn mark_in_use(&self, hostname: &str) -> Result<()> {
        self.remote.mark_in_use(hostname)
    }

    /// PBS's order: a chunk the cache holds (in full, or as an empty marker of an evicted chunk)
    /// is a duplicate without a request; otherwise a no-replace upload, then the cache copy.
    fn insert_chunk(&self, digest: &ChunkDigest, blob: &[u8]) -> Result<ChunkInsert> {
        let _changing = self.changing()?;
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
        self.keep_chunk(digest, &data);
        Ok(data)
    }

    /// The bucket's copy; the cache keeps it in place of what it held.
    fn read_chunk_authoritative(&self, digest: &ChunkDigest) -> Result<Vec<u8>> {
        let data = self.remote.read_chunk(digest)?;
        self.keep_chunk(digest, &data);
        Ok(data)
    }

    /// In the bucket first (the authority), then the cache's copy or marker goes to the same
    /// name, so the cache does not serve the corrupt bytes again.
    fn quarantine_chunk(&self, digest: &ChunkDigest) -> Result<BackendPath> {
        let _changing = self.changing()?;
        let bad = self.remote.quarantine_chunk(digest)?;
        if self.cache.exists(&bad)? {
            self.cache.remove_file(&bad)?;
        }
        match self.cache.rename(&digest.local_path(), &bad) {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(bad),
            Err(e) => Err(e),
        }
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

    /// The bucket's listing (the cache is not asked).
    fn list_bucket_chunks(
        &self,
        each: &mut dyn FnMut(&[ChunkDigest]) -> Result<()>,
    ) -> Result<Option<u64>> {
        self.remote.list_bucket_chunks(each)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            sorted_listing: false,
            empty_folders: true,
            atomic_rename: false,
            compare_and_swap: self.remote.capabilities().compare_and_swap,
            own_authority: false,
        }
    }

    /// The cache's listing, less the cache's own bookkeeping (`.keepsake/` at the root: the
    /// identity marker and the refresh lock), which is not datastore content.
    fn list(&self, folder: &BackendPath) -> Result<Listing<'_>> {
        let listing = self.cache.list(folder)?;
        if !folder.is_root() {
            return Ok(listing);
        }
        Ok(Box::new(listing.filter(
            |entry| !matches!(entry, Ok(e) if e.name == BOOKKEEPING_FOLDER),
        )))
    }

    fn read(&self, file: &BackendPath) -> Result<FileContents> {
        let seen = match self.cache_copy(file) {
            Some((local, copy)) => match copy.recorded {
                Some(version) => {
                    return Ok(FileContents {
                        data: local.data,
                        version,
                    });
                }
                None => Some(copy),
            },
            None => None,
        };
        self.fetch(file, seen)
    }

    /// A cache copy larger than `max` is not read (one `stat` first): the bucket's copy is,
    /// and refused in turn when it is too large. (A hostile sparse cache file claims any size.)
    fn read_data_max(&self, file: &BackendPath, max: u64) -> Result<Vec<u8>> {
        let cached_size = self.cache.stat(file).ok().and_then(|stat| stat.size);
        let contents = match cached_size {
            Some(size) if size > max => {
                let seen = None;
                self.fetch(file, seen)?
            }
            _ => self.read(file)?,
        };
        check_size(file, contents.data.len(), max)?;
        Ok(contents.data)
    }

    /// One GET; the cache copy is rewritten with its record (not when it holds exactly that
    /// already); a file the bucket does not have is `NotFound` (its cache copy stays).
    fn read_authoritative(&self, file: &BackendPath) -> Result<FileContents> {
        let seen = self.cache_copy(file).map(|(_, copy)| copy);
        self.fetch(file, seen)
    }

    /// The bucket: a HEAD for a file, then a listing limited to one key for a folder.
    fn exists_authoritative(&self, path: &BackendPath) -> Result<bool> {
        self.remote.exists_authoritative(path)
    }

    fn list_files_authoritative(&self, folder: &BackendPath) -> Result<Vec<BackendPath>> {
        self.remote.list_files_authoritative(folder)
    }

    fn write(&self, file: &BackendPath, data: &[u8], mode: WriteMode) -> Result<Version> {
        let _changing = self.changing()?;
        let create_only = matches!(mode, WriteMode::CreateOnly);
        match self.remote.write(file, data, mode) {
            Ok(remote) => {
                self.store_in_cache(
                    file,
                    data,
                    &remote,
                    WriteMode::Replace,
                    Durability::PerSyncLevel,
                )?;
                Ok(remote)
            }
            Err(e @ Error::AlreadyExists { .. }) if create_only => {
                self.repair(file);
                Err(e)
            }
            Err(e @ Error::Precondition { .. }) => {
                self.repair(file);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn remove_file(&self, file: &BackendPath) -> Result<()> {
        let _changing = self.changing()?;
        let remote = self.remote.remove_file(file);
        self.fallback().remove(file);
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

    /// The bucket first; if that fails, the cache is not touched (its copies show more than
    /// the bucket holds until a refresh, never less). Then each cache copy.
    fn remove_files(&self, files: &[BackendPath]) -> Result<RemoveReport> {
        let _changing = self.changing()?;
        let report = self.remote.remove_files(files)?;
        {
            let mut fallback = self.fallback();
            for file in files {
                fallback.remove(file);
            }
        }
        self.cache.remove_files(files)?;
        Ok(report)
    }

    /// Asks the bucket (one listing limited to one key); only if it has nothing below the
    /// folder, the cache folder goes with whatever stale copies are in it. Callers hold the lock
    /// that keeps writers out of the folder, as for any removal.
    fn remove_folder_if_empty(&self, folder: &BackendPath) -> Result<bool> {
        let _changing = self.changing()?;
        if !self.remote.remove_folder_if_empty(folder)? {
            return Ok(false);
        }
        self.forget_tree(folder);
        match self.cache.remove_tree(folder, &KeepFilter::nothing()) {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn remove_tree(&self, folder: &BackendPath, keep: &KeepFilter) -> Result<RemoveReport> {
        let _changing = self.changing()?;
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

    /// Records move with the cache files but name their old path, so moved files are fetched
    /// once on their next read (a copied object may have another version).
    fn rename(&self, from: &BackendPath, to: &BackendPath) -> Result<()> {
        let _changing = self.changing()?;
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
        let _changing = self.changing()?;
        self.remote.create_dir_all(folder)?;
        self.cache.create_dir_all(folder)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;
    use crate::local::SyncLevel;

    fn p(path: &str) -> BackendPath {
        path.parse().unwrap()
    }

    /// Where the cache's filesystem refuses user attributes, records live in memory: reads
    /// need no request within the process, one per file after a restart; refreshes skip what
    /// they downloaded themselves.
    #[test]
    fn without_attributes_records_live_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Arc::new(InMemory::new());
        let open = || {
            let cache = LocalBackend::open(dir.path(), SyncLevel::None)
                .unwrap()
                .refusing_attributes();
            let remote = ObjectBackend::with_store(bucket.clone(), "store1").unwrap();
            CachedBackend::open(cache, remote).unwrap()
        };
        let files = ["vm/100/owner", "vm/100/notes", "ct/7/owner"];
        let first = open();
        for file in files {
            first
                .write(&p(file), file.as_bytes(), WriteMode::Replace)
                .unwrap();
        }
        let before = first.remote().requests();
        for file in files {
            assert_eq!(first.read(&p(file)).unwrap().data, file.as_bytes());
        }
        assert_eq!((first.remote().requests() - before).total(), 0);
        let attribute =
            rustix::fs::getxattr(dir.path().join(files[0]), ATTRIBUTE, &mut [0u8; 64][..]);
        assert!(attribute.is_err(), "no attribute was written");
        drop(first);

        let second = open();
        let before = second.remote().requests();
        for file in files {
            second.read(&p(file)).unwrap();
            second.read(&p(file)).unwrap();
        }
        let used = second.remote().requests() - before;
        assert_eq!(used.get, files.len() as u64, "{used}");

        let refreshed = second.refresh().unwrap();
        assert_eq!((refreshed.downloaded, refreshed.unchanged), (0, 3));
        let third = open();
        let refreshed = third.refresh().unwrap();
        assert_eq!((refreshed.downloaded, refreshed.unchanged), (3, 0));
        let refreshed = third.refresh().unwrap();
        assert_eq!((refreshed.downloaded, refreshed.unchanged), (0, 3));
    }

    #[test]
    fn content_folders_hold_content_only_below_them() {
        for inside in ["vm/100/owner", "ns/a/.namespace", "host/h/owner"] {
            assert!(in_content_folder(&inside.parse().unwrap()), "{inside}");
        }
        for outside in [
            "vm",
            "owner",
            ".chunks/0000/x",
            "vmx/1/owner",
            ".keepsake/cache.json",
        ] {
            assert!(!in_content_folder(&outside.parse().unwrap()), "{outside}");
        }
    }
}
