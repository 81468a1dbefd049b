//! The one error type of this crate.
//!
//! Rules this crate keeps:
//! - Callers match on meaning: "nothing there" is [`Error::NotFound`] (with what was looked for),
//!   whichever backend said so; a busy lock is [`Error::Locked`] and names its holders; a protected
//!   snapshot is [`Error::Protected`]; a bad blob or manifest is [`Error::Corrupt`] with its path.
//! - Every variant names the namespace, group, snapshot or file it concerns.
//! - Causes from the lower crates are kept as `source`, never flattened into the message.
//! - A failed operation changes nothing unless its documentation says what it leaves behind.

use std::fmt;

/// What a datastore operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The namespace, group, snapshot or file does not exist.
    #[error("{what} `{path}` does not exist")]
    NotFound {
        /// What was looked for: "namespace", "group", "snapshot", "file", "owner", ….
        what: &'static str,
        /// Its relative path or name.
        path: String,
    },

    /// Something that must be new exists already.
    #[error("{what} `{path}` exists already")]
    AlreadyExists {
        /// What was to be created.
        what: &'static str,
        /// Its relative path or name.
        path: String,
    },

    /// A lock is held by someone else (the lock error names the holders where it can).
    #[error("{what} `{path}` is locked")]
    Locked {
        /// What was to be locked: "group", "snapshot" or "manifest".
        what: &'static str,
        /// Its relative path.
        path: String,
        /// The lock error, with the holders' pids and command lines.
        #[source]
        source: keepsake_lock::Error,
    },

    /// A lock could not be taken for a reason other than another holder (the lock root cannot be
    /// created or written, a permission, an I/O error): nothing was done, and nothing may be
    /// concluded about the locked object.
    #[error("cannot lock {what} `{path}`")]
    LockFailed {
        /// What was to be locked: "group", "snapshot", "manifest" or "intent".
        what: &'static str,
        /// Its relative path (or the intent id).
        path: String,
        /// The lock error, with the system's cause.
        #[source]
        source: keepsake_lock::Error,
    },

    /// The folder is the local cache of an S3 datastore: opened as a plain local datastore,
    /// changes would go to the cache only and never to the bucket.
    #[error("{} is the local cache of the S3 datastore in {identity}: open it with those S3 settings", path.display())]
    S3Cache {
        /// The folder.
        path: std::path::PathBuf,
        /// The bucket datastore it caches (from its `.keepsake/cache.json`).
        identity: Box<keepsake_backend::CacheIdentity>,
    },

    /// The lock root cannot be used for this datastore: it is, holds or lies inside the datastore
    /// folder, or the locker could not be made for it.
    #[error("cannot use lock root {}", lock_root.display())]
    LockRoot {
        /// The lock root given.
        lock_root: std::path::PathBuf,
        /// Why.
        #[source]
        source: keepsake_lock::Error,
    },

    /// An operation failed after it had changed part of what it announced. `done` names exactly
    /// what was removed or moved already; the rest is recorded in the intent journal, and the
    /// next [`DataStore::recover`](crate::DataStore::recover) (or write command) completes it.
    #[error("{operation} stopped after {} of its steps: {}", done.len(), done.join(", "))]
    Interrupted {
        /// The operation, as the journal describes it.
        operation: String,
        /// The snapshots and groups removed or moved before the failure (relative paths).
        done: Vec<String>,
        /// What failed.
        #[source]
        source: Box<Error>,
    },

    /// Interrupted operations are waiting in the intent journal and could not be completed now
    /// (a lock they need is held, or the storage failed): a journaled operation refuses to run
    /// beside them, so that it never acts on half-done state.
    #[error("interrupted operation{} pending: {}", if pending.len() == 1 { "" } else { "s" }, pending.join("; "))]
    RecoveryPending {
        /// The pending operations, each with why it could not be completed.
        pending: Vec<String>,
    },

    /// The datastore was opened read-only ([`Access::ReadOnly`](crate::Access::ReadOnly)).
    #[error("datastore opened read-only: {operation} refused")]
    ReadOnly {
        /// What was refused.
        operation: &'static str,
    },

    /// A manifest change would leave a signature that no longer matches: the signed part
    /// changed, the datastore has no key to sign it again, and the caller did not clear the
    /// signature.
    #[error(
        "`{path}`: the change touches the signed part of a signed manifest; give the key, or clear the signature explicitly"
    )]
    SignatureWouldBreak {
        /// The manifest's relative path.
        path: String,
    },

    /// The snapshot is protected and cannot be removed.
    #[error("snapshot `{path}` is protected")]
    Protected {
        /// The snapshot's relative path.
        path: String,
    },

    /// A name, path, time or owner did not parse.
    #[error(transparent)]
    Invalid(#[from] keepsake_hierarchy::Error),

    /// A blob, manifest or index is damaged or cannot be decoded.
    #[error("`{path}` is corrupt or unreadable")]
    Corrupt {
        /// The file's relative path.
        path: String,
        /// What the decoder found.
        #[source]
        source: keepsake_manifest::Error,
    },

    /// A chunk's stored bytes do not check out (see [`ChunkDefect`](crate::ChunkDefect)).
    #[error("chunk `{path}` is corrupt")]
    ChunkCorrupt {
        /// The chunk's relative path.
        path: String,
        /// What is wrong with it.
        #[source]
        defect: crate::read::ChunkDefect,
    },

    /// An index file is not the one the manifest records (another size or checksum).
    #[error("index `{path}` does not match the size and checksum in the manifest")]
    IndexMismatch {
        /// The index's relative path.
        path: String,
    },

    /// Data to be written could not be encoded (an invalid archive name, a blob over the size
    /// limit, an index with inconsistent sizes).
    #[error("cannot write `{path}`")]
    Encode {
        /// The file's name or relative path.
        path: String,
        /// What the encoder refused.
        #[source]
        source: keepsake_manifest::Error,
    },

    /// The owner file of a group does not hold an auth id.
    #[error("owner file of group `{group}` is invalid")]
    InvalidOwner {
        /// The group's relative path.
        group: String,
        /// Why it did not parse.
        #[source]
        source: keepsake_hierarchy::Error,
    },

    /// The caller may not act on a group owned by someone else.
    #[error("group `{group}` belongs to {owner}, not to {auth_id}")]
    NotOwner {
        /// The group's relative path.
        group: String,
        /// Its owner.
        owner: keepsake_hierarchy::Authid,
        /// Who asked.
        auth_id: keepsake_hierarchy::Authid,
    },

    /// A file changed between read and write (a compare-and-swap lost).
    #[error("`{path}` was changed concurrently")]
    Precondition {
        /// The file's relative path.
        path: String,
    },

    /// A new snapshot is not newer than the group's last finished one.
    #[error(
        "snapshot time {time} of group `{group}` is not newer than the last finished backup {last}"
    )]
    TimeNotNewer {
        /// The group's relative path.
        group: String,
        /// The refused snapshot time.
        time: keepsake_hierarchy::BackupTime,
        /// The group's newest finished snapshot time.
        last: keepsake_hierarchy::BackupTime,
    },

    /// [`DataStoreBuilder::create`](crate::DataStoreBuilder::create) was given a folder that
    /// holds something other than hidden entries and `lost+found`.
    #[error("datastore {store}: the folder is not empty (found `{found}`)")]
    NotEmpty {
        /// The datastore's name.
        store: String,
        /// The first entry found.
        found: String,
    },

    /// [`DataStoreBuilder::create`](crate::DataStoreBuilder::create) on object storage: the
    /// bucket holds PBS's `.in-use` marker of this datastore already (PBS refuses the same).
    #[error("datastore {store}: the bucket holds this datastore already, {in_use}")]
    BucketInUse {
        /// The datastore's name.
        store: String,
        /// What the marker says.
        in_use: keepsake_backend::InUse,
    },

    /// [`DataStoreBuilder::create`](crate::DataStoreBuilder::create) on object storage: the
    /// bucket holds content under this datastore's prefix, without an `.in-use` marker.
    #[error("datastore {store}: the bucket holds content of this datastore already")]
    BucketNotEmpty {
        /// The datastore's name.
        store: String,
    },

    /// [`DataStoreBuilder::open`](crate::DataStoreBuilder::open) on object storage: the bucket
    /// holds neither an `.in-use` marker nor content of this datastore (a wrong bucket or name;
    /// opening it would show an empty datastore).
    #[error(
        "datastore {store}: the bucket holds no such datastore (no .in-use marker, no content)"
    )]
    NotInBucket {
        /// The datastore's name.
        store: String,
    },

    /// [`DataStoreBuilder::open`](crate::DataStoreBuilder::open) found no datastore: the
    /// `.chunks` folder is missing.
    #[error("datastore {store}: not a datastore (`.chunks` folder missing)")]
    NotADatastore {
        /// The datastore's name.
        store: String,
    },

    /// A folder in the datastore does not have the name its place requires (a namespace, a
    /// backup group or a snapshot time): listing reports it instead of skipping it silently.
    #[error("`{path}` is not a valid {what}")]
    InvalidEntry {
        /// What its place requires: "namespace", "backup group" or "snapshot time".
        what: &'static str,
        /// Its relative path.
        path: String,
        /// Why the name did not parse.
        #[source]
        source: keepsake_hierarchy::Error,
    },

    /// A destroy removed what it had listed, but something else appeared meanwhile and was left
    /// in place (it was not listed, so it is not the destroy's to remove).
    #[error("`{path}`: {left}")]
    LeftInPlace {
        /// The relative path of the snapshot or group folder.
        path: String,
        /// What was left.
        left: Leftover,
    },

    /// A caller's input was rejected before anything was touched.
    #[error("invalid argument: {0}")]
    InvalidArgument(ArgumentProblem),

    /// The backend failed (I/O, object store, refused path).
    #[error("storage error at `{path}`")]
    Backend {
        /// The relative path of the failed operation.
        path: String,
        /// What the backend reported.
        #[source]
        source: keepsake_backend::Error,
    },

    /// The chunk store on the local filesystem failed.
    #[error("chunk store error at {}", path.display())]
    Io {
        /// The local path.
        path: std::path::PathBuf,
        /// What the system reported.
        #[source]
        source: std::io::Error,
    },

    /// A move or merge was refused before anything changed (owners differ, times overlap, the
    /// target exists and merging was not asked for, ...).
    #[error("cannot move `{from}` to `{to}`: {reason}")]
    MoveRefused {
        /// The relative path of what was to be moved.
        from: String,
        /// The relative path it was to be moved to.
        to: String,
        /// Why it was refused (boxed: it names owners and times).
        reason: Box<MoveRefusal>,
    },

    /// A write under a lease lock was refused because the lease is no longer this holder's (it ran
    /// out and another host took it, or it is about to run out): the fencing check of
    /// multi-host mode ([`keepsake_lock::Locker::check_fence`]).
    #[error("lease {lease} lost: {reason}")]
    LeaseLost {
        /// The lease object's key.
        lease: String,
        /// What the check found.
        reason: keepsake_lock::LostReason,
    },

    /// Multi-host mode could not be set up: the lease settings are invalid, or the object store
    /// does not enforce conditional writes ([`keepsake_lease::Error::Unsupported`], found by
    /// the capability probe at open; single-host mode still works).
    #[cfg(feature = "multi-host")]
    #[error(transparent)]
    Lease(#[from] keepsake_lease::Error),

    /// The intent journal (`.keepsake/intents` in the datastore folder) could not be read or
    /// written.
    #[error("intent journal error at {}", path.display())]
    Journal {
        /// The journal file or folder.
        path: std::path::PathBuf,
        /// What the system reported.
        #[source]
        source: std::io::Error,
    },

    /// PBS's process lock on `<store>/.lock` is held by another process in a way that excludes
    /// what was wanted: a GC runs there (a backup cannot start), or a backup runs there (a GC
    /// cannot start). Nothing was done.
    #[error(
        "datastore {store}: cannot take the {wanted} process lock on `.lock`: {} holds it {held}",
        match pid { Some(pid) => format!("process {pid}"), None => "another process".to_owned() }
    )]
    ProcessLocked {
        /// The datastore.
        store: String,
        /// The lock that was asked for.
        wanted: ProcessLockMode,
        /// The lock the other holder has.
        held: ProcessLockMode,
        /// The holder's pid, when the system reports it (not for open-file-description locks).
        pid: Option<i32>,
    },

    /// [`RemoveVanished::Remove`](crate::RemoveVanished::Remove) found no finished snapshot at
    /// all in the source's synced scope while target snapshots there would be removed: the mark of a
    /// source named by mistake (an empty datastore, the wrong namespace), which would empty the
    /// target's scope. Nothing was removed (what the run copied stays);
    /// [`RemoveVanished::RemoveEvenIfSourceEmpty`](crate::RemoveVanished::RemoveEvenIfSourceEmpty)
    /// removes them.
    #[error(
        "sync from datastore {source_store}: the source holds no snapshot in namespace `{source_ns}` \
         (with the depth and filters given), and removing vanished snapshots would remove every \
         snapshot of the target's scope ({first} first): refused"
    )]
    SyncSourceEmpty {
        /// The source datastore.
        source_store: String,
        /// The source namespace synced from (`""` for the root).
        source_ns: String,
        /// The first target snapshot that would have been removed (relative path).
        first: String,
    },

    /// Garbage collection was refused before anything changed.
    #[error("datastore {store}: garbage collection refused: {refusal}")]
    GcRefused {
        /// The datastore.
        store: String,
        /// Why.
        refusal: GcRefusal,
    },
}

