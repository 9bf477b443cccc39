//! The AMI client task: one long-lived connection to one PBX.
//!
//! [`spawn`] starts a tokio task that owns the TCP connection to one Asterisk
//! manager interface and runs until its [`CancellationToken`] is cancelled.
//! It turns the wire into [`SourceEvent`]s for the normalizer and serves
//! [`Action`]s for the rest of the service through a cloneable [`AmiHandle`].
//!
//! # Connection life cycle
//!
//! 1. **Connect** (bounded by [`ClientConfig::connect_timeout`]), read the
//!    banner (`Asterisk Call Manager/<AMI version>`).
//! 2. **Log in**: MD5 challenge by default (`Challenge` → `Login` with
//!    `Key: md5(challenge + secret)`), or plain `Secret` ([`AuthMode::Plain`]).
//!    A `Response: Error` to the login is logged as
//!    `AMI login failed at HOST:PORT as user Y: <message>` and retried with the normal
//!    backoff: a wrong password never hammers the PBX. The secret is never
//!    logged ([`ClientConfig`]'s `Debug` redacts it).
//! 3. **Resync** ([`ClientConfig::resync`]): right after every login the
//!    client lists the live channels, `CoreShowChannels` when the banner says
//!    AMI ≥ 2 (Asterisk 12+) and `Status` for AMI 1.x (Asterisk ≤ 11); if that
//!    action is rejected the other one is tried. The list items are delivered
//!    as ONE [`SourceEvent::AmiSnapshot`]. Unsolicited events that arrive
//!    while the list is being collected are held back (bounded by
//!    [`ClientConfig::queue_capacity`]) and delivered right *after* the
//!    snapshot, so the normalizer always sees "state at login, then changes".
//! 4. **Keepalive**: a `Ping` every [`ClientConfig::ping_interval`]; no answer
//!    within [`ClientConfig::ping_timeout`] while nothing at all arrived for
//!    that long either means the connection is dead (half-open TCP). (Under
//!    a heavy stream the answer queues behind the events; bytes arriving
//!    prove the connection alive.) A read error or EOF is dead too.
//! 5. **Loss**: [`SourceEvent::AmiDisconnected`] is emitted whenever an
//!    established (logged-in) connection is lost, then the client reconnects
//!    forever. **Reconnect policy:** after a session that delivered events
//!    (the link works, it just dropped) the next attempt starts at once —
//!    at most one connection per [`ClientConfig::backoff_initial`] (500 ms),
//!    so a PBX that drops every connection right after a few events is not
//!    hammered — and the backoff starts over. Otherwise (connection refused,
//!    login failed, a session that delivered nothing) attempts back off
//!    exponentially with *equal jitter* (a delay in `[c/2, c]`,
//!    `c = backoff_initial · 2^attempt` capped at
//!    [`ClientConfig::backoff_max`]); the counter also resets once a
//!    connection has stayed logged in for 30 s. A link that flaps every few
//!    seconds is therefore blind only for the reconnect itself (login and
//!    snapshot), never for a growing backoff.
//!
//! Each state change is exactly one log line and one update of
//! `ami_connection_state` (0 down, 1 connecting, 2 logged in): `connecting
//! to AMI at H:P` (info), `logged in to AMI at H:P as U (banner)` (info),
//! then one warning for going down that gives the reason and the delay
//! before the next attempt (`AMI connection lost: <reason>; reconnecting in
//! 1.2s`, `cannot connect to AMI at H:P: <error>; …`, `AMI login failed …;
//! …`, with a `retry_in_secs` field), and `AMI client stopped` at shutdown;
//! every connection attempt after the first counts in `ami_reconnects`.
//!
//! # Actions
//!
//! [`AmiHandle::send`] gives every action a unique ActionID
//! `"{pbx}-{connection_seq}-{n}"` and resolves with an [`ActionResponse`]:
//! the response plus, for lists, the items. A list starts with a
//! `Response: Success` that has `EventList: start`, or — when `EventList` is
//! absent, as in Asterisk 11's `Status`/`QueueStatus` — whose `Message`
//! contains "will follow"; it ends with the event carrying the same ActionID
//! whose name ends in `Complete` (or that has `EventList: Complete`), which is
//! not part of the items. (Asterisk 14+'s `Message: Command output follows`
//! is a single response, not a list.) Responses and list items are routed by
//! ActionID to the waiting caller and never reach the events channel;
//! answers for unknown ActionIDs (another client, a late answer after a
//! timeout) are dropped with a debug log. `Event: OriginateResponse` is the
//! exception: Asterisk broadcasts it, so it is forwarded as an event *and*
//! resolves a pending action with that ActionID, if one is still waiting.
//! Every `Originate` written is also announced to the normalizer as a
//! [`SourceEvent::AmiOriginate`] (its ActionID, `Channel`, `Exten`,
//! `ChannelId`), in stream order before anything it causes: the call model
//! knows a click-to-call's number from the agent's first ring and ties a
//! failed one to its record even when the PBX says little.
//!
//! [`AmiHandle::originate`] is the click-to-call variant: an `Async: true`
//! Originate whose pending entry outlives its `Response: Success` until the
//! `OriginateResponse` event with the same ActionID arrives (correlated by
//! ActionID, never by order: two in flight can finish in either order), or
//! its outcome wait expires ([`AmiError::Timeout`]).
//!
//! [`AmiHandle::send_with`] takes [`SendOptions`]: that outcome wait, an
//! ActionID prefix (the AMI proxy's per-client tag, so that the
//! `OriginateResponse` of a proxied `Originate` can be routed back), its
//! own deadline, and `proxied` (the action comes from an AMI proxy client:
//! it is not announced to the normalizer, which sees such a tool's calls
//! exactly as it would with the tool on its own AMI login).
//! [`ActionResponse::complete`] keeps the event that closed a list.
//!
//! [`AmiHandle::subscribe_events`] taps the unsolicited events for the AMI
//! proxy (`OriginateResponse` and presence-only events too, and noise when
//! [`ClientConfig::keep_noise`] makes the codec build it): a broadcast
//! channel the reader publishes to without waiting (a subscriber that falls
//! behind by more than [`TAP_CAPACITY`] events sees a `Lagged` error);
//! nothing is copied while nobody subscribes.
//!
//! Outcomes: [`AmiError::Rejected`] for `Response: Error`,
//! [`AmiError::Timeout`] when nothing answered within
//! [`ClientConfig::action_timeout`] (counted from submission, waiting for a
//! login included), [`AmiError::Shutdown`] once the client is stopping.
//! Actions submitted while the client is not logged in wait for the next
//! login. When a connection is lost with actions in flight:
//!
//! * read-only actions from a small allow-list ([`is_idempotent`]: `Ping`,
//!   `Status`, `CoreShowChannels`, `QueueStatus`, …) are re-sent after the
//!   next login, still within their original deadline;
//! * every other action (`Originate`, `Redirect`, `Atxfer`, `Hangup`,
//!   `Command`, …) is **never re-sent**: its caller gets
//!   [`AmiError::Disconnected`] (outcome unknown) — re-sending could place a
//!   duplicate call.
//!
//! # Reading and backpressure policy
//!
//! Writes go through a separate writer task; the reader
//! ([`super::reader::FrameReader`]) reads up to 64 KiB at a time and hands
//! every frame of a read to the routing below before it reads again.
//!
//! * Pure noise that the normalizer never uses is dropped first
//!   ([`NOISE_EVENTS`]: `VarSet`, `RTCPSent`, `RTCPReceived`,
//!   `DeviceStateChange`, unsolicited `ExtensionStatus`, `QueueMemberStatus`,
//!   `SuccessfulAuth`, `ChallengeSent`, `RequestBadFormat`); the codec
//!   recognises it from its first line and does not even build it
//!   ([`super::route`]). `Newexten` and `Cdr` are kept. A client started
//!   with presence ([`spawn_with_presence`]) builds `ExtensionStatus` and
//!   `DeviceStateChange` and hands them to presence only
//!   ([`super::state_sync`]).
//! * When the events channel is full, the event waits in a backlog and the
//!   client stops decoding; it still reads the socket ahead into its byte
//!   buffer, up to 2 MiB, then **stops reading** until the normalizer has
//!   taken the backlog (TCP backpressure: the PBX's writes slow down,
//!   nothing is lost). Every event the normalizer takes lets decoding, and
//!   so reading, go on: a normalizer that keeps taking events, however
//!   slowly, never loses one. Actions and pings are still sent meanwhile;
//!   their answers wait behind the events (an action still times out at its
//!   deadline; an unanswered keepalive does not count while events wait).
//! * Reading may stop for at most [`ClientConfig::max_stall`] (50 ms by
//!   default, half of Asterisk's default `writetimeout`: Asterisk
//!   disconnects a manager session one of whose writes blocks that long,
//!   `main/manager.c` `send_string`), i.e. the read-ahead is full and the
//!   normalizer took nothing for that long. Then the backlog is dropped and
//!   counted in `ami_queue_dropped`, with one warning per overflow episode,
//!   and the client reads on, dropping what does not fit, until the channel
//!   is at least half empty again: then (at most once per second) it re-runs
//!   the resync action and delivers a fresh [`SourceEvent::AmiSnapshot`], so
//!   the normalizer can repair what it missed, and backpressure applies
//!   again. A snapshot that itself cannot be queued starts a new episode.
//!
//! Every received `Event:` packet counts in `ami_events{pbx,event}` (event
//! names folded by [`crate::metrics::event_label`]); packets the framer
//! skipped count in `ami_packets_skipped{pbx,reason}` with a warning.
//!
//! # Shutdown
//!
//! On cancellation the client sends `Logoff` (best effort, waits at most 1 s
//! for the `Goodbye`), closes the socket and ends; pending and later
//! [`AmiHandle::send`] calls return [`AmiError::Shutdown`]. No
//! `AmiDisconnected` is emitted for a deliberate shutdown.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use md5::{Digest, Md5};
use prometheus::IntCounter;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{AmiCodec, AmiFrame};
use super::message::{key_tag, Action, ActionError, AmiMessage, MessageKind};
use super::reader::FrameReader;
use super::route::{self, route, Route};
pub use super::route::{ends_list, is_noise_event, starts_list, NOISE_EVENTS};
use super::state_sync::{presence_route, PresenceOutput, PresenceRoute, StateStep, StateSync};
use crate::metrics::{action_label, event_label, metrics};
use crate::source::{now_epoch, OriginateSent, PbxId, PresenceSourceEvent, SourceEvent};

