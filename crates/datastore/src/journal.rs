//! The intent journal: what makes moves and group/namespace destroys crash safe.
//!
//! A move or a destroy of a group or namespace first takes every lock it needs (a busy lock
//! refuses the whole operation, nothing changed), then writes an *intent* naming exactly what it
//! is about to do (the snapshots, groups and namespaces it announced) into
//! `<datastore>/.keepsake/intents/<id>.intent`, atomically (temp file, fsync, rename, folder
//! fsync), and holds an exclusive flock on `<id>.lock` while it runs. When it is done it removes
//! the intent, then the lock file. A process that dies (or an operation that fails) in between
//! leaves the intent behind: [`DataStore::recover`] completes or rolls back *what the intent
//! announced*, never more, under the same locks as the live operation. The format is described in
//! `docs/JOURNAL.md`.
//!
//! Nothing reads the journal as a side effect: opening a datastore, listing and verifying never
//! recover. Journaled operations recover first (they must not act on half-done state), and so do
//! the CLI's write commands; read-only commands only warn ([`DataStore::interrupted_intents`]).
//!
//! The journal lives in the backend's host-local folder (`Backend::host_local`: the datastore
//! folder, or for an S3 datastore the local cache folder), never on a tmpfs: an intent must
//! survive the reboot that interrupted it. It is never uploaded to the bucket, so PBS's own
//! `s3-refresh` never sees a key it does not know.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use keepsake_backend::{
    Backend, BackendPath, EntryKind, LocalBackend, WriteMode, is_temporary_name,
};
use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace, GroupPath, SnapshotPath};
use rustix::fs::{FlockOperation, flock};

use crate::error::{Error, Result};
use crate::store::DataStore;

/// The journal folder, relative to the datastore folder.
pub const JOURNAL_DIR: &str = ".keepsake/intents";
/// First line of every intent file: format name and version. Version 1 intents (which did not
/// name the snapshots they announced) are not recovered: recovery sets them aside as unreadable.
pub const INTENT_HEADER: &str = "keepsake-intent 2";
pub(crate) const INTENT_SUFFIX: &str = ".intent";
pub(crate) const LOCK_SUFFIX: &str = ".lock";
pub(crate) const BAD_SUFFIX: &str = ".bad";

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

/// One operation recorded in the journal, with everything it announced.
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
        /// The snapshots the move announced (recovery moves these and no other).
        snapshots: Vec<BackupDir>,
    },
    /// A namespace and the namespaces below it move to `to`.
    MoveNamespace {
        /// The source namespace.
        from: BackupNamespace,
        /// Its new name.
        to: BackupNamespace,
        /// Whether existing target groups receive the snapshots.
        merge: bool,
        /// The source namespaces the move announced (each is removed when emptied).
        namespaces: Vec<BackupNamespace>,
        /// The groups the move announced, with their source namespaces.
        groups: Vec<GroupPath>,
        /// The snapshots the move announced.
        snapshots: Vec<SnapshotPath>,
    },
    /// Snapshots of a group are destroyed, then the group if nothing is left in it.
    DestroyGroup {
        /// The namespace.
        ns: BackupNamespace,
        /// The group.
        group: BackupGroup,
        /// The snapshots the destroy announced (protected ones were never announced).
        snapshots: Vec<BackupDir>,
    },
    /// A namespace tree is removed together with its groups.
    DestroyNamespace {
        /// The namespace.
        ns: BackupNamespace,
        /// The groups the removal announced (each is removed when nothing is left in it).
        groups: Vec<GroupPath>,
        /// The snapshots it announced.
        snapshots: Vec<SnapshotPath>,
        /// The namespaces whose folders it announced (each is removed when empty).
        namespaces: Vec<BackupNamespace>,
    },
}

/// Keys that may appear more than once in an intent (one line per list item).
const LIST_KEYS: [&str; 3] = ["snapshot", "group", "namespace"];

