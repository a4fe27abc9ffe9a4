//! Which export errors are retried, how long to wait, and the retry loop.
//!
//! The rules are the OTLP specification's: gRPC CANCELLED, DEADLINE_EXCEEDED,
//! ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are retryable, and
//! RESOURCE_EXHAUSTED only when the server attaches a `RetryInfo`; HTTP 429,
//! 502, 503 and 504 and connection failures are retryable; TLS failures
//! are not (see `tls_attempt`). A server's delay
//! (`RetryInfo.retry_delay`, `Retry-After`) is a lower bound on the wait;
//! otherwise the wait is exponential with jitter.
//!
//! Server delays come from the peer and configured durations from the user,
//! so neither may overflow an `Instant`: a delay is clamped to `retry_for`,
//! and one longer than what is left of the retry budget gives up at once
//! (counted as `retries_exhausted`) instead of sleeping past it.

use std::{
    collections::HashMap,
    future::Future,
    time::{Duration, SystemTime},
};

use rand::Rng;
use tokio::{sync::watch, time::Instant};

use super::metrics::ExportMetrics;

/// The result of one export attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The server took the request; `rejected` items were refused in a
    /// partial success (never retried, per the spec).
    Delivered {
        rejected: u64,
        message: String,
    },
    Retryable {
        kind: String,
        detail: String,
        /// The server's requested wait, if any.
        delay: Option<Duration>,
    },
    Permanent {
        kind: String,
        detail: String,
    },
}

/// The result of exporting one request, retries included.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Delivered {
        rejected: u64,
        message: String,
    },
    /// A non-retryable error.
    Failed {
        kind: String,
        detail: String,
    },
    /// Still failing when `retry_for` ran out (or the next wait would pass
    /// it).
    RetriesExhausted {
        kind: String,
        detail: String,
    },
    /// The shutdown deadline passed first.
    Shutdown,
}

/// Classifies a gRPC status by the OTLP table.
pub fn classify_grpc(status: &tonic::Status) -> Attempt {
    use tonic::Code;
    let delay = retry_info_delay(status.details());
    let code = status.code();
    let retryable = match code {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        // Only recoverable exhaustion (signalled by RetryInfo) is retried;
        // a message over the server's size limit also comes back as
        // RESOURCE_EXHAUSTED and must not be.
        Code::ResourceExhausted => delay.is_some(),
        _ => false,
    };
    let kind = format!("grpc {code:?}");
    let detail = status.message().to_owned();
    if retryable {
        Attempt::Retryable {
            kind,
            detail,
            delay,
        }
    } else {
        Attempt::Permanent { kind, detail }
    }
}

/// The `kind` of a failed TLS handshake or a TLS alert from the server;
/// counted as `reason="tls"`.
pub const TLS_KIND: &str = "tls";

/// A TLS failure talking to `endpoint`. Not retried, unlike the
/// Collector, which retries it as any unavailable transport: an unknown
/// issuer, a name mismatch or a refused client certificate stays so until
/// someone changes a certificate or the config, far beyond `retry_for`,
/// and retrying would hold every later batch behind this one (the sink
/// sends in order) until they overflow its queue. Each new batch tries a
/// fresh handshake, so delivery resumes as soon as the certificates agree.
pub fn tls_attempt(endpoint: &str, failure: &str) -> Attempt {
    Attempt::Permanent {
        kind: TLS_KIND.to_owned(),
        detail: format!("OTLP export to {endpoint}: TLS: {failure}"),
    }
}

