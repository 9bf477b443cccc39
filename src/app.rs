//! The one wiring function: sources → normalizer → rules → outbox →
//! dispatcher, plus the HTTP listener, reloads and shutdown.
//!
//! ```text
//! AMI clients ─try_send─────────┐
//!                               ├─▶ bounded queue ─▶ normalizer task ─▶ rules ─▶ outbox.submit (await commit) ─▶ dispatcher ─▶ HTTP
//! push endpoint ─send (≤ 2 s)───┘                        │                                   │
//!        ▲                                               │                                   │
//!        └──────────── ack (after the commit) ───────────┼───────────────────────────────────┘
//!                                                        └─▶ optional printout of the call model (stdout)
//! ```
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
//! again; on success the rules and targets are swapped atomically (in-flight
//! deliveries continue), on failure every error is logged/returned and the
//! old configuration stays. Push team tokens and time zones are reloaded
//! too. PBX, classification, `listen` and push path/parameter changes need
//! a restart (logged).
//!
//! **Shutdown** (SIGINT/SIGTERM): clients log off and stop reading; the
//! queue is closed (new pushes get 503); the normalizer drains what was
//! queued, writes the records of pushed calls that are over without
//! waiting for them to settle, and commits its deliveries; the
//! dispatcher lets requests in flight finish (up to a deadline) and leaves
//! the rest pending in the outbox; the HTTP listener closes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::ami::client::{self, AmiHandle, AuthMode, ClientConfig, ConnectionState};
use crate::config::Config;
use crate::deliver::outbox::Outbox;
use crate::deliver::{self, DeliveryRequest};
use crate::http::push::{PushState, Teams, ACK_WAIT, QUEUE_WAIT};
use crate::http::{self, ApiState, Readiness, ReloadReply};
use crate::metrics::metrics;
use crate::model::ModelEvent;
use crate::normalize::Normalizer;
use crate::rules::RuleSet;
use crate::source::{now_epoch, PushAck, PushReceipt, SourceEvent};

/// The daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Installing a signal handler failed.
    #[error("cannot install the signal handler: {0}")]
    Signal(#[source] std::io::Error),
    /// The outbox could not be opened.
    #[error("cannot open the outbox in {dir}: {source}")]
    Outbox {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: deliver::outbox::OutboxError,
    },
    /// Another daemon already runs on this state directory.
    #[error("another callhook daemon is using {dir} (lock file {dir}/callhook.lock); two daemons on one outbox would send every webhook twice")]
    Locked {
        /// The state directory.
        dir: PathBuf,
    },
    /// The lock file could not be created.
    #[error("cannot create the lock file in {dir}: {source}")]
    LockFile {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How often time-driven decisions run (maximum call age, undecided ≤ 11
/// channels, settled pushed calls).
const TICK: Duration = Duration::from_millis(250);

/// Room in the normalizer's queue for pushed events (added to the PBXs').
const PUSH_QUEUE: usize = 1024;

/// Takes the exclusive lock on `dir/callhook.lock` (created with the dir).
fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File, AppError> {
    let io = |source| AppError::LockFile {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("callhook.lock"))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AppError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Builds one client config per configured PBX.
pub fn client_configs(cfg: &Config) -> Vec<ClientConfig> {
    cfg.pbx
        .iter()
        .map(|p| {
            let mut c = ClientConfig::new(
                p.id.as_str(),
                p.host.clone(),
                p.port,
                p.username.clone(),
                p.secret.expose(),
            );
            c.auth = if p.md5 {
                AuthMode::Md5
            } else {
                AuthMode::Plain
            };
            c.events = p.events.clone();
            c.ping_interval = p.ping_interval;
            c.ping_timeout = p.ping_timeout;
            c.connect_timeout = p.connect_timeout;
            c.max_packet = p.max_packet;
            c.queue_capacity = p.queue_capacity;
            c.max_stall = p.max_stall;
            c
        })
        .collect()
}

/// Receives every batch of model events, in order.
pub type Observer = Box<dyn FnMut(&[ModelEvent]) + Send>;

/// What the daemon was started with, besides the config.
pub struct RunOptions {
    /// The config file, for reloads (none: reload unavailable).
    pub config_path: Option<PathBuf>,
    /// Called with every batch of model events, in order (printing, demo timeline).
    pub observer: Option<Observer>,
    /// Bound HTTP listener to use instead of binding `cfg.listen` (tests, demo).
    pub listener: Option<tokio::net::TcpListener>,
}

/// Handles the daemon hands out while it runs.
#[derive(Clone)]
pub struct Running {
    /// Ask for a reload.
    pub reload: mpsc::Sender<ReloadReply>,
    /// The outbox.
    pub outbox: Arc<Outbox>,
}

/// Runs the daemon until SIGINT/SIGTERM; SIGHUP reloads.
pub async fn run(cfg: Config, opts: RunOptions) -> Result<(), AppError> {
    let token = CancellationToken::new();
    let (reload_tx, reload_rx) = mpsc::channel::<ReloadReply>(8);
    let signals = spawn_signals(token.clone(), reload_tx.clone())?;
    let r = run_until(cfg, opts, token, reload_tx, reload_rx, |_| {}).await;
    signals.abort();
    r
}

#[cfg(unix)]
fn spawn_signals(
    token: CancellationToken,
    reload: mpsc::Sender<ReloadReply>,
) -> Result<tokio::task::JoinHandle<()>, AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signal)?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    let (tx, _rx) = tokio::sync::oneshot::channel();
                    if reload.send(tx).await.is_err() {
                        break;
                    }
                }
            }
        }
        info!("shutting down");
        token.cancel();
    }))
}

