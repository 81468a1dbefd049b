//! keepsake and a PBS server exclude each other: a "PBS" here is a plain open + flock of the path
//! PBS derives, written out literally from the spec, so a drift in keepsake's path derivation or
//! open mode shows up as two holders.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace};
use keepsake_lock::{DirLocker, Error, FileLocker, LockMode, LockTarget, Locker};
use keepsake_testkit::fixture::{GROUPS, PbsFixture, SNAPSHOTS};
use rustix::fs::FlockOperation;

fn pbs_flock(file: &File, exclusive: bool) -> io::Result<()> {
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    Ok(rustix::fs::flock(file.as_fd(), op)?)
}

/// Opens a lock file as PBS 4 does (creating it, read-write, append).
fn pbs4_open(path: &Path) -> File {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    File::options()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
}

#[test]
fn pbs4_server_and_keepsake_exclude_each_other() {
    let root = tempfile::tempdir().unwrap();
    let locker = FileLocker::new(root.path(), "store1").unwrap();
    let ns: BackupNamespace = "a/b".parse().unwrap();
    let dir: BackupDir = "vm/100/2022-05-02T08:11:33Z".parse().unwrap();
    let group = dir.group().clone();
    let cases = [
        (LockTarget::group(&ns, &group), "store1/a:b/vm-100"),
        (
            LockTarget::snapshot(&ns, &dir),
            r"store1/a:b/vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z",
        ),
        (
            LockTarget::manifest(&ns, &dir),
            r"store1/a:b/vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z-.index.json.lck",
        ),
    ];
    for (target, pbs_path) in cases {
        // PBS holds it: keepsake is refused and names the holder.
        let pbs = pbs4_open(&root.path().join(pbs_path));
        pbs_flock(&pbs, true).unwrap();
        let err = locker
            .lock(&target, LockMode::Shared, Duration::ZERO)
            .unwrap_err();
        assert!(
            matches!(&err, Error::WouldBlock { path, .. } if *path == root.path().join(pbs_path)),
            "{err:?}"
        );
        assert!(
            err.holders().iter().any(|h| h.pid == std::process::id()),
            "{err}"
        );
        drop(pbs);

        // keepsake holds it: PBS is refused, shared PBS readers coexist with a shared keepsake lock.
        let guard = locker.lock_exclusive(&target, Duration::ZERO).unwrap();
        let pbs = pbs4_open(&root.path().join(pbs_path));
        assert_eq!(
            pbs_flock(&pbs, false).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(guard);
        let shared = locker.lock_shared(&target, Duration::ZERO).unwrap();
        pbs_flock(&pbs, false).unwrap();
        drop((shared, pbs));
    }
}

#[test]
fn pbs3_scheme_on_a_real_pbs_datastore() {
    let fixture = PbsFixture::unpack().unwrap();
    let locks = tempfile::tempdir().unwrap();
    let locker = DirLocker::new(fixture.path(), locks.path(), "store1").unwrap();

    for (ns, group, _owner) in GROUPS {
        let ns: BackupNamespace = ns.parse().unwrap();
        let group: BackupGroup = group.parse().unwrap();
        let target = LockTarget::group(&ns, &group);
        let guard = locker.lock_exclusive(&target, Duration::ZERO).unwrap();
        assert!(guard.resource().is_dir());
        assert!(
            locker
                .lock_shared(&target, Duration::ZERO)
                .unwrap_err()
                .is_busy()
        );
    }
    for snapshot in SNAPSHOTS {
        let ns: BackupNamespace = snapshot.namespace.parse().unwrap();
        let dir: BackupDir = format!("{}/{}", snapshot.group, snapshot.time)
            .parse()
            .unwrap();

        // A PBS 3 reader holds the snapshot directory shared: keepsake may read, not destroy.
        let pbs = File::open(locker.lock_path(&LockTarget::snapshot(&ns, &dir))).unwrap();
        pbs_flock(&pbs, false).unwrap();
        let target = LockTarget::snapshot(&ns, &dir);
        drop(locker.lock_shared(&target, Duration::ZERO).unwrap());
        assert!(
            locker
                .lock_exclusive(&target, Duration::ZERO)
                .unwrap_err()
                .is_busy()
        );
        drop(pbs);
        drop(locker.lock_exclusive(&target, Duration::ZERO).unwrap());

        let manifest = locker
            .lock_exclusive(&LockTarget::manifest(&ns, &dir), Duration::ZERO)
            .unwrap();
        assert!(manifest.resource().starts_with(locks.path().join("store1")));
        manifest.remove().unwrap();
    }

    // A snapshot that is not there cannot be locked, and is not created by trying.
    let dir: BackupDir = "vm/100/2030-01-01T00:00:00Z".parse().unwrap();
    let root = BackupNamespace::root();
    let err = locker
        .lock_shared(&LockTarget::snapshot(&root, &dir), Duration::ZERO)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(!fixture.path().join("vm/100/2030-01-01T00:00:00Z").exists());
}
