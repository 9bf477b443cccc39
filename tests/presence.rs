//! Extension presence on every real capture, against what really happened.
//!
//! * `presence/`: the truth names the state a person would give every
//!   extension at each step of the driver; the states callhook reports in
//!   each step's window must include it (or, with no change in the window,
//!   the carried state must equal it), and each extension's whole sequence
//!   of states must be the expected one.
//! * every other capture (`asterisk-20`, `asterisk-11`, `asterisk-20-pjsip`,
//!   `asterisk-20-extra`, `originate`): expectations are derived from the
//!   truth's channels, the same way for every file — an extension offered a
//!   call rings while its channel rings, is `in_use` while its channel is
//!   up, is never ringing or in use outside its channels' lives, a simple
//!   call gives exactly `ringing → in_use → idle` (or the part that
//!   happened), and at the end of a capture whose calls all ended no
//!   extension is left ringing, in use or on hold, with no call.
//!
//! Every capture runs twice: in stream order, and with the model's events
//! 50 ms (capture time) behind the presence events, as the daemon's commit
//! can make them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use callhook::ami::{AmiCodec, AmiFrame};
use callhook::normalize::{Classifier, Normalizer, NormalizerConfig, Party};
use callhook::presence::replay::{replay, ReplayOptions};
use callhook::presence::{PresenceTracker, TenantSnapshot, TrackerConfig};
use serde_json::Value;
use tokio_util::codec::Decoder;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ami")
}

/// The `.ami` files of a fixture folder (listener views included).
fn captures(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ami"))
        .collect();
    v.sort();
    v
}

fn truth_of(capture: &Path) -> Value {
    let name = capture.file_name().unwrap().to_string_lossy().to_string();
    let base = name
        .trim_end_matches(".ami")
        .trim_end_matches(".listener")
        .to_string();
    let p = capture.with_file_name(format!("{base}.truth.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}")))
        .unwrap()
}

/// What callhook reported for one capture.
struct Timeline {
    /// Per extension: (time, human state), time made monotonic in emission order.
    states: BTreeMap<String, Vec<(f64, String)>>,
    end: TenantSnapshot,
    first_ts: f64,
    last_ts: f64,
}

impl Timeline {
    fn at(&self, ext: &str, t: f64) -> String {
        self.states
            .get(ext)
            .and_then(|v| v.iter().rev().find(|(at, _)| *at <= t))
            .map_or("unknown".into(), |(_, s)| s.clone())
    }

    /// Every state the extension was in during `[a, b]`.
    fn during(&self, ext: &str, a: f64, b: f64) -> BTreeSet<String> {
        let mut out = BTreeSet::from([self.at(ext, a)]);
        if let Some(v) = self.states.get(ext) {
            out.extend(
                v.iter()
                    .filter(|(at, _)| *at > a && *at <= b)
                    .map(|(_, s)| s.clone()),
            );
        }
        out
    }

    /// The extension's states in order, consecutive repeats folded.
    fn sequence(&self, ext: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, s) in self.states.get(ext).into_iter().flatten() {
            if out.last() != Some(s) {
                out.push(s.clone());
            }
        }
        out
    }
}

fn timestamps(bytes: &[u8]) -> (f64, f64) {
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::from(bytes);
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    while let Ok(Some(f)) = codec.decode_eof(&mut buf) {
        if let AmiFrame::Message(m) = f {
            if let Some(t) = m.timestamp() {
                lo = lo.min(t);
                hi = hi.max(t);
            }
        }
    }
    (lo, hi)
}

fn run(paths: &[&Path], lag: f64) -> Timeline {
    let data: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let (first_ts, _) = timestamps(&data[0]);
    let (_, last_ts) = timestamps(data.last().unwrap());
    let mut n = Normalizer::new(NormalizerConfig::default());
    let mut tracker = PresenceTracker::new(TrackerConfig::default());
    let pbx: Arc<str> = "main".into();
    let mut states: BTreeMap<String, Vec<(f64, String)>> = BTreeMap::new();
    let mut clock = f64::MIN;
    replay(
        &data,
        &pbx,
        &mut n,
        &mut tracker,
        ReplayOptions { model_lag: lag },
        |ev| {
            assert_eq!(ev.pbx, "main");
            clock = clock.max(ev.at.0);
            states
                .entry(ev.presence.extension.clone())
                .or_default()
                .push((clock, ev.presence.human()));
        },
    );
    let end = tracker
        .snapshot("main")
        .expect("a table for the replayed PBX");
    Timeline {
        states,
        end,
        first_ts,
        last_ts,
    }
}