mod actions;
mod backpressure;
mod login;

/// The log target of every line the client writes, whichever of its files
/// writes it (log lines are an interface: `tests/cli_logs.rs`).
const LOG_TARGET: &str = "callhook::ami::client";

pub use actions::is_idempotent;
use actions::{count_action, is_error, is_success};
use login::action_id;
pub(crate) use login::md5_key;

/// How often deadlines (actions, ping) and the overflow state are checked.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// Commands waiting for the client task.
const COMMAND_QUEUE: usize = 1024;
/// Encoded actions waiting for the writer task.
const WRITE_QUEUE: usize = 1024;
/// A connection logged in for this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// Minimum time between two resyncs triggered by queue overflows.
const OVERFLOW_RESYNC_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a graceful shutdown waits for the `Logoff` answer.
const LOGOFF_TIMEOUT: Duration = Duration::from_secs(1);
/// Floor of every reconnect delay (guards against a zero backoff config).
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// Default [`ClientConfig::max_stall`]: half of Asterisk's default
/// `writetimeout`.
pub const DEFAULT_MAX_STALL: Duration = Duration::from_millis(50);
/// Bytes read ahead from the socket while the queue is full, before
/// reading stops (about 4,000 typical events).
const READ_AHEAD: usize = 2 * 1024 * 1024;
/// Events buffered for each subscriber of [`AmiHandle::subscribe_events`].
pub const TAP_CAPACITY: usize = 4096;
/// Event name spellings whose counter is remembered.
const MAX_EVENT_NAMES: usize = 128;
/// How long events still waiting for the queue when a session ends are
/// given before they are dropped (no socket to protect any more).
const END_FLUSH: Duration = Duration::from_secs(1);

