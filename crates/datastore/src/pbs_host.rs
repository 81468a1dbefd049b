//! The PBS server on this host: which datastores it knows (`datastore.cfg`), their maintenance
//! modes, and the active-operations counters through which it sees that a datastore is in use.
//!
//! keepsake works on real PBS datastores beside a running PBS server. To fail closed there it must
//! know a datastore the way PBS knows it (name and path), refuse what PBS's maintenance mode
//! refuses, and register its reads and writes where PBS looks before it lets an operator take a
//! datastore offline, unmount it or delete it. Every path comes from a [`PbsHost`] value:
//! [`PbsHost::system`] for PBS's own folders, [`PbsHost::new`] for tests and other layouts.
//!
//! # Files
//!
//! - `<config dir>/datastore.cfg`: PBS's section config, one `datastore: <name>` section per
//!   datastore with indented `key value` lines; read by [`PbsHost::datastores`].
//! - `<config dir>/.datastore.lck`: PBS's config lock, held by [`PbsHost::enter`] while it checks
//!   the maintenance mode and registers the operation, as PBS's own datastore lookup does. PBS
//!   takes the same lock to change a maintenance mode and only then waits for the counters to drop
//!   to zero, so an operation is either refused or counted before the mode changes.
//! - `<run dir>/active-operations/<store>`: JSON list of
//!   `{"pid": …, "starttime": …, "active_operations": {"read": …, "write": …}}`, one entry per
//!   process, replaced atomically under an exclusive flock on `<run dir>/active-operations/<store>.lock`.
//!   An entry counts while its process lives with that start time (field 22 of `/proc/<pid>/stat`).
//!
//! # Example
//!
//! ```
//! use keepsake_datastore::pbs_host::{MaintenanceType, Operation, PbsHost};
//!
//! let dir = tempfile::tempdir()?;
//! let host = PbsHost::new(dir.path().join("etc"), dir.path().join("run"));
//! std::fs::create_dir_all(host.config_dir())?;
//! std::fs::create_dir_all(host.run_dir())?;
//! std::fs::write(
//!     host.datastore_cfg(),
//!     "datastore: store1\n\tpath /srv/store1\n\tmaintenance-mode type=read-only,message=disk%20swap\n",
//! )?;
//!
//! let store = host.find("store1")?.expect("configured");
//! assert_eq!(store.path, std::path::Path::new("/srv/store1"));
//! let mode = store.maintenance.as_ref().expect("in maintenance");
//! assert_eq!(mode.kind, MaintenanceType::ReadOnly);
//! assert_eq!(mode.message.as_deref(), Some("disk swap"));
//! assert!(store.check(Operation::Read).is_ok());
//! assert!(store.check(Operation::Write).is_err());
//!
//! // A reader registers itself; PBS sees one read operation of this process until the guard drops.
//! let reading = host.register_operation("store1", Operation::Read, None)?;
//! let active = host.active_operations("store1")?;
//! assert_eq!((active.len(), active[0].read, active[0].write), (1, 1, 0));
//! drop(reading);
//! assert!(host.active_operations("store1")?.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use keepsake_lock::{LockFile, LockGuard, LockMode};
use serde::{Deserialize, Serialize};

/// The owner given to files this module creates (re-exported from `keepsake-lock`): PBS's
/// `backup` user and group when keepsake runs as root beside a PBS server.
pub use keepsake_lock::FileOwner;

/// PBS's configuration folder.
pub const PBS_CONFIG_DIR: &str = "/etc/proxmox-backup";
/// PBS's runtime folder (a tmpfs, emptied at boot).
pub const PBS_RUN_DIR: &str = "/run/proxmox-backup";
/// Where PBS mounts removable datastores, each at `<mount dir>/<name>`.
pub const PBS_MOUNT_DIR: &str = "/mnt/datastore";
/// The datastore configuration file in the configuration folder.
pub const DATASTORE_CFG: &str = "datastore.cfg";
/// PBS's lock file of the datastore configuration, in the configuration folder.
pub const DATASTORE_CFG_LOCK: &str = ".datastore.lck";
/// The folder of active-operations files in the runtime folder.
pub const ACTIVE_OPERATIONS_DIR: &str = "active-operations";
/// How long to wait for the active-operations lock and the config lock (PBS's default).
pub const PBS_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Permissions of the active-operations file (PBS's: user and group read and write).
pub const ACTIVE_OPERATIONS_MODE: u32 = 0o660;

/// Where the PBS server of a host keeps its configuration, runtime state and removable datastores.
///
/// Nothing is read when the value is made; every method reads the files it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbsHost {
    config_dir: PathBuf,
    run_dir: PathBuf,
    mount_dir: PathBuf,
}

impl PbsHost {
    /// PBS's own folders: [`PBS_CONFIG_DIR`], [`PBS_RUN_DIR`] and [`PBS_MOUNT_DIR`].
    pub fn system() -> Self {
        Self::new(PBS_CONFIG_DIR, PBS_RUN_DIR)
    }

