//! Sync: copying namespaces, groups and snapshots from one datastore into another, as PBS's pull
//! sync job does, without a server: both sides are [`DataStore`]s (local, or S3 through the
//! cache), so sync does not care which backend either side has.
//!
//! What is copied is the stored bytes: chunks as DataBlobs (encrypted ones as they are, never
//! decoded or re-encoded), index and blob files byte for byte, and the manifest last, so that a
//! target snapshot is finished only once every file and chunk it needs is there. Each snapshot is
//! written under the target's writer locks (the group lock, the snapshot lock and PBS's shared
//! process lock on `.lock`), as a backup would be.
//!
//! Into an S3 target the bucket's chunk keys are listed once per run instead of asking for each
//! chunk (see [`DataStore::sync_from`] and `BucketChunks` for why relying on the listing is safe).
//!
//! With [`RemoveVanished::Remove`], target snapshots gone from the source are removed once every
//! selected snapshot was copied; each removal is decided under the target snapshot's locks, from
//! the source's authority, right before it happens.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use keepsake_backend::{Backend, ChunkDigest, ChunkInsert, WriteMode};
use keepsake_hierarchy::{
    Authid, BackupNamespace, BackupTime, CLIENT_LOG_BLOB_NAME, GroupFilter, MANIFEST_BLOB_NAME,
};
use keepsake_manifest::blob::DataBlob;
use keepsake_manifest::index::{ChunkIndex, IndexFile};
use keepsake_manifest::manifest::BackupManifest;

use crate::chunks::{Touch, chunk_path};
use crate::error::{Error, Result};
use crate::group::{Group, Unfinished};
use crate::hold::HeldSnapshot;
use crate::info::SortOrder;
use crate::process_lock::SharedProcessGuard;
use crate::snapshot::Snapshot;
use crate::store::DataStore;

/// Whether sync copies the source's `.protected` markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SyncProtection {
    /// Target snapshots are not protected, whatever the source says (as PBS's sync does).
    #[default]
    Ignore,
    /// A snapshot protected in the source is protected in the target once it is finished there.
    Copy,
}

/// Whether sync removes target snapshots that are gone from the source (PBS's `remove-vanished`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RemoveVanished {
    /// Target snapshots the source no longer has stay (as PBS's default).
    #[default]
    Keep,
    /// Finished, unprotected target snapshots in the synced scope (the mapped namespaces, the
    /// groups the filters select) that the source does not have are removed, after every
    /// selected snapshot was copied. Protected ones stay and are counted.
    ///
    /// Unlike PBS's remove-vanished, a source without any finished snapshot in the synced scope
    /// (an empty datastore or namespace, named by mistake, or one whose groups hold nothing yet)
    /// removes nothing: the sync fails with [`Error::SyncSourceEmpty`] before its first removal.
    Remove,
    /// As [`RemoveVanished::Remove`], also when the source holds no finished snapshot in the
    /// synced scope (PBS's behaviour): every unprotected target snapshot in scope is then removed.
    RemoveEvenIfSourceEmpty,
}

/// Called with the counts so far as a sync goes on (after each chunk and each snapshot copied),
/// for a progress display; it runs on the syncing thread, so it should be quick.
pub type SyncProgressHook = Arc<dyn Fn(&SyncReport) + Send + Sync>;

