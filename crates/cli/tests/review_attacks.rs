//! A hostile review of the "fail closed" work (issues 15 and 16), through the real binary.
//!
//! Tests marked `FOUND (fixed)` demonstrated a weakness and failed on the code they were written
//! against (an adversarial review); they pass since the fix, and stay as regression tests;
//! tests marked `HOLDS` are attacks the code withstood, kept as regression tests.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Store;
use keepsake_hierarchy::{BackupDir, BackupNamespace};
use keepsake_lock::{FileLocker, LockTarget, Locker};

const CT200: [&str; 4] = [
    "ct/200/2024-06-03T02:00:00Z",
    "ct/200/2024-06-04T02:00:00Z",
    "ct/200/2024-06-05T02:00:00Z",
    "ct/200/2024-06-06T02:00:00Z",
];
const INTENT_ID: &str = "0000000000000000000000aa-00000001-00";

/// Writes an intent file into the store's journal, as an interrupted (or hand-edited) operation
/// left it. Returns its path.
fn plant_intent(store: &Store, text: &str) -> PathBuf {
    let dir = store.path.join(".keepsake/intents");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{INTENT_ID}.intent"));
    std::fs::write(&file, text).unwrap();
    file
}

/// Copies a snapshot folder (files only) to a new place, as PBS's next backup or a sync would.
fn copy_snapshot(store: &Store, from: &str, to: &str) {
    let (src, dst) = (store.path.join(from), store.path.join(to));
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
}

fn fsck_doc(store: &Store, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["--json", "fsck"];
    all.extend_from_slice(args);
    let run = store.run(&all);
    let doc = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("fsck printed no JSON ({e}): {run:?}"));
    (run.code, doc)
}

fn run_in(dir: &Path, store: &Path, lock_root: &Path, args: &[&str]) -> common::Run {
    let mut cmd = common::keepsake();
    cmd.current_dir(dir)
        .arg("--store")
        .arg(store)
        .arg("--lock-root")
        .arg(lock_root)
        .args(args);
    common::run(&mut cmd)
}

// FOUND (fixed): fsck (without --repair) calls a store "clean" and exits 0 while the journal holds an
// intent it cannot read (truncated, or of format 1): `FsckReport::interrupted` comes from
// `journal_intents`, which skips unreadable files (verify, by contrast, reports them).
#[test]
fn fsck_is_not_clean_while_an_unreadable_intent_waits() {
    let store = Store::demo();
    plant_intent(
        &store,
        &format!(
            "keepsake-intent 2\nop destroy-group\nns /\ngroup ct/200\nsnapshot {}\n",
            CT200[0]
        ),
    );
    let (code, doc) = fsck_doc(&store, &[]);
    assert_ne!(code, 0, "a truncated intent waits in the journal: {doc:#}");
    assert_eq!(doc["clean"], false, "{doc:#}");
}

// FOUND (fixed): once a write command has set an unreadable (or format-1) intent aside as
// `<id>.intent.bad`, nothing ever mentions it again: fsck says "clean", read-only commands do not
// warn, verify is ok. The interrupted operation it described is silently forgotten.
#[test]
fn a_set_aside_intent_is_still_reported_afterwards() {
    let store = Store::demo();
    let intent = plant_intent(
        &store,
        "keepsake-intent 1\nop destroy-group\nns /\ngroup ct/200\nend\n",
    );
    // Any write command sets it aside (with one warning line, on that run only).
    let run = store.run(&["protect", "vm/100/2024-06-02T02:00:00Z"]);
    run.ok();
    assert!(run.stderr.contains("unreadable"), "{run:?}");
    assert!(intent.with_extension("intent.bad").is_file());
    for snapshot in CT200 {
        assert!(
            store.path.join(snapshot).is_dir(),
            "format 1 never completed"
        );
    }
    // Later runs: the operator must still be told that an operation was left unfinished.
    let (code, doc) = fsck_doc(&store, &[]);
    let groups = store.run(&["groups"]);
    assert!(
        code != 0 || groups.stderr.contains("intent"),
        "nothing reports {}: fsck {doc:#}, groups {groups:?}",
        intent.with_extension("intent.bad").display()
    );
}

