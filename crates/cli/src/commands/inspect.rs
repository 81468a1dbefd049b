//! Read-only commands: tree, ns list, groups, snapshots, show.

use std::process::ExitCode;

use anyhow::{Context, Result};
use keepsake_backend::BackendPath;
use keepsake_datastore::DataStore;
use keepsake_hierarchy::{BackupNamespace, GroupFilter};
use serde::Serialize;

use super::facts::{
    FileFacts, GroupFacts, SnapshotFacts, Verification, WithNs, groups_of, namespaces, shown_name,
    snapshots_of,
};
use super::{Ctx, existing_group, existing_snapshot, ns_label, require_ns};
use crate::cli::Age;
use crate::output::{Table, human_size};
use crate::target::{GroupArg, SnapshotArg};

/// One namespace of `tree`: its groups with their snapshots, and the namespaces below it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct TreeNs {
    ns: String,
    groups: Vec<TreeGroup>,
    namespaces: Vec<TreeNs>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct TreeGroup {
    #[serde(flatten)]
    facts: GroupFacts,
    snapshots: Vec<SnapshotFacts>,
}

/// Reads the tree below `ns`.
pub(crate) fn read_tree(store: &DataStore, ns: &BackupNamespace) -> Result<TreeNs> {
    let mut groups = Vec::new();
    for group in groups_of(store, ns, &[])? {
        let (facts, snapshots) = GroupFacts::read(&group)?;
        groups.push(TreeGroup { facts, snapshots });
    }
    let mut children = Vec::new();
    for child in store.iter_namespaces(ns)? {
        match child {
            Ok(child) => children.push(child),
            Err(e) => tracing::warn!(error = %e, "skipping an entry that is not a namespace"),
        }
    }
    children.sort();
    let namespaces = children
        .iter()
        .map(|child| read_tree(store, child))
        .collect::<Result<_>>()?;
    Ok(TreeNs {
        ns: ns.to_string(),
        groups,
        namespaces,
    })
}

/// A line of the text tree and the lines below it.
struct Node {
    label: String,
    children: Vec<Node>,
}

fn snapshot_label(s: &SnapshotFacts) -> String {
    let mut label = s.time_text();
    if s.finished {
        label.push_str("  finished");
    } else {
        label.push_str("  unfinished");
    }
    if s.protected {
        label.push_str("  protected");
    }
    let files = s.files.len();
    label.push_str(&format!(
        "  {files} file{}",
        if files == 1 { "" } else { "s" }
    ));
    if let Some(size) = s.size {
        label.push_str(&format!("  {}", human_size(size)));
    }
    label
}

fn tree_nodes(t: &TreeNs) -> Vec<Node> {
    let mut nodes: Vec<Node> = t
        .groups
        .iter()
        .map(|g| Node {
            label: format!(
                "{}  owner {}  {} snapshot{}",
                g.facts.group_text(),
                g.facts.owner.as_deref().unwrap_or("(none)"),
                g.facts.backup_count,
                if g.facts.backup_count == 1 { "" } else { "s" }
            ),
            children: g
                .snapshots
                .iter()
                .map(|s| Node {
                    label: snapshot_label(s),
                    children: Vec::new(),
                })
                .collect(),
        })
        .collect();
    nodes.extend(t.namespaces.iter().map(|child| {
        let children = tree_nodes(child);
        Node {
            label: if children.is_empty() {
                format!("ns {}  (empty)", child.ns)
            } else {
                format!("ns {}", child.ns)
            },
            children,
        }
    }));
    nodes
}

fn render(nodes: &[Node], prefix: &str, out: &mut Vec<String>) {
    for (i, node) in nodes.iter().enumerate() {
        let last = i + 1 == nodes.len();
        out.push(format!(
            "{prefix}{}{}",
            if last { "└── " } else { "├── " },
            node.label
        ));
        let deeper = format!("{prefix}{}", if last { "    " } else { "│   " });
        render(&node.children, &deeper, out);
    }
}

/// The tree as text lines, headed by `title`.
pub(crate) fn tree_lines(title: &str, tree: &TreeNs) -> Vec<String> {
    let mut lines = vec![title.to_owned()];
    render(&tree_nodes(tree), "", &mut lines);
    lines
}

