//! Extension states on the live API come from the presence tracker: the
//! real binary, the simulated PBX replaying each presence capture
//! (`tests/fixtures/ami/presence/`: ring, answer, hold, call waiting,
//! registration and qualify, DND, queue pause), and a monitor WebSocket, an
//! agent WebSocket, a monitor SSE client, `/v1/extensions` and a Meetip
//! page. Each must show every extension going through the states a person
//! watching the phones named (the truth's `expected_human`), in order, with
//! nothing in between.

mod support_daemon;
mod support_live;

use std::collections::BTreeMap;
use std::time::Duration;

use callhook::ami::simulator::{AfterCapture, Simulator, SimulatorHandle};
use serde_json::Value;
use support_daemon::{fixture, free_port, temp_dir, Daemon};
use support_live::*;

const ENV: &[(&str, &str)] = &[("E2E_AMI_SECRET", "amipass-1234")];

/// Replay speed: steps seconds apart in the capture stay well apart, so
/// the model's legs (committed after the normalizer's batch) are never
/// overtaken by the next step's hint.
const SPEED: f64 = 10.0;

async fn start(name: &str, capture: &str) -> (Daemon, SimulatorHandle) {
    let sim = Simulator::new("amiuser", "amipass-1234")
        .gated()
        .speed(Some(SPEED))
        .session(
            fixture(&format!("presence/{capture}.ami")),
            AfterCapture::StayOpen,
        )
        .start()
        .await
        .unwrap();
    let dir = temp_dir(name);
    let _ports = PORTS.lock().await;
    let port = free_port();
    let d = Daemon::start(
        &config(
            &dir,
            sim.local_addr().port(),
            port,
            // 1001 configured: the directory is closed (unknown
            // extensions are refused at a Meetip login).
            "meetip:\n  path: /meetip\npresence:\n  tenants:\n    main: { extensions: [\"1001\"] }\n",
        ),
        &dir,
        ENV,
    );
    d.wait_http().await;
    drop(_ports);
    sim.wait_for(|s| s.logins >= 1).await;
    (d, sim)
}

fn truth(capture: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/ami/presence/{capture}.truth.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// What a person saw, per extension, consecutive repeats folded.
fn expected(capture: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for step in truth(capture)["steps"].as_array().unwrap() {
        let Some(want) = step["expected_human"].as_object() else {
            continue;
        };
        for (ext, w) in want {
            let seq = out.entry(ext.clone()).or_default();
            let w = w.as_str().unwrap().to_string();
            if seq.last() != Some(&w) {
                seq.push(w);
            }
        }
    }
    out
}

fn human(v: &Value) -> String {
    let s = v["state"].as_str().unwrap_or("?").to_string();
    if v["call_waiting"] == true {
        format!("{s}+ringing")
    } else {
        s
    }
}

/// States per extension from a stream of live messages: the snapshot's,
/// then every `presence` message, in order.
#[derive(Default, Debug)]
struct Seen {
    states: BTreeMap<String, Vec<String>>,
    seqs: Vec<u64>,
}

impl Seen {
    fn take(&mut self, v: &Value) {
        if let Some(s) = v["seq"].as_u64() {
            self.seqs.push(s);
        }
        let mut push = |e: &Value| {
            let ext = e["extension"].as_str().unwrap_or("").to_string();
            let seq = self.states.entry(ext).or_default();
            let h = human(e);
            if seq.last() != Some(&h) {
                seq.push(h);
            }
        };
        match v["type"].as_str() {
            Some("snapshot") => {
                for e in v["extensions"].as_array().into_iter().flatten() {
                    push(e);
                }
            }
            Some("presence") => push(v),
            _ => {}
        }
    }

    /// The states of `ext` since the first step: `unknown` before the
    /// state lists were answered and a state carried into the first step
    /// are left out (as in `tests/presence.rs`).
    fn sequence(&self, ext: &str, want: &[String]) -> Vec<String> {
        let mut seq: Vec<String> = self.states.get(ext).cloned().unwrap_or_default();
        if seq.first().map(String::as_str) == Some("unknown") {
            seq.remove(0);
        }
        if seq.len() > 1 && seq.first() != want.first() {
            seq.remove(0);
        }
        seq
    }

    fn complete(&self, want: &BTreeMap<String, Vec<String>>) -> bool {
        want.iter().all(|(e, w)| &self.sequence(e, w) == w)
    }

    fn report(&self, want: &BTreeMap<String, Vec<String>>) -> String {
        want.iter()
            .map(|(e, w)| format!("{e}: saw {:?}, a person saw {w:?}", self.sequence(e, w)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The states of an SSE stream (monitor) so far.
async fn read_sse(resp: &mut reqwest::Response, buf: &mut String, seen: &mut Seen) -> bool {
    match tokio::time::timeout(Duration::from_millis(200), resp.chunk()).await {
        Ok(Ok(Some(c))) => {
            buf.push_str(&String::from_utf8_lossy(&c));
            while let Some(i) = buf.find("\n\n") {
                let ev: String = buf.drain(..i + 2).collect();
                for l in ev.lines() {
                    if let Some(d) = l.strip_prefix("data: ") {
                        if let Ok(v) = serde_json::from_str::<Value>(d) {
                            seen.take(&v);
                        }
                    }
                }
            }
            true
        }
        Ok(_) => false,
        Err(_) => true,
    }
}

async fn get_json(url: &str) -> Value {
    let b = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    serde_json::from_slice(&b).unwrap()
}

fn meetip_word(state: &str) -> &'static str {
    match state {
        "ringing" => "timbre",
        "in_use" | "in_use+ringing" | "busy" | "on_hold" => "ocupado",
        "unavailable" => "no disponible",
        _ => "libre",
    }
}

fn meetip_own(state: &str) -> &'static str {
    match state {
        "ringing" => "(info,-Timbre)",
        "in_use" | "in_use+ringing" | "busy" | "on_hold" => "(info,-Ocupado)",
        "unavailable" => "(info,-No disponible)",
        _ => "(info,-Libre)",
    }
}

fn meetip_board(state: &str) -> &'static str {
    match state {
        "ringing" => "Timbre",
        "idle" => "Libre",
        _ => "Ocupada",
    }
}

fn fold<'a>(words: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for w in words {
        if out.last() != Some(&w) {
            out.push(w);
        }
    }
    out
}

