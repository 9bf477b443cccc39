//! Cluster benchmark: deliveries/s to a local sink with 1, 2 and 3
//! dispatcher instances on a 3-node NATS JetStream cluster (streams with 3
//! replicas, started on loopback as in the tests), beside the single-node
//! SQLite outbox and the baseline (the same requests sent directly with
//! reqwest, no store) measured in the same run; then event-to-request
//! latency (p50/p99) under a steady load in both modes.
//!
//! `cargo bench --bench cluster` (needs `nats-server`, as the tests do;
//! prints a table; the numbers depend on the machine, every NATS node and
//! instance runs on it too: compare the ratios).

#[path = "../tests/support_nats/mod.rs"]
mod support_nats;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::Router;
use callhook::cluster::store::ClusterStore;
use callhook::cluster::{dispatch, Cluster, ClusterConfig};
use callhook::deliver::outbox::{Outbox, OutboxOptions};
use callhook::deliver::store::DeliveryStore;
use callhook::deliver::{self, validate_targets, DeliveryRequest, RawTarget, Target};
use support_nats::NatsCluster;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Deliveries per throughput run (4 per call).
const N: usize = 4000;
/// Requests in flight per instance (the target's `concurrency`).
const CONCURRENCY: usize = 16;
/// Partitions of the deliveries stream (the default).
const PARTITIONS: u32 = 64;
/// Steady load of the latency runs.
const RATE: f64 = 200.0;
const LOAD_SECS: f64 = 5.0;

type Seen = Arc<Mutex<BTreeMap<String, Instant>>>;