/// How the client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// `Challenge` + `Login` with `Key: md5(challenge + secret)` (default).
    #[default]
    Md5,
    /// `Login` with the secret in clear text.
    Plain,
}

/// Configuration of one AMI connection.
#[derive(Clone)]
pub struct ClientConfig {
    /// The PBX id (labels, logs, ActionIDs, source events).
    pub pbx: PbxId,
    /// Host name or address of the manager interface.
    pub host: String,
    /// TCP port (5038 by default on Asterisk).
    pub port: u16,
    /// Manager user.
    pub username: String,
    /// Manager secret (never logged).
    pub secret: String,
    /// Authentication method.
    pub auth: AuthMode,
    /// `Events:` value sent with the login: `on` or a class mask (`call,agent`).
    pub events: String,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Interval between keepalive pings.
    pub ping_interval: Duration,
    /// A ping unanswered for this long means the connection is dead.
    pub ping_timeout: Duration,
    /// Deadline of every action, counted from submission.
    pub action_timeout: Duration,
    /// First reconnect delay (before jitter).
    pub backoff_initial: Duration,
    /// Maximum reconnect delay.
    pub backoff_max: Duration,
    /// Maximum AMI packet size accepted by the framer.
    pub max_packet: usize,
    /// Recommended capacity of the events channel; also bounds the events
    /// held back while a resync list is being collected.
    pub queue_capacity: usize,
    /// List the live channels after every login (and after overflows).
    pub resync: bool,
    /// Longest the client stops reading the socket while the normalizer's
    /// queue is full (TCP backpressure) before it drops events instead. Keep
    /// it below Asterisk's `writetimeout` (manager.conf, 100 ms by default):
    /// a manager session whose write blocks that long is disconnected.
    pub max_stall: Duration,
    /// Build the noise events too (the codec skips them otherwise), for
    /// the AMI proxy's tap ([`AmiHandle::subscribe_events`]); the
    /// normalizer still never sees them.
    pub keep_noise: bool,
}

impl ClientConfig {
    /// A configuration with the defaults: MD5 auth, `Events: on`, connect
    /// timeout 5 s, ping every 20 s with a 5 s deadline, action timeout 10 s,
    /// backoff 500 ms → 30 s, 1 MiB packets, queue capacity 10 000, resync on,
    /// stalls of at most 50 ms.
    pub fn new(
        pbx: impl Into<PbxId>,
        host: impl Into<String>,
        port: u16,
        username: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        Self {
            pbx: pbx.into(),
            host: host.into(),
            port,
            username: username.into(),
            secret: secret.into(),
            auth: AuthMode::Md5,
            events: "on".to_string(),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(5),
            action_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_packet: AmiCodec::DEFAULT_MAX_PACKET,
            queue_capacity: 10_000,
            resync: true,
            max_stall: DEFAULT_MAX_STALL,
            keep_noise: false,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("pbx", &self.pbx)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .field("auth", &self.auth)
            .field("events", &self.events)
            .field("connect_timeout", &self.connect_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("action_timeout", &self.action_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("max_packet", &self.max_packet)
            .field("queue_capacity", &self.queue_capacity)
            .field("resync", &self.resync)
            .field("max_stall", &self.max_stall)
            .field("keep_noise", &self.keep_noise)
            .finish()
    }
}

/// The answer to an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionResponse {
    /// The `Response:` packet (or the `OriginateResponse` event that resolved
    /// a still-pending `Originate`). A legacy `Response: Follows` carries its
    /// text in [`AmiMessage::body`].
    pub response: AmiMessage,
    /// List items, in order, without the closing `…Complete` event.
    pub items: Vec<AmiMessage>,
    /// The event that closed the list (`…Complete`, `EventList: Complete`),
    /// when there was one.
    pub complete: Option<AmiMessage>,
}

/// How [`AmiHandle::send_with`] sends an action.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// After a `Success` response, keep waiting this long for the
    /// `OriginateResponse` event with the same ActionID (see
    /// [`AmiHandle::originate`]).
    pub await_event: Option<Duration>,
    /// Put before the client's ActionID (`{prefix}{pbx}-{seq}-{n}`).
    pub id_prefix: Option<String>,
    /// Deadline counted from submission instead of
    /// [`ClientConfig::action_timeout`].
    pub timeout: Option<Duration>,
    /// The action comes from an AMI proxy client: an `Originate` is not
    /// announced to the normalizer.
    pub proxied: bool,
}

/// The outcome of [`AmiHandle::originate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginateReply {
    /// The ActionID the client gave the Originate.
    pub action_id: String,
    /// The immediate `Response: Success` ("Originate successfully queued").
    pub queued: AmiMessage,
    /// The `OriginateResponse` event (`Response` Success/Failure, `Reason`,
    /// `Channel`, `Uniqueid`).
    pub event: AmiMessage,
}

/// Why an action did not produce a response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmiError {
    /// Nothing answered within the action timeout.
    #[error("no answer within the action timeout")]
    Timeout,
    /// The connection was lost after the action was sent: outcome unknown.
    #[error("connection lost while the action was pending (outcome unknown)")]
    Disconnected,
    /// Asterisk answered `Response: Error` with this message.
    #[error("action rejected: {0}")]
    Rejected(String),
    /// The client is shut down.
    #[error("AMI client is shut down")]
    Shutdown,
    /// The action cannot be encoded.
    #[error("action cannot be encoded: {0}")]
    Encode(#[from] ActionError),
}

/// Connection state as seen through [`AmiHandle::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected (waiting for the next attempt).
    Down,
    /// Connecting or logging in.
    Connecting,
    /// Logged in.
    LoggedIn,
    /// The task has ended (shutdown).
    Stopped,
}

impl ConnectionState {
    fn gauge(self) -> i64 {
        match self {
            ConnectionState::Down | ConnectionState::Stopped => 0,
            ConnectionState::Connecting => 1,
            ConnectionState::LoggedIn => 2,
        }
    }
}

/// A handle to a running client: sends actions, observes the state.
#[derive(Clone)]
pub struct AmiHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    pbx: PbxId,
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<ConnectionState>,
    action_timeout: Duration,
    shutdown: CancellationToken,
    tap: broadcast::Sender<Arc<AmiMessage>>,
    banner: Arc<std::sync::Mutex<Option<String>>>,
}

