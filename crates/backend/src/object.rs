//! [`ObjectBackend`]: a datastore in an object store (S3 or in memory), with PBS's key layout.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::client::HttpClient;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload,
};

use crate::chunk::{BAD_CHUNK_SLOTS, ChunkDigest};
use crate::error::{Error, Result};
use crate::identity::CacheIdentity;
use crate::in_use::BucketState;
use crate::keep::KeepFilter;
use crate::layout::ObjectLayout;
use crate::path::{BackendPath, check_component};
use crate::requests::{CountingStore, RequestCounter, RequestCounts};
use crate::runtime::BlockingRuntime;
use crate::s3::S3Config;
use crate::version::Version;
use crate::{
    Backend, Capabilities, ChunkInsert, Entry, EntryKind, FileContents, Listing, RemoveReport,
    Stat, WriteMode, check_file_path, check_folder_removable, check_rename, common_folder,
    unique_sorted,
};

/// S3's limit on keys per `DeleteObjects` request, and the page size of its listings.
pub(crate) const BATCH: usize = 1000;
/// Copies and downloads in flight at once.
pub(crate) const CONCURRENCY: usize = 16;
/// The user metadata key (`x-amz-meta-keepsake-write` on S3) that carries a conditional write's
/// random token, by which a retried write recognises that its first attempt landed.
pub const WRITE_TOKEN_METADATA: &str = "keepsake-write";

/// A datastore in an object store: S3 (any S3-compatible endpoint) or in memory.
///
/// Implements the [`Backend`] contract on PBS's key layout (see [`crate::layout`]): the file
/// `vm/100/owner` of datastore `store1` is the object `store1/.cnt/vm/100/owner`.
///
/// - **Folders** are implied by keys: listing a folder is a delimited listing of
///   `<key>/`, and a folder with no key below it does not exist ([`Error::NotFound`]); so an empty
///   namespace needs its `.namespace` marker object.
/// - **Listings** come in ascending byte order, page by page: on S3 one request per 1,000 entries,
///   fetched as the iterator advances. Stores without paged listing (in memory, wrappers) list the
///   folder in one call.
/// - **Writes**: replace is a plain PUT; create-only is `PutMode::Create` (`If-None-Match: *`);
///   compare-and-swap is `PutMode::Update` with the ETag and object version of the expected
///   [`Version`] (`If-Match`). Versions are ETags.
/// - **Lost replies**: object_store retries a request whose reply it did not get. If the first
///   attempt of a conditional write had landed, the retry finds the object already there (or at
///   a new ETag) and fails with "exists" or "precondition failed", although the write happened.
///   So every conditional write carries a random token in the object's user metadata
///   ([`WRITE_TOKEN_METADATA`], `x-amz-meta-keepsake-write`), and on those two answers the
///   backend asks for the object's metadata (one HEAD): if it carries this write's token, the
///   write landed and its version is returned. The bytes alone would not do: two writers that
///   read the same version and compute the same new bytes (two hosts incrementing one counter)
///   must not both win a compare-and-swap.
/// - **Removing a file** checks that it exists (HEAD) before deleting it (DELETE), since S3
///   deletes report success for missing keys.
/// - **Removing a tree** lists every key below `<key>/` (the trailing `/` is the boundary:
///   removing `vm/100` never touches `vm/1000`; PBS's prefix without the slash is a bug), applies
///   the [`KeepFilter`], and deletes the rest in `DeleteObjects` batches of at most 1,000 keys.
/// - **Rename** copies every object, then deletes the sources: not atomic. A failure part-way
///   leaves the copies and the sources that were not deleted yet; running it again is refused
///   because the target exists, so repair by removing the partial target first.
/// - **Threads**: the futures run on a small tokio runtime owned by the backend (two worker
///   threads), and callers wait on a std channel, so every method works from plain threads and
///   from inside any tokio runtime. Cloning shares the runtime and the store. With
///   [`S3Config::runtime`] they run on the application's runtime instead, and that runtime's
///   worker threads must not call the backend (the call would wait for a request that needs
///   them).
/// - **Requests** are counted: on S3 each HTTP request (pages, batches and retries included);
///   for other stores each trait call (see [`ObjectBackend::requests`]).
#[derive(Clone)]
pub struct ObjectBackend {
    inner: Arc<Inner>,
    /// Every request of this handle ends within this time ([`ObjectBackend::with_time_limit`]).
    limit: Option<std::time::Duration>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// On S3: the client (it signs conditional deletes) and its HTTP client (which sends them).
    s3: Option<(Arc<AmazonS3>, HttpClient)>,
    /// In memory: makes a conditional delete's check and delete one step.
    memory_delete: std::sync::Mutex<()>,
    paged: Option<Arc<dyn PaginatedListStore>>,
    layout: ObjectLayout,
    counter: RequestCounter,
    compare_and_swap: bool,
    description: String,
    identity: CacheIdentity,
    // Declared last so the store (and its HTTP client) goes first.
    runtime: BlockingRuntime,
}

