//! End to end: the real `callhook run` binary's HTTP surface under attack
//! and its exposure model. A simulated PBX (behind a TCP proxy the test can
//! cut) and a real webhook sink, all on 127.0.0.1.

mod support_daemon;
mod support_http;
mod support_tmp;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callhook::ami::simulator::{AfterCapture, Simulator, SimulatorHandle};
use support_daemon::{fixture, free_port, temp_dir, Daemon, WAIT};
use support_http::Sink;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const USER: &str = "amiuser";
const SECRET: &str = "http-e2e-secret";
const ADMIN: &str = "admin-token-for-http-tests";
const PUSH: &str = "acme-push-token-1";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("E2E_AMI_SECRET", SECRET),
        ("E2E_ADMIN_TOKEN", ADMIN),
        ("E2E_PUSH_TOKEN", PUSH),
    ]
}

const RULES: &str = r#"  - name: screen-pop
    when: { state: ringing, direction: incoming, role: callee }
    target: crm
    url: "http://SINK/pop?pi=%CALLER_ID%&ext=%EXTENSION%"
  - name: call-log
    when: { scope: call, state: hungup }
    target: crm
    url: "http://SINK/calls"
    json: { id: "{{call.session_id}}" }
    idempotency_key: "call-{{call.session_id}}"
"#;

/// A config with the push endpoint, a PBX at `ami_port` (if any), the
/// sink as target `crm`, `admin` (the inside of `admin: { … }`) and `http`
/// (the inside of `http: { … }`).
fn config(
    dir: &Path,
    listen: u16,
    ami_port: Option<u16>,
    sink: &str,
    admin: &str,
    http: &str,
) -> String {
    let pbx = match ami_port {
        Some(port) => format!(
            "pbx:\n  - id: main\n    ami: {{ host: 127.0.0.1, port: {port}, username: {USER}, secret: \"${{E2E_AMI_SECRET}}\", ping_interval: 2s, ping_timeout: 2s, connect_timeout: 2s }}\n"
        ),
        None => String::new(),
    };
    format!(
        r#"listen: 127.0.0.1:{listen}
state_dir: {state}
admin: {{ {admin} }}
http: {{ {http} }}
{pbx}push:
  teams:
    acme: {{ token: "${{E2E_PUSH_TOKEN}}" }}
targets:
  crm: {{ timeout: 2s, retry: {{ max_attempts: 50, max_age: 1h, initial_backoff: 100ms, max_backoff: 500ms }} }}
rules:
{rules}"#,
        state = dir.join("state").display(),
        rules = RULES.replace("SINK", sink),
    )
}

/// A TCP proxy in front of the simulated PBX: `cut()` drops every
/// connection through it (the PBX link fails; the client must reconnect).
struct Proxy {
    addr: SocketAddr,
    generation: watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (generation, rx) = watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut down, _)) = l.accept().await {
                let mut rx = rx.clone();
                rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, generation }
    }

    fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn simulator(captures: &[&str]) -> SimulatorHandle {
    let mut sim = Simulator::new(USER, SECRET);
    for c in captures {
        sim = sim.session(fixture(c), AfterCapture::StayOpen);
    }
    sim.start().await.unwrap()
}

fn push_body(session: &str, number: &str) -> String {
    format!("sessionid={session}&event=ringing&source=CALLEE&calltype=dialin&activenum={number}&extension=1001")
}

