//! Crash safety of moves and destroys: a child process (this test binary, re-executed) runs moves
//! and destroys of snapshots, groups and namespaces in a loop and is killed with SIGKILL at a random
//! moment, over and over. After every kill the store is reopened (which completes interrupted
//! operations from the intent journal) and checked against a model: every snapshot verifies (no
//! torn manifest, index or blob), none is lost or duplicated, a protected one is never removed, only
//! snapshots the child announced a destroy for may be gone, every group has its owner, and the
//! journal is empty.
//!
//! Busy-lock variant: a thread of the child keeps taking shared snapshot locks (as a reader or a
//! verify does), so group and namespace destroys and namespace moves meet busy locks; and every
//! other group destroy runs while the child itself reads one of the group's snapshots. A destroy
//! refused that way must change nothing, and nothing may complete it later: its snapshots count
//! as announced only if another destroy announces them again.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keepsake_backend::SyncLevel;
use keepsake_datastore::{
    DataStore, Encryption, GroupsInside, Merge, SnapshotOutcome, VerifyOptions, VerifyScope,
};
use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};

const CHILD_VAR: &str = "KEEPSAKE_KILL_TEST_STORE";
const TEST_NAME: &str = "moves_and_destroys_survive_sigkill";
const MIN_KILLS: usize = 200;
const TIME_BUDGET: Duration = Duration::from_secs(45);
const TOPS: [&str; 3] = ["a", "b", "c"];
const SUBS: [&str; 3] = ["x", "y", "z"];
const GROUPS: [&str; 4] = ["vm/1", "vm/2", "ct/3", "host/4"];

/// A small xorshift generator: the test needs no cryptographic randomness, only variety.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(nanos ^ (u64::from(std::process::id()) << 32) | 1)
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

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len())])
        }
    }
}

fn open(dir: &Path) -> DataStore {
    DataStore::builder("killstore", dir.join("store"))
        .lock_root(dir.join("locks"))
        .sync_level(SyncLevel::None)
        .open()
        .unwrap()
}

fn ns(s: &str) -> BackupNamespace {
    s.parse().unwrap()
}

/// One snapshot as found: where it is and whether it is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    ns: BackupNamespace,
    group: BackupGroup,
    protected: bool,
}

/// Every snapshot by time (times are unique in this test), plus duplicates if any.
fn inventory(store: &DataStore) -> (BTreeMap<i64, Found>, Vec<i64>) {
    let mut found = BTreeMap::new();
    let mut duplicates = Vec::new();
    for n in store
        .iter_namespaces_recursive(&BackupNamespace::root(), None)
        .unwrap()
    {
        let n = n.unwrap();
        for g in store.iter_groups(&n).unwrap() {
            let g = g.unwrap();
            for info in g.list_backups().unwrap() {
                let time = info.snapshot.time().epoch();
                let entry = Found {
                    ns: n.clone(),
                    group: g.name().clone(),
                    protected: info.protected,
                };
                if found.insert(time, entry).is_some() {
                    duplicates.push(time);
                }
            }
        }
    }
    (found, duplicates)
}

/// What the holder thread sees: like [`inventory`], but a folder that vanishes while it lists
/// (moved or destroyed meanwhile) is skipped instead of ending the thread.
fn inventory_lossy(store: &DataStore) -> Vec<(i64, Found)> {
    let mut found = Vec::new();
    let Ok(namespaces) = store.iter_namespaces_recursive(&BackupNamespace::root(), None) else {
        return found;
    };
    for n in namespaces.flatten() {
        let Ok(groups) = store.iter_groups(&n) else {
            continue;
        };
        for g in groups.flatten() {
            for info in g.list_backups().unwrap_or_default() {
                found.push((
                    info.snapshot.time().epoch(),
                    Found {
                        ns: n.clone(),
                        group: g.name().clone(),
                        protected: info.protected,
                    },
                ));
            }
        }
    }
    found
}

