//! The one wiring function: sources → normalizer → rules → outbox →
//! dispatcher, plus the HTTP listener, reloads and shutdown.
//!
//! ```text
//! AMI clients ─try_send─────────┐
//!                               ├─▶ bounded queue ─▶ normalizer task ─▶ rules ─▶ outbox.submit (await commit) ─▶ dispatcher ─▶ HTTP
//! push endpoint ─send (≤ 2 s)───┘                        │                                   │
//!        ▲                                               │                                   │
//!        └──────────── ack (after the commit) ───────────┼───────────────────────────────────┘
//!                                                        ├─▶ optional printout of the call model (stdout)
//!                                                        ├─▶ try_send committed batch ─▶ presence task ◀─ try_send presence events ─ AMI clients
//!                                                        │                                     │ change stream
//!                                                        └─▶ try_send committed batch ─▶ live hub ◀┘ ─▶ WS / SSE / Meetip clients
//! ```
//!
//! **Presence** runs in a task of its own ([`crate::presence::task`]); the
//! table is readable through [`Running::presence`]. Neither the clients nor
//! the normalizer task ever wait for it. The **live** hub
//! ([`crate::live`]) takes the committed batches the same way and follows
//! the presence hub's change stream for its extension states.
//!
//! **Durability.** The normalizer task evaluates the rules for a batch of
//! events and waits until the resulting deliveries are committed to the
//! outbox before it takes the next batch: once a delivery exists, it
//! survives `kill -9`. The AMI socket readers never wait for this (they feed
//! a bounded queue; see `ami::client`), and nothing here waits for HTTP.
//! A pushed event (`http::push`) carries an acknowledgement that is answered
//! once its batch's deliveries are committed; if they could not be (outbox
//! error or full), the batch's changes to pushed calls are rolled back and
//! the pushes answered with an error (HTTP 503), so the pusher's retry is
//! applied again rather than taken for a duplicate.
//!
//! **Reload** (SIGHUP or `POST /-/reload`): the file is read and validated
//! again; on failure every error is logged/returned and the old
//! configuration stays. On success the rules and targets are swapped
//! atomically (in-flight deliveries continue), push team tokens and time
//! zones replaced, the normalizer's settings (`classify`, `calls`,
//! `push.settle`) replaced between two batches, and the AMI clients made to
//! match `pbx:` (a new PBX is connected, a removed one logged off, a changed
//! one reconnected; the others are not touched). What only a restart can
//! change (`listen`, `state_dir`, `outbox`, `admin`, the push endpoint's
//! mount, a larger event queue: see `config::reload`) keeps its running
//! value and is reported by key in the reply, the log and
//! `callhook_config_restart_required{key}`.
//!
//! **Shutdown** (SIGINT/SIGTERM): clients log off and stop reading; the
//! queue is closed (new pushes get 503); the normalizer drains what was
//! queued, writes the records of pushed calls that are over without
//! waiting for them to settle (single node; in cluster mode the team's
//! next owner settles them), and commits its deliveries; the
//! dispatcher lets requests in flight finish (up to a deadline) and leaves
//! the rest pending in the outbox; the HTTP listener closes.

mod batch;
mod clients;
mod delivery;
mod error;
mod handover;
mod listen;
mod lock;
mod reloader;
mod signals;
mod task;

pub use batch::deliver_batch;
pub use clients::{client_config, client_configs};
pub use error::AppError;
pub use lock::{lock_state_dir, state_dir_in_use};

use clients::Clients;
use delivery::Delivery;
use handover::{follow_ownership, ownable, restore_live_calls, Handover};
use signals::spawn_signals;
use task::{Inputs, NormalizerTask};

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{reload, Config};
use crate::deliver::outbox::Outbox;
use crate::deliver::store::DeliveryStore;
use crate::http::push::{PushState, Teams, ACK_WAIT, QUEUE_WAIT};
use crate::http::{ApiState, ReloadReply};
use crate::metrics::{metrics, KnownLabels};
use crate::model::ModelEvent;
use crate::normalize::Normalizer;
use crate::notify::{Heartbeat, Notifier};
use crate::presence::task::{send_model, PresenceWiring};
use crate::presence::PresenceHub;
use crate::source::{now_epoch, SourceEvent};

