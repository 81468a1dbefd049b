//! The intent journal: what makes moves and group/namespace destroys crash safe.
//!
//! Before a move or a destroy of a group or namespace changes anything, it writes an *intent*
//! (what it is about to do) into `<datastore>/.keepsake/intents/<id>.intent`, atomically (temp
//! file, fsync, rename, folder fsync), and holds an exclusive flock on `<id>.lock` while it runs.
//! When it is done it removes the intent, then the lock file. A process that dies in between
//! leaves the intent behind with its lock free: [`DataStore::recover`] (called by
//! [`DataStoreBuilder::open`](crate::DataStoreBuilder::open) and by
//! [`DataStore::verify`](crate::DataStore::verify)) finds such intents and completes the
//! operation, or rolls it back where completing is no longer allowed. The format is described in
//! `docs/JOURNAL.md`.
//!
//! The journal lives in the backend's host-local folder (`Backend::host_local`: the datastore
//! folder, or for an S3 datastore the local cache folder), never on a tmpfs: an intent must survive the reboot that interrupted it. It is never uploaded to the
//! bucket, so PBS's own `s3-refresh` never sees a key it does not know.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace};
use keepsake_lock::{ExclusiveGuard, LockFile};

use crate::error::{Error, Result};
use crate::relocate;
use crate::store::DataStore;

/// The journal folder, relative to the datastore folder.
pub const JOURNAL_DIR: &str = ".keepsake/intents";
/// First line of every intent file: format name and version.
pub const INTENT_HEADER: &str = "keepsake-intent 1";
const INTENT_SUFFIX: &str = ".intent";
const LOCK_SUFFIX: &str = ".lock";
const TEMP_SUFFIX: &str = ".tmp";
const BAD_SUFFIX: &str = ".bad";

/// How far a move on a backend without atomic renames (object storage) has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// One atomic rename (local filesystem), or a merge made of per-snapshot moves: either it
    /// happened or it did not.
    Rename,
    /// Files are being copied to the target; the source is complete.
    Copy,
    /// The target is complete; the source is being removed.
    DeleteSource,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Rename => "rename",
            Phase::Copy => "copy",
            Phase::DeleteSource => "delete-source",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "rename" => Some(Phase::Rename),
            "copy" => Some(Phase::Copy),
            "delete-source" => Some(Phase::DeleteSource),
            _ => None,
        }
    }
}

/// One operation recorded in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Intent {
    /// A snapshot moves to the group of the same name in namespace `to`.
    MoveSnapshot {
        /// The source namespace.
        from: BackupNamespace,
        /// The target namespace.
        to: BackupNamespace,
        /// The snapshot.
        snapshot: BackupDir,
        /// How far the files have come.
        phase: Phase,
        /// Whether the move creates the target group (a rollback removes it again if empty).
        created_group: bool,
    },
    /// A group moves to namespace `to` (merging into an existing group of that name if `merge`).
    MoveGroup {
        /// The source namespace.
        from: BackupNamespace,
        /// The target namespace.
        to: BackupNamespace,
        /// The group.
        group: BackupGroup,
        /// Whether an existing target group receives the snapshots.
        merge: bool,
        /// How far a whole-group transfer has come.
        phase: Phase,
    },
    /// A namespace and the namespaces below it move to `to`.
    MoveNamespace {
        /// The source namespace.
        from: BackupNamespace,
        /// Its new name.
        to: BackupNamespace,
        /// Whether existing target groups receive the snapshots.
        merge: bool,
    },
    /// A group is destroyed (protected snapshots stay).
    DestroyGroup {
        /// The namespace.
        ns: BackupNamespace,
        /// The group.
        group: BackupGroup,
    },
    /// A namespace tree is removed together with its groups (protected snapshots stay).
    DestroyNamespace {
        /// The namespace.
        ns: BackupNamespace,
    },
}

impl Intent {
    /// Recovery order: the innermost operations first (a snapshot move inside a group merge inside
    /// a namespace move).
    fn rank(&self) -> u8 {
        match self {
            Intent::MoveSnapshot { .. } => 0,
            Intent::MoveGroup { .. } | Intent::DestroyGroup { .. } => 1,
            Intent::MoveNamespace { .. } | Intent::DestroyNamespace { .. } => 2,
        }
    }

