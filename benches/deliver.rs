//! Delivery benchmark: deliveries/s to a local sink through the durable
//! outbox and dispatcher, and event-to-request latency (p50/p99) at a steady
//! 1 000 events/s, each beside a baseline measured in the same run: the same
//! requests sent directly with reqwest (same client settings, same
//! concurrency), no outbox.
//!
//! The FULL latency has a second baseline: the best possible durable path
//! (append to a file, one fdatasync per group of events, then reqwest), so
//! that the fsync the disk needs is not counted against the outbox. Each
//! outbox latency line runs at both checkpoint periods (1 s, FULL's
//! default, and 100 ms, NORMAL's), and is split into submit → commit (the receipt:
//! writer and fsync) and commit → arrival (hand-off, dispatcher, HTTP),
//! with where its samples over the p99 fall in the checkpoint cycle.
//!
//! Throughput counts a delivery when the sink got it AND the outbox has it
//! `done`. The enqueues come the way the daemon's pipeline makes them
//! (`app.rs`): a source hands events to one pipeline task, which takes what
//! has arrived (up to 1 024), commits it as one batch and waits for the
//! commit before the next. A second FULL line enqueues one call's 4
//! deliveries at a time, each batch waited for (every commit fsynced on its
//! own: the worst case for the fsync).
//!
//! Beside each throughput line: the CPU the process spent per delivery,
//! split into the outbox's writer thread and everything else (the
//! runtime's workers: dispatcher, HTTP client and the sink), read from
//! `/proc/self/task/*/schedstat`; the baseline's CPU per request is the
//! HTTP work alone, both sides.
//!
//! `cargo bench --bench deliver` (prints a table; numbers vary with the
//! machine, the ratios are what to compare). `-- full` (or `normal`,
//! `serial`, `latency`) runs only that part (with the baseline), for a
//! profiler.

mod support;
#[path = "../tests/support_tmp/mod.rs"]
mod support_tmp;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callhook::deliver::outbox::{
    Durability, Outbox, OutboxOptions, CHECKPOINT_EVERY_FULL, CHECKPOINT_EVERY_NORMAL,
};
use callhook::deliver::{self, DeliveryRequest, Target};
use support::{
    arrival_latencies, direct_latency, direct_throughput, percentile, request, targets, Sink,
};
use support_tmp::TestDir;
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

/// CPU time spent so far by the process's threads: (the outbox writer
/// `callhook-outbox`, all threads), from each thread's schedstat (ns).
fn cpu_now() -> (Duration, Duration) {
    let (mut writer, mut all) = (0u64, 0u64);
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let p = t.path();
            let ns = std::fs::read_to_string(p.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if comm.trim_end() == "callhook-outbox" {
                writer += ns;
            }
            all += ns;
        }
    }
    (Duration::from_nanos(writer), Duration::from_nanos(all))
}

/// CPU per delivery (µs) over a measured interval: (writer, all threads).
/// Threads that ended within the interval are not counted (the writer of
/// a run ends after it is measured).
#[derive(Clone, Copy, Default)]
struct Cpu {
    writer_us: f64,
    all_us: f64,
}

impl Cpu {
    fn since(start: (Duration, Duration), n: usize) -> Cpu {
        let end = cpu_now();
        let per = |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64() * 1e6 / n as f64;
        Cpu {
            writer_us: per(end.0, start.0),
            all_us: per(end.1, start.1),
        }
    }

    fn show(&self) -> String {
        format!(
            "CPU/delivery {:>5.1} µs (writer {:>5.1}, rest {:>5.1})",
            self.all_us,
            self.writer_us,
            self.all_us - self.writer_us
        )
    }
}

struct Running {
    outbox: Arc<Outbox>,
    token: CancellationToken,
    handle: deliver::DispatcherHandle,
    dir: TestDir,
    /// Kept open for the run (a closed channel stops reloads).
    _targets: tokio::sync::watch::Sender<Arc<BTreeMap<String, Target>>>,
}

fn start(durability: Durability, tag: &str) -> Running {
    start_with(
        OutboxOptions {
            durability,
            ..Default::default()
        },
        tag,
    )
}

fn start_with(opts: OutboxOptions, tag: &str) -> Running {
    let dir = TestDir::new(&format!("bench-{:?}-{tag}", opts.durability));
    let outbox = Arc::new(Outbox::open(&dir, opts).expect("outbox"));
    let (tx, rx) = tokio::sync::watch::channel(targets(CONCURRENCY));
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
    drop(r.dir);
}

