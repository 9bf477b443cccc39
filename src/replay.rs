//! `callhook replay`: a recorded AMI stream through the live code path.
//!
//! A capture is every byte one AMI connection received. Replay frames it
//! with the same [`AmiCodec`], sorts frames the way the client does
//! ([`Router`]: responses and list items never reach the call model; the
//! channel list answered right after login is the reconnect snapshot), and
//! feeds the same [`Normalizer`]. Several captures in a row are successive
//! connections of one PBX (a disconnect between them), so
//! `replay reconnect-before.ami reconnect-after.ami` replays a reconnect.
//!
//! Event time comes from the events' `Timestamp` headers; events without one
//! take the last time seen.

use std::io::Write;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::ami::client::{ends_list, starts_list};
use crate::ami::{AmiCodec, AmiFrame, AmiMessage, MessageKind};
use crate::model::{ModelEvent, State};
use crate::normalize::Normalizer;
use crate::source::{PbxId, SourceEvent};

/// Sorts the frames of one AMI connection as the live client does when it
/// has sent no action but the post-login snapshot: unsolicited events go to
/// the normalizer; the first channel list completed before any call event
/// becomes the snapshot; every other response or list item is dropped.
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
    /// A response or list item that is not the model's business.
    Dropped,
}

impl Router {
    /// Routes one message.
    pub fn route(&mut self, msg: AmiMessage) -> Routed {
        match msg.kind() {
            MessageKind::Response(_) => {
                if starts_list(&msg) {
                    if let Some(id) = msg.action_id() {
                        self.list = Some((id.to_string(), Vec::new()));
                    }
                }
                Routed::Dropped
            }
            MessageKind::Event(name) => {
                let in_list = match (&self.list, msg.action_id()) {
                    (Some((id, _)), Some(aid)) => id == aid,
                    _ => false,
                };
                if in_list {
                    if ends_list(&msg) {
                        let items = self.list.take().map(|(_, i)| i).unwrap_or_default();
                        let is_channels = items.iter().all(|m| {
                            m.event().is_some_and(|e| {
                                e.eq_ignore_ascii_case("CoreShowChannel")
                                    || e.eq_ignore_ascii_case("Status")
                            })
                        });
                        if is_channels && !self.saw_call_event && !self.snapshot_taken {
                            self.snapshot_taken = true;
                            return Routed::Snapshot(items);
                        }
                    } else if let Some((_, items)) = self.list.as_mut() {
                        items.push(msg);
                    }
                    return Routed::Dropped;
                }
                // OriginateResponse carries the originator's ActionID but is
                // broadcast: it is an unsolicited event.
                if msg.action_id().is_some() && !name.eq_ignore_ascii_case("OriginateResponse") {
                    return Routed::Dropped;
                }
                if !self.saw_call_event && crate::normalize::canonical::canonicalize(&msg).is_some()
                {
                    self.saw_call_event = true;
                }
                Routed::Event(msg)
            }
            MessageKind::Other => Routed::Dropped,
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
    /// Frames decoded.
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

/// Replays captures (successive connections of PBX `pbx`) into `normalizer`,
/// calling `sink` for every model event in order.
pub fn replay(
    captures: &[Vec<u8>],
    pbx: &PbxId,
    normalizer: &mut Normalizer,
    mut sink: impl FnMut(&ModelEvent),
) -> ReplayStats {
    let mut stats = ReplayStats::default();
    let mut out = Vec::new();
    let mut last_t = 0.0_f64;
    for (i, bytes) in captures.iter().enumerate() {
        if i > 0 {
            normalizer.handle(
                &SourceEvent::AmiDisconnected {
                    pbx: pbx.clone(),
                    at: last_t,
                },
                &mut out,
            );
        }
        let mut router = Router::default();
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
            stats.frames += 1;
            let msg = match frame {
                AmiFrame::Message(m) => m,
                AmiFrame::Skipped { .. } => {
                    stats.skipped += 1;
                    continue;
                }
                AmiFrame::Banner(_) => continue,
            };
            let ev = match router.route(msg) {
                Routed::Event(m) => {
                    if let Some(t) = m.timestamp() {
                        last_t = last_t.max(t);
                    }
                    stats.events += 1;
                    SourceEvent::Ami {
                        pbx: pbx.clone(),
                        received_at: last_t,
                        msg: m,
                    }
                }
                Routed::Snapshot(channels) => SourceEvent::AmiSnapshot {
                    pbx: pbx.clone(),
                    received_at: last_t,
                    channels,
                },
                Routed::Dropped => continue,
            };
            normalizer.handle(&ev, &mut out);
            for e in out.drain(..) {
                stats.emitted += 1;
                sink(&e);
            }
        }
    }
    // Let undecided channels settle (no wall clock in a replay).
    normalizer.tick(last_t + 60.0, &mut out);
    for e in out.drain(..) {
        stats.emitted += 1;
        sink(&e);
    }
    stats
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

/// Writes one rendered request (for `replay --dry-run`): text shows it as an
/// HTTP request would look; jsonl gives one object per line with the body as
/// text.
pub fn write_request(
    w: &mut impl Write,
    r: &crate::deliver::DeliveryRequest,
    format: Format,
) -> std::io::Result<()> {
    let body = r
        .body
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    match format {
        Format::Jsonl => {
            let v = serde_json::json!({
                "rule": r.rule,
                "target": r.target,
                "session_id": r.session_id,
                "event_id": r.event_id,
                "method": r.method,
                "url": r.url,
                "headers": r.headers,
                "body": body,
                "idempotency_key": r.idempotency_key,
                "expires_at": r.expires_at,
            });
            writeln!(w, "{v}")
        }
        Format::Text => {
            writeln!(
                w,
                "# rule {} → target {} ({})",
                r.rule, r.target, r.event_id
            )?;
            writeln!(w, "{} {}", r.method, r.url)?;
            for (k, v) in &r.headers {
                writeln!(w, "{k}: {v}")?;
            }
            if let Some(k) = &r.idempotency_key {
                writeln!(w, "Idempotency-Key: {k}")?;
            }
            if let Some(b) = body {
                writeln!(w)?;
                writeln!(w, "{b}")?;
            }
            writeln!(w)
        }
    }
}
