//! Garbage collection of an S3 datastore (PBS 4's, spec 9.6), failing closed: every deletion is
//! decided from the bucket's own listing, right before it is sent.
//!
//! 1. **Mark.** The cache's indexes are marked as on a local datastore (atime of the cache's
//!    chunk copies and markers), then the bucket's: one listing of `.cnt/`; every `.fidx`/`.didx`
//!    is read from the cache when the cache holds that version (same ETag and size), else from
//!    the bucket (a GET into memory; the cache is not written). So a snapshot another host, PBS
//!    or an older cache wrote is marked even though this cache does not know it. The listing
//!    repeats until it shows no index not read yet (a snapshot moved during one listing is in
//!    the next). Chosen over a cache refresh: a refresh removes cache files the bucket lacks,
//!    which would break a backup of this process in progress, and a dry run must not write.
//! 2. **Sweep the bucket.** One listing of `.chunks/`. A referenced chunk is kept (and, on a
//!    run, gets an empty cache marker if it has no cache file, as PBS re-creates them). An
//!    unreferenced object is deleted only if its upload time *and* its cache file's atime (if
//!    there is one) are older than the cutoff; so an object uploaded since the cutoff (by any
//!    host) is kept whether or not this cache knows it. Deletions go in DeleteObjects batches
//!    of 100 (or fewer, 5 s after the batch's first decision); for each batch the in-process
//!    chunk shards of its digests are held from the decision until the request returned, and
//!    the cache files of the batch go *before* the request: a writer of this process can
//!    neither rely on a chunk being deleted (it waits, finds no cache file, asks the bucket and
//!    uploads again after the delete) nor keep a stale marker.
//! 3. **Sweep the cache.** The local sweep over the cache's `.chunks` (copies and markers no
//!    index references, atime older than the cutoff).
//!
//! Writers of other processes on this host hold PBS's process lock and make GC refuse;
//! writers of this process lower the cutoff and hold the chunk shards (see above). Other hosts
//! (multi-host mode) are not covered: a backup there can reuse a chunk uploaded before the
//! cutoff, found through its own cache, and nothing in the bucket shows it until its index is
//! uploaded; so a run refuses in multi-host mode ([`GcRefusal::MultiHost`]).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::sync::MutexGuard;

use keepsake_backend::{
    Backend, BackendPath, CachedBackend, ChunkObject, ContentObject, RequestCounts, WriteMode,
};
use keepsake_manifest::index::{ChunkIndex, IndexFile};

use crate::error::{Error, GcRefusal, Result};
use crate::gc::{
    ChunkDir, DigestSet, GC_STATUS_FILE_NAME, GcMode, GcOptions, GcPhase, GcReport, GcStatus,
    Sweep, parse_chunk_name,
};
use crate::process_lock::ExclusiveProcessGuard;
use crate::store::{CHUNK_DIR_NAME, DataStore, path};
use crate::writer::epoch_now;

/// PBS 4's `S3_DELETE_BATCH_LIMIT`: objects per DeleteObjects request.
pub const S3_DELETE_BATCH: usize = 100;

/// A batch is sent at the latest this long after its first decision, however small (PBS defers
/// up to 300 s; keepsake holds the batch's chunk shards meanwhile, which writers of this process
/// wait for, so it waits much less).
const BATCH_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// What the bucket side of an S3 garbage collection did ([`GcReport::bucket`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BucketGc {
    /// Index objects of the bucket read (from the cache or the bucket).
    pub indexes: u64,
    /// Of those, read from the bucket because the cache lacked them or held another version.
    pub indexes_fetched: u64,
    /// Objects listed below `.chunks/`.
    pub chunk_objects: u64,
    /// Keys below `.chunks/` that are not chunk names (never deleted).
    pub skipped_keys: u64,
    /// Empty cache markers made for referenced chunks the cache had no file of.
    pub markers_created: u64,
    /// DeleteObjects requests sent.
    pub delete_batches: u64,
    /// Requests sent to the bucket by the whole run.
    pub requests: RequestCounts,
    /// Objects handed to the sweep so far (for progress).
    chunk_objects_seen: u64,
}

