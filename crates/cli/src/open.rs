//! Opening and creating the datastore the global options name: local, or S3 with a local cache.
//!
//! Opening never changes anything: a missing folder, a folder that is not a datastore, an S3
//! datastore that is not in the bucket, or a bucket that refuses the credentials is an error
//! before any write.
//!
//! With `--multi-host` an S3 datastore is built in multi-host mode
//! ([`DataStoreBuilder::multi_host`]): locks are leases in the bucket, and building first probes
//! the endpoint for conditional writes (a probe object under `.keepsake-leases/`, removed again).
//! PBS's `.in-use` marker keeps its meaning of "this bucket holds the datastore": `init` writes it
//! once (naming the creating host) and refuses a bucket that has it; the other hosts never write
//! it, they join with `keepsake refresh` (which fills their own cache) and then open.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use keepsake_backend::{
    Backend, BackendPath, BucketState, CachedBackend, LocalBackend, ObjectBackend, S3Config,
    SyncLevel,
};
use keepsake_datastore::lease::{LeaseLocker, LeaseSettings};
use keepsake_datastore::pbs_host::{ActiveOperation, Operation, PbsDatastore, PbsHost};
use keepsake_datastore::{Access, CHUNK_DIR_NAME, DataStore, DataStoreBuilder};
use keepsake_lock::{DirLocker, FileLocker, FileOwner, LockScheme, LockTarget};
use keepsake_manifest::crypt::CryptConfig;

use crate::cli::GlobalArgs;
use crate::error::{Decided, UsageError};

/// Where the datastore is and how to reach it, from the global options.
#[derive(Debug, Clone)]
pub(crate) struct StoreSpec {
    /// The datastore folder (S3: the cache folder), with symbolic links resolved.
    pub(crate) path: PathBuf,
    /// The datastore name.
    pub(crate) name: String,
    /// The bucket, for an S3 datastore.
    pub(crate) s3: Option<S3Config>,
    /// The lock root.
    pub(crate) lock_root: PathBuf,
    /// The lock scheme.
    pub(crate) scheme: LockScheme,
    /// Durability of local writes (the datastore, or the cache).
    pub(crate) sync_level: SyncLevel,
    /// `--multi-host` (S3 only): the lease settings.
    pub(crate) multi_host: Option<LeaseSettings>,
    /// The PBS server's folders on this host.
    pub(crate) host: PbsHost,
    /// The datastore as PBS's datastore.cfg knows it, if it does.
    pub(crate) pbs: Option<PbsDatastore>,
    /// The key from `--keyfile`, given to the datastore.
    pub(crate) key: Option<CryptConfig>,
    /// `--lock-wait`: how long each lock waits for a busy one.
    pub(crate) lock_wait: std::time::Duration,
}

/// The longest `--lease-secs` taken: a day (a crashed host's leases block others that long).
const MAX_LEASE_SECS: u64 = 86_400;

/// An open datastore.
#[derive(Debug)]
pub(crate) struct Session {
    /// The datastore.
    pub(crate) store: DataStore,
    /// How it was reached.
    pub(crate) spec: StoreSpec,
    /// For an S3 datastore: the cached backend the store was built with (the same `Arc`, as
    /// `DataStore::check_cache`, `refresh_cache` and `fsck` require).
    pub(crate) cached: Option<Arc<CachedBackend>>,
    /// In multi-host mode: a lease locker on the same bucket and settings as the store's, for
    /// listing leases (`keepsake locks`); the store takes its locks through its own.
    pub(crate) leases: Option<LeaseLocker>,
    /// This command's entry in PBS's active-operations counter, while it runs.
    _operation: Option<ActiveOperation>,
}

