#![doc = include_str!("../README.md")]

use std::collections::HashMap;
use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keepsake_backend::{DeleteOutcome, ObjectBackend, RawKey, Version, WriteMode};
use keepsake_lock::{HeldLock, Holder, LockGuard, LockMode, LockTarget, Locker, LostReason};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod error;

pub use error::{Error, MissingCondition, Result};

/// The folder of lease objects below the store prefix (outside `.cnt` and `.chunks`).
pub const LEASE_FOLDER: &str = ".keepsake-leases";

/// How a lost compare-and-swap on a lease object is retried before a single try gives up.
const CAS_RETRIES: usize = 16;
/// First and longest pause between two tries of a busy lock.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(50);

/// Lease lengths and the clock-skew bound of a [`LeaseLocker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseSettings {
    /// How long a lease lasts without renewal (default 30 s). Guards renew every third of it.
    pub lease: Duration,
    /// The most the clocks of two hosts may differ (default 2 s). Others break a lease only this
    /// long after its expiry; its holder stops writing this long before it.
    pub clock_skew: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            clock_skew: Duration::from_secs(2),
        }
    }
}

impl LeaseSettings {
    /// Settings with this lease length and the default clock-skew bound.
    pub fn with_lease(lease: Duration) -> Self {
        Self {
            lease,
            ..Self::default()
        }
    }

    /// The same settings with another clock-skew bound.
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew;
        self
    }

    fn check(&self) -> Result<()> {
        if self.lease < Duration::from_millis(300) || self.clock_skew * 2 >= self.lease {
            return Err(Error::InvalidSettings {
                lease: self.lease,
                clock_skew: self.clock_skew,
            });
        }
        Ok(())
    }
}

/// One holder entry of a lease object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct LeaseHolder {
    /// Random id of the guard (128 bits, hex).
    holder: String,
    /// Host name, for people.
    host: String,
    /// Boot id and pid namespace of the host: equal only for processes that see each other's pids.
    #[serde(default)]
    host_key: String,
    pid: u32,
    /// Start time of the process (clock ticks after boot), against pid reuse.
    #[serde(default)]
    start: u64,
    #[serde(default)]
    command: Option<String>,
    mode: WireMode,
    /// Expiry, milliseconds since the Unix epoch.
    expires: u64,
    /// The epoch this holder was granted: its fencing token.
    epoch: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum WireMode {
    Shared,
    Exclusive,
}

impl From<LockMode> for WireMode {
    fn from(mode: LockMode) -> Self {
        match mode {
            LockMode::Shared => WireMode::Shared,
            LockMode::Exclusive => WireMode::Exclusive,
        }
    }
}

impl From<WireMode> for LockMode {
    fn from(mode: WireMode) -> Self {
        match mode {
            WireMode::Shared => LockMode::Shared,
            WireMode::Exclusive => LockMode::Exclusive,
        }
    }
}

/// The body of a lease object.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct LeaseBody {
    target: String,
    epoch: u64,
    holders: Vec<LeaseHolder>,
}

/// A lease as read from the bucket: what [`LeaseLocker::leases`] lists.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The object key.
    pub key: String,
    /// What is locked, as text (`snapshot vm/100/… in namespace a`).
    pub target: String,
    /// The latest epoch granted.
    pub epoch: u64,
    /// The holders recorded, expired ones included.
    pub holders: Vec<LeaseHolderInfo>,
}

/// One holder of a [`LeaseInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseHolderInfo {
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// Its command line, when known.
    pub command: Option<String>,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// When the lease runs out unless renewed.
    pub expires: SystemTime,
    /// Its fencing token.
    pub epoch: u64,
}

/// Who this process is, as written into lease objects.
#[derive(Debug, Clone)]
struct Identity {
    host: String,
    host_key: String,
    pid: u32,
    start: u64,
    command: Option<String>,
}