impl Intent {
    /// Recovery order: the innermost operations first (a snapshot move inside a group merge inside
    /// a namespace move).
    pub(crate) fn rank(&self) -> u8 {
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
                snapshots,
            } => {
                line("op", "move-group");
                line("from", &ns_text(from));
                line("to", &ns_text(to));
                line("group", &group.to_string());
                line("merge", yes_no(*merge));
                for s in snapshots {
                    line("snapshot", &s.to_string());
                }
            }
            Intent::MoveNamespace {
                from,
                to,
                merge,
                namespaces,
                groups,
                snapshots,
            } => {
                line("op", "move-namespace");
                line("from", &ns_text(from));
                line("to", &ns_text(to));
                line("merge", yes_no(*merge));
                for n in namespaces {
                    line("namespace", &ns_text(n));
                }
                for g in groups {
                    line("group", &g.to_string());
                }
                for s in snapshots {
                    line("snapshot", &s.to_string());
                }
            }
            Intent::DestroyGroup {
                ns,
                group,
                snapshots,
            } => {
                line("op", "destroy-group");
                line("ns", &ns_text(ns));
                line("group", &group.to_string());
                for s in snapshots {
                    line("snapshot", &s.to_string());
                }
            }
            Intent::DestroyNamespace {
                ns,
                groups,
                snapshots,
                namespaces,
            } => {
                line("op", "destroy-namespace");
                line("ns", &ns_text(ns));
                for n in namespaces {
                    line("namespace", &ns_text(n));
                }
                for g in groups {
                    line("group", &g.to_string());
                }
                for s in snapshots {
                    line("snapshot", &s.to_string());
                }
            }
        }
        out.push_str("\nend\n");
        out
    }

    /// Parses an intent file; the reason is a text for the recovery report.
    pub(crate) fn decode(text: &str) -> std::result::Result<Self, String> {
        let mut lines = text.lines();
        match lines.next() {
            Some(INTENT_HEADER) => {}
            Some("keepsake-intent 1") => {
                return Err("format 1 does not name what the operation announced: not \
                            recovered (check the datastore, then delete this file)"
                    .to_owned());
            }
            _ => return Err(format!("first line is not `{INTENT_HEADER}`")),
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
            if !LIST_KEYS.contains(&key) && fields.iter().any(|(k, _)| *k == key) {
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
        let single = |key: &str| {
            let mut found = fields.iter().filter(|(k, _)| *k == key);
            match (found.next(), found.next()) {
                (Some((_, v)), None) => Ok(*v),
                (None, _) => Err(format!("key `{key}` is missing")),
                (Some(_), Some(_)) => Err(format!("key `{key}` appears twice")),
            }
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
            single("group")?
                .parse::<BackupGroup>()
                .map_err(|e| format!("`group`: {e}"))
        };
        // Every item of a list key, parsed with `parse`; an item named twice counts once (a
        // damaged or hand-edited intent must not make recovery lock one snapshot twice).
        fn items<T: PartialEq>(
            fields: &[(&str, &str)],
            key: &str,
            parse: impl Fn(&str) -> std::result::Result<T, keepsake_hierarchy::Error>,
        ) -> std::result::Result<Vec<T>, String> {
            let mut out: Vec<T> = Vec::new();
            for (_, v) in fields.iter().filter(|(k, _)| *k == key) {
                let item = parse(v).map_err(|e| format!("`{key}` {v:?}: {e}"))?;
                if !out.contains(&item) {
                    out.push(item);
                }
            }
            Ok(out)
        }
        let dirs = |key: &str| items(&fields, key, str::parse::<BackupDir>);
        let groups = |key: &str| items(&fields, key, str::parse::<GroupPath>);
        let intent = match get("op")? {
            "move-snapshot" => Intent::MoveSnapshot {
                from: ns("from")?,
                to: ns("to")?,
                snapshot: single("snapshot")?
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
                snapshots: dirs("snapshot")?,
            },
            "move-namespace" => Intent::MoveNamespace {
                from: ns("from")?,
                to: ns("to")?,
                merge: flag("merge")?,
                namespaces: items(&fields, "namespace", parse_ns)?,
                groups: groups("group")?,
                snapshots: items(&fields, "snapshot", str::parse::<SnapshotPath>)?,
            },
            "destroy-group" => Intent::DestroyGroup {
                ns: ns("ns")?,
                group: group()?,
                snapshots: dirs("snapshot")?,
            },
            "destroy-namespace" => Intent::DestroyNamespace {
                ns: ns("ns")?,
                groups: groups("group")?,
                snapshots: items(&fields, "snapshot", str::parse::<SnapshotPath>)?,
                namespaces: items(&fields, "namespace", parse_ns)?,
            },
            other => return Err(format!("unknown operation {other:?}")),
        };
        Ok(intent)
    }
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
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
                from,
                to,
                group,
                snapshots,
                ..
            } => write!(
                f,
                "move group {group} ({}) from `{}` to `{}`",
                count(snapshots.len(), "snapshot"),
                ns_text(from),
                ns_text(to)
            ),
            Intent::MoveNamespace {
                from, to, groups, ..
            } => write!(
                f,
                "move namespace `{}` ({}) to `{}`",
                ns_text(from),
                count(groups.len(), "group"),
                ns_text(to)
            ),
            Intent::DestroyGroup {
                ns,
                group,
                snapshots,
            } => write!(
                f,
                "destroy group {group} in `{}` ({})",
                ns_text(ns),
                count(snapshots.len(), "snapshot")
            ),
            Intent::DestroyNamespace {
                ns,
                groups,
                snapshots,
                ..
            } => write!(
                f,
                "destroy namespace `{}` ({}, {})",
                ns_text(ns),
                count(groups.len(), "group"),
                count(snapshots.len(), "snapshot")
            ),
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

/// The journal of a store: `.keepsake/intents/` in the backend's host-local folder (the
/// datastore folder, or the cache of an S3 datastore), reached through that folder's
/// [`LocalBackend`], so that every file is opened beneath the datastore and no symbolic link is
/// ever followed. `None` for a backend without a host-local folder (a bare object store), which
/// cannot keep a journal.
pub(crate) struct Journal<'a> {
    local: &'a LocalBackend,
    folder: BackendPath,
}