impl StoreSpec {
    /// The datastore named by `--datastore`, `--store` (or `path`, when the command names the
    /// folder itself), for a command with this `access`.
    pub(crate) fn from_args(
        global: &GlobalArgs,
        path: Option<&Path>,
        access: Access,
    ) -> Result<Self> {
        let host = PbsHost::new(&global.pbs_config_dir, &global.pbs_run_dir);
        let (path, name, pbs) = match (&global.datastore, path, &global.store) {
            (Some(name), None, _) => {
                let found = host
                    .find(name)
                    .with_context(|| format!("cannot read {}", host.datastore_cfg().display()))?
                    .ok_or_else(|| {
                        UsageError(format!(
                            "PBS knows no datastore `{name}` (in {})",
                            host.datastore_cfg().display()
                        ))
                    })?;
                (found.path.clone(), name.clone(), Some(found))
            }
            (Some(_), Some(_), _) => {
                return Err(UsageError(
                    "--datastore names a PBS datastore: this command takes a folder instead"
                        .to_owned(),
                )
                .into());
            }
            (None, given, store) => {
                let given = match (given, store) {
                    (Some(p), _) => p.to_path_buf(),
                    (None, Some(p)) => p.clone(),
                    (None, None) => {
                        return Err(UsageError(
                            "no datastore given: pass --store PATH or --datastore NAME (or set \
                             KEEPSAKE_STORE)"
                                .to_owned(),
                        )
                        .into());
                    }
                };
                // The folder's real place: a second path (a symbolic link) to the same store
                // must give the same name, hence the same locks.
                let path = resolve(&given)?;
                // (A folder that does not exist yet, for `init`, is no datastore PBS knows.)
                let pbs = if path.exists() {
                    host.find_by_path(&path).with_context(|| {
                        format!("cannot read {}", host.datastore_cfg().display())
                    })?
                } else {
                    None
                };
                let name = match (&global.name, &pbs) {
                    (Some(name), Some(known)) if *name != known.name => {
                        return Err(UsageError(format!(
                            "PBS knows {} as datastore `{}`: --name {name} would not exclude \
                             PBS's locks",
                            path.display(),
                            known.name
                        ))
                        .into());
                    }
                    (Some(name), _) => name.clone(),
                    (None, Some(known)) => known.name.clone(),
                    (None, None) => derived_name(&path, access)?,
                };
                (path, name, pbs)
            }
        };
        keepsake_hierarchy::check_datastore_name(&name).map_err(|e| {
            UsageError(format!(
                "`{name}` cannot be a datastore name ({e}); pass --name NAME"
            ))
        })?;
        // A PBS S3 datastore's folder is only its cache: changed through it, the bucket never
        // sees the change (PBS's next refresh undoes it).
        if let Some(bucket) = pbs.as_ref().and_then(pbs_s3_bucket) {
            match &global.s3_bucket {
                None => {
                    return Err(UsageError(format!(
                        "datastore `{name}` is PBS's S3 datastore in bucket `{bucket}`: {} is its \
                         cache; pass --s3-bucket {bucket} and --s3-endpoint",
                        path.display()
                    ))
                    .into());
                }
                Some(given) if *given != bucket => {
                    return Err(UsageError(format!(
                        "datastore `{name}` is in bucket `{bucket}` by PBS's datastore.cfg, not \
                         `{given}`"
                    ))
                    .into());
                }
                Some(_) => {}
            }
        }
        let s3 = match &global.s3_bucket {
            Some(bucket) => Some(s3_config(
                bucket,
                global.s3_endpoint.as_deref(),
                global.s3_region.as_deref(),
            )?),
            None => None,
        };
        let multi_host = multi_host_settings(global.multi_host, global.lease_secs)?;
        if multi_host.is_some() && s3.is_none() {
            return Err(UsageError(
                "--multi-host is for S3 datastores, whose bucket several hosts share: pass \
                 --s3-bucket (and --s3-endpoint)"
                    .to_owned(),
            )
            .into());
        }
        let pbs_lock_root = host.lock_root();
        let lock_root = match &global.lock_root {
            Some(root) => root.clone(),
            None if pbs_lock_root.is_dir() => pbs_lock_root.clone(),
            None => default_lock_root(),
        };
        let is_pbs_root = resolve(&lock_root).ok() == resolve(&pbs_lock_root).ok();
        if pbs.is_some() && pbs_lock_root.is_dir() && !is_pbs_root {
            // PBS locks this datastore in its own lock root: another one would exclude nothing.
            return Err(UsageError(format!(
                "PBS locks datastore `{name}` in {}: the lock root {} would not exclude it (drop \
                 --lock-root and KEEPSAKE_LOCK_ROOT)",
                pbs_lock_root.display(),
                lock_root.display()
            ))
            .into());
        }
        let scheme = match global.lock_scheme {
            Some(scheme) => scheme,
            // PBS 3 locks folders, PBS 4 lock files: beside a PBS server, exclude either.
            None if is_pbs_root => LockScheme::Both,
            None => LockScheme::LockFiles,
        };
        if is_pbs_root && pbs.is_none() {
            tracing::warn!(
                "PBS runs on this host but its datastore.cfg does not know {}: keepsake locks it \
                 as datastore `{name}`, which only excludes a PBS datastore of that name",
                path.display()
            );
        }
        keepsake_lock::check_lock_root(&lock_root, &path).map_err(|e| {
            UsageError(format!(
                "lock root {} cannot be used for {}: {}",
                lock_root.display(),
                path.display(),
                crate::error::chain_line(&e)
            ))
        })?;
        // Last: the usage errors above come before a password prompt.
        let key = match &global.keyfile {
            Some(file) => Some(crate::keyfile::load(file)?),
            None => None,
        };
        Ok(Self {
            key,
            path,
            name,
            s3,
            lock_root,
            scheme,
            sync_level: global.sync_level,
            multi_host,
            host,
            pbs,
            lock_wait: std::time::Duration::from_secs(global.lock_wait.unwrap_or(0)),
        })
    }

