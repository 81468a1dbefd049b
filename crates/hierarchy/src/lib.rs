//! Names, validation and relative paths of a Proxmox Backup Server (PBS) datastore. No I/O.
//!
//! A PBS datastore is a tree:
//!
//! ```text
//! <root>/[ns/<a>/ns/<b>/…]/<vm|ct|host>/<id>/<YYYY-MM-DDTHH:MM:SSZ>/<files>
//!         namespace         group (type/id)   snapshot time
//! ```
//!
//! This crate gives each part a type that can only hold a valid value — [`BackupNamespace`],
//! [`BackupType`], [`BackupId`], [`BackupGroup`], [`BackupTime`], [`BackupDir`], [`Authid`] — plus the
//! relative paths built from them ([`GroupPath`], [`SnapshotPath`]), the well-known file names,
//! [`ArchiveKind`] and [`GroupFilter`]. Every type parses with [`FromStr`](std::str::FromStr) and
//! prints with [`Display`](std::fmt::Display); the two round-trip, and serde goes through the same
//! text. Every refusal is an [`Error`] that names the input. Because values are always valid, a path
//! built from them never contains `..`, an empty component, a leading `/` or a NUL: it cannot leave
//! the datastore.
//!
//! The grammar and limits are PBS's (safe-id names, 7-deep namespaces of at most 256 bytes, RFC 3339
//! UTC times in the years 0 to 9999), with two deliberate differences written down on the types:
//! impossible dates such as `2024-02-31` are refused instead of normalised, and backup ids are
//! limited to 255 bytes (a folder name cannot be longer).
//!
//! # Example
//!
//! ```
//! use keepsake_hierarchy::{BackupDir, BackupNamespace, SnapshotPath, MANIFEST_BLOB_NAME};
//!
//! let p: SnapshotPath = "ns/prod/ns/site-a/vm/100/2024-06-05T19:06:40Z".parse()?;
//! assert_eq!(p.ns, BackupNamespace::new("prod/site-a")?);
//! assert_eq!(p.snapshot.group().to_string(), "vm/100");
//! assert_eq!(
//!     p.snapshot.file_path(&p.ns, MANIFEST_BLOB_NAME)?,
//!     "ns/prod/ns/site-a/vm/100/2024-06-05T19:06:40Z/index.json.blob"
//! );
//!
//! // Hostile input is a typed error, never a path.
//! assert!("ns/../vm/100/2024-06-05T19:06:40Z".parse::<SnapshotPath>().is_err());
//! assert!(BackupNamespace::new("a/b/c/d/e/f/g/h").is_err());
//! # Ok::<(), keepsake_hierarchy::Error>(())
//! ```

mod archive;
mod authid;
mod error;
mod filter;
mod group;
mod namespace;
mod safe_id;
mod snapshot;
mod time;

pub use archive::{
    ArchiveKind, CATALOG_NAME, CLIENT_LOG_BLOB_NAME, ENCRYPTED_KEY_BLOB_NAME,
    GROUP_NOTES_FILE_NAME, GROUP_OWNER_FILE_NAME, MANIFEST_BLOB_NAME, MANIFEST_LOCK_NAME,
    MAX_FILE_NAME_LENGTH, NAMESPACE_MARKER_FILENAME, PROTECTED_MARKER_FILENAME, check_file_name,
};
pub use authid::{Authid, MAX_AUTHID_LENGTH};
pub use error::{Error, Result};
pub use filter::{FilterKind, GroupFilter, apply_filters};
pub use group::{BackupGroup, BackupId, BackupType, MAX_BACKUP_ID_LENGTH};
pub use namespace::{
    BackupNamespace, MAX_NAMESPACE_DEPTH, MAX_NAMESPACE_LENGTH, NAMESPACE_DIR_NAME,
};
pub use safe_id::check_datastore_name;
pub use snapshot::{BackupDir, GroupPath, SnapshotPath};
pub use time::BackupTime;

/// Implements `Serialize`/`Deserialize` through `Display`/`FromStr`, so serde and text agree.
macro_rules! serde_via_str {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        write!(f, "a {} in its text form", stringify!($ty))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(Visitor)
            }
        }
    };
}
pub(crate) use serde_via_str;
