//! PBS key files through the public API: round trips, files on disk, refusals, hostile input.

use std::os::unix::fs::PermissionsExt;

use keepsake_manifest::Error;
use keepsake_manifest::crypt::{CryptConfig, Fingerprint};
use keepsake_manifest::keyfile::{self, Kdf, KdfKind, KeyConfig};
use proptest::prelude::*;

const PASSPHRASE: &[u8] = b"correct horse battery staple";

/// Encrypted with PBKDF2 (1000 rounds, salt 01…, IV 02…, passphrase "secret") by Python's hashlib
/// and pyca/cryptography: `data` of a 31-byte key, of a 33-byte key, and of an empty one.
const DATA_31: &str =
    "AgICAgICAgICAgICAgICAuG1QoLpgu3bIppHYj5XJJZA9vOrRfRosO7GseisDEslX1P/xwqQZ5OMp/IvnAW4";
const DATA_33: &str =
    "AgICAgICAgICAgICAgICAjE19aK6evqm/HvV4tv6X4NA9vOrRfRosO7GseisDEslX1P/xwqQZ5OMp/IvnAW4aJM=";
const DATA_0: &str = "AgICAgICAgICAgICAgICApU57igJYDEjBlRNHrrzz7U=";
const SALT_01: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

fn pbkdf2_file(data: &str) -> String {
    format!(
        r#"{{"kdf":{{"PBKDF2":{{"iter":1000,"salt":"{SALT_01}"}}}},"created":"2024-01-01T00:00:00Z","modified":"2024-01-01T00:00:00Z","data":"{data}"}}"#
    )
}

fn key() -> [u8; 32] {
    std::array::from_fn(|i| (i * 7) as u8)
}

#[test]
fn round_trips_for_every_kdf() {
    let fingerprint = CryptConfig::new(key()).fingerprint();
    let configs = [
        (KeyConfig::new_plain(key()), None),
        (
            KeyConfig::encrypt(key(), PASSPHRASE, KdfKind::Scrypt).unwrap(),
            Some(KdfKind::Scrypt),
        ),
        (
            KeyConfig::encrypt(key(), PASSPHRASE, KdfKind::Pbkdf2).unwrap(),
            Some(KdfKind::Pbkdf2),
        ),
    ];
    for (config, kind) in configs {
        assert_eq!(config.kdf().map(Kdf::kind), kind);
        assert_eq!(config.needs_passphrase(), kind.is_some());
        assert_eq!(config.fingerprint(), Some(fingerprint));
        let text = config.to_json();
        let read = KeyConfig::from_json(text.as_bytes()).unwrap();
        assert_eq!(read, config);
        assert_eq!(read.to_json(), text, "text survives a read and a write");
        // Serde goes through the same form.
        assert_eq!(serde_json::to_string(&config).unwrap(), text);
        assert_eq!(serde_json::from_str::<KeyConfig>(&text).unwrap(), config);
        let crypt = read.decrypt(Some(PASSPHRASE)).unwrap();
        assert_eq!(crypt.fingerprint(), fingerprint);
        if let Some(Kdf::Scrypt { n, r, p, salt }) = config.kdf() {
            assert_eq!((*n, *r, *p, salt.len()), (65_536, 8, 1, 32));
        }
        if let Some(Kdf::Pbkdf2 { iter, salt }) = config.kdf() {
            assert_eq!((*iter, salt.len()), (65_535, 32));
        }
    }
}

#[test]
fn new_files_get_fresh_salts_and_ivs() {
    let a = KeyConfig::encrypt(key(), PASSPHRASE, KdfKind::Pbkdf2).unwrap();
    let b = KeyConfig::encrypt(key(), PASSPHRASE, KdfKind::Pbkdf2).unwrap();
    assert_ne!(a.kdf(), b.kdf());
    assert_ne!(a.to_json(), b.to_json());
    assert_ne!(
        keyfile::generate_key().unwrap(),
        keyfile::generate_key().unwrap()
    );
}

