//! The lock conformance suite: the [`Locker`] contract as tests, written once and run against every
//! implementation (cargo feature `conformance`).
//!
//! An implementation's test file describes how to build a locker in a scratch folder
//! ([`LockerFixture`]) and expands [`conformance_tests!`](crate::conformance_tests), which defines
//! one `#[test]` per property:
//!
//! ```no_run
//! use std::path::Path;
//! use keepsake_lock::conformance::LockerFixture;
//! use keepsake_lock::{FileLocker, Locker};
//!
//! struct LockFiles;
//!
//! impl LockerFixture for LockFiles {
//!     fn locker(&self, scratch: &Path) -> Box<dyn Locker> {
//!         Box::new(FileLocker::new(scratch.join("locks"), "store1").unwrap())
//!     }
//! }
//!
//! keepsake_lock::conformance_tests!(LockFiles);
//! # fn main() {}
//! ```
//!
//! Some properties need other processes (a holder killed with `SIGKILL`, the multi-process stress
//! run). They re-run the test binary itself, filtered to the same test, with an environment
//! variable that turns that test into the child's role; this is why every property takes the
//! test's own name, which the macro supplies.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use keepsake_hierarchy::{BackupDir, BackupGroup, BackupNamespace};

use crate::{Error, LockGuard, LockMode, LockTarget, Locker};

/// Tells a re-run test binary which role to play (see the module docs).
const ROLE_VAR: &str = "KEEPSAKE_LOCK_CONFORMANCE_ROLE";
/// Tells a re-run test binary the scratch folder of its parent.
const SCRATCH_VAR: &str = "KEEPSAKE_LOCK_CONFORMANCE_SCRATCH";
/// Printed by a child once it holds its lock.
const READY: &str = "KEEPSAKE-LOCK-CHILD-READY";

/// Lets the suite build the implementation under test.
pub trait LockerFixture: Sync {
    /// A locker keeping all its state beneath `scratch` (a fresh, empty folder per test). Calls
    /// with the same `scratch` — also from another process — must build lockers of the same locks.
    fn locker(&self, scratch: &Path) -> Box<dyn Locker>;

    /// Makes `target` lockable, if the implementation needs that (the PBS 3 scheme locks the
    /// group and snapshot directories, which must exist). The default does nothing.
    fn prepare(&self, scratch: &Path, target: &LockTarget<'_>) {
        let _ = (scratch, target);
    }

    /// Whether busy errors name the holding processes (true for flock-based implementations).
    fn reports_holders(&self) -> bool {
        true
    }
}

/// Expands to one `#[test]` per conformance property, each run against the [`LockerFixture`]
/// value `$fixture`. Use it at the top level of an integration test file (or in a module of it).
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:expr) => {
        $crate::conformance_tests!(@each $fixture;
            exclusive_excludes_exclusive,
            exclusive_excludes_shared,
            shared_admits_shared_and_excludes_exclusive,
            targets_are_independent,
            second_lock_in_same_process_conflicts,
            guard_drop_releases_on_any_thread,
            zero_timeout_is_a_single_try,
            timeout_expires_at_the_deadline,
            timeout_succeeds_when_released,
            busy_error_names_own_process,
            killed_holder_frees_the_lock,
            removal_while_waiting_is_detected,
            removed_lock_can_be_taken_again,
            stress_exclusive_holders_never_overlap
        );
    };
    (@each $fixture:expr; $($property:ident),+) => {
        $(
            #[test]
            fn $property() {
                let name = $crate::conformance::test_name(module_path!(), stringify!($property));
                $crate::conformance::$property(&$fixture, &name);
            }
        )+
    };
}

/// The libtest name of test function `function` defined in module `module_path` (as
/// `module_path!()` gives it, crate name first).
pub fn test_name(module_path: &str, function: &str) -> String {
    match module_path.split_once("::") {
        Some((_, module)) => format!("{module}::{function}"),
        None => function.to_owned(),
    }
}