/// Classifies a non-2xx HTTP response.
pub fn classify_http(status: u16, retry_after: Option<Duration>, detail: String) -> Attempt {
    let kind = format!("http {status}");
    match status {
        429 | 502 | 503 | 504 => Attempt::Retryable {
            kind,
            detail,
            delay: retry_after,
        },
        _ => Attempt::Permanent { kind, detail },
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date. Seconds beyond `u64`
/// mean "longer than anyone will wait": `Duration::MAX`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(
            value
                .parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs),
        );
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `google.rpc.Status` (the gRPC `grpc-status-details-bin` trailer and the
/// OTLP/HTTP error body), only as far as needed here.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

pub const RETRY_INFO_TYPE: &str = "google.rpc.RetryInfo";

/// The `RetryInfo` delay in encoded `google.rpc.Status` details: `Some`
/// (possibly zero) when a RetryInfo is present.
pub fn retry_info_delay(status_details: &[u8]) -> Option<Duration> {
    if status_details.is_empty() {
        return None;
    }
    let status = <RpcStatus as prost::Message>::decode(status_details).ok()?;
    status.details.iter().find_map(|any| {
        // The type URL's last segment is the full message name.
        if any.type_url.rsplit('/').next() != Some(RETRY_INFO_TYPE) {
            return None;
        }
        let info = <RetryInfo as prost::Message>::decode(any.value.as_slice()).ok()?;
        Some(info.retry_delay.map_or(Duration::ZERO, |d| {
            let seconds = u64::try_from(d.seconds).unwrap_or(0);
            let nanos = u32::try_from(d.nanos).unwrap_or(0).min(999_999_999);
            Duration::new(seconds, nanos)
        }))
    })
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub const INITIAL: Duration = Duration::from_millis(250);
    pub const MAX: Duration = Duration::from_secs(5);

    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { next: initial, max }
    }

    /// The wait before the next attempt: half the current step plus a random
    /// part of the other half (so agents restarted together spread out),
    /// never less than the server asked for.
    pub fn next_delay(&mut self, server_delay: Option<Duration>) -> Duration {
        let step = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        let half = step / 2;
        let jitter = rand::rng().random_range(Duration::ZERO..=half);
        let delay = half + jitter;
        server_delay.map_or(delay, |server| server.max(delay))
    }
}

/// How one sink retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retry_for: Duration,
    pub timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// The shutdown deadline, `None` until shutdown begins.
pub type Deadline = watch::Receiver<Option<Instant>>;

