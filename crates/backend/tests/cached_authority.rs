//! The cached backend when bucket and cache differ: the authoritative methods follow the bucket;
//! and the cache folder's identity marker. On the in-memory store and on a real S3 server (moto).

mod common;

use keepsake_backend::{
    Backend, BackendPath, CACHE_MARKER, CacheIdentity, CachedBackend, Error, LocalBackend,
    ObjectBackend, S3Config, SyncLevel, WriteMode, cache_identity,
};

fn p(path: &str) -> BackendPath {
    path.parse().unwrap()
}

struct Node {
    cached: CachedBackend,
    _dir: tempfile::TempDir,
}

fn node(remote: ObjectBackend) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let cache = LocalBackend::open(dir.path(), SyncLevel::None).unwrap();
    Node {
        cached: CachedBackend::open(cache, remote).unwrap(),
        _dir: dir,
    }
}

fn authority_follows_the_bucket(n: Node) {
    let (cached, cache, bucket) = (&n.cached, n.cached.cache(), n.cached.remote());
    let snapshot = "vm/100/2024-01-01T00:00:00Z";
    cached
        .write(&p("vm/100/owner"), b"root@pam\n", WriteMode::Replace)
        .unwrap();

    // A key only in the bucket (another host wrote it).
    let only_bucket = p(&format!("{snapshot}/index.json.blob"));
    bucket
        .write(&only_bucket, b"manifest", WriteMode::Replace)
        .unwrap();
    assert!(
        !cached.exists(&only_bucket).unwrap(),
        "the cache does not know"
    );
    assert!(cached.exists_authoritative(&only_bucket).unwrap());
    assert!(cached.exists_authoritative(&p(snapshot)).unwrap());
    assert_eq!(
        cached.list_files_authoritative(&p("vm/100")).unwrap(),
        [only_bucket.clone(), p("vm/100/owner")]
    );
    let before = bucket.requests();
    assert!(!cached.remove_folder_if_empty(&p(snapshot)).unwrap());
    let used = bucket.requests() - before;
    assert_eq!((used.list, used.total()), (1, 1), "one listing: {used}");
    assert!(bucket.exists(&only_bucket).unwrap(), "nothing changes");
    assert_eq!(
        cached.read_authoritative(&only_bucket).unwrap().data,
        b"manifest"
    );
    assert_eq!(
        cache.read(&only_bucket).unwrap().data,
        b"manifest",
        "an authoritative read fills the cache"
    );

    // A file only in the cache (the bucket lost it: another host removed it).
    let only_cache = p("vm/200/owner");
    cache
        .write(&only_cache, b"stale", WriteMode::Replace)
        .unwrap();
    assert!(cached.exists(&only_cache).unwrap());
    assert!(!cached.exists_authoritative(&only_cache).unwrap());
    assert!(!cached.exists_authoritative(&p("vm/200")).unwrap());
    assert!(matches!(
        cached.list_files_authoritative(&p("vm/200")),
        Err(Error::NotFound { .. })
    ));
    assert!(
        !cached
            .list_files_authoritative(&p("vm"))
            .unwrap()
            .contains(&only_cache)
    );
    assert!(matches!(
        cached.read_authoritative(&only_cache),
        Err(Error::NotFound { .. })
    ));
    // A read never removes anything (the cache may be PBS's, the bucket the wrong one): the
    // stale copy stays until a write, a removal or a refresh.
    assert!(
        cache.exists(&only_cache).unwrap(),
        "a read removed a cache file"
    );

    // A folder the bucket no longer has: removed from the cache, stale copies and all.
    for stale in [
        "vm/300/owner",
        "vm/300/2024-01-01T00:00:00Z/index.json.blob",
    ] {
        cache
            .write(&p(stale), b"stale", WriteMode::Replace)
            .unwrap();
    }
    assert!(cached.remove_folder_if_empty(&p("vm/300")).unwrap());
    assert!(!cache.exists(&p("vm/300")).unwrap());

    // A folder the bucket still has something in: nothing changes, stale copies included.
    cached
        .write(&p("vm/400/owner"), b"root@pam\n", WriteMode::Replace)
        .unwrap();
    cache
        .write(&p("vm/400/notes"), b"stale", WriteMode::Replace)
        .unwrap();
    assert!(!cached.remove_folder_if_empty(&p("vm/400")).unwrap());
    assert_eq!(cache.read(&p("vm/400/notes")).unwrap().data, b"stale");

    // Removing files: from the bucket and from the cache, wherever each one is.
    cache
        .write(&only_cache, b"stale", WriteMode::Replace)
        .unwrap();
    let bucket_only = p("vm/400/2024-01-01T00:00:00Z/index.json.blob");
    bucket
        .write(&bucket_only, b"m", WriteMode::Replace)
        .unwrap();
    cached
        .remove_files(&[only_cache.clone(), bucket_only.clone(), p("vm/400/notes")])
        .unwrap();
    for gone in [&only_cache, &bucket_only, &p("vm/400/notes")] {
        assert!(!cache.exists(gone).unwrap(), "{gone}");
        assert!(!cached.exists_authoritative(gone).unwrap(), "{gone}");
    }
    assert!(cached.exists(&p("vm/400/owner")).unwrap());
}

