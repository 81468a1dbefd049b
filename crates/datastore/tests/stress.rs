//! Multi-process stress: N processes (this test binary, re-executed) x M threads run random mixes
//! of snapshot creation, manifest updates (each increments a counter in the manifest's
//! `unprotected` object), protection changes, owner and notes changes, destroys, prunes, reads and
//! moves of snapshots and groups, for a set time, on one datastore (the local filesystem, and the
//! cached S3 backend when a test server is configured).
//!
//! Every process records what succeeded; afterwards the parent reopens the store and checks:
//! - every surviving snapshot's counter equals the sum of the successful increments of it, by
//!   snapshot identity (group and time, which moves keep): no lost update;
//! - no reader ever saw a torn manifest, owner or notes file, and verify finds nothing wrong;
//! - every snapshot that was protected and never unprotected still exists, protected;
//! - no snapshot exists twice (in two namespaces) and the intent journal is empty;
//! - no unrequested removal: every snapshot created and gone was removed by an operation that
//!   asked for exactly it (a snapshot destroy, a prune, a group or namespace destroy, by name).
//!
//! Beside them, "holders" keep every snapshot of a group locked shared for a while (as a reader or
//! a verify would), so that group and namespace destroys and namespace moves meet busy locks and
//! must refuse without changing anything.
//!
//! `KEEPSAKE_STRESS_SECS` sets the duration per backend (default 4 s; `cargo xtask stress`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use keepsake_backend::{CachedBackend, LocalBackend, ObjectBackend, S3Config, SyncLevel};
use keepsake_datastore::prune::KeepOptions;
use keepsake_datastore::{
    DataStore, Encryption, Error, ExistingOwner, GroupsInside, Merge, PruneRun, SnapshotOutcome,
    VerifyOptions, VerifyScope,
};
use keepsake_hierarchy::{Authid, BackupDir, BackupGroup, BackupNamespace, BackupTime};

const CHILD_VAR: &str = "KEEPSAKE_STRESS_CHILD";
const SECS_VAR: &str = "KEEPSAKE_STRESS_SECS";
const DEFAULT_SECS: u64 = 4;
const COUNTER_KEY: &str = "keepsake-stress-counter";
const NAMESPACES: [&str; 3] = ["", "a", "b"];
const OWNERS: [&str; 2] = ["root@pam", "backup@pbs"];

/// A small xorshift generator: the test needs variety, not cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn seeded(salt: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng((nanos ^ (u64::from(std::process::id()) << 32) ^ salt.wrapping_mul(0x9e37_79b9)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Where the stress runs and how hard.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Local,
    CachedS3,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Local => "local",
            Kind::CachedS3 => "cached-s3",
        }
    }

    fn parse(s: &str) -> Kind {
        if s == "cached-s3" {
            Kind::CachedS3
        } else {
            Kind::Local
        }
    }

    /// Processes and threads per process (S3 requests are slow on moto: fewer workers).
    fn shape(self) -> (usize, usize) {
        match self {
            Kind::Local => (3, 3),
            Kind::CachedS3 => (2, 2),
        }
    }

    fn test_name(self) -> &'static str {
        match self {
            Kind::Local => "stress_local",
            Kind::CachedS3 => "stress_cached_s3",
        }
    }
}

fn seconds() -> u64 {
    std::env::var(SECS_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECS)
}

fn s3_config() -> Option<S3Config> {
    let cfg = keepsake_testkit::s3::config()?;
    let mut config = S3Config::new(
        cfg.bucket,
        cfg.region,
        cfg.access_key_id,
        cfg.secret_access_key,
    );
    config.endpoint = Some(cfg.endpoint);
    config.allow_http = true;
    config.retry = keepsake_backend::RetrySettings::for_tests();
    Some(config)
}

/// Opens (or with `create` makes) the store in `dir`; for S3 the bucket prefix is in `dir/prefix`.
fn store(dir: &Path, kind: Kind, create: bool) -> DataStore {
    let mut builder = DataStore::builder("stress", dir.join("store"))
        .lock_root(dir.join("locks"))
        .sync_level(SyncLevel::None)
        .chunk_prefix_dirs(false);
    if kind == Kind::CachedS3 {
        std::fs::create_dir_all(dir.join("store")).unwrap();
        let prefix = std::fs::read_to_string(dir.join("prefix")).unwrap();
        let cache = LocalBackend::open(dir.join("store"), SyncLevel::None).unwrap();
        let remote = ObjectBackend::s3(&s3_config().unwrap(), &prefix).unwrap();
        builder = builder
            .backend(Arc::new(CachedBackend::new(cache, remote)))
            .namespace_markers(true);
    }
    if create {
        builder.create().unwrap()
    } else {
        builder.open().unwrap()
    }
}

