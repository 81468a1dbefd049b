//! `fsck`: finds, and on request mends, what crashes and other tools leave in a datastore.
//!
//! What it looks at, and what `repair` does about it:
//!
//! | finding | repair |
//! |---|---|
//! | temporary files of atomic writes (keepsake's `.<name>.tmp_*`, PBS's `<name>.tmp_XXXXXX`) in group and snapshot folders | removed, under the group lock, or the snapshot and manifest locks (taken without waiting; busy means in use: left) |
//! | interrupted operations in the intent journal | [`DataStore::recover`] |
//! | lock files of the store's scheme nobody holds ([`FsckOptions::sweep_lock_files`]; other entries of the lock folder are never touched, and a lock root that overlaps the datastore is refused) | removed while held exclusively (taken without waiting), the order that keeps other lockers' double-stat check sound |
//! | empty groups (no snapshot folder) | the group folder, owner and notes removed under the group lock |
//! | groups without an owner file | report only |
//! | unfinished snapshots (no manifest) whose backup time is older than [`FsckOptions::unfinished_older_than`] | report only |
//! | differences between the S3 bucket and the local cache ([`FsckOptions::cache`]) | [`DataStore::refresh_cache`] |
//!
//! It never removes a snapshot folder, a manifest, or a `.protected` marker.

use std::path::PathBuf;
#[cfg(feature = "s3")]
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[cfg(feature = "s3")]
use keepsake_backend::CachedBackend;
use keepsake_backend::{EntryKind, is_temporary_name};
use keepsake_hierarchy::{BackupNamespace, BackupTime};
use keepsake_lock::{SweepMode, SweepOptions, sweep_lock_folder};

use crate::error::{Error, Result};
use crate::group::Group;
use crate::recover::{InterruptedIntent, RecoveryReport};
#[cfg(feature = "s3")]
use crate::refresh::{CacheCheck, CacheRefresh, CacheReport};
use crate::store::{DataStore, path};

/// What [`DataStore::fsck`] checks and whether it mends.
#[derive(Debug, Clone, Default)]
pub struct FsckOptions {
    /// Mend what can be mended (see [`DataStore::fsck`]); without it, fsck only reports.
    pub repair: bool,
    /// Report unfinished snapshots whose backup time is older than this (`None`: do not report).
    pub unfinished_older_than: Option<Duration>,
    /// Sweep this datastore's lock folder (`<lock root>/<store>`) for lock files nobody holds
    /// ([`keepsake_lock::sweep_lock_folder`] with the store's lock root and scheme): only names
    /// the scheme produces are candidates, and a lock root that overlaps the datastore is
    /// refused before anything is checked or changed.
    pub sweep_lock_files: bool,
    /// The cached S3 backend the store was built with: compare bucket and cache (by size).
    #[cfg(feature = "s3")]
    pub cache: Option<Arc<CachedBackend>>,
}

/// What [`DataStore::fsck`] found and did. Paths are relative to the datastore (lock files:
/// absolute).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct FsckReport {
    /// Temporary files found.
    pub temp_files: Vec<String>,
    /// Temporary files left because their group or snapshot was locked (in use).
    pub temp_files_in_use: Vec<String>,
    /// Lock files nobody held when checked.
    pub unused_lock_files: Vec<PathBuf>,
    /// Entries of the lock folder that are not lock files of the scheme (PBS's `move-journal`,
    /// anything else): never touched.
    pub foreign_lock_entries: Vec<PathBuf>,
    /// Groups without a snapshot folder.
    pub empty_groups: Vec<String>,
    /// Groups whose owner file is missing or unreadable (report only).
    pub groups_without_owner: Vec<String>,
    /// Unfinished snapshots older than the given age (report only).
    pub old_unfinished_snapshots: Vec<String>,
    /// Interrupted operations found in the journal (without `repair`).
    pub interrupted: Vec<InterruptedIntent>,
    /// Intents set aside as unreadable (`<id>.intent.bad`): never completed, for an operator to
    /// check and delete (report only; they stay until then).
    pub set_aside_intents: Vec<PathBuf>,
    /// What recovery did (with `repair`).
    pub recovery: Option<RecoveryReport>,
    /// Differences between bucket and cache (when a cache was given).
    #[cfg(feature = "s3")]
    pub cache: Option<CacheReport>,
    /// The cache refresh (with `repair`, when the cache differed).
    #[cfg(feature = "s3")]
    pub cache_refresh: Option<CacheRefresh>,
    /// What was mended, one line each.
    pub repaired: Vec<String>,
    /// What could not be checked or mended, one line each (fsck goes on after these).
    pub errors: Vec<String>,
}

