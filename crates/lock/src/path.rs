//! Lock file names of PBS 4: systemd-style escaping and the `hashed/` fallback for long names.
//!
//! These are pure functions over bytes so that they can be checked against PBS's examples without
//! a file system; [`FileLocker`](crate::FileLocker) joins the result to `<lock root>/<store>/`.
//!
//! Every lock acquisition derives a path, so the derivation writes into one byte buffer and escapes
//! the relative path piece by piece (`vm`, `100`, the time) instead of formatting it first.

use sha2::{Digest, Sha256};

/// A lock file name of this many escaped bytes or more goes to the `hashed/` folder instead
/// (255 is the longest file name Linux file systems accept).
pub const MAX_PLAIN_LOCK_NAME: usize = 255;

/// Escaped bytes kept from each end of a long name in its hashed form.
pub(crate) const HASHED_KEEP: usize = 80;

/// Folder (beneath the namespace folder) holding the lock files of long names.
pub const HASHED_DIR_NAME: &str = "hashed";

/// Escapes a relative path the way systemd escapes a path into a unit name (PBS uses this for lock
/// file names).
///
/// Leading `/` are dropped (nothing left gives `-`); every other `/` becomes `-`; bytes other than
/// `[A-Za-z0-9_.]`, and a `.` as the very first byte, become `\xNN` with two lowercase hex digits.
/// Non-ASCII bytes are escaped one byte at a time, so the result is always ASCII.
///
/// ```
/// use keepsake_lock::escape_unit_path;
///
/// assert_eq!(escape_unit_path(b"vm/100/2022-05-02T08:11:33Z"), r"vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z");
/// assert_eq!(escape_unit_path(b".hidden/.x"), r"\x2ehidden-.x");
/// assert_eq!(escape_unit_path(b"/"), "-");
/// ```
pub fn escape_unit_path(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 2);
    push_escaped(&mut out, &[raw]);
    ascii_string(out)
}

/// The inverse of [`escape_unit_path`]: the path a lock file name was escaped from, or `None` if
/// `name` is not exactly what [`escape_unit_path`] produces for some path.
///
/// `-` becomes `/` and `\xNN` (two lowercase hex digits) the byte `NN`. Only the spelling
/// [`escape_unit_path`] itself writes is accepted: a byte escaped that needs no escaping (`\x61`),
/// a byte left bare that needs escaping (`:`, a leading `.`), uppercase hex, a truncated escape,
/// or a leading `-` (a leading `/` is never kept) give `None`. So whenever the result is `Some`,
/// escaping it gives `name` back. The one name with two pre-images is `-`, the escape of both
/// `""` and `"/"`; it unescapes to `""`.
///
/// ```
/// use keepsake_lock::{escape_unit_path, unescape_unit_path};
///
/// let name = r"vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z";
/// assert_eq!(unescape_unit_path(name).as_deref(), Some(&b"vm/100/2022-05-02T08:11:33Z"[..]));
/// assert_eq!(escape_unit_path(b"vm/100/2022-05-02T08:11:33Z"), name);
/// assert_eq!(unescape_unit_path(r"\x2ehidden-.x").as_deref(), Some(&b".hidden/.x"[..]));
/// assert_eq!(unescape_unit_path("vm-100x").as_deref(), Some(&b"vm/100x"[..]));
/// // Not spellings escape_unit_path would produce:
/// for name in [r"vm-10\x30", "vm-2022:05", ".x", r"\x2E", r"a\x2", "-vm", r"\x2f"] {
///     assert_eq!(unescape_unit_path(name), None, "{name}");
/// }
/// ```
pub fn unescape_unit_path(name: &str) -> Option<Vec<u8>> {
    match name {
        "" => return None,
        "-" => return Some(Vec::new()),
        _ => {}
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let first = out.is_empty();
        let byte = match bytes[at] {
            b'\\' => {
                let escaped = match bytes.get(at..at + 4) {
                    Some([b'\\', b'x', high, low]) => (hex_value(*high)? << 4) | hex_value(*low)?,
                    _ => return None,
                };
                // `/` is never escaped (it becomes `-`), and kept bytes are never escaped.
                if escaped == b'/' || (keeps(escaped) && !(first && escaped == b'.')) {
                    return None;
                }
                at += 4;
                out.push(escaped);
                continue;
            }
            // A leading `/` is stripped before escaping, never written as `-`.
            b'-' if first => return None,
            b'-' => b'/',
            b'.' if first => return None,
            b if keeps(b) => b,
            _ => return None,
        };
        at += 1;
        out.push(byte);
    }
    Some(out)
}

