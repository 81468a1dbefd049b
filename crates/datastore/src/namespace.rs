//! Namespace operations of a [`DataStore`]: create, exists, list, remove.

use keepsake_backend::{EntryKind, WriteMode};
use keepsake_hierarchy::{
    BackupNamespace, BackupType, GroupPath, NAMESPACE_DIR_NAME, NAMESPACE_MARKER_FILENAME,
    SnapshotPath,
};

use crate::error::{ArgumentProblem, Error, Partial, Result, Steps};
use crate::group::{DestroyStats, destroy_held};
use crate::hold::{HeldGroup, Seen};
use crate::iter::{Groups, Namespaces, NamespacesRecursive};
use crate::journal::Intent;
use crate::store::{DataStore, path};

/// What removing a namespace did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct NamespaceRemoval {
    /// Groups and snapshots removed, protected snapshots left.
    pub groups: DestroyStats,
    /// Namespaces whose folders were removed.
    pub removed_namespaces: u64,
    /// Namespaces that stay because something is left in them (protected snapshots, or groups when
    /// groups were not to be deleted).
    pub kept_namespaces: u64,
}

impl NamespaceRemoval {
    /// Whether everything asked for is gone.
    pub fn all_removed(&self) -> bool {
        self.kept_namespaces == 0 && self.groups.all_removed()
    }
}

/// What [`DataStore::remove_namespace`] does with the groups inside the namespaces it removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupsInside {
    /// Groups stay, and so do the namespaces that hold them: only empty namespaces go.
    Keep,
    /// Every group is destroyed first (protected snapshots stay, and so does what holds them),
    /// then the namespaces.
    Destroy,
}

impl DataStore {
    /// Whether the namespace exists (the root always does).
    pub fn namespace_exists(&self, ns: &BackupNamespace) -> Result<bool> {
        if ns.is_root() {
            return Ok(true);
        }
        let p = ns.path();
        self.backend()
            .exists(&path(&p)?)
            .map_err(|e| Error::backend(&p, e))
    }

    /// Creates a namespace whose parent exists; creating an existing one succeeds. On object
    /// storage the `.namespace` marker object is written first, so that the empty namespace exists
    /// in the bucket too.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the parent namespace does not exist; [`Error::InvalidArgument`] for
    /// the root.
    pub fn create_namespace(&self, ns: &BackupNamespace) -> Result<BackupNamespace> {
        let parent = ns
            .parent()
            .ok_or(Error::InvalidArgument(ArgumentProblem::RootNamespace))?;
        if !self.namespace_exists(&parent)? {
            return Err(Error::NotFound {
                what: "namespace",
                path: parent.to_string(),
            });
        }
        let p = ns.path();
        if !self.backend().capabilities().empty_folders || self.keeps_namespace_markers() {
            let marker = path(&format!("{p}/{NAMESPACE_MARKER_FILENAME}"))?;
            match self.backend().write(&marker, b"", WriteMode::CreateOnly) {
                Ok(_) | Err(keepsake_backend::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(Error::backend(marker.as_str(), e)),
            }
        }
        self.backend()
            .create_dir_all(&path(&p)?)
            .map_err(|e| Error::backend(&p, e))?;
        Ok(ns.clone())
    }

    /// The child namespaces of `parent` (one level), streamed. A missing `ns` folder is an empty
    /// listing.
    pub fn iter_namespaces(&self, parent: &BackupNamespace) -> Result<Namespaces<'_>> {
        Namespaces::new(self, parent)
    }

