//! Click-to-call at the AMI level: the simulator answers `Originate` from the
//! recorded outcomes (`fixtures/ami/originate/`, the `click-to-call.ami`
//! captures) with the request's ids, and `AmiHandle::originate` correlates
//! the outcome by ActionID — never re-sent after a reconnect.

mod support;

use std::time::Duration;

use callhook::ami::client::{self, AmiError};
use callhook::ami::sim_originate::OriginateRecording;
use callhook::ami::simulator::{AfterCapture, SimSession, Simulator};
use callhook::ami::{Action, AmiMessage};
use callhook::source::SourceEvent;
use support::*;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const CASES: &[&str] = &[
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
    "two-in-flight",
];

fn sim_with_outcomes(then: AfterCapture) -> Simulator {
    let mut s = Simulator::new(USER, SECRET);
    s.sessions = vec![SimSession::empty(then)];
    for c in CASES {
        s = s.originate(recording(&format!("originate/{c}.ami")));
    }
    s
}

fn recording(rel: &str) -> OriginateRecording {
    OriginateRecording::from_capture(&fixture(rel)).unwrap_or_else(|| panic!("{rel}: no originate"))
}

fn originate(agent: &str, number: &str, id: &str) -> Action {
    Action::new("Originate")
        .field("Channel", format!("SIP/{agent}"))
        .field("Context", "from-internal")
        .field("Exten", number)
        .field("Priority", "1")
        .field("CallerID", format!("\"CRM: {number}\" <{number}>"))
        .field("Timeout", "30000")
        .field("ChannelId", id)
}

