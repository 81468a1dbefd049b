#![doc = include_str!("../README.md")]
// docs.rs (all features) marks what needs a feature.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Docs of what exists without `s3` name the S3 backends too; without them those names stay text.
#![cfg_attr(not(feature = "s3"), allow(rustdoc::broken_intra_doc_links))]

#[cfg(feature = "s3")]
mod bucket_chunks;
#[cfg(feature = "s3")]
mod cached;
mod chunk;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod identity;
mod in_use;
mod keep;
#[cfg(feature = "s3")]
pub mod layout;
mod local;
mod marker;
#[cfg(feature = "s3")]
mod object;
mod path;
#[cfg(feature = "s3")]
mod raw;
#[cfg(feature = "s3")]
mod record;
#[cfg(feature = "s3")]
mod requests;
#[cfg(feature = "s3")]
mod runtime;
#[cfg(feature = "s3")]
mod s3;
mod version;

use std::fmt;
use std::sync::Arc;

#[cfg(feature = "s3")]
pub use bucket_chunks::{ChunkListing, ChunkObject, ContentObject};
#[cfg(feature = "s3")]
pub use cached::{CachedBackend, REFRESH_LOCK, RefreshReport};
pub use chunk::{BAD_CHUNK_SLOTS, ChunkDigest};
pub use error::{Error, Result};
pub use identity::{CACHE_MARKER, CacheIdentity};
pub use in_use::{BucketState, InUse};
pub use keep::{KeepFilter, KeepPlan, PROTECTED_GROUP_FILES, PROTECTED_MARKER};
pub use local::{LocalBackend, MAX_CHUNK_READ, MAX_WHOLE_FILE_READ, SyncLevel};
pub use marker::cache_identity;
#[cfg(feature = "s3")]
pub use object::{ObjectBackend, WRITE_TOKEN_METADATA};
pub use path::{BackendPath, MAX_COMPONENT_LEN, MAX_PATH_LEN, is_temporary_name};
#[cfg(feature = "s3")]
pub use raw::{DeleteOutcome, RawKey, RawObject};
#[cfg(feature = "s3")]
pub use requests::RequestCounts;
#[cfg(feature = "s3")]
pub use s3::{RetrySettings, S3Config};
pub use version::Version;

/// What kind of entry a listing or [`Backend::stat`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    /// A file (an object, on object stores).
    File,
    /// A folder (a key prefix, on object stores).
    Dir,
    /// Something else on a local filesystem (a symbolic link, socket, FIFO or device). Backends
    /// never follow or read it; object stores never report it.
    Other,
}

/// One entry of a folder listing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The entry's name: one valid path component.
    pub name: String,
    /// File, folder or other.
    pub kind: EntryKind,
}

/// A folder listing: entries one by one, each exactly once; see the contract on [`Backend::list`].
pub type Listing<'a> = Box<dyn Iterator<Item = Result<Entry>> + Send + 'a>;

/// A file's bytes together with the version they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContents {
    /// The whole file.
    pub data: Vec<u8>,
    /// The version of exactly these bytes, for [`WriteMode::Update`].
    pub version: Version,
}

/// What [`Backend::stat`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stat {
    /// File, folder or other.
    pub kind: EntryKind,
    /// The size in bytes, for files.
    pub size: Option<u64>,
}

/// How [`Backend::write`] treats a file that exists already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteMode {
    /// Replace whatever is there (or create).
    Replace,
    /// Create only: fail with [`Error::AlreadyExists`] if the file exists.
    CreateOnly,
    /// Compare-and-swap: replace the file only if it is still at this version (as returned by
    /// [`Backend::read`] or [`Backend::write`]); fail with [`Error::Precondition`] otherwise,
    /// also when the file is gone.
    Update(Version),
}

/// What [`Backend::remove_tree`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RemoveReport {
    /// Files (objects) removed.
    pub removed: u64,
    /// Files (objects) kept by the [`KeepFilter`].
    pub kept: u64,
}

