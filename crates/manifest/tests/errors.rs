//! One test per error kind: each builds the smallest input that must fail that way.

use std::io::{self, Read};

use keepsake_hierarchy::BackupDir;
use keepsake_manifest::blob::Compression;
use keepsake_manifest::blob::{self, BlobKind, DataBlob, MAX_BLOB_SIZE};
use keepsake_manifest::crypt::{CryptConfig, Fingerprint};
use keepsake_manifest::index::{
    DynamicIndex, DynamicIndexWriter, FixedIndex, FixedIndexWriter, INDEX_HEADER_LEN, IndexFile,
};
use keepsake_manifest::manifest::{BackupManifest, CryptMode, FileInfo};
use keepsake_manifest::{Error, Format};

fn key(n: u8) -> CryptConfig {
    CryptConfig::new([n; 32])
}

/// A blob of `kind` around `payload`, with a correct CRC.
fn raw_blob(kind: BlobKind, payload: &[u8]) -> Vec<u8> {
    let mut raw = kind.magic().to_vec();
    raw.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    raw.extend_from_slice(payload);
    raw
}

fn manifest() -> BackupManifest {
    let dir: BackupDir = "ct/200/2024-06-05T16:06:40Z".parse().unwrap();
    let mut m = BackupManifest::new(&dir);
    m.add_file(FileInfo::new("pct.conf.blob", CryptMode::None, 84, [0xa2; 32]).unwrap())
        .unwrap();
    m
}

/// Parses `json` and returns the path and reason of the expected [`Error::Json`].
fn json_error(json: &str) -> (String, String) {
    match BackupManifest::from_json(json.as_bytes()) {
        Err(Error::Json { path, reason }) => (path, reason),
        other => panic!("expected a JSON error for {json}, got {other:?}"),
    }
}

/// A zstd frame without content size made of `blocks` RLE blocks of 128 KiB each: a few bytes that
/// expand to `blocks * 128 KiB`.
fn rle_bomb(blocks: usize) -> Vec<u8> {
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd];
    // Frame header descriptor: no content size, no checksum, no dictionary, not single-segment;
    // window 128 KiB (exponent 7, mantissa 0).
    frame.extend_from_slice(&[0x00, 7 << 3]);
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = last | (1 << 1) | ((128 * 1024) << 3);
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(0x61);
    }
    frame
}

#[test]
fn too_small() {
    let empty = raw_blob(BlobKind::Uncompressed, b"");
    assert_eq!(blob::decode(&empty, None).unwrap(), b"");
    for len in [0, 1, 8, 11] {
        assert!(matches!(
            blob::decode(&empty[..len], None),
            Err(Error::TooSmall {
                format: Format::Blob,
                min: 12,
                ..
            })
        ));
    }
    let short_encrypted = raw_blob(BlobKind::Encrypted, &[0; 31]);
    assert!(matches!(
        blob::decode(&short_encrypted, Some(&key(1))),
        Err(Error::TooSmall {
            format: Format::Blob,
            len: 43,
            min: 44
        })
    ));
    let mut fidx = FixedIndexWriter::new(0, 4096, 0).unwrap().finish().unwrap();
    fidx.truncate(INDEX_HEADER_LEN - 1);
    assert!(matches!(
        FixedIndex::from_slice(&fidx),
        Err(Error::TooSmall {
            format: Format::FixedIndex,
            len: 4095,
            min: 4096
        })
    ));
    assert!(matches!(
        DynamicIndex::read_from(&fidx[..], 100),
        Err(Error::TooSmall {
            format: Format::DynamicIndex,
            len: 100,
            ..
        })
    ));
}

#[test]
fn wrong_magic() {
    let mut raw = raw_blob(BlobKind::Uncompressed, b"data");
    raw[0] ^= 1;
    match DataBlob::from_raw(raw.clone()) {
        Err(Error::WrongMagic {
            format: Format::Blob,
            found,
        }) => assert_eq!(found[..], raw[..8]),
        other => panic!("{other:?}"),
    }
    let didx = DynamicIndexWriter::new(0).finish().unwrap();
    assert!(matches!(
        FixedIndex::from_slice(&didx),
        Err(Error::WrongMagic {
            format: Format::FixedIndex,
            ..
        })
    ));
    assert!(matches!(
        IndexFile::from_slice(&[0u8; 4096]),
        Err(Error::WrongMagic { .. })
    ));
}

