//! The backup writer's streaming archives: chunk by chunk they give the same snapshot as the
//! whole-slice calls, refuse chunks that do not fit the image, and add nothing when dropped.

use keepsake_datastore::{DataStore, Encryption, Error, Snapshot};
use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};
use keepsake_manifest::index::{ChunkIndex, DynamicIndex, FixedIndex};

const CHUNK: u64 = 65_536;

fn store(dir: &tempfile::TempDir) -> DataStore {
    DataStore::builder("store1", dir.path().join("store1"))
        .lock_root(dir.path().join("locks"))
        .chunk_prefix_dirs(false)
        .create()
        .unwrap()
}

fn owner() -> Authid {
    "root@pam".parse().unwrap()
}

fn group(store: &DataStore, name: &str) -> keepsake_datastore::Group {
    store.group(
        &BackupNamespace::root(),
        &name.parse::<BackupGroup>().unwrap(),
    )
}

fn time(epoch: i64) -> BackupTime {
    BackupTime::from_epoch(epoch).unwrap()
}

/// Bytes that differ per `seed` and position (no two chunks of an image equal).
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed * 7919) % 251) as u8)
        .collect()
}

fn fixed_digests(snapshot: &Snapshot, name: &str) -> (u64, u64, Vec<[u8; 32]>) {
    let index = FixedIndex::from_bytes(snapshot.read_file(name).unwrap()).unwrap();
    (
        index.archive_size(),
        index.chunk_size(),
        index.digests().copied().collect(),
    )
}

#[test]
fn streamed_fixed_archive_equals_the_whole_slice() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let image = bytes(1, 3 * CHUNK as usize + 1_000);

    let mut whole = group(&store, "vm/100")
        .start_backup(&owner(), time(1_000))
        .unwrap();
    whole
        .add_fixed_archive("drive-scsi0.img.fidx", &image, CHUNK, Encryption::None)
        .unwrap();
    let whole = whole.finish().unwrap();

    let mut streamed = group(&store, "vm/101")
        .start_backup(&owner(), time(1_000))
        .unwrap();
    let mut archive = streamed
        .start_fixed_archive(
            "drive-scsi0.img.fidx",
            image.len() as u64,
            CHUNK,
            Encryption::None,
        )
        .unwrap();
    for chunk in image.chunks(CHUNK as usize) {
        archive.push(chunk).unwrap();
    }
    archive.finish().unwrap();
    // Every chunk was inserted by the first backup already.
    assert_eq!(streamed.chunk_upload_stats().count, 4);
    assert_eq!(streamed.chunk_upload_stats().duplicates, 4);
    let streamed = streamed.finish().unwrap();

    let (a, b) = (
        whole.load_manifest().unwrap(),
        streamed.load_manifest().unwrap(),
    );
    assert_eq!(a.files(), b.files());
    assert_eq!(a.files()[0].size(), image.len() as u64);
    assert_eq!(
        fixed_digests(&whole, "drive-scsi0.img.fidx"),
        fixed_digests(&streamed, "drive-scsi0.img.fidx")
    );
}

#[test]
fn fixed_archive_refuses_chunks_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let mut backup = group(&store, "vm/100")
        .start_backup(&owner(), time(1_000))
        .unwrap();
    let size = CHUNK + 10;
    let mut archive = backup
        .start_fixed_archive("drive-scsi0.img.fidx", size, CHUNK, Encryption::None)
        .unwrap();
    // Too short for a chunk that is not the last.
    assert!(matches!(
        archive.push(&bytes(1, 100)),
        Err(Error::Encode { .. })
    ));
    archive.push(&bytes(1, CHUNK as usize)).unwrap();
    // The last chunk holds exactly what is left.
    assert!(matches!(
        archive.push(&bytes(2, CHUNK as usize)),
        Err(Error::Encode { .. })
    ));
    archive.push(&bytes(2, 10)).unwrap();
    // Past the end.
    assert!(matches!(
        archive.push(&bytes(3, 1)),
        Err(Error::Encode { .. })
    ));
    archive.finish().unwrap();
    assert_eq!(backup.chunk_upload_stats().count, 2);
    let snapshot = backup.finish().unwrap();
    assert_eq!(fixed_digests(&snapshot, "drive-scsi0.img.fidx").2.len(), 2);
}

