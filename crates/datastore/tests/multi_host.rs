//! Several hosts on one bucket: the capability probe, and keepsake processes (this test binary
//! re-run in a child role), each with its own cache folder, sharing one bucket prefix on the S3
//! test server (moto, started by `cargo xtask test`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keepsake_backend::{
    CachedBackend, LocalBackend, ObjectBackend, RetrySettings, S3Config, SyncLevel,
};
use keepsake_datastore::lease::{
    self, LeaseLocker, LeaseSettings, MissingCondition, probe_conditional_writes,
};
use keepsake_datastore::{DataStore, Encryption, Error};
use keepsake_hierarchy::{Authid, BackupDir, BackupNamespace};
use keepsake_testkit::faults::{FaultPlan, FaultyStore};
use keepsake_testkit::s3::S3TestConfig;
use object_store::memory::InMemory;

/// Which role a re-run of this binary plays, and its arguments.
const ROLE_VAR: &str = "KEEPSAKE_MULTI_HOST_ROLE";
/// The shared bucket prefix (datastore name).
const PREFIX_VAR: &str = "KEEPSAKE_MULTI_HOST_PREFIX";
/// The child's own cache folder.
const CACHE_VAR: &str = "KEEPSAKE_MULTI_HOST_CACHE";
const COUNTER_KEY: &str = "keepsake-test-counter";
const SNAPSHOT: &str = "vm/100/2024-06-05T15:06:40Z";
/// Printed by the paused child once it is inside its manifest update.
const INSIDE: &str = "KEEPSAKE-MULTI-HOST-INSIDE";
/// Printed by the paused child with the outcome of its write.
const OUTCOME: &str = "KEEPSAKE-MULTI-HOST-OUTCOME";

fn s3_config(cfg: &S3TestConfig) -> S3Config {
    let mut config = S3Config::new(
        cfg.bucket.clone(),
        cfg.region.clone(),
        cfg.access_key_id.clone(),
        cfg.secret_access_key.clone(),
    );
    config.endpoint = Some(cfg.endpoint.clone());
    config.allow_http = true;
    config.retry = RetrySettings::for_tests();
    config
}

/// Short leases, so that a paused holder runs out quickly.
fn settings() -> LeaseSettings {
    LeaseSettings::with_lease(Duration::from_secs(2)).clock_skew(Duration::from_millis(500))
}

/// One "host": a multi-host datastore on the shared prefix with its own cache folder. The first
/// host creates the store; the others join (refresh their empty cache from the bucket, then open).
fn host(cfg: &S3TestConfig, prefix: &str, cache: &Path, create: bool) -> DataStore {
    let remote = ObjectBackend::s3(&s3_config(cfg), prefix).unwrap();
    std::fs::create_dir_all(cache).unwrap();
    let local = LocalBackend::open(cache, SyncLevel::None).unwrap();
    let cached = Arc::new(CachedBackend::new(local, remote.clone()));
    let builder = DataStore::builder(prefix, cache)
        .backend(cached.clone())
        .namespace_markers(true)
        .chunk_prefix_dirs(false)
        .multi_host(remote, settings());
    if create {
        builder.create().unwrap()
    } else {
        std::fs::create_dir_all(cache.join(".chunks")).unwrap();
        cached.refresh().unwrap();
        builder.open().unwrap()
    }
}

