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

use anyhow::{Context, Result, bail};
use keepsake_backend::{
    Backend, BackendPath, CachedBackend, LocalBackend, ObjectBackend, S3Config, SyncLevel,
};
use keepsake_datastore::{Access, DataStore, DataStoreBuilder, LeaseSettings};
use keepsake_lock::{DirLocker, FileLocker, LockScheme, LockTarget, PBS_LOCK_ROOT};
use object_store::ObjectStoreExt;

use crate::cli::GlobalArgs;
use crate::error::UsageError;

/// Where the datastore is and how to reach it, from the global options.
#[derive(Debug, Clone)]
pub(crate) struct StoreSpec {
    /// The datastore folder (S3: the cache folder).
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
}

impl StoreSpec {
    /// The datastore named by `--store` (or `path`, when the command names the folder itself).
    pub(crate) fn from_args(global: &GlobalArgs, path: Option<&Path>) -> Result<Self> {
        let path = match (path, &global.store) {
            (Some(p), _) => p.to_path_buf(),
            (None, Some(p)) => p.clone(),
            (None, None) => {
                return Err(UsageError(
                    "no datastore given: pass --store PATH (or set KEEPSAKE_STORE)".to_owned(),
                )
                .into());
            }
        };
        let name = match &global.name {
            Some(name) => name.clone(),
            None => folder_name(&path)?,
        };
        keepsake_hierarchy::check_datastore_name(&name).map_err(|e| {
            UsageError(format!(
                "`{name}` cannot be a datastore name ({e}); pass --name NAME"
            ))
        })?;
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
        let lock_root = match &global.lock_root {
            Some(root) => root.clone(),
            None => default_lock_root(),
        };
        let scheme = if lock_root == Path::new(PBS_LOCK_ROOT) {
            LockScheme::from_old_locking_flag(keepsake_lock::PBS_OLD_LOCKING_FLAG)
        } else {
            LockScheme::LockFiles
        };
        Ok(Self {
            path,
            name,
            s3,
            lock_root,
            scheme,
            sync_level: global.sync_level,
            multi_host,
        })
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
        DataStore::builder(&self.name, &self.path)
            .lock_root(&self.lock_root)
            .lock_scheme(self.scheme)
            .sync_level(self.sync_level)
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
        if in_use_by(remote, config)?.is_none() && !remote_has_content(remote, config)? {
            bail!(
                "no datastore `{}` in bucket `{}` (create it with `keepsake init`, or check --name)",
                self.name,
                config.bucket
            );
        }
        Ok(())
    }

