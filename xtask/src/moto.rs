//! The real S3-compatible test server: moto, installed into a venv under `target/` and run on loopback.
//!
//! The tests find it through environment variables (see [`MotoServer::env`]); with
//! `KEEPSAKE_S3_REQUIRED=1` set, an S3 test that finds no endpoint fails instead of skipping.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Exactly the packages the design asks for; bump deliberately.
const MOTO_PACKAGES: &[&str] = &["moto[s3]==5.2.5", "flask", "flask-cors"];
/// The bucket every S3 test uses; tests isolate themselves by key prefix.
pub(crate) const BUCKET: &str = "keepsake-test";

/// moto's server as `moto_server -H 127.0.0.1 -p 0` runs it, with one change: the writes to
/// one key (PUT, POST, DELETE on the same path) are handled one at a time. moto checks S3's
/// conditions (`If-None-Match: *`, `If-Match`) and then stores without a lock, so two concurrent
/// conditional writes of one key could both succeed, where S3 decides them atomically; the
/// create-only chunk, compare-and-swap and lease tests rely on S3's behaviour. Reads and writes
/// of other keys go on concurrently, so timing-bound tests see moto's usual latency (a global
/// lock made them fail).
const KEYED_SERVER: &str = r#"
import collections, os, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
)
os.environ.setdefault("MOTO_PORT", "0")
app = DomainDispatcherApplication(create_backend_app)
app.debug = True
guard = threading.Lock()
locks = collections.defaultdict(threading.Lock)
def keyed(environ, start_response):
    if environ.get("REQUEST_METHOD") not in ("PUT", "POST", "DELETE"):
        return app(environ, start_response)
    key = environ.get("HTTP_HOST", "") + environ.get("PATH_INFO", "")
    with guard:
        lock = locks[key]
    with lock:
        return list(app(environ, start_response))
run_simple("127.0.0.1", 0, keyed, threaded=True, request_handler=MotoRequestHandler)
"#;

pub(crate) struct MotoServer {
    child: Child,
    endpoint: String,
}

impl MotoServer {
    /// Installs moto if needed, starts it on a free loopback port and creates the test bucket.
    pub(crate) fn start(root: &Path) -> Result<Self> {
        let venv = ensure_installed(root)?;
        let mut child = Command::new(venv.join("bin/python"))
            .args(["-c", KEYED_SERVER])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start moto_server")?;
        // Werkzeug announces the bound port on stderr (older versions on stdout): read both.
        let (tx, rx) = mpsc::channel::<String>();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("KEEPSAKE_MOTO_VERBOSE").is_some() {
                        eprintln!("moto: {line}");
                    }
                    // The receiver may be gone; the thread keeps draining so moto never blocks on a full pipe.
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let endpoint = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = child.kill();
                bail!("moto_server did not announce its address within 60 s");
            }
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("Running on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        break format!("http://{addr}");
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait()?;
                    bail!("moto_server exited before it was ready: {status}");
                }
            }
        };
        let server = Self { child, endpoint };
        server.create_bucket()?;
        Ok(server)
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The variables the tests read.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KEEPSAKE_S3_ENDPOINT", self.endpoint.clone()),
            ("KEEPSAKE_S3_BUCKET", BUCKET.to_owned()),
            ("KEEPSAKE_S3_REGION", "us-east-1".to_owned()),
            ("KEEPSAKE_S3_ACCESS_KEY_ID", "testing".to_owned()),
            ("KEEPSAKE_S3_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("KEEPSAKE_S3_REQUIRED", "1".to_owned()),
        ]
    }

    pub(crate) fn env_lines(&self) -> Vec<String> {
        self.env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    pub(crate) fn export_to(&self, cmd: &mut Command) {
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
    }

    pub(crate) fn wait(mut self) -> Result<()> {
        let status = self.child.wait()?;
        bail!("moto_server exited: {status}")
    }

    fn create_bucket(&self) -> Result<()> {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr)
            .with_context(|| format!("cannot connect to moto at {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "PUT /{BUCKET} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status_line = response.lines().next().unwrap_or_default();
        if !status_line.contains(" 200") {
            bail!("creating bucket {BUCKET} failed: {status_line}");
        }
        Ok(())
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates `target/moto-venv` with moto in it, once; a marker file records a finished install.
fn ensure_installed(root: &Path) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let venv = target.join("moto-venv");
    let marker = venv.join(".keepsake-installed");
    let wanted = MOTO_PACKAGES.join(" ");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(venv);
    }
    eprintln!("xtask: installing {wanted} into {}", venv.display());
    let python = std::env::var("KEEPSAKE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    crate::run(
        Command::new(&python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    crate::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(MOTO_PACKAGES),
    )?;
    std::fs::write(&marker, wanted)?;
    Ok(venv)
}
