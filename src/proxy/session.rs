//! One client connection of the AMI proxy, from banner to goodbye.
//!
//! **Before login** (at most `login_timeout`): the banner
//! `Asterisk Call Manager/<the PBX's version>`, then `Challenge`, `Login`
//! and `Logoff` are answered as Asterisk answers them (see
//! [`super::login`]); any other action gets `Permission denied` and,
//! like a second `Challenge`, counts as a bad packet. A failed
//! login is answered `Authentication failed` after `login_failure_delay`
//! and the connection is closed (one guess per connection).
//!
//! **Logged in**, each action is one of:
//!
//! * answered by the proxy itself, never forwarded: `Ping` (`Ping: Pong`,
//!   so a client's keepalive works while the PBX link is down), `Events`
//!   (`EventMask: on|off|classes` → `Events: On|Off`), `Login`
//!   (`Already authenticated`), `Challenge`, `Logoff` (`Goodbye`, then the
//!   connection closes; only this client's), and `Filter`/`WaitEvent`
//!   (refused: they would change or stall the shared connection);
//! * refused with `Permission denied` when the user's allow-list says no
//!   ([`super::actions`]), counted and logged;
//! * answered `Response: Error` at once when the PBX link is down;
//! * otherwise **forwarded** on callhook's own AMI connection with the
//!   ActionID `{tag}{client}.{k}/{pbx}-{seq}-{n}`. The response, every
//!   list item and the closing `…Complete` event come back to this client
//!   only, with its own ActionID restored (or none, if it sent none); so
//!   does the `OriginateResponse` of an asynchronous `Originate`. A
//!   synchronous `Originate` may take its `Timeout` plus 5 s; other
//!   actions time out after the AMI client's `action_timeout`. Like every
//!   non-read-only action, a forwarded one is never re-sent after a
//!   reconnect: if the link drops with it in flight, the client gets an
//!   error saying the outcome is unknown.
//!
//! At most `max_pending_actions` of a client are in flight, and it may
//! send `max_actions_per_second` ([`super::rate`]); beyond either the
//! proxy stops reading its socket until one is answered or a token is back. Responses are
//! written as they arrive (correlate them by ActionID, as with Asterisk).
//!
//! Writes to the client are bounded by `write_timeout`; its event queue
//! by `client_queue` ([`super::fanout`]). Packets larger than `max_packet`
//! and packets without a single `Key: Value` line are dropped and counted;
//! after [`MAX_BAD_PACKETS`] of them, or of packets without `Action:`, the
//! client is disconnected.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout_at, Instant};
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

use super::config::ProxyUser;
use super::events::EventMask;
use super::fanout::{Hub, Kill, Outgoing, Subscriber};
use super::login::{authenticate, login_mask, new_challenge};
use super::pending::Inflight;
use super::rate::ActionRate;
use super::wire::{self, ActionId};
use super::Shared;
use crate::ami::client::{ActionResponse, AmiError, SendOptions};
use crate::ami::{Action, AmiCodec, AmiFrame, AmiMessage};
use crate::http::server::ClientKey;
use crate::log_limit::LogLimiter;
use crate::metrics::metrics;

/// Bad packets (garbage, oversized, no `Action:`) a client may send.
pub const MAX_BAD_PACKETS: u32 = 8;
/// The greeting when the PBX's banner is not known yet.
const DEFAULT_BANNER: &str = "Asterisk Call Manager/9.0.0";
/// Events and answers written in one go.
const WRITE_BATCH: usize = 64 * 1024;
/// Margin on a synchronous Originate's own `Timeout`.
const ORIGINATE_MARGIN: Duration = Duration::from_secs(5);
/// Longest deadline given to a synchronous Originate.
const ORIGINATE_MAX: Duration = Duration::from_secs(600);

static FAILED_LOGIN_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));
static REFUSED_ACTION_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// How a session ended (the `reason` label of the disconnect counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client sent `Logoff`.
    Logoff,
    /// The client closed the connection.
    Closed,
    /// Its queue overflowed.
    Overflow,
    /// The proxy fell behind the PBX's events.
    Lagged,
    /// A write blocked for `write_timeout`.
    WriteTimeout,
    /// A write failed.
    WriteError,
    /// A read failed.
    ReadError,
    /// Wrong credentials.
    LoginFailed,
    /// No login in time.
    LoginTimeout,
    /// Too many bad packets.
    BadPackets,
    /// callhook is stopping.
    Shutdown,
}

