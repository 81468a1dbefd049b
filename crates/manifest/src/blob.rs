//! The DataBlob format of PBS: every `*.blob` file, every chunk and the manifest's container.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! unencrypted: magic[8] | crc32[4] | payload                  (header 12 bytes)
//! encrypted:   magic[8] | crc32[4] | iv[16] | tag[16] | data  (header 44 bytes)
//! ```
//!
//! The magic says whether the payload is zstd-compressed and whether it is AES-256-GCM encrypted
//! ([`BlobKind`]). The CRC-32 (IEEE) covers only the bytes after the header. Data of at most
//! [`MAX_BLOB_SIZE`] bytes fits in a blob; compression (zstd level 1) is kept only when it makes the
//! payload strictly smaller.
//!
//! Decoding checks length, magic and CRC before it looks at the payload, and never produces more than
//! [`MAX_BLOB_SIZE`] bytes: zstd output is capped whatever the frame header claims, so a hostile
//! blob cannot make the decoder allocate without bound.
//!
//! ```
//! use keepsake_manifest::blob::{BlobKind, Compression, DataBlob};
//! use keepsake_manifest::crypt::CryptConfig;
//!
//! let text = b"hello hello hello hello hello hello hello hello".repeat(10);
//! let blob = DataBlob::encode(&text, None, Compression::Zstd)?;
//! assert_eq!(blob.kind(), BlobKind::Compressed);
//! assert_eq!(DataBlob::from_raw(blob.as_bytes().to_vec())?.decode(None)?, text);
//!
//! let key = CryptConfig::new([42; 32]);
//! let secret = DataBlob::encode(b"secret", Some(&key), Compression::None)?;
//! assert_eq!(secret.kind(), BlobKind::Encrypted);
//! assert_eq!(secret.decode(Some(&key))?, b"secret");
//! assert!(secret.decode(None).is_err());
//! # Ok::<(), keepsake_manifest::Error>(())
//! ```

use std::fmt;
use std::io::Read;

use crate::compression::Zstd;
use crate::crypt::{CryptConfig, IV_LEN, TAG_LEN};
use crate::error::{Error, Format, Result};

/// The most data a blob may hold: 128 MiB (PBS's limit; its docs say 16 MiB, its code 128 MiB).
pub const MAX_BLOB_SIZE: usize = 128 * 1024 * 1024;
/// Header length of an unencrypted blob: magic and CRC.
pub const HEADER_LEN: usize = 12;
/// Header length of an encrypted blob: magic, CRC, IV and tag.
pub const ENCRYPTED_HEADER_LEN: usize = HEADER_LEN + IV_LEN + TAG_LEN;
/// The largest valid blob file: an encrypted header plus [`MAX_BLOB_SIZE`] bytes (a compressed
/// payload is always smaller than the data it holds).
pub const MAX_RAW_BLOB_SIZE: usize = ENCRYPTED_HEADER_LEN + MAX_BLOB_SIZE;

/// The four kinds of blob, named by their magic number.
///
/// Each magic is the first 8 bytes of the SHA-256 of a label ([`BlobKind::label`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// Plain data.
    Uncompressed,
    /// A zstd stream.
    Compressed,
    /// AES-256-GCM ciphertext of plain data.
    Encrypted,
    /// AES-256-GCM ciphertext of a zstd stream.
    EncryptedCompressed,
}

impl BlobKind {
    /// Every kind.
    pub const ALL: [BlobKind; 4] = [
        BlobKind::Uncompressed,
        BlobKind::Compressed,
        BlobKind::Encrypted,
        BlobKind::EncryptedCompressed,
    ];

    /// The 8 magic bytes a blob of this kind starts with.
    pub const fn magic(self) -> [u8; 8] {
        match self {
            BlobKind::Uncompressed => [66, 171, 56, 7, 190, 131, 112, 161],
            BlobKind::Compressed => [49, 185, 88, 66, 111, 182, 163, 127],
            BlobKind::Encrypted => [123, 103, 133, 190, 34, 45, 76, 240],
            BlobKind::EncryptedCompressed => [230, 89, 27, 191, 11, 191, 216, 11],
        }
    }

