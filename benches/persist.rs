//! What storing the live calls costs: the daemon's path for a batch of
//! events (normalize, rules, one outbox commit with `synchronous=FULL`)
//! over the first events of the 150-call `load-dev.ami` capture, with and
//! without live-call persistence (`track_changes` + `take_dirty` → rows in
//! the same transaction), measured in the same run. The baseline is the
//! same work without it: it commits only the batches that caused
//! deliveries; with it, every batch that changed a call commits too.
//!
//! `cargo bench --bench persist` (prints a table; the ratios are what to
//! compare). Batch sizes: 1 (a quiet daemon: each event alone) and 32
//! (under load the normalizer takes what is queued, up to 1024 events).

#[path = "../tests/support_app/mod.rs"]
mod support_app;
#[path = "../tests/support_tmp/mod.rs"]
mod support_tmp;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use callhook::ami::{AmiCodec, AmiFrame};
use callhook::deliver::outbox::{LiveCallWrite, Outbox, OutboxOptions};
use callhook::normalize::{Normalizer, NormalizerConfig};
use callhook::replay::{Routed, Router};
use callhook::rules::RuleSet;
use callhook::source::SourceEvent;
use support_tmp::TestDir;
use tokio_util::codec::Decoder;

/// Events taken from the capture (≈ 40 calls).
const EVENTS: usize = 3000;
const RUNS: usize = 2;

const RULES: &str = r#"
targets:
  crm: {}
rules:
  - name: ring
    when: { state: ringing, direction: incoming, role: callee }
    target: crm
    url: "http://127.0.0.1:9/ring?id=%ID%&caller=%CALLER_ID%"
  - name: record
    when: { scope: call, state: hungup }
    target: crm
    url: "http://127.0.0.1:9/record?id=%ID%"
    json: { caller: "%CALLER_ID%", disposition: "%DISPOSITION%" }
"#;

fn events() -> Vec<SourceEvent> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ami/asterisk-20/load-dev.ami"
    );
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut router = Router::default();
    let pbx: Arc<str> = "main".into();
    let mut out = Vec::new();
    let mut t = 0.0_f64;
    while let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
        let AmiFrame::Message(m) = frame else {
            continue;
        };
        match router.route(m) {
            Routed::Event(msg) => {
                t = t.max(msg.timestamp().unwrap_or(t));
                out.push(SourceEvent::Ami {
                    pbx: pbx.clone(),
                    received_at: t,
                    msg,
                });
            }
            Routed::Snapshot(channels) => out.push(SourceEvent::AmiSnapshot {
                pbx: pbx.clone(),
                received_at: t,
                channels,
            }),
            Routed::Dropped => {}
        }
        if out.len() >= EVENTS {
            break;
        }
    }
    out
}

struct Run {
    took: Duration,
    commits: usize,
    rows: usize,
}

async fn run(events: &[SourceEvent], rules: &RuleSet, batch: usize, persist: bool) -> Run {
    let dir = TestDir::new(&format!("bench-persist-{batch}-{persist}"));
    let outbox = Outbox::open(&dir, OutboxOptions::default()).expect("outbox");
    let mut n = Normalizer::new(NormalizerConfig::default());
    if persist {
        n.track_changes();
    }
    let mut out = Vec::new();
    let (mut commits, mut rows) = (0, 0);
    let started = Instant::now();
    for chunk in events.chunks(batch) {
        for ev in chunk {
            n.handle(ev, &mut out);
        }
        let reqs: Vec<_> = out.iter().flat_map(|e| rules.evaluate(e)).collect();
        out.clear();
        let calls: Vec<LiveCallWrite> = n
            .take_dirty()
            .into_iter()
            .map(|c| LiveCallWrite {
                pbx: c.pbx.to_string(),
                session: c.session,
                snapshot: c.snapshot,
            })
            .collect();
        if reqs.is_empty() && calls.is_empty() {
            continue;
        }
        rows += calls.len();
        commits += 1;
        outbox.submit_with_calls(reqs, calls).await.expect("commit");
    }
    let took = started.elapsed();
    outbox.close();
    drop(dir);
    Run {
        took,
        commits,
        rows,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cfg = support_app::config(RULES, Path::new("."));
    let events = events();
    println!(
        "{} events of load-dev.ami; best of {RUNS} runs; outbox synchronous=FULL",
        events.len()
    );
    println!("| batch | without live calls | with live calls | ratio | commits without → with | call rows written |");
    println!("|---|---|---|---|---|---|");
    for batch in [1, 32] {
        let best = |persist: bool| {
            (0..RUNS)
                .map(|_| rt.block_on(run(&events, &cfg.rules, batch, persist)))
                .min_by_key(|r| r.took)
                .expect("a run")
        };
        let off = best(false);
        let on = best(true);
        let rate = |r: &Run| events.len() as f64 / r.took.as_secs_f64();
        println!(
            "| {batch} | {:.0} events/s | {:.0} events/s | {:.2}× | {} → {} | {} |",
            rate(&off),
            rate(&on),
            rate(&on) / rate(&off),
            off.commits,
            on.commits,
            on.rows
        );
    }
}
