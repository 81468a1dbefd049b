//! Reading data: chunks by digest ([`ChunkReader`]) and whole archives as a byte stream
//! ([`ArchiveReader`], `Read + Seek` over a `.fidx` image or a `.didx` stream).
//!
//! Every chunk read is checked before its bytes are handed out: the blob's magic and CRC, the
//! AES-GCM tag of an encrypted chunk, the zstd stream, the size the index expects and the digest
//! (SHA-256 of the plain data, keyed with the store's key for encrypted chunks). A chunk that
//! fails is an error ([`Error::ChunkCorrupt`]), never data.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex, mpsc};

use keepsake_backend::ChunkDigest;
use keepsake_hierarchy::ArchiveKind;
use keepsake_lock::LockGuard;
use keepsake_manifest::blob::{BlobCodec, BlobKind};
use keepsake_manifest::crypt::CryptConfig;
use keepsake_manifest::index::{ChunkIndex, IndexFile};
use sha2::{Digest, Sha256};

use crate::chunks::chunk_path;
use crate::error::{ArgumentProblem, Error, Result};
use crate::snapshot::Snapshot;
use crate::store::DataStore;

/// What is wrong with a stored chunk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkDefect {
    /// The stored blob does not decode: too short, unknown magic, CRC mismatch, an AES-GCM tag
    /// that does not authenticate it, or a broken zstd stream.
    #[error("the stored blob is damaged")]
    Blob(#[source] keepsake_manifest::Error),
    /// It decodes to another size than the index records for it.
    #[error("it decodes to {found} bytes, the index expects {expected}")]
    Size {
        /// The size the index records.
        expected: u64,
        /// The decoded size.
        found: u64,
    },
    /// Its decoded content does not hash to its name.
    #[error("its content hashes to {found}, not to its name")]
    Digest {
        /// The digest of the content (hex).
        found: String,
    },
}

/// How far a chunk could be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChunkCheck {
    /// Decoded, with the expected size and digest.
    Verified {
        /// Bytes stored (the blob).
        stored: u64,
        /// Bytes of data it decodes to.
        plain: u64,
    },
    /// Encrypted and no key to decrypt it: only the blob's magic and CRC were checked.
    CrcOnly {
        /// Bytes stored (the blob).
        stored: u64,
    },
}

impl ChunkCheck {
    /// Bytes stored.
    pub fn stored(&self) -> u64 {
        match *self {
            ChunkCheck::Verified { stored, .. } | ChunkCheck::CrcOnly { stored } => stored,
        }
    }
}

