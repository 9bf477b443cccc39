//! The listener under attack, byte by byte: `http::server` on 127.0.0.1
//! with small limits, driven by raw TCP clients (slow heads, slow bodies,
//! idle keep-alives, a full cap, a busy server, long-lived upgrades,
//! shutdown). Every test has its own `listener` label, so the process-wide
//! counters it reads are its own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Extension;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use callhook::http::limits::HttpLimits;
use callhook::http::server::{self, ConnectionHandle, ServeOptions};
use callhook::metrics::metrics;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Safety net for every wait.
const WAIT: Duration = Duration::from_secs(30);

struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(name: &'static str, limits: HttpLimits, router: Router) -> Server {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stop = CancellationToken::new();
    let opts = ServeOptions {
        name,
        limits,
        shutdown_grace: Duration::from_secs(10),
    };
    let task = tokio::spawn(server::serve(l, router, opts, stop.clone()));
    Server { addr, stop, task }
}

fn limits() -> HttpLimits {
    HttpLimits {
        max_connections: 100,
        max_connections_per_ip: 100,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        max_body: 64 * 1024,
    }
}

fn basic() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/echo", post(|b: axum::body::Bytes| async move { b }))
}

fn closed(name: &str, reason: &str) -> u64 {
    metrics()
        .http_connections_closed
        .with_label_values(&[name, reason])
        .get()
}

fn refused(name: &str, reason: &str) -> u64 {
    metrics()
        .http_connections_refused
        .with_label_values(&[name, reason])
        .get()
}

fn open(name: &str) -> i64 {
    metrics().http_connections.with_label_values(&[name]).get()
}

/// Reads until EOF (or reset); the bytes read. Panics after WAIT.
async fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!("the server never closed the connection"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response (head and `Content-Length` body) from a kept-alive connection.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text;
            }
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {text:?}");
        out.extend_from_slice(&buf[..n]);
    }
}

