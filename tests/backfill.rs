//! CDR backfill on the real captures' CDR files: every call agrees with the
//! capture's truth, the phonecalls rule set renders the call-log requests,
//! the live path (AMI replay) and the backfill give the same idempotency
//! keys, and running a backfill twice (or after the live daemon) enqueues
//! every key once.

mod support_app;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use callhook::backfill::{self, CdrTimezone, Destination, Options, Summary};
use callhook::config::Config;
use callhook::deliver::outbox::ListFilter;
use callhook::deliver::{DeliveryRequest, Outbox, OutboxOptions};
use callhook::model::{CallRecord, Disposition, ModelEvent};
use callhook::normalize::{Classifier, Normalizer};
use callhook::replay::{replay, Format};
use serde_json::Value;

#[path = "support_http/mod.rs"]
mod support_http;
mod support_tmp;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/ami")
}

/// Every `*.cdr.csv` under asterisk-20 and asterisk-11.
fn cdr_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["asterisk-20", "asterisk-11"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".cdr.csv"))
            .collect();
        files.sort();
        out.extend(files);
    }
    assert_eq!(out.len(), 23, "12 + 11 CDR fixtures");
    out
}

fn sibling(cdr: &Path, ext: &str) -> PathBuf {
    PathBuf::from(cdr.to_string_lossy().replace(".cdr.csv", ext))
}

/// Fixture calls happened on 2026-11-22; "now" is just after.
const NOW: f64 = 1795375900.0;

fn opts() -> Options {
    Options {
        now: NOW,
        ..Options::default()
    }
}

fn records(path: &Path) -> (Vec<CallRecord>, Summary) {
    let f = std::fs::File::open(path).unwrap();
    let mut out = Vec::new();
    let mut summary = Summary::default();
    backfill::for_each_call(
        BufReader::new(f),
        &Classifier::default(),
        &opts(),
        &mut summary,
        |r, in_range, _| {
            assert!(in_range);
            out.push(r);
            Ok(())
        },
    )
    .unwrap();
    (out, summary)
}

fn truth(cdr: &Path) -> Vec<Value> {
    let t: Value =
        serde_json::from_slice(&std::fs::read(sibling(cdr, ".truth.json")).unwrap()).unwrap();
    t["calls"].as_array().unwrap().clone()
}

