//! Datastores over every backend, for tests that must hold on each.

#![allow(dead_code)]

pub(crate) mod faulty;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use keepsake_backend::{
    Backend, BackendPath, CachedBackend, EntryKind, LocalBackend, ObjectBackend, S3Config,
    SyncLevel,
};
use keepsake_datastore::DataStore;

/// A datastore on a temporary folder, with its lock root, kept alive together.
pub(crate) struct TestStore {
    pub(crate) store: DataStore,
    pub(crate) kind: &'static str,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) cached: Option<Arc<CachedBackend>>,
}

impl TestStore {
    pub(crate) fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }
}

fn builder(dir: &Path) -> keepsake_datastore::DataStoreBuilder {
    DataStore::builder("teststore", dir.join("store"))
        .lock_root(dir.join("locks"))
        .sync_level(SyncLevel::None)
        .chunk_prefix_dirs(false)
}

/// A new datastore on the local filesystem.
pub(crate) fn local() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let store = builder(dir.path()).create().unwrap();
    TestStore {
        store,
        kind: "local",
        dir,
        cached: None,
    }
}

fn cached_with(remote: ObjectBackend, kind: &'static str) -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    let cache = LocalBackend::open(dir.path().join("store"), SyncLevel::None).unwrap();
    let cached = Arc::new(CachedBackend::new(cache, remote));
    let store = builder(dir.path())
        .backend(cached.clone())
        .namespace_markers(true)
        .create()
        .unwrap();
    TestStore {
        store,
        kind,
        dir,
        cached: Some(cached),
    }
}

/// A new datastore on an in-memory object store behind a local cache.
pub(crate) fn cached_memory() -> TestStore {
    cached_with(
        ObjectBackend::in_memory("teststore").unwrap(),
        "cached-memory",
    )
}

/// A new datastore on the S3 test server behind a local cache, or `None` (with a printed skip
/// line) when no server is configured.
pub(crate) fn cached_s3(test: &str) -> Option<TestStore> {
    let cfg = keepsake_testkit::s3::config_or_skip(test)?;
    let mut config = S3Config::new(
        cfg.bucket,
        cfg.region,
        cfg.access_key_id,
        cfg.secret_access_key,
    );
    config.endpoint = Some(cfg.endpoint);
    config.allow_http = true;
    config.retry = keepsake_backend::RetrySettings::for_tests();
    let prefix = keepsake_testkit::s3::unique_prefix(test);
    let remote = ObjectBackend::s3(&config, &prefix).unwrap();
    Some(cached_with(remote, "cached-s3"))
}

/// Every backend this run can test: local, cached in-memory, and cached S3 when configured.
pub(crate) fn all(test: &str) -> Vec<TestStore> {
    let mut stores = vec![local(), cached_memory()];
    stores.extend(cached_s3(test));
    stores
}

/// Every file below `folder` with its bytes, walking through the `Backend` trait.
fn walk(backend: &dyn Backend, folder: &BackendPath, out: &mut BTreeMap<String, Vec<u8>>) {
    walk_with(backend, folder, out, false);
}

/// [`walk`], optionally skipping the cache's own top-level `.chunks` folder and `.lock` file.
fn walk_with(
    backend: &dyn Backend,
    folder: &BackendPath,
    out: &mut BTreeMap<String, Vec<u8>>,
    skip_host_files: bool,
) {
    let entries: Vec<_> = match backend.list(folder) {
        Ok(l) => l.map(|e| e.unwrap()).collect(),
        Err(keepsake_backend::Error::NotFound { .. }) => return,
        Err(e) => panic!("listing {folder}: {e}"),
    };
    for entry in entries {
        let path = folder.join(&entry.name).unwrap();
        // Chunks and the process lock file are not content metadata: in the bucket they must not
        // appear below `.cnt` at all.
        if skip_host_files
            && folder.is_root()
            && (entry.name == ".chunks" || entry.name == ".lock" || entry.name == ".keepsake")
        {
            continue;
        }
        match entry.kind {
            EntryKind::Dir => walk_with(backend, &path, out, skip_host_files),
            EntryKind::File => {
                out.insert(path.to_string(), backend.read(&path).unwrap().data);
            }
            EntryKind::Other => panic!("unexpected entry {path}"),
        }
    }
}

/// After a test on a cached backend: the bucket and the cache hold the same metadata.
pub(crate) fn assert_cache_matches_bucket(t: &TestStore) {
    if let Some(cached) = &t.cached {
        let mut local = BTreeMap::new();
        walk_with(cached.cache(), &BackendPath::root(), &mut local, true);
        let mut remote = BTreeMap::new();
        walk(cached.remote(), &BackendPath::root(), &mut remote);
        // Namespace markers live in the bucket only if the cache has no copy; compare both ways.
        let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(&local),
            names(&remote),
            "{}: cache and bucket list different files",
            t.kind
        );
        for (name, bytes) in &local {
            assert_eq!(Some(bytes), remote.get(name), "{}: {name} differs", t.kind);
        }
        // Every chunk of the cache is in the bucket at PBS's chunk key, with the same bytes.
        let chunks = t.root().join(".chunks");
        for prefix in std::fs::read_dir(&chunks).into_iter().flatten() {
            for chunk in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
                let chunk = chunk.unwrap();
                let digest: keepsake_backend::ChunkDigest =
                    chunk.file_name().to_str().unwrap().parse().unwrap();
                let cached_bytes = std::fs::read(chunk.path()).unwrap();
                assert_eq!(
                    cached.remote().read_chunk(&digest).unwrap(),
                    cached_bytes,
                    "{}: chunk {digest} differs or is missing in the bucket",
                    t.kind
                );
            }
        }
    }
}
