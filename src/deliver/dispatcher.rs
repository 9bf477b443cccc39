//! The dispatcher: takes ready deliveries from the outbox and sends them.
//!
//! One task runs the scheduling loop; each claimed delivery gets its own
//! short-lived task for its attempt. Per target it keeps the HTTP client
//! (from [`Target`]), the rate limiter ([`super::limit`]), a semaphore of
//! `concurrency` slots and the circuit breaker ([`super::breaker`]).
//!
//! **Loop.** Each pass asks the outbox, in one transaction, to expire
//! deliveries whose `expires_at` passed and to claim, per target, at most as
//! many ready heads as it has free slots (one while the breaker is
//! half-open, none while it is open, paused by `Retry-After` or disabled).
//! It then sleeps until the first of: a new enqueue or admin retry (the
//! outbox signals every commit, and [`DispatcherHandle::notify`] does the
//! same: no polling latency), an attempt finishing, the earliest
//! `next_attempt_at` / `expires_at` / breaker re-opening / pause end, a
//! target reload, shutdown, or 5 s as a safety net.
//!
//! **Order.** The outbox only hands out the head of each
//! `(session_id, target)` chain, so one call's deliveries to one target go
//! out one at a time, in creation order, across retries (head-of-line
//! blocking stays inside that call and target). A head that ends `dead` or
//! `expired` unblocks the next. Different calls and targets run in parallel.
//!
//! **Per attempt.** Wait for a `Retry-After` pause of the target and for the
//! rate limiter (neither uses an attempt); drop out (row back to `pending`)
//! on shutdown, a 410-disabled target or an open breaker; mark it `expired`
//! without sending if `expires_at` has passed; otherwise send, then record
//! the outcome (see [`super::retry`] for the classification and backoff):
//! `done`; `pending` again at the next backoff (or `Retry-After`, which also
//! pauses the whole target until then); or `dead` with the last status and a
//! response excerpt. A `410 Gone` makes the delivery dead *and disables the
//! target* (`callhook_target_disabled` 1, an error in the log): its other
//! deliveries stay `pending`, untouched, until the targets are reloaded
//! (any reload re-enables it) or the process restarts.
//!
//! **Metrics.** `callhook_deliveries_total{target,outcome}` once per delivery
//! (`delivered`, `dead`, `expired`; `rejected` is counted by the outbox; an
//! operator retry of a dead delivery starts a new outcome),
//! `callhook_delivery_attempts_total{target,status}` per attempt (the code, or
//! `timeout`/`connect`/`error`), `callhook_delivery_retries_total`,
//! `callhook_delivery_seconds` (request latency),
//! `callhook_event_to_request_seconds` (event to first attempt),
//! `callhook_rate_limit_waits_total`, `callhook_breaker_state`,
//! `callhook_target_disabled`; every 15 s the outbox gauges
//! (`outbox_depth`, `outbox_oldest_age_seconds`) are refreshed, and every
//! 5 min done/expired rows past their retention are pruned.
//!
//! **Reload.** A new target map (the `watch` channel) takes effect at the
//! next pass. A target whose settings and secrets did not change keeps its
//! limiter, breaker and slots; a changed one starts fresh (requests already
//! in flight finish on the old settings). Deliveries for a target that is not
//! configured stay `pending` (a warning names it every 15 s).
//!
//! **Observer.** [`set_observer`] installs a process-wide channel that
//! receives an [`AttemptReport`] after every attempt (used by `callhook
//! demo` for its live view); without one, nothing is built.
//!
//! **Shutdown.** On cancellation the loop stops claiming; attempts waiting
//! for a permit go back to `pending` at once; requests on the wire get up to
//! the longest target timeout + 2 s to finish and be recorded; whatever is
//! still in flight after that is put back to `pending` (sent again at the
//! next start: at-least-once). Then [`DispatcherHandle::stopped`] resolves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::log_limit::LogLimiter;
use crate::metrics::metrics;
use crate::source::now_epoch;

