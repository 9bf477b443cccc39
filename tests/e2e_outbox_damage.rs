//! End to end: a damaged `outbox.sqlite3`. A real outbox file is filled,
//! then damaged on disk the way a failing disk or a stray write would; the
//! real binary must refuse it with a recovery command, `callhook outbox
//! check` must say what is wrong, `callhook outbox recover` must keep every
//! readable delivery; a row that cannot be decoded is moved aside instead
//! of stalling the dispatcher; `/readyz` says 503 while the dispatcher
//! cannot poll.

mod support_daemon;
mod support_http;
mod support_tmp;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use callhook::ami::simulator::{Simulator, SimulatorHandle};
use callhook::deliver::outbox::OutboxOptions;
use callhook::deliver::Outbox;
use support_daemon::{assert_success, free_port, temp_dir, Daemon, WAIT};
use support_http::{request, Sink};

const USER: &str = "amiuser";
const SECRET: &str = "damage-e2e-secret";
const ROWS: usize = 1500;

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("E2E_AMI_SECRET", SECRET)]
}

fn config(dir: &Path, listen: u16, sim: &SimulatorHandle) -> String {
    format!(
        r#"listen: 127.0.0.1:{listen}
state_dir: {state}
pbx:
  - id: main
    ami: {{ host: 127.0.0.1, port: {port}, username: {USER}, secret: "${{E2E_AMI_SECRET}}" }}
targets:
  crm: {{ timeout: 2s, concurrency: 16 }}
rules: []
"#,
        state = dir.join("state").display(),
        port = sim.local_addr().port(),
    )
}

/// A closed outbox in `dir/state` with `ROWS` waiting deliveries to `sink`,
/// one call each; row `i` has the URL `/pop?i=<i>&mark=M<i>M`.
async fn filled_outbox(dir: &Path, sink: &Sink) -> PathBuf {
    let state = dir.join("state");
    let outbox = Outbox::open(&state, OutboxOptions::default()).unwrap();
    let reqs: Vec<_> = (0..ROWS)
        .map(|i| {
            request(
                "crm",
                &format!("call-{i}"),
                "ringing",
                &sink.url(&format!("/pop?i={i}&mark=M{i:05}M")),
            )
        })
        .collect();
    let o = outbox.enqueue(&reqs).await.unwrap();
    assert_eq!(o.inserted, ROWS);
    outbox.close();
    drop(outbox);
    state.join("outbox.sqlite3")
}

