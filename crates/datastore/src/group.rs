//! Backup groups: owner, notes, snapshots, lock, destroy.

use std::fmt;
use std::time::Duration;

use keepsake_backend::{WriteMode, is_temporary_name};
use keepsake_hierarchy::{
    Authid, BackupDir, BackupGroup, BackupNamespace, BackupTime, GROUP_NOTES_FILE_NAME,
    GROUP_OWNER_FILE_NAME, GroupFilter, SnapshotPath, apply_filters,
};
use keepsake_lock::{LockGuard, LockMode, LockTarget};

use crate::error::{Error, Partial, Result, Steps};
use crate::hold::{HeldGroup, Seen, drop_lock_file};
use crate::info::BackupInfo;
use crate::iter::Snapshots;
use crate::journal::Intent;
use crate::store::{DataStore, owned_path, path};

/// The largest owner file read: an auth id and its newline are far shorter (a hostile sparse
/// file claims any size; it is refused by its size, before it is read).
const MAX_OWNER_FILE_SIZE: u64 = 4096;

/// What destroying groups and snapshots did (PBS's `BackupGroupDeleteStats`, plus the names).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DestroyStats {
    /// Group folders removed.
    pub removed_groups: u64,
    /// Snapshots removed.
    pub removed_snapshots: u64,
    /// Protected snapshots left in place.
    pub protected_snapshots: u64,
    /// The snapshots removed, with their namespaces.
    pub removed: Vec<SnapshotPath>,
}

impl DestroyStats {
    /// Whether nothing was left behind (no protected snapshot).
    pub fn all_removed(&self) -> bool {
        self.protected_snapshots == 0
    }

    /// Adds another count to this one.
    pub fn add(&mut self, other: &DestroyStats) {
        self.removed_groups += other.removed_groups;
        self.removed_snapshots += other.removed_snapshots;
        self.protected_snapshots += other.protected_snapshots;
        self.removed.extend(other.removed.iter().cloned());
    }
}

/// A handle on a backup group in a datastore (`vm/100` in a namespace). Cheap to clone; the group
/// need not exist.
///
/// This is the datastore-side counterpart of [`keepsake_hierarchy::BackupGroup`], which is only the
/// name; it carries the store so that it can read and change the group.
#[derive(Clone)]
pub struct Group {
    store: DataStore,
    ns: BackupNamespace,
    group: BackupGroup,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Group({}:{})", self.store.name(), self.relative_path())
    }
}

/// Whether [`Group::last_backup`] counts unfinished snapshots (no manifest yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unfinished {
    /// Finished snapshots only.
    Skip,
    /// Unfinished snapshots count too.
    Include,
}

/// What [`Group::set_owner`] does when the group has an owner already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExistingOwner {
    /// Fails with [`Error::AlreadyExists`]; the owner stays.
    Refuse,
    /// Replaces it.
    Replace,
}

impl Group {
    pub(crate) fn new(store: DataStore, ns: BackupNamespace, group: BackupGroup) -> Self {
        Self { store, ns, group }
    }

    /// The datastore.
    pub fn store(&self) -> &DataStore {
        &self.store
    }

    /// The namespace holding the group.
    pub fn ns(&self) -> &BackupNamespace {
        &self.ns
    }

    /// The group's name.
    pub fn name(&self) -> &BackupGroup {
        &self.group
    }

    /// The group folder relative to the datastore root (`ns/a/vm/100`).
    pub fn relative_path(&self) -> String {
        self.group.relative_path(&self.ns)
    }

    fn file(&self, name: &str) -> Result<keepsake_backend::BackendPath> {
        owned_path(self.group.file_path(&self.ns, name)?)
    }

    /// Whether the group folder exists (snapshots or not).
    pub fn exists(&self) -> Result<bool> {
        let p = self.relative_path();
        self.store
            .backend()
            .exists(&path(&p)?)
            .map_err(|e| Error::backend(&p, e))
    }

    /// Whether the group passes PBS's include/exclude filters.
    pub fn matches(&self, filters: &[GroupFilter]) -> bool {
        apply_filters(&self.group, filters)
    }

