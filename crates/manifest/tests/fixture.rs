//! Compatibility with a datastore written by PBS 3.2.4's own code (the test kit's fixture).

use std::fs;
use std::path::{Path, PathBuf};

use keepsake_hierarchy::{BackupDir, BackupNamespace};
use keepsake_manifest::blob::{self, BlobKind, DataBlob};
use keepsake_manifest::crypt::chunk_digest;
use keepsake_manifest::index::{ChunkIndex, DynamicIndex, FixedIndex, IndexFile};
use keepsake_manifest::manifest::{BackupManifest, ChunkUploadStats, CryptMode, VerifyOutcome};
use keepsake_testkit::fixture::{PbsFixture, SNAPSHOTS};
use sha2::{Digest, Sha256};

fn snapshot_dir(root: &Path, namespace: &str, group: &str, time: &str) -> (PathBuf, BackupDir) {
    let ns = BackupNamespace::new(namespace).unwrap();
    let dir: BackupDir = format!("{group}/{time}").parse().unwrap();
    (root.join(dir.relative_path(&ns)), dir)
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let ty = entry.file_type().unwrap();
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

fn has_ext(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e == ext)
}

#[test]
fn every_manifest_reencodes_to_pbs_text_byte_for_byte() {
    let fixture = PbsFixture::unpack().unwrap();
    let mut seen = 0;
    for snap in SNAPSHOTS.iter().filter(|s| s.finished) {
        let (dir, backup_dir) =
            snapshot_dir(&fixture.path(), snap.namespace, snap.group, snap.time);
        let raw = fs::read(dir.join("index.json.blob")).unwrap();
        let json = blob::decode(&raw, None).unwrap();
        let manifest = BackupManifest::from_json(&json).unwrap();
        assert_eq!(manifest.snapshot(), backup_dir);
        assert_eq!(manifest.to_json().as_bytes(), &json[..], "{dir:?}");

        // Through our own blob and back gives the same text again.
        let reencoded = manifest.to_blob().unwrap();
        assert_eq!(reencoded.kind(), BlobKind::Compressed);
        assert_eq!(blob::decode(reencoded.as_bytes(), None).unwrap(), json);
        assert_eq!(BackupManifest::from_blob_bytes(&raw).unwrap(), manifest);
        seen += 1;
    }
    assert_eq!(seen, 7);
}

#[test]
fn manifest_entries_match_the_files_beside_them() {
    let fixture = PbsFixture::unpack().unwrap();
    let mut checked = 0;
    for snap in SNAPSHOTS.iter().filter(|s| s.finished) {
        let (dir, _) = snapshot_dir(&fixture.path(), snap.namespace, snap.group, snap.time);
        let manifest =
            BackupManifest::from_blob_bytes(&fs::read(dir.join("index.json.blob")).unwrap())
                .unwrap();
        assert!(!manifest.files().is_empty());
        for file in manifest.files() {
            assert_eq!(file.crypt_mode(), CryptMode::None);
            let bytes = fs::read(dir.join(file.filename())).unwrap();
            let (size, csum): (u64, [u8; 32]) = match IndexFile::from_slice(&bytes) {
                Ok(index) => (index.archive_size(), *index.index_csum()),
                Err(_) => {
                    assert!(file.filename().ends_with(".blob"), "{}", file.filename());
                    (bytes.len() as u64, Sha256::digest(&bytes).into())
                }
            };
            assert!(file.matches(size, &csum), "{dir:?} {}", file.filename());
            checked += 1;
        }
        // The client log lies beside the manifest but is never listed.
        assert!(manifest.file("client.log.blob").is_none());
    }
    assert_eq!(checked, 12);
}

#[test]
fn every_blob_and_index_in_the_store_decodes() {
    let fixture = PbsFixture::unpack().unwrap();
    let root = fixture.path();
    let (mut blobs, mut fixed, mut dynamic) = (0, 0, 0);
    for path in files_under(&root) {
        let bytes = fs::read(&path).unwrap();
        if has_ext(&path, "blob") {
            let blob = DataBlob::from_raw(bytes).unwrap();
            assert!(!blob.kind().is_encrypted());
            let data = blob.decode(None).unwrap();
            assert!(!data.is_empty(), "{path:?}");
            blobs += 1;
        } else if has_ext(&path, "fidx") {
            let index = FixedIndex::from_slice(&bytes).unwrap();
            let by_reader = FixedIndex::read_from(&bytes[..], bytes.len() as u64).unwrap();
            assert_eq!(index, by_reader);
            assert_eq!(index.chunk_size(), 4 << 20);
            assert_eq!(index.chunk_count(), 2);
            assert_eq!(index.archive_size(), 8 << 20);
            assert_eq!(index.chunk_range(1), Some((4 << 20)..(8 << 20)));
            fixed += 1;
        } else if has_ext(&path, "didx") {
            let index = DynamicIndex::from_slice(&bytes).unwrap();
            let by_reader = DynamicIndex::read_from(&bytes[..], bytes.len() as u64).unwrap();
            assert_eq!(index, by_reader);
            assert!(index.chunk_count() > 0);
            let ranges: Vec<_> = index.chunks().map(|c| c.range).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, index.archive_size());
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
            dynamic += 1;
        }
    }
    // 7 manifests + 5 config blobs + 1 unfinished config + 2 client logs.
    assert_eq!(blobs, 15);
    assert_eq!(fixed, 4);
    assert_eq!(dynamic, 4);
}

