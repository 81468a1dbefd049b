//! Every command end to end on a copy of the datastore PBS 3.2.4 wrote, by running the binary.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Store, snapshot_names};
use keepsake_hierarchy::{BackupDir, BackupNamespace, BackupTime};
use keepsake_lock::{FileLocker, LockTarget, Locker};
use keepsake_testkit::fixture::{GROUPS, NAMESPACES, SNAPSHOTS};
use serde_json::Value;

fn epoch(time: &str) -> i64 {
    time.parse::<BackupTime>().unwrap().epoch()
}

fn ns_path(ns: &str) -> String {
    ns.split('/')
        .filter(|c| !c.is_empty())
        .map(|c| format!("ns/{c}/"))
        .collect()
}

#[test]
fn groups_list_every_group_with_owner_count_and_last_backup() {
    let store = Store::fixture();
    let doc = store.run(&["--json", "groups", "--recursive"]).json();
    let mut found = BTreeSet::new();
    for g in doc.as_array().unwrap() {
        let ns = g["ns"].as_str().unwrap();
        let group = format!(
            "{}/{}",
            g["backup-type"].as_str().unwrap(),
            g["backup-id"].as_str().unwrap()
        );
        let snapshots: Vec<_> = SNAPSHOTS
            .iter()
            .filter(|s| s.namespace == ns && s.group == group)
            .collect();
        assert_eq!(g["backup-count"], snapshots.len(), "{g}");
        let last = snapshots
            .iter()
            .filter(|s| s.finished)
            .map(|s| epoch(s.time))
            .max();
        assert_eq!(g["last-backup"].as_i64(), last, "{g}");
        found.insert((
            ns.to_owned(),
            group,
            g["owner"].as_str().unwrap().to_owned(),
        ));
    }
    let expected: BTreeSet<_> = GROUPS
        .iter()
        .map(|(ns, g, o)| ((*ns).to_owned(), (*g).to_owned(), (*o).to_owned()))
        .collect();
    assert_eq!(found, expected);

    // Without --recursive: the namespace only; filters apply.
    let doc = store
        .run(&[
            "--json",
            "--ns",
            "prod/site-a",
            "groups",
            "--filter",
            "type:vm",
        ])
        .json();
    assert_eq!(doc.as_array().unwrap().len(), 1);
    assert_eq!(doc[0]["backup-id"], "100");
    assert_eq!(doc[0]["owner"], "user@pbs!tok");

    let text = store.run(&["groups"]).ok().to_owned();
    assert!(text.lines().next().unwrap().starts_with("group"), "{text}");
    assert!(
        text.contains("vm/100")
            && text.contains("root@pam")
            && text.contains("2024-06-06T15:06:40Z"),
        "{text}"
    );
    assert!(!text.contains("site-a"), "{text}");
}

#[test]
fn snapshots_list_time_files_protection_and_finished_state() {
    let store = Store::fixture();
    let doc = store.run(&["--json", "snapshots"]).json();
    let expected: Vec<_> = SNAPSHOTS
        .iter()
        .filter(|s| s.namespace.is_empty())
        .collect();
    assert_eq!(doc.as_array().unwrap().len(), expected.len());
    for fact in expected {
        let name = format!("{}/{}", fact.group, fact.time);
        let s = doc
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["snapshot"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} missing in {doc}"));
        let (ty, id) = fact.group.split_once('/').unwrap();
        assert_eq!(s["ns"], "");
        assert_eq!(s["backup-type"], ty);
        assert_eq!(s["backup-id"], id);
        assert_eq!(s["backup-time"], epoch(fact.time));
        assert_eq!(s["protected"], fact.protected, "{name}");
        assert_eq!(s["finished"], fact.finished, "{name}");
        let files: Vec<&str> = s["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["filename"].as_str().unwrap())
            .collect();
        assert_eq!(files.contains(&"index.json.blob"), fact.finished, "{name}");
        assert_eq!(s["size"].is_null(), !fact.finished, "{name}");
    }

    // One group, named with --ns or with its namespace path: the same answer.
    let a = store
        .run(&["--json", "--ns", "prod/site-a", "snapshots", "vm/100"])
        .json();
    let b = store
        .run(&["--json", "snapshots", "ns/prod/ns/site-a/vm/100"])
        .json();
    assert_eq!(a, b);
    assert_eq!(snapshot_names(&a), ["vm/100/2024-06-05T19:06:40Z"]);
    assert_eq!(a[0]["ns"], "prod/site-a");
    assert_eq!(a[0]["protected"], true);

    let text = store.run(&["snapshots", "vm/100"]).ok().to_owned();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains("2024-06-07T15:06:40Z  no"), "{text}");
}

