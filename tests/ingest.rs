//! The ingest path under load (counts, not timings): a renumbered real load
//! replays as distinct calls, and a burst of 30,000 calls starting at once,
//! streamed by the simulated PBX as fast as loopback allows, reaches the
//! call model whole through the real daemon (`app::run_until`): the client
//! applies TCP backpressure instead of dropping.

mod support;
mod support_app;
mod support_tmp;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use callhook::ami::simulator::{AfterCapture, Simulator};
use callhook::ami::synthetic::{burst, renumbered, BANNER};
use callhook::app::{self, RunOptions};
use callhook::metrics::metrics;
use callhook::model::{CallRecord, ModelEvent};
use callhook::normalize::{Normalizer, NormalizerConfig};
use callhook::replay::replay;
use support::{fixture, SECRET, USER};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn records(captures: &[Vec<u8>]) -> Vec<CallRecord> {
    let mut n = Normalizer::new(NormalizerConfig::default());
    let pbx: Arc<str> = "main".into();
    let mut calls = Vec::new();
    replay(captures, &pbx, &mut n, |ev| {
        if let ModelEvent::Call(c) = ev {
            calls.push(c.clone());
        }
    });
    calls
}

fn dispositions(calls: &[CallRecord]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in calls {
        *m.entry(format!("{:?}/{:?}", c.direction, c.disposition))
            .or_default() += 1;
    }
    m
}

#[test]
fn renumbered_load_replays_as_distinct_calls() {
    let load = fixture("asterisk-20/load-dev.ami");
    let one = records(std::slice::from_ref(&load));
    assert_eq!(one.len(), 150);
    let mut three = BANNER.to_vec();
    three.extend(renumbered(&load, 3));
    let three = records(&[three]);
    assert_eq!(three.len(), 3 * one.len());
    let sessions: HashSet<&str> = three.iter().map(|c| c.session_id.as_str()).collect();
    assert_eq!(sessions.len(), three.len(), "every copy is a new call");
    let mut want = dispositions(&one);
    want.values_mut().for_each(|n| *n *= 3);
    assert_eq!(dispositions(&three), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_30000_calls_reaches_the_model_whole() {
    const CALLS: usize = 30_000;
    let mut capture = BANNER.to_vec();
    capture.extend(burst(CALLS));
    let sim = Simulator::new(USER, SECRET)
        .session(capture, AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let dir = support_state_dir();
    // `max_stall` only decides when the reader gives up and drops; a debug
    // build's normalizer pauses for up to ~100 ms (a call table growing
    // past 16k calls), a release build's for a few: the release benchmark
    // runs this burst with the default 50 ms.
    let text = format!(
        "state_dir: {}\npbx:\n  - id: burst\n    ami: {{ host: 127.0.0.1, port: {}, username: {USER}, secret: \"{SECRET}\", max_stall: 30s }}\n",
        dir.display(),
        sim.local_addr().port()
    );
    let cfg = support_app::config(&text, Path::new("."));

    let (count_tx, mut count_rx) = watch::channel((0usize, 0usize));
    let mut seen = (0usize, 0usize);
    let observer = Box::new(move |evs: &[ModelEvent]| {
        for e in evs {
            if let ModelEvent::Call(c) = e {
                seen.0 += 1;
                if c.answered_by.is_some() {
                    seen.1 += 1;
                }
            }
        }
        count_tx.send_replace(seen);
    });
    let token = CancellationToken::new();
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let task = tokio::spawn(app::run_until(
        cfg,
        RunOptions {
            config_path: None,
            observer: Some(observer),
            listener: None,
            ..RunOptions::default()
        },
        token.clone(),
        reload_tx,
        reload_rx,
        |_| {},
    ));

    // Not a timing: a debug build on a loaded machine is slow. The
    // deadline only keeps a lost call from hanging the suite.
    let got = tokio::time::timeout(
        Duration::from_secs(900),
        count_rx.wait_for(|(calls, _)| *calls >= CALLS),
    )
    .await
    .is_ok();
    let (calls, answered) = *count_rx.borrow();
    assert!(got, "only {calls} of {CALLS} call records");
    assert_eq!(calls, CALLS);
    assert_eq!(answered, CALLS);
    let dropped = metrics()
        .ami_queue_dropped
        .with_label_values(&["burst"])
        .get();
    assert_eq!(dropped, 0, "events were dropped");
    // No overflow: only the login resync was needed.
    assert_eq!(sim.stats().action_count("CoreShowChannels"), 1);
    token.cancel();
    task.await.unwrap().unwrap();
}

fn support_state_dir() -> support_tmp::TestDir {
    support_tmp::TestDir::new("ingest")
}
