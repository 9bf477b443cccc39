//! A client's action rate: a token bucket of `max_actions_per_second`
//! tokens, refilled continuously. When it is empty the session stops
//! reading that client's socket until a token is back (the client's own
//! TCP window then slows it down): a flooding tool is throttled, never
//! answered with errors, and cannot push more than its rate onto the
//! shared PBX connection. Counted in `callhook_ami_proxy_throttled_total`.

use tokio::time::{Duration, Instant};

/// See the [module documentation](self).
#[derive(Debug)]
pub struct ActionRate {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl ActionRate {
    /// A full bucket of `per_second` tokens (the burst), refilled at
    /// `per_second`.
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            burst: per_second,
            tokens: per_second,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_second).min(self.burst);
        self.at = now;
    }

    /// When the next action may be read (`None`: now).
    pub fn wait_until(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        if self.tokens >= 1.0 {
            return None;
        }
        let missing = 1.0 - self.tokens;
        Some(now + Duration::from_secs_f64(missing / self.per_second))
    }

    /// Spends one token (an action was read).
    pub fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_paces() {
        let t0 = Instant::now();
        let mut r = ActionRate::new(10);
        for _ in 0..10 {
            assert_eq!(r.wait_until(t0), None);
            r.take(t0);
        }
        let next = r.wait_until(t0).expect("empty");
        assert!(
            next > t0 && next <= t0 + Duration::from_millis(101),
            "{:?}",
            next - t0
        );
        assert_eq!(r.wait_until(t0 + Duration::from_millis(100)), None);
        r.take(t0 + Duration::from_millis(100));
        assert!(r.wait_until(t0 + Duration::from_millis(100)).is_some());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(r.wait_until(later), None);
            r.take(later);
        }
        assert!(r.wait_until(later).is_some());
    }
}
