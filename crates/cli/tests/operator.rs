//! What an operator meets first (issue 21): help that separates the command's options from the
//! global ones, suggestions for typos, errors that say what to do, namespaces named `/`, prune
//! summaries, selections, JSON errors with kinds and exit codes; through the real binary.

mod common;

use common::{Store, keepsake};

#[test]
fn global_options_have_their_own_heading() {
    let help = common::run(keepsake().args(["prune", "--help"]))
        .ok()
        .to_owned();
    let (own, global) = help
        .split_once("Global options:")
        .unwrap_or_else(|| panic!("no global heading:\n{help}"));
    assert!(own.contains("--keep-last"), "{help}");
    assert!(!own.contains("--s3-bucket"), "{help}");
    assert!(!own.contains("--store"), "{help}");
    let global = global.split("Examples:").next().unwrap_or_default();
    assert!(
        global.contains("--s3-bucket") && global.contains("--store"),
        "{help}"
    );
    assert!(!global.contains("--keep-last"), "{help}");
}

#[test]
fn typos_get_suggestions() {
    let store = Store::demo();
    let line = store.run(&["grups"]).fails(2).to_owned();
    assert!(line.contains("'groups'"), "{line}");
    let line = store.run(&["snapshot"]).fails(2).to_owned();
    assert!(line.contains("'snapshots'"), "{line}");
    let line = store.run(&["prune", "--keep-lst", "2"]).fails(2).to_owned();
    assert!(line.contains("'--keep-last'"), "{line}");
}

#[test]
fn names_of_the_wrong_kind_say_what_was_meant() {
    let store = Store::demo();
    let line = store.run(&["protect", "vm/100"]).fails(2).to_owned();
    assert!(
        line.contains("`vm/100` is a group; a snapshot is `vm/100/<time>`"),
        "{line}"
    );
    let line = store.run(&["snapshots", "vm/abc/xyz"]).fails(2).to_owned();
    assert!(
        line.contains("`vm/abc/xyz` is not a group: a group is `<type>/<id>`"),
        "{line}"
    );
    let line = store
        .run(&["snapshots", "vm/100/2024-06-02T02:00:00Z"])
        .fails(2)
        .to_owned();
    assert!(
        line.contains("is a snapshot; its group is `vm/100`"),
        "{line}"
    );
}

#[test]
fn keep_counts_below_one_are_refused() {
    let store = Store::demo();
    for bad in ["0", "-1"] {
        let line = store
            .run(&["prune", "--keep-last", bad, "--dry-run"])
            .fails(2)
            .to_owned();
        assert!(line.contains("must be at least 1"), "{line}");
        assert!(line.contains(&format!("not {bad}")), "{line}");
    }
    let line = store
        .run(&["prune", "--keep-daily", "x"])
        .fails(2)
        .to_owned();
    assert!(line.contains("not a whole number"), "{line}");
}

#[test]
fn a_move_onto_an_existing_group_advises_merge() {
    let store = Store::demo();
    store
        .run(&["move", "vm/100/2024-06-02T02:00:00Z", "--to-ns", "prod"])
        .ok();
    let before = store.contents();
    let line = store
        .run(&["move", "ns/prod/vm/100", "--to-ns", ""])
        .fails(6)
        .to_owned();
    assert!(
        line.contains("the target exists and merging was not requested; pass --merge"),
        "{line}"
    );
    assert_eq!(store.contents(), before);
}

#[test]
fn setting_the_owner_a_group_has_needs_no_force() {
    let store = Store::demo();
    assert_eq!(
        store.run(&["owner", "vm/100", "root@pam"]).ok(),
        "root@pam\n"
    );
    let line = store
        .run(&["owner", "vm/100", "backup@pbs"])
        .fails(6)
        .to_owned();
    assert!(line.contains("pass --force"), "{line}");
}

#[test]
fn store_paths_that_are_no_datastore_folder() {
    let store = Store::demo();
    let file = store.path.join("../a-file");
    std::fs::write(&file, b"x").unwrap();
    let mut cmd = keepsake();
    cmd.arg("--store").arg(&file).arg("groups");
    let run = common::run(&mut cmd);
    let line = run.fails(3);
    assert!(
        line.ends_with("a-file is not a folder: --store names the datastore folder"),
        "{line}"
    );
    let before = store.contents();
    let line = store.run(&["init"]).fails(6).to_owned();
    assert!(line.contains("is already a datastore"), "{line}");
    assert_eq!(store.contents(), before);
}

