//! A simulated Asterisk that speaks AMI on TCP and replays real captures.
//!
//! Used by the integration tests and by `callhook demo`. A [`Simulator`] is a
//! script of [`SimSession`]s: each accepted connection plays the NEXT session
//! (the first connection session 0, the second session 1, …); connections
//! beyond the script get an idle session that stays open (no events).
//!
//! # Per connection
//!
//! 1. **Banner** `Asterisk Call Manager/<version>`, the version taken from
//!    the capture's own banner line (`9.0.0` when the capture has none).
//! 2. **Login**: both the MD5 challenge (`Challenge` / `AuthType: MD5`, then
//!    `Login` with `Key`) and plain `Login` with `Secret` are accepted. Wrong
//!    credentials get `Response: Error` / `Message: Authentication failed`
//!    and the connection is closed. `Ping` is answered before login, other
//!    actions get `Permission denied`; no login within 30 s closes.
//! 3. **Resync grace** (deterministic start of the replay): after the login
//!    the simulator waits up to [`Simulator::resync_grace`] (1 s by default)
//!    for a `CoreShowChannels` or `Status` action, answering any other action
//!    meanwhile. As soon as one of the two has been answered — or when the
//!    grace expires — the replay starts. A client that resyncs right after
//!    its login therefore always receives its snapshot before the first
//!    replayed event.
//!    With [`Simulator::gated`], the replay then waits for
//!    [`SimulatorHandle::release`] (tests connect their observers first).
//! 4. **Replay** of the capture's frames in order, byte-exact (each frame is
//!    re-sent exactly as captured; if a frame's bytes do not decode back to
//!    the same message alone, it is re-encoded instead). Not replayed: the
//!    capture's banner, every `Response:` packet (they answered the
//!    recorder's own actions: Login, Ping, …) and the list items and
//!    `…Complete` events of the recorder's list actions. Events with an
//!    ActionID that are not list items (`OriginateResponse`, broadcast by
//!    Asterisk) are replayed as they are. With [`Simulator::speed`]
//!    `Some(n)` the gaps between consecutive `Timestamp:` headers are
//!    reproduced, divided by `n` and capped at 5 s per gap; `None` replays
//!    as fast as possible. Client actions are answered during the replay.
//! 5. **Then** ([`AfterCapture`]): close, stay open, close on a given action,
//!    or go silent (a half-open peer that never answers again).
//!
//! # Answers
//!
//! * `Ping` → `Response: Success`, `Ping: Pong`, `Timestamp`.
//! * `Logoff` → `Response: Goodbye`, then the connection is closed.
//! * List actions for which the capture holds an answer to the recorder
//!   (`CoreShowChannels`, `Status`, `QueueStatus`, `QueueSummary`,
//!   `ExtensionStateList`, `SIPpeers`, … — taken from the `…Complete` event
//!   name) are answered with that canned list, the ActionID rewritten to the
//!   client's. `CoreShowChannels` and `Status` without a canned list get an
//!   empty but well-formed list (`EventList: start` … `ListItems: 0`).
//! * `Originate`, when the simulator has recorded outcomes
//!   ([`Simulator::originate`], see [`super::sim_originate`]): the
//!   recorded Response, events and `OriginateResponse` of the best matching
//!   recorded Originate (same number, else same agent, else the first),
//!   with the request's ActionID, ChannelId, agent and number, on the
//!   recorded timeline (interleaved with the replay and other Originates).
//! * The presence state actions without a canned list (`ExtensionStateList`,
//!   `DeviceStateList`, `SIPpeers`, `PJSIPShowEndpoints`) and
//!   `ExtensionState` are answered as the capture's Asterisk version would
//!   (see `sim_state`): an empty list, `Invalid/unknown command` on AMI 1.x
//!   for actions it lacks, the capture's own state of an extension.
//! * Any other action: `Response: Success`, `Message: queued (simulated)`.
//!
//! Every action received is counted by name in [`SimStats`], so tests can
//! assert e.g. that `Originate` arrived exactly once.
//!
//! The simulator never panics on client input: malformed packets are
//! skipped, I/O errors end that connection only.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::sim_capture::{Prepared, DEFAULT_VERSION};
use super::sim_conn::{serve, Settings};
use super::sim_originate::OriginateRecording;
use super::sim_state::ExtensionStates;

