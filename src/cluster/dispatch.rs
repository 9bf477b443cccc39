//! The cluster dispatcher: every instance pulls every partition.
//!
//! Per target there are `partitions` durable pull consumers on the
//! deliveries stream, one per subject `PREFIX.d.<target>.<p>`, each with
//! `max_ack_pending = 1`: JetStream hands out the next message of a
//! partition only once the previous one is acknowledged, whichever
//! instance pulled it, so the deliveries of one call to one target go out
//! one at a time and in order, with any number of dispatchers. A retry is
//! a negative acknowledgement with the backoff as delay (the partition
//! waits for it; other partitions go on). Each partition task has one pull
//! request for one message out at a time, on an inbox of its own, sent
//! when the previous message arrives (it waits at the server behind that
//! one); the time it was sent bounds how long the message is surely held
//! ([`super::hold`]). While a message is worked on the dispatcher sends
//! confirmed in-progress acks every [`PROGRESS_EVERY`], so a slow CRM is
//! not mistaken for a dead dispatcher; a dispatcher that dies mid-request
//! stops sending them and JetStream redelivers the message after
//! [`ACK_WAIT`] to another instance (same `webhook-id` and
//! `Idempotency-Key`). A dispatcher that was paused past that (or whose
//! message waited in its socket meanwhile) finds out before it sends,
//! acks or naks, and leaves the message to the instance that has it now.
//!
//! Per attempt it does what the single-node dispatcher does: Retry-After
//! pause, rate limit (cluster-wide, [`super::rate`]), concurrency slots
//! (`concurrency` per instance), freshness, breaker (per instance), send,
//! classify, then ack (delivered, expired), nak with a delay (retry), or
//! move to the dead stream and ack (dead; the dead copy is stored before
//! the original is removed). A `410 Gone` disables the target on this
//! instance until a reload. Attempts are counted by JetStream's delivery
//! count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer, AckKind};
use async_nats::StatusCode;
use futures::StreamExt;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use super::hold::Hold;
pub use super::hold::{ACK_WAIT, PROGRESS_EVERY};
use super::rate::SharedLimiter;
use super::store::{ClusterStore, Wire};
use super::Cluster;
use crate::deliver::breaker::{Admit, Breaker};
use crate::deliver::http;
use crate::deliver::outbox::Claimed;
use crate::deliver::outcome::{judge, Decision};
use crate::deliver::store::DeliveryStore;
use crate::deliver::target::Target;
use crate::metrics::metrics;
use crate::source::now_epoch;

/// How long a pull request waits at the server for a message (well
/// within [`ACK_WAIT`]: a message it brings is surely held for the rest).
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How much longer than that the server's end of a request is awaited.
const PULL_SLACK: Duration = Duration::from_secs(2);
/// Gauges refresh period.
const STATS_EVERY: Duration = Duration::from_secs(15);

type Targets = watch::Receiver<Arc<BTreeMap<String, Target>>>;

/// Handle on the running cluster dispatcher.
#[derive(Clone, Debug)]
pub struct ClusterDispatcher {
    stopped: CancellationToken,
}

impl ClusterDispatcher {
    /// Resolves when it has stopped.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }
}

/// A target's live state on this instance.
struct Rt {
    target: Arc<Target>,
    limiter: Option<SharedLimiter>,
    slots: Arc<Semaphore>,
    breaker: Breaker,
    pause_until: Mutex<Option<Instant>>,
    disabled: AtomicBool,
    stop: CancellationToken,
}

impl Rt {
    fn paused(&self, now: Instant) -> Option<Instant> {
        let p = self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        p.filter(|u| *u > now)
    }

    fn pause(&self, until: Instant) {
        let mut p = self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none_or(|u| u < until) {
            *p = Some(until);
        }
    }
}