#[test]
fn namespaces_root_is_slash_and_ns_commands_work_below_ns() {
    let store = Store::demo();
    let listed = store.run(&["--ns", "/", "ns", "list"]).ok().to_owned();
    assert_eq!(listed.lines().next(), Some("/"), "{listed}");
    // `--ns` is the parent of what `ns create/remove/move` name.
    assert_eq!(
        store.run(&["--ns", "prod", "ns", "create", "h"]).ok(),
        "created namespace prod/h\n"
    );
    assert!(store.path.join("ns/prod/ns/h").is_dir());
    assert!(!store.path.join("ns/h").exists());
    store.run(&["--ns", "prod", "ns", "remove", "h"]).ok();
    assert!(!store.path.join("ns/prod/ns/h").exists());
    // `ns move` renames, and takes `--to-ns` as `move` does (`--to` stays as an alias).
    assert_eq!(
        store
            .run(&["--ns", "prod", "ns", "move", "site-a", "--rename", "site-b"])
            .ok(),
        "moved prod/site-a to prod/site-b: 2 snapshots\n"
    );
    let doc = store
        .run(&["--json", "ns", "move", "prod/site-b", "--to-ns", "/"])
        .json();
    assert_eq!(doc["to"], "site-b");
    store.run(&["ns", "move", "site-b", "--to", "dev"]).ok();
    assert!(store.path.join("ns/dev/ns/site-b").is_dir());
    let line = store.run(&["ns", "move", "dev/site-b"]).fails(2).to_owned();
    assert!(line.contains("--to-ns"), "{line}");
    // `move` takes `/` for the root, and its JSON names both namespaces.
    let doc = store
        .run(&["--json", "--ns", "prod", "move", "vm/101", "--to-ns", "/"])
        .json();
    assert_eq!(
        (doc["ns"].as_str(), doc["to-ns"].as_str()),
        (Some("prod"), Some(""))
    );
    assert_eq!(doc["to"], "vm/101");
}

#[test]
fn prune_prints_a_banner_a_summary_and_buckets_in_the_zone_asked() {
    let store = Store::demo();
    let before = store.contents();
    let text = store
        .run(&["prune", "vm/100", "--keep-last", "2", "--dry-run"])
        .ok()
        .to_owned();
    assert!(text.starts_with("DRY RUN: nothing is removed\n"), "{text}");
    assert!(
        text.ends_with("1 group, 7 snapshots: 4 kept (1 protected), 3 would be removed\n"),
        "{text}"
    );
    assert_eq!(store.contents(), before);
    // 02:00 UTC is the evening before in New York: the day labels are New York's.
    let text = store
        .run(&[
            "prune",
            "host/web",
            "--keep-daily",
            "1",
            "--timezone",
            "America/New_York",
            "--dry-run",
        ])
        .ok()
        .to_owned();
    assert!(text.contains("daily 2024-06-05 "), "{text}");
    let line = store
        .run(&["prune", "--keep-daily", "1", "--timezone", "Mars/Olympus"])
        .fails(2)
        .to_owned();
    assert!(
        line.contains("--timezone `Mars/Olympus` is no time zone"),
        "{line}"
    );
    let run = common::run(
        store
            .cmd(&["prune", "--keep-daily", "1", "--dry-run"])
            .env("TZ", "Nowhere/Foo"),
    );
    assert!(run.fails(2).contains("TZ `Nowhere/Foo` is no time zone"));
    assert_eq!(store.contents(), before);
}

#[test]
fn prune_max_depth_limits_recursion() {
    let store = Store::demo();
    let doc = store
        .run(&[
            "--json",
            "prune",
            "--recursive",
            "--max-depth",
            "1",
            "--keep-last",
            "1",
            "--dry-run",
        ])
        .json();
    let namespaces: std::collections::BTreeSet<&str> = doc
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ns"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces.into_iter().collect::<Vec<_>>(), ["", "prod"]);
    let line = store
        .run(&["prune", "--max-depth", "1", "--keep-last", "1"])
        .fails(2)
        .to_owned();
    assert!(line.contains("--recursive"), "{line}");
}

