//! The calls a downstream user makes, each next to its floor measured in the same run: the bare
//! system calls (and decode) the operation cannot avoid, done with `rustix` on the same files.
//!
//! | operation | floor |
//! |---|---|
//! | `iter_groups` → `list_backups` (10,000 snapshots) | a `std::fs::read_dir` walk of the same folders |
//! | `Snapshot::load_manifest` | `openat2(RESOLVE_BENEATH \| RESOLVE_NO_SYMLINKS)` + read + close, a reused zstd decode and the JSON parse into `BackupManifest` |
//! | `Snapshot::set_protected(true)` | the snapshot lock (PBS 4's protocol, bare: see below), `openat2` + `O_CREAT \| O_EXCL` + close (+ the folder's fsync for `filesystem`) |
//! | `Snapshot::set_protected(false)` | the snapshot lock, `openat2` of the folder + `unlinkat` + close (+ fsync) |
//! | `Snapshot::update_manifest` | the manifest lock, read + decode + parse, encode (reused zstd context), temp file + rename |
//! | `Snapshot::lock`, `lock_shared`, `Group::lock` | PBS 4's lock protocol, bare: open + flock + `fstat` + `stat` of the path (the check that the lock file was not removed since it was opened) + close of the same lock file; a second line puts them next to a bare open + flock + close |
//!
//! After criterion's figures, a second pass alternates batches of each operation and its floor
//! (so that machine noise hits both alike) and prints the medians and their ratio: the figures
//! docs/BENCHMARKS.md reports. `KEEPSAKE_BENCH_ONLY=<text>` limits that pass to the operations
//! whose name contains the text (criterion's own filter argument limits the first pass).
//!
//! With `KEEPSAKE_COUNT=<operation>` and `KEEPSAKE_COUNT_N=<n>` the binary instead sets up the
//! same fixture, runs the operation (or `<operation>.floor`) `n` times between two marker calls
//! (a `statx` of `/keepsake-count/start` and of `/keepsake-count/end`) and exits: what
//! `cargo xtask syscalls` runs under `strace -f` to count the system calls per operation.

use std::hint::black_box;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::Criterion;
use keepsake_backend::SyncLevel;
use keepsake_datastore::{DataStore, Encryption, Group, Snapshot};
use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace, BackupTime};
use keepsake_lock::relative_lock_path;
use keepsake_manifest::blob::BlobCodec;
use keepsake_manifest::manifest::BackupManifest;
use rustix::fs::{self as rfs, AtFlags, FlockOperation, Mode, OFlags, ResolveFlags};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// How many snapshot folders the protection fixture has (each set or clear in the counting mode
/// uses its own snapshot, so the setup is the same whatever `n` is).
const MARKER_SNAPSHOTS: usize = 2_000;

/// One datastore with a finished snapshot (manifest, a blob, a fixed index), many empty snapshot
/// folders for protection, and a 100 x 100 tree for listings.
struct Fixture {
    _dir: tempfile::TempDir,
    root_fd: OwnedFd,
    lock_root: PathBuf,
    /// The store at sync level `none`, and at `filesystem` (PBS's default) on the same folder.
    none: DataStore,
    filesystem: DataStore,
    finished: BackupDir,
    markers: Vec<BackupDir>,
    list_root: PathBuf,
    list_store: DataStore,
    /// The lock files of the finished snapshot, its group and its manifest.
    snapshot_lock: PathBuf,
    group_lock: PathBuf,
    manifest_lock: PathBuf,
}

/// Whether the fixture gets the 10,000-snapshot tree (the counting mode of other operations
/// skips it: it takes a while to build).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ListTree {
    Build,
    Skip,
}

