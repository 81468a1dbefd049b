//! Recovery: completing or rolling back what interrupted operations announced.
//!
//! [`DataStore::recover`] goes through the intent journal (see [`crate::journal`]): every intent
//! whose operation is no longer running is adopted (its lock taken), and the operation is
//! completed for exactly what it announced, under the same locks the live operation takes. A
//! lock that is busy leaves the intent pending (nothing changed, no second copy written); a
//! step that can no longer be done rolls the rest back (what is done stays done). Nothing else
//! calls this implicitly except journaled operations (which must not act on half-done state)
//! and, in the CLI, write commands: opening, listing and verifying never recover.

use keepsake_hierarchy::{BackupDir, GroupPath, SnapshotPath};

use crate::error::{Error, Result};
use crate::group::{DestroyStats, destroy_held};
use crate::hold::HeldGroup;
use crate::journal::{self, BAD_SUFFIX, INTENT_SUFFIX, Intent, IntentGuard, Journal};
use crate::moves::{self, Merge};
use crate::namespace::NamespaceRemoval;
use crate::store::DataStore;

/// How a recovered intent ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecoveryOutcome {
    /// The operation was carried out to its end (or had reached it before the crash).
    Completed,
    /// The operation was undone or dropped: completing it is no longer allowed (the reason says
    /// why). Nothing that existed before it started is lost.
    RolledBack {
        /// Why it could not be completed.
        reason: Error,
    },
}

/// One intent that [`DataStore::recover`] dealt with.
#[derive(Debug)]
#[non_exhaustive]
pub struct RecoveredIntent {
    /// The journal id (file name without extension).
    pub id: String,
    /// The operation.
    pub intent: Intent,
    /// What recovery did.
    pub outcome: RecoveryOutcome,
}

/// An intent that could not be dealt with now and stays in the journal for the next recovery.
#[derive(Debug)]
#[non_exhaustive]
pub struct PendingIntent {
    /// The journal id.
    pub id: String,
    /// The operation.
    pub intent: Intent,
    /// Why it stays (a lock held by someone else, a storage error).
    pub error: Error,
}

/// What [`DataStore::recover`] found and did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Interrupted operations completed or rolled back.
    pub recovered: Vec<RecoveredIntent>,
    /// Interrupted operations that could not be finished now; they stay in the journal.
    pub pending: Vec<PendingIntent>,
    /// Intents whose process is still running (their lock is held): left alone.
    pub in_progress: usize,
    /// Intent files that do not parse (id, reason); renamed to `<id>.intent.bad` and left for an
    /// operator.
    pub unreadable: Vec<(String, String)>,
}

impl RecoveryReport {
    /// Whether the journal held nothing interrupted (operations of live processes aside).
    pub fn is_empty(&self) -> bool {
        self.recovered.is_empty() && self.pending.is_empty() && self.unreadable.is_empty()
    }

    /// Whether every interrupted operation was completed (none rolled back, pending or unreadable).
    pub fn all_completed(&self) -> bool {
        self.pending.is_empty()
            && self.unreadable.is_empty()
            && self
                .recovered
                .iter()
                .all(|r| matches!(r.outcome, RecoveryOutcome::Completed))
    }
}

/// An interrupted operation found in the journal (its process is gone), for warnings by
/// commands that must not recover.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InterruptedIntent {
    /// The journal id.
    pub id: String,
    /// The operation, or why its file does not parse.
    pub intent: std::result::Result<Intent, String>,
}

impl InterruptedIntent {
    /// Whether recovery can complete it (its file parses); an unreadable one is only ever set
    /// aside, for an operator.
    pub fn is_recoverable(&self) -> bool {
        self.intent.is_ok()
    }
}

impl std::fmt::Display for InterruptedIntent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.intent {
            Ok(intent) => write!(f, "{intent}"),
            Err(reason) => write!(f, "unreadable intent {}: {reason}", self.id),
        }
    }
}

/// Whether an error means "try again later" (keep the intent) rather than "this can no longer be
/// done" (roll back).
fn is_transient(error: &Error) -> bool {
    match error {
        Error::Locked { .. }
        | Error::LockFailed { .. }
        | Error::Backend { .. }
        | Error::Io { .. }
        | Error::Journal { .. }
        | Error::LeaseLost { .. } => true,
        Error::Interrupted { source, .. } => is_transient(source),
        _ => false,
    }
}

