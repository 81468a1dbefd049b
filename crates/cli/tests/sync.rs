//! `keepsake sync` through the real binary: local → local, the PBS fixture as source, and local →
//! S3 → local on the moto server `cargo xtask test` starts (skipped, with a printed line, without
//! one).

mod common;

use std::process::Command;

use common::{Run, Store};
use keepsake_testkit::s3::{S3TestConfig, config_or_skip, unique_prefix};

/// (namespace, snapshot, protected) of every finished snapshot, from `snapshots --recursive`.
fn finished(run: Run) -> Vec<(String, String, bool)> {
    let doc = run.json();
    let mut out: Vec<(String, String, bool)> = doc
        .as_array()
        .expect("an array")
        .iter()
        .filter(|s| s["finished"] == true)
        .map(|s| {
            (
                s["ns"].as_str().unwrap().to_owned(),
                s["snapshot"].as_str().unwrap().to_owned(),
                s["protected"] == true,
            )
        })
        .collect();
    out.sort();
    out
}

fn unprotected(list: Vec<(String, String, bool)>) -> Vec<(String, String, bool)> {
    list.into_iter().map(|(n, s, _)| (n, s, false)).collect()
}

/// A new empty local datastore called `name`.
fn init(name: &str) -> Store {
    let store = Store::empty(name);
    store.run(&["init", "--skip-chunk-dirs"]).ok();
    store
}

/// `sync --json` into `target` from the local store `source` (its own lock root).
fn sync(target: &Store, source: &Store, args: &[&str]) -> serde_json::Value {
    let mut cmd = target.cmd(&["--json", "sync", "--from"]);
    cmd.arg(&source.path)
        .arg("--from-lock-root")
        .arg(&source.lock_root)
        .args(args);
    common::run(&mut cmd).json()
}

#[track_caller]
fn nothing_copied(doc: &serde_json::Value) {
    assert_eq!(doc["snapshots"], 0, "{doc:#}");
    assert_eq!(doc["chunks"], 0, "{doc:#}");
    assert_eq!(doc["replaced-unfinished"], 0, "{doc:#}");
}

#[track_caller]
fn verify_clean(run: Run) {
    let doc = run.json();
    assert_eq!(doc["ok"], true, "{doc:#}");
    assert_eq!(doc["failed"], 0, "{doc:#}");
    assert_eq!(doc["content"]["missing"], 0, "{doc:#}");
    assert_eq!(doc["content"]["corrupt"], 0, "{doc:#}");
}

#[test]
fn local_to_local_copies_what_was_selected_once() {
    let source = Store::demo();
    let target = init("target1");
    let doc = sync(
        &target,
        &source,
        &["--group-workers", "3", "--chunk-workers", "4"],
    );
    let want = unprotected(finished(source.run(&[
        "--json",
        "snapshots",
        "--recursive",
    ])));
    assert_eq!(doc["snapshots"].as_u64().unwrap() as usize, want.len());
    assert!(doc["chunks"].as_u64().unwrap() > 0, "{doc:#}");
    assert_eq!(
        finished(target.run(&["--json", "snapshots", "--recursive"])),
        want
    );
    verify_clean(target.run(&["--json", "verify", "--read-data"]));
    nothing_copied(&sync(&target, &source, &[]));

    // Text output names both sides and the counts.
    let mut cmd = target.cmd(&["sync", "--from"]);
    cmd.arg(&source.path)
        .arg("--from-lock-root")
        .arg(&source.lock_root);
    let text = common::run(&mut cmd);
    assert!(text.ok().contains("0 snapshots copied"), "{text:#?}");
}

