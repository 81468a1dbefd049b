//! The commands on S3 datastores: on the moto server `cargo xtask test` starts (skipped, with a
//! printed line, without one), and against a server that refuses the credentials.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

use common::{Run, Store, keepsake, snapshot_names};
use keepsake_backend::{Backend, BackendPath, EntryKind, ObjectBackend, RetrySettings, S3Config};
use keepsake_datastore::Encryption;
use keepsake_testkit::s3::{S3TestConfig, config_or_skip, unique_prefix};

/// A datastore on the test bucket, with its local cache folder.
struct S3Store {
    local: Store,
    name: String,
    cfg: S3TestConfig,
}

impl S3Store {
    /// A new, not yet created datastore with a name no other test uses.
    fn new(cfg: S3TestConfig) -> Self {
        // Datastore names have at most 32 characters: keep the test part short.
        let name = unique_prefix("cli");
        assert!(name.len() <= 32, "{name}");
        Self {
            local: Store::empty("cache"),
            name,
            cfg,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.local.cmd(&[]);
        cmd.env("AWS_ACCESS_KEY_ID", &self.cfg.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.cfg.secret_access_key)
            .args(["--name", &self.name])
            .args(["--s3-endpoint", &self.cfg.endpoint])
            .args(["--s3-bucket", &self.cfg.bucket])
            .args(["--s3-region", &self.cfg.region])
            .args(["--sync-level", "none"])
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        common::run(&mut self.cmd(args))
    }

    /// The bucket side of this datastore.
    fn remote(&self, name: &str) -> ObjectBackend {
        let mut config = S3Config::new(
            self.cfg.bucket.clone(),
            self.cfg.region.clone(),
            self.cfg.access_key_id.clone(),
            self.cfg.secret_access_key.clone(),
        );
        config.endpoint = Some(self.cfg.endpoint.clone());
        config.allow_http = true;
        config.retry = RetrySettings::for_tests();
        ObjectBackend::s3(&config, name).unwrap()
    }

    /// Every content object of this datastore in the bucket, with its bytes.
    fn bucket(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        walk(&self.remote(&self.name), &BackendPath::root(), &mut out);
        out
    }

    /// The lease objects in the bucket (beside the content, under `.keepsake-leases/`).
    fn lease_objects(&self) -> Vec<String> {
        let remote = self.remote(&self.name);
        let folder = remote.raw_key(".keepsake-leases").unwrap();
        remote
            .list_raw(&folder)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}

fn walk(backend: &dyn Backend, folder: &BackendPath, out: &mut BTreeMap<String, Vec<u8>>) {
    let entries: Vec<_> = match backend.list(folder) {
        Ok(listing) => listing.map(|e| e.unwrap()).collect(),
        Err(keepsake_backend::Error::NotFound { .. }) => return,
        Err(e) => panic!("listing {folder}: {e}"),
    };
    for entry in entries {
        let path = folder.join(&entry.name).unwrap();
        match entry.kind {
            EntryKind::Dir => walk(backend, &path, out),
            _ => {
                out.insert(path.to_string(), backend.read(&path).unwrap().data);
            }
        }
    }
}

/// A demo datastore on the bucket.
fn demo(cfg: S3TestConfig) -> S3Store {
    let s3 = S3Store::new(cfg);
    let path = s3.local.path.clone();
    let mut cmd = s3.cmd(&["--json", "demo"]);
    cmd.arg(&path);
    let doc = common::run(&mut cmd).json();
    assert_eq!(doc["ns"], "");
    s3
}

#[test]
fn s3_every_command_on_a_demo_datastore() {
    let Some(cfg) = config_or_skip("s3_every_command_on_a_demo_datastore") else {
        return;
    };
    let s3 = demo(cfg);
    let bucket = s3.bucket();
    assert!(bucket.contains_key("vm/100/owner"), "{:?}", bucket.keys());
    assert!(bucket.contains_key("ns/dev/.namespace"));
    assert!(!bucket.contains_key(".lock"), ".lock belongs to the host");

    // Reading.
    let groups = s3.run(&["--json", "groups", "--recursive"]).json();
    assert_eq!(groups.as_array().unwrap().len(), 6);
    let names = snapshot_names(&s3.run(&["--json", "snapshots", "vm/100"]).json());
    assert_eq!(names.len(), 7);
    let show = s3
        .run(&["--json", "show", "vm/100/2024-06-01T02:00:00Z"])
        .json();
    assert_eq!(show["protected"], true);
    assert!(s3.run(&["tree"]).ok().contains("in bucket"));
    assert_eq!(
        s3.run(&["--json", "ns", "list"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let locks = s3.run(&["--json", "locks", "host/web"]).json();
    assert_eq!(locks.as_array().unwrap().len(), 5);

    // Changes reach the bucket.
    s3.run(&["owner", "vm/100", "backup@pbs", "--force"]).ok();
    assert_eq!(s3.bucket()["vm/100/owner"], b"backup@pbs\n");
    s3.run(&["notes", "vm/100", "--set", "on s3"]).ok();
    assert_eq!(s3.bucket()["vm/100/notes"], b"on s3");
    s3.run(&[
        "notes",
        "vm/100/2024-06-06T02:00:00Z",
        "--set",
        "snap notes",
    ])
    .ok();
    s3.run(&["protect", "vm/100/2024-06-06T02:00:00Z"]).ok();
    assert!(
        s3.bucket()
            .contains_key("vm/100/2024-06-06T02:00:00Z/.protected")
    );
    s3.run(&["unprotect", "vm/100/2024-06-01T02:00:00Z"]).ok();
    s3.run(&["forget", "vm/100/2024-06-01T02:00:00Z"]).ok();
    assert!(
        !s3.bucket()
            .keys()
            .any(|k| k.starts_with("vm/100/2024-06-01T02:00:00Z/"))
    );
    let doc = s3
        .run(&["--json", "prune", "vm/100", "--keep-last", "1"])
        .json();
    let removed = doc
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["action"] == "removed")
        .count();
    assert_eq!(removed, 3);
    s3.run(&["forget", "ct/200"]).ok();
    s3.run(&["ns", "create", "staging"]).ok();
    assert!(s3.bucket().contains_key("ns/staging/.namespace"));
    // (A refresh does not bring back empty namespaces, as in PBS: remove it before comparing.)
    s3.run(&["ns", "remove", "staging"]).ok();
    s3.run(&["ns", "remove", "dev"]).ok();
    let bucket = s3.bucket();
    assert!(!bucket.keys().any(|k| k.starts_with("ct/200/")));
    assert!(
        !bucket
            .keys()
            .any(|k| k.starts_with("ns/dev/") || k.starts_with("ns/staging/"))
    );

    // Moves and merges go through the bucket too.
    s3.run(&["move", "host/web", "--to-ns", "prod"]).ok();
    s3.run(&["ns", "move", "prod/site-a", "--to", ""]).ok();
    let bucket = s3.bucket();
    assert!(bucket.contains_key("ns/prod/host/web/owner"));
    assert!(!bucket.keys().any(|k| k.starts_with("host/web/")));
    assert!(bucket.contains_key("ns/site-a/ct/300/owner"));
    assert!(!bucket.keys().any(|k| k.starts_with("ns/prod/ns/site-a/")));
    s3.run(&["move", "vm/100/2024-06-06T02:00:00Z", "--to-ns", "prod"])
        .ok();
    assert!(
        s3.bucket()
            .contains_key("ns/prod/vm/100/2024-06-06T02:00:00Z/index.json.blob")
    );
    let bucket = s3.bucket();
    let line = s3
        .run(&["move", "vm/100", "--to-ns", "prod"])
        .fails(6)
        .to_owned();
    assert!(line.contains("merging was not requested"), "{line}");
    assert_eq!(s3.bucket(), bucket);

    // Verify reads every manifest, blob and index and asks the bucket for every chunk.
    let doc = s3.run(&["--json", "verify"]).json();
    assert_eq!(doc["ok"], true, "{doc}");
    assert!(doc["verified"].as_u64().unwrap() >= 6, "{doc}");
    let manifest = "ns/prod/vm/100/2024-06-06T02:00:00Z/index.json.blob";
    let before = s3.bucket()[manifest].clone();
    s3.run(&[
        "--ns",
        "prod",
        "verify",
        "--read-data",
        "--record",
        "vm/100",
    ])
    .ok();
    assert_ne!(
        s3.bucket()[manifest],
        before,
        "the verify state reaches the bucket"
    );

    // The cache and the bucket agree: a fresh cache from `refresh` lists the same.
    let before = s3.run(&["--json", "tree"]).json();
    let fresh = S3Store {
        local: Store::empty("cache"),
        name: s3.name.clone(),
        cfg: s3.cfg.clone(),
    };
    let line = fresh.run(&["groups"]).fails(3).to_owned();
    assert!(line.contains("refresh"), "{line}");
    let report = fresh.run(&["--json", "refresh"]).json();
    assert!(report["downloaded"].as_u64().unwrap() > 10, "{report}");
    assert_eq!(fresh.run(&["--json", "tree"]).json(), before);
    let notes = fresh
        .run(&["--json", "notes", "ns/prod/vm/100/2024-06-06T02:00:00Z"])
        .json();
    assert_eq!(notes["notes"], "snap notes");
    // Refreshing again over a filled cache gives the same answers.
    fresh.run(&["refresh"]).ok();
    assert_eq!(fresh.run(&["--json", "tree"]).json(), before);
}

#[test]
fn s3_init_makes_an_empty_datastore_once() {
    let Some(cfg) = config_or_skip("s3_init_makes_an_empty_datastore_once") else {
        return;
    };
    let s3 = S3Store::new(cfg);
    let doc = s3.run(&["--json", "init", "--skip-chunk-dirs"]).json();
    assert_eq!(doc["store"], s3.name.as_str());
    assert_eq!(doc["s3-bucket"], s3.cfg.bucket.as_str());
    assert!(s3.local.path.join(".lock").is_file());
    assert_eq!(s3.run(&["--json", "groups"]).json(), serde_json::json!([]));
    s3.run(&["ns", "create", "a"]).ok();

    // A second init, from another (empty) cache folder, is refused: the bucket holds it.
    let other = S3Store {
        local: Store::empty("cache"),
        name: s3.name.clone(),
        cfg: s3.cfg.clone(),
    };
    let bucket = s3.bucket();
    let line = other
        .run(&["init", "--skip-chunk-dirs"])
        .fails(6)
        .to_owned();
    assert!(line.contains("in use by host"), "{line}");
    assert_eq!(s3.bucket(), bucket);
    assert!(!other.local.path.exists());
}

#[test]
fn s3_bad_input_changes_neither_bucket_nor_cache() {
    let Some(cfg) = config_or_skip("s3_bad_input_changes_neither_bucket_nor_cache") else {
        return;
    };
    let s3 = demo(cfg);
    let bucket = s3.bucket();
    let cache = s3.local.contents();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["owner", "vm/999", "root@pam"],
            3,
            "group `vm/999` does not exist",
        ),
        (
            &["forget", "vm/100/2024-06-30T02:00:00Z"],
            3,
            "does not exist",
        ),
        (&["protect", "vm/100/2024-06-0"], 2, "2024-06-0"),
        (&["--ns", "../prod", "prune", "--keep-last", "1"], 2, ".."),
        (&["forget", "vm/100/2024-06-01T02:00:00Z"], 5, "protected"),
        (&["ns", "remove", "prod"], 6, "--delete-groups"),
    ];
    for (args, code, needle) in cases {
        let run = s3.run(args);
        let line = run.fails(*code);
        assert!(line.contains(needle), "{args:?}: {line}");
        assert_eq!(s3.bucket(), bucket, "{args:?} changed the bucket");
        assert_eq!(s3.local.contents(), cache, "{args:?} changed the cache");
    }

    // A name that is not in the bucket, and a bucket that does not exist.
    let run = s3.run(&["--name", "nosuchstore1", "owner", "vm/100", "root@pam"]);
    assert_eq!(run.code, 2, "--name given twice: {run:?}");
    let other = S3Store {
        local: Store::empty("cache"),
        name: "nosuchstore1".to_owned(),
        cfg: s3.cfg.clone(),
    };
    std::fs::create_dir_all(&other.local.path).unwrap();
    let run = other.run(&["owner", "vm/100", "root@pam"]);
    assert!(
        run.fails(3).contains("no datastore `nosuchstore1`"),
        "{run:?}"
    );
    let mut cmd = s3.local.cmd(&[]);
    cmd.env("AWS_ACCESS_KEY_ID", &s3.cfg.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &s3.cfg.secret_access_key)
        .args(["--name", &s3.name, "--s3-endpoint", &s3.cfg.endpoint])
        .args(["--s3-bucket", "no-such-bucket-keepsake", "--json"])
        .args(["owner", "vm/100", "root@pam", "--force"]);
    let run = common::run(&mut cmd);
    let message = run.fails_json(9);
    assert!(message.contains("no-such-bucket-keepsake"), "{message}");
    assert_eq!(s3.bucket(), bucket);
    assert_eq!(s3.local.contents(), cache);
}

/// A fake S3 endpoint that answers every request with 403 InvalidAccessKeyId, as a real server
/// does for wrong credentials (moto accepts any).
fn refusing_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InvalidAccessKeyId</Code>\
                        <Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>";
            let _ = write!(
                stream,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn wrong_s3_credentials_are_one_line_and_change_nothing() {
    let endpoint = refusing_server();
    let store = Store::fixture();
    let before = store.contents();
    for args in [
        &["groups"][..],
        &["owner", "vm/100", "backup@pbs", "--force"],
        &["forget", "vm/100/2024-06-06T15:06:40Z"],
        &["refresh"],
    ] {
        let mut cmd = store.cmd(&[]);
        cmd.env("AWS_ACCESS_KEY_ID", "wrong")
            .env("AWS_SECRET_ACCESS_KEY", "wrong")
            .args([
                "--s3-endpoint",
                &endpoint,
                "--s3-bucket",
                "backups",
                "--json",
            ])
            .args(args);
        let run = common::run(&mut cmd);
        let message = run.fails_json(9);
        assert!(
            message.contains("bucket `backups`") && message.contains("S3 error InvalidAccessKeyId"),
            "{args:?}: {message}"
        );
        assert_eq!(store.contents(), before, "{args:?} changed the cache");
    }

    // init against it makes nothing locally either.
    let fresh = Store::empty("store4");
    let mut cmd = fresh.cmd(&[]);
    cmd.env("AWS_ACCESS_KEY_ID", "wrong")
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .args(["--s3-endpoint", &endpoint, "--s3-bucket", "backups", "init"]);
    let run = common::run(&mut cmd);
    assert!(
        run.fails(9).contains("S3 error InvalidAccessKeyId"),
        "{run:?}"
    );
    assert!(!fresh.path.exists());

    // No credentials at all: a usage error before any request.
    let mut cmd = keepsake();
    cmd.arg("--store").arg(&store.path).args([
        "--s3-endpoint",
        &endpoint,
        "--s3-bucket",
        "backups",
        "groups",
    ]);
    let run = common::run(&mut cmd);
    assert!(run.fails(2).contains("AWS_ACCESS_KEY_ID"), "{run:?}");
}

#[test]
fn s3_fsck_finds_a_bucket_change_and_repair_refreshes_the_cache() {
    let Some(cfg) = config_or_skip("s3_fsck_finds_a_bucket_change_and_repair_refreshes_the_cache")
    else {
        return;
    };
    let s3 = demo(cfg);
    let doc = s3.run(&["--json", "fsck"]).json();
    assert_eq!(doc["cache-checked"], true, "{doc}");
    assert_eq!(doc["cache-differences"], serde_json::json!([]));
    assert_eq!(doc["clean"], true, "{doc}");

    // Another tool removes an object from the bucket: the cache still has it.
    s3.remote(&s3.name)
        .remove_file(&BackendPath::new("vm/100/notes").unwrap())
        .unwrap();
    let notes = s3.local.path.join("vm/100/notes");
    assert!(notes.is_file());
    let before = s3.local.contents();
    let run = s3.run(&["fsck"]);
    assert!(run.fails(1).contains("remain"), "{run:?}");
    assert!(
        run.stdout.contains("vm/100/notes (only in cache)"),
        "{}",
        run.stdout
    );
    assert_eq!(
        s3.local.contents(),
        before,
        "fsck without --repair changed the cache"
    );

    let run = s3.run(&["--json", "fsck", "--repair"]);
    assert_eq!(run.code, 0, "{run:#?}");
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["cache-differences"][0]["path"], "vm/100/notes");
    assert_eq!(doc["cache-differences"][0]["kind"], "only-in-cache");
    assert!(
        doc["repaired"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("refreshed the cache")),
        "{doc}"
    );
    assert_eq!(doc["clean"], true);
    assert!(!notes.exists());
    assert!(s3.run(&["fsck"]).ok().contains(": clean"));
    // The refreshed cache still opens and reads.
    assert_eq!(
        snapshot_names(&s3.run(&["--json", "snapshots", "vm/100"]).json()).len(),
        7
    );
}

/// `--multi-host` on an S3 datastore: [`S3Store::cmd`] with the flag.
impl S3Store {
    fn multi(&self, args: &[&str]) -> Run {
        let mut all = vec!["--multi-host"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Another "host" of the same datastore: its own (not yet made) cache folder.
    fn other_host(&self) -> Self {
        Self {
            local: Store::empty("cache"),
            name: self.name.clone(),
            cfg: self.cfg.clone(),
        }
    }
}

/// The `leases` of a `locks --multi-host --json` document (checking its shape on the way).
fn leases_of(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    assert!(doc["locks"].is_array(), "{doc}");
    doc["leases"].as_array().expect("a leases array").clone()
}

#[test]
fn s3_multi_host_two_hosts_share_a_datastore() {
    let Some(cfg) = config_or_skip("s3_multi_host_two_hosts_share_a_datastore") else {
        return;
    };
    // Host A makes the datastore (and PBS's .in-use marker, naming A) in multi-host mode.
    let a = S3Store::new(cfg);
    let path = a.local.path.clone();
    let mut cmd = a.cmd(&["--multi-host", "--json", "demo"]);
    cmd.arg(&path);
    common::run(&mut cmd).json();
    assert!(a.bucket().contains_key("vm/100/owner"));

    // A second `init` of it, even in multi-host mode, is refused and points at `refresh`.
    let c = a.other_host();
    let bucket = a.bucket();
    let line = c.multi(&["init"]).fails(6).to_owned();
    assert!(
        line.contains("in use by host") && line.contains("keepsake refresh"),
        "{line}"
    );
    assert_eq!(a.bucket(), bucket);
    assert!(!c.local.path.exists());

    // Host B joins: refresh fills its own cache, then it runs commands in multi-host mode.
    let b = a.other_host();
    b.multi(&["refresh"]).ok();
    let snap = "vm/100/2024-06-06T02:00:00Z";
    b.multi(&["protect", snap]).ok();
    b.multi(&["notes", "vm/100", "--set", "from b"]).ok();
    b.multi(&["notes", snap, "--set", "from b"]).ok();
    // A's cache still has the old manifest: its update is retried from the bucket's.
    a.multi(&["notes", snap, "--set", "from a"]).ok();
    a.multi(&["protect", "vm/100/2024-06-02T02:00:00Z"]).ok();
    a.multi(&["notes", "vm/100", "--set", "from a"]).ok();
    let bucket = a.bucket();
    assert!(bucket.contains_key(&format!("{snap}/.protected")));
    assert!(bucket.contains_key("vm/100/2024-06-02T02:00:00Z/.protected"));
    assert_eq!(bucket["vm/100/notes"], b"from a");
    b.multi(&["refresh"]).ok();
    let show = b.multi(&["--json", "show", snap]).json();
    assert_eq!(show["protected"], true, "{show}");
    let notes = b.multi(&["--json", "notes", snap]).json();
    assert_eq!(notes["notes"], "from a", "{notes}");

    // Every command has finished: no lease is held, and the released lease objects are gone
    // from the bucket (compare-and-swap deletes: the test server enforces them).
    let doc = a.multi(&["--json", "locks"]).json();
    assert_eq!(leases_of(&doc), Vec::<serde_json::Value>::new(), "{doc}");
    let doc = a.multi(&["--json", "locks", "--all"]).json();
    assert_eq!(leases_of(&doc), Vec::<serde_json::Value>::new(), "{doc}");
    assert_eq!(
        a.lease_objects(),
        Vec::<String>::new(),
        "released leases left in the bucket"
    );
    // With a target: its lock files, and no lease held.
    let doc = b.multi(&["--json", "locks", snap]).json();
    assert_eq!(doc["locks"].as_array().unwrap().len(), 2, "{doc}");
    assert_eq!(leases_of(&doc), Vec::<serde_json::Value>::new(), "{doc}");
    let text = a.multi(&["locks", snap]).ok().to_owned();
    assert!(text.contains("no leases in bucket"), "{text}");
    // Without --multi-host the document stays an array of lock files.
    assert!(a.run(&["--json", "locks", snap]).json().is_array());
}

#[test]
fn s3_multi_host_a_held_lease_blocks_and_is_listed() {
    use keepsake_datastore::lease::{LeaseLocker, LeaseSettings};
    use keepsake_hierarchy::{BackupDir, BackupNamespace};
    use keepsake_lock::{LockMode, LockTarget, Locker};

    let Some(cfg) = config_or_skip("s3_multi_host_a_held_lease_blocks_and_is_listed") else {
        return;
    };
    let s3 = S3Store::new(cfg);
    s3.multi(&["init", "--skip-chunk-dirs"]).ok();
    s3.multi(&["ns", "create", "a"]).ok();
    assert_eq!(
        leases_of(&s3.multi(&["--json", "locks"]).json()),
        Vec::<serde_json::Value>::new(),
        "no snapshot was locked yet"
    );
    let empty = s3.multi(&["locks"]).ok().to_owned();
    assert!(empty.contains("no leases in bucket"), "{empty}");

    // A snapshot, written in-process through a multi-host store on a third cache folder.
    let snap = "vm/100/2024-06-05T15:06:40Z";
    let dir: BackupDir = snap.parse().unwrap();
    let ns = BackupNamespace::root();
    {
        let writer_cache = tempfile::tempdir().unwrap();
        let remote = s3.remote(&s3.name);
        let local = keepsake_backend::LocalBackend::open(
            writer_cache.path(),
            keepsake_backend::SyncLevel::None,
        )
        .unwrap();
        let cached =
            std::sync::Arc::new(keepsake_backend::CachedBackend::new(local, remote.clone()));
        std::fs::create_dir_all(writer_cache.path().join(".chunks")).unwrap();
        let store = keepsake_datastore::DataStore::builder(&s3.name, writer_cache.path())
            .backend(cached)
            .namespace_markers(true)
            .multi_host(remote, LeaseSettings::default())
            .open()
            .unwrap();
        let owner = "root@pam".parse().unwrap();
        let mut writer = store
            .group(&ns, dir.group())
            .start_backup(&owner, dir.time())
            .unwrap();
        writer
            .add_blob("conf.blob", b"config", Encryption::None)
            .unwrap();
        writer.finish().unwrap();
    }
    s3.multi(&["refresh"]).ok();

    // The test holds the snapshot's lease, as another host would.
    let locker = LeaseLocker::new(s3.remote(&s3.name), LeaseSettings::default()).unwrap();
    let guard = locker
        .lock(
            &LockTarget::snapshot(&ns, &dir),
            LockMode::Exclusive,
            std::time::Duration::ZERO,
        )
        .unwrap();
    let bucket = s3.bucket();
    let line = s3.multi(&["protect", snap]).fails(4).to_owned();
    let pid = std::process::id();
    assert!(
        line.contains("is locked")
            && line.contains(&format!("pid {pid}"))
            && line.contains("on host"),
        "{line}"
    );
    assert_eq!(s3.bucket(), bucket, "a refused protect changed the bucket");

    let doc = s3.multi(&["--json", "locks", snap]).json();
    let leases = leases_of(&doc);
    let held: Vec<&serde_json::Value> = leases
        .iter()
        .filter(|l| !l["holders"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(held.len(), 1, "{doc}");
    let holder = &held[0]["holders"][0];
    assert_eq!(holder["pid"], pid, "{holder}");
    assert_eq!(holder["mode"], "exclusive");
    assert_eq!(holder["expired"], false);
    let left = holder["seconds-left"].as_i64().unwrap();
    assert!((1..=30).contains(&left), "{holder}");
    let expires = holder["expires"].as_str().unwrap();
    assert!(
        expires.ends_with('Z') && expires.parse::<jiff::Timestamp>().is_ok(),
        "{expires}"
    );
    assert_eq!(holder["epoch"], held[0]["epoch"]);
    assert!(holder["host"].as_str().is_some_and(|h| !h.is_empty()));
    let text = s3.multi(&["locks", snap]).ok().to_owned();
    assert!(
        text.contains(&format!("pid {pid} on ")) && text.contains("s left)"),
        "{text}"
    );

    // Released: protect goes through.
    drop(guard);
    s3.multi(&["protect", snap]).ok();
    assert!(s3.bucket().contains_key(&format!("{snap}/.protected")));
}

#[test]
fn multi_host_options_outside_s3_are_usage_errors() {
    let store = Store::fixture();
    let before = store.contents();
    let run = store.run(&["--multi-host", "groups"]);
    assert!(run.fails(2).contains("--s3-bucket"), "{run:?}");
    let mut cmd = store.cmd(&["--json", "groups"]);
    cmd.env("KEEPSAKE_MULTI_HOST", "1");
    let message = common::run(&mut cmd).fails_json(2);
    assert!(message.contains("--multi-host"), "{message}");
    // A false value in the environment is no multi-host mode.
    let mut cmd = store.cmd(&["--json", "groups"]);
    cmd.env("KEEPSAKE_MULTI_HOST", "0");
    common::run(&mut cmd).json();

    let s3 = |args: &[&str]| {
        let mut cmd = store.cmd(&[]);
        cmd.env("AWS_ACCESS_KEY_ID", "key")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .args([
                "--s3-endpoint",
                "http://127.0.0.1:9",
                "--s3-bucket",
                "backups",
            ])
            .args(args);
        common::run(&mut cmd)
    };
    for (args, needle) in [
        (
            &["--multi-host", "--lease-secs", "0", "groups"][..],
            "--lease-secs 0",
        ),
        (&["--multi-host", "--lease-secs", "4", "groups"], "twice"),
        (&["--multi-host", "--lease-secs", "x", "groups"], "x"),
        (&["--lease-secs", "60", "groups"], "--multi-host"),
    ] {
        let run = s3(args);
        assert!(run.fails(2).contains(needle), "{args:?}: {run:?}");
    }
    assert_eq!(store.contents(), before);
}

/// A fake S3 endpoint that ignores the conditions of conditional writes (as some S3-compatible
/// servers do): every PUT succeeds. GETs of an `.in-use` marker find one only for datastores whose
/// name starts with `joined`; listings are empty.
fn lax_server() -> String {
    fn header_end(request: &[u8]) -> Option<usize> {
        request
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            let end = loop {
                if let Some(end) = header_end(&request) {
                    break Some(end);
                }
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            };
            let Some(end) = end else { continue };
            let head = String::from_utf8_lossy(&request[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            while request.len() < end + length {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let line = head.lines().next().unwrap_or_default().to_owned();
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default();
            let target = parts.next().unwrap_or_default();
            let (status, body) = match method {
                "PUT" => ("200 OK", String::new()),
                "DELETE" => ("204 No Content", String::new()),
                "GET" if target.contains("list-type") => (
                    "200 OK",
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult \
                     xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>backups</Name>\
                     <KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>\
                     </ListBucketResult>"
                        .to_owned(),
                ),
                "GET" if target.contains("/joined") && target.ends_with(".in-use") => {
                    ("200 OK", "{\"hostname\":\"elsewhere\"}".to_owned())
                }
                _ => (
                    "404 Not Found",
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>\
                     <Message>The specified key does not exist.</Message></Error>"
                        .to_owned(),
                ),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nETag: \"0123456789abcdef\"\r\n\
                 Last-Modified: Wed, 05 Jun 2024 15:06:40 GMT\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn multi_host_is_refused_where_conditional_writes_are_ignored() {
    let endpoint = lax_server();
    let cmd = |store: &Store, name: &str, args: &[&str]| {
        let mut cmd = store.cmd(&[]);
        cmd.env("AWS_ACCESS_KEY_ID", "key")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .args([
                "--name",
                name,
                "--s3-endpoint",
                &endpoint,
                "--s3-bucket",
                "backups",
            ])
            .args(args);
        common::run(&mut cmd)
    };

    // init: refused before the cache folder is made.
    let fresh = Store::empty("cache");
    let run = cmd(
        &fresh,
        "newstore",
        &["--multi-host", "init", "--skip-chunk-dirs"],
    );
    let line = run.fails(1);
    assert!(
        line.contains("--multi-host")
            && line.contains("If-None-Match")
            && line.contains("not enforced"),
        "{line}"
    );
    assert!(!fresh.path.exists());

    // open: a joined host's filled cache; multi-host mode is refused, single-host mode opens.
    let joined = Store::empty("cache");
    std::fs::create_dir_all(joined.path.join(".chunks")).unwrap();
    std::fs::write(joined.path.join(".lock"), b"").unwrap();
    let before = joined.contents();
    let run = cmd(
        &joined,
        "joinedstore",
        &["--multi-host", "--json", "groups"],
    );
    let message = run.fails_json(1);
    assert!(
        message.contains("cannot open datastore `joinedstore`")
            && message.contains("multi-host mode refused")
            && message.contains("create-only writes (If-None-Match: *) are not enforced"),
        "{message}"
    );
    assert_eq!(joined.contents(), before);
    let run = cmd(&joined, "joinedstore", &["--json", "groups"]);
    assert_eq!(run.json(), serde_json::json!([]));
}

#[test]
fn s3_cat_and_read_data_fetch_chunks_the_cache_only_marks() {
    let Some(cfg) = config_or_skip("s3_cat_and_read_data_fetch_chunks") else {
        return;
    };
    let s3 = demo(cfg);
    let snapshot = "vm/100/2024-06-01T02:00:00Z";
    let out = tempfile::tempdir().unwrap();
    let first = out.path().join("first.raw");
    s3.run(&[
        "cat",
        snapshot,
        "drive-scsi0.img.fidx",
        "-o",
        first.to_str().unwrap(),
    ])
    .ok();
    // The cache keeps PBS's empty markers in place of its chunks: both commands fetch them.
    let mut evicted = 0;
    for (path, bytes) in common::tree_contents(&s3.local.path.join(".chunks")) {
        if bytes.is_some() {
            std::fs::write(s3.local.path.join(".chunks").join(path), b"").unwrap();
            evicted += 1;
        }
    }
    assert!(evicted > 0);
    let doc = s3.run(&["--json", "verify", "--read-data"]).json();
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["content"]["verified"].as_u64(), Some(evicted));
    let second = out.path().join("second.raw");
    s3.run(&[
        "cat",
        snapshot,
        "drive-scsi0.img.fidx",
        "-o",
        second.to_str().unwrap(),
    ])
    .ok();
    let show = s3.run(&["--json", "show", snapshot]).json();
    let size = show["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["filename"] == "drive-scsi0.img.fidx")
        .unwrap()["size"]
        .as_u64()
        .unwrap();
    assert_eq!(std::fs::metadata(&first).unwrap().len(), size);
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );
}

#[test]
fn s3_a_missing_bucket_is_one_line_without_the_xml() {
    let Some(mut cfg) = config_or_skip("s3_a_missing_bucket_is_one_line_without_the_xml") else {
        return;
    };
    cfg.bucket = "keepsake-no-such-bucket".to_owned();
    let s3 = S3Store::new(cfg);
    for command in ["init", "refresh"] {
        let run = s3.run(&[command]);
        let line = run.fails(9);
        assert!(
            line.contains("S3 error NoSuchBucket: The specified bucket does not exist (check --s3-bucket and --s3-endpoint)"),
            "{command}: {line}"
        );
        assert!(!line.contains('<'), "{command}: {line}");
    }
}

#[test]
fn s3_gc_sweeps_the_bucket_and_status_counts_its_chunks() {
    let Some(cfg) = config_or_skip("s3_gc_sweeps_the_bucket") else {
        return;
    };
    let s3 = demo(cfg);
    // The cache holds only PBS's empty markers: GC and status must judge from the bucket.
    for (path, bytes) in common::tree_contents(&s3.local.path.join(".chunks")) {
        if bytes.is_some() {
            std::fs::write(s3.local.path.join(".chunks").join(path), b"").unwrap();
        }
    }
    let dry = s3.run(&["--json", "gc", "--dry-run"]).json();
    assert_eq!(dry["dry-run"], true, "{dry}");
    assert_eq!(dry["bucket"]["requests"]["delete"], 0, "{dry}");
    assert_eq!(dry["bucket"]["requests"]["put"], 0, "{dry}");
    let doc = s3.run(&["--json", "gc"]).json();
    println!("{doc}");
    assert_eq!(doc["missing-chunks"], 0, "{doc}");
    // Everything is younger than the cutoff: nothing goes.
    assert_eq!(doc["status"]["removed-chunks"], 0, "{doc}");
    assert!(
        doc["bucket"]["chunk-objects"].as_u64().unwrap() > 0,
        "{doc}"
    );
    assert!(
        doc["bucket"]["requests"]["list"].as_u64().unwrap() >= 2,
        "{doc}"
    );
    let status = s3.run(&["--json", "status"]).json();
    assert!(status["chunk-bytes"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(
        status["chunk-count"],
        doc["status"]["disk-chunks"].as_u64().unwrap()
            + doc["status"]["pending-chunks"].as_u64().unwrap(),
        "{status} {doc}"
    );
    assert_eq!(status["last-gc"]["removed-chunks"], 0, "{status}");
    let verify = s3.run(&["--json", "verify", "--read-data"]).json();
    assert_eq!(verify["ok"], true, "{verify}");
    let text = s3.run(&["gc"]).ok().to_owned();
    assert!(text.contains("bucket:"), "{text}");
}