    /// Another layout (tests, containers): `config_dir` holds `datastore.cfg`, `run_dir` the
    /// active operations and the lock folder. Removable datastores stay at [`PBS_MOUNT_DIR`] unless
    /// [`with_mount_dir`](Self::with_mount_dir) says otherwise.
    pub fn new(config_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            config_dir: config_dir.into(),
            run_dir: run_dir.into(),
            mount_dir: PathBuf::from(PBS_MOUNT_DIR),
        }
    }

    /// The same host with removable datastores mounted below `mount_dir`.
    pub fn with_mount_dir(mut self, mount_dir: impl Into<PathBuf>) -> Self {
        self.mount_dir = mount_dir.into();
        self
    }

    /// The configuration folder.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The runtime folder.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The folder below which removable datastores are mounted.
    pub fn mount_dir(&self) -> &Path {
        &self.mount_dir
    }

    /// The lock root of PBS 4's lock files: `<run dir>/locks`.
    pub fn lock_root(&self) -> PathBuf {
        self.run_dir.join("locks")
    }

    /// The datastore configuration file: `<config dir>/datastore.cfg`.
    pub fn datastore_cfg(&self) -> PathBuf {
        self.config_dir.join(DATASTORE_CFG)
    }

    /// The active-operations file of `store`: `<run dir>/active-operations/<store>`.
    pub fn active_operations_file(&self, store: &str) -> PathBuf {
        self.run_dir.join(ACTIVE_OPERATIONS_DIR).join(store)
    }

    /// Every datastore in `datastore.cfg`, in file order.
    ///
    /// A missing file means no datastores. Keys keepsake does not know are kept in
    /// [`PbsDatastore::properties`], sections of other types are skipped.
    ///
    /// # Errors
    ///
    /// [`PbsHostError::Io`] when the file cannot be read; [`PbsHostError::ConfigSyntax`] (with the
    /// file and line) when it is malformed: a line that is neither a section header, a property
    /// nor a comment, an invalid or repeated datastore name, a repeated key, a datastore without a
    /// path, or a maintenance mode that does not parse.
    pub fn datastores(&self) -> Result<Vec<PbsDatastore>> {
        let path = self.datastore_cfg();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(PbsHostError::Io { path, source }),
        };
        parse_datastore_cfg(&text, &self.mount_dir).map_err(|(line, problem)| {
            PbsHostError::ConfigSyntax {
                path,
                line,
                problem,
            }
        })
    }

    /// The datastore called `name`, if configured.
    ///
    /// # Errors
    ///
    /// As [`datastores`](Self::datastores).
    pub fn find(&self, name: &str) -> Result<Option<PbsDatastore>> {
        Ok(self.datastores()?.into_iter().find(|s| s.name == name))
    }

    /// The datastore whose root is `path` (both canonicalized, so symlinks and `..` do not
    /// matter). Datastores whose root does not exist (any more) are skipped.
    ///
    /// # Errors
    ///
    /// As [`datastores`](Self::datastores); [`PbsHostError::Io`] when `path` cannot be resolved;
    /// [`PbsHostError::AmbiguousPath`] when several datastores have this root (keepsake would not
    /// know which name's locks and counters to use).
    pub fn find_by_path(&self, path: &Path) -> Result<Option<PbsDatastore>> {
        let wanted = std::fs::canonicalize(path).map_err(|source| PbsHostError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut found: Vec<PbsDatastore> = self
            .datastores()?
            .into_iter()
            .filter(|s| std::fs::canonicalize(&s.path).is_ok_and(|p| p == wanted))
            .collect();
        if found.len() > 1 {
            return Err(PbsHostError::AmbiguousPath {
                path: path.to_owned(),
                names: found.into_iter().map(|s| s.name).collect(),
            });
        }
        Ok(found.pop())
    }

    /// Looks `store` up the way PBS's own datastore lookup does: under PBS's config lock, reads
    /// `datastore.cfg`, checks the maintenance mode (and that a removable datastore is mounted)
    /// for `op`, and registers the operation ([`register_operation`](Self::register_operation)).
    /// Holding the config lock across check and registration is what makes a maintenance-mode
    /// change wait for this operation instead of racing past it.
    ///
    /// `owner` is given to files this creates (PBS's config lock file when missing, and those of
    /// [`register_operation`](Self::register_operation)): PBS's `backup` user when running as root.
    ///
    /// # Errors
    ///
    /// [`PbsHostError::UnknownDatastore`], [`PbsHostError::Maintenance`] (with the refusal),
    /// [`PbsHostError::NotMounted`], [`PbsHostError::NoRunDir`] (no PBS runtime folder: the caller
    /// may go on without registering, knowing PBS is not running), lock and I/O errors.
    pub fn enter(
        &self,
        store: &str,
        op: Operation,
        owner: Option<FileOwner>,
    ) -> Result<(PbsDatastore, ActiveOperation)> {
        let unknown = || PbsHostError::UnknownDatastore {
            name: store.to_owned(),
            config: self.datastore_cfg(),
        };
        // Without a configuration folder there is no datastore, and no lock file to create there.
        if !self.config_dir.is_dir() {
            return Err(unknown());
        }
        let _config_lock = lock_file(
            &self.config_dir.join(DATASTORE_CFG_LOCK),
            owner,
            PBS_LOCK_TIMEOUT,
        )?;
        let datastore = self.find(store)?.ok_or_else(unknown)?;
        datastore
            .check(op)
            .map_err(|refusal| PbsHostError::Maintenance {
                store: store.to_owned(),
                refusal,
            })?;
        if datastore.is_removable() && !is_mount_point(&datastore.path) {
            return Err(PbsHostError::NotMounted {
                store: store.to_owned(),
                path: datastore.path.clone(),
            });
        }
        let operation = self.register_operation(store, op, owner)?;
        Ok((datastore, operation))
    }

    /// Counts one `op` of this process in `store`'s active-operations file, until the returned
    /// guard is dropped or [finished](ActiveOperation::finish). A [`Operation::Lookup`] registers
    /// nothing and touches no file (PBS counts only reads and writes).
    ///
    /// Under an exclusive flock on `<run dir>/active-operations/<store>.lock` (created with its
    /// folder, mode 0660, waiting up to [`PBS_LOCK_TIMEOUT`]) the file is read, entries of
    /// processes that are gone (or whose pid now belongs to a process with another start time)
    /// are dropped, this process's entry is added or counted up, and the file is replaced
    /// atomically (mode 0660). `owner` is given to the files and folder this creates; as root on
    /// a PBS host pass PBS's `backup` user and group, because PBS's proxy runs as that user and
    /// could not open a root-owned lock file or replace a root-owned list.
    ///
    /// This does not check the maintenance mode; [`enter`](Self::enter) does both.
    ///
    /// # Errors
    ///
    /// [`PbsHostError::InvalidName`] for a name that is not a datastore name;
    /// [`PbsHostError::NoRunDir`] when the runtime folder does not exist (no PBS on this host);
    /// [`PbsHostError::Lock`], [`PbsHostError::Io`] (naming the file),
    /// [`PbsHostError::CorruptActiveOperations`] when the file is not a list PBS would read
    /// (nothing is written then).
    pub fn register_operation(
        &self,
        store: &str,
        op: Operation,
        owner: Option<FileOwner>,
    ) -> Result<ActiveOperation> {
        check_store_name(store)?;
        let counter = Counter::of(op);
        if let Some(counter) = counter {
            self.update_operations(store, counter, Change::Start, owner)?;
        }
        Ok(ActiveOperation {
            host: self.clone(),
            store: store.to_owned(),
            op,
            owner,
            counted: counter,
        })
    }

    /// The entries of `store`'s active-operations file whose process still runs (or may run:
    /// a process this one cannot inspect counts as running). A missing file means none.
    ///
    /// Reads without locking: the file is only ever replaced whole.
    ///
    /// # Errors
    ///
    /// As [`register_operation`](Self::register_operation), without the lock.
    pub fn active_operations(&self, store: &str) -> Result<Vec<ProcessOperations>> {
        check_store_name(store)?;
        self.check_run_dir()?;
        let path = self.active_operations_file(store);
        let entries = read_entries(&path)?;
        Ok(entries
            .iter()
            .filter(|e| liveness(e.pid, e.starttime) != Liveness::Gone)
            .map(|e| ProcessOperations {
                pid: e.pid,
                start_time: e.starttime,
                read: e.active_operations.read,
                write: e.active_operations.write,
            })
            .collect())
    }

    fn check_run_dir(&self) -> Result<()> {
        match std::fs::metadata(&self.run_dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(PbsHostError::NoRunDir {
                path: self.run_dir.clone(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PbsHostError::NoRunDir {
                path: self.run_dir.clone(),
            }),
            Err(source) => Err(PbsHostError::Io {
                path: self.run_dir.clone(),
                source,
            }),
        }
    }

    /// One locked read-modify-replace of `store`'s active-operations file.
    fn update_operations(
        &self,
        store: &str,
        counter: Counter,
        change: Change,
        owner: Option<FileOwner>,
    ) -> Result<()> {
        // Checked first: the lock would otherwise create the runtime folder of a PBS that is not
        // there.
        self.check_run_dir()?;
        let path = self.active_operations_file(store);
        let lock_path = path.with_file_name(format!("{store}.lock"));
        let _lock = lock_file(&lock_path, owner, PBS_LOCK_TIMEOUT)?;
        let me = own_process()?;
        let mut entries = read_entries(&path)?;
        let mine = |e: &TaskOperations| e.pid == me.pid && e.starttime == me.start_time;
        entries.retain(|e| mine(e) || liveness(e.pid, e.starttime) != Liveness::Gone);
        let index = match entries.iter().position(mine) {
            Some(index) => Some(index),
            None if change == Change::Start => {
                entries.push(TaskOperations {
                    pid: me.pid,
                    starttime: me.start_time,
                    active_operations: Counts::default(),
                    other: serde_json::Map::new(),
                });
                Some(entries.len() - 1)
            }
            // Our entry is gone (someone reset the file): there is nothing left to count down.
            None => None,
        };
        if let Some(index) = index {
            let counts = &mut entries[index].active_operations;
            let count = match counter {
                Counter::Read => &mut counts.read,
                Counter::Write => &mut counts.write,
            };
            *count = match change {
                Change::Start => count.saturating_add(1),
                // Never below zero: a negative count would hide another operation of ours.
                Change::End => count.saturating_sub(1).max(0),
            };
            if counts.read == 0 && counts.write == 0 {
                entries.remove(index);
            }
        }
        let json = serde_json::to_string(&entries).expect("the list serializes");
        replace_file(&path, json.as_bytes(), owner)
    }
}

/// A datastore as `datastore.cfg` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PbsDatastore {
    /// Its name (the section id).
    pub name: String,
    /// Where its data is: the `path` key, or `<mount dir>/<name>` for a removable datastore.
    pub path: PathBuf,
    /// The `path` key as written (relative to the device for a removable datastore).
    pub config_path: String,
    /// The filesystem UUID of a removable datastore's device (`backing-device`).
    pub backing_device: Option<String>,
    /// The maintenance mode, if one is set.
    pub maintenance: Option<MaintenanceMode>,
    /// The `backend` property string as written (`type=s3,client=…,bucket=…`), if set.
    pub backend: Option<String>,
    /// Every key and raw value of the section in file order, including keys keepsake does not
    /// know.
    pub properties: Vec<(String, String)>,
    /// The line of its section header (1-based).
    pub line: usize,
}

impl PbsDatastore {
    /// Whether it lives on a removable device (`backing-device` is set).
    pub fn is_removable(&self) -> bool {
        self.backing_device.is_some()
    }

    /// The raw value of `key`, if the section has it.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether its maintenance mode allows `op` (no mode allows everything).
    ///
    /// # Errors
    ///
    /// The refusal, as [`MaintenanceMode::check`] gives it.
    pub fn check(&self, op: Operation) -> Result<(), MaintenanceRefusal> {
        match &self.maintenance {
            Some(mode) => mode.check(op),
            None => Ok(()),
        }
    }
}

/// What an operation does to a datastore, as PBS's maintenance check and counters distinguish it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Reads data or metadata (counted).
    Read,
    /// Changes data or metadata (counted).
    Write,
    /// Only looks at the configuration or lists (not counted; refused only while deleting).
    Lookup,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Lookup => "lookup",
        })
    }
}

