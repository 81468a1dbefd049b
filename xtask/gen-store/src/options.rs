//! The command line of `gen-store`, parsed by hand (a dozen options do not need clap's build
//! time in a release build).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use keepsake_backend::SyncLevel;

/// The chunk sizes the PBS client accepts for fixed indexes (spec 6.1).
const VALID_CHUNK_SIZES: [u64; 7] = [
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];

pub(crate) const USAGE: &str = "\
usage: cargo xtask gen-store DIR [options]

Writes a new datastore at DIR (which must not exist or be empty) through keepsake-datastore's
backup writer, so PBS reads the result.

options:
  --name NAME              datastore name (default: DIR's folder name)
  --groups N               backup groups (default 2; vm, ct and host in turn)
  --snapshots N            snapshots per group (default 3, one a day)
  --archive-size BYTES     size of each archive, K/M/G suffixes (default 64M)
  --chunk-size BYTES       fixed index chunk size, 64K..4M, a power of two (default 4M);
                           also the average dynamic chunk size
  --kind fixed|dynamic|both  archives per snapshot: drive-scsi0.img.fidx, root.pxar.didx
                           or both (default fixed)
  --shared PERCENT         share of a snapshot's chunks unchanged since the group's previous
                           snapshot (default 90)
  --data compressible|random  text-like data zstd shrinks about 3:1, or random bytes
                           (default compressible)
  --namespaces             spread the groups over the root and three namespaces
  --seed N                 the data and the plan follow from it (default 0)
  --key FILE               encrypt with this key: a PBS key file (password from
                           KEEPSAKE_KEY_PASSWORD), 32 raw bytes or 64 hex digits
  --chunk-prefix-dirs on|off  make the 65,536 chunk prefix folders as PBS's init does
                           (default on; PBS writes chunks into them)
  --sync-level none|file|filesystem  PBS's tuning option (default none: a generated store is
                           not precious)
  --lock-root DIR          lock folder (default <temp dir>/keepsake-locks-<uid>, as the CLI)
  --threads N              chunk generating threads (default: the number of cores)
  --json                   print the summary as one JSON object";

/// Which archives each snapshot gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArchiveKinds {
    Fixed,
    Dynamic,
    Both,
}

/// What the generated chunks hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataKind {
    Compressible,
    Random,
}

/// How the summary is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Text,
    Json,
}

/// Everything the command line says.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) dir: PathBuf,
    pub(crate) name: Option<String>,
    pub(crate) groups: u32,
    pub(crate) snapshots: u32,
    pub(crate) archive_size: u64,
    pub(crate) chunk_size: u64,
    pub(crate) kinds: ArchiveKinds,
    pub(crate) shared_percent: f64,
    pub(crate) data: DataKind,
    pub(crate) namespaces: bool,
    pub(crate) seed: u64,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) chunk_prefix_dirs: bool,
    pub(crate) sync_level: SyncLevel,
    pub(crate) lock_root: Option<PathBuf>,
    pub(crate) threads: Option<usize>,
    pub(crate) output: Output,
}

impl Options {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            name: None,
            groups: 2,
            snapshots: 3,
            archive_size: 64 << 20,
            chunk_size: 4 << 20,
            kinds: ArchiveKinds::Fixed,
            shared_percent: 90.0,
            data: DataKind::Compressible,
            namespaces: false,
            seed: 0,
            key_file: None,
            chunk_prefix_dirs: true,
            sync_level: SyncLevel::None,
            lock_root: None,
            threads: None,
            output: Output::Text,
        }
    }
}

/// What the arguments ask for: a run, or the usage text.
#[derive(Debug)]
pub(crate) enum Request {
    Run(Box<Options>),
    Help,
}

