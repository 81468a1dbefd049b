//! `keepsake sync`: copies from a source datastore into the one the global options name
//! (`DataStore::sync_from`), local or S3 on either side.
//!
//! The source is named the way the global options name the target, with `--from` in front: a
//! folder (`--from PATH`, `--from-name NAME`), a datastore PBS knows (`--from-datastore NAME`),
//! and for an S3 source its bucket (`--from-s3-bucket`, `--from-s3-endpoint`,
//! `--from-s3-region`) with `--from PATH` as its local cache folder, filled by `keepsake refresh`.
//! S3 credentials come from the same environment variables for both sides. The source is opened
//! read-only: sync takes shared snapshot locks there and writes nothing.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use keepsake_datastore::{Access, RemoveVanished, SyncOptions, SyncProtection, SyncReport};
use keepsake_hierarchy::{Authid, BackupNamespace, GroupFilter};

use crate::cli::namespace;
use serde::Serialize;

use super::{Ctx, ns_label};
use crate::error::{Advice, UsageError};
use crate::open::StoreSpec;
use crate::output::human_size;

/// The examples in `keepsake sync --help`.
pub(crate) const EXAMPLES: &str = "Examples:\n  \
    keepsake --store /srv/offsite sync --from /srv/store1\n  \
    keepsake --store /srv/offsite --ns prod sync --from /srv/store1 --to-ns store1/prod \\\n      \
    --group type:vm --transfer-last 7 --remove-vanished\n  \
    # migrate a local datastore to S3 (the target was made with `keepsake init`):\n  \
    AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… keepsake --store /var/cache/store2 --name store2 \\\n      \
    --s3-endpoint https://s3.example.com --s3-bucket backups sync --from /srv/store1\n  \
    # an S3 source: its local cache folder, filled first with `keepsake refresh`:\n  \
    keepsake --store /srv/restored sync --from /var/cache/store2 --from-name store2 \\\n      \
    --from-s3-endpoint https://s3.example.com --from-s3-bucket backups --json\n\n\
    The global --ns is the source namespace to start from, --to-ns where it goes in this datastore \
    (default: the same path). Source and target must not be the same datastore name in one lock \
    root (their locks would be the same files): give one of them another --name, or the source \
    --from-lock-root.";