impl End {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            End::Logoff => "logoff",
            End::Closed => "closed",
            End::Overflow => "overflow",
            End::Lagged => "lagged",
            End::WriteTimeout => "write_timeout",
            End::WriteError => "write_error",
            End::ReadError => "read_error",
            End::LoginFailed => "login_failed",
            End::LoginTimeout => "login_timeout",
            End::BadPackets => "bad_packets",
            End::Shutdown => "shutdown",
        }
    }
}

type Answer = (u64, Result<ActionResponse, AmiError>);

struct Conn {
    shared: Arc<Shared>,
    client: u64,
    peer: SocketAddr,
    key: ClientKey,
    rd: FramedRead<OwnedReadHalf, AmiCodec>,
    wr: OwnedWriteHalf,
    bad: u32,
    challenge: Option<String>,
    /// Challenges asked for before login.
    challenges: u32,
    kill: Arc<Kill>,
}

/// Serves one accepted connection until it ends.
pub(crate) async fn run(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, client: u64) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let codec = AmiCodec::with_max_packet(shared.cfg.max_packet).without_banner();
    let mut c = Conn {
        key: ClientKey::of(peer.ip()),
        shared,
        client,
        peer,
        rd: FramedRead::new(rd, codec),
        wr,
        bad: 0,
        challenge: None,
        challenges: 0,
        kill: Arc::new(Kill::default()),
    };
    let end = c.serve().await;
    metrics()
        .ami_proxy
        .disconnects
        .with_label_values(&[end.label()])
        .inc();
    let _ = c.wr.shutdown().await;
}

impl Conn {
    async fn serve(&mut self) -> End {
        let banner = self
            .shared
            .banner()
            .unwrap_or_else(|| DEFAULT_BANNER.to_string());
        if let Err(e) = self.write(format!("{banner}\r\n").as_bytes()).await {
            return e;
        }
        let (user, mask) = match self.login().await {
            Ok(x) => x,
            Err(e) => return e,
        };
        info!(user = %user.username, peer = %self.peer, pbx = %user.pbx, "AMI proxy client logged in");
        let end = self.logged_in(&user, mask).await;
        info!(user = %user.username, peer = %self.peer, reason = end.label(), "AMI proxy client disconnected");
        end
    }

