//! Sync between datastores: what is copied, what is not, and an interrupted sync completed by
//! the next run.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use keepsake_backend::{Backend, LocalBackend, SyncLevel};
use keepsake_datastore::{
    ChunkVerification, DataStore, Encryption, RemoveVanished, SyncOptions, SyncProtection,
    SyncReport, VerifyOptions, VerifyScope,
};
use keepsake_hierarchy::{
    Authid, BackupGroup, BackupNamespace, BackupTime, GroupFilter, MANIFEST_BLOB_NAME,
};
use keepsake_testkit::fixture::PbsFixture;

use common::faulty::FaultyBackend;

const BASE: i64 = 1_717_600_000;
const DAY: i64 = 86_400;

fn ns(s: &str) -> BackupNamespace {
    s.parse().unwrap()
}

fn owner() -> Authid {
    "root@pam".parse().unwrap()
}

fn backup(store: &DataStore, n: &BackupNamespace, g: &str, day: i64) {
    let handle = store.group(n, &g.parse::<BackupGroup>().unwrap());
    let time = BackupTime::from_epoch(BASE + day * DAY).unwrap();
    let mut w = handle.start_backup(&owner(), time).unwrap();
    w.add_blob(
        "qemu-server.conf.blob",
        format!("day {day}\n").as_bytes(),
        Encryption::None,
    )
    .unwrap();
    // Shares most chunks with the other days: only the last 64 KiB change.
    let image: Vec<u8> = (0..300_000u32)
        .map(|i| {
            if i < 196_608 {
                (i % 251) as u8
            } else {
                (i % 199) as u8 ^ day as u8
            }
        })
        .collect();
    w.add_fixed_archive("drive-scsi0.img.fidx", &image, 65_536, Encryption::None)
        .unwrap();
    let chunks: Vec<Vec<u8>> = (0..3).map(|i| vec![i as u8 ^ day as u8; 10_000]).collect();
    w.add_dynamic_archive("root.pxar.didx", chunks, Encryption::None)
        .unwrap();
    w.finish().unwrap();
}

/// A store with namespaces `a`, `a/b`, `a/b/c` and groups in each, three days each.
fn generated() -> common::TestStore {
    let t = common::local();
    let s = &t.store;
    for n in ["a", "a/b", "a/b/c"] {
        s.create_namespace(&ns(n)).unwrap();
    }
    for day in 0..3 {
        backup(s, &ns(""), "vm/100", day);
        backup(s, &ns(""), "ct/200", day);
        backup(s, &ns("a"), "vm/101", day);
        backup(s, &ns("a/b"), "host/web", day);
        backup(s, &ns("a/b/c"), "vm/103", day);
    }
    s.group(&ns(""), &"vm/100".parse().unwrap())
        .set_notes("group notes\n")
        .unwrap();
    t
}

/// (namespace, snapshot) -> (manifest bytes, protected) of every finished snapshot, and the
/// unfinished ones with `None`.
type Listing2 = BTreeMap<(String, String), (Option<Vec<u8>>, bool)>;

fn listing(store: &DataStore) -> Listing2 {
    let mut out = BTreeMap::new();
    for n in store.iter_namespaces_recursive(&ns(""), None).unwrap() {
        let n = n.unwrap();
        for group in store.iter_groups(&n).unwrap() {
            for info in group.unwrap().list_backups().unwrap() {
                let snap = store.snapshot(&n, &info.snapshot);
                let manifest = info
                    .is_finished()
                    .then(|| snap.read_file(MANIFEST_BLOB_NAME).unwrap());
                out.insert(
                    (n.to_string(), info.snapshot.to_string()),
                    (manifest, info.protected),
                );
            }
        }
    }
    out
}