/// What to sync, and how. [`Default`] syncs everything from the source's root namespace into the
/// target's root namespace, every group, keeping the source's owners.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct SyncOptions {
    /// The source namespace to start from (the anchor).
    pub source_ns: BackupNamespace,
    /// The target namespace the source anchor maps to; a source namespace `anchor/a/b` goes to
    /// `target_ns/a/b`. Missing target namespaces are made.
    pub target_ns: BackupNamespace,
    /// How many namespace levels below the source anchor are synced (`None`: all; `Some(0)`: the
    /// anchor only).
    pub max_depth: Option<usize>,
    /// PBS group filters (include/exclude); empty: every group.
    pub group_filter: Vec<GroupFilter>,
    /// Only the last `n` finished snapshots of each source group are candidates (PBS's
    /// `transfer-last`).
    pub transfer_last: Option<usize>,
    /// The owner of target groups this sync makes, and the identity it writes as; `None`: each
    /// group's source owner. A target group that exists must be owned by (or actable as) it.
    pub owner: Option<Authid>,
    /// Whether protection is copied (default: not, as in PBS).
    pub protection: SyncProtection,
    /// Whether target snapshots gone from the source are removed (default: not, as in PBS).
    pub remove_vanished: RemoveVanished,
    /// How many groups are copied at a time (default [`DEFAULT_GROUP_WORKERS`]; PBS 4.2's
    /// sync jobs have the same knob).
    pub group_workers: Option<NonZeroUsize>,
    /// How many chunks each group's worker copies at a time (default
    /// [`DEFAULT_CHUNK_WORKERS`]): what hides an object store's request latency.
    pub chunk_workers: Option<NonZeroUsize>,
    /// Progress reports, if wanted.
    pub on_progress: Option<SyncProgressHook>,
}

/// Groups copied at a time when [`SyncOptions::group_workers`] is not set.
pub const DEFAULT_GROUP_WORKERS: usize = 2;

/// Chunks copied at a time per group worker when [`SyncOptions::chunk_workers`] is not set.
pub const DEFAULT_CHUNK_WORKERS: usize = 8;

impl fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncOptions")
            .field("source_ns", &self.source_ns)
            .field("target_ns", &self.target_ns)
            .field("max_depth", &self.max_depth)
            .field("group_filter", &self.group_filter)
            .field("transfer_last", &self.transfer_last)
            .field("owner", &self.owner)
            .field("protection", &self.protection)
            .field("remove_vanished", &self.remove_vanished)
            .field("group_workers", &self.group_workers)
            .field("chunk_workers", &self.chunk_workers)
            .field("on_progress", &self.on_progress.as_ref().map(|_| "hook"))
            .finish()
    }
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Source namespaces visited.
    pub namespaces: usize,
    /// Source groups that passed the filters.
    pub groups: usize,
    /// Finished source snapshots in those groups (before `transfer_last`): what the source
    /// holds in the synced scope.
    pub source_snapshots: usize,
    /// Snapshots copied (finished in the target by this run).
    pub snapshots: usize,
    /// Unfinished target snapshots (left by an interrupted sync or backup) removed and copied
    /// again.
    pub replaced_unfinished: usize,
    /// Chunks copied (the target lacked them).
    pub chunks: u64,
    /// Stored bytes of the chunks copied.
    pub chunk_bytes: u64,
    /// Chunks the target had already (not copied; touched, as a backup's reuse does).
    pub chunks_present: u64,
    /// Index and blob files copied, the manifests included.
    pub files: u64,
    /// Bytes of those files.
    pub file_bytes: u64,
    /// Target snapshots removed because the source no longer has them
    /// ([`RemoveVanished::Remove`]).
    pub removed_vanished: usize,
    /// Target snapshots gone from the source that stayed because they are protected.
    pub vanished_protected: usize,
    /// Chunks the target's bucket listing showed (an S3 target lists its bucket once, at the
    /// first chunk its cache does not hold; 0 when no listing was needed or the target is local).
    pub bucket_chunks_listed: u64,
}

