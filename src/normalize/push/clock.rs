//! The team's clock offset (delivery freshness limits use it).

/// Length of one clock-offset window, seconds.
const CLOCK_WINDOW: f64 = 300.0;

/// The team's clock offset: the largest `eventTime − received_at` over the
/// current and the previous window.
#[derive(Debug, Clone, Default)]
pub(super) struct Clock {
    cur: Option<f64>,
    prev: Option<f64>,
    since: f64,
}

impl Clock {
    pub(super) fn observe(&mut self, skew: f64, local: f64) {
        if !skew.is_finite() {
            return;
        }
        if local - self.since > CLOCK_WINDOW {
            self.prev = self.cur.take();
            self.since = local;
        }
        self.cur = Some(self.cur.map_or(skew, |c| c.max(skew)));
    }

    pub(super) fn skew(&self) -> f64 {
        match (self.cur, self.prev) {
            (Some(a), Some(b)) => a.max(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => 0.0,
        }
    }
}
