//! `LockScheme::Both` ([`DualSchemeLocker`]) against a "PBS 3" and a "PBS 4" server on the same
//! host, each played by a plain open + flock of the path that server uses (spec §2.1, §2.2, §2.6).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keepsake_hierarchy::{BackupDir, BackupNamespace};
use keepsake_lock::{DualSchemeLocker, Error, LockMode, LockScheme, LockTarget, Locker};
use rustix::fs::FlockOperation;

/// A datastore with one snapshot in namespace `a`, and the locker of both schemes on it.
struct Host {
    scratch: tempfile::TempDir,
    locker: DualSchemeLocker,
    ns: BackupNamespace,
    snapshot: BackupDir,
}

impl Host {
    fn new() -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let ns: BackupNamespace = "a".parse().unwrap();
        let snapshot: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse().unwrap();
        std::fs::create_dir_all(scratch.path().join("ds").join(snapshot.relative_path(&ns)))
            .unwrap();
        let locker = DualSchemeLocker::new(
            scratch.path().join("ds"),
            scratch.path().join("locks"),
            "ds1",
        )
        .unwrap();
        Self {
            scratch,
            locker,
            ns,
            snapshot,
        }
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.scratch
            .path()
            .join("ds/ns/a/vm/100/2024-06-05T15:06:40Z")
    }

    /// PBS 4's lock file of the snapshot, written out from the spec.
    fn pbs4_snapshot_file(&self) -> PathBuf {
        self.scratch
            .path()
            .join(r"locks/ds1/a/vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z")
    }

    /// PBS 3's manifest lock file of the snapshot, written out from the spec.
    fn pbs3_manifest_file(&self) -> PathBuf {
        self.scratch
            .path()
            .join("locks/ds1/ns/a/vm/100/2024-06-05T15:06:40Z/2024-06-05T15:06:40Z.index.json.lck")
    }

    fn pbs4_manifest_file(&self) -> PathBuf {
        self.scratch
            .path()
            .join(r"locks/ds1/a/vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z-.index.json.lck")
    }
}

fn flock(file: &File, mode: LockMode) -> io::Result<()> {
    let op = match mode {
        LockMode::Shared => FlockOperation::NonBlockingLockShared,
        LockMode::Exclusive => FlockOperation::NonBlockingLockExclusive,
    };
    Ok(rustix::fs::flock(file.as_fd(), op)?)
}

/// A lock file opened (and created) as PBS does, then flocked.
fn pbs_lock_file(path: &Path, mode: LockMode) -> File {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = File::options()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    flock(&file, mode).unwrap();
    file
}

/// A directory flocked as PBS 3 does (`O_RDONLY`, `flock`).
fn pbs3_lock_dir(path: &Path, mode: LockMode) -> File {
    let dir = File::open(path).unwrap();
    flock(&dir, mode).unwrap();
    dir
}

#[track_caller]
fn assert_free(path: &Path) {
    let file = File::options().read(true).append(true).open(path).unwrap();
    flock(&file, LockMode::Exclusive)
        .unwrap_or_else(|e| panic!("{path:?} still held after a failed lock: {e}"));
}

#[track_caller]
fn assert_busy_on(err: &Error, expected: &Path) {
    assert!(
        matches!(err, Error::WouldBlock { path, .. } if path == expected),
        "expected busy on {expected:?}, got {err:?}"
    );
    assert!(
        err.holders().iter().any(|h| h.pid == std::process::id()),
        "{err}"
    );
}

#[test]
fn a_pbs3_flock_on_the_snapshot_folder_makes_both_busy() {
    let host = Host::new();
    let target = LockTarget::snapshot(&host.ns, &host.snapshot);
    let pbs3 = pbs3_lock_dir(&host.snapshot_dir(), LockMode::Exclusive);
    for mode in [LockMode::Shared, LockMode::Exclusive] {
        let err = host.locker.lock(&target, mode, Duration::ZERO).unwrap_err();
        assert_busy_on(&err, &host.snapshot_dir());
        // The PBS 4 part taken first was let go again.
        assert_free(&host.pbs4_snapshot_file());
    }
    drop(pbs3);

    // A PBS 3 reader: keepsake may read too, not destroy.
    let pbs3 = pbs3_lock_dir(&host.snapshot_dir(), LockMode::Shared);
    drop(host.locker.lock_shared(&target, Duration::ZERO).unwrap());
    let err = host
        .locker
        .lock_exclusive(&target, Duration::ZERO)
        .unwrap_err();
    assert_busy_on(&err, &host.snapshot_dir());
    drop(pbs3);
    drop(host.locker.lock_exclusive(&target, Duration::ZERO).unwrap());
}

#[test]
fn a_held_pbs4_lock_file_makes_both_busy() {
    let host = Host::new();
    let target = LockTarget::snapshot(&host.ns, &host.snapshot);
    let pbs4 = pbs_lock_file(&host.pbs4_snapshot_file(), LockMode::Exclusive);
    let err = host
        .locker
        .lock_shared(&target, Duration::ZERO)
        .unwrap_err();
    assert_busy_on(&err, &host.pbs4_snapshot_file());
    // The PBS 3 part was never reached: the folder is free.
    drop(pbs3_lock_dir(&host.snapshot_dir(), LockMode::Exclusive));
    drop(pbs4);
    drop(host.locker.lock_exclusive(&target, Duration::ZERO).unwrap());
}

