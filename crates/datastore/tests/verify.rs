//! Metadata verify: finds every planted corruption (on every backend), nothing in the PBS fixture,
//! checks signatures with a key, walks each scope, and records its verdict in the manifest.

mod common;

use keepsake_datastore::Encryption;
use keepsake_manifest::blob::Compression;
use std::collections::BTreeMap;

use keepsake_datastore::{
    ChunkVerification, DataStore, Error, Problem, SnapshotOutcome, VerifyOptions, VerifyReport,
    VerifyScope,
};
use keepsake_hierarchy::{Authid, BackupDir, BackupNamespace, BackupTime};
use keepsake_manifest::crypt::CryptConfig;
use keepsake_manifest::index::{ChunkIndex, DynamicIndexWriter, IndexFile};
use keepsake_manifest::manifest::{CryptMode, FileInfo, VerifyOutcome};
use keepsake_testkit::fixture::{self, PbsFixture};

fn root() -> Authid {
    "root@pam".parse().unwrap()
}

fn dir(s: &str) -> BackupDir {
    s.parse().unwrap()
}

/// A finished snapshot with a blob, a fixed and a dynamic index (the dynamic index has a chunk of
/// its own: `unique {time}`), and a client log that the manifest does not list.
fn backup(store: &DataStore, ns: &BackupNamespace, g: &str, time: i64) -> BackupDir {
    let mut w = store
        .group(ns, &g.parse().unwrap())
        .start_backup(&root(), BackupTime::from_epoch(time).unwrap())
        .unwrap();
    w.add_blob(
        "qemu-server.conf.blob",
        format!("conf {time}\n").as_bytes(),
        Encryption::None,
    )
    .unwrap();
    let image: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    w.add_fixed_archive("drive-scsi0.img.fidx", &image, 65_536, Encryption::None)
        .unwrap();
    let unique = format!("unique {time}").into_bytes();
    w.add_dynamic_archive(
        "root.pxar.didx",
        [&[3u8; 5_000][..], &unique[..]],
        Encryption::None,
    )
    .unwrap();
    let snapshot = w.finish().unwrap();
    let log = keepsake_manifest::blob::DataBlob::encode(b"backup log\n", None, Compression::None)
        .unwrap();
    store
        .backend()
        .write(
            &format!("{}/client.log.blob", snapshot.relative_path())
                .parse()
                .unwrap(),
            log.as_bytes(),
            keepsake_backend::WriteMode::CreateOnly,
        )
        .unwrap();
    snapshot.dir().clone()
}

fn file_path(
    ns: &BackupNamespace,
    snapshot: &BackupDir,
    name: &str,
) -> keepsake_backend::BackendPath {
    snapshot.file_path(ns, name).unwrap().parse().unwrap()
}

fn rewrite(
    store: &DataStore,
    file: &keepsake_backend::BackendPath,
    change: impl FnOnce(&mut Vec<u8>),
) {
    let mut bytes = store.backend().read(file).unwrap().data;
    change(&mut bytes);
    store
        .backend()
        .write(file, &bytes, keepsake_backend::WriteMode::Replace)
        .unwrap();
}

/// Problem names per snapshot path, for failed snapshots.
fn problems(report: &VerifyReport) -> BTreeMap<String, Vec<&'static str>> {
    report
        .failed()
        .map(|s| {
            let names = s
                .problems
                .iter()
                .map(|p| match p {
                    Problem::ManifestUnreadable { .. } => "manifest-unreadable",
                    Problem::ManifestMismatch { .. } => "manifest-mismatch",
                    Problem::Signature { .. } => "signature",
                    Problem::FileMissing { .. } => "file-missing",
                    Problem::FileUnreadable { .. } => "file-unreadable",
                    Problem::BlobCorrupt { .. } => "blob-corrupt",
                    Problem::IndexCorrupt { .. } => "index-corrupt",
                    Problem::SizeMismatch { .. } => "size",
                    Problem::ChecksumMismatch { .. } => "csum",
                    Problem::ChunkMissing { .. } => "chunk-missing",
                    Problem::ChunkUnchecked { .. } => "chunk-unchecked",
                    _ => "other",
                })
                .collect();
            (s.snapshot.to_string(), names)
        })
        .collect()
}