fn name(p: &Path) -> String {
    p.strip_prefix(root()).unwrap().display().to_string()
}

const LAGS: [f64; 2] = [0.0, 0.05];

// ----- presence/: compare with the human truth ---------------------------

fn check_human_truth(path: &Path, lag: f64) -> Vec<String> {
    let truth = truth_of(path);
    let got = run(&[path], lag);
    let file = format!("{} (lag {lag})", name(path));
    let mut errs = Vec::new();
    let steps = truth["steps"].as_array().unwrap();
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut first_t: BTreeMap<String, f64> = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        let Some(want) = step["expected_human"].as_object() else {
            continue;
        };
        let t = step["t"].as_f64().unwrap();
        let until = steps
            .get(i + 1)
            .and_then(|s| s["t"].as_f64())
            .unwrap_or(f64::MAX);
        for (ext, w) in want {
            let w = w.as_str().unwrap().to_string();
            let seen = got.during(ext, t, until);
            if !seen.contains(&w) {
                errs.push(format!(
                    "{file}: step {:?}: {ext} should be {w}, callhook said {seen:?}",
                    step["label"].as_str().unwrap_or("")
                ));
            }
            let seq = expected.entry(ext.clone()).or_default();
            if seq.last() != Some(&w) {
                seq.push(w);
            }
            first_t.entry(ext.clone()).or_insert(t);
        }
    }
    for (ext, want) in &expected {
        let t0 = first_t[ext];
        let mut seq = vec![got.at(ext, t0)];
        for (at, s) in got.states.get(ext).into_iter().flatten() {
            if *at > t0 && seq.last() != Some(s) {
                seq.push(s.clone());
            }
        }
        if seq.first() != want.first() {
            // The state carried into the first step changes within it.
            seq.remove(0);
        }
        if &seq != want {
            errs.push(format!(
                "{file}: {ext}: sequence {seq:?}, a person saw {want:?}"
            ));
        }
    }
    errs
}

