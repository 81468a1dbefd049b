//! The datastore's behaviour, on every backend: local filesystem, cached in-memory object store, and
//! cached S3 on the test server. After each test on a cached backend, bucket and cache must agree.

mod common;

use keepsake_datastore::{
    BackupInfo, DataStore, Encryption, Error, ExistingOwner, GroupsInside, Unfinished,
};
use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime, GroupFilter};
use keepsake_manifest::index::{ChunkIndex, IndexFile};
use keepsake_manifest::manifest::{VerifyOutcome, VerifyState};
use sha2::{Digest, Sha256};

fn ns(s: &str) -> BackupNamespace {
    s.parse().unwrap()
}

fn group(s: &str) -> BackupGroup {
    s.parse().unwrap()
}

fn root() -> Authid {
    "root@pam".parse().unwrap()
}

fn t(epoch: i64) -> BackupTime {
    BackupTime::from_epoch(epoch).unwrap()
}

/// Writes a finished snapshot with a blob, a fixed and a dynamic index.
fn write_backup(store: &DataStore, ns: &BackupNamespace, g: &str, time: i64) {
    let mut w = store
        .group(ns, &group(g))
        .start_backup(&root(), t(time))
        .unwrap();
    w.add_blob(
        "qemu-server.conf.blob",
        format!("conf {time}\n").as_bytes(),
        Encryption::None,
    )
    .unwrap();
    let image: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    w.add_fixed_archive("drive-scsi0.img.fidx", &image, 65_536, Encryption::None)
        .unwrap();
    let a = vec![1u8; 10_000];
    let b = format!("pxar {time}").into_bytes();
    w.add_dynamic_archive(
        "root.pxar.didx",
        [a.as_slice(), b.as_slice()],
        Encryption::None,
    )
    .unwrap();
    w.finish().unwrap();
}

/// Checks what PBS's verify would: every manifest entry matches its file (blob: size and sha256 of
/// the file; index: archive size and index checksum), every index's chunks exist.
fn check_pbs_consistency(store: &DataStore, ns: &BackupNamespace, g: &str) -> usize {
    let mut checked = 0;
    for info in store.group(ns, &group(g)).list_backups().unwrap() {
        if !info.is_finished() {
            continue;
        }
        let snapshot = store.snapshot(ns, &info.snapshot);
        let manifest = snapshot.load_manifest().unwrap();
        assert_eq!(manifest.snapshot(), info.snapshot);
        for file in manifest.files() {
            let raw = snapshot.read_file(file.filename()).unwrap();
            if file.filename().ends_with(".blob") {
                let csum: [u8; 32] = Sha256::digest(&raw).into();
                assert!(file.matches(raw.len() as u64, &csum), "{}", file.filename());
                snapshot.load_blob(file.filename()).unwrap();
            } else {
                let index = IndexFile::from_bytes(raw).unwrap();
                assert!(
                    file.matches(index.archive_size(), index.index_csum()),
                    "{}",
                    file.filename()
                );
                for chunk in index.chunks() {
                    assert!(
                        store.chunk_exists(chunk.digest).unwrap(),
                        "chunk of {}",
                        file.filename()
                    );
                }
            }
            checked += 1;
        }
    }
    checked
}

