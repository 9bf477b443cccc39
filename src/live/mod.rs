//! The live side for people at the desk: a per-tenant stream of call and
//! presence messages over WebSocket (`GET /v1/live`) and Server-Sent Events
//! (`GET /v1/live/sse`), click-to-call (`POST /v1/calls`) and state queries.
//!
//! ```text
//! normalizer task ──try_send (batch)─────────────────▶ hub task ───────┐
//! PresenceHub ──snapshot + changes (seq-checked)──▶ follower task ─────┤ (one per tenant)
//! POST /v1/calls ──▶ AmiHandle::originate ──outcome──▶ hub task ───────┤ originate.*
//!                                                                      ▼
//!        tenant state (lock) ──try_send──▶ per-client queues ──▶ sessions (WS / SSE / Meetip)
//! ```
//!
//! **One way.** The hub consumes model events (after the normalizer's batch
//! is committed) and presence changes; it never feeds the normalizer. The
//! only way back to the PBX is an AMI action (`Originate`) that the AMI
//! client owns and never re-sends.
//!
//! **Never slows the call path.** The normalizer only does a `try_send` of
//! its batch into a bounded queue ([`INPUT_QUEUE`]); if the hub ever fell
//! that far behind the batch is dropped (counted in
//! `callhook_live_dropped_total{reason="input_full"}`) and every client gets
//! a fresh snapshot. The hub serializes each message once and pushes it to
//! each concerned client's bounded queue with `try_send`: a slow client
//! never slows the others (see [`tenant`] and [`session`]).
//!
//! Modules: [`config`] (the `live:` section), [`auth`] (keys, tickets,
//! close codes), [`tenant`] (per-tenant state, seq, resume ring), [`message`]
//! (frames), [`session`] (one connected client, transport-neutral), [`ws`]
//! and [`sse`] (transports), [`originate`] (click-to-call outcomes),
//! [`api`] (HTTP routes), [`limits`] (rate windows), [`guard`] (failed
//! authentications per address), [`presence`] (the presence tracker's
//! states into the tenants).

pub mod api;
pub mod auth;
pub mod config;
pub mod guard;
pub mod limits;
pub mod message;
pub mod originate;
pub mod presence;
pub mod session;
pub mod sse;
pub mod tenant;
pub mod ws;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ami::client::AmiHandle;
use crate::metrics::metrics;
use crate::model::ModelEvent;
use auth::Principal;
use config::LiveConfig;
use limits::RateWindows;
use message::Frame;
use originate::{AmiOutcome, Registry, Status};
use tenant::{Subscriber, TenantState};

/// Finds the AMI client of a PBX (click-to-call).
pub type AmiLookup = Arc<dyn Fn(&str) -> Option<AmiHandle> + Send + Sync>;

/// Batches waiting for the hub.
pub const INPUT_QUEUE: usize = 4096;

enum Input {
    Model(Arc<Vec<ModelEvent>>),
    Originate(String, AmiOutcome),
}

/// Why a client was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `max_clients` reached.
    #[error("too many clients")]
    TooManyClients,
    /// `max_clients_per_tenant` reached.
    #[error("too many clients for this tenant")]
    TooManyForTenant,
    /// The tenant has no live state (not configured).
    #[error("unknown tenant")]
    UnknownTenant,
}

impl Refusal {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooManyClients => "max_clients",
            Refusal::TooManyForTenant => "max_clients_per_tenant",
            Refusal::UnknownTenant => "unknown_tenant",
        }
    }
}

/// The live hub (cheap to share: `Arc<Live>`).
pub struct Live {
    cfg: Arc<LiveConfig>,
    tenants: HashMap<String, Arc<Mutex<TenantState>>>,
    input: mpsc::Sender<Input>,
    input_rx: Mutex<Option<mpsc::Receiver<Input>>>,
    input_lost: AtomicBool,
    registry: Mutex<Registry>,
    ami: AmiLookup,
    clients: AtomicUsize,
    next_id: AtomicU64,
    conn_rate: RateWindows<IpAddr>,
    user_rate: RateWindows<(String, String)>,
    guard: guard::AuthGuard,
    presence: std::sync::OnceLock<(
        crate::presence::PresenceHub,
        HashMap<String, std::collections::BTreeSet<String>>,
    )>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("tenants", &self.tenants.keys().collect::<Vec<_>>())
            .field("clients", &self.clients.load(Ordering::Relaxed))
            .finish()
    }
}

