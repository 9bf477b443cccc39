//! Recorded click-to-call outcomes for the simulator: how a real Asterisk
//! answers an `Originate`, replayed with the ids of the request.
//!
//! An [`OriginateRecording`] is made from the bytes of the AMI connection that
//! sent one or more Originates (the `.ami` captures of
//! `fixtures/ami/originate/` and the `click-to-call.ami` captures). For every
//! Originate in it (a `Response` followed by an `OriginateResponse` with the
//! same ActionID, or a `Response` whose `Message` names the Originate), it
//! keeps the events that followed the Response and belong to that call: all
//! of them when the capture holds one Originate; with several, those that name
//! its channel ids, its ActionID or its agent's device.
//!
//! When the simulator receives an `Originate`, it picks the recorded one whose
//! `Exten` is the requested number (else whose agent is the requested
//! channel's, else the first) and replays it with:
//!
//! * the request's ActionID on the Response and the `OriginateResponse`;
//! * the request's `ChannelId` in place of the recorded agent channel's
//!   Uniqueid/Linkedid (AMI 2+ only; Asterisk 11 has no `ChannelId`), every
//!   other uniqueid and every channel name suffix made fresh (two replays of
//!   one recording are two different calls);
//! * the requested number and agent in place of the recorded ones.
//!
//! Timing follows the recorded `Timestamp`s (divided by the simulator's
//! speed). `Async: true`: the Response at once, then the events. `Async:
//! false` (or absent, as Asterisk's default): the Response only when the agent
//! answered (`Newstate` Up of the agent channel) — `Response: Error` /
//! `Originate failed` when it never did — with the events until then held
//! back and sent right after it, and no `OriginateResponse` (as the
//! `sync-answered` capture shows). An async request replayed from a
//! synchronous recording gets a synthesised `OriginateResponse` (Success, Reason
//! 4) at the agent's answer, or (Failure, Reason 0) at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::codec::AmiFrame;
use super::message::{AmiMessage, MessageKind};
use super::sim_capture::decode_with_raw;

/// One capture's Originates, ready to replay.
#[derive(Debug, Clone)]
pub struct OriginateRecording {
    pub(crate) originates: Vec<RecordedOriginate>,
}

/// Where in an outcome a frame sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Plain,
    /// The `OriginateResponse` of this Originate.
    OriginateResponse,
    /// The agent channel went Up (answered).
    AgentUp,
}

#[derive(Debug, Clone)]
struct OutcomeFrame {
    msg: AmiMessage,
    /// Seconds after the first timestamped frame of the outcome.
    offset: f64,
    mark: Mark,
}

/// One Originate of a capture.
#[derive(Debug, Clone)]
pub(crate) struct RecordedOriginate {
    action_id: String,
    /// Uniqueid of the agent channel (= the ChannelId on 12+).
    uid: Option<String>,
    /// Dial string of the agent (`SIP/1001`).
    agent_dial: Option<String>,
    /// The number dialed (`Exten`).
    number: Option<String>,
    /// The recorded OriginateResponse, if any.
    originate_response: Option<AmiMessage>,
    frames: Vec<OutcomeFrame>,
}

