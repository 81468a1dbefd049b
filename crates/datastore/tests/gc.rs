//! Garbage collection and the writer's safety beside it: PBS's process lock on `.lock` (a
//! writer's shared lock keeps another process's GC out; another process's shared lock keeps
//! this GC out, naming its pid), atime marks, the cutoff, `.bad` chunks, `.gc-status` in PBS's
//! format, a backup running in the same process during GC, and GC killed at random points.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::sync::{Arc, Mutex};

use keepsake_backend::SyncLevel;
use keepsake_datastore::{
    ChunkVerification, DataStore, Encryption, Error, GcMode, GcOptions, GcPhase, ProcessLockMode,
    VerifyOptions, VerifyScope, chunk_path,
};
use keepsake_hierarchy::{Authid, BackupNamespace, BackupTime};
use keepsake_testkit::fixture::PbsFixture;
use rustix::fs::FlockOperation;

const HELPER_VAR: &str = "KEEPSAKE_GC_TEST_HELPER";
const HELPER_TEST: &str = "lock_helper";

/// Not a test of its own: the child process the lock tests start (this binary, re-executed with
/// [`HELPER_VAR`] set to `<mode>:<path of .lock>`).
/// - `try-exclusive`: tries PBS GC's exclusive fcntl lock once, prints `busy` or `free`.
/// - `hold-shared`: takes a shared fcntl lock as a PBS writer does, prints `held`, and keeps it
///   until its stdin closes.
#[test]
fn lock_helper() {
    let Ok(spec) = std::env::var(HELPER_VAR) else {
        return;
    };
    let (mode, path) = spec.split_once(':').unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let out = std::io::stdout();
    match mode {
        "try-exclusive" => {
            let state = match rustix::fs::fcntl_lock(
                file.as_fd(),
                FlockOperation::NonBlockingLockExclusive,
            ) {
                Ok(()) => "free",
                Err(_) => "busy",
            };
            writeln!(out.lock(), "{state}").unwrap();
        }
        "hold-shared" => {
            rustix::fs::fcntl_lock(file.as_fd(), FlockOperation::NonBlockingLockShared).unwrap();
            writeln!(out.lock(), "held").unwrap();
            out.lock().flush().unwrap();
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        other => panic!("unknown helper mode {other}"),
    }
}

fn helper(mode: &str, lock_file: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([HELPER_TEST, "--exact", "--test-threads=1", "--quiet"])
        .env(HELPER_VAR, format!("{mode}:{}", lock_file.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The first line the helper prints that is one of `words` (the test harness prints its own).
fn helper_says(child: &mut std::process::Child, words: &[&str]) -> String {
    let stdout = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(stdout);
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "helper ended");
        let word = line.trim();
        if words.contains(&word) {
            return word.to_owned();
        }
    }
}

fn try_exclusive_elsewhere(lock_file: &Path) -> String {
    let mut child = helper("try-exclusive", lock_file);
    let said = helper_says(&mut child, &["busy", "free"]);
    child.wait().unwrap();
    said
}

fn new_store(dir: &Path) -> DataStore {
    DataStore::builder("gcstore", dir.join("store"))
        .lock_root(dir.join("locks"))
        .sync_level(SyncLevel::None)
        .chunk_prefix_dirs(false)
        .create()
        .unwrap()
}

fn owner() -> Authid {
    "root@pam".parse().unwrap()
}

fn lock_file(dir: &Path) -> PathBuf {
    dir.join("store").join(".lock")
}

#[test]
fn a_writer_holds_the_shared_process_lock_for_the_whole_backup() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    assert_eq!(try_exclusive_elsewhere(&lock_file(dir.path())), "free");
    let group = store.group(&BackupNamespace::root(), &"vm/100".parse().unwrap());
    let mut w = group
        .start_backup(&owner(), BackupTime::from_epoch(1_700_000_000).unwrap())
        .unwrap();
    assert_eq!(
        try_exclusive_elsewhere(&lock_file(dir.path())),
        "busy",
        "PBS's GC in another process cannot take its exclusive lock during a keepsake backup"
    );
    w.add_blob("conf.blob", b"x", Encryption::None).unwrap();
    w.finish().unwrap();
    assert_eq!(try_exclusive_elsewhere(&lock_file(dir.path())), "free");

    // An aborted backup releases it too.
    let w = group
        .start_backup(&owner(), BackupTime::from_epoch(1_700_000_100).unwrap())
        .unwrap();
    assert_eq!(try_exclusive_elsewhere(&lock_file(dir.path())), "busy");
    drop(w);
    assert_eq!(try_exclusive_elsewhere(&lock_file(dir.path())), "free");
}

#[test]
fn a_pbs_writer_in_another_process_keeps_backups_going_and_gc_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let mut pbs_writer = helper("hold-shared", &lock_file(dir.path()));
    helper_says(&mut pbs_writer, &["held"]);
    // Shared beside shared: a keepsake backup still runs.
    let group = store.group(&BackupNamespace::root(), &"vm/100".parse().unwrap());
    let mut w = group
        .start_backup(&owner(), BackupTime::from_epoch(1_700_000_000).unwrap())
        .unwrap();
    w.add_blob("conf.blob", b"x", Encryption::None).unwrap();
    w.finish().unwrap();
    drop(pbs_writer.stdin.take());
    pbs_writer.wait().unwrap();
}