#[test]
fn forget_dry_run_names_what_it_would_remove() {
    let store = Store::demo();
    let before = store.contents();
    let text = store
        .run(&["forget", "vm/100", "--dry-run"])
        .ok()
        .to_owned();
    assert!(text.starts_with("DRY RUN: nothing is removed\n"), "{text}");
    assert!(
        text.contains("would keep vm/100/2024-06-01T02:00:00Z (protected)"),
        "{text}"
    );
    assert!(
        text.ends_with("forget vm/100: 6 snapshots would be removed, 1 protected kept\n"),
        "{text}"
    );
    let doc = store
        .run(&[
            "--json",
            "forget",
            "vm/100/2024-06-02T02:00:00Z",
            "--dry-run",
        ])
        .json();
    assert_eq!(doc["would-remove"][0], "vm/100/2024-06-02T02:00:00Z");
    assert_eq!(store.contents(), before);
}

#[test]
fn snapshots_recursive_and_by_age() {
    let store = Store::demo();
    let doc = store.run(&["--json", "snapshots", "--recursive"]).json();
    let count = doc.as_array().unwrap().len();
    assert_eq!(count, 17, "{doc:#}");
    let text = store.run(&["snapshots", "--recursive"]).ok().to_owned();
    assert!(
        text.contains("ns/prod/ns/site-a/ct/300/2024-06-06T02:00:00Z"),
        "{text}"
    );
    // The demo's backups are from June 2024: older than a day, none newer.
    let doc = store
        .run(&["--json", "snapshots", "--recursive", "--older-than", "1d"])
        .json();
    assert_eq!(doc.as_array().unwrap().len(), count);
    let doc = store
        .run(&["--json", "snapshots", "--newer-than", "1d"])
        .json();
    assert_eq!(doc.as_array().unwrap().len(), 0);
    let line = store
        .run(&["snapshots", "--older-than", "soon"])
        .fails(2)
        .to_owned();
    assert!(line.contains("not a duration"), "{line}");
}

#[test]
fn json_errors_carry_a_kind_and_a_message() {
    let store = Store::demo();
    let cases: [(&[&str], i32, &str); 5] = [
        (&["snapshots", "vm/999"], 3, "not-found"),
        (&["forget", "vm/100/2024-06-01T02:00:00Z"], 5, "protected"),
        (&["move", "vm/100", "--to-ns", "/"], 6, "refused"),
        (&["grups"], 2, "usage"),
        (&["prune", "--keep-last", "0"], 2, "usage"),
    ];
    for (args, code, kind) in cases {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let run = store.run(&all);
        let message = run.fails_json(code);
        let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(doc["error"]["kind"], kind, "{args:?}: {message}");
    }
}

#[test]
fn completions_for_the_usual_shells() {
    for (shell, marker) in [
        ("bash", "_keepsake()"),
        ("zsh", "#compdef keepsake"),
        ("fish", "complete -c keepsake"),
    ] {
        let script = common::run(keepsake().args(["completions", shell]))
            .ok()
            .to_owned();
        assert!(script.contains(marker), "{shell}");
        assert!(script.contains("snapshots"), "{shell}");
    }
    common::run(keepsake().args(["completions", "tcsh"])).fails(2);
}

#[test]
fn prune_reasons_name_every_rule_that_keeps() {
    let store = Store::demo();
    let args = [
        "prune",
        "vm/100",
        "--keep-last",
        "1",
        "--keep-daily",
        "2",
        "--keep-weekly",
        "2",
        "--dry-run",
    ];
    let text = store.run(&args).ok().to_owned();
    assert!(
        text.contains(
            "vm/100/2024-06-06T02:00:00Z  keep          last 1 of 1, daily 2024-06-06, weekly 2024-W23"
        ),
        "{text}"
    );
    assert!(
        text.contains("vm/100/2024-06-02T02:00:00Z  keep          weekly 2024-W22 "),
        "{text}"
    );
    let mut json = vec!["--json"];
    json.extend_from_slice(&args);
    let doc = store.run(&json).json();
    let newest = &doc[1];
    assert_eq!(newest["snapshot"], "vm/100/2024-06-06T02:00:00Z");
    assert_eq!(
        newest["reasons"],
        serde_json::json!(["last 1 of 1", "daily 2024-06-06", "weekly 2024-W23"])
    );
    assert_eq!(
        newest["reason"],
        "last 1 of 1, daily 2024-06-06, weekly 2024-W23"
    );
    assert_eq!(
        doc[4]["reasons"],
        serde_json::json!(["not selected by any option"])
    );
}

