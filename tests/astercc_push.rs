//! `rules/astercc-push.yaml` round trip: real AMI captures through the
//! normalizer and the rule set give asterCC-style pushes; those pushes,
//! POSTed as real HTTP requests to a running callhook's push endpoint
//! (`app::run_until` in process, on 127.0.0.1), give back the same calls:
//! the call records of both sides, rendered by the same call-log rule, are
//! compared field by field.

mod support_app;
mod support_http;
mod support_tmp;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callhook::app::RunOptions;
use callhook::config::Config;
use callhook::normalize::Normalizer;
use callhook::replay::replay;
use serde_json::Value;
use support_http::{state_dir, Sink, WAIT};
use support_tmp::TestDir;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "acme-astercc-token";

/// The record of every call, as JSON (both sides use it).
const CALL_LOG: &str = r#"
  - name: call-log
    when: { scope: call, state: hungup }
    target: log
    method: POST
    url: "SINK/call"
    json:
      call_id: "{{call.session_id}}"
      direction: "{{call.direction}}"
      caller: "%CALLER_ID%"
      caller_name: "%CALLER_NAME%"
      dialed: "%DIALED%"
      queue: "%QUEUE_NAME%"
      extensions_rung: "{{json call.extensions_rung}}"
      answered_by: "{{call.answered_by}}"
      final_answered_by: "{{call.final_answered_by}}"
      started_at: "{{call.started_at}}"
      answered_at: "{{call.answered_at}}"
      ended_at: "{{call.ended_at}}"
      duration: "{{call.duration}}"
      billsec: "{{call.billsec}}"
      disposition: "%DISPOSITION%"
      end_reason: "{{call.end_reason}}"
      approximate: "{{call.approximate}}"
