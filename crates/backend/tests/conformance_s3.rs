//! The conformance suite on a real S3 server (moto, started by `cargo xtask test`).

mod common;

use keepsake_backend::conformance::Subject;

fn s3(test: &str) -> Option<Subject> {
    common::s3_backend(&format!("conformance_s3-{test}")).map(Subject::new)
}

keepsake_backend::backend_conformance_tests!(s3);
