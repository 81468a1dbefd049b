//! The snapshot manifest, `index.json.blob`: which files a snapshot holds (with size and checksum),
//! free-form `unprotected` data (notes, verify state, upload statistics, key fingerprint) and an
//! optional signature.
//!
//! # JSON text
//!
//! [`BackupManifest::to_json`] writes exactly what PBS writes when it rewrites a manifest: object keys
//! sorted by bytes at every level, serde_json's two-space pretty print, no trailing newline. A manifest
//! PBS wrote, read and written again by keepsake, is byte-identical to PBS's own rewrite.
//!
//! One deliberate difference: PBS reads a manifest into a fixed struct, so a key it does not know
//! (at the top level or in a `files[]` entry) disappears on its next rewrite. keepsake keeps such
//! keys ([`BackupManifest::unknown_fields`], [`FileInfo::unknown_fields`]) and writes them back in
//! sorted position, so a manifest written by a newer PBS survives keepsake's read-modify-write. They
//! are part of the signed content, as a newer writer that knows them would sign them.
//!
//! # Signatures
//!
//! The signature is HMAC-SHA256, keyed with the id key of the encryption key, over the canonical JSON
//! ([`BackupManifest::canonical_json`]: keys sorted, no whitespace, `null` refused) of the manifest
//! without `unprotected` and `signature`. [`BackupManifest::sign`], [`BackupManifest::verify_signature`]
//! and [`BackupManifest::check_fingerprint`] tell a missing key, a wrong key and a wrong signature
//! apart.
//!
//! ```
//! use keepsake_hierarchy::BackupDir;
//! use keepsake_manifest::crypt::CryptConfig;
//! use keepsake_manifest::manifest::{BackupManifest, CryptMode, FileInfo};
//!
//! let snapshot: BackupDir = "vm/100/2024-06-05T15:06:40Z".parse().unwrap();
//! let mut manifest = BackupManifest::new(&snapshot);
//! manifest.add_file(FileInfo::new("qemu-server.conf.blob", CryptMode::None, 103, [0x76; 32])?)?;
//! manifest.set_notes(Some("before the upgrade"));
//!
//! let key = CryptConfig::new([9; 32]);
//! manifest.sign(&key)?;
//! let stored = manifest.to_blob()?;
//!
//! let loaded = BackupManifest::from_blob_bytes(stored.as_bytes())?;
//! loaded.verify_signature(&key)?;
//! assert_eq!(loaded.notes()?, Some("before the upgrade"));
//! assert_eq!(loaded.file("qemu-server.conf.blob").map(|f| f.size()), Some(103));
//! assert!(loaded.verify_signature(&CryptConfig::new([8; 32])).is_err());
//! # Ok::<(), keepsake_manifest::Error>(())
//! ```

mod parse;
mod write;

use std::fmt;

use crate::blob::Compression;
use keepsake_hierarchy::{
    ArchiveKind, BackupDir, BackupGroup, BackupId, BackupTime, BackupType, CLIENT_LOG_BLOB_NAME,
    MANIFEST_BLOB_NAME, check_file_name,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::blob::{BlobCodec, DataBlob};
use crate::crypt::{CryptConfig, Fingerprint};
use crate::error::{Error, Result};

/// `unprotected` key of the free-text snapshot notes.
pub const NOTES_KEY: &str = "notes";
/// `unprotected` key of the last verification's result.
pub const VERIFY_STATE_KEY: &str = "verify_state";
/// `unprotected` key of the fingerprint of the key the backup was made with.
pub const KEY_FINGERPRINT_KEY: &str = "key-fingerprint";
/// `unprotected` key of the upload statistics written when a backup finishes.
pub const CHUNK_UPLOAD_STATS_KEY: &str = "chunk_upload_stats";

/// How an archive was protected by the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CryptMode {
    /// Neither encrypted nor signed (`none`; also what a missing `crypt-mode` means).
    #[default]
    None,
    /// Encrypted (`encrypt`).
    Encrypt,
    /// Signed but not encrypted (`sign-only`).
    SignOnly,
}

impl CryptMode {
    /// The JSON text: `none`, `encrypt` or `sign-only`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CryptMode::None => "none",
            CryptMode::Encrypt => "encrypt",
            CryptMode::SignOnly => "sign-only",
        }
    }
}