/// The type of a maintenance mode.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MaintenanceType {
    /// `read-only`: reads allowed, writes refused.
    ReadOnly,
    /// `offline`: reads and writes refused.
    Offline,
    /// `delete`: the datastore is being deleted; everything refused, lookups too.
    Delete,
    /// `unmount` (PBS 4): a removable datastore is being unmounted; reads and writes refused.
    Unmount,
    /// `s3-refresh` (PBS 4): the local cache of an S3 datastore is being refreshed; reads and
    /// writes refused.
    S3Refresh,
    /// A type this version of keepsake does not know, as written. Reads and writes are refused
    /// (fail closed); lookups are allowed.
    Unknown(String),
}

impl MaintenanceType {
    /// The type's name in PBS's configuration.
    pub fn as_str(&self) -> &str {
        match self {
            MaintenanceType::ReadOnly => "read-only",
            MaintenanceType::Offline => "offline",
            MaintenanceType::Delete => "delete",
            MaintenanceType::Unmount => "unmount",
            MaintenanceType::S3Refresh => "s3-refresh",
            MaintenanceType::Unknown(name) => name,
        }
    }
}

impl From<&str> for MaintenanceType {
    fn from(name: &str) -> Self {
        match name {
            "read-only" => MaintenanceType::ReadOnly,
            "offline" => MaintenanceType::Offline,
            "delete" => MaintenanceType::Delete,
            "unmount" => MaintenanceType::Unmount,
            "s3-refresh" => MaintenanceType::S3Refresh,
            other => MaintenanceType::Unknown(other.to_owned()),
        }
    }
}

