//! "Who holds it": the processes holding a flock on a file, from `/proc/locks`.
//!
//! Everything here is best-effort: a `/proc` that cannot be read, a process that exited meanwhile or
//! a pid from another pid namespace just means fewer details, never an error.

use std::fmt;
use std::os::fd::AsFd;
use std::path::Path;

use crate::LockMode;

/// Longest command line kept for a holder; the rest is cut (at a character boundary) and marked `…`.
const MAX_COMMAND_LEN: usize = 512;

/// How often `/proc/locks` is read before concluding that nobody is listed for a file.
const PROC_LOCKS_READS: usize = 4;

/// A process holding a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// Process id, as seen from this process's pid namespace.
    pub pid: u32,
    /// The mode it holds the lock in.
    pub mode: LockMode,
    /// Its command line (arguments joined by spaces), when `/proc/<pid>/cmdline` was readable.
    pub command: Option<String>,
}

impl Holder {
    /// A holder from its parts (for lock implementations in other crates).
    pub fn new(pid: u32, mode: LockMode, command: Option<String>) -> Self {
        Self { pid, mode, command }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({}", self.pid, self.mode)?;
        if let Some(command) = &self.command {
            write!(f, ": {command}")?;
        }
        f.write_str(")")
    }
}

/// The holders of flocks on the file with device `major:minor` and inode `inode`, parsed from the
/// text of `/proc/locks`, in the order listed, each (pid, mode) once.
///
/// Only granted `FLOCK` entries count: POSIX record locks and OFD locks (`POSIX`, `OFDLCK`) are a
/// different lock family that does not conflict with flock, and lines with `->` are processes still
/// waiting for the lock. Entries whose pid is not positive (a holder outside this pid namespace) are
/// skipped, since no process can be named for them.
///
/// ```
/// use keepsake_lock::{parse_flock_holders, LockMode};
///
/// let text = "1: FLOCK  ADVISORY  WRITE 4242 fe:01:1234 0 EOF\n\
///             1: -> FLOCK  ADVISORY  WRITE 4343 fe:01:1234 0 EOF\n";
/// assert_eq!(parse_flock_holders(text, 0xfe, 1, 1234), [(4242, LockMode::Exclusive)]);
/// ```
pub fn parse_flock_holders(
    proc_locks: &str,
    major: u32,
    minor: u32,
    inode: u64,
) -> Vec<(u32, LockMode)> {
    let mut found: Vec<(u32, LockMode)> = Vec::new();
    for line in proc_locks.lines() {
        let Some(entry) = parse_line(line) else {
            continue;
        };
        if entry.major == major
            && entry.minor == minor
            && entry.inode == inode
            && !found.contains(&(entry.pid, entry.mode))
        {
            found.push((entry.pid, entry.mode));
        }
    }
    found
}

/// One granted flock entry of `/proc/locks`.
struct FlockEntry {
    pid: u32,
    mode: LockMode,
    major: u32,
    minor: u32,
    inode: u64,
}

/// Parses `<id>: FLOCK  ADVISORY  <WRITE|READ> <pid> <maj>:<min>:<inode> <start> <end>`;
/// `None` for every other kind of line.
fn parse_line(line: &str) -> Option<FlockEntry> {
    let mut fields = line.split_whitespace();
    let id = fields.next()?;
    if !id.ends_with(':') {
        return None;
    }
    // A waiter line reads `<id>: -> FLOCK …` (older kernels) or is indented with the arrow.
    if fields.next()? != "FLOCK" {
        return None;
    }
    if fields.next()? != "ADVISORY" {
        return None;
    }
    let mode = match fields.next()? {
        "WRITE" => LockMode::Exclusive,
        "READ" => LockMode::Shared,
        _ => return None,
    };
    let pid: i64 = fields.next()?.parse().ok()?;
    let pid = u32::try_from(pid).ok().filter(|&p| p > 0)?;
    let mut dev = fields.next()?.split(':');
    // The kernel prints the device numbers in hex and the inode in decimal.
    let major = u32::from_str_radix(dev.next()?, 16).ok()?;
    let minor = u32::from_str_radix(dev.next()?, 16).ok()?;
    let inode = dev.next()?.parse().ok()?;
    if dev.next().is_some() {
        return None;
    }
    Some(FlockEntry {
        pid,
        mode,
        major,
        minor,
        inode,
    })
}

/// The processes holding a flock on the open file `fd`, with their command lines. Empty when
/// nothing is known.
pub fn holders_of(fd: impl AsFd) -> Vec<Holder> {
    match rustix::fs::fstat(fd) {
        Ok(stat) => holders_of_inode(stat.st_dev, stat.st_ino),
        Err(_) => Vec::new(),
    }
}

/// The processes holding a flock on the file at `path`, with their command lines. Empty when
/// nothing is known (including when the file does not exist).
pub fn holders_of_path(path: impl AsRef<Path>) -> Vec<Holder> {
    match rustix::fs::stat(path.as_ref()) {
        Ok(stat) => holders_of_inode(stat.st_dev, stat.st_ino),
        Err(_) => Vec::new(),
    }
}

fn holders_of_inode(dev: u64, inode: u64) -> Vec<Holder> {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let mut found = Vec::new();
    // The kernel hands out `/proc/locks` a page per read and resumes by entry index, so while other
    // locks come and go an entry can slip past between two pages. A busy lock has a holder, so an
    // empty answer is worth a few more reads.
    for _ in 0..PROC_LOCKS_READS {
        let Ok(text) = std::fs::read_to_string("/proc/locks") else {
            return Vec::new();
        };
        found = parse_flock_holders(&text, major, minor, inode);
        if !found.is_empty() {
            break;
        }
    }
    found
        .into_iter()
        .map(|(pid, mode)| Holder {
            pid,
            mode,
            command: command_line(pid),
        })
        .collect()
}

/// `/proc/<pid>/cmdline` with its NUL separators as spaces; `None` if unreadable or empty (a
/// kernel thread, a zombie, or a process that is gone).
fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(format_command_line(&raw)).filter(|c| !c.is_empty())
}