#[test]
fn latest_names_the_newest_finished_snapshot() {
    let store = Store::demo();
    // vm/100's newest snapshot (06-07) is unfinished: latest is the one before.
    let text = store.run(&["show", "vm/100/latest"]).ok().to_owned();
    assert!(
        text.starts_with("snapshot   vm/100/2024-06-06T02:00:00Z\n"),
        "{text}"
    );
    let doc = store
        .run(&["--json", "show", "ns/prod/vm/101/latest"])
        .json();
    assert_eq!(doc["snapshot"], "vm/101/2024-06-06T02:00:00Z");
    assert_eq!(doc["ns"], "prod");
    let doc = store.run(&["--json", "protect", "vm/100/latest"]).json();
    assert_eq!(doc["snapshot"], "vm/100/2024-06-06T02:00:00Z");
    assert_eq!(doc["protected"], true);
    std::fs::create_dir(store.path.join("vm/999")).unwrap();
    let run = store.run(&["--json", "show", "vm/999/latest"]);
    assert_eq!(
        run.fails_json(3),
        "snapshot `vm/999/latest` does not exist; group `vm/999` has no finished snapshot"
    );
    assert!(run.stdout.contains("\"not-found\""), "{run:?}");
    let line = store.run(&["show", "vm/998/latest"]).fails(3).to_owned();
    assert_eq!(line, "error: group `vm/998` does not exist");
    let line = store
        .run(&["snapshots", "vm/100/latest"])
        .fails(2)
        .to_owned();
    assert!(
        line.contains("`vm/100/latest` is a snapshot; its group is `vm/100`"),
        "{line}"
    );
}

#[test]
fn snapshots_show_verify_state_and_notes_and_files_as_pbs_does() {
    let store = Store::demo();
    let text = store.run(&["snapshots", "vm/100"]).ok().to_owned();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "snapshot                     finished  protected  verified  files  size       notes"
    );
    assert_eq!(
        lines.next().unwrap(),
        "vm/100/2024-06-01T02:00:00Z  yes       yes        -         3      256.1 KiB  first full backup"
    );
    let doc = store.run(&["--json", "snapshots", "vm/100"]).json();
    let first = &doc[0];
    assert_eq!(first["comment"], "first full backup");
    assert!(first["verify-state"].is_null());
    let file = &first["files"][1];
    assert_eq!(file["filename"], "drive-scsi0.img.fidx");
    assert_eq!(file["crypt-mode"], "none");
    assert_eq!(file["size"], 262_144);
    // show lists the same objects.
    let show = store
        .run(&["--json", "show", "vm/100/2024-06-01T02:00:00Z"])
        .json();
    assert_eq!(show["files"], first["files"]);
    let unfinished = &doc[6];
    assert_eq!(
        unfinished["files"][0]["crypt-mode"],
        serde_json::Value::Null
    );
}

#[test]
fn lock_wait_waits_for_a_busy_lock_then_fails_as_locked() {
    use keepsake_hierarchy::{BackupDir, BackupNamespace};
    use keepsake_lock::{FileLocker, LockTarget, Locker};
    use std::time::{Duration, Instant};

    let store = Store::demo();
    let snapshot = "vm/100/2024-06-03T02:00:00Z";
    let dir: BackupDir = snapshot.parse().unwrap();
    let locker = FileLocker::new(&store.lock_root, "demo").unwrap();
    let reader = locker
        .lock_shared(
            &LockTarget::snapshot(&BackupNamespace::root(), &dir),
            Duration::ZERO,
        )
        .unwrap();
    let start = Instant::now();
    let line = store
        .run(&["--lock-wait", "1", "forget", snapshot])
        .fails(4)
        .to_owned();
    assert!(start.elapsed() >= Duration::from_secs(1), "{line}");
    assert!(line.contains("is locked"), "{line}");
    assert!(store.path.join(snapshot).is_dir());
    // Released while the command waits: it goes ahead.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(reader);
    });
    store.run(&["--lock-wait", "30", "forget", snapshot]).ok();
    release.join().unwrap();
    assert!(!store.path.join(snapshot).exists());
    let line = store
        .run(&["--lock-wait", "soon", "groups"])
        .fails(2)
        .to_owned();
    assert!(line.contains("--lock-wait"), "{line}");
}

