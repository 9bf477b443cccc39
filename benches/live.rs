//! The live hub under load, against baselines measured in the same run.
//!
//! N WebSocket clients of one tenant (all with the monitor scope: every
//! message goes to every client, the worst case) run in a **separate
//! process** (this binary again, `LIVE_BENCH_ROLE=clients`), so the
//! daemon's figures are not the clients' CPU (both share the machine's
//! cores, as they would on a one-box install).
//!
//! 1. **callhook**: the real daemon (`app::run_until`, in this process, on
//!    loopback) while the simulator replays `load-dev.ami` (150 overlapping
//!    real calls) at 10× speed. Latency of a `call.*` message: from the
//!    normalizer task handing the committed batch to the hub until a
//!    client read the frame (wall clock, shared by both processes).
//! 2. **baselines**, the same messages the first client received in run 1,
//!    on the same schedule (each `call.*` at the moment its batch was
//!    committed in run 1; messages due together form one burst), through a
//!    bare `tokio::sync::broadcast` (see `live/baseline.rs`): (a) the
//!    cheapest fan-out, each burst's frames encoded once and written to
//!    each socket with one write; (b) raw tokio-tungstenite sockets, each
//!    encoding every message itself. Latency: from the broadcast send until
//!    a client read the frame.
//!
//! **What is measured.** Latency over every `call.*` message of every
//! client, the same set in every run. `presence` messages are delivered and
//! counted in msg/s but not timed: in callhook most come from the presence
//! tracker's own path, which has no publish timestamp the bench can see
//! (in the lead's 21:00 figures, 541 000 of 609 000 callhook messages were
//! "measured": the other 68 per client were these; the old baseline timed
//! them too, so its set differed).
//!
//! **Memory** per client: heap growth (a counting global allocator) from
//! before the clients connect to after they got hello + snapshot, and to
//! the end of the replay. RSS growth was not comparable: the second run
//! reused pages the first one freed.
//!
//! **Cost** per delivered message: CPU time (user + system) of the server
//! process and of the client process, from the start of the replay to the
//! stop (`/proc/self/stat`):
//! with every client due the same burst at once, the last client's latency
//! is about (clients × per-message cost) / cores, which is what bounds p99.
//!
//! `cargo bench --bench live` (N=1000; `LIVE_BENCH_CLIENTS=300` for fewer).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callhook::ami::simulator::{AfterCapture, Simulator};
use callhook::app::{self, RunOptions};
use callhook::config::Config;
use callhook::model::ModelEvent;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[path = "live/baseline.rs"]
mod baseline;
#[path = "../tests/support_tmp/mod.rs"]
mod support_tmp;
use baseline::{Burst, Kind};
use support_tmp::TestDir;

const KEY: &str = "bench-live-key-0123456789";

/// Counts the bytes the process holds on the heap: the memory a client
/// costs is measured as heap growth, the same way in every run of this
/// process (RSS growth is not: the second run reuses pages the first one
/// freed and looked almost free).
struct Counting;

static HEAP: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments and
// only adds bookkeeping on an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            HEAP.fetch_add(l.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            HEAP.fetch_add(l.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(p, l) };
        HEAP.fetch_sub(l.size() as i64, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: the caller upholds `realloc`'s contract.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            HEAP.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn heap_bytes() -> i64 {
    HEAP.load(Ordering::Relaxed)
}

/// This process' CPU time so far (user + system, s; `/proc/self/stat`).
/// (Its socket syscalls cannot be counted this way: `/proc/self/io`
/// counts `read`/`write`, and tokio's sockets use `recv`/`send`.)
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_s: f64,
}

impl Usage {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let f: Vec<f64> = stat
            .rsplit_once(')')
            .map(|(_, r)| {
                r.split_whitespace()
                    .map(|v| v.parse().unwrap_or(0.0))
                    .collect()
            })
            .unwrap_or_default();
        // utime, stime: fields 14 and 15, in ticks of 1/100 s.
        let cpu_s = (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0;
        Self { cpu_s }
    }

