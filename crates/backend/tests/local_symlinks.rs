//! The local backend never follows a symbolic link out of the datastore: links planted at every
//! level (first component, middle, final file, final folder) are refused by every operation,
//! and nothing outside the datastore is read, written, moved or removed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use keepsake_backend::{
    Backend, BackendPath, EntryKind, Error, KeepFilter, LocalBackend, SyncLevel, WriteMode,
};

fn p(path: &str) -> BackendPath {
    path.parse().unwrap()
}

/// Everything below `dir` (files with content, folders, links with target), for comparing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else {
                format!("file {:?}", fs::read(&path).unwrap())
            };
            all.insert(path.strip_prefix(dir).unwrap().to_path_buf(), what);
        }
    }
    all
}

struct Planted {
    _dir: tempfile::TempDir,
    store: PathBuf,
    outside: PathBuf,
    backend: LocalBackend,
}

/// A datastore with links to an outside folder and file at every level.
fn planted() -> Planted {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let outside = dir.path().join("outside");
    fs::create_dir_all(outside.join("dir/vm/100")).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    fs::write(outside.join("dir/owner"), b"outside owner").unwrap();
    fs::write(outside.join("dir/vm/100/owner"), b"outside group").unwrap();
    fs::create_dir_all(store.join("ct")).unwrap();
    fs::create_dir_all(store.join("host/a")).unwrap();
    // First component: the whole `vm` type folder is a link.
    symlink(outside.join("dir"), store.join("vm")).unwrap();
    // Middle component: a group folder is a link (relative target).
    symlink("../../outside/dir", store.join("ct/100")).unwrap();
    // Final components: a file link and a folder link.
    symlink(outside.join("secret"), store.join("host/a/owner")).unwrap();
    symlink(outside.join("dir"), store.join("host/a/snap")).unwrap();
    // A dangling link, where a create would land outside.
    symlink(outside.join("new-file"), store.join("host/a/notes")).unwrap();
    let backend = LocalBackend::open(&store, SyncLevel::Filesystem).unwrap();
    Planted {
        _dir: dir,
        store,
        outside,
        backend,
    }
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    match result {
        Err(Error::RefusedPath { .. }) => {}
        other => panic!("{what}: expected RefusedPath, got {other:?}"),
    }
}

#[test]
fn every_operation_refuses_links_at_every_level() {
    let t = planted();
    let outside_before = snapshot(&t.outside);
    let store_before = snapshot(&t.store);
    let b = &t.backend;

    let through_links = [
        "vm/owner",            // first component
        "vm/vm/100/owner",     // first component, deeper
        "ct/100/owner",        // middle component
        "ct/100/vm/100/owner", // middle component, deeper
        "host/a/snap/owner",   // final folder link, then a name
        "host/a/owner",        // final component: link to a file
        "host/a/notes",        // final component: dangling link
    ];
    for path in through_links {
        let path = p(path);
        assert_refused(b.read(&path), &format!("read {path}"));
        assert_refused(b.stat(&path), &format!("stat {path}"));
        for mode in [WriteMode::Replace, WriteMode::CreateOnly] {
            let result = b.write(&path, b"evil", mode.clone());
            // Create-only onto an existing final link reports the name as taken, which is
            // just as safe: nothing is written through it.
            if path.as_str().starts_with("host/a/")
                && path.depth() == 3
                && mode == WriteMode::CreateOnly
            {
                assert!(
                    matches!(
                        result,
                        Err(Error::AlreadyExists { .. } | Error::RefusedPath { .. })
                    ),
                    "create {path}: {result:?}"
                );
            } else {
                assert_refused(result, &format!("write {mode:?} {path}"));
            }
        }
        let version = b.write(&p("safe/file"), b"x", WriteMode::Replace).unwrap();
        assert_refused(
            b.write(&path, b"evil", WriteMode::Update(version)),
            &format!("update {path}"),
        );
        assert_refused(b.remove_file(&path), &format!("remove_file {path}"));
        assert_refused(
            b.rename(&path, &p("safe/moved")),
            &format!("rename from {path}"),
        );
        assert_refused(
            b.rename(&p("safe/file"), &path.join("x").unwrap()),
            &format!("rename to below {path}"),
        );
    }
    for folder in ["vm", "vm/vm", "ct/100", "ct/100/vm/100", "host/a/snap"] {
        let folder = p(folder);
        assert_refused(b.list(&folder).map(|_| ()), &format!("list {folder}"));
        assert_refused(
            b.remove_tree(&folder, &KeepFilter::nothing()),
            &format!("remove_tree {folder}"),
        );
        assert_refused(
            b.create_dir_all(&folder.join("new").unwrap()),
            "create_dir_all",
        );
        assert_refused(
            b.rename(&p("safe"), &folder.join("moved").unwrap()),
            &format!("rename into {folder}"),
        );
    }
    assert_eq!(snapshot(&t.outside), outside_before, "outside is untouched");
    assert!(!t.outside.join("new-file").exists());
    let mut store_after = snapshot(&t.store);
    store_after.retain(|path, _| !path.starts_with("safe"));
    assert_eq!(
        store_after, store_before,
        "the links themselves are untouched"
    );
}

#[test]
fn listings_report_links_without_following_them() {
    let t = planted();
    let mut entries: Vec<(String, EntryKind)> = t
        .backend
        .list(&p("host/a"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.name, e.kind)
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            ("notes".to_owned(), EntryKind::Other),
            ("owner".to_owned(), EntryKind::Other),
            ("snap".to_owned(), EntryKind::Other),
        ]
    );
    let root: BTreeMap<String, EntryKind> = t
        .backend
        .list(&BackendPath::root())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.name, e.kind)
        })
        .collect();
    assert_eq!(root.get("vm"), Some(&EntryKind::Other));
}