    /// Writes `bytes`, bounded by `write_timeout`, the hub's kill and shutdown.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        let deadline = Instant::now() + self.shared.cfg.write_timeout;
        let kill = self.kill.token.clone();
        let shutdown = self.shared.shutdown.clone();
        tokio::select! {
            r = timeout_at(deadline, self.wr.write_all(bytes)) => match r {
                Err(_) => Err(End::WriteTimeout),
                Ok(Err(_)) => Err(End::WriteError),
                Ok(Ok(())) => Ok(()),
            },
            _ = kill.cancelled() => Err(self.killed()),
            _ = shutdown.cancelled() => Err(End::Shutdown),
        }
    }

    /// Counts a pre-login Challenge; true from the second one on.
    fn challenges_seen(&mut self) -> bool {
        self.challenges += 1;
        self.challenges > 1
    }

    fn killed(&self) -> End {
        match self.kill.reason.get() {
            Some(&"lagged") => End::Lagged,
            _ => End::Overflow,
        }
    }

    /// A skipped or action-less packet; `Err` once there were too many.
    fn bad_packet(&mut self) -> Result<(), End> {
        self.bad += 1;
        if self.bad > MAX_BAD_PACKETS {
            warn!(peer = %self.peer, "AMI proxy client sent too many bad packets; disconnecting");
            return Err(End::BadPackets);
        }
        Ok(())
    }

    fn skipped(&mut self, reason: &'static str, bytes: usize) -> Result<(), End> {
        metrics()
            .ami_proxy
            .packets_skipped
            .with_label_values(&[reason])
            .inc();
        debug!(peer = %self.peer, "dropped a {reason} client packet of {bytes} bytes");
        self.bad_packet()
    }

    /// The next client packet (`Ok(None)`: nothing but skipped frames yet).
    fn frame(
        &mut self,
        f: Option<Result<AmiFrame, std::io::Error>>,
    ) -> Result<Option<AmiMessage>, End> {
        match f {
            None => Err(End::Closed),
            Some(Err(_)) => Err(End::ReadError),
            Some(Ok(AmiFrame::Message(m))) => Ok(Some(m)),
            Some(Ok(AmiFrame::Skipped { reason, bytes })) => {
                self.skipped(reason.as_str(), bytes).map(|()| None)
            }
            Some(Ok(AmiFrame::Banner(_))) => self.skipped("garbage", 0).map(|()| None),
            // The client codec ignores nothing.
            Some(Ok(AmiFrame::Ignored { .. })) => Ok(None),
        }
    }

    async fn login(&mut self) -> Result<(ProxyUser, EventMask), End> {
        let deadline = Instant::now() + self.shared.cfg.login_timeout;
        let shutdown = self.shared.shutdown.clone();
        loop {
            let f = tokio::select! {
                _ = shutdown.cancelled() => return Err(End::Shutdown),
                r = timeout_at(deadline, self.rd.next()) => match r {
                    Err(_) => {
                        metrics().ami_proxy.logins.with_label_values(&["timeout"]).inc();
                        return Err(End::LoginTimeout);
                    }
                    Ok(f) => f,
                },
            };
            let Some(m) = self.frame(f)? else { continue };
            let id = client_id(&m);
            let Some(action) = m.get("Action").map(str::to_ascii_lowercase) else {
                self.write(&wire::error(id.as_deref(), "Missing action in request"))
                    .await?;
                self.bad_packet()?;
                continue;
            };
            // Before login a client needs one Challenge and one Login: every
            // other packet counts as a bad one (a pre-login flood ends fast).
            match action.as_str() {
                "challenge" => {
                    self.challenge(&m, id.as_deref()).await?;
                    if self.challenges_seen() {
                        self.bad_packet()?;
                    }
                }
                "logoff" => {
                    self.write(&goodbye(id.as_deref())).await?;
                    return Err(End::Logoff);
                }
                "login" => {
                    let blocked = self.shared.limit.blocked(self.key);
                    let user = if blocked {
                        None
                    } else {
                        authenticate(&self.shared.cfg.users, &m, self.challenge.as_deref()).cloned()
                    };
                    let Some(user) = user else {
                        return Err(self.login_failed(&m, id.as_deref(), blocked).await);
                    };
                    self.shared.limit.succeeded(self.key);
                    metrics()
                        .ami_proxy
                        .logins
                        .with_label_values(&["success"])
                        .inc();
                    self.write(&wire::success(id.as_deref(), "Authentication accepted"))
                        .await?;
                    return Ok((user, login_mask(&m)));
                }
                _ => {
                    self.write(&wire::error(id.as_deref(), "Permission denied"))
                        .await?;
                    self.bad_packet()?;
                }
            }
        }
    }

    async fn challenge(&mut self, m: &AmiMessage, id: Option<&str>) -> Result<(), End> {
        if m.get("AuthType")
            .is_some_and(|t| t.eq_ignore_ascii_case("MD5"))
        {
            let c = self.challenge.get_or_insert_with(new_challenge).clone();
            self.write(&wire::response("Success", id, &[("Challenge", &c)]))
                .await
        } else {
            self.write(&wire::error(id, "Must specify AuthType")).await
        }
    }

    async fn login_failed(&mut self, m: &AmiMessage, id: Option<&str>, blocked: bool) -> End {
        self.shared.limit.failed(self.key);
        metrics()
            .ami_proxy
            .logins
            .with_label_values(&["failure"])
            .inc();
        if let Some(suppressed) = FAILED_LOGIN_LOG.check() {
            let name: String = m
                .get_raw("Username")
                .unwrap_or("")
                .chars()
                .take(64)
                .filter(|c| !c.is_control())
                .collect();
            warn!(
                peer = %self.peer,
                username = %name,
                blocked,
                suppressed,
                "AMI proxy login failed"
            );
        }
        // As Asterisk: a pause, the answer, then the connection closes.
        let shutdown = self.shared.shutdown.clone();
        tokio::select! {
            _ = sleep(self.shared.cfg.login_failure_delay) => {}
            _ = shutdown.cancelled() => return End::Shutdown,
        }
        match self.write(&wire::error(id, "Authentication failed")).await {
            Ok(()) => End::LoginFailed,
            Err(e) => e,
        }
    }

    async fn logged_in(&mut self, user: &ProxyUser, mask: EventMask) -> End {
        let Some(hub) = self.shared.hubs.get(&user.pbx).cloned() else {
            // Validation guarantees a hub per user's PBX.
            return End::Shutdown;
        };
        let (tx, mut rx) = mpsc::channel(self.shared.cfg.client_queue.max(1));
        let mask_cell = Arc::new(AtomicU32::new(mask.0));
        let filter = Arc::new(user.events.clone());
        hub.register(
            self.client,
            Subscriber {
                filter: filter.clone(),
                mask: mask_cell.clone(),
                tx,
                kill: self.kill.clone(),
            },
        );
        struct Unregister<'a>(&'a Hub, u64);
        impl Drop for Unregister<'_> {
            fn drop(&mut self) {
                self.0.unregister(self.1);
            }
        }
        let _unregister = Unregister(&hub, self.client);
        // Asterisk greets a session that reads `system` events.
        let booted = AmiMessage::from_pairs([
            ("Event", "FullyBooted"),
            ("Privilege", "system,all"),
            ("Status", "Fully Booted"),
        ]);
        if mask.allows(Some("system,all")) && filter.allows(&booted) {
            let mut out = Vec::new();
            wire::encode(&booted, ActionId::Keep, &mut out);
            if let Err(e) = self.write(&out).await {
                return e;
            }
        }
        let mut answers: FuturesUnordered<futures::future::BoxFuture<'static, Answer>> =
            FuturesUnordered::new();
        let mut inflight = Inflight::default();
        let shutdown = self.shared.shutdown.clone();
        let kill = self.kill.token.clone();
        let events_sent = metrics()
            .ami_proxy
            .events
            .with_label_values(&[&user.username]);
        let throttled = metrics()
            .ami_proxy
            .throttled
            .with_label_values(&[&user.username]);
        let mut rate = ActionRate::new(self.shared.cfg.max_actions_per_second);
        let mut was_throttled = false;
        loop {
            let room = answers.len() < self.shared.cfg.max_pending_actions.max(1);
            let wait = rate.wait_until(Instant::now());
            if wait.is_some() && !was_throttled {
                throttled.inc();
            }
            was_throttled = wait.is_some();
            let paced = wait.unwrap_or_else(Instant::now);
            let step: Result<(), End> = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Err(End::Shutdown),
                _ = kill.cancelled() => Err(self.killed()),
                _ = sleep_until(paced), if wait.is_some() => Ok(()),
                Some((k, r)) = answers.next(), if !answers.is_empty() => {
                    self.answer(user, &mut inflight, k, r).await
                }
                out = rx.recv() => match out {
                    // The hub dropped us (overflow): the kill says why.
                    None => Err(self.killed()),
                    Some(first) => {
                        let mut buf = Vec::new();
                        let mut n = 0u64;
                        let mut next = Some(first);
                        while let Some(o) = next.take() {
                            n += self.outgoing(o, &mut inflight, &mut buf);
                            if buf.len() < WRITE_BATCH {
                                next = rx.try_recv().ok();
                            }
                        }
                        events_sent.inc_by(n);
                        if buf.is_empty() { Ok(()) } else { self.write(&buf).await }
                    }
                },
                f = self.rd.next(), if room && wait.is_none() => match self.frame(f) {
                    Err(e) => Err(e),
                    Ok(None) => Ok(()),
                    Ok(Some(m)) => {
                        rate.take(Instant::now());
                        self.action(user, &hub, &mask_cell, m, &mut inflight, &mut answers).await
                    }
                },
            };
            if let Err(e) = step {
                return e;
            }
        }
    }

    /// Writes the answer to action `k`.
    async fn answer(
        &mut self,
        user: &ProxyUser,
        inflight: &mut Inflight,
        k: u64,
        r: Result<ActionResponse, AmiError>,
    ) -> Result<(), End> {
        let mut buf = Vec::new();
        if let Some(outcome) = inflight.answer(k, r, &mut buf) {
            count(user, outcome);
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.write(&buf).await
    }

    /// Encodes one queued item into `buf`; 1 when it was written.
    fn outgoing(&self, o: Outgoing, inflight: &mut Inflight, buf: &mut Vec<u8>) -> u64 {
        match o {
            Outgoing::Event(ev) => {
                wire::encode(&ev, ActionId::Keep, buf);
                1
            }
            Outgoing::Own { k, msg } => {
                let n = inflight.event(k, msg, buf);
                if n.is_none() {
                    debug!(peer = %self.peer, "late answer for a forgotten action");
                }
                n.unwrap_or(0)
            }
        }
    }

    async fn action(
        &mut self,
        user: &ProxyUser,
        hub: &Arc<Hub>,
        mask: &AtomicU32,
        m: AmiMessage,
        inflight: &mut Inflight,
        answers: &mut FuturesUnordered<futures::future::BoxFuture<'static, Answer>>,
    ) -> Result<(), End> {
        let id = client_id(&m);
        let idr = id.as_deref();
        let Some(name) = m.get("Action").map(|a| a.trim().to_string()) else {
            self.write(&wire::error(idr, "Missing action in request"))
                .await?;
            return self.bad_packet();
        };
        match name.to_ascii_lowercase().as_str() {
            "ping" => {
                count(user, "local");
                let ts = format!("{:.6}", crate::source::now_epoch());
                return self
                    .write(&wire::response(
                        "Success",
                        idr,
                        &[("Ping", "Pong"), ("Timestamp", &ts)],
                    ))
                    .await;
            }
            "logoff" => {
                count(user, "local");
                self.write(&goodbye(idr)).await?;
                return Err(End::Logoff);
            }
            "login" => {
                count(user, "local");
                return self
                    .write(&wire::success(idr, "Already authenticated"))
                    .await;
            }
            "challenge" => {
                count(user, "local");
                return self.challenge(&m, idr).await;
            }
            "events" => {
                count(user, "local");
                let reply = match m.get_raw("EventMask").and_then(EventMask::parse) {
                    Some(new) => {
                        mask.store(new.0, Ordering::Relaxed);
                        let state = if new.is_on() { "On" } else { "Off" };
                        wire::response("Success", idr, &[("Events", state)])
                    }
                    None => wire::error(idr, "Invalid event mask"),
                };
                return self.write(&reply).await;
            }
            "filter" | "waitevent" => {
                count(user, "refused");
                return self
                    .write(&wire::error(
                        idr,
                        "Permission denied (not available through the callhook AMI proxy)",
                    ))
                    .await;
            }
            _ => {}
        }
        if let Err(why) = user.actions.check(&name, &m) {
            count(user, "refused");
            if let Some(suppressed) = REFUSED_ACTION_LOG.check() {
                let shown: String = name.chars().take(64).filter(|c| !c.is_control()).collect();
                warn!(user = %user.username, peer = %self.peer, action = %shown, reason = %why, suppressed, "AMI proxy refused an action");
            }
            return self.write(&wire::error(idr, "Permission denied")).await;
        }
        let Some(handle) = hub.handle() else {
            count(user, "link_down");
            return self
                .write(&wire::error(
                    idr,
                    "The PBX connection is down (callhook AMI proxy); try again later",
                ))
                .await;
        };
        let mut action = Action::new(name.clone());
        for (k, v) in m.fields() {
            if k.is_empty()
                || k.eq_ignore_ascii_case("Action")
                || k.eq_ignore_ascii_case("ActionID")
            {
                continue;
            }
            action = action.field(k, v);
        }
        let is_originate = name.eq_ignore_ascii_case("Originate");
        let asynchronous = m.get("Async").is_some_and(is_true);
        let timeout = (is_originate && !asynchronous).then(|| originate_deadline(&m));
        let k = inflight.open(id.clone(), is_originate && asynchronous);
        let opts = SendOptions {
            await_event: None,
            id_prefix: Some(hub.id_prefix(self.client, k)),
            timeout,
            proxied: true,
        };
        answers.push(Box::pin(async move {
            (k, handle.send_with(action, opts).await)
        }));
        Ok(())
    }
}