/// What a session does once its capture has been replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterCapture {
    /// Drop the TCP connection (no `Goodbye`), after
    /// [`Simulator::pause_before_close`].
    Close,
    /// Keep answering actions until the client leaves.
    StayOpen,
    /// Keep answering until this action (case-insensitive) arrives — at any
    /// point after the login, even during the replay — then drop the
    /// connection without answering it (the action is counted).
    CloseOnAction(String),
    /// Keep the connection open but never answer anything again (a half-open
    /// peer): actions are read and counted only.
    Unresponsive,
}

/// One scripted connection: a raw `.ami` capture and what follows it.
#[derive(Debug, Clone)]
pub struct SimSession {
    /// Every byte of a captured AMI connection (banner, login response, …).
    pub capture: Vec<u8>,
    /// What happens after the replay.
    pub then: AfterCapture,
}

impl SimSession {
    /// A session replaying `capture`, then doing `then`.
    pub fn new(capture: impl Into<Vec<u8>>, then: AfterCapture) -> Self {
        Self {
            capture: capture.into(),
            then,
        }
    }

    /// A session with no events, doing `then` right after the login.
    pub fn empty(then: AfterCapture) -> Self {
        Self::new(Vec::new(), then)
    }
}

/// The simulator's script and settings. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Simulator {
    /// The scripted sessions, one per accepted connection, in order.
    pub sessions: Vec<SimSession>,
    /// `None`: replay as fast as possible; `Some(n)`: capture timing / n.
    pub speed: Option<f64>,
    /// Accepted manager user.
    pub username: String,
    /// Accepted secret (plain or MD5 challenge).
    pub secret: String,
    /// Where to listen (default `127.0.0.1:0`).
    pub bind: SocketAddr,
    /// How long to wait after a login for the client's resync action before
    /// the replay starts anyway.
    pub resync_grace: Duration,
    /// With [`AfterCapture::Close`]: keep answering for this long after the
    /// replay before dropping the connection.
    pub pause_before_close: Duration,
    /// How `Originate` is answered (empty: `queued (simulated)`, no events).
    pub originates: Vec<OriginateRecording>,
    /// Hold every replay until [`SimulatorHandle::release`] (after the
    /// resync grace; actions are answered meanwhile).
    pub gated: bool,
}

impl Simulator {
    /// An empty script accepting `username`/`secret`.
    pub fn new(username: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            sessions: Vec::new(),
            speed: None,
            username: username.into(),
            secret: secret.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            resync_grace: Duration::from_secs(1),
            pause_before_close: Duration::ZERO,
            originates: Vec::new(),
            gated: false,
        }
    }

    /// Holds every replay until [`SimulatorHandle::release`].
    pub fn gated(mut self) -> Self {
        self.gated = true;
        self
    }

    /// Adds recorded Originate outcomes to answer `Originate` with
    /// (see [`OriginateRecording::from_capture`]).
    pub fn originate(mut self, recording: OriginateRecording) -> Self {
        self.originates.push(recording);
        self
    }

    /// Appends a session to the script.
    pub fn session(mut self, capture: impl Into<Vec<u8>>, then: AfterCapture) -> Self {
        self.sessions.push(SimSession::new(capture, then));
        self
    }

    /// Sets the replay speed.
    pub fn speed(mut self, speed: Option<f64>) -> Self {
        self.speed = speed;
        self
    }

    /// Sets the listening address.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Sets the resync grace.
    pub fn resync_grace(mut self, grace: Duration) -> Self {
        self.resync_grace = grace;
        self
    }

    /// Sets the pause before a [`AfterCapture::Close`].
    pub fn pause_before_close(mut self, pause: Duration) -> Self {
        self.pause_before_close = pause;
        self
    }

    /// Binds the listener and starts accepting connections.
    pub async fn start(self) -> io::Result<SimulatorHandle> {
        let listener = TcpListener::bind(self.bind).await?;
        let addr = listener.local_addr()?;
        let sessions: Vec<Arc<Prepared>> = self
            .sessions
            .iter()
            .map(|s| Arc::new(Prepared::new(&s.capture, s.then.clone())))
            .collect();
        for (i, p) in sessions.iter().enumerate() {
            debug!(
                "simulator: session {i}: AMI {}, {} frames to replay ({} re-encoded), {} canned lists",
                p.version,
                p.frames.len(),
                p.reencoded,
                p.canned.len()
            );
        }
        let idle_version = sessions
            .last()
            .map_or_else(|| DEFAULT_VERSION.to_string(), |p| p.version.clone());
        let idle = Arc::new(Prepared {
            version: idle_version,
            frames: Vec::new(),
            canned: HashMap::new(),
            then: AfterCapture::StayOpen,
            reencoded: 0,
            states: ExtensionStates::default(),
        });
        let speed = self.speed.filter(|s| s.is_finite() && *s > 0.0);
        let (gate_tx, gate_rx) = watch::channel(!self.gated);
        let settings = Arc::new(Settings {
            username: self.username,
            secret: self.secret,
            speed,
            resync_grace: self.resync_grace,
            pause_before_close: self.pause_before_close,
            originates: self.originates,
            gate: gate_rx,
        });
        let (stats_tx, stats_rx) = watch::channel(SimStats::default());
        let stats = Arc::new(stats_tx);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            sessions,
            idle,
            settings,
            stats,
            cancel.clone(),
        ));
        Ok(SimulatorHandle {
            gate: gate_tx,
            addr,
            stats: stats_rx,
            cancel,
            task: Some(task),
        })
    }
}

