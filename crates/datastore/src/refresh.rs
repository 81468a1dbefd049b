//! The local cache of an S3 datastore: rebuild it from the bucket (PBS's `s3-refresh`) and
//! compare it with the bucket.
//!
//! Both work on the content tree only (`vm`, `ct`, `host`, `ns`: what a refresh swaps in). `.namespace`
//! markers are not compared, since a refresh does not download them (PBS's rule: an empty namespace
//! is not recreated locally), and neither are temporary files of interrupted writes.

use std::collections::BTreeMap;

use keepsake_backend::{
    Backend, BackendPath, CachedBackend, EntryKind, RefreshReport, RequestCounts, is_temporary_name,
};
use keepsake_hierarchy::NAMESPACE_MARKER_FILENAME;

use crate::error::{ArgumentProblem, Error, Result};
use crate::store::DataStore;

/// The top-level folders of the content tree.
const CONTENT_FOLDERS: [&str; 4] = ["vm", "ct", "host", "ns"];

/// How thoroughly [`DataStore::check_cache`] compares files present on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CacheCheck {
    /// Names only (one listing per folder).
    Names,
    /// Names and sizes (plus one HEAD request per file).
    #[default]
    Sizes,
    /// Names and contents (plus one GET request per file).
    Contents,
}

/// What differs for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheDifferenceKind {
    /// The bucket has the file, the cache does not (a refresh downloads it).
    OnlyInBucket,
    /// The cache has the file, the bucket does not (a refresh removes it).
    OnlyInCache,
    /// Both have it with different sizes.
    SizeDiffers {
        /// Size in the cache.
        cache: u64,
        /// Size in the bucket.
        bucket: u64,
    },
    /// Both have it with the same size and different bytes.
    ContentDiffers,
}

/// One difference between cache and bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheDifference {
    /// The file's path relative to the datastore root.
    pub path: String,
    /// What differs.
    pub kind: CacheDifferenceKind,
}

/// What [`DataStore::check_cache`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheReport {
    /// Files found in the cache.
    pub cache_files: u64,
    /// Objects found in the bucket.
    pub bucket_files: u64,
    /// Every difference, sorted by path.
    pub differences: Vec<CacheDifference>,
    /// Requests the check sent to the object store.
    pub requests: RequestCounts,
}

impl CacheReport {
    /// Whether cache and bucket hold the same content tree.
    pub fn is_consistent(&self) -> bool {
        self.differences.is_empty()
    }
}

/// What [`DataStore::refresh_cache`] did: the backend's report (objects listed and downloaded)
/// and the requests it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheRefresh {
    /// The rebuild.
    pub refresh: RefreshReport,
    /// Requests of the rebuild (same as `refresh.requests`; here for printing).
    pub requests: RequestCounts,
}

impl DataStore {
    pub(crate) fn check_is_own_backend(&self, cached: &CachedBackend) -> Result<()> {
        let own = self.given_backend() as *const dyn Backend;
        if std::ptr::addr_eq(own, cached as *const CachedBackend) {
            Ok(())
        } else {
            Err(Error::InvalidArgument(
                ArgumentProblem::NotThisStoresBackend,
            ))
        }
    }

    /// Rebuilds the local cache from the bucket (PBS's `s3-refresh`): downloads every content
    /// object except `.namespace` markers and swaps the downloaded tree in; chunks are not touched.
    /// `cached` must be the backend this store was built with. Like PBS, run it while nothing
    /// else uses the datastore (PBS sets the `s3-refresh` maintenance mode).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use keepsake_backend::{CachedBackend, LocalBackend, ObjectBackend, SyncLevel};
    /// use keepsake_datastore::DataStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// std::fs::create_dir_all(dir.path().join("cache"))?;
    /// let cached = Arc::new(CachedBackend::new(
    ///     LocalBackend::open(dir.path().join("cache"), SyncLevel::None)?,
    ///     ObjectBackend::in_memory("store1")?,
    /// ));
    /// let store = DataStore::builder("store1", dir.path().join("cache"))
    ///     .lock_root(dir.path().join("locks"))
    ///     .backend(cached.clone())
    ///     .chunk_prefix_dirs(false)
    ///     .create()?;
    /// let ns = store.create_namespace(&"prod".parse()?)?;
    /// let refresh = store.refresh_cache(&cached)?;
    /// println!("{} objects, {} requests", refresh.refresh.downloaded, refresh.requests.total());
    /// assert!(store.check_cache(&cached, Default::default())?.is_consistent());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for another backend; [`Error::Backend`] for listing, download
    /// or cache errors (the cache is untouched if the failure came before the swap).
    pub fn refresh_cache(&self, cached: &CachedBackend) -> Result<CacheRefresh> {
        self.require_writable("cache refresh")?;
        self.check_is_own_backend(cached)?;
        let refresh = cached.refresh().map_err(|e| Error::backend("", e))?;
        Ok(CacheRefresh {
            requests: refresh.requests,
            refresh,
        })
    }

