//! The lock-folder sweep removes free lock files of the scheme and nothing else, and refuses lock
//! roots that could be or hold the datastore without touching a byte.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keepsake_hierarchy::{BackupDir, BackupNamespace};
use keepsake_lock::{
    DualSchemeLocker, Error, LockRootRefusal, LockScheme, LockTarget, Locker, SweepMode,
    SweepOptions, SweepReport, relative_lock_path, sweep_lock_folder,
};
use rustix::fs::FlockOperation;

/// Makes a re-run of this test binary hold a shared flock on the path in this variable.
const HOLD_VAR: &str = "KEEPSAKE_SWEEP_TEST_HOLD";

/// Another process holding a shared flock on `path` (this test binary, re-run in a holder role).
struct Holder(Child);

impl Holder {
    fn spawn(test: &str, path: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(HOLD_VAR, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let ready = BufReader::new(stdout)
            .lines()
            .any(|line| line.unwrap().trim() == "HOLDING");
        assert!(ready, "holder exited before locking {path:?}");
        Self(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The holder role: lock, say so, wait for the parent to go away.
fn hold_if_asked() -> bool {
    let Some(path) = std::env::var_os(HOLD_VAR) else {
        return false;
    };
    let file = File::open(&path).unwrap();
    rustix::fs::flock(file.as_fd(), FlockOperation::NonBlockingLockShared).unwrap();
    println!("HOLDING");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    std::process::exit(0);
}

/// Everything below `root`, byte for byte: kind, mode, contents or link target.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode();
            let what = if meta.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&path).unwrap())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o} ino {}", meta.ino())
            } else if meta.is_file() {
                format!(
                    "file {mode:o} ino {} {:?}",
                    meta.ino(),
                    std::fs::read(&path).unwrap()
                )
            } else {
                format!("other {mode:o}")
            };
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), what);
        }
    }
    out
}

fn relative(report_paths: &[PathBuf], base: &Path) -> Vec<String> {
    report_paths
        .iter()
        .map(|p| p.strip_prefix(base).unwrap().to_str().unwrap().to_owned())
        .collect()
}

/// `<lock root>/store1`, filled by real lockers of both schemes and by strangers.
struct LockFolder {
    scratch: tempfile::TempDir,
    locker: DualSchemeLocker,
}

const T1: &str = "2024-06-05T15:06:40Z";
const T2: &str = "2024-06-06T15:06:40Z";

impl LockFolder {
    fn new() -> Self {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::create_dir(scratch.path().join("ds")).unwrap();
        let locker = DualSchemeLocker::new(
            scratch.path().join("ds"),
            scratch.path().join("locks"),
            "store1",
        )
        .unwrap();
        Self { scratch, locker }
    }

    fn lock_root(&self) -> PathBuf {
        self.scratch.path().join("locks")
    }

    fn folder(&self) -> PathBuf {
        self.lock_root().join("store1")
    }

    fn datastore(&self) -> PathBuf {
        self.scratch.path().join("ds")
    }

    fn options(&self, scheme: LockScheme, mode: SweepMode) -> SweepOptions {
        SweepOptions::new(self.lock_root(), "store1", self.datastore())
            .scheme(scheme)
            .mode(mode)
    }

    /// Takes and releases `target` in both schemes, leaving its lock files behind.
    fn leave_lock(&self, target: LockTarget<'_>) {
        drop(self.locker.lock_exclusive(&target, Duration::ZERO).unwrap());
    }

