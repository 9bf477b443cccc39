//! The AMI proxy under attack, end to end: the real `callhook run` binary,
//! the simulated PBX, and raw TCP clients doing what hostile or broken
//! tools do — wrong secrets (plain and MD5), floods, huge lines, garbage,
//! slowloris logins, idle sockets, too many connections, forbidden actions,
//! a reader that never reads.

mod support_ami_proxy;
mod support_daemon;
mod support_tmp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use callhook::ami::simulator::{AfterCapture, Simulator, SimulatorHandle};
use support_ami_proxy::{config, get, Raw, User, PBX_SECRET, PBX_USER, WAIT};
use support_daemon::{free_port, temp_dir, Daemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SETTINGS: &str = "  login_timeout: 2s\n  login_failure_delay: 200ms\n  max_login_failures: 3\n  login_failure_window: 1m\n  max_packet: 4096\n  write_timeout: 2s\n  client_queue: 4000\n  max_connections_per_ip: 4\n  max_actions_per_second: 100\n";

const USERS: &[User<'static>] = &[
    User {
        name: "panel",
        secret: "panel-s3cret",
        extra: "      actions: [Ping, Getvar, Originate, UserEvent, CoreSettings]\n      limits: { Originate: { Context: [from-internal], Application: [] } }\n",
    },
    User {
        name: "other",
        secret: "other-s3cret",
        extra: "      actions: [Ping, Getvar, CoreSettings]\n",
    },
];

struct Setup {
    daemon: Daemon,
    sim: SimulatorHandle,
    proxy: SocketAddr,
    http: u16,
}

async fn setup(name: &str, sim: Simulator) -> Setup {
    let sim = sim.start().await.unwrap();
    let dir = temp_dir(name);
    let (http, proxy) = (free_port(), free_port());
    let cfg = config(
        &dir.join("state"),
        sim.local_addr().port(),
        http,
        proxy,
        SETTINGS,
        USERS,
    );
    let daemon = Daemon::start(&cfg, &dir, &[("E2E_AMI_SECRET", PBX_SECRET)]).owning(dir);
    sim.wait_for(|s| s.logins >= 1).await;
    let proxy = SocketAddr::from(([127, 0, 0, 1], proxy));
    // Up once a connection gets the banner and a forwarded action is
    // answered by the PBX (callhook's link is up); that probe logs off.
    let mut probe = Raw::connect(proxy).await;
    assert_eq!(
        get(&probe.login("other", "other-s3cret").await, "Response"),
        Some("Success")
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let r = probe.action("up", &[("Action", "CoreSettings")]).await;
        if get(&r, "Response") == Some("Success") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the PBX link never came up: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    probe.send(&[("Action", "Logoff")]).await;
    assert!(probe.closed().await);
    Setup {
        daemon,
        sim,
        proxy,
        http,
    }
}

fn idle_pbx() -> Simulator {
    Simulator::new(PBX_USER, PBX_SECRET).session(Vec::new(), AfterCapture::StayOpen)
}

async fn metric(http: u16, sample: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn finish(s: Setup) {
    let (_, status, stderr) = tokio::task::block_in_place(|| s.daemon.stop());
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for secret in [PBX_SECRET, "panel-s3cret", "other-s3cret"] {
        assert!(!stderr.contains(secret), "a secret in the logs");
    }
    s.sim.shutdown().await;
}

/// `hex(md5(challenge + secret))`, as a tool computes its MD5 login key.
fn md5_key(challenge: &str, secret: &str) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update(challenge.as_bytes());
    h.update(secret.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads until the peer closes: true when it closed without sending a byte.
async fn closed_silently(mut s: tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(WAIT, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_are_refused_slowly_then_the_address_is_blocked() {
    let s = setup("proxy-auth", idle_pbx()).await;
    // Before login only Challenge/Login/Logoff are answered.
    let mut c = Raw::connect(s.proxy).await;
    let r = c
        .action(
            "a1",
            &[("Action", "Command"), ("Command", "core show channels")],
        )
        .await;
    assert_eq!(get(&r, "Message"), Some("Permission denied"), "{r:?}");
    // A wrong plain secret: answered after the delay, then closed.
    let t = Instant::now();
    let r = c.login("panel", "guess").await;
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(get(&r, "Response"), Some("Error"));
    assert_eq!(get(&r, "Message"), Some("Authentication failed"));
    assert!(c.closed().await, "one guess per connection");
    // A wrong MD5 key.
    let mut c = Raw::connect(s.proxy).await;
    let r = c
        .action("c1", &[("Action", "Challenge"), ("AuthType", "MD5")])
        .await;
    let challenge = get(&r, "Challenge").expect("a challenge").to_string();
    assert!(challenge.bytes().all(|b| b.is_ascii_digit()), "{challenge}");
    let key = md5_key(&challenge, "wrong");
    let r = c
        .action(
            "l1",
            &[
                ("Action", "Login"),
                ("AuthType", "MD5"),
                ("Username", "panel"),
                ("Key", &key),
            ],
        )
        .await;
    assert_eq!(get(&r, "Message"), Some("Authentication failed"));
    assert!(c.closed().await);
    // An unknown user with some user's secret.
    let mut c = Raw::connect(s.proxy).await;
    let r = c.login("nobody", "panel-s3cret").await;
    assert_eq!(get(&r, "Message"), Some("Authentication failed"));
    assert!(c.closed().await);
    // Three failures: this address is refused at once, without a banner.
    let bare = Raw::connect_bare(s.proxy).await.unwrap();
    assert!(closed_silently(bare).await);
    assert!(
        metric(
            s.http,
            "callhook_ami_proxy_connections_refused_total{reason=\"login_blocked\"}"
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(
            s.http,
            "callhook_ami_proxy_logins_total{result=\"failure\"}"
        )
        .await,
        3.0
    );
    assert_eq!(s.sim.stats().action_count("Command"), 0);
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_idle_sockets_and_connection_caps() {
    let s = setup("proxy-slow", idle_pbx()).await;
    // Four connections from one address are allowed, the fifth is refused.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(Raw::connect(s.proxy).await);
    }
    let t = Instant::now();
    let bare = Raw::connect_bare(s.proxy).await.unwrap();
    assert!(
        closed_silently(bare).await,
        "the fifth connection is refused"
    );
    assert!(
        metric(
            s.http,
            "callhook_ami_proxy_connections_refused_total{reason=\"per_ip_cap\"}"
        )
        .await
            >= 1.0
    );
    // One of them dribbles a Login a byte at a time: the login deadline
    // counts from connect, not from the last byte.
    let mut dribbler = held.pop().unwrap();
    let dribble = tokio::spawn(async move {
        for b in b"Action: Login\r\nUsername: panel\r\nSecret: panel-s3cret"
            .iter()
            .cycle()
        {
            if dribbler.send_raw(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        dribbler
    });
    // The idle ones are cut at the login deadline (2 s).
    for c in &mut held {
        assert!(c.closed().await);
    }
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    let mut dribbler = tokio::time::timeout(WAIT, dribble).await.unwrap().unwrap();
    assert!(dribbler.closed().await);
    assert!(
        metric(
            s.http,
            "callhook_ami_proxy_disconnects_total{reason=\"login_timeout\"}"
        )
        .await
            >= 4.0
    );
    // Slots are free again.
    let mut c = Raw::connect(s.proxy).await;
    let r = c.login("panel", "panel-s3cret").await;
    assert_eq!(get(&r, "Response"), Some("Success"));
    finish(s).await;
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_lines_and_garbage_are_dropped_in_bounded_memory() {
    let s = setup("proxy-huge", idle_pbx()).await;
    let pid = s.daemon.child.id();
    let before = rss_kb(pid);
    // 32 MB without a line end before login: discarded as it arrives.
    let mut c = Raw::connect(s.proxy).await;
    let junk = vec![b'A'; 1 << 20];
    for _ in 0..32 {
        if c.send_raw(&junk).await.is_err() {
            break;
        }
    }
    assert!(c.closed().await, "cut at the login deadline");
    let grown = rss_kb(pid).saturating_sub(before);
    assert!(grown < 40_000, "memory grew by {grown} kB");
    // Logged in: an oversized packet is dropped, the session goes on.
    let mut c = Raw::connect(s.proxy).await;
    assert_eq!(
        get(&c.login("panel", "panel-s3cret").await, "Response"),
        Some("Success")
    );
    let mut big = b"Action: Getvar\r\nVariable: ".to_vec();
    big.extend(vec![b'x'; 1 << 20]);
    big.extend_from_slice(b"\r\nActionID: big\r\n\r\n");
    c.send_raw(&big).await.unwrap();
    let r = c.action("p1", &[("Action", "Ping")]).await;
    assert_eq!(get(&r, "Ping"), Some("Pong"), "{r:?}");
    assert!(
        metric(
            s.http,
            "callhook_ami_proxy_packets_skipped_total{reason=\"oversized\"}"
        )
        .await
            >= 1.0
    );
    // A packet without a single "Key: Value" line, or without Action:,
    // over and over: disconnected.
    for i in 0..20 {
        let bytes: &[u8] = if i % 2 == 0 {
            b"\x00\x01\x02 no colon here\r\n\r\n"
        } else {
            b"Foo: bar\r\n\r\n"
        };
        if c.send_raw(bytes).await.is_err() {
            break;
        }
    }
    assert!(c.closed().await);
    assert!(
        metric(
            s.http,
            "callhook_ami_proxy_disconnects_total{reason=\"bad_packets\"}"
        )
        .await
            >= 1.0
    );
    assert_eq!(
        s.sim.stats().action_count("Getvar"),
        0,
        "nothing reached the PBX"
    );
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_paced_and_other_clients_are_unaffected() {
    let s = setup("proxy-flood", idle_pbx()).await;
    let mut flood = Raw::connect(s.proxy).await;
    assert_eq!(
        get(&flood.login("panel", "panel-s3cret").await, "Response"),
        Some("Success")
    );
    let mut calm = Raw::connect(s.proxy).await;
    assert_eq!(
        get(&calm.login("other", "other-s3cret").await, "Response"),
        Some("Success")
    );
    // 400 forwarded actions in one write; 100 per second are let through.
    const N: usize = 400;
    let mut bytes = Vec::new();
    for i in 0..N {
        bytes.extend(
            format!("Action: Getvar\r\nVariable: X\r\nActionID: g-{i}\r\n\r\n").into_bytes(),
        );
    }
    let t = Instant::now();
    flood.send_raw(&bytes).await.unwrap();
    // Meanwhile the other client is served (its own ActionIDs back).
    let r = calm
        .action("calm-1", &[("Action", "Getvar"), ("Variable", "Y")])
        .await;
    assert_eq!(get(&r, "Response"), Some("Success"), "{r:?}");
    let mut ids = Vec::new();
    while ids.len() < N {
        let p = flood.packet().await.expect("flood client still connected");
        if get(&p, "Event").is_some() {
            continue;
        }
        assert_eq!(get(&p, "Response"), Some("Success"), "{p:?}");
        ids.push(get(&p, "ActionID").unwrap().to_string());
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "400 actions at 100/s took only {took:?}"
    );
    ids.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("g-{i}")).collect();
    want.sort();
    assert_eq!(
        ids, want,
        "each action answered once, under its own ActionID"
    );
    assert_eq!(s.sim.stats().action_count("Getvar"), N + 1);
    assert!(metric(s.http, "callhook_ami_proxy_throttled_total{user=\"panel\"}").await >= 1.0);
    let r = calm.action("calm-2", &[("Action", "Ping")]).await;
    assert_eq!(get(&r, "Ping"), Some("Pong"));
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_actions_never_reach_the_pbx() {
    let s = setup("proxy-forbidden", idle_pbx()).await;
    let mut c = Raw::connect(s.proxy).await;
    // MD5 login, as Asterisk does it.
    let r = c
        .action("c1", &[("Action", "Challenge"), ("AuthType", "MD5")])
        .await;
    let key = md5_key(get(&r, "Challenge").unwrap(), "panel-s3cret");
    let r = c
        .action(
            "l1",
            &[
                ("Action", "Login"),
                ("AuthType", "MD5"),
                ("Username", "panel"),
                ("Key", &key),
            ],
        )
        .await;
    assert_eq!(get(&r, "Response"), Some("Success"), "{r:?}");
    let denied = |r: &support_ami_proxy::Packet| {
        get(r, "Response") == Some("Error")
            && get(r, "Message").is_some_and(|m| m.starts_with("Permission denied"))
    };
    for (id, fields) in [
        (
            "f1",
            vec![("Action", "Command"), ("Command", "core stop now")],
        ),
        (
            "f2",
            vec![
                ("Action", "Originate"),
                ("Channel", "PJSIP/1001"),
                ("Context", "from-trunk"),
                ("Exten", "0049301234"),
                ("Priority", "1"),
            ],
        ),
        (
            "f3",
            vec![
                ("Action", "Originate"),
                ("Channel", "PJSIP/1001"),
                ("Context", "from-internal"),
                ("Application", "System"),
                ("Data", "id"),
            ],
        ),
        (
            "f4",
            vec![
                ("Action", "Originate"),
                ("Channel", "PJSIP/1001"),
                ("Exten", "1002"),
            ],
        ),
        (
            "f5",
            vec![
                ("Action", "Filter"),
                ("Operation", "Add"),
                ("Filter", "!Event: Newexten"),
            ],
        ),
        ("f6", vec![("Action", "WaitEvent")]),
        (
            "f7",
            vec![
                ("Action", "originate"),
                ("Channel", "PJSIP/1001"),
                ("Context", "from-internal"),
                ("Context", "from-trunk"),
            ],
        ),
    ] {
        let r = c.action(id, &fields).await;
        assert!(denied(&r), "{id}: {r:?}");
    }
    // What the allow-list permits is forwarded, answered under the
    // client's own ActionID (or none).
    let r = c
        .action(
            "orig/1",
            &[
                ("Action", "Originate"),
                ("Channel", "PJSIP/1001"),
                ("Context", "from-internal"),
                ("Exten", "1002"),
                ("Priority", "1"),
                ("Async", "true"),
            ],
        )
        .await;
    assert_eq!(get(&r, "Response"), Some("Success"), "{r:?}");
    c.send(&[("Action", "Getvar"), ("Variable", "X")]).await;
    let p = c.packet().await.unwrap();
    assert_eq!(get(&p, "Response"), Some("Success"));
    assert_eq!(
        get(&p, "ActionID"),
        None,
        "no ActionID sent, none returned: {p:?}"
    );
    // Local answers.
    assert_eq!(
        get(
            &c.action(
                "l2",
                &[("Action", "Login"), ("Username", "x"), ("Secret", "y")]
            )
            .await,
            "Message"
        ),
        Some("Already authenticated")
    );
    assert_eq!(
        get(
            &c.action("e1", &[("Action", "Events"), ("EventMask", "off")])
                .await,
            "Events"
        ),
        Some("Off")
    );
    c.send_raw(b"ActionID: m1\r\nFoo: bar\r\n\r\n")
        .await
        .unwrap();
    let (r, _) = c.response("m1").await;
    assert_eq!(get(&r, "Message"), Some("Missing action in request"));
    let stats = s.sim.stats();
    assert_eq!(stats.action_count("Command"), 0);
    assert_eq!(stats.action_count("Filter"), 0);
    assert_eq!(stats.action_count("WaitEvent"), 0);
    assert_eq!(stats.action_count("Originate"), 1, "only the allowed one");
    assert!(
        metric(
            s.http,
            "callhook_ami_proxy_actions_total{outcome=\"refused\",user=\"panel\"}"
        )
        .await
            >= 7.0
    );
    // The PBX goes away: forwarded actions fail at once, Ping still works,
    // the client stays connected.
    let Setup {
        daemon,
        sim,
        proxy,
        http,
    } = s;
    sim.shutdown().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let r = c
            .action("down", &[("Action", "Getvar"), ("Variable", "X")])
            .await;
        if get(&r, "Message").is_some_and(|m| m.contains("PBX connection is down")) {
            break;
        }
        assert!(Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&c.action("p", &[("Action", "Ping")]).await, "Ping"),
        Some("Pong")
    );
    let _ = (proxy, http);
    let (_, status, stderr) = tokio::task::block_in_place(|| daemon.stop());
    assert!(status.success(), "{status:?}\n{stderr}");
}

/// A capture of `n` UserEvents of about 1.5 kB each, numbered.
fn load_capture(n: usize) -> Vec<u8> {
    let pad = "p".repeat(1500);
    let mut out = b"Asterisk Call Manager/9.0.0\r\n".to_vec();
    for i in 0..n {
        out.extend(
            format!("Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: Load\r\nSeq: {i}\r\nPad: {pad}\r\n\r\n").into_bytes(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_cut_off_without_slowing_the_others() {
    const N: usize = 3000;
    // Session 0 idles until the trigger; session 1 plays ~4.5 MB of events.
    let sim = Simulator::new(PBX_USER, PBX_SECRET)
        .session(Vec::new(), AfterCapture::CloseOnAction("UserEvent".into()))
        .session(load_capture(N), AfterCapture::StayOpen);
    let s = setup("proxy-slowreader", sim).await;
    // The stuck tool: a tiny receive window, logged in, then never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stuck = sock.connect(s.proxy).await.unwrap();
    stuck
        .write_all(b"Action: Login\r\nUsername: other\r\nSecret: other-s3cret\r\n\r\n")
        .await
        .unwrap();
    let mut reader = Raw::connect(s.proxy).await;
    assert_eq!(
        get(&reader.login("other", "other-s3cret").await, "Response"),
        Some("Success")
    );
    let mut trigger = Raw::connect(s.proxy).await;
    assert_eq!(
        get(&trigger.login("panel", "panel-s3cret").await, "Response"),
        Some("Success")
    );
    let r = trigger.trigger().await;
    assert_eq!(get(&r, "Response"), Some("Error"), "{r:?}");
    // The reading tool gets every event, in order.
    let mut next = 0usize;
    while next < N {
        let p = match tokio::time::timeout(Duration::from_secs(25), reader.packet()).await {
            Ok(p) => p.expect("the reading tool stays connected"),
            Err(_) => panic!(
                "event {next} of {N} never came; sim {:?}\n{}",
                s.sim.stats(),
                s.daemon.stderr()
            ),
        };
        if get(&p, "UserEvent") != Some("Load") {
            continue;
        }
        assert_eq!(get(&p, "Seq"), Some(next.to_string().as_str()));
        next += 1;
    }
    // The stuck one was disconnected (its writes blocked past write_timeout
    // or its queue overflowed).
    let deadline = Instant::now() + WAIT;
    loop {
        let cut = metric(
            s.http,
            "callhook_ami_proxy_disconnects_total{reason=\"write_timeout\"}",
        )
        .await
            + metric(
                s.http,
                "callhook_ami_proxy_disconnects_total{reason=\"overflow\"}",
            )
            .await;
        if cut >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stuck client was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sink = vec![0u8; 1 << 16];
    let mut total = 0usize;
    loop {
        match tokio::time::timeout(WAIT, stuck.read(&mut sink))
            .await
            .unwrap()
        {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    let all = load_capture(N).len();
    assert!(
        total < all * 3 / 4,
        "the stuck client was not sent everything: {total} of {all} bytes"
    );
    let r = reader.action("p", &[("Action", "Ping")]).await;
    assert_eq!(get(&r, "Ping"), Some("Pong"));
    finish(s).await;
}
