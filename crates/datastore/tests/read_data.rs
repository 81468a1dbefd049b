//! The data plane's reading half: archives read back byte for byte (the PBS fixture, every
//! backend, random seeks), and the content verify finding planted corruptions, setting them aside
//! as PBS names them, failing every snapshot that uses them and recording `failed`.

mod common;

use std::io::{Read, Seek, SeekFrom};

use keepsake_backend::ChunkDigest;
use keepsake_datastore::{
    ArgumentProblem, ChunkVerification, DataStore, Encryption, Error, Problem, Reverify,
    SnapshotOutcome, VerifyOptions, VerifyScope,
};
use keepsake_hierarchy::{Authid, BackupNamespace, BackupTime};
use keepsake_manifest::blob::{Compression, DataBlob};
use keepsake_manifest::index::{ChunkIndex, IndexFile};
use keepsake_manifest::manifest::VerifyOutcome;
use keepsake_testkit::fixture::PbsFixture;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const CHUNK: usize = 65_536;

/// Data that compresses a little and differs per `seed`.
fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 7 == 0 { 0 } else { x as u8 }
        })
        .collect()
}

fn content() -> VerifyOptions {
    VerifyOptions::default().chunks(ChunkVerification::Content)
}

/// A snapshot of `vm/100` at `time` with a fixed archive of `image` (64 KiB chunks) and a
/// dynamic one of `stream` cut in uneven pieces.
fn backup(
    store: &DataStore,
    time: i64,
    image: &[u8],
    stream: &[u8],
) -> keepsake_datastore::Snapshot {
    let group = store.group(&BackupNamespace::root(), &"vm/100".parse().unwrap());
    let owner: Authid = "root@pam".parse().unwrap();
    let mut w = group
        .start_backup(&owner, BackupTime::from_epoch(time).unwrap())
        .unwrap();
    w.add_fixed_archive(
        "drive-scsi0.img.fidx",
        image,
        CHUNK as u64,
        Encryption::None,
    )
    .unwrap();
    let cuts = [0, 1_000, 70_000, 70_001, 150_000, stream.len()].map(|c| c.min(stream.len()));
    let pieces = cuts
        .windows(2)
        .filter(|w| w[0] < w[1])
        .map(|w| &stream[w[0]..w[1]]);
    w.add_dynamic_archive("root.pxar.didx", pieces, Encryption::None)
        .unwrap();
    w.finish().unwrap()
}

