//! Locks held for a whole destructive operation, taken before it changes anything.
//!
//! A destroy or move of a group or namespace first takes every lock it needs: the group locks,
//! and for every snapshot it will touch the snapshot lock and the manifest lock. A lock that is
//! busy (or cannot be taken at all) refuses the whole operation, and since nothing was written
//! yet, nothing changed. Only then is the intent written and the first file touched.

use keepsake_lock::{LockGuard, MANIFEST_LOCK_TIMEOUT};

use crate::error::Result;
use crate::group::Group;
use crate::snapshot::Snapshot;

/// A snapshot with its lock and its manifest lock held exclusively.
#[derive(Debug)]
pub(crate) struct HeldSnapshot {
    pub(crate) snapshot: Snapshot,
    lock: LockGuard,
    manifest: LockGuard,
}

impl HeldSnapshot {
    /// Takes the snapshot lock (no wait, as PBS) and the manifest lock (PBS's 5 s).
    pub(crate) fn take(snapshot: Snapshot) -> Result<Self> {
        let lock = snapshot.lock()?;
        let manifest = snapshot.lock_manifest(MANIFEST_LOCK_TIMEOUT)?;
        Ok(Self {
            snapshot,
            lock,
            manifest,
        })
    }

    /// The snapshot lock (for the multi-host fencing check).
    pub(crate) fn guard(&self) -> &LockGuard {
        &self.lock
    }

    /// Releases both locks and removes their lock files: the snapshot is gone from this place
    /// (destroyed or moved away).
    pub(crate) fn release_gone(self) {
        drop_lock_file(self.manifest);
        drop_lock_file(self.lock);
    }
}

/// Which snapshots of a group an operation takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Those this store lists (on S3 its cache): what the operator saw. Destroys take these, so
    /// that a snapshot another host or cache added, which nobody here saw, is never destroyed by
    /// a "forget the group" (it stays, and so does its group).
    Listed,
    /// Those the authority lists (on S3 the bucket), and this host's folders without files yet:
    /// moves take these, so that a group never splits between two namespaces.
    Authority,
}

/// A group with its lock held exclusively, and some or all of its snapshots held.
#[derive(Debug)]
pub(crate) struct HeldGroup {
    pub(crate) group: Group,
    pub(crate) lock: LockGuard,
    /// The held snapshots, oldest first.
    pub(crate) snapshots: Vec<HeldSnapshot>,
}

impl HeldGroup {
    /// Takes the group lock (no wait), then the snapshots `seen` names (see [`Seen`]), listed
    /// under the group lock, so no backup can add one meanwhile.
    pub(crate) fn take_all(group: &Group, seen: Seen) -> Result<Self> {
        let lock = group.lock()?;
        let snapshots: Vec<Snapshot> = match seen {
            Seen::Listed => {
                let mut listed: Vec<Snapshot> = group.iter_snapshots()?.collect::<Result<_>>()?;
                listed.sort_by_key(|s| s.dir().time());
                listed
            }
            Seen::Authority => {
                if !group.exists()? && !crate::moves::group_exists_authoritative(group)? {
                    return Err(crate::error::Error::NotFound {
                        what: "group",
                        path: group.relative_path(),
                    });
                }
                crate::moves::snapshot_times_authoritative(group)?
                    .into_iter()
                    .map(|time| {
                        let dir = keepsake_hierarchy::BackupDir::new(group.name().clone(), time);
                        group.store().snapshot(group.ns(), &dir)
                    })
                    .collect()
            }
        };
        Self::hold(group, lock, snapshots)
    }

    /// Takes the group lock and the locks of the given snapshots that still exist (recovery:
    /// exactly what an intent announced).
    pub(crate) fn take_some(group: &Group, snapshots: &[Snapshot]) -> Result<Self> {
        let lock = group.lock()?;
        let mut present = Vec::new();
        for snapshot in snapshots {
            if snapshot.exists()? {
                present.push(snapshot.clone());
            }
        }
        present.sort_by_key(|s| s.dir().time());
        Self::hold(group, lock, present)
    }

    fn hold(group: &Group, lock: LockGuard, snapshots: Vec<Snapshot>) -> Result<Self> {
        let snapshots = snapshots
            .into_iter()
            .map(HeldSnapshot::take)
            .collect::<Result<_>>()?;
        Ok(Self {
            group: group.clone(),
            lock,
            snapshots,
        })
    }
}

/// Releases a lock whose object is gone from its place, removing its (now stale) lock file.
pub(crate) fn drop_lock_file(guard: LockGuard) {
    if let Ok(exclusive) = guard.into_exclusive() {
        // Best effort, as in PBS: a stale lock file is harmless.
        let _ = exclusive.remove();
    }
}
