//! Rate-limited log lines: an event that can repeat thousands of times a
//! second (a refused connection, a failing write) logs at most one line per
//! interval, saying how many were left out since the last one. The metric
//! counts every occurrence; the log only has to show that it happens.
//!
//! ```
//! use callhook::log_limit::LogLimiter;
//! static REFUSED: LogLimiter = LogLimiter::new(std::time::Duration::from_secs(10));
//! if let Some(suppressed) = REFUSED.check() {
//!     tracing::warn!(suppressed, "connection refused");
//! }
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one line per `every`.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter letting one line through per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when a line may be written now (`n` occurrences were left
    /// out since the previous line); `None` (counted) otherwise.
    pub fn check(&self) -> Option<u64> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.last {
            Some(t) if now.duration_since(t) < self.every => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.check(), Some(0));
        for _ in 0..5 {
            assert_eq!(l.check(), None);
        }
        let l2 = LogLimiter::new(Duration::ZERO);
        assert_eq!(l2.check(), Some(0));
        assert_eq!(l2.check(), Some(0));
    }
}