#[cfg(not(unix))]
fn spawn_signals(
    token: CancellationToken,
    _reload: mpsc::Sender<ReloadReply>,
) -> Result<tokio::task::JoinHandle<()>, AppError> {
    Ok(tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    }))
}

/// Runs everything until `token` is cancelled. `started` receives the
/// handles once the outbox is open (tests and the demo use them).
pub async fn run_until(
    cfg: Config,
    mut opts: RunOptions,
    token: CancellationToken,
    reload_tx: mpsc::Sender<ReloadReply>,
    mut reload_rx: mpsc::Receiver<ReloadReply>,
    started: impl FnOnce(Running),
) -> Result<(), AppError> {
    // One daemon per outbox: the lock lives as long as this function and
    // is released by the OS even on kill -9. (Short-lived tools such as
    // `backfill` and `deliveries` share the outbox on purpose and take no lock.)
    let _lock = lock_state_dir(&cfg.state_dir)?;
    let outbox =
        Outbox::open(&cfg.state_dir, cfg.outbox.clone()).map_err(|source| AppError::Outbox {
            dir: cfg.state_dir.clone(),
            source,
        })?;
    let outbox = Arc::new(outbox);
    info!(dir = %cfg.state_dir.display(), targets = cfg.targets.len(), rules = cfg.rules.len(), "outbox open");
    let (targets_tx, targets_rx) = watch::channel(cfg.targets.clone());
    let (rules_tx, mut rules_rx) = watch::channel(cfg.rules.clone());
    let deliver_token = CancellationToken::new();
    let dispatcher = deliver::spawn(outbox.clone(), targets_rx, deliver_token.clone());
    started(Running {
        reload: reload_tx.clone(),
        outbox: outbox.clone(),
    });

    // AMI clients.
    let sources_token = token.child_token();
    let clients = client_configs(&cfg);
    let capacity: usize = clients.iter().map(|c| c.queue_capacity).sum::<usize>()
        + if cfg.push.is_some() { PUSH_QUEUE } else { 0 };
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(capacity.max(1));
    let mut handles: Vec<AmiHandle> = Vec::new();
    for c in clients {
        info!(pbx = %c.pbx, host = %c.host, port = c.port, "starting AMI client");
        handles.push(client::spawn(c, tx.clone(), sources_token.clone()));
    }
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
        }))
    });
    drop(tx);

    // HTTP.
    let outbox_ok = Arc::new(AtomicBool::new(true));
    let http_token = CancellationToken::new();
    let listener = match (opts.listener.take(), cfg.listen) {
        (Some(l), _) => Some(l),
        (None, Some(addr)) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Listen { addr, source })?,
        ),
        (None, None) => None,
    };
    let http_task = listener.map(|l| {
        let ready_handles = handles.clone();
        let ok = outbox_ok.clone();
        let readiness = move || {
            let pbx: std::collections::BTreeMap<String, bool> = ready_handles
                .iter()
                .map(|h| (h.pbx().to_string(), h.state() == ConnectionState::LoggedIn))
                .collect();
            let outbox_writable = ok.load(Ordering::Relaxed);
            Readiness {
                ready: outbox_writable && pbx.values().all(|v| *v),
                pbx,
                outbox_writable,
            }
        };
        let state = ApiState {
            readiness: Arc::new(readiness),
            reload: Some(reload_tx.clone()),
            admin_token: cfg.admin_token.clone(),
            outbox: Some(outbox.clone()),
            push: push_state.clone(),
        };
        if let Ok(a) = l.local_addr() {
            info!(addr = %a, "HTTP listening (/metrics, /healthz, /readyz, /-/reload, /api)");
            if let Some(p) = &push_state {
                info!(addr = %a, path = %p.path, "push endpoint ready");
            }
        }
        let t = http_token.clone();
        tokio::spawn(async move {
            if let Err(e) = http::serve(l, http::router(state), t).await {
                error!(error = %e, "HTTP listener failed");
            }
        })
    });
    drop(reload_tx);
    drop(push_state);

    // Reloads.
    let config_path = opts.config_path.clone();
    let push_mount = cfg.push.as_ref().map(|p| {
        (
            p.path.clone(),
            p.token_param.clone(),
            p.token_header.clone(),
        )
    });
    let reload_task = tokio::spawn(async move {
        while let Some(reply) = reload_rx.recv().await {
            let result = match &config_path {
                None => Err(vec!["no configuration file to reload".to_string()]),
                Some(p) => match Config::load(p) {
                    Ok(new) => {
                        targets_tx.send_replace(new.targets.clone());
                        rules_tx.send_replace(new.rules.clone());
                        let mount = new.push.as_ref().map(|p| {
                            (
                                p.path.clone(),
                                p.token_param.clone(),
                                p.token_header.clone(),
                            )
                        });
                        if mount != push_mount {
                            warn!("push endpoint added, removed, or its path/token parameter/header changed: restart to apply");
                        }
                        if push_mount.is_some() {
                            if let Some(p) = &new.push {
                                push_teams_tx.send_replace(Arc::new(Teams::new(&p.teams)));
                            }
                        }
                        info!(rules = new.rules.len(), targets = new.targets.len(), "configuration reloaded (PBX, classify and listen changes need a restart)");
                        Ok(())
                    }
                    Err(e) => {
                        let errors: Vec<String> =
                            e.errors.iter().map(|x| x.render(&e.file)).collect();
                        for x in &errors {
                            error!(error = %x, "reload rejected, the previous configuration stays");
                        }
                        Err(errors)
                    }
                },
            };
            let ok = result.is_ok();
            metrics().config_last_reload_successful.set(ok as i64);
            metrics()
                .config_reloads
                .with_label_values(&[if ok { "success" } else { "failure" }])
                .inc();
            let _ = reply.send(result);
        }
    });
    metrics().config_last_reload_successful.set(1);

    // The normalizer task (this one).
    let mut normalizer = Normalizer::new(cfg.normalizer);
    let mut rules: Arc<RuleSet> = rules_rx.borrow_and_update().clone();
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acks: Vec<(PushAck, PushReceipt)> = Vec::new();
    let mut open = true;
    while open {
        normalizer.begin_batch();
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    take(&mut normalizer, ev, &mut out, &mut acks);
                    while out.len() < 1024 {
                        match rx.try_recv() {
                            Ok(ev) => take(&mut normalizer, ev, &mut out, &mut acks),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            _ = tick.tick() => normalizer.tick(now_epoch(), &mut out),
            _ = token.cancelled() => open = false,
            Ok(()) = rules_rx.changed() => rules = rules_rx.borrow_and_update().clone(),
        }
        finish_batch(
            &rules,
            &outbox,
            &outbox_ok,
            &mut normalizer,
            &mut out,
            &mut acks,
            &mut opts.observer,
        )
        .await;
    }

    // Shutdown: sources first, then what they queued, then delivery.
    sources_token.cancel();
    for h in &handles {
        if tokio::time::timeout(Duration::from_secs(3), h.stopped())
            .await
            .is_err()
        {
            warn!(pbx = %h.pbx(), "AMI client did not stop in time");
        }
    }
    rx.close();
    normalizer.begin_batch();
    while let Ok(ev) = rx.try_recv() {
        take(&mut normalizer, ev, &mut out, &mut acks);
    }
    normalizer.settle_pushed(now_epoch(), &mut out);
    finish_batch(
        &rules,
        &outbox,
        &outbox_ok,
        &mut normalizer,
        &mut out,
        &mut acks,
        &mut opts.observer,
    )
    .await;
    let live = normalizer.live_calls();
    if live > 0 {
        info!(live, "stopping with calls in progress (the reconnect snapshot settles them at the next start)");
    }
    deliver_token.cancel();
    dispatcher.stopped().await;
    http_token.cancel();
    if let Some(t) = http_task {
        let _ = t.await;
    }
    reload_task.abort();
    outbox.close();
    Ok(())
}

