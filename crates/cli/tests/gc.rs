//! `keepsake gc` through the real binary on the PBS fixture: a dry run changes nothing, a run
//! removes an old unreferenced chunk, keeps every referenced one (even when all are old) and
//! writes `.gc-status`, and `verify --read-data` afterwards is clean; `status` reports the result.

mod common;

use std::fs::{File, FileTimes};
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::Store;

/// Sets every chunk's atime and mtime two days back: a store nobody collected for a while.
fn age_chunks(root: &Path) {
    let old = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    let times = FileTimes::new().set_accessed(old).set_modified(old);
    for prefix in std::fs::read_dir(root.join(".chunks")).unwrap() {
        let prefix = prefix.unwrap().path();
        if !prefix.is_dir() {
            continue;
        }
        for chunk in std::fs::read_dir(prefix).unwrap() {
            let chunk = chunk.unwrap().path();
            File::options()
                .write(true)
                .open(&chunk)
                .unwrap()
                .set_times(times)
                .unwrap();
        }
    }
}

#[test]
fn gc_removes_old_garbage_and_keeps_what_is_referenced() {
    let store = Store::fixture();
    let garbage = store
        .path
        .join(".chunks/abcd")
        .join(format!("abcd{}", "0".repeat(60)));
    std::fs::create_dir_all(garbage.parent().unwrap()).unwrap();
    std::fs::write(&garbage, b"not a chunk anyone references").unwrap();
    // Reading every file (to compare) moves atimes on a relatime mount: age after reading.
    let before = store.contents();
    age_chunks(&store.path);
    let dry = store.run(&["--json", "gc", "--dry-run"]).json();
    assert_eq!(dry["dry-run"], true, "{dry}");
    assert_eq!(dry["status"]["removed-chunks"], 1, "{dry}");
    assert_eq!(store.contents(), before, "a dry run changes nothing");
    age_chunks(&store.path);

    let doc = store.run(&["--json", "gc"]).json();
    assert_eq!(doc["status"]["removed-chunks"], 1, "{doc}");
    assert_eq!(doc["referenced-chunks"], 7, "{doc}");
    assert_eq!(doc["missing-chunks"], 0, "{doc}");
    assert!(!garbage.exists());
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.path.join(".gc-status")).unwrap()).unwrap();
    assert_eq!(status["removed-chunks"], 1);

    let verify = store.run(&["--json", "verify", "--read-data"]).json();
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["content"]["verified"], 7);

    let text = store.run(&["gc"]).ok().to_owned();
    assert!(text.contains("removed: 0 chunks"), "{text}");

    let status = store.run(&["--json", "status"]).json();
    assert_eq!(status["chunk-count"], 7, "{status}");
    assert_eq!(status["index-count"], 8, "{status}");
    assert!(status["logical-bytes"].as_u64().unwrap() > status["chunk-bytes"].as_u64().unwrap());
    assert!(status["dedup-factor"].as_f64().unwrap() > 1.0, "{status}");
    assert_eq!(status["last-gc"]["removed-chunks"], 0, "{status}");
    assert!(store.run(&["status"]).ok().contains("deduplication factor"));
}

/// A backup holding PBS's process lock (shared, on `.lock`) keeps `gc` out: at once by default
/// (exit code 4, `locked`, nothing removed), and with `--lock-wait` until the backup ends.
#[test]
fn gc_beside_a_running_backup_fails_locked_or_waits_with_lock_wait() {
    use std::os::fd::AsFd;
    use std::time::Instant;

    let store = Store::fixture();
    let garbage = store
        .path
        .join(".chunks/abcd")
        .join(format!("abcd{}", "1".repeat(60)));
    std::fs::create_dir_all(garbage.parent().unwrap()).unwrap();
    std::fs::write(&garbage, b"garbage").unwrap();
    age_chunks(&store.path);

    // A PBS writer's lock: a shared open-file-description fcntl lock, which another process
    // (the binary) sees as busy.
    let lock = File::options()
        .read(true)
        .write(true)
        .open(store.path.join(".lock"))
        .unwrap();
    rustix::fs::fcntl_lock(
        lock.as_fd(),
        rustix::fs::FlockOperation::NonBlockingLockShared,
    )
    .unwrap();

    let run = store.run(&["gc"]);
    let line = run.fails(4);
    assert!(line.contains("process lock"), "{line}");
    assert!(garbage.exists(), "a refused GC removes nothing");
    let run = store.run(&["--lock-wait", "1", "gc"]);
    assert!(run.fails(4).contains("process lock"), "{run:?}");
    assert!(garbage.exists());

    // The backup ends while GC waits.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(lock);
    });
    let started = Instant::now();
    let doc = store.run(&["--json", "--lock-wait", "30", "gc"]).json();
    release.join().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_eq!(doc["status"]["removed-chunks"], 1, "{doc}");
    assert!(!garbage.exists());
}
