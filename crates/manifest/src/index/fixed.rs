//! `.fidx`: an image cut into chunks of one size; the header adds image size and chunk size, the
//! entries are bare digests.

use std::io::{Read, Write};
use std::ops::Range;

use sha2::{Digest, Sha256};

use super::{
    ChunkIndex, CommonHeader, FIXED_INDEX_MAGIC, INDEX_HEADER_LEN, array, parse_common,
    random_uuid, read_header, read_rest, write_common,
};
use crate::error::{Error, Format, Result};

/// Length of one `.fidx` entry: a digest.
pub const FIXED_ENTRY_LEN: usize = 32;

const FORMAT: Format = Format::FixedIndex;

/// A checked `.fidx` file.
///
/// Chunk `i` covers `[i * chunk_size, min((i + 1) * chunk_size, size))`; there are
/// `ceil(size / chunk_size)` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIndex {
    bytes: Vec<u8>,
    common: CommonHeader,
    size: u64,
    chunk_size: u64,
    count: usize,
}

/// What the header says, checked against the file length.
struct Header {
    common: CommonHeader,
    size: u64,
    chunk_size: u64,
    count: usize,
}

fn parse_header(header: &[u8], len: u64) -> Result<Header> {
    let common = parse_common(FORMAT, FIXED_INDEX_MAGIC, header)?;
    let size = u64::from_le_bytes(array(header, 64));
    let chunk_size = u64::from_le_bytes(array(header, 72));
    if chunk_size == 0 {
        return Err(Error::InvalidIndex {
            format: FORMAT,
            reason: "the chunk size is 0".to_owned(),
        });
    }
    let count = size.div_ceil(chunk_size);
    let expected = count
        .checked_mul(FIXED_ENTRY_LEN as u64)
        .and_then(|n| n.checked_add(INDEX_HEADER_LEN as u64));
    if expected != Some(len) {
        return Err(Error::BadIndexSize {
            format: FORMAT,
            len,
            reason: match expected {
                Some(expected) => format!(
                    "{count} chunks of {chunk_size} bytes for an image of {size} bytes need {expected}"
                ),
                None => format!("{count} chunks cannot fit in a file"),
            },
        });
    }
    Ok(Header {
        common,
        size,
        chunk_size,
        count: usize::try_from(count)
            .unwrap_or_else(|_| unreachable!("count * 32 fits the file length")),
    })
}

impl FixedIndex {
    /// Reads a `.fidx` from its bytes: [`Error::TooSmall`] below 4096 bytes, [`Error::WrongMagic`],
    /// [`Error::InvalidIndex`] for a chunk size of 0, [`Error::BadIndexSize`] unless the length is
    /// exactly 4096 + 32 × chunks, [`Error::IndexChecksumMismatch`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let header = parse_header(&bytes, bytes.len() as u64)?;
        Self::checked(bytes, header)
    }

    /// As [`FixedIndex::from_bytes`]; the bytes are copied only once the header agrees with them.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let header = parse_header(bytes, bytes.len() as u64)?;
        Self::checked(bytes.to_vec(), header)
    }

    /// Reads a `.fidx` of `len` bytes (the file length) from `reader`. The header is checked against
    /// `len` before the entries are read; a reader that ends early or holds more is
    /// [`Error::BadIndexSize`].
    pub fn read_from<R: Read>(mut reader: R, len: u64) -> Result<Self> {
        let header_bytes = read_header(FORMAT, &mut reader, len)?;
        let header = parse_header(&header_bytes, len)?;
        let bytes = read_rest(FORMAT, reader, header_bytes, len)?;
        Self::checked(bytes, header)
    }

    fn checked(bytes: Vec<u8>, header: Header) -> Result<Self> {
        let computed: [u8; 32] = Sha256::digest(&bytes[INDEX_HEADER_LEN..]).into();
        if computed != header.common.index_csum {
            return Err(Error::IndexChecksumMismatch {
                format: FORMAT,
                stored: header.common.index_csum,
                computed,
            });
        }
        Ok(Self {
            bytes,
            common: header.common,
            size: header.size,
            chunk_size: header.chunk_size,
            count: header.count,
        })
    }

    /// The chunk size from the header.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Every digest in order.
    pub fn digests(&self) -> impl ExactSizeIterator<Item = &[u8; 32]> + '_ {
        self.bytes[INDEX_HEADER_LEN..]
            .chunks_exact(FIXED_ENTRY_LEN)
            .map(|entry| {
                entry
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("32-byte entries"))
            })
    }

    /// The file bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl ChunkIndex for FixedIndex {
    fn format(&self) -> Format {
        FORMAT
    }
    fn uuid(&self) -> [u8; 16] {
        self.common.uuid
    }
    fn ctime(&self) -> i64 {
        self.common.ctime
    }
    fn index_csum(&self) -> &[u8; 32] {
        &self.common.index_csum
    }
    fn archive_size(&self) -> u64 {
        self.size
    }
    fn chunk_count(&self) -> usize {
        self.count
    }
    fn digest(&self, i: usize) -> Option<&[u8; 32]> {
        if i >= self.count {
            return None;
        }
        let at = INDEX_HEADER_LEN + i * FIXED_ENTRY_LEN;
        self.bytes[at..at + FIXED_ENTRY_LEN].try_into().ok()
    }
    fn chunk_range(&self, i: usize) -> Option<Range<u64>> {
        if i >= self.count {
            return None;
        }
        let start = i as u64 * self.chunk_size;
        Some(start..start.saturating_add(self.chunk_size).min(self.size))
    }
    fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Builds a `.fidx` from digests.
