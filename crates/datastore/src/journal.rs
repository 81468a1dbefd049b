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
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace, GroupPath, SnapshotPath};
use keepsake_lock::{ExclusiveGuard, FileOwner, LockFile};

use crate::error::{Error, Result};
use crate::store::DataStore;

/// The journal folder, relative to the datastore folder.
pub const JOURNAL_DIR: &str = ".keepsake/intents";
/// First line of every intent file: format name and version. Version 1 intents (which did not
/// name the snapshots they announced) are not recovered: recovery sets them aside as unreadable.
pub const INTENT_HEADER: &str = "keepsake-intent 2";
pub(crate) const INTENT_SUFFIX: &str = ".intent";
pub(crate) const LOCK_SUFFIX: &str = ".lock";
pub(crate) const TEMP_SUFFIX: &str = ".tmp";
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
        // Every item of a list key, parsed with `parse`.
        fn items<T>(
            fields: &[(&str, &str)],
            key: &str,
            parse: impl Fn(&str) -> std::result::Result<T, keepsake_hierarchy::Error>,
        ) -> std::result::Result<Vec<T>, String> {
            fields
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| parse(v).map_err(|e| format!("`{key}` {v:?}: {e}")))
                .collect()
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

/// A journal entry held by the running operation (or by the recovery that adopted it): the
/// intent file plus its held lock. Dropping it without [`finish`](Self::finish) releases the lock
/// and *keeps* the intent, so that the next recovery completes an operation that failed half-way.
#[derive(Debug)]
pub(crate) struct IntentGuard {
    dir: PathBuf,
    id: String,
    intent: Intent,
    lock: Option<ExclusiveGuard>,
    owner: Option<FileOwner>,
    /// False when the backend has no host-local folder to journal in.
    enabled: bool,
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
        if !self.enabled {
            return Ok(());
        }
        write_atomic(
            &self.dir,
            &format!("{}{INTENT_SUFFIX}", self.id),
            self.intent.encode().as_bytes(),
            self.owner,
        )
        .map_err(|source| Error::Journal {
            path: self.dir.join(&self.id),
            source,
        })
    }

    /// The operation is over (done, or found to need nothing more): removes the intent
    /// (durably), then the lock file.
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
pub(crate) fn journal_dir(store: &DataStore) -> Option<PathBuf> {
    store
        .backend()
        .host_local()
        .map(|local| local.root().join(JOURNAL_DIR))
}

/// One intent file of the journal, as listed (not locked).
#[derive(Debug)]
pub(crate) struct Listed {
    pub(crate) id: String,
    /// The parsed intent, or why it does not parse.
    pub(crate) intent: std::result::Result<Intent, String>,
}

/// The intent files of the journal, oldest first (ids sort by time). A missing journal is empty.
pub(crate) fn list(dir: &Path) -> Result<Vec<Listed>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Journal {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Journal {
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(INTENT_SUFFIX) else {
            continue;
        };
        let intent = match fs::read(entry.path()) {
            Ok(bytes) => String::from_utf8(bytes)
                .map_err(|_| "not UTF-8".to_owned())
                .and_then(|t| Intent::decode(&t)),
            // Finished by its owner since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Journal {
                    path: entry.path(),
                    source,
                });
            }
        };
        found.push(Listed {
            id: id.to_owned(),
            intent,
        });
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// Whether the operation that wrote intent `id` is still running (its lock file is held), found
/// without writing anything: the lock file is opened read-only (never created) and only tried.
pub(crate) fn is_running(dir: &Path, id: &str) -> Result<bool> {
    let path = dir.join(format!("{id}{LOCK_SUFFIX}"));
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(Error::Journal { path, source }),
    };
    use rustix::fs::{FlockOperation, flock};
    match flock(&file, FlockOperation::NonBlockingLockShared) {
        // Released when `file` closes at the end of this function.
        Ok(()) => Ok(false),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
        Err(e) => Err(Error::Journal {
            path,
            source: e.into(),
        }),
    }
}

