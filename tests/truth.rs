//! Every real capture, replayed, agrees with what really happened.
//!
//! For each `*.ami` under `tests/fixtures/ami/` (`asterisk-20`,
//! `asterisk-11`, `asterisk-20-pjsip`, `asterisk-20-extra`, `handwritten`;
//! except the `reconnect-*` halves, which end mid-call and are covered by
//! the reconnect tests) the `call` records and the `ringing` legs that
//! `replay` produces are compared with the capture's `*.truth.json`:
//! direction, caller number and name, dialed number, queue, extensions
//! rung, answered by, final answered by, disposition, start/answer/end
//! times, duration and billsec within 1 s, the real caller number on every
//! ringing leg of an incoming call, and no phantom calls.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use callhook::ami::{Action, AmiCodec, AmiFrame};
use callhook::model::{CallRecord, LegEvent, ModelEvent, Role, State};
use callhook::normalize::{Normalizer, NormalizerConfig};
use callhook::replay::{replay, Routed, Router};
use callhook::source::{OriginateSent, SourceEvent};
use serde_json::Value;
use tokio_util::codec::Decoder;

fn captures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ami");
    let mut out = Vec::new();
    for dir in [
        "asterisk-20",
        "asterisk-11",
        "asterisk-20-pjsip",
        "asterisk-20-extra",
        "handwritten",
        "originate",
        "originate-pjsip",
    ] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "ami"))
            .filter(|p| {
                !p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("reconnect-")
            })
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

struct Replayed {
    calls: Vec<CallRecord>,
    legs: Vec<LegEvent>,
}

fn run(paths: &[&Path]) -> Replayed {
    let data: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut n = Normalizer::new(NormalizerConfig::default());
    let mut calls = Vec::new();
    let mut legs = Vec::new();
    let pbx: Arc<str> = "main".into();
    replay(&data, &pbx, &mut n, |ev| match ev {
        ModelEvent::Call(c) => calls.push(c.clone()),
        ModelEvent::Leg(l) => legs.push(l.clone()),
        ModelEvent::CallState(_) => {}
    });
    Replayed { calls, legs }
}

/// The action connection's capture as the AMI client delivers it: what it
/// received, plus, just before each Originate's `Response`, the
/// [`SourceEvent::AmiOriginate`] the client emits when it writes it (the
/// actions are in the truth's `actions_sent_on_action_connection`).
fn run_with_actions(path: &Path) -> Replayed {
    let file = path.file_name().unwrap().to_string_lossy();
    let stem = file.trim_end_matches(".ami");
    let truth: Value = serde_json::from_str(
        &std::fs::read_to_string(path.with_file_name(format!("{stem}.truth.json"))).unwrap(),
    )
    .unwrap();
    let mut actions: BTreeMap<String, OriginateSent> = BTreeMap::new();
    for a in truth["actions_sent_on_action_connection"]
        .as_array()
        .unwrap()
    {
        let text = a["text"].as_str().unwrap();
        let mut fields = text
            .split("\r\n")
            .filter_map(|l| l.split_once(": "))
            .peekable();
        let Some((_, name)) = fields.next() else {
            continue;
        };
        let mut action = Action::new(name);
        let mut id = String::new();
        for (k, v) in fields {
            if k == "ActionID" {
                id = v.to_string();
            } else {
                action = action.field(k, v);
            }
        }
        if let Some(o) = OriginateSent::from_action(&action, &id) {
            actions.insert(id, o);
        }
    }
    assert!(!actions.is_empty(), "{}: no Originate sent", path.display());
    let pbx: Arc<str> = "main".into();
    let bytes = std::fs::read(path).unwrap();
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut router = Router::default();
    let mut n = Normalizer::new(NormalizerConfig::default());
    let mut out = Vec::new();
    let mut last = 0.0_f64;
    while let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
        let AmiFrame::Message(m) = frame else {
            continue;
        };
        // The client stamps an Originate with the wall clock: here, the
        // time of the last packet received (noise included, though the
        // router drops it).
        if let Some(t) = m.timestamp() {
            last = last.max(t);
        }
        if m.event().is_none() {
            if let Some(o) = m.action_id().and_then(|id| actions.remove(id)) {
                let ev = SourceEvent::AmiOriginate {
                    pbx: pbx.clone(),
                    at: last,
                    originate: o,
                };
                n.handle(&ev, &mut out);
            }
        }
        let ev = match router.route(m) {
            Routed::Event(m) => SourceEvent::Ami {
                pbx: pbx.clone(),
                received_at: last,
                msg: m,
            },
            Routed::Snapshot(channels) => SourceEvent::AmiSnapshot {
                pbx: pbx.clone(),
                received_at: last,
                channels,
            },
            Routed::Dropped => continue,
        };
        n.handle(&ev, &mut out);
    }
    n.tick(last + 60.0, &mut out);
    let mut got = Replayed {
        calls: Vec::new(),
        legs: Vec::new(),
    };
    for ev in out {
        match ev {
            ModelEvent::Call(c) => got.calls.push(c),
            ModelEvent::Leg(l) => got.legs.push(l),
            ModelEvent::CallState(_) => {}
        }
    }
    got
}

