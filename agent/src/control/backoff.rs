//! Reconnect delays: exponential with jitter, and the server's own
//! retry-after (ServerErrorResponse, HTTP 503/429 Retry-After) honoured
//! but clamped, since it is a remote value.

use std::time::{Duration, SystemTime};

pub const INITIAL: Duration = Duration::from_secs(1);
pub const MAX: Duration = Duration::from_secs(300);
/// Longest wait a server can ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    initial: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(INITIAL, MAX)
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            attempt: 0,
            initial,
            max,
        }
    }

    /// Connected and spoken to: start again from the initial delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The ceiling for the current attempt: initial × 2^attempt, at most `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The next delay: uniformly between half the ceiling and the ceiling,
    /// so a fleet that lost its server does not come back in step.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = ceiling.saturating_sub(half).as_millis() as u64;
        half + Duration::from_millis(rand::random_range(0..=spread))
    }

    /// The delay when the server asked for `retry_after`: at least that
    /// (clamped), and at least the backoff's own.
    pub fn next_delay_after(&mut self, retry_after: Option<Duration>) -> Duration {
        let own = self.next_delay();
        match retry_after {
            Some(asked) => asked.min(MAX_RETRY_AFTER).max(own),
            None => own,
        }
    }
}

/// `retry_after_nanoseconds` from a ServerErrorResponse, clamped.
pub fn from_nanos(nanos: u64) -> Duration {
    Duration::from_nanos(nanos).min(MAX_RETRY_AFTER)
}

/// An HTTP `Retry-After`: delay seconds or an HTTP date; clamped.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds.min(MAX_RETRY_AFTER.as_secs())));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} {ceiling:?}"
            );
            ceilings.push(ceiling.as_secs());
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 8, 8]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut backoff = Backoff::default();
        for _ in 0..1000 {
            assert!(backoff.next_delay() <= MAX);
        }
    }

    #[test]
    fn retry_after_is_honoured_and_clamped() {
        let mut backoff = Backoff::default();
        let delay = backoff.next_delay_after(Some(Duration::from_secs(42)));
        assert_eq!(delay, Duration::from_secs(42));
        let delay = backoff.next_delay_after(Some(from_nanos(u64::MAX)));
        assert_eq!(delay, MAX_RETRY_AFTER);
        // Shorter than the backoff's own delay: the backoff wins.
        let mut backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        assert!(backoff.next_delay_after(Some(Duration::ZERO)) >= Duration::from_secs(5));
    }

    #[test]
    fn http_retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("99999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