#[test]
fn crc_mismatch_is_found_before_the_payload_is_used() {
    for kind in BlobKind::ALL {
        let mut raw = raw_blob(kind, &[0x55; 64]);
        let last = raw.len() - 1;
        raw[last] ^= 0x80;
        // With a key or without, the CRC fails first: not MissingKey, not DecryptionFailed.
        assert!(
            matches!(blob::decode(&raw, None), Err(Error::CrcMismatch { .. })),
            "{kind:?}"
        );
        assert!(matches!(
            blob::decode(&raw, Some(&key(1))),
            Err(Error::CrcMismatch { .. })
        ));
    }
}

#[test]
fn too_large() {
    let big = vec![0u8; MAX_BLOB_SIZE + 1];
    assert!(matches!(
        DataBlob::encode(&big, None, Compression::Zstd),
        Err(Error::TooLarge { len, limit }) if len == big.len() as u64 && limit == MAX_BLOB_SIZE as u64
    ));
    // A 4 KiB frame without content size that would expand to 129 MiB stops at the limit.
    let bomb = raw_blob(BlobKind::Compressed, &rle_bomb(1032));
    assert!(bomb.len() < 5000);
    assert!(matches!(
        blob::decode(&bomb, None),
        Err(Error::TooLarge { .. })
    ));
    // One that declares a content size above the limit is refused without decoding.
    let declared = zstd::bulk::compress(&[0u8; 16], 1).unwrap();
    let mut lying = declared.clone();
    // Single-segment frame with a 1-byte content size field: rewrite it as an 8-byte field of 2^40.
    assert_eq!(lying[4] & 0xc0, 0, "small frame uses a 1-byte size field");
    lying[4] |= 0xc0;
    lying.splice(5..6, (1u64 << 40).to_le_bytes());
    assert!(matches!(
        blob::decode(&raw_blob(BlobKind::Compressed, &lying), None),
        Err(Error::TooLarge { len, .. }) if len == 1 << 40
    ));
    let mut raw = BlobKind::Uncompressed.magic().to_vec();
    raw.extend_from_slice(&[0; 4]);
    raw.resize(MAX_BLOB_SIZE + 13, 0);
    assert!(matches!(
        DataBlob::from_raw(raw),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn missing_key() {
    let blob = DataBlob::encode(b"secret", Some(&key(1)), Compression::Zstd).unwrap();
    assert!(matches!(
        blob.decode(None),
        Err(Error::MissingKey { fingerprint: None })
    ));
    assert!(matches!(
        BackupManifest::from_blob_bytes(blob.as_bytes()),
        Err(Error::MissingKey { .. })
    ));
    let mut m = manifest();
    m.sign(&key(1)).unwrap();
    match m.check_fingerprint(None) {
        Err(Error::MissingKey {
            fingerprint: Some(fp),
        }) => assert_eq!(fp, key(1).fingerprint()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn decryption_failed() {
    for compress in [Compression::None, Compression::Zstd] {
        let blob = DataBlob::encode(&[7; 1000], Some(&key(1)), compress).unwrap();
        assert!(matches!(
            blob.decode(Some(&key(2))),
            Err(Error::DecryptionFailed)
        ));
        // Tampered ciphertext with a recomputed CRC: only the GCM tag can tell.
        let mut raw = blob.into_bytes();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let crc = crc32fast::hash(&raw[44..]);
        raw[8..12].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            blob::decode(&raw, Some(&key(1))),
            Err(Error::DecryptionFailed)
        ));
    }
}

#[test]
fn decompression() {
    let garbage = raw_blob(BlobKind::Compressed, b"not a zstd frame at all");
    assert!(matches!(
        blob::decode(&garbage, None),
        Err(Error::Decompression { .. })
    ));
    let frame = zstd::bulk::compress(&[1u8; 1000], 1).unwrap();
    let truncated = raw_blob(BlobKind::Compressed, &frame[..frame.len() - 2]);
    assert!(matches!(
        blob::decode(&truncated, None),
        Err(Error::Decompression { .. })
    ));
    let mut trailing = frame.clone();
    trailing.extend_from_slice(b"junk");
    assert!(matches!(
        blob::decode(&raw_blob(BlobKind::Compressed, &trailing), None),
        Err(Error::Decompression { .. })
    ));
    assert!(matches!(
        blob::decode(&raw_blob(BlobKind::Compressed, &[]), None),
        Err(Error::Decompression { .. })
    ));
    // A content size that is too small for the data is a lie zstd catches.
    let mut lying = zstd::bulk::compress(&[5u8; 100], 1).unwrap();
    assert_eq!(lying[5], 100);
    lying[5] = 50;
    assert!(matches!(
        blob::decode(&raw_blob(BlobKind::Compressed, &lying), None),
        Err(Error::Decompression { .. })
    ));
}

#[test]
fn json_errors_name_the_path() {
    let good = manifest().to_json();
    let cases: &[(&str, &str, &str)] = &[
        ("{", ".", "EOF"),
        ("[]", ".", "invalid type"),
        (
            r#"{"backup-type":"vm","backup-id":"1","backup-time":1}"#,
            ".",
            "missing field `files`",
        ),
        (
            r#"{"backup-type":"vm","backup-id":"1","files":[]}"#,
            ".",
            "missing field `backup-time`",
        ),
        (
            r#"{"backup-type":"xx"}"#,
            "backup-type",
            "invalid backup type",
        ),
        (r#"{"backup-id":"a/b"}"#, "backup-id", "invalid backup id"),
        (r#"{"backup-time":"1"}"#, "backup-time", "invalid type"),
        (
            r#"{"backup-time":300000000000}"#,
            "backup-time",
            "300000000000",
        ),
        (
            r#"{"backup-type":"vm","backup-type":"ct"}"#,
            ".",
            "duplicate field",
        ),
        (r#"{"files":{}}"#, "files", "invalid type"),
        (
            r#"{"files":[{"filename":"a.blob","size":-1}]}"#,
            "files[0].size",
            "invalid value",
        ),
        (
            r#"{"files":[{"filename":"a.blob","csum":"xyz"}]}"#,
            "files[0].csum",
            "64 hex digits",
        ),
        (
            r#"{"files":[{"filename":"a.txt"}]}"#,
            "files[0].filename",
            "extension",
        ),
        (
            r#"{"files":[{"filename":"../a.blob"}]}"#,
            "files[0].filename",
            "'/'",
        ),
        (
            r#"{"files":[{"filename":"a.blob","crypt-mode":"rot13"}]}"#,
            "files[0].crypt-mode",
            "unknown variant",
        ),
        (
            r#"{"files":[{"filename":"a.blob","size":1}]}"#,
            "files[0]",
            "missing field `csum`",
        ),
        (r#"{"unprotected":[]}"#, "unprotected", "invalid type"),
        (r#"{"signature":1}"#, "signature", "invalid type"),
        (r#"{"future":[1,2,}"#, "future", "expected value"),
    ];
    for (json, path, reason) in cases {
        let (got_path, got_reason) = json_error(json);
        assert_eq!(&got_path, path, "{json}: {got_reason}");
        assert!(got_reason.contains(reason), "{json}: {got_reason}");
    }
    let csum = "ab".repeat(32);
    let dup = good.replacen(
        "\"files\": [",
        &format!("\"files\": [{{\"filename\":\"pct.conf.blob\",\"size\":1,\"csum\":\"{csum}\"}},"),
        1,
    );
    let (path, reason) = json_error(&dup);
    assert_eq!(path, "files[1].filename");
    assert!(reason.contains("more than once"), "{reason}");
    let (path, reason) = json_error(&format!("{good} x"));
    assert_eq!(path, ".");
    assert!(reason.contains("trailing"), "{reason}");

    // Typed accessors report the key of a mistyped value.
    let mut m = manifest();
    m.unprotected_mut().insert("notes".into(), 5.into());
    m.unprotected_mut().insert(
        "verify_state".into(),
        serde_json::json!({"upid": "u", "state": "meh"}),
    );
    m.unprotected_mut()
        .insert("key-fingerprint".into(), "12:34".into());
    m.unprotected_mut()
        .insert("chunk_upload_stats".into(), serde_json::json!({"count": 1}));
    for (res, key) in [
        (m.notes().map(|_| ()), "notes"),
        (m.verify_state().map(|_| ()), "verify_state"),
        (m.key_fingerprint().map(|_| ()), "key-fingerprint"),
        (m.chunk_upload_stats().map(|_| ()), "chunk_upload_stats"),
    ] {
        match res {
            Err(Error::Json { path, .. }) => assert_eq!(path, format!("unprotected.{key}")),
            other => panic!("{key}: {other:?}"),
        }
    }
}

#[test]
fn null_in_signed_content() {
    let json = manifest()
        .to_json()
        .replacen('{', r#"{"future": {"list": [1, null]},"#, 1);
    let mut m = BackupManifest::from_json(json.as_bytes()).unwrap();
    match m.sign(&key(1)) {
        Err(Error::NullInSignedContent { path }) => assert_eq!(path, "future.list[1]"),
        other => panic!("{other:?}"),
    }
    // Nulls in `unprotected` and an unsigned `signature: null` are not signed content.
    let mut m = manifest();
    m.unprotected_mut()
        .insert("anything".into(), serde_json::Value::Null);
    m.sign(&key(1)).unwrap();
}

#[test]
fn invalid_archive_name() {
    for name in [
        "",
        ".",
        "..",
        "a/b.blob",
        "nul\0.blob",
        "x.tmp_fidx",
        "x.pxar",
        "index.json.blob",
        "client.log.blob",
        &format!("{}.blob", "x".repeat(251)),
    ] {
        assert!(
            matches!(
                FileInfo::new(name, CryptMode::None, 0, [0; 32]),
                Err(Error::InvalidArchiveName { .. })
            ),
            "{name:?}"
        );
    }
    assert!(
        FileInfo::new(
            format!("{}.blob", "x".repeat(250)),
            CryptMode::None,
            0,
            [0; 32]
        )
        .is_ok()
    );
}

#[test]
fn duplicate_file() {
    let mut m = manifest();
    let again = FileInfo::new("pct.conf.blob", CryptMode::Encrypt, 1, [1; 32]).unwrap();
    assert!(
        matches!(m.add_file(again), Err(Error::DuplicateFile { name }) if name == "pct.conf.blob")
    );
    assert_eq!(m.files().len(), 1);
    assert!(m.remove_file("pct.conf.blob").is_some());
    assert!(m.remove_file("pct.conf.blob").is_none());
}

#[test]
fn invalid_fingerprint() {
    for text in ["", "zz", &"ab:".repeat(31), &"ab".repeat(33)] {
        assert!(
            matches!(
                text.parse::<Fingerprint>(),
                Err(Error::InvalidFingerprint { .. })
            ),
            "{text}"
        );
    }
}

#[test]
fn bad_index_size() {
    let mut writer = FixedIndexWriter::new(10, 4, 0).unwrap();
    for d in [[1; 32], [2; 32], [3; 32]] {
        writer.push(&d).unwrap();
    }
    let fidx = writer.finish().unwrap();
    let mut longer = fidx.clone();
    longer.extend_from_slice(&[0; 32]);
    assert!(matches!(
        FixedIndex::from_bytes(longer),
        Err(Error::BadIndexSize {
            format: Format::FixedIndex,
            ..
        })
    ));
    // A header claiming a huge image needs a huge file: refused by length, nothing allocated.
    let mut huge = fidx.clone();
    huge[64..72].copy_from_slice(&u64::MAX.to_le_bytes());
    huge[72..80].copy_from_slice(&1u64.to_le_bytes());
    assert!(matches!(
        FixedIndex::from_slice(&huge),
        Err(Error::BadIndexSize { .. })
    ));
    assert!(matches!(
        FixedIndex::read_from(&huge[..], u64::MAX),
        Err(Error::BadIndexSize { .. })
    ));
    // The reader holds fewer or more bytes than said.
    assert!(matches!(
        FixedIndex::read_from(&fidx[..fidx.len() - 1], fidx.len() as u64),
        Err(Error::BadIndexSize { .. })
    ));
    assert!(matches!(
        FixedIndex::read_from(&longer_by_one(&fidx)[..], fidx.len() as u64),
        Err(Error::BadIndexSize { .. })
    ));

    let mut didx = DynamicIndexWriter::new(0);
    didx.push_chunk(5, &[1; 32]).unwrap();
    let mut didx = didx.finish().unwrap();
    didx.push(0);
    assert!(matches!(
        DynamicIndex::from_bytes(didx),
        Err(Error::BadIndexSize {
            format: Format::DynamicIndex,
            ..
        })
    ));
}

fn longer_by_one(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.push(0);
    v
}

#[test]
fn index_checksum_mismatch() {
    let mut writer = FixedIndexWriter::new(4, 4, 0).unwrap();
    writer.push(&[1; 32]).unwrap();
    let mut fidx = writer.finish().unwrap();
    let last = fidx.len() - 1;
    fidx[last] ^= 1;
    assert!(matches!(
        FixedIndex::from_slice(&fidx),
        Err(Error::IndexChecksumMismatch {
            format: Format::FixedIndex,
            ..
        })
    ));
    let mut didx = DynamicIndexWriter::new(0);
    didx.push_chunk(5, &[1; 32]).unwrap();
    let mut didx = didx.finish().unwrap();
    didx[INDEX_HEADER_LEN] ^= 1;
    assert!(matches!(
        DynamicIndex::from_bytes(didx),
        Err(Error::IndexChecksumMismatch {
            format: Format::DynamicIndex,
            ..
        })
    ));
}

#[test]
fn invalid_index() {
    let mut fidx = FixedIndexWriter::new(0, 4, 0).unwrap().finish().unwrap();
    fidx[72..80].fill(0);
    assert!(matches!(
        FixedIndex::from_slice(&fidx),
        Err(Error::InvalidIndex { .. })
    ));

    // Decreasing end offsets, with a checksum that matches them.
    let mut entries = Vec::new();
    for end in [10u64, 5] {
        entries.extend_from_slice(&end.to_le_bytes());
        entries.extend_from_slice(&[9; 32]);
    }
    let mut didx = DynamicIndexWriter::new(0).finish().unwrap();
    didx[32..64].copy_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(&entries));
    didx.extend_from_slice(&entries);
    assert!(matches!(
        DynamicIndex::from_bytes(didx),
        Err(Error::InvalidIndex {
            format: Format::DynamicIndex,
            ..
        })
    ));
}

#[test]
fn invalid_input() {
    assert!(matches!(
        FixedIndexWriter::new(1, 0, 0),
        Err(Error::InvalidInput { .. })
    ));
    let mut writer = FixedIndexWriter::new(5, 4, 0).unwrap();
    writer.push(&[1; 32]).unwrap();
    assert!(matches!(
        writer.clone().finish(),
        Err(Error::InvalidInput { .. })
    ));
    writer.push(&[2; 32]).unwrap();
    assert!(matches!(
        writer.push(&[3; 32]),
        Err(Error::InvalidInput { .. })
    ));
    let mut didx = DynamicIndexWriter::new(0);
    didx.push_end(10, &[1; 32]).unwrap();
    assert!(matches!(
        didx.push_end(9, &[1; 32]),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        didx.push_chunk(u64::MAX, &[1; 32]),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn wrong_key_and_wrong_signature() {
    let mut m = manifest();
    m.sign(&key(1)).unwrap();
    m.verify_signature(&key(1)).unwrap();
    match m.verify_signature(&key(2)) {
        Err(Error::WrongKey { manifest, given }) => {
            assert_eq!(manifest, key(1).fingerprint());
            assert_eq!(given, key(2).fingerprint());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        m.check_fingerprint(Some(&key(2))),
        Err(Error::WrongKey { .. })
    ));

    // Changing signed content breaks the signature; changing `unprotected` does not.
    let mut changed = m.clone();
    changed.set_notes(Some("unprotected"));
    changed.verify_signature(&key(1)).unwrap();
    changed
        .add_file(FileInfo::new("extra.blob", CryptMode::None, 1, [0; 32]).unwrap())
        .unwrap();
    assert!(matches!(
        changed.verify_signature(&key(1)),
        Err(Error::WrongSignature)
    ));

    // Without a recorded fingerprint a different key reaches the signature check.
    let mut anonymous = m.clone();
    anonymous.set_key_fingerprint(None);
    assert!(matches!(
        anonymous.verify_signature(&key(2)),
        Err(Error::WrongSignature)
    ));
}

#[test]
fn io() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }
    assert!(matches!(DataBlob::read_from(Failing), Err(Error::Io(_))));
    assert!(matches!(
        FixedIndex::read_from(Failing, 4096),
        Err(Error::Io(_))
    ));
    assert!(matches!(
        FixedIndexWriter::new(0, 1, 0)
            .unwrap()
            .write_to(FailingWriter),
        Err(Error::Io(_))
    ));
}

struct FailingWriter;
impl io::Write for FailingWriter {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("disk full"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn corrupt_classification() {
    assert!(Error::WrongSignature.is_corrupt());
    assert!(
        Error::CrcMismatch {
            stored: 1,
            computed: 2
        }
        .is_corrupt()
    );
    assert!(!Error::MissingKey { fingerprint: None }.is_corrupt());
    assert!(
        !Error::WrongKey {
            manifest: key(1).fingerprint(),
            given: key(2).fingerprint()
        }
        .is_corrupt()
    );
    assert!(!Error::Io(io::Error::other("x")).is_corrupt());
}
