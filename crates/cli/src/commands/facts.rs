//! What listings show about groups and snapshots, in the JSON shapes of the PBS API (kebab-case).

use anyhow::Result;
use keepsake_datastore::{DataStore, Group, Snapshot};
use keepsake_hierarchy::{BackupNamespace, GroupFilter};
use serde::Serialize;

/// A snapshot as `snapshots` lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct SnapshotFacts {
    /// Namespace, name form (`""` for the root).
    pub(crate) ns: String,
    /// `vm`, `ct` or `host`.
    pub(crate) backup_type: String,
    /// The backup id.
    pub(crate) backup_id: String,
    /// Epoch seconds.
    pub(crate) backup_time: i64,
    /// `type/id/time`.
    pub(crate) snapshot: String,
    /// The snapshot's files, as PBS's API lists them: the archives the manifest names, then the
    /// manifest itself (without a readable manifest: the files in the folder, sorted).
    pub(crate) files: Vec<FileFacts>,
    /// `.protected` exists.
    pub(crate) protected: bool,
    /// The manifest exists.
    pub(crate) finished: bool,
    /// Sum of the archive sizes the manifest lists; `null` without a readable manifest.
    pub(crate) size: Option<u64>,
    /// The first line of the notes (PBS's `comment`); `null` without notes.
    pub(crate) comment: Option<String>,
    /// The last recorded verification; `null` if never verified (or unfinished).
    pub(crate) verify_state: Option<Verification>,
}

/// One file of a snapshot, in the shape of PBS's API (`BackupContent`): `snapshots[].files` and
/// `show.files` use it both.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct FileFacts {
    /// The file name (`root.pxar.didx`, `index.json.blob`).
    pub(crate) filename: String,
    /// `none`, `encrypt` or `sign-only`; `null` when no manifest says.
    pub(crate) crypt_mode: Option<String>,
    /// The size the manifest records (for an index: of the archive it describes); `null` when
    /// no manifest says.
    pub(crate) size: Option<u64>,
    /// The SHA-256 the manifest records, in hex; `null` when no manifest says (and for the
    /// manifest itself).
    pub(crate) csum: Option<String>,
}

/// A recorded verification (PBS's `SnapshotVerifyState`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Verification {
    /// `ok` or `failed`.
    pub(crate) state: String,
    /// The task that recorded it.
    pub(crate) upid: String,
}

impl Verification {
    /// The manifest's `verify_state`, if it has a readable one.
    pub(crate) fn of(manifest: &keepsake_manifest::manifest::BackupManifest) -> Option<Self> {
        use keepsake_manifest::manifest::VerifyOutcome;
        manifest
            .verify_state()
            .ok()
            .flatten()
            .map(|v| Verification {
                state: match v.state {
                    VerifyOutcome::Ok => "ok",
                    VerifyOutcome::Failed => "failed",
                }
                .to_owned(),
                upid: v.upid,
            })
    }
}

/// How the listings and `verify` name a snapshot or group: `vm/100/…` when everything shown is
/// in one namespace (the one of --ns), else with its namespace path (`ns/prod/vm/101/…`, as in
/// the datastore and as every command takes it).
pub(crate) fn shown_name(ns: &BackupNamespace, name: &str, with_ns: WithNs) -> String {
    match with_ns {
        WithNs::Yes if !ns.is_root() => {
            let mut path = String::new();
            for component in ns.components() {
                path.push_str("ns/");
                path.push_str(component);
                path.push('/');
            }
            path.push_str(name);
            path
        }
        _ => name.to_owned(),
    }
}

/// Whether [`shown_name`] puts the namespace path before the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WithNs {
    /// Everything shown is in --ns: plain names.
    No,
    /// Several namespaces (or not --ns's): namespace paths.
    Yes,
}

impl WithNs {
    /// `Yes` when some of `namespaces` is not `anchor`.
    pub(crate) fn unless_all_in<'a>(
        anchor: &BackupNamespace,
        mut namespaces: impl Iterator<Item = &'a BackupNamespace>,
    ) -> Self {
        if namespaces.all(|ns| ns == anchor) {
            WithNs::No
        } else {
            WithNs::Yes
        }
    }
}

/// The manifest's name in a snapshot folder.
const MANIFEST_NAME: &str = "index.json.blob";