/// The two modes of PBS's process lock on `.lock` ([`Error::ProcessLocked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProcessLockMode {
    /// Held by backup writers (fcntl read lock).
    Shared,
    /// Held by garbage collection (fcntl write lock).
    Exclusive,
}

impl fmt::Display for ProcessLockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProcessLockMode::Shared => "shared",
            ProcessLockMode::Exclusive => "exclusive",
        })
    }
}

/// Why garbage collection refused to run ([`Error::GcRefused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GcRefusal {
    /// The datastore has no local folder (a bare object store): there is neither a `.lock` nor
    /// atimes to mark with.
    NoLocalFolder,
    /// [`DataStore::garbage_collect`](crate::DataStore::garbage_collect) on a datastore in
    /// object storage: a sweep of the cache alone would be wrong, and the store holds its
    /// backend only as a `dyn Backend`; call `DataStore::garbage_collect_s3` with the
    /// `CachedBackend` the store was built with (feature `s3`).
    ObjectStorage,
    /// A run in multi-host mode: a backup on another host can reuse a chunk uploaded before the
    /// cutoff through its own cache, and nothing in the bucket shows that until its index is
    /// uploaded, so no sweep of the bucket can be decided safely from here.
    MultiHost,
    /// Setting a chunk's atime did not change it: marking would not protect anything, as PBS
    /// checks before it starts.
    AtimeUpdatesIgnored {
        /// The chunk used for the check (relative path).
        chunk: String,
    },
    /// The datastore's `.lock` is missing. Every datastore has one from its creation on; one
    /// that is gone may have been removed while a backup of another process holds it, and a new
    /// one would not exclude that backup.
    NoLockFile,
}