/// Whether [`escape_unit_path`] writes `byte` as it is (anywhere but at the start, for `.`).
fn keeps(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'.'
}

/// The value of a lowercase hex digit, as [`escape_unit_path`] writes them.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// The path of a PBS 4 lock file relative to `<lock root>/<store>/`.
///
/// `relative` is the object's path without its namespace part (`vm/100`, `vm/100/<time>`,
/// `vm/100/<time>/.index.json.lck`). The result is `[<ns components joined by ':'>/]<name>`, where
/// `<name>` is [`escape_unit_path`] of `relative`, or — when that is [`MAX_PLAIN_LOCK_NAME`] bytes
/// or longer — `hashed/<first 80>...<last 80>-<sha256 hex of the raw relative path>` (228 bytes).
/// Namespace components are joined as they are, without escaping, as PBS does.
///
/// ```
/// use keepsake_lock::relative_lock_path;
///
/// assert_eq!(relative_lock_path(&["a", "b"], b"host/my-host.example"), r"a:b/host-my\x2dhost.example");
/// assert_eq!(relative_lock_path::<&str>(&[], b"vm/100"), "vm-100");
/// ```
pub fn relative_lock_path<S: AsRef<str>>(ns_components: &[S], relative: &[u8]) -> String {
    let mut out = Vec::with_capacity(relative.len() * 2 + 32);
    push_lock_path(
        &mut out,
        ns_components.iter().map(AsRef::as_ref),
        &[relative],
    );
    ascii_string(out)
}

/// Appends the relative lock path of the object whose relative path is `pieces` joined by `/` to
/// `out`; the one implementation behind [`relative_lock_path`] and the lockers.
pub(crate) fn push_lock_path<'a>(
    out: &mut Vec<u8>,
    ns_components: impl Iterator<Item = &'a str>,
    pieces: &[&[u8]],
) {
    let mut any_ns = false;
    for component in ns_components {
        if any_ns {
            out.push(b':');
        }
        out.extend_from_slice(component.as_bytes());
        any_ns = true;
    }
    if any_ns {
        out.push(b'/');
    }
    let start = out.len();
    push_escaped(out, pieces);
    if out.len() - start < MAX_PLAIN_LOCK_NAME {
        return;
    }
    let escaped = out.split_off(start);
    out.extend_from_slice(HASHED_DIR_NAME.as_bytes());
    out.push(b'/');
    out.extend_from_slice(&escaped[..HASHED_KEEP]);
    out.extend_from_slice(b"...");
    out.extend_from_slice(&escaped[escaped.len() - HASHED_KEEP..]);
    out.push(b'-');
    // PBS hashes the raw (unescaped) path, whatever its documentation says.
    let mut sha = Sha256::new();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            sha.update(b"/");
        }
        sha.update(piece);
    }
    out.extend_from_slice(hex::encode(sha.finalize()).as_bytes());
}

/// Escapes `pieces` joined by `/` (see [`escape_unit_path`]) onto `out`.
fn push_escaped(out: &mut Vec<u8>, pieces: &[&[u8]]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Position in the path after the leading slashes; `None` while still among them.
    let mut index: Option<usize> = None;
    let mut push = |b: u8| {
        let i = match index {
            None if b == b'/' => return,
            None => 0,
            Some(i) => i,
        };
        index = Some(i + 1);
        if b == b'/' {
            out.push(b'-');
        } else if (i == 0 && b == b'.') || !keeps(b) {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.push(b);
        }
    };
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            push(b'/');
        }
        for &b in *piece {
            push(b);
        }
    }
    if index.is_none() {
        out.push(b'-');
    }
}

