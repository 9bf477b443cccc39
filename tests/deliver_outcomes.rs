//! The outcomes of attempts, batched by the outbox's writer (see
//! `deliver::outbox::completion`): every outcome queued when the writer
//! gets to them is recorded in one savepoint; when one of them fails,
//! the others still stand (and still claim their call's next row), and
//! only the failed one reports the error.

mod support_http;
mod support_tmp;

use std::sync::Arc;
use std::time::Duration;

use callhook::deliver::outbox::{ClaimWant, Completion, OutboxOptions};
use callhook::deliver::Outbox;
use support_http::*;

#[tokio::test]
async fn one_failing_outcome_does_not_undo_the_others_of_its_batch() {
    let dir = state_dir("outcomes-fail");
    let ob = Arc::new(Outbox::open(&dir, OutboxOptions::default()).unwrap());
    let url = "http://127.0.0.1:9/x";
    let mut reqs = Vec::new();
    for state in ["ringing", "hungup"] {
        for call in ["a", "x", "b"] {
            reqs.push(request("t", call, state, url));
        }
    }
    ob.enqueue(&reqs).await.unwrap();
    let p = ob
        .poll(
            now(),
            vec![ClaimWant {
                target: "t".into(),
                limit: 16,
            }],
        )
        .await
        .unwrap();
    assert_eq!(p.claimed.len(), 3, "one head per call");
    let id = |call: &str| {
        p.claimed
            .iter()
            .find(|c| c.session_id == call)
            .map(|c| c.id)
            .unwrap()
    };
    let (a, x, b) = (id("a"), id("x"), id("b"));

    // Another connection holds the write lock (the writer waits for it, up
    // to its busy timeout) and makes marking row x done fail.
    let other = rusqlite::Connection::open(callhook::deliver::outbox::db_path(&dir)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    other
        .execute_batch(&format!(
            "CREATE TRIGGER fail_x BEFORE UPDATE OF status ON deliveries \
             WHEN OLD.id = {x} AND NEW.status = 'done' \
             BEGIN SELECT RAISE(ABORT, 'x cannot be marked'); END"
        ))
        .unwrap();
    // All three outcomes are queued before the writer can start on them
    // (the test runtime is single-threaded: the spawned slots run to their
    // first await at the yield).
    let slots: Vec<_> = [a, x, b]
        .into_iter()
        .map(|id| {
            let ob = ob.clone();
            tokio::spawn(async move {
                ob.complete_and_claim(id, Completion::Delivered { status: 200 }, Some("t".into()))
                    .await
            })
        })
        .collect();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    other.execute_batch("COMMIT").unwrap();
    let mut results = Vec::new();
    for s in slots {
        results.push(
            tokio::time::timeout(Duration::from_secs(30), s)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for (call, r) in ["a", "b"].iter().zip([&results[0], &results[2]]) {
        let f = r.as_ref().unwrap();
        assert!(f.recorded, "{call}");
        let next = f.next.first().expect("the call's next row claimed");
        assert_eq!(next.session_id, *call);
        assert!(next.event_id.contains("hungup"), "{call}: {next:?}");
    }
    let e = results[1].as_ref().unwrap_err().to_string();
    assert!(e.contains("x cannot be marked"), "{e}");
    let st = ob.stats().await.unwrap();
    // a and b done, their next rows in flight; x still in flight (its
    // attempt is recorded again by a restart), x's next row waiting.
    assert_eq!((st.done, st.inflight, st.pending), (2, 3, 1));

    // Without the trigger, x is recorded as usual.
    other.execute_batch("DROP TRIGGER fail_x").unwrap();
    let f = ob
        .complete_and_claim(x, Completion::Delivered { status: 200 }, Some("t".into()))
        .await
        .unwrap();
    assert!(f.recorded);
    let next: Vec<_> = f.next.into_iter().map(|n| n.session_id).collect();
    assert_eq!(next, ["x"]);
    drop(other);
    ob.close();
}
