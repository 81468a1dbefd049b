//! Request accounting, retry settings, lost replies, fault injection and runtime handling of the
//! object backend, on the in-memory store and on a real S3 server (moto, from `cargo xtask test`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keepsake_backend::{
    Backend, BackendPath, Error, KeepFilter, ObjectBackend, RetrySettings, S3Config, WriteMode,
};
use keepsake_testkit::faults::{FaultPlan, FaultyStore, Operation};
use object_store::memory::InMemory;

const N: usize = 2500;

fn p(path: &str) -> BackendPath {
    path.parse().unwrap()
}

/// Writes `n` empty files into `folder` from 16 threads.
fn fill(backend: &dyn Backend, folder: &str, n: usize) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let file = p(&format!("{folder}/{i:05}"));
                    backend.write(&file, b"", WriteMode::Replace).unwrap();
                }
            });
        }
    });
}

#[test]
fn s3_listing_and_deleting_2500_keys_costs_3_list_and_3_delete_requests() {
    let Some(backend) = common::s3_backend("s3_request_counts") else {
        return;
    };
    let start = backend.requests();
    let started = Instant::now();
    fill(&backend, "vm", N);
    let filled = started.elapsed();
    let setup = backend.requests() - start;
    assert_eq!(setup.put, N as u64, "one PUT per file, no retries: {setup}");
    assert_eq!(setup.total(), N as u64, "{setup}");

    let before = backend.requests();
    let listed = backend.list(&p("vm")).unwrap().count();
    let listing = backend.requests() - before;
    assert_eq!(listed, N);
    assert_eq!(listing.list, N.div_ceil(1000) as u64, "{listing}");
    assert_eq!(listing.total(), listing.list, "{listing}");

    let before = backend.requests();
    let report = backend
        .remove_tree(&p("vm"), &KeepFilter::nothing())
        .unwrap();
    let removal = backend.requests() - before;
    assert_eq!(report.removed, N as u64);
    assert_eq!(removal.list, N.div_ceil(1000) as u64, "{removal}");
    assert_eq!(removal.delete, N.div_ceil(1000) as u64, "{removal}");
    assert_eq!(removal.total(), removal.list + removal.delete, "{removal}");
    assert!(matches!(
        backend.list(&p("vm")),
        Err(Error::NotFound { .. })
    ));
    eprintln!(
        "s3: {N} puts in {filled:?}; listing {listing}; removal {removal}; total {:?}",
        started.elapsed()
    );
}

#[test]
fn in_memory_counts_trait_calls() {
    let backend = ObjectBackend::in_memory("store1").unwrap();
    fill(&backend, "vm", N);
    let before = backend.requests();
    assert_eq!(backend.list(&p("vm")).unwrap().count(), N);
    let listing = backend.requests() - before;
    assert_eq!(
        listing.list, 1,
        "one call lists the whole folder: {listing}"
    );

    let before = backend.requests();
    backend
        .remove_tree(&p("vm"), &KeepFilter::nothing())
        .unwrap();
    let removal = backend.requests() - before;
    assert_eq!((removal.list, removal.delete), (1, 3), "{removal}");

    let before = backend.requests();
    let file = p("vm/100/owner");
    let v = backend.write(&file, b"a", WriteMode::CreateOnly).unwrap();
    backend.read(&file).unwrap();
    backend.stat(&file).unwrap();
    backend.write(&file, b"b", WriteMode::Update(v)).unwrap();
    backend.remove_file(&file).unwrap();
    let single = backend.requests() - before;
    assert_eq!(
        (single.put, single.get, single.head, single.delete),
        (2, 1, 2, 1),
        "{single}"
    );
}

#[test]
fn s3_single_operations_cost_one_request_each() {
    let Some(backend) = common::s3_backend("s3_single_requests") else {
        return;
    };
    let file = p("vm/100/owner");
    let before = backend.requests();
    let v = backend.write(&file, b"a", WriteMode::CreateOnly).unwrap();
    backend.read(&file).unwrap();
    backend.write(&file, b"b", WriteMode::Update(v)).unwrap();
    backend.stat(&file).unwrap();
    backend.rename(&file, &p("vm/101/owner")).unwrap();
    let used = backend.requests() - before;
    // rename: list source, HEAD source (no tree), HEAD + list target, copy, delete batch.
    assert_eq!(
        (
            used.put,
            used.get,
            used.head,
            used.list,
            used.copy,
            used.delete
        ),
        (2, 1, 3, 2, 1, 1),
        "{used}"
    );
}