impl fmt::Debug for AmiHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmiHandle")
            .field("pbx", &self.inner.pbx)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

impl AmiHandle {
    /// Sends an action and waits for its response (and list items).
    ///
    /// The ActionID is assigned by the client. See the module documentation
    /// for the outcomes and the re-send policy.
    pub async fn send(&self, action: Action) -> Result<ActionResponse, AmiError> {
        self.submit(action, SendOptions::default()).await
    }

    /// [`AmiHandle::send`] with [`SendOptions`].
    pub async fn send_with(
        &self,
        action: Action,
        opts: SendOptions,
    ) -> Result<ActionResponse, AmiError> {
        self.submit(action, opts).await
    }

    /// Sends an asynchronous `Originate` (`Async: true` is set) and waits for
    /// its outcome: the `Response` (queued or rejected) and then the
    /// `OriginateResponse` event carrying the same ActionID, for up to
    /// `outcome_wait` after the Response (make it longer than the
    /// Originate's `Timeout`). Like every non-read-only action it is never
    /// re-sent: a connection lost before the outcome gives
    /// [`AmiError::Disconnected`] (the call may or may not exist), no event
    /// in time gives [`AmiError::Timeout`].
    pub async fn originate(
        &self,
        action: Action,
        outcome_wait: Duration,
    ) -> Result<OriginateReply, AmiError> {
        let action = if action.get("Async").is_some() {
            action
        } else {
            action.field("Async", "true")
        };
        let opts = SendOptions {
            await_event: Some(outcome_wait),
            ..SendOptions::default()
        };
        let r = self.submit(action, opts).await?;
        let mut items = r.items.into_iter();
        let queued = items.next().unwrap_or_default();
        Ok(OriginateReply {
            action_id: r.response.action_id().unwrap_or("").to_string(),
            queued,
            event: r.response,
        })
    }

    async fn submit(&self, action: Action, opts: SendOptions) -> Result<ActionResponse, AmiError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(AmiError::Shutdown);
        }
        // Reject header injection before anything is queued.
        action.encode(opts.id_prefix.as_deref().unwrap_or("probe"))?;
        let started = Instant::now();
        let deadline = started + opts.timeout.unwrap_or(self.inner.action_timeout);
        let await_event = opts.await_event;
        let (reply, rx) = oneshot::channel();
        let cmd = Command {
            action,
            reply,
            deadline,
            await_event,
            id_prefix: opts.id_prefix,
            proxied: opts.proxied,
        };
        // The task enforces the deadline; this outer bound is a safety net.
        let safety = deadline + await_event.unwrap_or_default() + Duration::from_millis(500);
        match tokio::time::timeout_at(safety, self.inner.commands.send(cmd)).await {
            Err(_) => return Err(AmiError::Timeout),
            Ok(Err(_)) => return Err(AmiError::Shutdown),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(safety, rx).await {
            Err(_) => Err(AmiError::Timeout),
            Ok(Err(_)) => Err(AmiError::Shutdown),
            Ok(Ok(result)) => result,
        }
    }

    /// The PBX this handle talks to.
    pub fn pbx(&self) -> &PbxId {
        &self.inner.pbx
    }

    /// Every unsolicited event from now on (see the module documentation).
    pub fn subscribe_events(&self) -> broadcast::Receiver<Arc<AmiMessage>> {
        self.inner.tap.subscribe()
    }

    /// The banner of the current (or last) connection,
    /// `Asterisk Call Manager/9.0.0`.
    pub fn banner(&self) -> Option<String> {
        self.inner
            .banner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        *self.inner.state.borrow()
    }

    /// A receiver that observes every state change.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Waits until the client task has ended (after shutdown).
    pub async fn stopped(&self) {
        let mut rx = self.inner.state.clone();
        // An error means the task (the sender) is gone: stopped as well.
        let _ = rx.wait_for(|s| *s == ConnectionState::Stopped).await;
    }
}

/// Starts the client task for one PBX. It runs until `shutdown` is cancelled.
///
/// Unsolicited events, snapshots and disconnect notices go to `events` with
/// `try_send` (see the backpressure policy in the module documentation).
/// Extension state is not tracked (see [`spawn_with_presence`]).
pub fn spawn(
    cfg: ClientConfig,
    events: mpsc::Sender<SourceEvent>,
    shutdown: CancellationToken,
) -> AmiHandle {
    spawn_with_presence(cfg, events, None, shutdown)
}

/// Like [`spawn`], and with `presence` the client also feeds the presence
/// tracker: `ExtensionStatus` / `DeviceStateChange` (and copies of
/// `PeerStatus`, `ContactStatus`, `Hold`, `Unhold`) go to its channel
/// instead of being dropped as noise, and every login asks for the
/// extension and device state lists (see [`super::state_sync`]).
pub fn spawn_with_presence(
    cfg: ClientConfig,
    events: mpsc::Sender<SourceEvent>,
    presence: Option<PresenceOutput>,
    shutdown: CancellationToken,
) -> AmiHandle {
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (state_tx, state_rx) = watch::channel(ConnectionState::Down);
    let (tap, _) = broadcast::channel(TAP_CAPACITY);
    let banner = Arc::new(std::sync::Mutex::new(None));
    metrics()
        .ami_connection_state
        .with_label_values(&[&cfg.pbx])
        .set(0);
    let handle = AmiHandle {
        inner: Arc::new(HandleInner {
            pbx: cfg.pbx.clone(),
            commands: cmd_tx,
            state: state_rx,
            action_timeout: cfg.action_timeout,
            shutdown: shutdown.clone(),
            tap: tap.clone(),
            banner: banner.clone(),
        }),
    };
    let presence = presence.map(|p| StateSync::new(cfg.pbx.clone(), p, cfg.queue_capacity));
    let client = Client {
        pbx: cfg.pbx.clone(),
        presence,
        cfg,
        events,
        shutdown,
        commands: cmd_rx,
        commands_closed: false,
        state: state_tx,
        waiting: VecDeque::new(),
        conn_seq: 0,
        session_events: 0,
        overflow: Overflow::default(),
        events_closed_logged: false,
        backlog: VecDeque::new(),
        stall_since: None,
        event_counters: Vec::new(),
        tap,
        banner,
    };
    tokio::spawn(client.run());
    handle
}

