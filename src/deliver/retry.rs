//! Retry policy: what an answer means, and when to try again.
//!
//! Outcome of one attempt ([`classify`]):
//!
//! | answer | verdict |
//! |---|---|
//! | 2xx | delivered |
//! | connection error, timeout, 408, 429, 5xx except 501 | retry |
//! | 410 Gone | dead, and the target is disabled (Standard Webhooks) |
//! | 1xx, 3xx (redirects are not followed), other 4xx, 501 | dead at once |
//!
//! Backoff ([`backoff`]): after the n-th failed attempt wait
//! `initial_backoff · 2^(n-1)`, capped at `max_backoff`, spread by
//! ±`jitter` (uniform) and never above `max_backoff`. With the defaults
//! (1 s, 5 min, ±20 %, 10 attempts) the waits are ≈ 1, 2, 4, 8, 16, 32, 64,
//! 128, 256 s: the last attempt comes ≈ 8.5 min after the first.
//!
//! `Retry-After` ([`parse_retry_after`], seconds or an HTTP-date) on a
//! retryable answer replaces the backoff: the wait is
//! `max(backoff, min(retry_after, retry_after_max))`, so a server can slow
//! callhook down but never make it hammer faster than its own schedule.
//!
//! A delivery goes dead instead of being retried when it has used
//! `max_attempts` attempts, or when the next attempt would start after
//! `created_at + max_age` ([`next_step`]). The first attempt is always made
//! (only `expires_at` prevents it).

use std::time::{Duration, SystemTime};

use rand::Rng;

use super::target::RetryPolicy;

/// What an attempt's result means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: done.
    Delivered,
    /// Worth trying again later.
    Retry,
    /// Will not get better by retrying.
    Dead,
    /// 410: dead, and the target no longer wants deliveries.
    Gone,
}

/// Classifies an HTTP status code.
pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        408 | 429 => Verdict::Retry,
        501 => Verdict::Dead,
        500..=599 => Verdict::Retry,
        _ => Verdict::Dead,
    }
}

/// The wait before the next attempt, after `failed_attempts` (≥ 1) failures.
///
/// `unit` is a uniform random number in `[-1, 1]` (the jitter direction);
/// [`backoff`] draws it.
pub fn backoff_with(policy: &RetryPolicy, failed_attempts: u32, unit: f64) -> Duration {
    let exp = failed_attempts.saturating_sub(1).min(62);
    let base = policy
        .initial_backoff
        .checked_mul(1u32 << exp.min(31))
        .unwrap_or(policy.max_backoff)
        .min(policy.max_backoff);
    let factor = 1.0 + policy.jitter * unit.clamp(-1.0, 1.0);
    let jittered = Duration::from_secs_f64((base.as_secs_f64() * factor).max(0.0));
    jittered.min(policy.max_backoff)
}

/// [`backoff_with`] with a random jitter.
pub fn backoff(policy: &RetryPolicy, failed_attempts: u32) -> Duration {
    let unit = rand::thread_rng().gen_range(-1.0..=1.0);
    backoff_with(policy, failed_attempts, unit)
}

/// The wait after a retryable answer: the backoff, or the server's
/// `Retry-After` clamped to `[backoff, retry_after_max]`.
pub fn retry_delay(
    backoff: Duration,
    retry_after: Option<Duration>,
    retry_after_max: Duration,
) -> Duration {
    match retry_after {
        Some(ra) => ra.min(retry_after_max).max(backoff),
        None => backoff,
    }
}

/// What to do after a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Try again at this epoch second.
    RetryAt(f64),
    /// Give up: the reason (`max_attempts` or `max_age`).
    GiveUp(&'static str),
}

/// Decides between another attempt and giving up.
///
/// `attempts` counts the attempts made so far (this one included);
/// `created_at` and `now` are epoch seconds.
pub fn next_step(
    policy: &RetryPolicy,
    attempts: u32,
    created_at: f64,
    now: f64,
    delay: Duration,
) -> Step {
    if attempts >= policy.max_attempts {
        return Step::GiveUp("max_attempts");
    }
    let at = now + delay.as_secs_f64();
    if at > created_at + policy.max_age.as_secs_f64() {
        return Step::GiveUp("max_age");
    }
    Step::RetryAt(at)
}