/// Every finished snapshot's files are byte for byte the source's.
fn same_files(source: &DataStore, target: &DataStore, map: impl Fn(&str) -> String) {
    for ((n, snap), (manifest, _)) in listing(target) {
        assert!(manifest.is_some(), "unfinished {n}/{snap} in the target");
        let dir = snap.parse().unwrap();
        let to = target.snapshot(&ns(&n), &dir);
        let from = source.snapshot(&ns(&map(&n)), &dir);
        let info = to.info().unwrap();
        assert_eq!(
            info.files.len(),
            from.info().unwrap().files.len(),
            "{n}/{snap}"
        );
        for file in info.files {
            assert_eq!(
                to.read_file(&file).unwrap(),
                from.read_file(&file).unwrap(),
                "{n}/{snap}/{file}"
            );
        }
    }
}

fn verify_clean(store: &DataStore) {
    let mut options = VerifyOptions::default();
    options.chunks = ChunkVerification::Content;
    let report = store.verify(&VerifyScope::Store, &options).unwrap();
    assert!(report.is_ok(), "{report:#?}");
    assert_eq!(report.content.missing, 0);
    assert_eq!(report.content.corrupt, 0);
}

fn nothing_more(target: &DataStore, source: &DataStore, options: &SyncOptions) {
    let again = target.sync_from(source, options).unwrap();
    assert_eq!(again.snapshots, 0, "{again:?}");
    assert_eq!(again.chunks, 0, "{again:?}");
    assert_eq!(again.replaced_unfinished, 0, "{again:?}");
}

#[test]
fn everything_local_to_local() {
    let source = generated();
    let target = common::local();
    let options = SyncOptions::default();
    let report = target.store.sync_from(&source.store, &options).unwrap();
    assert_eq!(report.snapshots, 15);
    assert_eq!(report.namespaces, 4);
    assert_eq!(report.groups, 5);
    assert!(report.chunks > 0);
    // Chunks shared between snapshots and groups are copied once.
    assert!(report.chunks_present == 0, "{report:?}");
    assert_eq!(listing(&target.store), listing(&source.store));
    same_files(&source.store, &target.store, str::to_owned);
    verify_clean(&target.store);
    let g = target.store.group(&ns(""), &"vm/100".parse().unwrap());
    assert_eq!(g.owner().unwrap(), owner());
    assert_eq!(g.notes().unwrap().as_deref(), Some("group notes\n"));
    nothing_more(&target.store, &source.store, &options);
    // A new source snapshot is the only thing the next run copies.
    backup(&source.store, &ns("a"), "vm/101", 5);
    let next = target.store.sync_from(&source.store, &options).unwrap();
    assert_eq!(next.snapshots, 1, "{next:?}");
    assert_eq!(listing(&target.store), listing(&source.store));
}

#[test]
fn namespace_mapping_depth_filters_and_transfer_last() {
    let source = generated();
    let target = common::local();
    let mut options = SyncOptions::default();
    options.source_ns = ns("a");
    options.target_ns = ns("x/y");
    options.max_depth = Some(1);
    options.transfer_last = Some(2);
    options.owner = Some("sync@pbs".parse().unwrap());
    options.group_filter = vec!["exclude:group:vm/101".parse::<GroupFilter>().unwrap()];
    let report = target.store.sync_from(&source.store, &options).unwrap();
    assert_eq!(report.namespaces, 2, "{report:?}");
    assert_eq!(report.groups, 1, "{report:?}");
    assert_eq!(report.snapshots, 2, "{report:?}");
    let got: Vec<(String, String)> = listing(&target.store).into_keys().collect();
    let want: Vec<(String, String)> = (1..3)
        .map(|day| {
            (
                "x/y/b".to_owned(),
                format!(
                    "host/web/{}",
                    BackupTime::from_epoch(BASE + day * DAY).unwrap()
                ),
            )
        })
        .collect();
    assert_eq!(got, want);
    // x/y exists although it got no group; x/y/b/c is beyond the depth.
    assert!(target.store.namespace_exists(&ns("x/y")).unwrap());
    assert!(!target.store.namespace_exists(&ns("x/y/b/c")).unwrap());
    let g = target
        .store
        .group(&ns("x/y/b"), &"host/web".parse().unwrap());
    assert_eq!(g.owner().unwrap().to_string(), "sync@pbs");
    same_files(&source.store, &target.store, |n| n.replacen("x/y", "a", 1));
    verify_clean(&target.store);
    nothing_more(&target.store, &source.store, &options);
}

