//! The tokio runtime the object-store side runs its requests on (its own, or the application's),
//! and how blocking callers wait on it.

use std::fmt;
use std::future::Future;
use std::sync::mpsc;

use crate::error::{Error, Result};

/// The runtime one object backend (and its clones) runs requests on: a small multi-thread
/// runtime of its own, or the application's ([`S3Config::runtime`](crate::S3Config::runtime)).
///
/// Blocking callers hand a future to it and wait on a std channel, so they may be plain threads
/// or threads that run a runtime of their own (where `Runtime::block_on` would panic with
/// "cannot start a runtime from within a runtime"). A thread that the future needs to make
/// progress must not wait: see `S3Config::runtime`.
pub(crate) struct BlockingRuntime {
    /// The runtime this backend owns; `None` when it runs on the application's. (Also `None`
    /// once Drop took it: see there.)
    owned: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl fmt::Debug for BlockingRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingRuntime").finish_non_exhaustive()
    }
}

/// Worker threads: requests are I/O-bound; two keep one busy decoding while the other waits.
const WORKER_THREADS: usize = 2;

impl BlockingRuntime {
    pub(crate) fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("keepsake-object-store")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                path: "<object-store runtime>".into(),
                source,
            })?;
        Ok(Self {
            handle: runtime.handle().clone(),
            owned: Some(runtime),
        })
    }

    /// Requests run on the application's runtime behind `handle`.
    pub(crate) fn shared(handle: tokio::runtime::Handle) -> Self {
        Self {
            owned: None,
            handle,
        }
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `future` on this runtime and blocks the calling thread until it is done.
    ///
    /// # Errors
    /// [`Error::Backend`] (naming `what`) if the future panicked, or if the runtime shut down
    /// before it ended (only an application's runtime can: this crate never shuts its own down
    /// while a backend uses it).
    pub(crate) fn run<F>(&self, what: &str, future: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle().spawn(async move {
            // The receiver only goes away if the caller's thread died; nothing to report to.
            let _ = tx.send(future.await);
        });
        rx.recv().map_err(|_| {
            Error::backend(
                what,
                object_store::Error::Generic {
                    store: "keepsake",
                    source: "the object-store task stopped without an answer (it panicked, or \
                             its runtime shut down)"
                        .into(),
                },
            )
        })
    }
}

impl Drop for BlockingRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks end, which panics when the last backend is
        // dropped inside another runtime's async context; shutting down in the background
        // does not.
        if let Some(runtime) = self.owned.take() {
            runtime.shutdown_background();
        }
    }
}
