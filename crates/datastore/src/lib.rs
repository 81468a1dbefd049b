//! The object model of a PBS-compatible backup datastore: [`DataStore`], namespaces, [`Group`],
//! [`Snapshot`], [`BackupInfo`], streaming iterators, owners, notes, protection, manifest updates,
//! destroy, and retention ([`prune`]).
//!
//! Every read and write goes through a [`keepsake_backend::Backend`] (a local datastore folder, or
//! an S3 bucket with a local cache), every lock through a [`keepsake_lock::Locker`] (PBS 4 lock
//! files by default), and blobs and manifests are encoded with `keepsake-manifest`, byte for byte as
//! PBS writes them. The API is blocking, like `std::fs`, and callable from any thread, including
//! inside a tokio runtime.
//!
//! ```
//! use keepsake_datastore::DataStore;
//! use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace};
//!
//! let dir = tempfile::tempdir()?;
//! let store = DataStore::builder("store1", dir.path().join("store1"))
//!     .lock_root(dir.path().join("locks"))
//!     .chunk_prefix_dirs(false)
//!     .create()?;
//! let ns = BackupNamespace::root();
//! let group = store.group(&ns, &"vm/100".parse::<BackupGroup>()?);
//! let owner: Authid = "root@pam".parse()?;
//! let (found, _lock) = group.create_locked(&owner)?;
//! assert_eq!(found, owner);
//! assert_eq!(group.owner()?, owner);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Names: [`Group`] and [`Snapshot`] are handles that carry the store; the plain names are
//! [`keepsake_hierarchy::BackupGroup`] and [`keepsake_hierarchy::BackupDir`].

mod error;
mod fsck;
mod group;
mod hold;
mod info;
pub mod iter;
pub mod journal;
mod moves;
mod namespace;
pub mod pbs_host;
pub mod prune;
mod prune_apply;
mod read_only;
mod recover;
#[cfg(feature = "s3")]
mod refresh;
mod snapshot;
mod store;
mod verify;
mod writer;

pub use error::{Error, MoveRefusal, Result};
pub use fsck::{FsckOptions, FsckReport};
pub use group::{DestroyStats, Group};
pub use info::BackupInfo;
pub use journal::{Intent, Phase};
/// The lease locks of multi-host mode ([`DataStoreBuilder::multi_host`]): the crate
/// `keepsake-lease`, re-exported so that its version always matches this crate's.
#[cfg(feature = "multi-host")]
pub use keepsake_lease as lease;
pub use moves::MoveReport;
pub use namespace::NamespaceRemoval;
pub use pbs_host::{
    ActiveOperation, MaintenanceMode, MaintenanceRefusal, MaintenanceType, Operation, PbsDatastore,
    PbsHost, PbsHostError,
};
pub use prune_apply::{GroupPrune, NamespacePrune, PruneAction, PruneScope, PrunedSnapshot};
pub use recover::{
    InterruptedIntent, PendingIntent, RecoveredIntent, RecoveryOutcome, RecoveryReport,
};
#[cfg(feature = "s3")]
pub use refresh::{CacheCheck, CacheDifference, CacheDifferenceKind, CacheRefresh, CacheReport};
pub use snapshot::Snapshot;
pub use store::{
    Access, CHUNK_DIR_NAME, CHUNK_PREFIX_DIRS, DataStore, DataStoreBuilder, LOCK_FILE_NAME,
};
pub use verify::{
    Problem, SnapshotOutcome, SnapshotVerification, VerifyOptions, VerifyProgress, VerifyReport,
    VerifyScope,
};
pub use writer::{BackupWriter, InsertedChunk, chunk_path};
