//! One slot's attempts: wait for the target's pause and rate limit, check
//! freshness and the breaker, send, judge the answer (`super::outcome`),
//! record the outcome and take the next ready deliveries of the target in
//! the same transaction, sending the next one while this outcome is being
//! recorded (see the dispatcher's module docs: **Per attempt**, **Slots**,
//! **Observer**).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::metrics::metrics;
use crate::source::now_epoch;

use super::breaker::Admit;
use super::dispatcher::TargetRt;
use super::http;
use super::outbox::{Claimed, Completion, Outbox, Recording};
use super::outcome::{judge, Decision};

/// What one attempt did, for live displays.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptReport {
    /// Outbox row id.
    pub id: i64,
    /// Target name.
    pub target: String,
    /// Rule that produced the delivery.
    pub rule: String,
    /// Call session id.
    pub session_id: String,
    /// Stable event id (`webhook-id`).
    pub event_id: String,
    /// HTTP method.
    pub method: String,
    /// URL as sent.
    pub url: String,
    /// Status code, or `timeout` / `connect` / `error`.
    pub status: String,
    /// When the request was handed to the HTTP client (after the rate
    /// limiter and the breaker admitted it).
    pub sent_at: Instant,
    /// Request latency.
    pub latency: Duration,
    /// Which attempt this was (1 = first).
    pub attempt: u32,
    /// `delivered`, `retry` or `dead`.
    pub outcome: &'static str,
}

static OBSERVER: Mutex<Option<mpsc::UnboundedSender<AttemptReport>>> = Mutex::new(None);
static OBSERVED: AtomicBool = AtomicBool::new(false);

/// Installs (or, with `None`, removes) the process-wide attempt observer.
pub fn set_observer(tx: Option<mpsc::UnboundedSender<AttemptReport>>) {
    let mut o = OBSERVER.lock().unwrap_or_else(|e| e.into_inner());
    OBSERVED.store(tx.is_some(), Ordering::Release);
    *o = tx;
}

fn observe(report: impl FnOnce() -> AttemptReport) {
    if !OBSERVED.load(Ordering::Acquire) {
        return;
    }
    let o = OBSERVER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = o.as_ref() {
        let _ = tx.send(report());
    }
}

pub(super) fn report_damaged(rows: &[(i64, String)]) {
    for (id, why) in rows {
        metrics().outbox_damaged_rows.inc();
        tracing::error!(target: "callhook::deliver", id, reason = %why, "an outbox row cannot be decoded: moved aside as dead (the file is damaged; run `callhook outbox check`)");
    }
}

/// Deliveries a slot keeps claimed beyond the one it is sending: the
/// next one goes out while the last outcome is being recorded.
const AHEAD: usize = 1;

/// An attempt's outcome, being recorded.
struct Recorded {
    id: i64,
    /// `callhook_deliveries_total` outcome once recorded (None: a retry).
    outcome: Option<&'static str>,
    recording: Recording,
}

/// One slot of a target: attempts for the claimed delivery and, while the
/// target takes requests, for the next ready ones claimed when it records
/// each outcome (same transaction), until none is ready. The slot sends a
/// delivery only once the commit that claimed it is done, and has one
/// outcome at a time being recorded: the one before the request on the
/// wire (so at most `AHEAD` + 2 rows of a slot are `inflight`).
pub(super) async fn attempt(
    rt: Arc<TargetRt>,
    row: Claimed,
    _permit: OwnedSemaphorePermit,
    outbox: Arc<Outbox>,
    shutdown: CancellationToken,
) {
    let mut ahead = VecDeque::from([row]);
    let mut last: Option<Recorded> = None;
    loop {
        let Some(row) = ahead.pop_front() else {
            match last.take() {
                Some(r) => {
                    ahead.extend(settle(&rt, r).await);
                    if ahead.is_empty() {
                        break;
                    }
                    continue;
                }
                None => break,
            }
        };
        let ended = attempt_one(&rt, row, &outbox, &shutdown).await;
        if let Some(r) = last.take() {
            ahead.extend(settle(&rt, r).await);
        }
        if let Some((id, completion, outcome)) = ended {
            let want = if takes_more(&rt, &shutdown) {
                (AHEAD + 1).saturating_sub(ahead.len())
            } else {
                0
            };
            let claim = (want > 0).then(|| (rt.target.name.clone(), want));
            last = Some(Recorded {
                id,
                outcome,
                recording: outbox.record(id, completion, claim),
            });
        }
    }
}

