//! Round trips over generated input: blobs in every mode, manifests through JSON and blobs, digest
//! lists through both index formats. Every property compares with an independent reference (serde_json,
//! zstd, SHA-256 over hand-built bytes) where one exists.

use keepsake_manifest::Error;
use keepsake_manifest::blob::Compression;
use keepsake_manifest::blob::{BlobCodec, BlobKind, DataBlob};
use keepsake_manifest::crypt::CryptConfig;
use keepsake_manifest::index::{
    ChunkIndex, DYNAMIC_INDEX_MAGIC, DynamicIndex, DynamicIndexWriter, FIXED_INDEX_MAGIC,
    FixedIndex, FixedIndexWriter, INDEX_HEADER_LEN, IndexFile,
};
use keepsake_manifest::manifest::BackupManifest;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Mostly small data, half of it compressible (runs of few distinct bytes).
fn blob_data(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..max),
        (vec((0u8..4, 1usize..64), 0..max / 16 + 1)).prop_map(move |runs| {
            let mut out = Vec::new();
            for (byte, len) in runs {
                out.extend(std::iter::repeat_n(byte, len));
            }
            out.truncate(max);
            out
        }),
    ]
}

/// The compression a generated flag stands for.
fn compression(compress: bool) -> Compression {
    if compress {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn check_blob_round_trip(
    data: &[u8],
    key: Option<[u8; 32]>,
    compress: bool,
) -> Result<(), TestCaseError> {
    let config = key.map(CryptConfig::new);
    let blob = DataBlob::encode(data, config.as_ref(), compression(compress)).unwrap();
    let kind = blob.kind();
    prop_assert_eq!(kind.is_encrypted(), config.is_some());
    if kind.is_compressed() {
        prop_assert!(compress);
    } else if compress {
        // Compression was not kept: zstd level 1 would not have been smaller.
        let frame = zstd::bulk::compress(data, 1).unwrap();
        prop_assert!(
            frame.len() >= data.len(),
            "{} < {}",
            frame.len(),
            data.len()
        );
    }
    let payload_len = blob.payload().len();
    if kind.is_compressed() {
        prop_assert!(payload_len < data.len());
    } else {
        prop_assert_eq!(payload_len, data.len());
    }
    prop_assert_eq!(blob.crc(), crc32fast::hash(blob.payload()));
    let reread = DataBlob::from_raw(blob.as_bytes().to_vec()).unwrap();
    prop_assert_eq!(&reread, &blob);
    prop_assert_eq!(reread.decode(config.as_ref()).unwrap(), data);
    if kind == BlobKind::Compressed {
        // Anyone's zstd decoder reads our frames.
        prop_assert_eq!(zstd::stream::decode_all(blob.payload()).unwrap(), data);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn blob_round_trip_in_every_mode(
        data in blob_data(2048),
        key in proptest::option::of(any::<[u8; 32]>()),
        compress in any::<bool>(),
    ) {
        check_blob_round_trip(&data, key, compress)?;
    }

    #[test]
    fn one_codec_decodes_a_stream_of_blobs(
        items in vec((blob_data(512), any::<bool>(), any::<bool>()), 1..6),
    ) {
        let key = CryptConfig::new([5; 32]);
        let mut codec = BlobCodec::new();
        let mut out = Vec::new();
        for (data, encrypt, compress) in &items {
            let config = encrypt.then_some(&key);
            let blob = codec.encode(data, config, compression(*compress)).unwrap();
            codec.decode_into(blob.as_bytes(), config, &mut out).unwrap();
            prop_assert_eq!(&out, data);
        }
    }
}

proptest! {
    // Large inputs are slow in debug builds; a few cases cover the multi-block and multi-MiB paths.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn large_blob_round_trip(
        data in blob_data(3 << 20),
        key in proptest::option::of(any::<[u8; 32]>()),
    ) {
        check_blob_round_trip(&data, key, true)?;
    }
}

#[test]
fn streamed_frames_without_content_size_decode() {
    // PBS's plain compressed blobs come from a streaming encoder; build such frames of several sizes.
    for len in [1usize, 1000, 200_000, 3 << 20] {
        let data: Vec<u8> = (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect();
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        encoder.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut encoder, &data).unwrap();
        let frame = encoder.finish().unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&frame).unwrap(),
            None
        );
        let mut raw = BlobKind::Compressed.magic().to_vec();
        raw.extend_from_slice(&crc32fast::hash(&frame).to_le_bytes());
        raw.extend_from_slice(&frame);
        assert_eq!(
            keepsake_manifest::blob::decode(&raw, None).unwrap(),
            data,
            "{len}"
        );
    }
}

