//! Cost of an uncontended snapshot lock + unlock, next to the floor it is built on: a raw
//! `open + flock + close` of the same file in the same run.
//!
//! A second baseline, the "protocol floor", adds the syscalls the PBS 4 protocol itself needs on top
//! (the double-stat `fstat` + `stat`, and the explicit unlock), so that keepsake's own overhead can
//! be told from the protocol's.
//!
//! After criterion's figures, a second pass alternates batches of keepsake and each baseline (so
//! that machine noise hits them alike) and prints the medians and their ratios, the figures
//! docs/BENCHMARKS.md reports.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::Criterion;
use keepsake_hierarchy::{BackupDir, BackupNamespace};
use keepsake_lock::{FileLocker, LockMode, LockTarget, Locker};
use rustix::fs::{FlockOperation, Mode, OFlags};

struct Setup {
    _root: tempfile::TempDir,
    locker: FileLocker,
    ns: BackupNamespace,
    dir: BackupDir,
}

impl Setup {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("lock root");
        let locker = FileLocker::new(root.path(), "store1").expect("store");
        let setup = Self {
            locker,
            _root: root,
            ns: BackupNamespace::root(),
            dir: "vm/100/2024-06-05T15:06:40Z".parse().expect("snapshot"),
        };
        // The steady state: the lock file exists (PBS never removes a live snapshot's lock).
        drop(setup.keepsake());
        setup
    }

    fn target(&self) -> LockTarget<'_> {
        LockTarget::snapshot(&self.ns, &self.dir)
    }

    fn keepsake(&self) -> keepsake_lock::LockGuard {
        self.locker
            .lock(&self.target(), LockMode::Exclusive, Duration::ZERO)
            .expect("uncontended lock")
    }
}

fn raw_open_flock_close(path: &Path) {
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::APPEND | OFlags::CREATE,
        Mode::from_raw_mode(0o660),
    )
    .expect("open");
    rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).expect("flock");
    drop(fd);
}

/// What the PBS 4 protocol needs at least: the raw lock plus the double-stat check and an explicit
/// unlock, the same syscalls keepsake makes, without keepsake's path derivation and guard.
fn raw_protocol_floor(path: &Path) {
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::APPEND | OFlags::CREATE,
        Mode::from_raw_mode(0o660),
    )
    .expect("open");
    rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).expect("flock");
    let locked = rustix::fs::fstat(&fd).expect("fstat");
    let named = rustix::fs::stat(path).expect("stat");
    assert_eq!((locked.st_dev, locked.st_ino), (named.st_dev, named.st_ino));
    rustix::fs::flock(&fd, FlockOperation::Unlock).expect("unlock");
    drop(fd);
}

fn criterion_benches(c: &mut Criterion, setup: &Setup) {
    let path = setup.locker.lock_path(&setup.target());
    let mut group = c.benchmark_group("snapshot_lock");
    group.bench_function("keepsake_exclusive_lock_unlock", |b| {
        b.iter(|| drop(black_box(setup.keepsake())))
    });
    group.bench_function("raw_open_flock_close", |b| {
        b.iter(|| raw_open_flock_close(black_box(&path)))
    });
    group.bench_function("raw_protocol_floor", |b| {
        b.iter(|| raw_protocol_floor(black_box(&path)))
    });
    group.bench_function("keepsake_lock_path_only", |b| {
        b.iter(|| black_box(setup.locker.lock_path(black_box(&setup.target()))))
    });
    group.finish();
}

/// Median time per iteration of each closure over interleaved batches.
fn interleaved_medians(
    rounds: usize,
    batch: u32,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) -> (Duration, Duration) {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..batch {
            f();
        }
        start.elapsed() / batch
    };
    let (mut ta, mut tb) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        ta.push(time(&mut a));
        tb.push(time(&mut b));
    }
    ta.sort();
    tb.sort();
    (ta[rounds / 2], tb[rounds / 2])
}

fn main() {
    let setup = Setup::new();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    criterion_benches(&mut criterion, &setup);
    criterion.final_summary();

    // `cargo test --benches` runs this binary without `--bench`: criterion then only smoke-tests.
    if std::env::args().any(|a| a == "--bench") {
        let path = setup.locker.lock_path(&setup.target());
        let (keepsake, raw) = interleaved_medians(
            101,
            2000,
            || drop(black_box(setup.keepsake())),
            || raw_open_flock_close(black_box(&path)),
        );
        println!(
            "snapshot lock+unlock: keepsake {keepsake:?}, raw open+flock+close {raw:?}, ratio {:.2} (target <= 1.30)",
            keepsake.as_secs_f64() / raw.as_secs_f64()
        );
        let (keepsake, floor) = interleaved_medians(
            101,
            2000,
            || drop(black_box(setup.keepsake())),
            || raw_protocol_floor(black_box(&path)),
        );
        println!(
            "snapshot lock+unlock: keepsake {keepsake:?}, raw protocol floor (+fstat+stat+unlock) {floor:?}, ratio {:.2}",
            keepsake.as_secs_f64() / floor.as_secs_f64()
        );
    }
}
