//! Namespace operations of a [`DataStore`]: create, exists, list, remove.

use keepsake_backend::{EntryKind, KeepFilter, WriteMode};
use keepsake_hierarchy::{
    BackupNamespace, BackupType, NAMESPACE_DIR_NAME, NAMESPACE_MARKER_FILENAME,
};

use crate::error::{Error, Result};
use crate::group::DestroyStats;
use crate::iter::{Groups, Namespaces, NamespacesRecursive};
use crate::store::{DataStore, path};

/// What removing a namespace did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
            .ok_or_else(|| Error::InvalidArgument("the root namespace always exists".to_owned()))?;
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
    /// With `delete_groups`, every group in them is destroyed first ([`Group::destroy`]): protected
    /// snapshots stay (and so do their groups and namespaces), and are counted. Without it, only
    /// namespaces that hold no groups are removed. Folders are removed deepest first, and only when
    /// empty, so nothing that was not asked for is lost. The root namespace folder is never removed.
    ///
    /// [`Group::destroy`]: crate::Group::destroy
    pub fn remove_namespace(
        &self,
        ns: &BackupNamespace,
        delete_groups: bool,
    ) -> Result<NamespaceRemoval> {
        // What a failed operation left half done is finished first (docs/JOURNAL.md).
        self.recover()?;
        self.remove_namespace_now(ns, delete_groups)
    }

    /// [`DataStore::remove_namespace`] without the recovery first: for recovery itself and for
    /// operations that already ran it.
    pub(crate) fn remove_namespace_now(
        &self,
        ns: &BackupNamespace,
        delete_groups: bool,
    ) -> Result<NamespaceRemoval> {
        if !self.namespace_exists(ns)? {
            return Err(Error::NotFound {
                what: "namespace",
                path: ns.to_string(),
            });
        }
        let mut all: Vec<BackupNamespace> = self
            .iter_namespaces_recursive(ns, None)?
            .collect::<Result<_>>()?;
        let mut report = NamespaceRemoval::default();
        // Journaled: an interrupted removal is completed by the next `DataStore::recover`.
        let intent = crate::journal::begin_destroy_namespace(self, ns, delete_groups)?;
        if delete_groups {
            for n in &all {
                let groups: Vec<_> = self.iter_groups(n)?.collect::<Result<_>>()?;
                for group in groups {
                    report.groups.add(&group.destroy_now()?);
                }
            }
        }
        all.sort_by_key(|n| std::cmp::Reverse(n.depth()));
        for n in &all {
            if self.remove_namespace_folder(n)? {
                report.removed_namespaces += 1;
            } else if !n.is_root() {
                report.kept_namespaces += 1;
            }
        }
        if let Some(intent) = intent {
            intent.finish()?;
        }
        Ok(report)
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
        // Only the marker can be left: remove the folder together with it.
        match self.backend().remove_tree(&folder, &KeepFilter::nothing()) {
            Ok(_) | Err(keepsake_backend::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(Error::backend(&base, e)),
        }
    }

    /// Removes a folder if it has no entries. Returns whether it is gone.
    pub(crate) fn remove_dir_if_empty(&self, rel: &str) -> Result<bool> {
        let folder = path(rel)?;
        let empty = match self.backend().list(&folder) {
            Ok(mut l) => match l.next() {
                None => true,
                Some(Ok(_)) => false,
                Some(Err(e)) => return Err(Error::backend(rel, e)),
            },
            Err(keepsake_backend::Error::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(Error::backend(rel, e)),
        };
        if !empty {
            return Ok(false);
        }
        match self.backend().remove_tree(&folder, &KeepFilter::nothing()) {
            Ok(_) | Err(keepsake_backend::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(Error::backend(rel, e)),
        }
    }
}
