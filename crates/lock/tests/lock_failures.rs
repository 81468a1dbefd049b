//! A lock that could not be taken for any reason but contention is an [`Error::Io`] with the real
//! errno as its source, never a busy error, for every locker and target: a caller deciding whether
//! to go ahead must not mistake "the lock machinery failed" for "someone else has it".

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use keepsake_hierarchy::{BackupDir, BackupNamespace};
use keepsake_lock::{Error, LockScheme, LockTarget, Locker};
use rustix::io::Errno;

struct Names {
    ns: BackupNamespace,
    snapshot: BackupDir,
}

impl Names {
    fn new() -> Self {
        Self {
            ns: "a".parse().unwrap(),
            snapshot: "vm/100/2024-06-05T15:06:40Z".parse().unwrap(),
        }
    }

    fn targets(&self) -> [LockTarget<'_>; 3] {
        [
            LockTarget::group(&self.ns, self.snapshot.group()),
            LockTarget::snapshot(&self.ns, &self.snapshot),
            LockTarget::manifest(&self.ns, &self.snapshot),
        ]
    }
}

fn lockers(lock_root: &Path, datastore: &Path) -> Vec<(LockScheme, Box<dyn Locker>)> {
    LockScheme::ALL
        .into_iter()
        .map(|scheme| {
            (
                scheme,
                scheme.locker(lock_root, "store1", datastore).unwrap(),
            )
        })
        .collect()
}

/// Every lock of every locker fails with an I/O error whose cause has the errno `expected`.
#[track_caller]
fn check_all_fail(lockers: &[(LockScheme, Box<dyn Locker>)], names: &Names, expected: i32) {
    for (scheme, locker) in lockers {
        for target in names.targets() {
            for timeout in [Duration::ZERO, Duration::from_millis(50)] {
                let err = locker
                    .lock_exclusive(&target, timeout)
                    .expect_err("must fail");
                check_io(&err, expected, &format!("{scheme} {target}"));
            }
        }
    }
}

#[track_caller]
fn check_io(err: &Error, expected: i32, what: &str) {
    assert!(!err.is_busy(), "{what}: {err:?}");
    assert!(err.holders().is_empty(), "{what}: {err:?}");
    match err {
        Error::Io { source, .. } => {
            assert_eq!(source.raw_os_error(), Some(expected), "{what}: {err:?}")
        }
        other => panic!("{what}: expected Error::Io, got {other:?}"),
    }
}

#[test]
fn a_lock_root_below_a_regular_file_is_enotdir() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("file");
    std::fs::write(&file, b"not a folder").unwrap();
    let names = Names::new();
    check_all_fail(
        &lockers(&file.join("locks"), &file.join("ds")),
        &names,
        Errno::NOTDIR.raw_os_error(),
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");

    // Both schemes at once, with a good lock root but a datastore root that is a file: the PBS 3
    // part fails as such (it is not a missing folder to skip), and the PBS 4 part is let go.
    let both = LockScheme::Both
        .locker(scratch.path().join("locks"), "store1", &file)
        .unwrap();
    for target in &names.targets()[..2] {
        let err = both
            .lock_exclusive(target, Duration::ZERO)
            .expect_err("must fail");
        check_io(&err, Errno::NOTDIR.raw_os_error(), "both");
        let files = LockScheme::LockFiles
            .locker(scratch.path().join("locks"), "store1", &file)
            .unwrap();
        drop(files.lock_exclusive(target, Duration::ZERO).unwrap());
    }
}

#[test]
fn an_unwritable_lock_root_and_unreadable_folders_are_eacces() {
    let scratch = tempfile::tempdir().unwrap();
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // Others (the unprivileged user below) may look around but not write.
    chmod(scratch.path(), 0o755);
    let lock_root = scratch.path().join("locks");
    let datastore = scratch.path().join("ds");
    let names = Names::new();
    let snapshot_dir = datastore.join(names.snapshot.relative_path(&names.ns));
    std::fs::create_dir_all(&snapshot_dir).unwrap();
    std::fs::create_dir(&lock_root).unwrap();
    for dir in snapshot_dir
        .ancestors()
        .take_while(|d| *d != scratch.path())
    {
        chmod(dir, 0o755);
    }
    chmod(&lock_root, 0o555);
    // The group and snapshot folders cannot be opened for their flock.
    chmod(&snapshot_dir, 0o000);
    chmod(snapshot_dir.parent().unwrap(), 0o311);
    let group_dir = snapshot_dir.parent().unwrap();
    assert!(group_dir.ends_with("ns/a/vm/100"));

    as_unprivileged(|| {
        check_all_fail(
            &lockers(&lock_root, &datastore),
            &names,
            Errno::ACCESS.raw_os_error(),
        );
    });

    // With a writable lock root, the PBS 4 part of `Both` succeeds, the PBS 3 part fails on the
    // folder, and the PBS 4 part is let go again.
    chmod(&lock_root, 0o777);
    as_unprivileged(|| {
        let both = LockScheme::Both
            .locker(&lock_root, "store1", &datastore)
            .unwrap();
        let files = LockScheme::LockFiles
            .locker(&lock_root, "store1", &datastore)
            .unwrap();
        for target in &names.targets()[..2] {
            let err = both
                .lock_exclusive(target, Duration::ZERO)
                .expect_err("must fail");
            check_io(
                &err,
                Errno::ACCESS.raw_os_error(),
                &format!("both {target}"),
            );
            drop(files.lock_exclusive(target, Duration::ZERO).unwrap());
        }
    });
}

/// Runs `f` without the privilege to bypass file permissions: as root, in a thread whose ids
/// (credentials are per thread in Linux) are dropped to `nobody`; otherwise directly.
fn as_unprivileged(f: impl FnOnce() + Send) {
    if !rustix::process::getuid().is_root() {
        return f();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let nobody = 65534;
                let gid = rustix::process::Gid::from_raw(nobody);
                let uid = rustix::process::Uid::from_raw(nobody);
                rustix::thread::set_thread_groups(&[]).expect("drop groups");
                rustix::thread::set_thread_res_gid(gid, gid, gid).expect("drop gid");
                rustix::thread::set_thread_res_uid(uid, uid, uid).expect("drop uid");
                f();
            })
            .join()
            .expect("unprivileged thread");
    });
}
