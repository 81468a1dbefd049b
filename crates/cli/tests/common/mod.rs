//! Running the built `keepsake` binary on test datastores, and checking what it left behind.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keepsake_testkit::fixture::PbsFixture;

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        &self.stdout
    }

    /// Asserts success and parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        let text = self.ok();
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Asserts failure with `code`, a single `error: …` line on stderr, and returns that line.
    #[track_caller]
    pub fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "expected exit code {code}: {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one stderr line: {self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        lines[0]
    }

    /// Asserts failure with `code` under `--json`: one stderr line and `{"error": {"kind",
    /// "message"}}` on stdout, whose message is the stderr line's and whose kind is the code's.
    #[track_caller]
    pub fn fails_json(&self, code: i32) -> String {
        let line = self.fails(code).to_owned();
        let doc: serde_json::Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"));
        let message = doc["error"]["message"]
            .as_str()
            .expect("an error message")
            .to_owned();
        let kind = doc["error"]["kind"].as_str().expect("an error kind");
        assert!(kinds_of_exit_code(code).contains(&kind), "{self:#?}");
        assert_eq!(format!("error: {message}"), line);
        message
    }
}

/// The `--json` error kinds an exit code goes with (see the CLI's README).
pub fn kinds_of_exit_code(code: i32) -> &'static [&'static str] {
    match code {
        1 => &["failed"],
        2 => &["usage"],
        3 => &["not-found"],
        4 => &["locked"],
        5 => &["protected"],
        6 => &["refused"],
        7 => &["invalid"],
        8 => &["io"],
        9 => &["s3"],
        _ => &[],
    }
}

/// The binary with a clean environment: no inherited `KEEPSAKE_*` or AWS settings, UTC.
pub fn keepsake() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keepsake"));
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("KEEPSAKE_") || key_text.starts_with("AWS_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("TZ", "UTC");
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Runs `cmd` with `stdin` as its input.
pub fn run_with_input(cmd: &mut Command, stdin: &[u8]) -> Run {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the keepsake binary starts");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("stdin written");
    let output = child.wait_with_output().expect("keepsake finished");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `cmd` with empty stdin.
pub fn run(cmd: &mut Command) -> Run {
    run_with_input(cmd, b"")
}

/// A copy of the PBS fixture with its own lock root.
pub struct Store {
    _fixture: Option<PbsFixture>,
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub lock_root: PathBuf,
}

impl Store {
    /// A fresh copy of the PBS 3.2.4 fixture (`store1`).
    pub fn fixture() -> Self {
        let fixture = PbsFixture::unpack().expect("fixture unpacks");
        let dir = tempfile::tempdir().unwrap();
        Self {
            path: fixture.path(),
            lock_root: dir.path().join("locks"),
            _fixture: Some(fixture),
            _dir: dir,
        }
    }

    /// A folder for a new datastore called `name` (not created).
    pub fn empty(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            path: dir.path().join(name),
            lock_root: dir.path().join("locks"),
            _fixture: None,
            _dir: dir,
        }
    }

    /// A demo datastore (`keepsake demo`) called `demo`, with its own lock root.
    pub fn demo() -> Self {
        let store = Self::empty("demo");
        let mut cmd = keepsake();
        cmd.arg("--lock-root")
            .arg(&store.lock_root)
            .arg("--json")
            .arg("demo")
            .arg(&store.path);
        run(&mut cmd).json();
        store
    }

    /// The intent files in the datastore's journal (`.keepsake/intents/*.intent`).
    pub fn intents(&self) -> Vec<PathBuf> {
        let dir = self.path.join(".keepsake/intents");
        let mut found: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "intent"))
                .collect(),
            Err(_) => Vec::new(),
        };
        found.sort();
        found
    }

    /// `keepsake --store <path> --lock-root <locks> <args>`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = keepsake();
        cmd.arg("--store")
            .arg(&self.path)
            .arg("--lock-root")
            .arg(&self.lock_root)
            .args(args);
        cmd
    }

    /// Runs `keepsake` on this store.
    pub fn run(&self, args: &[&str]) -> Run {
        run(&mut self.cmd(args))
    }

    /// Every file and folder below the datastore, with file contents, to compare before and
    /// after a command that must change nothing.
    pub fn contents(&self) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
        tree_contents(&self.path)
    }
}

/// Every file (with bytes) and folder (`None`) below `root`.
pub fn tree_contents(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if entry.file_type().unwrap().is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                out.insert(rel, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The snapshot names (`type/id/time`) of a `snapshots --json` document.
pub fn snapshot_names(doc: &serde_json::Value) -> Vec<String> {
    doc.as_array()
        .expect("an array")
        .iter()
        .map(|s| s["snapshot"].as_str().expect("snapshot").to_owned())
        .collect()
}