fn ns(name: &str) -> BackupNamespace {
    if name.is_empty() {
        BackupNamespace::root()
    } else {
        name.parse().unwrap()
    }
}

/// The short name of an error variant (`Locked`, `NotFound`, ...), for the figures.
fn kind_of(e: &Error) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("?")
        .to_owned()
}

/// What one process saw, merged over its threads and written to a file for the parent.
#[derive(Default)]
struct Record {
    /// `op outcome` -> count.
    outcomes: BTreeMap<String, u64>,
    /// Snapshot identity (`<type>/<id>/<time>`) -> successful increments.
    increments: BTreeMap<String, u64>,
    /// Increments that failed after the write may have happened (backend errors).
    uncertain: BTreeMap<String, u64>,
    /// Snapshots protected successfully / with an unprotect attempted.
    protected: BTreeSet<String>,
    unprotected: BTreeSet<String>,
    /// Torn or unreadable metadata seen by readers.
    torn: Vec<String>,
    /// Snapshots created successfully.
    created: BTreeSet<String>,
    /// Snapshots an operation removed by name (destroy, prune, group or namespace destroy).
    removed: BTreeSet<String>,
    /// Groups (`type/id`) an interrupted destroy may have touched: its announced snapshots may be
    /// removed later by recovery.
    uncertain_groups: BTreeSet<String>,
}

impl Record {
    fn count(&mut self, op: &str, result: &std::result::Result<(), Error>) {
        if let Err(e @ Error::Interrupted { .. }) = result {
            // Rare, and worth seeing: which later step failed.
            let mut text = format!("{op}: {e}");
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            eprintln!("stress: interrupted {text}");
        }
        let outcome = match result {
            Ok(()) => "ok".to_owned(),
            Err(e) => kind_of(e),
        };
        *self.outcomes.entry(format!("{op} {outcome}")).or_default() += 1;
    }

    fn write(&self, path: &Path) {
        let mut out = String::new();
        for (k, n) in &self.outcomes {
            out.push_str(&format!("count {k} {n}\n"));
        }
        for (id, n) in &self.increments {
            out.push_str(&format!("inc {id} {n}\n"));
        }
        for (id, n) in &self.uncertain {
            out.push_str(&format!("uncertain {id} {n}\n"));
        }
        for id in &self.protected {
            out.push_str(&format!("protect {id}\n"));
        }
        for id in &self.unprotected {
            out.push_str(&format!("unprotect {id}\n"));
        }
        for what in &self.torn {
            out.push_str(&format!("torn {}\n", what.replace('\n', " ")));
        }
        for id in &self.created {
            out.push_str(&format!("created {id}\n"));
        }
        for id in &self.removed {
            out.push_str(&format!("removed {id}\n"));
        }
        for id in &self.uncertain_groups {
            out.push_str(&format!("uncertain-group {id}\n"));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, out).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    fn merge_file(&mut self, path: &Path) {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("child result {}: {e}", path.display()));
        for line in text.lines() {
            let (tag, rest) = line.split_once(' ').unwrap();
            match tag {
                "count" => {
                    let (k, n) = rest.rsplit_once(' ').unwrap();
                    *self.outcomes.entry(k.to_owned()).or_default() += n.parse::<u64>().unwrap();
                }
                "inc" | "uncertain" => {
                    let (id, n) = rest.rsplit_once(' ').unwrap();
                    let map = if tag == "inc" {
                        &mut self.increments
                    } else {
                        &mut self.uncertain
                    };
                    *map.entry(id.to_owned()).or_default() += n.parse::<u64>().unwrap();
                }
                "protect" => {
                    self.protected.insert(rest.to_owned());
                }
                "unprotect" => {
                    self.unprotected.insert(rest.to_owned());
                }
                "torn" => self.torn.push(rest.to_owned()),
                "created" => {
                    self.created.insert(rest.to_owned());
                }
                "removed" => {
                    self.removed.insert(rest.to_owned());
                }
                "uncertain-group" => {
                    self.uncertain_groups.insert(rest.to_owned());
                }
                other => panic!("unknown line {other}"),
            }
        }
    }
}

