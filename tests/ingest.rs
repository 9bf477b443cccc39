//! The ingest path under load (counts, not timings): a renumbered real load
//! replays as distinct calls, and a burst of 30,000 calls starting at once,
//! streamed by the simulated PBX as fast as loopback allows, reaches the
//! call model whole through the real daemon (`app::run_until`): the client
//! applies TCP backpressure instead of dropping; so does a burst of 20,000
//! through a daemon on one thread with the default 50 ms `max_stall`.

mod support;
mod support_app;
mod support_fast_ami;
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
use support_fast_ami::FastAmi;
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
    // `max_stall` only decides when the reader gives up and drops; a debug
    // build's normalizer pauses for up to ~100 ms (a call table growing
    // past 16k calls), a release build's for a few: the release benchmark
    // runs this burst with the default 50 ms.
    let got = burst_through_the_daemon("burst", 30_000, ", max_stall: 30s").await;
    got.assert_whole(30_000);
}

/// The daemon as the benchmark runs it: everything (AMI client, normalizer
/// task, presence, the observer) on ONE thread, the default `max_stall`
/// (50 ms), 20,000 calls starting at once. Whatever one committed batch
/// costs the tasks downstream of the normalizer is time in which nobody
/// reads the socket: a cost that grows with the batch (presence once
/// searched a list of the batch's extensions for every leg) makes the
/// reader give up and drop, and the resync cannot repair calls that never
/// ended.
#[test]
fn a_burst_on_one_thread_with_the_default_stall_loses_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(burst_through_the_daemon("burst-1t", 20_000, ""));
    got.assert_whole(20_000);
}

/// A commit held up by the disk (here another connection holds the
/// outbox's write lock, as a slow or busy disk would) while a burst is
/// written as fast as loopback takes it (the fast fake AMI, not the paced
/// simulator) to a daemon on one thread with the default 50 ms
/// `max_stall`. The normalizer must keep taking events while the commit
/// waits: until the reader has framed [`HELD_FOR`] events — more than the
/// sources' queue and the read-ahead hold, so a normalizer that waited
/// for the commit would have made the reader give up and drop — then the
/// lock is released. Nothing may be dropped, every record must come.
#[test]
fn a_commit_held_up_by_the_disk_does_not_stop_the_events() {
    const HELD_FOR: u64 = 30_000;
    let calls = 10_000;
    let pbx = "burst-held";
    let dir = support_state_dir();
    let db = dir.join("outbox.sqlite3");
    let (lock_tx, lock_rx) = std::sync::mpsc::channel();
    // Logged in (the daemon's outbox is open): the lock is taken before
    // the first event is written.
    let ami = FastAmi::start(Arc::new(burst(calls)), move || {
        let c = rusqlite::Connection::open(&db).expect("open the outbox");
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        let _ = lock_tx.send(c);
    });
    let framed = move || -> u64 {
        ["Newchannel", "DialBegin", "Newstate", "Hangup"]
            .iter()
            .map(|e| metrics().ami_events.with_label_values(&[pbx, e]).get())
            .sum()
    };
    let holder = std::thread::spawn(move || {
        let lock = lock_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the stream never started");
        // Under the daemon's busy timeout (10 s): its commit waits, it
        // does not fail.
        let held = std::time::Instant::now();
        while framed() < HELD_FOR && held.elapsed() < Duration::from_secs(8) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let got = (framed(), held.elapsed());
        lock.execute_batch("ROLLBACK").unwrap();
        got
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (got, answered, dropped) = rt.block_on(through_the_daemon(
        &dir,
        pbx,
        ami.addr.port(),
        "bench",
        "bench",
        calls,
        "",
    ));
    drop(rt);
    let (framed, held) = holder.join().unwrap();
    let got = Burst {
        calls: got,
        answered,
        dropped,
        resyncs: ami.action_count("CoreShowChannels"),
    };
    ami.stop();
    assert!(
        framed >= HELD_FOR,
        "the reader framed only {framed} events in the {held:?} a commit waited for the disk"
    );
    got.assert_whole(calls);
}

/// What came out of a burst.
struct Burst {
    calls: usize,
    answered: usize,
    dropped: u64,
    resyncs: usize,
}

impl Burst {
    fn assert_whole(&self, calls: usize) {
        assert_eq!(
            self.dropped, 0,
            "events were dropped ({} of {calls} call records)",
            self.calls
        );
        assert_eq!(self.calls, calls, "call records");
        assert_eq!(self.answered, calls);
        // No overflow: only the login resync was needed.
        assert_eq!(self.resyncs, 1);
    }
}

/// Streams a burst of `calls` calls from the simulated PBX through the
/// daemon (PBX `pbx`, `ami_extra` added to its `ami:` map) until every
/// record came, or events were dropped and records stopped coming.
async fn burst_through_the_daemon(pbx: &str, calls: usize, ami_extra: &str) -> Burst {
    let mut capture = BANNER.to_vec();
    capture.extend(burst(calls));
    let sim = Simulator::new(USER, SECRET)
        .session(capture, AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let dir = support_state_dir();
    let (got, answered, dropped) = through_the_daemon(
        &dir,
        pbx,
        sim.local_addr().port(),
        USER,
        SECRET,
        calls,
        ami_extra,
    )
    .await;
    Burst {
        calls: got,
        answered,
        dropped,
        resyncs: sim.stats().action_count("CoreShowChannels"),
    }
}

/// Runs the daemon (state in `dir`) against the AMI on `port` (PBX `pbx`,
/// `ami_extra` added to its `ami:` map) until `calls` records came, or
/// events were dropped and records stopped coming: (records, answered
/// ones, events dropped).
async fn through_the_daemon(
    dir: &Path,
    pbx: &str,
    port: u16,
    user: &str,
    secret: &str,
    calls: usize,
    ami_extra: &str,
) -> (usize, usize, u64) {
    let text = format!(
        "state_dir: {}\npbx:\n  - id: {pbx}\n    ami: {{ host: 127.0.0.1, port: {port}, username: {user}, secret: \"{secret}\"{ami_extra} }}\n",
        dir.display(),
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

    let dropped = metrics().ami_queue_dropped.with_label_values(&[pbx]);
    // Not a timing: a debug build on a loaded machine is slow. Every
    // record, or (once events were dropped: their calls never end) no new
    // one for 10 s; the deadline only keeps a lost call from hanging the
    // suite.
    let started = std::time::Instant::now();
    while count_rx.borrow().0 < calls && started.elapsed() < Duration::from_secs(900) {
        let quiet = Duration::from_secs(if dropped.get() > 0 { 10 } else { 900 });
        match tokio::time::timeout(quiet, count_rx.changed()).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    let (got, answered) = *count_rx.borrow();
    token.cancel();
    task.await.unwrap().unwrap();
    (got, answered, dropped.get())
}

fn support_state_dir() -> support_tmp::TestDir {
    support_tmp::TestDir::new("ingest")
}
