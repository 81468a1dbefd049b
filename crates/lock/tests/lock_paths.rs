//! Lock paths, byte for byte as PBS derives them (spec §2.3, §2.4 and §2.6), table-driven.

use std::path::Path;

use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace, MANIFEST_LOCK_NAME};
use keepsake_lock::{DirLocker, FileLocker, LockTarget, relative_lock_path};
use sha2::{Digest, Sha256};

/// `input` is `[<namespace>] <relative path>` or just `<relative path>` (root namespace), as raw
/// bytes; `expected` the lock path relative to `<lock root>/<store>/`.
///
/// Checks the pure derivation, then — when the input names a valid group, snapshot or manifest —
/// the same path through [`FileLocker::lock_path`], and for hashed names the shape PBS promises.
#[track_caller]
fn check(input: &[u8], expected: &str) {
    let (ns, raw): (&str, &[u8]) = match input.strip_prefix(b"[") {
        Some(rest) => {
            let end = rest.iter().position(|&b| b == b']').expect("closing ]");
            (
                std::str::from_utf8(&rest[..end]).expect("utf-8 namespace"),
                &rest[end + 2..],
            )
        }
        None => ("", input),
    };
    let components: Vec<&str> = ns.split('/').filter(|c| !c.is_empty()).collect();
    assert_eq!(
        relative_lock_path(&components, raw),
        expected,
        "input {:?}",
        String::from_utf8_lossy(input)
    );

    if let Some(name) = expected.split_once("hashed/").map(|(_, name)| name) {
        assert_eq!(name.len(), 228, "hashed name length");
        assert!(
            name.ends_with(&format!("-{}", hex::encode(Sha256::digest(raw)))),
            "hash of the raw path"
        );
    } else {
        assert!(expected.rsplit('/').next().unwrap().len() < 255);
    }

    let Ok(raw) = std::str::from_utf8(raw) else {
        return;
    };
    let Ok(ns) = ns.parse::<BackupNamespace>() else {
        return;
    };
    let locker = FileLocker::new("/lock-root", "store1").unwrap();
    let full = |target: LockTarget<'_>| {
        assert_eq!(target.relative_path(), raw);
        assert_eq!(
            locker.lock_path(&target),
            Path::new("/lock-root/store1").join(expected),
            "{target}"
        );
    };
    if let Some(snapshot) = raw.strip_suffix(&format!("/{MANIFEST_LOCK_NAME}")) {
        if let Ok(dir) = snapshot.parse::<BackupDir>() {
            full(LockTarget::manifest(&ns, &dir));
        }
    } else if let Ok(dir) = raw.parse::<BackupDir>() {
        full(LockTarget::snapshot(&ns, &dir));
    } else if let Ok(group) = raw.parse::<BackupGroup>() {
        full(LockTarget::group(&ns, &group));
    }
}

/// PBS's hashed name from an escaped name (written out by the test) and the raw path.
fn hashed(escaped: &str, raw: &[u8]) -> String {
    assert!(escaped.len() >= 255, "not long enough to be hashed");
    let sha = hex::encode(Sha256::digest(raw));
    format!(
        "hashed/{}...{}-{sha}",
        &escaped[..80],
        &escaped[escaped.len() - 80..]
    )
}

#[test]
fn spec_examples() {
    check(b"vm/100", "vm-100");
    check(
        b"vm/100/2022-05-02T08:11:33Z",
        r"vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z",
    );
    check(
        b"vm/100/2022-05-02T08:11:33Z/.index.json.lck",
        r"vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z-.index.json.lck",
    );
    check(
        b"[a/b] host/my-host.example",
        r"a:b/host-my\x2dhost.example",
    );

    let raw = format!("host/{}", "x".repeat(300));
    let expected = format!(
        "ns1/hashed/host-{}...{}-{}",
        "x".repeat(75),
        "x".repeat(80),
        "e66d50a031c90b67841b94137a0f5dd82b6e3acad5f3ae1e5dbd0e691975c1fd"
    );
    check(format!("[ns1] {raw}").as_bytes(), &expected);
}