#[test]
fn unfinished_or_dropped_archives_are_not_in_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let mut backup = group(&store, "vm/100")
        .start_backup(&owner(), time(1_000))
        .unwrap();
    let mut short = backup
        .start_fixed_archive("short.img.fidx", 2 * CHUNK, CHUNK, Encryption::None)
        .unwrap();
    short.push(&bytes(1, CHUNK as usize)).unwrap();
    assert!(matches!(short.finish(), Err(Error::Encode { .. })));
    let mut dropped = backup
        .start_dynamic_archive("dropped.pxar.didx", Encryption::None)
        .unwrap();
    dropped.push(b"some bytes").unwrap();
    drop(dropped);
    backup
        .add_blob("qemu-server.conf.blob", b"memory: 512\n", Encryption::None)
        .unwrap();
    let snapshot = backup.finish().unwrap();
    let manifest = snapshot.load_manifest().unwrap();
    let names: Vec<&str> = manifest.files().iter().map(|f| f.filename()).collect();
    assert_eq!(names, ["qemu-server.conf.blob"]);
    assert!(snapshot.read_file("short.img.fidx").is_err());
    assert!(snapshot.read_file("dropped.pxar.didx").is_err());
}

#[test]
fn dynamic_archive_from_owned_chunks_equals_borrowed_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let chunks: Vec<Vec<u8>> = (0..5).map(|i| bytes(i, 1_000 + 300 * i as usize)).collect();

    let mut borrowed = group(&store, "ct/200")
        .start_backup(&owner(), time(1_000))
        .unwrap();
    borrowed
        .add_dynamic_archive(
            "root.pxar.didx",
            chunks.iter().map(Vec::as_slice),
            Encryption::None,
        )
        .unwrap();
    let borrowed = borrowed.finish().unwrap();

    // Owned chunks made as the iterator advances: one in memory at a time.
    let mut owned = group(&store, "ct/201")
        .start_backup(&owner(), time(1_000))
        .unwrap();
    owned
        .add_dynamic_archive(
            "root.pxar.didx",
            (0..5).map(|i| bytes(i, 1_000 + 300 * i as usize)),
            Encryption::None,
        )
        .unwrap();
    let owned = owned.finish().unwrap();

    let mut streamed = group(&store, "ct/202")
        .start_backup(&owner(), time(1_000))
        .unwrap();
    let mut archive = streamed
        .start_dynamic_archive("root.pxar.didx", Encryption::None)
        .unwrap();
    for chunk in &chunks {
        archive.push(chunk).unwrap();
    }
    archive.finish().unwrap();
    let streamed = streamed.finish().unwrap();

    let entries = |s: &Snapshot| -> Vec<(u64, [u8; 32])> {
        DynamicIndex::from_bytes(s.read_file("root.pxar.didx").unwrap())
            .unwrap()
            .entries()
            .map(|(end, digest)| (end, *digest))
            .collect()
    };
    assert_eq!(entries(&borrowed), entries(&owned));
    assert_eq!(entries(&borrowed), entries(&streamed));
    let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    assert_eq!(entries(&borrowed).last().unwrap().0, total);
    let files = borrowed.load_manifest().unwrap().files().to_vec();
    assert_eq!(files, owned.load_manifest().unwrap().files());
    assert_eq!(files, streamed.load_manifest().unwrap().files());
    assert_eq!(files[0].size(), total);
}

#[test]
fn streamed_archives_need_a_key_to_encrypt() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let mut backup = group(&store, "vm/100")
        .start_backup(&owner(), time(1_000))
        .unwrap();
    assert!(matches!(
        backup.start_fixed_archive("a.img.fidx", CHUNK, CHUNK, Encryption::StoreKey),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        backup.start_dynamic_archive("a.pxar.didx", Encryption::StoreKey),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        backup.start_fixed_archive("bad name", CHUNK, CHUNK, Encryption::None),
        Err(Error::Encode { .. })
    ));
}
