//! `.didx`: an archive cut at content-defined points; each entry is the chunk's end offset and its
//! digest.

use std::io::{Read, Write};
use std::ops::Range;

use sha2::{Digest, Sha256};

use super::{
    ChunkIndex, CommonHeader, DYNAMIC_INDEX_MAGIC, INDEX_HEADER_LEN, array, parse_common,
    random_uuid, read_header, read_rest, write_common,
};
use crate::error::{Error, Format, Result};

/// Length of one `.didx` entry: end offset (u64 LE) and digest.
pub const DYNAMIC_ENTRY_LEN: usize = 40;

const FORMAT: Format = Format::DynamicIndex;

/// A checked `.didx` file.
///
/// Chunk `i` covers `[end(i - 1), end(i))` with `end(-1) = 0`; the archive size is the last end.
/// The creation time is the header's (PBS's reader reports the time of reading instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicIndex {
    bytes: Vec<u8>,
    common: CommonHeader,
    count: usize,
}

fn check_len(len: u64) -> Result<usize> {
    let body = len - INDEX_HEADER_LEN as u64;
    if body % DYNAMIC_ENTRY_LEN as u64 != 0 {
        return Err(Error::BadIndexSize {
            format: FORMAT,
            len,
            reason: format!(
                "the entries after the 4096-byte header are not a multiple of {DYNAMIC_ENTRY_LEN} bytes"
            ),
        });
    }
    usize::try_from(body / DYNAMIC_ENTRY_LEN as u64).map_err(|_| Error::BadIndexSize {
        format: FORMAT,
        len,
        reason: "too many entries for this platform".to_owned(),
    })
}