fn counter(store: &DataStore) -> u64 {
    let dir: BackupDir = SNAPSHOT.parse().unwrap();
    store
        .snapshot(&BackupNamespace::root(), &dir)
        .load_manifest()
        .unwrap()
        .unprotected()
        .get(COUNTER_KEY)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

fn increment(store: &DataStore) -> keepsake_datastore::Result<()> {
    let dir: BackupDir = SNAPSHOT.parse().unwrap();
    store
        .snapshot(&BackupNamespace::root(), &dir)
        .update_manifest(|m| {
            let next = m
                .unprotected()
                .get(COUNTER_KEY)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
                + 1;
            m.unprotected_mut()
                .insert(COUNTER_KEY.to_owned(), serde_json::Value::from(next));
            Ok(())
        })
        .map(|_| ())
}

/// The first host: a store with one finished snapshot.
fn first_host(cfg: &S3TestConfig, prefix: &str, cache: &Path) -> DataStore {
    let store = host(cfg, prefix, cache, true);
    let dir: BackupDir = SNAPSHOT.parse().unwrap();
    let group = store.group(&BackupNamespace::root(), dir.group());
    let owner: Authid = "root@pam".parse().unwrap();
    let mut writer = group.start_backup(&owner, dir.time()).unwrap();
    writer
        .add_blob("conf.blob", b"config", Encryption::None)
        .unwrap();
    writer.finish().unwrap();
    store
}

/// A re-run of this test binary as another host; killed (and reaped) on drop.
struct HostProcess {
    child: Child,
}

impl HostProcess {
    fn spawn(test: &str, role: &str, prefix: &str, cache: &Path) -> Self {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE_VAR, role)
            .env(PREFIX_VAR, prefix)
            .env(CACHE_VAR, cache)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self { child }
    }

    fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap()
    }

    /// Reads the child's stdout until a line starting with `marker`; returns that line.
    fn wait_for(&mut self, lines: &mut impl Iterator<Item = String>, marker: &str) -> String {
        for line in lines {
            if line.starts_with(marker) {
                return line;
            }
        }
        let status = self.child.wait().unwrap();
        panic!("child exited ({status:?}) before printing {marker}");
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.pid(), rustix::process::Signal::CONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cached backend that, once armed, stops right after it answered the bucket's check of a
/// `.protected` marker (the last question a destroy asks before it deletes): it says so on stdout
/// and waits for a line on stdin. The parent stops the whole process there (SIGSTOP: no lease
/// renewal either), as a host paused at the worst moment.
#[derive(Debug)]
struct PauseAfterProtectedCheck {
    inner: Arc<CachedBackend>,
    armed: std::sync::atomic::AtomicBool,
}

macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> $ret { self.inner.$name($($arg),*) })*
    };
}

impl keepsake_backend::Backend for PauseAfterProtectedCheck {
    forward! {
        capabilities() -> keepsake_backend::Capabilities;
        list(folder: &keepsake_backend::BackendPath) -> keepsake_backend::Result<keepsake_backend::Listing<'_>>;
        read(file: &keepsake_backend::BackendPath) -> keepsake_backend::Result<keepsake_backend::FileContents>;
        write(file: &keepsake_backend::BackendPath, data: &[u8], mode: keepsake_backend::WriteMode) -> keepsake_backend::Result<keepsake_backend::Version>;
        remove_file(file: &keepsake_backend::BackendPath) -> keepsake_backend::Result<()>;
        remove_tree(folder: &keepsake_backend::BackendPath, keep: &keepsake_backend::KeepFilter) -> keepsake_backend::Result<keepsake_backend::RemoveReport>;
        rename(from: &keepsake_backend::BackendPath, to: &keepsake_backend::BackendPath) -> keepsake_backend::Result<()>;
        stat(path: &keepsake_backend::BackendPath) -> keepsake_backend::Result<keepsake_backend::Stat>;
        create_dir_all(folder: &keepsake_backend::BackendPath) -> keepsake_backend::Result<()>;
        exists(path: &keepsake_backend::BackendPath) -> keepsake_backend::Result<bool>;
        read_authoritative(file: &keepsake_backend::BackendPath) -> keepsake_backend::Result<keepsake_backend::FileContents>;
        list_files_authoritative(folder: &keepsake_backend::BackendPath) -> keepsake_backend::Result<Vec<keepsake_backend::BackendPath>>;
        remove_files(files: &[keepsake_backend::BackendPath]) -> keepsake_backend::Result<keepsake_backend::RemoveReport>;
        remove_folder_if_empty(folder: &keepsake_backend::BackendPath) -> keepsake_backend::Result<bool>;
    }

