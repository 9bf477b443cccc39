//! Rate limit, measured at the sink (its own test binary: timing-sensitive).

mod support_http;
mod support_tmp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use callhook::deliver::outbox::{OutboxOptions, Status};
use callhook::deliver::{spawn, Durability, Outbox};
use callhook::metrics::metrics;
use support_http::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_20_per_second_holds_in_every_window() {
    let sink = Sink::start().await;
    let dir = state_dir("rate");
    let outbox = Arc::new(Outbox::open(&dir, OutboxOptions::default()).unwrap());
    let (_tx, rx) = target_channel("t-rate: { rate_limit: 20/s, concurrency: 8 }");
    let shutdown = CancellationToken::new();
    // The dispatcher's own send instants (when each request went to the
    // HTTP client): what the limit governs, free of arrival jitter.
    let (obs_tx, mut obs_rx) = tokio::sync::mpsc::unbounded_channel();
    callhook::deliver::dispatcher::set_observer(Some(obs_tx));
    let h = spawn(outbox.clone(), rx, shutdown.clone());
    let reqs: Vec<_> = (0..100)
        .map(|i| request("t-rate", &format!("s{i}"), "ringing", &sink.url("/rate")))
        .collect();
    let t0 = Instant::now();
    outbox.enqueue(&reqs).await.unwrap();
    h.notify();
    let got = sink.wait_for(100).await;
    let took = got.last().unwrap().at - got[0].at;
    wait_rows(&outbox, "all done", |r| all(r, Status::Done)).await;

    let mut sent = Vec::new();
    while let Ok(r) = obs_rx.try_recv() {
        if r.target == "t-rate" {
            sent.push(r.sent_at);
        }
    }
    callhook::deliver::dispatcher::set_observer(None);
    sent.sort();
    assert_eq!(sent.len(), 100);
    let worst_in = |times: &[Instant], w: Duration| {
        let mut worst = 0;
        for (i, t) in times.iter().enumerate() {
            let n = times[i..].iter().take_while(|u| **u - *t < w).count();
            worst = worst.max(n);
        }
        worst
    };
    let worst = worst_in(&sent, Duration::from_secs(1));
    let arrivals: Vec<Instant> = got.iter().map(|r| r.at).collect();
    println!(
        "100 deliveries at 20/s: {took:?} from first to last, worst 1 s window {worst} sent ({} arrived), total {:?}",
        worst_in(&arrivals, Duration::from_secs(1)),
        t0.elapsed()
    );
    // GCRA with burst 1: sends at least 50 ms apart, so at most 20 + 1 in
    // any second (measured where the limit acts).
    assert!(worst <= 21, "{worst} requests sent in one second");
    assert!(took >= Duration::from_millis(4900), "took {took:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(
        metrics()
            .rate_limit_waits
            .with_label_values(&["t-rate"])
            .get()
            >= 90
    );
    assert_eq!(
        metrics()
            .delivery_attempts
            .with_label_values(&["t-rate", "200"])
            .get(),
        100,
        "waiting for the limiter uses no attempt"
    );
    shutdown.cancel();
    h.stopped().await;
}

/// Figures for the report: deliveries per second to a local sink, FULL vs
/// NORMAL. `cargo test --release --test deliver_rate -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn measure_throughput() {
    for durability in [Durability::Full, Durability::Normal] {
        let sink = Sink::start().await;
        let dir = state_dir("throughput");
        let outbox = Arc::new(
            Outbox::open(
                &dir,
                OutboxOptions {
                    durability,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let (_tx, rx) = target_channel("t-tput: { concurrency: 32 }");
        let shutdown = CancellationToken::new();
        let h = spawn(outbox.clone(), rx, shutdown.clone());
        let n = 5000;
        let t0 = Instant::now();
        // Enqueued by 50 concurrent producers in batches of 5 (like calls).
        let mut tasks = Vec::new();
        for p in 0..50 {
            let outbox = outbox.clone();
            let url = sink.url("/t");
            tasks.push(tokio::spawn(async move {
                for b in 0..(n / 50 / 5) {
                    let reqs: Vec<_> = (0..5)
                        .map(|i| request("t-tput", &format!("p{p}-b{b}-{i}"), "ringing", &url))
                        .collect();
                    outbox.enqueue(&reqs).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let enq = t0.elapsed();
        sink.wait_for(n).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = outbox.stats().await.unwrap();
            if s.done as usize == n {
                break;
            }
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = t0.elapsed();
        println!(
            "{durability:?}: {n} deliveries enqueued in {enq:?}, all done in {took:?}: {:.0} deliveries/s",
            n as f64 / took.as_secs_f64()
        );
        // Freshness under a steady load (no backlog): one call event every
        // 2 ms (500/s), each enqueued on its own and awaited (committed) by
        // its producer; latency = arrival at the sink − event time.
        let before = sink.count();
        let url = sink.url("/steady");
        let mut created = std::collections::HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        for i in 0..1000 {
            tick.tick().await;
            let r = request("t-tput", &format!("steady{i}"), "ringing", &url);
            created.insert(
                String::from_utf8(r.body.clone().unwrap()).unwrap(),
                r.created_at,
            );
            outbox.enqueue(&[r]).await.unwrap();
        }
        let got = sink.wait_for(before + 1000).await;
        let base = Instant::now();
        let base_epoch = now();
        let mut lat: Vec<f64> = got[before..]
            .iter()
            .map(|r| {
                let arrived = base_epoch - (base - r.at).as_secs_f64();
                (arrived - created[&String::from_utf8(r.body.clone()).unwrap()]) * 1000.0
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        println!(
            "{durability:?}: steady 500/s, event → request at the sink: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat[500],
            lat[990],
            lat[999]
        );
        shutdown.cancel();
        h.stopped().await;
        drop(outbox);
    }
}
