//! End to end: the live calls survive kill -9. The real binary, a stateful
//! simulated PBX whose calls go on while callhook is down (copies of a real
//! capture, one every 120 ms, ~5 s each), a real sink, and five kill -9 at
//! random moments with restarts after a random pause. Every call whose
//! ringing the daemon committed gets exactly one call record: none is lost
//! (the calls that ended while callhook was down are closed by the login's
//! reconciliation, approximately) and none is closed twice.

mod support_daemon;
mod support_http;
mod support_loadpbx;
mod support_tmp;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support_daemon::{free_port, outbox_rows, temp_dir, wait_closed, Daemon};
use support_http::Sink;
use support_loadpbx::LoadPbx;

const CALLS: usize = 100;
const KILLS: usize = 5;

fn config(dir: &Path, sink: &Sink, pbx: &LoadPbx) -> String {
    let s = sink.addr;
    format!(
        r#"listen: 127.0.0.1:{listen}
state_dir: {state}
pbx:
  - id: main
    ami: {{ host: 127.0.0.1, port: {port}, username: load, secret: "${{E2E_AMI_SECRET}}" }}
targets:
  crm: {{ timeout: 2s, concurrency: 4, retry: {{ max_attempts: 1000, max_age: 1h, initial_backoff: 100ms, max_backoff: 500ms }} }}
rules:
  - name: ring
    when: {{ state: ringing, direction: incoming, role: callee }}
    target: crm
    url: "http://{s}/ring?id=%ID%&caller=%CALLER_ID%"
  - name: record
    when: {{ scope: call, state: hungup }}
    target: crm
    url: "http://{s}/record?id=%ID%&caller=%CALLER_ID%"
    json: {{ approximate: "{{{{call.approximate}}}}", disposition: "%DISPOSITION%" }}
"#,
        listen = free_port(),
        state = dir.join("state").display(),
        port = pbx.addr.port(),
    )
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("E2E_AMI_SECRET", "load-secret")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_kill_9_lose_no_call_record_and_close_none_twice() {
    let sink = Sink::start().await;
    let pbx = LoadPbx::start(
        CALLS,
        Duration::from_millis(120),
        Duration::from_millis(300),
    )
    .await;
    let dir = temp_dir("live-calls-kill9");
    let cfg = dir.join("callhook.yaml");
    std::fs::write(&cfg, config(&dir, &sink, &pbx)).unwrap();
    let d = Daemon::start_file(&cfg, &env());
    d.wait_http().await;
    let d = d
        .kill9_restarts(&cfg, &env(), KILLS, 800..2200, 200..1200, || {
            format!(" ({} calls played out)", pbx.finished())
        })
        .await;
    pbx.wait_done().await;
    // The last hangups reach the model and every record goes out (a lost
    // one is reported below, after the deadline); then a clean stop.
    let state = dir.join("state");
    wait_closed(
        &state,
        "ring",
        "record",
        Instant::now() + support_daemon::WAIT,
    )
    .await;
    let (_, status, stderr) = d.stop();
    assert!(status.success(), "{stderr}");

    let rows = outbox_rows(&state);
    let rung = rows.sessions("ring");
    let records = rows.sessions("record");
    let lost = rows.unclosed("ring", "record");
    let twice: Vec<(&&str, &usize)> = records.iter().filter(|(_, n)| **n > 1).collect();
    let approx = sink
        .for_path("/record")
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("\"approximate\":true"))
        .map(|r| r.uri.clone())
        .collect::<BTreeSet<_>>()
        .len();
    eprintln!(
        "{CALLS} calls played, {} rung and committed, {} records ({approx} approximate), lost {lost:?}, twice {twice:?}",
        rung.len(),
        records.len()
    );
    assert!(
        rung.len() >= CALLS / 2,
        "the daemon saw too few calls: {}",
        rung.len()
    );
    assert!(lost.is_empty(), "calls without a record: {lost:?}");
    assert!(twice.is_empty(), "calls closed twice: {twice:?}");
    // Every record reached the sink.
    let sent = sink.query_values("/record", "id");
    for s in records.keys() {
        assert!(sent.contains(*s), "record of {s} not delivered");
    }
}
