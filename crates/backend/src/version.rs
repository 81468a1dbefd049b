//! [`Version`]: what compare-and-swap compares.

use std::fmt;

use sha2::{Digest, Sha256};

/// The version of a file, as returned by reads and writes and taken by
/// [`WriteMode::Update`](crate::WriteMode::Update).
///
/// Opaque on purpose: compare versions for equality, never order them. What is inside depends on
/// the backend:
/// - local filesystem: the length and SHA-256 of the content, so equal bytes are the same version
///   and a file replaced by identical bytes still matches (harmless for read-modify-write: the
///   caller's change was made on the same bytes);
/// - object stores: the ETag and, where the store keeps versions, the object version;
/// - cached backend: the version in the bucket.
///
/// A version from one backend never matches a file of another kind of backend.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Content {
        len: u64,
        sha256: [u8; 32],
    },
    // Only object stores (feature `s3`) make these.
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    Object {
        e_tag: Option<String>,
        version: Option<String>,
    },
}

impl Version {
    /// The version of a local file holding exactly `data`.
    pub(crate) fn of_content(data: &[u8]) -> Self {
        let digest = Sha256::digest(data);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&digest);
        Version(Repr::Content {
            len: data.len() as u64,
            sha256,
        })
    }

    /// The version of an object as the object store reported it.
    #[cfg(any(feature = "s3", test))]
    pub(crate) fn of_object(e_tag: Option<String>, version: Option<String>) -> Self {
        Version(Repr::Object { e_tag, version })
    }

    /// The SHA-256 of the content, for versions of local files.
    #[cfg(feature = "s3")]
    pub(crate) fn content_sha256(&self) -> Option<&[u8; 32]> {
        match &self.0 {
            Repr::Content { sha256, .. } => Some(sha256),
            Repr::Object { .. } => None,
        }
    }

    /// The ETag, for versions that come from an object store.
    pub fn e_tag(&self) -> Option<&str> {
        match &self.0 {
            Repr::Object { e_tag, .. } => e_tag.as_deref(),
            Repr::Content { .. } => None,
        }
    }

    /// The object version, for versions that come from a versioned object store.
    pub fn object_version(&self) -> Option<&str> {
        match &self.0 {
            Repr::Object { version, .. } => version.as_deref(),
            Repr::Content { .. } => None,
        }
    }

    /// What object_store's conditional update needs; `None` for a local version.
    #[cfg(feature = "s3")]
    pub(crate) fn to_update_version(&self) -> Option<object_store::UpdateVersion> {
        match &self.0 {
            Repr::Object { e_tag, version } => Some(object_store::UpdateVersion {
                e_tag: e_tag.clone(),
                version: version.clone(),
            }),
            Repr::Content { .. } => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Content { len, sha256 } => {
                write!(f, "{len}:")?;
                for byte in &sha256[..8] {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
            Repr::Object { e_tag, version } => {
                write!(f, "etag {}", e_tag.as_deref().unwrap_or("-"))?;
                if let Some(version) = version {
                    write!(f, " version {version}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_versions_follow_the_bytes() {
        assert_eq!(Version::of_content(b"a"), Version::of_content(b"a"));
        assert_ne!(Version::of_content(b"a"), Version::of_content(b"b"));
        assert_ne!(
            Version::of_content(b""),
            Version::of_object(None, None),
            "kinds never match"
        );
        assert_eq!(Version::of_content(b"a").e_tag(), None);
        let object = Version::of_object(Some("\"x\"".into()), Some("3".into()));
        assert_eq!(object.e_tag(), Some("\"x\""));
        assert_eq!(object.object_version(), Some("3"));
        assert_eq!(object.to_string(), "etag \"x\" version 3");
    }
}