/// Exponential backoff with equal jitter.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The un-jittered delay of the current attempt: `initial · 2^attempt`,
    /// capped at `max`.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(24);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
            .max(MIN_BACKOFF)
    }

    /// The next delay, in `[c/2, c]` for the current ceiling `c`.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let c = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = c / 2;
        let span = (c - half).as_nanos().min(u64::MAX as u128) as u64;
        half + Duration::from_nanos(rng.gen_range(0..=span))
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

struct Command {
    action: Action,
    reply: oneshot::Sender<Result<ActionResponse, AmiError>>,
    deadline: Instant,
    /// After a `Success` response, keep waiting this long for the
    /// `OriginateResponse` event with the same ActionID.
    await_event: Option<Duration>,
    /// [`SendOptions::id_prefix`].
    id_prefix: Option<String>,
    /// [`SendOptions::proxied`].
    proxied: bool,
}

#[derive(Default)]
struct Overflow {
    /// An overflow episode is going on (a warning was logged).
    active: bool,
    /// Events dropped in the current episode.
    dropped: u64,
    /// A resync must run once the queue has room.
    resync_needed: bool,
    /// When the last overflow-triggered resync was started.
    last_resync: Option<Instant>,
}

enum PendingKind {
    User(Command),
    Ping,
    /// A presence state action of the login sequence.
    State(StateStep),
    Resync {
        action: &'static str,
        fell_back: bool,
    },
}

struct Pending {
    kind: PendingKind,
    /// Sequence number of the ActionID (keeps re-send order).
    n: u64,
    deadline: Instant,
    response: Option<AmiMessage>,
    items: Vec<AmiMessage>,
}

/// One logged-in connection.
struct Session {
    reader: FrameReader<OwnedReadHalf>,
    writer_tx: mpsc::Sender<Vec<u8>>,
    writer: JoinHandle<()>,
    seq: u64,
    next_n: u64,
    pending: HashMap<String, Pending>,
    /// `CoreShowChannels` (AMI ≥ 2) rather than `Status` for resyncs.
    modern: bool,
    /// ActionID of the keepalive ping in flight.
    ping: Option<String>,
    resync_in_flight: bool,
    held: VecDeque<SourceEvent>,
}

impl Session {
    fn next_id(&mut self, pbx: &str) -> (String, u64) {
        self.next_n += 1;
        (action_id(pbx, self.seq, self.next_n), self.next_n)
    }
}

