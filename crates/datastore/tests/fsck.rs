//! `DataStore::fsck`: every finding reported without `repair` (and nothing changed), mended with
//! it where fsck mends, left alone where it only reports; never a snapshot, manifest or protection
//! marker removed.

mod common;

use std::time::Duration;

use keepsake_datastore::{DataStore, Encryption, FsckOptions};
use keepsake_hierarchy::{Authid, BackupDir, BackupGroup, BackupNamespace, BackupTime};
use keepsake_lock::{FileLocker, LockMode, LockTarget, Locker};

fn owner() -> Authid {
    "root@pam".parse().unwrap()
}

fn backup(store: &DataStore, g: &str, epoch: i64) -> BackupDir {
    let mut w = store
        .group(&BackupNamespace::root(), &g.parse::<BackupGroup>().unwrap())
        .start_backup(&owner(), BackupTime::from_epoch(epoch).unwrap())
        .unwrap();
    w.add_blob("conf.blob", b"memory: 512\n", Encryption::None)
        .unwrap();
    w.finish().unwrap().dir().clone()
}

/// Every finished manifest and protection marker of the store, to check that fsck kept them.
fn kept(store: &DataStore) -> Vec<(String, bool)> {
    let root = BackupNamespace::root();
    let mut out = Vec::new();
    for g in store.iter_groups(&root).unwrap() {
        for info in g.unwrap().list_backups().unwrap() {
            if info.is_finished() {
                out.push((info.snapshot.to_string(), info.protected));
            }
        }
    }
    out
}

fn repair() -> FsckOptions {
    FsckOptions {
        repair: true,
        ..Default::default()
    }
}

#[test]
fn temp_files_empty_groups_and_missing_owners() {
    let t = common::local();
    let store = &t.store;
    let root = BackupNamespace::root();
    let st = t.root();
    let kept_snapshot = backup(store, "vm/100", 1_700_000_000);
    let protected = backup(store, "vm/101", 1_700_000_000);
    store
        .snapshot(&root, &protected)
        .set_protected(true)
        .unwrap();
    backup(store, "vm/102", 1_700_000_000);
    std::fs::remove_file(st.join("vm/102/owner")).unwrap();
    let (_, ct_lock) = store
        .group(&root, &"ct/200".parse().unwrap())
        .create_locked(&owner())
        .unwrap();
    drop(ct_lock);
    let group_temp = st.join("vm/100/.owner.tmp_12345");
    let snapshot_temp = st
        .join("vm/100")
        .join(kept_snapshot.time().to_string())
        .join(".index.json.blob.tmp_777");
    std::fs::write(&group_temp, b"half").unwrap();
    std::fs::write(&snapshot_temp, b"half").unwrap();
    let before = kept(store);

    let report = store.fsck(&FsckOptions::default()).unwrap();
    assert!(!report.is_clean());
    let mut temp = report.temp_files.clone();
    temp.sort();
    assert_eq!(
        temp,
        [
            "vm/100/.owner.tmp_12345".to_owned(),
            format!("vm/100/{}/.index.json.blob.tmp_777", kept_snapshot.time()),
        ]
    );
    assert_eq!(report.empty_groups, ["ct/200"]);
    assert_eq!(report.groups_without_owner, ["vm/102"]);
    assert!(report.repaired.is_empty());
    // Nothing changed without `repair`.
    assert!(group_temp.exists() && snapshot_temp.exists());
    assert!(
        store
            .group(&root, &"ct/200".parse().unwrap())
            .exists()
            .unwrap()
    );

    let report = store.fsck(&repair()).unwrap();
    assert_eq!(report.repaired.len(), 3, "{report:#?}");
    assert!(!group_temp.exists() && !snapshot_temp.exists());
    assert!(
        !store
            .group(&root, &"ct/200".parse().unwrap())
            .exists()
            .unwrap()
    );
    // A missing owner is reported, never invented.
    assert_eq!(report.groups_without_owner, ["vm/102"]);
    assert_eq!(kept(store), before);
    assert!(store.snapshot(&root, &protected).is_protected().unwrap());

    let again = store.fsck(&FsckOptions::default()).unwrap();
    assert!(again.temp_files.is_empty() && again.empty_groups.is_empty());
    assert_eq!(again.groups_without_owner, ["vm/102"]);
}

#[test]
fn temp_files_of_a_snapshot_in_use_are_left() {
    let t = common::local();
    let store = &t.store;
    let root = BackupNamespace::root();
    let d = backup(store, "vm/100", 1_700_000_000);
    let temp = t
        .root()
        .join("vm/100")
        .join(d.time().to_string())
        .join(".index.json.blob.tmp_1");
    std::fs::write(&temp, b"half").unwrap();
    let guard = store
        .snapshot(&root, &d)
        .lock_manifest(Duration::ZERO)
        .unwrap();
    let report = store.fsck(&repair()).unwrap();
    assert_eq!(report.temp_files_in_use.len(), 1, "{report:#?}");
    assert!(temp.exists());
    drop(guard);
    let report = store.fsck(&repair()).unwrap();
    assert!(report.temp_files_in_use.is_empty(), "{report:#?}");
    assert!(!temp.exists());
}