#[test]
fn only_newer_than_the_targets_last() {
    let source = generated();
    let target = common::local();
    // The target has day 1 of vm/100 already (its own backup): days 0 and 1 of the source are
    // not copied, day 2 is.
    backup(&target.store, &ns(""), "vm/100", 1);
    let mut options = SyncOptions::default();
    options.group_filter = vec!["group:vm/100".parse::<GroupFilter>().unwrap()];
    let report = target.store.sync_from(&source.store, &options).unwrap();
    assert_eq!(report.snapshots, 1, "{report:?}");
    assert!(report.chunks_present > 0, "{report:?}");
    assert_eq!(listing(&target.store).len(), 2);
}

#[test]
fn the_pbs_fixture_copies_finished_snapshots_and_protection_on_request() {
    let fx = PbsFixture::unpack().unwrap();
    let locks = tempfile::tempdir().unwrap();
    let source = DataStore::builder("store1", fx.path())
        .lock_root(locks.path())
        .open()
        .unwrap();
    let target = common::local();
    let mut options = SyncOptions::default();
    options.protection = SyncProtection::Copy;
    let report = target.store.sync_from(&source, &options).unwrap();
    let want: Listing2 = listing(&source)
        .into_iter()
        .filter(|(_, (manifest, _))| manifest.is_some())
        .collect();
    assert_eq!(report.snapshots, want.len());
    assert_eq!(listing(&target.store), want);
    same_files(&source, &target.store, str::to_owned);
    verify_clean(&target.store);
    nothing_more(&target.store, &source, &options);

    // Without the option, nothing is protected.
    let plain = common::local();
    plain
        .store
        .sync_from(&source, &SyncOptions::default())
        .unwrap();
    assert!(
        listing(&plain.store)
            .values()
            .all(|(_, protected)| !protected)
    );
}

/// The target on a backend that fails its `n`-th mutating call and every one after (a process
/// that died there), then a run on the healthy backend: the same target as an uninterrupted sync.
#[test]
fn an_interrupted_sync_is_completed_by_the_next_run() {
    let source = generated();
    let reference = common::local();
    reference
        .store
        .sync_from(&source.store, &SyncOptions::default())
        .unwrap();
    let want = listing(&reference.store);
    for (interrupted, n) in (1..).step_by(2).enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        DataStore::builder("teststore", &root)
            .lock_root(dir.path().join("locks"))
            .sync_level(SyncLevel::None)
            .chunk_prefix_dirs(false)
            .create()
            .unwrap();
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::open(&root, SyncLevel::None).unwrap());
        let faulty = Arc::new(FaultyBackend::new(local, n));
        let broken = DataStore::builder("teststore", &root)
            .lock_root(dir.path().join("locks"))
            .backend(faulty.clone())
            .open()
            .unwrap();
        faulty.arm();
        let first: Option<SyncReport> = broken
            .sync_from(&source.store, &SyncOptions::default())
            .ok();
        drop(broken);
        let healthy = DataStore::builder("teststore", &root)
            .lock_root(dir.path().join("locks"))
            .sync_level(SyncLevel::None)
            .open()
            .unwrap();
        if first.is_some() {
            assert_eq!(listing(&healthy), want);
            assert!(interrupted >= 50, "only {interrupted} interruptions");
            break;
        }
        healthy
            .sync_from(&source.store, &SyncOptions::default())
            .unwrap_or_else(|e| panic!("after a fault at call {n}: {e:?}"));
        assert_eq!(listing(&healthy), want, "after a fault at call {n}");
        verify_clean(&healthy);
        nothing_more(&healthy, &source.store, &SyncOptions::default());
    }
}