#[test]
fn manifests_are_locked_at_both_paths() {
    let host = Host::new();
    let target = LockTarget::manifest(&host.ns, &host.snapshot);
    assert_eq!(
        host.locker.lock_paths(&target),
        [host.pbs4_manifest_file(), host.pbs3_manifest_file()]
    );

    // A PBS 3 server updating the manifest.
    let pbs3 = pbs_lock_file(&host.pbs3_manifest_file(), LockMode::Exclusive);
    let err = host
        .locker
        .lock_exclusive(&target, Duration::ZERO)
        .unwrap_err();
    assert_busy_on(&err, &host.pbs3_manifest_file());
    assert_free(&host.pbs4_manifest_file());
    drop(pbs3);

    // keepsake holds it: neither server gets it.
    let guard = host.locker.lock_exclusive(&target, Duration::ZERO).unwrap();
    for path in [host.pbs4_manifest_file(), host.pbs3_manifest_file()] {
        let file = File::options().read(true).append(true).open(&path).unwrap();
        assert_eq!(
            flock(&file, LockMode::Shared).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "{path:?}"
        );
    }
    // The snapshot is gone: both lock files go, the folders stay.
    guard.remove().unwrap();
    assert!(!host.pbs4_manifest_file().exists());
    assert!(!host.pbs3_manifest_file().exists());
    assert!(host.pbs3_manifest_file().parent().unwrap().is_dir());
}

#[test]
fn keepsake_holding_both_excludes_both_servers() {
    let host = Host::new();
    let target = LockTarget::snapshot(&host.ns, &host.snapshot);
    let guard = host.locker.lock_exclusive(&target, Duration::ZERO).unwrap();
    assert_eq!(guard.resource(), host.pbs4_snapshot_file());
    let dir = File::open(host.snapshot_dir()).unwrap();
    assert_eq!(
        flock(&dir, LockMode::Shared).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    let file = File::options()
        .read(true)
        .append(true)
        .open(host.pbs4_snapshot_file())
        .unwrap();
    assert_eq!(
        flock(&file, LockMode::Shared).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    // Removal removes the lock file, never the snapshot folder.
    guard.remove().unwrap();
    assert!(!host.pbs4_snapshot_file().exists());
    assert!(host.snapshot_dir().is_dir());
    flock(&dir, LockMode::Exclusive).unwrap();
}

#[test]
fn the_second_part_waits_within_the_same_timeout() {
    let host = Host::new();
    let target = LockTarget::snapshot(&host.ns, &host.snapshot);
    let _pbs3 = pbs3_lock_dir(&host.snapshot_dir(), LockMode::Exclusive);
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let err = host
        .locker
        .lock(&target, LockMode::Shared, timeout)
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, Error::Timeout { path, timeout: t, .. } if *path == host.snapshot_dir() && *t == timeout),
        "{err:?}"
    );
    assert!(elapsed >= timeout && elapsed < timeout * 4, "{elapsed:?}");
    assert_free(&host.pbs4_snapshot_file());
}

#[test]
fn a_missing_folder_has_no_pbs3_lock_but_a_missing_datastore_is_an_error() {
    let host = Host::new();
    let root = BackupNamespace::root();
    let new_snapshot: BackupDir = "ct/7/2030-01-01T00:00:00Z".parse().unwrap();
    for target in [
        LockTarget::snapshot(&root, &new_snapshot),
        LockTarget::group(&root, new_snapshot.group()),
    ] {
        let guard = host.locker.lock_exclusive(&target, Duration::ZERO).unwrap();
        assert!(guard.resource().is_file());
        assert!(
            host.locker
                .lock_shared(&target, Duration::ZERO)
                .unwrap_err()
                .is_busy()
        );
        guard.remove().unwrap();
    }
    // Nothing was created in the datastore.
    assert!(!host.scratch.path().join("ds/ct").exists());

    // A datastore root that is not there: a mistake, not "no PBS 3 lock".
    let locker = DualSchemeLocker::new(
        host.scratch.path().join("no-such-ds"),
        host.scratch.path().join("locks"),
        "ds1",
    )
    .unwrap();
    let target = LockTarget::snapshot(&host.ns, &host.snapshot);
    let err = locker.lock_exclusive(&target, Duration::ZERO).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, source } if *path == host.scratch.path().join("no-such-ds") && source.kind() == io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert_free(&host.pbs4_snapshot_file());
}

#[test]
fn a_symlink_in_place_of_a_snapshot_folder_is_an_error_not_a_lock() {
    let host = Host::new();
    let elsewhere = host.scratch.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::remove_dir(host.snapshot_dir()).unwrap();
    std::os::unix::fs::symlink(&elsewhere, host.snapshot_dir()).unwrap();
    let target = LockTarget::snapshot(&host.ns, &host.snapshot);
    for scheme in [LockScheme::Both, LockScheme::DirectoryLocks] {
        let locker = scheme
            .locker(
                host.scratch.path().join("locks"),
                "ds1",
                host.scratch.path().join("ds"),
            )
            .unwrap();
        let err = locker.lock_exclusive(&target, Duration::ZERO).unwrap_err();
        assert!(
            matches!(&err, Error::Io { path, .. } if *path == host.snapshot_dir()),
            "{scheme}: {err:?}"
        );
        assert!(!err.is_busy());
    }
    assert_free(&host.pbs4_snapshot_file());
}