#[test]
fn old_unfinished_snapshots_are_reported_not_removed() {
    let t = common::local();
    let store = &t.store;
    backup(store, "vm/100", 1_600_000_000);
    let old = t.root().join("vm/100/2021-01-01T00:00:00Z");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("conf.blob"), b"partial").unwrap();

    let report = store.fsck(&FsckOptions::default()).unwrap();
    assert!(report.old_unfinished_snapshots.is_empty(), "no age given");
    let options = FsckOptions {
        repair: true,
        unfinished_older_than: Some(Duration::from_secs(86_400)),
        ..Default::default()
    };
    let report = store.fsck(&options).unwrap();
    assert_eq!(
        report.old_unfinished_snapshots,
        ["vm/100/2021-01-01T00:00:00Z"]
    );
    assert!(
        old.join("conf.blob").exists(),
        "an unfinished snapshot was removed"
    );
    // A younger threshold than its age reports it; an older one does not.
    let options = FsckOptions {
        unfinished_older_than: Some(Duration::from_secs(100 * 365 * 86_400)),
        ..Default::default()
    };
    assert!(
        store
            .fsck(&options)
            .unwrap()
            .old_unfinished_snapshots
            .is_empty()
    );
}

#[test]
fn unused_lock_files_are_removed_held_ones_kept() {
    let t = common::local();
    let store = &t.store;
    let root = BackupNamespace::root();
    let a = backup(store, "vm/100", 1_700_000_000);
    backup(store, "vm/101", 1_700_000_000);
    let locker = FileLocker::new(t.dir.path().join("locks"), "teststore").unwrap();
    let held_path = locker.lock_path(&LockTarget::snapshot(&root, &a));
    let held = locker
        .lock(
            &LockTarget::snapshot(&root, &a),
            LockMode::Shared,
            Duration::ZERO,
        )
        .unwrap();
    assert!(held_path.exists());
    let options = FsckOptions {
        repair: false,
        sweep_lock_files: true,
        ..Default::default()
    };
    let report = store.fsck(&options).unwrap();
    assert!(!report.unused_lock_files.is_empty(), "{report:#?}");
    assert!(!report.unused_lock_files.contains(&held_path));
    let unused = report.unused_lock_files.clone();
    assert!(unused.iter().all(|p| p.exists()), "removed without repair");

    let report = store
        .fsck(&FsckOptions {
            repair: true,
            ..options.clone()
        })
        .unwrap();
    assert_eq!(report.unused_lock_files, unused);
    assert!(unused.iter().all(|p| !p.exists()));
    assert!(held_path.exists(), "a held lock file was removed");
    drop(held);
    // Locks still work after the removal.
    store.snapshot(&root, &a).set_protected(true).unwrap();
}

#[test]
fn interrupted_intents_are_reported_then_recovered() {
    let t = common::local();
    let store = &t.store;
    let root = BackupNamespace::root();
    backup(store, "vm/300", 1_700_000_000);
    let intents = t.root().join(".keepsake/intents");
    std::fs::create_dir_all(&intents).unwrap();
    std::fs::write(
        intents.join("0000000000000000000000ff-00000001-00.intent"),
        "keepsake-intent 2\nop destroy-group\nns /\ngroup vm/300\nsnapshot vm/300/2023-11-14T22:13:20Z\nend\n",
    )
    .unwrap();
    let report = store.fsck(&FsckOptions::default()).unwrap();
    assert_eq!(report.interrupted.len(), 1, "{report:#?}");
    assert!(
        store
            .group(&root, &"vm/300".parse().unwrap())
            .exists()
            .unwrap()
    );
    let report = store.fsck(&repair()).unwrap();
    let recovery = report.recovery.unwrap();
    assert_eq!(recovery.recovered.len(), 1, "{recovery:#?}");
    assert!(
        !store
            .group(&root, &"vm/300".parse().unwrap())
            .exists()
            .unwrap()
    );
    assert!(store.journal_intents().unwrap().is_empty());
}

#[test]
fn a_format_1_intent_is_set_aside_and_removes_nothing() {
    let t = common::local();
    let store = &t.store;
    let root = BackupNamespace::root();
    backup(store, "vm/300", 1_700_000_000);
    let intents = t.root().join(".keepsake/intents");
    std::fs::create_dir_all(&intents).unwrap();
    // Format 1 did not name the snapshots a destroy announced: completing it could remove
    // snapshots added since, so it is never completed.
    std::fs::write(
        intents.join("0000000000000000000000ff-00000001-00.intent"),
        "keepsake-intent 1\nop destroy-group\nns /\ngroup vm/300\nend\n",
    )
    .unwrap();
    let report = store.fsck(&repair()).unwrap();
    let recovery = report.recovery.unwrap();
    assert!(recovery.recovered.is_empty(), "{recovery:#?}");
    assert_eq!(recovery.unreadable.len(), 1, "{recovery:#?}");
    assert!(recovery.unreadable[0].1.contains("format 1"));
    assert!(
        store
            .group(&root, &"vm/300".parse().unwrap())
            .exists()
            .unwrap()
    );
    assert!(
        intents
            .join("0000000000000000000000ff-00000001-00.intent.bad")
            .is_file()
    );
}

#[test]
fn cache_differences_are_reported_and_refreshed() {
    let t = common::cached_memory();
    let store = &t.store;
    let d = backup(store, "vm/100", 1_700_000_000);
    let manifest = t
        .root()
        .join("vm/100")
        .join(d.time().to_string())
        .join("index.json.blob");
    std::fs::remove_file(&manifest).unwrap();
    let options = FsckOptions {
        cache: t.cached.clone(),
        ..Default::default()
    };
    let report = store.fsck(&options).unwrap();
    let cache = report.cache.as_ref().unwrap();
    assert!(!cache.is_consistent(), "{report:#?}");
    assert!(!manifest.exists());
    let report = store
        .fsck(&FsckOptions {
            repair: true,
            ..options.clone()
        })
        .unwrap();
    assert!(report.cache_refresh.is_some());
    assert!(
        manifest.exists(),
        "the refresh did not bring the manifest back"
    );
    let report = store.fsck(&options).unwrap();
    assert!(report.cache.unwrap().is_consistent());
    common::assert_cache_matches_bucket(&t);
}