#[test]
fn verify_finds_every_planted_corruption() {
    for ts in common::all("verify_finds_every_planted_corruption") {
        let store = &ts.store;
        let ns = BackupNamespace::root();
        let times = [1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 7_000, 8_000];
        let snaps: Vec<BackupDir> = times
            .iter()
            .map(|&t| backup(store, &ns, "vm/1", t))
            .collect();
        let clean = store
            .verify(&VerifyScope::Store, &VerifyOptions::default())
            .unwrap();
        assert!(clean.is_ok(), "{}: {clean:#?}", ts.kind);
        assert_eq!(clean.snapshots.len(), 8);

        // 1: a flipped byte in a blob: its CRC and its manifest checksum fail.
        rewrite(
            store,
            &file_path(&ns, &snaps[0], "qemu-server.conf.blob"),
            |b| {
                let last = b.len() - 1;
                b[last] ^= 0x40;
            },
        );
        // 2: a wrong checksum in the manifest.
        store
            .snapshot(&ns, &snaps[1])
            .update_manifest(|m| {
                let old = m.remove_file("drive-scsi0.img.fidx").unwrap();
                m.add_file(
                    FileInfo::new(old.filename(), CryptMode::None, old.size(), [0xee; 32]).unwrap(),
                )
                .unwrap();
                Ok(())
            })
            .unwrap();
        // 3: a missing chunk: the dynamic index is rewritten to reference a chunk that was never
        // stored (its manifest entry updated to match, so that only the chunk is wrong).
        let digest = [0xab_u8; 32];
        let original = store
            .snapshot(&ns, &snaps[2])
            .read_file("root.pxar.didx")
            .unwrap();
        let stored = *IndexFile::from_bytes(original).unwrap().digest(0).unwrap();
        let mut writer = DynamicIndexWriter::new(3_000);
        writer.push_chunk(5_000, &stored).unwrap();
        writer.push_chunk(100, &digest).unwrap();
        let (size, csum) = (writer.archive_size(), writer.index_csum());
        store
            .backend()
            .write(
                &file_path(&ns, &snaps[2], "root.pxar.didx"),
                &writer.finish().unwrap(),
                keepsake_backend::WriteMode::Replace,
            )
            .unwrap();
        store
            .snapshot(&ns, &snaps[2])
            .update_manifest(|m| {
                m.remove_file("root.pxar.didx").unwrap();
                m.add_file(FileInfo::new("root.pxar.didx", CryptMode::None, size, csum).unwrap())
                    .unwrap();
                Ok(())
            })
            .unwrap();
        assert!(!store.chunk_exists(&digest).unwrap());
        // 4: a truncated index.
        rewrite(
            store,
            &file_path(&ns, &snaps[3], "drive-scsi0.img.fidx"),
            |b| {
                b.truncate(b.len() - 7);
            },
        );
        // 5: a file the manifest names is missing.
        store
            .backend()
            .remove_file(&file_path(&ns, &snaps[4], "root.pxar.didx"))
            .unwrap();
        // 6: a flipped byte in the manifest blob.
        rewrite(store, &file_path(&ns, &snaps[5], "index.json.blob"), |b| {
            b[20] ^= 0x01;
        });
        // 7: a flipped byte in the client log, which the manifest does not list.
        rewrite(store, &file_path(&ns, &snaps[6], "client.log.blob"), |b| {
            b[14] ^= 0x08;
        });
        // 8 stays intact; an unfinished snapshot is not a problem.
        let writer = store
            .group(&ns, &"vm/1".parse().unwrap())
            .start_backup(&root(), BackupTime::from_epoch(9_000).unwrap())
            .unwrap();

        let report = store
            .verify(&VerifyScope::Store, &VerifyOptions::default())
            .unwrap();
        let found = problems(&report);
        let expect = |i: usize, names: &[&str]| {
            assert_eq!(
                found.get(&snaps[i].to_string()).map(Vec::as_slice),
                Some(names),
                "{}: snapshot {i}: {report:#?}",
                ts.kind
            );
        };
        expect(0, &["blob-corrupt", "csum"]);
        expect(1, &["csum"]);
        expect(2, &["chunk-missing"]);
        expect(3, &["index-corrupt"]);
        expect(4, &["file-missing"]);
        expect(5, &["manifest-unreadable"]);
        expect(6, &["blob-corrupt"]);
        assert_eq!(found.len(), 7, "{}: {found:?}", ts.kind);
        let outcome = |d: &BackupDir| {
            report
                .snapshots
                .iter()
                .find(|s| s.snapshot == *d)
                .map(|s| s.outcome)
        };
        assert_eq!(outcome(&snaps[7]), Some(SnapshotOutcome::Ok), "{}", ts.kind);
        // The running backup holds its snapshot exclusively: not checked, not failed.
        assert_eq!(
            outcome(writer.snapshot().dir()),
            Some(SnapshotOutcome::InUse),
            "{}",
            ts.kind
        );
        drop(writer);

        // The missing chunk names its digest and file; messages say what is wrong.
        let chunk_problem = report
            .problems()
            .find_map(|(_, p)| match p {
                Problem::ChunkMissing { file, digest } => Some((file.clone(), digest.clone())),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            chunk_problem,
            ("root.pxar.didx".to_owned(), hex::encode(digest))
        );
        assert!(!report.is_ok());

        // Recording the verdicts: failed ones say failed, the intact one ok, an unreadable manifest
        // cannot record anything.
        let recorded = store
            .verify(
                &VerifyScope::Store,
                &VerifyOptions::default()
                    .chunks(ChunkVerification::Content)
                    .record_state("UPID:test"),
            )
            .unwrap();
        for s in &recorded.snapshots {
            let i = snaps.iter().position(|d| *d == s.snapshot).unwrap();
            assert_eq!(s.recorded, i != 5, "{}: snapshot {i}", ts.kind);
            if i == 5 {
                continue;
            }
            let state = store
                .snapshot(&ns, &s.snapshot)
                .verify_state()
                .unwrap()
                .unwrap();
            assert_eq!(state.upid, "UPID:test");
            let want = if i == 7 {
                VerifyOutcome::Ok
            } else {
                VerifyOutcome::Failed
            };
            assert_eq!(state.state, want, "{}: snapshot {i}", ts.kind);
        }
        common::assert_cache_matches_bucket(&ts);
    }
}

#[test]
fn verify_walks_each_scope() {
    for ts in common::all("verify_walks_each_scope") {
        let store = &ts.store;
        let root_ns = BackupNamespace::root();
        let a = store.create_namespace(&"a".parse().unwrap()).unwrap();
        let ab = store.create_namespace(&"a/b".parse().unwrap()).unwrap();
        let s1 = backup(store, &root_ns, "vm/1", 1_000);
        backup(store, &root_ns, "vm/1", 2_000);
        backup(store, &a, "ct/2", 1_000);
        backup(store, &ab, "host/3", 1_000);
        backup(store, &ab, "host/3", 2_000);
        let count = |scope: VerifyScope| {
            let report = store.verify(&scope, &VerifyOptions::default()).unwrap();
            assert!(report.is_ok(), "{report:#?}");
            report.snapshots.len()
        };
        assert_eq!(count(VerifyScope::Store), 5);
        // Progress: one call per snapshot, in report order.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&seen);
        let options = VerifyOptions::default().progress(move |s| {
            sink.lock().unwrap().push(s.relative_path());
        });
        let report = store.verify(&VerifyScope::Store, &options).unwrap();
        let reported: Vec<String> = report.snapshots.iter().map(|s| s.relative_path()).collect();
        assert_eq!(*seen.lock().unwrap(), reported, "{}", ts.kind);
        assert_eq!(
            count(VerifyScope::Namespace {
                ns: a.clone(),
                max_depth: None
            }),
            3
        );
        assert_eq!(
            count(VerifyScope::Namespace {
                ns: a.clone(),
                max_depth: Some(0)
            }),
            1
        );
        assert_eq!(
            count(VerifyScope::Group {
                ns: ab.clone(),
                group: "host/3".parse().unwrap()
            }),
            2
        );
        assert_eq!(
            count(VerifyScope::Snapshot {
                ns: root_ns.clone(),
                snapshot: s1.clone()
            }),
            1
        );
        let one = store
            .snapshot(&root_ns, &s1)
            .verify(&VerifyOptions::default())
            .unwrap();
        assert_eq!(one.outcome, SnapshotOutcome::Ok);
        assert_eq!(one.files_checked, 5, "manifest, 3 files, client log");
        assert_eq!(one.chunks_checked, 5, "3 fixed + 2 dynamic");
        // Without chunk checks nothing is asked of the chunk store.
        let quick = store
            .snapshot(&root_ns, &s1)
            .verify(&VerifyOptions::default().chunks(ChunkVerification::Skip))
            .unwrap();
        assert_eq!(quick.chunks_checked, 0);

        for scope in [
            VerifyScope::Namespace {
                ns: "zz".parse().unwrap(),
                max_depth: None,
            },
            VerifyScope::Group {
                ns: root_ns.clone(),
                group: "vm/404".parse().unwrap(),
            },
            VerifyScope::Snapshot {
                ns: root_ns.clone(),
                snapshot: dir("vm/1/2000-01-01T00:00:00Z"),
            },
        ] {
            assert!(
                matches!(
                    store.verify(&scope, &VerifyOptions::default()),
                    Err(Error::NotFound { .. })
                ),
                "{scope:?}"
            );
        }
    }
}

#[test]
fn verify_checks_signatures_with_a_key() {
    let dir_ = tempfile::tempdir().unwrap();
    let key = CryptConfig::new([7u8; 32]);
    let store = DataStore::builder("store1", dir_.path().join("store1"))
        .lock_root(dir_.path().join("locks"))
        .chunk_prefix_dirs(false)
        .create()
        .unwrap();
    let ns = BackupNamespace::root();
    let mut w = store
        .group(&ns, &"vm/1".parse().unwrap())
        .start_backup(&root(), BackupTime::from_epoch(1_000).unwrap())
        .unwrap();
    w.add_blob("qemu-server.conf.blob", b"x", Encryption::None)
        .unwrap();
    w.manifest_mut().sign(&key).unwrap();
    let snapshot = w.finish().unwrap();

    let with = |k: CryptConfig| {
        store
            .verify(&VerifyScope::Store, &VerifyOptions::default().key(k))
            .unwrap()
    };
    assert!(with(key.clone()).is_ok());
    // Another key: the recorded fingerprint does not match.
    let report = with(CryptConfig::new([8u8; 32]));
    assert_eq!(problems(&report).values().next().unwrap(), &["signature"]);
    // Content changed without re-signing (by another tool, written over the file; keepsake's
    // own update_manifest refuses to do that): the signature no longer matches.
    let mut changed = snapshot.load_manifest().unwrap();
    let old = changed.remove_file("qemu-server.conf.blob").unwrap();
    changed
        .add_file(
            FileInfo::new(
                "qemu-server.conf.blob",
                CryptMode::None,
                old.size(),
                *old.csum(),
            )
            .unwrap(),
        )
        .unwrap();
    changed
        .add_file(FileInfo::new("extra.blob", CryptMode::None, 1, [0; 32]).unwrap())
        .unwrap();
    std::fs::write(
        dir_.path()
            .join("store1")
            .join(snapshot.relative_path())
            .join("index.json.blob"),
        changed.to_blob().unwrap().as_bytes(),
    )
    .unwrap();
    let report = with(key.clone());
    assert_eq!(
        problems(&report).values().next().unwrap(),
        &["signature", "file-missing"]
    );
    // Without a key, signatures are not checked.
    let report = store
        .verify(&VerifyScope::Store, &VerifyOptions::default())
        .unwrap();
    assert_eq!(
        problems(&report).values().next().unwrap(),
        &["file-missing"]
    );
}

#[test]
fn the_pbs_fixture_verifies_clean() {
    let fx = PbsFixture::unpack().unwrap();
    let locks = tempfile::tempdir().unwrap();
    let store = DataStore::builder("store1", fx.path())
        .lock_root(locks.path())
        .open()
        .unwrap();
    let report = store
        .verify(&VerifyScope::Store, &VerifyOptions::default())
        .unwrap();
    assert!(report.is_ok(), "{report:#?}");
    assert!(report.interrupted.is_empty());
    assert_eq!(report.snapshots.len(), fixture::SNAPSHOTS.len());
    for s in &report.snapshots {
        let listed = fixture::SNAPSHOTS
            .iter()
            .find(|f| {
                f.namespace == s.ns.to_string()
                    && format!("{}/{}", f.group, f.time) == s.snapshot.to_string()
            })
            .unwrap();
        let want = if listed.finished {
            SnapshotOutcome::Ok
        } else {
            SnapshotOutcome::Unfinished
        };
        assert_eq!(s.outcome, want, "{}", s.relative_path());
        if listed.finished {
            assert!(s.files_checked >= 2 && s.chunks_checked >= 1, "{s:#?}");
        }
    }
    // Verify changed nothing: no journal folder, no verify state written.
    assert!(!fx.path().join(".keepsake").exists());

    // The same walk finds damage planted in PBS's own files.
    let victim = fx
        .path()
        .join("ns/prod/host/myhost/2024-06-05T18:06:40Z/index.json.blob");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[30] ^= 0x10;
    std::fs::write(&victim, bytes).unwrap();
    let report = store
        .verify(&VerifyScope::Store, &VerifyOptions::default())
        .unwrap();
    assert_eq!(report.failed().count(), 1);
    assert_eq!(
        problems(&report).into_values().next().unwrap(),
        ["manifest-unreadable"]
    );
}

#[test]
fn update_manifest_never_breaks_a_signature() {
    let dir_ = tempfile::tempdir().unwrap();
    let key = CryptConfig::new([7u8; 32]);
    let make = |with_key: bool| {
        let builder = DataStore::builder("store1", dir_.path().join("store1"))
            .lock_root(dir_.path().join("locks"));
        if with_key {
            builder.key(key.clone()).open().unwrap()
        } else {
            builder.open().unwrap()
        }
    };
    DataStore::builder("store1", dir_.path().join("store1"))
        .lock_root(dir_.path().join("locks"))
        .chunk_prefix_dirs(false)
        .create()
        .unwrap();
    let store = make(false);
    let mut w = store
        .group(&BackupNamespace::root(), &"vm/1".parse().unwrap())
        .start_backup(&root(), BackupTime::from_epoch(1_000).unwrap())
        .unwrap();
    w.add_blob("qemu-server.conf.blob", b"x", Encryption::None)
        .unwrap();
    w.manifest_mut().sign(&key).unwrap();
    let snapshot = w.finish().unwrap();
    let file = dir_
        .path()
        .join("store1")
        .join(snapshot.relative_path())
        .join("index.json.blob");
    let before = std::fs::read(&file).unwrap();
    let add_file = |m: &mut keepsake_manifest::manifest::BackupManifest| {
        m.add_file(FileInfo::new("extra.blob", CryptMode::None, 1, [0; 32]).unwrap())
            .map_err(|source| Error::Encode {
                path: "extra.blob".to_owned(),
                source,
            })
    };
    // Without the key, a change to the signed part is refused and nothing is written.
    let err = snapshot.update_manifest(add_file).unwrap_err();
    assert!(matches!(err, Error::SignatureWouldBreak { .. }), "{err:?}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
    // Changes outside the signed part (notes) keep the signature valid.
    snapshot.set_notes(Some("checked")).unwrap();
    let signed = snapshot.load_manifest().unwrap();
    signed.verify_signature(&key).unwrap();
    // With the key, the manifest is signed again.
    let keyed = make(true);
    let same = keyed.snapshot(snapshot.ns(), snapshot.dir());
    let written = same.update_manifest(add_file).unwrap();
    written.verify_signature(&key).unwrap();
    assert!(written.file("extra.blob").is_some());
    // Clearing the signature explicitly is the caller's choice.
    let cleared = snapshot
        .update_manifest(|m| {
            m.clear_signature();
            m.remove_file("extra.blob");
            Ok(())
        })
        .unwrap();
    assert!(cleared.signature().is_none());
}