/// The child: moves and destroys at random until killed (or, as a safety net, after 10 s).
fn child(dir: &Path) {
    let store = open(dir);
    let log_path = dir.join("destroys.log");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let mut rng = Rng::seeded();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The holder: shared locks on every snapshot of a random group, held a little while (as a
    // reader or a verify holds them). It lists the store once per few holds (a listing can take
    // longer than a child lives on a loaded machine), and the child is ready only once the
    // holder holds its first group: every child meets the holder.
    let holder_store = store.clone();
    let (first_hold, holding) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut rng = Rng::seeded();
        loop {
            let picked = inventory_lossy(&holder_store);
            if picked.is_empty() {
                let _ = first_hold.send(());
            }
            for _ in 0..4 {
                let Some((_, at)) = rng.pick(&picked) else {
                    break;
                };
                let held: Vec<_> = picked
                    .iter()
                    .filter(|(_, f)| f.ns == at.ns && f.group == at.group)
                    .filter_map(|(time, f)| {
                        let dir = keepsake_hierarchy::BackupDir::new(
                            f.group.clone(),
                            BackupTime::from_epoch(*time).ok()?,
                        );
                        holder_store.snapshot(&f.ns, &dir).lock_shared().ok()
                    })
                    .collect();
                let _ = first_hold.send(());
                std::thread::sleep(Duration::from_micros(2_000 + rng.next() % 10_000));
                drop(held);
                std::thread::sleep(Duration::from_micros(rng.next() % 1_000));
            }
        }
    });
    holding.recv().unwrap();
    // The test harness captures stdout, so readiness is a file.
    std::fs::write(dir.join("ready"), b"").unwrap();
    while Instant::now() < deadline {
        let namespaces: Vec<BackupNamespace> = store
            .iter_namespaces_recursive(&BackupNamespace::root(), None)
            .unwrap()
            .filter_map(Result::ok)
            .collect();
        let (snapshots, _) = inventory(&store);
        let snapshots: Vec<(i64, Found)> = snapshots.into_iter().collect();
        let roll = rng.below(100);
        let target = rng.pick(&namespaces).cloned().unwrap_or_default();
        // Errors (refused merges, missing targets) are part of the workload.
        if roll < 40 {
            if let Some((time, at)) = rng.pick(&snapshots) {
                let dir = keepsake_hierarchy::BackupDir::new(
                    at.group.clone(),
                    BackupTime::from_epoch(*time).unwrap(),
                );
                let _ = store
                    .snapshot(&at.ns, &dir)
                    .move_to(&target, Merge::IntoExisting);
            }
        } else if roll < 65 {
            if let Some((_, at)) = rng.pick(&snapshots) {
                let merge = if rng.below(2) == 0 {
                    Merge::IntoExisting
                } else {
                    Merge::Never
                };
                let _ = store.group(&at.ns, &at.group).move_to(&target, merge);
            }
        } else if roll < 80 {
            let subs: Vec<&BackupNamespace> =
                namespaces.iter().filter(|n| n.depth() == 2).collect();
            if let Some(from) = rng.pick(&subs) {
                let top = TOPS[rng.below(TOPS.len())];
                let to = ns(top).child(&from.components()[1]).unwrap();
                let merge = if rng.below(2) == 0 {
                    Merge::IntoExisting
                } else {
                    Merge::Never
                };
                let _ = store.move_namespace(from, &to, merge);
            }
        } else if roll < 90 {
            if let Some((time, at)) = rng.pick(&snapshots) {
                let doomed: Vec<String> = snapshots
                    .iter()
                    .filter(|(_, f)| f.ns == at.ns && f.group == at.group && !f.protected)
                    .map(|(t, _)| t.to_string())
                    .collect();
                // Every other destroy meets a reader of one of the group's snapshots for sure
                // (the holder thread's meetings depend on timing).
                let reader = (rng.below(2) == 0)
                    .then(|| {
                        let dir = keepsake_hierarchy::BackupDir::new(
                            at.group.clone(),
                            BackupTime::from_epoch(*time).ok()?,
                        );
                        store.snapshot(&at.ns, &dir).lock_shared().ok()
                    })
                    .flatten();
                writeln!(log, "doomed {}", doomed.join(" ")).unwrap();
                let result = store.group(&at.ns, &at.group).destroy();
                drop(reader);
                if let Err(e) = result {
                    if e.is_locked() {
                        writeln!(log, "refused {}", doomed.join(" ")).unwrap();
                    }
                }
            }
        } else {
            let subs: Vec<&BackupNamespace> =
                namespaces.iter().filter(|n| n.depth() == 2).collect();
            if let Some(victim) = rng.pick(&subs) {
                let doomed: Vec<String> = snapshots
                    .iter()
                    .filter(|(_, f)| victim.contains(&f.ns) && !f.protected)
                    .map(|(t, _)| t.to_string())
                    .collect();
                writeln!(log, "doomed {}", doomed.join(" ")).unwrap();
                if let Err(e) = store.remove_namespace(victim, GroupsInside::Destroy) {
                    if e.is_locked() {
                        writeln!(log, "refused {}", doomed.join(" ")).unwrap();
                    }
                }
            }
        }
    }
}

