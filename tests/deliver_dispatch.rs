//! End to end: outbox → dispatcher → a real HTTP sink on 127.0.0.1.
//!
//! Each test uses its own target name, so the process-wide metrics it checks
//! are its own.

mod support_http;
mod support_tmp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use callhook::deliver::outbox::Status;
use callhook::metrics::metrics;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support_http::rig::Rig;
use support_http::*;

fn counter(target: &str, outcome: &str) -> u64 {
    metrics()
        .deliveries
        .with_label_values(&[target, outcome])
        .get()
}

/// Waits until an outcome counter reaches `n` (it is counted right after the
/// row's commit, a moment after the row itself is visible).
async fn wait_counter(target: &str, outcome: &str, n: u64) {
    let deadline = Instant::now() + WAIT;
    while counter(target, outcome) < n {
        assert!(
            Instant::now() < deadline,
            "{target}/{outcome}: {} of {n}",
            counter(target, outcome)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(counter(target, outcome), n, "{target}/{outcome}");
}

fn attempts(target: &str, status: &str) -> u64 {
    metrics()
        .delivery_attempts
        .with_label_values(&[target, status])
        .get()
}

/// Standard Webhooks verification written from the spec, independently of
/// callhook's signer: HMAC-SHA256 over `id.timestamp.body` with the
/// base64-decoded `whsec_` key, any `v1,` entry of the header may match.
fn verify(secret: &str, id: &str, ts: &str, body: &[u8], header: &str) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let want = STANDARD.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_the_exact_request_signed_with_stable_ids() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    std::env::set_var("CALLHOOK_DISPATCH_TEST_SECRET", SECRET);
    let sink = Sink::start().await;
    sink.queue("/calls", [Reply::status(500).body("try later")]);
    let rig = Rig::start(
        "exact",
        r#"
t-exact:
  retry: { initial_backoff: 20ms, max_backoff: 50ms }
  signing: { secret: "${CALLHOOK_DISPATCH_TEST_SECRET}" }
  headers: { X-Api-Token: static-token }
"#,
    );
    let mut req = request(
        "t-exact",
        "sess-1",
        "answered",
        &sink.url("/calls?src=pbx&n=%2B4930"),
    );
    req.method = "PUT".into();
    req.headers.push(("X-Call".into(), "42".into()));
    req.headers.push(("X-Multi".into(), "a".into()));
    req.headers.push(("X-Multi".into(), "b".into()));
    rig.enqueue(&[req.clone()]).await;

    let got = sink.wait_for(2).await;
    wait_rows(&rig.outbox, "done", |r| all(r, Status::Done)).await;
    assert_eq!(got.len(), 2, "one failure, one success");
    for r in &got {
        assert_eq!(r.method, "PUT");
        assert_eq!(r.uri, "/calls?src=pbx&n=%2B4930");
        assert_eq!(&r.body, req.body.as_ref().unwrap());
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(r.header("x-call").as_deref(), Some("42"));
        let multi: Vec<_> = r.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi.len(), 2, "repeated request headers are kept");
        assert_eq!(r.header("x-api-token").as_deref(), Some("static-token"));
        assert_eq!(
            r.header("user-agent").as_deref(),
            Some(concat!("callhook/", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(
            r.header("idempotency-key").as_deref(),
            Some("sess-1-answered")
        );
        assert_eq!(
            r.header("webhook-id").as_deref(),
            Some(req.event_id.as_str())
        );
        let ts = r.header("webhook-timestamp").unwrap();
        let ts_n: f64 = ts.parse().unwrap();
        assert!((ts_n - now()).abs() < 30.0, "timestamp of the attempt");
        let sig = r.header("webhook-signature").unwrap();
        assert!(sig.starts_with("v1,"));
        assert!(verify(SECRET, &req.event_id, &ts, &r.body, &sig), "{sig}");
        // A tampered body does not verify.
        assert!(!verify(SECRET, &req.event_id, &ts, b"{}", &sig));
    }
    let row = &rows(&rig.outbox).await[0];
    assert_eq!((row.attempts, row.last_status.as_deref()), (2, Some("200")));
    wait_counter("t-exact", "delivered", 1).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_n_times_then_delivers_counting_once() {
    let sink = Sink::start().await;
    sink.queue("/n", (0..3).map(|_| Reply::status(500)));
    let rig = Rig::start(
        "retry-n",
        "t-retry-n: { retry: { initial_backoff: 20ms, max_backoff: 40ms } }",
    );
    let retries_before = metrics()
        .delivery_retries
        .with_label_values(&["t-retry-n"])
        .get();
    rig.enqueue(&[request("t-retry-n", "s", "ringing", &sink.url("/n"))])
        .await;
    let r = wait_rows(&rig.outbox, "done", |r| all(r, Status::Done)).await;
    assert_eq!(r[0].attempts, 4);
    // Give a stray duplicate the chance to show up, then count.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.count(), 4, "exactly N + 1 attempts");
    wait_counter("t-retry-n", "delivered", 1).await;
    assert_eq!(counter("t-retry-n", "dead"), 0);
    assert_eq!(attempts("t-retry-n", "500"), 3);
    assert_eq!(attempts("t-retry-n", "200"), 1);
    assert_eq!(
        metrics()
            .delivery_retries
            .with_label_values(&["t-retry-n"])
            .get()
            - retries_before,
        3
    );
    assert_eq!(
        metrics()
            .event_to_request_seconds
            .with_label_values(&["t-retry-n"])
            .get_sample_count(),
        1,
        "first attempt only"
    );
    assert_eq!(
        metrics()
            .delivery_seconds
            .with_label_values(&["t-retry-n"])
            .get_sample_count(),
        4
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let sink = Sink::start().await;
    sink.queue(
        "/ra",
        [Reply::status(429)
            .header("Retry-After", "1")
            .body("slow down")],
    );
    let rig = Rig::start(
        "retry-after",
        "t-retry-after: { retry: { initial_backoff: 20ms, max_backoff: 50ms } }",
    );
    rig.enqueue(&[request("t-retry-after", "s", "ringing", &sink.url("/ra"))])
        .await;
    let got = sink.wait_for(2).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(3), "retried after {gap:?}");
    wait_rows(&rig.outbox, "done", |r| all(r, Status::Done)).await;
    assert_eq!(attempts("t-retry-after", "429"), 1);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_down_then_up_delivers_everything_in_call_order() {
    // Reserve a port, then leave it closed: connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/calls");
    let rig = Rig::start(
        "down-up",
        r#"
t-down-up:
  concurrency: 4
  retry: { max_attempts: 1000, initial_backoff: 20ms, max_backoff: 100ms }
  breaker: { failure_threshold: 3, open_for: 150ms }
"#,
    );
    let states = ["ringing", "answered", "hungup"];
    let calls = ["call-a", "call-b", "call-c"];
    let mut reqs = Vec::new();
    for st in states {
        for c in calls {
            reqs.push(request("t-down-up", c, st, &url));
        }
    }
    rig.enqueue(&reqs).await;
    // Wait until the heads have failed a few times.
    wait_rows(&rig.outbox, "failed attempts", |r| {
        r.iter().filter(|r| r.attempts >= 2).count() >= 2
    })
    .await;
    assert!(
        attempts("t-down-up", "connect") >= 4,
        "connection refused is counted as `connect`"
    );
    let sink = Sink::start_on(port).await.expect("port still free");
    let got = sink.wait_for(9).await;
    wait_rows(&rig.outbox, "all done", |r| all(r, Status::Done)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.count(), 9, "each delivered once");
    for c in calls {
        let order: Vec<String> = got
            .iter()
            .map(|r| String::from_utf8(r.body.clone()).unwrap())
            .filter(|b| b.contains(c))
            .collect();
        let want: Vec<String> = states
            .iter()
            .map(|s| format!(r#"{{"session":"{c}","state":"{s}"}}"#))
            .collect();
        assert_eq!(order, want, "order of {c}");
    }
    wait_counter("t-down-up", "delivered", 9).await;
    assert_eq!(counter("t-down-up", "dead"), 0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_dead_gone_disables_and_operators_can_retry() {
    let sink = Sink::start().await;
    sink.queue(
        "/refuse",
        [Reply::status(422).body(&format!("bad field x {}", "z".repeat(5000)))],
    );
    sink.queue("/gone", [Reply::status(410).body("unsubscribed")]);
    let yaml = r#"
t-refuse: { retry: { initial_backoff: 20ms } }
t-gone: { retry: { initial_backoff: 20ms } }
"#;
    let rig = Rig::start("refuse", yaml);
    rig.enqueue(&[request("t-refuse", "s1", "ringing", &sink.url("/refuse"))])
        .await;
    let r = wait_rows(&rig.outbox, "dead", |r| all(r, Status::Dead)).await;
    assert_eq!(r[0].attempts, 1, "no retry for a 4xx");
    assert_eq!(r[0].last_status.as_deref(), Some("422"));
    let excerpt = r[0].last_error.as_deref().unwrap();
    assert!(excerpt.starts_with("bad field x"), "{excerpt}");
    assert!(excerpt.len() <= 2048);
    wait_counter("t-refuse", "dead", 1).await;
    // The operator fixes the CRM and retries it.
    assert!(rig.outbox.retry(r[0].id).await.unwrap());
    wait_rows(&rig.outbox, "done", |r| all(r, Status::Done)).await;
    assert_eq!(sink.for_path("/refuse").len(), 2);
    wait_counter("t-refuse", "delivered", 1).await;

    // 410: dead, and the target is disabled: its other deliveries wait.
    rig.enqueue(&[request("t-gone", "g1", "ringing", &sink.url("/gone"))])
        .await;
    wait_rows(&rig.outbox, "gone dead", |r| {
        r.iter()
            .any(|r| r.target == "t-gone" && r.status == Status::Dead)
    })
    .await;
    let disabled = || {
        metrics()
            .target_disabled
            .with_label_values(&["t-gone"])
            .get()
    };
    assert_eq!(disabled(), 1);
    rig.enqueue(&[request("t-gone", "g2", "ringing", &sink.url("/gone"))])
        .await;
    assert_eq!(rig.outbox.retry_all_dead().await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sink.for_path("/gone").len(),
        1,
        "nothing sent while disabled"
    );
    let r = rows(&rig.outbox).await;
    assert!(r
        .iter()
        .filter(|r| r.target == "t-gone")
        .all(|r| r.status == Status::Pending));
    // A reload re-enables it; both go out.
    rig.targets
        .send(Arc::new(targets(yaml)))
        .expect("dispatcher listens");
    wait_rows(&rig.outbox, "all done", |r| all(r, Status::Done)).await;
    assert_eq!(disabled(), 0);
    assert_eq!(sink.for_path("/gone").len(), 3);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_deliveries_are_never_sent() {
    let sink = Sink::start().await;
    sink.set_default("/blocked", Reply::status(503));
    let rig = Rig::start(
        "expired",
        "t-expired: { retry: { initial_backoff: 50ms, max_backoff: 50ms, max_attempts: 1000 } }",
    );
    // Already stale when enqueued.
    let mut stale = request("t-expired", "s1", "ringing", &sink.url("/stale"));
    stale.expires_at = Some(now() - 1.0);
    // Fresh when enqueued, but stuck behind a head that keeps failing.
    let head = request("t-expired", "s2", "ringing", &sink.url("/blocked"));
    let mut popup = request("t-expired", "s2", "answered", &sink.url("/popup"));
    popup.expires_at = Some(now() + 0.4);
    rig.enqueue(&[stale, head, popup]).await;
    let r = wait_rows(&rig.outbox, "two expired", |r| {
        r.iter().filter(|r| r.status == Status::Expired).count() == 2
    })
    .await;
    assert!(r
        .iter()
        .all(|r| r.attempts == 0 || r.session_id == "s2" && r.event_id.contains("ringing")));
    assert!(sink.for_path("/stale").is_empty());
    assert!(sink.for_path("/popup").is_empty());
    assert!(!sink.for_path("/blocked").is_empty());
    wait_counter("t-expired", "expired", 2).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_stops_traffic_then_probes() {
    let sink = Sink::start().await;
    sink.set_default("/br", Reply::status(500));
    let rig = Rig::start(
        "breaker",
        r#"
t-breaker:
  concurrency: 1
  retry: { max_attempts: 100, initial_backoff: 10ms, max_backoff: 10ms }
  breaker: { failure_threshold: 3, open_for: 1s }
"#,
    );
    let state = || {
        metrics()
            .breaker_state
            .with_label_values(&["t-breaker"])
            .get()
    };
    let reqs: Vec<_> = (0..6)
        .map(|i| request("t-breaker", &format!("s{i}"), "ringing", &sink.url("/br")))
        .collect();
    rig.enqueue(&reqs).await;
    let got = sink.wait_for(3).await;
    let t3 = got[2].at;
    // Open: nothing for open_for.
    let deadline = Instant::now() + WAIT;
    while state() != 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = sink.wait_for(4).await;
    assert_eq!(got.len(), 4, "one probe after open_for");
    let probe_gap = got[3].at - t3;
    assert!(
        probe_gap >= Duration::from_millis(950),
        "probe after {probe_gap:?}"
    );
    // The probe failed: open again; the next probe succeeds and closes it.
    sink.set_default("/br", Reply::status(200));
    let got = sink.wait_for(5).await;
    let gap = got[4].at - got[3].at;
    assert!(
        gap >= Duration::from_millis(950),
        "second probe after {gap:?}"
    );
    let r = wait_rows(&rig.outbox, "all done", |r| all(r, Status::Done)).await;
    assert_eq!(state(), 0);
    // Waiting behind the breaker used no attempts: one attempt per request.
    let total: u32 = r.iter().map(|r| r.attempts).sum();
    assert_eq!(total as usize, sink.count());
    assert_eq!(sink.count(), 4 + 6, "4 failures, then each of the 6 once");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_on_the_wire_and_requeues_the_rest() {
    let sink = Sink::start().await;
    sink.set_default(
        "/slow",
        Reply::status(200).delay(Duration::from_millis(300)),
    );
    let rig = Rig::start(
        "shutdown",
        "t-shutdown: { concurrency: 2, rate_limit: 2/s, timeout: 2s }",
    );
    let reqs: Vec<_> = (0..4)
        .map(|i| {
            request(
                "t-shutdown",
                &format!("s{i}"),
                "ringing",
                &sink.url("/slow"),
            )
        })
        .collect();
    rig.enqueue(&reqs).await;
    sink.wait_for(1).await;
    let started = Instant::now();
    rig.shutdown.cancel();
    rig.handle.stopped().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    let r = rows(&rig.outbox).await;
    assert!(
        r.iter()
            .all(|r| matches!(r.status, Status::Done | Status::Pending)),
        "{r:#?}"
    );
    let done = r.iter().filter(|r| r.status == Status::Done).count();
    assert_eq!(
        done,
        sink.count(),
        "what reached the sink was recorded as done"
    );
    assert!((1..4).contains(&done), "{done}");
    // Nothing went out after the stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(done, sink.count());
}

/// A request that can never be sent (a URL longer than HTTP allows, a path
/// that would be resolved elsewhere, one the rules refused) is dead at its
/// first attempt with the reason, never retried as if the target were down,
/// and the call's next delivery to the same target goes out right after.
#[tokio::test]
async fn requests_that_can_never_be_sent_are_dead_at_once_and_never_block_the_call() {
    let sink = Sink::start().await;
    let rig = Rig::start(
        "never-sendable",
        "never-sendable: { retry: { max_attempts: 50, initial_backoff: 2s } }",
    );
    let long = request(
        "never-sendable",
        "call-1",
        "ringing",
        &sink.url(&format!("/pop?name={}", "N".repeat(100 * 1024))),
    );
    let dots = request(
        "never-sendable",
        "call-1",
        "answered",
        &sink.url("/crm/%2E%2E/pop"),
    );
    let mut refused = request("never-sendable", "call-1", "held", &sink.url("/crm//pop"));
    refused.refused = Some("the URL path segment made of %CALLER_ID% would be empty".into());
    let next = request("never-sendable", "call-1", "hungup", &sink.url("/calls"));
    let started = Instant::now();
    rig.enqueue(&[long, dots]).await;
    let o = rig.outbox.enqueue(&[refused, next]).await.unwrap();
    assert_eq!((o.inserted, o.refused), (1, 1), "{o:?}");
    rig.handle.notify();
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].path(), "/calls");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the next delivery waited {:?} behind requests that can never be sent",
        started.elapsed()
    );
    // The sink answered; the outcome is committed just after.
    let rows = wait_rows(&rig.outbox, "the record done", |r| {
        r.iter()
            .any(|x| x.event_id.contains("/hungup/") && x.status == Status::Done)
    })
    .await;
    let by_state = |s: &str| {
        rows.iter()
            .find(|r| r.event_id.contains(&format!("/{s}/")))
            .unwrap()
    };
    let long = by_state("ringing");
    assert_eq!((long.status, long.attempts), (Status::Dead, 1));
    assert!(
        long.last_error
            .as_deref()
            .unwrap()
            .contains("cannot be sent"),
        "{long:?}"
    );
    let dots = by_state("answered");
    assert_eq!(dots.status, Status::Dead);
    assert!(
        dots.last_error.as_deref().unwrap().contains("dot segment"),
        "{dots:?}"
    );
    let refused = by_state("held");
    assert_eq!((refused.status, refused.attempts), (Status::Dead, 0));
    assert_eq!(refused.last_status.as_deref(), Some("refused"));
    assert_eq!(by_state("hungup").status, Status::Done);
    // Counted by the attempt just after its outcome is committed.
    let deadline = Instant::now() + WAIT;
    while attempts("never-sendable", "invalid") < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(attempts("never-sendable", "invalid"), 2);
    assert_eq!(sink.count(), 1, "nothing else reached the sink");
    // An operator retry of a refused row refuses it again.
    assert!(rig.outbox.retry(refused.id).await.unwrap());
    rig.handle.notify();
    wait_rows(&rig.outbox, "the refused row dead again", |r| {
        r.iter()
            .any(|x| x.id == refused.id && x.status == Status::Dead && x.attempts == 1)
    })
    .await;
    assert_eq!(sink.count(), 1);
    rig.stop().await;
}

/// A CRM down for 3 s under steady traffic (20 screen-pops a second, each
/// fresh for 30 s): the breaker opens, probes after 1 s and 2 s more, and
/// deliveries resume well within 3 s of the CRM coming back; every
/// screen-pop raised meanwhile is still delivered (none expires because of
/// the breaker); the default settings are used (first probe 1 s, doubling
/// to 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_second_crm_outage_costs_no_screen_pop() {
    let sink = Sink::start().await;
    let rig = Rig::start("blip", "t-blip: { concurrency: 4 }");
    let state = || metrics().breaker_state.with_label_values(&["t-blip"]).get();
    let pop = |i: usize| {
        let mut r = request("t-blip", &format!("pop-{i}"), "ringing", &sink.url("/pop"));
        r.expires_at = Some(r.created_at + 30.0);
        r
    };
    let mut i = 0;
    // 20 a second, each enqueued as it happens.
    let send_for = |d: Duration, i: &mut usize| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            let r = pop(*i);
            *i += 1;
            let (o, h) = (rig.outbox.clone(), rig.handle.clone());
            tokio::spawn(async move {
                o.enqueue(&[r]).await.unwrap();
                h.notify();
            });
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    tokio::task::block_in_place(|| send_for(Duration::from_secs(1), &mut i));
    sink.set_fallback(Reply::status(503));
    let down_at = Instant::now();
    tokio::task::block_in_place(|| send_for(Duration::from_secs(3), &mut i));
    assert_eq!(state(), 2, "the breaker opened during the outage");
    let up_at = Instant::now();
    sink.set_fallback(Reply::status(200));
    let during = i;
    tokio::task::block_in_place(|| send_for(Duration::from_secs(2), &mut i));
    let total = i;
    let rows = wait_rows(&rig.outbox, "every pop delivered", |r| {
        r.len() == total
            && r.iter()
                .all(|x| x.status == Status::Done || x.status == Status::Expired)
    })
    .await;
    let expired = rows.iter().filter(|r| r.status == Status::Expired).count();
    assert_eq!(expired, 0, "screen-pops expired because of the breaker");
    let got = sink.received();
    let first_ok = got
        .iter()
        .filter(|r| r.at >= up_at)
        .map(|r| r.at)
        .min()
        .unwrap();
    let resumed = first_ok - up_at;
    let failed = got
        .iter()
        .filter(|r| r.at >= down_at && r.at < up_at)
        .count();
    eprintln!(
        "outage 3 s: {failed} failed requests (threshold + probes), first delivery {resumed:?} after the CRM was back"
    );
    assert!(
        resumed <= Duration::from_secs(3),
        "resumed after {resumed:?}"
    );
    // Every pop raised before the CRM was back went out soon after it was.
    let last_backlog = got
        .iter()
        .filter(|r| r.at >= up_at)
        .map(|r| r.at)
        .max()
        .unwrap();
    assert!(during > 60, "steady traffic: {during}");
    assert!(
        last_backlog - up_at <= Duration::from_secs(5),
        "the backlog drained {:?} after the CRM was back",
        last_backlog - up_at
    );
    // While open, the CRM saw only the threshold and the probes.
    assert!(
        failed <= 5 + 4 + 3,
        "{failed} requests hit the CRM while it was down"
    );
    rig.stop().await;
}
