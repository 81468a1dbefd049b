//! `--keyfile`: a PBS key file opened for the datastore, and `keepsake key create`.
//!
//! The password of a protected key comes from `KEEPSAKE_KEY_PASSWORD` if it is set, else from a
//! prompt on the terminal (standard input, echo off). Without either the command stops with a
//! usage error (exit 2) before anything is opened; a wrong password or a damaged key file is a
//! failure (exit 1). A key without password (`"kdf":null`) needs none.
//!
//! The prompt turns echo off through rustix's termios calls: rustix is already in the dependency
//! tree (the lock crate's `flock`s), so this needs no new crate and no `unsafe`.

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use keepsake_manifest::crypt::CryptConfig;
use keepsake_manifest::keyfile::{self, KdfKind, KeyConfig};
use serde::Serialize;

use crate::cli::KdfArg;
use crate::commands::Ctx;
use crate::error::UsageError;

/// The environment variable holding the key file's password.
pub(crate) const PASSWORD_ENV: &str = "KEEPSAKE_KEY_PASSWORD";

/// The key of the key file at `path`, decrypted with the password from the environment or the
/// terminal when it has one.
pub(crate) fn load(path: &Path) -> Result<CryptConfig> {
    let context = || format!("key file {}", path.display());
    let config = KeyConfig::load(path).with_context(context)?;
    let passphrase = if config.needs_passphrase() {
        let prompt = match config.hint() {
            // The hint comes from the file: no control characters reach the terminal.
            Some(hint) => format!(
                "Password for key file {} (hint: {}): ",
                path.display(),
                hint.chars().filter(|c| !c.is_control()).collect::<String>()
            ),
            None => format!("Password for key file {}: ", path.display()),
        };
        Some(password(&prompt).and_then(|given| {
            given.ok_or_else(|| {
                UsageError(format!(
                    "key file {} is protected by a password: set {PASSWORD_ENV}, or run on a \
                     terminal to be asked",
                    path.display()
                ))
                .into()
            })
        })?)
    } else {
        None
    };
    config.decrypt(passphrase.as_deref()).with_context(context)
}

/// The password from [`PASSWORD_ENV`], else asked with `prompt` on a terminal; `None` without
/// either.
fn password(prompt: &str) -> Result<Option<Vec<u8>>> {
    if let Some(value) = std::env::var_os(PASSWORD_ENV) {
        return Ok(Some(OsString::into_vec(value)));
    }
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    read_hidden(prompt).map(Some)
}

/// Reads one line from the terminal on standard input with echo off; the prompt goes to stderr.
fn read_hidden(prompt: &str) -> Result<Vec<u8>> {
    let stdin = std::io::stdin();
    let echo_off = EchoOff::new(&stdin).context("cannot turn the terminal's echo off")?;
    let mut stderr = std::io::stderr().lock();
    write!(stderr, "{prompt}")?;
    stderr.flush()?;
    let mut line = Vec::new();
    let read = stdin.lock().read_until(b'\n', &mut line);
    drop(echo_off);
    // The typed newline was not echoed.
    writeln!(stderr)?;
    read.context("cannot read the password from the terminal")?;
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(line)
}

/// The terminal's echo turned off while this lives; dropping it restores the settings found.
struct EchoOff<'a> {
    stdin: &'a std::io::Stdin,
    saved: rustix::termios::Termios,
}

impl<'a> EchoOff<'a> {
    fn new(stdin: &'a std::io::Stdin) -> std::io::Result<Self> {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let saved = tcgetattr(stdin)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        tcsetattr(stdin, OptionalActions::Now, &quiet)?;
        Ok(Self { stdin, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        use rustix::termios::{OptionalActions, tcsetattr};
        // Nothing better to do if the terminal went away meanwhile.
        let _ = tcsetattr(self.stdin, OptionalActions::Now, &self.saved);
    }
}

/// What `key create` reports.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Created {
    path: String,
    fingerprint: String,
    kdf: Option<&'static str>,
}

/// `keepsake key create FILE`: a new random key, stored at `path` (0600; an existing file is
/// never replaced), protected by a password unless `kdf` is `none`.
pub(crate) fn create(
    ctx: &Ctx<'_>,
    path: &Path,
    kdf: KdfArg,
    hint: Option<&str>,
) -> Result<ExitCode> {
    if path.exists() {
        return Err(UsageError(format!(
            "{} exists: a key file is never replaced (a lost key makes its backups unreadable)",
            path.display()
        ))
        .into());
    }
    let key = keyfile::generate_key()?;
    let kind = match kdf {
        KdfArg::None => None,
        KdfArg::Scrypt => Some(KdfKind::Scrypt),
        KdfArg::Pbkdf2 => Some(KdfKind::Pbkdf2),
    };
    let config = match kind {
        None => {
            if hint.is_some() {
                return Err(UsageError("--hint is for a key with a password".to_owned()).into());
            }
            KeyConfig::new_plain(key)
        }
        Some(kind) => {
            let passphrase = new_password()?;
            let config = KeyConfig::encrypt(key, &passphrase, kind)
                .map_err(|e| UsageError(format!("cannot use this password: {e}")))?;
            match hint {
                Some(hint) => config
                    .with_hint(hint)
                    .map_err(|e| UsageError(e.to_string()))?,
                None => config,
            }
        }
    };
    config
        .store(path)
        .with_context(|| format!("cannot create key file {}", path.display()))?;
    let fingerprint = CryptConfig::new(key).fingerprint();
    let created = Created {
        path: path.display().to_string(),
        fingerprint: fingerprint.to_string(),
        kdf: match kdf {
            KdfArg::None => None,
            KdfArg::Scrypt => Some("scrypt"),
            KdfArg::Pbkdf2 => Some("pbkdf2"),
        },
    };
    ctx.out.emit(&created, || {
        ctx.out.done(format_args!(
            "created key file {} (fingerprint {})",
            created.path, created.fingerprint
        ))?;
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The password for a new key: from [`PASSWORD_ENV`], else asked twice on the terminal.
fn new_password() -> Result<Vec<u8>> {
    let no_password = || {
        UsageError(format!(
            "a key with a password needs one: set {PASSWORD_ENV}, run on a terminal to be \
             asked, or pass --kdf none"
        ))
    };
    let first = password("Password for the new key: ")?.ok_or_else(no_password)?;
    if std::env::var_os(PASSWORD_ENV).is_none() {
        let again = read_hidden("Password again: ")?;
        if again != first {
            return Err(UsageError("the two passwords differ".to_owned()).into());
        }
    }
    Ok(first)
}