impl Fixture {
    fn new(list_tree: ListTree) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("store");
        let lock_root = dir.path().join("locks");
        let open = |level: SyncLevel| {
            DataStore::builder("bench", &root)
                .lock_root(&lock_root)
                .sync_level(level)
                .chunk_prefix_dirs(false)
        };
        let none = open(SyncLevel::None).create().expect("create");
        let filesystem = open(SyncLevel::Filesystem).open().expect("open");
        let group = none.group(&BackupNamespace::root(), &"vm/100".parse().expect("group"));
        let mut writer = group
            .start_backup(
                &"root@pam".parse().expect("auth id"),
                BackupTime::from_epoch(1_700_000_000).expect("time"),
            )
            .expect("start");
        writer
            .add_blob("qemu-server.conf.blob", b"memory: 2048\n", Encryption::None)
            .expect("blob");
        writer
            .add_fixed_archive(
                "drive-scsi0.img.fidx",
                &vec![3u8; 1 << 20],
                1 << 18,
                Encryption::None,
            )
            .expect("fidx");
        let finished = writer.finish().expect("finish").dir().clone();
        let markers_group: BackupGroup = "ct/200".parse().expect("group");
        let markers: Vec<BackupDir> = (0..MARKER_SNAPSHOTS)
            .map(|i| {
                let time = BackupTime::from_epoch(1_700_000_000 + 60 * i as i64).expect("time");
                let dir = BackupDir::new(markers_group.clone(), time);
                std::fs::create_dir_all(root.join(dir.relative_path(&BackupNamespace::root())))
                    .expect("snapshot folder");
                dir
            })
            .collect();
        std::fs::write(root.join("ct/200/owner"), "root@pam\n").expect("owner");
        let list_root = dir.path().join("list");
        std::fs::create_dir_all(list_root.join(".chunks")).expect("list store");
        if list_tree == ListTree::Build {
            build_tree(&list_root, 100, 100);
        }
        let list_store = DataStore::builder("list", &list_root)
            .lock_root(&lock_root)
            .open()
            .expect("list store");
        let root_fd = rfs::open(
            &root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("root");
        let fixture = Self {
            _dir: dir,
            root_fd,
            lock_root,
            none,
            filesystem,
            finished,
            markers,
            list_root,
            list_store,
            snapshot_lock: PathBuf::new(),
            group_lock: PathBuf::new(),
            manifest_lock: PathBuf::new(),
        };
        // The steady state: the lock files exist (PBS never removes a live snapshot's lock).
        let snapshot = fixture.snapshot(&fixture.none);
        drop(snapshot.lock().expect("lock"));
        drop(snapshot.group().lock().expect("group lock"));
        drop(
            snapshot
                .lock_manifest(Duration::from_secs(1))
                .expect("manifest lock"),
        );
        for i in 0..fixture.markers.len() {
            drop(
                fixture
                    .marker_snapshot(&fixture.none, i)
                    .lock()
                    .expect("lock"),
            );
        }
        let mut fixture = fixture;
        fixture.snapshot_lock = fixture.snapshot_lock_file();
        fixture.group_lock = fixture.group_lock_file();
        fixture.manifest_lock = fixture.manifest_lock_file();
        fixture
    }

    fn snapshot(&self, store: &DataStore) -> Snapshot {
        store.snapshot(&BackupNamespace::root(), &self.finished)
    }

    fn marker_snapshot(&self, store: &DataStore, i: usize) -> Snapshot {
        store.snapshot(
            &BackupNamespace::root(),
            &self.markers[i % self.markers.len()],
        )
    }

    fn store(&self, level: SyncLevel) -> &DataStore {
        match level {
            SyncLevel::None => &self.none,
            _ => &self.filesystem,
        }
    }

    fn manifest_path(&self) -> String {
        format!(
            "{}/index.json.blob",
            self.finished.relative_path(&BackupNamespace::root())
        )
    }

    fn lock_file(&self, relative: &str) -> PathBuf {
        self.lock_root
            .join("bench")
            .join(relative_lock_path::<&str>(&[], relative.as_bytes()))
    }

    fn snapshot_lock_file(&self) -> PathBuf {
        self.lock_file(&self.finished.relative_path(&BackupNamespace::root()))
    }

    fn group_lock_file(&self) -> PathBuf {
        self.lock_file(
            &self
                .finished
                .group()
                .relative_path(&BackupNamespace::root()),
        )
    }

    /// PBS 4's manifest lock file: the snapshot's lock path with `.index.json.lck` appended.
    fn manifest_lock_file(&self) -> PathBuf {
        let path = self.lock_file(&format!(
            "{}/.index.json.lck",
            self.finished.relative_path(&BackupNamespace::root())
        ));
        assert!(path.exists(), "manifest lock file at {}", path.display());
        path
    }
}