#[test]
fn presence_captures_match_what_a_person_saw() {
    let files = captures("presence");
    assert_eq!(files.len(), 4, "{files:?}");
    let mut errs = Vec::new();
    for f in &files {
        for lag in LAGS {
            errs.extend(check_human_truth(f, lag));
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[test]
fn presence_table_right_after_the_login_lists() {
    // The captures start with the state lists: the table is right before
    // any change (1004 is unregistered except in reachability and dnd).
    for f in captures("presence") {
        let got = run(&[&f], 0.0);
        let t = got.first_ts;
        for ext in ["1001", "1002", "1003"] {
            assert_eq!(got.at(ext, t), "idle", "{}: {ext}", name(&f));
        }
        assert_eq!(got.at("1004", t), "unavailable", "{}", name(&f));
    }
}

#[test]
fn call_cycle_table() {
    let got = run(&[&root().join("presence/call-cycle.ami")], 0.0);
    assert_eq!(
        got.sequence("1001"),
        [
            "idle",
            "ringing",
            "in_use",
            "on_hold",
            "in_use",
            "in_use+ringing",
            "in_use",
            "idle"
        ]
    );
    for ext in ["1002", "1003"] {
        assert_eq!(got.sequence(ext), ["idle"], "{ext}");
    }
    assert_eq!(got.sequence("1004"), ["unavailable"]);
}

#[test]
fn dnd_and_reachability_tables() {
    let dnd = run(&[&root().join("presence/dnd.ami")], 0.0);
    assert_eq!(
        dnd.sequence("1004"),
        ["unavailable", "idle", "busy", "idle", "unavailable"]
    );
    let row = dnd.end.get("1004").unwrap();
    assert_eq!(row.registered, Some(false));
    assert_eq!(row.hint.as_deref(), Some("SIP/1004&Custom:DND1004"));
    let reach = run(&[&root().join("presence/reachability.ami")], 0.0);
    assert_eq!(
        reach.sequence("1004"),
        [
            "unavailable",
            "idle",
            "unavailable",
            "idle",
            "unavailable",
            "idle",
            "unavailable"
        ]
    );
    let pause = run(&[&root().join("presence/queue-pause.ami")], 0.0);
    assert_eq!(
        pause.sequence("1001"),
        ["idle"],
        "a queue pause is not presence"
    );
}

// ----- every other capture: expectations from the truth's channels -------

/// One channel of an extension, from the truth.
#[derive(Debug, Clone)]
struct Chan {
    ext: String,
    /// The extension was offered the call: its phone rang.
    offered: bool,
    /// The PBX tried to ring it (an Originate to the agent): ringing is
    /// allowed, not required.
    attempted: bool,
    created: f64,
    answered: Option<f64>,
    hangup: f64,
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// The extensions' channels of a capture, the same way for every file:
/// `calls[].channels[]` (offered when the extension is in the call's
/// `rang`), or `channels[]` of the originate cases (offered when the
/// channel went `Ringing`).
fn channels(truth: &Value) -> Vec<Chan> {
    let cls = Classifier::default();
    let ext_of = |ch: &Value| match cls.classify(ch["channel"].as_str().unwrap_or(""), None) {
        Party::Extension(e) => Some(e.to_string()),
        _ => None,
    };
    let mut out = Vec::new();
    for call in truth["calls"].as_array().into_iter().flatten() {
        let rang: BTreeSet<&str> = call["rang"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for ch in call["channels"].as_array().into_iter().flatten() {
            let Some(ext) = ext_of(ch) else { continue };
            let offered = rang.contains(ext.as_str());
            out.push(Chan {
                offered,
                attempted: offered,
                ext,
                created: num(&ch["created_ts"]).unwrap(),
                answered: num(&ch["answered_ts"]),
                hangup: num(&ch["hangup_ts"]).unwrap(),
            });
        }
    }
    for ch in truth["channels"].as_array().into_iter().flatten() {
        let Some(ext) = ext_of(ch) else { continue };
        let rang = ch["states"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s[1].as_str() == Some("Ringing"));
        out.push(Chan {
            offered: rang,
            attempted: true,
            ext,
            created: num(&ch["created_ts"]).unwrap(),
            answered: num(&ch["answered_ts"]),
            hangup: num(&ch["hangup_ts"]).unwrap(),
        });
    }
    out
}

/// Slack for the few milliseconds between a channel event and the hint.
const SLACK: f64 = 0.25;
/// A dialing leg waits this long for the PBX (`presence::derive::DIAL_GRACE`).
const GRACE: f64 = 1.0;

fn is_ringing(s: &str) -> bool {
    s == "ringing" || s.ends_with("+ringing")
}

fn is_busy_with_a_call(s: &str) -> bool {
    s.starts_with("in_use") || s.starts_with("on_hold")
}

fn check_channels(paths: &[&Path], truth: &Value, lag: f64) -> Vec<String> {
    let got = run(paths, lag);
    let file = format!(
        "{} (lag {lag})",
        paths
            .iter()
            .map(|p| name(p))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    let chans = channels(truth);
    let mut errs = Vec::new();
    let mut by_ext: BTreeMap<&str, Vec<&Chan>> = BTreeMap::new();
    for c in &chans {
        by_ext.entry(&c.ext).or_default().push(c);
    }
    // What was seen of the capture.
    let (lo, hi) = (got.first_ts, got.last_ts);
    for (ext, cs) in &by_ext {
        for c in cs {
            let ring_end = c.answered.unwrap_or(c.hangup);
            // An offered channel rings (or is call waiting) while it rings.
            if c.offered && c.created >= lo {
                let seen = got.during(ext, c.created - SLACK, ring_end + SLACK);
                if !seen.iter().any(|s| is_ringing(s)) {
                    errs.push(format!(
                        "{file}: {ext} was offered a call at {:.3} but never rang: {seen:?}",
                        c.created
                    ));
                }
            }
            // Up: in use (or on hold) all along.
            let up_from = match (c.answered, c.attempted) {
                (Some(a), _) => Some(a + SLACK),
                // The phone placed the call: dialing out is in use.
                (None, false) => Some(c.created + GRACE + 2.0 * SLACK),
                (None, true) => None,
            };
            if let Some(a) = up_from {
                let (a, b) = (a.max(lo + SLACK), (c.hangup - SLACK).min(hi));
                if a < b {
                    let seen = got.during(ext, a, b);
                    if let Some(s) = seen.iter().find(|s| !is_busy_with_a_call(s)) {
                        errs.push(format!(
                            "{file}: {ext} on a call from {a:.3} to {b:.3}, but callhook said {s} ({seen:?})"
                        ));
                    }
                }
            }
        }
        // Never ringing outside an offer, never on a call outside a channel.
        let offers: Vec<(f64, f64)> = cs
            .iter()
            .filter(|c| c.attempted)
            .map(|c| (c.created - SLACK, c.answered.unwrap_or(c.hangup) + SLACK))
            .collect();
        let lives: Vec<(f64, f64)> = cs
            .iter()
            .map(|c| (c.created - SLACK, c.hangup + SLACK))
            .collect();
        let inside = |t: f64, spans: &[(f64, f64)]| spans.iter().any(|(a, b)| t >= *a && t <= *b);
        for (t, s) in got.states.get(*ext).into_iter().flatten() {
            if is_ringing(s) && !inside(*t, &offers) && *t >= lo {
                errs.push(format!(
                    "{file}: {ext} {s} at {t:.3}, not offered a call then"
                ));
            }
            if is_busy_with_a_call(s) && !inside(*t, &lives) && *t >= lo {
                errs.push(format!("{file}: {ext} {s} at {t:.3}, on no call then"));
            }
        }
        // One channel in the whole capture: the exact sequence.
        if let [c] = cs.as_slice() {
            if c.created >= lo && c.hangup <= hi {
                // (state, required, allowed), in order.
                let placed = !c.attempted;
                let long = c.hangup - c.created > GRACE + 2.0 * SLACK;
                let want = [
                    ("ringing", c.offered, c.attempted),
                    (
                        "in_use",
                        c.answered.is_some() || (placed && long),
                        c.answered.is_some() || placed,
                    ),
                ];
                let mut seq: Vec<String> = Vec::new();
                for s in got.sequence(ext) {
                    // Hold is checked on the presence captures.
                    let s = if s.starts_with("on_hold") {
                        "in_use".to_string()
                    } else {
                        s
                    };
                    if seq.last() != Some(&s) {
                        seq.push(s);
                    }
                }
                let body: Vec<&str> = seq
                    .iter()
                    .map(String::as_str)
                    .skip_while(|s| matches!(*s, "unknown" | "idle" | "unavailable"))
                    .collect();
                let calls_part: Vec<&str> = body
                    .iter()
                    .copied()
                    .take_while(|s| !matches!(*s, "idle" | "unavailable"))
                    .collect();
                let mut rest = calls_part.as_slice();
                let mut ok = true;
                for (state, required, allowed) in want {
                    if rest.first() == Some(&state) && allowed {
                        rest = &rest[1..];
                    } else if required {
                        ok = false;
                    }
                }
                if !ok || !rest.is_empty() {
                    errs.push(format!(
                        "{file}: {ext}: {seq:?}, its one call went through {want:?}"
                    ));
                }
            }
        }
    }
    // The end: everything that happened is over.
    let all_ended = chans.iter().all(|c| c.hangup <= hi);
    if all_ended {
        for row in &got.end.extensions {
            if is_ringing(&row.human()) || is_busy_with_a_call(&row.human()) {
                errs.push(format!(
                    "{file}: {} left {} at the end",
                    row.extension,
                    row.human()
                ));
            }
            if !row.calls.is_empty() {
                errs.push(format!(
                    "{file}: {} left with calls {:?}",
                    row.extension, row.calls
                ));
            }
        }
    }
    for ext in by_ext.keys() {
        if got.end.get(ext).is_none() {
            errs.push(format!("{file}: {ext} had calls but is not in the table"));
        }
    }
    errs
}

fn check_folder(dir: &str) {
    let files = captures(dir);
    assert!(!files.is_empty(), "{dir}");
    let mut errs = Vec::new();
    for f in &files {
        let truth = truth_of(f);
        for lag in LAGS {
            errs.extend(check_channels(&[f], &truth, lag));
        }
    }
    assert!(
        errs.is_empty(),
        "{} problems:\n{}",
        errs.len(),
        errs.join("\n")
    );
}

#[test]
fn asterisk_20_captures() {
    check_folder("asterisk-20");
}

#[test]
fn asterisk_11_captures() {
    check_folder("asterisk-11");
}

#[test]
fn asterisk_20_pjsip_captures() {
    check_folder("asterisk-20-pjsip");
}

#[test]
fn asterisk_20_extra_captures() {
    check_folder("asterisk-20-extra");
}

#[test]
fn originate_captures_both_views() {
    check_folder("originate");
}

#[test]
fn reconnects_replayed_as_one_connection_after_another() {
    for dir in ["asterisk-20", "asterisk-11", "asterisk-20-pjsip"] {
        let before = root().join(dir).join("reconnect-before.ami");
        let after = root().join(dir).join("reconnect-after.ami");
        let truth = truth_of(&after);
        let mut errs = Vec::new();
        for lag in LAGS {
            errs.extend(check_channels(&[&before, &after], &truth, lag));
        }
        assert!(errs.is_empty(), "{}", errs.join("\n"));
        // Cut mid-call: the first half ends with the call still on.
        let half = run(&[&before], 0.0);
        assert!(
            half.end
                .extensions
                .iter()
                .any(|r| r.state == callhook::presence::PresenceState::InUse),
            "{dir}: {:?}",
            half.end
        );
    }
}

#[test]
fn queue_answered_table() {
    // The example of the issue: both ring, 1002 answers, 1001 goes back to
    // idle, both idle at the end.
    for dir in ["asterisk-20", "asterisk-11", "asterisk-20-pjsip"] {
        let got = run(&[&root().join(dir).join("queue-answered.ami")], 0.0);
        let strip = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .skip_while(|s| s == "unknown" || s == "idle")
                .collect()
        };
        assert_eq!(strip(got.sequence("1001")), ["ringing", "idle"], "{dir}");
        assert_eq!(
            strip(got.sequence("1002")),
            ["ringing", "in_use", "idle"],
            "{dir}"
        );
    }
}

// ----- the command line and hostile input ---------------------------------

#[test]
fn replay_presence_on_the_command_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["replay", "--presence", "--format", "jsonl"])
        .arg(root().join("asterisk-20/queue-answered.ami"))
        .output()
        .expect("run callhook");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let states_1002: Vec<&str> = events
        .iter()
        .filter(|e| e["extension"] == "1002" && e["state"] != e["previous"])
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states_1002, ["ringing", "in_use", "idle"]);
    let answered = events
        .iter()
        .find(|e| e["extension"] == "1002" && e["state"] == "in_use")
        .unwrap();
    let call = &answered["calls"][0];
    assert_eq!(call["caller_number"], "5559876543", "the real caller");
    assert_eq!(call["queue"], "ventas");
    assert_eq!(call["phase"], "talking");

    let text = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["replay", "--presence"])
        .arg(root().join("presence/call-cycle.ami"))
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("in_use → in_use+ringing"), "{text}");
    assert!(text.contains("#   1004     unavailable"), "{text}");
}