impl Identity {
    fn current() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
        let host = read("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".to_owned());
        let boot = read("/proc/sys/kernel/random/boot_id");
        let pid_ns = std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .map(|p| p.display().to_string());
        let host_key = match (boot, pid_ns) {
            (Some(boot), Some(ns)) => format!("{boot}/{ns}"),
            // Without both, never judge another process of "this host" dead.
            _ => String::new(),
        };
        let pid = std::process::id();
        let command = std::fs::read("/proc/self/cmdline").ok().map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        });
        Self {
            host,
            host_key,
            pid,
            start: process_start(pid).unwrap_or(0),
            command,
        }
    }

    /// Whether `holder` is a process on this host (same boot, same pid namespace) that is gone.
    fn is_dead_neighbour(&self, holder: &LeaseHolder) -> bool {
        if self.host_key.is_empty() || holder.host_key != self.host_key {
            return false;
        }
        match process_start(holder.pid) {
            None => true,
            Some(start) => holder.start != 0 && start != holder.start,
        }
    }
}

/// Start time (field 22 of `/proc/<pid>/stat`) of a live process; `None` when it is gone or a
/// zombie.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn random_id() -> std::result::Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// A failure of the object store while locking, as the lock crate reports it.
fn lock_backend_error(
    resource: &str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> keepsake_lock::Error {
    keepsake_lock::Error::Backend {
        resource: resource.to_owned(),
        source: Box::new(source),
    }
}

/// A lease object as read: its body and the version to compare-and-swap against.
struct Current {
    body: LeaseBody,
    version: Version,
}

/// What an attempt to write a lease object found.
enum Put {
    Written(Version),
    /// Create-only found an object, or compare-and-swap a newer one.
    Raced,
}

/// A guard's entry in its locker's registry: holder id, epoch, and the flag its renewal thread
/// sets when it finds the lease taken over.
type HeldEntry = (String, u64, Arc<AtomicBool>);
/// The leases held by one locker's guards, by resource (lease key).
type Registry = HashMap<PathBuf, Vec<HeldEntry>>;

/// The part shared by a [`LeaseLocker`] and its guards.
struct Shared {
    /// The bucket, every request limited to a third of the lease (a request that hangs must not
    /// outlive the lease it is about).
    remote: ObjectBackend,
    /// Whether the endpoint enforces conditional deletes (found by the probe): then released
    /// lease objects are deleted; otherwise they are kept, with no holder.
    conditional_deletes: bool,
    folder: String,
    settings: LeaseSettings,
    me: Identity,
    /// Leases held by guards of this locker: resource → (holder id, epoch, lost flag).
    held: Mutex<Registry>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseLocker")
            .field("remote", &self.remote)
            .field("folder", &self.folder)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The map holds no invariant a panicking holder could break half-way.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(&self, key: &str) -> keepsake_lock::Result<RawKey> {
        self.remote
            .raw_key(key)
            .map_err(|e| lock_backend_error(key, e))
    }

    fn read(&self, key: &RawKey) -> keepsake_lock::Result<Option<Current>> {
        let Some(object) = self
            .remote
            .get_raw(key)
            .map_err(|e| lock_backend_error(&key.to_string(), e))?
        else {
            return Ok(None);
        };
        let body: LeaseBody = serde_json::from_slice(&object.data)
            .map_err(|e| lock_backend_error(&key.to_string(), e))?;
        Ok(Some(Current {
            body,
            version: object.version,
        }))
    }

    fn put(
        &self,
        key: &RawKey,
        body: &LeaseBody,
        expected: Option<&Version>,
    ) -> keepsake_lock::Result<Put> {
        let data = serde_json::to_vec(body).map_err(|e| lock_backend_error(&key.to_string(), e))?;
        let mode = match expected {
            None => WriteMode::CreateOnly,
            Some(version) => WriteMode::Update(version.clone()),
        };
        match self.remote.put_raw(key, &data, mode) {
            Ok(version) => Ok(Put::Written(version)),
            Err(
                keepsake_backend::Error::AlreadyExists { .. }
                | keepsake_backend::Error::Precondition { .. }
                | keepsake_backend::Error::NotFound { .. },
            ) => Ok(Put::Raced),
            Err(e) => Err(lock_backend_error(&key.to_string(), e)),
        }
    }

    /// Deletes the lease object if it is still at `version` (a compare-and-swap delete), where
    /// the endpoint enforces that; otherwise leaves it. Never removes a successor's lease.
    fn delete_at(&self, key: &RawKey, version: &Version) -> keepsake_lock::Result<()> {
        if !self.conditional_deletes {
            return Ok(());
        }
        match self.remote.delete_raw(key, Some(version)) {
            Ok(DeleteOutcome::Deleted | DeleteOutcome::Changed | DeleteOutcome::Missing) => Ok(()),
            Ok(_) => Ok(()),
            Err(e) => Err(lock_backend_error(&key.to_string(), e)),
        }
    }

    /// Whether others may consider `holder` gone at `now`.
    fn is_stale(&self, holder: &LeaseHolder, now: u64) -> bool {
        holder.expires.saturating_add(ms(self.settings.clock_skew)) < now
            || self.me.is_dead_neighbour(holder)
    }

    /// One decision on the lease object: take it, or report who is in the way.
    fn try_acquire(
        &self,
        key: &RawKey,
        target: &str,
        mode: LockMode,
    ) -> keepsake_lock::Result<std::result::Result<(LeaseHolder, Version), Vec<Holder>>> {
        let id = random_id().map_err(|e| lock_backend_error(&key.to_string(), e))?;
        for _ in 0..CAS_RETRIES {
            let current = self.read(key)?;
            let now = now_ms();
            // Our own entry already there: an earlier attempt of this very request landed (its
            // reply was lost). The holder id is new for every request, so it is ours alone.
            if let Some(c) = &current {
                if let Some(mine) = c.body.holders.iter().find(|h| h.holder == id) {
                    return Ok(Ok((mine.clone(), c.version.clone())));
                }
            }
            let (mut body, expected) = match current {
                Some(c) => (c.body, Some(c.version)),
                None => (
                    LeaseBody {
                        target: target.to_owned(),
                        ..LeaseBody::default()
                    },
                    None,
                ),
            };
            body.holders.retain(|h| !self.is_stale(h, now));
            let conflict = match mode {
                LockMode::Exclusive => !body.holders.is_empty(),
                LockMode::Shared => body.holders.iter().any(|h| h.mode == WireMode::Exclusive),
            };
            if conflict {
                return Ok(Err(body.holders.iter().map(holder_of).collect()));
            }
            body.epoch += 1;
            let me = LeaseHolder {
                holder: id.clone(),
                host: self.me.host.clone(),
                host_key: self.me.host_key.clone(),
                pid: self.me.pid,
                start: self.me.start,
                command: self.me.command.clone(),
                mode: mode.into(),
                expires: now.saturating_add(ms(self.settings.lease)),
                epoch: body.epoch,
            };
            body.holders.push(me.clone());
            match self.put(key, &body, expected.as_ref())? {
                Put::Written(version) => return Ok(Ok((me, version))),
                Put::Raced => continue,
            }
        }
        // Others keep changing the object (shared holders coming and going): report it busy.
        Ok(Err(self
            .read(key)?
            .map(|c| c.body.holders.iter().map(holder_of).collect())
            .unwrap_or_default()))
    }

    /// Rewrites the object with `change` applied to this holder's entry (`None` removes it).
    /// Returns whether the entry was still there.
    fn change_entry(
        &self,
        key: &RawKey,
        holder: &str,
        mut change: impl FnMut(&mut LeaseHolder, u64) -> bool,
    ) -> keepsake_lock::Result<bool> {
        for _ in 0..CAS_RETRIES {
            let Some(Current { mut body, version }) = self.read(key)? else {
                return Ok(false);
            };
            let now = now_ms();
            let Some(index) = body.holders.iter().position(|h| h.holder == holder) else {
                return Ok(false);
            };
            if change(&mut body.holders[index], now) {
                body.holders.remove(index);
            }
            body.holders.retain(|h| !self.is_stale(h, now));
            match self.put(key, &body, Some(&version))? {
                Put::Written(written) => {
                    if body.holders.is_empty() {
                        // Released by its last holder: the object goes, unless someone took the
                        // lease meanwhile (then the delete finds another version and does
                        // nothing). Best effort: a kept object is harmless.
                        let _ = self.delete_at(key, &written);
                    }
                    return Ok(true);
                }
                Put::Raced => continue,
            }
        }
        Err(lock_backend_error(
            &key.to_string(),
            std::io::Error::other("the lease object kept changing; gave up updating it"),
        ))
    }
}

fn holder_of(h: &LeaseHolder) -> Holder {
    let command = match &h.command {
        Some(command) => format!("{command} on host {}", h.host),
        None => format!("on host {}", h.host),
    };
    Holder::new(h.pid, h.mode.into(), Some(command))
}

/// Lease locks in an object store: the [`Locker`] for several hosts sharing one bucket (see the
/// [module docs](self) for the protocol).
///
/// It passes the lock conformance suite; holders killed with `SIGKILL` free their leases at once
/// for processes on the same host, and after the lease length plus the clock-skew bound for the
/// others.
///
/// ```
/// use std::time::Duration;
/// use keepsake_backend::ObjectBackend;
/// use keepsake_lease::{LeaseLocker, LeaseSettings};
/// use keepsake_hierarchy::{BackupDir, BackupNamespace};
/// use keepsake_lock::{LockTarget, Locker};
///
/// let bucket = ObjectBackend::in_memory("store1")?;
/// let host_a = LeaseLocker::new(bucket.clone(), LeaseSettings::default())?;
/// let host_b = LeaseLocker::new(bucket, LeaseSettings::default())?;
/// let ns = BackupNamespace::root();
/// let snapshot: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse()?;
/// let target = LockTarget::manifest(&ns, &snapshot);
///
/// let held = host_a.lock_exclusive(&target, Duration::ZERO)?;
/// let busy = host_b.lock_exclusive(&target, Duration::ZERO).unwrap_err();
/// assert!(busy.is_busy());
/// assert!(busy.to_string().contains("on host"));
/// let guard = held.into_guard();
/// assert!(host_a.check_fence(&guard).is_ok());
/// drop(guard);
/// drop(host_b.lock_exclusive(&target, Duration::ZERO)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct LeaseLocker {
    shared: Arc<Shared>,
}