/// The names the suite locks: groups, snapshots and manifests in the root namespace, in a
/// namespace 7 deep, and with an id long enough for PBS's hashed lock names.
struct Names {
    root: BackupNamespace,
    deep: BackupNamespace,
    group: BackupGroup,
    other_group: BackupGroup,
    snapshot: BackupDir,
    long_snapshot: BackupDir,
}

impl Names {
    fn new() -> Self {
        let parse_dir = |s: &str| s.parse::<BackupDir>().expect("valid snapshot");
        Self {
            root: BackupNamespace::root(),
            deep: "a/b/c/d/e/f/g".parse().expect("valid namespace"),
            group: "vm/100".parse().expect("valid group"),
            other_group: "ct/100".parse().expect("valid group"),
            snapshot: parse_dir("vm/100/2024-06-05T15:06:40Z"),
            long_snapshot: parse_dir(&format!(
                "host/{}/2024-06-05T15:06:40Z",
                "x-".repeat(120) + "y"
            )),
        }
    }

    /// Every target the suite uses; all distinct locks.
    fn targets(&self) -> Vec<LockTarget<'_>> {
        let mut targets = Vec::new();
        for ns in [&self.root, &self.deep] {
            targets.push(LockTarget::group(ns, &self.group));
            targets.push(LockTarget::group(ns, &self.other_group));
            targets.push(LockTarget::group(ns, self.long_snapshot.group()));
            for dir in [&self.snapshot, &self.long_snapshot] {
                targets.push(LockTarget::snapshot(ns, dir));
                targets.push(LockTarget::manifest(ns, dir));
            }
        }
        targets
    }
}

/// A fresh scratch folder and the locker of the fixture in it, with every target prepared.
struct Setup<'f> {
    fixture: &'f dyn LockerFixture,
    scratch: tempfile::TempDir,
    names: Names,
    locker: Box<dyn Locker>,
}

impl<'f> Setup<'f> {
    fn new(fixture: &'f dyn LockerFixture) -> Self {
        let scratch = tempfile::Builder::new()
            .prefix("keepsake-lock-conformance-")
            .tempdir()
            .expect("scratch folder");
        let names = Names::new();
        for target in names.targets() {
            fixture.prepare(scratch.path(), &target);
        }
        let locker = fixture.locker(scratch.path());
        Self {
            fixture,
            scratch,
            names,
            locker,
        }
    }

    fn another_locker(&self) -> Box<dyn Locker> {
        self.fixture.locker(self.scratch.path())
    }
}

fn lock(locker: &dyn Locker, target: &LockTarget<'_>, mode: LockMode) -> crate::Result<LockGuard> {
    locker.lock(target, mode, Duration::ZERO)
}

#[track_caller]
fn assert_would_block(
    result: crate::Result<LockGuard>,
    mode: LockMode,
    what: &dyn std::fmt::Display,
) {
    match result {
        Err(Error::WouldBlock { mode: got, .. }) => assert_eq!(got, mode, "{what}"),
        other => panic!("{what}: expected WouldBlock for a {mode} lock, got {other:?}"),
    }
}

/// An exclusive lock excludes a second exclusive lock of the same target, until it is dropped.
pub fn exclusive_excludes_exclusive(fixture: &dyn LockerFixture, _test: &str) {
    let s = Setup::new(fixture);
    for target in s.names.targets() {
        let held = lock(&*s.locker, &target, LockMode::Exclusive)
            .unwrap_or_else(|e| panic!("{target}: {e:?}"));
        assert_eq!(held.mode(), LockMode::Exclusive);
        assert_would_block(
            lock(&*s.locker, &target, LockMode::Exclusive),
            LockMode::Exclusive,
            &target,
        );
        drop(held);
        drop(
            lock(&*s.locker, &target, LockMode::Exclusive)
                .unwrap_or_else(|e| panic!("{target} after release: {e:?}")),
        );
    }
}

