//! Moving snapshots, groups and namespaces, and merging groups (PBS's move/merge, section 3.8 of
//! the compatibility notes).
//!
//! Every move keeps PBS's merge invariants: when the target group exists, the owners must be equal
//! and every moved snapshot must be strictly newer than every snapshot already there; a target that
//! exists is only merged into when the caller asks for it.
//!
//! Every move first takes all the locks it needs (both groups, every moved snapshot's lock and
//! manifest lock; for a namespace, those of every group in it), then decides from the authority
//! (on S3 the bucket: does the target exist, what does it hold), and only then announces exactly
//! what it will move in the intent journal and starts. A busy lock or a refusal changes nothing.
//!
//! On the local filesystem a unit is one `rename` (a whole group folder when the target group does
//! not exist, else one per snapshot, oldest first). On backends without atomic renames (S3 behind
//! the local cache) a snapshot is copied file by file with create-only writes (an existing object
//! is never overwritten), its manifest last, so that the target never looks finished with files
//! missing; then the source is removed, its manifest first. A failed copy removes only the
//! objects it wrote.

use keepsake_backend::{Backend, BackendPath, WriteMode, is_temporary_name};
use keepsake_hierarchy::{
    Authid, BackupDir, BackupNamespace, BackupTime, GROUP_NOTES_FILE_NAME, GROUP_OWNER_FILE_NAME,
    GroupPath, MANIFEST_BLOB_NAME, MAX_NAMESPACE_DEPTH, SnapshotPath,
};
use keepsake_lock::LockGuard;

use crate::error::{Error, MoveRefusal, Partial, Result, Steps};
use crate::group::{ExistingOwner, Group};
use crate::hold::{HeldGroup, HeldSnapshot, Seen, drop_lock_file};
use crate::journal::{self, Intent, IntentGuard, Phase};
use crate::snapshot::Snapshot;
use crate::store::{DataStore, path};

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