#[test]
fn namespaces_create_list_remove() {
    for ts in common::all("namespaces_create_list_remove") {
        let store = &ts.store;
        assert!(matches!(
            store.create_namespace(&ns("a/b")),
            Err(Error::NotFound {
                what: "namespace",
                ..
            })
        ));
        store.create_namespace(&ns("a")).unwrap();
        store.create_namespace(&ns("a")).unwrap();
        store.create_namespace(&ns("a/b")).unwrap();
        store.create_namespace(&ns("a/b/c")).unwrap();
        store.create_namespace(&ns("x")).unwrap();
        assert!(store.namespace_exists(&ns("a/b/c")).unwrap());
        assert!(!store.namespace_exists(&ns("a/c")).unwrap());

        let all: Vec<String> = store
            .iter_namespaces_recursive(&BackupNamespace::root(), None)
            .unwrap()
            .map(|n| n.unwrap().to_string())
            .collect();
        assert_eq!(all.len(), 5, "{all:?}");
        assert_eq!(all[0], "");
        // Depth-first: every namespace comes after its parent.
        for (i, n) in all.iter().enumerate().skip(1) {
            let parent = ns(n).parent().unwrap().to_string();
            assert!(all[..i].contains(&parent), "{all:?}");
        }
        let below_a: Vec<String> = store
            .iter_namespaces_recursive(&ns("a"), Some(1))
            .unwrap()
            .map(|n| n.unwrap().to_string())
            .collect();
        assert_eq!(below_a, ["a", "a/b"]);

        // A group with a protected snapshot keeps its namespace.
        write_backup(store, &ns("a/b"), "vm/1", 1_000);
        write_backup(store, &ns("a/b/c"), "ct/2", 1_000);
        store
            .snapshot(&ns("a/b"), &"vm/1/1970-01-01T00:16:40Z".parse().unwrap())
            .set_protected(true)
            .unwrap();

        let kept = store
            .remove_namespace(&ns("a"), GroupsInside::Keep)
            .unwrap();
        assert!(!kept.all_removed());
        assert!(
            store.namespace_exists(&ns("a/b/c")).unwrap(),
            "groups stay without delete_groups"
        );

        let report = store
            .remove_namespace(&ns("a"), GroupsInside::Destroy)
            .unwrap();
        assert_eq!(report.groups.removed_snapshots, 1);
        assert_eq!(report.groups.protected_snapshots, 1);
        assert!(!report.all_removed());
        assert!(!store.namespace_exists(&ns("a/b/c")).unwrap());
        assert!(
            store.namespace_exists(&ns("a/b")).unwrap(),
            "protected snapshot keeps a/b"
        );
        let left = store
            .group(&ns("a/b"), &group("vm/1"))
            .list_backups()
            .unwrap();
        assert_eq!(left.len(), 1);
        assert!(left[0].protected);

        let report = store
            .remove_namespace(&ns("x"), GroupsInside::Keep)
            .unwrap();
        assert!(report.all_removed());
        assert!(!store.namespace_exists(&ns("x")).unwrap());
        common::assert_cache_matches_bucket(&ts);
    }
}

#[test]
fn groups_owner_notes_and_listing() {
    for ts in common::all("groups_owner_notes_and_listing") {
        let store = &ts.store;
        let root_ns = BackupNamespace::root();
        let g = store.group(&root_ns, &group("vm/100"));
        assert!(!g.exists().unwrap());
        assert!(g.owner().unwrap_err().is_not_found());
        assert!(matches!(g.iter_snapshots(), Err(Error::NotFound { .. })));
        assert_eq!(g.last_successful_backup().unwrap(), None);

        let token: Authid = "user@pbs!tok".parse().unwrap();
        let (owner, lock) = g.create_locked(&token).unwrap();
        assert_eq!(owner, token);
        drop(lock);
        // An existing group keeps its owner.
        let (owner, lock) = g.create_locked(&root()).unwrap();
        assert_eq!(owner, token);
        drop(lock);
        assert!(matches!(
            g.set_owner(&root(), ExistingOwner::Refuse),
            Err(Error::AlreadyExists { .. })
        ));
        g.set_owner(&root(), ExistingOwner::Replace).unwrap();
        assert_eq!(g.owner().unwrap(), root());
        let owner_file = store
            .backend()
            .read(&"vm/100/owner".parse().unwrap())
            .unwrap();
        assert_eq!(owner_file.data, b"root@pam\n");

        assert_eq!(g.notes().unwrap(), None);
        g.set_notes("line 1\nline 2").unwrap();
        assert_eq!(g.notes().unwrap().as_deref(), Some("line 1\nline 2"));

        write_backup(store, &root_ns, "vm/100", 2_000);
        write_backup(store, &root_ns, "vm/100", 1_000_000);
        assert!(matches!(
            g.start_backup(&root(), t(1_000_000)),
            Err(Error::TimeNotNewer { .. })
        ));
        assert!(matches!(
            g.start_backup(&"other@pbs".parse().unwrap(), t(2_000_000)),
            Err(Error::NotOwner { .. })
        ));
        // The owner's own tokens may write, too (PBS's rule is the reverse: a user may act for
        // its token-owned groups); here the owner is root@pam.
        let mut list = g.list_backups().unwrap();
        BackupInfo::sort(&mut list, keepsake_datastore::SortOrder::OldestFirst);
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].snapshot.time(), t(1_000_000));
        assert_eq!(list[0].files.len(), 4);
        assert_eq!(
            g.last_backup(Unfinished::Skip)
                .unwrap()
                .unwrap()
                .snapshot
                .time(),
            t(1_000_000)
        );
        assert_eq!(g.last_successful_backup().unwrap(), Some(t(1_000_000)));
        assert!(g.matches(&["type:vm".parse::<GroupFilter>().unwrap()]));
        assert!(!g.matches(&["exclude:group:vm/100".parse::<GroupFilter>().unwrap()]));

        let _ = store
            .group(&root_ns, &group("ct/1"))
            .create_locked(&root())
            .unwrap();
        let groups: Vec<String> = store
            .iter_groups(&root_ns)
            .unwrap()
            .map(|g| g.unwrap().name().to_string())
            .collect();
        assert_eq!(groups.len(), 2);
        let vms: Vec<String> = store
            .iter_groups_of_type(&root_ns, "vm".parse().unwrap())
            .unwrap()
            .map(|g| g.unwrap().name().to_string())
            .collect();
        assert_eq!(vms, ["vm/100"]);
        assert_eq!(check_pbs_consistency(store, &root_ns, "vm/100"), 6);
        common::assert_cache_matches_bucket(&ts);
    }
}

