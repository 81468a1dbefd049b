//! The command line: global options and every command, with an example in each `--help`.

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use keepsake_backend::SyncLevel;
use keepsake_datastore::prune::KeepWithin;
use keepsake_hierarchy::{Authid, BackupNamespace, GroupFilter};
use keepsake_lock::LockScheme;

use crate::target::{GroupArg, SnapshotArg, TargetArg};

/// keepsake: inspect and maintain Proxmox Backup Server datastores, local or on S3.
#[derive(Debug, Parser)]
#[command(
    name = "keepsake",
    version,
    about,
    long_about = "keepsake: inspect and maintain Proxmox Backup Server (PBS) datastores, on a local \
                  filesystem or on S3-compatible object storage with a local cache.\n\n\
                  Objects are named as PBS names them: a namespace `prod/site-a`, a group `vm/100`, a \
                  snapshot `vm/100/2024-06-05T15:06:40Z` (or with its namespace path, \
                  `ns/prod/vm/100/2024-06-05T15:06:40Z`). Wherever a snapshot is taken, \
                  `vm/100/latest` names the group's newest finished snapshot.",
    after_help = "Examples:\n  \
                  keepsake demo /tmp/demo\n  \
                  keepsake --store /tmp/demo groups\n  \
                  keepsake --store /tmp/demo --ns prod snapshots vm/101 --json\n  \
                  AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… keepsake --store /var/cache/store1 \\\n      \
                  --s3-endpoint https://s3.example.com --s3-bucket backups refresh\n  \
                  keepsake --store /var/cache/store1 --s3-endpoint https://s3.example.com \\\n      \
                  --s3-bucket backups --multi-host locks\n\n\
                  Exit codes (with --json, the error's `kind`): 0 success; 1 failed (a check \
                  found a problem, a partial success, or another failure); 2 usage; \
                  3 not-found; 4 locked; 5 protected; 6 refused; 7 invalid (corrupt data in the \
                  datastore); 8 io; 9 s3."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes (before or after the command name). They have their own heading
