//! A backend that fails its n-th mutating call and every one after it, as a process dying
//! there would leave things: for tests of what an interrupted operation leaves behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use keepsake_backend::{
    Backend, BackendPath, Capabilities, ChunkDigest, ChunkInsert, FileContents, KeepFilter,
    Listing, LocalBackend, RemoveReport, Stat, Version, WriteMode,
};

/// Fails the `fail_at`-th mutating call after arming, and every mutating call after it.
#[derive(Debug)]
pub(crate) struct FaultyBackend {
    inner: Arc<dyn Backend>,
    armed: AtomicBool,
    calls: AtomicU64,
    fail_at: u64,
    pub(crate) failed: AtomicU64,
}

impl FaultyBackend {
    pub(crate) fn new(inner: Arc<dyn Backend>, fail_at: u64) -> Self {
        Self {
            inner,
            armed: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            fail_at,
            failed: AtomicU64::new(0),
        }
    }

    pub(crate) fn arm(&self) {
        self.calls.store(0, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Counts a mutating call and fails it if its turn has come.
    fn mutate(&self, what: &str) -> keepsake_backend::Result<()> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.fail_at {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(keepsake_backend::Error::Io {
                path: what.into(),
                source: std::io::Error::other(format!("injected fault at mutating call {n}")),
            });
        }
        Ok(())
    }
}

impl Backend for FaultyBackend {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn list(&self, folder: &BackendPath) -> keepsake_backend::Result<Listing<'_>> {
        self.inner.list(folder)
    }
    fn read(&self, file: &BackendPath) -> keepsake_backend::Result<FileContents> {
        self.inner.read(file)
    }
    fn write(
        &self,
        file: &BackendPath,
        data: &[u8],
        mode: WriteMode,
    ) -> keepsake_backend::Result<Version> {
        self.mutate(file.as_str())?;
        self.inner.write(file, data, mode)
    }
    fn remove_file(&self, file: &BackendPath) -> keepsake_backend::Result<()> {
        self.mutate(file.as_str())?;
        self.inner.remove_file(file)
    }
    fn remove_tree(
        &self,
        folder: &BackendPath,
        keep: &KeepFilter,
    ) -> keepsake_backend::Result<RemoveReport> {
        self.mutate(folder.as_str())?;
        self.inner.remove_tree(folder, keep)
    }
    fn rename(&self, from: &BackendPath, to: &BackendPath) -> keepsake_backend::Result<()> {
        self.mutate(from.as_str())?;
        self.inner.rename(from, to)
    }
    fn stat(&self, path: &BackendPath) -> keepsake_backend::Result<Stat> {
        self.inner.stat(path)
    }
    fn create_dir_all(&self, folder: &BackendPath) -> keepsake_backend::Result<()> {
        self.mutate(folder.as_str())?;
        self.inner.create_dir_all(folder)
    }
    fn insert_chunk(
        &self,
        digest: &ChunkDigest,
        blob: &[u8],
    ) -> keepsake_backend::Result<ChunkInsert> {
        self.mutate(".chunks")?;
        self.inner.insert_chunk(digest, blob)
    }
    fn read_chunk(&self, digest: &ChunkDigest) -> keepsake_backend::Result<Vec<u8>> {
        self.inner.read_chunk(digest)
    }
    fn chunk_exists(&self, digest: &ChunkDigest) -> keepsake_backend::Result<bool> {
        self.inner.chunk_exists(digest)
    }
    // The intent journal and `.lock` go to the host's folder directly: they are not faulted here
    // (the kill test covers a process dying while they are written).
    fn host_local(&self) -> Option<&LocalBackend> {
        self.inner.host_local()
    }
}
