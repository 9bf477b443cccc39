//! End to end: pushed (asterCC) calls survive kill -9. The real binary, a
//! dialer that pushes 60 calls (ringing, answer, the agent's and the
//! customer's hangups, `eventTime`s in epoch seconds) over real HTTP, a
//! real sink, and five kill -9 at random moments with restarts after a
//! random pause. Half the calls come from a dialer that retries a push until
//! it is answered 200 (as asterCC does); the other half from one that gives
//! up on a push that fails (its events are lost while callhook is down).
//!
//! Every call whose ringing the daemon committed gets exactly one call
//! record. A retried call's record is exact (its start is its ringing's
//! time: the session was restored, and the push retried after a commit
//! whose answer was lost is a duplicate); a call whose end was never
//! pushed is closed by `calls.max_age`, `approximate`, once.

mod support_daemon;
mod support_http;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callhook::model::Timestamp;
use rand::Rng;
use serde_json::{json, Value};
use support_daemon::{free_port, temp_dir, Daemon};
use support_http::Sink;

const CALLS: usize = 60;
const KILLS: usize = 5;
const TOKEN: &str = "e2e-push-calls-token";
/// `calls.max_age`: the calls whose end is lost are closed after this.
const MAX_AGE_S: u64 = 12;

fn config(dir: &Path, sink: &Sink, listen: u16) -> String {
    let s = sink.addr;
    format!(
        r#"listen: 127.0.0.1:{listen}
state_dir: {state}
calls: {{ max_age: {MAX_AGE_S}s }}
push:
  settle: 300ms
  teams:
    acme: {{ token: "{TOKEN}" }}
targets:
  crm: {{ timeout: 2s, concurrency: 4, retry: {{ max_attempts: 1000, max_age: 1h, initial_backoff: 100ms, max_backoff: 500ms }} }}
rules:
  - name: ring
    when: {{ state: ringing, role: callee }}
    target: crm
    url: "http://{s}/ring?id=%ID%"
  - name: record
    when: {{ scope: call, state: hungup }}
    target: crm
    url: "http://{s}/record?id=%ID%"
    json:
      approximate: "{{{{call.approximate}}}}"
      end_reason: "{{{{call.end_reason}}}}"
      started_at: "{{{{call.started_at}}}}"
      disposition: "%DISPOSITION%"
"#,
        state = dir.join("state").display(),
    )
}

/// (rule, session) → rows, the record bodies, and the rows still waiting.
type Rows = (
    BTreeMap<(String, String), usize>,
    BTreeMap<String, Value>,
    usize,
);

/// See [`Rows`].
fn outbox_rows(state: &Path) -> Rows {
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
    let mut st = c
        .prepare("SELECT session_id, body FROM deliveries WHERE rule = 'record'")
        .unwrap();
    let bodies = st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .unwrap()
        .map(|r| {
            let (s, b) = r.unwrap();
            (s, serde_json::from_slice(&b).unwrap())
        })
        .collect();
    let waiting: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'inflight')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (rows, bodies, waiting as usize)
}

/// Every fifth call never ends (its hangups are never pushed).
fn never_ends(i: usize) -> bool {
    i % 5 == 4
}

/// One call's pushes: (delay after the previous one, body).
fn pushes(i: usize, start: i64) -> Vec<(Duration, Value)> {
    let sid = format!("1800000000.{i:03}");
    let ext = format!("{}", 1001 + i % 10);
    let ev = |event: &str, source: &str, at: i64| {
        json!({"sessionid": sid, "event": event, "source": source, "calltype": "dialin",
               "activenum": format!("555{i:07}"), "extension": ext, "eventTime": at})
    };
    let mut v = vec![
        (Duration::ZERO, ev("ringing", "CALLEE", start)),
        (
            Duration::from_millis(900),
            ev("answer", "CALLEE", start + 1),
        ),
    ];
    if !never_ends(i) {
        v.push((
            Duration::from_millis(1500),
            ev("hangup", "CALLEE", start + 3),
        ));
        v.push((
            Duration::from_millis(100),
            ev("hangup", "CALLER", start + 3),
        ));
    }
    v
}

