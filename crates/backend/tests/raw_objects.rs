//! Objects beside a datastore's content (`.in-use`, lease objects): reads, conditional writes,
//! conditional deletes and time limits, on the in-memory store and on a real S3 server (moto).

mod common;

use std::time::Duration;

use keepsake_backend::{Backend, DeleteOutcome, Error, InUse, ObjectBackend, WriteMode};

fn stores(test: &str) -> Vec<(&'static str, ObjectBackend)> {
    let mut out = vec![("memory", ObjectBackend::in_memory("store1").unwrap())];
    if let Some(s3) = common::s3_backend(test) {
        out.push(("s3", s3));
    }
    out
}

#[test]
fn raw_objects_write_read_and_delete_only_at_the_version_given() {
    for (kind, store) in stores("raw_objects_conditional_delete") {
        let key = store.raw_key(".keepsake-leases/abc").unwrap();
        assert_eq!(store.get_raw(&key).unwrap(), None, "{kind}");
        let first = store.put_raw(&key, b"one", WriteMode::CreateOnly).unwrap();
        assert!(matches!(
            store.put_raw(&key, b"again", WriteMode::CreateOnly),
            Err(Error::AlreadyExists { .. })
        ));
        let second = store
            .put_raw(&key, b"two", WriteMode::Update(first.clone()))
            .unwrap();
        let read = store.get_raw(&key).unwrap().unwrap();
        assert_eq!(
            (read.data.as_slice(), &read.version),
            (&b"two"[..], &second)
        );
        // A delete at an old version changes nothing; at the current one it deletes.
        assert_eq!(
            store.delete_raw(&key, Some(&first)).unwrap(),
            DeleteOutcome::Changed,
            "{kind}"
        );
        assert!(store.get_raw(&key).unwrap().is_some(), "{kind}");
        assert_eq!(
            store.delete_raw(&key, Some(&second)).unwrap(),
            DeleteOutcome::Deleted,
            "{kind}"
        );
        assert_eq!(store.get_raw(&key).unwrap(), None, "{kind}");
        assert_eq!(
            store.delete_raw(&key, Some(&second)).unwrap(),
            DeleteOutcome::Missing,
            "{kind}"
        );
        // Listing: the objects directly below a folder.
        for name in ["x", "y"] {
            let k = store.raw_key(&format!(".keepsake-leases/{name}")).unwrap();
            store.put_raw(&k, b"", WriteMode::Replace).unwrap();
        }
        let folder = store.raw_key(".keepsake-leases").unwrap();
        let names: Vec<String> = store
            .list_raw(&folder)
            .unwrap()
            .iter()
            .map(|k| k.relative().to_string())
            .collect();
        assert_eq!(
            names,
            [".keepsake-leases/x", ".keepsake-leases/y"],
            "{kind}"
        );
    }
}

#[test]
fn raw_keys_stay_beside_the_content() {
    let store = ObjectBackend::in_memory("store1").unwrap();
    for bad in [
        "",
        ".cnt/vm/100/owner",
        ".chunks/0000/x",
        "../x",
        "a//b",
        "a/../b",
    ] {
        assert!(store.raw_key(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        store.raw_key(".in-use").unwrap().key().as_ref(),
        "store1/.in-use"
    );
}

#[test]
fn the_in_use_marker_names_the_host() {
    for (kind, store) in stores("raw_objects_in_use") {
        assert_eq!(store.in_use().unwrap(), InUse::NoMarker, "{kind}");
        let state = store.bucket_state().unwrap().unwrap();
        assert!(!state.holds_datastore(), "{kind}: {state:?}");
        store.mark_in_use("pbs1").unwrap();
        assert_eq!(
            store.in_use().unwrap(),
            InUse::Host("pbs1".to_owned()),
            "{kind}"
        );
        let state = store.bucket_state().unwrap().unwrap();
        assert!(state.holds_datastore(), "{kind}: {state:?}");
        // PBS's marker bytes exactly.
        let raw = store
            .get_raw(&store.raw_key(".in-use").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(raw.data, br#"{"hostname":"pbs1"}"#, "{kind}");
    }
}

#[test]
fn a_time_limit_ends_slow_requests() {
    let Some(store) = common::s3_backend("raw_objects_time_limit") else {
        return;
    };
    let key = store.raw_key(".keepsake-leases/slow").unwrap();
    // No request to a real endpoint answers within a microsecond.
    let limited = store.with_time_limit(Duration::from_micros(1));
    let err = limited.put_raw(&key, b"x", WriteMode::Replace).unwrap_err();
    assert!(err.to_string().contains("object store"), "{err}");
    assert!(
        format!("{err:?}").contains("longer than its limit"),
        "{err:?}"
    );
    // The unlimited handle on the same store works.
    store.put_raw(&key, b"x", WriteMode::Replace).unwrap();
}