thread_local! {
    /// One codec per thread: its zstd contexts and scratch buffer are reused by every chunk the
    /// thread decodes.
    static CODEC: RefCell<BlobCodec> = RefCell::new(BlobCodec::new());
    /// Where a check decodes to (nothing is handed out): kept, so that checking many chunks in a
    /// row allocates (and faults in) one chunk's memory once.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Checks a stored chunk in full (decoded into a scratch buffer that is dropped).
fn check_raw(
    raw: &[u8],
    digest: &[u8; 32],
    expected_size: Option<u64>,
    key: Option<&CryptConfig>,
) -> Result<ChunkCheck> {
    let checked = SCRATCH.with(|scratch| {
        let mut out = scratch.borrow_mut();
        let checked = decode_chunk(raw, digest, expected_size, key, &mut out);
        let plain = match checked {
            Ok(Some(Plain::Raw)) => raw.len().saturating_sub(PLAIN_HEADER),
            _ => out.len(),
        };
        (checked, plain as u64)
    });
    match checked {
        (Ok(Some(_)), plain) => Ok(ChunkCheck::Verified {
            stored: raw.len() as u64,
            plain,
        }),
        (Ok(None), _) => Ok(ChunkCheck::CrcOnly {
            stored: raw.len() as u64,
        }),
        (Err(defect), _) => Err(Error::ChunkCorrupt {
            path: chunk_path(digest),
            defect,
        }),
    }
}

/// Where [`decode_chunk`] left the plain data.
pub(crate) enum Plain {
    /// In `out`.
    Out,
    /// In the stored bytes after the 12-byte header (an uncompressed, unencrypted blob: nothing
    /// to decode, so nothing is copied).
    Raw,
}

/// Size of an unencrypted blob's header (magic and CRC).
const PLAIN_HEADER: usize = 12;

/// Decodes a stored chunk (into `out` unless it is stored uncompressed) and checks it against
/// its digest and the size the index expects. `Ok(None)` when it is encrypted and there is no
/// key, or the key given is not the one that wrote it (the CRC was checked).
pub(crate) fn decode_chunk(
    raw: &[u8],
    digest: &[u8; 32],
    expected_size: Option<u64>,
    key: Option<&CryptConfig>,
    out: &mut Vec<u8>,
) -> std::result::Result<Option<Plain>, ChunkDefect> {
    let kind = BlobKind::from_magic(raw);
    let (plain, at) = if kind == Some(BlobKind::Uncompressed) && raw.len() >= PLAIN_HEADER {
        let stored = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let computed = crc32fast::hash(&raw[PLAIN_HEADER..]);
        if stored != computed {
            return Err(ChunkDefect::Blob(keepsake_manifest::Error::CrcMismatch {
                stored,
                computed,
            }));
        }
        (&raw[PLAIN_HEADER..], Plain::Raw)
    } else {
        let decoded = CODEC.with(|codec| codec.borrow_mut().decode_into(raw, key, out));
        match decoded {
            Ok(()) => {}
            // The CRC (over the ciphertext) is checked before the key is asked for. With it
            // intact, a tag that does not authenticate means another key wrote the chunk (a PBS
            // datastore holds chunks of many clients' keys): not a damaged chunk.
            Err(
                keepsake_manifest::Error::MissingKey { .. }
                | keepsake_manifest::Error::DecryptionFailed,
            ) => return Ok(None),
            Err(e) => return Err(ChunkDefect::Blob(e)),
        }
        (&out[..], Plain::Out)
    };
    if let Some(expected) = expected_size {
        if plain.len() as u64 != expected {
            return Err(ChunkDefect::Size {
                expected,
                found: plain.len() as u64,
            });
        }
    }
    let encrypted = kind.is_some_and(BlobKind::is_encrypted);
    let found: [u8; 32] = match (encrypted, key) {
        (true, Some(key)) => key.compute_digest(plain),
        _ => Sha256::digest(plain).into(),
    };
    if found != *digest {
        return Err(ChunkDefect::Digest {
            found: hex::encode(found),
        });
    }
    Ok(Some(at))
}

/// Reads chunks by digest and checks each before handing it out, with a bounded cache of
/// decoded chunks (least recently used out first).
///
/// On an S3 datastore a chunk comes from the cache's copy, or from the bucket when the cache holds
/// only PBS's empty marker (or nothing); the cache keeps what was fetched.
///
/// ```
/// use keepsake_datastore::{DataStore, Encryption};
///
/// let dir = tempfile::tempdir()?;
/// let store = DataStore::builder("store1", dir.path().join("store1"))
///     .lock_root(dir.path().join("locks"))
///     .chunk_prefix_dirs(false)
///     .create()?;
/// let inserted = store.insert_chunk(b"some data", Encryption::None)?;
/// let reader = store.chunk_reader();
/// assert_eq!(&reader.read_chunk(&inserted.digest, Some(9))?[..], b"some data");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ChunkReader {
    store: DataStore,
    key: Option<CryptConfig>,
    cache: Mutex<ChunkCache>,
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader")
            .field("store", &self.store.name())
            .field("key", &self.key.as_ref().map(|k| k.fingerprint().short()))
            .finish_non_exhaustive()
    }
}

/// Default bytes of decoded chunks a [`ChunkReader`] keeps: sixteen PBS image chunks.
pub const DEFAULT_CHUNK_CACHE_BYTES: usize = 64 << 20;

impl ChunkReader {
    /// A reader of `store`'s chunks, decrypting with the store's key.
    pub fn new(store: &DataStore) -> Self {
        Self {
            store: store.clone(),
            key: store.crypt_config().cloned(),
            cache: Mutex::new(ChunkCache::new(DEFAULT_CHUNK_CACHE_BYTES)),
        }
    }

    /// Decrypts with `key` instead of the store's key.
    #[must_use]
    pub fn key(mut self, key: CryptConfig) -> Self {
        self.key = Some(key);
        self
    }

    /// Keeps at most `bytes` of decoded chunks (at least the last chunk read is always kept).
    #[must_use]
    pub fn cache_bytes(self, bytes: usize) -> Self {
        Self {
            cache: Mutex::new(ChunkCache::new(bytes)),
            ..self
        }
    }

    /// The datastore read.
    pub fn store(&self) -> &DataStore {
        &self.store
    }

