//! `keepsake gc [--dry-run]`: PBS's garbage collection (`DataStore::garbage_collect`): chunks no
//! index references and older than the cutoff are removed, and `.gc-status` records the run as
//! PBS does. `--dry-run` opens the datastore read-only and only counts.

use std::process::ExitCode;

use anyhow::{Context, Result};
use keepsake_datastore::{GcMode, GcOptions, GcPhase, GcReport, GcStatus};
use serde::Serialize;

use super::Ctx;
use crate::output::human_size;

/// The `--json` document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct GcDoc {
    /// The datastore name.
    store: String,
    /// Whether `--dry-run` was given (nothing was removed or written).
    dry_run: bool,
    /// Phase 1's start (epoch seconds).
    started: i64,
    /// Unreferenced chunks with an atime before this (epoch seconds) were removable.
    cutoff: i64,
    /// Distinct chunks the indexes reference.
    referenced_chunks: u64,
    /// Referenced chunks missing from the chunk store.
    missing_chunks: u64,
    /// The counts, in PBS's `.gc-status` form.
    status: GcStatus,
}

pub(crate) fn gc(ctx: &Ctx<'_>, dry_run: bool) -> Result<ExitCode> {
    let (session, mode) = if dry_run {
        (ctx.open_read()?, GcMode::DryRun)
    } else {
        (ctx.open_write()?, GcMode::Run)
    };
    let store = &session.store;
    let spinner = ctx
        .out
        .spinner("phase 1: marking the chunks every index references");
    let progress = spinner.clone();
    let options = GcOptions::default()
        .mode(mode)
        .on_phase(std::sync::Arc::new(move |phase| {
            if phase == GcPhase::Sweep {
                progress.set_message("phase 2: sweeping unreferenced chunks");
            }
        }));
    let report = store.garbage_collect(&options);
    spinner.finish_and_clear();
    let report: GcReport = report
        .with_context(|| format!("garbage collection of datastore {} failed", store.name()))?;
    if report.missing_chunks > 0 {
        tracing::warn!(
            "{} referenced chunk(s) are missing from the chunk store: run `keepsake verify --read-data`",
            report.missing_chunks
        );
    }
    let s = &report.status;
    let doc = GcDoc {
        store: store.name().to_owned(),
        dry_run,
        started: report.started,
        cutoff: report.cutoff,
        referenced_chunks: report.referenced_chunks,
        missing_chunks: report.missing_chunks,
        status: s.clone(),
    };
    ctx.out.emit(&doc, || {
        let removed = if dry_run { "would remove" } else { "removed" };
        ctx.out.line(format_args!(
            "{} index files ({} of archives), {} distinct chunks referenced, {} missing",
            s.index_file_count,
            human_size(s.index_data_bytes),
            report.referenced_chunks,
            report.missing_chunks
        ))?;
        ctx.out.line(format_args!(
            "{removed}: {} chunks ({}), {} bad chunks",
            s.removed_chunks,
            human_size(s.removed_bytes),
            s.removed_bad
        ))?;
        ctx.out.line(format_args!(
            "pending (unreferenced, younger than the cutoff): {} chunks ({})",
            s.pending_chunks,
            human_size(s.pending_bytes)
        ))?;
        ctx.out.line(format_args!(
            "kept: {} chunks ({}), {} bad chunks",
            s.disk_chunks,
            human_size(s.disk_bytes),
            s.still_bad
        ))?;
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
