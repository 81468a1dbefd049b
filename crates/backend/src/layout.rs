//! PBS's object key layout in a bucket (spec §9.2).
//!
//! Every key of a datastore lives under `<store>/`: the content (what a local datastore holds
//! outside `.chunks`) under `<store>/.cnt/<relative path>`, chunks under
//! `<store>/.chunks/<4 hex>/<64 hex>`, and the in-use marker at `<store>/.in-use`.
//!
//! ```
//! use keepsake_backend::{BackendPath, ChunkDigest};
//! use keepsake_backend::layout::ObjectLayout;
//!
//! let layout = ObjectLayout::new("store1")?;
//! let owner: BackendPath = "ns/a/vm/100/owner".parse()?;
//! let key = layout.content_key(&owner)?;
//! assert_eq!(key.as_ref(), "store1/.cnt/ns/a/vm/100/owner");
//! assert_eq!(layout.path_of_content_key(&key), Some(owner));
//!
//! let digest: ChunkDigest = "bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8".parse()?;
//! assert_eq!(
//!     layout.chunk_key(&digest).as_ref(),
//!     "store1/.chunks/bb9f/bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8"
//! );
//! # Ok::<(), keepsake_backend::Error>(())
//! ```

use object_store::path::Path;

use crate::chunk::ChunkDigest;
use crate::error::{Error, Result};
use crate::path::{BackendPath, check_component};

/// The folder of content objects (`S3_CONTENT_PREFIX`).
pub const CONTENT_PREFIX: &str = ".cnt";
/// The folder of chunks, in a bucket as on disk.
pub const CHUNKS_PREFIX: &str = crate::chunk::CHUNKS_FOLDER;
/// The empty object that makes a namespace exist in a bucket (`.cnt/ns/a/.namespace`).
pub const NAMESPACE_MARKER: &str = ".namespace";
/// The object that claims a bucket prefix for one datastore (`<store>/.in-use`).
pub const IN_USE_MARKER: &str = ".in-use";
/// S3's limit on a key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// The keys of one datastore (`store`) in a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectLayout {
    store: String,
}

impl ObjectLayout {
    /// The layout for the datastore named `store` (one path component, e.g. PBS's datastore name).
    ///
    /// # Errors
    /// [`Error::RefusedPath`] if `store` is not a single valid component.
    pub fn new(store: &str) -> Result<Self> {
        check_component(store).map_err(|reason| Error::refused(store, reason))?;
        Ok(Self {
            store: store.to_owned(),
        })
    }

    /// The datastore's name, the first component of every key.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// `<store>`: the prefix of every key of this datastore.
    pub fn store_root(&self) -> Path {
        raw_key(self.store.clone())
    }

    /// `<store>/.cnt`: the prefix of every content key.
    pub fn content_root(&self) -> Path {
        raw_key(format!("{}/{CONTENT_PREFIX}", self.store))
    }

    /// `<store>/.in-use`.
    pub fn in_use_key(&self) -> Path {
        raw_key(format!("{}/{IN_USE_MARKER}", self.store))
    }

    /// `<store>/.cnt/<path>` (`<store>/.cnt` for the root).
    ///
    /// # Errors
    /// [`Error::RefusedPath`] if the key would be longer than [`MAX_KEY_LEN`].
    pub fn content_key(&self, path: &BackendPath) -> Result<Path> {
        if path.is_root() {
            return Ok(self.content_root());
        }
        let key = format!("{}/{CONTENT_PREFIX}/{}", self.store, path.as_str());
        if key.len() > MAX_KEY_LEN {
            return Err(Error::refused(
                path.as_str(),
                "the object key would be longer than 1024 bytes",
            ));
        }
        // A BackendPath is stricter than object_store's path rules, so parsing cannot fail;
        // `parse` (not `from`) keeps the key byte for byte, without percent-encoding.
        Path::parse(&key).map_err(|_| Error::refused(path.as_str(), "not a valid object key"))
    }