impl DynamicIndex {
    /// Reads a `.didx` from its bytes: [`Error::TooSmall`] below 4096 bytes, [`Error::WrongMagic`],
    /// [`Error::BadIndexSize`] unless the entries are a multiple of 40 bytes,
    /// [`Error::IndexChecksumMismatch`], [`Error::InvalidIndex`] if an end offset is below the one
    /// before it.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let common = parse_common(FORMAT, DYNAMIC_INDEX_MAGIC, &bytes)?;
        let count = check_len(bytes.len() as u64)?;
        Self::checked(bytes, common, count)
    }

    /// As [`DynamicIndex::from_bytes`]; the bytes are copied only once they are checked.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let common = parse_common(FORMAT, DYNAMIC_INDEX_MAGIC, bytes)?;
        let count = check_len(bytes.len() as u64)?;
        check_entries(bytes, &common)?;
        Ok(Self {
            bytes: bytes.to_vec(),
            common,
            count,
        })
    }

    /// Reads a `.didx` of `len` bytes (the file length) from `reader`; a reader that ends early or
    /// holds more is [`Error::BadIndexSize`].
    pub fn read_from<R: Read>(mut reader: R, len: u64) -> Result<Self> {
        let header = read_header(FORMAT, &mut reader, len)?;
        let common = parse_common(FORMAT, DYNAMIC_INDEX_MAGIC, &header)?;
        let count = check_len(len)?;
        let bytes = read_rest(FORMAT, reader, header, len)?;
        Self::checked(bytes, common, count)
    }

    fn checked(bytes: Vec<u8>, common: CommonHeader, count: usize) -> Result<Self> {
        check_entries(&bytes, &common)?;
        Ok(Self {
            bytes,
            common,
            count,
        })
    }

    /// The end offset of chunk `i`.
    pub fn chunk_end(&self, i: usize) -> Option<u64> {
        (i < self.count).then(|| end_at(&self.bytes, i))
    }

    /// Every entry in order: end offset and digest.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (u64, &[u8; 32])> + '_ {
        self.bytes[INDEX_HEADER_LEN..]
            .chunks_exact(DYNAMIC_ENTRY_LEN)
            .map(|entry| (u64::from_le_bytes(array(entry, 0)), digest_of(entry)))
    }

    /// The index of the chunk holding archive byte `offset`, if inside the archive.
    pub fn chunk_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.archive_size() {
            return None;
        }
        // Ends never decrease (checked on load), so the first end above `offset` is the chunk.
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if end_at(&self.bytes, mid) <= offset {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    /// The file bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

fn end_at(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(array(bytes, INDEX_HEADER_LEN + i * DYNAMIC_ENTRY_LEN))
}

fn digest_of(entry: &[u8]) -> &[u8; 32] {
    entry[8..DYNAMIC_ENTRY_LEN]
        .try_into()
        .unwrap_or_else(|_| unreachable!("40-byte entries"))
}

fn check_entries(bytes: &[u8], common: &CommonHeader) -> Result<()> {
    let entries = &bytes[INDEX_HEADER_LEN..];
    let computed: [u8; 32] = Sha256::digest(entries).into();
    if computed != common.index_csum {
        return Err(Error::IndexChecksumMismatch {
            format: FORMAT,
            stored: common.index_csum,
            computed,
        });
    }
    let mut last = 0u64;
    for (i, entry) in entries.chunks_exact(DYNAMIC_ENTRY_LEN).enumerate() {
        let end = u64::from_le_bytes(array(entry, 0));
        if end < last {
            return Err(Error::InvalidIndex {
                format: FORMAT,
                reason: format!("entry {i} ends at {end}, before the previous end {last}"),
            });
        }
        last = end;
    }
    Ok(())
}

impl ChunkIndex for DynamicIndex {
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
        match self.count {
            0 => 0,
            n => end_at(&self.bytes, n - 1),
        }
    }
    fn chunk_count(&self) -> usize {
        self.count
    }
    fn digest(&self, i: usize) -> Option<&[u8; 32]> {
        if i >= self.count {
            return None;
        }
        let at = INDEX_HEADER_LEN + i * DYNAMIC_ENTRY_LEN;
        Some(digest_of(&self.bytes[at..at + DYNAMIC_ENTRY_LEN]))
    }
    fn chunk_range(&self, i: usize) -> Option<Range<u64>> {
        let end = self.chunk_end(i)?;
        let start = match i {
            0 => 0,
            _ => end_at(&self.bytes, i - 1),
        };
        Some(start..end)
    }
    fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Builds a `.didx` from chunk lengths and digests.
///
/// The UUID is random unless set with [`DynamicIndexWriter::with_uuid`]; the creation time is the
/// caller's.
#[derive(Debug, Clone)]
pub struct DynamicIndexWriter {
    uuid: Option<[u8; 16]>,
    ctime: i64,
    end: u64,
    entries: Vec<u8>,
    hasher: Sha256,
}

impl DynamicIndexWriter {
    /// An empty writer for an index created at `ctime`.
    pub fn new(ctime: i64) -> Self {
        Self {
            uuid: None,
            ctime,
            end: 0,
            entries: Vec::new(),
            hasher: Sha256::new(),
        }
    }

    /// Uses `uuid` instead of a random one.
    pub fn with_uuid(mut self, uuid: [u8; 16]) -> Self {
        self.uuid = Some(uuid);
        self
    }

    /// Appends the next chunk: `len` bytes of the archive named by `digest`. [`Error::InvalidInput`]
    /// if the archive size would pass `u64::MAX`.
    pub fn push_chunk(&mut self, len: u64, digest: &[u8; 32]) -> Result<()> {
        let end = self
            .end
            .checked_add(len)
            .ok_or_else(|| Error::InvalidInput {
                reason: "the archive size would exceed 2^64 - 1 bytes".to_owned(),
            })?;
        self.push_end(end, digest)
    }

    /// Appends the next chunk by its end offset in the archive; [`Error::InvalidInput`] if it is below
    /// the previous end.
    pub fn push_end(&mut self, end: u64, digest: &[u8; 32]) -> Result<()> {
        if end < self.end {
            return Err(Error::InvalidInput {
                reason: format!("chunk end {end} is before the previous end {}", self.end),
            });
        }
        let mut entry = [0u8; DYNAMIC_ENTRY_LEN];
        entry[..8].copy_from_slice(&end.to_le_bytes());
        entry[8..].copy_from_slice(digest);
        self.entries.extend_from_slice(&entry);
        self.hasher.update(entry);
        self.end = end;
        Ok(())
    }

    /// The archive size so far.
    pub fn archive_size(&self) -> u64 {
        self.end
    }

    /// The index checksum of the entries so far (the manifest's `csum`).
    pub fn index_csum(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    fn header(&self) -> Result<Vec<u8>> {
        let mut header = vec![0u8; INDEX_HEADER_LEN];
        let uuid = match self.uuid {
            Some(uuid) => uuid,
            None => random_uuid()?,
        };
        let common = CommonHeader {
            uuid,
            ctime: self.ctime,
            index_csum: self.index_csum(),
        };
        write_common(&mut header, DYNAMIC_INDEX_MAGIC, &common);
        Ok(header)
    }

    /// The file bytes; [`Error::Random`] if no UUID was set and none can be drawn.
    pub fn finish(self) -> Result<Vec<u8>> {
        let mut bytes = self.header()?;
        bytes.extend_from_slice(&self.entries);
        Ok(bytes)
    }

    /// Writes the file to `out`.
    pub fn write_to<W: Write>(self, mut out: W) -> Result<()> {
        out.write_all(&self.header()?)?;
        out.write_all(&self.entries)?;
        Ok(())
    }
}