#[test]
fn long_ids_take_the_hashed_path_from_255_escaped_bytes_on() {
    // `vm-` + 251 = 254 bytes: still a plain name.
    let id = "a".repeat(251);
    check(format!("vm/{id}").as_bytes(), &format!("vm-{id}"));
    // 255 bytes: hashed.
    let id = "a".repeat(252);
    let raw = format!("vm/{id}");
    check(raw.as_bytes(), &hashed(&format!("vm-{id}"), raw.as_bytes()));

    // Escapes count with their 4 bytes: 102 bytes of `a-` pairs are 255 bytes escaped, 100 are 250.
    let id = "a-".repeat(50);
    check(
        format!("ct/{id}").as_bytes(),
        &format!("ct-{}", r"a\x2d".repeat(50)),
    );
    let id = "a-".repeat(51);
    let raw = format!("ct/{id}");
    check(
        raw.as_bytes(),
        &hashed(&format!("ct-{}", r"a\x2d".repeat(51)), raw.as_bytes()),
    );

    // A snapshot and its manifest of a long id, 7 namespaces deep: the hashed folder is inside the
    // namespace folder.
    let id = format!("{}z", "host.name_".repeat(22));
    let time = r"2024\x2d06\x2d05T15\x3a06\x3a40Z";
    let raw = format!("host/{id}/2024-06-05T15:06:40Z");
    let escaped = format!("host-{id}-{time}");
    check(
        format!("[a/b/c/d/e/f/g] {raw}").as_bytes(),
        &format!("a:b:c:d:e:f:g/{}", hashed(&escaped, raw.as_bytes())),
    );
    let raw = format!("{raw}/.index.json.lck");
    let escaped = format!("{escaped}-.index.json.lck");
    check(
        format!("[a/b/c/d/e/f/g] {raw}").as_bytes(),
        &format!("a:b:c:d:e:f:g/{}", hashed(&escaped, raw.as_bytes())),
    );
}

#[test]
fn namespaces_are_joined_with_colons_unescaped() {
    check(b"[a/b/c/d/e/f/g] vm/100", "a:b:c:d:e:f:g/vm-100");
    check(
        b"[prod/site-a] ct/200/2024-06-05T20:06:40Z",
        r"prod:site-a/ct-200-2024\x2d06\x2d05T20\x3a06\x3a40Z",
    );
    check(b"[n.s_1] host/h", "n.s_1/host-h");
}

#[test]
fn id_characters() {
    check(b"ct/my_ct.v2-x", r"ct-my_ct.v2\x2dx");
    check(b"host/-", r"host-\x2d");
    check(b"host/_.-_", r"host-_.\x2d_");
    check(
        b"vm/0123456789/2000-01-01T00:00:00Z",
        r"vm-0123456789-2000\x2d01\x2d01T00\x3a00\x3a00Z",
    );
}

#[test]
fn leading_dot_rule() {
    check(b".index.json.lck", r"\x2eindex.json.lck");
    check(b"/.x", r"\x2ex");
    check(b"//./.", r"\x2e-.");
    check(b"vm/100/.index.json.lck", "vm-100-.index.json.lck");
    check(b"vm/.", "vm-.");
}

#[test]
fn slashes_and_empty_paths() {
    check(b"", "-");
    check(b"/", "-");
    check(b"///vm//100/", "vm--100-");
}

#[test]
fn non_ascii_bytes_are_escaped_one_by_one() {
    check("host/é".as_bytes(), r"host-\xc3\xa9");
    check(b"host/\xff\x00\x7f", r"host-\xff\x00\x7f");
    check(b"a b:c\\d", r"a\x20b\x3ac\x5cd");
    // Escaping expands non-ASCII four-fold, so 63 two-byte characters reach the hashed form.
    let raw = format!("host/{}", "é".repeat(63));
    check(
        raw.as_bytes(),
        &hashed(&format!("host-{}", r"\xc3\xa9".repeat(63)), raw.as_bytes()),
    );
}

/// PBS 3: directory locks inside the datastore, manifest lock files under the lock root with the
/// namespace's `ns/` prefixes and a folder per snapshot.
#[test]
fn pbs3_paths() {
    let locker = DirLocker::new("/srv/store1", "/run/proxmox-backup/locks", "store1").unwrap();
    let check3 = |ns: &str, object: &str, expected: &str| {
        let ns: BackupNamespace = ns.parse().unwrap();
        let path = if let Some(snapshot) = object.strip_prefix("manifest ") {
            locker.lock_path(&LockTarget::manifest(&ns, &snapshot.parse().unwrap()))
        } else if let Ok(dir) = object.parse::<BackupDir>() {
            locker.lock_path(&LockTarget::snapshot(&ns, &dir))
        } else {
            locker.lock_path(&LockTarget::group(&ns, &object.parse().unwrap()))
        };
        assert_eq!(path, Path::new(expected), "{ns} {object}");
    };
    check3("", "vm/100", "/srv/store1/vm/100");
    check3("a/b", "ct/2", "/srv/store1/ns/a/ns/b/ct/2");
    check3(
        "a",
        "vm/100/2022-05-02T08:11:33Z",
        "/srv/store1/ns/a/vm/100/2022-05-02T08:11:33Z",
    );
    check3(
        "",
        "manifest vm/100/2022-05-02T08:11:33Z",
        "/run/proxmox-backup/locks/store1/vm/100/2022-05-02T08:11:33Z/2022-05-02T08:11:33Z.index.json.lck",
    );
    check3(
        "a/b",
        "manifest host/h-1/2024-06-05T15:06:40Z",
        "/run/proxmox-backup/locks/store1/ns/a/ns/b/host/h-1/2024-06-05T15:06:40Z/2024-06-05T15:06:40Z.index.json.lck",
    );
}
