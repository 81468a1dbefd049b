//! [`S3Config`]: how to reach an S3-compatible endpoint.

use std::fmt;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use crate::error::{Error, Result};
use crate::requests::{CountingConnector, RequestCounter};

/// How often and how long failed S3 requests are retried (object_store's retry policy).
///
/// Retries apply to connection errors, timeouts and server errors (5xx, throttling), for every
/// request: object_store retries non-idempotent requests too, which is safe here because every
/// write either replaces a whole object or is conditional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetrySettings {
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt.
    pub retry_timeout: Duration,
    /// The first pause between attempts; pauses grow exponentially (factor 2, with jitter).
    pub initial_backoff: Duration,
    /// The longest pause between attempts.
    pub max_backoff: Duration,
}

impl Default for RetrySettings {
    /// PBS's client makes 3 attempts per upload; keepsake retries 3 times with object_store's
    /// backoff (100 ms doubling to 15 s) within 3 minutes.
    fn default() -> Self {
        Self {
            max_retries: 3,
            retry_timeout: Duration::from_secs(180),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
        }
    }
}

impl RetrySettings {
    /// Quick failure for tests against a local server: one retry, short pauses, 5 s in all.
    pub fn for_tests() -> Self {
        Self {
            max_retries: 1,
            retry_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
        }
    }

    fn to_retry_config(self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.initial_backoff,
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }
}

/// An S3-compatible endpoint and bucket (AWS, Ceph RGW, MinIO, Garage, moto, ...).
///
/// Start from [`S3Config::new`] and set the public fields that differ:
///
/// ```
/// use keepsake_backend::{RetrySettings, S3Config};
///
/// let mut config = S3Config::new("my-bucket", "us-east-1", "KEY", "SECRET");
/// config.endpoint = Some("http://127.0.0.1:9000".into());
/// config.allow_http = true;
/// config.retry = RetrySettings::for_tests();
/// assert!(!format!("{config:?}").contains("SECRET"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct S3Config {
    /// The endpoint URL, e.g. `https://s3.example.com:9000`; `None` for AWS (from the region).
    pub endpoint: Option<String>,
    /// The region (any value for most S3-compatible servers; signed into every request).
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key (never printed by `Debug`).
    pub secret_access_key: String,
    /// A session token for temporary credentials.
    pub session_token: Option<String>,
    /// Allow `http://` endpoints (tests, trusted networks). Off by default.
    pub allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted style
    /// (`bucket.endpoint/key`). On by default: most self-hosted servers need it.
    pub path_style: bool,
    /// Whether the endpoint supports conditional writes (`If-None-Match: *` and `If-Match`),
    /// which create-only and compare-and-swap writes need. On by default; without it
    /// [`WriteMode::Update`](crate::WriteMode::Update) fails with
    /// [`Error::Unsupported`](crate::Error::Unsupported).
    pub conditional_writes: bool,
    /// Retry policy.
    pub retry: RetrySettings,
    /// Limit for one request attempt, connection included (PBS: at least 60 s per upload).
    pub request_timeout: Duration,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// The tokio runtime that runs this backend's requests: `None` (the default) gives the
    /// backend a small runtime of its own (two worker threads, shared by its clones);
    /// `Some(handle)` runs them on the application's runtime instead (no second runtime, no
    /// extra threads). That runtime must have its I/O and time drivers enabled
    /// (`enable_all()`) and must outlive the requests.
    ///
    /// **With `Some`, never call the backend's blocking methods from that runtime's own worker
    /// threads** (from async code running on it): each call waits for a request that runs on
    /// that same runtime. On a current-thread runtime the request can then never run (the
    /// only thread is waiting for it): the call hangs for good. On a multi-thread runtime each
    /// waiting call takes a worker out of service, and once every worker waits, all hang. Call
    /// from [`tokio::task::spawn_blocking`], a thread of your own, or another runtime; see
    /// "Calling from async code" in the crate documentation.
    pub runtime: Option<tokio::runtime::Handle>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("path_style", &self.path_style)
            .field("conditional_writes", &self.conditional_writes)
            .field("retry", &self.retry)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field(
                "runtime",
                &match &self.runtime {
                    Some(_) => "the application's",
                    None => "its own",
                },
            )
            .finish()
    }
}

impl S3Config {
    /// A configuration with the defaults: AWS endpoint for `region`, HTTPS only, path-style,
    /// conditional writes on, [`RetrySettings::default`], 60 s per request, 5 s to connect, a
    /// runtime of the backend's own.
    pub fn new(
        bucket: impl Into<String>,
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: None,
            region: region.into(),
            bucket: bucket.into(),
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
            allow_http: false,
            path_style: true,
            conditional_writes: true,
            retry: RetrySettings::default(),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            runtime: None,
        }
    }

    fn client_options(&self) -> ClientOptions {
        ClientOptions::new()
            .with_allow_http(self.allow_http)
            .with_timeout(self.request_timeout)
            .with_connect_timeout(self.connect_timeout)
    }

    /// An HTTP client like the S3 client's own (same options, counted), for the requests
    /// object_store has no call for (conditional deletes).
    pub(crate) fn http_client(
        &self,
        counter: &RequestCounter,
    ) -> Result<object_store::client::HttpClient> {
        use object_store::client::HttpConnector;
        CountingConnector::new(counter.clone())
            .connect(&self.client_options())
            .map_err(|source| Error::backend(format!("s3://{}", self.bucket), source))
    }

    /// Builds the object_store client, counting its HTTP requests into `counter`.
    pub(crate) fn build(&self, counter: &RequestCounter) -> Result<AmazonS3> {
        let options = self.client_options();
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_allow_http(self.allow_http)
            .with_virtual_hosted_style_request(!self.path_style)
            .with_conditional_put(if self.conditional_writes {
                S3ConditionalPut::ETagMatch
            } else {
                S3ConditionalPut::Disabled
            })
            .with_retry(self.retry.to_retry_config())
            .with_client_options(options)
            .with_http_connector(CountingConnector::new(counter.clone()));
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(token) = &self.session_token {
            builder = builder.with_token(token);
        }
        builder
            .build()
            .map_err(|source| Error::backend(format!("s3://{}", self.bucket), source))
    }
}
