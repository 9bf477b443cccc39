//! Routing over FastAGI, in process: the real listener (`agi::serve`) with
//! a configuration read from YAML, a fake Asterisk starting from the
//! recorded environments of `tests/fixtures/agi/`, a real HTTP CRM.
//! Covers dial patterns and rewriting, authorization, PIN right and wrong
//! ×3, the CRM's decision, its cache and its failures (fallback), the
//! caller hanging up (mid-stream, during the CRM lookup), deadlines, and
//! hostile peers (endless environment, huge lines, garbage, slow drip,
//! silence, addresses outside allow_from, connections over the caps).

mod support_agi;
mod support_app;
mod support_http;
mod support_tmp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use callhook::agi::Router;
use callhook::config::Config;
use support_agi::{expect_close, replay, Chunking, FakeAsterisk, Plan, Seen};
use support_http::{Reply, Sink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A PHC hash of `pin` with small parameters (fast in debug builds;
/// verification reads the parameters from the string).
fn test_hash(pin: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"callhook-test-salt").unwrap();
    let params = argon2::Params::new(256, 1, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(pin.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

struct Server {
    addr: SocketAddr,
    router: Arc<Router>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(yaml: &str) -> Server {
        let dir = std::env::temp_dir();
        let cfg = support_app::config(yaml, &dir);
        let a = cfg.agi.expect("agi section");
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (_tx, rx) = watch::channel(a.router.clone());
        let token = CancellationToken::new();
        let task = tokio::spawn(callhook::agi::serve(l, a.settings, rx, token.clone()));
        Server {
            addr,
            router: a.router,
            token,
            task,
        }
    }

    async fn stop(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

fn metric(name: &str, labels: &str) -> f64 {
    let text = callhook::metrics::metrics().render();
    let sample = format!("{name}{{{labels}}}");
    text.lines()
        .find(|l| l.starts_with(&sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The PHP workshop's router, plus a PIN route and a CRM route.
fn config(crm_url: &str, extra: &str) -> String {
    format!(
        r#"
targets:
  crm: {{ timeout: 5s }}
agi:
  listen: 127.0.0.1:4573
  extension_channel: "SIP/{{extension}}"
  env_timeout: 1s
  command_timeout: 2s
  rewrite:
    - {{ field: dialed, match: "_9XXXXXXXX", strip: 1 }}
  routes:
    - name: pin
      when: {{ script: pin }}
      pin: {{ hash: "{hash}", prompt: vm-password, invalid: vm-invalid-password, goodbye: vm-goodbye, max_digits: 4, timeout: 5s }}
      actions: [ {{ playback: beep }}, {{ set: {{ PIN_OK: 1 }} }} ]
    - name: sales
      when: {{ script: route, dialed: "2125550600" }}
      crm:
        target: crm
        url: "{crm_url}?caller=%CALLER_ID%&dialed=%DIALED%"
        json: {{ caller: "%CALLER_ID%", name: "{{{{call.caller_name}}}}", channel: "{{{{call.extra.agi_channel}}}}", arg1: "{{{{call.extra.agi_arg_1}}}}" }}
        timeout: 500ms
        cache: 1m
        allow: [dial, voicemail, set, hangup]
      fallback: [ {{ set: {{ ROUTE: fallback }} }}, {{ dial: {{ extension: "1001", timeout: 15s }} }} ]
    - name: iax
      when: {{ dialed: "3X" }}
      actions: [ {{ dial: {{ channels: ["IAX2/%DIALED%"], timeout: 20s }} }} ]
    - name: sip
      when: {{ dialed: "2X" }}
      actions:
        - dial: {{ channels: ["SIP/%DIALED%"], timeout: 20s, options: tT }}
        - voicemail: {{ mailbox: "%DIALED%@default", options: u }}
    - name: pstn
      when: {{ dialed: XXXXXXXX }}
      allow: ["_10XX"]
      actions: [ {{ dial: {{ channels: ["SIP/pstn/%DIALED%"], timeout: 60s }} }} ]
{extra}
"#,
        hash = test_hash("4711"),
    )
}

/// An internal call from `ext` dialing `dialed`.
fn from_extension(ext: &str, dialed: &str) -> Plan {
    Plan::with_env(
        "env-vars",
        &[
            ("agi_channel", &format!("SIP/{ext}-0000001a")),
            ("agi_context", "from-internal"),
            ("agi_callerid", ext),
            ("agi_extension", dialed),
        ],
    )
}

async fn call(s: &Server, plan: Plan) -> Seen {
    let seen = FakeAsterisk::call(s.addr, plan).await;
    assert!(seen.closed, "the server must close the session");
    seen
}

#[tokio::test]
async fn dial_patterns_pick_the_channel_technology() {
    let s = Server::start(&config("http://127.0.0.1:9/none", "")).await;
    // 2X: SIP, answered: nothing after the dial.
    let seen = call(&s, from_extension("1001", "25")).await;
    assert_eq!(
        seen.commands,
        vec!["EXEC Dial SIP/25,20,tT", "GET VARIABLE DIALSTATUS"]
    );
    // Not answered: the next action, voicemail.
    let mut p = from_extension("1001", "25");
    p.dialstatus = "NOANSWER".into();
    let seen = call(&s, p).await;
    assert_eq!(
        seen.commands,
        vec![
            "EXEC Dial SIP/25,20,tT",
            "GET VARIABLE DIALSTATUS",
            "EXEC VoiceMail 25@default,u"
        ]
    );
    // 3X: IAX2.
    let seen = call(&s, from_extension("1001", "35")).await;
    assert_eq!(seen.commands[0], "EXEC Dial IAX2/35,20");
    // Rewriting: 9 + 8 digits loses the 9, then XXXXXXXX: the trunk.
    let seen = call(&s, from_extension("1002", "955512345")).await;
    assert_eq!(seen.commands[0], "EXEC Dial SIP/pstn/55512345,60");
    // 100 Trying before a reply changes nothing.
    let mut p = from_extension("1001", "35");
    p.trying = true;
    let seen = call(&s, p).await;
    assert_eq!(seen.commands.len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn only_allowed_extensions_reach_the_trunk() {
    let s = Server::start(&config("http://127.0.0.1:9/none", "")).await;
    let before = metric(
        "callhook_agi_auth_failures_total",
        "reason=\"denied\",route=\"pstn\"",
    );
    // 2001 does not match _10XX.
    let seen = call(&s, from_extension("2001", "55512345")).await;
    assert_eq!(seen.commands, vec!["EXEC Hangup 21"]);
    // An outside caller with a caller ID of 1001 is no extension.
    let p = Plan::with_env(
        "env-vars",
        &[("agi_callerid", "1001"), ("agi_extension", "55512345")],
    );
    let seen = call(&s, p).await;
    assert_eq!(seen.commands, vec!["EXEC Hangup 21"]);
    let after = metric(
        "callhook_agi_auth_failures_total",
        "reason=\"denied\",route=\"pstn\"",
    );
    assert_eq!(after - before, 2.0);
    s.stop().await;
}

#[tokio::test]
async fn pin_right_is_the_recorded_session_byte_for_byte() {
    let s = Server::start(&config("http://127.0.0.1:9/none", "")).await;
    // The lab server's script was ANSWER, GET DATA vm-password 5000 4,
    // STREAM FILE beep, SET VARIABLE PIN_OK 1, close: exactly what this
    // route does.
    replay(s.addr, "pin-right", Chunking::Recorded).await;
    replay(s.addr, "pin-right", Chunking::Bytes).await;
    s.stop().await;
}

#[tokio::test]
async fn no_route_closes_at_once_like_the_recorded_early_close() {
    // Only the PIN route: a `route` call matches nothing, and the server
    // closes right after the environment, as in server-close-early (whose
    // environment came in 15 reads).
    let yaml = config("http://127.0.0.1:9/none", "");
    let only_pin = yaml[..yaml.find("    - name: sales").unwrap()].to_string();
    let s = Server::start(&only_pin).await;
    let before = metric("callhook_agi_sessions_total", "result=\"no_route\"");
    replay(s.addr, "server-close-early", Chunking::Recorded).await;
    replay(s.addr, "server-close-early", Chunking::Random(5)).await;
    assert!(metric("callhook_agi_sessions_total", "result=\"no_route\"") - before >= 2.0);
    s.stop().await;
}

#[tokio::test]
async fn pin_wrong_three_times_hangs_up_like_authenticate() {
    let s = Server::start(&config("http://127.0.0.1:9/none", "")).await;
    let before = metric(
        "callhook_agi_auth_failures_total",
        "reason=\"pin\",route=\"pin\"",
    );
    let p = Plan::from_fixture("pin-wrong3").digits(&["0000", "1111", "2222"]);
    let seen = call(&s, p).await;
    // The recorded script minus its lab-only SET VARIABLE PIN_OK 0 and NOOP.
    let recorded: Vec<String> = support_agi::transcript("pin-wrong3")
        .into_iter()
        .filter_map(|r| match r {
            support_agi::Rec::Out(b) => Some(String::from_utf8(b).unwrap().trim_end().to_string()),
            _ => None,
        })
        .filter(|c| !c.starts_with("SET VARIABLE PIN_OK") && !c.starts_with("NOOP"))
        .collect();
    assert_eq!(seen.commands, recorded);
    let after = metric(
        "callhook_agi_auth_failures_total",
        "reason=\"pin\",route=\"pin\"",
    );
    assert_eq!(after - before, 3.0);
    // A timeout (no digits) is a wrong try too; the right PIN on the third.
    let p = Plan::from_fixture("pin-wrong3");
    let mut p = p.digits(&["1234"]);
    p.digits.push_back(None);
    p.digits.push_back(Some("4711".into()));
    let seen = call(&s, p).await;
    assert_eq!(seen.with("GET DATA").len(), 3);
    assert_eq!(seen.commands.last().unwrap(), "SET VARIABLE PIN_OK 1");
    assert_eq!(seen.with("ANSWER").len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn the_crm_decides_and_its_answer_is_cached_per_caller() {
    let sink = Sink::start().await;
    sink.set_default(
        "/route",
        Reply::status(200).body(r#"{"action":"dial","extension":"1003"}"#),
    );
    let s = Server::start(&config(&sink.url("/route"), "")).await;
    let seen = call(&s, Plan::from_fixture("env-vars")).await;
    assert_eq!(
        seen.commands,
        vec!["EXEC Dial SIP/1003", "GET VARIABLE DIALSTATUS"]
    );
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].uri, "/route?caller=5551234567&dialed=2125550600");
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"caller": "5551234567", "name": "Juan Perez", "channel": "SIP/pstn-0000004b", "arg1": "sales"})
    );
    // The same caller again: from the cache.
    let seen = call(&s, Plan::from_fixture("env-vars")).await;
    assert_eq!(seen.commands[0], "EXEC Dial SIP/1003");
    assert_eq!(sink.count(), 1);
    // Another caller: asked again.
    let seen = call(
        &s,
        Plan::with_env("env-vars", &[("agi_callerid", "5559999999")]),
    )
    .await;
    assert_eq!(seen.commands[0], "EXEC Dial SIP/1003");
    assert_eq!(sink.count(), 2);
    assert!(!s.router.cache.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn a_crm_that_hangs_errs_or_talks_nonsense_gets_the_fallback() {
    let sink = Sink::start().await;
    let s = Server::start(&config(&sink.url("/route"), "")).await;
    let fallback = vec![
        "SET VARIABLE ROUTE fallback",
        "EXEC Dial SIP/1001,15",
        "GET VARIABLE DIALSTATUS",
    ];
    let cases: Vec<(&str, Reply)> = vec![
        (
            "timeout",
            Reply::status(200)
                .body(r#"{"action":"dial","extension":"1003"}"#)
                .delay(Duration::from_secs(5)),
        ),
        ("error", Reply::status(500)),
        ("invalid", Reply::status(200).body("<html>nope</html>")),
        (
            "invalid",
            Reply::status(200).body(r#"{"action":"goto","context":"international"}"#),
        ),
        (
            "invalid",
            Reply::status(200).body(r#"{"action":"dial","channel":"SIP/1003&SIP/trunk/0044"}"#),
        ),
    ];
    for (i, (kind, reply)) in cases.into_iter().enumerate() {
        sink.queue("/route", [reply]);
        let before = metric(
            "callhook_agi_crm_requests_total",
            &format!("result=\"{kind}\",route=\"sales\""),
        );
        let started = std::time::Instant::now();
        // Each case its own caller, so the cache does not answer.
        let caller = format!("55500000{i:02}");
        let seen = call(&s, Plan::with_env("env-vars", &[("agi_callerid", &caller)])).await;
        assert_eq!(seen.commands, fallback, "{kind}");
        // The caller waits at most about the CRM timeout (500 ms).
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{kind}: {:?}",
            started.elapsed()
        );
        let after = metric(
            "callhook_agi_crm_requests_total",
            &format!("result=\"{kind}\",route=\"sales\""),
        );
        assert_eq!(after - before, 1.0, "{kind}");
    }
    // Failures are not cached.
    assert!(s.router.cache.is_empty());
    // A dead CRM (nothing listening) too.
    drop(sink);
    let seen = call(
        &s,
        Plan::with_env("env-vars", &[("agi_callerid", "5550000099")]),
    )
    .await;
    assert_eq!(seen.commands, fallback);
    s.stop().await;
}

#[tokio::test]
async fn a_caller_hanging_up_during_the_crm_lookup_ends_the_session() {
    let sink = Sink::start().await;
    sink.set_default(
        "/route",
        Reply::status(200)
            .body(r#"{"action":"hangup"}"#)
            .delay(Duration::from_secs(3)),
    );
    let yaml = config(&sink.url("/route"), "").replace("timeout: 500ms", "timeout: 5s");
    let s = Server::start(&yaml).await;
    let mut p = Plan::from_fixture("slow-server-caller-gives-up");
    p.hangup_after = Some(Duration::from_millis(300));
    let seen = call(&s, p).await;
    assert!(seen.commands.is_empty(), "{:?}", seen.commands);
    assert!(seen.elapsed < Duration::from_secs(2), "{:?}", seen.elapsed);
    s.stop().await;
}

#[tokio::test]
async fn hangup_mid_stream_runs_only_what_a_dead_channel_allows() {
    let extra = r#"    - name: welcome
      when: { dialed: "2125550700" }
      actions:
        - playback: [lab-long, beep]
        - dial: { channels: ["SIP/1002"] }
        - set: { ROUTE_TARGET: caller-hung-up }
"#;
    let s = Server::start(&config("http://127.0.0.1:9/none", extra)).await;
    let mut p = Plan::with_env("hangup-mid-stream", &[("agi_extension", "2125550700")]);
    p.hangup_on_stream = Some(1);
    let seen = call(&s, p).await;
    // The HANGUP line comes 40 ms after the reply: the second file is
    // either skipped or answered 511 (as recorded); never a Dial.
    let c: Vec<&str> = seen.commands.iter().map(String::as_str).collect();
    let short = [
        "ANSWER",
        "STREAM FILE lab-long \"\"",
        "SET VARIABLE ROUTE_TARGET caller-hung-up",
    ];
    let long = [
        "ANSWER",
        "STREAM FILE lab-long \"\"",
        "STREAM FILE beep \"\"",
        "SET VARIABLE ROUTE_TARGET caller-hung-up",
    ];
    assert!(c == short || c == long, "{c:?}");
    s.stop().await;
}

#[tokio::test]
async fn every_session_ends_by_its_deadlines() {
    let extra = r#"    - name: stuck
      when: { dialed: "2125550700" }
      actions:
        - set: { A: b }
"#;
    let yaml = config("http://127.0.0.1:9/none", extra).replace(
        "command_timeout: 2s",
        "command_timeout: 500ms\n  session_timeout: 2s",
    );
    let s = Server::start(&yaml).await;
    // A PBX that never answers SET VARIABLE: closed after command_timeout.
    let mut p = Plan::with_env("env-vars", &[("agi_extension", "2125550700")]);
    p.stall_on = Some("SET VARIABLE".into());
    let seen = call(&s, p).await;
    assert!(
        seen.elapsed < Duration::from_millis(1800),
        "{:?}",
        seen.elapsed
    );
    // A Dial that never returns: closed at session_timeout.
    let mut p = from_extension("1001", "25");
    p.stall_on = Some("EXEC Dial".into());
    let seen = call(&s, p).await;
    assert!(
        seen.elapsed >= Duration::from_millis(1900) && seen.elapsed < Duration::from_secs(4),
        "{:?}",
        seen.elapsed
    );
    s.stop().await;
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[tokio::test]
async fn hostile_peers_are_closed() {
    let s = Server::start(&config("http://127.0.0.1:9/none", "")).await;
    let before = metric("callhook_agi_sessions_total", "result=\"error\"");
    // An endless environment block.
    let mut c = connect(s.addr).await;
    let mut n = 0;
    while c.write_all(b"agi_x: y\n").await.is_ok() {
        n += 1;
        if n > 100_000 {
            panic!("the server read 100000 environment lines");
        }
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_micros(1), c.read(&mut b)).await {
            break;
        }
    }
    // A huge line.
    let mut c = connect(s.addr).await;
    let _ = c.write_all(&vec![b'a'; 100_000]).await;
    expect_close(&mut c, Duration::from_secs(5), "huge line").await;
    // Garbage.
    let mut c = connect(s.addr).await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    expect_close(&mut c, Duration::from_secs(5), "garbage").await;
    // Binary junk with NULs and no newline, then silence.
    let mut c = connect(s.addr).await;
    c.write_all(&[0, 255, 1, 2, 3]).await.unwrap();
    expect_close(&mut c, Duration::from_secs(5), "junk").await;
    // Slow drip: a byte every 50 ms, never complete: closed at env_timeout (1 s).
    let mut c = connect(s.addr).await;
    let started = std::time::Instant::now();
    let drip =
        b"agi_network: yes\nagi_network_script: route\nagi_request: agi://x/route\n".repeat(10);
    for b in drip {
        if c.write_all(&[b]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await {
            assert!(
                matches!(r, Ok(0) | Err(_)),
                "the server spoke to a half environment"
            );
            break;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Silence.
    let mut c = connect(s.addr).await;
    expect_close(&mut c, Duration::from_secs(3), "silent peer").await;
    let after = metric("callhook_agi_sessions_total", "result=\"error\"");
    assert!(after - before >= 6.0, "{before} → {after}");
    // Still serving.
    let seen = call(&s, from_extension("1001", "35")).await;
    assert_eq!(seen.commands[0], "EXEC Dial IAX2/35,20");
    s.stop().await;
}

#[tokio::test]
async fn addresses_outside_allow_from_and_connections_over_the_caps_are_closed_at_once() {
    let extra = "";
    let yaml = config("http://127.0.0.1:9/none", extra).replace(
        "  env_timeout: 1s",
        "  env_timeout: 5s\n  allow_from: [127.0.0.2]\n  max_sessions: 3\n  max_sessions_per_ip: 2",
    );
    let s = Server::start(&yaml).await;
    let from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let addr = s.addr;
        async move {
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(ip, 0)).unwrap();
            sock.connect(addr).await.unwrap()
        }
    };
    // 127.0.0.1 is not allowed.
    let before = metric(
        "callhook_agi_connections_refused_total",
        "reason=\"not_allowed\"",
    );
    let mut c = connect(s.addr).await;
    expect_close(&mut c, Duration::from_secs(1), "not allowed").await;
    assert_eq!(
        metric(
            "callhook_agi_connections_refused_total",
            "reason=\"not_allowed\""
        ) - before,
        1.0
    );
    // Two silent sessions from 127.0.0.2 fill its per-IP cap; a third is
    // closed at once (long before the 5 s env_timeout).
    let _a = from("127.0.0.2").await;
    let _b = from("127.0.0.2").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let mut c = from("127.0.0.2").await;
    expect_close(&mut c, Duration::from_secs(2), "per-ip cap").await;
    assert!(started.elapsed() < Duration::from_secs(2));
    s.stop().await;
}

#[test]
fn every_problem_in_the_agi_section_is_reported_with_its_position() {
    let yaml = r#"targets:
  crm: {}
agi:
  listen: 127.0.0.1:4573
  allow_from: [10.0.0.0/33]
  routes:
    - name: a
      when: { dialed: "_[12", tyme: x }
      actions: [ { dial: { channels: ["SIP/1001,60,tTL(1)"] } } ]
    - name: a
      when: { time: { days: mon-fry, timezone: Mars/Olympus } }
      pin: { hash: "4711" }
      actions: [ { hangup: busy, playback: x } ]
    - name: c
      crm: { target: nope, url: "http://127.0.0.1:9/x?c=%CALLER_IDD%", timeout: 1m }
      actions: [ { set: { "bad name": 1 } } ]
"#;
    let errors = Config::from_text(yaml, &std::env::temp_dir()).unwrap_err();
    let got: Vec<(String, usize)> = errors
        .iter()
        .map(|e| (e.path.clone(), e.location.map_or(0, |l| l.0)))
        .collect();
    let want_paths = [
        ("agi.allow_from[0]", 5),
        ("agi.routes[0].when.tyme", 8),
        ("agi.routes[0].when.dialed", 8),
        ("agi.routes[0].actions[0].dial.channels[0]", 9),
        ("agi.routes[1].name", 10),
        ("agi.routes[1].when.time.days", 11),
        ("agi.routes[1].when.time.timezone", 11),
        ("agi.routes[1].pin.hash", 12),
        ("agi.routes[1].actions[0]", 13),
        ("agi.routes[2].crm.target", 15),
        ("agi.routes[2].crm.url", 15),
        ("agi.routes[2].crm.timeout", 15),
        ("agi.routes[2].actions", 16),
    ];
    for (p, line) in want_paths {
        assert!(
            got.iter().any(|(gp, gl)| gp == p && *gl == line),
            "missing {p} at line {line}; got {got:#?}"
        );
    }
}

#[tokio::test]
async fn a_reload_swaps_the_routes_for_new_calls() {
    let dir = std::env::temp_dir();
    let text = |chan: &str| {
        format!(
            "agi:\n  listen: 127.0.0.1:4573\n  routes:\n    - name: r\n      actions: [ {{ dial: {{ channels: [\"{chan}\"] }} }} ]\n"
        )
    };
    let a = Config::from_text(&text("SIP/1001"), &dir)
        .unwrap()
        .agi
        .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = watch::channel(a.router.clone());
    let token = CancellationToken::new();
    let task = tokio::spawn(callhook::agi::serve(l, a.settings, rx, token.clone()));
    let seen = FakeAsterisk::call(addr, from_extension("1001", "25")).await;
    assert_eq!(seen.commands[0], "EXEC Dial SIP/1001");
    let b = Config::from_text(&text("IAX2/2002"), &dir)
        .unwrap()
        .agi
        .unwrap();
    tx.send_replace(b.router.clone());
    let seen = FakeAsterisk::call(addr, from_extension("1001", "25")).await;
    assert_eq!(seen.commands[0], "EXEC Dial IAX2/2002");
    token.cancel();
    task.await.unwrap();
}

#[test]
fn a_reload_reports_what_the_agi_server_needs_a_restart_for() {
    use callhook::config::reload::{applied, restart_required};
    let dir = std::env::temp_dir();
    let cfg = |listen: &str, extra: &str, chan: &str| {
        Config::from_text(
            &format!("agi:\n  listen: {listen}\n{extra}  routes:\n    - name: r\n      actions: [ {{ dial: {{ channels: [\"{chan}\"] }} }} ]\n"),
            &dir,
        )
        .unwrap()
    };
    let a = cfg("127.0.0.1:4573", "", "SIP/1001");
    // Only the routes changed: applied, no restart.
    let b = cfg("127.0.0.1:4573", "", "SIP/1002");
    assert!(restart_required(&a, &b, 1, 0).is_empty());
    assert_eq!(applied(&a, &b), vec!["agi routes (1)"]);
    // The listener and its limits need a restart.
    let c = cfg("127.0.0.1:4574", "  allow_from: [10.0.0.0/8]\n", "SIP/1001");
    assert_eq!(
        restart_required(&a, &c, 1, 0),
        vec!["agi.listen", "agi.limits"]
    );
    // Removing the section too.
    let none = Config::from_text(
        "push: { teams: { t: { token: abcdefgh12 } } }\nlisten: 127.0.0.1:9188\n",
        &dir,
    )
    .unwrap();
    assert!(restart_required(&a, &none, 1, 0).contains(&"agi".to_string()));
}
