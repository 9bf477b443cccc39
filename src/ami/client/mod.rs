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
//! ([`super::reader::FrameReader`]) reads up to 1 MiB at a time and hands
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
mod backoff;
mod backpressure;
mod config;
mod connection;
mod handle;
mod inbound;
mod login;
mod resync;

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
/// reading stops (about 4,000 typical events; the read that crosses it
/// may add up to one more read, 1 MiB).
const READ_AHEAD: usize = 2 * 1024 * 1024;
/// Events buffered for each subscriber of [`AmiHandle::subscribe_events`].
pub const TAP_CAPACITY: usize = 4096;
/// Event name spellings whose counter is remembered.
const MAX_EVENT_NAMES: usize = 128;
/// How long events still waiting for the queue when a session ends are
/// given before they are dropped (no socket to protect any more).
const END_FLUSH: Duration = Duration::from_secs(1);

pub(crate) use backoff::Backoff;
pub use config::{AuthMode, ClientConfig};
pub use handle::{
    ActionResponse, AmiError, AmiHandle, ConnectionState, OriginateReply, SendOptions,
};
use handle::{Command, HandleInner};

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
