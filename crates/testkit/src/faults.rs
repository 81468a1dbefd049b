//! Fault injection for object stores: [`FaultyStore`] wraps any `object_store::ObjectStore` and
//! fails calls by plan (the Nth call, a seeded random fraction, some keys of every delete batch)
//! or slows them down.
//!
//! ```
//! use std::sync::Arc;
//! use keepsake_testkit::faults::{FaultPlan, FaultyStore, Operation};
//! use object_store::memory::InMemory;
//!
//! let plan = FaultPlan::new(42).fail_nth(Operation::Put, 2);
//! let store = Arc::new(FaultyStore::new(Arc::new(InMemory::new()), plan));
//! // Hand `store` to the code under test; afterwards:
//! assert_eq!(store.calls(Operation::Put), 0);
//! assert_eq!(store.injected(), 0);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// The kinds of call a plan can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `put_opts`, `put_multipart_opts`.
    Put,
    /// `get_opts` without `head`, `get_ranges`.
    Get,
    /// `get_opts` with `head` (`ObjectStoreExt::head`).
    Head,
    /// `list`, `list_with_offset`, `list_with_delimiter`.
    List,
    /// `delete_stream` (one call per stream; `ObjectStoreExt::delete` is one too).
    Delete,
    /// `copy_opts`.
    Copy,
}

/// The error source of every injected failure (inside `object_store::Error::Generic`), so
/// tests can tell injected failures from real ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault {
    /// The failed call's kind.
    pub operation: Operation,
    /// Which call of that kind it was (1-based), or which deleted key for partial deletes.
    pub call: u64,
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected fault: {:?} #{}", self.operation, self.call)
    }
}

impl std::error::Error for InjectedFault {}

/// Whether an object_store error is one this module injected.
pub fn is_injected(error: &object_store::Error) -> bool {
    match error {
        object_store::Error::Generic { source, .. } => source.is::<InjectedFault>(),
        _ => false,
    }
}

/// What to fail and when. Rules add up: a call fails if any rule says so.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    seed: u64,
    nth: Vec<(Operation, u64)>,
    random: Vec<(Option<Operation>, f64)>,
    every_nth_deleted_key: Option<u64>,
    delay: Option<Duration>,
    ignore_put_conditions: bool,
}

impl FaultPlan {
    /// A plan that fails nothing yet; `seed` drives every random rule, so a run is repeatable.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nth: Vec::new(),
            random: Vec::new(),
            every_nth_deleted_key: None,
            delay: None,
            ignore_put_conditions: false,
        }
    }

    /// Fails exactly the `n`th call (1-based) of `operation`.
    pub fn fail_nth(mut self, operation: Operation, n: u64) -> Self {
        self.nth.push((operation, n));
        self
    }

    /// Fails each call of `operation` with probability `p` (0.0 to 1.0).
    pub fn fail_randomly(mut self, operation: Operation, p: f64) -> Self {
        self.random.push((Some(operation), p));
        self
    }

    /// Fails each call of any kind with probability `p` (0.0 to 1.0).
    pub fn fail_any_randomly(mut self, p: f64) -> Self {
        self.random.push((None, p));
        self
    }

    /// Partial batch deletes: of all keys passed to `delete_stream`, every `k`th (counting
    /// across calls) is reported failed and not deleted; the others are deleted.
    pub fn fail_every_nth_deleted_key(mut self, k: u64) -> Self {
        self.every_nth_deleted_key = Some(k.max(1));
        self
    }

    /// Plays a server without conditional writes: every put overwrites, whatever its
    /// `PutMode` (`If-None-Match` and `If-Match` are ignored, as by endpoints that do not
    /// implement them).
    pub fn ignore_put_conditions(mut self) -> Self {
        self.ignore_put_conditions = true;
        self
    }

    /// Delays every call by `delay` (needs a tokio runtime with timers, as object stores do).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

#[derive(Debug)]
struct State {
    calls: HashMap<Operation, u64>,
    rng: u64,
    deleted_keys: u64,
    injected: u64,
}

