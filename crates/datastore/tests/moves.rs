//! Move and merge of snapshots, groups and namespaces, on every backend (local filesystem, cached
//! in-memory object store, cached S3 on the test server): PBS's merge invariants, the notes rules,
//! protection travelling with the snapshot, typed refusals that change nothing, and recovery of a
//! move that failed half-way on a backend without atomic renames.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keepsake_backend::{
    Backend, BackendPath, Capabilities, ChunkDigest, ChunkInsert, FileContents, KeepFilter,
    Listing, RemoveReport, Stat, Version, WriteMode,
};
use keepsake_datastore::{
    CacheCheck, DataStore, Error, MoveRefusal, RecoveryOutcome, VerifyOptions, VerifyScope,
};
use keepsake_datastore::{Encryption, Merge};
use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};

fn ns(s: &str) -> BackupNamespace {
    s.parse().unwrap()
}

fn group(s: &str) -> BackupGroup {
    s.parse().unwrap()
}

fn root_ns() -> BackupNamespace {
    BackupNamespace::root()
}

fn root() -> Authid {
    "root@pam".parse().unwrap()
}

fn t(epoch: i64) -> BackupTime {
    BackupTime::from_epoch(epoch).unwrap()
}

/// Writes a finished snapshot (a blob and a fixed index) as `owner`.
fn backup_as(store: &DataStore, n: &BackupNamespace, g: &str, time: i64, owner: &Authid) {
    let mut w = store
        .group(n, &group(g))
        .start_backup(owner, t(time))
        .unwrap();
    w.add_blob(
        "conf.blob",
        format!("{g} at {time}\n").as_bytes(),
        Encryption::None,
    )
    .unwrap();
    let image: Vec<u8> = (0..70_000u32)
        .map(|i| (i % 253) as u8 ^ time as u8)
        .collect();
    w.add_fixed_archive("disk.img.fidx", &image, 65_536, Encryption::None)
        .unwrap();
    w.finish().unwrap();
}

fn backup(store: &DataStore, n: &BackupNamespace, g: &str, time: i64) {
    backup_as(store, n, g, time, &root());
}

fn times(store: &DataStore, n: &BackupNamespace, g: &str) -> Vec<i64> {
    let mut out: Vec<i64> = store
        .group(n, &group(g))
        .list_backups()
        .unwrap()
        .into_iter()
        .map(|b| b.snapshot.time().epoch())
        .collect();
    out.sort_unstable();
    out
}

/// Every (namespace, group, time, protected) in the store.
fn inventory(store: &DataStore) -> BTreeSet<(String, String, i64, bool)> {
    let mut out = BTreeSet::new();
    for n in store.iter_namespaces_recursive(&root_ns(), None).unwrap() {
        let n = n.unwrap();
        for g in store.iter_groups(&n).unwrap() {
            for info in g.unwrap().list_backups().unwrap() {
                out.insert((
                    n.to_string(),
                    info.snapshot.group().to_string(),
                    info.snapshot.time().epoch(),
                    info.protected,
                ));
            }
        }
    }
    out
}

/// The whole store verifies clean and the journal is empty.
fn assert_sound(ts: &common::TestStore) {
    let report = ts
        .store
        .verify(&VerifyScope::Store, &VerifyOptions::default())
        .unwrap();
    assert!(report.is_ok(), "{}: {report:#?}", ts.kind);
    assert!(
        ts.store.journal_intents().unwrap().is_empty(),
        "{}",
        ts.kind
    );
    common::assert_cache_matches_bucket(ts);
}

fn refusal(result: Result<impl std::fmt::Debug, Error>) -> MoveRefusal {
    match result {
        Err(Error::MoveRefused { reason, .. }) => *reason,
        other => panic!("expected a refused move, got {other:?}"),
    }
}

