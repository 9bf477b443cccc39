//! The one judge of an attempt's outcome, for both dispatchers (the
//! single-node one over the SQLite outbox, `deliver::attempt`, and the
//! cluster one over JetStream, `cluster::dispatch`): what the answer
//! means for the delivery ([`super::retry`]'s table and backoff), the
//! `delivery_attempts_total{target,status}` and `delivery_retries_total`
//! metrics, and what the target's breaker learns from it.
//!
//! The `status` label is the HTTP status code, or, without an answer,
//! `timeout`, `connect` or `error` (the request failed on its way), or
//! `invalid` (the request can never be sent: it never reached the target,
//! so the breaker is not told, and the delivery is dead at once).
//!
//! Each dispatcher applies the judgement to its own store (outbox row,
//! JetStream ack/nak/dead stream) and to its own per-instance target state
//! ([`Judgement::pause`] for `Retry-After`, [`Judgement::gone`] to disable).

use std::time::{Duration, Instant};

use crate::metrics::metrics;

use super::breaker::Breaker;
use super::http::Attempt;
use super::outbox::Claimed;
use super::retry::{backoff, classify, next_step, retry_delay, Step, Verdict};
use super::target::Target;

/// The `status` label of an attempt that could not be sent at all.
pub const INVALID: &str = "invalid";

/// What the delivery becomes after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A 2xx answer with this status code: done.
    Delivered {
        /// The status code.
        status: u16,
    },
    /// Try again at `at` (epoch seconds), `delay` from now.
    Retry {
        /// When, epoch seconds.
        at: f64,
        /// The wait (backoff, or `Retry-After` within its ceiling).
        delay: Duration,
        /// What went wrong (answer excerpt or transport error).
        error: Option<String>,
    },
    /// Dead: refused by the target, never sendable, or retries exhausted.
    Dead {
        /// Why (answer excerpt, error, or the exhausted limit).
        error: Option<String>,
    },
}

impl Decision {
    /// `delivered`, `retry` or `dead`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Delivered { .. } => "delivered",
            Decision::Retry { .. } => "retry",
            Decision::Dead { .. } => "dead",
        }
    }
}

/// The judge's verdict on one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The `status` label: a status code, `timeout`, `connect`, `error` or
    /// `invalid`.
    pub status: String,
    /// Attempts made, this one included.
    pub attempts: u32,
    /// What the delivery becomes.
    pub decision: Decision,
    /// The target asked for a pause (`Retry-After` on a retryable answer):
    /// no attempt to it before this long from now.
    pub pause: Option<Duration>,
    /// The target answered `410 Gone`: disable it (on this instance).
    pub gone: bool,
}