"#;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The receiving callhook: one push team, the call log to the sink.
async fn receiver(sink: &Sink) -> (String, CancellationToken, TestDir) {
    let dir = state_dir("astercc-receiver");
    let text = format!(
        "listen: 127.0.0.1:0\nstate_dir: {}\npush:\n  settle: 300ms\n  teams:\n    acme: {{ token: \"{TOKEN}\" }}\ntargets:\n  log: {{ rate_limit: 1000/s }}\nrules:{}",
        dir.display(),
        CALL_LOG.replace("SINK", &sink.url(""))
    );
    let cfg = Config::from_text(&text, Path::new(".")).unwrap_or_else(|e| panic!("{e:?}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = support_app::start(
        cfg,
        RunOptions {
            config_path: None,
            observer: None,
            listener: Some(listener),
            ..RunOptions::default()
        },
    )
    .await;
    (base, app.token, dir)
}

/// The sending side: the rule set as shipped, its URL pointed at the
/// receiver, plus the call log (to compare with).
fn sender(base: &str) -> Config {
    let dir = state_dir("astercc-sender");
    std::fs::create_dir_all(&dir).unwrap();
    let rules = std::fs::read_to_string(root().join("rules/astercc-push.yaml"))
        .unwrap()
        .replace("http://127.0.0.1:8080", base);
    std::fs::write(dir.join("astercc-push.yaml"), rules).unwrap();
    let text = format!(
        "state_dir: {}\ninclude: [astercc-push.yaml]\ntargets:\n  log: {{}}\nrules:{}",
        dir.join("state").display(),
        CALL_LOG.replace("SINK", "http://127.0.0.1:9")
    );
    Config::from_text(&text, &dir).unwrap_or_else(|e| panic!("{e:?}"))
}

fn captures() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for dir in ["asterisk-20", "asterisk-20-pjsip", "asterisk-11"] {
        for e in std::fs::read_dir(root().join("tests/fixtures/ami").join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "ami") {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

fn secs(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_millisecond() as f64 / 1e3),
        _ => None,
    }
}

/// Whether field `k` of the AMI record (`ami`) came back (`pushed`).
/// What the push format cannot say: a pushed call starts at its first
/// push (the AMI call at its first channel, before the PBX rang anyone:
/// up to a queue's announcement earlier); the calling agent of an outgoing
/// call is among the extensions rung (asterCC rings the agent's phone
/// first); pushes never say ABANDONED (the customer's hangup says
/// NOANSWER); and a call whose AMI times are estimates (learned after a
/// reconnect) is pushed with receive times.
fn same(k: &str, ami: &Value, pushed: &Value) -> bool {
    let approximate = ami["approximate"] == true;
    let (a, p) = (&ami[k], &pushed[k]);
    match k {
        "started_at" | "duration" => {
            let (Some(a), Some(p)) = (secs(a), secs(p)) else {
                return approximate;
            };
            approximate || (a - p).abs() <= 1.0
        }
        "answered_at" | "ended_at" | "billsec" | "approximate" if approximate => true,
        "disposition" if a == "ABANDONED" => p == "NO ANSWER",
        "extensions_rung" if ami["direction"] == "outgoing" => {
            let without = |v: &Value| -> Vec<Value> {
                let caller = &ami["caller"];
                v.as_array()
                    .map(|l| l.iter().filter(|x| *x != caller).cloned().collect())
                    .unwrap_or_default()
            };
            without(a) == without(p)
        }
        _ => a == p,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_give_back_the_same_calls() {
    std::env::set_var("ASTERCC_PUSH_TOKEN", TOKEN);
    let sink = Sink::start().await;
    let (base, stop, _dir) = receiver(&sink).await;
    let cfg = sender(&base);
    let http = reqwest::Client::new();
    let mut expected: BTreeMap<String, (String, Value)> = BTreeMap::new();
    let mut pushes = 0;
    for capture in captures() {
        let name = capture.display().to_string();
        let bytes = std::fs::read(&capture).unwrap();
        let mut n = Normalizer::new(cfg.normalizer.clone());
        let pbx: Arc<str> = "main".into();
        let mut reqs = Vec::new();
        replay(&[bytes], &pbx, &mut n, |ev| {
            reqs.extend(cfg.rules.evaluate(ev))
        });
        for r in reqs {
            // As the dispatcher sends it: the env values are stored masked.
            let r = callhook::deliver::secret::revealed(&r, cfg.rules.secrets()).unwrap();
            if r.rule == "call-log" {
                let v: Value = serde_json::from_slice(r.body.as_ref().unwrap()).unwrap();
                let id = v["call_id"].as_str().unwrap().to_string();
                expected.insert(id, (name.clone(), v));
                continue;
            }
            assert!(r.rule.starts_with("astercc-"), "{}", r.rule);
            let mut q = http.post(&r.url);
            for (k, v) in &r.headers {
                q = q.header(k, v);
            }
            let resp = q.body(r.body.clone().unwrap()).send().await.unwrap();
            let status = resp.status().as_u16();
            let answer = resp.text().await.unwrap();
            assert_eq!(status, 200, "{name}: {}: {answer}", r.rule);
            assert!(answer.contains("\"accepted\":true"), "{answer}");
            pushes += 1;
        }
    }
    assert!(expected.len() > 20, "{}", expected.len());
    // Every call comes back, once.
    let deadline = Instant::now() + WAIT;
    let got: BTreeMap<String, Value> = loop {
        let got: BTreeMap<String, Value> = sink
            .for_path("/call")
            .iter()
            .map(|r| {
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                (v["call_id"].as_str().unwrap().to_string(), v)
            })
            .collect();
        if got.len() >= expected.len() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} calls came back",
            got.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut wrong = Vec::new();
    for (id, (capture, want)) in &expected {
        let Some(have) = got.get(id) else {
            wrong.push(format!("{capture}: call {id} missing"));
            continue;
        };
        for (k, w) in want.as_object().unwrap() {
            if !same(k, want, have) {
                wrong.push(format!("{capture}: call {id}: {k}: {w} → {}", have[k]));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} differences over {} calls, {pushes} pushes:\n{}",
        wrong.len(),
        expected.len(),
        wrong.join("\n")
    );
    stop.cancel();
}