    /// Opens an existing datastore, read-only or read-write (see [`Access`]).
    pub(crate) fn open(&self, access: Access) -> Result<Session> {
        if !self.path.is_dir() {
            if self.is_s3() {
                bail!(
                    "the local cache folder {} does not exist: run `keepsake refresh` to fill it \
                     from the bucket",
                    self.path.display()
                );
            }
            bail!("datastore folder {} does not exist", self.path.display());
        }
        tracing::debug!(store = %self.describe(), "opening datastore");
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
            });
        };
        let remote = self.remote(config)?;
        self.require_remote(&remote, config)?;
        let cache = LocalBackend::open(&self.path, self.sync_level)
            .with_context(|| format!("cache folder {}", self.path.display()))?;
        let lock = BackendPath::new(keepsake_datastore::LOCK_FILE_NAME)?;
        if !cache.exists(&lock)? {
            bail!(
                "the local cache {} of datastore `{}` is empty: run `keepsake refresh` first",
                self.path.display(),
                self.name
            );
        }
        let cached = Arc::new(CachedBackend::new(cache, remote.clone()));
        let store = self
            .s3_builder(&cached, &remote)
            .access(access)
            .open()
            .with_context(|| self.failed("open"))?;
        Ok(Session {
            store,
            spec: self.clone(),
            cached: Some(cached),
        })
    }

    /// Creates a new datastore (the folder must be missing or empty; on S3 the bucket must not
    /// hold a datastore of this name).
    pub(crate) fn create(&self, chunk_prefix_dirs: bool) -> Result<Session> {
        if self.path.exists() && !self.path.is_dir() {
            bail!("{} exists and is not a folder", self.path.display());
        }
        let Some(config) = &self.s3 else {
            let store = self
                .builder()
                .chunk_prefix_dirs(chunk_prefix_dirs)
                .create()
                .with_context(|| format!("cannot create datastore {}", self.describe()))?;
            return Ok(Session {
                store,
                spec: self.clone(),
                cached: None,
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
        if let Some(host) = in_use_by(&remote, config)? {
            bail!(
                "bucket `{}` already contains datastore `{}` in use by host {host}{join}",
                config.bucket,
                self.name
            );
        }
        if remote_has_content(&remote, config)? {
            bail!(
                "bucket `{}` holds a datastore `{}` already{join}",
                config.bucket,
                self.name
            );
        }
        check_empty_folder(&self.path)?;
        if self.is_multi_host() {
            // Before the cache folder is made: a refused endpoint leaves nothing behind. (Building
            // the store probes again; the probe is four small requests.)
            keepsake_datastore::probe_conditional_writes(&remote)
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
        mark_in_use(&remote, config)?;
        Ok(Session {
            store,
            spec: self.clone(),
            cached: Some(cached),
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
        Ok(Arc::new(CachedBackend::new(cache, remote)))
    }

    /// The lock file of `target` under this spec's lock root and scheme.
    pub(crate) fn lock_path(&self, target: &LockTarget<'_>) -> Result<PathBuf> {
        Ok(match self.scheme {
            LockScheme::LockFiles => {
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

/// The folder's last component, as the default datastore name.
fn folder_name(path: &Path) -> Result<String> {
    let absolute;
    let path = if path.is_absolute() {
        path
    } else {
        absolute = std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_path_buf());
        &absolute
    };
    let name = path
        .components()
        .rfind(|c| matches!(c, std::path::Component::Normal(_)))
        .and_then(|c| c.as_os_str().to_str())
        .ok_or_else(|| {
            UsageError(format!(
                "cannot take a datastore name from {}: pass --name NAME",
                path.display()
            ))
        })?;
    Ok(name.to_owned())
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
            bail!(
                "{} is not empty (found `{name}`): a new datastore needs an empty folder",
                path.display()
            );
        }
    }
    Ok(())
}

/// Whether the bucket holds anything under the datastore's content prefix. This is also the
/// request that proves the endpoint, bucket and credentials work.
fn remote_has_content(remote: &ObjectBackend, config: &S3Config) -> Result<bool> {
    let describe = || {
        format!(
            "cannot list bucket `{}` at {}",
            config.bucket,
            config.endpoint.as_deref().unwrap_or("AWS")
        )
    };
    let mut listing = remote.list(&BackendPath::root()).with_context(describe)?;
    match listing.next() {
        None => Ok(false),
        Some(Ok(_)) => Ok(true),
        Some(Err(e)) => Err(e).with_context(describe),
    }
}

/// The host named in the bucket's `.in-use` marker of this datastore (`""` when the marker names
/// none), or `None` without a marker.
fn in_use_by(remote: &ObjectBackend, config: &S3Config) -> Result<Option<String>> {
    let store = Arc::clone(remote.object_store());
    let key = remote.layout().in_use_key();
    let fetched = remote.block_on(async move {
        match store.get(&key).await {
            Ok(result) => result.bytes().await.map(|b| Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    })?;
    let bytes = fetched.with_context(|| {
        format!(
            "cannot read from bucket `{}` at {}",
            config.bucket,
            config.endpoint.as_deref().unwrap_or("AWS")
        )
    })?;
    Ok(bytes.map(|b| {
        serde_json::from_slice::<serde_json::Value>(&b)
            .ok()
            .and_then(|v| {
                v.get("hostname")
                    .and_then(|h| h.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    }))
}

/// Writes PBS's `.in-use` marker (`{"hostname": …}`) for this datastore (a plain put, as PBS).
fn mark_in_use(remote: &ObjectBackend, config: &S3Config) -> Result<()> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    let body = serde_json::to_vec(&serde_json::json!({ "hostname": hostname }))?;
    let store = Arc::clone(remote.object_store());
    let key = remote.layout().in_use_key();
    remote
        .block_on(async move {
            store
                .put(&key, object_store::PutPayload::from(body))
                .await
                .map(|_| ())
        })?
        .with_context(|| {
            format!(
                "cannot write the in-use marker to bucket `{}`",
                config.bucket
            )
        })
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

/// PBS's lock root if a PBS server runs here (so that both exclude each other), else a folder of
/// this user's in the temp folder.
fn default_lock_root() -> PathBuf {
    let pbs = Path::new(PBS_LOCK_ROOT);
    if pbs.is_dir() {
        return pbs.to_path_buf();
    }
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
        assert_eq!(folder_name(Path::new("/srv/store1")).unwrap(), "store1");
        assert_eq!(folder_name(Path::new("/srv/store1/")).unwrap(), "store1");
        assert!(folder_name(Path::new("/")).is_err());
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