enum ConnectError {
    Shutdown,
    Io(String),
    Auth(String),
    Protocol(String),
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// The connection is dead for this reason.
struct Lost(String);

struct Client {
    pbx: PbxId,
    cfg: ClientConfig,
    events: mpsc::Sender<SourceEvent>,
    shutdown: CancellationToken,
    commands: mpsc::Receiver<Command>,
    commands_closed: bool,
    state: watch::Sender<ConnectionState>,
    /// Actions not written yet (waiting for a login).
    waiting: VecDeque<Command>,
    conn_seq: u64,
    /// Events forwarded during the current session (a session that
    /// delivered some is followed by an immediate reconnect).
    session_events: u64,
    overflow: Overflow,
    events_closed_logged: bool,
    /// Events the queue had no room for, in order: while there are any the
    /// socket is not read (backpressure).
    backlog: VecDeque<SourceEvent>,
    /// Since when the socket has not been read for lack of room (events
    /// wait in the backlog and the read-ahead buffer is full).
    stall_since: Option<Instant>,
    /// `ami_events` counters by event name (with its [`key_tag`]).
    event_counters: Vec<(u32, Box<str>, IntCounter)>,
    /// Presence: forwarding and login-time state lists (none: not tracked).
    presence: Option<StateSync>,
    /// [`AmiHandle::subscribe_events`].
    tap: broadcast::Sender<Arc<AmiMessage>>,
    /// [`AmiHandle::banner`].
    banner: Arc<std::sync::Mutex<Option<String>>>,
}

impl Client {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.cfg.backoff_initial, self.cfg.backoff_max);
        let mut at_once: Option<Duration> = None;
        let mut first = true;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            if !first {
                metrics()
                    .ami_reconnects
                    .with_label_values(&[&self.pbx])
                    .inc();
            }
            first = false;
            self.conn_seq += 1;
            self.set_state(ConnectionState::Connecting);
            info!(pbx = %self.pbx, "connecting to AMI at {}:{}", self.cfg.host, self.cfg.port);
            // Exactly one log line per state change: connecting, logged in
            // (in `connect_and_login`), down with its reason and the delay
            // before the next attempt, stopped.
            let down = match self.connect().await {
                Ok(sess) => {
                    self.set_state(ConnectionState::LoggedIn);
                    let since = Instant::now();
                    self.session_events = 0;
                    match self.session(sess).await {
                        SessionEnd::Shutdown => break,
                        SessionEnd::Lost(reason) => {
                            self.set_state(ConnectionState::Down);
                            self.deliver(SourceEvent::AmiDisconnected {
                                pbx: self.pbx.clone(),
                                at: now_epoch(),
                            });
                            if let Some(s) = self.presence.as_mut() {
                                s.disconnected(now_epoch());
                            }
                            let lasted = since.elapsed();
                            if self.session_events > 0 {
                                // The link works: reconnect at once (at most
                                // one connection per backoff_initial).
                                backoff.reset();
                                at_once = Some(self.cfg.backoff_initial.saturating_sub(lasted));
                            } else if lasted >= STABLE_SESSION {
                                backoff.reset();
                            }
                            format!("AMI connection lost: {reason}")
                        }
                    }
                }
                Err(ConnectError::Shutdown) => break,
                Err(ConnectError::Auth(msg)) => {
                    self.set_state(ConnectionState::Down);
                    format!(
                        "AMI login failed at {}:{} as user {}: {msg}",
                        self.cfg.host, self.cfg.port, self.cfg.username
                    )
                }
                Err(ConnectError::Io(msg)) | Err(ConnectError::Protocol(msg)) => {
                    self.set_state(ConnectionState::Down);
                    format!(
                        "cannot connect to AMI at {}:{}: {msg}",
                        self.cfg.host, self.cfg.port
                    )
                }
            };
            let delay = match at_once.take() {
                Some(d) => d,
                None => backoff.next_delay(&mut rand::thread_rng()),
            };
            warn!(
                pbx = %self.pbx,
                retry_in_secs = delay.as_secs_f64(),
                "{down}; reconnecting in {:.1}s",
                delay.as_secs_f64()
            );
            if !self.wait(delay).await {
                break;
            }
        }
        self.stop();
    }

    fn set_state(&self, s: ConnectionState) {
        metrics()
            .ami_connection_state
            .with_label_values(&[&self.pbx])
            .set(s.gauge());
        self.state.send_replace(s);
    }

    /// Waits `delay` while queueing commands and expiring them. False on shutdown.
    async fn wait(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        let shutdown = self.shutdown.clone();
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = sleep_until(until) => return true,
                cmd = self.commands.recv(), if !self.commands_closed => match cmd {
                    Some(c) => self.waiting.push_back(c),
                    None => self.commands_closed = true,
                },
                _ = tick.tick() => self.expire_waiting(),
            }
        }
    }

    fn expire_waiting(&mut self) {
        let now = Instant::now();
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        for c in self.waiting.drain(..) {
            if c.reply.is_closed() {
                continue;
            }
            if c.deadline <= now {
                count_action(&self.pbx, c.action.name(), "timeout");
                let _ = c.reply.send(Err(AmiError::Timeout));
                continue;
            }
            keep.push_back(c);
        }
        self.waiting = keep;
    }

    /// Ends the task: every waiting caller gets `Shutdown`.
    fn stop(mut self) {
        self.commands.close();
        while let Ok(c) = self.commands.try_recv() {
            let _ = c.reply.send(Err(AmiError::Shutdown));
        }
        for c in self.waiting.drain(..) {
            let _ = c.reply.send(Err(AmiError::Shutdown));
        }
        self.set_state(ConnectionState::Stopped);
        info!(pbx = %self.pbx, "AMI client stopped");
    }

    async fn session(&mut self, mut sess: Session) -> SessionEnd {
        let end = match self.session_start(&mut sess) {
            Ok(()) => self.session_loop(&mut sess).await,
            Err(Lost(r)) => SessionEnd::Lost(r),
        };
        match &end {
            SessionEnd::Shutdown => {
                self.logoff(&mut sess).await;
                self.fail_pending(&mut sess, false);
            }
            SessionEnd::Lost(_) => {
                self.fail_pending(&mut sess, true);
                // Events received before the loss still go out, in order.
                while let Some(ev) = sess.held.pop_front() {
                    self.deliver(ev);
                }
            }
        }
        sess.writer.abort();
        self.flush_backlog().await;
        end
    }

    fn session_start(&mut self, sess: &mut Session) -> Result<(), Lost> {
        // Presence state lists first: a PBX answers in order, so they come
        // back before the channel snapshot starts the event flow.
        self.start_state_sync(sess)?;
        if self.cfg.resync || self.overflow.resync_needed {
            self.overflow.resync_needed = false;
            self.start_resync(sess)?;
        }
        self.expire_waiting();
        while let Some(cmd) = self.waiting.pop_front() {
            self.submit(sess, cmd)?;
        }
        Ok(())
    }

    async fn session_loop(&mut self, sess: &mut Session) -> SessionEnd {
        let shutdown = self.shutdown.clone();
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ping_every = self.cfg.ping_interval.max(Duration::from_millis(1));
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Everything already read, for as long as the queue takes it.
            let mut framed = false;
            while self.backlog.is_empty() {
                let Some(frame) = sess.reader.buffered() else {
                    break;
                };
                framed = true;
                if let Err(Lost(reason)) = self.on_frame(sess, frame) {
                    return SessionEnd::Lost(reason);
                }
            }
            if framed {
                // Let the normalizer take this read's events while they are
                // still in the cache (on a single-threaded runtime it would
                // otherwise only run once the queue is full).
                tokio::task::yield_now().await;
            }
            let stalled = !self.backlog.is_empty();
            let eof = sess.reader.at_eof();
            if !stalled && eof {
                return SessionEnd::Lost("connection closed by the PBX".into());
            }
            // While stalled, the socket is still read ahead into the byte
            // buffer up to READ_AHEAD; only then does reading stop, and the
            // stall clock run (not after EOF: no session to protect).
            let read = !eof && (!stalled || sess.reader.buffered_bytes() < READ_AHEAD);
            let stopped = stalled && !read && !eof;
            if stopped {
                self.stall_since.get_or_insert_with(Instant::now);
            } else {
                self.stall_since = None;
            }
            let give_up = self
                .stall_since
                .map_or_else(Instant::now, |t| t + self.cfg.max_stall);
            let step = tokio::select! {
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                read = sess.reader.fill(), if read => match read {
                    Ok(_) => Ok(()),
                    Err(e) => Err(Lost(format!("read error: {e}"))),
                },
                permit = self.events.clone().reserve_owned(), if stalled => {
                    match permit {
                        Ok(p) => self.resume(p),
                        Err(_) => self.backlog.clear(),
                    }
                    Ok(())
                },
                _ = sleep_until(give_up), if stopped => {
                    // Only if the normalizer still took nothing: when room
                    // came at the same moment (a long batch on the same
                    // thread), the permit branch takes it next.
                    if self.events.capacity() == 0 {
                        self.give_up_stall();
                    }
                    Ok(())
                },
                cmd = self.commands.recv(), if !self.commands_closed => match cmd {
                    Some(c) => self.submit(sess, c),
                    None => { self.commands_closed = true; Ok(()) }
                },
                _ = housekeeping.tick() => self.housekeeping(sess),
                _ = ping.tick() => self.send_ping(sess),
            };
            if let Err(Lost(reason)) = step {
                return SessionEnd::Lost(reason);
            }
        }
    }

    fn on_frame(&mut self, sess: &mut Session, frame: AmiFrame) -> Result<(), Lost> {
        match frame {
            AmiFrame::Message(msg) => self.on_message(sess, msg),
            AmiFrame::Ignored { event, .. } => {
                self.count_event(event);
                Ok(())
            }
            AmiFrame::Skipped { reason, bytes } => {
                metrics()
                    .ami_packets_skipped
                    .with_label_values(&[&self.pbx, reason.as_str()])
                    .inc();
                warn!(pbx = %self.pbx, "skipped an AMI packet of {bytes} bytes ({})", reason.as_str());
                Ok(())
            }
            AmiFrame::Banner(b) => {
                debug!(pbx = %self.pbx, "ignoring a banner in the middle of the stream: {b}");
                Ok(())
            }
        }
    }

    /// Counts one received event in `ami_events` (counters are looked up
    /// once per spelling of an event name, at most [`MAX_EVENT_NAMES`]).
    fn count_event(&mut self, name: &str) {
        let tag = key_tag(name.as_bytes());
        if let Some((_, _, c)) = self
            .event_counters
            .iter()
            .find(|(t, n, _)| *t == tag && **n == *name)
        {
            c.inc();
            return;
        }
        let c = metrics()
            .ami_events
            .with_label_values(&[&self.pbx, event_label(name)]);
        c.inc();
        if self.event_counters.len() < MAX_EVENT_NAMES {
            self.event_counters.push((tag, name.into(), c));
        }
    }

    fn on_message(&mut self, sess: &mut Session, msg: AmiMessage) -> Result<(), Lost> {
        if let Some(name) = msg.event() {
            self.count_event(name);
        }
        match route(&msg) {
            r @ (Route::Event | Route::Noise) => {
                // Presence events go there first (some only there); the
                // codec of a client with presence builds them.
                let name = msg.event().unwrap_or_default();
                if let Some(pr) = self.presence.as_ref().and_then(|_| presence_route(name)) {
                    if pr == PresenceRoute::Also {
                        self.forward(sess, msg.clone());
                    } else {
                        self.publish(&msg);
                    }
                    let ev = PresenceSourceEvent::Ami {
                        pbx: self.pbx.clone(),
                        received_at: now_epoch(),
                        msg,
                    };
                    if let Some(s) = self.presence.as_mut() {
                        s.forward(ev);
                    }
                    return Ok(());
                }
                if r == Route::Event {
                    self.forward(sess, msg);
                } else {
                    self.publish(&msg);
                }
                Ok(())
            }
            Route::Broadcast(id) => {
                // Broadcast: an event for everyone, and maybe the answer to
                // a pending (synchronous or awaited) Originate.
                if let Some(mut p) = sess.pending.remove(id) {
                    let id = id.to_string();
                    let awaited =
                        matches!(&p.kind, PendingKind::User(c) if c.await_event.is_some());
                    let mut items = std::mem::take(&mut p.items);
                    if awaited {
                        items.insert(0, p.response.take().unwrap_or_default());
                    }
                    let resp = ActionResponse {
                        response: msg.clone(),
                        items,
                        complete: None,
                    };
                    let result = if is_error(&msg) && !awaited {
                        Err(AmiError::Rejected(
                            msg.get("Reason").unwrap_or("originate failed").to_string(),
                        ))
                    } else {
                        Ok(resp)
                    };
                    self.complete(sess, &id, p, result)?;
                }
                self.forward(sess, msg);
                Ok(())
            }
            Route::ListItem(_) => self.list_item(sess, msg),
            Route::Response(None) => {
                debug!(pbx = %self.pbx, "dropping a response without ActionID");
                Ok(())
            }
            Route::Response(Some(id)) => {
                let id = id.to_string();
                let Some(p) = sess.pending.get_mut(&id) else {
                    debug!(pbx = %self.pbx, "dropping a response for unknown ActionID {id}");
                    return Ok(());
                };
                if p.response.is_some() {
                    debug!(pbx = %self.pbx, "dropping a second response for ActionID {id}");
                    return Ok(());
                }
                if starts_list(&msg) {
                    p.response = Some(msg);
                    return Ok(());
                }
                if let PendingKind::User(c) = &p.kind {
                    if let (Some(wait), true) = (c.await_event, is_success(&msg)) {
                        // Queued: the outcome is the OriginateResponse event.
                        p.response = Some(msg);
                        p.deadline = Instant::now() + wait;
                        return Ok(());
                    }
                }
                let Some(mut p) = sess.pending.remove(&id) else {
                    return Ok(());
                };
                let result = if is_error(&msg) {
                    Err(AmiError::Rejected(
                        msg.get("Message").unwrap_or("error").to_string(),
                    ))
                } else {
                    Ok(ActionResponse {
                        response: msg,
                        items: std::mem::take(&mut p.items),
                        complete: None,
                    })
                };
                self.complete(sess, &id, p, result)
            }
            Route::Other => {
                debug!(pbx = %self.pbx, "dropping a packet that is neither an event nor a response");
                Ok(())
            }
        }
    }

    /// Asks for the presence state lists (nothing without presence).
    fn start_state_sync(&mut self, sess: &mut Session) -> Result<(), Lost> {
        let modern = sess.modern;
        let actions = match self.presence.as_mut() {
            Some(s) => s.begin(modern),
            None => return Ok(()),
        };
        self.write_state_actions(sess, actions)
    }

    fn write_state_actions(
        &mut self,
        sess: &mut Session,
        actions: Vec<(Action, StateStep)>,
    ) -> Result<(), Lost> {
        for (action, step) in actions {
            let deadline = Instant::now() + self.cfg.action_timeout;
            if self
                .write(sess, &action, PendingKind::State(step), deadline)?
                .is_none()
            {
                if let Some(s) = self.presence.as_mut() {
                    s.unsent();
                }
            }
        }
        Ok(())
    }

    fn start_resync(&mut self, sess: &mut Session) -> Result<(), Lost> {
        let action = if sess.modern {
            "CoreShowChannels"
        } else {
            "Status"
        };
        self.send_resync(sess, action, false)
    }

    fn send_resync(
        &mut self,
        sess: &mut Session,
        action: &'static str,
        fell_back: bool,
    ) -> Result<(), Lost> {
        sess.resync_in_flight = true;
        let deadline = Instant::now() + self.cfg.action_timeout;
        self.write(
            sess,
            &Action::new(action),
            PendingKind::Resync { action, fell_back },
            deadline,
        )
        .map(|_| ())
    }

    /// Delivers the snapshot (if any), then the events held meanwhile.
    fn finish_resync(&mut self, sess: &mut Session, channels: Option<Vec<AmiMessage>>) {
        sess.resync_in_flight = false;
        if let Some(channels) = channels {
            let n = channels.len();
            if self.deliver(SourceEvent::AmiSnapshot {
                pbx: self.pbx.clone(),
                received_at: now_epoch(),
                channels,
            }) {
                debug!(pbx = %self.pbx, "delivered a snapshot of {n} channels");
            }
        }
        while let Some(ev) = sess.held.pop_front() {
            self.deliver(ev);
        }
    }

    fn housekeeping(&mut self, sess: &mut Session) -> Result<(), Lost> {
        let now = Instant::now();
        // The answer to a keepalive may be queued behind events (unread
        // while they wait for room, or behind a long stream): bytes arriving
        // prove the connection alive.
        let stalled = !self.backlog.is_empty();
        let quiet = sess
            .reader
            .last_read()
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.ping_timeout);
        let expired: Vec<String> = sess
            .pending
            .iter()
            .filter(|(_, p)| !matches!(p.kind, PendingKind::Ping) || (quiet && !stalled))
            .filter(|(_, p)| {
                p.deadline <= now || matches!(&p.kind, PendingKind::User(c) if c.reply.is_closed())
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(p) = sess.pending.remove(&id) {
                if matches!(&p.kind, PendingKind::User(c) if c.reply.is_closed()) {
                    debug!(pbx = %self.pbx, "caller of {id} is gone; a late answer will be dropped");
                    continue;
                }
                self.complete(sess, &id, p, Err(AmiError::Timeout))?;
            }
        }
        if sess.writer.is_finished() {
            return Err(Lost("writing to the PBX failed".into()));
        }
        if self.presence.as_mut().is_some_and(StateSync::wants_resync) {
            info!(pbx = %self.pbx, "presence queue has room again; asking for the state lists");
            self.start_state_sync(sess)?;
        }
        if self.overflow.resync_needed && !sess.resync_in_flight && self.queue_has_room() {
            let recent = self
                .overflow
                .last_resync
                .is_some_and(|t| t.elapsed() < OVERFLOW_RESYNC_MIN_INTERVAL);
            if !recent {
                info!(
                    pbx = %self.pbx,
                    "normalizer queue has room again after {} dropped events; resyncing channels",
                    self.overflow.dropped
                );
                self.overflow.active = false;
                self.overflow.dropped = 0;
                self.overflow.resync_needed = false;
                self.overflow.last_resync = Some(now);
                self.start_resync(sess)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::login::ami_major;
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn md5_key_is_hex_of_challenge_plus_secret() {
        assert_eq!(
            md5_key("1234", "secret"),
            "10b168cd4f742410888c3c110f7a7e71"
        );
        assert_eq!(md5_key("", "").len(), 32);
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let c = b.ceiling();
            let d = b.next_delay(&mut rng);
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
            ceilings.push(c.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(2));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        let mut z = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(z.next_delay(&mut rng) >= MIN_BACKOFF / 2);
    }

    #[test]
    fn list_detection() {
        let start = AmiMessage::from_pairs([
            ("Response", "Success"),
            ("ActionID", "a"),
            ("EventList", "start"),
            ("Message", "Channels will follow"),
        ]);
        assert!(starts_list(&start));
        // Asterisk 11 Status: no EventList, "will follow".
        let old = AmiMessage::from_pairs([
            ("Response", "Success"),
            ("ActionID", "a"),
            ("Message", "Channel status will follow"),
        ]);
        assert!(starts_list(&old));
        // 14+ Command output is a single response.
        let cmd = AmiMessage::from_pairs([
            ("Response", "Success"),
            ("Message", "Command output follows"),
            ("Output", "x"),
        ]);
        assert!(!starts_list(&cmd));
        let err = AmiMessage::from_pairs([("Response", "Error"), ("Message", "x will follow")]);
        assert!(!starts_list(&err));

        let item = AmiMessage::from_pairs([("Event", "Status"), ("ActionID", "a")]);
        assert!(!ends_list(&item));
        let done11 = AmiMessage::from_pairs([("Event", "StatusComplete"), ("Items", "2")]);
        assert!(ends_list(&done11));
        let qdone = AmiMessage::from_pairs([("Event", "QueueSummaryComplete")]);
        assert!(ends_list(&qdone));
        let peers =
            AmiMessage::from_pairs([("Event", "PeerlistComplete"), ("EventList", "Complete")]);
        assert!(ends_list(&peers));
        let marked = AmiMessage::from_pairs([("Event", "Whatever"), ("EventList", "Complete")]);
        assert!(ends_list(&marked));
        let short = AmiMessage::from_pairs([("Event", "Cdr")]);
        assert!(!ends_list(&short));
    }

    #[test]
    fn action_id_format_and_banner_versions() {
        assert_eq!(action_id("pbx1", 3, 17), "pbx1-3-17");
        assert_eq!(ami_major("Asterisk Call Manager/9.0.0"), Some(9));
        assert_eq!(ami_major("Asterisk Call Manager/1.3"), Some(1));
        assert_eq!(ami_major("2.10.4"), Some(2));
        assert_eq!(ami_major("garbage/x"), None);
    }

    #[test]
    fn policies() {
        assert!(is_idempotent("ping"));
        assert!(is_idempotent("CoreShowChannels"));
        for a in [
            "Originate",
            "Redirect",
            "Atxfer",
            "Hangup",
            "Command",
            "Logoff",
        ] {
            assert!(!is_idempotent(a), "{a}");
        }
        assert!(is_noise_event("VarSet"));
        assert!(!is_noise_event("Newexten"));
        assert!(!is_noise_event("Cdr"));
    }

    #[test]
    fn config_debug_redacts_secret() {
        let c = ClientConfig::new("p", "h", 5038, "u", "hunter2");
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"));
        assert!(s.contains("<redacted>"));
        assert_eq!(c.auth, AuthMode::Md5);
        assert_eq!(c.events, "on");
    }
}
