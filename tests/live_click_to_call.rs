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
//! Requests in flight together (two-in-flight) are sent together.

mod support_daemon;
mod support_live;

use std::time::Duration;

use callhook::ami::sim_originate::OriginateRecording;
use callhook::ami::simulator::{AfterCapture, SimSession, Simulator};
use serde_json::Value;
use support_daemon::{fixture, free_port, temp_dir, Daemon};
use support_live::*;

const ENV: &[(&str, &str)] = &[("E2E_AMI_SECRET", "amipass-1234")];

fn captures() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ami/originate");
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

fn truth(name: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/ami/originate/{name}.truth.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
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

#[tokio::test]
async fn every_recorded_outcome_through_post_v1_calls() {
    let names = captures();
    assert_eq!(names.len(), 11, "{names:?}");
    let mut sim = Simulator::new("amiuser", "amipass-1234").speed(Some(8.0));
    sim.sessions = vec![SimSession::empty(AfterCapture::StayOpen)];
    for n in &names {
        let rec = OriginateRecording::from_capture(&fixture(&format!("originate/{n}.ami")))
            .unwrap_or_else(|| panic!("{n}: no originate"));
        sim = sim.originate(rec);
    }
    let sim = sim.start().await.unwrap();
    let dir = temp_dir("live-c2c-all");
    let ports = PORTS.lock().await;
    let port = free_port();
    let d = Daemon::start(
        &config(
            &dir,
            sim.local_addr().port(),
            port,
            "  originate:\n    per_user_per_minute: 60\n    per_user_concurrent: 2\n    timeout: 10s\n",
        ),
        &dir,
        ENV,
    );
    d.wait_http().await;
    drop(ports);
    sim.wait_for(|s| s.logins >= 1).await;

    let mut errs = Vec::new();
    for n in &names {
        let t = truth(n);
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
                    "{n}: {agent} → {number}: callhook said {saw:?}, the PBX did {wanted:?} ({got})"
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
        .map(|n| truth(n)["originates"].as_array().unwrap().len())
        .sum();
    assert_eq!(sim.actions("Originate"), total);
    d.stop();
}
