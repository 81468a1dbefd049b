//! Crash safety of the other write paths: a child process (this test binary, re-executed) writes
//! backups (blob, fixed index, chunks, manifest), updates a manifest (a counter in `unprotected` and
//! the notes), sets and clears protection, and rewrites owners and group notes, in a loop, and is
//! killed with SIGKILL at a random moment, over and over. After every kill the store is reopened,
//! repaired with fsck and verified: no torn manifest, blob, index, owner or notes file; no committed
//! counter increment lost; the pinned protected snapshot still protected; no temporary file left.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keepsake_backend::SyncLevel;
use keepsake_datastore::{
    DataStore, Encryption, ExistingOwner, FsckOptions, PruneRun, SnapshotOutcome, VerifyOptions,
    VerifyScope,
};
use keepsake_hierarchy::{Authid, BackupDir, BackupGroup, BackupNamespace, BackupTime};

const CHILD_VAR: &str = "KEEPSAKE_KILL_WRITES_STORE";
const TEST_NAME: &str = "writes_survive_sigkill";
const MIN_KILLS: usize = 200;
const TIME_BUDGET: Duration = Duration::from_secs(60);
const COUNTER: &str = "kill-test-counter";
/// The snapshot whose manifest the child keeps updating.
const COUNTED: i64 = 1_000;
/// Protected at setup and never touched again.
const PINNED: i64 = 2_000;

fn open(dir: &Path) -> DataStore {
    DataStore::builder("killwrites", dir.join("store"))
        .lock_root(dir.join("locks"))
        .sync_level(SyncLevel::None)
        .open()
        .unwrap()
}

fn group() -> BackupGroup {
    "vm/100".parse().unwrap()
}

/// Where the child writes new backups and prunes (apart from the counted and pinned snapshots).
fn backups_group() -> BackupGroup {
    "vm/200".parse().unwrap()
}

fn snapshot_dir(time: i64) -> BackupDir {
    format!("vm/100/{}", BackupTime::from_epoch(time).unwrap())
        .parse()
        .unwrap()
}

fn counter(store: &DataStore) -> u64 {
    store
        .snapshot(&BackupNamespace::root(), &snapshot_dir(COUNTED))
        .load_manifest()
        .unwrap()
        .unprotected()
        .get(COUNTER)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// The child: loops over every write path until killed. Appends `c <n>` to the log after an
/// increment to `n` returned.
fn child(dir: &Path) {
    let store = open(dir);
    let root = BackupNamespace::root();
    let g = store.group(&root, &group());
    let backups = store.group(&root, &backups_group());
    let counted = store.snapshot(&root, &snapshot_dir(COUNTED));
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("committed.log"))
        .unwrap();
    std::fs::write(dir.join("ready"), b"").unwrap();
    let owners: [Authid; 2] = ["root@pam".parse().unwrap(), "backup@pbs".parse().unwrap()];
    let mut round: u64 = 0;
    loop {
        round += 1;
        // A new backup, newer than every other (times from the clock, in whole seconds).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let time = BackupTime::from_epoch(now + round as i64).unwrap();
        if let Ok(mut w) = backups.start_backup(&owners[0], time) {
            let _ = w.add_blob(
                "qemu-server.conf.blob",
                format!("round {round}\n").as_bytes(),
                Encryption::None,
            );
            let image: Vec<u8> = (0..100_000u32).map(|i| (i as u64 ^ round) as u8).collect();
            let _ = w.add_fixed_archive("drive-scsi0.img.fidx", &image, 32_768, Encryption::None);
            let _ = w.finish();
        }
        let updated = counted.update_manifest(|m| {
            let next = m
                .unprotected()
                .get(COUNTER)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
                + 1;
            m.unprotected_mut()
                .insert(COUNTER.to_owned(), serde_json::Value::from(next));
            m.set_notes(Some(&format!("note of round {round}\n").repeat(20)));
            Ok(())
        });
        if let Ok(manifest) = updated {
            let n = manifest
                .unprotected()
                .get(COUNTER)
                .and_then(serde_json::Value::as_u64)
                .unwrap();
            writeln!(log, "c {n}").unwrap();
        }
        let _ = counted.set_protected(round % 2 == 0);
        let _ = g.set_owner(&owners[(round % 2) as usize], ExistingOwner::Replace);
        let _ = g.set_notes(&format!("group notes {round}\n").repeat(50));
        // Keep the group small: remove the oldest unprotected backups beyond ten.
        if round % 5 == 0 {
            let _ = g.prune(
                &"keep-last=10".parse().unwrap(),
                &jiff::tz::TimeZone::UTC,
                PruneRun::Remove,
            );
        }
    }
}

