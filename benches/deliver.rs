//! Delivery benchmark: deliveries/s to a local sink through the durable
//! outbox and dispatcher, and event-to-request latency (p50/p99) at a steady
//! 1 000 events/s, each beside a baseline measured in the same run: the same
//! requests sent directly with reqwest (same client settings, same
//! concurrency), no outbox.
//!
//! The FULL latency has a second baseline: the best possible durable path
//! (append to a file, one fdatasync per group of events, then reqwest), so
//! that the fsync the disk needs is not counted against the outbox.
//!
//! Throughput counts a delivery when the sink got it AND the outbox has it
//! `done`. The enqueues come the way the daemon's pipeline makes them
//! (`app.rs`): a source hands events to one pipeline task, which takes what
//! has arrived (up to 1 024), commits it as one batch and waits for the
//! commit before the next. A second FULL line enqueues one call's 4
//! deliveries at a time, each batch waited for (every commit fsynced on its
//! own: the worst case for the fsync).
//!
//! `cargo bench --bench deliver` (prints a table; numbers vary with the
//! machine, the ratios are what to compare).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::Router;
use callhook::deliver::outbox::{Durability, Outbox, OutboxOptions};
use callhook::deliver::{self, validate_targets, DeliveryRequest, RawTarget, Target};
use tokio_util::sync::CancellationToken;

/// Requests per throughput run.
const N: usize = 20_000;
/// Requests of the one-call-at-a-time run.
const N_SERIAL: usize = 4_000;
const CONCURRENCY: usize = 16;
/// Largest batch the pipeline commits at once (as `app.rs`).
const PIPELINE_BATCH: usize = 1024;
const RATE: f64 = 1000.0;
const LOAD_SECS: f64 = 5.0;

/// A sink that answers 200, counts requests and records arrival times by
/// path for the latency runs.
#[derive(Clone)]
struct Sink {
    url: String,
    count: Arc<AtomicUsize>,
    seen: Arc<Mutex<BTreeMap<String, Instant>>>,
}

