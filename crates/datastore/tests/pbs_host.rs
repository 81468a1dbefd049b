//! The PBS server on this host, in a temporary layout: `datastore.cfg` parsing (sections,
//! comments, removable stores, maintenance modes, malformed lines), the maintenance table of
//! every type and operation, and the active-operations file (its JSON shape, stale entries, two
//! processes registering at once, a killed process's entry ignored and cleaned).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keepsake_datastore::pbs_host::{
    ConfigProblem, DATASTORE_CFG_LOCK, FileOwner, MaintenanceMode, MaintenanceModeError,
    MaintenanceType, Operation, PbsHost, PbsHostError, ProcessOperations,
};

const CHILD_VAR: &str = "KEEPSAKE_PBS_HOST_CHILD";
const CHILD_TEST: &str = "two_processes_register_concurrently";

/// A host layout in a temporary folder, with its config and run folders made.
fn host(dir: &Path) -> PbsHost {
    let host = PbsHost::new(dir.join("etc"), dir.join("run")).with_mount_dir(dir.join("mnt"));
    std::fs::create_dir_all(host.config_dir()).unwrap();
    std::fs::create_dir_all(host.run_dir()).unwrap();
    host
}

fn write_cfg(host: &PbsHost, text: &str) {
    std::fs::write(host.datastore_cfg(), text).unwrap();
}

/// The start time (field 22 of `/proc/<pid>/stat`) of a process, parsed independently of the
/// library.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

const CONFIG: &str = "\
# written by hand, as an operator might
datastore: store1
\tpath /srv/store1
\tgc-schedule daily
\tcomment first store, with spaces

# a removable one
datastore: removable1
\tbacking-device 0123-abcd
\tpath sub/dir
\tmaintenance-mode type=offline,message=disk%20swap%2C%20back%20at%203
  \t

datastore: store-s3
    path    /srv/cache
\t# an indented comment
    backend type=s3,client=c1,bucket=b1
    future-key   some value  
  \ttuning chunk-order=none

sync: job1
\tstore store1
\tremote elsewhere
datastore: tight
\tpath /srv/tight
\tmaintenance-mode frobnicate
";

#[test]
fn config_with_several_sections() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    write_cfg(&host, CONFIG);
    let stores = host.datastores().unwrap();
    let names: Vec<&str> = stores.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["store1", "removable1", "store-s3", "tight"]);

    let store1 = &stores[0];
    assert_eq!(store1.path, Path::new("/srv/store1"));
    assert_eq!(store1.config_path, "/srv/store1");
    assert_eq!(store1.line, 2);
    assert_eq!(store1.maintenance, None);
    assert_eq!(store1.backend, None);
    assert!(!store1.is_removable());
    assert_eq!(store1.property("comment"), Some("first store, with spaces"));
    assert_eq!(store1.property("gc-schedule"), Some("daily"));

    let removable = &stores[1];
    assert!(removable.is_removable());
    assert_eq!(removable.backing_device.as_deref(), Some("0123-abcd"));
    assert_eq!(removable.config_path, "sub/dir");
    assert_eq!(removable.path, dir.path().join("mnt/removable1"));
    let mode = removable.maintenance.as_ref().unwrap();
    assert_eq!(mode.kind, MaintenanceType::Offline);
    assert_eq!(mode.message.as_deref(), Some("disk swap, back at 3"));

    let s3 = &stores[2];
    assert_eq!(s3.path, Path::new("/srv/cache"));
    assert_eq!(s3.backend.as_deref(), Some("type=s3,client=c1,bucket=b1"));
    assert_eq!(s3.property("future-key"), Some("some value"));
    assert_eq!(s3.property("tuning"), Some("chunk-order=none"));
    let keys: Vec<&str> = s3.properties.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["path", "backend", "future-key", "tuning"]);

    let tight = &stores[3];
    assert_eq!(
        tight.maintenance.as_ref().unwrap().kind,
        MaintenanceType::Unknown("frobnicate".into())
    );

    assert_eq!(host.find("store-s3").unwrap().unwrap(), stores[2]);
    assert_eq!(host.find("job1").unwrap(), None);
    assert_eq!(host.find("nope").unwrap(), None);
}

