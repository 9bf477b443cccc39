//! Delivery benchmark: deliveries/s to a local sink through the durable
//! outbox, and event-to-request latency (p50/p99) under a steady load, each
//! beside a baseline measured in the same run: the same requests sent
//! directly with reqwest, no outbox.
//!
//! `cargo bench --bench deliver` (prints a table; numbers vary with the
//! machine, the ratios are what to compare).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::Router;
use callhook::deliver::outbox::{Durability, Outbox, OutboxOptions};
use callhook::deliver::{self, validate_targets, DeliveryRequest, RawTarget};
use tokio_util::sync::CancellationToken;

const N: usize = 4000;
const CONCURRENCY: usize = 16;
const RATE: f64 = 400.0;
const LOAD_SECS: f64 = 5.0;

/// A sink that answers 200 and records arrival times by path.
async fn sink() -> (String, Arc<Mutex<BTreeMap<String, Instant>>>) {
    let seen: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let s = seen.clone();
    let app = Router::new().fallback(move |req: Request| {
        let s = s.clone();
        async move {
            let key = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            if let Ok(mut m) = s.lock() {
                m.insert(key, Instant::now());
            }
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
    (format!("http://{addr}"), seen)
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

async fn outbox_run(base: &str, durability: Durability) -> (f64, Vec<f64>) {
    let dir = std::env::temp_dir().join(format!(
        "callhook-bench-{}-{durability:?}",
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
    let (_tx, rx) = tokio::sync::watch::channel(targets);
    let token = CancellationToken::new();
    let d = deliver::spawn(outbox.clone(), rx, token.clone());

    // Throughput: N deliveries enqueued in batches of 4 (a call's transitions).
    let t0 = Instant::now();
    let now = callhook::source::now_epoch();
    for b in 0..N / 4 {
        let reqs: Vec<_> = (0..4).map(|k| request(base, b * 4 + k, now)).collect();
        let _ = outbox.submit(reqs).await;
    }
    loop {
        let s = outbox.stats().await.expect("stats");
        if s.done as usize >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let tput = N as f64 / t0.elapsed().as_secs_f64();

    // Latency: one event at a time at RATE/s; event time = submit time.
    let (lat_base, seen) = sink().await;
    let mut sent = Vec::new();
    let total = (RATE * LOAD_SECS) as usize;
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until(due.into()).await;
        let at = Instant::now();
        // Queued at once; the receipt (commit) is not awaited: latency is measured at the sink.
        drop(outbox.submit(vec![request(
            &lat_base,
            N + i,
            callhook::source::now_epoch(),
        )]));
        sent.push((format!("/pop?i={}", N + i), at));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().map(|m| m.len()).unwrap_or(0) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let m = seen.lock().map(|m| m.clone()).unwrap_or_default();
    let lat: Vec<f64> = sent
        .iter()
        .filter_map(|(k, at)| {
            m.get(k)
                .map(|t| t.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    token.cancel();
    d.stopped().await;
    outbox.close();
    let _ = std::fs::remove_dir_all(&dir);
    (tput, lat)
}

async fn baseline_latency() -> Vec<f64> {
    let (base, _) = sink().await;
    let client = reqwest::Client::new();
    let total = (RATE * LOAD_SECS) as usize;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until(due.into()).await;
        let c = client.clone();
        let url = format!("{base}/direct?i={i}");
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
        let (base, _) = sink().await;
        let direct = baseline_throughput(&base).await;
        let (full, mut lat_full) = outbox_run(&base, Durability::Full).await;
        let (normal, mut lat_normal) = outbox_run(&base, Durability::Normal).await;
        let mut lat_direct = baseline_latency().await;
        println!("deliveries/s to a local sink, {N} requests, concurrency {CONCURRENCY}");
        println!("  direct reqwest (baseline)          {direct:>9.0}/s  1.00");
        println!(
            "  outbox, synchronous=FULL (default) {full:>9.0}/s  {:.2}",
            full / direct
        );
        println!(
            "  outbox, synchronous=NORMAL         {normal:>9.0}/s  {:.2}",
            normal / direct
        );
        println!("event -> request latency at {RATE}/s for {LOAD_SECS} s (ms)");
        println!(
            "  direct reqwest (baseline, request time)  p50 {:>6.2}  p99 {:>6.2}",
            percentile(&mut lat_direct, 0.5),
            percentile(&mut lat_direct, 0.99)
        );
        println!(
            "  outbox FULL (submit to arrival)          p50 {:>6.2}  p99 {:>6.2}  ({} samples)",
            percentile(&mut lat_full, 0.5),
            percentile(&mut lat_full, 0.99),
            lat_full.len()
        );
        println!(
            "  outbox NORMAL                            p50 {:>6.2}  p99 {:>6.2}",
            percentile(&mut lat_normal, 0.5),
            percentile(&mut lat_normal, 0.99)
        );
    });
}