#[test]
fn local_to_a_bucket_behind_the_cache_and_back() {
    let source = generated();
    let bucket = common::cached_memory();
    let options = SyncOptions::default();
    let report = bucket.store.sync_from(&source.store, &options).unwrap();
    assert_eq!(report.snapshots, 15);
    assert_eq!(listing(&bucket.store), listing(&source.store));
    verify_clean(&bucket.store);
    nothing_more(&bucket.store, &source.store, &options);
    let back = common::local();
    back.store.sync_from(&bucket.store, &options).unwrap();
    assert_eq!(listing(&back.store), listing(&source.store));
    same_files(&source.store, &back.store, str::to_owned);
    verify_clean(&back.store);
}

fn time(day: i64) -> BackupTime {
    BackupTime::from_epoch(BASE + day * DAY).unwrap()
}

fn snap(store: &DataStore, n: &str, g: &str, day: i64) -> keepsake_datastore::Snapshot {
    let dir = keepsake_hierarchy::BackupDir::new(g.parse().unwrap(), time(day));
    store.snapshot(&ns(n), &dir)
}

fn keys(store: &DataStore) -> Vec<String> {
    listing(store)
        .into_keys()
        .map(|(n, s)| format!("{n}:{s}"))
        .collect()
}

fn key(n: &str, g: &str, day: i64) -> String {
    format!("{n}:{g}/{}", time(day))
}

#[test]
fn remove_vanished_stays_in_scope_and_never_removes_a_protected_snapshot() {
    let source = generated();
    let target = common::local();
    target
        .store
        .sync_from(&source.store, &SyncOptions::default())
        .unwrap();
    // The target's own group, which the source never had: gone from the source as far as a
    // sync can tell (PBS's remove-vanished removes such groups too).
    backup(&target.store, &ns(""), "host/own", 0);
    snap(&target.store, "", "vm/100", 1)
        .set_protected(true)
        .unwrap();
    for (n, g, day) in [
        ("", "vm/100", 0),
        ("", "vm/100", 1),
        ("a", "vm/101", 0),
        ("a/b/c", "vm/103", 0),
    ] {
        snap(&source.store, n, g, day).destroy().unwrap();
    }
    source
        .store
        .group(&ns(""), &"ct/200".parse().unwrap())
        .destroy()
        .unwrap();
    let before = keys(&target.store);

    let mut options = SyncOptions::default();
    options.max_depth = Some(1);
    options.group_filter = vec!["exclude:group:vm/101".parse::<GroupFilter>().unwrap()];
    // Not asked for: nothing is removed.
    let kept = target.store.sync_from(&source.store, &options).unwrap();
    assert_eq!((kept.removed_vanished, kept.vanished_protected), (0, 0));
    assert_eq!(keys(&target.store), before);

    options.remove_vanished = RemoveVanished::Remove;
    let report = target.store.sync_from(&source.store, &options).unwrap();
    assert_eq!(report.snapshots, 0, "{report:?}");
    assert_eq!(report.removed_vanished, 5, "{report:?}");
    assert_eq!(report.vanished_protected, 1, "{report:?}");
    let want: Vec<String> = before
        .into_iter()
        .filter(|k| {
            ![
                key("", "vm/100", 0),
                key("", "ct/200", 0),
                key("", "ct/200", 1),
                key("", "ct/200", 2),
                key("", "host/own", 0),
            ]
            .contains(k)
        })
        .collect();
    assert_eq!(keys(&target.store), want);
    // Kept: the protected one, the filtered group's and the one beyond the depth.
    for kept in [
        key("", "vm/100", 1),
        key("a", "vm/101", 0),
        key("a/b/c", "vm/103", 0),
    ] {
        assert!(want.contains(&kept), "{kept}");
    }
    // Emptied groups are gone with their owner.
    assert!(
        !target
            .store
            .group(&ns(""), &"ct/200".parse().unwrap())
            .exists()
            .unwrap()
    );
    verify_clean(&target.store);

    let again = target.store.sync_from(&source.store, &options).unwrap();
    assert_eq!((again.removed_vanished, again.vanished_protected), (0, 1));
    assert_eq!(keys(&target.store), want);
}

