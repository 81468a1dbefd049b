//! Commands that change the datastore: ns create/remove, owner, notes, protect, forget.
//!
//! Each checks what it can before the first write (the namespace, group or snapshot exists, the
//! options fit), so that a refused command leaves the datastore as it was.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result};
use keepsake_datastore::{ExistingOwner, GroupsInside};
use keepsake_hierarchy::{Authid, BackupNamespace};
use serde::Serialize;

use super::facts::{groups_of, namespaces};
use super::{Ctx, Writes, existing_group, existing_snapshot, require_ns};
use crate::error::{Decided, EXIT_FAILURE, UsageError};
use crate::target::{GroupArg, SnapshotArg, TargetArg};

/// Ends a command that did part of its work: the report is printed already, the reason goes to
/// stderr as one line, and the exit code is 1.
fn partial_failure(message: &str) -> ExitCode {
    crate::error::report_line(message, EXIT_FAILURE, false)
}

#[derive(Debug, Serialize)]
struct NsCreated {
    ns: String,
    created: Vec<String>,
}

/// `keepsake ns create`.
pub(crate) fn ns_create(ctx: &Ctx<'_>, ns: &BackupNamespace, parents: bool) -> Result<ExitCode> {
    if ns.is_root() {
        return Err(UsageError("the root namespace always exists".to_owned()).into());
    }
    let session = ctx.open_write()?;
    let store = &session.store;
    if store.namespace_exists(ns)? && !parents {
        return Err(Decided::refused(format!("namespace `{ns}` exists already")));
    }
    let mut missing = Vec::new();
    for depth in 1..=ns.depth() {
        let ancestor = ns.truncated(depth);
        if !store.namespace_exists(&ancestor)? {
            missing.push(ancestor);
        }
    }
    if let Some(parent) = missing.iter().find(|m| *m != ns) {
        if !parents {
            return Err(Decided::not_found(format!(
                "namespace `{parent}` does not exist (pass --parents to create it too)"
            )));
        }
    }
    for n in &missing {
        store
            .create_namespace(n)
            .with_context(|| format!("cannot create namespace `{n}`"))?;
        tracing::info!(ns = %n, "created namespace");
    }
    let report = NsCreated {
        ns: ns.to_string(),
        created: missing.iter().map(ToString::to_string).collect(),
    };
    ctx.out.emit(&report, || {
        if missing.is_empty() {
            ctx.out.done(format!("namespace {ns} exists already"))?;
        }
        for n in &missing {
            ctx.out.done(format!("created namespace {n}"))?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct NsRemoved {
    ns: String,
    removed_namespaces: u64,
    kept_namespaces: u64,
    removed_groups: u64,
    removed_snapshots: u64,
    protected_snapshots: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `keepsake ns remove`.
pub(crate) fn ns_remove(
    ctx: &Ctx<'_>,
    ns: &BackupNamespace,
    groups_inside: GroupsInside,
) -> Result<ExitCode> {
    if ns.is_root() {
        return Err(UsageError("the root namespace cannot be removed".to_owned()).into());
    }
    let session = ctx.open_write()?;
    let store = &session.store;
    require_ns(store, ns)?;
    if groups_inside == GroupsInside::Keep {
        let mut groups = Vec::new();
        for n in namespaces(store, ns, true)? {
            groups.extend(groups_of(store, &n, &[])?);
        }
        if let Some(first) = groups.first() {
            return Err(Decided::refused(format!(
                "namespace `{ns}` holds {} group{} (`{}`{}): pass --delete-groups to destroy them",
                groups.len(),
                if groups.len() == 1 { "" } else { "s" },
                first.relative_path(),
                if groups.len() > 1 { ", …" } else { "" }
            )));
        }
    }
    let spinner = ctx.out.spinner(format!("removing namespace {ns}"));
    let removal = store.remove_namespace(ns, groups_inside);
    spinner.finish_and_clear();
    let removal = removal.with_context(|| format!("cannot remove namespace `{ns}`"))?;
    let error = (!removal.all_removed()).then(|| {
        if removal.groups.protected_snapshots > 0 {
            format!(
                "namespace `{ns}` was not removed completely: {} protected snapshot{} kept (with \
                 their namespaces); unprotect them first",
                removal.groups.protected_snapshots,
                plural(removal.groups.protected_snapshots)
            )
        } else {
            format!(
                "namespace `{ns}` was not removed completely: its folder holds {} that keepsake \
                 does not remove",
                leftovers(store, &ns.path())
            )
        }
    });
    let report = NsRemoved {
        ns: ns.to_string(),
        removed_namespaces: removal.removed_namespaces,
        kept_namespaces: removal.kept_namespaces,
        removed_groups: removal.groups.removed_groups,
        removed_snapshots: removal.groups.removed_snapshots,
        protected_snapshots: removal.groups.protected_snapshots,
        error: error.clone(),
    };
    ctx.out.emit(&report, || {
        ctx.out.done(format!(
            "removed {} namespace{}, {} group{}, {} snapshot{}; kept {} protected snapshot{}",
            report.removed_namespaces,
            plural(report.removed_namespaces),
            report.removed_groups,
            plural(report.removed_groups),
            report.removed_snapshots,
            plural(report.removed_snapshots),
            report.protected_snapshots,
            plural(report.protected_snapshots),
        ))?;
        Ok(())
    })?;
    Ok(match error {
        Some(e) => partial_failure(&e),
        None => ExitCode::SUCCESS,
    })
}

/// What is left in a folder a removal kept, for the message: the first few entries (recursively),
/// as relative paths.
fn leftovers(store: &keepsake_datastore::DataStore, folder: &str) -> String {
    let Ok(path) = keepsake_backend::BackendPath::new(folder) else {
        return "entries".to_owned();
    };
    let files = keepsake_backend::Backend::list_files_authoritative(store.backend(), &path)
        .unwrap_or_default();
    let mut names: Vec<String> = files.iter().take(3).map(ToString::to_string).collect();
    if names.is_empty() {
        return "entries (folders or links)".to_owned();
    }
    if files.len() > names.len() {
        names.push(format!("… {} in all", files.len()));
    }
    names.join(", ")
}

pub(crate) fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[derive(Debug, Serialize)]
struct OwnerReport {
    ns: String,
    group: String,
    owner: String,
}

/// `keepsake owner`.
pub(crate) fn owner(
    ctx: &Ctx<'_>,
    arg: &GroupArg,
    new_owner: Option<&Authid>,
    existing: ExistingOwner,
) -> Result<ExitCode> {
    let (ns, name) = arg.resolve(ctx.ns_arg())?;
    let session = ctx.open_for(Writes::when(new_owner.is_some()))?;
    let group = existing_group(&session.store, &ns, &name)?;
    let owner = match new_owner {
        None => group
            .owner()
            .with_context(|| format!("group `{}`", group.relative_path()))?,
        Some(new_owner) => {
            match group.set_owner(new_owner, existing) {
                Ok(()) => {}
                Err(keepsake_datastore::Error::AlreadyExists { .. })
                    if group.owner().is_ok_and(|current| current == *new_owner) =>
                {
                    // Asking for the owner it has is no replacement: nothing to force.
                }
                Err(keepsake_datastore::Error::AlreadyExists { .. }) => {
                    let current = group
                        .owner()
                        .map_or_else(|_| "unreadable".to_owned(), |o| o.to_string());
                    return Err(Decided::refused(format!(
                        "group `{}` has an owner already ({current}): pass --force to replace it",
                        group.relative_path()
                    )));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot set the owner of `{}`", group.relative_path())
                    });
                }
            }
            tracing::info!(group = %group.relative_path(), owner = %new_owner, "owner set");
            new_owner.clone()
        }
    };
    let report = OwnerReport {
        ns: ns.to_string(),
        group: name.to_string(),
        owner: owner.to_string(),
    };
    ctx.out.emit(&report, || {
        // Asked for, the owner is the output; set, it is a success line.
        match new_owner {
            Some(_) => ctx.out.done(&owner)?,
            None => ctx.out.line(&owner)?,
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct NotesReport {
    ns: String,
    target: String,
    notes: Option<String>,
}

/// `keepsake notes`.
pub(crate) fn notes(
    ctx: &Ctx<'_>,
    target: &TargetArg,
    set: Option<&str>,
    clear: bool,
) -> Result<ExitCode> {
    let new_text = match set {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the notes from stdin")?;
            Some(text)
        }
        Some(text) => Some(text.to_owned()),
        None => None,
    };
    let change = new_text.is_some() || clear;
    let session = ctx.open_for(Writes::when(change))?;
    let (ns, name, notes) = match target {
        TargetArg::Group(arg) => {
            let (ns, name) = arg.resolve(ctx.ns_arg())?;
            let group = existing_group(&session.store, &ns, &name)?;
            if change {
                let text = new_text.as_deref().unwrap_or("");
                group.set_notes(text).with_context(|| {
                    format!("cannot set the notes of `{}`", group.relative_path())
                })?;
            }
            let notes = group.notes()?.filter(|n| !n.is_empty());
            (ns, name.to_string(), notes)
        }
        TargetArg::Snapshot(arg) => {
            let (ns, dir) = arg.resolve(ctx.ns_arg(), &session.store)?;
            let snapshot = existing_snapshot(&session.store, &ns, &dir)?;
            if !snapshot.is_finished()? {
                return Err(Decided::refused(format!(
                    "snapshot `{}` is unfinished: its notes live in the manifest, which it does not have",
                    snapshot.relative_path()
                )));
            }
            if change {
                snapshot.set_notes(new_text.as_deref()).with_context(|| {
                    format!("cannot set the notes of `{}`", snapshot.relative_path())
                })?;
            }
            (ns, dir.to_string(), snapshot.notes()?)
        }
    };
    let report = NotesReport {
        ns: ns.to_string(),
        target: name,
        notes,
    };
    ctx.out.emit(&report, || {
        match &report.notes {
            Some(notes) if !change => ctx.out.line(notes.trim_end_matches('\n'))?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct ProtectReport {
    ns: String,
    snapshot: String,
    protected: bool,
}

/// `keepsake protect` and `keepsake unprotect`.
pub(crate) fn protect(ctx: &Ctx<'_>, arg: &SnapshotArg, protected: bool) -> Result<ExitCode> {
    arg.namespace(ctx.ns_arg())?;
    let session = ctx.open_write()?;
    let (ns, dir) = arg.resolve(ctx.ns_arg(), &session.store)?;
    let snapshot = existing_snapshot(&session.store, &ns, &dir)?;
    snapshot.set_protected(protected).with_context(|| {
        format!(
            "cannot {} `{}`",
            if protected { "protect" } else { "unprotect" },
            snapshot.relative_path()
        )
    })?;
    let report = ProtectReport {
        ns: ns.to_string(),
        snapshot: dir.to_string(),
        protected,
    };
    ctx.out.emit(&report, || {
        ctx.out.done(format!(
            "{} {}",
            if protected {
                "protected"
            } else {
                "unprotected"
            },
            snapshot.relative_path()
        ))?;
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct ForgetReport {
    ns: String,
    target: String,
    removed_snapshots: u64,
    protected_snapshots: u64,
    removed_groups: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What `forget --dry-run` would do.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct ForgetPlan {
    ns: String,
    target: String,
    dry_run: bool,
    /// The snapshots it would remove.
    would_remove: Vec<String>,
    /// The protected snapshots it would keep.
    protected: Vec<String>,
}

/// `keepsake forget --dry-run`: reads only, and names every snapshot.
fn forget_plan(ctx: &Ctx<'_>, target: &TargetArg) -> Result<ExitCode> {
    let session = ctx.open_read()?;
    let (ns, name, snapshots) = match target {
        TargetArg::Snapshot(arg) => {
            let (ns, dir) = arg.resolve(ctx.ns_arg(), &session.store)?;
            let snapshot = existing_snapshot(&session.store, &ns, &dir)?;
            (ns, dir.to_string(), vec![snapshot])
        }
        TargetArg::Group(arg) => {
            let (ns, name) = arg.resolve(ctx.ns_arg())?;
            let group = existing_group(&session.store, &ns, &name)?;
            let snapshots = group.iter_snapshots()?.collect::<Result<Vec<_>, _>>()?;
            (ns, name.to_string(), snapshots)
        }
    };
    let mut plan = ForgetPlan {
        ns: ns.to_string(),
        target: name,
        dry_run: true,
        would_remove: Vec::new(),
        protected: Vec::new(),
    };
    for snapshot in &snapshots {
        let name = snapshot.dir().to_string();
        if snapshot.is_protected()? {
            plan.protected.push(name);
        } else {
            plan.would_remove.push(name);
        }
    }
    plan.would_remove.sort();
    plan.protected.sort();
    ctx.out.emit(&plan, || {
        ctx.out.line("DRY RUN: nothing is removed")?;
        for s in &plan.would_remove {
            ctx.out.line(format!("would remove {s}"))?;
        }
        for s in &plan.protected {
            ctx.out.line(format!("would keep {s} (protected)"))?;
        }
        ctx.out.line(format!(
            "forget {}: {} snapshot{} would be removed, {} protected kept",
            plan.target,
            plan.would_remove.len(),
            plural(plan.would_remove.len() as u64),
            plan.protected.len()
        ))?;
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `keepsake forget`.
pub(crate) fn forget(ctx: &Ctx<'_>, target: &TargetArg, dry_run: bool) -> Result<ExitCode> {
    if dry_run {
        return forget_plan(ctx, target);
    }
    let session = ctx.open_write()?;
    let report = match target {
        TargetArg::Snapshot(arg) => {
            let (ns, dir) = arg.resolve(ctx.ns_arg(), &session.store)?;
            let snapshot = existing_snapshot(&session.store, &ns, &dir)?;
            let path = snapshot.relative_path();
            if snapshot.is_protected()? {
                return Err(crate::error::Advice {
                    error: keepsake_datastore::Error::Protected { path: path.clone() }.into(),
                    advice: format!("run `keepsake unprotect {path}` first to forget it"),
                }
                .into());
            }
            snapshot
                .destroy()
                .with_context(|| format!("cannot forget `{path}`"))?;
            tracing::info!(snapshot = %path, "forgot snapshot");
            ForgetReport {
                ns: ns.to_string(),
                target: dir.to_string(),
                removed_snapshots: 1,
                protected_snapshots: 0,
                removed_groups: u64::from(!snapshot.group().exists()?),
                error: None,
            }
        }
        TargetArg::Group(arg) => {
            let (ns, name) = arg.resolve(ctx.ns_arg())?;
            let group = existing_group(&session.store, &ns, &name)?;
            let spinner = ctx
                .out
                .spinner(format!("forgetting {}", group.relative_path()));
            let stats = group.destroy();
            spinner.finish_and_clear();
            let stats =
                stats.with_context(|| format!("cannot forget `{}`", group.relative_path()))?;
            tracing::info!(group = %group.relative_path(), ?stats, "forgot group");
            let error = if !stats.all_removed() {
                Some(format!(
                    "group `{}` kept {} protected snapshot{}: unprotect {} first to forget the group",
                    group.relative_path(),
                    stats.protected_snapshots,
                    plural(stats.protected_snapshots),
                    if stats.protected_snapshots == 1 {
                        "it"
                    } else {
                        "them"
                    },
                ))
            } else if group.exists()? {
                Some(format!(
                    "group `{}` stays: its folder holds {} that keepsake does not remove",
                    group.relative_path(),
                    leftovers(&session.store, &group.relative_path())
                ))
            } else {
                None
            };
            ForgetReport {
                ns: ns.to_string(),
                target: name.to_string(),
                removed_snapshots: stats.removed_snapshots,
                protected_snapshots: stats.protected_snapshots,
                removed_groups: stats.removed_groups,
                error,
            }
        }
    };
    ctx.out.emit(&report, || {
        ctx.out.done(format!(
            "forgot {}: removed {} snapshot{}{}",
            report.target,
            report.removed_snapshots,
            plural(report.removed_snapshots),
            if report.removed_groups > 0 {
                " and the group"
            } else {
                ""
            }
        ))?;
        Ok(())
    })?;
    Ok(match &report.error {
        Some(e) => partial_failure(e),
        None => ExitCode::SUCCESS,
    })
}
