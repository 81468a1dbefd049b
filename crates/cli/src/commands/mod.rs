//! The commands: each takes the parsed options and the output, and returns the exit code.

mod cat;
mod change;
mod demo;
mod docs;
mod facts;
mod fsck;
mod gc;
mod inspect;
mod locks;
mod moves;
mod prune;
mod status;
mod store;
pub(crate) mod sync;
mod verify;

use std::process::ExitCode;

use anyhow::{Context, Result};
use keepsake_datastore::{
    Access, ChunkVerification, DataStore, ExistingOwner, Group, GroupsInside, Merge,
    RecoveryOutcome, Reverify, Snapshot,
};
use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace};

use crate::cli::{Cli, Command, KeyCommand, NsCommand};
use crate::open::{Session, StoreSpec};
use crate::output::Output;

/// What every command gets: the global options and the output.
pub(crate) struct Ctx<'a> {
    pub(crate) cli: &'a Cli,
    pub(crate) out: Output,
}

impl Ctx<'_> {
    /// The datastore the global options name, opened read-only: nothing this command does can
    /// change it. Interrupted operations waiting in the journal are only named, in one warning
    /// line.
    pub(crate) fn open_read(&self) -> Result<Session> {
        let session = StoreSpec::from_args(&self.cli.global, None, Access::ReadOnly)?
            .open(Access::ReadOnly)?;
        warn_about_journal(&session.store)?;
        Ok(session)
    }

    /// The datastore the global options name, opened for a change. Interrupted operations are
    /// completed first (each announced exactly what it would do), and every one is named on
    /// stderr.
    pub(crate) fn open_write(&self) -> Result<Session> {
        let session = self.open_write_without_recovery()?;
        let report = session
            .store
            .recover()
            .context("cannot complete the interrupted operations in the journal")?;
        for r in &report.recovered {
            match &r.outcome {
                RecoveryOutcome::RolledBack { reason } => tracing::warn!(
                    "rolled back interrupted operation: {} ({})",
                    r.intent,
                    crate::error::chain_line(reason)
                ),
                _ => tracing::warn!("completed interrupted operation: {}", r.intent),
            }
        }
        for p in &report.pending {
            tracing::warn!(
                "interrupted operation still pending: {} ({})",
                p.intent,
                crate::error::chain_line(&p.error)
            );
        }
        for (id, reason) in &report.unreadable {
            tracing::warn!(
                "journal entry {id} is unreadable and was set aside as {id}.intent.bad (never \
                 completed: check the datastore, then delete it): {reason}"
            );
        }
        Ok(session)
    }

    /// [`Ctx::open_write`] for commands that recover themselves and report it (`fsck --repair`).
    pub(crate) fn open_write_without_recovery(&self) -> Result<Session> {
        StoreSpec::from_args(&self.cli.global, None, Access::ReadWrite)?.open(Access::ReadWrite)
    }

    /// Read-only or for a change, as the command's options say.
    pub(crate) fn open_for(&self, writes: Writes) -> Result<Session> {
        match writes {
            Writes::No => self.open_read(),
            Writes::Yes => self.open_write(),
        }
    }

    /// `--ns`, or the root.
    pub(crate) fn ns(&self) -> BackupNamespace {
        self.cli.global.ns.clone().unwrap_or_default()
    }

    /// `name` below `--ns` (the names `ns create/remove/move` take).
    pub(crate) fn below_ns(&self, name: &BackupNamespace) -> Result<BackupNamespace> {
        let base = self.ns();
        let full =
            BackupNamespace::from_components(base.components().iter().chain(name.components()))
                .map_err(|e| {
                    crate::error::UsageError(format!(
                        "`{}` below --ns `{}`: {e}",
                        ns_label(name),
                        ns_label(&base)
                    ))
                })?;
        Ok(full)
    }

    /// `--ns` as given.
    pub(crate) fn ns_arg(&self) -> Option<&BackupNamespace> {
        self.cli.global.ns.as_ref()
    }
}

/// One warning line each for what waits in the intent journal, for commands that do not recover:
/// interrupted operations (a write command completes them), unreadable ones and set-aside ones
/// (nothing completes them: an operator checks and deletes them).
fn warn_about_journal(store: &DataStore) -> Result<()> {
    let interrupted = store.interrupted_intents()?;
    let (recoverable, unreadable): (Vec<_>, Vec<_>) =
        interrupted.iter().partition(|i| i.is_recoverable());
    if !recoverable.is_empty() {
        let names: Vec<String> = recoverable.iter().map(ToString::to_string).collect();
        tracing::warn!(
            "{} interrupted operation{} pending ({}): a write command or `keepsake fsck \
             --repair` completes {}",
            names.len(),
            if names.len() == 1 { " is" } else { "s are" },
            names.join("; "),
            if names.len() == 1 { "it" } else { "them" },
        );
    }
    for entry in unreadable {
        tracing::warn!(
            "{entry}: it will never be completed (the next write command sets it aside); check \
             the datastore, then delete it"
        );
    }
    for path in store.set_aside_intents()? {
        tracing::warn!(
            "journal entry {} was set aside, never completed: check the datastore, then delete it",
            path.display()
        );
    }
    Ok(())
}

/// Whether a command changes the datastore (decides how it is opened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writes {
    /// Only reads: opened read-only, interrupted operations only named.
    No,
    /// Changes something: interrupted operations completed first.
    Yes,
}

impl Writes {
    /// `Yes` when `change` is true.
    pub(crate) fn when(change: bool) -> Self {
        if change { Writes::Yes } else { Writes::No }
    }
}

/// Runs the command line.
/// `--merge` as the library's [`Merge`].
fn merge_flag(merge: bool) -> Merge {
    if merge {
        Merge::IntoExisting
    } else {
        Merge::Never
    }
}

