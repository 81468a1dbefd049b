//! The "fail closed" scenarios, through the real binary: each destructive path decides from
//! authoritative state under its locks, refuses up front when it cannot, and a read-only command
//! never changes anything. One test per scenario of the issue, named after it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Store, tree_contents};
use keepsake_hierarchy::{BackupDir, BackupNamespace};
use keepsake_lock::{FileLocker, LockTarget, Locker};

const CT200: [&str; 4] = [
    "ct/200/2024-06-03T02:00:00Z",
    "ct/200/2024-06-04T02:00:00Z",
    "ct/200/2024-06-05T02:00:00Z",
    "ct/200/2024-06-06T02:00:00Z",
];

/// Copies a snapshot folder to a new backup time, as PBS's next backup of the group would add one.
fn add_snapshot(store: &Store, from: &str, to: &str) {
    let (src, dst) = (store.path.join(from), store.path.join(to));
    std::fs::create_dir(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
}

fn shared_snapshot_lock(store: &Store, ns: &str, snapshot: &str) -> keepsake_lock::LockGuard {
    let locker = FileLocker::new(&store.lock_root, "demo").unwrap();
    let ns: BackupNamespace = ns.parse().unwrap_or_default();
    let dir: BackupDir = snapshot.parse().unwrap();
    locker
        .lock_shared(&LockTarget::snapshot(&ns, &dir), Duration::ZERO)
        .unwrap()
}

#[test]
fn scenario_1_a_failed_forget_is_never_completed_later() {
    let store = Store::demo();
    let before = store.contents();
    // A PBS reader (or `keepsake verify`) holds one snapshot of the group.
    let reader = shared_snapshot_lock(&store, "", CT200[2]);
    let line = store.run(&["forget", "ct/200"]).fails(4).to_owned();
    assert!(line.contains("locked"), "{line}");
    assert_eq!(store.contents(), before, "a refused forget changed nothing");
    assert!(
        store.intents().is_empty(),
        "nothing to recover: nothing began"
    );
    // Read-only commands while the lock is held: nothing changes, no intent appears.
    for args in [
        &["groups"][..],
        &["snapshots", "ct/200"],
        &["tree"],
        &["verify"],
    ] {
        store.run(args);
        assert!(store.intents().is_empty(), "{args:?} wrote an intent");
    }
    assert_eq!(store.contents(), before);
    drop(reader);

    // PBS's next nightly backup adds a snapshot; later commands never destroy the group.
    add_snapshot(&store, CT200[3], "ct/200/2024-06-07T02:00:00Z");
    store.run(&["groups"]).ok();
    store.run(&["protect", "ct/200/2024-06-07T02:00:00Z"]).ok();
    for snapshot in CT200.iter().chain(&["ct/200/2024-06-07T02:00:00Z"]) {
        assert!(store.path.join(snapshot).is_dir(), "{snapshot} was lost");
    }
}

#[test]
fn scenario_1_refused_namespace_move_and_removal_are_never_carried_out_later() {
    let store = Store::demo();
    let before = store.contents();
    let reader = shared_snapshot_lock(&store, "prod", "vm/101/2024-06-04T02:00:00Z");
    let run = store.run(&["ns", "move", "prod", "--to", "dev"]);
    assert!(run.fails(4).contains("locked"), "{run:?}");
    let run = store.run(&["ns", "remove", "prod", "--delete-groups"]);
    assert!(run.fails(4).contains("locked"), "{run:?}");
    assert_eq!(
        store.contents(),
        before,
        "refused operations changed nothing"
    );
    assert!(store.intents().is_empty());
    drop(reader);
    for args in [&["groups", "--recursive"][..], &["ns", "list"], &["tree"]] {
        store.run(args).ok();
    }
    assert_eq!(
        store.contents(),
        before,
        "read-only commands changed nothing"
    );
}

#[test]
fn scenario_1_an_interrupted_destroy_completes_only_what_it_announced() {
    let store = Store::demo();
    // A group destroy that died after announcing two snapshots (and removing neither).
    let dir = store.path.join(".keepsake/intents");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("0000000000000000000000aa-00000001-00.intent"),
        format!(
            "keepsake-intent 2\nop destroy-group\nns /\ngroup ct/200\nsnapshot {}\nsnapshot {}\nend\n",
            CT200[0], CT200[1]
        ),
    )
    .unwrap();
    let before = store.contents();
    // A read-only command warns and changes nothing.
    let run = store.run(&["groups"]);
    run.ok();
    assert!(run.stderr.contains("interrupted"), "{run:?}");
    assert_eq!(store.contents(), before);
    // The next backup adds a snapshot; then a write command completes the destroy it announced.
    add_snapshot(&store, CT200[3], "ct/200/2024-06-07T02:00:00Z");
    let run = store.run(&["protect", "ct/200/2024-06-07T02:00:00Z"]);
    run.ok();
    assert!(run.stderr.contains("destroy group ct/200"), "{run:?}");
    assert!(!store.path.join(CT200[0]).exists());
    assert!(!store.path.join(CT200[1]).exists());
    for kept in [CT200[2], CT200[3], "ct/200/2024-06-07T02:00:00Z"] {
        assert!(store.path.join(kept).is_dir(), "{kept} was not announced");
    }
    assert!(store.path.join("ct/200/owner").is_file());
    assert!(store.intents().is_empty());
}

