//! `keepsake cat`: one file of a snapshot, decoded: a blob's data, a fixed index's image, a
//! dynamic index's stream. Every chunk is checked as it is read, so the output is either the
//! archive's exact bytes or an error; with `-o` the file appears only once complete.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use keepsake_hierarchy::ArchiveKind;

use super::{Ctx, existing_snapshot};
use crate::error::EXIT_USAGE;
use crate::target::SnapshotArg;

/// `keepsake cat SNAPSHOT FILE [-o OUT]`.
pub(crate) fn cat(
    ctx: &Ctx<'_>,
    arg: &SnapshotArg,
    name: &str,
    output: Option<&Path>,
) -> Result<ExitCode> {
    let to_stdout = output.is_none_or(|p| p == Path::new("-"));
    let kind = ArchiveKind::from_file_name(name)
        .with_context(|| format!("`{name}` is not a file a snapshot holds"))?;
    if to_stdout && kind != ArchiveKind::Blob && std::io::stdout().is_terminal() {
        return Ok(refuse_terminal(ctx));
    }
    let session = ctx.open_read()?;
    let (ns, dir) = arg.resolve(ctx.ns_arg(), &session.store)?;
    let snapshot = existing_snapshot(&session.store, &ns, &dir)?;
    let what = format!("{}/{name}", snapshot.relative_path());
    match kind {
        ArchiveKind::Blob => {
            let data = snapshot
                .read_blob(name)
                .with_context(|| format!("cannot read `{what}`"))?;
            if to_stdout && std::io::stdout().is_terminal() && !is_text(&data) {
                return Ok(refuse_terminal(ctx));
            }
            write_out(output.filter(|_| !to_stdout), |out| {
                out.write_all(&data)?;
                Ok(())
            })?;
        }
        ArchiveKind::FixedIndex | ArchiveKind::DynamicIndex => {
            let mut archive = snapshot
                .open_archive(name)
                .with_context(|| format!("cannot open `{what}`"))?;
            let bar = ctx.out.bytes_bar(archive.size(), format!("reading {name}"));
            write_out(output.filter(|_| !to_stdout), |out| {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = archive
                        .read(&mut buf)
                        .with_context(|| format!("cannot read `{what}`"))?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&buf[..n])?;
                    bar.inc(n as u64);
                }
                Ok(())
            })?;
            bar.finish_and_clear();
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn refuse_terminal(ctx: &Ctx<'_>) -> ExitCode {
    crate::error::report_line(
        "refusing to write binary data to a terminal: use -o FILE or redirect standard output",
        EXIT_USAGE,
        ctx.out.is_json(),
    )
}

/// Text a terminal can show: UTF-8 without control characters other than tab, newline and
/// carriage return.
fn is_text(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|s| {
        s.chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
    })
}

/// Runs `write` on standard output, or on a temporary file beside `path` that replaces `path`
/// once complete (removed on error, so a failed read leaves no partial file behind).
fn write_out(path: Option<&Path>, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let Some(path) = path else {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        write(&mut out)?;
        out.flush()?;
        return Ok(());
    };
    let temp = temp_path(path);
    let result = (|| -> Result<()> {
        // Create-new: a file or symlink planted at the temporary name is refused, never
        // followed or truncated.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        let mut out = std::io::BufWriter::new(file);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
            .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.keepsake-{}.tmp", std::process::id()))
}