fn callhook(args: &[&str], state: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn wait_sink(sink: &Sink, n: usize) {
    let deadline = Instant::now() + WAIT;
    while sink.count() < n {
        assert!(
            Instant::now() < deadline,
            "sink got {} of {n}",
            sink.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn readyz(d: &Daemon) -> (u16, serde_json::Value) {
    let r = reqwest::get(d.url("/readyz")).await.unwrap();
    let code = r.status().as_u16();
    (
        code,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

async fn wait_ready(d: &Daemon, want: u16) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = reqwest::get(d.url("/readyz")).await {
            let code = r.status().as_u16();
            let v: serde_json::Value =
                serde_json::from_str(&r.text().await.unwrap()).unwrap_or_default();
            if code == want {
                return v;
            }
            assert!(Instant::now() < deadline, "/readyz stays {code}: {v}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 4 KB of garbage over the middle of the file: the daemon refuses to
/// start and names the recovery; `check` reports the damage; `recover`
/// keeps every readable delivery and the daemon then sends all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_middle_is_refused_checked_and_recovered() {
    let sink = Sink::start().await;
    let dir = temp_dir("damage-garbage");
    let db = filled_outbox(&dir, &sink).await;
    let len = std::fs::metadata(&db).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.seek(SeekFrom::Start(len / 2 / 4096 * 4096)).unwrap();
    f.write_all(&[0xA5; 4096]).unwrap();
    drop(f);
    let state = dir.join("state");

    // The daemon refuses, with the way out.
    let sim = Simulator::new(USER, SECRET).start().await.unwrap();
    let cfg = dir.join("callhook.yaml");
    std::fs::write(&cfg, config(&dir, free_port(), &sim)).unwrap();
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_callhook"))
            .args(["run", "--config"])
            .arg(&cfg)
            .envs(env())
            .output()
            .unwrap()
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a damaged outbox: {err}");
    assert!(
        err.contains("damaged") && err.contains("callhook outbox recover"),
        "{err}"
    );

    // check: exit 1 and what is wrong.
    let (ok, text) = tokio::task::block_in_place(|| callhook(&["outbox", "check"], &state));
    assert!(!ok, "{text}");
    assert!(
        text.contains("integrity:") && text.contains("damaged"),
        "{text}"
    );

    // recover: every readable row kept, the damaged file aside.
    let (ok, text) =
        tokio::task::block_in_place(|| callhook(&["outbox", "recover", "--json"], &state));
    assert!(ok, "{text}");
    let report: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    eprintln!("recover: {report}");
    let copied = report["copied"].as_u64().unwrap() as usize;
    let damaged = report["damaged"].as_u64().unwrap() as usize;
    let lost = report["lost"].as_u64().unwrap() as usize;
    assert_eq!(copied + damaged + lost, ROWS, "{report}");
    // One page of a table holds a few dozen rows at most.
    assert!(copied >= ROWS - 100, "{report}");
    assert!(Path::new(report["moved_to"].as_str().unwrap()).exists());
    let (ok, text) = tokio::task::block_in_place(|| callhook(&["outbox", "check"], &state));
    assert!(ok, "after recover: {text}");

    // The daemon starts and sends every recovered delivery.
    let d = Daemon::start_file(&cfg, &env());
    wait_ready(&d, 200).await;
    wait_sink(&sink, copied).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.count(), copied);
    drop(d);
}

/// One row's text is no longer valid UTF-8 (its page is otherwise sound,
/// so the integrity check at start passes): it is moved aside as dead with
/// the reason, and every other delivery goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_decoded_is_moved_aside_not_a_stall() {
    let sink = Sink::start().await;
    let dir = temp_dir("damage-row");
    let db = filled_outbox(&dir, &sink).await;
    let mut bytes = std::fs::read(&db).unwrap();
    let needle = b"M00777M";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the row's URL is in the file");
    bytes[at + 1..at + 6].copy_from_slice(&[0xFF; 5]);
    std::fs::write(&db, &bytes).unwrap();

    let sim = Simulator::new(USER, SECRET).start().await.unwrap();
    let d = Daemon::start(&config(&dir, free_port(), &sim), &dir, &env());
    wait_sink(&sink, ROWS - 1).await;
    let v = wait_ready(&d, 200).await;
    assert_eq!(v["outbox_polling"], true, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.count(), ROWS - 1);
    assert!(sink.received().iter().all(|r| !r.uri.contains("i=777&")));
    // `deliveries list` still works and shows why.
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_callhook"))
            .args(["deliveries", "list", "--dead", "--json", "--config"])
            .arg(dir.join("callhook.yaml"))
            .envs(env())
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert_success(&out);
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(rows[0]["last_status"], "damaged");
    let why = rows[0]["last_error"].as_str().unwrap();
    assert!(
        why.contains("cannot be decoded") && why.contains("url"),
        "{why}"
    );
    assert_eq!(
        d.metric("callhook_outbox_damaged_rows_total").await,
        Some(1.0)
    );
    drop(d);
}

/// While the dispatcher cannot poll the outbox, nothing is delivered:
/// `/readyz` says so (503, with the error) until it can again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_dispatcher_cannot_poll() {
    let dir = temp_dir("damage-poll");
    let sim = Simulator::new(USER, SECRET).start().await.unwrap();
    let d = Daemon::start(&config(&dir, free_port(), &sim), &dir, &env());
    wait_ready(&d, 200).await;
    // Another process breaks the schema the poll needs.
    let db = dir.join("state").join("outbox.sqlite3");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let sql: String = c
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'deliveries_ready'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    c.execute_batch("DROP INDEX deliveries_ready").unwrap();
    let v = wait_ready(&d, 503).await;
    assert_eq!(v["outbox_polling"], false, "{v}");
    assert!(
        v["outbox_error"]
            .as_str()
            .unwrap()
            .contains("deliveries_ready"),
        "{v}"
    );
    c.execute_batch(&sql).unwrap();
    let v = wait_ready(&d, 200).await;
    assert_eq!(v["outbox_polling"], true, "{v}");
    let (code, _) = readyz(&d).await;
    assert_eq!(code, 200);
    drop(d);
}