#[test]
fn missing_config_means_no_datastores() {
    let dir = tempfile::tempdir().unwrap();
    let host = PbsHost::new(dir.path().join("absent"), dir.path().join("run"));
    assert!(host.datastores().unwrap().is_empty());
    assert_eq!(host.find("store1").unwrap(), None);
    let err = host
        .enter("store1", Operation::Read, None)
        .expect_err("nothing is configured");
    assert!(
        matches!(err, PbsHostError::UnknownDatastore { .. }),
        "{err}"
    );
    assert!(!dir.path().join("absent").exists(), "nothing was created");
}

/// Each malformed file gives `ConfigSyntax` at `line` with `problem`, naming the file.
fn check_malformed(text: &str, line: usize, problem: ConfigProblem) {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    write_cfg(&host, text);
    match host.datastores() {
        Err(PbsHostError::ConfigSyntax {
            path,
            line: found_line,
            problem: found,
        }) => {
            assert_eq!(path, host.datastore_cfg(), "{text:?}");
            assert_eq!((found_line, found.clone()), (line, problem), "{text:?}");
            let message = host.datastores().unwrap_err().to_string();
            assert!(
                message.contains("datastore.cfg") && message.contains(&format!("line {line}")),
                "{message}"
            );
        }
        other => panic!("{text:?}: {other:?}"),
    }
    // Every lookup fails closed on it.
    assert!(host.find("store1").is_err());
}

#[test]
fn malformed_configs() {
    use ConfigProblem as P;
    check_malformed("datastore store1\n\tpath /x\n", 1, P::ExpectedHeader);
    check_malformed(
        "datastore: store1\n\tpath /x\nnot a header\n",
        3,
        P::ExpectedHeader,
    );
    check_malformed("\tpath /x\n", 1, P::ExpectedHeader);
    check_malformed(
        "datastore: store1\n\tpath /x\n\n\tcomment too late\n",
        4,
        P::ExpectedHeader,
    );
    check_malformed("datastore: store1\n\tpath\n", 2, P::ExpectedProperty);
    check_malformed(
        "datastore: store1\n\tpath /x\n\tpath /y\n",
        3,
        P::DuplicateKey("path".into()),
    );
    check_malformed(
        "datastore: store1\n\tpath /x\n\ndatastore: store1\n\tpath /y\n",
        4,
        P::DuplicateSection("store1".into()),
    );
    check_malformed(
        "datastore: store1\n\tcomment no path\n",
        1,
        P::MissingPath("store1".into()),
    );
    check_malformed(
        "datastore: store1\n\tpath relative/x\n",
        1,
        P::RelativePath {
            name: "store1".into(),
            path: "relative/x".into(),
        },
    );
    check_malformed("datastore: ab\n\tpath /x\n", 1, P::InvalidName("ab".into()));
    check_malformed(
        "datastore: store1\n\tpath /x\n\tmaintenance-mode message=only%20text\n",
        3,
        P::MaintenanceMode(MaintenanceModeError::MissingType),
    );
    check_malformed(
        "datastore: store1\n\tpath /x\n\tmaintenance-mode offline,type=read-only\n",
        3,
        P::MaintenanceMode(MaintenanceModeError::DuplicateKey("type".into())),
    );
}

