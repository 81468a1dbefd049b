//! The backend conformance suite: one set of checks every [`Backend`] must pass.
//!
//! Each check takes a fresh, empty backend and panics on the first broken rule of the contract
//! written on [`Backend`]. Checks adapt to [`Capabilities`](crate::Capabilities) where the contract
//! lets backends differ (listing order, empty folders, compare-and-swap).
//!
//! [`backend_conformance_tests!`](crate::backend_conformance_tests) turns the whole suite into one
//! `#[test]` per check, given a function that makes a [`Subject`] (or `None` to skip, after saying
//! why on stderr):
//!
//! ```
//! use keepsake_backend::conformance::Subject;
//! use keepsake_backend::{LocalBackend, SyncLevel};
//!
//! fn local(_test: &str) -> Option<Subject> {
//!     let dir = tempfile::tempdir().unwrap();
//!     let backend = LocalBackend::open(dir.path(), SyncLevel::None).unwrap();
//!     Some(Subject::with_guard(backend, dir))
//! }
//!
//! // In a test file: keepsake_backend::backend_conformance_tests!(local);
//! // Or one check by hand:
//! keepsake_backend::conformance::remove_tree_slash_boundary(local("doc").unwrap().backend());
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Barrier;
use std::thread;

use crate::{
    Backend, BackendPath, ChunkDigest, ChunkInsert, EntryKind, Error, KeepFilter, WriteMode,
};

/// A backend under test, with whatever must live as long as it (a temporary folder).
pub struct Subject {
    // Field order: the backend goes before what it lives in.
    backend: Box<dyn Backend>,
    _guard: Option<Box<dyn Send>>,
}

impl Subject {
    /// A subject that needs nothing else.
    pub fn new(backend: impl Backend + 'static) -> Self {
        Self {
            backend: Box::new(backend),
            _guard: None,
        }
    }

    /// A subject that keeps `guard` alive (and drops it after the backend).
    pub fn with_guard(backend: impl Backend + 'static, guard: impl Send + 'static) -> Self {
        Self {
            backend: Box::new(backend),
            _guard: Some(Box::new(guard)),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }
}

/// One `#[test]` per conformance check. `$make` is a function or closure
/// `Fn(&str) -> Option<Subject>` called with the check's name; `None` skips the check (say why
/// on stderr).
#[macro_export]
macro_rules! backend_conformance_tests {
    ($make:expr) => {
        $crate::backend_conformance_tests!(@checks $make;
            write_read_replace,
            create_only,
            create_only_race,
            compare_and_swap,
            compare_and_swap_race,
            races_with_equal_bytes,
            writes_are_never_torn,
            listing,
            large_listing,
            not_found,
            refused_paths,
            remove_file,
            remove_tree_keeps_protected,
            remove_tree_slash_boundary,
            rename,
            stat_kinds,
            folders,
            chunks,
            quarantined_chunks,
            authoritative_reads,
            remove_files,
            remove_folder_if_empty
        );
        $crate::__backend_conformance_runtime_checks!($make);
    };
    (@checks $make:expr; $($check:ident),* $(,)?) => {$(
        #[test]
        fn $check() {
            let make = $make;
            if let Some(subject) = make(stringify!($check)) {
                $crate::conformance::$check(subject.backend());
            }
        }
    )*};
}

/// The checks that need tokio (feature `s3`), for [`backend_conformance_tests!`](crate::backend_conformance_tests).
#[cfg(feature = "s3")]
#[doc(hidden)]
#[macro_export]
macro_rules! __backend_conformance_runtime_checks {
    ($make:expr) => {
        $crate::backend_conformance_tests!(@checks $make; blocking_inside_runtimes);
    };
}

/// Without the `s3` feature there is no tokio to run these checks in.
#[cfg(not(feature = "s3"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __backend_conformance_runtime_checks {
    ($make:expr) => {};
}

fn p(path: &str) -> BackendPath {
    path.parse().expect("test paths are valid")
}

macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err($pattern) => {}
            Err(other) => panic!(
                "expected {}, got {other:?} (at {}:{})",
                stringify!($pattern),
                file!(),
                line!()
            ),
            Ok(_) => panic!(
                "expected {}, got success (at {}:{})",
                stringify!($pattern),
                file!(),
                line!()
            ),
        }
    };
}

/// Every file below `folder`, recursively, through [`Backend::list`].
pub fn files_below(backend: &dyn Backend, folder: &BackendPath) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut stack = vec![folder.clone()];
    while let Some(dir) = stack.pop() {
        let entries = match backend.list(&dir) {
            Ok(entries) => entries,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => panic!("listing {dir}: {e}"),
        };
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("listing {dir}: {e}"));
            let path = dir.join(&entry.name).expect("listed names are valid");
            match entry.kind {
                EntryKind::Dir => stack.push(path),
                _ => {
                    files.insert(path.to_string());
                }
            }
        }
    }
    files
}

fn names(backend: &dyn Backend, folder: &str) -> Vec<(String, EntryKind)> {
    backend
        .list(&p(folder))
        .unwrap_or_else(|e| panic!("listing {folder}: {e}"))
        .map(|entry| {
            let entry = entry.unwrap_or_else(|e| panic!("listing {folder}: {e}"));
            (entry.name, entry.kind)
        })
        .collect()
}

