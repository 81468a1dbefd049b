//! `keepsake locks`: lock file paths and who holds them; with `--multi-host` also the leases in
//! the bucket.
//!
//! JSON: without `--multi-host` an array of lock entries (as before); with it an object
//! `{"locks": [...], "leases": [...]}`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};
use keepsake_datastore::lease::{LeaseInfo, LeaseLocker};
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

/// One holder of a lease, for output.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct LeaseHolderEntry {
    host: String,
    pid: u32,
    mode: String,
    command: Option<String>,
    /// RFC 3339, UTC, whole seconds.
    expires: String,
    /// Whole seconds until it expires (negative: expired that long ago).
    seconds_left: i64,
    /// Whether it has run out (others break it once it is older than the clock-skew bound).
    expired: bool,
    /// The epoch it was granted (its fencing token).
    epoch: u64,
}

/// One lease object of the bucket, for output.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct LeaseEntry {
    /// What is locked (`snapshot vm/100/… in namespace a`).
    target: String,
    /// The object key.
    key: String,
    /// The latest epoch granted.
    epoch: u64,
    holders: Vec<LeaseHolderEntry>,
}

/// The `--json` document in multi-host mode.
#[derive(Debug, Serialize)]
struct MultiHostDoc<'a> {
    locks: &'a [LockEntry],
    leases: &'a [LeaseEntry],
}

fn lease_entry(info: LeaseInfo, now: SystemTime) -> LeaseEntry {
    LeaseEntry {
        target: info.target,
        key: info.key,
        epoch: info.epoch,
        holders: info
            .holders
            .into_iter()
            .map(|h| {
                let seconds_left = match h.expires.duration_since(now) {
                    Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                    Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
                };
                LeaseHolderEntry {
                    host: h.host,
                    pid: h.pid,
                    mode: h.mode.to_string(),
                    command: h.command,
                    expires: rfc3339(h.expires),
                    seconds_left,
                    expired: h.expires <= now,
                    epoch: h.epoch,
                }
            })
            .collect(),
    }
}

/// `time` as RFC 3339 in UTC, whole seconds (`2024-06-05T15:06:40Z`).
fn rfc3339(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time)
        .and_then(|t| jiff::Timestamp::from_second(t.as_second()))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "out of range".to_owned())
}

/// A lease holder in the text table: `pid 4242 on pbs1 (exclusive: keepsake protect …)`.
fn holder_text(h: &LeaseHolderEntry) -> String {
    match &h.command {
        Some(c) => format!("pid {} on {} ({}: {c})", h.pid, h.host, h.mode),
        None => format!("pid {} on {} ({})", h.pid, h.host, h.mode),
    }
}

/// When a lease holder expires, for people: `2024-06-05T15:06:40Z (25 s left)` or `… (expired
/// 3 s ago)`.
fn expiry_text(h: &LeaseHolderEntry) -> String {
    if h.expired {
        format!(
            "{} (expired {} s ago)",
            h.expires,
            h.seconds_left.unsigned_abs()
        )
    } else {
        format!("{} ({} s left)", h.expires, h.seconds_left)
    }
}

/// The lock targets a `locks` command looks at: lock files, and in multi-host mode their lease
/// keys.
struct Collect<'a> {
    spec: &'a StoreSpec,
    leases: Option<&'a LeaseLocker>,
    entries: Vec<LockEntry>,
    lease_keys: BTreeSet<String>,
}

impl Collect<'_> {
    fn add(
        &mut self,
        kind: &'static str,
        target: Option<String>,
        lock: &LockTarget<'_>,
    ) -> Result<()> {
        self.entries
            .push(entry(kind, target, &self.spec.lock_path(lock)?));
        if let Some(leases) = self.leases {
            self.lease_keys.insert(leases.key_of(lock));
        }
        Ok(())
    }

    fn snapshot(
        &mut self,
        ns: &keepsake_hierarchy::BackupNamespace,
        dir: &keepsake_hierarchy::BackupDir,
    ) -> Result<()> {
        let target = Some(dir.relative_path(ns));
        self.add("snapshot", target.clone(), &LockTarget::snapshot(ns, dir))?;
        self.add("manifest", target, &LockTarget::manifest(ns, dir))
    }
}