#[test]
fn snapshot_move_creates_the_group_and_keeps_protection() {
    for ts in common::all("snapshot_move_creates_the_group_and_keeps_protection") {
        let store = &ts.store;
        let a = store.create_namespace(&ns("a")).unwrap();
        backup(store, &root_ns(), "vm/1", 1_000);
        backup(store, &root_ns(), "vm/1", 2_000);
        let first = store.snapshot(&root_ns(), &"vm/1/1970-01-01T00:16:40Z".parse().unwrap());
        first.set_protected(true).unwrap();
        store
            .group(&root_ns(), &group("vm/1"))
            .set_notes("source notes")
            .unwrap();

        let moved = first.move_to(&a, Merge::Never).unwrap();
        assert!(!first.exists().unwrap(), "{}", ts.kind);
        assert!(
            moved.is_protected().unwrap(),
            "{}: protection moves",
            ts.kind
        );
        assert!(moved.is_finished().unwrap());
        assert_eq!(moved.load_manifest().unwrap().snapshot(), *first.dir());
        assert_eq!(moved.group().owner().unwrap(), root());
        assert_eq!(
            moved.group().notes().unwrap(),
            None,
            "notes stay with the source"
        );
        assert_eq!(times(store, &root_ns(), "vm/1"), [2_000]);
        assert_eq!(times(store, &a, "vm/1"), [1_000]);

        let second = store.snapshot(&root_ns(), &"vm/1/1970-01-01T00:33:20Z".parse().unwrap());
        assert_eq!(
            refusal(second.move_to(&a, Merge::Never)),
            MoveRefusal::TargetExists
        );
        assert_eq!(
            refusal(second.move_to(&root_ns(), Merge::IntoExisting)),
            MoveRefusal::SameLocation
        );
        assert!(matches!(
            second.move_to(&ns("nowhere"), Merge::IntoExisting),
            Err(Error::NotFound {
                what: "namespace",
                ..
            })
        ));
        second.move_to(&a, Merge::IntoExisting).unwrap();
        assert_eq!(times(store, &a, "vm/1"), [1_000, 2_000]);
        // The emptied source group stays, with owner and notes.
        let source = store.group(&root_ns(), &group("vm/1"));
        assert!(source.exists().unwrap());
        assert_eq!(source.notes().unwrap().as_deref(), Some("source notes"));
        assert!(matches!(
            second.move_to(&a, Merge::IntoExisting),
            Err(Error::NotFound {
                what: "snapshot",
                ..
            })
        ));
        assert_sound(&ts);
    }
}

#[test]
fn merge_refuses_owner_mismatch_and_changes_nothing() {
    for ts in common::all("merge_refuses_owner_mismatch_and_changes_nothing") {
        let store = &ts.store;
        let other: Authid = "other@pbs".parse().unwrap();
        let a = store.create_namespace(&ns("a")).unwrap();
        backup(store, &root_ns(), "vm/1", 5_000);
        backup_as(store, &a, "vm/1", 1_000, &other);
        let before = inventory(store);

        let source = store.group(&root_ns(), &group("vm/1"));
        assert_eq!(
            refusal(source.move_to(&a, Merge::IntoExisting)),
            MoveRefusal::OwnerMismatch {
                source_owner: root(),
                target_owner: other.clone(),
            }
        );
        let snapshot = store.snapshot(&root_ns(), &"vm/1/1970-01-01T01:23:20Z".parse().unwrap());
        let err = snapshot.move_to(&a, Merge::IntoExisting).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("owner mismatch") && text.contains("other@pbs"),
            "{text}"
        );
        // A namespace move checks every group before it moves anything.
        store.create_namespace(&ns("b")).unwrap();
        backup(store, &ns("b"), "ct/9", 100);
        store.create_namespace(&ns("b/a")).unwrap();
        backup(store, &ns("b/a"), "vm/1", 9_000);
        let before_ns = inventory(store);
        // Moving `b/a` onto `a` would merge `b/a`'s vm/1 into `a`'s, which has another owner.
        assert!(matches!(
            refusal(store.move_namespace(&ns("b/a"), &ns("a"), Merge::IntoExisting)),
            MoveRefusal::OwnerMismatch { .. }
        ));
        assert_eq!(inventory(store), before_ns, "{}: nothing moved", ts.kind);
        assert!(before.is_subset(&before_ns));
        assert_sound(&ts);
    }
}

