//! The datastore handle and its builder.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "multi-host")]
use keepsake_backend::ObjectBackend;
use keepsake_backend::{Backend, BackendPath, EntryKind, LocalBackend, SyncLevel, WriteMode};
use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace};
use keepsake_lock::{FileOwner, LockGuard, LockMode, LockScheme, LockTarget, Locker};
use keepsake_manifest::crypt::CryptConfig;

use crate::error::{ArgumentProblem, Error, Result};
use crate::group::Group;
use crate::process_lock::ProcessLock;
use crate::snapshot::Snapshot;

/// Name of the chunk store folder at the datastore root.
pub const CHUNK_DIR_NAME: &str = ".chunks";
/// Name of the empty file at the datastore root that PBS's process locker uses.
pub const LOCK_FILE_NAME: &str = ".lock";
/// How many prefix folders (`0000`..`ffff`) a chunk store has.
pub const CHUNK_PREFIX_DIRS: u32 = 65_536;

/// A PBS-compatible datastore: a cheap, cloneable, thread-safe handle.
///
/// Everything below it is reached through it: namespaces ([`DataStore::create_namespace`], the
/// iterators), groups ([`DataStore::group`]) and snapshots ([`DataStore::snapshot`]). Every read and
/// write goes through the configured [`Backend`], so the same code runs on a local datastore
/// directory and on an S3 bucket with a local cache; every lock goes through the configured
/// [`Locker`], by default PBS 4's lock files below the lock root the caller chose.
///
/// ```
/// use keepsake_datastore::DataStore;
///
/// let dir = tempfile::tempdir()?;
/// let store = DataStore::builder("store1", dir.path().join("store1"))
///     .lock_root(dir.path().join("locks"))
///     .chunk_prefix_dirs(false) // tests: skip the 65,536 folders
///     .create()?;
/// let ns = store.create_namespace(&"prod".parse()?)?;
/// assert!(store.namespace_exists(&ns)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct DataStore {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    root: Option<PathBuf>,
    /// Every read and write goes through this one (wrapped to refuse writes when read-only).
    backend: Arc<dyn Backend>,
    /// The backend as the caller gave it (for identity checks).
    given_backend: Arc<dyn Backend>,
    access: Access,
    locker: Arc<dyn Locker>,
    /// The shortest wait for a busy lock ([`DataStoreBuilder::lock_wait`]).
    lock_wait: Duration,
    crypt: Option<CryptConfig>,
    namespace_markers: bool,
    /// Whether locks are leases shared with other hosts ([`DataStoreBuilder::multi_host`]).
    multi_host: bool,
    /// The lock root and scheme, when the locker is one of PBS's schemes (for fsck's sweep).
    lock_files: Option<(PathBuf, LockScheme)>,
    /// The owner of the files this store creates, when one was given.
    owner: Option<FileOwner>,
    /// PBS's process lock on `.lock`, opened on first use (see `process_lock.rs`).
    process_lock: std::sync::Mutex<Option<Arc<ProcessLock>>>,
}

impl fmt::Debug for DataStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataStore")
            .field("name", &self.inner.name)
            .field("root", &self.inner.root)
            .field("backend", &self.inner.backend)
            .field("locker", &self.inner.locker)
            .field(
                "key",
                &self.inner.crypt.as_ref().map(|c| c.fingerprint().short()),
            )
            .finish()
    }
}

/// Whether a [`DataStore`] may change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Access {
    /// Reads and writes (the default).
    #[default]
    ReadWrite,
    /// Reads only: every write (file, folder, chunk, removal, rename) is refused by the backend
    /// with an error, and recovery of interrupted operations is refused with
    /// [`Error::ReadOnly`]. Locks may still be taken (a reader takes shared locks), and an S3
    /// datastore's cache may still be filled from the bucket (a cache copy is not a change).
    ReadOnly,
}

