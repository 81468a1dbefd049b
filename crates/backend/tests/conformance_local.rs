//! The conformance suite on the local filesystem.

use keepsake_backend::conformance::Subject;
use keepsake_backend::{LocalBackend, SyncLevel};

fn local(_test: &str) -> Option<Subject> {
    let dir = tempfile::tempdir().expect("temporary folder");
    let backend = LocalBackend::open(dir.path(), SyncLevel::File).expect("open the folder");
    Some(Subject::with_guard(backend, dir))
}

keepsake_backend::backend_conformance_tests!(local);
