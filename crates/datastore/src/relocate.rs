//! Moving snapshots, groups and namespaces, and merging groups (PBS's move/merge, section 3.8 of
//! the compatibility notes).
//!
//! Every move keeps PBS's merge invariants: when the target group exists, the owners must be equal
//! and every moved snapshot must be strictly newer than every snapshot already there; a target that
//! exists is only merged into when the caller asks for it. Checks run under the locks, before
//! anything changes, and a refusal is [`Error::MoveRefused`] with a [`MoveRefusal`].
//!
//! On the local filesystem a move is one `rename` per unit (a snapshot folder, or a whole group
//! folder when the target group does not exist). On backends without atomic renames (S3 behind
//! the local cache) every file is copied (bucket first, then the cache), then the sources are
//! removed. Each unit is recorded in the intent journal first (see [`crate::journal`]), so a move
//! interrupted at any point is completed by the next [`DataStore::recover`].

use std::fmt;

use keepsake_backend::{Backend, BackendPath, EntryKind, KeepFilter, WriteMode};
use keepsake_hierarchy::{
    Authid, BackupNamespace, BackupTime, GROUP_NOTES_FILE_NAME, MAX_NAMESPACE_DEPTH,
};
use keepsake_lock::{LockGuard, MANIFEST_LOCK_TIMEOUT};

use crate::error::{Error, Result};
use crate::group::Group;
use crate::journal::{self, Intent, IntentGuard, Phase, RecoveryOutcome};
use crate::snapshot::Snapshot;
use crate::store::{DataStore, path};

/// Why a move or merge was refused (inside [`Error::MoveRefused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MoveRefusal {
    /// The target group (or namespace) exists and merging was not asked for.
    TargetExists,
    /// Source and target are the same place.
    SameLocation,
    /// The two groups have different owners (PBS's first merge invariant).
    OwnerMismatch {
        /// The owner of the group being moved.
        source_owner: Authid,
        /// The owner of the group receiving the snapshots.
        target_owner: Authid,
    },
    /// A moved snapshot is not newer than every snapshot of the target group (PBS's second merge
    /// invariant).
    TimeOverlap {
        /// The oldest snapshot being moved.
        oldest_moved: BackupTime,
        /// The newest snapshot already in the target group.
        newest_target: BackupTime,
    },
    /// A namespace cannot be moved into itself or below itself.
    IntoItself,
    /// The root namespace can be neither moved nor replaced.
    RootNamespace,
    /// After the move some namespace would be deeper than PBS allows (7 levels).
    TooDeep {
        /// The depth the deepest moved namespace would have.
        deepest: usize,
    },
}

impl fmt::Display for MoveRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveRefusal::TargetExists => {
                f.write_str("the target exists and merging was not requested")
            }
            MoveRefusal::SameLocation => f.write_str("source and target are the same"),
            MoveRefusal::OwnerMismatch {
                source_owner,
                target_owner,
            } => write!(
                f,
                "owner mismatch (source: {source_owner}, target: {target_owner})"
            ),
            MoveRefusal::TimeOverlap {
                oldest_moved,
                newest_target,
            } => write!(
                f,
                "snapshot time mismatch: {oldest_moved} is not newer than the target's newest \
                 snapshot {newest_target}"
            ),
            MoveRefusal::IntoItself => f.write_str("a namespace cannot be moved below itself"),
            MoveRefusal::RootNamespace => f.write_str("the root namespace cannot be moved"),
            MoveRefusal::TooDeep { deepest } => write!(
                f,
                "namespaces would be {deepest} levels deep, at most {MAX_NAMESPACE_DEPTH} are allowed"
            ),
        }
    }
}

/// What a move did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MoveReport {
    /// Snapshots now in their new place.
    pub snapshots: u64,
    /// Groups moved whole (the target did not exist).
    pub groups_moved: u64,
    /// Groups merged into an existing target group (and removed from the source).
    pub groups_merged: u64,
    /// Group notes moved to a target group that had none.
    pub notes_moved: u64,
    /// Namespaces created at the target.
    pub namespaces_created: u64,
    /// Source namespaces removed after the move.
    pub namespaces_removed: u64,
}