fn build_tree(root: &Path, groups: usize, snapshots: usize) {
    for g in 0..groups {
        let group = root.join(format!("vm/{}", 100 + g));
        std::fs::create_dir_all(&group).expect("group");
        std::fs::write(group.join("owner"), "root@pam\n").expect("owner");
        for s in 0..snapshots {
            let time = BackupTime::from_epoch(1_700_000_000 + 3_600 * s as i64).expect("time");
            let dir = group.join(time.to_string());
            std::fs::create_dir(&dir).expect("snapshot");
            for f in [
                "index.json.blob",
                "qemu-server.conf.blob",
                "drive-scsi0.img.fidx",
            ] {
                std::fs::write(dir.join(f), b"x").expect("file");
            }
            if s % 10 == 0 {
                std::fs::write(dir.join(".protected"), b"").expect("marker");
            }
        }
    }
}

// ---- the operations, through the public API ----

fn list_backups(store: &DataStore) -> usize {
    let mut n = 0;
    for group in store.iter_groups(&BackupNamespace::root()).expect("groups") {
        let group: Group = group.expect("group");
        n += black_box(group.list_backups().expect("list")).len();
    }
    n
}

fn load_manifest(f: &Fixture) {
    black_box(f.snapshot(&f.none).load_manifest().expect("manifest"));
}

fn set_protected(f: &Fixture, level: SyncLevel, i: usize, protected: bool) {
    f.marker_snapshot(f.store(level), i)
        .set_protected(protected)
        .expect("set_protected");
}

fn update_manifest(f: &Fixture, n: u64) {
    f.snapshot(&f.none)
        .update_manifest(|m| {
            m.set_notes(Some(if n % 2 == 0 { "even" } else { "odd" }));
            Ok(())
        })
        .expect("update");
}

fn snapshot_lock(f: &Fixture) {
    drop(black_box(f.snapshot(&f.none).lock().expect("lock")));
}

fn snapshot_lock_shared(f: &Fixture) {
    drop(black_box(
        f.snapshot(&f.none).lock_shared().expect("lock shared"),
    ));
}

fn group_lock(f: &Fixture) {
    drop(black_box(
        f.snapshot(&f.none).group().lock().expect("group lock"),
    ));
}

// ---- the floors ----

/// The floor of a listing: read every group folder, every snapshot folder, and note files and
/// protection.
fn bare_walk(root: &Path) -> usize {
    let mut n = 0;
    for group in std::fs::read_dir(root.join("vm")).expect("vm") {
        let group = group.expect("entry");
        for snap in std::fs::read_dir(group.path()).expect("group") {
            let snap = snap.expect("entry");
            if !snap.file_type().expect("type").is_dir() {
                continue;
            }
            let mut files = Vec::new();
            let mut protected = false;
            for f in std::fs::read_dir(snap.path()).expect("snapshot") {
                let f = f.expect("entry");
                let name = f.file_name().into_string().expect("utf-8");
                if name == ".protected" {
                    protected = true;
                } else if f.file_type().expect("type").is_file() {
                    files.push(name);
                }
            }
            black_box((files, protected));
            n += 1;
        }
    }
    n
}

/// Opens `path` beneath the root with one `openat2` and reads it whole into `buf`.
fn read_beneath(root: &OwnedFd, path: &str, buf: &mut Vec<u8>) {
    let fd = rfs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
    .expect("openat2");
    buf.clear();
    buf.resize(64 * 1024, 0);
    let mut len = 0;
    loop {
        let n = rustix::io::read(&fd, &mut buf[len..]).expect("read");
        if n == 0 {
            break;
        }
        len += n;
    }
    buf.truncate(len);
}

/// Reused between calls of the floor, as a long-running server would.
struct Decode {
    codec: BlobCodec,
    raw: Vec<u8>,
    json: Vec<u8>,
}

fn load_manifest_floor(f: &Fixture, state: &mut Decode, path: &str) {
    read_beneath(&f.root_fd, path, &mut state.raw);
    black_box(
        BackupManifest::from_blob_bytes_with(&mut state.codec, &state.raw, &mut state.json)
            .expect("manifest"),
    );
}

/// A bare flock: open + flock + close.
fn raw_lock(path: &Path, operation: FlockOperation) {
    let fd = rfs::open(
        path,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::APPEND | OFlags::CREATE,
        Mode::from_raw_mode(0o660),
    )
    .expect("open");
    rfs::flock(&fd, operation).expect("flock");
    drop(fd);
}