    /// The label whose SHA-256 starts with [`BlobKind::magic`].
    pub const fn label(self) -> &'static str {
        match self {
            BlobKind::Uncompressed => "Proxmox Backup uncompressed blob v1.0",
            BlobKind::Compressed => "Proxmox Backup zstd compressed blob v1.0",
            BlobKind::Encrypted => "Proxmox Backup encrypted blob v1.0",
            BlobKind::EncryptedCompressed => "Proxmox Backup zstd compressed encrypted blob v1.0",
        }
    }

    /// The kind whose magic `bytes` start with, if any.
    pub fn from_magic(bytes: &[u8]) -> Option<Self> {
        let magic = bytes.get(..8)?;
        Self::ALL.into_iter().find(|kind| kind.magic() == magic)
    }

    /// Whether the payload is AES-256-GCM ciphertext.
    pub const fn is_encrypted(self) -> bool {
        matches!(self, BlobKind::Encrypted | BlobKind::EncryptedCompressed)
    }

    /// Whether the (decrypted) payload is a zstd stream.
    pub const fn is_compressed(self) -> bool {
        matches!(self, BlobKind::Compressed | BlobKind::EncryptedCompressed)
    }

    /// The header length of this kind: 12 bytes, or 44 when encrypted.
    pub const fn header_len(self) -> usize {
        if self.is_encrypted() {
            ENCRYPTED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }
}

/// A blob whose length, magic and CRC have been checked: the raw file bytes.
///
/// Whether [`DataBlob::encode`] compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Stored as given.
    None,
    /// zstd level 1, as PBS, kept only when strictly smaller than the data.
    Zstd,
}

/// A `DataBlob` comes from [`DataBlob::encode`] or from checked raw bytes ([`DataBlob::from_raw`],
/// [`DataBlob::read_from`]); the payload is only decrypted and decompressed by
/// [`DataBlob::decode`].
#[derive(Clone, PartialEq, Eq)]
pub struct DataBlob {
    raw: Vec<u8>,
    kind: BlobKind,
}

impl DataBlob {
    /// Encodes `data` as PBS does: encrypted when `crypt` is given, zstd level 1 with
    /// [`Compression::Zstd`] when the result is strictly smaller. Fails with [`Error::TooLarge`] above
    /// [`MAX_BLOB_SIZE`] bytes and with [`Error::Random`] if no IV can be drawn.
    pub fn encode(
        data: &[u8],
        crypt: Option<&CryptConfig>,
        compression: Compression,
    ) -> Result<Self> {
        BlobCodec::new().encode(data, crypt, compression)
    }

    /// Checks raw blob bytes (length, magic, CRC) without decoding them.
    pub fn from_raw(raw: Vec<u8>) -> Result<Self> {
        let kind = check(&raw)?.kind;
        Ok(Self { raw, kind })
    }

    /// Reads a whole blob from `reader` and checks it as [`DataBlob::from_raw`] does. Reads at most
    /// [`MAX_RAW_BLOB_SIZE`]` + 1` bytes, so memory stays bounded whatever the source holds.
    pub fn read_from<R: Read>(reader: R) -> Result<Self> {
        let mut raw = Vec::new();
        reader
            .take(MAX_RAW_BLOB_SIZE as u64 + 1)
            .read_to_end(&mut raw)?;
        Self::from_raw(raw)
    }

    /// The kind named by the magic.
    pub fn kind(&self) -> BlobKind {
        self.kind
    }

    /// The CRC-32 stored in the header (checked to match the payload).
    pub fn crc(&self) -> u32 {
        u32::from_le_bytes([self.raw[8], self.raw[9], self.raw[10], self.raw[11]])
    }

    /// The bytes after the header: plain, compressed or encrypted data.
    pub fn payload(&self) -> &[u8] {
        &self.raw[self.kind.header_len()..]
    }

    /// The raw blob bytes, as stored in a file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The raw blob bytes, as stored in a file.
    pub fn into_bytes(self) -> Vec<u8> {
        self.raw
    }

    /// Decrypts (with `crypt`) and decompresses the payload. See [`BlobCodec::decode_into`] for the
    /// errors.
    pub fn decode(&self, crypt: Option<&CryptConfig>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        BlobCodec::new().decode_parts(&check_unverified(&self.raw)?, crypt, &mut out)?;
        shrink(&mut out);
        Ok(out)
    }
}

impl AsRef<[u8]> for DataBlob {
    fn as_ref(&self) -> &[u8] {
        &self.raw
    }
}

