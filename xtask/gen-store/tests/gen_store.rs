//! `gen-store` end to end: the binary writes small stores that list as planned, verify clean
//! (plain and encrypted), share exactly the asked share of chunks between consecutive
//! snapshots, compress as their data kind says, and come out the same for the same seed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use keepsake_datastore::{DataStore, Snapshot, VerifyOptions, VerifyScope};
use keepsake_hierarchy::BackupNamespace;
use keepsake_manifest::crypt::CryptConfig;
use keepsake_manifest::index::{ChunkIndex, IndexFile};
use keepsake_manifest::manifest::{CryptMode, FileInfo};

/// Runs the generator into `dir/name` with small archives; returns its JSON summary.
fn generate(dir: &Path, name: &str, extra: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_gen-store"))
        .arg(dir.join(name))
        .args(["--lock-root"])
        .arg(dir.join("locks"))
        .args([
            "--chunk-prefix-dirs",
            "off",
            "--chunk-size",
            "64K",
            "--archive-size",
            "1000000",
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "gen-store failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn open(dir: &Path, name: &str, key: Option<CryptConfig>) -> DataStore {
    let mut builder = DataStore::builder(name, dir.join(name)).lock_root(dir.join("locks"));
    if let Some(key) = key {
        builder = builder.key(key);
    }
    builder.open().unwrap()
}

/// Every snapshot of the store, grouped by namespace and group, oldest first.
fn snapshots(store: &DataStore) -> BTreeMap<String, Vec<Snapshot>> {
    let mut all = BTreeMap::new();
    for ns in store
        .iter_namespaces_recursive(&BackupNamespace::root(), None)
        .unwrap()
    {
        let ns = ns.unwrap();
        for group in store.iter_groups(&ns).unwrap() {
            let group = group.unwrap();
            let mut list: Vec<Snapshot> = group
                .list_backups()
                .unwrap()
                .into_iter()
                .map(|info| store.snapshot(&info.ns, &info.snapshot))
                .collect();
            list.sort_by_key(|s| s.dir().time());
            all.insert(group.relative_path(), list);
        }
    }
    all
}

/// The chunk digests an archive of a snapshot references, in order.
fn digests(snapshot: &Snapshot, file: &FileInfo) -> Vec<[u8; 32]> {
    let bytes = snapshot.read_file(file.filename()).unwrap();
    let index = IndexFile::from_bytes(bytes).unwrap();
    (0..index.chunk_count())
        .map(|i| *index.digest(i).unwrap())
        .collect()
}

fn chunk_files(store_dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in std::fs::read_dir(store_dir.join(".chunks")).unwrap() {
        for chunk in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            names.insert(chunk.unwrap().file_name().into_string().unwrap());
        }
    }
    names
}

#[test]
fn a_generated_store_lists_verifies_and_shares_as_asked() {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(
        dir.path(),
        "store1",
        &[
            "--groups",
            "4",
            "--snapshots",
            "3",
            "--kind",
            "both",
            "--shared",
            "75",
            "--namespaces",
            "--seed",
            "7",
        ],
    );
    assert_eq!(summary["store"], "store1");
    assert_eq!(summary["snapshots"], 12);
    // Both archives of every snapshot: 1,000,000 bytes each.
    assert_eq!(summary["logical-bytes"], 12 * 2 * 1_000_000);

    let store = open(dir.path(), "store1", None);
    let all = snapshots(&store);
    let groups: Vec<&str> = all.keys().map(String::as_str).collect();
    assert_eq!(
        groups,
        [
            "ns/prod/ct/101",
            "ns/prod/ns/db/host/host-2",
            "ns/test/vm/103",
            "vm/100"
        ]
    );
    let mut references = 0;
    let mut distinct = BTreeSet::new();
    for list in all.values() {
        assert_eq!(list.len(), 3);
        for s in list {
            assert!(s.is_finished().unwrap());
        }
        for pair in list.windows(2) {
            let (old, new) = (
                pair[0].load_manifest().unwrap(),
                pair[1].load_manifest().unwrap(),
            );
            for file in new
                .files()
                .iter()
                .filter(|f| !f.filename().ends_with(".blob"))
            {
                let before: BTreeSet<[u8; 32]> =
                    digests(&pair[0], old.file(file.filename()).unwrap())
                        .into_iter()
                        .collect();
                let now = digests(&pair[1], file);
                let kept = now.iter().filter(|d| before.contains(*d)).count();
                let asked = (now.len() as f64 * 0.75).round() as usize;
                assert_eq!(
                    kept,
                    asked,
                    "{} {}",
                    pair[1].relative_path(),
                    file.filename()
                );
            }
        }
        for s in list {
            let manifest = s.load_manifest().unwrap();
            for file in manifest
                .files()
                .iter()
                .filter(|f| !f.filename().ends_with(".blob"))
            {
                let d = digests(s, file);
                references += d.len();
                distinct.extend(d);
            }
        }
    }
    assert_eq!(summary["chunks"], references);
    assert_eq!(summary["distinct-chunks"], distinct.len());
    assert_eq!(
        chunk_files(&dir.path().join("store1")).len(),
        distinct.len()
    );

    let report = store
        .verify(&VerifyScope::Store, &VerifyOptions::default())
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.verified(), 12);
}