fn read_all(snapshot: &keepsake_datastore::Snapshot, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    snapshot
        .open_archive(name)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn the_pbs_fixture_reads_back_byte_for_byte_and_verifies_clean() {
    let fx = PbsFixture::unpack().unwrap();
    let locks = tempfile::tempdir().unwrap();
    let store = DataStore::builder("store1", fx.path())
        .lock_root(locks.path())
        .open()
        .unwrap();
    let mut archives = 0;
    for ns in store
        .iter_namespaces_recursive(&BackupNamespace::root(), None)
        .unwrap()
    {
        let ns = ns.unwrap();
        for group in store.iter_groups(&ns).unwrap() {
            for info in group.unwrap().list_backups().unwrap() {
                if !info.is_finished() {
                    continue;
                }
                let snapshot = store.snapshot(&ns, &info.snapshot);
                let manifest = snapshot.load_manifest().unwrap();
                for file in manifest.files() {
                    let name = file.filename();
                    if !(name.ends_with(".fidx") || name.ends_with(".didx")) {
                        continue;
                    }
                    // Independently: the chunk files of the fixture, decoded and concatenated
                    // in index order.
                    let index = IndexFile::from_bytes(snapshot.read_file(name).unwrap()).unwrap();
                    let mut expected = Sha256::new();
                    let mut len = 0u64;
                    for chunk in index.chunks() {
                        let hex = hex::encode(chunk.digest);
                        let raw =
                            std::fs::read(fx.path().join(".chunks").join(&hex[..4]).join(&hex))
                                .unwrap();
                        let plain = keepsake_manifest::blob::decode(&raw, None).unwrap();
                        assert_eq!(plain.len() as u64, chunk.range.end - chunk.range.start);
                        len += plain.len() as u64;
                        expected.update(&plain);
                    }
                    let read = read_all(&snapshot, name);
                    assert_eq!(read.len() as u64, file.size(), "{name}");
                    assert_eq!(read.len() as u64, len);
                    assert_eq!(Sha256::digest(&read), expected.finalize(), "{name}");
                    archives += 1;
                }
            }
        }
    }
    assert_eq!(archives, 7, "every index of the finished snapshots read");

    let report = store.verify(&VerifyScope::Store, &content()).unwrap();
    let problems: Vec<String> = report.problems().map(|(_, p)| p.to_string()).collect();
    assert!(report.is_ok(), "{problems:?}");
    assert_eq!(
        report.content.verified, 7,
        "the fixture's 7 chunks, each once"
    );
    assert_eq!(report.content.corrupt + report.content.missing, 0);
}

#[test]
fn archives_read_back_on_every_backend_with_markers_fetched() {
    for ts in common::all("archives_read_back_on_every_backend") {
        let image = data(5 * CHUNK + 123, 1);
        let stream = data(200_000, 2);
        let snapshot = backup(&ts.store, 1_000, &image, &stream);
        assert_eq!(
            read_all(&snapshot, "drive-scsi0.img.fidx"),
            image,
            "{}",
            ts.kind
        );
        assert_eq!(read_all(&snapshot, "root.pxar.didx"), stream, "{}", ts.kind);

        if ts.cached.is_some() {
            // The cache evicts chunks to PBS's empty markers: reading fetches them again.
            let mut evicted = 0;
            for entry in walk_files(&ts.root().join(".chunks")) {
                std::fs::write(&entry, b"").unwrap();
                evicted += 1;
            }
            assert!(evicted > 5);
            assert_eq!(
                read_all(&snapshot, "drive-scsi0.img.fidx"),
                image,
                "{}",
                ts.kind
            );
            let report = ts.store.verify(&VerifyScope::Store, &content()).unwrap();
            assert!(
                report.is_ok(),
                "{}: {:?}",
                ts.kind,
                report.problems().count()
            );
        }
        // Not an archive, not listed.
        assert!(matches!(
            snapshot.open_archive("index.json.blob"),
            Err(Error::InvalidArgument(ArgumentProblem::NotAnArchive { .. }))
        ));
        assert!(matches!(
            snapshot.open_archive("other.img.fidx"),
            Err(Error::NotFound { .. })
        ));
    }
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(walk_files(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

/// The stored bytes of a chunk that decode to `plain` with a matching CRC (another chunk's
/// content under this chunk's name).
fn foreign_blob(plain: &[u8]) -> Vec<u8> {
    DataBlob::encode(plain, None, Compression::None)
        .unwrap()
        .into_bytes()
}

#[test]
fn planted_corruptions_are_found_set_aside_and_recorded() {
    for ts in common::all("planted_corruptions") {
        let store = &ts.store;
        // Two snapshots share every chunk of the image but the last; the stream differs.
        let image = data(6 * CHUNK, 3);
        let mut image2 = image.clone();
        image2[5 * CHUNK + 10] ^= 1;
        let first = backup(store, 1_000, &image, &data(200_000, 4));
        let second = backup(store, 2_000, &image2, &data(200_000, 5));
        let index =
            IndexFile::from_bytes(first.read_file("drive-scsi0.img.fidx").unwrap()).unwrap();
        let d: Vec<[u8; 32]> = (0..4).map(|i| *index.digest(i).unwrap()).collect();

        let raw = |digest: &[u8; 32]| {
            store
                .backend()
                .read_chunk(&ChunkDigest::new(*digest))
                .unwrap()
        };
        let mut flipped = raw(&d[0]);
        let at = flipped.len() - 1;
        flipped[at] ^= 0x40;
        let truncated = raw(&d[1])[..20].to_vec();
        let foreign = foreign_blob(&data(CHUNK, 99));
        // Plant: replace the stored bytes (on S3 in the bucket and the cache alike, through the
        // backend: set the good copy aside, then store the bad one).
        let planted_slot = if ts.cached.is_some() { 1 } else { 0 };
        for (digest, bytes) in [
            (&d[0], Some(flipped)),
            (&d[1], Some(truncated)),
            (&d[2], Some(foreign)),
            (&d[3], None),
        ] {
            let chunk = ChunkDigest::new(*digest);
            if ts.cached.is_some() {
                store.backend().quarantine_chunk(&chunk).unwrap();
                if bytes.is_none() {
                    continue;
                }
            } else {
                let path = ts.root().join(chunk.local_path().as_str());
                match &bytes {
                    Some(b) => std::fs::write(&path, b).unwrap(),
                    None => std::fs::remove_file(&path).unwrap(),
                }
                continue;
            }
            store
                .backend()
                .insert_chunk(&chunk, &bytes.unwrap())
                .unwrap();
        }

        // Presence only: the three corrupt chunks pass, the missing one fails.
        let quick = store
            .verify(&VerifyScope::Store, &VerifyOptions::default())
            .unwrap();
        assert_eq!(quick.failed().count(), 2);
        assert!(
            quick
                .problems()
                .all(|(_, p)| matches!(p, Problem::ChunkMissing { .. }))
        );

        let report = store
            .verify(&VerifyScope::Store, &content().record_state("UPID:test"))
            .unwrap();
        assert!(!report.is_ok());
        assert_eq!(
            report.failed().count(),
            2,
            "{}: both snapshots fail",
            ts.kind
        );
        assert_eq!(report.content.corrupt, 3, "{}", ts.kind);
        assert_eq!(report.content.missing, 1, "{}", ts.kind);
        assert_eq!(report.content.set_aside, 3, "{}", ts.kind);
        for s in &report.snapshots {
            let corrupt: Vec<&Problem> = s
                .problems
                .iter()
                .filter(|p| matches!(p, Problem::ChunkCorrupt { .. }))
                .collect();
            assert_eq!(corrupt.len(), 3, "{}: {}", ts.kind, s.relative_path());
            for p in &corrupt {
                let Problem::ChunkCorrupt {
                    digest, set_aside, ..
                } = p
                else {
                    unreachable!()
                };
                let name = format!(".chunks/{}/{digest}.{planted_slot}.bad", &digest[..4]);
                assert_eq!(set_aside.as_deref(), Some(name.as_str()), "{}", ts.kind);
            }
            assert!(
                s.problems
                    .iter()
                    .any(|p| matches!(p, Problem::ChunkMissing { .. }))
            );
            assert!(s.recorded);
        }
        for snapshot in [&first, &second] {
            let state = snapshot.verify_state().unwrap().unwrap();
            assert_eq!(state.state, VerifyOutcome::Failed);
        }
        // Set aside: gone under their names, kept under the .bad names.
        for digest in &d[..3] {
            assert!(!store.chunk_exists(digest).unwrap());
        }
        if ts.cached.is_none() {
            let hex = hex::encode(d[0]);
            assert!(
                ts.root()
                    .join(format!(".chunks/{}/{hex}.0.bad", &hex[..4]))
                    .is_file()
            );
        }
        // Reading the archive fails clearly, never with wrong bytes.
        let mut out = Vec::new();
        let err = first
            .open_archive("drive-scsi0.img.fidx")
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");

        // The repair: the next backup of the same data stores the chunks again.
        backup(store, 3_000, &image, &data(200_000, 6));
        let again = store
            .verify(&VerifyScope::Store, &content().record_state("UPID:again"))
            .unwrap();
        let problems: Vec<String> = again.problems().map(|(_, p)| p.to_string()).collect();
        assert!(again.is_ok(), "{}: {problems:?}", ts.kind);
        assert_eq!(
            first.verify_state().unwrap().unwrap().state,
            VerifyOutcome::Ok
        );
        assert_eq!(read_all(&first, "drive-scsi0.img.fidx"), image);
    }
}

#[test]
fn a_damaged_cache_copy_is_repaired_from_the_bucket_not_set_aside() {
    let ts = common::cached_memory();
    let image = data(3 * CHUNK, 7);
    let snapshot = backup(&ts.store, 1_000, &image, &data(100_000, 8));
    let files = walk_files(&ts.root().join(".chunks"));
    for file in &files {
        let mut bytes = std::fs::read(file).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(file, bytes).unwrap();
    }
    let report = ts.store.verify(&VerifyScope::Store, &content()).unwrap();
    assert!(report.is_ok());
    assert_eq!(report.content.cache_repaired as usize, files.len());
    assert_eq!(report.content.set_aside, 0);
    assert_eq!(read_all(&snapshot, "drive-scsi0.img.fidx"), image);
}

#[test]
fn recording_needs_a_content_verify_and_ok_snapshots_can_be_skipped() {
    let ts = common::local();
    let store = &ts.store;
    let first = backup(store, 1_000, &data(CHUNK, 1), &data(1_000, 2));
    for chunks in [ChunkVerification::Skip, ChunkVerification::Presence] {
        let options = VerifyOptions::default()
            .chunks(chunks)
            .record_state("UPID:x");
        assert!(matches!(
            store.verify(&VerifyScope::Store, &options),
            Err(Error::InvalidArgument(
                ArgumentProblem::RecordWithoutContent
            ))
        ));
        assert!(matches!(
            first.verify(&options),
            Err(Error::InvalidArgument(
                ArgumentProblem::RecordWithoutContent
            ))
        ));
    }
    assert!(first.verify_state().unwrap().is_none(), "nothing recorded");

    // A state recorded now (UPID start time now) and one a year old.
    let now = jiff::Timestamp::now().as_second();
    let upid =
        |start: i64| format!("UPID:host:00000001:00000001:00000000:{start:08X}:verify:x:root@pam:");
    store
        .verify(&VerifyScope::Store, &content().record_state(upid(now)))
        .unwrap();
    let second = backup(store, 2_000, &data(CHUNK, 3), &data(1_000, 4));
    let outcomes = |reverify| {
        store
            .verify(&VerifyScope::Store, &content().reverify(reverify))
            .unwrap()
            .snapshots
            .iter()
            .map(|s| s.outcome)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        outcomes(Reverify::NotOk),
        [SnapshotOutcome::Skipped, SnapshotOutcome::Ok]
    );
    assert_eq!(
        outcomes(Reverify::OutdatedAfter { days: 30 }),
        [SnapshotOutcome::Skipped, SnapshotOutcome::Ok]
    );
    assert_eq!(
        outcomes(Reverify::All),
        [SnapshotOutcome::Ok, SnapshotOutcome::Ok]
    );
    second
        .set_verify_state(&keepsake_manifest::manifest::VerifyState {
            upid: upid(now - 365 * 86_400),
            state: VerifyOutcome::Ok,
        })
        .unwrap();
    first
        .set_verify_state(&keepsake_manifest::manifest::VerifyState {
            upid: upid(now),
            state: VerifyOutcome::Failed,
        })
        .unwrap();
    // A failed one is checked again; an old ok only when outdated.
    assert_eq!(
        outcomes(Reverify::NotOk),
        [SnapshotOutcome::Ok, SnapshotOutcome::Skipped]
    );
    assert_eq!(
        outcomes(Reverify::OutdatedAfter { days: 30 }),
        [SnapshotOutcome::Ok, SnapshotOutcome::Ok]
    );
}

#[test]
fn encrypted_chunks_need_the_key_to_be_read_and_fully_checked() {
    let dir = tempfile::tempdir().unwrap();
    let key = keepsake_manifest::crypt::CryptConfig::new([7; 32]);
    let store = DataStore::builder("enc", dir.path().join("enc"))
        .lock_root(dir.path().join("locks"))
        .chunk_prefix_dirs(false)
        .key(key.clone())
        .create()
        .unwrap();
    let image = data(2 * CHUNK + 5, 11);
    let group = store.group(&BackupNamespace::root(), &"vm/1".parse().unwrap());
    let mut w = group
        .start_backup(
            &"root@pam".parse().unwrap(),
            BackupTime::from_epoch(1_000).unwrap(),
        )
        .unwrap();
    w.add_fixed_archive(
        "drive-scsi0.img.fidx",
        &image,
        CHUNK as u64,
        Encryption::StoreKey,
    )
    .unwrap();
    let snapshot = w.finish().unwrap();
    assert_eq!(read_all(&snapshot, "drive-scsi0.img.fidx"), image);
    let report = store.verify(&VerifyScope::Store, &content()).unwrap();
    assert!(report.is_ok());
    assert_eq!(report.content.verified, 3);

    // Without the key: reading fails clearly, a verify checks the CRCs only.
    let keyless = DataStore::builder("enc", dir.path().join("enc"))
        .lock_root(dir.path().join("locks"))
        .open()
        .unwrap();
    let snapshot = keyless.snapshot(&BackupNamespace::root(), snapshot.dir());
    let err = snapshot
        .open_archive("drive-scsi0.img.fidx")
        .unwrap()
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    let report = keyless.verify(&VerifyScope::Store, &content()).unwrap();
    assert_eq!(report.content.crc_only, 3);
    assert_eq!(report.content.verified, 0);

    // With another key (another client's): reading fails clearly; a verify checks CRCs only and
    // sets nothing aside (the chunks are good, for their own key).
    let wrong = DataStore::builder("enc", dir.path().join("enc"))
        .lock_root(dir.path().join("locks"))
        .key(keepsake_manifest::crypt::CryptConfig::new([8; 32]))
        .open()
        .unwrap();
    let err = wrong
        .snapshot(&BackupNamespace::root(), snapshot.dir())
        .open_archive("drive-scsi0.img.fidx")
        .unwrap()
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    let report = wrong.verify(&VerifyScope::Store, &content()).unwrap();
    assert_eq!(report.content.crc_only, 3);
    assert_eq!(report.content.set_aside, 0);
    let own = store.snapshot(&BackupNamespace::root(), snapshot.dir());
    assert_eq!(read_all(&own, "drive-scsi0.img.fidx"), image);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random seeks and reads of any length equal the same ranges of the archive's data.
    #[test]
    fn random_reads_and_seeks_match_the_data(
        len in 1usize..(4 * CHUNK + 1000),
        ops in proptest::collection::vec((0u64..(5 * CHUNK as u64), 0usize..(2 * CHUNK)), 1..12),
        dynamic in any::<bool>(),
        read_ahead in 1usize..4,
    ) {
        let ts = common::local();
        let image = data(len, len as u32);
        let snapshot = backup(&ts.store, 1_000, &image, &image);
        let name = if dynamic { "root.pxar.didx" } else { "drive-scsi0.img.fidx" };
        let mut reader = snapshot
            .open_archive_with(name, ts.store.chunk_reader().cache_bytes(CHUNK))
            .unwrap()
            .read_ahead(read_ahead);
        prop_assert_eq!(reader.size(), len as u64);
        for (offset, want) in ops {
            let pos = reader.seek(SeekFrom::Start(offset)).unwrap();
            prop_assert_eq!(pos, offset);
            let mut buf = vec![0u8; want];
            let mut got = 0;
            loop {
                let n = reader.read(&mut buf[got..]).unwrap();
                if n == 0 { break; }
                got += n;
            }
            let start = (offset as usize).min(len);
            let end = (start + want).min(len);
            prop_assert_eq!(&buf[..got], &image[start..end]);
        }
        let end = reader.seek(SeekFrom::End(-1)).unwrap();
        prop_assert_eq!(end, len as u64 - 1);
        prop_assert!(reader.seek(SeekFrom::Current(-(len as i64) - 1)).is_err());
    }
}

#[test]
fn an_index_with_a_wrong_chunk_size_never_gets_a_good_chunk_set_aside() {
    let ts = common::local();
    let store = &ts.store;
    let image = data(2 * CHUNK, 21);
    let good = backup(store, 1_000, &image, &data(1_000, 22));
    let other = backup(store, 2_000, &data(CHUNK, 23), &data(1_000, 24));
    let index = IndexFile::from_bytes(good.read_file("drive-scsi0.img.fidx").unwrap()).unwrap();
    let digest = *index.digest(0).unwrap();
    // The other snapshot's stream index now claims that chunk holds 1,000 bytes.
    let mut writer = keepsake_manifest::index::DynamicIndexWriter::new(2_000);
    writer.push_chunk(1_000, &digest).unwrap();
    std::fs::write(
        ts.root().join(other.relative_path()).join("root.pxar.didx"),
        writer.finish().unwrap(),
    )
    .unwrap();
    let report = store.verify(&VerifyScope::Store, &content()).unwrap();
    assert_eq!(report.content.set_aside, 0);
    assert_eq!(report.content.corrupt, 0);
    assert!(store.chunk_exists(&digest).unwrap(), "the good chunk stays");
    let failed: Vec<String> = report.failed().map(|s| s.relative_path()).collect();
    assert_eq!(failed, [other.relative_path()]);
    assert!(report.problems().any(|(_, p)| matches!(
        p,
        Problem::ChunkSizeMismatch { expected: 1_000, found, .. } if *found == CHUNK as u64
    )));
    assert_eq!(read_all(&good, "drive-scsi0.img.fidx"), image);
}