impl fmt::Debug for DataBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataBlob")
            .field("kind", &self.kind)
            .field("len", &self.raw.len())
            .field("crc", &format_args!("{:#010x}", self.crc()))
            .finish()
    }
}

/// Decodes raw blob bytes in one call: checks length, magic and CRC, then decrypts and decompresses.
/// For many blobs in a row, a [`BlobCodec`] reuses its buffers and zstd contexts.
pub fn decode(raw: &[u8], crypt: Option<&CryptConfig>) -> Result<Vec<u8>> {
    BlobCodec::new().decode(raw, crypt)
}

/// Reusable blob encoder and decoder: keeps its zstd contexts and a scratch buffer between calls,
/// which saves allocations when many blobs are handled in a row (one codec per thread).
///
/// The scratch buffer keeps the capacity of the largest encrypted and compressed blob seen (at most
/// [`MAX_BLOB_SIZE`]); drop the codec to free it.
///
/// ```
/// use keepsake_manifest::blob::{BlobCodec, Compression};
///
/// let mut codec = BlobCodec::new();
/// let mut out = Vec::new();
/// for text in ["one", "two", "three"] {
///     let blob = codec.encode(text.as_bytes(), None, Compression::Zstd)?;
///     codec.decode_into(blob.as_bytes(), None, &mut out)?;
///     assert_eq!(out, text.as_bytes());
/// }
/// # Ok::<(), keepsake_manifest::Error>(())
/// ```
#[derive(Default)]
pub struct BlobCodec {
    zstd: Zstd,
    scratch: Vec<u8>,
}

impl BlobCodec {
    /// A codec with no buffers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes `data`; see [`DataBlob::encode`].
    pub fn encode(
        &mut self,
        data: &[u8],
        crypt: Option<&CryptConfig>,
        compression: Compression,
    ) -> Result<DataBlob> {
        let mut raw = Vec::new();
        let kind = self.encode_into(data, crypt, compression, &mut raw)?;
        Ok(DataBlob { raw, kind })
    }

    /// Encodes `data` into `out` (cleared first; its capacity is reused) and returns the kind chosen.
    /// For loops that write many blobs through one buffer; see [`DataBlob::encode`] for the rules and
    /// errors.
    pub fn encode_into(
        &mut self,
        data: &[u8],
        crypt: Option<&CryptConfig>,
        compression: Compression,
        out: &mut Vec<u8>,
    ) -> Result<BlobKind> {
        let compress = compression == Compression::Zstd;
        out.clear();
        if data.len() > MAX_BLOB_SIZE {
            return Err(Error::TooLarge {
                len: data.len() as u64,
                limit: MAX_BLOB_SIZE as u64,
            });
        }
        let kind = match crypt {
            None => {
                let room = if compress {
                    zstd::compress_bound(data.len())
                } else {
                    data.len()
                };
                out.reserve(HEADER_LEN + room);
                out.extend_from_slice(&[0; HEADER_LEN]);
                if compress && self.zstd.compress_if_smaller(data, out) {
                    BlobKind::Compressed
                } else {
                    // Copy and checksum in one pass over cache-sized pieces: the CRC then reads
                    // bytes the copy just brought into the cache instead of streaming the whole
                    // blob from memory a second time.
                    let mut crc = crc32fast::Hasher::new();
                    for piece in data.chunks(FUSED_PIECE) {
                        out.extend_from_slice(piece);
                        crc.update(piece);
                    }
                    seal_with(out, BlobKind::Uncompressed, crc.finalize());
                    return Ok(BlobKind::Uncompressed);
                }
            }
            Some(config) => {
                self.scratch.clear();
                let (plain, kind) =
                    if compress && self.zstd.compress_if_smaller(data, &mut self.scratch) {
                        (&self.scratch[..], BlobKind::EncryptedCompressed)
                    } else {
                        (data, BlobKind::Encrypted)
                    };
                let mut iv = [0u8; IV_LEN];
                getrandom::fill(&mut iv).map_err(Error::Random)?;
                out.resize(ENCRYPTED_HEADER_LEN + plain.len(), 0);
                let tag = config.encrypt_into(&iv, plain, &mut out[ENCRYPTED_HEADER_LEN..]);
                out[HEADER_LEN..HEADER_LEN + IV_LEN].copy_from_slice(&iv);
                out[HEADER_LEN + IV_LEN..ENCRYPTED_HEADER_LEN].copy_from_slice(&tag);
                kind
            }
        };
        seal(out, kind);
        Ok(kind)
    }

