//! `callhook replay`: a recorded AMI stream through the live code path.
//!
//! A capture is every byte one AMI connection received. Replay frames it
//! with the same codec as the client ([`route::codec`]: noise is recognised
//! from its first line and never built), sorts frames with the same
//! classification ([`route::route`]: responses and list items never reach
//! the call model; the channel list answered right after login is the
//! reconnect snapshot), and feeds the same [`Normalizer`]. Several captures
//! in a row are successive connections of one PBX (a disconnect between
//! them), so `replay reconnect-before.ami reconnect-after.ami` replays a
//! reconnect.
//!
//! Captures are streamed ([`replay_from`] reads them in 64 KiB pieces):
//! memory does not grow with the size of a capture, only with the calls in
//! progress.
//!
//! Event time comes from the events' `Timestamp` headers; events without one
//! take the last time seen.

use std::io::{self, Read, Write};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::ami::route::{self, ends_list, starts_list, Route};
use crate::ami::{AmiCodec, AmiFrame, AmiMessage};
use crate::model::{ModelEvent, State};
use crate::normalize::Normalizer;
use crate::source::{PbxId, SourceEvent};

/// Bytes read from a capture at a time.
const READ_SIZE: usize = 64 * 1024;

/// Sorts the messages of one AMI connection as the live client does when it
/// has sent no action but the post-login snapshot: unsolicited events go to
/// the normalizer (noise does not); the first channel list completed before
/// any call event becomes the snapshot; every other response or list item is
/// dropped.
#[derive(Debug, Default)]
pub struct Router {
    /// ActionID of the list being collected, and its items.
    list: Option<(String, Vec<AmiMessage>)>,
    /// A call event was seen: later lists are someone else's business.
    saw_call_event: bool,
    snapshot_taken: bool,
}

/// What the router made of one message.
#[derive(Debug)]
pub enum Routed {
    /// An unsolicited event for the normalizer.
    Event(AmiMessage),
    /// The post-login channel snapshot.
    Snapshot(Vec<AmiMessage>),
    /// A response, list item or noise event that is not the model's business.
    Dropped,
}

impl Router {
    /// Routes one message.
    pub fn route(&mut self, msg: AmiMessage) -> Routed {
        match route::route(&msg) {
            Route::Response(id) => {
                if let (true, Some(id)) = (starts_list(&msg), id) {
                    self.list = Some((id.to_string(), Vec::new()));
                }
                Routed::Dropped
            }
            Route::ListItem(aid) => {
                let in_list = self.list.as_ref().is_some_and(|(id, _)| id == aid);
                if !in_list {
                    return Routed::Dropped;
                }
                if ends_list(&msg) {
                    let items = self.list.take().map(|(_, i)| i).unwrap_or_default();
                    let is_channels = items
                        .iter()
                        .all(|m| m.is_event("CoreShowChannel") || m.is_event("Status"));
                    if is_channels && !self.saw_call_event && !self.snapshot_taken {
                        self.snapshot_taken = true;
                        return Routed::Snapshot(items);
                    }
                } else if let Some((_, items)) = self.list.as_mut() {
                    items.push(msg);
                }
                Routed::Dropped
            }
            Route::Event | Route::Broadcast(_) => {
                if !self.saw_call_event && crate::normalize::canonical::canonicalize(&msg).is_some()
                {
                    self.saw_call_event = true;
                }
                Routed::Event(msg)
            }
            Route::Noise | Route::Other => Routed::Dropped,
        }
    }
}

/// Output format of `replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (the documented schema).
    Jsonl,
    /// A readable timeline.
    Text,
}

/// Totals of a replay run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayStats {
    /// Frames decoded (noise included).
    pub frames: usize,
    /// Unsolicited events fed to the normalizer.
    pub events: usize,
    /// Packets the codec skipped.
    pub skipped: usize,
    /// Model events emitted.
    pub emitted: usize,
}

/// The AMI packets (messages, not banners or skipped garbage) in a
/// capture: 0 means it is not an AMI capture at all.
pub fn count_packets(bytes: &[u8]) -> usize {
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::from(bytes);
    let mut n = 0;
    while let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
        if matches!(frame, AmiFrame::Message(_)) {
            n += 1;
        }
    }
    n
}