use super::breaker::{Admit, Breaker};
use super::http::{self, Attempt};
use super::limit::Limiter;
use super::outbox::{ClaimWant, Claimed, Completion, Outbox};
use super::retry::{backoff, classify, next_step, retry_delay, Step, Verdict};
use super::target::Target;

/// Safety-net wake-up of an idle loop.
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// Gauges refresh period.
const STATS_EVERY: Duration = Duration::from_secs(15);
/// Prune period.
const PRUNE_EVERY: Duration = Duration::from_secs(300);
/// Most rows claimed for one target in one pass.
const MAX_CLAIM: usize = 256;

/// A failing poll repeats every second: one log line per minute.
static POLL_FAILED: LogLimiter = LogLimiter::new(Duration::from_secs(60));

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

/// Whether the loop can read the outbox (for `/readyz`).
#[derive(Debug, Default)]
struct Health {
    /// The last poll failed with this error.
    failing: Mutex<Option<String>>,
}

impl Health {
    fn ok(&self) {
        let mut f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if f.take().is_some() {
            tracing::info!(target: "callhook::deliver", "outbox poll works again");
        }
    }

    fn failed(&self, e: &dyn std::fmt::Display) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
    }
}

/// Handle on a running dispatcher.
#[derive(Clone, Debug)]
pub struct DispatcherHandle {
    notify: Arc<Notify>,
    stopped: CancellationToken,
    health: Arc<Health>,
}

impl DispatcherHandle {
    /// Wakes the loop now (after an enqueue; the outbox also does it by itself).
    pub fn notify(&self) {
        self.notify.notify_one();
    }

    /// Resolves when the dispatcher has stopped (after shutdown).
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }

    /// `Err` with the error while the outbox cannot be polled (nothing is
    /// delivered meanwhile): `/readyz` answers 503 with it.
    pub fn polling(&self) -> Result<(), String> {
        match &*self
            .health
            .failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        }
    }
}

/// A target's live state.
struct TargetRt {
    target: Arc<Target>,
    limiter: Option<Limiter>,
    slots: Arc<Semaphore>,
    breaker: Breaker,
    pause_until: Mutex<Option<Instant>>,
    disabled: AtomicBool,
}

impl TargetRt {
    fn new(t: &Target) -> Self {
        metrics()
            .target_disabled
            .with_label_values(&[&t.name])
            .set(0);
        Self {
            limiter: t.rate.map(|r| Limiter::new(r, t.burst)),
            slots: Arc::new(Semaphore::new(t.concurrency.max(1))),
            breaker: Breaker::new(&t.name, t.breaker),
            pause_until: Mutex::new(None),
            disabled: AtomicBool::new(false),
            target: Arc::new(t.clone()),
        }
    }

    fn paused(&self, now: Instant) -> Option<Instant> {
        let mut p = self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        match *p {
            Some(u) if u > now => Some(u),
            Some(_) => {
                *p = None;
                None
            }
            None => None,
        }
    }

    fn pause(&self, until: Instant) {
        let mut p = self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none_or(|u| u < until) {
            *p = Some(until);
        }
    }

    fn disable(&self) {
        if !self.disabled.swap(true, Ordering::AcqRel) {
            metrics()
                .target_disabled
                .with_label_values(&[&self.target.name])
                .set(1);
            tracing::error!(
                target: "callhook::deliver",
                delivery_target = %self.target.name,
                "target answered 410 Gone: disabled; its deliveries stay pending until the targets are reloaded or callhook restarts"
            );
        }
    }
}

type Runtimes = BTreeMap<String, Arc<TargetRt>>;