#[test]
fn ns_list_shows_the_namespaces_below_ns() {
    let store = Store::fixture();
    let doc = store.run(&["--json", "ns", "list"]).json();
    let names: Vec<&str> = doc
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["ns"].as_str().unwrap())
        .collect();
    assert_eq!(names, NAMESPACES);

    let doc = store
        .run(&["--json", "--ns", "prod", "ns", "list", "--max-depth", "0"])
        .json();
    assert_eq!(doc, serde_json::json!([{ "ns": "prod", "depth": 1 }]));

    let text = store.run(&["ns", "list"]).ok().to_owned();
    assert_eq!(text, "/\ndev\nprod\nprod/site-a\n");

    let line = store
        .run(&["ns", "list", "--max-depth", "8"])
        .fails(2)
        .to_owned();
    assert!(line.contains("max depth 8"), "{line}");
}

#[test]
fn show_prints_manifest_files_notes_and_verify_state() {
    let store = Store::fixture();
    let doc = store
        .run(&["--json", "show", "vm/100/2024-06-05T15:06:40Z"])
        .json();
    assert_eq!(doc["snapshot"], "vm/100/2024-06-05T15:06:40Z");
    assert_eq!(doc["backup-time"], epoch("2024-06-05T15:06:40Z"));
    assert_eq!(doc["owner"], "root@pam");
    assert_eq!(doc["protected"], true);
    assert_eq!(doc["finished"], true);
    assert_eq!(doc["verify-state"]["state"], "ok");
    assert_eq!(doc["notes"].as_str().unwrap().lines().count(), 2);
    let files: Vec<&str> = doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["filename"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "qemu-server.conf.blob",
            "drive-scsi0.img.fidx",
            "index.json.blob"
        ]
    );
    assert_eq!(doc["files"][1]["size"], 8 * 1024 * 1024);
    assert_eq!(doc["files"][1]["csum"].as_str().unwrap().len(), 64);
    assert_eq!(doc["manifest"]["backup-id"], "100");

    let text = store
        .run(&["show", "ns/prod/ns/site-a/vm/100/2024-06-05T19:06:40Z"])
        .ok()
        .to_owned();
    assert!(text.contains("notes      site-a vm"), "{text}");
    assert!(text.contains("owner      user@pbs!tok"), "{text}");
    assert!(text.contains("verified   never"), "{text}");

    // An unfinished snapshot: no manifest, the files from the folder.
    let doc = store
        .run(&["--json", "show", "vm/100/2024-06-07T15:06:40Z"])
        .json();
    assert_eq!(doc["finished"], false);
    assert!(doc["manifest"].is_null());
    assert!(!doc["files"].as_array().unwrap().is_empty());
    assert!(doc["files"][0]["size"].as_u64().is_some());
}