/// in every `--help`, apart from the options of the command.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub(crate) struct GlobalArgs {
    /// The datastore folder (for an S3 datastore: its local cache folder).
    #[arg(long, global = true, env = "KEEPSAKE_STORE", value_name = "PATH")]
    pub(crate) store: Option<PathBuf>,

    /// The datastore name (lock folder, S3 key prefix); default: the name PBS's datastore.cfg
    /// gives this folder, else the folder's own name (symbolic links resolved).
    #[arg(long, global = true, env = "KEEPSAKE_STORE_NAME", value_name = "NAME")]
    pub(crate) name: Option<String>,

    /// A datastore PBS knows, by its name in datastore.cfg: its path and name come from there.
    #[arg(
        long,
        global = true,
        env = "KEEPSAKE_DATASTORE",
        value_name = "NAME",
        conflicts_with_all = ["store", "name"]
    )]
    pub(crate) datastore: Option<String>,

    /// PBS's configuration folder (datastore.cfg: datastore names, paths, maintenance modes).
    #[arg(
        long,
        global = true,
        env = "KEEPSAKE_PBS_CONFIG_DIR",
        value_name = "DIR",
        default_value = "/etc/proxmox-backup"
    )]
    pub(crate) pbs_config_dir: PathBuf,

    /// PBS's runtime folder (lock files under `locks/`, the active-operations counters).
    #[arg(
        long,
        global = true,
        env = "KEEPSAKE_PBS_RUN_DIR",
        value_name = "DIR",
        default_value = "/run/proxmox-backup"
    )]
    pub(crate) pbs_run_dir: PathBuf,

    /// S3 endpoint URL (default: AWS for the region); credentials come from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY and optionally AWS_SESSION_TOKEN.
    #[arg(long, global = true, value_name = "URL", requires = "s3_bucket")]
    pub(crate) s3_endpoint: Option<String>,

    /// S3 bucket: makes the datastore an S3 datastore with `--store` as its local cache.
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) s3_bucket: Option<String>,

    /// S3 region (default: AWS_REGION, AWS_DEFAULT_REGION or us-east-1).
    #[arg(long, global = true, value_name = "REGION", requires = "s3_bucket")]
    pub(crate) s3_region: Option<String>,

    /// S3 datastores only: several hosts, each with its own cache folder (--store), share the
    /// bucket. Locks become leases in the bucket and metadata writes are compare-and-swap; opening
    /// first checks that the endpoint enforces conditional writes. Every host must pass it (see
    /// docs/ARCHITECTURE.md, "Several hosts on one bucket").
    #[arg(
        long,
        global = true,
        env = "KEEPSAKE_MULTI_HOST",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub(crate) multi_host: bool,

    /// With --multi-host: how long a lease lasts without renewal, in seconds (default 30; more
    /// than twice the 2 s clock-skew bound). Holders renew every third of it; a crashed host's
    /// leases are broken this long (plus the skew bound) after its last renewal.
    #[arg(long, global = true, value_name = "SECS")]
    pub(crate) lease_secs: Option<u64>,

    /// Folder for lock files (default: PBS's `<pbs run dir>/locks` if it exists, to exclude a PBS
    /// server on this host; else `<temp dir>/keepsake-locks-<uid>`). It must not be, hold or lie
    /// inside the datastore folder.
    #[arg(long, global = true, env = "KEEPSAKE_LOCK_ROOT", value_name = "DIR")]
    pub(crate) lock_root: Option<PathBuf>,

    /// Which PBS locks to take: `files` (PBS 4's lock files), `dirs` (PBS 3's folder locks) or
    /// `both` (default with PBS's lock root, so that PBS 3 and PBS 4 are both excluded; else
    /// `files`).
    #[arg(
        long,
        global = true,
        env = "KEEPSAKE_LOCK_SCHEME",
        value_name = "SCHEME"
    )]
    pub(crate) lock_scheme: Option<LockScheme>,

    /// Wait up to SECS for each busy lock (a group or snapshot another process has locked), as
    /// borg's --lock-wait; then fail as without it (exit code 4, `locked`). Default: fail at
    /// once, as PBS does. `fsck --repair` waits too, and `gc` for a running backup.
    #[arg(
        long,
        global = true,
        env = "KEEPSAKE_LOCK_WAIT",
        value_name = "SECS",
        value_parser = clap::value_parser!(u64).range(0..=604_800)
    )]
    pub(crate) lock_wait: Option<u64>,

    /// How much a local write forces to disk: `filesystem` (PBS's default: durable when the
    /// command returns), `file` or `none` (PBS's `sync-level` tuning option).
    #[arg(
        long,
        global = true,
        value_name = "LEVEL",
        default_value = "filesystem"
    )]
    pub(crate) sync_level: SyncLevel,

    /// Machine output: one JSON document on stdout (errors as {"error": {"kind", "message"}}); no
    /// progress bars.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// The namespace to work in (`a/b`, `/` for the root; default: the root namespace). The
    /// names given to `ns create`, `ns remove` and `ns move` are below it.
    #[arg(long, global = true, value_name = "NS", value_parser = namespace)]
    pub(crate) ns: Option<BackupNamespace>,

    /// A PBS key file (as `proxmox-backup-client key create` writes it, or `keepsake key
    /// create`): the key of encrypted archives and manifest signatures. A password-protected
    /// key's password comes from KEEPSAKE_KEY_PASSWORD, else from a prompt on the terminal.
    #[arg(long, global = true, env = "KEEPSAKE_KEYFILE", value_name = "FILE")]
    pub(crate) keyfile: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a new datastore at --store (with --s3-bucket: in the bucket, with the cache at --store).
    #[command(after_help = "Examples:\n  \
        keepsake --store /srv/store1 init\n  \
        keepsake --store /var/cache/store1 --s3-endpoint https://s3.example.com --s3-bucket backups init")]
    Init {
        /// Do not make the 65,536 chunk prefix folders (for stores that never hold chunks; chunk
        /// writes make the folder they need).
        #[arg(long)]
        skip_chunk_dirs: bool,
    },

    /// Create a sample datastore (namespaces, groups, owners, finished, unfinished and protected
    /// snapshots, real blobs, indexes and chunks) and print its tree.
    #[command(
        after_help = "Example:\n  keepsake demo /tmp/demo\n  keepsake --store /tmp/demo tree"
    )]
    Demo {
        /// The folder to create the datastore in (must be missing or empty).
        dir: PathBuf,
    },

    /// Encryption key files (PBS's format, for --keyfile).
    #[command(
        subcommand,
        after_help = "Examples:\n  \
            KEEPSAKE_KEY_PASSWORD=… keepsake key create /root/backup.key\n  \
            keepsake key create /root/backup.key --kdf none"
    )]
    Key(KeyCommand),

    /// Print the datastore as a tree: namespaces, groups, owners, snapshots.
    #[command(
        after_help = "Example:\n  keepsake --store /tmp/demo tree\n  keepsake --store /tmp/demo --ns prod tree"
    )]
    Tree,

    /// Namespaces: list, create, remove, move.
    #[command(
        subcommand,
        after_help = "Examples:\n  keepsake --store /tmp/demo ns list\n  keepsake --store /tmp/demo ns create staging"
    )]
    Ns(NsCommand),

    /// List the groups of a namespace: type, id, owner, snapshot count, last backup.
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo groups\n  \
        keepsake --store /tmp/demo groups --recursive --filter type:vm --json")]
    Groups {
        /// PBS group filters: `type:vm`, `group:vm/100`, `regex:^vm/1`, each optionally prefixed
        /// with `include:` or `exclude:`.
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<GroupFilter>,
        /// Also list the groups of every namespace below.
        #[arg(long)]
        recursive: bool,
    },

    /// List snapshots (of one group, or of every group in the namespace): time, finished,
    /// protected, files, size.
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo snapshots\n  \
        keepsake --store /tmp/demo snapshots vm/100 --json\n  \
        keepsake --store /tmp/demo snapshots --recursive --older-than 30d")]
    Snapshots {
        /// The group (`vm/100`); default: every group of the namespace.
        group: Option<GroupArg>,
        /// Also list the snapshots of every namespace below.
        #[arg(long, conflicts_with = "group")]
        recursive: bool,
        /// Only snapshots whose backup time is older than this (`30d`, `2w`, `36h`, `P7D`).
        #[arg(long, value_name = "AGE")]
        older_than: Option<Age>,
        /// Only snapshots whose backup time is newer than this.
        #[arg(long, value_name = "AGE")]
        newer_than: Option<Age>,
    },

    /// Show one snapshot: manifest, files, notes, verify state.
    #[command(
        after_help = "Example:\n  keepsake --store /tmp/demo show vm/100/2024-06-02T02:00:00Z"
    )]
    Show {
        /// The snapshot (`vm/100/2024-06-05T15:06:40Z`, or `vm/100/latest`).
        snapshot: SnapshotArg,
    },

    /// Print a group's owner, or set it.
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo owner vm/100\n  \
        keepsake --store /tmp/demo owner vm/100 backup@pbs --force")]
    Owner {
        /// The group (`vm/100`).
        group: GroupArg,
        /// The new owner (`user@realm` or `user@realm!token`).
        owner: Option<Authid>,
        /// Replace an owner that is set already.
        #[arg(long, requires = "owner")]
        force: bool,
    },

    /// Print the notes of a group or snapshot, or set them.
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo notes vm/100\n  \
        keepsake --store /tmp/demo notes vm/100/2024-06-02T02:00:00Z --set 'before the upgrade'\n  \
        echo 'from stdin' | keepsake --store /tmp/demo notes vm/100 --set -")]
    Notes {
        /// A group (`vm/100`) or a snapshot (`vm/100/2024-06-05T15:06:40Z`).
        target: TargetArg,
        /// Replace the notes with TEXT (`-` reads them from stdin).
        #[arg(long, value_name = "TEXT", conflicts_with = "clear")]
        set: Option<String>,
        /// Remove the notes.
        #[arg(long)]
        clear: bool,
    },

    /// Protect a snapshot: prune and forget keep it.
    #[command(
        after_help = "Example:\n  keepsake --store /tmp/demo protect vm/100/2024-06-02T02:00:00Z"
    )]
    Protect {
        /// The snapshot.
        snapshot: SnapshotArg,
    },

    /// Remove a snapshot's protection.
    #[command(
        after_help = "Example:\n  keepsake --store /tmp/demo unprotect vm/100/2024-06-01T02:00:00Z"
    )]
    Unprotect {
        /// The snapshot.
        snapshot: SnapshotArg,
    },

    /// Destroy a snapshot, or a whole group; protected snapshots are refused (and kept).
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo forget vm/100/2024-06-02T02:00:00Z\n  \
        keepsake --store /tmp/demo --ns prod forget vm/101 --dry-run")]
    Forget {
        /// A group (`vm/100`) or a snapshot (`vm/100/2024-06-05T15:06:40Z`).
        target: TargetArg,
        /// Only say what would be removed and what protection keeps; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },

    /// Move a group (or one snapshot) to another namespace; with --merge into an existing group
    /// there (same owner, only newer snapshots, as PBS requires).
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo move host/web --to-ns prod\n  \
        keepsake --store /tmp/demo --ns prod move vm/101 --to-ns prod/site-a --merge")]
    Move {
        /// A group (`vm/100`) or a snapshot (`vm/100/2024-06-05T15:06:40Z`).
        target: TargetArg,
        /// The namespace to move it to (must exist; `/` for the root).
        #[arg(long, value_name = "NS", value_parser = namespace)]
        to_ns: BackupNamespace,
        /// Merge into a group that exists at the target.
        #[arg(long)]
        merge: bool,
    },

    /// Check snapshots: manifests, files, sizes, checksums, blobs, indexes, and that referenced
    /// chunks exist; with --read-data also every chunk's content. Exit code 1 when something is
    /// wrong.
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo verify\n  \
        keepsake --store /tmp/demo verify vm/100 --json\n  \
        keepsake --store /tmp/demo --ns prod verify --read-data --record")]
    Verify {
        /// A group or a snapshot; default: every snapshot below --ns (the whole datastore).
        target: Option<TargetArg>,
        /// Read every referenced chunk and check its content (CRC, decryption with the key,
        /// size, digest), each chunk once, on all cores; a corrupt chunk is renamed
        /// `<digest>.<n>.bad` as PBS does, and every snapshot using it fails.
        #[arg(long, conflicts_with = "skip_chunks")]
        read_data: bool,
        /// Record each outcome in the snapshot's manifest (`verify_state`), as PBS's verify
        /// job; needs --read-data.
        #[arg(long)]
        record: bool,
        /// Skip snapshots whose last recorded verify is ok (PBS's ignore-verified); failed
        /// ones are checked again.
        #[arg(long)]
        ignore_verified: bool,
        /// With --ignore-verified: check again those recorded ok more than DAYS days ago.
        #[arg(long, value_name = "DAYS", requires = "ignore_verified")]
        outdated_after: Option<u32>,
        /// Do not check that referenced chunks exist.
        #[arg(long)]
        skip_chunks: bool,
    },

    /// Write a file of a snapshot: a blob decoded, a fixed index (`.fidx`) as the raw image, a
    /// dynamic index (`.didx`) as the raw stream; every chunk is checked as it is read.
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo cat vm/100/2024-06-02T02:00:00Z drive-scsi0.img.fidx -o disk.raw\n  \
        keepsake --store /tmp/demo cat vm/100/2024-06-02T02:00:00Z client.log.blob")]
    Cat {
        /// The snapshot (`vm/100/2024-06-05T15:06:40Z`).
        snapshot: SnapshotArg,
        /// The file, as the manifest names it (`drive-scsi0.img.fidx`, `root.pxar.didx`,
        /// `client.log.blob`).
        file: String,
        /// Write to this file (created or replaced once complete) instead of standard output.
        #[arg(short, long, value_name = "OUT")]
        output: Option<std::path::PathBuf>,
    },

    /// Apply a retention policy: print every snapshot with its mark and reason, and remove the
    /// ones marked `remove` (unless --dry-run).
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo prune vm/100 --keep-last 2 --dry-run\n  \
        keepsake --store /tmp/demo prune --recursive --filter type:vm --keep-daily 7 --keep-weekly 4")]
    Prune(PruneArgs),

    /// Show lock files and who holds them (of a group, a snapshot, or every lock file of the
    /// store); with --multi-host also the leases in the bucket: epoch, holders (host, pid, mode,
    /// command) and when each expires.
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo locks\n  \
        keepsake --store /tmp/demo locks vm/100 --json\n  \
        keepsake --store /var/cache/store1 --s3-endpoint https://s3.example.com --s3-bucket backups \\\n      \
        --multi-host locks vm/100")]
    Locks {
        /// A group (`vm/100`) or a snapshot (`vm/100/2024-06-05T15:06:40Z`).
        target: Option<TargetArg>,
        /// With --multi-host: also leases nobody holds now (released or expired), not only the
        /// held ones.
        #[arg(long)]
        all: bool,
    },

    /// Find what crashes and other tools leave behind, and with --repair mend it; exit code 1 while
    /// something remains.
    ///
    /// Mended by --repair: temporary files of interrupted writes, unused lock files, empty groups,
    /// interrupted operations, differences between the S3 bucket and the local cache (a refresh).
    /// Only reported: groups without owner, unfinished snapshots older than
    /// --unfinished-older-than. fsck never removes a snapshot, a manifest or a protection marker.
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo fsck\n  \
        keepsake --store /tmp/demo fsck --unfinished-older-than 7d --json\n  \
        keepsake --store /tmp/demo fsck --repair\n\n\
        Exit codes: 0 nothing found (or everything found was mended), 1 something remains, \
        2 usage errors, others as `keepsake --help` lists them.\n\
        Unused lock files (PBS 4 scheme) are listed and --repair removes them, but they do not \
        make the exit code 1: every lock taken leaves one, as with PBS.")]
    Fsck {
        /// Mend what can be mended (each repair takes the lock of what it changes, without
        /// waiting: what is in use is left and reported).
        #[arg(long)]
        repair: bool,
        /// Also report unfinished snapshots (no manifest) whose backup time is older than this:
        /// `7d`, `36h`, `2w`, `1y 6mo` (jiff's friendly format, `mo` for months) or ISO 8601
        /// (`P7D`). Report only: they are never removed.
        #[arg(long, value_name = "DURATION")]
        unfinished_older_than: Option<Age>,
    },

    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) on stdout.
    #[command(after_help = "Examples:\n  \
        keepsake completions bash > /etc/bash_completion.d/keepsake\n  \
        keepsake completions zsh > \"${fpath[1]}/_keepsake\"\n  \
        keepsake completions fish > ~/.config/fish/completions/keepsake.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },

    /// Write the man pages (`DIR/man`) and the bash, zsh and fish completion scripts
    /// (`DIR/completions`), as shipped in crates/cli/doc.
    #[command(hide = true, after_help = "Example:\n  keepsake docs crates/cli/doc")]
    Docs {
        /// The folder to write into (made if missing; files there are replaced).
        dir: PathBuf,
    },

    /// Rebuild the local cache of an S3 datastore from the bucket (PBS's s3-refresh).
    #[command(after_help = "Example:\n  \
        keepsake --store /var/cache/store1 --s3-endpoint https://s3.example.com --s3-bucket backups refresh")]
    Refresh,

    /// Garbage collection, as PBS's: remove the chunks no index references that are older than
    /// the cutoff (24 h 5 min before the run; earlier while a backup of this process runs), and
    /// record the result in `.gc-status`. Refused while a backup of another process (PBS's or
    /// keepsake's) holds the datastore's `.lock`.
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo gc --dry-run\n  \
        keepsake --store /tmp/demo gc --json\n\n\
        The operator's cycle: prune, then gc, then verify --read-data.")]
    Gc {
        /// Count what would be removed; change nothing (the datastore is opened read-only).
        #[arg(long)]
        dry_run: bool,
    },

    /// Copy namespaces, groups and snapshots from another datastore (local or S3) into this one
    /// (local or S3), as PBS's pull sync job: only snapshots newer than the target group's last,
    /// only the chunks the target lacks; a snapshot is visible in the target once complete, so
    /// an interrupted sync is completed by the next run.
    #[command(after_help = crate::commands::sync::EXAMPLES)]
    Sync(crate::commands::sync::SyncArgs),

    /// The datastore's usage: filesystem used and free, chunks stored, the archive bytes the
    /// indexes describe, the deduplication factor, and the last garbage collection's result.
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo status\n  \
        keepsake --store /tmp/demo status --json")]
    Status,
}

