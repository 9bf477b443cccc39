//! The dispatcher's poll skip (see `deliver::dispatcher`, **Hand-off**):
//! woken by a commit whose hand-off took every ready row, it sends them
//! without polling; every other row still goes out at once. The loop's
//! 5 s safety-net wake-up is set out of reach here, so a row left behind
//! by a skipped poll would hang the test instead of arriving late.

mod support_http;
mod support_tmp;

use std::collections::BTreeMap;
use std::time::Duration;

use callhook::deliver::outbox::Status;
use support_http::rig::Rig;
use support_http::*;

/// Out of reach: no test waits this long.
const NEVER: Duration = Duration::from_secs(3600);

/// Bursts of enqueues from several tasks at once, for targets with few
/// slots: rows land while every slot is busy, while the loop is between
/// passes (offers withdrawn), and beyond what was offered. Only the
/// outbox's own wake-ups (no `DispatcherHandle::notify`): every row is
/// sent, each call's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_no_hand_off_took_are_still_sent() {
    let sink = Sink::start().await;
    let rig = Rig::with_targets(
        "handoff-burst",
        targets(
            "t-hb-1: { concurrency: 1 }\nt-hb-2: { concurrency: 2 }\nt-hb-4: { concurrency: 4 }\n",
        ),
        Some(NEVER),
    );
    let url = sink.url("/hook");
    let states = ["ringing", "answered", "hungup"];
    let mut tasks = Vec::new();
    for task in 0..6 {
        let ob = rig.outbox.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..5 {
                for state in states {
                    let mut batch = Vec::new();
                    for call in 0..2 {
                        let session = format!("hb-{task}-{round}-{call}");
                        let target = ["t-hb-1", "t-hb-2", "t-hb-4"][(task + call) % 3];
                        batch.push(request(target, &session, state, &url));
                    }
                    let o = ob.submit(batch).await.unwrap();
                    assert_eq!(o.inserted, 2, "{o:?}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 6 * 5 * 2 * states.len();
    let got = sink.wait_for(total).await;
    assert_eq!(got.len(), total);
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &got {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        seen.entry(v["session"].as_str().unwrap().to_string())
            .or_default()
            .push(v["state"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 60);
    for (session, order) in &seen {
        assert_eq!(order, &states, "{session}: in creation order");
    }
    rig.stop().await;
}

/// An operator retry of a dead delivery (and a retry of all of them) is
/// sent again at once: the retry asks the dispatcher for a poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_retries_are_sent_at_once() {
    let sink = Sink::start().await;
    sink.queue("/hook", [Reply::status(400), Reply::status(400)]);
    let rig = Rig::with_targets("handoff-retry", targets("t-hr: {}\n"), Some(NEVER));
    let url = sink.url("/hook");
    rig.outbox
        .submit(vec![request("t-hr", "hr-1", "ringing", &url)])
        .await
        .unwrap();
    let r = wait_rows(&rig.outbox, "dead", |r| all(r, Status::Dead)).await;
    assert!(rig.outbox.retry(r[0].id).await.unwrap());
    assert_eq!(sink.wait_for(2).await.len(), 2, "sent again");
    // Its outcome is committed just after the sink answered.
    wait_rows(&rig.outbox, "dead again", |r| all(r, Status::Dead)).await;
    assert_eq!(rig.outbox.retry_all_dead().await.unwrap(), 1);
    assert_eq!(sink.wait_for(3).await.len(), 3, "sent again");
    wait_rows(&rig.outbox, "done", |r| all(r, Status::Done)).await;
    rig.stop().await;
}
