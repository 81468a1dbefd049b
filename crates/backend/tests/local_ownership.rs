//! `LocalBackend::with_owner`: files and folders it creates get the owner and PBS's modes (files
//! 0644, folders 0755) whatever the umask; without it nothing changes. Needs root (to chown);
//! says so and passes when not root.
//!
//! One test in this binary on purpose: it sets the process's umask.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use keepsake_backend::{Backend, BackendPath, LocalBackend, SyncLevel, WriteMode};
use rustix::fs::Mode;

fn p(path: &str) -> BackendPath {
    path.parse().unwrap()
}

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

#[test]
fn created_files_and_folders_get_the_owner_and_pbs_modes() {
    if !rustix::process::geteuid().is_root() {
        let _ = writeln!(
            std::io::stderr(),
            "created_files_and_folders_get_the_owner_and_pbs_modes: skipped: not root (chown needs it)"
        );
        return;
    }
    // A umask that would narrow both modes: the backend must set them explicitly.
    let previous = rustix::process::umask(Mode::from_raw_mode(0o077));

    let dir = tempfile::tempdir().unwrap();
    let root_before = owner_and_mode(dir.path());
    let store = LocalBackend::open(dir.path(), SyncLevel::Filesystem)
        .unwrap()
        .with_owner(34, 34);
    let v = store
        .write(
            &p("ns/a/vm/100/owner"),
            b"root@pam\n",
            WriteMode::CreateOnly,
        )
        .unwrap();
    store
        .write(
            &p("ns/a/vm/100/owner"),
            b"admin@pbs\n",
            WriteMode::Update(v),
        )
        .unwrap();
    store
        .write(&p("ns/a/vm/100/notes"), b"n", WriteMode::Replace)
        .unwrap();
    store.create_dir_all(&p("ns/b/ns/c")).unwrap();
    store
        .rename(&p("ns/a/vm/100/notes"), &p("host/h1/notes"))
        .unwrap();

    for file in ["ns/a/vm/100/owner", "host/h1/notes"] {
        assert_eq!(
            owner_and_mode(&dir.path().join(file)),
            (34, 34, 0o644),
            "{file}"
        );
    }
    for folder in [
        "ns",
        "ns/a",
        "ns/a/vm",
        "ns/a/vm/100",
        "ns/b",
        "ns/b/ns",
        "ns/b/ns/c",
        "host",
        "host/h1",
    ] {
        assert_eq!(
            owner_and_mode(&dir.path().join(folder)),
            (34, 34, 0o755),
            "{folder}"
        );
    }
    assert_eq!(
        owner_and_mode(dir.path()),
        root_before,
        "what exists already is left alone"
    );

    // Without an owner nothing changes: the process's owner, the umask applies.
    let (uid, gid) = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let plain = LocalBackend::open(dir.path(), SyncLevel::None).unwrap();
    plain
        .write(&p("ct/1/owner"), b"x", WriteMode::Replace)
        .unwrap();
    assert_eq!(
        owner_and_mode(&dir.path().join("ct/1/owner")),
        (uid, gid, 0o600)
    );
    assert_eq!(owner_and_mode(&dir.path().join("ct")), (uid, gid, 0o700));

    rustix::process::umask(previous);
}
