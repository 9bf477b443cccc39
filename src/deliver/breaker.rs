//! Circuit breaker, one per target.
//!
//! - **Closed** (metric `breaker_state` 0): requests flow. Each failed attempt
//!   (connection error, timeout, 408, 429, 5xx except 501: the retryable
//!   answers) adds one to a counter; any other answer resets it. At
//!   `failure_threshold` consecutive failures (default 5) it opens.
//! - **Open** (2): no request is sent for `open_for` (default 30 s). Deliveries
//!   wait in the outbox *without using attempts*; requests already admitted
//!   but not yet sent (waiting for the rate limiter) go back to the outbox.
//! - **Half-open** (1): after `open_for`, exactly one delivery goes out as a
//!   probe. Success (any non-retryable answer: the target answered on
//!   purpose) closes the breaker; failure opens it again for `open_for`.
//!
//! Answers of requests that were already on the wire when it opened still
//! count: a success closes it early.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::metrics;

use super::target::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Whether a request may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Yes, normal traffic.
    Yes,
    /// Yes, as the single half-open probe.
    Probe,
    /// No; try again at this instant (`None`: when the probe answers).
    No(Option<Instant>),
}

/// A target's breaker.
#[derive(Debug)]
pub struct Breaker {
    target: String,
    cfg: BreakerConfig,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(target: &str, cfg: BreakerConfig) -> Self {
        let b = Self {
            target: target.to_string(),
            cfg,
            state: Mutex::new(State::Closed { failures: 0 }),
        };
        b.publish(State::Closed { failures: 0 });
        b
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, s: State) {
        let v = match s {
            State::Closed { .. } => 0,
            State::HalfOpen { .. } => 1,
            State::Open { .. } => 2,
        };
        metrics()
            .breaker_state
            .with_label_values(&[&self.target])
            .set(v);
    }

    fn set(&self, st: &mut State, new: State) {
        let changed = std::mem::discriminant(st) != std::mem::discriminant(&new);
        *st = new;
        if changed {
            self.publish(new);
            match new {
                State::Open { .. } => tracing::warn!(
                    target: "callhook::deliver",
                    delivery_target = %self.target,
                    open_for = ?self.cfg.open_for,
                    "circuit breaker open"
                ),
                State::HalfOpen { .. } => tracing::info!(
                    target: "callhook::deliver",
                    delivery_target = %self.target,
                    "circuit breaker half-open: sending one probe"
                ),
                State::Closed { .. } => tracing::info!(
                    target: "callhook::deliver",
                    delivery_target = %self.target,
                    "circuit breaker closed"
                ),
            }
        }
    }

    /// What the scheduler may claim now, without taking the probe slot.
    pub fn peek(&self, now: Instant) -> Admit {
        match *self.lock() {
            State::Closed { .. } => Admit::Yes,
            State::Open { until } if now < until => Admit::No(Some(until)),
            State::Open { .. } | State::HalfOpen { probing: false } => Admit::Probe,
            State::HalfOpen { probing: true } => Admit::No(None),
        }
    }

    /// Asks to send one request now; a `Probe` answer takes the probe slot,
    /// which [`Breaker::record`] or [`Breaker::abandon_probe`] gives back.
    pub fn admit(&self, now: Instant) -> Admit {
        let mut st = self.lock();
        match *st {
            State::Closed { .. } => Admit::Yes,
            State::Open { until } if now < until => Admit::No(Some(until)),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                self.set(&mut st, State::HalfOpen { probing: true });
                Admit::Probe
            }
            State::HalfOpen { probing: true } => Admit::No(None),
        }
    }

    /// Records an attempt's result: `failed` for a retryable failure.
    pub fn record(&self, failed: bool, now: Instant) {
        let mut st = self.lock();
        let new = match (*st, failed) {
            (_, false) => State::Closed { failures: 0 },
            (State::Closed { failures }, true) => {
                let failures = failures + 1;
                if failures >= self.cfg.failure_threshold {
                    State::Open {
                        until: now + self.cfg.open_for,
                    }
                } else {
                    State::Closed { failures }
                }
            }
            (State::HalfOpen { .. }, true) => State::Open {
                until: now + self.cfg.open_for,
            },
            (s @ State::Open { .. }, true) => s,
        };
        self.set(&mut st, new);
    }

    /// The probe was not sent after all (shutdown, expiry): free the slot.
    pub fn abandon_probe(&self) {
        let mut st = self.lock();
        if let State::HalfOpen { probing: true } = *st {
            *st = State::HalfOpen { probing: false };
        }
    }

    /// Time left while open.
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        match *self.lock() {
            State::Open { until } if now < until => Some(until - now),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let b = Breaker::new(
            "unit-breaker",
            BreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_secs(30),
            },
        );
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), Admit::Yes);
        b.record(true, t0);
        b.record(true, t0);
        b.record(false, t0); // a success resets the count
        b.record(true, t0);
        b.record(true, t0);
        assert_eq!(b.admit(t0), Admit::Yes);
        b.record(true, t0);
        let until = t0 + Duration::from_secs(30);
        assert_eq!(b.admit(t0), Admit::No(Some(until)));
        assert_eq!(b.peek(t0 + Duration::from_secs(29)), Admit::No(Some(until)));
        assert_eq!(b.open_for(t0), Some(Duration::from_secs(30)));
        let t1 = until;
        assert_eq!(b.peek(t1), Admit::Probe);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.admit(t1), Admit::No(None), "one probe at a time");
        assert_eq!(b.peek(t1), Admit::No(None));
        b.record(true, t1);
        assert_eq!(b.admit(t1), Admit::No(Some(t1 + Duration::from_secs(30))));
        let t2 = t1 + Duration::from_secs(30);
        assert_eq!(b.admit(t2), Admit::Probe);
        b.abandon_probe();
        assert_eq!(b.admit(t2), Admit::Probe);
        b.record(false, t2);
        assert_eq!(b.admit(t2), Admit::Yes);
        assert_eq!(
            metrics()
                .breaker_state
                .with_label_values(&["unit-breaker"])
                .get(),
            0
        );
    }
}
