//! What the test files share: the S3 test server as a backend configuration.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use keepsake_backend::{ObjectBackend, RetrySettings, S3Config};

/// The S3 test server's configuration, or `None` (after printing the skip line) when there is
/// none; panics when `KEEPSAKE_S3_REQUIRED=1` and there is none.
pub fn s3_config(test: &str) -> Option<S3Config> {
    let found = keepsake_testkit::s3::config_or_skip(test)?;
    let mut config = S3Config::new(
        found.bucket,
        found.region,
        found.access_key_id,
        found.secret_access_key,
    );
    config.endpoint = Some(found.endpoint);
    config.allow_http = true;
    config.retry = RetrySettings::for_tests();
    config.request_timeout = Duration::from_secs(30);
    config.connect_timeout = Duration::from_secs(2);
    Some(config)
}

/// A datastore in the test bucket under a store prefix no other test uses.
pub fn s3_backend(test: &str) -> Option<ObjectBackend> {
    let config = s3_config(test)?;
    let store = keepsake_testkit::s3::unique_prefix(test);
    Some(ObjectBackend::s3(&config, &store).expect("valid S3 test configuration"))
}