/// Waits for an outcome's commit; returns the rows it claimed.
async fn settle(rt: &TargetRt, r: Recorded) -> Vec<Claimed> {
    match r.recording.await {
        Ok(f) if f.recorded => {
            if let Some(o) = r.outcome {
                metrics()
                    .deliveries
                    .with_label_values(&[&rt.target.name, o])
                    .inc();
            }
            report_damaged(&f.damaged);
            f.next
        }
        Ok(f) => {
            tracing::warn!(target: "callhook::deliver", id = r.id, "delivery was no longer in flight when its attempt ended");
            f.next
        }
        Err(e) => {
            tracing::error!(target: "callhook::deliver", id = r.id, error = %e, "cannot record an attempt (it will be sent again)");
            Vec::new()
        }
    }
}

/// Whether a slot that just finished may take the target's next delivery
/// at once (otherwise the loop claims it when the target is ready again).
pub(super) fn takes_more(rt: &TargetRt, shutdown: &CancellationToken) -> bool {
    let now = Instant::now();
    !shutdown.is_cancelled()
        && !rt.disabled.load(Ordering::Acquire)
        && !rt.retired.load(Ordering::Acquire)
        && rt.paused(now).is_none()
        && matches!(rt.breaker.peek(now), Admit::Yes)
}

/// One attempt for one claimed delivery; returns its outcome to record
/// (row id, completion, `callhook_deliveries_total` outcome), or None when
/// nothing is left to record (put back, expired).
async fn attempt_one(
    rt: &Arc<TargetRt>,
    row: Claimed,
    outbox: &Arc<Outbox>,
    shutdown: &CancellationToken,
) -> Option<(i64, Completion, Option<&'static str>)> {
    let t = rt.target.clone();
    let name = t.name.as_str();
    let m = metrics();
    let release = |why: &'static str| {
        let outbox = outbox.clone();
        let id = row.id;
        async move {
            tracing::debug!(target: "callhook::deliver", id, why, "delivery put back to pending");
            if let Err(e) = outbox.release(vec![id]).await {
                tracing::warn!(target: "callhook::deliver", id, error = %e, "cannot put a delivery back (the next start will)");
            }
        }
    };

    // 1. Wait for the target's Retry-After pause and the rate limiter.
    let ready = async {
        while let Some(until) = rt.paused(Instant::now()) {
            tokio::time::sleep_until(until.into()).await;
        }
        if let Some(l) = &rt.limiter {
            if l.acquire().await {
                m.rate_limit_waits.with_label_values(&[name]).inc();
            }
        }
    };
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {
            release("shutdown").await;
            return None;
        }
        _ = ready => {}
    }
    if rt.disabled.load(Ordering::Acquire) {
        release("target disabled").await;
        return None;
    }

    // 2. Freshness.
    let now = now_epoch();
    if row.expires_at.is_some_and(|e| now >= e) {
        match outbox.complete(row.id, Completion::Expired).await {
            Ok(true) => m.deliveries.with_label_values(&[name, "expired"]).inc(),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(target: "callhook::deliver", id = row.id, error = %e, "cannot record an expiry")
            }
        }
        return None;
    }

    // 3. Breaker.
    let probe = match rt.breaker.admit(Instant::now()) {
        Admit::Yes => false,
        Admit::Probe => true,
        Admit::No(_) => {
            release("breaker open").await;
            return None;
        }
    };

    // 4. Send.
    if row.attempts == 0 {
        m.event_to_request_seconds
            .with_label_values(&[name])
            .observe((now - row.created_at).max(0.0));
    }
    let started = Instant::now();
    let answer = http::send(&t, &row, SystemTime::now()).await;
    let latency = started.elapsed();
    m.delivery_seconds
        .with_label_values(&[name])
        .observe(latency.as_secs_f64());

    // 5. Outcome.
    let j = judge(&t, &rt.breaker, probe, &row, answer, now_epoch());
    if let Some(p) = j.pause {
        rt.pause(Instant::now() + p);
    }
    if j.gone {
        rt.disable();
    }
    let (status, attempts, observed_outcome) = (j.status, j.attempts, j.decision.outcome());
    let (completion, outcome) = match j.decision {
        Decision::Delivered { status } => (Completion::Delivered { status }, Some("delivered")),
        Decision::Retry { at, error, .. } => (
            Completion::Retry {
                at,
                status: status.clone(),
                error,
            },
            None,
        ),
        Decision::Dead { error } => (
            Completion::Dead {
                status: status.clone(),
                error,
            },
            Some("dead"),
        ),
    };
    observe(|| AttemptReport {
        id: row.id,
        target: row.target.clone(),
        rule: row.rule.clone(),
        session_id: row.session_id.clone(),
        event_id: row.event_id.clone(),
        method: row.method.clone(),
        url: row.url.clone(),
        status,
        sent_at: started,
        latency,
        attempt: attempts,
        outcome: observed_outcome,
    });
    Some((row.id, completion, outcome))
}
