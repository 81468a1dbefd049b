//! Where results go: text or one JSON document on stdout, progress bars on stderr.
//!
//! Progress bars are drawn only when stderr is a terminal and `--json` is off, so pipes, logs and
//! scripts never see them. Colour follows the same idea for stdout: only on a terminal, never with
//! `--json`, and never with `NO_COLOR` set (`CLICOLOR=0` turns it off too, `CLICOLOR_FORCE=1`
//! on where there is no terminal: the rules clap follows for its own help and errors).

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anstyle::{AnsiColor, Style};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// The output settings of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    json: bool,
    progress: bool,
    colour: bool,
    quiet: Quiet,
}

/// Whether `-q` silences the lines that only say a change succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quiet {
    /// Print them.
    No,
    /// `-q`: errors and asked-for output only.
    Yes,
}

/// Whether a stream gets colour: `NO_COLOR` (set, not empty) never, `CLICOLOR_FORCE` (not `0`)
/// always, `CLICOLOR=0` never, else on a terminal whose `TERM` is not `dumb`.
pub(crate) fn colour_for(is_terminal: bool) -> bool {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if set("NO_COLOR").is_some() {
        return false;
    }
    if set("CLICOLOR_FORCE").is_some_and(|v| v != "0") {
        return true;
    }
    if set("CLICOLOR").is_some_and(|v| v == "0") {
        return false;
    }
    is_terminal && set("TERM").is_none_or(|t| t != "dumb")
}

/// The colour of a state word in tables and `verify` lines (`ok`, `failed`, `keep`, `remove`,
/// `protected`, …); `None` for every other text.
fn state_style(word: &str) -> Option<Style> {
    let colour = match word {
        "ok" | "keep" | "keep-partial" => AnsiColor::Green,
        "failed" => return Some(AnsiColor::Red.on_default().bold()),
        "remove" | "would-remove" | "removed" | "gone" | "unfinished" | "in use" => {
            AnsiColor::Yellow
        }
        "protected" => AnsiColor::Cyan,
        _ => return None,
    };
    Some(colour.on_default())
}

impl Output {
    /// Output for `--json` (or text), with progress bars when stderr is a terminal and colour
    /// when stdout is one.
    pub(crate) fn new(json: bool, quiet: Quiet) -> Self {
        Self {
            json,
            progress: !json && std::io::stderr().is_terminal(),
            colour: !json && colour_for(std::io::stdout().is_terminal()),
            quiet,
        }
    }

    /// `text` in `style` when colour is on.
    pub(crate) fn paint(&self, text: &str, style: Style) -> String {
        if self.colour {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    /// A state word (`ok`, `failed`, `keep`, `remove`, …) in its colour when colour is on.
    pub(crate) fn state(&self, word: &str) -> String {
        match state_style(word) {
            Some(style) => self.paint(word, style),
            None => word.to_owned(),
        }
    }

    /// Writes a line that only says a change succeeded (`protected …`, `moved …`); `-q` leaves
    /// it out.
    pub(crate) fn done(&self, text: impl Display) -> std::io::Result<()> {
        match self.quiet {
            Quiet::Yes => Ok(()),
            Quiet::No => self.line(text),
        }
    }

    /// Whether `--json` is on.
    pub(crate) fn is_json(&self) -> bool {
        self.json
    }

    /// A progress bar over `len` bytes, with the rate (hidden like [`Output::bar`]).
    pub(crate) fn bytes_bar(&self, len: u64, message: impl Into<String>) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), self.draw_target());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message.into());
        bar
    }

    /// Writes one line of text to stdout.
    pub(crate) fn line(&self, text: impl Display) -> std::io::Result<()> {
        writeln!(std::io::stdout().lock(), "{text}")
    }

    /// Writes `value` as the JSON document of this run.
    pub(crate) fn json<T: Serialize + ?Sized>(&self, value: &T) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        // As an io::Error, so that a closed pipe (`… --json | head`) is seen as one.
        serde_json::to_writer_pretty(&mut stdout, value).map_err(std::io::Error::from)?;
        writeln!(stdout)?;
        Ok(())
    }

    /// Prints `value` as JSON with `--json`, else runs `text`.
    pub(crate) fn emit<T: Serialize + ?Sized>(
        &self,
        value: &T,
        text: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if self.json { self.json(value) } else { text() }
    }

    /// A progress bar over `len` steps (hidden unless stderr is a terminal without `--json`).
    pub(crate) fn bar(&self, len: u64, message: impl Into<String>) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), self.draw_target());
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message.into());
        bar
    }

    /// A spinner for a step of unknown length (hidden like [`Output::bar`]).
    pub(crate) fn spinner(&self, message: impl Into<String>) -> ProgressBar {
        let spinner = ProgressBar::with_draw_target(None, self.draw_target());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            spinner.set_style(style);
        }
        spinner.set_message(message.into());
        spinner.enable_steady_tick(Duration::from_millis(120));
        spinner
    }

    fn draw_target(&self) -> ProgressDrawTarget {
        if self.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        }
    }
}

/// A text table: left-aligned columns padded to the widest cell.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a header row.
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Adds a row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether only the header is there.
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    /// The table as text lines (trailing spaces trimmed).
    #[cfg(test)]
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines_painted(|_, cell| cell.to_owned())
    }

    /// The lines, each cell passed through `paint` (with its row number, 0 for the header)
    /// after the widths are measured on the plain text.
    fn lines_painted(&self, paint: impl Fn(usize, &str) -> String) -> Vec<String> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        self.rows
            .iter()
            .enumerate()
            .map(|(r, row)| {
                let mut line = String::new();
                let last = row.len().saturating_sub(1);
                for (c, (cell, width)) in row.iter().zip(&widths).enumerate() {
                    line.push_str(&paint(r, cell));
                    if c < last {
                        let pad = width.saturating_sub(cell.chars().count()) + 2;
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
                line.trim_end().to_owned()
            })
            .collect()
    }

    /// Prints the table: with colour on, a bold header and state words in their colours.
    pub(crate) fn print(&self, out: &Output) -> std::io::Result<()> {
        let bold = Style::new().bold();
        for line in self.lines_painted(|row, cell| {
            if row == 0 {
                out.paint(cell, bold)
            } else {
                out.state(cell)
            }
        }) {
            out.line(line)?;
        }
        Ok(())
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.0 MiB`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["group", "owner"]);
        t.row(vec!["vm/100".into(), "root@pam".into()]);
        t.row(vec!["host/myhost".into(), "-".into()]);
        assert_eq!(
            t.lines(),
            [
                "group        owner",
                "vm/100       root@pam",
                "host/myhost  -"
            ]
        );
        assert!(!t.is_empty());
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(human_size(u64::MAX), "16384.0 PiB");
    }
}
