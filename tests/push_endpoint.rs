//! The asterCC-style push endpoint end to end: `app::run_until` in process
//! with its own HTTP listener on 127.0.0.1, a real outbox and dispatcher,
//! and a scriptable sink as the CRM. Pushes are real HTTP requests.

mod support_http;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callhook::app::{self, RunOptions};
use callhook::config::Config;
use callhook::deliver::Outbox;
use callhook::normalize::Normalizer;
use callhook::replay::replay;
use serde_json::{json, Value};
use support_http::{rows, state_dir, Reply, Sink, WAIT};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const ACME: &str = "acme-push-token-1";
const BETA: &str = "beta-push-token-2";

/// The rule set: every leg event, and the call log (`scope: call, state:
/// hungup`), both JSON POSTs to the sink.
const RULES: &str = r#"
targets:
  crm: { retry: { initial_backoff: 50ms, max_backoff: 100ms, max_attempts: 1000 }, breaker: { failure_threshold: 1000, open_for: 100ms } }
rules:
  - name: legs
    target: crm
    method: POST
    url: "SINK/leg"
    json:
      session: "{{event.session_id}}"
      pbx: "{{event.pbx}}"
      leg: "{{leg.leg_id}}"
      state: "{{leg.state}}"
      role: "{{leg.role}}"
      ext: "%EXTENSION%"
      caller: "%CALLER_ID%"
      direction: "{{event.direction}}"
      disposition: "{{leg.disposition}}"
  - name: call-log
    when: { scope: call, state: hungup }
    target: crm
    method: POST
    url: "SINK/call"
    json:
      call_id: "{{call.session_id}}"
      pbx: "{{call.pbx}}"
      direction: "{{call.direction}}"
      caller: "%CALLER_ID%"
      dialed: "%DIALED%"
      queue: "%QUEUE_NAME%"
      answered_by: "{{call.answered_by}}"
      extensions_rung: "{{json call.extensions_rung}}"
      started_at: "{{call.started_at}}"
      answered_at: "{{call.answered_at}}"
      ended_at: "{{call.ended_at}}"
      duration: "{{call.duration}}"
      billsec: "{{call.billsec}}"
      disposition: "%DISPOSITION%"
      end_reason: "{{call.end_reason}}"
      recording: "%RECORDING_URL%"
      recording_url: "{{call.recording_url}}"
      crm_id: "{{#if call.extra.crm_id}}{{call.extra.crm_id}}{{/if}}"
"#;

struct App {
    base: String,
    sink: Sink,
    outbox: Arc<Outbox>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), app::AppError>>,
    http: reqwest::Client,
}

fn config_text(sink: &Sink, dir: &Path, extra: &str) -> String {
    config_text_settle(sink, dir, extra, "200ms")
}

