//! [`BackupInfo`]: the light listing value of a snapshot.

use keepsake_hierarchy::{BackupDir, BackupNamespace, MANIFEST_BLOB_NAME};

/// A snapshot as a listing sees it: its name, its backup files and whether it is protected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackupInfo {
    /// The namespace holding the snapshot's group.
    pub ns: BackupNamespace,
    /// The snapshot.
    pub snapshot: BackupDir,
    /// Its backup files (`*.fidx`, `*.didx`, `*.blob`, the manifest included), in listing order.
    pub files: Vec<String>,
    /// Whether the `.protected` marker exists.
    pub protected: bool,
}

/// The order of [`BackupInfo::sort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortOrder {
    /// By snapshot time, oldest first.
    OldestFirst,
    /// By snapshot time, newest first.
    NewestFirst,
}

impl BackupInfo {
    /// Whether the backup finished (the manifest is among the files).
    pub fn is_finished(&self) -> bool {
        self.files.iter().any(|f| f == MANIFEST_BLOB_NAME)
    }

    /// Sorts by snapshot time.
    pub fn sort(list: &mut [BackupInfo], order: SortOrder) {
        match order {
            SortOrder::OldestFirst => list.sort_unstable_by_key(|b| b.snapshot.time()),
            SortOrder::NewestFirst => {
                list.sort_unstable_by_key(|b| std::cmp::Reverse(b.snapshot.time()))
            }
        }
    }

    /// The snapshot's folder relative to the datastore root.
    pub fn relative_path(&self) -> String {
        self.snapshot.relative_path(&self.ns)
    }
}
