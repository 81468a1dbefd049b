//! The byte formats of a Proxmox Backup Server (PBS) datastore's metadata, read and written exactly as
//! PBS does, with typed errors and no panics on hostile input.
//!
//! - [`blob`]: the DataBlob container of every `*.blob` file, chunk and manifest: magic, CRC-32,
//!   zstd (level 1, kept only when smaller), AES-256-GCM with PBS's 16-byte IV, 128 MiB limit.
//! - [`crypt`]: what an encryption key gives: the blob cipher, the id key, key fingerprints
//!   (`aa:bb:…`), chunk digests and the HMAC of manifest signatures.
//! - [`manifest`]: `index.json.blob` as a typed model: files with size and checksum, typed access to
//!   notes, verify state, key fingerprint and upload statistics, PBS's exact JSON text, signatures.
//! - [`index`]: `.fidx` and `.didx` chunk index files, read with every check and written for tests
//!   and writers.
//!
//! Everything here works on bytes in memory (or a `Read`/`Write`); where the bytes live, locking and
//! atomic replacement are `keepsake-backend`'s, `keepsake-lock`'s and `keepsake-datastore`'s jobs.
//!
//! # Example
//!
//! Load a manifest as PBS stored it, change the notes, and produce the bytes to store back:
//!
//! ```
//! use keepsake_hierarchy::BackupDir;
//! use keepsake_manifest::index::{ChunkIndex, FixedIndex, FixedIndexWriter};
//! use keepsake_manifest::manifest::{BackupManifest, CryptMode, FileInfo};
//!
//! // A disk image of 6 MiB in two 4 MiB chunks.
//! let mut writer = FixedIndexWriter::new(6 << 20, 4 << 20, 1_717_600_000)?;
//! writer.push(&[0xaa; 32])?;
//! writer.push(&[0xbb; 32])?;
//! let fidx = FixedIndex::from_bytes(writer.finish()?)?;
//!
//! let snapshot: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse().unwrap();
//! let mut manifest = BackupManifest::new(&snapshot);
//! manifest.add_file(FileInfo::new(
//!     "drive-scsi0.img.fidx",
//!     CryptMode::None,
//!     fidx.archive_size(),
//!     *fidx.index_csum(),
//! )?)?;
//! let stored = manifest.to_blob()?.into_bytes();
//!
//! // Later: read-modify-write, as an `update_manifest` does.
//! let mut loaded = BackupManifest::from_blob_bytes(&stored)?;
//! loaded.set_notes(Some("keep until the upgrade is done"));
//! let updated = loaded.to_blob()?;
//!
//! let reread = BackupManifest::from_blob_bytes(updated.as_bytes())?;
//! assert_eq!(reread.notes()?, Some("keep until the upgrade is done"));
//! assert!(reread.file("drive-scsi0.img.fidx").unwrap().matches(6 << 20, fidx.index_csum()));
//! assert!(reread.to_json().starts_with("{\n  \"backup-id\": \"100\",\n  \"backup-time\": 1717600000,"));
//! # Ok::<(), keepsake_manifest::Error>(())
//! ```
//!
//! # Errors
//!
//! One [`Error`] enum for the crate; [`Error::is_corrupt`] tells damaged input from a missing or wrong
//! key, a bad argument or I/O.

pub mod blob;
mod compression;
pub mod crypt;
mod error;
pub mod index;
pub mod manifest;

pub use error::{Error, Format, Result};