#[test]
fn maintenance_mode_strings() {
    let check = |text: &str, kind: MaintenanceType, message: Option<&str>| {
        let mode: MaintenanceMode = text.parse().unwrap();
        assert_eq!(mode.kind, kind, "{text}");
        assert_eq!(mode.message.as_deref(), message, "{text}");
    };
    check("read-only", MaintenanceType::ReadOnly, None);
    check("type=offline", MaintenanceType::Offline, None);
    check("type=delete", MaintenanceType::Delete, None);
    check("unmount,message=x", MaintenanceType::Unmount, Some("x"));
    check(
        "type=s3-refresh,message=50%25%20done",
        MaintenanceType::S3Refresh,
        Some("50% done"),
    );
    check(
        "message=%C3%A4rger,type=read-only",
        MaintenanceType::ReadOnly,
        Some("ärger"),
    );
    check(
        "type=future,message=x,other-key=1",
        MaintenanceType::Unknown("future".into()),
        Some("x"),
    );
    for bad in ["", "type=", "message=x", "offline,offline"] {
        assert!(bad.parse::<MaintenanceMode>().is_err(), "{bad:?}");
    }
}

/// Spec 10.1: which operation each maintenance type refuses.
#[test]
fn maintenance_table() {
    use MaintenanceType as T;
    use Operation::{Lookup, Read, Write};
    // (type, refuses Read, refuses Write, refuses Lookup)
    let table = [
        (T::ReadOnly, false, true, false),
        (T::Offline, true, true, false),
        (T::Delete, true, true, true),
        (T::Unmount, true, true, false),
        (T::S3Refresh, true, true, false),
        (T::Unknown("future".into()), true, true, false),
    ];
    for (kind, read, write, lookup) in table {
        let mode = MaintenanceMode::new(kind.clone()).with_message("see ticket 7");
        for (op, refused) in [(Read, read), (Write, write), (Lookup, lookup)] {
            let result = mode.check(op);
            assert_eq!(result.is_err(), refused, "{kind} {op}");
            if let Err(refusal) = result {
                assert_eq!(refusal.mode, kind);
                assert_eq!(refusal.operation, op);
                assert!(refusal.to_string().ends_with(": see ticket 7"), "{refusal}");
            }
        }
    }
    let texts = [
        (
            T::ReadOnly,
            Write,
            "the datastore is read-only for maintenance",
        ),
        (T::Offline, Read, "the datastore is offline for maintenance"),
        (T::Delete, Lookup, "the datastore is being deleted"),
        (T::Unmount, Read, "the datastore is being unmounted"),
        (
            T::S3Refresh,
            Write,
            "the datastore's local cache is being refreshed from S3 (maintenance)",
        ),
        (
            T::Unknown("future".into()),
            Read,
            "the datastore is in maintenance mode `future`, unknown to keepsake, which therefore \
             neither reads nor writes",
        ),
    ];
    for (kind, op, text) in texts {
        let refusal = MaintenanceMode::new(kind).check(op).unwrap_err();
        assert_eq!(refusal.to_string(), text);
    }
}

