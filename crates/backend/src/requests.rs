//! Request accounting: how many list, get, head, put, copy and delete requests a store was sent.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::path::Path;
use object_store::{
    ClientOptions, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// Request counts at one moment; subtract two to get what happened in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RequestCounts {
    /// Listing requests (one per page: S3 pages hold up to 1,000 keys).
    pub list: u64,
    /// Object reads.
    pub get: u64,
    /// Metadata-only reads (HEAD).
    pub head: u64,
    /// Object writes (plain and conditional).
    pub put: u64,
    /// Server-side copies.
    pub copy: u64,
    /// Deletes (one per single delete, one per batch of up to 1,000 keys).
    pub delete: u64,
    /// Anything else (multipart bookkeeping, credential requests).
    pub other: u64,
}

impl RequestCounts {
    /// All requests together.
    pub fn total(&self) -> u64 {
        self.list + self.get + self.head + self.put + self.copy + self.delete + self.other
    }
}

impl std::ops::Sub for RequestCounts {
    type Output = RequestCounts;

    fn sub(self, earlier: RequestCounts) -> RequestCounts {
        RequestCounts {
            list: self.list - earlier.list,
            get: self.get - earlier.get,
            head: self.head - earlier.head,
            put: self.put - earlier.put,
            copy: self.copy - earlier.copy,
            delete: self.delete - earlier.delete,
            other: self.other - earlier.other,
        }
    }
}

impl fmt::Display for RequestCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "list {} get {} head {} put {} copy {} delete {} other {}",
            self.list, self.get, self.head, self.put, self.copy, self.delete, self.other
        )
    }
}

/// The kinds of request that are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    List,
    Get,
    Head,
    Put,
    Copy,
    Delete,
    Other,
}

/// Shared, thread-safe request counters; clones count into the same totals.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestCounter(Arc<[AtomicU64; 7]>);

impl RequestCounter {
    /// New counters at zero.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> RequestCounts {
        let c = |kind: Kind| self.0[kind as usize].load(Ordering::Relaxed);
        RequestCounts {
            list: c(Kind::List),
            get: c(Kind::Get),
            head: c(Kind::Head),
            put: c(Kind::Put),
            copy: c(Kind::Copy),
            delete: c(Kind::Delete),
            other: c(Kind::Other),
        }
    }

    fn add(&self, kind: Kind, n: u64) {
        self.0[kind as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn count_http(&self, request: &HttpRequest) {
        let query = request.uri().query().unwrap_or("");
        let has_query_key = |key: &str| {
            query
                .split('&')
                .any(|pair| pair.split('=').next() == Some(key))
        };
        let kind = match request.method().as_str() {
            "HEAD" => Kind::Head,
            "GET" if has_query_key("list-type") => Kind::List,
            "GET" => Kind::Get,
            "PUT" if request.headers().contains_key("x-amz-copy-source") => Kind::Copy,
            "PUT" => Kind::Put,
            "POST" if has_query_key("delete") => Kind::Delete,
            "DELETE" => Kind::Delete,
            _ => Kind::Other,
        };
        self.add(kind, 1);
    }
}

/// An [`HttpConnector`] that counts every HTTP request the S3 client sends, as the server sees
/// them: each listing page, each `DeleteObjects` batch and each retry is one request.
///
/// Wraps object_store's default reqwest connector.
#[derive(Debug, Clone, Default)]
pub(crate) struct CountingConnector {
    counter: RequestCounter,
}

impl CountingConnector {
    /// A connector counting into `counter`.
    pub(crate) fn new(counter: RequestCounter) -> Self {
        Self { counter }
    }
}

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingService {
            inner,
            counter: self.counter.clone(),
        }))
    }
}

#[derive(Debug)]
struct CountingService {
    inner: HttpClient,
    counter: RequestCounter,
}

#[async_trait]
impl HttpService for CountingService {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.counter.count_http(&request);
        self.inner.execute(request).await
    }
}

/// Counts calls at the [`ObjectStore`] trait level, for stores without HTTP (in memory, or
/// wrappers): one list per listing call whatever its size, one delete per `delete_stream` call
/// (the backend sends at most 1,000 keys per call), one get or head per `get_opts`.
#[derive(Debug)]
pub(crate) struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counter: RequestCounter,
}

impl CountingStore {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, counter: RequestCounter) -> Self {
        Self { inner, counter }
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.counter.add(Kind::Put, 1);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.counter.add(Kind::Put, 1);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let kind = if options.head { Kind::Head } else { Kind::Get };
        self.counter.add(kind, 1);
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.counter.add(Kind::Get, 1);
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.counter.add(Kind::Delete, 1);
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counter.add(Kind::List, 1);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counter.add(Kind::List, 1);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.counter.add(Kind::List, 1);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.counter.add(Kind::Copy, 1);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.counter.add(Kind::Copy, 1);
        self.counter.add(Kind::Delete, 1);
        self.inner.rename_opts(from, to, options).await
    }
}
