//! The command line itself (help, usage errors) and the commands that make datastores (init,
//! demo), then prune applied to a demo store, by running the binary.

mod common;

use std::time::Duration;

use common::{Store, keepsake, snapshot_names};
use keepsake_hierarchy::{BackupDir, BackupNamespace};
use keepsake_lock::{FileLocker, LockTarget, Locker};

/// The command names listed under "Commands:" in `help`.
fn commands_in_help(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_command_has_help_with_an_example() {
    let top = common::run(keepsake().arg("--help"));
    let top_help = top.ok().to_owned();
    assert!(top_help.contains("Examples:"), "{top_help}");
    let commands = commands_in_help(&top_help);
    assert!(commands.len() >= 15, "{commands:?}");
    let mut checked = 0;
    for command in &commands {
        let help = common::run(keepsake().args([command, "--help"]))
            .ok()
            .to_owned();
        assert!(
            help.contains("Example"),
            "`{command} --help` has no example:\n{help}"
        );
        assert!(help.contains("keepsake "), "{command}");
        checked += 1;
        for sub in commands_in_help(&help) {
            let help = common::run(keepsake().args([command, &sub, "--help"]))
                .ok()
                .to_owned();
            assert!(
                help.contains("Example"),
                "`{command} {sub} --help`:\n{help}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 18, "{checked}");
}

#[test]
fn usage_errors_are_one_line_with_exit_code_2() {
    for args in [
        &["groups", "--bogus"][..],
        &["owner"],
        &["--json", "show"],
        &["prune", "vm/100", "--keep-last", "x"],
        &["ns", "create"],
    ] {
        let run = common::run(keepsake().args(args));
        let line = run.fails(2).to_owned();
        assert!(!line.contains("Usage:"), "{line}");
        if args.contains(&"--json") {
            run.fails_json(2);
        } else {
            assert!(run.stdout.is_empty(), "{run:?}");
        }
    }
    let run = common::run(keepsake().arg("--version"));
    assert!(run.ok().starts_with("keepsake "), "{run:?}");
}

#[test]
fn init_creates_a_datastore_with_its_chunk_folders() {
    let store = Store::empty("store2");
    let doc = store
        .run(&["--json", "--sync-level", "none", "init"])
        .json();
    assert_eq!(doc["store"], "store2");
    assert!(doc["s3-bucket"].is_null());
    let chunks = store.path.join(".chunks");
    assert!(chunks.join("0000").is_dir() && chunks.join("ffff").is_dir());
    assert_eq!(std::fs::read_dir(&chunks).unwrap().count(), 65_536);
    assert!(store.path.join(".lock").is_file());
    // It opens, and is empty.
    assert_eq!(
        store.run(&["--json", "groups"]).json(),
        serde_json::json!([])
    );

    // Not twice: an existing datastore is refused and left alone.
    store.run(&["ns", "create", "a"]).ok();
    let before = store.contents();
    let line = store
        .run(&["init", "--skip-chunk-dirs"])
        .fails(6)
        .to_owned();
    assert!(line.contains("is already a datastore"), "{line}");
    assert_eq!(store.contents(), before);
}

#[test]
fn init_without_chunk_folders_and_with_an_explicit_name() {
    let store = Store::empty("x");
    // `x` is too short for a datastore name: a usage error, nothing made.
    let line = store
        .run(&["init", "--skip-chunk-dirs"])
        .fails(2)
        .to_owned();
    assert!(line.contains("--name"), "{line}");
    assert!(!store.path.exists());
    let doc = store
        .run(&["--json", "--name", "store3", "init", "--skip-chunk-dirs"])
        .json();
    assert_eq!(doc["store"], "store3");
    assert_eq!(
        std::fs::read_dir(store.path.join(".chunks"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn demo_makes_a_sample_datastore_and_prints_its_tree() {
    let store = Store::empty("demo");
    let mut cmd = keepsake();
    cmd.arg("--lock-root")
        .arg(&store.lock_root)
        .arg("demo")
        .arg(&store.path);
    let text = common::run(&mut cmd).ok().to_owned();
    for needle in [
        "demo datastore `demo`",
        "vm/100  owner root@pam  7 snapshots",
        "2024-06-01T02:00:00Z  finished  protected",
        "2024-06-07T02:00:00Z  unfinished",
        "ct/200  owner backup@pbs!nightly",
        "ns dev  (empty)",
        "ns prod/site-a",
        "keepsake --store",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
    // Real blobs, indexes and chunks that keepsake reads back.
    let doc = store
        .run(&["--json", "show", "vm/100/2024-06-02T02:00:00Z"])
        .json();
    assert_eq!(doc["verify-state"]["state"], "ok");
    assert_eq!(doc["files"][1]["filename"], "drive-scsi0.img.fidx");
    assert_eq!(doc["files"][1]["size"], 4 * 65_536);
    let chunk_files = common::tree_contents(&store.path.join(".chunks"))
        .values()
        .filter(|v| v.is_some())
        .count();
    assert!(chunk_files > 10, "{chunk_files} chunks");
    let doc = store.run(&["--json", "groups", "--recursive"]).json();
    assert_eq!(doc.as_array().unwrap().len(), 6);

    // A second demo into the same folder is refused and changes nothing.
    let before = store.contents();
    let run = common::run(&mut cmd);
    assert!(run.fails(6).contains("not empty"), "{run:?}");
    assert_eq!(store.contents(), before);
}

fn demo_store() -> Store {
    Store::demo()
}

#[test]
fn prune_removes_what_it_marks_and_keeps_protected_and_partial() {
    let store = demo_store();
    let doc = store
        .run(&["--json", "prune", "vm/100", "--keep-last", "2"])
        .json();
    let removed: Vec<&str> = doc
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mark"] == "remove")
        .map(|l| {
            assert_eq!(l["action"], "removed", "{l}");
            l["snapshot"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        removed,
        [
            "vm/100/2024-06-04T02:00:00Z",
            "vm/100/2024-06-03T02:00:00Z",
            "vm/100/2024-06-02T02:00:00Z"
        ]
    );
    let names = snapshot_names(&store.run(&["--json", "snapshots", "vm/100"]).json());
    assert_eq!(
        names,
        [
            "vm/100/2024-06-01T02:00:00Z",
            "vm/100/2024-06-05T02:00:00Z",
            "vm/100/2024-06-06T02:00:00Z",
            "vm/100/2024-06-07T02:00:00Z"
        ]
    );

    // Recursive over every namespace with a filter; the text output lists each snapshot.
    let text = store
        .run(&[
            "prune",
            "--recursive",
            "--filter",
            "type:ct",
            "--keep-last",
            "1",
        ])
        .ok()
        .to_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with("ct/200/2024-06-03T02:00:00Z ") && l.contains(" remove ")),
        "{text}"
    );
    assert!(
        text.contains("ns/prod/ns/site-a/ct/300/2024-06-06T02:00:00Z  keep"),
        "{text}"
    );
    let names = snapshot_names(&store.run(&["--json", "snapshots", "ct/200"]).json());
    assert_eq!(names, ["ct/200/2024-06-06T02:00:00Z"]);
}

#[test]
fn prune_reports_a_snapshot_it_could_not_remove() {
    let store = demo_store();
    let locker = FileLocker::new(&store.lock_root, "demo").unwrap();
    let ns = BackupNamespace::root();
    let dir: BackupDir = "host/web/2024-06-05T02:00:00Z".parse().unwrap();
    let _guard = locker
        .lock_exclusive(&LockTarget::snapshot(&ns, &dir), Duration::ZERO)
        .unwrap();
    let run = store.run(&["--json", "prune", "host/web", "--keep-last", "1"]);
    let line = run.fails(1).to_owned();
    assert!(
        line.contains("host/web/2024-06-05T02:00:00Z") && line.contains("locked"),
        "{line}"
    );
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc[1]["action"], "failed");
    assert!(doc[1]["error"].as_str().unwrap().contains("locked"));
    assert!(store.path.join("host/web/2024-06-05T02:00:00Z").is_dir());
}

#[test]
fn demo_refuses_a_conflicting_store_option() {
    let store = Store::empty("demo");
    let other = store.path.with_file_name("other");
    let mut cmd = keepsake();
    cmd.arg("--store").arg(&other).arg("demo").arg(&store.path);
    let run = common::run(&mut cmd);
    assert!(run.fails(2).contains("--store"), "{run:?}");
    assert!(!store.path.exists() && !other.exists());
}
