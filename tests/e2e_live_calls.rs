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

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng;
use support_daemon::{free_port, temp_dir, Daemon};
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

/// (rule, session) → rows, and the rows still waiting.
fn outbox_rows(state: &Path) -> (BTreeMap<(String, String), usize>, usize) {
    let c = rusqlite::Connection::open_with_flags(
        state.join("outbox.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = c
        .prepare("SELECT rule, session_id, COUNT(*) FROM deliveries GROUP BY rule, session_id")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                r.get::<_, i64>(2)? as usize,
            ))
        })
        .unwrap()
        .collect::<Result<BTreeMap<_, _>, _>>()
        .unwrap();
    let waiting: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'inflight')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (rows, waiting as usize)
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
    let mut d = Daemon::start_file(&cfg, &env());
    d.wait_http().await;
    let mut rng = rand::thread_rng();
    for k in 0..KILLS {
        let up = rng.gen_range(800..2200);
        tokio::time::sleep(Duration::from_millis(up)).await;
        tokio::task::block_in_place(|| d.kill9());
        let down = rng.gen_range(200..1200);
        eprintln!(
            "kill {k}: after {up} ms up, {down} ms down ({} calls played out)",
            pbx.finished()
        );
        tokio::time::sleep(Duration::from_millis(down)).await;
        d = Daemon::start_file(&cfg, &env());
        d.wait_http().await;
    }
    pbx.wait_done().await;
    // The last hangups reach the model and every record goes out (a lost
    // one is reported below, after the deadline); then a clean stop.
    let state = dir.join("state");
    let deadline = Instant::now() + support_daemon::WAIT;
    loop {
        let (rows, waiting) = outbox_rows(&state);
        let closed = rows
            .keys()
            .filter(|(r, _)| r == "ring")
            .all(|(_, s)| rows.contains_key(&("record".to_string(), s.clone())));
        if (waiting == 0 && closed) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, status, stderr) = d.stop();
    assert!(status.success(), "{stderr}");

    let (rows, _) = outbox_rows(&state);
    let rung: BTreeSet<&str> = rows
        .keys()
        .filter(|(r, _)| r == "ring")
        .map(|(_, s)| s.as_str())
        .collect();
    let records: BTreeMap<&str, usize> = rows
        .iter()
        .filter(|((r, _), _)| r == "record")
        .map(|((_, s), n)| (s.as_str(), *n))
        .collect();
    let lost: Vec<&&str> = rung.iter().filter(|s| !records.contains_key(**s)).collect();
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
    let sent: BTreeSet<String> = sink
        .for_path("/record")
        .iter()
        .filter_map(|r| {
            r.uri
                .split(['?', '&'])
                .find_map(|p| p.strip_prefix("id="))
                .map(str::to_string)
        })
        .collect();
    for s in records.keys() {
        assert!(sent.contains(*s), "record of {s} not delivered");
    }
}
