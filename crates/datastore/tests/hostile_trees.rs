//! Hostile datastore trees on the local filesystem: symbolic links planted at every level
//! (namespace folder, type folder, group, snapshot, archive file, owner, notes, manifest) pointing
//! to a folder of canary files outside the datastore; entries whose names are not valid PBS names
//! (`..` forms, newlines, invalid UTF-8, over-long); a lock root that cannot be created; a
//! read-only datastore.
//!
//! keepsake must refuse or skip with an error naming the place, never return canary contents (the
//! canaries are valid owner, notes and manifest files, so reading one would be visible), and never
//! delete or change anything outside the datastore, through every whole-store operation: listing,
//! verify, destroy, prune, namespace removal and moves.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use jiff::tz::TimeZone;
use keepsake_backend::SyncLevel;
use keepsake_datastore::prune::KeepOptions;
use keepsake_datastore::{
    DataStore, Error, PruneScope, SnapshotOutcome, VerifyOptions, VerifyScope,
};
use keepsake_datastore::{Encryption, ExistingOwner, GroupsInside, Merge, PruneRun};
use keepsake_hierarchy::{Authid, BackupDir, BackupGroup, BackupNamespace, BackupTime};

const CANARY_OWNER: &str = "canary@pbs";
const CANARY_NOTES: &str = "CANARY NOTES: read from outside the datastore";

fn group(s: &str) -> BackupGroup {
    s.parse().unwrap()
}

fn time(epoch: i64) -> BackupTime {
    BackupTime::from_epoch(epoch).unwrap()
}

fn builder(dir: &Path) -> keepsake_datastore::DataStoreBuilder {
    DataStore::builder("hostile", dir.join("store"))
        .lock_root(dir.join("locks"))
        .sync_level(SyncLevel::None)
        .chunk_prefix_dirs(false)
}

