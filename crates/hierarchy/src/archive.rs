//! Well-known file names inside group and snapshot folders, and archive kinds by extension.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The manifest of a snapshot; its presence marks the snapshot as finished.
pub const MANIFEST_BLOB_NAME: &str = "index.json.blob";
/// The optional client log, uploaded after the backup finished; never listed in the manifest.
pub const CLIENT_LOG_BLOB_NAME: &str = "client.log.blob";
/// The optional RSA-encrypted key of an encrypted backup.
pub const ENCRYPTED_KEY_BLOB_NAME: &str = "rsa-encrypted.key.blob";
/// The pxar catalog of a file-level backup.
pub const CATALOG_NAME: &str = "catalog.pcat1.didx";
/// The empty marker file of a protected snapshot.
pub const PROTECTED_MARKER_FILENAME: &str = ".protected";
/// The owner file of a group: the auth id followed by `\n`.
pub const GROUP_OWNER_FILE_NAME: &str = "owner";
/// The notes file of a group: raw text.
pub const GROUP_NOTES_FILE_NAME: &str = "notes";
/// The empty marker object of a namespace on object storage.
pub const NAMESPACE_MARKER_FILENAME: &str = ".namespace";
/// The file name of a snapshot's manifest lock.
pub const MANIFEST_LOCK_NAME: &str = ".index.json.lck";

/// Longest file name inside a group or snapshot folder (Linux `NAME_MAX`).
pub const MAX_FILE_NAME_LENGTH: usize = 255;

/// Checks that `name` can be a file directly inside a group or snapshot folder: not empty, not `.` or
/// `..`, no `/`, no NUL, at most [`MAX_FILE_NAME_LENGTH`] bytes. It says nothing about the extension.
///
/// ```
/// use keepsake_hierarchy::check_file_name;
/// assert!(check_file_name("drive-scsi0.img.fidx").is_ok());
/// assert!(check_file_name("../owner").is_err());
/// ```
pub fn check_file_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name == "." || name == ".." {
        Some("must not be '.' or '..'")
    } else if name.contains('/') {
        Some("must not contain '/'")
    } else if name.contains('\0') {
        Some("must not contain NUL")
    } else if name.len() > MAX_FILE_NAME_LENGTH {
        Some("longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidFileName {
            input: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The kind of a backup file, from its extension.
///
/// ```
/// use keepsake_hierarchy::ArchiveKind;
/// assert_eq!(ArchiveKind::from_file_name("root.pxar.didx")?, ArchiveKind::DynamicIndex);
/// assert_eq!(ArchiveKind::from_file_name("drive-scsi0.img.fidx")?, ArchiveKind::FixedIndex);
/// assert_eq!(ArchiveKind::from_file_name("index.json.blob")?, ArchiveKind::Blob);
/// assert!(ArchiveKind::from_file_name("notes.txt").is_err());
/// # Ok::<(), keepsake_hierarchy::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ArchiveKind {
    /// `.fidx`: a fixed-size chunk index (disk images).
    FixedIndex,
    /// `.didx`: a dynamic-size chunk index (pxar archives, catalogs).
    DynamicIndex,
    /// `.blob`: a single DataBlob (configs, logs, the manifest).
    Blob,
}

impl ArchiveKind {
    /// The kind of a file by its extension (`fidx`, `didx`, `blob`).
    pub fn from_file_name(name: &str) -> Result<Self> {
        match name.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => ext.parse(),
            _ => Err(Error::UnknownArchiveKind {
                input: name.to_owned(),
            }),
        }
        .map_err(|_| Error::UnknownArchiveKind {
            input: name.to_owned(),
        })
    }

    /// Whether `name` is a backup file as PBS counts them (`^.*\.([fd]idx|blob)$`).
    pub fn is_backup_file(name: &str) -> bool {
        name.ends_with(".fidx") || name.ends_with(".didx") || name.ends_with(".blob")
    }

    /// The extension without the dot.
    pub const fn extension(self) -> &'static str {
        match self {
            ArchiveKind::FixedIndex => "fidx",
            ArchiveKind::DynamicIndex => "didx",
            ArchiveKind::Blob => "blob",
        }
    }
}

impl fmt::Display for ArchiveKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

impl FromStr for ArchiveKind {
    type Err = Error;
    /// Parses an extension (`fidx`, `didx`, `blob`).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fidx" => Ok(ArchiveKind::FixedIndex),
            "didx" => Ok(ArchiveKind::DynamicIndex),
            "blob" => Ok(ArchiveKind::Blob),
            _ => Err(Error::UnknownArchiveKind {
                input: s.to_owned(),
            }),
        }
    }
}

crate::serde_via_str!(ArchiveKind);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            ArchiveKind::from_file_name("x.blob").unwrap(),
            ArchiveKind::Blob
        );
        for bad in [
            "",
            ".blob",
            "blob",
            "x.tmp_fidx",
            "x.fidx.tmp",
            "x.BLOB",
            "x.",
        ] {
            assert!(ArchiveKind::from_file_name(bad).is_err(), "{bad:?}");
        }
        assert!(ArchiveKind::is_backup_file("a.didx"));
        assert!(!ArchiveKind::is_backup_file("a.tmp_didx"));
        assert!(!ArchiveKind::is_backup_file(".protected"));
    }

    #[test]
    fn file_names() {
        assert!(check_file_name(&"x".repeat(255)).is_ok());
        assert!(check_file_name(&"x".repeat(256)).is_err());
        assert!(check_file_name(".protected").is_ok());
    }
}