/// True when the capture read from `r` holds at least one AMI packet
/// (streamed; stops at the first one).
pub fn has_packets(mut r: impl Read) -> io::Result<bool> {
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut chunk = vec![0u8; READ_SIZE];
    loop {
        let n = match r.read(&mut chunk) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        loop {
            let frame = if n == 0 {
                codec.decode_eof(&mut buf)
            } else {
                codec.decode(&mut buf)
            };
            match frame {
                Ok(Some(AmiFrame::Message(_))) => return Ok(true),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if n == 0 {
            return Ok(false);
        }
    }
}

/// Replays in-memory captures (successive connections of PBX `pbx`) into
/// `normalizer`, calling `sink` for every model event in order.
pub fn replay(
    captures: &[Vec<u8>],
    pbx: &PbxId,
    normalizer: &mut Normalizer,
    sink: impl FnMut(&ModelEvent),
) -> ReplayStats {
    let mut run = Run::new(pbx, normalizer, sink);
    for bytes in captures {
        // Reading a slice cannot fail.
        let _ = run.capture(&bytes[..]);
    }
    run.finish()
}

/// Replays captures read from `captures` (successive connections of PBX
/// `pbx`, e.g. open files), streaming: at most 64 KiB of each is held at a
/// time besides the packet being framed. Fails on the first read error
/// (the model events of what was read before it have been passed to `sink`).
pub fn replay_from<R: Read>(
    captures: impl IntoIterator<Item = R>,
    pbx: &PbxId,
    normalizer: &mut Normalizer,
    sink: impl FnMut(&ModelEvent),
) -> io::Result<ReplayStats> {
    let mut run = Run::new(pbx, normalizer, sink);
    for r in captures {
        run.capture(r)?;
    }
    Ok(run.finish())
}

/// One replay in progress.
struct Run<'a, F> {
    pbx: &'a PbxId,
    normalizer: &'a mut Normalizer,
    sink: F,
    stats: ReplayStats,
    out: Vec<ModelEvent>,
    last_t: f64,
    /// Events seen before any packet carried a time (an Asterisk 11 login
    /// and its snapshot precede the first `Timestamp`): they are handled,
    /// in order, at the first time the capture gives, never at epoch 0.
    untimed: Vec<SourceEvent>,
    captures: usize,
}

/// Events held back waiting for the capture's first time, at most.
const MAX_UNTIMED: usize = 10_000;

fn set_time(ev: &mut SourceEvent, t: f64) {
    match ev {
        SourceEvent::Ami { received_at, .. } | SourceEvent::AmiSnapshot { received_at, .. } => {
            *received_at = t
        }
        SourceEvent::AmiDisconnected { at, .. } | SourceEvent::AmiOriginate { at, .. } => *at = t,
        SourceEvent::Push { received_at, .. } => *received_at = t,
    }
}

impl<'a, F: FnMut(&ModelEvent)> Run<'a, F> {
    fn new(pbx: &'a PbxId, normalizer: &'a mut Normalizer, sink: F) -> Self {
        Self {
            pbx,
            normalizer,
            sink,
            stats: ReplayStats::default(),
            out: Vec::new(),
            last_t: 0.0,
            untimed: Vec::new(),
            captures: 0,
        }
    }

    /// One capture: one connection.
    fn capture(&mut self, mut r: impl Read) -> io::Result<()> {
        if self.captures > 0 {
            let ev = SourceEvent::AmiDisconnected {
                pbx: self.pbx.clone(),
                at: self.last_t,
            };
            self.handle(&ev);
        }
        self.captures += 1;
        let mut router = Router::default();
        let mut codec = route::codec(AmiCodec::DEFAULT_MAX_PACKET);
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        let mut eof = false;
        loop {
            let frame = if eof {
                codec.decode_eof(&mut buf)
            } else {
                codec.decode(&mut buf)
            };
            match frame {
                Ok(Some(frame)) => self.frame(&mut router, frame),
                Ok(None) if eof => return Ok(()),
                Ok(None) | Err(_) => {
                    buf.reserve(READ_SIZE);
                    let start = buf.len();
                    buf.resize(start + READ_SIZE, 0);
                    let n = loop {
                        match r.read(&mut buf[start..]) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            other => break other,
                        }
                    };
                    match n {
                        Ok(n) => {
                            buf.truncate(start + n);
                            eof = n == 0;
                        }
                        Err(e) => {
                            buf.truncate(start);
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    fn frame(&mut self, router: &mut Router, frame: AmiFrame) {
        self.stats.frames += 1;
        let msg = match frame {
            AmiFrame::Message(m) => m,
            AmiFrame::Skipped { .. } => {
                self.stats.skipped += 1;
                return;
            }
            AmiFrame::Banner(_) | AmiFrame::Ignored { .. } => return,
        };
        let ev = match router.route(msg) {
            Routed::Event(m) => {
                if let Some(t) = m.timestamp() {
                    self.last_t = self.last_t.max(t);
                }
                self.stats.events += 1;
                SourceEvent::Ami {
                    pbx: self.pbx.clone(),
                    received_at: self.last_t,
                    msg: m,
                }
            }
            Routed::Snapshot(channels) => SourceEvent::AmiSnapshot {
                pbx: self.pbx.clone(),
                received_at: self.last_t,
                channels,
            },
            Routed::Dropped => return,
        };
        self.handle(&ev);
    }

    fn handle(&mut self, ev: &SourceEvent) {
        if self.last_t == 0.0 && self.untimed.len() < MAX_UNTIMED {
            self.untimed.push(ev.clone());
            return;
        }
        self.flush_untimed();
        self.normalizer.handle(ev, &mut self.out);
        self.emit();
    }

    /// Handles what waited for the first time, at that time.
    fn flush_untimed(&mut self) {
        for mut ev in std::mem::take(&mut self.untimed) {
            set_time(&mut ev, self.last_t);
            self.normalizer.handle(&ev, &mut self.out);
            self.emit();
        }
    }

    fn emit(&mut self) {
        for e in self.out.drain(..) {
            self.stats.emitted += 1;
            (self.sink)(&e);
        }
    }

    fn finish(mut self) -> ReplayStats {
        self.flush_untimed();
        // Let undecided channels settle (no wall clock in a replay).
        self.normalizer.tick(self.last_t + 60.0, &mut self.out);
        self.emit();
        self.stats
    }
}

/// Writes one model event in the chosen format.
pub fn write_event(w: &mut impl Write, ev: &ModelEvent, format: Format) -> std::io::Result<()> {
    match format {
        Format::Jsonl => {
            let line = serde_json::to_string(ev).map_err(std::io::Error::other)?;
            writeln!(w, "{line}")
        }
        Format::Text => writeln!(w, "{}", text_line(ev)),
    }
}

fn clock(ts: &crate::model::Timestamp) -> String {
    let s = ts.to_rfc3339();
    s.get(11..23).unwrap_or(&s).to_string()
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// One readable line per model event.
pub fn text_line(ev: &ModelEvent) -> String {
    match ev {
        ModelEvent::Leg(l) => {
            let arrow = match l.state {
                State::Ringing => "ringing",
                State::Answered => "answered",
                State::Hungup => "hung up",
            };
            let mut s = format!(
                "{}  {} {:<8} {} {:<9} {:<8} caller {} {:?} dialed {}",
                clock(&l.at),
                l.pbx,
                l.extension,
                if l.role == crate::model::Role::Caller { "(caller)" } else { "        " },
                arrow,
                l.direction.as_str(),
                or_dash(&l.caller_number),
                l.caller_name.as_deref().unwrap_or(""),
                or_dash(&l.dialed_number),
            );
            if let Some(q) = &l.queue {
                s.push_str(&format!(" via queue {q}"));
            }
            if let (Some(d), Some(disp)) = (l.duration, l.disposition) {
                s.push_str(&format!(" [{} after {:.1}s]", disp.as_str(), d));
            }
            s.push_str(&format!("  ({})", l.session_id));
            s
        }
        ModelEvent::CallState(c) => format!(
            "{}  {} call {} {} {} → {}{}  ({})",
            clock(&c.at),
            c.pbx,
            c.state.as_str(),
            c.direction.as_str(),
            or_dash(&c.caller_number),
            or_dash(&c.dialed_number),
            c.answered_by
                .as_ref()
                .map(|a| format!(" by {a}"))
                .unwrap_or_default(),
            c.session_id
        ),
        ModelEvent::Call(c) => format!(
            "{}  {} CALL {} {} {} {:?} → {}{} rang [{}] answered by {} (final {}) duration {:.1}s billsec {:.1}s  ({})",
            clock(&c.ended_at),
            c.pbx,
            c.disposition.as_str(),
            c.direction.as_str(),
            or_dash(&c.caller_number),
            c.caller_name.as_deref().unwrap_or(""),
            or_dash(&c.dialed_number),
            c.queue.as_ref().map(|q| format!(" via {q}")).unwrap_or_default(),
            c.extensions_rung.join(","),
            or_dash(&c.answered_by),
            or_dash(&c.final_answered_by),
            c.duration,
            c.billsec,
            c.session_id
        ),
    }
}

/// Writes one rendered request (for `replay --dry-run`), without a
/// target's own headers: see [`write_request_to`].
pub fn write_request(
    w: &mut impl Write,
    r: &crate::deliver::DeliveryRequest,
    format: Format,
) -> std::io::Result<()> {
    write_request_to(w, r, None, format)
}

/// Writes one rendered request as it would be sent to `target` (for
/// `--dry-run`): built by the same builder as the dispatcher's
/// ([`crate::deliver::http::build`]), so the URL is exactly the one sent;
/// the target's static headers and signature are included, and every
/// credential-like header value is masked (`***`: credential names, values
/// from the environment; the rules' `env:` values are already `***` in the
/// rendered request, see [`crate::deliver::secret`]). A request that would
/// not be sent says why. Text shows it as an HTTP request would look;
/// jsonl gives one object per line with the body as text.
pub fn write_request_to(
    w: &mut impl Write,
    r: &crate::deliver::DeliveryRequest,
    target: Option<&crate::deliver::Target>,
    format: Format,
) -> std::io::Result<()> {
    use crate::deliver::http::{build, Parts};
    let body = r
        .body
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    let unix = crate::source::now_epoch() as i64;
    let built = build(target, Parts::from(r), unix);
    let (url, headers, refused) = match &built {
        Ok(b) => {
            let headers: Vec<(String, String)> = b
                .headers
                .iter()
                .map(|(k, v)| {
                    let v =
                        if v.is_sensitive() || crate::deliver::outbox::sensitive_name(k.as_str()) {
                            "***".to_string()
                        } else {
                            String::from_utf8_lossy(v.as_bytes()).into_owned()
                        };
                    (k.as_str().to_string(), v)
                })
                .collect();
            (
                crate::deliver::outbox::mask_url(b.url.as_str()),
                headers,
                None,
            )
        }
        Err(e) => (
            crate::deliver::outbox::mask_url(&r.url),
            r.headers
                .iter()
                .map(|(k, v)| {
                    let v = if crate::deliver::outbox::sensitive_name(k) {
                        "***".to_string()
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect(),
            Some(e.to_string()),
        ),
    };
    match format {
        Format::Jsonl => {
            let v = serde_json::json!({
                "rule": r.rule,
                "target": r.target,
                "session_id": r.session_id,
                "event_id": r.event_id,
                "method": r.method,
                "url": url,
                "headers": headers,
                "body": body,
                "idempotency_key": r.idempotency_key,
                "expires_at": r.expires_at,
                "not_sent": refused,
            });
            writeln!(w, "{v}")
        }
        Format::Text => {
            writeln!(
                w,
                "# rule {} → target {} ({})",
                r.rule, r.target, r.event_id
            )?;
            if let Some(why) = &refused {
                writeln!(w, "# NOT SENT (dead at once): {why}")?;
            }
            writeln!(w, "{} {}", r.method.to_ascii_uppercase(), url)?;
            for (k, v) in &headers {
                writeln!(w, "{k}: {v}")?;
            }
            if let Some(b) = body {
                writeln!(w)?;
                writeln!(w, "{b}")?;
            }
            writeln!(w)
        }
    }
}
