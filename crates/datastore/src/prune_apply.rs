//! Applying retention to a group or a namespace: plan with the pure core of [`crate::prune`], then
//! remove what it marks, oldest first.

use jiff::tz::TimeZone;
use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace, GroupFilter};

use crate::error::{Error, Result};
use crate::group::Group;
use crate::prune::{KeepOptions, KeepReason, PruneMark, PruneSnapshot, compute_prune_plan};
use crate::store::DataStore;

/// What happened to one snapshot of a prune.
#[derive(Debug)]
#[non_exhaustive]
pub enum PruneAction {
    /// Kept (its mark keeps it).
    Kept,
    /// Marked for removal, not removed: a dry run.
    WouldRemove,
    /// Removed.
    Removed,
    /// Marked for removal, but the removal failed (locked, protected meanwhile, backend error);
    /// the snapshot is unchanged and the prune went on with the others.
    Failed(Error),
}

/// One snapshot's line in a [`GroupPrune`].
#[derive(Debug)]
#[non_exhaustive]
pub struct PrunedSnapshot {
    /// The snapshot.
    pub snapshot: BackupDir,
    /// Whether it was finished (had a manifest) when the plan was made.
    pub finished: bool,
    /// The mark the plan gave it.
    pub mark: PruneMark,
    /// Why.
    pub reason: KeepReason,
    /// What was done.
    pub action: PruneAction,
}

/// The prune of one group: every snapshot, newest first.
#[derive(Debug)]
#[non_exhaustive]
pub struct GroupPrune {
    /// The group's namespace.
    pub ns: BackupNamespace,
    /// The group.
    pub group: BackupGroup,
    /// Every snapshot of the group with its mark, reason and action, newest first.
    pub snapshots: Vec<PrunedSnapshot>,
}

impl GroupPrune {
    /// Snapshots removed.
    pub fn removed(&self) -> usize {
        self.count(|a| matches!(a, PruneAction::Removed))
    }

    /// Snapshots whose removal failed.
    pub fn failed(&self) -> usize {
        self.count(|a| matches!(a, PruneAction::Failed(_)))
    }

    /// Snapshots kept.
    pub fn kept(&self) -> usize {
        self.count(|a| matches!(a, PruneAction::Kept))
    }

    /// Snapshots a dry run would remove.
    pub fn would_remove(&self) -> usize {
        self.count(|a| matches!(a, PruneAction::WouldRemove))
    }

    fn count(&self, f: impl Fn(&PruneAction) -> bool) -> usize {
        self.snapshots.iter().filter(|s| f(&s.action)).count()
    }
}

/// Which groups a namespace prune covers.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PruneScope {
    /// Also the namespaces below, down to this many levels (`Some(0)`: only the namespace itself,
    /// the default; `None`: every level).
    pub max_depth: Option<usize>,
    /// Only the groups these filters select (PBS's include/exclude semantics; none: every group).
    pub filters: Vec<GroupFilter>,
}

impl PruneScope {
    /// Only the namespace itself, every group.
    pub fn namespace() -> Self {
        Self {
            max_depth: Some(0),
            filters: Vec::new(),
        }
    }

    /// The namespace and every namespace below it, every group.
    pub fn recursive() -> Self {
        Self {
            max_depth: None,
            filters: Vec::new(),
        }
    }

    /// Restricts the scope to the groups `filters` select.
    #[must_use]
    pub fn with_filters(mut self, filters: Vec<GroupFilter>) -> Self {
        self.filters = filters;
        self
    }
}

/// The prune of a namespace: one [`GroupPrune`] per group, plus what could not even be planned.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct NamespacePrune {
    /// The groups, in listing order (namespace by namespace, anchor first).
    pub groups: Vec<GroupPrune>,
    /// Namespaces or groups that could not be listed or planned (a bad entry on disk, a backend
    /// error); the others were pruned.
    pub errors: Vec<Error>,
}

impl NamespacePrune {
    /// Snapshots removed in every group.
    pub fn removed(&self) -> usize {
        self.groups.iter().map(GroupPrune::removed).sum()
    }

    /// Removals that failed, plus the groups and namespaces that could not be planned.
    pub fn failures(&self) -> usize {
        self.groups.iter().map(GroupPrune::failed).sum::<usize>() + self.errors.len()
    }
}

/// Whether a prune removes what its plan marks, or only reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PruneRun {
    /// Only the plan: nothing is removed ([`PruneAction::WouldRemove`]).
    DryRun,
    /// Removes every snapshot the plan marks.
    Remove,
}

