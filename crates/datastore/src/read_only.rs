//! The backend wrapper of a read-only [`DataStore`](crate::DataStore): reads pass, writes fail.

use std::sync::Arc;

use keepsake_backend::{
    Backend, BackendPath, BucketState, Capabilities, ChunkDigest, ChunkInsert, Error, FileContents,
    KeepFilter, Listing, LocalBackend, RemoveReport, Result, Stat, Version, WriteMode,
};

/// Forwards every read to the wrapped backend and refuses every write with
/// [`Error::Unsupported`], so that nothing a read-only store does can change the datastore.
#[derive(Debug)]
pub(crate) struct ReadOnlyBackend {
    inner: Arc<dyn Backend>,
}

impl ReadOnlyBackend {
    pub(crate) fn new(inner: Arc<dyn Backend>) -> Self {
        Self { inner }
    }
}

fn refuse<T>(path: &BackendPath) -> Result<T> {
    Err(Error::Unsupported {
        path: path.clone(),
        what: "a change (the datastore was opened read-only)",
    })
}

impl Backend for ReadOnlyBackend {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn list(&self, folder: &BackendPath) -> Result<Listing<'_>> {
        self.inner.list(folder)
    }
    fn read(&self, file: &BackendPath) -> Result<FileContents> {
        self.inner.read(file)
    }
    fn read_data(&self, file: &BackendPath) -> Result<Vec<u8>> {
        self.inner.read_data(file)
    }
    fn read_data_max(&self, file: &BackendPath, max: u64) -> Result<Vec<u8>> {
        self.inner.read_data_max(file, max)
    }
    fn read_authoritative_max(&self, file: &BackendPath, max: u64) -> Result<FileContents> {
        self.inner.read_authoritative_max(file, max)
    }
    fn write(&self, file: &BackendPath, _data: &[u8], _mode: WriteMode) -> Result<Version> {
        refuse(file)
    }
    fn remove_file(&self, file: &BackendPath) -> Result<()> {
        refuse(file)
    }
    fn remove_tree(&self, folder: &BackendPath, _keep: &KeepFilter) -> Result<RemoveReport> {
        refuse(folder)
    }
    fn rename(&self, from: &BackendPath, _to: &BackendPath) -> Result<()> {
        refuse(from)
    }
    fn stat(&self, path: &BackendPath) -> Result<Stat> {
        self.inner.stat(path)
    }
    fn create_dir_all(&self, folder: &BackendPath) -> Result<()> {
        refuse(folder)
    }
    fn exists(&self, path: &BackendPath) -> Result<bool> {
        self.inner.exists(path)
    }
    fn insert_chunk(&self, digest: &ChunkDigest, _blob: &[u8]) -> Result<ChunkInsert> {
        refuse(&digest.local_path())
    }
    fn read_chunk(&self, digest: &ChunkDigest) -> Result<Vec<u8>> {
        self.inner.read_chunk(digest)
    }
    fn read_chunk_authoritative(&self, digest: &ChunkDigest) -> Result<Vec<u8>> {
        self.inner.read_chunk_authoritative(digest)
    }
    fn quarantine_chunk(&self, digest: &ChunkDigest) -> Result<BackendPath> {
        refuse(&digest.local_path())
    }
    fn chunk_exists(&self, digest: &ChunkDigest) -> Result<bool> {
        self.inner.chunk_exists(digest)
    }
    fn host_local(&self) -> Option<&LocalBackend> {
        self.inner.host_local()
    }
    fn bucket_state(&self) -> Result<Option<BucketState>> {
        self.inner.bucket_state()
    }
    fn list_bucket_chunks(
        &self,
        each: &mut dyn FnMut(&[ChunkDigest]) -> Result<()>,
    ) -> Result<Option<u64>> {
        self.inner.list_bucket_chunks(each)
    }
    fn mark_in_use(&self, _hostname: &str) -> Result<()> {
        refuse(&BackendPath::root())
    }
    fn read_authoritative(&self, file: &BackendPath) -> Result<FileContents> {
        self.inner.read_authoritative(file)
    }
    fn exists_authoritative(&self, path: &BackendPath) -> Result<bool> {
        self.inner.exists_authoritative(path)
    }
    fn list_files_authoritative(&self, folder: &BackendPath) -> Result<Vec<BackendPath>> {
        self.inner.list_files_authoritative(folder)
    }
    fn remove_files(&self, files: &[BackendPath]) -> Result<RemoveReport> {
        match files.first() {
            Some(first) => refuse(first),
            None => Ok(RemoveReport::default()),
        }
    }
    fn remove_folder_if_empty(&self, folder: &BackendPath) -> Result<bool> {
        refuse(folder)
    }
}