fn s(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn name(p: &Path) -> String {
    let dir = p.parent().unwrap().file_name().unwrap().to_string_lossy();
    format!("{dir}/{}", p.file_name().unwrap().to_string_lossy())
}

/// The documented cases where CDR alone cannot give what the live model
/// gives (see `backfill` module docs): (file, field) → why.
fn cdr_cannot_tell(file: &str, truth: &Value, field: &str) -> bool {
    let c2c = truth["originated_via_ami"].as_bool().unwrap_or(false)
        || file.ends_with("click-to-call.cdr.csv");
    let a11 = file.starts_with("asterisk-11/");
    let queue = !truth["queue"].is_null();
    match field {
        // The phone a click-to-call rang first is not in CDR; Asterisk 11
        // queues write only the answering member's row.
        "rung" => c2c || (a11 && queue),
        // CDR's answer of an answered click-to-call is the phone's; of an
        // Asterisk 11 queue call, the PBX's Answer().
        "billsec" => c2c || (a11 && queue),
        _ => false,
    }
}

#[test]
fn every_fixture_cdr_backfills_to_its_truth() {
    let mut checked = 0;
    let mut fields = 0;
    for cdr in cdr_files() {
        let file = name(&cdr);
        let (recs, summary) = records(&cdr);
        let truth = truth(&cdr);
        assert_eq!(summary.malformed, 0, "{file}");
        assert_eq!(summary.not_calls, 0, "{file}");
        assert_eq!(
            recs.len(),
            truth.len(),
            "{file}: one record per call, no phantom"
        );
        let by_id: BTreeMap<&str, &CallRecord> =
            recs.iter().map(|r| (r.session_id.as_str(), r)).collect();
        for t in &truth {
            let id = t["linkedid"].as_str().unwrap();
            let r = by_id
                .get(id)
                .unwrap_or_else(|| panic!("{file}: no record for {id}"));
            let at = format!("{file} {id}");
            // The call-log fields: direction, source, destination, disposition.
            assert_eq!(r.direction.as_str(), t["direction"], "{at} direction");
            assert_eq!(r.caller_number, s(&t["caller_number"]), "{at} source");
            assert_eq!(r.dialed_number, s(&t["dialed_number"]), "{at} destination");
            assert_eq!(r.disposition.as_str(), t["disposition"], "{at} disposition");
            assert_eq!(r.queue, s(&t["queue"]), "{at} queue");
            let by = |v: &Value| {
                s(v).map(|x| {
                    if x == "PSTN" {
                        "external".to_string()
                    } else {
                        x
                    }
                })
            };
            assert_eq!(r.answered_by, by(&t["answered_by"]), "{at} answered_by");
            assert_eq!(
                r.final_answered_by,
                by(&t["final_answered_by"]),
                "{at} final_answered_by"
            );
            // The start second is the live one (what keys use).
            let start = t["start_ts"].as_f64().unwrap();
            assert_eq!(r.started_at.0, start.floor(), "{at} started_at");
            assert!(
                (r.ended_at.0 - t["end_ts"].as_f64().unwrap()).abs() < 1.0,
                "{at} ended_at"
            );
            assert!(
                (r.duration - t["duration_s"].as_f64().unwrap()).abs() <= 1.0,
                "{at} duration {} vs {}",
                r.duration,
                t["duration_s"]
            );
            fields += 9;
            let rang: Vec<String> = t["rang"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str())
                .filter(|v| *v != "PSTN")
                .map(str::to_string)
                .collect();
            if !cdr_cannot_tell(&file, t, "rung") {
                assert_eq!(r.extensions_rung, rang, "{at} extensions_rung");
                fields += 1;
            }
            if !cdr_cannot_tell(&file, t, "billsec") {
                let want = t["billsec_s"].as_f64().unwrap();
                assert!(
                    (r.billsec - want).abs() <= 1.0,
                    "{at} billsec {} vs {want}",
                    r.billsec
                );
                fields += 1;
            }
            assert_eq!(
                r.approximate,
                r.queue.is_some() && r.disposition == Disposition::Answered,
                "{at}: only estimated queue answers are approximate"
            );
            checked += 1;
        }
    }
    // 12 Asterisk 20 files (load-dev: 150 calls) and 11 Asterisk 11 files.
    assert_eq!(checked, 150 + 12 + 12);
    // 9 fields per call, plus extensions rung and billsec where CDR tells
    // (all but 17 click-to-calls and 3 Asterisk 11 queue calls).
    assert_eq!(fields, 174 * 9 + 2 * (174 - 20), "fields compared");
}

fn config_including(rule_file: &str) -> Config {
    std::env::set_var("CRM_TOKEN", "test-token");
    let text = format!("state_dir: /nonexistent\ninclude: [rules/{rule_file}]\n");
    support_app::config(&text, root())
}

/// The requests a backfill of `cdr` would send (`--dry-run`, JSON lines).
fn backfill_requests(cfg: &Config, cdr: &Path) -> Vec<Value> {
    let f = std::fs::File::open(cdr).unwrap();
    let mut out = Vec::new();
    let summary = backfill::run(
        BufReader::new(f),
        &cfg.normalizer.classifier,
        &cfg.rules,
        &opts(),
        Destination::Print {
            out: &mut out,
            format: Format::Jsonl,
        },
    )
    .unwrap();
    let reqs: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(summary.requests as usize, reqs.len());
    reqs
}

/// The requests the live path sends for the capture(s) of `cdr`.
fn live_requests(cfg: &Config, cdr: &Path) -> Vec<DeliveryRequest> {
    let file = cdr.file_name().unwrap().to_string_lossy().to_string();
    // The reconnect pair is one call seen over two connections.
    let captures: Vec<PathBuf> = if file.starts_with("reconnect-") {
        let dir = cdr.parent().unwrap();
        vec![
            dir.join("reconnect-before.ami"),
            dir.join("reconnect-after.ami"),
        ]
    } else {
        vec![sibling(cdr, ".ami")]
    };
    let data: Vec<Vec<u8>> = captures.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut n = Normalizer::new(cfg.normalizer.clone());
    let mut out = Vec::new();
    let pbx: Arc<str> = "main".into();
    replay(&data, &pbx, &mut n, |ev| {
        if matches!(ev, ModelEvent::Call(_)) {
            out.extend(cfg.rules.evaluate(ev))
        }
    });
    out
}

fn query(url: &str) -> BTreeMap<String, String> {
    let q = url.split_once('?').unwrap().1;
    q.split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .unwrap()
                .to_string();
            (k.to_string(), v)
        })
        .collect()
}

