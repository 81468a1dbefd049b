//! Garbage collection of S3 datastores (`garbage_collect_s3`), on the in-memory object store and
//! on the S3 test server: referenced chunks survive (content verify finds none missing), old
//! unreferenced objects go in batches, new ones are pending, a snapshot another cache wrote to
//! the bucket keeps its chunks, a failing endpoint fails the run without losing anything
//! referenced, and the requests it sends are counted.
//!
//! Objects cannot be aged in a bucket (the server sets their upload time), so these tests use a
//! cutoff of a few seconds (`GcOptions::atime_cutoff_secs`) and wait that long.

mod common;

use std::sync::Arc;
use std::time::Duration;

use keepsake_backend::{
    Backend, CachedBackend, ChunkDigest, LocalBackend, ObjectBackend, SyncLevel,
};
use keepsake_datastore::{
    ChunkVerification, DataStore, Encryption, Error, GcMode, GcOptions, GcRefusal, VerifyOptions,
    VerifyScope,
};
use keepsake_hierarchy::{Authid, BackupNamespace, BackupTime};
use keepsake_testkit::faults::{FaultPlan, FaultyStore, Operation};

use common::TestStore;

/// The cutoff of these tests: objects older than this (seconds) are removable.
const CUTOFF: u64 = 5;

fn owner() -> Authid {
    "root@pam".parse().unwrap()
}

fn backup(store: &DataStore, group: &str, time: i64, seed: u8, chunks: usize) {
    let group = store.group(&BackupNamespace::root(), &group.parse().unwrap());
    let mut w = group
        .start_backup(&owner(), BackupTime::from_epoch(time).unwrap())
        .unwrap();
    let pieces: Vec<Vec<u8>> = (0..chunks)
        .map(|i| vec![seed.wrapping_add(i as u8); 1000 + i])
        .collect();
    w.add_dynamic_archive("root.pxar.didx", pieces, Encryption::None)
        .unwrap();
    w.finish().unwrap();
}

/// Unreferenced chunks, inserted now.
fn plant(store: &DataStore, tag: &str, n: usize) -> Vec<[u8; 32]> {
    (0..n)
        .map(|i| {
            store
                .insert_chunk(format!("{tag} {i}").as_bytes(), Encryption::None)
                .unwrap()
                .digest
        })
        .collect()
}

fn in_bucket(t: &TestStore, digest: &[u8; 32]) -> bool {
    t.cached
        .as_ref()
        .unwrap()
        .remote()
        .chunk_exists(&ChunkDigest::new(*digest))
        .unwrap()
}

fn content_verify_clean(store: &DataStore) -> u64 {
    let report = store
        .verify(
            &VerifyScope::Store,
            &VerifyOptions::default().chunks(ChunkVerification::Content),
        )
        .unwrap();
    let problems: Vec<String> = report.problems().map(|(_, p)| p.to_string()).collect();
    assert_eq!(report.content.missing, 0, "{problems:?}");
    assert_eq!(report.content.corrupt, 0, "{problems:?}");
    assert!(report.is_ok(), "{problems:?}");
    report.content.verified
}

fn wait_past_cutoff() {
    std::thread::sleep(Duration::from_secs(CUTOFF + 2));
}

fn stores(test: &str) -> Vec<TestStore> {
    let mut stores = vec![common::cached_memory()];
    stores.extend(common::cached_s3(test));
    stores
}