/// Every file below `dir` with its bytes (symbolic links as their target), to compare before and
/// after.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ty = e.file_type().unwrap();
            if ty.is_dir() {
                out.insert(e.path(), b"<dir>".to_vec());
                stack.push(e.path());
            } else if ty.is_symlink() {
                let target = std::fs::read_link(e.path()).unwrap();
                out.insert(e.path(), target.as_os_str().as_bytes().to_vec());
            } else {
                out.insert(e.path(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Makes a finished snapshot with one blob, returning it.
fn backup(store: &DataStore, ns: &BackupNamespace, g: &str, epoch: i64) -> BackupDir {
    let owner: Authid = "root@pam".parse().unwrap();
    let mut w = store
        .group(ns, &group(g))
        .start_backup(&owner, time(epoch))
        .unwrap();
    w.add_blob(
        "conf.blob",
        format!("{g} {epoch}\n").as_bytes(),
        Encryption::None,
    )
    .unwrap();
    w.finish().unwrap().dir().clone()
}

/// The outside folder: canary owner and notes files, and complete canary group, snapshot and
/// namespace trees (valid as far as PBS's layout goes), all copied from a scratch store.
fn plant_outside(dir: &Path) -> PathBuf {
    let scratch = tempfile::tempdir().unwrap();
    let store = builder(scratch.path()).create().unwrap();
    let root = BackupNamespace::root();
    let d = backup(&store, &root, "vm/666", 1_600_000_000);
    let g = store.group(&root, &group("vm/666"));
    g.set_owner(&CANARY_OWNER.parse().unwrap(), ExistingOwner::Replace)
        .unwrap();
    g.set_notes(CANARY_NOTES).unwrap();
    let src = scratch.path().join("store");
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let copy_tree = |from: &Path, to: &Path| {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
    };
    // A type folder (`vm`), a group (`vm/666`), a snapshot, files, and a namespace folder.
    copy_tree(&src.join("vm"), &outside.join("typefolder"));
    copy_tree(&src.join("vm/666"), &outside.join("group"));
    copy_tree(
        &src.join("vm/666").join(d.time().to_string()),
        &outside.join("snapshot"),
    );
    std::fs::create_dir_all(outside.join("namespace")).unwrap();
    copy_tree(&src.join("vm"), &outside.join("namespace/vm"));
    std::fs::write(outside.join("owner"), format!("{CANARY_OWNER}\n")).unwrap();
    std::fs::write(outside.join("notes"), CANARY_NOTES).unwrap();
    outside
}

#[test]
fn symlinks_at_every_level_are_refused_or_skipped_and_nothing_outside_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = plant_outside(tmp.path());
    let store = builder(tmp.path()).create().unwrap();
    let root = BackupNamespace::root();
    let st = tmp.path().join("store");
    store.create_namespace(&"a".parse().unwrap()).unwrap();

    // Real groups whose parts are replaced by links.
    let real = backup(&store, &root, "vm/100", 1_700_000_000);
    let linked_file = backup(&store, &root, "vm/101", 1_700_000_000);
    let linked_manifest = backup(&store, &root, "vm/102", 1_700_000_000);
    backup(&store, &root, "vm/103", 1_700_000_000);
    backup(&store, &root, "vm/104", 1_700_000_000);
    let at = |g: &str, d: &BackupDir| st.join(g).join(d.time().to_string());

    // The archive file: the canary has the very bytes the manifest lists, so only a refusal to
    // follow the link makes verify fail.
    let conf = at("vm/101", &linked_file).join("conf.blob");
    std::fs::copy(&conf, outside.join("conf.blob")).unwrap();
    std::fs::remove_file(&conf).unwrap();
    symlink(outside.join("conf.blob"), &conf).unwrap();
    // The manifest: a canary that is this snapshot's own manifest.
    let manifest = at("vm/102", &linked_manifest).join("index.json.blob");
    std::fs::copy(&manifest, outside.join("index.json.blob")).unwrap();
    std::fs::remove_file(&manifest).unwrap();
    symlink(outside.join("index.json.blob"), &manifest).unwrap();
    // Owner and notes of groups.
    std::fs::remove_file(st.join("vm/103/owner")).unwrap();
    symlink(outside.join("owner"), st.join("vm/103/owner")).unwrap();
    symlink(outside.join("notes"), st.join("vm/104/notes")).unwrap();
    // A snapshot folder, a group folder, a type folder, a namespace folder.
    let linked_snapshot = BackupDir::new(group("vm/100"), time(1_700_100_000));
    symlink(
        outside.join("snapshot"),
        st.join("vm/100").join(linked_snapshot.time().to_string()),
    )
    .unwrap();
    symlink(outside.join("group"), st.join("vm/666")).unwrap();
    symlink(outside.join("typefolder"), st.join("ct")).unwrap();
    symlink(outside.join("namespace"), st.join("ns/evil")).unwrap();
    // A link at the namespace level inside a namespace, and the `ns` folder of a namespace.
    symlink(outside.join("namespace"), st.join("ns/a/ns")).unwrap();

    let before = tree(&outside);

    // What keepsake says for each planted link (the figures in docs/RELIABILITY.md).
    let show = |case: &str, r: keepsake_datastore::Result<String>| match r {
        Ok(v) => eprintln!("hostile: {case}: returned {v:?}"),
        Err(e) => eprintln!(
            "hostile: {case}: {e}: {:?}",
            std::error::Error::source(&e).map(ToString::to_string)
        ),
    };
    show(
        "owner -> outside",
        store
            .group(&root, &group("vm/103"))
            .owner()
            .map(|o| o.to_string()),
    );
    show(
        "notes -> outside",
        store
            .group(&root, &group("vm/104"))
            .notes()
            .map(|n| format!("{n:?}")),
    );
    show(
        "manifest -> outside",
        store
            .snapshot(&root, &linked_manifest)
            .load_manifest()
            .map(|_| "manifest".into()),
    );
    show(
        "archive -> outside",
        store
            .snapshot(&root, &linked_file)
            .read_file("conf.blob")
            .map(|b| format!("{} bytes", b.len())),
    );
    show(
        "snapshot folder -> outside",
        store
            .snapshot(&root, &linked_snapshot)
            .load_manifest()
            .map(|_| "manifest".into()),
    );
    show(
        "group folder -> outside",
        store
            .group(&root, &group("vm/666"))
            .owner()
            .map(|o| o.to_string()),
    );
    show(
        "type folder -> outside",
        store
            .group(&root, &group("ct/666"))
            .owner()
            .map(|o| o.to_string()),
    );
    show(
        "namespace folder -> outside",
        store
            .iter_groups(&"evil".parse().unwrap())
            .map(|g| format!("{} groups", g.count())),
    );

    // Reads: every linked thing is refused with an error, never returned.
    let g = |name: &str| store.group(&root, &group(name));
    match g("vm/103").owner() {
        Ok(owner) => panic!("owner read through a symlink: {owner}"),
        Err(e) => assert!(e.to_string().contains("vm/103"), "{e}"),
    }
    match g("vm/104").notes() {
        Ok(Some(notes)) => assert_ne!(notes, CANARY_NOTES, "notes read through a symlink"),
        Ok(None) => {}
        Err(e) => assert!(e.to_string().contains("vm/104"), "{e}"),
    }
    assert!(
        store
            .snapshot(&root, &linked_manifest)
            .load_manifest()
            .is_err(),
        "manifest read through a symlink"
    );
    assert!(
        store
            .snapshot(&root, &linked_file)
            .read_file("conf.blob")
            .is_err(),
        "archive read through a symlink"
    );
    assert!(
        g("vm/666").owner().is_err(),
        "owner of a linked group folder read"
    );
    assert!(
        store.group(&root, &group("ct/666")).owner().is_err(),
        "owner read through a linked type folder"
    );
    let evil: BackupNamespace = "evil".parse().unwrap();
    let evil_groups: Vec<_> = match store.iter_groups(&evil) {
        Ok(it) => it.filter_map(Result::ok).collect(),
        Err(_) => Vec::new(),
    };
    assert!(
        evil_groups.is_empty(),
        "groups listed through a linked namespace"
    );

    // Listings skip links (or report them as errors), never descend into them.
    let mut listed = Vec::new();
    for n in store.iter_namespaces_recursive(&root, None).unwrap() {
        let Ok(n) = n else { continue };
        let Ok(groups) = store.iter_groups(&n) else {
            continue;
        };
        for gr in groups.flatten() {
            for info in gr.list_backups().into_iter().flatten() {
                listed.push(format!("{n}/{}", info.snapshot));
            }
        }
    }
    assert!(
        listed
            .iter()
            .all(|s| !s.contains("666") && !s.contains("evil")),
        "listed through links: {listed:?}"
    );
    assert!(
        !listed.contains(&format!("/{linked_snapshot}"))
            && !listed.contains(&linked_snapshot.to_string()),
        "linked snapshot listed: {listed:?}"
    );

    // Verify over the whole store: runs to its end; the linked file and manifest are problems.
    let report = store
        .verify(&VerifyScope::Store, &VerifyOptions::default())
        .unwrap();
    let by_path: BTreeMap<String, SnapshotOutcome> = report
        .snapshots
        .iter()
        .map(|s| (s.relative_path(), s.outcome))
        .collect();
    assert_eq!(
        by_path.get(&real.relative_path(&root)),
        Some(&SnapshotOutcome::Ok)
    );
    assert_ne!(
        by_path.get(&linked_file.relative_path(&root)),
        Some(&SnapshotOutcome::Ok),
        "an archive behind a symlink verified: {report:#?}"
    );
    assert_ne!(
        by_path.get(&linked_manifest.relative_path(&root)),
        Some(&SnapshotOutcome::Ok),
        "a manifest behind a symlink verified: {report:#?}"
    );

    // Destructive operations over everything: none may touch the outside.
    let _ = store.snapshot(&root, &linked_snapshot).destroy();
    let _ = store.snapshot(&root, &linked_file).destroy();
    let _ = store.snapshot(&root, &linked_manifest).destroy();
    for name in ["vm/666", "ct/666", "vm/103", "vm/104"] {
        let _ = g(name).destroy();
    }
    let _ = store.remove_namespace(&evil, GroupsInside::Destroy);
    let policy: KeepOptions = "keep-last=1".parse().unwrap();
    let _ = store.prune_namespace(
        &root,
        &PruneScope::recursive(),
        &policy,
        &TimeZone::UTC,
        PruneRun::Remove,
    );
    let a: BackupNamespace = "a".parse().unwrap();
    let _ = g("vm/100").move_to(&a, Merge::IntoExisting);
    let _ = store.move_namespace(&a, &"b".parse().unwrap(), Merge::Never);
    let _ = store.remove_namespace(&"b".parse().unwrap(), GroupsInside::Destroy);
    let _ = store.verify(&VerifyScope::Store, &VerifyOptions::default());
    let _ = DataStore::builder("hostile", &st)
        .lock_root(tmp.path().join("locks"))
        .open();

    assert_eq!(tree(&outside), before, "the outside folder changed");
}

/// Folders whose names are no PBS names: listings skip them (or yield an error), operations over
/// the whole store leave them alone, nothing panics.
#[test]
fn invalid_names_on_disk_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let store = builder(tmp.path()).create().unwrap();
    let root = BackupNamespace::root();
    let st = tmp.path().join("store");
    backup(&store, &root, "vm/100", 1_700_000_000);
    // (A 255-byte name is the longest a file system takes, and a valid PBS id: over-long names
    // are checked through the API below.)
    let weird: Vec<PathBuf> = vec![
        st.join("vm/..."),
        st.join("vm/..100"),
        st.join("vm/bad\nname"),
        st.join("vm").join(OsStr::from_bytes(b"\xff\xfe")),
        st.join("vm/100/2024-01-01T00:00:00Z\n"),
        st.join("vm/100")
            .join(OsStr::from_bytes(b"2024-01-01T00:00:00Z\xff")),
        st.join("ns/..."),
        st.join("ns/line\nbreak"),
        st.join("ns").join(OsStr::from_bytes(b"\x80")),
        st.join("..."),
    ];
    for w in &weird {
        std::fs::create_dir_all(w).unwrap();
        std::fs::write(w.join("owner"), "root@pam\n").unwrap();
    }

    let mut listed = Vec::new();
    for n in store.iter_namespaces_recursive(&root, None).unwrap() {
        let Ok(n) = n else { continue };
        listed.push(n.to_string());
        for gr in store.iter_groups(&n).unwrap().flatten() {
            listed.push(gr.relative_path());
            for info in gr.list_backups().into_iter().flatten() {
                listed.push(info.snapshot.to_string());
            }
        }
    }
    assert_eq!(
        listed,
        vec![
            String::new(),
            "vm/100".to_owned(),
            "vm/100/2023-11-14T22:13:20Z".to_owned()
        ],
        "invalid names were listed"
    );
    let report = store
        .verify(&VerifyScope::Store, &VerifyOptions::default())
        .unwrap();
    assert_eq!(report.snapshots.len(), 1, "{report:#?}");
    let policy: KeepOptions = "keep-last=1".parse().unwrap();
    store
        .prune_namespace(
            &root,
            &PruneScope::recursive(),
            &policy,
            &TimeZone::UTC,
            PruneRun::Remove,
        )
        .unwrap();
    let _ = store.group(&root, &group("vm/100")).destroy();
    for w in &weird {
        assert!(w.join("owner").exists(), "{} was removed", w.display());
    }

    // The same names through the API: refused when parsed, before any path is built.
    for bad in [
        "vm/..",
        "vm/../x",
        "../vm/1",
        "vm/a\nb",
        "vm/a\0b",
        "vm/a/b",
        "vm/",
        &format!("vm/{}", "x".repeat(4096)),
    ] {
        assert!(bad.parse::<BackupGroup>().is_err(), "group {bad:?} parsed");
    }
    for bad in [
        "..",
        "a/../b",
        "a/./b",
        "a\nb",
        "a\0b",
        "/a",
        &"n".repeat(4096),
    ] {
        assert!(
            bad.parse::<BackupNamespace>().is_err(),
            "namespace {bad:?} parsed"
        );
    }
    for bad in [
        "2024-01-01T00:00:00Z\n",
        "../2024-01-01T00:00:00Z",
        &"9".repeat(4096),
    ] {
        assert!(
            format!("vm/100/{bad}").parse::<BackupDir>().is_err(),
            "snapshot {bad:?} parsed"
        );
    }
}

/// A lock root that cannot be made: operations that lock fail with an error naming the lock,
/// nothing is changed, and reads still work.
#[test]
fn unwritable_lock_root_refuses_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = builder(tmp.path()).create().unwrap();
    let root = BackupNamespace::root();
    let d = backup(&store, &root, "vm/100", 1_700_000_000);
    // A regular file where the lock root's parent should be: not writable, even for root.
    std::fs::write(tmp.path().join("blocker"), b"").unwrap();
    let locked_out = DataStore::builder("hostile", tmp.path().join("store"))
        .lock_root(tmp.path().join("blocker/locks"))
        .sync_level(SyncLevel::None)
        .open();
    // Opening takes no lock and changes nothing.
    let locked_out = locked_out.unwrap();
    let snapshot = locked_out.snapshot(&root, &d);
    let err = snapshot.set_protected(true).unwrap_err();
    assert!(matches!(err, Error::LockFailed { .. }), "{err:?}");
    assert!(format!("{err:?}").contains("blocker"), "{err:?}");
    let err = snapshot.destroy().unwrap_err();
    assert!(matches!(err, Error::LockFailed { .. }), "{err:?}");
    let err = locked_out
        .group(&root, &group("vm/100"))
        .start_backup(&"root@pam".parse().unwrap(), time(1_800_000_000))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, Error::LockFailed { .. }), "{err:?}");
    let err = snapshot.set_notes(Some("x")).unwrap_err();
    assert!(matches!(err, Error::LockFailed { .. }), "{err:?}");
    // Nothing changed; reads work.
    assert!(snapshot.exists().unwrap());
    assert!(!snapshot.is_protected().unwrap());
    assert_eq!(snapshot.notes().unwrap(), None);
    assert_eq!(
        locked_out
            .group(&root, &group("vm/100"))
            .list_backups()
            .unwrap()
            .len(),
        1
    );
}

