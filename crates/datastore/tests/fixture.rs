//! The PBS 3.2.4 fixture, opened as a datastore: listings match its README, every manifest and blob
//! loads, and destroying an unprotected snapshot leaves a tree the fixture's rules still describe.

use std::collections::BTreeSet;

use keepsake_datastore::{BackupInfo, DataStore};
use keepsake_hierarchy::{BackupNamespace, MANIFEST_BLOB_NAME};
use keepsake_testkit::fixture::{self, PbsFixture};

fn open(fx: &PbsFixture, locks: &std::path::Path) -> DataStore {
    DataStore::builder("store1", fx.path())
        .lock_root(locks)
        .open()
        .unwrap()
}

/// (namespace, snapshot, finished, protected) of every snapshot, as the datastore lists them.
fn listing(store: &DataStore) -> BTreeSet<(String, String, bool, bool)> {
    let mut out = BTreeSet::new();
    for ns in store
        .iter_namespaces_recursive(&BackupNamespace::root(), None)
        .unwrap()
    {
        let ns = ns.unwrap();
        for group in store.iter_groups(&ns).unwrap() {
            for info in group.unwrap().list_backups().unwrap() {
                out.insert((
                    ns.to_string(),
                    info.snapshot.to_string(),
                    info.is_finished(),
                    info.protected,
                ));
            }
        }
    }
    out
}

fn expected() -> BTreeSet<(String, String, bool, bool)> {
    fixture::SNAPSHOTS
        .iter()
        .map(|s| {
            (
                s.namespace.to_owned(),
                format!("{}/{}", s.group, s.time),
                s.finished,
                s.protected,
            )
        })
        .collect()
}

#[test]
fn lists_exactly_what_pbs_wrote() {
    let fx = PbsFixture::unpack().unwrap();
    let locks = tempfile::tempdir().unwrap();
    let store = open(&fx, locks.path());

    let namespaces: Vec<String> = store
        .iter_namespaces_recursive(&BackupNamespace::root(), None)
        .unwrap()
        .map(|n| n.unwrap().to_string())
        .collect();
    let mut sorted = namespaces.clone();
    sorted.sort();
    assert_eq!(sorted, fixture::NAMESPACES);
    assert_eq!(namespaces[0], "", "the anchor comes first");

    let mut owners = BTreeSet::new();
    for ns in fixture::NAMESPACES {
        let ns: BackupNamespace = ns.parse().unwrap();
        for group in store.iter_groups(&ns).unwrap() {
            let group = group.unwrap();
            owners.insert((
                ns.to_string(),
                group.name().to_string(),
                group.owner().unwrap().to_string(),
            ));
        }
    }
    let expected_owners: BTreeSet<_> = fixture::GROUPS
        .iter()
        .map(|(ns, g, o)| (ns.to_string(), g.to_string(), o.to_string()))
        .collect();
    assert_eq!(owners, expected_owners);
    assert_eq!(listing(&store), expected());

    // One level only, and a depth limit.
    let children: BTreeSet<String> = store
        .iter_namespaces(&BackupNamespace::root())
        .unwrap()
        .map(|n| n.unwrap().to_string())
        .collect();
    assert_eq!(
        children,
        BTreeSet::from(["dev".to_owned(), "prod".to_owned()])
    );
    let shallow = store
        .iter_namespaces_recursive(&BackupNamespace::root(), Some(1))
        .unwrap()
        .count();
    assert_eq!(shallow, 3);
    assert!(
        store
            .iter_namespaces_recursive(&BackupNamespace::root(), Some(8))
            .is_err()
    );
}

#[test]
fn every_manifest_and_blob_loads() {
    let fx = PbsFixture::unpack().unwrap();
    let locks = tempfile::tempdir().unwrap();
    let store = open(&fx, locks.path());
    let mut manifests = 0;
    for s in fixture::SNAPSHOTS.iter().filter(|s| s.finished) {
        let ns: BackupNamespace = s.namespace.parse().unwrap();
        let snapshot = store.snapshot(&ns, &format!("{}/{}", s.group, s.time).parse().unwrap());
        let manifest = snapshot.load_manifest().unwrap();
        assert_eq!(manifest.snapshot(), *snapshot.dir());
        for file in manifest.files() {
            let raw = snapshot.read_file(file.filename()).unwrap();
            if file.filename().ends_with(".blob") {
                snapshot.load_blob(file.filename()).unwrap();
                assert_eq!(raw.len() as u64, file.size());
            }
        }
        let info: BackupInfo = snapshot.info().unwrap();
        assert!(info.files.iter().any(|f| f == MANIFEST_BLOB_NAME));
        manifests += 1;
    }
    assert_eq!(manifests, 7);
    let vm100 = store.snapshot(
        &BackupNamespace::root(),
        &"vm/100/2024-06-05T15:06:40Z".parse().unwrap(),
    );
    assert!(
        vm100.notes().unwrap().unwrap().contains('\n'),
        "two-line notes"
    );
    assert!(vm100.verify_state().unwrap().is_some());
    let log = vm100.load_blob("client.log.blob").unwrap();
    assert!(!log.is_empty());
}

#[test]
fn destroying_an_unprotected_snapshot_keeps_the_rest() {
    let fx = PbsFixture::unpack().unwrap();
    let locks = tempfile::tempdir().unwrap();
    let store = open(&fx, locks.path());
    let root = BackupNamespace::root();
    let victim = store.snapshot(&root, &"vm/100/2024-06-06T15:06:40Z".parse().unwrap());
    victim.destroy().unwrap();
    assert!(!victim.exists().unwrap());

    let mut want = expected();
    want.remove(&(
        "".to_owned(),
        "vm/100/2024-06-06T15:06:40Z".to_owned(),
        true,
        false,
    ));
    assert_eq!(listing(&store), want);

    // The protected one refuses, and stays.
    let protected = store.snapshot(&root, &"vm/100/2024-06-05T15:06:40Z".parse().unwrap());
    assert!(matches!(
        protected.destroy(),
        Err(keepsake_datastore::Error::Protected { .. })
    ));
    assert_eq!(listing(&store), want);

    // Destroying the whole group keeps the protected snapshot and the group's owner.
    let group = store.group(&root, &"vm/100".parse().unwrap());
    let stats = group.destroy().unwrap();
    assert_eq!(
        (
            stats.removed_snapshots,
            stats.protected_snapshots,
            stats.removed_groups
        ),
        (1, 1, 0)
    );
    assert_eq!(group.owner().unwrap().to_string(), "root@pam");
    want.remove(&(
        "".to_owned(),
        "vm/100/2024-06-07T15:06:40Z".to_owned(),
        false,
        false,
    ));
    assert_eq!(listing(&store), want);

    // A group with nothing protected goes entirely, lock file and all.
    let ct = store.group(&root, &"ct/200".parse().unwrap());
    let stats = ct.destroy().unwrap();
    assert_eq!((stats.removed_snapshots, stats.removed_groups), (1, 1));
    assert!(!ct.exists().unwrap());
    assert!(!fx.path().join("ct/200").exists());
}
