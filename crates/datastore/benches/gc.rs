//! Garbage collection of a generated store, each phase next to its floor measured in the same
//! run.
//!
//! The store (built once under `target/bench-gc`, reused while its shape is unchanged): 250
//! groups of 20 snapshots, each snapshot one fixed index of 280 chunks, a tenth of them changed
//! since the group's previous snapshot: 5,000 indexes, 203,000 distinct chunks in PBS's 65,536
//! prefix folders, written through the library's backup writer. Chunks hold 256 bytes each (the
//! index says 4 MiB): GC never reads a chunk, only names, times and sizes, so small chunks keep the
//! store quick to build without changing what GC does. Before each run, 10,000 unreferenced chunks
//! three days old are planted (untimed): each run removes them.
//!
//! | phase | floor |
//! |---|---|
//! | 1, mark | a `read_dir` walk finding the indexes, a read of each, its digests collected and deduplicated (sort), then one `utimensat` per distinct chunk, relative to an open `.chunks` (names built in place): reads and touches on as many threads as GC |
//! | 2, sweep | a `getdents64` scan of every prefix folder of `.chunks` (open relative to `.chunks`) plus an `fstatat` of each chunk relative to its folder (GC needs each chunk's atime and size: `.gc-status` records the bytes) and an `unlinkat` of each old one (the same 10,000 planted before it), on as many threads as GC; the bare `getdents64` scan is printed too |
//!
//! After criterion's figures (whole GC, whole floor), a second pass alternates GC runs and floor
//! runs and prints the medians per phase and their ratios: the figures docs/BENCHMARKS.md reports.
//! A last step runs one GC in a child process and prints its peak resident memory (`VmHWM`) next
//! to the same child's before GC.
//!
//! `KEEPSAKE_GC_BENCH_GROUPS` (default 250) scales the store; `cargo test --benches` builds a
//! 10-group store.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::Criterion;
use keepsake_backend::SyncLevel;
use keepsake_datastore::{DataStore, Encryption, GcOptions, GcPhase};
use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Timespec, Timestamps};

const SNAPSHOTS: usize = 20;
const REFS: usize = 280;
const CHANGED: usize = 28;
const CHUNK_BYTES: usize = 256;
const GARBAGE: usize = 10_000;
/// Bumped when the generated shape changes, so an old store is rebuilt.
const SHAPE_VERSION: u32 = 1;