impl fmt::Display for MaintenanceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A datastore's maintenance mode: the `maintenance-mode` property string
/// `type=<type>[,message=<percent-encoded text>]` (`type=` may be left out).
///
/// ```
/// use keepsake_datastore::pbs_host::{MaintenanceMode, MaintenanceType, Operation};
///
/// let mode: MaintenanceMode = "offline,message=new%20disks".parse()?;
/// assert_eq!(mode.kind, MaintenanceType::Offline);
/// let refusal = mode.check(Operation::Read).unwrap_err();
/// assert_eq!(refusal.to_string(), "the datastore is offline for maintenance: new disks");
/// assert!(mode.check(Operation::Lookup).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceMode {
    /// The type.
    pub kind: MaintenanceType,
    /// The operator's message, percent-decoded.
    pub message: Option<String>,
}

impl MaintenanceMode {
    /// A mode of this type without a message.
    pub fn new(kind: MaintenanceType) -> Self {
        Self {
            kind,
            message: None,
        }
    }

    /// The same mode with an (already decoded) message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Whether this mode allows `op`, by PBS's rules: `delete` refuses everything (lookups too);
    /// otherwise lookups are allowed; `offline`, `unmount`, `s3-refresh` and unknown types refuse
    /// reads and writes; `read-only` refuses writes.
    ///
    /// # Errors
    ///
    /// The refusal, whose text says what PBS would say, with the operator's message.
    pub fn check(&self, op: Operation) -> Result<(), MaintenanceRefusal> {
        let refused = match (&self.kind, op) {
            (MaintenanceType::Delete, _) => true,
            (_, Operation::Lookup) => false,
            (MaintenanceType::ReadOnly, Operation::Read) => false,
            (MaintenanceType::ReadOnly, Operation::Write)
            | (MaintenanceType::Offline, _)
            | (MaintenanceType::Unmount, _)
            | (MaintenanceType::S3Refresh, _)
            | (MaintenanceType::Unknown(_), _) => true,
        };
        if refused {
            Err(MaintenanceRefusal {
                mode: self.kind.clone(),
                operation: op,
                message: self.message.clone(),
            })
        } else {
            Ok(())
        }
    }
}