/// How a [`DataStore`] is made: name, place, locks, durability and key.
///
/// Nothing is read from fixed paths: the lock root (or a [`Locker`]) must be given. On a host where a
/// PBS server uses the same datastore, pass [`keepsake_lock::PBS_LOCK_ROOT`] so that both exclude each
/// other.
#[must_use]
pub struct DataStoreBuilder {
    name: String,
    path: PathBuf,
    backend: Option<Arc<dyn Backend>>,
    lock_root: Option<PathBuf>,
    lock_scheme: LockScheme,
    locker: Option<Arc<dyn Locker>>,
    lock_wait: Duration,
    sync_level: SyncLevel,
    crypt: Option<CryptConfig>,
    chunk_prefix_dirs: bool,
    namespace_markers: bool,
    #[cfg(feature = "multi-host")]
    multi_host: Option<(ObjectBackend, keepsake_lease::LeaseSettings)>,
    access: Access,
    owner: Option<FileOwner>,
    node_name: Option<String>,
}

impl DataStoreBuilder {
    /// The host name [`create`](Self::create) writes into the bucket's `.in-use` marker of an
    /// S3 datastore (default: this host's node name, as PBS writes it: the `uname` node name up
    /// to its first dot).
    pub fn node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = Some(name.into());
        self
    }

    /// Files and folders this store creates (lock files, the intent journal, and with the default
    /// local backend every datastore file) get this owner and PBS's modes. For running as root
    /// beside PBS, whose `backup` user must be able to use them: pass the owner of the
    /// datastore's `.chunks` folder (see [`FileOwner::of`]).
    pub fn file_owner(mut self, owner: FileOwner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Read-write (default) or read-only ([`Access::ReadOnly`]): a read-only store refuses every
    /// write, so a command that only reads can never change the datastore by mistake.
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Lock files go below `lock_root` (`<lock_root>/<name>/…`); required unless a
    /// [`locker`](Self::locker) is given.
    pub fn lock_root(mut self, lock_root: impl Into<PathBuf>) -> Self {
        self.lock_root = Some(lock_root.into());
        self
    }

    /// Which PBS lock scheme to follow (default PBS 4's lock files; PBS 3's directory locks on a
    /// host running PBS 3, see [`LockScheme::from_old_locking_flag`]).
    pub fn lock_scheme(mut self, scheme: LockScheme) -> Self {
        self.lock_scheme = scheme;
        self
    }

    /// Every lock this datastore takes waits up to `wait` for a busy lock (or longer where an
    /// operation waits longer itself), instead of failing at once as PBS's do (the default,
    /// zero). For a tool run by hand or by cron beside other writers, as borg's `--lock-wait`.
    /// The wait is the locker's own (blocking, or its retry schedule for leases); past it, the
    /// usual [`Error::Locked`]. Garbage collection waits as long for PBS's process lock
    /// (retrying every 100 ms while a backup holds it), then fails with
    /// [`Error::ProcessLocked`].
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Locks go through a caller-provided [`Locker`] instead.
    pub fn locker(mut self, locker: Arc<dyn Locker>) -> Self {
        self.locker = Some(locker);
        self
    }

    /// Where the bytes live: by default a [`LocalBackend`] on the datastore path; pass a
    /// `CachedBackend` for an S3 datastore (its cache directory should be the datastore path).
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Durability of local writes (default [`SyncLevel::Filesystem`], as PBS). Ignored when a
    /// backend is passed with [`backend`](Self::backend) (it carries its own).
    pub fn sync_level(mut self, level: SyncLevel) -> Self {
        self.sync_level = level;
        self
    }

    /// The encryption key for encrypted blobs and manifest signatures.
    pub fn key(mut self, crypt: CryptConfig) -> Self {
        self.crypt = Some(crypt);
        self
    }

    /// Whether [`create`](Self::create) makes the 65,536 chunk prefix folders (default: yes, as PBS,
    /// which writes chunks into them). Turning it off is for tests and for stores that never hold
    /// chunks; chunk inserts then make the prefix folder they need.
    pub fn chunk_prefix_dirs(mut self, create: bool) -> Self {
        self.chunk_prefix_dirs = create;
        self
    }

    /// Whether new namespaces get PBS's `.namespace` marker file (needed on object storage, where
    /// an empty folder does not exist; set it for S3 datastores behind a cache). Backends without
    /// empty folders always get it.
    pub fn namespace_markers(mut self, markers: bool) -> Self {
        self.namespace_markers = markers;
        self
    }

    /// Several hosts share the bucket of `remote` (the object store behind the datastore's
    /// `CachedBackend`): locks become leases in the bucket
    /// ([`keepsake_lease::LeaseLocker`], replacing any lock root or locker given), and writes of
    /// the manifest, notes and protection check the lease's fencing token first. Building the
    /// store first probes the endpoint ([`keepsake_lease::probe_conditional_writes`]).
    ///
    /// Building fails with [`Error::Lease`] ([`keepsake_lease::Error::Unsupported`]) when the
    /// endpoint does not enforce create-only and compare-and-swap writes.
    #[cfg(feature = "multi-host")]
    pub fn multi_host(
        mut self,
        remote: ObjectBackend,
        settings: keepsake_lease::LeaseSettings,
    ) -> Self {
        self.multi_host = Some((remote, settings));
        self
    }

    fn build(self, creating: bool) -> Result<(DataStore, bool)> {
        keepsake_hierarchy::check_datastore_name(&self.name)?;
        #[cfg(feature = "multi-host")]
        let leases: Option<Arc<dyn Locker>> = match &self.multi_host {
            Some((remote, settings)) => {
                let found = keepsake_lease::probe_conditional_writes(remote)?;
                Some(Arc::new(keepsake_lease::LeaseLocker::with_capabilities(
                    remote.clone(),
                    *settings,
                    found,
                )?))
            }
            None => None,
        };
        #[cfg(not(feature = "multi-host"))]
        let leases: Option<Arc<dyn Locker>> = None;
        let multi_host = leases.is_some();
        let backend: Arc<dyn Backend> = match self.backend {
            Some(b) => b,
            None => {
                // Only `create` makes the folder; `open` of a missing one is an error, not a new
                // empty folder left behind.
                if creating {
                    std::fs::create_dir_all(&self.path).map_err(|source| Error::Io {
                        path: self.path.clone(),
                        source,
                    })?;
                }
                // A cache of an S3 datastore opened as a local one would take changes that
                // never reach the bucket.
                if let Some(identity) = keepsake_backend::cache_identity(&self.path)
                    .map_err(|e| Error::backend("", e))?
                {
                    return Err(Error::S3Cache {
                        path: self.path.clone(),
                        identity: Box::new(identity),
                    });
                }
                let local = LocalBackend::open(&self.path, self.sync_level)
                    .map_err(|e| Error::backend("", e))?;
                Arc::new(match self.owner {
                    Some(owner) => local.with_owner(owner.uid, owner.gid),
                    None => local,
                })
            }
        };
        let lock_files = match (&leases, &self.locker, &self.lock_root) {
            (None, None, Some(root)) => Some((root.clone(), self.lock_scheme)),
            _ => None,
        };
        if let Some((root, _)) = &lock_files {
            // Lock files among the datastore's own files would be swept as lock files one day.
            keepsake_lock::check_lock_root(root, &self.path).map_err(|source| Error::LockRoot {
                lock_root: root.clone(),
                source,
            })?;
        }
        let locker: Arc<dyn Locker> = match (leases, self.locker, self.lock_root) {
            (Some(leases), _, _) => leases,
            (None, Some(locker), _) => locker,
            (None, None, Some(root)) => Arc::from(
                self.lock_scheme
                    .locker_owned_by(&root, &self.name, &self.path, self.owner)
                    .map_err(|source| Error::LockRoot {
                        lock_root: root.clone(),
                        source,
                    })?,
            ),
            (None, None, None) => {
                return Err(Error::InvalidArgument(ArgumentProblem::NoLockRoot));
            }
        };
        let given_backend = Arc::clone(&backend);
        let backend: Arc<dyn Backend> = match self.access {
            Access::ReadWrite => backend,
            Access::ReadOnly => Arc::new(crate::read_only::ReadOnlyBackend::new(backend)),
        };
        Ok((
            DataStore {
                inner: Arc::new(Inner {
                    name: self.name,
                    root: Some(self.path),
                    backend,
                    given_backend,
                    access: self.access,
                    locker,
                    lock_wait: self.lock_wait,
                    crypt: self.crypt,
                    namespace_markers: self.namespace_markers,
                    multi_host,
                    lock_files,
                    owner: self.owner,
                    process_lock: std::sync::Mutex::new(None),
                }),
            },
            self.chunk_prefix_dirs,
        ))
    }

    /// Creates a new datastore: the folder must be missing or empty (entries starting with `.` and
    /// `lost+found` are allowed, as PBS allows); makes `.chunks` (with its prefix folders unless
    /// turned off) and the empty `.lock` file (on the host: in the cache of an S3 datastore).
    ///
    /// In object storage ([`Backend::bucket_state`]) the bucket is asked first: PBS's `.in-use`
    /// marker of this datastore, or content under its prefix, refuses the creation (another
    /// server's datastore, or this one from before); once everything is made, the marker is
    /// written, naming this host ([`node_name`](Self::node_name)), as PBS does.
    ///
    /// # Errors
    /// [`Error::BucketInUse`], [`Error::BucketNotEmpty`]; [`Error::NotEmpty`] for a non-empty
    /// folder; backend errors.
    pub fn create(self) -> Result<DataStore> {
        if self.access == Access::ReadOnly {
            return Err(Error::ReadOnly {
                operation: "creating a datastore",
            });
        }
        let node_name = self.node_name.clone();
        let (store, prefix_dirs) = self.build(true)?;
        let backend = store.backend();
        let bucket = backend
            .bucket_state()
            .map_err(|e| Error::backend(".in-use", e))?;
        if let Some(bucket) = &bucket {
            if bucket.in_use.is_marked() {
                return Err(Error::BucketInUse {
                    store: store.name().to_owned(),
                    in_use: bucket.in_use.clone(),
                });
            }
            if bucket.holds_content {
                return Err(Error::BucketNotEmpty {
                    store: store.name().to_owned(),
                });
            }
        }
        let root = BackendPath::root();
        for entry in backend.list(&root).map_err(|e| Error::backend("", e))? {
            let entry = entry.map_err(|e| Error::backend("", e))?;
            if !(entry.name.starts_with('.') || entry.name == "lost+found") {
                return Err(Error::NotEmpty {
                    store: store.name().to_owned(),
                    found: entry.name,
                });
            }
        }
        let chunks = path(CHUNK_DIR_NAME)?;
        backend
            .create_dir_all(&chunks)
            .map_err(|e| Error::backend(CHUNK_DIR_NAME, e))?;
        if prefix_dirs {
            for prefix in 0..CHUNK_PREFIX_DIRS {
                let dir = chunks
                    .join(&format!("{prefix:04x}"))
                    .map_err(|e| Error::backend(CHUNK_DIR_NAME, e))?;
                backend
                    .create_dir_all(&dir)
                    .map_err(|e| Error::backend(dir.as_str(), e))?;
            }
        }
        // `.lock` belongs to the host (PBS's process locker), never to a bucket.
        if let Some(local) = backend.host_local() {
            match local.write(&path(LOCK_FILE_NAME)?, b"", WriteMode::CreateOnly) {
                Ok(_) | Err(keepsake_backend::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(Error::backend(LOCK_FILE_NAME, e)),
            }
        }
        // Last: a creation that failed before leaves the bucket unmarked, free for a retry.
        if bucket.is_some() {
            let node_name = match node_name {
                Some(name) => name,
                None => host_node_name(),
            };
            backend
                .mark_in_use(&node_name)
                .map_err(|e| Error::backend(".in-use", e))?;
        }
        Ok(store)
    }

    /// Opens an existing datastore, checking that it looks like one (`.chunks` is a folder; in
    /// object storage, the bucket holds PBS's `.in-use` marker or content of the datastore: one
    /// request, two without a marker).
    /// Opening changes nothing: interrupted operations in the intent journal are neither
    /// completed nor rolled back here (see [`DataStore::recover`] and
    /// [`DataStore::interrupted_intents`]).
    ///
    /// # Errors
    /// [`Error::NotADatastore`] if the layout is not a datastore's; [`Error::NotInBucket`].
    pub fn open(self) -> Result<DataStore> {
        let (store, _) = self.build(false)?;
        match store.backend().stat(&path(CHUNK_DIR_NAME)?) {
            Ok(stat) if stat.kind == EntryKind::Dir => {}
            Ok(_) | Err(keepsake_backend::Error::NotFound { .. }) => {
                return Err(Error::NotADatastore {
                    store: store.name().to_owned(),
                });
            }
            Err(e) => return Err(Error::backend(CHUNK_DIR_NAME, e)),
        }
        // A cache folder over a bucket that does not hold the datastore (a wrong bucket or
        // name) would show an empty datastore and take writes into nowhere.
        let bucket = store
            .backend()
            .bucket_state()
            .map_err(|e| Error::backend(".in-use", e))?;
        if bucket.is_some_and(|bucket| !bucket.holds_datastore()) {
            return Err(Error::NotInBucket {
                store: store.name().to_owned(),
            });
        }
        Ok(store)
    }
}

impl DataStore {
    /// Starts building a datastore called `name` at `path` (the datastore folder; for S3 the cache).
    pub fn builder(name: impl Into<String>, path: impl Into<PathBuf>) -> DataStoreBuilder {
        DataStoreBuilder {
            name: name.into(),
            path: path.into(),
            backend: None,
            lock_root: None,
            lock_scheme: LockScheme::LockFiles,
            locker: None,
            lock_wait: Duration::ZERO,
            sync_level: SyncLevel::Filesystem,
            crypt: None,
            chunk_prefix_dirs: true,
            namespace_markers: false,
            #[cfg(feature = "multi-host")]
            multi_host: None,
            access: Access::ReadWrite,
            owner: None,
            node_name: None,
        }
    }

    /// The datastore's name (also the S3 key prefix and the lock folder name).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The datastore folder (for S3 datastores: the local cache).
    pub fn path(&self) -> Option<&Path> {
        self.inner.root.as_deref()
    }

    /// The backend every read and write goes through.
    pub fn backend(&self) -> &dyn Backend {
        &*self.inner.backend
    }

    /// The backend as it was given to the builder (the same object the caller holds; a read-only
    /// store wraps it for its own use).
    pub fn given_backend(&self) -> &dyn Backend {
        &*self.inner.given_backend
    }

    /// The owner of the files this store creates, if one was given
    /// ([`DataStoreBuilder::file_owner`]).
    pub fn file_owner(&self) -> Option<FileOwner> {
        self.inner.owner
    }

    /// Whether this store may change anything.
    pub fn access(&self) -> Access {
        self.inner.access
    }

    /// Refuses `operation` on a read-only store.
    pub(crate) fn require_writable(&self, operation: &'static str) -> Result<()> {
        match self.inner.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(Error::ReadOnly { operation }),
        }
    }

    /// The lock root and PBS lock scheme, when locks are PBS's lock files or folders (not a
    /// caller's locker, not leases).
    pub fn lock_files(&self) -> Option<(&Path, LockScheme)> {
        self.inner
            .lock_files
            .as_ref()
            .map(|(root, scheme)| (root.as_path(), *scheme))
    }

    /// The locker every lock goes through.
    pub fn locker(&self) -> &dyn Locker {
        &*self.inner.locker
    }

    /// The encryption key, if one was given.
    pub fn crypt_config(&self) -> Option<&CryptConfig> {
        self.inner.crypt.as_ref()
    }

    /// Whether several hosts share the bucket, locks being leases in it
    /// (`DataStoreBuilder::multi_host`, feature `multi-host`).
    pub fn is_multi_host(&self) -> bool {
        self.inner.multi_host
    }

    /// Checks, right before a write made under `guard`, that its lock is still held (the
    /// locker's fencing hook: leases check that no other host took them over; flocks always
    /// pass).
    pub(crate) fn check_fence(&self, guard: &LockGuard) -> Result<()> {
        self.inner
            .locker
            .check_fence(guard)
            .map_err(|source| match source {
                keepsake_lock::Error::Lost { resource, reason } => Error::LeaseLost {
                    lease: resource,
                    reason,
                },
                other => Error::lock("lease", guard.resource().display().to_string(), other),
            })
    }

    pub(crate) fn keeps_namespace_markers(&self) -> bool {
        self.inner.namespace_markers
    }

    /// A handle on a group (which may or may not exist).
    pub fn group(&self, ns: &BackupNamespace, group: &BackupGroup) -> Group {
        Group::new(self.clone(), ns.clone(), group.clone())
    }

    /// A handle on a snapshot (which may or may not exist).
    pub fn snapshot(&self, ns: &BackupNamespace, snapshot: &BackupDir) -> Snapshot {
        Snapshot::new(self.clone(), ns.clone(), snapshot.clone())
    }

    /// Takes a lock, waiting at least the builder's `lock_wait`, turning a busy lock into
    /// [`Error::Locked`] (naming what was locked).
    pub(crate) fn lock(
        &self,
        target: &LockTarget<'_>,
        mode: LockMode,
        timeout: Duration,
    ) -> Result<LockGuard> {
        let timeout = timeout.max(self.inner.lock_wait);
        self.inner.locker.lock(target, mode, timeout).map_err(|e| {
            // Named only on failure: a lock taken allocates nothing here.
            let (what, path) = match target {
                LockTarget::Group { ns, group } => ("group", group.relative_path(ns)),
                LockTarget::Snapshot { ns, snapshot } => ("snapshot", snapshot.relative_path(ns)),
                LockTarget::Manifest { ns, snapshot } => ("manifest", snapshot.relative_path(ns)),
            };
            Error::lock(what, path, e)
        })
    }
}

