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
use crate::config::{reload, Config, PbxConfig, ReloadOutcome};
use crate::deliver::outbox::{LiveCallWrite, Outbox};
use crate::deliver::{self, DeliveryRequest};
use crate::http::push::{PushState, Teams, ACK_WAIT, QUEUE_WAIT};
use crate::http::server::ServeOptions;
use crate::http::{self, fds, ApiState, Readiness, ReloadReply};
use crate::log_limit::LogLimiter;
use crate::metrics::{metrics, KnownLabels};
use crate::model::ModelEvent;
use crate::normalize::Normalizer;
use crate::notify::{Heartbeat, Notifier};
use crate::presence::task::{send_model, PresenceFeed, PresenceWiring};
use crate::presence::PresenceHub;
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

/// Takes the exclusive lock on `dir/callhook.lock` (created with the dir,
/// mode 0700; the lock file 0600):
/// held by `callhook run` for its lifetime, and by one-shot commands that
/// send from the outbox (`replay --config`, `backfill --deliver`, `outbox recover`). Dropping
/// the file releases it (so does the OS when the process dies).
pub fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File, AppError> {
    let io = |source| AppError::LockFile {
        dir: dir.to_path_buf(),
        source,
    };
    crate::deliver::outbox::secure_state_dir(dir).map_err(|source| AppError::Outbox {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut open = std::fs::OpenOptions::new();
    open.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let file = open.open(dir.join("callhook.lock")).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AppError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// True when a process holds the lock on `dir` (a daemon, or a one-shot
/// command sending from the outbox); false when nobody does or the lock
/// file does not exist yet. Never creates anything.
pub fn state_dir_in_use(dir: &std::path::Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("callhook.lock"))
    else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

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

/// Connection caps of the listeners: raises the descriptor limit, keeps a
/// reserve for AMI, the outbox and webhooks, and fits the configured caps
/// into the rest (logged).
fn http_caps(cfg: &Config, admin: bool) -> fds::Budget {
    let limit = match fds::raise_nofile_limit() {
        Ok(l) => {
            if let Some(from) = l.raised_from {
                info!(
                    from,
                    to = l.soft,
                    "raised the open-file limit to its hard limit"
                );
            }
            l.soft
        }
        Err(e) => {
            warn!(error = %e, "cannot read or raise the open-file limit; assuming 1024");
            1024
        }
    };
    let concurrency: usize = cfg.targets.values().map(|t| t.concurrency).sum();
    let reserved = fds::reserve(fds::open_fds().unwrap_or(32), cfg.pbx.len(), concurrency);
    let b = fds::budget(
        limit,
        reserved,
        cfg.http.max_connections,
        admin.then_some(cfg.admin_max_connections),
    );
    if b.lowered {
        warn!(
            open_file_limit = limit,
            reserved,
            listen = b.listen,
            admin = b.admin,
            "HTTP connection caps lowered to fit the open-file limit (raise LimitNOFILE= to allow more)"
        );
    }
    b
}

/// Builds one client config per configured PBX.
pub fn client_configs(cfg: &Config) -> Vec<ClientConfig> {
    cfg.pbx.iter().map(client_config).collect()
}

/// The client config of one PBX.
pub fn client_config(p: &PbxConfig) -> ClientConfig {
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
}

/// One running AMI client.
struct Client {
    cfg: PbxConfig,
    handle: AmiHandle,
    stop: CancellationToken,
}

/// The AMI clients of the daemon, started, stopped and restarted as
/// reloads add, remove and change PBXs.
#[derive(Clone)]
struct Clients {
    list: Arc<std::sync::Mutex<Vec<Client>>>,
    events: mpsc::Sender<SourceEvent>,
    parent: CancellationToken,
    /// Presence settings for the clients (none: presence disabled).
    presence: Option<PresenceFeed>,
    /// The running clients by PBX id, for the AMI proxy.
    links: Arc<watch::Sender<Arc<std::collections::BTreeMap<String, AmiHandle>>>>,
    /// The PBXs the AMI proxy serves: their clients build noise events too
    /// (the proxy's tools get every event).
    proxied: Arc<Vec<String>>,
}

impl Clients {
    fn new(
        events: mpsc::Sender<SourceEvent>,
        parent: CancellationToken,
        presence: Option<PresenceFeed>,
        proxied: Vec<String>,
    ) -> Self {
        Self {
            list: Arc::new(std::sync::Mutex::new(Vec::new())),
            events,
            parent,
            presence,
            links: Arc::new(watch::channel(Arc::new(std::collections::BTreeMap::new())).0),
            proxied: Arc::new(proxied),
        }
    }

    /// Follows the running clients (the AMI proxy's view of the PBXs).
    fn links(&self) -> crate::proxy::Links {
        self.links.subscribe()
    }

    fn publish_links(&self) {
        let map: std::collections::BTreeMap<String, AmiHandle> = self
            .lock()
            .iter()
            .map(|c| (c.cfg.id.clone(), c.handle.clone()))
            .collect();
        self.links.send_replace(Arc::new(map));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        self.list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start(&self, p: &PbxConfig) {
        let mut c = client_config(p);
        c.keep_noise = self.proxied.contains(&p.id);
        info!(pbx = %c.pbx, host = %c.host, port = c.port, "starting AMI client");
        let stop = self.parent.child_token();
        let presence = self.presence.as_ref().map(|f| f.output(&p.id));
        let handle = client::spawn_with_presence(c, self.events.clone(), presence, stop.clone());
        self.lock().push(Client {
            cfg: p.clone(),
            handle,
            stop,
        });
        self.publish_links();
    }

    fn handles(&self) -> Vec<AmiHandle> {
        self.lock().iter().map(|c| c.handle.clone()).collect()
    }

    /// Stops the client of `id` and waits (a little) for it to log off.
    async fn stop(&self, id: &str) {
        let gone = {
            let mut list = self.lock();
            list.iter()
                .position(|c| c.cfg.id == id)
                .map(|i| list.remove(i))
        };
        self.publish_links();
        if let Some(c) = gone {
            c.stop.cancel();
            if tokio::time::timeout(Duration::from_secs(3), c.handle.stopped())
                .await
                .is_err()
            {
                warn!(pbx = %id, "AMI client did not stop in time");
            }
        }
    }

    /// Makes the running clients those of `pbx`: new ones started,
    /// removed ones stopped, changed ones restarted.
    async fn apply(&self, pbx: &[PbxConfig]) {
        let running: Vec<PbxConfig> = self.lock().iter().map(|c| c.cfg.clone()).collect();
        for old in &running {
            match pbx.iter().find(|p| p.id == old.id) {
                None => {
                    info!(pbx = %old.id, "PBX removed by a reload: disconnecting");
                    self.stop(&old.id).await;
                    metrics()
                        .ami_connection_state
                        .remove_label_values(&[&old.id])
                        .ok();
                }
                Some(p) if p != old => {
                    info!(pbx = %old.id, "PBX changed by a reload: reconnecting");
                    self.stop(&old.id).await;
                    self.start(p);
                }
                Some(_) => {}
            }
        }
        for p in pbx {
            if !running.iter().any(|o| o.id == p.id) {
                info!(pbx = %p.id, "PBX added by a reload");
                self.start(p);
            }
        }
    }
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
    /// The outbox.
    pub outbox: Arc<Outbox>,
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
    // Rows stored in clear by an older version: masked before anything else.
    match outbox
        .conceal_stored(Arc::new(cfg.rules.secrets().clone()))
        .await
    {
        Ok(0) => {}
        Ok(n) => info!(rows = n, "secrets stored in clear in the outbox masked"),
        Err(e) => warn!(error = %e, "cannot mask secrets stored in the outbox"),
    }
    init_series(&cfg);
    metrics().set_build_info(env!("CARGO_PKG_VERSION"), BUILD_COMMIT);
    let (targets_tx, targets_rx) = watch::channel(cfg.targets.clone());
    let (rules_tx, mut rules_rx) = watch::channel(cfg.rules.clone());
    let deliver_token = CancellationToken::new();
    let dispatcher = deliver::spawn(outbox.clone(), targets_rx, deliver_token.clone());
    // Presence: its own task, fed by the clients and the committed batches.
    let presence = PresenceWiring::start(
        &cfg.presence,
        &cfg.normalizer,
        cfg.pbx.iter().map(|p| p.id.as_str()),
    );
    started(Running {
        reload: reload_tx.clone(),
        outbox: outbox.clone(),
        presence: presence.hub.clone(),
    });

    // AMI clients.
    let sources_token = token.child_token();
    let capacity = reload::queue_capacity(&cfg, PUSH_QUEUE).max(1);
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(capacity);
    let clients = Clients::new(
        tx.clone(),
        sources_token.clone(),
        presence.feed(&cfg.presence, &cfg.normalizer.classifier),
        cfg.ami_proxy
            .as_ref()
            .map(|p| p.pbx_ids())
            .unwrap_or_default(),
    );
    for p in &cfg.pbx {
        clients.start(p);
    }
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
        }))
    });
    // A daemon that only routes calls (FastAGI) has no source feeding the
    // queue: keep it open until shutdown.
    let _agi_keeps_queue_open = cfg.agi.as_ref().map(|_| tx.clone());
    drop(tx);

    // HTTP.
    let outbox_ok = Arc::new(AtomicBool::new(true));
    let http_token = CancellationToken::new();
    let bind = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Listen { addr, source })
    };
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
    let caps = http_caps(&cfg, admin_listener.is_some());
    let ready_clients = clients.clone();
    let ok = outbox_ok.clone();
    let ready_dispatcher = dispatcher.clone();
    let readiness = move || {
        let pbx: std::collections::BTreeMap<String, bool> = ready_clients
            .handles()
            .iter()
            .map(|h| (h.pbx().to_string(), h.state() == ConnectionState::LoggedIn))
            .collect();
        let outbox_writable = ok.load(Ordering::Relaxed);
        let polling = ready_dispatcher.polling();
        Readiness {
            ready: outbox_writable && polling.is_ok() && pbx.values().all(|v| *v),
            pbx,
            outbox_writable,
            outbox_polling: polling.is_ok(),
            outbox_error: polling.err(),
        }
    };
    let state = ApiState {
        readiness: Arc::new(readiness),
        reload: Some(reload_tx.clone()),
        admin_token: cfg.admin_token.clone(),
        outbox: Some(outbox.clone()),
        push: push_state.clone(),
        live: live.clone(),
        meetip: meetip.clone(),
    };
    let mut http_tasks = Vec::new();
    let mut serve = |l: tokio::net::TcpListener,
                     router: axum::Router,
                     name: &'static str,
                     cap: usize,
                     routes: &str| {
        let limits = cfg.http.with_max_connections(cap);
        if let Ok(a) = l.local_addr() {
            info!(listener = name, addr = %a, max_connections = limits.max_connections, per_ip = limits.max_connections_per_ip, "HTTP listening ({routes})");
        }
        let opts = ServeOptions {
            name,
            limits,
            shutdown_grace: Duration::from_secs(5),
        };
        let t = http_token.clone();
        http_tasks.push(tokio::spawn(async move {
            if let Err(e) = http::server::serve(l, router, opts, t).await {
                error!(listener = name, error = %e, "HTTP listener failed");
            }
        }));
    };
    match (listener, admin_listener) {
        (Some(l), Some(a)) => {
            serve(
                l,
                http::public_router(state.clone()),
                "listen",
                caps.listen,
                "push endpoint, /healthz",
            );
            serve(
                a,
                http::admin_router(state),
                "admin",
                caps.admin,
                "/metrics, /healthz, /readyz, /-/reload, /api",
            );
        }
        (Some(l), None) => {
            if l.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
                warn!("`listen` is not a loopback address and there is no `admin.listen`: /metrics and /readyz are reachable by anyone who reaches it (reload and /api still need admin.token); set admin.listen: 127.0.0.1:9189");
            }
            serve(
                l,
                http::router(state),
                "listen",
                caps.listen,
                "/metrics, /healthz, /readyz, /-/reload, /api, push endpoint",
            );
        }
        (None, Some(a)) => serve(
            a,
            http::admin_router(state),
            "admin",
            caps.admin,
            "/metrics, /healthz, /readyz, /-/reload, /api",
        ),
        (None, None) => drop(state),
    }
    if let Some(m) = &meetip {
        match m.config().listen {
            Some(addr) => {
                let l = bind(addr).await?;
                serve(
                    l,
                    m.own_router(),
                    "meetip",
                    caps.listen,
                    "Meetip PRO WebSocket",
                );
            }
            None => info!(path = %m.config().path, "Meetip PRO WebSocket on the main listener"),
        }
    }
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
    let (normalizer_tx, mut normalizer_rx) = watch::channel(cfg.normalizer.clone());
    let started_cfg = cfg.clone();
    let reload_clients = clients.clone();
    let reload_task = tokio::spawn(async move {
        let mut running = started_cfg.clone();
        while let Some(reply) = reload_rx.recv().await {
            let result = match &config_path {
                None => Err(vec!["no configuration file to reload".to_string()]),
                Some(p) => match Config::load(p) {
                    Ok(new) => {
                        let outcome = ReloadOutcome {
                            applied: reload::applied(&running, &new),
                            restart_required: reload::restart_required(
                                &started_cfg,
                                &new,
                                capacity,
                                PUSH_QUEUE,
                            ),
                        };
                        targets_tx.send_replace(new.targets.clone());
                        rules_tx.send_replace(new.rules.clone());
                        normalizer_tx.send_replace(new.normalizer.clone());
                        reload_clients.apply(&new.pbx).await;
                        if started_cfg.push.is_some() {
                            if let Some(p) = &new.push {
                                push_teams_tx.send_replace(Arc::new(Teams::new(&p.teams)));
                            }
                        }
                        if let (Some(tx), Some(a)) = (&agi_router_tx, &new.agi) {
                            metrics().agi.init_series(&a.router.names());
                            tx.send_replace(a.router.clone());
                        }
                        init_series(&new);
                        metrics()
                            .config_last_reload_success_timestamp_seconds
                            .set(now_epoch());
                        for k in reload::RESTART_KEYS {
                            let pending = outcome.restart_required.iter().any(|x| x == k);
                            metrics()
                                .config_restart_required
                                .with_label_values(&[k])
                                .set(i64::from(pending));
                        }
                        for k in &outcome.restart_required {
                            warn!(key = %k, "reloaded setting needs a restart to take effect; the running value stays");
                        }
                        info!(
                            rules = new.rules.len(),
                            targets = new.targets.len(),
                            pbx = new.pbx.len(),
                            applied = %outcome.applied.join(", "),
                            "configuration reloaded"
                        );
                        running = new;
                        Ok(outcome)
                    }
                    Err(e) => {
                        let errors = e.rendered();
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
    metrics()
        .config_last_reload_success_timestamp_seconds
        .set(now_epoch());
    let heartbeat = Heartbeat::new();
    let notifier = opts
        .notifier
        .take()
        .unwrap_or_else(|| Arc::new(Notifier::disabled()));
    let watchdog_token = CancellationToken::new();
    let watchdog = tokio::spawn(crate::notify::watchdog(
        notifier.clone(),
        heartbeat.clone(),
        watchdog_token.clone(),
    ));
    notifier.ready(&format!(
        "running: {} PBX, {} targets, {} rules",
        cfg.pbx.len(),
        cfg.targets.len(),
        cfg.rules.len()
    ));

    // The normalizer task (this one). Committed batches also go to
    // presence (try_send: presence never slows this loop).
    let mut observer: Option<Observer> = match (opts.observer.take(), presence.model().cloned()) {
        (o, None) => o,
        (mut o, Some(tx)) => Some(Box::new(move |evs: &[ModelEvent]| {
            send_model(&tx, evs);
            if let Some(o) = o.as_mut() {
                o(evs);
            }
        })),
    };
    let mut normalizer = Normalizer::new(cfg.normalizer);
    restore_live_calls(&mut normalizer, &outbox, &cfg.pbx).await;
    let mut rules: Arc<RuleSet> = rules_rx.borrow_and_update().clone();
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acks: Vec<(PushAck, PushReceipt)> = Vec::new();
    let mut open = true;
    while open {
        heartbeat.beat();
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
            Ok(()) = normalizer_rx.changed() => {
                normalizer.reconfigure(normalizer_rx.borrow_and_update().clone());
            }
        }
        finish_batch(
            &rules,
            &outbox,
            &outbox_ok,
            &mut normalizer,
            &mut out,
            &mut acks,
            &mut observer,
        )
        .await;
    }

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
        &mut observer,
    )
    .await;
    let live = normalizer.live_calls();
    if live > 0 {
        info!(live, "stopping with calls in progress (the reconnect snapshot settles them at the next start)");
    }
    deliver_token.cancel();
    dispatcher.stopped().await;
    live_token.cancel();
    http_token.cancel();
    for t in http_tasks {
        let _ = t.await;
    }
    reload_task.abort();
    drop(observer);
    presence.stop().await;
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
    let changes = normalizer.take_dirty();
    let calls: Vec<LiveCallWrite> = changes
        .iter()
        .map(|c| LiveCallWrite {
            pbx: c.pbx.to_string(),
            session: c.session.clone(),
            snapshot: c.snapshot.clone(),
        })
        .collect();
    let result = if out.is_empty() && calls.is_empty() {
        Ok(())
    } else {
        deliver_batch(rules, outbox, ok, out, calls, |p| {
            normalizer.clock_offset(p)
        })
        .await
    };
    match &result {
        Ok(()) => normalizer.commit_batch(),
        Err(e) if e.starts_with(OUTBOX_FULL) => {
            // The calls were stored with what the outbox took.
            normalizer.rollback_batch();
            out.retain(|e| !normalizer.is_push_team(event_pbx(e)));
        }
        Err(_) => {
            // Not stored: written with the next batch.
            normalizer.requeue_dirty(&changes);
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

/// How a refusal by the cap or the backlog starts (the batch's calls were
/// stored all the same).
const OUTBOX_FULL: &str = "outbox full";

/// Puts the live calls stored by the previous run back into the model,
/// before the first login's reconciliation closes those that ended while
/// callhook was down (exactly once: a call's removal is committed with its
/// record). Calls of PBXs no longer configured stay stored, untouched.
async fn restore_live_calls(
    normalizer: &mut Normalizer,
    outbox: &Outbox,
    pbxs: &[crate::config::PbxConfig],
) {
    normalizer.track_changes();
    let stored = match outbox.live_calls().await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read the stored live calls: calls in progress before the restart get no record");
            return;
        }
    };
    for p in pbxs {
        let snaps: Vec<Vec<u8>> = stored
            .iter()
            .filter(|c| c.pbx == p.id)
            .map(|c| c.snapshot.clone())
            .collect();
        if snaps.is_empty() {
            continue;
        }
        let id: crate::source::PbxId = p.id.as_str().into();
        let r = normalizer.restore(&id, &snaps);
        info!(pbx = %p.id, calls = r.calls, skipped = r.skipped, "live calls restored; the login's snapshot settles those that ended meanwhile");
    }
}

/// These repeat for every event while the outbox cannot take more (a full
/// disk, the cap): one line per half minute, with the count left out.
static OUTBOX_FAILED: LogLimiter = LogLimiter::new(Duration::from_secs(30));
static OUTBOX_REFUSED: LogLimiter = LogLimiter::new(Duration::from_secs(30));

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
    calls: Vec<LiveCallWrite>,
    clock_offset: impl Fn(&str) -> f64,
) -> Result<(), String> {
    let mut reqs: Vec<DeliveryRequest> = events.iter().flat_map(|e| rules.evaluate(e)).collect();
    for r in &mut reqs {
        let local = r.created_at - clock_offset(&r.pbx);
        r.rebase(local);
    }
    if reqs.is_empty() && calls.is_empty() {
        return Ok(());
    }
    match outbox.submit_with_calls(reqs, calls).await {
        Ok(o) => {
            if !ok.swap(true, Ordering::Relaxed) {
                info!("the outbox accepts writes again");
            }
            if o.rejected_full > 0 {
                if let Some(suppressed) = OUTBOX_REFUSED.check() {
                    warn!(
                        rejected = o.rejected_full,
                        suppressed, "outbox full: deliveries refused"
                    );
                }
                return Err(format!(
                    "{OUTBOX_FULL}: {} deliveries refused",
                    o.rejected_full
                ));
            }
            Ok(())
        }
        Err(e) => {
            ok.store(false, Ordering::Relaxed);
            if let Some(suppressed) = OUTBOX_FAILED.check() {
                error!(error = %e, suppressed, "cannot write deliveries to the outbox");
            }
            Err(format!("cannot write deliveries to the outbox: {e}"))
        }
    }
}
