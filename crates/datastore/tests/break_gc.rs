//! Attacks on garbage collection (issue 19), local and S3, as a hostile operator or an unlucky
//! schedule would make them. Every test here states what must hold; the ones that fail on the
//! current code are marked `#[ignore = "finding: ..."]` so the suite stays green until the
//! library is fixed (run them with `--ignored`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use keepsake_backend::Backend;
use keepsake_datastore::{
    ChunkVerification, DataStore, Encryption, GcMode, GcOptions, VerifyOptions, VerifyScope,
    chunk_path,
};
use keepsake_hierarchy::{Authid, BackupNamespace, BackupTime};
use rustix::fs::FlockOperation;

const HELPER_VAR: &str = "KEEPSAKE_BREAK_GC_HELPER";
const HELPER_TEST: &str = "lock_helper";

/// Not a test of its own: the child process the lock tests start (this binary, re-executed with
/// [`HELPER_VAR`] set to `<mode>:<path of .lock>`).
/// - `hold-shared`: takes a shared fcntl lock as a PBS writer does, prints `held`, and keeps it
///   until its stdin closes.
/// - `try-exclusive`: tries PBS GC's exclusive fcntl lock once, prints `busy` or `free`.
#[test]
fn lock_helper() {
    let Ok(spec) = std::env::var(HELPER_VAR) else {
        return;
    };
    let (mode, path) = spec.split_once(':').unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let out = std::io::stdout();
    match mode {
        "hold-shared" => {
            rustix::fs::fcntl_lock(file.as_fd(), FlockOperation::NonBlockingLockShared).unwrap();
            writeln!(out.lock(), "held").unwrap();
            out.lock().flush().unwrap();
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        "try-exclusive" => {
            let state = match rustix::fs::fcntl_lock(
                file.as_fd(),
                FlockOperation::NonBlockingLockExclusive,
            ) {
                Ok(()) => "free",
                Err(_) => "busy",
            };
            writeln!(out.lock(), "{state}").unwrap();
        }
        other => panic!("unknown helper mode {other}"),
    }
}

fn helper(mode: &str, lock_file: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([HELPER_TEST, "--exact", "--test-threads=1", "--quiet"])
        .env(HELPER_VAR, format!("{mode}:{}", lock_file.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The first line the helper prints that is one of `words` (the test harness prints its own).
fn helper_says(child: &mut std::process::Child, words: &[&str]) -> String {
    let mut reader = BufReader::new(child.stdout.as_mut().unwrap());
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "helper ended");
        let word = line.trim();
        if words.contains(&word) {
            return word.to_owned();
        }
    }
}

/// Starts the helper holding a shared lock on `lock_file`, once it holds it.
fn pbs_writer_elsewhere(lock_file: &Path) -> std::process::Child {
    let mut child = helper("hold-shared", lock_file);
    helper_says(&mut child, &["held"]);
    child
}

/// Whether another process could take GC's exclusive lock now (`busy` or `free`).
fn try_exclusive_elsewhere(lock_file: &Path) -> String {
    let mut child = helper("try-exclusive", lock_file);
    let said = helper_says(&mut child, &["busy", "free"]);
    child.wait().unwrap();
    said
}

const DAY: i64 = 24 * 3600;
const T0: i64 = 1_700_000_000;

/// The S3 tests' cutoff in seconds: bucket objects cannot be aged, so the tests wait instead.
const CUTOFF: u64 = 2;

fn owner() -> Authid {
    "root@pam".parse().unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn pieces(seed: u8, chunks: usize) -> Vec<Vec<u8>> {
    (0..chunks)
        .map(|i| vec![seed.wrapping_add(i as u8); 1000 + i])
        .collect()
}

/// A finished snapshot `group` at `time` with one dynamic archive `archive`.
fn backup(store: &DataStore, group: &str, time: i64, archive: &str, seed: u8, chunks: usize) {
    let group = store.group(&BackupNamespace::root(), &group.parse().unwrap());
    let mut w = group
        .start_backup(&owner(), BackupTime::from_epoch(time).unwrap())
        .unwrap();
    w.add_dynamic_archive(archive, pieces(seed, chunks), Encryption::None)
        .unwrap();
    w.finish().unwrap();
}

/// Sets a file's atime and mtime to `epoch`.
fn age(path: &Path, epoch: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: epoch,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Every chunk file below `.chunks`.
fn chunk_files(store_root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for prefix in std::fs::read_dir(store_root.join(".chunks")).unwrap() {
        let prefix = prefix.unwrap().path();
        if !prefix.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&prefix).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files
}

/// As if two days passed without a GC.
fn age_all(store_root: &Path) {
    for f in chunk_files(store_root) {
        age(&f, now() - 2 * DAY);
    }
}

/// The problems a content verify of the whole store finds (empty: every referenced chunk is
/// there and sound).
fn verify_problems(store: &DataStore) -> Vec<String> {
    let report = store
        .verify(
            &VerifyScope::Store,
            &VerifyOptions::default().chunks(ChunkVerification::Content),
        )
        .unwrap();
    let mut problems: Vec<String> = report.problems().map(|(_, p)| p.to_string()).collect();
    if report.content.missing > 0 {
        problems.push(format!("{} chunks missing", report.content.missing));
    }
    problems
}

fn wait_past_cutoff() {
    std::thread::sleep(Duration::from_secs(CUTOFF + 2));
}

/// An archive name that starts with a dot: PBS's GC walk skips hidden names, so the writer
/// refuses it; an index given such a name behind the library's back (renamed in the snapshot
/// folder, here through the backend) still has its chunks marked, by the local walk and by the
/// bucket's listing alike.
fn hidden_index_keeps_its_chunks(t: &common::TestStore, gc: impl Fn(&DataStore)) {
    let group = t
        .store
        .group(&BackupNamespace::root(), &"vm/2".parse().unwrap());
    let mut w = group
        .start_backup(&owner(), BackupTime::from_epoch(T0).unwrap())
        .unwrap();
    let refused = w
        .add_dynamic_archive(".hidden.pxar.didx", pieces(9, 2), Encryption::None)
        .unwrap_err();
    assert!(refused.to_string().contains("starts with '.'"), "{refused}");
    drop(w);

    backup(&t.store, "vm/1", T0, "shown.pxar.didx", 7, 4);
    let folder = "vm/1/2023-11-14T22:13:20Z";
    let from = keepsake_backend::BackendPath::new(&format!("{folder}/shown.pxar.didx")).unwrap();
    let to = keepsake_backend::BackendPath::new(&format!("{folder}/.hidden.pxar.didx")).unwrap();
    let index = keepsake_manifest::index::IndexFile::from_bytes(
        t.store.backend().read(&from).unwrap().data,
    )
    .unwrap();
    t.store.backend().rename(&from, &to).unwrap();
    gc(&t.store);
    use keepsake_manifest::index::ChunkIndex;
    for chunk in index.chunks() {
        assert!(
            t.store.chunk_exists(chunk.digest).unwrap(),
            "GC removed a chunk of the hidden index"
        );
    }
}

#[test]
fn local_an_archive_whose_name_starts_with_a_dot_keeps_its_chunks() {
    let t = common::local();
    hidden_index_keeps_its_chunks(&t, |store| {
        age_all(&t.root());
        store.garbage_collect(&GcOptions::default()).unwrap();
    });
}

#[test]
fn s3_an_archive_whose_name_starts_with_a_dot_keeps_its_chunks() {
    let t = common::cached_memory();
    let cached = t.cached.clone().unwrap();
    hidden_index_keeps_its_chunks(&t, |store| {
        wait_past_cutoff();
        store
            .garbage_collect_s3(&cached, &GcOptions::default().atime_cutoff_secs(CUTOFF))
            .unwrap();
    });
}

/// S3 GC reads an index from the cache when the cache's record names the listed ETag and size.
/// The record lives in an extended attribute of the cache file (or beside it), so a cache copy
/// rewritten in place (`cp other.didx this.didx` keeps the inode and its attributes) with
/// another valid index of the same size still counts as the bucket's version: the bucket's
/// index is never read and its chunks are deleted from the bucket.
#[test]
fn s3_a_cache_copy_rewritten_in_place_does_not_decide_the_bucket_sweep() {
    let t = common::cached_memory();
    let cached = t.cached.clone().unwrap();
    // Same chunk count: both indexes have the same size.
    backup(&t.store, "vm/1", T0, "root.pxar.didx", 1, 4);
    backup(&t.store, "vm/2", T0, "root.pxar.didx", 100, 4);
    let time = BackupTime::from_epoch(T0).unwrap().to_string();
    let one = t.root().join(format!("vm/1/{time}/root.pxar.didx"));
    let two = t.root().join(format!("vm/2/{time}/root.pxar.didx"));
    let bucket_index = cached
        .remote()
        .read(&keepsake_backend::BackendPath::new(&format!("vm/1/{time}/root.pxar.didx")).unwrap())
        .unwrap()
        .data;
    let other = std::fs::read(&two).unwrap();
    assert_eq!(bucket_index.len(), other.len());
    assert_ne!(bucket_index, other);
    // In place: same inode, same attributes.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&one)
        .unwrap();
    file.write_all(&other).unwrap();
    drop(file);
    wait_past_cutoff();

    let report = t
        .store
        .garbage_collect_s3(&cached, &GcOptions::default().atime_cutoff_secs(CUTOFF))
        .unwrap();
    let index = keepsake_manifest::index::IndexFile::from_bytes(bucket_index).unwrap();
    use keepsake_manifest::index::ChunkIndex;
    let lost: Vec<String> = index
        .chunks()
        .filter(|c| {
            !cached
                .remote()
                .chunk_exists(&keepsake_backend::ChunkDigest::new(*c.digest))
                .unwrap()
        })
        .map(|c| hex::encode(c.digest))
        .collect();
    assert_eq!(
        lost,
        Vec::<String>::new(),
        "chunks of the bucket's vm/1 index were deleted: {report:?}"
    );
}

/// PBS's process lock is a record lock on `<store>/.lock`; GC opens it with `O_CREAT`. A
/// `.lock` removed (or replaced) while a PBS writer in another process holds it is created
/// anew, GC locks the new inode exclusively and runs beside the writer, whose reused chunks
/// the sweep may remove. A store always has `.lock` (init makes it): a missing one, or one that
/// is not the file others locked, should refuse GC.
#[test]
fn gc_refuses_when_the_lock_file_was_removed_under_a_writer() {
    let t = common::local();
    let lock = t.root().join(".lock");
    let mut writer = pbs_writer_elsewhere(&lock);
    // Held: a GC is refused.
    let fresh = DataStore::builder("teststore", t.root())
        .lock_root(t.dir.path().join("locks"))
        .open()
        .unwrap();
    assert!(fresh.garbage_collect(&GcOptions::default()).is_err());
    drop(fresh);

    std::fs::remove_file(&lock).unwrap();
    let fresh = DataStore::builder("teststore", t.root())
        .lock_root(t.dir.path().join("locks"))
        .open()
        .unwrap();
    let result = fresh.garbage_collect(&GcOptions::default());
    drop(writer.stdin.take());
    writer.wait().unwrap();
    assert!(
        result.is_err(),
        "GC ran while a writer of another process held the store's (removed) lock: {result:?}"
    );
}

/// A dry run counts as removed what a run would remove. A run removes the old `.bad` copies of
/// a referenced chunk that is present (marking touches bad copies only for a missing chunk);
/// the dry run keeps every bad copy of a marked digest.
#[test]
fn a_dry_run_counts_the_bad_copies_a_run_removes() {
    let t = common::local();
    backup(&t.store, "vm/1", T0, "root.pxar.didx", 9, 3);
    let good = chunk_files(&t.root())
        .into_iter()
        .find(|f| f.file_name().unwrap().len() == 64)
        .unwrap();
    let bad = good.with_file_name(format!(
        "{}.0.bad",
        good.file_name().unwrap().to_string_lossy()
    ));
    std::fs::copy(&good, &bad).unwrap();
    age_all(&t.root());

    let dry = t
        .store
        .garbage_collect(&GcOptions::default().mode(GcMode::DryRun))
        .unwrap();
    let run = t.store.garbage_collect(&GcOptions::default()).unwrap();
    assert!(!bad.exists(), "the run removed the bad copy");
    assert_eq!(
        dry.status.removed_bad, run.status.removed_bad,
        "dry run {dry:?}\nrun {run:?}"
    );
}

#[allow(dead_code)]
fn chunk_of(root: &Path, digest: &[u8; 32]) -> PathBuf {
    root.join(chunk_path(digest))
}

/// A source datastore on a second in-memory bucket whose reads take `delay` (the bucket is
/// filled through a prompt backend first).
struct SlowSource {
    store: DataStore,
    bucket: std::sync::Arc<AgedStore>,
    _dir: tempfile::TempDir,
}

fn slow_source(chunk: &[u8], delay: Duration) -> SlowSource {
    use keepsake_backend::{CachedBackend, LocalBackend, ObjectBackend, SyncLevel};
    use std::sync::Arc;
    let memory: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let builder = |cached: Arc<CachedBackend>| {
        DataStore::builder("source", &root)
            .lock_root(dir.path().join("locks"))
            .sync_level(SyncLevel::None)
            .chunk_prefix_dirs(false)
            .backend(cached)
            .namespace_markers(true)
    };
    let prompt = Arc::new(CachedBackend::new(
        LocalBackend::open(&root, SyncLevel::None).unwrap(),
        ObjectBackend::with_store(memory.clone(), "source").unwrap(),
    ));
    let store = builder(prompt).create().unwrap();
    let group = store.group(&BackupNamespace::root(), &"vm/9".parse().unwrap());
    let mut w = group
        .start_backup(&owner(), BackupTime::from_epoch(T0).unwrap())
        .unwrap();
    w.add_dynamic_archive("root.pxar.didx", vec![chunk.to_vec()], Encryption::None)
        .unwrap();
    w.finish().unwrap();
    // Its chunk is read from the bucket, slowly.
    for f in chunk_files(&root) {
        std::fs::remove_file(f).unwrap();
    }
    drop(store);
    let bucket = Arc::new(AgedStore::over(memory, delay));
    let slow = Arc::new(CachedBackend::new(
        LocalBackend::open(&root, SyncLevel::None).unwrap(),
        ObjectBackend::with_store(bucket.clone(), "source").unwrap(),
    ));
    let store = builder(slow).open().unwrap();
    SlowSource {
        store,
        bucket,
        _dir: dir,
    }
}

/// A sync of this process into an S3 datastore during its GC. The sync asks the target whether
/// it has a chunk (`chunk_known`, under the GC's chunk shard); the bucket has it but the cache
/// does not, so the answer is no and the sync reads the chunk from its source. Meanwhile the
/// bucket sweep decides that old unreferenced object and keeps it in its pending batch (shard
/// held). The sync then inserts it through the backend directly, *not* under the shard as
/// `DataStore::insert_chunk` does: the bucket answers "duplicate", the cache gets a copy, the
/// snapshot is written, and the batch's DeleteObjects then removes the object its index needs.
#[test]
fn s3_a_sync_during_the_sweep_keeps_the_objects_it_relies_on() {
    use keepsake_datastore::{GcPhase, SyncOptions};
    use std::sync::{Arc, Mutex};
    let t = aged_target();
    let cached = t.cached.clone().unwrap();
    let data = b"the chunk both stores hold".to_vec();
    // The target's bucket holds it (unreferenced, old); its cache does not (a new cache, or
    // one whose marker went).
    let x = t
        .store
        .insert_chunk(&data, Encryption::None)
        .unwrap()
        .digest;
    std::fs::remove_file(t.root().join(chunk_path(&x))).unwrap();
    let source = slow_source(&data, Duration::from_secs(1));

    let sync: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    let (target, src, bucket, slot) = (
        t.store.clone(),
        source.store.clone(),
        source.bucket.clone(),
        sync.clone(),
    );
    let on_phase = Arc::new(move |phase: GcPhase| {
        if phase != GcPhase::Sweep {
            return;
        }
        let (target, src) = (target.clone(), src.clone());
        let gets = bucket.gets_started();
        *slot.lock().unwrap() = Some(std::thread::spawn(move || {
            target.sync_from(&src, &SyncOptions::default()).unwrap();
        }));
        // The sync asked the target (no) and now reads the chunk from its slow source.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while bucket.gets_started() == gets && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let slept = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_progress = Arc::new(move |p: keepsake_datastore::GcProgress| {
        // After the page that decided the object: a slow listing or endpoint.
        if p.phase == GcPhase::Sweep && !slept.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_secs(4));
        }
    });
    let report = t
        .store
        .garbage_collect_s3(
            &cached,
            &GcOptions::default()
                .on_phase(on_phase)
                .on_progress(on_progress),
        )
        .unwrap();
    sync.lock().unwrap().take().unwrap().join().unwrap();
    let synced = t
        .store
        .group(&BackupNamespace::root(), &"vm/9".parse().unwrap())
        .list_backups()
        .unwrap();
    assert_eq!(synced.len(), 1, "the sync wrote its snapshot");
    assert!(
        cached
            .remote()
            .chunk_exists(&keepsake_backend::ChunkDigest::new(x))
            .unwrap(),
        "the bucket lost the chunk the synced snapshot references: {report:?}"
    );
}

/// An object store whose listings report every object two days older than it is (a bucket
/// cannot be aged, and the writers' slack, 300 s below a writer's start, keeps anything
/// younger), and whose reads (`GET`) can be slowed, counting each as it starts.
#[derive(Debug)]
struct AgedStore {
    inner: std::sync::Arc<dyn object_store::ObjectStore>,
    get_delay: Duration,
    gets_started: std::sync::atomic::AtomicU64,
}

impl AgedStore {
    fn new(get_delay: Duration) -> Self {
        Self::over(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            get_delay,
        )
    }

    fn over(inner: std::sync::Arc<dyn object_store::ObjectStore>, get_delay: Duration) -> Self {
        Self {
            inner,
            get_delay,
            gets_started: Default::default(),
        }
    }

    fn gets_started(&self) -> u64 {
        self.gets_started.load(std::sync::atomic::Ordering::SeqCst)
    }
}

const AGED_BY: Duration = Duration::from_secs(2 * 24 * 3600);

fn aged(meta: object_store::ObjectMeta) -> object_store::ObjectMeta {
    object_store::ObjectMeta {
        last_modified: meta.last_modified - AGED_BY,
        ..meta
    }
}

impl std::fmt::Display for AgedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aged({})", self.inner)
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for AgedStore {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        if !options.head {
            self.gets_started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(self.get_delay).await;
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &object_store::path::Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        use futures::StreamExt;
        self.inner.list(prefix).map(|m| m.map(aged)).boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&object_store::path::Path>,
        offset: &object_store::path::Path,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        use futures::StreamExt;
        self.inner
            .list_with_offset(prefix, offset)
            .map(|m| m.map(aged))
            .boxed()
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        let mut result = self.inner.list_with_delimiter(prefix).await?;
        result.objects = result.objects.into_iter().map(aged).collect();
        Ok(result)
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A datastore on an in-memory bucket that lists its objects two days old, behind a cache.
fn aged_target() -> common::TestStore {
    use keepsake_backend::{CachedBackend, LocalBackend, ObjectBackend, SyncLevel};
    use std::sync::Arc;
    let remote =
        ObjectBackend::with_store(Arc::new(AgedStore::new(Duration::ZERO)), "teststore").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    let cache = LocalBackend::open(dir.path().join("store"), SyncLevel::None).unwrap();
    let cached = Arc::new(CachedBackend::new(cache, remote));
    let store = DataStore::builder("teststore", dir.path().join("store"))
        .lock_root(dir.path().join("locks"))
        .sync_level(SyncLevel::None)
        .chunk_prefix_dirs(false)
        .backend(cached.clone())
        .namespace_markers(true)
        .create()
        .unwrap();
    common::TestStore {
        store,
        kind: "aged-memory",
        dir,
        cached: Some(cached),
    }
}

/// Two caches of one bucket on one host (two cache folders, neither in multi-host mode): a
/// backup through the second cache reuses an old chunk through its own cache copy while the
/// first cache's GC sweeps. Nothing in the first cache or the bucket shows the reuse (the
/// second cache's `.lock` is another file, its index is uploaded after the first GC's mark), so
/// the object is deleted under the finished snapshot. Multi-host mode refuses GC for this; a
/// second cache without it is not detected and the run goes on.
#[test]
#[ignore = "known limit, documented: two caches of one bucket without --multi-host are not detected; a backup through the other cache can lose a reused chunk to GC"]
fn s3_a_backup_through_a_second_cache_during_the_sweep_keeps_its_chunks() {
    use keepsake_backend::{CachedBackend, LocalBackend, SyncLevel};
    use keepsake_datastore::GcPhase;
    use std::sync::Arc;
    let first = aged_target();
    let cached = first.cached.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let other_cached = Arc::new(CachedBackend::new(
        LocalBackend::open(&root, SyncLevel::None).unwrap(),
        cached.remote().clone(),
    ));
    other_cached.refresh().unwrap();
    std::fs::create_dir_all(root.join(".chunks")).unwrap();
    let other = DataStore::builder("teststore", &root)
        .lock_root(dir.path().join("locks"))
        .sync_level(SyncLevel::None)
        .backend(other_cached.clone())
        .namespace_markers(true)
        .open()
        .unwrap();
    let data = vec![42u8; 3000];
    let x = other.insert_chunk(&data, Encryption::None).unwrap().digest;

    let writer_store = other.clone();
    let on_phase = Arc::new(move |phase: GcPhase| {
        if phase == GcPhase::Sweep {
            // Marking is done; the other cache's backup reuses the old chunk.
            let group = writer_store.group(&BackupNamespace::root(), &"vm/5".parse().unwrap());
            let mut w = group
                .start_backup(&owner(), BackupTime::from_epoch(T0).unwrap())
                .unwrap();
            w.add_dynamic_archive("root.pxar.didx", vec![data.clone()], Encryption::None)
                .unwrap();
            w.finish().unwrap();
        }
    });
    let report = first
        .store
        .garbage_collect_s3(&cached, &GcOptions::default().on_phase(on_phase))
        .unwrap();
    assert!(
        cached
            .remote()
            .chunk_exists(&keepsake_backend::ChunkDigest::new(x))
            .unwrap(),
        "the bucket lost the chunk of a snapshot finished through the other cache: {report:?}"
    );
}

/// fcntl locks belong to the process: closing any descriptor of `.lock` in this process drops
/// GC's exclusive lock, and a PBS writer elsewhere could then start beside the sweep. What an
/// operator's tool may run beside a GC in the same process must not open and close `.lock`.
#[test]
fn operations_beside_a_running_gc_keep_its_process_lock() {
    use keepsake_datastore::{CacheCheck, FsckOptions, GcPhase};
    use std::sync::{Arc, Mutex};
    for t in [common::local(), common::cached_memory()] {
        backup(&t.store, "vm/1", T0, "root.pxar.didx", 3, 3);
        let lock = t.root().join(".lock");
        let said: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
        let (store, cached, slot, lock_file, root, locks) = (
            t.store.clone(),
            t.cached.clone(),
            said.clone(),
            lock.clone(),
            t.root(),
            t.dir.path().join("locks"),
        );
        let on_phase = Arc::new(move |phase: GcPhase| {
            if phase != GcPhase::Mark {
                return;
            }
            let check = |what: &'static str| {
                slot.lock()
                    .unwrap()
                    .push((what, try_exclusive_elsewhere(&lock_file)));
            };
            check("gc itself");
            // A second run in this process (another thread, the same objects) is refused.
            let second = match &cached {
                Some(cached) => store.garbage_collect_s3(cached, &GcOptions::default()),
                None => store.garbage_collect(&GcOptions::default()),
            };
            assert!(
                matches!(second, Err(keepsake_datastore::Error::ProcessLocked { .. })),
                "{second:?}"
            );
            check("a second run refused");
            store.usage().unwrap();
            check("usage");
            let _ = store.fsck(&FsckOptions::default()).unwrap();
            check("fsck");
            let _ = verify_problems(&store);
            check("verify");
            store.gc_status().unwrap();
            check("gc_status");
            let dry = GcOptions::default().mode(GcMode::DryRun);
            match &cached {
                Some(cached) => {
                    store.garbage_collect_s3(cached, &dry).unwrap();
                    check("dry run");
                    store.check_cache(cached, CacheCheck::Contents).unwrap();
                    check("check_cache");
                    store.usage_s3(cached).unwrap();
                    check("usage_s3");
                }
                None => {
                    store.garbage_collect(&dry).unwrap();
                    check("dry run");
                    let other = DataStore::builder("teststore", &root)
                        .lock_root(&locks)
                        .open()
                        .unwrap();
                    let _ = other.usage().unwrap();
                    drop(other);
                    check("another DataStore object");
                }
            }
        });
        let options = GcOptions::default().on_phase(on_phase);
        match &t.cached {
            Some(cached) => drop(t.store.garbage_collect_s3(cached, &options).unwrap()),
            None => drop(t.store.garbage_collect(&options).unwrap()),
        }
        assert!(said.lock().unwrap().len() >= 8, "{}", t.kind);
        for (what, state) in said.lock().unwrap().iter() {
            assert_eq!(state, "busy", "{}: after {what}", t.kind);
        }
        assert_eq!(try_exclusive_elsewhere(&lock), "free", "{}", t.kind);
    }
}

/// Phase 1 lists every index (remembering each one's device and inode as seen), then reads them.
/// A group moved between its listing and its read (`Group::move_to`: one rename, the inodes
/// stay) is read at its old path: not found, taken for pruned. The next walk finds it at its
/// new path, but its inodes are already "seen", so it is never read: its chunks are swept
/// under a finished snapshot. The window is the whole read phase of a large store, not the
/// walk alone.
#[test]
fn local_a_group_moved_between_the_walk_and_the_read_keeps_its_chunks() {
    use keepsake_datastore::{GcPhase, GcProgress, Merge};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let t = common::local();
    backup(&t.store, "vm/1", T0, "root.pxar.didx", 10, 3);
    backup(&t.store, "vm/2", T0, "root.pxar.didx", 50, 3);
    let b: BackupNamespace = "b".parse().unwrap();
    t.store.create_namespace(&b).unwrap();
    age_all(&t.root());
    let store = t.store.clone();
    let moved = Arc::new(AtomicBool::new(false));
    let on_progress = Arc::new(move |p: GcProgress| {
        // After the first index read: an operator moves both groups to namespace `b`.
        if p.phase == GcPhase::Mark && !moved.swap(true, Ordering::SeqCst) {
            for group in ["vm/1", "vm/2"] {
                store
                    .group(&BackupNamespace::root(), &group.parse().unwrap())
                    .move_to(&b, Merge::Never)
                    .unwrap();
            }
        }
    });
    let report = t
        .store
        .garbage_collect(&GcOptions::default().threads(1).on_progress(on_progress))
        .unwrap();
    assert_eq!(
        verify_problems(&t.store),
        Vec::<String>::new(),
        "GC removed chunks of a moved snapshot: {report:?}"
    );
}

/// Bytes this process has read so far (`rchar` of `/proc/self/io`).
fn bytes_read() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A hostile (or damaged) index of 1 GiB — a sparse file of zeros costs no disk — is read
/// whole into memory before its header is looked at (`std::fs::read`), by GC and by `usage`:
/// a large enough one exhausts memory. The header (magic, and for a `.fidx` the size it
/// implies) can refuse it after 4 KiB, as `FixedIndex::read_from` does.
#[test]
fn a_huge_hostile_index_is_refused_without_reading_it_whole() {
    let t = common::local();
    backup(&t.store, "vm/1", T0, "root.pxar.didx", 3, 2);
    let time = BackupTime::from_epoch(T0).unwrap().to_string();
    let huge = std::fs::File::create(t.root().join(format!("vm/1/{time}/huge.img.fidx"))).unwrap();
    huge.set_len(1 << 30).unwrap();
    drop(huge);
    let before = bytes_read();
    let result = t.store.garbage_collect(&GcOptions::default().threads(1));
    let read = bytes_read() - before;
    assert!(result.is_err(), "a corrupt index fails GC: {result:?}");
    assert!(
        read < 256 << 20,
        "GC read {} MiB to refuse a 1 GiB index of zeros",
        read >> 20
    );
}

/// Every file below `root` with its size, mtime and (for chunks) atime.
fn tree(root: &Path) -> Vec<(PathBuf, u64, i64, Option<i64>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let chunk = path.components().any(|c| c.as_os_str() == ".chunks");
            out.push((
                path,
                meta.len(),
                meta.mtime(),
                (chunk && meta.is_file()).then(|| meta.atime()),
            ));
        }
    }
    out.sort();
    out
}

/// Held: a dry run (local and S3) changes no file, no chunk's atime and no bucket object.
#[test]
fn a_dry_run_changes_nothing() {
    for t in [common::local(), aged_target()] {
        backup(&t.store, "vm/1", T0, "root.pxar.didx", 3, 3);
        t.store
            .insert_chunk(b"unreferenced", Encryption::None)
            .unwrap();
        age_all(&t.root());
        let before = tree(&t.root());
        let objects = |t: &common::TestStore| {
            t.cached.as_ref().map(|c| {
                let mut all = Vec::new();
                c.remote()
                    .for_each_chunk_page(|page| {
                        all.extend(page.into_iter().map(|o| o.path.to_string()));
                        Ok(())
                    })
                    .unwrap();
                all.sort();
                all
            })
        };
        let bucket_before = objects(&t);
        let dry = GcOptions::default().mode(GcMode::DryRun);
        let report = match &t.cached {
            Some(cached) => t.store.garbage_collect_s3(cached, &dry).unwrap(),
            None => t.store.garbage_collect(&dry).unwrap(),
        };
        assert!(report.status.removed_chunks >= 1, "{}: {report:?}", t.kind);
        assert_eq!(tree(&t.root()), before, "{}", t.kind);
        assert_eq!(objects(&t), bucket_before, "{}", t.kind);
    }
}

/// Held: a run that fails in the sweep (a stray file where a prefix folder belongs) reports the
/// error and writes no `.gc-status`.
#[test]
fn a_failed_run_writes_no_status() {
    let t = common::local();
    backup(&t.store, "vm/1", T0, "root.pxar.didx", 3, 3);
    std::fs::write(t.root().join(".chunks/abcd"), b"not a folder").unwrap();
    age_all(&t.root());
    let result = t.store.garbage_collect(&GcOptions::default());
    assert!(result.is_err(), "{result:?}");
    assert!(!t.root().join(".gc-status").exists());
    assert!(verify_problems(&t.store).is_empty());
}

/// Held: a backup through a second `DataStore` object of the same store in this process,
/// started after marking and reusing an old unreferenced chunk, keeps it (both objects share
/// one process lock: the writer lowers the cutoff and touches the chunk under the shard).
#[test]
fn a_backup_through_a_second_datastore_object_during_the_sweep_keeps_its_chunks() {
    use keepsake_datastore::GcPhase;
    use std::sync::Arc;
    let t = common::local();
    let data = vec![7u8; 2000];
    t.store.insert_chunk(&data, Encryption::None).unwrap();
    age_all(&t.root());
    let second = DataStore::builder("teststore", t.root())
        .lock_root(t.dir.path().join("locks"))
        .open()
        .unwrap();
    let on_phase = Arc::new(move |phase: GcPhase| {
        if phase == GcPhase::Sweep {
            let group = second.group(&BackupNamespace::root(), &"vm/5".parse().unwrap());
            let mut w = group
                .start_backup(&owner(), BackupTime::from_epoch(T0).unwrap())
                .unwrap();
            w.add_dynamic_archive("root.pxar.didx", vec![data.clone()], Encryption::None)
                .unwrap();
            w.finish().unwrap();
        }
    });
    let report = t
        .store
        .garbage_collect(&GcOptions::default().on_phase(on_phase))
        .unwrap();
    assert_eq!(
        verify_problems(&t.store),
        Vec::<String>::new(),
        "{report:?}"
    );
}

/// Held: odd entries in `.chunks` (names of a chunk's length that are not UTF-8 or hold
/// multi-byte characters, a folder or a symlink under a chunk's name, an uppercase prefix
/// folder) neither panic GC nor lead it out of the datastore; the referenced chunks stay.
#[test]
fn odd_entries_in_chunks_neither_panic_nor_leave_the_store() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let t = common::local();
    backup(&t.store, "vm/1", T0, "root.pxar.didx", 3, 3);
    let outside = t.dir.path().join("outside");
    std::fs::write(&outside, b"not the datastore's").unwrap();
    age(&outside, now() - 3 * DAY);
    let prefix = t.root().join(".chunks/0000");
    std::fs::create_dir_all(&prefix).unwrap();
    let mut latin = vec![b'a'; 62];
    latin.extend_from_slice(&[0xff, 0xfe]);
    std::fs::write(prefix.join(OsStr::from_bytes(&latin)), b"x").unwrap();
    let wide = format!("{}é.0.bad", "a".repeat(62)); // 70 bytes, byte 64 is '.'
    assert_eq!(wide.len(), 69 + 1);
    std::fs::write(prefix.join(&wide), b"x").unwrap();
    let hex = "0000".to_owned() + &"1".repeat(60);
    std::fs::create_dir(prefix.join(&hex)).unwrap();
    let linked = "0000".to_owned() + &"2".repeat(60);
    std::os::unix::fs::symlink(&outside, prefix.join(&linked)).unwrap();
    let upper = t.root().join(".chunks/ABCD");
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::write(upper.join("abcd".to_owned() + &"3".repeat(60)), b"x").unwrap();
    age_all(&t.root());

    let report = t.store.garbage_collect(&GcOptions::default()).unwrap();
    assert!(outside.exists(), "{report:?}");
    assert!(prefix.join(&hex).is_dir());
    assert!(
        std::fs::symlink_metadata(prefix.join(&linked))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(verify_problems(&t.store).is_empty());
    t.store.usage().unwrap();
}

/// Held on S3: groups moved (copy and delete in the bucket) while GC reads the bucket's indexes
/// are read again under their new keys; nothing they reference is deleted.
#[test]
fn s3_groups_moved_while_the_bucket_indexes_are_read_keep_their_chunks() {
    use keepsake_datastore::{GcPhase, GcProgress, Merge};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let t = aged_target();
    let cached = t.cached.clone().unwrap();
    backup(&t.store, "vm/1", T0, "root.pxar.didx", 10, 3);
    backup(&t.store, "vm/2", T0, "root.pxar.didx", 50, 3);
    let b: BackupNamespace = "b".parse().unwrap();
    t.store.create_namespace(&b).unwrap();
    age_all(&t.root());
    let store = t.store.clone();
    let moved = Arc::new(AtomicBool::new(false));
    let did_move = moved.clone();
    let on_progress = Arc::new(move |p: GcProgress| {
        if p.phase == GcPhase::MarkBucket && !moved.swap(true, Ordering::SeqCst) {
            for group in ["vm/1", "vm/2"] {
                store
                    .group(&BackupNamespace::root(), &group.parse().unwrap())
                    .move_to(&b, Merge::Never)
                    .unwrap();
            }
        }
    });
    let report = t
        .store
        .garbage_collect_s3(
            &cached,
            &GcOptions::default().threads(1).on_progress(on_progress),
        )
        .unwrap();
    assert!(did_move.load(Ordering::SeqCst));
    assert_eq!(report.status.removed_chunks, 0, "{report:?}");
    assert_eq!(
        verify_problems(&t.store),
        Vec::<String>::new(),
        "{report:?}"
    );
}