/// `keepsake sync …`.
#[derive(Debug, Args)]
pub(crate) struct SyncArgs {
    /// The source datastore's folder (for an S3 source: its local cache folder).
    #[arg(long, value_name = "PATH", required_unless_present = "from_datastore")]
    from: Option<PathBuf>,
    /// The source datastore's name (lock folder, S3 key prefix); default: as for --name, the
    /// name PBS gives the folder, else the folder's own name.
    #[arg(long, value_name = "NAME", requires = "from")]
    from_name: Option<String>,
    /// A source datastore PBS knows, by its name in datastore.cfg.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["from", "from_name"])]
    from_datastore: Option<String>,
    /// The source's S3 bucket: makes the source an S3 datastore with --from as its cache folder
    /// (credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, as for the target).
    #[arg(long, value_name = "NAME")]
    from_s3_bucket: Option<String>,
    /// The source's S3 endpoint URL (default: AWS for the region).
    #[arg(long, value_name = "URL", requires = "from_s3_bucket")]
    from_s3_endpoint: Option<String>,
    /// The source's S3 region (default: AWS_REGION, AWS_DEFAULT_REGION or us-east-1).
    #[arg(long, value_name = "REGION", requires = "from_s3_bucket")]
    from_s3_region: Option<String>,
    /// The source's lock root (default: the target's, --lock-root).
    #[arg(long, value_name = "DIR")]
    from_lock_root: Option<PathBuf>,
    /// The namespace in this datastore the source's --ns goes to (`/` for the root; default: the
    /// same path as --ns). Missing namespaces are made.
    #[arg(long, value_name = "NS", value_parser = namespace)]
    to_ns: Option<BackupNamespace>,
    /// How many namespace levels below --ns are synced (0: --ns only; default: all).
    #[arg(long, value_name = "N")]
    max_depth: Option<usize>,
    /// PBS group filters (`type:vm`, `group:vm/100`, `regex:^vm/1`, each optionally prefixed with
    /// `include:` or `exclude:`); repeatable; default: every group.
    #[arg(long = "group", value_name = "FILTER")]
    groups: Vec<GroupFilter>,
    /// Only the last N finished snapshots of each source group are candidates.
    #[arg(long, value_name = "N")]
    transfer_last: Option<usize>,
    /// The owner of the groups this sync makes (default: each source group's owner).
    #[arg(long, value_name = "AUTHID")]
    owner: Option<Authid>,
    /// `copy`: a snapshot protected in the source is protected in the target (default `ignore`,
    /// as PBS's sync).
    #[arg(long, value_enum, value_name = "MODE", default_value = "ignore")]
    protection: ProtectionArg,
    /// Remove target snapshots (in the synced namespaces and groups) that the source no longer
    /// has; protected ones stay and are counted. Decided from the source's bucket (not its cache)
    /// after everything was copied; a sync that fails removes nothing.
    #[arg(long)]
    remove_vanished: bool,
    /// With --remove-vanished: remove also when the source holds no snapshot at all in the synced
    /// namespaces (without it such a sync refuses to remove, exit code 6: an empty source is
    /// more often a wrong --from or --from-ns than a source emptied on purpose).
    #[arg(long, requires = "remove_vanished")]
    allow_empty_source: bool,
    /// How many groups are copied at a time (default 2).
    #[arg(long, value_name = "N")]
    group_workers: Option<NonZeroUsize>,
    /// How many chunks each group's worker copies at a time (default 8; more hides an object
    /// store's latency).
    #[arg(long, value_name = "N")]
    chunk_workers: Option<NonZeroUsize>,
}

/// `--protection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtectionArg {
    /// Target snapshots are not protected (PBS's sync).
    Ignore,
    /// Protection is copied.
    Copy,
}

/// The `--json` document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct SyncDoc {
    /// The source datastore, as `describe` names it.
    source: String,
    /// The target datastore.
    target: String,
    /// The source namespace synced from (`""`: the root).
    source_ns: String,
    /// The target namespace it went to.
    target_ns: String,
    /// Source namespaces visited.
    namespaces: usize,
    /// Source groups the filters selected.
    groups: usize,
    /// Snapshots copied.
    snapshots: usize,
    /// Unfinished target snapshots replaced.
    replaced_unfinished: usize,
    /// Chunks copied.
    chunks: u64,
    /// Their stored bytes.
    chunk_bytes: u64,
    /// Chunks the target had already.
    chunks_present: u64,
    /// Index and blob files copied.
    files: u64,
    /// Their bytes.
    file_bytes: u64,
    /// Target snapshots removed as vanished from the source.
    removed_vanished: usize,
    /// Vanished target snapshots kept because they are protected.
    vanished_protected: usize,
}