pub(crate) fn refused(from: String, to: String, reason: MoveRefusal) -> Error {
    Error::MoveRefused {
        from,
        to,
        reason: Box::new(reason),
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

/// Whether the group exists in the authority (on S3: the bucket, where another host may have made
/// it since this cache saw the namespace).
pub(crate) fn group_exists_authoritative(group: &Group) -> Result<bool> {
    let p = group.relative_path();
    group
        .store()
        .backend()
        .exists_authoritative(&path(&p)?)
        .map_err(|e| Error::backend(&p, e))
}

/// Snapshot times of a group in the authority (and its folders of this host without files yet),
/// oldest first; none for a missing group.
pub(crate) fn snapshot_times_authoritative(group: &Group) -> Result<Vec<BackupTime>> {
    match group.list_backups_authoritative() {
        Ok(list) => Ok(list.iter().map(|b| b.snapshot.time()).collect()),
        Err(Error::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The owner of a group as the authority has it.
fn owner_authoritative(group: &Group) -> Result<Authid> {
    let file = path(&group.name().file_path(group.ns(), GROUP_OWNER_FILE_NAME)?)?;
    let contents = group
        .store()
        .backend()
        .read_authoritative(&file)
        .map_err(|e| Error::from_backend("owner", file.as_str(), e))?;
    let text = String::from_utf8_lossy(&contents.data);
    text.lines()
        .next()
        .unwrap_or("")
        .trim_end()
        .parse()
        .map_err(|source| Error::InvalidOwner {
            group: group.relative_path(),
            source,
        })
}

/// Whether a move may merge into a group (or namespace) of the same name that exists at the
/// target ([`Snapshot::move_to`], [`Group::move_to`], [`DataStore::move_namespace`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Merge {
    /// An existing target is refused ([`MoveRefusal::TargetExists`]); nothing changes.
    Never,
    /// Snapshots go into an existing target group, under PBS's merge rules (same owner, no
    /// overlap of times).
    IntoExisting,
}

impl Merge {
    fn allowed(self) -> bool {
        self == Merge::IntoExisting
    }

    /// From the journal's `merge` line.
    pub(crate) fn from_journal(merge: bool) -> Self {
        if merge {
            Merge::IntoExisting
        } else {
            Merge::Never
        }
    }
}

/// PBS's merge invariants for moving snapshots (the oldest of them `oldest_moved`) of a group owned
/// by `source_owner` into the existing group `target`, whose snapshots `exclude` do not count
/// (those this very move put there before it was interrupted).
fn merge_refusal(
    source_owner: &Authid,
    target: &Group,
    oldest_moved: Option<BackupTime>,
    exclude: &[BackupTime],
) -> Result<Option<MoveRefusal>> {
    let target_owner = owner_authoritative(target)?;
    if *source_owner != target_owner {
        return Ok(Some(MoveRefusal::OwnerMismatch {
            source_owner: source_owner.clone(),
            target_owner,
        }));
    }
    if let Some(oldest) = oldest_moved {
        let newest = snapshot_times_authoritative(target)?
            .into_iter()
            .filter(|t| !exclude.contains(t))
            .max();
        if let Some(newest) = newest {
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
fn ensure_group(group: &Group, owner: &Authid) -> Result<()> {
    let dir = group.relative_path();
    group
        .store()
        .backend()
        .create_dir_all(&path(&dir)?)
        .map_err(|e| Error::backend(&dir, e))?;
    match group.set_owner(owner, ExistingOwner::Refuse) {
        Ok(()) | Err(Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies the files of snapshot folder `source` to `target` with create-only writes, the
/// manifest last. A file already at the target with the same bytes counts as copied (a resumed
/// copy); different bytes are someone else's and refuse the copy. On failure the files this call
/// wrote are removed again (never anything else), and the error is returned.
fn copy_snapshot_files(
    backend: &dyn Backend,
    source: &BackendPath,
    target: &BackendPath,
) -> Result<()> {
    let mut files = backend
        .list_files_authoritative(source)
        .map_err(|e| Error::from_backend("snapshot", source.as_str(), e))?;
    files.retain(|f| !f.file_name().is_some_and(is_temporary_name));
    // The manifest last: until it is there the copy is an unfinished snapshot.
    files.sort_by_key(|f| f.file_name() == Some(MANIFEST_BLOB_NAME));
    let mut written = Vec::new();
    let result = (|| {
        for from in &files {
            // Listed below `source`, so the prefix is always there.
            let Some(rest) = from.strip_prefix(source) else {
                continue;
            };
            let to = target
                .join_path(&rest)
                .map_err(|e| Error::backend(target.as_str(), e))?;
            let contents = backend
                .read_authoritative(from)
                .map_err(|e| Error::from_backend("file", from.as_str(), e))?;
            match backend.write(&to, &contents.data, WriteMode::CreateOnly) {
                Ok(_) => written.push(to),
                Err(keepsake_backend::Error::AlreadyExists { .. }) => {
                    let there = backend
                        .read_authoritative(&to)
                        .map_err(|e| Error::backend(to.as_str(), e))?;
                    if there.data != contents.data {
                        return Err(Error::AlreadyExists {
                            what: "file",
                            path: to.as_str().to_owned(),
                        });
                    }
                }
                Err(e) => return Err(Error::backend(to.as_str(), e)),
            }
        }
        Ok(())
    })();
    if result.is_err() {
        // Only what this copy wrote; the manifest (if written) first.
        written.reverse();
        let _ = backend.remove_files(&written);
        let _ = backend.remove_folder_if_empty(target);
    }
    result
}

/// Removes a snapshot folder's files as the authority lists them, the manifest first.
fn delete_snapshot_files(backend: &dyn Backend, folder: &BackendPath) -> Result<()> {
    let mut files = match backend.list_files_authoritative(folder) {
        Ok(files) => files,
        Err(keepsake_backend::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(Error::backend(folder.as_str(), e)),
    };
    files.sort_by_key(|f| f.file_name() != Some(MANIFEST_BLOB_NAME));
    backend
        .remove_files(&files)
        .map_err(|e| Error::backend(folder.as_str(), e))?;
    backend
        .remove_folder_if_empty(folder)
        .map_err(|e| Error::backend(folder.as_str(), e))?;
    Ok(())
}

/// Moves snapshot folder `from` to `to` (which must not exist): one rename where the backend has
/// atomic renames, else copy and delete with the phase recorded in `intent`, from `phase` on.
fn transfer_snapshot(
    store: &DataStore,
    from: &str,
    to: &str,
    phase: Phase,
    intent: &mut IntentGuard,
) -> Result<()> {
    let (source, target) = (path(from)?, path(to)?);
    let backend = store.backend();
    if phase == Phase::Rename {
        return backend
            .rename(&source, &target)
            .map_err(|e| Error::from_backend("folder", from, e));
    }
    if phase == Phase::Copy {
        intent.set_phase(Phase::Copy)?;
        copy_snapshot_files(backend, &source, &target)?;
        intent.set_phase(Phase::DeleteSource)?;
    }
    delete_snapshot_files(backend, &source)
}

/// The phase a snapshot transfer starts in on this store's backend.
fn first_phase(store: &DataStore) -> Phase {
    if store.backend().capabilities().atomic_rename {
        Phase::Rename
    } else {
        Phase::Copy
    }
}

/// A copy that lost its source: the copy phase never finished, and the source was removed or
/// moved since. What the copy left at the target is checked: a whole snapshot stays (someone
/// else's, or a copy that had finished), a partial one is removed (a protected or busy one stays
/// and is reported by verify). Returns whether anything was removed.
fn drop_partial_copy(snapshot: &Snapshot) -> Result<bool> {
    let options = crate::VerifyOptions::default().chunks(crate::ChunkVerification::Skip);
    let whole = match snapshot.verify(&options) {
        Ok(report) => report.outcome == crate::SnapshotOutcome::Ok,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e),
    };
    if whole {
        return Ok(false);
    }
    match snapshot.remove_now(None) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes temporary files of interrupted atomic writes (an owner or notes file being written when
/// the process died) from a group folder, so that they neither stay forever nor keep an emptied
/// group folder from being removed. Only called by recovery, under the group lock, when the writer
/// is known to be dead.
pub(crate) fn remove_temp_files(group: &Group) -> Result<()> {
    let dir = group.relative_path();
    let folder = path(&dir)?;
    let backend = group.store().backend();
    let names: Vec<String> = match backend.list(&folder) {
        Ok(listing) => listing
            .filter_map(|e| e.ok())
            .filter(|e| e.kind == keepsake_backend::EntryKind::File && is_temporary_name(&e.name))
            .map(|e| e.name)
            .collect(),
        Err(keepsake_backend::Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(Error::backend(&dir, e)),
    };
    for name in names {
        let file = folder.join(&name).map_err(|e| Error::backend(&dir, e))?;
        match backend.remove_file(&file) {
            Ok(()) | Err(keepsake_backend::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::backend(file.as_str(), e)),
        }
    }
    Ok(())
}

/// PBS's notes rule for a merge: notes only in the source move to the target; when both have
/// notes the target's stay (the source's go with the source group). Returns whether notes moved.
fn move_notes(source: &Group, target: &Group) -> Result<bool> {
    let store = source.store();
    let Some(notes) = source.notes()? else {
        return Ok(false);
    };
    let file = path(
        &target
            .name()
            .file_path(target.ns(), GROUP_NOTES_FILE_NAME)?,
    )?;
    // Written directly (the caller holds both group locks, which `set_notes` would take again),
    // create-only: notes the target has in the bucket are never overwritten.
    match store
        .backend()
        .write(&file, notes.as_bytes(), WriteMode::CreateOnly)
    {
        Ok(_) => {}
        Err(keepsake_backend::Error::AlreadyExists { .. }) => return Ok(false),
        Err(e) => return Err(Error::backend(file.as_str(), e)),
    }
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
    /// (no waiting) and the manifest lock before anything changes; the source group stays, even
    /// when it is left empty.
    ///
    /// The snapshot keeps its group name because its manifest names it (and a signature covers
    /// that name).
    ///
    /// ```
    /// use keepsake_datastore::{Encryption, Merge};
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
    /// backup.add_blob("qemu-server.conf.blob", b"memory: 2048\n", Encryption::None)?;
    /// let snapshot = backup.finish()?;
    ///
    /// let archive = store.create_namespace(&"archive".parse()?)?;
    /// let moved = snapshot.move_to(&archive, Merge::Never)?;
    /// assert!(moved.is_finished()? && !snapshot.exists()?);
    /// assert_eq!(moved.group().owner()?, owner);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::MoveRefused`] (same namespace, target exists without `merge`, owner mismatch, time
    /// overlap); [`Error::NotFound`] for a missing snapshot or namespace; [`Error::AlreadyExists`]
    /// if the target snapshot exists; [`Error::Locked`]/[`Error::LockFailed`] (nothing changed).
    /// A failure after the move started leaves an intent that the next [`DataStore::recover`]
    /// completes.
    pub fn move_to(&self, target_ns: &BackupNamespace, merge: Merge) -> Result<Snapshot> {
        let store = self.store().clone();
        store.recover_before_journaled()?;
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
        if !self.exists()? {
            return Err(Error::NotFound {
                what: "snapshot",
                path: self.relative_path(),
            });
        }
        let held = HeldSnapshot::take(self.clone())?;
        if target.exists()? || exists_authoritative(&target)? {
            return Err(Error::AlreadyExists {
                what: "snapshot",
                path: target.relative_path(),
            });
        }
        // The owner as the bucket has it: a stale cache must not carry a snapshot into a group
        // of another owner.
        let owner = owner_authoritative(&source_group)?;
        let created_group = !(target_group.exists()? || group_exists_authoritative(&target_group)?);
        if !created_group {
            if !merge.allowed() {
                return Err(refuse(MoveRefusal::TargetExists));
            }
            if let Some(reason) =
                merge_refusal(&owner, &target_group, Some(self.dir().time()), &[])?
            {
                return Err(refuse(reason));
            }
        }
        let phase = first_phase(&store);
        let mut intent = journal::begin(
            &store,
            Intent::MoveSnapshot {
                from: self.ns().clone(),
                to: target_ns.clone(),
                snapshot: self.dir().clone(),
                phase,
                created_group,
            },
        )?;
        ensure_group(&target_group, &owner)?;
        store.check_fence(held.guard())?;
        transfer_snapshot(
            &store,
            &self.relative_path(),
            &target.relative_path(),
            phase,
            &mut intent,
        )?;
        held.release_gone();
        intent.finish()?;
        drop(target_lock);
        drop(source_lock);
        Ok(target)
    }
}

/// Whether the snapshot exists in the authority (on S3: the bucket).
pub(crate) fn exists_authoritative(snapshot: &Snapshot) -> Result<bool> {
    let p = snapshot.relative_path();
    snapshot
        .store()
        .backend()
        .exists_authoritative(&path(&p)?)
        .map_err(|e| Error::backend(&p, e))
}

/// A group move with every lock held and every check passed: ready to announce and run.
pub(crate) struct GroupMove {
    held: HeldGroup,
    target: Group,
    target_lock: LockGuard,
    /// The target group exists (merge), as the authority says.
    target_exists: bool,
    /// The source group's owner (the target gets it when the move makes the target group).
    owner: Option<Authid>,
}

impl GroupMove {
    /// Takes the locks of a move of `source` (all of its snapshots, or only `announced` ones on
    /// recovery) to `target_ns` and checks PBS's rules from the authority.
    fn plan(
        source: &Group,
        target_ns: &BackupNamespace,
        merge: Merge,
        announced: Option<&[BackupDir]>,
    ) -> Result<Self> {
        let store = source.store();
        let target = store.group(target_ns, source.name());
        let refuse = |reason| refused(source.relative_path(), target.relative_path(), reason);
        if target_ns == source.ns() {
            return Err(refuse(MoveRefusal::SameLocation));
        }
        let held = match announced {
            None => HeldGroup::take_all(source, Seen::Authority)?,
            Some(names) => {
                let snapshots: Vec<Snapshot> = names
                    .iter()
                    .map(|d| store.snapshot(source.ns(), d))
                    .collect();
                HeldGroup::take_some(source, &snapshots)?
            }
        };
        let target_lock = target.lock()?;
        let target_exists = target.exists()? || group_exists_authoritative(&target)?;
        let owner = match owner_authoritative(source) {
            Ok(owner) => Some(owner),
            // A source emptied by an interrupted merge may have lost nothing but its owner file
            // never; a missing owner only matters when there is something to move.
            Err(e) if held.snapshots.is_empty() && e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        if target_exists {
            // On recovery, the snapshots this very move put there before it was interrupted do
            // not count: the target may be a group it made.
            let exclude: Vec<BackupTime> = match announced {
                Some(names) => names.iter().map(|d| d.time()).collect(),
                None => Vec::new(),
            };
            let foreign = snapshot_times_authoritative(&target)?
                .into_iter()
                .any(|t| !exclude.contains(&t));
            if !merge.allowed() && (announced.is_none() || foreign) {
                return Err(refuse(MoveRefusal::TargetExists));
            }
            if let (Some(owner), Some(oldest)) = (&owner, held.snapshots.first()) {
                let oldest = oldest.snapshot.dir().time();
                if let Some(reason) = merge_refusal(owner, &target, Some(oldest), &exclude)? {
                    return Err(refuse(reason));
                }
            }
        }
        Ok(Self {
            held,
            target,
            target_lock,
            target_exists,
            owner,
        })
    }

    fn snapshot_names(&self) -> Vec<BackupDir> {
        self.held
            .snapshots
            .iter()
            .map(|s| s.snapshot.dir().clone())
            .collect()
    }

    /// Runs the move. The caller holds the move's intent. A whole group moves with one rename
    /// where the backend can (nothing at the target, every snapshot of the group moving);
    /// otherwise snapshot by snapshot (oldest first, each with its own intent), then the notes,
    /// then the source group's folder if nothing is left in it. On failure: the error and the
    /// snapshots moved before it.
    fn run(self, whole: bool) -> Steps<MoveReport> {
        let GroupMove {
            held,
            target,
            target_lock,
            target_exists,
            owner,
        } = self;
        let store = target.store().clone();
        let mut report = MoveReport::default();
        let mut done = Vec::new();
        let source = held.group.clone();
        if !target_exists && whole && store.backend().capabilities().atomic_rename {
            let result = store
                .backend()
                .rename(
                    &path(&source.relative_path()).map_err(|e| Partial::new(e, Vec::new()))?,
                    &path(&target.relative_path()).map_err(|e| Partial::new(e, Vec::new()))?,
                )
                .map_err(|e| Error::from_backend("folder", &source.relative_path(), e));
            result.map_err(|e| Partial::new(e, Vec::new()))?;
            report.groups_moved = 1;
            report.snapshots = held.snapshots.len() as u64;
            for s in held.snapshots {
                done.push(s.snapshot.relative_path());
                s.release_gone();
            }
            drop_lock_file(held.lock);
            drop(target_lock);
            return Ok(report);
        }
        if let (Some(owner), false) = (&owner, held.snapshots.is_empty()) {
            ensure_group(&target, owner).map_err(|e| Partial::new(e, Vec::new()))?;
        }
        let HeldGroup {
            group: _,
            lock: source_lock,
            snapshots,
        } = held;
        for held in snapshots {
            let snapshot = held.snapshot.clone();
            let moved = store.snapshot(target.ns(), snapshot.dir());
            let step = (|| {
                if moved.exists()? || exists_authoritative(&moved)? {
                    return Err(Error::AlreadyExists {
                        what: "snapshot",
                        path: moved.relative_path(),
                    });
                }
                let phase = first_phase(&store);
                // In multi-host mode: still this host's lease, right before the copy and delete.
                store.check_fence(held.guard())?;
                let mut intent = journal::begin(
                    &store,
                    Intent::MoveSnapshot {
                        from: source.ns().clone(),
                        to: target.ns().clone(),
                        snapshot: snapshot.dir().clone(),
                        phase,
                        created_group: false,
                    },
                )?;
                transfer_snapshot(
                    &store,
                    &snapshot.relative_path(),
                    &moved.relative_path(),
                    phase,
                    &mut intent,
                )?;
                intent.finish()
            })();
            match step {
                Ok(()) => {
                    done.push(snapshot.relative_path());
                    report.snapshots += 1;
                    held.release_gone();
                }
                Err(e) => return Err(Partial::new(e, done)),
            }
        }
        let finish = (|| {
            // Notes go only to a group that exists (never a notes-only target group).
            if group_exists_authoritative(&target)? && move_notes(&source, &target)? {
                report.notes_moved += 1;
            }
            source.remove_folder(source_lock)
        })();
        match finish {
            Ok(_) => {}
            Err(e) => return Err(Partial::new(e, done)),
        }
        if target_exists {
            report.groups_merged = 1;
        } else {
            report.groups_moved = 1;
        }
        drop(target_lock);
        Ok(report)
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
    /// group locks and every snapshot and manifest lock exclusively before anything changes.
    ///
    /// ```
    /// use keepsake_datastore::{Encryption, Merge};
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
    ///     backup.add_blob("qemu-server.conf.blob", b"memory: 2048\n", Encryption::None)?;
    ///     backup.finish()?;
    /// }
    /// let source = store.group(&BackupNamespace::root(), &name);
    /// // Without `merge`, an existing target is refused.
    /// assert!(matches!(
    ///     source.move_to(&prod, Merge::Never),
    ///     Err(Error::MoveRefused { reason, .. }) if *reason == MoveRefusal::TargetExists
    /// ));
    /// let report = source.move_to(&prod, Merge::IntoExisting)?;
    /// assert_eq!((report.snapshots, report.groups_merged), (1, 1));
    /// assert!(!source.exists()?);
    /// assert_eq!(store.group(&prod, &name).list_backups()?.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::MoveRefused`], [`Error::NotFound`], [`Error::Locked`]/[`Error::LockFailed`]
    /// (nothing changed); [`Error::Interrupted`] (naming the snapshots moved already) when a later
    /// step fails.
    pub fn move_to(&self, target_ns: &BackupNamespace, merge: Merge) -> Result<MoveReport> {
        let store = self.store().clone();
        store.recover_before_journaled()?;
        require_namespace(&store, target_ns)?;
        if !self.exists()? {
            return Err(Error::NotFound {
                what: "group",
                path: self.relative_path(),
            });
        }
        let plan = GroupMove::plan(self, target_ns, merge, None)?;
        let intent = journal::begin(
            &store,
            Intent::MoveGroup {
                from: self.ns().clone(),
                to: target_ns.clone(),
                group: self.name().clone(),
                merge: merge.allowed(),
                snapshots: plan.snapshot_names(),
            },
        )?;
        let report = plan
            .run(true)
            .map_err(|p| p.interrupted(intent.intent().to_string()))?;
        intent.finish()?;
        Ok(report)
    }
}

impl DataStore {
    /// Moves namespace `from`, with every namespace, group and snapshot below it, to the new name
    /// `to` (for example `a/b` to `c/b` puts it under `c`). The parent of `to` must exist.
    ///
    /// If `to` (or a namespace below it) exists, its groups receive the moved groups only with
    /// `merge`, under the rules of [`Group::move_to`]. Every lock of every group and snapshot is
    /// taken and every group is checked before anything moves, so a busy lock or a refusal
    /// changes nothing. Groups then move one by one (each with its own journal entry) and the
    /// emptied source namespaces are removed. The whole move is journaled with exactly the
    /// groups and snapshots it announced: an interruption is completed by the next
    /// [`DataStore::recover`] for those, never for something added since.
    ///
    /// ```
    /// use keepsake_datastore::{Encryption, Merge};
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
    /// backup.add_blob("pct.conf.blob", b"arch: amd64\n", Encryption::None)?;
    /// backup.finish()?;
    ///
    /// let report = store.move_namespace(&site, &"archive/site".parse()?, Merge::Never)?;
    /// assert_eq!(report.snapshots, 1);
    /// assert!(!store.namespace_exists(&site)?);
    /// assert!(store.group(&"archive/site/rack1".parse()?, group.name()).exists()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::MoveRefused`] (root, into itself, too deep, target exists without `merge`, a group
    /// merge refused); [`Error::NotFound`]; [`Error::Locked`]/[`Error::LockFailed`] for a group or
    /// snapshot in use (nothing changed); [`Error::Interrupted`] when a later step fails.
    pub fn move_namespace(
        &self,
        from: &BackupNamespace,
        to: &BackupNamespace,
        merge: Merge,
    ) -> Result<MoveReport> {
        self.recover_before_journaled()?;
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
        require_namespace(self, from)?;
        require_namespace(self, &to.parent().unwrap_or_else(BackupNamespace::root))?;
        let namespaces: Vec<BackupNamespace> = self
            .iter_namespaces_recursive(from, None)?
            .collect::<Result<_>>()?;
        let deepest = to.depth()
            + namespaces
                .iter()
                .map(|n| n.depth() - from.depth())
                .max()
                .unwrap_or(0);
        if deepest > MAX_NAMESPACE_DEPTH {
            return Err(refuse(MoveRefusal::TooDeep { deepest }));
        }
        if self.namespace_exists(to)? && !merge.allowed() {
            return Err(refuse(MoveRefusal::TargetExists));
        }
        // Every lock and every check first: a refusal or a busy lock must change nothing.
        let mut plans = Vec::new();
        for n in &namespaces {
            let target_ns = map_namespace(from, to, n)?;
            let groups: Vec<Group> = self.iter_groups(n)?.collect::<Result<_>>()?;
            for group in groups {
                plans.push(GroupMove::plan(&group, &target_ns, merge, None)?);
            }
        }
        let intent = journal::begin(
            self,
            Intent::MoveNamespace {
                from: from.clone(),
                to: to.clone(),
                merge: merge.allowed(),
                namespaces: namespaces.clone(),
                groups: plans.iter().map(|p| group_path(&p.held.group)).collect(),
                snapshots: plans
                    .iter()
                    .flat_map(|p| {
                        p.held.snapshots.iter().map(|s| SnapshotPath {
                            ns: s.snapshot.ns().clone(),
                            snapshot: s.snapshot.dir().clone(),
                        })
                    })
                    .collect(),
            },
        )?;
        let report = run_namespace_move(self, from, to, merge, &namespaces, plans)
            .map_err(|p| p.interrupted(intent.intent().to_string()))?;
        intent.finish()?;
        Ok(report)
    }
}

fn group_path(group: &Group) -> GroupPath {
    GroupPath {
        ns: group.ns().clone(),
        group: group.name().clone(),
    }
}

/// The namespace `n` (below `from`) moved below `to`.
fn map_namespace(
    from: &BackupNamespace,
    to: &BackupNamespace,
    n: &BackupNamespace,
) -> Result<BackupNamespace> {
    BackupNamespace::from_components(
        to.components()
            .iter()
            .chain(&n.components()[from.depth()..]),
    )
    .map_err(Error::from)
}

/// Runs a planned namespace move (live, or recovering one): target namespaces parents first,
/// each group with its own journal entry, then the announced source namespaces left empty.
fn run_namespace_move(
    store: &DataStore,
    from: &BackupNamespace,
    to: &BackupNamespace,
    merge: Merge,
    namespaces: &[BackupNamespace],
    plans: Vec<GroupMove>,
) -> Steps<MoveReport> {
    let mut report = MoveReport::default();
    let mut done: Vec<String> = Vec::new();
    let mut sorted = namespaces.to_vec();
    sorted.sort_by_key(BackupNamespace::depth);
    for n in &sorted {
        let step = (|| {
            let target_ns = map_namespace(from, to, n)?;
            if !store.namespace_exists(&target_ns)? {
                store.create_namespace(&target_ns)?;
                report.namespaces_created += 1;
            }
            Ok(())
        })();
        step.map_err(|e| Partial::new(e, done.clone()))?;
    }
    for plan in plans {
        let group = plan.held.group.clone();
        let names = plan.snapshot_names();
        let whole = plan.held.snapshots.len()
            == group
                .iter_snapshots()
                .map(|i| i.count())
                .unwrap_or(usize::MAX);
        let target_ns = plan.target.ns().clone();
        let intent = journal::begin(
            store,
            Intent::MoveGroup {
                from: group.ns().clone(),
                to: target_ns,
                group: group.name().clone(),
                merge: merge.allowed(),
                snapshots: names,
            },
        )
        .map_err(|e| Partial::new(e, done.clone()))?;
        match plan.run(whole) {
            Ok(r) => {
                report.add(&r);
                done.push(group.relative_path());
                intent.finish().map_err(|e| Partial::new(e, done.clone()))?;
            }
            Err(mut failed) => {
                done.append(&mut failed.done);
                failed.done = done;
                return Err(failed);
            }
        }
    }
    let mut removal = crate::NamespaceRemoval::default();
    store
        .remove_namespace_folders(namespaces, &mut removal)
        .map_err(|e| Partial::new(e, done.clone()))?;
    report.namespaces_removed = removal.removed_namespaces;
    Ok(report)
}

/// Recovery of an interrupted snapshot move (its intent adopted in `guard`).
pub(crate) fn resume_snapshot_move(
    store: &DataStore,
    guard: &mut IntentGuard,
) -> Result<crate::RecoveryOutcome> {
    use crate::RecoveryOutcome;
    let Intent::MoveSnapshot {
        from,
        to,
        snapshot,
        phase,
        created_group,
    } = guard.intent().clone()
    else {
        unreachable!("resume_snapshot_move is called for snapshot moves");
    };
    let source = store.snapshot(&from, &snapshot);
    let target = store.snapshot(&to, &snapshot);
    let source_group = source.group();
    let target_group = target.group();
    let _source_group_lock = source_group.lock()?;
    let target_group_lock = target_group.lock()?;
    remove_temp_files(&source_group)?;
    remove_temp_files(&target_group)?;
    let source_exists = source.exists()? || exists_authoritative(&source)?;
    if phase != Phase::Rename {
        if phase == Phase::Copy && !source_exists {
            // The copy never finished and the source went elsewhere since: undo the copy.
            drop_partial_copy(&target)?;
            if created_group && snapshot_times_authoritative(&target_group)?.is_empty() {
                target_group.remove_folder(target_group_lock)?;
            }
            return Ok(RecoveryOutcome::RolledBack {
                reason: Error::NotFound {
                    what: "snapshot",
                    path: source.relative_path(),
                },
            });
        }
        let held = if source_exists {
            Some(HeldSnapshot::take(source.clone())?)
        } else {
            None
        };
        if phase == Phase::Copy {
            let owner = owner_authoritative(&source_group)?;
            ensure_group(&target_group, &owner)?;
        }
        transfer_snapshot(
            store,
            &source.relative_path(),
            &target.relative_path(),
            phase,
            guard,
        )?;
        if let Some(held) = held {
            held.release_gone();
        }
        return Ok(RecoveryOutcome::Completed);
    }
    let target_exists = target.exists()? || exists_authoritative(&target)?;
    match (source_exists, target_exists) {
        (false, true) => Ok(RecoveryOutcome::Completed),
        (true, false) => {
            let held = HeldSnapshot::take(source.clone())?;
            let owner = owner_authoritative(&source_group)?;
            // A group this move created (perhaps killed before its owner was written) is ours to
            // complete; an existing one must still accept the snapshot.
            let ours = created_group && snapshot_times_authoritative(&target_group)?.is_empty();
            if !ours && group_exists_authoritative(&target_group)? {
                if let Some(reason) =
                    merge_refusal(&owner, &target_group, Some(source.dir().time()), &[])?
                {
                    // Not moved, and no longer allowed to: undo the group this move made.
                    if created_group && snapshot_times_authoritative(&target_group)?.is_empty() {
                        target_group.remove_folder(target_group_lock)?;
                    }
                    return Ok(RecoveryOutcome::RolledBack {
                        reason: refused(source.relative_path(), target.relative_path(), reason),
                    });
                }
            }
            ensure_group(&target_group, &owner)?;
            transfer_snapshot(
                store,
                &source.relative_path(),
                &target.relative_path(),
                Phase::Rename,
                guard,
            )?;
            held.release_gone();
            Ok(RecoveryOutcome::Completed)
        }
        (true, true) => Ok(RecoveryOutcome::RolledBack {
            reason: Error::AlreadyExists {
                what: "snapshot",
                path: target.relative_path(),
            },
        }),
        (false, false) => Ok(RecoveryOutcome::RolledBack {
            reason: Error::NotFound {
                what: "snapshot",
                path: source.relative_path(),
            },
        }),
    }
}

/// Recovery of an interrupted group move: the announced snapshots still in the source move,
/// snapshot by snapshot, under the same locks; a target that no longer accepts them rolls the
/// rest back (what moved stays moved).
pub(crate) fn resume_group_move(
    store: &DataStore,
    from: &BackupNamespace,
    to: &BackupNamespace,
    group: &keepsake_hierarchy::BackupGroup,
    merge: Merge,
    snapshots: &[BackupDir],
) -> Result<crate::RecoveryOutcome> {
    let source = store.group(from, group);
    if !(source.exists()? || group_exists_authoritative(&source)?) {
        return Ok(crate::RecoveryOutcome::Completed);
    }
    {
        let _lock = source.lock()?;
        remove_temp_files(&source)?;
    }
    let plan = match GroupMove::plan(&source, to, merge, Some(snapshots)) {
        Ok(plan) => plan,
        Err(reason @ Error::MoveRefused { .. }) => {
            return Ok(crate::RecoveryOutcome::RolledBack { reason });
        }
        Err(e) => return Err(e),
    };
    plan.run(false).map_err(|p| p.error)?;
    Ok(crate::RecoveryOutcome::Completed)
}

/// Recovery of an interrupted namespace move: every announced group still in a source namespace
/// moves with its announced snapshots (all locks first), then the announced source namespaces
/// left empty are removed.
pub(crate) fn resume_namespace_move(
    store: &DataStore,
    from: &BackupNamespace,
    to: &BackupNamespace,
    merge: Merge,
    namespaces: &[BackupNamespace],
    groups: &[GroupPath],
    snapshots: &[SnapshotPath],
) -> Result<crate::RecoveryOutcome> {
    let mut plans = Vec::new();
    for g in groups {
        let source = store.group(&g.ns, &g.group);
        if !(source.exists()? || group_exists_authoritative(&source)?) {
            continue;
        }
        let announced: Vec<BackupDir> = snapshots
            .iter()
            .filter(|s| s.ns == g.ns && s.snapshot.group() == &g.group)
            .map(|s| s.snapshot.clone())
            .collect();
        let target_ns = map_namespace(from, to, &g.ns)?;
        match GroupMove::plan(&source, &target_ns, merge, Some(&announced)) {
            Ok(plan) => plans.push(plan),
            Err(reason @ Error::MoveRefused { .. }) => {
                return Ok(crate::RecoveryOutcome::RolledBack { reason });
            }
            Err(e) => return Err(e),
        }
    }
    // Namespaces that vanished since (moved by this very move, or removed) need nothing.
    let mut present = Vec::new();
    for n in namespaces {
        if store.namespace_exists(n)? {
            present.push(n.clone());
        }
    }
    run_namespace_move(store, from, to, merge, &present, plans).map_err(|p| p.error)?;
    Ok(crate::RecoveryOutcome::Completed)
}
