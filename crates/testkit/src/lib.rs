//! Test kit for the keepsake workspace (a dev-dependency only; never a normal dependency).
//!
//! - [`fixture`]: the real PBS 3.2.4 datastore `pbs-3.2.4-store1.tar`, unpacked into a temporary
//!   folder per test, plus the facts its README states, as constants the tests can compare with.
//! - [`s3`]: the S3 test server's settings (`KEEPSAKE_S3_*`), skip-or-fail, unique store prefixes.
//! - [`proxy`]: a loopback HTTP proxy in front of the S3 test server that can lose the reply to
//!   a conditional PUT after the server carried it out (the client then retries).
//! - `faults` (feature `object-store`): an `object_store::ObjectStore` wrapper that injects
//!   failures (the Nth call, seeded random, partial batch deletes) and delays.
//!
//! ```
//! let store = keepsake_testkit::fixture::PbsFixture::unpack().unwrap();
//! assert!(store.path().join("vm/100/owner").is_file());
//! ```

pub mod fixture;
pub mod proxy;
pub mod s3;

#[cfg(feature = "object-store")]
pub mod faults;