    /// PBS's maintenance mode and active-operations counter: refuses what the datastore's
    /// maintenance mode forbids, and registers this command while it runs (when PBS's runtime
    /// folder exists), so that PBS sees the datastore in use.
    fn enter(&self, access: Access, owner: Option<FileOwner>) -> Result<Option<ActiveOperation>> {
        if self.pbs.is_none() {
            return Ok(None);
        }
        let op = match access {
            Access::ReadOnly => Operation::Read,
            _ => Operation::Write,
        };
        match self.host.enter(&self.name, op, owner) {
            Ok((_, operation)) => Ok(Some(operation)),
            Err(e) if e.is_no_run_dir() => {
                // PBS is not running here: its maintenance mode still holds.
                if let Some(known) = &self.pbs {
                    known.check(op).map_err(|refusal| {
                        anyhow::anyhow!("datastore `{}` is unavailable: {refusal}", self.name)
                    })?;
                }
                Ok(None)
            }
            Err(e) => {
                Err(anyhow::Error::new(e)
                    .context(format!("datastore `{}` is unavailable", self.name)))
            }
        }
    }

    /// The owner to give what keepsake creates: when running as root, the owner of the
    /// datastore's `.chunks` folder (PBS's `backup` user on a PBS host), so that PBS can use it.
    fn file_owner(&self) -> Option<FileOwner> {
        let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok()?;
        if euid != 0 {
            return None;
        }
        let owner = FileOwner::of(self.path.join(keepsake_datastore::CHUNK_DIR_NAME)).ok()?;
        (owner.uid != 0 || owner.gid != 0).then_some(owner)
    }

    /// Whether the datastore is on S3.
    pub(crate) fn is_s3(&self) -> bool {
        self.s3.is_some()
    }

    /// Whether several hosts share the bucket (`--multi-host`).
    pub(crate) fn is_multi_host(&self) -> bool {
        self.multi_host.is_some()
    }

    fn builder(&self) -> DataStoreBuilder {
        let builder = DataStore::builder(&self.name, &self.path)
            .lock_root(&self.lock_root)
            .lock_scheme(self.scheme)
            .lock_wait(self.lock_wait)
            .sync_level(self.sync_level);
        let builder = match &self.key {
            Some(key) => builder.key(key.clone()),
            None => builder,
        };
        match self.file_owner() {
            Some(owner) => builder.file_owner(owner),
            None => builder,
        }
    }

