//! [`ChunkDigest`]: what names a chunk, locally and in a bucket.
//!
//! Apart from the bucket's key layout (`layout`, feature `s3`) because every backend stores
//! chunks ([`Backend::insert_chunk`](crate::Backend::insert_chunk)).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::path::BackendPath;

/// The folder of chunks, in a local datastore as in a bucket.
pub(crate) const CHUNKS_FOLDER: &str = ".chunks";

/// How many `<digest>.<n>.bad` names a chunk has for corrupt copies set aside (`n` in `0..10`),
/// as PBS numbers them.
pub const BAD_CHUNK_SLOTS: u8 = 10;

/// A chunk's SHA-256 digest, which names it: `.chunks/<first 2 bytes as 4 hex>/<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkDigest([u8; 32]);

impl ChunkDigest {
    /// The digest with these bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 4-hex-digit folder the chunk lives in.
    pub fn prefix(&self) -> String {
        self.to_string()[..4].to_owned()
    }

    /// `.chunks/<4 hex>/<64 hex>`: the chunk's path in a local datastore.
    pub fn local_path(&self) -> BackendPath {
        let hex = self.to_string();
        BackendPath::new(&format!("{CHUNKS_FOLDER}/{}/{hex}", &hex[..4]))
            .expect("hex digits always make a valid path")
    }

    /// `.chunks/<4 hex>/<64 hex>.<n>.bad`: where the `n`th corrupt copy of the chunk is set aside
    /// (PBS's name; see [`Backend::quarantine_chunk`](crate::Backend::quarantine_chunk)).
    pub fn bad_path(&self, n: u8) -> BackendPath {
        let hex = self.to_string();
        BackendPath::new(&format!("{CHUNKS_FOLDER}/{}/{hex}.{n}.bad", &hex[..4]))
            .expect("hex digits and a number always make a valid path")
    }
}

impl FromStr for ChunkDigest {
    type Err = Error;

    /// Parses 64 lowercase hex digits, as PBS writes them.
    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::refused(s, "a chunk digest is 64 lowercase hex digits");
        if s.len() != 64 {
            return Err(invalid());
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            let digit = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            *byte =
                digit(pair[0]).ok_or_else(invalid)? << 4 | digit(pair[1]).ok_or_else(invalid)?;
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkDigest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_digests() {
        let hex = "bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8";
        let digest: ChunkDigest = hex.parse().unwrap();
        assert_eq!(digest.to_string(), hex);
        assert_eq!(digest.prefix(), "bb9f");
        assert_eq!(digest.as_bytes()[0], 0xbb);
        assert_eq!(digest.local_path().as_str(), format!(".chunks/bb9f/{hex}"));
        assert_eq!(ChunkDigest::new(*digest.as_bytes()), digest);
        assert!(hex.to_uppercase().parse::<ChunkDigest>().is_err());
        assert!(hex[..63].parse::<ChunkDigest>().is_err());
        assert!(format!("{}g", &hex[..63]).parse::<ChunkDigest>().is_err());
    }
}
