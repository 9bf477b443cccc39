//! End to end: requests that must not go out as rendered. The real binary,
//! a simulated PBX replaying a real capture with hostile caller data, and a
//! real sink: a value never moves a request to another path, `--dry-run`
//! prints the URL that is sent, a request that can never be sent is dead at
//! once with the reason and never holds up the call's next delivery, and
//! template values are bounded.

mod support_daemon;
mod support_http;
mod support_tmp;

use std::path::Path;
use std::time::{Duration, Instant};

use callhook::ami::simulator::{AfterCapture, Simulator, SimulatorHandle};
use serde_json::Value;
use support_daemon::{assert_success, fixture, free_port, temp_dir, Daemon};
use support_http::Sink;

const USER: &str = "amiuser";
const SECRET: &str = "requests-e2e-secret";
const TOKEN: &str = "admin-token-for-requests";
const CAPTURE: &str = "asterisk-20/queue-answered.ami";
const NUMBER: &str = "5559876543";
const NAME: &str = "Maria Lopez";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("E2E_AMI_SECRET", SECRET), ("E2E_ADMIN_TOKEN", TOKEN)]
}

fn config(dir: &Path, listen: u16, sim: &SimulatorHandle, extra: &str, rules: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:{listen}
state_dir: {state}
admin: {{ token: "${{E2E_ADMIN_TOKEN}}" }}
pbx:
  - id: main
    ami: {{ host: 127.0.0.1, port: {port}, username: {USER}, secret: "${{E2E_AMI_SECRET}}" }}
targets:
  crm: {{ timeout: 2s, concurrency: 1, retry: {{ max_attempts: 50, max_age: 1h, initial_backoff: 200ms, max_backoff: 1s }} }}
{extra}
rules:
{rules}"#,
        state = dir.join("state").display(),
        port = sim.local_addr().port(),
    )
}

/// The queue capture with the caller's number and name replaced.
fn capture(number: &str, name: &str) -> Vec<u8> {
    String::from_utf8(fixture(CAPTURE))
        .unwrap()
        .replace(NUMBER, number)
        .replace(NAME, name)
        .into_bytes()
}

async fn sim(bytes: Vec<u8>) -> SimulatorHandle {
    Simulator::new(USER, SECRET)
        .session(bytes, AfterCapture::StayOpen)
        .start()
        .await
        .unwrap()
}