impl<'a> Journal<'a> {
    pub(crate) fn of(store: &'a DataStore) -> Option<Self> {
        let local = store.backend().host_local()?;
        Some(Self {
            local,
            folder: BackendPath::new(JOURNAL_DIR).ok()?,
        })
    }

    fn file(&self, id: &str, suffix: &str) -> Result<BackendPath> {
        self.folder
            .join(&format!("{id}{suffix}"))
            .map_err(|source| self.error_at(id, source))
    }

    fn error_at(&self, name: &str, source: keepsake_backend::Error) -> Error {
        Error::Journal {
            path: self.local.local_path(&self.folder).join(name),
            source: io::Error::other(source),
        }
    }

    /// The full local path of an entry, for messages.
    pub(crate) fn local_path(&self, id: &str, suffix: &str) -> PathBuf {
        self.local
            .local_path(&self.folder)
            .join(format!("{id}{suffix}"))
    }

    /// The names in the journal folder; none when it does not exist.
    fn names(&self) -> Result<Vec<String>> {
        let listing = match self.local.list(&self.folder) {
            Ok(listing) => listing,
            Err(keepsake_backend::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.error_at("", e)),
        };
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| self.error_at("", e))?;
            if entry.kind == EntryKind::File {
                names.push(entry.name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The intent files, oldest first (ids sort by time).
    pub(crate) fn list(&self) -> Result<Vec<Listed>> {
        let mut found = Vec::new();
        for name in self.names()? {
            let Some(id) = name.strip_suffix(INTENT_SUFFIX) else {
                continue;
            };
            let intent = match self.local.read(&self.file(id, INTENT_SUFFIX)?) {
                Ok(contents) => String::from_utf8(contents.data)
                    .map_err(|_| "not UTF-8".to_owned())
                    .and_then(|t| Intent::decode(&t)),
                // Finished by its owner since the listing.
                Err(keepsake_backend::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.error_at(&name, e)),
            };
            found.push(Listed {
                id: id.to_owned(),
                intent,
            });
        }
        Ok(found)
    }

    /// The ids of intents recovery set aside as unreadable (`<id>.intent.bad`), oldest first.
    pub(crate) fn list_set_aside(&self) -> Result<Vec<String>> {
        Ok(self
            .names()?
            .into_iter()
            .filter_map(|name| {
                name.strip_suffix(BAD_SUFFIX)
                    .and_then(|n| n.strip_suffix(INTENT_SUFFIX))
                    .map(str::to_owned)
            })
            .collect())
    }

    /// Whether intent `id` is still there.
    pub(crate) fn has_intent(&self, id: &str) -> Result<bool> {
        self.local
            .exists(&self.file(id, INTENT_SUFFIX)?)
            .map_err(|e| self.error_at(id, e))
    }

    /// Whether the operation that wrote intent `id` is still running (its lock file is held),
    /// found without writing anything: the lock file is opened read-only (never created) and
    /// only tried.
    pub(crate) fn is_running(&self, id: &str) -> Result<bool> {
        let fd = match self.local.open_existing_file(&self.file(id, LOCK_SUFFIX)?) {
            Ok(fd) => fd,
            Err(keepsake_backend::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.error_at(id, e)),
        };
        match flock(&fd, FlockOperation::NonBlockingLockShared) {
            // Released when `fd` closes.
            Ok(()) => Ok(false),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
            Err(e) => Err(Error::Journal {
                path: self.local_path(id, LOCK_SUFFIX),
                source: e.into(),
            }),
        }
    }

    /// Takes the lock of intent `id` without waiting: `None` when its operation is still
    /// running.
    pub(crate) fn try_lock(&self, id: &str) -> Result<Option<IntentLock>> {
        let file = self.file(id, LOCK_SUFFIX)?;
        let fd = self
            .local
            .open_lock_file(&file)
            .map_err(|e| self.error_at(id, e))?;
        match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(IntentLock { fd, file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::Journal {
                path: self.local_path(id, LOCK_SUFFIX),
                source: e.into(),
            }),
        }
    }

    /// Writes intent `id` atomically (the backend's temp file, fsync per its sync level, rename).
    fn write(&self, id: &str, intent: &Intent) -> Result<()> {
        self.local
            .write(
                &self.file(id, INTENT_SUFFIX)?,
                intent.encode().as_bytes(),
                WriteMode::Replace,
            )
            .map(drop)
            .map_err(|e| self.error_at(id, e))
    }

    /// Removes intent `id` (done: nothing is left to recover).
    fn remove(&self, id: &str) -> Result<()> {
        match self.local.remove_file(&self.file(id, INTENT_SUFFIX)?) {
            Ok(()) | Err(keepsake_backend::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error_at(id, e)),
        }
    }

    /// Sets intent `id` aside as `<id>.intent.bad` (it does not parse).
    pub(crate) fn set_aside(&self, id: &str) -> Result<()> {
        let bad = self.file(id, &format!("{INTENT_SUFFIX}{BAD_SUFFIX}"))?;
        self.local
            .rename(&self.file(id, INTENT_SUFFIX)?, &bad)
            .map_err(|e| self.error_at(id, e))
    }

    /// Leftovers of writers killed between creating their lock (or temp file) and writing their
    /// intent, or between writing and renaming it: removed once their lock is free.
    pub(crate) fn remove_orphans(&self) {
        let Ok(names) = self.names() else {
            return;
        };
        for name in &names {
            if is_temporary_name(name) {
                // A temp file of an interrupted atomic write of an intent: its writer is gone
                // if the intent's lock is free.
                let id = name
                    .trim_start_matches('.')
                    .split(INTENT_SUFFIX)
                    .next()
                    .unwrap_or_default();
                if let Ok(Some(lock)) = self.try_lock(id) {
                    if let Ok(path) = self.folder.join(name) {
                        let _ = self.local.remove_file(&path);
                    }
                    lock.remove(self);
                }
                continue;
            }
            let Some(id) = name.strip_suffix(LOCK_SUFFIX) else {
                continue;
            };
            if names.contains(&format!("{id}{INTENT_SUFFIX}")) {
                continue;
            }
            if let Ok(Some(lock)) = self.try_lock(id) {
                if !self.has_intent(id).unwrap_or(true) {
                    lock.remove(self);
                }
            }
        }
    }
}

/// A held lock of one intent (an exclusive `flock` on `<id>.lock`); dropping it releases it.
#[derive(Debug)]
pub(crate) struct IntentLock {
    fd: OwnedFd,
    file: BackendPath,
}

impl IntentLock {
    /// Removes the lock file while still holding it, then releases it. Best effort: a lock file
    /// left behind is harmless (the next recovery removes it).
    fn remove(self, journal: &Journal<'_>) {
        let _ = journal.local.remove_lock_file(&self.file);
        drop(self.fd);
    }
}

/// One intent file of the journal, as listed (not locked).
#[derive(Debug)]
pub(crate) struct Listed {
    pub(crate) id: String,
    /// The parsed intent, or why it does not parse.
    pub(crate) intent: std::result::Result<Intent, String>,
}

/// A journal entry held by the running operation (or by the recovery that adopted it): the
/// intent file plus its held lock. Dropping it without [`finish`](Self::finish) releases the lock
/// and *keeps* the intent, so that the next recovery completes an operation that failed half-way.
#[derive(Debug)]
pub(crate) struct IntentGuard {
    /// The store whose journal holds the intent; `None` when it cannot keep one.
    store: Option<DataStore>,
    id: String,
    intent: Intent,
    lock: Option<IntentLock>,
}

impl IntentGuard {
    /// The recorded operation.
    pub(crate) fn intent(&self) -> &Intent {
        &self.intent
    }

    /// The journal id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Rewrites the intent with a new phase (atomically).
    pub(crate) fn set_phase(&mut self, new: Phase) -> Result<()> {
        match &mut self.intent {
            Intent::MoveSnapshot { phase, .. } => {
                if *phase == new {
                    return Ok(());
                }
                *phase = new;
            }
            _ => return Ok(()),
        }
        match self.store.as_ref().and_then(Journal::of) {
            Some(journal) => journal.write(&self.id, &self.intent),
            None => Ok(()),
        }
    }

    /// The operation is over (done, or found to need nothing more): removes the intent
    /// (durably), then the lock file.
    pub(crate) fn finish(mut self) -> Result<()> {
        let Some(store) = self.store.take() else {
            return Ok(());
        };
        let Some(journal) = Journal::of(&store) else {
            return Ok(());
        };
        journal.remove(&self.id)?;
        if let Some(lock) = self.lock.take() {
            lock.remove(&journal);
        }
        Ok(())
    }
}

/// Wraps an intent whose lock is held (recovery adopting it).
pub(crate) fn adopt(
    store: &DataStore,
    id: String,
    intent: Intent,
    lock: IntentLock,
) -> IntentGuard {
    IntentGuard {
        store: Some(store.clone()),
        id,
        intent,
        lock: Some(lock),
    }
}

/// Records `intent` before the operation changes anything, and holds its lock. The caller holds
/// every lock the operation needs already.
///
/// Idempotent: when the journal already holds the same intent, left by an interrupted run whose
/// lock is free, that entry is adopted instead of writing a second copy.
pub(crate) fn begin(store: &DataStore, intent: Intent) -> Result<IntentGuard> {
    let Some(journal) = Journal::of(store) else {
        // Nowhere to journal: the operation runs unjournaled.
        return Ok(IntentGuard {
            store: None,
            id: String::new(),
            intent,
            lock: None,
        });
    };
    for listed in journal.list()? {
        if listed.intent.as_ref() != Ok(&intent) {
            continue;
        }
        if let Some(lock) = journal.try_lock(&listed.id)? {
            // Still there under our lock (not finished by a recovery meanwhile)?
            if journal.has_intent(&listed.id)? {
                return Ok(adopt(store, listed.id, intent, lock));
            }
            lock.remove(&journal);
        }
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let pid = std::process::id();
    for attempt in 0u32..64 {
        // Fixed-width hex: names sort by time. The attempt number breaks ties.
        let id = format!("{nanos:024x}-{pid:08x}-{attempt:02x}");
        let Some(lock) = journal.try_lock(&id)? else {
            continue;
        };
        if journal.has_intent(&id)? {
            continue;
        }
        journal.write(&id, &intent)?;
        return Ok(IntentGuard {
            store: Some(store.clone()),
            id,
            intent,
            lock: Some(lock),
        });
    }
    Err(Error::Journal {
        path: journal.local_path("", ""),
        source: io::Error::new(io::ErrorKind::AlreadyExists, "no free intent id"),
    })
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
        let dir: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse().unwrap();
        round_trip(Intent::MoveSnapshot {
            from: root.clone(),
            to: ab.clone(),
            snapshot: dir.clone(),
            phase: Phase::Copy,
            created_group: true,
        });
        round_trip(Intent::MoveGroup {
            from: ab.clone(),
            to: root.clone(),
            group: "ct/7".parse().unwrap(),
            merge: false,
            snapshots: vec![
                "ct/7/2024-06-05T15:06:40Z".parse().unwrap(),
                "ct/7/2024-06-06T15:06:40Z".parse().unwrap(),
            ],
        });
        round_trip(Intent::MoveNamespace {
            from: ab.clone(),
            to: "c".parse().unwrap(),
            merge: true,
            namespaces: vec![ab.clone()],
            groups: vec!["ns/a/ns/b/vm/1".parse().unwrap()],
            snapshots: vec!["ns/a/ns/b/vm/1/2024-06-05T15:06:40Z".parse().unwrap()],
        });
        round_trip(Intent::DestroyGroup {
            ns: root.clone(),
            group: "host/x".parse().unwrap(),
            snapshots: Vec::new(),
        });
        round_trip(Intent::DestroyNamespace {
            ns: ab.clone(),
            groups: vec!["ns/a/ns/b/vm/100".parse().unwrap()],
            snapshots: vec!["ns/a/ns/b/vm/100/2024-06-05T15:06:40Z".parse().unwrap()],
            namespaces: vec![ab, "a/b/c".parse().unwrap()],
        });
    }

    #[test]
    fn damaged_intents_are_refused() {
        let good = Intent::DestroyNamespace {
            ns: "a".parse().unwrap(),
            groups: Vec::new(),
            snapshots: Vec::new(),
            namespaces: Vec::new(),
        }
        .encode();
        let truncated = &good[..good.len() - 4];
        assert!(Intent::decode(truncated).unwrap_err().contains("end"));
        assert!(Intent::decode("").is_err());
        assert!(Intent::decode(&good.replace("keepsake-intent 2", "keepsake-intent 9")).is_err());
        assert!(
            Intent::decode(&good.replace("keepsake-intent 2", "keepsake-intent 1"))
                .unwrap_err()
                .contains("format 1")
        );
        assert!(Intent::decode(&good.replace("destroy-namespace", "explode")).is_err());
        assert!(Intent::decode(&good.replace("ns a", "ns ../x")).is_err());
        assert!(Intent::decode(&format!("{good}op again\n")).is_err());
        let twice = good.replace("ns a\n", "ns a\nns b\n");
        assert!(Intent::decode(&twice).unwrap_err().contains("twice"));
        let bad_item = good.replace("ns a\n", "ns a\nsnapshot ns/../vm/1/2024-06-05T15:06:40Z\n");
        assert!(Intent::decode(&bad_item).is_err());
    }
}