async fn push(
    client: &reqwest::Client,
    d: &Daemon,
    session: &str,
    number: &str,
) -> reqwest::Result<u16> {
    let r = client
        .post(d.url("/v1/events/astercc"))
        .header("X-Callhook-Token", PUSH)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(push_body(session, number))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

/// Attackers against one listener: connections that send nothing, and
/// slowloris connections that send a request head one byte every 2 s.
/// Like a real attacker, each reconnects (after a second) when closed.
struct Attack {
    stop: CancellationToken,
    /// Connections open from the attackers' side now.
    open: Arc<AtomicUsize>,
    /// Most connections open at once.
    peak: Arc<AtomicUsize>,
    /// Connections established so far.
    connects: Arc<AtomicUsize>,
}

impl Attack {
    fn start(addr: SocketAddr, idle: usize, slow: usize) -> Attack {
        let a = Attack {
            stop: CancellationToken::new(),
            open: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
            connects: Arc::new(AtomicUsize::new(0)),
        };
        for i in 0..idle + slow {
            let (stop, open, peak, connects) = (
                a.stop.clone(),
                a.open.clone(),
                a.peak.clone(),
                a.connects.clone(),
            );
            let slowloris = i >= idle;
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let c = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr));
                    let mut s = match c.await {
                        Ok(Ok(s)) => s,
                        _ => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    connects.fetch_add(1, Ordering::Relaxed);
                    let now = open.fetch_add(1, Ordering::Relaxed) + 1;
                    peak.fetch_max(now, Ordering::Relaxed);
                    if slowloris {
                        let _ = s
                            .write_all(
                                b"POST /v1/events/astercc HTTP/1.1\r\nHost: callhook\r\nX-Slow: ",
                            )
                            .await;
                    }
                    let mut buf = [0u8; 512];
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            r = s.read(&mut buf) => match r {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            },
                            _ = tokio::time::sleep(Duration::from_secs(2)), if slowloris => {
                                if s.write_all(b"a").await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    open.fetch_sub(1, Ordering::Relaxed);
                    drop(s);
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                }
            });
        }
        a
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Raises this process's open-file limit (thousands of attacker sockets).
fn raise_own_limit(need: u64) {
    let l = callhook::http::fds::raise_nofile_limit().unwrap();
    assert!(
        l.soft >= need,
        "this test needs {need} open files, the hard limit is {}",
        l.hard
    );
}