/// The chunk's atime in seconds.
fn atime(path: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().atime()
}

/// Sets a file's atime and mtime to `epoch`.
fn age(path: &Path, epoch: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: epoch,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chunk_file(dir: &Path, digest: &[u8; 32]) -> PathBuf {
    dir.join("store")
        .join(keepsake_datastore::chunk_path(digest))
}

#[test]
fn reusing_a_chunk_touches_its_atime() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let first = store.insert_chunk(b"some chunk", Encryption::None).unwrap();
    let file = chunk_file(dir.path(), &first.digest);
    age(&file, 1_000_000_000);
    let again = store.insert_chunk(b"some chunk", Encryption::None).unwrap();
    assert!(again.duplicate);
    assert!(atime(&file) > 1_600_000_000, "touched");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().mtime(),
        1_000_000_000,
        "mtime left alone"
    );
}

const DAY: i64 = 24 * 3600;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Every chunk file below `.chunks`.
fn chunk_files(store_root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for prefix in std::fs::read_dir(store_root.join(".chunks")).unwrap() {
        let prefix = prefix.unwrap().path();
        if !prefix.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&prefix).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files
}

/// Ages every chunk file by `secs` (as if that much time passed without a GC).
fn age_all(store_root: &Path, epoch: i64) {
    for f in chunk_files(store_root) {
        age(&f, epoch);
    }
}

fn content_verify_clean(store: &DataStore) -> u64 {
    let report = store
        .verify(
            &VerifyScope::Store,
            &VerifyOptions::default().chunks(ChunkVerification::Content),
        )
        .unwrap();
    let problems: Vec<String> = report.problems().map(|(_, p)| p.to_string()).collect();
    assert_eq!(report.content.missing, 0, "{problems:?}");
    assert_eq!(report.content.corrupt, 0, "{problems:?}");
    assert!(report.is_ok(), "{problems:?}");
    report.content.verified
}

/// PBS's `GarbageCollectionStatus` as PBS 3.2 reads `.gc-status` (every key required, no other
/// key allowed), written here from the spec, independently of keepsake's type.
#[derive(serde::Deserialize, Debug)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[allow(dead_code)]
struct PbsGcStatus {
    upid: Option<String>,
    index_file_count: usize,
    index_data_bytes: u64,
    disk_bytes: u64,
    disk_chunks: usize,
    removed_bytes: u64,
    removed_chunks: usize,
    pending_bytes: u64,
    pending_chunks: usize,
    removed_bad: usize,
    still_bad: usize,
}

