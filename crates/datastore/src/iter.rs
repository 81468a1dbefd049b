//! Streaming iterators over the hierarchy: namespaces, groups, snapshots.
//!
//! Nothing is collected: each iterator holds one backend listing per level it is in. Entries are
//! yielded in the backend's listing order (directory order locally, byte order on object stores), as
//! PBS does; sort what you need sorted. A bad entry (a name that looks like a namespace, group or
//! snapshot but does not parse) is yielded as an `Err` naming its path, and the iteration goes on.
//! Entries that are not part of the hierarchy (files, temp files, foreign folders) are skipped.

use keepsake_backend::{BackendPath, EntryKind, Listing};
use keepsake_hierarchy::{
    BackupDir, BackupGroup, BackupNamespace, BackupTime, BackupType, MAX_NAMESPACE_DEPTH,
    NAMESPACE_DIR_NAME,
};

use crate::error::{ArgumentProblem, Error, Result};
use crate::group::Group;
use crate::snapshot::Snapshot;
use crate::store::{DataStore, path};

/// Lists a folder; a missing folder is `Ok(None)`.
fn list_if_exists<'a>(store: &'a DataStore, folder: &BackendPath) -> Result<Option<Listing<'a>>> {
    match store.backend().list(folder) {
        Ok(listing) => Ok(Some(listing)),
        Err(keepsake_backend::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::backend(folder.as_str(), e)),
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// The child namespaces of one namespace (one level). See [`DataStore::iter_namespaces`].
pub struct Namespaces<'a> {
    parent: BackupNamespace,
    folder: String,
    listing: Option<Listing<'a>>,
}

impl<'a> Namespaces<'a> {
    pub(crate) fn new(store: &'a DataStore, parent: &BackupNamespace) -> Result<Self> {
        let folder = join(&parent.path(), NAMESPACE_DIR_NAME);
        let listing = list_if_exists(store, &path(&folder)?)?;
        Ok(Self {
            parent: parent.clone(),
            folder,
            listing,
        })
    }
}

impl Iterator for Namespaces<'_> {
    type Item = Result<BackupNamespace>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let entry = match self.listing.as_mut()?.next()? {
                Ok(entry) => entry,
                Err(e) => return Some(Err(Error::backend(&self.folder, e))),
            };
            if entry.kind != EntryKind::Dir {
                continue;
            }
            return Some(
                self.parent
                    .child(&entry.name)
                    .map_err(|source| Error::InvalidEntry {
                        what: "namespace",
                        path: join(&self.folder, &entry.name),
                        source,
                    }),
            );
        }
    }
}

/// A namespace and everything below it, anchor first, depth-first pre-order. See
/// [`DataStore::iter_namespaces_recursive`].
pub struct NamespacesRecursive<'a> {
    store: &'a DataStore,
    max_depth: usize,
    anchor: Option<BackupNamespace>,
    stack: Vec<Namespaces<'a>>,
}

impl<'a> NamespacesRecursive<'a> {
    pub(crate) fn new(
        store: &'a DataStore,
        anchor: &BackupNamespace,
        max_depth: Option<usize>,
    ) -> Result<Self> {
        let room = MAX_NAMESPACE_DEPTH - anchor.depth();
        let max_depth = match max_depth {
            Some(d) if d > MAX_NAMESPACE_DEPTH => {
                return Err(Error::InvalidArgument(ArgumentProblem::DepthTooLarge {
                    depth: d,
                }));
            }
            Some(d) => d.min(room),
            None => room,
        };
        Ok(Self {
            store,
            max_depth,
            anchor: Some(anchor.clone()),
            stack: Vec::new(),
        })
    }

    fn descend(&mut self, ns: &BackupNamespace, depth: usize) -> Option<Error> {
        if depth < self.max_depth {
            match Namespaces::new(self.store, ns) {
                Ok(children) => self.stack.push(children),
                Err(e) => return Some(e),
            }
        }
        None
    }
}

impl Iterator for NamespacesRecursive<'_> {
    type Item = Result<BackupNamespace>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(anchor) = self.anchor.take() {
            if let Some(e) = self.descend(&anchor, 0) {
                return Some(Err(e));
            }
            return Some(Ok(anchor));
        }
        loop {
            let depth = self.stack.len();
            let level = self.stack.last_mut()?;
            match level.next() {
                None => {
                    self.stack.pop();
                }
                Some(Ok(ns)) => {
                    if let Some(e) = self.descend(&ns, depth) {
                        return Some(Err(e));
                    }
                    return Some(Ok(ns));
                }
                Some(Err(e)) => return Some(Err(e)),
            }
        }
    }
}