    /// Decodes raw blob bytes; see [`BlobCodec::decode_into`].
    pub fn decode(&mut self, raw: &[u8], crypt: Option<&CryptConfig>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decode_into(raw, crypt, &mut out)?;
        shrink(&mut out);
        Ok(out)
    }

    /// Decodes raw blob bytes into `out` (cleared first; its capacity is reused).
    ///
    /// Checks, in this order: length ([`Error::TooSmall`], [`Error::TooLarge`]), magic
    /// ([`Error::WrongMagic`]), CRC ([`Error::CrcMismatch`]); then a key for encrypted blobs
    /// ([`Error::MissingKey`]), the AES-GCM tag ([`Error::DecryptionFailed`]) and the zstd stream
    /// ([`Error::Decompression`], or [`Error::TooLarge`] past [`MAX_BLOB_SIZE`] bytes). On error
    /// `out` is left empty.
    pub fn decode_into(
        &mut self,
        raw: &[u8],
        crypt: Option<&CryptConfig>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        out.clear();
        let unverified = check_unverified(raw)?;
        if unverified.kind == BlobKind::Uncompressed {
            // Nothing to interpret: copy and checksum in one pass, and keep the copy only if the
            // CRC matches.
            let stored = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
            let mut crc = crc32fast::Hasher::new();
            out.reserve(unverified.payload.len());
            for piece in unverified.payload.chunks(FUSED_PIECE) {
                out.extend_from_slice(piece);
                crc.update(piece);
            }
            let computed = crc.finalize();
            if stored != computed {
                out.clear();
                return Err(Error::CrcMismatch { stored, computed });
            }
            return Ok(());
        }
        let parts = check(raw)?;
        let res = self.decode_parts(&parts, crypt, out);
        if res.is_err() {
            out.clear();
        }
        res
    }

    fn decode_parts(
        &mut self,
        parts: &Parts<'_>,
        crypt: Option<&CryptConfig>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let Some((iv, tag)) = parts.iv_tag else {
            return match parts.kind {
                BlobKind::Compressed => self.zstd.decompress(parts.payload, MAX_BLOB_SIZE, out),
                _ => {
                    out.extend_from_slice(parts.payload);
                    Ok(())
                }
            };
        };
        let config = crypt.ok_or(Error::MissingKey { fingerprint: None })?;
        if parts.kind.is_compressed() {
            self.scratch.clear();
            self.scratch.extend_from_slice(parts.payload);
            config.decrypt_in_place(iv, tag, &mut self.scratch)?;
            self.zstd.decompress(&self.scratch, MAX_BLOB_SIZE, out)
        } else {
            out.extend_from_slice(parts.payload);
            config.decrypt_in_place(iv, tag, out)
        }
    }
}

impl fmt::Debug for BlobCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobCodec").finish_non_exhaustive()
    }
}

/// Gives back the room a zstd size bound reserved beyond the data (up to 128 KiB per frame without
/// content size) before a buffer is handed out for keeps.
fn shrink(out: &mut Vec<u8>) {
    if out.capacity() - out.len() > out.len() / 8 + 4096 {
        out.shrink_to_fit();
    }
}

/// Writes magic and CRC into a blob whose header is otherwise complete.
fn seal(raw: &mut [u8], kind: BlobKind) {
    let crc = crc32fast::hash(&raw[kind.header_len()..]);
    seal_with(raw, kind, crc);
}