impl FromStr for MaintenanceMode {
    type Err = MaintenanceModeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut kind = None;
        let mut message = None;
        for (key, value) in split_property_string(text)? {
            let slot = match key.unwrap_or("type") {
                "type" => &mut kind,
                "message" => &mut message,
                // Keys of later PBS versions do not change what the type means.
                _ => continue,
            };
            if slot.is_some() {
                return Err(MaintenanceModeError::DuplicateKey(
                    key.unwrap_or("type").to_owned(),
                ));
            }
            *slot = Some(value);
        }
        let kind = match kind {
            Some(kind) if !kind.is_empty() => MaintenanceType::from(kind.as_str()),
            _ => return Err(MaintenanceModeError::MissingType),
        };
        Ok(Self {
            kind,
            message: message.map(|m| percent_decode(&m)),
        })
    }
}

/// Why a `maintenance-mode` value did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MaintenanceModeError {
    /// No (or an empty) `type`.
    #[error("no maintenance type")]
    MissingType,
    /// A key given twice.
    #[error("`{0}` given twice")]
    DuplicateKey(String),
    /// A quoted value without its closing quote.
    #[error("unterminated quoted value")]
    UnterminatedQuote,
    /// Text after a quoted value other than `,`.
    #[error("text after a quoted value")]
    TrailingText,
}

/// A maintenance mode refused an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceRefusal {
    /// The mode's type.
    pub mode: MaintenanceType,
    /// The refused operation.
    pub operation: Operation,
    /// The operator's message, if any.
    pub message: Option<String>,
}

impl fmt::Display for MaintenanceRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            MaintenanceType::ReadOnly => {
                f.write_str("the datastore is read-only for maintenance")?
            }
            MaintenanceType::Offline => f.write_str("the datastore is offline for maintenance")?,
            MaintenanceType::Delete => f.write_str("the datastore is being deleted")?,
            MaintenanceType::Unmount => f.write_str("the datastore is being unmounted")?,
            MaintenanceType::S3Refresh => {
                f.write_str("the datastore's local cache is being refreshed from S3 (maintenance)")?
            }
            MaintenanceType::Unknown(kind) => write!(
                f,
                "the datastore is in maintenance mode `{kind}`, unknown to keepsake, which \
                 therefore neither reads nor writes"
            )?,
        }
        match self.message.as_deref() {
            Some(message) if !message.is_empty() => write!(f, ": {message}"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for MaintenanceRefusal {}

/// The counters of one process in an active-operations file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessOperations {
    /// The process id.
    pub pid: u32,
    /// Its start time (clock ticks after boot, field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
    /// Running read operations.
    pub read: i64,
    /// Running write operations.
    pub write: i64,
}

/// A registered operation: counted in the datastore's active-operations file until dropped or
/// [finished](Self::finish).
///
/// Dropping counts down as [`finish`](Self::finish) does, waiting for the lock like it, but
/// cannot report a failure; the count of a process that is gone is ignored by everyone anyway.
#[derive(Debug)]
#[must_use = "the operation is counted only while the guard lives"]
pub struct ActiveOperation {
    host: PbsHost,
    store: String,
    op: Operation,
    owner: Option<FileOwner>,
    /// The counter this operation holds up; `None` for a lookup and once counted down.
    counted: Option<Counter>,
}

impl ActiveOperation {
    /// The datastore's name.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// The operation.
    pub fn operation(&self) -> Operation {
        self.op
    }

    /// Counts the operation down, reporting a failure.
    ///
    /// # Errors
    ///
    /// As [`PbsHost::register_operation`]; the count then stays until this process ends.
    pub fn finish(mut self) -> Result<()> {
        self.end()
    }

    fn end(&mut self) -> Result<()> {
        match self.counted.take() {
            Some(counter) => {
                self.host
                    .update_operations(&self.store, counter, Change::End, self.owner)
            }
            None => Ok(()),
        }
    }
}

impl Drop for ActiveOperation {
    fn drop(&mut self) {
        // Nowhere to report it; the entry dies with the process.
        let _ = self.end();
    }
}

/// What can go wrong with the PBS host's files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PbsHostError {
    /// A file or folder could not be read, written or resolved.
    #[error("I/O error at {}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system reported.
        #[source]
        source: io::Error,
    },

    /// `datastore.cfg` is malformed.
    #[error("{}, line {line}: {problem}", path.display())]
    ConfigSyntax {
        /// The file.
        path: PathBuf,
        /// The line (1-based).
        line: usize,
        /// What is wrong there.
        problem: ConfigProblem,
    },

    /// No datastore of this name is configured.
    #[error("datastore `{name}` is not configured in {}", config.display())]
    UnknownDatastore {
        /// The name looked for.
        name: String,
        /// The configuration file.
        config: PathBuf,
    },

    /// Several datastores have this root.
    #[error("{} is the root of several datastores: {}", path.display(), names.join(", "))]
    AmbiguousPath {
        /// The path looked up.
        path: PathBuf,
        /// The datastores' names.
        names: Vec<String>,
    },

    /// Not a datastore name (3 to 32 bytes of letters, digits, `_`, `.`, `-`).
    #[error("invalid datastore name `{name}`")]
    InvalidName {
        /// The name.
        name: String,
        /// Why it is invalid.
        #[source]
        source: keepsake_hierarchy::Error,
    },

    /// The datastore's maintenance mode refuses the operation.
    #[error("datastore `{store}` is unavailable: {refusal}")]
    Maintenance {
        /// The datastore.
        store: String,
        /// What the mode refused, with the operator's message.
        refusal: MaintenanceRefusal,
    },

    /// A removable datastore's device is not mounted.
    #[error("removable datastore `{store}` is not mounted at {}", path.display())]
    NotMounted {
        /// The datastore.
        store: String,
        /// Where it would be mounted.
        path: PathBuf,
    },

    /// The PBS runtime folder does not exist: no PBS server runs on this host (under this
    /// layout), so there is nothing to register with.
    #[error("no PBS runtime folder {}", path.display())]
    NoRunDir {
        /// The runtime folder.
        path: PathBuf,
    },

    /// A lock file could not be locked (busy past the timeout, or an I/O error).
    #[error("cannot lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The lock error (naming the holders when busy).
        #[source]
        source: keepsake_lock::Error,
    },

    /// An active-operations file is not the JSON list PBS writes; it is left as it is.
    #[error("{} is not a valid active-operations list", path.display())]
    CorruptActiveOperations {
        /// The file.
        path: PathBuf,
        /// What the JSON parser found.
        #[source]
        source: serde_json::Error,
    },

    /// This process's own entry in `/proc` could not be read or understood.
    #[error("cannot read this process's start time from {}", path.display())]
    OwnProcess {
        /// The `/proc` file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

impl PbsHostError {
    /// Whether this is [`PbsHostError::NoRunDir`]: no PBS server on this host to register with.
    pub fn is_no_run_dir(&self) -> bool {
        matches!(self, PbsHostError::NoRunDir { .. })
    }
}

/// What is wrong with a line of `datastore.cfg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// Outside a section, a line that is not `<type>: <id>`.
    #[error("expected a section header `<type>: <name>`")]
    ExpectedHeader,
    /// Inside a section, a line that is not an indented `key value`.
    #[error("expected an indented `key value` line")]
    ExpectedProperty,
    /// A datastore name that PBS would not accept.
    #[error("invalid datastore name `{0}`")]
    InvalidName(String),
    /// A datastore configured twice.
    #[error("datastore `{0}` is configured twice")]
    DuplicateSection(String),
    /// A key given twice in one section.
    #[error("key `{0}` given twice")]
    DuplicateKey(String),
    /// A datastore section without `path`.
    #[error("datastore `{0}` has no path")]
    MissingPath(String),
    /// A datastore that is not removable, with a relative path.
    #[error("datastore `{name}` has a relative path `{path}`")]
    RelativePath {
        /// The datastore.
        name: String,
        /// Its path as written.
        path: String,
    },
    /// A `maintenance-mode` value that does not parse.
    #[error("invalid maintenance mode: {0}")]
    MaintenanceMode(MaintenanceModeError),
}

