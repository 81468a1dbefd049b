//! The chunk store: inserting, finding and reading chunks by digest. Chunks are DataBlobs at
//! `.chunks/<first 4 hex>/<64 hex>`, shared by every snapshot of the datastore; the backend
//! decides where they live (a local folder, or the bucket with the cache's copy or marker).

use keepsake_backend::{BackendPath, ChunkDigest, ChunkInsert};
use keepsake_manifest::blob::{Compression, DataBlob};
use keepsake_manifest::crypt::chunk_digest;
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT, utimensat};
use rustix::io::Errno;

use crate::error::{ArgumentProblem, Error, Result};
use crate::store::{Access, CHUNK_DIR_NAME, DataStore};

/// What [`DataStore::touch_local`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Touch {
    /// The atime is now.
    Touched,
    /// There is no such local file.
    Missing,
    /// The datastore has no local folder (a bare object store): nothing to touch.
    NoLocalFolder,
}

/// Whether chunks and blobs written are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encryption {
    /// Written in the clear (compressed when that makes them smaller).
    None,
    /// Encrypted with the store's key ([`DataStoreBuilder::key`](crate::DataStoreBuilder::key));
    /// without one, writing fails with [`ArgumentProblem::NoKey`].
    StoreKey,
}

/// The path of a chunk in the chunk store: `.chunks/<first 4 hex>/<64 hex>`.
pub fn chunk_path(digest: &[u8; 32]) -> String {
    let hex = hex::encode(digest);
    format!("{CHUNK_DIR_NAME}/{}/{hex}", &hex[..4])
}

/// What inserting a chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsertedChunk {
    /// The chunk's digest (SHA-256 of the plain data, keyed when encrypted).
    pub digest: [u8; 32],
    /// The chunk was already in the store (nothing was written).
    pub duplicate: bool,
    /// Size of the stored blob.
    pub encoded_size: u64,
}

impl DataStore {
    /// Inserts a chunk into `.chunks` as a DataBlob (compressed when smaller; encrypted with the
    /// store's key with [`Encryption::StoreKey`]), create-only: a chunk that exists already is a
    /// duplicate and is not rewritten. The prefix folder is made if missing.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] ([`ArgumentProblem::NoKey`]) for encryption without a key;
    /// [`Error::Encode`]; [`Error::Backend`].
    pub fn insert_chunk(&self, data: &[u8], encryption: Encryption) -> Result<InsertedChunk> {
        let crypt = match encryption {
            Encryption::StoreKey => Some(
                self.crypt_config()
                    .ok_or(Error::InvalidArgument(ArgumentProblem::NoKey))?,
            ),
            Encryption::None => None,
        };
        let digest = chunk_digest(data, crypt);
        let chunk = ChunkDigest::new(digest);
        let rel = chunk_path(&digest);
        // Skip the encoding when the chunk is known (PBS checks before it uploads, too). The
        // check and the touch are one step for this process's GC sweep (the chunk shard lock):
        // a chunk found here cannot be swept before its new atime protects it.
        if self.chunk_known(&chunk)? {
            return Ok(InsertedChunk {
                digest,
                duplicate: true,
                encoded_size: 0,
            });
        }
        let blob =
            DataBlob::encode(data, crypt, Compression::Zstd).map_err(|source| Error::Encode {
                path: rel.clone(),
                source,
            })?;
        let encoded_size = blob.as_bytes().len() as u64;
        Ok(match self.store_encoded_chunk(&chunk, blob.as_bytes())? {
            ChunkInsert::Stored => InsertedChunk {
                digest,
                duplicate: false,
                encoded_size,
            },
            ChunkInsert::Duplicate => InsertedChunk {
                digest,
                duplicate: true,
                encoded_size: 0,
            },
        })
    }

