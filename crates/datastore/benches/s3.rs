//! An S3 datastore on the test server (moto; `cargo xtask bench` starts it): what a listing of
//! 1,000 snapshots costs in requests and time from a new process, with a cache whose files carry
//! their bucket version (keepsake's refresh and writes record it) next to a cache without those
//! records (a cache filled by PBS, or by keepsake before this was built: every read then fetches
//! from the bucket); and what a refresh of the same datastore (3,000+ objects) costs, first into
//! an empty cache, then again with nothing changed.
//!
//! Prints medians of a few runs; without `KEEPSAKE_S3_ENDPOINT` it says so and does nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keepsake_backend::{
    CachedBackend, LocalBackend, ObjectBackend, RequestCounts, RetrySettings, S3Config, SyncLevel,
};
use keepsake_datastore::{DataStore, Encryption};
use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};

const GROUPS: usize = 50;
const PER_GROUP: usize = 20;
const RUNS: usize = 5;

fn open(config: &S3Config, prefix: &str, cache: &Path, locks: &Path) -> (DataStore, ObjectBackend) {
    let remote = ObjectBackend::s3(config, prefix).expect("S3 configuration");
    let local = LocalBackend::open(cache, SyncLevel::None).expect("cache folder");
    let cached = Arc::new(CachedBackend::new(local, remote.clone()));
    let store = DataStore::builder(prefix, cache)
        .lock_root(locks)
        .backend(cached)
        .namespace_markers(true)
        .chunk_prefix_dirs(false)
        .open()
        .expect("open");
    (store, remote)
}

/// What `keepsake groups --recursive` and `snapshots` show: every group with its owner, every
/// snapshot with its files, protection and manifest.
fn listing(store: &DataStore) -> usize {
    let mut seen = 0;
    let root = BackupNamespace::root();
    for group in store.iter_groups(&root).expect("groups") {
        let group = group.expect("group");
        group.owner().expect("owner");
        for info in group.list_backups().expect("snapshots") {
            store
                .snapshot(&root, &info.snapshot)
                .load_manifest()
                .expect("manifest");
            seen += 1;
        }
    }
    seen
}

fn strip_records(folder: &Path) {
    for entry in std::fs::read_dir(folder).expect("cache folder") {
        let entry = entry.expect("entry");
        let path = entry.path();
        if entry.file_type().expect("type").is_dir() {
            strip_records(&path);
        } else {
            let _ = rustix::fs::removexattr(&path, "user.keepsake.remote");
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(found) = keepsake_testkit::s3::config() else {
        println!("s3 listing figures skipped: no S3 endpoint (run `cargo xtask bench`)");
        return;
    };
    let mut config = S3Config::new(
        found.bucket,
        found.region,
        found.access_key_id,
        found.secret_access_key,
    );
    config.endpoint = Some(found.endpoint);
    config.allow_http = true;
    config.retry = RetrySettings::for_tests();
    let prefix = keepsake_testkit::s3::unique_prefix("bench-list");
    let dir = tempfile::tempdir().expect("temporary folder");
    let (cache, locks) = (dir.path().join("cache"), dir.path().join("locks"));
    std::fs::create_dir_all(&cache).expect("cache");
    {
        let remote = ObjectBackend::s3(&config, &prefix).expect("S3 configuration");
        let local = LocalBackend::open(&cache, SyncLevel::None).expect("cache");
        let store = DataStore::builder(&prefix, &cache)
            .lock_root(&locks)
            .backend(Arc::new(CachedBackend::new(local, remote)))
            .namespace_markers(true)
            .chunk_prefix_dirs(false)
            .create()
            .expect("create");
        let owner: Authid = "root@pam".parse().unwrap();
        let started = Instant::now();
        for g in 0..GROUPS {
            let group: BackupGroup = format!("vm/{}", 100 + g).parse().unwrap();
            let handle = store.group(&BackupNamespace::root(), &group);
            for s in 0..PER_GROUP {
                let time = BackupTime::from_epoch(1_700_000_000 + 3_600 * s as i64).unwrap();
                let mut w = handle.start_backup(&owner, time).expect("backup");
                w.add_blob("qemu-server.conf.blob", b"memory: 2048\n", Encryption::None)
                    .expect("blob");
                w.add_blob("fw.conf.blob", b"[OPTIONS]\nenable: 1\n", Encryption::None)
                    .expect("blob");
                w.finish().expect("finish");
            }
        }
        println!(
            "s3 listing: wrote {} snapshots on moto in {:.1?}",
            GROUPS * PER_GROUP,
            started.elapsed()
        );
    }

    let run = |label: &str, before: &dyn Fn()| {
        let mut times = Vec::new();
        let mut requests = RequestCounts::default();
        for _ in 0..RUNS {
            before();
            // A new process: a new backend, nothing remembered in memory.
            let (store, remote) = open(&config, &prefix, &cache, &locks);
            let start_requests = remote.requests();
            let started = Instant::now();
            let seen = listing(&store);
            times.push(started.elapsed());
            requests = remote.requests() - start_requests;
            assert_eq!(seen, GROUPS * PER_GROUP);
        }
        println!(
            "s3 listing of {} snapshots (owners, files, manifests) from a new process, {label}: \
             median {:.2?}, requests {} ({requests})",
            GROUPS * PER_GROUP,
            median(times),
            requests.total()
        );
    };
    run("cache without version records (before)", &|| {
        strip_records(&cache)
    });
    // One read of each file restores its record; then the cache serves every listing.
    {
        let (store, _) = open(&config, &prefix, &cache, &locks);
        listing(&store);
    }
    run("cache with version records (after)", &|| {});

    // Refresh: into an empty cache (every object downloaded), then with nothing changed.
    let mut first = Vec::new();
    let mut second = Vec::new();
    let mut objects = 0;
    for _ in 0..3 {
        let fresh = tempfile::tempdir().expect("temporary folder");
        let remote = ObjectBackend::s3(&config, &prefix).expect("S3 configuration");
        let local = LocalBackend::open(fresh.path(), SyncLevel::Filesystem).expect("cache");
        let cached = CachedBackend::new(local, remote);
        let started = Instant::now();
        let report = cached.refresh().expect("refresh");
        first.push(started.elapsed());
        objects = report.listed;
        let started = Instant::now();
        let again = cached.refresh().expect("refresh");
        second.push(started.elapsed());
        assert_eq!(again.downloaded, 0);
    }
    // The floor: the same objects fetched by 16 threads, nothing written.
    let remote = ObjectBackend::s3(&config, &prefix).expect("S3 configuration");
    let files = keepsake_backend::Backend::list_files_authoritative(
        &remote,
        &keepsake_backend::BackendPath::root(),
    )
    .expect("listing");
    let mut floor = Vec::new();
    for _ in 0..3 {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(file) = files.get(i) else { break };
                        keepsake_backend::Backend::read(&remote, file).expect("get");
                    }
                });
            }
        });
        floor.push(started.elapsed());
    }
    println!(
        "s3 refresh of {objects} objects: into an empty cache median {:.2?}; again with nothing \
         changed median {:.2?} (0 downloads); floor (a bare GET of the {} files, 16 at a time) \
         median {:.2?}",
        median(first),
        median(second),
        files.len(),
        median(floor)
    );
}
