//! `--keyfile` and `keepsake key create` through the real binary, on a datastore holding an
//! encrypted, signed backup written with the library.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{Store, keepsake};
use keepsake_datastore::{DataStore, Encryption};
use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};
use keepsake_manifest::crypt::CryptConfig;
use keepsake_manifest::keyfile::{KdfKind, KeyConfig};

const PASSWORD: &str = "hunter22";

/// A datastore with one encrypted backup (a blob and a disk image, encrypted with `crypt`, the
/// manifest signed with it, as a PBS client does).
fn encrypted_store(crypt: &CryptConfig) -> Store {
    let store = Store::empty("secret");
    let ds = DataStore::builder("secret", &store.path)
        .lock_root(&store.lock_root)
        .chunk_prefix_dirs(false)
        .key(crypt.clone())
        .create()
        .unwrap();
    let group = ds.group(
        &BackupNamespace::root(),
        &"vm/100".parse::<BackupGroup>().unwrap(),
    );
    let owner: Authid = "root@pam".parse().unwrap();
    let mut backup = group
        .start_backup(&owner, BackupTime::from_epoch(1_717_600_000).unwrap())
        .unwrap();
    backup
        .add_blob(
            "qemu-server.conf.blob",
            b"memory: 2048\n",
            Encryption::StoreKey,
        )
        .unwrap();
    let disk: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    backup
        .add_fixed_archive("drive-scsi0.img.fidx", &disk, 65_536, Encryption::StoreKey)
        .unwrap();
    backup.manifest_mut().sign(crypt).unwrap();
    backup.finish().unwrap();
    store
}

/// A key file beside the store, protected by [`PASSWORD`] with scrypt (PBS's default).
fn write_key_file(dir: &Path, name: &str, key: [u8; 32]) -> PathBuf {
    let path = dir.join(name);
    KeyConfig::encrypt(key, PASSWORD.as_bytes(), KdfKind::Scrypt)
        .unwrap()
        .with_hint("the usual")
        .unwrap()
        .store(&path)
        .unwrap();
    path
}

fn verify_with(store: &Store, keyfile: &Path, password: Option<&str>) -> common::Run {
    let mut cmd = store.cmd(&["--json", "verify"]);
    cmd.arg("--keyfile").arg(keyfile);
    if let Some(password) = password {
        cmd.env("KEEPSAKE_KEY_PASSWORD", password);
    }
    common::run(&mut cmd)
}

#[test]
fn verify_checks_signatures_with_the_key_file() {
    let key = [0x42; 32];
    let store = encrypted_store(&CryptConfig::new(key));
    let keys = tempfile::tempdir().unwrap();
    let keyfile = write_key_file(keys.path(), "backup.key", key);

    // The right password: the signature checks out.
    let summary = verify_with(&store, &keyfile, Some(PASSWORD)).json();
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["verified"], 1, "{summary}");

    // The key file's path may also come from the environment.
    let mut cmd = store.cmd(&["--json", "verify"]);
    cmd.env("KEEPSAKE_KEYFILE", &keyfile)
        .env("KEEPSAKE_KEY_PASSWORD", PASSWORD);
    assert_eq!(common::run(&mut cmd).json()["ok"], true);

    // A wrong password: one line naming the file and the hint, exit 1, nothing verified.
    let run = verify_with(&store, &keyfile, Some("hunter23"));
    let message = run.fails_json(1);
    assert!(message.contains("backup.key"), "{message}");
    assert!(message.contains("wrong password"), "{message}");
    assert!(message.contains("(hint: the usual)"), "{message}");

    // A password PBS would refuse.
    let message = verify_with(&store, &keyfile, Some("abc")).fails_json(1);
    assert!(message.contains("too short"), "{message}");

    // No password and no terminal: a usage error that says how to give one.
    let message = verify_with(&store, &keyfile, None).fails_json(2);
    assert!(message.contains("KEEPSAKE_KEY_PASSWORD"), "{message}");

    // A missing key file.
    let missing = keys.path().join("missing.key");
    let message = verify_with(&store, &missing, Some(PASSWORD)).fails_json(8);
    assert!(message.contains("missing.key"), "{message}");
    assert!(message.contains("No such file"), "{message}");

    // A damaged key file.
    let damaged = keys.path().join("damaged.key");
    let text = std::fs::read_to_string(&keyfile).unwrap();
    std::fs::write(&damaged, &text[..text.len() / 2]).unwrap();
    let message = verify_with(&store, &damaged, Some(PASSWORD)).fails_json(1);
    assert!(message.contains("not a valid key config"), "{message}");

    // A key file whose fingerprint names another key.
    let lying = keys.path().join("lying.key");
    let own = CryptConfig::new(key).fingerprint().to_string();
    let other = CryptConfig::new([1; 32]).fingerprint().to_string();
    std::fs::write(&lying, text.replace(&own, &other)).unwrap();
    let message = verify_with(&store, &lying, Some(PASSWORD)).fails_json(1);
    assert!(message.contains("wrong fingerprint"), "{message}");
}

