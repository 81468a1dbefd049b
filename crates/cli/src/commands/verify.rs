//! `keepsake verify`: metadata verification of snapshots, with a summary, per-snapshot errors and
//! exit code 1 when something is wrong.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use keepsake_datastore::{SnapshotOutcome, VerifyOptions, VerifyScope};
use serde::Serialize;

use super::{Ctx, Writes, existing_group, existing_snapshot, require_ns};
use crate::error::{EXIT_FAILURE, chain_line};
use crate::target::TargetArg;

#[derive(Debug, Serialize)]
struct VerifyError {
    /// Namespace of the snapshot (`""` for the root); `null` for errors outside a snapshot.
    ns: Option<String>,
    /// `type/id/time`, or `null` for errors outside a snapshot (an unreadable folder, an
    /// interrupted operation that could not be completed).
    snapshot: Option<String>,
    error: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct VerifySummary {
    ok: bool,
    /// Snapshots looked at.
    snapshots: usize,
    /// Snapshots that checked out.
    verified: usize,
    /// Snapshots with problems.
    failed: usize,
    /// Snapshots without a manifest (not an error).
    unfinished: usize,
    /// Snapshots held exclusively by someone else, not checked now.
    in_use: usize,
    /// Interrupted operations waiting in the journal (verify does not complete them).
    interrupted: usize,
    errors: Vec<VerifyError>,
}

/// A task id in PBS's UPID form (PBS's API reads `verify_state.upid` as one), naming this host,
/// this process and the datastore.
fn upid(store: &str) -> String {
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "UPID:{node}:{:08X}:{:08X}:{:08X}:{now:08X}:verify:{}:root@pam:",
        std::process::id(),
        0,
        0,
        keepsake_lock::escape_unit_path(store.as_bytes())
    )
}

/// `keepsake verify`.
pub(crate) fn verify(
    ctx: &Ctx<'_>,
    target: Option<&TargetArg>,
    record: bool,
    skip_chunks: bool,
) -> Result<ExitCode> {
    let session = ctx.open_for(Writes::when(record))?;
    let store = &session.store;
    let scope = match target {
        Some(TargetArg::Group(arg)) => {
            let (ns, group) = arg.resolve(ctx.ns_arg())?;
            existing_group(store, &ns, &group)?;
            VerifyScope::Group { ns, group }
        }
        Some(TargetArg::Snapshot(arg)) => {
            let (ns, snapshot) = arg.resolve(ctx.ns_arg())?;
            existing_snapshot(store, &ns, &snapshot)?;
            VerifyScope::Snapshot { ns, snapshot }
        }
        None => match ctx.ns_arg() {
            Some(ns) => {
                require_ns(store, ns)?;
                VerifyScope::Namespace {
                    ns: ns.clone(),
                    max_depth: None,
                }
            }
            None => VerifyScope::Store,
        },
    };
    let spinner = ctx.out.spinner("verifying");
    let progress = spinner.clone();
    let (checked, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut options = VerifyOptions::default()
        .check_chunks(!skip_chunks)
        .progress(move |s| {
            let n = checked.fetch_add(1, Ordering::Relaxed) + 1;
            let f = if s.outcome == SnapshotOutcome::Failed {
                failed.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                failed.load(Ordering::Relaxed)
            };
            progress.set_message(format!(
                "verifying: {n} snapshot{} checked, {f} failed; {}",
                super::change::plural(n as u64),
                s.relative_path()
            ));
        });
    if record {
        options = options.record_state(upid(store.name()));
    }
    let report = store.verify(&scope, &options);
    spinner.finish_and_clear();
    let report = report?;

    let count = |o: SnapshotOutcome| report.snapshots.iter().filter(|s| s.outcome == o).count();
    let mut errors = Vec::new();
    for s in &report.snapshots {
        for problem in &s.problems {
            errors.push(VerifyError {
                ns: Some(s.ns.to_string()),
                snapshot: Some(s.snapshot.to_string()),
                error: chain_line(problem),
            });
        }
        if let Some(e) = &s.record_error {
            errors.push(VerifyError {
                ns: Some(s.ns.to_string()),
                snapshot: Some(s.snapshot.to_string()),
                error: format!("cannot record the verify state: {}", chain_line(e)),
            });
        }
    }
    for e in &report.errors {
        errors.push(VerifyError {
            ns: None,
            snapshot: None,
            error: chain_line(e),
        });
    }
    for interrupted in &report.interrupted {
        errors.push(VerifyError {
            ns: None,
            snapshot: None,
            error: format!(
                "interrupted operation pending: {interrupted} (a write command or `keepsake fsck \
                 --repair` completes it)"
            ),
        });
    }
    let summary = VerifySummary {
        ok: report.is_ok() && errors.is_empty(),
        snapshots: report.snapshots.len(),
        verified: count(SnapshotOutcome::Ok),
        failed: count(SnapshotOutcome::Failed),
        unfinished: count(SnapshotOutcome::Unfinished),
        in_use: count(SnapshotOutcome::InUse),
        interrupted: report.interrupted.len(),
        errors,
    };
    ctx.out.emit(&summary, || {
        for s in &report.snapshots {
            let verdict = match s.outcome {
                SnapshotOutcome::Ok => "ok",
                SnapshotOutcome::Failed => "FAILED",
                SnapshotOutcome::Unfinished => "unfinished",
                SnapshotOutcome::InUse => "in use",
                _ => "?",
            };
            ctx.out
                .line(format!("{verdict:<10}  {}", s.relative_path()))?;
            for problem in &s.problems {
                ctx.out
                    .line(format!("            {}", chain_line(problem)))?;
            }
        }
        for e in summary.errors.iter().filter(|e| e.snapshot.is_none()) {
            ctx.out.line(format!("error       {}", e.error))?;
        }
        ctx.out.line(format!(
            "verified {} snapshot{}: {} ok, {} failed, {} unfinished, {} in use",
            summary.snapshots,
            super::change::plural(summary.snapshots as u64),
            summary.verified,
            summary.failed,
            summary.unfinished,
            summary.in_use
        ))?;
        Ok(())
    })?;
    if summary.ok {
        return Ok(ExitCode::SUCCESS);
    }
    if report.verified() == 0 && summary.errors.is_empty() {
        // A check that checked nothing never passes.
        let message = format!(
            "nothing was verified: {} snapshot{} in scope, {} in use, {} unfinished",
            summary.snapshots,
            super::change::plural(summary.snapshots as u64),
            summary.in_use,
            summary.unfinished
        );
        return Ok(crate::error::report_line(&message, EXIT_FAILURE, false));
    }
    let message = format!(
        "verify found {} problem{} ({} failed snapshot{})",
        summary.errors.len(),
        super::change::plural(summary.errors.len() as u64),
        summary.failed,
        super::change::plural(summary.failed as u64)
    );
    Ok(crate::error::report_line(&message, EXIT_FAILURE, false))
}
