//! The live stream's limits attacked through the real binary: an oversized
//! client message (1009), a client that stops answering pings (dropped with
//! 4009, counted), clients beyond `max_clients_per_tenant` and `max_clients`
//! (4029, counted, other tenants unaffected), and an SSE client that comes
//! back with `Last-Event-ID` and gets the screen-pop it missed.

mod support_daemon;
mod support_live;

use std::time::Duration;

use callhook::ami::simulator::{AfterCapture, Simulator, SimulatorHandle};
use serde_json::Value;
use support_daemon::{fixture, free_port, temp_dir, Daemon};
use support_live::*;

const ENV: &[(&str, &str)] = &[("E2E_AMI_SECRET", "amipass-1234")];

async fn start(
    name: &str,
    sim: Simulator,
    heartbeat: &str,
    extra: &str,
) -> (Daemon, SimulatorHandle) {
    let sim = sim.start().await.unwrap();
    let dir = temp_dir(name);
    let _ports = PORTS.lock().await;
    let port = free_port();
    let cfg = config(&dir, sim.local_addr().port(), port, extra)
        .replace("  heartbeat: 5s\n", &format!("  heartbeat: {heartbeat}\n"));
    let d = Daemon::start(&cfg, &dir, ENV);
    d.wait_http().await;
    drop(_ports);
    sim.wait_for(|s| s.logins >= 1).await;
    (d, sim)
}

/// Polls a metric until `pred` holds (generous deadline).
async fn wait_metric(d: &Daemon, sample: &str, pred: impl Fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = d.metric(sample).await.unwrap_or(0.0);
        if pred(v) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sample} = {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn hello(ws: &mut Ws) {
    assert_eq!(ws.json().await["type"], "hello");
    assert_eq!(ws.json().await["type"], "snapshot");
}

fn other_query(ext: &str) -> String {
    format!("tenant=other&extension={ext}&key={OTHER_KEY}")
}

#[tokio::test]
async fn oversized_silent_and_surplus_clients_are_closed_and_counted() {
    let sim = Simulator::new("amiuser", "amipass-1234").session(Vec::new(), AfterCapture::StayOpen);
    let (d, _sim) = start(
        "live-limits",
        sim,
        "1s",
        "  max_clients: 3\n  max_clients_per_tenant: 2\n",
    )
    .await;
    let addr = d.listen.unwrap();

    // A client message above max_message (4096 bytes): 1009.
    let mut big = connect(&live_url(addr, &key_query("1001")), None).await;
    hello(&mut big).await;
    big.send(&format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(5000)))
        .await;
    let code = big.close_code().await;
    assert_eq!(code, Some(1009));
    wait_metric(
        &d,
        "callhook_live_connections_refused_total{reason=\"message_too_big\"}",
        |v| v >= 1.0,
    )
    .await;

    // A client that stops reading (so never answers a ping) is dropped
    // after two silent intervals: 4009, counted. It is not polled at all
    // until the server says it dropped it.
    let mut silent = connect(&live_url(addr, &key_query("1001")), None).await;
    hello(&mut silent).await;
    wait_metric(&d, "callhook_live_heartbeat_timeouts_total", |v| v >= 1.0).await;
    assert_eq!(silent.close_code().await, Some(4009));
    wait_metric(&d, "callhook_live_clients", |v| v == 0.0).await;

    // Two clients for main are the most: the third gets 4029; the other
    // tenant still gets in, up to three in all.
    let mut a = connect(&live_url(addr, &key_query("1001")), None).await;
    hello(&mut a).await;
    let mut b = connect(&live_url(addr, &key_query("1002")), None).await;
    hello(&mut b).await;
    let mut c = connect(&live_url(addr, &key_query("1003")), None).await;
    assert_eq!(c.close_code().await, Some(4029));
    let mut o = connect(&live_url(addr, &other_query("8001")), None).await;
    hello(&mut o).await;
    let mut o2 = connect(&live_url(addr, &other_query("8002")), None).await;
    assert_eq!(o2.close_code().await, Some(4029));
    // SSE too: 503 with Retry-After.
    let r = reqwest::get(d.url(&format!("/v1/live/sse?{}", other_query("8003"))))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    // The admitted ones still work.
    for ws in [&mut a, &mut b, &mut o] {
        ws.send(r#"{"type":"ping","id":"p"}"#).await;
        assert_eq!(ws.until(|v| v["type"] == "pong").await["id"], "p");
    }
    assert!(
        d.metric("callhook_live_connections_refused_total{reason=\"max_clients_per_tenant\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        d.metric("callhook_live_connections_refused_total{reason=\"max_clients\"}")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
    d.stop();
}

/// Reads SSE events (JSON of `data:` lines) until `pred`; returns them all.
async fn sse_until(resp: &mut reqwest::Response, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut buf = String::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no SSE event in time; seen {seen:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("SSE ended; seen {seen:?}"));
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            for l in ev.lines() {
                if let Some(v) = l
                    .strip_prefix("data: ")
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                {
                    let done = pred(&v);
                    seen.push(v);
                    if done {
                        return seen;
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn sse_last_event_id_gets_the_missed_screen_pop() {
    let sim = Simulator::new("amiuser", "amipass-1234").gated().session(
        fixture("asterisk-20/queue-answered.ami"),
        AfterCapture::StayOpen,
    );
    let (d, sim) = start("live-sse-resume", sim, "5s", "").await;
    let addr = d.listen.unwrap();
    let url = d.url(&format!("/v1/live/sse?{}", key_query("1001")));
    let client = reqwest::Client::new();
    // 1001 connects, notes the last id, goes away.
    let mut r = client.get(&url).send().await.unwrap();
    let first = sse_until(&mut r, |v| v["type"] == "snapshot").await;
    let last = first.last().unwrap()["seq"].as_u64().unwrap();
    drop(r);
    // The call happens while it is away (a monitor proves it).
    let mut mon = connect(&live_url(addr, &key_query("999")), None).await;
    sim.release();
    mon.until(|v| v["type"] == "call.hungup" && v["extension"] == "1001")
        .await;
    // Back with Last-Event-ID (as EventSource does): the pop it missed.
    let mut r = client
        .get(&url)
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap();
    let got = sse_until(&mut r, |v| v["type"] == "call.hungup").await;
    let ring = got
        .iter()
        .find(|v| v["type"] == "call.ringing")
        .unwrap_or_else(|| panic!("no call.ringing: {got:?}"));
    assert_eq!(ring["replayed"], true);
    assert_eq!(ring["caller_number"], "5559876543");
    assert!(ring["seq"].as_u64().unwrap() > last);
    // Only 1001's own states (other extensions' only as "answered elsewhere").
    assert!(
        got.iter()
            .all(|v| v["type"] != "presence" || v["extension"] == "1001"),
        "{got:?}"
    );
    d.stop();
}
