//! A hostile review of the "fail closed" work (issues 15 and 16), through the library: two caches
//! of one bucket on one host (as two cache folders, or keepsake beside a PBS S3 server), on an
//! in-memory object store (the behaviour under test is the cache's, not the endpoint's).
//!
//! Tests marked `FOUND (fixed)` demonstrated a weakness and failed on the code they were written
//! against (an adversarial review); they pass since the fix, and stay as regression tests;
//! tests marked `HOLDS` are attacks the code withstood, kept as regression tests.

use std::path::Path;
use std::sync::Arc;

use jiff::tz::TimeZone;
use keepsake_backend::{BackendPath, CachedBackend, LocalBackend, ObjectBackend, SyncLevel};
use keepsake_datastore::prune::KeepOptions;
use keepsake_datastore::{
    DataStore, Encryption, Error, ExistingOwner, GroupsInside, Merge, MoveRefusal, PruneRun,
};
use keepsake_hierarchy::{Authid, BackupDir, BackupGroup, BackupNamespace, BackupTime};
use object_store::ObjectStore;
use object_store::memory::InMemory;

const NAME: &str = "store1";

/// One cache folder of the bucket's datastore; every cache of the host shares the lock root.
fn cache(bucket: &Arc<InMemory>, dir: &Path, create: bool) -> DataStore {
    let remote = ObjectBackend::with_store(bucket.clone() as Arc<dyn ObjectStore>, NAME).unwrap();
    let folder = dir.join(if create { "a" } else { "b" });
    std::fs::create_dir_all(&folder).unwrap();
    let local = LocalBackend::open(&folder, SyncLevel::None).unwrap();
    let cached = Arc::new(CachedBackend::open(local, remote).unwrap());
    let builder = DataStore::builder(NAME, &folder)
        .backend(cached.clone())
        .namespace_markers(true)
        .chunk_prefix_dirs(false)
        .lock_root(dir.join("locks"));
    if create {
        builder.create().unwrap()
    } else {
        std::fs::create_dir_all(folder.join(".chunks")).unwrap();
        cached.refresh().unwrap();
        builder.open().unwrap()
    }
}

fn in_bucket(bucket: &Arc<InMemory>, file: &str) -> bool {
    let remote = ObjectBackend::with_store(bucket.clone() as Arc<dyn ObjectStore>, NAME).unwrap();
    keepsake_backend::Backend::exists(&remote, &BackendPath::new(file).unwrap()).unwrap()
}

fn owner() -> Authid {
    "root@pam".parse().unwrap()
}

fn backup(store: &DataStore, ns: &BackupNamespace, group: &str, time: i64) -> BackupDir {
    let group: BackupGroup = group.parse().unwrap();
    let mut w = store
        .group(ns, &group)
        .start_backup(&owner(), BackupTime::from_epoch(time).unwrap())
        .unwrap();
    w.add_blob(
        "conf.blob",
        format!("{time}\n").as_bytes(),
        Encryption::None,
    )
    .unwrap();
    w.finish().unwrap().dir().clone()
}

fn manifest_of(ns: &BackupNamespace, dir: &BackupDir) -> String {
    format!("{}/index.json.blob", dir.relative_path(ns))
}

// FOUND (fixed) (data loss against the retention policy): prune plans from the cache. Cache B (or a PBS
// server on the bucket) forgets the newest snapshot; stale cache A then prunes with keep-last=2,
// still counting the forgotten one as kept, and removes a snapshot the policy keeps: the bucket is
// left with one snapshot where the policy keeps two. Each removal re-checks only protection in
// the bucket, never the plan.
#[test]
fn prune_from_a_stale_cache_never_removes_what_the_policy_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(InMemory::new());
    let a = cache(&bucket, dir.path(), true);
    let root = BackupNamespace::root();
    let snaps: Vec<BackupDir> = (1..=5)
        .map(|i| backup(&a, &root, "vm/100", i * 86_400))
        .collect();
    let b = cache(&bucket, dir.path(), false);
    b.snapshot(&root, &snaps[4]).destroy().unwrap();

    let policy: KeepOptions = "keep-last=2".parse().unwrap();
    let group = a.group(&root, snaps[0].group());
    group
        .prune(&policy, &TimeZone::UTC, PruneRun::Remove)
        .unwrap();
    let left: Vec<usize> = (0..5)
        .filter(|&i| in_bucket(&bucket, &manifest_of(&root, &snaps[i])))
        .collect();
    assert_eq!(
        left,
        [2, 3],
        "keep-last=2 over the bucket's snapshots keeps the 3rd and 4th"
    );
}

