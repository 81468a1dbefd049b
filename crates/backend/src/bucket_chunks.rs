//! What garbage collection of an S3 datastore needs from the bucket beyond the [`Backend`]
//! trait: the `.chunks/` objects with their sizes and upload times, page by page, deletes of
//! chunk objects in DeleteObjects batches, and the content objects with whether the cache holds
//! each one's current version.
//!
//! [`Backend`]: crate::Backend

use std::sync::Arc;

use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use object_store::path::Path;

use crate::cached::CachedBackend;
use crate::chunk::CHUNKS_FOLDER;
use crate::error::{Error, Result};
use crate::object::ObjectBackend;
use crate::path::BackendPath;

/// How many listed objects [`ObjectBackend::for_each_chunk_page`] hands over at once (S3's page).
const PAGE: usize = 1000;

/// A `.chunks/` object of the bucket, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChunkObject {
    /// Its path as the cache names it: `.chunks/<4 hex>/<file name>` (a chunk, a `.bad` copy,
    /// or whatever else a file there is called: the caller judges the name).
    pub path: BackendPath,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, in epoch seconds by the server's clock.
    pub last_modified: i64,
}

/// What [`ObjectBackend::for_each_chunk_page`] saw besides the chunk objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ChunkListing {
    /// Objects listed below `<store>/.chunks/`.
    pub listed: u64,
    /// Keys no [`ChunkObject`] can name (not `.chunks/<folder>/<file>`, or not a valid path):
    /// never handed over, so never deleted.
    pub skipped: u64,
}

/// A content object of the bucket (below `<store>/.cnt/`), as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContentObject {
    /// Its path relative to the datastore root.
    pub path: BackendPath,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag, if the server gave one.
    pub e_tag: Option<String>,
    /// Whether the cache file at `path` is this object already (its record names the same
    /// ETag, and it has the same size), so that reading the cache gives the bucket's bytes.
    pub cached: bool,
}

impl ObjectBackend {
    /// Lists every object below `<store>/.chunks/` (one request per 1,000 keys) and calls `each`
    /// with each page of them, in the listing's order, as the listing advances: memory holds one
    /// page, whatever the bucket's size. An error from `each` ends the listing and is returned.
    ///
    /// # Errors
    /// [`Error::Backend`] if a listing request fails; `each`'s errors.
    pub fn for_each_chunk_page(
        &self,
        mut each: impl FnMut(Vec<ChunkObject>) -> Result<()>,
    ) -> Result<ChunkListing> {
        let root = self.layout().chunks_root();
        let store = Arc::clone(self.object_store());
        // Fused: a short page has seen the end, and the listing must not be polled past it.
        let listing: BoxStream<'static, object_store::Result<ObjectMeta>> = store.list(Some(&root));
        let mut listing = listing.fuse();
        let mut seen = ChunkListing::default();
        loop {
            let (back, page) = self.block_on(async move {
                let mut page = Vec::with_capacity(PAGE);
                while page.len() < PAGE {
                    match listing.next().await {
                        Some(item) => page.push(item),
                        None => break,
                    }
                }
                (listing, page)
            })?;
            listing = back;
            if page.is_empty() {
                return Ok(seen);
            }
            let mut objects = Vec::with_capacity(page.len());
            for meta in page {
                let meta = meta.map_err(|e| Error::backend(root.as_ref(), e))?;
                seen.listed += 1;
                match chunk_path(root.as_ref(), meta.location.as_ref()) {
                    Some(path) => objects.push(ChunkObject {
                        path,
                        size: meta.size,
                        last_modified: meta.last_modified.timestamp(),
                    }),
                    None => seen.skipped += 1,
                }
            }
            each(objects)?;
        }
    }

    /// Deletes the chunk objects at `paths` (`.chunks/…`, as [`ChunkObject::path`] names
    /// them) with DeleteObjects requests (one per 1,000 keys; garbage collection sends 100).
    /// An object that is gone already counts as deleted. Returns how many were deleted.
    ///
    /// # Errors
    /// [`Error::RefusedPath`] for a path outside `.chunks/`; [`Error::Backend`] if a request
    /// fails or the server refuses any key of it: which of the others went is then unknown.
    pub fn delete_chunk_objects(&self, paths: &[BackendPath]) -> Result<u64> {
        let mut keys = Vec::with_capacity(paths.len());
        for path in paths {
            let mut parts = path.components();
            if parts.next() != Some(CHUNKS_FOLDER) || path.depth() != 3 {
                return Err(Error::refused(path.as_str(), "not a chunk object"));
            }
            let key = format!("{}/{}", self.layout().store(), path.as_str());
            keys.push(Path::parse(&key).map_err(|_| Error::refused(path.as_str(), "not a key"))?);
        }
        let store = Arc::clone(self.object_store());
        let root = self.layout().chunks_root();
        self.block_on(async move {
            let locations: BoxStream<'static, object_store::Result<Path>> =
                stream::iter(keys.into_iter().map(Ok)).boxed();
            let results: Vec<object_store::Result<Path>> =
                store.delete_stream(locations).collect().await;
            let mut deleted = 0;
            for result in results {
                match result {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(e) => return Err(Error::backend(root.as_ref(), e)),
                }
            }
            Ok(deleted)
        })?
    }
}