    /// The builder of an S3 datastore over `cached`, in multi-host mode with `--multi-host`.
    fn s3_builder(&self, cached: &Arc<CachedBackend>, remote: &ObjectBackend) -> DataStoreBuilder {
        let builder = self
            .builder()
            .backend(cached.clone())
            .namespace_markers(true);
        match self.multi_host {
            Some(settings) => builder.multi_host(remote.clone(), settings),
            None => builder,
        }
    }

    /// The message for a failed open or create: what was being done, and in which mode.
    fn failed(&self, action: &str) -> String {
        format!(
            "cannot {action} datastore {}{}",
            self.describe(),
            if self.is_multi_host() {
                " with --multi-host"
            } else {
                ""
            }
        )
    }

    /// Where the datastore is, for messages.
    pub(crate) fn describe(&self) -> String {
        match &self.s3 {
            Some(s3) => format!(
                "`{}` in bucket `{}` (cache {})",
                self.name,
                s3.bucket,
                self.path.display()
            ),
            None => format!("`{}` at {}", self.name, self.path.display()),
        }
    }

    /// The bucket side of an S3 datastore, checked to be reachable with these credentials.
    fn remote(&self, config: &S3Config) -> Result<ObjectBackend> {
        let remote = ObjectBackend::s3(config, &self.name)
            .with_context(|| format!("S3 bucket `{}`", config.bucket))?;
        Ok(remote)
    }

    /// Fails unless the bucket holds this datastore: its `.in-use` marker (written by PBS and by
    /// `keepsake init`) or content under its prefix. This first request also proves that the
    /// endpoint, bucket and credentials work.
    fn require_remote(&self, remote: &ObjectBackend, config: &S3Config) -> Result<()> {
        if !bucket_state(remote, config)?.holds_datastore() {
            return Err(Decided::not_found(format!(
                "no datastore `{}` in bucket `{}` (create it with `keepsake init`, or check --name)",
                self.name, config.bucket
            )));
        }
        Ok(())
    }

    /// Opens an existing datastore, read-only or read-write (see [`Access`]).
    pub(crate) fn open(&self, access: Access) -> Result<Session> {
        if self.path.exists() && !self.path.is_dir() {
            return Err(Decided::not_found(format!(
                "{} is not a folder: --store names the datastore folder{}",
                self.path.display(),
                if self.is_s3() {
                    " (its local cache)"
                } else {
                    ""
                }
            )));
        }
        if !self.path.is_dir() {
            if self.is_s3() {
                return Err(Decided::not_found(format!(
                    "the local cache folder {} does not exist: run `keepsake refresh` to fill it \
                     from the bucket",
                    self.path.display()
                )));
            }
            return Err(Decided::not_found(format!(
                "datastore folder {} does not exist",
                self.path.display()
            )));
        }
        tracing::debug!(store = %self.describe(), "opening datastore");
        let operation = self.enter(access, self.file_owner())?;
        let Some(config) = &self.s3 else {
            let store = self
                .builder()
                .access(access)
                .open()
                .with_context(|| format!("cannot open datastore {}", self.describe()))?;
            return Ok(Session {
                store,
                spec: self.clone(),
                cached: None,
                leases: None,
                _operation: operation,
            });
        };
        let remote = self.remote(config)?;
        self.require_remote(&remote, config)?;
        let cache = LocalBackend::open(&self.path, self.sync_level)
            .with_context(|| format!("cache folder {}", self.path.display()))?;
        let lock = BackendPath::new(keepsake_datastore::LOCK_FILE_NAME)?;
        if !cache.exists(&lock)? {
            return Err(Decided::not_found(format!(
                "the local cache {} of datastore `{}` is empty: run `keepsake refresh` first",
                self.path.display(),
                self.name
            )));
        }
        // The cache knows whose it is: another bucket's (or endpoint's) cache is refused.
        let cached = Arc::new(
            CachedBackend::open(cache, remote.clone())
                .with_context(|| format!("cache folder {}", self.path.display()))?,
        );
        let store = self
            .s3_builder(&cached, &remote)
            .access(access)
            .open()
            .with_context(|| self.failed("open"))?;
        Ok(Session {
            store,
            spec: self.clone(),
            cached: Some(cached),
            leases: self.lease_lister(remote, "open")?,
            _operation: operation,
        })
    }

