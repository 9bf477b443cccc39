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
//! **Slots.** A slot does not go back to the loop after its attempt: it
//! records the outcome with [`Outbox::complete_and_claim`], which claims the
//! target's next ready head in the same transaction, and sends that one,
//! for as long as the target takes requests (breaker closed, no pause, not
//! disabled or replaced by a reload, no shutdown) and something is ready.
//! It does not wait for that commit either: it keeps one more delivery
//! claimed ahead and sends it while the last outcome is being recorded
//! ([`Outbox::record`]; a row is sent only once the commit that claimed it
//! is done, and each outcome claims as many as keep one ahead). Under load
//! the writer's round trip is thus off the HTTP path: a delivery costs one
//! share of an outcome job (the outbox records all queued outcomes in one),
//! not an outcome commit plus a poll, and a slot never idles for it. A
//! slot has at most three rows `inflight`: on the wire, being recorded,
//! and one ahead (which meets the same checks as any other before it is
//! sent: put back on an open breaker, a disabled target or a shutdown).
//!
//! **Hand-off.** Before it sleeps, the loop offers the free slots of the
//! targets that take requests to the outbox ([`Outbox::offer_slots`]); an
//! enqueue for such a target claims its ready heads for them in its own
//! transaction, and the loop, woken by that commit, sends them
//! ([`Outbox::take_handed`], which also withdraws the offers) without a
//! poll of its own: a fresh delivery waits for one commit, not two. A pass
//! woken by a commit skips its poll when every such commit's hand-off took
//! all the ready rows it could see (the outbox's [`PollFlag`] stays down,
//! see `outbox::handoff`), so the slots are offered again at once instead
//! of after a writer round trip; it polls when the flag is up (rows not
//! handed, an operator retry, [`DispatcherHandle::notify`]), when a handed
//! row found no slot, and on every other wake-up.
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
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::log_limit::LogLimiter;
use crate::metrics::metrics;
use crate::source::now_epoch;

use super::attempt::{attempt, report_damaged, takes_more};
pub use super::attempt::{set_observer, AttemptReport};
use super::breaker::{Admit, Breaker};
use super::limit::Limiter;
use super::outbox::{ClaimWant, Claimed, Outbox, PollFlag};
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
    poll: Arc<PollFlag>,
    stopped: CancellationToken,
    health: Arc<Health>,
}

impl DispatcherHandle {
    /// Wakes the loop now for a poll (after a change to the outbox made
    /// elsewhere; the outbox's own commits wake it by themselves).
    pub fn notify(&self) {
        self.poll.raise();
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
pub(super) struct TargetRt {
    pub(super) target: Arc<Target>,
    pub(super) limiter: Option<Limiter>,
    slots: Arc<Semaphore>,
    pub(super) breaker: Breaker,
    pause_until: Mutex<Option<Instant>>,
    pub(super) disabled: AtomicBool,
    /// Replaced or removed by a reload: its slots take no new deliveries.
    pub(super) retired: AtomicBool,
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
            retired: AtomicBool::new(false),
            target: Arc::new(t.clone()),
        }
    }

