//! `keepsake prune`: PBS's retention rules over one group or the groups of a namespace.

use std::process::ExitCode;

use anyhow::Result;
use jiff::tz::TimeZone;
use keepsake_datastore::prune::KeepOptions;
use keepsake_datastore::{Group, GroupPrune, PruneAction, PruneRun};
use serde::Serialize;

use super::facts::{groups_of, namespaces};
use super::{Ctx, Writes, existing_group, require_ns};
use crate::cli::PruneArgs;
use crate::error::{EXIT_FAILURE, UsageError};
use crate::output::Table;

/// One snapshot's line, in the JSON shape the issue fixes (`ns`, `snapshot`, `mark`, `reason`)
/// plus what was done.
#[derive(Debug, Serialize)]
struct PruneLine {
    ns: String,
    snapshot: String,
    mark: &'static str,
    reason: String,
    /// `keep`, `would-remove` (dry run), `removed` or `failed`.
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn policy(args: &PruneArgs) -> KeepOptions {
    KeepOptions {
        last: args.keep_last,
        minutely: args.keep_minutely,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
        within: args.keep_within,
    }
}

fn lines_of(pruned: &GroupPrune) -> Vec<PruneLine> {
    pruned
        .snapshots
        .iter()
        .map(|s| {
            let (action, error) = match &s.action {
                PruneAction::Kept => ("keep", None),
                PruneAction::WouldRemove => ("would-remove", None),
                PruneAction::Removed => ("removed", None),
                PruneAction::Failed(e) => ("failed", Some(crate::error::chain_line(e))),
                _ => ("unknown", None),
            };
            PruneLine {
                ns: pruned.ns.to_string(),
                snapshot: s.snapshot.to_string(),
                mark: s.mark.as_str(),
                reason: s.reason.to_string(),
                action,
                error,
            }
        })
        .collect()
}

/// `keepsake prune`.
pub(crate) fn prune(ctx: &Ctx<'_>, args: &PruneArgs) -> Result<ExitCode> {
    let options = policy(args);
    if !options.keeps_something() {
        return Err(UsageError(
            "no keep option given: pass at least one of --keep-last, --keep-hourly, \
             --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-minutely, \
             --keep-within"
                .to_owned(),
        )
        .into());
    }
    let session = ctx.open_for(Writes::when(!args.dry_run))?;
    let store = &session.store;
    let groups: Vec<Group> = match &args.group {
        Some(arg) => {
            let (ns, name) = arg.resolve(ctx.ns_arg())?;
            vec![existing_group(store, &ns, &name)?]
        }
        None => {
            let anchor = ctx.ns();
            require_ns(store, &anchor)?;
            let mut groups = Vec::new();
            for ns in namespaces(store, &anchor, args.recursive)? {
                groups.extend(groups_of(store, &ns, &args.filters)?);
            }
            groups
        }
    };
    let tz = TimeZone::system();
    let run = if args.dry_run {
        PruneRun::DryRun
    } else {
        PruneRun::Remove
    };
    tracing::info!(policy = %options, groups = groups.len(), dry_run = args.dry_run, "pruning");
    let bar = ctx.out.bar(
        groups.len() as u64,
        if args.dry_run { "planning" } else { "pruning" },
    );
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for group in &groups {
        bar.set_message(group.relative_path());
        match group.prune(&options, &tz, run) {
            Ok(pruned) => lines.extend(lines_of(&pruned)),
            Err(e) => failures.push(format!(
                "cannot prune `{}`: {}",
                group.relative_path(),
                crate::error::chain_line(&e)
            )),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    failures.extend(lines.iter().filter_map(|l| {
        l.error
            .as_ref()
            .map(|e| format!("cannot remove `{}`: {e}", l.snapshot))
    }));
    ctx.out.emit(&lines, || {
        let mut table = Table::new(&["ns", "snapshot", "mark", "reason", "action"]);
        for l in &lines {
            table.row(vec![
                if l.ns.is_empty() {
                    "/".to_owned()
                } else {
                    l.ns.clone()
                },
                l.snapshot.clone(),
                l.mark.to_owned(),
                l.reason.clone(),
                l.action.to_owned(),
            ]);
        }
        if table.is_empty() {
            ctx.out.line("no snapshots")?;
        } else {
            table.print(&ctx.out)?;
        }
        Ok(())
    })?;
    if let Some(first) = failures.first() {
        let message = if failures.len() == 1 {
            first.clone()
        } else {
            format!("{first} (and {} more failures)", failures.len() - 1)
        };
        return Ok(crate::error::report_line(&message, EXIT_FAILURE, false));
    }
    Ok(ExitCode::SUCCESS)
}
