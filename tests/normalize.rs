//! Normalizer robustness on real captures: duplicated and reordered events,
//! reconnect reconciliation, maximum call age, bounded memory, random input.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use callhook::ami::{AmiCodec, AmiFrame, AmiMessage};
use callhook::model::{CallRecord, EndReason, ModelEvent, State};
use callhook::normalize::{Normalizer, NormalizerConfig};
use callhook::replay::{Routed, Router};
use callhook::source::SourceEvent;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ami")
        .join(rel)
}

/// The unsolicited events and the post-login snapshot of one capture, as
/// the client would deliver them.
fn source_events(rel: &str) -> Vec<SourceEvent> {
    let bytes = std::fs::read(fixture(rel)).unwrap();
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut router = Router::default();
    let mut out = Vec::new();
    let pbx: Arc<str> = "main".into();
    let mut last = 0.0;
    while let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
        let AmiFrame::Message(m) = frame else {
            continue;
        };
        match router.route(m) {
            Routed::Event(m) => {
                last = m.timestamp().unwrap_or(last);
                out.push(SourceEvent::Ami {
                    pbx: pbx.clone(),
                    received_at: last,
                    msg: m,
                })
            }
            Routed::Snapshot(channels) => out.push(SourceEvent::AmiSnapshot {
                pbx: pbx.clone(),
                received_at: last,
                channels,
            }),
            Routed::Dropped => {}
        }
    }
    out
}

fn feed(n: &mut Normalizer, evs: &[SourceEvent]) -> Vec<ModelEvent> {
    let mut out = Vec::new();
    for e in evs {
        n.handle(e, &mut out);
    }
    out
}