#[test]
fn remove_vanished_with_an_owner_only_touches_the_owners_groups() {
    let source = generated();
    let target = common::local();
    let mut options = SyncOptions::default();
    options.owner = Some("sync@pbs".parse().unwrap());
    options.group_filter = vec!["group:vm/100".parse::<GroupFilter>().unwrap()];
    target.store.sync_from(&source.store, &options).unwrap();
    // root@pam's own group in the target, which the source does not have.
    backup(&target.store, &ns(""), "vm/999", 0);
    snap(&source.store, "", "vm/100", 0).destroy().unwrap();
    options.group_filter.clear();
    options.transfer_last = Some(0);
    options.remove_vanished = RemoveVanished::Remove;
    let report = target.store.sync_from(&source.store, &options).unwrap();
    assert_eq!(report.removed_vanished, 1, "{report:?}");
    assert!(snap(&target.store, "", "vm/999", 0).exists().unwrap());
    assert!(!snap(&target.store, "", "vm/100", 0).exists().unwrap());
}

/// A source without any group in the synced scope (an empty datastore, an empty namespace:
/// most often a source named by mistake) removes nothing with `Remove`: the sync fails before
/// its first removal. `RemoveEvenIfSourceEmpty` removes, as PBS does; protected snapshots stay.
#[test]
fn remove_vanished_refuses_to_empty_the_target_from_an_empty_source() {
    let target = common::local();
    target
        .store
        .sync_from(&generated().store, &SyncOptions::default())
        .unwrap();
    snap(&target.store, "", "vm/100", 2)
        .set_protected(true)
        .unwrap();
    let before = keys(&target.store);
    let empty = common::local();
    empty.store.create_namespace(&ns("a")).unwrap();

    let mut options = SyncOptions::default();
    options.remove_vanished = RemoveVanished::Remove;
    let err = target.store.sync_from(&empty.store, &options).unwrap_err();
    assert!(
        matches!(&err, keepsake_datastore::Error::SyncSourceEmpty { first, .. } if first.starts_with("ct/200/")),
        "{err:?}"
    );
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(keys(&target.store), before);
    // An empty namespace of the source, mapped onto a full one of the target: the same.
    options.source_ns = ns("a");
    options.target_ns = ns("a");
    let err = target.store.sync_from(&empty.store, &options).unwrap_err();
    assert!(
        matches!(err, keepsake_datastore::Error::SyncSourceEmpty { .. }),
        "{err:?}"
    );
    assert_eq!(keys(&target.store), before);
    // Asked for: everything unprotected in scope goes.
    options.remove_vanished = RemoveVanished::RemoveEvenIfSourceEmpty;
    let report = target.store.sync_from(&empty.store, &options).unwrap();
    assert_eq!(report.removed_vanished, 9, "{report:?}");
    options.source_ns = ns("");
    options.target_ns = ns("");
    options.max_depth = Some(0);
    let report = target.store.sync_from(&empty.store, &options).unwrap();
    assert_eq!(
        (report.removed_vanished, report.vanished_protected),
        (5, 1),
        "{report:?}"
    );
    assert_eq!(keys(&target.store), vec![key("", "vm/100", 2)]);
}

