//! The live API end to end: the real binary on loopback, the simulated PBX
//! replaying real captures, WebSocket and SSE clients, frame by frame.

mod support_daemon;
mod support_live;
mod support_tmp;

use std::time::Duration;

use callhook::ami::sim_originate::OriginateRecording;
use callhook::ami::simulator::{AfterCapture, SimSession, Simulator, SimulatorHandle};
use serde_json::Value;
use support_daemon::{fixture, Daemon};
use support_live::*;

async fn start(name: &str, sim: Simulator, extra: &str) -> (Daemon, SimulatorHandle) {
    let sim = sim.start().await.unwrap();
    (start_daemon(name, &sim, extra).await, sim)
}

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["type"] == kind
}

/// queue-answered: 1001 and 1002 ring for 5559876543 (Maria Lopez), 1002
/// answers. Both agents (two tabs for 1001) get the pop; 1001 learns it was
/// answered by 1002; the monitor sees both; an SSE client too; the other
/// tenant sees nothing.
#[tokio::test]
async fn screen_pop_on_every_tab_answered_elsewhere_monitor_and_sse() {
    let sim = Simulator::new("amiuser", "amipass-1234").gated().session(
        fixture("asterisk-20/queue-answered.ami"),
        AfterCapture::StayOpen,
    );
    let (d, sim) = start("live-pop", sim, "").await;
    let addr = d.listen.unwrap();
    let mut a1 = connect(&live_url(addr, &key_query("1001")), None).await;
    let mut a1b = connect(&live_url(addr, &key_query("1001")), None).await;
    let mut a2 = connect(&live_url(addr, &key_query("1002")), None).await;
    let mut mon = connect(&live_url(addr, &key_query("999")), None).await;
    let other_q = format!("tenant=other&extension=1001&key={OTHER_KEY}");
    let mut other = connect(&live_url(addr, &other_q), None).await;
    for ws in [&mut a1, &mut a1b, &mut a2, &mut mon, &mut other] {
        let hello = ws.json().await;
        assert_eq!(hello["type"], "hello");
        let snap = ws.json().await;
        assert_eq!(snap["type"], "snapshot", "{snap}");
        assert_eq!(snap["calls"], serde_json::json!([]));
    }
    assert_eq!(mon.seen[0]["scope"], "monitor");
    assert_eq!(a1.seen[0]["scope"], "agent");
    assert_eq!(
        a1.seen[0]["crm_url"],
        "http://crm.example/DbFind.aspx?pi={caller_number}"
    );
    // SSE for 1002.
    let client = reqwest::Client::new();
    let mut sse = client
        .get(d.url(&format!("/v1/live/sse?{}", key_query("1002"))))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert!(sse.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));

    sim.release();
    for ws in [&mut a1, &mut a1b] {
        let r = ws.until(is("call.ringing")).await;
        assert_eq!(r["extension"], "1001");
        assert_eq!(r["caller_number"], "5559876543");
        assert_eq!(r["caller_name"], "Maria Lopez");
        assert_eq!(r["direction"], "incoming");
        assert!(r["seq"].as_u64().unwrap() > 0);
        let a = ws.until(is("call.answered")).await;
        assert_eq!(a["answered_by"], "1002", "{a}");
        assert_eq!(a["session_id"], r["session_id"]);
        let h = ws.until(is("call.hungup")).await;
        assert_eq!(h["extension"], "1001");
    }
    let r = a2.until(is("call.ringing")).await;
    assert_eq!(
        (r["extension"].as_str(), r["caller_number"].as_str()),
        (Some("1002"), Some("5559876543"))
    );
    let a = a2.until(is("call.answered")).await;
    assert_eq!(a["answered_by"], "1002");
    let h = a2
        .until(|v| v["type"] == "call.hungup" && v["extension"] == "1002")
        .await;
    assert!(h["billsec"].as_f64().unwrap() > 1.0, "{h}");
    // An agent only ever sees its own extension.
    for v in &a2.seen {
        if let Some(e) = v.get("extension").and_then(Value::as_str) {
            assert!(v["type"] == "call.answered" || e == "1002", "{v}");
        }
    }
    // The monitor saw both rings and presence for both.
    let mut rang = std::collections::BTreeSet::new();
    while rang.len() < 2 {
        let v = mon.until(is("call.ringing")).await;
        rang.insert(v["extension"].as_str().unwrap().to_string());
    }
    mon.until(|v| v["type"] == "call.hungup" && v["extension"] == "1002")
        .await;
    // Presence comes from the tracker on its own path: it may trail the
    // model's messages, so wait for the state itself.
    let in_use =
        |v: &Value| v["type"] == "presence" && v["extension"] == "1002" && v["state"] == "in_use";
    if !mon.seen.iter().any(in_use) {
        mon.until(in_use).await;
    }
    let states: Vec<_> = mon
        .seen
        .iter()
        .filter(|v| v["type"] == "presence" && v["extension"] == "1002")
        .map(|v| v["state"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        states.contains(&"ringing".into()) && states.contains(&"in_use".into()),
        "{states:?}"
    );
    // Seq increases.
    let seqs: Vec<u64> = mon
        .seen
        .iter()
        .skip(1)
        .filter_map(|v| v["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{seqs:?}");
    // SSE got the same pop, with ids.
    let mut body = String::new();
    while !body.contains("\"call.hungup\"") {
        let chunk = tokio::time::timeout(STEP, sse.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(body.contains("\"type\":\"call.ringing\""), "{body}");
    assert!(body.contains("5559876543"));
    assert!(body.lines().any(|l| l.starts_with("id: ")));
    // Nothing crossed tenants: the other tenant got no call message.
    a2.send(r#"{"type":"ping","id":7}"#).await;
    assert_eq!(a2.until(is("pong")).await["id"], 7);
    other.send(r#"{"type":"ping"}"#).await;
    other.until(is("pong")).await;
    assert!(
        other
            .seen
            .iter()
            .all(|v| !v["type"].as_str().unwrap_or("").starts_with("call.")),
        "{:?}",
        other.seen
    );
    // GET /v1/extensions as monitor: both, idle at the end.
    let ex: Value = client
        .get(d.url(&format!("/v1/extensions?{}", key_query("999"))))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap();
    let rows = ex["extensions"].as_array().unwrap();
    for e in ["1001", "1002"] {
        let row = rows
            .iter()
            .find(|r| r["extension"] == e)
            .unwrap_or_else(|| panic!("{e}: {ex}"));
        assert_eq!(row["state"], "idle", "{row}");
    }
    let own = client
        .get(d.url(&format!("/v1/extensions/1002?{}", key_query("1001"))))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 403);
    d.stop();
}

/// Missing, wrong and expired credentials get their close codes; a client
/// protocol error gets 4004; over the connection rate: 429.
#[tokio::test]
async fn auth_failures_close_with_their_codes() {
    let sim = Simulator::new("amiuser", "amipass-1234").session(Vec::new(), AfterCapture::StayOpen);
    let (d, _sim) = start(
        "live-auth",
        sim,
        "  connections_per_minute_per_ip: 30\n  ticket_max_ttl: 10m\n",
    )
    .await;
    let addr = d.listen.unwrap();
    let mut ws = connect(&live_url(addr, ""), None).await;
    assert_eq!(ws.json().await["code"], "missing");
    assert_eq!(ws.close_code().await, Some(4001));
    let mut ws = connect(
        &live_url(addr, "tenant=main&extension=1001&key=wrong-key-0123456789"),
        None,
    )
    .await;
    assert_eq!(ws.close_code().await, Some(4002));
    // The other tenant's key does not open main.
    let mut ws = connect(
        &live_url(addr, &format!("tenant=main&extension=1001&key={OTHER_KEY}")),
        None,
    )
    .await;
    assert_eq!(ws.close_code().await, Some(4002));
    // A ticket: minted, used in the protocol header; an expired one: 4003.
    let client = reqwest::Client::new();
    let t: Value = client
        .post(d.url("/v1/tickets"))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"tenant": "main", "key": KEY, "extension": "1001", "ttl": 60})
                .to_string(),
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap();
    let ticket = t["ticket"].as_str().unwrap().to_string();
    let mut ws = connect(
        &live_url(addr, ""),
        Some(&format!("callhook, ticket.{ticket}")),
    )
    .await;
    assert_eq!(ws.json().await["extension"], "1001");
    ws.json().await;
    ws.send("{not json").await;
    assert_eq!(ws.json().await["code"], "bad_message");
    ws.send(r#"{"type":"subscribe","to":"*"}"#).await;
    assert_eq!(ws.close_code().await, Some(4004));
    // Tampered ticket.
    let bad = format!("{}x", &ticket[..ticket.len() - 1]);
    let mut ws = connect(&live_url(addr, &format!("ticket={bad}")), None).await;
    assert_eq!(ws.close_code().await, Some(4002));
    let expired = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = e.encode(br#"{"t":"main","e":"1001","s":"agent","x":1000}"#);
        let signed = format!("v1.{payload}");
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
        mac.update(signed.as_bytes());
        format!("{signed}.{}", e.encode(mac.finalize().into_bytes()))
    };
    let mut ws = connect(&live_url(addr, &format!("ticket={expired}")), None).await;
    assert_eq!(ws.close_code().await, Some(4003));
    // HTTP: a bad bearer is 401.
    let r = client
        .get(d.url("/v1/calls/live"))
        .bearer_auth("v1.x.y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        d.metric("callhook_live_auth_failures_total{reason=\"bad_credential\"}")
            .await
            .unwrap_or(0.0)
            >= 3.0
    );
    // The connection rate per address: 30 per minute (9 used above).
    let mut refused = 0;
    for _ in 0..30 {
        let r = tokio_tungstenite::connect_async(live_url(addr, &key_query("1001"))).await;
        if let Err(tokio_tungstenite::tungstenite::Error::Http(resp)) = &r {
            assert_eq!(resp.status(), 429);
            refused += 1;
        }
    }
    assert!(refused >= 5, "{refused}");
    d.stop();
}

/// A client that lost its connection resumes from its last seq and gets
/// the `call.ringing` it missed (marked replayed); a seq too old gives a
/// `gap`.
#[tokio::test]
async fn resume_after_a_dropped_connection_loses_no_screen_pop() {
    let sim = Simulator::new("amiuser", "amipass-1234").gated().session(
        fixture("asterisk-20/queue-answered.ami"),
        AfterCapture::StayOpen,
    );
    let (d, sim) = start("live-resume", sim, "").await;
    let addr = d.listen.unwrap();
    let mut ws = connect(&live_url(addr, &key_query("1001")), None).await;
    ws.json().await;
    let snap = ws.json().await;
    let last = snap["seq"].as_u64().unwrap();
    drop(ws);
    // A monitor proves the call happened while 1001 was away.
    let mut mon = connect(&live_url(addr, &key_query("999")), None).await;
    sim.release();
    mon.until(|v| v["type"] == "call.hungup" && v["extension"] == "1001")
        .await;
    let mut ws = connect(
        &live_url(addr, &format!("{}&resume={last}", key_query("1001"))),
        None,
    )
    .await;
    assert_eq!(ws.json().await["type"], "hello");
    let snap = ws.json().await;
    assert_eq!(snap["type"], "snapshot");
    let r = ws.until(is("call.ringing")).await;
    assert_eq!(r["replayed"], true);
    assert_eq!(r["caller_number"], "5559876543");
    assert!(r["seq"].as_u64().unwrap() > last);
    ws.until(is("call.hungup")).await;
    // The resume message works too, and an absurd seq is a gap-free no-op.
    ws.send(&format!(r#"{{"type":"resume","seq":{last}}}"#))
        .await;
    assert_eq!(ws.until(is("call.ringing")).await["replayed"], true);
    d.stop();
}

fn originate_sim() -> Simulator {
    let mut s = Simulator::new("amiuser", "amipass-1234").speed(Some(8.0));
    s.sessions = vec![SimSession::empty(AfterCapture::StayOpen)];
    for c in [
        "answered",
        "agent-busy",
        "agent-noanswer",
        "agent-unregistered",
        "outside-busy",
    ] {
        let rec = OriginateRecording::from_capture(&fixture(&format!("originate/{c}.ami")));
        s = s.originate(rec.unwrap_or_else(|| panic!("{c}")));
    }
    s
}

async fn call(d: &Daemon, who: &str, ext: &str, number: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(d.url(&format!("/v1/calls?{}", key_query(who))))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "extension": ext, "number": number }).to_string())
        .send()
        .await
        .unwrap()
}

async fn outcome(ws: &mut Ws, id: &str) -> (Vec<String>, Value) {
    let mut statuses = Vec::new();
    loop {
        let v = ws
            .until(|v| v["type"].as_str().unwrap_or("").starts_with("originate."))
            .await;
        if v["request_id"] != id {
            continue;
        }
        let kind = v["type"]
            .as_str()
            .unwrap()
            .trim_start_matches("originate.")
            .to_string();
        let done = matches!(kind.as_str(), "connected" | "busy" | "no_answer" | "failed");
        statuses.push(kind);
        if done {
            return (statuses, v);
        }
    }
}

async fn wait_final(d: &Daemon, who: &str, id: &str) -> Value {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got: Value = client
            .get(d.url(&format!("/v1/calls/{id}?{}", key_query(who))))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
            .unwrap();
        if ["connected", "busy", "no_answer", "failed"]
            .contains(&got["status"].as_str().unwrap_or(""))
        {
            return got;
        }
        assert!(std::time::Instant::now() < deadline, "{got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Click-to-call against the simulator: answered, busy, no answer,
/// unavailable; a number denied by pattern; another extension's phone: 403;
/// a monitor: 403; never re-sent.
#[tokio::test]
async fn click_to_call_outcomes_end_to_end() {
    let extra = "  originate:\n    deny: [\"^00\", \"^0900\"]\n    per_user_per_minute: 20\n    timeout: 10s\n";
    let (d, sim) = start("live-c2c", originate_sim(), extra).await;
    let addr = d.listen.unwrap();
    let mut ws = connect(&live_url(addr, &key_query("1001")), None).await;
    ws.json().await;
    ws.json().await;

    let r = call(&d, "1001", "1001", "02122853301").await;
    assert_eq!(r.status(), 202);
    let id = r
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (statuses, last) = outcome(&mut ws, &id).await;
    assert_eq!(
        statuses,
        ["queued", "ringing_own_phone", "connected"],
        "{last}"
    );
    let session = format!("callhook-{id}");
    assert_eq!(last["session_id"], session.as_str());
    // The resulting call is the agent's outgoing call in the model.
    let rang = ws
        .seen
        .iter()
        .find(|v| v["type"] == "call.ringing" && v["session_id"] == session.as_str())
        .cloned();
    let rang = rang.expect("the agent's leg rang in the model");
    assert_eq!(
        (rang["role"].as_str(), rang["direction"].as_str()),
        (Some("caller"), Some("outgoing"))
    );
    let ended = ws
        .until(|v| v["type"] == "originate.ended" && v["request_id"] == id.as_str())
        .await;
    assert_eq!(
        ended["request"]["outside"]["disposition"], "ANSWERED",
        "{ended}"
    );
    let got: Value = reqwest::Client::new()
        .get(d.url(&format!("/v1/calls/{id}?{}", key_query("1001"))))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap();
    assert_eq!(
        (got["status"].as_str(), got["reason"].as_str()),
        (Some("connected"), Some("4")),
        "{got}"
    );
    assert_eq!(got["session_id"], session.as_str());

    for (who, number, want) in [
        ("1001", "02122853302", "busy"),
        ("1001", "02122853303", "no_answer"),
        ("1004", "02122853307", "failed"),
    ] {
        let r = call(&d, who, who, number).await;
        assert_eq!(r.status(), 202, "{number}");
        let id = r
            .bytes()
            .await
            .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let got = wait_final(&d, who, &id).await;
        assert_eq!(got["status"], want, "{number}: {got}");
    }
    // Outside busy: connected (the agent answered), then the record says BUSY.
    let r = call(&d, "1001", "1001", "02122853304").await;
    let id = r
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (statuses, _) = outcome(&mut ws, &id).await;
    assert_eq!(statuses.last().map(String::as_str), Some("connected"));
    let ended = ws
        .until(|v| v["type"] == "originate.ended" && v["request_id"] == id.as_str())
        .await;
    assert_eq!(ended["request"]["outside"]["disposition"], "BUSY");

    let before = sim.actions("Originate");
    let r = call(&d, "1001", "1001", "00441234567").await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.bytes()
            .await
            .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
            .unwrap()["error"],
        "number_not_allowed"
    );
    let r = call(&d, "1001", "1002", "02122853301").await;
    assert_eq!(r.status(), 403);
    let r = call(&d, "999", "999", "02122853301").await;
    assert_eq!(r.status(), 403);
    let r = call(&d, "1001", "1001", "0212;Hangup").await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        sim.actions("Originate"),
        before,
        "refused calls never reach the PBX"
    );
    d.stop();
}

/// A client that stops reading does not delay another client.
#[tokio::test]
async fn a_stalled_client_does_not_slow_the_others() {
    let sim = Simulator::new("amiuser", "amipass-1234")
        .gated()
        .speed(Some(50.0))
        .session(fixture("asterisk-20/load-dev.ami"), AfterCapture::StayOpen);
    let (d, sim) = start("live-slow", sim, "").await;
    let addr = d.listen.unwrap();
    let mut stalled = connect(&live_url(addr, &key_query("999")), None).await;
    stalled.json().await;
    let mut mon = connect(&live_url(addr, &key_query("999")), None).await;
    mon.json().await;
    mon.json().await;
    sim.release();
    let done = sim.wait_for(|s| s.replays_completed >= 1);
    tokio::pin!(done);
    loop {
        tokio::select! {
            _ = &mut done => break,
            g = mon.next() => if let support_live::Got::Closed(c) = g { panic!("closed: {c:?}") },
        }
    }
    // The reading monitor gets everything, without a gap, up to the end.
    mon.send(r#"{"type":"ping"}"#).await;
    mon.until(is("pong")).await;
    assert!(mon.seen.iter().all(|v| v["type"] != "gap"));
    let hungup = mon
        .seen
        .iter()
        .filter(|v| v["type"] == "call.hungup")
        .count();
    assert!(hungup > 100, "{hungup}");
    let seqs: Vec<u64> = mon
        .seen
        .iter()
        .filter(|v| v["type"] != "pong")
        .filter_map(|v| v["seq"].as_u64())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1 || w[0] == 0),
        "a monitor sees every seq"
    );
    // (What a stalled client gets when it reads again — a gap and a fresh
    // snapshot, or 4008 — is tested at the hub, `live::tests`, where the
    // queue can be filled without the kernel's socket buffers in between.)
    drop(stalled);
    d.stop();
}