// ---- manifests ----

/// JSON values of every kind except floats (serde_json's default float parsing is not exact,
/// in PBS as here); `null` only when `nulls`.
fn json_value(nulls: bool) -> BoxedStrategy<Value> {
    let scalar = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "(?s).{0,12}".prop_map(Value::String),
    ]
    .boxed();
    let leaf = if nulls {
        prop_oneof![4 => scalar, 1 => Just(Value::Null)].boxed()
    } else {
        scalar
    };
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("(?s).{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

const TOP_KEYS: &[&str] = &[
    "backup-type",
    "backup-id",
    "backup-time",
    "files",
    "unprotected",
    "signature",
];
const FILE_KEYS: &[&str] = &["filename", "crypt-mode", "size", "csum"];

fn unknown_key(known: &'static [&'static str]) -> impl Strategy<Value = String> {
    "[a-z_-]{1,12}".prop_filter("unknown keys only", move |k| !known.contains(&k.as_str()))
}

fn file_entry() -> impl Strategy<Value = (String, Value)> {
    (
        "[A-Za-z0-9_][A-Za-z0-9._-]{0,12}\\.(fidx|didx|blob)",
        prop_oneof![
            Just(None),
            Just(Some("none")),
            Just(Some("encrypt")),
            Just(Some("sign-only"))
        ],
        any::<u64>(),
        any::<[u8; 32]>(),
        btree_map(unknown_key(FILE_KEYS), json_value(false), 0..2),
    )
        .prop_filter("not the manifest or the client log", |(name, ..)| {
            name != "index.json.blob" && name != "client.log.blob"
        })
        .prop_map(|(name, mode, size, csum, extra)| {
            let mut entry: Map<String, Value> = extra.into_iter().collect();
            entry.insert("filename".into(), name.clone().into());
            if let Some(mode) = mode {
                entry.insert("crypt-mode".into(), mode.into());
            }
            entry.insert("size".into(), size.into());
            entry.insert("csum".into(), hex::encode(csum).into());
            (name, Value::Object(entry))
        })
}

/// A manifest as a JSON value, with every optional part and unknown keys in places.
fn manifest_value() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("vm"), Just("ct"), Just("host")],
        "[A-Za-z0-9_][A-Za-z0-9._-]{0,20}",
        -62_167_219_200i64..=253_402_300_799,
        vec(file_entry(), 0..5),
        proptest::option::of(btree_map("(?s).{0,10}", json_value(true), 0..4)),
        proptest::option::of(proptest::option::of(any::<[u8; 32]>())),
        btree_map(unknown_key(TOP_KEYS), json_value(false), 0..3),
    )
        .prop_map(|(ty, id, time, files, unprotected, signature, extra)| {
            let mut top: Map<String, Value> = extra.into_iter().collect();
            top.insert("backup-type".into(), ty.into());
            top.insert("backup-id".into(), id.into());
            top.insert("backup-time".into(), time.into());
            let mut names = std::collections::HashSet::new();
            let files: Vec<Value> = files
                .into_iter()
                .filter(|(name, _)| names.insert(name.clone()))
                .map(|(_, entry)| entry)
                .collect();
            top.insert("files".into(), files.into());
            if let Some(unprotected) = unprotected {
                top.insert(
                    "unprotected".into(),
                    Value::Object(unprotected.into_iter().collect()),
                );
            }
            if let Some(signature) = signature {
                top.insert("signature".into(), signature.map(hex::encode).into());
            }
            Value::Object(top)
        })
}