/// Takes the lock of intent `id` without waiting: `None` when its operation is still running.
/// A lock file this creates gets `owner`.
pub(crate) fn try_lock(
    dir: &Path,
    id: &str,
    owner: Option<FileOwner>,
) -> Result<Option<ExclusiveGuard>> {
    let mut file = LockFile::new(dir.join(format!("{id}{LOCK_SUFFIX}")));
    if let Some(owner) = owner {
        file = file.owner(owner);
    }
    match file.lock_exclusive(Duration::ZERO) {
        Ok(lock) => Ok(Some(lock)),
        Err(e) if e.is_busy() => Ok(None),
        Err(e) => Err(Error::lock("intent", id.to_owned(), e)),
    }
}

/// Wraps an intent whose lock is held (recovery adopting it).
pub(crate) fn adopt(
    store: &DataStore,
    dir: &Path,
    id: String,
    intent: Intent,
    lock: ExclusiveGuard,
) -> IntentGuard {
    IntentGuard {
        dir: dir.to_owned(),
        id,
        intent,
        lock: Some(lock),
        owner: store.file_owner(),
        enabled: true,
    }
}

/// Records `intent` before the operation changes anything, and holds its lock. The caller holds
/// every lock the operation needs already.
///
/// Idempotent: when the journal already holds the same intent, left by an interrupted run whose
/// lock is free, that entry is adopted instead of writing a second copy.
pub(crate) fn begin(store: &DataStore, intent: Intent) -> Result<IntentGuard> {
    let Some(dir) = journal_dir(store) else {
        // Nowhere to journal: the operation runs unjournaled.
        return Ok(IntentGuard {
            dir: PathBuf::new(),
            id: String::new(),
            intent,
            lock: None,
            owner: None,
            enabled: false,
        });
    };
    let journal_error = |path: &Path, source| Error::Journal {
        path: path.to_owned(),
        source,
    };
    let owner = store.file_owner();
    for listed in list(&dir)? {
        if listed.intent.as_ref() != Ok(&intent) {
            continue;
        }
        if let Some(lock) = try_lock(&dir, &listed.id, owner)? {
            // Still there under our lock (not finished by a recovery meanwhile)?
            if dir.join(format!("{}{INTENT_SUFFIX}", listed.id)).exists() {
                return Ok(adopt(store, &dir, listed.id, intent, lock));
            }
        }
    }
    create_journal_dir(&dir, owner).map_err(|e| journal_error(&dir, e))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let pid = std::process::id();
    for attempt in 0u32..64 {
        // Fixed-width hex: names sort by time. The attempt number breaks ties.
        let id = format!("{nanos:024x}-{pid:08x}-{attempt:02x}");
        let Some(lock) = try_lock(&dir, &id, owner)? else {
            continue;
        };
        let file = dir.join(format!("{id}{INTENT_SUFFIX}"));
        if file.exists() {
            continue;
        }
        write_atomic(
            &dir,
            &format!("{id}{INTENT_SUFFIX}"),
            intent.encode().as_bytes(),
            owner,
        )
        .map_err(|e| journal_error(&file, e))?;
        return Ok(IntentGuard {
            dir,
            id,
            intent,
            lock: Some(lock),
            owner,
            enabled: true,
        });
    }
    Err(Error::Journal {
        path: dir,
        source: io::Error::new(io::ErrorKind::AlreadyExists, "no free intent id"),
    })
}

/// Makes the journal folder (and `.keepsake` above it), giving new folders `owner`.
fn create_journal_dir(dir: &Path, owner: Option<FileOwner>) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_owned());
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    fs::create_dir_all(dir)?;
    if let Some(owner) = owner {
        for folder in missing {
            std::os::unix::fs::chown(&folder, Some(owner.uid), Some(owner.gid))?;
        }
    }
    Ok(())
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8], owner: Option<FileOwner>) -> io::Result<()> {
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    {
        let mut file = File::create(&temp)?;
        if let Some(owner) = owner {
            std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&temp, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