#[test]
fn anchors_depth_filters_owner_protection_and_remove_vanished() {
    let source = Store::demo();
    let target = init("target2");
    let doc = sync(
        &target,
        &source,
        &[
            "--to-ns",
            "copy/of-prod",
            "--max-depth",
            "0",
            "--group",
            "type:vm",
            "--transfer-last",
            "1",
            "--owner",
            "sync@pbs",
            "--protection",
            "copy",
        ],
    );
    // The global --ns is the source anchor; without it, the root.
    assert_eq!(doc["source-ns"], "", "{doc:#}");
    assert_eq!(doc["namespaces"], 1, "{doc:#}");
    let source_root: Vec<_> = finished(source.run(&["--json", "snapshots"]));
    let mut want: Vec<(String, String, bool)> = Vec::new();
    for group in ["vm/100", "vm/101"] {
        if let Some(last) = source_root
            .iter()
            .filter(|(_, s, _)| s.starts_with(&format!("{group}/")))
            .max_by(|a, b| a.1.cmp(&b.1))
        {
            want.push(("copy/of-prod".to_owned(), last.1.clone(), last.2));
        }
    }
    want.sort();
    assert!(!want.is_empty());
    assert_eq!(
        finished(target.run(&["--json", "snapshots", "--recursive"])),
        want
    );
    let groups = target
        .run(&["--json", "--ns", "copy/of-prod", "groups"])
        .json();
    for group in groups.as_array().unwrap() {
        assert_eq!(group["owner"], "sync@pbs", "{groups:#}");
    }

    // --ns prod into --to-ns mirror: protect a copy, then forget its source and another one.
    let prod = ["--ns", "prod", "--to-ns", "mirror"];
    sync(&target, &source, &prod);
    let copied = finished(target.run(&["--json", "--ns", "mirror", "snapshots", "--recursive"]));
    assert_eq!(
        copied.len(),
        finished(source.run(&["--json", "--ns", "prod", "snapshots", "--recursive"])).len()
    );
    assert!(copied.len() >= 2, "{copied:?}");
    let (_, protect, _) = &copied[0];
    let (_, other, _) = &copied[1];
    target
        .run(&["--ns", "mirror", "protect", protect.as_str()])
        .ok();
    for gone in [protect, other] {
        // The demo may protect it in the source too: unprotect first.
        source
            .run(&["--ns", "prod", "unprotect", gone.as_str()])
            .ok();
        source.run(&["--ns", "prod", "forget", gone.as_str()]).ok();
    }
    let mut args = prod.to_vec();
    args.push("--remove-vanished");
    let doc = sync(&target, &source, &args);
    assert_eq!(doc["removed-vanished"], 1, "{doc:#}");
    assert_eq!(doc["vanished-protected"], 1, "{doc:#}");
    let left: Vec<String> =
        finished(target.run(&["--json", "--ns", "mirror", "snapshots", "--recursive"]))
            .into_iter()
            .map(|(_, s, _)| s)
            .collect();
    assert!(left.contains(protect), "{left:?}");
    assert!(!left.contains(other), "{left:?}");
    // The other namespace was not in scope: untouched.
    assert_eq!(
        finished(target.run(&["--json", "--ns", "copy/of-prod", "snapshots"])),
        want
    );
}

#[test]
fn the_pbs_fixture_as_source() {
    let source = Store::fixture();
    let target = init("fixturecopy");
    let mut cmd = target.cmd(&["--json", "sync", "--from"]);
    cmd.arg(&source.path)
        .args(["--from-name", "store1", "--from-lock-root"])
        .arg(&source.lock_root);
    let doc = common::run(&mut cmd).json();
    let want = unprotected(finished(source.run(&[
        "--name",
        "store1",
        "--json",
        "snapshots",
        "--recursive",
    ])));
    assert!(!want.is_empty());
    assert_eq!(doc["snapshots"].as_u64().unwrap() as usize, want.len());
    assert_eq!(
        finished(target.run(&["--json", "snapshots", "--recursive"])),
        want
    );
    verify_clean(target.run(&["--json", "verify", "--read-data"]));
    let again = common::run(&mut {
        let mut cmd = target.cmd(&["--json", "sync", "--from"]);
        cmd.arg(&source.path)
            .args(["--from-name", "store1", "--from-lock-root"])
            .arg(&source.lock_root);
        cmd
    })
    .json();
    nothing_copied(&again);
}

/// `--remove-vanished` from a source without any group in scope (here a new, empty datastore:
/// a wrong `--from`) refuses before removing anything, exit code 6, and says what to check;
/// `--allow-empty-source` removes, and needs `--remove-vanished`.
#[test]
fn remove_vanished_from_an_empty_source_is_refused_unless_allowed() {
    let source = Store::demo();
    let target = init("target4");
    sync(&target, &source, &[]);
    let before = target.contents();
    let empty = init("empty4");
    let mut cmd = target.cmd(&["sync", "--remove-vanished", "--from"]);
    cmd.arg(&empty.path)
        .arg("--from-lock-root")
        .arg(&empty.lock_root);
    let run = common::run(&mut cmd);
    let line = run.fails(6).to_owned();
    assert!(
        line.contains("no snapshot") && line.contains("--allow-empty-source"),
        "{line}"
    );
    assert_eq!(target.contents(), before);

    let mut cmd = target.cmd(&["sync", "--allow-empty-source", "--from"]);
    cmd.arg(&empty.path)
        .arg("--from-lock-root")
        .arg(&empty.lock_root);
    assert!(
        common::run(&mut cmd).fails(2).contains("--remove-vanished"),
        "--allow-empty-source alone"
    );
    assert_eq!(target.contents(), before);

    let doc = sync(
        &target,
        &empty,
        &[
            "--remove-vanished",
            "--allow-empty-source",
            "--max-depth",
            "0",
        ],
    );
    assert!(doc["removed-vanished"].as_u64().unwrap() > 0, "{doc:#}");
    let left = finished(target.run(&["--json", "snapshots"]));
    assert!(left.iter().all(|(_, _, protected)| *protected), "{left:?}");
}

