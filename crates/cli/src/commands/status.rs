//! `keepsake status`: the datastore's usage (filesystem, chunks, logical bytes, deduplication
//! factor) and the last garbage collection's result, from `DataStore::usage` (on S3
//! `DataStore::usage_s3`: the chunks as the bucket lists them). Reads only.

use std::process::ExitCode;

use anyhow::{Context, Result};
use keepsake_datastore::GcStatus;
use serde::Serialize;

use super::Ctx;
use crate::output::human_size;

/// The `--json` document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct StatusDoc {
    /// The datastore name.
    store: String,
    /// Size of the filesystem holding the datastore, in bytes.
    fs_total: u64,
    /// Bytes used on that filesystem.
    fs_used: u64,
    /// Bytes available on it.
    fs_available: u64,
    /// Chunks stored.
    chunk_count: u64,
    /// Their bytes.
    chunk_bytes: u64,
    /// Index files.
    index_count: u64,
    /// Archive bytes the indexes describe.
    logical_bytes: u64,
    /// Logical bytes per stored chunk byte.
    dedup_factor: f64,
    /// The last GC's `.gc-status`, if any.
    last_gc: Option<GcStatus>,
}

pub(crate) fn status(ctx: &Ctx<'_>) -> Result<ExitCode> {
    let session = ctx.open_read()?;
    let store = &session.store;
    let spinner = ctx.out.spinner("reading indexes and listing chunks");
    let usage = match &session.cached {
        Some(cached) => store.usage_s3(cached),
        None => store.usage(),
    };
    spinner.finish_and_clear();
    let usage = usage.with_context(|| format!("cannot measure datastore {}", store.name()))?;
    let doc = StatusDoc {
        store: store.name().to_owned(),
        fs_total: usage.fs_total,
        fs_used: usage.fs_used,
        fs_available: usage.fs_available,
        chunk_count: usage.chunk_count,
        chunk_bytes: usage.chunk_bytes,
        index_count: usage.index_count,
        logical_bytes: usage.logical_bytes,
        dedup_factor: usage.dedup_factor(),
        last_gc: usage.last_gc.clone(),
    };
    ctx.out.emit(&doc, || {
        ctx.out.line(format_args!(
            "filesystem: {} used of {}, {} available",
            human_size(doc.fs_used),
            human_size(doc.fs_total),
            human_size(doc.fs_available)
        ))?;
        ctx.out.line(format_args!(
            "chunks: {} ({}); {} indexes describing {}; deduplication factor {:.2}",
            doc.chunk_count,
            human_size(doc.chunk_bytes),
            doc.index_count,
            human_size(doc.logical_bytes),
            doc.dedup_factor
        ))?;
        match &doc.last_gc {
            Some(gc) => ctx.out.line(format_args!(
                "last GC: removed {} chunks ({}), {} pending ({}), {} bad kept",
                gc.removed_chunks,
                human_size(gc.removed_bytes),
                gc.pending_chunks,
                human_size(gc.pending_bytes),
                gc.still_bad
            ))?,
            None => ctx.out.line("last GC: none recorded")?,
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