/// An exclusive lock excludes shared locks of the same target.
pub fn exclusive_excludes_shared(fixture: &dyn LockerFixture, _test: &str) {
    let s = Setup::new(fixture);
    for target in s.names.targets() {
        let held = s
            .locker
            .lock_exclusive(&target, Duration::ZERO)
            .expect("exclusive");
        assert_would_block(
            lock(&*s.locker, &target, LockMode::Shared),
            LockMode::Shared,
            &target,
        );
        drop(held);
        drop(
            lock(&*s.locker, &target, LockMode::Shared)
                .unwrap_or_else(|e| panic!("{target} after release: {e:?}")),
        );
    }
}

/// Shared locks admit each other and exclude an exclusive lock until the last one is dropped.
pub fn shared_admits_shared_and_excludes_exclusive(fixture: &dyn LockerFixture, _test: &str) {
    let s = Setup::new(fixture);
    let other = s.another_locker();
    for target in s.names.targets() {
        let first = s
            .locker
            .lock_shared(&target, Duration::ZERO)
            .expect("first shared");
        assert_eq!(first.mode(), LockMode::Shared);
        let second = other
            .lock_shared(&target, Duration::ZERO)
            .expect("second shared");
        let third = s
            .locker
            .lock_shared(&target, Duration::ZERO)
            .expect("third shared");
        assert_would_block(
            lock(&*s.locker, &target, LockMode::Exclusive),
            LockMode::Exclusive,
            &target,
        );
        drop((first, third));
        assert_would_block(
            lock(&*other, &target, LockMode::Exclusive),
            LockMode::Exclusive,
            &target,
        );
        let second = second
            .into_exclusive()
            .expect_err("a shared guard is not exclusive");
        drop(second);
        let exclusive = lock(&*s.locker, &target, LockMode::Exclusive)
            .expect("exclusive after all shared left");
        assert!(exclusive.into_exclusive().is_ok());
    }
}

/// Every target is its own lock: all of them can be held exclusively at once (a group's lock does
/// not cover its snapshots, namespaces separate equal names, a manifest is not its snapshot).
pub fn targets_are_independent(fixture: &dyn LockerFixture, _test: &str) {
    let s = Setup::new(fixture);
    let targets = s.names.targets();
    let guards: Vec<LockGuard> = targets
        .iter()
        .map(|t| lock(&*s.locker, t, LockMode::Exclusive).unwrap_or_else(|e| panic!("{t}: {e:?}")))
        .collect();
    let mut resources: Vec<&Path> = guards.iter().map(LockGuard::resource).collect();
    resources.sort();
    resources.dedup();
    assert_eq!(
        resources.len(),
        targets.len(),
        "distinct targets share a lock resource"
    );
}

/// Locks are per guard: the same locker, another locker of the same locks and another thread all
/// conflict with a lock this process already holds.
pub fn second_lock_in_same_process_conflicts(fixture: &dyn LockerFixture, _test: &str) {
    let s = Setup::new(fixture);
    let other = s.another_locker();
    let target = LockTarget::snapshot(&s.names.root, &s.names.snapshot);
    let held = lock(&*s.locker, &target, LockMode::Exclusive).expect("first");
    assert_would_block(
        lock(&*s.locker, &target, LockMode::Exclusive),
        LockMode::Exclusive,
        &"same locker",
    );
    assert_would_block(
        lock(&*other, &target, LockMode::Shared),
        LockMode::Shared,
        &"other locker",
    );
    std::thread::scope(|scope| {
        let result = scope
            .spawn(|| lock(&*s.locker, &target, LockMode::Exclusive))
            .join()
            .expect("thread");
        assert_would_block(result, LockMode::Exclusive, &"other thread");
    });
    drop(held);
}