/// A read-only datastore (mode bits; skipped as root, where they do not bind): writes fail with
/// an error naming the place, nothing is changed, reads and verify work.
#[test]
fn read_only_datastore_refuses_writes() {
    if rustix::process::geteuid().is_root() {
        eprintln!(
            "read_only_datastore_refuses_writes: skipped: running as root, chmod does not bind"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = builder(tmp.path()).create().unwrap();
    let root = BackupNamespace::root();
    let d = backup(&store, &root, "vm/100", 1_700_000_000);
    let st = tmp.path().join("store");
    let chmod = |mode: &str| {
        let status = std::process::Command::new("chmod")
            .args(["-R", mode])
            .arg(&st)
            .status()
            .unwrap();
        assert!(status.success());
    };
    chmod("a-w");
    let before = tree(&st);
    let snapshot = store.snapshot(&root, &d);
    let results = [
        snapshot.set_protected(true).map(|_| ()),
        snapshot.set_notes(Some("x")).map(|_| ()),
        snapshot.destroy().map(|_| ()),
        store.group(&root, &group("vm/100")).set_notes("x"),
        store
            .group(&root, &group("vm/100"))
            .start_backup(&"root@pam".parse().unwrap(), time(1_800_000_000))
            .map(|_| ()),
        store.create_namespace(&"x".parse().unwrap()).map(|_| ()),
    ];
    let after = tree(&st);
    chmod("u+w");
    for r in results {
        let e = r.expect_err("a write to a read-only datastore succeeded");
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(before, after, "a read-only datastore changed");
    let report = store
        .verify(&VerifyScope::Store, &VerifyOptions::default())
        .unwrap();
    assert_eq!(report.snapshots.len(), 1);
}

/// A store opened `Access::ReadOnly` (what `keepsake` does for read-only commands and in PBS's
/// read-only maintenance mode): protection is neither set nor cleared, even through the local
/// backend's in-place markers, and a snapshot destroyed meanwhile gets no marker that would bring
/// its folder back.
#[test]
fn protection_markers_respect_read_only_access_and_missing_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let store = builder(tmp.path()).create().unwrap();
    let root = BackupNamespace::root();
    let d = backup(&store, &root, "vm/100", 1_700_000_000);
    let st = tmp.path().join("store");
    let marker = st.join(d.relative_path(&root)).join(".protected");
    let read_only = builder(tmp.path())
        .access(keepsake_datastore::Access::ReadOnly)
        .open()
        .unwrap();
    let err = read_only
        .snapshot(&root, &d)
        .set_protected(true)
        .unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err:?}");
    assert!(!marker.exists());
    store.snapshot(&root, &d).set_protected(true).unwrap();
    assert!(marker.is_file());
    let err = read_only
        .snapshot(&root, &d)
        .set_protected(false)
        .unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err:?}");
    assert!(marker.is_file());

    // Gone meanwhile: NotFound, and no folder made for the marker.
    let gone = BackupDir::new(group("vm/100"), time(1_600_000_000));
    for protected in [true, false] {
        let err = store
            .snapshot(&root, &gone)
            .set_protected(protected)
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    }
    assert!(!st.join(gone.relative_path(&root)).exists());
}