/// Threads writing test files at once: enough to keep a slow test server busy.
const THREADS_SETUP: usize = 16;

/// Writes `files` (path, content) from [`THREADS_SETUP`] threads at once.
fn write_all_concurrently(backend: &dyn Backend, files: Vec<(BackendPath, Vec<u8>)>) {
    let files = std::sync::Mutex::new(files);
    thread::scope(|scope| {
        for _ in 0..THREADS_SETUP {
            scope.spawn(|| {
                loop {
                    let next = files.lock().unwrap().pop();
                    let Some((path, data)) = next else { break };
                    backend
                        .write(&path, &data, WriteMode::Replace)
                        .unwrap_or_else(|e| panic!("writing {path}: {e}"));
                }
            });
        }
    });
}

/// Replace creates files and folders, reads return what was written and its version, and every
/// write makes a new version.
pub fn write_read_replace(backend: &dyn Backend) {
    let file = p("ns/a/vm/100/owner");
    let v1 = backend
        .write(&file, b"root@pam\n", WriteMode::Replace)
        .unwrap();
    let read = backend.read(&file).unwrap();
    assert_eq!(read.data, b"root@pam\n");
    assert_eq!(
        backend.read_data(&file).unwrap(),
        read.data,
        "read_data reads the same"
    );
    assert_eq!(
        read.version, v1,
        "a read returns the version the write returned"
    );
    assert_eq!(backend.read(&file).unwrap().version, v1, "reads are stable");

    let v2 = backend
        .write(&file, b"admin@pbs\n", WriteMode::Replace)
        .unwrap();
    assert_ne!(v1, v2, "new bytes, new version");
    let read = backend.read(&file).unwrap();
    assert_eq!(read.data, b"admin@pbs\n");
    assert_eq!(read.version, v2);

    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let blob = p("vm/100/2024-06-05T15:06:40Z/index.json.blob");
    backend.write(&blob, &binary, WriteMode::Replace).unwrap();
    assert_eq!(backend.read(&blob).unwrap().data, binary);
    assert_eq!(backend.read_data(&blob).unwrap(), binary);

    let empty = p("vm/100/2024-06-05T15:06:40Z/.protected");
    backend.write(&empty, b"", WriteMode::CreateOnly).unwrap();
    assert_eq!(backend.read(&empty).unwrap().data, b"");
    let stat = backend.stat(&empty).unwrap();
    assert_eq!((stat.kind, stat.size), (EntryKind::File, Some(0)));
    let stat = backend.stat(&blob).unwrap();
    assert_eq!((stat.kind, stat.size), (EntryKind::File, Some(70_000)));
    assert_eq!(
        files_below(backend, &BackendPath::root()),
        BTreeSet::from([
            "ns/a/vm/100/owner".to_owned(),
            "vm/100/2024-06-05T15:06:40Z/index.json.blob".to_owned(),
            "vm/100/2024-06-05T15:06:40Z/.protected".to_owned(),
        ]),
        "no temporary file is left behind"
    );
}

/// Create-only writes create once and refuse afterwards, leaving the file alone.
pub fn create_only(backend: &dyn Backend) {
    let file = p("ns/a/.namespace");
    let v = backend.write(&file, b"", WriteMode::CreateOnly).unwrap();
    assert_err!(
        backend.write(&file, b"other", WriteMode::CreateOnly),
        Error::AlreadyExists { .. }
    );
    let read = backend.read(&file).unwrap();
    assert_eq!(read.data, b"");
    assert_eq!(read.version, v);
}

