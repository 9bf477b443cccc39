//! Per-target rate limit (GCRA token bucket from `governor`).
//!
//! `rate_limit: 20/s` with the default `burst: 1` spaces requests at least
//! 50 ms apart: any 1-second window holds at most 20 + 1 requests (the
//! `+ 1` is the window edge). `burst: N` lets N requests go back to back
//! after an idle period, the long-run rate staying the same.
//!
//! A delivery waiting for a permit keeps its place (it has been claimed from
//! the outbox and counts against `concurrency`), does *not* use an attempt,
//! and counts once in `callhook_rate_limit_waits_total`.

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::target::Rate;

/// A target's limiter.
pub struct Limiter {
    inner: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiter")
    }
}

impl Limiter {
    /// A limiter for `rate` with `burst` back-to-back requests.
    pub fn new(rate: Rate, burst: std::num::NonZeroU32) -> Self {
        let period = rate.per / rate.count.get();
        // `with_period` refuses only a zero period; `per` ≥ 1 s and count ≤
        // u32::MAX keep it above zero.
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(rate.count))
            .allow_burst(burst);
        Self {
            inner: RateLimiter::direct(quota),
        }
    }

    /// Waits for a permit; true when it had to wait.
    pub async fn acquire(&self) -> bool {
        if self.inner.check().is_ok() {
            return false;
        }
        self.inner.until_ready().await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn spacing_and_burst() {
        let rate = Rate {
            count: NonZeroU32::new(50).unwrap(),
            per: Duration::from_secs(1),
        };
        let strict = Limiter::new(rate, NonZeroU32::MIN);
        let t0 = Instant::now();
        assert!(!strict.acquire().await);
        for _ in 0..5 {
            strict.acquire().await;
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(95), "{took:?}");

        let bursty = Limiter::new(rate, NonZeroU32::new(5).unwrap());
        for _ in 0..5 {
            assert!(!bursty.acquire().await, "burst of 5 goes at once");
        }
        assert!(bursty.acquire().await, "the 6th waits");
    }
}
