//! Fault injection across every datastore write path.
//!
//! A scripted workload (backup, manifest update, protection, owner and notes, snapshot destroy,
//! group and snapshot moves, prune, group destroy, namespace removal and move) runs once for every
//! mutating backend call it makes, with that call failing and, like a process that died there,
//! every mutating call after it too. Then the store is reopened on the healthy backend (which
//! recovers interrupted intents), repaired with fsck and verified; the checks: no torn or damaged
//! snapshot, no protected snapshot lost or unprotected, no snapshot of a group that was only moved
//! lost or doubled, an empty journal, and a second fsck that finds nothing to mend.
//!
//! Two fault places: a wrapper around the whole `Backend` (the local filesystem, and the cached
//! backend as a unit), and the testkit's fault-injecting `ObjectStore` below the cached backend's
//! bucket (the bucket fails, the cache is fine), for every put and every delete.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use jiff::tz::TimeZone;
use keepsake_backend::{Backend, CachedBackend, LocalBackend, ObjectBackend, SyncLevel};
use keepsake_datastore::prune::KeepOptions;
use keepsake_datastore::{
    DataStore, Encryption, ExistingOwner, FsckOptions, GroupsInside, Merge, PruneRun,
    SnapshotOutcome, VerifyOptions, VerifyScope,
};
use keepsake_hierarchy::{Authid, BackupDir, BackupGroup, BackupNamespace, BackupTime};
use keepsake_testkit::faults::{FaultPlan, FaultyStore, Operation};

use common::faulty::FaultyBackend;

const BASE: i64 = 1_717_600_000;
const DAY: i64 = 86_400;

fn ns(s: &str) -> BackupNamespace {
    s.parse().unwrap()
}

fn group(s: &str) -> BackupGroup {
    s.parse().unwrap()
}

fn owner() -> Authid {
    "root@pam".parse().unwrap()
}

fn backup(
    store: &DataStore,
    n: &BackupNamespace,
    g: &str,
    day: i64,
) -> keepsake_datastore::Result<()> {
    let handle = store.group(n, &group(g));
    let mut w = handle.start_backup(&owner(), BackupTime::from_epoch(BASE + day * DAY)?)?;
    w.add_blob(
        "qemu-server.conf.blob",
        format!("day {day}\n").as_bytes(),
        Encryption::None,
    )?;
    let image: Vec<u8> = (0..150_000u32)
        .map(|i| (i % 199) as u8 ^ day as u8)
        .collect();
    w.add_fixed_archive("drive-scsi0.img.fidx", &image, 65_536, Encryption::None)?;
    w.finish()?;
    Ok(())
}

fn snap(g: &str, day: i64) -> BackupDir {
    format!("{g}/{}", BackupTime::from_epoch(BASE + day * DAY).unwrap())
        .parse()
        .unwrap()
}

/// The store before the faulted workload: namespaces `a`, `a/b`, `c`; groups with finished
/// snapshots; some protected.
fn setup(store: &DataStore) {
    for n in ["a", "a/b", "c"] {
        store.create_namespace(&ns(n)).unwrap();
    }
    let root = BackupNamespace::root();
    for day in 0..4 {
        backup(store, &root, "vm/100", day).unwrap();
    }
    for day in 0..2 {
        backup(store, &root, "vm/101", day).unwrap();
        backup(store, &root, "ct/200", day).unwrap();
        backup(store, &ns("a/b"), "host/h1", day).unwrap();
        backup(store, &ns("a"), "vm/300", day).unwrap();
    }
    // Protected and never unprotected by the workload: these must survive everything.
    for (n, s) in [
        ("", snap("vm/100", 0)),
        ("", snap("ct/200", 0)),
        ("a/b", snap("host/h1", 1)),
    ] {
        store.snapshot(&ns(n), &s).set_protected(true).unwrap();
    }
    store
        .snapshot(&root, &snap("vm/100", 1))
        .set_protected(true)
        .unwrap();
}

