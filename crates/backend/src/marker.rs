//! The cache marker file ([`CACHE_MARKER`]): which bucket datastore a local folder is the cache
//! of.
//!
//! Reading it needs no object store, so that a local open (without the `s3` feature too) can
//! refuse a folder that is an S3 cache; the cached backend writes it (`CachedBackend::claim`).

use std::path::Path as LocalPath;

use crate::Backend;
use crate::error::{Error, Result};
use crate::identity::{CACHE_MARKER, CacheIdentity};
use crate::local::{LocalBackend, SyncLevel};
use crate::path::BackendPath;

/// The bucket datastore the cache folder `folder` belongs to, as its marker
/// ([`CACHE_MARKER`]) says; `None` if it has none (a local datastore, or a cache made by PBS or
/// before markers existed). For a local open that must refuse a folder that is an S3 cache.
///
/// ```
/// # #[cfg(feature = "s3")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use keepsake_backend::{CachedBackend, LocalBackend, ObjectBackend, SyncLevel, cache_identity};
///
/// let dir = tempfile::tempdir()?;
/// assert_eq!(cache_identity(dir.path())?, None);
/// let remote = ObjectBackend::in_memory("store1")?;
/// let cached = CachedBackend::open(LocalBackend::open(dir.path(), SyncLevel::None)?, remote.clone())?;
/// cached.claim()?;
/// assert_eq!(cache_identity(dir.path())?.as_ref(), Some(remote.identity()));
/// # Ok(()) }
/// # #[cfg(not(feature = "s3"))]
/// # fn main() {}
/// ```
///
/// # Errors
/// [`Error::Io`] if the folder cannot be opened or the marker is not valid JSON of an identity.
pub fn cache_identity(folder: &LocalPath) -> Result<Option<CacheIdentity>> {
    read_marker(&LocalBackend::open(folder, SyncLevel::None)?)
}

pub(crate) fn marker_path() -> Result<BackendPath> {
    BackendPath::new(CACHE_MARKER)
}

pub(crate) fn read_marker(cache: &LocalBackend) -> Result<Option<CacheIdentity>> {
    let marker = marker_path()?;
    match cache.read(&marker) {
        Ok(contents) => serde_json::from_slice(&contents.data)
            .map(Some)
            .map_err(|e| Error::Io {
                path: cache.local_path(&marker),
                source: e.into(),
            }),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