impl fmt::Display for GcRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GcRefusal::NoLocalFolder => f.write_str("the datastore has no local folder"),
            GcRefusal::ObjectStorage => f.write_str(
                "the datastore is in object storage: its bucket is swept by the S3 garbage collection",
            ),
            GcRefusal::MultiHost => f.write_str(
                "several hosts share the bucket: a backup on another host could reuse a chunk the sweep removes",
            ),
            GcRefusal::NoLockFile => f.write_str(
                "the datastore's `.lock` is missing: a backup running elsewhere may still hold the removed one (create an empty `.lock` once none runs)",
            ),
            GcRefusal::AtimeUpdatesIgnored { chunk } => write!(
                f,
                "the filesystem ignored an atime update of `{chunk}`: marking would not work"
            ),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What was wrong with a caller's input ([`Error::InvalidArgument`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArgumentProblem {
    /// Encryption was asked for, but the store was built without a key
    /// ([`DataStoreBuilder::key`](crate::DataStoreBuilder::key)).
    NoKey,
    /// The root namespace was named where only a namespace below it fits (the root always
    /// exists).
    RootNamespace,
    /// A namespace depth beyond the deepest there can be.
    DepthTooLarge {
        /// The depth asked for.
        depth: usize,
    },
    /// Neither a lock root nor a locker was given to the builder.
    NoLockRoot,
    /// A backup without a file (PBS refuses empty backups).
    EmptyBackup,
    /// The cached backend given is not the one the store was built with.
    NotThisStoresBackend,
    /// A file of another kind than asked for: not a chunk index (`.fidx`, `.didx`) where an
    /// archive was to be read, not a `.blob` where a blob was.
    NotAnArchive {
        /// The name given.
        name: String,
    },
    /// A verify outcome would be recorded in manifests without the chunk contents having been
    /// read: PBS's verify jobs skip snapshots recorded `ok`, so only a content verify may say so.
    RecordWithoutContent,
    /// An archive name starting with `.`: PBS's garbage collection skips hidden names, so it
    /// would remove the archive's chunks.
    HiddenArchiveName {
        /// The name given.
        name: String,
    },
}