#[test]
fn retries_follow_the_settings() {
    // A loopback port nobody listens on: every attempt fails to connect, at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    for retries in [0, 2] {
        let mut config = S3Config::new("bucket", "us-east-1", "key", "secret");
        config.endpoint = Some(endpoint.clone());
        config.allow_http = true;
        config.retry = RetrySettings::for_tests();
        config.retry.max_retries = retries;
        let backend = ObjectBackend::s3(&config, "store1").unwrap();
        let started = Instant::now();
        let error = backend.read(&p("vm/100/owner")).unwrap_err();
        assert!(matches!(error, Error::Backend { .. }), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            backend.requests().get,
            retries as u64 + 1,
            "every attempt is counted"
        );
    }
}

#[test]
fn partial_batch_deletes_are_reported_and_can_be_finished() {
    let inner = Arc::new(InMemory::new());
    let faulty = Arc::new(FaultyStore::new(
        inner.clone(),
        FaultPlan::new(7).fail_every_nth_deleted_key(4),
    ));
    let backend = ObjectBackend::with_store(faulty.clone(), "store1").unwrap();
    fill(&backend, "vm/100", 100);
    let error = backend
        .remove_tree(&p("vm/100"), &KeepFilter::nothing())
        .unwrap_err();
    match &error {
        Error::Incomplete { failed, .. } => assert_eq!(*failed, 25),
        other => panic!("expected Incomplete, got {other:?}"),
    }
    assert_eq!(backend.list(&p("vm/100")).unwrap().count(), 25);
    // Clean through the store without faults: the rest goes.
    let clean = ObjectBackend::with_store(inner, "store1").unwrap();
    let report = clean
        .remove_tree(&p("vm/100"), &KeepFilter::nothing())
        .unwrap();
    assert_eq!(report.removed, 25);
    assert_eq!(faulty.injected(), 25);
}

#[test]
fn injected_failures_surface_as_backend_errors() {
    let faulty = Arc::new(FaultyStore::new(
        Arc::new(InMemory::new()),
        FaultPlan::new(1)
            .fail_nth(Operation::Put, 2)
            .fail_nth(Operation::Get, 1)
            .fail_nth(Operation::List, 1),
    ));
    let backend = ObjectBackend::with_store(faulty.clone(), "store1").unwrap();
    let file = p("vm/100/owner");
    backend.write(&file, b"1", WriteMode::Replace).unwrap();
    let error = backend.write(&file, b"2", WriteMode::Replace).unwrap_err();
    assert!(matches!(error, Error::Backend { .. }), "{error:?}");
    assert!(matches!(backend.read(&file), Err(Error::Backend { .. })));
    assert_eq!(backend.read(&file).unwrap().data, b"1");
    assert!(matches!(backend.list(&p("vm")), Err(Error::Backend { .. })));
    assert_eq!(backend.list(&p("vm")).unwrap().count(), 1);
    assert_eq!(faulty.injected(), 3);
}

#[test]
fn s3_through_a_fault_injecting_wrapper() {
    let Some(config) = common::s3_config("s3_faults") else {
        return;
    };
    let store = keepsake_testkit::s3::unique_prefix("s3_faults");
    let backend = ObjectBackend::s3_wrapped(&config, &store, |s3| {
        Arc::new(FaultyStore::new(
            s3,
            FaultPlan::new(3)
                .fail_nth(Operation::Put, 1)
                .delay(Duration::from_millis(5)),
        ))
    })
    .unwrap();
    let file = p("vm/100/owner");
    assert!(matches!(
        backend.write(&file, b"x", WriteMode::CreateOnly),
        Err(Error::Backend { .. })
    ));
    assert_eq!(
        backend.requests().put,
        0,
        "the injected failure sent nothing"
    );
    backend.write(&file, b"x", WriteMode::CreateOnly).unwrap();
    assert_eq!(backend.read(&file).unwrap().data, b"x");
    assert_eq!(backend.list(&p("vm/100")).unwrap().count(), 1);
}