/// `keepsake tree`.
pub(crate) fn tree(ctx: &Ctx<'_>) -> Result<ExitCode> {
    let session = ctx.open_read()?;
    let ns = ctx.ns();
    require_ns(&session.store, &ns)?;
    let spinner = ctx.out.spinner("reading the datastore");
    let tree = read_tree(&session.store, &ns)?;
    spinner.finish_and_clear();
    ctx.out.emit(&tree, || {
        let title = format!(
            "datastore {}, namespace {}",
            session.spec.describe(),
            ns_label(&ns)
        );
        for line in tree_lines(&title, &tree) {
            ctx.out.line(line)?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct NsEntry {
    ns: String,
    depth: usize,
}

/// `keepsake ns list`.
pub(crate) fn ns_list(ctx: &Ctx<'_>, max_depth: Option<usize>) -> Result<ExitCode> {
    let session = ctx.open_read()?;
    let anchor = ctx.ns();
    require_ns(&session.store, &anchor)?;
    let iter = session
        .store
        .iter_namespaces_recursive(&anchor, max_depth)
        .map_err(|e| crate::error::UsageError(e.to_string()))?;
    let mut all = Vec::new();
    for ns in iter {
        match ns {
            Ok(ns) => all.push(ns),
            Err(e) => tracing::warn!(error = %e, "skipping an entry that is not a namespace"),
        }
    }
    all.sort();
    let entries: Vec<NsEntry> = all
        .iter()
        .map(|ns| NsEntry {
            ns: ns.to_string(),
            depth: ns.depth(),
        })
        .collect();
    ctx.out.emit(&entries, || {
        for ns in &all {
            ctx.out.line(ns_label(ns))?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `keepsake groups`.
pub(crate) fn groups(ctx: &Ctx<'_>, filters: &[GroupFilter], recursive: bool) -> Result<ExitCode> {
    let session = ctx.open_read()?;
    let anchor = ctx.ns();
    require_ns(&session.store, &anchor)?;
    let mut groups = Vec::new();
    for ns in namespaces(&session.store, &anchor, recursive)? {
        groups.extend(groups_of(&session.store, &ns, filters)?);
    }
    let bar = ctx.out.bar(groups.len() as u64, "reading groups");
    let mut facts = Vec::with_capacity(groups.len());
    for group in &groups {
        facts.push(GroupFacts::read(group)?.0);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let with_ns = WithNs::unless_all_in(&anchor, groups.iter().map(|g| g.ns()));
    ctx.out.emit(&facts, || {
        let mut table = Table::new(&["group", "owner", "snapshots", "last backup"]);
        for (group, f) in groups.iter().zip(&facts) {
            table.row(vec![
                shown_name(group.ns(), &f.group_text(), with_ns),
                f.owner.clone().unwrap_or_else(|| "(none)".to_owned()),
                f.backup_count.to_string(),
                last_backup_text(f.last_backup),
            ]);
        }
        if table.is_empty() {
            ctx.out.line("no groups")?;
        } else {
            table.print(&ctx.out)?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn last_backup_text(epoch: Option<i64>) -> String {
    epoch
        .and_then(|e| keepsake_hierarchy::BackupTime::from_epoch(e).ok())
        .map_or_else(|| "-".to_owned(), |t| t.to_string())
}

/// `keepsake snapshots`.
pub(crate) fn snapshots(
    ctx: &Ctx<'_>,
    group: Option<&GroupArg>,
    recursive: bool,
    (older_than, newer_than): (Option<&Age>, Option<&Age>),
) -> Result<ExitCode> {
    let session = ctx.open_read()?;
    let groups = match group {
        Some(arg) => {
            let (ns, group) = arg.resolve(ctx.ns_arg())?;
            vec![existing_group(&session.store, &ns, &group)?]
        }
        None => {
            let anchor = ctx.ns();
            require_ns(&session.store, &anchor)?;
            let mut groups = Vec::new();
            for ns in namespaces(&session.store, &anchor, recursive)? {
                groups.extend(groups_of(&session.store, &ns, &[])?);
            }
            groups
        }
    };
    // Ages count back from now: a snapshot is older than `30d` if its time is before that.
    let now = jiff::Timestamp::now().as_second();
    let before =
        |age: &Age| now.saturating_sub(i64::try_from(age.duration.as_secs()).unwrap_or(i64::MAX));
    let (oldest_allowed, newest_allowed) = (newer_than.map(before), older_than.map(before));
    let bar = ctx.out.bar(groups.len() as u64, "reading snapshots");
    let mut all = Vec::new();
    for group in &groups {
        all.extend(snapshots_of(group)?.into_iter().filter(|s| {
            oldest_allowed.is_none_or(|t| s.backup_time > t)
                && newest_allowed.is_none_or(|t| s.backup_time < t)
        }));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let namespaces: Vec<BackupNamespace> = all
        .iter()
        .map(|s| s.ns.parse().unwrap_or_default())
        .collect();
    let with_ns = WithNs::unless_all_in(&ctx.ns(), namespaces.iter());
    ctx.out.emit(&all, || {
        let mut table = Table::new(&[
            "snapshot",
            "finished",
            "protected",
            "verified",
            "files",
            "size",
            "notes",
        ]);
        for (s, ns) in all.iter().zip(&namespaces) {
            table.row(vec![
                shown_name(ns, &s.snapshot, with_ns),
                yes_no(s.finished),
                yes_no(s.protected),
                s.verify_state
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |v| v.state.clone()),
                s.files.len().to_string(),
                s.size.map_or_else(|| "-".to_owned(), human_size),
                s.comment.as_deref().map_or_else(|| "-".to_owned(), short),
            ]);
        }
        if table.is_empty() {
            ctx.out.line("no snapshots")?;
        } else {
            table.print(&ctx.out)?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A first line of notes cut to fit a table column.
fn short(text: &str) -> String {
    const WIDTH: usize = 40;
    if text.chars().count() <= WIDTH {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(WIDTH - 1).collect();
        cut.push('…');
        cut
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Show {
    ns: String,
    backup_type: String,
    backup_id: String,
    backup_time: i64,
    snapshot: String,
    owner: Option<String>,
    finished: bool,
    protected: bool,
    files: Vec<FileFacts>,
    notes: Option<String>,
    verify_state: Option<Verification>,
    manifest: Option<serde_json::Value>,
}

/// `keepsake show`.
pub(crate) fn show(ctx: &Ctx<'_>, arg: &SnapshotArg) -> Result<ExitCode> {
    let session = ctx.open_read()?;
    let (ns, dir) = arg.resolve(ctx.ns_arg(), &session.store)?;
    let snapshot = existing_snapshot(&session.store, &ns, &dir)?;
    let facts = SnapshotFacts::read(&snapshot)?;
    let owner = snapshot.group().owner().ok().map(|o| o.to_string());
    let (notes, manifest) = if facts.finished {
        let manifest = snapshot
            .load_manifest()
            .with_context(|| format!("snapshot `{}`", snapshot.relative_path()))?;
        let notes = manifest.notes().ok().flatten().map(str::to_owned);
        let raw: serde_json::Value = serde_json::from_str(&manifest.to_json())?;
        (notes, Some(raw))
    } else {
        (None, None)
    };
    // The listing's files; without a manifest, the sizes the folder has.
    let mut files = facts.files.clone();
    if !facts.finished {
        for file in &mut files {
            file.size = dir
                .file_path(&ns, &file.filename)
                .ok()
                .and_then(|p| BackendPath::new(&p).ok())
                .and_then(|p| session.store.backend().stat(&p).ok())
                .and_then(|stat| stat.size);
        }
    }
    let show = Show {
        ns: facts.ns.clone(),
        backup_type: facts.backup_type.clone(),
        backup_id: facts.backup_id.clone(),
        backup_time: facts.backup_time,
        snapshot: facts.snapshot.clone(),
        owner,
        finished: facts.finished,
        protected: facts.protected,
        files,
        notes,
        verify_state: facts.verify_state.clone(),
        manifest,
    };
    ctx.out.emit(&show, || print_show(ctx, &show, &ns))?;
    Ok(ExitCode::SUCCESS)
}

fn print_show(ctx: &Ctx<'_>, show: &Show, ns: &BackupNamespace) -> Result<()> {
    let out = &ctx.out;
    out.line(format!("snapshot   {}", show.snapshot))?;
    out.line(format!("namespace  {}", ns_label(ns)))?;
    out.line(format!(
        "owner      {}",
        show.owner.as_deref().unwrap_or("(none)")
    ))?;
    out.line(format!(
        "finished   {}",
        if show.finished {
            "yes"
        } else {
            "no (no manifest)"
        }
    ))?;
    out.line(format!("protected  {}", yes_no(show.protected)))?;
    match &show.verify_state {
        Some(v) => out.line(format!("verified   {} ({})", v.state, v.upid))?,
        None => out.line("verified   never")?,
    }
    match &show.notes {
        Some(notes) => {
            let mut lines = notes.lines();
            out.line(format!("notes      {}", lines.next().unwrap_or("")))?;
            for line in lines {
                out.line(format!("           {line}"))?;
            }
        }
        None => out.line("notes      (none)")?,
    }
    let mut table = Table::new(&["file", "size", "crypt", "csum"]);
    for f in &show.files {
        table.row(vec![
            f.filename.clone(),
            f.size.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            f.crypt_mode.clone().unwrap_or_else(|| "-".to_owned()),
            f.csum.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    out.line("")?;
    table.print(out)?;
    Ok(())
}
