//! The FastAGI session codec against the twelve real Asterisk 20 sessions
//! of `tests/fixtures/agi/`: a fake Asterisk replays each one byte for
//! byte (in its recorded TCP chunking, and in other chunkings), while the
//! server side, driven through `agi::session::Session`, sends the recorded
//! script. Every reply must parse to what the truth file says (multi-line
//! `520` included), HANGUP lines must be consumed wherever they come, the
//! environment must be complete (empty values kept), and the server closes.

mod support_agi;

use std::time::Duration;

use callhook::agi::protocol::{Reply, WireLimits};
use callhook::agi::session::Session;
use serde_json::Value;
use support_agi::{replay, scenarios, transcript, truth, Chunking, Rec, WAIT};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// The recorded script of a scenario: the command lines the lab server sent.
fn script(name: &str) -> Vec<String> {
    transcript(name)
        .into_iter()
        .filter_map(|r| match r {
            Rec::Out(b) => Some(
                String::from_utf8(b)
                    .unwrap()
                    .trim_end_matches('\n')
                    .to_string(),
            ),
            _ => None,
        })
        .collect()
}

fn lines(r: &Reply) -> Vec<String> {
    let mut v = vec![r.line.clone()];
    v.extend(r.more.iter().cloned());
    v
}

/// Runs the lab script as the server and checks it against the truth.
async fn lab_server(listener: TcpListener, name: String) {
    let (stream, _) = listener.accept().await.unwrap();
    let (r, w) = stream.into_split();
    let mut s = Session::new(r, w, WireLimits::default());
    let env = s.read_env(Instant::now() + WAIT).await.unwrap();
    let t = truth(&name);
    // Every variable, in order, with its value (empty ones included).
    let raw = t["agi_environment_raw"].as_str().unwrap();
    let want: Vec<(String, String)> = raw
        .trim_end_matches('\n')
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap_or((l.trim_end_matches(':'), ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    assert_eq!(env.vars(), &want[..], "{name}: environment");
    for (k, v) in t["agi_environment"].as_object().unwrap() {
        assert_eq!(env.get(k), v.as_str(), "{name}: {k}");
    }
    assert_eq!(
        env.script(),
        t["agi_environment"]["agi_network_script"].as_str().unwrap()
    );
    let steps: Vec<&Value> = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["command"].is_string())
        .collect();
    let cmds = script(&name);
    assert_eq!(cmds.len(), steps.len(), "{name}: steps");
    for (cmd, step) in cmds.iter().zip(steps) {
        assert_eq!(step["command"].as_str().unwrap(), cmd);
        let reply = s.command(cmd, Instant::now() + WAIT).await.unwrap();
        let want: Vec<String> = step["response"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        assert_eq!(lines(&reply), want, "{name}: reply to {cmd}");
        // The shapes a library gets wrong.
        let first = &want[0];
        if first.starts_with("200 result=") {
            assert!(
                reply.is_success() && reply.result.is_some(),
                "{name}: {first}"
            );
        }
        if first.starts_with("520-") {
            assert_eq!(reply.code, 520);
            assert!(reply.more.last().unwrap().starts_with("520 End"), "{name}");
        }
        if first.starts_with("511") {
            assert!(s.is_dead(), "{name}: 511 means dead");
        }
    }
    // A HANGUP that came after the last reply is found when we look.
    s.drain().unwrap();
    let hangups = t["hangup_lines_at"].as_array().unwrap().len();
    if hangups > 0 {
        // It may still be in flight right after the last reply.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !s.hung_up() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            s.drain().unwrap();
        }
    }
    assert_eq!(s.hung_up(), hangups > 0, "{name}: HANGUP seen");
    s.close().await;
}

async fn run(name: &str, how: Chunking) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(lab_server(listener, name.to_string()));
    replay(addr, name, how).await;
    server.await.unwrap();
}

#[test]
fn there_are_twelve_scenarios() {
    assert_eq!(scenarios().len(), 12, "{:?}", scenarios());
}

#[tokio::test]
async fn every_recorded_session_in_its_recorded_chunking() {
    for name in scenarios() {
        run(&name, Chunking::Recorded).await;
    }
}

#[tokio::test]
async fn every_recorded_session_in_one_write_per_turn() {
    for name in scenarios() {
        run(&name, Chunking::Joined).await;
    }
}

#[tokio::test]
async fn every_recorded_session_byte_by_byte() {
    for name in scenarios() {
        run(&name, Chunking::Bytes).await;
    }
}

#[tokio::test]
async fn every_recorded_session_in_random_chunks() {
    for seed in [7, 1234, 99991] {
        for name in scenarios() {
            run(&name, Chunking::Random(seed)).await;
        }
    }
}
