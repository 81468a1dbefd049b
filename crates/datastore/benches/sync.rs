//! Sync of a generated local datastore (≥ 1 GiB of distinct chunks) into an S3 datastore on the
//! test server (moto; `cargo xtask bench` starts it): S3 requests against the objects written,
//! and the time next to a bare parallel upload of the same chunk files in the same run (16
//! threads, plain PUTs, nothing checked); then a second sync with nothing changed, and a third
//! after a new snapshot per group, from a cache that lost its chunk files (the bucket's listing
//! tells which chunks are there).
//!
//! Prints one line per figure; without `KEEPSAKE_S3_ENDPOINT` it says so and does nothing. Set
//! `KEEPSAKE_SYNC_BENCH_MIB` to change the size (default 1,152 MiB of distinct chunks).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use keepsake_backend::{
    Backend, BackendPath, CachedBackend, LocalBackend, ObjectBackend, RequestCounts, RetrySettings,
    S3Config, SyncLevel, WriteMode,
};
use keepsake_datastore::{DataStore, Encryption, SyncOptions};
use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};

const CHUNK: usize = 4 << 20;
const GROUPS: usize = 4;
/// Chunks of a group's second snapshot that differ from its first.
const CHANGED: usize = 8;

/// A small xorshift generator: incompressible data without a dependency.
fn fill(seed: u64, out: &mut [u8]) {
    // Spread first: nearby seeds must not give the same stream.
    let mut x = seed.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

/// The source: `GROUPS` groups of two snapshots; the second shares all but `CHANGED` chunks.
fn make_source(dir: &Path, mib: usize) -> (DataStore, usize) {
    let store = DataStore::builder("source", dir.join("source"))
        .lock_root(dir.join("source-locks"))
        .sync_level(SyncLevel::None)
        .chunk_prefix_dirs(false)
        .create()
        .expect("create the source");
    let per_group = ((mib << 20) / GROUPS / CHUNK)
        .saturating_sub(CHANGED)
        .max(CHANGED);
    for day in 0..2 {
        backup_day(&store, per_group, day);
    }
    (store, per_group)
}

/// Each group's snapshot of `day`: the image of day 0 with `CHANGED` chunks changed on each
/// later day.
fn backup_day(store: &DataStore, per_group: usize, day: usize) {
    let owner: Authid = "root@pam".parse().unwrap();
    let mut image = vec![0u8; per_group * CHUNK];
    for g in 0..GROUPS {
        fill(0x5eed + g as u64, &mut image);
        for d in 1..=day {
            for c in 0..CHANGED {
                let at = (c * (per_group / CHANGED) + d - 1) * CHUNK;
                fill(
                    0xd1ff + (d * 10_000 + g * 100 + c) as u64,
                    &mut image[at..at + CHUNK],
                );
            }
        }
        let group: BackupGroup = format!("vm/{}", 100 + g).parse().unwrap();
        let handle = store.group(&BackupNamespace::root(), &group);
        let time = BackupTime::from_epoch(1_717_600_000 + day as i64 * 86_400).unwrap();
        let mut w = handle.start_backup(&owner, time).expect("backup");
        w.add_blob("qemu-server.conf.blob", b"memory: 2048\n", Encryption::None)
            .expect("blob");
        w.add_fixed_archive(
            "drive-scsi0.img.fidx",
            &image,
            CHUNK as u64,
            Encryption::None,
        )
        .expect("image");
        w.finish().expect("finish");
    }
}

fn s3_target(config: &S3Config, prefix: &str, dir: &Path) -> (DataStore, ObjectBackend) {
    let cache = dir.join(format!("cache-{prefix}"));
    std::fs::create_dir_all(&cache).expect("cache");
    let remote = ObjectBackend::s3(config, prefix).expect("S3 configuration");
    let local = LocalBackend::open(&cache, SyncLevel::None).expect("cache folder");
    let store = DataStore::builder(prefix, &cache)
        .lock_root(dir.join("locks"))
        .backend(Arc::new(CachedBackend::new(local, remote.clone())))
        .namespace_markers(true)
        .chunk_prefix_dirs(false)
        .create()
        .expect("create the target");
    (store, remote)
}

/// The metadata objects of the datastore in the bucket.
fn objects(remote: &ObjectBackend) -> usize {
    remote
        .list_files_authoritative(&BackendPath::root())
        .expect("listing")
        .len()
}

fn line(label: &str, seconds: f64, bytes: u64, requests: RequestCounts, written: usize) {
    println!(
        "sync bench, {label}: {seconds:.1} s ({:.0} MiB/s), {} requests ({requests}) for {written} \
         objects written: {:.3} requests per object",
        bytes as f64 / seconds / f64::from(1 << 20),
        requests.total(),
        requests.total() as f64 / written.max(1) as f64,
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(found) = keepsake_testkit::s3::config() else {
        println!("sync figures skipped: no S3 endpoint (run `cargo xtask bench`)");
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
    let mib: usize = std::env::var("KEEPSAKE_SYNC_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_152);
    let dir = tempfile::tempdir().expect("temporary folder");
    let started = Instant::now();
    let (source, per_group) = make_source(dir.path(), mib);
    println!(
        "sync bench: generated a {mib} MiB source ({GROUPS} groups of 2 snapshots) in {:.1?}",
        started.elapsed()
    );

    // Sync into a new S3 datastore.
    let prefix = keepsake_testkit::s3::unique_prefix("bench-sync");
    let (target, remote) = s3_target(&config, &prefix, dir.path());
    let before_objects = objects(&remote);
    let before = remote.requests();
    let started = Instant::now();
    let report = target
        .sync_from(&source, &SyncOptions::default())
        .expect("sync");
    let seconds = started.elapsed().as_secs_f64();
    let requests = remote.requests() - before;
    // The listing holds the metadata (`.cnt/…`); chunks are keys of their own.
    let written = objects(&remote) - before_objects + report.chunks as usize;
    line(
        &format!(
            "first run ({} snapshots, {} chunks, default workers, bucket listing of {} chunks)",
            report.snapshots, report.chunks, report.bucket_chunks_listed
        ),
        seconds,
        report.chunk_bytes + report.file_bytes,
        requests,
        written,
    );

    // The floor: the same chunk files PUT by 16 threads into another prefix, nothing else.
    let chunk_files: Vec<std::path::PathBuf> = walk(&dir.path().join("source/.chunks"));
    let bare_prefix = keepsake_testkit::s3::unique_prefix("bench-bare");
    let bare = ObjectBackend::s3(&config, &bare_prefix).expect("S3 configuration");
    let next = AtomicUsize::new(0);
    let bytes = AtomicUsize::new(0);
    let before = bare.requests();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(file) = chunk_files.get(i) else {
                        break;
                    };
                    let data = std::fs::read(file).expect("chunk file");
                    let name = file.file_name().unwrap().to_string_lossy();
                    let key = BackendPath::new(&format!(".chunks/{}/{name}", &name[..4])).unwrap();
                    bare.write(&key, &data, WriteMode::Replace).expect("put");
                    bytes.fetch_add(data.len(), Ordering::Relaxed);
                }
            });
        }
    });
    line(
        &format!(
            "bare parallel upload of the same {} chunk files",
            chunk_files.len()
        ),
        started.elapsed().as_secs_f64(),
        bytes.load(Ordering::Relaxed) as u64,
        bare.requests() - before,
        chunk_files.len(),
    );

    // Nothing changed: a second run from a new process's point of view (a new backend).
    drop(target);
    let cache = dir.path().join(format!("cache-{prefix}"));
    let remote = ObjectBackend::s3(&config, &prefix).expect("S3 configuration");
    let local = LocalBackend::open(&cache, SyncLevel::None).expect("cache folder");
    let target = DataStore::builder(&prefix, &cache)
        .lock_root(dir.path().join("locks"))
        .backend(Arc::new(CachedBackend::new(local, remote.clone())))
        .namespace_markers(true)
        .open()
        .expect("open the target");
    let before = remote.requests();
    let started = Instant::now();
    let again = target
        .sync_from(&source, &SyncOptions::default())
        .expect("sync again");
    assert_eq!((again.snapshots, again.chunks), (0, 0));
    let requests = remote.requests() - before;
    println!(
        "sync bench, second run (nothing changed): {:.2} s, {} requests ({requests})",
        started.elapsed().as_secs_f64(),
        requests.total()
    );

    // A new snapshot per group, and a cache that lost its chunk files (a new cache over the
    // bucket, or an evicted one): the listing, not a request per chunk, says which are there.
    backup_day(&source, per_group, 2);
    std::fs::remove_dir_all(cache.join(".chunks")).expect("cache chunks");
    std::fs::create_dir(cache.join(".chunks")).expect("cache chunks");
    let before_objects = objects(&remote);
    let before = remote.requests();
    let started = Instant::now();
    let third = target
        .sync_from(&source, &SyncOptions::default())
        .expect("sync a new snapshot");
    let seconds = started.elapsed().as_secs_f64();
    let requests = remote.requests() - before;
    let written = objects(&remote) - before_objects + third.chunks as usize;
    line(
        &format!(
            "third run ({} new snapshots, {} chunks new, {} in the bucket but not the cache; \
             bucket listing of {} chunks)",
            third.snapshots, third.chunks, third.chunks_present, third.bucket_chunks_listed
        ),
        seconds,
        third.chunk_bytes + third.file_bytes,
        requests,
        written,
    );
}

fn walk(folder: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(folder).expect("chunk folder") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out.sort();
    out
}