#[test]
fn merge_refuses_time_overlap() {
    for ts in common::all("merge_refuses_time_overlap") {
        let store = &ts.store;
        let a = store.create_namespace(&ns("a")).unwrap();
        backup(store, &root_ns(), "vm/1", 1_000);
        backup(store, &root_ns(), "vm/1", 3_000);
        backup(store, &a, "vm/1", 2_000);
        let before = inventory(store);
        let source = store.group(&root_ns(), &group("vm/1"));
        assert_eq!(
            refusal(source.move_to(&a, Merge::IntoExisting)),
            MoveRefusal::TimeOverlap {
                oldest_moved: t(1_000),
                newest_target: t(2_000),
            }
        );
        let old = store.snapshot(&root_ns(), &"vm/1/1970-01-01T00:16:40Z".parse().unwrap());
        assert!(matches!(
            refusal(old.move_to(&a, Merge::IntoExisting)),
            MoveRefusal::TimeOverlap { .. }
        ));
        assert_eq!(inventory(store), before, "{}", ts.kind);

        // Equal times overlap too: the source must be strictly newer.
        backup(store, &root_ns(), "ct/5", 4_000);
        backup(store, &a, "ct/5", 4_000);
        assert!(matches!(
            refusal(
                store
                    .group(&root_ns(), &group("ct/5"))
                    .move_to(&a, Merge::IntoExisting)
            ),
            MoveRefusal::TimeOverlap { .. }
        ));

        // The newer snapshot alone may go; then the rest of the group no longer fits.
        let new = store.snapshot(&root_ns(), &"vm/1/1970-01-01T00:50:00Z".parse().unwrap());
        new.move_to(&a, Merge::IntoExisting).unwrap();
        assert_eq!(times(store, &a, "vm/1"), [2_000, 3_000]);
        assert!(matches!(
            refusal(source.move_to(&a, Merge::IntoExisting)),
            MoveRefusal::TimeOverlap { .. }
        ));
        assert_sound(&ts);
    }
}