#[test]
fn tree_removal_unlinks_links_and_never_their_targets() {
    let t = planted();
    let outside_before = snapshot(&t.outside);
    let report = t
        .backend
        .remove_tree(&BackendPath::root(), &KeepFilter::nothing())
        .unwrap();
    assert_eq!(report.removed, 5, "five links, no file behind them");
    assert_eq!(snapshot(&t.outside), outside_before);
    assert!(snapshot(&t.store).is_empty());
    assert!(t.store.exists(), "the root itself stays");
}

#[test]
fn the_root_may_itself_be_a_link() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("real")).unwrap();
    symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
    let backend = LocalBackend::open(dir.path().join("link"), SyncLevel::None).unwrap();
    backend
        .write(&p("vm/100/owner"), b"x", WriteMode::Replace)
        .unwrap();
    assert_eq!(
        fs::read(dir.path().join("real/vm/100/owner")).unwrap(),
        b"x"
    );
}

#[test]
fn special_files_are_refused_without_blocking() {
    let t = planted();
    fs::create_dir_all(t.store.join("odd")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        t.store.join("odd/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // Opening a FIFO for reading would wait for a writer forever.
    assert_refused(t.backend.read(&p("odd/fifo")), "read fifo");
    assert_refused(
        t.backend.write(&p("odd/fifo"), b"x", WriteMode::Replace),
        "replace fifo",
    );
    assert_eq!(
        t.backend.stat(&p("odd/fifo")).unwrap().kind,
        EntryKind::Other
    );
}

#[test]
fn names_that_are_not_paths_are_skipped_by_listings() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("vm")).unwrap();
    fs::write(dir.path().join("vm/100"), b"").unwrap();
    fs::write(
        dir.path()
            .join("vm")
            .join(std::ffi::OsStr::from_bytes(b"\xff")),
        b"",
    )
    .unwrap();
    fs::write(dir.path().join("vm/tab\there"), b"").unwrap();
    let backend = LocalBackend::open(dir.path(), SyncLevel::None).unwrap();
    let names: Vec<String> = backend
        .list(&p("vm"))
        .unwrap()
        .map(|e| e.unwrap().name)
        .collect();
    assert_eq!(names, ["100"]);
}

/// The reads that return bytes only (`read_data`, the path behind chunk reads) take a shorter
/// path than `read` (no `fstat` after the open): they refuse the same links and special files,
/// read nothing outside, and read a regular file whole whatever its size.
#[test]
fn byte_reads_refuse_what_reads_refuse() {
    let t = planted();
    let outside_before = snapshot(&t.outside);
    let b = &t.backend;
    for path in [
        "vm/owner",
        "vm/vm/100/owner",
        "ct/100/owner",
        "ct/100/vm/100/owner",
        "host/a/snap/owner",
        "host/a/owner",
        "host/a/notes",
    ] {
        assert_refused(b.read_data(&p(path)), &format!("read_data {path}"));
    }
    fs::create_dir_all(t.store.join("odd")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        t.store.join("odd/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    assert_refused(b.read_data(&p("odd/fifo")), "read_data fifo");
    // A character device (the null device's numbers), where this process may make one: never
    // read as a file.
    if rustix::fs::mknodat(
        rustix::fs::CWD,
        t.store.join("odd/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o644),
        rustix::fs::makedev(1, 3),
    )
    .is_ok()
    {
        assert_refused(b.read_data(&p("odd/null")), "read_data device");
    }
    assert!(matches!(
        b.read_data(&p("odd/missing")),
        Err(Error::NotFound { .. })
    ));
    for size in [0, 1, 4095, 4096, 4097, 1 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        fs::write(t.store.join("odd/file"), &data).unwrap();
        assert_eq!(b.read_data(&p("odd/file")).unwrap(), data, "{size} bytes");
    }
    assert_eq!(snapshot(&t.outside), outside_before);
}

/// A hostile sparse file claims any size for free: whole-file reads refuse it by its size,
/// before reading or allocating anything (an abort for want of memory would end a whole
/// listing), and a reader that knows the kind's bound refuses less.
#[test]
fn huge_sparse_files_are_refused_before_they_are_read() {
    let t = planted();
    fs::create_dir_all(t.store.join("big")).unwrap();
    let huge = fs::File::create(t.store.join("big/huge")).unwrap();
    huge.set_len(1 << 40).unwrap();
    fs::write(t.store.join("big/small"), vec![7u8; 1000]).unwrap();
    let b = &t.backend;
    let too_large = |result: Result<Vec<u8>, Error>, limit: u64| match result {
        Err(Error::TooLarge {
            size, limit: got, ..
        }) => {
            assert_eq!((size, got), (1 << 40, limit));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    };
    too_large(
        b.read_data(&p("big/huge")),
        keepsake_backend::MAX_WHOLE_FILE_READ,
    );
    too_large(
        b.read(&p("big/huge")).map(|c| c.data),
        keepsake_backend::MAX_WHOLE_FILE_READ,
    );
    too_large(b.read_data_max(&p("big/huge"), 4096), 4096);
    assert!(matches!(
        b.read_data_max(&p("big/small"), 999),
        Err(Error::TooLarge {
            size: 1000,
            limit: 999,
            ..
        })
    ));
    assert_eq!(b.read_data_max(&p("big/small"), 1000).unwrap().len(), 1000);
}
