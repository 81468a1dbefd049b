//! PBS's process locker on `<store>/.lock` (spec 2.8): backup writers hold a shared fcntl record
//! lock for the whole backup, garbage collection an exclusive one, so that a GC in one process
//! never runs beside a writer in another (PBS's or keepsake's).
//!
//! fcntl (POSIX) record locks belong to the process, not to a file descriptor: a second lock call
//! from the same process converts the first, and closing *any* descriptor of the file drops every
//! lock the process holds on it. So there is exactly one [`ProcessLock`] per lock file per process
//! (a process-wide registry, keyed by the file's device and inode), which counts its shared
//! holders in memory as PBS's locker does. Within the process, a GC does not exclude writers: they
//! register with their start time instead, and the GC lowers its cutoff to the oldest of them.
//! The same object carries the chunk store's in-process mutex (sharded by digest), which makes a
//! writer's "this chunk exists, touch it" and the sweep's "this chunk is old, remove it" exclusive.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use rustix::fs::{FlockOperation, fcntl_lock, fstat};
use rustix::io::Errno;
use rustix::process::{Flock, FlockType, fcntl_getlk};

use crate::error::{Error, ProcessLockMode, Result};

/// How many shards the in-process chunk mutex has (indexed by the digest's first byte).
const CHUNK_SHARDS: usize = 256;

/// The one lock object of a `.lock` file in this process.
pub(crate) struct ProcessLock {
    fd: OwnedFd,
    store: String,
    state: Mutex<State>,
    chunk_shards: Vec<Mutex<()>>,
}

#[derive(Default)]
struct State {
    /// Shared holders in this process: id → start (epoch seconds).
    shared: BTreeMap<u64, i64>,
    next_id: u64,
    /// The exclusive holder's view: the oldest writer start seen since it took the lock.
    exclusive: Option<Option<i64>>,
    /// How many times this process took the exclusive lock (GC runs started here).
    exclusive_taken: u64,
}

/// The lock files known in this process: (device, inode) → lock object.
static REGISTRY: Mutex<Vec<(u64, u64, Weak<ProcessLock>)>> = Mutex::new(Vec::new());

fn unpoison<T>(guard: std::result::Result<T, PoisonError<T>>) -> T {
    guard.unwrap_or_else(PoisonError::into_inner)
}

impl ProcessLock {
    /// The process's lock object for the open lock file `fd` of `store`. If the process has one
    /// already for that file, `fd` is kept open for the rest of the process (closing it would
    /// drop the locks held through the other descriptor) and the existing object is returned.
    pub(crate) fn for_file(fd: OwnedFd, store: &str) -> Result<Arc<ProcessLock>> {
        let stat = fstat(&fd).map_err(|e| Error::Io {
            path: ".lock".into(),
            source: e.into(),
        })?;
        let key = (stat.st_dev, stat.st_ino);
        let mut registry = unpoison(REGISTRY.lock());
        registry.retain(|(_, _, lock)| lock.strong_count() > 0);
        if let Some(found) = registry
            .iter()
            .find(|(dev, ino, _)| (*dev, *ino) == key)
            .and_then(|(_, _, lock)| lock.upgrade())
        {
            // Leaked on purpose: see above. One descriptor per extra handle on one store.
            std::mem::forget(fd);
            return Ok(found);
        }
        let lock = Arc::new(ProcessLock {
            fd,
            store: store.to_owned(),
            state: Mutex::new(State::default()),
            chunk_shards: (0..CHUNK_SHARDS).map(|_| Mutex::new(())).collect(),
        });
        registry.push((key.0, key.1, Arc::downgrade(&lock)));
        Ok(lock)
    }

    /// Takes a shared hold (a backup writer's), started at `now` (epoch seconds). The first one
    /// in the process takes the fcntl read lock; while this process holds the exclusive lock (a
    /// GC runs here) the hold is only counted, and lowers that GC's cutoff.
    ///
    /// # Errors
    /// [`Error::ProcessLocked`] if another process holds the exclusive lock.
    pub(crate) fn shared(self: &Arc<Self>, now: i64) -> Result<SharedProcessGuard> {
        let mut state = unpoison(self.state.lock());
        if state.shared.is_empty() && state.exclusive.is_none() {
            self.set(
                FlockOperation::NonBlockingLockShared,
                ProcessLockMode::Shared,
            )?;
        }
        if let Some(oldest) = &mut state.exclusive {
            *oldest = Some(oldest.map_or(now, |o| o.min(now)));
        }
        let id = state.next_id;
        state.next_id += 1;
        state.shared.insert(id, now);
        Ok(SharedProcessGuard {
            lock: Arc::clone(self),
            id,
        })
    }

    /// Takes the exclusive lock (a GC's), without waiting.
    ///
    /// # Errors
    /// [`Error::ProcessLocked`] if another process holds a shared or exclusive lock (naming its
    /// pid where the system tells it), or this process runs a GC already.
    pub(crate) fn exclusive(self: &Arc<Self>) -> Result<ExclusiveProcessGuard> {
        let mut state = unpoison(self.state.lock());
        if state.exclusive.is_some() {
            return Err(Error::ProcessLocked {
                store: self.store.clone(),
                wanted: ProcessLockMode::Exclusive,
                held: ProcessLockMode::Exclusive,
                pid: Some(std::process::id() as i32),
            });
        }
        self.set(
            FlockOperation::NonBlockingLockExclusive,
            ProcessLockMode::Exclusive,
        )?;
        state.exclusive = Some(state.shared.values().copied().min());
        state.exclusive_taken += 1;
        Ok(ExclusiveProcessGuard {
            lock: Arc::clone(self),
        })
    }