pub(crate) fn parse(args: &[String]) -> Result<Request> {
    let mut dir = None;
    let mut o = Options::new(PathBuf::new());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .map(String::as_str)
                .with_context(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(Request::Help),
            "--name" => o.name = Some(value()?.to_owned()),
            "--groups" => o.groups = number(arg, value()?)?,
            "--snapshots" => o.snapshots = number(arg, value()?)?,
            "--archive-size" => o.archive_size = size(arg, value()?)?,
            "--chunk-size" => o.chunk_size = chunk_size(value()?)?,
            "--kind" => {
                o.kinds = match value()? {
                    "fixed" => ArchiveKinds::Fixed,
                    "dynamic" => ArchiveKinds::Dynamic,
                    "both" => ArchiveKinds::Both,
                    other => bail!("--kind {other:?}: fixed, dynamic or both"),
                }
            }
            "--shared" => o.shared_percent = percent(value()?)?,
            "--data" => {
                o.data = match value()? {
                    "compressible" => DataKind::Compressible,
                    "random" => DataKind::Random,
                    other => bail!("--data {other:?}: compressible or random"),
                }
            }
            "--namespaces" => o.namespaces = true,
            "--seed" => o.seed = number(arg, value()?)?,
            "--key" => o.key_file = Some(PathBuf::from(value()?)),
            "--chunk-prefix-dirs" => {
                o.chunk_prefix_dirs = match value()? {
                    "on" => true,
                    "off" => false,
                    other => bail!("--chunk-prefix-dirs {other:?}: on or off"),
                }
            }
            "--sync-level" => {
                let v = value()?;
                o.sync_level = v
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("--sync-level {v:?}: {e}"))?;
            }
            "--lock-root" => o.lock_root = Some(PathBuf::from(value()?)),
            "--threads" => {
                let n: usize = number(arg, value()?)?;
                if n == 0 {
                    bail!("--threads must be at least 1");
                }
                o.threads = Some(n);
            }
            "--json" => o.output = Output::Json,
            flag if flag.starts_with('-') => bail!("unknown option {flag:?}"),
            positional => {
                if dir.replace(PathBuf::from(positional)).is_some() {
                    bail!("one DIR only (second: {positional:?})");
                }
            }
        }
    }
    o.dir = dir.context("DIR is missing")?;
    if o.groups == 0 || o.snapshots == 0 {
        bail!("--groups and --snapshots must be at least 1 (PBS refuses empty backups)");
    }
    if o.archive_size == 0 {
        bail!("--archive-size must be at least 1 byte (PBS refuses empty backups)");
    }
    Ok(Request::Run(Box::new(o)))
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T> {
    v.parse()
        .ok()
        .with_context(|| format!("{flag} {v:?}: not a number"))
}

/// A byte count with an optional binary suffix: `1500`, `64K`, `4M`, `2G` (also `KiB`, `MiB`...).
pub(crate) fn size(flag: &str, v: &str) -> Result<u64> {
    let upper = v.trim().to_ascii_uppercase();
    let digits_end = upper
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(upper.len());
    let (digits, suffix) = upper.split_at(digits_end);
    let shift = match suffix {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => bail!("{flag} {v:?}: a number of bytes with an optional K, M, G or T suffix"),
    };
    let n: u64 = number(flag, digits)?;
    n.checked_mul(1 << shift)
        .with_context(|| format!("{flag} {v:?}: too large"))
}

fn chunk_size(v: &str) -> Result<u64> {
    let n = size("--chunk-size", v)?;
    if !VALID_CHUNK_SIZES.contains(&n) {
        bail!("--chunk-size {v:?}: PBS accepts 64K, 128K, 256K, 512K, 1M, 2M or 4M");
    }
    Ok(n)
}

fn percent(v: &str) -> Result<f64> {
    let p: f64 = number("--shared", v)?;
    if !(0.0..=100.0).contains(&p) {
        bail!("--shared {v:?}: a percentage from 0 to 100");
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options> {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        match parse(&args)? {
            Request::Run(o) => Ok(*o),
            Request::Help => bail!("help"),
        }
    }

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("1500", 1500),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("4MiB", 4 << 20),
            ("2G", 2 << 30),
            ("1T", 1 << 40),
        ] {
            assert_eq!(size("--archive-size", text).unwrap(), bytes, "{text}");
        }
        for bad in ["", "K", "4X", "1.5G", "-1", "99999999999T"] {
            assert!(size("--archive-size", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunk_sizes_are_pbs_ones() {
        assert_eq!(run(&["d"]).unwrap().chunk_size, 4 << 20);
        assert_eq!(
            run(&["d", "--chunk-size", "64K"]).unwrap().chunk_size,
            64 << 10
        );
        for bad in ["32K", "3M", "8M", "65537"] {
            assert!(run(&["d", "--chunk-size", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn options() {
        let o = run(&[
            "store",
            "--groups",
            "5",
            "--snapshots",
            "7",
            "--kind",
            "both",
            "--shared",
            "37.5",
            "--data",
            "random",
            "--namespaces",
            "--seed",
            "42",
            "--chunk-prefix-dirs",
            "off",
            "--sync-level",
            "file",
            "--json",
        ])
        .unwrap();
        assert_eq!(o.dir, PathBuf::from("store"));
        assert_eq!((o.groups, o.snapshots), (5, 7));
        assert_eq!(o.kinds, ArchiveKinds::Both);
        assert_eq!(o.shared_percent, 37.5);
        assert_eq!(o.data, DataKind::Random);
        assert!(o.namespaces);
        assert_eq!(o.seed, 42);
        assert!(!o.chunk_prefix_dirs);
        assert_eq!(o.sync_level, SyncLevel::File);
        assert_eq!(o.output, Output::Json);
    }

    #[test]
    fn refusals() {
        for args in [
            &[][..],
            &["a", "b"],
            &["d", "--groups"],
            &["d", "--groups", "0"],
            &["d", "--snapshots", "x"],
            &["d", "--archive-size", "0"],
            &["d", "--shared", "101"],
            &["d", "--kind", "image"],
            &["d", "--data", "zeros"],
            &["d", "--chunk-prefix-dirs", "yes"],
            &["d", "--threads", "0"],
            &["d", "--frobnicate"],
        ] {
            assert!(run(args).is_err(), "{args:?}");
        }
    }
}