impl OriginateRecording {
    /// Parses a capture; `None` when it holds no Originate.
    pub fn from_capture(capture: &[u8]) -> Option<Self> {
        let msgs = decode_all(capture);
        // ActionIDs of OriginateResponse events.
        let mut or_ids: HashMap<String, AmiMessage> = HashMap::new();
        for m in &msgs {
            if is_originate_response(m) {
                if let Some(id) = m.action_id() {
                    or_ids.entry(id.to_string()).or_insert_with(|| m.clone());
                }
            }
        }
        // Originate Responses, in order, with their position.
        let mut starts: Vec<(usize, String)> = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            if !matches!(m.kind(), MessageKind::Response(_)) {
                continue;
            }
            let Some(id) = m.action_id() else { continue };
            let named = m
                .get("Message")
                .is_some_and(|t| t.to_ascii_lowercase().contains("originate"));
            if or_ids.contains_key(id) || named {
                starts.push((i, id.to_string()));
            }
        }
        if starts.is_empty() {
            return None;
        }
        let first = starts[0].0;
        let mut originates: Vec<RecordedOriginate> = starts
            .iter()
            .map(|(pos, id)| {
                let or = or_ids.get(id).cloned();
                let uid = or
                    .as_ref()
                    .and_then(|o| o.get("Uniqueid"))
                    .filter(|u| !u.eq_ignore_ascii_case("<null>"))
                    .map(str::to_string)
                    .or_else(|| {
                        msgs[*pos..]
                            .iter()
                            .find(|m| {
                                m.event()
                                    .is_some_and(|e| e.eq_ignore_ascii_case("Newchannel"))
                            })
                            .and_then(|m| m.get("Uniqueid"))
                            .map(str::to_string)
                    });
                let agent_dial = or
                    .as_ref()
                    .and_then(|o| o.get("Channel"))
                    .map(strip_channel_suffix)
                    .or_else(|| {
                        let u = uid.as_deref()?;
                        msgs[*pos..]
                            .iter()
                            .find(|m| m.get("Uniqueid") == Some(u) && m.has("Channel"))
                            .and_then(|m| m.get("Channel"))
                            .map(strip_channel_suffix)
                    });
                let number = or
                    .as_ref()
                    .and_then(|o| o.get("Exten"))
                    .map(str::to_string)
                    .or_else(|| {
                        let u = uid.as_deref()?;
                        msgs[*pos..]
                            .iter()
                            .filter(|m| {
                                m.event()
                                    .is_some_and(|e| e.eq_ignore_ascii_case("Newexten"))
                            })
                            .filter(|m| m.get("Uniqueid") == Some(u))
                            .filter_map(|m| m.get("Exten"))
                            .find(|e| *e != "s")
                            .map(str::to_string)
                    });
                RecordedOriginate {
                    action_id: id.clone(),
                    uid,
                    agent_dial,
                    number,
                    originate_response: or,
                    frames: Vec::new(),
                }
            })
            .collect();
        let single = originates.len() == 1;
        let mut t0: Option<f64> = None;
        let mut last_offset = 0.0;
        for m in &msgs[first..] {
            if matches!(m.kind(), MessageKind::Response(_)) {
                continue;
            }
            if let Some(ts) = m.timestamp() {
                let base = *t0.get_or_insert(ts);
                last_offset = (ts - base).max(0.0);
            }
            let owner = if single {
                Some(0)
            } else {
                originates.iter().position(|o| o.owns(m))
            };
            let Some(k) = owner else { continue };
            let o = &mut originates[k];
            let mark = if is_originate_response(m) && m.action_id() == Some(&o.action_id) {
                Mark::OriginateResponse
            } else if is_originate_response(m) {
                // Another Originate's answer (or another client's): not ours.
                continue;
            } else if is_agent_up(m, o.uid.as_deref()) {
                Mark::AgentUp
            } else {
                Mark::Plain
            };
            o.frames.push(OutcomeFrame {
                msg: m.clone(),
                offset: last_offset,
                mark,
            });
        }
        Some(Self { originates })
    }

    /// The recorded Originate that fits a request best.
    pub(crate) fn pick<'a>(
        recordings: &'a [OriginateRecording],
        channel: &str,
        exten: &str,
    ) -> Option<&'a RecordedOriginate> {
        let all = || recordings.iter().flat_map(|r| r.originates.iter());
        let ext = dial_extension(channel);
        all()
            .find(|o| o.number.as_deref() == Some(exten))
            .or_else(|| all().find(|o| o.agent_dial.as_deref().map(dial_extension) == Some(ext)))
            .or_else(|| all().next())
    }
}

impl RecordedOriginate {
    /// Whether a frame belongs to this Originate (captures with several).
    fn owns(&self, m: &AmiMessage) -> bool {
        if m.action_id() == Some(&self.action_id) {
            return true;
        }
        if let Some(u) = &self.uid {
            if m.fields().any(|(_, v)| v == u) {
                return true;
            }
        }
        if let Some(dial) = &self.agent_dial {
            let ext = dial_extension(dial);
            return m.fields().any(|(k, v)| {
                v == dial
                    || v.strip_prefix(dial.as_str())
                        .is_some_and(|rest| rest.starts_with('-'))
                    || (k.eq_ignore_ascii_case("Exten")
                        && v == ext
                        && m.event()
                            .is_some_and(|e| e.eq_ignore_ascii_case("ExtensionStatus")))
            });
        }
        false
    }
}