/// The number in a `/metrics` text for `sample` (exact name and labels).
fn sample(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_idle_and_slowloris_connections_do_not_starve_webhooks_healthz_or_the_ami_link(
) {
    raise_own_limit(8000);
    let sink = Sink::start().await;
    let sim = simulator(&[
        "asterisk-20/queue-answered.ami",
        "asterisk-20/incoming-answered.ami",
    ])
    .await;
    let proxy = Proxy::start(sim.local_addr()).await;
    let dir = temp_dir("http-flood");
    let (listen, admin) = (free_port(), free_port());
    let cfg = config(
        &dir,
        listen,
        Some(proxy.addr.port()),
        &sink.addr.to_string(),
        &format!("token: \"${{E2E_ADMIN_TOKEN}}\", listen: 127.0.0.1:{admin}"),
        // Many clients behind one address (a NAT, or an attacker with many
        // addresses): the total cap and the descriptor budget are what hold.
        "max_connections_per_ip: 100000",
    );
    // systemd's default limit, with no room to raise it.
    let d = Daemon::start_limited(&cfg, &dir, &env(), 1024);
    d.wait_http().await;
    // Before the attack: the first call's webhooks arrive.
    let first = sink.wait_for(3).await;
    assert!(first.iter().any(|r| r.path() == "/calls"));
    let text = d.metrics_text().await.unwrap();
    let cap = sample(&text, "callhook_http_connection_limit{listener=\"listen\"}").unwrap();
    assert!(
        cap > 100.0 && cap < 1024.0,
        "the cap fits in 1024 descriptors: {cap}"
    );
    assert_eq!(sample(&text, "process_max_fds"), Some(1024.0));

    let attack = Attack::start(d.listen.unwrap(), 3000, 2000);
    // Wait until the attack holds the listener: every slot taken and more
    // connections knocking than fit.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = d.metrics_text().await.unwrap_or_default();
        let open = sample(&text, "callhook_http_connections{listener=\"listen\"}").unwrap_or(0.0);
        if open >= cap && attack.connects.load(Ordering::Relaxed) >= 5000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the attack never filled the cap ({open} of {cap})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "attack established: {} connections so far, {} open from the attackers' side (peak {})",
        attack.connects.load(Ordering::Relaxed),
        attack.open.load(Ordering::Relaxed),
        attack.peak.load(Ordering::Relaxed)
    );

    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    // /healthz on the attacked listener and on the admin listener.
    for i in 0..10 {
        let t = Instant::now();
        let r = fresh.get(d.url("/healthz")).send().await;
        let r = r.unwrap_or_else(|e| panic!("/healthz #{i} on the attacked listener failed: {e}"));
        assert_eq!(r.status(), 200);
        eprintln!("/healthz under attack: {:?}", t.elapsed());
        let r = fresh.get(d.admin_url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // A push through the attacked listener is recorded and delivered.
    let t = Instant::now();
    let status = push(&fresh, &d, "flood.1", "5551230001").await.unwrap();
    assert_eq!(status, 200);
    eprintln!("push under attack: {:?}", t.elapsed());
    // The AMI link fails and must come back: a new socket, while thousands
    // of HTTP clients want descriptors.
    proxy.cut();
    let deadline = Instant::now() + WAIT;
    loop {
        let text = d.metrics_text().await.unwrap_or_default();
        if sample(&text, "callhook_ami_reconnects_total{pbx=\"main\"}").unwrap_or(0.0) >= 1.0
            && sample(&text, "callhook_ami_connection_state{pbx=\"main\"}") == Some(2.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the AMI client never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sim.logins() >= 2);
    // Webhooks keep flowing: the pushed call's screen-pop and the call log
    // of the call the PBX plays after the reconnect.
    let deadline = Instant::now() + WAIT;
    loop {
        let got = sink.received();
        let pop = got
            .iter()
            .any(|r| r.path() == "/pop" && r.uri.contains("pi=5551230001"));
        let logs = got.iter().filter(|r| r.path() == "/calls").count();
        if pop && logs >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhooks stopped under attack: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = fresh.get(d.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Sustained: 15 s more (past the header timeout, the slowloris trickle
    // going on), a health check and a push every half second.
    let until = Instant::now() + Duration::from_secs(15);
    let mut worst = Duration::ZERO;
    let mut n = 0;
    while Instant::now() < until {
        let t = Instant::now();
        let r = fresh.get(d.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            push(&fresh, &d, &format!("flood.s{n}"), "5551230002")
                .await
                .unwrap(),
            200
        );
        worst = worst.max(t.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{n} health checks + pushes during 15 s of attack, slowest pair {worst:?}");

    // What the daemon went through, in its own numbers.
    let text = d.metrics_text().await.unwrap();
    let get = |s: &str| sample(&text, s).unwrap_or(0.0);
    let evicted =
        get("callhook_http_connections_closed_total{listener=\"listen\",reason=\"evicted\"}");
    let timeouts = get(
        "callhook_http_connections_closed_total{listener=\"listen\",reason=\"header_timeout\"}",
    );
    let fds = get("process_open_fds");
    eprintln!("evicted {evicted}, header timeouts {timeouts}, open fds {fds}");
    assert!(
        evicted + timeouts >= 4000.0,
        "evicted {evicted} + timed out {timeouts}"
    );
    assert!(fds < 1024.0);
    assert_eq!(
        get("callhook_http_connections_refused_total{listener=\"listen\",reason=\"accept_error\"}"),
        0.0
    );
    drop(attack);
    let (_, status, err) = d.stop();
    assert!(status.success(), "{err}");
    assert!(!err.contains("Too many open files"), "{err}");
    // Thousands of evictions, a handful of log lines.
    let lines = err.matches("closed the oldest idle connection").count();
    assert!((1..=20).contains(&lines), "{lines} eviction lines");
}

/// Reads until the server closes (or WAIT passes: panics).
async fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Err(_) => panic!("the daemon never closed the connection"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_body_limits_and_the_per_client_cap_on_the_real_binary() {
    let sink = Sink::start().await;
    let dir = temp_dir("http-limits");
    let listen = free_port();
    // One listener for everything (no admin.listen).
    let cfg = config(
        &dir,
        listen,
        None,
        &sink.addr.to_string(),
        "token: \"${E2E_ADMIN_TOKEN}\"",
        "header_timeout: 1s, idle_timeout: 1500ms, body_timeout: 1s, max_body: 2048, max_connections_per_ip: 5",
    );
    let d = Daemon::start(&cfg, &dir, &env());
    d.wait_http().await;
    let addr = d.listen.unwrap();
    // A slowloris head: closed at the header timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let t = Instant::now();
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(b"a").await.is_err() {
                return;
            }
            let mut b = [0u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await
            {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, trickle)
        .await
        .expect("never closed");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // An idle keep-alive: closed after the idle timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = String::from_utf8(read_to_eof(&mut s).await).unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // A body that stops coming: 408.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /v1/events/astercc HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\nsessionid=1",
    )
    .await
    .unwrap();
    let r = String::from_utf8(read_to_eof(&mut s).await).unwrap();
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    // A body over max_body: 413.
    let client = reqwest::Client::new();
    let r = client
        .post(d.url("/v1/events/astercc"))
        .header("X-Callhook-Token", PUSH)
        .body("x".repeat(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // One address opens 30 idle connections: it never holds more than 5,
    // and its own real request still gets through.
    let accepted = "callhook_http_connections_accepted_total{listener=\"listen\"}";
    let before = d.metric(accepted).await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..30 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let deadline = Instant::now() + WAIT;
    // (Each scrape is a connection too: at least 30 more.)
    while d.metric(accepted).await.unwrap_or(0.0) < before + 31.0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        push(&client, &d, "limits.1", "5550001111").await.unwrap(),
        200
    );
    // Evicted connections are closed at once (the gauge counts them until
    // their socket is closed).
    let deadline = Instant::now() + WAIT;
    loop {
        let open = d
            .metric("callhook_http_connections{listener=\"listen\"}")
            .await;
        if open.is_some_and(|n| n <= 5.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open:?} open connections from one address"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = d.metrics_text().await.unwrap();
    let get = |s: &str| sample(&text, s).unwrap_or(-1.0);
    assert!(
        get("callhook_http_connections_closed_total{listener=\"listen\",reason=\"evicted\"}")
            >= 25.0
    );
    assert_eq!(
        get(
            "callhook_http_connections_closed_total{listener=\"listen\",reason=\"header_timeout\"}"
        ),
        1.0
    );
    assert!(
        get("callhook_http_connections_closed_total{listener=\"listen\",reason=\"idle_timeout\"}")
            >= 1.0
    );
    assert_eq!(
        get("callhook_http_connections_closed_total{listener=\"listen\",reason=\"body_timeout\"}"),
        1.0
    );
    assert_eq!(
        get(
            "callhook_http_connections_closed_total{listener=\"listen\",reason=\"body_too_large\"}"
        ),
        1.0
    );
    // Every series of the listener exists (at 0 where nothing happened).
    assert_eq!(
        get("callhook_http_connections_refused_total{listener=\"listen\",reason=\"total_cap\"}"),
        0.0
    );
    drop(idle);
    let (_, status, err) = d.stop();
    assert!(status.success(), "{err}");
    assert_eq!(err.matches("header_timeout").count(), 1, "{err}");
    let evictions = err.matches("closed the oldest idle connection").count();
    assert!(
        (1..=3).contains(&evictions),
        "rate-limited: {evictions} lines\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_token_and_stay_on_the_admin_listener() {
    let sink = Sink::start().await;
    let dir = temp_dir("http-exposure");
    let (listen, admin) = (free_port(), free_port());
    let cfg = config(
        &dir,
        listen,
        None,
        &sink.addr.to_string(),
        &format!("token: \"${{E2E_ADMIN_TOKEN}}\", listen: 127.0.0.1:{admin}"),
        "",
    );
    let d = Daemon::start(&cfg, &dir, &env());
    d.wait_http().await;
    let c = reqwest::Client::new();
    let code = |r: reqwest::Response| r.status().as_u16();
    // The public listener: the push endpoint and /healthz, nothing else.
    assert_eq!(code(c.get(d.url("/healthz")).send().await.unwrap()), 200);
    for (m, p) in [
        ("GET", "/metrics"),
        ("GET", "/readyz"),
        ("POST", "/-/reload"),
        ("GET", "/api/outbox"),
        ("GET", "/api/deliveries"),
        ("POST", "/api/deliveries/retry-dead"),
    ] {
        let r = c
            .request(m.parse().unwrap(), d.url(p))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(code(r), 404, "{m} {p} on the public listener");
    }
    assert_eq!(push(&c, &d, "exp.1", "5550002222").await.unwrap(), 200);
    // The admin listener: /metrics, /readyz and /healthz open …
    for p in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            code(c.get(d.admin_url(p)).send().await.unwrap()),
            200,
            "{p}"
        );
    }
    // … reload and the admin API only with the token.
    std::fs::write(
        dir.join("callhook.yaml"),
        cfg.replace("%CALLER_ID%", "%CALLER_IDD%"),
    )
    .unwrap();
    for (m, p) in [
        ("POST", "/-/reload"),
        ("GET", "/api/outbox"),
        ("GET", "/api/deliveries"),
        ("GET", "/api/deliveries/1"),
        ("POST", "/api/deliveries/1/retry"),
        ("POST", "/api/deliveries/retry-dead"),
    ] {
        for token in [None, Some("wrong-token"), Some("")] {
            let mut rq = c.request(m.parse().unwrap(), d.admin_url(p));
            if let Some(t) = token {
                rq = rq.bearer_auth(t);
            }
            let r = rq.send().await.unwrap();
            assert_eq!(r.status(), 401, "{m} {p} with {token:?}");
            let body = r.text().await.unwrap();
            assert!(
                !body.contains("CALLER_IDD") && !body.contains(".yaml") && !body.contains("rule"),
                "{m} {p}: {body}"
            );
        }
    }
    assert_eq!(
        d.metric("callhook_admin_unauthorized_total").await,
        Some(18.0)
    );
    // The anonymous reloads changed nothing.
    assert_eq!(
        d.metric("callhook_config_reloads_total{outcome=\"failure\"}")
            .await,
        Some(0.0)
    );
    let r = c
        .post(d.admin_url("/-/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("CALLER_IDD"));
    std::fs::write(dir.join("callhook.yaml"), &cfg).unwrap();
    let r = c
        .post(d.admin_url("/-/reload"))
        .header("authorization", format!("bearer {ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(d.admin_url("/api/outbox"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, status, err) = d.stop();
    assert!(status.success(), "{err}");
    // Without an admin token the admin routes are off, SIGHUP still reloads.
    let dir = temp_dir("http-no-token");
    let listen = free_port();
    let cfg = config(&dir, listen, None, &sink.addr.to_string(), "", "");
    let d = Daemon::start(&cfg, &dir, &env());
    d.wait_http().await;
    assert_eq!(code(c.post(d.url("/-/reload")).send().await.unwrap()), 404);
    assert_eq!(
        code(
            c.post(d.url("/-/reload"))
                .bearer_auth("x")
                .send()
                .await
                .unwrap()
        ),
        404
    );
    assert_eq!(code(c.get(d.url("/api/outbox")).send().await.unwrap()), 404);
    d.hup();
    let deadline = Instant::now() + WAIT;
    while d
        .metric("callhook_config_reloads_total{outcome=\"success\"}")
        .await
        != Some(1.0)
    {
        assert!(Instant::now() < deadline, "SIGHUP reload never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_is_told_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let sink = Sink::start().await;
    let dir = temp_dir("http-notify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let listen = free_port();
    let cfg = config(&dir, listen, None, &sink.addr.to_string(), "", "");
    let mut env = env();
    let sock_str = sock_path.to_str().unwrap().to_string();
    env.push(("NOTIFY_SOCKET", &sock_str));
    env.push(("WATCHDOG_USEC", "600000"));
    let d = Daemon::start(&cfg, &dir, &env);
    let mut buf = [0u8; 1024];
    let recv = |buf: &mut [u8]| {
        let n = sock.recv(buf).expect("no notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let first = recv(&mut buf);
    assert!(first.starts_with("READY=1\n"), "{first}");
    assert!(first.contains("STATUS=running"), "{first}");
    // Ready means serving: no retry needed.
    let r = reqwest::get(d.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    // The watchdog every half WATCHDOG_USEC.
    let t = Instant::now();
    for _ in 0..4 {
        assert_eq!(recv(&mut buf), "WATCHDOG=1");
    }
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(800), "{took:?}");
    let stopper = std::thread::spawn(move || d.stop());
    loop {
        let m = recv(&mut buf);
        if m.starts_with("STOPPING=1") {
            break;
        }
        assert_eq!(m, "WATCHDOG=1");
    }
    let (_, status, err) = stopper.join().unwrap();
    assert!(status.success(), "{err}");
}
