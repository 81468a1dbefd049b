//! PBS's `.in-use` marker of a datastore in object storage (`<store>/.in-use`, JSON
//! `{"hostname": "<node name>"}`), as the [`Backend`](crate::Backend) trait reports it: creating a
//! datastore refuses a bucket whose marker exists, and opening one requires the marker (or content)
//! in the bucket, so that a wrong bucket or name is an error and not an empty datastore.

use std::fmt;

/// What a bucket's `.in-use` marker says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InUse {
    /// There is no marker.
    NoMarker,
    /// The marker names this host (PBS's node name).
    Host(String),
    /// There is a marker, but it names no host (not JSON, or no `hostname`).
    Unnamed,
}

impl InUse {
    /// Whether there is a marker.
    pub fn is_marked(&self) -> bool {
        !matches!(self, InUse::NoMarker)
    }

    /// From the marker's bytes (PBS writes `{"hostname": …}`).
    pub fn from_marker(bytes: &[u8]) -> Self {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v.get("hostname")?.as_str().map(str::to_owned))
            .filter(|host| !host.is_empty())
            .map_or(InUse::Unnamed, InUse::Host)
    }

    /// The marker's bytes for `hostname`, as PBS writes them.
    pub fn marker_for(hostname: &str) -> Vec<u8> {
        serde_json::json!({ "hostname": hostname })
            .to_string()
            .into_bytes()
    }
}

impl fmt::Display for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InUse::NoMarker => f.write_str("not in use"),
            InUse::Host(host) => write!(f, "in use by host {host}"),
            InUse::Unnamed => f.write_str("in use"),
        }
    }
}

/// The bucket side of a datastore in object storage ([`Backend::bucket_state`]), read from the
/// bucket itself, never from a cache.
///
/// [`Backend::bucket_state`]: crate::Backend::bucket_state
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketState {
    /// PBS's `.in-use` marker.
    pub in_use: InUse,
    /// Whether anything is stored under the datastore's content prefix (`<store>/.cnt/`). Only
    /// asked when there is no marker (a marked bucket is a datastore either way).
    pub holds_content: bool,
}

impl BucketState {
    /// Whether the bucket holds this datastore: its marker, or content.
    pub fn holds_datastore(&self) -> bool {
        self.in_use.is_marked() || self.holds_content
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_read_as_pbs_writes_them() {
        assert_eq!(
            InUse::from_marker(&InUse::marker_for("pbs1")),
            InUse::Host("pbs1".to_owned())
        );
        assert_eq!(
            InUse::from_marker(br#"{"hostname":"pbs2"}"#),
            InUse::Host("pbs2".to_owned())
        );
        assert_eq!(InUse::from_marker(b"{}"), InUse::Unnamed);
        assert_eq!(InUse::from_marker(br#"{"hostname":""}"#), InUse::Unnamed);
        assert_eq!(InUse::from_marker(b"not json"), InUse::Unnamed);
        assert_eq!(InUse::Host("a".to_owned()).to_string(), "in use by host a");
        assert!(!InUse::NoMarker.is_marked());
    }
}