#[test]
fn referenced_chunks_stay_old_unreferenced_objects_go_in_batches_new_ones_are_pending() {
    for t in stores("gc_s3_sweep") {
        let cached = t.cached.clone().unwrap();
        backup(&t.store, "vm/1", 1_700_000_000, 1, 5);
        backup(&t.store, "vm/2", 1_700_000_000, 100, 4);
        // 150 old ones: two DeleteObjects batches (100 + 50).
        let old = plant(&t.store, "old", 150);
        wait_past_cutoff();
        let new = plant(&t.store, "new", 3);
        // Older than GC's start (else they count as in use), younger than the cutoff.
        std::thread::sleep(Duration::from_millis(1100));
        let options = GcOptions::default().atime_cutoff_secs(CUTOFF);

        let before = cached.remote().requests();
        let dry = t
            .store
            .garbage_collect_s3(&cached, &options.clone().mode(GcMode::DryRun))
            .unwrap();
        let used = cached.remote().requests() - before;
        println!("{}: dry run {dry:?}\n  requests {used:?}", t.kind);
        assert_eq!(dry.status.removed_chunks, 150, "{}: {dry:?}", t.kind);
        assert_eq!(dry.status.pending_chunks, 3, "{}", t.kind);
        assert_eq!(
            used.delete + used.put,
            0,
            "{}: a dry run changes nothing",
            t.kind
        );
        assert!(old.iter().all(|d| in_bucket(&t, d)), "{}", t.kind);
        assert!(t.store.gc_status().unwrap().is_none(), "{}", t.kind);

        let before = cached.remote().requests();
        let report = t.store.garbage_collect_s3(&cached, &options).unwrap();
        let used = cached.remote().requests() - before;
        let bucket = report.bucket.unwrap();
        println!("{}: run {report:?}\n  requests {used:?}", t.kind);
        assert_eq!(report.status.removed_chunks, 150, "{}", t.kind);
        assert_eq!(report.status.pending_chunks, 3, "{}", t.kind);
        assert_eq!(report.missing_chunks, 0, "{}", t.kind);
        assert_eq!(report.referenced_chunks, 9, "{}", t.kind);
        assert_eq!(
            report.status.disk_chunks,
            9 + 1,
            "{}: and the zero chunk",
            t.kind
        );
        assert_eq!(report.status.index_file_count, 2, "{}", t.kind);
        assert_eq!(bucket.delete_batches, 2, "{}", t.kind);
        assert_eq!(
            bucket.indexes_fetched, 0,
            "{}: the cache had every index",
            t.kind
        );
        assert!(old.iter().all(|d| !in_bucket(&t, d)), "{}", t.kind);
        assert!(new.iter().all(|d| in_bucket(&t, d)), "{}", t.kind);
        for d in &old {
            assert!(
                !t.root().join(keepsake_datastore::chunk_path(d)).exists(),
                "{}: no cache copy or marker outlives its object",
                t.kind
            );
        }
        if t.kind == "cached-s3" {
            // Loose bounds: two listings of the content (a second shows nothing new), one of the
            // chunks, the atime check's zero chunk, two deletes; no GET, no HEAD per chunk.
            assert_eq!(used.delete, 2, "{used:?}");
            assert!(used.list >= 3 && used.list <= 6, "{used:?}");
            assert!(used.get + used.head <= 4, "{used:?}");
            assert_eq!(used, bucket.requests);
        }
        assert_eq!(content_verify_clean(&t.store), 9, "{}", t.kind);
        assert_eq!(t.store.gc_status().unwrap(), Some(report.status.clone()));

        // Once more: at most the three new ones have aged past the cutoff meanwhile.
        let again = t.store.garbage_collect_s3(&cached, &options).unwrap();
        assert!(again.status.removed_chunks <= 3, "{}: {again:?}", t.kind);
        content_verify_clean(&t.store);
        // A referenced chunk whose cache file is gone gets an empty marker again (as PBS).
        let first = keepsake_manifest::crypt::chunk_digest(&[1u8; 1000], None);
        let file = t.root().join(keepsake_datastore::chunk_path(&first));
        std::fs::remove_file(&file).unwrap();
        let again = t.store.garbage_collect_s3(&cached, &options).unwrap();
        assert_eq!(again.bucket.unwrap().markers_created, 1, "{}", t.kind);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "{}", t.kind);
        assert_eq!(content_verify_clean(&t.store), 9, "{}", t.kind);
    }
}

#[test]
fn a_snapshot_another_cache_wrote_keeps_its_chunks() {
    for first in stores("gc_s3_other_cache") {
        let cached = first.cached.clone().unwrap();
        backup(&first.store, "vm/1", 1_700_000_000, 1, 3);
        // A second cache on the same bucket (another host, or PBS, one after the other): the
        // first cache never sees its snapshot.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        let other_cached = Arc::new(CachedBackend::new(
            LocalBackend::open(dir.path().join("store"), SyncLevel::None).unwrap(),
            cached.remote().clone(),
        ));
        other_cached.refresh().unwrap();
        std::fs::create_dir_all(dir.path().join("store/.chunks")).unwrap();
        let other = DataStore::builder("teststore", dir.path().join("store"))
            .lock_root(dir.path().join("locks"))
            .sync_level(SyncLevel::None)
            .backend(other_cached.clone())
            .namespace_markers(true)
            .open()
            .unwrap();
        backup(&other, "vm/2", 1_700_000_000, 50, 4);
        // And a newer version of vm/1's index in the bucket than in the first cache.
        backup(&other, "vm/1", 1_700_000_100, 200, 2);
        wait_past_cutoff();

        let report = first
            .store
            .garbage_collect_s3(&cached, &GcOptions::default().atime_cutoff_secs(CUTOFF))
            .unwrap();
        println!("{}: {report:?}", first.kind);
        let bucket = report.bucket.unwrap();
        assert_eq!(bucket.indexes_fetched, 2, "{}", first.kind);
        assert_eq!(
            report.status.removed_chunks, 0,
            "{}: {report:?}",
            first.kind
        );
        assert_eq!(report.referenced_chunks, 3 + 4 + 2, "{}", first.kind);
        assert_eq!(report.missing_chunks, 0, "{}", first.kind);
        assert_eq!(content_verify_clean(&other), 9, "{}", first.kind);
        assert_eq!(content_verify_clean(&first.store), 3, "{}", first.kind);
    }
}

