#![doc = include_str!("../README.md")]

mod chunks;
mod error;
mod fsck;
mod gc;
#[cfg(feature = "s3")]
mod gc_s3;
mod group;
mod hold;
mod info;
pub mod iter;
pub mod journal;
mod moves;
mod namespace;
pub mod pbs_host;
mod process_lock;
pub mod prune;
mod prune_apply;
mod read;
mod read_only;
mod recover;
#[cfg(feature = "s3")]
mod refresh;
mod snapshot;
mod store;
mod sync;
mod verify;
mod writer;

pub use chunks::{Encryption, InsertedChunk, chunk_path};
pub use error::{
    ArgumentProblem, Error, GcRefusal, Leftover, MoveRefusal, ProcessLockMode, Result,
};
pub use fsck::{FsckOptions, FsckReport};
pub use gc::{
    DEFAULT_ATIME_CUTOFF_SECS, GC_STATUS_FILE_NAME, GcMode, GcOptions, GcPhase, GcProgress,
    GcReport, GcStatus, PhaseHook, ProgressHook, StoreUsage,
};
#[cfg(feature = "s3")]
pub use gc_s3::{BucketGc, S3_DELETE_BATCH};
pub use group::{DestroyStats, ExistingOwner, Group, Unfinished};
pub use info::{BackupInfo, SortOrder};
pub use journal::{Intent, Phase};
/// The lease locks of multi-host mode ([`DataStoreBuilder::multi_host`]): the crate
/// `keepsake-lease`, re-exported so that its version always matches this crate's.
#[cfg(feature = "multi-host")]
pub use keepsake_lease as lease;
pub use moves::{Merge, MoveReport};
pub use namespace::{GroupsInside, NamespaceRemoval};
pub use pbs_host::{
    ActiveOperation, MaintenanceMode, MaintenanceRefusal, MaintenanceType, Operation, PbsDatastore,
    PbsHost, PbsHostError,
};
pub use prune_apply::{
    GroupPrune, NamespacePrune, PruneAction, PruneRun, PruneScope, PrunedSnapshot,
};
pub use read::{ArchiveReader, ChunkCheck, ChunkDefect, ChunkReader, DEFAULT_CHUNK_CACHE_BYTES};
pub use recover::{
    InterruptedIntent, PendingIntent, RecoveredIntent, RecoveryOutcome, RecoveryReport,
};
#[cfg(feature = "s3")]
pub use refresh::{CacheCheck, CacheDifference, CacheDifferenceKind, CacheRefresh, CacheReport};
pub use snapshot::Snapshot;
pub use store::{
    Access, CHUNK_DIR_NAME, CHUNK_PREFIX_DIRS, DataStore, DataStoreBuilder, LOCK_FILE_NAME,
};
pub use sync::{
    DEFAULT_CHUNK_WORKERS, DEFAULT_GROUP_WORKERS, RemoveVanished, SyncOptions, SyncProgressHook,
    SyncProtection, SyncReport,
};
pub use verify::{
    ChunkProgress, ChunkVerification, ContentStats, Problem, Reverify, SnapshotOutcome,
    SnapshotVerification, VerifyOptions, VerifyProgress, VerifyReport, VerifyScope,
};
pub use writer::{BackupWriter, DynamicArchive, FixedArchive};