/// Judges one attempt's answer for `row` (which had `row.attempts`
/// attempts before this one); `probe` says whether the breaker admitted
/// it as its half-open probe; `now` is epoch seconds. Counts the attempt
/// (and a retry) in the metrics and tells the breaker.
pub fn judge(
    target: &Target,
    breaker: &Breaker,
    probe: bool,
    row: &Claimed,
    answer: Attempt,
    now: f64,
) -> Judgement {
    let name = target.name.as_str();
    let m = metrics();
    let attempts = row.attempts.saturating_add(1);
    let invalid = matches!(answer, Attempt::Invalid(_));
    let (status, code, verdict, retry_after, detail) = match answer {
        Attempt::Answer {
            status,
            retry_after,
            excerpt,
        } => (
            status.to_string(),
            status,
            classify(status),
            retry_after,
            excerpt,
        ),
        Attempt::Failed { kind, message } => (kind.to_string(), 0, Verdict::Retry, None, message),
        Attempt::Invalid(msg) => (INVALID.to_string(), 0, Verdict::Dead, None, msg),
    };
    m.delivery_attempts
        .with_label_values(&[name, &status])
        .inc();
    if invalid {
        // Never reached the target: says nothing about its health.
        if probe {
            breaker.abandon_probe();
        }
    } else {
        breaker.record(verdict == Verdict::Retry, Instant::now());
    }
    let detail = (!detail.is_empty()).then_some(detail);
    let mut pause = None;
    let decision = match verdict {
        Verdict::Delivered => Decision::Delivered { status: code },
        Verdict::Retry => {
            let delay = retry_delay(
                backoff(&target.retry, attempts),
                retry_after,
                target.retry_after_max,
            );
            if retry_after.is_some() {
                pause = Some(delay);
            }
            match next_step(&target.retry, attempts, row.created_at, now, delay) {
                Step::RetryAt(at) => {
                    m.delivery_retries.with_label_values(&[name]).inc();
                    tracing::debug!(target: "callhook::deliver", id = row.id, delivery_target = name, status = %status, attempts, delay = ?delay, "attempt failed, will retry");
                    Decision::Retry {
                        at,
                        delay,
                        error: detail,
                    }
                }
                Step::GiveUp(why) => {
                    tracing::warn!(target: "callhook::deliver", id = row.id, delivery_target = name, session = %row.session_id, status = %status, attempts, reason = why, "delivery dead: retries exhausted");
                    Decision::Dead {
                        error: Some(format!(
                            "gave up ({why} reached after {attempts} attempts): {}",
                            detail.unwrap_or_default()
                        )),
                    }
                }
            }
        }
        Verdict::Dead | Verdict::Gone => {
            tracing::warn!(target: "callhook::deliver", id = row.id, delivery_target = name, session = %row.session_id, status = %status, "delivery dead: the target refused it");
            Decision::Dead { error: detail }
        }
    };
    Judgement {
        status,
        attempts,
        decision,
        pause,
        gone: verdict == Verdict::Gone,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::deliver::breaker::Admit;
    use crate::deliver::target::{validate_targets, RawTarget};

    /// A target named `name` (unique per test: the metrics are global):
    /// 3 attempts, 100 ms first backoff without jitter, Retry-After up to
    /// 30 s, breaker opening after 2 failures.
    fn target(name: &str) -> Target {
        let yaml = format!(
            "{name}:\n  retry: {{ max_attempts: 3, max_age: 1h, initial_backoff: 100ms, max_backoff: 10s, jitter: 0 }}\n  retry_after_max: 30s\n  breaker: {{ failure_threshold: 2, first_probe: 1h, open_for: 1h }}\n"
        );
        let raw: BTreeMap<String, RawTarget> = crate::yaml::de::from_str(&yaml).unwrap();
        validate_targets(&raw, Path::new("."))
            .unwrap()
            .remove(name)
            .unwrap()
    }

    fn row(attempts: u32, created_at: f64) -> Claimed {
        Claimed {
            id: 7,
            target: "t".into(),
            rule: "r".into(),
            session_id: "s".into(),
            pbx: "p".into(),
            event_id: "e".into(),
            method: "POST".into(),
            url: "http://127.0.0.1:1/x".into(),
            headers: vec![],
            body: None,
            idempotency_key: None,
            created_at,
            expires_at: None,
            attempts,
            refused: None,
            secrets: vec![],
        }
    }

    fn answer(status: u16, retry_after: Option<Duration>) -> Attempt {
        Attempt::Answer {
            status,
            retry_after,
            excerpt: format!("body {status}"),
        }
    }

    fn attempts_metric(t: &str, status: &str) -> u64 {
        metrics()
            .delivery_attempts
            .with_label_values(&[t, status])
            .get()
    }

    fn retries_metric(t: &str) -> u64 {
        metrics().delivery_retries.with_label_values(&[t]).get()
    }

    #[test]
    fn a_2xx_is_delivered_with_its_code() {
        let t = target("judge-ok");
        let b = Breaker::new(&t.name, t.breaker);
        let j = judge(&t, &b, false, &row(0, 100.0), answer(204, None), 100.0);
        assert_eq!(j.status, "204");
        assert_eq!(j.attempts, 1);
        assert_eq!(j.decision, Decision::Delivered { status: 204 });
        assert_eq!(j.decision.outcome(), "delivered");
        assert_eq!((j.pause, j.gone), (None, false));
        assert_eq!(attempts_metric("judge-ok", "204"), 1);
        assert_eq!(retries_metric("judge-ok"), 0);
    }

    #[test]
    fn a_failure_is_retried_with_backoff_and_counts_against_the_breaker() {
        let t = target("judge-retry");
        let b = Breaker::new(&t.name, t.breaker);
        let failed = || Attempt::Failed {
            kind: "connect",
            message: "refused".into(),
        };
        let j = judge(&t, &b, false, &row(0, 100.0), failed(), 100.0);
        assert_eq!(j.status, "connect");
        assert_eq!(
            j.decision,
            Decision::Retry {
                at: 100.1,
                delay: Duration::from_millis(100),
                error: Some("refused".into()),
            }
        );
        assert_eq!(j.pause, None, "no Retry-After: no pause of the target");
        assert_eq!(b.peek(Instant::now()), Admit::Yes, "one failure of 2");
        let j = judge(&t, &b, false, &row(1, 100.0), answer(503, None), 100.0);
        assert_eq!(j.status, "503");
        assert_eq!(j.attempts, 2);
        assert!(
            matches!(j.decision, Decision::Retry { delay, .. } if delay == Duration::from_millis(200))
        );
        assert!(
            matches!(b.peek(Instant::now()), Admit::No(_)),
            "two failures open it"
        );
        assert_eq!(attempts_metric("judge-retry", "connect"), 1);
        assert_eq!(attempts_metric("judge-retry", "503"), 1);
        assert_eq!(retries_metric("judge-retry"), 2);
    }

    #[test]
    fn retry_after_pauses_the_target_within_its_ceiling() {
        let t = target("judge-after");
        let b = Breaker::new(&t.name, t.breaker);
        let j = judge(
            &t,
            &b,
            false,
            &row(0, 100.0),
            answer(429, Some(Duration::from_secs(3600))),
            100.0,
        );
        assert_eq!(j.pause, Some(Duration::from_secs(30)), "retry_after_max");
        assert!(matches!(j.decision, Decision::Retry { at, .. } if at == 130.0));
    }

    #[test]
    fn the_last_attempt_or_max_age_gives_up_as_dead() {
        let t = target("judge-giveup");
        let b = Breaker::new(&t.name, t.breaker);
        let j = judge(&t, &b, false, &row(2, 100.0), answer(500, None), 100.0);
        assert_eq!(j.attempts, 3);
        let Decision::Dead { error: Some(e) } = &j.decision else {
            panic!("{j:?}")
        };
        assert!(
            e.starts_with("gave up (max_attempts reached after 3 attempts): body 500"),
            "{e}"
        );
        // Created more than max_age (1 h) before the next attempt would go.
        let j = judge(&t, &b, false, &row(0, 100.0), answer(500, None), 3800.0);
        assert!(matches!(&j.decision, Decision::Dead { error: Some(e) } if e.contains("max_age")));
        assert_eq!(retries_metric("judge-giveup"), 0);
        assert_eq!(attempts_metric("judge-giveup", "500"), 2);
    }

    #[test]
    fn a_refusal_is_dead_at_once_and_410_disables() {
        let t = target("judge-refused");
        let b = Breaker::new(&t.name, t.breaker);
        let j = judge(&t, &b, false, &row(0, 100.0), answer(400, None), 100.0);
        assert_eq!(
            j.decision,
            Decision::Dead {
                error: Some("body 400".into())
            }
        );
        assert!(!j.gone);
        let j = judge(&t, &b, false, &row(0, 100.0), answer(410, None), 100.0);
        assert_eq!(j.decision.outcome(), "dead");
        assert!(j.gone);
    }

    #[test]
    fn an_unsendable_request_is_invalid_dead_and_leaves_the_breaker_alone() {
        let t = target("judge-invalid");
        let b = Breaker::new(&t.name, t.breaker);
        let bad = || Attempt::Invalid("dot segment in the path".into());
        // Two failures open it; two unsendable requests do not.
        for _ in 0..2 {
            let j = judge(&t, &b, false, &row(0, 100.0), bad(), 100.0);
            assert_eq!(j.status, INVALID);
            assert_eq!(
                j.decision,
                Decision::Dead {
                    error: Some("dot segment in the path".into())
                }
            );
            assert_eq!((j.pause, j.gone), (None, false));
        }
        assert_eq!(b.peek(Instant::now()), Admit::Yes, "still closed");
        assert_eq!(attempts_metric("judge-invalid", "invalid"), 2);
        assert_eq!(attempts_metric("judge-invalid", "error"), 0);
    }
}