fn identity_is_checked_and_claimed(remote: impl Fn(&str) -> ObjectBackend) {
    let dir = tempfile::tempdir().unwrap();
    let local = || LocalBackend::open(dir.path(), SyncLevel::None).unwrap();
    let mine = remote("store1");

    // Opening never writes: a folder without marker stays without one.
    let cached = CachedBackend::open(local(), mine.clone()).unwrap();
    assert_eq!(cache_identity(dir.path()).unwrap(), None);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    cached.claim().unwrap();
    assert_eq!(
        cache_identity(dir.path()).unwrap().as_ref(),
        Some(mine.identity())
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(CACHE_MARKER)).unwrap()).unwrap();
    assert_eq!(json["bucket"], mine.identity().bucket.as_str());
    assert_eq!(json["store"], mine.identity().store.as_str());
    assert_eq!(
        json["endpoint"].as_str(),
        mine.identity().endpoint.as_deref()
    );
    cached.claim().unwrap();
    CachedBackend::open(local(), remote("store1")).unwrap();

    // Another store's backend refuses the folder, with both names in one line.
    let other = remote("store2");
    let error = CachedBackend::open(local(), other.clone()).unwrap_err();
    match &error {
        Error::CacheMismatch {
            cache,
            expected,
            found,
        } => {
            assert_eq!(cache, dir.path());
            assert_eq!(**expected, *other.identity());
            assert_eq!(**found, *mine.identity());
        }
        e => panic!("expected CacheMismatch, got {e:?}"),
    }
    let message = error.to_string();
    assert!(!message.contains('\n'), "{message}");
    for named in [&mine, &other] {
        let store = format!("store `{}`", named.identity().store);
        assert!(message.contains(&store), "{message}");
    }

    // Writes over the unchecked constructor are refused too: refresh and claim check.
    local()
        .write(&p("vm/1/owner"), b"kept", WriteMode::Replace)
        .unwrap();
    let unchecked = CachedBackend::new(local(), other);
    assert!(matches!(
        unchecked.refresh(),
        Err(Error::CacheMismatch { .. })
    ));
    assert!(matches!(
        unchecked.claim(),
        Err(Error::CacheMismatch { .. })
    ));
    assert_eq!(local().read(&p("vm/1/owner")).unwrap().data, b"kept");
    assert_eq!(
        cache_identity(dir.path()).unwrap().as_ref(),
        Some(mine.identity())
    );

    // A damaged marker is an error, never "no marker".
    std::fs::write(dir.path().join(CACHE_MARKER), b"{not json").unwrap();
    assert!(matches!(cache_identity(dir.path()), Err(Error::Io { .. })));
    assert!(matches!(
        CachedBackend::open(local(), mine),
        Err(Error::Io { .. })
    ));
}

#[test]
fn in_memory_authority_follows_the_bucket() {
    authority_follows_the_bucket(node(ObjectBackend::in_memory("store1").unwrap()));
}

#[test]
fn s3_authority_follows_the_bucket() {
    if let Some(remote) = common::s3_backend("cached_s3_authority") {
        authority_follows_the_bucket(node(remote));
    }
}

#[test]
fn in_memory_identity_is_checked_and_claimed() {
    let shared = std::sync::Arc::new(object_store::memory::InMemory::new());
    identity_is_checked_and_claimed(|store| {
        ObjectBackend::with_store(shared.clone(), store).unwrap()
    });
}

#[test]
fn s3_identity_is_checked_and_claimed() {
    let Some(config) = common::s3_config("cached_s3_identity") else {
        return;
    };
    let prefix = keepsake_testkit::s3::unique_prefix("cached_s3_identity");
    identity_is_checked_and_claimed(|store| {
        ObjectBackend::s3(&config, &format!("{prefix}-{store}")).unwrap()
    });
}

#[test]
fn identities_name_endpoint_bucket_and_store() {
    let aws =
        ObjectBackend::s3(&S3Config::new("bucket1", "eu-west-1", "k", "s"), "store1").unwrap();
    assert_eq!(
        aws.identity(),
        &CacheIdentity::new(None, "bucket1", "store1")
    );
    let mut config = S3Config::new("bucket1", "us-east-1", "k", "s");
    config.endpoint = Some("http://127.0.0.1:9000/".into());
    config.allow_http = true;
    let own = ObjectBackend::s3(&config, "store1").unwrap();
    assert_eq!(
        own.identity(),
        &CacheIdentity::new(Some("http://127.0.0.1:9000".into()), "bucket1", "store1")
    );
    assert_eq!(
        ObjectBackend::in_memory("s").unwrap().identity(),
        &CacheIdentity::new(Some("memory".into()), "memory", "s")
    );
}
