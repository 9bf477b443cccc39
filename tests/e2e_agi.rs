//! End to end with the real binary: `callhook run` with an `agi:` section,
//! a fake Asterisk playing the recorded environments, a real HTTP CRM
//! (authenticated by the target's static header), a CRM that hangs, and
//! PIN routes whose hash comes from `callhook hash-pin`.

mod support_agi;
mod support_daemon;
mod support_http;
mod support_tmp;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support_agi::{replay, Chunking, FakeAsterisk, Plan};
use support_daemon::{free_port, temp_dir, Daemon, WAIT};
use support_http::{Reply, Sink};

fn hash_pin(pin: &str) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_callhook"))
        .arg("hash-pin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{pin}").unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    let h = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(h.starts_with("$argon2id$"), "{h}");
    h
}

fn wait_agi(d: &Daemon) {
    let deadline = Instant::now() + WAIT;
    while !d.stderr().contains("FastAGI listening") {
        assert!(
            Instant::now() < deadline,
            "no FastAGI listener: {}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_the_crm_its_fallback_and_pins_with_the_real_binary() {
    let crm = Sink::start().await;
    crm.set_default(
        "/route",
        Reply::status(200).body(r#"{"actions":[{"action":"set","variables":{"ACCOUNT":"ACME Corp"}},{"action":"dial","extension":"1003","timeout":25}]}"#),
    );
    crm.set_default(
        "/slow",
        Reply::status(200)
            .body(r#"{"action":"hangup"}"#)
            .delay(Duration::from_secs(10)),
    );
    let dir = temp_dir("agi");
    let agi_port = free_port();
    let http_port = free_port();
    let config = format!(
        r#"
listen: 127.0.0.1:{http_port}
state_dir: {state}
targets:
  crm:
    headers: {{ Authorization: "Bearer ${{CRM_TOKEN}}" }}
agi:
  listen: 127.0.0.1:{agi_port}
  routes:
    - name: pin
      when: {{ script: pin }}
      pin: {{ hash: "{hash}", prompt: vm-password, invalid: vm-invalid-password, goodbye: vm-goodbye, max_digits: 4 }}
      actions: [ {{ playback: beep }}, {{ set: {{ PIN_OK: 1 }} }} ]
    - name: vip
      when: {{ dialed: "2125550600" }}
      crm:
        target: crm
        url: "{crm}/route?caller=%CALLER_ID%"
        timeout: 2s
      fallback: [ {{ voicemail: {{ mailbox: "1001" }} }} ]
    - name: slow-crm
      when: {{ dialed: "2125550700" }}
      crm: {{ target: crm, url: "{crm}/slow", timeout: 500ms }}
      fallback: [ {{ set: {{ CRM: down }} }}, {{ voicemail: {{ mailbox: "1001@default", options: u }} }} ]
"#,
        state = dir.join("state").display(),
        hash = hash_pin("4711"),
        crm = crm.url(""),
    );
    let d = Daemon::start(&config, &dir, &[("CRM_TOKEN", "s3cret")]);
    wait_agi(&d);
    let addr: SocketAddr = format!("127.0.0.1:{agi_port}").parse().unwrap();

    // The CRM decides: a VIP's account manager.
    let seen = FakeAsterisk::call(addr, Plan::from_fixture("env-vars")).await;
    assert!(seen.closed);
    assert_eq!(
        seen.commands,
        vec![
            "SET VARIABLE ACCOUNT \"ACME Corp\"",
            "EXEC Dial PJSIP/1003,25",
            "GET VARIABLE DIALSTATUS"
        ]
    );
    let got = crm.for_path("/route");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].uri, "/route?caller=5551234567");
    assert_eq!(
        got[0].header("authorization").as_deref(),
        Some("Bearer s3cret")
    );

    // A CRM that hangs: the fallback runs after the 500 ms timeout.
    let started = Instant::now();
    let p = Plan::with_env("env-vars", &[("agi_extension", "2125550700")]);
    let seen = FakeAsterisk::call(addr, p).await;
    assert!(seen.closed);
    assert_eq!(
        seen.commands,
        vec!["SET VARIABLE CRM down", "EXEC VoiceMail 1001@default,u"]
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // PIN right: the recorded session, byte for byte.
    replay(addr, "pin-right", Chunking::Recorded).await;
    // PIN wrong three times: goodbye and HANGUP.
    let p = Plan::from_fixture("pin-wrong3").digits(&["0000", "1111", "2222"]);
    let seen = FakeAsterisk::call(addr, p).await;
    assert!(seen.closed);
    assert_eq!(seen.with("GET DATA").len(), 3);
    assert_eq!(seen.with("STREAM FILE vm-invalid-password").len(), 3);
    let n = seen.commands.len();
    assert_eq!(
        &seen.commands[n - 2..],
        ["STREAM FILE vm-goodbye \"\"", "HANGUP"]
    );
    assert!(seen.with("SET VARIABLE").is_empty());

    // Counted.
    d.wait_http().await;
    let failures = d
        .metric("callhook_agi_auth_failures_total{reason=\"pin\",route=\"pin\"}")
        .await;
    assert_eq!(failures, Some(3.0));
    assert_eq!(
        d.metric("callhook_agi_crm_requests_total{result=\"timeout\",route=\"slow-crm\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        d.metric("callhook_agi_crm_requests_total{result=\"ok\",route=\"vip\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        d.metric("callhook_agi_sessions_total{result=\"pin_refused\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        d.metric("callhook_agi_sessions_total{result=\"fallback\"}")
            .await,
        Some(1.0)
    );
    let (_, status, stderr) = d.stop();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("AGI wrong PIN"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "no token in the logs");
}
