//! `keepsake verify`: verification of snapshots (metadata, chunk presence, or with --read-data
//! chunk contents), with a summary, per-snapshot errors and exit code 1 when something is wrong.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use keepsake_datastore::{
    ChunkVerification, ContentStats, Reverify, SnapshotOutcome, VerifyOptions, VerifyScope,
};
use serde::Serialize;

use super::facts::{WithNs, shown_name};
use super::{Ctx, Writes, existing_group, existing_snapshot, require_ns};
use crate::error::{EXIT_FAILURE, EXIT_USAGE, chain_line};
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
    /// Snapshots recorded ok and skipped (--ignore-verified).
    skipped: usize,
    /// What --read-data read (`null` without it).
    content: Option<ContentSummary>,
    /// Interrupted operations waiting in the journal (verify does not complete them).
    interrupted: usize,
    errors: Vec<VerifyError>,
}

/// What a content verify read; each distinct chunk counts once.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct ContentSummary {
    /// Chunks read and checked in full.
    verified: u64,
    /// Encrypted chunks without a key: CRC checked only.
    crc_only: u64,
    missing: u64,
    corrupt: u64,
    /// Corrupt chunks renamed `<digest>.<n>.bad`.
    set_aside: u64,
    /// S3: damaged cache copies replaced by the bucket's good copy.
    cache_repaired: u64,
    bytes_read: u64,
    bytes_decoded: u64,
    seconds: f64,
}

impl ContentSummary {
    fn new(stats: &ContentStats, seconds: f64) -> Self {
        Self {
            verified: stats.verified,
            crc_only: stats.crc_only,
            missing: stats.missing,
            corrupt: stats.corrupt,
            set_aside: stats.set_aside,
            cache_repaired: stats.cache_repaired,
            bytes_read: stats.bytes_read,
            bytes_decoded: stats.bytes_decoded,
            seconds,
        }
    }

