//! The outbox on its own: deduplication, the cap, per-call heads, crash
//! recovery, admin operations and retention.

mod support_http;
mod support_tmp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use callhook::deliver::outbox::{ClaimWant, Completion, ListFilter, OutboxOptions, Status};
use callhook::deliver::{spawn, Durability, Outbox};
use callhook::metrics::metrics;
use support_http::*;
use tokio_util::sync::CancellationToken;

fn want(target: &str, limit: usize) -> Vec<ClaimWant> {
    vec![ClaimWant {
        target: target.into(),
        limit,
    }]
}

#[tokio::test]
async fn dedupe_by_key_and_by_waiting_event() {
    let dir = state_dir("dedupe");
    let ob = Outbox::open(&dir, OutboxOptions::default()).unwrap();
    let url = "http://127.0.0.1:9/x";
    let a = request("t-dedupe", "s1", "ringing", url);
    let dup_before = metrics()
        .deliveries_duplicate
        .with_label_values(&["t-dedupe"])
        .get();
    // The same request twice in one batch, and again in a later batch.
    let o = ob.enqueue(&[a.clone(), a.clone()]).await.unwrap();
    assert_eq!((o.inserted, o.duplicates, o.rejected_full), (1, 1, 0));
    let o = ob.enqueue(std::slice::from_ref(&a)).await.unwrap();
    assert_eq!((o.inserted, o.duplicates), (0, 1));

    // Same event without a key: a duplicate while the first still waits…
    let mut nokey = request("t-dedupe", "s2", "ringing", url);
    nokey.idempotency_key = None;
    assert_eq!(ob.enqueue(&[nokey.clone()]).await.unwrap().inserted, 1);
    assert_eq!(ob.enqueue(&[nokey.clone()]).await.unwrap().duplicates, 1);
    // …and sent again once the first has finished (a deliberate replay).
    let p = ob.poll(now(), want("t-dedupe", 10)).await.unwrap();
    assert_eq!(p.claimed.len(), 2, "two sessions, two heads");
    for c in &p.claimed {
        assert!(ob
            .complete(c.id, Completion::Delivered { status: 200 })
            .await
            .unwrap());
    }
    assert_eq!(ob.enqueue(&[nokey]).await.unwrap().inserted, 1);
    // With a key, even a done delivery blocks the same key.
    assert_eq!(
        ob.enqueue(std::slice::from_ref(&a))
            .await
            .unwrap()
            .duplicates,
        1
    );
    // A different target with the same key is another delivery.
    let mut other = a.clone();
    other.target = "t-dedupe-2".into();
    assert_eq!(ob.enqueue(&[other]).await.unwrap().inserted, 1);
    assert_eq!(
        metrics()
            .deliveries_duplicate
            .with_label_values(&["t-dedupe"])
            .get()
            - dup_before,
        4
    );
    drop(ob);

    // Keys outlive the rows (pruned after done_retention) for the whole window.
    let ob = Outbox::open(
        &dir,
        OutboxOptions {
            done_retention: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    ob.prune(now() + 1.0).await.unwrap();
    assert!(rows(&ob).await.iter().all(|r| r.status != Status::Done));
    assert_eq!(
        ob.enqueue(std::slice::from_ref(&a))
            .await
            .unwrap()
            .duplicates,
        1
    );
    drop(ob);
    // A window of zero lets it through.
    let ob = Outbox::open(
        &dir,
        OutboxOptions {
            dedupe_window: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(ob.enqueue(&[a]).await.unwrap().inserted, 1);
}

#[tokio::test]
async fn cap_rejects_new_rows_and_keeps_old_ones() {
    let dir = state_dir("cap");
    let ob = Outbox::open(
        &dir,
        OutboxOptions {
            max_rows: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let full_before = metrics().outbox_full.get();
    let rejected_before = metrics()
        .deliveries
        .with_label_values(&["t-cap", "rejected"])
        .get();
    let url = "http://127.0.0.1:9/x";
    let reqs: Vec<_> = (0..5)
        .map(|i| request("t-cap", &format!("s{i}"), "ringing", url))
        .collect();
    let o = ob.enqueue(&reqs).await.unwrap();
    assert_eq!((o.inserted, o.duplicates, o.rejected_full), (3, 0, 2));
    assert_eq!(metrics().outbox_full.get() - full_before, 2);
    assert_eq!(
        metrics()
            .deliveries
            .with_label_values(&["t-cap", "rejected"])
            .get()
            - rejected_before,
        2
    );
    let r = rows(&ob).await;
    let sessions: Vec<&str> = r.iter().map(|r| r.session_id.as_str()).collect();
    assert_eq!(sessions, ["s0", "s1", "s2"], "the first three are intact");
    assert!(all(&r, Status::Pending));
    // A rejected request was not remembered as a duplicate: once there is
    // room it goes in.
    let p = ob.poll(now(), want("t-cap", 1)).await.unwrap();
    ob.complete(p.claimed[0].id, Completion::Delivered { status: 200 })
        .await
        .unwrap();
    let o = ob.enqueue(&reqs[3..]).await.unwrap();
    assert_eq!((o.inserted, o.rejected_full), (1, 1));
}

#[tokio::test]
async fn one_head_per_call_and_target() {
    let dir = state_dir("heads");
    let ob = Outbox::open(&dir, OutboxOptions::default()).unwrap();
    let url = "http://127.0.0.1:9/x";
    let mut reqs = Vec::new();
    for state in ["ringing", "answered", "hungup"] {
        for s in ["a", "b"] {
            reqs.push(request("t-heads", s, state, url));
        }
    }
    // Same call, other target: its own chain.
    reqs.push(request("t-heads-2", "a", "ringing", url));
    ob.enqueue(&reqs).await.unwrap();

    let p = ob.poll(now(), want("t-heads", 100)).await.unwrap();
    let got: Vec<(String, String)> = p
        .claimed
        .iter()
        .map(|c| (c.session_id.clone(), c.event_id.clone()))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|(_, e)| e.contains("ringing")));
    // Nothing more while they are in flight.
    assert!(ob
        .poll(now(), want("t-heads", 100))
        .await
        .unwrap()
        .claimed
        .is_empty());
    let a = p.claimed.iter().find(|c| c.session_id == "a").unwrap().id;
    let b = p.claimed.iter().find(|c| c.session_id == "b").unwrap().id;
    // a is retried later: its chain stays blocked; b is dead: b's next goes.
    ob.complete(
        a,
        Completion::Retry {
            at: now() + 3600.0,
            status: "500".into(),
            error: Some("boom".into()),
        },
    )
    .await
    .unwrap();
    ob.complete(
        b,
        Completion::Dead {
            status: "400".into(),
            error: Some("bad".into()),
        },
    )
    .await
    .unwrap();
    let p = ob.poll(now(), want("t-heads", 100)).await.unwrap();
    assert_eq!(p.claimed.len(), 1);
    assert_eq!(p.claimed[0].session_id, "b");
    assert!(p.claimed[0].event_id.contains("answered"));
    let next_a = p.next_ready["t-heads"];
    assert!(next_a > now() + 3000.0, "a's retry is the next ready head");
    // The other target has its own head for call a.
    let p2 = ob.poll(now(), want("t-heads-2", 100)).await.unwrap();
    assert_eq!(p2.claimed.len(), 1);

    // Reviving b's dead head while b's later row is in flight must not
    // put two of b's rows on the wire.
    assert!(ob.retry(b).await.unwrap());
    assert!(ob
        .poll(now(), want("t-heads", 100))
        .await
        .unwrap()
        .claimed
        .is_empty());
    // When the in-flight row ends, the revived (older) one goes first.
    ob.complete(p.claimed[0].id, Completion::Delivered { status: 200 })
        .await
        .unwrap();
    let p = ob.poll(now(), want("t-heads", 100)).await.unwrap();
    assert_eq!(p.claimed.len(), 1);
    assert_eq!(p.claimed[0].id, b);
    assert_eq!(p.claimed[0].attempts, 0, "attempts reset by retry");
}

#[tokio::test]
async fn crash_recovery_requeues_inflight_and_keeps_keys() {
    let sink = Sink::start().await;
    let dir = state_dir("crash");
    let ob = Outbox::open(&dir, OutboxOptions::default()).unwrap();
    let reqs: Vec<_> = (0..3)
        .map(|i| request("t-crash", &format!("s{i}"), "ringing", &sink.url("/crash")))
        .collect();
    assert_eq!(ob.enqueue(&reqs).await.unwrap().inserted, 3);
    let p = ob.poll(now(), want("t-crash", 2)).await.unwrap();
    assert_eq!(p.claimed.len(), 2);
    let r = rows(&ob).await;
    assert_eq!(r.iter().filter(|r| r.status == Status::Inflight).count(), 2);
    // "kill -9": the process vanishes with two rows in flight. Nothing else
    // is written; the file is simply opened again.
    drop(ob);

    let ob = Arc::new(Outbox::open(&dir, OutboxOptions::default()).unwrap());
    let r = rows(&ob).await;
    assert!(all(&r, Status::Pending), "{r:#?}");
    assert!(r.iter().all(|r| r.attempts == 0));
    // Keys survive the restart.
    let o = ob.enqueue(&reqs).await.unwrap();
    assert_eq!((o.inserted, o.duplicates), (0, 3));

    let (_tx, rx) = target_channel("t-crash: { retry: { initial_backoff: 20ms } }");
    let shutdown = CancellationToken::new();
    let h = spawn(ob.clone(), rx, shutdown.clone());
    let got = sink.wait_for(3).await;
    wait_rows(&ob, "all done", |r| all(r, Status::Done)).await;
    assert_eq!(got.len(), 3);
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap_or_default())
        .collect();
    ids.extend(got.iter().map(|r| r.header("idempotency-key").unwrap()));
    assert!(ids.contains(&"s0-ringing".to_string()));
    shutdown.cancel();
    h.stopped().await;
}

/// Child half of `a_real_crash_loses_nothing`: only acts when started by it.
#[tokio::test]
async fn crash_child() {
    let Ok(dir) = std::env::var("CALLHOOK_CRASH_CHILD_DIR") else {
        return;
    };
    let ob = Outbox::open(std::path::Path::new(&dir), OutboxOptions::default()).unwrap();
    let reqs: Vec<_> = (0..50)
        .map(|i| {
            request(
                "t-real-crash",
                &format!("s{}", i % 10),
                &format!("e{i}"),
                "http://127.0.0.1:9/x",
            )
        })
        .collect();
    // Acknowledged = committed; then ten heads go in flight.
    assert_eq!(ob.enqueue(&reqs).await.unwrap().inserted, 50);
    assert_eq!(
        ob.poll(now(), want("t-real-crash", 100))
            .await
            .unwrap()
            .claimed
            .len(),
        10
    );
    // Like kill -9: no destructor, no checkpoint, no clean close.
    std::process::abort();
}

#[tokio::test]
async fn a_real_crash_loses_nothing() {
    let dir = state_dir("real-crash");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("CALLHOOK_CRASH_CHILD_DIR", &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child aborts");
    let ob = Outbox::open(&dir, OutboxOptions::default()).unwrap();
    let r = rows(&ob).await;
    assert_eq!(r.len(), 50, "every acknowledged delivery survived");
    assert!(all(&r, Status::Pending), "in-flight rows are pending again");
    // Order is intact: per call, the first row is the only ready head.
    let p = ob.poll(now(), want("t-real-crash", 100)).await.unwrap();
    assert_eq!(p.claimed.len(), 10);
    for c in &p.claimed {
        let first = r.iter().find(|x| x.session_id == c.session_id).unwrap();
        assert_eq!(c.id, first.id);
    }
}

#[tokio::test]
async fn admin_list_stats_retry_and_prune() {
    let dir = state_dir("admin");
    let ob = Outbox::open(
        &dir,
        OutboxOptions {
            done_retention: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .unwrap();
    let url = "https://crm.example/hook?api_key=s3cr3t&x=1";
    let mut reqs: Vec<_> = (0..4)
        .map(|i| request("t-admin", &format!("s{i}"), "ringing", url))
        .collect();
    reqs[0]
        .headers
        .push(("Authorization".into(), "Bearer hunter2".into()));
    reqs[0].body = Some(vec![b'x'; 5000]);
    ob.enqueue(&reqs).await.unwrap();
    let p = ob.poll(now(), want("t-admin", 3)).await.unwrap();
    let mut ids: Vec<i64> = p.claimed.iter().map(|c| c.id).collect();
    ids.sort();
    ob.complete(ids[0], Completion::Delivered { status: 204 })
        .await
        .unwrap();
    for id in &ids[1..] {
        ob.complete(
            *id,
            Completion::Dead {
                status: "422".into(),
                error: Some("y".repeat(10_000)),
            },
        )
        .await
        .unwrap();
    }
    let s = ob.stats().await.unwrap();
    assert_eq!(
        (s.pending, s.inflight, s.done, s.dead, s.expired),
        (1, 0, 1, 2, 0)
    );
    assert_eq!(s.waiting_by_target.get("t-admin"), Some(&1));
    assert!(s.oldest_pending_age.unwrap() >= 0.0);

    let dead = ob
        .list(ListFilter {
            status: Some(Status::Dead),
            target: Some("t-admin".into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead[0].id > dead[1].id, "newest first");
    assert!(dead[0].last_error.as_ref().unwrap().len() <= 2048);
    assert_eq!(dead[0].last_status.as_deref(), Some("422"));
    let first = ob.get(ids[0]).await.unwrap().unwrap();
    let json = serde_json::to_string(&first).unwrap();
    assert!(
        !json.contains("hunter2") && !json.contains("s3cr3t"),
        "{json}"
    );
    assert_eq!(first.body_len, 5000);
    assert_eq!(first.body_excerpt.as_ref().unwrap().len(), 2048);
    assert_eq!(first.status, Status::Done);
    assert!(json.contains(r#""status":"done""#));

    // Retry: one, then all.
    assert!(ob.retry(ids[1]).await.unwrap());
    assert!(!ob.retry(ids[1]).await.unwrap(), "no longer dead");
    assert!(!ob.retry(999_999).await.unwrap());
    assert_eq!(ob.retry_all_dead().await.unwrap(), 1);
    let s = ob.stats().await.unwrap();
    assert_eq!((s.pending, s.dead, s.done), (3, 0, 1));
    let revived = ob.get(ids[1]).await.unwrap().unwrap();
    assert_eq!((revived.status, revived.attempts), (Status::Pending, 0));

    // Prune: done rows older than the retention go, waiting and dead stay.
    assert_eq!(ob.prune(now()).await.unwrap(), 0);
    assert_eq!(ob.prune(now() + 61.0).await.unwrap(), 1);
    let s = ob.stats().await.unwrap();
    assert_eq!((s.pending, s.done), (3, 0));
}

#[tokio::test]
async fn schema_version_is_checked() {
    let dir = state_dir("schema");
    drop(Outbox::open(&dir, OutboxOptions::default()).unwrap());
    {
        let c = rusqlite::Connection::open(dir.join("outbox.sqlite3")).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    let e = Outbox::open(&dir, OutboxOptions::default()).unwrap_err();
    assert!(e.to_string().contains("99"), "{e}");
}

/// Figures for the report: enqueue latency with FULL vs NORMAL and the
/// effect of group commit. `cargo test --release --test deliver_outbox -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn measure_enqueue_latency() {
    for durability in [Durability::Full, Durability::Normal] {
        let dir = state_dir("measure");
        let ob = Arc::new(
            Outbox::open(
                &dir,
                OutboxOptions {
                    durability,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let url = "http://127.0.0.1:9/x";
        // Sequential single-request batches (one caller awaiting each).
        let n = 300;
        let mut lat = Vec::new();
        for i in 0..n {
            let r = request("t-measure", &format!("seq{i}"), "ringing", url);
            let t = Instant::now();
            ob.enqueue(&[r]).await.unwrap();
            lat.push(t.elapsed());
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        println!(
            "{durability:?}: sequential enqueue of 1: p50 {:?} p99 {:?}",
            p(0.5),
            p(0.99)
        );
        // Batches of 10.
        let t = Instant::now();
        for i in 0..100 {
            let reqs: Vec<_> = (0..10)
                .map(|j| request("t-measure", &format!("b{i}-{j}"), "ringing", url))
                .collect();
            ob.enqueue(&reqs).await.unwrap();
        }
        println!(
            "{durability:?}: batch of 10: {:?} per batch",
            t.elapsed() / 100
        );
        // Submit cost on the caller and group commit with many submits in flight.
        let t = Instant::now();
        let mut receipts = Vec::new();
        let mut submit_cost = Duration::ZERO;
        for i in 0..20_000 {
            let r = request("t-measure", &format!("g{i}"), "ringing", url);
            let s = Instant::now();
            receipts.push(ob.submit(vec![r]));
            submit_cost += s.elapsed();
        }
        for r in receipts {
            r.await.unwrap();
        }
        let took = t.elapsed();
        println!(
            "{durability:?}: 20000 submits: {:.1} µs per submit on the caller, all committed in {took:?} ({:.0} rows/s)",
            submit_cost.as_secs_f64() * 1e6 / 20_000.0,
            20_000.0 / took.as_secs_f64()
        );
        drop(ob);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_set_the_per_target_depth_and_oldest_age_and_reset_drained_targets() {
    let dir = state_dir("per-target-gauges");
    let ob = Outbox::open(&dir, OutboxOptions::default()).unwrap();
    let url = "https://crm.example/hook";
    let mut reqs: Vec<_> = (0..3)
        .map(|i| request("t-gauge-a", &format!("g{i}"), "ringing", url))
        .collect();
    reqs.push(request("t-gauge-b", "gb", "ringing", url));
    ob.enqueue(&reqs).await.unwrap();
    let waiting = |t: &str| metrics().outbox_waiting.with_label_values(&[t]).get();
    let age = |t: &str| {
        metrics()
            .outbox_oldest_waiting_age_seconds
            .with_label_values(&[t])
            .get()
    };
    ob.stats().await.unwrap();
    assert_eq!((waiting("t-gauge-a"), waiting("t-gauge-b")), (3, 1));
    assert!(age("t-gauge-a") >= 0.0 && age("t-gauge-a") < 60.0);
    // b's only delivery goes out: b drops to 0 (it is not left at 1).
    let p = ob.poll(now(), want("t-gauge-b", 1)).await.unwrap();
    ob.complete(p.claimed[0].id, Completion::Delivered { status: 200 })
        .await
        .unwrap();
    ob.stats().await.unwrap();
    assert_eq!((waiting("t-gauge-a"), waiting("t-gauge-b")), (3, 0));
    assert_eq!(age("t-gauge-b"), 0.0);
}

/// Outcomes recorded together (one writer job for all that are queued)
/// still each count once, and a slot that asks for more gets the next
/// ready head in the same transaction: never a row that is not its call's
/// head, and never the same row twice.
#[tokio::test]
async fn batched_outcomes_and_claims_keep_one_head_per_call() {
    let dir = state_dir("batched");
    let ob = Arc::new(Outbox::open(&dir, OutboxOptions::default()).unwrap());
    let url = "http://127.0.0.1:9/x";
    let mut reqs = Vec::new();
    for state in ["ringing", "answered", "hungup"] {
        for s in 0..40 {
            reqs.push(request("t-batched", &format!("c{s}"), state, url));
        }
    }
    ob.enqueue(&reqs).await.unwrap();
    let p = ob.poll(now(), want("t-batched", 16)).await.unwrap();
    assert_eq!(p.claimed.len(), 16);
    // 16 slots, each recording its outcome and taking the next ready head,
    // all at once, until nothing is ready.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut slots = Vec::new();
    for row in p.claimed {
        let (ob, seen) = (ob.clone(), seen.clone());
        slots.push(tokio::spawn(async move {
            let mut next = Some(row);
            while let Some(row) = next.take() {
                seen.lock()
                    .unwrap()
                    .push((row.session_id.clone(), row.event_id.clone()));
                let mut f = ob
                    .complete_and_claim(
                        row.id,
                        Completion::Delivered { status: 200 },
                        Some("t-batched".into()),
                    )
                    .await
                    .unwrap();
                assert!(f.recorded);
                assert!(f.damaged.is_empty());
                next = f.next.pop();
            }
        }));
    }
    for s in slots {
        s.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 120, "every row sent exactly once");
    let unique: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 120);
    // Per call, in creation order.
    for s in 0..40 {
        let call = format!("c{s}");
        let order: Vec<&str> = seen
            .iter()
            .filter(|(c, _)| *c == call)
            .map(|(_, e)| e.as_str())
            .collect();
        assert_eq!(order.len(), 3);
        for (e, state) in order.iter().zip(["ringing", "answered", "hungup"]) {
            assert!(e.contains(state), "{call}: {order:?}");
        }
    }
    let st = ob.stats().await.unwrap();
    assert_eq!((st.done, st.pending, st.inflight), (120, 0, 0));
    // A row no longer in flight is not recorded twice.
    let f = ob
        .complete_and_claim(1, Completion::Delivered { status: 200 }, None)
        .await
        .unwrap();
    assert!(!f.recorded);
}

/// Slots that send their next delivery while the last outcome is being
/// recorded (`Outbox::record`, claiming up to two rows ahead, as the
/// dispatcher's slots do): every row once, each call in creation order, a
/// call's next row only after its previous one is recorded done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_outcomes_keep_call_order() {
    let dir = state_dir("pipelined");
    let ob = Arc::new(Outbox::open(&dir, OutboxOptions::default()).unwrap());
    let url = "http://127.0.0.1:9/x";
    let mut reqs = Vec::new();
    for state in ["ringing", "answered", "hungup", "ended"] {
        for s in 0..30 {
            reqs.push(request("t-pipe", &format!("c{s}"), state, url));
        }
    }
    ob.enqueue(&reqs).await.unwrap();
    let p = ob.poll(now(), want("t-pipe", 8)).await.unwrap();
    assert_eq!(p.claimed.len(), 8);
    // (call, event) per send, and the calls whose last row is recorded
    // done, in order.
    type Log = Arc<std::sync::Mutex<Vec<(String, String)>>>;
    let (sent, done): (Log, Log) = Default::default();
    let mut slots = Vec::new();
    for row in p.claimed {
        let (ob, sent, done) = (ob.clone(), sent.clone(), done.clone());
        slots.push(tokio::spawn(async move {
            let mut ahead = std::collections::VecDeque::from([row]);
            let mut last: Option<(callhook::deliver::outbox::Recording, (String, String))> = None;
            loop {
                let row = match ahead.pop_front() {
                    Some(r) => r,
                    None => match last.take() {
                        Some((rec, key)) => {
                            let f = rec.await.unwrap();
                            assert!(f.recorded);
                            done.lock().unwrap().push(key);
                            ahead.extend(f.next);
                            if ahead.is_empty() {
                                break;
                            }
                            continue;
                        }
                        None => break,
                    },
                };
                let key = (row.session_id.clone(), row.event_id.clone());
                {
                    // Sent only after every earlier row of its call is done.
                    let d = done.lock().unwrap();
                    let before = sent
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|(c, _)| *c == key.0)
                        .count();
                    let finished = d.iter().filter(|(c, _)| *c == key.0).count();
                    assert_eq!(
                        before, finished,
                        "{key:?} sent before its call's previous row was done"
                    );
                }
                sent.lock().unwrap().push(key.clone());
                tokio::task::yield_now().await;
                if let Some((rec, k)) = last.take() {
                    let f = rec.await.unwrap();
                    assert!(f.recorded);
                    done.lock().unwrap().push(k);
                    ahead.extend(f.next);
                }
                let n = 2 - ahead.len().min(2);
                let claim = (n > 0).then(|| ("t-pipe".to_string(), n));
                last = Some((
                    ob.record(row.id, Completion::Delivered { status: 200 }, claim),
                    key,
                ));
            }
        }));
    }
    for s in slots {
        tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .unwrap()
            .unwrap();
    }
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 120, "every row sent");
    let unique: std::collections::BTreeSet<_> = sent.iter().collect();
    assert_eq!(unique.len(), 120, "every row sent once");
    for s in 0..30 {
        let call = format!("c{s}");
        let order: Vec<&str> = sent
            .iter()
            .filter(|(c, _)| *c == call)
            .map(|(_, e)| e.as_str())
            .collect();
        for (e, state) in order.iter().zip(["ringing", "answered", "hungup", "ended"]) {
            assert!(e.contains(state), "{call}: {order:?}");
        }
    }
    let st = ob.stats().await.unwrap();
    assert_eq!((st.done, st.pending, st.inflight), (120, 0, 0));
    ob.close();
}

/// Slots the dispatcher offers are filled by the enqueue itself, in its
/// transaction: the rows are in flight once the enqueue is committed, no
/// more than offered, only heads, and a withdrawn offer claims nothing.
#[tokio::test]
async fn offered_slots_are_claimed_by_the_enqueue_that_stores_the_rows() {
    let dir = state_dir("handoff");
    let ob = Outbox::open(&dir, OutboxOptions::default()).unwrap();
    let url = "http://127.0.0.1:9/x";
    ob.offer_slots([("t-handoff".to_string(), 2)].into());
    let reqs = vec![
        request("t-handoff", "a", "ringing", url),
        request("t-handoff", "a", "answered", url),
        request("t-handoff", "b", "ringing", url),
        request("t-handoff", "c", "ringing", url),
        request("t-other", "a", "ringing", url),
    ];
    ob.enqueue(&reqs).await.unwrap();
    let h = ob.take_handed();
    assert!(h.damaged.is_empty());
    let got: Vec<(&str, &str)> = h
        .rows
        .iter()
        .map(|r| (r.target.as_str(), r.event_id.as_str()))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got
        .iter()
        .all(|(t, e)| *t == "t-handoff" && e.contains("ringing")));
    let st = ob.stats().await.unwrap();
    assert_eq!((st.inflight, st.pending), (2, 3));
    // Withdrawn by take_handed: the next enqueue claims nothing.
    ob.enqueue(&[request("t-handoff", "d", "ringing", url)])
        .await
        .unwrap();
    assert!(ob.take_handed().rows.is_empty());
    // The rest is polled as usual; a's second row waits for its first.
    let p = ob.poll(now(), want("t-handoff", 10)).await.unwrap();
    let mut ids: Vec<&str> = p.claimed.iter().map(|c| c.event_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.iter().all(|e| e.contains("ringing")));
}

/// The poll flag goes up with a commit that may have left ready rows no
/// hand-off took (no offer for one of its targets, an offer used up, an
/// operator retry), and stays down when the hand-off took every ready head
/// it saw, or the stored rows are not heads (they follow their call's
/// delivery in flight, which claims them when it ends).
#[tokio::test]
async fn the_poll_flag_says_when_a_hand_off_left_rows_behind() {
    let dir = state_dir("pollflag");
    let ob = Outbox::open(&dir, OutboxOptions::default()).unwrap();
    let flag = ob.poll_flag();
    let url = "http://127.0.0.1:9/x";
    let t = "t-pollflag";
    let offer = |n: usize| ob.offer_slots([(t.to_string(), n)].into());
    assert!(!flag.take(), "down at the start");
    // No offer: the row waits for a poll.
    ob.enqueue(&[request(t, "a", "ringing", url)])
        .await
        .unwrap();
    assert!(flag.take());
    assert!(!flag.take(), "taking it lowers it");
    // An offer larger than what is ready takes all of it (a's row too).
    offer(3);
    ob.enqueue(&[request(t, "b", "ringing", url)])
        .await
        .unwrap();
    assert!(!flag.take());
    assert_eq!(ob.take_handed().rows.len(), 2);
    // An offer used up: more may be ready.
    offer(1);
    ob.enqueue(&[
        request(t, "c", "ringing", url),
        request(t, "d", "ringing", url),
    ])
    .await
    .unwrap();
    assert!(flag.take());
    assert_eq!(ob.take_handed().rows.len(), 1);
    // A target with an offer and one without in the same commit.
    offer(5);
    ob.enqueue(&[
        request(t, "e", "ringing", url),
        request("t-pollflag-other", "e", "ringing", url),
    ])
    .await
    .unwrap();
    assert!(flag.take());
    let handed = ob.take_handed().rows;
    assert_eq!(handed.len(), 2, "c or d, and e: {handed:?}");
    // A row behind its call's head in flight is not ready: nothing to poll.
    offer(5);
    ob.enqueue(&[request(t, "e", "answered", url)])
        .await
        .unwrap();
    assert!(!flag.take());
    assert!(ob.take_handed().rows.is_empty());
    // A withdrawn offer (the dispatcher is between passes) is no offer.
    ob.enqueue(&[request(t, "f", "ringing", url)])
        .await
        .unwrap();
    assert!(flag.take());
    // An operator retry makes a row ready again.
    let id = handed[0].id;
    let dead = Completion::Dead {
        status: "400".into(),
        error: None,
    };
    assert!(ob.complete(id, dead).await.unwrap());
    assert!(!flag.take(), "an outcome is not a poll reason");
    assert!(ob.retry(id).await.unwrap());
    assert!(flag.take());
    assert!(ob
        .complete(
            handed[1].id,
            Completion::Dead {
                status: "400".into(),
                error: None,
            }
        )
        .await
        .unwrap());
    assert_eq!(ob.retry_all_dead().await.unwrap(), 1);
    assert!(flag.take());
}