#[test]
fn tree_prints_namespaces_groups_and_snapshots() {
    let store = Store::fixture();
    let text = store.run(&["tree"]).ok().to_owned();
    for needle in [
        "datastore `store1`",
        "├── ct/200  owner user@pbs!tok  1 snapshot",
        "2024-06-05T15:06:40Z  finished  protected",
        "2024-06-07T15:06:40Z  unfinished",
        "ns dev  (empty)",
        "ns prod/site-a",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
    let doc = store.run(&["--json", "--ns", "prod", "tree"]).json();
    assert_eq!(doc["ns"], "prod");
    assert_eq!(doc["groups"][0]["backup-type"], "host");
    assert_eq!(doc["groups"][0]["snapshots"][0]["finished"], true);
    assert_eq!(doc["namespaces"][0]["ns"], "prod/site-a");
}

#[test]
fn owner_reads_sets_and_refuses_to_replace_without_force() {
    let store = Store::fixture();
    assert_eq!(store.run(&["owner", "vm/100"]).ok(), "root@pam\n");
    let doc = store
        .run(&["--json", "--ns", "prod", "owner", "host/myhost"])
        .json();
    assert_eq!(
        doc,
        serde_json::json!({ "ns": "prod", "group": "host/myhost", "owner": "user@pbs!tok" })
    );

    let before = store.contents();
    let line = store
        .run(&["owner", "vm/100", "backup@pbs"])
        .fails(6)
        .to_owned();
    assert!(
        line.contains("--force") && line.contains("root@pam"),
        "{line}"
    );
    assert_eq!(store.contents(), before);

    store
        .run(&["owner", "vm/100", "backup@pbs", "--force"])
        .ok();
    assert_eq!(
        std::fs::read_to_string(store.path.join("vm/100/owner")).unwrap(),
        "backup@pbs\n"
    );
    assert_eq!(store.run(&["owner", "vm/100"]).ok(), "backup@pbs\n");
}

#[test]
fn notes_of_groups_and_snapshots() {
    let store = Store::fixture();
    // Group notes: set, read, from stdin, clear.
    store.run(&["notes", "vm/100", "--set", "db server"]).ok();
    assert_eq!(
        std::fs::read_to_string(store.path.join("vm/100/notes")).unwrap(),
        "db server"
    );
    assert_eq!(store.run(&["notes", "vm/100"]).ok(), "db server\n");
    let run = common::run_with_input(
        &mut store.cmd(&["notes", "vm/100", "--set", "-"]),
        b"line one\nline two\n",
    );
    run.ok();
    let doc = store.run(&["--json", "notes", "vm/100"]).json();
    assert_eq!(doc["notes"], "line one\nline two\n");
    store.run(&["notes", "vm/100", "--clear"]).ok();
    assert!(store.run(&["--json", "notes", "vm/100"]).json()["notes"].is_null());

    // Snapshot notes live in the manifest.
    let snap = "vm/100/2024-06-06T15:06:40Z";
    store.run(&["notes", snap, "--set", "after upgrade"]).ok();
    let doc = store.run(&["--json", "show", snap]).json();
    assert_eq!(doc["notes"], "after upgrade");
    assert_eq!(doc["manifest"]["unprotected"]["notes"], "after upgrade");
    store.run(&["notes", snap, "--clear"]).ok();
    assert!(store.run(&["--json", "notes", snap]).json()["notes"].is_null());

    // An unfinished snapshot has no manifest to hold notes.
    let before = store.contents();
    let line = store
        .run(&["notes", "vm/100/2024-06-07T15:06:40Z", "--set", "x"])
        .fails(6)
        .to_owned();
    assert!(line.contains("unfinished"), "{line}");
    assert_eq!(store.contents(), before);
}

#[test]
fn protect_and_unprotect() {
    let store = Store::fixture();
    let snap = "vm/100/2024-06-06T15:06:40Z";
    let marker = store.path.join(format!("{snap}/.protected"));
    assert!(!marker.exists());
    let doc = store.run(&["--json", "protect", snap]).json();
    assert_eq!(doc["protected"], true);
    assert!(marker.exists());
    // Protected now: forget refuses it.
    let before = store.contents();
    let line = store.run(&["forget", snap]).fails(5).to_owned();
    assert!(
        line.contains("is protected") && line.contains("unprotect"),
        "{line}"
    );
    assert_eq!(store.contents(), before);
    store.run(&["unprotect", snap]).ok();
    assert!(!marker.exists());
    store.run(&["forget", snap]).ok();
    assert!(!store.path.join(snap).exists());
}

#[test]
fn forget_snapshots_and_groups_keeps_protected_ones() {
    let store = Store::fixture();
    // A group without protected snapshots goes completely.
    let doc = store.run(&["--json", "forget", "ct/200"]).json();
    assert_eq!(doc["removed-snapshots"], 1);
    assert_eq!(doc["removed-groups"], 1);
    assert!(!store.path.join("ct/200").exists());

    // A group with a protected snapshot: the rest goes, the protected one stays, exit code 1.
    let run = store.run(&["--json", "forget", "vm/100"]);
    let line = run.fails(1).to_owned();
    assert!(
        line.contains("protected snapshot") && line.contains("vm/100"),
        "{line}"
    );
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["removed-snapshots"], 2);
    assert_eq!(doc["protected-snapshots"], 1);
    assert_eq!(doc["error"].as_str(), Some(&line["error: ".len()..]));
    let names = snapshot_names(&store.run(&["--json", "snapshots", "vm/100"]).json());
    assert_eq!(names, ["vm/100/2024-06-05T15:06:40Z"]);
    assert_eq!(
        std::fs::read_to_string(store.path.join("vm/100/owner")).unwrap(),
        "root@pam\n"
    );

    // One snapshot in a namespace.
    store
        .run(&["--ns", "prod", "forget", "host/myhost/2024-06-05T18:06:40Z"])
        .ok();
    assert!(!store.path.join("ns/prod/host/myhost").exists());
}

