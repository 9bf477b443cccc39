//! What the delivery benchmarks share (`benches/deliver.rs`,
//! `benches/cluster.rs`): the local sink, the delivery requests, the
//! `crm` target, the baselines (the same GETs straight from reqwest) and
//! the latency arithmetic.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::Router;
use callhook::deliver::{validate_targets, DeliveryRequest, RawTarget, Target};

/// Arrival time per path and query.
pub type Seen = Arc<Mutex<BTreeMap<String, Instant>>>;

/// A sink that answers 200, counts requests and (`record`) records their
/// arrival times by path and query.
#[derive(Clone)]
pub struct Sink {
    pub url: String,
    pub count: Arc<AtomicUsize>,
    pub seen: Seen,
}

impl Sink {
    pub async fn start(record: bool) -> Sink {
        let count = Arc::new(AtomicUsize::new(0));
        let seen: Seen = Arc::default();
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

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// Delivery `i` of run `run`: `GET {base}/{run}?i={i}`, four per session
/// (a call's transitions).
pub fn request(base: &str, run: &str, i: usize, now: f64) -> DeliveryRequest {
    DeliveryRequest {
        target: "crm".into(),
        rule: "bench".into(),
        session_id: format!("{run}.s{}", i / 4),
        pbx: "main".into(),
        event_id: format!("{run}.e{i}"),
        method: "GET".into(),
        url: format!("{base}/{run}?i={i}"),
        headers: Vec::new(),
        body: None,
        idempotency_key: None,
        created_at: now,
        expires_at: None,
        refused: None,
        secrets: Vec::new(),
    }
}

/// The `crm` target: `concurrency` requests in flight, 5 s timeout.
pub fn targets(concurrency: usize) -> Arc<BTreeMap<String, Target>> {
    let raw: BTreeMap<String, RawTarget> = callhook::yaml::de::from_str(&format!(
        "crm: {{ concurrency: {concurrency}, timeout: 5s }}"
    ))
    .expect("yaml");
    Arc::new(validate_targets(&raw, std::path::Path::new(".")).expect("targets"))
}

/// The `p` quantile of `v` (sorted in place).
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// The throughput baseline: `n` GETs of `{base}/{path}?i=…` straight from
/// reqwest, `concurrency` at a time; requests/s.
pub async fn direct_throughput(base: &str, path: &str, n: usize, concurrency: usize) -> f64 {
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let c = client.clone();
        let url = format!("{base}/{path}?i={i}");
        tasks.push(tokio::spawn(async move {
            let _ = c.get(url).send().await;
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// The latency baseline: GETs of `{base}/{path}?i=…` at `rate`/s for
/// `secs` straight from reqwest; each request's time in ms.
pub async fn direct_latency(base: &str, path: &str, rate: f64, secs: f64) -> Vec<f64> {
    let client = reqwest::Client::new();
    let total = (rate * secs) as usize;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let c = client.clone();
        let url = format!("{base}/{path}?i={i}");
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

/// Milliseconds from each `(path and query, sent at)` to its arrival in
/// `seen` (the ones that never arrived are left out).
pub fn arrival_latencies(seen: &Seen, sent: &[(String, Instant)]) -> Vec<f64> {
    let m = seen.lock().map(|m| m.clone()).unwrap_or_default();
    sent.iter()
        .filter_map(|(k, at)| {
            m.get(k)
                .map(|t| t.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect()
}