impl fmt::Debug for ObjectBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBackend")
            .field("store", &self.inner.description)
            .field("layout", &self.inner.layout)
            .finish()
    }
}

impl ObjectBackend {
    /// The datastore `store` in the bucket `config` names.
    ///
    /// # Errors
    /// [`Error::RefusedPath`] for an invalid store name, [`Error::Backend`] for an invalid
    /// configuration. Nothing is sent to the endpoint yet.
    pub fn s3(config: &S3Config, store: &str) -> Result<Self> {
        Self::build_s3(config, store, None)
    }

    /// Like [`ObjectBackend::s3`], with the S3 client wrapped by `wrap` (fault injection,
    /// throttling). HTTP requests are still counted; listings go through the wrapper, so they
    /// are fetched in one call per folder instead of page by page.
    ///
    /// # Errors
    /// As [`ObjectBackend::s3`].
    pub fn s3_wrapped(
        config: &S3Config,
        store: &str,
        wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
    ) -> Result<Self> {
        Self::build_s3(config, store, Some(Box::new(wrap)))
    }

    #[allow(clippy::type_complexity)]
    fn build_s3(
        config: &S3Config,
        store: &str,
        wrap: Option<Box<dyn FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> + '_>>,
    ) -> Result<Self> {
        let layout = ObjectLayout::new(store)?;
        let runtime = match &config.runtime {
            Some(handle) => BlockingRuntime::shared(handle.clone()),
            None => BlockingRuntime::new()?,
        };
        let counter = RequestCounter::new();
        // The HTTP client binds to the runtime that is current when it is built.
        let (s3, http) = {
            let _entered = runtime.handle().enter();
            (
                Arc::new(config.build(&counter)?),
                config.http_client(&counter)?,
            )
        };
        let endpoint = config.endpoint.as_deref().unwrap_or("aws");
        let description = format!("s3 {endpoint} bucket {}", config.bucket);
        let identity = CacheIdentity::new(config.endpoint.clone(), &config.bucket, store);
        let signer = Arc::clone(&s3);
        let (object_store, paged): (Arc<dyn ObjectStore>, Option<Arc<dyn PaginatedListStore>>) =
            match wrap {
                Some(wrap) => (wrap(s3), None),
                None => (s3.clone(), Some(s3)),
            };
        Ok(Self {
            limit: None,
            inner: Arc::new(Inner {
                store: object_store,
                s3: Some((signer, http)),
                memory_delete: std::sync::Mutex::new(()),
                paged,
                layout,
                counter,
                compare_and_swap: config.conditional_writes,
                description,
                identity,
                runtime,
            }),
        })
    }

    /// The datastore `store` in a fresh in-memory object store (`object_store::memory::InMemory`).
    ///
    /// # Errors
    /// [`Error::RefusedPath`] for an invalid store name.
    pub fn in_memory(store: &str) -> Result<Self> {
        Self::with_store(Arc::new(InMemory::new()), store)
    }

    /// The datastore `store` in any object store. Requests are counted per trait call. Its
    /// [`identity`](ObjectBackend::identity) is that of an in-memory store (endpoint and bucket
    /// `memory`), whatever the store is.
    ///
    /// # Errors
    /// [`Error::RefusedPath`] for an invalid store name.
    pub fn with_store(object_store: Arc<dyn ObjectStore>, store: &str) -> Result<Self> {
        let layout = ObjectLayout::new(store)?;
        let runtime = BlockingRuntime::new()?;
        let counter = RequestCounter::new();
        let description = object_store.to_string();
        Ok(Self {
            limit: None,
            inner: Arc::new(Inner {
                store: Arc::new(CountingStore::new(object_store, counter.clone())),
                s3: None,
                memory_delete: std::sync::Mutex::new(()),
                paged: None,
                layout,
                counter,
                compare_and_swap: true,
                description,
                identity: CacheIdentity::new(Some("memory".to_owned()), "memory", store),
                runtime,
            }),
        })
    }

    /// The key layout of this datastore.
    pub fn layout(&self) -> &ObjectLayout {
        &self.inner.layout
    }

    /// Which bucket datastore this is: the endpoint (`None` for AWS, `memory` for a store made
    /// by [`ObjectBackend::in_memory`] or [`ObjectBackend::with_store`]), the bucket and the
    /// store name. What a cache folder's marker names (see [`CachedBackend`](crate::CachedBackend)).
    pub fn identity(&self) -> &CacheIdentity {
        &self.inner.identity
    }

    /// The requests sent so far.
    ///
    /// On S3 these are HTTP requests as the server sees them: one list per page of up to 1,000
    /// keys, one delete per `DeleteObjects` batch, and every retry. For other stores
    /// ([`ObjectBackend::in_memory`], [`ObjectBackend::with_store`]) they are trait calls: one
    /// list per listing call whatever its size, one delete per batch.
    pub fn requests(&self) -> RequestCounts {
        self.inner.counter.snapshot()
    }