impl DataStore {
    /// Completes or rolls back every operation that a crashed (or failed) process left in the
    /// intent journal, for exactly what each announced. Safe to call at any time: intents of
    /// operations still running (their lock is held) are left alone, and each recovery takes the
    /// same group and snapshot locks as the operation itself (a busy one leaves the intent
    /// pending, nothing changed).
    ///
    /// Innermost operations are recovered first (snapshot moves, then group moves and destroys,
    /// then namespace moves and destroys). Moves are completed, unless the target has changed so
    /// that the move is no longer allowed: then the part not yet done is rolled back (nothing that
    /// existed is lost). Destroys remove the snapshots they announced (protected ones stay, as
    /// always), and a group or namespace only when nothing is left in it.
    ///
    /// Nothing calls this implicitly but journaled operations; read-only callers use
    /// [`DataStore::interrupted_intents`] to warn.
    ///
    /// ```
    /// use keepsake_datastore::DataStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DataStore::builder("store1", dir.path().join("store1"))
    ///     .lock_root(dir.path().join("locks"))
    ///     .chunk_prefix_dirs(false)
    ///     .create()?;
    /// let report = store.recover()?;
    /// assert!(report.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    /// use keepsake_datastore::Merge;
    ///
    /// # Errors
    /// [`Error::ReadOnly`] on a read-only store; [`Error::Journal`] if the journal folder cannot
    /// be read; problems with single intents are in the report.
    pub fn recover(&self) -> Result<RecoveryReport> {
        self.require_writable("recovery")?;
        let mut report = RecoveryReport::default();
        let Some(journal) = Journal::of(self) else {
            return Ok(report);
        };
        let mut intents = Vec::new();
        for listed in journal.list()? {
            let Some(lock) = journal.try_lock(&listed.id)? else {
                report.in_progress += 1;
                continue;
            };
            if !journal.has_intent(&listed.id)? {
                // Finished by its owner between listing and locking.
                drop(lock);
                continue;
            }
            match listed.intent {
                Ok(intent) => intents.push(journal::adopt(self, listed.id, intent, lock)),
                Err(reason) => {
                    journal.set_aside(&listed.id)?;
                    drop(lock);
                    report.unreadable.push((listed.id, reason));
                }
            }
        }
        journal.remove_orphans();
        intents.sort_by(|a, b| {
            a.intent()
                .rank()
                .cmp(&b.intent().rank())
                .then_with(|| b.id().cmp(a.id()))
        });
        for mut guard in intents {
            let intent = guard.intent().clone();
            let id = guard.id().to_owned();
            match resume(self, &mut guard) {
                Ok(outcome) => {
                    guard.finish()?;
                    report.recovered.push(RecoveredIntent {
                        id,
                        intent,
                        outcome,
                    });
                }
                Err(error) if is_transient(&error) => {
                    report.pending.push(PendingIntent { id, intent, error });
                }
                Err(reason) => {
                    guard.finish()?;
                    report.recovered.push(RecoveredIntent {
                        id,
                        intent,
                        outcome: RecoveryOutcome::RolledBack { reason },
                    });
                }
            }
        }
        Ok(report)
    }

    /// Recovery before a journaled operation: completes what can be completed, and refuses
    /// ([`Error::RecoveryPending`]) while an interrupted operation stays pending, so that no
    /// operation acts on half-done state.
    pub(crate) fn recover_before_journaled(&self) -> Result<()> {
        let report = self.recover()?;
        if report.pending.is_empty() {
            return Ok(());
        }
        Err(Error::RecoveryPending {
            pending: report
                .pending
                .iter()
                .map(|p| format!("{} ({})", p.intent, crate::error::chain(&p.error)))
                .collect(),
        })
    }

    /// The interrupted operations in the journal (their process is gone), found without writing
    /// anything: for commands that must not recover but should say that recovery is pending.
    /// Operations still running are not listed.
    ///
    /// # Errors
    /// [`Error::Journal`] if the journal cannot be read.
    pub fn interrupted_intents(&self) -> Result<Vec<InterruptedIntent>> {
        let Some(journal) = Journal::of(self) else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        for listed in journal.list()? {
            if !journal.is_running(&listed.id)? {
                found.push(InterruptedIntent {
                    id: listed.id,
                    intent: listed.intent,
                });
            }
        }
        Ok(found)
    }

