//! The conformance suite on the in-memory object store.

use keepsake_backend::ObjectBackend;
use keepsake_backend::conformance::Subject;

fn in_memory(_test: &str) -> Option<Subject> {
    Some(Subject::new(
        ObjectBackend::in_memory("store1").expect("valid store name"),
    ))
}

keepsake_backend::backend_conformance_tests!(in_memory);
