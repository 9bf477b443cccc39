//! Click-to-call through the live API for every recorded outcome of
//! `tests/fixtures/ami/originate/` (answered, agent busy / no answer /
//! unregistered / unreachable / silent, outside busy / no answer /
//! congestion, synchronous, two in flight): the real binary, the simulator
//! answering each `Originate` from the recording of the same number, and
//! `POST /v1/calls` → `GET /v1/calls/{id}` compared with what the truth
//! says happened — the same rule for every file:
//!
//! * the agent's phone answered → `connected`, and the outside leg's
//!   result (`outside.disposition`) is the Dial status the PBX logged
//!   (`ANSWER` → `ANSWERED`, `BUSY`, `NOANSWER`/`CANCEL` → `NO ANSWER`,
//!   `CONGESTION`/`CHANUNAVAIL` → `FAILED`);
//! * it did not: hang-up cause 17 (user busy) → `busy`, 19 (alerting, no
//!   answer) → `no_answer`, anything else (unregistered, unreachable,
//!   silent) → `failed`.
//!
//! Requests in flight together (two-in-flight) are sent together. The same
//! for the chan_pjsip variants (`originate-pjsip/`), and the
//! `click-to-call.ami` captures of Asterisk 20 (chan_sip, PJSIP) and 11.

mod support_daemon;
mod support_http;
mod support_live;

use std::time::Duration;

use callhook::ami::sim_originate::OriginateRecording;
use callhook::ami::simulator::{AfterCapture, SimSession, Simulator, SimulatorHandle};
use serde_json::Value;
use support_daemon::{fixture, free_port, temp_dir, Daemon};
use support_http::Sink;
use support_live::*;

const ENV: &[(&str, &str)] = &[("E2E_AMI_SECRET", "amipass-1234")];

fn captures(dir: &str) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ami")
        .join(dir);
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().to_string_lossy().to_string();
            let base = n.strip_suffix(".ami")?;
            (!base.ends_with(".listener")).then(|| base.to_string())
        })
        .collect();
    v.sort();
    v
}

