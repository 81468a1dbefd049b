//! Fail closed on S3: destructive decisions come from the bucket, not from a cache that another
//! cache, host or PBS server has left behind; a lost reply never applies a change twice; a cache
//! opens only for its own bucket. On the S3 test server (moto, started by `cargo xtask test`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keepsake_backend::{
    Backend, BackendPath, CachedBackend, LocalBackend, ObjectBackend, RetrySettings, S3Config,
    SyncLevel,
};
use keepsake_datastore::{DataStore, Encryption, Error, Merge, MoveRefusal};
use keepsake_hierarchy::{Authid, BackupDir, BackupGroup, BackupNamespace, BackupTime};
use keepsake_testkit::s3::S3TestConfig;

fn s3_config(cfg: &S3TestConfig) -> S3Config {
    let mut config = S3Config::new(
        cfg.bucket.clone(),
        cfg.region.clone(),
        cfg.access_key_id.clone(),
        cfg.secret_access_key.clone(),
    );
    config.endpoint = Some(cfg.endpoint.clone());
    config.allow_http = true;
    config.retry = RetrySettings::for_tests();
    config
}

/// One cache of the datastore `prefix` on this host (single-host mode): the lock root is shared
/// by every cache of the host, as the CLI's is.
struct Cache {
    store: DataStore,
    cached: Arc<CachedBackend>,
}

fn cache(config: &S3Config, prefix: &str, dir: &Path, locks: &Path, create: bool) -> Cache {
    cache_in_mode(config, prefix, dir, Some(locks), create)
}

/// A host of a multi-host datastore (leases in the bucket instead of a lock root).
fn host(config: &S3Config, prefix: &str, dir: &Path, create: bool) -> Cache {
    cache_in_mode(config, prefix, dir, None, create)
}

fn cache_in_mode(
    config: &S3Config,
    prefix: &str,
    dir: &Path,
    locks: Option<&Path>,
    create: bool,
) -> Cache {
    let remote = ObjectBackend::s3(config, prefix).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let local = LocalBackend::open(dir, SyncLevel::None).unwrap();
    let cached = Arc::new(CachedBackend::open(local, remote.clone()).unwrap());
    let builder = DataStore::builder(prefix, dir)
        .backend(cached.clone())
        .namespace_markers(true)
        .chunk_prefix_dirs(false);
    let builder = match locks {
        Some(locks) => builder.lock_root(locks),
        None => builder.multi_host(
            remote,
            keepsake_datastore::lease::LeaseSettings::with_lease(Duration::from_secs(5)),
        ),
    };
    let store = if create {
        builder.create().unwrap()
    } else {
        std::fs::create_dir_all(dir.join(".chunks")).unwrap();
        cached.refresh().unwrap();
        builder.open().unwrap()
    };
    Cache { store, cached }
}

fn backup(store: &DataStore, ns: &BackupNamespace, group: &str, time: i64) -> BackupDir {
    let group: BackupGroup = group.parse().unwrap();
    let owner: Authid = "root@pam".parse().unwrap();
    let mut w = store
        .group(ns, &group)
        .start_backup(&owner, BackupTime::from_epoch(time).unwrap())
        .unwrap();
    w.add_blob(
        "conf.blob",
        format!("{time}\n").as_bytes(),
        Encryption::None,
    )
    .unwrap();
    w.finish().unwrap().dir().clone()
}

/// Whether the bucket holds `file` (relative to the datastore), asked of a fresh client.
fn in_bucket(config: &S3Config, prefix: &str, file: &str) -> bool {
    let remote = ObjectBackend::s3(config, prefix).unwrap();
    remote.exists(&BackendPath::new(file).unwrap()).unwrap()
}