    /// The relative path of a content key, or `None` if `key` is not a valid content key of this
    /// datastore (another store, a chunk, a key no [`BackendPath`] can name).
    pub fn path_of_content_key(&self, key: &Path) -> Option<BackendPath> {
        let rest = key
            .as_ref()
            .strip_prefix(self.store.as_str())?
            .strip_prefix('/')?
            .strip_prefix(CONTENT_PREFIX)?;
        if rest.is_empty() {
            return Some(BackendPath::root());
        }
        BackendPath::new(rest.strip_prefix('/')?).ok()
    }

    /// `<store>/.chunks`.
    pub fn chunks_root(&self) -> Path {
        raw_key(format!("{}/{CHUNKS_PREFIX}", self.store))
    }

    /// `<store>/.chunks/<4 hex>/<64 hex>`.
    pub fn chunk_key(&self, digest: &ChunkDigest) -> Path {
        let hex = digest.to_string();
        raw_key(format!(
            "{}/{CHUNKS_PREFIX}/{}/{hex}",
            self.store,
            &hex[..4]
        ))
    }

    /// `<store>/.chunks/<4 hex>/<64 hex>.<n>.bad`: the `n`th corrupt copy set aside.
    pub fn bad_chunk_key(&self, digest: &ChunkDigest, n: u8) -> Path {
        let hex = digest.to_string();
        raw_key(format!(
            "{}/{CHUNKS_PREFIX}/{}/{hex}.{n}.bad",
            self.store,
            &hex[..4]
        ))
    }
}

/// A key kept byte for byte. Only called with a validated store name and fixed or validated
/// parts, which object_store's rules (no empty, `.`, `..` or control-character segment) accept;
/// `Path::from` would percent-encode characters such as `%` or `[` instead.
fn raw_key(key: String) -> Path {
    Path::parse(&key).unwrap_or_else(|_| Path::from(key.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_keys_round_trip() {
        let layout = ObjectLayout::new("ds").unwrap();
        assert_eq!(layout.content_root().as_ref(), "ds/.cnt");
        assert_eq!(
            layout.content_key(&BackendPath::root()).unwrap().as_ref(),
            "ds/.cnt"
        );
        let path: BackendPath = "ns/a/ns/b/.namespace".parse().unwrap();
        let key = layout.content_key(&path).unwrap();
        assert_eq!(key.as_ref(), "ds/.cnt/ns/a/ns/b/.namespace");
        assert_eq!(layout.path_of_content_key(&key), Some(path));
        // Characters object_store would percent-encode stay as they are.
        let odd: BackendPath = "vm/100/2024-06-05T15:06:40Z/a%b[1]".parse().unwrap();
        assert_eq!(
            layout.content_key(&odd).unwrap().as_ref(),
            "ds/.cnt/vm/100/2024-06-05T15:06:40Z/a%b[1]"
        );
        assert_eq!(
            layout.path_of_content_key(&layout.content_root()),
            Some(BackendPath::root())
        );
        for foreign in ["ds2/.cnt/vm", "ds/.chunks/abcd", "ds/.cntx/a", "ds"] {
            assert_eq!(
                layout.path_of_content_key(&Path::parse(foreign).unwrap()),
                None,
                "{foreign}"
            );
        }
        assert_eq!(layout.in_use_key().as_ref(), "ds/.in-use");
    }

    #[test]
    fn store_names_are_components() {
        assert!(ObjectLayout::new("").is_err());
        assert!(ObjectLayout::new("a/b").is_err());
        assert!(ObjectLayout::new("..").is_err());
        assert_eq!(ObjectLayout::new("store1").unwrap().store(), "store1");
    }

    #[test]
    fn long_keys_are_refused() {
        let layout = ObjectLayout::new(&"s".repeat(100)).unwrap();
        let long = vec!["x".repeat(200); 5].join("/");
        let path = BackendPath::new(&long).unwrap();
        assert!(matches!(
            layout.content_key(&path),
            Err(Error::RefusedPath { .. })
        ));
    }
}