/// Waits until `f` holds (polling), panicking after WAIT.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_head_is_closed_at_the_header_timeout() {
    let name = "t-slowloris";
    let l = HttpLimits {
        header_timeout: Duration::from_millis(600),
        ..limits()
    };
    let srv = start(name, l, basic()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    // One header byte every 100 ms, never finishing the head.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, trickle).await;
    assert!(started.elapsed() >= Duration::from_millis(550));
    assert_eq!(closed(name, "header_timeout"), 1);
    // A client that sends its head at once is served.
    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    c.write_all(GET).await.unwrap();
    assert!(read_response(&mut c).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let name = "t-idle";
    let l = HttpLimits {
        idle_timeout: Duration::from_millis(800),
        ..limits()
    };
    let srv = start(name, l, basic()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    for _ in 0..3 {
        s.write_all(GET).await.unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
        // Each request restarts the idle clock.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let idle_from = Instant::now();
    assert!(read_to_eof(&mut s).await.is_empty());
    assert!(idle_from.elapsed() >= Duration::from_millis(500));
    assert_eq!(closed(name, "idle_timeout"), 1);
    eventually("the slot is free", || open(name) == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_get_408_and_large_ones_413() {
    let name = "t-body";
    let l = HttpLimits {
        body_timeout: Duration::from_millis(500),
        max_body: 4096,
        ..limits()
    };
    let srv = start(name, l, basic()).await;
    // Slow: 10 of 100 bytes, then nothing.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let r = String::from_utf8(read_to_eof(&mut s).await).unwrap();
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert_eq!(closed(name, "body_timeout"), 1);
    // Declared too large: refused before reading.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    let r = String::from_utf8(read_to_eof(&mut s).await).unwrap();
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    // Chunked, growing past the limit.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("1000\r\n{}\r\n", "z".repeat(4096));
    let _ = s.write_all(chunk.as_bytes()).await;
    let _ = s.write_all(chunk.as_bytes()).await;
    let r = String::from_utf8_lossy(&read_to_eof(&mut s).await).to_string();
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert_eq!(closed(name, "body_too_large"), 2);
    // Within the limits: echoed.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("hello"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_oldest_idle_connection_makes_room() {
    let name = "t-cap";
    let l = HttpLimits {
        max_connections: 10,
        ..limits()
    };
    let srv = start(name, l, basic()).await;
    let mut idle = Vec::new();
    for i in 0..10 {
        idle.push(TcpStream::connect(srv.addr).await.unwrap());
        eventually("accepted", || open(name) == i + 1).await;
    }
    // The cap is full of connections that sent nothing: a real client gets in.
    let mut served = Vec::new();
    for _ in 0..5 {
        let mut c = TcpStream::connect(srv.addr).await.unwrap();
        c.write_all(GET).await.unwrap();
        assert!(read_response(&mut c).await.starts_with("HTTP/1.1 200"));
        served.push(c);
    }
    assert_eq!(closed(name, "evicted"), 5);
    eventually("at most the cap open", || open(name) <= 10).await;
    // The oldest went first.
    for s in &mut idle[..5] {
        assert!(read_to_eof(s).await.is_empty());
    }
    // The kept-alive clients still have their connection.
    for c in &mut served {
        c.write_all(GET).await.unwrap();
        assert!(read_response(c).await.starts_with("HTTP/1.1 200"));
    }
    assert_eq!(refused(name, "total_cap"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_slot_nor_lock_itself_out() {
    let name = "t-per-ip";
    let l = HttpLimits {
        max_connections: 100,
        max_connections_per_ip: 3,
        ..limits()
    };
    let srv = start(name, l, basic()).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    eventually("20 handled", || {
        metrics()
            .http_connections_accepted
            .with_label_values(&[name])
            .get()
            == 20
    })
    .await;
    eventually("at most 3 open", || open(name) <= 3).await;
    // From the same address, a request still gets through.
    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    c.write_all(GET).await.unwrap();
    assert!(read_response(&mut c).await.starts_with("HTTP/1.1 200"));
    assert!(closed(name, "evicted") >= 18);
}

/// A router whose `/wait` counts the requests inside it (`entered`) and
/// holds them until a permit is added to `gate`.
fn waiting(gate: Arc<Semaphore>, entered: Arc<AtomicUsize>) -> Router {
    basic().route(
        "/wait",
        get(move || {
            let gate = gate.clone();
            let entered = entered.clone();
            async move {
                entered.fetch_add(1, Ordering::SeqCst);
                let _p = gate.acquire().await.unwrap();
                "done\n"
            }
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_being_handled_are_never_cut_and_a_busy_server_says_503() {
    let name = "t-busy";
    let gate = Arc::new(Semaphore::new(0));
    let l = HttpLimits {
        max_connections: 3,
        ..limits()
    };
    let entered = Arc::new(AtomicUsize::new(0));
    let srv = start(name, l, waiting(gate.clone(), entered.clone())).await;
    let mut busy = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        busy.push(s);
    }
    // All three inside the handler: not evictable any more.
    eventually("3 handling", || entered.load(Ordering::SeqCst) == 3).await;
    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    let r = String::from_utf8_lossy(&read_to_eof(&mut c).await).to_string();
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("Retry-After: 1"),
        "{r}"
    );
    assert_eq!(refused(name, "total_cap"), 1);
    gate.add_permits(3);
    for s in &mut busy {
        assert!(read_response(s).await.ends_with("done\n"));
    }
    assert_eq!(closed(name, "evicted"), 0);
}

/// `/upgrade`: switches to a line echo protocol, held for its lifetime.
async fn upgrade(Extension(conn): Extension<ConnectionHandle>, mut req: Request<Body>) -> Response {
    let held = conn.hold();
    let stop = conn.shutdown();
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _held = held;
        let Ok(up) = on.await else { return };
        let mut io = TokioIo::new(up);
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = io.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_outlives_the_idle_timeout_and_keeps_its_slot() {
    let name = "t-upgrade";
    let l = HttpLimits {
        max_connections: 2,
        idle_timeout: Duration::from_millis(300),
        header_timeout: Duration::from_millis(300),
        ..limits()
    };
    let srv = start(name, l, basic().route("/upgrade", get(upgrade))).await;
    let mut up = TcpStream::connect(srv.addr).await.unwrap();
    up.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_response(&mut up).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Well past the idle and header timeouts.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    up.write_all(b"ping\n").await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(WAIT, up.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping\n");
    // It still counts against the cap, and is never the one evicted.
    assert_eq!(open(name), 1);
    for _ in 0..3 {
        let mut c = TcpStream::connect(srv.addr).await.unwrap();
        c.write_all(GET).await.unwrap();
        assert!(read_response(&mut c).await.starts_with("HTTP/1.1 200"));
    }
    up.write_all(b"pong\n").await.unwrap();
    tokio::time::timeout(WAIT, up.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"pong\n");
    // Closing it frees the slot.
    drop(up);
    eventually("slot released", || open(name) <= 1).await;
    // Shutdown ends the long-lived handler too.
    let mut up = TcpStream::connect(srv.addr).await.unwrap();
    up.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(read_response(&mut up).await.starts_with("HTTP/1.1 101"));
    srv.stop.cancel();
    assert!(read_to_eof(&mut up).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_lets_requests_finish() {
    let name = "t-shutdown";
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let mut srv = start(name, limits(), waiting(gate.clone(), entered.clone())).await;
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    let mut busy = TcpStream::connect(srv.addr).await.unwrap();
    busy.write_all(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually("2 open", || open(name) == 2).await;
    eventually("1 handling", || entered.load(Ordering::SeqCst) == 1).await;
    srv.stop.cancel();
    assert!(read_to_eof(&mut idle).await.is_empty());
    gate.add_permits(1);
    let r = String::from_utf8(read_to_eof(&mut busy).await).unwrap();
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("done\n"),
        "{r}"
    );
    tokio::time::timeout(WAIT, &mut srv.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