/// Guards can be moved to and dropped on another thread, which releases the lock.
pub fn guard_drop_releases_on_any_thread(fixture: &dyn LockerFixture, _test: &str) {
    let s = Setup::new(fixture);
    let target = LockTarget::manifest(&s.names.deep, &s.names.long_snapshot);
    let held = lock(&*s.locker, &target, LockMode::Exclusive).expect("first");
    std::thread::spawn(move || drop(held))
        .join()
        .expect("thread");
    let exclusive = s
        .locker
        .lock_exclusive(&target, Duration::ZERO)
        .expect("after drop on another thread");
    let guard = std::thread::spawn(move || LockGuard::from(exclusive))
        .join()
        .expect("thread");
    assert_would_block(
        lock(&*s.locker, &target, LockMode::Shared),
        LockMode::Shared,
        &target,
    );
    drop(guard);
    drop(lock(&*s.locker, &target, LockMode::Shared).expect("after second drop"));
}

/// A zero timeout fails at once.
pub fn zero_timeout_is_a_single_try(fixture: &dyn LockerFixture, _test: &str) {
    let s = Setup::new(fixture);
    let target = LockTarget::group(&s.names.root, &s.names.group);
    let _held = lock(&*s.locker, &target, LockMode::Shared).expect("holder");
    let start = Instant::now();
    assert_would_block(
        lock(&*s.locker, &target, LockMode::Exclusive),
        LockMode::Exclusive,
        &target,
    );
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_millis(250),
        "a single try took {elapsed:?}"
    );
}

/// A blocked acquire with a 300 ms timeout gives up with [`Error::Timeout`] after about 300 ms.
pub fn timeout_expires_at_the_deadline(fixture: &dyn LockerFixture, _test: &str) {
    let s = Setup::new(fixture);
    let timeout = Duration::from_millis(300);
    for (held_mode, wanted) in [
        (LockMode::Exclusive, LockMode::Shared),
        (LockMode::Shared, LockMode::Exclusive),
    ] {
        let target = LockTarget::manifest(&s.names.root, &s.names.snapshot);
        let _held = lock(&*s.locker, &target, held_mode).expect("holder");
        let start = Instant::now();
        let result = s.locker.lock(&target, wanted, timeout);
        let elapsed = start.elapsed();
        match result {
            Err(Error::Timeout {
                mode,
                timeout: reported,
                ref holders,
                ..
            }) => {
                assert_eq!((mode, reported), (wanted, timeout));
                if fixture.reports_holders() {
                    assert!(
                        holders
                            .iter()
                            .any(|h| h.pid == std::process::id() && h.mode == held_mode),
                        "{holders:?}"
                    );
                }
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert!(elapsed >= timeout, "gave up early, after {elapsed:?}");
        assert!(
            elapsed < timeout + Duration::from_millis(500),
            "gave up late, after {elapsed:?}"
        );
    }
}

/// A waiting acquire succeeds as soon as the holder releases within the timeout.
pub fn timeout_succeeds_when_released(fixture: &dyn LockerFixture, _test: &str) {
    let s = Setup::new(fixture);
    let target = LockTarget::snapshot(&s.names.deep, &s.names.snapshot);
    // The holder lets go at 100 ms; the deadline is far enough beyond it that a locker whose
    // every attempt is a few network requests (leases in a bucket) is judged on the property
    // (acquired once released, before the deadline), not on the speed of its server.
    let timeout = Duration::from_millis(1_000);
    let held = lock(&*s.locker, &target, LockMode::Exclusive).expect("holder");
    let started = Barrier::new(2);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            started.wait();
            let start = Instant::now();
            let result = s.locker.lock(&target, LockMode::Exclusive, timeout);
            (result, start.elapsed())
        });
        started.wait();
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        let (result, elapsed) = waiter.join().expect("waiter");
        let guard = result.unwrap_or_else(|e| panic!("not acquired after release: {e:?}"));
        assert_eq!(guard.mode(), LockMode::Exclusive);
        assert!(
            elapsed >= Duration::from_millis(50),
            "acquired before the release, after {elapsed:?}"
        );
        assert!(elapsed < timeout, "took {elapsed:?}");
    });
}

