//! Attacks on garbage collection (issue 19), local and S3, as a hostile operator or an unlucky
//! schedule would make them. Every test here states what must hold; the ones that fail on the
//! current code are marked `#[ignore = "finding: ..."]` so the suite stays green until the
//! library is fixed (run them with `--ignored`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use keepsake_backend::Backend;
use keepsake_datastore::{
    ChunkVerification, DataStore, Encryption, GcMode, GcOptions, VerifyOptions, VerifyScope,
    chunk_path,
};
use keepsake_hierarchy::{Authid, BackupNamespace, BackupTime};
use rustix::fs::FlockOperation;

const HELPER_VAR: &str = "KEEPSAKE_BREAK_GC_HELPER";
const HELPER_TEST: &str = "lock_helper";

/// Not a test of its own: the child process that holds PBS's shared process lock (this binary,
/// re-executed with [`HELPER_VAR`] set to the path of `.lock`), as a PBS backup writer does,
/// until its stdin closes.
#[test]
fn lock_helper() {
    let Ok(path) = std::env::var(HELPER_VAR) else {
        return;
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    rustix::fs::fcntl_lock(file.as_fd(), FlockOperation::NonBlockingLockShared).unwrap();
    let out = std::io::stdout();
    writeln!(out.lock(), "held").unwrap();
    out.lock().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// Starts the helper on `lock_file` and waits until it holds the lock.
fn pbs_writer_elsewhere(lock_file: &Path) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([HELPER_TEST, "--exact", "--test-threads=1", "--quiet"])
        .env(HELPER_VAR, lock_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.as_mut().unwrap());
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "helper ended");
        if line.trim() == "held" {
            break;
        }
    }
    child
}

const DAY: i64 = 24 * 3600;
const T0: i64 = 1_700_000_000;

/// The S3 tests' cutoff in seconds: bucket objects cannot be aged, so the tests wait instead.
const CUTOFF: u64 = 2;

