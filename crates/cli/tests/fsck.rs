//! `keepsake fsck [--repair]` on demo datastores: findings reported with exit code 1 and nothing
//! changed; `--repair` mends what it mends and never removes a snapshot, a manifest or a
//! protection marker; the `--json` document; lock files; usage errors.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Run, Store, keepsake};
use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace, BackupTime};
use keepsake_lock::{FileLocker, LockTarget, Locker};

fn demo_store() -> Store {
    Store::demo()
}

/// Stdout of a run that exited with `code` (one `error:` line on stderr when 1), as JSON.
#[track_caller]
fn json_with_code(run: &Run, code: i32) -> serde_json::Value {
    if code == 0 {
        return run.json();
    }
    let line = run.fails(code);
    assert!(line.contains("remain"), "{line}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run:#?}"))
}

fn strings(doc: &serde_json::Value, key: &str) -> Vec<String> {
    doc[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is not an array: {doc}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    common::tree_contents(dir)
        .into_iter()
        .filter(|(_, bytes)| bytes.is_some())
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn fsck_reports_then_repairs_and_never_removes_snapshots() {
    let store = demo_store();
    // A fresh demo store is clean (its unfinished snapshot is not reported without an age).
    let doc = store.run(&["--json", "fsck"]).json();
    assert_eq!(doc["clean"], true, "{doc}");
    assert_eq!(doc["remaining"], 0);
    assert!(store.run(&["fsck"]).ok().contains("clean"));

    // Plant what crashes and other tools leave.
    let temp = "vm/100/2024-06-02T02:00:00Z/.index.json.blob.tmp_abc";
    std::fs::write(store.path.join(temp), b"half a manifest").unwrap();
    let group_temp = "ct/200/.notes.tmp_1f";
    std::fs::write(store.path.join(group_temp), b"half").unwrap();
    std::fs::create_dir(store.path.join("vm/555")).unwrap();
    std::fs::write(store.path.join("vm/555/owner"), b"root@pam\n").unwrap();
    std::fs::remove_file(store.path.join("host/web/owner")).unwrap();
    let old = "ct/200/2023-01-01T00:00:00Z";
    std::fs::create_dir(store.path.join(old)).unwrap();
    std::fs::write(store.path.join(old).join("root.pxar.didx"), b"partial").unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let recent = format!("ct/200/{}", BackupTime::from_epoch(now - 3600).unwrap());
    std::fs::create_dir(store.path.join(&recent)).unwrap();

    // Without --repair: every finding reported, exit code 1, nothing changed.
    let before = store.contents();
    let locks_before = common::tree_contents(&store.lock_root);
    let run = store.run(&["fsck", "--unfinished-older-than", "7d"]);
    run.fails(1);
    for needle in [
        format!("temp file       {temp}"),
        format!("temp file       {group_temp}"),
        "empty group     vm/555".to_owned(),
        "no owner        host/web (report only)".to_owned(),
        format!("old unfinished  {old} (report only)"),
        "old unfinished  vm/100/2024-06-07T02:00:00Z (report only)".to_owned(),
        "7 remaining".to_owned(),
    ] {
        assert!(
            run.stdout.contains(&needle),
            "{needle:?} missing in\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains(&recent), "{}", run.stdout);
    assert_eq!(store.contents(), before);

    let doc = json_with_code(
        &store.run(&["--json", "fsck", "--unfinished-older-than", "7d"]),
        1,
    );
    for key in [
        "temp-files",
        "temp-files-in-use",
        "unused-lock-files",
        "empty-groups",
        "groups-without-owner",
        "old-unfinished-snapshots",
        "interrupted",
        "cache-differences",
        "repaired",
        "errors",
    ] {
        assert!(doc[key].is_array(), "`{key}` in {doc}");
    }
    let mut temps = strings(&doc, "temp-files");
    temps.sort();
    assert_eq!(temps, [group_temp, temp]);
    assert_eq!(strings(&doc, "empty-groups"), ["vm/555"]);
    assert_eq!(strings(&doc, "groups-without-owner"), ["host/web"]);
    let mut unfinished = strings(&doc, "old-unfinished-snapshots");
    unfinished.sort();
    assert_eq!(
        unfinished,
        [
            old,
            "ns/prod/ns/site-a/host/gateway/2024-06-07T02:00:00Z",
            "vm/100/2024-06-07T02:00:00Z"
        ]
    );
    assert_eq!(doc["cache-checked"], false);
    assert_eq!(doc["clean"], false);
    assert_eq!(doc["repair"], false);
    assert_eq!(doc["remaining"], 7);
    assert!(strings(&doc, "repaired").is_empty());
    assert_eq!(store.contents(), before);
    assert_eq!(common::tree_contents(&store.lock_root), locks_before);

    // --repair: temp files and the empty group go; the rest is still reported (exit code 1).
    let doc = json_with_code(
        &store.run(&[
            "--json",
            "fsck",
            "--repair",
            "--unfinished-older-than",
            "2w",
        ]),
        1,
    );
    assert_eq!(doc["repair"], true);
    let repaired = strings(&doc, "repaired");
    for needle in [
        format!("removed temporary file {temp}"),
        format!("removed temporary file {group_temp}"),
        "removed empty group vm/555".to_owned(),
    ] {
        assert!(repaired.contains(&needle), "{needle:?} not in {repaired:?}");
    }
    assert_eq!(strings(&doc, "groups-without-owner"), ["host/web"]);
    assert_eq!(doc["remaining"], 4, "{doc}");
    assert!(strings(&doc, "errors").is_empty());
    // Exactly the planted leftovers went: every snapshot folder, manifest, blob and `.protected`
    // marker (and the unfinished snapshots) is still there, byte for byte.
    let mut expected = before.clone();
    for gone in [temp, group_temp, "vm/555/owner", "vm/555"] {
        assert!(expected.remove(Path::new(gone)).is_some(), "{gone}");
    }
    assert_eq!(store.contents(), expected);
    assert!(
        store
            .path
            .join("vm/100/2024-06-01T02:00:00Z/.protected")
            .is_file()
    );

    // What remains is reported again; once it is dealt with by hand, fsck is clean.
    let run = store.run(&["fsck", "--repair"]);
    run.fails(1);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("no owner ") && l.ends_with(" host/web (report only)")),
        "{}",
        run.stdout
    );
    store.run(&["owner", "host/web", "root@pam"]).ok();
    let text = store.run(&["fsck"]).ok().to_owned();
    assert!(text.ends_with(": clean\n"), "{text}");
    json_with_code(
        &store.run(&["--json", "fsck", "--unfinished-older-than", "7d"]),
        1,
    );
}

#[test]
fn fsck_lists_unused_lock_files_and_repair_removes_only_free_ones() {
    let store = demo_store();
    let locks = store.lock_root.join("demo");
    let before = files_below(&locks);
    assert!(!before.is_empty(), "the demo took locks");
    // Unused lock files are listed, but are no reason for exit code 1.
    let doc = store.run(&["--json", "fsck"]).json();
    assert_eq!(strings(&doc, "unused-lock-files").len(), before.len());
    assert_eq!(doc["clean"], true);
    assert_eq!(files_below(&locks), before);

    // A held lock stays; every other lock file goes.
    let locker = FileLocker::new(&store.lock_root, "demo").unwrap();
    let ns = BackupNamespace::root();
    let group: BackupGroup = "vm/100".parse().unwrap();
    let guard = locker
        .lock_exclusive(&LockTarget::group(&ns, &group), Duration::ZERO)
        .unwrap();
    let held = locker.lock_path(&LockTarget::group(&ns, &group));
    let text = store.run(&["fsck", "--repair"]).ok().to_owned();
    assert!(text.contains("unused lock files"), "{text}");
    assert_eq!(
        files_below(&locks),
        [held.strip_prefix(&locks).unwrap().to_path_buf()]
    );
    drop(guard);
}

#[test]
fn fsck_repair_leaves_temp_files_of_a_snapshot_in_use() {
    let store = demo_store();
    let temp = "vm/100/2024-06-03T02:00:00Z/.index.json.blob.tmp_9";
    std::fs::write(store.path.join(temp), b"being written").unwrap();
    let locker = FileLocker::new(&store.lock_root, "demo").unwrap();
    let dir: BackupDir = "vm/100/2024-06-03T02:00:00Z".parse().unwrap();
    let ns = BackupNamespace::root();
    let guard = locker
        .lock_exclusive(&LockTarget::snapshot(&ns, &dir), Duration::ZERO)
        .unwrap();
    let run = store.run(&["--json", "fsck", "--repair"]);
    let doc = json_with_code(&run, 1);
    assert_eq!(strings(&doc, "temp-files-in-use"), [temp]);
    assert!(store.path.join(temp).is_file());
    drop(guard);
    let doc = store.run(&["--json", "fsck", "--repair"]).json();
    assert_eq!(strings(&doc, "temp-files"), [temp]);
    assert_eq!(doc["clean"], true);
    assert!(!store.path.join(temp).exists());
}

#[test]
fn fsck_usage_errors_exit_with_2_and_change_nothing() {
    let store = demo_store();
    let before = store.contents();
    for bad in ["7x", "soon", "7d ago", ""] {
        let run = store.run(&["fsck", "--repair", "--unfinished-older-than", bad]);
        let line = run.fails(2).to_owned();
        assert!(line.contains("--unfinished-older-than"), "{line}");
    }
    store
        .run(&["--json", "fsck", "--unfinished-older-than", "-1d"])
        .fails_json(2);
    let line = store.run(&["--ns", "prod", "fsck"]).fails(2).to_owned();
    assert!(line.contains("--ns"), "{line}");
    assert_eq!(store.contents(), before);
    let help = common::run(keepsake().args(["fsck", "--help"]))
        .ok()
        .to_owned();
    assert!(
        help.contains("keepsake --store /tmp/demo fsck --repair"),
        "{help}"
    );
}