fn records(out: &[ModelEvent]) -> Vec<CallRecord> {
    out.iter()
        .filter_map(|e| match e {
            ModelEvent::Call(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn last_time(evs: &[SourceEvent]) -> f64 {
    evs.iter()
        .filter_map(|e| match e {
            SourceEvent::Ami { received_at, .. } => Some(*received_at),
            _ => None,
        })
        .fold(0.0, f64::max)
}

/// Every leg moves forward only, and no call is closed twice.
fn assert_monotonic(out: &[ModelEvent]) {
    let mut legs: BTreeMap<String, State> = BTreeMap::new();
    let mut closed = BTreeSet::new();
    for e in out {
        match e {
            ModelEvent::Leg(l) => {
                if let Some(prev) = legs.get(&l.leg_id) {
                    assert!(
                        l.state > *prev,
                        "leg {} went {prev:?} -> {:?}",
                        l.leg_id,
                        l.state
                    );
                }
                legs.insert(l.leg_id.clone(), l.state);
            }
            ModelEvent::Call(c) => {
                assert!(
                    closed.insert(c.session_id.clone()),
                    "{} closed twice",
                    c.session_id
                );
            }
            ModelEvent::CallState(_) => {}
        }
    }
}

#[test]
fn duplicated_events_change_nothing() {
    for rel in [
        "asterisk-20/queue-answered.ami",
        "asterisk-20/load-dev.ami",
        "asterisk-11/queue-answered.ami",
        "asterisk-11/transfer-attended.ami",
        "asterisk-11/queue-answered-noagentevents.ami",
        "asterisk-20-extra/pickup.ami",
        "handwritten/pickup-direct-11.ami",
        "handwritten/pickup-queue-group-11-masquerade-only.ami",
        "handwritten/pickup-ringgroup-group-20-pjsip.ami",
    ] {
        let evs = source_events(rel);
        let once = feed(&mut Normalizer::new(NormalizerConfig::default()), &evs);
        let twice: Vec<SourceEvent> = evs.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
        let dup = feed(&mut Normalizer::new(NormalizerConfig::default()), &twice);
        assert_eq!(records(&once), records(&dup), "{rel}");
        assert_eq!(
            once.len(),
            dup.len(),
            "{rel}: duplicates emitted extra transitions"
        );
        assert_monotonic(&dup);
    }
}

/// Asterisk publishes `Pickup` on the picking channel's topic and the
/// caller's `DialEnd`/`AgentConnect` on another: their order on the wire is
/// not fixed. Wherever the `Pickup` lands among the events of that moment,
/// the call is the same.
#[test]
fn pickup_in_any_order_with_the_answer_gives_the_same_call() {
    for rel in [
        "asterisk-20-extra/pickup.ami",
        "handwritten/pickup-queue-directed-20-pjsip.ami",
        "handwritten/pickup-ringgroup-group-20.ami",
        "handwritten/pickup-direct-11.ami",
    ] {
        let evs = source_events(rel);
        let at = evs
            .iter()
            .position(|e| match e {
                SourceEvent::Ami { msg, .. } => msg.event() == Some("Pickup"),
                _ => false,
            })
            .unwrap();
        let want = records(&feed(
            &mut Normalizer::new(NormalizerConfig::default()),
            &evs,
        ));
        assert_eq!(want.len(), 1, "{rel}");
        for shift in -3i64..=8 {
            let mut moved = evs.clone();
            let ev = moved.remove(at);
            let to = (at as i64 + shift).clamp(0, moved.len() as i64) as usize;
            moved.insert(to, ev);
            let out = feed(&mut Normalizer::new(NormalizerConfig::default()), &moved);
            assert_monotonic(&out);
            let got = records(&out);
            assert_eq!(got.len(), 1, "{rel} shift {shift}: {got:#?}");
            let (g, w) = (&got[0], &want[0]);
            assert_eq!(
                (&g.answered_by, &g.final_answered_by, &g.extensions_rung),
                (&w.answered_by, &w.final_answered_by, &w.extensions_rung),
                "{rel} shift {shift}"
            );
            assert_eq!(g.disposition, w.disposition, "{rel} shift {shift}");
            assert!((g.billsec - w.billsec).abs() < 1.0, "{rel} shift {shift}");
        }
    }
}

#[test]
fn reordered_events_never_duplicate_calls_or_move_legs_backwards() {
    let evs = source_events("asterisk-20/load-dev.ami");
    let truth_calls = 150;
    for seed in 1..=5u64 {
        let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        let mut shuffled = evs.clone();
        for i in 1..shuffled.len() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 5 == 0 {
                shuffled.swap(i - 1, i);
            }
        }
        let mut n = Normalizer::new(NormalizerConfig::default());
        let mut out = feed(&mut n, &shuffled);
        n.tick(last_time(&evs) + 5.0 * 3600.0, &mut out);
        assert_monotonic(&out);
        let recs = records(&out);
        let ids: BTreeSet<&str> = recs.iter().map(|c| c.session_id.as_str()).collect();
        assert_eq!(ids.len(), recs.len(), "seed {seed}");
        assert_eq!(
            recs.len(),
            truth_calls,
            "seed {seed}: phantom or lost calls"
        );
        assert_eq!(n.tracked().calls, 0, "seed {seed}");
    }
}

#[test]
fn call_that_ended_while_disconnected_is_closed_once_as_approximate() {
    for v in ["asterisk-20", "asterisk-11"] {
        let before = source_events(&format!("{v}/reconnect-before.ami"));
        let mut n = Normalizer::new(NormalizerConfig::default());
        let mut out = feed(&mut n, &before);
        assert!(records(&out).is_empty(), "{v}: the call is still up");
        let t = last_time(&before) + 30.0;
        let pbx: Arc<str> = "main".into();
        n.handle(
            &SourceEvent::AmiDisconnected {
                pbx: pbx.clone(),
                at: t - 29.0,
            },
            &mut out,
        );
        // After the reconnect the PBX lists no channel: the call is gone.
        n.handle(
            &SourceEvent::AmiSnapshot {
                pbx: pbx.clone(),
                received_at: t,
                channels: vec![],
            },
            &mut out,
        );
        let recs = records(&out);
        assert_eq!(recs.len(), 1, "{v}");
        assert!(recs[0].approximate, "{v}");
        assert_eq!(recs[0].end_reason, EndReason::Reconnect, "{v}");
        assert_eq!(recs[0].answered_by.as_deref(), Some("1001"), "{v}");
        assert_eq!(n.tracked().calls, 0);
        // The hangups that follow in the real stream change nothing.
        let after = source_events(&format!("{v}/reconnect-after.ami"));
        let late: Vec<SourceEvent> = after
            .into_iter()
            .filter(|e| matches!(e, SourceEvent::Ami { .. }))
            .collect();
        let more = feed(&mut n, &late);
        assert!(records(&more).is_empty(), "{v}: {more:?}");
        assert_monotonic(&[out, more].concat());
    }
}

#[test]
fn call_that_started_while_disconnected_appears_from_the_snapshot() {
    for v in ["asterisk-20", "asterisk-11"] {
        let after = source_events(&format!("{v}/reconnect-after.ami"));
        assert!(
            after.iter().any(
                |e| matches!(e, SourceEvent::AmiSnapshot { channels, .. } if channels.len() == 2)
            ),
            "{v}: the capture has the login snapshot"
        );
        let mut n = Normalizer::new(NormalizerConfig::default());
        let out = feed(&mut n, &after);
        let recs = records(&out);
        assert_eq!(recs.len(), 1, "{v}: {out:#?}");
        let c = &recs[0];
        assert!(c.approximate, "{v}");
        assert_eq!(c.direction.as_str(), "incoming", "{v}");
        assert_eq!(c.caller_number.as_deref(), Some("5551234567"), "{v}");
        assert_eq!(c.answered_by.as_deref(), Some("1001"), "{v}");
        assert_eq!(c.disposition.as_str(), "ANSWERED", "{v}");
        // The snapshot says how long the channels were up: the start is
        // earlier than the reconnect.
        assert!(c.duration >= 7.0, "{v}: {c:?}");
        assert_monotonic(&out);
    }
}

#[test]
fn a_call_without_hangup_is_closed_at_max_age() {
    let evs: Vec<SourceEvent> = source_events("asterisk-20/incoming-answered.ami")
        .into_iter()
        .filter(|e| match e {
            SourceEvent::Ami { msg, .. } => msg.event() != Some("Hangup"),
            _ => true,
        })
        .collect();
    let cfg = NormalizerConfig {
        max_call_age: 600.0,
        ..NormalizerConfig::default()
    };
    let mut n = Normalizer::new(cfg);
    let mut out = feed(&mut n, &evs);
    assert_eq!(n.tracked().calls, 1);
    let t = last_time(&evs);
    n.tick(t + 60.0, &mut out);
    assert_eq!(n.tracked().calls, 1, "not old yet");
    n.tick(t + 601.0, &mut out);
    let recs = records(&out);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].end_reason, EndReason::MaxAge);
    assert!(recs[0].approximate);
    assert_eq!(n.tracked().calls, 0);
    assert_eq!(n.tracked().channels, 0);
    // Every leg that was open is closed.
    let hung: usize = out
        .iter()
        .filter(|e| matches!(e, ModelEvent::Leg(l) if l.state == State::Hungup))
        .count();
    assert_eq!(hung, 1);
}

fn synthetic(i: u64, t: f64, with_hangup: bool) -> Vec<AmiMessage> {
    let root = format!("{}.{}", 1_800_000_000 + i, 2 * i);
    let leg = format!("{}.{}", 1_800_000_000 + i, 2 * i + 1);
    let ts = |d: f64| format!("{:.6}", t + d);
    let mut v = vec![
        AmiMessage::from_pairs([
            ("Event", "Newchannel".to_string()),
            ("Timestamp", ts(0.0)),
            ("Channel", format!("SIP/pstn-{:08x}", 2 * i)),
            ("ChannelStateDesc", "Ring".into()),
            ("CallerIDNum", format!("555{i:07}")),
            ("Context", "from-pstn".into()),
            ("Exten", "2125550100".into()),
            ("Uniqueid", root.clone()),
            ("Linkedid", root.clone()),
        ]),
        AmiMessage::from_pairs([
            ("Event", "DialBegin".to_string()),
            ("Timestamp", ts(0.1)),
            ("Channel", format!("SIP/pstn-{:08x}", 2 * i)),
            ("Uniqueid", root.clone()),
            ("Linkedid", root.clone()),
            ("DestChannel", format!("SIP/1001-{:08x}", 2 * i + 1)),
            ("DestUniqueid", leg.clone()),
            ("DestLinkedid", root.clone()),
        ]),
        AmiMessage::from_pairs([
            ("Event", "Newstate".to_string()),
            ("Timestamp", ts(1.0)),
            ("Channel", format!("SIP/1001-{:08x}", 2 * i + 1)),
            ("ChannelStateDesc", "Up".into()),
            ("Uniqueid", leg.clone()),
            ("Linkedid", root.clone()),
        ]),
    ];
    if with_hangup {
        for (u, name) in [
            (&leg, format!("SIP/1001-{:08x}", 2 * i + 1)),
            (&root, format!("SIP/pstn-{:08x}", 2 * i)),
        ] {
            v.push(AmiMessage::from_pairs([
                ("Event", "Hangup".to_string()),
                ("Timestamp", ts(5.0)),
                ("Channel", name),
                ("Uniqueid", u.clone()),
                ("Linkedid", root.clone()),
                ("Cause", "16".into()),
            ]));
        }
    }
    v
}

#[test]
fn memory_stays_flat_over_many_calls_with_missing_hangups() {
    let cfg = NormalizerConfig {
        max_call_age: 3600.0,
        late_event_window: 300.0,
        ..NormalizerConfig::default()
    };
    let mut n = Normalizer::new(cfg);
    let pbx: Arc<str> = "main".into();
    let mut out = Vec::new();
    let mut peak = 0;
    let total = 10_000u64;
    for i in 0..total {
        // One call every 2 s; 5 % never hang up.
        let t = 1_800_000_000.0 + 2.0 * i as f64;
        for msg in synthetic(i, t, i % 20 != 7) {
            n.handle(
                &SourceEvent::Ami {
                    pbx: pbx.clone(),
                    received_at: t,
                    msg,
                },
                &mut out,
            );
        }
        if i % 100 == 0 {
            n.tick(t, &mut out);
            out.clear();
        }
        peak = peak.max(n.tracked().calls + n.tracked().tombstones);
    }
    // Calls without hangup live at most max_age (1800 calls at one per 2 s,
    // 5 % of them); tombstones at most late_event_window (150 calls × 2).
    let t = n.tracked();
    assert!(t.calls <= 1800 / 20 + 10, "{t:?}");
    assert!(t.tombstones <= 2 * (300 / 2 + 100), "{t:?}");
    assert!(peak < 1000, "peak {peak}");
}

#[derive(Debug, Clone)]
enum Op {
    New(u8, u8, u8),
    State(u8, u8),
    Dial(u8, u8),
    Tie(u8, u8),
    Hangup(u8),
    Rename(u8, u8),
    Queue(u8),
    Snapshot(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..12, 0u8..6, 0u8..12).prop_map(|(a, b, c)| Op::New(a, b, c)),
        (0u8..12, 0u8..8).prop_map(|(a, b)| Op::State(a, b)),
        (0u8..12, 0u8..12).prop_map(|(a, b)| Op::Dial(a, b)),
        (0u8..12, 0u8..12).prop_map(|(a, b)| Op::Tie(a, b)),
        (0u8..12).prop_map(Op::Hangup),
        (0u8..12, 0u8..6).prop_map(|(a, b)| Op::Rename(a, b)),
        (0u8..12).prop_map(Op::Queue),
        prop::collection::vec(0u8..12, 0..4).prop_map(Op::Snapshot),
    ]
}