#[test]
fn group_moves_whole_and_merges_with_the_notes_rules() {
    for ts in common::all("group_moves_whole_and_merges_with_the_notes_rules") {
        let store = &ts.store;
        let a = store.create_namespace(&ns("a")).unwrap();

        // Whole move: owner, notes and a protected snapshot travel.
        backup(store, &root_ns(), "vm/1", 1_000);
        backup(store, &root_ns(), "vm/1", 2_000);
        let g1 = store.group(&root_ns(), &group("vm/1"));
        g1.set_notes("vm 1 notes").unwrap();
        store
            .snapshot(&root_ns(), &"vm/1/1970-01-01T00:16:40Z".parse().unwrap())
            .set_protected(true)
            .unwrap();
        let report = g1.move_to(&a, Merge::Never).unwrap();
        assert_eq!((report.snapshots, report.groups_moved), (2, 1));
        assert!(!g1.exists().unwrap());
        let moved = store.group(&a, &group("vm/1"));
        assert_eq!(moved.notes().unwrap().as_deref(), Some("vm 1 notes"));
        assert_eq!(moved.owner().unwrap(), root());
        assert!(
            moved.list_backups().unwrap().iter().any(|b| b.protected),
            "{}",
            ts.kind
        );

        // Merge, notes only in the source: they move.
        backup(store, &a, "ct/2", 1_000);
        backup(store, &root_ns(), "ct/2", 2_000);
        store
            .group(&root_ns(), &group("ct/2"))
            .set_notes("from source")
            .unwrap();
        let report = store
            .group(&root_ns(), &group("ct/2"))
            .move_to(&a, Merge::IntoExisting)
            .unwrap();
        assert_eq!(
            (report.snapshots, report.groups_merged, report.notes_moved),
            (1, 1, 1)
        );
        assert!(!store.group(&root_ns(), &group("ct/2")).exists().unwrap());
        assert_eq!(
            store.group(&a, &group("ct/2")).notes().unwrap().as_deref(),
            Some("from source")
        );
        assert_eq!(times(store, &a, "ct/2"), [1_000, 2_000]);

        // Merge, notes on both sides: the target's stay.
        backup(store, &a, "host/h", 1_000);
        store
            .group(&a, &group("host/h"))
            .set_notes("target notes")
            .unwrap();
        backup(store, &root_ns(), "host/h", 2_000);
        backup(store, &root_ns(), "host/h", 3_000);
        store
            .snapshot(&root_ns(), &"host/h/1970-01-01T00:50:00Z".parse().unwrap())
            .set_protected(true)
            .unwrap();
        store
            .group(&root_ns(), &group("host/h"))
            .set_notes("source notes")
            .unwrap();
        let report = store
            .group(&root_ns(), &group("host/h"))
            .move_to(&a, Merge::IntoExisting)
            .unwrap();
        assert_eq!((report.snapshots, report.notes_moved), (2, 0));
        let target = store.group(&a, &group("host/h"));
        assert_eq!(target.notes().unwrap().as_deref(), Some("target notes"));
        let infos = target.list_backups().unwrap();
        assert_eq!(infos.len(), 3);
        assert_eq!(
            infos.iter().filter(|b| b.protected).count(),
            1,
            "protected snapshot merged"
        );
        assert!(!store.group(&root_ns(), &group("host/h")).exists().unwrap());

        // Merge, notes only in the target: untouched.
        backup(store, &a, "vm/3", 1_000);
        store.group(&a, &group("vm/3")).set_notes("kept").unwrap();
        backup(store, &root_ns(), "vm/3", 2_000);
        store
            .group(&root_ns(), &group("vm/3"))
            .move_to(&a, Merge::IntoExisting)
            .unwrap();
        assert_eq!(
            store.group(&a, &group("vm/3")).notes().unwrap().as_deref(),
            Some("kept")
        );

        assert!(matches!(
            store
                .group(&root_ns(), &group("vm/404"))
                .move_to(&a, Merge::IntoExisting),
            Err(Error::NotFound { what: "group", .. })
        ));
        assert_sound(&ts);
    }
}

#[test]
fn group_move_refuses_while_a_snapshot_is_in_use() {
    for ts in common::all("group_move_refuses_while_a_snapshot_is_in_use") {
        let store = &ts.store;
        let a = store.create_namespace(&ns("a")).unwrap();
        backup(store, &root_ns(), "vm/1", 1_000);
        let reader = store
            .snapshot(&root_ns(), &"vm/1/1970-01-01T00:16:40Z".parse().unwrap())
            .lock_shared()
            .unwrap();
        let err = store
            .group(&root_ns(), &group("vm/1"))
            .move_to(&a, Merge::Never)
            .unwrap_err();
        assert!(err.is_locked(), "{}: {err:?}", ts.kind);
        drop(reader);
        let group_lock = store.group(&a, &group("vm/1")).lock().unwrap();
        assert!(
            store
                .group(&root_ns(), &group("vm/1"))
                .move_to(&a, Merge::Never)
                .unwrap_err()
                .is_locked()
        );
        drop(group_lock);
        assert_eq!(times(store, &root_ns(), "vm/1"), [1_000]);
        assert!(store.journal_intents().unwrap().is_empty());
        store
            .group(&root_ns(), &group("vm/1"))
            .move_to(&a, Merge::Never)
            .unwrap();
        assert_sound(&ts);
    }
}

