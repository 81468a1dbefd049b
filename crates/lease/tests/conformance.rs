//! The lock conformance suite on lease locks in a real S3 server (moto, started by
//! `cargo xtask test`). Without an S3 endpoint every property prints a skip line and passes;
//! with `KEEPSAKE_S3_REQUIRED=1` a missing endpoint fails instead.

use std::path::Path;
use std::time::Duration;

use keepsake_backend::{ObjectBackend, RetrySettings, S3Config};
use keepsake_lease::{LeaseLocker, LeaseSettings};
use keepsake_lock::Locker;
use keepsake_lock::conformance::LockerFixture;
use keepsake_testkit::s3::S3TestConfig;
use sha2::{Digest, Sha256};

struct Leases {
    config: S3TestConfig,
}

impl LockerFixture for Leases {
    fn locker(&self, scratch: &Path) -> Box<dyn Locker> {
        let mut config = S3Config::new(
            self.config.bucket.clone(),
            self.config.region.clone(),
            self.config.access_key_id.clone(),
            self.config.secret_access_key.clone(),
        );
        config.endpoint = Some(self.config.endpoint.clone());
        config.allow_http = true;
        config.retry = RetrySettings::for_tests();
        // One store prefix per scratch folder: the parent and its re-run children share it.
        let hash = Sha256::digest(scratch.as_os_str().as_encoded_bytes());
        let store = format!("lease-conformance-{}", hex::encode(&hash[..8]));
        let remote = ObjectBackend::s3(&config, &store).expect("S3 backend");
        let settings =
            LeaseSettings::with_lease(Duration::from_secs(5)).clock_skew(Duration::from_secs(1));
        Box::new(LeaseLocker::new(remote, settings).expect("lease settings"))
    }

    /// Lease objects record pid, command line and host of every holder.
    fn reports_holders(&self) -> bool {
        true
    }
}

fn fixture(test: &str) -> Option<Leases> {
    keepsake_testkit::s3::config_or_skip(test).map(|config| Leases { config })
}

keepsake_lock::conformance_tests!(match fixture(module_path!()) {
    Some(fixture) => fixture,
    None => return,
});