/// What the simulator was asked.
pub(crate) struct OriginateRequest<'a> {
    pub action_id: Option<&'a str>,
    pub channel: &'a str,
    pub exten: &'a str,
    pub channel_id: Option<&'a str>,
    pub other_channel_id: Option<&'a str>,
    pub asynchronous: bool,
    /// AMI 2+ (Asterisk 12+): `ChannelId` is honoured.
    pub modern: bool,
}

/// One frame to send, `delay` after the Originate arrived.
#[derive(Debug)]
pub(crate) struct Scheduled {
    pub delay: Duration,
    pub bytes: Vec<u8>,
}

static FRESH: AtomicU64 = AtomicU64::new(1);

fn fresh() -> u64 {
    FRESH.fetch_add(1, Ordering::Relaxed)
}

/// The frames answering `req`, in order, from `rec`. `speed`: `None` as
/// fast as possible, `Some(n)` recorded timing / n.
pub(crate) fn schedule(
    rec: &RecordedOriginate,
    req: &OriginateRequest<'_>,
    speed: Option<f64>,
    encode: impl Fn(&AmiMessage) -> Vec<u8>,
) -> Vec<Scheduled> {
    let rw = Rewriter::new(rec, req);
    let at = |offset: f64| match speed {
        Some(s) if s > 0.0 => Duration::from_secs_f64((offset / s).clamp(0.0, 3600.0)),
        _ => Duration::ZERO,
    };
    let mut out: Vec<Scheduled> = Vec::new();
    let response = |ok: bool| {
        let mut m = AmiMessage::new();
        m.push("Response", if ok { "Success" } else { "Error" });
        if let Some(id) = req.action_id {
            m.push("ActionID", id);
        }
        m.push(
            "Message",
            if ok {
                "Originate successfully queued"
            } else {
                "Originate failed"
            },
        );
        encode(&m)
    };
    if req.asynchronous {
        out.push(Scheduled {
            delay: Duration::ZERO,
            bytes: response(true),
        });
        let mut answered = false;
        for f in &rec.frames {
            out.push(Scheduled {
                delay: at(f.offset),
                bytes: encode(&rw.apply(&f.msg)),
            });
            if f.mark == Mark::AgentUp && rec.originate_response.is_none() && !answered {
                answered = true;
                out.push(Scheduled {
                    delay: at(f.offset),
                    bytes: encode(&rw.apply(&synth_originate_response(rec, true))),
                });
            }
        }
        if rec.originate_response.is_none() && !answered {
            let last = rec.frames.last().map_or(0.0, |f| f.offset);
            out.push(Scheduled {
                delay: at(last),
                bytes: encode(&rw.apply(&synth_originate_response(rec, false))),
            });
        }
    } else {
        // The Response waits for the agent's answer (or the failure).
        let cut = rec
            .frames
            .iter()
            .position(|f| f.mark == Mark::AgentUp)
            .map(|i| (i, true))
            .or_else(|| {
                rec.frames
                    .iter()
                    .position(|f| f.mark == Mark::OriginateResponse)
                    .map(|i| (i, false))
            });
        let (cut, ok) = cut.unwrap_or((rec.frames.len().saturating_sub(1), false));
        let when = rec.frames.get(cut).map_or(0.0, |f| f.offset);
        out.push(Scheduled {
            delay: at(when),
            bytes: response(ok),
        });
        for f in &rec.frames {
            if f.mark == Mark::OriginateResponse {
                continue;
            }
            out.push(Scheduled {
                delay: at(f.offset.max(when)),
                bytes: encode(&rw.apply(&f.msg)),
            });
        }
    }
    out
}