/// An age given on the command line (`7d`, `36h`, `2w`, `P7D`): a span back from now, in UTC
/// calendar units (a day is 24 hours, a month as long as the months it crosses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Age {
    /// As given.
    pub(crate) text: String,
    /// Its length, back from the time it was parsed.
    pub(crate) duration: Duration,
}

impl FromStr for Age {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let span: jiff::Span = s
            .trim()
            .parse()
            .map_err(|e| format!("not a duration (try `7d`, `36h`, `2w`): {e}"))?;
        if span.is_negative() {
            return Err("the duration must not be negative".to_owned());
        }
        let now = jiff::Timestamp::now().to_zoned_datetime(jiff::tz::TimeZone::UTC);
        let then = now
            .checked_sub(span)
            .map_err(|e| format!("duration too long: {e}"))?;
        let duration = Duration::try_from(now.timestamp().duration_since(then.timestamp()))
            .map_err(|e| format!("duration out of range: {e}"))?;
        Ok(Self {
            text: s.trim().to_owned(),
            duration,
        })
    }
}

/// `keepsake ns …`.
#[derive(Debug, Subcommand)]
pub(crate) enum NsCommand {
    /// List the namespaces below --ns (itself included).
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo ns list\n  \
        keepsake --store /tmp/demo --ns prod ns list --max-depth 1 --json")]
    List {
        /// How many levels below --ns to list (0: only --ns itself).
        #[arg(long, value_name = "N")]
        max_depth: Option<usize>,
    },