#[test]
fn gc_on_the_pbs_fixture_removes_old_unreferenced_chunks_only() {
    let fx = PbsFixture::unpack().unwrap();
    let locks = tempfile::tempdir().unwrap();
    let store = DataStore::builder("store1", fx.path())
        .lock_root(locks.path())
        .open()
        .unwrap();
    // Two days without GC: every chunk, referenced or not, is older than the cutoff.
    age_all(&fx.path(), now() - 2 * DAY);
    let old = store
        .insert_chunk(b"old and unreferenced", Encryption::None)
        .unwrap();
    age(&fx.path().join(chunk_path(&old.digest)), now() - 2 * DAY);
    let recent = store
        .insert_chunk(b"recent and unreferenced", Encryption::None)
        .unwrap();
    age(&fx.path().join(chunk_path(&recent.digest)), now() - 3600);

    let dry = store
        .garbage_collect(&GcOptions::default().mode(GcMode::DryRun))
        .unwrap();
    assert_eq!(dry.status.removed_chunks, 1, "{dry:?}");
    assert!(
        fx.path().join(chunk_path(&old.digest)).exists(),
        "a dry run removes nothing"
    );
    assert!(store.gc_status().unwrap().is_none(), "nor writes a status");

    let report = store
        .garbage_collect(&GcOptions::default().upid("UPID:test"))
        .unwrap();
    assert_eq!(report.status.removed_chunks, 1, "{report:?}");
    assert_eq!(report.status.pending_chunks, 1, "{report:?}");
    assert_eq!(report.referenced_chunks, 7);
    assert_eq!(report.missing_chunks, 0);
    // Every index on disk, the unfinished snapshot's too, as PBS walks them.
    assert_eq!(report.status.index_file_count, 8);
    assert!(!fx.path().join(chunk_path(&old.digest)).exists());
    assert!(fx.path().join(chunk_path(&recent.digest)).exists());
    assert_eq!(
        content_verify_clean(&store),
        7,
        "nothing referenced was lost"
    );

    let raw = std::fs::read(fx.path().join(".gc-status")).unwrap();
    let pbs: PbsGcStatus = serde_json::from_slice(&raw).unwrap();
    assert_eq!(pbs.removed_chunks, 1);
    assert_eq!(pbs.upid.as_deref(), Some("UPID:test"));
    assert_eq!(store.gc_status().unwrap(), Some(report.status));

    // A second run finds nothing more to remove, and the marks held.
    let again = store.garbage_collect(&GcOptions::default()).unwrap();
    assert_eq!(again.status.removed_chunks, 0);
    content_verify_clean(&store);
}

fn backup(store: &DataStore, group: &str, time: i64, seed: u8, chunks: usize) {
    let group = store.group(&BackupNamespace::root(), &group.parse().unwrap());
    let mut w = group
        .start_backup(&owner(), BackupTime::from_epoch(time).unwrap())
        .unwrap();
    let pieces: Vec<Vec<u8>> = (0..chunks)
        .map(|i| vec![seed.wrapping_add(i as u8); 1000 + i])
        .collect();
    w.add_dynamic_archive("root.pxar.didx", pieces, Encryption::None)
        .unwrap();
    w.finish().unwrap();
}

#[test]
fn bad_chunks_stay_while_referenced_and_missing_and_age_out_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    backup(&store, "vm/1", 1_700_000_000, 1, 3);
    let root = dir.path().join("store");
    // One referenced chunk set aside (missing now), one referenced chunk with a stale bad copy.
    let snapshot = store
        .group(&BackupNamespace::root(), &"vm/1".parse().unwrap())
        .list_backups()
        .unwrap()[0]
        .snapshot
        .clone();
    let index = keepsake_manifest::index::IndexFile::from_bytes(
        store
            .snapshot(&BackupNamespace::root(), &snapshot)
            .read_file("root.pxar.didx")
            .unwrap(),
    )
    .unwrap();
    use keepsake_manifest::index::ChunkIndex;
    let digests: Vec<[u8; 32]> = index.chunks().map(|c| *c.digest).collect();
    let gone = keepsake_backend::ChunkDigest::new(digests[0]);
    let kept_bad = store.backend().quarantine_chunk(&gone).unwrap();
    let healthy = keepsake_backend::ChunkDigest::new(digests[1]);
    let stale_bad = root.join(healthy.bad_path(0).as_str());
    std::fs::copy(root.join(healthy.local_path().as_str()), &stale_bad).unwrap();
    age_all(&root, now() - 2 * DAY);

    let report = store.garbage_collect(&GcOptions::default()).unwrap();
    assert_eq!(report.missing_chunks, 1);
    assert_eq!(report.status.removed_bad, 1, "{report:?}");
    assert_eq!(report.status.still_bad, 1, "{report:?}");
    assert!(root.join(kept_bad.as_str()).exists());
    assert!(!stale_bad.exists());
    assert_eq!(report.status.removed_chunks, 0);
}