#[test]
fn namespace_moves_with_children_and_merges() {
    for ts in common::all("namespace_moves_with_children_and_merges") {
        let store = &ts.store;
        for n in ["a", "a/b", "a/b/c", "a/empty", "x"] {
            store.create_namespace(&ns(n)).unwrap();
        }
        backup(store, &ns("a"), "vm/1", 1_000);
        backup(store, &ns("a/b"), "ct/2", 1_000);
        backup(store, &ns("a/b/c"), "host/3", 1_000);
        store
            .snapshot(
                &ns("a/b/c"),
                &"host/3/1970-01-01T00:16:40Z".parse().unwrap(),
            )
            .set_protected(true)
            .unwrap();

        assert_eq!(
            refusal(store.move_namespace(&root_ns(), &ns("x/r"), Merge::Never)),
            MoveRefusal::RootNamespace
        );
        assert_eq!(
            refusal(store.move_namespace(&ns("a"), &ns("a/b/a"), Merge::Never)),
            MoveRefusal::IntoItself
        );
        assert_eq!(
            refusal(store.move_namespace(&ns("a"), &ns("a"), Merge::Never)),
            MoveRefusal::SameLocation
        );
        assert!(matches!(
            store.move_namespace(&ns("a"), &ns("missing/a"), Merge::Never),
            Err(Error::NotFound {
                what: "namespace",
                ..
            })
        ));
        // a/b/c is 3 deep; under x/1/2/3/4/5 it would be 8 deep.
        let mut deep = ns("x");
        for c in ["1", "2", "3", "4"] {
            deep = deep.child(c).unwrap();
            store.create_namespace(&deep).unwrap();
        }
        assert!(matches!(
            refusal(store.move_namespace(&ns("a"), &deep.child("a").unwrap(), Merge::Never)),
            MoveRefusal::TooDeep { deepest: 8 }
        ));

        let before = inventory(store);
        let report = store
            .move_namespace(&ns("a"), &ns("x/a"), Merge::Never)
            .unwrap();
        assert_eq!(report.snapshots, 3, "{}", ts.kind);
        assert_eq!(report.namespaces_created, 4);
        assert_eq!(report.namespaces_removed, 4);
        assert!(!store.namespace_exists(&ns("a")).unwrap());
        assert!(store.namespace_exists(&ns("x/a/empty")).unwrap());
        let after = inventory(store);
        let renamed: BTreeSet<_> = before
            .iter()
            .map(|(n, g, time, p)| {
                let n = if n == "a" || n.starts_with("a/") {
                    format!("x/{n}")
                } else {
                    n.clone()
                };
                (n, g.clone(), *time, *p)
            })
            .collect();
        assert_eq!(after, renamed, "{}", ts.kind);

        // Merge into an existing tree: refused without `merge`, nothing moves; with it, merged.
        store.create_namespace(&ns("y")).unwrap();
        store.create_namespace(&ns("y/b")).unwrap();
        backup(store, &ns("y/b"), "ct/2", 500);
        store
            .group(&ns("y/b"), &group("ct/2"))
            .set_notes("y notes")
            .unwrap();
        let before_merge = inventory(store);
        assert_eq!(
            refusal(store.move_namespace(&ns("x/a"), &ns("y"), Merge::Never)),
            MoveRefusal::TargetExists
        );
        assert_eq!(inventory(store), before_merge);
        let report = store
            .move_namespace(&ns("x/a"), &ns("y"), Merge::IntoExisting)
            .unwrap();
        assert_eq!((report.groups_merged, report.groups_moved), (1, 2));
        assert_eq!(times(store, &ns("y/b"), "ct/2"), [500, 1_000]);
        assert_eq!(
            store
                .group(&ns("y/b"), &group("ct/2"))
                .notes()
                .unwrap()
                .as_deref(),
            Some("y notes")
        );
        assert!(store.namespace_exists(&ns("y/b/c")).unwrap());
        assert!(!store.namespace_exists(&ns("x/a")).unwrap());
        assert_sound(&ts);
    }
}

/// A backend that fails one chosen write or removal, to interrupt a move half-way the way an S3
/// error does.
#[derive(Debug)]
struct Failing<B> {
    inner: B,
    calls: AtomicU64,
    fail_at: AtomicU64,
}