    /// Stores a chunk's encoded bytes (a DataBlob) with the backend's create-only insert.
    /// Behind a cache, the S3 GC of this process decides and deletes a batch of objects while it
    /// holds their shards: an upload that the bucket answers "duplicate" must not fall between
    /// its decision and its delete, so the insert runs under the chunk's shard there.
    pub(crate) fn store_encoded_chunk(
        &self,
        chunk: &ChunkDigest,
        blob: &[u8],
    ) -> Result<ChunkInsert> {
        let insert = || self.backend().insert_chunk(chunk, blob);
        let inserted = match self.process_lock()? {
            Some(lock) if !self.backend().capabilities().own_authority => {
                lock.with_chunk(chunk.as_bytes(), insert)
            }
            _ => insert(),
        };
        inserted.map_err(|e| Error::backend(&chunk_path(chunk.as_bytes()), e))
    }

    /// Whether the chunk is stored, touching it if so ([`DataStore::touch_if_stored`]) under
    /// this process's GC chunk shard lock: the check and the touch are one step for a sweep.
    pub(crate) fn chunk_known(&self, chunk: &ChunkDigest) -> Result<bool> {
        match self.process_lock()? {
            Some(lock) => lock.with_chunk(chunk.as_bytes(), || self.touch_if_stored(chunk)),
            None => self.touch_if_stored(chunk),
        }
    }

    /// Whether the chunk is stored; if so, its file's atime (on an S3 datastore: the cache's copy
    /// or marker) is set to now, as PBS's insert of an existing chunk does, so that a GC's
    /// sweep running meanwhile keeps it. A chunk the bucket has but the cache does not counts as
    /// missing here: inserting it again stores the cache copy that GC's marker check needs.
    fn touch_if_stored(&self, chunk: &ChunkDigest) -> Result<bool> {
        let rel = chunk.local_path();
        if !self
            .backend()
            .chunk_exists(chunk)
            .map_err(|e| Error::backend(rel.as_str(), e))?
        {
            return Ok(false);
        }
        if self.access() == Access::ReadOnly {
            return Ok(true);
        }
        match self.touch_local(&rel)? {
            Touch::Touched | Touch::NoLocalFolder => Ok(true),
            Touch::Missing => Ok(false),
        }
    }

    /// Sets the atime of the local file at `rel` to now, leaving its mtime (`utimensat` with
    /// `UTIME_NOW`/`UTIME_OMIT`, not following a link): GC's mark.
    pub(crate) fn touch_local(&self, rel: &BackendPath) -> Result<Touch> {
        let Some(local) = self.backend().host_local() else {
            return Ok(Touch::NoLocalFolder);
        };
        let file = local.local_path(rel);
        let now = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_NOW,
            },
            last_modification: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
        };
        match utimensat(CWD, &file, &now, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(()) => Ok(Touch::Touched),
            Err(Errno::NOENT) => Ok(Touch::Missing),
            Err(e) => Err(Error::Io {
                path: file,
                source: e.into(),
            }),
        }
    }

    /// Whether a chunk is in the chunk store (on an S3 datastore: in the cache, or else in the
    /// bucket).
    pub fn chunk_exists(&self, digest: &[u8; 32]) -> Result<bool> {
        self.backend()
            .chunk_exists(&ChunkDigest::new(*digest))
            .map_err(|e| Error::backend(&chunk_path(digest), e))
    }

    /// Reads a chunk's stored bytes (a DataBlob; on an S3 datastore from the cache, or else from
    /// the bucket).
    pub fn read_chunk(&self, digest: &[u8; 32]) -> Result<Vec<u8>> {
        let rel = chunk_path(digest);
        self.backend()
            .read_chunk(&ChunkDigest::new(*digest))
            .map_err(|e| Error::backend(&rel, e))
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_path;

    #[test]
    fn chunk_paths() {
        let mut d = [0u8; 32];
        d[0] = 0xbb;
        d[1] = 0x9f;
        assert_eq!(
            chunk_path(&d),
            format!(".chunks/bb9f/bb9f{}", "0".repeat(60))
        );
    }
}
