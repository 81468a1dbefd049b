//! `keepsake`: the operator's tool for Proxmox Backup Server (PBS) compatible datastores, on a
//! local filesystem or on S3-compatible object storage with a local cache.
//!
//! ```text
//! keepsake demo /tmp/demo                                  # a sample datastore, and its tree
//! keepsake --store /tmp/demo groups --recursive            # type, id, owner, count, last backup
//! keepsake --store /tmp/demo snapshots vm/100 --json       # PBS API shapes, kebab-case keys
//! keepsake --store /tmp/demo show vm/100/2024-06-01T02:00:00Z
//! keepsake --store /tmp/demo prune vm/100 --keep-last 2 --dry-run
//! keepsake --store /tmp/demo forget vm/100/2024-06-02T02:00:00Z
//! keepsake --store /tmp/demo locks vm/100                  # lock files and who holds them
//! keepsake --store /var/cache/s1 --s3-bucket b --multi-host locks   # leases of several hosts
//! ```
//!
//! Every command is a thin layer over `keepsake-datastore`; this binary adds the command line
//! (clap), text and JSON output, progress bars (indicatif, on a terminal only) and logs
//! (tracing, on stderr).
//!
//! Rules the commands keep:
//! - **Nothing changes on refused input.** Names are parsed by clap before the datastore is
//!   opened; the namespace, group or snapshot is checked to exist before the first write; opening
//!   never creates anything.
//! - **Errors are one line** on stderr (`error: what: why: cause`), and with `--json` also
//!   `{"error": {"kind": "…", "message": "…"}}` on stdout. Each kind has its own exit code
//!   (`error.rs`, and after `keepsake --help`): 0 success, 1 failure (or a partial success, such
//!   as a forget that kept protected snapshots), 2 usage, 3 not-found, 4 locked, 5 protected,
//!   6 refused, 7 invalid, 8 io, 9 s3.
//! - **`--json` prints one document** on stdout, with the PBS API's kebab-case keys.

mod cli;
mod commands;
mod error;
mod keyfile;
mod open;
mod output;
mod target;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::output::Output;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e, &args),
    };
    init_logging(cli.global.verbose, cli.global.quiet);
    let quiet = if cli.global.quiet {
        output::Quiet::Yes
    } else {
        output::Quiet::No
    };
    let out = Output::new(cli.global.json, quiet);
    match commands::run(&cli, out) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => error::report(&e, cli.global.json),
    }
}

/// Help and version go to stdout with exit code 0; every other clap error is a usage error.
fn clap_exit(e: &clap::Error, args: &[std::ffi::OsString]) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(error::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let json = args.iter().any(|a| a == "--json");
            error::report_line(&error::clap_one_line(e), error::EXIT_USAGE, json)
        }
    }
}

/// Logs go to stderr: warnings by default, more with `-v`, only errors with `-q`.
fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => tracing::Level::ERROR,
        (false, 0) => tracing::Level::WARN,
        (false, 1) => tracing::Level::INFO,
        (false, 2) => tracing::Level::DEBUG,
        (false, _) => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .init();
}

/// Whether the command stopped because stdout was closed (`keepsake … | head`): not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