impl DataStore {
    /// Copies from `source` into this datastore what `options` select and this datastore lacks.
    ///
    /// For every source namespace from `options.source_ns` down to `options.max_depth` (mapped
    /// below `options.target_ns`), every group passing `options.group_filter`, the finished
    /// source snapshots are candidates (with `transfer_last`, only the last `n` of them); as in
    /// PBS's pull, a candidate is copied only when it is newer than the target group's last
    /// finished snapshot, so snapshots the target pruned are not brought back and one older than
    /// the target's last is never inserted behind it.
    ///
    /// Each snapshot is copied as a backup is written (the target's group and snapshot locks and
    /// its shared process lock held): first the chunks its indexes reference that the target
    /// lacks (raw stored bytes, the source's CRC checked), then its index and blob files and
    /// `client.log.blob` byte for byte, and the manifest last, as stored (notes, verify state and
    /// signature included). A sync stopped before the manifest leaves an unfinished target
    /// snapshot (or, if the writer could clean up, none); the next run removes it and copies the
    /// snapshot again. Group notes are copied once a group's snapshots are (and into a target
    /// group of the sync's owner whose snapshots are all there, so that a run killed before them
    /// is completed); protection only with [`SyncProtection::Copy`] (also set on a finished
    /// target snapshot that lacks it, for the same reason).
    ///
    /// Groups are copied by up to `options.group_workers` threads, and each copies up to
    /// `options.chunk_workers` chunks at a time. Each distinct chunk is checked (and copied or
    /// touched) by one worker only; a worker that needs a chunk another is copying waits for it,
    /// so no snapshot's manifest is written before all its chunks are there. The report is the
    /// same whatever the order the workers finish in.
    ///
    /// Into an S3 target (a [`CachedBackend`](keepsake_backend::CachedBackend)) no chunk is
    /// asked for: one in the cache is touched; at the first chunk the cache lacks, the bucket's
    /// chunk keys are listed once ([`Backend::list_bucket_chunks`], a request per 1,000), a
    /// listed chunk gets a cache marker without a request and any other is uploaded with the
    /// create-only insert. For that the run holds the target's shared process lock from the
    /// listing to its end (a GC in another process is refused meanwhile), and a chunk is taken
    /// from the listing only while no GC of this process has run since; otherwise it is uploaded.
    ///
    /// With [`RemoveVanished::Remove`], once everything was copied (a sync that failed before
    /// removes nothing), every finished target snapshot in the synced scope (the target
    /// namespaces below `options.target_ns` to `options.max_depth`, the groups passing the
    /// filters, and with `options.owner` only groups it owns) that the source does not list is
    /// removed. Each removal is decided under the target snapshot's locks (snapshot and manifest
    /// lock, as [`Snapshot::destroy`] takes them) right before it: the snapshot is still
    /// finished, the source's authority (on S3 the bucket, not its cache) does not have it, and
    /// it is not protected (a protected one is counted in [`SyncReport::vanished_protected`]
    /// and stays). Unfinished target snapshots are never removed as vanished. When the source's
    /// scope holds no finished snapshot at all, [`RemoveVanished::Remove`] fails with
    /// [`Error::SyncSourceEmpty`] instead of removing the first one (a source named by mistake
    /// would otherwise empty the target); [`RemoveVanished::RemoveEvenIfSourceEmpty`] removes.
    ///
    /// # Errors
    /// The first error stops the sync (what was finished before stays): [`Error::NotFound`] for a
    /// missing source anchor, file or chunk; [`Error::NotOwner`] when a target group exists with
    /// another owner; [`Error::Locked`] when a target group or an unfinished target snapshot is
    /// busy; [`Error::ProcessLocked`] while another process collects the target's garbage;
    /// [`Error::Corrupt`] or [`Error::IndexMismatch`] for a damaged source chunk, index or
    /// manifest; [`Error::Invalid`] when a mapped namespace would be too deep;
    /// [`Error::SyncSourceEmpty`] (see above); [`Error::Backend`].
    pub fn sync_from(&self, source: &DataStore, options: &SyncOptions) -> Result<SyncReport> {
        self.require_writable("sync")?;
        if !source.namespace_exists(&options.source_ns)? {
            return Err(Error::NotFound {
                what: "namespace",
                path: options.source_ns.to_string(),
            });
        }
        let run = Run {
            target: self,
            source,
            options,
            report: Mutex::new(SyncReport::default()),
            chunks: Mutex::new(HashMap::new()),
            chunk_settled: Condvar::new(),
            chunk_check: Mutex::new(None),
            stop: AtomicBool::new(false),
        };
        // The plan first (namespaces made where a group goes), so that the groups can be
        // copied in parallel and counted the same way whatever the order they finish in.
        let mut jobs = Vec::new();
        let anchor_depth = options.source_ns.depth();
        for ns in source.iter_namespaces_recursive(&options.source_ns, options.max_depth)? {
            let ns = ns?;
            let below = ns.components().get(anchor_depth..).unwrap_or_default();
            let mut target_ns = options.target_ns.clone();
            for component in below {
                target_ns = target_ns.child(component)?;
            }
            run.with_report(|r| r.namespaces += 1);
            let mut groups = Vec::new();
            for group in source.iter_groups(&ns)? {
                let group = group?;
                if group.matches(&options.group_filter) {
                    groups.push(group);
                }
            }
            if groups.is_empty() {
                continue;
            }
            run.ensure_namespace(&target_ns)?;
            groups.sort_by(|a, b| a.name().cmp(b.name()));
            run.with_report(|r| r.groups += groups.len());
            jobs.extend(groups.into_iter().map(|g| (g, target_ns.clone())));
        }
        let workers = options
            .group_workers
            .map_or(DEFAULT_GROUP_WORKERS, NonZeroUsize::get);
        in_parallel(&jobs, workers, &run.stop, |(group, target_ns)| {
            run.group(group, target_ns)
        })?;
        let mut run = run;
        if options.remove_vanished != RemoveVanished::Keep {
            run.remove_vanished()?;
        }
        Ok(run.into_report())
    }
}