/// PBS 4's lock protocol, bare: open + flock, then `fstat` of the descriptor and `stat` of the
/// path (the same inode, or the lock file was removed since it was opened and the lock protects
/// nothing), close. What a lock that is correct beside PBS 4 cannot avoid: the floor of the lock
/// operations and of those that take a lock.
fn protocol_lock(path: &Path, operation: FlockOperation) {
    let fd = rfs::open(
        path,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::APPEND | OFlags::CREATE,
        Mode::from_raw_mode(0o660),
    )
    .expect("open");
    rfs::flock(&fd, operation).expect("flock");
    let held = rfs::fstat(&fd).expect("fstat");
    let named = rfs::stat(path).expect("stat");
    assert_eq!((held.st_dev, held.st_ino), (named.st_dev, named.st_ino));
    drop(fd);
}

fn create_floor(f: &Fixture, level: SyncLevel, i: usize) {
    protocol_lock(&f.marker_lock(i), FlockOperation::NonBlockingLockExclusive);
    let folder = f.markers[i % f.markers.len()].relative_path(&BackupNamespace::root());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o644);
    if level == SyncLevel::None {
        let path = format!("{folder}/.protected");
        drop(rfs::openat2(&f.root_fd, path.as_str(), flags, mode, RESOLVE).expect("create"));
    } else {
        let dir = rfs::openat2(
            &f.root_fd,
            folder.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .expect("folder");
        drop(rfs::openat(&dir, ".protected", flags, mode).expect("create"));
        rfs::fsync(&dir).expect("fsync");
    }
}

