//! [`RemoteRecord`]: which bucket version a cache file's bytes are, kept with the file.
//!
//! The cached backend stores the record as the extended attribute [`ATTRIBUTE`] of the cache
//! file, set on the temporary file before it is renamed into place, so that bytes and record
//! appear together. A record is trusted only for the path it names and for bytes whose SHA-256 it
//! holds: a cache file changed behind the backend's back (same path, other bytes) or moved
//! (other path) has no valid record, and its next read asks the bucket.
//!
//! The value is a few lines of text, readable with `getfattr -n user.keepsake.remote`:
//!
//! ```text
//! keepsake-remote 1
//! path vm/100/owner
//! sha256 <64 hex digits>
//! etag "<etag>"
//! version <object version>
//! end
//! ```
//!
//! (`etag` and `version` only when the store gave them; `end` shows the value is whole.)

use std::ffi::CStr;
use std::fmt::Write;

use sha2::{Digest, Sha256};

use crate::path::BackendPath;
use crate::version::Version;

/// The extended attribute holding the record (the `user.` namespace: no privilege needed).
pub(crate) const ATTRIBUTE: &CStr = c"user.keepsake.remote";

const HEADER: &str = "keepsake-remote 1";

/// A cache file's bucket version, valid for one path and one content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteRecord {
    path: BackendPath,
    sha256: [u8; 32],
    remote: Version,
}

impl RemoteRecord {
    /// The record of `data` at `path`, which is `remote` in the bucket.
    pub(crate) fn new(path: BackendPath, data: &[u8], remote: Version) -> Self {
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&Sha256::digest(data));
        Self {
            path,
            sha256,
            remote,
        }
    }

    /// The bucket version, if this record is about `path` holding the content `content` (a
    /// local content version).
    pub(crate) fn version_for(&self, path: &BackendPath, content: &Version) -> Option<&Version> {
        (self.path == *path && content.content_sha256() == Some(&self.sha256))
            .then_some(&self.remote)
    }

    /// Whether this record is about `path`.
    pub(crate) fn is_about(&self, path: &BackendPath) -> bool {
        self.path == *path
    }

    /// The bucket ETag the recorded bytes are.
    pub(crate) fn e_tag(&self) -> Option<&str> {
        self.remote.e_tag()
    }

    /// The attribute value; `None` if a value cannot be written on one line (an ETag or object
    /// version with a line break), in which case the record is kept in memory only.
    pub(crate) fn encode(&self) -> Option<Vec<u8>> {
        let mut text = format!("{HEADER}\npath {}\nsha256 ", self.path);
        for byte in self.sha256 {
            // Writing into a String cannot fail.
            let _ = write!(text, "{byte:02x}");
        }
        text.push('\n');
        for (key, value) in [
            ("etag", self.remote.e_tag()),
            ("version", self.remote.object_version()),
        ] {
            if let Some(value) = value {
                if value.contains(['\n', '\r']) {
                    return None;
                }
                let _ = writeln!(text, "{key} {value}");
            }
        }
        text.push_str("end\n");
        Some(text.into_bytes())
    }

    /// Reads an attribute value; `None` for anything that is not a whole, well-formed record.
    pub(crate) fn decode(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        let mut lines = text.lines();
        if lines.next()? != HEADER {
            return None;
        }
        let (mut path, mut sha256, mut e_tag, mut version) = (None, None, None, None);
        let mut whole = false;
        for line in lines {
            if whole {
                return None;
            }
            if line == "end" {
                whole = true;
                continue;
            }
            let (key, value) = line.split_once(' ')?;
            match key {
                "path" => path = Some(BackendPath::new(value).ok()?),
                "sha256" => sha256 = Some(parse_sha256(value)?),
                "etag" => e_tag = Some(value.to_owned()),
                "version" => version = Some(value.to_owned()),
                // Keys a later version adds.
                _ => {}
            }
        }
        if !whole {
            return None;
        }
        Some(Self {
            path: path?,
            sha256: sha256?,
            remote: Version::of_object(e_tag, version),
        })
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(path: &str) -> BackendPath {
        path.parse().unwrap()
    }

    #[test]
    fn records_round_trip_and_hold_only_for_their_path_and_bytes() {
        let remote = Version::of_object(Some("\"abc\"".into()), Some("7".into()));
        let record = RemoteRecord::new(p("vm/100/owner"), b"root@pam\n", remote.clone());
        let encoded = record.encode().unwrap();
        let text = String::from_utf8(encoded.clone()).unwrap();
        assert!(text.starts_with("keepsake-remote 1\npath vm/100/owner\nsha256 "));
        assert!(text.ends_with("etag \"abc\"\nversion 7\nend\n"), "{text}");
        let decoded = RemoteRecord::decode(&encoded).unwrap();
        assert_eq!(decoded, record);

        let content = Version::of_content(b"root@pam\n");
        assert_eq!(
            record.version_for(&p("vm/100/owner"), &content),
            Some(&remote)
        );
        assert_eq!(record.version_for(&p("vm/101/owner"), &content), None);
        let other = Version::of_content(b"admin@pbs\n");
        assert_eq!(record.version_for(&p("vm/100/owner"), &other), None);
        assert_eq!(record.e_tag(), Some("\"abc\""));

        let bare = RemoteRecord::new(p("a"), b"", Version::of_object(None, None));
        assert_eq!(RemoteRecord::decode(&bare.encode().unwrap()), Some(bare));
    }

    #[test]
    fn damaged_or_foreign_values_are_no_record() {
        let good = RemoteRecord::new(p("a"), b"x", Version::of_object(Some("e".into()), None))
            .encode()
            .unwrap();
        let text = String::from_utf8(good.clone()).unwrap();
        for bad in [
            &b""[..],
            b"keepsake-remote 2\npath a\n",
            &good[..good.len() / 2],
            &good[..good.len() - 4],
            text.replace("path a", "path ../a").as_bytes(),
            text.replace("sha256 ", "sha256 zz").as_bytes(),
            b"\xff\xfe",
        ] {
            assert_eq!(
                RemoteRecord::decode(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let newline =
            RemoteRecord::new(p("a"), b"x", Version::of_object(Some("e\nx".into()), None));
        assert_eq!(newline.encode(), None);
    }
}