/// The test config with a given `push.settle` (the window in which late
/// pushes of a call that is over still count).
fn config_text_settle(sink: &Sink, dir: &Path, extra: &str, settle: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nstate_dir: {}\n{extra}\npush:\n  settle: {settle}\n  teams:\n    acme: {{ token: \"{ACME}\", timezone: \"+02:00\" }}\n    beta: {{ token: \"{BETA}\" }}\n{}",
        dir.display(),
        RULES.replace("SINK", &sink.url(""))
    )
}

async fn start(extra: &str) -> App {
    start_settle(extra, "200ms").await
}

async fn start_settle(extra: &str, settle: &str) -> App {
    let sink = Sink::start().await;
    let dir = state_dir("push");
    let text = config_text_settle(&sink, &dir, extra, settle);
    let cfg = Config::from_text(&text, Path::new(".")).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let token = CancellationToken::new();
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let (run_tx, mut run_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(app::run_until(
        cfg,
        RunOptions {
            config_path: None,
            observer: None,
            listener: Some(listener),
            ..RunOptions::default()
        },
        token.clone(),
        reload_tx,
        reload_rx,
        move |r| {
            let _ = run_tx.send(r);
        },
    ));
    let running = run_rx.recv().await.expect("the daemon started");
    App {
        base,
        sink,
        outbox: running.outbox.expect("single-node mode has an outbox"),
        token,
        task,
        http: reqwest::Client::new(),
    }
}

impl App {
    /// A form push; `query` is appended to the URL as is.
    async fn form(&self, query: &str, body: &str) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = self
            .http
            .post(format!("{}/v1/events/astercc{query}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let v = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
        (status, v, headers)
    }

    /// A JSON push with the token in the header.
    async fn json(&self, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/events/astercc", self.base))
            .header("content-type", "application/json")
            .header("X-Callhook-Token", token)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
        (status, v)
    }

    /// An acme form push with the token as query parameter.
    async fn acme(&self, body: &str) -> (u16, Value) {
        let (s, v, _) = self.form(&format!("?token={ACME}"), body).await;
        (s, v)
    }

    /// JSON bodies of the sink's requests to `path` about `session`.
    fn bodies(&self, path: &str, session: &str) -> Vec<Value> {
        self.sink
            .for_path(path)
            .iter()
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
            .filter(|v| v["session"] == session || v["call_id"] == session)
            .collect()
    }

    async fn wait_bodies(&self, path: &str, session: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let b = self.bodies(path, session);
            if b.len() >= n {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "{path} for {session}: {} of {n}: {b:#?}",
                b.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap().unwrap();
    }
}

const OK: (u16, &str) = (200, r#"{"accepted":true,"duplicate":false}"#);

fn ok(r: (u16, Value)) {
    assert_eq!((r.0, r.1.to_string()), (OK.0, OK.1.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_and_json_pushes_make_one_call_with_its_record() {
    let app = start("").await;
    let s = "1700000001.11";
    // Ringing as a form (token in the query), the rest as JSON (token in
    // the header); eventTime as local time of the team (+02:00).
    ok(app
        .acme(&format!(
            "sessionid={s}&event=ringing&source=CALLEE&calltype=dialin&activenum=5551234567&eventTime=2026-03-01+10%3A00%3A00&extension=1001&queue=ventas&crm_id=CRM-77"
        ))
        .await);
    ok(app
        .json(
            ACME,
            json!({"sessionid": s, "event": "answer", "source": "CALLEE", "calltype": "dialin",
                   "activenum": "5551234567", "eventTime": "2026-03-01 10:00:04", "extension": "1001"}),
        )
        .await);
    ok(app
        .json(
            ACME,
            json!({"sessionid": s, "event": "hangup", "source": "CALLEE", "calltype": "dialin",
                   "activenum": "5551234567", "eventTime": 1772352030, "extension": "1001",
                   "recordurl": "https://pbx.example/rec/1.wav"}),
        )
        .await);
    let legs = app.wait_bodies("/leg", s, 3).await;
    let states: Vec<&str> = legs.iter().map(|l| l["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["ringing", "answered", "hungup"]);
    for l in &legs {
        assert_eq!(l["pbx"], "acme");
        assert_eq!(l["leg"], format!("{s}/1001"));
        assert_eq!(l["role"], "callee");
        assert_eq!(l["ext"], "1001");
        assert_eq!(l["caller"], "5551234567");
        assert_eq!(l["direction"], "incoming");
    }
    assert_eq!(legs[2]["disposition"], "ANSWERED");
    let call = app.wait_bodies("/call", s, 1).await.remove(0);
    assert_eq!(call["pbx"], "acme");
    assert_eq!(call["direction"], "incoming");
    assert_eq!(call["caller"], "5551234567");
    assert_eq!(call["queue"], "ventas");
    assert_eq!(call["answered_by"], "1001");
    assert_eq!(call["extensions_rung"], json!(["1001"]));
    // 10:00:00+02:00 = 08:00:00Z; hangup at epoch 1772352030 = 08:00:30Z.
    assert_eq!(call["started_at"], "2026-03-01T08:00:00.000000Z");
    assert_eq!(call["answered_at"], "2026-03-01T08:00:04.000000Z");
    assert_eq!(call["ended_at"], "2026-03-01T08:00:30.000000Z");
    assert_eq!(call["duration"], 30.0);
    assert_eq!(call["billsec"], 26.0);
    assert_eq!(call["disposition"], "ANSWERED");
    assert_eq!(call["end_reason"], "hangup");
    assert_eq!(call["recording"], "https://pbx.example/rec/1.wav");
    assert_eq!(call["recording_url"], "https://pbx.example/rec/1.wav");
    // An unknown field pushed with the first event reaches the record.
    assert_eq!(call["crm_id"], "CRM-77");
    let m = app.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("callhook_push_requests_total")
                && l.contains("team=\"acme\"")
                && l.contains("outcome=\"accepted\"")),
        "{m}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_token_is_401_and_records_nothing() {
    let app = start("").await;
    let body =
        "sessionid=401.1&event=ringing&source=CALLEE&calltype=dialin&activenum=555&extension=1001";
    for q in [
        "",
        "?token=",
        "?token=acme-push-token-X",
        "?tok=acme-push-token-1",
    ] {
        let (status, v, headers) = app.form(q, body).await;
        assert_eq!(status, 401, "{q}");
        assert_eq!(v["accepted"], false);
        assert!(headers.get("www-authenticate").is_some());
    }
    let (status, _) = app
        .json(
            "nope-nope-nope",
            json!({"sessionid": "401.1", "event": "ringing"}),
        )
        .await;
    assert_eq!(status, 401);
    // Nothing was recorded: the session is new to the normalizer (its first
    // leg event is the hangup below, never the refused ringing) and the
    // outbox held nothing before it.
    assert!(rows(&app.outbox).await.is_empty());
    // Beta's token works too (it is beta's call).
    ok(app
        .json(
            BETA,
            json!({"sessionid": "401.1", "event": "hangup", "source": "CALLEE",
                            "calltype": "dialin", "extension": "1001"}),
        )
        .await);
    let legs = app.wait_bodies("/leg", "401.1", 1).await;
    assert_eq!(legs[0]["state"], "hungup");
    assert_eq!(legs[0]["pbx"], "beta");
    let m = app.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("callhook_push_requests_total")
                && l.contains("team=\"unknown\"")
                && l.contains("outcome=\"unauthorized\"")),
        "{m}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_400_naming_the_field() {
    let app = start("").await;
    for (body, field) in [
        ("event=ringing&source=CALLEE", json!("sessionid")),
        ("sessionid=&event=ringing", json!("sessionid")),
        ("sessionid=400.1", json!("event")),
        (
            "sessionid=400.1&event=ringing&source=AGENT",
            json!("source"),
        ),
        (
            "sessionid=400.1&event=ringing&eventTime=tomorrow",
            json!("eventTime"),
        ),
    ] {
        let (status, v) = app.acme(body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(v["field"], field, "{body}");
        assert_eq!(v["accepted"], false);
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (status, v) = app.json(ACME, json!(["not", "an", "object"])).await;
    assert_eq!(status, 400);
    assert_eq!(v["field"], Value::Null);
    let r = app
        .http
        .post(format!("{}/v1/events/astercc?token={ACME}", app.base))
        .header("content-type", "text/xml")
        .body("<event/>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    // Unknown event types are kept and passed through.
    ok(app
        .acme("sessionid=400.2&event=hold&calltype=dialin&extension=1001")
        .await);
    assert!(rows(&app.outbox).await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_push_twice_fires_once() {
    let app = start("").await;
    let ring = "sessionid=dup.1&event=ringing&source=CALLEE&calltype=dialin&activenum=555&eventTime=1772352000&extension=1001";
    ok(app.acme(ring).await);
    let (status, v) = app.acme(ring).await;
    assert_eq!(
        (status, v),
        (200, json!({"accepted": true, "duplicate": true}))
    );
    // As JSON, with the number as a number: still the same event.
    let (status, v) = app
        .json(
            ACME,
            json!({"sessionid": "dup.1", "event": "ringing", "source": "CALLEE",
                            "calltype": "dialin", "activenum": "555", "eventTime": 1772352000,
                            "extension": "1001"}),
        )
        .await;
    assert_eq!((status, v["duplicate"].clone()), (200, json!(true)));
    let hang = "sessionid=dup.1&event=hangup&source=CALLEE&calltype=dialin&eventTime=1772352009&extension=1001";
    ok(app.acme(hang).await);
    app.wait_bodies("/call", "dup.1", 1).await;
    // After the record: still a duplicate, nothing new.
    let (_, v) = app.acme(hang).await;
    assert_eq!(v["duplicate"], true);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let legs = app.bodies("/leg", "dup.1");
    let states: Vec<&str> = legs.iter().map(|l| l["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["ringing", "hungup"]);
    assert_eq!(app.bodies("/call", "dup.1").len(), 1);
    let in_outbox = rows(&app.outbox)
        .await
        .into_iter()
        .filter(|r| r.session_id == "dup.1")
        .count();
    assert_eq!(in_outbox, 3, "two legs and one record");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_before_ringing_and_answer_still_gives_one_answered_record() {
    // The three pushes must arrive within one settle window; 200 ms is
    // less than three requests take on a loaded 2-core machine.
    let app = start_settle("", "3s").await;
    let base = "sessionid=ooo.1&source=CALLEE&calltype=dialin&activenum=5550001&extension=1002";
    ok(app
        .acme(&format!("{base}&event=hangup&eventTime=1772352020"))
        .await);
    ok(app
        .acme(&format!("{base}&event=ringing&eventTime=1772352000"))
        .await);
    ok(app
        .acme(&format!("{base}&event=answered&eventTime=1772352005"))
        .await);
    let calls = app.wait_bodies("/call", "ooo.1", 1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.bodies("/call", "ooo.1").len(), 1, "one record");
    let c = &calls[0];
    assert_eq!(c["disposition"], "ANSWERED");
    assert_eq!(c["duration"], 20.0);
    assert_eq!(c["billsec"], 15.0);
    assert_eq!(c["answered_by"], "1002");
    // The leg never moves backwards: it only hung up.
    let legs = app.bodies("/leg", "ooo.1");
    assert_eq!(legs.len(), 1);
    assert_eq!(legs[0]["state"], "hungup");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_only_gives_one_no_answer_record() {
    let app = start("").await;
    ok(app
        .acme("sessionid=ho.1&event=hangup&source=CALLEE&calltype=dialin&activenum=5550002&extension=1003")
        .await);
    let c = app.wait_bodies("/call", "ho.1", 1).await.remove(0);
    assert_eq!(c["disposition"], "NO ANSWER");
    assert_eq!(c["answered_at"], Value::Null);
    assert_eq!(c["billsec"], 0.0);
    assert_eq!(c["extensions_rung"], json!(["1003"]));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.bodies("/call", "ho.1").len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_hangs_up_is_closed_by_max_age() {
    let app = start("calls: { max_age: 1s }").await;
    ok(app
        .acme("sessionid=age.1&event=ringing&source=CALLEE&calltype=dialin&activenum=5550003&extension=1004")
        .await);
    ok(app
        .acme("sessionid=age.1&event=answer&source=CALLEE&calltype=dialin&activenum=5550003&extension=1004")
        .await);
    let c = app.wait_bodies("/call", "age.1", 1).await.remove(0);
    assert_eq!(c["end_reason"], "max_age");
    assert_eq!(c["disposition"], "ANSWERED");
    let legs = app.wait_bodies("/leg", "age.1", 3).await;
    assert_eq!(legs[2]["state"], "hungup");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_for_new_calls_beyond_max_live_are_503_and_calls_in_progress_go_on() {
    let app = start("calls: { max_live: 2 }").await;
    let ring = |s: &str| {
        format!("sessionid={s}&event=ringing&source=CALLEE&calltype=dialin&activenum=5550009&extension=1005")
    };
    ok(app.acme(&ring("cap.1")).await);
    ok(app.acme(&ring("cap.2")).await);
    // A third call does not fit: 503 with Retry-After, nothing recorded.
    let (status, body, headers) = app.form(&format!("?token={ACME}"), &ring("cap.3")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("calls.max_live"),
        "{body}"
    );
    assert_eq!(
        headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    // The calls in progress still take their pushes and finish.
    ok(app
        .acme("sessionid=cap.1&event=hangup&source=CALLEE&calltype=dialin&activenum=5550009&extension=1005")
        .await);
    let c = app.wait_bodies("/call", "cap.1", 1).await.remove(0);
    assert_eq!(c["disposition"], "NO ANSWER");
    // Once a call is over there is room again: the retried push is taken.
    ok(app.acme(&ring("cap.3")).await);
    assert!(app.bodies("/leg", "cap.3").len() <= 1);
    assert!(app
        .metrics()
        .await
        .contains(r#"callhook_normalizer_ignored_total{reason="max_live"} 1"#));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_rules_fire_for_pushed_and_ami_calls() {
    let app = start("").await;
    // A pushed incoming call answered by 1002 …
    let base = "sessionid=same.1&calltype=dialin&activenum=5559876543&queue=ventas&did=2125550200";
    ok(app
        .acme(&format!(
            "{base}&event=ringing&source=CALLER&eventTime=1772352000"
        ))
        .await);
    ok(app
        .acme(&format!(
            "{base}&event=ringing&source=CALLEE&extension=1002&eventTime=1772352001"
        ))
        .await);
    ok(app
        .acme(&format!(
            "{base}&event=answer&source=CALLEE&extension=1002&eventTime=1772352004"
        ))
        .await);
    ok(app
        .acme(&format!(
            "{base}&event=hangup&source=CALLER&eventTime=1772352010"
        ))
        .await);
    ok(app
        .acme(&format!(
            "{base}&event=hangup&source=CALLEE&extension=1002&eventTime=1772352010"
        ))
        .await);
    let pushed = app.wait_bodies("/call", "same.1", 1).await.remove(0);
    let pushed_req = app
        .sink
        .for_path("/call")
        .into_iter()
        .find(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["call_id"] == "same.1")
        .unwrap();
    // … and the same rule set on a real Asterisk 20 capture of such a call.
    let text = config_text(&app.sink, &state_dir("push-ami"), "");
    let cfg = Config::from_text(&text, Path::new(".")).unwrap();
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ami/asterisk-20/queue-answered.ami"),
    )
    .unwrap();
    let mut n = Normalizer::new(cfg.normalizer.clone());
    let mut reqs = Vec::new();
    let pbx: Arc<str> = "main".into();
    replay(&[bytes], &pbx, &mut n, |ev| {
        reqs.extend(cfg.rules.evaluate(ev))
    });
    let ami_req = reqs
        .iter()
        .find(|r| r.rule == "call-log")
        .expect("an AMI call record");
    let ami: Value = serde_json::from_slice(ami_req.body.as_ref().unwrap()).unwrap();
    // Same request shape: method, path, content type, keys and JSON types.
    assert_eq!(ami_req.method, pushed_req.method);
    assert!(ami_req.url.ends_with("/call"));
    assert_eq!(
        ami_req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str()),
        pushed_req.header("content-type").as_deref()
    );
    let shape = |v: &Value| -> Vec<(String, &'static str)> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, x)| {
                let t = match x {
                    Value::Null => "null",
                    Value::Bool(_) => "bool",
                    Value::Number(_) => "number",
                    Value::String(_) => "string",
                    Value::Array(_) => "array",
                    Value::Object(_) => "object",
                };
                (k.clone(), t)
            })
            .filter(|(k, _)| k != "recording_url")
            .collect()
    };
    assert_eq!(shape(&ami), shape(&pushed));
    // Same meaning, too.
    for k in [
        "direction",
        "caller",
        "dialed",
        "queue",
        "answered_by",
        "disposition",
        "end_reason",
    ] {
        assert_eq!(ami[k], pushed[k], "{k}");
    }
    assert_eq!(pushed["pbx"], "acme");
    assert_eq!(ami["pbx"], "main");
    assert_eq!(ami["recording_url"], Value::Null);
    assert_eq!(ami["recording"], Value::Null);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_push_call_maps_agent_and_customer() {
    let app = start("").await;
    let agent =
        "sessionid=out.1&calltype=dialout&activenum=5553330000&source=CALLER&extension=1005";
    let cust = "sessionid=out.1&calltype=dialout&activenum=5553330000&source=CALLEE&extension=1005";
    ok(app
        .acme(&format!("{agent}&event=ringing&eventTime=1772352000"))
        .await);
    ok(app
        .acme(&format!("{agent}&event=answer&eventTime=1772352002"))
        .await);
    ok(app
        .acme(&format!("{cust}&event=ringing&eventTime=1772352003"))
        .await);
    ok(app
        .acme(&format!("{cust}&event=answer&eventTime=1772352008"))
        .await);
    ok(app
        .acme(&format!("{cust}&event=hangup&eventTime=1772352030"))
        .await);
    ok(app
        .acme(&format!("{agent}&event=hangup&eventTime=1772352030"))
        .await);
    let c = app.wait_bodies("/call", "out.1", 1).await.remove(0);
    assert_eq!(c["direction"], "outgoing");
    assert_eq!(c["caller"], "1005");
    assert_eq!(c["dialed"], "5553330000");
    assert_eq!(c["answered_by"], "external");
    assert_eq!(c["billsec"], 22.0);
    let legs = app.wait_bodies("/leg", "out.1", 3).await;
    assert!(legs
        .iter()
        .all(|l| l["role"] == "caller" && l["ext"] == "1005"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_refusal_is_503_and_the_retry_is_applied_again() {
    // One waiting delivery at most, and a CRM that is down: the second
    // transition's delivery is refused.
    let app = start("outbox: { max_rows: 1 }").await;
    app.sink.set_default("/leg", Reply::status(503));
    let base = "sessionid=full.1&source=CALLEE&calltype=dialin&activenum=555&extension=1006";
    ok(app
        .acme(&format!("{base}&event=ringing&eventTime=1772352000"))
        .await);
    let answer = format!("{base}&event=answer&eventTime=1772352003");
    let (status, v, headers) = app.form(&format!("?token={ACME}"), &answer).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(
        headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    // Retried while still full: refused again, not taken for a duplicate.
    let (status, _, _) = app.form(&format!("?token={ACME}"), &answer).await;
    assert_eq!(status, 503);
    // The CRM comes back, the outbox drains, the retry is applied.
    app.sink.set_default("/leg", Reply::status(200));
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, v, _) = app.form(&format!("?token={ACME}"), &answer).await;
        if status == 200 {
            assert_eq!(v["duplicate"], false);
            break;
        }
        assert!(Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (The sink also saw the ringing's refused attempts.)
    let deadline = Instant::now() + WAIT;
    while !app
        .bodies("/leg", "full.1")
        .iter()
        .any(|l| l["state"] == "answered")
    {
        assert!(Instant::now() < deadline, "the answered leg never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.stop().await;
}
