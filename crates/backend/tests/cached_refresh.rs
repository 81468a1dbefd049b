//! The cached object store: refresh from the bucket, reads from the cache, versions across
//! writers sharing one bucket; on the in-memory store and on a real S3 server (moto).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use keepsake_backend::conformance::files_below;
use keepsake_backend::{
    Backend, BackendPath, CachedBackend, Error, LocalBackend, ObjectBackend, SyncLevel, WriteMode,
};
use object_store::memory::InMemory;

fn p(path: &str) -> BackendPath {
    path.parse().unwrap()
}

/// Two nodes sharing one bucket, each with its own cache folder.
struct TwoNodes {
    a: CachedBackend,
    b: CachedBackend,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn nodes(remote: impl Fn() -> ObjectBackend) -> TwoNodes {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cache = |dir: &tempfile::TempDir| LocalBackend::open(dir.path(), SyncLevel::None).unwrap();
    TwoNodes {
        a: CachedBackend::new(cache(&da), remote()),
        b: CachedBackend::new(cache(&db), remote()),
        _dirs: (da, db),
    }
}

fn in_memory_nodes() -> TwoNodes {
    let shared = Arc::new(InMemory::new());
    nodes(|| ObjectBackend::with_store(shared.clone(), "store1").unwrap())
}

fn s3_nodes(test: &str) -> Option<TwoNodes> {
    let config = common::s3_config(test)?;
    let store = keepsake_testkit::s3::unique_prefix(test);
    Some(nodes(|| ObjectBackend::s3(&config, &store).unwrap()))
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

    let report = n.b.refresh().unwrap();
    assert_eq!(report.listed, (CONTENT.len() + MARKERS.len()) as u64);
    assert_eq!(report.downloaded, CONTENT.len() as u64);
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
    assert_eq!(files_below(b_cache, &BackendPath::root()), expected);
    assert_eq!(
        b_cache.stat(&p(".chunks/0000")).unwrap().kind,
        keepsake_backend::EntryKind::Dir
    );
    assert!(
        !b_cache.exists(&p("ns/empty")).unwrap(),
        "markers are not downloaded"
    );
    let top: Vec<String> = b_cache
        .list(&BackendPath::root())
        .unwrap()
        .map(|e| e.unwrap().name)
        .collect();
    assert!(
        top.iter().all(|name| !name.starts_with(".tmp_refresh")),
        "{top:?}"
    );

    // After a refresh, reads come from the cache alone, with the bucket's versions.
    let before = n.b.remote().requests();
    for file in CONTENT {
        let read = n.b.read(&p(file)).unwrap();
        assert_eq!(read.data, file.as_bytes());
        assert_eq!(read.version, n.a.read(&p(file)).unwrap().version);
    }
    assert_eq!((n.b.remote().requests() - before).total(), 0);
}

fn versions_work_across_nodes(n: TwoNodes) {
    let file = p("vm/100/2024-01-01T00:00:00Z/index.json.blob");
    n.a.write(&file, b"v1", WriteMode::Replace).unwrap();

    // b never saw the file: its first read fetches it from the bucket, the next does not.
    let before = n.b.remote().requests();
    let seen_by_b = n.b.read(&file).unwrap();
    assert_eq!(seen_by_b.data, b"v1");
    assert_eq!((n.b.remote().requests() - before).get, 1);
    let before = n.b.remote().requests();
    assert_eq!(n.b.read(&file).unwrap().version, seen_by_b.version);
    assert_eq!((n.b.remote().requests() - before).total(), 0);

    // a updates; b's update from its stale read must lose, and b then sees a's bytes.
    let seen_by_a = n.a.read(&file).unwrap();
    n.a.write(&file, b"v2 by a", WriteMode::Update(seen_by_a.version))
        .unwrap();
    assert!(matches!(
        n.b.write(&file, b"v2 by b", WriteMode::Update(seen_by_b.version)),
        Err(Error::Precondition { .. })
    ));
    let fresh = n.b.read(&file).unwrap();
    assert_eq!(fresh.data, b"v2 by a");
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

    // Create-only conflicts between nodes: the bucket decides.
    let owner = p("vm/200/owner");
    n.a.write(&owner, b"a", WriteMode::CreateOnly).unwrap();
    assert!(matches!(
        n.b.write(&owner, b"b", WriteMode::CreateOnly),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(
        !n.b.cache().exists(&owner).unwrap(),
        "a refused write leaves the cache alone"
    );
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

#[test]
fn in_memory_refresh_rebuilds_the_cache() {
    refresh_rebuilds_the_cache(in_memory_nodes());
}

#[test]
fn in_memory_versions_work_across_nodes() {
    versions_work_across_nodes(in_memory_nodes());
}

#[test]
fn in_memory_writes_go_to_the_bucket_first() {
    writes_go_to_the_bucket_first(in_memory_nodes());
}

#[test]
fn s3_refresh_rebuilds_the_cache() {
    if let Some(n) = s3_nodes("cached_s3_refresh") {
        refresh_rebuilds_the_cache(n);
    }
}

#[test]
fn s3_versions_work_across_nodes() {
    if let Some(n) = s3_nodes("cached_s3_versions") {
        versions_work_across_nodes(n);
    }
}

#[test]
fn s3_writes_go_to_the_bucket_first() {
    if let Some(n) = s3_nodes("cached_s3_order") {
        writes_go_to_the_bucket_first(n);
    }
}
