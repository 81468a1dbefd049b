//! The tokio runtime the object-store side owns, and how blocking callers wait on it.

use std::fmt;
use std::future::Future;
use std::sync::mpsc;

use crate::error::{Error, Result};

/// A small multi-thread runtime owned by one object backend.
///
/// Blocking callers hand a future to it and wait on a std channel, so they may be plain threads
/// or threads that run a runtime of their own (where `Runtime::block_on` would panic with
/// "cannot start a runtime from within a runtime").
pub(crate) struct BlockingRuntime {
    // Option only so that Drop can take it: see there.
    runtime: Option<tokio::runtime::Runtime>,
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
            runtime: Some(runtime),
        })
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the runtime is only taken in Drop")
            .handle()
    }

    /// Runs `future` on this runtime and blocks the calling thread until it is done.
    ///
    /// # Errors
    /// [`Error::Backend`] (naming `what`) if the future panicked.
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
                    source: "the object-store task stopped without an answer (it panicked)".into(),
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
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
