//! PBS's `.in-use` marker of an S3 datastore, kept by the library: `create` refuses a bucket that
//! holds the datastore already (marker or content) and writes the marker last; `open` refuses a
//! bucket that holds neither (a wrong bucket or name), read-only too; a bucket that cannot be
//! asked is an error, never "no marker". On an in-memory store and on the S3 test server.

use std::path::Path;
use std::sync::Arc;

use keepsake_backend::{
    Backend, CachedBackend, InUse, LocalBackend, ObjectBackend, RetrySettings, S3Config, SyncLevel,
};
use keepsake_datastore::{Access, DataStore, Encryption, Error};
use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};
use keepsake_testkit::faults::{FaultPlan, FaultyStore, Operation};
use object_store::ObjectStore;
use object_store::memory::InMemory;

const NAME: &str = "store1";

/// A bucket: the backend of the datastore of a given name in it.
type Bucket = Arc<dyn Fn(&str) -> ObjectBackend>;

/// The buckets of this run: in memory, and the S3 test server when configured (a fresh prefix).
fn buckets(test: &str) -> Vec<(&'static str, Bucket)> {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let mut out: Vec<(&'static str, Bucket)> = vec![(
        "memory",
        Arc::new(move |name: &str| ObjectBackend::with_store(memory.clone(), name).unwrap()),
    )];
    if let Some(cfg) = keepsake_testkit::s3::config_or_skip(test) {
        let mut config = S3Config::new(
            cfg.bucket,
            cfg.region,
            cfg.access_key_id,
            cfg.secret_access_key,
        );
        config.endpoint = Some(cfg.endpoint);
        config.allow_http = true;
        config.retry = RetrySettings::for_tests();
        let prefix = keepsake_testkit::s3::unique_prefix(test);
        out.push((
            "s3",
            Arc::new(move |name: &str| {
                ObjectBackend::s3(&config, &format!("{prefix}-{name}")).unwrap()
            }),
        ));
    }
    out
}

/// A cache folder at `dir` over `remote`.
fn cached(dir: &Path, remote: ObjectBackend) -> Arc<CachedBackend> {
    std::fs::create_dir_all(dir).unwrap();
    let local = LocalBackend::open(dir, SyncLevel::None).unwrap();
    Arc::new(CachedBackend::new(local, remote))
}