const NAMES: [&str; 6] = [
    "SIP/1001-00000001",
    "SIP/pstn-00000002",
    "Local/1002@from-queue-0001;1",
    "Local/1002@from-queue-0001;2",
    "Transfered/SIP/pstn-00000002<ZOMBIE>",
    "garbage\r\nname",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any sequence of plausible (and implausible) events, with and without
    /// Linkedid: never panics, legs never move backwards, nothing is closed
    /// twice, and everything is closed by max age.
    #[test]
    fn random_event_sequences_are_safe(ops in prop::collection::vec(op(), 0..80), linked in any::<bool>()) {
        let mut n = Normalizer::new(NormalizerConfig::default());
        let pbx: Arc<str> = "p".into();
        let mut out = Vec::new();
        let uid = |i: u8| format!("100.{i}");
        for (k, o) in ops.iter().enumerate() {
            let t = 100.0 + k as f64 * 0.3;
            let mut m = vec![("Timestamp".to_string(), format!("{t}"))];
            let mut push = |k: &str, v: String| m.push((k.to_string(), v));
            match o {
                Op::New(a, name, linked_to) => {
                    push("Event", "Newchannel".into());
                    push("Channel", NAMES[*name as usize].into());
                    push("Uniqueid", uid(*a));
                    push("CallerIDNum", format!("10{a}"));
                    push("Exten", "2125550100".into());
                    if linked { push("Linkedid", uid(*linked_to)); }
                }
                Op::State(a, s) => {
                    push("Event", "Newstate".into());
                    push("Uniqueid", uid(*a));
                    push("ChannelState", s.to_string());
                    if linked { push("Linkedid", uid(*a / 2)); }
                }
                Op::Dial(a, b) => {
                    push("Event", "DialBegin".into());
                    push("Uniqueid", uid(*a));
                    push("DestUniqueid", uid(*b));
                }
                Op::Tie(a, b) => {
                    push("Event", "Bridge".into());
                    push("Bridgestate", "Link".into());
                    push("Uniqueid1", uid(*a));
                    push("Uniqueid2", uid(*b));
                }
                Op::Hangup(a) => {
                    push("Event", "Hangup".into());
                    push("Uniqueid", uid(*a));
                    push("Cause", "16".into());
                }
                Op::Rename(a, name) => {
                    push("Event", "Rename".into());
                    push("Uniqueid", uid(*a));
                    push("Newname", NAMES[*name as usize].into());
                }
                Op::Queue(a) => {
                    push("Event", "QueueCallerJoin".into());
                    push("Uniqueid", uid(*a));
                    push("Queue", "ventas".into());
                }
                Op::Snapshot(ids) => {
                    let channels = ids
                        .iter()
                        .map(|i| AmiMessage::from_pairs([
                            ("Event", "CoreShowChannel".to_string()),
                            ("Channel", NAMES[(*i % 6) as usize].to_string()),
                            ("Uniqueid", uid(*i)),
                            ("ChannelStateDesc", "Up".into()),
                            ("Duration", "00:00:03".into()),
                        ]))
                        .collect();
                    n.handle(&SourceEvent::AmiSnapshot { pbx: pbx.clone(), received_at: t, channels }, &mut out);
                    continue;
                }
            }
            let msg = AmiMessage::from_pairs(m);
            n.handle(&SourceEvent::Ami { pbx: pbx.clone(), received_at: t, msg }, &mut out);
        }
        n.tick(100.0 + 5.0 * 3600.0, &mut out);
        assert_monotonic(&out);
        prop_assert_eq!(n.tracked().calls, 0);
        prop_assert_eq!(n.tracked().channels, 0);
    }
}

