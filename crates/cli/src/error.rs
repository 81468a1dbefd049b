//! How failures reach the operator: one line on stderr, an exit code, and with `--json` an
//! `{"error": {"kind": …, "message": …}}` document on stdout.
//!
//! Each kind has its own exit code, stable for scripts (listed in crates/cli/README.md and after
//! `keepsake --help`): 0 success; 1 `failed` (a check found a problem, a partial success, or a
//! failure of no other kind); 2 `usage` (the command line was wrong: clap's errors, malformed
//! names, options that do not fit together; raised before anything is changed); 3 `not-found`;
//! 4 `locked`; 5 `protected`; 6 `refused` (the datastore's rules refuse it: exists already, move
//! rules, not empty, read-only); 7 `invalid` (corrupt or unparsable data in the datastore); 8 `io`;
//! 9 `s3`. The kind is that of the first cause, from the outside in, that has one.

use std::fmt;
use std::process::ExitCode;

/// A command line that cannot be carried out as given (exit code 2).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A failure a command decides itself, before the library is asked, with the kind the library
/// would have given it: a namespace removal that would destroy groups it was not told to destroy
/// or a namespace that exists already (`refused`), a missing parent namespace (`not-found`).
#[derive(Debug)]
pub(crate) struct Decided {
    /// Its kind (and so its exit code).
    pub(crate) kind: Kind,
    /// The line for the operator.
    pub(crate) message: String,
}

impl Decided {
    /// A change the datastore's rules refuse (exit code 6).
    pub(crate) fn refused(message: String) -> anyhow::Error {
        Decided {
            kind: Kind::Refused,
            message,
        }
        .into()
    }

    /// Something named that does not exist (exit code 3).
    pub(crate) fn not_found(message: String) -> anyhow::Error {
        Decided {
            kind: Kind::NotFound,
            message,
        }
        .into()
    }
}

impl fmt::Display for Decided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Decided {}

/// An error and what the operator can do about it, printed after it (`…: the target exists and
/// merging was not requested; pass --merge to …`). The error stays reachable for its kind.
#[derive(Debug)]
pub(crate) struct Advice {
    /// What failed.
    pub(crate) error: anyhow::Error,
    /// What to do.
    pub(crate) advice: String,
}

impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", one_line(&self.error), self.advice)
    }
}

impl std::error::Error for Advice {}

/// The exit code for a usage error.
pub(crate) const EXIT_USAGE: u8 = 2;
/// The exit code for a failed operation.
pub(crate) const EXIT_FAILURE: u8 = 1;

/// What kind of failure ended the command: its name in `--json`'s `error.kind` and its exit code
/// are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Failed, or partly done, or a check found a problem .
    Failed,
    /// The command line was wrong .
    Usage,
    /// A namespace, group, snapshot or file does not exist .
    NotFound,
    /// A lock is held by someone else .
    Locked,
    /// A protected snapshot was to be removed .
    Protected,
    /// The datastore's rules refuse the change .
    Refused,
    /// Data in the datastore is corrupt or does not parse .
    Invalid,
    /// The local filesystem failed .
    Io,
    /// The S3 endpoint failed or refused .
    S3,
}

impl Kind {
    /// Every kind.
    const ALL: [Kind; 9] = [
        Kind::Failed,
        Kind::Usage,
        Kind::NotFound,
        Kind::Locked,
        Kind::Protected,
        Kind::Refused,
        Kind::Invalid,
        Kind::Io,
        Kind::S3,
    ];

    /// The name in `--json`'s `error.kind`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Failed => "failed",
            Kind::Usage => "usage",
            Kind::NotFound => "not-found",
            Kind::Locked => "locked",
            Kind::Protected => "protected",
            Kind::Refused => "refused",
            Kind::Invalid => "invalid",
            Kind::Io => "io",
            Kind::S3 => "s3",
        }
    }

    /// The exit code (each kind its own).
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Kind::Failed => EXIT_FAILURE,
            Kind::Usage => EXIT_USAGE,
            Kind::NotFound => 3,
            Kind::Locked => 4,
            Kind::Protected => 5,
            Kind::Refused => 6,
            Kind::Invalid => 7,
            Kind::Io => 8,
            Kind::S3 => 9,
        }
    }

    /// The kind of an exit code given without an error (`failed` for codes of no kind).
    fn of_code(code: u8) -> Kind {
        Self::ALL
            .into_iter()
            .find(|k| k.exit_code() == code)
            .unwrap_or(Kind::Failed)
    }
}

