//! The push state machine, end to end on one team's table.

use std::collections::HashMap;

use super::*;
use crate::model::{CallRecord, Direction, Disposition, LegEvent, Role};
use crate::source::PushSide;

const T0: f64 = 1_800_000_000.0;

fn cfg() -> NormalizerConfig {
    NormalizerConfig {
        push_settle: 2.0,
        max_call_age: 3600.0,
        ..NormalizerConfig::default()
    }
}

fn ev(kind: &str, side: Option<PushSide>, calltype: &str, ext: &str, at: f64) -> PushEvent {
    PushEvent {
        session_id: "s1".into(),
        kind: match kind {
            "ringing" => PushKind::Ringing,
            "answer" => PushKind::Answer,
            "hangup" => PushKind::Hangup,
            o => PushKind::Other(o.into()),
        },
        event: kind.into(),
        side,
        call_type: Some(calltype.into()),
        active_num: Some("5551234567".into()),
        event_time: Some(at),
        event_time_raw: Some(format!("{at}")),
        extension: (!ext.is_empty()).then(|| ext.to_string()),
        ..PushEvent::default()
    }
}

fn callee(kind: &str, at: f64) -> PushEvent {
    ev(kind, Some(PushSide::Callee), "dialin", "1001", at)
}

fn records(out: &[ModelEvent]) -> Vec<&CallRecord> {
    out.iter()
        .filter_map(|e| match e {
            ModelEvent::Call(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn legs(out: &[ModelEvent]) -> Vec<&LegEvent> {
    out.iter()
        .filter_map(|e| match e {
            ModelEvent::Leg(l) => Some(l),
            _ => None,
        })
        .collect()
}

/// Every leg's states strictly increase and each is emitted once; the
/// call states too; exactly `n` records.
fn assert_coherent(out: &[ModelEvent], n: usize) {
    let mut by_leg: HashMap<&str, Vec<State>> = HashMap::new();
    for l in legs(out) {
        by_leg.entry(&l.leg_id).or_default().push(l.state);
    }
    for (id, states) in by_leg {
        assert!(
            states.windows(2).all(|w| w[0] < w[1]),
            "leg {id} not monotonic: {states:?}"
        );
    }
    let calls: Vec<State> = out
        .iter()
        .filter_map(|e| match e {
            ModelEvent::CallState(c) => Some(c.state),
            _ => None,
        })
        .collect();
    assert!(calls.windows(2).all(|w| w[0] < w[1]), "{calls:?}");
    let recs = records(out);
    assert_eq!(recs.len(), n, "{out:#?}");
    for r in recs {
        assert!(r.started_at.0 <= r.ended_at.0);
        if let Some(a) = r.answered_at {
            assert!(r.started_at.0 <= a.0 && a.0 <= r.ended_at.0);
            assert_eq!(r.disposition, Disposition::Answered);
        }
        assert!((r.duration - (r.ended_at.0 - r.started_at.0)).abs() < 1e-6);
    }
}

fn permutations<T: Clone>(v: &[T]) -> Vec<Vec<T>> {
    if v.len() <= 1 {
        return vec![v.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..v.len() {
        let mut rest = v.to_vec();
        let x = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, x.clone());
            out.push(p);
        }
    }
    out
}

#[test]
fn every_ordering_of_ringing_answer_hangup_gives_one_answered_record() {
    let evs = [
        callee("ringing", T0),
        callee("answer", T0 + 3.0),
        callee("hangup", T0 + 10.0),
    ];
    for order in permutations(&evs) {
        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        for (i, e) in order.iter().enumerate() {
            p.apply(e, T0 + 20.0 + i as f64 * 0.01, &mut out);
        }
        p.tick(&cfg(), T0 + 21.0, &mut out);
        assert!(records(&out).is_empty(), "settling");
        p.tick(&cfg(), T0 + 23.0, &mut out);
        assert_coherent(&out, 1);
        let r = records(&out)[0];
        let kinds: Vec<_> = order.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(r.disposition, Disposition::Answered, "{kinds:?}");
        assert_eq!(r.started_at.0, T0, "{kinds:?}");
        assert_eq!(r.answered_at.map(|a| a.0), Some(T0 + 3.0), "{kinds:?}");
        assert_eq!(r.ended_at.0, T0 + 10.0, "{kinds:?}");
        assert_eq!(r.billsec, 7.0);
        assert_eq!(r.answered_by.as_deref(), Some("1001"));
        assert_eq!(r.final_answered_by.as_deref(), Some("1001"));
        assert_eq!(r.extensions_rung, vec!["1001".to_string()]);
        assert_eq!(r.direction, Direction::Incoming);
        assert_eq!(r.caller_number.as_deref(), Some("5551234567"));
        assert_eq!(r.end_reason, EndReason::Hangup);
        // The leg ends exactly once, whatever the order.
        let hung = legs(&out)
            .iter()
            .filter(|l| l.state == State::Hungup)
            .count();
        assert_eq!(hung, 1, "{kinds:?}");
        // A late push after the record never reopens it.
        let mut more = Vec::new();
        let r = p.apply(&callee("ringing", T0 + 1.0), T0 + 30.0, &mut more);
        assert!(!r.duplicate);
        assert!(more.is_empty());
        assert_eq!(p.live_calls(), 0);
    }
}

#[test]
fn every_ordering_without_answer_gives_one_no_answer_record() {
    let evs = [callee("ringing", T0), callee("hangup", T0 + 10.0)];
    for order in permutations(&evs) {
        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        for e in &order {
            p.apply(e, T0 + 20.0, &mut out);
        }
        p.tick(&cfg(), T0 + 30.0, &mut out);
        assert_coherent(&out, 1);
        let r = records(&out)[0];
        assert_eq!(r.disposition, Disposition::NoAnswer);
        assert_eq!(r.answered_at, None);
        assert_eq!(r.duration, 10.0);
        assert_eq!(r.billsec, 0.0);
    }
}

#[test]
fn every_ordering_with_the_customer_side_gives_one_record() {
    // dialin: customer (CALLER) rings, agent rings, answers, both hang up.
    let caller = |k: &str, at: f64| ev(k, Some(PushSide::Caller), "dialin", "", at);
    let evs = [
        caller("ringing", T0),
        callee("ringing", T0 + 1.0),
        callee("answer", T0 + 4.0),
        caller("hangup", T0 + 9.0),
        callee("hangup", T0 + 9.5),
    ];
    for order in permutations(&evs) {
        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        for e in &order {
            p.apply(e, T0 + 20.0, &mut out);
        }
        p.tick(&cfg(), T0 + 30.0, &mut out);
        assert_coherent(&out, 1);
        let r = records(&out)[0];
        assert_eq!(r.disposition, Disposition::Answered);
        assert_eq!(r.started_at.0, T0);
        assert_eq!(r.ended_at.0, T0 + 9.5);
        assert_eq!(r.answered_at.map(|a| a.0), Some(T0 + 4.0));
    }
}

#[test]
fn hangup_only_gives_one_no_answer_record_with_just_hungup() {
    let mut p = PushCalls::new("acme".into());
    let mut out = Vec::new();
    p.apply(&callee("hangup", T0), T0, &mut out);
    let l = legs(&out);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].state, State::Hungup);
    assert_eq!(l[0].disposition, Some(Disposition::NoAnswer));
    assert!(out.iter().all(|e| !matches!(e, ModelEvent::CallState(_))));
    p.tick(&cfg(), T0 + 5.0, &mut out);
    assert_coherent(&out, 1);
    assert_eq!(records(&out)[0].disposition, Disposition::NoAnswer);
}

#[test]
fn dialstatus_gives_busy_and_answer_on_hangup_counts() {
    let mut p = PushCalls::new("acme".into());
    let mut out = Vec::new();
    let mut h = callee("hangup", T0 + 2.0);
    h.dial_status = Some("BUSY".into());
    p.apply(&callee("ringing", T0), T0, &mut out);
    p.apply(&h, T0 + 2.0, &mut out);
    p.tick(&cfg(), T0 + 10.0, &mut out);
    assert_eq!(records(&out)[0].disposition, Disposition::Busy);
    assert_eq!(legs(&out)[1].disposition, Some(Disposition::Busy));

    let mut p = PushCalls::new("acme".into());
    let mut out = Vec::new();
    let mut h = callee("hangup", T0 + 20.0);
    h.dial_status = Some("ANSWER".into());
    h.billsec = Some(15.0);
    p.apply(&callee("ringing", T0), T0, &mut out);
    p.apply(&h, T0 + 20.0, &mut out);
    p.tick(&cfg(), T0 + 30.0, &mut out);
    assert_coherent(&out, 1);
    let r = records(&out)[0];
    assert_eq!(r.disposition, Disposition::Answered);
    assert_eq!(r.answered_at.map(|a| a.0), Some(T0 + 5.0));
    assert_eq!(r.billsec, 15.0);
    assert!(!r.approximate);
}

#[test]
fn duplicates_are_reported_and_do_nothing() {
    let mut p = PushCalls::new("acme".into());
    let mut out = Vec::new();
    assert!(!p.apply(&callee("ringing", T0), T0, &mut out).duplicate);
    let n = out.len();
    assert!(
        p.apply(&callee("ringing", T0), T0 + 1.0, &mut out)
            .duplicate
    );
    assert_eq!(out.len(), n);
    // Another agent's ringing at the same second is not a duplicate.
    let other = ev("ringing", Some(PushSide::Callee), "dialin", "1002", T0);
    assert!(!p.apply(&other, T0 + 1.0, &mut out).duplicate);
    p.apply(&callee("hangup", T0 + 5.0), T0 + 5.0, &mut out);
    p.apply(
        &ev("hangup", Some(PushSide::Callee), "dialin", "1002", T0 + 5.0),
        T0 + 5.0,
        &mut out,
    );
    p.tick(&cfg(), T0 + 10.0, &mut out);
    assert_eq!(records(&out).len(), 1);
    // After the record: still a duplicate.
    assert!(
        p.apply(&callee("hangup", T0 + 5.0), T0 + 11.0, &mut out)
            .duplicate
    );
}

#[test]
fn outgoing_call_maps_caller_and_customer() {
    let agent = |k: &str, at: f64| ev(k, Some(PushSide::Caller), "dialout", "1001", at);
    let cust = |k: &str, at: f64| ev(k, Some(PushSide::Callee), "dialout", "1001", at);
    let mut p = PushCalls::new("acme".into());
    let mut out = Vec::new();
    for e in [
        agent("ringing", T0),
        agent("answer", T0 + 2.0),
        cust("ringing", T0 + 3.0),
        cust("answer", T0 + 8.0),
        cust("hangup", T0 + 20.0),
        agent("hangup", T0 + 20.5),
    ] {
        p.apply(&e, T0 + 30.0, &mut out);
    }
    p.tick(&cfg(), T0 + 40.0, &mut out);
    assert_coherent(&out, 1);
    let r = records(&out)[0];
    assert_eq!(r.direction, Direction::Outgoing);
    assert_eq!(r.caller_number.as_deref(), Some("1001"));
    assert_eq!(r.dialed_number.as_deref(), Some("5551234567"));
    assert_eq!(r.answered_by.as_deref(), Some("external"));
    assert_eq!(r.final_answered_by.as_deref(), Some("external"));
    assert_eq!(r.answered_at.map(|a| a.0), Some(T0 + 8.0));
    let l = legs(&out);
    assert!(l
        .iter()
        .all(|l| l.role == Role::Caller && l.extension == "1001"));
    assert_eq!(
        l.iter().map(|l| l.state).collect::<Vec<_>>(),
        [State::Ringing, State::Answered, State::Hungup]
    );
    assert_eq!(l[2].disposition, Some(Disposition::Answered));
}

#[test]
fn incoming_queue_call_waits_for_the_customer_after_a_missed_agent() {
    let caller = |k: &str, at: f64| ev(k, Some(PushSide::Caller), "dialin", "", at);
    let agent = |k: &str, x: &str, at: f64| ev(k, Some(PushSide::Callee), "dialin", x, at);
    let mut p = PushCalls::new("acme".into());
    let mut out = Vec::new();
    p.apply(&caller("ringing", T0), T0, &mut out);
    p.apply(&agent("ringing", "1001", T0 + 1.0), T0 + 1.0, &mut out);
    p.apply(&agent("hangup", "1001", T0 + 16.0), T0 + 16.0, &mut out);
    p.tick(&cfg(), T0 + 30.0, &mut out);
    assert!(records(&out).is_empty(), "the customer is still waiting");
    p.apply(&agent("ringing", "1002", T0 + 31.0), T0 + 31.0, &mut out);
    p.apply(&agent("answer", "1002", T0 + 33.0), T0 + 33.0, &mut out);
    p.apply(&caller("hangup", T0 + 40.0), T0 + 40.0, &mut out);
    p.tick(&cfg(), T0 + 50.0, &mut out);
    assert_coherent(&out, 1);
    let r = records(&out)[0];
    assert_eq!(r.extensions_rung, vec!["1001", "1002"]);
    assert_eq!(r.answered_by.as_deref(), Some("1002"));
    // The agent's missing hangup: its leg ends with the call.
    assert!(legs(&out)
        .iter()
        .any(|l| l.extension == "1002" && l.state == State::Hungup));
}

#[test]
fn reoffer_after_hangup_opens_a_second_leg() {
    let mut p = PushCalls::new("acme".into());
    let mut out = Vec::new();
    let caller = ev("ringing", Some(PushSide::Caller), "dialin", "", T0);
    p.apply(&caller, T0, &mut out);
    p.apply(&callee("ringing", T0 + 1.0), T0 + 1.0, &mut out);
    p.apply(&callee("hangup", T0 + 5.0), T0 + 5.0, &mut out);
    p.apply(&callee("ringing", T0 + 8.0), T0 + 8.0, &mut out);
    let ids: Vec<&str> = legs(&out).iter().map(|l| l.leg_id.as_str()).collect();
    assert_eq!(ids, ["s1/1001", "s1/1001", "s1/1001#2"]);
}

#[test]
fn max_age_closes_a_session_that_never_hangs_up() {
    let mut p = PushCalls::new("acme".into());
    let mut out = Vec::new();
    p.apply(&callee("ringing", T0), T0, &mut out);
    p.apply(&callee("answer", T0 + 2.0), T0 + 2.0, &mut out);
    let c = NormalizerConfig {
        max_call_age: 60.0,
        ..cfg()
    };
    p.tick(&c, T0 + 59.0, &mut out);
    assert!(records(&out).is_empty());
    p.tick(&c, T0 + 61.0, &mut out);
    assert_coherent(&out, 1);
    let r = records(&out)[0];
    assert_eq!(r.end_reason, EndReason::MaxAge);
    assert!(r.approximate);
    assert_eq!(p.live_calls(), 0);
    assert_eq!(legs(&out).last().map(|l| l.state), Some(State::Hungup));
}

#[test]
fn unknown_events_keep_fields_but_say_nothing() {
    let mut p = PushCalls::new("acme".into());
    let mut out = Vec::new();
    let mut e = ev("transfer", Some(PushSide::Callee), "dialin", "1001", T0);
    e.extra.insert("crm_id".into(), "42".into());
    e.recording_url = Some("https://rec/1.wav".into());
    p.apply(&e, T0, &mut out);
    assert!(out.is_empty());
    let c = NormalizerConfig {
        max_call_age: 60.0,
        ..cfg()
    };
    p.tick(&c, T0 + 61.0, &mut out);
    assert!(
        out.is_empty(),
        "a session that said nothing leaves no record"
    );

    let mut p = PushCalls::new("acme".into());
    p.apply(&e, T0, &mut out);
    p.apply(&callee("ringing", T0 + 1.0), T0 + 1.0, &mut out);
    p.apply(&callee("hangup", T0 + 3.0), T0 + 3.0, &mut out);
    p.tick(&c, T0 + 10.0, &mut out);
    let r = records(&out)[0];
    assert_eq!(r.extra.get("crm_id").map(String::as_str), Some("42"));
    assert_eq!(r.recording_url.as_deref(), Some("https://rec/1.wav"));
    assert!(legs(&out).iter().all(|l| l.extra.contains_key("crm_id")));
}

#[test]
fn rollback_restores_sessions_so_a_retry_applies_again() {
    let mut p = PushCalls::new("acme".into());
    let mut out = Vec::new();
    p.apply(&callee("ringing", T0), T0, &mut out);
    p.begin();
    p.apply(&callee("answer", T0 + 1.0), T0 + 1.0, &mut out);
    p.apply(&callee("hangup", T0 + 2.0), T0 + 2.0, &mut out);
    p.tick(&cfg(), T0 + 5.0, &mut out);
    assert_eq!(records(&out).len(), 1);
    p.rollback();
    assert_eq!(p.live_calls(), 1);
    assert_eq!(p.tombstones(), 0);
    let mut again = Vec::new();
    assert!(
        !p.apply(&callee("answer", T0 + 1.0), T0 + 6.0, &mut again)
            .duplicate
    );
    p.apply(&callee("hangup", T0 + 2.0), T0 + 6.0, &mut again);
    p.tick(&cfg(), T0 + 9.0, &mut again);
    assert_coherent(&again, 1);
    assert_eq!(records(&again)[0].disposition, Disposition::Answered);
    // A committed batch stays.
    p.begin();
    p.apply(&callee("hangup", T0 + 2.0), T0 + 10.0, &mut again);
    p.commit();
    p.rollback();
    assert_eq!(p.tombstones(), 1);
}

#[test]
fn clock_offset_ignores_delayed_pushes() {
    let mut c = Clock::default();
    c.observe(-0.2, 1000.0);
    c.observe(-60.0, 1001.0);
    assert_eq!(c.skew(), -0.2);
    c.observe(-3600.0, 1400.0);
    assert_eq!(c.skew(), -0.2, "previous window still counts");
    c.observe(-3600.0, 1800.0);
    assert_eq!(c.skew(), -3600.0, "a real clock change is learned");
}

#[test]
fn calltypes_map_to_directions() {
    assert_eq!(direction_of("dialin"), Direction::Incoming);
    assert_eq!(direction_of("DIALOUT"), Direction::Outgoing);
    assert_eq!(direction_of("predictive"), Direction::Outgoing);
    assert_eq!(direction_of("internal"), Direction::Internal);
    assert_eq!(direction_of("whatever"), Direction::Internal);
}