    fn line(&self) -> String {
        let mib = self.bytes_read as f64 / (1 << 20) as f64;
        let rate = if self.seconds > 0.0 {
            mib / self.seconds
        } else {
            0.0
        };
        let mut line = format!(
            "read {} chunk{} ({mib:.1} MiB in {:.1} s, {rate:.0} MiB/s): {} ok",
            self.verified + self.crc_only + self.corrupt,
            super::change::plural(self.verified + self.crc_only + self.corrupt),
            self.seconds,
            self.verified
        );
        if self.crc_only > 0 {
            line += &format!(", {} encrypted checked by CRC only (no key)", self.crc_only);
        }
        if self.corrupt > 0 {
            line += &format!(", {} corrupt ({} set aside)", self.corrupt, self.set_aside);
        }
        if self.missing > 0 {
            line += &format!(", {} missing", self.missing);
        }
        if self.cache_repaired > 0 {
            line += &format!(", {} cache copies repaired", self.cache_repaired);
        }
        line
    }
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
    chunks: ChunkVerification,
    reverify: Reverify,
    record: bool,
) -> Result<ExitCode> {
    let read_data = chunks == ChunkVerification::Content;
    if record && !read_data {
        return Ok(crate::error::report_line(
            "--record needs --read-data: PBS's verify jobs skip snapshots recorded ok, so only a \
             verify that read the chunks may record one",
            EXIT_USAGE,
            ctx.out.is_json(),
        ));
    }
    // A content verify renames corrupt chunks, so it opens the store for writing.
    let session = ctx.open_for(Writes::when(record || read_data))?;
    let store = &session.store;
    let scope = match target {
        Some(TargetArg::Group(arg)) => {
            let (ns, group) = arg.resolve(ctx.ns_arg())?;
            existing_group(store, &ns, &group)?;
            VerifyScope::Group { ns, group }
        }
        Some(TargetArg::Snapshot(arg)) => {
            let (ns, snapshot) = arg.resolve(ctx.ns_arg(), store)?;
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
    let (chunks_read, bytes_read) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let chunk_bar = spinner.clone();
    let (counted_chunks, counted_bytes) = (Arc::clone(&chunks_read), Arc::clone(&bytes_read));
    let mut options = VerifyOptions::default()
        .chunks(chunks)
        .reverify(reverify)
        .chunk_progress(move |bytes| {
            let n = counted_chunks.fetch_add(1, Ordering::Relaxed) + 1;
            let total = counted_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
            if n % 16 == 0 {
                let mib = total as f64 / (1 << 20) as f64;
                let secs = started.elapsed().as_secs_f64().max(0.001);
                chunk_bar.set_message(format!(
                    "reading chunks: {n} read, {mib:.0} MiB, {:.0} MiB/s",
                    mib / secs
                ));
            }
        })
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
    let seconds = started.elapsed().as_secs_f64();
    let content = read_data.then(|| ContentSummary::new(&report.content, seconds));

    let count = |o: SnapshotOutcome| report.snapshots.iter().filter(|s| s.outcome == o).count();
    // The listings' order (namespace, group, time) and naming, whatever order the checks ran in.
    let mut snapshots: Vec<_> = report.snapshots.iter().collect();
    snapshots.sort_by(|a, b| {
        (&a.ns, a.snapshot.group(), a.snapshot.time()).cmp(&(
            &b.ns,
            b.snapshot.group(),
            b.snapshot.time(),
        ))
    });
    let with_ns = WithNs::unless_all_in(&ctx.ns(), snapshots.iter().map(|s| &s.ns));
    let mut errors = Vec::new();
    for s in &snapshots {
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
    // Encrypted chunks read without their key (none, or another client's) had only their CRC
    // checked: PBS counts that as verified (its server has no keys), and so does the recorded
    // state; this run does not pass, as it could not check what was asked.
    let unchecked_content = content.as_ref().map_or(0, |c| c.crc_only);
    let summary = VerifySummary {
        ok: report.is_ok() && errors.is_empty() && unchecked_content == 0,
        snapshots: report.snapshots.len(),
        verified: count(SnapshotOutcome::Ok),
        failed: count(SnapshotOutcome::Failed),
        unfinished: count(SnapshotOutcome::Unfinished),
        in_use: count(SnapshotOutcome::InUse),
        skipped: count(SnapshotOutcome::Skipped),
        content,
        interrupted: report.interrupted.len(),
        errors,
    };
    ctx.out.emit(&summary, || {
        for s in &snapshots {
            let verdict = match s.outcome {
                SnapshotOutcome::Ok => "ok",
                SnapshotOutcome::Failed => "failed",
                SnapshotOutcome::Unfinished => "unfinished",
                SnapshotOutcome::InUse => "in use",
                SnapshotOutcome::Skipped => "skipped",
                _ => "?",
            };
            ctx.out.line(format!(
                "{}{:pad$}  {}",
                ctx.out.state(verdict),
                "",
                shown_name(&s.ns, &s.snapshot.to_string(), with_ns),
                pad = 10usize.saturating_sub(verdict.len())
            ))?;
            for problem in &s.problems {
                ctx.out
                    .line(format!("            {}", chain_line(problem)))?;
            }
        }
        for e in summary.errors.iter().filter(|e| e.snapshot.is_none()) {
            ctx.out.line(format!("error       {}", e.error))?;
        }
        if let Some(content) = &summary.content {
            ctx.out.line(content.line())?;
        }
        let skipped = if summary.skipped > 0 {
            format!(", {} skipped (recorded ok)", summary.skipped)
        } else {
            String::new()
        };
        ctx.out.line(format!(
            "verified {} snapshot{}: {} ok, {} failed, {} unfinished, {} in use{skipped}",
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
    if unchecked_content > 0 && report.is_ok() && summary.errors.is_empty() {
        let message = if store.crypt_config().is_some() {
            format!(
                "{unchecked_content} encrypted chunk{} could not be decrypted with the key given \
                 (another client's key?): checked by CRC only",
                super::change::plural(unchecked_content)
            )
        } else {
            format!(
                "{unchecked_content} encrypted chunk{} could only be checked by CRC: give \
                 --keyfile to verify their content",
                super::change::plural(unchecked_content)
            )
        };
        return Ok(crate::error::report_line(&message, EXIT_FAILURE, false));
    }
    if report.verified() + report.skipped() == 0 && summary.errors.is_empty() {
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