#[test]
fn find_by_path_compares_canonical_paths() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("store1")).unwrap();
    std::fs::create_dir_all(dir.path().join("mnt/removable1")).unwrap();
    std::os::unix::fs::symlink(data.join("store1"), dir.path().join("link")).unwrap();
    let d = dir.path().display();
    write_cfg(
        &host,
        &format!(
            "datastore: gone1\n\tpath {d}/data/gone\n\n\
             datastore: store1\n\tpath {d}/data/../data/store1\n\n\
             datastore: removable1\n\tpath on/device\n\tbacking-device 42\n"
        ),
    );
    let found = |p: &Path| host.find_by_path(p).unwrap().map(|s| s.name);
    assert_eq!(found(&data.join("store1")).as_deref(), Some("store1"));
    assert_eq!(found(&dir.path().join("link")).as_deref(), Some("store1"));
    assert_eq!(
        found(&dir.path().join("mnt/removable1")).as_deref(),
        Some("removable1")
    );
    assert_eq!(found(&data), None);
    assert!(matches!(
        host.find_by_path(&data.join("gone")),
        Err(PbsHostError::Io { .. })
    ));

    write_cfg(
        &host,
        &format!("datastore: one\n\tpath {d}/data/store1\n\ndatastore: two\n\tpath {d}/link\n"),
    );
    match host.find_by_path(&data.join("store1")) {
        Err(PbsHostError::AmbiguousPath { names, .. }) => assert_eq!(names, ["one", "two"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn registration_counts_and_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let file = host.active_operations_file("store1");
    assert!(host.active_operations("store1").unwrap().is_empty());

    let lookup = host
        .register_operation("store1", Operation::Lookup, None)
        .unwrap();
    assert!(!file.exists(), "a lookup registers nothing");
    assert!(!file.with_file_name("store1.lock").exists());
    drop(lookup);

    let r1 = host
        .register_operation("store1", Operation::Read, None)
        .unwrap();
    let r2 = host
        .register_operation("store1", Operation::Read, None)
        .unwrap();
    let w1 = host
        .register_operation("store1", Operation::Write, None)
        .unwrap();
    assert_eq!((w1.store(), w1.operation()), ("store1", Operation::Write));

    let pid = std::process::id();
    let start = start_time(pid);
    let entries = host.active_operations("store1").unwrap();
    assert_eq!(entries.len(), 1);
    let ProcessOperations {
        pid: p,
        start_time: s,
        read,
        write,
        ..
    } = entries[0];
    assert_eq!((p, s, read, write), (pid, start, 2, 1));

    // Byte for byte what PBS writes (compact JSON, this key order)...
    let raw = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        raw,
        format!(
            r#"[{{"pid":{pid},"starttime":{start},"active_operations":{{"read":2,"write":1}}}}]"#
        )
    );
    // ...and what PBS reads: exactly these fields and types.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct PbsEntry {
        pid: u32,
        starttime: u64,
        active_operations: PbsCounts,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct PbsCounts {
        read: i64,
        write: i64,
    }
    let parsed: Vec<PbsEntry> = serde_json::from_str(&raw).unwrap();
    assert_eq!(parsed.len(), 1);

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o660);
    assert_eq!(mode(&file.with_file_name("store1.lock")), 0o660);

    drop(r1);
    assert_eq!(host.active_operations("store1").unwrap()[0].read, 1);
    r2.finish().unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!(
            r#"[{{"pid":{pid},"starttime":{start},"active_operations":{{"read":0,"write":1}}}}]"#
        )
    );
    drop(w1);
    // An entry at zero is removed; the list stays.
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "[]");
    let leftovers: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut leftovers = leftovers;
    leftovers.sort();
    assert_eq!(leftovers, ["store1", "store1.lock"], "no temporary files");
}

#[test]
fn files_get_the_given_owner() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    // Only root may give files away; anyone may "give" them to themselves.
    let owner = if rustix::process::geteuid().is_root() {
        FileOwner {
            uid: 34_034,
            gid: 43_043,
        }
    } else {
        FileOwner {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    };
    let guard = host
        .register_operation("store1", Operation::Read, Some(owner))
        .unwrap();
    let file = host.active_operations_file("store1");
    for path in [
        file.clone(),
        file.with_file_name("store1.lock"),
        file.parent().unwrap().to_owned(),
    ] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (owner.uid, owner.gid),
            "{}",
            path.display()
        );
    }
    drop(guard);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (owner.uid, owner.gid),
        "rewritten"
    );
}