impl RemoveReport {
    /// Whether the whole tree is gone (nothing was kept).
    pub fn is_complete(&self) -> bool {
        self.kept == 0
    }
}

/// What a backend can and cannot do, for callers (and the conformance suite) that adapt to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Listings come in ascending byte order of the names (object stores); otherwise in no
    /// particular order (a local directory's own order).
    pub sorted_listing: bool,
    /// A folder can exist without anything in it (local filesystem); on object stores folders
    /// exist only through the keys below them.
    pub empty_folders: bool,
    /// [`Backend::rename`] is atomic (local filesystem); otherwise it copies and then deletes.
    pub atomic_rename: bool,
    /// [`WriteMode::Update`] is available.
    pub compare_and_swap: bool,
    /// The backend is its own authority (see the contract): the `*_authoritative` methods
    /// answer like the plain ones, so a caller that asked one need not ask the other. False
    /// for a cache in front of an authority ([`CachedBackend`]).
    pub own_authority: bool,
}

/// A place where a datastore's metadata lives, addressed by [`BackendPath`].
///
/// # Contract
///
/// Every implementation keeps these rules; the conformance suite
/// (`keepsake_backend::conformance`, feature `conformance`) checks them for each.
///
/// **Paths.** A path names either a file or a folder, never both. Folders are created as needed
/// by writes and renames. On object stores a folder exists only while some key is below it: an
/// empty folder does not exist there (PBS marks empty namespaces with a `.namespace` file for that
/// reason), and [`Backend::create_dir_all`] does nothing.
///
/// **Atomicity.** A write replaces the whole file at once: a reader sees the old bytes or the new
/// bytes, never a mix or a prefix, and a crashed writer leaves at most a temporary file whose name
/// starts with `.` and contains `.tmp_` (no PBS listing matches it). [`WriteMode::CreateOnly`] has
/// exactly one winner among concurrent writers, and the file is never visible half-written.
/// [`WriteMode::Update`] replaces the file only if it is still at the version the caller read;
/// among concurrent updates from one version exactly one wins. Versions are opaque: a content
/// hash on the local filesystem, the ETag (and object version) on object stores, the bucket's
/// version in the cached backend.
///
/// **Listing.** [`Backend::list`] streams a folder's direct entries, each exactly once, with
/// their kind. Object stores list in ascending byte order of names, page by page (1,000 keys a
/// request on S3); the local filesystem in directory order (see [`Capabilities::sorted_listing`]).
/// A listing that runs while the folder changes may or may not show the changed entries.
///
/// **Durability.** On the local filesystem a write is durable when it returns if the
/// [`SyncLevel`] is `Filesystem` (file and folder are fsynced); with `File` the bytes are on disk
/// before they become visible, but the rename may be lost in a crash; with `None` nothing is
/// forced. On object stores a write is durable when it returns. The cached backend writes the
/// bucket first, then the cache.
///
/// **Removal.** [`Backend::remove_tree`] removes every file below a folder except what the
/// [`KeepFilter`] keeps, and the folders left empty. It ends at a `/` boundary: removing `vm/100`
/// never touches `vm/1000`. It is not atomic: a failure can leave part of the tree, which
/// [`Error::Incomplete`] reports. [`Backend::remove_files`] removes exactly the files it is
/// given and nothing else, and [`Backend::remove_folder_if_empty`] a folder only while nothing
/// is in it (on object stores: no key below it).
///
/// **Conditional writes on object stores.** A create-only or compare-and-swap write whose request
/// was retried (the first attempt landed but its reply was lost) meets its own object and would
/// fail; the object backend recognises its own attempt by a random token in the object's
/// metadata and succeeds. Identical bytes written by someone else are still a conflict: a
/// compare-and-swap that lost must lose even when the winner wrote the same bytes.
///
/// **Authority.** Where a backend is a cache in front of an authority (the [`CachedBackend`]:
/// the bucket decides, the local folder only remembers), listings, stat and reads come from the
/// cache and may be stale; the `*_authoritative` methods ask the authority itself
/// ([`Backend::read_authoritative`], [`Backend::exists_authoritative`],
/// [`Backend::list_files_authoritative`]), and [`Backend::remove_folder_if_empty`] decides from
/// it. A destructive decision (is this folder empty, is this snapshot protected, which files are
/// left) must be taken from them, right before acting. A backend that is its own authority
/// answers them like the plain methods.
///
/// **Rename.** [`Backend::rename`] moves a file or a folder to a path that must not exist. It is
/// atomic on the local filesystem; on object stores it copies every object and then deletes the
/// sources, so a failure or a concurrent reader can see both or part of both.
///
/// **Errors.** Nothing at the path gives [`Error::NotFound`] (also for a folder where a file is
/// expected, or the reverse). A path that would leave the datastore gives [`Error::RefusedPath`]:
/// the local backend never follows a symbolic link, at any level.
///
/// **Threads.** Every method blocks until done and may be called from any thread, including one
/// that runs a tokio runtime (of either flavour). The one exception is a backend told to run its
/// requests on the application's runtime (`S3Config::runtime`): that runtime's own worker
/// threads must not call it (see "Calling from async code" in the crate docs). Implementations
/// are `Send + Sync`.
pub trait Backend: Send + Sync + fmt::Debug {
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Streams the direct entries of `folder` (the root is always there).
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no such folder (on object stores: no key below it); errors
    /// while streaming come as items.
    fn list(&self, folder: &BackendPath) -> Result<Listing<'_>>;

