//! Reading data: a content verify (`ChunkVerification::Content`) and `cat` of a 1 GiB image in
//! 4 MiB chunks, compressible and random, each next to its floor measured in the same run.
//!
//! * verify floor: every chunk file read, its CRC computed, its zstd payload decoded (one reused
//!   context per thread) and SHA-256 taken, on as many threads as the verify uses, in the same
//!   (digest) order: what checking a chunk cannot avoid.
//! * cat floors: a bare sequential read of the chunk files in index order; and that read with the
//!   decode (CRC, zstd, SHA-256) on one thread.
//!
//! `KEEPSAKE_BENCH_READ_MIB` sets the image size (default 1024).

use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keepsake_backend::SyncLevel;
use keepsake_datastore::{
    ChunkVerification, DataStore, Encryption, Snapshot, VerifyOptions, VerifyScope,
};
use keepsake_hierarchy::{BackupNamespace, BackupTime};
use keepsake_manifest::index::{ChunkIndex, IndexFile};
use sha2::{Digest, Sha256};

const CHUNK: usize = 4 << 20;
const ARCHIVE: &str = "drive-scsi0.img.fidx";

#[derive(Clone, Copy)]
enum Data {
    Compressible,
    Random,
}

/// Chunk `i` of the image: distinct per chunk; compressible data is words from a small
/// vocabulary (zstd level 1 makes about a third of it), random data does not compress.
fn chunk(kind: Data, i: u64, out: &mut Vec<u8>) {
    out.clear();
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    match kind {
        Data::Random => {
            while out.len() < CHUNK {
                out.extend_from_slice(&next().to_le_bytes());
            }
        }
        Data::Compressible => {
            const WORDS: [&[u8]; 16] = [
                b"backup ",
                b"chunk ",
                b"datastore ",
                b"snapshot ",
                b"verify ",
                b"index ",
                b"manifest ",
                b"proxmox ",
                b"keepsake ",
                b"group ",
                b"namespace ",
                b"prune ",
                b"owner ",
                b"notes ",
                b"protected ",
                b"garbage\n",
            ];
            while out.len() < CHUNK {
                let r = next();
                out.extend_from_slice(WORDS[(r & 15) as usize]);
                out.extend_from_slice(&(r >> 40).to_le_bytes()[..2]);
            }
        }
    }
    out.truncate(CHUNK);
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: DataStore,
    snapshot: Snapshot,
    /// Chunk files in index order.
    files: Vec<PathBuf>,
    bytes: u64,
}

fn fixture(kind: Data, mib: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = DataStore::builder("bench", &root)
        .lock_root(dir.path().join("locks"))
        .sync_level(SyncLevel::None)
        .create()
        .unwrap();
    let bytes = mib << 20;
    let group = store.group(&BackupNamespace::root(), &"vm/100".parse().unwrap());
    let mut writer = group
        .start_backup(
            &"root@pam".parse().unwrap(),
            BackupTime::from_epoch(1_700_000_000).unwrap(),
        )
        .unwrap();
    let mut archive = writer
        .start_fixed_archive(ARCHIVE, bytes, CHUNK as u64, Encryption::None)
        .unwrap();
    let mut data = Vec::with_capacity(CHUNK);
    for i in 0..bytes / CHUNK as u64 {
        chunk(kind, i, &mut data);
        archive.push(&data).unwrap();
    }
    archive.finish().unwrap();
    let snapshot = writer.finish().unwrap();
    let index = IndexFile::from_bytes(snapshot.read_file(ARCHIVE).unwrap()).unwrap();
    let files = (0..index.chunk_count())
        .map(|i| chunk_file(&root, index.digest(i).unwrap()))
        .collect();
    Fixture {
        _dir: dir,
        store,
        snapshot,
        files,
        bytes,
    }
}

fn chunk_file(root: &Path, digest: &[u8; 32]) -> PathBuf {
    let hex = hex::encode(digest);
    root.join(".chunks").join(&hex[..4]).join(hex)
}

/// Checks one stored chunk as cheaply as it can be done: CRC, zstd decode, SHA-256.
fn bare_check(raw: &[u8], zstd: &mut zstd::bulk::Decompressor<'_>, out: &mut Vec<u8>) -> [u8; 32] {
    let crc = crc32fast::hash(&raw[12..]);
    assert_eq!(crc.to_le_bytes(), raw[8..12]);
    let plain = if raw[0] == 49 {
        // The compressed magic.
        out.clear();
        zstd.decompress_to_buffer(&raw[12..], out).unwrap();
        &out[..]
    } else {
        &raw[12..]
    };
    Sha256::digest(plain).into()
}

fn floor_verify(files: &[PathBuf], threads: usize) -> u64 {
    let mut sorted: Vec<&PathBuf> = files.iter().collect();
    sorted.sort();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut zstd = zstd::bulk::Decompressor::new().unwrap();
                    let mut out = Vec::with_capacity(CHUNK);
                    let mut n = 0u64;
                    while let Some(file) =
                        sorted.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        let raw = std::fs::read(file).unwrap();
                        n += u64::from(black_box(bare_check(&raw, &mut zstd, &mut out))[0]);
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    })
}

fn bench(c: &mut Criterion) {
    let mib: u64 = std::env::var("KEEPSAKE_BENCH_READ_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    for (kind, name) in [
        (Data::Compressible, "compressible"),
        (Data::Random, "random"),
    ] {
        let fx = fixture(kind, mib);
        let stored: u64 = fx
            .files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        eprintln!(
            "read_data/{name}: {} chunks, {} MiB of data stored in {} MiB, {threads} threads",
            fx.files.len(),
            fx.bytes >> 20,
            stored >> 20
        );
        let mut group = c.benchmark_group(format!("read_data/{name}"));
        group.sample_size(10);
        group.throughput(Throughput::Bytes(fx.bytes));
        let options = VerifyOptions::default()
            .chunks(ChunkVerification::Content)
            .threads(threads);
        group.bench_function("verify_read_data", |b| {
            b.iter(|| {
                let report = fx.store.verify(&VerifyScope::Store, &options).unwrap();
                assert!(report.is_ok());
                assert_eq!(report.content.verified, fx.files.len() as u64);
            })
        });
        group.bench_function("floor_read_crc_zstd_sha256_parallel", |b| {
            b.iter(|| floor_verify(&fx.files, threads))
        });
        group.bench_function("cat", |b| {
            b.iter(|| {
                // As `keepsake cat` reads: 1 MiB at a time.
                let mut archive = fx.snapshot.open_archive(ARCHIVE).unwrap();
                let mut buf = vec![0u8; 1 << 20];
                let mut n = 0u64;
                loop {
                    let read = archive.read(&mut buf).unwrap();
                    if read == 0 {
                        break;
                    }
                    n += read as u64;
                }
                assert_eq!(n, fx.bytes);
            })
        });
        group.bench_function("floor_bare_read", |b| {
            b.iter(|| {
                let mut buf = Vec::with_capacity(CHUNK + 64);
                let mut n = 0;
                for file in &fx.files {
                    buf.clear();
                    std::fs::File::open(file)
                        .unwrap()
                        .read_to_end(&mut buf)
                        .unwrap();
                    n += buf.len();
                }
                black_box(n)
            })
        });
        group.bench_function("floor_read_and_decode_one_thread", |b| {
            b.iter(|| floor_verify(&fx.files, 1))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
