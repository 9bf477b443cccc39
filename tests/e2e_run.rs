//! End to end: the real `callhook run` binary against simulated PBXs on
//! 127.0.0.1 replaying real captures, reading the call model it prints.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use callhook::ami::simulator::{AfterCapture, Simulator, SimulatorHandle};
use serde_json::Value;

const USER: &str = "amiuser";
const SECRET: &str = "e2e-secret-42";
const WAIT: Duration = Duration::from_secs(20);

fn fixture(rel: &str) -> Vec<u8> {
    let p = format!("{}/tests/fixtures/ami/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("callhook-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The daemon, its stdout lines arriving on a channel.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    fn start(config: &str, dir: &Path) -> Daemon {
        let path = dir.join("callhook.yaml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_callhook"))
            .args(["run", "--config"])
            .arg(&path)
            .args(["--print", "jsonl"])
            .env("E2E_AMI_SECRET", SECRET)
            .env("CALLHOOK_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon { child, lines: rx }
    }

    /// Lines until one satisfies `pred` (panics after WAIT).
    fn until(&self, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("timed out; so far: {got:#?}"));
            let v: Value = serde_json::from_str(&line).unwrap();
            let done = pred(&v);
            got.push(v);
            if done {
                return got;
            }
        }
    }

    /// SIGTERM, then every remaining line until stdout closes; the exit status.
    fn stop(mut self) -> (Vec<Value>, std::process::ExitStatus, String) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            rest.push(serde_json::from_str(&line).unwrap());
        }
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            e.read_to_string(&mut err).ok();
        }
        (rest, status, err)
    }
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
        let daemon = Daemon::start(&config(&dir, &[("main", &sim)]), &dir);
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
    let daemon = Daemon::start(&config(&dir, &[("sede-a", &a), ("sede-b", &b)]), &dir);
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
    let out = Command::new(env!("CARGO_BIN_EXE_callhook"))
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
    let out = Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