/// The result type of this module.
pub type Result<T, E = PbsHostError> = std::result::Result<T, E>;

/// Parses `datastore.cfg`; an error is the 1-based line and the problem.
fn parse_datastore_cfg(
    text: &str,
    mount_dir: &Path,
) -> Result<Vec<PbsDatastore>, (usize, ConfigProblem)> {
    struct Section {
        kind: String,
        name: String,
        line: usize,
        properties: Vec<(String, String)>,
        maintenance: Option<MaintenanceMode>,
    }
    let mut sections: Vec<Section> = Vec::new();
    let mut open = false;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            open = false;
            continue;
        }
        if line.trim_start().starts_with('#') {
            continue;
        }
        let indented = line.starts_with(|c: char| c.is_whitespace());
        if !indented {
            let (kind, name) = parse_header(line).ok_or((number, ConfigProblem::ExpectedHeader))?;
            sections.push(Section {
                kind: kind.to_owned(),
                name: name.to_owned(),
                line: number,
                properties: Vec::new(),
                maintenance: None,
            });
            open = true;
            continue;
        }
        let section = match sections.last_mut() {
            Some(section) if open => section,
            _ => return Err((number, ConfigProblem::ExpectedHeader)),
        };
        let (key, value) = line
            .trim()
            .split_once(char::is_whitespace)
            .ok_or((number, ConfigProblem::ExpectedProperty))?;
        let value = value.trim();
        if section.kind == "datastore" {
            if section.properties.iter().any(|(k, _)| k == key) {
                return Err((number, ConfigProblem::DuplicateKey(key.to_owned())));
            }
            if key == "maintenance-mode" {
                let mode = MaintenanceMode::from_str(value)
                    .map_err(|e| (number, ConfigProblem::MaintenanceMode(e)))?;
                section.maintenance = Some(mode);
            }
        }
        section.properties.push((key.to_owned(), value.to_owned()));
    }

    let mut datastores: Vec<PbsDatastore> = Vec::new();
    for section in sections {
        if section.kind != "datastore" {
            continue;
        }
        let line = section.line;
        let name = section.name;
        if keepsake_hierarchy::check_datastore_name(&name).is_err() {
            return Err((line, ConfigProblem::InvalidName(name)));
        }
        if datastores.iter().any(|d| d.name == name) {
            return Err((line, ConfigProblem::DuplicateSection(name)));
        }
        let get = |key: &str| {
            section
                .properties
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let Some(config_path) = get("path") else {
            return Err((line, ConfigProblem::MissingPath(name)));
        };
        let backing_device = get("backing-device");
        let path = if backing_device.is_some() {
            mount_dir.join(&name)
        } else if Path::new(&config_path).is_absolute() {
            PathBuf::from(&config_path)
        } else {
            return Err((
                line,
                ConfigProblem::RelativePath {
                    name,
                    path: config_path,
                },
            ));
        };
        datastores.push(PbsDatastore {
            backend: get("backend"),
            name,
            path,
            config_path,
            backing_device,
            maintenance: section.maintenance,
            properties: section.properties,
            line,
        });
    }
    Ok(datastores)
}