fn builder(dir: &Path, backend: Arc<CachedBackend>) -> keepsake_datastore::DataStoreBuilder {
    DataStore::builder(NAME, dir)
        .backend(backend)
        .lock_root(dir.with_extension("locks"))
        .namespace_markers(true)
        .chunk_prefix_dirs(false)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn create_marks_the_bucket_and_a_second_create_is_refused() {
    for (kind, bucket) in buckets("in_use_create") {
        let dir = tempfile::tempdir().unwrap();
        let remote = bucket(NAME);
        let first = builder(
            &dir.path().join("a"),
            cached(&dir.path().join("a"), remote.clone()),
        )
        .node_name("pbs1")
        .create()
        .unwrap();
        assert_eq!(
            remote.in_use().unwrap(),
            InUse::Host("pbs1".to_owned()),
            "{kind}"
        );
        let raw = remote
            .get_raw(&remote.raw_key(".in-use").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(raw.data, br#"{"hostname":"pbs1"}"#, "{kind}: PBS's bytes");

        // Another cache folder (another host, or this one by mistake) on the same bucket.
        let other = dir.path().join("b");
        match builder(&other, cached(&other, bucket(NAME))).create() {
            Err(Error::BucketInUse { in_use, .. }) => {
                assert_eq!(in_use, InUse::Host("pbs1".to_owned()), "{kind}")
            }
            other => panic!("{kind}: expected BucketInUse, got {other:?}"),
        }
        assert!(
            entries(&other).is_empty(),
            "{kind}: the refused cache is untouched"
        );
        assert_eq!(
            remote.in_use().unwrap(),
            InUse::Host("pbs1".to_owned()),
            "{kind}"
        );
        drop(first);

        // The first store opens again; the marker stays as it was.
        builder(
            &dir.path().join("a"),
            cached(&dir.path().join("a"), remote.clone()),
        )
        .open()
        .unwrap();
        assert_eq!(
            remote.in_use().unwrap(),
            InUse::Host("pbs1".to_owned()),
            "{kind}"
        );
    }
}

#[test]
fn content_without_a_marker_refuses_create_and_still_opens() {
    for (kind, bucket) in buckets("in_use_content") {
        let dir = tempfile::tempdir().unwrap();
        let remote = bucket(NAME);
        let a = dir.path().join("a");
        let store = builder(&a, cached(&a, remote.clone())).create().unwrap();
        let group = store.group(
            &BackupNamespace::root(),
            &"vm/100".parse::<BackupGroup>().unwrap(),
        );
        let owner: Authid = "root@pam".parse().unwrap();
        let mut backup = group
            .start_backup(&owner, BackupTime::from_epoch(1_717_600_000).unwrap())
            .unwrap();
        backup
            .add_blob("qemu-server.conf.blob", b"memory: 2048\n", Encryption::None)
            .unwrap();
        backup.finish().unwrap();
        // PBS's "destroy datastore without removing data" takes only the marker away.
        remote
            .delete_raw(&remote.raw_key(".in-use").unwrap(), None)
            .unwrap();
        let b = dir.path().join("b");
        match builder(&b, cached(&b, bucket(NAME))).create() {
            Err(Error::BucketNotEmpty { .. }) => {}
            other => panic!("{kind}: expected BucketNotEmpty, got {other:?}"),
        }
        assert!(entries(&b).is_empty(), "{kind}");
        assert_eq!(
            remote.in_use().unwrap(),
            InUse::NoMarker,
            "{kind}: create wrote nothing"
        );
        // Its content still makes it a datastore for opening (read-only too).
        for access in [Access::ReadOnly, Access::ReadWrite] {
            let store = builder(&a, cached(&a, remote.clone()))
                .access(access)
                .open()
                .unwrap();
            assert_eq!(
                store
                    .group(&BackupNamespace::root(), group.name())
                    .list_backups()
                    .unwrap()
                    .len(),
                1
            );
        }
        assert_eq!(
            remote.in_use().unwrap(),
            InUse::NoMarker,
            "{kind}: open wrote nothing"
        );
    }
}

#[test]
fn open_refuses_a_bucket_without_the_datastore() {
    for (kind, bucket) in buckets("in_use_open") {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        builder(&a, cached(&a, bucket(NAME))).create().unwrap();
        // The same cache folder over another prefix (a wrong --name or bucket): the cache looks
        // like a datastore, the bucket holds none of it.
        let wrong = bucket("elsewhere");
        for access in [Access::ReadOnly, Access::ReadWrite] {
            match builder(&a, cached(&a, wrong.clone())).access(access).open() {
                Err(Error::NotInBucket { store }) => assert_eq!(store, NAME),
                other => panic!("{kind} {access:?}: expected NotInBucket, got {other:?}"),
            }
        }
        let state = wrong.bucket_state().unwrap().unwrap();
        assert!(
            !state.holds_datastore(),
            "{kind}: opening wrote into the wrong prefix: {state:?}"
        );
    }
}

#[test]
fn a_bucket_that_cannot_be_asked_is_an_error() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let remote = ObjectBackend::with_store(memory.clone(), NAME).unwrap();
    builder(&a, cached(&a, remote)).create().unwrap();
    // The marker's GET fails: open fails instead of reading "no marker" (or "marked").
    for access in [Access::ReadOnly, Access::ReadWrite] {
        let faulty = Arc::new(FaultyStore::new(
            memory.clone(),
            FaultPlan::new(3).fail_nth(Operation::Get, 1),
        ));
        let remote = ObjectBackend::with_store(faulty.clone(), NAME).unwrap();
        let err = builder(&a, cached(&a, remote))
            .access(access)
            .open()
            .unwrap_err();
        assert_eq!(faulty.injected(), 1, "{err:?}");
        assert!(matches!(err, Error::Backend { .. }), "{access:?}: {err:?}");
    }
    // A new datastore on a failing bucket is not created (and the cache folder stays empty).
    let faulty = Arc::new(FaultyStore::new(
        Arc::new(InMemory::new()),
        FaultPlan::new(4).fail_nth(Operation::Get, 1),
    ));
    let b = dir.path().join("b");
    let remote = ObjectBackend::with_store(faulty.clone(), NAME).unwrap();
    let err = builder(&b, cached(&b, remote.clone()))
        .create()
        .unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(entries(&b).is_empty());
    assert_eq!(remote.in_use().unwrap(), InUse::NoMarker);
}

#[test]
fn a_local_datastore_has_no_marker() {
    let dir = tempfile::tempdir().unwrap();
    let store = DataStore::builder(NAME, dir.path().join("s"))
        .lock_root(dir.path().join("locks"))
        .chunk_prefix_dirs(false)
        .create()
        .unwrap();
    assert!(store.backend().bucket_state().unwrap().is_none());
    assert!(!dir.path().join("s/.in-use").exists());
}