    /// Create a namespace (`a/b`, below --ns).
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo ns create staging\n  \
        keepsake --store /tmp/demo ns create staging/eu/site-1 --parents\n  \
        keepsake --store /tmp/demo --ns prod ns create site-b    # makes prod/site-b")]
    Create {
        /// The namespace (`a/b`), below --ns.
        #[arg(value_parser = namespace)]
        namespace: BackupNamespace,
        /// Create missing parents too, and succeed if it exists.
        #[arg(short, long)]
        parents: bool,
    },

    /// Remove a namespace and those below it (`a/b`, below --ns).
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo ns remove dev\n  \
        keepsake --store /tmp/demo ns remove prod --delete-groups")]
    Remove {
        /// The namespace (`a/b`), below --ns.
        #[arg(value_parser = namespace)]
        namespace: BackupNamespace,
        /// Also destroy the groups in them (protected snapshots stay, with their namespace).
        #[arg(long)]
        delete_groups: bool,
    },

    /// Move a namespace (with everything below it) under another parent, or rename it.
    #[command(after_help = "Examples:\n  \
        keepsake --store /tmp/demo ns move prod/site-a --to-ns /\n  \
        keepsake --store /tmp/demo ns move dev --to-ns prod --merge\n  \
        keepsake --store /tmp/demo ns move prod/site-a --rename site-b")]
    Move {
        /// The namespace (`a/b`), below --ns.
        #[arg(value_parser = namespace)]
        namespace: BackupNamespace,
        /// The new parent (a full name, `/` for the root; default: where it is now).
        #[arg(
            long,
            value_name = "PARENT",
            value_parser = namespace,
            alias = "to",
            required_unless_present = "rename"
        )]
        to_ns: Option<BackupNamespace>,
        /// Its new last name (default: the name it has).
        #[arg(long, value_name = "NAME")]
        rename: Option<String>,
        /// Merge into a namespace of that name that exists there (group by group, PBS's rules).
        #[arg(long)]
        merge: bool,
    },
}