impl MoveReport {
    fn add(&mut self, other: &MoveReport) {
        self.snapshots += other.snapshots;
        self.groups_moved += other.groups_moved;
        self.groups_merged += other.groups_merged;
        self.notes_moved += other.notes_moved;
        self.namespaces_created += other.namespaces_created;
        self.namespaces_removed += other.namespaces_removed;
    }
}

fn refused(from: String, to: String, reason: MoveRefusal) -> Error {
    Error::MoveRefused {
        from,
        to,
        reason: Box::new(reason),
    }
}

/// Releases a lock whose object has moved away, removing its (now stale) lock file.
fn drop_lock_file(guard: LockGuard) {
    if let Ok(exclusive) = guard.into_exclusive() {
        // Best effort, as in PBS: a stale lock file is harmless.
        let _ = exclusive.remove();
    }
}

fn require_namespace(store: &DataStore, ns: &BackupNamespace) -> Result<()> {
    if store.namespace_exists(ns)? {
        Ok(())
    } else {
        Err(Error::NotFound {
            what: "namespace",
            path: ns.to_string(),
        })
    }
}

/// The phase a transfer starts in on this store's backend.
fn first_phase(store: &DataStore) -> Phase {
    if store.backend().capabilities().atomic_rename {
        Phase::Rename
    } else {
        Phase::Copy
    }
}

/// Snapshot times of a group, oldest first.
fn snapshot_times(group: &Group) -> Result<Vec<BackupTime>> {
    let mut times = Vec::new();
    for snapshot in group.iter_snapshots()? {
        times.push(snapshot?.dir().time());
    }
    times.sort_unstable();
    Ok(times)
}

/// Snapshot times of a group, oldest first; none for a missing group.
fn snapshot_times_if_any(group: &Group) -> Result<Vec<BackupTime>> {
    match snapshot_times(group) {
        Err(Error::NotFound { .. }) => Ok(Vec::new()),
        other => other,
    }
}

/// PBS's merge invariants for moving snapshots (the oldest of them `oldest_moved`) of a group owned
/// by `source_owner` into the existing group `target`.
fn merge_refusal(
    source_owner: &Authid,
    target: &Group,
    oldest_moved: Option<BackupTime>,
) -> Result<Option<MoveRefusal>> {
    let target_owner = target.owner()?;
    if *source_owner != target_owner {
        return Ok(Some(MoveRefusal::OwnerMismatch {
            source_owner: source_owner.clone(),
            target_owner,
        }));
    }
    if let Some(oldest) = oldest_moved {
        if let Some(&newest) = snapshot_times(target)?.last() {
            if newest >= oldest {
                return Ok(Some(MoveRefusal::TimeOverlap {
                    oldest_moved: oldest,
                    newest_target: newest,
                }));
            }
        }
    }
    Ok(None)
}