    /// In multi-host mode, a lease locker on `remote` with the store's settings, for
    /// [`Session::leases`].
    fn lease_lister(&self, remote: ObjectBackend, action: &str) -> Result<Option<LeaseLocker>> {
        match self.multi_host {
            // Listing and naming leases deletes nothing, so no second probe.
            Some(settings) => Ok(Some(
                LeaseLocker::new(remote, settings).with_context(|| self.failed(action))?,
            )),
            None => Ok(None),
        }
    }

    /// Creates a new datastore (the folder must be missing or empty; on S3 the bucket must not
    /// hold a datastore of this name).
    pub(crate) fn create(&self, chunk_prefix_dirs: bool) -> Result<Session> {
        if self.path.exists() && !self.path.is_dir() {
            return Err(Decided::refused(format!(
                "{} exists and is not a folder",
                self.path.display()
            )));
        }
        let Some(config) = &self.s3 else {
            if self.path.join(CHUNK_DIR_NAME).is_dir() {
                return Err(Decided::refused(format!(
                    "{} is already a datastore: open it with --store, or give an empty folder to \
                     create a new one",
                    self.path.display()
                )));
            }
            let store = self
                .builder()
                .chunk_prefix_dirs(chunk_prefix_dirs)
                .create()
                .with_context(|| format!("cannot create datastore {}", self.describe()))?;
            return Ok(Session {
                store,
                spec: self.clone(),
                cached: None,
                leases: None,
                _operation: None,
            });
        };
        let remote = self.remote(config)?;
        // Another host joins an existing multi-host datastore with `refresh`, never with `init`.
        let join = if self.is_multi_host() {
            " (to use it from this host too, run `keepsake refresh` with this --store, then \
             --multi-host commands)"
        } else {
            ""
        };
        // Asked here too (the library asks again when it creates), so that a refusal leaves no
        // new cache folder behind.
        let bucket = bucket_state(&remote, config)?;
        if bucket.in_use.is_marked() {
            return Err(Decided::refused(format!(
                "bucket `{}` already contains datastore `{}` {}{join}",
                config.bucket, self.name, bucket.in_use
            )));
        }
        if bucket.holds_content {
            return Err(Decided::refused(format!(
                "bucket `{}` holds a datastore `{}` already{join}",
                config.bucket, self.name
            )));
        }
        check_empty_folder(&self.path)?;
        if self.is_multi_host() {
            // Before the cache folder is made: a refused endpoint leaves nothing behind. (Building
            // the store probes again; the probe is four small requests.)
            keepsake_datastore::lease::probe_conditional_writes(&remote)
                .with_context(|| self.failed("create"))?;
        }
        std::fs::create_dir_all(&self.path)
            .with_context(|| format!("cannot create {}", self.path.display()))?;
        let cache = LocalBackend::open(&self.path, self.sync_level)
            .with_context(|| format!("cache folder {}", self.path.display()))?;
        let cached = Arc::new(CachedBackend::new(cache, remote.clone()));
        let store = self
            .s3_builder(&cached, &remote)
            .chunk_prefix_dirs(chunk_prefix_dirs)
            .create()
            .with_context(|| self.failed("create"))?;
        cached
            .claim()
            .with_context(|| format!("cannot mark {} as this cache", self.path.display()))?;
        Ok(Session {
            store,
            spec: self.clone(),
            cached: Some(cached),
            leases: self.lease_lister(remote, "create")?,
            _operation: None,
        })
    }