#[test]
fn scenario_2_fsck_repair_refuses_a_lock_root_that_overlaps_the_store() {
    let store = Store::demo();
    let before = store.contents();
    let parent = store.path.parent().unwrap().to_path_buf();
    for lock_root in [parent.clone(), store.path.clone(), store.path.join("vm")] {
        let mut cmd = common::keepsake();
        cmd.arg("--store")
            .arg(&store.path)
            .arg("--lock-root")
            .arg(&lock_root)
            .args(["fsck", "--repair"]);
        let run = common::run(&mut cmd);
        assert_ne!(run.code, 0, "{lock_root:?}: {run:?}");
        assert!(run.stderr.contains("lock root"), "{run:?}");
        assert_eq!(store.contents(), before, "{lock_root:?} changed the store");
    }
}

#[test]
fn scenario_2_fsck_repair_removes_only_lock_files_of_the_scheme() {
    let store = Store::demo();
    let locks = store.lock_root.join("demo");
    // PBS's move journal, and a stray file, in the lock folder.
    std::fs::write(locks.join("move-journal"), b"/srv/demo/vm/100/x.fidx\n").unwrap();
    std::fs::write(locks.join("notes"), b"not a lock").unwrap();
    let run = store.run(&["fsck", "--repair"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(locks.join("move-journal").is_file());
    assert!(locks.join("notes").is_file());
}

#[test]
fn scenario_2_fsck_recognises_pbs_temporary_files() {
    let store = Store::demo();
    let snapshot = store.path.join("vm/100/2024-06-03T02:00:00Z");
    // PBS's atomic replace leaves `<name>.tmp_XXXXXX`; its chunk insert `<digest>.tmp`.
    std::fs::write(snapshot.join("index.json.blob.tmp_Ab12Cd"), b"torn").unwrap();
    let run = store.run(&["--json", "fsck"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("index.json.blob.tmp_Ab12Cd"), "{run:?}");
    let run = store.run(&["--json", "fsck", "--repair"]);
    assert_eq!(run.code, 0, "repaired everything: {run:?}");
    assert!(!snapshot.join("index.json.blob.tmp_Ab12Cd").exists());
    assert!(snapshot.join("index.json.blob").is_file());
}

/// A lock root below a regular file: no lock can be taken, for any user.
fn unusable_lock_root(store: &Store) -> std::path::PathBuf {
    let file = store.lock_root.with_file_name("not-a-folder");
    std::fs::write(&file, b"").unwrap();
    file.join("locks")
}

fn run_with_lock_root(store: &Store, lock_root: &Path, args: &[&str]) -> common::Run {
    let mut cmd = common::keepsake();
    cmd.arg("--store")
        .arg(&store.path)
        .arg("--lock-root")
        .arg(lock_root)
        .args(args);
    common::run(&mut cmd)
}

#[test]
fn scenario_3_verify_that_cannot_lock_fails() {
    let store = Store::demo();
    // A corrupted manifest that verify must not call fine.
    let manifest = store
        .path
        .join("vm/100/2024-06-03T02:00:00Z/index.json.blob");
    let mut bytes = std::fs::read(&manifest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&manifest, bytes).unwrap();
    let before = tree_contents(&store.path);
    let lock_root = unusable_lock_root(&store);
    let run = run_with_lock_root(&store, &lock_root, &["--json", "verify"]);
    assert_eq!(run.code, 1, "{run:?}");
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["ok"], false, "{run:?}");
    assert_eq!(tree_contents(&store.path), before);
    // A destroy that cannot lock says so, and does not call it "locked".
    let run = run_with_lock_root(&store, &lock_root, &["forget", "ct/200"]);
    let line = run.fails(8);
    assert!(!line.contains("is locked"), "{line}");
    assert!(
        line.contains("cannot lock") || line.contains("lock"),
        "{line}"
    );
    assert_eq!(tree_contents(&store.path), before);
}

/// A PBS host's folders for one test: `etc/datastore.cfg` and `run/` (with `run/locks`).
struct PbsHostDirs {
    _dir: tempfile::TempDir,
    etc: std::path::PathBuf,
    run: std::path::PathBuf,
}

impl PbsHostDirs {
    fn new(datastore_cfg: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (etc, run) = (dir.path().join("etc"), dir.path().join("run"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(run.join("locks")).unwrap();
        std::fs::write(etc.join("datastore.cfg"), datastore_cfg).unwrap();
        Self {
            _dir: dir,
            etc,
            run,
        }
    }

    /// `keepsake --pbs-config-dir … --pbs-run-dir … <args>` (lock root: PBS's, by default).
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = common::keepsake();
        cmd.arg("--pbs-config-dir")
            .arg(&self.etc)
            .arg("--pbs-run-dir")
            .arg(&self.run)
            .args(args);
        cmd
    }

    fn locker(&self, store: &str) -> FileLocker {
        FileLocker::new(self.run.join("locks"), store).unwrap()
    }
}

fn exclusive_snapshot_lock(locker: &FileLocker, snapshot: &str) -> keepsake_lock::LockGuard {
    let dir: BackupDir = snapshot.parse().unwrap();
    locker
        .lock(
            &LockTarget::snapshot(&BackupNamespace::root(), &dir),
            keepsake_lock::LockMode::Exclusive,
            Duration::ZERO,
        )
        .unwrap()
}

#[test]
fn scenario_5_a_second_path_to_the_store_keeps_lock_exclusion() {
    let store = Store::demo();
    let link = store.path.with_file_name("link");
    std::os::unix::fs::symlink(&store.path, &link).unwrap();
    let locker = FileLocker::new(&store.lock_root, "demo").unwrap();
    let _held = exclusive_snapshot_lock(&locker, CT200[0]);
    let mut cmd = common::keepsake();
    cmd.arg("--store")
        .arg(&link)
        .arg("--lock-root")
        .arg(&store.lock_root)
        .args(["forget", CT200[0]]);
    let run = common::run(&mut cmd);
    assert!(run.fails(4).contains("locked"), "{run:?}");
    assert!(store.path.join(CT200[0]).is_dir());
}

#[test]
fn scenario_5_pbs_names_the_datastore_and_its_locks() {
    let store = Store::demo();
    let host = PbsHostDirs::new(&format!(
        "datastore: backups-a\n\tpath {}\n\tcomment the folder is called demo\n",
        store.path.display()
    ));
    let _held = exclusive_snapshot_lock(&host.locker("backups-a"), CT200[0]);
    // By path: PBS's name decides the lock folder, not the folder's name.
    let mut cmd = host.cmd(&["forget", CT200[0]]);
    cmd.arg("--store").arg(&store.path);
    let run = common::run(&mut cmd);
    assert!(run.fails(4).contains("locked"), "{run:?}");
    // By name, from datastore.cfg.
    let run = common::run(&mut host.cmd(&["--datastore", "backups-a", "forget", CT200[0]]));
    assert!(run.fails(4).contains("locked"), "{run:?}");
    assert!(store.path.join(CT200[0]).is_dir());
    let run = common::run(&mut host.cmd(&["--datastore", "backups-a", "--json", "groups"]));
    assert_eq!(run.json().as_array().unwrap().len(), 3, "{run:?}");
    // A --name that contradicts PBS is refused before anything happens.
    let mut cmd = host.cmd(&["--name", "demo", "groups"]);
    cmd.arg("--store").arg(&store.path);
    assert!(common::run(&mut cmd).fails(2).contains("backups-a"));
    // PBS saw the commands: the active-operations file exists, with no live entry left.
    let ops = std::fs::read_to_string(host.run.join("active-operations/backups-a")).unwrap();
    assert_eq!(ops.trim(), "[]", "{ops}");
    assert!(!store.path.join(".keepsake/intents").exists() || store.intents().is_empty());
}

#[test]
fn scenario_5_an_unknown_store_beside_pbs_is_named_in_a_warning() {
    let store = Store::demo();
    let host = PbsHostDirs::new("datastore: other\n\tpath /nonexistent/other\n");
    let mut cmd = host.cmd(&["groups"]);
    cmd.arg("--store").arg(&store.path);
    let run = common::run(&mut cmd);
    run.ok();
    assert!(run.stderr.contains("does not know"), "{run:?}");
}

#[test]
fn scenario_5_a_short_folder_name_never_blocks_a_read_only_command() {
    let store = Store::demo();
    let short = store.path.with_file_name("ab");
    std::fs::rename(&store.path, &short).unwrap();
    let run_on = |args: &[&str]| {
        let mut cmd = common::keepsake();
        cmd.arg("--store")
            .arg(&short)
            .arg("--lock-root")
            .arg(&store.lock_root)
            .args(args);
        common::run(&mut cmd)
    };
    assert_eq!(
        run_on(&["--json", "groups"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    run_on(&["verify"]).ok();
    // A change needs a real name.
    let run = run_on(&["protect", CT200[0]]);
    assert!(run.fails(2).contains("--name"), "{run:?}");
    assert!(!short.join(CT200[0]).join(".protected").exists());
}

#[test]
fn scenario_5_maintenance_mode_is_honoured() {
    let store = Store::demo();
    let cfg = |mode: &str| {
        format!(
            "datastore: demo\n\tpath {}\n\tmaintenance-mode {mode}\n",
            store.path.display()
        )
    };
    let host = PbsHostDirs::new(&cfg("type=read-only,message=disk%20swap"));
    let before = store.contents();
    let run = common::run(&mut host.cmd(&["--datastore", "demo", "protect", CT200[0]]));
    let line = run.fails(1).to_owned();
    assert!(
        line.contains("read-only") && line.contains("disk swap"),
        "{line}"
    );
    assert_eq!(store.contents(), before);
    common::run(&mut host.cmd(&["--datastore", "demo", "groups"])).ok();
    let host = PbsHostDirs::new(&cfg("type=offline"));
    let run = common::run(&mut host.cmd(&["--datastore", "demo", "groups"]));
    assert!(run.fails(1).contains("offline"), "{run:?}");
}

#[test]
fn scenario_6_a_running_pbs3_is_excluded() {
    let store = Store::demo();
    // PBS 3 locks the snapshot folder itself (a flock on the directory).
    let pbs3 = keepsake_lock::DirLocker::new(&store.path, &store.lock_root, "demo").unwrap();
    let dir: BackupDir = CT200[0].parse().unwrap();
    let _held = pbs3
        .lock_exclusive(
            &LockTarget::snapshot(&BackupNamespace::root(), &dir),
            Duration::ZERO,
        )
        .unwrap();
    let before = store.contents();
    for args in [
        &["--lock-scheme", "both", "forget", CT200[0]][..],
        &["--lock-scheme", "both", "protect", CT200[0]],
        &["--lock-scheme", "both", "forget", "ct/200"],
    ] {
        let run = store.run(args);
        assert!(run.fails(4).contains("locked"), "{args:?}: {run:?}");
    }
    let run = store.run(&[
        "--lock-scheme",
        "both",
        "--json",
        "prune",
        "ct/200",
        "--keep-last",
        "3",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("locked"), "{run:?}");
    assert_eq!(store.contents(), before);
    // Beside PBS (its lock root), both schemes are the default.
    let host = PbsHostDirs::new("");
    let mut cmd = host.cmd(&["forget", CT200[0]]);
    cmd.arg("--store").arg(&store.path);
    let run = common::run(&mut cmd);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("is locked"), "{run:?}");
    assert_eq!(store.contents(), before);
}

/// Every file and folder below `root` whose owner is not `uid`:`gid`.
fn not_owned_by(root: &Path, uid: u32, gid: u32) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut wrong = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.uid() != uid || meta.gid() != gid {
                wrong.push(format!(
                    "{} ({}:{})",
                    path.display(),
                    meta.uid(),
                    meta.gid()
                ));
            }
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    wrong
}

#[test]
fn scenario_4_running_as_root_gives_what_it_creates_the_datastores_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let euid = std::fs::metadata("/proc/self").unwrap().uid();
    if euid != 0 {
        eprintln!("scenario_4: skipped (needs root to hand files to PBS's backup user)");
        return;
    }
    let store = Store::demo();
    // The datastore and its lock folder as PBS (user `backup`, 34:34) has them.
    let (uid, gid) = (34, 34);
    for root in [&store.path, &store.lock_root] {
        std::os::unix::fs::chown(root, Some(uid), Some(gid)).unwrap();
        for path in not_owned_by(root, uid, gid) {
            let path = path.rsplit_once(" (").unwrap().0;
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
        }
    }
    store.run(&["protect", CT200[1]]).ok();
    store.run(&["ns", "create", "staging"]).ok();
    // PBS's modes: lock files 0660, datastore files 0644, folders 0755.
    let lock = FileLocker::new(&store.lock_root, "demo")
        .unwrap()
        .lock_path(&LockTarget::snapshot(
            &BackupNamespace::root(),
            &CT200[1].parse().unwrap(),
        ));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&lock), 0o660, "{}", lock.display());
    let marker = store.path.join(CT200[1]).join(".protected");
    assert_eq!(mode(&marker), 0o644);
    assert_eq!(mode(&store.path.join("ns/staging")), 0o755);
    store.run(&["notes", "ct/200", "--set", "by root"]).ok();
    store.run(&["owner", "ct/200", "root@pam", "--force"]).ok();
    store.run(&["move", "host/web", "--to-ns", "staging"]).ok();
    store.run(&["forget", CT200[0]]).ok();
    store.run(&["fsck", "--repair"]).ok();
    store.run(&["ns", "move", "staging", "--to", "dev"]).ok();
    assert_eq!(not_owned_by(&store.path, uid, gid), Vec::<String>::new());
    assert_eq!(
        not_owned_by(&store.lock_root, uid, gid),
        Vec::<String>::new()
    );
}