fn groups() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        std::env::var("KEEPSAKE_GC_BENCH_GROUPS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(250)
    } else {
        10
    }
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// 256 bytes that only `(group, slot, version)` give.
fn chunk_data(group: usize, slot: usize, version: usize) -> Vec<u8> {
    let mut state = ((group as u64) << 40) ^ ((slot as u64) << 20) ^ version as u64;
    let mut out = Vec::with_capacity(CHUNK_BYTES);
    while out.len() < CHUNK_BYTES {
        // SplitMix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

struct Store {
    root: PathBuf,
    store: DataStore,
    /// The same folder at sync level `none`, for planting garbage quickly (untimed).
    planter: DataStore,
    chunks_fd: OwnedFd,
    groups: usize,
}

fn lock_root(root: &Path) -> PathBuf {
    root.with_extension("locks")
}

/// Opens the generated store, building it first when missing or of another shape.
fn store(groups: usize) -> Store {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-gc");
    let root = base.join(format!("store-{groups}"));
    let stamp = base.join(format!("store-{groups}.shape"));
    let shape = format!("{SHAPE_VERSION}");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(shape.as_str()) {
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(lock_root(&root));
        let started = Instant::now();
        generate(&root, groups);
        std::fs::write(&stamp, &shape).expect("shape stamp");
        eprintln!(
            "gc bench: built {groups} groups in {:.1?}",
            started.elapsed()
        );
    }
    let store = DataStore::builder("bench", &root)
        .lock_root(lock_root(&root))
        .open()
        .expect("open the bench store");
    let planter = DataStore::builder("bench", &root)
        .lock_root(lock_root(&root))
        .sync_level(SyncLevel::None)
        .open()
        .expect("open the bench store");
    let chunks_fd = rfs::open(
        root.join(".chunks"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open .chunks");
    Store {
        root,
        store,
        planter,
        chunks_fd,
        groups,
    }
}

fn generate(root: &Path, groups: usize) {
    std::fs::create_dir_all(root.parent().expect("parent")).expect("bench folder");
    let store = DataStore::builder("bench", root)
        .lock_root(lock_root(root))
        .create()
        .expect("create the bench store");
    let owner: Authid = "root@pam".parse().expect("auth id");
    let ns = BackupNamespace::root();
    // Groups on all threads: the writer is per snapshot, the chunk store is shared.
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads() {
            scope.spawn(|| {
                loop {
                    let g = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if g >= groups {
                        break;
                    }
                    let group: BackupGroup = format!("vm/{}", 1000 + g).parse().expect("group");
                    let group = store.group(&ns, &group);
                    let mut versions = vec![0usize; REFS];
                    for s in 0..SNAPSHOTS {
                        if s > 0 {
                            for v in versions.iter_mut().skip((s * CHANGED) % REFS).take(CHANGED) {
                                *v += 1;
                            }
                        }
                        let time = BackupTime::from_epoch(1_700_000_000 + s as i64 * 86_400)
                            .expect("time");
                        let mut backup = group.start_backup(&owner, time).expect("start backup");
                        let mut disk = backup
                            .start_fixed_archive(
                                "drive-scsi0.img.fidx",
                                (REFS * CHUNK_BYTES) as u64,
                                CHUNK_BYTES as u64,
                                Encryption::None,
                            )
                            .expect("start archive");
                        for (slot, version) in versions.iter().enumerate() {
                            disk.push(&chunk_data(g, slot, *version)).expect("push");
                        }
                        disk.finish().expect("finish archive");
                        backup.finish().expect("finish backup");
                    }
                }
            });
        }
    });
}

impl Store {
    /// Unreferenced chunks, three days old: a run removes them all.
    fn plant_garbage(&self) {
        let past = Timespec {
            tv_sec: now() - 3 * 86_400,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: past,
            last_modification: past,
        };
        for i in 0..GARBAGE {
            let inserted = self
                .planter
                .insert_chunk(&chunk_data(usize::MAX >> 8, i, 0), Encryption::None)
                .expect("plant");
            let hex = hex(&inserted.digest);
            rfs::utimensat(
                &self.chunks_fd,
                format!("{}/{hex}", &hex[..4]),
                &times,
                AtFlags::empty(),
            )
            .expect("age the planted chunk");
        }
    }

    /// One GC run: (phase 1, phase 2).
    fn gc(&self) -> (Duration, Duration) {
        let marks: Arc<Mutex<Vec<(GcPhase, Instant)>>> = Arc::default();
        let seen = marks.clone();
        let options = GcOptions::default().on_phase(Arc::new(move |phase| {
            seen.lock().expect("marks").push((phase, Instant::now()));
        }));
        let report = self.store.garbage_collect(&options).expect("gc");
        let end = Instant::now();
        assert_eq!(report.status.removed_chunks, GARBAGE as u64, "{report:?}");
        assert_eq!(report.missing_chunks, 0);
        assert_eq!(
            report.status.index_file_count,
            (self.groups * SNAPSHOTS) as u64
        );
        let marks = marks.lock().expect("marks");
        let at = |phase| {
            marks
                .iter()
                .find(|(p, _)| *p == phase)
                .map(|(_, t)| *t)
                .expect("phase seen")
        };
        let (mark, sweep) = (at(GcPhase::Mark), at(GcPhase::Sweep));
        (sweep - mark, end - sweep)
    }

    /// Phase 1's floor.
    fn mark_floor(&self) -> Duration {
        let started = Instant::now();
        let mut indexes = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("walk") {
                let entry = entry.expect("entry");
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue;
                }
                let kind = entry.file_type().expect("type");
                if kind.is_dir() {
                    stack.push(entry.path());
                } else if name.to_string_lossy().ends_with(".fidx") {
                    indexes.push(entry.path());
                }
            }
        }
        let per = indexes.len().div_ceil(threads());
        let mut digests: Vec<[u8; 32]> = std::thread::scope(|scope| {
            let handles: Vec<_> = indexes
                .chunks(per.max(1))
                .map(|part| {
                    scope.spawn(move || {
                        let mut found = Vec::new();
                        for file in part {
                            let bytes = std::fs::read(file).expect("read index");
                            for d in bytes[4096..].chunks_exact(32) {
                                found.push(<[u8; 32]>::try_from(d).expect("32 bytes"));
                            }
                        }
                        found
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("reader"))
                .collect()
        });
        digests.sort_unstable();
        digests.dedup();
        let now = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: rfs::UTIME_NOW,
            },
            last_modification: Timespec {
                tv_sec: 0,
                tv_nsec: rfs::UTIME_OMIT,
            },
        };
        let per = digests.len().div_ceil(threads());
        std::thread::scope(|scope| {
            for part in digests.chunks(per.max(1)) {
                let (fd, now) = (&self.chunks_fd, &now);
                scope.spawn(move || {
                    // `abcd/<64 hex>` and a NUL, built in place.
                    let mut name = [0u8; 70];
                    for digest in part {
                        for (i, b) in digest.iter().enumerate() {
                            let digits = b"0123456789abcdef";
                            name[5 + 2 * i] = digits[usize::from(b >> 4)];
                            name[6 + 2 * i] = digits[usize::from(b & 15)];
                        }
                        name.copy_within(5..9, 0);
                        name[4] = b'/';
                        let name = std::ffi::CStr::from_bytes_with_nul(&name).expect("name");
                        rfs::utimensat(fd, name, now, AtFlags::empty()).expect("touch");
                    }
                });
            }
        });
        started.elapsed()
    }

    /// Phase 2's floor: the scan, with an `fstatat` per chunk or without.
    fn sweep_floor(&self, stat: Stat) -> Duration {
        let cutoff = now() - 86_400;
        let started = Instant::now();
        let mut prefixes = Vec::new();
        let mut dir = rfs::Dir::read_from(&self.chunks_fd).expect("list .chunks");
        for entry in dir.by_ref() {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_bytes();
            if name.len() == 4 {
                prefixes.push(entry.file_name().to_owned());
            }
        }
        let per = prefixes.len().div_ceil(threads());
        let files: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = prefixes
                .chunks(per.max(1))
                .map(|part| {
                    let fd = &self.chunks_fd;
                    scope.spawn(move || {
                        let mut files = 0;
                        let cutoff = cutoff;
                        for prefix in part {
                            let folder = rfs::openat(
                                fd,
                                prefix.as_c_str(),
                                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                                Mode::empty(),
                            )
                            .expect("open prefix");
                            let mut entries = rfs::Dir::new(folder).expect("read prefix");
                            let mut names = Vec::new();
                            for entry in entries.by_ref() {
                                let entry = entry.expect("entry");
                                if entry.file_name().to_bytes().len() >= 64 {
                                    names.push(entry.file_name().to_owned());
                                }
                            }
                            files += names.len();
                            if stat == Stat::Each {
                                let folder = entries.fd().expect("fd");
                                for name in &names {
                                    let stat = rfs::statat(
                                        folder,
                                        name.as_c_str(),
                                        AtFlags::SYMLINK_NOFOLLOW,
                                    )
                                    .expect("stat");
                                    // The planted garbage: removed, as GC removes it.
                                    if stat.st_atime < cutoff {
                                        rfs::unlinkat(folder, name.as_c_str(), AtFlags::empty())
                                            .expect("unlink");
                                    }
                                }
                            }
                        }
                        files
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("scan")).sum()
        });
        std::hint::black_box(files);
        started.elapsed()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stat {
    Each,
    None,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn criterion_pass(c: &mut Criterion, s: &Store) {
    let mut group = c.benchmark_group("gc");
    group.sample_size(10);
    group.bench_function("garbage_collect", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    s.plant_garbage();
                    let (mark, sweep) = s.gc();
                    mark + sweep
                })
                .sum()
        })
    });
    group.bench_function("floor", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    s.plant_garbage();
                    s.mark_floor() + s.sweep_floor(Stat::Each)
                })
                .sum()
        })
    });
    group.finish();
}

