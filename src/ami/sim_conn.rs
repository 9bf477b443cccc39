//! One simulated AMI connection: banner, login (MD5 challenge or plain),
//! resync grace, the gate, the replay with its timing, what follows it
//! ([`AfterCapture`]) and the answers to every action meanwhile, Originate
//! outcomes included. See [`super::simulator`] for the behaviour.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::codec::FramedRead;

use super::client::md5_key;
use super::codec::{AmiCodec, AmiFrame};
use super::message::AmiMessage;
use super::sim_capture::{canned_list, Prepared};
use super::sim_originate::{self, OriginateRecording, OriginateRequest};
use super::sim_state;
use super::sim_wire::{
    empty_list, encode_message, encode_with_id, goodbye, pong, response, IdRewrite,
};
use super::simulator::{AfterCapture, SimStats};

/// Longest pause reproduced between two captured events.
const MAX_GAP: Duration = Duration::from_secs(5);
/// Time allowed to log in.
const AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// After closing our side, how long to wait for the client's EOF.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);
/// Distinct action names counted before the rest is folded into `<other>`.
const MAX_ACTION_NAMES: usize = 256;
/// Replay writes are batched up to this size.
const WRITE_BATCH: usize = 64 * 1024;

pub(super) struct Settings {
    pub(super) username: String,
    pub(super) secret: String,
    pub(super) speed: Option<f64>,
    pub(super) resync_grace: Duration,
    pub(super) pause_before_close: Duration,
    pub(super) originates: Vec<OriginateRecording>,
    pub(super) gate: watch::Receiver<bool>,
}

/// What to do after answering an action.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Continue,
    /// A `CoreShowChannels`/`Status` was answered.
    Resynced,
    /// Close the connection now.
    Close,
}

struct Conn {
    framed: FramedRead<OwnedReadHalf, AmiCodec>,
    wr: OwnedWriteHalf,
    prepared: Arc<Prepared>,
    settings: Arc<Settings>,
    stats: Arc<watch::Sender<SimStats>>,
    /// Frames of Originate outcomes still to send, by due time.
    outcomes: std::collections::BTreeMap<(Instant, u64), Vec<u8>>,
    outcome_seq: u64,
}

pub(super) async fn serve(
    stream: TcpStream,
    prepared: Arc<Prepared>,
    settings: Arc<Settings>,
    stats: Arc<watch::Sender<SimStats>>,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut conn = Conn {
        framed: FramedRead::new(rd, AmiCodec::new().without_banner()),
        wr,
        prepared,
        settings,
        stats,
        outcomes: std::collections::BTreeMap::new(),
        outcome_seq: 0,
    };
    let banner = format!("Asterisk Call Manager/{}\r\n", conn.prepared.version);
    conn.wr.write_all(banner.as_bytes()).await?;
    if !conn.login().await? {
        return Ok(());
    }
    if !conn.resync_grace().await? {
        return Ok(());
    }
    if !conn.wait_gate().await? {
        return Ok(());
    }
    if !conn.replay().await? {
        return Ok(());
    }
    conn.stats.send_modify(|s| s.replays_completed += 1);
    conn.after_capture().await
}