impl fmt::Display for ArgumentProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgumentProblem::NoKey => f.write_str("encryption requested but the store has no key"),
            ArgumentProblem::RootNamespace => f.write_str("the root namespace always exists"),
            ArgumentProblem::DepthTooLarge { depth } => write!(
                f,
                "max depth {depth} is larger than the deepest namespace ({})",
                keepsake_hierarchy::MAX_NAMESPACE_DEPTH
            ),
            ArgumentProblem::NoLockRoot => f.write_str(
                "no lock root: call lock_root() (on a PBS host: keepsake_lock::PBS_LOCK_ROOT)",
            ),
            ArgumentProblem::EmptyBackup => f.write_str("a backup needs at least one file"),
            ArgumentProblem::HiddenArchiveName { name } => write!(
                f,
                "archive name `{name}` starts with '.': PBS's garbage collection would not see it"
            ),
            ArgumentProblem::NotThisStoresBackend => {
                f.write_str("the cached backend given is not this datastore's backend")
            }
            ArgumentProblem::NotAnArchive { name } => {
                write!(
                    f,
                    "`{name}` is not a file of the kind asked for (.fidx/.didx, or .blob)"
                )
            }
            ArgumentProblem::RecordWithoutContent => f.write_str(
                "recording a verify state needs a content verify (chunks read and checked)",
            ),
        }
    }
}

