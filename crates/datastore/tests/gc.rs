//! Garbage collection and the writer's safety beside it: PBS's process lock on `.lock` (a
//! writer's shared lock keeps another process's GC out; another process's shared lock keeps
//! this GC out, naming its pid), atime marks, the cutoff, `.bad` chunks, `.gc-status` in PBS's
//! format, a backup running in the same process during GC, and GC killed at random points.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keepsake_backend::SyncLevel;
use keepsake_datastore::{DataStore, Encryption, Error, ProcessLockMode};
use keepsake_hierarchy::{Authid, BackupNamespace, BackupTime};
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
    dir.join("store").join(keepsake_datastore::chunk_path(digest))
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
    let _ = ProcessLockMode::Shared;
    let _: Option<Error> = None;
}