#[test]
fn colour_only_where_asked_and_never_with_no_color() {
    let store = Store::demo();
    let bold_header = "\u{1b}[1msnapshot\u{1b}[0m";
    // Tests run without a terminal: no colour.
    let plain = store.run(&["snapshots", "vm/100"]).ok().to_owned();
    assert!(!plain.contains('\u{1b}'), "{plain}");
    let forced = common::run(
        store
            .cmd(&["snapshots", "vm/100"])
            .env("CLICOLOR_FORCE", "1"),
    )
    .ok()
    .to_owned();
    assert!(forced.starts_with(bold_header), "{forced:?}");
    let run = common::run(
        store
            .cmd(&["verify", "ct/200/2024-06-03T02:00:00Z"])
            .env("CLICOLOR_FORCE", "1"),
    );
    assert!(
        run.ok()
            .starts_with("\u{1b}[32mok\u{1b}[0m          ct/200/2024-06-03T02:00:00Z\n"),
        "{run:?}"
    );
    for (key, value) in [("NO_COLOR", "1"), ("CLICOLOR", "0")] {
        let mut cmd = store.cmd(&["snapshots", "vm/100"]);
        if key == "NO_COLOR" {
            cmd.env("CLICOLOR_FORCE", "1");
        }
        let text = common::run(cmd.env(key, value)).ok().to_owned();
        assert_eq!(text, plain, "{key}={value}");
    }
    let doc = common::run(
        store
            .cmd(&["--json", "snapshots", "vm/100"])
            .env("CLICOLOR_FORCE", "1"),
    );
    assert!(!doc.ok().contains('\u{1b}'), "{doc:?}");
    let run = common::run(store.cmd(&["show", "vm/1"]).env("CLICOLOR_FORCE", "1"));
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .starts_with("\u{1b}[1m\u{1b}[31merror:\u{1b}[0m "),
        "{run:?}"
    );
}

#[test]
fn quiet_silences_success_lines_only() {
    let store = Store::demo();
    for args in [
        &["-q", "protect", "vm/100/2024-06-03T02:00:00Z"][..],
        &["-q", "ns", "create", "staging"],
        &["-q", "owner", "vm/100", "backup@pbs", "--force"],
        &["-q", "move", "host/web", "--to-ns", "staging"],
        &["-q", "forget", "ct/200/2024-06-03T02:00:00Z"],
    ] {
        let run = store.run(args);
        assert_eq!((run.ok(), run.stderr.as_str()), ("", ""), "{args:?}");
    }
    assert!(store.path.join("ns/staging/host/web").is_dir());
    // Asked-for output and JSON stay.
    assert_eq!(store.run(&["-q", "owner", "vm/100"]).ok(), "backup@pbs\n");
    let doc = store
        .run(&["-q", "--json", "unprotect", "vm/100/2024-06-03T02:00:00Z"])
        .json();
    assert_eq!(doc["protected"], false);
    assert_eq!(
        store.run(&["protect", "vm/100/2024-06-03T02:00:00Z"]).ok(),
        "protected vm/100/2024-06-03T02:00:00Z\n"
    );
    store.run(&["-q", "show", "vm/999/latest"]).fails(3);
}

#[test]
fn verify_names_and_orders_snapshots_as_the_listings_do() {
    let store = Store::demo();
    let names = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.split_whitespace().find(|w| w.contains("T02:00:00Z")))
            .map(str::to_owned)
            .collect()
    };
    for ns in [None, Some("prod")] {
        let with_ns = |args: &[&'static str]| {
            let mut all: Vec<&str> = ns.map(|n| vec!["--ns", n]).unwrap_or_default();
            all.extend_from_slice(args);
            store.run(&all)
        };
        let listed = names(with_ns(&["snapshots", "--recursive"]).ok());
        let verified = names(with_ns(&["verify"]).ok());
        assert_eq!(verified, listed, "--ns {ns:?}");
    }
    let text = store
        .run(&["--ns", "prod", "verify", "vm/101"])
        .ok()
        .to_owned();
    assert!(
        text.starts_with("ok          vm/101/2024-06-04T02:00:00Z\n"),
        "{text}"
    );
}