    /// `anchor` and every namespace below it down to `max_depth` levels (`None`: as deep as
    /// namespaces go), anchor first, depth-first, streamed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `max_depth` is more than 7.
    pub fn iter_namespaces_recursive(
        &self,
        anchor: &BackupNamespace,
        max_depth: Option<usize>,
    ) -> Result<NamespacesRecursive<'_>> {
        NamespacesRecursive::new(self, anchor, max_depth)
    }

    /// The groups of a namespace, every type, streamed.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the namespace does not exist.
    pub fn iter_groups(&self, ns: &BackupNamespace) -> Result<Groups<'_>> {
        Groups::new(self, ns, None)
    }

    /// The groups of one type in a namespace, streamed.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the namespace does not exist.
    pub fn iter_groups_of_type(&self, ns: &BackupNamespace, ty: BackupType) -> Result<Groups<'_>> {
        Groups::new(self, ns, Some(ty))
    }

    /// Removes a namespace and the namespaces below it.
    ///
    /// With `delete_groups`, every group in them is destroyed first: protected snapshots stay (and
    /// so do their groups and namespaces), and are counted. Every lock is taken before anything
    /// changes (every group, and every snapshot's lock and manifest lock): a busy lock refuses the
    /// whole removal. What is to be removed is announced in the intent journal, so that an
    /// interrupted removal is completed for exactly that. Without `delete_groups`, only
    /// namespaces that hold no groups are removed. Folders are removed deepest first, and only
    /// when empty (on S3: when the bucket holds nothing below them but the namespace marker). The
    /// root namespace folder is never removed.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Locked`]/[`Error::LockFailed`] before anything changed;
    /// [`Error::Interrupted`] when a later step fails (naming what was removed already);
    /// [`Error::RecoveryPending`].
    pub fn remove_namespace(
        &self,
        ns: &BackupNamespace,
        groups: GroupsInside,
    ) -> Result<NamespaceRemoval> {
        if groups == GroupsInside::Destroy {
            // What a failed operation left half done is finished first (docs/JOURNAL.md).
            self.recover_before_journaled()?;
        }
        if !self.namespace_exists(ns)? {
            return Err(Error::NotFound {
                what: "namespace",
                path: ns.to_string(),
            });
        }
        let namespaces: Vec<BackupNamespace> = self
            .iter_namespaces_recursive(ns, None)?
            .collect::<Result<_>>()?;
        let mut report = NamespaceRemoval::default();
        if groups == GroupsInside::Keep {
            self.remove_namespace_folders(&namespaces, &mut report)?;
            return Ok(report);
        }
        let mut held = Vec::new();
        for n in &namespaces {
            let groups: Vec<_> = self.iter_groups(n)?.collect::<Result<_>>()?;
            for group in groups {
                held.push(HeldGroup::take_all(&group, Seen::Listed)?);
            }
        }
        let mut announced: Vec<SnapshotPath> = Vec::new();
        for h in &held {
            for s in &h.snapshots {
                if s.snapshot.is_protected_authoritative()? {
                    report.groups.protected_snapshots += 1;
                } else {
                    announced.push(SnapshotPath {
                        ns: s.snapshot.ns().clone(),
                        snapshot: s.snapshot.dir().clone(),
                    });
                }
            }
        }
        let intent = crate::journal::begin(
            self,
            Intent::DestroyNamespace {
                ns: ns.clone(),
                groups: held
                    .iter()
                    .map(|h| GroupPath {
                        ns: h.group.ns().clone(),
                        group: h.group.name().clone(),
                    })
                    .collect(),
                snapshots: announced.clone(),
                namespaces: namespaces.clone(),
            },
        )?;
        self.destroy_announced(held, &announced, &namespaces, &mut report)
            .map_err(|p| p.interrupted(intent.intent().to_string()))?;
        intent.finish()?;
        Ok(report)
    }

    /// The removal part of a namespace destroy (live, or recovering an intent): the announced
    /// snapshots of the held groups, the groups left empty, then the announced namespace folders
    /// left empty. On failure, the error and what was removed before it.
    pub(crate) fn destroy_announced(
        &self,
        held: Vec<HeldGroup>,
        announced: &[SnapshotPath],
        namespaces: &[BackupNamespace],
        report: &mut NamespaceRemoval,
    ) -> Steps<()> {
        let mut done = Vec::new();
        for h in held {
            let ns = h.group.ns().clone();
            let mine: Vec<_> = announced
                .iter()
                .filter(|s| s.ns == ns && s.snapshot.group() == h.group.name())
                .map(|s| s.snapshot.clone())
                .collect();
            let mut stats = DestroyStats::default();
            let result = destroy_held(h, &mine, &mut stats);
            // Protected snapshots were counted when the removal was announced.
            stats.protected_snapshots = 0;
            report.groups.add(&stats);
            match result {
                Ok(removed) => done.extend(removed),
                Err(mut failed) => {
                    done.append(&mut failed.done);
                    failed.done = done;
                    return Err(failed);
                }
            }
        }
        self.remove_namespace_folders(namespaces, report)
            .map_err(|e| Partial::new(e, done))
    }

    /// Removes the folders of `namespaces` that are empty, deepest first.
    pub(crate) fn remove_namespace_folders(
        &self,
        namespaces: &[BackupNamespace],
        report: &mut NamespaceRemoval,
    ) -> Result<()> {
        let mut all = namespaces.to_vec();
        all.sort_by_key(|n| std::cmp::Reverse(n.depth()));
        for n in &all {
            if self.remove_namespace_folder(n)? {
                report.removed_namespaces += 1;
            } else if !n.is_root() {
                report.kept_namespaces += 1;
            }
        }
        Ok(())
    }

    /// Removes the empty scaffolding of one namespace (empty `vm`/`ct`/`host` and `ns` folders, the
    /// marker) and then its folder, if nothing else is in it. Returns whether the folder is gone.
    fn remove_namespace_folder(&self, ns: &BackupNamespace) -> Result<bool> {
        let base = ns.path();
        let join = |name: &str| {
            if base.is_empty() {
                name.to_owned()
            } else {
                format!("{base}/{name}")
            }
        };
        let mut left = 0usize;
        let folder = path(&base)?;
        let entries: Vec<_> = match self.backend().list(&folder) {
            Ok(l) => l
                .collect::<Result<_, _>>()
                .map_err(|e| Error::backend(&base, e))?,
            Err(keepsake_backend::Error::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(Error::backend(&base, e)),
        };
        for entry in entries {
            let is_scaffold = entry.kind == EntryKind::Dir
                && (entry.name == NAMESPACE_DIR_NAME || entry.name.parse::<BackupType>().is_ok());
            if is_scaffold && self.remove_dir_if_empty(&join(&entry.name))? {
                continue;
            }
            if entry.kind == EntryKind::File && entry.name == NAMESPACE_MARKER_FILENAME {
                continue;
            }
            left += 1;
        }
        if left > 0 || ns.is_root() {
            return Ok(false);
        }
        // Only the marker can be left here; the authority (on S3 the bucket, where another host
        // may have added a group) must hold nothing else below the namespace either.
        let marker = path(&join(NAMESPACE_MARKER_FILENAME))?;
        let files = match self.backend().list_files_authoritative(&folder) {
            Ok(files) => files,
            Err(keepsake_backend::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(Error::backend(&base, e)),
        };
        if files.iter().any(|f| *f != marker) {
            return Ok(false);
        }
        self.backend()
            .remove_files(&files)
            .map_err(|e| Error::backend(&base, e))?;
        self.backend()
            .remove_folder_if_empty(&folder)
            .map_err(|e| Error::backend(&base, e))
    }

    /// Removes a folder if nothing is below it (asked of the authority). Returns whether it is
    /// gone.
    pub(crate) fn remove_dir_if_empty(&self, rel: &str) -> Result<bool> {
        let folder = path(rel)?;
        self.backend()
            .remove_folder_if_empty(&folder)
            .map_err(|e| Error::backend(rel, e))
    }
}
