//! Chunk index files: `.fidx` (fixed-size chunks, disk images) and `.didx` (dynamic-size chunks,
//! file archives).
//!
//! Both start with a 4096-byte little-endian header (magic, UUID, creation time, index checksum;
//! `.fidx` adds image size and chunk size) followed by one entry per chunk: a 32-byte digest for
//! `.fidx`, the chunk's end offset (u64) and digest for `.didx`.
//!
//! Readers ([`FixedIndex`], [`DynamicIndex`], or [`IndexFile`] when the kind is not known) check the
//! magic, that the file length agrees with the header, that the index checksum matches the entries,
//! and (`.didx`) that end offsets never decrease, before handing out digests. They allocate from the
//! length of the data actually given, never from a size a header claims. Writers
//! ([`FixedIndexWriter`], [`DynamicIndexWriter`]) produce the same bytes PBS's writers produce for the
//! same UUID, time and digests.
//!
//! ```
//! use keepsake_manifest::index::{ChunkIndex, DynamicIndex, DynamicIndexWriter};
//!
//! let mut writer = DynamicIndexWriter::new(1_717_600_000);
//! writer.push_chunk(1000, &[1; 32])?;
//! writer.push_chunk(24, &[2; 32])?;
//! let index = DynamicIndex::from_bytes(writer.finish()?)?;
//! assert_eq!(index.archive_size(), 1024);
//! assert_eq!(index.chunk_range(1), Some(1000..1024));
//! assert_eq!(index.digest(0), Some(&[1; 32]));
//! # Ok::<(), keepsake_manifest::Error>(())
//! ```

mod dynamic;
mod fixed;

use std::io::Read;
use std::ops::Range;

pub use dynamic::{DYNAMIC_ENTRY_LEN, DynamicIndex, DynamicIndexWriter};
pub use fixed::{FIXED_ENTRY_LEN, FixedIndex, FixedIndexWriter};

use crate::error::{Error, Format, Result};

/// Length of the header of both index formats.
pub const INDEX_HEADER_LEN: usize = 4096;

/// Magic of a `.fidx`: the first 8 bytes of SHA-256("Proxmox Backup fixed sized chunk index v1.0").
pub const FIXED_INDEX_MAGIC: [u8; 8] = [47, 127, 65, 237, 145, 253, 15, 205];
/// Magic of a `.didx`: the first 8 bytes of SHA-256("Proxmox Backup dynamic sized chunk index v1.0").
pub const DYNAMIC_INDEX_MAGIC: [u8; 8] = [28, 145, 78, 165, 25, 186, 179, 205];

/// What both index formats offer.
pub trait ChunkIndex {
    /// Which format this is.
    fn format(&self) -> Format;
    /// The UUID from the header.
    fn uuid(&self) -> [u8; 16];
    /// The creation time from the header (epoch seconds).
    fn ctime(&self) -> i64;
    /// The index checksum from the header, checked to match the entries. A manifest lists it as the
    /// file's `csum`.
    fn index_csum(&self) -> &[u8; 32];
    /// The size of the archive the chunks make up; a manifest lists it as the file's `size`.
    fn archive_size(&self) -> u64;
    /// The number of chunks.
    fn chunk_count(&self) -> usize;
    /// The digest of chunk `i`.
    fn digest(&self, i: usize) -> Option<&[u8; 32]>;
    /// The byte range of the archive chunk `i` covers.
    fn chunk_range(&self, i: usize) -> Option<Range<u64>>;
    /// The whole file as bytes.
    fn as_bytes(&self) -> &[u8];

    /// Every chunk in order, with its range and digest.
    fn chunks(&self) -> Chunks<'_, Self>
    where
        Self: Sized,
    {
        Chunks {
            index: self,
            next: 0,
        }
    }
}

/// One chunk of an index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChunkInfo<'a> {
    /// Bytes of the archive the chunk covers.
    pub range: Range<u64>,
    /// The chunk's digest (its name in the chunk store).
    pub digest: &'a [u8; 32],
}

/// Iterator over the chunks of an index; see [`ChunkIndex::chunks`].
#[derive(Debug, Clone)]
pub struct Chunks<'a, I> {
    index: &'a I,
    next: usize,
}

impl<'a, I: ChunkIndex> Iterator for Chunks<'a, I> {
    type Item = ChunkInfo<'a>;