/// Every snapshot of the store: identity -> (namespace, protected), plus identities seen twice.
type Inventory = BTreeMap<String, (BackupNamespace, BackupDir, bool)>;

fn inventory(store: &DataStore) -> std::result::Result<(Inventory, Vec<String>), Error> {
    let mut found = BTreeMap::new();
    let mut twice = Vec::new();
    for name in NAMESPACES {
        let n = ns(name);
        if !store.namespace_exists(&n)? {
            continue;
        }
        for g in store.iter_groups(&n)? {
            for info in g?.list_backups()? {
                let id = info.snapshot.to_string();
                if found
                    .insert(id.clone(), (n.clone(), info.snapshot, info.protected))
                    .is_some()
                {
                    twice.push(id);
                }
            }
        }
    }
    Ok((found, twice))
}

fn counter(manifest: &keepsake_manifest::manifest::BackupManifest) -> u64 {
    manifest
        .unprotected()
        .get(COUNTER_KEY)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// One worker thread of a child process: random operations until `deadline`.
fn worker(
    store: &DataStore,
    process: usize,
    thread: usize,
    deadline: Instant,
    record: &Mutex<Record>,
) {
    let mut rng = Rng::seeded((process * 64 + thread) as u64);
    // Each worker creates in its own groups with its own increasing times, so snapshot identities
    // are unique for the whole run; every other operation picks from everything there is.
    let own: [BackupGroup; 2] = [
        format!("vm/{}", 100 + process * 10 + thread)
            .parse()
            .unwrap(),
        format!("ct/{}", 100 + process * 10 + thread)
            .parse()
            .unwrap(),
    ];
    let mut next_time: i64 = 1_700_000_000;
    let mut snapshots: Vec<(BackupNamespace, BackupDir)> = Vec::new();
    let policy: KeepOptions = "keep-last=4".parse().unwrap();
    let mut ops = 0u64;
    while Instant::now() < deadline {
        if ops % 8 == 0 || snapshots.is_empty() {
            match inventory(store) {
                Ok((found, _)) => {
                    snapshots = found.into_values().map(|(n, d, _)| (n, d)).collect();
                }
                Err(e) => record.lock().unwrap().count("list", &Err(e)),
            }
        }
        ops += 1;
        let pick = |rng: &mut Rng| -> Option<(BackupNamespace, BackupDir)> {
            if snapshots.is_empty() {
                None
            } else {
                Some(snapshots[rng.below(snapshots.len())].clone())
            }
        };
        let roll = rng.below(100);
        if roll < 14 || snapshots.len() < 4 {
            let n = ns(NAMESPACES[rng.below(NAMESPACES.len())]);
            let group = store.group(&n, &own[rng.below(2)]);
            next_time += 60;
            let time = BackupTime::from_epoch(next_time).unwrap();
            let owner = group
                .owner()
                .unwrap_or_else(|_| OWNERS[0].parse::<Authid>().unwrap());
            // A namespace removed or moved away by another worker comes back.
            if !n.is_root() && !store.namespace_exists(&n).unwrap_or(true) {
                let _ = store.create_namespace(&n);
            }
            let result = group.start_backup(&owner, time).and_then(|mut w| {
                w.add_blob(
                    "conf.blob",
                    format!("{time}\n").as_bytes(),
                    Encryption::None,
                )?;
                w.finish().map(|_| ())
            });
            let mut r = record.lock().unwrap();
            if result.is_ok() {
                r.created.insert(format!("{}/{time}", group.name()));
            }
            r.count("create", &result);
        } else if roll < 50 {
            let Some((n, dir)) = pick(&mut rng) else {
                continue;
            };
            let result = store
                .snapshot(&n, &dir)
                .update_manifest(|m| {
                    let next = counter(m) + 1;
                    m.unprotected_mut()
                        .insert(COUNTER_KEY.to_owned(), serde_json::Value::from(next));
                    Ok(())
                })
                .map(|_| ());
            let mut r = record.lock().unwrap();
            match &result {
                Ok(()) => *r.increments.entry(dir.to_string()).or_default() += 1,
                // The write may have reached the store before the error (bucket written, cache
                // not): counted apart, as an upper bound.
                Err(Error::Backend { .. }) => {
                    *r.uncertain.entry(dir.to_string()).or_default() += 1;
                }
                Err(_) => {}
            }
            r.count("increment", &result);
        } else if roll < 58 {
            let Some((n, dir)) = pick(&mut rng) else {
                continue;
            };
            let protect = rng.below(3) != 0;
            if !protect {
                // Recorded before the attempt: a failed unprotect may still have removed the marker.
                record.lock().unwrap().unprotected.insert(dir.to_string());
            }
            let result = store.snapshot(&n, &dir).set_protected(protect);
            let mut r = record.lock().unwrap();
            if protect && result.is_ok() {
                r.protected.insert(dir.to_string());
            }
            r.count(if protect { "protect" } else { "unprotect" }, &result);
        } else if roll < 64 {
            let Some((n, dir)) = pick(&mut rng) else {
                continue;
            };
            let group = store.group(&n, dir.group());
            if rng.below(2) == 0 {
                // Mostly the usual owner: a changed one makes merges refuse (as they should).
                let owner: Authid = OWNERS[usize::from(rng.below(4) == 0)].parse().unwrap();
                record_op(
                    record,
                    "set-owner",
                    group.set_owner(&owner, ExistingOwner::Replace),
                );
            } else {
                let notes = format!("notes of {dir}\nline two {}\n", rng.next());
                record_op(record, "set-notes", group.set_notes(&notes));
            }
        } else if roll < 74 {
            // Readers: a torn manifest, owner or notes file would show as `Corrupt` here.
            let Some((n, dir)) = pick(&mut rng) else {
                continue;
            };
            let snapshot = store.snapshot(&n, &dir);
            let group = store.group(&n, dir.group());
            let results = [
                ("read-manifest", snapshot.load_manifest().map(|_| ())),
                ("read-owner", group.owner().map(|_| ())),
                ("read-notes", group.notes().map(|_| ())),
            ];
            let mut r = record.lock().unwrap();
            for (op, result) in results {
                if let Err(e @ (Error::Corrupt { .. } | Error::Invalid(_))) = &result {
                    r.torn.push(format!("{op} {n}/{dir}: {e}"));
                }
                r.count(op, &result);
            }
        } else if roll < 78 {
            // A holder: every snapshot of a group locked shared for a while, as a reader or a
            // verify holds them; destroys and moves meanwhile must refuse, changing nothing.
            let Some((n, dir)) = pick(&mut rng) else {
                continue;
            };
            let held: Vec<_> = match store.group(&n, dir.group()).iter_snapshots() {
                Ok(iter) => iter
                    .filter_map(|s| s.ok())
                    .filter_map(|s| s.lock_shared().ok())
                    .collect(),
                Err(_) => Vec::new(),
            };
            std::thread::sleep(Duration::from_millis(5 + rng.below(20) as u64));
            let result = if held.is_empty() {
                Err(Error::NotFound {
                    what: "group",
                    path: dir.group().to_string(),
                })
            } else {
                Ok(())
            };
            drop(held);
            record.lock().unwrap().count("hold", &result);
        } else if roll < 83 {
            let Some((n, dir)) = pick(&mut rng) else {
                continue;
            };
            let result = store.snapshot(&n, &dir).destroy();
            let mut r = record.lock().unwrap();
            if result.is_ok() {
                r.removed.insert(dir.to_string());
            }
            r.count("destroy", &result);
        } else if roll < 86 {
            let Some((n, dir)) = pick(&mut rng) else {
                continue;
            };
            let result =
                store
                    .group(&n, dir.group())
                    .prune(&policy, &TimeZone::UTC, PruneRun::Remove);
            let mut r = record.lock().unwrap();
            match result {
                Ok(p) => {
                    r.count("prune", &Ok(()));
                    *r.outcomes.entry("prune-removed ok".to_owned()).or_default() +=
                        p.removed() as u64;
                    for s in &p.snapshots {
                        if matches!(s.action, keepsake_datastore::PruneAction::Removed) {
                            r.removed.insert(s.snapshot.to_string());
                        }
                    }
                }
                Err(e) => r.count("prune", &Err(e)),
            }
        } else if roll < 88 {
            let Some((n, dir)) = pick(&mut rng) else {
                continue;
            };
            let result = store.group(&n, dir.group()).destroy();
            let mut r = record.lock().unwrap();
            match result {
                Ok(stats) => {
                    r.removed
                        .extend(stats.removed.iter().map(|s| s.snapshot.to_string()));
                    r.count("destroy-group", &Ok(()));
                }
                Err(e) => {
                    if matches!(e, Error::Interrupted { .. }) {
                        r.uncertain_groups.insert(dir.group().to_string());
                    }
                    r.count("destroy-group", &Err(e));
                }
            }
        } else if roll < 94 {
            let Some((n, dir)) = pick(&mut rng) else {
                continue;
            };
            let to = ns(NAMESPACES[rng.below(NAMESPACES.len())]);
            let result = store
                .snapshot(&n, &dir)
                .move_to(&to, Merge::IntoExisting)
                .map(|_| ());
            record.lock().unwrap().count("move-snapshot", &result);
        } else if roll < 97 {
            let Some((n, dir)) = pick(&mut rng) else {
                continue;
            };
            let to = ns(NAMESPACES[rng.below(NAMESPACES.len())]);
            let result = store
                .group(&n, dir.group())
                .move_to(
                    &to,
                    if rng.below(2) == 0 {
                        Merge::IntoExisting
                    } else {
                        Merge::Never
                    },
                )
                .map(|_| ());
            record.lock().unwrap().count("move-group", &result);
        } else if roll < 98 {
            // Namespace `b` with everything in it (protected snapshots stay).
            let result = store.remove_namespace(&ns("b"), GroupsInside::Destroy);
            let mut r = record.lock().unwrap();
            match result {
                Ok(removal) => {
                    r.removed.extend(
                        removal
                            .groups
                            .removed
                            .iter()
                            .map(|s| s.snapshot.to_string()),
                    );
                    r.count("destroy-namespace", &Ok(()));
                }
                Err(e) => {
                    if matches!(e, Error::Interrupted { .. }) {
                        // Which groups it announced is not known here: all are uncertain.
                        r.uncertain_groups.insert("*".to_owned());
                    }
                    r.count("destroy-namespace", &Err(e));
                }
            }
        } else {
            // Namespace `a` into `b` (merging), or back.
            let (from, to) = if rng.below(2) == 0 {
                ("a", "b")
            } else {
                ("b", "a")
            };
            let result = store
                .move_namespace(&ns(from), &ns(to), Merge::IntoExisting)
                .map(|_| ());
            record.lock().unwrap().count("move-namespace", &result);
        }
    }
}

fn record_op(record: &Mutex<Record>, op: &str, result: keepsake_datastore::Result<()>) {
    record.lock().unwrap().count(op, &result);
}

/// A child process: opens the store and runs its threads, then writes its record.
fn child(spec: &str) {
    // `<kind> <process index> <dir>`
    let mut parts = spec.splitn(3, ' ');
    let kind = Kind::parse(parts.next().unwrap());
    let process: usize = parts.next().unwrap().parse().unwrap();
    let dir = PathBuf::from(parts.next().unwrap());
    let store = store(&dir, kind, false);
    let (_, threads) = kind.shape();
    let deadline = Instant::now() + Duration::from_secs(seconds());
    let record = Mutex::new(Record::default());
    std::thread::scope(|s| {
        for thread in 0..threads {
            let (store, record) = (&store, &record);
            s.spawn(move || worker(store, process, thread, deadline, record));
        }
    });
    record
        .into_inner()
        .unwrap()
        .write(&dir.join(format!("process-{process}.record")));
}

fn run(kind: Kind) {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if kind == Kind::CachedS3 {
        std::fs::write(
            dir.join("prefix"),
            keepsake_testkit::s3::unique_prefix(kind.test_name()),
        )
        .unwrap();
    }
    {
        let store = store(dir, kind, true);
        for name in NAMESPACES.iter().filter(|n| !n.is_empty()) {
            store.create_namespace(&ns(name)).unwrap();
        }
    }
    let (processes, threads) = kind.shape();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..processes)
        .map(|p| {
            Command::new(&exe)
                .args([kind.test_name(), "--exact", "--test-threads=1"])
                .env(
                    CHILD_VAR,
                    format!("{} {p} {}", kind.as_str(), dir.display()),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a stress child failed");
    }

    let mut total = Record::default();
    for p in 0..processes {
        total.merge_file(&dir.join(format!("process-{p}.record")));
    }
    let store = store(dir, kind, false);
    assert!(
        store.journal_intents().unwrap().is_empty(),
        "{}: intents left after the run",
        kind.as_str()
    );
    let report = store
        .verify(&VerifyScope::Store, &VerifyOptions::default())
        .unwrap();
    let not_ok: Vec<_> = report
        .snapshots
        .iter()
        .filter(|s| s.outcome != SnapshotOutcome::Ok)
        .collect();
    assert!(
        report.is_ok() && not_ok.is_empty(),
        "{}: verify: {report:#?}",
        kind.as_str()
    );
    let (found, twice) = inventory(&store).unwrap();
    assert!(
        twice.is_empty(),
        "{}: snapshots in two namespaces: {twice:?}",
        kind.as_str()
    );

    let mut lost = Vec::new();
    let mut checked_increments = 0;
    for (id, (n, dir, _)) in &found {
        let value = counter(&store.snapshot(n, dir).load_manifest().unwrap());
        let expected = total.increments.get(id).copied().unwrap_or(0);
        let slack = total.uncertain.get(id).copied().unwrap_or(0);
        if value < expected || value > expected + slack {
            lost.push(format!(
                "{id}: counter {value}, increments {expected} (+{slack} uncertain)"
            ));
        }
        checked_increments += expected;
    }
    let mut protected_removed = Vec::new();
    let mut protected_checked = 0;
    for id in total.protected.difference(&total.unprotected) {
        protected_checked += 1;
        match found.get(id) {
            Some((_, _, true)) => {}
            Some((n, _, false)) => protected_removed.push(format!("{id} in `{n}` lost protection")),
            None => protected_removed.push(format!("{id} vanished")),
        }
    }

    // No unrequested removal: every snapshot created and gone was removed by name.
    let unrequested: Vec<&String> = total
        .created
        .iter()
        .filter(|id| !found.contains_key(*id) && !total.removed.contains(*id))
        .filter(|id| {
            let group = id.rsplit_once('/').map_or("", |(g, _)| g);
            !total.uncertain_groups.contains(group) && !total.uncertain_groups.contains("*")
        })
        .collect();
    let ops: u64 = total.outcomes.values().sum();
    let errors: BTreeMap<&String, &u64> = total
        .outcomes
        .iter()
        .filter(|(k, _)| !k.ends_with(" ok"))
        .collect();
    eprintln!(
        "stress {}: {ops} operations in {:.1?} by {processes} processes x {threads} threads; \
         {} snapshots at the end ({checked_increments} increments checked on them, {} lost), \
         {protected_checked} never-unprotected protected snapshots checked ({} removed), \
         {} torn reads, {} unrequested removals ({} created, {} removed by name), \
         verify: {} snapshots ok",
        kind.as_str(),
        started.elapsed(),
        found.len(),
        lost.len(),
        protected_removed.len(),
        total.torn.len(),
        unrequested.len(),
        total.created.len(),
        total.removed.len(),
        report.snapshots.len(),
    );
    eprintln!("stress {}: outcomes {:?}", kind.as_str(), total.outcomes);
    eprintln!("stress {}: errors by kind {errors:?}", kind.as_str());
    assert!(
        lost.is_empty(),
        "{}: lost updates: {lost:#?}",
        kind.as_str()
    );
    assert!(
        protected_removed.is_empty(),
        "{}: protected snapshots removed: {protected_removed:#?}",
        kind.as_str()
    );
    assert!(
        unrequested.is_empty(),
        "{}: snapshots removed without being asked for: {unrequested:#?}",
        kind.as_str()
    );
    assert!(
        total.torn.is_empty(),
        "{}: torn reads: {:#?}",
        kind.as_str(),
        total.torn
    );
    // The run must have done real work, or the checks above prove nothing.
    let ok = |op: &str| {
        total
            .outcomes
            .get(&format!("{op} ok"))
            .copied()
            .unwrap_or(0)
    };
    assert!(
        ok("create") > 0 && ok("increment") > 0,
        "{}: no work done",
        kind.as_str()
    );
    assert!(
        checked_increments > 0,
        "{}: no counter survived",
        kind.as_str()
    );
}

#[test]
fn stress_local() {
    match std::env::var(CHILD_VAR) {
        Ok(spec) if spec.starts_with("local ") => child(&spec),
        Ok(_) => {}
        Err(_) => run(Kind::Local),
    }
}

#[test]
fn stress_cached_s3() {
    match std::env::var(CHILD_VAR) {
        Ok(spec) if spec.starts_with("cached-s3 ") => child(&spec),
        Ok(_) => {}
        Err(_) => {
            if keepsake_testkit::s3::config_or_skip("stress_cached_s3").is_some() {
                run(Kind::CachedS3);
            }
        }
    }
}
