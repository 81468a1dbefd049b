//! Applying prune to groups and namespaces, on every backend: dry runs change nothing, removals go
//! oldest first and only to what the plan marks, protected snapshots stay, a failure on one
//! snapshot is reported and the rest go on, a second run removes nothing.

mod common;

use jiff::tz::TimeZone;
use keepsake_datastore::prune::{KeepOptions, PruneMark};
use keepsake_datastore::{DataStore, Encryption, Error, PruneAction, PruneRun, PruneScope};
use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime, GroupFilter};

const DAY: i64 = 86_400;
const BASE: i64 = 1_717_600_000;

fn ns(s: &str) -> BackupNamespace {
    s.parse().unwrap()
}

fn group(s: &str) -> BackupGroup {
    s.parse().unwrap()
}

fn owner() -> Authid {
    "root@pam".parse().unwrap()
}

fn policy(s: &str) -> KeepOptions {
    s.parse().unwrap()
}

/// `days` finished daily snapshots in `g`, oldest first.
fn daily(store: &DataStore, ns: &BackupNamespace, g: &str, days: i64) {
    let handle = store.group(ns, &group(g));
    for day in 0..days {
        let time = BackupTime::from_epoch(BASE + day * DAY).unwrap();
        let mut backup = handle.start_backup(&owner(), time).unwrap();
        backup
            .add_blob(
                "qemu-server.conf.blob",
                format!("{day}").as_bytes(),
                Encryption::None,
            )
            .unwrap();
        backup.finish().unwrap();
    }
}

fn times(store: &DataStore, ns: &BackupNamespace, g: &str) -> Vec<i64> {
    let mut list = store.group(ns, &group(g)).list_backups().unwrap();
    keepsake_datastore::BackupInfo::sort(&mut list, keepsake_datastore::SortOrder::OldestFirst);
    list.iter().map(|b| b.snapshot.time().epoch()).collect()
}

#[test]
fn group_prune_dry_run_then_apply() {
    for ts in common::all("group_prune_dry_run_then_apply") {
        let store = &ts.store;
        let root = BackupNamespace::root();
        daily(store, &root, "vm/100", 6);
        // The second oldest is protected: kept, not counted.
        let protected = store.group(&root, &group("vm/100")).list_backups().unwrap();
        let mut sorted = protected.clone();
        keepsake_datastore::BackupInfo::sort(
            &mut sorted,
            keepsake_datastore::SortOrder::OldestFirst,
        );
        store
            .snapshot(&root, &sorted[1].snapshot)
            .set_protected(true)
            .unwrap();

        let g = store.group(&root, &group("vm/100"));
        let before = times(store, &root, "vm/100");
        let dry = g
            .prune(&policy("keep-last=2"), &TimeZone::UTC, PruneRun::DryRun)
            .unwrap();
        assert_eq!(
            times(store, &root, "vm/100"),
            before,
            "{}: dry run changed the group",
            ts.kind
        );
        assert_eq!(dry.would_remove(), 3, "{}", ts.kind);
        assert_eq!(dry.removed(), 0);
        let marks: Vec<PruneMark> = dry.snapshots.iter().map(|s| s.mark).collect();
        assert_eq!(
            marks,
            [
                PruneMark::Keep,
                PruneMark::Keep,
                PruneMark::Remove,
                PruneMark::Remove,
                PruneMark::Protected,
                PruneMark::Remove
            ],
            "{}",
            ts.kind
        );
        assert_eq!(dry.snapshots[0].reason.to_string(), "last 1 of 2");

        let done = g
            .prune(&policy("keep-last=2"), &TimeZone::UTC, PruneRun::Remove)
            .unwrap();
        assert_eq!(
            (done.removed(), done.failed(), done.kept()),
            (3, 0, 3),
            "{}",
            ts.kind
        );
        assert_eq!(
            times(store, &root, "vm/100"),
            [BASE + DAY, BASE + 4 * DAY, BASE + 5 * DAY],
            "{}",
            ts.kind
        );
        // Idempotent: the second run removes nothing.
        let again = g
            .prune(&policy("keep-last=2"), &TimeZone::UTC, PruneRun::Remove)
            .unwrap();
        assert_eq!(again.removed(), 0, "{}", ts.kind);
        // An empty policy keeps everything.
        let none = g
            .prune(&KeepOptions::default(), &TimeZone::UTC, PruneRun::Remove)
            .unwrap();
        assert_eq!((none.removed(), none.kept()), (0, 3), "{}", ts.kind);
        common::assert_cache_matches_bucket(&ts);
    }
}