pub(crate) fn sync(ctx: &Ctx<'_>, args: &SyncArgs) -> Result<ExitCode> {
    let source_spec = source_spec(ctx, args)?;
    let target = ctx.open_write()?;
    let target_spec = &target.spec;
    if source_spec.name == target_spec.name
        && same_folder(&source_spec.lock_root, &target_spec.lock_root)
    {
        return Err(UsageError(format!(
            "source and target are both datastore `{}` in lock root {}: their locks would be the \
             same files; give one another name (--name, --from-name) or pass --from-lock-root",
            target_spec.name,
            target_spec.lock_root.display()
        ))
        .into());
    }
    let source = source_spec.open(Access::ReadOnly)?;
    let source_ns = ctx.ns();
    let mut options = SyncOptions::default();
    options.target_ns = args.to_ns.clone().unwrap_or_else(|| source_ns.clone());
    options.source_ns = source_ns;
    options.max_depth = args.max_depth;
    options.group_filter = args.groups.clone();
    options.transfer_last = args.transfer_last;
    options.owner = args.owner.clone();
    options.protection = match args.protection {
        ProtectionArg::Ignore => SyncProtection::Ignore,
        ProtectionArg::Copy => SyncProtection::Copy,
    };
    options.remove_vanished = if args.allow_empty_source {
        RemoveVanished::RemoveEvenIfSourceEmpty
    } else if args.remove_vanished {
        RemoveVanished::Remove
    } else {
        RemoveVanished::Keep
    };
    options.group_workers = args.group_workers;
    options.chunk_workers = args.chunk_workers;
    let spinner = ctx.out.spinner("syncing");
    let progress = spinner.clone();
    options.on_progress = Some(Arc::new(move |report: &SyncReport| {
        progress.set_message(format!(
            "{} snapshots, {} chunks ({}) copied",
            report.snapshots,
            report.chunks,
            human_size(report.chunk_bytes)
        ));
    }));
    let result = target.store.sync_from(&source.store, &options);
    spinner.finish_and_clear();
    let result = result.map_err(|e| match e {
        e @ keepsake_datastore::Error::SyncSourceEmpty { .. } => anyhow::Error::new(Advice {
            error: e.into(),
            advice: "check --from and --from-ns; pass --allow-empty-source to remove them all"
                .to_owned(),
        }),
        e => e.into(),
    });
    let report = result.with_context(|| {
        format!(
            "sync from {} into {} failed (what was finished stays; run it again to complete it)",
            source.spec.describe(),
            target_spec.describe()
        )
    })?;
    let doc = SyncDoc {
        source: source.spec.describe(),
        target: target_spec.describe(),
        source_ns: options.source_ns.to_string(),
        target_ns: options.target_ns.to_string(),
        namespaces: report.namespaces,
        groups: report.groups,
        snapshots: report.snapshots,
        replaced_unfinished: report.replaced_unfinished,
        chunks: report.chunks,
        chunk_bytes: report.chunk_bytes,
        chunks_present: report.chunks_present,
        files: report.files,
        file_bytes: report.file_bytes,
        removed_vanished: report.removed_vanished,
        vanished_protected: report.vanished_protected,
    };
    ctx.out.emit(&doc, || {
        ctx.out.line(format_args!(
            "synced {} (ns {}) into {} (ns {})",
            doc.source,
            ns_label(&options.source_ns),
            doc.target,
            ns_label(&options.target_ns)
        ))?;
        ctx.out.line(format_args!(
            "{} namespaces, {} groups: {} snapshots copied ({} unfinished replaced)",
            report.namespaces, report.groups, report.snapshots, report.replaced_unfinished
        ))?;
        ctx.out.line(format_args!(
            "chunks: {} copied ({}), {} present already; files: {} copied ({})",
            report.chunks,
            human_size(report.chunk_bytes),
            report.chunks_present,
            report.files,
            human_size(report.file_bytes)
        ))?;
        if args.remove_vanished || report.vanished_protected > 0 {
            ctx.out.line(format_args!(
                "vanished from the source: {} snapshots removed, {} protected kept",
                report.removed_vanished, report.vanished_protected
            ))?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The source, named by the `--from…` options as the global options name the target: the same
/// PBS folders, lock scheme and sync level; no key (chunks and files are copied as stored) and
/// never several hosts (the source is only read).
fn source_spec(ctx: &Ctx<'_>, args: &SyncArgs) -> Result<StoreSpec> {
    let mut global = ctx.cli.global.clone();
    global.store = args.from.clone();
    global.name = args.from_name.clone();
    global.datastore = args.from_datastore.clone();
    global.s3_bucket = args.from_s3_bucket.clone();
    global.s3_endpoint = args.from_s3_endpoint.clone();
    global.s3_region = args.from_s3_region.clone();
    global.multi_host = false;
    global.lease_secs = None;
    global.keyfile = None;
    if let Some(root) = &args.from_lock_root {
        global.lock_root = Some(root.clone());
    }
    StoreSpec::from_args(&global, None, Access::ReadOnly).context("the source (--from…)")
}

/// Whether two paths name the same folder (symbolic links resolved where they exist).
fn same_folder(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