// FOUND (fixed) (ownership decided from the cache): a move checks the *source* group's owner from the
// cache. Cache B changes the owner of vm/100 (owner --force); stale cache A then merges a
// snapshot of it into prod/vm/100, owned by the old owner: PBS's rule (owners must be equal) is
// broken, and the snapshot changes hands.
#[test]
fn a_merge_checks_the_source_owner_in_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(InMemory::new());
    let a = cache(&bucket, dir.path(), true);
    let root = BackupNamespace::root();
    let prod = a.create_namespace(&"prod".parse().unwrap()).unwrap();
    backup(&a, &prod, "vm/100", 1_000);
    let newer = backup(&a, &root, "vm/100", 2_000);
    let b = cache(&bucket, dir.path(), false);
    b.group(&root, newer.group())
        .set_owner(&"mallory@pbs".parse().unwrap(), ExistingOwner::Replace)
        .unwrap();

    let err = a
        .snapshot(&root, &newer)
        .move_to(&prod, Merge::IntoExisting);
    assert!(
        matches!(
            &err,
            Err(Error::MoveRefused { reason, .. }) if matches!(**reason, MoveRefusal::OwnerMismatch { .. })
        ),
        "moved a snapshot of mallory@pbs's group into root@pam's: {err:?}"
    );
    assert!(in_bucket(&bucket, &manifest_of(&root, &newer)));
}

// FOUND (fixed) (wrong success): a group move from a stale cache moves only the snapshots the cache
// knows, reports the group moved, moves its notes away, and leaves the group behind in the source
// namespace with the snapshot another cache added. The operator is told the group moved; it is
// now split across two namespaces.
#[test]
fn a_group_move_from_a_stale_cache_never_reports_a_split_group_as_moved() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(InMemory::new());
    let a = cache(&bucket, dir.path(), true);
    let root = BackupNamespace::root();
    let prod = a.create_namespace(&"prod".parse().unwrap()).unwrap();
    let first = backup(&a, &root, "vm/100", 1_000);
    a.group(&root, first.group())
        .set_notes("keep me with the group")
        .unwrap();
    let b = cache(&bucket, dir.path(), false);
    let added = backup(&b, &root, "vm/100", 2_000);

    let result = a.group(&root, first.group()).move_to(&prod, Merge::Never);
    let left_behind = in_bucket(&bucket, &manifest_of(&root, &added));
    match result {
        Ok(report) => {
            assert!(
                !left_behind,
                "reported {report:?}, but {added} is still in the source group"
            );
        }
        // Refusing (or saying exactly what stayed) is fine.
        Err(_) => assert!(left_behind),
    }
}

