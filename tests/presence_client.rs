//! Presence through the live path: the AMI client against the simulated PBX
//! (real captures) on 127.0.0.1, and the daemon's presence task.
//!
//! * the state lists are asked at every login (AMI ≥ 2: ExtensionStateList,
//!   DeviceStateList, SIPpeers, PJSIPShowEndpoints; AMI 1.x: SIPpeers, then
//!   ExtensionState per configured extension and per peer), their answers
//!   reach presence and never the normalizer;
//! * ExtensionStatus / DeviceStateChange reach presence only, PeerStatus
//!   and Hold/Unhold both;
//! * a full presence queue never holds up the call events;
//! * the daemon's hub has the right table right after the login and at
//!   the end of the capture.
//!
//! Synchronisation by signals (channels, simulator counters); timeouts are
//! safety nets.

mod support;
mod support_app;
mod support_tmp;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use callhook::ami::client::{self, ConnectionState};
use callhook::ami::simulator::{AfterCapture, Simulator};
use callhook::ami::state_sync::PresenceOutput;
use callhook::app::RunOptions;
use callhook::metrics::metrics;
use callhook::model::ModelEvent;
use callhook::normalize::{Classifier, Normalizer, NormalizerConfig};
use callhook::presence::{PresenceTracker, TrackerConfig};
use callhook::source::{PresenceSourceEvent, SourceEvent};
use support::*;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

fn output(tx: mpsc::Sender<PresenceSourceEvent>, exts: &[&str]) -> PresenceOutput {
    PresenceOutput {
        tx,
        extensions: exts.iter().map(|s| s.to_string()).collect(),
        context: "from-internal".into(),
        classifier: Classifier::default(),
    }
}

async fn next_presence(rx: &mut mpsc::Receiver<PresenceSourceEvent>) -> PresenceSourceEvent {
    timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a presence event")
        .expect("presence channel closed")
}

fn event_name(m: &callhook::ami::AmiMessage) -> String {
    m.event().unwrap_or("?").to_string()
}

/// Reads presence events until `n` unsolicited ones were seen; returns the
/// state list answers (action, item count) and the unsolicited event names,
/// in arrival order.
async fn collect_presence(
    rx: &mut mpsc::Receiver<PresenceSourceEvent>,
    n: usize,
) -> (Vec<(String, usize)>, Vec<String>, Vec<PresenceSourceEvent>) {
    let (mut lists, mut events, mut all) = (Vec::new(), Vec::new(), Vec::new());
    while events.len() < n {
        let ev = next_presence(rx).await;
        match &ev {
            PresenceSourceEvent::AmiStateList { action, items, .. } => {
                assert!(events.is_empty(), "a state list after an event: {action:?}");
                lists.push((action.clone().unwrap_or_default(), items.len()));
            }
            PresenceSourceEvent::Ami { msg, .. } => events.push(event_name(msg)),
            PresenceSourceEvent::AmiDisconnected { .. } => {}
        }
        all.push(ev);
    }
    (lists, events, all)
}

fn count_unsolicited(capture: &[u8], names: &[&str]) -> usize {
    decode_all(capture)
        .into_iter()
        .filter_map(|f| match f {
            callhook::ami::AmiFrame::Message(m) => Some(m),
            _ => None,
        })
        .filter(|m| {
            m.action_id().is_none()
                && m.event()
                    .is_some_and(|e| names.iter().any(|n| n.eq_ignore_ascii_case(e)))
        })
        .count()
}

const PRESENCE_EVENTS: &[&str] = &[
    "ExtensionStatus",
    "DeviceStateChange",
    "PeerStatus",
    "ContactStatus",
    "Hold",
    "Unhold",
];