pub(crate) fn run(cli: &Cli, out: Output) -> Result<ExitCode> {
    let ctx = Ctx { cli, out };
    match &cli.command {
        Command::Init { skip_chunk_dirs } => store::init(&ctx, !*skip_chunk_dirs),
        Command::Demo { dir } => demo::demo(&ctx, dir),
        Command::Key(KeyCommand::Create { file, kdf, hint }) => {
            crate::keyfile::create(&ctx, file, *kdf, hint.as_deref())
        }
        Command::Tree => inspect::tree(&ctx),
        Command::Ns(NsCommand::List { max_depth }) => inspect::ns_list(&ctx, *max_depth),
        Command::Ns(NsCommand::Create { namespace, parents }) => {
            change::ns_create(&ctx, &ctx.below_ns(namespace)?, *parents)
        }
        Command::Ns(NsCommand::Remove {
            namespace,
            delete_groups,
        }) => change::ns_remove(
            &ctx,
            &ctx.below_ns(namespace)?,
            if *delete_groups {
                GroupsInside::Destroy
            } else {
                GroupsInside::Keep
            },
        ),
        Command::Ns(NsCommand::Move {
            namespace,
            to_ns,
            rename,
            merge,
        }) => moves::ns_move(
            &ctx,
            &ctx.below_ns(namespace)?,
            to_ns.as_ref(),
            rename.as_deref(),
            merge_flag(*merge),
        ),
        Command::Move {
            target,
            to_ns,
            merge,
        } => moves::move_target(&ctx, target, to_ns, merge_flag(*merge)),
        Command::Verify {
            target,
            read_data,
            record,
            ignore_verified,
            outdated_after,
            skip_chunks,
        } => {
            let chunks = match (*read_data, *skip_chunks) {
                (true, _) => ChunkVerification::Content,
                (false, true) => ChunkVerification::Skip,
                (false, false) => ChunkVerification::Presence,
            };
            let reverify = match (*ignore_verified, *outdated_after) {
                (false, _) => Reverify::All,
                (true, None) => Reverify::NotOk,
                (true, Some(days)) => Reverify::OutdatedAfter { days },
            };
            verify::verify(&ctx, target.as_ref(), chunks, reverify, *record)
        }
        Command::Cat {
            snapshot,
            file,
            output,
        } => cat::cat(&ctx, snapshot, file, output.as_deref()),
        Command::Groups { filters, recursive } => inspect::groups(&ctx, filters, *recursive),
        Command::Snapshots {
            group,
            recursive,
            older_than,
            newer_than,
        } => inspect::snapshots(
            &ctx,
            group.as_ref(),
            *recursive,
            (older_than.as_ref(), newer_than.as_ref()),
        ),
        Command::Show { snapshot } => inspect::show(&ctx, snapshot),
        Command::Owner {
            group,
            owner,
            force,
        } => change::owner(
            &ctx,
            group,
            owner.as_ref(),
            if *force {
                ExistingOwner::Replace
            } else {
                ExistingOwner::Refuse
            },
        ),
        Command::Notes { target, set, clear } => {
            change::notes(&ctx, target, set.as_deref(), *clear)
        }
        Command::Protect { snapshot } => change::protect(&ctx, snapshot, true),
        Command::Unprotect { snapshot } => change::protect(&ctx, snapshot, false),
        Command::Forget { target, dry_run } => change::forget(&ctx, target, *dry_run),
        Command::Prune(args) => prune::prune(&ctx, args),
        Command::Locks { target, all } => locks::locks(&ctx, target.as_ref(), *all),
        Command::Fsck {
            repair,
            unfinished_older_than,
        } => fsck::fsck(&ctx, *repair, unfinished_older_than.as_ref()),
        Command::Refresh => store::refresh(&ctx),
        Command::Gc { dry_run } => gc::gc(&ctx, *dry_run),
        Command::Status => status::status(&ctx),
        Command::Docs { dir } => docs::docs(&ctx, dir),
        Command::Sync(args) => sync::sync(&ctx, args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(*shell, &mut command, "keepsake", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Fails unless the namespace exists.
pub(crate) fn require_ns(store: &DataStore, ns: &BackupNamespace) -> Result<()> {
    if !store.namespace_exists(ns)? {
        return Err(keepsake_datastore::Error::NotFound {
            what: "namespace",
            path: ns.to_string(),
        }
        .into());
    }
    Ok(())
}

/// The group, which must exist (its namespace too).
pub(crate) fn existing_group(
    store: &DataStore,
    ns: &BackupNamespace,
    group: &BackupGroup,
) -> Result<Group> {
    require_ns(store, ns)?;
    let handle = store.group(ns, group);
    if !handle.exists()? {
        return Err(keepsake_datastore::Error::NotFound {
            what: "group",
            path: handle.relative_path(),
        }
        .into());
    }
    Ok(handle)
}

/// The snapshot, which must exist (its namespace and group too).
pub(crate) fn existing_snapshot(
    store: &DataStore,
    ns: &BackupNamespace,
    dir: &BackupDir,
) -> Result<Snapshot> {
    existing_group(store, ns, dir.group())?;
    let handle = store.snapshot(ns, dir);
    if !handle.exists()? {
        return Err(keepsake_datastore::Error::NotFound {
            what: "snapshot",
            path: handle.relative_path(),
        }
        .into());
    }
    Ok(handle)
}

/// The namespace in the form people read: `/` for the root.
pub(crate) fn ns_label(ns: &BackupNamespace) -> String {
    if ns.is_root() {
        "/".to_owned()
    } else {
        ns.to_string()
    }
}
