//! `keepsake locks`: lock file paths and who holds them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use keepsake_lock::{Holder, LockTarget, holders_of_path};
use serde::Serialize;

use super::facts::snapshots_of;
use super::{Ctx, existing_group, existing_snapshot};
use crate::open::StoreSpec;
use crate::output::Table;
use crate::target::TargetArg;

#[derive(Debug, Serialize)]
struct HolderEntry {
    pid: u32,
    mode: String,
    command: Option<String>,
}

#[derive(Debug, Serialize)]
struct LockEntry {
    /// `group`, `snapshot`, `manifest`, or `file` (a lock file found by walking the lock folder).
    kind: &'static str,
    /// The group or snapshot path (`ns/a/vm/100/…`), `null` for walked files.
    target: Option<String>,
    path: String,
    exists: bool,
    holders: Vec<HolderEntry>,
}

fn entry(kind: &'static str, target: Option<String>, path: &Path) -> LockEntry {
    let holders: Vec<Holder> = holders_of_path(path);
    LockEntry {
        kind,
        target,
        path: path.display().to_string(),
        exists: path.exists(),
        holders: holders
            .into_iter()
            .map(|h| HolderEntry {
                pid: h.pid,
                mode: h.mode.to_string(),
                command: h.command,
            })
            .collect(),
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

fn snapshot_entries(
    spec: &StoreSpec,
    ns: &keepsake_hierarchy::BackupNamespace,
    dir: &keepsake_hierarchy::BackupDir,
    out: &mut Vec<LockEntry>,
) -> Result<()> {
    let target = Some(dir.relative_path(ns));
    out.push(entry(
        "snapshot",
        target.clone(),
        &spec.lock_path(&LockTarget::snapshot(ns, dir))?,
    ));
    out.push(entry(
        "manifest",
        target,
        &spec.lock_path(&LockTarget::manifest(ns, dir))?,
    ));
    Ok(())
}

/// `keepsake locks`.
pub(crate) fn locks(ctx: &Ctx<'_>, target: Option<&TargetArg>) -> Result<ExitCode> {
    let session = ctx.open()?;
    let spec = &session.spec;
    let mut entries = Vec::new();
    match target {
        None => {
            let mut files = Vec::new();
            walk(&spec.lock_dir(), &mut files)?;
            files.sort();
            entries.extend(files.iter().map(|f| entry("file", None, f)));
        }
        Some(TargetArg::Group(arg)) => {
            let (ns, name) = arg.resolve(ctx.ns_arg())?;
            let group = existing_group(&session.store, &ns, &name)?;
            entries.push(entry(
                "group",
                Some(group.relative_path()),
                &spec.lock_path(&LockTarget::group(&ns, &name))?,
            ));
            for s in snapshots_of(&group)? {
                let dir: keepsake_hierarchy::BackupDir = s.snapshot.parse()?;
                snapshot_entries(spec, &ns, &dir, &mut entries)?;
            }
        }
        Some(TargetArg::Snapshot(arg)) => {
            let (ns, dir) = arg.resolve(ctx.ns_arg())?;
            existing_snapshot(&session.store, &ns, &dir)?;
            snapshot_entries(spec, &ns, &dir, &mut entries)?;
        }
    }
    ctx.out.emit(&entries, || {
        if entries.is_empty() {
            ctx.out
                .line(format!("no lock files in {}", spec.lock_dir().display()))?;
            return Ok(());
        }
        let mut table = Table::new(&["kind", "target", "held by", "path"]);
        for e in &entries {
            let held = if !e.exists {
                "(no lock file)".to_owned()
            } else if e.holders.is_empty() {
                "free".to_owned()
            } else {
                e.holders
                    .iter()
                    .map(|h| match &h.command {
                        Some(c) => format!("pid {} ({}: {c})", h.pid, h.mode),
                        None => format!("pid {} ({})", h.pid, h.mode),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            table.row(vec![
                e.kind.to_owned(),
                e.target.clone().unwrap_or_else(|| "-".to_owned()),
                held,
                e.path.clone(),
            ]);
        }
        table.print(&ctx.out)?;
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
