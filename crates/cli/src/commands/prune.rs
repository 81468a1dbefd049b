//! `keepsake prune`: PBS's retention rules over one group or the groups of a namespace.

use std::process::ExitCode;

use anyhow::Result;
use jiff::tz::TimeZone;
use keepsake_datastore::prune::{
    KeepOptions, KeepReason, Period, PruneMark, PruneSnapshot, compute_prune_plan,
};
use keepsake_datastore::{Group, GroupPrune, PruneAction, PruneRun};
use keepsake_hierarchy::BackupNamespace;
use serde::Serialize;

use super::facts::{WithNs, groups_of, namespaces_below, shown_name};
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
    /// Every rule in `reasons`, joined with `, ` (`last 1 of 2, daily 2024-06-05`).
    reason: String,
    /// The rule that keeps (or removes) the snapshot first, in PBS's order of options, then
    /// every other option that alone would keep it, as restic lists them.
    reasons: Vec<String>,
    /// `keep`, `would-remove` (dry run), `removed`, `gone` (removed by someone else meanwhile)
    /// or `failed`.
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

/// The options of `options` one by one, each as a policy of its own.
fn single_rules(options: &KeepOptions) -> Vec<KeepOptions> {
    let mut rules = Vec::new();
    if options.last.is_some() {
        rules.push(KeepOptions {
            last: options.last,
            ..KeepOptions::default()
        });
    }
    for period in [
        Period::Minutely,
        Period::Hourly,
        Period::Daily,
        Period::Weekly,
        Period::Monthly,
        Period::Yearly,
    ] {
        if let Some(count) = options.period(period) {
            let mut rule = KeepOptions::default();
            rule.set_period(period, Some(count));
            rules.push(rule);
        }
    }
    if options.within.is_some() {
        rules.push(KeepOptions {
            within: options.within,
            ..KeepOptions::default()
        });
    }
    rules
}

/// For each snapshot of `pruned` (in its order): the reason the plan gave, then the reasons of
/// the other options that alone would keep it. PBS marks a snapshot with the first option that
/// takes it and lets later options skip it; an operator reading "last 1 of 2" alone cannot tell
/// that the snapshot is also the day's and the week's, which restic's "daily, weekly" shows.
fn all_reasons(pruned: &GroupPrune, options: &KeepOptions, tz: &TimeZone) -> Vec<Vec<String>> {
    let inputs: Vec<PruneSnapshot> = pruned
        .snapshots
        .iter()
        .map(|s| PruneSnapshot {
            time: s.snapshot.time(),
            finished: s.finished,
            protected: s.mark == PruneMark::Protected,
        })
        .collect();
    let alone: Vec<Vec<KeepReason>> = single_rules(options)
        .iter()
        .map(|rule| {
            let mut reasons = vec![KeepReason::NotSelected; inputs.len()];
            for entry in compute_prune_plan(&inputs, rule, tz).entries() {
                reasons[entry.index] = if entry.mark == PruneMark::Keep {
                    entry.reason
                } else {
                    KeepReason::NotSelected
                };
            }
            reasons
        })
        .collect();
    pruned
        .snapshots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut reasons = vec![s.reason.to_string()];
            if s.mark == PruneMark::Keep {
                for rule in &alone {
                    let also = rule[i];
                    if !matches!(also, KeepReason::NotSelected) && also != s.reason {
                        let text = also.to_string();
                        if !reasons.contains(&text) {
                            reasons.push(text);
                        }
                    }
                }
            }
            reasons
        })
        .collect()
}