/// Feeds one source event to the normalizer, keeping a push's
/// acknowledgement for when its batch is committed.
fn take(
    n: &mut Normalizer,
    ev: SourceEvent,
    out: &mut Vec<ModelEvent>,
    acks: &mut Vec<(PushAck, PushReceipt)>,
) {
    match ev {
        SourceEvent::Push {
            team,
            received_at,
            event,
            ack,
        } => {
            let r = n.handle_push(&team, received_at, &event, out);
            if let Some(a) = ack {
                acks.push((a, r));
            }
        }
        ev => n.handle(&ev, out),
    }
}

fn event_pbx(e: &ModelEvent) -> &str {
    match e {
        ModelEvent::Leg(l) => &l.pbx,
        ModelEvent::CallState(c) => &c.pbx,
        ModelEvent::Call(c) => &c.pbx,
    }
}

/// Ends a batch: commits its deliveries, then keeps (or, if they could not
/// be committed, rolls back) the batch's changes to pushed calls, answers
/// the pushes and shows the events to the observer.
async fn finish_batch(
    rules: &RuleSet,
    outbox: &Outbox,
    ok: &AtomicBool,
    normalizer: &mut Normalizer,
    out: &mut Vec<ModelEvent>,
    acks: &mut Vec<(PushAck, PushReceipt)>,
    observer: &mut Option<Observer>,
) {
    let result = if out.is_empty() {
        Ok(())
    } else {
        deliver_batch(rules, outbox, ok, out, |p| normalizer.clock_offset(p)).await
    };
    match &result {
        Ok(()) => normalizer.commit_batch(),
        Err(_) => {
            normalizer.rollback_batch();
            // Pushed calls will say it again when the pushes are retried.
            out.retain(|e| !normalizer.is_push_team(event_pbx(e)));
        }
    }
    if !out.is_empty() {
        if let Some(o) = observer.as_mut() {
            o(out);
        }
    }
    for (ack, receipt) in acks.drain(..) {
        let _ = ack.send(result.clone().map(|()| receipt));
    }
    out.clear();
}