#[test]
fn stale_entries_are_dropped_and_foreign_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let file = host.active_operations_file("store1");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();

    // A live "PBS" process, one that has ended, and one whose pid was "reused".
    let mut live = Command::new("sleep").arg("60").spawn().unwrap();
    let live_pid = live.id();
    let live_start = start_time(live_pid);
    let mut ended = Command::new("true").spawn().unwrap();
    let ended_pid = ended.id();
    ended.wait().unwrap();
    let foreign = format!(
        r#"{{"pid":{live_pid},"starttime":{live_start},"active_operations":{{"read":3,"write":1}},"later-key":"kept"}}"#
    );
    std::fs::write(
        &file,
        format!(
            r#"[{foreign},{{"pid":{ended_pid},"starttime":5,"active_operations":{{"read":1,"write":0}}}},{{"pid":{live_pid},"starttime":{},"active_operations":{{"read":0,"write":9}}}}]"#,
            live_start + 1
        ),
    )
    .unwrap();

    let entries = host.active_operations("store1").unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (entries[0].pid, entries[0].read, entries[0].write),
        (live_pid, 3, 1)
    );

    let guard = host
        .register_operation("store1", Operation::Write, None)
        .unwrap();
    let pid = std::process::id();
    let start = start_time(pid);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!(
            r#"[{foreign},{{"pid":{pid},"starttime":{start},"active_operations":{{"read":0,"write":1}}}}]"#
        ),
        "stale entries dropped, the live one unchanged (with its unknown key), ours added"
    );
    drop(guard);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("[{foreign}]")
    );

    live.kill().unwrap();
    live.wait().unwrap();
    assert!(host.active_operations("store1").unwrap().is_empty());
}

#[test]
fn corrupt_file_is_an_error_and_stays() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let file = host.active_operations_file("store1");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    for corrupt in ["{", r#"[{"pid":"x"}]"#, r#"{"pid":1}"#] {
        std::fs::write(&file, corrupt).unwrap();
        let err = host
            .register_operation("store1", Operation::Read, None)
            .unwrap_err();
        assert!(
            matches!(&err, PbsHostError::CorruptActiveOperations { path, .. } if *path == file),
            "{err:?}"
        );
        assert!(host.active_operations("store1").is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), corrupt);
    }
}

#[test]
fn no_run_dir_and_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let host = PbsHost::new(dir.path().join("etc"), dir.path().join("run"));
    let err = host
        .register_operation("store1", Operation::Read, None)
        .unwrap_err();
    assert!(err.is_no_run_dir(), "{err:?}");
    assert!(
        host.active_operations("store1")
            .unwrap_err()
            .is_no_run_dir()
    );
    assert!(!host.run_dir().exists(), "the run folder is not created");
    // A lookup needs nothing.
    drop(
        host.register_operation("store1", Operation::Lookup, None)
            .unwrap(),
    );

    let host = self::host(dir.path());
    for bad in ["..", "a/bc", "x", "../../etc"] {
        let err = host
            .register_operation(bad, Operation::Write, None)
            .unwrap_err();
        assert!(matches!(err, PbsHostError::InvalidName { .. }), "{bad}");
    }
    assert_eq!(
        std::fs::read_dir(host.run_dir()).unwrap().count(),
        0,
        "nothing written for refused names"
    );
}

#[test]
fn enter_checks_maintenance_and_registers() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    std::fs::create_dir_all(dir.path().join("mnt/removable1")).unwrap();
    write_cfg(
        &host,
        "datastore: store1\n\tpath /srv/store1\n\tmaintenance-mode type=read-only,message=disk%20swap\n\n\
         datastore: doomed\n\tpath /srv/doomed\n\tmaintenance-mode delete\n\n\
         datastore: removable1\n\tpath x\n\tbacking-device 42\n",
    );

    let err = host.enter("store1", Operation::Write, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "datastore `store1` is unavailable: the datastore is read-only for maintenance: disk swap"
    );
    assert!(host.active_operations("store1").unwrap().is_empty());

    let (store, reading) = host.enter("store1", Operation::Read, None).unwrap();
    assert_eq!(store.name, "store1");
    assert_eq!(host.active_operations("store1").unwrap()[0].read, 1);
    assert!(host.config_dir().join(DATASTORE_CFG_LOCK).exists());
    drop(reading);
    assert!(host.active_operations("store1").unwrap().is_empty());

    let err = host.enter("doomed", Operation::Lookup, None).unwrap_err();
    assert!(matches!(err, PbsHostError::Maintenance { .. }), "{err}");
    let err = host.enter("absent", Operation::Read, None).unwrap_err();
    assert!(
        matches!(err, PbsHostError::UnknownDatastore { .. }),
        "{err}"
    );
    // The mount folder exists but nothing is mounted on it.
    let err = host.enter("removable1", Operation::Read, None).unwrap_err();
    assert!(matches!(err, PbsHostError::NotMounted { .. }), "{err}");
}