fn synth_originate_response(rec: &RecordedOriginate, ok: bool) -> AmiMessage {
    let mut m = AmiMessage::new();
    m.push("Event", "OriginateResponse");
    m.push("Privilege", "call,all");
    m.push("ActionID", rec.action_id.as_str());
    m.push("Response", if ok { "Success" } else { "Failure" });
    m.push("Channel", rec.agent_dial.as_deref().unwrap_or(""));
    m.push("Context", "from-internal");
    m.push("Exten", rec.number.as_deref().unwrap_or(""));
    m.push("Reason", if ok { "4" } else { "0" });
    m.push("Uniqueid", rec.uid.as_deref().unwrap_or("<null>"));
    m
}

/// Maps recorded ids to the request's (and to fresh ones).
struct Rewriter {
    exact: HashMap<String, String>,
    /// Substring replacements, longest first.
    within: Vec<(String, String)>,
}

impl Rewriter {
    fn new(rec: &RecordedOriginate, req: &OriginateRequest<'_>) -> Self {
        let mut exact: HashMap<String, String> = HashMap::new();
        let mut within: Vec<(String, String)> = Vec::new();
        if let Some(id) = req.action_id {
            exact.insert(rec.action_id.clone(), id.to_string());
        }
        let epoch = crate::source::now_epoch() as u64;
        let uid_map = |u: &str, exact: &mut HashMap<String, String>| {
            if exact.contains_key(u) {
                return;
            }
            let new = if Some(u) == rec.uid.as_deref() && req.modern && req.channel_id.is_some() {
                req.channel_id.unwrap_or_default().to_string()
            } else {
                format!("{epoch}.{}", fresh())
            };
            exact.insert(u.to_string(), new);
        };
        if let Some(u) = &rec.uid {
            uid_map(u, &mut exact);
        }
        let req_dial = strip_channel_suffix(req.channel);
        for f in &rec.frames {
            for (k, v) in f.msg.fields() {
                let lk = k.to_ascii_lowercase();
                if (lk.ends_with("uniqueid") || lk.ends_with("linkedid"))
                    && !v.is_empty()
                    && !v.eq_ignore_ascii_case("<null>")
                {
                    uid_map(v, &mut exact);
                }
                if lk.ends_with("channel") && has_channel_suffix(v) && !exact.contains_key(v) {
                    let base = strip_channel_suffix(v);
                    let base = match &rec.agent_dial {
                        Some(d) if *d == base => req_dial.clone(),
                        _ => base,
                    };
                    let new = format!("{base}-{:08x}", fresh());
                    exact.insert(v.to_string(), new.clone());
                    within.push((v.to_string(), new));
                }
            }
        }
        for (old, new) in exact.clone() {
            if old.len() >= 8 && old != new {
                within.push((old, new));
            }
        }
        if let (Some(n), Some(other)) = (&rec.number, Some(req.exten)) {
            if n != other && n.len() >= 3 && !other.is_empty() {
                exact.entry(n.clone()).or_insert_with(|| other.to_string());
                within.push((n.clone(), other.to_string()));
            }
        }
        if let Some(d) = &rec.agent_dial {
            if *d != req_dial {
                exact.entry(d.clone()).or_insert_with(|| req_dial.clone());
                let (a, b) = (dial_extension(d), dial_extension(&req_dial));
                if a != b && !a.is_empty() && !b.is_empty() {
                    exact.entry(a.to_string()).or_insert_with(|| b.to_string());
                }
                within.push((format!("{d}-"), format!("{req_dial}-")));
            }
        }
        if let (Some(rec_other), Some(req_other)) = (
            rec.uid.as_ref().map(|u| format!("{u}-other")),
            req.other_channel_id,
        ) {
            exact.insert(rec_other, req_other.to_string());
        }
        within.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        within.dedup_by(|a, b| a.0 == b.0);
        Self { exact, within }
    }

    fn value(&self, v: &str) -> String {
        if let Some(n) = self.exact.get(v) {
            return n.clone();
        }
        let mut out = v.to_string();
        for (old, new) in &self.within {
            if out.contains(old.as_str()) {
                out = out.replace(old.as_str(), new);
            }
        }
        out
    }

    fn apply(&self, m: &AmiMessage) -> AmiMessage {
        let mut out = AmiMessage::new();
        for (k, v) in m.fields() {
            out.push(k, self.value(v));
        }
        out
    }
}