/// A sink that answers 200 and records arrival times by path and query.
async fn sink() -> (String, Seen) {
    let seen: Seen = Arc::default();
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

fn request(base: &str, run: &str, i: usize, now: f64) -> DeliveryRequest {
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

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

fn targets() -> watch::Receiver<Arc<BTreeMap<String, Target>>> {
    let raw: BTreeMap<String, RawTarget> = callhook::yaml::de::from_str(&format!(
        "crm: {{ concurrency: {CONCURRENCY}, timeout: 5s }}"
    ))
    .expect("yaml");
    let t = Arc::new(validate_targets(&raw, std::path::Path::new(".")).expect("targets"));
    let (tx, rx) = watch::channel(t);
    // The sender lives as long as the benchmark (a dropped sender is a
    // dispatcher's cue to stop at shutdown).
    std::mem::forget(tx);
    rx
}

fn count(seen: &Seen, run: &str) -> usize {
    let p = format!("/{run}?");
    seen.lock()
        .map(|m| m.keys().filter(|k| k.starts_with(&p)).count())
        .unwrap_or(0)
}

async fn wait_count(seen: &Seen, run: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while count(seen, run) < n {
        assert!(
            Instant::now() < deadline,
            "{run}: {} of {n} arrived",
            count(seen, run)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// N deliveries submitted in batches of 4 (a call's transitions) and
/// delivered: deliveries/s from the first submit to the last arrival.
async fn throughput(store: &dyn DeliveryStore, base: &str, seen: &Seen, run: &str) -> f64 {
    let t0 = Instant::now();
    let now = callhook::source::now_epoch();
    for b in 0..N / 4 {
        let reqs: Vec<_> = (0..4).map(|k| request(base, run, b * 4 + k, now)).collect();
        store.submit(reqs).await.expect("submit");
    }
    wait_count(seen, run, N).await;
    N as f64 / t0.elapsed().as_secs_f64()
}

/// One event at a time at RATE/s: milliseconds from the submit to the
/// arrival at the sink.
async fn latency(store: Arc<dyn DeliveryStore>, base: &str, seen: &Seen, run: &str) -> Vec<f64> {
    let total = (RATE * LOAD_SECS) as usize;
    let start = Instant::now();
    let mut sent = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until(due.into()).await;
        let at = Instant::now();
        // Submitted at once, the receipt not awaited: the latency is
        // measured at the sink (the normalizer waits for the receipt
        // before its next batch, not for the delivery).
        let s = store.clone();
        let r = request(base, run, i, callhook::source::now_epoch());
        tokio::spawn(async move {
            let _ = s.submit(vec![r]).await;
        });
        sent.push((format!("/{run}?i={i}"), at));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(seen, run) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let m = seen.lock().map(|m| m.clone()).unwrap_or_default();
    sent.iter()
        .filter_map(|(k, at)| {
            m.get(k)
                .map(|t| t.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect()
}

async fn direct(base: &str) -> f64 {
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for i in 0..N {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let c = client.clone();
        let url = format!("{base}/direct?i={i}");
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

async fn direct_latency(base: &str) -> Vec<f64> {
    let client = reqwest::Client::new();
    let total = (RATE * LOAD_SECS) as usize;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until(due.into()).await;
        let c = client.clone();
        let url = format!("{base}/direct-lat?i={i}");
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

/// The single-node outbox (default durability) with its dispatcher.
async fn outbox(base: &str, seen: &Seen) -> (f64, Vec<f64>) {
    let dir = std::env::temp_dir().join(format!("callhook-bench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let outbox = Arc::new(Outbox::open(&dir, OutboxOptions::default()).expect("outbox"));
    let token = CancellationToken::new();
    let d = deliver::spawn(outbox.clone(), targets(), token.clone());
    let tput = throughput(outbox.as_ref(), base, seen, "outbox").await;
    let lat = latency(outbox.clone(), base, seen, "outbox-lat").await;
    token.cancel();
    d.stopped().await;
    outbox.close();
    let _ = std::fs::remove_dir_all(&dir);
    (tput, lat)
}

/// `k` instances (own connections, own dispatchers) sharing the streams
/// of `prefix`; deliveries submitted through the first one.
struct Instances {
    stores: Vec<Arc<ClusterStore>>,
    stop: CancellationToken,
    dispatchers: Vec<dispatch::ClusterDispatcher>,
}

impl Instances {
    async fn start(nats: &NatsCluster, prefix: &str, k: usize) -> Instances {
        let stop = CancellationToken::new();
        let mut stores = Vec::new();
        let mut dispatchers = Vec::new();
        for i in 0..k {
            let mut c = ClusterConfig::new(nats.urls(), &format!("bench-{i}"));
            c.prefix = prefix.to_string();
            c.partitions = PARTITIONS;
            let c = Cluster::connect(c).await.expect("connect");
            let s = Arc::new(ClusterStore::new(&c).await.expect("store"));
            dispatchers.push(dispatch::spawn(c, s.clone(), targets(), stop.child_token()));
            stores.push(s);
        }
        Instances {
            stores,
            stop,
            dispatchers,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        for d in &self.dispatchers {
            d.stopped().await;
        }
    }
}

/// Deliveries/s with `k` dispatcher instances, after a warm-up that lets
/// every instance create its partition consumers.
async fn cluster(nats: &NatsCluster, base: &str, seen: &Seen, k: usize) -> f64 {
    let prefix = format!("b{k}");
    let inst = Instances::start(nats, &prefix, k).await;
    let warm = format!("{prefix}-warm");
    let store = inst.stores[0].clone();
    let now = callhook::source::now_epoch();
    let reqs: Vec<_> = (0..4 * PARTITIONS as usize)
        .map(|i| request(base, &warm, i, now))
        .collect();
    store.submit(reqs).await.expect("warm-up");
    wait_count(seen, &warm, 4 * PARTITIONS as usize).await;
    let tput = throughput(store.as_ref(), base, seen, &prefix).await;
    inst.stop().await;
    tput
}

async fn cluster_latency(nats: &NatsCluster, base: &str, seen: &Seen, k: usize) -> Vec<f64> {
    let prefix = format!("l{k}");
    let inst = Instances::start(nats, &prefix, k).await;
    let warm = format!("{prefix}-warm");
    let now = callhook::source::now_epoch();
    let reqs: Vec<_> = (0..4 * PARTITIONS as usize)
        .map(|i| request(base, &warm, i, now))
        .collect();
    inst.stores[0].submit(reqs).await.expect("warm-up");
    wait_count(seen, &warm, 4 * PARTITIONS as usize).await;
    let store: Arc<dyn DeliveryStore> = inst.stores[0].clone();
    let lat = latency(store, base, seen, &format!("{prefix}-lat")).await;
    inst.stop().await;
    lat
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let nats = NatsCluster::start("bench").await;
        let (base, seen) = sink().await;
        let direct = direct(&base).await;
        let (outbox, mut lat_outbox) = outbox(&base, &seen).await;
        let mut by_k = Vec::new();
        for k in 1..=3 {
            by_k.push((k, cluster(&nats, &base, &seen, k).await));
        }
        let mut lat_c1 = cluster_latency(&nats, &base, &seen, 1).await;
        let mut lat_c3 = cluster_latency(&nats, &base, &seen, 3).await;
        let mut lat_direct = direct_latency(&base).await;
        println!(
            "deliveries/s to a local sink, {N} requests, concurrency {CONCURRENCY} per instance, \
             3 NATS nodes (R3), {PARTITIONS} partitions, all on this machine"
        );
        println!("  direct reqwest (baseline)          {direct:>9.0}/s  1.00");
        println!(
            "  single node, SQLite outbox         {outbox:>9.0}/s  {:.2}",
            outbox / direct
        );
        for (k, t) in &by_k {
            println!(
                "  cluster, {k} dispatcher instance{} {t:>9.0}/s  {:.2}",
                if *k == 1 { " " } else { "s" },
                t / direct
            );
        }
        println!("event -> request latency at {RATE}/s for {LOAD_SECS} s (ms)");
        let rows: [(&str, &mut Vec<f64>); 4] = [
            ("direct reqwest (baseline, request time)", &mut lat_direct),
            (
                "single node, SQLite outbox (submit to arrival)",
                &mut lat_outbox,
            ),
            ("cluster, 1 instance", &mut lat_c1),
            ("cluster, 3 instances", &mut lat_c3),
        ];
        for (name, v) in rows {
            let n = v.len();
            println!(
                "  {name:<48} p50 {:>7.2}  p99 {:>7.2}  ({n} samples)",
                percentile(v, 0.5),
                percentile(v, 0.99)
            );
        }
    });
}