impl DataStore {
    /// Garbage collection of an S3 datastore (PBS 4's: mark, sweep the bucket's `.chunks/`
    /// in DeleteObjects batches of 100, sweep the cache; see the module docs of `gc_s3.rs` in
    /// ARCHITECTURE.md's "Garbage collection"). `cached` must be the backend this store was
    /// built with. Takes PBS's process lock on the cache's `.lock` like
    /// [`DataStore::garbage_collect`], and the same options; a dry run lists, reads and counts,
    /// and changes nothing (no lock, no atime, no marker, no deletion, no `.gc-status`).
    ///
    /// Fails closed: a chunk is deleted only if no index in the bucket (read when the listing
    /// ran, and again until a listing shows nothing new) nor in the cache references it, its
    /// object was uploaded before the cutoff and its cache file, if any, was not touched since.
    /// An error at any point (a listing, an index, a delete) ends the run with that error; what
    /// was deleted until then was unreferenced.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use keepsake_backend::{CachedBackend, LocalBackend, ObjectBackend, SyncLevel};
    /// use keepsake_datastore::{DataStore, Encryption, GcOptions};
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
    /// let new = store.insert_chunk(b"unreferenced, but new", Encryption::None)?;
    /// let report = store.garbage_collect_s3(&cached, &GcOptions::default())?;
    /// assert_eq!(report.status.removed_chunks, 0);
    /// assert!(store.chunk_exists(&new.digest)?);
    /// let bucket = report.bucket.expect("an S3 run reports its bucket side");
    /// println!("{} objects listed, {} requests", bucket.chunk_objects, bucket.requests.total());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for another backend; [`Error::GcRefused`] in multi-host mode
    /// ([`GcRefusal::MultiHost`], a run only) or when the cache ignores atime updates;
    /// [`Error::ProcessLocked`]; [`Error::ReadOnly`] for a run on a read-only store;
    /// [`Error::Corrupt`] for an index that cannot be read; [`Error::Backend`] for a failed
    /// request (nothing referenced was deleted); [`Error::Io`].
    pub fn garbage_collect_s3(
        &self,
        cached: &CachedBackend,
        options: &GcOptions,
    ) -> Result<GcReport> {
        self.check_is_own_backend(cached)?;
        let refused = |refusal| Error::GcRefused {
            store: self.name().to_owned(),
            refusal,
        };
        let mode = options.mode;
        if mode == GcMode::Run && self.is_multi_host() {
            return Err(refused(GcRefusal::MultiHost));
        }
        let before = cached.remote().requests();
        let root = cached.cache().root().to_path_buf();
        let started = epoch_now();
        let guard = self.gc_guard(&root, mode, started)?;

        options.enter(GcPhase::Mark);
        let marked = DigestSet::new();
        let mut status = GcStatus {
            upid: options.upid.clone(),
            ..GcStatus::default()
        };
        // The cache's own indexes: also the ones of backups of this process not uploaded yet.
        let mut local_status = GcStatus::default();
        self.mark(&root, options, &marked, &mut local_status)?;
        let mut bucket = BucketGc::default();
        options.enter(GcPhase::MarkBucket);
        self.mark_bucket_indexes(cached, options, &marked, &mut status, &mut bucket)?;

        options.enter(GcPhase::Sweep);
        let cutoff = options.cutoff(started, guard.as_ref());
        let mut sweep = BucketSweep {
            store: self,
            cached,
            marked: &marked,
            guard: guard.as_ref(),
            cutoff,
            started,
            mode,
            status: &mut status,
            bucket: &mut bucket,
            shards: Vec::new(),
            batch: Vec::new(),
            batch_started: None,
            referenced_seen: 0,
            failure: None,
        };
        let listing = cached.remote().for_each_chunk_page(|page| {
            let result = sweep.page(page);
            options.progress(GcPhase::Sweep, sweep.bucket.chunk_objects_seen, None);
            result
        });
        if let Some(e) = sweep.failure.take() {
            return Err(e);
        }
        let listing = listing.map_err(|e| Error::backend(CHUNK_DIR_NAME, e))?;
        sweep.flush()?;
        let referenced_seen = sweep.referenced_seen;
        drop(sweep);
        bucket.chunk_objects = listing.listed;
        bucket.skipped_keys += listing.skipped;

        if mode == GcMode::Run {
            // The cache's copies and markers: nothing in it is the authority, so its counts
            // are not the run's.
            options.enter(GcPhase::SweepCache);
            let chunk_dir = ChunkDir::open(&root)?;
            let local = Sweep {
                chunks: &chunk_dir,
                marked: &marked,
                guard: guard.as_ref(),
                cutoff,
                started,
                mode,
                progress: (options, GcPhase::SweepCache),
            };
            local.run(options.thread_count(), &mut GcStatus::default())?;
            if let Ok(json) = serde_json::to_vec(&status) {
                let _ =
                    cached
                        .cache()
                        .write(&path(GC_STATUS_FILE_NAME)?, &json, WriteMode::Replace);
            }
        }
        drop(guard);
        bucket.requests = cached.remote().requests() - before;
        let referenced = marked.len();
        Ok(GcReport::new(
            mode,
            status,
            (started, cutoff),
            (referenced, referenced.saturating_sub(referenced_seen)),
            Some(bucket),
        ))
    }

