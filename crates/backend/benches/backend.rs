//! Listing a 10,000-entry folder on the local filesystem with `LocalBackend::list`, next to a
//! bare `std::fs::read_dir` of the same folder in the same run (target: ratio <= 1.2), plus the
//! request counts of listing and deleting N keys on the object stores.
//!
//! After criterion's figures, a second pass alternates batches of keepsake and the baseline (so
//! that machine noise hits both alike) and prints the medians and their ratio, the figures
//! docs/BENCHMARKS.md reports. The S3 part runs when `KEEPSAKE_S3_ENDPOINT` is set (start moto with
//! `cargo xtask s3` and export what it prints) and says so when it is not: request counts of
//! listing and deleting, and the cached backend's refresh of 3,000 small objects (first run, a
//! second run with nothing changed, and the requests of reading every file after a restart).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::Criterion;
use keepsake_backend::{
    Backend, BackendPath, CachedBackend, KeepFilter, LocalBackend, ObjectBackend, RetrySettings,
    S3Config, SyncLevel, WriteMode,
};

const ENTRIES: usize = 10_000;

struct Setup {
    dir: tempfile::TempDir,
    backend: LocalBackend,
    folder: BackendPath,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let folder_path = dir.path().join("vm");
        std::fs::create_dir(&folder_path).expect("folder");
        for i in 0..ENTRIES {
            // A PBS-like mix: mostly group folders, some files.
            let name = folder_path.join(format!("{i}"));
            if i % 10 == 0 {
                std::fs::write(name, b"").expect("file");
            } else {
                std::fs::create_dir(name).expect("folder");
            }
        }
        let backend = LocalBackend::open(dir.path(), SyncLevel::None).expect("open");
        Self {
            dir,
            backend,
            folder: "vm".parse().expect("path"),
        }
    }

    fn folder_path(&self) -> std::path::PathBuf {
        self.dir.path().join("vm")
    }
}

fn keepsake_list(setup: &Setup) -> usize {
    let mut n = 0;
    for entry in setup.backend.list(&setup.folder).expect("list") {
        black_box(entry.expect("entry"));
        n += 1;
    }
    n
}

fn bare_read_dir(path: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(path).expect("read_dir") {
        black_box(entry.expect("entry"));
        n += 1;
    }
    n
}

/// The baseline with what a listing with kinds needs: the name as a string and the file type.
fn read_dir_with_kinds(path: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(path).expect("read_dir") {
        let entry = entry.expect("entry");
        black_box((entry.file_name().into_string().ok(), entry.file_type().ok()));
        n += 1;
    }
    n
}

fn criterion_benches(c: &mut Criterion, setup: &Setup) {
    let path = setup.folder_path();
    assert_eq!(keepsake_list(setup), ENTRIES);
    assert_eq!(bare_read_dir(&path), ENTRIES);
    let mut group = c.benchmark_group("list_10k_local");
    group.bench_function("keepsake_local_list", |b| {
        b.iter(|| keepsake_list(black_box(setup)))
    });
    group.bench_function("std_read_dir", |b| {
        b.iter(|| bare_read_dir(black_box(&path)))
    });
    group.bench_function("std_read_dir_name_and_type", |b| {
        b.iter(|| read_dir_with_kinds(black_box(&path)))
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

/// Fills `folder` with `n` empty files from 16 threads.
fn fill(backend: &dyn Backend, folder: &BackendPath, n: usize) -> Duration {
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let file = folder.join(&format!("{i:05}")).expect("path");
                    backend.write(&file, b"", WriteMode::Replace).expect("put");
                }
            });
        }
    });
    started.elapsed()
}

fn request_counts(label: &str, backend: &ObjectBackend, sizes: &[usize]) {
    for &n in sizes {
        let folder: BackendPath = format!("vm/n{n}").parse().expect("path");
        let filled = fill(backend, &folder, n);
        let before = backend.requests();
        let started = Instant::now();
        let listed = backend.list(&folder).expect("list").count();
        let list_time = started.elapsed();
        let listing = backend.requests() - before;
        assert_eq!(listed, n);
        let before = backend.requests();
        let started = Instant::now();
        let report = backend
            .remove_tree(&folder, &KeepFilter::nothing())
            .expect("remove");
        let remove_time = started.elapsed();
        let removal = backend.requests() - before;
        assert_eq!(report.removed as usize, n);
        println!(
            "{label}: N={n}: list {} requests ({list_time:.2?}); remove_tree {} list + {} delete requests ({remove_time:.2?}); setup {n} puts in {filled:.2?}",
            listing.list, removal.list, removal.delete
        );
    }
}