fn build(map: &BTreeMap<String, Target>, old: &Runtimes) -> Runtimes {
    map.iter()
        .map(|(name, t)| {
            let rt = match old.get(name) {
                Some(o) if o.target.same_as(t) => {
                    if o.disabled.swap(false, Ordering::AcqRel) {
                        metrics().target_disabled.with_label_values(&[name]).set(0);
                        tracing::info!(target: "callhook::deliver", delivery_target = %name, "target re-enabled by a reload");
                    }
                    o.clone()
                }
                _ => Arc::new(TargetRt::new(t)),
            };
            (name.clone(), rt)
        })
        .collect()
}

fn at_instant(now_i: Instant, now: f64, at: f64) -> Instant {
    now_i + Duration::from_secs_f64((at - now).clamp(0.0, 86400.0 * 365.0))
}

fn earliest(a: &mut Instant, b: Instant) {
    if b < *a {
        *a = b;
    }
}

/// Starts the dispatcher on the current tokio runtime.
pub fn spawn(
    outbox: Arc<Outbox>,
    targets: watch::Receiver<Arc<BTreeMap<String, Target>>>,
    shutdown: CancellationToken,
) -> DispatcherHandle {
    let notify = outbox.notifier();
    let stopped = CancellationToken::new();
    let health = Arc::new(Health::default());
    let handle = DispatcherHandle {
        notify: notify.clone(),
        stopped: stopped.clone(),
        health: health.clone(),
    };
    tokio::spawn(async move {
        let run = tokio::spawn(run(outbox, targets, shutdown, notify, health));
        if let Err(e) = run.await {
            tracing::error!(target: "callhook::deliver", error = %e, "dispatcher task failed");
        }
        stopped.cancel();
    });
    handle
}

async fn run(
    outbox: Arc<Outbox>,
    mut targets: watch::Receiver<Arc<BTreeMap<String, Target>>>,
    shutdown: CancellationToken,
    notify: Arc<Notify>,
    health: Arc<Health>,
) {
    let mut rts = build(&targets.borrow_and_update(), &BTreeMap::new());
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut watching = true;
    let housekeeping = tokio::spawn(housekeeping(
        outbox.clone(),
        targets.clone(),
        shutdown.clone(),
    ));
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let now_i = Instant::now();
        let now = now_epoch();
        let mut wake = now_i + IDLE_WAKE;
        let mut wants = Vec::with_capacity(rts.len());
        for (name, rt) in &rts {
            let mut limit = if rt.disabled.load(Ordering::Acquire) {
                0
            } else {
                rt.slots.available_permits().min(MAX_CLAIM)
            };
            if let Some(until) = rt.paused(now_i) {
                limit = 0;
                earliest(&mut wake, until);
            }
            match rt.breaker.peek(now_i) {
                Admit::Yes => {}
                Admit::Probe => limit = limit.min(1),
                Admit::No(until) => {
                    limit = 0;
                    if let Some(u) = until {
                        earliest(&mut wake, u);
                    }
                }
            }
            wants.push(ClaimWant {
                target: name.clone(),
                limit,
            });
        }
        let asked: BTreeMap<String, usize> =
            wants.iter().map(|w| (w.target.clone(), w.limit)).collect();
        match outbox.poll(now, wants).await {
            Ok(p) => {
                health.ok();
                for (id, why) in &p.damaged {
                    metrics().outbox_damaged_rows.inc();
                    tracing::error!(target: "callhook::deliver", id, reason = %why, "an outbox row cannot be decoded: moved aside as dead (the file is damaged; run `callhook outbox check`)");
                }
                for (id, target) in &p.expired {
                    metrics()
                        .deliveries
                        .with_label_values(&[target, "expired"])
                        .inc();
                    tracing::debug!(target: "callhook::deliver", id, delivery_target = %target, "delivery expired before it could be sent");
                }
                for row in p.claimed {
                    let Some(rt) = rts.get(&row.target).cloned() else {
                        let _ = outbox.release(vec![row.id]).await;
                        continue;
                    };
                    match rt.slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            tasks.spawn(attempt(rt, row, permit, outbox.clone(), shutdown.clone()));
                        }
                        Err(_) => {
                            let _ = outbox.release(vec![row.id]).await;
                        }
                    }
                }
                for (t, at) in &p.next_ready {
                    let free = rts
                        .get(t)
                        .is_some_and(|rt| rt.slots.available_permits() > 0);
                    if *at > now || (asked.get(t).copied().unwrap_or(0) > 0 && free) {
                        earliest(&mut wake, at_instant(now_i, now, *at));
                    }
                }
                if let Some(e) = p.next_expiry {
                    earliest(&mut wake, at_instant(now_i, now, e));
                }
            }
            Err(e) => {
                health.failed(&e);
                if let Some(suppressed) = POLL_FAILED.check() {
                    tracing::error!(target: "callhook::deliver", error = %e, suppressed, "outbox poll failed: nothing is delivered until it works again (/readyz says 503)");
                }
                earliest(&mut wake, now_i + Duration::from_secs(1));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = notify.notified() => {}
            Some(ended) = tasks.join_next(), if !tasks.is_empty() => {
                // Reap every attempt that ended meanwhile: one pass for all.
                let mut ended = vec![ended];
                while let Some(e) = tasks.try_join_next() {
                    ended.push(e);
                }
                for e in ended {
                    if let Err(e) = e {
                        // Its row stays in flight until the shutdown (or the
                        // next start) puts it back.
                        tracing::error!(target: "callhook::deliver", error = %e, "a delivery attempt failed unexpectedly");
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
            r = targets.changed(), if watching => match r {
                Ok(()) => {
                    let map = targets.borrow_and_update().clone();
                    rts = build(&map, &rts);
                    tracing::info!(target: "callhook::deliver", targets = rts.len(), "delivery targets reloaded");
                }
                Err(_) => watching = false,
            },
        }
    }

    // Shutdown: attempts waiting for a permit put their rows back by
    // themselves; requests on the wire get until the longest timeout.
    let grace = rts
        .values()
        .map(|rt| rt.target.timeout)
        .max()
        .unwrap_or(Duration::from_secs(5))
        + Duration::from_secs(2);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(target: "callhook::deliver", "requests still in flight at the shutdown deadline: they will be sent again at the next start");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    match outbox.requeue_inflight().await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(target: "callhook::deliver", rows = n, "in-flight deliveries put back to pending")
        }
        Err(e) => {
            tracing::error!(target: "callhook::deliver", error = %e, "cannot put in-flight deliveries back (the next start will)")
        }
    }
    let _ = housekeeping.await;
}