#[test]
fn bad_sources_are_usage_errors_and_change_nothing() {
    let source = Store::demo();
    let target = init("target3");
    let before = target.contents();
    // The same name in the same lock root: the locks would collide.
    let same = Store::empty("target3");
    let mut cmd = target.cmd(&["sync", "--from"]);
    cmd.arg(&source.path).args(["--from-name", "target3"]);
    let run = common::run(&mut cmd);
    assert!(run.fails(2).contains("lock root"), "{run:#?}");
    drop(same);
    // No source at all.
    assert!(target.run(&["sync"]).fails(2).contains("--from"));
    // A source folder that is not there.
    let mut cmd = target.cmd(&["sync", "--from", "/nonexistent/store9"]);
    common::run(&mut cmd).fails(3);
    assert_eq!(target.contents(), before);
}

/// A datastore in the test bucket with its own cache folder and a name no other test uses.
struct S3Store {
    local: Store,
    name: String,
    cfg: S3TestConfig,
}

impl S3Store {
    fn new(cfg: S3TestConfig) -> Self {
        let name = unique_prefix("sync");
        assert!(name.len() <= 32, "{name}");
        Self {
            local: Store::empty("cache"),
            name,
            cfg,
        }
    }

    fn s3_args(&self, prefix: &str) -> Vec<String> {
        vec![
            format!("--{prefix}s3-endpoint"),
            self.cfg.endpoint.clone(),
            format!("--{prefix}s3-bucket"),
            self.cfg.bucket.clone(),
            format!("--{prefix}s3-region"),
            self.cfg.region.clone(),
        ]
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", &self.cfg.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.cfg.secret_access_key);
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.local.cmd(&[]);
        self.env(&mut cmd);
        cmd.args(["--name", &self.name, "--sync-level", "none"])
            .args(self.s3_args(""))
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        common::run(&mut self.cmd(args))
    }
}

#[test]
fn s3_local_to_s3_and_back() {
    let Some(cfg) = config_or_skip("s3_local_to_s3_and_back") else {
        return;
    };
    let source = Store::demo();
    let want = unprotected(finished(source.run(&[
        "--json",
        "snapshots",
        "--recursive",
    ])));
    let bucket = S3Store::new(cfg);
    bucket.run(&["init", "--skip-chunk-dirs"]).ok();

    // Local → S3.
    let to_s3 = |bucket: &S3Store| {
        let mut cmd = bucket.cmd(&["--json", "sync", "--from"]);
        cmd.arg(&source.path)
            .arg("--from-lock-root")
            .arg(&source.lock_root);
        common::run(&mut cmd).json()
    };
    let doc = to_s3(&bucket);
    assert_eq!(doc["snapshots"].as_u64().unwrap() as usize, want.len());
    assert_eq!(
        finished(bucket.run(&["--json", "snapshots", "--recursive"])),
        want
    );
    verify_clean(bucket.run(&["--json", "verify", "--read-data"]));
    nothing_copied(&to_s3(&bucket));
    // What PBS reads: the bucket holds it (a fresh cache sees every snapshot).
    let fresh = S3Store {
        local: Store::empty("cache"),
        name: bucket.name.clone(),
        cfg: bucket.cfg.clone(),
    };
    std::fs::create_dir_all(&fresh.local.path).unwrap();
    fresh.run(&["refresh"]).ok();
    assert_eq!(
        finished(fresh.run(&["--json", "snapshots", "--recursive"])),
        want
    );

    // S3 → local.
    let back = init("backhome");
    let from_s3 = || {
        let mut cmd = back.cmd(&["--json", "sync", "--from"]);
        bucket.env(&mut cmd);
        cmd.arg(&bucket.local.path)
            .args(["--from-name", &bucket.name, "--from-lock-root"])
            .arg(&bucket.local.lock_root)
            .args(bucket.s3_args("from-"));
        common::run(&mut cmd).json()
    };
    let doc = from_s3();
    assert_eq!(doc["snapshots"].as_u64().unwrap() as usize, want.len());
    assert_eq!(
        finished(back.run(&["--json", "snapshots", "--recursive"])),
        want
    );
    verify_clean(back.run(&["--json", "verify", "--read-data"]));
    nothing_copied(&from_s3());
}