/// The workload; every step's error is ignored (after the fault, every step fails).
fn workload(store: &DataStore) {
    let root = BackupNamespace::root();
    let _ = backup(store, &root, "vm/100", 10);
    let _ = store
        .snapshot(&root, &snap("vm/100", 2))
        .update_manifest(|m| {
            m.set_notes(Some("changed"));
            Ok(())
        });
    let _ = store
        .snapshot(&root, &snap("vm/100", 3))
        .set_protected(true);
    let _ = store
        .snapshot(&root, &snap("vm/100", 1))
        .set_protected(false);
    let g = store.group(&root, &group("vm/100"));
    let _ = g.set_owner(&"admin@pbs".parse().unwrap(), ExistingOwner::Replace);
    let _ = g.set_notes("group notes");
    let _ = store.snapshot(&root, &snap("vm/100", 2)).destroy();
    let _ = store
        .group(&root, &group("vm/101"))
        .move_to(&ns("c"), Merge::Never);
    let _ = store
        .snapshot(&ns("a"), &snap("vm/300", 1))
        .move_to(&ns("c"), Merge::Never);
    let _ = g.prune(
        &"keep-last=1".parse::<KeepOptions>().unwrap(),
        &TimeZone::UTC,
        PruneRun::Remove,
    );
    // Busy-lock variants first: a reader holds one snapshot; each must refuse, changing nothing.
    {
        let _reader = store.snapshot(&root, &snap("ct/200", 1)).lock_shared();
        let _ = store.group(&root, &group("ct/200")).destroy();
    }
    {
        let _reader = store
            .snapshot(&ns("a/b"), &snap("host/h1", 0))
            .lock_shared();
        let _ = store.remove_namespace(&ns("a/b"), GroupsInside::Destroy);
        let _ = store.move_namespace(&ns("a"), &ns("c/a"), Merge::Never);
    }
    let _ = store.group(&root, &group("ct/200")).destroy();
    let _ = store.remove_namespace(&ns("a/b"), GroupsInside::Destroy);
    let _ = store.move_namespace(&ns("a"), &ns("c/a"), Merge::Never);
}

/// Group and namespace destroys and a namespace move, each beside a reader's shared lock on one
/// snapshot: refused as locked, nothing changed, nothing journaled; done once the reader is gone.
#[test]
fn busy_locks_refuse_destroys_and_moves_without_changes() {
    for cached in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let root_dir = dir.path().join("store");
        std::fs::create_dir_all(&root_dir).unwrap();
        let cache = LocalBackend::open(&root_dir, SyncLevel::None).unwrap();
        let backend: Arc<dyn Backend> = if cached {
            let remote = ObjectBackend::in_memory("faults").unwrap();
            Arc::new(CachedBackend::new(cache, remote))
        } else {
            Arc::new(cache)
        };
        let store = DataStore::builder("faults", &root_dir)
            .lock_root(dir.path().join("locks"))
            .chunk_prefix_dirs(false)
            .namespace_markers(true)
            .backend(backend)
            .create()
            .unwrap();
        setup(&store);
        let root = BackupNamespace::root();
        let before = inventory(&store);
        let reader = store
            .snapshot(&root, &snap("ct/200", 1))
            .lock_shared()
            .unwrap();
        let err = store.group(&root, &group("ct/200")).destroy().unwrap_err();
        assert!(err.is_locked(), "{err:?}");
        drop(reader);
        let reader = store
            .snapshot(&ns("a/b"), &snap("host/h1", 0))
            .lock_shared()
            .unwrap();
        let err = store
            .remove_namespace(&ns("a/b"), GroupsInside::Destroy)
            .unwrap_err();
        assert!(err.is_locked(), "{err:?}");
        let err = store
            .move_namespace(&ns("a"), &ns("c/a"), Merge::Never)
            .unwrap_err();
        assert!(err.is_locked(), "{err:?}");
        assert_eq!(inventory(&store), before, "cached: {cached}");
        assert!(store.journal_intents().unwrap().is_empty());
        drop(reader);
        let stats = store.group(&root, &group("ct/200")).destroy().unwrap();
        assert_eq!(stats.removed_snapshots, 1);
        assert_eq!(stats.protected_snapshots, 1);
        store
            .move_namespace(&ns("a"), &ns("c/a"), Merge::Never)
            .unwrap();
        assert!(store.namespace_exists(&ns("c/a/b")).unwrap());
    }
}