/// What PBS writes for a manifest value: defaults filled in, then serde_json's pretty print of a
/// key-sorted map.
fn pbs_text(value: &Value) -> String {
    let mut value = value.clone();
    let top = value.as_object_mut().unwrap();
    top.entry("unprotected")
        .or_insert_with(|| Value::Object(Map::new()));
    top.entry("signature").or_insert(Value::Null);
    for file in top["files"].as_array_mut().unwrap() {
        file.as_object_mut()
            .unwrap()
            .entry("crypt-mode")
            .or_insert_with(|| "none".into());
    }
    serde_json::to_string_pretty(&value).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn any_manifest_through_json(value in manifest_value(), pretty in any::<bool>()) {
        let input = if pretty {
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            serde_json::to_string(&value).unwrap()
        };
        let manifest = BackupManifest::from_json(input.as_bytes()).unwrap();
        let text = manifest.to_json();
        prop_assert_eq!(&text, &pbs_text(&value));
        let again = BackupManifest::from_json(text.as_bytes()).unwrap();
        prop_assert_eq!(&again, &manifest);
        prop_assert_eq!(again.to_json(), text);

        // Signed content is the compact, sorted form of everything but `unprotected` and `signature`.
        let mut signed = value.clone();
        let top = signed.as_object_mut().unwrap();
        top.remove("unprotected");
        top.remove("signature");
        for file in top["files"].as_array_mut().unwrap() {
            file.as_object_mut().unwrap().entry("crypt-mode").or_insert_with(|| "none".into());
        }
        prop_assert_eq!(manifest.canonical_json().unwrap(), serde_json::to_vec(&signed).unwrap());
    }

    #[test]
    fn any_manifest_through_a_blob_and_a_signature(value in manifest_value(), key in any::<[u8; 32]>()) {
        let mut manifest = BackupManifest::from_json(value.to_string().as_bytes()).unwrap();
        let blob = manifest.to_blob().unwrap();
        prop_assert!(!blob.kind().is_encrypted());
        prop_assert_eq!(&BackupManifest::from_blob_bytes(blob.as_bytes()).unwrap(), &manifest);

        let config = CryptConfig::new(key);
        manifest.sign(&config).unwrap();
        let reread = BackupManifest::from_json(manifest.to_json().as_bytes()).unwrap();
        reread.verify_signature(&config).unwrap();
        prop_assert_eq!(reread.key_fingerprint().unwrap(), Some(config.fingerprint()));
        let other = CryptConfig::new(key.map(|b| b ^ 1));
        let is_wrong_key = matches!(reread.verify_signature(&other), Err(Error::WrongKey { .. }));
        prop_assert!(is_wrong_key);
    }
}

// ---- index files ----

