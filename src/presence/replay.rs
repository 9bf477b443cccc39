//! A recorded AMI stream through the presence path: `callhook replay
//! --presence` and the presence tests.
//!
//! Each frame is routed twice, as the live client does: presence events
//! (unsolicited `ExtensionStatus`, `DeviceStateChange`, `PeerStatus`,
//! `ContactStatus`, `Hold`, `Unhold`) and the answers of state actions
//! (`ExtensionStateList`, `ExtensionState`, `DeviceStateList`, `SIPpeers`,
//! `PJSIPShowEndpoints`, recognised by their items) go to the tracker; the
//! call events go through [`crate::replay::Router`] and the normalizer,
//! whose model events then reach the tracker too. Several captures are
//! successive connections (a disconnect between them).
//!
//! [`ReplayOptions::model_lag`] delays the model events by that many
//! seconds of capture time behind the presence events, as the daemon's
//! commit does, to show the table does not depend on the two paths'
//! relative order.

use std::collections::{HashMap, VecDeque};
use std::io::Write;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::event::{CallPhase, PresenceEvent};
use super::PresenceTracker;
use crate::ami::client::{ends_list, starts_list};
use crate::ami::state_sync::presence_route;
use crate::ami::{AmiCodec, AmiFrame, AmiMessage, MessageKind};
use crate::model::ModelEvent;
use crate::normalize::Normalizer;
use crate::replay::{Routed, Router};
use crate::source::{PbxId, PresenceSourceEvent, SourceEvent};

/// Capture time between two ticks (as the daemon's presence task).
const TICK: f64 = super::task::TICK.as_secs_f64();
/// Lists collected at once (a capture's own actions).
const MAX_OPEN_LISTS: usize = 64;
/// Items kept per list.
const MAX_LIST_ITEMS: usize = 100_000;

/// Sorts a connection's frames into presence inputs.
#[derive(Debug, Default)]
pub struct PresenceRouter {
    lists: HashMap<String, (AmiMessage, Vec<AmiMessage>)>,
}

impl PresenceRouter {
    /// The presence input `msg` is, if any. `received_at` is the time to
    /// stamp on it.
    pub fn route(
        &mut self,
        msg: &AmiMessage,
        pbx: &PbxId,
        received_at: f64,
    ) -> Option<PresenceSourceEvent> {
        match msg.kind() {
            MessageKind::Response(_) => {
                let id = msg.action_id()?;
                if starts_list(msg) {
                    if self.lists.len() < MAX_OPEN_LISTS {
                        self.lists.insert(id.to_string(), (msg.clone(), Vec::new()));
                    }
                    return None;
                }
                // ExtensionState: the answer is the response itself.
                let single = msg.has("Exten")
                    && msg.has("Status")
                    && msg
                        .get("Response")
                        .is_some_and(|r| r.eq_ignore_ascii_case("Success"));
                single.then(|| PresenceSourceEvent::AmiStateList {
                    pbx: pbx.clone(),
                    received_at,
                    action: Some("ExtensionState".into()),
                    response: msg.clone(),
                    items: Vec::new(),
                })
            }
            MessageKind::Event(name) => {
                if let Some(id) = msg.action_id() {
                    let (_, items) = self.lists.get_mut(id)?;
                    if !ends_list(msg) {
                        if items.len() < MAX_LIST_ITEMS {
                            items.push(msg.clone());
                        }
                        return None;
                    }
                    let (response, items) = self.lists.remove(id)?;
                    let presence = items.iter().any(|m| {
                        m.event().is_some_and(|e| {
                            [
                                "ExtensionStatus",
                                "DeviceStateChange",
                                "PeerEntry",
                                "EndpointList",
                            ]
                            .iter()
                            .any(|n| e.eq_ignore_ascii_case(n))
                        })
                    });
                    return presence.then(|| PresenceSourceEvent::AmiStateList {
                        pbx: pbx.clone(),
                        received_at,
                        action: None,
                        response,
                        items,
                    });
                }
                presence_route(name).map(|_| PresenceSourceEvent::Ami {
                    pbx: pbx.clone(),
                    received_at,
                    msg: msg.clone(),
                })
            }
            MessageKind::Other => None,
        }
    }
}

/// How to replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    /// Model events reach the tracker this many seconds (capture time)
    /// after the presence events of the same moment.
    pub model_lag: f64,
}

