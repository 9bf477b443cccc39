//! `callhook replay --config` without `--dry-run` (the real binary, a real
//! sink): progress while a slow CRM keeps it waiting, `--timeout`, dead
//! deliveries as a failure, the state_dir lock; and `deliveries list` on
//! what it left behind (a header, ages, next attempts, RFC 3339 JSON).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[path = "support_http/mod.rs"]
mod support_http;
mod support_tmp;

use serde_json::Value;
use support_http::{state_dir, Reply, Sink};
use support_tmp::TestDir;

const RULE: &str = r#"rules:
  - name: call-log
    when: { scope: call, state: hungup }
    target: crm
    url: "http://SINK/calls"
    json: { id: "{{call.session_id}}", duration: "%DURACION%" }
    idempotency_key: "call-{{call.session_id}}"
"#;

fn capture() -> String {
    format!(
        "{}/tests/fixtures/ami/asterisk-20/queue-answered.ami",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A config sending to `sink` (target timeout `timeout`, no retries worth
/// waiting for), in a fresh state directory.
fn config(sink: &Sink, target: &str) -> (TestDir, PathBuf) {
    let dir = state_dir("cli-replay");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("callhook.yaml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir: {}\ntargets:\n  crm: {target}\n{}",
            dir.join("state").display(),
            RULE.replace("SINK", &sink.addr.to_string())
        ),
    )
    .unwrap();
    (dir, cfg)
}

async fn callhook(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_callhook"))
            .args(&args)
            .env("CALLHOOK_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn replay(cfg: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "replay".to_string(),
        capture(),
        "--config".into(),
        cfg.display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_while_a_slow_crm_answers() {
    let sink = Sink::start().await;
    sink.set_fallback(Reply::status(200).delay(Duration::from_secs(3)));
    let (_dir, cfg) = config(&sink, "{ timeout: 20s }");
    let o = callhook(replay(&cfg, &[])).await;
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let progress = lines
        .iter()
        .position(|l| l.starts_with("waiting for the targets: 0 delivered, 1 waiting (1 in flight"))
        .unwrap_or_else(|| panic!("a progress line: {err}"));
    let done = lines
        .iter()
        .position(|l| *l == "done: 1 delivered, 0 dead, 0 expired")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(progress < done, "{err}");
    assert_eq!(sink.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_stops_waiting_and_leaves_the_rest_in_the_outbox() {
    let sink = Sink::start().await;
    // Never answers in time; retries for an hour.
    sink.set_fallback(Reply::status(200).delay(Duration::from_secs(60)));
    let (_dir, cfg) = config(&sink, "{ timeout: 30s }");
    let began = Instant::now();
    let o = callhook(replay(&cfg, &["--timeout", "1s"])).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        began.elapsed() < Duration::from_secs(25),
        "took {:?}",
        began.elapsed()
    );
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: timed out after 1s: 0 delivered"),
        "{err}"
    );
    assert!(last.contains("1 still waiting in the outbox"), "{err}");

    // What it left behind, as `deliveries list` shows it.
    let list = |json: bool| {
        let mut a = vec![
            "deliveries".to_string(),
            "list".into(),
            "--config".into(),
            cfg.display().to_string(),
        ];
        if json {
            a.push("--json".into());
        }
        callhook(a)
    };
    let table = list(false).await;
    assert!(table.status.success(), "{}", stderr(&table));
    let text = String::from_utf8_lossy(&table.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for col in [
        "ID", "STATUS", "TARGET", "RULE", "ATTEMPTS", "LAST", "AGE", "NEXT", "REQUEST",
    ] {
        assert!(
            lines[0].split_whitespace().any(|c| c == col),
            "{col}: {text}"
        );
    }
    assert!(
        lines[1].contains("call-log") && lines[1].contains("POST http://"),
        "{text}"
    );
    let json = list(true).await;
    let rows: Vec<Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    let rfc3339 = |v: &Value| {
        let s = v.as_str().unwrap_or_else(|| panic!("a string: {r}"));
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    let enqueued = rfc3339(&r["enqueued_at"]);
    let age = (time::OffsetDateTime::now_utc() - enqueued).as_seconds_f64();
    assert!((0.0..120.0).contains(&age), "{r}");
    rfc3339(&r["created_at"]);
    rfc3339(&r["updated_at"]);
    assert!(r["age_seconds"].as_f64().unwrap() >= 0.0, "{r}");
    // Left in flight by the interrupted attempt, or pending again.
    match r["status"].as_str().unwrap() {
        "pending" => {
            rfc3339(&r["next_attempt_at"]);
        }
        "inflight" => assert_eq!(r["next_attempt_at"], Value::Null),
        s => panic!("status {s}: {r}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_deliveries_are_a_failure() {
    let sink = Sink::start().await;
    sink.set_fallback(Reply::status(404).body("no such form"));
    let (_dir, cfg) = config(&sink, "{ timeout: 5s }");
    let o = callhook(replay(&cfg, &[])).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("error: 0 delivered, 1 dead"), "{err}");
    assert!(last.contains("deliveries list --dead"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_does_not_send_beside_a_daemon() {
    let sink = Sink::start().await;
    let (dir, cfg) = config(&sink, "{ timeout: 5s }");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("callhook.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let o = callhook(replay(&cfg, &[])).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("would send beside it"), "{err}");
    // A dry run needs no lock.
    let o = callhook(replay(&cfg, &["--dry-run"])).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sink.count(), 0);
    drop(lock);
}
