//! Hostile-operator attacks on this session's CLI changes, through the real binary: `gc`'s
//! `--lock-wait`, `sync --remove-vanished` and its empty-source refusal, and the exit codes of
//! bounded reads. Each test marked `ignore = "finding: ..."` fails on the code it was written
//! against; the others are attacks that held (`HOLDS`).

mod common;

use common::Store;

/// A new empty local datastore called `name`.
fn init(name: &str) -> Store {
    let store = Store::empty(name);
    store.run(&["init", "--skip-chunk-dirs"]).ok();
    store
}

/// Names of every finished snapshot, from `snapshots --recursive --json`.
fn finished(store: &Store) -> Vec<String> {
    let doc = store.run(&["--json", "snapshots", "--recursive"]).json();
    let mut out: Vec<String> = doc
        .as_array()
        .expect("an array")
        .iter()
        .filter(|s| s["finished"] == true)
        .map(|s| format!("{}:{}", s["ns"], s["snapshot"]))
        .collect();
    out.sort();
    out
}

/// HOLDS: "wait for ever" written as the largest u64 (which makes the library's GC wait panic
/// on `Instant` overflow, see crates/datastore/tests/break_session.rs) is refused by the CLI's
/// range check: a usage error, exit code 2, nothing done.
#[test]
fn gc_with_the_largest_lock_wait_is_a_usage_error() {
    let store = Store::fixture();
    let before = store.contents();
    let run = store.run(&["--lock-wait", &u64::MAX.to_string(), "--json", "gc"]);
    assert!(!run.stderr.contains("panicked"), "{run:#?}");
    run.fails_json(2);
    assert_eq!(store.contents(), before);
}

/// HOLDS: the longest lock wait the CLI takes (a week) with nobody holding the lock: the GC
/// runs at once.
#[test]
fn gc_with_a_week_of_lock_wait_runs_at_once() {
    let store = Store::fixture();
    let started = std::time::Instant::now();
    store.run(&["--lock-wait", "604800", "--json", "gc"]).json();
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

/// FOUND (fixed): `sync --remove-vanished` from a source named by mistake that holds one group
/// folder and no snapshot (a host whose first backup is running, or whose snapshots were all
/// pruned): the refusal counted groups, not snapshots, so the sync succeeded (exit 0) and the
/// whole target was gone, without `--allow-empty-source`.
#[test]
fn remove_vanished_from_a_source_with_no_snapshot_is_refused() {
    let source = Store::demo();
    let target = init("target");
    let mut cmd = target.cmd(&["--json", "sync", "--from"]);
    cmd.arg(&source.path)
        .arg("--from-lock-root")
        .arg(&source.lock_root);
    common::run(&mut cmd).json();
    let before = finished(&target);
    assert!(!before.is_empty());

    let wrong = init("wrong");
    let group = wrong.path.join("host/new-host");
    std::fs::create_dir_all(&group).unwrap();
    std::fs::write(group.join("owner"), "root@pam\n").unwrap();
    let mut cmd = target.cmd(&["sync", "--remove-vanished", "--from"]);
    cmd.arg(&wrong.path)
        .arg("--from-lock-root")
        .arg(&wrong.lock_root);
    let run = common::run(&mut cmd);
    let after = finished(&target);
    assert_eq!(
        after.len(),
        before.len(),
        "exit {}: {} of {} snapshots left",
        run.code,
        after.len(),
        before.len()
    );
    run.fails(6);
}

/// A snapshot of the demo store whose manifest is made a sparse file of a terabyte; the
/// snapshot's name and namespace, and the number of snapshots.
fn terabyte_manifest(store: &Store) -> (String, String, usize) {
    let all = store.run(&["--json", "snapshots", "--recursive"]).json();
    let all = all.as_array().unwrap();
    let first = &all[0];
    let ns = first["ns"].as_str().unwrap().to_owned();
    let snapshot = first["snapshot"].as_str().unwrap().to_owned();
    let mut dir = store.path.clone();
    for component in ns.split('/').filter(|c| !c.is_empty()) {
        dir = dir.join("ns").join(component);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(&snapshot).join("index.json.blob"))
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    (ns, snapshot, all.len())
}

fn show_args<'a>(ns: &'a str, snapshot: &'a str) -> Vec<&'a str> {
    let mut args = vec!["--json", "show", snapshot];
    if !ns.is_empty() {
        args.extend(["--ns", ns]);
    }
    args
}

/// HOLDS: a snapshot whose manifest is a sparse file of a terabyte: `show` fails at once with
/// the `invalid` kind (exit 7, "too large"), and the listing of all snapshots is not aborted.
#[test]
fn a_terabyte_manifest_fails_show_with_invalid_and_the_listing_goes_on() {
    let store = Store::demo();
    let (ns, snapshot, count) = terabyte_manifest(&store);
    let started = std::time::Instant::now();
    let run = store.run(&show_args(&ns, &snapshot));
    assert_eq!(run.code, 7, "{run:#?}");
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["error"]["kind"], "invalid", "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too large")
    );
    let listed = store.run(&["--json", "snapshots", "--recursive"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(listed.json().as_array().unwrap().len(), count);
}

/// The CLI's contract (crates/cli/src/error.rs): a failure is one line on stderr. `show` of a
/// snapshot whose manifest is too large prints a `WARN manifest unreadable` tracing line (with
/// a timestamp) before its `error:` line: two lines, and a script reading the last line of
/// stderr or the first gets different things. (Not new in this session: a manifest that is
/// merely corrupt prints the same two lines; the too-large refusal inherits it.)
#[test]
#[ignore = "finding: show of a too-large manifest prints a WARN line before its error (two stderr lines)"]
fn a_terabyte_manifest_fails_show_with_one_error_line() {
    let store = Store::demo();
    let (ns, snapshot, _) = terabyte_manifest(&store);
    store.run(&show_args(&ns, &snapshot)).fails_json(7);
}