/// Waits until the sink got `n` more requests than `before` and the outbox
/// has `n` rows done.
async fn wait_done(r: &Running, s: &Sink, before: usize, n: usize) {
    while s.count() < before + n {
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
async fn outbox_pipeline(s: &Sink, durability: Durability) -> (f64, Cpu) {
    let r = start(durability, "pipeline");
    let before = s.count();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<DeliveryRequest>(8192);
    let t0 = Instant::now();
    let cpu0 = cpu_now();
    let base = s.url.clone();
    let source = tokio::spawn(async move {
        let now = callhook::source::now_epoch();
        for i in 0..N {
            if tx.send(request(&base, "pop", i, now)).await.is_err() {
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
    let cpu = Cpu::since(cpu0, N);
    stop(r).await;
    (tput, cpu)
}

/// N_SERIAL deliveries enqueued one call (4 requests) at a time, each
/// commit waited for.
async fn outbox_serial(s: &Sink, durability: Durability) -> (f64, Cpu) {
    let r = start(durability, "serial");
    let before = s.count();
    let t0 = Instant::now();
    let cpu0 = cpu_now();
    let now = callhook::source::now_epoch();
    for b in 0..N_SERIAL / 4 {
        let reqs: Vec<_> = (0..4)
            .map(|k| request(&s.url, "pop", b * 4 + k, now))
            .collect();
        let _ = r.outbox.submit(reqs).await;
    }
    wait_done(&r, s, before, N_SERIAL).await;
    let tput = N_SERIAL as f64 / t0.elapsed().as_secs_f64();
    let cpu = Cpu::since(cpu0, N_SERIAL);
    stop(r).await;
    (tput, cpu)
}

/// The outbox latency run: per sample, submit to arrival at the sink (ms),
/// and its two stages: submit to the commit (the receipt resolving: the
/// writer and, FULL, the fsync) and the commit to the arrival (hand-off,
/// dispatcher, HTTP); and the submit time's phase in the outbox's
/// checkpoint cycle (time since the outbox was opened, modulo the
/// checkpoint period, as a fraction of it).
struct Latency {
    total: Vec<f64>,
    commit: Vec<f64>,
    dispatch: Vec<f64>,
    phase: Vec<f64>,
}

/// One event per commit at RATE/s; event time = submit time, latency to
/// the arrival at the sink.
async fn outbox_latency(durability: Durability, checkpoint_every: Duration) -> Latency {
    let s = Sink::start(true).await;
    let opened = Instant::now();
    let r = start_with(
        OutboxOptions {
            durability,
            checkpoint_every: Some(checkpoint_every),
            ..Default::default()
        },
        "latency",
    );
    let mut sent = Vec::new();
    let mut commits = Vec::new();
    let total = (RATE * LOAD_SECS) as usize;
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until(due.into()).await;
        let at = Instant::now();
        // Queued at once; the receipt (commit) is awaited on the side:
        // latency is measured at the sink.
        let receipt = r.outbox.submit(vec![request(
            &s.url,
            "pop",
            i,
            callhook::source::now_epoch(),
        )]);
        commits.push(tokio::spawn(async move {
            let _ = receipt.await;
            Instant::now()
        }));
        sent.push((format!("/pop?i={i}"), at));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.count() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = s.seen.lock().map(|m| m.clone()).unwrap_or_default();
    let mut out = Latency {
        total: Vec::new(),
        commit: Vec::new(),
        dispatch: Vec::new(),
        phase: Vec::new(),
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for ((key, at), c) in sent.iter().zip(commits) {
        let (Some(arrived), Ok(committed)) = (seen.get(key), c.await) else {
            continue;
        };
        out.total.push(ms(arrived.duration_since(*at)));
        out.commit.push(ms(committed.duration_since(*at)));
        out.dispatch
            .push(ms(arrived.saturating_duration_since(committed)));
        out.phase
            .push(at.duration_since(opened).as_secs_f64().fract());
    }
    stop(r).await;
    out
}

/// Where the slowest samples (above the p99) fall in the checkpoint
/// cycle: counts per tenth of the period since the outbox opened (a
/// checkpoint starts at about 0.0 plus the time the open took; the cycle
/// drifts by the checkpoints' own durations).
fn tail_phases(l: &Latency, p99: f64) -> String {
    let mut bins = [0usize; 10];
    for (t, ph) in l.total.iter().zip(&l.phase) {
        if *t > p99 {
            bins[((ph * 10.0) as usize).min(9)] += 1;
        }
    }
    bins.iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The best possible durable path, the baseline of the FULL latency: a
/// thread appends every event queued at that moment to a file and
/// fdatasyncs it once (group commit without SQLite), then each event is
/// sent with reqwest; latency from submit to arrival at the sink.
async fn baseline_durable_latency() -> Vec<f64> {
    use std::io::Write;
    let s = Sink::start(true).await;
    let dir = TestDir::new("bench-fsync");
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
    while s.count() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = writer.join();
    sender.abort();
    drop(dir);
    arrival_latencies(&s.seen, &sent)
}

async fn baseline_latency() -> Vec<f64> {
    let s = Sink::start(true).await;
    direct_latency(&s.url, "direct", RATE, LOAD_SECS).await
}

async fn direct_run(s: &Sink) -> (f64, Cpu) {
    let cpu0 = cpu_now();
    let t = direct_throughput(&s.url, "base", N, CONCURRENCY).await;
    (t, Cpu::since(cpu0, N))
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument names the parts to run.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |p: &str| parts.is_empty() || parts.iter().any(|a| a == p);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let s = Sink::start(false).await;
        if run("full") || run("normal") || run("serial") {
            let (direct, dcpu) = direct_run(&s).await;
            let mut rows = Vec::new();
            if run("full") {
                let r = outbox_pipeline(&s, Durability::Full).await;
                rows.push(("outbox FULL, pipeline batches        ", r));
            }
            if run("normal") {
                let r = outbox_pipeline(&s, Durability::Normal).await;
                rows.push(("outbox NORMAL, pipeline batches      ", r));
            }
            if run("serial") {
                let r = outbox_serial(&s, Durability::Full).await;
                rows.push(("outbox FULL, one call (4) per commit ", r));
            }
            let (direct2, dcpu2) = direct_run(&s).await;
            let (base, bcpu) = if direct >= direct2 {
                (direct, dcpu)
            } else {
                (direct2, dcpu2)
            };
            println!(
                "deliveries/s to a local sink, {N} requests ({N_SERIAL} one call per commit), \
                 concurrency {CONCURRENCY} (baseline: best of two runs, before and after)"
            );
            println!(
                "  direct reqwest (baseline)              {base:>9.0}/s  1.00   CPU/request  {:>5.1} µs (runs {direct:.0}, {direct2:.0})",
                bcpu.all_us
            );
            for (name, (t, cpu)) in rows {
                println!("  {name} {t:>9.0}/s  {:.2}   {}", t / base, cpu.show());
            }
        }
        if !run("latency") {
            return;
        }
        let mut lat_direct = baseline_latency().await;
        let mut lat_fsync = baseline_durable_latency().await;
        // The outbox at both checkpoint periods (each durability's default
        // and the other's), alternated so that load changes during the
        // run hit both.
        let (fast, slow) = (CHECKPOINT_EVERY_NORMAL, CHECKPOINT_EVERY_FULL);
        let runs = [
            (Durability::Full, slow),
            (Durability::Full, fast),
            (Durability::Normal, fast),
            (Durability::Normal, slow),
        ];
        let mut lats = Vec::new();
        for (d, e) in runs {
            lats.push((d, e, outbox_latency(d, e).await));
        }
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
        for (d, e, v) in &lats {
            let (b50, b99) = match d {
                Durability::Full => (f50, f99),
                Durability::Normal => (d50, d99),
            };
            let default = match d {
                Durability::Full => slow,
                Durability::Normal => fast,
            };
            let mark = if *e == default { " (default)" } else { "" };
            let name = format!("outbox {d:?}, checkpoint every {e:?}{mark}");
            let p50 = percentile(&mut v.total.clone(), 0.5);
            let p99 = percentile(&mut v.total.clone(), 0.99);
            println!(
                "  {name:<48} (submit to arrival) p50 {p50:>6.2}  p99 {p99:>6.2}  ({:.1}x / {:.1}x its baseline, {} samples)",
                p50 / b50,
                p99 / b99,
                v.total.len()
            );
            println!(
                "      submit to commit p50 {:.2} p99 {:.2}; commit to arrival p50 {:.2} p99 {:.2}; samples over p99 per tenth of the checkpoint period: {}",
                percentile(&mut v.commit.clone(), 0.5),
                percentile(&mut v.commit.clone(), 0.99),
                percentile(&mut v.dispatch.clone(), 0.5),
                percentile(&mut v.dispatch.clone(), 0.99),
                tail_phases(v, p99)
            );
        }
    });
}