/// `keepsake prune …`.
#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// One group (`vm/100`); default: every group of the namespace.
    pub(crate) group: Option<GroupArg>,
    /// Also prune the groups of every namespace below.
    #[arg(long, conflicts_with = "group")]
    pub(crate) recursive: bool,
    /// With --recursive: how many levels below --ns (0: only --ns itself), as PBS's prune jobs.
    #[arg(long, value_name = "N", requires = "recursive")]
    pub(crate) max_depth: Option<usize>,
    /// PBS group filters (see `groups --help`).
    #[arg(long = "filter", value_name = "FILTER", conflicts_with = "group")]
    pub(crate) filters: Vec<GroupFilter>,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N", value_parser = keep_count, allow_negative_numbers = true)]
    pub(crate) keep_last: Option<NonZeroU64>,
    /// Keep the newest snapshot of each of the N newest minutes.
    #[arg(long, value_name = "N", value_parser = keep_count, allow_negative_numbers = true)]
    pub(crate) keep_minutely: Option<NonZeroU64>,
    /// … of each of the N newest hours.
    #[arg(long, value_name = "N", value_parser = keep_count, allow_negative_numbers = true)]
    pub(crate) keep_hourly: Option<NonZeroU64>,
    /// … days (local time).
    #[arg(long, value_name = "N", value_parser = keep_count, allow_negative_numbers = true)]
    pub(crate) keep_daily: Option<NonZeroU64>,
    /// … ISO weeks.
    #[arg(long, value_name = "N", value_parser = keep_count, allow_negative_numbers = true)]
    pub(crate) keep_weekly: Option<NonZeroU64>,
    /// … months.
    #[arg(long, value_name = "N", value_parser = keep_count, allow_negative_numbers = true)]
    pub(crate) keep_monthly: Option<NonZeroU64>,
    /// … years.
    #[arg(long, value_name = "N", value_parser = keep_count, allow_negative_numbers = true)]
    pub(crate) keep_yearly: Option<NonZeroU64>,
    /// Keep every snapshot this close to the newest one (`30d`, `2w`, `1y2m`, `36h`).
    #[arg(long, value_name = "D")]
    pub(crate) keep_within: Option<KeepWithin>,
    /// The time zone of the day, week, month and year boundaries and of their labels (`UTC`,
    /// `Europe/Vienna`; default: TZ, else the system's zone). An unknown zone is an error.
    #[arg(long, value_name = "ZONE")]
    pub(crate) timezone: Option<String>,
    /// Only print the plan; remove nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// A namespace on the command line: `a/b`, and `/` (or `""`) for the root.