impl fmt::Debug for LeaseLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl LeaseLocker {
    /// Lease locks for the datastore of `remote`, under `<store>/.keepsake-leases/`.
    ///
    /// # Errors
    /// [`Error::InvalidSettings`] for settings whose lease is shorter than 300 ms or not more
    /// than twice the clock-skew bound.
    pub fn new(remote: ObjectBackend, settings: LeaseSettings) -> Result<Self> {
        Self::with_capabilities(remote, settings, EndpointCapabilities::UNKNOWN)
    }

    /// [`LeaseLocker::new`] for an endpoint whose capabilities the probe established
    /// ([`probe_conditional_writes`]): with
    /// [`conditional_deletes`](EndpointCapabilities::conditional_deletes), released lease
    /// objects are deleted (a compare-and-swap delete that never removes a successor's lease).
    ///
    /// # Errors
    /// As [`LeaseLocker::new`].
    pub fn with_capabilities(
        remote: ObjectBackend,
        settings: LeaseSettings,
        capabilities: EndpointCapabilities,
    ) -> Result<Self> {
        let EndpointCapabilities {
            conditional_deletes,
        } = capabilities;
        settings.check()?;
        // Every lease request ends within a third of the lease, retries included.
        let remote = remote.with_time_limit(settings.lease / 3);
        Ok(Self {
            shared: Arc::new(Shared {
                remote,
                conditional_deletes,
                folder: LEASE_FOLDER.to_owned(),
                settings,
                me: Identity::current(),
                held: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The object store the leases live in.
    pub fn remote(&self) -> &ObjectBackend {
        &self.shared.remote
    }

    /// The settings.
    pub fn settings(&self) -> LeaseSettings {
        self.shared.settings
    }

    /// Whether released lease objects are deleted (the endpoint enforces conditional deletes).
    pub fn deletes_released_leases(&self) -> bool {
        self.shared.conditional_deletes
    }

    /// The object key of `target`'s lease (store prefix included).
    pub fn key_of(&self, target: &LockTarget<'_>) -> String {
        format!(
            "{}/{}",
            self.shared.remote.layout().store_root().as_ref(),
            self.relative_key_of(target)
        )
    }

    /// The key of `target`'s lease below the store prefix.
    fn relative_key_of(&self, target: &LockTarget<'_>) -> String {
        let mut hash = Sha256::new();
        hash.update(target.ns().to_string().as_bytes());
        hash.update(b"\n");
        hash.update(target.relative_path().as_bytes());
        format!("{}/{}", self.shared.folder, hex::encode(hash.finalize()))
    }

    /// The raw key of the lease a guard of this locker holds (its resource is the full key).
    fn key_of_resource(&self, resource: &FsPath) -> keepsake_lock::Result<RawKey> {
        let text = resource.to_string_lossy();
        let root = format!("{}/", self.shared.remote.layout().store_root().as_ref());
        let relative = text.strip_prefix(&root).unwrap_or(&text);
        self.shared.key(relative)
    }

    /// Checks the fencing token of `guard` (taken from this locker): its lease object still names
    /// the guard with the epoch it was granted, and the lease runs for longer than the clock-skew
    /// bound. Returns that epoch. Call it right before a write made under the lock (or use the
    /// [`Locker::check_fence`] hook, which calls this).
    ///
    /// # Errors
    /// [`keepsake_lock::Error::Lost`] when another holder took over, the lease ran out, or the
    /// guard is not one of this locker's; [`keepsake_lock::Error::Backend`] when the lease
    /// object could not be read (never to be read as "still held").
    pub fn fence(&self, guard: &LockGuard) -> keepsake_lock::Result<u64> {
        let resource = guard.resource().to_path_buf();
        let lost = |reason| keepsake_lock::Error::Lost {
            resource: resource.display().to_string(),
            reason,
        };
        let entries: Vec<HeldEntry> = self
            .shared
            .held()
            .get(&resource)
            .cloned()
            .unwrap_or_default();
        // Several entries only for shared guards of one process; any of them proves the lease.
        let Some((id, epoch, flag)) = entries.into_iter().next() else {
            return Err(lost(LostReason::NotHeld));
        };
        if flag.load(Ordering::Acquire) {
            return Err(lost(LostReason::TakenOver));
        }
        let key = self.key_of_resource(&resource)?;
        let current = self
            .shared
            .read(&key)?
            .ok_or_else(|| lost(LostReason::Gone))?;
        let Some(entry) = current.body.holders.iter().find(|h| h.holder == id) else {
            return Err(lost(LostReason::Replaced {
                epoch: current.body.epoch,
                ours: epoch,
            }));
        };
        if entry.epoch != epoch {
            return Err(lost(LostReason::Replaced {
                epoch: entry.epoch,
                ours: epoch,
            }));
        }
        if entry.expires < now_ms().saturating_add(ms(self.shared.settings.clock_skew)) {
            return Err(lost(LostReason::RunningOut));
        }
        Ok(epoch)
    }

    /// Every lease object of the datastore, for operators (`keepsake locks`).
    ///
    /// # Errors
    /// [`Error::Backend`] when listing fails, [`Error::Lock`] when a lease cannot be read.
    pub fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let folder = self
            .shared
            .remote
            .raw_key(&self.shared.folder)
            .map_err(|source| Error::Backend {
                key: self.shared.folder.clone(),
                source,
            })?;
        let keys = self
            .shared
            .remote
            .list_raw(&folder)
            .map_err(|source| Error::Backend {
                key: self.shared.folder.clone(),
                source,
            })?;
        let mut out = Vec::new();
        for key in keys {
            // Probe objects of `probe_conditional_writes` are not leases.
            if key
                .relative()
                .file_name()
                .is_some_and(|name| name.starts_with(".probe-"))
            {
                continue;
            }
            let current = self.shared.read(&key).map_err(Error::Lock)?;
            let Some(current) = current else { continue };
            out.push(LeaseInfo {
                key: key.to_string(),
                target: current.body.target,
                epoch: current.body.epoch,
                holders: current
                    .body
                    .holders
                    .into_iter()
                    .map(|h| LeaseHolderInfo {
                        host: h.host,
                        pid: h.pid,
                        command: h.command,
                        mode: h.mode.into(),
                        expires: UNIX_EPOCH + Duration::from_millis(h.expires),
                        epoch: h.epoch,
                    })
                    .collect(),
            });
        }
        Ok(out)
    }
}

impl Locker for LeaseLocker {
    fn check_fence(&self, guard: &LockGuard) -> keepsake_lock::Result<()> {
        self.fence(guard).map(drop)
    }

    fn lock(
        &self,
        target: &LockTarget<'_>,
        mode: LockMode,
        timeout: Duration,
    ) -> keepsake_lock::Result<LockGuard> {
        let key_text = self.key_of(target);
        let key = self.shared.key(&self.relative_key_of(target))?;
        let resource = PathBuf::from(&key_text);
        let start = Instant::now();
        let mut pause = POLL_FIRST;
        let holders = loop {
            match self.shared.try_acquire(&key, &target.to_string(), mode)? {
                Ok((entry, _version)) => {
                    return Ok(LockGuard::new(Box::new(LeaseHeld::start(
                        Arc::clone(&self.shared),
                        key,
                        resource,
                        mode,
                        entry,
                    ))));
                }
                Err(holders) => {
                    let elapsed = start.elapsed();
                    if timeout.is_zero() {
                        return Err(keepsake_lock::Error::WouldBlock {
                            path: resource,
                            mode,
                            holders,
                        });
                    }
                    if elapsed >= timeout {
                        break holders;
                    }
                    std::thread::sleep(pause.min(timeout - elapsed));
                    pause = (pause * 2).min(POLL_MAX);
                }
            }
        };
        Err(keepsake_lock::Error::Timeout {
            path: resource,
            mode,
            timeout,
            holders,
        })
    }
}

/// A held lease: renewed by its own thread until dropped or removed.
struct LeaseHeld {
    shared: Arc<Shared>,
    key: RawKey,
    resource: PathBuf,
    mode: LockMode,
    id: String,
    epoch: u64,
    renewer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl fmt::Debug for LeaseHeld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseHeld")
            .field("resource", &self.resource)
            .field("mode", &self.mode)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl LeaseHeld {
    fn start(
        shared: Arc<Shared>,
        key: RawKey,
        resource: PathBuf,
        mode: LockMode,
        entry: LeaseHolder,
    ) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        shared.held().entry(resource.clone()).or_default().push((
            entry.holder.clone(),
            entry.epoch,
            Arc::clone(&lost),
        ));
        let (stop, stopped) = mpsc::channel::<()>();
        let renewer = {
            let (shared, key, id, lost) = (
                Arc::clone(&shared),
                key.clone(),
                entry.holder.clone(),
                Arc::clone(&lost),
            );
            let every = shared.settings.lease / 3;
            std::thread::Builder::new()
                .name("keepsake-lease".into())
                .spawn(move || {
                    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                        let lease = ms(shared.settings.lease);
                        let renewed = shared.change_entry(&key, &id, |h, now| {
                            h.expires = now.saturating_add(lease);
                            false
                        });
                        match renewed {
                            Ok(true) => {}
                            Ok(false) => {
                                lost.store(true, Ordering::Release);
                                return;
                            }
                            // A failed request: try again next period; the fencing check
                            // refuses writes once the lease gets close to its end.
                            Err(_) => {}
                        }
                    }
                })
                .ok()
        };
        Self {
            shared,
            key,
            resource,
            mode,
            id: entry.holder,
            epoch: entry.epoch,
            renewer: renewer.map(|handle| (stop, handle)),
        }
    }

    /// Stops the renewal thread and forgets this guard in the locker's registry.
    fn stop(&mut self) {
        if let Some((stop, handle)) = self.renewer.take() {
            drop(stop);
            let _ = handle.join();
        }
        let mut held = self.shared.held();
        if let Some(entries) = held.get_mut(&self.resource) {
            entries.retain(|(id, _, _)| *id != self.id);
            if entries.is_empty() {
                held.remove(&self.resource);
            }
        }
    }

    fn release(&self) -> keepsake_lock::Result<()> {
        self.shared
            .change_entry(&self.key, &self.id, |_, _| true)
            .map(|_| ())
    }
}

impl HeldLock for LeaseHeld {
    fn mode(&self) -> LockMode {
        self.mode
    }

    fn resource(&self) -> &FsPath {
        &self.resource
    }

    fn remove(mut self: Box<Self>) -> keepsake_lock::Result<()> {
        self.stop();
        // The object goes with its target, by a compare-and-swap delete at the version that
        // shows this guard as the only holder: a successor's lease is never removed.
        let current = self.shared.read(&self.key)?;
        let result = match current {
            Some(c)
                if self.shared.conditional_deletes
                    && c.body.holders.len() == 1
                    && c.body.holders[0].holder == self.id =>
            {
                self.shared.delete_at(&self.key, &c.version)
            }
            _ => self.release(),
        };
        // Released either way: Drop must not release again.
        self.id.clear();
        result
    }
}

impl Drop for LeaseHeld {
    fn drop(&mut self) {
        self.stop();
        if !self.id.is_empty() {
            // Best effort: a lease that could not be released runs out by itself.
            let _ = self.release();
        }
    }
}

/// What the endpoint can do beyond what multi-host mode requires (see
/// [`probe_conditional_writes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointCapabilities {
    /// A delete with `If-Match` and an outdated ETag is refused (S3 since 2025-09; MinIO ignores
    /// the header). Without it, released lease objects are kept instead of deleted.
    pub conditional_deletes: bool,
}

impl EndpointCapabilities {
    /// Nothing beyond what multi-host mode requires is known (no probe was made): released
    /// lease objects are kept.
    pub const UNKNOWN: Self = Self {
        conditional_deletes: false,
    };
}

/// Tests whether the endpoint behind `remote` enforces create-only and compare-and-swap writes,
/// with a probe object `<store>/.keepsake-leases/.probe-<random>` that is removed afterwards:
/// create it, create it again (must fail), update it with its ETag (must succeed), update it with
/// the outdated ETag (must fail); then whether it enforces conditional deletes (a delete at the
/// outdated ETag must leave it in place).
///
/// # Errors
/// [`Error::Unsupported`] naming the missing condition (also when the endpoint refuses
/// conditional writes outright).
pub fn probe_conditional_writes(remote: &ObjectBackend) -> Result<EndpointCapabilities> {
    let store_root = remote.layout().store_root();
    let name = random_id().map_err(|source| Error::NoRandomness {
        store: store_root.to_string(),
        source,
    })?;
    let relative = format!("{LEASE_FOLDER}/.probe-{name}");
    let key = remote.raw_key(&relative).map_err(|source| Error::Backend {
        key: relative.clone(),
        source,
    })?;
    let unsupported = |missing, detail: Option<String>| Error::Unsupported {
        store: remote.layout().store().to_owned(),
        missing,
        detail,
    };
    let put = |body: &[u8], mode| remote.put_raw(&key, body, mode);
    use MissingCondition::{CompareAndSwap, CreateOnly};
    use keepsake_backend::Error as B;
    let outcome = (|| {
        let first = put(b"1", WriteMode::CreateOnly)
            .map_err(|e| unsupported(CreateOnly, Some(e.to_string())))?;
        match put(b"2", WriteMode::CreateOnly) {
            Ok(_) => return Err(unsupported(CreateOnly, None)),
            Err(B::AlreadyExists { .. } | B::Precondition { .. }) => {}
            Err(e) => return Err(unsupported(CreateOnly, Some(e.to_string()))),
        }
        let second = put(b"3", WriteMode::Update(first.clone()))
            .map_err(|e| unsupported(CompareAndSwap, Some(e.to_string())))?;
        match put(b"4", WriteMode::Update(first.clone())) {
            Ok(_) => return Err(unsupported(CompareAndSwap, None)),
            Err(B::Precondition { .. }) => {}
            Err(e) => return Err(unsupported(CompareAndSwap, Some(e.to_string()))),
        }
        // Conditional deletes: at the outdated version nothing may go.
        let conditional_deletes = match remote.delete_raw(&key, Some(&first)) {
            Ok(DeleteOutcome::Changed) => {
                matches!(remote.get_raw(&key), Ok(Some(object)) if object.version == second)
            }
            _ => false,
        };
        Ok(EndpointCapabilities {
            conditional_deletes,
        })
    })();
    // Best effort: a probe object left behind is harmless (nobody reads it).
    let _ = remote.delete_raw(&key, None);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use keepsake_hierarchy::{BackupDir, BackupNamespace};

    fn settings() -> LeaseSettings {
        LeaseSettings::with_lease(Duration::from_millis(600)).clock_skew(Duration::from_millis(100))
    }

    #[test]
    fn settings_are_checked() {
        let bucket = ObjectBackend::in_memory("s1").unwrap();
        assert!(
            LeaseLocker::new(
                bucket.clone(),
                LeaseSettings::with_lease(Duration::from_millis(100))
            )
            .is_err()
        );
        assert!(
            LeaseLocker::new(
                bucket.clone(),
                LeaseSettings::with_lease(Duration::from_secs(4))
                    .clock_skew(Duration::from_secs(2))
            )
            .is_err()
        );
        assert!(LeaseLocker::new(bucket, LeaseSettings::default()).is_ok());
    }

    #[test]
    fn epochs_grow_and_release_keeps_the_object() {
        let bucket = ObjectBackend::in_memory("s1").unwrap();
        let locker = LeaseLocker::new(bucket, settings()).unwrap();
        let ns = BackupNamespace::root();
        let dir: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse().unwrap();
        let target = LockTarget::snapshot(&ns, &dir);
        let mut epochs = Vec::new();
        for _ in 0..3 {
            let guard = locker
                .lock(&target, LockMode::Exclusive, Duration::ZERO)
                .unwrap();
            epochs.push(locker.fence(&guard).unwrap());
        }
        assert_eq!(epochs, [1, 2, 3]);
        let leases = locker.leases().unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].epoch, 3);
        assert!(leases[0].holders.is_empty());
        assert!(leases[0].key.starts_with("s1/.keepsake-leases/"));
        assert_eq!(leases[0].target, target.to_string());
    }