/// The kind of one cause, if it has one (else the next cause decides).
fn cause_kind(cause: &(dyn std::error::Error + 'static)) -> Option<Kind> {
    use keepsake_datastore::Error as D;
    if cause.is::<UsageError>() {
        return Some(Kind::Usage);
    }
    if let Some(decided) = cause.downcast_ref::<Decided>() {
        return Some(decided.kind);
    }
    if let Some(advice) = cause.downcast_ref::<Advice>() {
        return Some(kind(&advice.error));
    }
    if let Some(e) = cause.downcast_ref::<D>() {
        return match e {
            D::NotFound { .. } | D::NotADatastore { .. } | D::NotInBucket { .. } => {
                Some(Kind::NotFound)
            }
            D::Locked { .. } | D::ProcessLocked { .. } | D::LeaseLost { .. } => Some(Kind::Locked),
            D::Protected { .. } => Some(Kind::Protected),
            D::AlreadyExists { .. }
            | D::MoveRefused { .. }
            | D::NotEmpty { .. }
            | D::BucketInUse { .. }
            | D::BucketNotEmpty { .. }
            | D::NotOwner { .. }
            | D::TimeNotNewer { .. }
            | D::ReadOnly { .. }
            | D::RecoveryPending { .. }
            | D::SignatureWouldBreak { .. }
            | D::GcRefused { .. }
            | D::SyncSourceEmpty { .. }
            | D::Precondition { .. }
            | D::S3Cache { .. } => Some(Kind::Refused),
            D::Corrupt { .. }
            | D::ChunkCorrupt { .. }
            | D::IndexMismatch { .. }
            | D::InvalidEntry { .. }
            | D::InvalidOwner { .. }
            | D::Invalid(_) => Some(Kind::Invalid),
            D::InvalidArgument(_) => Some(Kind::Usage),
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<keepsake_backend::Error>() {
        use keepsake_backend::Error as B;
        return match e {
            B::NotFound { .. } => Some(Kind::NotFound),
            B::Busy { .. } => Some(Kind::Locked),
            B::TooLarge { .. } => Some(Kind::Invalid),
            B::Backend { .. } => Some(Kind::S3),
            B::AlreadyExists { .. } | B::Precondition { .. } => Some(Kind::Refused),
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<keepsake_lock::Error>() {
        use keepsake_lock::Error as L;
        return match e {
            L::WouldBlock { .. } | L::Timeout { .. } => Some(Kind::Locked),
            _ => None,
        };
    }
    if let Some(io) = cause.downcast_ref::<std::io::Error>() {
        // A library error carried through `Read` (`cat`) keeps its own kind; io::Error's
        // `source` skips it.
        let inner = io
            .get_ref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        return Some(inner.and_then(cause_kind).unwrap_or(Kind::Io));
    }
    None
}

/// The kind of `err`: that of the first cause, from the outside in, that has one; else `failed`.
pub(crate) fn kind(err: &anyhow::Error) -> Kind {
    err.chain().find_map(cause_kind).unwrap_or(Kind::Failed)
}

/// The error and its causes on one line: `what failed: why: deeper cause`. Causes that repeat
/// the text of the one before (a `#[error(transparent)]` wrapper) are not printed twice.
pub(crate) fn one_line(err: &anyhow::Error) -> String {
    chain_line(err.as_ref())
}

/// [`one_line`] for any error with its `source` chain (library errors inside reports).
pub(crate) fn chain_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in std::iter::successors(Some(err), |e| e.source()) {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let text = s3_error_text(&text).unwrap_or(text);
        if text.is_empty() || parts.last().is_some_and(|last| last.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// An S3 error reply quoted whole (object_store puts the request, its URL and the XML body in
/// its message) as what the server said: `S3 error NoSuchBucket: The specified bucket does not
/// exist`. `None` when `text` holds no S3 error document.
fn s3_error_text(text: &str) -> Option<String> {
    let element = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = start + text[start..].find(&format!("</{name}>"))?;
        Some(text[start..end].to_owned())
    };
    let code = element("Code")?;
    let message = element("Message").unwrap_or_default();
    let hint = match code.as_str() {
        "NoSuchBucket" => " (check --s3-bucket and --s3-endpoint)",
        "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" => {
            " (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        }
        _ => "",
    };
    Some(format!("S3 error {code}: {message}{hint}"))
}

/// The exit code for `err`: its [`Kind`]'s. (Malformed names on the command line are refused by
/// clap, with 2; a malformed name found *in* a datastore is `invalid`, 7.)
#[cfg(test)]
pub(crate) fn exit_code(err: &anyhow::Error) -> u8 {
    kind(err).exit_code()
}

/// Reports `err` (stderr, and stdout with `--json`) and returns its exit code.
pub(crate) fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    report_kind(&one_line(err), kind(err), json)
}

/// Reports an error message (already one line) and returns `code` (its kind is that code's).
pub(crate) fn report_line(line: &str, code: u8, json: bool) -> ExitCode {
    report_kind(line, Kind::of_code(code), json)
}

/// Reports an error message (already one line) of `kind` and returns its exit code.
fn report_kind(line: &str, kind: Kind, json: bool) -> ExitCode {
    use std::io::Write;
    let code = kind.exit_code();
    if json {
        let doc = serde_json::json!({ "error": { "kind": kind.name(), "message": line } });
        // Nothing more can be done if stdout is gone; stderr still gets the line.
        let _ = writeln!(std::io::stdout().lock(), "{doc}");
    }
    let mut stderr = std::io::stderr().lock();
    let prefix = if crate::output::colour_for(std::io::IsTerminal::is_terminal(&stderr)) {
        let red = anstyle::AnsiColor::Red.on_default().bold();
        format!("{red}error:{red:#}")
    } else {
        "error:".to_owned()
    };
    let _ = writeln!(stderr, "{prefix} {line}");
    ExitCode::from(code)
}

/// Turns a clap error into one line: the message, its context and clap's suggestion, without the
/// usage block and the "for more information" line.
pub(crate) fn clap_one_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let mut words = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") {
            break;
        }
        if line.is_empty() || line.starts_with("For more information") {
            continue;
        }
        // clap's tips are its "did you mean" suggestions (`grups` → `groups`): they stay, after
        // in parentheses so that the line still reads as one sentence.
        if let Some(tip) = line.strip_prefix("tip: ") {
            words.push(format!("({tip})"));
            continue;
        }
        words.push(line.strip_prefix("error: ").unwrap_or(line).to_owned());
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("reading the owner")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chains_become_one_line() {
        let io = std::io::Error::other("disk\non fire");
        let err = anyhow::Error::new(Outer(io)).context("group `vm/100`");
        assert_eq!(
            one_line(&err),
            "group `vm/100`: reading the owner: disk on fire"
        );
        assert_eq!(exit_code(&err), Kind::Io.exit_code());
    }

    #[test]
    fn usage_errors_exit_with_2() {
        let err = anyhow::Error::new(UsageError("bad".into())).context("while parsing");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        let parse = ".."
            .parse::<keepsake_hierarchy::BackupNamespace>()
            .unwrap_err();
        assert_eq!(exit_code(&anyhow::Error::new(parse)), EXIT_FAILURE);
        let invalid = keepsake_datastore::Error::Invalid(
            "..".parse::<keepsake_hierarchy::BackupNamespace>()
                .unwrap_err(),
        );
        assert_eq!(kind(&anyhow::Error::new(invalid)), Kind::Invalid);
    }

    #[test]
    fn kinds_have_distinct_names_and_exit_codes() {
        let names: std::collections::BTreeSet<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), Kind::ALL.len());
        let codes: std::collections::BTreeSet<u8> =
            Kind::ALL.iter().map(|k| k.exit_code()).collect();
        assert_eq!(codes.len(), Kind::ALL.len());
        for k in Kind::ALL {
            assert_eq!(Kind::of_code(k.exit_code()), k);
            assert_ne!(k.exit_code(), 0);
        }
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        let table: Vec<(u8, &str)> = Kind::ALL
            .iter()
            .map(|k| (k.exit_code(), k.name()))
            .collect();
        assert_eq!(
            table,
            [
                (1, "failed"),
                (2, "usage"),
                (3, "not-found"),
                (4, "locked"),
                (5, "protected"),
                (6, "refused"),
                (7, "invalid"),
                (8, "io"),
                (9, "s3"),
            ]
        );
    }

    #[test]
    fn s3_error_documents_become_their_code_and_message() {
        let raw = "Generic S3 error: Error performing GET http://x/b in 7ms - Server returned \
                   non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?> <Error>\
                   <Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message>\
                   <RequestId>abc</RequestId></Error>";
        let err = anyhow::anyhow!(raw.to_owned()).context("cannot read from bucket `b`");
        assert_eq!(
            one_line(&err),
            "cannot read from bucket `b`: S3 error NoSuchBucket: The specified bucket does not \
             exist (check --s3-bucket and --s3-endpoint)"
        );
    }

    #[test]
    fn repeated_causes_are_printed_once() {
        let inner = anyhow::anyhow!("not found");
        let err = inner.context("not found");
        assert_eq!(one_line(&err), "not found");
    }
}