/// `keepsake locks`.
pub(crate) fn locks(ctx: &Ctx<'_>, target: Option<&TargetArg>, all: bool) -> Result<ExitCode> {
    let session = ctx.open_read()?;
    let spec = &session.spec;
    let mut collect = Collect {
        spec,
        leases: session.leases.as_ref(),
        entries: Vec::new(),
        lease_keys: BTreeSet::new(),
    };
    match target {
        None => {
            let mut files = Vec::new();
            walk(&spec.lock_dir(), &mut files)?;
            files.sort();
            collect
                .entries
                .extend(files.iter().map(|f| entry("file", None, f)));
        }
        Some(TargetArg::Group(arg)) => {
            let (ns, name) = arg.resolve(ctx.ns_arg())?;
            let group = existing_group(&session.store, &ns, &name)?;
            collect.add(
                "group",
                Some(group.relative_path()),
                &LockTarget::group(&ns, &name),
            )?;
            for s in snapshots_of(&group)? {
                let dir: keepsake_hierarchy::BackupDir = s.snapshot.parse()?;
                collect.snapshot(&ns, &dir)?;
            }
        }
        Some(TargetArg::Snapshot(arg)) => {
            let (ns, dir) = arg.resolve(ctx.ns_arg(), &session.store)?;
            existing_snapshot(&session.store, &ns, &dir)?;
            collect.snapshot(&ns, &dir)?;
        }
    }
    let Collect {
        entries,
        lease_keys,
        leases,
        ..
    } = collect;
    let Some(leases) = leases else {
        ctx.out
            .emit(&entries, || print_locks(ctx, spec, &entries))?;
        return Ok(ExitCode::SUCCESS);
    };
    let now = SystemTime::now();
    let mut found: Vec<LeaseEntry> = leases
        .leases()
        .with_context(|| format!("cannot list the leases of datastore {}", spec.describe()))?
        .into_iter()
        .filter(|l| target.is_none() || lease_keys.contains(&l.key))
        .map(|l| lease_entry(l, now))
        // Held leases only, unless asked for all (released ones stay on endpoints without
        // conditional deletes, and expired ones until the next acquire cleans them).
        .filter(|l| all || l.holders.iter().any(|h| !h.expired))
        .collect();
    found.sort_by(|a, b| a.target.cmp(&b.target).then_with(|| a.key.cmp(&b.key)));
    let doc = MultiHostDoc {
        locks: &entries,
        leases: &found,
    };
    ctx.out.emit(&doc, || {
        if !entries.is_empty() {
            // Multi-host mode takes leases; PBS and single-host keepsake on this host take these.
            ctx.out.line("lock files on this host:")?;
        }
        print_locks(ctx, spec, &entries)?;
        print_leases(ctx, spec, &found)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The lease table: one row per holder (a free lease: one row).
fn print_leases(ctx: &Ctx<'_>, spec: &StoreSpec, leases: &[LeaseEntry]) -> Result<()> {
    let bucket = spec.s3.as_ref().map_or("", |s| s.bucket.as_str());
    if leases.is_empty() {
        ctx.out.line(format!(
            "no leases in bucket `{bucket}` (datastore `{}`)",
            spec.name
        ))?;
        return Ok(());
    }
    ctx.out.line(format!(
        "leases in bucket `{bucket}` (datastore `{}`):",
        spec.name
    ))?;
    let mut table = Table::new(&["target", "epoch", "held by", "expires"]);
    for lease in leases {
        if lease.holders.is_empty() {
            table.row(vec![
                lease.target.clone(),
                lease.epoch.to_string(),
                "free".to_owned(),
                "-".to_owned(),
            ]);
        }
        for h in &lease.holders {
            table.row(vec![
                lease.target.clone(),
                lease.epoch.to_string(),
                holder_text(h),
                expiry_text(h),
            ]);
        }
    }
    table.print(&ctx.out)?;
    Ok(())
}

/// The lock file table.
fn print_locks(ctx: &Ctx<'_>, spec: &StoreSpec, entries: &[LockEntry]) -> Result<()> {
    if entries.is_empty() {
        ctx.out
            .line(format!("no lock files in {}", spec.lock_dir().display()))?;
        return Ok(());
    }
    let mut table = Table::new(&["kind", "target", "held by", "path"]);
    for e in entries {
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
}