    /// Reads a whole file and the version of what was read.
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no file at `file`.
    fn read(&self, file: &BackendPath) -> Result<FileContents>;

    /// Reads a whole file without its version, for a reader that will not write it back: the
    /// local backend then skips hashing the content for a version nobody asks for. The same
    /// bytes and errors as [`read`](Self::read).
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no file at `file`.
    fn read_data(&self, file: &BackendPath) -> Result<Vec<u8>> {
        self.read(file).map(|contents| contents.data)
    }

    /// As [`read_data`](Self::read_data), for a file whose kind bounds its size (a blob is at
    /// most PBS's 128 MiB and a header): a larger file is [`Error::TooLarge`], refused before it
    /// is read where the backend can tell its size first (the local backend can: a hostile
    /// sparse file of a terabyte costs nothing), else after.
    ///
    /// # Errors
    /// As [`read_data`](Self::read_data); [`Error::TooLarge`].
    fn read_data_max(&self, file: &BackendPath, max: u64) -> Result<Vec<u8>> {
        let data = self.read_data(file)?;
        check_size(file, data.len(), max)?;
        Ok(data)
    }

    /// As [`read_authoritative`](Self::read_authoritative), bounded as
    /// [`read_data_max`](Self::read_data_max) is (a manifest read to be updated).
    ///
    /// # Errors
    /// As [`read_authoritative`](Self::read_authoritative); [`Error::TooLarge`].
    fn read_authoritative_max(&self, file: &BackendPath, max: u64) -> Result<FileContents> {
        let contents = self.read_authoritative(file)?;
        check_size(file, contents.data.len(), max)?;
        Ok(contents)
    }

    /// Writes a whole file atomically (see the contract) and returns the new version.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] for a create-only write onto an existing file,
    /// [`Error::Precondition`] for a compare-and-swap that lost, [`Error::RefusedPath`] for the
    /// root.
    fn write(&self, file: &BackendPath, data: &[u8], mode: WriteMode) -> Result<Version>;

    /// Removes one file.
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no file at `file`.
    fn remove_file(&self, file: &BackendPath) -> Result<()>;

