//! The cached object store: refresh from the bucket (incremental), reads from the cache without
//! requests (also after a restart), versions across writers sharing one bucket; on the in-memory
//! store and on a real S3 server (moto).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use keepsake_backend::conformance::files_below;
use keepsake_backend::{
    Backend, BackendPath, CachedBackend, EntryKind, Error, LocalBackend, ObjectBackend,
    RequestCounts, SyncLevel, WriteMode,
};
use object_store::memory::InMemory;

fn p(path: &str) -> BackendPath {
    path.parse().unwrap()
}

/// Two nodes sharing one bucket, each with its own cache folder; `remote` makes a new client of
/// the bucket (for a node that restarts).
struct TwoNodes {
    a: CachedBackend,
    b: CachedBackend,
    remote: Box<dyn Fn() -> ObjectBackend>,
    dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl TwoNodes {
    /// Node b as a new process: a new backend over the same cache folder and bucket.
    fn restart_b(&mut self) {
        let cache = LocalBackend::open(self.dirs.1.path(), SyncLevel::None).unwrap();
        self.b = CachedBackend::open(cache, (self.remote)()).unwrap();
    }

    fn b_requests<T>(&self, f: impl FnOnce(&CachedBackend) -> T) -> (T, RequestCounts) {
        let before = self.b.remote().requests();
        let out = f(&self.b);
        (out, self.b.remote().requests() - before)
    }
}

fn nodes(remote: impl Fn() -> ObjectBackend + 'static) -> TwoNodes {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cache = |dir: &tempfile::TempDir| LocalBackend::open(dir.path(), SyncLevel::None).unwrap();
    TwoNodes {
        a: CachedBackend::new(cache(&da), remote()),
        b: CachedBackend::new(cache(&db), remote()),
        remote: Box::new(remote),
        dirs: (da, db),
    }
}

fn in_memory_nodes() -> TwoNodes {
    let shared = Arc::new(InMemory::new());
    nodes(move || ObjectBackend::with_store(shared.clone(), "store1").unwrap())
}

fn s3_nodes(test: &str) -> Option<TwoNodes> {
    let config = common::s3_config(test)?;
    let store = keepsake_testkit::s3::unique_prefix(test);
    Some(nodes(move || ObjectBackend::s3(&config, &store).unwrap()))
}

const CONTENT: [&str; 7] = [
    "vm/100/owner",
    "vm/100/notes",
    "vm/100/2024-01-01T00:00:00Z/index.json.blob",
    "vm/100/2024-01-01T00:00:00Z/.protected",
    "ct/7/owner",
    "ns/a/host/h1/owner",
    "ns/a/ns/b/vm/1/2024-01-01T00:00:00Z/index.json.blob",
];
const MARKERS: [&str; 3] = [
    "ns/a/.namespace",
    "ns/a/ns/b/.namespace",
    "ns/empty/.namespace",
];

fn refresh_rebuilds_the_cache(n: TwoNodes) {
    for file in CONTENT.iter().chain(&MARKERS) {
        n.a.write(&p(file), file.as_bytes(), WriteMode::CreateOnly)
            .unwrap();
    }
    // Node b's cache holds stale content and things a refresh must leave alone.
    let b_cache = n.b.cache();
    for stale in ["vm/999/owner", "host/old/owner", "ns/gone/vm/1/owner"] {
        b_cache
            .write(&p(stale), b"stale", WriteMode::Replace)
            .unwrap();
    }
    b_cache
        .write(&p(".gc-status"), b"{}", WriteMode::Replace)
        .unwrap();
    b_cache.create_dir_all(&p(".chunks/0000")).unwrap();
    b_cache.create_dir_all(&p("vm/empty-group")).unwrap();

    let report = n.b.refresh().unwrap();
    assert_eq!(report.listed, (CONTENT.len() + MARKERS.len()) as u64);
    assert_eq!(report.downloaded, CONTENT.len() as u64);
    assert_eq!(report.unchanged, 0);
    assert_eq!(report.removed, 3, "the stale files");
    assert_eq!(report.skipped_markers, MARKERS.len() as u64);
    assert_eq!(report.skipped_invalid, 0);
    assert_eq!(
        report.requests.get,
        CONTENT.len() as u64,
        "{}",
        report.requests
    );
    assert!(report.requests.list >= 1, "{}", report.requests);

    let mut expected: BTreeSet<String> = CONTENT.iter().map(|s| s.to_string()).collect();
    expected.insert(".gc-status".into());
    expected.insert(keepsake_backend::CACHE_MARKER.into());
    expected.insert(keepsake_backend::REFRESH_LOCK.into());
    assert_eq!(files_below(b_cache, &BackendPath::root()), expected);
    assert_eq!(
        b_cache.stat(&p(".chunks/0000")).unwrap().kind,
        EntryKind::Dir
    );
    for gone in [
        "ns/empty",
        "vm/999",
        "host/old",
        "ns/gone",
        "vm/empty-group",
    ] {
        assert!(!b_cache.exists(&p(gone)).unwrap(), "{gone}");
    }
    assert_eq!(
        keepsake_backend::cache_identity(b_cache.root()).unwrap(),
        Some(n.b.remote().identity().clone()),
        "a refresh claims the cache"
    );

    // After a refresh, reads come from the cache alone, with the bucket's versions.
    let (_, used) = n.b_requests(|b| {
        for file in CONTENT {
            let read = b.read(&p(file)).unwrap();
            assert_eq!(read.data, file.as_bytes());
            assert_eq!(read.version, n.a.read(&p(file)).unwrap().version);
        }
    });
    assert_eq!(used.total(), 0, "{used}");
}

fn refresh_downloads_only_what_changed(mut n: TwoNodes) {
    const FILES: usize = 40;
    let files: Vec<BackendPath> = (0..FILES)
        .map(|i| {
            p(&format!(
                "vm/{}/2024-01-01T00:00:00Z/f{i:02}.blob",
                100 + i % 5
            ))
        })
        .collect();
    for file in &files {
        n.a.write(file, file.as_str().as_bytes(), WriteMode::Replace)
            .unwrap();
    }
    let first = n.b.refresh().unwrap();
    assert_eq!((first.downloaded, first.unchanged), (FILES as u64, 0));

    let second = n.b.refresh().unwrap();
    assert_eq!(
        (second.downloaded, second.unchanged, second.removed),
        (0, FILES as u64, 0)
    );
    assert_eq!(
        second.requests.total(),
        second.requests.list,
        "only listing requests: {}",
        second.requests
    );

    // A new process over the same cache knows the cache is current (the records persist).
    n.restart_b();
    let third = n.b.refresh().unwrap();
    assert_eq!((third.downloaded, third.unchanged), (0, FILES as u64));
    assert_eq!(
        third.requests.total(),
        third.requests.list,
        "{}",
        third.requests
    );

    // One object changes, with the same size: exactly one download.
    let changed = &files[7];
    let mut bytes = changed.as_str().as_bytes().to_vec();
    bytes[0] ^= 0x20;
    n.a.write(changed, &bytes, WriteMode::Replace).unwrap();
    let fourth = n.b.refresh().unwrap();
    assert_eq!((fourth.downloaded, fourth.unchanged), (1, FILES as u64 - 1));
    assert_eq!(fourth.requests.get, 1, "{}", fourth.requests);
    assert_eq!(n.b.cache().read(changed).unwrap().data, bytes);

    // One object goes: its cache copy goes, and the folder it leaves empty.
    let lonely = p("vm/200/owner");
    n.a.write(&lonely, b"root@pam\n", WriteMode::Replace)
        .unwrap();
    n.b.refresh().unwrap();
    assert!(n.b.cache().exists(&lonely).unwrap());
    n.a.remove_file(&lonely).unwrap();
    let fifth = n.b.refresh().unwrap();
    assert_eq!((fifth.downloaded, fifth.removed), (0, 1));
    assert!(!n.b.cache().exists(&p("vm/200")).unwrap());

    // A cache file changed behind the backend's back is not trusted by reads...
    let tampered = &files[3];
    std::fs::write(n.b.cache().local_path(tampered), b"tampered").unwrap();
    let (read, used) = n.b_requests(|b| b.read(tampered).unwrap());
    assert_eq!(read.data, tampered.as_str().as_bytes());
    assert_eq!(used.get, 1, "{used}");
    // ...nor by a refresh, when its size differs.
    std::fs::write(n.b.cache().local_path(tampered), b"tampered").unwrap();
    let sixth = n.b.refresh().unwrap();
    assert_eq!(sixth.downloaded, 1);
    assert_eq!(
        n.b.cache().read(tampered).unwrap().data,
        tampered.as_str().as_bytes()
    );

    // Things outside the content folders are never touched.
    for (file, data) in [
        (".lock", &b""[..]),
        (".chunks/0000/x", b"chunk"),
        (".keepsake/intents/1.intent", b"{}"),
    ] {
        n.b.cache()
            .write(&p(file), data, WriteMode::Replace)
            .unwrap();
    }
    n.b.refresh().unwrap();
    for file in [".lock", ".chunks/0000/x", ".keepsake/intents/1.intent"] {
        assert!(n.b.cache().exists(&p(file)).unwrap(), "{file}");
    }
}

fn reads_after_a_restart_need_no_request(mut n: TwoNodes) {
    for file in CONTENT {
        n.b.write(&p(file), file.as_bytes(), WriteMode::CreateOnly)
            .unwrap();
    }
    n.restart_b();
    let (_, used) = n.b_requests(|b| {
        for file in CONTENT {
            let read = b.read(&p(file)).unwrap();
            assert_eq!(read.data, file.as_bytes());
            assert_eq!(read.version, n.a.remote().read(&p(file)).unwrap().version);
        }
        // The content only: the cache's bookkeeping (`.keepsake/`) is not listed.
        assert_eq!(files_below(b, &BackendPath::root()).len(), CONTENT.len());
    });
    assert_eq!(used.total(), 0, "{used}");

    // A cache file changed behind the backend's back: that one read fetches, and repairs.
    let file = p(CONTENT[2]);
    std::fs::write(n.b.cache().local_path(&file), b"tampered").unwrap();
    let (read, used) = n.b_requests(|b| b.read(&file).unwrap());
    assert_eq!(read.data, CONTENT[2].as_bytes());
    assert_eq!((used.get, used.total()), (1, 1), "{used}");
    n.restart_b();
    let (_, used) = n.b_requests(|b| b.read(&file).unwrap());
    assert_eq!(used.total(), 0, "the repaired copy has its record: {used}");

    // A cache file moved behind the backend's back: its record names the old path.
    let moved = p("vm/100/notes.moved");
    std::fs::rename(
        n.b.cache().local_path(&p("vm/100/notes")),
        n.b.cache().local_path(&moved),
    )
    .unwrap();
    let (result, used) = n.b_requests(|b| b.read(&moved));
    assert!(matches!(result, Err(Error::NotFound { .. })), "{result:?}");
    assert_eq!(used.get, 1, "{used}");
    assert!(
        n.b.cache().exists(&moved).unwrap(),
        "a read never removes a cache file (a refresh does)"
    );
}

fn versions_work_across_nodes(n: TwoNodes) {
    let file = p("vm/100/2024-01-01T00:00:00Z/index.json.blob");
    n.a.write(&file, b"v1", WriteMode::Replace).unwrap();

    // b never saw the file: its first read fetches it from the bucket, the next does not.
    let (seen_by_b, used) = n.b_requests(|b| b.read(&file).unwrap());
    assert_eq!(seen_by_b.data, b"v1");
    assert_eq!(used.get, 1);
    let (again, used) = n.b_requests(|b| b.read(&file).unwrap());
    assert_eq!(again.version, seen_by_b.version);
    assert_eq!(used.total(), 0);

    // a updates; b's update from its stale read must lose, and b then sees a's bytes without
    // another request (the conflict repaired its cache).
    let seen_by_a = n.a.read(&file).unwrap();
    n.a.write(&file, b"v2 by a", WriteMode::Update(seen_by_a.version))
        .unwrap();
    assert!(matches!(
        n.b.write(&file, b"v2 by b", WriteMode::Update(seen_by_b.version)),
        Err(Error::Precondition { .. })
    ));
    let (fresh, used) = n.b_requests(|b| b.read(&file).unwrap());
    assert_eq!(fresh.data, b"v2 by a");
    assert_eq!(used.total(), 0, "{used}");
    n.b.write(&file, b"v3 by b", WriteMode::Update(fresh.version))
        .unwrap();
    assert_eq!(n.a.remote().read(&file).unwrap().data, b"v3 by b");

    // A cache file changed behind the backend's back is not trusted.
    std::fs::write(n.b.cache().local_path(&file), b"tampered").unwrap();
    assert_eq!(n.b.read(&file).unwrap().data, b"v3 by b");
    assert_eq!(
        n.b.cache().read(&file).unwrap().data,
        b"v3 by b",
        "repaired"
    );

    // Create-only conflicts between nodes: the bucket decides, and the loser's cache learns
    // what the bucket holds.
    let owner = p("vm/200/owner");
    n.a.write(&owner, b"a", WriteMode::CreateOnly).unwrap();
    assert!(matches!(
        n.b.write(&owner, b"b", WriteMode::CreateOnly),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(n.b.cache().read(&owner).unwrap().data, b"a");
    let (read, used) = n.b_requests(|b| b.read(&owner).unwrap());
    assert_eq!(read.version, n.a.read(&owner).unwrap().version);
    assert_eq!(used.total(), 0, "{used}");
}

fn writes_go_to_the_bucket_first(n: TwoNodes) {
    let file = p("vm/100/owner");
    n.a.write(&file, b"root@pam\n", WriteMode::Replace).unwrap();
    assert_eq!(n.a.remote().read(&file).unwrap().data, b"root@pam\n");
    assert_eq!(n.a.cache().read(&file).unwrap().data, b"root@pam\n");
    n.a.remove_file(&file).unwrap();
    assert!(matches!(
        n.a.remote().read(&file),
        Err(Error::NotFound { .. })
    ));
    assert!(!n.a.cache().exists(&file).unwrap());
}

macro_rules! on_both {
    ($($check:ident),* $(,)?) => {
        mod in_memory {
            use super::*;
            $(
                #[test]
                fn $check() {
                    super::$check(in_memory_nodes());
                }
            )*
        }
        mod s3 {
            use super::*;
            $(
                #[test]
                fn $check() {
                    if let Some(n) = s3_nodes(concat!("cached_", stringify!($check))) {
                        super::$check(n);
                    }
                }
            )*
        }
    };
}

on_both!(
    refresh_rebuilds_the_cache,
    refresh_downloads_only_what_changed,
    reads_after_a_restart_need_no_request,
    versions_work_across_nodes,
    writes_go_to_the_bucket_first,
);

/// A refresh and the changes to its cache exclude each other (any process: a flock on
/// `.keepsake/refresh.lock`): a refresh does not start while a change is in progress, and a change
/// does not start while a refresh runs; each says so after its wait.
#[test]
fn refresh_and_changes_exclude_each_other() {
    use rustix::fs::{FlockOperation, flock};
    let dir = tempfile::tempdir().unwrap();
    let wait = std::time::Duration::from_millis(100);
    let cached = CachedBackend::new(
        LocalBackend::open(dir.path(), SyncLevel::None).unwrap(),
        ObjectBackend::in_memory("store1").unwrap(),
    )
    .with_lock_waits(wait, wait);
    cached
        .write(&p("vm/100/owner"), b"root@pam\n", WriteMode::CreateOnly)
        .unwrap();
    let lock_path = dir.path().join(keepsake_backend::REFRESH_LOCK);
    let held = std::fs::File::open(&lock_path).unwrap();
    // A change in progress (another process's, as far as flock can tell).
    flock(&held, FlockOperation::LockShared).unwrap();
    let err = cached.refresh().unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    // Other changes may run side by side.
    cached
        .write(&p("vm/100/notes"), b"n", WriteMode::Replace)
        .unwrap();
    // A refresh in progress: changes wait, then give up; reads go on.
    flock(&held, FlockOperation::LockExclusive).unwrap();
    let err = cached
        .write(&p("vm/100/notes"), b"m", WriteMode::Replace)
        .unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    assert_eq!(cached.read(&p("vm/100/notes")).unwrap().data, b"n");
    drop(held);
    cached.refresh().unwrap();
}