/// Replays captures (successive connections of `pbx`) into `normalizer`
/// and `tracker`, calling `sink` for every presence event in order.
/// Returns the number of presence events.
pub fn replay(
    captures: &[Vec<u8>],
    pbx: &PbxId,
    normalizer: &mut Normalizer,
    tracker: &mut PresenceTracker,
    opts: ReplayOptions,
    mut sink: impl FnMut(&PresenceEvent),
) -> usize {
    let mut n = 0usize;
    let mut out: Vec<PresenceEvent> = Vec::new();
    let mut model: Vec<ModelEvent> = Vec::new();
    let mut pending: VecDeque<(f64, ModelEvent)> = VecDeque::new();
    let mut last_t = 0.0_f64;
    let mut last_tick = 0.0_f64;
    let lag = if opts.model_lag.is_finite() {
        opts.model_lag.max(0.0)
    } else {
        0.0
    };
    tracker.set_ami(pbx, 0.0);
    let mut emit = |out: &mut Vec<PresenceEvent>, n: &mut usize| {
        for e in out.drain(..) {
            *n += 1;
            sink(&e);
        }
    };
    let release = |pending: &mut VecDeque<(f64, ModelEvent)>,
                   until: f64,
                   tracker: &mut PresenceTracker,
                   out: &mut Vec<PresenceEvent>| {
        let mut batch: Vec<ModelEvent> = Vec::new();
        while pending.front().is_some_and(|(t, _)| *t <= until) {
            if let Some((_, ev)) = pending.pop_front() {
                batch.push(ev);
            }
        }
        tracker.handle_models(&batch, out);
    };
    for (i, bytes) in captures.iter().enumerate() {
        if i > 0 {
            release(&mut pending, f64::INFINITY, tracker, &mut out);
            tracker.handle_source(
                &PresenceSourceEvent::AmiDisconnected {
                    pbx: pbx.clone(),
                    at: last_t,
                },
                &mut out,
            );
            normalizer.handle(
                &SourceEvent::AmiDisconnected {
                    pbx: pbx.clone(),
                    at: last_t,
                },
                &mut model,
            );
            pending.extend(model.drain(..).map(|e| (last_t + lag, e)));
            emit(&mut out, &mut n);
        }
        let mut router = Router::default();
        let mut prouter = PresenceRouter::default();
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
            let AmiFrame::Message(msg) = frame else {
                continue;
            };
            if let Some(t) = msg.timestamp() {
                // The daemon's presence task ticks on the wall clock; a
                // replay ticks on capture time, between the events too.
                if last_tick == 0.0 || t - last_tick > 60.0 {
                    last_tick = t;
                }
                while t - last_tick >= TICK {
                    last_tick += TICK;
                    release(&mut pending, last_tick, tracker, &mut out);
                    tracker.tick(last_tick, &mut out);
                }
                last_t = last_t.max(t);
            }
            release(&mut pending, last_t, tracker, &mut out);
            if let Some(p) = prouter.route(&msg, pbx, last_t) {
                tracker.handle_source(&p, &mut out);
            }
            let ev = match router.route(msg) {
                Routed::Event(m) => SourceEvent::Ami {
                    pbx: pbx.clone(),
                    received_at: last_t,
                    msg: m,
                },
                Routed::Snapshot(channels) => SourceEvent::AmiSnapshot {
                    pbx: pbx.clone(),
                    received_at: last_t,
                    channels,
                },
                Routed::Dropped => {
                    emit(&mut out, &mut n);
                    continue;
                }
            };
            normalizer.handle(&ev, &mut model);
            if lag == 0.0 {
                tracker.handle_models(&model, &mut out);
                model.clear();
            } else {
                pending.extend(model.drain(..).map(|e| (last_t + lag, e)));
            }
            emit(&mut out, &mut n);
        }
    }
    release(&mut pending, f64::INFINITY, tracker, &mut out);
    normalizer.tick(last_t + 60.0, &mut model);
    tracker.handle_models(&model, &mut out);
    model.clear();
    tracker.tick(last_t + 60.0, &mut out);
    emit(&mut out, &mut n);
    n
}

fn clock(ts: &crate::model::Timestamp) -> String {
    let s = ts.to_rfc3339();
    s.get(11..23).unwrap_or(&s).to_string()
}

/// One readable line per presence event.
pub fn text_line(ev: &PresenceEvent) -> String {
    let p = &ev.presence;
    let prev = if ev.previous_call_waiting {
        format!("{}+ringing", ev.previous.as_str())
    } else {
        ev.previous.as_str().to_string()
    };
    let change = if ev.state_changed() {
        format!("{prev} → {}", p.human())
    } else {
        format!("{} (calls changed)", p.human())
    };
    let mut s = format!(
        "{}  {} {:<8} {:<34} [{}]",
        clock(&ev.at),
        ev.pbx,
        p.extension,
        change,
        serde_json::to_value(p.source)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    );
    for c in &p.calls {
        let phase = match c.phase {
            CallPhase::Ringing => "ringing",
            CallPhase::Dialing => "dialing",
            CallPhase::Talking => "talking",
            CallPhase::OnHold => "on hold",
        };
        let other = match c.role {
            crate::model::Role::Caller => c.dialed_number.as_deref().unwrap_or("-").to_string(),
            crate::model::Role::Callee => format!(
                "{}{}",
                c.caller_number.as_deref().unwrap_or("-"),
                c.caller_name
                    .as_deref()
                    .map(|n| format!(" {n:?}"))
                    .unwrap_or_default()
            ),
        };
        s.push_str(&format!("  {phase} {other}"));
        if let Some(q) = &c.queue {
            s.push_str(&format!(" via {q}"));
        }
        s.push_str(&format!(" ({})", c.session_id));
    }
    s
}

/// Writes one presence event: a JSON object per line, or [`text_line`].
pub fn write_event(w: &mut impl Write, ev: &PresenceEvent, jsonl: bool) -> std::io::Result<()> {
    if jsonl {
        let line = serde_json::to_string(ev).map_err(std::io::Error::other)?;
        writeln!(w, "{line}")
    } else {
        writeln!(w, "{}", text_line(ev))
    }
}