/// Room in the normalizer's queue for pushed events (added to the PBXs').
const PUSH_QUEUE: usize = 1024;

/// The commit the binary was built from (`build.rs`, `unknown` without
/// git), for `callhook_build_info`.
pub const BUILD_COMMIT: &str = crate::build_info::COMMIT;

/// Exports the series whose labels `cfg` makes known at 0.
fn init_series(cfg: &Config) {
    let pbx: Vec<&str> = cfg.pbx.iter().map(|p| p.id.as_str()).collect();
    let teams: Vec<&str> = cfg
        .push
        .iter()
        .flat_map(|p| p.teams.iter().map(|t| t.name.as_str()))
        .collect();
    let targets: Vec<&str> = cfg.targets.keys().map(String::as_str).collect();
    let rules = cfg.rules.names();
    let mut listeners = Vec::new();
    if cfg.listen.is_some() {
        listeners.push("listen");
    }
    if cfg.admin_listen.is_some() {
        listeners.push("admin");
    }
    metrics().init_known_series(&KnownLabels {
        pbx: &pbx,
        teams: &teams,
        targets: &targets,
        rules: &rules,
        listeners: &listeners,
    });
}

/// Receives every batch of model events, in order.
pub type Observer = Box<dyn FnMut(&[ModelEvent]) + Send>;

/// What the daemon was started with, besides the config.
#[derive(Default)]
pub struct RunOptions {
    /// The config file, for reloads (none: reload unavailable).
    pub config_path: Option<PathBuf>,
    /// Called with every batch of model events, in order (printing, demo timeline).
    pub observer: Option<Observer>,
    /// Bound HTTP listener to use instead of binding `cfg.listen` (tests, demo).
    pub listener: Option<tokio::net::TcpListener>,
    /// Bound listener to use instead of binding `cfg.admin_listen`.
    pub admin_listener: Option<tokio::net::TcpListener>,
    /// The service manager to notify (`callhook run` under systemd).
    pub notifier: Option<Arc<Notifier>>,
}

/// Handles the daemon hands out while it runs.
#[derive(Clone)]
pub struct Running {
    /// Ask for a reload.
    pub reload: mpsc::Sender<ReloadReply>,
    /// The SQLite outbox (none in cluster mode).
    pub outbox: Option<Arc<Outbox>>,
    /// The delivery store (the outbox, or the cluster's stream).
    pub store: Arc<dyn DeliveryStore>,
    /// Extension presence: snapshot, per-extension lookup, change stream.
    pub presence: PresenceHub,
}

/// Runs the daemon until SIGINT/SIGTERM; SIGHUP reloads. Notifies systemd
/// when `$NOTIFY_SOCKET` is set (unless `opts` brings a notifier).
pub async fn run(cfg: Config, mut opts: RunOptions) -> Result<(), AppError> {
    if opts.notifier.is_none() {
        opts.notifier = Some(Arc::new(Notifier::from_env()));
    }
    let token = CancellationToken::new();
    let (reload_tx, reload_rx) = mpsc::channel::<ReloadReply>(8);
    let signals = spawn_signals(token.clone(), reload_tx.clone())?;
    let r = run_until(cfg, opts, token, reload_tx, reload_rx, |_| {}).await;
    signals.abort();
    r
}