    fn next(&mut self) -> Option<ChunkInfo<'a>> {
        let i = self.next;
        let digest = self.index.digest(i)?;
        let range = self.index.chunk_range(i)?;
        self.next += 1;
        Some(ChunkInfo { range, digest })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.index.chunk_count().saturating_sub(self.next);
        (left, Some(left))
    }
}

impl<I: ChunkIndex> ExactSizeIterator for Chunks<'_, I> {}

/// An index of either kind, told apart by its magic.
///
/// ```
/// use keepsake_manifest::index::{ChunkIndex, FixedIndexWriter, IndexFile};
///
/// let mut writer = FixedIndexWriter::new(10, 4, 0)?;
/// for digest in [[1; 32], [2; 32], [3; 32]] {
///     writer.push(&digest)?;
/// }
/// let index = IndexFile::from_bytes(writer.finish()?)?;
/// assert!(matches!(index, IndexFile::Fixed(_)));
/// assert_eq!(index.chunk_range(2), Some(8..10));
/// # Ok::<(), keepsake_manifest::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexFile {
    /// A `.fidx`.
    Fixed(FixedIndex),
    /// A `.didx`.
    Dynamic(DynamicIndex),
}

impl IndexFile {
    /// Reads an index of either kind from its bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        match sniff(&bytes)? {
            Format::FixedIndex => FixedIndex::from_bytes(bytes).map(IndexFile::Fixed),
            _ => DynamicIndex::from_bytes(bytes).map(IndexFile::Dynamic),
        }
    }

    /// Reads an index of either kind, `len` bytes (the file length), from `reader`: the magic
    /// and the header are checked against `len` before the entries are read, so a file that is
    /// no index, or whose header does not match its length, is refused after its first bytes
    /// rather than read whole (a huge hostile file costs no memory).
    ///
    /// # Errors
    /// As [`from_bytes`](Self::from_bytes); [`Error::BadIndexSize`] for a reader that ends
    /// early or holds more.
    pub fn read_from<R: Read>(mut reader: R, len: u64) -> Result<Self> {
        let mut magic = [0u8; 8];
        let got = read_up_to(&mut reader, &mut magic)?;
        let format = sniff(&magic[..got])?;
        let reader = (&magic[..got]).chain(reader);
        match format {
            Format::FixedIndex => FixedIndex::read_from(reader, len).map(IndexFile::Fixed),
            _ => DynamicIndex::read_from(reader, len).map(IndexFile::Dynamic),
        }
    }

    /// Reads an index of either kind from a slice (copied once checked).
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        match sniff(bytes)? {
            Format::FixedIndex => FixedIndex::from_slice(bytes).map(IndexFile::Fixed),
            _ => DynamicIndex::from_slice(bytes).map(IndexFile::Dynamic),
        }
    }

    fn inner(&self) -> &dyn ChunkIndex {
        match self {
            IndexFile::Fixed(index) => index,
            IndexFile::Dynamic(index) => index,
        }
    }
}

/// Tells the index kind from the magic.
/// Fills `buf` from `reader` as far as it goes; how many bytes it got.
fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
    Ok(got)
}

fn sniff(bytes: &[u8]) -> Result<Format> {
    // The error has to name a format; a short or unknown file is reported as a fixed index, the kind
    // tried first.
    let Some(magic) = bytes.first_chunk::<8>() else {
        return Err(too_small(Format::FixedIndex, bytes.len() as u64));
    };
    match *magic {
        FIXED_INDEX_MAGIC => Ok(Format::FixedIndex),
        DYNAMIC_INDEX_MAGIC => Ok(Format::DynamicIndex),
        found => Err(Error::WrongMagic {
            format: Format::FixedIndex,
            found,
        }),
    }
}

impl ChunkIndex for IndexFile {
    fn format(&self) -> Format {
        self.inner().format()
    }
    fn uuid(&self) -> [u8; 16] {
        self.inner().uuid()
    }
    fn ctime(&self) -> i64 {
        self.inner().ctime()
    }
    fn index_csum(&self) -> &[u8; 32] {
        self.inner().index_csum()
    }
    fn archive_size(&self) -> u64 {
        self.inner().archive_size()
    }
    fn chunk_count(&self) -> usize {
        self.inner().chunk_count()
    }
    fn digest(&self, i: usize) -> Option<&[u8; 32]> {
        self.inner().digest(i)
    }
    fn chunk_range(&self, i: usize) -> Option<Range<u64>> {
        self.inner().chunk_range(i)
    }
    fn as_bytes(&self) -> &[u8] {
        self.inner().as_bytes()
    }
}

