//! `keepsake fsck [--repair]`: what crashes and other tools leave in a datastore, found and (with
//! `--repair`) mended by `DataStore::fsck`; one line per finding and per repair, a summary, and
//! exit code 1 while something remains.

use std::process::ExitCode;

use anyhow::{Context, Result};
use keepsake_datastore::{CacheDifferenceKind, FsckOptions, FsckReport, RecoveryOutcome};
use serde::Serialize;

use super::Ctx;
use super::change::plural;
use crate::cli::Age;
use crate::error::{EXIT_FAILURE, UsageError};

/// One difference between the bucket and the local cache.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct CacheDiff {
    /// The file, relative to the datastore.
    path: String,
    /// `only-in-bucket`, `only-in-cache`, `size-differs` or `content-differs`.
    kind: &'static str,
    /// Size in the cache (`size-differs` only).
    cache_size: Option<u64>,
    /// Size in the bucket (`size-differs` only).
    bucket_size: Option<u64>,
}

/// The `--json` document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct FsckDoc {
    /// The datastore name.
    store: String,
    /// Whether `--repair` was given.
    repair: bool,
    /// Temporary files of atomic writes (`.<name>.tmp_*`), relative to the datastore.
    temp_files: Vec<String>,
    /// Those of them left because their group or snapshot was in use.
    temp_files_in_use: Vec<String>,
    /// PBS 4 lock files nobody held (absolute paths). They do not make `clean` false.
    unused_lock_files: Vec<String>,
    /// Groups without a snapshot folder.
    empty_groups: Vec<String>,
    /// Groups whose owner file is missing or unreadable (report only).
    groups_without_owner: Vec<String>,
    /// Unfinished snapshots older than `--unfinished-older-than` (report only).
    old_unfinished_snapshots: Vec<String>,
    /// Interrupted operations found in the intent journal.
    interrupted: Vec<String>,
    /// Journal entries set aside as unreadable (`<id>.intent.bad`): never completed; check the
    /// datastore, then delete them. They count as remaining until then.
    set_aside_intents: Vec<String>,
    /// Whether bucket and cache were compared (S3 datastores).
    cache_checked: bool,
    /// Differences between bucket and cache.
    cache_differences: Vec<CacheDiff>,
    /// What was mended, one line each.
    repaired: Vec<String>,
    /// What could not be checked or mended, one line each.
    errors: Vec<String>,
    /// Findings (and errors) that remain after this run.
    remaining: usize,
    /// Nothing remains: nothing was found, or everything found was mended.
    clean: bool,
}

fn cache_diff(path: &str, kind: &CacheDifferenceKind) -> CacheDiff {
    let (kind, cache_size, bucket_size) = match kind {
        CacheDifferenceKind::OnlyInBucket => ("only-in-bucket", None, None),
        CacheDifferenceKind::OnlyInCache => ("only-in-cache", None, None),
        CacheDifferenceKind::SizeDiffers { cache, bucket } => {
            ("size-differs", Some(*cache), Some(*bucket))
        }
        CacheDifferenceKind::ContentDiffers => ("content-differs", None, None),
        _ => ("differs", None, None),
    };
    CacheDiff {
        path: path.to_owned(),
        kind,
        cache_size,
        bucket_size,
    }
}

/// The library's repair line for the cache refresh (its text is a debug dump): replaced by ours.
const LIB_CACHE_REFRESHED: &str = "cache refreshed from the bucket";
/// The library's repair line for a removed lock file: summarised in text output.
const LIB_LOCK_REMOVED: &str = "removed unused lock file ";

/// The report as the `--json` document; the remaining count decides the exit code.
fn document(store: &str, repair: bool, report: &FsckReport) -> FsckDoc {
    let mut repaired: Vec<String> = report
        .repaired
        .iter()
        .filter(|line| !(report.cache_refresh.is_some() && line.starts_with(LIB_CACHE_REFRESHED)))
        .cloned()
        .collect();
    let mut errors = report.errors.clone();
    let mut interrupted: Vec<String> = report.interrupted.iter().map(|i| i.to_string()).collect();
    let mut interrupted_left = report.interrupted.len();
    if let Some(recovery) = &report.recovery {
        for r in &recovery.recovered {
            interrupted.push(r.intent.to_string());
            repaired.push(match &r.outcome {
                RecoveryOutcome::RolledBack { reason } => {
                    format!("rolled back interrupted operation: {} ({reason})", r.intent)
                }
                _ => format!("completed interrupted operation: {}", r.intent),
            });
        }
        for p in &recovery.pending {
            interrupted.push(p.intent.to_string());
            errors.push(format!(
                "interrupted operation {} could not be completed now: {}",
                p.intent, p.error
            ));
        }
        for (id, reason) in &recovery.unreadable {
            // Counted below with the other set-aside entries.
            repaired.push(format!(
                "set aside unreadable journal entry {id} (as {id}.intent.bad): {reason}"
            ));
        }
        // Pending and unreadable intents are counted once, as errors.
        interrupted_left = 0;
    }
    let cache_differences: Vec<CacheDiff> = report
        .cache
        .iter()
        .flat_map(|c| &c.differences)
        .map(|d| cache_diff(&d.path, &d.kind))
        .collect();
    if let Some(refresh) = &report.cache_refresh {
        repaired.push(format!(
            "refreshed the cache from the bucket: {} object{} listed, {} downloaded",
            refresh.refresh.listed,
            plural(refresh.refresh.listed),
            refresh.refresh.downloaded
        ));
    }
    let cache_left = if report.cache_refresh.is_some() {
        0
    } else {
        cache_differences.len()
    };
    // Without --repair everything found remains; with it, what fsck only reports or could not
    // mend (errors while mending are in `errors`).
    let (temp_left, empty_left) = if repair {
        (report.temp_files_in_use.len(), 0)
    } else {
        (report.temp_files.len(), report.empty_groups.len())
    };
    let set_aside_intents: Vec<String> = report
        .set_aside_intents
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let remaining = temp_left
        + empty_left
        + set_aside_intents.len()
        + report.groups_without_owner.len()
        + report.old_unfinished_snapshots.len()
        + interrupted_left
        + cache_left
        + errors.len();
    FsckDoc {
        store: store.to_owned(),
        repair,
        temp_files: report.temp_files.clone(),
        temp_files_in_use: report.temp_files_in_use.clone(),
        unused_lock_files: report
            .unused_lock_files
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        empty_groups: report.empty_groups.clone(),
        groups_without_owner: report.groups_without_owner.clone(),
        old_unfinished_snapshots: report.old_unfinished_snapshots.clone(),
        interrupted,
        set_aside_intents,
        cache_checked: report.cache.is_some(),
        cache_differences,
        repaired,
        errors,
        remaining,
        clean: remaining == 0,
    }
}

