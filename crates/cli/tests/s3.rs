//! The commands on S3 datastores: on the moto server `cargo xtask test` starts (skipped, with a
//! printed line, without one), and against a server that refuses the credentials.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

use common::{Run, Store, keepsake, snapshot_names};
use keepsake_backend::{Backend, BackendPath, EntryKind, ObjectBackend, RetrySettings, S3Config};
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
        .fails(1)
        .to_owned();
    assert!(line.contains("merging was not requested"), "{line}");
    assert_eq!(s3.bucket(), bucket);

    // Verify reads every manifest, blob and index and asks the bucket for every chunk.
    let doc = s3.run(&["--json", "verify"]).json();
    assert_eq!(doc["ok"], true, "{doc}");
    assert!(doc["verified"].as_u64().unwrap() >= 6, "{doc}");
    let manifest = "ns/prod/vm/100/2024-06-06T02:00:00Z/index.json.blob";
    let before = s3.bucket()[manifest].clone();
    s3.run(&["--ns", "prod", "verify", "--record", "vm/100"])
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
    let line = fresh.run(&["groups"]).fails(1).to_owned();
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
        .fails(1)
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
            1,
            "group `vm/999` does not exist",
        ),
        (
            &["forget", "vm/100/2024-06-30T02:00:00Z"],
            1,
            "does not exist",
        ),
        (&["protect", "vm/100/2024-06-0"], 2, "2024-06-0"),
        (&["--ns", "../prod", "prune", "--keep-last", "1"], 2, ".."),
        (&["forget", "vm/100/2024-06-01T02:00:00Z"], 1, "protected"),
        (&["ns", "remove", "prod"], 1, "--delete-groups"),
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
        run.fails(1).contains("no datastore `nosuchstore1`"),
        "{run:?}"
    );
    let mut cmd = s3.local.cmd(&[]);
    cmd.env("AWS_ACCESS_KEY_ID", &s3.cfg.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &s3.cfg.secret_access_key)
        .args(["--name", &s3.name, "--s3-endpoint", &s3.cfg.endpoint])
        .args(["--s3-bucket", "no-such-bucket-keepsake", "--json"])
        .args(["owner", "vm/100", "root@pam", "--force"]);
    let run = common::run(&mut cmd);
    let message = run.fails_json(1);
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
        let message = run.fails_json(1);
        assert!(
            message.contains("bucket `backups`") && message.contains("403"),
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
    assert!(run.fails(1).contains("403"), "{run:?}");
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
