//! Memory per live call: a synthetic capture of many overlapping calls,
//! each ringing an extension (the state a busy call centre holds most), is
//! fed to the normalizer; the heap it holds is measured with a counting
//! allocator (this test binary's global allocator), as a footprint that
//! includes malloc's per-allocation overhead (16-byte granules, 8 bytes of
//! header, 32 bytes at least, as glibc does).
//!
//! Budget (issue 9): ≤ 2 KiB per live call at 10,000 concurrent calls,
//! measured as the difference between 10,000 and 100 calls.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use callhook::ami::AmiMessage;
use callhook::model::ModelEvent;
use callhook::normalize::{Normalizer, NormalizerConfig};
use callhook::source::SourceEvent;

struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);
static FOOTPRINT: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);

fn footprint(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            BYTES.fetch_add(l.size(), Ordering::Relaxed);
            FOOTPRINT.fetch_add(footprint(l.size()), Ordering::Relaxed);
            BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        BYTES.fetch_sub(l.size(), Ordering::Relaxed);
        FOOTPRINT.fetch_sub(footprint(l.size()), Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            BYTES.fetch_add(new, Ordering::Relaxed);
            BYTES.fetch_sub(l.size(), Ordering::Relaxed);
            FOOTPRINT.fetch_add(footprint(new), Ordering::Relaxed);
            FOOTPRINT.fetch_sub(footprint(l.size()), Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Debug, Clone, Copy)]
struct Heap {
    bytes: usize,
    footprint: usize,
    blocks: usize,
}

fn heap() -> Heap {
    Heap {
        bytes: BYTES.load(Ordering::Relaxed),
        footprint: FOOTPRINT.load(Ordering::Relaxed),
        blocks: BLOCKS.load(Ordering::Relaxed),
    }
}

/// The events of call `i` up to its phone ringing, as Asterisk 20 sends
/// them (standard channel blocks, real-looking ids and names).
fn ringing_call(i: u64, t: f64, tech: &str) -> Vec<AmiMessage> {
    let root = format!("{}.{}", 1_795_374_626 + i / 10, 2 * i);
    let leg = format!("{}.{}", 1_795_374_626 + i / 10, 2 * i + 1);
    let trunk = format!("{tech}/pstn-{:08x}", 2 * i);
    let ext = format!("{}", 1000 + i % 300);
    let phone = format!("{tech}/{ext}-{:08x}", 2 * i + 1);
    let caller = format!("555{i:07}");
    let ts = |d: f64| format!("{:.6}", t + d);
    let block = |name: &str,
                 uid: &str,
                 state: &str,
                 num: &str,
                 cname: &str,
                 conn: &str,
                 ctx: &str,
                 exten: &str| {
        vec![
            ("Channel", name.to_string()),
            ("ChannelState", state.to_string()),
            (
                "ChannelStateDesc",
                match state {
                    "4" => "Ring",
                    "5" => "Ringing",
                    _ => "Down",
                }
                .to_string(),
            ),
            ("CallerIDNum", num.to_string()),
            ("CallerIDName", cname.to_string()),
            ("ConnectedLineNum", conn.to_string()),
            ("ConnectedLineName", "<unknown>".to_string()),
            ("Language", "en".to_string()),
            ("AccountCode", String::new()),
            ("Context", ctx.to_string()),
            ("Exten", exten.to_string()),
            ("Priority", "1".to_string()),
            ("Uniqueid", uid.to_string()),
            ("Linkedid", root.clone()),
        ]
    };
    let ev = |name: &str, d: f64, mut headers: Vec<(&'static str, String)>| {
        let mut h = vec![
            ("Event", name.to_string()),
            ("Privilege", "call,all".to_string()),
            ("Timestamp", ts(d)),
        ];
        h.append(&mut headers);
        AmiMessage::from_pairs(h)
    };
    let trunk_block = |state| {
        block(
            &trunk,
            &root,
            state,
            &caller,
            "Juan Perez",
            "<unknown>",
            "from-pstn",
            "2125550100",
        )
    };
    let phone_block = |state| {
        block(
            &phone,
            &leg,
            state,
            &ext,
            "Ana Gomez",
            &caller,
            "from-internal",
            "s",
        )
    };
    let mut dial = trunk_block("4");
    dial.extend(phone_block("0").into_iter().map(|(k, v)| (dest_key(k), v)));
    dial.push(("DialString", ext.clone()));
    vec![
        ev("Newchannel", 0.0, trunk_block("4")),
        ev("Newexten", 0.001, {
            let mut h = trunk_block("4");
            h.push(("Extension", "2125550100".into()));
            h.push(("Application", "Dial".into()));
            h.push(("AppData", format!("{tech}/{ext},30,tT")));
            h
        }),
        ev("Newchannel", 0.002, phone_block("0")),
        ev("DialBegin", 0.003, dial),
        ev("Newstate", 0.004, phone_block("5")),
        ev("NewConnectedLine", 0.005, trunk_block("4")),
    ]
}

fn dest_key(k: &'static str) -> &'static str {
    match k {
        "Channel" => "DestChannel",
        "ChannelState" => "DestChannelState",
        "ChannelStateDesc" => "DestChannelStateDesc",
        "CallerIDNum" => "DestCallerIDNum",
        "CallerIDName" => "DestCallerIDName",
        "ConnectedLineNum" => "DestConnectedLineNum",
        "ConnectedLineName" => "DestConnectedLineName",
        "Language" => "DestLanguage",
        "AccountCode" => "DestAccountCode",
        "Context" => "DestContext",
        "Exten" => "DestExten",
        "Priority" => "DestPriority",
        "Uniqueid" => "DestUniqueid",
        _ => "DestLinkedid",
    }
}

/// Heap held by a normalizer with `calls` calls ringing at once.
fn with_ringing_calls(calls: u64, tech: &str) -> (Heap, Normalizer) {
    let pbx: Arc<str> = "main".into();
    let before = heap();
    let mut n = Normalizer::new(NormalizerConfig::default());
    let mut out: Vec<ModelEvent> = Vec::new();
    for i in 0..calls {
        let t = 1_795_374_626.0 + i as f64 * 0.01;
        for msg in ringing_call(i, t, tech) {
            n.handle(
                &SourceEvent::Ami {
                    pbx: pbx.clone(),
                    received_at: t,
                    msg,
                },
                &mut out,
            );
        }
        out.clear();
    }
    out.shrink_to_fit();
    assert_eq!(n.tracked().calls, calls as usize);
    let after = heap();
    (
        Heap {
            bytes: after.bytes - before.bytes,
            footprint: after.footprint - before.footprint,
            blocks: after.blocks - before.blocks,
        },
        n,
    )
}

/// Resident set size, bytes (Linux; 0 elsewhere).
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[test]
fn a_live_call_takes_at_most_2_kib() {
    for tech in ["SIP", "PJSIP"] {
        let (small, n_small) = with_ringing_calls(100, tech);
        drop(n_small);
        let rss_before = rss();
        let (big, n_big) = with_ringing_calls(10_000, tech);
        let rss_grew = rss().saturating_sub(rss_before);
        let per = |f: fn(&Heap) -> usize| (f(&big) - f(&small)) as f64 / 9_900.0;
        let bytes = per(|h| h.bytes);
        let foot = per(|h| h.footprint);
        let blocks = per(|h| h.blocks);
        println!(
            "{tech}: per live call {bytes:.0} B requested, {foot:.0} B with malloc overhead, \
             {blocks:.1} allocations ({} calls, {} channels; RSS grew {:.1} MB)",
            n_big.tracked().calls,
            n_big.tracked().channels,
            rss_grew as f64 / 1e6
        );
        assert!(
            foot <= 2048.0,
            "{tech}: {foot:.0} B per live call (budget 2048)"
        );
    }
}