    /// The object store itself (counted), for the requests the `Backend` methods do not make;
    /// run its futures with [`ObjectBackend::block_on`].
    pub(crate) fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// Runs `future` on this backend's runtime and waits for it, from any thread that the
    /// runtime does not need (see [`S3Config::runtime`]).
    ///
    /// The future must not call this backend's blocking methods: it would tie up one of the
    /// runtime's worker threads waiting for the others.
    ///
    /// # Errors
    /// [`Error::Backend`] if the future panicked.
    pub(crate) fn block_on<F>(&self, future: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.runtime.run("block_on", future)
    }

    pub(crate) fn runtime(&self) -> &BlockingRuntime {
        &self.inner.runtime
    }

    fn exec<T: Send + 'static>(
        &self,
        key: &Path,
        future: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.exec_at(key, future)
    }

    /// Runs `future` on the runtime, within this handle's time limit if it has one.
    pub(crate) fn exec_at<T: Send + 'static>(
        &self,
        key: &Path,
        future: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let Some(limit) = self.limit else {
            return self.inner.runtime.run(key.as_ref(), future)?;
        };
        let what = key.to_string();
        self.inner.runtime.run(key.as_ref(), async move {
            match tokio::time::timeout(limit, future).await {
                Ok(result) => result,
                Err(_) => Err(Error::backend(
                    what,
                    object_store::Error::Generic {
                        store: "keepsake",
                        source: format!("the request took longer than its limit of {limit:?}")
                            .into(),
                    },
                )),
            }
        })?
    }

    /// This handle with another time limit (see [`ObjectBackend::with_time_limit`]).
    pub(crate) fn limited(&self, limit: Option<std::time::Duration>) -> ObjectBackend {
        ObjectBackend {
            inner: Arc::clone(&self.inner),
            limit,
        }
    }

    /// The S3 client and its HTTP client, when this is S3.
    pub(crate) fn s3_parts(&self) -> Option<(Arc<AmazonS3>, HttpClient)> {
        self.inner
            .s3
            .as_ref()
            .map(|(s3, http)| (Arc::clone(s3), http.clone()))
    }

    /// The lock that makes an in-memory conditional delete one step.
    pub(crate) fn memory_delete_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .memory_delete
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A write of the object `key` (errors name `file`), with the lost-reply handling of
    /// conditional writes.
    pub(crate) fn put_key(
        &self,
        key: &Path,
        file: &BackendPath,
        data: &[u8],
        mode: WriteMode,
    ) -> Result<Version> {
        let key = key.clone();
        let put_mode = match mode {
            WriteMode::Replace => PutMode::Overwrite,
            WriteMode::CreateOnly => PutMode::Create,
            WriteMode::Update(_) if !self.inner.compare_and_swap => {
                return Err(Error::Unsupported {
                    path: file.clone(),
                    what: "compare-and-swap",
                });
            }
            WriteMode::Update(expected) => match expected.to_update_version() {
                Some(version) => PutMode::Update(version),
                // A local version never matches an object.
                None => return Err(Error::Precondition { path: file.clone() }),
            },
        };
        let is_update = matches!(put_mode, PutMode::Update(_));
        // Only conditional writes can be refused by their own first attempt.
        let token = match put_mode {
            PutMode::Overwrite => None,
            _ => write_token(),
        };
        let mut attributes = Attributes::new();
        if let Some(token) = &token {
            attributes.insert(
                Attribute::Metadata(WRITE_TOKEN_METADATA.into()),
                token.clone().into(),
            );
        }
        let store = Arc::clone(&self.inner.store);
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        let (path, put_key) = (file.clone(), key.clone());
        self.exec(&key, async move {
            let options = PutOptions {
                mode: put_mode,
                attributes,
                ..Default::default()
            };
            match store.put_opts(&put_key, payload, options).await {
                Ok(result) => Ok(Version::of_object(result.e_tag, result.version)),
                // "If-Match" on a missing object: the expected version is gone too.
                Err(object_store::Error::NotFound { .. }) if is_update => {
                    Err(Error::Precondition { path })
                }
                Err(
                    e @ (object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }),
                ) => match &token {
                    // A retry of a write that landed (see the type's docs on lost replies).
                    Some(token) => match version_if_written_by(&store, &put_key, token).await {
                        Some(version) => Ok(version),
                        None => Err(map_error(e, &path, &put_key)),
                    },
                    None => Err(map_error(e, &path, &put_key)),
                },
                Err(e) => Err(map_error(e, &path, &put_key)),
            }
        })
    }

    fn key(&self, path: &BackendPath) -> Result<Path> {
        self.inner.layout.content_key(path)
    }

    /// Reads one page of a delimited listing below `prefix` (which ends with `/`).
    fn fetch_page(
        &self,
        paged: &Arc<dyn PaginatedListStore>,
        prefix: &str,
        page_token: Option<String>,
    ) -> Result<(Vec<Entry>, Option<String>)> {
        let paged = Arc::clone(paged);
        let owned_prefix = prefix.to_owned();
        let key = Path::parse(prefix).unwrap_or_default();
        let error_key = prefix.to_owned();
        let page = self.exec(&key, async move {
            let options = PaginatedListOptions {
                delimiter: Some("/".into()),
                page_token,
                ..Default::default()
            };
            paged
                .list_paginated(Some(&owned_prefix), options)
                .await
                .map_err(|e| Error::backend(error_key, e))
        })?;
        let entries = entries_of(prefix, page.result.objects, page.result.common_prefixes);
        Ok((entries, page.page_token))
    }
}