#[test]
fn writes_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_VAR) {
        child(Path::new(&dir));
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let store = DataStore::builder("killwrites", dir.path().join("store"))
        .lock_root(dir.path().join("locks"))
        .sync_level(SyncLevel::None)
        .chunk_prefix_dirs(false)
        .create()
        .unwrap();
    let root = BackupNamespace::root();
    let owner: Authid = "root@pam".parse().unwrap();
    for time in [COUNTED, PINNED] {
        let mut w = store
            .group(&root, &group())
            .start_backup(&owner, BackupTime::from_epoch(time).unwrap())
            .unwrap();
        w.add_blob("qemu-server.conf.blob", b"base\n", Encryption::None)
            .unwrap();
        w.finish().unwrap();
    }
    store
        .snapshot(&root, &snapshot_dir(PINNED))
        .set_protected(true)
        .unwrap();
    drop(store);
    std::fs::write(dir.path().join("committed.log"), b"").unwrap();

    let exe: PathBuf = std::env::current_exe().unwrap();
    let mut seed = started.elapsed().as_nanos() as u64 | 1;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut kills, mut repaired_temp, mut unfinished_seen, mut max_counter) = (0, 0, 0, 0);
    while kills < MIN_KILLS {
        assert!(
            started.elapsed() < TIME_BUDGET,
            "only {kills} kills in {TIME_BUDGET:?}"
        );
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
            assert!(child.try_wait().unwrap().is_none(), "the child ended early");
            assert!(
                waiting.elapsed() < Duration::from_secs(10),
                "the child never got ready"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_micros(rand() % 30_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;

        let store = open(dir.path());
        let repair = store
            .fsck(&FsckOptions {
                repair: true,
                ..FsckOptions::default()
            })
            .unwrap();
        assert!(
            repair.errors.is_empty(),
            "kill {kills}: {:?}",
            repair.errors
        );
        repaired_temp += repair.temp_files.len();
        let report = store
            .verify(&VerifyScope::Store, &VerifyOptions::default())
            .unwrap();
        for s in &report.snapshots {
            assert!(
                matches!(s.outcome, SnapshotOutcome::Ok | SnapshotOutcome::Unfinished),
                "kill {kills}: {} {:?} {:?}",
                s.relative_path(),
                s.outcome,
                s.problems
            );
            if s.outcome == SnapshotOutcome::Unfinished {
                assert_ne!(
                    s.snapshot,
                    snapshot_dir(COUNTED),
                    "kill {kills}: the updated manifest is gone: {:?}",
                    std::fs::read_dir(dir.path().join("store").join(s.relative_path()))
                        .map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>())
                );
                unfinished_seen += 1;
                // An interrupted backup is removed as PBS's cleanup would: it never finished.
                store.snapshot(&s.ns, &s.snapshot).destroy().unwrap();
            }
        }
        let g = store.group(&root, &group());
        g.owner()
            .unwrap_or_else(|e| panic!("kill {kills}: owner torn: {e}"));
        g.notes()
            .unwrap_or_else(|e| panic!("kill {kills}: notes torn: {e}"));
        let pinned = store.snapshot(&root, &snapshot_dir(PINNED));
        assert!(
            pinned.is_protected().unwrap(),
            "kill {kills}: pinned lost protection"
        );
        // No committed increment lost and nothing invented: the counter is at least the last
        // value the child saw returned and never goes back; it is at most one more than what was
        // known before this child ran (an update may land just before the kill, unlogged).
        let committed: u64 = std::fs::read_to_string(dir.path().join("committed.log"))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("c ").and_then(|n| n.parse().ok()))
            .max()
            .unwrap_or(0);
        let now = counter(&store);
        assert!(
            now >= committed && now >= max_counter,
            "kill {kills}: counter {now}, last committed {committed}, before {max_counter}"
        );
        assert!(
            now <= committed.max(max_counter) + 1,
            "kill {kills}: counter {now} ran ahead of every increment (committed {committed})"
        );
        max_counter = now;
        let again = store.fsck(&FsckOptions::default()).unwrap();
        assert!(again.temp_files.is_empty(), "kill {kills}: {again:?}");
    }
    eprintln!(
        "{kills} kills in {:.1?}: counter reached {max_counter} with no committed increment lost; \
         {repaired_temp} temporary files removed by fsck; {unfinished_seen} interrupted backups \
         found unfinished and removed; 0 torn files",
        started.elapsed()
    );
}
