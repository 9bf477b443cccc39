//! Circuit breaker, one per target.
//!
//! - **Closed** (metric `breaker_state` 0): requests flow. Each failed attempt
//!   (connection error, timeout, 408, 429, 5xx except 501: the retryable
//!   answers) adds one to a counter; any other answer resets it. At
//!   `failure_threshold` consecutive failures (default 5) it opens.
//! - **Open** (2): no request is sent for a while. Deliveries wait in the
//!   outbox *without using attempts*; requests already admitted but not yet
//!   sent (waiting for the rate limiter) go back to the outbox.
//! - **Half-open** (1): after the wait, exactly one delivery goes out as a
//!   probe. Success (any non-retryable answer: the target answered on
//!   purpose) closes the breaker; failure opens it again for twice the last
//!   wait.
//!
//! **Probing early, backing off.** The first probe goes `first_probe`
//! (default 1 s) after the breaker opens; each failed probe doubles the
//! wait, up to `open_for` (default 30 s): probes at about 1, 3, 7, 15, 31,
//! 61 … s. A short blip is therefore noticed within about a second of its
//! end (a screen-pop with a 30 s freshness limit is not lost to the
//! breaker), and a CRM that is down for an hour sees one request every
//! 30 s. In general the recovery is noticed at most about as long after
//! the target is back as it had been down, never more than `open_for`.
//!
//! Answers of requests that were already on the wire when it opened still
//! count: a success closes it early.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::metrics;

use super::target::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    /// `wait`: how long this opening lasts (the next one, if the probe
    /// fails, lasts twice as long, up to `open_for`).
    Open {
        until: Instant,
        wait: Duration,
    },
    HalfOpen {
        probing: bool,
        wait: Duration,
    },
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
                State::Open { wait, .. } => tracing::warn!(
                    target: "callhook::deliver",
                    delivery_target = %self.target,
                    probe_in = ?wait,
                    "circuit breaker open: the target keeps failing; next probe in {wait:?}"
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
            State::Open { until, .. } if now < until => Admit::No(Some(until)),
            State::Open { .. } | State::HalfOpen { probing: false, .. } => Admit::Probe,
            State::HalfOpen { probing: true, .. } => Admit::No(None),
        }
    }

    /// Asks to send one request now; a `Probe` answer takes the probe slot,
    /// which [`Breaker::record`] or [`Breaker::abandon_probe`] gives back.
    pub fn admit(&self, now: Instant) -> Admit {
        let mut st = self.lock();
        match *st {
            State::Closed { .. } => Admit::Yes,
            State::Open { until, .. } if now < until => Admit::No(Some(until)),
            State::Open { wait, .. }
            | State::HalfOpen {
                probing: false,
                wait,
            } => {
                self.set(
                    &mut st,
                    State::HalfOpen {
                        probing: true,
                        wait,
                    },
                );
                Admit::Probe
            }
            State::HalfOpen { probing: true, .. } => Admit::No(None),
        }
    }

    /// Records an attempt's result: `failed` for a retryable failure.
    pub fn record(&self, failed: bool, now: Instant) {
        let mut st = self.lock();
        let first = self.cfg.first_probe.min(self.cfg.open_for);
        let new = match (*st, failed) {
            (_, false) => State::Closed { failures: 0 },
            (State::Closed { failures }, true) => {
                let failures = failures + 1;
                if failures >= self.cfg.failure_threshold {
                    State::Open {
                        until: now + first,
                        wait: first,
                    }
                } else {
                    State::Closed { failures }
                }
            }
            (State::HalfOpen { wait, .. }, true) => {
                let wait = wait.saturating_mul(2).min(self.cfg.open_for).max(first);
                State::Open {
                    until: now + wait,
                    wait,
                }
            }
            (s @ State::Open { .. }, true) => s,
        };
        self.set(&mut st, new);
    }

    /// The probe was not sent after all (shutdown, expiry): free the slot.
    pub fn abandon_probe(&self) {
        let mut st = self.lock();
        if let State::HalfOpen {
            probing: true,
            wait,
        } = *st
        {
            *st = State::HalfOpen {
                probing: false,
                wait,
            };
        }
    }

    /// Time left while open.
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        match *self.lock() {
            State::Open { until, .. } if now < until => Some(until - now),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(name: &str, first: u64, max: u64) -> Breaker {
        Breaker::new(
            name,
            BreakerConfig {
                failure_threshold: 3,
                first_probe: Duration::from_secs(first),
                open_for: Duration::from_secs(max),
            },
        )
    }

    #[test]
    fn opens_probes_and_closes() {
        let b = breaker("unit-breaker", 1, 30);
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), Admit::Yes);
        b.record(true, t0);
        b.record(true, t0);
        b.record(false, t0); // a success resets the count
        b.record(true, t0);
        b.record(true, t0);
        assert_eq!(b.admit(t0), Admit::Yes);
        b.record(true, t0);
        let until = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(t0), Admit::No(Some(until)));
        assert_eq!(
            b.peek(t0 + Duration::from_millis(999)),
            Admit::No(Some(until))
        );
        assert_eq!(b.open_for(t0), Some(Duration::from_secs(1)));
        let t1 = until;
        assert_eq!(b.peek(t1), Admit::Probe);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.admit(t1), Admit::No(None), "one probe at a time");
        assert_eq!(b.peek(t1), Admit::No(None));
        b.record(true, t1);
        assert_eq!(b.admit(t1), Admit::No(Some(t1 + Duration::from_secs(2))));
        let t2 = t1 + Duration::from_secs(2);
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

    #[test]
    fn failed_probes_double_the_wait_up_to_open_for_and_a_success_starts_over() {
        let b = breaker("unit-breaker-backoff", 1, 10);
        let mut t = Instant::now();
        for _ in 0..3 {
            b.record(true, t);
        }
        let mut waits = Vec::new();
        for _ in 0..6 {
            let wait = b.open_for(t).unwrap();
            waits.push(wait.as_secs());
            t += wait;
            assert_eq!(b.admit(t), Admit::Probe);
            b.record(true, t);
        }
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        t += b.open_for(t).unwrap();
        assert_eq!(b.admit(t), Admit::Probe);
        b.record(false, t);
        for _ in 0..3 {
            b.record(true, t);
        }
        assert_eq!(b.open_for(t), Some(Duration::from_secs(1)), "starts over");
    }
}