    /// The chunk `digest` decoded and checked (against `expected_size` too, when given), from the
    /// cache when it was read recently.
    ///
    /// # Errors
    /// [`Error::NotFound`] (what: "chunk") if it is not stored; [`Error::ChunkCorrupt`] if it does
    /// not check out; [`Error::Corrupt`] with [`keepsake_manifest::Error::MissingKey`] for an
    /// encrypted chunk without a key; [`Error::Backend`].
    pub fn read_chunk(
        &self,
        digest: &[u8; 32],
        expected_size: Option<u64>,
    ) -> Result<Arc<Vec<u8>>> {
        if let Some(hit) = self.cached(digest) {
            // Checked when it was read, against its digest; the size is the asker's claim.
            return match expected_size {
                Some(expected) if hit.len() as u64 != expected => Err(Error::ChunkCorrupt {
                    path: chunk_path(digest),
                    defect: ChunkDefect::Size {
                        expected,
                        found: hit.len() as u64,
                    },
                }),
                _ => Ok(hit),
            };
        }
        let data = Arc::new(self.fetch(digest, expected_size)?);
        self.lock_cache().insert(*digest, Arc::clone(&data));
        Ok(data)
    }

    /// Reads and checks `digest` without the cache, handing nothing out: for verifying.
    ///
    /// # Errors
    /// As [`ChunkReader::read_chunk`], except that an encrypted chunk without a key is
    /// [`ChunkCheck::CrcOnly`].
    pub fn check_chunk(&self, digest: &[u8; 32], expected_size: Option<u64>) -> Result<ChunkCheck> {
        let raw = self.read_raw(digest)?;
        check_raw(&raw, digest, expected_size, self.key.as_ref())
    }

    /// As [`ChunkReader::check_chunk`], reading the authority's copy: the bucket's on an S3
    /// datastore (the cache then holds it), for deciding that a chunk is corrupt.
    ///
    /// # Errors
    /// As [`ChunkReader::check_chunk`].
    pub fn check_chunk_authoritative(
        &self,
        digest: &[u8; 32],
        expected_size: Option<u64>,
    ) -> Result<ChunkCheck> {
        let rel = chunk_path(digest);
        let raw = self
            .store
            .backend()
            .read_chunk_authoritative(&ChunkDigest::new(*digest))
            .map_err(|e| Error::from_backend("chunk", &rel, e))?;
        check_raw(&raw, digest, expected_size, self.key.as_ref())
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        self.lock_cache().get(digest)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, ChunkCache> {
        // A panic while the cache was held leaves it consistent (every step is complete).
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read_raw(&self, digest: &[u8; 32]) -> Result<Vec<u8>> {
        let rel = chunk_path(digest);
        self.store
            .backend()
            .read_chunk(&ChunkDigest::new(*digest))
            .map_err(|e| Error::from_backend("chunk", &rel, e))
    }

    fn fetch(&self, digest: &[u8; 32], expected_size: Option<u64>) -> Result<Vec<u8>> {
        let mut raw = self.read_raw(digest)?;
        let mut out = Vec::new();
        match decode_chunk(&raw, digest, expected_size, self.key.as_ref(), &mut out) {
            Ok(Some(Plain::Out)) => Ok(out),
            Ok(Some(Plain::Raw)) => {
                raw.drain(..PLAIN_HEADER);
                Ok(raw)
            }
            Ok(None) => Err(Error::Corrupt {
                path: chunk_path(digest),
                source: if self.key.is_some() {
                    keepsake_manifest::Error::DecryptionFailed
                } else {
                    keepsake_manifest::Error::MissingKey { fingerprint: None }
                },
            }),
            Err(defect) => Err(Error::ChunkCorrupt {
                path: chunk_path(digest),
                defect,
            }),
        }
    }
}

/// Decoded chunks by digest, at most `capacity` bytes (the newest one always kept), least
/// recently used out first. Small by design (a few dozen entries), so a linear recency list is
/// cheaper than a linked map.
struct ChunkCache {
    capacity: usize,
    bytes: usize,
    map: HashMap<[u8; 32], Arc<Vec<u8>>>,
    order: VecDeque<[u8; 32]>,
}

impl ChunkCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            bytes: 0,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn contains(&self, digest: &[u8; 32]) -> bool {
        self.map.contains_key(digest)
    }

    fn get(&mut self, digest: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        let hit = Arc::clone(self.map.get(digest)?);
        if let Some(at) = self.order.iter().position(|d| d == digest) {
            self.order.remove(at);
        }
        self.order.push_back(*digest);
        Some(hit)
    }

    fn insert(&mut self, digest: [u8; 32], data: Arc<Vec<u8>>) {
        if self.map.contains_key(&digest) {
            return;
        }
        self.bytes += data.len();
        self.map.insert(digest, data);
        self.order.push_back(digest);
        while self.bytes > self.capacity && self.order.len() > 1 {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.map.remove(&old) {
                self.bytes -= gone.len();
            }
        }
    }
}

/// An archive (a `.fidx` image or a `.didx` stream) as one byte stream with random access.
///
/// Chunks are read through a [`ChunkReader`] and checked before use. Reading forward keeps the
/// next chunks in flight on worker threads (read-ahead, started by the first forward read and
/// ended when the reader is dropped), so a sequential read decodes on every core. Opened from a snapshot ([`Snapshot::open_archive`](crate::Snapshot::open_archive)) it
/// holds the snapshot's shared lock until dropped, so the snapshot cannot be removed under it.
///
/// ```
/// use std::io::{Read, Seek, SeekFrom};
/// use keepsake_datastore::{DataStore, Encryption};
/// use keepsake_hierarchy::{Authid, BackupGroup, BackupNamespace, BackupTime};
///
/// let dir = tempfile::tempdir()?;
/// let store = DataStore::builder("store1", dir.path().join("store1"))
///     .lock_root(dir.path().join("locks"))
///     .chunk_prefix_dirs(false)
///     .create()?;
/// let image: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
/// let group = store.group(&BackupNamespace::root(), &"vm/100".parse::<BackupGroup>()?);
/// let mut backup = group.start_backup(&"root@pam".parse::<Authid>()?, BackupTime::from_epoch(1_000)?)?;
/// backup.add_fixed_archive("drive-scsi0.img.fidx", &image, 65_536, Encryption::None)?;
/// let snapshot = backup.finish()?;
///
/// let mut archive = snapshot.open_archive("drive-scsi0.img.fidx")?;
/// archive.seek(SeekFrom::Start(100_000))?;
/// let mut part = vec![0; 50_000];
/// archive.read_exact(&mut part)?;
/// assert_eq!(part, image[100_000..150_000]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ArchiveReader {
    chunks: Arc<ChunkReader>,
    index: IndexFile,
    pos: u64,
    /// The chunk the last read used, with its index and start offset.
    current: Option<(usize, u64, Arc<Vec<u8>>)>,
    read_ahead: usize,
    threads: usize,
    /// Worker threads fetching the chunks ahead, started by the first read going forward.
    pool: Option<ReadAhead>,
    _lock: Option<LockGuard>,
}