    fn write(&self, relative: &str, contents: &[u8]) {
        let path = self.folder().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

#[test]
fn only_free_real_lock_files_go() {
    if hold_if_asked() {
        return;
    }
    let f = LockFolder::new();
    let root = BackupNamespace::root();
    let ab: BackupNamespace = "a/b".parse().unwrap();
    let hashed_ns: BackupNamespace = "hashed".parse().unwrap();
    let snap = |s: &str| s.parse::<BackupDir>().unwrap();
    let (s1, s2) = (snap(&format!("vm/100/{T1}")), snap(&format!("vm/100/{T2}")));
    let long = snap(&format!("host/{}/{T1}", "x-".repeat(120)));
    let other = snap(&format!("vm/100x/{T1}"));

    // Lock files the lockers leave behind (both schemes' manifest locks; PBS 4 files otherwise).
    f.leave_lock(LockTarget::group(&root, s1.group()));
    f.leave_lock(LockTarget::snapshot(&root, &s1));
    f.leave_lock(LockTarget::manifest(&root, &s1));
    f.leave_lock(LockTarget::manifest(&ab, &s2));
    f.leave_lock(LockTarget::snapshot(&ab, &long));
    f.leave_lock(LockTarget::manifest(&hashed_ns, &s1));
    // `vm-100x` looks like a near miss of `vm-100` but is the lock of group vm/100x.
    f.leave_lock(LockTarget::group(&root, other.group()));

    // Some in use: by another process (shared), and by an open file in this one (exclusive).
    let [held_by_child, held_pbs3] = f.locker.lock_paths(&LockTarget::manifest(&ab, &s1));
    f.leave_lock(LockTarget::manifest(&ab, &s1));
    let _child = Holder::spawn("only_free_real_lock_files_go", &held_by_child);
    let held_fd = File::open(&held_pbs3).unwrap();
    rustix::fs::flock(held_fd.as_fd(), FlockOperation::NonBlockingLockExclusive).unwrap();
    let held_hashed = f.locker.lock_paths(&LockTarget::manifest(&root, &long))[0].clone();
    let _held_guard = f
        .locker
        .file_locker()
        .lock_shared(&LockTarget::manifest(&root, &long), Duration::ZERO)
        .unwrap();
    assert!(held_hashed.to_str().unwrap().contains("/hashed/"));

    // Strangers.
    f.write("move-journal", b"/srv/store1/ns/a/vm/100/x.fidx\n");
    f.write("notes", b"not a lock");
    f.write("a:b/notes", b"not a lock either");
    f.write("hashed/notes", b"nor this");
    f.write(r"vm-100-2024\x2d13\x2d05T15\x3a06\x3a40Z", b""); // month 13
    f.write(r"vm-100-2024\x2d02\x2d31T15\x3a06\x3a40Z", b""); // 31 February
    f.write("vx-100", b"");
    f.write(r"vm-10\x30", b""); // an escape escape_unit_path never writes
    f.write("vm-100-2024-06-05T15:06:40Z", b"");
    f.write(
        r"a:b/vm-100-2024\x2d06\x2d06T15\x3a06\x3a40Z-index.json.lck",
        b"",
    );
    f.write(
        &format!("hashed/{}", "A".repeat(228)),
        b"", // hashed shape, wrong alphabet
    );
    f.write(&format!("ns/a/vm/100/{T1}/{T2}.index.json.lck"), b""); // time mismatch
    f.write(&format!("ns/a/vm/100/{T1}/index.json.blob"), b"data");
    f.write(&format!("ns/a/vm/1 00/{T1}/{T1}.index.json.lck"), b""); // bad id
    f.write("a:b:c:d:e:f:g:h/vm-100", b""); // namespace too deep
    f.write("a:b/sub/vm-100", b""); // no such folder in PBS 4
    let outside = f.scratch.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("vm-100"), b"precious").unwrap();
    std::os::unix::fs::symlink(outside.join("vm-100"), f.folder().join("vm-200")).unwrap();
    std::os::unix::fs::symlink(&outside, f.folder().join("c:d")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        f.folder().join("ct-1"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();

    let free = [
        "a:b/hashed/".to_owned()
            + relative_lock_path(&["a", "b"], format!("{long}").as_bytes())
                .rsplit('/')
                .next()
                .unwrap(),
        r"a:b/vm-100-2024\x2d06\x2d06T15\x3a06\x3a40Z-.index.json.lck".to_owned(),
        r"hashed/vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z-.index.json.lck".to_owned(),
        format!("ns/a/ns/b/vm/100/{T2}/{T2}.index.json.lck"),
        format!("ns/hashed/vm/100/{T1}/{T1}.index.json.lck"),
        format!("vm/100/{T1}/{T1}.index.json.lck"),
        "vm-100".to_owned(),
        r"vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z".to_owned(),
        r"vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z-.index.json.lck".to_owned(),
        "vm-100x".to_owned(),
    ];
    let in_use = [
        r"a:b/vm-100-2024\x2d06\x2d05T15\x3a06\x3a40Z-.index.json.lck".to_owned(),
        format!(
            "hashed/{}",
            held_hashed.file_name().unwrap().to_str().unwrap()
        ),
        format!("ns/a/ns/b/vm/100/{T1}/{T1}.index.json.lck"),
    ];
    let foreign = [
        "a:b/notes".to_owned(),
        "a:b/sub".to_owned(),
        r"a:b/vm-100-2024\x2d06\x2d06T15\x3a06\x3a40Z-index.json.lck".to_owned(),
        "a:b:c:d:e:f:g:h".to_owned(),
        "c:d".to_owned(),
        "ct-1".to_owned(),
        format!("hashed/{}", "A".repeat(228)),
        "hashed/notes".to_owned(),
        "move-journal".to_owned(),
        "notes".to_owned(),
        "ns/a/vm/1 00".to_owned(),
        format!("ns/a/vm/100/{T1}/{T2}.index.json.lck"),
        format!("ns/a/vm/100/{T1}/index.json.blob"),
        r"vm-10\x30".to_owned(),
        "vm-100-2024-06-05T15:06:40Z".to_owned(),
        r"vm-100-2024\x2d02\x2d31T15\x3a06\x3a40Z".to_owned(),
        r"vm-100-2024\x2d13\x2d05T15\x3a06\x3a40Z".to_owned(),
        "vm-200".to_owned(),
        "vx-100".to_owned(),
    ];
    let sorted = |list: &[String]| {
        let mut list = list.to_vec();
        // As the report sorts: by path components.
        list.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
        list
    };
    let (free, in_use, foreign) = (sorted(&free), sorted(&in_use), sorted(&foreign));

    // A dry run sees everything and changes nothing.
    let before = tree(f.scratch.path());
    let report = sweep_lock_folder(&f.options(LockScheme::Both, SweepMode::ReportOnly)).unwrap();
    assert_eq!(tree(f.scratch.path()), before);
    let check = |report: &SweepReport| {
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.lock_folder, f.folder());
        assert_eq!(relative(&report.free_lock_files, &f.folder()), free);
        assert_eq!(relative(&report.lock_files_in_use, &f.folder()), in_use);
        assert_eq!(relative(&report.foreign_entries, &f.folder()), foreign);
    };
    check(&report);
    assert!(report.removed_folders.is_empty());

    // The real sweep removes exactly the free lock files, and scheme folders left empty.
    let report = sweep_lock_folder(&f.options(LockScheme::Both, SweepMode::Remove)).unwrap();
    check(&report);
    let after = tree(f.scratch.path());
    for (path, what) in &before {
        let below = path.strip_prefix("locks/store1").ok();
        let gone = below.is_some_and(|p| free.iter().any(|free| Path::new(free) == p));
        let removed_folder = report
            .removed_folders
            .iter()
            .any(|d| f.scratch.path().join(path) == *d);
        match after.get(path) {
            Some(now) => {
                assert!(!gone && !removed_folder, "{path:?} still there");
                assert_eq!(now, what, "{path:?} changed");
            }
            None => assert!(gone || removed_folder, "{path:?} removed"),
        }
    }
    assert_eq!(
        relative(&report.removed_folders, &f.folder()),
        [
            "a:b/hashed",
            "ns/a/ns/b/vm/100/2024-06-06T15:06:40Z",
            "ns/hashed",
            "ns/hashed/vm",
            "ns/hashed/vm/100",
            "ns/hashed/vm/100/2024-06-05T15:06:40Z",
            "vm",
            "vm/100",
            "vm/100/2024-06-05T15:06:40Z",
        ]
    );
    assert_eq!(std::fs::read(outside.join("vm-100")).unwrap(), b"precious");

    // Once released, the rest goes too; the lockers recreate what they need.
    drop((_child, held_fd, _held_guard));
    let report = sweep_lock_folder(&f.options(LockScheme::Both, SweepMode::Remove)).unwrap();
    assert_eq!(relative(&report.free_lock_files, &f.folder()), in_use);
    assert!(report.lock_files_in_use.is_empty());
    assert_eq!(relative(&report.foreign_entries, &f.folder()), foreign);
    f.leave_lock(LockTarget::manifest(&ab, &s1));
}

#[test]
fn each_scheme_sweeps_only_its_own_lock_files() {
    let f = LockFolder::new();
    let ns: BackupNamespace = "a".parse().unwrap();
    let s1: BackupDir = format!("vm/100/{T1}").parse().unwrap();
    f.leave_lock(LockTarget::manifest(&ns, &s1));
    let [pbs4, pbs3] = f.locker.lock_paths(&LockTarget::manifest(&ns, &s1));

    let report = sweep_lock_folder(&f.options(LockScheme::LockFiles, SweepMode::Remove)).unwrap();
    assert_eq!(report.free_lock_files, std::slice::from_ref(&pbs4));
    // PBS 3's `ns` folder is a valid PBS 4 namespace folder name; what is inside is not.
    assert_eq!(relative(&report.foreign_entries, &f.folder()), ["ns/a"]);
    assert!(pbs3.exists() && !pbs4.exists());

    f.leave_lock(LockTarget::manifest(&ns, &s1));
    let report =
        sweep_lock_folder(&f.options(LockScheme::DirectoryLocks, SweepMode::Remove)).unwrap();
    assert_eq!(report.free_lock_files, std::slice::from_ref(&pbs3));
    assert_eq!(relative(&report.foreign_entries, &f.folder()), ["a"]);
    assert!(!pbs3.exists() && pbs4.exists());
    assert!(f.folder().is_dir(), "the lock folder itself stays");
}

#[test]
fn a_missing_lock_folder_is_an_empty_report_and_a_bad_store_name_an_error() {
    let f = LockFolder::new();
    std::fs::create_dir(f.lock_root()).unwrap();
    let report = sweep_lock_folder(&f.options(LockScheme::Both, SweepMode::Remove)).unwrap();
    assert_eq!(report.lock_folder, f.folder());
    assert!(report.free_lock_files.is_empty() && report.foreign_entries.is_empty());
    assert!(!f.folder().exists());

    let err =
        sweep_lock_folder(&SweepOptions::new(f.lock_root(), "..", f.datastore())).unwrap_err();
    assert!(matches!(err, Error::InvalidStoreName { .. }), "{err:?}");
}

/// A datastore at `<scratch>/store1` as PBS lays it out, with files that have lock file names.
fn datastore(scratch: &Path) -> PathBuf {
    let ds = scratch.join("store1");
    for dir in [
        ".chunks/0000",
        ".chunks/ffff",
        "vm/100/2024-06-05T15:06:40Z",
        "ns/a/ct/7",
    ] {
        std::fs::create_dir_all(ds.join(dir)).unwrap();
    }
    std::fs::write(ds.join(".lock"), b"").unwrap();
    std::fs::write(ds.join("vm/100/owner"), b"root@pam\n").unwrap();
    std::fs::write(
        ds.join("vm/100/2024-06-05T15:06:40Z/index.json.blob"),
        b"manifest",
    )
    .unwrap();
    std::fs::write(ds.join(".chunks/0000/0000abcd"), b"chunk").unwrap();
    // Names a sweep would take for lock files, had it been let in.
    std::fs::write(ds.join("vm-100"), b"").unwrap();
    std::fs::write(ds.join("store1"), b"").unwrap();
    std::fs::create_dir_all(ds.join("locks/store1")).unwrap();
    std::fs::write(ds.join("locks/store1/vm-100"), b"").unwrap();
    std::fs::write(ds.join("store1.lck"), b"").unwrap();
    ds
}

#[test]
fn lock_roots_that_could_be_the_datastore_are_refused_untouched() {
    use LockRootRefusal as R;
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let ds = datastore(s);
    std::os::unix::fs::symlink(&ds, s.join("ds-link")).unwrap();
    // A separate lock root whose store folder looks like (or is a link to) a datastore.
    for (root, setup) in [
        ("chunky", ".chunks"),
        ("locky", ".lock"),
        ("linky", "link"),
        ("filey", "file"),
    ] {
        let folder = s.join(root).join("store1");
        std::fs::create_dir_all(folder.parent().unwrap()).unwrap();
        match setup {
            "link" => std::os::unix::fs::symlink(&ds, &folder).unwrap(),
            "file" => std::fs::write(&folder, b"").unwrap(),
            marker => {
                std::fs::create_dir(&folder).unwrap();
                std::fs::write(folder.join("vm-100"), b"").unwrap();
                if marker == ".chunks" {
                    std::fs::create_dir(folder.join(marker)).unwrap();
                } else {
                    std::fs::write(folder.join(marker), b"").unwrap();
                }
            }
        }
    }
    let cases: [(PathBuf, PathBuf, R); 11] = [
        (ds.clone(), ds.clone(), R::IsDatastoreRoot),
        (s.join("ds-link"), ds.clone(), R::IsDatastoreRoot),
        (ds.clone(), s.join("ds-link"), R::IsDatastoreRoot),
        // The incident: the datastore's parent as lock root makes the datastore the lock folder.
        (s.to_path_buf(), ds.clone(), R::ContainsDatastoreRoot),
        (ds.join("locks"), ds.clone(), R::InsideDatastoreRoot),
        (s.join("missing"), ds.clone(), R::LockRootUnresolvable),
        (
            s.join("chunky"),
            s.join("missing-ds"),
            R::DatastoreRootUnresolvable,
        ),
        (
            s.join("chunky"),
            ds.clone(),
            R::LockFolderLooksLikeDatastore,
        ),
        (s.join("locky"), ds.clone(), R::LockFolderLooksLikeDatastore),
        (s.join("linky"), ds.clone(), R::LockFolderIsSymlink),
        (s.join("filey"), ds.clone(), R::LockFolderNotAFolder),
    ];
    let before = tree(s);
    for (lock_root, datastore_root, expected) in cases {
        for scheme in LockScheme::ALL {
            let options = SweepOptions::new(&lock_root, "store1", &datastore_root)
                .scheme(scheme)
                .mode(SweepMode::Remove);
            let err = sweep_lock_folder(&options).unwrap_err();
            match &err {
                Error::UnsafeLockRoot {
                    lock_root: l,
                    datastore_root: d,
                    reason,
                    source,
                } => {
                    assert_eq!((l, d, *reason), (&lock_root, &datastore_root, expected));
                    let unresolvable = matches!(
                        reason,
                        R::LockRootUnresolvable | R::DatastoreRootUnresolvable
                    );
                    assert_eq!(source.is_some(), unresolvable, "{err:?}");
                    assert!(err.to_string().contains(&reason.to_string()), "{err}");
                }
                other => panic!("{lock_root:?} {scheme}: expected a refusal, got {other:?}"),
            }
            assert!(!err.is_busy());
        }
    }
    assert_eq!(tree(s), before, "a refused sweep touched something");
}

#[test]
fn refusal_reasons_read_well() {
    let err = Error::UnsafeLockRoot {
        lock_root: "/srv".into(),
        datastore_root: "/srv/store1".into(),
        reason: LockRootRefusal::ContainsDatastoreRoot,
        source: None,
    };
    assert_eq!(
        err.to_string(),
        "refused lock root \"/srv\" for datastore \"/srv/store1\": it contains the datastore root"
    );
}