    /// Phase 1 on the bucket: reads every index object the bucket lists (from the cache when it
    /// holds that version), marking digests not seen yet; lists again until nothing is new.
    fn mark_bucket_indexes(
        &self,
        cached: &CachedBackend,
        options: &GcOptions,
        marked: &DigestSet,
        status: &mut GcStatus,
        bucket: &mut BucketGc,
    ) -> Result<()> {
        let mut read: HashSet<(BackendPath, Option<String>)> = HashSet::new();
        let mut total = 0;
        loop {
            let objects = cached
                .list_content_objects()
                .map_err(|e| Error::backend(".cnt", e))?;
            let fresh: Vec<ContentObject> = objects
                .into_iter()
                .filter(is_index_object)
                .filter(|o| !read.contains(&(o.path.clone(), o.e_tag.clone())))
                .collect();
            if fresh.is_empty() {
                return Ok(());
            }
            total += fresh.len() as u64;
            for object in fresh {
                options.progress(GcPhase::MarkBucket, read.len() as u64, Some(total));
                // A cache copy that cannot be read (changed since the listing) is read from the
                // bucket instead.
                // The cache's bytes only where their record says, by content, that they are the
                // listed version: a copy changed behind the backend's back is not trusted.
                let bytes = match (&object.e_tag, object.cached) {
                    (Some(e_tag), true) => cached.cached_copy_of(&object.path, e_tag),
                    _ => None,
                };
                let bytes = match bytes {
                    Some(bytes) => bytes,
                    None => {
                        bucket.indexes_fetched += 1;
                        match cached.remote().read(&object.path) {
                            Ok(contents) => contents.data,
                            // Pruned since the listing: nothing to keep for it.
                            Err(keepsake_backend::Error::NotFound { .. }) => {
                                read.insert((object.path, object.e_tag));
                                continue;
                            }
                            Err(e) => return Err(Error::backend(object.path.as_str(), e)),
                        }
                    }
                };
                let index = IndexFile::from_bytes(bytes).map_err(|source| Error::Corrupt {
                    path: object.path.to_string(),
                    source,
                })?;
                let mut size = 0;
                for chunk in index.chunks() {
                    size = size.max(chunk.range.end);
                    marked.insert(chunk.digest);
                }
                bucket.indexes += 1;
                status.index_file_count += 1;
                status.index_data_bytes += size;
                read.insert((object.path, object.e_tag));
            }
        }
    }
}

/// An index file to mark: `.fidx`/`.didx`, in no hidden folder. A hidden index file is marked
/// (PBS's walk skips it, but marking more never loses anything), as in the local walk.
fn is_index_object(object: &ContentObject) -> bool {
    let name = object.path.file_name().unwrap_or_default();
    let folders = object.path.components().count().saturating_sub(1);
    (name.ends_with(".fidx") || name.ends_with(".didx"))
        && !object
            .path
            .components()
            .take(folders)
            .any(|c| c.starts_with('.'))
}

