//! The one error type of this crate.
//!
//! Lock failures reach callers as `keepsake_lock::Error` (through the `Locker` trait); this type
//! is for the rest: settings, the capability probe, listing leases.

use std::fmt;
use std::time::Duration;

/// What a lease operation outside the [`Locker`](keepsake_lock::Locker) trait can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Lease settings that cannot work: the lease must last at least 300 ms and more than twice
    /// the clock-skew bound.
    #[error(
        "lease settings: the lease ({lease:?}) must be at least 300 ms and more than twice the clock skew ({clock_skew:?})"
    )]
    InvalidSettings {
        /// The lease length given.
        lease: Duration,
        /// The clock-skew bound given.
        clock_skew: Duration,
    },

    /// The endpoint does not enforce a condition several hosts need (found by the probe).
    #[error("datastore {store}: multi-host mode refused: {missing}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Unsupported {
        /// The datastore (bucket prefix).
        store: String,
        /// The condition the endpoint did not enforce.
        missing: MissingCondition,
        /// The endpoint's error, when it refused the conditional write outright.
        detail: Option<String>,
    },

    /// The object store failed.
    #[error("lease objects at `{key}`")]
    Backend {
        /// The key (or key prefix) concerned.
        key: String,
        /// What the backend reported.
        #[source]
        source: keepsake_backend::Error,
    },

    /// A lease object could not be read.
    #[error(transparent)]
    Lock(#[from] keepsake_lock::Error),

    /// The system gave no random numbers (lease holder ids and probe names need them).
    #[error("datastore {store}: no random numbers")]
    NoRandomness {
        /// The datastore.
        store: String,
        /// The cause.
        #[source]
        source: getrandom::Error,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What [`probe_conditional_writes`](crate::probe_conditional_writes) found missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingCondition {
    /// A create-only put (`If-None-Match: *`) replaced an existing object.
    CreateOnly,
    /// A compare-and-swap put (`If-Match`) with an outdated ETag replaced the object.
    CompareAndSwap,
}

impl fmt::Display for MissingCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MissingCondition::CreateOnly => {
                "create-only writes (If-None-Match: *) are not enforced"
            }
            MissingCondition::CompareAndSwap => {
                "compare-and-swap writes (If-Match) are not enforced"
            }
        })
    }
}