/// The escaped output (and namespace names, which are safe ids) is ASCII by construction.
fn ascii_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("escaped lock paths are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_byte_class() {
        let all: Vec<u8> = (0..=255).collect();
        let escaped = escape_unit_path(&all);
        assert!(escaped.starts_with(r"\x00\x01"));
        assert!(escaped.contains(r"\x2d.-0123456789\x3a"));
        assert!(escaped.contains(r"\x40ABC"));
        assert!(escaped.contains(r"XYZ\x5b\x5c\x5d\x5e_\x60abc"));
        assert!(escaped.contains(r"xyz\x7b\x7c\x7d\x7e\x7f\x80"));
        assert!(escaped.ends_with(r"\xfe\xff"));
        // 62 alphanumerics + '_' + '.' kept, '/' mapped, 191 bytes escaped to 4 chars each.
        assert_eq!(escaped.len(), 64 + 1 + 191 * 4);
    }

    #[test]
    fn only_leading_slashes_are_stripped() {
        assert_eq!(escape_unit_path(b"//a//b/"), "a--b-");
        assert_eq!(escape_unit_path(b""), "-");
        assert_eq!(escape_unit_path(b"///"), "-");
        assert_eq!(escape_unit_path(b"/.a"), r"\x2ea");
    }

    #[test]
    fn pieces_escape_like_the_joined_path() {
        let check = |pieces: &[&[u8]]| {
            let mut joined = Vec::new();
            push_escaped(&mut joined, pieces);
            assert_eq!(
                joined,
                escape_unit_path(&pieces.join(&b'/')).into_bytes(),
                "{pieces:?}"
            );
        };
        check(&[b"vm", b"100", b"2024-06-05T15:06:40Z", b".index.json.lck"]);
        check(&[b"", b".x"]);
        check(&[b"/", b"", b"a"]);
        check(&[b"", b""]);
        check(&[b".", b"."]);
    }

    proptest::proptest! {
        #[test]
        fn unescape_inverts_escape(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let name = escape_unit_path(&raw);
            let back = unescape_unit_path(&name).expect("an escaped name unescapes");
            // Escaping forgets leading slashes only.
            let stripped = &raw[raw.iter().take_while(|&&b| b == b'/').count()..];
            proptest::prop_assert_eq!(&back, stripped);
            proptest::prop_assert_eq!(escape_unit_path(&back), name);
        }

        #[test]
        fn unescape_accepts_only_what_escape_writes(name in "[-_.a-z0-9:\\\\x]{0,24}") {
            if let Some(raw) = unescape_unit_path(&name) {
                proptest::prop_assert_eq!(escape_unit_path(&raw), name);
            }
        }

        #[test]
        fn unescape_of_lock_like_names(
            name in "(vm|ct|host)-[a-z0-9._]{1,8}(-[0-9]{4}\\\\x2d[0-9]{2}\\\\x2d[0-9]{2}T[0-9]{2}\\\\x3a[0-9]{2}\\\\x3a[0-9]{2}Z)?"
        ) {
            let raw = unescape_unit_path(&name).expect("well-formed");
            proptest::prop_assert_eq!(escape_unit_path(&raw), name);
        }
    }

    #[test]
    fn unescape_rejects_every_other_spelling() {
        assert_eq!(unescape_unit_path(""), None);
        assert_eq!(unescape_unit_path("-"), Some(Vec::new()));
        assert_eq!(unescape_unit_path("a--b-").as_deref(), Some(&b"a//b/"[..]));
        assert_eq!(unescape_unit_path(r"\x2e").as_deref(), Some(&b"."[..]));
        assert_eq!(
            unescape_unit_path(r"a.\x00\xff").as_deref(),
            Some(&b"a.\x00\xff"[..])
        );
        for bad in [
            "--", "-a", ".a", r"a\x2E", r"a\X2e", r"a\x2", r"a\", r"a\x2g", r"a\x41", r"a\x2f",
            r"a\x5f", r"a\x2ex", "a b", "a:b", "ä",
        ] {
            assert_eq!(unescape_unit_path(bad), None, "{bad:?}");
        }
    }
}