    /// The cached backend of an S3 datastore without opening the datastore: for `refresh`, which
    /// (re)builds the cache. Checks that the bucket holds the datastore; makes the cache folder.
    pub(crate) fn cached_for_refresh(&self) -> Result<Arc<CachedBackend>> {
        let Some(config) = &self.s3 else {
            return Err(UsageError(
                "refresh rebuilds the cache of an S3 datastore: pass --s3-bucket (and \
                 --s3-endpoint)"
                    .to_owned(),
            )
            .into());
        };
        let remote = self.remote(config)?;
        self.require_remote(&remote, config)?;
        std::fs::create_dir_all(&self.path)
            .with_context(|| format!("cannot create {}", self.path.display()))?;
        let cache = LocalBackend::open(&self.path, self.sync_level)
            .with_context(|| format!("cache folder {}", self.path.display()))?;
        Ok(Arc::new(CachedBackend::open(cache, remote).with_context(
            || format!("cache folder {}", self.path.display()),
        )?))
    }

    /// The lock file of `target` under this spec's lock root and scheme.
    pub(crate) fn lock_path(&self, target: &LockTarget<'_>) -> Result<PathBuf> {
        Ok(match self.scheme {
            LockScheme::LockFiles | LockScheme::Both => {
                FileLocker::new(&self.lock_root, &self.name)?.lock_path(target)
            }
            _ => DirLocker::new(&self.path, &self.lock_root, &self.name)?.lock_path(target),
        })
    }

    /// The folder holding this datastore's lock files (`<lock root>/<name>`).
    pub(crate) fn lock_dir(&self) -> PathBuf {
        self.lock_root.join(&self.name)
    }
}

/// The lease settings of `--multi-host` (with `--lease-secs`), or `None` without it.
fn multi_host_settings(multi_host: bool, lease_secs: Option<u64>) -> Result<Option<LeaseSettings>> {
    let Some(secs) = lease_secs else {
        return Ok(multi_host.then(LeaseSettings::default));
    };
    if !multi_host {
        return Err(UsageError("--lease-secs needs --multi-host".to_owned()).into());
    }
    let skew = LeaseSettings::default().clock_skew;
    let lease = Duration::from_secs(secs);
    if secs == 0 || lease <= skew * 2 || secs > MAX_LEASE_SECS {
        return Err(UsageError(format!(
            "--lease-secs {secs}: a lease must last more than twice the clock-skew bound \
             ({} s) and at most {MAX_LEASE_SECS} s",
            skew.as_secs_f64()
        ))
        .into());
    }
    Ok(Some(LeaseSettings::with_lease(lease)))
}

/// The bucket of a PBS S3 datastore (`backend type=s3,…,bucket=NAME`), if it is one.
fn pbs_s3_bucket(datastore: &PbsDatastore) -> Option<String> {
    let backend = datastore.backend.as_deref()?;
    let mut is_s3 = false;
    let mut bucket = None;
    for (i, part) in backend.split(',').enumerate() {
        match part.split_once('=') {
            Some(("type", value)) => is_s3 = value == "s3",
            Some(("bucket", value)) => bucket = Some(value.to_owned()),
            // The default key is `type`.
            None if i == 0 => is_s3 = part == "s3",
            _ => {}
        }
    }
    if !is_s3 {
        return None;
    }
    Some(bucket.unwrap_or_default())
}

/// `path` made absolute with its symbolic links resolved; a path that does not exist yet (a
/// datastore about to be created) is resolved through its nearest existing ancestor.
fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot find the current folder")?
            .join(path)
    };
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(mut resolved) => {
                resolved.extend(rest.iter().rev());
                return Ok(resolved);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match (existing.parent(), existing.file_name()) {
                    (Some(parent), Some(name)) => {
                        rest.push(name.to_owned());
                        existing = parent;
                    }
                    _ => return Err(e).context(format!("cannot resolve {}", path.display())),
                }
            }
            Err(e) => return Err(e).context(format!("cannot resolve {}", path.display())),
        }
    }
}

