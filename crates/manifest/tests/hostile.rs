//! Decoders fed with arbitrary and mutated input: they return a value or a typed error, never panic,
//! and stay within bounded time and memory. Each property also checks that what is accepted is
//! consistent (a decoded manifest writes and re-reads to itself; an accepted index agrees with its
//! own entries).

use keepsake_manifest::Error;
use keepsake_manifest::blob::Compression;
use keepsake_manifest::blob::{self, BlobKind, DataBlob};
use keepsake_manifest::crypt::CryptConfig;
use keepsake_manifest::index::{
    ChunkIndex, DYNAMIC_INDEX_MAGIC, DynamicIndex, DynamicIndexWriter, FIXED_INDEX_MAGIC,
    FixedIndex, FixedIndexWriter, INDEX_HEADER_LEN, IndexFile,
};
use keepsake_manifest::manifest::BackupManifest;
use proptest::collection::vec;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Edits to apply to valid bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        4 => (any::<usize>(), 1u8..).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Remove(at, n)),
    ];
    vec(one, 1..4)
}

fn mutate(bytes: &mut Vec<u8>, edits: &[Mutation], from: usize) {
    for edit in edits {
        // Mutations land after `from`, so that a fixed-up header is not undone.
        let span = bytes.len().saturating_sub(from).max(1);
        let pos = |at: usize| from + at % span;
        match edit {
            Mutation::Flip(at, bit) if !bytes.is_empty() => {
                let i = pos(*at).min(bytes.len() - 1);
                bytes[i] ^= bit;
            }
            Mutation::Set(at, b) if !bytes.is_empty() => {
                let i = pos(*at).min(bytes.len() - 1);
                bytes[i] = *b;
            }
            Mutation::Truncate(at) => bytes.truncate(pos(*at)),
            Mutation::Insert(at, b) => {
                let i = pos(*at).min(bytes.len());
                bytes.splice(i..i, b.iter().copied());
            }
            Mutation::Remove(at, n) => {
                let i = pos(*at).min(bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            _ => {}
        }
    }
}

/// Rewrites a blob's CRC so that decoding gets past it.
fn fix_crc(raw: &mut [u8]) {
    let Some(kind) = BlobKind::from_magic(raw) else {
        return;
    };
    if raw.len() >= kind.header_len() {
        let crc = crc32fast::hash(&raw[kind.header_len()..]);
        raw[8..12].copy_from_slice(&crc.to_le_bytes());
    }
}

fn decode_both_ways(raw: &[u8], key: &CryptConfig) {
    for config in [None, Some(key)] {
        match blob::decode(raw, config) {
            Ok(data) => assert!(data.len() <= blob::MAX_BLOB_SIZE),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    let _ = DataBlob::read_from(raw);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn blob_decode_survives_any_bytes(bytes in vec(any::<u8>(), 0..256)) {
        decode_both_ways(&bytes, &CryptConfig::new([1; 32]));
    }

    /// Random payloads behind a valid magic and CRC reach zstd and AES-GCM.
    #[test]
    fn blob_decode_survives_any_payload(
        kind in prop::sample::select(BlobKind::ALL.to_vec()),
        zstd_magic in any::<bool>(),
        payload in vec(any::<u8>(), 0..512),
    ) {
        let mut raw = kind.magic().to_vec();
        raw.extend_from_slice(&[0; 4]);
        if kind.is_encrypted() {
            raw.extend_from_slice(&[7; 32]);
        }
        if zstd_magic {
            raw.extend_from_slice(&ZSTD_MAGIC);
        }
        raw.extend_from_slice(&payload);
        fix_crc(&mut raw);
        decode_both_ways(&raw, &CryptConfig::new([1; 32]));
    }

    #[test]
    fn blob_decode_survives_mutated_blobs(
        data in vec(0u8..8, 0..2048),
        encrypt in any::<bool>(),
        compress in any::<bool>(),
        edits in mutations(),
        crc in any::<bool>(),
    ) {
        let key = CryptConfig::new([1; 32]);
        let compression = if compress { Compression::Zstd } else { Compression::None };
        let mut raw = DataBlob::encode(&data, encrypt.then_some(&key), compression).unwrap().into_bytes();
        let header = if encrypt { 44 } else { 12 };
        // Mostly mutate the payload, sometimes the header too.
        mutate(&mut raw, &edits, if crc { header } else { 0 });
        if crc {
            fix_crc(&mut raw);
        }
        decode_both_ways(&raw, &key);
        // With the right key at hand, whatever fails is damage.
        if let Err(e) = blob::decode(&raw, Some(&key)) {
            prop_assert!(e.is_corrupt(), "{e}");
        }
    }

    #[test]
    fn manifest_parse_survives_any_bytes(bytes in vec(any::<u8>(), 0..256)) {
        check_manifest_input(&bytes)?;
    }

    #[test]
    fn manifest_parse_survives_mutated_json(edits in mutations(), which in 0usize..3) {
        let mut json = sample_manifest(which).into_bytes();
        mutate(&mut json, &edits, 0);
        check_manifest_input(&json)?;
    }

    #[test]
    fn manifest_blob_load_survives_mutated_blobs(edits in mutations(), crc in any::<bool>()) {
        let json = sample_manifest(2);
        let mut raw = BackupManifest::from_json(json.as_bytes()).unwrap().to_blob().unwrap().into_bytes();
        mutate(&mut raw, &edits, if crc { 12 } else { 0 });
        if crc {
            fix_crc(&mut raw);
        }
        if let Ok(manifest) = BackupManifest::from_blob_bytes(&raw) {
            prop_assert_eq!(&BackupManifest::from_json(manifest.to_json().as_bytes()).unwrap(), &manifest);
        }
    }

    #[test]
    fn index_readers_survive_any_headers(
        fixed in any::<bool>(),
        header in vec(any::<u8>(), 0..80),
        entries in vec(any::<u8>(), 0..200),
        fix_csum in any::<bool>(),
        claimed_len in prop_oneof![Just(None), any::<u64>().prop_map(Some)],
    ) {
        let mut bytes = if fixed { FIXED_INDEX_MAGIC } else { DYNAMIC_INDEX_MAGIC }.to_vec();
        bytes.extend_from_slice(&header);
        bytes.resize(INDEX_HEADER_LEN, 0);
        bytes.extend_from_slice(&entries);
        if fix_csum {
            let csum = Sha256::digest(&entries);
            bytes[32..64].copy_from_slice(&csum);
        }
        check_index_input(&bytes, claimed_len)?;
    }

    #[test]
    fn index_readers_survive_mutated_indexes(
        fixed in any::<bool>(),
        digests in vec(any::<[u8; 32]>(), 0..8),
        edits in mutations(),
        from_entries in any::<bool>(),
    ) {
        let mut bytes = if fixed {
            let mut w = FixedIndexWriter::new(digests.len() as u64 * 4096, 4096, 0).unwrap();
            for d in &digests {
                w.push(d).unwrap();
            }
            w.finish().unwrap()
        } else {
            let mut w = DynamicIndexWriter::new(0);
            for d in &digests {
                w.push_chunk(u64::from(d[0]), d).unwrap();
            }
            w.finish().unwrap()
        };
        mutate(&mut bytes, &edits, if from_entries { INDEX_HEADER_LEN } else { 0 });
        check_index_input(&bytes, None)?;
    }

    #[test]
    fn index_readers_survive_short_or_foreign_input(bytes in vec(any::<u8>(), 0..64)) {
        check_index_input(&bytes, None)?;
    }
}

fn check_manifest_input(bytes: &[u8]) -> Result<(), TestCaseError> {
    match BackupManifest::from_json(bytes) {
        Ok(manifest) => {
            let text = manifest.to_json();
            prop_assert_eq!(
                &BackupManifest::from_json(text.as_bytes()).unwrap(),
                &manifest
            );
            let _ = manifest.canonical_json();
            let _ = manifest.notes();
            let _ = manifest.verify_state();
            let _ = manifest.key_fingerprint();
            let _ = manifest.chunk_upload_stats();
            let _ = manifest.verify_signature(&CryptConfig::new([2; 32]));
        }
        Err(e) => prop_assert!(matches!(e, Error::Json { .. }), "{e}"),
    }
    Ok(())
}

fn check_index_input(bytes: &[u8], claimed_len: Option<u64>) -> Result<(), TestCaseError> {
    let len = claimed_len.unwrap_or(bytes.len() as u64);
    let actual = bytes.len() as u64;
    let results = [
        (FixedIndex::from_slice(bytes).map(IndexFile::Fixed), actual),
        (
            DynamicIndex::from_slice(bytes).map(IndexFile::Dynamic),
            actual,
        ),
        (FixedIndex::read_from(bytes, len).map(IndexFile::Fixed), len),
        (
            DynamicIndex::read_from(bytes, len).map(IndexFile::Dynamic),
            len,
        ),
        (IndexFile::from_slice(bytes), actual),
    ];
    for (res, len) in results {
        match res {
            Ok(index) => {
                let mut end = 0;
                for chunk in index.chunks() {
                    prop_assert_eq!(chunk.range.start, end);
                    prop_assert!(chunk.range.end >= chunk.range.start);
                    end = chunk.range.end;
                }
                prop_assert_eq!(end, index.archive_size());
                prop_assert_eq!(index.as_bytes().len() as u64, len);
            }
            Err(e) => prop_assert!(e.is_corrupt() || matches!(e, Error::Io(_)), "{e}"),
        }
    }
    Ok(())
}

fn sample_manifest(which: usize) -> String {
    let files = r#"[
    {"crypt-mode": "none", "csum": "761b066ddafa49f598f7c9714737aee00206069d9a73f88e0cb833f74368f999", "filename": "qemu-server.conf.blob", "size": 103},
    {"crypt-mode": "encrypt", "csum": "bb894556a84ecb303bfdbfc3f094469abc29307aa5d8d29888f88825454d5e65", "filename": "drive-scsi0.img.fidx", "size": 8388608}
  ]"#;
    match which {
        0 => format!(
            r#"{{"backup-type": "vm", "backup-id": "100", "backup-time": 1717600000, "files": {files}}}"#
        ),
        1 => format!(
            r#"{{"backup-type": "ct", "backup-id": "x_1", "backup-time": 1, "files": {files}, "signature": "{}", "future": {{"a": [1, "b", null]}}}}"#,
            "ab".repeat(32)
        ),
        _ => format!(
            r#"{{"backup-type": "host", "backup-id": "h", "backup-time": 1717600000, "files": {files}, "signature": null,
  "unprotected": {{"notes": "n\u00e9", "verify_state": {{"upid": "UPID:x", "state": "failed"}},
  "key-fingerprint": "{}", "chunk_upload_stats": {{"count": 1, "size": 2, "compressed_size": 3, "duplicates": 4}}}}}}"#,
            ["0e"; 32].join(":")
        ),
    }
}