#[test]
fn namespaces_are_created_and_removed() {
    let store = Store::fixture();
    let before = store.contents();
    let line = store.run(&["ns", "create", "a/b"]).fails(3).to_owned();
    assert!(line.contains("`a`") && line.contains("--parents"), "{line}");
    assert_eq!(store.contents(), before);
    let line = store.run(&["ns", "create", "prod"]).fails(6).to_owned();
    assert!(line.contains("exists already"), "{line}");

    let doc = store
        .run(&["--json", "ns", "create", "a/b", "--parents"])
        .json();
    assert_eq!(doc["created"], serde_json::json!(["a", "a/b"]));
    assert!(store.path.join("ns/a/ns/b").is_dir());
    store.run(&["ns", "create", "a/b/c"]).ok();
    store.run(&["ns", "remove", "a"]).ok();
    assert!(!store.path.join("ns/a").exists());

    // Groups in it: refused without --delete-groups, nothing touched.
    let before = store.contents();
    let line = store.run(&["ns", "remove", "prod"]).fails(6).to_owned();
    assert!(
        line.contains("--delete-groups") && line.contains("ns/prod/host/myhost"),
        "{line}"
    );
    assert_eq!(store.contents(), before);

    // With --delete-groups: the protected snapshot of prod/site-a stays, with its namespaces.
    let run = store.run(&["--json", "ns", "remove", "prod", "--delete-groups"]);
    let line = run.fails(1).to_owned();
    assert!(line.contains("1 protected snapshot"), "{line}");
    assert!(!store.path.join("ns/prod/host").exists());
    assert!(
        store
            .path
            .join("ns/prod/ns/site-a/vm/100/2024-06-05T19:06:40Z/.protected")
            .exists()
    );
    assert!(!store.path.join("ns/prod/ns/site-a/ct").exists());

    let line = store.run(&["ns", "remove", ""]).fails(2).to_owned();
    assert!(line.contains("root namespace"), "{line}");
    store.run(&["ns", "remove", "dev"]).ok();
    assert!(!store.path.join("ns/dev").exists());
}

#[test]
fn prune_prints_marks_and_reasons_and_a_dry_run_changes_nothing() {
    let store = Store::fixture();
    let before = store.contents();
    let doc = store
        .run(&["--json", "prune", "vm/100", "--keep-last", "1", "--dry-run"])
        .json();
    let marks: Vec<(&str, &str)> = doc
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["snapshot"].as_str().unwrap(), l["mark"].as_str().unwrap()))
        .collect();
    assert_eq!(
        marks,
        [
            ("vm/100/2024-06-07T15:06:40Z", "keep-partial"),
            ("vm/100/2024-06-06T15:06:40Z", "keep"),
            ("vm/100/2024-06-05T15:06:40Z", "protected"),
        ]
    );
    assert_eq!(doc[1]["reason"], "last 1 of 1");
    assert_eq!(doc[1]["ns"], "");
    assert_eq!(store.contents(), before);

    // Recursive with a filter: only the vm groups, in every namespace.
    let doc = store
        .run(&[
            "--json",
            "prune",
            "--recursive",
            "--filter",
            "type:vm",
            "--keep-daily",
            "1",
            "--dry-run",
        ])
        .json();
    let groups: BTreeSet<String> = doc
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let snapshot = l["snapshot"].as_str().unwrap();
            format!("{}:{}", l["ns"].as_str().unwrap(), &snapshot[..6])
        })
        .collect();
    assert_eq!(
        groups,
        BTreeSet::from([":vm/100".to_owned(), "prod/site-a:vm/100".to_owned()])
    );
    assert_eq!(store.contents(), before);

    // keep-within is measured from the newest snapshot.
    let doc = store
        .run(&["--json", "prune", "ct/200", "--keep-within", "1d"])
        .json();
    assert_eq!(doc[0]["mark"], "keep");
    assert_eq!(doc[0]["reason"], "within 1d");
}