async fn check(capture: &str) {
    let want = expected(capture);
    let (d, sim) = start(&format!("live-presence-{capture}"), capture).await;
    let addr = d.listen.unwrap();
    let mut mon = connect(&live_url(addr, &key_query("999")), None).await;
    let mut agent = connect(&live_url(addr, &key_query("1001")), None).await;
    let mut sse = reqwest::Client::new()
        .get(d.url(&format!("/v1/live/sse?{}", key_query("999"))))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let (mut seen, mut seen_agent, mut seen_sse) =
        (Seen::default(), Seen::default(), Seen::default());
    let mut sse_buf = String::new();
    for (ws, s) in [(&mut mon, &mut seen), (&mut agent, &mut seen_agent)] {
        assert_eq!(ws.json().await["type"], "hello");
        let snap = ws.json().await;
        assert_eq!(snap["type"], "snapshot", "{snap}");
        s.take(&snap);
    }
    // Meetip pages: 1004's own, and the monitor's.
    let meetip = format!("ws://{addr}/meetip");
    let mut page_1004 = connect(&meetip, None).await;
    assert_eq!(page_1004.text().await, "(???,CONECTADO)");
    page_1004.send(&format!("270/1004, {KEY} ")).await;
    let mut page_mon = connect(&meetip, None).await;
    // The light phase once 1004's login is through: a full login works in both.
    assert!(page_mon.text().await.ends_with(",CONECTADO)"));
    page_mon.send(&format!("270/999, {KEY} ")).await;
    sim.release();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !seen.complete(&want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{capture}: the monitor's states\n{}",
            seen.report(&want)
        );
        let v = mon.json().await;
        seen.take(&v);
    }
    // The capture is over and the table settled on the last step's states.
    sim.wait_for(|s| s.replays_completed >= 1).await;
    let last: BTreeMap<&String, &String> =
        want.iter().map(|(e, w)| (e, w.last().unwrap())).collect();
    let ext_url = d.url(&format!("/v1/extensions?{}", key_query("999")));
    loop {
        let ex = get_json(&ext_url).await;
        let rows = ex["extensions"].as_array().cloned().unwrap_or_default();
        let now: BTreeMap<String, String> = rows
            .iter()
            .map(|r| (r["extension"].as_str().unwrap_or("").to_string(), human(r)))
            .collect();
        if last.iter().all(|(e, w)| now.get(*e) == Some(*w)) {
            // Every row says where it came from (the tracker).
            for r in &rows {
                assert_ne!(r["source"], "model", "{r}");
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{capture}: /v1/extensions {now:?}, want {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more after the last state (quiet for a while).
    while let Ok(v) = tokio::time::timeout(Duration::from_millis(500), mon.json()).await {
        seen.take(&v);
    }
    for (e, w) in &want {
        assert_eq!(&seen.sequence(e, w), w, "{capture}: monitor, {e}");
    }
    assert!(
        seen.seqs.windows(2).all(|p| p[0] < p[1]),
        "{capture}: seq {:?}",
        seen.seqs
    );
    // The agent saw exactly its own extension's states.
    while let Ok(v) = tokio::time::timeout(Duration::from_millis(300), agent.json()).await {
        seen_agent.take(&v);
    }
    if let Some(w) = want.get("1001") {
        assert_eq!(&seen_agent.sequence("1001", w), w, "{capture}: agent 1001");
    }
    assert!(
        seen_agent.states.keys().all(|e| e == "1001"),
        "{capture}: the agent saw {:?}",
        seen_agent.states.keys()
    );
    // SSE: the same states.
    while read_sse(&mut sse, &mut sse_buf, &mut seen_sse).await && !seen_sse.complete(&want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{capture}: SSE\n{}",
            seen_sse.report(&want)
        );
    }
    for (e, w) in &want {
        assert_eq!(&seen_sse.sequence(e, w), w, "{capture}: SSE, {e}");
    }
    // Meetip: 1004's page saw its own states (unregistered has no Meetip
    // word: `-No disponible`), the monitor page the board's (unregistered
    // is `Ocupada`: never offered as free).
    if let Some(w) = want.get("1004") {
        let own: Vec<&str> = fold(w.iter().map(|s| meetip_own(s)));
        until_states(&mut page_1004, &own).await;
        // The monitor page gets changes only (no state at login); the
        // capture is over, so every line is there.
        let board: Vec<&str> = fold(w.iter().map(|s| meetip_board(s)));
        let mut lines: Vec<String> = Vec::new();
        while let Ok(l) = tokio::time::timeout(Duration::from_millis(700), page_mon.text()).await {
            lines.push(l);
        }
        let got: Vec<&str> = fold(lines.iter().filter_map(|l| {
            let rest = l.strip_prefix("(info,270-")?;
            let (word, ext) = rest.split_once('-')?;
            (ext.starts_with("1004-") && matches!(word, "Libre" | "Ocupada" | "Timbre"))
                .then_some(word)
        }));
        assert!(
            got == board || got == board[1..],
            "{capture}: board {got:?}, want {board:?}: {lines:?}"
        );
    }
    // An extension neither configured nor known to the PBX is refused at
    // login with the right key (extensions are configured and the PBX's
    // lists were answered: the directory is closed).
    let mut page = connect(&format!("ws://{addr}/meetip"), None).await;
    assert_eq!(page.text().await, "(ID?,CONECTADO)");
    page.send(&format!("270/4711, {KEY} ")).await;
    assert_eq!(
        page.text().await,
        "(info,Error de autenticacion)",
        "{capture}"
    );
    assert!(matches!(page.next().await, Got::Closed(_)));
    // Meetip: the status answers say the same.
    let mut page = connect(&format!("ws://{addr}/meetip"), None).await;
    assert_eq!(page.text().await, "(ID?,CONECTADO)");
    page.send(&format!("270/1002, {KEY} ")).await;
    for (e, w) in &last {
        page.send(&format!("(status, {e})")).await;
        let want_line = format!("(estado,{e}-{})", meetip_word(w));
        loop {
            let line = page.text().await;
            if line.starts_with("(estado,") || line.starts_with("(status,") {
                assert_eq!(line, want_line, "{capture}");
                break;
            }
        }
    }
    d.stop();
}

#[tokio::test]
async fn call_cycle_ring_answer_hold_call_waiting() {
    check("call-cycle").await;
}

#[tokio::test]
async fn reachability_registration_and_qualify() {
    check("reachability").await;
}

#[tokio::test]
async fn dnd_busy_and_the_unregistered_phone_behind_it() {
    check("dnd").await;
}

#[tokio::test]
async fn queue_pause_changes_no_state() {
    check("queue-pause").await;
}