    /// The snapshots, streamed in listing order.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the group does not exist.
    pub fn iter_snapshots(&self) -> Result<Snapshots<'_>> {
        Snapshots::new(&self.store, &self.ns, &self.group)
    }

    /// Every snapshot with its files and protection, in listing order (sort with
    /// [`BackupInfo::sort`]).
    pub fn list_backups(&self) -> Result<Vec<BackupInfo>> {
        self.iter_snapshots()?
            .map(|s| s.and_then(|s| s.info()))
            .collect()
    }

    /// Every snapshot as the authority has it (on S3 the bucket: snapshots another host or a
    /// PBS server made or removed since this cache saw the group), with its files and
    /// protection; plus the snapshot folders of this host that hold no file yet (a backup that
    /// just started). What destructive decisions (prune) are made from. Oldest first.
    ///
    /// # Errors
    /// [`Error::NotFound`] if neither the authority nor this host has the group.
    pub fn list_backups_authoritative(&self) -> Result<Vec<BackupInfo>> {
        let dir = self.relative_path();
        let folder = path(&dir)?;
        let files = match self.store.backend().list_files_authoritative(&folder) {
            Ok(files) => files,
            Err(keepsake_backend::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(Error::backend(&dir, e)),
        };
        let mut found: std::collections::BTreeMap<BackupTime, BackupInfo> =
            std::collections::BTreeMap::new();
        for file in &files {
            let Some(rest) = file.strip_prefix(&folder) else {
                continue;
            };
            let mut parts = rest.components();
            let (Some(first), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let Ok(time) = first.parse::<BackupTime>() else {
                continue;
            };
            let info = found.entry(time).or_insert_with(|| BackupInfo {
                ns: self.ns.clone(),
                snapshot: BackupDir::new(self.group.clone(), time),
                files: Vec::new(),
                protected: false,
            });
            if name == keepsake_hierarchy::PROTECTED_MARKER_FILENAME {
                info.protected = true;
            } else if keepsake_hierarchy::ArchiveKind::is_backup_file(name) {
                info.files.push(name.to_owned());
            }
        }
        let local = match self.iter_snapshots() {
            Ok(iter) => iter.filter_map(|s| s.ok()).collect::<Vec<_>>(),
            Err(Error::NotFound { .. }) if !files.is_empty() => Vec::new(),
            Err(e) => return Err(e),
        };
        for snapshot in local {
            found
                .entry(snapshot.dir().time())
                .or_insert_with(|| BackupInfo {
                    ns: self.ns.clone(),
                    snapshot: snapshot.dir().clone(),
                    files: Vec::new(),
                    protected: false,
                });
        }
        Ok(found.into_values().collect())
    }

    /// The newest snapshot (among finished ones only, with [`Unfinished::Skip`]), or `None`.
    pub fn last_backup(&self, unfinished: Unfinished) -> Result<Option<BackupInfo>> {
        Ok(self
            .list_backups()?
            .into_iter()
            .filter(|b| unfinished == Unfinished::Include || b.is_finished())
            .max_by_key(|b| b.snapshot.time()))
    }

    /// The time of the newest finished snapshot, or `None` (also when the group does not exist).
    pub fn last_successful_backup(&self) -> Result<Option<BackupTime>> {
        let snapshots = match self.iter_snapshots() {
            Ok(s) => s,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut newest = None;
        for snapshot in snapshots {
            let snapshot = snapshot?;
            if snapshot.is_finished()? {
                newest = newest.max(Some(snapshot.dir().time()));
            }
        }
        Ok(newest)
    }

    /// The group's owner (first line of the `owner` file, trailing whitespace trimmed).
    ///
    /// # Errors
    /// [`Error::NotFound`] without an owner file; [`Error::InvalidOwner`] if it does not parse.
    pub fn owner(&self) -> Result<Authid> {
        let file = self.file(GROUP_OWNER_FILE_NAME)?;
        let data = self
            .store
            .backend()
            .read_data_max(&file, MAX_OWNER_FILE_SIZE)
            .map_err(|e| Error::from_backend("owner", file.as_str(), e))?;
        let text = String::from_utf8_lossy(&data);
        let first = text.lines().next().unwrap_or("").trim_end();
        first.parse().map_err(|source| Error::InvalidOwner {
            group: self.relative_path(),
            source,
        })
    }

    /// Sets the owner; an existing owner is replaced only with [`ExistingOwner::Replace`]. Written
    /// as PBS does, `<authid>\n`, atomically (on S3: the bucket first, then the cache).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] if an owner is set and `existing` is [`ExistingOwner::Refuse`].
    pub fn set_owner(&self, owner: &Authid, existing: ExistingOwner) -> Result<()> {
        let file = self.file(GROUP_OWNER_FILE_NAME)?;
        let mode = match existing {
            ExistingOwner::Replace => self.conditional_mode(&file, WriteMode::Replace)?,
            ExistingOwner::Refuse => WriteMode::CreateOnly,
        };
        self.store
            .backend()
            .write(&file, format!("{owner}\n").as_bytes(), mode)
            .map_err(|e| Error::from_backend("owner", file.as_str(), e))?;
        Ok(())
    }

    /// In multi-host mode, a replacing write becomes conditional on the version of `file` read
    /// now from the bucket (create-only if there is none), so a change another host makes
    /// between that read and the write is reported as [`Error::Precondition`], never overwritten
    /// silently. Otherwise `mode` as given.
    fn conditional_mode(
        &self,
        file: &keepsake_backend::BackendPath,
        mode: WriteMode,
    ) -> Result<WriteMode> {
        if !self.store.is_multi_host() {
            return Ok(mode);
        }
        // The authority (the bucket), not the cache: another host may have changed the file
        // since this host cached it.
        match self.store.backend().read_authoritative(file) {
            Ok(current) => Ok(WriteMode::Update(current.version)),
            Err(keepsake_backend::Error::NotFound { .. }) => Ok(WriteMode::CreateOnly),
            Err(e) => Err(Error::backend(file.as_str(), e)),
        }
    }

    /// The group notes, raw; `None` when there is no notes file.
    pub fn notes(&self) -> Result<Option<String>> {
        let file = self.file(GROUP_NOTES_FILE_NAME)?;
        match self.store.backend().read(&file) {
            Ok(c) => Ok(Some(String::from_utf8_lossy(&c.data).into_owned())),
            Err(keepsake_backend::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::backend(file.as_str(), e)),
        }
    }

    /// Replaces the group notes (raw, no newline added), under the group lock, as PBS does.
    ///
    /// # Errors
    /// [`Error::Locked`] while a backup or another change holds the group; [`Error::NotFound`] if
    /// the group does not exist.
    pub fn set_notes(&self, notes: &str) -> Result<()> {
        if !self.exists()? {
            return Err(Error::NotFound {
                what: "group",
                path: self.relative_path(),
            });
        }
        let guard = self.lock()?;
        // Checked again under the lock, in the authority: a group another host destroyed must
        // not get a notes file that makes it exist again.
        if !crate::moves::group_exists_authoritative(self)? {
            return Err(Error::NotFound {
                what: "group",
                path: self.relative_path(),
            });
        }
        let file = self.file(GROUP_NOTES_FILE_NAME)?;
        let mode = self.conditional_mode(&file, WriteMode::Replace)?;
        self.store.check_fence(&guard)?;
        self.store
            .backend()
            .write(&file, notes.as_bytes(), mode)
            .map_err(|e| Error::from_backend("notes", file.as_str(), e))?;
        Ok(())
    }

    /// Takes the group lock exclusively, without waiting (PBS's group lock timeout is 0 s).
    ///
    /// # Errors
    /// [`Error::Locked`], naming the holders, when a backup or another change holds it.
    pub fn lock(&self) -> Result<LockGuard> {
        self.lock_with_timeout(Duration::ZERO)
    }

    /// Takes the group lock exclusively, waiting up to `timeout`.
    pub fn lock_with_timeout(&self, timeout: Duration) -> Result<LockGuard> {
        self.store.lock(
            &LockTarget::group(&self.ns, &self.group),
            LockMode::Exclusive,
            timeout,
        )
    }

    /// Makes the group if it is missing and sets `owner` on it, under the group lock; if it exists,
    /// reads its owner and changes nothing. Returns the owner and the held lock (PBS's
    /// `create_locked_backup_group`).
    ///
    /// # Errors
    /// [`Error::NotFound`] if the namespace does not exist; [`Error::Locked`] if the group is locked.
    pub fn create_locked(&self, owner: &Authid) -> Result<(Authid, LockGuard)> {
        if !self.store.namespace_exists(&self.ns)? {
            return Err(Error::NotFound {
                what: "namespace",
                path: self.ns.to_string(),
            });
        }
        let dir = self.relative_path();
        let existed = self.exists()?;
        self.store
            .backend()
            .create_dir_all(&path(&dir)?)
            .map_err(|e| Error::backend(&dir, e))?;
        let guard = self.lock()?;
        match self.set_owner(owner, ExistingOwner::Refuse) {
            Ok(()) => {}
            Err(Error::AlreadyExists { .. }) => {}
            Err(e) => {
                if !existed {
                    // A group that we just made and could not give an owner must not stay.
                    let _ = self.store.remove_dir_if_empty(&dir);
                }
                return Err(e);
            }
        }
        Ok((self.owner()?, guard))
    }

    /// Destroys the group: every unprotected snapshot, then, if no snapshot is left, the notes,
    /// the owner, the folder and the group's lock file. Protected snapshots stay with their
    /// group's owner and notes.
    ///
    /// The snapshots destroyed are those this store lists (on S3 its cache: what the operator
    /// saw); one that another host or cache added, which nobody here saw, stays, and so does
    /// the group (its folder goes only when the authority holds nothing but owner and notes).
    /// Every lock is taken first (the group, and each snapshot's lock and manifest lock): a busy
    /// lock refuses the whole destroy and nothing changes. Then the snapshots to remove are
    /// announced in the intent journal, so that a destroy interrupted later is completed by
    /// [`DataStore::recover`](crate::DataStore::recover) for exactly those snapshots, never for a
    /// snapshot added since.
    ///
    /// # Errors
    /// [`Error::Locked`] or [`Error::LockFailed`] before anything changed;
    /// [`Error::Interrupted`] (naming what was removed already) when a later step fails;
    /// [`Error::RecoveryPending`] when an earlier interrupted operation cannot be completed now.
    pub fn destroy(&self) -> Result<DestroyStats> {
        // What a failed operation left half done is finished first (docs/JOURNAL.md).
        self.store.recover_before_journaled()?;
        let held = HeldGroup::take_all(self, Seen::Listed)?;
        let mut announced = Vec::new();
        let mut stats = DestroyStats::default();
        for s in &held.snapshots {
            if s.snapshot.is_protected_authoritative()? {
                stats.protected_snapshots += 1;
            } else {
                announced.push(s.snapshot.dir().clone());
            }
        }
        let intent = crate::journal::begin(
            &self.store,
            Intent::DestroyGroup {
                ns: self.ns.clone(),
                group: self.group.clone(),
                snapshots: announced.clone(),
            },
        )?;
        let done = destroy_held(held, &announced, &mut stats)
            .map_err(|p| p.interrupted(intent.intent().to_string()))?;
        debug_assert_eq!(done.len() as u64, stats.removed_snapshots);
        intent.finish()?;
        Ok(stats)
    }

    /// Removes notes, owner and the group folder if no snapshot is left in it (asked of the
    /// authority: on S3 the bucket), then the lock file (under the held lock). Returns whether
    /// the group is gone.
    pub(crate) fn remove_folder(&self, guard: LockGuard) -> Result<bool> {
        let dir = self.relative_path();
        let folder = path(&dir)?;
        let backend = self.store.backend();
        let files = match backend.list_files_authoritative(&folder) {
            Ok(files) => files,
            Err(keepsake_backend::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(Error::backend(&dir, e)),
        };
        let group_files = [GROUP_NOTES_FILE_NAME, GROUP_OWNER_FILE_NAME];
        // Owner, notes, and temporary files of their atomic writes (written under the group
        // lock, which we hold: their writer is gone) go with the group. Anything else (a
        // snapshot file, a stray file) keeps it.
        let (own, other): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| {
            f.parent().as_ref() == Some(&folder)
                && f.file_name()
                    .is_some_and(|n| group_files.contains(&n) || is_temporary_name(n))
        });
        if !other.is_empty() || self.has_snapshot_folder()? {
            return Ok(false);
        }
        self.store.check_fence(&guard)?;
        backend
            .remove_files(&own)
            .map_err(|e| Error::backend(&dir, e))?;
        if !backend
            .remove_folder_if_empty(&folder)
            .map_err(|e| Error::backend(&dir, e))?
        {
            return Ok(false);
        }
        drop_lock_file(guard);
        Ok(true)
    }

    /// Whether a snapshot folder (finished or not) is in the group folder here (an unfinished
    /// snapshot of a running backup may have no file yet).
    fn has_snapshot_folder(&self) -> Result<bool> {
        let dir = self.relative_path();
        match self.store.backend().list(&path(&dir)?) {
            Ok(listing) => Ok(listing
                .filter_map(|e| e.ok())
                .any(|e| e.kind == keepsake_backend::EntryKind::Dir)),
            Err(keepsake_backend::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::backend(&dir, e)),
        }
    }
}

/// Destroys the announced snapshots of a held group (protected ones are counted and stay), then
/// the group folder when nothing is left in it. On failure, returns the error with the snapshots
/// removed before it.
pub(crate) fn destroy_held(
    held: HeldGroup,
    announced: &[BackupDir],
    stats: &mut DestroyStats,
) -> Steps<Vec<String>> {
    let mut done = Vec::new();
    let HeldGroup {
        group,
        lock,
        snapshots,
    } = held;
    for s in snapshots {
        if !announced.contains(s.snapshot.dir()) {
            continue;
        }
        match s.snapshot.remove_now(Some(&s)) {
            Ok(()) => {
                done.push(s.snapshot.relative_path());
                stats.removed_snapshots += 1;
                stats.removed.push(SnapshotPath {
                    ns: s.snapshot.ns().clone(),
                    snapshot: s.snapshot.dir().clone(),
                });
                s.release_gone();
            }
            // Protected since it was announced (by a writer that ignores the locks): it stays.
            Err(Error::Protected { .. }) => stats.protected_snapshots += 1,
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(Partial::new(e, done)),
        }
    }
    match group.remove_folder(lock) {
        Ok(true) => stats.removed_groups += 1,
        Ok(false) => {}
        Err(e) => return Err(Partial::new(e, done)),
    }
    Ok(done)
}
