//! Every real capture, replayed, agrees with what really happened.
//!
//! For each `*.ami` under `tests/fixtures/ami/` (`asterisk-20`,
//! `asterisk-11`, `asterisk-20-pjsip`, `asterisk-20-extra`, `handwritten`;
//! except the `reconnect-*` halves, which end mid-call and are covered by
//! the reconnect tests) the `call` records and the `ringing` legs that
//! `replay` produces are compared with the capture's `*.truth.json`:
//! direction, caller number and name, dialed number, queue, extensions
//! rung, answered by, final answered by, disposition, start/answer/end
//! times, duration and billsec within 1 s, the real caller number on every
//! ringing leg of an incoming call, and no phantom calls.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use callhook::model::{CallRecord, LegEvent, ModelEvent, Role, State};
use callhook::normalize::{Normalizer, NormalizerConfig};
use callhook::replay::replay;
use serde_json::Value;

fn captures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ami");
    let mut out = Vec::new();
    for dir in [
        "asterisk-20",
        "asterisk-11",
        "asterisk-20-pjsip",
        "handwritten",
    ] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "ami"))
            .filter(|p| {
                !p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("reconnect-")
            })
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

struct Replayed {
    calls: Vec<CallRecord>,
    legs: Vec<LegEvent>,
}

fn run(paths: &[&Path]) -> Replayed {
    let data: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut n = Normalizer::new(NormalizerConfig::default());
    let mut calls = Vec::new();
    let mut legs = Vec::new();
    let pbx: Arc<str> = "main".into();
    replay(&data, &pbx, &mut n, |ev| match ev {
        ModelEvent::Call(c) => calls.push(c.clone()),
        ModelEvent::Leg(l) => legs.push(l.clone()),
        ModelEvent::CallState(_) => {}
    });
    Replayed { calls, legs }
}