fn faulty_store(plan: FaultPlan) -> (TestStore, Arc<FaultyStore>) {
    let faulty = Arc::new(FaultyStore::new(
        Arc::new(object_store::memory::InMemory::new()),
        plan,
    ));
    let remote = ObjectBackend::with_store(faulty.clone(), "teststore").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    let cache = LocalBackend::open(dir.path().join("store"), SyncLevel::None).unwrap();
    let cached = Arc::new(CachedBackend::new(cache, remote));
    let store = DataStore::builder("teststore", dir.path().join("store"))
        .lock_root(dir.path().join("locks"))
        .sync_level(SyncLevel::None)
        .chunk_prefix_dirs(false)
        .backend(cached.clone())
        .namespace_markers(true)
        .create()
        .unwrap();
    let t = TestStore {
        store,
        kind: "faulty-memory",
        dir,
        cached: Some(cached),
    };
    (t, faulty)
}

#[test]
fn a_failing_endpoint_fails_the_run_and_loses_nothing_referenced() {
    // The second DeleteObjects fails; then, separately, every 7th key of a batch is refused;
    // then the chunk listing fails.
    let plans = [
        FaultPlan::new(1).fail_nth(Operation::Delete, 2),
        FaultPlan::new(2).fail_every_nth_deleted_key(7),
    ];
    for plan in plans {
        let (t, _faulty) = faulty_store(plan.clone());
        let cached = t.cached.clone().unwrap();
        backup(&t.store, "vm/1", 1_700_000_000, 1, 5);
        let old = plant(&t.store, "old", 250);
        wait_past_cutoff();
        let failed = t
            .store
            .garbage_collect_s3(&cached, &GcOptions::default().atime_cutoff_secs(CUTOFF));
        assert!(
            matches!(failed, Err(Error::Backend { .. })),
            "{plan:?}: {failed:?}"
        );
        assert!(
            t.store.gc_status().unwrap().is_none(),
            "no status for a failed run"
        );
        assert_eq!(content_verify_clean(&t.store), 5, "{plan:?}");
        // Markers never outlive their objects: a cache file means the object is there.
        for d in &old {
            if t.root().join(keepsake_datastore::chunk_path(d)).exists() {
                assert!(in_bucket(&t, d), "{plan:?}: a marker without its object");
            }
        }
        // The endpoint recovers: the next run removes what is left, and still nothing else.
        let options = GcOptions::default().atime_cutoff_secs(CUTOFF);
        if let Ok(report) = t.store.garbage_collect_s3(&cached, &options) {
            assert_eq!(report.missing_chunks, 0);
        }
        assert_eq!(content_verify_clean(&t.store), 5, "{plan:?}");
    }

    let (t, _) = faulty_store(FaultPlan::new(3).fail_nth(Operation::List, 3));
    let cached = t.cached.clone().unwrap();
    backup(&t.store, "vm/1", 1_700_000_000, 1, 5);
    plant(&t.store, "old", 20);
    wait_past_cutoff();
    let failed = t
        .store
        .garbage_collect_s3(&cached, &GcOptions::default().atime_cutoff_secs(CUTOFF));
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(content_verify_clean(&t.store), 5);
}