mod hostile {
    use super::*;
    use callhook::ami::AmiMessage;
    use callhook::model::{Direction, LegEvent, ModelEvent, Role, State, Timestamp};
    use callhook::source::PresenceSourceEvent;
    use proptest::prelude::*;

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("1001".to_string()),
            Just("1002".to_string()),
            Just("SIP/1001".to_string()),
            Just("PJSIP/1001".to_string()),
            Just("SIP/1001&Custom:DND1001".to_string()),
            Just("Queue:q_pause_SIP/1001".to_string()),
            Just("".to_string()),
            "[0-9]{1,8}",
            ".{0,40}",
        ]
    }

    fn event() -> impl Strategy<Value = AmiMessage> {
        let name = prop_oneof![
            Just("ExtensionStatus"),
            Just("DeviceStateChange"),
            Just("PeerStatus"),
            Just("ContactStatus"),
            Just("Hold"),
            Just("Unhold"),
            Just("PeerEntry"),
            Just("EndpointList"),
            Just("Whatever"),
        ];
        let value = prop_oneof![
            word(),
            Just("8".to_string()),
            Just("-2".to_string()),
            Just("99999999999999999999".to_string()),
            Just("NOT_INUSE".to_string()),
            Just("RINGINUSE".to_string()),
            Just("Unregistered".to_string()),
            Just("Removed".to_string()),
        ];
        let keys = prop::sample::select(vec![
            "Exten",
            "Hint",
            "Status",
            "StatusText",
            "Device",
            "State",
            "Peer",
            "PeerStatus",
            "URI",
            "ContactStatus",
            "EndpointName",
            "Channel",
            "Linkedid",
            "ObjectName",
            "DeviceState",
            "Timestamp",
        ]);
        (name, prop::collection::vec((keys, value), 0..8)).prop_map(|(n, fields)| {
            let mut m = AmiMessage::new();
            m.push("Event", n);
            for (k, v) in fields {
                m.push(k, v);
            }
            m
        })
    }

    fn leg() -> impl Strategy<Value = ModelEvent> {
        (
            prop::sample::select(vec!["1001", "1002", "x;y", ""]),
            prop::sample::select(vec!["s1", "s2", "s3"]),
            0u8..3,
            any::<bool>(),
            0.0f64..100.0,
        )
            .prop_map(|(ext, session, st, caller, at)| {
                ModelEvent::Leg(LegEvent {
                    session_id: session.into(),
                    pbx: "h".into(),
                    leg_id: format!("{session}/{ext}"),
                    state: [State::Ringing, State::Answered, State::Hungup][st as usize],
                    direction: Direction::Incoming,
                    role: if caller { Role::Caller } else { Role::Callee },
                    extension: ext.into(),
                    caller_number: Some("5551234567".into()),
                    caller_name: None,
                    dialed_number: None,
                    queue: None,
                    at: Timestamp(at),
                    duration: None,
                    billsec: None,
                    disposition: None,
                    approximate: false,
                    extra: Default::default(),
                })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Any mix of hostile presence events, state lists and legs: no
        /// panic, a bounded table, valid extension names only, seq
        /// consecutive, and once every leg hung up and the calls ended,
        /// no extension is left with a call.
        #[test]
        fn never_panics_and_stays_bounded(
            evs in prop::collection::vec(
                prop_oneof![
                    event().prop_map(Ok),
                    leg().prop_map(Err),
                ],
                0..200,
            ),
            list in prop::collection::vec(event(), 0..20),
        ) {
            let mut tracker = PresenceTracker::new(TrackerConfig {
                max_extensions: 8,
                ..TrackerConfig::default()
            });
            let pbx: Arc<str> = "h".into();
            let mut out = Vec::new();
            tracker.handle_source(&PresenceSourceEvent::AmiStateList {
                pbx: pbx.clone(),
                received_at: 1.0,
                action: Some("ExtensionStateList".into()),
                response: AmiMessage::from_pairs([("Response", "Success")]),
                items: list,
            }, &mut out);
            for (i, e) in evs.iter().enumerate() {
                match e {
                    Ok(m) => tracker.handle_source(&PresenceSourceEvent::Ami {
                        pbx: pbx.clone(),
                        received_at: i as f64,
                        msg: m.clone(),
                    }, &mut out),
                    Err(l) => tracker.handle_model(l, &mut out),
                }
                if i % 50 == 0 {
                    tracker.tick(i as f64, &mut out);
                }
            }
            for (i, ev) in out.iter().enumerate() {
                prop_assert_eq!(ev.seq, i as u64 + 1);
            }
            // Every leg ends.
            for s in ["s1", "s2", "s3"] {
                tracker.handle_model(&ModelEvent::Call(callhook::model::CallRecord {
                    session_id: s.into(),
                    pbx: "h".into(),
                    direction: Direction::Incoming,
                    caller_number: None,
                    caller_name: None,
                    dialed_number: None,
                    queue: None,
                    extensions_rung: Vec::new(),
                    answered_by: None,
                    final_answered_by: None,
                    started_at: Timestamp(0.0),
                    answered_at: None,
                    ended_at: Timestamp(200.0),
                    duration: 0.0,
                    billsec: 0.0,
                    disposition: callhook::model::Disposition::NoAnswer,
                    end_reason: callhook::model::EndReason::Hangup,
                    recording_url: None,
                    approximate: false,
                    extra: Default::default(),
                }), &mut out);
            }
            if let Some(snap) = tracker.snapshot("h") {
                prop_assert!(snap.extensions.len() <= 8);
                for row in &snap.extensions {
                    prop_assert!(callhook::presence::config::valid_extension(&row.extension));
                    prop_assert!(row.calls.is_empty(), "{:?}", row);
                }
            }
        }
    }
}
