//! `gen-store`: writes a PBS-compatible datastore of generated backups, for benches and
//! operators' trials. Run it as `cargo xtask gen-store DIR [options]` (a release build); the
//! options are in [`options::USAGE`].
//!
//! Everything is written through keepsake-datastore's backup writer (`Group::start_backup`,
//! `BackupWriter::add_blob`, `start_fixed_archive`, `start_dynamic_archive`, `finish`), so the
//! store is what a backup server using the library would write, and PBS reads it. Memory stays
//! bounded whatever the archive size: chunks are made on worker threads and streamed into the
//! writer a few at a time. The same options and seed give the same snapshots, chunks and
//! manifests (index files differ only in their random UUIDs; encrypted chunks in their IVs).

mod data;
mod generate;
mod key;
mod options;

use std::process::ExitCode;

use options::{Output, Request};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match options::parse(&args) {
        Ok(Request::Run(options)) => options,
        Ok(Request::Help) => {
            println!("{}", options::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("gen-store: {e:#}\n\n{}", options::USAGE);
            return ExitCode::from(2);
        }
    };
    let run = || -> anyhow::Result<generate::Summary> {
        let key = match &options.key_file {
            Some(path) => Some(key::load_key(path)?),
            None => None,
        };
        generate::generate(&options, key)
    };
    match run() {
        Ok(summary) => {
            match options.output {
                Output::Text => println!("{}", summary.to_text()),
                Output::Json => println!("{}", summary.to_json()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-store: {e:#}");
            ExitCode::FAILURE
        }
    }
}
