//! `keepsake move` and `keepsake ns move`: moves and merges, with PBS's merge rules.
//!
//! The datastore checks every rule (owners, times, depth, existing targets) before anything
//! moves, and journals the move so that an interrupted one is completed later; this module only
//! checks that source and target exist and reports.

use std::process::ExitCode;

use anyhow::Result;
use keepsake_datastore::{Merge, MoveReport};
use keepsake_hierarchy::BackupNamespace;
use serde::Serialize;

use super::{Ctx, existing_group, existing_snapshot, ns_label, require_ns};
use crate::error::{Advice, UsageError};
use crate::target::TargetArg;

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Moved {
    /// The namespace moved from (`""` for the root, as in PBS's API).
    ns: String,
    /// The namespace moved to.
    to_ns: String,
    from: String,
    to: String,
    snapshots: u64,
    groups_moved: u64,
    groups_merged: u64,
    notes_moved: u64,
    namespaces_created: u64,
    namespaces_removed: u64,
}

impl Moved {
    fn new(
        (ns, to_ns): (&BackupNamespace, &BackupNamespace),
        from: String,
        to: String,
        report: &MoveReport,
    ) -> Self {
        Self {
            ns: ns.to_string(),
            to_ns: to_ns.to_string(),
            from,
            to,
            snapshots: report.snapshots,
            groups_moved: report.groups_moved,
            groups_merged: report.groups_merged,
            notes_moved: report.notes_moved,
            namespaces_created: report.namespaces_created,
            namespaces_removed: report.namespaces_removed,
        }
    }

    fn print(&self, ctx: &Ctx<'_>) -> Result<()> {
        ctx.out.done(format!(
            "moved {} to {}: {} snapshot{}{}",
            self.from,
            self.to,
            self.snapshots,
            super::change::plural(self.snapshots),
            if self.groups_merged > 0 {
                format!(
                    ", {} group{} merged",
                    self.groups_merged,
                    super::change::plural(self.groups_merged)
                )
            } else {
                String::new()
            }
        ))?;
        Ok(())
    }
}

/// A refused move without --merge whose target exists gets the advice to merge.
fn advise_merge(e: keepsake_datastore::Error, merge: Merge) -> anyhow::Error {
    let target_exists = matches!(
        &e,
        keepsake_datastore::Error::MoveRefused { reason, .. }
            if **reason == keepsake_datastore::MoveRefusal::TargetExists
    );
    if target_exists && merge == Merge::Never {
        Advice {
            error: e.into(),
            advice: "pass --merge to merge into it (same owner, only newer snapshots, as PBS \
                     requires)"
                .to_owned(),
        }
        .into()
    } else {
        e.into()
    }
}

/// `keepsake move`.
pub(crate) fn move_target(
    ctx: &Ctx<'_>,
    target: &TargetArg,
    to_ns: &BackupNamespace,
    merge: Merge,
) -> Result<ExitCode> {
    let session = ctx.open_write()?;
    let store = &session.store;
    let moved = match target {
        TargetArg::Group(arg) => {
            let (ns, name) = arg.resolve(ctx.ns_arg())?;
            let group = existing_group(store, &ns, &name)?;
            require_ns(store, to_ns)?;
            let spinner = ctx.out.spinner(format!("moving {}", group.relative_path()));
            let report = group.move_to(to_ns, merge);
            spinner.finish_and_clear();
            let report = report.map_err(|e| advise_merge(e, merge))?;
            tracing::info!(group = %group.relative_path(), to = %ns_label(to_ns), ?report, "moved");
            Moved::new(
                (&ns, to_ns),
                group.relative_path(),
                name.relative_path(to_ns),
                &report,
            )
        }
        TargetArg::Snapshot(arg) => {
            let (ns, dir) = arg.resolve(ctx.ns_arg(), store)?;
            let snapshot = existing_snapshot(store, &ns, &dir)?;
            require_ns(store, to_ns)?;
            let new = snapshot
                .move_to(to_ns, merge)
                .map_err(|e| advise_merge(e, merge))?;
            Moved {
                snapshots: 1,
                ..Moved::new(
                    (&ns, to_ns),
                    snapshot.relative_path(),
                    new.relative_path(),
                    &MoveReport::default(),
                )
            }
        }
    };
    ctx.out.emit(&moved, || moved.print(ctx))?;
    Ok(ExitCode::SUCCESS)
}

/// `keepsake ns move`.
pub(crate) fn ns_move(
    ctx: &Ctx<'_>,
    ns: &BackupNamespace,
    to_parent: Option<&BackupNamespace>,
    rename: Option<&str>,
    merge: Merge,
) -> Result<ExitCode> {
    let (Some(last), Some(current_parent)) = (ns.components().last(), ns.parent()) else {
        return Err(UsageError("the root namespace cannot be moved".to_owned()).into());
    };
    let parent = to_parent.unwrap_or(&current_parent);
    let to = parent
        .child(rename.unwrap_or(last))
        .map_err(|e| UsageError(format!("cannot move `{ns}` to `{}`: {e}", ns_label(parent))))?;
    let session = ctx.open_write()?;
    let store = &session.store;
    require_ns(store, ns)?;
    require_ns(store, parent)?;
    if to == *ns {
        return Err(UsageError(format!(
            "`{ns}` is there already: give another --to-ns or --rename"
        ))
        .into());
    }
    let spinner = ctx.out.spinner(format!("moving namespace {ns}"));
    let report = store.move_namespace(ns, &to, merge);
    spinner.finish_and_clear();
    let report = report.map_err(|e| advise_merge(e, merge))?;
    let moved = Moved::new((ns, &to), ns_label(ns), ns_label(&to), &report);
    ctx.out.emit(&moved, || moved.print(ctx))?;
    Ok(ExitCode::SUCCESS)
}