/// Counters of a running simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// TCP connections accepted.
    pub connections: usize,
    /// Successful logins.
    pub logins: usize,
    /// Rejected logins.
    pub failed_logins: usize,
    /// Actions received, by name as sent (Login and Challenge included).
    pub actions: BTreeMap<String, usize>,
    /// Sessions whose capture was replayed to the end.
    pub replays_completed: usize,
    /// Connections that have ended.
    pub closed: usize,
}

impl SimStats {
    /// Actions received with this name (case-insensitive).
    pub fn action_count(&self, name: &str) -> usize {
        self.actions
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .sum()
    }
}

/// A running simulator.
pub struct SimulatorHandle {
    gate: watch::Sender<bool>,
    addr: SocketAddr,
    stats: watch::Receiver<SimStats>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SimulatorHandle {
    /// The listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.stats.borrow().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.stats.borrow().connections
    }

    /// Successful logins so far.
    pub fn logins(&self) -> usize {
        self.stats.borrow().logins
    }

    /// Actions named `name` received so far (case-insensitive).
    pub fn actions(&self, name: &str) -> usize {
        self.stats.borrow().action_count(name)
    }

    /// Waits until the counters satisfy `pred` and returns them.
    pub async fn wait_for(&self, mut pred: impl FnMut(&SimStats) -> bool) -> SimStats {
        let mut rx = self.stats.clone();
        let found = rx.wait_for(|s| pred(s)).await.map(|s| s.clone());
        // Err: the simulator is gone; report the last values.
        found.unwrap_or_else(|_| self.stats())
    }

    /// Lets gated replays start (see [`Simulator::gated`]).
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    /// Stops accepting, closes every connection and waits for the listener task.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    sessions: Vec<Arc<Prepared>>,
    idle: Arc<Prepared>,
    settings: Arc<Settings>,
    stats: Arc<watch::Sender<SimStats>>,
    cancel: CancellationToken,
) {
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let prepared = sessions.get(next).cloned().unwrap_or_else(|| idle.clone());
                    next += 1;
                    stats.send_modify(|s| s.connections += 1);
                    debug!("simulator: connection {next} from {peer}");
                    let settings = settings.clone();
                    let stats = stats.clone();
                    let cancel = cancel.child_token();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            r = serve(stream, prepared, settings, stats.clone()) => {
                                if let Err(e) = r {
                                    debug!("simulator: connection ended: {e}");
                                }
                            }
                        }
                        stats.send_modify(|s| s.closed += 1);
                    });
                }
                Err(e) => {
                    warn!("simulator: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}
