//! Parse + normalize throughput over the 150-call `load-dev.ami` capture,
//! beside the speed of only splitting packets, measured in the same run,
//! and with the daemon's live-call snapshots (what `take_dirty` costs).
//!
//! `cargo bench --bench normalize`. Throughput is reported per AMI packet
//! (criterion's "elem/s" = packets/s).

use std::sync::Arc;

use bytes::BytesMut;
use callhook::ami::{AmiCodec, AmiFrame};
use callhook::normalize::{Normalizer, NormalizerConfig};
use callhook::replay::{Routed, Router};
use callhook::source::SourceEvent;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio_util::codec::Decoder;

fn load() -> Vec<u8> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ami/asterisk-20/load-dev.ami"
    );
    std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn split(bytes: &[u8]) -> usize {
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::from(bytes);
    let mut n = 0;
    while let Ok(Some(_)) = codec.decode_eof(&mut buf) {
        n += 1;
    }
    n
}

fn normalize(bytes: &[u8]) -> usize {
    normalize_with(bytes, false)
}

/// With the daemon's live-call tracking, snapshots taken after every
/// event (the worst case: one batch per event).
fn normalize_tracked(bytes: &[u8]) -> usize {
    normalize_with(bytes, true)
}

fn normalize_with(bytes: &[u8], tracked: bool) -> usize {
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::from(bytes);
    let mut router = Router::default();
    let mut n = Normalizer::new(NormalizerConfig::default());
    if tracked {
        n.track_changes();
    }
    let pbx: Arc<str> = "main".into();
    let mut out = Vec::new();
    let mut emitted = 0;
    while let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
        let AmiFrame::Message(m) = frame else {
            continue;
        };
        let ev = match router.route(m) {
            Routed::Event(msg) => SourceEvent::Ami {
                pbx: pbx.clone(),
                received_at: 0.0,
                msg,
            },
            Routed::Snapshot(channels) => SourceEvent::AmiSnapshot {
                pbx: pbx.clone(),
                received_at: 0.0,
                channels,
            },
            Routed::Dropped => continue,
        };
        n.handle(&ev, &mut out);
        emitted += out.len();
        out.clear();
        if tracked {
            emitted += n.take_dirty().len();
        }
    }
    emitted
}

fn bench(c: &mut Criterion) {
    let bytes = load();
    let packets = split(&bytes) as u64;
    let mut g = c.benchmark_group("load-dev");
    g.throughput(Throughput::Elements(packets));
    g.sample_size(20);
    g.bench_function("split packets (baseline)", |b| b.iter(|| split(&bytes)));
    g.bench_function("parse + normalize", |b| b.iter(|| normalize(&bytes)));
    g.bench_function("parse + normalize + live-call snapshots", |b| {
        b.iter(|| normalize_tracked(&bytes))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