impl fmt::Display for CryptMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks that `name` may be listed in a manifest and returns its kind.
///
/// Refused: anything that is not a plain file name (empty, `.`, `..`, a `/` or NUL, over 255 bytes),
/// an extension other than `.fidx`, `.didx` or `.blob`, the manifest itself and the client log.
///
/// ```
/// use keepsake_hierarchy::ArchiveKind;
/// use keepsake_manifest::manifest::check_archive_name;
///
/// assert_eq!(check_archive_name("root.pxar.didx")?, ArchiveKind::DynamicIndex);
/// assert!(check_archive_name("index.json.blob").is_err());
/// assert!(check_archive_name("../x.blob").is_err());
/// assert!(check_archive_name("notes.txt").is_err());
/// # Ok::<(), keepsake_manifest::Error>(())
/// ```
pub fn check_archive_name(name: &str) -> Result<ArchiveKind> {
    let invalid = |reason| Error::InvalidArchiveName {
        name: name.to_owned(),
        reason,
    };
    if name.contains('/') {
        return Err(invalid("it contains '/'"));
    }
    if check_file_name(name).is_err() {
        return Err(invalid("it is not a plain file name"));
    }
    if name == MANIFEST_BLOB_NAME {
        return Err(invalid("the manifest does not list itself"));
    }
    if name == CLIENT_LOG_BLOB_NAME {
        return Err(invalid("the client log is never listed"));
    }
    ArchiveKind::from_file_name(name)
        .map_err(|_| invalid("the extension must be .fidx, .didx or .blob"))
}

/// One entry of a manifest's `files`.
///
/// `size` and `csum` depend on the kind: for a blob, the length and SHA-256 of the raw blob file; for
/// an index, the archive size and the index checksum from its header
/// ([`ChunkIndex::index_csum`](crate::index::ChunkIndex::index_csum)).
#[derive(Debug, Clone, PartialEq)]
pub struct FileInfo {
    filename: String,
    crypt_mode: CryptMode,
    size: u64,
    csum: [u8; 32],
    extra: Map<String, Value>,
}

impl FileInfo {
    /// An entry; fails with [`Error::InvalidArchiveName`] as [`check_archive_name`] says.
    pub fn new(
        filename: impl Into<String>,
        crypt_mode: CryptMode,
        size: u64,
        csum: [u8; 32],
    ) -> Result<Self> {
        let filename = filename.into();
        check_archive_name(&filename)?;
        Ok(Self {
            filename,
            crypt_mode,
            size,
            csum,
            extra: Map::new(),
        })
    }

    /// The archive's file name inside the snapshot folder.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// The archive kind, from the extension.
    pub fn kind(&self) -> ArchiveKind {
        ArchiveKind::from_file_name(&self.filename)
            .unwrap_or_else(|_| unreachable!("file names are checked on construction"))
    }

    /// How the client protected the archive.
    pub fn crypt_mode(&self) -> CryptMode {
        self.crypt_mode
    }

    /// Blob file length, or archive size of an index.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// SHA-256 of the blob file, or the checksum from an index header.
    pub fn csum(&self) -> &[u8; 32] {
        &self.csum
    }

    /// Whether `size` and `csum` are the recorded ones.
    pub fn matches(&self, size: u64, csum: &[u8; 32]) -> bool {
        self.size == size && &self.csum == csum
    }

    /// Keys of this entry that keepsake does not know, kept as read.
    pub fn unknown_fields(&self) -> &Map<String, Value> {
        &self.extra
    }
}

/// Outcome of a verification, as stored in `verify_state.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyOutcome {
    /// Every archive checked out (`ok`).
    Ok,
    /// At least one archive failed (`failed`).
    Failed,
}

/// The last verification of a snapshot: which task ran it and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VerifyState {
    /// The UPID of the verify task.
    pub upid: String,
    /// What it found.
    pub state: VerifyOutcome,
}

/// Upload statistics written when a backup finishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkUploadStats {
    /// Chunks uploaded.
    pub count: u64,
    /// Their plain size in bytes.
    pub size: u64,
    /// Their size as stored (compressed) in bytes.
    pub compressed_size: u64,
    /// How many were already in the datastore.
    pub duplicates: u64,
}

/// A snapshot manifest: the JSON model of `index.json.blob`.
///
/// Built with [`BackupManifest::new`] or read with [`BackupManifest::from_json`] /
/// [`BackupManifest::from_blob_bytes`]; written with [`BackupManifest::to_json`] /
/// [`BackupManifest::to_blob`]. See the [module documentation](self) for the exact text and
/// signatures.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupManifest {
    backup_type: BackupType,
    backup_id: BackupId,
    backup_time: BackupTime,
    files: Vec<FileInfo>,
    unprotected: Map<String, Value>,
    signature: Option<String>,
    extra: Map<String, Value>,
}