#[test]
fn the_same_seed_gives_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--groups",
        "2",
        "--snapshots",
        "2",
        "--kind",
        "both",
        "--seed",
        "3",
    ];
    generate(dir.path(), "first", &args);
    generate(
        dir.path(),
        "second",
        &[&args[..], &["--threads", "1"]].concat(),
    );
    let mut other = args;
    other[7] = "4";
    generate(dir.path(), "other", &other);

    let chunks = |name: &str| chunk_files(&dir.path().join(name));
    assert_eq!(chunks("first"), chunks("second"));
    assert!(chunks("first").is_disjoint(&chunks("other")));

    // Manifests name the same files with the same sizes and checksums (an index's checksum is
    // over its digests; its random UUID is not in the manifest).
    let manifests = |name: &str| -> Vec<(String, Vec<FileInfo>)> {
        let store = open(dir.path(), name, None);
        snapshots(&store)
            .into_values()
            .flatten()
            .map(|s| {
                (
                    s.relative_path(),
                    s.load_manifest().unwrap().files().to_vec(),
                )
            })
            .collect()
    };
    assert_eq!(manifests("first"), manifests("second"));
    assert_ne!(manifests("first"), manifests("other"));
}

#[test]
fn an_encrypted_store_verifies_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = [0x42u8; 32];
    let key_file = dir.path().join("key.hex");
    std::fs::write(&key_file, hex::encode(key)).unwrap();
    generate(
        dir.path(),
        "secret",
        &[
            "--groups",
            "2",
            "--snapshots",
            "2",
            "--kind",
            "both",
            "--key",
            key_file.to_str().unwrap(),
        ],
    );
    let config = CryptConfig::new(key);
    let store = open(dir.path(), "secret", Some(config.clone()));
    for s in snapshots(&store).into_values().flatten() {
        let manifest = s.load_manifest().unwrap();
        assert!(manifest.signature().is_some());
        assert_eq!(
            manifest.key_fingerprint().unwrap(),
            Some(config.fingerprint())
        );
        for file in manifest.files() {
            assert_eq!(file.crypt_mode(), CryptMode::Encrypt, "{}", file.filename());
        }
    }
    let report = store
        .verify(&VerifyScope::Store, &VerifyOptions::default())
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.verified(), 4);
    // Another key fails the signatures.
    let wrong = store
        .verify(
            &VerifyScope::Store,
            &VerifyOptions::default().key(CryptConfig::new([1u8; 32])),
        )
        .unwrap();
    assert!(!wrong.is_ok());
}

#[test]
fn data_kinds_compress_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let ratio = |summary: &serde_json::Value| {
        summary["stored-bytes"].as_f64().unwrap() / summary["logical-bytes"].as_f64().unwrap()
    };
    // One snapshot: every chunk is new, so stored / logical is the compression alone.
    let one = ["--groups", "1", "--snapshots", "1"];
    let random = generate(
        dir.path(),
        "random",
        &[&one[..], &["--data", "random"]].concat(),
    );
    let text = generate(
        dir.path(),
        "text",
        &[&one[..], &["--data", "compressible"]].concat(),
    );
    assert!(ratio(&random) > 1.0, "{random}");
    assert!(ratio(&text) < 0.5, "{text}");
}

#[test]
fn refused_options_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--chunk-size", "3M"][..],
        &["--shared", "150"],
        &["--kind", "x"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_gen-store"))
            .arg(dir.path().join("store1"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!dir.path().join("store1").exists());
    }
}

#[test]
fn a_password_protected_pbs_key_file_encrypts_and_content_verifies() {
    use keepsake_datastore::ChunkVerification;
    use keepsake_manifest::keyfile::{KdfKind, KeyConfig};
    use std::io::Read;

    let dir = tempfile::tempdir().unwrap();
    let key = [0x24u8; 32];
    let key_file = dir.path().join("backup.key");
    KeyConfig::encrypt(key, b"correct horse", KdfKind::Pbkdf2)
        .unwrap()
        .store(&key_file)
        .unwrap();
    let run = |password: &str| {
        Command::new(env!("CARGO_BIN_EXE_gen-store"))
            .arg(dir.path().join("secret"))
            .args(["--lock-root"])
            .arg(dir.path().join("locks"))
            .args(["--chunk-prefix-dirs", "off", "--chunk-size", "64K"])
            .args([
                "--archive-size",
                "300000",
                "--groups",
                "1",
                "--snapshots",
                "2",
            ])
            .args(["--kind", "both", "--json", "--key"])
            .arg(&key_file)
            .env("KEEPSAKE_KEY_PASSWORD", password)
            .output()
            .unwrap()
    };
    let wrong = run("wrong horse");
    assert!(!wrong.status.success());
    assert!(!dir.path().join("secret").exists(), "nothing written");
    assert!(run("correct horse").status.success());

    let config = KeyConfig::load(&key_file)
        .unwrap()
        .decrypt(Some(b"correct horse"))
        .unwrap();
    let store = open(dir.path(), "secret", Some(config));
    let report = store
        .verify(
            &VerifyScope::Store,
            &VerifyOptions::default().chunks(ChunkVerification::Content),
        )
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.content.verified > 0);
    assert_eq!(report.content.crc_only, 0);
    // The archives read back through the key.
    for s in snapshots(&store).into_values().flatten() {
        let manifest = s.load_manifest().unwrap();
        for file in manifest.files() {
            if file.filename().ends_with("idx") {
                let mut data = Vec::new();
                s.open_archive(file.filename())
                    .unwrap()
                    .read_to_end(&mut data)
                    .unwrap();
                assert_eq!(data.len() as u64, file.size());
            }
        }
    }
    // Without the key: only CRCs.
    let keyless = open(dir.path(), "secret", None);
    let report = keyless
        .verify(
            &VerifyScope::Store,
            &VerifyOptions::default().chunks(ChunkVerification::Content),
        )
        .unwrap();
    assert_eq!(report.content.verified, 0);
    assert!(report.content.crc_only > 0);
}