#[test]
fn a_locked_snapshot_fails_alone() {
    for ts in common::all("a_locked_snapshot_fails_alone") {
        let store = &ts.store;
        let root = BackupNamespace::root();
        daily(store, &root, "ct/200", 4);
        let mut list = store.group(&root, &group("ct/200")).list_backups().unwrap();
        keepsake_datastore::BackupInfo::sort(&mut list, keepsake_datastore::SortOrder::OldestFirst);
        // Someone reads the oldest snapshot (shared lock): its removal must fail, not block.
        let reader = store.snapshot(&root, &list[0].snapshot);
        let guard = reader.lock_shared().unwrap();
        let report = store
            .group(&root, &group("ct/200"))
            .prune(&policy("keep-last=1"), &TimeZone::UTC, PruneRun::Remove)
            .unwrap();
        assert_eq!((report.removed(), report.failed()), (2, 1), "{}", ts.kind);
        let failed = report
            .snapshots
            .iter()
            .find(|s| matches!(s.action, PruneAction::Failed(_)))
            .unwrap();
        assert_eq!(failed.snapshot, list[0].snapshot);
        assert!(
            matches!(failed.action, PruneAction::Failed(Error::Locked { .. })),
            "{:?}",
            failed.action
        );
        drop(guard);
        assert_eq!(
            times(store, &root, "ct/200"),
            [BASE, BASE + 3 * DAY],
            "{}",
            ts.kind
        );
        common::assert_cache_matches_bucket(&ts);
    }
}

#[test]
fn namespace_prune_with_depth_and_filters() {
    for ts in common::all("namespace_prune_with_depth_and_filters") {
        let store = &ts.store;
        store.create_namespace(&ns("a")).unwrap();
        store.create_namespace(&ns("a/b")).unwrap();
        for (n, g) in [
            ("", "vm/100"),
            ("a", "vm/101"),
            ("a", "ct/300"),
            ("a/b", "vm/102"),
        ] {
            daily(store, &ns(n), g, 3);
        }
        let keep_one = policy("keep-last=1");

        // Only `a` itself, only vm groups: a/vm/101.
        let scope =
            PruneScope::namespace().with_filters(vec!["type:vm".parse::<GroupFilter>().unwrap()]);
        let report = store
            .prune_namespace(
                &ns("a"),
                &scope,
                &keep_one,
                &TimeZone::UTC,
                PruneRun::Remove,
            )
            .unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let pruned: Vec<String> = report
            .groups
            .iter()
            .map(|g| g.group.relative_path(&g.ns))
            .collect();
        assert_eq!(pruned, ["ns/a/vm/101"], "{}", ts.kind);
        assert_eq!(report.removed(), 2);
        assert_eq!(times(store, &ns("a"), "vm/101").len(), 1);
        assert_eq!(times(store, &ns("a"), "ct/300").len(), 3);
        assert_eq!(times(store, &ns("a/b"), "vm/102").len(), 3);

        // Recursive from the root, dry run: every group is planned, nothing changes.
        let dry = store
            .prune_namespace(
                &BackupNamespace::root(),
                &PruneScope::recursive(),
                &keep_one,
                &TimeZone::UTC,
                PruneRun::DryRun,
            )
            .unwrap();
        assert_eq!(dry.groups.len(), 4, "{}", ts.kind);
        assert_eq!(
            dry.groups.iter().map(|g| g.would_remove()).sum::<usize>(),
            6
        );
        assert_eq!(times(store, &ns("a/b"), "vm/102").len(), 3);

        // Recursive, exclude ct: everything but ct/300 ends with one snapshot.
        let scope = PruneScope::recursive()
            .with_filters(vec!["exclude:type:ct".parse::<GroupFilter>().unwrap()]);
        let report = store
            .prune_namespace(
                &BackupNamespace::root(),
                &scope,
                &keep_one,
                &TimeZone::UTC,
                PruneRun::Remove,
            )
            .unwrap();
        assert_eq!(report.removed(), 4, "{}", ts.kind);
        assert_eq!(report.failures(), 0);
        assert_eq!(times(store, &BackupNamespace::root(), "vm/100").len(), 1);
        assert_eq!(times(store, &ns("a/b"), "vm/102").len(), 1);
        assert_eq!(times(store, &ns("a"), "ct/300").len(), 3);

        // A missing namespace is an error, not an empty report.
        assert!(matches!(
            store.prune_namespace(
                &ns("nope"),
                &PruneScope::recursive(),
                &keep_one,
                &TimeZone::UTC,
                PruneRun::DryRun
            ),
            Err(Error::NotFound {
                what: "namespace",
                ..
            })
        ));
        common::assert_cache_matches_bucket(&ts);
    }
}