impl State {
    /// SplitMix64: tiny, seeded, good enough to spread failures.
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An `ObjectStore` that forwards to `inner` except where its [`FaultPlan`] injects a failure.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: FaultPlan,
    state: Arc<Mutex<State>>,
}

impl FaultyStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, plan: FaultPlan) -> Self {
        let state = State {
            calls: HashMap::new(),
            rng: plan.seed,
            deleted_keys: 0,
            injected: 0,
        };
        Self {
            inner,
            plan,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// How many calls of `operation` were made (failed ones included).
    pub fn calls(&self, operation: Operation) -> u64 {
        self.lock().calls.get(&operation).copied().unwrap_or(0)
    }

    /// How many failures were injected (calls and deleted keys).
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the call and decides whether it fails.
    fn enter(&self, operation: Operation) -> object_store::Result<()> {
        let mut state = self.lock();
        let call = {
            let n = state.calls.entry(operation).or_insert(0);
            *n += 1;
            *n
        };
        let mut fail = self
            .plan
            .nth
            .iter()
            .any(|&(op, n)| op == operation && n == call);
        for &(op, p) in &self.plan.random {
            // Draw for every matching rule, failing or not, so the sequence is stable.
            if op.is_none_or(|op| op == operation) && state.next_unit() < p {
                fail = true;
            }
        }
        if fail {
            state.injected += 1;
            return Err(injected(operation, call));
        }
        Ok(())
    }

    async fn pause(&self) {
        if let Some(delay) = self.plan.delay {
            tokio::time::sleep(delay).await;
        }
    }
}

fn injected(operation: Operation, call: u64) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: Box::new(InjectedFault { operation, call }),
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.pause().await;
        self.enter(Operation::Put)?;
        if self.plan.ignore_put_conditions {
            opts.mode = PutMode::Overwrite;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.pause().await;
        self.enter(Operation::Put)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.pause().await;
        self.enter(if options.head {
            Operation::Head
        } else {
            Operation::Get
        })?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.pause().await;
        self.enter(Operation::Get)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let whole_call = self.enter(Operation::Delete);
        let inner = Arc::clone(&self.inner);
        let state = Arc::clone(&self.state);
        let every = self.plan.every_nth_deleted_key;
        let delay = self.plan.delay;
        stream::once(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let locations: Vec<object_store::Result<Path>> = locations.collect().await;
            if let Err(e) = whole_call {
                let failed = vec![Err(e)];
                return stream::iter(failed).boxed();
            }
            let mut results = Vec::new();
            let mut forward = Vec::new();
            {
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                for location in locations {
                    let Ok(path) = location else {
                        results.push(location);
                        continue;
                    };
                    state.deleted_keys += 1;
                    let key_number = state.deleted_keys;
                    if every.is_some_and(|k| key_number % k == 0) {
                        state.injected += 1;
                        results.push(Err(injected(Operation::Delete, key_number)));
                    } else {
                        forward.push(Ok(path));
                    }
                }
            }
            let deleted: Vec<object_store::Result<Path>> = inner
                .delete_stream(stream::iter(forward).boxed())
                .collect()
                .await;
            results.extend(deleted);
            stream::iter(results).boxed()
        })
        .flatten()
        .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Err(e) = self.enter(Operation::List) {
            return stream::once(async move { Err(e) }).boxed();
        }
        delayed(self.plan.delay, self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Err(e) = self.enter(Operation::List) {
            return stream::once(async move { Err(e) }).boxed();
        }
        delayed(self.plan.delay, self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.pause().await;
        self.enter(Operation::List)?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.pause().await;
        self.enter(Operation::Copy)?;
        self.inner.copy_opts(from, to, options).await
    }
}

fn delayed<T: Send + 'static>(
    delay: Option<Duration>,
    inner: BoxStream<'static, T>,
) -> BoxStream<'static, T> {
    match delay {
        None => inner,
        Some(delay) => stream::once(async move {
            tokio::time::sleep(delay).await;
            inner
        })
        .flatten()
        .boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    fn key(i: u64) -> Path {
        Path::from(format!("k/{i}"))
    }

    #[test]
    fn fails_exactly_the_nth_call() {
        runtime().block_on(async {
            let store = FaultyStore::new(
                Arc::new(InMemory::new()),
                FaultPlan::new(1).fail_nth(Operation::Put, 2),
            );
            store.put(&key(1), "a".into()).await.unwrap();
            let error = store.put(&key(2), "b".into()).await.unwrap_err();
            assert!(is_injected(&error), "{error}");
            store.put(&key(3), "c".into()).await.unwrap();
            assert_eq!(store.calls(Operation::Put), 3);
            assert_eq!(store.injected(), 1);
            assert!(store.head(&key(2)).await.is_err());
            assert_eq!(store.calls(Operation::Head), 1);
        });
    }

    #[test]
    fn random_failures_follow_the_seed() {
        let failures = |seed: u64| {
            runtime().block_on(async {
                let store = FaultyStore::new(
                    Arc::new(InMemory::new()),
                    FaultPlan::new(seed).fail_randomly(Operation::Put, 0.3),
                );
                let mut failed = Vec::new();
                for i in 0..200 {
                    if store.put(&key(i), "x".into()).await.is_err() {
                        failed.push(i);
                    }
                }
                failed
            })
        };
        let first = failures(7);
        assert_eq!(first, failures(7));
        assert_ne!(first, failures(8));
        assert!((30..90).contains(&first.len()), "{}", first.len());
    }

    #[test]
    fn partial_batch_deletes() {
        runtime().block_on(async {
            let inner = Arc::new(InMemory::new());
            let store = FaultyStore::new(
                inner.clone(),
                FaultPlan::new(1).fail_every_nth_deleted_key(3),
            );
            for i in 1..=9 {
                store.put(&key(i), "x".into()).await.unwrap();
            }
            let keys = stream::iter((1..=9).map(|i| Ok(key(i)))).boxed();
            let results: Vec<_> = store.delete_stream(keys).collect().await;
            assert_eq!(results.iter().filter(|r| r.is_err()).count(), 3);
            for i in 1..=9 {
                let exists = inner.head(&key(i)).await.is_ok();
                assert_eq!(exists, i % 3 == 0, "key {i}");
            }
            assert_eq!(store.calls(Operation::Delete), 1);
            assert_eq!(store.injected(), 3);
        });
    }

    #[test]
    fn ignored_put_conditions_overwrite() {
        runtime().block_on(async {
            let store = FaultyStore::new(
                Arc::new(InMemory::new()),
                FaultPlan::new(1).ignore_put_conditions(),
            );
            let create = || PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            store.put_opts(&key(1), "a".into(), create()).await.unwrap();
            store.put_opts(&key(1), "b".into(), create()).await.unwrap();
            let stale = object_store::UpdateVersion {
                e_tag: Some("\"not-the-etag\"".into()),
                version: None,
            };
            let update = PutOptions {
                mode: PutMode::Update(stale),
                ..Default::default()
            };
            store.put_opts(&key(1), "c".into(), update).await.unwrap();
            let bytes = store.get(&key(1)).await.unwrap().bytes().await.unwrap();
            assert_eq!(&bytes[..], b"c");
        });
    }

    #[test]
    fn delays_and_whole_call_failures() {
        runtime().block_on(async {
            let store = FaultyStore::new(
                Arc::new(InMemory::new()),
                FaultPlan::new(1)
                    .delay(Duration::from_millis(20))
                    .fail_nth(Operation::List, 1)
                    .fail_nth(Operation::Delete, 1),
            );
            let started = std::time::Instant::now();
            store.put(&key(1), "x".into()).await.unwrap();
            assert!(started.elapsed() >= Duration::from_millis(20));
            let listed: Vec<_> = store.list(None).collect().await;
            assert!(listed.len() == 1 && listed[0].is_err());
            let listed: Vec<_> = store.list(None).collect().await;
            assert_eq!(listed.len(), 1);
            assert!(listed[0].is_ok());
            assert!(store.delete(&key(1)).await.is_err());
            store.delete(&key(1)).await.unwrap();
            assert!(store.head(&key(1)).await.is_err());
        });
    }
}