async fn rows(d: &Daemon, status: &str) -> Vec<Value> {
    let text = reqwest::Client::new()
        .get(d.url(&format!("/api/deliveries?status={status}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

async fn wait_rows(d: &Daemon, status: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + support_daemon::WAIT;
    loop {
        let r = rows(d, status).await;
        if r.len() >= n {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{status} rows: {} of {n}: {r:#?}",
            r.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A caller id `..` in a path segment would turn `/crm/../pop` into
/// `/pop`: the request is kept dead with the reason, never sent anywhere;
/// the same value in the query goes out; the call's record is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dot_segment_caller_id_never_reaches_another_path() {
    let sink = Sink::start().await;
    let sim = sim(capture("..", NAME)).await;
    let dir = temp_dir("requests-dot");
    let s = sink.addr;
    let rules = format!(
        r#"  - name: pop-path
    when: {{ state: ringing, direction: incoming, role: callee }}
    target: crm
    url: "http://{s}/crm/%CALLER_ID%/pop?ext=%EXTENSION%"
  - name: pop-query
    when: {{ state: ringing, direction: incoming, role: callee }}
    target: crm
    url: "http://{s}/ok/pop?pi=%CALLER_ID%&ext=%EXTENSION%"
  - name: call-log
    when: {{ scope: call, state: hungup }}
    target: crm
    url: "http://{s}/calls"
    json: {{ from: "%CALLER_ID%" }}
"#
    );
    let d = Daemon::start(&config(&dir, free_port(), &sim, "", &rules), &dir, &env());
    d.wait_http().await;
    // Two members ring: two refused pops, two query pops, one record.
    let dead = wait_rows(&d, "dead", 2).await;
    let start = Instant::now();
    while sink.for_path("/calls").is_empty() {
        assert!(start.elapsed() < support_daemon::WAIT, "no call record");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = sink.received();
    for r in &got {
        assert!(
            r.path() == "/ok/pop" || r.path() == "/calls",
            "a request reached {}",
            r.uri
        );
    }
    assert_eq!(sink.for_path("/ok/pop").len(), 2);
    for r in sink.for_path("/ok/pop") {
        assert!(r.uri.contains("pi=..&"), "{}", r.uri);
    }
    assert_eq!(dead.len(), 2);
    for row in &dead {
        assert_eq!(row["rule"], "pop-path");
        assert_eq!(row["attempts"], 0, "never attempted: {row}");
        assert_eq!(row["last_status"], "refused");
        let why = row["last_error"].as_str().unwrap();
        assert!(
            why.contains("%CALLER_ID%") && why.contains("dot segment"),
            "{why}"
        );
    }
    drop(d);
}

/// `replay --dry-run` goes through the dispatcher's request builder: the
/// URLs it prints are the ones the daemon sends for the same capture, and
/// what would not be sent says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_exactly_the_urls_that_are_sent() {
    let hostile = "a b/ñ?x=1#..";
    let bytes = capture(NUMBER, hostile);
    let dir = temp_dir("requests-dry");
    let sink = Sink::start().await;
    let s = sink.addr;
    let rules = format!(
        r#"  - name: pop
    when: {{ state: ringing, direction: incoming, role: callee }}
    target: crm
    url: "http://{s}/crm/%CALLER_NAME%/pop?pi=%CALLER_ID%&lit=a|b"
  - name: no-path
    when: {{ state: ringing, direction: incoming, role: callee }}
    target: crm
    url: "http://{s}?pi=%CALLER_ID%&n=%CALLER_NAME%"
  - name: refused
    when: {{ state: ringing, direction: incoming, role: callee }}
    target: crm
    url: "http://{s}/crm/%DISPOSITION%%DURATION%/x"
"#
    );
    let capture_path = dir.join("capture.ami");
    std::fs::write(&capture_path, &bytes).unwrap();
    let sim = sim(bytes).await;
    let cfg_text = config(&dir, free_port(), &sim, "", &rules);
    let cfg_path = dir.join("callhook.yaml");
    std::fs::write(&cfg_path, &cfg_text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .arg("replay")
        .arg(&capture_path)
        .args(["--dry-run", "--format", "jsonl", "--config"])
        .arg(&cfg_path)
        .envs(env())
        .env("CALLHOOK_LOG", "warn")
        .output()
        .unwrap();
    assert_success(&out);
    let printed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sent_urls: Vec<String> = printed
        .iter()
        .filter(|v| v["rule"] != "refused")
        .map(|v| v["url"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sent_urls.len(), 4, "{printed:#?}");
    for v in printed.iter().filter(|v| v["rule"] == "refused") {
        let why = v["not_sent"].as_str().unwrap_or_default();
        assert!(why.contains("empty"), "{v}");
    }
    // The daemon, same capture and rules: the sink sees exactly those URLs.
    let d = Daemon::start_file(&cfg_path, &env());
    let got = sink.wait_for(4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut at_sink: Vec<String> = sink
        .received()
        .iter()
        .map(|r| format!("http://{s}{}", r.uri))
        .collect();
    at_sink.sort();
    let mut printed_sorted = sent_urls.clone();
    printed_sorted.sort();
    assert_eq!(at_sink, printed_sorted, "{got:#?}");
    drop(d);
}

/// A 100 KB caller name: by default cut to `templates.max_value_length`
/// (4096 bytes) and delivered. With the limit lifted, the URL is too long
/// for HTTP: dead at once with the reason (not retried as if the CRM were
/// down), and the call's record to the same target still goes out at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kb_caller_name_is_bounded_or_dead_at_once_and_never_blocks_the_call() {
    let huge = "N".repeat(100 * 1024);
    let rules_for = |s: std::net::SocketAddr| {
        format!(
            r#"  - name: pop
    when: {{ state: ringing, direction: incoming, role: callee }}
    target: crm
    url: "http://{s}/pop?name=%CALLER_NAME%&ext=%EXTENSION%"
  - name: call-log
    when: {{ scope: call, state: hungup }}
    target: crm
    url: "http://{s}/calls"
    json: {{ from: "%CALLER_ID%" }}
"#
        )
    };

    // Default: bounded.
    let sink = Sink::start().await;
    let sim1 = sim(capture(NUMBER, &huge)).await;
    let dir = temp_dir("requests-huge-default");
    let d = Daemon::start(
        &config(&dir, free_port(), &sim1, "", &rules_for(sink.addr)),
        &dir,
        &env(),
    );
    let got = sink.wait_for(3).await;
    let pops: Vec<_> = got.iter().filter(|r| r.path() == "/pop").collect();
    assert_eq!(pops.len(), 2);
    for p in pops {
        let name = p
            .uri
            .split("name=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        assert_eq!(name.len(), 4096, "cut to the default maximum");
    }
    drop(d);

    // Unbounded: the request cannot be sent at all.
    let sink = Sink::start().await;
    let sim2 = sim(capture(NUMBER, &huge)).await;
    let dir = temp_dir("requests-huge-unbounded");
    let d = Daemon::start(
        &config(
            &dir,
            free_port(),
            &sim2,
            "templates: { max_value_length: 1000000 }",
            &rules_for(sink.addr),
        ),
        &dir,
        &env(),
    );
    d.wait_http().await;
    let started = Instant::now();
    while sink.for_path("/calls").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the call record was held up behind a request that can never be sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = wait_rows(&d, "dead", 2).await;
    for row in &dead {
        assert_eq!(row["rule"], "pop");
        assert_eq!(
            row["attempts"], 1,
            "dead at the first attempt: {}",
            row["last_error"]
        );
        assert_eq!(row["last_status"], "invalid");
        let why = row["last_error"].as_str().unwrap();
        assert!(why.contains("cannot be sent"), "{why}");
    }
    assert!(sink.for_path("/pop").is_empty());
    drop(d);
}