fn is_originate_response(m: &AmiMessage) -> bool {
    m.event()
        .is_some_and(|e| e.eq_ignore_ascii_case("OriginateResponse"))
}

fn is_agent_up(m: &AmiMessage, uid: Option<&str>) -> bool {
    let Some(uid) = uid else { return false };
    m.event()
        .is_some_and(|e| e.eq_ignore_ascii_case("Newstate"))
        && m.get("Uniqueid") == Some(uid)
        && (m.get("ChannelState") == Some("6")
            || m.get("ChannelStateDesc")
                .is_some_and(|d| d.eq_ignore_ascii_case("Up"))
            || m.get("State").is_some_and(|d| d.eq_ignore_ascii_case("Up")))
}

/// `SIP/1001-0000002a` → true.
fn has_channel_suffix(v: &str) -> bool {
    v.contains('/')
        && v.rsplit_once('-')
            .is_some_and(|(_, s)| s.len() >= 8 && s.chars().take(8).all(|c| c.is_ascii_hexdigit()))
}

/// `SIP/1001-00000028` → `SIP/1001`; `SIP/1001` unchanged.
fn strip_channel_suffix(v: &str) -> String {
    if has_channel_suffix(v) {
        v.rsplit_once('-').map_or(v, |(a, _)| a).to_string()
    } else {
        v.to_string()
    }
}

/// `PJSIP/1001` → `1001`; `Local/1001@from-internal` → `1001`.
pub(crate) fn dial_extension(dial: &str) -> &str {
    let after = dial.rsplit_once('/').map_or(dial, |(_, e)| e);
    after.split(['@', '-', '&']).next().unwrap_or(after)
}