impl DataStore {
    /// The builder's [`DataStoreBuilder::lock_wait`].
    pub(crate) fn lock_wait(&self) -> Duration {
        self.inner.lock_wait
    }

    /// PBS's process lock on `<store>/.lock` (this process's one object for that file), or
    /// `None` for a datastore without a local folder (a bare object store has no `.lock`).
    pub(crate) fn process_lock(&self) -> Result<Option<Arc<ProcessLock>>> {
        let Some(local) = self.backend().host_local() else {
            return Ok(None);
        };
        let mut slot = self
            .inner
            .process_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(lock) = &*slot {
            return Ok(Some(Arc::clone(lock)));
        }
        let fd = local
            .open_lock_file(&path(LOCK_FILE_NAME)?)
            .map_err(|e| Error::backend(LOCK_FILE_NAME, e))?;
        let lock = ProcessLock::for_file(fd, self.name())?;
        *slot = Some(Arc::clone(&lock));
        Ok(Some(lock))
    }
}

/// A backend path from a relative path built by the hierarchy types (always valid for them; the
/// only possible refusal is the backend's total length limit).
pub(crate) fn path(p: &str) -> Result<BackendPath> {
    BackendPath::new(p).map_err(|e| Error::backend(p, e))
}

/// [`path`] of a string built for it, without copying it.
pub(crate) fn owned_path(p: String) -> Result<BackendPath> {
    BackendPath::try_from(p).map_err(|e| {
        let shown = match &e {
            keepsake_backend::Error::RefusedPath { path, .. } => path.clone(),
            _ => String::new(),
        };
        Error::backend(&shown, e)
    })
}

/// This host's node name as PBS writes it into `.in-use`: the `uname` node name up to its first
/// dot.
fn host_node_name() -> String {
    let uname = rustix::system::uname();
    let full = uname.nodename().to_string_lossy();
    full.split('.').next().unwrap_or_default().to_owned()
}
