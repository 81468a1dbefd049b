//! The one error type of this crate.
//!
//! Rules kept here:
//! - Every failure is a variant a caller can match on; corrupt input never panics.
//! - Variants carry what was found (lengths, magic bytes, checksums, the JSON path), never key material.
//! - [`Error::is_corrupt`] groups the variants that mean "these bytes are damaged or not what they claim
//!   to be", so that a caller (verify, a datastore) can treat them alike without listing them.
//! - I/O errors only come from the `Read`/`Write` entry points and are passed through unchanged.

use std::fmt;

use crate::crypt::Fingerprint;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which byte format an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// A DataBlob (`*.blob`, chunks, the manifest's container).
    Blob,
    /// A fixed-size chunk index (`*.fidx`).
    FixedIndex,
    /// A dynamic-size chunk index (`*.didx`).
    DynamicIndex,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Blob => "data blob",
            Format::FixedIndex => "fixed index",
            Format::DynamicIndex => "dynamic index",
        })
    }
}

/// Everything that can go wrong while reading or writing blobs, manifests, keys and index files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is shorter than the smallest valid value of its format.
    #[error("{format} is only {len} bytes long, at least {min} are needed")]
    TooSmall {
        /// The format that was expected.
        format: Format,
        /// The length found.
        len: u64,
        /// The smallest valid length.
        min: u64,
    },

    /// The first 8 bytes are none of the magic numbers of the format.
    #[error("{format} starts with unknown magic bytes {}", hex::encode(found))]
    WrongMagic {
        /// The format that was expected.
        format: Format,
        /// The 8 bytes found.
        found: [u8; 8],
    },

    /// The CRC-32 stored in a blob header does not match its payload.
    #[error(
        "data blob checksum mismatch: header says {stored:#010x}, payload gives {computed:#010x}"
    )]
    CrcMismatch {
        /// The CRC-32 in the header.
        stored: u32,
        /// The CRC-32 of the bytes after the header.
        computed: u32,
    },

    /// Data is larger than a blob may hold (128 MiB), before encoding or after decoding.
    #[error("{len} bytes exceed the data blob limit of {limit} bytes")]
    TooLarge {
        /// The size found, or a lower bound of it when decoding stopped at the limit.
        len: u64,
        /// The limit ([`MAX_BLOB_SIZE`](crate::blob::MAX_BLOB_SIZE) for data).
        limit: u64,
    },

    /// Encrypted content was met, or a manifest names the key it was signed with, and no key was given.
    #[error("{}", match fingerprint {
        Some(fp) => format!("a key is needed: the manifest was written with key {fp}"),
        None => "a key is needed: the data blob is encrypted".to_owned(),
    })]
    MissingKey {
        /// The manifest's `key-fingerprint`, when the error is about a manifest.
        fingerprint: Option<Fingerprint>,
    },

    /// AES-GCM refused the ciphertext: a different key, or the blob was changed after it was written.
    #[error("data blob could not be decrypted: wrong key or altered ciphertext")]
    DecryptionFailed,

    /// The zstd payload of a blob is not a valid sequence of zstd frames.
    #[error("data blob holds invalid zstd data: {reason}")]
    Decompression {
        /// What zstd reported.
        reason: String,
    },

    /// The operating system's random source failed (needed for IVs and index UUIDs).
    #[error("random number source failed: {0}")]
    Random(getrandom::Error),

    /// A manifest (or a value in it) is not the JSON it should be.
    #[error("manifest JSON is invalid at {path}: {reason}")]
    Json {
        /// Where: `.` for the document, else a path such as `files[1].csum` or `unprotected.notes`.
        path: String,
        /// What is wrong.
        reason: String,
    },

    /// Signed manifest content holds a `null`, which canonical JSON cannot express.
    #[error("signed manifest content holds null at {path}")]
    NullInSignedContent {
        /// Where the `null` is, as in [`Error::Json`].
        path: String,
    },

    /// A file name cannot be listed in a manifest.
    #[error("{name:?} cannot be listed in a manifest: {reason}")]
    InvalidArchiveName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A file is listed in a manifest twice.
    #[error("{name:?} is listed in the manifest twice")]
    DuplicateFile {
        /// The name listed twice.
        name: String,
    },

    /// A text is not a key fingerprint (32 bytes as hex, `:` separators optional).
    #[error("{input:?} is not a key fingerprint")]
    InvalidFingerprint {
        /// The text given.
        input: String,
    },

    /// The file length of an index does not agree with its header.
    #[error("{format} of {len} bytes has an invalid size: {reason}")]
    BadIndexSize {
        /// The index format.
        format: Format,
        /// The length found.
        len: u64,
        /// What length was expected.
        reason: String,
    },

    /// The checksum in an index header does not match its entries.
    #[error(
        "{format} checksum mismatch: header says {}, entries give {}",
        hex::encode(stored),
        hex::encode(computed)
    )]
    IndexChecksumMismatch {
        /// The index format.
        format: Format,
        /// The checksum in the header.
        stored: [u8; 32],
        /// The checksum of the entries.
        computed: [u8; 32],
    },

    /// An index header or entry holds an impossible value (chunk size 0, decreasing offsets, …).
    #[error("{format} is invalid: {reason}")]
    InvalidIndex {
        /// The index format.
        format: Format,
        /// What is wrong.
        reason: String,
    },

    /// An argument cannot be used: a chunk size of 0, too many or too few digests for an index writer.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What is wrong.
        reason: String,
    },

    /// The manifest was written with a different key than the one given.
    #[error("wrong key: the manifest was written with key {manifest}, the key given is {given}")]
    WrongKey {
        /// The manifest's `key-fingerprint`.
        manifest: Fingerprint,
        /// The fingerprint of the key given.
        given: Fingerprint,
    },

    /// The manifest's signature does not match its content under the key given.
    #[error("manifest signature does not match its content")]
    WrongSignature,

    /// A password-protected key file was opened without a passphrase.
    #[error(
        "the key is protected by a password and none was given{}",
        hint_suffix(hint)
    )]
    PassphraseRequired {
        /// The key file's password hint, if it has one.
        hint: Option<String>,
    },

    /// A passphrase shorter than PBS accepts.
    #[error("passphrase is too short: {len} bytes, at least {min} are needed")]
    PassphraseTooShort {
        /// The length given, in bytes.
        len: usize,
        /// The shortest passphrase accepted ([`MIN_PASSPHRASE_LEN`](crate::keyfile::MIN_PASSPHRASE_LEN)).
        min: usize,
    },

    /// The passphrase does not open the key file: the AES-GCM tag of the encrypted key does not match
    /// (a wrong passphrase, or an altered file).
    #[error("unable to decrypt key (wrong password?){}", hint_suffix(hint))]
    WrongPassphrase {
        /// The key file's password hint, if it has one.
        hint: Option<String>,
    },

    /// The fingerprint written in a key file is not the fingerprint of the key it holds.
    #[error("key file contains wrong fingerprint: it names {stored}, its key is {computed}")]
    KeyFingerprintMismatch {
        /// The fingerprint written in the file.
        stored: Fingerprint,
        /// The fingerprint of the key the file holds.
        computed: Fingerprint,
    },

    /// A key file holds a key that is not 32 bytes long.
    #[error("key file holds a key of {len} bytes, an encryption key has 32")]
    KeyLength {
        /// The length of the key found (after decryption, for a protected key).
        len: usize,
    },

    /// The `data` of a password-protected key file is too short to hold an IV, a tag and a key.
    #[error("key file data is {len} bytes, an encrypted key needs at least {min}")]
    KeyDataTooShort {
        /// The length of the decoded `data`.
        len: usize,
        /// The shortest valid length (IV, tag and one byte).
        min: usize,
    },

    /// A key file is not the JSON of a key config (not JSON, a field missing or of the wrong type,
    /// an unknown key derivation function).
    #[error("key file is not a valid key config: {reason}")]
    KeyFileJson {
        /// What serde_json reported.
        reason: String,
    },

    /// A field of a key file that must be base64 is not standard base64.
    #[error("key file field `{field}` is not valid base64")]
    KeyFileBase64 {
        /// The field (`data` or `kdf.salt`).
        field: &'static str,
    },

    /// A time in a key file is not RFC 3339 with seconds and an offset.
    #[error("key file field `{field}` is not a time such as 2020-06-26T13:56:05+02:00: {value:?}")]
    KeyFileTime {
        /// The field (`created` or `modified`).
        field: &'static str,
        /// The text found.
        value: String,
    },

    /// The key derivation parameters of a key file are invalid, or so costly that reading the file
    /// would exhaust memory or time (a hostile file).
    #[error("key file's key derivation parameters are refused: {reason}")]
    KdfParams {
        /// Which rule they break.
        reason: &'static str,
    },

    /// A password hint that a key file cannot hold.
    #[error("invalid password hint: {reason}")]
    InvalidHint {
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// Reading or writing a key file failed.
    #[error("key file {}", path.display())]
    KeyFileIo {
        /// The key file.
        path: std::path::PathBuf,
        /// What the operating system reported (`AlreadyExists` when storing over an existing file).
        #[source]
        source: std::io::Error,
    },

    /// Reading or writing through a `Read`/`Write` failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the error says the bytes are damaged or are not what they claim to be (wrong magic,
    /// CRC, zstd, JSON, index size or checksum, failed decryption, a wrong signature, a key file
    /// that is not a key config or contradicts itself), as opposed to a missing or wrong key or
    /// passphrase, an invalid argument, refused key derivation parameters, or I/O.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            Error::TooSmall { .. }
                | Error::WrongMagic { .. }
                | Error::CrcMismatch { .. }
                | Error::TooLarge { .. }
                | Error::DecryptionFailed
                | Error::Decompression { .. }
                | Error::Json { .. }
                | Error::BadIndexSize { .. }
                | Error::IndexChecksumMismatch { .. }
                | Error::InvalidIndex { .. }
                | Error::WrongSignature
                | Error::KeyFingerprintMismatch { .. }
                | Error::KeyLength { .. }
                | Error::KeyDataTooShort { .. }
                | Error::KeyFileJson { .. }
                | Error::KeyFileBase64 { .. }
                | Error::KeyFileTime { .. }
        )
    }

    pub(crate) fn json(path: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::Json {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// `" (hint: …)"`, or nothing without a hint.
fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(hint) => format!(" (hint: {hint})"),
        None => String::new(),
    }
}