pub(crate) fn namespace(text: &str) -> Result<BackupNamespace, String> {
    if text == "/" {
        return Ok(BackupNamespace::root());
    }
    text.parse()
        .map_err(|e: keepsake_hierarchy::Error| e.to_string())
}

/// A `--keep-*` count: a whole number from 1 (a rule that keeps nothing is no rule; leaving the
/// option out is how to turn it off).
fn keep_count(text: &str) -> Result<NonZeroU64, String> {
    match text.trim().parse::<i128>() {
        Ok(n) if n < 1 => Err(format!(
            "must be at least 1 (leave the option out to not use this rule), not {n}"
        )),
        Ok(n) => u64::try_from(n)
            .ok()
            .and_then(NonZeroU64::new)
            .ok_or_else(|| format!("{n} is too large")),
        Err(_) => Err("not a whole number".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ages_in_friendly_and_iso_form() {
        let day = Duration::from_secs(86_400);
        assert_eq!("7d".parse::<Age>().unwrap().duration, 7 * day);
        assert_eq!("2w".parse::<Age>().unwrap().duration, 14 * day);
        assert_eq!(
            "36h".parse::<Age>().unwrap().duration,
            Duration::from_secs(36 * 3600)
        );
        assert_eq!("P7D".parse::<Age>().unwrap().duration, 7 * day);
        assert_eq!("1d 12h".parse::<Age>().unwrap().text, "1d 12h");
        let year = "1y".parse::<Age>().unwrap().duration;
        assert!(year == 365 * day || year == 366 * day, "{year:?}");
        assert_eq!("0s".parse::<Age>().unwrap().duration, Duration::ZERO);
        for bad in ["", "7", "x", "7x", "-7d", "7d ago"] {
            assert!(bad.parse::<Age>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str) {
            let name = format!("{path} {}", cmd.get_name());
            let help = cmd
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains("keepsake "),
                "{name}: no example in after_help"
            );
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &name);
            }
        }
        walk(&Cli::command(), "");
    }
}