/// Evaluates the rules for a batch of model events and commits the
/// deliveries; returns once they are durable, or why they are not (logged:
/// the outbox failed, or was full and refused some).
/// `clock_offset(pbx)` converts event time to local time (freshness limits
/// and latency metrics run on the local clock).
pub async fn deliver_batch(
    rules: &RuleSet,
    outbox: &Outbox,
    ok: &AtomicBool,
    events: &[ModelEvent],
    clock_offset: impl Fn(&str) -> f64,
) -> Result<(), String> {
    let mut reqs: Vec<DeliveryRequest> = events.iter().flat_map(|e| rules.evaluate(e)).collect();
    for r in &mut reqs {
        let local = r.created_at - clock_offset(&r.pbx);
        r.rebase(local);
    }
    if reqs.is_empty() {
        return Ok(());
    }
    match outbox.submit(reqs).await {
        Ok(o) => {
            ok.store(true, Ordering::Relaxed);
            if o.rejected_full > 0 {
                warn!(
                    rejected = o.rejected_full,
                    "outbox full: deliveries refused"
                );
                return Err(format!(
                    "outbox full: {} deliveries refused",
                    o.rejected_full
                ));
            }
            Ok(())
        }
        Err(e) => {
            ok.store(false, Ordering::Relaxed);
            error!(error = %e, "cannot write deliveries to the outbox");
            Err(format!("cannot write deliveries to the outbox: {e}"))
        }
    }
}
