//! The one error type of this crate.
//!
//! Rules: every parse error names the input it refused (so a message is useful without context) and a
//! short reason; callers match on the variant to learn *what* was invalid. Messages are keepsake's own.

/// Why a name, path, time or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A namespace component is not a safe id (`[A-Za-z0-9_][A-Za-z0-9._-]*`) or contains a `/`.
    #[error("invalid namespace component {component:?}: {reason}")]
    InvalidNamespaceComponent {
        /// The refused component.
        component: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Adding a component would make the namespace deeper than [`MAX_NAMESPACE_DEPTH`](crate::MAX_NAMESPACE_DEPTH).
    #[error("namespace {namespace:?} is too deep: more than {max} components", max = crate::MAX_NAMESPACE_DEPTH)]
    NamespaceTooDeep {
        /// The namespace (name form) that was being built.
        namespace: String,
    },
    /// The joined name would exceed [`MAX_NAMESPACE_LENGTH`](crate::MAX_NAMESPACE_LENGTH).
    #[error("namespace {namespace:?} is too long: at most {max} bytes", max = crate::MAX_NAMESPACE_LENGTH)]
    NamespaceTooLong {
        /// The namespace (name form) that was being built.
        namespace: String,
    },
    /// A namespace path (`ns/a/ns/b`) is malformed.
    #[error("invalid namespace path {path:?}: {reason}")]
    InvalidNamespacePath {
        /// The refused path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Not one of `vm`, `ct`, `host`.
    #[error("invalid backup type {input:?}: expected vm, ct or host")]
    InvalidBackupType {
        /// The refused input.
        input: String,
    },
    /// A backup id that does not match `[A-Za-z0-9_][A-Za-z0-9._-]*` or is too long.
    #[error("invalid backup id {input:?}: {reason}")]
    InvalidBackupId {
        /// The refused input.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A group string that is not `<type>/<id>`.
    #[error("invalid backup group {input:?}: {reason}")]
    InvalidGroup {
        /// The refused input.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A snapshot time string that is not `YYYY-MM-DDTHH:MM:SSZ` or not a real UTC time.
    #[error("invalid backup time {input:?}: {reason}")]
    InvalidTime {
        /// The refused input.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Epoch seconds outside the years 0..=9999.
    #[error("backup time {epoch} is out of range (years 0 to 9999)")]
    TimeOutOfRange {
        /// The refused epoch.
        epoch: i64,
    },
    /// A snapshot string or a relative group/snapshot path that does not have the expected shape.
    #[error("invalid snapshot path {input:?}: {reason}")]
    InvalidSnapshotPath {
        /// The refused input.
        input: String,
        /// What is wrong with it (including the error of the refused part).
        reason: String,
    },
    /// An auth id that is not `user@realm` or `user@realm!token`.
    #[error("invalid auth id {input:?}: {reason}")]
    InvalidAuthid {
        /// The refused input.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file name that cannot live inside a snapshot folder.
    #[error("invalid file name {input:?}: {reason}")]
    InvalidFileName {
        /// The refused input.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file name whose extension is not `fidx`, `didx` or `blob`.
    #[error("unknown archive kind of {input:?}: expected a .fidx, .didx or .blob file")]
    UnknownArchiveKind {
        /// The refused file name.
        input: String,
    },
    /// A datastore name that is not a safe id of 3 to 32 bytes.
    #[error("invalid datastore name {input:?}: {reason}")]
    InvalidDatastoreName {
        /// The refused input.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A group filter that does not parse.
    #[error("invalid group filter {input:?}: {reason}")]
    InvalidGroupFilter {
        /// The refused input.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
