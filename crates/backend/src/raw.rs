//! Objects of a bucket datastore outside its content keys: PBS's `.in-use` marker and keepsake's
//! lease objects (`<store>/.keepsake-leases/…`), which the [`Backend`](crate::Backend) trait
//! cannot name because they live beside `.cnt`, not below it.
//!
//! The calls are blocking like the rest of [`ObjectBackend`], with the same lost-reply handling
//! for conditional writes, and one more condition: a delete that only happens if the object is
//! still at a given version (S3's conditional delete, `If-Match` on `DeleteObject`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{ObjectStore, ObjectStoreExt};

use crate::WriteMode;
use crate::error::{Error, Result};
use crate::in_use::InUse;
use crate::layout::{CHUNKS_PREFIX, CONTENT_PREFIX, IN_USE_MARKER};
use crate::object::ObjectBackend;
use crate::path::{BackendPath, check_component};
use crate::version::Version;

/// The key of an object beside a datastore's content: `<store>/<relative>`, where `relative` is
/// made of valid path components and does not start with `.cnt` or `.chunks` (those belong to the
/// content and the chunks, which the [`Backend`](crate::Backend) trait reaches).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawKey {
    key: Path,
    relative: BackendPath,
}

impl RawKey {
    /// The object key, store prefix included.
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// The key relative to the store prefix.
    pub fn relative(&self) -> &BackendPath {
        &self.relative
    }
}

impl fmt::Debug for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawKey({})", self.key)
    }
}

impl fmt::Display for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key.as_ref())
    }
}

/// An object read with [`ObjectBackend::get_raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RawObject {
    /// Its bytes.
    pub data: Vec<u8>,
    /// Its version (ETag), for conditional writes and deletes.
    pub version: Version,
}

/// What [`ObjectBackend::delete_raw`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeleteOutcome {
    /// The object was deleted.
    Deleted,
    /// The object is at another version than the one given: nothing was deleted.
    Changed,
    /// There was no object.
    Missing,
}

/// How long a signed conditional delete stays valid: far longer than any request.
const SIGNED_FOR: Duration = Duration::from_secs(300);

impl ObjectBackend {
    /// The key `<store>/<relative>` beside the content.
    ///
    /// # Errors
    /// [`Error::RefusedPath`] for an invalid component, the root, or a key below `.cnt` or
    /// `.chunks`.
    pub fn raw_key(&self, relative: &str) -> Result<RawKey> {
        let path = BackendPath::new(relative)?;
        let first = path.components().next().unwrap_or_default();
        if path.is_root() || first == CONTENT_PREFIX || first == CHUNKS_PREFIX {
            return Err(Error::refused(
                relative,
                "not a key beside the content: the root, .cnt and .chunks are refused",
            ));
        }
        for component in path.components() {
            check_component(component).map_err(|reason| Error::refused(relative, reason))?;
        }
        let key = Path::from(format!("{}/{}", self.layout().store_root().as_ref(), path));
        Ok(RawKey {
            key,
            relative: path,
        })
    }

    /// Reads the object at `key`; `None` if there is none.
    ///
    /// # Errors
    /// [`Error::Backend`] when the store fails.
    pub fn get_raw(&self, key: &RawKey) -> Result<Option<RawObject>> {
        let store = Arc::clone(self.object_store());
        let get_key = key.key.clone();
        self.run_limited(&key.key, async move {
            match store.get(&get_key).await {
                Ok(result) => {
                    let meta = result.meta.clone();
                    let bytes = result
                        .bytes()
                        .await
                        .map_err(|e| Error::backend(get_key.as_ref(), e))?;
                    Ok(Some(RawObject {
                        data: Vec::from(bytes),
                        version: Version::of_object(meta.e_tag, meta.version),
                    }))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(Error::backend(get_key.as_ref(), e)),
            }
        })
    }

    /// Writes the object at `key`, with the same modes and the same lost-reply handling as
    /// [`Backend::write`](crate::Backend::write) (a conditional write whose reply was lost is
    /// recognised by its write token, not taken for a conflict).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] for a create-only write onto an object, [`Error::Precondition`]
    /// for a compare-and-swap that lost, [`Error::Backend`] when the store fails.
    pub fn put_raw(&self, key: &RawKey, data: &[u8], mode: WriteMode) -> Result<Version> {
        self.put_key(&key.key, &key.relative, data, mode)
    }

    /// Deletes the object at `key`; with `expected`, only if it is still at that version (S3's
    /// conditional delete, `If-Match` on `DeleteObject`: a signed request sent through the
    /// store's own HTTP client; in memory, checked and deleted under a lock of this backend).
    ///
    /// An endpoint that does not support conditional deletes refuses them
    /// ([`Error::Unsupported`]); one that ignores the header would delete unconditionally, which
    /// the multi-host probe finds out before leases use this.
    ///
    /// # Errors
    /// [`Error::Unsupported`], [`Error::Backend`].
    pub fn delete_raw(&self, key: &RawKey, expected: Option<&Version>) -> Result<DeleteOutcome> {
        let store = Arc::clone(self.object_store());
        let delete_key = key.key.clone();
        let Some(expected) = expected else {
            return self.run_limited(&key.key, async move {
                match store.head(&delete_key).await {
                    Ok(_) => {}
                    Err(object_store::Error::NotFound { .. }) => return Ok(DeleteOutcome::Missing),
                    Err(e) => return Err(Error::backend(delete_key.as_ref(), e)),
                }
                match store.delete(&delete_key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        Ok(DeleteOutcome::Deleted)
                    }
                    Err(e) => Err(Error::backend(delete_key.as_ref(), e)),
                }
            });
        };
        let Some(e_tag) = expected.e_tag().map(str::to_owned) else {
            // A version without an ETag never matches an object.
            return Ok(DeleteOutcome::Changed);
        };
        match self.s3_parts() {
            Some((s3, http)) => {
                let unsupported = key.relative.clone();
                self.run_limited(&key.key, async move {
                    conditional_delete_s3(&s3, &http, &delete_key, &e_tag, unsupported).await
                })
            }
            None => {
                // In memory: one process, so a lock of this backend makes check and delete one
                // step for every handle that shares it.
                let _one_at_a_time = self.memory_delete_lock();
                self.run_limited(&key.key, async move {
                    let current = match store.head(&delete_key).await {
                        Ok(meta) => meta,
                        Err(object_store::Error::NotFound { .. }) => {
                            return Ok(DeleteOutcome::Missing);
                        }
                        Err(e) => return Err(Error::backend(delete_key.as_ref(), e)),
                    };
                    if current.e_tag.as_deref() != Some(e_tag.as_str()) {
                        return Ok(DeleteOutcome::Changed);
                    }
                    store
                        .delete(&delete_key)
                        .await
                        .map(|()| DeleteOutcome::Deleted)
                        .map_err(|e| Error::backend(delete_key.as_ref(), e))
                })
            }
        }
    }