/// A busy error names this process as the holder, with its command line.
pub fn busy_error_names_own_process(fixture: &dyn LockerFixture, _test: &str) {
    if !fixture.reports_holders() {
        return;
    }
    let s = Setup::new(fixture);
    let target = LockTarget::group(&s.names.deep, &s.names.other_group);
    let _held = lock(&*s.locker, &target, LockMode::Exclusive).expect("holder");
    let err = lock(&*s.locker, &target, LockMode::Shared).expect_err("busy");
    assert!(err.is_busy());
    let me = err
        .holders()
        .iter()
        .find(|h| h.pid == std::process::id())
        .unwrap_or_else(|| panic!("own pid missing from {err}"));
    assert_eq!(me.mode, LockMode::Exclusive);
    let exe = std::env::args().next().expect("argv[0]");
    let command = me.command.as_deref().expect("own command line");
    assert!(
        command.starts_with(&exe),
        "{command:?} does not start with {exe:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
}

/// A holder killed with `SIGKILL` frees its lock; while it lives, busy errors name it (pid and
/// command line).
pub fn killed_holder_frees_the_lock(fixture: &dyn LockerFixture, test: &str) {
    if let Some(role) = child_role() {
        return child_main(fixture, &role);
    }
    let s = Setup::new(fixture);
    let targets = s.names.targets();
    for (index, mode) in [
        (1, LockMode::Exclusive),
        (4, LockMode::Shared),
        (targets.len() - 1, LockMode::Exclusive),
    ] {
        let target = targets[index];
        let mut child = ChildProcess::spawn(
            test,
            &format!("hold:{index}:{mode}"),
            s.scratch.path(),
            true,
        );
        child.wait_ready();
        let wanted = match mode {
            LockMode::Exclusive => LockMode::Shared,
            LockMode::Shared => LockMode::Exclusive,
        };
        let err = lock(&*s.locker, &target, wanted).expect_err("held by the child");
        assert!(err.is_busy(), "{err:?}");
        if fixture.reports_holders() {
            let holder = err
                .holders()
                .iter()
                .find(|h| h.pid == child.id())
                .unwrap_or_else(|| panic!("child pid {} missing from {err}", child.id()));
            assert_eq!(holder.mode, mode);
            let command = holder.command.as_deref().expect("child command line");
            assert!(
                command.contains(test),
                "{command:?} lacks the test name {test:?}"
            );
        }
        let status = child.kill();
        assert_eq!(status.signal(), Some(9), "{status:?}");
        let guard = lock(&*s.locker, &target, LockMode::Exclusive)
            .unwrap_or_else(|e| panic!("{target} still locked after its holder was killed: {e:?}"));
        drop(guard);
    }
}

/// The double-stat race: a waiter that opened the lock before its exclusive holder removed it must
/// not end up holding the removed lock while a newcomer holds the new one.
pub fn removal_while_waiting_is_detected(fixture: &dyn LockerFixture, _test: &str) {
    let s = Setup::new(fixture);
    for target in s.names.targets() {
        let holder = s
            .locker
            .lock_exclusive(&target, Duration::ZERO)
            .expect("holder");
        let started = Barrier::new(2);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                started.wait();
                s.locker.lock_exclusive(&target, Duration::from_secs(10))
            });
            started.wait();
            // Long enough for the waiter to have opened the old lock and be polling it.
            std::thread::sleep(Duration::from_millis(50));
            holder.remove().expect("remove");
            let waiter = waiter
                .join()
                .expect("waiter")
                .expect("waiter acquires after the removal");
            assert_would_block(
                lock(&*s.another_locker(), &target, LockMode::Exclusive),
                LockMode::Exclusive,
                &target,
            );
            assert_would_block(
                lock(&*s.locker, &target, LockMode::Shared),
                LockMode::Shared,
                &target,
            );
            drop(waiter);
        });
    }
}