/// A child process: registers `reads` read and `writes` write operations interleaved (racing the
/// other child for the lock), ends `ended` of the reads again, says it is ready, and holds the rest
/// until told to release.
fn child(dir: &Path, reads: usize, writes: usize, ended: usize) {
    let host = PbsHost::new(dir.join("etc"), dir.join("run"));
    let mut read_guards = Vec::new();
    let mut write_guards = Vec::new();
    for i in 0..reads.max(writes) {
        if i < reads {
            read_guards.push(
                host.register_operation("store1", Operation::Read, None)
                    .unwrap(),
            );
        }
        if i < writes {
            write_guards.push(
                host.register_operation("store1", Operation::Write, None)
                    .unwrap(),
            );
        }
    }
    for guard in read_guards.drain(..ended) {
        guard.finish().unwrap();
    }
    let pid = std::process::id();
    std::fs::write(dir.join(format!("ready-{pid}")), b"").unwrap();
    wait_for(&dir.join("release"), Duration::from_secs(60));
    drop(read_guards);
    drop(write_guards);
}

fn wait_for(path: &Path, limit: Duration) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < limit,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn spawn_child(dir: &Path, role: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([CHILD_TEST, "--exact", "--test-threads=1"])
        .env(CHILD_VAR, format!("{}|{role}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[test]
fn two_processes_register_concurrently() {
    if let Ok(value) = std::env::var(CHILD_VAR) {
        let (dir, role) = value.split_once('|').unwrap();
        match role {
            "a" => child(Path::new(dir), 30, 20, 6),
            _ => child(Path::new(dir), 10, 40, 3),
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let mut a = spawn_child(dir.path(), "a");
    let mut b = spawn_child(dir.path(), "b");
    // This process registers at the same time.
    let mine: Vec<_> = (0..15)
        .map(|_| {
            host.register_operation("store1", Operation::Read, None)
                .unwrap()
        })
        .collect();
    for child in [&mut a, &mut b] {
        let ready: PathBuf = dir.path().join(format!("ready-{}", child.id()));
        let started = Instant::now();
        while !ready.exists() {
            assert!(child.try_wait().unwrap().is_none(), "a child failed");
            assert!(started.elapsed() < Duration::from_secs(60), "never ready");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let counts = |host: &PbsHost| {
        let mut found: Vec<(u32, i64, i64)> = host
            .active_operations("store1")
            .unwrap()
            .into_iter()
            .map(|e| (e.pid, e.read, e.write))
            .collect();
        found.sort();
        found
    };
    let me = std::process::id();
    let mut expected = vec![(a.id(), 24, 20), (b.id(), 7, 40), (me, 15, 0)];
    expected.sort();
    assert_eq!(counts(&host), expected, "no update lost");

    // A killed child never counts down; everybody ignores its entry from then on...
    a.kill().unwrap();
    a.wait().unwrap();
    let file = host.active_operations_file("store1");
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains(&format!("\"pid\":{}", a.id())),
        "still in the file"
    );
    let mut expected = vec![(b.id(), 7, 40), (me, 15, 0)];
    expected.sort();
    assert_eq!(counts(&host), expected);
    // ...and the next update removes it.
    drop(mine);
    assert!(
        !std::fs::read_to_string(&file)
            .unwrap()
            .contains(&format!("\"pid\":{}", a.id())),
        "cleaned"
    );
    assert_eq!(counts(&host), [(b.id(), 7, 40)]);

    std::fs::write(dir.path().join("release"), b"").unwrap();
    assert!(b.wait().unwrap().success());
    assert!(host.active_operations("store1").unwrap().is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "[]");
}
