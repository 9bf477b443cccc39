//! End to end: the real `callhook run` binary, a simulated PBX replaying real
//! captures, and a real HTTP sink, all on 127.0.0.1. What arrives at the
//! sink, in which order, through failures, restarts, reloads and hostile
//! caller ids.

mod support_daemon;
mod support_http;
mod support_tmp;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use callhook::ami::simulator::{AfterCapture, Simulator, SimulatorHandle};
use serde_json::Value;
use support_daemon::{assert_success, fixture, free_port, temp_dir, Daemon};
use support_http::{Received, Reply, Sink};

const USER: &str = "amiuser";
const SECRET: &str = "deliver-e2e-secret";
const TOKEN: &str = "admin-token-for-tests";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("E2E_AMI_SECRET", SECRET), ("E2E_ADMIN_TOKEN", TOKEN)]
}

/// A config: the simulator, the sink as target `crm` with `target_extra`
/// settings, and `rules` (YAML list items, indented by two spaces).
fn config(
    dir: &Path,
    listen: u16,
    sim: &SimulatorHandle,
    sink: &str,
    target_extra: &str,
    rules: &str,
) -> String {
    format!(
        r#"listen: 127.0.0.1:{listen}
state_dir: {state}
admin: {{ token: "${{E2E_ADMIN_TOKEN}}" }}
pbx:
  - id: main
    ami: {{ host: 127.0.0.1, port: {port}, username: {USER}, secret: "${{E2E_AMI_SECRET}}", ping_interval: 2s, ping_timeout: 2s, connect_timeout: 2s }}
targets:
  crm: {{ timeout: 2s, retry: {{ max_attempts: 50, max_age: 1h, initial_backoff: 100ms, max_backoff: 500ms }}{target_extra} }}
rules:
{rules}"#,
        state = dir.join("state").display(),
        port = sim.local_addr().port(),
        rules = rules.replace("SINK", sink),
    )
}

async fn sim(captures: &[&str], speed: Option<f64>) -> SimulatorHandle {
    let mut bytes = Vec::new();
    for c in captures {
        bytes.extend(fixture(c));
    }
    Simulator::new(USER, SECRET)
        .session(bytes, AfterCapture::StayOpen)
        .speed(speed)
        .start()
        .await
        .unwrap()
}