/// Brings the store back to a working population: namespaces and fresh snapshots (a third of
/// them protected), each with a time newer than every other.
fn replenish(
    store: &DataStore,
    rng: &mut Rng,
    next_time: &mut i64,
    model: &mut BTreeMap<i64, bool>,
) {
    let owner: Authid = "root@pam".parse().unwrap();
    for top in TOPS {
        store.create_namespace(&ns(top)).unwrap();
    }
    let subs = store
        .iter_namespaces_recursive(&BackupNamespace::root(), None)
        .unwrap()
        .filter(|n| n.as_ref().is_ok_and(|n| n.depth() == 2))
        .count();
    if subs < 2 {
        let sub = ns(TOPS[rng.below(3)]).child(SUBS[rng.below(3)]).unwrap();
        store.create_namespace(&sub).unwrap();
    }
    let namespaces: Vec<BackupNamespace> = store
        .iter_namespaces_recursive(&BackupNamespace::root(), None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    while model.len() < 14 {
        let n = rng.pick(&namespaces).unwrap().clone();
        let g: BackupGroup = GROUPS[rng.below(GROUPS.len())].parse().unwrap();
        *next_time += 100;
        let time = *next_time;
        let mut w = store
            .group(&n, &g)
            .start_backup(&owner, BackupTime::from_epoch(time).unwrap())
            .unwrap();
        w.add_blob(
            "conf.blob",
            format!("{g} {time}\n").as_bytes(),
            Encryption::None,
        )
        .unwrap();
        w.add_fixed_archive(
            "disk.img.fidx",
            &[time as u8; 5_000],
            4_096,
            Encryption::None,
        )
        .unwrap();
        let snapshot = w.finish().unwrap();
        let protected = rng.below(3) == 0;
        if protected {
            snapshot.set_protected(true).unwrap();
        }
        model.insert(time, protected);
    }
}

#[test]
fn moves_and_destroys_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_VAR) {
        child(Path::new(&dir));
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    DataStore::builder("killstore", dir.path().join("store"))
        .lock_root(dir.path().join("locks"))
        .sync_level(SyncLevel::None)
        .chunk_prefix_dirs(false)
        .create()
        .unwrap();
    let exe: PathBuf = std::env::current_exe().unwrap();
    let log_path = dir.path().join("destroys.log");
    let journal = dir.path().join("store/.keepsake/intents");
    let mut rng = Rng::seeded();
    let mut next_time = 1_000_000;
    // time -> protected, for every snapshot that must exist.
    let mut model: BTreeMap<i64, bool> = BTreeMap::new();
    let mut interrupted_ops: BTreeMap<String, usize> = BTreeMap::new();
    let (mut kills, mut interrupted, mut removed, mut protected_seen) =
        (0usize, 0usize, 0usize, 0usize);
    let mut refused_by_busy_locks = 0usize;

    while kills < MIN_KILLS + 20 {
        assert!(
            started.elapsed() < TIME_BUDGET,
            "only {kills} kills in {TIME_BUDGET:?}"
        );
        {
            let store = open(dir.path());
            replenish(&store, &mut rng, &mut next_time, &mut model);
        }
        std::fs::write(&log_path, b"").unwrap();

        let ready = dir.path().join("ready");
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--test-threads=1"])
            .env(CHILD_VAR, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let waiting = Instant::now();
        while !ready.exists() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child ended before it was ready"
            );
            assert!(
                waiting.elapsed() < Duration::from_secs(10),
                "the child never got ready"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 25_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;

        // What did the kill interrupt? (The `op` line of each intent left in the journal.)
        let mut pending = 0;
        let mut round: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(&journal).into_iter().flatten().flatten() {
            if !entry.file_name().to_string_lossy().ends_with(".intent") {
                continue;
            }
            pending += 1;
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let op = text
                .lines()
                .find_map(|l| l.strip_prefix("op "))
                .unwrap()
                .to_owned();
            *interrupted_ops.entry(op).or_insert(0usize) += 1;
            round.push(text);
        }
        if pending > 0 {
            interrupted += 1;
        }
        // Announced destroys, less those refused by a busy lock (which must have changed nothing).
        let mut announced: BTreeSet<i64> = BTreeSet::new();
        let mut refusals = 0;
        for line in std::fs::read_to_string(&log_path).unwrap().lines() {
            let mut words = line.split_whitespace();
            let verdict = words.next();
            let times = words.map(|t| t.parse::<i64>().unwrap());
            match verdict {
                Some("doomed") => announced.extend(times),
                Some("refused") => {
                    refusals += 1;
                    for t in times {
                        announced.remove(&t);
                    }
                }
                // A line cut by the kill: ignored (its destroy had not started).
                _ => {}
            }
        }
        refused_by_busy_locks += refusals;

        // Reopen (which changes nothing), then complete what the killed child announced.
        let store = open(dir.path());
        let recovery = store.recover().unwrap();
        assert!(
            recovery.pending.is_empty() && recovery.unreadable.is_empty(),
            "kill {kills}: recovery left {recovery:?}"
        );
        assert!(
            store.journal_intents().unwrap().is_empty(),
            "kill {kills}: journal not empty after recovery"
        );
        let report = store
            .verify(&VerifyScope::Store, &VerifyOptions::default())
            .unwrap();
        assert!(report.is_ok(), "kill {kills}: {report:#?}");
        assert!(
            report
                .snapshots
                .iter()
                .all(|s| s.outcome == SnapshotOutcome::Ok),
            "kill {kills}: {report:#?}"
        );
        let (found, duplicates) = inventory(&store);
        assert!(
            duplicates.is_empty(),
            "kill {kills}: snapshots in two places: {duplicates:?}"
        );
        for (time, at) in &found {
            let expected = model.get(time);
            assert!(expected.is_some(), "kill {kills}: unknown snapshot {time}");
            assert_eq!(
                Some(&at.protected),
                expected,
                "kill {kills}: protection of {time} changed"
            );
        }
        for (time, protected) in &model {
            if found.contains_key(time) {
                continue;
            }
            assert!(
                !protected,
                "kill {kills}: protected snapshot {time} was removed"
            );
            assert!(
                announced.contains(time),
                "kill {kills}: snapshot {time} lost without a destroy"
            );
            removed += 1;
        }
        protected_seen = protected_seen.max(found.values().filter(|f| f.protected).count());
        for n in store
            .iter_namespaces_recursive(&BackupNamespace::root(), None)
            .unwrap()
        {
            for g in store.iter_groups(&n.unwrap()).unwrap() {
                let g = g.unwrap();
                assert!(
                    g.owner().is_ok(),
                    "kill {kills}: {g:?} has no valid owner; interrupted: {round:#?}; {:?}",
                    std::fs::read_dir(dir.path().join("store").join(g.relative_path()))
                        .unwrap()
                        .map(|e| e.unwrap().file_name())
                        .collect::<Vec<_>>()
                );
            }
        }
        model = found.into_iter().map(|(t, f)| (t, f.protected)).collect();
    }
    eprintln!(
        "kill test: {kills} kills, {interrupted} interrupted an operation ({interrupted_ops:?}), \
         {removed} snapshots destroyed, {refused_by_busy_locks} destroys refused by a busy lock \
         (0 unrequested removals), in {:.1?}",
        started.elapsed()
    );
    assert!(
        refused_by_busy_locks > 0,
        "the busy-lock variant never met a busy lock"
    );
    assert!(kills >= MIN_KILLS);
    assert!(protected_seen > 0);
    // The kills must land inside operations, not only between them (on a quiet machine the
    // operations are quick and about a tenth of the kills land inside one; 5 % is the bound).
    assert!(
        interrupted >= kills / 20,
        "only {interrupted} of {kills} kills interrupted an operation"
    );
}
