#![doc = include_str!("../README.md")]

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