async fn sink(record: bool) -> Sink {
    let count = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let (c, s) = (count.clone(), seen.clone());
    let app = Router::new().fallback(move |req: Request| {
        let (c, s) = (c.clone(), s.clone());
        async move {
            if record {
                let key = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                if let Ok(mut m) = s.lock() {
                    m.insert(key, Instant::now());
                }
            }
            c.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Sink {
        url: format!("http://{addr}"),
        count,
        seen,
    }
}

fn request(base: &str, i: usize, now: f64) -> DeliveryRequest {
    DeliveryRequest {
        target: "crm".into(),
        rule: "bench".into(),
        session_id: format!("s{}", i / 4),
        pbx: "main".into(),
        event_id: format!("e{i}"),
        method: "GET".into(),
        url: format!("{base}/pop?i={i}"),
        headers: Vec::new(),
        body: None,
        idempotency_key: None,
        created_at: now,
        expires_at: None,
        refused: None,
        secrets: Vec::new(),
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// The baseline: N GETs straight from reqwest, CONCURRENCY at a time.
async fn baseline_throughput(base: &str) -> f64 {
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for i in 0..N {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let c = client.clone();
        let url = format!("{base}/base?i={i}");
        tasks.push(tokio::spawn(async move {
            let _ = c.get(url).send().await;
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    N as f64 / t0.elapsed().as_secs_f64()
}

struct Running {
    outbox: Arc<Outbox>,
    token: CancellationToken,
    handle: deliver::DispatcherHandle,
    dir: std::path::PathBuf,
    /// Kept open for the run (a closed channel stops reloads).
    _targets: tokio::sync::watch::Sender<Arc<BTreeMap<String, Target>>>,
}

fn start(durability: Durability, tag: &str) -> Running {
    let dir = std::env::temp_dir().join(format!(
        "callhook-bench-{}-{durability:?}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let outbox = Arc::new(
        Outbox::open(
            &dir,
            OutboxOptions {
                durability,
                ..Default::default()
            },
        )
        .expect("outbox"),
    );
    let raw: BTreeMap<String, RawTarget> = callhook::yaml::de::from_str(&format!(
        "crm: {{ concurrency: {CONCURRENCY}, timeout: 5s }}"
    ))
    .expect("yaml");
    let targets = Arc::new(validate_targets(&raw, std::path::Path::new(".")).expect("targets"));
    let (tx, rx) = tokio::sync::watch::channel(targets);
    let token = CancellationToken::new();
    let handle = deliver::spawn(outbox.clone(), rx, token.clone());
    Running {
        outbox,
        token,
        handle,
        dir,
        _targets: tx,
    }
}

async fn stop(r: Running) {
    r.token.cancel();
    r.handle.stopped().await;
    r.outbox.close();
    let _ = std::fs::remove_dir_all(&r.dir);
}

/// Waits until the sink got `n` more requests than `before` and the outbox
/// has `n` rows done.
async fn wait_done(r: &Running, s: &Sink, before: usize, n: usize) {
    while s.count.load(Ordering::Relaxed) < before + n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    loop {
        let st = r.outbox.stats().await.expect("stats");
        if st.done as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// N deliveries enqueued by a pipeline like the daemon's.
async fn outbox_pipeline(s: &Sink, durability: Durability) -> f64 {
    let r = start(durability, "pipeline");
    let before = s.count.load(Ordering::Relaxed);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<DeliveryRequest>(8192);
    let t0 = Instant::now();
    let base = s.url.clone();
    let source = tokio::spawn(async move {
        let now = callhook::source::now_epoch();
        for i in 0..N {
            if tx.send(request(&base, i, now)).await.is_err() {
                break;
            }
        }
    });
    let outbox = r.outbox.clone();
    let pipeline = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < PIPELINE_BATCH {
                match rx.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            let o = outbox.submit(batch).await.expect("enqueue");
            assert_eq!(o.rejected_full, 0);
        }
    });
    let _ = source.await;
    let _ = pipeline.await;
    wait_done(&r, s, before, N).await;
    let tput = N as f64 / t0.elapsed().as_secs_f64();
    stop(r).await;
    tput
}

/// N_SERIAL deliveries enqueued one call (4 requests) at a time, each
/// commit waited for.
async fn outbox_serial(s: &Sink, durability: Durability) -> f64 {
    let r = start(durability, "serial");
    let before = s.count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let now = callhook::source::now_epoch();
    for b in 0..N_SERIAL / 4 {
        let reqs: Vec<_> = (0..4).map(|k| request(&s.url, b * 4 + k, now)).collect();
        let _ = r.outbox.submit(reqs).await;
    }
    wait_done(&r, s, before, N_SERIAL).await;
    let tput = N_SERIAL as f64 / t0.elapsed().as_secs_f64();
    stop(r).await;
    tput
}

/// One event per commit at RATE/s; event time = submit time, latency to
/// the arrival at the sink.
async fn outbox_latency(durability: Durability) -> Vec<f64> {
    let r = start(durability, "latency");
    let s = sink(true).await;
    let mut sent = Vec::new();
    let total = (RATE * LOAD_SECS) as usize;
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until(due.into()).await;
        let at = Instant::now();
        // Queued at once; the receipt (commit) is not awaited: latency is
        // measured at the sink.
        drop(
            r.outbox
                .submit(vec![request(&s.url, i, callhook::source::now_epoch())]),
        );
        sent.push((format!("/pop?i={i}"), at));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.count.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let m = s.seen.lock().map(|m| m.clone()).unwrap_or_default();
    let lat: Vec<f64> = sent
        .iter()
        .filter_map(|(k, at)| {
            m.get(k)
                .map(|t| t.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    stop(r).await;
    lat
}

/// The best possible durable path, the baseline of the FULL latency: a
/// thread appends every event queued at that moment to a file and
/// fdatasyncs it once (group commit without SQLite), then each event is
/// sent with reqwest; latency from submit to arrival at the sink.
async fn baseline_durable_latency() -> Vec<f64> {
    use std::io::Write;
    let s = sink(true).await;
    let dir = std::env::temp_dir().join(format!("callhook-bench-{}-fsync", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .expect("file");
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let writer = std::thread::spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while let Ok(i) = rx.try_recv() {
                batch.push(i);
            }
            for i in &batch {
                let _ = writeln!(file, "event {i} for /durable?i={i}");
            }
            let _ = file.sync_data();
            for i in batch {
                let _ = done_tx.send(i);
            }
        }
    });
    let client = reqwest::Client::new();
    let url = s.url.clone();
    let sender = tokio::spawn(async move {
        while let Some(i) = done_rx.recv().await {
            let c = client.clone();
            let u = format!("{url}/durable?i={i}");
            tokio::spawn(async move {
                let _ = c.get(u).send().await;
            });
        }
    });
    let total = (RATE * LOAD_SECS) as usize;
    let mut sent = Vec::new();
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until(due.into()).await;
        sent.push((format!("/durable?i={i}"), Instant::now()));
        let _ = tx.send(i);
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.count.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = writer.join();
    sender.abort();
    let _ = std::fs::remove_dir_all(&dir);
    let m = s.seen.lock().map(|m| m.clone()).unwrap_or_default();
    sent.iter()
        .filter_map(|(k, at)| {
            m.get(k)
                .map(|t| t.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect()
}

async fn baseline_latency() -> Vec<f64> {
    let s = sink(true).await;
    let client = reqwest::Client::new();
    let total = (RATE * LOAD_SECS) as usize;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until(due.into()).await;
        let c = client.clone();
        let url = format!("{}/direct?i={i}", s.url);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let _ = c.get(url).send().await;
            t.elapsed().as_secs_f64() * 1000.0
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(v) = t.await {
            out.push(v);
        }
    }
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let s = sink(false).await;
        let direct = baseline_throughput(&s.url).await;
        let full = outbox_pipeline(&s, Durability::Full).await;
        let normal = outbox_pipeline(&s, Durability::Normal).await;
        let serial = outbox_serial(&s, Durability::Full).await;
        let direct2 = baseline_throughput(&s.url).await;
        let mut lat_direct = baseline_latency().await;
        let mut lat_fsync = baseline_durable_latency().await;
        let mut lat_full = outbox_latency(Durability::Full).await;
        let mut lat_normal = outbox_latency(Durability::Normal).await;
        let base = direct.max(direct2);
        println!(
            "deliveries/s to a local sink, {N} requests, concurrency {CONCURRENCY} \
             (baseline: best of two runs, before and after)"
        );
        println!("  direct reqwest (baseline)            {base:>9.0}/s  1.00   (runs {direct:.0}, {direct2:.0})");
        println!(
            "  outbox FULL, pipeline batches         {full:>9.0}/s  {:.2}",
            full / base
        );
        println!(
            "  outbox NORMAL, pipeline batches       {normal:>9.0}/s  {:.2}",
            normal / base
        );
        println!(
            "  outbox FULL, one call (4) per commit  {serial:>9.0}/s  {:.2}   ({N_SERIAL} requests)",
            serial / base
        );
        let d50 = percentile(&mut lat_direct, 0.5);
        let d99 = percentile(&mut lat_direct, 0.99);
        let f50 = percentile(&mut lat_fsync, 0.5);
        let f99 = percentile(&mut lat_fsync, 0.99);
        println!("event -> request latency at {RATE}/s for {LOAD_SECS} s (ms), one event per commit");
        println!("  direct reqwest (baseline of NORMAL, request time)       p50 {d50:>6.2}  p99 {d99:>6.2}");
        println!(
            "  fdatasync group commit + reqwest (baseline of FULL)     p50 {f50:>6.2}  p99 {f99:>6.2}  ({} samples)",
            lat_fsync.len()
        );
        for (name, v, b50, b99) in [
            ("outbox FULL  ", &mut lat_full, f50, f99),
            ("outbox NORMAL", &mut lat_normal, d50, d99),
        ] {
            let p50 = percentile(v, 0.5);
            let p99 = percentile(v, 0.99);
            println!(
                "  {name} (submit to arrival)                     p50 {p50:>6.2}  p99 {p99:>6.2}  ({:.1}x / {:.1}x its baseline, {} samples)",
                p50 / b50,
                p99 / b99,
                v.len()
            );
        }
    });
}