fn expected_index(
    magic: [u8; 8],
    uuid: [u8; 16],
    ctime: i64,
    tail: &[u8],
    entries: &[u8],
) -> Vec<u8> {
    let mut bytes = magic.to_vec();
    bytes.extend_from_slice(&uuid);
    bytes.extend_from_slice(&ctime.to_le_bytes());
    bytes.extend_from_slice(&Sha256::digest(entries));
    bytes.extend_from_slice(tail);
    bytes.resize(INDEX_HEADER_LEN, 0);
    bytes.extend_from_slice(entries);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn any_digest_list_through_fidx(
        digests in vec(any::<[u8; 32]>(), 0..48),
        chunk_size in prop_oneof![1u64..100, Just(64 << 10), Just(4 << 20), 1u64..=u64::MAX / 64],
        last in any::<u64>(),
        uuid in any::<[u8; 16]>(),
        ctime in any::<i64>(),
    ) {
        let n = digests.len() as u64;
        let size = match n {
            0 => 0,
            n => match (n - 1).checked_mul(chunk_size).and_then(|s| s.checked_add(1 + last % chunk_size)) {
                Some(size) => size,
                None => return Ok(()),
            },
        };
        let mut writer = FixedIndexWriter::new(size, chunk_size, ctime).unwrap().with_uuid(uuid);
        prop_assert_eq!(writer.chunk_count(), n);
        for d in &digests {
            writer.push(d).unwrap();
        }
        let mut streamed = Vec::new();
        writer.clone().write_to(&mut streamed).unwrap();
        let bytes = writer.finish().unwrap();
        prop_assert_eq!(&streamed, &bytes);
        let entries = digests.concat();
        let mut tail = size.to_le_bytes().to_vec();
        tail.extend_from_slice(&chunk_size.to_le_bytes());
        prop_assert_eq!(&bytes, &expected_index(FIXED_INDEX_MAGIC, uuid, ctime, &tail, &entries));

        let index = FixedIndex::read_from(&bytes[..], bytes.len() as u64).unwrap();
        prop_assert_eq!(&index, &FixedIndex::from_slice(&bytes).unwrap());
        prop_assert_eq!(&IndexFile::from_bytes(bytes.clone()).unwrap(), &IndexFile::Fixed(index.clone()));
        prop_assert_eq!(index.uuid(), uuid);
        prop_assert_eq!(index.ctime(), ctime);
        prop_assert_eq!(index.archive_size(), size);
        prop_assert_eq!(index.chunk_count(), digests.len());
        prop_assert_eq!(index.digests().copied().collect::<Vec<_>>(), digests.clone());
        let mut next = 0;
        for (i, chunk) in index.chunks().enumerate() {
            prop_assert_eq!(chunk.digest, &digests[i]);
            prop_assert_eq!(chunk.range.start, next);
            prop_assert!(chunk.range.end > chunk.range.start);
            next = chunk.range.end;
        }
        prop_assert_eq!(next, size);
        prop_assert_eq!(index.chunk_range(digests.len()), None);
    }

    #[test]
    fn any_digest_list_through_didx(
        chunks in vec((0u64..(16 << 20), any::<[u8; 32]>()), 0..48),
        uuid in any::<[u8; 16]>(),
        ctime in any::<i64>(),
    ) {
        let mut writer = DynamicIndexWriter::new(ctime).with_uuid(uuid);
        let mut entries = Vec::new();
        let mut end = 0u64;
        for (len, digest) in &chunks {
            writer.push_chunk(*len, digest).unwrap();
            end += len;
            entries.extend_from_slice(&end.to_le_bytes());
            entries.extend_from_slice(digest);
        }
        prop_assert_eq!(writer.index_csum(), <[u8; 32]>::from(Sha256::digest(&entries)));
        let mut streamed = Vec::new();
        writer.clone().write_to(&mut streamed).unwrap();
        let bytes = writer.finish().unwrap();
        prop_assert_eq!(&streamed, &bytes);
        prop_assert_eq!(&bytes, &expected_index(DYNAMIC_INDEX_MAGIC, uuid, ctime, &[], &entries));

        let index = DynamicIndex::read_from(&bytes[..], bytes.len() as u64).unwrap();
        prop_assert_eq!(&index, &DynamicIndex::from_bytes(bytes.clone()).unwrap());
        prop_assert_eq!(index.archive_size(), end);
        prop_assert_eq!(index.ctime(), ctime);
        let mut start = 0;
        for (i, (len, digest)) in chunks.iter().enumerate() {
            prop_assert_eq!(index.digest(i), Some(digest));
            prop_assert_eq!(index.chunk_range(i), Some(start..start + len));
            if *len > 0 {
                prop_assert_eq!(index.chunk_at(start), Some(i));
                prop_assert_eq!(index.chunk_at(start + len - 1), Some(i));
            }
            start += len;
        }
        prop_assert_eq!(index.chunk_at(end), None);
        prop_assert_eq!(index.entries().count(), chunks.len());
    }
}