#[test]
fn chunks_decode_to_data_with_their_digest_and_indexes_refer_to_them() {
    let fixture = PbsFixture::unpack().unwrap();
    let root = fixture.path();
    let mut chunk_names = Vec::new();
    for path in files_under(&root.join(".chunks")) {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let data = blob::decode(&fs::read(&path).unwrap(), None).unwrap();
        assert_eq!(hex::encode(chunk_digest(&data, None)), name);
        assert_eq!(&name[..4], path.parent().unwrap().file_name().unwrap());
        chunk_names.push(name);
    }
    assert_eq!(chunk_names.len(), 7);
    for path in files_under(&root) {
        if has_ext(&path, "fidx") || has_ext(&path, "didx") {
            let index = IndexFile::from_bytes(fs::read(&path).unwrap()).unwrap();
            for i in 0..index.chunk_count() {
                let digest = hex::encode(index.digest(i).unwrap());
                assert!(chunk_names.contains(&digest), "{path:?} chunk {i}");
            }
        }
    }
}

#[test]
fn plain_compressed_blobs_from_pbs_have_no_content_size() {
    // PBS's streaming encoder leaves the content size out; the decoder must not need it.
    let fixture = PbsFixture::unpack().unwrap();
    let (dir, _) = snapshot_dir(&fixture.path(), "", "vm/100", "2024-06-05T15:06:40Z");
    let blob = DataBlob::from_raw(fs::read(dir.join("index.json.blob")).unwrap()).unwrap();
    assert_eq!(blob.kind(), BlobKind::Compressed);
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(blob.payload()).unwrap(),
        None
    );
    assert!(
        blob.decode(None)
            .unwrap()
            .starts_with(b"{\n  \"backup-id\": \"100\"")
    );
}

#[test]
fn typed_accessors_read_what_pbs_wrote() {
    let fixture = PbsFixture::unpack().unwrap();
    let load = |ns: &str, group: &str, time: &str| {
        let (dir, _) = snapshot_dir(&fixture.path(), ns, group, time);
        BackupManifest::from_blob_bytes(&fs::read(dir.join("index.json.blob")).unwrap()).unwrap()
    };

    let vm = load("", "vm/100", "2024-06-05T15:06:40Z");
    assert_eq!(vm.notes().unwrap(), Some("first vm backup\nsecond line"));
    let verify = vm.verify_state().unwrap().unwrap();
    assert_eq!(verify.state, VerifyOutcome::Ok);
    assert!(verify.upid.starts_with("UPID:pbs:"));
    assert_eq!(
        vm.chunk_upload_stats().unwrap(),
        Some(ChunkUploadStats {
            count: 2,
            size: 8_388_608,
            compressed_size: 4_200_000,
            duplicates: 0,
        })
    );
    assert_eq!(vm.key_fingerprint().unwrap(), None);
    assert_eq!(vm.signature(), None);
    vm.check_fingerprint(None).unwrap();

    let ct = load("", "ct/200", "2024-06-05T16:06:40Z");
    assert_eq!(ct.notes().unwrap(), Some("ct via token"));
    assert_eq!(ct.verify_state().unwrap(), None);

    let site_a = load("prod/site-a", "vm/100", "2024-06-05T19:06:40Z");
    assert_eq!(site_a.notes().unwrap(), Some("site-a vm"));
}

#[test]
fn a_notes_update_changes_only_the_notes_line() {
    let fixture = PbsFixture::unpack().unwrap();
    let (dir, _) = snapshot_dir(&fixture.path(), "", "ct/200", "2024-06-05T16:06:40Z");
    let raw = fs::read(dir.join("index.json.blob")).unwrap();
    let before = String::from_utf8(blob::decode(&raw, None).unwrap()).unwrap();
    let mut manifest = BackupManifest::from_json(before.as_bytes()).unwrap();
    manifest.set_notes(Some("changed"));
    let after = manifest.to_json();
    assert_eq!(
        after,
        before.replace("\"notes\": \"ct via token\"", "\"notes\": \"changed\"")
    );
}