#[test]
fn two_caches_a_stale_one_never_forgets_what_the_other_protected() {
    let Some(cfg) = keepsake_testkit::s3::config_or_skip("s3_two_caches_protect") else {
        return;
    };
    let config = s3_config(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let prefix = keepsake_testkit::s3::unique_prefix("s3fc1");
    let locks = dir.path().join("locks");
    let a = cache(&config, &prefix, &dir.path().join("a"), &locks, true);
    let root = BackupNamespace::root();
    let snap = backup(&a.store, &root, "vm/100", 1_000);
    let b = cache(&config, &prefix, &dir.path().join("b"), &locks, false);
    b.store.snapshot(&root, &snap).set_protected(true).unwrap();
    // A's cache never saw the protection.
    assert!(!a.store.snapshot(&root, &snap).is_protected().unwrap());
    let err = a.store.snapshot(&root, &snap).destroy().unwrap_err();
    assert!(matches!(err, Error::Protected { .. }), "{err:?}");
    let stats = a.store.group(&root, snap.group()).destroy().unwrap();
    assert_eq!((stats.removed_snapshots, stats.protected_snapshots), (0, 1));
    let marker = format!("{}/.protected", snap.relative_path(&root));
    assert!(in_bucket(&config, &prefix, &marker));
    assert!(in_bucket(
        &config,
        &prefix,
        &format!("{}/index.json.blob", snap.relative_path(&root))
    ));
}

#[test]
fn a_group_judged_empty_from_a_stale_cache_keeps_what_another_host_moved_in() {
    let Some(cfg) = keepsake_testkit::s3::config_or_skip("s3_group_from_stale_cache") else {
        return;
    };
    let config = s3_config(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let prefix = keepsake_testkit::s3::unique_prefix("s3fc2");
    let a = host(&config, &prefix, &dir.path().join("a"), true);
    let prod = a.store.create_namespace(&"prod".parse().unwrap()).unwrap();
    let root = BackupNamespace::root();
    let older = backup(&a.store, &prod, "vm/100", 1_000);
    let newer = backup(&a.store, &root, "vm/100", 2_000);
    // Another host (its own cache) moves the newer snapshot into prod/vm/100.
    let b = host(&config, &prefix, &dir.path().join("b"), false);
    b.store
        .snapshot(&root, &newer)
        .move_to(&prod, Merge::IntoExisting)
        .unwrap();
    // A's cache knows prod/vm/100 with the older snapshot only; forgetting it leaves the group
    // empty as far as A's cache can tell.
    a.store.snapshot(&prod, &older).destroy().unwrap();
    let moved = format!("{}/index.json.blob", newer.relative_path(&prod));
    assert!(
        in_bucket(&config, &prefix, &moved),
        "the moved snapshot was wiped"
    );
    assert!(in_bucket(&config, &prefix, "ns/prod/vm/100/owner"));
    // So does destroying the whole (cached) group: only what A announced goes.
    let stats = a.store.group(&prod, older.group()).destroy().unwrap();
    assert_eq!(stats.removed_snapshots, 0);
    assert!(in_bucket(&config, &prefix, &moved));
}

#[test]
fn a_move_into_a_group_only_the_bucket_knows_obeys_it() {
    let Some(cfg) = keepsake_testkit::s3::config_or_skip("s3_move_into_bucket_group") else {
        return;
    };
    let config = s3_config(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let prefix = keepsake_testkit::s3::unique_prefix("s3fc3");
    let locks = dir.path().join("locks");
    let a = cache(&config, &prefix, &dir.path().join("a"), &locks, true);
    let prod = a.store.create_namespace(&"prod".parse().unwrap()).unwrap();
    let root = BackupNamespace::root();
    let mine = backup(&a.store, &root, "vm/100", 1_000);
    // The other cache makes prod/vm/100 with a newer snapshot; A's cache does not know it.
    let b = cache(&config, &prefix, &dir.path().join("b"), &locks, false);
    // (A refresh does not make empty namespaces in the cache, as PBS's does not.)
    b.store.create_namespace(&prod).unwrap();
    let theirs = backup(&b.store, &prod, "vm/100", 2_000);
    assert!(!a.store.group(&prod, mine.group()).exists().unwrap());
    let source = a.store.group(&root, mine.group());
    let err = source.move_to(&prod, Merge::Never).unwrap_err();
    assert!(
        matches!(&err, Error::MoveRefused { reason, .. } if **reason == MoveRefusal::TargetExists),
        "{err:?}"
    );
    let err = source.move_to(&prod, Merge::IntoExisting).unwrap_err();
    assert!(
        matches!(&err, Error::MoveRefused { reason, .. } if matches!(**reason, MoveRefusal::TimeOverlap { .. })),
        "{err:?}"
    );
    let err = a
        .store
        .snapshot(&root, &mine)
        .move_to(&prod, Merge::IntoExisting)
        .unwrap_err();
    assert!(matches!(err, Error::MoveRefused { .. }), "{err:?}");
    // Nothing moved, nothing overwritten.
    assert!(in_bucket(
        &config,
        &prefix,
        &format!("{}/index.json.blob", mine.relative_path(&root))
    ));
    assert!(!in_bucket(
        &config,
        &prefix,
        &format!("{}/conf.blob", mine.relative_path(&prod))
    ));
    assert!(in_bucket(
        &config,
        &prefix,
        &format!("{}/index.json.blob", theirs.relative_path(&prod))
    ));
    assert!(a.store.journal_intents().unwrap().is_empty());
}

#[test]
fn a_lost_reply_never_applies_a_manifest_change_twice() {
    let Some(cfg) = keepsake_testkit::s3::config_or_skip("s3_lost_reply_manifest") else {
        return;
    };
    let mut config = s3_config(&cfg);
    let proxy = keepsake_testkit::proxy::LostReplyProxy::start(&cfg.endpoint).unwrap();
    config.endpoint = Some(proxy.endpoint().to_owned());
    let dir = tempfile::tempdir().unwrap();
    let prefix = keepsake_testkit::s3::unique_prefix("s3fc5");
    let a = cache(
        &config,
        &prefix,
        &dir.path().join("a"),
        &dir.path().join("locks"),
        true,
    );
    let root = BackupNamespace::root();
    let snap = backup(&a.store, &root, "vm/100", 1_000);
    let snapshot = a.store.snapshot(&root, &snap);
    let mut runs = 0;
    // The next conditional PUT commits, and its reply is lost: the client retries and gets 412.
    proxy.lose_reply_to_conditional_put(1);
    let written = snapshot
        .update_manifest(|m| {
            runs += 1;
            let next = m
                .unprotected()
                .get("counter")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
                + 1;
            m.unprotected_mut()
                .insert("counter".to_owned(), serde_json::Value::from(next));
            Ok(())
        })
        .unwrap();
    assert_eq!(proxy.lost_replies(), 1, "the reply was lost");
    assert_eq!(runs, 1, "the change ran once");
    assert_eq!(written.unprotected()["counter"], 1);
    // A fresh client reads the bucket: counted once.
    let check = cache(
        &config,
        &prefix,
        &dir.path().join("check"),
        &dir.path().join("locks"),
        false,
    );
    let manifest = check.store.snapshot(&root, &snap).load_manifest().unwrap();
    assert_eq!(manifest.unprotected()["counter"], 1);
}

#[test]
fn a_cache_opens_only_for_its_own_bucket_and_never_as_a_local_store() {
    let Some(cfg) = keepsake_testkit::s3::config_or_skip("s3_cache_identity") else {
        return;
    };
    let config = s3_config(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let prefix = keepsake_testkit::s3::unique_prefix("s3fc6");
    let locks = dir.path().join("locks");
    let folder = dir.path().join("a");
    let a = cache(&config, &prefix, &folder, &locks, true);
    a.cached.claim().unwrap();
    drop(a);
    // Another datastore's settings over this cache folder: refused, nothing written.
    let other = ObjectBackend::s3(&config, &format!("{prefix}x")).unwrap();
    let local = LocalBackend::open(&folder, SyncLevel::None).unwrap();
    let err = CachedBackend::open(local, other).unwrap_err();
    assert!(
        matches!(err, keepsake_backend::Error::CacheMismatch { .. }),
        "{err:?}"
    );
    // As a plain local datastore: refused (changes would never reach the bucket).
    let err = DataStore::builder(&prefix, &folder)
        .lock_root(&locks)
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::S3Cache { .. }), "{err:?}");
    assert!(err.to_string().contains(&prefix), "{err}");
}

#[test]
fn protect_finding_the_marker_in_the_bucket_repairs_the_cache() {
    let Some(cfg) = keepsake_testkit::s3::config_or_skip("s3_protect_repairs_cache") else {
        return;
    };
    let config = s3_config(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let prefix = keepsake_testkit::s3::unique_prefix("s3fc7");
    let locks = dir.path().join("locks");
    let a = cache(&config, &prefix, &dir.path().join("a"), &locks, true);
    let root = BackupNamespace::root();
    let snap = backup(&a.store, &root, "vm/100", 1_000);
    let b = cache(&config, &prefix, &dir.path().join("b"), &locks, false);
    b.store.snapshot(&root, &snap).set_protected(true).unwrap();
    let snapshot = a.store.snapshot(&root, &snap);
    assert!(!snapshot.is_protected().unwrap());
    snapshot.set_protected(true).unwrap();
    // The cache now has the marker the bucket had: decisions from it are right again.
    assert!(snapshot.is_protected().unwrap());
}