#[test]
fn calls_beyond_max_live_are_not_tracked_and_room_comes_back() {
    let cfg = NormalizerConfig {
        max_live_calls: 3,
        ..NormalizerConfig::default()
    };
    let mut n = Normalizer::new(cfg);
    let pbx: Arc<str> = "main".into();
    let mut out = Vec::new();
    let t0 = 1_800_000_000.0;
    let feed_msgs =
        |n: &mut Normalizer, msgs: Vec<AmiMessage>, t: f64, out: &mut Vec<ModelEvent>| {
            for msg in msgs {
                n.handle(
                    &SourceEvent::Ami {
                        pbx: pbx.clone(),
                        received_at: t,
                        msg,
                    },
                    out,
                );
            }
        };
    // Five calls ring at once; only three fit.
    for i in 0..5 {
        feed_msgs(
            &mut n,
            synthetic(i, t0 + i as f64, false),
            t0 + i as f64,
            &mut out,
        );
    }
    assert_eq!(n.tracked().calls, 3);
    assert!(n.tracked().channels <= 6, "{:?}", n.tracked());
    // The calls in progress go on and finish; a refused call leaves nothing.
    feed_msgs(&mut n, synthetic(4, t0 + 4.0, true), t0 + 10.0, &mut out);
    feed_msgs(&mut n, synthetic(0, t0, true), t0 + 10.0, &mut out);
    n.tick(t0 + 20.0, &mut out);
    let recs = records(&out);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0].session_id.as_str(), "1800000000.0");
    assert_eq!(n.tracked().calls, 2);
    // There is room again for a new call.
    feed_msgs(&mut n, synthetic(7, t0 + 30.0, false), t0 + 30.0, &mut out);
    assert_eq!(n.tracked().calls, 3);
}

/// Every capture replayed on its own gives call times from the capture's
/// own clock: a login snapshot that precedes the first `Timestamp` (an
/// Asterisk 11 reconnect) is not placed at epoch 0.
#[test]
fn replayed_calls_never_start_before_the_capture() {
    let mut files = Vec::new();
    for dir in ["asterisk-11", "asterisk-20", "asterisk-20-pjsip"] {
        for e in std::fs::read_dir(fixture(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "ami") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() > 20, "{files:?}");
    let pbx: Arc<str> = "main".into();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let mut n = Normalizer::new(NormalizerConfig::default());
        let mut recs = Vec::new();
        callhook::replay::replay(&[bytes], &pbx, &mut n, |ev| {
            if let ModelEvent::Call(c) = ev {
                recs.push(c.clone());
            }
        });
        // 2020-01-01: every capture was recorded long after.
        for c in recs {
            for t in [Some(c.started_at), c.answered_at, Some(c.ended_at)]
                .into_iter()
                .flatten()
            {
                assert!(t.0 > 1_577_836_800.0, "{}: {c:?}", f.display());
            }
        }
    }
}