// FOUND (fixed) (misleading message): a read-only command warns that "a write command or `keepsake fsck
// --repair` completes" an intent that can never be completed (format 1, or truncated): the write
// command only sets it aside.
#[test]
fn the_warning_never_promises_to_complete_an_unreadable_intent() {
    let store = Store::demo();
    plant_intent(
        &store,
        "keepsake-intent 1\nop destroy-group\nns /\ngroup ct/200\nend\n",
    );
    let run = store.run(&["groups"]);
    run.ok();
    assert!(run.stderr.contains("unreadable"), "{run:?}");
    assert!(
        !run.stderr.contains("completes it"),
        "promises a completion that never comes: {}",
        run.stderr
    );
}

// FOUND (fixed) (misleading): fsck without --repair lists an operation that is still running (its
// intent lock is held) as "interrupted", exits 1 and suggests --repair, which then leaves it
// alone and reports "clean". Read-only commands rightly stay silent about it.
#[test]
fn fsck_never_calls_a_running_operation_interrupted() {
    let store = Store::demo();
    let intent = plant_intent(
        &store,
        &format!(
            "keepsake-intent 2\nop destroy-group\nns /\ngroup ct/200\nsnapshot {}\nend\n",
            CT200[0]
        ),
    );
    let _running = keepsake_lock::LockFile::new(intent.with_extension("lock"))
        .lock_exclusive(Duration::ZERO)
        .unwrap();
    let groups = store.run(&["groups"]);
    groups.ok();
    assert!(!groups.stderr.contains("interrupted"), "{groups:?}");
    let (code, doc) = fsck_doc(&store, &[]);
    assert_eq!(
        doc["interrupted"].as_array().map(Vec::len),
        Some(0),
        "a running operation is not interrupted: {doc:#}"
    );
    assert_eq!(code, 0, "{doc:#}");
}

