//! `keepsake docs DIR` (hidden): the man pages and shell completion scripts, as shipped in
//! `crates/cli/doc/` (`cargo xtask man` writes them there; a test checks they are current).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use super::Ctx;
use crate::cli::Cli;

/// The shells whose scripts are shipped, with their file names (as each shell looks them up).
const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "keepsake.bash"),
    (Shell::Zsh, "_keepsake"),
    (Shell::Fish, "keepsake.fish"),
];

/// Writes `DIR/man/*.1` (one page per visible command) and `DIR/completions/*`.
pub(crate) fn docs(ctx: &Ctx<'_>, dir: &Path) -> Result<ExitCode> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for folder in [&man, &completions] {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("cannot write the man pages into {}", man.display()))?;
    for (shell, name) in SHELLS {
        let path = completions.join(name);
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "keepsake", &mut script);
        std::fs::write(&path, script)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !ctx.cli.global.quiet {
        ctx.out.line(format!(
            "wrote the man pages into {} and the completions into {}",
            man.display(),
            completions.display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