    #[test]
    fn renewal_keeps_a_lease_past_its_length_and_expiry_breaks_it() {
        let bucket = ObjectBackend::in_memory("s1").unwrap();
        let a = LeaseLocker::new(bucket.clone(), settings()).unwrap();
        let b = LeaseLocker::new(bucket, settings()).unwrap();
        let ns = BackupNamespace::root();
        let dir: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse().unwrap();
        let target = LockTarget::manifest(&ns, &dir);
        let held = a
            .lock(&target, LockMode::Exclusive, Duration::ZERO)
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            b.lock(&target, LockMode::Shared, Duration::ZERO)
                .unwrap_err()
                .is_busy()
        );
        assert!(a.fence(&held).is_ok());

        // A holder that stops renewing (its entry is rewritten as if it had stopped long ago)
        // is broken after expiry plus skew, and its fencing check fails from then on.
        let key = a.shared.key(&a.relative_key_of(&target)).unwrap();
        a.shared
            .change_entry(
                &key,
                &a.shared.held()[held.resource()][0].0.clone(),
                |h, _| {
                    h.expires = 1;
                    false
                },
            )
            .unwrap();
        let taken = b
            .lock(&target, LockMode::Exclusive, Duration::ZERO)
            .unwrap();
        match a.fence(&held) {
            Err(keepsake_lock::Error::Lost { .. }) => {}
            other => panic!("expected Lost, got {other:?}"),
        }
        assert!(b.fence(&taken).is_ok());
        drop(held);
        assert!(
            b.fence(&taken).is_ok(),
            "a late release must not touch the successor"
        );
    }

    #[test]
    fn probe_accepts_an_enforcing_store() {
        let bucket = ObjectBackend::in_memory("s1").unwrap();
        probe_conditional_writes(&bucket).unwrap();
        let locker = LeaseLocker::new(bucket, settings()).unwrap();
        assert!(
            locker.leases().unwrap().is_empty(),
            "probe object left behind"
        );
    }
}