// FOUND (fixed): recovery of a group move announced *without* `--merge` merges into a target group that
// appeared after the crash (`resume_group_move` plans with merge = true). The live command refuses
// exactly this (`move host/web --to-ns dev` says the target exists): recovery carries out a merge
// the operator never asked for, and the source group is gone.
#[test]
fn recovery_of_a_move_without_merge_never_merges() {
    let store = Store::demo();
    // Killed after announcing, before the rename (the intent is all that happened).
    plant_intent(
        &store,
        "keepsake-intent 2\nop move-group\nfrom /\nto dev\ngroup host/web\nmerge no\n\
         snapshot host/web/2024-06-05T02:00:00Z\nsnapshot host/web/2024-06-06T02:00:00Z\nend\n",
    );
    // Meanwhile dev/host/web came to exist (same owner, an older snapshot).
    copy_snapshot(
        &store,
        "host/web/2024-06-05T02:00:00Z",
        "ns/dev/host/web/2024-06-01T02:00:00Z",
    );
    std::fs::copy(
        store.path.join("host/web/owner"),
        store.path.join("ns/dev/host/web/owner"),
    )
    .unwrap();
    store.run(&["protect", CT200[0]]).ok();
    let target = std::fs::read_dir(store.path.join("ns/dev/host/web"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
        .count();
    assert_eq!(
        target, 1,
        "dev/host/web received snapshots of a move without --merge"
    );
    assert!(
        store.path.join("host/web/2024-06-06T02:00:00Z").is_dir(),
        "the source group was merged away"
    );
}

// FOUND (fixed): the same for a namespace move announced without `--merge`: its recovery merges the
// announced groups into target groups that appeared since (`resume_namespace_move` plans every
// group with merge = true).
#[test]
fn recovery_of_a_namespace_move_without_merge_never_merges_groups() {
    let store = Store::demo();
    store.run(&["ns", "create", "stage"]).ok();
    plant_intent(
        &store,
        "keepsake-intent 2\nop move-namespace\nfrom prod\nto stage\nmerge no\nnamespace prod\n\
         group ns/prod/vm/101\nsnapshot ns/prod/vm/101/2024-06-04T02:00:00Z\n\
         snapshot ns/prod/vm/101/2024-06-06T02:00:00Z\nend\n",
    );
    copy_snapshot(
        &store,
        "ns/prod/vm/101/2024-06-04T02:00:00Z",
        "ns/stage/vm/101/2024-06-01T02:00:00Z",
    );
    std::fs::copy(
        store.path.join("ns/prod/vm/101/owner"),
        store.path.join("ns/stage/vm/101/owner"),
    )
    .unwrap();
    store.run(&["protect", CT200[0]]).ok();
    assert!(
        !store
            .path
            .join("ns/stage/vm/101/2024-06-04T02:00:00Z")
            .exists(),
        "stage/vm/101 received snapshots of a namespace move without --merge"
    );
}

// FOUND (fixed): an intent that names one snapshot twice (hand-edited, or a damaged copy) can never be
// recovered: recovery locks the snapshot a second time and fails against itself ("is locked ...
// held by pid <this keepsake>"). It stays pending forever, and every move and group or namespace
// destroy of the datastore is refused with RecoveryPending until an operator deletes the file.
#[test]
fn an_intent_naming_a_snapshot_twice_does_not_block_the_datastore() {
    let store = Store::demo();
    plant_intent(
        &store,
        &format!(
            "keepsake-intent 2\nop destroy-group\nns /\ngroup ct/200\nsnapshot {0}\nsnapshot {0}\nend\n",
            CT200[0]
        ),
    );
    let run = store.run(&["move", "host/web", "--to-ns", "dev"]);
    assert_eq!(run.code, 0, "an unrelated move is refused: {run:?}");
}

// FOUND (fixed) (wrong success; with PBS's garbage collection, data loss): a PBS 4 S3 datastore
// (`backend type=s3,…` in datastore.cfg) is opened through `--datastore` or `--store` as a plain
// local datastore: `protect` and `forget` change only PBS's local cache and report success. The
// bucket never sees them (PBS's next s3-refresh undoes the protection; a snapshot missing from the
// cache is not marked by PBS's GC, whose sweep then deletes its chunks from the bucket). Only
// caches that keepsake itself claimed are refused (Error::S3Cache).
#[test]
fn a_pbs_s3_datastore_is_never_changed_through_its_cache() {
    let store = Store::demo();
    let host = tempfile::tempdir().unwrap();
    let (etc, run_dir) = (host.path().join("etc"), host.path().join("run"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(run_dir.join("locks")).unwrap();
    std::fs::write(
        etc.join("datastore.cfg"),
        format!(
            "datastore: s3store\n\tpath {}\n\tbackend type=s3,client=c1,bucket=b1\n",
            store.path.display()
        ),
    )
    .unwrap();
    let before = store.contents();
    let pbs = |args: &[&str]| {
        let mut cmd = common::keepsake();
        cmd.arg("--pbs-config-dir")
            .arg(&etc)
            .arg("--pbs-run-dir")
            .arg(&run_dir)
            .args(args);
        common::run(&mut cmd)
    };
    let protect = pbs(&["--datastore", "s3store", "protect", CT200[1]]);
    let forget = pbs(&["--store", store.path.to_str().unwrap(), "forget", CT200[0]]);
    assert_ne!(
        protect.code, 0,
        "protect changed the S3 cache only: {protect:?}"
    );
    assert_ne!(
        forget.code, 0,
        "forget changed the S3 cache only: {forget:?}"
    );
    assert_eq!(store.contents(), before);
}

// FOUND (fixed) (wrong success, minor): `forget GROUP` whose group folder cannot go (a stray or
// temporary file in it; on S3 a snapshot only the bucket knows) exits 0 and prints "forgot
// ct/200: removed 4 snapshots" although the group is still listed. Nothing in the text says the
// group stays, and the JSON has no error.
#[test]
fn forget_of_a_group_that_stays_is_not_a_success() {
    let store = Store::demo();
    // A temporary file of an owner or notes write (under the group lock the destroy holds: its
    // writer is gone) goes with the group.
    std::fs::write(store.path.join("ct/200/owner.tmp_Ab12Cd"), b"torn").unwrap();
    store.run(&["forget", "ct/200"]).ok();
    assert!(!store.path.join("ct/200").exists());
    // A stray file keeps the group: that is not a success, and the error says why.
    std::fs::write(store.path.join("host/web/README"), b"mine").unwrap();
    let run = store.run(&["--json", "forget", "host/web"]);
    let groups = store.run(&["--json", "groups"]).json();
    let still_there = groups
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["backup-type"] == "host" && g["backup-id"] == "web");
    assert!(still_there, "the group stays: {groups:#}");
    assert_ne!(run.code, 0, "forget reported success: {run:?}");
    assert!(run.stderr.contains("host/web/README"), "{run:?}");
}

// FOUND (fixed) (misleading message): a namespace removal that keeps a namespace for any reason other
// than a protected snapshot (here a stray file) says "0 protected snapshots kept (with their
// namespaces); unprotect them first".
#[test]
fn ns_remove_names_the_real_reason_a_namespace_stays() {
    let store = Store::demo();
    std::fs::write(store.path.join("ns/prod/ns/site-a/README"), b"hi").unwrap();
    let run = store.run(&["ns", "remove", "prod/site-a", "--delete-groups"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        !run.stderr.contains("0 protected snapshots"),
        "blames protected snapshots that do not exist: {}",
        run.stderr
    );
}

// HOLDS: a lock root reached through a symbolic link into the store, or a relative lock root
// that resolves to the store's parent, is refused before anything is swept.
#[test]
fn fsck_repair_refuses_lock_roots_that_reach_the_store_indirectly() {
    let store = Store::demo();
    let before = store.contents();
    let parent = store.path.parent().unwrap().to_path_buf();
    let link = parent.join("locks-link");
    std::os::unix::fs::symlink(&store.path, &link).unwrap();
    let link_to_parent = parent.join("up-link");
    std::os::unix::fs::symlink(&parent, &link_to_parent).unwrap();
    for (cwd, lock_root) in [
        (parent.clone(), link.clone()),
        (parent.clone(), link_to_parent.clone()),
        (store.path.clone(), PathBuf::from("..")),
        (store.path.join("vm"), PathBuf::from("../..")),
        (parent.clone(), PathBuf::from(".")),
    ] {
        let run = run_in(&cwd, &store.path, &lock_root, &["fsck", "--repair"]);
        assert_ne!(run.code, 0, "{cwd:?} {lock_root:?}: {run:?}");
        assert!(run.stderr.contains("lock root"), "{run:?}");
        assert_eq!(store.contents(), before, "{lock_root:?} changed the store");
    }
}

// HOLDS: a store given by a relative path through a symbolic link shares its lock folder with the
// real path (the name comes from the resolved folder): a snapshot held through one is refused
// through the other.
#[test]
fn a_relative_symlinked_store_path_keeps_lock_exclusion() {
    let store = Store::demo();
    let parent = store.path.parent().unwrap().to_path_buf();
    std::fs::create_dir(parent.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(&store.path, parent.join("elsewhere/other-name")).unwrap();
    let locker = FileLocker::new(&store.lock_root, "demo").unwrap();
    let dir: BackupDir = CT200[0].parse().unwrap();
    let _held = locker
        .lock_shared(
            &LockTarget::snapshot(&BackupNamespace::root(), &dir),
            Duration::ZERO,
        )
        .unwrap();
    let run = run_in(
        &parent.join("elsewhere"),
        Path::new("other-name"),
        &store.lock_root,
        &["forget", CT200[0]],
    );
    assert!(run.fails(4).contains("locked"), "{run:?}");
    assert!(store.path.join(CT200[0]).is_dir());
}

// HOLDS: a hand-edited destroy intent only ever removes announced snapshots of its own group:
// a snapshot line of another group, and a protected snapshot, stay; a line that climbs out of the
// datastore makes the whole intent unreadable (set aside, nothing removed).
#[test]
fn hand_edited_destroy_intents_stay_inside_what_they_name() {
    let store = Store::demo();
    plant_intent(
        &store,
        "keepsake-intent 2\nop destroy-group\nns /\ngroup vm/100\n\
         snapshot vm/100/2024-06-01T02:00:00Z\nsnapshot ct/200/2024-06-03T02:00:00Z\n\
         snapshot vm/100/2024-06-02T02:00:00Z\nend\n",
    );
    store
        .run(&["protect", "host/web/2024-06-05T02:00:00Z"])
        .ok();
    assert!(
        store
            .path
            .join("vm/100/2024-06-01T02:00:00Z/.protected")
            .is_file()
    );
    assert!(
        store.path.join(CT200[0]).is_dir(),
        "another group's snapshot"
    );
    assert!(!store.path.join("vm/100/2024-06-02T02:00:00Z").exists());
    assert!(store.path.join("vm/100/2024-06-03T02:00:00Z").is_dir());

    let before = store.contents();
    plant_intent(
        &store,
        "keepsake-intent 2\nop destroy-namespace\nns prod\nnamespace prod\n\
         group ns/../vm/100\nsnapshot ns/prod/vm/101/2024-06-04T02:00:00Z\nend\n",
    );
    let run = store.run(&["protect", "host/web/2024-06-06T02:00:00Z"]);
    run.ok();
    assert!(run.stderr.contains("unreadable"), "{run:?}");
    let after = store.contents();
    let removed: Vec<_> = before
        .keys()
        .filter(|k| !after.contains_key(*k) && !k.starts_with(".keepsake"))
        .collect();
    assert!(removed.is_empty(), "removed {removed:?}");
}

// HOLDS: two write commands started together over the same interrupted destroy: it is completed
// exactly once (announced snapshots gone, the others kept), no second intent appears, and both
// commands do their own work.
#[test]
fn two_recoveries_at_once_complete_an_intent_once() {
    let store = Store::demo();
    plant_intent(
        &store,
        &format!(
            "keepsake-intent 2\nop destroy-group\nns /\ngroup ct/200\nsnapshot {}\nsnapshot {}\nend\n",
            CT200[0], CT200[1]
        ),
    );
    let spawn = |snapshot: &str| {
        store
            .cmd(&["protect", snapshot])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (
        spawn("vm/100/2024-06-02T02:00:00Z"),
        spawn("vm/100/2024-06-03T02:00:00Z"),
    );
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    // A later write command finishes whatever one of them found in progress.
    store
        .run(&["protect", "host/web/2024-06-05T02:00:00Z"])
        .ok();
    assert!(!store.path.join(CT200[0]).exists());
    assert!(!store.path.join(CT200[1]).exists());
    assert!(store.path.join(CT200[2]).is_dir());
    assert!(store.path.join(CT200[3]).is_dir());
    assert!(store.intents().is_empty(), "{:?}", store.intents());
    for s in ["vm/100/2024-06-02T02:00:00Z", "vm/100/2024-06-03T02:00:00Z"] {
        assert!(store.path.join(s).join(".protected").is_file(), "{s}");
    }
}

// HOLDS: an operation that is still running (its intent lock held) is never completed or rolled
// back by a write command, whatever it announced.
#[test]
fn a_running_operation_is_left_alone_by_write_commands() {
    let store = Store::demo();
    let intent = plant_intent(
        &store,
        &format!(
            "keepsake-intent 2\nop destroy-group\nns /\ngroup ct/200\nsnapshot {}\nend\n",
            CT200[0]
        ),
    );
    let running = keepsake_lock::LockFile::new(intent.with_extension("lock"))
        .lock_exclusive(Duration::ZERO)
        .unwrap();
    store.run(&["protect", "vm/100/2024-06-02T02:00:00Z"]).ok();
    store.run(&["fsck", "--repair"]);
    assert!(store.path.join(CT200[0]).is_dir());
    assert!(intent.is_file());
    drop(running);
}

// HOLDS: PBS's datastore.cfg naming the store through a symbolic link still gives the store its
// PBS name (and so PBS's lock folder) when keepsake is given the real path.
#[test]
fn a_pbs_path_through_a_symlink_still_names_the_store() {
    let store = Store::demo();
    let host = tempfile::tempdir().unwrap();
    let (etc, run_dir) = (host.path().join("etc"), host.path().join("run"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(run_dir.join("locks")).unwrap();
    let link = host.path().join("datastore-link");
    std::os::unix::fs::symlink(&store.path, &link).unwrap();
    std::fs::write(
        etc.join("datastore.cfg"),
        format!("datastore: backups-b\n\tpath {}\n", link.display()),
    )
    .unwrap();
    let locker = FileLocker::new(run_dir.join("locks"), "backups-b").unwrap();
    let dir: BackupDir = CT200[0].parse().unwrap();
    let _held = locker
        .lock_shared(
            &LockTarget::snapshot(&BackupNamespace::root(), &dir),
            Duration::ZERO,
        )
        .unwrap();
    let mut cmd = common::keepsake();
    cmd.arg("--pbs-config-dir")
        .arg(&etc)
        .arg("--pbs-run-dir")
        .arg(&run_dir)
        .arg("--store")
        .arg(&store.path)
        .args(["forget", CT200[0]]);
    let run = common::run(&mut cmd);
    assert!(run.fails(4).contains("locked"), "{run:?}");
    assert!(store.path.join(CT200[0]).is_dir());
}

// FOUND (fixed) (files outside the datastore deleted; hostile tree): the journal folder is used through
// symbolic links. With `.keepsake/intents` a link to another folder, every write command's
// recovery removes the `*.lock` and `*.intent.tmp` files it finds there (`remove_orphans`), and
// moves write their intents there. A user who can write into the datastore (PBS's `backup`) can
// so make a keepsake run as root delete lock files anywhere. (`.keepsake` itself as a link is
// refused; the hostile-tree promise "no path ever escapes the datastore" does not cover the
// journal.)
#[test]
fn the_journal_never_follows_a_symbolic_link_out_of_the_store() {
    let store = Store::demo();
    let outside = store.path.with_file_name("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("app.lock"), b"someone else's").unwrap();
    std::fs::write(outside.join("draft.intent.tmp"), b"someone else's").unwrap();
    std::fs::create_dir_all(store.path.join(".keepsake")).unwrap();
    std::os::unix::fs::symlink(&outside, store.path.join(".keepsake/intents")).unwrap();
    store.run(&["protect", CT200[1]]);
    store.run(&["move", "host/web", "--to-ns", "dev"]);
    assert!(
        outside.join("app.lock").is_file(),
        "deleted outside the store"
    );
    assert!(
        outside.join("draft.intent.tmp").is_file(),
        "deleted outside the store"
    );
}

// FOUND (fixed) (lock exclusion lost, data loss under a PBS holder): on a PBS host, a `--lock-root`
// (or a KEEPSAKE_LOCK_ROOT left in the environment) other than PBS's is taken without a word for
// a datastore PBS knows: keepsake then locks in a folder PBS never looks at, and `forget` removes
// a snapshot a PBS reader or backup holds. (An unknown store beside PBS gets a warning; a known
// one with a foreign lock root gets none.)
#[test]
fn a_foreign_lock_root_never_bypasses_pbs_locks() {
    let store = Store::demo();
    let host = tempfile::tempdir().unwrap();
    let (etc, run_dir) = (host.path().join("etc"), host.path().join("run"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(run_dir.join("locks")).unwrap();
    std::fs::write(
        etc.join("datastore.cfg"),
        format!("datastore: backups-a\n\tpath {}\n", store.path.display()),
    )
    .unwrap();
    // A PBS reader holds the snapshot.
    let pbs = FileLocker::new(run_dir.join("locks"), "backups-a").unwrap();
    let dir: BackupDir = CT200[0].parse().unwrap();
    let _reader = pbs
        .lock_shared(
            &LockTarget::snapshot(&BackupNamespace::root(), &dir),
            Duration::ZERO,
        )
        .unwrap();
    let mut cmd = common::keepsake();
    cmd.env("KEEPSAKE_LOCK_ROOT", host.path().join("my-test-locks"))
        .arg("--pbs-config-dir")
        .arg(&etc)
        .arg("--pbs-run-dir")
        .arg(&run_dir)
        .args(["--datastore", "backups-a", "forget", CT200[0]]);
    let run = common::run(&mut cmd);
    assert!(
        store.path.join(CT200[0]).is_dir(),
        "forgot a snapshot PBS holds: {run:?}"
    );
}

/// FOUND (fixed): a hostile sparse manifest of a terabyte (free to make) aborted `show`, and
/// the whole `snapshots` listing with it, for want of memory: the read allocated the size the
/// file claimed. Now a manifest larger than PBS's largest blob is refused by its size before
/// it is read (`invalid`, exit 7), the listing shows the other snapshots, and a sparse owner
/// file is refused the same way.
#[test]
fn a_huge_sparse_manifest_or_owner_is_refused_not_an_abort() {
    let store = Store::demo();
    let snap = CT200[1];
    let manifest = store.path.join(snap).join("index.json.blob");
    std::fs::File::options()
        .write(true)
        .open(&manifest)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let run = store.run(&["show", snap]);
    assert_eq!(run.code, 7, "{run:?}");
    assert!(
        run.stderr
            .contains("index.json.blob` is too large to read whole"),
        "{run:?}"
    );
    // PBS's largest blob (an encrypted header and 128 MiB) is the bound, not the backend's
    // general one.
    assert!(run.stderr.contains("at most 134217772 allowed"), "{run:?}");
    let run = store.run(&["--json", "snapshots", "ct/200"]);
    assert!(run.code == 0 || run.code == 1, "{run:?}");
    assert!(
        run.stdout.contains(CT200[0].split('/').nth(2).unwrap()),
        "{run:?}"
    );
    let verify = store.run(&["--json", "verify", "ct/200"]);
    assert_eq!(verify.code, 1, "{verify:?}");

    let owner = store.path.join("ct/200/owner");
    std::fs::File::options()
        .write(true)
        .open(&owner)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let run = store.run(&["owner", "ct/200"]);
    assert_eq!(run.code, 7, "{run:?}");
    assert!(run.stderr.contains("too large to read whole"), "{run:?}");
    let run = store.run(&["--json", "groups"]);
    assert!(run.code >= 0, "killed by a signal: {run:?}");
}