#[test]
fn phonecalls_rule_set_renders_one_call_log_request_per_call() {
    let cfg = config_including("phonecalls.yaml");
    assert_eq!(cfg.rules.names(), ["phonecalls"]);
    let mut total = 0;
    for cdr in cdr_files() {
        let file = name(&cdr);
        let reqs = backfill_requests(&cfg, &cdr);
        let truth = truth(&cdr);
        assert_eq!(reqs.len(), truth.len(), "{file}");
        for r in &reqs {
            let id = r["session_id"].as_str().unwrap();
            let t = truth.iter().find(|t| t["linkedid"] == id).unwrap();
            assert_eq!(r["method"], "GET");
            let url = r["url"].as_str().unwrap();
            assert!(
                url.starts_with("http://127.0.0.1:8080/direct/items/phonecalls/create?"),
                "{url}"
            );
            let q = query(url);
            // --dry-run masks credentials (the real request carries it).
            assert_eq!(q["token"], "***");
            assert!(!r.to_string().contains("test-token"), "{r}");
            let start = t["start_ts"].as_f64().unwrap().floor() as i64;
            let start = time::OffsetDateTime::from_unix_timestamp(start).unwrap();
            let iso = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                start.year(),
                u8::from(start.month()),
                start.day(),
                start.hour(),
                start.minute(),
                start.second()
            );
            assert_eq!(q["initiated"], iso, "{file} {id}");
            assert_eq!(
                Some(q["source"].clone()),
                s(&t["caller_number"]),
                "{file} {id}"
            );
            assert_eq!(
                Some(q["destination"].clone()),
                s(&t["dialed_number"]),
                "{file} {id}"
            );
            let d: f64 = q["duration"].parse().unwrap();
            assert!(
                (d - t["duration_s"].as_f64().unwrap()).abs() <= 1.0,
                "{file} {id}"
            );
            assert_eq!(q["url"], "", "no recording in these CDRs");
            assert_eq!(
                r["idempotency_key"],
                format!("phonecall/{iso}Z/{}/{}", q["source"], q["destination"])
            );
            total += 1;
        }
    }
    assert_eq!(total, 174);
}

#[test]
fn live_calls_and_their_cdr_backfill_give_the_same_idempotency_keys() {
    for rule_file in ["phonecalls.yaml", "call-log.yaml"] {
        let cfg = config_including(rule_file);
        let mut compared = 0;
        for cdr in cdr_files() {
            let file = name(&cdr);
            let live: BTreeSet<String> = live_requests(&cfg, &cdr)
                .into_iter()
                .map(|r| r.idempotency_key.unwrap())
                .collect();
            let backfilled: BTreeSet<String> = backfill_requests(&cfg, &cdr)
                .iter()
                .map(|r| r["idempotency_key"].as_str().unwrap().to_string())
                .collect();
            assert!(!live.is_empty(), "{file}");
            assert_eq!(live, backfilled, "{rule_file}: {file}");
            compared += live.len();
        }
        assert_eq!(compared, 174, "{rule_file}");
    }
}

fn enqueue_cdr(outbox: &Outbox, cfg: &Config, cdr: &Path) -> Summary {
    let f = std::fs::File::open(cdr).unwrap();
    backfill::run(
        BufReader::new(f),
        &cfg.normalizer.classifier,
        &cfg.rules,
        &opts(),
        Destination::Outbox(outbox),
    )
    .unwrap()
}

fn test_outbox(name: &str) -> (support_tmp::TestDir, Outbox) {
    let dir = support_http::state_dir(name);
    let opts = OutboxOptions {
        // Fixture calls are dated 2026-11-22: keep their keys whatever today is.
        dedupe_window: std::time::Duration::from_secs(100_000 * 86400),
        ..OutboxOptions::default()
    };
    let outbox = Outbox::open(&dir, opts).unwrap();
    (dir, outbox)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_backfill_and_a_backfill_after_the_live_daemon_enqueue_nothing() {
    let cfg = config_including("phonecalls.yaml");
    let (_dir, outbox) = test_outbox("backfill-twice");
    let load_dev = fixtures().join("asterisk-20/load-dev.cdr.csv");
    let first = tokio::task::block_in_place(|| enqueue_cdr(&outbox, &cfg, &load_dev));
    assert_eq!(
        (
            first.calls,
            first.requests,
            first.queued,
            first.already_sent
        ),
        (150, 150, 150, 0),
        "{first}"
    );
    let again = tokio::task::block_in_place(|| enqueue_cdr(&outbox, &cfg, &load_dev));
    assert_eq!(
        (
            again.requests,
            again.queued,
            again.already_sent,
            again.failed
        ),
        (150, 0, 150, 0),
        "{again}"
    );
    let rows = outbox
        .list(ListFilter {
            limit: 10_000,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 150);
    let keys: BTreeSet<_> = rows.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), 150, "each key once");

    // The live daemon sent the other captures' calls first: their backfill
    // adds nothing.
    let mut live_keys = 0;
    for cdr in cdr_files() {
        if cdr == load_dev {
            continue;
        }
        let reqs = live_requests(&cfg, &cdr);
        live_keys += reqs.len();
        let o = outbox.enqueue(&reqs).await.unwrap();
        // reconnect-before/after are the same call.
        assert_eq!(o.inserted + o.duplicates, reqs.len());
        let b = tokio::task::block_in_place(|| enqueue_cdr(&outbox, &cfg, &cdr));
        assert_eq!(b.queued, 0, "{}: {b}", name(&cdr));
        assert_eq!(b.already_sent, b.requests, "{}", name(&cdr));
    }
    assert_eq!(live_keys, 24);
    let stats = outbox.stats().await.unwrap();
    assert_eq!(
        stats.pending,
        150 + 24 - 2,
        "two reconnect halves are one call"
    );
    outbox.close();
}