    fn encode(&self) -> String {
        let mut out = String::from(INTENT_HEADER);
        let mut line = |key: &str, value: &str| {
            out.push('\n');
            out.push_str(key);
            out.push(' ');
            out.push_str(value);
        };
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        match self {
            Intent::MoveSnapshot {
                from,
                to,
                snapshot,
                phase,
                created_group,
            } => {
                line("op", "move-snapshot");
                line("from", &ns_text(from));
                line("to", &ns_text(to));
                line("snapshot", &snapshot.to_string());
                line("phase", phase.as_str());
                line("created-group", yes_no(*created_group));
            }
            Intent::MoveGroup {
                from,
                to,
                group,
                merge,
                phase,
            } => {
                line("op", "move-group");
                line("from", &ns_text(from));
                line("to", &ns_text(to));
                line("group", &group.to_string());
                line("merge", yes_no(*merge));
                line("phase", phase.as_str());
            }
            Intent::MoveNamespace { from, to, merge } => {
                line("op", "move-namespace");
                line("from", &ns_text(from));
                line("to", &ns_text(to));
                line("merge", yes_no(*merge));
            }
            Intent::DestroyGroup { ns, group } => {
                line("op", "destroy-group");
                line("ns", &ns_text(ns));
                line("group", &group.to_string());
            }
            Intent::DestroyNamespace { ns } => {
                line("op", "destroy-namespace");
                line("ns", &ns_text(ns));
            }
        }
        out.push_str("\nend\n");
        out
    }

    /// Parses an intent file; the reason is a text for the recovery report.
    fn decode(text: &str) -> std::result::Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(INTENT_HEADER) {
            return Err(format!("first line is not `{INTENT_HEADER}`"));
        }
        let mut fields: Vec<(&str, &str)> = Vec::new();
        let mut ended = false;
        for line in lines {
            if ended {
                return Err("text after `end`".to_owned());
            }
            if line == "end" {
                ended = true;
                continue;
            }
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| format!("line {line:?} is not `key value`"))?;
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(format!("key `{key}` appears twice"));
            }
            fields.push((key, value));
        }
        if !ended {
            return Err("no `end` line (truncated)".to_owned());
        }
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("key `{key}` is missing"))
        };
        let ns = |key: &str| parse_ns(get(key)?).map_err(|e| format!("`{key}`: {e}"));
        let flag = |key: &str| match get(key)? {
            "yes" => Ok(true),
            "no" => Ok(false),
            other => Err(format!("`{key}` is {other:?}, not yes or no")),
        };
        let phase = || {
            let text = get("phase")?;
            Phase::parse(text).ok_or_else(|| format!("unknown phase {text:?}"))
        };
        let group = || {
            get("group")?
                .parse::<BackupGroup>()
                .map_err(|e| format!("`group`: {e}"))
        };
        let intent = match get("op")? {
            "move-snapshot" => Intent::MoveSnapshot {
                from: ns("from")?,
                to: ns("to")?,
                snapshot: get("snapshot")?
                    .parse()
                    .map_err(|e| format!("`snapshot`: {e}"))?,
                phase: phase()?,
                created_group: flag("created-group")?,
            },
            "move-group" => Intent::MoveGroup {
                from: ns("from")?,
                to: ns("to")?,
                group: group()?,
                merge: flag("merge")?,
                phase: phase()?,
            },
            "move-namespace" => Intent::MoveNamespace {
                from: ns("from")?,
                to: ns("to")?,
                merge: flag("merge")?,
            },
            "destroy-group" => Intent::DestroyGroup {
                ns: ns("ns")?,
                group: group()?,
            },
            "destroy-namespace" => Intent::DestroyNamespace { ns: ns("ns")? },
            other => return Err(format!("unknown operation {other:?}")),
        };
        Ok(intent)
    }
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Intent::MoveSnapshot {
                from, to, snapshot, ..
            } => write!(
                f,
                "move snapshot {snapshot} from `{}` to `{}`",
                ns_text(from),
                ns_text(to)
            ),
            Intent::MoveGroup {
                from, to, group, ..
            } => write!(
                f,
                "move group {group} from `{}` to `{}`",
                ns_text(from),
                ns_text(to)
            ),
            Intent::MoveNamespace { from, to, .. } => {
                write!(f, "move namespace `{}` to `{}`", ns_text(from), ns_text(to))
            }
            Intent::DestroyGroup { ns, group } => {
                write!(f, "destroy group {group} in `{}`", ns_text(ns))
            }
            Intent::DestroyNamespace { ns } => write!(f, "destroy namespace `{}`", ns_text(ns)),
        }
    }
}