#[test]
fn a_backup_in_this_process_during_marking_keeps_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let root = dir.path().join("store");
    backup(&store, "vm/1", 1_700_000_000, 1, 4);
    // An unreferenced old chunk that the concurrent backup reuses: without the touch on reuse
    // (or the shard lock against the sweep) GC would remove it under the new snapshot.
    let reused = store.insert_chunk(&[9u8; 3000], Encryption::None).unwrap();
    age_all(&root, now() - 2 * DAY);

    let during = store.clone();
    let writer: Arc<Mutex<Option<keepsake_datastore::BackupWriter>>> = Arc::default();
    let slot = Arc::clone(&writer);
    let hook: keepsake_datastore::PhaseHook = Arc::new(move |phase| {
        if phase == GcPhase::Mark {
            let group = during.group(&BackupNamespace::root(), &"vm/2".parse().unwrap());
            let mut w = group
                .start_backup(&owner(), BackupTime::from_epoch(1_700_000_500).unwrap())
                .unwrap();
            w.add_dynamic_archive(
                "root.pxar.didx",
                [vec![9u8; 3000], vec![10u8; 2000]],
                Encryption::None,
            )
            .unwrap();
            *slot.lock().unwrap() = Some(w);
        }
    });
    let report = store
        .garbage_collect(&GcOptions::default().on_phase(hook))
        .unwrap();
    // The writer's index is written only now, after the walk.
    writer.lock().unwrap().take().unwrap().finish().unwrap();
    assert!(root.join(chunk_path(&reused.digest)).exists(), "{report:?}");
    assert_eq!(report.status.removed_chunks, 0, "{report:?}");
    content_verify_clean(&store);
}

#[test]
fn another_process_holding_the_shared_lock_makes_gc_refuse_naming_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let mut pbs_writer = helper("hold-shared", &lock_file(dir.path()));
    helper_says(&mut pbs_writer, &["held"]);
    let err = store.garbage_collect(&GcOptions::default()).unwrap_err();
    match err {
        Error::ProcessLocked {
            wanted, held, pid, ..
        } => {
            assert_eq!(wanted, ProcessLockMode::Exclusive);
            assert_eq!(held, ProcessLockMode::Shared);
            assert_eq!(pid, Some(pbs_writer.id() as i32));
        }
        other => panic!("{other:?}"),
    }
    drop(pbs_writer.stdin.take());
    pbs_writer.wait().unwrap();
    // Free again: GC runs, and a GC of this process refuses a second one meanwhile is covered
    // by the lock object (one per file).
    store.garbage_collect(&GcOptions::default()).unwrap();
}

#[test]
fn a_writer_in_this_process_does_not_keep_gc_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let group = store.group(&BackupNamespace::root(), &"vm/1".parse().unwrap());
    let mut w = group
        .start_backup(&owner(), BackupTime::from_epoch(1_700_000_000).unwrap())
        .unwrap();
    w.add_dynamic_archive("root.pxar.didx", [vec![1u8; 100]], Encryption::None)
        .unwrap();
    let report = store.garbage_collect(&GcOptions::default()).unwrap();
    assert!(report.cutoff <= report.started - keepsake_datastore::DEFAULT_ATIME_CUTOFF_SECS);
    // Another process still sees the shared lock after the GC gave its exclusive one back.
    assert_eq!(try_exclusive_elsewhere(&lock_file(dir.path())), "busy");
    w.finish().unwrap();
    assert_eq!(try_exclusive_elsewhere(&lock_file(dir.path())), "free");
}

const KILL_VAR: &str = "KEEPSAKE_GC_KILL_STORE";
const KILL_TEST: &str = "gc_killed_at_random_points_never_loses_a_referenced_chunk";
const MIN_KILLS: usize = 50;

fn open_kill_store(dir: &Path) -> DataStore {
    DataStore::builder("killstore", dir.join("store"))
        .lock_root(dir.join("locks"))
        .sync_level(SyncLevel::None)
        .open()
        .unwrap()
}