/// Threads that fetch and check chunks ahead of the reader. Dropping it closes the job queue;
/// each thread ends after the chunk it is on.
struct ReadAhead {
    jobs: Option<mpsc::Sender<([u8; 32], u64)>>,
    results: mpsc::Receiver<([u8; 32], Result<Vec<u8>>)>,
    /// Asked for and not received yet.
    in_flight: HashSet<[u8; 32]>,
    /// Received and not used yet.
    ready: HashMap<[u8; 32], Vec<u8>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ReadAhead {
    fn start(chunks: &Arc<ChunkReader>, threads: usize) -> Self {
        let (jobs, queue) = mpsc::channel::<([u8; 32], u64)>();
        let (done, results) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        let threads = (0..threads)
            .map(|_| {
                let (chunks, queue, done) = (Arc::clone(chunks), Arc::clone(&queue), done.clone());
                std::thread::spawn(move || {
                    loop {
                        let job = queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        let Ok((digest, size)) = job else {
                            return;
                        };
                        let fetched = chunks.fetch(&digest, Some(size));
                        if done.send((digest, fetched)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self {
            jobs: Some(jobs),
            results,
            in_flight: HashSet::new(),
            ready: HashMap::new(),
            threads,
        }
    }

    fn ask(&mut self, digest: [u8; 32], size: u64) {
        if self.in_flight.contains(&digest) || self.ready.contains_key(&digest) {
            return;
        }
        if let Some(jobs) = &self.jobs {
            if jobs.send((digest, size)).is_ok() {
                self.in_flight.insert(digest);
            }
        }
    }

    /// The chunk `digest` if it was asked for: waits for it. `None` if it was not asked for, or
    /// its fetch failed (the caller reads it again, and meets the error itself).
    fn take(&mut self, digest: &[u8; 32]) -> Option<Vec<u8>> {
        loop {
            if let Some(data) = self.ready.remove(digest) {
                return Some(data);
            }
            if !self.in_flight.contains(digest) {
                return None;
            }
            let Ok((got, fetched)) = self.results.recv() else {
                self.in_flight.clear();
                return None;
            };
            self.in_flight.remove(&got);
            if let Ok(data) = fetched {
                self.ready.insert(got, data);
            } else if got == *digest {
                return None;
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for ArchiveReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveReader")
            .field("size", &self.index.archive_size())
            .field("chunks", &self.index.chunk_count())
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl ArchiveReader {
    /// A reader of the archive `index` describes, its chunks read through `chunks`.
    pub fn new(chunks: ChunkReader, index: IndexFile) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            chunks: Arc::new(chunks),
            index,
            pos: 0,
            current: None,
            read_ahead: threads.max(2),
            threads,
            pool: None,
            _lock: None,
        }
    }

    pub(crate) fn holding(mut self, lock: LockGuard) -> Self {
        self._lock = Some(lock);
        self
    }

    /// Fetches up to `chunks` chunks at once when reading forward (default: the number of cores,
    /// at least 2; `1` reads one chunk at a time). Keep the chunk reader's cache larger than
    /// this many chunks.
    #[must_use]
    pub fn read_ahead(mut self, chunks: usize) -> Self {
        self.read_ahead = chunks.max(1);
        self
    }

    /// The archive's size in bytes.
    pub fn size(&self) -> u64 {
        self.index.archive_size()
    }

    /// The index read.
    pub fn index(&self) -> &IndexFile {
        &self.index
    }

    /// The chunk that holds byte `pos`, with its start offset, fetched with read-ahead; `None`
    /// past the end.
    fn chunk_at(&mut self, pos: u64) -> Result<Option<(u64, Arc<Vec<u8>>)>> {
        if let Some((_, start, data)) = &self.current {
            if pos >= *start && pos < start + data.len() as u64 {
                return Ok(Some((*start, Arc::clone(data))));
            }
        }
        let Some(i) = find_chunk(&self.index, pos) else {
            return Ok(None);
        };
        let (Some(range), Some(&digest)) = (self.index.chunk_range(i), self.index.digest(i)) else {
            return Ok(None);
        };
        // Going forward (from the start, or from the chunk before): keep the next chunks in
        // flight on the read-ahead threads, so that decoding runs on every core while the
        // caller consumes. A jump elsewhere reads just the chunk it lands on.
        let forward = self.current.as_ref().is_none_or(|(c, _, _)| *c + 1 == i);
        if forward && self.read_ahead > 1 {
            let cached = self.chunks.lock_cache().contains(&digest);
            let pool = self
                .pool
                .get_or_insert_with(|| ReadAhead::start(&self.chunks, self.threads.max(1)));
            let start = if cached { i + 1 } else { i };
            for j in start..(i + self.read_ahead).min(self.index.chunk_count()) {
                if let (Some(d), Some(r)) = (self.index.digest(j), self.index.chunk_range(j)) {
                    pool.ask(*d, r.end - r.start);
                }
            }
        }
        let expected = range.end - range.start;
        let ahead = self.pool.as_mut().and_then(|pool| pool.take(&digest));
        let data = match ahead {
            Some(data) => {
                let data = Arc::new(data);
                self.chunks.lock_cache().insert(digest, Arc::clone(&data));
                data
            }
            None => self.chunks.read_chunk(&digest, Some(expected))?,
        };
        // Fetched ahead for another reference to the same digest, the size was checked against
        // that reference's claim: check it against this one's.
        if data.len() as u64 != expected {
            return Err(Error::ChunkCorrupt {
                path: chunk_path(&digest),
                defect: ChunkDefect::Size {
                    expected,
                    found: data.len() as u64,
                },
            });
        }
        self.current = Some((i, range.start, Arc::clone(&data)));
        Ok(Some((range.start, data)))
    }
}

/// The chunk covering byte `pos` of the archive.
fn find_chunk(index: &IndexFile, pos: u64) -> Option<usize> {
    if pos >= index.archive_size() {
        return None;
    }
    match index {
        IndexFile::Fixed(fixed) => usize::try_from(pos / fixed.chunk_size()).ok(),
        IndexFile::Dynamic(dynamic) => dynamic.chunk_at(pos),
    }
}

impl Read for ArchiveReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.size() {
            return Ok(0);
        }
        let Some((start, data)) = self.chunk_at(self.pos).map_err(to_io)? else {
            return Ok(0);
        };
        let offset = usize::try_from(self.pos - start).unwrap_or(usize::MAX);
        let Some(left) = data.len().checked_sub(offset).filter(|left| *left > 0) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a chunk shorter than its range in the index",
            ));
        };
        let n = buf.len().min(left);
        buf[..n].copy_from_slice(&data[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ArchiveReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(pos) => {
                self.pos = pos;
                Ok(pos)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the archive",
            )),
        }
    }
}

/// A datastore error as an I/O error (the `Read` trait's), kept as its source.
fn to_io(e: Error) -> io::Error {
    let kind = match &e {
        Error::NotFound { .. } => io::ErrorKind::NotFound,
        Error::ChunkCorrupt { .. } | Error::Corrupt { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl DataStore {
    /// A [`ChunkReader`] over this datastore, with its key.
    pub fn chunk_reader(&self) -> ChunkReader {
        ChunkReader::new(self)
    }
}

impl Snapshot {
    /// Opens the archive `name` (a `.fidx` or `.didx` the manifest lists) for reading, under the
    /// snapshot's shared lock (held until the reader is dropped). The index must have the size and
    /// checksum the manifest records for it. Chunks are decrypted with the store's key.
    ///
    /// # Errors
    /// [`Error::Locked`] while someone holds the snapshot exclusively; [`Error::NotFound`] if the
    /// snapshot, its manifest or the archive is missing, or the manifest does not list it;
    /// [`Error::InvalidArgument`] ([`ArgumentProblem::NotAnArchive`]) for a blob or another
    /// name; [`Error::Corrupt`] for a damaged manifest or index; [`Error::IndexMismatch`] when the
    /// index is not the one the manifest records.
    pub fn open_archive(&self, name: &str) -> Result<ArchiveReader> {
        self.open_archive_with(name, self.store().chunk_reader())
    }

    /// The decoded data of the blob `name` (`client.log.blob`, `qemu-server.conf.blob`, the
    /// manifest `index.json.blob`), read under the snapshot's shared lock: CRC checked, decrypted
    /// with the store's key.
    ///
    /// # Errors
    /// [`Error::Locked`]; [`Error::NotFound`]; [`Error::InvalidArgument`]
    /// ([`ArgumentProblem::NotAnArchive`]) for a name that is not a blob; [`Error::Corrupt`] for a
    /// damaged blob, or an encrypted one without the key ([`keepsake_manifest::Error::MissingKey`]).
    pub fn read_blob(&self, name: &str) -> Result<Vec<u8>> {
        if !matches!(ArchiveKind::from_file_name(name), Ok(ArchiveKind::Blob)) {
            return Err(Error::InvalidArgument(ArgumentProblem::NotAnArchive {
                name: name.to_owned(),
            }));
        }
        let _lock = self.lock_shared()?;
        let raw = self.read_file(name)?;
        let key = self.store().crypt_config();
        CODEC
            .with(|codec| codec.borrow_mut().decode(&raw, key))
            .map_err(|source| Error::Corrupt {
                path: format!("{}/{name}", self.relative_path()),
                source,
            })
    }

    /// As [`Snapshot::open_archive`], reading chunks through `chunks` (another key, another
    /// cache size).
    ///
    /// # Errors
    /// As [`Snapshot::open_archive`].
    pub fn open_archive_with(&self, name: &str, chunks: ChunkReader) -> Result<ArchiveReader> {
        if !matches!(
            ArchiveKind::from_file_name(name),
            Ok(ArchiveKind::FixedIndex | ArchiveKind::DynamicIndex)
        ) {
            return Err(Error::InvalidArgument(ArgumentProblem::NotAnArchive {
                name: name.to_owned(),
            }));
        }
        let lock = self.lock_shared()?;
        let manifest = self.load_manifest()?;
        let Some(entry) = manifest.file(name) else {
            return Err(Error::NotFound {
                what: "archive",
                path: format!("{}/{name}", self.relative_path()),
            });
        };
        let path = format!("{}/{name}", self.relative_path());
        let raw = self.read_file(name)?;
        let index = IndexFile::from_bytes(raw).map_err(|source| Error::Corrupt {
            path: path.clone(),
            source,
        })?;
        if index.archive_size() != entry.size() || index.index_csum() != entry.csum() {
            return Err(Error::IndexMismatch { path });
        }
        Ok(ArchiveReader::new(chunks, index).holding(lock))
    }
}