impl Group {
    /// Prunes this group: computes the plan with [`compute_prune_plan`] from the snapshots the
    /// authority lists ([`Group::list_backups_authoritative`]; periods in local time of
    /// `tz`; pass `jiff::tz::TimeZone::system()` for the process's zone, as PBS), then, with
    /// [`PruneRun::Remove`], removes every snapshot marked [`PruneMark::Remove`], oldest first,
    /// each with [`Snapshot::destroy`](crate::Snapshot::destroy) (snapshot lock, protection check
    /// under it). A removal that fails is reported in its line and the rest go on. An empty policy
    /// keeps everything.
    ///
    /// ```
    /// use jiff::tz::TimeZone;
    /// use keepsake_datastore::{DataStore, Encryption, PruneRun};
    /// use keepsake_datastore::prune::KeepOptions;
    /// use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DataStore::builder("store1", dir.path().join("store1"))
    ///     .lock_root(dir.path().join("locks"))
    ///     .chunk_prefix_dirs(false)
    ///     .create()?;
    /// let group = store.group(&BackupNamespace::root(), &"vm/100".parse::<BackupGroup>()?);
    /// let owner: Authid = "root@pam".parse()?;
    /// for day in 0..5 {
    ///     let time = BackupTime::from_epoch(1_717_600_000 + day * 86_400)?;
    ///     let mut backup = group.start_backup(&owner, time)?;
    ///     backup.add_blob("qemu-server.conf.blob", b"memory: 2048\n", Encryption::None)?;
    ///     backup.finish()?;
    /// }
    /// let policy: KeepOptions = "keep-last=2".parse()?;
    /// let dry = group.prune(&policy, &TimeZone::UTC, PruneRun::DryRun)?;
    /// assert_eq!((dry.would_remove(), group.list_backups()?.len()), (3, 5));
    /// let done = group.prune(&policy, &TimeZone::UTC, PruneRun::Remove)?;
    /// assert_eq!((done.removed(), group.list_backups()?.len()), (3, 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    /// use keepsake_datastore::PruneRun;
    ///
    /// # Errors
    /// Listing the group's snapshots failed (nothing was removed).
    pub fn prune(&self, options: &KeepOptions, tz: &TimeZone, run: PruneRun) -> Result<GroupPrune> {
        // The plan comes from the authority: a stale cache (another host, another cache folder,
        // a PBS server) must not make a snapshot the policy keeps look like one it removes.
        let backups = self.list_backups_authoritative()?;
        let input: Vec<PruneSnapshot> = backups
            .iter()
            .map(|info| PruneSnapshot {
                time: info.snapshot.time(),
                finished: info.is_finished(),
                protected: info.protected,
            })
            .collect();
        let plan = compute_prune_plan(&input, options, tz);
        let mut snapshots: Vec<PrunedSnapshot> = plan
            .entries()
            .iter()
            .map(|entry| PrunedSnapshot {
                snapshot: backups[entry.index].snapshot.clone(),
                finished: entry.snapshot.finished,
                mark: entry.mark,
                reason: entry.reason,
                // Until a removal is carried out below, a removal is only planned.
                action: if entry.mark == PruneMark::Remove {
                    PruneAction::WouldRemove
                } else {
                    PruneAction::Kept
                },
            })
            .collect();
        if run == PruneRun::Remove {
            // Entries are newest first; remove oldest first, as PBS does.
            for line in snapshots.iter_mut().rev() {
                if line.mark != PruneMark::Remove {
                    continue;
                }
                let snapshot = self.store().snapshot(self.ns(), &line.snapshot);
                line.action = match snapshot.destroy() {
                    Ok(()) => PruneAction::Removed,
                    Err(e) => PruneAction::Failed(e),
                };
            }
        }
        Ok(GroupPrune {
            ns: self.ns().clone(),
            group: self.name().clone(),
            snapshots,
        })
    }
}

impl DataStore {
    /// Prunes every group of `ns` that `scope` selects (optionally the namespaces below it too),
    /// each as [`Group::prune`] does. A namespace or group that cannot be listed is reported in
    /// [`NamespacePrune::errors`] and the others go on.
    ///
    /// # Errors
    /// The namespace does not exist, or `scope.max_depth` is more than 7.
    pub fn prune_namespace(
        &self,
        ns: &BackupNamespace,
        scope: &PruneScope,
        options: &KeepOptions,
        tz: &TimeZone,
        run: PruneRun,
    ) -> Result<NamespacePrune> {
        if !self.namespace_exists(ns)? {
            return Err(Error::NotFound {
                what: "namespace",
                path: ns.to_string(),
            });
        }
        let mut report = NamespacePrune::default();
        for namespace in self.iter_namespaces_recursive(ns, scope.max_depth)? {
            let namespace = match namespace {
                Ok(namespace) => namespace,
                Err(e) => {
                    report.errors.push(e);
                    continue;
                }
            };
            let groups = match self.iter_groups(&namespace) {
                Ok(groups) => groups,
                Err(e) => {
                    report.errors.push(e);
                    continue;
                }
            };
            for group in groups {
                let group = match group {
                    Ok(group) if group.matches(&scope.filters) => group,
                    Ok(_) => continue,
                    Err(e) => {
                        report.errors.push(e);
                        continue;
                    }
                };
                match group.prune(options, tz, run) {
                    Ok(pruned) => report.groups.push(pruned),
                    Err(e) => report.errors.push(e),
                }
            }
        }
        Ok(report)
    }
}