fn count(user: &ProxyUser, outcome: &str) {
    metrics()
        .ami_proxy
        .actions
        .with_label_values(&[&user.username, outcome])
        .inc();
}

/// The client's ActionID, verbatim, when it sent a non-empty one.
fn client_id(m: &AmiMessage) -> Option<String> {
    m.get_raw("ActionID")
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn goodbye(id: Option<&str>) -> Vec<u8> {
    wire::response("Goodbye", id, &[("Message", "Thanks for all the fish.")])
}

/// Asterisk's `ast_true`.
fn is_true(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "yes" | "true" | "y" | "t" | "1" | "on"
    )
}

/// A synchronous Originate waits for the call: its `Timeout` (ms, default
/// 30 s) plus a margin.
fn originate_deadline(m: &AmiMessage) -> Duration {
    let ms = m
        .get("Timeout")
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(30_000);
    (Duration::from_millis(ms) + ORIGINATE_MARGIN).min(ORIGINATE_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn originate_deadlines() {
        let m = |t: &str| AmiMessage::from_pairs([("Action", "Originate"), ("Timeout", t)]);
        assert_eq!(originate_deadline(&m("10000")), Duration::from_secs(15));
        assert_eq!(originate_deadline(&m("junk")), Duration::from_secs(35));
        assert_eq!(originate_deadline(&m("99999999999")), ORIGINATE_MAX);
        assert!(is_true("True") && is_true("1") && !is_true("false") && !is_true(""));
    }
}