fn unlink_floor(f: &Fixture, level: SyncLevel, i: usize) {
    protocol_lock(&f.marker_lock(i), FlockOperation::NonBlockingLockExclusive);
    let folder = f.markers[i % f.markers.len()].relative_path(&BackupNamespace::root());
    let dir = rfs::openat2(
        &f.root_fd,
        folder.as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
    .expect("folder");
    rfs::unlinkat(&dir, ".protected", AtFlags::empty()).expect("unlink");
    if level != SyncLevel::None {
        rfs::fsync(&dir).expect("fsync");
    }
}

impl Fixture {
    fn marker_lock(&self, i: usize) -> PathBuf {
        self.lock_file(
            &self.markers[i % self.markers.len()].relative_path(&BackupNamespace::root()),
        )
    }
}

/// What `update_manifest` cannot avoid: the manifest lock, reading and decoding the manifest,
/// the change, encoding it (reused zstd context), a temporary file and a rename.
fn update_manifest_floor(f: &Fixture, state: &mut Decode, path: &str, n: u64) {
    let lock = rfs::open(
        &f.manifest_lock,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::APPEND | OFlags::CREATE,
        Mode::from_raw_mode(0o660),
    )
    .expect("open");
    rfs::flock(&lock, FlockOperation::NonBlockingLockExclusive).expect("flock");
    let (held, named) = (
        rfs::fstat(&lock).expect("fstat"),
        rfs::stat(&f.manifest_lock).expect("stat"),
    );
    assert_eq!((held.st_dev, held.st_ino), (named.st_dev, named.st_ino));
    read_beneath(&f.root_fd, path, &mut state.raw);
    let mut manifest =
        BackupManifest::from_blob_bytes_with(&mut state.codec, &state.raw, &mut state.json)
            .expect("manifest");
    manifest.set_notes(Some(if n % 2 == 0 { "even" } else { "odd" }));
    state
        .codec
        .encode_into(
            manifest.to_json().as_bytes(),
            None,
            keepsake_manifest::blob::Compression::Zstd,
            &mut state.raw,
        )
        .expect("encode");
    let (folder, _) = path.rsplit_once('/').expect("folder");
    let dir = rfs::openat2(
        &f.root_fd,
        folder,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
    .expect("folder");
    let temp = rfs::openat(
        &dir,
        ".index.json.blob.tmp_floor",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .expect("temp");
    rustix::io::write(&temp, &state.raw).expect("write");
    drop(temp);
    rfs::renameat(&dir, ".index.json.blob.tmp_floor", &dir, "index.json.blob").expect("rename");
    drop(lock);
}

// ---- criterion, then the alternating pass ----

fn decode_state() -> Decode {
    Decode {
        codec: BlobCodec::new(),
        raw: Vec::new(),
        json: Vec::new(),
    }
}

/// One operation and its floor; each call runs it once (with the call's number) and returns the
/// time of the part that is measured.
struct Pair<'a> {
    name: String,
    batch: u32,
    ours: Box<dyn FnMut(u64) -> Duration + 'a>,
    floor: Box<dyn FnMut(u64) -> Duration + 'a>,
}

fn timed(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

/// A lock operation: its name, its lock file, the flock it takes, the call.
type LockCase<'a> = (&'static str, &'a Path, FlockOperation, fn(&Fixture));

fn pairs(f: &Fixture) -> Vec<Pair<'_>> {
    let path = f.manifest_path();
    let mut pairs = Vec::new();
    pairs.push(Pair {
        name: "list_backups (10,000 snapshots)".into(),
        batch: 1,
        ours: Box::new(|_| {
            timed(|| {
                black_box(list_backups(&f.list_store));
            })
        }),
        floor: Box::new(|_| {
            timed(|| {
                black_box(bare_walk(&f.list_root));
            })
        }),
    });
    let mut state = decode_state();
    let p = path.clone();
    pairs.push(Pair {
        name: "load_manifest".into(),
        batch: 200,
        ours: Box::new(|_| timed(|| load_manifest(f))),
        floor: Box::new(move |_| timed(|| load_manifest_floor(f, &mut state, &p))),
    });
    for level in [SyncLevel::None, SyncLevel::Filesystem] {
        // Each call changes one snapshot and puts it back untimed, so the timed part always
        // finds the state it changes.
        let batch = if level == SyncLevel::None { 200 } else { 10 };
        pairs.push(Pair {
            name: format!("set_protected(true), sync {level}"),
            batch,
            ours: Box::new(move |i| {
                let i = i as usize;
                let time = timed(|| set_protected(f, level, i, true));
                set_protected(f, level, i, false);
                time
            }),
            floor: Box::new(move |i| {
                let i = i as usize;
                let time = timed(|| create_floor(f, level, i));
                unlink_floor(f, level, i);
                time
            }),
        });
        pairs.push(Pair {
            name: format!("set_protected(false), sync {level}"),
            batch,
            ours: Box::new(move |i| {
                let i = i as usize;
                set_protected(f, level, i, true);
                timed(|| set_protected(f, level, i, false))
            }),
            floor: Box::new(move |i| {
                let i = i as usize;
                create_floor(f, level, i);
                timed(|| unlink_floor(f, level, i))
            }),
        });
    }
    let mut state = decode_state();
    pairs.push(Pair {
        name: "update_manifest (sync none)".into(),
        batch: 100,
        ours: Box::new(|n| timed(|| update_manifest(f, n))),
        floor: Box::new(move |n| timed(|| update_manifest_floor(f, &mut state, &path, n))),
    });
    let locks: [LockCase<'_>; 3] = [
        (
            "Snapshot::lock",
            &f.snapshot_lock,
            FlockOperation::NonBlockingLockExclusive,
            snapshot_lock,
        ),
        (
            "Snapshot::lock_shared",
            &f.snapshot_lock,
            FlockOperation::NonBlockingLockShared,
            snapshot_lock_shared,
        ),
        (
            "Group::lock",
            &f.group_lock,
            FlockOperation::NonBlockingLockExclusive,
            group_lock,
        ),
    ];
    for (name, file, operation, lock) in locks {
        pairs.push(Pair {
            name: name.into(),
            batch: 1_000,
            ours: Box::new(move |_| timed(|| lock(f))),
            floor: Box::new(move |_| timed(|| protocol_lock(file, operation))),
        });
        pairs.push(Pair {
            name: format!("{name}, against a bare flock (no protocol check)"),
            batch: 1_000,
            ours: Box::new(move |_| timed(|| lock(f))),
            floor: Box::new(move |_| timed(|| raw_lock(file, operation))),
        });
    }
    pairs
}

fn criterion_pass(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("api");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut n = 0;
    for mut pair in pairs(f) {
        group.sample_size(if pair.batch == 1 { 10 } else { 30 });
        for (side, run) in [("keepsake", &mut pair.ours), ("floor", &mut pair.floor)] {
            group.bench_function(format!("{} / {side}", pair.name), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            n += 1;
                            run(n)
                        })
                        .sum()
                })
            });
        }
    }
    group.finish();
}