/// `keepsake key …`
#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a new random encryption key in a PBS key file (mode 0600; an existing file is never
    /// replaced) and print its fingerprint. Its password comes from KEEPSAKE_KEY_PASSWORD, else
    /// it is asked twice on the terminal.
    #[command(after_help = "Examples:\n  \
        keepsake key create /root/backup.key\n  \
        KEEPSAKE_KEY_PASSWORD=… keepsake key create /root/backup.key --kdf pbkdf2 --hint 'the usual'\n  \
        keepsake key create /root/plain.key --kdf none")]
    Create {
        /// The new key file.
        file: PathBuf,
        /// How the password protects the key: `scrypt` (PBS's default), `pbkdf2`, or `none` (no
        /// password: anyone who can read the file has the key).
        #[arg(long, value_enum, default_value = "scrypt")]
        kdf: KdfArg,
        /// A password hint stored in the file, shown when a password is wrong (1 to 64
        /// characters, one line).
        #[arg(long, value_name = "TEXT")]
        hint: Option<String>,
    },
}

/// `--kdf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KdfArg {
    /// scrypt (N = 65536, r = 8, p = 1), PBS's default.
    Scrypt,
    /// PBKDF2-HMAC-SHA256, 65535 rounds.
    Pbkdf2,
    /// No password.
    None,
}