#[tokio::test]
async fn modern_login_lists_then_events_and_nothing_for_the_normalizer() {
    let cap = fixture("presence/call-cycle.ami");
    let sim = Simulator::new(USER, SECRET)
        .session(cap.clone(), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(10_000);
    let (ptx, mut prx) = mpsc::channel(10_000);
    let token = CancellationToken::new();
    let h = client::spawn_with_presence(
        config("p-modern", sim.local_addr()),
        tx,
        Some(output(ptx, &["1001"])),
        token.clone(),
    );
    let n = count_unsolicited(&cap, PRESENCE_EVENTS);
    assert!(n >= 20, "{n}");
    let (lists, events, all) = collect_presence(&mut prx, n).await;
    // The state lists, answered from the capture's own start-of-capture
    // lists (PJSIPShowEndpoints: an empty list, chan_sip only).
    let mut got = lists.clone();
    got.sort();
    assert_eq!(
        got,
        [
            ("DeviceStateList".to_string(), 9),
            ("ExtensionStateList".to_string(), 4),
            ("PJSIPShowEndpoints".to_string(), 0),
            ("SIPpeers".to_string(), 5),
        ]
    );
    let stats = sim.stats();
    for a in [
        "ExtensionStateList",
        "DeviceStateList",
        "SIPpeers",
        "PJSIPShowEndpoints",
    ] {
        assert_eq!(stats.action_count(a), 1, "{a}");
    }
    assert_eq!(stats.action_count("ExtensionState"), 0);
    assert!(events.contains(&"Hold".to_string()), "{events:?}");

    // The normalizer's side: the call events, PeerStatus/Hold/Unhold
    // copies, never ExtensionStatus/DeviceStateChange, never a list item.
    let _ = next_snapshot(&mut rx).await;
    let expected: Vec<String> = expected_events(&cap).iter().map(event_name).collect();
    let got = next_ami(&mut rx, expected.len()).await;
    assert_eq!(names(&got), expected);
    assert!(got.iter().all(|m| m.action_id().is_none()));
    sim.wait_for(|s| s.replays_completed >= 1).await;
    let _ = h.send(callhook::ami::Action::new("Ping")).await.unwrap();
    assert!(rx.try_recv().is_err(), "nothing more for the normalizer");

    // What presence got, through the tracker, with the model from the
    // normalizer's events: the same table as the capture's truth.
    let mut tracker = PresenceTracker::new(TrackerConfig::default());
    let mut n = Normalizer::new(NormalizerConfig::default());
    let mut out = Vec::new();
    let mut model: Vec<ModelEvent> = Vec::new();
    let pbx: Arc<str> = "p-modern".into();
    n.handle(
        &SourceEvent::AmiSnapshot {
            pbx: pbx.clone(),
            received_at: 0.0,
            channels: Vec::new(),
        },
        &mut model,
    );
    for ev in &all {
        tracker.handle_source(ev, &mut out);
    }
    for m in got {
        let t = m.timestamp().unwrap_or(0.0);
        n.handle(
            &SourceEvent::Ami {
                pbx: pbx.clone(),
                received_at: t,
                msg: m,
            },
            &mut model,
        );
    }
    tracker.handle_models(&model, &mut out);
    let snap = tracker.snapshot("p-modern").unwrap();
    for ext in ["1001", "1002", "1003"] {
        assert_eq!(
            snap.get(ext).map(|r| r.human()).as_deref(),
            Some("idle"),
            "{ext}"
        );
    }
    assert_eq!(
        snap.get("1004").map(|r| r.human()).as_deref(),
        Some("unavailable")
    );
    let seen: Vec<String> = out
        .iter()
        .filter(|e| e.presence.extension == "1001" && e.state_changed())
        .map(|e| e.presence.human())
        .collect();
    for want in ["ringing", "in_use", "on_hold", "in_use+ringing", "idle"] {
        assert!(seen.contains(&want.to_string()), "{want}: {seen:?}");
    }
    token.cancel();
    timeout(WAIT, h.stopped()).await.unwrap();
}

#[tokio::test]
async fn asterisk_11_login_asks_peers_then_each_extension() {
    let cap = fixture("asterisk-11/status-actions.ami");
    let sim = Simulator::new(USER, SECRET)
        .session(cap.clone(), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let (tx, _rx) = mpsc::channel(10_000);
    let (ptx, mut prx) = mpsc::channel(10_000);
    let token = CancellationToken::new();
    let h = client::spawn_with_presence(
        config("p-11", sim.local_addr()),
        tx,
        Some(output(ptx, &["1001", "1099"])),
        token.clone(),
    );
    // SIPpeers, then ExtensionState for 1001, 1099 (configured) and 1002,
    // 1003 (peers named like extensions; not pstn).
    let mut answers = Vec::new();
    while answers.len() < 5 {
        if let PresenceSourceEvent::AmiStateList {
            action, response, ..
        } = next_presence(&mut prx).await
        {
            let exten = response.get("Exten").unwrap_or("").to_string();
            answers.push((action.unwrap_or_default(), exten));
        }
    }
    answers.sort();
    assert_eq!(
        answers,
        [
            ("ExtensionState".to_string(), "1001".to_string()),
            ("ExtensionState".to_string(), "1002".to_string()),
            ("ExtensionState".to_string(), "1003".to_string()),
            ("ExtensionState".to_string(), "1099".to_string()),
            ("SIPpeers".to_string(), String::new()),
        ]
    );
    let stats = sim.stats();
    assert_eq!(stats.action_count("ExtensionStateList"), 0, "absent on 11");
    assert_eq!(stats.action_count("DeviceStateList"), 0);
    assert_eq!(stats.action_count("ExtensionState"), 4);
    token.cancel();
    timeout(WAIT, h.stopped()).await.unwrap();
}

#[tokio::test]
async fn a_full_presence_queue_never_holds_up_the_calls() {
    let cap = fixture("asterisk-20/queue-answered.ami");
    let sim = Simulator::new(USER, SECRET)
        .session(cap.clone(), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(10_000);
    // Room for 2 presence events, never read until the calls are through.
    let (ptx, mut prx) = mpsc::channel(2);
    let token = CancellationToken::new();
    let before = metrics()
        .presence_dropped
        .with_label_values(&["source"])
        .get();
    let h = client::spawn_with_presence(
        config("p-full", sim.local_addr()),
        tx,
        Some(output(ptx, &[])),
        token.clone(),
    );
    let _ = next_snapshot(&mut rx).await;
    let expected = expected_events(&cap);
    let got = next_ami(&mut rx, expected.len()).await;
    assert_eq!(names(&got), names(&expected));
    let after = metrics()
        .presence_dropped
        .with_label_values(&["source"])
        .get();
    assert!(after > before, "drops are counted");
    // Once the queue has room again the client asks for the lists again.
    let asked = sim.stats().action_count("ExtensionStateList");
    while prx.try_recv().is_ok() {}
    let stats = timeout(
        Duration::from_secs(15),
        sim.wait_for(|s| s.action_count("ExtensionStateList") > asked),
    )
    .await
    .expect("a presence resync after the overflow");
    assert!(stats.action_count("ExtensionStateList") >= 2);
    token.cancel();
    timeout(WAIT, h.stopped()).await.unwrap();
}

#[tokio::test]
async fn every_reconnect_asks_the_lists_again() {
    let cap = fixture("presence/reachability.ami");
    let sim = Simulator::new(USER, SECRET)
        .session(cap.clone(), AfterCapture::Close)
        .session(cap.clone(), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let (tx, _rx) = mpsc::channel(10_000);
    let (ptx, mut prx) = mpsc::channel(10_000);
    let token = CancellationToken::new();
    let h = client::spawn_with_presence(
        config("p-again", sim.local_addr()),
        tx,
        Some(output(ptx, &[])),
        token.clone(),
    );
    let (mut lists, mut disconnects) = (0, 0);
    while lists < 8 || disconnects < 1 {
        match next_presence(&mut prx).await {
            PresenceSourceEvent::AmiStateList { .. } => lists += 1,
            PresenceSourceEvent::AmiDisconnected { pbx, .. } => {
                assert_eq!(&*pbx, "p-again");
                assert_eq!(
                    lists, 4,
                    "the disconnect comes after the first login's lists"
                );
                disconnects += 1;
            }
            PresenceSourceEvent::Ami { .. } => {}
        }
    }
    assert_eq!(sim.stats().action_count("ExtensionStateList"), 2);
    assert_eq!(h.state(), ConnectionState::LoggedIn);
    token.cancel();
    timeout(WAIT, h.stopped()).await.unwrap();
}

#[tokio::test]
async fn the_daemon_table_after_login_and_at_the_end() {
    let cap = fixture("presence/dnd.ami");
    let sim = Simulator::new(USER, SECRET)
        .session(cap, AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let dir = support_tmp::TestDir::new("presence");
    let text = format!(
        "state_dir: {}\npbx:\n  - id: lab\n    ami: {{ host: 127.0.0.1, port: {}, username: {USER}, secret: {SECRET} }}\npresence:\n  extensions: ['1005']\n",
        dir.display(),
        sim.local_addr().port()
    );
    let cfg = support_app::config(&text, Path::new("."));
    let app = support_app::start(cfg, RunOptions::default()).await;
    let hub = app.running.presence;
    // The configured extension is there from the start.
    let snap = hub.snapshot("lab").expect("the PBX's table");
    assert_eq!(
        snap.get("1005").map(|r| r.human()).as_deref(),
        Some("unknown")
    );
    assert!(!hub.tenants().is_empty());
    // The table and every change after it (no gap: consecutive seq).
    let (snap, mut changes) = hub.subscribe_with_snapshot("lab");
    let snap = snap.expect("the PBX's table");
    let mut seq_1004: Vec<String> = vec![snap
        .get("1004")
        .map_or("unknown".to_string(), |r| r.human())];
    let mut last_seq = snap.seq;
    let want = [
        "unknown",
        "unavailable",
        "idle",
        "busy",
        "idle",
        "unavailable",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seq_1004.ends_with(&want[2..].iter().map(|s| s.to_string()).collect::<Vec<_>>()) {
        let ev = tokio::time::timeout_at(deadline, changes.recv())
            .await
            .unwrap_or_else(|_| panic!("the capture's presence changes; so far {seq_1004:?}"))
            .expect("no lag on the change stream");
        assert_eq!(ev.pbx, "lab");
        assert_eq!(ev.seq, last_seq + 1, "consecutive seq");
        last_seq = ev.seq;
        if ev.presence.extension == "1004" && ev.state_changed() {
            seq_1004.push(ev.presence.human());
        }
    }
    // Right after the login 1004 is unavailable (the state lists), then
    // the DND story; whatever the test saw first is a suffix of that.
    assert!(
        want.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .ends_with(&seq_1004),
        "{seq_1004:?}"
    );
    let row = hub.extension("lab", "1004").unwrap();
    assert_eq!(row.registered, Some(false));
    assert_eq!(hub.snapshot("lab").unwrap().connected, Some(true));
    let (snap, _rx) = hub.subscribe_with_snapshot("lab");
    assert_eq!(snap.map(|s| s.seq), Some(last_seq));
    assert!(
        metrics()
            .presence_inputs
            .with_label_values(&["state_list"])
            .get()
            >= 4
    );
    app.token.cancel();
    timeout(Duration::from_secs(10), app.task)
        .await
        .expect("the daemon stops")
        .unwrap()
        .unwrap();
}