fn alternating_pass(s: &Store) {
    let rounds = 9;
    let mut runs = (Vec::new(), Vec::new());
    let mut floors = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        s.plant_garbage();
        let (mark, sweep) = s.gc();
        runs.0.push(mark);
        runs.1.push(sweep);
        s.plant_garbage();
        floors.0.push(s.mark_floor());
        floors.1.push(s.sweep_floor(Stat::Each));
        floors.2.push(s.sweep_floor(Stat::None));
    }
    let (mark, sweep) = (median(runs.0), median(runs.1));
    let (mark_floor, sweep_floor, scan) = (median(floors.0), median(floors.1), median(floors.2));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    eprintln!(
        "\ngc of {} indexes, {} threads: medians of {rounds} alternating rounds",
        s.groups * SNAPSHOTS,
        threads()
    );
    eprintln!("| phase | keepsake | floor | ratio |\n|---|---|---|---|");
    eprintln!(
        "| 1, mark | {mark:.2?} | {mark_floor:.2?} | {:.2} |",
        ratio(mark, mark_floor)
    );
    eprintln!(
        "| 2, sweep | {sweep:.2?} | {sweep_floor:.2?} | {:.2} |",
        ratio(sweep, sweep_floor)
    );
    eprintln!(
        "| 2, sweep, against the bare getdents64 scan | {sweep:.2?} | {scan:.2?} | {:.2} |",
        ratio(sweep, scan)
    );
    eprintln!(
        "| total | {:.2?} | {:.2?} | {:.2} |",
        mark + sweep,
        mark_floor + sweep_floor,
        ratio(mark + sweep, mark_floor + sweep_floor)
    );
}

/// `VmHWM` of this process, in KiB.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// In the child: open the store, one GC, print the peaks before and after.
fn memory_child(groups: usize) {
    let s = store(groups);
    s.plant_garbage();
    let before = peak_kib();
    s.gc();
    println!("{before} {}", peak_kib());
}

fn memory_pass(groups: usize) {
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env("KEEPSAKE_GC_MEMORY", groups.to_string())
        .output()
        .expect("child");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text
        .split_whitespace()
        .map(|n| n.parse::<u64>().expect("KiB"));
    let (before, after) = (
        numbers.next().expect("before"),
        numbers.next().expect("after"),
    );
    eprintln!(
        "peak resident memory: {:.1} MiB before GC (the store opened, garbage planted), {:.1} MiB after ({:.1} MiB more)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0
    );
}

fn main() {
    if let Ok(groups) = std::env::var("KEEPSAKE_GC_MEMORY") {
        memory_child(groups.parse().expect("groups"));
        return;
    }
    let groups = groups();
    let s = store(groups);
    let mut c = Criterion::default().configure_from_args();
    criterion_pass(&mut c, &s);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        alternating_pass(&s);
        memory_pass(groups);
    }
}
