//! Hostile inputs for the reading half (issue 18): indexes a buggy or malicious client could
//! have written, read through `ArchiveReader`. Each test marked `ignore = "finding: ..."` fails
//! on the code it was written against.

use std::io::{Read, Seek, SeekFrom};

use keepsake_datastore::{ArchiveReader, DataStore, Encryption};
use keepsake_manifest::index::{DynamicIndex, DynamicIndexWriter, IndexFile};

fn store(dir: &tempfile::TempDir) -> DataStore {
    DataStore::builder("store1", dir.path().join("store1"))
        .lock_root(dir.path().join("locks"))
        .chunk_prefix_dirs(false)
        .create()
        .unwrap()
}

/// A didx naming the one chunk `digest` three times, the middle reference with `middle` bytes
/// (the chunk holds 4).
fn thrice(digest: &[u8; 32], middle: u64) -> IndexFile {
    let mut w = DynamicIndexWriter::new(1_700_000_000);
    w.push_chunk(4, digest).unwrap();
    w.push_chunk(middle, digest).unwrap();
    w.push_chunk(4, digest).unwrap();
    IndexFile::Dynamic(DynamicIndex::from_bytes(w.finish().unwrap()).unwrap())
}

/// The middle reference claims 8 bytes; the chunk has 4. Reading forward into it while the
/// chunk is cached from the first reference, the read-ahead fetches it for the third reference
/// (size 4, which checks out) and `take` hands that fetch to the middle one: a 4-byte chunk for
/// an 8-byte range. A seek to offset 6 of that range then computes `data.len() - offset`
/// = 4 - 6: a panic (debug) or a wrapped length (release), instead of `ChunkCorrupt`.
#[test]
fn duplicate_digest_other_size_panics_on_seek() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let digest = store
        .insert_chunk(b"abcd", Encryption::None)
        .unwrap()
        .digest;
    let mut archive = ArchiveReader::new(store.chunk_reader(), thrice(&digest, 8)).read_ahead(4);
    let mut first = [0u8; 4];
    archive.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"abcd");
    archive.seek(SeekFrom::Start(10)).unwrap();
    let mut buf = [0u8; 2];
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| archive.read(&mut buf)));
    let read = read.expect("the reader panicked");
    assert!(
        read.is_err(),
        "an 8-byte reference to a 4-byte chunk was read: {read:?}"
    );
}

/// The middle reference claims 2 bytes; the chunk has 4. The same mix-up as above hands out
/// the 4-byte chunk for the 2-byte range: the read runs 2 bytes into the next range and the
/// whole archive reads "successfully" (10 bytes), where every other path refuses the index
/// (`ChunkDefect::Size`).
#[test]
fn duplicate_digest_smaller_claim_reads_ok() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let digest = store
        .insert_chunk(b"abcd", Encryption::None)
        .unwrap()
        .digest;
    let mut archive = ArchiveReader::new(store.chunk_reader(), thrice(&digest, 2)).read_ahead(4);
    let mut out = Vec::new();
    let result = archive.read_to_end(&mut out);
    assert!(
        result.is_err(),
        "a 2-byte reference to a 4-byte chunk read as {:?}",
        String::from_utf8_lossy(&out)
    );
}

/// Without read-ahead the same index is refused: what the two findings above are measured against.
#[test]
fn duplicate_digest_smaller_claim_refused_without_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let digest = store
        .insert_chunk(b"abcd", Encryption::None)
        .unwrap()
        .digest;
    let mut archive = ArchiveReader::new(store.chunk_reader(), thrice(&digest, 2)).read_ahead(1);
    let mut out = Vec::new();
    assert!(archive.read_to_end(&mut out).is_err());
}

/// A PBS datastore holds chunks encrypted by many clients' keys. A content verify run with one
/// key (the store's, or `--keyfile`) fails the AES-GCM tag of every chunk another key wrote, calls
/// that corruption and renames the good chunk `.bad`: the snapshot is then unreadable even with
/// its right key. A key that does not match the manifest's fingerprint should leave the chunks
/// checked by CRC only, never set aside.
#[test]
fn verify_with_another_key_sets_aside_good_chunks() {
    use keepsake_datastore::{ChunkVerification, VerifyOptions, VerifyScope};
    use keepsake_hierarchy::{BackupNamespace, BackupTime};
    use keepsake_manifest::crypt::CryptConfig;

    let dir = tempfile::tempdir().unwrap();
    let writer = DataStore::builder("enc", dir.path().join("enc"))
        .lock_root(dir.path().join("locks"))
        .chunk_prefix_dirs(false)
        .key(CryptConfig::new([7; 32]))
        .create()
        .unwrap();
    let image: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let group = writer.group(&BackupNamespace::root(), &"vm/1".parse().unwrap());
    let mut w = group
        .start_backup(
            &"root@pam".parse().unwrap(),
            BackupTime::from_epoch(1_000).unwrap(),
        )
        .unwrap();
    w.add_fixed_archive("drive-scsi0.img.fidx", &image, 65_536, Encryption::StoreKey)
        .unwrap();
    let snapshot = w.finish().unwrap();

    let other = DataStore::builder("enc", dir.path().join("enc"))
        .lock_root(dir.path().join("locks"))
        .open()
        .unwrap();
    let options = VerifyOptions::default()
        .chunks(ChunkVerification::Content)
        .key(CryptConfig::new([8; 32]));
    let report = other.verify(&VerifyScope::Store, &options).unwrap();
    assert_eq!(
        report.content.set_aside, 0,
        "good chunks set aside by a verify with another key: {report:?}"
    );
    let mut back = Vec::new();
    writer
        .snapshot(&BackupNamespace::root(), snapshot.dir())
        .open_archive("drive-scsi0.img.fidx")
        .unwrap()
        .read_to_end(&mut back)
        .expect("the snapshot no longer reads with its own key");
    assert_eq!(back, image);
}