// HOLDS: a namespace removal with groups from a stale cache keeps a group that another cache made
// in it meanwhile (only what the cache announced goes; the namespace stays).
#[test]
fn a_namespace_removal_from_a_stale_cache_keeps_what_the_other_cache_added() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(InMemory::new());
    let a = cache(&bucket, dir.path(), true);
    let prod: BackupNamespace = a.create_namespace(&"prod".parse().unwrap()).unwrap();
    let mine = backup(&a, &prod, "vm/100", 1_000);
    let b = cache(&bucket, dir.path(), false);
    let theirs = backup(&b, &prod, "ct/7", 2_000);
    let later = backup(&b, &prod, "vm/100", 3_000);

    let report = a.remove_namespace(&prod, GroupsInside::Destroy).unwrap();
    assert!(!in_bucket(&bucket, &manifest_of(&prod, &mine)));
    assert!(in_bucket(&bucket, &manifest_of(&prod, &theirs)));
    assert!(in_bucket(&bucket, &manifest_of(&prod, &later)));
    assert!(in_bucket(&bucket, "ns/prod/.namespace") || in_bucket(&bucket, "ns/prod/ct/7/owner"));
    assert!(!report.all_removed(), "{report:?}");
    assert!(a.journal_intents().unwrap().is_empty());
}

// HOLDS: unprotecting (or protecting) from a stale cache a snapshot that another cache destroyed
// is refused and never writes a marker that would make the snapshot exist again in the bucket.
#[test]
fn protection_changes_from_a_stale_cache_never_resurrect_a_destroyed_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(InMemory::new());
    let a = cache(&bucket, dir.path(), true);
    let root = BackupNamespace::root();
    let snap = backup(&a, &root, "vm/100", 1_000);
    let _keep = backup(&a, &root, "vm/100", 2_000);
    let b = cache(&bucket, dir.path(), false);
    b.snapshot(&root, &snap).destroy().unwrap();
    for protected in [true, false] {
        let err = a
            .snapshot(&root, &snap)
            .set_protected(protected)
            .unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
    }
    let marker = format!("{}/.protected", snap.relative_path(&root));
    assert!(!in_bucket(&bucket, &marker));
    assert!(!in_bucket(&bucket, &manifest_of(&root, &snap)));
}

// HOLDS: a group destroy from a stale cache, interrupted and recovered, never removes a snapshot
// the other cache added after the announcement (the intent names the snapshots).
#[test]
fn recovery_of_a_destroy_on_s3_removes_only_what_was_announced() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(InMemory::new());
    let a = cache(&bucket, dir.path(), true);
    let root = BackupNamespace::root();
    let old = backup(&a, &root, "vm/100", 1_000);
    // The destroy died right after announcing `old`.
    let journal = dir.path().join("a/.keepsake/intents");
    std::fs::create_dir_all(&journal).unwrap();
    std::fs::write(
        journal.join("0000000000000000000000aa-00000001-00.intent"),
        format!("keepsake-intent 2\nop destroy-group\nns /\ngroup vm/100\nsnapshot {old}\nend\n"),
    )
    .unwrap();
    let b = cache(&bucket, dir.path(), false);
    let new = backup(&b, &root, "vm/100", 2_000);
    let report = a.recover().unwrap();
    assert_eq!(report.recovered.len(), 1, "{report:?}");
    assert!(!in_bucket(&bucket, &manifest_of(&root, &old)));
    assert!(in_bucket(&bucket, &manifest_of(&root, &new)));
    assert!(in_bucket(&bucket, "vm/100/owner"));
}

/// A multi-host store whose lease objects live behind a fault-injecting wrapper (failing the
/// `fail_get`th GET of the lease locker, if given), the content behind a healthy client of the
/// same bucket. Returns the store, the wrapper, and the wrapper's GET count once set up.
fn multi_host_with_faulty_leases(
    dir: &Path,
    fail_get: Option<u64>,
) -> (
    DataStore,
    Arc<keepsake_testkit::faults::FaultyStore>,
    BackupDir,
    u64,
) {
    use keepsake_testkit::faults::{FaultPlan, FaultyStore, Operation};
    let bucket: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let mut plan = FaultPlan::new(7);
    if let Some(n) = fail_get {
        plan = plan.fail_nth(Operation::Get, n);
    }
    let faulty = Arc::new(FaultyStore::new(bucket.clone(), plan));
    let leases = ObjectBackend::with_store(faulty.clone() as Arc<dyn ObjectStore>, NAME).unwrap();
    let content = ObjectBackend::with_store(bucket, NAME).unwrap();
    let folder = dir.join("cache");
    std::fs::create_dir_all(&folder).unwrap();
    let cached = Arc::new(CachedBackend::new(
        LocalBackend::open(&folder, SyncLevel::None).unwrap(),
        content,
    ));
    let store = DataStore::builder(NAME, &folder)
        .backend(cached)
        .namespace_markers(true)
        .chunk_prefix_dirs(false)
        .multi_host(
            leases,
            keepsake_datastore::lease::LeaseSettings::with_lease(std::time::Duration::from_secs(
                30,
            )),
        )
        .create()
        .unwrap();
    let snap = backup(&store, &BackupNamespace::root(), "vm/100", 1_000);
    let gets = faulty.calls(keepsake_testkit::faults::Operation::Get);
    (store, faulty, snap, gets)
}