    /// Which GC of this process was the last to start: `None` while one runs, else how many
    /// started so far. The same value at two moments means that no GC of this process removed
    /// anything in between (a GC removes only while it holds the exclusive lock).
    pub(crate) fn gc_epoch(&self) -> Option<u64> {
        let state = unpoison(self.state.lock());
        match state.exclusive {
            Some(_) => None,
            None => Some(state.exclusive_taken),
        }
    }

    /// Runs `f` while no writer of this process can decide that the chunk `digest` exists.
    pub(crate) fn with_chunk<T>(&self, digest: &[u8; 32], f: impl FnOnce() -> T) -> T {
        let _shard = unpoison(self.chunk_shards[usize::from(digest[0])].lock());
        f()
    }

    /// The shard guard for chunks whose digest starts with `first_byte` (the sweep holds it while
    /// it checks and removes one chunk).
    pub(crate) fn chunk_shard(&self, first_byte: u8) -> MutexGuard<'_, ()> {
        unpoison(self.chunk_shards[usize::from(first_byte)].lock())
    }

    fn set(&self, operation: FlockOperation, wanted: ProcessLockMode) -> Result<()> {
        match fcntl_lock(&self.fd, operation) {
            Ok(()) => Ok(()),
            Err(Errno::AGAIN | Errno::ACCESS) => Err(self.conflict(wanted)),
            Err(e) => Err(Error::Io {
                path: ".lock".into(),
                source: e.into(),
            }),
        }
    }

    /// The error for a lock another process holds, naming it as the system reports it.
    fn conflict(&self, wanted: ProcessLockMode) -> Error {
        let probe = Flock::from(match wanted {
            ProcessLockMode::Shared => FlockType::ReadLock,
            ProcessLockMode::Exclusive => FlockType::WriteLock,
        });
        let holder = fcntl_getlk(&self.fd, &probe).ok().flatten();
        Error::ProcessLocked {
            store: self.store.clone(),
            wanted,
            held: match holder.as_ref().map(|h| h.typ) {
                Some(FlockType::WriteLock) => ProcessLockMode::Exclusive,
                _ => ProcessLockMode::Shared,
            },
            // An OFD lock's holder has no pid (the system reports -1).
            pid: holder
                .and_then(|h| h.pid)
                .map(|p| p.as_raw_nonzero().get())
                .filter(|p| *p > 0),
        }
    }

    fn release_shared(&self, id: u64) {
        let mut state = unpoison(self.state.lock());
        state.shared.remove(&id);
        if state.shared.is_empty() && state.exclusive.is_none() {
            // Nothing to report from a drop; the lock goes with the process at the latest.
            let _ = fcntl_lock(&self.fd, FlockOperation::NonBlockingUnlock);
        }
    }

    fn release_exclusive(&self) {
        let mut state = unpoison(self.state.lock());
        state.exclusive = None;
        // Back to what the writers of this process need, as PBS's locker does.
        let op = if state.shared.is_empty() {
            FlockOperation::NonBlockingUnlock
        } else {
            FlockOperation::NonBlockingLockShared
        };
        let _ = fcntl_lock(&self.fd, op);
    }

    /// The oldest start (epoch seconds) of a writer of this process that held a shared hold at
    /// any time since the exclusive lock was taken, if any.
    fn oldest_writer(&self) -> Option<i64> {
        unpoison(self.state.lock()).exclusive.flatten()
    }
}

/// A backup writer's hold on the process lock; dropping it releases it.
pub(crate) struct SharedProcessGuard {
    lock: Arc<ProcessLock>,
    id: u64,
}

impl Drop for SharedProcessGuard {
    fn drop(&mut self) {
        self.lock.release_shared(self.id);
    }
}

/// A GC's exclusive process lock; dropping it releases it (back to shared while writers of this
/// process run).
pub(crate) struct ExclusiveProcessGuard {
    lock: Arc<ProcessLock>,
}

impl ExclusiveProcessGuard {
    /// See [`ProcessLock::oldest_writer`].
    pub(crate) fn oldest_writer(&self) -> Option<i64> {
        self.lock.oldest_writer()
    }

    /// The lock object (for the chunk shards).
    pub(crate) fn lock(&self) -> &ProcessLock {
        &self.lock
    }
}

impl Drop for ExclusiveProcessGuard {
    fn drop(&mut self) {
        self.lock.release_exclusive();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The epoch sync relies on: unchanged while no GC of this process starts, `None` while one
    /// runs, and different after one ran, whether writers hold the lock or not.
    #[test]
    fn the_gc_epoch_changes_with_every_gc_of_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.path().join(".lock"))
            .unwrap();
        let lock = ProcessLock::for_file(OwnedFd::from(file), "store").unwrap();
        assert_eq!(lock.gc_epoch(), Some(0));
        let writer = lock.shared(1_000).unwrap();
        assert_eq!(lock.gc_epoch(), Some(0));
        let gc = lock.exclusive().unwrap();
        assert_eq!(lock.gc_epoch(), None);
        drop(gc);
        assert_eq!(lock.gc_epoch(), Some(1));
        drop(writer);
        drop(lock.exclusive().unwrap());
        assert_eq!(lock.gc_epoch(), Some(2));
    }
}