/// Phase 2: the state of the bucket sweep across listing pages.
struct BucketSweep<'a, 'g> {
    store: &'a DataStore,
    cached: &'a CachedBackend,
    marked: &'a DigestSet,
    guard: Option<&'g ExclusiveProcessGuard>,
    cutoff: i64,
    started: i64,
    mode: GcMode,
    status: &'a mut GcStatus,
    bucket: &'a mut BucketGc,
    /// The chunk shards held for the pending batch (indexed by the digest's first byte).
    shards: Vec<(u8, MutexGuard<'g, ()>)>,
    /// Objects decided for deletion (their cache files are gone already), with their sizes.
    batch: Vec<(BackendPath, u64, bool)>,
    /// When the batch's first object was decided.
    batch_started: Option<std::time::Instant>,
    /// Referenced digests the bucket holds (to count the missing ones).
    referenced_seen: u64,
    /// The error that ended the listing, if one of ours did.
    failure: Option<Error>,
}

impl BucketSweep<'_, '_> {
    /// One listing page; a failure is kept in `failure` (the listing only carries backend
    /// errors) and ends the listing.
    fn page(&mut self, page: Vec<ChunkObject>) -> keepsake_backend::Result<()> {
        for object in page {
            let result = self.object(object).and_then(|()| {
                if self
                    .batch_started
                    .is_some_and(|t| t.elapsed() >= BATCH_MAX_AGE)
                {
                    self.flush()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = result {
                self.failure = Some(e);
                return Err(keepsake_backend::Error::Io {
                    path: CHUNK_DIR_NAME.into(),
                    source: std::io::Error::other("garbage collection stopped"),
                });
            }
        }
        Ok(())
    }

    fn object(&mut self, object: ChunkObject) -> Result<()> {
        self.bucket.chunk_objects_seen += 1;
        let name = object.path.file_name().unwrap_or_default();
        let Some((digest, bad)) = parse_chunk_name(name) else {
            self.bucket.skipped_keys += 1;
            return Ok(()); // not a chunk of this store: never deleted
        };
        let marked = self.marked.contains(&digest);
        let local = self.cached.cache().local_path(&object.path);
        let s = &mut *self.status;
        if marked && !bad {
            self.referenced_seen += 1;
            s.disk_chunks += 1;
            s.disk_bytes += object.size;
            if self.mode == GcMode::Run
                && self
                    .store
                    .touch_local(&object.path)
                    .map(|t| t == crate::chunks::Touch::Missing)?
            {
                match self
                    .cached
                    .cache()
                    .write(&object.path, b"", WriteMode::CreateOnly)
                {
                    Ok(_) => self.bucket.markers_created += 1,
                    Err(keepsake_backend::Error::AlreadyExists { .. }) => {}
                    Err(e) => return Err(Error::backend(object.path.as_str(), e)),
                }
            }
            return Ok(());
        }
        if marked {
            // A bad copy of a referenced chunk: kept while the chunk is referenced, as PBS.
            s.still_bad += 1;
            s.disk_bytes += object.size;
            return Ok(());
        }
        // From here on a writer of this process must not decide that this chunk exists until
        // the batch is deleted.
        if let Some(guard) = self.guard {
            if !self.shards.iter().any(|(b, _)| *b == digest[0]) {
                self.shards
                    .push((digest[0], guard.lock().chunk_shard(digest[0])));
            }
        }
        let touched = match std::fs::symlink_metadata(&local) {
            Ok(meta) => Some(meta.atime()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(Error::Io {
                    path: local,
                    source,
                });
            }
        };
        let young =
            object.last_modified >= self.cutoff || touched.is_some_and(|t| t >= self.cutoff);
        let s = &mut *self.status;
        let in_use =
            object.last_modified >= self.started || touched.is_some_and(|t| t >= self.started);
        if young {
            if bad {
                s.still_bad += 1;
                s.disk_bytes += object.size;
            } else if in_use {
                // Uploaded or touched since GC started (a writer, the atime check), as the
                // local sweep counts a chunk whose atime is newer than its start.
                s.disk_chunks += 1;
                s.disk_bytes += object.size;
            } else {
                s.pending_chunks += 1;
                s.pending_bytes += object.size;
            }
            return Ok(());
        }
        if self.mode == GcMode::Run && touched.is_some() {
            // Before the delete: a marker must never outlive its object.
            match std::fs::remove_file(&local) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        path: local,
                        source,
                    });
                }
            }
        }
        self.batch_started
            .get_or_insert_with(std::time::Instant::now);
        self.batch.push((object.path, object.size, bad));
        if self.batch.len() >= S3_DELETE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Deletes the batch (one DeleteObjects request on a run), counts it, releases its shards.
    fn flush(&mut self) -> Result<()> {
        self.batch_started = None;
        if self.batch.is_empty() {
            self.shards.clear();
            return Ok(());
        }
        if self.mode == GcMode::Run {
            let paths: Vec<BackendPath> = self.batch.iter().map(|(p, _, _)| p.clone()).collect();
            self.cached
                .remote()
                .delete_chunk_objects(&paths)
                .map_err(|e| Error::backend(CHUNK_DIR_NAME, e))?;
            self.bucket.delete_batches += 1;
        }
        for (_, size, bad) in self.batch.drain(..) {
            self.status.removed_bytes += size;
            if bad {
                self.status.removed_bad += 1;
            } else {
                self.status.removed_chunks += 1;
            }
        }
        self.shards.clear();
        Ok(())
    }
}

impl DataStore {
    /// [`DataStore::usage`] of an S3 datastore: the filesystem figures are the cache folder's,
    /// the index figures the cache's indexes, and the chunk count and bytes come from one
    /// listing of the bucket's `.chunks/` (the cache may hold only empty markers); `.bad`
    /// copies and other keys are not counted. `cached` must be the backend this store was built
    /// with. Reads only.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for another backend; [`Error::Backend`] if the listing
    /// fails; the errors of [`DataStore::usage`].
    pub fn usage_s3(&self, cached: &CachedBackend) -> Result<crate::gc::StoreUsage> {
        self.check_is_own_backend(cached)?;
        let mut usage = self.usage()?;
        let (mut count, mut bytes) = (0, 0);
        cached
            .remote()
            .for_each_chunk_page(|page| {
                for object in page {
                    let name = object.path.file_name().unwrap_or_default();
                    if matches!(parse_chunk_name(name), Some((_, false))) {
                        count += 1;
                        bytes += object.size;
                    }
                }
                Ok(())
            })
            .map_err(|e| Error::backend(CHUNK_DIR_NAME, e))?;
        usage.chunk_count = count;
        usage.chunk_bytes = bytes;
        Ok(usage)
    }
}
