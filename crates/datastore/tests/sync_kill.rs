//! Crash safety of sync: a child process (this test binary, re-executed) syncs a small store
//! into a fresh target and is killed with SIGKILL at a random moment, at least 50 times. After
//! every kill, each finished target snapshot must read back completely (content verify: the
//! manifest is written last, so a finished snapshot never lacks a file or chunk); then a full
//! run in this process must give the target an uninterrupted sync gives: the same snapshots, the
//! same files byte for byte, the same owners and notes, verify clean, and a further run copies
//! nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keepsake_backend::SyncLevel;
use keepsake_datastore::{
    ChunkVerification, DataStore, Encryption, SnapshotOutcome, SyncOptions, SyncProtection,
    VerifyOptions, VerifyScope,
};
use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};

const CHILD_VAR: &str = "KEEPSAKE_SYNC_KILL_TEST_DIR";
const TEST_NAME: &str = "a_sync_killed_anywhere_is_completed_by_the_next_run";
const MIN_INTERRUPTED: usize = 50;
const TIME_BUDGET: Duration = Duration::from_secs(55);
const BASE: i64 = 1_717_600_000;
const DAY: i64 = 86_400;

/// A small xorshift generator: the test needs variety, not cryptographic randomness.
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
}

/// Protection copied too: a kill between a manifest and its marker must be completed as well.
fn options() -> SyncOptions {
    let mut options = SyncOptions::default();
    options.protection = SyncProtection::Copy;
    options
}

fn ns(s: &str) -> BackupNamespace {
    s.parse().unwrap()
}

fn open_source(dir: &Path) -> DataStore {
    DataStore::builder("source", dir.join("source"))
        .lock_root(dir.join("source-locks"))
        .sync_level(SyncLevel::None)
        .open()
        .unwrap()
}

fn open_target(round: &Path) -> DataStore {
    DataStore::builder("target", round.join("target"))
        .lock_root(round.join("locks"))
        .sync_level(SyncLevel::None)
        .open()
        .unwrap()
}

fn create_target(round: &Path) -> DataStore {
    DataStore::builder("target", round.join("target"))
        .lock_root(round.join("locks"))
        .sync_level(SyncLevel::None)
        .chunk_prefix_dirs(false)
        .create()
        .unwrap()
}

fn backup(store: &DataStore, n: &str, g: &str, day: i64) {
    let owner: Authid = "root@pam".parse().unwrap();
    let handle = store.group(&ns(n), &g.parse::<BackupGroup>().unwrap());
    let time = BackupTime::from_epoch(BASE + day * DAY).unwrap();
    let mut w = handle.start_backup(&owner, time).unwrap();
    w.add_blob("qemu-server.conf.blob", g.as_bytes(), Encryption::None)
        .unwrap();
    // Eight 16 KiB chunks, half of them shared with the other days of the group.
    let image: Vec<u8> = (0..131_072u32)
        .map(|i| {
            let salt = if (i / 16_384) % 2 == 0 { 0 } else { day as u32 };
            ((i % 241) ^ salt ^ g.len() as u32) as u8
        })
        .collect();
    w.add_fixed_archive("drive-scsi0.img.fidx", &image, 16_384, Encryption::None)
        .unwrap();
    let chunks: Vec<Vec<u8>> = (0..4)
        .map(|i| vec![(i as u8) ^ (day as u8) ^ (g.len() as u8); 3_000])
        .collect();
    w.add_dynamic_archive("root.pxar.didx", chunks, Encryption::None)
        .unwrap();
    w.finish().unwrap();
}

fn make_source(dir: &Path) -> DataStore {
    let store = DataStore::builder("source", dir.join("source"))
        .lock_root(dir.join("source-locks"))
        .sync_level(SyncLevel::None)
        .chunk_prefix_dirs(false)
        .create()
        .unwrap();
    store.create_namespace(&ns("a")).unwrap();
    for day in 0..2 {
        backup(&store, "", "vm/100", day);
        backup(&store, "", "ct/2000", day);
        backup(&store, "a", "host/web", day);
    }
    let vm = store.group(&ns(""), &"vm/100".parse().unwrap());
    vm.set_notes("notes\n").unwrap();
    for info in vm.list_backups().unwrap() {
        store
            .snapshot(&ns(""), &info.snapshot)
            .set_protected(true)
            .unwrap();
    }
    store
}

/// Everything a sync makes, by path: every file of every snapshot (finished or not), each
/// group's owner and notes.
fn contents(store: &DataStore) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for n in store.iter_namespaces_recursive(&ns(""), None).unwrap() {
        let n = n.unwrap();
        for group in store.iter_groups(&n).unwrap() {
            let group = group.unwrap();
            let g = format!("{n}:{}", group.name());
            out.insert(
                format!("{g}/owner"),
                group.owner().unwrap().to_string().into_bytes(),
            );
            if let Some(notes) = group.notes().unwrap() {
                out.insert(format!("{g}/notes"), notes.into_bytes());
            }
            for info in group.list_backups().unwrap() {
                let snap = store.snapshot(&n, &info.snapshot);
                let mut files = info.files.clone();
                if info.is_finished() {
                    files.push(keepsake_hierarchy::MANIFEST_BLOB_NAME.to_owned());
                }
                files.sort();
                files.dedup();
                let protected = if info.protected {
                    b"protected".to_vec()
                } else {
                    Vec::new()
                };
                out.insert(format!("{n}:{}", info.snapshot), protected);
                for file in files {
                    out.insert(
                        format!("{n}:{}/{file}", info.snapshot),
                        snap.read_file(&file).unwrap(),
                    );
                }
            }
        }
    }
    out
}