#[test]
fn written_json_is_compact_in_pbs_field_order() {
    let config = KeyConfig::encrypt(key(), PASSPHRASE, KdfKind::Scrypt)
        .unwrap()
        .with_hint("the usual")
        .unwrap();
    let text = config.to_json();
    assert!(!text.replace("the usual", "").contains(char::is_whitespace));
    assert!(!text.ends_with('\n'));
    let order: Vec<usize> = [
        r#"{"kdf":{"Scrypt":{"n":65536,"r":8,"p":1,"salt":""#,
        r#""}},"created":""#,
        r#"","modified":""#,
        r#"","data":""#,
        r#"","fingerprint":""#,
        r#"","hint":"the usual"}"#,
    ]
    .iter()
    .map(|part| {
        text.find(part)
            .unwrap_or_else(|| panic!("{part} in {text}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert!(text.starts_with(r#"{"kdf""#) && text.ends_with(r#""hint":"the usual"}"#));
    // No fingerprint, no hint: the fields are left out, `kdf` is written as null.
    let plain = KeyConfig::from_json(
        br#"{"created":"2020-06-26T13:56:05+00:00","modified":"2020-06-26T13:56:05Z","data":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#,
    )
    .unwrap();
    assert_eq!(
        plain.to_json(),
        r#"{"kdf":null,"created":"2020-06-26T13:56:05+00:00","modified":"2020-06-26T13:56:05+00:00","data":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#
    );
}

#[test]
fn reading_ignores_unknown_fields_and_null_fingerprints() {
    let text = br#"{"kdf":null,"created":"2020-06-26T13:56:05Z","modified":"2020-06-26T13:56:05Z","data":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","fingerprint":null,"hint":null,"future":{"x":[1,2]}}"#;
    let config = KeyConfig::from_json(text).unwrap();
    assert_eq!(config.fingerprint(), None);
    assert_eq!(config.hint(), None);
    let crypt = config.decrypt(None).unwrap();
    // A key without password ignores a passphrase.
    assert_eq!(
        config.decrypt(Some(b"anything")).unwrap().fingerprint(),
        crypt.fingerprint()
    );
    // Unknown fields inside the KDF too; salts without padding are read.
    let pbkdf2 = format!(
        r#"{{"kdf":{{"PBKDF2":{{"iter":1000,"salt":"{}","extra":1}}}},"created":"2024-01-01T00:00:00Z","modified":"2024-01-01T00:00:00Z","data":"{DATA_31}"}}"#,
        SALT_01.trim_end_matches('=')
    );
    let config = KeyConfig::from_json(pbkdf2.as_bytes()).unwrap();
    assert_eq!(
        config.kdf(),
        Some(&Kdf::Pbkdf2 {
            iter: 1000,
            salt: vec![1; 32]
        })
    );
}

#[test]
fn wrong_passphrases_carry_the_hint() {
    let config = KeyConfig::encrypt(key(), PASSPHRASE, KdfKind::Pbkdf2)
        .unwrap()
        .with_hint("horses")
        .unwrap();
    let err = config
        .decrypt(Some(b"correct horse battery stable"))
        .unwrap_err();
    assert!(matches!(&err, Error::WrongPassphrase { hint: Some(h) } if h == "horses"));
    assert_eq!(
        err.to_string(),
        "unable to decrypt key (wrong password?) (hint: horses)"
    );
    assert!(!err.is_corrupt());
    let bare = KeyConfig::encrypt(key(), PASSPHRASE, KdfKind::Pbkdf2).unwrap();
    assert_eq!(
        bare.decrypt(Some(b"12345")).unwrap_err().to_string(),
        "unable to decrypt key (wrong password?)"
    );
    assert!(matches!(
        config.decrypt(None),
        Err(Error::PassphraseRequired { hint: Some(_) })
    ));
    for short in [&b""[..], b"a", b"1234"] {
        assert!(matches!(
            config.decrypt(Some(short)),
            Err(Error::PassphraseTooShort { min: 5, .. })
        ));
        assert!(matches!(
            KeyConfig::encrypt(key(), short, KdfKind::Pbkdf2),
            Err(Error::PassphraseTooShort { .. })
        ));
    }
}

#[test]
fn fingerprint_mismatches_are_refused() {
    let other = CryptConfig::new([9; 32]).fingerprint();
    for config in [
        KeyConfig::new_plain(key()),
        KeyConfig::encrypt(key(), PASSPHRASE, KdfKind::Pbkdf2).unwrap(),
    ] {
        let own = config.fingerprint().unwrap();
        let text = config
            .to_json()
            .replace(&own.to_string(), &other.to_string());
        let changed = KeyConfig::from_json(text.as_bytes()).unwrap();
        let err = changed.decrypt(Some(PASSPHRASE)).unwrap_err();
        assert!(
            matches!(err, Error::KeyFingerprintMismatch { stored, computed } if stored == other && computed == own),
            "{err}"
        );
        assert!(err.is_corrupt());
        // Without `:` separators it is the same fingerprint.
        let bare = config
            .to_json()
            .replace(&own.to_string(), &own.to_string().replace(':', ""));
        assert!(
            KeyConfig::from_json(bare.as_bytes())
                .unwrap()
                .decrypt(Some(PASSPHRASE))
                .is_ok()
        );
    }
    let text = KeyConfig::new_plain(key())
        .to_json()
        .replace(r#""fingerprint":"0"#, r#""fingerprint":"x0"#)
        .replace(r#""fingerprint":""#, r#""fingerprint":"zz"#);
    assert!(matches!(
        KeyConfig::from_json(text.as_bytes()),
        Err(Error::InvalidFingerprint { .. })
    ));
}

#[test]
fn keys_of_the_wrong_length_are_errors() {
    let plain = |data: &str| {
        format!(
            r#"{{"kdf":null,"created":"2024-01-01T00:00:00Z","modified":"2024-01-01T00:00:00Z","data":"{data}"}}"#
        )
    };
    for (text, len) in [
        (plain("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg=="), 31),
        (plain("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g"), 33),
        (plain(""), 0),
        (pbkdf2_file(DATA_31), 31),
        (pbkdf2_file(DATA_33), 33),
    ] {
        let config = KeyConfig::from_json(text.as_bytes()).unwrap();
        let err = config.decrypt(Some(b"secret")).unwrap_err();
        assert!(
            matches!(err, Error::KeyLength { len: l } if l == len),
            "{text}: {err}"
        );
    }
    let empty = KeyConfig::from_json(pbkdf2_file(DATA_0).as_bytes()).unwrap();
    assert!(matches!(
        empty.decrypt(Some(b"secret")),
        Err(Error::KeyDataTooShort { len: 32, min: 33 })
    ));
}

#[test]
fn corrupt_files_are_typed_errors() {
    let good = r#"{"kdf":null,"created":"2020-06-26T13:56:05+00:00","modified":"2020-06-26T13:56:05+00:00","data":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#;
    assert!(KeyConfig::from_json(good.as_bytes()).is_ok());
    type Expected = fn(&Error) -> bool;
    let cases: Vec<(String, Expected)> = vec![
        ("".into(), |e| matches!(e, Error::KeyFileJson { .. })),
        ("not json".into(), |e| {
            matches!(e, Error::KeyFileJson { .. })
        }),
        ("[]".into(), |e| matches!(e, Error::KeyFileJson { .. })),
        (good.replace(r#","data":"#, r#","dada":"#), |e| {
            matches!(e, Error::KeyFileJson { .. })
        }),
        (
            good.replace(r#""kdf":null"#, r#""kdf":{"Argon2":{}}"#),
            |e| matches!(e, Error::KeyFileJson { .. }),
        ),
        (
            good.replace(
                r#""kdf":null"#,
                r#""kdf":{"scrypt":{"n":2,"r":1,"p":1,"salt":""}}"#,
            ),
            |e| matches!(e, Error::KeyFileJson { .. }),
        ),
        (
            good.replace(r#""kdf":null"#, r#""kdf":{"PBKDF2":{"iter":-1,"salt":""}}"#),
            |e| matches!(e, Error::KeyFileJson { .. }),
        ),
        (good.replace(r#""data":""#, r#""data":"!"#), |e| {
            matches!(e, Error::KeyFileBase64 { field: "data" })
        }),
        (
            good.replace(
                r#""kdf":null"#,
                r#""kdf":{"PBKDF2":{"iter":1,"salt":"***"}}"#,
            ),
            |e| matches!(e, Error::KeyFileBase64 { field: "kdf.salt" }),
        ),
        (good.replace("+00:00\",\"modified", "\",\"modified"), |e| {
            matches!(
                e,
                Error::KeyFileTime {
                    field: "created",
                    ..
                }
            )
        }),
        (
            good.replace(r#""modified":"2020-06-26"#, r#""modified":"yesterday"#),
            |e| {
                matches!(
                    e,
                    Error::KeyFileTime {
                        field: "modified",
                        ..
                    }
                )
            },
        ),
    ];
    for (text, expected) in cases {
        let err = KeyConfig::from_json(text.as_bytes()).unwrap_err();
        assert!(expected(&err), "{text}: {err:?}");
        assert!(
            err.is_corrupt() || matches!(err, Error::InvalidFingerprint { .. }),
            "{err:?}"
        );
    }
}

#[test]
fn hostile_kdf_parameters_are_refused_before_deriving() {
    for kdf in [
        r#"{"Scrypt":{"n":4294967296,"r":8,"p":1,"salt":""}}"#,
        r#"{"Scrypt":{"n":1048576,"r":1024,"p":1,"salt":""}}"#,
        r#"{"Scrypt":{"n":65536,"r":8,"p":4294967295,"salt":""}}"#,
        r#"{"Scrypt":{"n":65537,"r":8,"p":1,"salt":""}}"#,
        r#"{"Scrypt":{"n":0,"r":0,"p":0,"salt":""}}"#,
        r#"{"PBKDF2":{"iter":18446744073709551615,"salt":""}}"#,
        r#"{"PBKDF2":{"iter":0,"salt":""}}"#,
    ] {
        let text = pbkdf2_file(DATA_31).replace(
            &format!(r#"{{"PBKDF2":{{"iter":1000,"salt":"{SALT_01}"}}}}"#),
            kdf,
        );
        let config = KeyConfig::from_json(text.as_bytes()).unwrap();
        assert!(
            matches!(
                config.decrypt(Some(b"secret")),
                Err(Error::KdfParams { .. })
            ),
            "{kdf}"
        );
    }
}

#[test]
fn hints_are_checked() {
    let config = KeyConfig::new_plain(key());
    for bad in ["", "two\nlines", &"x".repeat(65)] {
        assert!(matches!(
            config.clone().with_hint(bad),
            Err(Error::InvalidHint { .. })
        ));
    }
    let long = "é".repeat(64);
    assert_eq!(config.with_hint(&long).unwrap().hint(), Some(long.as_str()));
}

#[test]
fn stored_files_are_private_atomic_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.json");
    let config = KeyConfig::encrypt(key(), PASSPHRASE, KdfKind::Pbkdf2).unwrap();
    config.store(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), config.to_json());
    assert_eq!(KeyConfig::load(&path).unwrap(), config);

    let other = KeyConfig::new_plain([1; 32]);
    let err = other.store(&path).unwrap_err();
    assert!(
        matches!(&err, Error::KeyFileIo { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{err:?}"
    );
    assert_eq!(KeyConfig::load(&path).unwrap(), config, "the key is kept");
    other.store_replacing(&path).unwrap();
    assert_eq!(KeyConfig::load(&path).unwrap(), other);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["key.json"]);

    let missing = KeyConfig::load(&dir.path().join("missing.json")).unwrap_err();
    assert!(
        matches!(&missing, Error::KeyFileIo { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
    assert!(missing.to_string().contains("missing.json"));
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, vec![b' '; 70_000]).unwrap();
    assert!(matches!(
        KeyConfig::load(&huge),
        Err(Error::KeyFileJson { .. })
    ));
    assert!(matches!(
        other.store(&dir.path().join("no/such/folder/key.json")),
        Err(Error::KeyFileIo { .. })
    ));
}

#[test]
fn the_fingerprint_is_the_manifests() {
    // The fingerprint a key file names is the one manifests carry (`key-fingerprint`).
    let config = KeyConfig::new_plain(key());
    let text = config.to_json();
    let named: Fingerprint =
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["fingerprint"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    assert_eq!(named, CryptConfig::new(key()).fingerprint());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any bytes: an error or a key config, never a panic.
    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(config) = KeyConfig::from_json(&bytes) {
            let _ = config.decrypt(Some(b"secret"));
        }
    }

    /// Well-formed JSON with hostile values: typed errors, never a panic, never a huge derivation.
    #[test]
    fn hostile_fields_never_panic(
        kind in 0u8..3,
        n in prop_oneof![Just(0u64), Just(1), Just(2), Just(1024), any::<u64>()],
        r in prop_oneof![Just(0u64), Just(1), any::<u64>()],
        p in prop_oneof![Just(0u64), Just(1), any::<u64>()],
        iter in prop_oneof![Just(0u64), Just(1), Just(100), any::<u64>()],
        salt in proptest::collection::vec(any::<u8>(), 0..40),
        data in proptest::collection::vec(any::<u8>(), 0..80),
        fingerprint in prop_oneof![Just(None), Just(Some(String::new())), "[0-9a-f:]{0,100}".prop_map(Some)],
        time in prop_oneof![Just("2024-01-01T00:00:00Z".to_owned()), "[0-9T:+Z-]{0,30}"],
        passphrase in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
    ) {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        // Costly but valid parameters are kept small, so that the test stays fast.
        let kdf = match kind {
            0 => serde_json::Value::Null,
            1 => serde_json::json!({"Scrypt": {"n": if n > 1024 && n.is_power_of_two() { 1024 } else { n }, "r": r, "p": p, "salt": b64(&salt)}}),
            _ => serde_json::json!({"PBKDF2": {"iter": if iter > u64::MAX / 2 { iter } else { iter % 2000 }, "salt": b64(&salt)}}),
        };
        let doc = serde_json::json!({
            "kdf": kdf,
            "created": time,
            "modified": "2024-01-01T00:00:00+01:00",
            "data": b64(&data),
            "fingerprint": fingerprint,
        });
        if let Ok(config) = KeyConfig::from_json(doc.to_string().as_bytes()) {
            let _ = config.decrypt(passphrase.as_deref());
        }
    }
}