fn owner() -> Authid {
    "root@pam".parse().unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn pieces(seed: u8, chunks: usize) -> Vec<Vec<u8>> {
    (0..chunks)
        .map(|i| vec![seed.wrapping_add(i as u8); 1000 + i])
        .collect()
}

/// A finished snapshot `group` at `time` with one dynamic archive `archive`.
fn backup(store: &DataStore, group: &str, time: i64, archive: &str, seed: u8, chunks: usize) {
    let group = store.group(&BackupNamespace::root(), &group.parse().unwrap());
    let mut w = group
        .start_backup(&owner(), BackupTime::from_epoch(time).unwrap())
        .unwrap();
    w.add_dynamic_archive(archive, pieces(seed, chunks), Encryption::None)
        .unwrap();
    w.finish().unwrap();
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

/// As if two days passed without a GC.
fn age_all(store_root: &Path) {
    for f in chunk_files(store_root) {
        age(&f, now() - 2 * DAY);
    }
}

/// The problems a content verify of the whole store finds (empty: every referenced chunk is
/// there and sound).
fn verify_problems(store: &DataStore) -> Vec<String> {
    let report = store
        .verify(
            &VerifyScope::Store,
            &VerifyOptions::default().chunks(ChunkVerification::Content),
        )
        .unwrap();
    let mut problems: Vec<String> = report.problems().map(|(_, p)| p.to_string()).collect();
    if report.content.missing > 0 {
        problems.push(format!("{} chunks missing", report.content.missing));
    }
    problems
}

fn wait_past_cutoff() {
    std::thread::sleep(Duration::from_secs(CUTOFF + 2));
}

/// The writer accepts an archive name that starts with a dot (`check_archive_name` only asks
/// for a plain file name), verify and restore read it through the manifest, but GC's walk skips
/// every name that starts with a dot, as PBS's does (PBS's API never lets such a name in).
#[test]
#[ignore = "finding: an archive named `.x.didx` is written but never marked; GC removes its chunks"]
fn local_an_archive_whose_name_starts_with_a_dot_keeps_its_chunks() {
    let t = common::local();
    backup(&t.store, "vm/1", T0, ".hidden.pxar.didx", 7, 4);
    assert!(verify_problems(&t.store).is_empty());
    age_all(&t.root());
    let report = t.store.garbage_collect(&GcOptions::default()).unwrap();
    assert_eq!(
        verify_problems(&t.store),
        Vec::<String>::new(),
        "GC removed chunks of a finished snapshot's archive: {report:?}"
    );
}

/// The same on S3: the cache's walk and the bucket's listing both skip hidden names.
#[test]
#[ignore = "finding: S3 GC deletes the chunks of an archive named `.x.didx` from the bucket"]
fn s3_an_archive_whose_name_starts_with_a_dot_keeps_its_chunks() {
    let t = common::cached_memory();
    let cached = t.cached.clone().unwrap();
    backup(&t.store, "vm/1", T0, ".hidden.pxar.didx", 7, 4);
    assert!(verify_problems(&t.store).is_empty());
    wait_past_cutoff();
    let report = t
        .store
        .garbage_collect_s3(&cached, &GcOptions::default().atime_cutoff_secs(CUTOFF))
        .unwrap();
    assert_eq!(
        verify_problems(&t.store),
        Vec::<String>::new(),
        "GC deleted chunks of a finished snapshot's archive: {report:?}"
    );
}

/// S3 GC reads an index from the cache when the cache's record names the listed ETag and size.
/// The record lives in an extended attribute of the cache file (or beside it), so a cache copy
/// rewritten in place (`cp other.didx this.didx` keeps the inode and its attributes) with
/// another valid index of the same size still counts as the bucket's version: the bucket's
/// index is never read and its chunks are deleted from the bucket.
#[test]
#[ignore = "finding: a cache copy rewritten in place decides the bucket's deletions"]
fn s3_a_cache_copy_rewritten_in_place_does_not_decide_the_bucket_sweep() {
    let t = common::cached_memory();
    let cached = t.cached.clone().unwrap();
    // Same chunk count: both indexes have the same size.
    backup(&t.store, "vm/1", T0, "root.pxar.didx", 1, 4);
    backup(&t.store, "vm/2", T0, "root.pxar.didx", 100, 4);
    let time = BackupTime::from_epoch(T0).unwrap().to_string();
    let one = t.root().join(format!("vm/1/{time}/root.pxar.didx"));
    let two = t.root().join(format!("vm/2/{time}/root.pxar.didx"));
    let bucket_index = cached
        .remote()
        .read(&keepsake_backend::BackendPath::new(&format!("vm/1/{time}/root.pxar.didx")).unwrap())
        .unwrap()
        .data;
    let other = std::fs::read(&two).unwrap();
    assert_eq!(bucket_index.len(), other.len());
    assert_ne!(bucket_index, other);
    // In place: same inode, same attributes.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&one)
        .unwrap();
    file.write_all(&other).unwrap();
    drop(file);
    wait_past_cutoff();

    let report = t
        .store
        .garbage_collect_s3(&cached, &GcOptions::default().atime_cutoff_secs(CUTOFF))
        .unwrap();
    let index = keepsake_manifest::index::IndexFile::from_bytes(bucket_index).unwrap();
    use keepsake_manifest::index::ChunkIndex;
    let lost: Vec<String> = index
        .chunks()
        .filter(|c| {
            !cached
                .remote()
                .chunk_exists(&keepsake_backend::ChunkDigest::new(*c.digest))
                .unwrap()
        })
        .map(|c| hex::encode(c.digest))
        .collect();
    assert_eq!(
        lost,
        Vec::<String>::new(),
        "chunks of the bucket's vm/1 index were deleted: {report:?}"
    );
}

/// PBS's process lock is a record lock on `<store>/.lock`; GC opens it with `O_CREAT`. A
/// `.lock` removed (or replaced) while a PBS writer in another process holds it is created
/// anew, GC locks the new inode exclusively and runs beside the writer, whose reused chunks
/// the sweep may remove. A store always has `.lock` (init makes it): a missing one, or one that
/// is not the file others locked, should refuse GC.
#[test]
#[ignore = "finding: GC re-creates a removed `.lock` and runs beside the writer still holding the old one"]
fn gc_refuses_when_the_lock_file_was_removed_under_a_writer() {
    let t = common::local();
    let lock = t.root().join(".lock");
    let mut writer = pbs_writer_elsewhere(&lock);
    // Held: a GC is refused.
    let fresh = DataStore::builder("teststore", t.root())
        .lock_root(t.dir.path().join("locks"))
        .open()
        .unwrap();
    assert!(fresh.garbage_collect(&GcOptions::default()).is_err());
    drop(fresh);

    std::fs::remove_file(&lock).unwrap();
    let fresh = DataStore::builder("teststore", t.root())
        .lock_root(t.dir.path().join("locks"))
        .open()
        .unwrap();
    let result = fresh.garbage_collect(&GcOptions::default());
    drop(writer.stdin.take());
    writer.wait().unwrap();
    assert!(
        result.is_err(),
        "GC ran while a writer of another process held the store's (removed) lock: {result:?}"
    );
}

/// A dry run counts as removed what a run would remove. A run removes the old `.bad` copies of
/// a referenced chunk that is present (marking touches bad copies only for a missing chunk);
/// the dry run keeps every bad copy of a marked digest.
#[test]
#[ignore = "finding: a dry run does not count the bad copies a run removes"]
fn a_dry_run_counts_the_bad_copies_a_run_removes() {
    let t = common::local();
    backup(&t.store, "vm/1", T0, "root.pxar.didx", 9, 3);
    let good = chunk_files(&t.root())
        .into_iter()
        .find(|f| f.file_name().unwrap().len() == 64)
        .unwrap();
    let bad = good.with_file_name(format!(
        "{}.0.bad",
        good.file_name().unwrap().to_string_lossy()
    ));
    std::fs::copy(&good, &bad).unwrap();
    age_all(&t.root());

    let dry = t
        .store
        .garbage_collect(&GcOptions::default().mode(GcMode::DryRun))
        .unwrap();
    let run = t.store.garbage_collect(&GcOptions::default()).unwrap();
    assert!(!bad.exists(), "the run removed the bad copy");
    assert_eq!(
        dry.status.removed_bad, run.status.removed_bad,
        "dry run {dry:?}\nrun {run:?}"
    );
}

#[allow(dead_code)]
fn chunk_of(root: &Path, digest: &[u8; 32]) -> PathBuf {
    root.join(chunk_path(digest))
}