#[test]
fn verify_with_another_key_fails_the_snapshot() {
    let store = encrypted_store(&CryptConfig::new([0x42; 32]));
    let keys = tempfile::tempdir().unwrap();
    let other = keys.path().join("other.key");
    // A key without password needs none.
    KeyConfig::new_plain([7; 32]).store(&other).unwrap();
    let mut cmd = store.cmd(&["--json", "verify"]);
    cmd.arg("--keyfile").arg(&other);
    let run = common::run(&mut cmd);
    assert_eq!(run.code, 1, "{run:#?}");
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["failed"], 1, "{summary}");
    assert!(
        summary["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("wrong key"),
        "{summary}"
    );
}

#[test]
fn key_create_writes_a_key_the_library_and_the_binary_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.key");
    let mut cmd = keepsake();
    cmd.args([
        "--json", "key", "create", "--kdf", "pbkdf2", "--hint", "pets",
    ])
    .arg(&path)
    .env("KEEPSAKE_KEY_PASSWORD", PASSWORD);
    let created = common::run(&mut cmd).json();
    assert_eq!(created["kdf"], "pbkdf2");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let config = KeyConfig::load(&path).unwrap();
    assert_eq!(config.hint(), Some("pets"));
    let crypt = config.decrypt(Some(PASSWORD.as_bytes())).unwrap();
    assert_eq!(created["fingerprint"], crypt.fingerprint().to_string());

    // A store written with that key verifies with the file.
    let store = encrypted_store(&crypt);
    assert_eq!(
        verify_with(&store, &path, Some(PASSWORD)).json()["ok"],
        true
    );

    // An existing key file is never replaced.
    let before = std::fs::read(&path).unwrap();
    let mut again = keepsake();
    again
        .args(["key", "create"])
        .arg(&path)
        .env("KEEPSAKE_KEY_PASSWORD", PASSWORD);
    let message = common::run(&mut again).fails(2).to_owned();
    assert!(message.contains("never replaced"), "{message}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // Without a password and without a terminal: refused, nothing written.
    let nopass = dir.path().join("nopass.key");
    let mut cmd = keepsake();
    cmd.args(["key", "create"]).arg(&nopass);
    let message = common::run(&mut cmd).fails(2).to_owned();
    assert!(message.contains("KEEPSAKE_KEY_PASSWORD"), "{message}");
    assert!(!nopass.exists());

    // `--kdf none`: a plain key, read without a password.
    let plain = dir.path().join("plain.key");
    let mut cmd = keepsake();
    cmd.args(["key", "create", "--kdf", "none"]).arg(&plain);
    let line = common::run(&mut cmd).ok().to_owned();
    assert!(line.starts_with("created key file"), "{line}");
    let config = KeyConfig::load(&plain).unwrap();
    assert!(!config.needs_passphrase());
    config.decrypt(None).unwrap();
}