#[test]
fn enqueuing_refuses_a_period_the_outbox_no_longer_remembers() {
    let cfg = config_including("phonecalls.yaml");
    let dir = support_http::state_dir("backfill-window");
    let outbox = Outbox::open(&dir, OutboxOptions::default()).unwrap();
    let cdr = fixtures().join("asterisk-20/internal.cdr.csv");
    let mut o = opts();
    o.since = Some(NOW - 30.0 * 86400.0);
    let err = backfill::run(
        BufReader::new(std::fs::File::open(&cdr).unwrap()),
        &cfg.normalizer.classifier,
        &cfg.rules,
        &o,
        Destination::Outbox(&outbox),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("30d 0h") && msg.contains("dedupe_window"),
        "{msg}"
    );
    // Without --since: as far back as the window reaches, minus a margin.
    o.since = None;
    let s = backfill::run(
        BufReader::new(std::fs::File::open(&cdr).unwrap()),
        &cfg.normalizer.classifier,
        &cfg.rules,
        &o,
        Destination::Outbox(&outbox),
    )
    .unwrap();
    assert!(s.since_defaulted);
    assert_eq!(s.since, Some(NOW - 7.0 * 86400.0 + 900.0));
    assert_eq!(s.queued, 1);
    outbox.close();
}

#[test]
fn since_and_until_keep_the_calls_that_ended_in_the_period() {
    let cdr = fixtures().join("asterisk-20/load-dev.cdr.csv");
    let (all, _) = records(&cdr);
    let mut ends: Vec<f64> = all.iter().map(|r| r.ended_at.0).collect();
    ends.sort_by(f64::total_cmp);
    let (since, until) = (ends[20], ends[120]);
    let mut o = opts();
    o.since = Some(since);
    o.until = Some(until);
    let mut kept = Vec::new();
    let mut summary = Summary::default();
    backfill::for_each_call(
        BufReader::new(std::fs::File::open(&cdr).unwrap()),
        &Classifier::default(),
        &o,
        &mut summary,
        |r, in_range, _| {
            if in_range {
                kept.push(r.ended_at.0);
            }
            Ok(())
        },
    )
    .unwrap();
    let want = ends.iter().filter(|e| **e >= since && **e < until).count();
    assert_eq!(kept.len(), want);
    assert_eq!(summary.out_of_range as usize, 150 - want);
    assert!(summary.rows_out_of_range > 0);
    assert!(kept.iter().all(|e| *e >= since && *e < until));
}

#[test]
fn a_pbx_in_another_time_zone_gives_the_same_records_with_its_offset_or_auto() {
    // The same CDR written by a PBX at UTC+02:00 (local times two hours on).
    let cdr = fixtures().join("asterisk-20/queue-answered.cdr.csv");
    let text = std::fs::read_to_string(&cdr).unwrap();
    let shifted = text.replace("2026-11-22 19:", "2026-11-22 21:");
    let (utc, _) = records(&cdr);
    let run = |tz: CdrTimezone| {
        let mut o = opts();
        o.timezone = tz;
        let mut out = Vec::new();
        let mut summary = Summary::default();
        backfill::for_each_call(
            shifted.as_bytes(),
            &Classifier::default(),
            &o,
            &mut summary,
            |r, _, _| {
                out.push(r);
                Ok(())
            },
        )
        .unwrap();
        (out, summary)
    };
    let (fixed, s) = run(CdrTimezone::parse("+02:00").unwrap());
    assert_eq!(fixed, utc);
    assert_eq!(s.timezone_mismatch, 0);
    let (auto, _) = run(CdrTimezone::parse("auto").unwrap());
    assert_eq!(auto, utc);
    // Read as UTC, the uniqueids give the mistake away.
    let (wrong, s) = run(CdrTimezone::default());
    assert_eq!(wrong[0].started_at.0, utc[0].started_at.0 + 7200.0);
    assert_eq!(s.timezone_mismatch, 1);
    assert_eq!(s.implied_offsets.iter().collect::<Vec<_>>(), ["+02:00"]);
}