    /// The objects directly below `folder` (a delimited listing; sub-folders are not listed).
    ///
    /// # Errors
    /// [`Error::Backend`] when the store fails.
    pub fn list_raw(&self, folder: &RawKey) -> Result<Vec<RawKey>> {
        let store = Arc::clone(self.object_store());
        let prefix = folder.key.clone();
        let objects = self.run_limited(&folder.key, async move {
            store
                .list_with_delimiter(Some(&prefix))
                .await
                .map(|listing| listing.objects)
                .map_err(|e| Error::backend(prefix.as_ref(), e))
        })?;
        let mut keys = Vec::with_capacity(objects.len());
        for meta in objects {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if let Ok(key) = self.raw_key(&format!("{}/{name}", folder.relative)) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// PBS's `.in-use` marker of this datastore.
    ///
    /// # Errors
    /// [`Error::Backend`] when the store fails.
    pub fn in_use(&self) -> Result<InUse> {
        let key = self.raw_key(IN_USE_MARKER)?;
        Ok(self
            .get_raw(&key)?
            .map_or(InUse::NoMarker, |object| InUse::from_marker(&object.data)))
    }

    /// Writes PBS's `.in-use` marker (`{"hostname": …}`, a plain put as PBS does).
    pub(crate) fn write_in_use(&self, hostname: &str) -> Result<()> {
        let key = self.raw_key(IN_USE_MARKER)?;
        self.put_raw(&key, &InUse::marker_for(hostname), WriteMode::Replace)
            .map(drop)
    }

    /// A handle on the same store whose every request (retries included) ends within `limit`:
    /// for leases, whose requests must end well within the lease. A request that takes longer
    /// fails with [`Error::Backend`] (a timeout).
    pub fn with_time_limit(&self, limit: Duration) -> ObjectBackend {
        self.limited(Some(limit))
    }

    /// Runs `future` under this handle's time limit, if it has one.
    fn run_limited<T: Send + 'static>(
        &self,
        key: &Path,
        future: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.exec_at(key, future)
    }
}

/// `If-Match` on S3's `DeleteObject`: a URL signed by the store (the header bound into the
/// signature), sent with the store's HTTP client.
async fn conditional_delete_s3(
    s3: &Arc<object_store::aws::AmazonS3>,
    http: &object_store::client::HttpClient,
    key: &Path,
    e_tag: &str,
    path: BackendPath,
) -> Result<DeleteOutcome> {
    let quoted = if e_tag.starts_with('"') {
        e_tag.to_owned()
    } else {
        format!("\"{e_tag}\"")
    };
    let if_match = http::HeaderValue::from_str(&quoted)
        .map_err(|_| Error::refused(e_tag, "an ETag that cannot be a header value"))?;
    let options =
        SignedUrlOptions::new().with_signed_header(http::header::IF_MATCH, if_match.clone());
    let url = s3
        .signed_url_opts(http::Method::DELETE, key, SIGNED_FOR, &options)
        .await
        .map_err(|e| Error::backend(key.as_ref(), e))?;
    let request = http::Request::builder()
        .method(http::Method::DELETE)
        .uri(url.as_str())
        .header(http::header::IF_MATCH, if_match)
        .body(object_store::client::HttpRequestBody::from(Bytes::new()))
        .map_err(|e| http_error(key, e))?;
    let response = http
        .execute(request)
        .await
        .map_err(|e| http_error(key, e))?;
    let status = response.status();
    // Drain the body so that the connection can be reused.
    let _ = response
        .into_body()
        .bytes_stream()
        .try_collect::<Vec<Bytes>>()
        .await;
    match status.as_u16() {
        200..=299 => Ok(DeleteOutcome::Deleted),
        412 => Ok(DeleteOutcome::Changed),
        404 => Ok(DeleteOutcome::Missing),
        400 | 501 => Err(Error::Unsupported {
            path,
            what: "conditional deletes (If-Match on DeleteObject)",
        }),
        other => Err(http_error(
            key,
            std::io::Error::other(format!("conditional delete answered HTTP {other}")),
        )),
    }
}

fn http_error(key: &Path, source: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::backend(
        key.as_ref(),
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(source),
        },
    )
}
