//! Riding through a store that misbehaves: S3 endpoints restart, answer 500/503 SlowDown,
//! reset connections and sometimes stop answering altogether. A nightly backup that fails
//! on a three-second blip is a missed backup, so every request is retried with
//! exponential backoff and jitter for a bounded total time ([`RetryPolicy::retry_for`]),
//! and a request that gets no answer within [`RetryPolicy::request_timeout`] is abandoned
//! and retried.
//!
//! The retry loop itself is object_store's (it knows which requests are safe to send
//! again and replays their payloads; freezer's writes are all idempotent: blobs are
//! content-addressed, records written whole). What freezer adds here is the transport
//! under it: a reqwest client with a stall timeout (object_store's own has only a total
//! timeout, which would cut long downloads), and a tap on every failed attempt, so that
//! retries and their causes show in the progress output and the JSON result
//! ([`RetryLog`]).
//!
//! object_store bounds each request on its own, from when that request began. A run
//! makes many requests one after another (the upload, then aborting it, then releasing
//! the lock), and each would get the whole `retry_for` again, so a store that stays down
//! would hold the run for a multiple of its bound. [`Health`] is the store's state as
//! the whole run sees it: since when every attempt has failed. [`bounded`] ends any
//! operation once that streak is `retry_for` long, and an operation started after that
//! (clean-up) gets one short try.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

/// How hard to try. Defaults ride through a store restart of a few minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long one request (or a read resumed after a broken download) is retried
    /// before the run fails with exit 3.
    pub retry_for: Duration,
    /// A request that receives nothing for this long (no response, no body bytes) is
    /// abandoned and retried. An upload part (8 MiB) must go up within it.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_for: Duration::from_secs(300),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Connections are refused at once when nothing listens; a host that does not answer
/// the handshake at all is given this long before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl RetryPolicy {
    pub(super) fn object_store_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            // The time bound decides; the count only has to be out of the way.
            max_retries: usize::MAX,
            retry_timeout: self.retry_for,
        }
    }
}

/// What one store client has seen of its store: since when every attempt has failed
/// (none since: `None`), and the cause of the latest failure.
#[derive(Debug, Default)]
pub(super) struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// When the first failed attempt of the current streak was sent. A hung store is
    /// only known as such once an attempt has waited out its timeout; dating the streak
    /// from the send keeps the bound measured from when the store went away.
    failing_since: Option<Instant>,
    last_cause: Option<String>,
}

/// How long an operation begun after the run gave up on its store may still try (the
/// clean-up: aborting an upload, releasing the lock). A refused connection fails at
/// once; a hung store costs this much per clean-up step.
const LAST_TRY: Duration = Duration::from_secs(3);

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed(&self, sent: Instant, cause: &str) {
        let mut s = self.lock();
        s.failing_since.get_or_insert(sent);
        s.last_cause = Some(cause.to_string());
    }

    fn answered(&self) {
        self.lock().failing_since = None;
    }

    /// How long every attempt has failed, if the latest one did.
    pub(super) fn down_for(&self) -> Option<Duration> {
        self.lock().failing_since.map(|t| t.elapsed())
    }

    /// The latest failure's cause ("Connection refused", "no answer within 10s").
    pub(super) fn last_cause(&self) -> Option<String> {
        self.lock().last_cause.clone()
    }

    /// Whether the run should stop trying: the store has been failing for `retry_for`.
    pub(super) fn given_up(&self, policy: &RetryPolicy) -> bool {
        self.down_for().is_some_and(|d| d >= policy.retry_for)
    }
}

/// The error an operation ends with when [`bounded`] stops it.
#[derive(Debug)]
pub(super) struct GaveUp;

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the store stayed unreachable")
    }
}

impl std::error::Error for GaveUp {}

/// Runs one store operation (a request and its retries, or a stream of them) until it
/// ends or the store has been failing for `retry_for`; in the latter case it ends with
/// [`GaveUp`] (an operation begun after that point first gets [`LAST_TRY`]).
pub(super) async fn bounded<T>(
    health: &Health,
    policy: &RetryPolicy,
    op: impl Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    let started = Instant::now();
    let late = health.given_up(policy);
    let watch = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if health.given_up(policy) && (!late || started.elapsed() >= LAST_TRY) {
                return;
            }
        }
    };
    tokio::select! {
        r = op => r,
        () = watch => Err(object_store::Error::Generic {
            store: "S3",
            source: Box::new(GaveUp),
        }),
    }
}

/// Every failed attempt at a store request of this process, by cause. One log per
/// process: retries are reported in the command's result whatever store they hit.
#[derive(Default)]
pub struct RetryLog {
    count: AtomicU64,
    causes: Mutex<BTreeMap<String, u64>>,
    last_said: Mutex<Option<(String, Instant)>>,
}

/// A summary of the retries of a run, for the JSON result (SPEC.md §9).
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct RetrySummary {
    /// Failed attempts that were tried again (or given up on at the end of `retry_for`).
    pub count: u64,
    /// How many attempts failed with each cause.
    pub causes: BTreeMap<String, u64>,
}

/// How a failed attempt is announced: a line on stderr, a JSON event, or nothing.
pub type Announce = Box<dyn Fn(&str, &str) + Send + Sync>;