fn s(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Truth's `PSTN` (the outside party) is our `external`; outside parties are
/// not extensions.
fn party(v: &Value) -> Option<String> {
    s(v).map(|p| if p == "PSTN" { "external".into() } else { p })
}

fn check_capture(path: &Path) -> Vec<String> {
    let truth: Value =
        serde_json::from_str(&std::fs::read_to_string(path.with_extension("truth.json")).unwrap())
            .unwrap();
    let got = run(&[path]);
    let name = path
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ami"))
        .unwrap()
        .display()
        .to_string();
    let mut errs = Vec::new();
    let by_id: BTreeMap<&str, &CallRecord> = got
        .calls
        .iter()
        .map(|c| (c.session_id.as_str(), c))
        .collect();
    let want = truth["calls"].as_array().unwrap();
    let want_ids: BTreeSet<&str> = want
        .iter()
        .map(|c| c["linkedid"].as_str().unwrap())
        .collect();
    for c in &got.calls {
        if !want_ids.contains(c.session_id.as_str()) {
            errs.push(format!("{name}: phantom call {}", c.session_id));
        }
    }
    if got.calls.len() != by_id.len() {
        errs.push(format!("{name}: a session id was closed twice"));
    }
    for w in want {
        let id = w["linkedid"].as_str().unwrap();
        let Some(c) = by_id.get(id) else {
            errs.push(format!("{name}: call {id} missing"));
            continue;
        };
        let mut cmp = |field: &str, got: String, want: String| {
            if got != want {
                errs.push(format!("{name} {id}: {field}: got {got}, want {want}"));
            }
        };
        cmp(
            "direction",
            c.direction.as_str().into(),
            s(&w["direction"]).unwrap(),
        );
        cmp(
            "caller_number",
            format!("{:?}", c.caller_number),
            format!("{:?}", s(&w["caller_number"])),
        );
        cmp(
            "dialed_number",
            format!("{:?}", c.dialed_number),
            format!("{:?}", s(&w["dialed_number"])),
        );
        cmp(
            "queue",
            format!("{:?}", c.queue),
            format!("{:?}", s(&w["queue"])),
        );
        let rang: Vec<String> = w["rang"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(s)
            .filter(|r| r != "PSTN")
            .collect();
        cmp(
            "extensions_rung",
            format!("{:?}", c.extensions_rung),
            format!("{rang:?}"),
        );
        cmp(
            "answered_by",
            format!("{:?}", c.answered_by),
            format!("{:?}", party(&w["answered_by"])),
        );
        cmp(
            "final_answered_by",
            format!("{:?}", c.final_answered_by),
            format!("{:?}", party(&w["final_answered_by"])),
        );
        cmp(
            "disposition",
            c.disposition.as_str().into(),
            s(&w["disposition"]).unwrap(),
        );
        // (Hand-written truths may leave the name out.)
        if w.get("caller_name").is_some() {
            cmp(
                "caller_name",
                format!("{:?}", c.caller_name),
                format!("{:?}", s(&w["caller_name"])),
            );
        }
        let near = |g: f64, w: f64| (g - w).abs() <= 1.0;
        for (field, key, got) in [
            ("started_at", "start_ts", Some(c.started_at.0)),
            ("answered_at", "answer_ts", c.answered_at.map(|t| t.0)),
            ("ended_at", "end_ts", Some(c.ended_at.0)),
        ] {
            // Absent in hand-written truths without Timestamp headers.
            let Some(want) = w.get(key) else { continue };
            let ok = match (got, want.as_f64()) {
                (Some(g), Some(t)) => near(g, t),
                (None, None) => true,
                _ => false,
            };
            if !ok {
                errs.push(format!("{name} {id}: {field} {got:?} vs {want}"));
            }
        }
        // (`null` in hand-written fixtures without Timestamp headers.)
        if let Some(d) = w["duration_s"].as_f64() {
            if !near(c.duration, d) {
                errs.push(format!("{name} {id}: duration {} vs {d}", c.duration));
            }
        }
        if let Some(b) = w["billsec_s"].as_f64() {
            if !near(c.billsec, b) {
                errs.push(format!("{name} {id}: billsec {} vs {b}", c.billsec));
            }
        }
        // Ringing legs: exactly the extensions that rang, each carrying the
        // real caller on incoming calls. (A queue that rings a member again
        // after its retry delay opens a new leg `SESSION/EXT#2`: the phone
        // really rang twice.)
        let ringing: Vec<&LegEvent> = got
            .legs
            .iter()
            .filter(|l| l.session_id == id && l.state == State::Ringing)
            .filter(|l| l.role == Role::Callee || c.extensions_rung.contains(&l.extension))
            .collect();
        let mut exts: Vec<String> = Vec::new();
        for l in &ringing {
            if !exts.contains(&l.extension) {
                exts.push(l.extension.clone());
            }
        }
        if exts != rang {
            errs.push(format!("{name} {id}: ringing legs {exts:?}, want {rang:?}"));
        }
        if c.direction.as_str() == "incoming" {
            for l in &ringing {
                if l.caller_number.as_deref() != w["caller_number"].as_str() {
                    errs.push(format!(
                        "{name} {id}: leg {} rang with caller {:?}",
                        l.extension, l.caller_number
                    ));
                }
            }
        }
        // Monotonic: no leg id reaches the same state twice.
        let mut seen = BTreeSet::new();
        for l in got.legs.iter().filter(|l| l.session_id == id) {
            if !seen.insert((l.leg_id.clone(), l.state)) {
                errs.push(format!(
                    "{name} {id}: leg {} {:?} emitted twice",
                    l.leg_id, l.state
                ));
            }
        }
    }
    errs
}

#[test]
fn every_capture_agrees_with_its_truth() {
    let mut errs = Vec::new();
    let files = captures();
    assert!(files.len() >= 20, "fixtures missing: {files:?}");
    for f in &files {
        errs.extend(check_capture(f));
    }
    assert!(
        errs.is_empty(),
        "{} mismatches:\n{}",
        errs.len(),
        errs.join("\n")
    );
}

#[test]
fn reconnect_halves_replayed_together_give_one_correct_call() {
    for v in ["asterisk-20", "asterisk-11", "asterisk-20-pjsip"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ami")
            .join(v);
        let got = run(&[
            &dir.join("reconnect-before.ami"),
            &dir.join("reconnect-after.ami"),
        ]);
        let truth: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("reconnect-after.truth.json")).unwrap(),
        )
        .unwrap();
        let w = &truth["calls"][0];
        assert_eq!(got.calls.len(), 1, "{v}: {:#?}", got.calls);
        let c = &got.calls[0];
        assert_eq!(c.session_id, w["linkedid"].as_str().unwrap(), "{v}");
        assert_eq!(c.disposition.as_str(), "ANSWERED", "{v}");
        assert_eq!(c.answered_by.as_deref(), Some("1001"), "{v}");
        assert!(
            (c.duration - w["duration_s"].as_f64().unwrap()).abs() <= 1.0,
            "{v}: {c:?}"
        );
        assert!(
            (c.billsec - w["billsec_s"].as_f64().unwrap()).abs() <= 1.0,
            "{v}: {c:?}"
        );
        assert!(!c.approximate, "{v}: the call ended while connected");
    }
}
