//! The live hub under load: N WebSocket clients of one tenant (all with the
//! monitor scope: every message goes to every client, the worst case) while
//! the simulator replays `load-dev.ami` (150 overlapping real calls) at 10×
//! speed into the real daemon (`app::run_until`, in process, on loopback).
//!
//! Reports messages delivered per second (all clients), the event → client
//! latency (from the moment the normalizer task hands the committed batch to
//! the hub until a client has parsed the message: p50/p99/max over every
//! message of every client), and the memory per connected client (RSS
//! growth when the clients connect / N; both ends of each connection live
//! in this process, so it is an upper bound for the server side).
//!
//! `cargo bench --bench live` (N=1000; `LIVE_BENCH_CLIENTS=200` for fewer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callhook::ami::simulator::{AfterCapture, Simulator};
use callhook::app::{self, RunOptions};
use callhook::config::Config;
use callhook::model::ModelEvent;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

const KEY: &str = "bench-live-key-0123456789";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

type Published = Arc<Mutex<HashMap<(String, String, &'static str), Instant>>>;

fn key_of(e: &ModelEvent) -> Option<(String, String, &'static str)> {
    match e {
        ModelEvent::Leg(l) => Some((
            l.session_id.clone(),
            l.extension.clone(),
            match l.state {
                callhook::model::State::Ringing => "call.ringing",
                callhook::model::State::Answered => "call.answered",
                callhook::model::State::Hungup => "call.hungup",
            },
        )),
        _ => None,
    }
}

fn main() {
    let n: usize = std::env::var("LIVE_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(n));
}

async fn run(n: usize) {
    let cap = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ami/asterisk-20/load-dev.ami"
    ))
    .expect("load-dev.ami");
    let sim = Simulator::new("u", "secret-0123")
        .gated()
        .speed(Some(10.0))
        .session(cap, AfterCapture::StayOpen)
        .start()
        .await
        .expect("simulator");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = http.local_addr().expect("addr");
    let state = std::env::temp_dir().join(format!("callhook-bench-live-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let text = format!(
        "state_dir: {}\nlisten: {addr}\npbx:\n  - id: main\n    ami: {{ host: 127.0.0.1, port: {}, username: u, secret: secret-0123, auth: plain }}\nhttp: {{ max_connections: {}, max_connections_per_ip: {} }}\nlive:\n  tenants:\n    main: {{ key: {KEY}, code: 1 }}\n  connections_per_minute_per_ip: 1000000\n  max_clients: {}\n  max_clients_per_tenant: {}\n",
        state.display(),
        sim.local_addr().port(),
        n + 64,
        n + 64,
        n + 64,
        n + 64,
    );
    let cfg =
        Config::from_text(&text, std::path::Path::new(".")).unwrap_or_else(|e| panic!("{e:?}"));
    let published: Published = Arc::new(Mutex::new(HashMap::new()));
    let p2 = published.clone();
    let observer = Box::new(move |evs: &[ModelEvent]| {
        let now = Instant::now();
        let mut m = p2.lock().unwrap_or_else(|e| e.into_inner());
        for e in evs {
            if let Some(k) = key_of(e) {
                m.entry(k).or_insert(now);
            }
        }
    });
    let token = CancellationToken::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let app = tokio::spawn(app::run_until(
        cfg,
        RunOptions {
            listener: Some(http),
            observer: Some(observer),
            ..RunOptions::default()
        },
        token.clone(),
        reload_tx,
        reload_rx,
        |_| {},
    ));
    sim.wait_for(|s| s.logins >= 1).await;

    let before = rss_kib();
    let url = format!("ws://{addr}/v1/live?tenant=main&extension=999&key={KEY}");
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        // hello + snapshot
        for _ in 0..2 {
            let _ = ws.next().await;
        }
        clients.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    let lat: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for mut ws in clients {
        let (lat, total, published, stop) =
            (lat.clone(), total.clone(), published.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = ws.next() => m,
                };
                let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = m else {
                    if m.is_none() {
                        break;
                    }
                    continue;
                };
                let now = Instant::now();
                total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                    continue;
                };
                let kind = v["type"].as_str().unwrap_or("");
                let kind: &'static str = match kind {
                    "call.ringing" => "call.ringing",
                    "call.answered" => "call.answered",
                    "call.hungup" => "call.hungup",
                    _ => continue,
                };
                let k = (
                    v["session_id"].as_str().unwrap_or("").to_string(),
                    v["extension"].as_str().unwrap_or("").to_string(),
                    kind,
                );
                let t0 = published
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&k)
                    .copied();
                if let Some(t0) = t0 {
                    mine.push(now.duration_since(t0).as_secs_f64());
                }
            }
            lat.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
        }));
    }
    let t0 = Instant::now();
    sim.release();
    sim.wait_for(|s| s.replays_completed >= 1).await;
    let replay = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let mut l = lat.lock().unwrap_or_else(|e| e.into_inner()).clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
            * 1000.0
    };
    let msgs = total.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "live bench: {n} monitor clients on one tenant, load-dev.ami at 10x ({:.1} s of replay)",
        replay.as_secs_f64()
    );
    println!(
        "  messages delivered: {msgs} ({:.0}/s over the replay, {:.1} per client per second)",
        msgs as f64 / replay.as_secs_f64(),
        msgs as f64 / replay.as_secs_f64() / n as f64
    );
    println!(
        "  event -> client latency over {} call messages: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
    println!("  memory: {:.1} KiB per connected client (RSS {before} -> {after} KiB; both ends in this process)", (after.saturating_sub(before)) as f64 / n as f64);
    token.cancel();
    let _ = app.await;
    let _ = std::fs::remove_dir_all(&state);
}
