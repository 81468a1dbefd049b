//! [`CacheIdentity`]: whose cache a local folder is.
//!
//! Plain data only (no I/O, no errors), so that the error module can name it; the marker file is
//! read and written by the cached backend.

use std::fmt;

/// Where the S3 cache marker lives in a cache folder: `.keepsake/cache.json`.
pub const CACHE_MARKER: &str = ".keepsake/cache.json";

/// The bucket datastore a cache folder belongs to: endpoint, bucket and store (the key prefix).
///
/// Written by [`CachedBackend::claim`](crate::CachedBackend::claim) into
/// [`CACHE_MARKER`] as `{"endpoint": …, "bucket": …, "store": …}` (`endpoint` is `null` for
/// AWS), checked by [`CachedBackend::open`](crate::CachedBackend::open), and read by
/// [`cache_identity`](crate::cache_identity) so that a local open can refuse a folder that is an
/// S3 cache.
///
/// ```
/// use keepsake_backend::CacheIdentity;
///
/// let minio = CacheIdentity::new(Some("http://minio:9000/".into()), "backups", "store1");
/// assert_eq!(minio.endpoint.as_deref(), Some("http://minio:9000"));
/// assert_eq!(minio.to_string(), "bucket `backups` at http://minio:9000, store `store1`");
/// let aws = CacheIdentity::new(None, "backups", "store1");
/// assert_eq!(aws.to_string(), "bucket `backups` on AWS, store `store1`");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct CacheIdentity {
    /// The endpoint URL without a trailing `/`; `None` for AWS (the region picks the endpoint);
    /// `"memory"` for an in-memory store.
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// The datastore's name: the first component of every key.
    pub store: String,
}

impl CacheIdentity {
    /// An identity; a trailing `/` of the endpoint is dropped, so that `http://host:9000/` and
    /// `http://host:9000` are the same endpoint.
    pub fn new(
        endpoint: Option<String>,
        bucket: impl Into<String>,
        store: impl Into<String>,
    ) -> Self {
        let endpoint = endpoint.map(|e| e.trim_end_matches('/').to_owned());
        Self {
            endpoint,
            bucket: bucket.into(),
            store: store.into(),
        }
    }
}

impl fmt::Display for CacheIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Some(endpoint) => write!(f, "bucket `{}` at {endpoint}", self.bucket)?,
            None => write!(f, "bucket `{}` on AWS", self.bucket)?,
        }
        write!(f, ", store `{}`", self.store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_print_and_round_trip_through_json() {
        let aws = CacheIdentity::new(None, "b", "s");
        assert_eq!(aws.to_string(), "bucket `b` on AWS, store `s`");
        let json = serde_json::to_string(&aws).unwrap();
        assert_eq!(json, r#"{"endpoint":null,"bucket":"b","store":"s"}"#);
        assert_eq!(serde_json::from_str::<CacheIdentity>(&json).unwrap(), aws);
        assert_eq!(
            CacheIdentity::new(Some("http://h:1/".into()), "b", "s"),
            CacheIdentity::new(Some("http://h:1".into()), "b", "s")
        );
        // Fields a later version adds do not make an identity unreadable.
        let later = r#"{"endpoint":"http://h:1","bucket":"b","store":"s","since":1}"#;
        assert_eq!(
            serde_json::from_str::<CacheIdentity>(later).unwrap(),
            CacheIdentity::new(Some("http://h:1".into()), "b", "s")
        );
    }
}