#[test]
fn snapshots_protection_manifest_and_destroy() {
    for ts in common::all("snapshots_protection_manifest_and_destroy") {
        let store = &ts.store;
        let n = BackupNamespace::root();
        write_backup(store, &n, "vm/7", 100);
        write_backup(store, &n, "vm/7", 200);
        let first = store.snapshot(&n, &"vm/7/1970-01-01T00:01:40Z".parse().unwrap());
        let second = store.snapshot(&n, &"vm/7/1970-01-01T00:03:20Z".parse().unwrap());

        assert!(!first.is_protected().unwrap());
        first.set_protected(true).unwrap();
        first.set_protected(true).unwrap();
        assert!(first.is_protected().unwrap());
        assert!(first.info().unwrap().protected);
        assert!(matches!(first.destroy(), Err(Error::Protected { .. })));
        assert!(matches!(first.destroy(), Err(Error::Protected { .. })));
        first.set_protected(false).unwrap();
        assert!(!first.is_protected().unwrap());

        // Manifest updates keep the files and add unprotected data.
        let before = first.load_manifest().unwrap();
        first.set_notes(Some("checked by hand")).unwrap();
        first
            .set_verify_state(&VerifyState {
                upid: "UPID:test".to_owned(),
                state: VerifyOutcome::Ok,
            })
            .unwrap();
        let after = first.load_manifest().unwrap();
        assert_eq!(after.files(), before.files());
        assert_eq!(first.notes().unwrap().as_deref(), Some("checked by hand"));
        assert_eq!(
            first.verify_state().unwrap().unwrap().state,
            VerifyOutcome::Ok
        );
        // A failing change writes nothing.
        let err = first.update_manifest(|m| {
            m.set_notes(Some("never written"));
            Err(Error::NotFound {
                what: "file",
                path: "changed my mind".to_owned(),
            })
        });
        assert!(err.is_err());
        assert_eq!(first.notes().unwrap().as_deref(), Some("checked by hand"));

        // Unreferenced files go, `.protected` and the client log stay.
        store
            .backend()
            .write(
                &"vm/7/1970-01-01T00:03:20Z/stray.tmp_fidx".parse().unwrap(),
                b"x",
                keepsake_backend::WriteMode::Replace,
            )
            .unwrap();
        store
            .backend()
            .write(
                &"vm/7/1970-01-01T00:03:20Z/client.log.blob".parse().unwrap(),
                b"log",
                keepsake_backend::WriteMode::Replace,
            )
            .unwrap();
        second.set_protected(true).unwrap();
        let removed = second
            .cleanup_unreferenced_files(&second.load_manifest().unwrap())
            .unwrap();
        assert_eq!(removed, ["stray.tmp_fidx"]);
        assert!(second.is_protected().unwrap());
        second.set_protected(false).unwrap();

        // Busy locks are reported with the holder, and change nothing.
        let held = second.lock_shared().unwrap();
        match second.destroy() {
            Err(Error::Locked { what, source, .. }) => {
                assert_eq!(what, "snapshot");
                assert!(
                    source.holders().iter().any(|h| h.pid == std::process::id()),
                    "{source}"
                );
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        assert!(second.exists().unwrap());
        drop(held);

        first.destroy().unwrap();
        assert!(!first.exists().unwrap());
        assert!(matches!(first.destroy(), Err(Error::NotFound { .. })));
        second.destroy().unwrap();
        // The last snapshot's destroy takes the empty group with it.
        assert!(!store.group(&n, &group("vm/7")).exists().unwrap());
        common::assert_cache_matches_bucket(&ts);
    }
}

#[test]
fn aborted_and_unfinished_backups() {
    for ts in common::all("aborted_and_unfinished_backups") {
        let store = &ts.store;
        let n = BackupNamespace::root();
        let g = store.group(&n, &group("host/web"));
        {
            let mut w = g.start_backup(&root(), t(500)).unwrap();
            w.add_blob("a.blob", b"x", Encryption::None).unwrap();
            // Dropped without finish: the snapshot goes.
        }
        assert_eq!(g.list_backups().unwrap().len(), 0);
        let w = g.start_backup(&root(), t(600)).unwrap();
        assert!(matches!(w.finish(), Err(Error::InvalidArgument(_))));
        // A second backup of the same group waits for nobody: the group lock is busy.
        let running = g.start_backup(&root(), t(700)).unwrap();
        assert!(matches!(
            g.start_backup(&root(), t(800)),
            Err(Error::Locked { what: "group", .. })
        ));
        assert!(matches!(g.set_notes("x"), Err(Error::Locked { .. })));
        drop(running);
        let mut w = g.start_backup(&root(), t(900)).unwrap();
        assert!(matches!(
            w.add_blob("../x.blob", b"x", Encryption::None),
            Err(Error::Encode { .. })
        ));
        assert!(matches!(
            w.add_blob("x.txt", b"x", Encryption::None),
            Err(Error::Encode { .. })
        ));
        assert!(matches!(
            w.add_blob("x.blob", b"x", Encryption::StoreKey),
            Err(Error::InvalidArgument(_))
        ));
        w.add_blob("x.blob", b"x", Encryption::None).unwrap();
        assert!(matches!(
            w.add_blob("x.blob", b"y", Encryption::None),
            Err(Error::AlreadyExists { .. })
        ));
        w.finish().unwrap();
        common::assert_cache_matches_bucket(&ts);
    }
}

#[test]
fn create_refuses_a_non_empty_folder_and_open_checks_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("s/vm")).unwrap();
    let err = DataStore::builder("store1", dir.path().join("s"))
        .lock_root(dir.path().join("locks"))
        .create()
        .unwrap_err();
    assert!(matches!(err, Error::NotEmpty { .. }), "{err}");
    let err = DataStore::builder("store1", dir.path().join("s"))
        .lock_root(dir.path().join("locks"))
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::NotADatastore { .. }), "{err}");
    std::fs::create_dir_all(dir.path().join("t/.zfs")).unwrap();
    std::fs::create_dir_all(dir.path().join("t/lost+found")).unwrap();
    let store = DataStore::builder("store1", dir.path().join("t"))
        .lock_root(dir.path().join("locks"))
        .chunk_prefix_dirs(false)
        .create()
        .unwrap();
    assert!(dir.path().join("t/.lock").is_file());
    assert!(dir.path().join("t/.chunks").is_dir());
    drop(store);
    for (name, lock) in [("x/y", true), ("ab", true), ("store1", false)] {
        let mut b = DataStore::builder(name, dir.path().join("t"));
        if lock {
            b = b.lock_root(dir.path().join("locks"));
        }
        assert!(
            matches!(b.open(), Err(Error::Invalid(_) | Error::InvalidArgument(_))),
            "{name}"
        );
    }
}

#[test]
fn a_real_chunk_store_has_every_prefix_folder() {
    let dir = tempfile::tempdir().unwrap();
    DataStore::builder("store1", dir.path().join("s"))
        .lock_root(dir.path().join("locks"))
        .sync_level(keepsake_backend::SyncLevel::None)
        .create()
        .unwrap();
    let count = std::fs::read_dir(dir.path().join("s/.chunks"))
        .unwrap()
        .count();
    assert_eq!(count, 65_536);
    assert!(dir.path().join("s/.chunks/0000").is_dir());
    assert!(dir.path().join("s/.chunks/ffff").is_dir());
}

#[test]
fn open_of_a_missing_folder_fails_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-store");
    let result = DataStore::builder("store1", &missing)
        .lock_root(dir.path().join("locks"))
        .open();
    let error = result.expect_err("a missing folder is not a datastore");
    assert!(
        error.to_string().contains("no-such-store")
            || format!("{error:?}").contains("no-such-store"),
        "the error names the folder: {error:?}"
    );
    assert!(!missing.exists(), "open created the folder");
}