///
/// Needs exactly `ceil(size / chunk_size)` digests. The UUID is random unless set with
/// [`FixedIndexWriter::with_uuid`]; the creation time is the caller's (no clock is read here).
#[derive(Debug, Clone)]
pub struct FixedIndexWriter {
    uuid: Option<[u8; 16]>,
    ctime: i64,
    size: u64,
    chunk_size: u64,
    count: u64,
    entries: Vec<u8>,
    hasher: Sha256,
}

impl FixedIndexWriter {
    /// A writer for an image of `size` bytes in chunks of `chunk_size` bytes, created at `ctime`.
    /// [`Error::InvalidInput`] for a chunk size of 0.
    pub fn new(size: u64, chunk_size: u64, ctime: i64) -> Result<Self> {
        if chunk_size == 0 {
            return Err(Error::InvalidInput {
                reason: "a fixed index needs a chunk size above 0".to_owned(),
            });
        }
        let count = size.div_ceil(chunk_size);
        Ok(Self {
            uuid: None,
            ctime,
            size,
            chunk_size,
            count,
            entries: Vec::new(),
            hasher: Sha256::new(),
        })
    }

    /// Uses `uuid` instead of a random one.
    pub fn with_uuid(mut self, uuid: [u8; 16]) -> Self {
        self.uuid = Some(uuid);
        self
    }

    /// How many digests the index needs.
    pub fn chunk_count(&self) -> u64 {
        self.count
    }

    /// Appends the digest of the next chunk; [`Error::InvalidInput`] past the last chunk.
    pub fn push(&mut self, digest: &[u8; 32]) -> Result<()> {
        if self.pushed() >= self.count {
            return Err(Error::InvalidInput {
                reason: format!("the image has only {} chunks", self.count),
            });
        }
        self.entries.extend_from_slice(digest);
        self.hasher.update(digest);
        Ok(())
    }

    fn pushed(&self) -> u64 {
        (self.entries.len() / FIXED_ENTRY_LEN) as u64
    }

    fn header(&self) -> Result<Vec<u8>> {
        if self.pushed() != self.count {
            return Err(Error::InvalidInput {
                reason: format!("{} of {} chunk digests given", self.pushed(), self.count),
            });
        }
        let mut header = vec![0u8; INDEX_HEADER_LEN];
        let uuid = match self.uuid {
            Some(uuid) => uuid,
            None => random_uuid()?,
        };
        let common = CommonHeader {
            uuid,
            ctime: self.ctime,
            index_csum: self.hasher.clone().finalize().into(),
        };
        write_common(&mut header, FIXED_INDEX_MAGIC, &common);
        header[64..72].copy_from_slice(&self.size.to_le_bytes());
        header[72..80].copy_from_slice(&self.chunk_size.to_le_bytes());
        Ok(header)
    }

    /// The index checksum of the digests so far (the manifest's `csum` once all are pushed).
    pub fn index_csum(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    /// The file bytes; [`Error::InvalidInput`] unless every digest was pushed, [`Error::Random`] if
    /// no UUID was set and none can be drawn.
    pub fn finish(self) -> Result<Vec<u8>> {
        let mut bytes = self.header()?;
        bytes.extend_from_slice(&self.entries);
        Ok(bytes)
    }

    /// Writes the file to `out`; as [`FixedIndexWriter::finish`].
    pub fn write_to<W: Write>(self, mut out: W) -> Result<()> {
        out.write_all(&self.header()?)?;
        out.write_all(&self.entries)?;
        Ok(())
    }
}