/// What a destroy left in place ([`Error::LeftInPlace`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Leftover {
    /// Files that appeared during the destroy.
    Files {
        /// How many.
        count: usize,
        /// The first one's relative path.
        first: String,
    },
    /// The bucket changed between two listings: what is left stays.
    BucketChanged,
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Leftover::Files { count, first } => write!(
                f,
                "{count} file(s) appeared during the destroy and were left in place (first: {first})"
            ),
            Leftover::BucketChanged => {
                f.write_str("the bucket changed during the destroy; what is left stays")
            }
        }
    }
}

impl Error {
    /// Whether this is [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// Whether this is [`Error::Locked`].
    pub fn is_locked(&self) -> bool {
        matches!(self, Error::Locked { .. })
    }

    /// Maps a backend error on `path`, turning "not found", "exists" and "changed" into this crate's
    /// variants (with `what` naming the thing).
    pub(crate) fn from_backend(
        what: &'static str,
        path: &str,
        source: keepsake_backend::Error,
    ) -> Self {
        use keepsake_backend::Error as B;
        match source {
            B::NotFound { .. } => Error::NotFound {
                what,
                path: path.to_owned(),
            },
            B::AlreadyExists { .. } => Error::AlreadyExists {
                what,
                path: path.to_owned(),
            },
            B::Precondition { .. } => Error::Precondition {
                path: path.to_owned(),
            },
            source => Error::Backend {
                path: path.to_owned(),
                source,
            },
        }
    }