/// `<type>: <id>` at column 0, the type starting with a letter.
fn parse_header(line: &str) -> Option<(&str, &str)> {
    if !line.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let (kind, name) = line.split_once(':')?;
    let (kind, name) = (kind.trim(), name.trim());
    if name.is_empty() || kind.contains(char::is_whitespace) || name.contains(char::is_whitespace) {
        return None;
    }
    Some((kind, name))
}

/// Splits a property string into `(key, value)` items; `None` is the default key. A value may be
/// double-quoted (with `\` escaping the next character). Empty items are skipped.
fn split_property_string(text: &str) -> Result<Vec<(Option<&str>, String)>, MaintenanceModeError> {
    let mut items = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after_key) = match rest.find(['=', ',', '"']) {
            Some(i) if rest.as_bytes()[i] == b'=' => (Some(&rest[..i]), &rest[i + 1..]),
            _ => (None, rest),
        };
        let (value, after_value) = match after_key.strip_prefix('"') {
            Some(quoted) => unquote(quoted)?,
            None => {
                let end = after_key.find(',').unwrap_or(after_key.len());
                (after_key[..end].to_owned(), &after_key[end..])
            }
        };
        if key.is_some() || !value.is_empty() {
            items.push((key, value));
        }
        rest = match after_value.strip_prefix(',') {
            Some(next) => next,
            None if after_value.is_empty() => after_value,
            None => return Err(MaintenanceModeError::TrailingText),
        };
    }
    Ok(items)
}

/// The value of a quoted string whose opening quote is already consumed, and the rest after the
/// closing quote.
fn unquote(text: &str) -> Result<(String, &str), MaintenanceModeError> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err(MaintenanceModeError::UnterminatedQuote)
}

/// Decodes `%XX` sequences; anything else (also a `%` not followed by two hex digits) stays as
/// written, and bytes that do not form UTF-8 become U+FFFD.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check_store_name(store: &str) -> Result<()> {
    keepsake_hierarchy::check_datastore_name(store).map_err(|source| PbsHostError::InvalidName {
        name: store.to_owned(),
        source,
    })
}

fn lock_file(path: &Path, owner: Option<FileOwner>, timeout: Duration) -> Result<LockGuard> {
    let mut file = LockFile::new(path);
    if let Some(owner) = owner {
        file = file.owner(owner);
    }
    file.lock(LockMode::Exclusive, timeout)
        .map_err(|source| PbsHostError::Lock {
            path: path.to_owned(),
            source,
        })
}

/// Whether `path` is the root of a mounted filesystem: it exists and lies on another device than
/// its parent. (A removable datastore's device is never the one `/mnt/datastore` is on.)
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(this), Ok(parent)) = (std::fs::metadata(path), std::fs::metadata(path.join("..")))
    else {
        return false;
    };
    this.is_dir() && this.dev() != parent.dev()
}

/// The counters of an active-operations entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counter {
    Read,
    Write,
}

impl Counter {
    /// The counter `op` holds up; lookups are not counted.
    fn of(op: Operation) -> Option<Self> {
        match op {
            Operation::Read => Some(Counter::Read),
            Operation::Write => Some(Counter::Write),
            Operation::Lookup => None,
        }
    }
}

/// An increment or decrement of a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Start,
    End,
}

/// One entry of an active-operations file, as PBS reads and writes it. The field order is the
/// byte order of PBS's compact JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskOperations {
    pid: u32,
    starttime: u64,
    active_operations: Counts,
    /// Keys of later PBS versions, written back unchanged.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Counts {
    read: i64,
    write: i64,
}

fn read_entries(path: &Path) -> Result<Vec<TaskOperations>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PbsHostError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&text).map_err(|source| PbsHostError::CorruptActiveOperations {
        path: path.to_owned(),
        source,
    })
}