fn s(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Truth's `PSTN` (the outside party) is our `external`; outside parties are
/// not extensions.
fn party(v: &Value) -> Option<String> {
    s(v).map(|p| if p == "PSTN" { "external".into() } else { p })
}

/// The truth file of a capture (`NAME.ami` and `NAME.listener.ami` share
/// `NAME.truth.json`), with `calls` derived for the click-to-call cases.
fn truth_of(path: &Path) -> Value {
    let file = path.file_name().unwrap().to_string_lossy();
    let stem = file.trim_end_matches(".ami").trim_end_matches(".listener");
    let truth: Value = serde_json::from_str(
        &std::fs::read_to_string(path.with_file_name(format!("{stem}.truth.json"))).unwrap(),
    )
    .unwrap();
    if truth.get("calls").is_some() {
        truth
    } else {
        serde_json::json!({ "calls": originate_calls(&truth) })
    }
}

/// What each click-to-call of an `originate/` truth is as a call record.
/// The truth lists what the PBX did per Originate (`originates[].result`,
/// the `channels` with its ChannelId as Linkedid, the CDR rows); the call
/// model says:
/// - session id: the ChannelId (the first leg's Uniqueid, everyone's
///   Linkedid; the `OriginateResponse`'s Uniqueid even with no channel);
/// - `outgoing`, the agent as caller (with the name of its phone when it
///   had a channel), the Originate's `Exten` as `dialed_number`;
/// - rang: the agent when the PBX offered it the call (it had a channel;
///   even a phone that answered 486 at once was offered it, as in the
///   incoming-busy captures), nobody when there was no channel;
/// - answered by the outside party (`PSTN`) only if it answered; the agent
///   answering its own click-to-call is not the call being answered;
/// - disposition: `ANSWERED` when the outside party answered; after the
///   agent answered, the outside leg's dial status (`BUSY`, `CONGESTION` →
///   `FAILED`, otherwise `NO ANSWER`); when the agent's own leg failed, its
///   hangup cause (17 → `BUSY`, otherwise `NO ANSWER`: it rang out or never
///   responded), and with no channel at all `FAILED` (the phone could not
///   be reached; `BUSY` for `Reason` 5);
/// - times: from the first channel created to the last gone (with no
///   channel: the `OriginateResponse`'s time, duration 0), answered when
///   the outside leg answered.
fn originate_calls(truth: &Value) -> Vec<Value> {
    let num = |v: &Value| -> Option<f64> { v.as_str().and_then(|s| s.parse().ok()) };
    let mut calls = Vec::new();
    for o in truth["originates"].as_array().unwrap() {
        let id = o["channel_id"].as_str().unwrap();
        let r = &o["result"];
        let chans: Vec<&Value> = truth["channels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["linkedid"] == id)
            .collect();
        let agent = o["agent"].as_str().unwrap();
        let agent_chan = chans.iter().find(|c| c["channel"] == r["agent_leg"]);
        let outside_chan = chans.iter().find(|c| c["channel"] == r["outside_leg"]);
        let dial_status = r["dial_status"]
            .as_array()
            .and_then(|d| d.last())
            .and_then(Value::as_str)
            .unwrap_or("");
        let cause = r["agent_hangup_cause"][0].as_str();
        let disposition = if r["outside_answered"] == true {
            "ANSWERED"
        } else if r["agent_answered"] == true {
            match dial_status {
                "BUSY" => "BUSY",
                "CONGESTION" | "CHANUNAVAIL" => "FAILED",
                _ => "NO ANSWER",
            }
        } else if agent_chan.is_none() {
            match o["originate_response"]["Reason"].as_str() {
                Some("5") => "BUSY",
                _ => "FAILED",
            }
        } else if cause == Some("17") {
            "BUSY"
        } else {
            "NO ANSWER"
        };
        let response_ts = truth["key_events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["Event"] == "OriginateResponse" && e["ActionID"] == o["action_id"])
            .and_then(|e| num(&e["Timestamp"]));
        let start = chans
            .iter()
            .filter_map(|c| num(&c["created_ts"]))
            .reduce(f64::min)
            .or(response_ts);
        let end = chans
            .iter()
            .filter_map(|c| num(&c["hangup_ts"]))
            .reduce(f64::max)
            .or(response_ts);
        let answer = outside_chan
            .filter(|_| r["outside_answered"] == true)
            .and_then(|c| num(&c["answered_ts"]));
        let who = (r["outside_answered"] == true).then_some("PSTN");
        calls.push(serde_json::json!({
            "linkedid": id,
            "direction": "outgoing",
            "caller_number": agent,
            "caller_name": agent_chan.and_then(|c| c["calleridname"].as_str()),
            "dialed_number": o["number"],
            "queue": null,
            "rang": if agent_chan.is_some() { vec![agent] } else { vec![] },
            "answered_by": who,
            "final_answered_by": who,
            "disposition": disposition,
            "start_ts": start,
            "answer_ts": answer,
            "end_ts": end,
            "duration_s": start.zip(end).map(|(s, e)| e - s),
            "billsec_s": answer.zip(end).map(|(a, e)| e - a).unwrap_or(0.0),
        }));
    }
    calls
}

/// An `originate/` capture of the connection that sent the Originates.
fn sent_the_actions(path: &Path) -> bool {
    path.parent()
        .and_then(Path::file_name)
        .is_some_and(|d| d.to_string_lossy().starts_with("originate"))
        && !path.to_string_lossy().ends_with(".listener.ami")
}

fn check_capture(path: &Path) -> Vec<String> {
    let truth = truth_of(path);
    let got = if sent_the_actions(path) {
        run_with_actions(path)
    } else {
        run(&[path])
    };
    let name = path
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ami"))
        .unwrap()
        .display()
        .to_string();
    let mut errs = Vec::new();
    let by_id: BTreeMap<&str, &CallRecord> = got
        .calls
        .iter()
        .map(|c| (c.session_id.as_str(), c))
        .collect();
    let want = truth["calls"].as_array().unwrap();
    let want_ids: BTreeSet<&str> = want
        .iter()
        .map(|c| c["linkedid"].as_str().unwrap())
        .collect();
    for c in &got.calls {
        if !want_ids.contains(c.session_id.as_str()) {
            errs.push(format!("{name}: phantom call {}", c.session_id));
        }
    }
    if got.calls.len() != by_id.len() {
        errs.push(format!("{name}: a session id was closed twice"));
    }
    for w in want {
        let id = w["linkedid"].as_str().unwrap();
        let Some(c) = by_id.get(id) else {
            errs.push(format!("{name}: call {id} missing"));
            continue;
        };
        let mut cmp = |field: &str, got: String, want: String| {
            if got != want {
                errs.push(format!("{name} {id}: {field}: got {got}, want {want}"));
            }
        };
        cmp(
            "direction",
            c.direction.as_str().into(),
            s(&w["direction"]).unwrap(),
        );
        cmp(
            "caller_number",
            format!("{:?}", c.caller_number),
            format!("{:?}", s(&w["caller_number"])),
        );
        cmp(
            "dialed_number",
            format!("{:?}", c.dialed_number),
            format!("{:?}", s(&w["dialed_number"])),
        );
        cmp(
            "queue",
            format!("{:?}", c.queue),
            format!("{:?}", s(&w["queue"])),
        );
        let rang: Vec<String> = w["rang"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(s)
            .filter(|r| r != "PSTN")
            .collect();
        cmp(
            "extensions_rung",
            format!("{:?}", c.extensions_rung),
            format!("{rang:?}"),
        );
        cmp(
            "answered_by",
            format!("{:?}", c.answered_by),
            format!("{:?}", party(&w["answered_by"])),
        );
        cmp(
            "final_answered_by",
            format!("{:?}", c.final_answered_by),
            format!("{:?}", party(&w["final_answered_by"])),
        );
        cmp(
            "disposition",
            c.disposition.as_str().into(),
            s(&w["disposition"]).unwrap(),
        );
        // (Hand-written truths may leave the name out.)
        if w.get("caller_name").is_some() {
            cmp(
                "caller_name",
                format!("{:?}", c.caller_name),
                format!("{:?}", s(&w["caller_name"])),
            );
        }
        let near = |g: f64, w: f64| (g - w).abs() <= 1.0;
        for (field, key, got) in [
            ("started_at", "start_ts", Some(c.started_at.0)),
            ("answered_at", "answer_ts", c.answered_at.map(|t| t.0)),
            ("ended_at", "end_ts", Some(c.ended_at.0)),
        ] {
            // Absent in hand-written truths without Timestamp headers.
            let Some(want) = w.get(key) else { continue };
            let ok = match (got, want.as_f64()) {
                (Some(g), Some(t)) => near(g, t),
                (None, None) => true,
                _ => false,
            };
            if !ok {
                errs.push(format!("{name} {id}: {field} {got:?} vs {want}"));
            }
        }
        // (`null` in hand-written fixtures without Timestamp headers.)
        if let Some(d) = w["duration_s"].as_f64() {
            if !near(c.duration, d) {
                errs.push(format!("{name} {id}: duration {} vs {d}", c.duration));
            }
        }
        if let Some(b) = w["billsec_s"].as_f64() {
            if !near(c.billsec, b) {
                errs.push(format!("{name} {id}: billsec {} vs {b}", c.billsec));
            }
        }
        // Ringing legs: exactly the extensions that rang, each carrying the
        // real caller on incoming calls. (A queue that rings a member again
        // after its retry delay opens a new leg `SESSION/EXT#2`: the phone
        // really rang twice.)
        let ringing: Vec<&LegEvent> = got
            .legs
            .iter()
            .filter(|l| l.session_id == id && l.state == State::Ringing)
            .filter(|l| l.role == Role::Callee || c.extensions_rung.contains(&l.extension))
            .collect();
        let mut exts: Vec<String> = Vec::new();
        for l in &ringing {
            if !exts.contains(&l.extension) {
                exts.push(l.extension.clone());
            }
        }
        if exts != rang {
            errs.push(format!("{name} {id}: ringing legs {exts:?}, want {rang:?}"));
        }
        if c.direction.as_str() == "incoming" {
            for l in &ringing {
                if l.caller_number.as_deref() != w["caller_number"].as_str() {
                    errs.push(format!(
                        "{name} {id}: leg {} rang with caller {:?}",
                        l.extension, l.caller_number
                    ));
                }
            }
        }
        // The connection that sent the Originate knows the number from the
        // agent's first ring on (a passive listener learns it from the
        // `OriginateResponse`, after the agent answered or failed).
        if sent_the_actions(path) {
            for l in got.legs.iter().filter(|l| l.session_id == id) {
                if l.dialed_number.as_deref() != w["dialed_number"].as_str() {
                    errs.push(format!(
                        "{name} {id}: leg {} {:?} dialed {:?}",
                        l.leg_id, l.state, l.dialed_number
                    ));
                }
            }
        }
        // Monotonic: no leg id reaches the same state twice.
        let mut seen = BTreeSet::new();
        for l in got.legs.iter().filter(|l| l.session_id == id) {
            if !seen.insert((l.leg_id.clone(), l.state)) {
                errs.push(format!(
                    "{name} {id}: leg {} {:?} emitted twice",
                    l.leg_id, l.state
                ));
            }
        }
    }
    errs
}

#[test]
fn every_capture_agrees_with_its_truth() {
    let mut errs = Vec::new();
    let files = captures();
    assert!(files.len() >= 20, "fixtures missing: {files:?}");
    for f in &files {
        errs.extend(check_capture(f));
    }
    assert!(
        errs.is_empty(),
        "{} mismatches:\n{}",
        errs.len(),
        errs.join("\n")
    );
}

#[test]
fn reconnect_halves_replayed_together_give_one_correct_call() {
    for v in ["asterisk-20", "asterisk-11", "asterisk-20-pjsip"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ami")
            .join(v);
        let got = run(&[
            &dir.join("reconnect-before.ami"),
            &dir.join("reconnect-after.ami"),
        ]);
        let truth: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("reconnect-after.truth.json")).unwrap(),
        )
        .unwrap();
        let w = &truth["calls"][0];
        assert_eq!(got.calls.len(), 1, "{v}: {:#?}", got.calls);
        let c = &got.calls[0];
        assert_eq!(c.session_id, w["linkedid"].as_str().unwrap(), "{v}");
        assert_eq!(c.disposition.as_str(), "ANSWERED", "{v}");
        assert_eq!(c.answered_by.as_deref(), Some("1001"), "{v}");
        assert!(
            (c.duration - w["duration_s"].as_f64().unwrap()).abs() <= 1.0,
            "{v}: {c:?}"
        );
        assert!(
            (c.billsec - w["billsec_s"].as_f64().unwrap()).abs() <= 1.0,
            "{v}: {c:?}"
        );
        assert!(!c.approximate, "{v}: the call ended while connected");
    }
}