/// How one message ended.
enum End {
    Delivered,
    Expired,
    Retry(Duration),
    Dead {
        status: String,
        error: Option<String>,
    },
    Release(&'static str, Duration),
    /// Not held any more: left alone (`super::hold`).
    Lost,
}

/// Starts the dispatcher.
pub fn spawn(
    cluster: Cluster,
    store: Arc<ClusterStore>,
    targets: Targets,
    shutdown: CancellationToken,
) -> ClusterDispatcher {
    let stopped = CancellationToken::new();
    let h = ClusterDispatcher {
        stopped: stopped.clone(),
    };
    tokio::spawn(async move {
        run(cluster, store, targets, shutdown).await;
        stopped.cancel();
    });
    h
}

async fn run(
    cluster: Cluster,
    store: Arc<ClusterStore>,
    mut targets: Targets,
    shutdown: CancellationToken,
) {
    let rates = match cluster.bucket(&cluster.names.rates_bucket()).await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(target: "callhook::cluster", error = %e, "rate-limit bucket unavailable: rate-limited targets wait");
            None
        }
    };
    let mut running: BTreeMap<String, Arc<Rt>> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_stats = Instant::now();
    loop {
        let map = targets.borrow_and_update().clone();
        // Stop what changed or went away; start what is new.
        running.retain(|name, rt| {
            let keep = map.get(name).is_some_and(|t| rt.target.same_as(t));
            if !keep {
                rt.stop.cancel();
            }
            keep
        });
        for (name, t) in map.iter() {
            if running.contains_key(name) {
                continue;
            }
            let limiter = match (t.rate, &rates) {
                (Some(r), Some(kv)) => Some(SharedLimiter::new(kv.clone(), name, r, t.burst.get())),
                _ => None,
            };
            metrics().target_disabled.with_label_values(&[name]).set(0);
            let rt = Arc::new(Rt {
                target: Arc::new(t.clone()),
                limiter,
                slots: Arc::new(Semaphore::new(t.concurrency.max(1))),
                breaker: Breaker::new(name, t.breaker),
                pause_until: Mutex::new(None),
                disabled: AtomicBool::new(false),
                stop: shutdown.child_token(),
            });
            for p in 0..cluster.cfg.partitions {
                tasks.spawn(partition(cluster.clone(), rt.clone(), p, store.clone()));
            }
            running.insert(name.clone(), rt);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = targets.changed() => if r.is_err() {
                shutdown.cancelled().await;
                break;
            } else {
                tracing::info!(target: "callhook::cluster", "delivery targets reloaded");
            },
            _ = tokio::time::sleep_until(next_stats.into()) => {
                next_stats = Instant::now() + STATS_EVERY;
                if let Err(e) = store.stats().await {
                    tracing::warn!(target: "callhook::cluster", error = %e, "delivery stream stats failed");
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Partition loops finish the message in hand (bounded by the target
    // timeout) and stop.
    let grace = running
        .values()
        .map(|rt| rt.target.timeout)
        .max()
        .unwrap_or(Duration::from_secs(5))
        + Duration::from_secs(2);
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(target: "callhook::cluster", "requests still in flight at the shutdown deadline: JetStream redelivers them");
        tasks.abort_all();
    }
}

/// The consumer of one partition (created when missing).
async fn consumer_of(
    cluster: &Cluster,
    target: &str,
    p: u32,
    stop: &CancellationToken,
) -> Option<consumer::Consumer<consumer::pull::Config>> {
    let name = cluster.names.delivery_consumer(target, p);
    let cfg = consumer::pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: cluster.names.delivery_subject(target, p),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: 1,
        max_deliver: -1,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    let mut wait = Duration::from_millis(200);
    loop {
        let r = async {
            let stream = cluster
                .js
                .get_stream(cluster.names.deliveries_stream())
                .await
                .map_err(|e| e.to_string())?;
            stream
                .get_or_create_consumer(&name, cfg.clone())
                .await
                .map_err(|e| e.to_string())
        };
        match r.await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::debug!(target: "callhook::cluster", consumer = %name, error = %e, "cannot open the partition consumer, retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// A pull request for one message, on an inbox of its own.
struct Pull {
    sub: async_nats::Subscriber,
    /// When it was sent (before the server could see it).
    asked: Instant,
    /// When the server's answer (a message, or the end at expiry) is
    /// given up for.
    ends: Instant,
}

async fn pull(
    cluster: &Cluster,
    c: &consumer::Consumer<consumer::pull::Config>,
) -> Result<Pull, String> {
    let inbox = cluster.client.new_inbox();
    let sub = cluster
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    let asked = Instant::now();
    let req = consumer::pull::BatchConfig {
        batch: 1,
        expires: Some(PULL_EXPIRES),
        ..Default::default()
    };
    c.request_batch(req, inbox.into())
        .await
        .map_err(|e| e.to_string())?;
    Ok(Pull {
        sub,
        asked,
        ends: asked + PULL_EXPIRES + PULL_SLACK,
    })
}

async fn partition(cluster: Cluster, rt: Arc<Rt>, p: u32, store: Arc<ClusterStore>) {
    let name = rt.target.name.clone();
    let Some(mut c) = consumer_of(&cluster, &name, p, &rt.stop).await else {
        return;
    };
    let mut next: Option<Pull> = None;
    while !rt.stop.is_cancelled() {
        let mut req = match next.take() {
            Some(r) => r,
            None => match pull(&cluster, &c).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(target: "callhook::cluster", delivery_target = %name, partition = p, error = %e, "pull failed, retrying");
                    tokio::select! {
                        _ = rt.stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        // A message already received is taken even when the request's
        // time is up (after a pause): its hold is checked, not assumed.
        let got = tokio::select! {
            biased;
            _ = rt.stop.cancelled() => break,
            m = req.sub.next() => m,
            _ = tokio::time::sleep_until(req.ends.into()) => {
                if req.ends.elapsed() > PULL_SLACK {
                    // Woken long after the time (a pause): what the socket
                    // holds for this request is read first.
                    req.ends = Instant::now() + PULL_SLACK;
                    next = Some(req);
                }
                continue;
            }
        };
        let Some(m) = got else { continue };
        match m.status {
            None | Some(StatusCode::OK) => {}
            Some(StatusCode::IDLE_HEARTBEAT) => {
                next = Some(req);
                continue;
            }
            // The request expired with nothing for it.
            Some(StatusCode::TIMEOUT) => continue,
            Some(status) => {
                tracing::debug!(target: "callhook::cluster", delivery_target = %name, partition = p, %status, description = ?m.description, "pull request ended");
                if m.description.as_deref() == Some("Consumer Deleted") {
                    match consumer_of(&cluster, &name, p, &rt.stop).await {
                        Some(again) => c = again,
                        None => break,
                    }
                }
                tokio::select! {
                    _ = rt.stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
        }
        let asked = req.asked;
        drop(req);
        // The next request waits at the server behind this message.
        next = pull(&cluster, &c).await.ok();
        let msg = jetstream::Message {
            message: m,
            context: cluster.js.clone(),
        };
        handle(&cluster, &rt, &c, msg, asked, &store).await;
        if rt.disabled.load(Ordering::Acquire) {
            // Parked until a reload replaces this target.
            rt.stop.cancelled().await;
            break;
        }
    }
}

async fn handle(
    cluster: &Cluster,
    rt: &Rt,
    c: &consumer::Consumer<consumer::pull::Config>,
    msg: jetstream::Message,
    asked: Instant,
    _store: &ClusterStore,
) {
    let name = rt.target.name.as_str();
    let (seq, delivered) = match msg.info() {
        Ok(i) => (i.stream_sequence, i.delivered.max(1) as u32),
        Err(_) => (0, 1),
    };
    let hold = Hold::new(&msg, c, asked);
    // A message that waited long for this instance (behind the previous
    // one, or in the socket during a pause) is checked at once, so the
    // in-progress acks can keep it.
    if !hold.confirm("work").await {
        return;
    }
    let wire = match Wire::decode(&msg.payload) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(target: "callhook::cluster", delivery_target = %name, seq, error = %e, "undecodable delivery: moved to the dead stream");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Callhook-Undecodable", e.as_str());
            headers.insert("Nats-Msg-Id", format!("dead-{seq}").as_str());
            if publish_dead(cluster, name, headers, msg.payload.clone()).await {
                if hold.confirm("ack").await {
                    let _ = msg.double_ack().await;
                }
            } else if hold.confirm("nak").await {
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
            return;
        }
    };
    let req = match wire.request() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(target: "callhook::cluster", seq, error = %e, "undecodable delivery body");
            if hold.confirm("term").await {
                let _ = msg.ack_with(AckKind::Term).await;
            }
            return;
        }
    };
    let row = Claimed {
        id: seq as i64,
        target: req.target,
        rule: req.rule,
        session_id: req.session_id,
        pbx: req.pbx,
        event_id: req.event_id,
        method: req.method,
        url: req.url,
        headers: req.headers,
        body: req.body,
        idempotency_key: req.idempotency_key,
        created_at: req.created_at,
        expires_at: req.expires_at,
        attempts: delivered.saturating_sub(1),
        refused: req.refused,
        secrets: req.secrets,
    };
    // The attempt, with in-progress acks while it runs.
    let end = tokio::select! {
        end = attempt(rt, &row, &hold) => end,
        // (never ends)
        _ = hold.keep() => End::Lost,
    };
    let m = metrics();
    let act = match &end {
        End::Lost => false,
        End::Delivered => hold.confirm("ack").await,
        End::Expired => hold.confirm("ack").await,
        End::Retry(_) | End::Release(..) => hold.confirm("nak").await,
        End::Dead { .. } => hold.confirm("dead").await,
    };
    if !act {
        if matches!(end, End::Delivered) {
            m.deliveries.with_label_values(&[name, "delivered"]).inc();
            tracing::warn!(target: "callhook::cluster", delivery_target = %name, seq, "delivered, but held past the ack wait meanwhile: another instance may send it again (same ids)");
        }
        return;
    }
    match end {
        End::Lost => {}
        End::Delivered => {
            if let Err(e) = msg.double_ack().await {
                tracing::warn!(target: "callhook::cluster", seq, error = %e, "delivered, but the ack was not confirmed (it may be sent again)");
            }
            m.deliveries.with_label_values(&[name, "delivered"]).inc();
        }
        End::Expired => {
            let _ = msg.double_ack().await;
            m.deliveries.with_label_values(&[name, "expired"]).inc();
        }
        End::Retry(delay) => {
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
        End::Release(why, delay) => {
            tracing::debug!(target: "callhook::cluster", seq, why, "delivery put back");
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
        End::Dead { status, error } => {
            let mut w = wire;
            w.attempts = row.attempts + 1;
            w.last_status = Some(status);
            w.last_error = error;
            w.updated_at = now_epoch();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("dead-{seq}").as_str());
            if publish_dead(cluster, name, headers, w.encode()).await {
                if let Err(e) = msg.double_ack().await {
                    tracing::warn!(target: "callhook::cluster", seq, error = %e, "dead delivery stored, but its ack was not confirmed");
                }
                m.deliveries.with_label_values(&[name, "dead"]).inc();
            } else {
                // Never drop it: it comes back and ends dead again.
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
        }
    }
}

async fn publish_dead(
    cluster: &Cluster,
    target: &str,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
) -> bool {
    let r = async {
        cluster
            .js
            .publish_with_headers(cluster.names.dead_subject(target), headers, payload)
            .await?
            .await?;
        Ok::<(), async_nats::Error>(())
    };
    match r.await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(target: "callhook::cluster", delivery_target = %target, error = %e, "cannot store a dead delivery; it stays queued");
            false
        }
    }
}

/// One attempt (the single-node dispatcher's steps, see `deliver::dispatcher`;
/// the answer is judged by `deliver::outcome`, as there).
async fn attempt(rt: &Rt, row: &Claimed, hold: &Hold<'_>) -> End {
    let t = rt.target.clone();
    let name = t.name.as_str();
    let m = metrics();
    let _permit = tokio::select! {
        biased;
        _ = rt.stop.cancelled() => return End::Release("shutdown", Duration::ZERO),
        p = rt.slots.clone().acquire_owned() => match p {
            Ok(p) => p,
            Err(_) => return End::Release("stopping", Duration::ZERO),
        },
    };
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
        _ = rt.stop.cancelled() => return End::Release("shutdown", Duration::ZERO),
        _ = ready => {}
    }
    if rt.disabled.load(Ordering::Acquire) {
        return End::Release("target disabled", Duration::ZERO);
    }
    let now = now_epoch();
    if row.expires_at.is_some_and(|e| now >= e) {
        return End::Expired;
    }
    // Still ours after the waits (or a pause)? Else another instance may
    // be sending it.
    if !hold.confirm("send").await {
        return End::Lost;
    }
    let probe = match rt.breaker.admit(Instant::now()) {
        Admit::Yes => false,
        Admit::Probe => true,
        Admit::No(_) => {
            let wait = rt
                .breaker
                .open_for(Instant::now())
                .unwrap_or(Duration::from_secs(1));
            return End::Release("breaker open", wait);
        }
    };
    if row.attempts == 0 {
        m.event_to_request_seconds
            .with_label_values(&[name])
            .observe((now - row.created_at).max(0.0));
    }
    let started = Instant::now();
    let answer = http::send(&t, row, SystemTime::now()).await;
    m.delivery_seconds
        .with_label_values(&[name])
        .observe(started.elapsed().as_secs_f64());
    let j = judge(&t, &rt.breaker, probe, row, answer, now_epoch());
    if let Some(p) = j.pause {
        rt.pause(Instant::now() + p);
    }
    if j.gone && !rt.disabled.swap(true, Ordering::AcqRel) {
        m.target_disabled.with_label_values(&[name]).set(1);
        tracing::error!(target: "callhook::cluster", delivery_target = name, "target answered 410 Gone: disabled on this instance until the targets are reloaded");
    }
    match j.decision {
        Decision::Delivered { .. } => End::Delivered,
        Decision::Retry { delay, .. } => End::Retry(delay),
        Decision::Dead { error } => End::Dead {
            status: j.status,
            error,
        },
    }
}