/// Replaces `path` with `data`: a temporary file in the same folder, mode 0660 and `owner`, then
/// a rename, so that PBS never reads a torn list. No fsync: the file lives on a tmpfs and means
/// nothing after a reboot.
fn replace_file(path: &Path, data: &[u8], owner: Option<FileOwner>) -> Result<()> {
    let io_error = |source| PbsHostError::Io {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .expect("an active-operations path ends in the store name")
        .to_string_lossy();
    // Unique per process; the exclusive lock keeps this process's threads apart.
    let temp = path.with_file_name(format!(".{name}.tmp_{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(ACTIVE_OPERATIONS_MODE)
            .open(&temp)?;
        // Explicitly: the umask may have narrowed the mode at creation.
        file.set_permissions(std::fs::Permissions::from_mode(ACTIVE_OPERATIONS_MODE))?;
        if let Some(owner) = owner {
            std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid))?;
        }
        file.write_all(data)?;
        drop(file);
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(io_error)
}

/// This process as other processes see it in `/proc`.
struct OwnProcess {
    pid: u32,
    start_time: u64,
}

/// The pid and start time in `/proc/self/stat`: the pid as `/proc` (and so PBS) sees this
/// process, which differs from [`std::process::id`] only inside another pid namespace.
fn own_process() -> Result<OwnProcess> {
    let path = PathBuf::from("/proc/self/stat");
    let text = std::fs::read_to_string(&path).map_err(|source| PbsHostError::OwnProcess {
        path: path.clone(),
        source,
    })?;
    let stat = parse_proc_stat(&text).ok_or_else(|| PbsHostError::OwnProcess {
        path,
        source: io::Error::new(io::ErrorKind::InvalidData, "unexpected format"),
    })?;
    Ok(OwnProcess {
        pid: stat.pid,
        start_time: stat.start_time,
    })
}

/// The fields of `/proc/<pid>/stat` this module needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    pid: u32,
    state: char,
    start_time: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so the fields after it are counted from the *last* `)`.
fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = text[..open].trim().parse().ok()?;
    // Field 3 (state) onwards; field 22 (start time) is the 20th of them.
    let mut rest = text[close + 1..].split_ascii_whitespace();
    let state = rest.next()?.chars().next()?;
    let start_time = rest.nth(18)?.parse().ok()?;
    Some(ProcStat {
        pid,
        state,
        start_time,
    })
}

/// Whether the process of an entry still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// It runs with the recorded start time.
    Alive,
    /// No process has this pid, it is a zombie, or its start time differs (the pid was reused).
    Gone,
    /// It cannot be told (a `/proc` hidden by `hidepid`, an unreadable file): it counts as
    /// running, because dropping a running PBS task's count would let maintenance proceed.
    Unknown,
}

fn liveness(pid: u32, start_time: u64) -> Liveness {
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        // Pid 0 or beyond the kernel's range: no process has it.
        return Liveness::Gone;
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => match parse_proc_stat(&text) {
            Some(stat) if matches!(stat.state, 'Z' | 'X') => Liveness::Gone,
            Some(stat) if stat.start_time == start_time => Liveness::Alive,
            Some(_) => Liveness::Gone,
            None => Liveness::Unknown,
        },
        // `hidepid` hides other users' processes as if they did not exist; only the kernel's
        // answer to signal 0 tells "gone" from "hidden".
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match rustix::process::test_kill_process(raw) {
                Err(rustix::io::Errno::SRCH) => Liveness::Gone,
                _ => Liveness::Unknown,
            }
        }
        Err(_) => Liveness::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_with_hostile_command_names() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 19 20 21";
        for comm in ["bash", "a b", "x) S 9 9", "((", ")", "evil ) 1 2 3"] {
            let text = format!("1234 ({comm}) {tail}\n");
            assert_eq!(
                parse_proc_stat(&text),
                Some(ProcStat {
                    pid: 1234,
                    state: 'S',
                    start_time: 424242
                }),
                "{comm:?}"
            );
        }
        for bad in ["", "12 bash S 1", "12 (bash) S 1 2", "x (a) S", ") 12 ("] {
            assert_eq!(parse_proc_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn own_start_time_is_read() {
        let me = own_process().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(liveness(me.pid, me.start_time), Liveness::Alive);
        assert_eq!(liveness(me.pid, me.start_time + 1), Liveness::Gone);
        assert_eq!(liveness(0, 0), Liveness::Gone);
        assert_eq!(liveness(u32::MAX, 0), Liveness::Gone);
    }

    #[test]
    fn percent_decoding() {
        for (input, expected) in [
            ("disk%20swap", "disk swap"),
            ("100%", "100%"),
            ("%zz%4", "%zz%4"),
            ("%C3%A4", "ä"),
            ("%ff", "\u{fffd}"),
            ("a%2Cb", "a,b"),
        ] {
            assert_eq!(percent_decode(input), expected, "{input}");
        }
    }

    #[test]
    fn property_strings() {
        let check = |input: &str, expected: &[(Option<&str>, &str)]| {
            let items = split_property_string(input).unwrap();
            let items: Vec<(Option<&str>, &str)> =
                items.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(items, expected, "{input}");
        };
        check("offline", &[(None, "offline")]);
        check(
            "type=offline,message=a%20b",
            &[(Some("type"), "offline"), (Some("message"), "a%20b")],
        );
        check(
            r#"message="x, \"y\"",read-only"#,
            &[(Some("message"), r#"x, "y""#), (None, "read-only")],
        );
        check("type=offline,", &[(Some("type"), "offline")]);
        assert_eq!(
            split_property_string(r#"message="open"#),
            Err(MaintenanceModeError::UnterminatedQuote)
        );
        assert_eq!(
            split_property_string(r#"message="a"b"#),
            Err(MaintenanceModeError::TrailingText)
        );
    }

    #[test]
    fn json_is_pbs_compact_form() {
        let entries = vec![TaskOperations {
            pid: 7,
            starttime: 99,
            active_operations: Counts { read: 1, write: 2 },
            other: serde_json::Map::new(),
        }];
        let json = serde_json::to_string(&entries).unwrap();
        assert_eq!(
            json,
            r#"[{"pid":7,"starttime":99,"active_operations":{"read":1,"write":2}}]"#
        );
        let back: Vec<TaskOperations> = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }
}