/// Runs `work` on every item with up to `workers` threads, items handed out in order. The first
/// error sets `stop` (no further item starts, and the work checks it between steps) and is
/// returned; of several, the one of the earliest item.
fn in_parallel<T: Sync>(
    items: &[T],
    workers: usize,
    stop: &AtomicBool,
    work: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    let workers = workers.min(items.len());
    if workers <= 1 {
        for item in items {
            if let Err(e) = work(item) {
                stop.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let errors: Mutex<Vec<(usize, Error)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else {
                        break;
                    };
                    if let Err(e) = work(item) {
                        stop.store(true, Ordering::SeqCst);
                        lock(&errors).push((i, e));
                    }
                }
            });
        }
    });
    let mut errors = errors.into_inner().unwrap_or_else(PoisonError::into_inner);
    errors.sort_by_key(|(i, _)| *i);
    match errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// A mutex's guard; a panic elsewhere leaves counts and chunk states still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a chunk is in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// A worker is checking or copying it; the others wait for it.
    InFlight,
    /// The target has it (found or copied in this run).
    Settled,
}

/// How a sync run decides about a chunk that the target's cache (if any) does not hold.
enum ChunkCheck {
    /// Chunk by chunk, as a backup does: asked of the backend, then inserted (a local target; an
    /// object store without a cache or a listing).
    PerChunk,
    /// From one listing of the target's bucket (see [`BucketChunks`]).
    Bucket(BucketChunks),
}

/// The chunk keys of an S3 target's bucket, listed once per run, and what keeps relying on them
/// safe until the run ends.
///
/// A listed chunk is taken as stored (an empty cache marker is made for it, whose fresh atime
/// keeps a later GC away, as a backup's touch does); one that is not listed is uploaded with the
/// backend's create-only insert, which reports a chunk another writer uploaded meanwhile as a
/// duplicate and overwrites nothing. No chunk costs a HEAD. The listing can only be stale by a
/// deletion, and only a GC deletes chunks:
/// - a GC of another process on this host needs PBS's process lock exclusively: the shared hold
///   taken before the listing and kept for the run refuses it until the run ends (and one that
///   runs already makes the sync fail with [`Error::ProcessLocked`], as a backup would);
/// - a GC of this process does not exclude writers, so each listed chunk is trusted only if no
///   GC of this process ran or runs since the listing (its process-lock epoch is unchanged),
///   checked under the chunk's shard lock, which that GC holds from its decision to delete a
///   chunk until the delete returned; a GC that starts after the check finds the marker younger
///   than its cutoff (lowered to the run's hold − 5 min). Otherwise the chunk is uploaded.
///
/// GCs on other hosts are refused in multi-host mode; other caches of the same bucket are the
/// stale-marker case a HEAD before an upload could not cover either.
struct BucketChunks {
    /// Sorted and distinct: 32 bytes a chunk.
    digests: Vec<[u8; 32]>,
    /// This process's GC epoch when the listing started; `None` (a GC of this process was
    /// running then): nothing listed is trusted.
    gc_epoch: Option<u64>,
    /// PBS's shared process lock, taken before the listing, held until the run ends.
    _hold: SharedProcessGuard,
}

