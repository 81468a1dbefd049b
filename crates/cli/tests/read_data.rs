//! `verify --read-data` and `cat` through the real binary: the PBS fixture read back and verified
//! clean; a planted corruption found, set aside and recorded; an encrypted store with and without
//! its key file.

mod common;

use std::path::Path;

use common::{Store, run};
use keepsake_datastore::{DataStore, Encryption};
use keepsake_hierarchy::{Authid, BackupNamespace, BackupTime};
use keepsake_manifest::crypt::CryptConfig;
use keepsake_manifest::index::{ChunkIndex, IndexFile};
use keepsake_manifest::keyfile::{KdfKind, KeyConfig};
use sha2::{Digest, Sha256};

/// The archive as the chunk files of `store` concatenate to, decoded independently of the
/// datastore crate's reader.
fn concatenated(store: &Path, index_file: &Path, key: Option<&CryptConfig>) -> Vec<u8> {
    let index = IndexFile::from_bytes(std::fs::read(index_file).unwrap()).unwrap();
    let mut out = Vec::new();
    for chunk in index.chunks() {
        let hex = hex::encode(chunk.digest);
        let raw = std::fs::read(store.join(".chunks").join(&hex[..4]).join(&hex)).unwrap();
        out.extend(keepsake_manifest::blob::decode(&raw, key).unwrap());
    }
    out
}

#[test]
fn the_fixture_reads_back_and_verifies_clean() {
    let store = Store::fixture();
    let doc = store.run(&["--json", "verify", "--read-data"]).json();
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["content"]["verified"], 7);
    assert_eq!(doc["content"]["corrupt"], 0);

    let out = tempfile::tempdir().unwrap();
    for (snapshot, file, folder) in [
        (
            "vm/100/2024-06-05T15:06:40Z",
            "drive-scsi0.img.fidx",
            "vm/100/2024-06-05T15:06:40Z",
        ),
        (
            "ct/200/2024-06-05T16:06:40Z",
            "root.pxar.didx",
            "ct/200/2024-06-05T16:06:40Z",
        ),
    ] {
        let target = out.path().join(file);
        store
            .run(&["cat", snapshot, file, "-o", target.to_str().unwrap()])
            .ok();
        let expected = concatenated(&store.path, &store.path.join(folder).join(file), None);
        assert_eq!(
            Sha256::digest(std::fs::read(&target).unwrap()),
            Sha256::digest(&expected),
            "{file}"
        );
    }
    // A blob, decoded, to standard output.
    let log = store.run(&["cat", "vm/100/2024-06-05T15:06:40Z", "client.log.blob"]);
    assert!(!log.ok().is_empty());
    // Nothing was written to the store.
    let before = store.contents();
    store.run(&["verify", "--read-data"]).ok();
    assert_eq!(store.contents(), before);
}

/// A store with two snapshots of `vm/100` sharing every chunk of their image.
fn two_snapshots(store: &Store, key: Option<&CryptConfig>) -> Vec<u8> {
    let name = store.path.file_name().unwrap().to_str().unwrap();
    let mut builder = DataStore::builder(name, &store.path)
        .lock_root(&store.lock_root)
        .chunk_prefix_dirs(false);
    if let Some(key) = key {
        builder = builder.key(key.clone());
    }
    let ds = builder.create().unwrap();
    let disk: Vec<u8> = (0..300_000u32)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect();
    let encryption = if key.is_some() {
        Encryption::StoreKey
    } else {
        Encryption::None
    };
    let group = ds.group(&BackupNamespace::root(), &"vm/100".parse().unwrap());
    let owner: Authid = "root@pam".parse().unwrap();
    for time in [1_717_600_000, 1_717_700_000] {
        let mut backup = group
            .start_backup(&owner, BackupTime::from_epoch(time).unwrap())
            .unwrap();
        backup
            .add_fixed_archive("drive-scsi0.img.fidx", &disk, 65_536, encryption)
            .unwrap();
        backup.finish().unwrap();
    }
    disk
}