#[test]
fn an_iana_time_zone_applies_its_daylight_saving_rules() {
    // The CDR of a PBX in Madrid: November is winter time, UTC+01:00.
    let cdr = fixtures().join("asterisk-20/queue-answered.cdr.csv");
    let text = std::fs::read_to_string(&cdr).unwrap();
    let madrid = text.replace("2026-11-22 19:", "2026-11-22 20:");
    let (utc, _) = records(&cdr);
    let mut o = opts();
    o.timezone = CdrTimezone::parse("Europe/Madrid").unwrap();
    let mut out = Vec::new();
    let mut summary = Summary::default();
    backfill::for_each_call(
        madrid.as_bytes(),
        &Classifier::default(),
        &o,
        &mut summary,
        |r, _, _| {
            out.push(r);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(out, utc);
    assert_eq!(summary.timezone_mismatch, 0);
    // Read at the summer offset (+02:00) the ids give the mistake away.
    let mut o = opts();
    o.timezone = CdrTimezone::parse("+02:00").unwrap();
    let mut summary = Summary::default();
    backfill::for_each_call(
        madrid.as_bytes(),
        &Classifier::default(),
        &o,
        &mut summary,
        |_, _, _| Ok(()),
    )
    .unwrap();
    assert_eq!(summary.timezone_mismatch, 1);
    assert_eq!(
        summary.implied_offsets.iter().collect::<Vec<_>>(),
        ["+01:00"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_opening_the_outbox_leaves_the_daemons_attempts_in_flight() {
    use callhook::deliver::outbox::{ClaimWant, Status};
    let cfg = config_including("phonecalls.yaml");
    let (dir, daemon) = test_outbox("backfill-shared");
    let cdr = fixtures().join("asterisk-20/internal.cdr.csv");
    let reqs = live_requests(&cfg, &cdr);
    daemon.enqueue(&reqs).await.unwrap();
    // The daemon's dispatcher claims it: an attempt is on the wire.
    let claimed = daemon
        .poll(
            support_http::now(),
            vec![ClaimWant {
                target: "phonecalls".into(),
                limit: 10,
            }],
        )
        .await
        .unwrap()
        .claimed;
    assert_eq!(claimed.len(), 1);
    // A backfill starts meanwhile (cron) and finds the call already there.
    let backfill = Outbox::open_shared(&dir, daemon.options().clone()).unwrap();
    let s = tokio::task::block_in_place(|| enqueue_cdr(&backfill, &cfg, &cdr));
    assert_eq!((s.queued, s.already_sent), (0, 1));
    backfill.close();
    let row = daemon.get(claimed[0].id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Inflight, "not handed out a second time");
    daemon.close();
}

#[test]
fn a_recording_url_in_the_userfield_becomes_the_records_recording_url() {
    let cfg = config_including("phonecalls.yaml");
    let cdr = fixtures().join("asterisk-20/internal.cdr.csv");
    let text = std::fs::read_to_string(&cdr).unwrap();
    let mut f = backfill::cdr::split_csv(text.trim_end()).unwrap();
    f[17] = "https://pbx.example.com/rec/1795374706.20.wav".into();
    let line: Vec<String> = f
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect();
    let dir = support_http::state_dir("backfill-rec");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("Master.csv");
    std::fs::write(&path, line.join(",") + "\n").unwrap();
    let (recs, _) = records(&path);
    assert_eq!(
        recs[0].recording_url.as_deref(),
        Some("https://pbx.example.com/rec/1795374706.20.wav")
    );
    let reqs = backfill_requests(&cfg, &path);
    let q = query(reqs[0]["url"].as_str().unwrap());
    assert_eq!(q["url"], "https://pbx.example.com/rec/1795374706.20.wav");
    // Any other userfield (here `did-1001`) is not a recording.
    let (recs, _) = records(&fixtures().join("asterisk-20/incoming-answered.cdr.csv"));
    assert_eq!(recs[0].recording_url, None);
}