#[test]
fn the_plain_gc_refuses_object_storage_and_another_backend_is_refused() {
    let t = common::cached_memory();
    let refused = t.store.garbage_collect(&GcOptions::default());
    assert!(
        matches!(
            refused,
            Err(Error::GcRefused {
                refusal: GcRefusal::ObjectStorage,
                ..
            })
        ),
        "{refused:?}"
    );
    let other = common::cached_memory();
    let wrong = t
        .store
        .garbage_collect_s3(other.cached.as_ref().unwrap(), &GcOptions::default());
    assert!(matches!(wrong, Err(Error::InvalidArgument(_))), "{wrong:?}");
}

#[test]
fn a_backup_of_this_process_during_the_sweep_keeps_what_it_reuses() {
    // Writers of this process hold the chunk shards; a chunk reused while GC runs is touched and
    // kept, a chunk uploaded while GC runs is new and kept.
    let t = common::cached_memory();
    let cached = t.cached.clone().unwrap();
    backup(&t.store, "vm/1", 1_700_000_000, 1, 3);
    let reused = plant(&t.store, "reused", 40);
    wait_past_cutoff();
    let store = t.store.clone();
    let hook_store = store.clone();
    let started = Arc::new(std::sync::Mutex::new(None));
    let slot = started.clone();
    let options = GcOptions::default()
        .atime_cutoff_secs(CUTOFF)
        .on_phase(Arc::new(move |phase| {
            if phase == keepsake_datastore::GcPhase::Sweep {
                // A backup that reuses the planted chunks, in this process, as the sweep starts.
                let group = hook_store.group(&BackupNamespace::root(), &"vm/9".parse().unwrap());
                let mut w = group
                    .start_backup(&owner(), BackupTime::from_epoch(1_700_000_500).unwrap())
                    .unwrap();
                let pieces: Vec<Vec<u8>> = (0..40)
                    .map(|i| format!("reused {i}").into_bytes())
                    .collect();
                w.add_dynamic_archive("root.pxar.didx", pieces, Encryption::None)
                    .unwrap();
                w.finish().unwrap();
                *slot.lock().unwrap() = Some(());
            }
        }));
    let report = store.garbage_collect_s3(&cached, &options).unwrap();
    assert!(started.lock().unwrap().is_some());
    assert_eq!(report.status.removed_chunks, 0, "{report:?}");
    assert!(reused.iter().all(|d| in_bucket(&t, d)));
    assert_eq!(content_verify_clean(&t.store), 3 + 40);
}

#[cfg(feature = "multi-host")]
#[test]
fn a_run_in_multi_host_mode_is_refused_a_dry_run_counts() {
    let dir = tempfile::tempdir().unwrap();
    let remote = ObjectBackend::in_memory("teststore").unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    let cached = Arc::new(CachedBackend::new(
        LocalBackend::open(dir.path().join("store"), SyncLevel::None).unwrap(),
        remote.clone(),
    ));
    let store = DataStore::builder("teststore", dir.path().join("store"))
        .backend(cached.clone())
        .namespace_markers(true)
        .chunk_prefix_dirs(false)
        .multi_host(
            remote,
            keepsake_datastore::lease::LeaseSettings::with_lease(Duration::from_secs(2))
                .clock_skew(Duration::from_millis(500)),
        )
        .create()
        .unwrap();
    backup(&store, "vm/1", 1_700_000_000, 1, 3);
    let refused = store.garbage_collect_s3(&cached, &GcOptions::default());
    assert!(
        matches!(
            refused,
            Err(Error::GcRefused {
                refusal: GcRefusal::MultiHost,
                ..
            })
        ),
        "{refused:?}"
    );
    let dry = store
        .garbage_collect_s3(&cached, &GcOptions::default().mode(GcMode::DryRun))
        .unwrap();
    assert_eq!(dry.referenced_chunks, 3);
    assert_eq!(dry.status.removed_chunks, 0);
    assert_eq!(content_verify_clean(&store), 3);
}