/// Makes the target group's folder and gives it `owner` unless it has one.
fn ensure_group(store: &DataStore, group: &Group, owner: Option<&Authid>) -> Result<()> {
    let dir = group.relative_path();
    store
        .backend()
        .create_dir_all(&path(&dir)?)
        .map_err(|e| Error::backend(&dir, e))?;
    if let Some(owner) = owner {
        match group.set_owner(owner, false) {
            Ok(()) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves the folder `from` to `to` (which must not exist): one rename where the backend has atomic
/// renames, else copy and delete with the phase recorded in `intent`.
fn transfer(store: &DataStore, from: &str, to: &str, intent: &mut IntentGuard) -> Result<()> {
    let (source, target) = (path(from)?, path(to)?);
    let backend = store.backend();
    if backend.capabilities().atomic_rename {
        return backend
            .rename(&source, &target)
            .map_err(|e| Error::from_backend("folder", from, e));
    }
    resume_transfer(backend, &source, &target, Phase::Copy, intent)
}

/// Copy-and-delete from `phase` on: `Copy` copies every file (again), `DeleteSource` only removes
/// what is left of the source.
fn resume_transfer(
    backend: &dyn Backend,
    source: &BackendPath,
    target: &BackendPath,
    phase: Phase,
    intent: &mut IntentGuard,
) -> Result<()> {
    if phase != Phase::DeleteSource {
        intent.set_phase(Phase::Copy)?;
        if let Err(e) = copy_tree(backend, source, target) {
            // Take the partial copy away at once (the source is whole), so that no half-moved
            // snapshot stays visible. If that fails too, the copy's error is the one to report,
            // and the journal still holds the intent, which recovery completes.
            let _ = backend.remove_tree(target, &KeepFilter::nothing());
            return Err(e);
        }
        intent.set_phase(Phase::DeleteSource)?;
    }
    match backend.remove_tree(source, &KeepFilter::nothing()) {
        Ok(_) | Err(keepsake_backend::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(Error::backend(source.as_str(), e)),
    }
}

/// A copy that lost its source: the copy phase never finished, and the source was removed or
/// moved since (by another operation, after this one failed). What the copy left at `target` is
/// checked snapshot by snapshot: a whole snapshot stays (someone else's, or a copy that had
/// finished), a partial one is removed (without force: a protected or busy one stays and is
/// reported by verify). Returns whether anything was removed.
fn drop_partial_copies(snapshots: &[Snapshot]) -> Result<bool> {
    let options = crate::VerifyOptions::default().check_chunks(false);
    let mut removed = false;
    for snapshot in snapshots {
        let whole = match snapshot.verify(&options) {
            Ok(report) => report.outcome == crate::SnapshotOutcome::Ok,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        if !whole {
            match snapshot.destroy_without_group_cleanup(false) {
                Ok(()) => removed = true,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// Removes temporary files of interrupted atomic writes (an owner or notes file being written when
/// the process died) from a group folder, so that they neither stay forever nor keep an emptied
/// group folder from being removed. Only called by recovery, under the group lock, when the writer
/// is known to be dead.
fn remove_temp_files(store: &DataStore, group: &Group) -> Result<()> {
    let dir = group.relative_path();
    let folder = path(&dir)?;
    let names: Vec<String> = match store.backend().list(&folder) {
        Ok(listing) => listing
            .filter_map(|e| e.ok())
            .filter(|e| e.kind == EntryKind::File && is_temp_file(&e.name))
            .map(|e| e.name)
            .collect(),
        Err(keepsake_backend::Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(Error::backend(&dir, e)),
    };
    for name in names {
        let file = folder.join(&name).map_err(|e| Error::backend(&dir, e))?;
        match store.backend().remove_file(&file) {
            Ok(()) | Err(keepsake_backend::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::backend(file.as_str(), e)),
        }
    }
    Ok(())
}

/// Whether a name is a temporary file of an interrupted atomic write (never copied).
fn is_temp_file(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp_")
}

fn copy_tree(backend: &dyn Backend, source: &BackendPath, target: &BackendPath) -> Result<()> {
    let entries: Vec<_> = backend
        .list(source)
        .map_err(|e| Error::from_backend("folder", source.as_str(), e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::backend(source.as_str(), e))?;
    for entry in entries {
        let from = source
            .join(&entry.name)
            .map_err(|e| Error::backend(source.as_str(), e))?;
        let to = target
            .join(&entry.name)
            .map_err(|e| Error::backend(target.as_str(), e))?;
        match entry.kind {
            EntryKind::Dir => copy_tree(backend, &from, &to)?,
            EntryKind::File if !is_temp_file(&entry.name) => {
                let contents = backend
                    .read(&from)
                    .map_err(|e| Error::from_backend("file", from.as_str(), e))?;
                backend
                    .write(&to, &contents.data, WriteMode::Replace)
                    .map_err(|e| Error::backend(to.as_str(), e))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// PBS's notes rule for a merge: notes only in the source move to the target; when both have
/// notes the target's stay (the source's go with the source group). Returns whether notes moved.
fn move_notes(store: &DataStore, source: &Group, target: &Group) -> Result<bool> {
    let Some(notes) = source.notes()? else {
        return Ok(false);
    };
    if target.notes()?.is_some() {
        return Ok(false);
    }
    // Written directly: the caller holds both group locks, which `set_notes` would take again.
    let file = path(
        &target
            .name()
            .file_path(target.ns(), GROUP_NOTES_FILE_NAME)?,
    )?;
    store
        .backend()
        .write(&file, notes.as_bytes(), WriteMode::Replace)
        .map_err(|e| Error::backend(file.as_str(), e))?;
    let old = path(
        &source
            .name()
            .file_path(source.ns(), GROUP_NOTES_FILE_NAME)?,
    )?;
    match store.backend().remove_file(&old) {
        Ok(()) | Err(keepsake_backend::Error::NotFound { .. }) => Ok(true),
        Err(e) => Err(Error::backend(old.as_str(), e)),
    }
}

impl Snapshot {
    /// Moves this snapshot into the group of the same name in namespace `target_ns`, with its
    /// files and its protection (a protected snapshot moves like any other).
    ///
    /// A missing target group is created with this group's owner (its notes stay with the source
    /// group). An existing one is only used with `merge`, and only if it has the same owner and
    /// only older snapshots. Takes the source group, target group and snapshot locks exclusively
    /// (no waiting) and the manifest lock; the source group stays, even when it is left empty.
    ///
    /// The snapshot keeps its group name because its manifest names it (and a signature covers
    /// that name).
    ///
    /// ```
    /// use keepsake_datastore::DataStore;
    /// use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DataStore::builder("store1", dir.path().join("store1"))
    ///     .lock_root(dir.path().join("locks"))
    ///     .chunk_prefix_dirs(false)
    ///     .create()?;
    /// let root = BackupNamespace::root();
    /// let owner: Authid = "root@pam".parse()?;
    /// let group = store.group(&root, &"vm/100".parse::<BackupGroup>()?);
    /// let mut backup = group.start_backup(&owner, BackupTime::from_epoch(1_717_600_000)?)?;
    /// backup.add_blob("qemu-server.conf.blob", b"memory: 2048\n", false)?;
    /// let snapshot = backup.finish()?;
    ///
    /// let archive = store.create_namespace(&"archive".parse()?)?;
    /// let moved = snapshot.move_to(&archive, false)?;
    /// assert!(moved.is_finished()? && !snapshot.exists()?);
    /// assert_eq!(moved.group().owner()?, owner);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::MoveRefused`] (same namespace, target exists without `merge`, owner mismatch, time
    /// overlap); [`Error::NotFound`] for a missing snapshot or namespace; [`Error::AlreadyExists`]
    /// if the target snapshot exists; [`Error::Locked`]. A failure after the move started leaves an
    /// intent that the next [`DataStore::recover`] completes.
    pub fn move_to(&self, target_ns: &BackupNamespace, merge: bool) -> Result<Snapshot> {
        let store = self.store().clone();
        // What a failed operation left half done is finished first, so that this move does not
        // act on it (docs/JOURNAL.md).
        store.recover()?;
        let target = store.snapshot(target_ns, self.dir());
        let refuse = |reason| refused(self.relative_path(), target.relative_path(), reason);
        if target_ns == self.ns() {
            return Err(refuse(MoveRefusal::SameLocation));
        }
        require_namespace(&store, target_ns)?;
        let source_group = self.group();
        let target_group = target.group();
        let source_lock = source_group.lock()?;
        let target_lock = target_group.lock()?;
        let snapshot_lock = self.lock()?;
        let manifest_lock = self.lock_manifest(MANIFEST_LOCK_TIMEOUT)?;
        if !self.exists()? {
            return Err(Error::NotFound {
                what: "snapshot",
                path: self.relative_path(),
            });
        }
        if target.exists()? {
            return Err(Error::AlreadyExists {
                what: "snapshot",
                path: target.relative_path(),
            });
        }
        let owner = source_group.owner()?;
        let created_group = !target_group.exists()?;
        if !created_group {
            if !merge {
                return Err(refuse(MoveRefusal::TargetExists));
            }
            if let Some(reason) = merge_refusal(&owner, &target_group, Some(self.dir().time()))? {
                return Err(refuse(reason));
            }
        }
        let mut intent = journal::begin(
            &store,
            Intent::MoveSnapshot {
                from: self.ns().clone(),
                to: target_ns.clone(),
                snapshot: self.dir().clone(),
                phase: first_phase(&store),
                created_group,
            },
        )?;
        ensure_group(&store, &target_group, Some(&owner))?;
        transfer(
            &store,
            &self.relative_path(),
            &target.relative_path(),
            &mut intent,
        )?;
        drop_lock_file(manifest_lock);
        drop_lock_file(snapshot_lock);
        intent.finish()?;
        drop(target_lock);
        drop(source_lock);
        Ok(target)
    }
}

impl Group {
    /// Moves this group to namespace `target_ns` (same type and id there), with owner, notes and
    /// every snapshot, protected ones included.
    ///
    /// If no group of that name exists there, the group moves whole. Otherwise, only with `merge`:
    /// the owners must be equal and every snapshot of this group must be newer than every snapshot
    /// of the target; the snapshots then move one by one, oldest first, the notes follow PBS's rule
    /// (moved if the target has none, else the target's stay) and this group is removed. Takes both
    /// group locks and every snapshot lock exclusively (no waiting).
    ///
    /// ```
    /// use keepsake_datastore::{DataStore, Error, MoveRefusal};
    /// use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DataStore::builder("store1", dir.path().join("store1"))
    ///     .lock_root(dir.path().join("locks"))
    ///     .chunk_prefix_dirs(false)
    ///     .create()?;
    /// let owner: Authid = "root@pam".parse()?;
    /// let name: BackupGroup = "vm/100".parse()?;
    /// let prod = store.create_namespace(&"prod".parse()?)?;
    /// for (ns, time) in [(BackupNamespace::root(), 2_000), (prod.clone(), 1_000)] {
    ///     let mut backup = store.group(&ns, &name).start_backup(&owner, BackupTime::from_epoch(time)?)?;
    ///     backup.add_blob("qemu-server.conf.blob", b"memory: 2048\n", false)?;
    ///     backup.finish()?;
    /// }
    /// let source = store.group(&BackupNamespace::root(), &name);
    /// // Without `merge`, an existing target is refused.
    /// assert!(matches!(
    ///     source.move_to(&prod, false),
    ///     Err(Error::MoveRefused { reason, .. }) if *reason == MoveRefusal::TargetExists
    /// ));
    /// let report = source.move_to(&prod, true)?;
    /// assert_eq!((report.snapshots, report.groups_merged), (1, 1));
    /// assert!(!source.exists()?);
    /// assert_eq!(store.group(&prod, &name).list_backups()?.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::MoveRefused`], [`Error::NotFound`], [`Error::Locked`]; see
    /// [`Snapshot::move_to`].
    pub fn move_to(&self, target_ns: &BackupNamespace, merge: bool) -> Result<MoveReport> {
        self.store().recover()?;
        move_group(self, target_ns, merge, false)
    }
}

fn move_group(
    source: &Group,
    target_ns: &BackupNamespace,
    merge: bool,
    resume: bool,
) -> Result<MoveReport> {
    let store = source.store().clone();
    let target = store.group(target_ns, source.name());
    let refuse = |reason| refused(source.relative_path(), target.relative_path(), reason);
    if target_ns == source.ns() {
        return Err(refuse(MoveRefusal::SameLocation));
    }
    require_namespace(&store, target_ns)?;
    let source_lock = source.lock()?;
    let target_lock = target.lock()?;
    if !source.exists()? {
        if resume {
            return Ok(MoveReport::default());
        }
        return Err(Error::NotFound {
            what: "group",
            path: source.relative_path(),
        });
    }
    let mut snapshots: Vec<Snapshot> = source.iter_snapshots()?.collect::<Result<_>>()?;
    snapshots.sort_by_key(|s| s.dir().time());
    let snapshot_locks: Vec<LockGuard> = snapshots
        .iter()
        .map(Snapshot::lock)
        .collect::<Result<_>>()?;
    // `update_manifest` takes only the manifest lock: without these, an update landing between the
    // copy and the removal of the source (object stores) would be lost with the source.
    let manifest_locks: Vec<LockGuard> = snapshots
        .iter()
        .map(|s| s.lock_manifest(MANIFEST_LOCK_TIMEOUT))
        .collect::<Result<_>>()?;
    let target_exists = target.exists()?;
    if target_exists {
        if !merge {
            return Err(refuse(MoveRefusal::TargetExists));
        }
        // An empty source (a merge interrupted after its last snapshot) has nothing to check.
        if let Some(oldest) = snapshots.first() {
            let owner = source.owner()?;
            if let Some(reason) = merge_refusal(&owner, &target, Some(oldest.dir().time()))? {
                return Err(refuse(reason));
            }
        }
    }
    let mut intent = journal::begin(
        &store,
        Intent::MoveGroup {
            from: source.ns().clone(),
            to: target_ns.clone(),
            group: source.name().clone(),
            merge,
            phase: if target_exists {
                Phase::Rename
            } else {
                first_phase(&store)
            },
        },
    )?;
    let mut report = MoveReport::default();
    if !target_exists {
        transfer(
            &store,
            &source.relative_path(),
            &target.relative_path(),
            &mut intent,
        )?;
        report.groups_moved = 1;
        report.snapshots = snapshots.len() as u64;
        manifest_locks.into_iter().for_each(drop_lock_file);
        snapshot_locks.into_iter().for_each(drop_lock_file);
        drop_lock_file(source_lock);
    } else {
        for ((snapshot, lock), manifest_lock) in
            snapshots.iter().zip(snapshot_locks).zip(manifest_locks)
        {
            let moved = store.snapshot(target_ns, snapshot.dir());
            if moved.exists()? {
                return Err(Error::AlreadyExists {
                    what: "snapshot",
                    path: moved.relative_path(),
                });
            }
            let mut step = journal::begin(
                &store,
                Intent::MoveSnapshot {
                    from: source.ns().clone(),
                    to: target_ns.clone(),
                    snapshot: snapshot.dir().clone(),
                    phase: first_phase(&store),
                    created_group: false,
                },
            )?;
            transfer(
                &store,
                &snapshot.relative_path(),
                &moved.relative_path(),
                &mut step,
            )?;
            drop_lock_file(manifest_lock);
            drop_lock_file(lock);
            step.finish()?;
            report.snapshots += 1;
        }
        if move_notes(&store, source, &target)? {
            report.notes_moved += 1;
        }
        source.remove_folder(source_lock)?;
        report.groups_merged = 1;
    }
    intent.finish()?;
    drop(target_lock);
    Ok(report)
}

impl DataStore {
    /// Moves namespace `from`, with every namespace, group and snapshot below it, to the new name
    /// `to` (for example `a/b` to `c/b` puts it under `c`). The parent of `to` must exist.
    ///
    /// If `to` (or a namespace below it) exists, its groups receive the moved groups only with
    /// `merge`, under the rules of [`Group::move_to`]; every group is checked before anything moves,
    /// so a refusal changes nothing. Groups then move one by one (each under its locks and its own
    /// journal entry) and the emptied source namespaces are removed. The whole move is journaled:
    /// an interruption is completed by the next [`DataStore::recover`].
    ///
    /// ```
    /// use keepsake_datastore::DataStore;
    /// use keepsake_hierarchy::{Authid, BackupGroup, BackupTime};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DataStore::builder("store1", dir.path().join("store1"))
    ///     .lock_root(dir.path().join("locks"))
    ///     .chunk_prefix_dirs(false)
    ///     .create()?;
    /// let site = store.create_namespace(&"site".parse()?)?;
    /// store.create_namespace(&"site/rack1".parse()?)?;
    /// store.create_namespace(&"archive".parse()?)?;
    /// let group = store.group(&"site/rack1".parse()?, &"ct/7".parse::<BackupGroup>()?);
    /// let mut backup = group.start_backup(&"root@pam".parse::<Authid>()?, BackupTime::from_epoch(1_000)?)?;
    /// backup.add_blob("pct.conf.blob", b"arch: amd64\n", false)?;
    /// backup.finish()?;
    ///
    /// let report = store.move_namespace(&site, &"archive/site".parse()?, false)?;
    /// assert_eq!(report.snapshots, 1);
    /// assert!(!store.namespace_exists(&site)?);
    /// assert!(store.group(&"archive/site/rack1".parse()?, group.name()).exists()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::MoveRefused`] (root, into itself, too deep, target exists without `merge`, a group
    /// merge refused); [`Error::NotFound`]; [`Error::Locked`] for a group or snapshot in use (groups
    /// moved before stay moved; the journal completes the rest later).
    pub fn move_namespace(
        &self,
        from: &BackupNamespace,
        to: &BackupNamespace,
        merge: bool,
    ) -> Result<MoveReport> {
        self.recover()?;
        move_namespace(self, from, to, merge, false)
    }
}

fn move_namespace(
    store: &DataStore,
    from: &BackupNamespace,
    to: &BackupNamespace,
    merge: bool,
    resume: bool,
) -> Result<MoveReport> {
    let refuse = |reason| refused(from.to_string(), to.to_string(), reason);
    if from.is_root() || to.is_root() {
        return Err(refuse(MoveRefusal::RootNamespace));
    }
    if from == to {
        return Err(refuse(MoveRefusal::SameLocation));
    }
    if from.contains(to) {
        return Err(refuse(MoveRefusal::IntoItself));
    }
    if !store.namespace_exists(from)? {
        if resume {
            return Ok(MoveReport::default());
        }
        return Err(Error::NotFound {
            what: "namespace",
            path: from.to_string(),
        });
    }
    require_namespace(store, &to.parent().unwrap_or_else(BackupNamespace::root))?;
    let all: Vec<BackupNamespace> = store
        .iter_namespaces_recursive(from, None)?
        .collect::<Result<_>>()?;
    let deepest = to.depth()
        + all
            .iter()
            .map(|n| n.depth() - from.depth())
            .max()
            .unwrap_or(0);
    if deepest > MAX_NAMESPACE_DEPTH {
        return Err(refuse(MoveRefusal::TooDeep { deepest }));
    }
    let map = |n: &BackupNamespace| -> Result<BackupNamespace> {
        BackupNamespace::from_components(
            to.components()
                .iter()
                .chain(&n.components()[from.depth()..]),
        )
        .map_err(Error::from)
    };
    if !resume {
        if store.namespace_exists(to)? && !merge {
            return Err(refuse(MoveRefusal::TargetExists));
        }
        // Every group first: a refused merge must change nothing.
        for n in &all {
            let target_ns = map(n)?;
            for group in store.iter_groups(n)? {
                let group = group?;
                let target = store.group(&target_ns, group.name());
                if !target.exists()? {
                    continue;
                }
                let refuse_group =
                    |reason| refused(group.relative_path(), target.relative_path(), reason);
                if !merge {
                    return Err(refuse_group(MoveRefusal::TargetExists));
                }
                let times = snapshot_times(&group)?;
                if let Some(&oldest) = times.first() {
                    if let Some(reason) = merge_refusal(&group.owner()?, &target, Some(oldest))? {
                        return Err(refuse_group(reason));
                    }
                }
            }
        }
    }
    let intent = journal::begin(
        store,
        Intent::MoveNamespace {
            from: from.clone(),
            to: to.clone(),
            merge,
        },
    )?;
    let mut report = MoveReport::default();
    // Parents before children, so that every target namespace has its parent.
    for n in &all {
        let target_ns = map(n)?;
        if !store.namespace_exists(&target_ns)? {
            store.create_namespace(&target_ns)?;
            report.namespaces_created += 1;
        }
        let groups: Vec<Group> = store.iter_groups(n)?.collect::<Result<_>>()?;
        for group in groups {
            // On recovery the target may hold groups this move made before the crash.
            report.add(&move_group(&group, &target_ns, merge || resume, resume)?);
        }
    }
    report.namespaces_removed = store.remove_namespace_now(from, false)?.removed_namespaces;
    intent.finish()?;
    Ok(report)
}

/// Completes (or rolls back) one interrupted intent; called by [`DataStore::recover`] while it
/// holds the intent's lock.
pub(crate) fn resume(store: &DataStore, guard: &mut IntentGuard) -> Result<RecoveryOutcome> {
    match guard.intent().clone() {
        Intent::MoveSnapshot {
            from,
            to,
            snapshot,
            phase,
            created_group,
        } => {
            let source = store.snapshot(&from, &snapshot);
            let target = store.snapshot(&to, &snapshot);
            resume_snapshot(store, &source, &target, phase, created_group, guard)
        }
        Intent::MoveGroup {
            from,
            to,
            group,
            merge: _,
            phase,
        } => {
            let source = store.group(&from, &group);
            for g in [&source, &store.group(&to, &group)] {
                let _lock = g.lock()?;
                remove_temp_files(store, g)?;
            }
            if phase == Phase::Rename {
                // Re-run in resume mode: a missing source means done; a target made by this move
                // (or by a merge half done) is merged into.
                return move_group(&source, &to, true, true).map(|_| RecoveryOutcome::Completed);
            }
            let target = store.group(&to, &group);
            let source_lock = source.lock()?;
            let target_lock = target.lock()?;
            if phase == Phase::Copy && !source.exists()? {
                // The copy never finished and the source went elsewhere since: undo the copy.
                let copied: Vec<Snapshot> = match target.iter_snapshots() {
                    Ok(iter) => iter.filter_map(|s| s.ok()).collect(),
                    Err(e) if e.is_not_found() => Vec::new(),
                    Err(e) => return Err(e),
                };
                drop_partial_copies(&copied)?;
                if snapshot_times_if_any(&target)?.is_empty() {
                    target.remove_folder(target_lock)?;
                }
                return Ok(RecoveryOutcome::RolledBack {
                    reason: Error::NotFound {
                        what: "group",
                        path: source.relative_path(),
                    },
                });
            }
            resume_transfer(
                store.backend(),
                &path(&source.relative_path())?,
                &path(&target.relative_path())?,
                phase,
                guard,
            )?;
            drop_lock_file(source_lock);
            Ok(RecoveryOutcome::Completed)
        }
        Intent::MoveNamespace { from, to, merge: _ } => {
            move_namespace(store, &from, &to, true, true).map(|_| RecoveryOutcome::Completed)
        }
        Intent::DestroyGroup { ns, group } => {
            let group = store.group(&ns, &group);
            {
                let _lock = group.lock()?;
                remove_temp_files(store, &group)?;
            }
            match group.destroy_now() {
                Ok(_) => Ok(RecoveryOutcome::Completed),
                Err(e) if e.is_not_found() => Ok(RecoveryOutcome::Completed),
                Err(e) => Err(e),
            }
        }
        Intent::DestroyNamespace { ns } => match store.remove_namespace_now(&ns, true) {
            Ok(_) => Ok(RecoveryOutcome::Completed),
            Err(e) if e.is_not_found() => Ok(RecoveryOutcome::Completed),
            Err(e) => Err(e),
        },
    }
}

fn resume_snapshot(
    store: &DataStore,
    source: &Snapshot,
    target: &Snapshot,
    phase: Phase,
    created_group: bool,
    guard: &mut IntentGuard,
) -> Result<RecoveryOutcome> {
    let source_group = source.group();
    let target_group = target.group();
    let _source_group_lock = source_group.lock()?;
    let target_group_lock = target_group.lock()?;
    remove_temp_files(store, &source_group)?;
    remove_temp_files(store, &target_group)?;
    if phase != Phase::Rename {
        if phase == Phase::Copy && !source.exists()? {
            // The copy never finished and the source went elsewhere since: undo the copy.
            drop_partial_copies(std::slice::from_ref(target))?;
            if created_group && snapshot_times_if_any(&target_group)?.is_empty() {
                target_group.remove_folder(target_group_lock)?;
            }
            return Ok(RecoveryOutcome::RolledBack {
                reason: Error::NotFound {
                    what: "snapshot",
                    path: source.relative_path(),
                },
            });
        }
        let snapshot_lock = if source.exists()? {
            Some(source.lock()?)
        } else {
            None
        };
        if phase == Phase::Copy {
            let owner = source_group.owner().ok();
            ensure_group(store, &target_group, owner.as_ref())?;
        }
        resume_transfer(
            store.backend(),
            &path(&source.relative_path())?,
            &path(&target.relative_path())?,
            phase,
            guard,
        )?;
        if let Some(lock) = snapshot_lock {
            drop_lock_file(lock);
        }
        return Ok(RecoveryOutcome::Completed);
    }
    match (source.exists()?, target.exists()?) {
        (false, true) => Ok(RecoveryOutcome::Completed),
        (true, false) => {
            let snapshot_lock = source.lock()?;
            let owner = source_group.owner()?;
            // A group this move created (perhaps killed before its owner was written) is ours to
            // complete; an existing one must still accept the snapshot.
            let ours = created_group && snapshot_times_if_any(&target_group)?.is_empty();
            if !ours && target_group.exists()? {
                if let Some(reason) =
                    merge_refusal(&owner, &target_group, Some(source.dir().time()))?
                {
                    // Not moved, and no longer allowed to: undo the group this move made.
                    if created_group && snapshot_times(&target_group)?.is_empty() {
                        target_group.remove_folder(target_group_lock)?;
                    }
                    return Ok(RecoveryOutcome::RolledBack {
                        reason: refused(source.relative_path(), target.relative_path(), reason),
                    });
                }
            }
            ensure_group(store, &target_group, Some(&owner))?;
            transfer(
                store,
                &source.relative_path(),
                &target.relative_path(),
                guard,
            )?;
            drop_lock_file(snapshot_lock);
            Ok(RecoveryOutcome::Completed)
        }
        (true, true) => Err(Error::AlreadyExists {
            what: "snapshot",
            path: target.relative_path(),
        }),
        (false, false) => Err(Error::NotFound {
            what: "snapshot",
            path: source.relative_path(),
        }),
    }
}