/// Alternating batches of each operation and its floor; prints medians per call and the ratio.
fn alternating_pass(f: &Fixture) {
    let rounds = 41;
    eprintln!("\nmedians of {rounds} alternating batches (per call):");
    eprintln!("| operation | keepsake | floor | ratio |\n|---|---|---|---|");
    let mut n = 1_000_000u64;
    let only = std::env::var("KEEPSAKE_BENCH_ONLY").unwrap_or_default();
    for mut pair in pairs(f) {
        if !pair.name.contains(only.as_str()) {
            continue;
        }
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for (run, into) in [(&mut pair.ours, &mut ours), (&mut pair.floor, &mut floor)] {
                let total: Duration = (0..pair.batch)
                    .map(|_| {
                        n += 1;
                        run(n)
                    })
                    .sum();
                into.push(total / pair.batch);
            }
        }
        ours.sort();
        floor.sort();
        let (ours, floor) = (ours[rounds / 2], floor[rounds / 2]);
        eprintln!(
            "| {} | {ours:.2?} | {floor:.2?} | {:.2} |",
            pair.name,
            ours.as_secs_f64() / floor.as_secs_f64()
        );
    }
}

/// The counting mode (see the crate docs of this bench).
fn count(f: &Fixture, operation: &str, n: usize) {
    let path = f.manifest_path();
    let mut state = decode_state();
    // `<what>[.<sync level>][.floor]`
    let (base, floor) = match operation.strip_suffix(".floor") {
        Some(base) => (base, ".floor"),
        None => (operation, ""),
    };
    let (what, level) = match base.rsplit_once('.') {
        Some((what, "filesystem")) => (what, SyncLevel::Filesystem),
        Some((what, "none")) => (what, SyncLevel::None),
        _ => (base, SyncLevel::None),
    };
    // Protection counts set and clear apart: the setup protects the snapshots the clearing
    // variants clear.
    if what == "clear" {
        for i in 0..n {
            set_protected(f, level, i, true);
        }
    }
    let key = format!("{what}{floor}");
    // What `cargo xtask syscalls` looks for in the trace: the calls between these two looks.
    let _ = std::fs::metadata("/keepsake-count/start");
    for i in 0..n {
        match key.as_str() {
            "list_backups" => {
                black_box(list_backups(&f.list_store));
            }
            "list_backups.floor" => {
                black_box(bare_walk(&f.list_root));
            }
            "load_manifest" => load_manifest(f),
            "load_manifest.floor" => load_manifest_floor(f, &mut state, &path),
            "set" => set_protected(f, level, i, true),
            "set.floor" => create_floor(f, level, i),
            "clear" => set_protected(f, level, i, false),
            "clear.floor" => unlink_floor(f, level, i),
            "update_manifest" => update_manifest(f, i as u64),
            "update_manifest.floor" => update_manifest_floor(f, &mut state, &path, i as u64),
            "lock" => snapshot_lock(f),
            "lock.floor" => {
                protocol_lock(&f.snapshot_lock, FlockOperation::NonBlockingLockExclusive)
            }
            "lock.bare" => raw_lock(&f.snapshot_lock, FlockOperation::NonBlockingLockExclusive),
            "lock_shared" => snapshot_lock_shared(f),
            "lock_shared.floor" => {
                protocol_lock(&f.snapshot_lock, FlockOperation::NonBlockingLockShared)
            }
            "group_lock" => group_lock(f),
            "group_lock.floor" => {
                protocol_lock(&f.group_lock, FlockOperation::NonBlockingLockExclusive)
            }
            other => panic!("unknown operation {other}"),
        }
    }
    let _ = std::fs::metadata("/keepsake-count/end");
}

fn main() {
    if let Ok(operation) = std::env::var("KEEPSAKE_COUNT") {
        let n = std::env::var("KEEPSAKE_COUNT_N")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1_000);
        let list_tree = if operation.starts_with("list") {
            ListTree::Build
        } else {
            ListTree::Skip
        };
        count(&Fixture::new(list_tree), &operation, n);
        return;
    }
    let fixture = Fixture::new(ListTree::Build);
    assert_eq!(list_backups(&fixture.list_store), 10_000);
    let mut c = Criterion::default().configure_from_args();
    criterion_pass(&mut c, &fixture);
    c.final_summary();
    // Skipped in `cargo test --benches`, which only checks that the bench runs.
    if std::env::args().any(|a| a == "--bench") {
        alternating_pass(&fixture);
    }
}