// FOUND (fixed) (misleading message): in multi-host mode, when the endpoint fails the fencing read
// (the lease object's GET right before a write), the error is `Error::Locked` — "lease `…` is
// locked" — although nobody holds the lease: `LeaseLocker::check_fence` maps every read failure
// to `Locked`. Issue 15 asked for lock I/O errors never to be reported as "locked".
#[test]
fn an_endpoint_failure_while_fencing_is_not_called_locked() {
    let dir = tempfile::tempdir().unwrap();
    let root = BackupNamespace::root();
    // A dry run counts the lease GETs: the acquire reads once, then the fence reads.
    let (store, faulty, snap, before) = multi_host_with_faulty_leases(dir.path(), None);
    store.snapshot(&root, &snap).set_protected(true).unwrap();
    assert!(faulty.calls(keepsake_testkit::faults::Operation::Get) >= before + 2);
    drop((store, faulty));
    let dir = tempfile::tempdir().unwrap();
    let (store, faulty, snap2, _) = multi_host_with_faulty_leases(dir.path(), Some(before + 2));
    assert_eq!(snap, snap2);
    let err = store
        .snapshot(&root, &snap)
        .set_protected(true)
        .unwrap_err();
    assert_eq!(faulty.injected(), 1, "the fence read failed: {err:?}");
    assert!(
        !err.is_locked() && !err.to_string().contains("is locked"),
        "an endpoint failure reported as a busy lock: {err} ({err:?})"
    );
}

/// Copies the content files of a cache folder to `to` as plain files (no cache records, no
/// identity marker): the cache folder of a PBS S3 datastore, as PBS writes it.
fn copy_as_pbs_cache(from: &Path, to: &Path) {
    fn walk(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name == ".keepsake" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &to.join(&name));
            } else {
                std::fs::write(to.join(&name), std::fs::read(entry.path()).unwrap()).unwrap();
            }
        }
    }
    walk(from, to);
}