/// A namespace in the journal: its name, `/` for the root (so that no value is empty).
fn ns_text(ns: &BackupNamespace) -> String {
    if ns.is_root() {
        "/".to_owned()
    } else {
        ns.to_string()
    }
}

fn parse_ns(text: &str) -> std::result::Result<BackupNamespace, keepsake_hierarchy::Error> {
    if text == "/" {
        Ok(BackupNamespace::root())
    } else {
        text.parse()
    }
}

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

/// A journal entry held by the running operation: the intent file plus its held lock. Dropping
/// it without [`finish`](Self::finish) releases the lock and *keeps* the intent, so that the next
/// recovery completes an operation that failed half-way.
#[derive(Debug)]
pub(crate) struct IntentGuard {
    dir: PathBuf,
    id: String,
    intent: Intent,
    lock: Option<ExclusiveGuard>,
    /// False when the backend has no host-local folder to journal in.
    enabled: bool,
}

impl IntentGuard {
    /// The recorded operation.
    pub(crate) fn intent(&self) -> &Intent {
        &self.intent
    }

    /// Rewrites the intent with a new phase (atomically).
    pub(crate) fn set_phase(&mut self, new: Phase) -> Result<()> {
        match &mut self.intent {
            Intent::MoveSnapshot { phase, .. } | Intent::MoveGroup { phase, .. } => {
                if *phase == new {
                    return Ok(());
                }
                *phase = new;
            }
            _ => return Ok(()),
        }
        if !self.enabled {
            return Ok(());
        }
        write_atomic(
            &self.dir,
            &format!("{}{INTENT_SUFFIX}", self.id),
            self.intent.encode().as_bytes(),
        )
        .map_err(|source| Error::Journal {
            path: self.dir.join(&self.id),
            source,
        })
    }

    /// The operation is over: removes the intent (durably), then the lock file.
    pub(crate) fn finish(mut self) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let file = self.dir.join(format!("{}{INTENT_SUFFIX}", self.id));
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Journal { path: file, source }),
        }
        sync_dir(&self.dir).map_err(|source| Error::Journal {
            path: self.dir.clone(),
            source,
        })?;
        if let Some(lock) = self.lock.take() {
            // A lock file left behind is harmless; the next recovery removes it.
            let _ = lock.remove();
        }
        Ok(())
    }
}

/// The journal folder of a store: in the backend's host-local folder (the datastore folder, or the
/// cache of an S3 datastore). `None` for a backend without one (a bare object store), which cannot
/// keep a journal.
fn journal_dir(store: &DataStore) -> Option<PathBuf> {
    store
        .backend()
        .host_local()
        .map(|local| local.root().join(JOURNAL_DIR))
}

