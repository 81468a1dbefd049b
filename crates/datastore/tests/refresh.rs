//! The S3 cache on the datastore: `check_cache` reports every difference between cache and bucket,
//! at each depth, with the requests it sent; `refresh_cache` rebuilds the cache so that the check
//! comes back clean and the store verifies. On the cached in-memory store and on cached S3.

mod common;

use keepsake_backend::{Backend, BackendPath, WriteMode};
use keepsake_datastore::Encryption;
use keepsake_datastore::{
    CacheCheck, CacheDifferenceKind, DataStore, Error, VerifyOptions, VerifyScope,
};
use keepsake_hierarchy::{Authid, BackupNamespace, BackupTime};

fn p(s: &str) -> BackendPath {
    s.parse().unwrap()
}

fn backup(store: &DataStore, ns: &BackupNamespace, g: &str, time: i64) {
    let owner: Authid = "root@pam".parse().unwrap();
    let mut w = store
        .group(ns, &g.parse().unwrap())
        .start_backup(&owner, BackupTime::from_epoch(time).unwrap())
        .unwrap();
    w.add_blob(
        "conf.blob",
        format!("{g} {time}\n").as_bytes(),
        Encryption::None,
    )
    .unwrap();
    w.add_fixed_archive(
        "disk.img.fidx",
        &[time as u8; 9_000],
        4_096,
        Encryption::None,
    )
    .unwrap();
    w.finish().unwrap();
}

#[test]
fn check_reports_every_difference_and_refresh_repairs_them() {
    for ts in common::all("check_reports_every_difference_and_refresh_repairs_them") {
        let Some(cached) = ts.cached.clone() else {
            continue;
        };
        let store = &ts.store;
        let prod = store.create_namespace(&"prod".parse().unwrap()).unwrap();
        store.create_namespace(&"empty".parse().unwrap()).unwrap();
        backup(store, &BackupNamespace::root(), "vm/1", 1_000);
        backup(store, &prod, "ct/2", 1_000);
        store
            .group(&prod, &"ct/2".parse().unwrap())
            .set_notes("notes")
            .unwrap();

        let clean = store.check_cache(&cached, CacheCheck::Contents).unwrap();
        assert!(clean.is_consistent(), "{}: {clean:#?}", ts.kind);
        // 2 owners, 1 notes, 2 x (blob, index, manifest); markers are not compared.
        assert_eq!(
            (clean.cache_files, clean.bucket_files),
            (9, 9),
            "{}",
            ts.kind
        );
        assert_eq!(clean.requests.get, 9, "{}: one GET per file", ts.kind);
        let sizes = store.check_cache(&cached, CacheCheck::Sizes).unwrap();
        assert_eq!((sizes.requests.get, sizes.requests.head), (0, 9));

        // Plant one difference of each kind.
        let snapshot = "vm/1/1970-01-01T00:16:40Z";
        cached
            .cache()
            .remove_file(&p(&format!("{snapshot}/conf.blob")))
            .unwrap();
        cached
            .cache()
            .write(&p("ns/prod/ct/2/notes"), b"NOTES", WriteMode::Replace)
            .unwrap();
        cached
            .cache()
            .write(&p("vm/1/owner"), b"root@pam\n\n", WriteMode::Replace)
            .unwrap();
        cached
            .cache()
            .write(&p("ct/9/owner"), b"root@pam\n", WriteMode::CreateOnly)
            .unwrap();
        cached
            .remote()
            .write(&p("vm/1/notes"), b"bucket only", WriteMode::CreateOnly)
            .unwrap();

        let found = |depth| {
            store
                .check_cache(&cached, depth)
                .unwrap()
                .differences
                .into_iter()
                .map(|d| (d.path, d.kind))
                .collect::<Vec<_>>()
        };
        let existence = vec![
            ("ct/9/owner".to_owned(), CacheDifferenceKind::OnlyInCache),
            (
                format!("{snapshot}/conf.blob"),
                CacheDifferenceKind::OnlyInBucket,
            ),
            ("vm/1/notes".to_owned(), CacheDifferenceKind::OnlyInBucket),
        ];
        assert_eq!(found(CacheCheck::Names), existence, "{}", ts.kind);
        let owner_size = (
            "vm/1/owner".to_owned(),
            CacheDifferenceKind::SizeDiffers {
                cache: 10,
                bucket: 9,
            },
        );
        let mut with_sizes = existence.clone();
        with_sizes.push(owner_size.clone());
        assert_eq!(found(CacheCheck::Sizes), with_sizes, "{}", ts.kind);
        let mut with_contents = existence;
        with_contents.insert(
            1,
            (
                "ns/prod/ct/2/notes".to_owned(),
                CacheDifferenceKind::ContentDiffers,
            ),
        );
        with_contents.push(owner_size);
        assert_eq!(found(CacheCheck::Contents), with_contents, "{}", ts.kind);

        let refresh = store.refresh_cache(&cached).unwrap();
        assert_eq!(
            (refresh.refresh.downloaded, refresh.refresh.unchanged),
            (4, 6),
            "{}: the 3 changed files and the bucket-only notes; the rest is current",
            ts.kind
        );
        assert_eq!(
            (refresh.requests.get, refresh.refresh.removed),
            (4, 1),
            "{}: {refresh:?}",
            ts.kind
        );
        let after = store.check_cache(&cached, CacheCheck::Contents).unwrap();
        assert!(after.is_consistent(), "{}: {after:#?}", ts.kind);
        assert_eq!(
            store
                .group(&BackupNamespace::root(), &"vm/1".parse().unwrap())
                .notes()
                .unwrap()
                .as_deref(),
            Some("bucket only")
        );
        assert!(!cached.cache().exists(&p("ct/9")).unwrap());
        let report = store
            .verify(&VerifyScope::Store, &VerifyOptions::default())
            .unwrap();
        assert!(report.is_ok(), "{}: {report:#?}", ts.kind);
        assert_eq!(report.snapshots.len(), 2);

        // Only the store's own backend is accepted.
        let other = common::cached_memory();
        assert!(matches!(
            store.check_cache(other.cached.as_deref().unwrap(), CacheCheck::Names),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            store.refresh_cache(other.cached.as_deref().unwrap()),
            Err(Error::InvalidArgument(_))
        ));
    }
}