#[test]
fn locks_show_paths_and_holders_and_held_locks_refuse_changes() {
    let store = Store::fixture();
    let doc = store.run(&["--json", "locks", "vm/100"]).json();
    let entries = doc.as_array().unwrap();
    // The group, then snapshot and manifest lock of each of its 3 snapshots.
    assert_eq!(entries.len(), 7);
    assert_eq!(entries[0]["kind"], "group");
    let group_lock = entries[0]["path"].as_str().unwrap().to_owned();
    assert_eq!(
        group_lock,
        store.lock_root.join("store1/vm-100").display().to_string()
    );
    assert!(entries[0]["holders"].as_array().unwrap().is_empty());

    // Hold the snapshot lock from this process: `locks` names us, and forget is refused.
    let locker = FileLocker::new(&store.lock_root, "store1").unwrap();
    let ns = BackupNamespace::root();
    let dir: BackupDir = "vm/100/2024-06-06T15:06:40Z".parse().unwrap();
    let guard = locker
        .lock_exclusive(&LockTarget::snapshot(&ns, &dir), Duration::ZERO)
        .unwrap();
    let doc = store
        .run(&["--json", "locks", "vm/100/2024-06-06T15:06:40Z"])
        .json();
    assert_eq!(doc[0]["kind"], "snapshot");
    assert_eq!(doc[0]["exists"], true);
    assert_eq!(doc[0]["holders"][0]["pid"], std::process::id());
    assert_eq!(doc[0]["holders"][0]["mode"], "exclusive");
    let before = store.contents();
    let line = store
        .run(&["forget", "vm/100/2024-06-06T15:06:40Z"])
        .fails(4)
        .to_owned();
    assert!(line.contains("is locked"), "{line}");
    assert!(
        line.contains(&format!("pid {}", std::process::id())),
        "{line}"
    );
    assert_eq!(store.contents(), before);
    let text = store.run(&["locks"]).ok().to_owned();
    assert!(
        text.contains(&format!("pid {} (exclusive", std::process::id())),
        "{text}"
    );
    drop(guard);
    store.run(&["forget", "vm/100/2024-06-06T15:06:40Z"]).ok();
}

#[test]
fn bad_input_is_one_line_and_changes_nothing() {
    let store = Store::fixture();
    let before = store.contents();
    // (arguments, exit code, a word the message must contain)
    let cases: &[(&[&str], i32, &str)] = &[
        (&["snapshots", "vm/999"], 3, "group `vm/999` does not exist"),
        (&["owner", "vm/999", "root@pam"], 3, "does not exist"),
        (&["forget", "vm/999"], 3, "does not exist"),
        (
            &["forget", "vm/100/2024-06-01T00:00:00Z"],
            3,
            "snapshot `vm/100/2024-06-01T00:00:00Z` does not exist",
        ),
        (
            &["protect", "vm/100/2024-06-05T15:06:40"],
            2,
            "2024-06-05T15:06:40",
        ),
        (&["show", "vm/100/2024-02-31T00:00:00Z"], 2, "2024-02-31"),
        (&["forget", "vm/10 0"], 2, "10 0"),
        (&["--ns", "prod/../dev", "groups"], 2, ".."),
        (&["forget", "ns/../vm/100"], 2, ".."),
        (&["ns", "create", "a/../b"], 2, ".."),
        (
            &["--ns", "nope", "groups"],
            3,
            "namespace `nope` does not exist",
        ),
        (&["--ns", "prod", "snapshots", "ns/dev/vm/100"], 2, "--ns"),
        (&["owner", "vm/100", "not-an-authid"], 2, "not-an-authid"),
        (&["prune", "vm/100"], 2, "keep"),
        (&["prune", "vm/100", "--keep-last", "0"], 2, "--keep-last"),
        (&["prune", "vm/100", "--keep-within", "3x"], 2, "3x"),
        (&["groups", "--filter", "kind:vm"], 2, "kind:vm"),
        (&["refresh"], 2, "S3"),
        (&["--name", "x", "groups"], 2, "--name"),
        (&["frobnicate"], 2, "frobnicate"),
    ];
    for (args, code, needle) in cases {
        let run = store.run(args);
        let line = run.fails(*code);
        assert!(
            line.contains(needle),
            "{args:?}: {needle:?} not in {line:?}"
        );
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
        let json_args: Vec<&str> = std::iter::once("--json")
            .chain(args.iter().copied())
            .collect();
        let message = store.run(&json_args).fails_json(*code);
        assert!(message.contains(needle), "{args:?} --json: {message}");
        assert_eq!(store.contents(), before, "{args:?} changed the datastore");
    }
}