    /// Intents recovery set aside because they did not parse (`<journal>/<id>.intent.bad`, with
    /// their full paths): what they described was never completed, and nothing will complete
    /// it. An operator checks the datastore, then deletes them.
    ///
    /// # Errors
    /// [`Error::Journal`] if the journal cannot be read.
    pub fn set_aside_intents(&self) -> Result<Vec<std::path::PathBuf>> {
        let Some(journal) = Journal::of(self) else {
            return Ok(Vec::new());
        };
        Ok(journal
            .list_set_aside()?
            .into_iter()
            .map(|id| journal.local_path(&id, &format!("{INTENT_SUFFIX}{BAD_SUFFIX}")))
            .collect())
    }

    /// The intents now in the journal (operations running or interrupted), oldest first, for
    /// monitoring and tests. Unreadable files are skipped.
    pub fn journal_intents(&self) -> Result<Vec<Intent>> {
        let Some(journal) = Journal::of(self) else {
            return Ok(Vec::new());
        };
        Ok(journal
            .list()?
            .into_iter()
            .filter_map(|l| l.intent.ok())
            .collect())
    }
}

/// Completes (or rolls back) one interrupted intent, adopted in `guard`.
fn resume(store: &DataStore, guard: &mut IntentGuard) -> Result<RecoveryOutcome> {
    match guard.intent().clone() {
        Intent::MoveSnapshot { .. } => moves::resume_snapshot_move(store, guard),
        Intent::MoveGroup {
            from,
            to,
            group,
            merge,
            snapshots,
        } => moves::resume_group_move(
            store,
            &from,
            &to,
            &group,
            Merge::from_journal(merge),
            &snapshots,
        ),
        Intent::MoveNamespace {
            from,
            to,
            merge,
            namespaces,
            groups,
            snapshots,
        } => moves::resume_namespace_move(
            store,
            &from,
            &to,
            Merge::from_journal(merge),
            &namespaces,
            &groups,
            &snapshots,
        ),
        Intent::DestroyGroup {
            ns,
            group,
            snapshots,
        } => {
            let paths: Vec<SnapshotPath> = snapshots
                .into_iter()
                .map(|snapshot| SnapshotPath {
                    ns: ns.clone(),
                    snapshot,
                })
                .collect();
            resume_destroy(store, &[GroupPath { ns, group }], &paths, &[])
        }
        Intent::DestroyNamespace {
            ns: _,
            groups,
            snapshots,
            namespaces,
        } => resume_destroy(store, &groups, &snapshots, &namespaces),
    }
}

/// Recovery of a destroy: the announced snapshots that still exist are removed (each under its
/// locks, all taken first), then the announced groups and namespaces left empty.
fn resume_destroy(
    store: &DataStore,
    groups: &[GroupPath],
    snapshots: &[SnapshotPath],
    namespaces: &[keepsake_hierarchy::BackupNamespace],
) -> Result<RecoveryOutcome> {
    let mut held = Vec::new();
    for g in groups {
        let group = store.group(&g.ns, &g.group);
        if !(group.exists()? || moves::group_exists_authoritative(&group)?) {
            continue;
        }
        {
            let _lock = group.lock()?;
            moves::remove_temp_files(&group)?;
        }
        let mine: Vec<_> = snapshots
            .iter()
            .filter(|s| s.ns == g.ns && s.snapshot.group() == &g.group)
            .map(|s| store.snapshot(&s.ns, &s.snapshot))
            .collect();
        held.push(HeldGroup::take_some(&group, &mine)?);
    }
    let mut report = NamespaceRemoval::default();
    let mut present = Vec::new();
    for n in namespaces {
        if store.namespace_exists(n)? {
            present.push(n.clone());
        }
    }
    if namespaces.is_empty() {
        for h in held {
            let names: Vec<BackupDir> = h
                .snapshots
                .iter()
                .map(|s| s.snapshot.dir().clone())
                .collect();
            let mut stats = DestroyStats::default();
            destroy_held(h, &names, &mut stats).map_err(|p| p.error)?;
        }
    } else {
        store
            .destroy_announced(held, snapshots, &present, &mut report)
            .map_err(|p| p.error)?;
    }
    Ok(RecoveryOutcome::Completed)
}