async fn housekeeping(
    outbox: Arc<Outbox>,
    targets: watch::Receiver<Arc<BTreeMap<String, Target>>>,
    shutdown: CancellationToken,
) {
    let mut warned = BTreeSet::new();
    let mut next_prune = Instant::now();
    loop {
        if Instant::now() >= next_prune {
            next_prune = Instant::now() + PRUNE_EVERY;
            match outbox.prune(now_epoch()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(target: "callhook::deliver", rows = n, "outbox pruned"),
                Err(e) => {
                    tracing::warn!(target: "callhook::deliver", error = %e, "outbox prune failed")
                }
            }
        }
        match outbox.stats().await {
            Ok(s) => {
                let known = targets.borrow().clone();
                for t in s.waiting_by_target.keys() {
                    if !known.contains_key(t) {
                        tracing::warn!(
                            target: "callhook::deliver",
                            delivery_target = %t,
                            rows = s.waiting_by_target[t],
                            "deliveries wait for a target that is not configured"
                        );
                        warned.insert(t.clone());
                    }
                }
                warned.retain(|t| s.waiting_by_target.contains_key(t));
            }
            Err(e) => {
                tracing::warn!(target: "callhook::deliver", error = %e, "outbox stats failed")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(STATS_EVERY) => {}
        }
    }
}

/// One attempt for one claimed delivery.
async fn attempt(
    rt: Arc<TargetRt>,
    row: Claimed,
    _permit: OwnedSemaphorePermit,
    outbox: Arc<Outbox>,
    shutdown: CancellationToken,
) {
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
        _ = shutdown.cancelled() => return release("shutdown").await,
        _ = ready => {}
    }
    if rt.disabled.load(Ordering::Acquire) {
        return release("target disabled").await;
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
        return;
    }

    // 3. Breaker.
    let probe = match rt.breaker.admit(Instant::now()) {
        Admit::Yes => false,
        Admit::Probe => true,
        Admit::No(_) => return release("breaker open").await,
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
    let attempts = row.attempts.saturating_add(1);
    let (status, verdict, retry_after, detail) = match &answer {
        Attempt::Answer {
            status,
            retry_after,
            excerpt,
        } => (
            status.to_string(),
            classify(*status),
            *retry_after,
            excerpt.clone(),
        ),
        Attempt::Failed { kind, message } => {
            (kind.to_string(), Verdict::Retry, None, message.clone())
        }
        Attempt::Invalid(msg) => ("invalid".to_string(), Verdict::Dead, None, msg.clone()),
    };
    m.delivery_attempts
        .with_label_values(&[name, &status])
        .inc();
    if matches!(answer, Attempt::Invalid(_)) {
        // Never reached the target: says nothing about its health.
        if probe {
            rt.breaker.abandon_probe();
        }
    } else {
        rt.breaker.record(verdict == Verdict::Retry, Instant::now());
    }
    let detail = (!detail.is_empty()).then_some(detail);
    let (completion, outcome) = match verdict {
        Verdict::Delivered => (
            Completion::Delivered {
                status: status.parse().unwrap_or(200),
            },
            Some("delivered"),
        ),
        Verdict::Retry => {
            let delay = retry_delay(backoff(&t.retry, attempts), retry_after, t.retry_after_max);
            if retry_after.is_some() {
                rt.pause(Instant::now() + delay);
            }
            match next_step(&t.retry, attempts, row.created_at, now_epoch(), delay) {
                Step::RetryAt(at) => {
                    m.delivery_retries.with_label_values(&[name]).inc();
                    tracing::debug!(target: "callhook::deliver", id = row.id, delivery_target = name, status = %status, attempts, delay = ?delay, "attempt failed, will retry");
                    (
                        Completion::Retry {
                            at,
                            status: status.clone(),
                            error: detail,
                        },
                        None,
                    )
                }
                Step::GiveUp(why) => {
                    tracing::warn!(target: "callhook::deliver", id = row.id, delivery_target = name, session = %row.session_id, status = %status, attempts, reason = why, "delivery dead: retries exhausted");
                    (
                        Completion::Dead {
                            status: status.clone(),
                            error: Some(format!(
                                "gave up ({why} reached after {attempts} attempts): {}",
                                detail.unwrap_or_default()
                            )),
                        },
                        Some("dead"),
                    )
                }
            }
        }
        Verdict::Dead | Verdict::Gone => {
            tracing::warn!(target: "callhook::deliver", id = row.id, delivery_target = name, session = %row.session_id, status = %status, "delivery dead: the target refused it");
            if verdict == Verdict::Gone {
                rt.disable();
            }
            (
                Completion::Dead {
                    status: status.clone(),
                    error: detail,
                },
                Some("dead"),
            )
        }
    };
    let observed_outcome = match &completion {
        Completion::Delivered { .. } => "delivered",
        Completion::Retry { .. } => "retry",
        _ => "dead",
    };
    match outbox.complete(row.id, completion).await {
        Ok(true) => {
            if let Some(o) = outcome {
                m.deliveries.with_label_values(&[name, o]).inc();
            }
        }
        Ok(false) => {
            tracing::warn!(target: "callhook::deliver", id = row.id, "delivery was no longer in flight when its attempt ended")
        }
        Err(e) => {
            tracing::error!(target: "callhook::deliver", id = row.id, error = %e, "cannot record an attempt (it will be sent again)")
        }
    }
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
}