/// The cache path `.chunks/<folder>/<file>` of the chunk key `key` below `root`.
fn chunk_path(root: &str, key: &str) -> Option<BackendPath> {
    let rest = key.strip_prefix(root)?.strip_prefix('/')?;
    let (folder, file) = rest.split_once('/')?;
    if folder.is_empty() || file.is_empty() || file.contains('/') {
        return None;
    }
    BackendPath::new(&format!("{CHUNKS_FOLDER}/{folder}/{file}")).ok()
}

impl CachedBackend {
    /// Every content object of the bucket (one listing, a request per 1,000 keys), each with
    /// whether the cache holds that version of it already. Changes nothing. Keys no
    /// [`BackendPath`] can name are left out.
    ///
    /// # Errors
    /// [`Error::Backend`] if a listing request fails.
    pub fn list_content_objects(&self) -> Result<Vec<ContentObject>> {
        let store = Arc::clone(self.remote().object_store());
        let root = self.remote().layout().content_root();
        let listed: Vec<ObjectMeta> = self.remote().block_on(async move {
            store
                .list(Some(&root))
                .try_collect()
                .await
                .map_err(|e| Error::backend(root.as_ref(), e))
        })??;
        let layout = self.remote().layout();
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let path = layout.path_of_content_key(&meta.location)?;
                let cached = self.is_current(&path, &meta);
                Some(ContentObject {
                    path,
                    size: meta.size,
                    e_tag: meta.e_tag,
                    cached,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_become_cache_paths() {
        let root = "store1/.chunks";
        let hex = "ab".repeat(32);
        assert_eq!(
            chunk_path(root, &format!("store1/.chunks/abab/{hex}")).unwrap(),
            BackendPath::new(&format!(".chunks/abab/{hex}")).unwrap()
        );
        assert!(chunk_path(root, "store1/.chunks/abab").is_none());
        assert!(chunk_path(root, "store1/.chunks/abab/x/y").is_none());
        assert!(chunk_path(root, "store1/.chunksx/abab/y").is_none());
        assert!(chunk_path(root, "store2/.chunks/abab/y").is_none());
    }

    #[test]
    fn bucket_chunks_are_listed_as_digests_bad_copies_and_strays_left_out() {
        use crate::{Backend, ChunkDigest, LocalBackend, SyncLevel, WriteMode};
        let backend = ObjectBackend::in_memory("store1").unwrap();
        let kept = ChunkDigest::new([1; 32]);
        let bad = ChunkDigest::new([2; 32]);
        backend.insert_chunk(&kept, b"kept").unwrap();
        backend.insert_chunk(&bad, b"bad").unwrap();
        backend.quarantine_chunk(&bad).unwrap();
        // A chunk name in another chunk's folder is not where a read looks for it.
        let stray = format!(".chunks/0000/{}", ChunkDigest::new([3; 32]));
        backend
            .write(&BackendPath::new(&stray).unwrap(), b"x", WriteMode::Replace)
            .unwrap();
        let mut seen = Vec::new();
        let handed = backend
            .list_bucket_chunks(&mut |page| {
                seen.extend_from_slice(page);
                Ok(())
            })
            .unwrap();
        assert_eq!((handed, seen), (Some(1), vec![kept]));
        // A cache forwards to its bucket; a local folder has nothing to list.
        let dir = tempfile::tempdir().unwrap();
        let local = LocalBackend::open(dir.path(), SyncLevel::None).unwrap();
        let cache = LocalBackend::open(dir.path(), SyncLevel::None).unwrap();
        let cached = CachedBackend::new(cache, backend);
        assert_eq!(cached.list_bucket_chunks(&mut |_| Ok(())).unwrap(), Some(1));
        assert_eq!(local.list_bucket_chunks(&mut |_| Ok(())).unwrap(), None);
    }

    #[test]
    fn listing_and_deleting_chunk_objects() {
        use crate::{Backend, ChunkDigest};
        let backend = ObjectBackend::in_memory("store1").unwrap();
        let mut digests = Vec::new();
        for n in 0..5u8 {
            let digest = ChunkDigest::new([n; 32]);
            backend.insert_chunk(&digest, &[n; 10]).unwrap();
            digests.push(digest);
        }
        let mut seen = Vec::new();
        let listing = backend
            .for_each_chunk_page(|page| {
                seen.extend(page);
                Ok(())
            })
            .unwrap();
        assert_eq!((listing.listed, listing.skipped), (5, 0));
        assert_eq!(seen.len(), 5);
        assert!(seen.iter().all(|o| o.size == 10 && o.last_modified > 0));
        let gone: Vec<_> = digests[..2].iter().map(ChunkDigest::local_path).collect();
        assert_eq!(backend.delete_chunk_objects(&gone).unwrap(), 2);
        assert!(!backend.chunk_exists(&digests[0]).unwrap());
        assert!(backend.chunk_exists(&digests[2]).unwrap());
        let outside = BackendPath::new("vm/100/owner").unwrap();
        assert!(backend.delete_chunk_objects(&[outside]).is_err());
    }
}