/// After removal the lock is free and can be taken and removed again.
pub fn removed_lock_can_be_taken_again(fixture: &dyn LockerFixture, _test: &str) {
    let s = Setup::new(fixture);
    for target in s.names.targets() {
        for _ in 0..3 {
            let guard = s
                .locker
                .lock_exclusive(&target, Duration::ZERO)
                .expect("exclusive");
            guard.remove().expect("remove");
        }
        let shared = lock(&*s.locker, &target, LockMode::Shared).expect("shared after removal");
        let exclusive = shared.into_exclusive().expect_err("shared");
        drop(exclusive);
    }
}

/// Child processes and threads contend for the same locks for thousands of rounds. Under each
/// exclusive lock a worker marks itself inside (a file created with `O_EXCL`, so an overlap is
/// caught), increments a counter file and sometimes removes the lock on release; under a shared
/// lock it checks that no exclusive holder is inside. The counters must equal the exclusive rounds.
pub fn stress_exclusive_holders_never_overlap(fixture: &dyn LockerFixture, test: &str) {
    if let Some(role) = child_role() {
        return child_main(fixture, &role);
    }
    const CHILDREN: usize = 3;
    const THREADS: usize = 2;
    const ROUNDS: usize = 400;
    let s = Setup::new(fixture);
    for slot in 0..STRESS_TARGETS {
        std::fs::write(counter_path(s.scratch.path(), slot), b"0").expect("counter");
    }
    let role = format!("stress:{THREADS}:{ROUNDS}");
    let children: Vec<ChildProcess> = (0..CHILDREN)
        .map(|_| ChildProcess::spawn(test, &role, s.scratch.path(), false))
        .collect();
    stress_workers(&*s.locker, s.scratch.path(), THREADS, ROUNDS);
    for child in children {
        let status = child.wait();
        assert!(status.success(), "stress child failed: {status:?}");
    }
    let workers = (CHILDREN + 1) * THREADS;
    for slot in 0..STRESS_TARGETS {
        let count: usize = std::fs::read_to_string(counter_path(s.scratch.path(), slot))
            .expect("counter")
            .parse()
            .expect("counter number");
        let per_worker = (0..ROUNDS)
            .filter(|&r| r % STRESS_TARGETS == slot && !is_shared_round(r))
            .count();
        assert_eq!(count, workers * per_worker, "counter {slot}");
    }
    assert!(workers * ROUNDS >= 2000, "too few rounds to call it stress");
}

/// The stress run alternates between these many targets (a manifest and a snapshot lock).
const STRESS_TARGETS: usize = 2;

fn stress_target(names: &Names, slot: usize) -> LockTarget<'_> {
    match slot {
        0 => LockTarget::manifest(&names.deep, &names.snapshot),
        _ => LockTarget::snapshot(&names.root, &names.snapshot),
    }
}

fn is_shared_round(round: usize) -> bool {
    round % 5 == 4
}

fn counter_path(scratch: &Path, slot: usize) -> PathBuf {
    scratch.join(format!("stress-counter-{slot}"))
}

fn inside_path(scratch: &Path, slot: usize) -> PathBuf {
    scratch.join(format!("stress-inside-{slot}"))
}

fn stress_workers(locker: &dyn Locker, scratch: &Path, threads: usize, rounds: usize) {
    let names = Names::new();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| stress_rounds(locker, &names, scratch, rounds)))
            .collect();
        for worker in workers {
            worker.join().expect("stress worker panicked");
        }
    });
}