#[test]
fn a_missing_or_foreign_store_is_an_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("store9");
    let run = common::run(
        common::keepsake()
            .arg("--store")
            .arg(&missing)
            .arg("--lock-root")
            .arg(dir.path().join("locks"))
            .arg("groups"),
    );
    let line = run.fails(3);
    assert!(
        line.contains("store9") && line.contains("does not exist"),
        "{line}"
    );
    assert!(!missing.exists());

    // A folder that is not a datastore.
    std::fs::create_dir(&missing).unwrap();
    std::fs::write(missing.join("file"), b"x").unwrap();
    let before = common::tree_contents(&missing);
    let run = common::run(
        common::keepsake()
            .arg("--store")
            .arg(&missing)
            .arg("--lock-root")
            .arg(dir.path().join("locks"))
            .args(["owner", "vm/100", "root@pam"]),
    );
    assert!(run.fails(3).contains("not a datastore"), "{run:?}");
    assert_eq!(common::tree_contents(&missing), before);

    // No store at all.
    let run = common::run(common::keepsake().arg("groups"));
    assert!(run.fails(2).contains("--store"), "{run:?}");
}

#[test]
fn namespaces_in_paths_and_in_ns_agree() {
    let store = Store::fixture();
    for ns in NAMESPACES.iter().filter(|n| !n.is_empty()) {
        let path = ns_path(ns);
        assert!(store.path.join(&path).is_dir(), "{path}");
    }
    let a = store
        .run(&["--json", "--ns", "prod", "owner", "host/myhost"])
        .json();
    let b = store
        .run(&["--json", "owner", "ns/prod/host/myhost"])
        .json();
    let c = store
        .run(&["--json", "--ns", "prod", "owner", "ns/prod/host/myhost"])
        .json();
    assert_eq!(a, b);
    assert_eq!(a, c);
}

#[test]
fn verify_reports_every_snapshot_and_damage_with_exit_code_1() {
    let store = Store::fixture();
    let before = store.contents();
    let doc = store.run(&["--json", "verify"]).json();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["snapshots"], SNAPSHOTS.len());
    assert_eq!(doc["unfinished"], 1);
    assert_eq!(doc["verified"], SNAPSHOTS.len() - 1);
    assert_eq!(doc["errors"], serde_json::json!([]));
    // Without --record, verify changes nothing.
    assert_eq!(store.contents(), before);

    // Damage one blob: that snapshot fails, the others stay ok.
    let blob = store
        .path
        .join("vm/100/2024-06-06T15:06:40Z/qemu-server.conf.blob");
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let run = store.run(&["--json", "verify"]);
    let line = run.fails(1).to_owned();
    assert!(
        line.contains("verify found") && line.contains("1 failed snapshot"),
        "{line}"
    );
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["failed"], 1);
    let errors = doc["errors"].as_array().unwrap();
    assert!(!errors.is_empty());
    for e in errors {
        assert_eq!(e["snapshot"], "vm/100/2024-06-06T15:06:40Z", "{e}");
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("qemu-server.conf.blob"),
            "{e}"
        );
    }
    // One group, one snapshot; text output names the failure.
    let text = store.run(&["verify", "ct/200"]).ok().to_owned();
    assert!(
        text.contains("ok          ct/200/2024-06-05T16:06:40Z"),
        "{text}"
    );
    let run = store.run(&["verify", "vm/100/2024-06-06T15:06:40Z"]);
    run.fails(1);
    assert!(
        run.stdout
            .contains("failed      vm/100/2024-06-06T15:06:40Z"),
        "{run:?}"
    );

    // --record writes the outcome into the manifests, with a PBS task id.
    store
        .run(&["--ns", "prod", "verify", "--read-data", "--record"])
        .ok();
    let doc = store
        .run(&["--json", "show", "ns/prod/host/myhost/2024-06-05T18:06:40Z"])
        .json();
    assert_eq!(doc["verify-state"]["state"], "ok");
    assert!(
        doc["verify-state"]["upid"]
            .as_str()
            .unwrap()
            .starts_with("UPID:")
    );
    store
        .run(&[
            "verify",
            "--read-data",
            "--record",
            "vm/100/2024-06-06T15:06:40Z",
        ])
        .fails(1);
    let doc = store
        .run(&["--json", "show", "vm/100/2024-06-06T15:06:40Z"])
        .json();
    assert_eq!(doc["verify-state"]["state"], "failed");

    let line = store.run(&["verify", "vm/999"]).fails(3).to_owned();
    assert!(line.contains("does not exist"), "{line}");
}