#[test]
fn a_corrupt_chunk_is_found_set_aside_and_recorded() {
    let store = Store::empty("plain");
    two_snapshots(&store, None);
    // --record alone is refused, with the reason, before anything is read or written.
    let before = store.contents();
    let err = store.run(&["verify", "--record"]).fails(2).to_owned();
    assert!(err.contains("--read-data"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(store.contents(), before);

    // Flip one byte of one chunk.
    let chunk = common::tree_contents(&store.path.join(".chunks"))
        .into_iter()
        .find_map(|(path, bytes)| bytes.map(|b| (path, b)))
        .unwrap();
    let path = store.path.join(".chunks").join(&chunk.0);
    let mut bytes = chunk.1;
    let at = bytes.len() - 1;
    bytes[at] ^= 1;
    std::fs::write(&path, bytes).unwrap();

    let run = store.run(&["--json", "verify", "--read-data", "--record"]);
    run.fails(1);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["failed"], 2, "{doc}");
    assert_eq!(doc["content"]["corrupt"], 1);
    assert_eq!(doc["content"]["set-aside"], 1);
    let bad = path.with_file_name(format!(
        "{}.0.bad",
        path.file_name().unwrap().to_str().unwrap()
    ));
    assert!(bad.is_file(), "set aside as PBS names it");
    assert!(!path.exists());
    for snapshot in ["vm/100/2024-06-05T15:06:40Z", "vm/100/2024-06-06T18:53:20Z"] {
        let show = store.run(&["--json", "show", snapshot]).json();
        assert_eq!(show["verify-state"]["state"], "failed", "{show}");
    }
    // cat fails with one line and leaves no partial file.
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("disk.raw");
    let err = store
        .run(&[
            "cat",
            "vm/100/2024-06-05T15:06:40Z",
            "drive-scsi0.img.fidx",
            "-o",
            target.to_str().unwrap(),
        ])
        .fails(3)
        .to_owned();
    assert!(err.contains("chunk"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn an_encrypted_store_needs_its_key_file() {
    let key = [0x42; 32];
    let crypt = CryptConfig::new(key);
    let store = Store::empty("secret");
    let disk = two_snapshots(&store, Some(&crypt));
    let keys = tempfile::tempdir().unwrap();
    let keyfile = keys.path().join("backup.key");
    KeyConfig::encrypt(key, b"hunter22", KdfKind::Pbkdf2)
        .unwrap()
        .store(&keyfile)
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("disk.raw");
    let cat = |password: Option<&str>, keyfile: Option<&Path>| {
        let mut cmd = store.cmd(&[]);
        if let Some(keyfile) = keyfile {
            cmd.arg("--keyfile").arg(keyfile);
        }
        if let Some(password) = password {
            cmd.env("KEEPSAKE_KEY_PASSWORD", password);
        }
        cmd.args([
            "cat",
            "vm/100/2024-06-05T15:06:40Z",
            "drive-scsi0.img.fidx",
            "-o",
        ])
        .arg(&target);
        run(&mut cmd)
    };
    cat(Some("hunter22"), Some(&keyfile)).ok();
    assert_eq!(std::fs::read(&target).unwrap(), disk);
    std::fs::remove_file(&target).unwrap();

    let err = cat(None, None).fails(7).to_owned();
    assert!(err.contains("key"), "{err}");
    let err = cat(Some("wrong password"), Some(&keyfile))
        .fails(1)
        .to_owned();
    assert!(
        err.contains("password") || err.contains("passphrase"),
        "{err}"
    );
    assert!(!target.exists());

    let verify = |password: Option<&str>, keyfile: Option<&Path>| {
        let mut cmd = store.cmd(&["--json"]);
        if let Some(keyfile) = keyfile {
            cmd.arg("--keyfile").arg(keyfile);
        }
        if let Some(password) = password {
            cmd.env("KEEPSAKE_KEY_PASSWORD", password);
        }
        cmd.args(["verify", "--read-data"]);
        run(&mut cmd)
    };
    let doc = verify(Some("hunter22"), Some(&keyfile)).json();
    assert_eq!(doc["ok"], true, "{doc}");
    assert!(doc["content"]["verified"].as_u64().unwrap() > 0);
    // Without the key only the CRCs can be checked: the run does not pass, and says why.
    let without = verify(None, None);
    let err = without.fails(1).to_owned();
    assert!(err.contains("--keyfile"), "{err}");
    let without: serde_json::Value = serde_json::from_str(&without.stdout).unwrap();
    assert_eq!(without["content"]["crc-only"], doc["content"]["verified"]);
    verify(Some("wrong password"), Some(&keyfile)).fails(1);
}
