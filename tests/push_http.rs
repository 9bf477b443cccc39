//! The push endpoint's HTTP contract against a scripted normalizer: what
//! reaches the queue, bounded waits (full queue, late or failed
//! acknowledgement), configurable path/parameter/header, body limits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderName;
use callhook::config::{PushTeam, Secret};
use callhook::http::push::{PushState, Teams};
use callhook::http::{self, ApiState, Readiness};
use callhook::source::{PushKind, PushReceipt, PushSide, SourceEvent};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "acme-push-token-1";

struct Endpoint {
    url: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves the router with a push endpoint on `/hooks/cc`, token in `?key=`
/// or `X-Team-Key`, feeding `tx`.
async fn serve(
    tx: mpsc::Sender<SourceEvent>,
    queue_wait: Duration,
    ack_wait: Duration,
) -> Endpoint {
    let teams = Teams::new(&[PushTeam {
        name: "acme".into(),
        token: Secret::new(TOKEN),
        timezone: jiff::tz::TimeZone::UTC,
    }]);
    // The receiver keeps the last value when the sender is gone.
    let (_, teams_rx) = watch::channel(Arc::new(teams));
    let state = ApiState {
        readiness: Arc::new(|| Readiness {
            ready: true,
            pbx: BTreeMap::new(),
            outbox_writable: true,
            cluster: None,
            outbox_polling: true,
            outbox_error: None,
        }),
        reload: None,
        admin_token: None,
        outbox: None,
        live: None,
        meetip: None,
        push: Some(Arc::new(PushState {
            path: "/hooks/cc".into(),
            token_param: "key".into(),
            token_header: HeaderName::from_static("x-team-key"),
            teams: teams_rx,
            tx,
            queue_wait,
            ack_wait,
            forward: None,
        })),
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let stop = CancellationToken::new();
    let t = stop.clone();
    tokio::spawn(async move { http::serve(l, http::router(state), t).await });
    Endpoint {
        url,
        http: reqwest::Client::new(),
        stop,
    }
}

impl Endpoint {
    async fn post(
        &self,
        path_query: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, serde_json::Value, Option<String>) {
        let mut r = self
            .http
            .post(format!("{}{path_query}", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string());
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let v = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(serde_json::Value::Null);
        (status, v, retry)
    }
}

const BODY: &str = "sessionid=h.1&event=ringing&source=CALLEE&calltype=dialin&activenum=555&extension=1001&eventTime=1772352000&vip=yes";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_reaches_the_queue_and_the_ack_decides_the_answer() {
    let (tx, mut rx) = mpsc::channel(8);
    let ep = serve(tx, Duration::from_secs(2), Duration::from_secs(2)).await;
    // A scripted normalizer: accept, duplicate, fail, drop.
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut i = 0;
        while let Some(ev) = rx.recv().await {
            let SourceEvent::Push {
                team,
                received_at,
                event,
                ack,
            } = ev
            else {
                panic!("not a push");
            };
            let ack = ack.expect("an acknowledgement to answer");
            match i {
                0 => ack
                    .send(Ok(PushReceipt {
                        duplicate: false,
                        full: false,
                    }))
                    .unwrap(),
                1 => ack
                    .send(Ok(PushReceipt {
                        duplicate: true,
                        full: false,
                    }))
                    .unwrap(),
                2 => ack.send(Err("disk full".into())).unwrap(),
                _ => drop(ack),
            }
            i += 1;
            seen.push((team, received_at, event));
            if i == 4 {
                break;
            }
        }
        seen
    });
    let (s, v, _) = ep.post("/hooks/cc?key=acme-push-token-1", &[], BODY).await;
    assert_eq!(
        (s, v),
        (
            200,
            serde_json::json!({"accepted": true, "duplicate": false})
        )
    );
    let (s, v, _) = ep.post("/hooks/cc", &[("X-Team-Key", TOKEN)], BODY).await;
    assert_eq!((s, v["duplicate"].clone()), (200, serde_json::json!(true)));
    let (s, _, retry) = ep.post("/hooks/cc", &[("X-Team-Key", TOKEN)], BODY).await;
    assert_eq!((s, retry.as_deref()), (503, Some("1")), "outbox failure");
    let (s, _, retry) = ep.post("/hooks/cc", &[("X-Team-Key", TOKEN)], BODY).await;
    assert_eq!(
        (s, retry.as_deref()),
        (503, Some("1")),
        "acknowledgement dropped"
    );
    let seen = seen.await.unwrap();
    let (team, received_at, ev) = &seen[0];
    assert_eq!(&**team, "acme");
    assert!((received_at - callhook::source::now_epoch()).abs() < 30.0);
    assert_eq!(ev.session_id, "h.1");
    assert_eq!(ev.kind, PushKind::Ringing);
    assert_eq!(ev.side, Some(PushSide::Callee));
    assert_eq!(ev.extension.as_deref(), Some("1001"));
    assert_eq!(ev.event_time, Some(1772352000.0));
    assert_eq!(ev.extra.get("vip").map(String::as_str), Some("yes"));
    assert!(
        !ev.extra.contains_key("key"),
        "the token never becomes data"
    );
    // The default path is not mounted when another one is configured.
    let (s, _, _) = ep
        .post("/v1/events/astercc?key=acme-push-token-1", &[], BODY)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_503_retry_after_within_the_bounded_wait() {
    let (tx, _rx) = mpsc::channel(1);
    tx.send(SourceEvent::AmiDisconnected {
        pbx: "main".into(),
        at: 0.0,
    })
    .await
    .unwrap();
    let ep = serve(tx, Duration::from_millis(300), Duration::from_secs(2)).await;
    let started = Instant::now();
    let (s, v, retry) = ep.post("/hooks/cc", &[("X-Team-Key", TOKEN)], BODY).await;
    let waited = started.elapsed();
    assert_eq!((s, retry.as_deref()), (503, Some("1")));
    assert_eq!(v["accepted"], false);
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_push_is_503_after_the_ack_wait() {
    let (tx, mut rx) = mpsc::channel(8);
    let ep = serve(tx, Duration::from_secs(2), Duration::from_millis(300)).await;
    let hold = tokio::spawn(async move {
        // Keep the acknowledgement without answering.
        let ev = rx.recv().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(ev);
    });
    let started = Instant::now();
    let (s, _, retry) = ep.post("/hooks/cc", &[("X-Team-Key", TOKEN)], BODY).await;
    assert_eq!((s, retry.as_deref()), (503, Some("1")));
    assert!(started.elapsed() < Duration::from_secs(2));
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_queue_is_503_and_bodies_are_bounded() {
    let (tx, rx) = mpsc::channel(8);
    drop(rx);
    let ep = serve(tx, Duration::from_secs(2), Duration::from_secs(2)).await;
    let (s, _, retry) = ep.post("/hooks/cc", &[("X-Team-Key", TOKEN)], BODY).await;
    assert_eq!((s, retry.as_deref()), (503, Some("1")), "shutting down");
    let big = format!("{BODY}&blob={}", "x".repeat(70 * 1024));
    let (s, v, _) = ep.post("/hooks/cc", &[("X-Team-Key", TOKEN)], &big).await;
    assert_eq!(s, 413);
    assert!(v["error"].as_str().unwrap().contains("65536"), "{v}");
    let long = format!("{BODY}&note={}", "y".repeat(5000));
    let (s, v, _) = ep.post("/hooks/cc", &[("X-Team-Key", TOKEN)], &long).await;
    assert_eq!((s, v["field"].clone()), (400, serde_json::json!("note")));
    // Wrong token: 401, nothing queued.
    let (s, _, _) = ep
        .post("/hooks/cc", &[("X-Team-Key", "acme-push-token-2")], BODY)
        .await;
    assert_eq!(s, 401);
    // The size limit applies to every request, before any handler runs.
    let (s, _, _) = ep
        .post("/hooks/cc", &[("X-Team-Key", "acme-push-token-2")], &big)
        .await;
    assert_eq!(s, 413);
}
