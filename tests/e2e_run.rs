//! End to end: the real `callhook run` binary against simulated PBXs on
//! 127.0.0.1 replaying real captures, reading the call model it prints.

mod support_daemon;
mod support_tmp;

use std::path::Path;

use callhook::ami::simulator::{AfterCapture, Simulator, SimulatorHandle};
use serde_json::Value;
use support_daemon::{assert_success, fixture, temp_dir, Daemon};

const USER: &str = "amiuser";
const SECRET: &str = "e2e-secret-42";

fn start(config: &str, dir: &Path) -> Daemon {
    Daemon::start(config, dir, &[("E2E_AMI_SECRET", SECRET)])
}

fn config(dir: &Path, pbxs: &[(&str, &SimulatorHandle)]) -> String {
    let mut s = format!("state_dir: {}\npbx:\n", dir.join("state").display());
    for (id, sim) in pbxs {
        s.push_str(&format!(
            "  - id: {id}\n    ami: {{ host: 127.0.0.1, port: {}, username: {USER}, secret: \"${{E2E_AMI_SECRET}}\", ping_interval: 2s, ping_timeout: 2s, connect_timeout: 2s }}\n",
            sim.local_addr().port()
        ));
    }
    s
}

fn is_call(v: &Value) -> bool {
    v["type"] == "call"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_mid_call_gives_one_call_closed_once() {
    for v in ["asterisk-20", "asterisk-11"] {
        let sim = Simulator::new(USER, SECRET)
            .session(
                fixture(&format!("{v}/reconnect-before.ami")),
                AfterCapture::Close,
            )
            .session(
                fixture(&format!("{v}/reconnect-after.ami")),
                AfterCapture::StayOpen,
            )
            .start()
            .await
            .unwrap();
        let dir = temp_dir(&format!("reconnect-{v}"));
        let daemon = start(&config(&dir, &[("main", &sim)]), &dir);
        let before = tokio::task::block_in_place(|| daemon.until(is_call));
        sim.wait_for(|s| s.replays_completed >= 2).await;
        let (rest, status, stderr) = tokio::task::block_in_place(|| daemon.stop());
        assert!(status.success(), "{v}: {status:?}\n{stderr}");
        let all: Vec<Value> = before.into_iter().chain(rest).collect();
        let calls: Vec<&Value> = all.iter().filter(|e| is_call(e)).collect();
        assert_eq!(calls.len(), 1, "{v}: closed once: {all:#?}");
        let c = calls[0];
        let truth: Value =
            serde_json::from_slice(&fixture(&format!("{v}/reconnect-after.truth.json"))).unwrap();
        let w = &truth["calls"][0];
        assert_eq!(c["session_id"], w["linkedid"], "{v}");
        assert_eq!(c["pbx"], "main");
        assert_eq!(c["direction"], "incoming");
        assert_eq!(c["caller_number"], "5551234567");
        assert_eq!(c["answered_by"], "1001");
        assert_eq!(c["disposition"], "ANSWERED");
        assert_eq!(c["end_reason"], "hangup");
        let dur = c["duration"].as_f64().unwrap();
        assert!(
            (dur - w["duration_s"].as_f64().unwrap()).abs() <= 1.0,
            "{v}: {c}"
        );
        let bill = c["billsec"].as_f64().unwrap();
        assert!(
            (bill - w["billsec_s"].as_f64().unwrap()).abs() <= 1.0,
            "{v}: {c}"
        );
        // The ringing leg before the drop, the hangup after it: one leg id.
        let legs: Vec<&Value> = all.iter().filter(|e| e["type"] == "leg").collect();
        let states: Vec<&str> = legs.iter().map(|l| l["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["ringing", "answered", "hungup"], "{v}: {legs:#?}");
        // Graceful shutdown logged off; the secret never reached the logs.
        let stats = sim.wait_for(|s| s.action_count("Logoff") >= 1).await;
        assert_eq!(stats.action_count("Logoff"), 1);
        assert!(!stderr.contains(SECRET), "{v}: secret in logs");
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_pbxs_in_one_process_keep_their_ids() {
    let a = Simulator::new(USER, SECRET)
        .session(
            fixture("asterisk-20/queue-answered.ami"),
            AfterCapture::StayOpen,
        )
        .start()
        .await
        .unwrap();
    let b = Simulator::new(USER, SECRET)
        .session(
            fixture("asterisk-11/queue-answered.ami"),
            AfterCapture::StayOpen,
        )
        .start()
        .await
        .unwrap();
    let dir = temp_dir("multi");
    let daemon = start(&config(&dir, &[("sede-a", &a), ("sede-b", &b)]), &dir);
    let mut seen = 0;
    let got = tokio::task::block_in_place(|| {
        daemon.until(|v| {
            seen += is_call(v) as usize;
            seen == 2
        })
    });
    let (_, status, stderr) = tokio::task::block_in_place(|| daemon.stop());
    assert!(status.success(), "{stderr}");
    let calls: Vec<&Value> = got.iter().filter(|e| is_call(e)).collect();
    let mut by_pbx: Vec<(String, String)> = calls
        .iter()
        .map(|c| {
            (
                c["pbx"].as_str().unwrap().to_string(),
                c["session_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    by_pbx.sort();
    assert_eq!(
        by_pbx,
        [
            ("sede-a".to_string(), "1795374648.6".to_string()),
            ("sede-b".to_string(), "1795375491.28".to_string())
        ]
    );
    // Every ringing leg carries the outside caller and its PBX's id.
    for l in got
        .iter()
        .filter(|e| e["type"] == "leg" && e["state"] == "ringing")
    {
        assert_eq!(l["caller_number"], "5559876543", "{l}");
        assert!(l["pbx"] == "sede-a" || l["pbx"] == "sede-b");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn check_reports_every_error_and_exits_non_zero() {
    let dir = temp_dir("check");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "pbx:\n  - id: main\n    ami: { host: 127.0.0.1, username: u, secret: \"${E2E_UNSET_VAR_X}\", auth: kerberos }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 errors"), "{err}");
    assert!(
        err.contains("E2E_UNSET_VAR_X") && err.contains("kerberos"),
        "{err}"
    );
    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "pbx:\n  - id: main\n    ami: { host: 127.0.0.1, username: u, secret: plain-for-test }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_success(&out);
}

#[test]
fn check_names_file_line_and_column_with_a_hint() {
    let dir = temp_dir("check-rules");
    let path = dir.join("bad-rules.yaml");
    std::fs::write(
        &path,
        r#"pbx: []
targets:
  crm: { rate_limit: 20/sec }
rules:
  - name: pop
    when: { state: ringing }
    target: crn
    url: "http://127.0.0.1:8080/x?pi=%CALLER_IDD%"
  - name: evil
    target: crm
    url: "http://%CALLER_ID%.example.com/x"
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let f = path.display().to_string();
    for (line_col, what) in [
        (":3:22:", "write 20/s"),
        (":7:13:", "unknown target \"crn\""),
        (":8:", "did you mean %CALLER_ID%"),
        (":11:", "must be written literally"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("{f}{line_col}")) && l.contains(what)),
            "missing {line_col} {what} in:\n{err}"
        );
    }
    assert!(err.contains("4 errors"), "{err}");
}

#[test]
fn demo_plays_the_captures_and_stops_by_itself() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["demo", "--speed", "50"])
        .env("CALLHOOK_LOG", "warn")
        .output()
        .unwrap();
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1002  ringing   ← 5559876543 \"Maria Lopez\" via queue ventas"),
        "{text}"
    );
    assert!(
        text.contains("→ GET /CRM/forms/general/DbFind.aspx?pi=5559876543&ext=1002 → 200"),
        "{text}"
    );
    assert!(
        text.contains("all calls played and every webhook delivered"),
        "{text}"
    );
    let calls = text.lines().filter(|l| l.contains("  call ")).count();
    assert_eq!(calls, 8, "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("agent 1001:  http://127.0.0.1:")
                && l.contains("/console?ticket=v1.")),
        "the console URL: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_dir_refuses_to_start() {
    let sim = Simulator::new(USER, SECRET)
        .session(
            fixture("asterisk-20/incoming-answered.ami"),
            AfterCapture::StayOpen,
        )
        .start()
        .await
        .unwrap();
    let dir = temp_dir("lock");
    let listen = support_daemon::free_port();
    let cfg = format!(
        "listen: 127.0.0.1:{listen}\n{}",
        config(&dir, &[("main", &sim)])
    );
    let first = start(&cfg, &dir);
    first.wait_http().await;
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["run", "--config"])
        .arg(dir.join("callhook.yaml"))
        .env("E2E_AMI_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another callhook daemon is using"), "{err}");
    // The first one is unaffected.
    assert_eq!(
        reqwest::get(first.url("/healthz")).await.unwrap().status(),
        200
    );
    let (_, status, stderr) = tokio::task::block_in_place(|| first.stop());
    assert!(status.success(), "{stderr}");
}