fn too_small(format: Format, len: u64) -> Error {
    Error::TooSmall {
        format,
        len,
        min: INDEX_HEADER_LEN as u64,
    }
}

/// The header fields both formats share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CommonHeader {
    uuid: [u8; 16],
    ctime: i64,
    index_csum: [u8; 32],
}

/// Checks length and magic of a header and reads the shared fields.
fn parse_common(format: Format, magic: [u8; 8], header: &[u8]) -> Result<CommonHeader> {
    if header.len() < INDEX_HEADER_LEN {
        return Err(too_small(format, header.len() as u64));
    }
    let found: [u8; 8] = array(header, 0);
    if found != magic {
        return Err(Error::WrongMagic { format, found });
    }
    Ok(CommonHeader {
        uuid: array(header, 8),
        ctime: i64::from_le_bytes(array(header, 24)),
        index_csum: array(header, 32),
    })
}

/// Writes the shared fields into a zeroed header.
fn write_common(header: &mut [u8], magic: [u8; 8], common: &CommonHeader) {
    header[..8].copy_from_slice(&magic);
    header[8..24].copy_from_slice(&common.uuid);
    header[24..32].copy_from_slice(&common.ctime.to_le_bytes());
    header[32..64].copy_from_slice(&common.index_csum);
}

/// `N` bytes of `bytes` at `at`; callers have checked the length.
fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes[at..at + N]
        .try_into()
        .unwrap_or_else(|_| unreachable!("length checked by the caller"))
}

/// Reads the rest of an index after its header: exactly `rest` bytes, with memory growing with the
/// bytes actually read (not with `rest`).
fn read_rest<R: Read>(format: Format, mut reader: R, header: Vec<u8>, len: u64) -> Result<Vec<u8>> {
    let rest = len - INDEX_HEADER_LEN as u64;
    let mut bytes = header;
    // A hint, not a promise: a lying length costs at most this much up front.
    bytes.reserve(rest.min(1024 * 1024) as usize);
    (&mut reader).take(rest).read_to_end(&mut bytes)?;
    let mut probe = [0u8; 1];
    let extra = reader.read(&mut probe)?;
    if bytes.len() as u64 != len || extra != 0 {
        return Err(Error::BadIndexSize {
            format,
            len: bytes.len() as u64 + extra as u64,
            reason: format!("the reader was said to hold {len} bytes"),
        });
    }
    Ok(bytes)
}

/// Reads the header of an index from a reader.
fn read_header<R: Read>(format: Format, reader: &mut R, len: u64) -> Result<Vec<u8>> {
    if len < INDEX_HEADER_LEN as u64 {
        return Err(too_small(format, len));
    }
    let mut header = vec![0u8; INDEX_HEADER_LEN];
    reader.read_exact(&mut header).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::BadIndexSize {
            format,
            len,
            reason: "the reader ended inside the header".to_owned(),
        },
        _ => Error::Io(e),
    })?;
    Ok(header)
}

/// A random version-4 UUID for a new index.
fn random_uuid() -> Result<[u8; 16]> {
    let mut uuid = [0u8; 16];
    getrandom::fill(&mut uuid).map_err(Error::Random)?;
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    Ok(uuid)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn magics_are_the_hashes_of_their_labels() {
        let fixed = Sha256::digest(b"Proxmox Backup fixed sized chunk index v1.0");
        assert_eq!(fixed[..8], FIXED_INDEX_MAGIC);
        let dynamic = Sha256::digest(b"Proxmox Backup dynamic sized chunk index v1.0");
        assert_eq!(dynamic[..8], DYNAMIC_INDEX_MAGIC);
    }

    #[test]
    fn random_uuids_are_version_4() {
        let a = random_uuid().unwrap();
        assert_eq!(a[6] >> 4, 4);
        assert_eq!(a[8] >> 6, 0b10);
        assert_ne!(a, random_uuid().unwrap());
    }
}