/// A source whose cache lost a snapshot that its bucket still has: the snapshot is not gone,
/// and its target copy stays.
#[test]
fn remove_vanished_asks_the_sources_authority_not_its_cache() {
    let source = common::cached_memory();
    for day in 0..3 {
        backup(&source.store, &ns(""), "vm/100", day);
    }
    let target = common::local();
    target
        .store
        .sync_from(&source.store, &SyncOptions::default())
        .unwrap();
    let gone = snap(&source.store, "", "vm/100", 1);
    std::fs::remove_dir_all(source.root().join(gone.relative_path())).unwrap();
    assert_eq!(
        source
            .store
            .group(&ns(""), &"vm/100".parse().unwrap())
            .list_backups()
            .unwrap()
            .len(),
        2
    );
    let mut options = SyncOptions::default();
    options.remove_vanished = RemoveVanished::Remove;
    let report = target.store.sync_from(&source.store, &options).unwrap();
    assert_eq!(report.removed_vanished, 0, "{report:?}");
    assert_eq!(listing(&target.store).len(), 3);
}

/// A sync that fails before its end (here a source chunk is missing) removes nothing.
#[test]
fn a_failed_sync_removes_nothing() {
    let source = generated();
    let target = common::local();
    target
        .store
        .sync_from(&source.store, &SyncOptions::default())
        .unwrap();
    snap(&source.store, "", "vm/100", 0).destroy().unwrap();
    backup(&source.store, &ns(""), "vm/100", 7);
    // The new snapshot's own chunks (the changed tail) are gone from the source.
    let index = snap(&source.store, "", "vm/100", 7)
        .read_file("root.pxar.didx")
        .unwrap();
    let index = keepsake_manifest::index::IndexFile::from_slice(&index).unwrap();
    let digest = *keepsake_manifest::index::ChunkIndex::digest(&index, 0).unwrap();
    std::fs::remove_file(source.root().join(keepsake_datastore::chunk_path(&digest))).unwrap();
    let before = keys(&target.store);
    let mut options = SyncOptions::default();
    options.remove_vanished = RemoveVanished::Remove;
    assert!(target.store.sync_from(&source.store, &options).is_err());
    let after: Vec<String> = keys(&target.store)
        .into_iter()
        .filter(|k| !k.contains(&time(7).to_string()))
        .collect();
    assert_eq!(after, before);
}

/// Groups and chunks in parallel: whatever the worker counts, the same target and the same
/// report (each chunk checked, copied and counted once, though groups share chunks).
#[test]
fn parallel_workers_give_the_same_target_and_report() {
    use std::num::NonZeroUsize;
    let source = generated();
    // Groups in two namespaces share chunks: the same image in vm/100 and vm/101.
    backup(&source.store, &ns("a"), "vm/100", 0);
    let mut reports = Vec::new();
    for (groups, chunks) in [(1, 1), (4, 8), (3, 2), (8, 1)] {
        let target = common::local();
        let mut options = SyncOptions::default();
        options.group_workers = NonZeroUsize::new(groups);
        options.chunk_workers = NonZeroUsize::new(chunks);
        let progress = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = progress.clone();
        options.on_progress = Some(std::sync::Arc::new(move |r: &SyncReport| {
            seen.lock().unwrap().push(r.snapshots);
        }));
        let report = target.store.sync_from(&source.store, &options).unwrap();
        assert_eq!(listing(&target.store), listing(&source.store));
        same_files(&source.store, &target.store, str::to_owned);
        verify_clean(&target.store);
        // Progress went up to the end.
        assert_eq!(
            progress.lock().unwrap().iter().max().copied(),
            Some(report.snapshots)
        );
        reports.push(report);
    }
    assert_eq!(reports[0].chunks_present, 0, "{:?}", reports[0]);
    for r in &reports[1..] {
        assert_eq!(r, &reports[0]);
    }
}

/// The objects the bucket holds (metadata and chunks).
fn bucket_objects(remote: &keepsake_backend::ObjectBackend) -> usize {
    let mut chunks = 0u64;
    remote
        .list_bucket_chunks(&mut |page| {
            chunks += page.len() as u64;
            Ok(())
        })
        .unwrap();
    remote
        .list_files_authoritative(&keepsake_backend::BackendPath::root())
        .unwrap()
        .len()
        + chunks as usize
}