impl<B: Backend> Failing<B> {
    fn fail(&self) -> keepsake_backend::Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_at.load(Ordering::SeqCst) {
            return Err(keepsake_backend::Error::Io {
                path: std::path::PathBuf::from("injected"),
                source: std::io::Error::other("injected failure"),
            });
        }
        Ok(())
    }
}

impl<B: Backend> Backend for Failing<B> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn list(&self, folder: &BackendPath) -> keepsake_backend::Result<Listing<'_>> {
        self.inner.list(folder)
    }
    fn read(&self, file: &BackendPath) -> keepsake_backend::Result<FileContents> {
        self.inner.read(file)
    }
    fn write(
        &self,
        file: &BackendPath,
        data: &[u8],
        mode: WriteMode,
    ) -> keepsake_backend::Result<Version> {
        self.fail()?;
        self.inner.write(file, data, mode)
    }
    fn remove_file(&self, file: &BackendPath) -> keepsake_backend::Result<()> {
        self.fail()?;
        self.inner.remove_file(file)
    }
    fn remove_tree(
        &self,
        folder: &BackendPath,
        keep: &KeepFilter,
    ) -> keepsake_backend::Result<RemoveReport> {
        self.fail()?;
        self.inner.remove_tree(folder, keep)
    }
    fn rename(&self, from: &BackendPath, to: &BackendPath) -> keepsake_backend::Result<()> {
        self.fail()?;
        self.inner.rename(from, to)
    }
    fn stat(&self, path: &BackendPath) -> keepsake_backend::Result<Stat> {
        self.inner.stat(path)
    }
    fn create_dir_all(&self, folder: &BackendPath) -> keepsake_backend::Result<()> {
        self.inner.create_dir_all(folder)
    }
    fn insert_chunk(
        &self,
        digest: &ChunkDigest,
        blob: &[u8],
    ) -> keepsake_backend::Result<ChunkInsert> {
        self.inner.insert_chunk(digest, blob)
    }
    fn read_chunk(&self, digest: &ChunkDigest) -> keepsake_backend::Result<Vec<u8>> {
        self.inner.read_chunk(digest)
    }
    fn chunk_exists(&self, digest: &ChunkDigest) -> keepsake_backend::Result<bool> {
        self.inner.chunk_exists(digest)
    }
    fn host_local(&self) -> Option<&keepsake_backend::LocalBackend> {
        self.inner.host_local()
    }
}