/// Building, using and dropping a backend inside an async context must not panic (a tokio
/// runtime cannot be dropped there; the backend's own one shuts down in the background).
#[test]
fn backends_live_and_die_inside_runtimes() {
    let check = || {
        let backend = ObjectBackend::in_memory("store1").unwrap();
        let file = p("a");
        backend.write(&file, b"x", WriteMode::Replace).unwrap();
        let clone = backend.clone();
        drop(backend);
        assert_eq!(clone.read(&file).unwrap().data, b"x");
        drop(clone);
        if let Some(config) = common::s3_config("s3_inside_runtime") {
            let store = keepsake_testkit::s3::unique_prefix("s3_inside_runtime");
            let s3 = ObjectBackend::s3(&config, &store).unwrap();
            s3.write(&file, b"y", WriteMode::Replace).unwrap();
            assert_eq!(s3.read(&file).unwrap().data, b"y");
        }
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { check() });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { check() });
}

/// With `S3Config::runtime`, the backend uses the application's runtime: calls from its
/// blocking threads (`spawn_blocking`) and from plain threads work, and so does dropping the
/// backend inside its async context.
#[test]
fn s3_on_the_applications_runtime() {
    let Some(mut config) = common::s3_config("s3_shared_runtime") else {
        return;
    };
    let app = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    config.runtime = Some(app.handle().clone());
    let store = keepsake_testkit::s3::unique_prefix("s3_shared_runtime");
    let backend = ObjectBackend::s3(&config, &store).unwrap();
    let file = p("vm/100/owner");
    let from_app = backend.clone();
    app.block_on(async move {
        let written = tokio::task::spawn_blocking(move || {
            let version = from_app.write(&file, b"root@pam\n", WriteMode::CreateOnly)?;
            assert_eq!(from_app.read(&file)?.version, version);
            Ok::<_, Error>(from_app)
        })
        .await
        .unwrap()
        .unwrap();
        drop(written);
    });
    let plain = backend.clone();
    std::thread::spawn(move || {
        assert_eq!(plain.read(&p("vm/100/owner")).unwrap().data, b"root@pam\n")
    })
    .join()
    .unwrap();
    assert!(backend.requests().put >= 1);
}

#[test]
fn chunks_live_beside_the_content_with_one_request_each() {
    use keepsake_backend::{CachedBackend, ChunkDigest, ChunkInsert, LocalBackend, SyncLevel};
    use object_store::ObjectStoreExt;

    // The bare store too, to look at the key the chunk went to.
    let bucket = Arc::new(InMemory::new());
    let remote = ObjectBackend::with_store(bucket.clone(), "store1").unwrap();
    let digest: ChunkDigest = format!("bb9f{}", "0".repeat(60)).parse().unwrap();
    let key = format!("store1/.chunks/bb9f/bb9f{}", "0".repeat(60));

    let before = remote.requests();
    assert_eq!(
        remote.insert_chunk(&digest, b"blob").unwrap(),
        ChunkInsert::Stored
    );
    assert_eq!(
        remote.insert_chunk(&digest, b"blob").unwrap(),
        ChunkInsert::Duplicate
    );
    let spent = remote.requests() - before;
    assert_eq!(spent.put, 2, "{spent:?}");
    let stored = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async move {
            let key = object_store::path::Path::parse(&key).unwrap();
            bucket.get(&key).await.unwrap().bytes().await.unwrap()
        });
    assert_eq!(&stored[..], b"blob");
    // Not content: nothing below `.cnt`.
    assert!(!remote.exists(&p(".chunks")).unwrap());

    // The cached backend keeps a copy at the local chunk path and skips the upload of a chunk it
    // holds, like PBS.
    let dir = tempfile::tempdir().unwrap();
    let cached = CachedBackend::new(
        LocalBackend::open(dir.path(), SyncLevel::None).unwrap(),
        remote.clone(),
    );
    let other = ChunkDigest::new([0x42; 32]);
    assert_eq!(
        cached.insert_chunk(&other, b"other").unwrap(),
        ChunkInsert::Stored
    );
    assert_eq!(
        std::fs::read(dir.path().join(format!(".chunks/4242/{other}"))).unwrap(),
        b"other"
    );
    let before = remote.requests();
    assert_eq!(
        cached.insert_chunk(&other, b"other").unwrap(),
        ChunkInsert::Duplicate
    );
    assert_eq!(remote.requests() - before, Default::default());
    // An evicted chunk (empty marker) is fetched from the bucket.
    std::fs::write(dir.path().join(format!(".chunks/4242/{other}")), b"").unwrap();
    assert_eq!(cached.read_chunk(&other).unwrap(), b"other");
    assert_eq!(cached.read_chunk(&digest).unwrap(), b"blob");
}

