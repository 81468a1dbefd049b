//! Lock files are created 0660 and lock folders 0755, both handed to the configured owner, by every
//! locker and at every depth: `<lock root>/<store>`, namespace folders, `hashed/`, and PBS 3's
//! manifest lock folders. One test in its own binary, because it changes the process umask.
//!
//! As root the owner is a foreign uid/gid, which proves the chown; otherwise it is the caller's own
//! ids (all an unprivileged process may give away to), and only the modes are really checked.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use keepsake_hierarchy::{BackupDir, BackupNamespace};
use keepsake_lock::{
    DirLocker, DualSchemeLocker, FileLocker, FileOwner, LOCK_DIR_MODE, LOCK_FILE_MODE, LockTarget,
    Locker,
};
use rustix::fs::Mode;

/// Every folder strictly below `top` on the way to `path`, and `path` itself.
fn created_below(top: &Path, path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = path
        .ancestors()
        .take_while(|p| *p != top)
        .map(Path::to_path_buf)
        .collect();
    out.reverse();
    out
}

#[test]
fn lock_files_and_folders_get_mode_and_owner() {
    let owner = if rustix::process::getuid().is_root() {
        FileOwner {
            uid: 4242,
            gid: 4343,
        }
    } else {
        eprintln!("not root: owner checks use the caller's own ids (chown not proven)");
        FileOwner {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    };
    // A umask that would lock PBS out if the modes were left to it.
    rustix::process::umask(Mode::from_raw_mode(0o077));

    let scratch = tempfile::tempdir().unwrap();
    let datastore = scratch.path().join("ds");
    std::fs::create_dir(&datastore).unwrap();
    let lock_root = scratch.path().join("run/locks");
    let ns: BackupNamespace = "a/b".parse().unwrap();
    let short: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse().unwrap();
    let long: BackupDir = format!("host/{}/2024-06-05T15:06:40Z", "x".repeat(250))
        .parse()
        .unwrap();

    let lockers: Vec<(&str, Box<dyn Locker>)> = vec![
        (
            "files",
            Box::new(FileLocker::new(&lock_root, "store1").unwrap().owner(owner)),
        ),
        (
            "dirs",
            Box::new(
                DirLocker::new(&datastore, &lock_root, "store2")
                    .unwrap()
                    .owner(owner),
            ),
        ),
        (
            "both",
            Box::new(
                DualSchemeLocker::new(&datastore, &lock_root, "store3")
                    .unwrap()
                    .owner(owner),
            ),
        ),
    ];
    let mut checked_dirs = 0;
    for (name, locker) in &lockers {
        let mut targets = vec![
            LockTarget::manifest(&ns, &short),
            LockTarget::manifest(&ns, &long),
        ];
        if *name != "dirs" {
            // The PBS 3 scheme has no lock files for these (and the folders do not exist).
            targets.push(LockTarget::snapshot(&ns, &long));
            targets.push(LockTarget::group(&ns, short.group()));
        }
        for target in targets {
            let guard = locker
                .lock_exclusive(&target, Duration::ZERO)
                .unwrap_or_else(|e| panic!("{name} {target}: {e:?}"));
            let mut files = vec![guard.resource().to_owned()];
            if *name == "both" && matches!(target, LockTarget::Manifest { .. }) {
                let both = DualSchemeLocker::new(&datastore, &lock_root, "store3").unwrap();
                files = both.lock_paths(&target).to_vec();
            }
            for file in files {
                let meta = std::fs::metadata(&file).unwrap();
                assert!(meta.is_file(), "{file:?}");
                assert_eq!(
                    meta.permissions().mode() & 0o7777,
                    LOCK_FILE_MODE,
                    "{file:?}"
                );
                assert_eq!((meta.uid(), meta.gid()), (owner.uid, owner.gid), "{file:?}");
                for dir in created_below(scratch.path(), file.parent().unwrap()) {
                    let meta = std::fs::symlink_metadata(&dir).unwrap();
                    assert!(meta.is_dir(), "{dir:?}");
                    assert_eq!(meta.permissions().mode() & 0o7777, LOCK_DIR_MODE, "{dir:?}");
                    assert_eq!((meta.uid(), meta.gid()), (owner.uid, owner.gid), "{dir:?}");
                    checked_dirs += 1;
                }
            }
        }
    }
    // Spot checks that the folders that matter were among them.
    for dir in [
        "run/locks/store1",
        "run/locks/store1/a:b",
        "run/locks/store1/a:b/hashed",
        "run/locks/store2/ns/a/ns/b/vm/100/2024-06-05T15:06:40Z",
        "run/locks/store3/a:b/hashed",
        "run/locks/store3/ns/a/ns/b/host",
    ] {
        let meta = std::fs::metadata(scratch.path().join(dir)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, LOCK_DIR_MODE, "{dir}");
        assert_eq!(meta.uid(), owner.uid, "{dir}");
    }
    assert!(checked_dirs > 20, "{checked_dirs}");

    // Folders that already existed are not touched.
    let existing = scratch.path().join("mine");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o700)).unwrap();
    let before = std::fs::metadata(&existing).unwrap();
    drop(
        FileLocker::new(&existing, "store1")
            .unwrap()
            .owner(owner)
            .lock_exclusive(&LockTarget::group(&ns, short.group()), Duration::ZERO)
            .unwrap(),
    );
    let after = std::fs::metadata(&existing).unwrap();
    assert_eq!(after.permissions().mode(), before.permissions().mode());
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
}