/// Writes magic and CRC into the header; `crc` must be the CRC-32 of `raw[kind.header_len()..]`.
fn seal_with(raw: &mut [u8], kind: BlobKind, crc: u32) {
    raw[..8].copy_from_slice(&kind.magic());
    raw[8..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Piece size for the fused copy and CRC of uncompressed payloads: well inside a core's L2.
const FUSED_PIECE: usize = 64 * 1024;

/// A checked blob, split into its parts.
struct Parts<'a> {
    kind: BlobKind,
    iv_tag: Option<(&'a [u8; IV_LEN], &'a [u8; TAG_LEN])>,
    payload: &'a [u8],
}

/// Checks length and magic, and splits the blob.
fn check_unverified(raw: &[u8]) -> Result<Parts<'_>> {
    let too_small = |min: usize| Error::TooSmall {
        format: Format::Blob,
        len: raw.len() as u64,
        min: min as u64,
    };
    let (magic, rest) = raw
        .split_first_chunk::<8>()
        .ok_or_else(|| too_small(HEADER_LEN))?;
    let (_crc, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| too_small(HEADER_LEN))?;
    let kind = BlobKind::from_magic(magic).ok_or(Error::WrongMagic {
        format: Format::Blob,
        found: *magic,
    })?;
    let (iv_tag, payload) = if kind.is_encrypted() {
        let (iv, rest) = rest
            .split_first_chunk::<IV_LEN>()
            .ok_or_else(|| too_small(ENCRYPTED_HEADER_LEN))?;
        let (tag, rest) = rest
            .split_first_chunk::<TAG_LEN>()
            .ok_or_else(|| too_small(ENCRYPTED_HEADER_LEN))?;
        (Some((iv, tag)), rest)
    } else {
        (None, rest)
    };
    if payload.len() > MAX_BLOB_SIZE {
        return Err(Error::TooLarge {
            len: payload.len() as u64,
            limit: MAX_BLOB_SIZE as u64,
        });
    }
    Ok(Parts {
        kind,
        iv_tag,
        payload,
    })
}

/// Checks length, magic and CRC, and splits the blob.
fn check(raw: &[u8]) -> Result<Parts<'_>> {
    let parts = check_unverified(raw)?;
    let stored = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
    let computed = crc32fast::hash(parts.payload);
    if stored != computed {
        return Err(Error::CrcMismatch { stored, computed });
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn a_plain_blob_with_a_bad_crc_leaves_no_output() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let mut codec = BlobCodec::new();
        let mut raw = Vec::new();
        let kind = codec
            .encode_into(&data, None, Compression::None, &mut raw)
            .unwrap();
        assert_eq!(kind, BlobKind::Uncompressed);
        let mut out = b"earlier contents".to_vec();
        codec.decode_into(&raw, None, &mut out).unwrap();
        assert_eq!(out, data);
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let err = codec.decode_into(&raw, None, &mut out).unwrap_err();
        assert!(matches!(err, Error::CrcMismatch { .. }), "{err:?}");
        assert!(out.is_empty());
    }

    #[test]
    fn magics_are_the_hashes_of_their_labels() {
        for kind in BlobKind::ALL {
            let hash = Sha256::digest(kind.label().as_bytes());
            assert_eq!(hash[..8], kind.magic(), "{kind:?}");
            assert_eq!(BlobKind::from_magic(&kind.magic()), Some(kind));
        }
    }

    /// A blob built by hand with Python's `cryptography` (OpenSSL AES-256-GCM, 16-byte IV) and
    /// `zlib.crc32`, following spec §5: key 00..1f, IV 64..73, no AAD.
    #[test]
    fn decrypts_a_blob_made_by_openssl() {
        let raw = hex::decode(
            "7b6785be222d4cf05b98c5c16465666768696a6b6c6d6e6f70717273108fa10369aebbbb19405ded4a5a\
             794ab3d6262197754cbd929cc3ea35ae9c113f1578a2f080822bb1e5671ab98162ab0faefc",
        )
        .unwrap();
        let key = CryptConfig::new(std::array::from_fn(|i| i as u8));
        let blob = DataBlob::from_raw(raw).unwrap();
        assert_eq!(blob.kind(), BlobKind::Encrypted);
        assert_eq!(
            blob.decode(Some(&key)).unwrap(),
            b"keepsake encrypted blob test vector"
        );
    }

    #[test]
    fn encrypted_layout_is_iv_tag_ciphertext() {
        let key = CryptConfig::new([3; 32]);
        let blob = DataBlob::encode(b"abc", Some(&key), Compression::None).unwrap();
        let raw = blob.as_bytes();
        assert_eq!(raw.len(), ENCRYPTED_HEADER_LEN + 3);
        assert_eq!(blob.crc(), crc32fast::hash(&raw[ENCRYPTED_HEADER_LEN..]));
        // Re-encrypting with the stored IV reproduces ciphertext and tag.
        let iv: [u8; 16] = raw[12..28].try_into().unwrap();
        let mut out = [0u8; 3];
        let tag = key.encrypt_into(&iv, b"abc", &mut out);
        assert_eq!(&raw[28..44], &tag);
        assert_eq!(&raw[44..], &out);
    }
}
