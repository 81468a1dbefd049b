//! Loading a manifest from its blob bytes (CRC, zstd decode, JSON parse into the model), next to the
//! bare work measured in the same run: a zstd decode plus a serde_json parse of the same bytes.
//!
//! Inputs: the smallest and the largest manifest of the PBS fixture (as PBS wrote them: streamed
//! zstd frames without content size), and a synthetic 64-file manifest both as PBS writes it and as
//! keepsake writes it (one-shot frame with content size).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion};
use keepsake_hierarchy::BackupDir;
use keepsake_manifest::blob::{BlobCodec, BlobKind};
use keepsake_manifest::manifest::{
    BackupManifest, ChunkUploadStats, CryptMode, FileInfo, VerifyOutcome, VerifyState,
};
use keepsake_testkit::fixture::PbsFixture;
use serde::Deserialize;
use serde_json::Value;

mod support;

const GROUP: &str = "manifest_load";

/// A plain serde model of the manifest (no unknown-key keeping, checksums left as text): the
/// cheapest typed parse.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
struct PlainManifest {
    backup_type: String,
    backup_id: String,
    backup_time: i64,
    files: Vec<PlainFile>,
    #[serde(default)]
    unprotected: Value,
    signature: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
struct PlainFile {
    filename: String,
    #[serde(default)]
    crypt_mode: Option<String>,
    size: u64,
    csum: String,
}

struct Input {
    name: &'static str,
    raw: Vec<u8>,
    json_len: usize,
    /// Where the manifest lies in the unpacked fixture, for the load-from-file variant.
    path: Option<PathBuf>,
}

fn synthetic() -> BackupManifest {
    let snapshot: BackupDir = "host/build-server-01/2024-06-05T15:06:40Z".parse().unwrap();
    let mut m = BackupManifest::new(&snapshot);
    for i in 0..64u8 {
        let name = match i % 3 {
            0 => format!("drive-scsi{i}.img.fidx"),
            1 => format!("volume-{i}.pxar.didx"),
            _ => format!("config-{i}.conf.blob"),
        };
        let csum = [i.wrapping_mul(37); 32];
        m.add_file(
            FileInfo::new(name, CryptMode::None, 1 << (20 + u32::from(i % 12)), csum).unwrap(),
        )
        .unwrap();
    }
    m.set_notes(Some(
        &"nightly build server backup; keep until the next release. ".repeat(16),
    ));
    m.set_verify_state(Some(&VerifyState {
        upid: "UPID:pbs:000004D2:00001F40:00000003:6660A2C0:verify:store1:root@pam:".into(),
        state: VerifyOutcome::Ok,
    }));
    m.set_chunk_upload_stats(Some(ChunkUploadStats {
        count: 4096,
        size: 1 << 34,
        compressed_size: 1 << 33,
        duplicates: 17,
    }));
    m
}

/// The blob PBS writes for `json`: a streamed zstd frame without content size.
fn pbs_blob(json: &[u8]) -> Vec<u8> {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    encoder.include_contentsize(false).unwrap();
    std::io::Write::write_all(&mut encoder, json).unwrap();
    let frame = encoder.finish().unwrap();
    let mut raw = BlobKind::Compressed.magic().to_vec();
    raw.extend_from_slice(&crc32fast::hash(&frame).to_le_bytes());
    raw.extend_from_slice(&frame);
    raw
}

fn inputs(fixture: &PbsFixture) -> Vec<Input> {
    let mut out = Vec::new();
    for (name, dir) in [
        (
            "fixture-smallest",
            "ns/prod/host/myhost/2024-06-05T18:06:40Z",
        ),
        ("fixture-largest", "vm/100/2024-06-05T15:06:40Z"),
    ] {
        let path = fixture.path().join(dir).join("index.json.blob");
        let raw = std::fs::read(&path).expect("fixture manifest");
        let json_len = keepsake_manifest::blob::decode(&raw, None).unwrap().len();
        out.push(Input {
            name,
            raw,
            json_len,
            path: Some(path),
        });
    }
    let big = synthetic();
    let json = big.to_json();
    out.push(Input {
        name: "synthetic64-pbs-frame",
        raw: pbs_blob(json.as_bytes()),
        json_len: json.len(),
        path: None,
    });
    out.push(Input {
        name: "synthetic64-keepsake-frame",
        raw: big.to_blob().unwrap().into_bytes(),
        json_len: json.len(),
        path: None,
    });
    out
}

fn bench(c: &mut Criterion, inputs: &[Input]) {
    let mut group = c.benchmark_group(GROUP);
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for input in inputs {
        let raw = &input.raw[..];
        let payload = &raw[12..];
        group.bench_with_input(
            BenchmarkId::new("keepsake_fresh", input.name),
            raw,
            |b, raw| b.iter(|| BackupManifest::from_blob_bytes(black_box(raw)).unwrap()),
        );
        let mut codec = BlobCodec::new();
        let mut buf = Vec::new();
        group.bench_with_input(
            BenchmarkId::new("keepsake_reused", input.name),
            raw,
            |b, raw| {
                b.iter(|| {
                    BackupManifest::from_blob_bytes_with(&mut codec, black_box(raw), &mut buf)
                        .unwrap()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("bare_value_fresh", input.name),
            payload,
            |b, p| {
                b.iter(|| {
                    let json = zstd::stream::decode_all(black_box(p)).unwrap();
                    serde_json::from_slice::<Value>(&json).unwrap()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("bare_typed_fresh", input.name),
            payload,
            |b, p| {
                b.iter(|| {
                    let json = zstd::stream::decode_all(black_box(p)).unwrap();
                    serde_json::from_slice::<PlainManifest>(&json).unwrap()
                })
            },
        );
        // The strictest baseline: a reused context and an output buffer of exactly the right size,
        // which a real reader of PBS's frames (no content size) cannot know in advance.
        let mut decompressor = zstd::bulk::Decompressor::new().unwrap();
        let mut json = Vec::with_capacity(input.json_len);
        group.bench_with_input(
            BenchmarkId::new("bare_typed_reused", input.name),
            payload,
            |b, p| {
                b.iter(|| {
                    json.clear();
                    decompressor
                        .decompress_to_buffer(black_box(p), &mut json)
                        .unwrap();
                    serde_json::from_slice::<PlainManifest>(&json).unwrap()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("bare_value_reused", input.name),
            payload,
            |b, p| {
                b.iter(|| {
                    json.clear();
                    decompressor
                        .decompress_to_buffer(black_box(p), &mut json)
                        .unwrap();
                    serde_json::from_slice::<Value>(&json).unwrap()
                })
            },
        );
    }
    group.finish();
}

fn main() {
    let start = SystemTime::now();
    let fixture = PbsFixture::unpack().expect("fixture");
    let inputs = inputs(&fixture);
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion, &inputs);
    criterion.final_summary();

    let mut pairs = Vec::new();
    for input in &inputs {
        for (keepsake, baseline) in [
            ("keepsake_fresh", "bare_value_fresh"),
            ("keepsake_fresh", "bare_typed_fresh"),
            ("keepsake_reused", "bare_value_reused"),
            ("keepsake_reused", "bare_typed_reused"),
        ] {
            pairs.push(support::Pair {
                group: GROUP,
                keepsake: format!("{keepsake}/{}", input.name),
                baseline: format!("{baseline}/{}", input.name),
                bytes: 0,
            });
        }
    }
    support::print_ratios("Manifest load (target: ratio <= 1.2)", &pairs, start);
    let since = start;
    for input in inputs.iter().filter(|i| i.path.is_some()) {
        let id = format!("keepsake_file_reused/{}", input.name);
        if let Some(ns) = support::median_ns(GROUP, &id, since) {
            println!(
                "  {GROUP}/{id}: {:.2} µs including the file read (PBS 3.2.4: 20-57 µs)",
                ns / 1e3
            );
        }
    }
    for input in &inputs {
        println!(
            "  {}: blob {} bytes, JSON {} bytes",
            input.name,
            input.raw.len(),
            input.json_len
        );
    }
}