/// Asserts equal contents, naming the paths that differ (not their bytes).
fn same(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>, what: &str) {
    let differ: Vec<&String> = got
        .keys()
        .chain(want.keys())
        .filter(|k| got.get(*k) != want.get(*k))
        .collect();
    assert!(differ.is_empty(), "{what}: differ: {differ:?}");
}

/// Every finished snapshot reads back completely; unfinished ones (an interrupted copy) are
/// allowed, and there may be none at all yet.
fn finished_are_complete(store: &DataStore, what: &str) {
    let mut options = VerifyOptions::default();
    options.chunks = ChunkVerification::Content;
    let report = store.verify(&VerifyScope::Store, &options).unwrap();
    assert!(
        report.errors.is_empty() && report.interrupted.is_empty(),
        "{what}: {report:#?}"
    );
    for s in &report.snapshots {
        assert!(
            matches!(s.outcome, SnapshotOutcome::Ok | SnapshotOutcome::Unfinished),
            "{what}: {s:#?}"
        );
    }
    assert_eq!(
        (report.content.missing, report.content.corrupt),
        (0, 0),
        "{what}"
    );
}

fn verify_content(store: &DataStore, what: &str) {
    let mut options = VerifyOptions::default();
    options.chunks = ChunkVerification::Content;
    let report = store.verify(&VerifyScope::Store, &options).unwrap();
    assert!(report.is_ok(), "{what}: {report:#?}");
    assert_eq!(
        (report.content.missing, report.content.corrupt),
        (0, 0),
        "{what}"
    );
}

/// The child: sync into `<round>/target`, saying when it starts and when it is done.
fn child(dir: &Path, round: &Path) {
    let source = open_source(dir);
    let target = open_target(round);
    std::fs::write(round.join("ready"), b"").unwrap();
    target.sync_from(&source, &options()).unwrap();
    std::fs::write(round.join("done"), b"").unwrap();
}

#[test]
fn a_sync_killed_anywhere_is_completed_by_the_next_run() {
    if let Ok(dirs) = std::env::var(CHILD_VAR) {
        let (dir, round) = dirs.split_once('\n').unwrap();
        child(Path::new(dir), Path::new(round));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = make_source(dir.path());

    // The reference: an uninterrupted sync, timed to spread the kills over a whole run.
    let reference_dir = dir.path().join("reference");
    let reference = create_target(&reference_dir);
    let started = Instant::now();
    let full = reference.sync_from(&source, &options()).unwrap();
    // The kills are spread over about one run; the span shrinks when a kill comes after the
    // child's sync ended and grows slowly when it lands inside, so that most kills interrupt.
    let mut span = started.elapsed().max(Duration::from_millis(5));
    assert_eq!(full.snapshots, 6);
    let want = contents(&reference);
    verify_content(&reference, "reference");

    let exe: PathBuf = std::env::current_exe().unwrap();
    let mut rng = Rng::seeded();
    let begun = Instant::now();
    let (mut rounds, mut interrupted, mut replaced) = (0usize, 0usize, 0usize);
    while interrupted < MIN_INTERRUPTED {
        assert!(
            begun.elapsed() < TIME_BUDGET,
            "only {interrupted} of {rounds} kills interrupted a sync within {TIME_BUDGET:?}"
        );
        rounds += 1;
        let round = dir.path().join(format!("round-{rounds}"));
        drop(create_target(&round));
        let mut child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--test-threads=1"])
            .env(
                CHILD_VAR,
                format!("{}\n{}", dir.path().display(), round.display()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let waiting = Instant::now();
        while !round.join("ready").exists() {
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
        let delay = rng.next() % (span.as_micros() as u64).max(1);
        std::thread::sleep(Duration::from_micros(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if round.join("done").exists() {
            span = span.mul_f64(0.8);
        } else {
            interrupted += 1;
            span = span.mul_f64(1.05);
        }

        // What the kill left: finished snapshots are complete.
        let target = open_target(&round);
        finished_are_complete(&target, &format!("round {rounds}, after the kill"));
        // The next run completes it into exactly the reference.
        let report = target
            .sync_from(&source, &options())
            .unwrap_or_else(|e| panic!("round {rounds}: {e:?}"));
        replaced += report.replaced_unfinished;
        same(&contents(&target), &want, &format!("round {rounds}"));
        verify_content(&target, &format!("round {rounds}, completed"));
        let again = target.sync_from(&source, &options()).unwrap();
        assert_eq!(
            (again.snapshots, again.chunks, again.replaced_unfinished),
            (0, 0, 0),
            "round {rounds}"
        );
        drop(target);
        std::fs::remove_dir_all(&round).unwrap();
    }
    // Some kills landed inside a snapshot's copy (after its first file, before its manifest).
    assert!(
        replaced > 0,
        "no kill left an unfinished snapshot in {rounds} rounds"
    );
    eprintln!(
        "sync kill test: {rounds} kills, {interrupted} inside a sync, {replaced} unfinished \
         snapshots replaced, {:?}",
        begun.elapsed()
    );
}