/// The child: over and over, two days pass (every chunk ages), unreferenced chunks appear, and
/// GC runs; it is killed at a random moment.
fn gc_forever(dir: &Path) {
    let store = open_kill_store(dir);
    let root = dir.join("store");
    let mut round = 0u32;
    loop {
        age_all(&root, now() - 2 * DAY);
        for i in 0..20u32 {
            let data = format!("garbage {round} {i}").repeat(50);
            let c = store
                .insert_chunk(data.as_bytes(), Encryption::None)
                .unwrap();
            age(&root.join(chunk_path(&c.digest)), now() - 2 * DAY);
        }
        store
            .garbage_collect(&GcOptions::default().threads(2))
            .unwrap();
        round += 1;
    }
}

#[test]
fn gc_killed_at_random_points_never_loses_a_referenced_chunk() {
    if let Ok(dir) = std::env::var(KILL_VAR) {
        gc_forever(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    // Snapshots sharing chunks, in two namespaces.
    let ns = store.create_namespace(&"prod".parse().unwrap()).unwrap();
    for (i, group) in ["vm/1", "vm/2", "ct/3"].iter().enumerate() {
        for t in 0..4 {
            backup(
                &store,
                group,
                1_700_000_000 + t * 100,
                (i * 7 + t as usize) as u8,
                12,
            );
        }
        let g = store.group(&ns, &group.parse().unwrap());
        let mut w = g
            .start_backup(&owner(), BackupTime::from_epoch(1_700_000_000).unwrap())
            .unwrap();
        w.add_fixed_archive(
            "disk.img.fidx",
            &vec![i as u8 + 1; 300_000],
            65_536,
            Encryption::None,
        )
        .unwrap();
        w.finish().unwrap();
    }
    let expected = content_verify_clean(&store);
    drop(store);

    let exe = std::env::current_exe().unwrap();
    let mut seed = (now() as u64) ^ u64::from(std::process::id()) | 1;
    let mut kills = 0;
    while kills < MIN_KILLS {
        let mut child = Command::new(&exe)
            .args([KILL_TEST, "--exact", "--test-threads=1", "--quiet"])
            .env(KILL_VAR, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(std::time::Duration::from_micros(5_000 + seed % 150_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let store = open_kill_store(dir.path());
        assert_eq!(
            content_verify_clean(&store),
            expected,
            "after kill {kills}: every referenced chunk is there and intact"
        );
    }
    // And the garbage does go: a GC that runs to the end removes what the children left.
    let store = open_kill_store(dir.path());
    assert!(
        store.gc_status().unwrap().is_some(),
        "the children got as far as finishing GCs between the kills"
    );
    age_all(&dir.path().join("store"), now() - 2 * DAY);
    let report = store.garbage_collect(&GcOptions::default()).unwrap();
    assert_eq!(report.status.pending_chunks, 0, "{report:?}");
    assert_eq!(report.referenced_chunks, expected);
    content_verify_clean(&store);
}

/// A prefix folder of `.chunks` that is a symlink out of the store: the sweep never follows it
/// (nothing outside is removed, however old and chunk-like), and GC fails saying where, rather
/// than passing over part of the store. A `.chunks` that is itself a symlink fails GC too.
#[test]
fn gc_never_follows_a_symlink_out_of_the_chunk_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let victim = outside.join("ab".repeat(32));
    std::fs::write(&victim, b"precious").unwrap();
    age(&victim, now() - 10 * 86_400);
    let chunks = dir.path().join("store/.chunks");
    std::os::unix::fs::symlink(&outside, chunks.join("abab")).unwrap();

    let error = store.garbage_collect(&GcOptions::default()).unwrap_err();
    assert!(
        error.to_string().contains("abab"),
        "the error names the folder: {error}"
    );
    assert!(victim.exists(), "nothing outside the store is removed");
    assert!(
        store.gc_status().unwrap().is_none(),
        "a failed GC records no status"
    );

    std::fs::remove_file(chunks.join("abab")).unwrap();
    std::fs::rename(&chunks, dir.path().join("real-chunks")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("real-chunks"), &chunks).unwrap();
    assert!(store.garbage_collect(&GcOptions::default()).is_err());
    assert!(victim.exists());
}
