//! `keepsake gc [--dry-run]`: PBS's garbage collection (`DataStore::garbage_collect`, on S3
//! `DataStore::garbage_collect_s3`): chunks no index references and older than the cutoff are
//! removed (on S3 from the bucket, in DeleteObjects batches), and `.gc-status` records the run as
//! PBS does. `--dry-run` opens the datastore read-only and only counts.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use keepsake_datastore::{GcMode, GcOptions, GcPhase, GcProgress, GcReport, GcStatus};
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
    /// On S3: the bucket side of the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<BucketDoc>,
}

/// The bucket side of an S3 run.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct BucketDoc {
    /// Objects listed below `.chunks/`.
    chunk_objects: u64,
    /// Index objects read, and how many of them from the bucket (the cache lacked them).
    indexes: u64,
    indexes_fetched: u64,
    /// Empty cache markers made for referenced chunks.
    markers_created: u64,
    /// DeleteObjects requests.
    delete_batches: u64,
    /// Requests by kind.
    requests: RequestsDoc,
}

/// Requests sent, by kind.
#[derive(Debug, Serialize)]
struct RequestsDoc {
    list: u64,
    get: u64,
    head: u64,
    put: u64,
    delete: u64,
    total: u64,
}

/// What the progress bar says during `phase`.
fn phase_message(phase: GcPhase) -> &'static str {
    match phase {
        GcPhase::Mark => "phase 1: marking the chunks the indexes reference",
        GcPhase::MarkBucket => "phase 1: marking the chunks the bucket's indexes reference",
        GcPhase::Sweep => "phase 2: sweeping unreferenced chunks",
        GcPhase::SweepCache => "phase 3: sweeping the cache's chunk copies and markers",
        _ => "garbage collection",
    }
}

pub(crate) fn gc(ctx: &Ctx<'_>, dry_run: bool) -> Result<ExitCode> {
    let (session, mode) = if dry_run {
        (ctx.open_read()?, GcMode::DryRun)
    } else {
        (ctx.open_write()?, GcMode::Run)
    };
    let store = &session.store;
    // One bar for every phase: each phase names itself and sets its own length (hidden unless
    // stderr is a terminal without --json).
    let bar = ctx.out.bar(0, phase_message(GcPhase::Mark));
    let (on_phase, on_progress) = (bar.clone(), bar.clone());
    let options = GcOptions::default()
        .mode(mode)
        .on_phase(Arc::new(move |phase| {
            on_phase.set_message(phase_message(phase));
            on_phase.set_length(0);
            on_phase.set_position(0);
        }))
        .on_progress(Arc::new(move |progress: GcProgress| {
            on_progress.set_length(progress.total.unwrap_or(progress.done));
            on_progress.set_position(progress.done);
        }));
    let report = match &session.cached {
        Some(cached) => store.garbage_collect_s3(cached, &options),
        None => store.garbage_collect(&options),
    };
    bar.finish_and_clear();
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
        bucket: report.bucket.map(|b| BucketDoc {
            chunk_objects: b.chunk_objects,
            indexes: b.indexes,
            indexes_fetched: b.indexes_fetched,
            markers_created: b.markers_created,
            delete_batches: b.delete_batches,
            requests: RequestsDoc {
                list: b.requests.list,
                get: b.requests.get,
                head: b.requests.head,
                put: b.requests.put,
                delete: b.requests.delete,
                total: b.requests.total(),
            },
        }),
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
        if let Some(b) = &doc.bucket {
            ctx.out.line(format_args!(
                "bucket: {} chunk objects listed, {} of {} indexes read from the bucket, {} delete batches, {} requests ({} list, {} get, {} delete)",
                b.chunk_objects,
                b.indexes_fetched,
                b.indexes,
                b.delete_batches,
                b.requests.total,
                b.requests.list,
                b.requests.get,
                b.requests.delete
            ))?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