#[test]
fn progress_is_reported_for_every_phase() {
    let t = common::cached_memory();
    let cached = t.cached.clone().unwrap();
    backup(&t.store, "vm/1", 1_700_000_000, 1, 3);
    backup(&t.store, "vm/2", 1_700_000_000, 9, 3);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (phases, events) = (seen.clone(), seen.clone());
    let options = GcOptions::default()
        .on_phase(Arc::new(move |phase| {
            phases.lock().unwrap().push((phase, None));
        }))
        .on_progress(Arc::new(move |p: keepsake_datastore::GcProgress| {
            events
                .lock()
                .unwrap()
                .push((p.phase, Some((p.done, p.total))));
        }));
    t.store.garbage_collect_s3(&cached, &options).unwrap();
    let seen = seen.lock().unwrap().clone();
    use keepsake_datastore::GcPhase::*;
    let order: Vec<_> = seen
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(phase, _)| *phase)
        .collect();
    assert_eq!(order, [Mark, MarkBucket, Sweep, SweepCache]);
    let last = |phase| {
        seen.iter()
            .filter(|(p, e)| *p == phase && e.is_some())
            .filter_map(|(_, e)| *e)
            .max()
    };
    assert_eq!(last(Mark), Some((2, Some(2))), "{seen:?}");
    assert!(last(MarkBucket).is_some(), "{seen:?}");
    let (listed, total) = last(Sweep).unwrap();
    assert!(listed >= 6 && total.is_none(), "{seen:?}");
    let (done, total) = last(SweepCache).unwrap();
    assert_eq!(Some(done), total, "{seen:?}");

    // The local GC reports its two phases the same way.
    let local = common::local();
    backup(&local.store, "vm/1", 1_700_000_000, 1, 3);
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    local
        .store
        .garbage_collect(&GcOptions::default().on_progress(Arc::new(move |p| {
            sink.lock().unwrap().push(p);
        })))
        .unwrap();
    let events = events.lock().unwrap();
    assert!(
        events
            .iter()
            .any(|p| p.phase == Mark && p.done == 1 && p.total == Some(1))
    );
    let sweep: Vec<_> = events.iter().filter(|p| p.phase == Sweep).collect();
    assert!(!sweep.is_empty());
    assert!(sweep.iter().all(|p| p.total.is_some_and(|t| p.done <= t)));
}

/// Requests failing at random points of GC runs (as an endpoint dropping out, or a GC killed
/// between requests): after each run, failed or not, every referenced chunk is still there and
/// no cache file of a chunk outlives its object.
#[test]
fn runs_failing_at_random_requests_never_lose_a_referenced_chunk() {
    let memory: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let open = |remote: ObjectBackend, create: bool| {
        let cached = Arc::new(CachedBackend::new(
            LocalBackend::open(&root, SyncLevel::None).unwrap(),
            remote,
        ));
        let builder = DataStore::builder("teststore", &root)
            .lock_root(dir.path().join("locks"))
            .sync_level(SyncLevel::None)
            .chunk_prefix_dirs(false)
            .backend(cached.clone())
            .namespace_markers(true);
        let store = if create {
            builder.create()
        } else {
            builder.open()
        };
        store.map(|store| (store, cached))
    };
    let clean = ObjectBackend::with_store(memory.clone(), "teststore").unwrap();
    let (store, cached) = open(clean.clone(), true).unwrap();
    backup(&store, "vm/1", 1_700_000_000, 1, 6);
    backup(&store, "vm/2", 1_700_000_000, 60, 6);
    let old = plant(&store, "old", 400);
    wait_past_cutoff();
    let options = GcOptions::default().atime_cutoff_secs(CUTOFF);
    let (mut failed, mut succeeded) = (0, 0);
    for seed in 0..25 {
        let faulty = Arc::new(FaultyStore::new(
            memory.clone(),
            FaultPlan::new(seed).fail_any_randomly(0.08),
        ));
        let remote = ObjectBackend::with_store(faulty, "teststore").unwrap();
        let Ok((gc_store, gc_cached)) = open(remote, false) else {
            continue; // the open's own request failed
        };
        match gc_store.garbage_collect_s3(&gc_cached, &options) {
            Ok(report) => {
                succeeded += 1;
                assert_eq!(report.missing_chunks, 0);
            }
            Err(_) => failed += 1,
        }
        assert_eq!(content_verify_clean(&store), 12, "seed {seed}");
        for d in &old {
            if root.join(keepsake_datastore::chunk_path(d)).exists() {
                assert!(
                    clean.chunk_exists(&ChunkDigest::new(*d)).unwrap(),
                    "seed {seed}: a cache file without its object"
                );
            }
        }
    }
    println!("{failed} runs failed, {succeeded} succeeded");
    assert!(failed > 0, "the faults hit something");
    // With a working endpoint, the rest goes.
    let report = store.garbage_collect_s3(&cached, &options).unwrap();
    assert_eq!(report.missing_chunks, 0);
    assert!(
        old.iter()
            .all(|d| !clean.chunk_exists(&ChunkDigest::new(*d)).unwrap())
    );
    assert_eq!(content_verify_clean(&store), 12);
}
