//! The conformance suite on the cached object store (PBS's S3 datastore), over the in-memory
//! store and over a real S3 server (moto, started by `cargo xtask test`).

mod common;

use keepsake_backend::conformance::Subject;
use keepsake_backend::{CachedBackend, LocalBackend, ObjectBackend, SyncLevel};

fn cached(remote: ObjectBackend) -> Subject {
    let dir = tempfile::tempdir().expect("temporary folder");
    let cache = LocalBackend::open(dir.path(), SyncLevel::File).expect("open the folder");
    Subject::with_guard(CachedBackend::new(cache, remote), dir)
}

mod in_memory {
    use super::*;

    fn make(_test: &str) -> Option<Subject> {
        Some(cached(
            ObjectBackend::in_memory("store1").expect("valid store name"),
        ))
    }

    keepsake_backend::backend_conformance_tests!(make);
}

mod s3 {
    use super::*;

    fn make(test: &str) -> Option<Subject> {
        common::s3_backend(&format!("conformance_cached-{test}")).map(cached)
    }

    keepsake_backend::backend_conformance_tests!(make);
}