fn truth(rel: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/ami/{rel}.truth.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A daemon whose tenant `main` dials its agents with `channel`, on `sim`.
async fn daemon(name: &str, sim: Simulator, channel: &str, top: &str) -> (Daemon, SimulatorHandle) {
    let sim = sim.start().await.unwrap();
    let dir = temp_dir(name);
    let ports = PORTS.lock().await;
    let port = free_port();
    let cfg = config(
        &dir,
        sim.local_addr().port(),
        port,
        &format!("  originate:\n    per_user_per_minute: 60\n    per_user_concurrent: 2\n    timeout: 10s\n{top}"),
    );
    let tenant = format!("main: {{ key: \"{KEY}\", code: 270 }}");
    assert!(cfg.contains(&tenant));
    let cfg = cfg.replace(
        &tenant,
        &format!("main: {{ key: \"{KEY}\", code: 270, channel: \"{channel}\" }}"),
    );
    let d = Daemon::start(&cfg, &dir, ENV);
    d.wait_http().await;
    drop(ports);
    sim.wait_for(|s| s.logins >= 1).await;
    (d, sim)
}

/// (agent, number, status, outside disposition) a person would report.
fn expected(o: &Value) -> (String, String, &'static str, Option<&'static str>) {
    let r = &o["result"];
    let agent = o["agent"].as_str().unwrap().to_string();
    let number = o["number"].as_str().unwrap().to_string();
    if r["agent_answered"] == true {
        let dial = r["dial_status"]
            .as_array()
            .and_then(|d| d.last())
            .and_then(Value::as_str)
            .unwrap_or("");
        let outside = match dial {
            "ANSWER" => "ANSWERED",
            "BUSY" => "BUSY",
            "NOANSWER" | "CANCEL" => "NO ANSWER",
            _ => "FAILED",
        };
        return (agent, number, "connected", Some(outside));
    }
    let cause = r["agent_hangup_cause"][0].as_str().unwrap_or("");
    let status = match cause {
        "17" => "busy",
        "19" => "no_answer",
        _ => "failed",
    };
    (agent, number, status, None)
}

async fn post(d: &Daemon, ext: &str, number: &str) -> String {
    let r = reqwest::Client::new()
        .post(d.url(&format!("/v1/calls?{}", key_query(ext))))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "extension": ext, "number": number }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{ext} → {number}");
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// The request once it is final (and, when connected, once the outside
/// leg's result is known).
async fn settled(d: &Daemon, ext: &str, id: &str) -> Value {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let b = client
            .get(d.url(&format!("/v1/calls/{id}?{}", key_query(ext))))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let got: Value = serde_json::from_slice(&b).unwrap();
        let status = got["status"].as_str().unwrap_or("");
        let done = match status {
            "connected" => got["outside"]["disposition"].is_string(),
            "busy" | "no_answer" | "failed" => true,
            _ => false,
        };
        if done {
            return got;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id}: {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every capture of `dir` (each request answered by its recording) through
/// `POST /v1/calls` with agents dialled as `channel`.
async fn every_outcome_of(dir: &str, count: usize, channel: &str) {
    let names = captures(dir);
    assert_eq!(names.len(), count, "{names:?}");
    let mut sim = Simulator::new("amiuser", "amipass-1234").speed(Some(8.0));
    sim.sessions = vec![SimSession::empty(AfterCapture::StayOpen)];
    for n in &names {
        let rec = OriginateRecording::from_capture(&fixture(&format!("{dir}/{n}.ami")))
            .unwrap_or_else(|| panic!("{n}: no originate"));
        sim = sim.originate(rec);
    }
    let (d, sim) = daemon(&format!("live-c2c-{dir}"), sim, channel, "").await;

    let mut errs = Vec::new();
    for n in &names {
        let t = truth(&format!("{dir}/{n}"));
        let want: Vec<_> = t["originates"]
            .as_array()
            .unwrap()
            .iter()
            .map(expected)
            .collect();
        // Everything of one capture at once (two-in-flight: two agents).
        let mut ids = Vec::new();
        for (agent, number, _, _) in &want {
            ids.push(post(&d, agent, number).await);
        }
        for ((agent, number, status, outside), id) in want.iter().zip(&ids) {
            let got = settled(&d, agent, id).await;
            // `outside` is the resulting call's record; its disposition is
            // the outside leg's result only once the agent answered.
            let saw = (
                got["status"].as_str().unwrap_or("").to_string(),
                outside.and(got["outside"]["disposition"].as_str().map(str::to_string)),
            );
            let wanted = (status.to_string(), outside.map(str::to_string));
            if saw != wanted {
                errs.push(format!(
                    "{dir}/{n}: {agent} → {number}: callhook said {saw:?}, the PBX did {wanted:?} ({got})"
                ));
            }
            if *status == "connected" {
                // The resulting call is the agent's, with the id the request chose.
                assert_eq!(got["session_id"], format!("callhook-{id}").as_str(), "{n}");
            }
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    // One Originate per request, never more.
    let total: usize = names
        .iter()
        .map(|n| {
            truth(&format!("{dir}/{n}"))["originates"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(sim.actions("Originate"), total);
    d.stop();
}

#[tokio::test]
async fn every_recorded_outcome_through_post_v1_calls() {
    every_outcome_of("originate", 11, "SIP/{extension}").await;
}

/// The chan_pjsip variants (`originate-pjsip/`: Reason 1 where chan_sip says
/// 5 or 3, a `HangupRequest` with cause 17 before a busy leg's `Hangup`,
/// two recorded without `ChannelId`), agents dialled as `PJSIP/…`.
#[tokio::test]
async fn pjsip_outcomes_through_post_v1_calls() {
    every_outcome_of("originate-pjsip", 7, "PJSIP/{extension}").await;
}

/// The `click-to-call.ami` captures of Asterisk 20 chan_sip, 20 PJSIP and
/// 11 (AMI 1.x: no `ChannelId`, the agent's first new outgoing call after
/// the request is taken to be it): connected, the outside leg answered, as
/// each truth says; and the resulting call fires the usual rules (a
/// webhook for the agent's outgoing call, with the session id callhook
/// announced).
#[tokio::test]
async fn click_to_call_captures_of_each_driver_and_version() {
    for (rel, channel, modern) in [
        ("asterisk-20/click-to-call", "SIP/{extension}", true),
        ("asterisk-20-pjsip/click-to-call", "PJSIP/{extension}", true),
        ("asterisk-11/click-to-call", "SIP/{extension}", false),
    ] {
        let cap = fixture(&format!("{rel}.ami"));
        let t = truth(rel);
        let call = &t["calls"][0];
        let (agent, number) = (
            call["caller_number"].as_str().unwrap(),
            call["dialed_number"].as_str().unwrap(),
        );
        let agent_answered = call["dial_results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == "ANSWER")
            || call["pbx_answer_ts"].is_number();
        assert!(agent_answered, "{rel}");
        let want_outside = call["disposition"].as_str().unwrap();
        // The session's banner decides the AMI version (11: 1.x).
        let mut session: Vec<u8> = cap
            .split(|b| *b == b'\n')
            .next()
            .unwrap_or_default()
            .to_vec();
        session.extend_from_slice(b"\n");
        let mut sim = Simulator::new("amiuser", "amipass-1234").speed(Some(8.0));
        sim.sessions = vec![SimSession::new(session, AfterCapture::StayOpen)];
        let sim = sim.originate(
            OriginateRecording::from_capture(&cap).unwrap_or_else(|| panic!("{rel}: no originate")),
        );
        let name = format!("live-c2c-{}", rel.replace('/', "-"));
        let sink = Sink::start().await;
        let rules = format!(
            "targets:\n  crm: {{ timeout: 2s }}\nrules:\n  - name: calls\n    when: {{ scope: call, state: hungup }}\n    target: crm\n    url: \"{}\"\n    json: {{ s: \"{{{{call.session_id}}}}\", d: \"{{{{call.direction}}}}\" }}\n",
            sink.url("/ev")
        );
        let (d, sim) = daemon(&name, sim, channel, &rules).await;
        let id = post(&d, agent, number).await;
        let got = settled(&d, agent, &id).await;
        assert_eq!(got["status"], "connected", "{rel}: {got}");
        assert_eq!(got["outside"]["disposition"], want_outside, "{rel}: {got}");
        let session_id = got["session_id"].as_str().unwrap_or("");
        if modern {
            assert_eq!(session_id, format!("callhook-{id}"), "{rel}");
        } else {
            assert!(!session_id.is_empty(), "{rel}: {got}");
        }
        assert_eq!(sim.actions("Originate"), 1, "{rel}");
        let hooks = sink.wait_for(1).await;
        let body: Value = serde_json::from_slice(&hooks[0].body).unwrap();
        assert_eq!(body["s"], session_id, "{rel}: {body}");
        assert_eq!(body["d"], "outgoing", "{rel}: {body}");
        d.stop();
        sink.stop();
    }
}