/// Runs everything until `token` is cancelled. `started` receives the
/// handles once the outbox is open (tests and the demo use them).
pub async fn run_until(
    cfg: Config,
    mut opts: RunOptions,
    token: CancellationToken,
    reload_tx: mpsc::Sender<ReloadReply>,
    reload_rx: mpsc::Receiver<ReloadReply>,
    started: impl FnOnce(Running),
) -> Result<(), AppError> {
    init_series(&cfg);
    metrics().set_build_info(env!("CARGO_PKG_VERSION"), BUILD_COMMIT);
    let (targets_tx, targets_rx) = watch::channel(cfg.targets.clone());
    let (rules_tx, mut rules_rx) = watch::channel(cfg.rules.clone());
    let deliver_token = CancellationToken::new();
    let delivery = Delivery::start(&cfg, targets_rx, deliver_token.clone()).await?;
    let store = delivery.store();
    // Presence: its own task, fed by the clients and the committed batches.
    let presence = PresenceWiring::start(
        &cfg.presence,
        &cfg.normalizer,
        cfg.pbx.iter().map(|p| p.id.as_str()),
    );
    started(Running {
        reload: reload_tx.clone(),
        outbox: delivery.outbox(),
        store: store.clone(),
        presence: presence.hub.clone(),
    });

    // AMI clients: every PBX, or in cluster mode the ones this instance owns.
    let sources_token = token.child_token();
    let capacity = reload::queue_capacity(&cfg, PUSH_QUEUE).max(1);
    let (tx, rx) = mpsc::channel::<SourceEvent>(capacity);
    let clients = Clients::new(
        tx.clone(),
        sources_token.clone(),
        presence.feed(&cfg.presence, &cfg.normalizer.classifier),
        cfg.ami_proxy
            .as_ref()
            .map(|p| p.pbx_ids())
            .unwrap_or_default(),
    );
    let ownership_token = CancellationToken::new();
    let (items_tx, items_rx) = watch::channel(ownable(&cfg));
    let (pbx_cfg_tx, pbx_cfg_rx) = watch::channel(cfg.pbx.clone());
    let (handover_tx, handover_rx) = mpsc::unbounded_channel::<Handover>();
    let ownership = match delivery.cluster() {
        None => {
            for p in &cfg.pbx {
                clients.start(p);
            }
            None
        }
        Some(c) => Some(
            crate::cluster::ownership::start(c.clone(), items_rx, ownership_token.clone())
                .await
                .map_err(AppError::Cluster)?,
        ),
    };
    // The live hub (consumes committed model events; click-to-call through
    // the AMI clients) and the Meetip channel on top of it.
    let live_token = CancellationToken::new();
    let live = cfg.live.clone().map(|lc| {
        // Looked up at each click-to-call: reloads add and remove PBXs.
        let c = clients.clone();
        let ami: crate::live::AmiLookup =
            Arc::new(move |id: &str| c.handles().into_iter().find(|h| &**h.pbx() == id));
        let live = crate::live::Live::new(lc, ami);
        tokio::spawn(live.clone().run(live_token.clone()));
        // Extension states: the presence tracker's, where it has any.
        if cfg.presence.enabled {
            crate::live::presence::spawn(&live, &presence.hub, &cfg.presence, &live_token);
        }
        let hub = live.clone();
        let mut prev = opts.observer.take();
        opts.observer = Some(Box::new(move |evs: &[ModelEvent]| {
            hub.publish_model(evs);
            if let Some(p) = prev.as_mut() {
                p(evs);
            }
        }));
        live
    });
    let meetip = match (&live, cfg.meetip.clone()) {
        (Some(l), Some(m)) => Some(crate::meetip::Meetip::new(m, l.clone())),
        _ => None,
    };
    // The push endpoint is a source too: it feeds the same queue.
    let (push_teams_tx, push_teams_rx) = watch::channel(Arc::new(Teams::new(
        cfg.push.as_ref().map_or(&[][..], |p| &p.teams[..]),
    )));
    let push_state = cfg.push.as_ref().and_then(|p| {
        let token_header = axum::http::HeaderName::from_bytes(p.token_header.as_bytes()).ok()?;
        Some(Arc::new(PushState {
            path: p.path.clone(),
            token_param: p.token_param.clone(),
            token_header,
            teams: push_teams_rx.clone(),
            tx: tx.clone(),
            queue_wait: QUEUE_WAIT,
            ack_wait: ACK_WAIT,
            forward: delivery.cluster().map(|c| {
                Arc::new(crate::cluster::push::PushStream::new(c))
                    as Arc<dyn crate::http::push::PushForward>
            }),
        }))
    });
    let follower = match (delivery.cluster(), &ownership) {
        (Some(c), Some(o)) => Some(tokio::spawn(follow_ownership(
            c.clone(),
            store.clone(),
            o.clone(),
            o.subscribe(),
            pbx_cfg_rx,
            clients.clone(),
            push_teams_rx.clone(),
            cfg.push
                .as_ref()
                .map_or_else(String::new, |p| p.token_param.clone()),
            tx.clone(),
            handover_tx,
            sources_token.clone(),
        ))),
        _ => None,
    };
    // A daemon that only routes calls (FastAGI) has no source feeding the
    // queue: keep it open until shutdown.
    let _agi_keeps_queue_open = cfg.agi.as_ref().map(|_| tx.clone());
    drop(tx);

    // HTTP.
    let outbox_ok = Arc::new(AtomicBool::new(true));
    let http_token = CancellationToken::new();
    let bind = listen::bind;
    let listener = match (opts.listener.take(), cfg.listen) {
        (Some(l), _) => Some(l),
        (None, Some(addr)) => Some(bind(addr).await?),
        (None, None) => None,
    };
    let admin_listener = match (opts.admin_listener.take(), cfg.admin_listen) {
        (Some(l), _) => Some(l),
        (None, Some(addr)) => Some(bind(addr).await?),
        (None, None) => None,
    };
    let readiness = listen::readiness(
        clients.clone(),
        outbox_ok.clone(),
        ownership.clone(),
        delivery.polling_probe(),
    );
    let state = ApiState {
        readiness: Arc::new(readiness),
        reload: Some(reload_tx.clone()),
        admin_token: cfg.admin_token.clone(),
        outbox: Some(store.clone()),
        push: push_state.clone(),
        live: live.clone(),
        meetip: meetip.clone(),
    };
    let http_tasks = listen::serve_all(
        &cfg,
        listener,
        admin_listener,
        state,
        meetip.as_ref(),
        &http_token,
    )
    .await?;
    if live.is_some() {
        info!("live API ready: /v1/live, /v1/live/sse, /v1/calls, /v1/extensions, /console");
    }
    if let Some(p) = &push_state {
        info!(path = %p.path, "push endpoint ready");
    }
    drop(reload_tx);
    drop(push_state);

    // FastAGI call routing: an edge of its own (it feeds nothing downstream).
    let agi_token = CancellationToken::new();
    let mut agi_router_tx = None;
    let mut agi_task = None;
    if let Some(a) = &cfg.agi {
        let addr = a.settings.listen;
        let l = bind(addr).await?;
        info!(addr = %l.local_addr().unwrap_or(addr), routes = a.router.routes.len(), max_sessions = a.settings.max_sessions, "FastAGI listening");
        metrics().agi.init_series(&a.router.names());
        let (tx, rx) = watch::channel(a.router.clone());
        agi_router_tx = Some(tx);
        agi_task = Some(tokio::spawn(crate::agi::serve(
            l,
            a.settings.clone(),
            rx,
            agi_token.clone(),
        )));
    }

    // The AMI proxy: an edge next to the AMI clients (it feeds nothing
    // downstream; it shares their connections with existing tools).
    let proxy_token = CancellationToken::new();
    let mut proxy = None;
    if let Some(p) = &cfg.ami_proxy {
        let l = bind(p.listen).await?;
        proxy = Some(
            crate::proxy::AmiProxy::start(p.clone(), Some(l), clients.links(), proxy_token.clone())
                .await
                .map_err(|source| AppError::Listen {
                    addr: p.listen,
                    source,
                })?,
        );
    }

    // Reloads.
    let config_path = opts.config_path.clone();
    let (normalizer_tx, normalizer_rx) = watch::channel(cfg.daemon_normalizer());
    let started_cfg = cfg.clone();
    let reload_clients = clients.clone();
    let clustered = ownership.is_some();
    let reload_task = tokio::spawn(
        reloader::Reloader {
            config_path,
            started: started_cfg,
            capacity,
            push_queue: PUSH_QUEUE,
            targets: targets_tx,
            rules: rules_tx,
            normalizer: normalizer_tx,
            clients: reload_clients,
            cluster: clustered.then_some((pbx_cfg_tx, items_tx)),
            push_teams: push_teams_tx,
            agi_router: agi_router_tx,
        }
        .run(reload_rx),
    );
    metrics().config_last_reload_successful.set(1);
    metrics()
        .config_last_reload_success_timestamp_seconds
        .set(now_epoch());
    let heartbeat = Heartbeat::new();
    let notifier = opts
        .notifier
        .take()
        .unwrap_or_else(|| Arc::new(Notifier::disabled()));
    let ready = notifier.ready(&format!(
        "running: {} PBX, {} targets, {} rules",
        cfg.pbx.len(),
        cfg.targets.len(),
        cfg.rules.len()
    ));
    let watchdog_token = CancellationToken::new();
    let watchdog = tokio::spawn(crate::notify::watchdog(
        notifier.clone(),
        ready,
        heartbeat.clone(),
        watchdog_token.clone(),
    ));

    // The normalizer task (this one). Committed batches also go to
    // presence (try_send: presence never slows this loop).
    let observer: Option<Observer> = match (opts.observer.take(), presence.model().cloned()) {
        (o, None) => o,
        (mut o, Some(tx)) => Some(Box::new(move |evs: &[ModelEvent]| {
            send_model(&tx, evs);
            if let Some(o) = o.as_mut() {
                o(evs);
            }
        })),
    };
    let mut normalizer = Normalizer::new(cfg.daemon_normalizer());
    if ownership.is_some() {
        // Cluster mode: a PBX's calls are restored when this instance takes it.
        normalizer.track_changes();
    } else {
        restore_live_calls(&mut normalizer, store.as_ref()).await;
    }
    let mut task = NormalizerTask {
        normalizer,
        rules: rules_rx.borrow_and_update().clone(),
        store: store.clone(),
        ownership: ownership.clone(),
        ok: outbox_ok.clone(),
        observer,
        next: Default::default(),
    };
    let mut inputs = Inputs {
        events: task::Events::new(rx),
        handover: handover_rx,
        rules: rules_rx,
        settings: normalizer_rx,
        stop: token.clone(),
        heartbeat: heartbeat.clone(),
    };
    task.run(&mut inputs).await;

    // Shutdown: sources first, then what they queued, then delivery.
    notifier.stopping();
    watchdog_token.cancel();
    let _ = watchdog.await;
    sources_token.cancel();
    agi_token.cancel();
    if let Some(t) = agi_task {
        let _ = t.await;
    }
    proxy_token.cancel();
    if let Some(p) = proxy {
        p.stopped().await;
    }
    for h in &clients.handles() {
        if tokio::time::timeout(Duration::from_secs(3), h.stopped())
            .await
            .is_err()
        {
            warn!(pbx = %h.pbx(), "AMI client did not stop in time");
        }
    }
    if let Some(f) = follower {
        let _ = f.await;
    }
    task.drain(&mut inputs.events).await;
    let live = task.normalizer.live_calls();
    if live > 0 {
        info!(live, "stopping with calls in progress (the reconnect snapshot settles them at the next start)");
    }
    // Cluster mode: leases released now, so the next owners take over at once.
    ownership_token.cancel();
    if let Some(o) = &ownership {
        let _ = tokio::time::timeout(Duration::from_secs(3), o.stopped()).await;
    }
    deliver_token.cancel();
    delivery.stopped().await;
    live_token.cancel();
    http_token.cancel();
    for t in http_tasks {
        let _ = t.await;
    }
    reload_task.abort();
    drop(task);
    presence.stop().await;
    delivery.close();
    Ok(())
}