#[test]
fn a_move_failing_half_way_is_completed_by_recover() {
    for ts in common::all("a_move_failing_half_way_is_completed_by_recover") {
        // The same datastore folder, reached through a backend that fails on command.
        let Some(cached) = ts.cached.clone() else {
            continue;
        };
        let failing = Arc::new(Failing {
            inner: cached,
            calls: AtomicU64::new(0),
            fail_at: AtomicU64::new(0),
        });
        let store = DataStore::builder("teststore", ts.root())
            .lock_root(ts.dir.path().join("locks"))
            .backend(failing.clone())
            .open()
            .unwrap();
        let a = store.create_namespace(&ns("a")).unwrap();
        backup(&store, &root_ns(), "vm/1", 1_000);
        backup(&store, &root_ns(), "vm/1", 2_000);
        store
            .group(&root_ns(), &group("vm/1"))
            .set_notes("n")
            .unwrap();
        store
            .snapshot(&root_ns(), &"vm/1/1970-01-01T00:16:40Z".parse().unwrap())
            .set_protected(true)
            .unwrap();
        backup(&store, &a, "ct/1", 1_000);
        backup(&store, &root_ns(), "ct/1", 2_000);
        let before = inventory(&store);
        let expected: BTreeSet<_> = before
            .iter()
            .map(|(_, g, time, p)| ("a".to_owned(), g.clone(), *time, *p))
            .collect();

        // Fail the 3rd write of a whole-group copy, then a later step of a merge.
        for (g, fail_at) in [("vm/1", 3), ("ct/1", 4)] {
            failing.calls.store(0, Ordering::SeqCst);
            failing.fail_at.store(fail_at, Ordering::SeqCst);
            let err = store
                .group(&root_ns(), &group(g))
                .move_to(&a, Merge::IntoExisting)
                .unwrap_err();
            // Part of the move may be done; the error says what, and the rest is journaled.
            assert!(
                matches!(&err, Error::Interrupted { source, .. } if matches!(**source, Error::Backend { .. })),
                "{}: {err:?}",
                ts.kind
            );
            failing.fail_at.store(0, Ordering::SeqCst);
            assert!(!store.journal_intents().unwrap().is_empty());
            let report = store.recover().unwrap();
            assert!(report.all_completed(), "{}: {report:#?}", ts.kind);
            assert!(
                report
                    .recovered
                    .iter()
                    .all(|r| matches!(r.outcome, RecoveryOutcome::Completed))
            );
        }
        assert_eq!(inventory(&store), expected, "{}", ts.kind);
        assert_eq!(
            store.group(&a, &group("vm/1")).notes().unwrap().as_deref(),
            Some("n")
        );
        let report = store
            .verify(&VerifyScope::Store, &VerifyOptions::default())
            .unwrap();
        assert!(report.is_ok(), "{}: {report:#?}", ts.kind);
        assert!(store.journal_intents().unwrap().is_empty());
        // Bucket and cache agree on every content file, byte for byte.
        let cached = ts.cached.as_deref().unwrap();
        let check = ts.store.check_cache(cached, CacheCheck::Contents).unwrap();
        assert!(check.is_consistent(), "{}: {check:#?}", ts.kind);
        assert_eq!(check.cache_files, 16);
    }
}

#[test]
fn recovery_sets_aside_damaged_intents_and_leaves_running_ones_alone() {
    let ts = common::local();
    let store = &ts.store;
    backup(store, &root_ns(), "vm/1", 1_000);
    let journal = ts.root().join(".keepsake/intents");
    std::fs::create_dir_all(&journal).unwrap();
    // A torn intent (no `end` line) is refused, set aside and reported.
    std::fs::write(
        journal.join("00000000000000000000000a-00000001-00.intent"),
        "keepsake-intent 2\nop destroy-group\nns /\ngroup vm/1\nsnapshot vm/1/1970-01-01T00:16:40Z\n",
    )
    .unwrap();
    // An intent whose process still runs (its lock is held) is left alone.
    let live = "00000000000000000000000b-00000002-00";
    std::fs::write(
        journal.join(format!("{live}.intent")),
        "keepsake-intent 2\nop destroy-group\nns /\ngroup vm/1\nsnapshot vm/1/1970-01-01T00:16:40Z\nend\n",
    )
    .unwrap();
    let lock = keepsake_lock::LockFile::new(journal.join(format!("{live}.lock")))
        .lock_exclusive(std::time::Duration::ZERO)
        .unwrap();
    let report = store.recover().unwrap();
    assert_eq!(report.unreadable.len(), 1, "{report:#?}");
    assert!(report.unreadable[0].1.contains("end"), "{report:#?}");
    assert_eq!(report.in_progress, 1);
    assert!(report.recovered.is_empty());
    assert!(
        journal
            .join("00000000000000000000000a-00000001-00.intent.bad")
            .exists()
    );
    assert_eq!(
        times(store, &root_ns(), "vm/1"),
        [1_000],
        "nothing was destroyed"
    );
    // Once its process is gone, the destroy it announced is completed.
    drop(lock);
    let report = store.recover().unwrap();
    assert_eq!(report.recovered.len(), 1, "{report:#?}");
    assert!(matches!(
        report.recovered[0].outcome,
        RecoveryOutcome::Completed
    ));
    assert!(!store.group(&root_ns(), &group("vm/1")).exists().unwrap());
    assert!(store.journal_intents().unwrap().is_empty());
}