/// One sync run's state, shared by its workers.
struct Run<'a> {
    target: &'a DataStore,
    source: &'a DataStore,
    options: &'a SyncOptions,
    report: Mutex<SyncReport>,
    // Chunks found in or copied to the target in this run: consecutive snapshots share most of
    // theirs, and one check (and touch) per run is enough (GC's atime cutoff is a day). Each
    // digest is claimed by one worker, so it is checked, copied and counted once.
    chunks: Mutex<HashMap<[u8; 32], ChunkState>>,
    chunk_settled: Condvar,
    // How chunks the target's cache lacks are decided, settled at the first such chunk.
    chunk_check: Mutex<Option<Arc<ChunkCheck>>>,
    // Set by the first error: the other workers stop at their next step.
    stop: AtomicBool,
}

impl Run<'_> {
    fn report_mut(&mut self) -> &mut SyncReport {
        self.report
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn with_report(&self, change: impl FnOnce(&mut SyncReport)) {
        change(&mut lock(&self.report));
    }

    fn into_report(self) -> SyncReport {
        self.report
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn ensure_namespace(&self, ns: &BackupNamespace) -> Result<()> {
        let mut missing = Vec::new();
        let mut current = Some(ns.clone());
        while let Some(ns) = current {
            if ns.is_root() || self.target.namespace_exists(&ns)? {
                break;
            }
            current = ns.parent();
            missing.push(ns);
        }
        for ns in missing.iter().rev() {
            match self.target.create_namespace(ns) {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn group(&self, source: &Group, target_ns: &BackupNamespace) -> Result<()> {
        let target = self.target.group(target_ns, source.name());
        let mut candidates: Vec<_> = source
            .list_backups()?
            .into_iter()
            .filter(|info| info.is_finished())
            .collect();
        self.with_report(|r| r.source_snapshots += candidates.len());
        crate::info::BackupInfo::sort(&mut candidates, SortOrder::OldestFirst);
        if let Some(last) = self.options.transfer_last {
            let skip = candidates.len().saturating_sub(last);
            candidates.drain(..skip);
        }
        let after = match target.exists()? {
            true => target
                .last_backup(Unfinished::Skip)?
                .map(|info| info.snapshot.time()),
            false => None,
        };
        let owner = match &self.options.owner {
            Some(owner) => owner.clone(),
            None => source.owner()?,
        };
        let mut copied = false;
        for info in candidates {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            if after.is_some_and(|after| info.snapshot.time() <= after) {
                // Not copied again; but protection set by a run killed between the manifest and
                // the marker is completed here.
                if self.options.protection == SyncProtection::Copy && info.protected {
                    let to = self.target.snapshot(target.ns(), &info.snapshot);
                    if to.is_finished()? && !to.is_protected()? {
                        to.set_protected(true)?;
                    }
                }
                continue;
            }
            let from = self.source.snapshot(source.ns(), &info.snapshot);
            self.snapshot(&from, &target, &owner)?;
            copied = true;
        }
        // Notes go with the copied snapshots; and into a group of this owner that a run killed
        // after its last snapshot left without them.
        let ours = copied
            || match target.owner() {
                Ok(current) => current == owner,
                Err(Error::NotFound { .. }) => false,
                Err(e) => return Err(e),
            };
        if ours {
            if let Some(notes) = source.notes()? {
                if target.notes()?.as_deref() != Some(notes.as_str()) {
                    target.set_notes(&notes)?;
                }
            }
        }
        Ok(())
    }

    fn snapshot(&self, from: &Snapshot, target: &Group, owner: &Authid) -> Result<()> {
        // The source snapshot cannot be pruned while it is read.
        let _source_lock = from.lock_shared()?;
        let manifest_raw = from.read_file(MANIFEST_BLOB_NAME)?;
        let manifest =
            BackupManifest::from_blob_bytes(&manifest_raw).map_err(|source| Error::Corrupt {
                path: format!("{}/{MANIFEST_BLOB_NAME}", from.relative_path()),
                source,
            })?;
        let to = self.target.snapshot(target.ns(), from.dir());
        if to.exists()? {
            // Not finished (the group's last finished snapshot is older): what an interrupted
            // sync or backup left. Destroy refuses it while a writer holds it.
            to.destroy()?;
            self.with_report(|r| r.replaced_unfinished += 1);
        }
        let mut writer = target.start_backup(owner, from.dir().time())?;
        for file in manifest.files() {
            let name = file.filename();
            let raw = from.read_file(name)?;
            if name.ends_with(".fidx") || name.ends_with(".didx") {
                let path = format!("{}/{name}", from.relative_path());
                let index = IndexFile::from_slice(&raw).map_err(|source| Error::Corrupt {
                    path: path.clone(),
                    source,
                })?;
                if index.archive_size() != file.size() || index.index_csum() != file.csum() {
                    return Err(Error::IndexMismatch { path });
                }
                let mut digests: Vec<[u8; 32]> = (0..index.chunk_count())
                    .filter_map(|i| index.digest(i).copied())
                    .collect();
                digests.sort_unstable();
                digests.dedup();
                self.chunks(&digests)?;
            }
            writer.add_raw_file(name, &raw)?;
            self.count_file(&raw);
        }
        // Not in the manifest, but part of the snapshot (PBS's pull copies it too).
        match from.read_file(CLIENT_LOG_BLOB_NAME) {
            Ok(raw) => {
                writer.add_raw_file(CLIENT_LOG_BLOB_NAME, &raw)?;
                self.count_file(&raw);
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let finished = writer.finish_raw(&manifest_raw)?;
        self.count_file(&manifest_raw);
        self.with_report(|r| r.snapshots += 1);
        self.progress();
        if self.options.protection == SyncProtection::Copy && from.is_protected()? {
            finished.set_protected(true)?;
        }
        Ok(())
    }

    fn progress(&self) {
        if let Some(hook) = &self.options.on_progress {
            let now = lock(&self.report).clone();
            hook(&now);
        }
    }

    fn count_file(&self, raw: &[u8]) {
        self.with_report(|r| {
            r.files += 1;
            r.file_bytes += raw.len() as u64;
        });
    }

    /// Makes sure the target has every chunk of `digests` (distinct), with up to
    /// `chunk_workers` copies at a time.
    fn chunks(&self, digests: &[[u8; 32]]) -> Result<()> {
        let workers = self
            .options
            .chunk_workers
            .map_or(DEFAULT_CHUNK_WORKERS, NonZeroUsize::get);
        // Its own stop flag: a chunk error ends this snapshot's copies; the caller's error
        // then stops the run.
        let stop = AtomicBool::new(self.stop.load(Ordering::SeqCst));
        in_parallel(digests, workers, &stop, |digest| self.chunk(digest))
    }

    fn chunk(&self, digest: &[u8; 32]) -> Result<()> {
        {
            let mut states = lock(&self.chunks);
            loop {
                match states.get(digest) {
                    Some(ChunkState::Settled) => return Ok(()),
                    Some(ChunkState::InFlight) => {
                        states = self
                            .chunk_settled
                            .wait(states)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                    None => {
                        states.insert(*digest, ChunkState::InFlight);
                        break;
                    }
                }
            }
        }
        let result = self.copy_chunk(digest);
        {
            let mut states = lock(&self.chunks);
            match result {
                Ok(_) => states.insert(*digest, ChunkState::Settled),
                // Another worker that needs it tries again.
                Err(_) => states.remove(digest),
            };
        }
        self.chunk_settled.notify_all();
        match result? {
            Some(bytes) => {
                self.with_report(|r| {
                    r.chunks += 1;
                    r.chunk_bytes += bytes;
                });
                self.progress();
            }
            None => self.with_report(|r| r.chunks_present += 1),
        }
        Ok(())
    }

    /// Copies one chunk the target lacks: `Some(stored bytes)`, or `None` if it had it.
    fn copy_chunk(&self, digest: &[u8; 32]) -> Result<Option<u64>> {
        // Behind a cache (an S3 target) the bucket is listed instead of asked chunk by chunk.
        if self.target.backend().capabilities().own_authority {
            return self.copy_chunk_asking(digest);
        }
        let (Some(lock), Some(cache)) = (
            self.target.process_lock()?,
            self.target.backend().host_local(),
        ) else {
            return self.copy_chunk_asking(digest);
        };
        let chunk = ChunkDigest::new(*digest);
        let rel = chunk.local_path();
        // The cache first, without a request: a copy or marker there means the object is in
        // the bucket (GC removes the cache file before the object, under the shard), and its
        // touch keeps a GC away as a backup's reuse does.
        if lock.with_chunk(digest, || self.target.touch_local(&rel))? == Touch::Touched {
            return Ok(None);
        }
        let check = self.chunk_check()?;
        let ChunkCheck::Bucket(bucket) = &*check else {
            return self.copy_chunk_asking(digest);
        };
        if bucket.digests.binary_search(digest).is_ok() {
            let relied_on = lock.with_chunk(digest, || {
                if bucket.gc_epoch.is_none() || lock.gc_epoch() != bucket.gc_epoch {
                    return Ok(false);
                }
                match cache.write(&rel, b"", WriteMode::CreateOnly) {
                    Ok(_) | Err(keepsake_backend::Error::AlreadyExists { .. }) => Ok(true),
                    Err(e) => Err(Error::backend(rel.as_str(), e)),
                }
            })?;
            if relied_on {
                return Ok(None);
            }
        }
        // Not listed (or the listing is not to be trusted any more): uploaded without asking;
        // the create-only insert tells a duplicate. Under the shard, so that a GC of this process
        // never deletes the object between a "duplicate" answer and the cache copy.
        let blob = self.read_source_chunk(digest)?;
        let inserted = lock.with_chunk(digest, || {
            self.target.backend().insert_chunk(&chunk, blob.as_bytes())
        });
        match inserted {
            Ok(ChunkInsert::Stored) => Ok(Some(blob.as_bytes().len() as u64)),
            Ok(ChunkInsert::Duplicate) => Ok(None),
            Err(e) => Err(Error::backend(rel.as_str(), e)),
        }
    }

    /// How chunks the target's cache lacks are decided: settled once per run (the bucket listed
    /// if the target has one), the other workers waiting for it.
    fn chunk_check(&self) -> Result<Arc<ChunkCheck>> {
        let mut slot = lock(&self.chunk_check);
        if let Some(check) = &*slot {
            return Ok(Arc::clone(check));
        }
        let check = Arc::new(self.list_bucket()?);
        *slot = Some(Arc::clone(&check));
        Ok(check)
    }

    /// Lists the target's bucket (see [`BucketChunks`]), or says to ask chunk by chunk.
    fn list_bucket(&self) -> Result<ChunkCheck> {
        let Some(process_lock) = self.target.process_lock()? else {
            return Ok(ChunkCheck::PerChunk);
        };
        // Before the listing: from here on no GC of another process runs, and the epoch tells
        // whether one of this process did.
        let hold = process_lock.shared(crate::writer::epoch_now())?;
        let gc_epoch = process_lock.gc_epoch();
        let mut digests = Vec::new();
        let listed = self
            .target
            .backend()
            .list_bucket_chunks(&mut |page| {
                if gc_epoch.is_some() {
                    digests.extend(page.iter().map(|d| *d.as_bytes()));
                }
                Ok(())
            })
            .map_err(|e| Error::backend(".chunks", e))?;
        let Some(listed) = listed else {
            return Ok(ChunkCheck::PerChunk);
        };
        digests.sort_unstable();
        digests.dedup();
        digests.shrink_to_fit();
        self.with_report(|r| r.bucket_chunks_listed = listed);
        Ok(ChunkCheck::Bucket(BucketChunks {
            digests,
            gc_epoch,
            _hold: hold,
        }))
    }

    /// A source chunk's stored bytes, its CRC checked.
    fn read_source_chunk(&self, digest: &[u8; 32]) -> Result<DataBlob> {
        let raw = self.source.read_chunk(digest)?;
        // The CRC at least: a chunk damaged in the source is not spread to the target. Its
        // digest cannot be checked without decoding (nor at all when encrypted without the key).
        DataBlob::from_raw(raw).map_err(|source| Error::Corrupt {
            path: chunk_path(digest),
            source,
        })
    }

    /// [`Run::copy_chunk`] as a backup decides: the target asked whether it has the chunk (and
    /// touching it if so), then the insert a backup makes ([`DataStore::store_encoded_chunk`]).
    fn copy_chunk_asking(&self, digest: &[u8; 32]) -> Result<Option<u64>> {
        let chunk = ChunkDigest::new(*digest);
        if self.target.chunk_known(&chunk)? {
            return Ok(None);
        }
        let blob = self.read_source_chunk(digest)?;
        match self.target.store_encoded_chunk(&chunk, blob.as_bytes())? {
            ChunkInsert::Stored => Ok(Some(blob.as_bytes().len() as u64)),
            ChunkInsert::Duplicate => Ok(None),
        }
    }

    /// Removes the target snapshots in the synced scope that the source no longer has (see
    /// [`DataStore::sync_from`]).
    fn remove_vanished(&mut self) -> Result<()> {
        let options = self.options;
        if !self.target.namespace_exists(&options.target_ns)? {
            return Ok(());
        }
        let anchor_depth = options.target_ns.depth();
        for ns in self
            .target
            .iter_namespaces_recursive(&options.target_ns, options.max_depth)?
        {
            let ns = ns?;
            let below = ns.components().get(anchor_depth..).unwrap_or_default();
            let mut source_ns = Some(options.source_ns.clone());
            for component in below {
                source_ns = source_ns.and_then(|n| n.child(component).ok());
            }
            // A target namespace no source namespace can map to (too deep) is not the sync's
            // to judge: nothing there is removed.
            let Some(source_ns) = source_ns else {
                continue;
            };
            let mut groups = Vec::new();
            for group in self.target.iter_groups(&ns)? {
                let group = group?;
                if group.matches(&options.group_filter) {
                    groups.push(group);
                }
            }
            groups.sort_by(|a, b| a.name().cmp(b.name()));
            for group in groups {
                if let Some(owner) = &options.owner {
                    if &group.owner()? != owner {
                        continue;
                    }
                }
                let from = self.source.group(&source_ns, group.name());
                self.remove_vanished_in(&group, &from)?;
            }
        }
        Ok(())
    }

    fn remove_vanished_in(&mut self, target: &Group, source: &Group) -> Result<()> {
        // The whole source listing, from the authority, or nothing is removed (an error stops
        // here): a snapshot missing from a stale cache or a failed listing is not gone.
        let in_source: HashSet<BackupTime> = crate::moves::snapshot_times_authoritative(source)?
            .into_iter()
            .collect();
        let mut backups = target.list_backups()?;
        crate::info::BackupInfo::sort(&mut backups, SortOrder::OldestFirst);
        let mut removed = false;
        for info in backups {
            if !info.is_finished() || in_source.contains(&info.snapshot.time()) {
                continue;
            }
            if info.protected {
                self.report_mut().vanished_protected += 1;
                continue;
            }
            let snapshot = self.target.snapshot(target.ns(), &info.snapshot);
            let held = HeldSnapshot::take(snapshot.clone())?;
            // Decided again under the locks, which keep a writer, a destroy and a protect away.
            if !snapshot.is_finished()? {
                continue;
            }
            let from = self.source.snapshot(source.ns(), &info.snapshot);
            if from.exists()? || crate::moves::exists_authoritative(&from)? {
                continue;
            }
            if self.options.remove_vanished == RemoveVanished::Remove
                && self.report_mut().source_snapshots == 0
            {
                return Err(Error::SyncSourceEmpty {
                    source_store: self.source.name().to_owned(),
                    source_ns: self.options.source_ns.to_string(),
                    first: snapshot.relative_path(),
                });
            }
            match snapshot.remove_now(Some(&held)) {
                Ok(()) => {
                    held.release_gone();
                    self.report_mut().removed_vanished += 1;
                    removed = true;
                }
                Err(Error::Protected { .. }) => self.report_mut().vanished_protected += 1,
                Err(e) => return Err(e),
            }
        }
        if removed {
            if let Ok(guard) = target.lock() {
                // Best effort, as a destroy does: a group with snapshots left stays.
                let _ = target.remove_folder(guard);
            }
        }
        Ok(())
    }
}