/// Among 8 threads creating the same file at once, exactly one wins, and the file holds its
/// bytes.
pub fn create_only_race(backend: &dyn Backend) {
    const THREADS: usize = 8;
    for round in 0..4 {
        let file = p(&format!("race/create-{round}"));
        let barrier = Barrier::new(THREADS);
        let results: Vec<(usize, Result<crate::Version, Error>)> = thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (barrier, file) = (&barrier, &file);
                    scope.spawn(move || {
                        barrier.wait();
                        let data = format!("writer {i}");
                        (
                            i,
                            backend.write(file, data.as_bytes(), WriteMode::CreateOnly),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<&(usize, _)> = results.iter().filter(|(_, r)| r.is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (_, result) in &results {
            if let Err(e) = result {
                assert!(matches!(e, Error::AlreadyExists { .. }), "{e:?}");
            }
        }
        let (winner, version) = winners[0];
        let read = backend.read(&file).unwrap();
        assert_eq!(read.data, format!("writer {winner}").as_bytes());
        assert_eq!(&read.version, version.as_ref().unwrap());
    }
}

/// Chunks: create-only by digest (one winner among racing inserts, a duplicate is not
/// rewritten), read back, existence, and a missing chunk is [`Error::NotFound`].
pub fn chunks(backend: &dyn Backend) {
    const THREADS: usize = 6;
    let digest = ChunkDigest::new([0xab; 32]);
    let missing = ChunkDigest::new([0x01; 32]);
    assert!(!backend.chunk_exists(&digest).unwrap());
    assert!(matches!(
        backend.read_chunk(&missing),
        Err(Error::NotFound { .. })
    ));
    let barrier = Barrier::new(THREADS);
    let outcomes: Vec<ChunkInsert> = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (barrier, digest) = (&barrier, &digest);
                scope.spawn(move || {
                    barrier.wait();
                    backend.insert_chunk(digest, b"chunk bytes").unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stored = outcomes
        .iter()
        .filter(|o| **o == ChunkInsert::Stored)
        .count();
    assert_eq!(stored, 1, "{outcomes:?}");
    assert!(backend.chunk_exists(&digest).unwrap());
    assert_eq!(backend.read_chunk(&digest).unwrap(), b"chunk bytes");
    assert_eq!(
        backend.insert_chunk(&digest, b"other bytes").unwrap(),
        ChunkInsert::Duplicate
    );
    assert_eq!(backend.read_chunk(&digest).unwrap(), b"chunk bytes");
    assert!(!backend.chunk_exists(&missing).unwrap());
}

/// A corrupt chunk set aside: renamed to `<digest>.<n>.bad` with the first free `n` (counting
/// up as copies are set aside, the last slot reused when all are taken), the digest free for a
/// good copy, the authoritative read the same bytes, and a missing chunk [`Error::NotFound`].
pub fn quarantined_chunks(backend: &dyn Backend) {
    let digest = ChunkDigest::new([0xcd; 32]);
    assert!(matches!(
        backend.quarantine_chunk(&digest),
        Err(Error::NotFound { .. })
    ));
    for n in 0..crate::BAD_CHUNK_SLOTS + 2 {
        let bytes = format!("copy {n}");
        assert_eq!(
            backend.insert_chunk(&digest, bytes.as_bytes()).unwrap(),
            ChunkInsert::Stored
        );
        assert_eq!(
            backend.read_chunk_authoritative(&digest).unwrap(),
            bytes.as_bytes()
        );
        let expected = n.min(crate::BAD_CHUNK_SLOTS - 1);
        assert_eq!(
            backend.quarantine_chunk(&digest).unwrap(),
            digest.bad_path(expected),
            "copy {n}"
        );
        assert!(!backend.chunk_exists(&digest).unwrap(), "copy {n}");
        assert!(matches!(
            backend.read_chunk(&digest),
            Err(Error::NotFound { .. })
        ));
    }
}

/// Compare-and-swap replaces only the version that was read.
pub fn compare_and_swap(backend: &dyn Backend) {
    let file = p("vm/100/2024-06-05T15:06:40Z/index.json.blob");
    let v1 = backend.write(&file, b"one", WriteMode::Replace).unwrap();
    if !backend.capabilities().compare_and_swap {
        assert_err!(
            backend.write(&file, b"two", WriteMode::Update(v1)),
            Error::Unsupported { .. }
        );
        return;
    }
    let v2 = backend
        .write(&file, b"two", WriteMode::Update(v1.clone()))
        .unwrap();
    assert_ne!(v1, v2);
    assert_err!(
        backend.write(&file, b"stale", WriteMode::Update(v1.clone())),
        Error::Precondition { .. }
    );
    let read = backend.read(&file).unwrap();
    assert_eq!((read.data.as_slice(), &read.version), (&b"two"[..], &v2));

    // A version from a read works like one from a write.
    let v3 = backend
        .write(&file, b"three", WriteMode::Update(read.version))
        .unwrap();
    assert_eq!(backend.read(&file).unwrap().version, v3);

    // Replacing behind the reader's back invalidates its version.
    backend.write(&file, b"four", WriteMode::Replace).unwrap();
    assert_err!(
        backend.write(&file, b"five", WriteMode::Update(v3.clone())),
        Error::Precondition { .. }
    );

    // A removed file is at no version.
    let gone = p("vm/100/notes");
    let v = backend.write(&gone, b"n", WriteMode::Replace).unwrap();
    backend.remove_file(&gone).unwrap();
    assert_err!(
        backend.write(&gone, b"n2", WriteMode::Update(v)),
        Error::Precondition { .. }
    );
    assert_err!(backend.read(&gone), Error::NotFound { .. });
}

/// Among 8 threads updating the same version at once, exactly one wins.
pub fn compare_and_swap_race(backend: &dyn Backend) {
    if !backend.capabilities().compare_and_swap {
        return;
    }
    const THREADS: usize = 8;
    let file = p("race/manifest");
    for round in 0..4 {
        let base = backend
            .write(
                &file,
                format!("base {round}").as_bytes(),
                WriteMode::Replace,
            )
            .unwrap();
        let barrier = Barrier::new(THREADS);
        let results: Vec<(usize, Result<crate::Version, Error>)> = thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (barrier, file, base) = (&barrier, &file, &base);
                    scope.spawn(move || {
                        barrier.wait();
                        let data = format!("update {round} by {i}");
                        let mode = WriteMode::Update(base.clone());
                        (i, backend.write(file, data.as_bytes(), mode))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (_, result) in &results {
            if let Err(e) = result {
                assert!(matches!(e, Error::Precondition { .. }), "{e:?}");
            }
        }
        let read = backend.read(&file).unwrap();
        assert_eq!(
            read.data,
            format!("update {round} by {}", winners[0].0).as_bytes()
        );
    }
}

/// Racers that write the same bytes (two hosts that read one counter and increment it) still
/// have exactly one winner, for create-only and for compare-and-swap: equal bytes are not the
/// loser's own write.
pub fn races_with_equal_bytes(backend: &dyn Backend) {
    const THREADS: usize = 6;
    let race = |file: &BackendPath, mode: &WriteMode, data: &[u8]| -> usize {
        let barrier = Barrier::new(THREADS);
        let results: Vec<Result<crate::Version, Error>> = thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        backend.write(file, data, mode.clone())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for result in &results {
            if let Err(e) = result {
                assert!(
                    matches!(e, Error::AlreadyExists { .. } | Error::Precondition { .. }),
                    "{e:?}"
                );
            }
        }
        results.iter().filter(|r| r.is_ok()).count()
    };
    for round in 0..3 {
        let file = p(&format!("race/equal-{round}"));
        assert_eq!(
            race(&file, &WriteMode::CreateOnly, b"counter 1"),
            1,
            "create-only"
        );
        assert_err!(
            backend.write(&file, b"counter 1", WriteMode::CreateOnly),
            Error::AlreadyExists { .. }
        );
        if backend.capabilities().compare_and_swap {
            let base = backend.read(&file).unwrap().version;
            let mode = WriteMode::Update(base.clone());
            assert_eq!(race(&file, &mode, b"counter 2"), 1, "compare-and-swap");
            assert_err!(
                backend.write(&file, b"counter 2", WriteMode::Update(base)),
                Error::Precondition { .. }
            );
        }
    }
}

/// A reader racing a writer sees whole old or whole new files, never a mix or a prefix.
pub fn writes_are_never_torn(backend: &dyn Backend) {
    const SIZE: usize = 256 * 1024;
    let file = p("vm/100/2024-06-05T15:06:40Z/drive-scsi0.img.fidx");
    backend
        .write(&file, &vec![b'a'; SIZE], WriteMode::Replace)
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    thread::scope(|scope| {
        scope.spawn(|| {
            for round in 0..12u8 {
                let byte = b'b' + round;
                backend
                    .write(&file, &vec![byte; SIZE], WriteMode::Replace)
                    .unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
            let data = backend.read(&file).unwrap().data;
            assert_eq!(data.len(), SIZE, "a read saw a partial file");
            assert!(
                data.iter().all(|&b| b == data[0]),
                "a read saw a mix of two writes"
            );
            reads += 1;
        }
    });
}

/// Listings show each direct entry once, with its kind, in the documented order.
pub fn listing(backend: &dyn Backend) {
    for file in [
        "vm/100/owner",
        "vm/100/notes",
        "vm/100/2024-01-01T00:00:00Z/index.json.blob",
        "vm/100/2024-01-02T00:00:00Z/index.json.blob",
        "vm/100/2024-01-02T00:00:00Z/sub/deep",
        "vm/1000/owner",
        "vm/100.x/owner",
        "vm/10/owner",
        "vm/Upper",
    ] {
        backend.write(&p(file), b"x", WriteMode::Replace).unwrap();
    }
    let mut got = names(backend, "vm/100");
    if backend.capabilities().sorted_listing {
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted, "listing order");
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("2024-01-01T00:00:00Z".to_owned(), EntryKind::Dir),
            ("2024-01-02T00:00:00Z".to_owned(), EntryKind::Dir),
            ("notes".to_owned(), EntryKind::File),
            ("owner".to_owned(), EntryKind::File),
        ]
    );
    let mut top = names(backend, "vm");
    top.sort();
    assert_eq!(
        top,
        [
            ("10".to_owned(), EntryKind::Dir),
            ("100".to_owned(), EntryKind::Dir),
            ("100.x".to_owned(), EntryKind::Dir),
            ("1000".to_owned(), EntryKind::Dir),
            ("Upper".to_owned(), EntryKind::File),
        ]
    );
    assert_eq!(names(backend, ""), [("vm".to_owned(), EntryKind::Dir)]);
    assert_err!(backend.list(&p("vm/100/owner")), Error::NotFound { .. });
    assert_err!(backend.list(&p("vm/100/missing")), Error::NotFound { .. });
    assert_err!(backend.list(&p("vm/10000")), Error::NotFound { .. });
}

/// 2,500 entries in one folder (more than two S3 pages) are each listed exactly once, and a tree
/// removal removes them all.
pub fn large_listing(backend: &dyn Backend) {
    const N: usize = 2500;
    let folder = p("ns/big/vm");
    let files: Vec<(BackendPath, Vec<u8>)> = (0..N)
        .map(|i| (folder.join(&format!("{i}")).unwrap(), Vec::new()))
        .collect();
    write_all_concurrently(backend, files);
    let listed = names(backend, "ns/big/vm");
    assert_eq!(listed.len(), N, "every entry exactly once");
    if backend.capabilities().sorted_listing {
        assert!(
            listed.windows(2).all(|w| w[0].0 < w[1].0),
            "ascending byte order"
        );
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, kind) in &listed {
        assert_eq!(*kind, EntryKind::File);
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(counts.len(), N, "no duplicates");
    for i in 0..N {
        assert_eq!(counts.get(format!("{i}").as_str()), Some(&1), "entry {i}");
    }
    let report = backend
        .remove_tree(&p("ns/big"), &KeepFilter::protected_snapshots())
        .unwrap();
    assert_eq!((report.removed, report.kept), (N as u64, 0));
    assert!(report.is_complete());
    assert_err!(backend.list(&folder), Error::NotFound { .. });
    assert_err!(backend.stat(&p("ns/big")), Error::NotFound { .. });
}

/// Every operation on a path where nothing is reports NotFound.
pub fn not_found(backend: &dyn Backend) {
    backend
        .write(&p("vm/100/owner"), b"x", WriteMode::Replace)
        .unwrap();
    for missing in ["vm/101/owner", "vm/100/notes", "ct/1/owner"] {
        let missing = p(missing);
        assert_err!(backend.read(&missing), Error::NotFound { .. });
        assert_err!(backend.read_data(&missing), Error::NotFound { .. });
        assert_err!(backend.stat(&missing), Error::NotFound { .. });
        assert_err!(backend.remove_file(&missing), Error::NotFound { .. });
        assert_err!(backend.list(&missing), Error::NotFound { .. });
        assert_err!(
            backend.remove_tree(&missing, &KeepFilter::nothing()),
            Error::NotFound { .. }
        );
        assert_err!(backend.rename(&missing, &p("x/y")), Error::NotFound { .. });
        assert!(!backend.exists(&missing).unwrap());
    }
    // A folder is not a file, and a file is not a folder.
    assert_err!(backend.read(&p("vm/100")), Error::NotFound { .. });
    assert_err!(backend.remove_file(&p("vm/100")), Error::NotFound { .. });
    assert_err!(backend.list(&p("vm/100/owner")), Error::NotFound { .. });
    assert_err!(
        backend.remove_tree(&p("vm/100/owner/x"), &KeepFilter::nothing()),
        Error::NotFound { .. }
    );
    assert!(backend.exists(&p("vm/100/owner")).unwrap());
    assert!(
        !backend.exists(&p("x")).unwrap(),
        "a failed rename creates nothing"
    );
}

/// Paths that cannot name a file, or operations that would leave the tree, are refused.
pub fn refused_paths(backend: &dyn Backend) {
    for bad in [
        "/vm", "vm/", "vm//100", "..", "vm/../x", "./vm", "a\0b", "a\nb",
    ] {
        assert_err!(BackendPath::new(bad), Error::RefusedPath { .. });
    }
    let root = BackendPath::root();
    assert_err!(
        backend.write(&root, b"x", WriteMode::Replace),
        Error::RefusedPath { .. }
    );
    assert_err!(backend.read(&root), Error::RefusedPath { .. });
    assert_err!(backend.remove_file(&root), Error::RefusedPath { .. });
    backend
        .write(&p("vm/100/owner"), b"x", WriteMode::Replace)
        .unwrap();
    assert_err!(
        backend.rename(&p("vm/100"), &p("vm/100/inner")),
        Error::RefusedPath { .. }
    );
    assert_err!(backend.rename(&root, &p("x")), Error::RefusedPath { .. });
    assert_err!(backend.rename(&p("vm"), &root), Error::RefusedPath { .. });
    assert_eq!(backend.read(&p("vm/100/owner")).unwrap().data, b"x");
    assert!(backend.list(&root).is_ok(), "the root always lists");
}

/// Removing a file removes just that file.
pub fn remove_file(backend: &dyn Backend) {
    let (a, b) = (p("vm/100/owner"), p("vm/100/notes"));
    backend.write(&a, b"a", WriteMode::Replace).unwrap();
    backend.write(&b, b"b", WriteMode::Replace).unwrap();
    backend.remove_file(&a).unwrap();
    assert_err!(backend.read(&a), Error::NotFound { .. });
    assert_err!(backend.remove_file(&a), Error::NotFound { .. });
    assert_eq!(backend.read(&b).unwrap().data, b"b");
    assert_eq!(
        files_below(backend, &BackendPath::root()),
        BTreeSet::from(["vm/100/notes".to_owned()])
    );
}

/// PBS's delete by prefix: protected snapshots and their group's owner and notes survive,
/// everything else below the folder goes; then a removal without filter takes the rest.
pub fn remove_tree_keeps_protected(backend: &dyn Backend) {
    let keep = [
        "ns/a/vm/100/owner",
        "ns/a/vm/100/notes",
        "ns/a/vm/100/2024-01-01T00:00:00Z/.protected",
        "ns/a/vm/100/2024-01-01T00:00:00Z/index.json.blob",
        "ns/a/vm/100/2024-01-01T00:00:00Z/drive-scsi0.img.fidx",
    ];
    let go = [
        "ns/a/.namespace",
        "ns/a/vm/100/2024-01-02T00:00:00Z/index.json.blob",
        "ns/a/vm/101/owner",
        "ns/a/vm/101/notes",
        "ns/a/vm/101/2024-01-01T00:00:00Z/index.json.blob",
        "ns/a/ns/b/.namespace",
        "ns/a/ns/b/ct/7/owner",
    ];
    let outside = [
        "ns/ab/vm/100/owner",
        "ns/a.b/vm/1/owner",
        "vm/100/owner",
        "ns/.namespace",
    ];
    let all: Vec<(BackendPath, Vec<u8>)> = keep
        .iter()
        .chain(&go)
        .chain(&outside)
        .map(|f| (p(f), f.as_bytes().to_vec()))
        .collect();
    write_all_concurrently(backend, all);

    let report = backend
        .remove_tree(&p("ns/a"), &KeepFilter::protected_snapshots())
        .unwrap();
    assert_eq!(
        (report.removed, report.kept),
        (go.len() as u64, keep.len() as u64)
    );
    assert!(!report.is_complete());
    let expected: BTreeSet<String> = keep.iter().chain(&outside).map(|s| s.to_string()).collect();
    assert_eq!(files_below(backend, &BackendPath::root()), expected);
    for file in keep.iter().chain(&outside) {
        assert_eq!(backend.read(&p(file)).unwrap().data, file.as_bytes());
    }

    let report = backend
        .remove_tree(&p("ns/a"), &KeepFilter::nothing())
        .unwrap();
    assert_eq!((report.removed, report.kept), (keep.len() as u64, 0));
    assert_err!(backend.stat(&p("ns/a")), Error::NotFound { .. });
    let expected: BTreeSet<String> = outside.iter().map(|s| s.to_string()).collect();
    assert_eq!(files_below(backend, &BackendPath::root()), expected);
}

/// A tree removal ends at a `/` boundary: `vm/100` never touches `vm/1000` or `vm/100.x`.
pub fn remove_tree_slash_boundary(backend: &dyn Backend) {
    let survivors = [
        "vm/1000/owner",
        "vm/100.x/owner",
        "vm/100-1/owner",
        "vm/10/owner",
        "vm/1001/2024-01-01T00:00:00Z/index.json.blob",
    ];
    let files: Vec<(BackendPath, Vec<u8>)> = survivors
        .iter()
        .chain(&[
            "vm/100/owner",
            "vm/100/2024-01-01T00:00:00Z/index.json.blob",
        ])
        .map(|f| (p(f), b"x".to_vec()))
        .collect();
    write_all_concurrently(backend, files);
    let report = backend
        .remove_tree(&p("vm/100"), &KeepFilter::nothing())
        .unwrap();
    assert_eq!((report.removed, report.kept), (2, 0));
    let expected: BTreeSet<String> = survivors.iter().map(|s| s.to_string()).collect();
    assert_eq!(files_below(backend, &BackendPath::root()), expected);
    assert_err!(backend.stat(&p("vm/100")), Error::NotFound { .. });
}

/// Renames move files and whole trees to free targets, and refuse taken ones.
pub fn rename(backend: &dyn Backend) {
    let tree = [
        "owner",
        "notes",
        "2024-01-01T00:00:00Z/index.json.blob",
        "2024-01-01T00:00:00Z/.protected",
    ];
    for file in tree {
        backend
            .write(
                &p(&format!("vm/100/{file}")),
                file.as_bytes(),
                WriteMode::Replace,
            )
            .unwrap();
    }
    backend
        .write(&p("vm/200/owner"), b"taken", WriteMode::Replace)
        .unwrap();

    backend.rename(&p("vm/100"), &p("ns/new/vm/100")).unwrap();
    assert_err!(backend.stat(&p("vm/100")), Error::NotFound { .. });
    let moved: BTreeSet<String> = tree.iter().map(|f| format!("ns/new/vm/100/{f}")).collect();
    assert_eq!(files_below(backend, &p("ns/new")), moved);
    for file in tree {
        assert_eq!(
            backend
                .read(&p(&format!("ns/new/vm/100/{file}")))
                .unwrap()
                .data,
            file.as_bytes()
        );
    }

    assert_err!(
        backend.rename(&p("ns/new/vm/100"), &p("vm/200")),
        Error::AlreadyExists { .. }
    );
    assert_err!(
        backend.rename(&p("ns/new/vm/100/notes"), &p("vm/200/owner")),
        Error::AlreadyExists { .. }
    );
    assert_eq!(backend.read(&p("vm/200/owner")).unwrap().data, b"taken");
    assert_eq!(
        files_below(backend, &p("ns/new")),
        moved,
        "refused renames change nothing"
    );

    backend
        .rename(&p("ns/new/vm/100/notes"), &p("vm/200/notes"))
        .unwrap();
    assert_eq!(backend.read(&p("vm/200/notes")).unwrap().data, b"notes");
    assert_err!(
        backend.read(&p("ns/new/vm/100/notes")),
        Error::NotFound { .. }
    );
}

/// Stat tells files from folders, and the root is a folder.
pub fn stat_kinds(backend: &dyn Backend) {
    backend
        .write(&p("vm/100/owner"), b"abc", WriteMode::Replace)
        .unwrap();
    let file = backend.stat(&p("vm/100/owner")).unwrap();
    assert_eq!((file.kind, file.size), (EntryKind::File, Some(3)));
    for folder in ["vm", "vm/100"] {
        assert_eq!(backend.stat(&p(folder)).unwrap().kind, EntryKind::Dir);
    }
    assert_eq!(
        backend.stat(&BackendPath::root()).unwrap().kind,
        EntryKind::Dir
    );
    assert_err!(backend.stat(&p("vm/10")), Error::NotFound { .. });
    assert!(backend.exists(&p("vm")).unwrap());
}

/// Folders: created by writes; `create_dir_all` makes empty ones where the backend has them.
pub fn folders(backend: &dyn Backend) {
    let folder = p("ns/a/ns/b");
    backend.create_dir_all(&folder).unwrap();
    backend.create_dir_all(&folder).unwrap();
    if backend.capabilities().empty_folders {
        assert_eq!(backend.stat(&folder).unwrap().kind, EntryKind::Dir);
        assert!(names(backend, "ns/a/ns/b").is_empty());
        let report = backend
            .remove_tree(&p("ns"), &KeepFilter::nothing())
            .unwrap();
        assert_eq!((report.removed, report.kept), (0, 0));
    } else {
        assert_err!(backend.list(&folder), Error::NotFound { .. });
        assert_err!(backend.stat(&folder), Error::NotFound { .. });
    }
    assert_err!(backend.stat(&p("ns")), Error::NotFound { .. });
    // A marker makes a folder exist everywhere (PBS's `.namespace`).
    backend
        .write(
            &folder.join(".namespace").unwrap(),
            b"",
            WriteMode::CreateOnly,
        )
        .unwrap();
    assert_eq!(backend.stat(&folder).unwrap().kind, EntryKind::Dir);
    assert_eq!(
        names(backend, "ns/a/ns/b"),
        [(".namespace".to_owned(), EntryKind::File)]
    );
}

/// The blocking API works when called from inside tokio runtimes of both flavours (in their
/// async context, where a nested `block_on` would panic). Feature `s3` (which brings tokio).
#[cfg(feature = "s3")]
pub fn blocking_inside_runtimes(backend: &dyn Backend) {
    let exercise = |tag: &str| {
        let file = p(&format!("rt/{tag}/owner"));
        let v = backend
            .write(&file, tag.as_bytes(), WriteMode::CreateOnly)
            .unwrap();
        assert_eq!(backend.read(&file).unwrap().version, v);
        assert_eq!(names(backend, &format!("rt/{tag}")).len(), 1);
        backend
            .remove_tree(&p(&format!("rt/{tag}")), &KeepFilter::nothing())
            .unwrap();
    };
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    current.block_on(async { exercise("current") });
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    multi.block_on(async {
        // After an await, so the call really runs inside the polled future.
        tokio::task::yield_now().await;
        exercise("multi");
    });
}

/// The authoritative methods agree with what was written: reads with their versions, existence
/// of files and folders, recursive file lists in path order that end at a `/` boundary.
pub fn authoritative_reads(backend: &dyn Backend) {
    let files = [
        "vm/100/owner",
        "vm/100/2024-01-01T00:00:00Z/index.json.blob",
        "vm/100/2024-01-01T00:00:00Z/sub/deep",
        "vm/1000/owner",
        "ct/7/owner",
    ];
    write_all_concurrently(
        backend,
        files
            .iter()
            .map(|f| (p(f), f.as_bytes().to_vec()))
            .collect(),
    );
    for file in files {
        let read = backend.read(&p(file)).unwrap();
        let authoritative = backend.read_authoritative(&p(file)).unwrap();
        assert_eq!(authoritative.data, file.as_bytes());
        assert_eq!(authoritative.version, read.version, "{file}");
        assert!(backend.exists_authoritative(&p(file)).unwrap(), "{file}");
    }
    for folder in ["vm", "vm/100", "vm/100/2024-01-01T00:00:00Z/sub", "ct"] {
        assert!(
            backend.exists_authoritative(&p(folder)).unwrap(),
            "{folder}"
        );
    }
    assert!(backend.exists_authoritative(&BackendPath::root()).unwrap());
    for missing in ["vm/10", "vm/100/notes", "host", "vm/100/owner/x"] {
        assert!(
            !backend.exists_authoritative(&p(missing)).unwrap(),
            "{missing}"
        );
        assert_err!(
            backend.read_authoritative(&p(missing)),
            Error::NotFound { .. }
        );
    }
    assert_err!(
        backend.read_authoritative(&BackendPath::root()),
        Error::RefusedPath { .. }
    );

    let listed = |folder: &str| -> Vec<String> {
        backend
            .list_files_authoritative(&p(folder))
            .unwrap_or_else(|e| panic!("listing {folder}: {e}"))
            .iter()
            .map(|f| f.to_string())
            .collect()
    };
    assert_eq!(
        listed("vm/100"),
        [
            "vm/100/2024-01-01T00:00:00Z/index.json.blob",
            "vm/100/2024-01-01T00:00:00Z/sub/deep",
            "vm/100/owner",
        ],
        "every file below, in path order, nothing from vm/1000"
    );
    assert_eq!(
        listed("vm"),
        [
            "vm/100/2024-01-01T00:00:00Z/index.json.blob",
            "vm/100/2024-01-01T00:00:00Z/sub/deep",
            "vm/100/owner",
            "vm/1000/owner",
        ]
    );
    let mut everything: Vec<String> = files.iter().map(|f| f.to_string()).collect();
    everything.sort_by_key(|f| p(f));
    assert_eq!(listed(""), everything);
    for missing in ["vm/10", "host", "vm/100/owner"] {
        assert_err!(
            backend.list_files_authoritative(&p(missing)),
            Error::NotFound { .. }
        );
    }
    // An empty folder: listed as empty where folders exist by themselves, absent where they
    // exist only through keys.
    backend.create_dir_all(&p("ns/empty")).unwrap();
    match backend.list_files_authoritative(&p("ns/empty")) {
        Ok(files) => assert!(files.is_empty(), "{files:?}"),
        Err(Error::NotFound { .. }) => {}
        Err(e) => panic!("listing an empty folder: {e}"),
    }
}

/// Removing a set of files removes exactly those: not their siblings, not their folders, not
/// a file that shares a name prefix; missing and repeated files are fine; the root is refused
/// before anything goes.
pub fn remove_files(backend: &dyn Backend) {
    let stay = [
        "vm/100/notes",
        "vm/100/2024-01-01T00:00:00Z/sub/deep",
        "vm/1000/owner",
        "vm/100/owner.bak",
    ];
    let go = [
        "vm/100/owner",
        "vm/100/2024-01-01T00:00:00Z/index.json.blob",
        "vm/100/2024-01-01T00:00:00Z/drive-scsi0.img.fidx",
    ];
    write_all_concurrently(
        backend,
        stay.iter()
            .chain(&go)
            .map(|f| (p(f), b"x".to_vec()))
            .collect(),
    );

    let mut given: Vec<BackendPath> = go.iter().map(|f| p(f)).collect();
    given.push(p(go[0]));
    given.push(p("vm/100/missing"));
    assert_err!(
        backend.remove_files(&[p("vm/100/notes"), BackendPath::root()]),
        Error::RefusedPath { .. }
    );
    assert!(
        backend.exists(&p("vm/100/notes")).unwrap(),
        "a refusal removes nothing"
    );

    let report = backend.remove_files(&given).unwrap();
    // Object stores cannot tell a missing key from a removed one (S3's batch delete reports
    // both as deleted): the missing file may count there, nowhere else.
    assert!(
        report.removed == go.len() as u64 || report.removed == go.len() as u64 + 1,
        "{report:?}"
    );
    assert_eq!(report.kept, 0);
    let expected: BTreeSet<String> = stay.iter().map(|s| s.to_string()).collect();
    assert_eq!(files_below(backend, &BackendPath::root()), expected);
    for file in go {
        assert_err!(backend.read(&p(file)), Error::NotFound { .. });
        assert!(!backend.exists_authoritative(&p(file)).unwrap());
    }
    assert_eq!(
        backend
            .stat(&p("vm/100/2024-01-01T00:00:00Z"))
            .unwrap()
            .kind,
        EntryKind::Dir,
        "folders stay"
    );

    let again = backend.remove_files(&[p("vm/100/owner")]).unwrap();
    assert!(again.removed <= 1, "{again:?}");
    assert_eq!(backend.remove_files(&[]).unwrap().removed, 0);
    assert_eq!(files_below(backend, &BackendPath::root()), expected);
}

/// A folder is removed only while nothing is below it, decided at a `/` boundary; a missing
/// folder counts as removed; the root is refused.
pub fn remove_folder_if_empty(backend: &dyn Backend) {
    let snapshot = "vm/100/2024-01-01T00:00:00Z";
    let files = [
        "vm/100/owner",
        "vm/100/2024-01-01T00:00:00Z/index.json.blob",
        "vm/1000/owner",
    ];
    write_all_concurrently(
        backend,
        files.iter().map(|f| (p(f), b"x".to_vec())).collect(),
    );
    let all: BTreeSet<String> = files.iter().map(|s| s.to_string()).collect();
    for full in ["vm", "vm/100", snapshot] {
        assert!(!backend.remove_folder_if_empty(&p(full)).unwrap(), "{full}");
    }
    assert_eq!(
        files_below(backend, &BackendPath::root()),
        all,
        "nothing changes"
    );

    backend.remove_file(&p(files[1])).unwrap();
    assert!(backend.remove_folder_if_empty(&p(snapshot)).unwrap());
    assert_err!(backend.stat(&p(snapshot)), Error::NotFound { .. });
    assert!(!backend.exists_authoritative(&p(snapshot)).unwrap());

    backend.remove_file(&p(files[0])).unwrap();
    assert!(
        backend.remove_folder_if_empty(&p("vm/100")).unwrap(),
        "vm/1000 is not below vm/100"
    );
    assert_err!(backend.stat(&p("vm/100")), Error::NotFound { .. });
    assert_eq!(backend.read(&p("vm/1000/owner")).unwrap().data, b"x");
    assert!(!backend.remove_folder_if_empty(&p("vm")).unwrap());

    assert!(backend.remove_folder_if_empty(&p("ns/never")).unwrap());
    backend.create_dir_all(&p("ns/made")).unwrap();
    assert!(backend.remove_folder_if_empty(&p("ns/made")).unwrap());
    assert_err!(backend.stat(&p("ns/made")), Error::NotFound { .. });
    assert_err!(
        backend.remove_folder_if_empty(&BackendPath::root()),
        Error::RefusedPath { .. }
    );
    assert_eq!(
        files_below(backend, &BackendPath::root()),
        BTreeSet::from(["vm/1000/owner".to_owned()])
    );
}