    fn host_local(&self) -> Option<&LocalBackend> {
        self.inner.host_local()
    }

    fn exists_authoritative(
        &self,
        path: &keepsake_backend::BackendPath,
    ) -> keepsake_backend::Result<bool> {
        let answer = self.inner.exists_authoritative(path);
        if path.file_name() == Some(".protected")
            && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{INSIDE}").unwrap();
            out.flush().unwrap();
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
        }
        answer
    }
}

/// What a child does instead of the test; exits the process when done.
fn child_main(cfg: &S3TestConfig, role: &str) -> ! {
    let prefix = std::env::var(PREFIX_VAR).unwrap();
    let cache = std::path::PathBuf::from(std::env::var_os(CACHE_VAR).unwrap());
    if role == "paused-destroy" {
        // The store over a backend that stops after the protection check.
        host(cfg, &prefix, &cache, false);
        let remote = ObjectBackend::s3(&s3_config(cfg), &prefix).unwrap();
        let local = LocalBackend::open(&cache, SyncLevel::None).unwrap();
        let pausing = Arc::new(PauseAfterProtectedCheck {
            inner: Arc::new(CachedBackend::new(local, remote.clone())),
            armed: std::sync::atomic::AtomicBool::new(true),
        });
        let store = DataStore::builder(&prefix, &cache)
            .backend(pausing)
            .namespace_markers(true)
            .multi_host(remote, settings())
            .open()
            .unwrap();
        let dir: BackupDir = SNAPSHOT.parse().unwrap();
        let outcome = match store.snapshot(&BackupNamespace::root(), &dir).destroy() {
            Ok(()) => "destroyed".to_owned(),
            Err(Error::LeaseLost { reason, .. }) => format!("lease-lost {reason}"),
            Err(Error::Protected { .. }) => "protected".to_owned(),
            Err(e) => format!("other {e}"),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{OUTCOME} {outcome}").unwrap();
        out.flush().unwrap();
        std::process::exit(0);
    }
    let store = host(cfg, &prefix, &cache, false);
    match role.split(':').collect::<Vec<_>>().as_slice() {
        ["count", n] => {
            for _ in 0..n.parse::<u32>().unwrap() {
                increment(&store).unwrap();
            }
        }
        ["paused"] => {
            let dir: BackupDir = SNAPSHOT.parse().unwrap();
            let result = store
                .snapshot(&BackupNamespace::root(), &dir)
                .update_manifest(|m| {
                    // Tell the parent we hold the lease, then wait (the parent stops us here and
                    // lets the lease run out) until it says go.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{INSIDE}").unwrap();
                    out.flush().unwrap();
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).unwrap();
                    m.unprotected_mut()
                        .insert("written-by".to_owned(), "paused holder".into());
                    Ok(())
                });
            let outcome = match result {
                Ok(_) => "written".to_owned(),
                Err(Error::LeaseLost { reason, .. }) => format!("lease-lost {reason}"),
                Err(e) => format!("other {e}"),
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{OUTCOME} {outcome}").unwrap();
            out.flush().unwrap();
        }
        [action @ ("protect-all" | "destroy-all"), n, go_ms] => {
            // Start together with the other host, at the agreed wall-clock time.
            let go = std::time::UNIX_EPOCH + Duration::from_millis(go_ms.parse().unwrap());
            if let Ok(wait) = go.duration_since(std::time::SystemTime::now()) {
                std::thread::sleep(wait);
            }
            let root = BackupNamespace::root();
            let mut out = std::io::stdout().lock();
            for i in 0..n.parse::<i64>().unwrap() {
                let snapshot = store.snapshot(&root, &race_snapshot(i));
                let result = if *action == "protect-all" {
                    snapshot.set_protected(true)
                } else {
                    snapshot.destroy()
                };
                let outcome = match result {
                    Ok(()) => "ok".to_owned(),
                    Err(Error::Protected { .. }) => "protected".to_owned(),
                    Err(e) if e.is_not_found() => "not-found".to_owned(),
                    Err(e) if e.is_locked() => "locked".to_owned(),
                    Err(e) => format!("other {e}"),
                };
                writeln!(out, "{OUTCOME} {i} {outcome}").unwrap();
            }
            out.flush().unwrap();
        }
        _ => panic!("unknown role {role:?}"),
    }
    std::process::exit(0);
}

fn child_role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

#[test]
fn concurrent_manifest_counters_lose_no_increment() {
    let test = "concurrent_manifest_counters_lose_no_increment";
    let Some(cfg) = keepsake_testkit::s3::config_or_skip(test) else {
        return;
    };
    if let Some(role) = child_role() {
        child_main(&cfg, &role);
    }
    const HOSTS: usize = 3;
    const PER_HOST: u64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let prefix = keepsake_testkit::s3::unique_prefix("mhc");
    let store = first_host(&cfg, &prefix, &dir.path().join("host0"));
    let started = Instant::now();
    let children: Vec<HostProcess> = (1..=HOSTS)
        .map(|i| {
            let cache = dir.path().join(format!("host{i}"));
            HostProcess::spawn(test, &format!("count:{PER_HOST}"), &prefix, &cache)
        })
        .collect();
    for _ in 0..PER_HOST {
        increment(&store).unwrap();
    }
    for mut child in children {
        let status = child.child.wait().unwrap();
        assert!(status.success(), "host process failed: {status:?}");
    }
    // Read from the bucket, through a fresh host: nothing stale from this host's cache.
    let check = host(&cfg, &prefix, &dir.path().join("check"), false);
    assert_eq!(counter(&check), (HOSTS as u64 + 1) * PER_HOST);
    // Every lease was released, and its object deleted by its last holder (the test server
    // enforces conditional deletes).
    assert!(check.is_multi_host());
    let remote = ObjectBackend::s3(&s3_config(&cfg), &prefix).unwrap();
    let found = probe_conditional_writes(&remote).unwrap();
    let locker = LeaseLocker::with_capabilities(remote, settings(), found).unwrap();
    assert!(locker.deletes_released_leases());
    let leases = locker.leases().unwrap();
    assert!(leases.is_empty(), "leases left in the bucket: {leases:?}");
    eprintln!(
        "{test}: {} increments from {} processes in {:?}",
        (HOSTS as u64 + 1) * PER_HOST,
        HOSTS + 1,
        started.elapsed()
    );
}

#[test]
fn paused_holder_cannot_write_after_its_lease_was_taken() {
    let test = "paused_holder_cannot_write_after_its_lease_was_taken";
    let Some(cfg) = keepsake_testkit::s3::config_or_skip(test) else {
        return;
    };
    if let Some(role) = child_role() {
        child_main(&cfg, &role);
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = keepsake_testkit::s3::unique_prefix("mhp");
    let store = first_host(&cfg, &prefix, &dir.path().join("host0"));
    let snapshot = store.snapshot(&BackupNamespace::root(), &SNAPSHOT.parse().unwrap());
    increment(&store).unwrap();

    let mut paused = HostProcess::spawn(test, "paused", &prefix, &dir.path().join("host1"));
    let stdout = paused.child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines().map(Result::unwrap);
    paused.wait_for(&mut lines, INSIDE);
    rustix::process::kill_process(paused.pid(), rustix::process::Signal::STOP).unwrap();

    // While its lease runs, the paused holder keeps the manifest.
    let busy = snapshot.lock_manifest(Duration::ZERO).unwrap_err();
    assert!(busy.is_locked(), "{busy:?}");
    // Past lease length plus the skew bound (2 s + 0.5 s, renewed at most 2/3 s before the
    // stop), another host takes over.
    std::thread::sleep(Duration::from_millis(3200));
    let taken = snapshot.lock_manifest(Duration::from_secs(5)).unwrap();

    rustix::process::kill_process(paused.pid(), rustix::process::Signal::CONT).unwrap();
    writeln!(paused.child.stdin.as_mut().unwrap(), "go").unwrap();
    let outcome = paused.wait_for(&mut lines, OUTCOME);
    assert!(
        outcome.starts_with(&format!("{OUTCOME} lease-lost")),
        "the paused holder's write was not fenced: {outcome}"
    );
    assert!(paused.child.wait().unwrap().success());

    // Nothing of the paused holder reached the bucket; the new holder's update goes through.
    drop(taken);
    let check = host(&cfg, &prefix, &dir.path().join("check"), false);
    let manifest = check
        .snapshot(&BackupNamespace::root(), &SNAPSHOT.parse().unwrap())
        .load_manifest()
        .unwrap();
    assert!(manifest.unprotected().get("written-by").is_none());
    assert_eq!(counter(&check), 1);
    increment(&store).unwrap();
    assert_eq!(counter(&store), 2);
}

#[test]
fn a_destroy_paused_past_its_lease_never_removes_what_was_protected_meanwhile() {
    let test = "a_destroy_paused_past_its_lease_never_removes_what_was_protected_meanwhile";
    let Some(cfg) = keepsake_testkit::s3::config_or_skip(test) else {
        return;
    };
    if let Some(role) = child_role() {
        child_main(&cfg, &role);
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = keepsake_testkit::s3::unique_prefix("mhpd");
    let store = first_host(&cfg, &prefix, &dir.path().join("host0"));
    let root = BackupNamespace::root();
    let snapshot = store.snapshot(&root, &SNAPSHOT.parse().unwrap());

    // The other host checks `.protected` in the bucket (not there), and stops right after.
    let mut paused = HostProcess::spawn(test, "paused-destroy", &prefix, &dir.path().join("host1"));
    let stdout = paused.child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines().map(Result::unwrap);
    paused.wait_for(&mut lines, INSIDE);
    rustix::process::kill_process(paused.pid(), rustix::process::Signal::STOP).unwrap();
    // Past its lease (2 s + 0.5 s skew), this host takes the snapshot and protects it.
    std::thread::sleep(Duration::from_millis(3200));
    snapshot.set_protected(true).unwrap();
    rustix::process::kill_process(paused.pid(), rustix::process::Signal::CONT).unwrap();
    writeln!(paused.child.stdin.as_mut().unwrap(), "go").unwrap();
    let outcome = paused.wait_for(&mut lines, OUTCOME);
    assert!(
        outcome.starts_with(&format!("{OUTCOME} lease-lost")),
        "the paused destroy was not fenced: {outcome}"
    );
    assert!(paused.child.wait().unwrap().success());
    let check = host(&cfg, &prefix, &dir.path().join("check"), false);
    let kept = check.snapshot(&root, &SNAPSHOT.parse().unwrap());
    assert!(kept.is_finished().unwrap(), "the manifest was removed");
    assert!(kept.is_protected().unwrap());
}

#[test]
fn destroy_on_another_host_keeps_a_snapshot_protected_there() {
    let test = "destroy_on_another_host_keeps_a_snapshot_protected_there";
    let Some(cfg) = keepsake_testkit::s3::config_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = keepsake_testkit::s3::unique_prefix("mhd");
    let a = first_host(&cfg, &prefix, &dir.path().join("a"));
    // Host B's cache sees the snapshot unprotected; then host A protects it.
    let b = host(&cfg, &prefix, &dir.path().join("b"), false);
    let dir_name: BackupDir = SNAPSHOT.parse().unwrap();
    let root = BackupNamespace::root();
    assert!(!b.snapshot(&root, &dir_name).is_protected().unwrap());
    a.snapshot(&root, &dir_name).set_protected(true).unwrap();
    match b.snapshot(&root, &dir_name).destroy() {
        Err(Error::Protected { .. }) => {}
        other => panic!("host B destroyed a snapshot host A protected: {other:?}"),
    }
    let check = host(&cfg, &prefix, &dir.path().join("check"), false);
    assert!(check.snapshot(&root, &dir_name).is_protected().unwrap());
    assert!(check.snapshot(&root, &dir_name).is_finished().unwrap());
}

fn probe_with(store: Arc<dyn object_store::ObjectStore>) -> Result<DataStore, Error> {
    let dir = tempfile::tempdir().unwrap();
    let remote = ObjectBackend::with_store(store, "probe").unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let cached = Arc::new(CachedBackend::new(
        LocalBackend::open(&cache, SyncLevel::None).unwrap(),
        remote.clone(),
    ));
    DataStore::builder("probe", &cache)
        .backend(cached)
        .lock_root(dir.path().join("locks"))
        .chunk_prefix_dirs(false)
        .multi_host(remote, settings())
        .create()
}

#[test]
fn probe_refuses_a_store_that_ignores_put_conditions() {
    let faulty = Arc::new(FaultyStore::new(
        Arc::new(InMemory::new()),
        FaultPlan::new(1).ignore_put_conditions(),
    ));
    match probe_with(faulty) {
        Err(Error::Lease(lease::Error::Unsupported {
            missing: MissingCondition::CreateOnly,
            ..
        })) => {}
        other => panic!("expected Unsupported(CreateOnly), got {other:?}"),
    }
    let store = probe_with(Arc::new(InMemory::new())).unwrap();
    assert!(store.is_multi_host());

    // Single-host mode on the same kind of server still works.
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FaultyStore::new(
        Arc::new(InMemory::new()),
        FaultPlan::new(1).ignore_put_conditions(),
    ));
    let remote = ObjectBackend::with_store(faulty, "single").unwrap();
    std::fs::create_dir_all(dir.path().join("cache")).unwrap();
    let cached = Arc::new(CachedBackend::new(
        LocalBackend::open(dir.path().join("cache"), SyncLevel::None).unwrap(),
        remote,
    ));
    let single = DataStore::builder("single", dir.path().join("cache"))
        .backend(cached)
        .lock_root(dir.path().join("locks"))
        .chunk_prefix_dirs(false)
        .create()
        .unwrap();
    assert!(!single.is_multi_host());
    single.create_namespace(&"a".parse().unwrap()).unwrap();
}

#[test]
fn probe_on_the_s3_server() {
    let test = "probe_on_the_s3_server";
    let Some(cfg) = keepsake_testkit::s3::config_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // moto enforces both conditions.
    let prefix = keepsake_testkit::s3::unique_prefix("mhq");
    let store = host(&cfg, &prefix, &dir.path().join("ok"), true);
    assert!(store.is_multi_host());
    let lister = LeaseLocker::new(
        ObjectBackend::s3(&s3_config(&cfg), &prefix).unwrap(),
        settings(),
    );
    assert!(lister.unwrap().leases().unwrap().is_empty());

    // The same server behind a wrapper that drops the conditions.
    let wrapped = ObjectBackend::s3_wrapped(&s3_config(&cfg), &prefix, |s3| {
        Arc::new(FaultyStore::new(
            s3,
            FaultPlan::new(1).ignore_put_conditions(),
        ))
    })
    .unwrap();
    match probe_conditional_writes(&wrapped) {
        Err(lease::Error::Unsupported {
            missing: MissingCondition::CreateOnly,
            ..
        }) => {}
        other => panic!("expected Unsupported(CreateOnly), got {other:?}"),
    }

    // A client configured without conditional writes refuses the first conditional put: the
    // probe reports it with the client's error.
    let mut config = s3_config(&cfg);
    config.conditional_writes = false;
    let plain = ObjectBackend::s3(&config, &prefix).unwrap();
    let err = probe_conditional_writes(&plain).unwrap_err();
    assert!(
        matches!(
            err,
            lease::Error::Unsupported {
                missing: MissingCondition::CreateOnly,
                detail: Some(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("multi-host mode refused"), "{err}");
}

/// The `i`-th snapshot of the destroy-vs-protect race.
fn race_snapshot(i: i64) -> BackupDir {
    let time = keepsake_hierarchy::BackupTime::from_epoch(1_800_000_000 + i * 60).unwrap();
    format!("ct/7/{time}").parse().unwrap()
}

#[test]
fn hosts_racing_to_destroy_and_protect_never_remove_a_protected_snapshot() {
    let test = "hosts_racing_to_destroy_and_protect_never_remove_a_protected_snapshot";
    let Some(cfg) = keepsake_testkit::s3::config_or_skip(test) else {
        return;
    };
    if let Some(role) = child_role() {
        child_main(&cfg, &role);
    }
    const SNAPSHOTS: i64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let prefix = keepsake_testkit::s3::unique_prefix("mhr");
    let store = first_host(&cfg, &prefix, &dir.path().join("host0"));
    let root = BackupNamespace::root();
    let owner: Authid = "root@pam".parse().unwrap();
    for i in 0..SNAPSHOTS {
        let dir_name = race_snapshot(i);
        let group = store.group(&root, dir_name.group());
        let mut writer = group.start_backup(&owner, dir_name.time()).unwrap();
        writer
            .add_blob("conf.blob", b"config", Encryption::None)
            .unwrap();
        writer.finish().unwrap();
    }
    // Both hosts refresh their caches now (every snapshot unprotected there), then start together.
    let go = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + Duration::from_secs(6);
    let go_ms = go.as_millis().to_string();
    let mut hosts: Vec<HostProcess> = ["protect-all", "destroy-all"]
        .iter()
        .enumerate()
        .map(|(n, action)| {
            let role = format!("{action}:{SNAPSHOTS}:{go_ms}");
            HostProcess::spawn(
                test,
                &role,
                &prefix,
                &dir.path().join(format!("host{}", n + 1)),
            )
        })
        .collect();
    let mut outcomes: Vec<Vec<String>> = Vec::new();
    for host in &mut hosts {
        let stdout = host.child.stdout.take().unwrap();
        let lines: Vec<String> = BufReader::new(stdout)
            .lines()
            .map(Result::unwrap)
            .filter_map(|l| l.strip_prefix(&format!("{OUTCOME} ")).map(str::to_owned))
            .collect();
        assert!(host.child.wait().unwrap().success());
        assert_eq!(lines.len(), SNAPSHOTS as usize, "{lines:?}");
        outcomes.push(
            lines
                .into_iter()
                .map(|l| l.split_once(' ').unwrap().1.to_owned())
                .collect(),
        );
    }
    let check = host(&cfg, &prefix, &dir.path().join("check"), false);
    let (mut protected_won, mut destroy_won) = (0, 0);
    for i in 0..SNAPSHOTS {
        let (protect, destroy) = (&outcomes[0][i as usize], &outcomes[1][i as usize]);
        let snapshot = check.snapshot(&root, &race_snapshot(i));
        assert!(
            !(protect == "ok" && destroy == "ok"),
            "snapshot {i}: both the protection and the destroy succeeded"
        );
        assert!(
            !protect.starts_with("other"),
            "snapshot {i}: protect {protect}"
        );
        assert!(
            !destroy.starts_with("other"),
            "snapshot {i}: destroy {destroy}"
        );
        if protect == "ok" {
            assert!(
                snapshot.exists().unwrap(),
                "snapshot {i}: protected, then removed"
            );
            assert!(snapshot.is_protected().unwrap());
            assert!(snapshot.is_finished().unwrap(), "snapshot {i}: torn");
            protected_won += 1;
        }
        if destroy == "ok" {
            assert!(
                !snapshot.exists().unwrap(),
                "snapshot {i}: destroyed, still there"
            );
            destroy_won += 1;
        }
    }
    eprintln!(
        "{test}: {SNAPSHOTS} races: protection first {protected_won}, destroy first {destroy_won}, \
         outcomes protect {:?} destroy {:?}",
        outcomes[0], outcomes[1]
    );
}