impl SnapshotFacts {
    /// Reads the facts of one snapshot (a manifest that cannot be read only loses the size).
    pub(crate) fn read(snapshot: &Snapshot) -> Result<Self> {
        let info = snapshot.info()?;
        let finished = info.is_finished();
        let manifest = if finished {
            match snapshot.load_manifest() {
                Ok(manifest) => Some(manifest),
                Err(e) => {
                    tracing::warn!(snapshot = %snapshot.relative_path(), error = %e, "manifest unreadable");
                    None
                }
            }
        } else {
            None
        };
        let (files, size, comment, verify_state) = match &manifest {
            Some(manifest) => {
                let mut files: Vec<FileFacts> = manifest
                    .files()
                    .iter()
                    .map(|f| FileFacts {
                        filename: f.filename().to_owned(),
                        crypt_mode: Some(f.crypt_mode().to_string()),
                        size: Some(f.size()),
                        csum: Some(f.csum().iter().map(|b| format!("{b:02x}")).collect()),
                    })
                    .collect();
                // As PBS lists it: signed when the manifest carries a signature.
                files.push(FileFacts {
                    filename: MANIFEST_NAME.to_owned(),
                    crypt_mode: Some(
                        if manifest.signature().is_some() {
                            "sign-only"
                        } else {
                            "none"
                        }
                        .to_owned(),
                    ),
                    size: None,
                    csum: None,
                });
                let comment = manifest
                    .notes()
                    .ok()
                    .flatten()
                    .and_then(|n| n.lines().next())
                    .map(str::to_owned)
                    .filter(|line| !line.is_empty());
                (
                    files,
                    Some(manifest.files().iter().map(|f| f.size()).sum()),
                    comment,
                    Verification::of(manifest),
                )
            }
            None => {
                let mut names = info.files;
                names.sort();
                let files = names
                    .into_iter()
                    .map(|filename| FileFacts {
                        filename,
                        crypt_mode: None,
                        size: None,
                        csum: None,
                    })
                    .collect();
                (files, None, None, None)
            }
        };
        let dir = snapshot.dir();
        Ok(Self {
            ns: snapshot.ns().to_string(),
            backup_type: dir.group().ty().to_string(),
            backup_id: dir.group().id().to_string(),
            backup_time: dir.time().epoch(),
            snapshot: dir.to_string(),
            files,
            protected: info.protected,
            finished,
            size,
            comment,
            verify_state,
        })
    }

    /// The snapshot time as its folder name.
    pub(crate) fn time_text(&self) -> String {
        self.snapshot
            .rsplit('/')
            .next()
            .unwrap_or(&self.snapshot)
            .to_owned()
    }
}

/// A group as `groups` lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct GroupFacts {
    /// Namespace, name form (`""` for the root).
    pub(crate) ns: String,
    /// `vm`, `ct` or `host`.
    pub(crate) backup_type: String,
    /// The backup id.
    pub(crate) backup_id: String,
    /// The owner; `null` when the owner file is missing or invalid.
    pub(crate) owner: Option<String>,
    /// How many snapshots (finished or not).
    pub(crate) backup_count: u64,
    /// Epoch seconds of the newest finished snapshot, or `null`.
    pub(crate) last_backup: Option<i64>,
}

impl GroupFacts {
    /// Reads the facts of one group, and its snapshots (sorted oldest first) for callers that
    /// show them.
    pub(crate) fn read(group: &Group) -> Result<(Self, Vec<SnapshotFacts>)> {
        let owner = match group.owner() {
            Ok(owner) => Some(owner.to_string()),
            Err(e) => {
                tracing::warn!(group = %group.relative_path(), error = %e, "no valid owner");
                None
            }
        };
        let snapshots = snapshots_of(group)?;
        let last_backup = snapshots
            .iter()
            .filter(|s| s.finished)
            .map(|s| s.backup_time)
            .max();
        let name = group.name();
        Ok((
            Self {
                ns: group.ns().to_string(),
                backup_type: name.ty().to_string(),
                backup_id: name.id().to_string(),
                owner,
                backup_count: snapshots.len() as u64,
                last_backup,
            },
            snapshots,
        ))
    }

    /// `type/id`.
    pub(crate) fn group_text(&self) -> String {
        format!("{}/{}", self.backup_type, self.backup_id)
    }
}

/// The snapshots of a group, oldest first; entries that do not parse are logged and skipped.
pub(crate) fn snapshots_of(group: &Group) -> Result<Vec<SnapshotFacts>> {
    let mut handles = Vec::new();
    for snapshot in group.iter_snapshots()? {
        match snapshot {
            Ok(s) => handles.push(s),
            Err(e) => tracing::warn!(error = %e, "skipping an entry that is not a snapshot"),
        }
    }
    handles.sort_by_key(|s| s.dir().time());
    handles.iter().map(SnapshotFacts::read).collect()
}

/// The groups of a namespace that pass `filters`, sorted by type and id; entries that do not
/// parse are logged and skipped.
pub(crate) fn groups_of(
    store: &DataStore,
    ns: &BackupNamespace,
    filters: &[GroupFilter],
) -> Result<Vec<Group>> {
    let mut groups = Vec::new();
    for group in store.iter_groups(ns)? {
        match group {
            Ok(g) if g.matches(filters) => groups.push(g),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "skipping an entry that is not a group"),
        }
    }
    groups.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(groups)
}

/// `anchor` and (if `recursive`) every namespace below it, sorted by name.
pub(crate) fn namespaces(
    store: &DataStore,
    anchor: &BackupNamespace,
    recursive: bool,
) -> Result<Vec<BackupNamespace>> {
    if !recursive {
        return Ok(vec![anchor.clone()]);
    }
    namespaces_below(store, anchor, None)
}

/// `anchor` and the namespaces below it, at most `max_depth` levels down (all without one),
/// sorted.
pub(crate) fn namespaces_below(
    store: &DataStore,
    anchor: &BackupNamespace,
    max_depth: Option<usize>,
) -> Result<Vec<BackupNamespace>> {
    let mut all = Vec::new();
    for ns in store.iter_namespaces_recursive(anchor, max_depth)? {
        match ns {
            Ok(ns) => all.push(ns),
            Err(e) => tracing::warn!(error = %e, "skipping an entry that is not a namespace"),
        }
    }
    all.sort();
    Ok(all)
}