impl Conn {
    /// The next action from the client; `None` on EOF or a read error.
    async fn next_action(&mut self) -> Option<AmiMessage> {
        loop {
            match self.framed.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(AmiFrame::Message(m))) => return Some(m),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next action, sending due Originate outcome frames meanwhile.
    async fn next_action_serving(&mut self) -> io::Result<Option<AmiMessage>> {
        loop {
            self.flush_outcomes().await?;
            let Some(((due, _), _)) = self.outcomes.first_key_value() else {
                return Ok(self.next_action().await);
            };
            let due = *due;
            tokio::select! {
                m = self.next_action() => return Ok(m),
                _ = sleep_until(due) => {}
            }
        }
    }

    /// Writes the outcome frames that are due.
    async fn flush_outcomes(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let mut batch = Vec::new();
        while let Some(e) = self.outcomes.first_entry() {
            if e.key().0 > now {
                break;
            }
            batch.extend_from_slice(&e.remove());
        }
        if !batch.is_empty() {
            self.wr.write_all(&batch).await?;
        }
        Ok(())
    }

    /// Schedules the recorded answer to an `Originate`; false when there
    /// is no recording to answer with.
    fn schedule_originate(&mut self, msg: &AmiMessage) -> bool {
        let channel = msg.get("Channel").unwrap_or("");
        let exten = msg.get("Exten").unwrap_or("");
        let Some(rec) = OriginateRecording::pick(&self.settings.originates, channel, exten) else {
            return false;
        };
        let modern = self
            .prepared
            .version
            .split('.')
            .next()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .is_none_or(|m| m >= 2);
        let req = OriginateRequest {
            action_id: msg.get_raw("ActionID"),
            channel,
            exten,
            channel_id: msg.get("ChannelId"),
            other_channel_id: msg.get("OtherChannelId"),
            asynchronous: msg.get("Async").is_some_and(|a| {
                a.eq_ignore_ascii_case("true") || a.eq_ignore_ascii_case("yes") || a == "1"
            }),
            modern,
        };
        let now = Instant::now();
        let frames = sim_originate::schedule(rec, &req, self.settings.speed, |m| {
            encode_message(m, IdRewrite::Keep)
        });
        for f in frames {
            self.outcome_seq += 1;
            self.outcomes
                .insert((now + f.delay, self.outcome_seq), f.bytes);
        }
        true
    }

    fn record(&self, name: &str) {
        let name = if name.is_empty() { "<none>" } else { name };
        self.stats.send_modify(|s| {
            // Names come from the client: bound the map.
            let key = if s.actions.len() < MAX_ACTION_NAMES || s.actions.contains_key(name) {
                name
            } else {
                "<other>"
            };
            *s.actions.entry(key.to_string()).or_insert(0) += 1;
        });
    }

    /// Returns true when logged in.
    async fn login(&mut self) -> io::Result<bool> {
        let deadline = Instant::now() + AUTH_TIMEOUT;
        let mut challenge: Option<String> = None;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.next_action()).await {
                Err(_) | Ok(None) => return Ok(false),
                Ok(Some(m)) => m,
            };
            let name = msg.get("Action").unwrap_or("").to_string();
            self.record(&name);
            let id = msg.get_raw("ActionID");
            match name.to_ascii_lowercase().as_str() {
                "challenge" => {
                    if msg
                        .get("AuthType")
                        .is_some_and(|t| t.eq_ignore_ascii_case("MD5"))
                    {
                        let c = rand::thread_rng().gen_range(100_000_000u32..1_000_000_000);
                        let c = c.to_string();
                        let out = response(&[("Response", "Success"), ("Challenge", &c)], id);
                        challenge = Some(c);
                        self.wr.write_all(&out).await?;
                    } else {
                        let out = response(
                            &[("Response", "Error"), ("Message", "Must specify AuthType")],
                            id,
                        );
                        self.wr.write_all(&out).await?;
                    }
                }
                "login" => {
                    if self.credentials_ok(&msg, challenge.as_deref()) {
                        let out = response(
                            &[
                                ("Response", "Success"),
                                ("Message", "Authentication accepted"),
                            ],
                            id,
                        );
                        self.wr.write_all(&out).await?;
                        self.stats.send_modify(|s| s.logins += 1);
                        return Ok(true);
                    }
                    let out = response(
                        &[("Response", "Error"), ("Message", "Authentication failed")],
                        id,
                    );
                    self.stats.send_modify(|s| s.failed_logins += 1);
                    self.wr.write_all(&out).await?;
                    self.close().await;
                    return Ok(false);
                }
                "ping" => {
                    let out = pong(id);
                    self.wr.write_all(&out).await?;
                }
                "logoff" => {
                    let out = goodbye(id);
                    self.wr.write_all(&out).await?;
                    self.close().await;
                    return Ok(false);
                }
                _ => {
                    let out = response(
                        &[("Response", "Error"), ("Message", "Permission denied")],
                        id,
                    );
                    self.wr.write_all(&out).await?;
                }
            }
        }
    }

    fn credentials_ok(&self, msg: &AmiMessage, challenge: Option<&str>) -> bool {
        if msg.get_raw("Username") != Some(self.settings.username.as_str()) {
            return false;
        }
        let md5 = msg
            .get("AuthType")
            .is_some_and(|t| t.eq_ignore_ascii_case("MD5"));
        if md5 {
            match (challenge, msg.get("Key")) {
                (Some(c), Some(key)) => md5_key(c, &self.settings.secret).eq_ignore_ascii_case(key),
                _ => false,
            }
        } else {
            msg.get_raw("Secret") == Some(self.settings.secret.as_str())
        }
    }

    /// Answers `m`, closing the connection when it asks to. `None` when the
    /// connection is over (no action: EOF; or closed after this one).
    async fn serve_one(&mut self, m: Option<AmiMessage>) -> io::Result<Option<Reply>> {
        let Some(m) = m else { return Ok(None) };
        match self.answer(&m).await? {
            Reply::Close => {
                self.close().await;
                Ok(None)
            }
            reply => Ok(Some(reply)),
        }
    }

    /// Answers actions until the client's resync is answered or the grace
    /// expires. False when the connection is over.
    async fn resync_grace(&mut self) -> io::Result<bool> {
        let until = Instant::now() + self.settings.resync_grace;
        loop {
            tokio::select! {
                m = self.next_action_serving() => match self.serve_one(m?).await? {
                    None => return Ok(false),
                    Some(Reply::Resynced) => return Ok(true),
                    Some(_) => {}
                },
                _ = sleep_until(until) => return Ok(true),
            }
        }
    }

    /// Answers actions until the gate opens. False when the connection is over.
    async fn wait_gate(&mut self) -> io::Result<bool> {
        let mut gate = self.settings.gate.clone();
        loop {
            if *gate.borrow_and_update() {
                return Ok(true);
            }
            tokio::select! {
                m = self.next_action_serving() => if self.serve_one(m?).await?.is_none() {
                    return Ok(false);
                },
                r = gate.changed() => if r.is_err() { return Ok(true) },
            }
        }
    }

    /// Answers actions until `until`. False when the connection is over.
    async fn serve_until(&mut self, until: Instant) -> io::Result<bool> {
        loop {
            tokio::select! {
                m = self.next_action_serving() => if self.serve_one(m?).await?.is_none() {
                    return Ok(false);
                },
                _ = sleep_until(until) => return Ok(true),
            }
        }
    }

    /// Answers the actions already received, without waiting for more.
    async fn serve_ready(&mut self) -> io::Result<bool> {
        self.flush_outcomes().await?;
        loop {
            let m = tokio::select! {
                biased;
                m = self.next_action() => m,
                _ = std::future::ready(()) => return Ok(true),
            };
            if self.serve_one(m).await?.is_none() {
                return Ok(false);
            }
        }
    }

    /// Replays the capture. False when the connection is over.
    async fn replay(&mut self) -> io::Result<bool> {
        let prepared = self.prepared.clone();
        let speed = self.settings.speed;
        let mut last_ts: Option<f64> = None;
        let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
        for frame in &prepared.frames {
            if let (Some(speed), Some(ts)) = (speed, frame.timestamp) {
                if let Some(prev) = last_ts {
                    let gap = ((ts - prev).max(0.0) / speed).min(MAX_GAP.as_secs_f64());
                    if gap > 0.0 {
                        if !batch.is_empty() {
                            self.wr.write_all(&batch).await?;
                            batch.clear();
                        }
                        let until = Instant::now() + Duration::from_secs_f64(gap);
                        if !self.serve_until(until).await? {
                            return Ok(false);
                        }
                    }
                }
            }
            if let Some(ts) = frame.timestamp {
                last_ts = Some(ts);
            }
            batch.extend_from_slice(&frame.bytes);
            if batch.len() >= WRITE_BATCH {
                self.wr.write_all(&batch).await?;
                batch.clear();
                if !self.serve_ready().await? {
                    return Ok(false);
                }
            }
        }
        if !batch.is_empty() {
            self.wr.write_all(&batch).await?;
        }
        self.serve_ready().await
    }

    async fn after_capture(&mut self) -> io::Result<()> {
        match self.prepared.then.clone() {
            AfterCapture::Close => {
                let pause = self.settings.pause_before_close;
                if !pause.is_zero() && !self.serve_until(Instant::now() + pause).await? {
                    return Ok(());
                }
                self.close().await;
                Ok(())
            }
            AfterCapture::StayOpen | AfterCapture::CloseOnAction(_) => {
                while let Some(m) = self.next_action_serving().await? {
                    if self.serve_one(Some(m)).await?.is_none() {
                        break;
                    }
                }
                Ok(())
            }
            AfterCapture::Unresponsive => {
                while let Some(m) = self.next_action().await {
                    self.record(m.get("Action").unwrap_or(""));
                }
                Ok(())
            }
        }
    }

    /// Closes our side (FIN, no Goodbye) and waits briefly for the client's EOF.
    async fn close(&mut self) {
        let _ = self.wr.shutdown().await;
        let framed = &mut self.framed;
        let _ = timeout(CLOSE_DRAIN, async {
            while let Some(Ok(_)) = framed.next().await {}
        })
        .await;
    }

    /// Answers one post-login action.
    async fn answer(&mut self, msg: &AmiMessage) -> io::Result<Reply> {
        let name = msg.get("Action").unwrap_or("").to_string();
        self.record(&name);
        if let AfterCapture::CloseOnAction(target) = &self.prepared.then {
            if target.eq_ignore_ascii_case(&name) {
                return Ok(Reply::Close);
            }
        }
        let id = msg.get_raw("ActionID");
        let lower = name.to_ascii_lowercase();
        let (out, reply) = match lower.as_str() {
            "" => (
                response(
                    &[
                        ("Response", "Error"),
                        ("Message", "Missing action in request"),
                    ],
                    id,
                ),
                Reply::Continue,
            ),
            "ping" => (pong(id), Reply::Continue),
            "logoff" => (goodbye(id), Reply::Close),
            "originate" if self.schedule_originate(msg) => {
                self.flush_outcomes().await?;
                return Ok(Reply::Continue);
            }
            _ => {
                let resync = lower == "coreshowchannels" || lower == "status";
                let reply = if resync {
                    Reply::Resynced
                } else {
                    Reply::Continue
                };
                if let Some(list) = self.prepared.canned.get(&lower) {
                    (canned_list(list, id), reply)
                } else if lower == "coreshowchannels" {
                    (
                        empty_list("Channels will follow", "CoreShowChannelsComplete", id),
                        reply,
                    )
                } else if lower == "status" {
                    (
                        empty_list("Channel status will follow", "StatusComplete", id),
                        reply,
                    )
                } else if let Some(msgs) =
                    sim_state::answer(&lower, msg, &self.prepared.version, &self.prepared.states)
                {
                    let mut out = Vec::new();
                    for m in &msgs {
                        out.extend_from_slice(&encode_with_id(m, id));
                    }
                    (out, Reply::Continue)
                } else {
                    (
                        response(
                            &[("Response", "Success"), ("Message", "queued (simulated)")],
                            id,
                        ),
                        Reply::Continue,
                    )
                }
            }
        };
        self.wr.write_all(&out).await?;
        Ok(reply)
    }
}