/// One sync into an S3 target, its requests checked: a PUT per object written, and no HEAD for
/// any chunk. What is not per chunk stays: `owner_checks` snapshots go into a group the target
/// has already, where the writer's create-only owner write is answered "exists" (one PUT that
/// writes nothing) and the cache's owner copy is refreshed (HEAD and GET); setting group notes
/// asks the bucket first (`notes_heads`). Returns the report and the requests.
fn counted_sync(
    target: &common::TestStore,
    source: &DataStore,
    owner_checks: u64,
    notes_heads: u64,
) -> (SyncReport, keepsake_backend::RequestCounts) {
    let remote = target.cached.as_ref().unwrap().remote();
    let objects = bucket_objects(remote);
    let before = remote.requests();
    let report = target
        .store
        .sync_from(source, &SyncOptions::default())
        .unwrap();
    let requests = remote.requests() - before;
    let written = bucket_objects(remote) - objects;
    assert_eq!(
        requests.head,
        owner_checks + notes_heads,
        "{}: {requests} {report:?}",
        target.kind
    );
    assert_eq!(
        requests.put,
        written as u64 + owner_checks,
        "{}: {requests} {report:?}",
        target.kind
    );
    (report, requests)
}

/// Into an S3 target the bucket's chunks are listed once per run, at the first chunk the cache
/// lacks: a chunk in the cache or the listing costs no request, one in neither a create-only
/// PUT; no chunk is asked for with a HEAD. A run that finds every chunk in the cache lists
/// nothing.
#[test]
fn an_s3_target_lists_its_bucket_once_and_sends_a_put_per_object_written() {
    let targets = [common::cached_memory()]
        .into_iter()
        .chain(common::cached_s3("sync-requests"));
    for target in targets {
        let kind = target.kind;
        let source = generated();
        // First run: an empty bucket.
        let (first, _) = counted_sync(&target, &source.store, 10, 1);
        assert_eq!(first.snapshots, 15, "{kind}");
        assert!(
            first.chunks > 0 && first.bucket_chunks_listed == 0,
            "{first:?}"
        );

        // Second run: new snapshots whose chunks are partly in the cache, partly new.
        backup(&source.store, &ns(""), "vm/100", 5);
        backup(&source.store, &ns("a"), "vm/101", 5);
        let (second, requests) = counted_sync(&target, &source.store, 2, 0);
        assert_eq!(second.snapshots, 2, "{kind}");
        assert!(second.chunks > 0 && second.chunks_present > 0, "{second:?}");
        assert_eq!(second.bucket_chunks_listed, first.chunks, "{second:?}");
        assert!(requests.list >= 1, "{kind}: {requests}");

        // The cache lost its chunk files (evicted, or a new cache): the listing, not a request
        // per chunk, tells which the bucket has, and the cache gets markers for them.
        std::fs::remove_dir_all(target.root().join(".chunks")).unwrap();
        std::fs::create_dir(target.root().join(".chunks")).unwrap();
        backup(&source.store, &ns(""), "vm/100", 6);
        let (third, _) = counted_sync(&target, &source.store, 1, 0);
        assert_eq!(third.snapshots, 1, "{kind}");
        assert!(third.chunks_present > 0, "{third:?}");
        assert_eq!(
            third.bucket_chunks_listed,
            first.chunks + second.chunks,
            "{third:?}"
        );

        // Nothing new: no chunk is looked at, so nothing is listed and nothing asked.
        let (fourth, requests) = counted_sync(&target, &source.store, 0, 0);
        assert_eq!((fourth.snapshots, fourth.chunks), (0, 0), "{kind}");
        assert_eq!(fourth.bucket_chunks_listed, 0, "{kind}");
        assert_eq!(requests.list + requests.put, 0, "{kind}: {requests}");

        assert_eq!(listing(&target.store), listing(&source.store), "{kind}");
        same_files(&source.store, &target.store, str::to_owned);
        verify_clean(&target.store);
    }
}