    /// Wraps a backend error without reinterpreting it.
    pub(crate) fn backend(path: &str, source: keepsake_backend::Error) -> Self {
        Error::Backend {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether this is [`Error::LockFailed`].
    pub fn is_lock_failure(&self) -> bool {
        matches!(self, Error::LockFailed { .. })
    }

    /// A lock error: [`Error::Locked`] when someone else holds the lock (or keeps replacing it),
    /// [`Error::LockFailed`] for every other cause.
    pub(crate) fn lock(what: &'static str, path: String, source: keepsake_lock::Error) -> Self {
        if source.is_busy() || matches!(source, keepsake_lock::Error::Replaced { .. }) {
            Error::Locked { what, path, source }
        } else {
            Error::LockFailed { what, path, source }
        }
    }
}

/// A multi-step operation that failed part-way: the error, and what was done before it (the
/// relative paths removed or moved), for [`Error::Interrupted`].
#[derive(Debug)]
pub(crate) struct Partial {
    pub(crate) error: Error,
    pub(crate) done: Vec<String>,
}

impl Partial {
    /// A failure with `done` already done.
    pub(crate) fn new(error: Error, done: Vec<String>) -> Box<Self> {
        Box::new(Self { error, done })
    }

    /// The failure as the operation's error, naming what it did.
    pub(crate) fn interrupted(self, operation: String) -> Error {
        Error::Interrupted {
            operation,
            done: self.done,
            source: Box::new(self.error),
        }
    }
}

/// The result of the steps of a multi-step operation.
pub(crate) type Steps<T> = std::result::Result<T, Box<Partial>>;

/// An error with its causes, in one line (`what: why: cause`), for reports that keep text.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// Why a move or merge was refused (inside [`Error::MoveRefused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MoveRefusal {
    /// The target group (or namespace) exists and merging was not asked for.
    TargetExists,
    /// Source and target are the same place.
    SameLocation,
    /// The two groups have different owners (PBS's first merge invariant).
    OwnerMismatch {
        /// The owner of the group being moved.
        source_owner: keepsake_hierarchy::Authid,
        /// The owner of the group receiving the snapshots.
        target_owner: keepsake_hierarchy::Authid,
    },
    /// A moved snapshot is not newer than every snapshot of the target group (PBS's second merge
    /// invariant).
    TimeOverlap {
        /// The oldest snapshot being moved.
        oldest_moved: keepsake_hierarchy::BackupTime,
        /// The newest snapshot already in the target group.
        newest_target: keepsake_hierarchy::BackupTime,
    },
    /// A namespace cannot be moved into itself or below itself.
    IntoItself,
    /// The root namespace can be neither moved nor replaced.
    RootNamespace,
    /// After the move some namespace would be deeper than PBS allows (7 levels).
    TooDeep {
        /// The depth the deepest moved namespace would have.
        deepest: usize,
    },
}

impl std::fmt::Display for MoveRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MoveRefusal::TargetExists => {
                f.write_str("the target exists and merging was not requested")
            }
            MoveRefusal::SameLocation => f.write_str("source and target are the same"),
            MoveRefusal::OwnerMismatch {
                source_owner,
                target_owner,
            } => write!(
                f,
                "owner mismatch (source: {source_owner}, target: {target_owner})"
            ),
            MoveRefusal::TimeOverlap {
                oldest_moved,
                newest_target,
            } => write!(
                f,
                "snapshot time mismatch: {oldest_moved} is not newer than the target's newest \
                 snapshot {newest_target}"
            ),
            MoveRefusal::IntoItself => f.write_str("a namespace cannot be moved below itself"),
            MoveRefusal::RootNamespace => f.write_str("the root namespace cannot be moved"),
            MoveRefusal::TooDeep { deepest } => write!(
                f,
                "namespaces would be {deepest} levels deep, at most {} are allowed",
                keepsake_hierarchy::MAX_NAMESPACE_DEPTH
            ),
        }
    }
}