fn query(r: &Received) -> BTreeMap<String, String> {
    let q = r.uri.split_once('?').map(|x| x.1).unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

const POP_AND_LOG: &str = r#"  - name: screen-pop
    when: { state: ringing, direction: incoming, role: callee }
    target: crm
    url: "http://SINK/CRM/forms/general/DbFind.aspx?pi=%CALLER_ID%&ext=%EXTENSION%&q=%QUEUE_NAME%"
  - name: call-log
    when: { scope: call, state: hungup }
    target: crm
    url: "http://SINK/calls"
    json: { id: "{{call.session_id}}", from: "%CALLER_ID%", answered_by: "{{call.answered_by}}", duration: "%DURACION%" }
    idempotency_key: "call-{{call.session_id}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_call_pops_every_member_with_the_outside_caller() {
    let sink = Sink::start().await;
    let sim = sim(&["asterisk-20/queue-answered.ami"], None).await;
    let dir = temp_dir("queue");
    let listen = free_port();
    let d = Daemon::start(
        &config(&dir, listen, &sim, &sink.addr.to_string(), "", POP_AND_LOG),
        &dir,
        &env(),
    );
    let got = sink.wait_for(3).await;
    let pops: Vec<BTreeMap<String, String>> = got
        .iter()
        .filter(|r| r.path().ends_with("DbFind.aspx"))
        .map(query)
        .collect();
    let mut exts: Vec<&str> = pops.iter().map(|q| q["ext"].as_str()).collect();
    exts.sort();
    assert_eq!(exts, ["1001", "1002"]);
    for q in &pops {
        assert_eq!(q["pi"], "5559876543", "the outside caller, never the agent");
        assert_eq!(q["q"], "ventas");
    }
    let log = got.iter().find(|r| r.path() == "/calls").expect("call log");
    let body: Value = serde_json::from_slice(&log.body).unwrap();
    assert_eq!(body["id"], "1795374648.6");
    assert_eq!(body["answered_by"], "1002");
    assert_eq!(body["duration"], 6);
    assert_eq!(
        log.header("idempotency-key").as_deref(),
        Some("call-1795374648.6")
    );
    // Operations: ready, metrics counted once per delivery.
    d.wait_http().await;
    let ready = reqwest::get(d.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    d.wait_outbox(TOKEN, |v| v["done"] == 3).await;
    assert_eq!(
        d.metric("callhook_deliveries_total{outcome=\"delivered\",target=\"crm\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        d.metric("callhook_rule_matches_total{rule=\"screen-pop\"}")
            .await,
        Some(2.0)
    );
    let (_, status, stderr) = tokio::task::block_in_place(|| d.stop());
    assert!(status.success(), "{stderr}");
    assert!(
        !stderr.contains(SECRET) && !stderr.contains(TOKEN),
        "secrets in logs"
    );
    assert_eq!(
        sim.wait_for(|s| s.action_count("Logoff") >= 1)
            .await
            .action_count("Logoff"),
        1
    );
}

/// For every session, the states each leg and the call went through, in
/// arrival order, must be forward-only, and the call record comes last.
fn assert_per_call_order(received: &[Received]) {
    let mut by_session: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for r in received {
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        let session = b["s"].as_str().unwrap().to_string();
        by_session.entry(session).or_default().push((
            b["who"].as_str().unwrap().to_string(),
            b["st"].as_str().unwrap().to_string(),
        ));
    }
    let rank = |s: &str| match s {
        "ringing" => 0,
        "answered" => 1,
        _ => 2,
    };
    for (session, evs) in &by_session {
        let mut last: BTreeMap<&str, i32> = BTreeMap::new();
        for (i, (who, st)) in evs.iter().enumerate() {
            if who == "call" {
                assert_eq!(
                    i,
                    evs.len() - 1,
                    "{session}: the call record is not last: {evs:?}"
                );
            }
            let r = rank(st);
            if let Some(prev) = last.get(who.as_str()) {
                assert!(r > *prev, "{session}: {who} went backwards: {evs:?}");
            }
            last.insert(who, r);
        }
    }
}

const EVERY_TRANSITION: &str = r#"  - name: legs
    when: { scope: leg }
    target: crm
    url: "http://SINK/ev"
    json: { s: "{{event.session_id}}", who: "{{leg.leg_id}}", st: "%STATE%" }
  - name: calls
    when: { scope: call, state: hungup }
    target: crm
    url: "http://SINK/ev"
    json: { s: "{{call.session_id}}", who: "call", st: "hungup" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_then_down_crm_gets_everything_afterwards_in_per_call_order() {
    // The sink's port is reserved but nobody listens: connection refused.
    let sink_port = free_port();
    let sink_addr = format!("127.0.0.1:{sink_port}");
    let sim = sim(
        &[
            "asterisk-20/incoming-answered.ami",
            "asterisk-20/queue-answered.ami",
            "asterisk-20/internal.ami",
            "asterisk-20/click-to-call.ami",
        ],
        None,
    )
    .await;
    let dir = temp_dir("down");
    let listen = free_port();
    let d = Daemon::start(
        &config(
            &dir,
            listen,
            &sim,
            &sink_addr,
            ", concurrency: 4, breaker: { failure_threshold: 5, open_for: 1s }",
            EVERY_TRANSITION,
        ),
        &dir,
        &env(),
    );
    d.wait_http().await;
    // Everything the PBX said is in the outbox (deliveries are committed
    // before the model events are printed), nothing delivered.
    let mut calls = 0;
    tokio::task::block_in_place(|| {
        d.until(|v| {
            calls += (v["type"] == "call") as usize;
            calls == 4
        })
    });
    let stats = d.wait_outbox(TOKEN, |_| true).await;
    assert_eq!(stats["done"], 0);
    let total = stats["pending"].as_u64().unwrap() + stats["inflight"].as_u64().unwrap();
    assert!(total >= 20, "{stats}");
    assert!(
        d.metric("callhook_delivery_attempts_total{status=\"connect\",target=\"crm\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    // The CRM comes back, first failing: 500, 500, then 429 with Retry-After.
    let sink = Sink::start_on(sink_port).await.unwrap();
    sink.queue(
        "/ev",
        [
            Reply::status(500),
            Reply::status(500),
            Reply::status(429).header("Retry-After", "1"),
        ],
    );
    let t429 = Instant::now();
    d.wait_outbox(TOKEN, |v| v["pending"] == 0 && v["inflight"] == 0)
        .await;
    let got = sink.received();
    let ok: Vec<Received> = got[3..].to_vec();
    assert_eq!(
        ok.len() as u64,
        total,
        "every delivery arrived exactly once after the failures"
    );
    assert!(
        t429.elapsed() >= Duration::from_millis(900),
        "Retry-After honoured"
    );
    assert_per_call_order(&ok);
    let sessions: BTreeSet<String> = ok
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["s"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(sessions.len(), 4);
    let (_, status, stderr) = tokio::task::block_in_place(|| d.stop());
    assert!(status.success(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_lose_no_accepted_delivery() {
    let sink = Sink::start().await;
    // A slow CRM: the outbox fills up while requests trickle out.
    sink.set_fallback(Reply::status(200).delay(Duration::from_millis(40)));
    let sim = Simulator::new(USER, SECRET)
        .session(fixture("asterisk-20/load-dev.ami"), AfterCapture::StayOpen)
        .session(Vec::new(), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let dir = temp_dir("kill9");
    let listen = free_port();
    let signed = ", concurrency: 2, signing: { secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw }";
    let cfg = config(
        &dir,
        listen,
        &sim,
        &sink.addr.to_string(),
        signed,
        EVERY_TRANSITION,
    );
    let d = Daemon::start(&cfg, &dir, &env());
    d.wait_http().await;
    sink.wait_for(40).await;
    tokio::task::block_in_place(|| d.kill9());
    let before_restart = sink.count();
    // Restart on the same state directory, with a fast CRM.
    sink.set_fallback(Reply::status(200));
    let d = Daemon::start(&cfg, &dir, &env());
    d.wait_http().await;
    let stats = d
        .wait_outbox(TOKEN, |v| v["pending"] == 0 && v["inflight"] == 0)
        .await;
    let done = stats["done"].as_u64().unwrap();
    assert!(
        done as usize > before_restart,
        "work was left for the restart: {stats}"
    );
    // Every accepted delivery arrived; only those in flight at the kill twice.
    let rows: Vec<Value> = reqwest::Client::new()
        .get(d.url("/api/deliveries?limit=10000"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in sink.received() {
        *seen.entry(r.header("webhook-id").unwrap()).or_default() += 1;
    }
    for row in &rows {
        assert_eq!(row["status"], "done", "{row}");
        let id = row["event_id"].as_str().unwrap();
        assert!(
            seen.contains_key(id),
            "accepted delivery {id} never arrived"
        );
    }
    // Per slot (concurrency 2) at most two requests are sent but not yet
    // recorded at the kill: the one whose outcome is being recorded and
    // the next one, which a slot sends meanwhile (deliver::dispatcher).
    let dups: usize = seen.values().map(|n| n - 1).sum();
    assert!(
        dups <= 4,
        "only the 4 requests sent but not recorded at the kill (2 per slot) may repeat, got {dups}"
    );
    assert_eq!(rows.len(), seen.len());
    let (_, status, stderr) = tokio::task::block_in_place(|| d.stop());
    assert!(status.success(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_caller_ids_never_alter_request_structure() {
    let hostile_name = "x&token=evil#/../?a=b%00 \"}{\"<script>";
    let hostile_num = "555&ext=0#frag";
    let capture = String::from_utf8(fixture("asterisk-20/queue-answered.ami"))
        .unwrap()
        .replace("Maria Lopez", hostile_name)
        .replace("5559876543", hostile_num);
    let sink = Sink::start().await;
    let sim = Simulator::new(USER, SECRET)
        .session(capture.into_bytes(), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let dir = temp_dir("hostile");
    let rules = r#"  - name: pop
    when: { state: ringing, direction: incoming }
    target: crm
    url: "http://SINK/pop/%CALLER_ID%?pi=%CALLER_ID%&name=%CALLER_NAME%&ext=%EXTENSION%#%CALLER_NAME%"
    headers: { X-Caller: "{{leg.caller_name}}" }
    json: { name: "{{leg.caller_name}}", number: "%CALLER_ID%" }
"#;
    let d = Daemon::start(
        &config(&dir, free_port(), &sim, &sink.addr.to_string(), "", rules),
        &dir,
        &env(),
    );
    let got = sink.wait_for(2).await;
    for r in &got {
        // Path: exactly two segments, the number one of them.
        let path = r.path();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        assert_eq!(segs.len(), 2, "{path}");
        assert_eq!(
            percent_encoding::percent_decode_str(segs[1]).decode_utf8_lossy(),
            hostile_num
        );
        let q = query(r);
        assert_eq!(
            q.keys().collect::<Vec<_>>(),
            ["ext", "name", "pi"],
            "{}",
            r.uri
        );
        assert_eq!(q["name"], hostile_name);
        assert_eq!(q["pi"], hostile_num);
        assert_eq!(r.header("x-caller").as_deref(), Some(hostile_name));
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body.as_object().unwrap().len(), 2);
        assert_eq!(body["name"], hostile_name);
        assert_eq!(body["number"], hostile_num);
    }
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_keeps_the_old_config() {
    let sink = Sink::start().await;
    // Call 1 at once, call 2 about 5 s / 2 later (a 16 s gap, capped at 5 s).
    let sim = sim(
        &[
            "asterisk-20/incoming-answered.ami",
            "asterisk-20/queue-answered.ami",
        ],
        Some(2.0),
    )
    .await;
    let dir = temp_dir("reload");
    let listen = free_port();
    let rules = |path: &str| {
        format!(
            "  - name: pop\n    when: {{ state: ringing, direction: incoming }}\n    target: crm\n    url: \"http://SINK/{path}?pi=%CALLER_ID%\"\n"
        )
    };
    let good = config(&dir, listen, &sim, &sink.addr.to_string(), "", &rules("v1"));
    let d = Daemon::start(&good, &dir, &env());
    d.wait_http().await;
    let first = sink.wait_for(1).await;
    assert_eq!(first[0].path(), "/v1");
    // A broken file: POST /-/reload answers 400 with every error; v1 stays.
    let path = dir.join("callhook.yaml");
    std::fs::write(
        &path,
        good.replace("/v1?pi=%CALLER_ID%", "/v2?pi=%CALLER_IDD%"),
    )
    .unwrap();
    // Anonymous: 401, and not a word about the configuration.
    let r = reqwest::Client::new()
        .post(d.url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("CALLER_IDD") && !text.contains("yaml"),
        "{text}"
    );
    let r = reqwest::Client::new()
        .post(d.url("/-/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(
        body["errors"][0].as_str().unwrap().contains("CALLER_IDD"),
        "{body}"
    );
    assert_eq!(
        d.metric("callhook_config_last_reload_successful").await,
        Some(0.0)
    );
    // A good file by SIGHUP: v2 is in force for the next call.
    std::fs::write(&path, good.replace("/v1?", "/v2?")).unwrap();
    d.hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.metric("callhook_config_last_reload_successful").await != Some(1.0) {
        assert!(Instant::now() < deadline, "SIGHUP reload never succeeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = sink.wait_for(3).await;
    assert_eq!(
        got[1].path(),
        "/v2",
        "{:?}",
        got.iter().map(|r| r.uri.clone()).collect::<Vec<_>>()
    );
    assert_eq!(got[2].path(), "/v2");
    assert_eq!(
        d.metric("callhook_config_reloads_total{outcome=\"failure\"}")
            .await,
        Some(1.0)
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_of_20_per_second_is_never_exceeded() {
    let sink = Sink::start().await;
    let sim = sim(&["asterisk-20/load-dev.ami"], None).await;
    let dir = temp_dir("rate");
    let d = Daemon::start(
        &config(
            &dir,
            free_port(),
            &sim,
            &sink.addr.to_string(),
            ", rate_limit: 20/s, concurrency: 8",
            EVERY_TRANSITION,
        ),
        &dir,
        &env(),
    );
    let got = sink.wait_for(110).await;
    drop(d);
    // Measured at the sink, so arrival jitter (a request delayed by a busy
    // machine arriving together with the next ones) is in the numbers: a
    // window of w seconds can hold the requests sent in w + J seconds, J
    // the latency spread. The exact per-second bound on send instants is
    // proven in tests/deliver_rate.rs; here, allowing J = 250 ms, no 1 s
    // window exceeds 20·1.25 + 1 and no 5 s window 20·5.25 + 1, which still
    // fails for a limit that lets through even one request too many per
    // second over 5 s.
    let times: Vec<Instant> = got.iter().map(|r| r.at).collect();
    let worst_in = |w: Duration| {
        let mut worst = 0;
        for (i, t) in times.iter().enumerate() {
            let n = times[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < w)
                .count();
            worst = worst.max(n);
        }
        worst
    };
    let (one, five) = (
        worst_in(Duration::from_secs(1)),
        worst_in(Duration::from_secs(5)),
    );
    assert!(one <= 26, "{one} requests within one second");
    assert!(five <= 106, "{five} requests within five seconds");
    let span = times[109].duration_since(times[0]);
    assert!(
        span >= Duration::from_millis(5000),
        "110 requests at 20/s take at least 5 s, took {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_deliveries_are_listed_and_retried_through_the_admin_api() {
    let sink = Sink::start().await;
    sink.set_fallback(Reply::status(404).body("no such form"));
    let sim = sim(&["asterisk-20/incoming-answered.ami"], None).await;
    let dir = temp_dir("admin");
    let d = Daemon::start(
        &config(
            &dir,
            free_port(),
            &sim,
            &sink.addr.to_string(),
            "",
            POP_AND_LOG,
        ),
        &dir,
        &env(),
    );
    d.wait_http().await;
    d.wait_outbox(TOKEN, |v| v["dead"] == 2).await;
    let client = reqwest::Client::new();
    let unauth = client
        .get(d.url("/api/deliveries?status=dead"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
    let wrong = client
        .get(d.url("/api/deliveries?status=dead"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let rows: Vec<Value> = client
        .get(d.url("/api/deliveries?status=dead"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .all(|r| r["last_status"] == "404"
            && r["last_error"].as_str().unwrap().contains("no such form")));
    // The CLI sees the same rows (same state directory, daemon running).
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["deliveries", "list", "--dead", "--config"])
        .arg(dir.join("callhook.yaml"))
        .envs(env())
        .output()
        .unwrap();
    assert_success(&cli);
    // A header and the two dead rows.
    assert_eq!(String::from_utf8_lossy(&cli.stdout).lines().count(), 3);
    // The CRM is fixed; retry every dead delivery.
    sink.set_fallback(Reply::status(200));
    let r: Value = client
        .post(d.url("/api/deliveries/retry-dead"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(r["retried"], 2);
    d.wait_outbox(TOKEN, |v| v["done"] == 2 && v["dead"] == 0)
        .await;
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_through_the_outbox_and_a_second_run_creates_no_second_record() {
    let sink = Sink::start().await;
    let dir = temp_dir("replay-send");
    let cfg = format!(
        "state_dir: {}\ntargets:\n  crm: {{ timeout: 2s }}\nrules:\n{}",
        dir.join("state").display(),
        POP_AND_LOG.replace("SINK", &sink.addr.to_string())
    );
    let path = dir.join("replay.yaml");
    std::fs::write(&path, cfg).unwrap();
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
            .arg("replay")
            .arg(format!(
                "{}/tests/fixtures/ami/asterisk-20/queue-answered.ami",
                env!("CARGO_MANIFEST_DIR")
            ))
            .arg("--config")
            .arg(&path)
            .env("CALLHOOK_LOG", "warn")
            .output()
            .unwrap();
        assert_success(&out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let first = tokio::task::block_in_place(run);
    assert!(first.contains("3 requests: 3 enqueued"), "{first}");
    assert!(first.contains("done: 3 delivered"), "{first}");
    assert_eq!(sink.count(), 3);
    // Again: the call log has an idempotency key and is not sent twice; the
    // screen-pops (no key) are sent again on purpose.
    let second = tokio::task::block_in_place(run);
    assert!(second.contains("2 enqueued, 1 already there"), "{second}");
    assert_eq!(sink.for_path("/calls").len(), 1);
    assert_eq!(sink.count(), 5);
}