fn stress_rounds(locker: &dyn Locker, names: &Names, scratch: &Path, rounds: usize) {
    let patience = Duration::from_secs(30);
    for round in 0..rounds {
        let slot = round % STRESS_TARGETS;
        let target = stress_target(names, slot);
        let inside = inside_path(scratch, slot);
        if is_shared_round(round) {
            let _guard = locker
                .lock(&target, LockMode::Shared, patience)
                .expect("shared lock");
            assert!(
                !inside.exists(),
                "a shared holder overlaps an exclusive one on {target}"
            );
            continue;
        }
        let guard = locker
            .lock_exclusive(&target, patience)
            .expect("exclusive lock");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&inside)
            .unwrap_or_else(|e| panic!("two exclusive holders overlap on {target}: {e}"));
        let counter = counter_path(scratch, slot);
        let count: u64 = std::fs::read_to_string(&counter)
            .expect("read counter")
            .parse()
            .expect("counter number");
        std::fs::write(&counter, (count + 1).to_string()).expect("write counter");
        std::fs::remove_file(&inside).expect("leave");
        if round % 7 == 0 {
            guard.remove().expect("remove lock");
        }
    }
}

fn child_role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// What a re-run test binary does instead of the test: hold a lock until killed, or run stress
/// workers. Exits the process when done, so the harness prints nothing the parent must parse.
fn child_main(fixture: &dyn LockerFixture, role: &str) {
    let scratch =
        PathBuf::from(std::env::var_os(SCRATCH_VAR).expect("scratch folder of the parent"));
    let locker = fixture.locker(&scratch);
    let parts: Vec<&str> = role.split(':').collect();
    match parts.as_slice() {
        ["hold", index, mode] => {
            let names = Names::new();
            let target = names.targets()[index.parse::<usize>().expect("target index")];
            let mode = if *mode == "shared" {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            };
            let _guard = lock(&*locker, &target, mode).expect("child lock");
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{READY}")
                .and_then(|()| stdout.flush())
                .expect("report ready");
            // Hold until killed, or until the parent goes away (stdin closes).
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            std::process::exit(0);
        }
        ["stress", threads, rounds] => {
            stress_workers(
                &*locker,
                &scratch,
                threads.parse().expect("threads"),
                rounds.parse().expect("rounds"),
            );
            std::process::exit(0);
        }
        _ => panic!("unknown conformance child role {role:?}"),
    }
}

/// A re-run of this test binary in a child role; killed (and reaped) on drop if still running.
struct ChildProcess {
    child: Option<Child>,
}

impl ChildProcess {
    fn spawn(test: &str, role: &str, scratch: &Path, piped: bool) -> Self {
        let exe = std::env::current_exe().expect("own executable");
        let child = Command::new(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE_VAR, role)
            .env(SCRATCH_VAR, scratch)
            .stdin(Stdio::piped())
            .stdout(if piped { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        Self { child: Some(child) }
    }

    fn id(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn wait_ready(&mut self) {
        let stdout = self
            .child
            .as_mut()
            .expect("running")
            .stdout
            .take()
            .expect("piped stdout");
        for line in BufReader::new(stdout).lines() {
            if line.expect("child output").trim() == READY {
                return;
            }
        }
        panic!("child exited before taking its lock");
    }

    fn kill(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child")
    }

    fn wait(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // Stdin stays open: the stress role ignores it.
        child.wait().expect("wait for the child")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_drop_the_crate_name() {
        assert_eq!(test_name("conformance_pbs4", "stress"), "stress");
        assert_eq!(
            test_name("conformance_pbs4::suite", "stress"),
            "suite::stress"
        );
    }

    #[test]
    fn suite_targets_are_distinct_and_include_hashed_names() {
        let names = Names::new();
        let targets = names.targets();
        let mut paths: Vec<String> = targets
            .iter()
            .map(|t| format!("{t} {}", t.relative_path()))
            .collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), targets.len());
        let long = crate::escape_unit_path(names.long_snapshot.to_string().as_bytes());
        assert!(long.len() >= crate::MAX_PLAIN_LOCK_NAME);
    }
}
