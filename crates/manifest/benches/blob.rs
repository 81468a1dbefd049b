//! Blob encode and decode throughput next to the bare primitives on the same data in the same run:
//! zstd level 1 (reused context) for compressed blobs, AES-256-GCM (16-byte IV) for encrypted ones,
//! both in a row for encrypted and compressed ones. Data: 4 MiB, PBS's default chunk size, either
//! compressible (log-like text) or random.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aes::Aes256;
use aes_gcm::{AeadInOut, AesGcm, KeyInit};
use criterion::{BenchmarkId, Criterion, Throughput};
use keepsake_manifest::blob::BlobCodec;
use keepsake_manifest::blob::Compression;
use keepsake_manifest::crypt::CryptConfig;

mod support;

const LEN: usize = 4 << 20;
const KEY: [u8; 32] = [0x42; 32];
const IV: [u8; 16] = [0x24; 16];

fn text_data() -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN + 128);
    let mut i = 0u64;
    while out.len() < LEN {
        let line = format!(
            "2024-06-05T15:{:02}:{:02}Z host-{} kernel: block {} written, {} bytes, state={}\n",
            i / 60 % 60,
            i % 60,
            i % 7,
            i.wrapping_mul(2_654_435_761) % 100_000,
            (i * 4096) % 1_000_003,
            ["ok", "retry", "ok", "ok"][(i % 4) as usize],
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(LEN);
    out
}

fn random_data() -> Vec<u8> {
    // xorshift: incompressible and reproducible, without a rand dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..LEN)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

type Cipher = AesGcm<Aes256, U16>;

fn bare_encrypt(cipher: &Cipher, plain: &[u8], out: &mut Vec<u8>) -> [u8; 16] {
    out.clear();
    out.resize(plain.len(), 0);
    let buf = InOutBuf::new(plain, &mut out[..]).unwrap();
    cipher
        .encrypt_inout_detached(&IV.into(), &[], buf)
        .unwrap()
        .into()
}

fn bare_decrypt(cipher: &Cipher, tag: &[u8; 16], ciphertext: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(ciphertext);
    cipher
        .decrypt_inout_detached(&IV.into(), &[], (&mut out[..]).into(), tag.into())
        .unwrap();
}

struct Case {
    name: &'static str,
    data: Vec<u8>,
    encrypt: bool,
    compress: Compression,
}

fn bench(c: &mut Criterion, cases: &[Case]) {
    let key = CryptConfig::new(KEY);
    let cipher = Cipher::new(&KEY.into());
    let mut codec = BlobCodec::new();
    let mut compressor = zstd::bulk::Compressor::new(1).unwrap();
    let mut decompressor = zstd::bulk::Decompressor::new().unwrap();

    let mut encode = c.benchmark_group("blob_encode");
    encode
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(LEN as u64));
    for case in cases {
        let config = case.encrypt.then_some(&key);
        // Both sides reuse their output buffers: `encode_into` is the API for loops.
        let mut blob_out = Vec::new();
        encode.bench_with_input(
            BenchmarkId::new("keepsake", case.name),
            &case.data,
            |b, data| {
                b.iter(|| {
                    codec
                        .encode_into(black_box(data), config, case.compress, &mut blob_out)
                        .unwrap()
                })
            },
        );
        let mut ciphertext = Vec::new();
        let mut frame = Vec::with_capacity(zstd::compress_bound(LEN));
        encode.bench_with_input(
            BenchmarkId::new("bare", case.name),
            &case.data,
            |b, data| {
                b.iter(
                    || match (case.compress == Compression::Zstd, case.encrypt) {
                        (true, false) => {
                            frame.clear();
                            let frame_len =
                                compressor.compress_to_buffer(black_box(&data[..]), &mut frame);
                            black_box(frame_len.unwrap());
                        }
                        (false, true) => {
                            black_box(bare_encrypt(&cipher, black_box(data), &mut ciphertext));
                        }
                        _ => {
                            frame.clear();
                            compressor
                                .compress_to_buffer(black_box(&data[..]), &mut frame)
                                .unwrap();
                            let plain = if frame.len() < data.len() {
                                &frame[..]
                            } else {
                                &data[..]
                            };
                            black_box(bare_encrypt(&cipher, plain, &mut ciphertext));
                        }
                    },
                )
            },
        );
    }
    encode.finish();

    let mut decode = c.benchmark_group("blob_decode");
    decode
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(LEN as u64));
    for case in cases {
        let config = case.encrypt.then_some(&key);
        let blob = codec.encode(&case.data, config, case.compress).unwrap();
        let kind = blob.kind();
        let mut out = Vec::new();
        decode.bench_with_input(
            BenchmarkId::new("keepsake", case.name),
            blob.as_bytes(),
            |b, raw| b.iter(|| codec.decode_into(black_box(raw), config, &mut out).unwrap()),
        );
        // The bare side gets the same payload: the zstd frame, or ciphertext and tag.
        let (tag, body): ([u8; 16], Vec<u8>) = if kind.is_encrypted() {
            let mut plain = case.data.clone();
            if kind.is_compressed() {
                plain = compressor.compress(&case.data).unwrap();
            }
            let mut ct = Vec::new();
            (bare_encrypt(&cipher, &plain, &mut ct), ct)
        } else {
            ([0; 16], blob.payload().to_vec())
        };
        let mut scratch = Vec::with_capacity(LEN);
        let mut plain = Vec::with_capacity(LEN);
        decode.bench_with_input(BenchmarkId::new("bare", case.name), &body, |b, body| {
            b.iter(|| {
                if kind.is_encrypted() {
                    bare_decrypt(&cipher, &tag, black_box(body), &mut scratch);
                    if kind.is_compressed() {
                        plain.clear();
                        decompressor
                            .decompress_to_buffer(&scratch[..], &mut plain)
                            .unwrap();
                    }
                } else if kind.is_compressed() {
                    plain.clear();
                    decompressor
                        .decompress_to_buffer(black_box(&body[..]), &mut plain)
                        .unwrap();
                } else {
                    plain.clear();
                    plain.extend_from_slice(black_box(body));
                }
            })
        });
    }
    decode.finish();
}

fn main() {
    let start = SystemTime::now();
    let cases = vec![
        Case {
            name: "zstd-text",
            data: text_data(),
            encrypt: false,
            compress: Compression::Zstd,
        },
        Case {
            name: "zstd-random",
            data: random_data(),
            encrypt: false,
            compress: Compression::Zstd,
        },
        Case {
            name: "aes-random",
            data: random_data(),
            encrypt: true,
            compress: Compression::None,
        },
        Case {
            name: "aes-zstd-text",
            data: text_data(),
            encrypt: true,
            compress: Compression::Zstd,
        },
    ];
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion, &cases);
    criterion.final_summary();

    let mut pairs = Vec::new();
    for group in ["blob_encode", "blob_decode"] {
        for case in &cases {
            pairs.push(support::Pair {
                group,
                keepsake: format!("keepsake/{}", case.name),
                baseline: format!("bare/{}", case.name),
                bytes: LEN as u64,
            });
        }
    }
    support::print_ratios("Blob codec (target: ratio <= 1.1)", &pairs, start);
}