/// Where every snapshot is: identity -> namespaces holding it, and whether it is protected there.
fn inventory(store: &DataStore) -> BTreeMap<String, Vec<(String, bool)>> {
    let mut found: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    for n in store
        .iter_namespaces_recursive(&BackupNamespace::root(), None)
        .unwrap()
    {
        let n = n.unwrap();
        for g in store.iter_groups(&n).unwrap() {
            for info in g.unwrap().list_backups().unwrap() {
                found
                    .entry(info.snapshot.to_string())
                    .or_default()
                    .push((n.to_string(), info.protected));
            }
        }
    }
    found
}

/// Reopens on the healthy backend, repairs, verifies and checks the promises.
fn check_after_fault(label: &str, reopen: impl Fn() -> DataStore, options: &FsckOptions) {
    let store = reopen();
    let recovery = store.recover().unwrap();
    assert!(
        recovery.pending.is_empty() && recovery.unreadable.is_empty(),
        "{label}: recovery left {recovery:?}"
    );
    assert!(
        store.journal_intents().unwrap().is_empty(),
        "{label}: recovery left interrupted intents"
    );
    let repaired = store.fsck(options).unwrap();
    assert!(
        repaired.errors.is_empty(),
        "{label}: fsck errors {:?}",
        repaired.errors
    );
    let report = store
        .verify(&VerifyScope::Store, &VerifyOptions::default())
        .unwrap();
    for s in &report.snapshots {
        assert!(
            matches!(s.outcome, SnapshotOutcome::Ok | SnapshotOutcome::Unfinished),
            "{label}: {} is {:?}: {:?}",
            s.relative_path(),
            s.outcome,
            s.problems
        );
    }
    assert!(
        report.errors.is_empty(),
        "{label}: verify errors {:?}",
        report.errors
    );
    let found = inventory(&store);
    // Protected and never unprotected: present once, protected.
    for id in [snap("vm/100", 0), snap("ct/200", 0), snap("host/h1", 1)] {
        let places = found.get(&id.to_string());
        assert!(
            matches!(places.map(Vec::as_slice), Some([(_, true)])),
            "{label}: protected {id} is {places:?}"
        );
    }
    // Only moved, never removed: present exactly once.
    for id in [
        snap("vm/101", 0),
        snap("vm/101", 1),
        snap("vm/300", 0),
        snap("vm/300", 1),
    ] {
        let places = found.get(&id.to_string()).map_or(0, Vec::len);
        assert_eq!(places, 1, "{label}: {id} found {places} times");
    }
    let again = store.fsck(options).unwrap();
    assert!(
        again.repaired.is_empty() && again.temp_files.is_empty() && again.empty_groups.is_empty(),
        "{label}: a second fsck still mends: {again:?}"
    );
}

/// Runs the workload with the `n`-th mutating call failing, for every `n` the fault-free run makes.
fn every_fault(kind: &str, make: &dyn Fn(&std::path::Path) -> Arc<dyn Backend>) -> (u64, u64) {
    let mut n = 1;
    let mut faults = 0;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        std::fs::create_dir_all(&root).unwrap();
        let healthy = make(&root);
        let faulty = Arc::new(FaultyBackend::new(healthy.clone(), n));
        let builder = |backend: Arc<dyn Backend>| {
            DataStore::builder("faults", &root)
                .lock_root(dir.path().join("locks"))
                .chunk_prefix_dirs(false)
                .namespace_markers(true)
                .backend(backend)
        };
        let store = builder(faulty.clone()).create().unwrap();
        setup(&store);
        faulty.arm();
        workload(&store);
        drop(store);
        if faulty.failed.load(Ordering::SeqCst) == 0 {
            // The workload made fewer than `n` mutating calls: every call has had its fault.
            return (n - 1, faults);
        }
        faults += 1;
        let options = FsckOptions {
            repair: true,
            ..FsckOptions::default()
        };
        check_after_fault(
            &format!("{kind}, fault at mutating call {n}"),
            || builder(healthy.clone()).open().unwrap(),
            &options,
        );
        n += 1;
    }
}

#[test]
fn every_write_path_survives_a_fault_on_the_local_filesystem() {
    let (calls, faults) = every_fault("local", &|root| {
        Arc::new(LocalBackend::open(root, SyncLevel::None).unwrap())
    });
    eprintln!("local: {faults} faults injected, one at each of {calls} mutating calls");
    assert!(calls > 25, "the workload made only {calls} mutating calls");
}