fn format_command_line(raw: &[u8]) -> String {
    let trimmed = raw.strip_suffix(b"\0").unwrap_or(raw);
    let joined: Vec<u8> = trimmed
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect();
    let mut command = String::from_utf8_lossy(&joined).into_owned();
    if command.len() > MAX_COMMAND_LEN {
        let mut cut = MAX_COMMAND_LEN;
        while !command.is_char_boundary(cut) {
            cut -= 1;
        }
        command.truncate(cut);
        command.push('…');
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockMode::{Exclusive, Shared};

    /// `/proc/locks` as Linux 6.x prints it, with every kind of line.
    const SAMPLE: &str = "\
1: POSIX  ADVISORY  WRITE 811 00:1a:2066 0 EOF
2: OFDLCK ADVISORY  READ  -1 fe:00:10010892 0 EOF
3: FLOCK  ADVISORY  WRITE 3731 fe:00:10010892 0 EOF
3: -> FLOCK  ADVISORY  WRITE 3758 fe:00:10010892 0 EOF
3: -> FLOCK  ADVISORY  READ 3759 fe:00:10010892 0 EOF
4: FLOCK  ADVISORY  READ 3754 fe:00:10010893 0 EOF
4: FLOCK  ADVISORY  READ 3755 fe:00:10010893 0 EOF
4: FLOCK  ADVISORY  READ 3754 fe:00:10010893 0 EOF
5: POSIX  ADVISORY  READ 900 fe:00:10010893 0 EOF
6: FLOCK  ADVISORY  WRITE 0 fe:00:10010894 0 EOF
7: FLOCK  ADVISORY  WRITE 77 103:0a:10010894 0 EOF
8: LEASE  ACTIVE    READ 1000 fe:00:10010895 0 EOF
9: FLOCK  ADVISORY  WRITE 99 <none>:0 0 EOF
10: DELEG  ACTIVE    READ 1001 fe:00:10010892 0 EOF
 garbage
";

    fn check(major: u32, minor: u32, inode: u64, expected: &[(u32, LockMode)]) {
        assert_eq!(
            parse_flock_holders(SAMPLE, major, minor, inode),
            expected,
            "{major:x}:{minor:x}:{inode}"
        );
    }

    #[test]
    fn exclusive_holder_without_its_waiters_or_other_lock_families() {
        check(0xfe, 0, 10010892, &[(3731, Exclusive)]);
    }

    #[test]
    fn shared_holders_once_each_and_no_posix_lock() {
        check(0xfe, 0, 10010893, &[(3754, Shared), (3755, Shared)]);
    }

    #[test]
    fn device_numbers_are_hex_and_must_match() {
        check(0x103, 0x0a, 10010894, &[(77, Exclusive)]);
        check(103, 10, 10010894, &[]);
        // pid 0: held from another pid namespace, nothing to name.
        check(0xfe, 0, 10010894, &[]);
    }

    #[test]
    fn leases_posix_and_unknown_inodes_are_ignored() {
        check(0xfe, 0, 10010895, &[]);
        check(0, 0x1a, 2066, &[]);
        check(0, 0, 0, &[]);
    }

    #[test]
    fn indented_waiter_lines_are_ignored() {
        let text = "1: FLOCK  ADVISORY  WRITE 5 08:01:7 0 EOF\n 1: -> FLOCK  ADVISORY  WRITE 6 08:01:7 0 EOF\n";
        assert_eq!(parse_flock_holders(text, 8, 1, 7), [(5, Exclusive)]);
    }

    #[test]
    fn command_line_nuls_become_spaces() {
        assert_eq!(
            format_command_line(b"keepsake\0prune\0--dry-run\0"),
            "keepsake prune --dry-run"
        );
        assert_eq!(format_command_line(b"a\0\0b"), "a  b");
        assert_eq!(format_command_line(b""), "");
        let long = vec![b'x'; MAX_COMMAND_LEN + 10];
        assert_eq!(
            format_command_line(&long).chars().count(),
            MAX_COMMAND_LEN + 1
        );
        let mut multibyte = vec![b'x'; MAX_COMMAND_LEN - 1];
        multibyte.extend_from_slice("é".as_bytes());
        assert_eq!(
            format_command_line(&multibyte),
            format!("{}…", "x".repeat(MAX_COMMAND_LEN - 1))
        );
    }

    #[test]
    fn live_flock_is_found_by_path_and_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        let file = std::fs::File::create(&path).unwrap();
        assert!(holders_of_path(&path).is_empty());
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).unwrap();
        let holders = holders_of_path(&path);
        assert!(
            holders
                .iter()
                .any(|h| h.pid == std::process::id() && h.mode == Shared),
            "{holders:?}"
        );
        assert_eq!(holders_of(&file), holders);
        drop(file);
        assert!(holders_of_path(&path).is_empty());
        assert!(holders_of_path(dir.path().join("missing")).is_empty());
    }

    #[test]
    fn own_process_command_line_is_readable() {
        let command = command_line(std::process::id()).expect("own cmdline");
        let exe = std::env::args().next().expect("argv[0]");
        assert!(command.starts_with(&exe), "{command:?} vs {exe:?}");
    }
}