    /// Removes every file below `folder` except those `keep` keeps, then the folders left empty
    /// (`folder` included, unless something was kept in it).
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no such folder; [`Error::Incomplete`] if some entries
    /// could not be removed (the rest were).
    fn remove_tree(&self, folder: &BackendPath, keep: &KeepFilter) -> Result<RemoveReport>;

    /// Moves the file or folder `from` to `to`, creating the folders above `to`.
    ///
    /// # Errors
    /// [`Error::NotFound`] if nothing is at `from`; [`Error::AlreadyExists`] if something is at
    /// `to`; [`Error::RefusedPath`] if `to` is inside `from`.
    fn rename(&self, from: &BackendPath, to: &BackendPath) -> Result<()>;

    /// Tells what is at `path`.
    ///
    /// # Errors
    /// [`Error::NotFound`] if nothing is there.
    fn stat(&self, path: &BackendPath) -> Result<Stat>;

    /// Creates `folder` and the folders above it; succeeds if they exist. A no-op on object stores.
    ///
    /// # Errors
    /// [`Error::Io`] if a file is in the way.
    fn create_dir_all(&self, folder: &BackendPath) -> Result<()>;

    /// Whether anything is at `path`.
    ///
    /// # Errors
    /// Whatever [`Backend::stat`] fails with, except [`Error::NotFound`].
    fn exists(&self, path: &BackendPath) -> Result<bool> {
        match self.stat(path) {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads a whole file from the authority (see the contract): for a cache, the bytes and
    /// version the authority holds now, never the cache's memory of them.
    ///
    /// The default is [`Backend::read`], for backends that are their own authority.
    ///
    /// ```
    /// # #[cfg(feature = "s3")]
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use keepsake_backend::{Backend, CachedBackend, LocalBackend, ObjectBackend, SyncLevel, WriteMode};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let bucket = ObjectBackend::in_memory("store1")?;
    /// let cached = CachedBackend::new(LocalBackend::open(dir.path(), SyncLevel::None)?, bucket.clone());
    /// let owner = "vm/100/owner".parse()?;
    /// cached.write(&owner, b"root@pam\n", WriteMode::CreateOnly)?;
    ///
    /// // Another host changes the bucket; this cache does not know yet.
    /// bucket.write(&owner, b"admin@pbs\n", WriteMode::Replace)?;
    /// assert_eq!(cached.read(&owner)?.data, b"root@pam\n");
    /// assert_eq!(cached.read_authoritative(&owner)?.data, b"admin@pbs\n");
    /// // The authoritative read repaired the cache.
    /// assert_eq!(cached.read(&owner)?.data, b"admin@pbs\n");
    /// # Ok(()) }
    /// # #[cfg(not(feature = "s3"))]
    /// # fn main() {}
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`] if the authority has no file at `file`.
    fn read_authoritative(&self, file: &BackendPath) -> Result<FileContents> {
        self.read(file)
    }

    /// Whether anything (a file, or a folder with something below it) is at `path` in the
    /// authority. The default is [`Backend::exists`].
    ///
    /// # Errors
    /// Backend errors.
    fn exists_authoritative(&self, path: &BackendPath) -> Result<bool> {
        self.exists(path)
    }

    /// Every file below `folder`, at any depth, as the authority holds them, in [`BackendPath`]
    /// order. Folders are not listed; on the local filesystem neither are symbolic links and
    /// other non-files (nothing is followed). On object stores this is one listing without
    /// delimiter (a request per 1,000 keys).
    ///
    /// The default walks [`Backend::list`].
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no folder `folder` (on object stores: no key below it;
    /// the root always exists).
    fn list_files_authoritative(&self, folder: &BackendPath) -> Result<Vec<BackendPath>> {
        let mut files = Vec::new();
        let mut stack = vec![folder.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match self.list(&dir) {
                Ok(entries) => entries,
                // Gone since its parent was listed: nothing below it any more.
                Err(Error::NotFound { .. }) if dir != *folder => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let path = dir.join(&entry.name)?;
                match entry.kind {
                    EntryKind::File => files.push(path),
                    EntryKind::Dir => stack.push(path),
                    EntryKind::Other => {}
                }
            }
        }
        files.sort();
        Ok(files)
    }

    /// Removes exactly these files (in the authority first, where there is one) and nothing
    /// else: no folder, no other file. Files that are not there are fine and not counted.
    ///
    /// The default removes them one by one with [`Backend::remove_file`].
    ///
    /// # Errors
    /// [`Error::RefusedPath`] for the root (before anything is removed); [`Error::Incomplete`]
    /// (naming the deepest folder holding every file) if some could not be removed, the rest
    /// were.
    fn remove_files(&self, files: &[BackendPath]) -> Result<RemoveReport> {
        for file in files {
            check_file_path(file)?;
        }
        let mut report = RemoveReport::default();
        let mut failures = Vec::new();
        for file in unique_sorted(files) {
            match self.remove_file(file) {
                Ok(()) => report.removed += 1,
                Err(Error::NotFound { .. }) => {}
                Err(e) => failures.push(e),
            }
        }
        incomplete_unless_empty(files, failures).map(|()| report)
    }

    /// Removes `folder` if nothing is in it, deciding from the authority; returns whether it is
    /// gone (also when it was not there).
    ///
    /// - Local filesystem: removes the folder only if it has no entry at all (an empty subfolder
    ///   counts); `false` if something is in it, or if `folder` is not a folder.
    /// - Object stores: `true` if no key is below `<key>/` (folders exist only through keys, so
    ///   nothing needs deleting).
    /// - Cached backend: `true` if the bucket has no key below the folder; then the cache folder
    ///   goes too, with whatever stale copies are in it. If the bucket still has something, the
    ///   answer is `false` and nothing changes, whatever the cache holds.
    ///
    /// The default lists the folder, and if it is empty removes it with [`Backend::remove_tree`]
    /// keeping every file (so only folders left empty go).
    ///
    /// # Errors
    /// [`Error::RefusedPath`] for the root.
    fn remove_folder_if_empty(&self, folder: &BackendPath) -> Result<bool> {
        check_folder_removable(folder)?;
        match self.list(folder) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Ok(false);
                }
            }
            Err(Error::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(e),
        }
        let keep_every_file = KeepFilter::nothing().or_predicate(|_| true);
        match self.remove_tree(folder, &keep_every_file) {
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(!self.exists(folder)?)
    }

    /// Stores a chunk (its encoded DataBlob bytes) under its digest, create-only: a chunk that is
    /// there already is not rewritten and the answer is [`ChunkInsert::Duplicate`]. Concurrent
    /// inserts of one digest have one [`ChunkInsert::Stored`] winner.
    ///
    /// Chunks live apart from the content: `.chunks/<4 hex>/<64 hex>` in a local datastore,
    /// `<store>/.chunks/<4 hex>/<64 hex>` in a bucket (not below `.cnt`), and in the cached
    /// backend in the bucket first (PBS's no-replace upload), then in the cache.
    ///
    /// # Errors
    /// Backend errors.
    fn insert_chunk(&self, digest: &ChunkDigest, blob: &[u8]) -> Result<ChunkInsert> {
        match self.write(&digest.local_path(), blob, WriteMode::CreateOnly) {
            Ok(_) => Ok(ChunkInsert::Stored),
            Err(Error::AlreadyExists { .. }) => Ok(ChunkInsert::Duplicate),
            Err(e) => Err(e),
        }
    }

    /// Reads a chunk's encoded bytes.
    ///
    /// # Errors
    /// [`Error::NotFound`] (with the chunk's local path) if the chunk is not stored.
    fn read_chunk(&self, digest: &ChunkDigest) -> Result<Vec<u8>> {
        self.read(&digest.local_path())
            .map(|contents| contents.data)
    }

    /// Reads a chunk's encoded bytes from the authority: the bucket for the cached backend
    /// (which then replaces its cache copy with them), the same as
    /// [`read_chunk`](Backend::read_chunk) elsewhere. For deciding that a chunk is corrupt
    /// before setting it aside: a damaged cache copy is not a damaged chunk.
    ///
    /// # Errors
    /// As [`read_chunk`](Backend::read_chunk).
    fn read_chunk_authoritative(&self, digest: &ChunkDigest) -> Result<Vec<u8>> {
        self.read_chunk(digest)
    }

    /// Sets a corrupt chunk aside as PBS does: renamed to `<digest>.<n>.bad` in its folder
    /// ([`ChunkDigest::bad_path`]), `n` the first of `0..10` not taken (when all are, the last
    /// is replaced). The digest is then free for a good copy (the next backup that has the
    /// data stores it again), and the bad one stays for inspection. Returns the new path.
    ///
    /// In object storage the object is copied to its new key, then deleted; the cached backend
    /// does that in the bucket first, then renames the cache's copy or marker.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the chunk is not stored; backend errors.
    fn quarantine_chunk(&self, digest: &ChunkDigest) -> Result<BackendPath> {
        let target = free_bad_path(digest, |path| self.exists(path))?;
        if self.exists(&target)? {
            self.remove_file(&target)?;
        }
        self.rename(&digest.local_path(), &target)?;
        Ok(target)
    }

    /// Whether a chunk is stored.
    ///
    /// # Errors
    /// Backend errors.
    fn chunk_exists(&self, digest: &ChunkDigest) -> Result<bool> {
        self.exists(&digest.local_path())
    }

    /// The local datastore directory behind this backend, if there is one: the datastore itself
    /// for [`LocalBackend`], the cache for [`CachedBackend`], none for a bare [`ObjectBackend`].
    ///
    /// It is for files that belong to this host and must not go to a bucket: PBS's process lock
    /// file `.lock`, journals of operations in progress.
    fn host_local(&self) -> Option<&LocalBackend> {
        None
    }

    /// For a datastore in object storage: PBS's `.in-use` marker and whether content is stored,
    /// asked of the bucket (never a cache). `None` from backends that are not in object storage
    /// (a local folder has no marker). A wrapper around another backend must forward it, or
    /// creating and opening through the wrapper lose their bucket checks.
    ///
    /// # Errors
    /// Backend errors (the bucket could not be asked: never read as "no marker").
    fn bucket_state(&self) -> Result<Option<BucketState>> {
        Ok(None)
    }

    /// For a datastore in object storage: writes PBS's `.in-use` marker naming `hostname` (a
    /// plain put, as PBS does at creation). Backends that are not in object storage have no
    /// marker and write nothing.
    ///
    /// # Errors
    /// Backend errors.
    fn mark_in_use(&self, hostname: &str) -> Result<()> {
        let _ = hostname;
        Ok(())
    }

    /// For a datastore in object storage: one listing of the bucket's `.chunks/` (a request per
    /// 1,000 keys; never a cache), `each` called with the digests of a page's chunk objects as
    /// the listing advances. Keys that are not a chunk in its own prefix folder (`.bad` copies,
    /// other names) are left out. Returns how many digests were handed over.
    ///
    /// `Ok(None)`, without calling `each`, from backends that are not in object storage: there
    /// [`chunk_exists`](Self::chunk_exists) costs no request, so a listing saves nothing. A
    /// wrapper around another backend should forward it, or its users ask chunk by chunk.
    ///
    /// The listing is a picture of the moment each page was fetched: a caller that relies on it
    /// later must keep the chunks from being removed meanwhile (see the datastore's sync).
    ///
    /// # Errors
    /// Backend errors from a listing request; `each`'s errors end the listing and are returned.
    fn list_bucket_chunks(
        &self,
        each: &mut dyn FnMut(&[ChunkDigest]) -> Result<()>,
    ) -> Result<Option<u64>> {
        let _ = each;
        Ok(None)
    }
}

/// What [`Backend::insert_chunk`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkInsert {
    /// The chunk was written.
    Stored,
    /// The chunk was there already; nothing was written.
    Duplicate,
}

/// [`Error::TooLarge`] for `len` bytes read from `file` past `max`.
pub(crate) fn check_size(file: &BackendPath, len: usize, max: u64) -> Result<()> {
    let size = len as u64;
    if size > max {
        return Err(Error::TooLarge {
            path: file.to_string(),
            size,
            limit: max,
        });
    }
    Ok(())
}

macro_rules! forward_backend {
    ($($wrapper:ty),*) => {$(
        impl<T: Backend + ?Sized> Backend for $wrapper {
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            fn list(&self, folder: &BackendPath) -> Result<Listing<'_>> {
                (**self).list(folder)
            }
            fn read(&self, file: &BackendPath) -> Result<FileContents> {
                (**self).read(file)
            }
            fn read_data(&self, file: &BackendPath) -> Result<Vec<u8>> {
                (**self).read_data(file)
            }
            fn read_data_max(&self, file: &BackendPath, max: u64) -> Result<Vec<u8>> {
                (**self).read_data_max(file, max)
            }
            fn read_authoritative_max(
                &self,
                file: &BackendPath,
                max: u64,
            ) -> Result<FileContents> {
                (**self).read_authoritative_max(file, max)
            }
            fn write(&self, file: &BackendPath, data: &[u8], mode: WriteMode) -> Result<Version> {
                (**self).write(file, data, mode)
            }
            fn remove_file(&self, file: &BackendPath) -> Result<()> {
                (**self).remove_file(file)
            }
            fn remove_tree(&self, folder: &BackendPath, keep: &KeepFilter) -> Result<RemoveReport> {
                (**self).remove_tree(folder, keep)
            }
            fn rename(&self, from: &BackendPath, to: &BackendPath) -> Result<()> {
                (**self).rename(from, to)
            }
            fn stat(&self, path: &BackendPath) -> Result<Stat> {
                (**self).stat(path)
            }
            fn create_dir_all(&self, folder: &BackendPath) -> Result<()> {
                (**self).create_dir_all(folder)
            }
            fn exists(&self, path: &BackendPath) -> Result<bool> {
                (**self).exists(path)
            }
            fn read_authoritative(&self, file: &BackendPath) -> Result<FileContents> {
                (**self).read_authoritative(file)
            }
            fn exists_authoritative(&self, path: &BackendPath) -> Result<bool> {
                (**self).exists_authoritative(path)
            }
            fn list_files_authoritative(&self, folder: &BackendPath) -> Result<Vec<BackendPath>> {
                (**self).list_files_authoritative(folder)
            }
            fn remove_files(&self, files: &[BackendPath]) -> Result<RemoveReport> {
                (**self).remove_files(files)
            }
            fn remove_folder_if_empty(&self, folder: &BackendPath) -> Result<bool> {
                (**self).remove_folder_if_empty(folder)
            }
            fn insert_chunk(&self, digest: &ChunkDigest, blob: &[u8]) -> Result<ChunkInsert> {
                (**self).insert_chunk(digest, blob)
            }
            fn read_chunk(&self, digest: &ChunkDigest) -> Result<Vec<u8>> {
                (**self).read_chunk(digest)
            }
            fn read_chunk_authoritative(&self, digest: &ChunkDigest) -> Result<Vec<u8>> {
                (**self).read_chunk_authoritative(digest)
            }
            fn quarantine_chunk(&self, digest: &ChunkDigest) -> Result<BackendPath> {
                (**self).quarantine_chunk(digest)
            }
            fn chunk_exists(&self, digest: &ChunkDigest) -> Result<bool> {
                (**self).chunk_exists(digest)
            }
            fn bucket_state(&self) -> Result<Option<BucketState>> {
                (**self).bucket_state()
            }
            fn mark_in_use(&self, hostname: &str) -> Result<()> {
                (**self).mark_in_use(hostname)
            }
            fn host_local(&self) -> Option<&LocalBackend> {
                (**self).host_local()
            }
            fn list_bucket_chunks(
                &self,
                each: &mut dyn FnMut(&[ChunkDigest]) -> Result<()>,
            ) -> Result<Option<u64>> {
                (**self).list_bucket_chunks(each)
            }
        }
    )*};
}

forward_backend!(&T, Box<T>, Arc<T>);

/// Refuses a rename into its own subtree, which no backend can carry out.
/// The first `<digest>.<n>.bad` name not taken, or the last one when all are.
pub(crate) fn free_bad_path(
    digest: &ChunkDigest,
    mut taken: impl FnMut(&BackendPath) -> Result<bool>,
) -> Result<BackendPath> {
    for n in 0..BAD_CHUNK_SLOTS {
        let path = digest.bad_path(n);
        if !taken(&path)? {
            return Ok(path);
        }
    }
    Ok(digest.bad_path(BAD_CHUNK_SLOTS - 1))
}

pub(crate) fn check_rename(from: &BackendPath, to: &BackendPath) -> Result<()> {
    if from.is_root() || to.is_root() {
        return Err(Error::refused("", "the root cannot be renamed or replaced"));
    }
    if to.starts_with(from) {
        return Err(Error::refused(
            to.as_str(),
            "a folder cannot be moved into itself",
        ));
    }
    Ok(())
}

/// Refuses the root as a file path.
pub(crate) fn check_file_path(file: &BackendPath) -> Result<()> {
    if file.is_root() {
        return Err(Error::refused("", "the root is a folder, not a file"));
    }
    Ok(())
}

/// Refuses the root as a folder to remove.
pub(crate) fn check_folder_removable(folder: &BackendPath) -> Result<()> {
    if folder.is_root() {
        return Err(Error::refused("", "the root is never removed"));
    }
    Ok(())
}

/// `files` sorted, each once.
pub(crate) fn unique_sorted(files: &[BackendPath]) -> Vec<&BackendPath> {
    let mut sorted: Vec<&BackendPath> = files.iter().collect();
    sorted.sort();
    sorted.dedup();
    sorted
}

/// The deepest folder that holds every one of `files` (the root if they share none).
pub(crate) fn common_folder(files: &[BackendPath]) -> BackendPath {
    let mut common: Option<BackendPath> = None;
    for file in files {
        let parent = file.parent().unwrap_or_default();
        common = Some(match common {
            None => parent,
            Some(current) => {
                let mut shared = BackendPath::root();
                for (a, b) in current.components().zip(parent.components()) {
                    if a != b {
                        break;
                    }
                    // Components of a valid path join to a valid path.
                    shared = shared.join(a).unwrap_or_default();
                }
                shared
            }
        });
    }
    common.unwrap_or_default()
}

/// [`Error::Incomplete`] over `files` if there are `failures`, the first one as its source.
pub(crate) fn incomplete_unless_empty(
    files: &[BackendPath],
    mut failures: Vec<Error>,
) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    Err(Error::Incomplete {
        path: common_folder(files),
        failed: failures.len(),
        source: Box::new(failures.swap_remove(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared<T: Send + Sync>() {}

    #[test]
    fn everything_shared_is_send_and_sync() {
        shared::<LocalBackend>();
        shared::<Box<dyn Backend>>();
        shared::<KeepFilter>();
        shared::<KeepPlan>();
        shared::<Version>();
        shared::<Error>();
    }

    #[cfg(feature = "s3")]
    #[test]
    fn everything_shared_on_the_object_store_side_is_send_and_sync() {
        shared::<ObjectBackend>();
        shared::<CachedBackend>();
        shared::<S3Config>();
    }
}