impl FsckReport {
    /// Whether nothing was found that fsck would mend or report.
    pub fn is_clean(&self) -> bool {
        self.temp_files.is_empty()
            && self.unused_lock_files.is_empty()
            && self.empty_groups.is_empty()
            && self.groups_without_owner.is_empty()
            && self.old_unfinished_snapshots.is_empty()
            && self.interrupted.is_empty()
            && self.set_aside_intents.is_empty()
            && self.recovery.as_ref().is_none_or(RecoveryReport::is_empty)
            && self.cache_is_consistent()
            && self.errors.is_empty()
    }

    #[cfg(feature = "s3")]
    fn cache_is_consistent(&self) -> bool {
        self.cache.as_ref().is_none_or(CacheReport::is_consistent)
    }

    #[cfg(not(feature = "s3"))]
    fn cache_is_consistent(&self) -> bool {
        true
    }
}

impl DataStore {
    /// Checks the datastore for leftovers of crashes and other tools, and with
    /// [`FsckOptions::repair`] mends them. Errors on single items are collected in
    /// [`FsckReport::errors`] and the walk goes on. It never removes a snapshot folder, a manifest
    /// or a `.protected` marker.
    ///
    /// | finding | repair |
    /// |---|---|
    /// | temporary files of atomic writes (keepsake's `.<name>.tmp_*`, PBS's `<name>.tmp_XXXXXX`) in group and snapshot folders | removed, under the group lock, or the snapshot and manifest locks (taken without waiting; busy means in use: left) |
    /// | interrupted operations in the intent journal | [`DataStore::recover`] |
    /// | lock files of the store's scheme nobody holds ([`FsckOptions::sweep_lock_files`]; other entries of the lock folder are never touched, and a lock root that overlaps the datastore is refused) | removed while held exclusively (taken without waiting), the order that keeps other lockers' double-stat check sound |
    /// | empty groups (no snapshot folder) | the group folder, owner and notes removed under the group lock |
    /// | groups without an owner file | report only |
    /// | unfinished snapshots (no manifest) whose backup time is older than [`FsckOptions::unfinished_older_than`] | report only |
    /// | differences between the S3 bucket and the local cache ([`FsckOptions::cache`]) | [`DataStore::refresh_cache`] |
    ///
    ///
    /// ```
    /// use keepsake_datastore::{DataStore, FsckOptions};
    /// use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DataStore::builder("store1", dir.path().join("store1"))
    ///     .lock_root(dir.path().join("locks"))
    ///     .chunk_prefix_dirs(false)
    ///     .create()?;
    /// let group = store.group(&BackupNamespace::root(), &"vm/100".parse::<BackupGroup>()?);
    /// group.create_locked(&"root@pam".parse::<Authid>()?)?; // a group, never backed up
    /// let report = store.fsck(&FsckOptions::default())?;
    /// assert_eq!(report.empty_groups, ["vm/100"]);
    /// let repair = FsckOptions { repair: true, ..Default::default() };
    /// store.fsck(&repair)?;
    /// assert!(!group.exists()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Only when the namespaces cannot be listed at all, or the journal cannot be read.
    pub fn fsck(&self, options: &FsckOptions) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        // The lock root is checked before anything else: one that overlaps the datastore
        // refuses the whole run, with nothing changed.
        // (A lock root that does not exist holds no lock file to sweep.)
        let sweep = if let (true, Some((lock_root, scheme))) = (
            options.sweep_lock_files,
            self.lock_files().filter(|(r, _)| r.exists()),
        ) {
            let sweep = SweepOptions::new(lock_root, self.name(), self.path().unwrap_or(lock_root))
                .scheme(scheme);
            sweep_lock_folder(&sweep).map_err(|source| Error::LockRoot {
                lock_root: lock_root.to_owned(),
                source,
            })?;
            Some(sweep)
        } else {
            None
        };
        // Interrupted operations first: their completion may be what empties a group.
        if options.repair {
            report.recovery = Some(self.recover()?);
        } else {
            // Interrupted only: an operation still running (its intent lock held) is not.
            report.interrupted = self.interrupted_intents()?;
        }
        report.set_aside_intents = self.set_aside_intents()?;
        let namespaces: Vec<BackupNamespace> = self
            .iter_namespaces_recursive(&BackupNamespace::root(), None)?
            .filter_map(|n| match n {
                Ok(n) => Some(n),
                Err(e) => {
                    report.errors.push(format!("namespace: {e}"));
                    None
                }
            })
            .collect();
        let cutoff = options.unfinished_older_than.and_then(|age| {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()?
                .as_secs();
            i64::try_from(now.saturating_sub(age.as_secs())).ok()
        });
        for ns in &namespaces {
            let groups = match self.iter_groups(ns) {
                Ok(groups) => groups,
                Err(e) => {
                    report.errors.push(format!("groups of `{ns}`: {e}"));
                    continue;
                }
            };
            for group in groups {
                match group {
                    Ok(group) => self.fsck_group(&group, options, cutoff, &mut report),
                    Err(e) => report.errors.push(format!("group in `{ns}`: {e}")),
                }
            }
        }
        if let Some(sweep) = sweep {
            let mode = if options.repair {
                SweepMode::Remove
            } else {
                SweepMode::ReportOnly
            };
            match sweep_lock_folder(&sweep.mode(mode)) {
                Ok(swept) => {
                    if options.repair {
                        report.repaired.extend(
                            swept
                                .free_lock_files
                                .iter()
                                .map(|p| format!("removed unused lock file {}", p.display())),
                        );
                    }
                    report.unused_lock_files = swept.free_lock_files;
                    report.foreign_lock_entries = swept.foreign_entries;
                    report
                        .errors
                        .extend(swept.errors.iter().map(|e| crate::error::chain(e)));
                }
                Err(e) => report.errors.push(crate::error::chain(&e)),
            }
        }
        #[cfg(feature = "s3")]
        if let Some(cached) = &options.cache {
            let check = self.check_cache(cached, CacheCheck::Sizes)?;
            if options.repair && !check.is_consistent() {
                let refresh = self.refresh_cache(cached)?;
                report
                    .repaired
                    .push(format!("cache refreshed from the bucket: {refresh:?}"));
                report.cache_refresh = Some(refresh);
            }
            report.cache = Some(check);
        }
        Ok(report)
    }

    fn fsck_group(
        &self,
        group: &Group,
        options: &FsckOptions,
        cutoff: Option<i64>,
        report: &mut FsckReport,
    ) {
        let rel = group.relative_path();
        let entries = match path(&rel).and_then(|p| {
            self.backend()
                .list(&p)
                .map_err(|e| Error::from_backend("group", &rel, e))
        }) {
            Ok(listing) => listing.filter_map(|e| e.ok()).collect::<Vec<_>>(),
            Err(e) => {
                report.errors.push(format!("{rel}: {e}"));
                return;
            }
        };
        let mut group_temp = Vec::new();
        let mut has_snapshot = false;
        for entry in &entries {
            match entry.kind {
                EntryKind::File if is_temporary_name(&entry.name) => {
                    group_temp.push(entry.name.clone());
                }
                EntryKind::Dir => has_snapshot = true,
                _ => {}
            }
        }
        match group.owner() {
            Ok(_) => {}
            Err(Error::NotFound { .. } | Error::Invalid(_) | Error::Corrupt { .. }) => {
                report.groups_without_owner.push(rel.clone());
            }
            Err(e) => report.errors.push(format!("owner of {rel}: {e}")),
        }
        // Group-level temporary files are written under the group lock (owner, notes).
        if !group_temp.is_empty() {
            report
                .temp_files
                .extend(group_temp.iter().map(|n| format!("{rel}/{n}")));
            if options.repair {
                match group.lock() {
                    Ok(_guard) => {
                        for name in &group_temp {
                            self.remove_temp(&format!("{rel}/{name}"), report);
                        }
                    }
                    Err(_) => report
                        .temp_files_in_use
                        .extend(group_temp.iter().map(|n| format!("{rel}/{n}"))),
                }
            }
        }
        let snapshots = match group.list_backups() {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(format!("snapshots of {rel}: {e}"));
                return;
            }
        };
        for info in &snapshots {
            let snapshot = self.snapshot(group.ns(), &info.snapshot);
            let srel = snapshot.relative_path();
            if let Some(cutoff) = cutoff {
                if info.snapshot.time()
                    < BackupTime::from_epoch(cutoff).unwrap_or(info.snapshot.time())
                    && !info.is_finished()
                {
                    report.old_unfinished_snapshots.push(srel.clone());
                }
            }
            // (`BackupInfo::files` leaves hidden names out: list the folder itself.)
            let temp: Vec<String> = match path(&srel).and_then(|p| {
                self.backend()
                    .list(&p)
                    .map_err(|e| Error::from_backend("snapshot", &srel, e))
            }) {
                Ok(listing) => listing
                    .filter_map(|e| e.ok())
                    .filter(|e| e.kind == EntryKind::File && is_temporary_name(&e.name))
                    .map(|e| e.name)
                    .collect(),
                Err(e) => {
                    report.errors.push(format!("{srel}: {e}"));
                    continue;
                }
            };
            if temp.is_empty() {
                continue;
            }
            report
                .temp_files
                .extend(temp.iter().map(|n| format!("{srel}/{n}")));
            if !options.repair {
                continue;
            }
            // Manifest and blob writes hold the snapshot lock (writers) or the manifest lock
            // (updates): both must be free.
            let locks = snapshot
                .lock()
                .and_then(|s| snapshot.lock_manifest(Duration::ZERO).map(|m| (s, m)));
            match locks {
                Ok(_guards) => {
                    for name in &temp {
                        self.remove_temp(&format!("{srel}/{name}"), report);
                    }
                }
                Err(_) => report
                    .temp_files_in_use
                    .extend(temp.iter().map(|n| format!("{srel}/{n}"))),
            }
        }
        if !has_snapshot && snapshots.is_empty() {
            report.empty_groups.push(rel.clone());
            if options.repair {
                match group.lock() {
                    // Checked again under the lock: a backup may have started meanwhile.
                    Ok(guard) => match group.remove_folder(guard) {
                        Ok(true) => report.repaired.push(format!("removed empty group {rel}")),
                        Ok(false) => {}
                        Err(e) => report.errors.push(format!("removing {rel}: {e}")),
                    },
                    Err(e) => report.errors.push(format!("empty group {rel}: {e}")),
                }
            }
        }
    }

    fn remove_temp(&self, rel: &str, report: &mut FsckReport) {
        let result = path(rel).and_then(|p| {
            self.backend()
                .remove_file(&p)
                .map_err(|e| Error::backend(rel, e))
        });
        match result {
            Ok(()) => report
                .repaired
                .push(format!("removed temporary file {rel}")),
            Err(e) => report.errors.push(format!("removing {rel}: {e}")),
        }
    }
}
