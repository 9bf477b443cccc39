//! The reconnect delay: exponential backoff with equal jitter.

use super::*;

/// Exponential backoff with equal jitter.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The un-jittered delay of the current attempt: `initial · 2^attempt`,
    /// capped at `max`.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(24);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
            .max(MIN_BACKOFF)
    }

    /// The next delay, in `[c/2, c]` for the current ceiling `c`.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let c = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = c / 2;
        let span = (c - half).as_nanos().min(u64::MAX as u128) as u64;
        half + Duration::from_nanos(rng.gen_range(0..=span))
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}
