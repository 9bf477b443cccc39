//! End to end: the state directory's disk fills up under load. The real
//! binary runs with its state directory on a 1 MiB tmpfs (a private mount
//! namespace, `unshare -rm`); pushes keep arriving. What must hold: pushes
//! are refused with 503 (nothing accepted is lost), and the log does not
//! repeat the same failure for every refused event (rate-limited: a few
//! lines a minute, each saying how many were left out).
//!
//! Needs `unshare` with unprivileged user namespaces (or root): the test
//! says so and passes vacuously where the kernel forbids it.

mod support_daemon;
mod support_tmp;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support_daemon::{free_port, temp_dir, WAIT};

const TOKEN: &str = "full-disk-push-token";

fn namespaces_work() -> bool {
    Command::new("unshare")
        .args(["-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_pushes_without_flooding_the_log() {
    if !namespaces_work() {
        eprintln!("skipped: cannot mount a small tmpfs in a user namespace here");
        return;
    }
    let dir = temp_dir("full-disk");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let port = free_port();
    let cfg = dir.join("callhook.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"listen: 127.0.0.1:{port}
state_dir: {state}
push:
  teams:
    acme: {{ token: "{TOKEN}" }}
targets:
  crm: {{ timeout: 1s }}
rules:
  - name: legs
    target: crm
    method: POST
    url: "http://127.0.0.1:9/leg"
    json: {{ event: "{{{{json event}}}}", pad: "{pad}" }}
"#,
            state = state.display(),
            pad = "x".repeat(800),
        ),
    )
    .unwrap();
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{}' && exec '{}' run --config '{}'",
        state.display(),
        env!("CARGO_BIN_EXE_callhook"),
        cfg.display()
    );
    let mut child = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .env("CALLHOOK_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log as it comes (a full pipe would stall the daemon).
    let mut stderr = child.stderr.take().unwrap();
    let log_reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/events/astercc?token={TOKEN}");
    let deadline = Instant::now() + WAIT;
    while client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the daemon never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let push = |i: usize| {
        let c = client.clone();
        let url = url.clone();
        async move {
            c.post(&url)
                .form(&[
                    ("sessionid", format!("1772352000.{i}")),
                    ("event", "ringing".into()),
                    ("source", "CALLEE".into()),
                    ("calltype", "dialin".into()),
                    ("activenum", "5559876543".into()),
                    ("extension", "1001".into()),
                ])
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    // Fill the disk: accepted until the outbox cannot grow.
    let mut accepted = 0;
    let mut i = 0;
    loop {
        let code = push(i).await;
        i += 1;
        if code == 503 {
            break;
        }
        assert_eq!(code, 200, "push {i}");
        accepted += 1;
        assert!(i < 20_000, "the disk never filled");
    }
    // Then a steady stream of refused pushes.
    let refused_from = i;
    let mut refused = 0;
    for _ in 0..300 {
        if push(i).await == 503 {
            refused += 1;
        }
        i += 1;
    }
    assert!(
        refused >= 290,
        "{refused} of 300 refused after the disk filled"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stop = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < stop, "the daemon did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = log_reader.join().unwrap();
    let failure_lines = log
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            (l.contains("outbox") || l.contains("push not recorded") || l.contains("full"))
                && (l.contains("warn") || l.contains("error"))
        })
        .count();
    eprintln!(
        "full disk: {accepted} pushes accepted, then {refused} of 300 refused (from push {refused_from}); {failure_lines} warning/error lines about it"
    );
    assert!(
        failure_lines <= 12,
        "{failure_lines} log lines for {refused} refused pushes:\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
}