impl BackupManifest {
    /// An empty, unsigned manifest for `snapshot`.
    pub fn new(snapshot: &BackupDir) -> Self {
        Self {
            backup_type: snapshot.group().ty(),
            backup_id: snapshot.group().id().clone(),
            backup_time: snapshot.time(),
            files: Vec::new(),
            unprotected: Map::new(),
            signature: None,
            extra: Map::new(),
        }
    }

    /// Parses manifest JSON. Fails with [`Error::Json`] naming the path of the first problem: syntax,
    /// a missing or mistyped field, an invalid type, id, time or file name, a checksum that is not 64
    /// hex digits, a file listed twice, or `unprotected` that is not an object.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        parse::parse(json)
    }

    /// Decodes an `index.json.blob` (any unencrypted blob kind) and parses the JSON in it. An
    /// encrypted blob fails with [`Error::MissingKey`]: PBS never encrypts manifests.
    pub fn from_blob_bytes(raw: &[u8]) -> Result<Self> {
        Self::from_blob_bytes_with(&mut BlobCodec::new(), raw, &mut Vec::new())
    }

    /// As [`BackupManifest::from_blob_bytes`], reusing a codec and a JSON buffer across calls.
    pub fn from_blob_bytes_with(
        codec: &mut BlobCodec,
        raw: &[u8],
        json: &mut Vec<u8>,
    ) -> Result<Self> {
        codec.decode_into(raw, None, json)?;
        Self::from_json(json)
    }

    /// The JSON text PBS writes: keys sorted, two-space pretty print, no trailing newline.
    pub fn to_json(&self) -> String {
        String::from_utf8(write::pretty(self))
            .unwrap_or_else(|_| unreachable!("serde_json writes UTF-8"))
    }

    /// The manifest as PBS stores it: [`BackupManifest::to_json`] in an unencrypted blob, zstd
    /// compressed when that is smaller.
    pub fn to_blob(&self) -> Result<DataBlob> {
        DataBlob::encode(&write::pretty(self), None, Compression::Zstd)
    }

    /// The backup type.
    pub fn backup_type(&self) -> BackupType {
        self.backup_type
    }

    /// The backup id.
    pub fn backup_id(&self) -> &BackupId {
        &self.backup_id
    }

    /// The backup time.
    pub fn backup_time(&self) -> BackupTime {
        self.backup_time
    }

    /// The snapshot the manifest describes.
    pub fn snapshot(&self) -> BackupDir {
        BackupDir::new(
            BackupGroup::from_parts(self.backup_type, self.backup_id.clone()),
            self.backup_time,
        )
    }

    /// The listed files, in manifest order.
    pub fn files(&self) -> &[FileInfo] {
        &self.files
    }

    /// The entry of `filename`, if listed.
    pub fn file(&self, filename: &str) -> Option<&FileInfo> {
        self.files.iter().find(|f| f.filename == filename)
    }

    /// Appends an entry; [`Error::DuplicateFile`] if its name is already listed.
    pub fn add_file(&mut self, info: FileInfo) -> Result<()> {
        if self.file(&info.filename).is_some() {
            return Err(Error::DuplicateFile {
                name: info.filename,
            });
        }
        self.files.push(info);
        Ok(())
    }

    /// Removes and returns the entry of `filename`, if listed.
    pub fn remove_file(&mut self, filename: &str) -> Option<FileInfo> {
        let pos = self.files.iter().position(|f| f.filename == filename)?;
        Some(self.files.remove(pos))
    }

    /// The free-form `unprotected` object (not covered by the signature).
    pub fn unprotected(&self) -> &Map<String, Value> {
        &self.unprotected
    }

    /// The `unprotected` object, for keys without a typed accessor.
    pub fn unprotected_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.unprotected
    }

    /// Top-level keys keepsake does not know, kept as read (see the [module documentation](self)).
    pub fn unknown_fields(&self) -> &Map<String, Value> {
        &self.extra
    }

    /// The stored signature (64 lowercase hex digits when PBS or keepsake wrote it), if signed.
    pub fn signature(&self) -> Option<&str> {
        self.signature.as_deref()
    }

    fn typed<'a, T: Deserialize<'a>>(&'a self, key: &str) -> Result<Option<T>> {
        match self.unprotected.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|e| Error::json(format!("unprotected.{key}"), e)),
        }
    }

    fn set_typed<T: Serialize>(&mut self, key: &str, value: Option<T>) {
        match value {
            Some(value) => {
                let value = serde_json::to_value(value)
                    .unwrap_or_else(|_| unreachable!("plain structs always serialise"));
                self.unprotected.insert(key.to_owned(), value);
            }
            None => {
                self.unprotected.remove(key);
            }
        }
    }

    /// The snapshot notes (`unprotected.notes`); [`Error::Json`] if the value is not a string.
    pub fn notes(&self) -> Result<Option<&str>> {
        self.typed(NOTES_KEY)
    }

    /// Sets the notes, or removes them with `None`.
    pub fn set_notes(&mut self, notes: Option<&str>) {
        self.set_typed(NOTES_KEY, notes);
    }

    /// The last verification (`unprotected.verify_state`).
    pub fn verify_state(&self) -> Result<Option<VerifyState>> {
        self.typed(VERIFY_STATE_KEY)
    }

    /// Records a verification, or removes the record with `None`.
    pub fn set_verify_state(&mut self, state: Option<&VerifyState>) {
        self.set_typed(VERIFY_STATE_KEY, state);
    }

    /// The fingerprint of the key the backup was made with (`unprotected.key-fingerprint`).
    pub fn key_fingerprint(&self) -> Result<Option<Fingerprint>> {
        self.typed(KEY_FINGERPRINT_KEY)
    }

    /// Sets or removes the key fingerprint.
    pub fn set_key_fingerprint(&mut self, fingerprint: Option<Fingerprint>) {
        self.set_typed(KEY_FINGERPRINT_KEY, fingerprint);
    }

    /// The upload statistics (`unprotected.chunk_upload_stats`).
    pub fn chunk_upload_stats(&self) -> Result<Option<ChunkUploadStats>> {
        self.typed(CHUNK_UPLOAD_STATS_KEY)
    }

    /// Sets or removes the upload statistics.
    pub fn set_chunk_upload_stats(&mut self, stats: Option<ChunkUploadStats>) {
        self.set_typed(CHUNK_UPLOAD_STATS_KEY, stats);
    }

    /// The content the signature covers: canonical JSON (keys sorted, no whitespace) of the manifest
    /// without `unprotected` and `signature`. [`Error::NullInSignedContent`] if an unknown field holds
    /// a `null`, which canonical JSON refuses.
    pub fn canonical_json(&self) -> Result<Vec<u8>> {
        write::canonical(self)
    }

    /// The signature `key` gives the current content.
    pub fn compute_signature(&self, key: &CryptConfig) -> Result<[u8; 32]> {
        Ok(key.compute_auth_tag(&self.canonical_json()?))
    }

    /// Signs the manifest with `key` as a PBS client does: stores the signature and records the key's
    /// fingerprint in `unprotected.key-fingerprint`.
    pub fn sign(&mut self, key: &CryptConfig) -> Result<()> {
        let signature = self.compute_signature(key)?;
        self.signature = Some(hex::encode(signature));
        self.set_key_fingerprint(Some(key.fingerprint()));
        Ok(())
    }

    /// Removes the signature (and keeps `unprotected` as it is).
    pub fn clear_signature(&mut self) {
        self.signature = None;
    }

    /// Checks the recorded key fingerprint against the key at hand, as PBS does before using a
    /// manifest: [`Error::MissingKey`] if the manifest names a key and none is given,
    /// [`Error::WrongKey`] if it names another key. No recorded fingerprint is fine either way.
    pub fn check_fingerprint(&self, key: Option<&CryptConfig>) -> Result<()> {
        let Some(recorded) = self.key_fingerprint()? else {
            return Ok(());
        };
        match key {
            None => Err(Error::MissingKey {
                fingerprint: Some(recorded),
            }),
            Some(key) if key.fingerprint() != recorded => Err(Error::WrongKey {
                manifest: recorded,
                given: key.fingerprint(),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Verifies the manifest with `key`, as PBS's reader does: [`Error::WrongKey`] if the recorded
    /// fingerprint names another key, then [`Error::WrongSignature`] if a stored signature does not
    /// match the content. An unsigned manifest passes (check [`BackupManifest::signature`] to demand
    /// one).
    pub fn verify_signature(&self, key: &CryptConfig) -> Result<()> {
        self.check_fingerprint(Some(key))?;
        let Some(stored) = &self.signature else {
            return Ok(());
        };
        let expected = hex::encode(self.compute_signature(key)?);
        if *stored != expected {
            return Err(Error::WrongSignature);
        }
        Ok(())
    }
}