/// Every message of a capture, in order.
fn decode_all(capture: &[u8]) -> Vec<AmiMessage> {
    decode_with_raw(capture)
        .into_iter()
        .filter_map(|(frame, _)| match frame {
            AmiFrame::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> Vec<u8> {
        let p = format!("{}/tests/fixtures/ami/{rel}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn text(s: &[Scheduled]) -> String {
        s.iter()
            .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
            .collect()
    }

    fn enc(m: &AmiMessage) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in m.fields() {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn every_recorded_case_parses() {
        for case in [
            "answered",
            "agent-busy",
            "agent-noanswer",
            "agent-silent",
            "agent-unreachable",
            "agent-unregistered",
            "outside-busy",
            "outside-congestion",
            "outside-noanswer",
            "sync-answered",
        ] {
            let r = OriginateRecording::from_capture(&fixture(&format!("originate/{case}.ami")))
                .unwrap_or_else(|| panic!("{case}: no originate"));
            assert_eq!(r.originates.len(), 1, "{case}");
            let o = &r.originates[0];
            assert_eq!(o.action_id, format!("crm-sip-{case}"));
            assert_eq!(
                o.uid.as_deref(),
                Some(format!("c2c-sip-{case}").as_str()),
                "{case}"
            );
            assert!(
                o.number
                    .as_deref()
                    .is_some_and(|n| n.starts_with("0212285")),
                "{case}"
            );
            assert!(
                o.agent_dial
                    .as_deref()
                    .is_some_and(|d| d.starts_with("SIP/100")),
                "{case}"
            );
        }
        let two = OriginateRecording::from_capture(&fixture("originate/two-in-flight.ami"));
        let two = two.map(|r| r.originates).unwrap_or_default();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].agent_dial.as_deref(), Some("SIP/1001"));
        assert_eq!(two[1].agent_dial.as_deref(), Some("SIP/1002"));
        assert!(two.iter().all(|o| o
            .frames
            .iter()
            .filter(|f| f.mark == Mark::OriginateResponse)
            .count()
            == 1));
        for rel in [
            "asterisk-20/click-to-call.ami",
            "asterisk-20-pjsip/click-to-call.ami",
            "asterisk-11/click-to-call.ami",
        ] {
            let r = OriginateRecording::from_capture(&fixture(rel));
            assert_eq!(r.map(|r| r.originates.len()), Some(1), "{rel}");
        }
        assert!(
            OriginateRecording::from_capture(&fixture("asterisk-20/incoming-answered.ami"))
                .is_none()
        );
        assert!(OriginateRecording::from_capture(b"\xff garbage\r\n\r\n").is_none());
    }

    #[test]
    fn replays_with_the_request_ids() {
        let r = OriginateRecording::from_capture(&fixture("originate/answered.ami"))
            .into_iter()
            .collect::<Vec<_>>();
        let o = OriginateRecording::pick(&r, "PJSIP/1002", "5551234").cloned();
        let Some(o) = o else { panic!("no pick") };
        let req = OriginateRequest {
            action_id: Some("main-1-7"),
            channel: "PJSIP/1002",
            exten: "5551234",
            channel_id: Some("callhook-abc"),
            other_channel_id: Some("callhook-abc-2"),
            asynchronous: true,
            modern: true,
        };
        let s = schedule(&o, &req, None, enc);
        let t = text(&s);
        assert!(t.starts_with("Response: Success\r\nActionID: main-1-7\r\n"));
        assert!(t.contains("ActionID: main-1-7\r\nResponse: Success\r\nChannel: PJSIP/1002-"));
        assert!(t.contains("Uniqueid: callhook-abc\r\n"));
        assert!(t.contains("Linkedid: callhook-abc\r\n"));
        assert!(t.contains("Channel: PJSIP/1002-"));
        assert!(t.contains("Exten: 5551234\r\n"));
        assert!(!t.contains("c2c-sip-answered"));
        assert!(!t.contains("crm-sip-answered"));
        assert!(!t.contains("02122853301"));
        assert!(!t.contains("SIP/1001-00000028"));
        // A second replay is another call.
        let t2 = text(&schedule(
            &o,
            &OriginateRequest {
                channel_id: Some("callhook-def"),
                ..req
            },
            None,
            enc,
        ));
        assert!(!t2.contains("SIP/pstn-00000029"));
        let pstn = |t: &str| {
            t.lines()
                .find(|l| l.starts_with("Channel: SIP/pstn-"))
                .map(str::to_string)
        };
        assert_ne!(pstn(&t), pstn(&t2));
    }

    #[test]
    fn synchronous_requests_wait_for_the_answer() {
        let r: Vec<_> = OriginateRecording::from_capture(&fixture("originate/answered.ami"))
            .into_iter()
            .collect();
        let o = r[0].originates[0].clone();
        let req = OriginateRequest {
            action_id: Some("x"),
            channel: "SIP/1001",
            exten: "02122853301",
            channel_id: None,
            other_channel_id: None,
            asynchronous: false,
            modern: true,
        };
        let s = schedule(&o, &req, Some(1.0), enc);
        let t = text(&s);
        assert!(t.starts_with("Response: Success"));
        assert!(!t.contains("OriginateResponse"));
        assert!(
            s[0].delay >= Duration::from_millis(1500),
            "{:?}",
            s[0].delay
        );
        assert!(s.windows(2).all(|w| w[0].delay <= w[1].delay));
        let busy: Vec<_> = OriginateRecording::from_capture(&fixture("originate/agent-busy.ami"))
            .into_iter()
            .collect();
        let t = text(&schedule(&busy[0].originates[0], &req, None, enc));
        assert!(t.starts_with("Response: Error\r\nActionID: x\r\nMessage: Originate failed"));
        // An async request on the synchronous recording gets an OriginateResponse.
        let sync: Vec<_> =
            OriginateRecording::from_capture(&fixture("originate/sync-answered.ami"))
                .into_iter()
                .collect();
        let t = text(&schedule(
            &sync[0].originates[0],
            &OriginateRequest {
                asynchronous: true,
                ..req
            },
            None,
            enc,
        ));
        assert!(t.contains(
            "Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: x\r\nResponse: Success"
        ));
    }

    #[test]
    fn dial_strings() {
        assert_eq!(dial_extension("SIP/1001"), "1001");
        assert_eq!(dial_extension("Local/1001@from-internal"), "1001");
        assert_eq!(strip_channel_suffix("SIP/1001-0000002a"), "SIP/1001");
        assert_eq!(strip_channel_suffix("SIP/1001"), "SIP/1001");
        assert!(!has_channel_suffix("c2c-sip-answered"));
    }
}