// FOUND (fixed) (a read-only command deletes files of PBS's cache): a cache folder without keepsake's
// identity marker (every PBS-made S3 cache) is accepted for any bucket. Opened read-only with the
// wrong bucket (another bucket holding a datastore of the same name), a read of a manifest the
// wrong bucket lacks deletes PBS's cache copy (`CachedBackend::fetch` removes what the bucket
// does not have). PBS's S3 GC marks chunks from the cache's index files: a snapshot missing from
// the cache has its chunks deleted from the bucket.
#[test]
fn a_read_only_store_never_deletes_files_of_an_unmarked_cache() {
    let dir = tempfile::tempdir().unwrap();
    let root = BackupNamespace::root();
    let right = Arc::new(InMemory::new());
    let a = cache(&right, dir.path(), true);
    let snap = backup(&a, &root, "vm/100", 1_000);
    let pbs = dir.path().join("pbs-cache");
    copy_as_pbs_cache(&dir.path().join("a"), &pbs);
    // Another bucket (a replica, staging) with a datastore of the same name.
    let wrong = Arc::new(InMemory::new());
    let other_dir = tempfile::tempdir().unwrap();
    let other = cache(&wrong, other_dir.path(), true);
    backup(&other, &root, "ct/7", 5_000);

    let remote = ObjectBackend::with_store(wrong.clone() as Arc<dyn ObjectStore>, NAME).unwrap();
    let cached = Arc::new(
        CachedBackend::open(LocalBackend::open(&pbs, SyncLevel::None).unwrap(), remote)
            .expect("an unmarked cache opens for any bucket"),
    );
    let store = DataStore::builder(NAME, &pbs)
        .backend(cached)
        .namespace_markers(true)
        .lock_root(dir.path().join("locks"))
        .access(keepsake_datastore::Access::ReadOnly)
        .open()
        .unwrap();
    let manifest = pbs.join(snap.relative_path(&root)).join("index.json.blob");
    assert!(manifest.is_file());
    let _ = store.snapshot(&root, &snap).load_manifest();
    let _ = store.group(&root, snap.group()).owner();
    assert!(
        manifest.is_file(),
        "a read-only store deleted PBS's cached manifest"
    );
    assert!(pbs.join("vm/100/owner").is_file(), "and the owner");
}

// FOUND (fixed) (same as `prune_from_a_stale_cache_never_removes_what_the_policy_keeps`, on the S3 test
// server through `cargo xtask test`): the over-removal is the cache's, not an artefact of the
// in-memory store.
#[test]
fn prune_from_a_stale_cache_on_the_s3_server() {
    let Some(cfg) = keepsake_testkit::s3::config_or_skip("review_prune_stale_cache") else {
        return;
    };
    let mut config = keepsake_backend::S3Config::new(
        cfg.bucket.clone(),
        cfg.region.clone(),
        cfg.access_key_id.clone(),
        cfg.secret_access_key.clone(),
    );
    config.endpoint = Some(cfg.endpoint.clone());
    config.allow_http = true;
    config.retry = keepsake_backend::RetrySettings::for_tests();
    let prefix = keepsake_testkit::s3::unique_prefix("review1");
    let dir = tempfile::tempdir().unwrap();
    let open = |folder: &str, create: bool| {
        let remote = ObjectBackend::s3(&config, &prefix).unwrap();
        let folder = dir.path().join(folder);
        std::fs::create_dir_all(&folder).unwrap();
        let local = LocalBackend::open(&folder, SyncLevel::None).unwrap();
        let cached = Arc::new(CachedBackend::open(local, remote).unwrap());
        let builder = DataStore::builder(prefix.as_str(), &folder)
            .backend(cached.clone())
            .namespace_markers(true)
            .chunk_prefix_dirs(false)
            .lock_root(dir.path().join("locks"));
        if create {
            builder.create().unwrap()
        } else {
            std::fs::create_dir_all(folder.join(".chunks")).unwrap();
            cached.refresh().unwrap();
            builder.open().unwrap()
        }
    };
    let a = open("a", true);
    let root = BackupNamespace::root();
    let snaps: Vec<BackupDir> = (1..=5)
        .map(|i| backup(&a, &root, "vm/100", i * 86_400))
        .collect();
    let b = open("b", false);
    b.snapshot(&root, &snaps[4]).destroy().unwrap();
    let policy: KeepOptions = "keep-last=2".parse().unwrap();
    a.group(&root, snaps[0].group())
        .prune(&policy, &TimeZone::UTC, PruneRun::Remove)
        .unwrap();
    let remote = ObjectBackend::s3(&config, &prefix).unwrap();
    let left: Vec<usize> = (0..5)
        .filter(|&i| {
            keepsake_backend::Backend::exists(
                &remote,
                &BackendPath::new(&manifest_of(&root, &snaps[i])).unwrap(),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(
        left,
        [2, 3],
        "keep-last=2 over the bucket keeps the 3rd and 4th"
    );
}