/// A conditional write whose first attempt landed but whose reply was lost: object_store
/// retries, the retry meets the written object (412), and the backend recognises its own write
/// by the token in the object's metadata.
#[test]
fn s3_conditional_writes_survive_a_lost_reply() {
    let Some(mut config) = common::s3_config("s3_lost_replies") else {
        return;
    };
    let proxy = keepsake_testkit::proxy::LostReplyProxy::start(
        config
            .endpoint
            .as_deref()
            .expect("the test server has an endpoint"),
    )
    .unwrap();
    config.endpoint = Some(proxy.endpoint().to_owned());
    config.retry = RetrySettings::for_tests();
    assert!(config.retry.max_retries >= 1, "the test needs a retry");
    let store = keepsake_testkit::s3::unique_prefix("s3_lost_replies");
    let backend = ObjectBackend::s3(&config, &store).unwrap();
    let file = p("vm/100/owner");

    proxy.lose_reply_to_conditional_put(1);
    let before = backend.requests();
    let created = backend
        .write(&file, b"root@pam\n", WriteMode::CreateOnly)
        .unwrap();
    let used = backend.requests() - before;
    assert_eq!(proxy.lost_replies(), 1);
    assert_eq!(
        (used.put, used.head, used.total()),
        (2, 1, 3),
        "a retry and one HEAD: {used}"
    );
    let read = backend.read(&file).unwrap();
    assert_eq!(
        (read.data.as_slice(), &read.version),
        (&b"root@pam\n"[..], &created)
    );

    proxy.lose_reply_to_conditional_put(1);
    let updated = backend
        .write(&file, b"admin@pbs\n", WriteMode::Update(created.clone()))
        .unwrap();
    assert_eq!(proxy.lost_replies(), 2);
    let read = backend.read(&file).unwrap();
    assert_eq!(
        (read.data.as_slice(), &read.version),
        (&b"admin@pbs\n"[..], &updated)
    );
    assert_ne!(updated, created);

    // Real conflicts stay conflicts, also with the same bytes: they are not this write's.
    assert!(matches!(
        backend.write(&file, b"admin@pbs\n", WriteMode::CreateOnly),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        backend.write(&file, b"admin@pbs\n", WriteMode::Update(created.clone())),
        Err(Error::Precondition { .. })
    ));
    assert!(matches!(
        backend.write(&file, b"late\n", WriteMode::CreateOnly),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        backend.write(&file, b"late\n", WriteMode::Update(created)),
        Err(Error::Precondition { .. })
    ));
    assert_eq!(backend.read(&file).unwrap().data, b"admin@pbs\n");
    assert_eq!(proxy.lost_replies(), 2);
}

/// Two writers that read one version and compute the same new bytes (two hosts incrementing one
/// counter): exactly one wins the compare-and-swap; identical bytes are not the loser's own write.
#[test]
fn identical_bytes_from_another_writer_are_a_conflict() {
    let backend = ObjectBackend::in_memory("store1").unwrap();
    let file = p("vm/100/2024-01-01T00:00:00Z/index.json.blob");
    let v1 = backend
        .write(&file, b"counter 1", WriteMode::CreateOnly)
        .unwrap();
    assert!(matches!(
        backend.write(&file, b"counter 1", WriteMode::CreateOnly),
        Err(Error::AlreadyExists { .. })
    ));
    backend
        .write(&file, b"counter 2", WriteMode::Update(v1.clone()))
        .unwrap();
    assert!(matches!(
        backend.write(&file, b"counter 2", WriteMode::Update(v1)),
        Err(Error::Precondition { .. })
    ));
}