    fn since(self, before: Usage) -> Usage {
        Usage {
            cpu_s: self.cpu_s - before.cpu_s,
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
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
    if std::env::var("LIVE_BENCH_ROLE").as_deref() == Ok("clients") {
        rt.block_on(clients(n));
    } else {
        rt.block_on(bench(n));
    }
}

// ----- the client process ---------------------------------------------------

/// `"seq":N` of a message without parsing it all.
fn seq_of(t: &str) -> Option<u64> {
    let i = t.find("\"seq\":")? + 6;
    let digits: String = t[i..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// (session, extension, type) of a `call.*` message.
fn call_key(v: &Value) -> Option<(String, String, String)> {
    let kind = v["type"].as_str()?;
    if !kind.starts_with("call.") {
        return None;
    }
    Some((
        v["session_id"].as_str()?.to_string(),
        v["extension"].as_str()?.to_string(),
        kind.to_string(),
    ))
}

/// Connects N clients, says `ready`, records (seq, receive time) of every
/// frame until `stop T0FILE LOGFILE` on stdin, then prints the figures.
async fn clients(n: usize) {
    let url = std::env::var("LIVE_BENCH_URL").expect("LIVE_BENCH_URL");
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        for _ in 0..2 {
            let _ = ws.next().await; // hello + snapshot
        }
        socks.push(ws);
    }
    println!("ready");
    let ready = Usage::now();
    let stop = CancellationToken::new();
    let total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, mut ws) in socks.into_iter().enumerate() {
        let (stop, total) = (stop.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            let mut got: Vec<(u64, u64)> = Vec::new();
            let mut texts: Vec<(u64, String)> = Vec::new();
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = ws.next() => m,
                };
                let t = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    _ => break,
                };
                let at = now_ns();
                total.fetch_add(1, Ordering::Relaxed);
                if let Some(s) = seq_of(&t) {
                    got.push((s, at));
                }
                if i == 0 {
                    texts.push((at, t));
                }
            }
            (got, texts)
        }));
    }
    let line = tokio::task::spawn_blocking(|| {
        let mut l = String::new();
        let _ = std::io::stdin().read_line(&mut l);
        l
    })
    .await
    .unwrap_or_default();
    let used = Usage::now().since(ready);
    stop.cancel();
    let mut all: Vec<Vec<(u64, u64)>> = Vec::new();
    let mut log: Vec<(u64, String)> = Vec::new();
    for t in tasks {
        if let Ok((g, texts)) = t.await {
            all.push(g);
            if !texts.is_empty() {
                log = texts;
            }
        }
    }
    let mut parts = line.split_whitespace().skip(1);
    let (t0_file, log_file) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let t0: Value = std::fs::read(t0_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    // seq → publish time.
    let mut by_seq: HashMap<u64, u64> = HashMap::new();
    if let Some(rows) = t0["by_seq"].as_array() {
        for r in rows {
            if let (Some(s), Some(t)) = (r[0].as_u64(), r[1].as_u64()) {
                by_seq.insert(s, t);
            }
        }
    }
    if let Some(rows) = t0["by_key"].as_array() {
        let keys = publish_times(rows);
        let mut nth: HashMap<(String, String, String), usize> = HashMap::new();
        for (_, t) in &log {
            let Ok(v) = serde_json::from_str::<Value>(t) else {
                continue;
            };
            if let (Some(k), Some(s)) = (call_key(&v), v["seq"].as_u64()) {
                let i = nth.entry(k.clone()).or_default();
                if let Some(t) = keys.get(&k).and_then(|ts| ts.get(*i)) {
                    by_seq.insert(s, *t);
                }
                *i += 1;
            }
        }
    }
    let mut lat: Vec<f64> = Vec::new();
    let (mut first, mut last) = (u64::MAX, 0u64);
    for g in &all {
        for (s, at) in g {
            first = first.min(*at);
            last = last.max(*at);
            if let Some(t) = by_seq.get(s) {
                lat.push(at.saturating_sub(*t) as f64 / 1e6);
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    if !log_file.is_empty() {
        let rows: Vec<Value> = log.iter().map(|(at, t)| json!([at, t])).collect();
        let _ = std::fs::write(log_file, Value::Array(rows).to_string());
    }
    println!(
        "{}",
        json!({
            "messages": total.load(Ordering::Relaxed),
            "first_ns": first,
            "last_ns": last,
            "measured": lat.len(),
            "p50": q(0.5),
            "p99": q(0.99),
            "max": q(1.0),
            "client_heap_kib": heap_bytes() / 1024,
            "client_cpu_s": used.cpu_s,
        })
    );
}

/// `[[session, extension, type, [t0, …]], …]` → key → publish times.
fn publish_times(rows: &[Value]) -> HashMap<(String, String, String), Vec<u64>> {
    rows.iter()
        .filter_map(|r| {
            Some((
                (
                    r[0].as_str()?.to_string(),
                    r[1].as_str()?.to_string(),
                    r[2].as_str()?.to_string(),
                ),
                r[3].as_array()?.iter().filter_map(Value::as_u64).collect(),
            ))
        })
        .collect()
}

// ----- the server side ------------------------------------------------------

/// The client process, with its stdout as lines.
struct ClientProc {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ClientProc {
    fn spawn(url: &str, n: usize) -> Self {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = std::process::Command::new(exe)
            .env("LIVE_BENCH_ROLE", "clients")
            .env("LIVE_BENCH_URL", url)
            .env("LIVE_BENCH_CLIENTS", n.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("client process");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self { child, lines: rx }
    }

    async fn line(&self) -> String {
        loop {
            match self.lines.try_recv() {
                Ok(l) => return l,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(_) => panic!("the client process ended"),
            }
        }
    }

    async fn finish(mut self, t0_file: &str, log_file: &str) -> Value {
        let mut stdin = self.child.stdin.take().expect("stdin");
        writeln!(stdin, "stop {t0_file} {log_file}").expect("stop");
        drop(stdin);
        let l = self.line().await;
        let _ = self.child.wait();
        serde_json::from_str(&l).unwrap_or(Value::Null)
    }
}

struct Run {
    name: &'static str,
    result: Value,
    replay_s: f64,
    /// Heap growth per client once connected (hello + snapshot sent).
    kib_per_client: f64,
    /// Heap growth per client at the end of the replay (includes what
    /// the run keeps for everybody: callhook's resume ring, the
    /// broadcast channel's messages).
    kib_per_client_after: f64,
    /// The server process' CPU from the start of the replay
    /// until the clients stop.
    server: Usage,
}

async fn bench(n: usize) {
    let dir = TestDir::new("bench-live");
    let (t0_a, log_a) = (dir.join("t0-callhook.json"), dir.join("log.json"));
    let a = run_callhook(n, &dir, &t0_a, &log_a).await;
    let schedule = schedule(&log_a, &t0_a);
    let mut base = Vec::new();
    for kind in [Kind::Raw, Kind::Tungstenite] {
        base.push(run_baseline(kind, n, &dir, &schedule).await);
    }
    report(n, &a, &base);
}

async fn run_callhook(
    n: usize,
    dir: &std::path::Path,
    t0_file: &std::path::Path,
    log_file: &std::path::Path,
) -> Run {
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
    let m = n + 64;
    let text = format!(
        "state_dir: {}\nlisten: {addr}\npbx:\n  - id: main\n    ami: {{ host: 127.0.0.1, port: {}, username: u, secret: secret-0123, auth: plain }}\nhttp: {{ max_connections: {m}, max_connections_per_ip: {m} }}\nlive:\n  tenants:\n    main: {{ key: {KEY}, code: 1 }}\n  connections_per_minute_per_ip: 1000000\n  max_clients: {m}\n  max_clients_per_tenant: {m}\n",
        dir.join("state").display(),
        sim.local_addr().port(),
    );
    let cfg =
        Config::from_text(&text, std::path::Path::new(".")).unwrap_or_else(|e| panic!("{e:?}"));
    // Every publish time of a key, in order: an extension can ring twice
    // in one call (a queue's retry); the n-th message with a key is the
    // n-th publish.
    type Key = (String, String, &'static str);
    let published: Arc<Mutex<HashMap<Key, Vec<u64>>>> = Arc::new(Mutex::new(HashMap::new()));
    let p2 = published.clone();
    let observer = Box::new(move |evs: &[ModelEvent]| {
        let now = now_ns();
        let mut m = p2.lock().unwrap_or_else(|e| e.into_inner());
        for e in evs {
            if let ModelEvent::Leg(l) = e {
                let kind = match l.state {
                    callhook::model::State::Ringing => "call.ringing",
                    callhook::model::State::Answered => "call.answered",
                    callhook::model::State::Hungup => "call.hungup",
                };
                m.entry((l.session_id.to_string(), l.extension.to_string(), kind))
                    .or_default()
                    .push(now);
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = heap_bytes();
    let url = format!("ws://{addr}/v1/live?tenant=main&extension=999&key={KEY}");
    let clients = ClientProc::spawn(&url, n);
    assert_eq!(clients.line().await, "ready");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = heap_bytes();
    let usage = Usage::now();
    let t0 = std::time::Instant::now();
    sim.release();
    sim.wait_for(|s| s.replays_completed >= 1).await;
    let replay_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end = heap_bytes();
    let server = Usage::now().since(usage);
    let rows: Vec<Value> = published
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|((s, e, k), t)| json!([s, e, k, t]))
        .collect();
    std::fs::write(t0_file, json!({ "by_key": rows }).to_string()).expect("t0 file");
    let result = clients
        .finish(
            &t0_file.display().to_string(),
            &log_file.display().to_string(),
        )
        .await;
    token.cancel();
    let _ = app.await;
    Run {
        name: "callhook (daemon, auth, per-tenant state, queues)",
        result,
        replay_s,
        kib_per_client: (after - before) as f64 / 1024.0 / n as f64,
        kib_per_client_after: (end - before) as f64 / 1024.0 / n as f64,
        server,
    }
}

/// Run 1's messages on run 1's schedule: (due ns, seq, text, is a
/// `call.*`), in publish order. A `call.*` is due when its batch was
/// committed; anything else (presence from the tracker, originate) when
/// the first client read it in run 1.
fn schedule(
    log_file: &std::path::Path,
    t0_callhook: &std::path::Path,
) -> Vec<(u64, u64, Arc<str>, bool)> {
    let log: Vec<(u64, String)> = std::fs::read(log_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<(u64, String)>>(&b).ok())
        .unwrap_or_default();
    let t0: Value = std::fs::read(t0_callhook)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let keys = publish_times(t0["by_key"].as_array().map_or(&[][..], |v| &v[..]));
    let mut nth: HashMap<(String, String, String), usize> = HashMap::new();
    let mut schedule: Vec<(u64, u64, Arc<str>, bool)> = log
        .iter()
        .filter_map(|(at, t)| {
            let v: Value = serde_json::from_str(t).ok()?;
            let seq = v["seq"].as_u64()?;
            let published = call_key(&v).and_then(|k| {
                let i = nth.entry(k.clone()).or_default();
                *i += 1;
                keys.get(&k).and_then(|ts| ts.get(*i - 1)).copied()
            });
            Some((
                published.unwrap_or(*at),
                seq,
                Arc::from(t.as_str()),
                published.is_some(),
            ))
        })
        .collect();
    schedule.sort_by_key(|(when, seq, _, _)| (*seq, *when));
    // Keep the publish order; a time never goes back.
    let mut prev = 0;
    for s in &mut schedule {
        s.0 = s.0.max(prev);
        prev = s.0;
    }
    schedule
}

async fn run_baseline(
    kind: Kind,
    n: usize,
    dir: &std::path::Path,
    schedule: &[(u64, u64, Arc<str>, bool)],
) -> Run {
    let start_ns = schedule.first().map_or(0, |s| s.0);
    let (tx, _) = tokio::sync::broadcast::channel::<Arc<Burst>>(1 << 16);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let serving = tokio::spawn(baseline::serve(kind, listener, tx.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = heap_bytes();
    let clients = ClientProc::spawn(&format!("ws://{addr}/"), n);
    assert_eq!(clients.line().await, "ready");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = heap_bytes();
    let usage = Usage::now();
    let t_start = std::time::Instant::now();
    let mut sent: Vec<Value> = Vec::with_capacity(schedule.len());
    let mut i = 0;
    while i < schedule.len() {
        let due = t_start + Duration::from_nanos(schedule[i].0 - start_ns);
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        // Everything due by now goes out as one burst.
        let now = start_ns + t_start.elapsed().as_nanos() as u64;
        let mut texts = Vec::new();
        while i < schedule.len() && schedule[i].0 <= now {
            texts.push(schedule[i].2.clone());
            i += 1;
        }
        let burst = Arc::new(Burst::new(texts));
        let at = now_ns();
        for (_, seq, _, is_call) in &schedule[i - burst.texts.len()..i] {
            // Only what run 1 measured (its `call.*`): the same set.
            if *is_call {
                sent.push(json!([seq, at]));
            }
        }
        let _ = tx.send(burst);
    }
    let replay_s = t_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end = heap_bytes();
    let server = Usage::now().since(usage);
    let t0_file = dir.join("t0-baseline.json");
    std::fs::write(&t0_file, json!({ "by_seq": sent }).to_string()).expect("t0 file");
    let result = clients.finish(&t0_file.display().to_string(), "").await;
    stop.cancel();
    let _ = serving.await;
    Run {
        name: kind.name(),
        result,
        replay_s,
        kib_per_client: (after - before) as f64 / 1024.0 / n as f64,
        kib_per_client_after: (end - before) as f64 / 1024.0 / n as f64,
        server,
    }
}

fn report(n: usize, a: &Run, base: &[Run]) {
    let f = |r: &Run, k: &str| r.result[k].as_f64().unwrap_or(f64::NAN);
    let rate = |r: &Run| f(r, "messages") / r.replay_s;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "live bench: {n} monitor clients on one tenant (clients in a separate process), load-dev.ami at 10x; load average at the end: {}",
        load.trim()
    );
    for r in base.iter().chain([a]) {
        println!(
            "  {:<50} {:>6.0} msg/s ({:>7} msgs, {:.1} s) | p50 {:>6.2} ms  p99 {:>7.2} ms  max {:>7.2} ms ({} measured) | heap {:.1} KiB/client connected, {:.1} after the replay",
            r.name,
            rate(r),
            f(r, "messages"),
            r.replay_s,
            f(r, "p50"),
            f(r, "p99"),
            f(r, "max"),
            f(r, "measured"),
            r.kib_per_client,
            r.kib_per_client_after,
        );
        let msgs = f(r, "messages");
        println!(
            "  {:<50} CPU per delivered message: server {:.2} µs, clients {:.2} µs | CPU s in {:.1} s: server {:.1}, clients {:.1}",
            "",
            r.server.cpu_s * 1e6 / msgs,
            f(r, "client_cpu_s") * 1e6 / msgs,
            r.replay_s + 2.0,
            r.server.cpu_s,
            f(r, "client_cpu_s"),
        );
    }
    if let Some(b) = base.first() {
        println!(
            "  ratios callhook/baseline: msg/s {:.2}, p50 {:.2}, p99 {:.2}, max {:.2}, memory/client {:.2}",
            rate(a) / rate(b),
            f(a, "p50") / f(b, "p50"),
            f(a, "p99") / f(b, "p99"),
            f(a, "max") / f(b, "max"),
            a.kib_per_client / b.kib_per_client,
        );
    }
}