/// (number, agent) of every recorded originate, and its recorded outcome.
fn truth(case: &str) -> Vec<(String, String, String, String)> {
    let p = format!(
        "{}/tests/fixtures/ami/originate/{case}.truth.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["originates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let or = &o["originate_response"];
            (
                o["number"].as_str().unwrap_or("").to_string(),
                o["agent"].as_str().unwrap_or("").to_string(),
                or["Response"].as_str().unwrap_or("").to_string(),
                or["Reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn events_of(
    rx: &mut mpsc::Receiver<SourceEvent>,
    session: &str,
    until_hangups: usize,
) -> Vec<AmiMessage> {
    let mut out = Vec::new();
    let mut hangups = 0;
    let _ = timeout(Duration::from_secs(20), async {
        while let Some(ev) = rx.recv().await {
            if let SourceEvent::Ami { msg, .. } = ev {
                if msg.get("Linkedid") == Some(session) {
                    if msg.event() == Some("Hangup") {
                        hangups += 1;
                    }
                    out.push(msg);
                    if hangups >= until_hangups {
                        return;
                    }
                }
            }
        }
    })
    .await;
    out
}

/// Every recorded async outcome, asked for with the recorded number and
/// agent, comes back with the request's ActionID, ChannelId and the
/// recorded Response/Reason.
#[tokio::test]
async fn every_recorded_outcome_is_answered_with_the_request_ids() {
    let sim = sim_with_outcomes(AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(10_000);
    let token = CancellationToken::new();
    let h = client::spawn(config("t-orig", sim.local_addr()), tx, token.clone());
    next_snapshot(&mut rx).await;
    let mut n = 0;
    for case in CASES.iter().filter(|c| **c != "sync-answered") {
        for (number, agent, response, reason) in truth(case) {
            n += 1;
            let id = format!("callhook-test-{n}");
            let r = h
                .originate(originate(&agent, &number, &id), Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(
                r.queued.get("Message"),
                Some("Originate successfully queued"),
                "{case}"
            );
            assert_eq!(
                r.event.get("ActionID"),
                Some(r.action_id.as_str()),
                "{case}"
            );
            assert!(
                r.action_id.starts_with("t-orig-"),
                "{case}: {}",
                r.action_id
            );
            assert_eq!(r.event.get("Response"), Some(response.as_str()), "{case}");
            assert_eq!(r.event.get("Reason"), Some(reason.as_str()), "{case}");
            assert_eq!(r.event.get("Uniqueid"), Some(id.as_str()), "{case}");
        }
    }
    assert_eq!(sim.actions("Originate"), n);
    token.cancel();
    h.stopped().await;
}

/// The answered case end to end: the events carry the request's ChannelId
/// as Linkedid on both legs, the requested agent and number.
#[tokio::test]
async fn answered_call_events_use_the_request_channel_id_agent_and_number() {
    let sim = sim_with_outcomes(AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(10_000);
    let token = CancellationToken::new();
    let h = client::spawn(config("t-orig2", sim.local_addr()), tx, token.clone());
    next_snapshot(&mut rx).await;
    // The number picks the recording; the agent and number are rewritten.
    let r = h
        .originate(
            originate("1002", "02122853301", "c2c-x1"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(r.event.get("Reason"), Some("4"));
    assert!(r
        .event
        .get("Channel")
        .unwrap_or("")
        .starts_with("SIP/1002-"));
    let evs = events_of(&mut rx, "c2c-x1", 2).await;
    let chans: std::collections::BTreeSet<_> = evs
        .iter()
        .filter(|m| m.event() == Some("Newchannel"))
        .filter_map(|m| {
            m.get("Channel")
                .map(|c| c.split('-').next().unwrap_or("").to_string())
        })
        .collect();
    assert_eq!(
        chans.into_iter().collect::<Vec<_>>(),
        ["SIP/1002", "SIP/pstn"]
    );
    assert_eq!(
        evs.iter().filter(|m| m.event() == Some("Hangup")).count(),
        2
    );
    token.cancel();
    h.stopped().await;
}

/// Two in flight on one connection: B (busy) is answered before A, each by
/// its own ActionID.
#[tokio::test]
async fn two_in_flight_are_correlated_by_action_id_not_order() {
    let mut s = Simulator::new(USER, SECRET).speed(Some(4.0));
    s.sessions = vec![SimSession::empty(AfterCapture::StayOpen)];
    let s = s.originate(recording("originate/two-in-flight.ami"));
    let sim = s.start().await.unwrap();
    let (tx, mut rx) = mpsc::channel(10_000);
    let token = CancellationToken::new();
    let h = client::spawn(config("t-two", sim.local_addr()), tx, token.clone());
    next_snapshot(&mut rx).await;
    let t = truth("two-in-flight");
    let a = h.originate(originate(&t[0].1, &t[0].0, "a"), Duration::from_secs(30));
    let b = h.originate(originate(&t[1].1, &t[1].0, "b"), Duration::from_secs(30));
    let order = std::sync::Mutex::new(Vec::new());
    let (a, b) = tokio::join!(
        async {
            let r = a.await;
            order.lock().unwrap().push("a");
            r
        },
        async {
            let r = b.await;
            order.lock().unwrap().push("b");
            r
        }
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        (a.event.get("Response"), a.event.get("Reason")),
        (Some("Success"), Some("4"))
    );
    assert_eq!(
        (b.event.get("Response"), b.event.get("Reason")),
        (Some("Failure"), Some("5"))
    );
    assert_eq!(*order.lock().unwrap(), ["b", "a"]);
    token.cancel();
    h.stopped().await;
}

/// A synchronous Originate is answered when the agent answered, without an
/// OriginateResponse.
#[tokio::test]
async fn synchronous_originate_answers_after_the_agent_answered() {
    let sim = sim_with_outcomes(AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(10_000);
    let token = CancellationToken::new();
    let h = client::spawn(config("t-sync", sim.local_addr()), tx, token.clone());
    next_snapshot(&mut rx).await;
    let (number, agent, _, _) = truth("sync-answered").remove(0);
    let r = h
        .send(originate(&agent, &number, "sync-1").field("Async", "false"))
        .await
        .unwrap();
    assert_eq!(
        r.response.get("Message"),
        Some("Originate successfully queued")
    );
    let evs = events_of(&mut rx, "sync-1", 2).await;
    assert!(evs.iter().all(|m| m.event() != Some("OriginateResponse")));
    assert!(evs
        .iter()
        .any(|m| m.event() == Some("Newstate") && m.get("ChannelState") == Some("6")));
    // Busy, synchronously: Response: Error.
    let (number, agent, _, _) = truth("agent-busy").remove(0);
    let r = h
        .send(originate(&agent, &number, "sync-2").field("Async", "false"))
        .await;
    assert_eq!(r, Err(AmiError::Rejected("Originate failed".into())));
    token.cancel();
    h.stopped().await;
}

/// The pjsip and Asterisk 11 click-to-call captures answer too (11: no
/// ChannelId, the recorded uniqueid is replaced by a fresh one).
#[tokio::test]
async fn click_to_call_captures_of_other_drivers_and_versions() {
    for (rel, modern) in [
        ("asterisk-20-pjsip/click-to-call.ami", true),
        ("asterisk-11/click-to-call.ami", false),
        ("asterisk-20/click-to-call.ami", true),
    ] {
        let cap = fixture(rel);
        let mut s = Simulator::new(USER, SECRET);
        // The session's banner decides the AMI version (11: 1.x).
        let banner: Vec<u8> = cap
            .split(|b| *b == b'\n')
            .next()
            .unwrap_or_default()
            .to_vec();
        let mut session = banner.clone();
        session.extend_from_slice(b"\n");
        s.sessions = vec![SimSession::new(session, AfterCapture::StayOpen)];
        let s = s.originate(recording(rel));
        let sim = s.start().await.unwrap();
        let (tx, mut rx) = mpsc::channel(10_000);
        let token = CancellationToken::new();
        let h = client::spawn(config("t-drv", sim.local_addr()), tx, token.clone());
        next_snapshot(&mut rx).await;
        let r = h
            .originate(
                originate("1001", "02122853348", "drv-1"),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(r.event.get("Response"), Some("Success"), "{rel}");
        assert_eq!(r.event.get("Reason"), Some("4"), "{rel}");
        let uid = r.event.get("Uniqueid").unwrap_or("");
        if modern {
            assert_eq!(uid, "drv-1", "{rel}");
        } else {
            assert!(
                uid != "drv-1" && uid != "1795375570.47" && uid.contains('.'),
                "{rel}: {uid}"
            );
        }
        token.cancel();
        h.stopped().await;
    }
}

/// Lost before the outcome: `Disconnected`, and the Originate is not sent
/// again on the next connection.
#[tokio::test]
async fn originate_waiting_for_its_outcome_is_not_resent_after_reconnect() {
    let mut s = Simulator::new(USER, SECRET).speed(Some(1.0));
    // First connection: the Response comes, then the PBX goes away before
    // the OriginateResponse (the agent rings 8 s).
    s.sessions = vec![
        SimSession::empty(AfterCapture::Close),
        SimSession::empty(AfterCapture::StayOpen),
    ];
    s.pause_before_close = Duration::from_millis(1500);
    let s = s.originate(recording("originate/agent-noanswer.ami"));
    let sim = s.start().await.unwrap();
    let (tx, mut rx) = mpsc::channel(10_000);
    let token = CancellationToken::new();
    let h = client::spawn(config("t-lost", sim.local_addr()), tx, token.clone());
    next_snapshot(&mut rx).await;
    let r = h
        .originate(
            originate("1001", "02122853303", "lost-1"),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(r, Err(AmiError::Disconnected));
    timeout(Duration::from_secs(10), async {
        while let Some(ev) = rx.recv().await {
            if matches!(ev, SourceEvent::AmiSnapshot { .. }) {
                break;
            }
        }
    })
    .await
    .expect("no second login");
    h.send(Action::new("Ping")).await.unwrap();
    assert_eq!(sim.stats().connections, 2);
    assert_eq!(sim.actions("Originate"), 1);
    token.cancel();
    h.stopped().await;
}