fn lines_of(pruned: &GroupPrune, options: &KeepOptions, tz: &TimeZone) -> Vec<PruneLine> {
    let reasons = all_reasons(pruned, options, tz);
    pruned
        .snapshots
        .iter()
        .zip(reasons)
        .map(|(s, reasons)| {
            let (action, error) = match &s.action {
                PruneAction::Kept => ("keep", None),
                PruneAction::WouldRemove => ("would-remove", None),
                PruneAction::Removed => ("removed", None),
                // Another prune (or a forget) got there first: what was wanted happened.
                PruneAction::Failed(keepsake_datastore::Error::NotFound { .. }) => ("gone", None),
                PruneAction::Failed(e) => ("failed", Some(crate::error::chain_line(e))),
                _ => ("unknown", None),
            };
            PruneLine {
                ns: pruned.ns.to_string(),
                snapshot: s.snapshot.to_string(),
                mark: s.mark.as_str(),
                reason: reasons.join(", "),
                reasons,
                action,
                error,
            }
        })
        .collect()
}

/// The last line: how many snapshots were kept, removed (or would be), protected, failed.
fn summary(lines: &[PruneLine], groups: usize) -> String {
    let count = |action: &str| lines.iter().filter(|l| l.action == action).count();
    let protected = lines.iter().filter(|l| l.reason == "protected").count();
    let mut text = format!(
        "{} group{}, {} snapshot{}: {} kept ({protected} protected), ",
        groups,
        if groups == 1 { "" } else { "s" },
        lines.len(),
        if lines.len() == 1 { "" } else { "s" },
        count("keep"),
    );
    if count("would-remove") > 0 || count("removed") == 0 && count("gone") == 0 {
        text.push_str(&format!("{} would be removed", count("would-remove")));
    } else {
        text.push_str(&format!("{} removed", count("removed")));
    }
    if count("gone") > 0 {
        text.push_str(&format!(", {} gone already", count("gone")));
    }
    if count("failed") > 0 {
        text.push_str(&format!(", {} failed", count("failed")));
    }
    text
}

/// The zone of the period boundaries: `--timezone`, else TZ, else the system's. A zone that
/// cannot be found is refused: buckets silently in UTC would keep other snapshots than asked.
fn time_zone(given: Option<&str>) -> Result<TimeZone> {
    let (name, source) = match given {
        Some(name) => (name.to_owned(), "--timezone"),
        None => match std::env::var("TZ") {
            Ok(tz) if !tz.is_empty() => (tz, "TZ"),
            _ => return Ok(TimeZone::system()),
        },
    };
    let name = name.strip_prefix(':').unwrap_or(&name);
    let zone = if name.starts_with('/') {
        std::fs::read(name)
            .map_err(|e| e.to_string())
            .and_then(|data| TimeZone::tzif(name, &data).map_err(|e| e.to_string()))
    } else {
        TimeZone::get(name).or_else(|e| TimeZone::posix(name).map_err(|_| e.to_string()))
    };
    zone.map_err(|e| {
        UsageError(format!(
            "{source} `{name}` is no time zone ({e}): give one such as `UTC` or `Europe/Vienna`"
        ))
        .into()
    })
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
            let below = if args.recursive {
                namespaces_below(store, &anchor, args.max_depth)?
            } else {
                vec![anchor.clone()]
            };
            for ns in below {
                groups.extend(groups_of(store, &ns, &args.filters)?);
            }
            groups
        }
    };
    let tz = time_zone(args.timezone.as_deref())?;
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
            Ok(pruned) => lines.extend(lines_of(&pruned, &options, &tz)),
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
        if args.dry_run {
            ctx.out.line("DRY RUN: nothing is removed")?;
        }
        let namespaces: Vec<BackupNamespace> = lines
            .iter()
            .map(|l| l.ns.parse().unwrap_or_default())
            .collect();
        let with_ns = WithNs::unless_all_in(&ctx.ns(), namespaces.iter());
        let mut table = Table::new(&["snapshot", "mark", "reason", "action"]);
        for (l, ns) in lines.iter().zip(&namespaces) {
            table.row(vec![
                shown_name(ns, &l.snapshot, with_ns),
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
        ctx.out.line(summary(&lines, groups.len()))?;
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