/// Parses a `Retry-After` value: delay seconds (`120`) or an HTTP-date
/// (`Sun, 06 Nov 1994 08:49:37 GMT`, also the obsolete RFC 850 and asctime
/// forms, read by the `httpdate` crate). A date in the past gives zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            max_age: Duration::from_secs(3600),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            jitter: 0.2,
        }
    }

    #[test]
    fn classification() {
        assert_eq!(classify(200), Verdict::Delivered);
        assert_eq!(classify(204), Verdict::Delivered);
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(classify(s), Verdict::Retry, "{s}");
        }
        for s in [100, 301, 302, 304, 400, 401, 403, 404, 409, 422, 501] {
            assert_eq!(classify(s), Verdict::Dead, "{s}");
        }
        assert_eq!(classify(410), Verdict::Gone);
    }

    #[test]
    fn backoff_schedule_without_jitter() {
        let p = policy();
        let got: Vec<u64> = (1..=11)
            .map(|n| backoff_with(&p, n, 0.0).as_secs())
            .collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        // Huge attempt numbers do not overflow.
        assert_eq!(backoff_with(&p, u32::MAX, 0.0), Duration::from_secs(300));
    }

    #[test]
    fn jitter_bounds() {
        let p = policy();
        assert_eq!(backoff_with(&p, 3, -1.0), Duration::from_secs_f64(3.2));
        assert_eq!(backoff_with(&p, 3, 1.0), Duration::from_secs_f64(4.8));
        // At the ceiling jitter only goes down.
        assert_eq!(backoff_with(&p, 20, 1.0), Duration::from_secs(300));
        assert_eq!(backoff_with(&p, 20, -1.0), Duration::from_secs(240));
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..2000 {
            let d = backoff(&p, 4).as_secs_f64();
            assert!((6.4 - 1e-9..=9.6 + 1e-9).contains(&d), "{d}");
            seen_low |= d < 7.5;
            seen_high |= d > 8.5;
        }
        assert!(seen_low && seen_high, "jitter is spread both ways");
        let no_jitter = RetryPolicy { jitter: 0.0, ..p };
        assert_eq!(backoff(&no_jitter, 2), Duration::from_secs(2));
    }

    #[test]
    fn retry_after_is_clamped() {
        let b = Duration::from_secs(2);
        let max = Duration::from_secs(300);
        assert_eq!(retry_delay(b, None, max), b);
        assert_eq!(retry_delay(b, Some(Duration::from_secs(1)), max), b);
        assert_eq!(
            retry_delay(b, Some(Duration::from_secs(60)), max),
            Duration::from_secs(60)
        );
        assert_eq!(retry_delay(b, Some(Duration::from_secs(86400)), max), max);
        // A backoff above the ceiling wins.
        assert_eq!(
            retry_delay(Duration::from_secs(400), Some(Duration::from_secs(10)), max),
            Duration::from_secs(400)
        );
    }

    #[test]
    fn giving_up() {
        let p = policy();
        let d = Duration::from_secs(10);
        assert_eq!(next_step(&p, 1, 1000.0, 1000.0, d), Step::RetryAt(1010.0));
        assert_eq!(
            next_step(&p, 10, 1000.0, 1000.0, d),
            Step::GiveUp("max_attempts")
        );
        assert_eq!(next_step(&p, 2, 1000.0, 4595.0, d), Step::GiveUp("max_age"));
        assert_eq!(next_step(&p, 2, 1000.0, 4590.0, d), Step::RetryAt(4600.0));
    }

    #[test]
    fn retry_after_values() {
        let now = UNIX_EPOCH + Duration::from_secs(784111777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:57 1994", now),
            Some(Duration::from_secs(20))
        );
        // In the past: no wait.
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(
            parse_retry_after("Sun, 32 Nov 1994 08:49:37 GMT", now),
            None
        );
    }
}