/// The groups of one namespace (of every type, or of one). See [`DataStore::iter_groups`].
pub struct Groups<'a> {
    store: &'a DataStore,
    ns: BackupNamespace,
    types: std::vec::IntoIter<BackupType>,
    current: Option<(BackupType, String, Listing<'a>)>,
}

impl<'a> Groups<'a> {
    pub(crate) fn new(
        store: &'a DataStore,
        ns: &BackupNamespace,
        only: Option<BackupType>,
    ) -> Result<Self> {
        if !ns.is_root() && !store.namespace_exists(ns)? {
            return Err(Error::NotFound {
                what: "namespace",
                path: ns.to_string(),
            });
        }
        let types = match only {
            Some(t) => vec![t],
            None => BackupType::ALL.to_vec(),
        };
        Ok(Self {
            store,
            ns: ns.clone(),
            types: types.into_iter(),
            current: None,
        })
    }
}

impl<'a> Iterator for Groups<'a> {
    type Item = Result<Group>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let ty = self.types.next()?;
                let folder = join(&self.ns.path(), ty.as_str());
                let listing = match path(&folder).and_then(|p| list_if_exists(self.store, &p)) {
                    Ok(Some(listing)) => listing,
                    Ok(None) => continue,
                    Err(e) => return Some(Err(e)),
                };
                self.current = Some((ty, folder, listing));
            }
            let (ty, folder, listing) = self.current.as_mut()?;
            let entry = match listing.next() {
                None => {
                    self.current = None;
                    continue;
                }
                Some(Err(e)) => return Some(Err(Error::backend(folder, e))),
                Some(Ok(entry)) => entry,
            };
            if entry.kind != EntryKind::Dir {
                continue;
            }
            return Some(match BackupGroup::new(*ty, &entry.name) {
                Ok(group) => Ok(self.store.group(&self.ns, &group)),
                Err(source) => Err(Error::InvalidEntry {
                    what: "backup group",
                    path: join(folder, &entry.name),
                    source,
                }),
            });
        }
    }
}

/// Whether a folder name has the shape `NNNN-NN-NNTNN:NN:NNZ` (PBS's snapshot name regex).
pub(crate) fn looks_like_snapshot_time(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// The snapshots of one group. See [`Group::iter_snapshots`].
pub struct Snapshots<'a> {
    store: &'a DataStore,
    ns: BackupNamespace,
    group: BackupGroup,
    folder: String,
    listing: Option<Listing<'a>>,
}

impl<'a> Snapshots<'a> {
    pub(crate) fn new(
        store: &'a DataStore,
        ns: &BackupNamespace,
        group: &BackupGroup,
    ) -> Result<Self> {
        let folder = group.relative_path(ns);
        let listing = match store.backend().list(&path(&folder)?) {
            Ok(listing) => listing,
            Err(keepsake_backend::Error::NotFound { .. }) => {
                return Err(Error::NotFound {
                    what: "group",
                    path: folder,
                });
            }
            Err(e) => return Err(Error::backend(&folder, e)),
        };
        Ok(Self {
            store,
            ns: ns.clone(),
            group: group.clone(),
            folder,
            listing: Some(listing),
        })
    }
}

impl Iterator for Snapshots<'_> {
    type Item = Result<Snapshot>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let entry = match self.listing.as_mut()?.next()? {
                Ok(entry) => entry,
                Err(e) => return Some(Err(Error::backend(&self.folder, e))),
            };
            if entry.kind != EntryKind::Dir || !looks_like_snapshot_time(&entry.name) {
                continue;
            }
            return Some(match entry.name.parse::<BackupTime>() {
                Ok(time) => Ok(self
                    .store
                    .snapshot(&self.ns, &BackupDir::new(self.group.clone(), time))),
                Err(source) => Err(Error::InvalidEntry {
                    what: "snapshot time",
                    path: join(&self.folder, &entry.name),
                    source,
                }),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::looks_like_snapshot_time;

    #[test]
    fn snapshot_name_shape() {
        assert!(looks_like_snapshot_time("2024-06-05T15:06:40Z"));
        assert!(looks_like_snapshot_time("2024-02-31T15:06:40Z"));
        assert!(!looks_like_snapshot_time("2024-06-05T15:06:40"));
        assert!(!looks_like_snapshot_time("owner"));
        assert!(!looks_like_snapshot_time("2024-06-05T15:06:4xZ"));
    }
}