/// Folder entries from one delimited listing result, in byte order of their names.
fn entries_of(prefix: &str, objects: Vec<ObjectMeta>, folders: Vec<Path>) -> Vec<Entry> {
    let name_of = |key: &str| -> Option<String> {
        let name = key.strip_prefix(prefix)?.trim_end_matches('/');
        match check_component(name) {
            Ok(()) => Some(name.to_owned()),
            // A "folder marker" object (`prefix/` itself) has no name; anything else is a key
            // no BackendPath can name.
            Err(_) if name.is_empty() => None,
            Err(_) => {
                tracing::warn!(key, "skipping an object key that is not a valid path");
                None
            }
        }
    };
    let mut entries: Vec<Entry> = objects
        .iter()
        .filter_map(|meta| {
            name_of(meta.location.as_ref()).map(|name| Entry {
                name,
                kind: EntryKind::File,
            })
        })
        .chain(folders.iter().filter_map(|folder| {
            // object_store hands common prefixes back without their trailing `/`.
            let key = format!("{}/", folder.as_ref());
            name_of(&key).map(|name| Entry {
                name,
                kind: EntryKind::Dir,
            })
        }))
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

/// A listing fetched page by page as it is consumed.
struct PagedListing {
    backend: ObjectBackend,
    paged: Arc<dyn PaginatedListStore>,
    prefix: String,
    buffer: VecDeque<Entry>,
    next_token: Option<String>,
}

impl Iterator for PagedListing {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Some(entry) = self.buffer.pop_front() {
                return Some(Ok(entry));
            }
            let token = self.next_token.take()?;
            match self
                .backend
                .fetch_page(&self.paged, &self.prefix, Some(token))
            {
                Ok((entries, token)) => {
                    self.buffer.extend(entries);
                    self.next_token = token;
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Maps an object_store error about `path` (object `key`) to this crate's meaning.
fn map_error(error: object_store::Error, path: &BackendPath, key: &Path) -> Error {
    match error {
        object_store::Error::NotFound { .. } => Error::NotFound { path: path.clone() },
        object_store::Error::AlreadyExists { .. } => Error::AlreadyExists { path: path.clone() },
        object_store::Error::Precondition { .. } => Error::Precondition { path: path.clone() },
        object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. } => {
            Error::Unsupported {
                path: path.clone(),
                what: "this operation",
            }
        }
        other => Error::backend(key.as_ref(), other),
    }
}

/// Whether `key` lies strictly below `prefix` at a `/` boundary.
fn below(key: &Path, prefix: &Path) -> bool {
    key.as_ref()
        .strip_prefix(prefix.as_ref())
        .is_some_and(|rest| rest.starts_with('/'))
}

/// A random token for one conditional write; `None` (no lost-reply recovery for this write) if
/// the system has no randomness to give.
fn write_token() -> Option<String> {
    let mut bytes = [0u8; 16];
    match getrandom::fill(&mut bytes) {
        Ok(()) => Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        Err(e) => {
            tracing::warn!(error = %e, "no random token: a lost reply will show as a conflict");
            None
        }
    }
}

/// The version of the object at `key` if its metadata carries the write token `token` (one
/// HEAD); `None` otherwise, also when it cannot be asked (the caller then reports the conflict
/// it had).
async fn version_if_written_by(
    store: &Arc<dyn ObjectStore>,
    key: &Path,
    token: &str,
) -> Option<Version> {
    let options = GetOptions {
        head: true,
        ..Default::default()
    };
    let result = store.get_opts(key, options).await.ok()?;
    let found = result
        .attributes
        .get(&Attribute::Metadata(WRITE_TOKEN_METADATA.into()))?;
    (found.as_ref() == token).then(|| Version::of_object(result.meta.e_tag, result.meta.version))
}

/// Whether any key lies below `<key>/`: one listing limited to one key where the store pages,
/// else the first item of a listing.
async fn any_key_below(
    store: &Arc<dyn ObjectStore>,
    paged: Option<&Arc<dyn PaginatedListStore>>,
    key: &Path,
) -> Result<bool> {
    match paged {
        Some(paged) => {
            let options = PaginatedListOptions {
                max_keys: Some(1),
                ..Default::default()
            };
            let prefix = format!("{}/", key.as_ref());
            let page = paged
                .list_paginated(Some(&prefix), options)
                .await
                .map_err(|e| Error::backend(key.as_ref(), e))?;
            Ok(!page.result.objects.is_empty())
        }
        None => match store.list(Some(key)).next().await {
            Some(Ok(_)) => Ok(true),
            None => Ok(false),
            Some(Err(e)) => Err(Error::backend(key.as_ref(), e)),
        },
    }
}

/// Deletes `keys` in batches of at most [`BATCH`]; returns how many went and the failures.
pub(crate) async fn delete_batches(
    store: &Arc<dyn ObjectStore>,
    keys: Vec<Path>,
    tree: &Path,
) -> (u64, Vec<Error>) {
    let mut removed = 0;
    let mut failures = Vec::new();
    for batch in keys.chunks(BATCH) {
        let locations: BoxStream<'static, object_store::Result<Path>> =
            stream::iter(batch.iter().cloned().map(Ok).collect::<Vec<_>>()).boxed();
        let results: Vec<object_store::Result<Path>> =
            store.delete_stream(locations).collect().await;
        for result in results {
            match result {
                Ok(_) => removed += 1,
                // Gone already: someone else removed it, which is what was wanted.
                Err(object_store::Error::NotFound { .. }) => {}
                // Per-key failures name their key in the message; the error names the tree.
                Err(e) => failures.push(Error::backend(tree.as_ref(), e)),
            }
        }
    }
    (removed, failures)
}

impl Backend for ObjectBackend {
    /// One GET of `<store>/.in-use`; without a marker, a listing of at most one page of the
    /// content prefix.
    fn bucket_state(&self) -> Result<Option<BucketState>> {
        let in_use = self.in_use()?;
        let holds_content = !in_use.is_marked()
            && self
                .list(&BackendPath::root())?
                .next()
                .transpose()?
                .is_some();
        Ok(Some(BucketState {
            in_use,
            holds_content,
        }))
    }

    fn mark_in_use(&self, hostname: &str) -> Result<()> {
        self.write_in_use(hostname)
    }

    /// [`ObjectBackend::for_each_chunk_page`], each chunk object's name parsed.
    fn list_bucket_chunks(
        &self,
        each: &mut dyn FnMut(&[ChunkDigest]) -> Result<()>,
    ) -> Result<Option<u64>> {
        let mut handed = 0u64;
        let mut digests = Vec::new();
        self.for_each_chunk_page(|page| {
            digests.clear();
            digests.extend(page.iter().filter_map(|object| {
                let name = object.path.file_name()?;
                let digest: ChunkDigest = name.parse().ok()?;
                // A chunk outside its own folder is not where a read would look for it.
                (object.path == digest.local_path()).then_some(digest)
            }));
            handed += digests.len() as u64;
            each(&digests)
        })?;
        Ok(Some(handed))
    }

    fn insert_chunk(&self, digest: &ChunkDigest, blob: &[u8]) -> Result<ChunkInsert> {
        let key = self.inner.layout.chunk_key(digest);
        let store = Arc::clone(&self.inner.store);
        let payload = PutPayload::from(Bytes::copy_from_slice(blob));
        let (path, put_key) = (digest.local_path(), key.clone());
        self.exec(&key, async move {
            let options = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match store.put_opts(&put_key, payload, options).await {
                Ok(_) => Ok(ChunkInsert::Stored),
                // PBS counts "412 precondition failed" on a no-replace upload as a duplicate.
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Ok(ChunkInsert::Duplicate),
                Err(e) => Err(map_error(e, &path, &put_key)),
            }
        })
    }

    fn read_chunk(&self, digest: &ChunkDigest) -> Result<Vec<u8>> {
        let key = self.inner.layout.chunk_key(digest);
        let store = Arc::clone(&self.inner.store);
        let (path, get_key) = (digest.local_path(), key.clone());
        self.exec(&key, async move {
            let fetch = async { store.get(&get_key).await?.bytes().await };
            match fetch.await {
                Ok(bytes) => Ok(Vec::from(bytes)),
                Err(e) => Err(map_error(e, &path, &get_key)),
            }
        })
    }

    /// Copies the object to the first free `.bad` key, then deletes it (object storage has no
    /// rename). A crash in between leaves both: the chunk stays corrupt and the next verify
    /// sets it aside again, under the next number.
    fn quarantine_chunk(&self, digest: &ChunkDigest) -> Result<BackendPath> {
        let key = self.inner.layout.chunk_key(digest);
        let layout = self.inner.layout.clone();
        let store = Arc::clone(&self.inner.store);
        let (path, chunk_key, digest) = (digest.local_path(), key.clone(), *digest);
        self.exec(&key, async move {
            let head = |key: Path| {
                let store = Arc::clone(&store);
                async move {
                    match store.head(&key).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::NotFound { .. }) => Ok(false),
                        Err(e) => Err(Error::backend(key.as_ref(), e)),
                    }
                }
            };
            if !head(chunk_key.clone()).await? {
                return Err(Error::NotFound { path });
            }
            let mut slot = BAD_CHUNK_SLOTS - 1;
            for n in 0..BAD_CHUNK_SLOTS {
                if !head(layout.bad_chunk_key(&digest, n)).await? {
                    slot = n;
                    break;
                }
            }
            let bad_key = layout.bad_chunk_key(&digest, slot);
            store
                .copy(&chunk_key, &bad_key)
                .await
                .map_err(|e| map_error(e, &path, &chunk_key))?;
            match store.delete(&chunk_key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(map_error(e, &path, &chunk_key)),
            }
            Ok(digest.bad_path(slot))
        })
    }

    fn chunk_exists(&self, digest: &ChunkDigest) -> Result<bool> {
        let key = self.inner.layout.chunk_key(digest);
        let store = Arc::clone(&self.inner.store);
        let (path, head_key) = (digest.local_path(), key.clone());
        self.exec(&key, async move {
            match store.head(&head_key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(map_error(e, &path, &head_key)),
            }
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            sorted_listing: true,
            empty_folders: false,
            atomic_rename: false,
            compare_and_swap: self.inner.compare_and_swap,
            own_authority: true,
        }
    }

    fn list(&self, folder: &BackendPath) -> Result<Listing<'_>> {
        let key = self.key(folder)?;
        let prefix = format!("{}/", key.as_ref());
        let entries: Listing<'_> = if let Some(paged) = &self.inner.paged {
            let (entries, next_token) = self.fetch_page(paged, &prefix, None)?;
            if entries.is_empty() && next_token.is_none() && !folder.is_root() {
                return Err(Error::NotFound {
                    path: folder.clone(),
                });
            }
            Box::new(PagedListing {
                backend: self.clone(),
                paged: Arc::clone(paged),
                prefix,
                buffer: entries.into(),
                next_token,
            })
        } else {
            let store = Arc::clone(&self.inner.store);
            let list_key = key.clone();
            let result = self.exec(&key, async move {
                store
                    .list_with_delimiter(Some(&list_key))
                    .await
                    .map_err(|e| Error::backend(list_key.as_ref(), e))
            })?;
            let entries = entries_of(&prefix, result.objects, result.common_prefixes);
            if entries.is_empty() && !folder.is_root() {
                return Err(Error::NotFound {
                    path: folder.clone(),
                });
            }
            Box::new(entries.into_iter().map(Ok))
        };
        Ok(entries)
    }

    fn read(&self, file: &BackendPath) -> Result<FileContents> {
        check_file_path(file)?;
        let key = self.key(file)?;
        let store = Arc::clone(&self.inner.store);
        let (path, get_key) = (file.clone(), key.clone());
        self.exec(&key, async move {
            let fetch = async {
                let result = store.get(&get_key).await?;
                let meta = result.meta.clone();
                // The object's size first: one larger than any whole read is never fetched
                // (its body is dropped unread).
                if meta.size > crate::MAX_WHOLE_FILE_READ {
                    return Ok(Err(meta.size));
                }
                let bytes = result.bytes().await?;
                Ok::<_, object_store::Error>(Ok((bytes, meta)))
            };
            let (bytes, meta) = fetch
                .await
                .map_err(|e| map_error(e, &path, &get_key))?
                .map_err(|size| Error::TooLarge {
                    path: path.to_string(),
                    size,
                    limit: crate::MAX_WHOLE_FILE_READ,
                })?;
            Ok(FileContents {
                data: Vec::from(bytes),
                version: Version::of_object(meta.e_tag, meta.version),
            })
        })
    }

    fn write(&self, file: &BackendPath, data: &[u8], mode: WriteMode) -> Result<Version> {
        check_file_path(file)?;
        let key = self.key(file)?;
        self.put_key(&key, file, data, mode)
    }

    fn remove_file(&self, file: &BackendPath) -> Result<()> {
        check_file_path(file)?;
        let key = self.key(file)?;
        let store = Arc::clone(&self.inner.store);
        let (path, delete_key) = (file.clone(), key.clone());
        self.exec(&key, async move {
            let remove = async {
                store.head(&delete_key).await?;
                store.delete(&delete_key).await
            };
            remove.await.map_err(|e| map_error(e, &path, &delete_key))
        })
    }

    fn remove_tree(&self, folder: &BackendPath, keep: &KeepFilter) -> Result<RemoveReport> {
        let prefix = self.key(folder)?;
        let store = Arc::clone(&self.inner.store);
        let layout = self.inner.layout.clone();
        let keep = keep.clone();
        let path = folder.clone();
        let list_prefix = prefix.clone();
        self.exec(&prefix, async move {
            let objects: Vec<ObjectMeta> = store
                .list(Some(&list_prefix))
                .try_collect()
                .await
                .map_err(|e| Error::backend(list_prefix.as_ref(), e))?;
            let keys: Vec<(Path, Option<BackendPath>)> = objects
                .into_iter()
                .filter(|meta| below(&meta.location, &list_prefix))
                .map(|meta| {
                    let relative = layout.path_of_content_key(&meta.location);
                    (meta.location, relative)
                })
                .collect();
            if keys.is_empty() {
                return if path.is_root() {
                    Ok(RemoveReport::default())
                } else {
                    Err(Error::NotFound { path })
                };
            }
            let plan = keep.plan(keys.iter().filter_map(|(_, p)| p.as_ref()));
            let mut report = RemoveReport::default();
            let mut doomed = Vec::with_capacity(keys.len());
            for (key, relative) in keys {
                // Keys no BackendPath can name are still inside the tree: they go too.
                if relative.as_ref().is_some_and(|p| plan.keeps(p)) {
                    report.kept += 1;
                } else {
                    doomed.push(key);
                }
            }
            let (removed, mut failures) = delete_batches(&store, doomed, &list_prefix).await;
            report.removed = removed;
            if failures.is_empty() {
                Ok(report)
            } else {
                Err(Error::Incomplete {
                    path,
                    failed: failures.len(),
                    source: Box::new(failures.swap_remove(0)),
                })
            }
        })
    }

    fn rename(&self, from: &BackendPath, to: &BackendPath) -> Result<()> {
        check_rename(from, to)?;
        let from_key = self.key(from)?;
        let to_key = self.key(to)?;
        let store = Arc::clone(&self.inner.store);
        let (from_path, to_path) = (from.clone(), to.clone());
        let (source_key, target_key) = (from_key.clone(), to_key.clone());
        self.exec(&from_key, async move {
            let exists = |key: Path| {
                let store = Arc::clone(&store);
                async move {
                    match store.head(&key).await {
                        Ok(_) => return Ok(true),
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(Error::backend(key.as_ref(), e)),
                    }
                    match store.list(Some(&key)).next().await {
                        Some(Ok(_)) => Ok(true),
                        None => Ok(false),
                        Some(Err(e)) => Err(Error::backend(key.as_ref(), e)),
                    }
                }
            };
            let mut sources: Vec<Path> = store
                .list(Some(&source_key))
                .map_ok(|meta| meta.location)
                .try_filter(|key| std::future::ready(below(key, &source_key)))
                .try_collect()
                .await
                .map_err(|e| Error::backend(source_key.as_ref(), e))?;
            if sources.is_empty() {
                match store.head(&source_key).await {
                    Ok(_) => sources.push(source_key.clone()),
                    Err(e) => return Err(map_error(e, &from_path, &source_key)),
                }
            }
            if exists(target_key.clone()).await? {
                return Err(Error::AlreadyExists { path: to_path });
            }
            let pairs: Vec<(Path, Path)> = sources
                .iter()
                .map(|source| {
                    let rest = &source.as_ref()[source_key.as_ref().len()..];
                    let target = Path::parse(format!("{}{rest}", target_key.as_ref()))
                        .map_err(|_| Error::refused(to_path.as_str(), "not a valid object key"))?;
                    Ok((source.clone(), target))
                })
                .collect::<Result<_>>()?;
            stream::iter(pairs)
                .map(|(source, target)| {
                    let store = Arc::clone(&store);
                    async move {
                        store
                            .copy(&source, &target)
                            .await
                            .map_err(|e| Error::backend(source.as_ref(), e))
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            let (_, mut failures) = delete_batches(&store, sources, &source_key).await;
            match failures.is_empty() {
                true => Ok(()),
                false => Err(Error::Incomplete {
                    path: from_path,
                    failed: failures.len(),
                    source: Box::new(failures.swap_remove(0)),
                }),
            }
        })
    }

    fn stat(&self, path: &BackendPath) -> Result<Stat> {
        if path.is_root() {
            return Ok(Stat {
                kind: EntryKind::Dir,
                size: None,
            });
        }
        let key = self.key(path)?;
        let store = Arc::clone(&self.inner.store);
        let paged = self.inner.paged.clone();
        let (stat_path, stat_key) = (path.clone(), key.clone());
        self.exec(&key, async move {
            match store.head(&stat_key).await {
                Ok(meta) => {
                    return Ok(Stat {
                        kind: EntryKind::File,
                        size: Some(meta.size),
                    });
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::backend(stat_key.as_ref(), e)),
            }
            let has_children = any_key_below(&store, paged.as_ref(), &stat_key).await?;
            if has_children {
                Ok(Stat {
                    kind: EntryKind::Dir,
                    size: None,
                })
            } else {
                Err(Error::NotFound { path: stat_path })
            }
        })
    }

    fn create_dir_all(&self, folder: &BackendPath) -> Result<()> {
        // Folders exist only through their keys; checking the key length keeps the contract
        // that a path refused later is refused now.
        self.key(folder).map(drop)
    }

    fn list_files_authoritative(&self, folder: &BackendPath) -> Result<Vec<BackendPath>> {
        let key = self.key(folder)?;
        let store = Arc::clone(&self.inner.store);
        let layout = self.inner.layout.clone();
        let (path, list_key) = (folder.clone(), key.clone());
        self.exec(&key, async move {
            // object_store lists below `<key>/` without delimiter, page by page.
            let objects: Vec<ObjectMeta> = store
                .list(Some(&list_key))
                .try_collect()
                .await
                .map_err(|e| Error::backend(list_key.as_ref(), e))?;
            let mut any = false;
            let mut files = Vec::with_capacity(objects.len());
            for meta in objects {
                if !below(&meta.location, &list_key) {
                    continue;
                }
                any = true;
                match layout.path_of_content_key(&meta.location) {
                    Some(file) if !file.is_root() => files.push(file),
                    _ => tracing::warn!(key = %meta.location, "skipping a key no path can name"),
                }
            }
            if !any && !path.is_root() {
                return Err(Error::NotFound { path });
            }
            files.sort();
            Ok(files)
        })
    }

    /// `DeleteObjects` batches of at most 1,000 keys. S3 reports a key that was not there as
    /// deleted, so `removed` counts the keys the store confirmed, missing ones included.
    fn remove_files(&self, files: &[BackendPath]) -> Result<RemoveReport> {
        let mut keys = Vec::with_capacity(files.len());
        for file in unique_sorted(files) {
            check_file_path(file)?;
            keys.push(self.key(file)?);
        }
        let tree = common_folder(files);
        let tree_key = self.key(&tree)?;
        let store = Arc::clone(&self.inner.store);
        let error_key = tree_key.clone();
        self.exec(&tree_key, async move {
            let (removed, mut failures) = delete_batches(&store, keys, &error_key).await;
            if failures.is_empty() {
                Ok(RemoveReport { removed, kept: 0 })
            } else {
                Err(Error::Incomplete {
                    path: tree,
                    failed: failures.len(),
                    source: Box::new(failures.swap_remove(0)),
                })
            }
        })
    }

    /// No request but one listing limited to one key: folders exist only through their keys, so
    /// nothing needs deleting.
    fn remove_folder_if_empty(&self, folder: &BackendPath) -> Result<bool> {
        check_folder_removable(folder)?;
        let key = self.key(folder)?;
        let store = Arc::clone(&self.inner.store);
        let paged = self.inner.paged.clone();
        let list_key = key.clone();
        self.exec(&key, async move {
            any_key_below(&store, paged.as_ref(), &list_key)
                .await
                .map(|any| !any)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `block_on` runs a caller's future on the backend's runtime, also when called from
    /// inside another runtime's async context; requests made there are counted.
    #[test]
    fn block_on_runs_caller_futures_on_the_backend_runtime() {
        let backend = ObjectBackend::in_memory("store1").unwrap();
        let key = backend
            .layout()
            .chunk_key(&"00".repeat(32).parse().unwrap());
        let store = Arc::clone(backend.object_store());
        let put_key = key.clone();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                backend
                    .block_on(async move { store.put(&put_key, "chunk".into()).await.map(|_| ()) })
                    .unwrap()
                    .unwrap();
            });
        assert_eq!(
            key.as_ref(),
            format!("store1/.chunks/0000/{}", "00".repeat(32))
        );
        assert_eq!(backend.requests().put, 1);
    }

    /// On the application's runtime, requests run on its threads (no runtime of the backend's
    /// own), for calls from its blocking threads and from plain threads.
    #[test]
    fn shared_runtime_runs_the_requests() {
        let app = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("the-application")
            .enable_all()
            .build()
            .unwrap();
        let runtime = BlockingRuntime::shared(app.handle().clone());
        let thread_name = || std::thread::current().name().map(str::to_owned);
        let ran_on = runtime.run("test", async move { thread_name() }).unwrap();
        assert_eq!(ran_on.as_deref(), Some("the-application"));
        let from_blocking = app.block_on(async move {
            tokio::task::spawn_blocking(move || runtime.run("test", async move { thread_name() }))
                .await
                .unwrap()
        });
        assert_eq!(from_blocking.unwrap().as_deref(), Some("the-application"));
    }

    /// A request whose runtime shut down is an error, not a hang.
    #[test]
    fn a_shut_down_runtime_is_an_error() {
        let app = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let runtime = BlockingRuntime::shared(app.handle().clone());
        drop(app);
        let error = runtime.run("test", async {}).unwrap_err();
        assert!(matches!(error, Error::Backend { .. }), "{error:?}");
    }

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta {
            location: Path::parse(key).unwrap(),
            last_modified: Default::default(),
            size: 0,
            e_tag: None,
            version: None,
        }
    }

    #[test]
    fn entries_merge_files_and_folders_in_byte_order() {
        let entries = entries_of(
            "s/.cnt/vm/",
            vec![meta("s/.cnt/vm/b.txt"), meta("s/.cnt/vm/a")],
            vec![
                Path::parse("s/.cnt/vm/b").unwrap(),
                Path::parse("s/.cnt/vm/B").unwrap(),
            ],
        );
        let got: Vec<(&str, EntryKind)> =
            entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(
            got,
            [
                ("B", EntryKind::Dir),
                ("a", EntryKind::File),
                ("b", EntryKind::Dir),
                ("b.txt", EntryKind::File)
            ]
        );
    }

    #[test]
    fn below_respects_the_slash_boundary() {
        let prefix = Path::parse("s/.cnt/vm/100").unwrap();
        assert!(below(&Path::parse("s/.cnt/vm/100/owner").unwrap(), &prefix));
        assert!(!below(
            &Path::parse("s/.cnt/vm/1000/owner").unwrap(),
            &prefix
        ));
        assert!(!below(&prefix, &prefix));
    }
}