/// Records `intent` before the operation changes anything, and holds its lock.
pub(crate) fn begin(store: &DataStore, intent: Intent) -> Result<IntentGuard> {
    let Some(dir) = journal_dir(store) else {
        // Nowhere to journal: the operation runs unjournaled.
        return Ok(IntentGuard {
            dir: PathBuf::new(),
            id: String::new(),
            intent,
            lock: None,
            enabled: false,
        });
    };
    let journal_error = |path: &Path, source| Error::Journal {
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(&dir).map_err(|e| journal_error(&dir, e))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let pid = std::process::id();
    for attempt in 0u32..64 {
        // Fixed-width hex: names sort by time. The attempt number breaks ties.
        let id = format!("{nanos:024x}-{pid:08x}-{attempt:02x}");
        let lock_path = dir.join(format!("{id}{LOCK_SUFFIX}"));
        let lock = match LockFile::new(&lock_path).lock_exclusive(Duration::ZERO) {
            Ok(lock) => lock,
            Err(e) if e.is_busy() => continue,
            Err(e) => return Err(Error::locked("intent", id, e)),
        };
        let file = dir.join(format!("{id}{INTENT_SUFFIX}"));
        if file.exists() {
            continue;
        }
        write_atomic(
            &dir,
            &format!("{id}{INTENT_SUFFIX}"),
            intent.encode().as_bytes(),
        )
        .map_err(|e| journal_error(&file, e))?;
        return Ok(IntentGuard {
            dir,
            id,
            intent,
            lock: Some(lock),
            enabled: true,
        });
    }
    Err(Error::Journal {
        path: dir,
        source: io::Error::new(io::ErrorKind::AlreadyExists, "no free intent id"),
    })
}

/// [`begin`] for a group destroy (used by [`Group::destroy`](crate::Group::destroy)).
pub(crate) fn begin_destroy_group(group: &crate::Group) -> Result<IntentGuard> {
    begin(
        group.store(),
        Intent::DestroyGroup {
            ns: group.ns().clone(),
            group: group.name().clone(),
        },
    )
}

/// [`begin`] for a namespace removal that deletes groups (nothing is journaled otherwise: removing
/// empty folders cannot lose anything).
pub(crate) fn begin_destroy_namespace(
    store: &DataStore,
    ns: &BackupNamespace,
    delete_groups: bool,
) -> Result<Option<IntentGuard>> {
    if !delete_groups {
        return Ok(None);
    }
    begin(store, Intent::DestroyNamespace { ns: ns.clone() }).map(Some)
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&temp, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether an error means "try again later" (keep the intent) rather than "this can no longer be
/// done" (roll back).
fn is_transient(error: &Error) -> bool {
    matches!(
        error,
        Error::Locked { .. } | Error::Backend { .. } | Error::Io { .. } | Error::Journal { .. }
    )
}

impl DataStore {
    /// Completes or rolls back every operation that a crashed (or failed) process left in the
    /// intent journal. Called by [`DataStoreBuilder::open`](crate::DataStoreBuilder::open) and
    /// [`DataStore::verify`](crate::DataStore::verify); safe to call at any time: intents of
    /// operations still running (their lock is held) are left alone, and each recovery takes the
    /// same group and snapshot locks as the operation itself.
    ///
    /// Innermost operations are recovered first (snapshot moves, then group moves and destroys,
    /// then namespace moves and destroys). Moves are completed, unless the target has changed so
    /// that the move is no longer allowed: then the part not yet done is rolled back (nothing that
    /// existed is lost). Destroys are completed (protected snapshots stay, as always).
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
    ///
    /// # Errors
    /// [`Error::Journal`] if the journal folder cannot be read; problems with single intents are
    /// in the report.
    pub fn recover(&self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let Some(dir) = journal_dir(self) else {
            return Ok(report);
        };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
            Err(source) => return Err(Error::Journal { path: dir, source }),
        };
        let mut ids = Vec::new();
        let mut orphans = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Journal {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(INTENT_SUFFIX) {
                ids.push(id.to_owned());
            } else if let Some(id) = name
                .strip_suffix(TEMP_SUFFIX)
                .and_then(|n| n.strip_suffix(INTENT_SUFFIX))
            {
                orphans.push(id.to_owned());
            } else if let Some(id) = name.strip_suffix(LOCK_SUFFIX) {
                orphans.push(id.to_owned());
            }
        }
        let mut intents = Vec::new();
        for id in ids {
            let lock = match LockFile::new(dir.join(format!("{id}{LOCK_SUFFIX}")))
                .lock_exclusive(Duration::ZERO)
            {
                Ok(lock) => lock,
                Err(e) if e.is_busy() => {
                    report.in_progress += 1;
                    continue;
                }
                Err(e) => return Err(Error::locked("intent", id, e)),
            };
            let file = dir.join(format!("{id}{INTENT_SUFFIX}"));
            let text = match fs::read(&file) {
                Ok(bytes) => String::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned()),
                // Finished by its owner between listing and locking (our lock re-made the file).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let _ = lock.remove();
                    continue;
                }
                Err(source) => return Err(Error::Journal { path: file, source }),
            };
            match text.and_then(|t| Intent::decode(&t)) {
                Ok(intent) => intents.push(IntentGuard {
                    dir: dir.clone(),
                    id,
                    intent,
                    lock: Some(lock),
                    enabled: true,
                }),
                Err(reason) => {
                    let bad = dir.join(format!("{id}{INTENT_SUFFIX}{BAD_SUFFIX}"));
                    fs::rename(&file, &bad).map_err(|source| Error::Journal {
                        path: file.clone(),
                        source,
                    })?;
                    report.unreadable.push((id, reason));
                }
            }
        }
        // Leftovers of a writer killed between creating its lock (or temp file) and finishing.
        for id in orphans {
            let intent_file = dir.join(format!("{id}{INTENT_SUFFIX}"));
            if intent_file.exists() {
                continue;
            }
            if let Ok(lock) =
                LockFile::new(dir.join(format!("{id}{LOCK_SUFFIX}"))).lock_exclusive(Duration::ZERO)
            {
                if !intent_file.exists() {
                    let _ = fs::remove_file(dir.join(format!("{id}{INTENT_SUFFIX}{TEMP_SUFFIX}")));
                    let _ = lock.remove();
                }
            }
        }
        intents.sort_by(|a, b| {
            a.intent
                .rank()
                .cmp(&b.intent.rank())
                .then_with(|| b.id.cmp(&a.id))
        });
        for mut guard in intents {
            let intent = guard.intent.clone();
            let id = guard.id.clone();
            match relocate::resume(self, &mut guard) {
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

    /// The intents now in the journal (operations running or interrupted), oldest first, for
    /// monitoring and tests. Unreadable files are skipped.
    pub fn journal_intents(&self) -> Result<Vec<Intent>> {
        let Some(dir) = journal_dir(self) else {
            return Ok(Vec::new());
        };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Journal { path: dir, source }),
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(INTENT_SUFFIX) {
                if let Ok(text) = fs::read_to_string(entry.path()) {
                    if let Ok(intent) = Intent::decode(&text) {
                        found.push((id.to_owned(), intent));
                    }
                }
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found.into_iter().map(|(_, i)| i).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(intent: Intent) {
        let text = intent.encode();
        assert_eq!(Intent::decode(&text).unwrap(), intent, "{text}");
    }

    #[test]
    fn every_intent_round_trips() {
        let root = BackupNamespace::root();
        let ab: BackupNamespace = "a/b".parse().unwrap();
        round_trip(Intent::MoveSnapshot {
            from: root.clone(),
            to: ab.clone(),
            snapshot: "vm/100/2024-06-05T15:06:40Z".parse().unwrap(),
            phase: Phase::Copy,
            created_group: true,
        });
        round_trip(Intent::MoveGroup {
            from: ab.clone(),
            to: root.clone(),
            group: "ct/7".parse().unwrap(),
            merge: false,
            phase: Phase::DeleteSource,
        });
        round_trip(Intent::MoveNamespace {
            from: ab.clone(),
            to: "c".parse().unwrap(),
            merge: true,
        });
        round_trip(Intent::DestroyGroup {
            ns: root,
            group: "host/x".parse().unwrap(),
        });
        round_trip(Intent::DestroyNamespace { ns: ab });
    }

    #[test]
    fn damaged_intents_are_refused() {
        let good = Intent::DestroyNamespace {
            ns: "a".parse().unwrap(),
        }
        .encode();
        let truncated = &good[..good.len() - 4];
        assert!(Intent::decode(truncated).unwrap_err().contains("end"));
        assert!(Intent::decode("").is_err());
        assert!(Intent::decode(&good.replace("keepsake-intent 1", "keepsake-intent 9")).is_err());
        assert!(Intent::decode(&good.replace("destroy-namespace", "explode")).is_err());
        assert!(Intent::decode(&good.replace("ns a", "ns ../x")).is_err());
        assert!(Intent::decode(&format!("{good}op again\n")).is_err());
        let twice = good.replace("ns a\n", "ns a\nns b\n");
        assert!(Intent::decode(&twice).unwrap_err().contains("twice"));
    }
}