/// Pushes one call; a retrying dialer tries each push until it is
/// answered 200 (or `stop`), the other gives up on the first failure.
async fn dial(url: String, i: usize, start: i64, retry: bool, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    for (delay, body) in pushes(i, start) {
        tokio::time::sleep(delay).await;
        loop {
            let r = http
                .post(&url)
                .header("X-Callhook-Token", TOKEN)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            let ok = matches!(&r, Ok(r) if r.status().as_u16() == 200);
            if ok || !retry || stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_kill_9_lose_no_pushed_call_record_and_close_none_twice() {
    let sink = Sink::start().await;
    let dir: PathBuf = temp_dir("push-calls-kill9");
    let listen = free_port();
    let cfg = dir.join("callhook.yaml");
    std::fs::write(&cfg, config(&dir, &sink, listen)).unwrap();
    let mut d = Daemon::start_file(&cfg, &[]);
    d.wait_http().await;
    let url = format!("http://127.0.0.1:{listen}/v1/events/astercc");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let stop = Arc::new(AtomicBool::new(false));
    let mut dialer = Vec::new();
    let mut starts = BTreeMap::new();
    {
        let (url, stop) = (url.clone(), stop.clone());
        let mut plan = Vec::new();
        for i in 0..CALLS {
            let start = now + i as i64 / 4;
            starts.insert(
                format!("1800000000.{i:03}"),
                (start, i % 2 == 0, never_ends(i)),
            );
            plan.push((i, start));
        }
        dialer.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            for (i, start) in plan {
                calls.push(tokio::spawn(dial(
                    url.clone(),
                    i,
                    start,
                    i % 2 == 0,
                    stop.clone(),
                )));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for c in calls {
                let _ = c.await;
            }
        }));
    }
    let mut rng = rand::thread_rng();
    for k in 0..KILLS {
        let up = rng.gen_range(800..2000);
        tokio::time::sleep(Duration::from_millis(up)).await;
        tokio::task::block_in_place(|| d.kill9());
        let down = rng.gen_range(200..1000);
        eprintln!("kill {k}: after {up} ms up, {down} ms down");
        tokio::time::sleep(Duration::from_millis(down)).await;
        d = Daemon::start_file(&cfg, &[]);
        d.wait_http().await;
    }
    for t in dialer {
        tokio::time::timeout(support_daemon::WAIT, t)
            .await
            .expect("the dialer finished")
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    // Every rung call closed (the lost ends by calls.max_age) and sent.
    let state = dir.join("state");
    let deadline = Instant::now() + support_daemon::WAIT + Duration::from_secs(MAX_AGE_S);
    loop {
        let (rows, _, waiting) = outbox_rows(&state);
        let closed = rows
            .keys()
            .filter(|(r, _)| r == "ring")
            .all(|(_, s)| rows.contains_key(&("record".to_string(), s.clone())));
        if (waiting == 0 && closed) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, status, stderr) = d.stop();
    assert!(status.success(), "{stderr}");

    let (rows, bodies, _) = outbox_rows(&state);
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
    let approx: Vec<&String> = bodies
        .iter()
        .filter(|(_, b)| b["approximate"] == true)
        .map(|(s, _)| s)
        .collect();
    eprintln!(
        "{CALLS} calls pushed, {} rung and committed, {} records ({} approximate: {approx:?}), lost {lost:?}, twice {twice:?}",
        rung.len(),
        records.len(),
        approx.len()
    );
    assert!(
        rung.len() >= CALLS / 2,
        "too few calls seen: {}",
        rung.len()
    );
    assert!(lost.is_empty(), "calls without a record: {lost:?}");
    assert!(twice.is_empty(), "calls closed twice: {twice:?}");
    let endless = starts.values().filter(|(_, r, e)| *r && *e).count();
    assert!(approx.len() >= endless, "{approx:?}");
    for (s, b) in &bodies {
        let Some((start, retried, endless)) = starts.get(s) else {
            panic!("a record for an unknown session {s}: {b}");
        };
        if *endless {
            // Alive across kills, its end never comes: calls.max_age.
            assert_eq!(b["approximate"], true, "{s}: {b}");
            assert_eq!(b["end_reason"], "max_age", "{s}: {b}");
        } else if *retried {
            // Every push arrived (some twice): exact.
            assert_eq!(b["approximate"], false, "{s}: {b}");
            assert_eq!(b["end_reason"], "hangup", "{s}: {b}");
        } else if b["approximate"] == true {
            assert_eq!(b["end_reason"], "max_age", "{s}: {b}");
        }
        if *retried {
            // From its ringing on, across the restarts.
            assert_eq!(b["disposition"], "ANSWERED", "{s}: {b}");
            assert_eq!(
                b["started_at"],
                Timestamp(*start as f64).to_rfc3339(),
                "{s}: the record does not start at its ringing (not restored?): {b}"
            );
        }
    }
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

const ADMIN: &str = "e2e-push-calls-admin";
const BETA: &str = "e2e-push-calls-beta-token";

fn two_teams(dir: &Path, sink: &Sink, listen: u16, beta: bool) -> String {
    let s = sink.addr;
    let beta = if beta {
        format!("    beta: {{ token: \"{BETA}\" }}\n")
    } else {
        String::new()
    };
    format!(
        r#"listen: 127.0.0.1:{listen}
state_dir: {state}
admin: {{ token: "{ADMIN}" }}
push:
  teams:
    acme: {{ token: "{TOKEN}" }}
{beta}targets:
  crm: {{ timeout: 2s, retry: {{ max_attempts: 1000, max_age: 1h, initial_backoff: 100ms, max_backoff: 500ms }} }}
rules:
  - name: record
    when: {{ scope: call, state: hungup }}
    target: crm
    url: "http://{s}/record?id=%ID%&pbx={{{{call.pbx}}}}"
    json: {{ approximate: "{{{{call.approximate}}}}", end_reason: "{{{{call.end_reason}}}}" }}
"#,
        state = dir.join("state").display(),
    )
}

async fn ring(listen: u16, token: &str, sid: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{listen}/v1/events/astercc"))
        .header("X-Callhook-Token", token)
        .header("content-type", "application/json")
        .body(
            json!({"sessionid": sid, "event": "ringing", "source": "CALLEE", "calltype": "dialin",
                   "activenum": "5550001111", "extension": "1001", "eventTime": now})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
}

/// The stored sessions of each team, from the state directory.
fn stored(state: &Path) -> Vec<(String, String)> {
    let c = rusqlite::Connection::open_with_flags(
        state.join("outbox.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = c
        .prepare("SELECT pbx, session FROM live_calls ORDER BY pbx, session")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn record_for(sink: &Sink, sid: &str) -> Value {
    let deadline = Instant::now() + support_daemon::WAIT;
    loop {
        if let Some(r) = sink
            .for_path("/record")
            .iter()
            .find(|r| r.uri.contains(&format!("id={sid}&")))
        {
            let n = sink
                .for_path("/record")
                .iter()
                .filter(|r| r.uri.contains(&format!("id={sid}&")))
                .count();
            assert_eq!(n, 1, "{sid}: {n} records");
            return serde_json::from_slice(&r.body).unwrap();
        }
        assert!(Instant::now() < deadline, "no record for {sid}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A team removed from the config: by a reload, its calls in progress
/// are closed at once; across a restart (killed with one in progress, the
/// file edited meanwhile), its stored calls are closed at start. Either
/// way one approximate record (`reconnect`) each and no stored row left;
/// the other team's call carries on untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_a_removed_team_are_closed_once_and_their_rows_dropped() {
    let sink = Sink::start().await;
    let dir = temp_dir("push-calls-removed");
    let state = dir.join("state");
    let listen = free_port();
    let cfg = dir.join("callhook.yaml");

    // Reload.
    std::fs::write(&cfg, two_teams(&dir, &sink, listen, true)).unwrap();
    let d = Daemon::start_file(&cfg, &[]);
    d.wait_http().await;
    ring(listen, TOKEN, "acme-1").await;
    ring(listen, BETA, "beta-1").await;
    std::fs::write(&cfg, two_teams(&dir, &sink, listen, false)).unwrap();
    let r = reqwest::Client::new()
        .post(d.url("/-/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let b = record_for(&sink, "beta-1").await;
    assert_eq!(
        (&b["approximate"], &b["end_reason"]),
        (&json!(true), &json!("reconnect"))
    );

    // Restart: beta is back, one call rings, kill -9, beta removed again.
    let d = {
        let (_, status, err) = d.stop();
        assert!(status.success(), "{err}");
        std::fs::write(&cfg, two_teams(&dir, &sink, listen, true)).unwrap();
        let d = Daemon::start_file(&cfg, &[]);
        d.wait_http().await;
        ring(listen, BETA, "beta-2").await;
        tokio::task::block_in_place(|| d.kill9());
        assert!(stored(&state).contains(&("beta".into(), "beta-2".into())));
        std::fs::write(&cfg, two_teams(&dir, &sink, listen, false)).unwrap();
        let d = Daemon::start_file(&cfg, &[]);
        d.wait_http().await;
        d
    };
    let b = record_for(&sink, "beta-2").await;
    assert_eq!(
        (&b["approximate"], &b["end_reason"]),
        (&json!(true), &json!("reconnect"))
    );
    let (_, status, err) = d.stop();
    assert!(status.success(), "{err}");
    assert_eq!(
        stored(&state),
        vec![("acme".to_string(), "acme-1".to_string())]
    );
    assert!(
        sink.for_path("/record")
            .iter()
            .all(|r| !r.uri.contains("acme-1")),
        "acme's call was closed"
    );
    assert_eq!(
        sink.for_path("/record")
            .iter()
            .filter(|r| r.uri.contains("beta-1"))
            .count(),
        1
    );
}
