//! Listing a datastore and updating manifests, next to a bare directory walk of the same tree
//! (the floor) measured in the same run.
//!
//! Trees: 100 groups x 100 snapshots and 1,000 x 100, each snapshot with a manifest, two other
//! files, and every 10th protected. The 100,000-snapshot tree also gets a streamed pass whose peak
//! RSS is printed, to show that listing does not collect the store.

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use keepsake_backend::SyncLevel;
use keepsake_datastore::{DataStore, Encryption};
use keepsake_hierarchy::{BackupDir, BackupNamespace, BackupTime};

fn build_tree(root: &Path, groups: usize, snapshots: usize) {
    for g in 0..groups {
        let group = root.join(format!("vm/{}", 100 + g));
        std::fs::create_dir_all(&group).unwrap();
        std::fs::write(group.join("owner"), "root@pam\n").unwrap();
        for s in 0..snapshots {
            let time = BackupTime::from_epoch(1_700_000_000 + 3_600 * s as i64).unwrap();
            let dir = group.join(time.to_string());
            std::fs::create_dir(&dir).unwrap();
            for f in [
                "index.json.blob",
                "qemu-server.conf.blob",
                "drive-scsi0.img.fidx",
            ] {
                std::fs::write(dir.join(f), b"x").unwrap();
            }
            if s % 10 == 0 {
                std::fs::write(dir.join(".protected"), b"").unwrap();
            }
        }
    }
}

/// The floor: read every group folder, every snapshot folder, and note files and protection.
fn bare_walk(root: &Path) -> usize {
    let mut n = 0;
    for group in std::fs::read_dir(root.join("vm")).unwrap() {
        let group = group.unwrap();
        for snap in std::fs::read_dir(group.path()).unwrap() {
            let snap = snap.unwrap();
            if !snap.file_type().unwrap().is_dir() {
                continue;
            }
            let mut files = Vec::new();
            let mut protected = false;
            for f in std::fs::read_dir(snap.path()).unwrap() {
                let f = f.unwrap();
                let name = f.file_name().into_string().unwrap();
                if name == ".protected" {
                    protected = true;
                } else if f.file_type().unwrap().is_file() {
                    files.push(name);
                }
            }
            black_box((files, protected));
            n += 1;
        }
    }
    n
}

fn keepsake_walk(store: &DataStore) -> usize {
    let mut n = 0;
    for group in store.iter_groups(&BackupNamespace::root()).unwrap() {
        for snapshot in group.unwrap().iter_snapshots().unwrap() {
            black_box(snapshot.unwrap().info().unwrap());
            n += 1;
        }
    }
    n
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn listing(c: &mut Criterion) {
    let mut group = c.benchmark_group("list_snapshots");
    group.sample_size(10);
    for (groups, snapshots) in [(100usize, 100usize), (1_000, 100)] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        std::fs::create_dir_all(root.join(".chunks")).unwrap();
        build_tree(&root, groups, snapshots);
        let store = DataStore::builder("bench", &root)
            .lock_root(dir.path().join("locks"))
            .open()
            .unwrap();
        let total = groups * snapshots;
        assert_eq!(keepsake_walk(&store), total);
        if total == 100_000 {
            let before = peak_rss_kib();
            keepsake_walk(&store);
            eprintln!(
                "peak RSS before a streamed pass over {total} snapshots: {before} KiB, after: {} KiB",
                peak_rss_kib()
            );
        }
        group.bench_with_input(BenchmarkId::new("bare_walk", total), &root, |b, root| {
            b.iter(|| bare_walk(root))
        });
        group.bench_with_input(BenchmarkId::new("keepsake", total), &store, |b, store| {
            b.iter(|| keepsake_walk(store))
        });
        // Criterion measures one side after the other; on a shared machine the load can change
        // in between. Alternating single walks gives both sides the same noise: the ratio of these
        // medians is the figure docs/BENCHMARKS.md reports. (Skipped in `cargo test --benches`.)
        if std::env::args().any(|a| a == "--bench") {
            let rounds = if total >= 100_000 { 9 } else { 31 };
            let (mut ours, mut bare) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let started = std::time::Instant::now();
                black_box(keepsake_walk(&store));
                ours.push(started.elapsed());
                let started = std::time::Instant::now();
                black_box(bare_walk(&root));
                bare.push(started.elapsed());
            }
            ours.sort();
            bare.sort();
            let (ours, bare) = (ours[rounds / 2], bare[rounds / 2]);
            eprintln!(
                "list {total} snapshots, medians of {rounds} alternating walks: keepsake {ours:.2?}, \
                 bare read_dir walk {bare:.2?}, ratio {:.2} (target <= 1.5)",
                ours.as_secs_f64() / bare.as_secs_f64()
            );
        }
    }
    group.finish();
}

fn update_manifest(c: &mut Criterion) {
    let mut group = c.benchmark_group("update_manifest");
    for level in [SyncLevel::None, SyncLevel::File] {
        let dir = tempfile::tempdir().unwrap();
        let store = DataStore::builder("bench", dir.path().join("store"))
            .lock_root(dir.path().join("locks"))
            .sync_level(level)
            .chunk_prefix_dirs(false)
            .create()
            .unwrap();
        let g = store.group(&BackupNamespace::root(), &"vm/100".parse().unwrap());
        let mut w = g
            .start_backup(
                &"root@pam".parse().unwrap(),
                BackupTime::from_epoch(1_700_000_000).unwrap(),
            )
            .unwrap();
        w.add_blob("qemu-server.conf.blob", b"memory: 2048\n", Encryption::None)
            .unwrap();
        w.add_fixed_archive(
            "drive-scsi0.img.fidx",
            &vec![3u8; 1 << 20],
            1 << 18,
            Encryption::None,
        )
        .unwrap();
        let snapshot = w.finish().unwrap();
        let dir_name: BackupDir = snapshot.dir().clone();
        let mut n = 0u64;
        group.bench_function(BenchmarkId::new("set_notes", level.as_str()), |b| {
            b.iter(|| {
                n += 1;
                store
                    .snapshot(&BackupNamespace::root(), &dir_name)
                    .update_manifest(|m| {
                        m.set_notes(Some(&format!("note {n}")));
                        Ok(())
                    })
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, listing, update_manifest);
criterion_main!(benches);