/// The findings (lock files aside), as `(label, text)` lines.
fn finding_lines(doc: &FsckDoc) -> Vec<(&'static str, String)> {
    let mut lines = Vec::new();
    for t in &doc.temp_files {
        let label = if doc.temp_files_in_use.contains(t) {
            "temp file (in use, left)"
        } else {
            "temp file"
        };
        lines.push((label, t.clone()));
    }
    lines.extend(doc.empty_groups.iter().map(|g| ("empty group", g.clone())));
    lines.extend(
        doc.groups_without_owner
            .iter()
            .map(|g| ("no owner", format!("{g} (report only)"))),
    );
    lines.extend(
        doc.old_unfinished_snapshots
            .iter()
            .map(|s| ("old unfinished", format!("{s} (report only)"))),
    );
    lines.extend(doc.interrupted.iter().map(|i| ("interrupted", i.clone())));
    lines.extend(doc.set_aside_intents.iter().map(|p| {
        (
            "set aside",
            format!("{p} (never completed: check the datastore, then delete it)"),
        )
    }));
    for d in &doc.cache_differences {
        let what = match (d.cache_size, d.bucket_size) {
            (Some(c), Some(b)) => format!("size differs: cache {c} B, bucket {b} B"),
            _ => d.kind.replace('-', " "),
        };
        lines.push(("cache differs", format!("{} ({what})", d.path)));
    }
    lines
}

/// `keepsake fsck`.
pub(crate) fn fsck(
    ctx: &Ctx<'_>,
    repair: bool,
    unfinished_older_than: Option<&Age>,
) -> Result<ExitCode> {
    if ctx.ns_arg().is_some() {
        return Err(UsageError(
            "fsck checks the whole datastore: --ns does not apply to it".to_owned(),
        )
        .into());
    }
    let session = if repair {
        ctx.open_write_without_recovery()?
    } else {
        ctx.open_read()?
    };
    let spec = &session.spec;
    let options = FsckOptions {
        repair,
        unfinished_older_than: unfinished_older_than.map(|a| a.duration),
        sweep_lock_files: true,
        cache: session.cached.clone(),
    };
    let spinner = ctx.out.spinner(if repair {
        "checking and repairing"
    } else {
        "checking"
    });
    let report = session.store.fsck(&options);
    spinner.finish_and_clear();
    let report = report.with_context(|| format!("fsck of datastore {}", spec.describe()))?;
    let doc = document(&spec.name, repair, &report);
    ctx.out.emit(&doc, || {
        let mut lines = finding_lines(&doc);
        if !doc.unused_lock_files.is_empty() {
            lines.push((
                "lock files",
                format!(
                    "{} unused in {}{}",
                    doc.unused_lock_files.len(),
                    spec.lock_dir().display(),
                    if repair {
                        ""
                    } else {
                        " (every lock taken leaves one; --repair removes them)"
                    }
                ),
            ));
        }
        let mut locks_removed = 0u64;
        let mut mended = 0usize;
        for line in &doc.repaired {
            if line.starts_with(LIB_LOCK_REMOVED) {
                locks_removed += 1;
            } else {
                mended += 1;
                lines.push(("repaired", line.clone()));
            }
        }
        if locks_removed > 0 {
            lines.push((
                "repaired",
                format!(
                    "removed {locks_removed} unused lock file{}",
                    plural(locks_removed)
                ),
            ));
        }
        lines.extend(doc.errors.iter().map(|e| ("error", e.clone())));
        let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (label, text) in &lines {
            ctx.out.line(format!("{label:<width$}  {text}"))?;
        }
        let found = finding_lines(&doc).len();
        ctx.out.line(format!(
            "fsck of {}: {} finding{}, {} repaired, {} remaining, {} error{}{}",
            spec.describe(),
            found,
            plural(found as u64),
            mended,
            doc.remaining,
            doc.errors.len(),
            plural(doc.errors.len() as u64),
            if doc.clean { ": clean" } else { "" }
        ))?;
        Ok(())
    })?;
    if doc.clean {
        return Ok(ExitCode::SUCCESS);
    }
    let hint = if repair
        || doc.remaining
            == doc.groups_without_owner.len()
                + doc.old_unfinished_snapshots.len()
                + doc.errors.len()
    {
        ""
    } else {
        "; --repair mends what it can"
    };
    let message = format!(
        "fsck: {} problem{} remain{}{hint}",
        doc.remaining,
        plural(doc.remaining as u64),
        if doc.remaining == 1 { "s" } else { "" }
    );
    Ok(crate::error::report_line(&message, EXIT_FAILURE, false))
}