static LOG: OnceLock<RetryLog> = OnceLock::new();
static ANNOUNCE: OnceLock<Announce> = OnceLock::new();
static HUSHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The process's retry log.
pub fn log() -> &'static RetryLog {
    LOG.get_or_init(RetryLog::default)
}

/// Sets how failed attempts are announced (once, by the binary, from its output mode).
/// Without it they are only counted.
pub fn announce_with(f: Announce) {
    let _ = ANNOUNCE.set(f);
}

/// From now on failed attempts are only counted (the run has printed its result).
pub fn hush() {
    HUSHED.store(true, Ordering::Relaxed);
}

impl RetryLog {
    pub fn summary(&self) -> RetrySummary {
        RetrySummary {
            count: self.count.load(Ordering::Relaxed),
            causes: self
                .causes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn record(&self, request: &str, cause: &str) {
        self.count.fetch_add(1, Ordering::Relaxed);
        *self
            .causes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cause.to_string())
            .or_default() += 1;
        // Parallel requests fail together when the store goes away: say a cause once,
        // then again only every few seconds while it lasts.
        let mut last = self.last_said.lock().unwrap_or_else(|e| e.into_inner());
        let repeat = last
            .as_ref()
            .is_some_and(|(c, at)| c == cause && at.elapsed() < Duration::from_secs(5));
        if !repeat {
            *last = Some((cause.to_string(), Instant::now()));
            drop(last);
            if let Some(say) = ANNOUNCE.get().filter(|_| !HUSHED.load(Ordering::Relaxed)) {
                say(request, cause);
            }
        }
    }
}

/// Builds the HTTP client object_store sends through: reqwest with connect and stall
/// timeouts, wrapped in a [`Tap`].
#[derive(Debug)]
pub(super) struct Connector {
    pub policy: RetryPolicy,
    pub allow_http: bool,
    pub health: Arc<Health>,
}

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Resets with every read: a stalled response or body is abandoned, a long
            // download that keeps flowing is not.
            .read_timeout(self.policy.request_timeout)
            .https_only(!self.allow_http)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(Tap {
            client,
            request_timeout: self.policy.request_timeout,
            health: self.health.clone(),
        }))
    }
}

/// Sends requests and notes every attempt that failed in a way object_store retries.
#[derive(Debug)]
struct Tap {
    client: reqwest::Client,
    request_timeout: Duration,
    health: Arc<Health>,
}

#[async_trait::async_trait]
impl HttpService for Tap {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let request = format!("{} {}", req.method(), req.uri().path());
        // reqwest's read timeout covers the wait for the response but not the sending
        // of a request body to a server that stopped reading; bound the whole exchange
        // up to the response head as well (the body is streamed later, under the read
        // timeout).
        let limit = self.request_timeout + CONNECT_TIMEOUT;
        let sent = Instant::now();
        let result = match tokio::time::timeout(limit, self.client.call(req)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::new(
                HttpErrorKind::Timeout,
                Stalled(self.request_timeout),
            )),
        };
        match result {
            Err(e) => {
                let cause = cause_of(&e, self.request_timeout);
                self.health.failed(sent, &cause);
                log().record(&request, &cause);
                Err(e)
            }
            Ok(r) => {
                let s = r.status();
                if s.is_server_error() || s.as_u16() == 429 || s.as_u16() == 408 {
                    self.health.failed(sent, &s.to_string());
                    log().record(&request, &s.to_string());
                } else {
                    self.health.answered();
                }
                // A body that breaks off is resumed by object_store (a ranged GET from the
                // last byte); count it like any other failed attempt.
                let (parts, body) = r.into_parts();
                let body = TappedBody {
                    body,
                    request,
                    timeout: self.request_timeout,
                    health: self.health.clone(),
                };
                Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
            }
        }
    }
}

struct TappedBody {
    body: HttpResponseBody,
    request: String,
    timeout: Duration,
    health: Arc<Health>,
}

impl http_body::Body for TappedBody {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &r {
            let cause = cause_of(e, self.timeout);
            // A stalled body was last heard of one timeout ago.
            let since = Instant::now()
                .checked_sub(self.timeout)
                .unwrap_or_else(Instant::now);
            self.health.failed(since, &cause);
            log().record(&self.request, &cause);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[derive(Debug)]
struct Stalled(Duration);

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no answer within {}s", self.0.as_secs())
    }
}

impl std::error::Error for Stalled {}

/// The reason under a transport error ("Connection refused", "connection reset"), not
/// the client's top-level words ("error sending request").
fn cause_of(e: &HttpError, timeout: Duration) -> String {
    if e.kind() == HttpErrorKind::Timeout {
        return Stalled(timeout).to_string();
    }
    deepest_cause(e)
}

/// The innermost message of an error chain, without "(os error N)": what went wrong,
/// not the layers it went through (object_store's retry wrapper would add its counters).
pub(super) fn deepest_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        deepest = c.to_string();
        cur = c.source();
    }
    // "Connection refused (os error 111)" → "Connection refused"
    match deepest.find(" (os error") {
        Some(i) => deepest[..i].to_string(),
        None => deepest,
    }
}