/// Objects in the refresh figures: 100 groups of 30 snapshots, one small manifest each.
const REFRESH_OBJECTS: usize = 3000;

fn refresh_figures(label: &str, remote: impl Fn() -> ObjectBackend) {
    let writer = remote();
    let files: Vec<BackendPath> = (0..REFRESH_OBJECTS)
        .map(|i| {
            format!(
                "vm/{}/2024-01-01T00:00:{:02}Z/index.json.blob",
                100 + i / 30,
                i % 30
            )
            .parse()
            .expect("path")
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(file) = files.get(i) else { break };
                    writer
                        .write(file, file.as_str().as_bytes(), WriteMode::Replace)
                        .expect("put");
                }
            });
        }
    });
    let dir = tempfile::tempdir().expect("temporary folder");
    let open = || {
        let cache = LocalBackend::open(dir.path(), SyncLevel::Filesystem).expect("cache");
        CachedBackend::open(cache, remote()).expect("cache identity")
    };
    let cached = open();
    for run in ["first", "second"] {
        let started = Instant::now();
        let report = cached.refresh().expect("refresh");
        println!(
            "{label}: refresh of {REFRESH_OBJECTS} objects, {run} run: {:.2?}; downloaded {}, unchanged {}, removed {}; requests {}",
            started.elapsed(),
            report.downloaded,
            report.unchanged,
            report.removed,
            report.requests
        );
    }
    drop(cached);
    let restarted = open();
    let before = restarted.remote().requests();
    let started = Instant::now();
    for file in &files {
        black_box(restarted.read(file).expect("read"));
    }
    println!(
        "{label}: reading all {REFRESH_OBJECTS} files after a restart: {:.2?}, requests {}",
        started.elapsed(),
        restarted.remote().requests() - before
    );
}

fn object_store_counts() {
    let memory = ObjectBackend::in_memory("bench").expect("in-memory store");
    request_counts("in-memory (trait calls)", &memory, &[1000, 2500, 10_000]);
    let shared = std::sync::Arc::new(object_store::memory::InMemory::new());
    refresh_figures("in-memory", || {
        ObjectBackend::with_store(shared.clone(), "bench").expect("in-memory store")
    });
    let Some(found) = keepsake_testkit::s3::config() else {
        println!(
            "S3 request counts skipped: no S3 endpoint (start `cargo xtask s3` and export the variables it prints)"
        );
        return;
    };
    let mut config = S3Config::new(
        found.bucket,
        found.region,
        found.access_key_id,
        found.secret_access_key,
    );
    config.endpoint = Some(found.endpoint);
    config.allow_http = true;
    config.retry = RetrySettings::for_tests();
    let store = keepsake_testkit::s3::unique_prefix("bench");
    let s3 = ObjectBackend::s3(&config, &store).expect("S3 configuration");
    request_counts("s3 on moto (HTTP requests)", &s3, &[1000, 2500]);
    let store = keepsake_testkit::s3::unique_prefix("bench-refresh");
    refresh_figures("s3 on moto", || {
        ObjectBackend::s3(&config, &store).expect("S3 configuration")
    });
}

fn main() {
    let setup = Setup::new();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    criterion_benches(&mut criterion, &setup);
    criterion.final_summary();

    // `cargo test --benches` runs this binary without `--bench`: criterion then only smoke-tests.
    if std::env::args().any(|a| a == "--bench") {
        let path = setup.folder_path();
        let (keepsake, bare) = interleaved_medians(
            41,
            10,
            || {
                black_box(keepsake_list(&setup));
            },
            || {
                black_box(bare_read_dir(&path));
            },
        );
        println!(
            "list 10,000 entries: keepsake {keepsake:.2?}, std::fs::read_dir {bare:.2?}, ratio {:.2} (target <= 1.2)",
            keepsake.as_secs_f64() / bare.as_secs_f64()
        );
        let (keepsake, kinds) = interleaved_medians(
            41,
            10,
            || {
                black_box(keepsake_list(&setup));
            },
            || {
                black_box(read_dir_with_kinds(&path));
            },
        );
        println!(
            "list 10,000 entries: keepsake {keepsake:.2?}, read_dir + name + type {kinds:.2?}, ratio {:.2}",
            keepsake.as_secs_f64() / kinds.as_secs_f64()
        );
        object_store_counts();
    }
}