/// The folder's own name, as the datastore name when neither `--name` nor PBS's datastore.cfg
/// gives one. A name PBS would refuse (shorter than 3 bytes, say) is only good enough for a
/// read-only command, which then uses a name of its own for its lock folder (`ks-` and a hash
/// of the path): a PBS datastore cannot have the folder's name, so no PBS lock is missed.
fn derived_name(path: &Path, access: Access) -> Result<String> {
    let name = path.file_name().and_then(|c| c.to_str()).ok_or_else(|| {
        UsageError(format!(
            "cannot take a datastore name from {}: pass --name NAME",
            path.display()
        ))
    })?;
    if keepsake_hierarchy::check_datastore_name(name).is_ok() || access != Access::ReadOnly {
        return Ok(name.to_owned());
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
    Ok(format!("ks-{}", hex::encode(&digest[..8])))
}

/// Refuses a folder that has visible entries (what `DataStoreBuilder::create` would refuse),
/// before anything is written to the bucket.
fn check_empty_folder(path: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with('.') || name == "lost+found") {
            return Err(Decided::refused(format!(
                "{} is not empty (found `{name}`): a new datastore needs an empty folder",
                path.display()
            )));
        }
    }
    Ok(())
}

/// What the bucket holds of this datastore (PBS's `.in-use` marker, content), asked of the
/// bucket. This is also the request that proves the endpoint, bucket and credentials work.
fn bucket_state(remote: &ObjectBackend, config: &S3Config) -> Result<BucketState> {
    let state = remote.bucket_state().with_context(|| {
        format!(
            "cannot read from bucket `{}` at {}",
            config.bucket,
            config.endpoint.as_deref().unwrap_or("AWS")
        )
    })?;
    state.context("an object-store backend without a bucket state")
}

/// The S3 settings from the options and the AWS environment variables.
fn s3_config(bucket: &str, endpoint: Option<&str>, region: Option<&str>) -> Result<S3Config> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (Some(key), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) else {
        return Err(UsageError(
            "S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_owned(),
        )
        .into());
    };
    let region = region
        .map(str::to_owned)
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_owned());
    let mut config = S3Config::new(bucket, region, key, secret);
    config.session_token = env("AWS_SESSION_TOKEN");
    if let Some(endpoint) = endpoint {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(UsageError(format!(
                "S3 endpoint `{endpoint}` must start with http:// or https://"
            ))
            .into());
        }
        config.allow_http = endpoint.starts_with("http://");
        config.endpoint = Some(endpoint.to_owned());
    }
    Ok(config)
}

/// Without PBS on this host: a folder of this user's in the temp folder.
fn default_lock_root() -> PathBuf {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("keepsake-locks-{uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_folder() {
        let write = Access::ReadWrite;
        assert_eq!(
            derived_name(Path::new("/srv/store1"), write).unwrap(),
            "store1"
        );
        assert!(derived_name(Path::new("/"), write).is_err());
        // Too short for PBS: a write must be given a name, a read gets one of its own.
        assert_eq!(derived_name(Path::new("/srv/ab"), write).unwrap(), "ab");
        let read = derived_name(Path::new("/srv/ab"), Access::ReadOnly).unwrap();
        assert!(read.starts_with("ks-") && read.len() == 19, "{read}");
        assert!(keepsake_hierarchy::check_datastore_name(&read).is_ok());
    }

    #[test]
    fn lease_settings_from_the_options() {
        assert_eq!(multi_host_settings(false, None).unwrap(), None);
        assert_eq!(
            multi_host_settings(true, None).unwrap(),
            Some(LeaseSettings::default())
        );
        assert_eq!(
            multi_host_settings(true, Some(60)).unwrap().unwrap().lease,
            Duration::from_secs(60)
        );
        for (multi_host, secs) in [
            (true, 0),
            (true, 4),
            (true, MAX_LEASE_SECS + 1),
            (false, 60),
        ] {
            let err = multi_host_settings(multi_host, Some(secs)).unwrap_err();
            assert_eq!(
                crate::error::exit_code(&err),
                crate::error::EXIT_USAGE,
                "{secs}"
            );
        }
        assert!(multi_host_settings(true, Some(5)).is_ok());
    }

    #[test]
    fn empty_folder_check() {
        let dir = tempfile::tempdir().unwrap();
        check_empty_folder(dir.path()).unwrap();
        check_empty_folder(&dir.path().join("missing")).unwrap();
        std::fs::write(dir.path().join(".hidden"), b"").unwrap();
        check_empty_folder(dir.path()).unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        assert!(check_empty_folder(dir.path()).is_err());
    }
}
