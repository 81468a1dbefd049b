//! The S3 test server's settings, as `cargo xtask test` (or `cargo xtask s3`) exports them.
//!
//! Variables: `KEEPSAKE_S3_ENDPOINT`, `KEEPSAKE_S3_BUCKET`, `KEEPSAKE_S3_REGION`,
//! `KEEPSAKE_S3_ACCESS_KEY_ID`, `KEEPSAKE_S3_SECRET_ACCESS_KEY`, and `KEEPSAKE_S3_REQUIRED=1`
//! when a missing endpoint must fail the test instead of skipping it.
//!
//! Every test shares the one bucket and isolates itself with [`unique_prefix`].
//!
//! ```
//! use keepsake_testkit::s3;
//!
//! let Some(config) = s3::config_or_skip("my_test") else {
//!     return; // printed "skipped: no S3 endpoint ..." to stderr
//! };
//! let store = s3::unique_prefix("my_test");
//! assert!(store.starts_with("my_test-"));
//! # let _ = config;
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The endpoint variable; its absence means "no S3 server".
pub const ENDPOINT_VAR: &str = "KEEPSAKE_S3_ENDPOINT";
/// Set to `1` when S3 tests must run (CI, `cargo xtask test`).
pub const REQUIRED_VAR: &str = "KEEPSAKE_S3_REQUIRED";

/// Where the S3 test server is and how to sign in.
#[derive(Clone, PartialEq, Eq)]
pub struct S3TestConfig {
    /// The endpoint URL, e.g. `http://127.0.0.1:41234`.
    pub endpoint: String,
    /// The shared test bucket (exists already).
    pub bucket: String,
    /// The region to sign for.
    pub region: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3TestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3TestConfig")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Whether S3 tests must run (`KEEPSAKE_S3_REQUIRED=1`).
pub fn required() -> bool {
    std::env::var(REQUIRED_VAR).is_ok_and(|v| v == "1")
}

/// The S3 test server's settings, or `None` when no endpoint is set.
///
/// # Panics
/// When `KEEPSAKE_S3_REQUIRED=1` and the endpoint is missing: the run meant to test S3 and
/// cannot.
pub fn config() -> Option<S3TestConfig> {
    let var = |name: &str, default: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_owned())
    };
    let Some(endpoint) = std::env::var(ENDPOINT_VAR).ok().filter(|v| !v.is_empty()) else {
        assert!(
            !required(),
            "{REQUIRED_VAR}=1 but {ENDPOINT_VAR} is not set: start the S3 test server \
             (`cargo xtask test` does it) or unset {REQUIRED_VAR}"
        );
        return None;
    };
    Some(S3TestConfig {
        endpoint,
        bucket: var("KEEPSAKE_S3_BUCKET", "keepsake-test"),
        region: var("KEEPSAKE_S3_REGION", "us-east-1"),
        access_key_id: var("KEEPSAKE_S3_ACCESS_KEY_ID", "testing"),
        secret_access_key: var("KEEPSAKE_S3_SECRET_ACCESS_KEY", "testing"),
    })
}

/// [`config`], printing `skipped: no S3 endpoint (run `cargo xtask test`)` with the test's
/// name to stderr when there is none, so a skip is never silent.
///
/// # Panics
/// As [`config`].
pub fn config_or_skip(test_name: &str) -> Option<S3TestConfig> {
    let config = config();
    if config.is_none() {
        // Straight to the stream, not `eprintln!`: the test harness captures that macro's
        // output for passing tests, and a skip must show.
        let _ = writeln!(
            std::io::stderr(),
            "{test_name}: skipped: no S3 endpoint (run `cargo xtask test`)"
        );
    }
    config
}

/// A store prefix no other test (in this process or another) uses: the test name (made safe
/// for a key), the process id, a counter and the clock.
pub fn unique_prefix(test_name: &str) -> String {
    // A counter in the test kit only: tests in one process may ask at the same nanosecond.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let safe: String = test_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    format!(
        "{safe}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_key_safe() {
        let a = unique_prefix("conformance::list 2,500/keys");
        let b = unique_prefix("conformance::list 2,500/keys");
        assert_ne!(a, b);
        for p in [&a, &b] {
            assert!(p.starts_with("conformance--list-2-500-keys-"), "{p}");
            assert!(!p.contains('/'));
        }
    }
}