    /// Compares the cache with the bucket and reports every file that differs (see
    /// [`CacheDifferenceKind`]), without changing either. `cached` must be the backend this store
    /// was built with.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for another backend; [`Error::Backend`] when a listing or read
    /// fails.
    pub fn check_cache(&self, cached: &CachedBackend, depth: CacheCheck) -> Result<CacheReport> {
        self.check_is_own_backend(cached)?;
        let before = cached.remote().requests();
        let mut local = BTreeMap::new();
        let mut remote = BTreeMap::new();
        for top in CONTENT_FOLDERS {
            let folder = BackendPath::root()
                .join(top)
                .map_err(|e| Error::backend(top, e))?;
            collect_files(cached.cache(), &folder, &mut local)?;
            collect_files(cached.remote(), &folder, &mut remote)?;
        }
        let mut report = CacheReport {
            cache_files: local.len() as u64,
            bucket_files: remote.len() as u64,
            ..CacheReport::default()
        };
        let mut note = |path: &BackendPath, kind| {
            report.differences.push(CacheDifference {
                path: path.to_string(),
                kind,
            });
        };
        for (name, path) in &local {
            if !remote.contains_key(name) {
                note(path, CacheDifferenceKind::OnlyInCache);
            }
        }
        for (name, path) in &remote {
            if !local.contains_key(name) {
                note(path, CacheDifferenceKind::OnlyInBucket);
                continue;
            }
            match depth {
                CacheCheck::Names => {}
                CacheCheck::Sizes => {
                    let size = |b: &dyn Backend| -> Result<u64> {
                        let stat = b.stat(path).map_err(|e| Error::backend(path.as_str(), e))?;
                        Ok(stat.size.unwrap_or(0))
                    };
                    let (cache, bucket) = (size(cached.cache())?, size(cached.remote())?);
                    if cache != bucket {
                        note(path, CacheDifferenceKind::SizeDiffers { cache, bucket });
                    }
                }
                CacheCheck::Contents => {
                    let read = |b: &dyn Backend| -> Result<Vec<u8>> {
                        b.read(path)
                            .map(|c| c.data)
                            .map_err(|e| Error::backend(path.as_str(), e))
                    };
                    let (cache, bucket) = (read(cached.cache())?, read(cached.remote())?);
                    if cache.len() != bucket.len() {
                        note(
                            path,
                            CacheDifferenceKind::SizeDiffers {
                                cache: cache.len() as u64,
                                bucket: bucket.len() as u64,
                            },
                        );
                    } else if cache != bucket {
                        note(path, CacheDifferenceKind::ContentDiffers);
                    }
                }
            }
        }
        report.differences.sort_by(|a, b| a.path.cmp(&b.path));
        report.requests = cached.remote().requests() - before;
        Ok(report)
    }
}

/// Every content file below `folder` (markers and temporary files left out).
fn collect_files(
    backend: &dyn Backend,
    folder: &BackendPath,
    out: &mut BTreeMap<String, BackendPath>,
) -> Result<()> {
    let listing = match backend.list(folder) {
        Ok(listing) => listing,
        Err(keepsake_backend::Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(Error::backend(folder.as_str(), e)),
    };
    let entries: Vec<_> = listing
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::backend(folder.as_str(), e))?;
    for entry in entries {
        let path = folder
            .join(&entry.name)
            .map_err(|e| Error::backend(folder.as_str(), e))?;
        match entry.kind {
            EntryKind::Dir => collect_files(backend, &path, out)?,
            EntryKind::File => {
                if !is_temporary_name(&entry.name) && entry.name != NAMESPACE_MARKER_FILENAME {
                    out.insert(path.to_string(), path);
                }
            }
            EntryKind::Other => {}
        }
    }
    Ok(())
}
