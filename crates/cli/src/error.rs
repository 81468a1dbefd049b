//! How failures reach the operator: one line on stderr, an exit code, and with `--json` an
//! `{"error": …}` document on stdout.
//!
//! Exit codes: 0 success; 1 the operation failed (or, for checks, found a problem); 2 the command
//! line was wrong (clap's errors, malformed names, options that do not fit together). A usage
//! error is raised before anything is changed.

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

/// The exit code for `err`: 2 if a [`UsageError`] is among its causes, else 1. (Malformed names
/// on the command line are refused by clap, also with 2; a malformed name found *in* a datastore
/// is a failure, 1.)
pub(crate) fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|cause| cause.is::<UsageError>()) {
        EXIT_USAGE
    } else {
        EXIT_FAILURE
    }
}

/// Reports `err` (stderr, and stdout with `--json`) and returns its exit code.
pub(crate) fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    report_line(&one_line(err), exit_code(err), json)
}

/// Reports an error message (already one line) and returns `code`.
pub(crate) fn report_line(line: &str, code: u8, json: bool) -> ExitCode {
    use std::io::Write;
    if json {
        let doc = serde_json::json!({ "error": line });
        // Nothing more can be done if stdout is gone; stderr still gets the line.
        let _ = writeln!(std::io::stdout().lock(), "{doc}");
    }
    let _ = writeln!(std::io::stderr().lock(), "error: {line}");
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
        assert_eq!(exit_code(&err), EXIT_FAILURE);
    }

    #[test]
    fn usage_errors_exit_with_2() {
        let err = anyhow::Error::new(UsageError("bad".into())).context("while parsing");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        let parse = ".."
            .parse::<keepsake_hierarchy::BackupNamespace>()
            .unwrap_err();
        assert_eq!(exit_code(&anyhow::Error::new(parse)), EXIT_FAILURE);
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