/// A client's registration; unregisters on drop.
pub struct Subscription {
    live: Arc<Live>,
    tenant: Arc<Mutex<TenantState>>,
    id: u64,
    /// Who.
    pub principal: Principal,
    /// Frames for this client.
    pub rx: mpsc::Receiver<Arc<Frame>>,
    /// Set when a frame did not fit in the queue.
    pub overflow: Arc<AtomicBool>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.tenant).subs.remove(&self.id);
        self.live.clients.fetch_sub(1, Ordering::Relaxed);
        metrics().live_clients.dec();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Live {
    /// A hub for the configured tenants; `ami` finds the AMI client of a
    /// PBX id (click-to-call). Start it with [`Live::run`].
    pub fn new(cfg: LiveConfig, ami: AmiLookup) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let tenants = cfg
            .tenants
            .keys()
            .map(|id| {
                (
                    id.clone(),
                    Arc::new(Mutex::new(TenantState::new(id, cfg.resume_buffer))),
                )
            })
            .collect();
        let conn_rate =
            RateWindows::new(cfg.connections_per_minute_per_ip, Duration::from_secs(60));
        let user_rate =
            RateWindows::new(cfg.originate.per_user_per_minute, Duration::from_secs(60));
        let guard = guard::AuthGuard::new(cfg.auth_failures_per_ip, cfg.auth_failures_window);
        Arc::new(Self {
            cfg: Arc::new(cfg),
            tenants,
            input: tx,
            input_rx: Mutex::new(Some(rx)),
            input_lost: AtomicBool::new(false),
            registry: Mutex::new(Registry::default()),
            ami,
            clients: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            conn_rate,
            user_rate,
            guard,
            presence: std::sync::OnceLock::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LiveConfig {
        &self.cfg
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Hands a committed batch of model events to the hub without waiting
    /// (the normalizer task calls this).
    pub fn publish_model(&self, events: &[ModelEvent]) {
        if events.is_empty() {
            return;
        }
        if self
            .input
            .try_send(Input::Model(Arc::new(events.to_vec())))
            .is_err()
        {
            metrics()
                .live_dropped
                .with_label_values(&["input_full"])
                .inc();
            self.input_lost.store(true, Ordering::Relaxed);
        }
    }

    /// The configured tenant ids.
    pub fn tenant_ids(&self) -> Vec<String> {
        self.tenants.keys().cloned().collect()
    }

    /// One row of the presence tracker (see [`presence`]).
    pub fn report_presence(&self, tenant: &str, row: &crate::presence::ExtensionPresence) {
        if let Some(t) = self.tenants.get(tenant) {
            presence::apply_row(&mut lock(t), row);
        }
    }

    /// A tenant's whole presence table (see [`presence`]).
    pub fn seed_presence(&self, tenant: &str, snap: Option<&crate::presence::TenantSnapshot>) {
        if let Some(t) = self.tenants.get(tenant) {
            presence::seed(&mut lock(t), snap);
        }
    }

    /// The presence tracker this hub follows and each tenant's configured
    /// extensions (set by [`presence::spawn`]).
    pub fn attach_presence(
        &self,
        hub: crate::presence::PresenceHub,
        configured: HashMap<String, std::collections::BTreeSet<String>>,
    ) {
        let _ = self.presence.set((hub, configured));
    }

    /// Whether `extension` exists on `tenant`'s PBX: `Some(true)` known (the
    /// live state or the tracker has it), `Some(false)` unknown to a closed
    /// directory, `None` cannot tell (see [`presence::directory_knows`]).
    pub fn knows_extension(&self, tenant: &str, extension: &str) -> Option<bool> {
        if self
            .with_tenant(tenant, |t| t.extensions().contains(extension))
            .unwrap_or(false)
        {
            return Some(true);
        }
        let (hub, configured) = self.presence.get()?;
        let none = std::collections::BTreeSet::new();
        presence::directory_knows(
            hub.snapshot(tenant).as_ref(),
            configured.get(tenant).unwrap_or(&none),
            extension,
        )
    }

    /// Runs the hub until `token` is cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let Some(mut rx) = lock(&self.input_rx).take() else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                m = rx.recv() => match m {
                    Some(i) => self.apply(i),
                    None => break,
                },
                _ = tick.tick() => {
                    let mut changes = Vec::new();
                    lock(&self.registry).tick(&mut changes);
                    self.announce(changes);
                }
            }
            if self.input_lost.swap(false, Ordering::Relaxed) {
                for t in self.tenants.values() {
                    for s in lock(t).subs.values() {
                        s.overflow.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn apply(&self, i: Input) {
        let mut changes = Vec::new();
        match i {
            Input::Model(evs) => {
                for ev in evs.iter() {
                    let pbx = match ev {
                        ModelEvent::Leg(l) => &l.pbx,
                        ModelEvent::CallState(c) => &c.pbx,
                        ModelEvent::Call(c) => &c.pbx,
                    };
                    let Some(t) = self.tenants.get(pbx) else {
                        continue;
                    };
                    lock(t).apply_model(ev);
                    lock(&self.registry).on_model(pbx, ev, &mut changes);
                }
            }
            Input::Originate(id, o) => {
                tracing::debug!(request_id = %id, outcome = ?o, "click-to-call outcome from the PBX");
                lock(&self.registry).on_ami(&id, o, &mut changes)
            }
        }
        self.announce(changes);
    }

    fn announce(&self, changes: Vec<originate::Change>) {
        for ch in changes {
            let c = ch.request;
            let Some(t) = self.tenants.get(&c.tenant) else {
                continue;
            };
            let kind = if ch.ended {
                "originate.ended"
            } else {
                match c.status {
                    Status::Queued => "originate.queued",
                    Status::RingingOwnPhone => "originate.ringing_own_phone",
                    Status::Connected => "originate.connected",
                    Status::Busy => "originate.busy",
                    Status::NoAnswer => "originate.no_answer",
                    Status::Failed => "originate.failed",
                }
            };
            if c.status.is_final() && !ch.ended {
                metrics()
                    .originate_requests
                    .with_label_values(&[c.status.as_str()])
                    .inc();
            }
            let body = serde_json::to_value(&c).unwrap_or_else(|_| json!({}));
            let body = json!({ "request_id": c.id, "request": body, "extension": c.extension, "status": c.status, "session_id": c.session_id, "number": c.number });
            lock(t).emit(
                kind,
                crate::source::now_epoch(),
                vec![c.extension.clone()],
                body,
            );
        }
    }

    /// Admits a client: checks the limits, registers it and returns its
    /// queue with the snapshot (taken under the same lock, so the first
    /// frame in the queue follows it) and its seq.
    pub fn subscribe(
        self: &Arc<Self>,
        principal: Principal,
    ) -> Result<(Subscription, String, u64), Refusal> {
        let t = self
            .tenants
            .get(&principal.tenant)
            .ok_or(Refusal::UnknownTenant)?
            .clone();
        let total = self.clients.fetch_add(1, Ordering::Relaxed);
        if total >= self.cfg.max_clients {
            self.clients.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::TooManyClients);
        }
        let mut g = lock(&t);
        if g.subs.len() >= self.cfg.max_clients_per_tenant {
            drop(g);
            self.clients.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::TooManyForTenant);
        }
        metrics().live_clients.inc();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.cfg.client_queue);
        let overflow = Arc::new(AtomicBool::new(false));
        g.subs.insert(
            id,
            Subscriber {
                principal: principal.clone(),
                tx,
                overflow: overflow.clone(),
            },
        );
        let (snap, seq) = Self::snapshot_locked(&g, &principal, "connect");
        drop(g);
        Ok((
            Subscription {
                live: self.clone(),
                tenant: t,
                id,
                principal,
                rx,
                overflow,
            },
            snap,
            seq,
        ))
    }

    fn snapshot_locked(g: &TenantState, p: &Principal, reason: &str) -> (String, u64) {
        let mut body = g.snapshot(p);
        if let serde_json::Value::Object(m) = &mut body {
            m.insert("reason".into(), reason.into());
        }
        (
            message::render("snapshot", g.seq, crate::source::now_epoch(), &body),
            g.seq,
        )
    }

    /// A fresh snapshot for a subscription (after an overflow).
    pub fn resnapshot(&self, sub: &Subscription, reason: &str) -> (String, u64) {
        let g = lock(&sub.tenant);
        sub.overflow.store(false, Ordering::Relaxed);
        Self::snapshot_locked(&g, &sub.principal, reason)
    }

    /// Frames `sub` missed after `after` (up to `upto`), or `None` when
    /// the resume buffer does not reach back that far.
    pub fn missed(&self, sub: &Subscription, after: u64, upto: u64) -> Option<Vec<Arc<Frame>>> {
        lock(&sub.tenant).missed(&sub.principal, after, upto)
    }

    /// Runs `f` on a tenant's state (queries).
    pub fn with_tenant<R>(&self, tenant: &str, f: impl FnOnce(&TenantState) -> R) -> Option<R> {
        self.tenants.get(tenant).map(|t| f(&lock(t)))
    }

    /// Counts a new connection from `ip`; false over the per-address rate.
    pub fn admit_connection(&self, ip: IpAddr) -> bool {
        self.conn_rate.hit(&ip)
    }

    /// The failed-authentication limit per address ([`guard`]).
    pub fn guard(&self) -> &guard::AuthGuard {
        &self.guard
    }

    /// Authenticates a request from `peer` on `surface` (its query and
    /// headers), through the failed-authentication limit.
    pub fn authenticate(
        &self,
        peer: Option<IpAddr>,
        surface: &str,
        q: &auth::CredentialQuery,
        headers: &axum::http::HeaderMap,
    ) -> Result<Principal, guard::Denied> {
        self.guard.check(peer, surface, || {
            auth::authenticate(&self.cfg, q, headers, crate::source::now_epoch() as u64)
        })
    }

    /// The AMI client of a tenant (click-to-call), if it is a PBX.
    pub fn ami(&self, tenant: &str) -> Option<AmiHandle> {
        (self.ami)(tenant)
    }

    /// Click-to-call registry.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// One more click-to-call by this user this minute; false over the rate.
    pub fn admit_originate(&self, tenant: &str, extension: &str) -> bool {
        self.user_rate
            .hit(&(tenant.to_string(), extension.to_string()))
    }

    /// Hands an AMI outcome of request `id` to the hub.
    pub async fn originate_outcome(&self, id: &str, o: AmiOutcome) {
        let _ = self.input.send(Input::Originate(id.to_string(), o)).await;
    }

    /// Announces a just-registered request (`originate.queued`).
    pub fn announce_queued(&self, r: originate::CallRequest) {
        self.announce(vec![originate::Change {
            request: r,
            ended: false,
        }]);
    }
}

#[cfg(test)]
mod tests {
    use super::auth::{Principal, Scope};
    use super::config::{LiveConfig, Tenant};
    use super::session::{Next, Session};
    use super::*;
    use crate::config::Secret;
    use crate::model::{Direction, LegEvent, Role, State, Timestamp};

    fn live(queue: usize) -> Arc<Live> {
        let mut c = LiveConfig {
            client_queue: queue,
            resume_buffer: 8,
            ..LiveConfig::default()
        };
        for id in ["main", "other"] {
            c.tenants.insert(
                id.into(),
                Tenant {
                    id: id.into(),
                    key: Secret::new("k".repeat(16)),
                    code: 1,
                    monitor_extension: "999".into(),
                    channel: "SIP/{extension}".into(),
                    context: "from-internal".into(),
                },
            );
        }
        Live::new(c, Arc::new(|_: &str| None))
    }

    fn who(tenant: &str, ext: &str) -> Principal {
        let scope = if ext == "999" {
            Scope::Monitor
        } else {
            Scope::Agent
        };
        Principal {
            tenant: tenant.into(),
            extension: ext.into(),
            scope,
        }
    }

    fn leg(pbx: &str, sid: &str, ext: &str, state: State) -> ModelEvent {
        ModelEvent::Leg(LegEvent {
            session_id: sid.into(),
            pbx: pbx.into(),
            leg_id: format!("{sid}/{ext}"),
            state,
            direction: Direction::Incoming,
            role: Role::Callee,
            extension: ext.into(),
            caller_number: Some("5559876543".into()),
            caller_name: None,
            dialed_number: None,
            queue: None,
            at: Timestamp(1.0),
            duration: None,
            billsec: None,
            disposition: None,
            approximate: false,
            extra: Default::default(),
        })
    }

    fn texts(n: Next) -> Vec<serde_json::Value> {
        match n {
            Next::Send(v) => v.iter().map(|t| serde_json::from_str(t).unwrap()).collect(),
            Next::Close(c, w) => panic!("closed {c} {w}"),
        }
    }

    #[tokio::test]
    async fn slow_client_gets_gap_and_snapshot_then_is_dropped_others_unaffected() {
        let l = live(2);
        let (mut fast, _) = Session::start(&l, who("main", "999"), None, "test").unwrap();
        let (mut slow, _) = Session::start(&l, who("main", "999"), None, "test").unwrap();
        let mut got = 0;
        for i in 0..5 {
            l.apply(Input::Model(Arc::new(vec![leg(
                "main",
                &format!("s{i}"),
                "1001",
                State::Ringing,
            )])));
            // ringing + derived presence: 2 frames per event.
            got += texts(fast.next().await).len();
            got += match tokio::time::timeout(Duration::from_millis(10), fast.next()).await {
                Ok(n) => texts(n).len(),
                Err(_) => 0,
            };
        }
        assert!(got >= 5, "{got}");
        assert!(
            metrics()
                .live_dropped
                .with_label_values(&["slow_client"])
                .get()
                >= 1
        );
        let first = texts(slow.next().await);
        let kinds: Vec<_> = first
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(kinds[..2], ["gap", "snapshot"], "{first:?}");
        assert_eq!(first[1]["reason"], "overflow");
        assert_eq!(first[1]["calls"].as_array().map(Vec::len), Some(5));
        // Overflowing again and again: disconnected.
        let mut closed = None;
        for i in 0..20 {
            for j in 0..4 {
                l.apply(Input::Model(Arc::new(vec![leg(
                    "main",
                    &format!("t{i}-{j}"),
                    "1002",
                    State::Ringing,
                )])));
            }
            if let Next::Close(code, _) = slow.next().await {
                closed = Some(code);
                break;
            }
        }
        assert_eq!(closed, Some(auth::CLOSE_SLOW));
    }

    #[tokio::test]
    async fn tenants_and_extensions_are_isolated_and_resume_works() {
        let l = live(64);
        let (mut a1, first) = Session::start(&l, who("main", "1001"), None, "test").unwrap();
        assert_eq!(first.len(), 2);
        let (mut o1, _) = Session::start(&l, who("other", "1001"), None, "test").unwrap();
        let (mut a2, _) = Session::start(&l, who("main", "1002"), None, "test").unwrap();
        l.apply(Input::Model(Arc::new(vec![leg(
            "main",
            "s1",
            "1001",
            State::Ringing,
        )])));
        let got = texts(a1.next().await);
        assert_eq!(got[0]["type"], "call.ringing");
        let none = tokio::time::timeout(Duration::from_millis(50), o1.next()).await;
        assert!(none.is_err(), "the other tenant got something");
        let none = tokio::time::timeout(Duration::from_millis(50), a2.next()).await;
        assert!(none.is_err(), "1002 got 1001's call");
        // Resume from 0 replays what the ring buffer holds, then a gap when too old.
        let (_s, first) = Session::start(&l, who("main", "1001"), Some(0), "test").unwrap();
        let v: Vec<serde_json::Value> = first
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        assert_eq!(v[2]["type"], "call.ringing");
        assert_eq!(v[2]["replayed"], true);
        for i in 0..20 {
            l.apply(Input::Model(Arc::new(vec![leg(
                "main",
                &format!("x{i}"),
                "1003",
                State::Ringing,
            )])));
        }
        let (_s, first) = Session::start(&l, who("main", "1001"), Some(1), "test").unwrap();
        let v: serde_json::Value = serde_json::from_str(&first[2]).unwrap();
        assert_eq!(v["type"], "gap");
    }
}