#[test]
fn move_groups_and_snapshots_under_pbs_merge_rules() {
    let store = Store::fixture();
    let before = store.contents();
    // Refusals change nothing: the target exists (no --merge), owners differ, no such namespace.
    for (args, needle) in [
        (
            &["move", "host/myhost", "--to-ns", "prod"][..],
            "merging was not requested",
        ),
        (
            &["move", "ct/200", "--to-ns", "prod/site-a", "--merge"],
            "owner mismatch",
        ),
        (
            &["move", "vm/100", "--to-ns", "nope"],
            "namespace `nope` does not exist",
        ),
        (&["move", "vm/100", "--to-ns", ""], "same"),
    ] {
        // A missing namespace is not-found (3), the other refusals are refused (6).
        let code = if needle.contains("does not exist") {
            3
        } else {
            6
        };
        let line = store.run(args).fails(code).to_owned();
        assert!(line.contains(needle), "{args:?}: {line}");
        assert_eq!(store.contents(), before, "{args:?}");
    }
    let line = store
        .run(&["move", "vm/100", "--to-ns", "a/../b"])
        .fails(2)
        .to_owned();
    assert!(line.contains(".."), "{line}");

    let doc = store
        .run(&["--json", "move", "host/myhost", "--to-ns", "dev"])
        .json();
    assert_eq!(doc["from"], "host/myhost");
    assert_eq!(doc["to"], "ns/dev/host/myhost");
    assert_eq!(doc["snapshots"], 1);
    assert!(!store.path.join("host/myhost").exists());
    assert_eq!(
        std::fs::read_to_string(store.path.join("ns/dev/host/myhost/owner")).unwrap(),
        "root@pam\n"
    );

    // One snapshot into another namespace.
    store
        .run(&["move", "vm/100/2024-06-06T15:06:40Z", "--to-ns", "dev"])
        .ok();
    let names = snapshot_names(
        &store
            .run(&["--json", "--ns", "dev", "snapshots", "vm/100"])
            .json(),
    );
    assert_eq!(names, ["vm/100/2024-06-06T15:06:40Z"]);
}

#[test]
fn ns_move_moves_a_namespace_with_everything_below() {
    let store = Store::fixture();
    let before = store.contents();
    let line = store
        .run(&["ns", "move", "prod", "--to", "prod/site-a"])
        .fails(6)
        .to_owned();
    assert!(line.contains("below itself"), "{line}");
    let line = store
        .run(&["ns", "move", "", "--to", "dev"])
        .fails(2)
        .to_owned();
    assert!(line.contains("root namespace"), "{line}");
    let line = store
        .run(&["ns", "move", "nope", "--to", ""])
        .fails(3)
        .to_owned();
    assert!(line.contains("`nope` does not exist"), "{line}");
    assert_eq!(store.contents(), before);

    let doc = store
        .run(&["--json", "ns", "move", "prod/site-a", "--to", "dev"])
        .json();
    assert_eq!(doc["to"], "dev/site-a");
    assert_eq!(doc["snapshots"], 2);
    let names: Vec<String> = store
        .run(&["--json", "ns", "list"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["ns"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["", "dev", "dev/site-a", "prod"]);
    assert!(
        store
            .path
            .join("ns/dev/ns/site-a/vm/100/2024-06-05T19:06:40Z/.protected")
            .exists()
    );
}
