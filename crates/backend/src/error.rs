//! The one error type of this crate.
//!
//! Rules this crate keeps:
//! - Every variant names the place it concerns: a [`BackendPath`], an object key or a local path.
//! - Callers match on meaning, not on the place: "nothing there" is always [`Error::NotFound`],
//!   whichever backend said so, and a lost compare-and-swap is always [`Error::Precondition`].
//! - The cause is kept as `source`, never flattened into the message.

use std::path::PathBuf;

use crate::identity::CacheIdentity;
use crate::path::BackendPath;

/// What a backend operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// There is no file (or, for folder operations, no folder) at this path.
    #[error("nothing at `{path}`")]
    NotFound {
        /// The path that was looked up.
        path: BackendPath,
    },

    /// A create-only write or a rename found its target already taken.
    #[error("`{path}` exists already")]
    AlreadyExists {
        /// The path that was taken.
        path: BackendPath,
    },

    /// A compare-and-swap write lost: the file is not at the version the caller read.
    #[error("`{path}` changed since it was read (version mismatch)")]
    Precondition {
        /// The file whose version did not match.
        path: BackendPath,
    },

    /// A path was refused: it is not a valid relative path, or it would leave the datastore
    /// (a symbolic link on the way, or a key that does not fit the object store).
    #[error("refused path `{path}`: {reason}")]
    RefusedPath {
        /// The path as given (or as found), possibly invalid.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The place cannot do what was asked (for example compare-and-swap on an S3 endpoint
    /// configured without conditional writes).
    #[error("`{path}`: {what} is not supported by this backend")]
    Unsupported {
        /// The path of the refused operation.
        path: BackendPath,
        /// The operation that is not available.
        what: &'static str,
    },

    /// Removing a tree left entries behind that could not be removed (kept entries do not count).
    #[error("removing `{path}` left {failed} entries behind that could not be removed")]
    Incomplete {
        /// The tree that was being removed.
        path: BackendPath,
        /// How many entries failed.
        failed: usize,
        /// The first failure.
        #[source]
        source: Box<Error>,
    },

    /// Someone else holds what this call needs exclusively, longer than it may wait (a cache
    /// refresh and the writers of its cache exclude each other).
    #[error("{}: {what}", path.display())]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// What is in the way.
        what: &'static str,
    },

    /// The object store failed.
    #[cfg(feature = "s3")]
    #[error("object store failed on `{key}`")]
    Backend {
        /// The object key (or key prefix) of the failed request.
        key: String,
        /// What the object store reported.
        #[source]
        source: Box<object_store::Error>,
    },

    /// A cache folder belongs to another bucket datastore than the one it was opened with: its
    /// marker ([`CACHE_MARKER`](crate::CACHE_MARKER)) names another endpoint, bucket or store.
    #[error("cache folder {} belongs to {found}, not to {expected}", cache.display())]
    CacheMismatch {
        /// The cache folder.
        cache: PathBuf,
        /// The bucket datastore it was opened with (boxed: keeps every `Result` of this crate
        /// small).
        expected: Box<CacheIdentity>,
        /// The bucket datastore its marker names.
        found: Box<CacheIdentity>,
    },

    /// A file to be read whole is larger than the reader allows (see
    /// [`Backend::read_data_max`](crate::Backend::read_data_max) and
    /// [`MAX_WHOLE_FILE_READ`](crate::MAX_WHOLE_FILE_READ)), or too large for memory: refused
    /// before it is read where its size is known first.
    #[error("`{path}` is too large to read whole: {size} bytes, at most {limit} allowed")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size, or the bytes seen before the read stopped.
        size: u64,
        /// The most the read allowed.
        limit: u64,
    },

    /// The local filesystem failed.
    #[error("filesystem error at {}", path.display())]
    Io {
        /// The local path of the failed call.
        path: PathBuf,
        /// What the system reported.
        #[source]
        source: std::io::Error,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether this error says that nothing is at the path.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    pub(crate) fn refused(path: impl Into<String>, reason: &'static str) -> Self {
        Error::RefusedPath {
            path: path.into(),
            reason,
        }
    }

    #[cfg(feature = "s3")]
    pub(crate) fn backend(key: impl Into<String>, source: object_store::Error) -> Self {
        Error::Backend {
            key: key.into(),
            source: Box::new(source),
        }
    }
}