#[test]
fn every_write_path_survives_a_fault_on_the_cached_backend() {
    let (calls, faults) = every_fault("cached", &|root| {
        let cache = LocalBackend::open(root, SyncLevel::None).unwrap();
        let remote = ObjectBackend::in_memory("faults").unwrap();
        Arc::new(CachedBackend::new(cache, remote))
    });
    eprintln!(
        "cached (whole backend): {faults} faults injected, one at each of {calls} mutating calls"
    );
    assert!(calls > 25, "the workload made only {calls} mutating calls");
}

/// The bucket fails (the `n`-th put, or the `n`-th delete request) while the cache is healthy:
/// afterwards the store opens, fsck mends bucket/cache differences, and the promises hold.
#[test]
fn every_bucket_put_and_delete_can_fail() {
    let mut total = 0;
    for operation in [Operation::Put, Operation::Delete] {
        let mut n = 1;
        loop {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("store");
            std::fs::create_dir_all(&root).unwrap();
            let memory: Arc<dyn object_store::ObjectStore> =
                Arc::new(object_store::memory::InMemory::new());
            // Setup runs without faults: the plan starts counting after setup's calls.
            let setup_store = Arc::new(FaultyStore::new(memory.clone(), FaultPlan::new(1)));
            let builder = |backend: Arc<CachedBackend>| {
                DataStore::builder("faults", &root)
                    .lock_root(dir.path().join("locks"))
                    .chunk_prefix_dirs(false)
                    .namespace_markers(true)
                    .backend(backend)
            };
            let cached = |store: Arc<dyn object_store::ObjectStore>| {
                Arc::new(CachedBackend::new(
                    LocalBackend::open(&root, SyncLevel::None).unwrap(),
                    ObjectBackend::with_store(store, "faults").unwrap(),
                ))
            };
            let store = builder(cached(setup_store.clone())).create().unwrap();
            setup(&store);
            drop(store);
            let faulty = Arc::new(FaultyStore::new(
                memory.clone(),
                FaultPlan::new(n).fail_nth(operation, n),
            ));
            let store = builder(cached(faulty.clone())).open().unwrap();
            workload(&store);
            drop(store);
            if faulty.injected() == 0 {
                break;
            }
            total += 1;
            let healthy = cached(memory.clone());
            let options = FsckOptions {
                repair: true,
                cache: Some(healthy.clone()),
                ..FsckOptions::default()
            };
            check_after_fault(
                &format!("bucket {operation:?} #{n} fails"),
                || builder(healthy.clone()).open().unwrap(),
                &options,
            );
            // After the repair, bucket and cache agree.
            let report = healthy.clone();
            let store = builder(report).open().unwrap();
            let check = store
                .check_cache(&healthy, keepsake_datastore::CacheCheck::Sizes)
                .unwrap();
            assert!(
                check.is_consistent(),
                "bucket {operation:?} #{n}: {check:?}"
            );
            n += 1;
        }
    }
    eprintln!("bucket faults: {total} injected (every put and every delete of the workload)");
    assert!(total > 20, "only {total} bucket faults were injected");
}

/// A destroy that fails after its first step leaves an unfinished snapshot (the manifest goes
/// first), never a finished one with files missing.
#[test]
fn an_interrupted_destroy_leaves_an_unfinished_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let healthy: Arc<dyn Backend> = Arc::new(LocalBackend::open(&root, SyncLevel::None).unwrap());
    // Mutating call 1 (the manifest's removal) goes through, call 2 (the rest) fails.
    let faulty = Arc::new(FaultyBackend::new(healthy.clone(), 2));
    let store = DataStore::builder("faults", &root)
        .lock_root(dir.path().join("locks"))
        .chunk_prefix_dirs(false)
        .backend(faulty.clone())
        .create()
        .unwrap();
    let ns = BackupNamespace::root();
    backup(&store, &ns, "vm/100", 0).unwrap();
    let snapshot = store.snapshot(&ns, &snap("vm/100", 0));
    faulty.arm();
    assert!(snapshot.destroy().is_err());
    assert!(
        snapshot.exists().unwrap(),
        "the fault came before the files went"
    );
    assert!(!snapshot.is_finished().unwrap());
    let report = snapshot.verify(&VerifyOptions::default()).unwrap();
    assert_eq!(
        report.outcome,
        SnapshotOutcome::Unfinished,
        "{:?}",
        report.problems
    );
}