    pub(super) fn paused(&self, now: Instant) -> Option<Instant> {
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

    pub(super) fn pause(&self, until: Instant) {
        let mut p = self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none_or(|u| u < until) {
            *p = Some(until);
        }
    }

    pub(super) fn disable(&self) {
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
    let new: Runtimes = map
        .iter()
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
        .collect();
    for (name, o) in old {
        if !new.get(name).is_some_and(|n| Arc::ptr_eq(n, o)) {
            o.retired.store(true, Ordering::Release);
        }
    }
    new
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
    spawn_with_idle_wake(outbox, targets, shutdown, IDLE_WAKE)
}

/// [`spawn`] with another safety-net wake-up of an idle loop than 5 s
/// (tests set it out of reach, so that a missed wake-up shows).
pub fn spawn_with_idle_wake(
    outbox: Arc<Outbox>,
    targets: watch::Receiver<Arc<BTreeMap<String, Target>>>,
    shutdown: CancellationToken,
    idle_wake: Duration,
) -> DispatcherHandle {
    let notify = outbox.notifier();
    let stopped = CancellationToken::new();
    let health = Arc::new(Health::default());
    let handle = DispatcherHandle {
        notify: notify.clone(),
        poll: outbox.poll_flag(),
        stopped: stopped.clone(),
        health: health.clone(),
    };
    tokio::spawn(async move {
        let run = tokio::spawn(run(outbox, targets, shutdown, notify, health, idle_wake));
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
    idle_wake: Duration,
) {
    let mut rts = build(&targets.borrow_and_update(), &BTreeMap::new());
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut watching = true;
    let poll_flag = outbox.poll_flag();
    // Poll at this pass (see **Hand-off**); the wake-up the last poll set.
    let mut must_poll = true;
    let mut wake = Instant::now() + idle_wake;
    let housekeeping = tokio::spawn(housekeeping(
        outbox.clone(),
        targets.clone(),
        shutdown.clone(),
    ));
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        // Rows that enqueues claimed for the slots offered last pass (this
        // also withdraws the offers: the pass below counts slots afresh).
        let handed = outbox.take_handed();
        report_damaged(&handed.damaged);
        // A row put back for want of a slot waits for a poll: this one,
        // or the next pass's for one this poll put back.
        let put_back = launch(handed.rows, &rts, &mut tasks, &outbox, &shutdown).await;
        let mut again = false;
        if put_back > 0 || must_poll {
            again = poll_once(
                &outbox, &rts, &mut tasks, &shutdown, &health, idle_wake, &mut wake,
            )
            .await
                > 0;
        }
        // Free slots of targets that take requests now: the next enqueues
        // claim their rows for them in their own transaction.
        outbox.offer_slots(
            rts.iter()
                .filter(|(_, rt)| takes_more(rt, &shutdown))
                .map(|(name, rt)| (name.clone(), rt.slots.available_permits().min(MAX_CLAIM)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        );
        must_poll = true;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = notify.notified() => must_poll = again || poll_flag.take(),
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

    // No more hand-offs; rows handed meanwhile are in flight in the file
    // and go back to pending with the others below.
    drop(outbox.take_handed());
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

/// One poll: expires due rows, claims ready heads for the free slots and
/// starts them; sets `wake` to the earliest time the next poll is due (a
/// row's next attempt, an expiry, a breaker or pause ending, or the safety
/// net). Returns how many claimed rows found no slot (put back).
async fn poll_once(
    outbox: &Arc<Outbox>,
    rts: &Runtimes,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
    health: &Health,
    idle_wake: Duration,
    wake: &mut Instant,
) -> usize {
    let now_i = Instant::now();
    let now = now_epoch();
    *wake = now_i + idle_wake;
    let mut put_back = 0;
    let mut wants = Vec::with_capacity(rts.len());
    for (name, rt) in rts {
        let mut limit = if rt.disabled.load(Ordering::Acquire) {
            0
        } else {
            rt.slots.available_permits().min(MAX_CLAIM)
        };
        if let Some(until) = rt.paused(now_i) {
            limit = 0;
            earliest(wake, until);
        }
        match rt.breaker.peek(now_i) {
            Admit::Yes => {}
            Admit::Probe => limit = limit.min(1),
            Admit::No(until) => {
                limit = 0;
                if let Some(u) = until {
                    earliest(wake, u);
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
            report_damaged(&p.damaged);
            for (id, target) in &p.expired {
                metrics()
                    .deliveries
                    .with_label_values(&[target, "expired"])
                    .inc();
                tracing::debug!(target: "callhook::deliver", id, delivery_target = %target, "delivery expired before it could be sent");
            }
            put_back += launch(p.claimed, rts, tasks, outbox, shutdown).await;
            for (t, at) in &p.next_ready {
                let free = rts
                    .get(t)
                    .is_some_and(|rt| rt.slots.available_permits() > 0);
                if *at > now || (asked.get(t).copied().unwrap_or(0) > 0 && free) {
                    earliest(wake, at_instant(now_i, now, *at));
                }
            }
            if let Some(e) = p.next_expiry {
                earliest(wake, at_instant(now_i, now, e));
            }
        }
        Err(e) => {
            health.failed(&e);
            if let Some(suppressed) = POLL_FAILED.check() {
                tracing::error!(target: "callhook::deliver", error = %e, suppressed, "outbox poll failed: nothing is delivered until it works again (/readyz says 503)");
            }
            earliest(wake, now_i + Duration::from_secs(1));
        }
    }
    put_back
}

/// Starts an attempt per claimed row on a free slot of its target; a row
/// without one (its target is gone, or every slot is taken) goes back to
/// `pending`. Returns how many went back.
async fn launch(
    rows: Vec<Claimed>,
    rts: &Runtimes,
    tasks: &mut JoinSet<()>,
    outbox: &Arc<Outbox>,
    shutdown: &CancellationToken,
) -> usize {
    let mut put_back = 0;
    for row in rows {
        let permit = rts
            .get(&row.target)
            .and_then(|rt| Some((rt.clone(), rt.slots.clone().try_acquire_owned().ok()?)));
        match permit {
            Some((rt, permit)) => {
                tasks.spawn(attempt(rt, row, permit, outbox.clone(), shutdown.clone()));
            }
            None => {
                put_back += 1;
                let _ = outbox.release(vec![row.id]).await;
            }
        }
    }
    put_back
}