/// Resolves when the shutdown deadline passes (never before shutdown).
pub async fn deadline_passed(deadline: &mut Deadline) {
    loop {
        let current = *deadline.borrow_and_update();
        if let Some(at) = current {
            tokio::time::sleep_until(at).await;
            return;
        }
        if deadline.changed().await.is_err() {
            // No shutdown can come any more.
            std::future::pending::<()>().await;
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, `retry_for` runs out or
/// the shutdown deadline passes. `attempt` gets the timeout for that try.
pub async fn with_retries<F, Fut>(
    policy: &RetryPolicy,
    deadline: &Deadline,
    metrics: &ExportMetrics,
    sink: &'static str,
    mut attempt: F,
) -> Delivery
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Attempt>,
{
    // A retry_for too large for the clock means "until shutdown".
    let give_up_at = Instant::now().checked_add(policy.retry_for);
    let mut backoff = Backoff::new(policy.initial_backoff, policy.max_backoff);
    let mut deadline = deadline.clone();
    loop {
        let now = Instant::now();
        let shutdown_at = *deadline.borrow();
        let timeout = match shutdown_at {
            Some(at) if at <= now => return Delivery::Shutdown,
            Some(at) => policy.timeout.min(at - now),
            None => policy.timeout,
        };
        let outcome = tokio::select! {
            outcome = attempt(timeout) => outcome,
            () = deadline_passed(&mut deadline) => return Delivery::Shutdown,
        };
        let (kind, detail, server_delay) = match outcome {
            Attempt::Delivered { rejected, message } => {
                return Delivery::Delivered { rejected, message };
            }
            Attempt::Permanent { kind, detail } => return Delivery::Failed { kind, detail },
            Attempt::Retryable {
                kind,
                detail,
                delay,
            } => (kind, detail, delay),
        };
        let now = Instant::now();
        let left = give_up_at.map_or(Duration::MAX, |at| at.saturating_duration_since(now));
        let server_delay = server_delay.map(|d| d.min(policy.retry_for));
        let wait = backoff.next_delay(server_delay);
        let resume = match now.checked_add(wait) {
            Some(resume) if wait <= left => resume,
            _ => {
                let detail = match server_delay {
                    Some(asked) if asked > left => format!(
                        "{detail} (the server asked to wait {asked:?} or more, {left:?} of retry_for was left)"
                    ),
                    _ => detail,
                };
                return Delivery::RetriesExhausted { kind, detail };
            }
        };
        tracing::debug!(sink, %kind, %detail, ?wait, "export failed, retrying");
        tokio::select! {
            () = tokio::time::sleep_until(resume) => {}
            () = deadline_passed(&mut deadline) => return Delivery::Shutdown,
        }
        metrics.retry(sink);
    }
}

/// Logs each kind of error at warn at most once per interval; repeats go to
/// debug, so a collector that is down does not flood the log.
#[derive(Debug)]
pub struct WarnLimiter {
    interval: Duration,
    last: HashMap<String, Instant>,
}

impl WarnLimiter {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: HashMap::new(),
        }
    }

    pub fn should_warn(&mut self, kind: &str) -> bool {
        let now = Instant::now();
        match self.last.get_mut(kind) {
            Some(last) if now.duration_since(*last) < self.interval => false,
            Some(last) => {
                *last = now;
                true
            }
            None => {
                self.last.insert(kind.to_owned(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use prost::Message;

    use super::*;

    /// Encoded `google.rpc.Status` details carrying a RetryInfo.
    pub fn retry_info_details(delay: Duration) -> bytes::Bytes {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: delay.as_secs() as i64,
                nanos: delay.subsec_nanos() as i32,
            }),
        };
        let status = RpcStatus {
            code: 8,
            message: "slow down".to_owned(),
            details: vec![ProtoAny {
                type_url: format!("type.googleapis.com/{RETRY_INFO_TYPE}"),
                value: info.encode_to_vec(),
            }],
        };
        status.encode_to_vec().into()
    }

    fn retryable(attempt: &Attempt) -> bool {
        matches!(attempt, Attempt::Retryable { .. })
    }

    #[test]
    fn grpc_codes_follow_the_otlp_table() {
        use tonic::{Code, Status};
        for code in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            assert!(
                retryable(&classify_grpc(&Status::new(code, "x"))),
                "{code:?}"
            );
        }
        for code in [
            Code::Unknown,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::Internal,
        ] {
            assert!(
                !retryable(&classify_grpc(&Status::new(code, "x"))),
                "{code:?}"
            );
        }
        let throttled = Status::with_details(
            Code::ResourceExhausted,
            "slow down",
            retry_info_details(Duration::from_millis(1500)),
        );
        assert_eq!(
            classify_grpc(&throttled),
            Attempt::Retryable {
                kind: "grpc ResourceExhausted".to_owned(),
                detail: "slow down".to_owned(),
                delay: Some(Duration::from_millis(1500)),
            }
        );
        let unavailable = Status::with_details(
            Code::Unavailable,
            "busy",
            retry_info_details(Duration::from_secs(2)),
        );
        match classify_grpc(&unavailable) {
            Attempt::Retryable { delay, .. } => assert_eq!(delay, Some(Duration::from_secs(2))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn http_codes_follow_the_otlp_table() {
        for code in [429, 502, 503, 504] {
            assert!(
                retryable(&classify_http(code, None, String::new())),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 413, 500, 501] {
            assert!(
                !retryable(&classify_http(code, None, String::new())),
                "{code}"
            );
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_respects_server_delay() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d1 = b.next_delay(None);
        assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&d1));
        let d2 = b.next_delay(None);
        assert!((Duration::from_millis(100)..=Duration::from_millis(200)).contains(&d2));
        let _ = b.next_delay(None);
        let capped = b.next_delay(None);
        assert!(capped <= Duration::from_millis(400));
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
    }

    fn policy(retry_for: Duration) -> RetryPolicy {
        RetryPolicy {
            retry_for,
            timeout: Duration::from_secs(1),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
        }
    }

    fn unavailable() -> Attempt {
        Attempt::Retryable {
            kind: "grpc Unavailable".to_owned(),
            detail: String::new(),
            delay: None,
        }
    }

    #[tokio::test]
    async fn retries_until_delivered() {
        let (_tx, deadline) = watch::channel(None);
        let metrics = ExportMetrics::default();
        let calls = Arc::new(AtomicU32::new(0));
        let delivery = with_retries(
            &policy(Duration::from_secs(5)),
            &deadline,
            &metrics,
            "otlp",
            |_| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        unavailable()
                    } else {
                        Attempt::Delivered {
                            rejected: 0,
                            message: String::new(),
                        }
                    }
                }
            },
        )
        .await;
        assert!(matches!(delivery, Delivery::Delivered { rejected: 0, .. }));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            metrics
                .retries
                .get_or_create(&super::super::metrics::SinkLabels { sink: "otlp" })
                .get(),
            2
        );
    }

    #[tokio::test]
    async fn permanent_error_is_not_retried() {
        let (_tx, deadline) = watch::channel(None);
        let calls = AtomicU32::new(0);
        let delivery = with_retries(
            &policy(Duration::from_secs(5)),
            &deadline,
            &ExportMetrics::default(),
            "otlp",
            |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Attempt::Permanent {
                        kind: "grpc InvalidArgument".to_owned(),
                        detail: "bad".to_owned(),
                    }
                }
            },
        )
        .await;
        assert!(matches!(delivery, Delivery::Failed { .. }));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_after_retry_for() {
        let (_tx, deadline) = watch::channel(None);
        let start = Instant::now();
        let delivery = with_retries(
            &policy(Duration::from_millis(100)),
            &deadline,
            &ExportMetrics::default(),
            "otlp",
            |_| async { unavailable() },
        )
        .await;
        assert!(matches!(delivery, Delivery::RetriesExhausted { .. }));
        assert!(start.elapsed() < Duration::from_secs(1));
        // A server delay beyond retry_for gives up at once.
        let start = Instant::now();
        let delivery = with_retries(
            &policy(Duration::from_secs(1)),
            &deadline,
            &ExportMetrics::default(),
            "otlp",
            |_| async {
                Attempt::Retryable {
                    kind: "http 429".to_owned(),
                    detail: String::new(),
                    delay: Some(Duration::from_secs(60)),
                }
            },
        )
        .await;
        assert!(matches!(delivery, Delivery::RetriesExhausted { .. }));
        assert!(start.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn huge_server_delays_parse_without_overflow() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999999", now),
            Some(Duration::MAX),
            "beyond u64 seconds"
        );
        let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now).unwrap();
        assert!(far > Duration::from_secs(200 * 365 * 86_400), "{far:?}");

        let encoded = |seconds: i64, nanos: i32| {
            let info = RetryInfo {
                retry_delay: Some(ProtoDuration { seconds, nanos }),
            };
            RpcStatus {
                code: 14,
                message: String::new(),
                details: vec![ProtoAny {
                    type_url: format!("type.googleapis.com/{RETRY_INFO_TYPE}"),
                    value: info.encode_to_vec(),
                }],
            }
            .encode_to_vec()
        };
        assert_eq!(
            retry_info_delay(&encoded(i64::MAX, i32::MAX)),
            Some(Duration::new(i64::MAX as u64, 999_999_999))
        );
        assert_eq!(retry_info_delay(&encoded(-5, -1)), Some(Duration::ZERO));
    }

    #[test]
    fn backoff_never_overflows() {
        let mut b = Backoff::new(Duration::MAX / 2, Duration::MAX);
        for _ in 0..4 {
            let _ = b.next_delay(None);
        }
        assert_eq!(b.next_delay(Some(Duration::MAX)), Duration::MAX);
    }

    #[tokio::test]
    async fn huge_server_delay_gives_up_counted_and_does_not_panic() {
        let (_tx, deadline) = watch::channel(None);
        for asked in [
            Duration::from_secs(u64::MAX),
            Duration::new(i64::MAX as u64, 999_999_999),
            Duration::MAX,
        ] {
            let start = Instant::now();
            let metrics = ExportMetrics::default();
            let delivery = with_retries(
                &policy(Duration::from_secs(5)),
                &deadline,
                &metrics,
                "otlp",
                |_| async move {
                    Attempt::Retryable {
                        kind: "http 429".to_owned(),
                        detail: "slow down".to_owned(),
                        delay: Some(asked),
                    }
                },
            )
            .await;
            match delivery {
                Delivery::RetriesExhausted { kind, detail } => {
                    assert_eq!(kind, "http 429");
                    // Clamped to retry_for before it is compared or shown.
                    assert!(detail.contains("asked to wait 5s"), "{detail}");
                }
                other => panic!("{other:?}"),
            }
            assert!(start.elapsed() < Duration::from_secs(1));
        }
    }

    #[tokio::test]
    async fn server_delay_within_the_budget_is_waited_for() {
        let (_tx, deadline) = watch::channel(None);
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let metrics = ExportMetrics::default();
        let delivery = with_retries(
            &policy(Duration::from_secs(5)),
            &deadline,
            &metrics,
            "otlp",
            |_| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        Attempt::Retryable {
                            kind: "grpc Unavailable".to_owned(),
                            detail: String::new(),
                            delay: Some(Duration::from_millis(50)),
                        }
                    } else {
                        Attempt::Delivered {
                            rejected: 0,
                            message: String::new(),
                        }
                    }
                }
            },
        )
        .await;
        assert!(matches!(delivery, Delivery::Delivered { .. }));
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_retry_for_beyond_the_clock_retries_without_overflow() {
        let (_tx, deadline) = watch::channel(None);
        let calls = AtomicU32::new(0);
        let mut policy = policy(Duration::MAX);
        policy.timeout = Duration::MAX;
        let delivery = with_retries(
            &policy,
            &deadline,
            &ExportMetrics::default(),
            "otlp",
            |_| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Attempt::Retryable {
                            kind: "http 503".to_owned(),
                            detail: String::new(),
                            delay: Some(Duration::from_millis(1)),
                        }
                    } else {
                        Attempt::Delivered {
                            rejected: 0,
                            message: String::new(),
                        }
                    }
                }
            },
        )
        .await;
        assert!(matches!(delivery, Delivery::Delivered { .. }));
    }

    #[tokio::test]
    async fn shutdown_deadline_cuts_an_attempt() {
        let (tx, deadline) = watch::channel(None);
        let start = Instant::now();
        let policy = policy(Duration::from_secs(30));
        let metrics = ExportMetrics::default();
        let run = with_retries(&policy, &deadline, &metrics, "otlp", |_| {
            std::future::pending::<Attempt>()
        });
        let stop = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(Some(Instant::now() + Duration::from_millis(50)));
            std::future::pending::<()>().await;
        };
        let delivery = tokio::select! {
            d = run => d,
            () = stop => unreachable!(),
        };
        assert_eq!(delivery, Delivery::Shutdown);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn warn_limiter_once_per_kind() {
        let mut limiter = WarnLimiter::new(Duration::from_secs(60));
        assert!(limiter.should_warn("grpc InvalidArgument"));
        assert!(!limiter.should_warn("grpc InvalidArgument"));
        assert!(limiter.should_warn("http 400"));
    }
}
