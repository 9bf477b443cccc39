//! CDR backfill input handling: the classic column layouts (without
//! `newcdrcolumns` / `loguniqueid`) give the same call-log keys, malformed
//! rows are reported with their line numbers and skipped (a million-row
//! file streaming in bounded memory is `backfill_stream.rs`).

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use callhook::backfill::cdr::split_csv;
use callhook::backfill::{self, Destination, Options, Summary};
use callhook::config::Config;
use callhook::model::CallRecord;
use callhook::normalize::Classifier;
use callhook::replay::Format;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cdr_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["asterisk-20", "asterisk-11"] {
        let d = root().join("tests/fixtures/ami").join(dir);
        let mut files: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".cdr.csv"))
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

const NOW: f64 = 1795375900.0;

fn opts() -> Options {
    Options {
        now: NOW,
        ..Options::default()
    }
}

fn records_of(input: impl BufRead) -> (Vec<CallRecord>, Summary) {
    let mut out = Vec::new();
    let mut summary = Summary::default();
    backfill::for_each_call(
        input,
        &Classifier::default(),
        &opts(),
        &mut summary,
        |r, _, _| {
            out.push(r);
            Ok(())
        },
    )
    .unwrap();
    (out, summary)
}

/// Rewrites a newcdrcolumns + loguniqueid + loguserfield file (21 columns)
/// keeping the first 16 columns and then `keep` of (uniqueid, userfield).
fn classic(text: &str, uniqueid: bool, userfield: bool) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let f = split_csv(line).unwrap();
        assert_eq!(f.len(), 21);
        let mut cols: Vec<String> = f[..16].to_vec();
        if uniqueid {
            cols.push(f[16].clone());
        }
        if userfield {
            cols.push(f[17].clone());
        }
        let quoted: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| match i {
                // cdr_csv leaves numbers and empty dates unquoted.
                12 | 13 => c.clone(),
                10 if c.is_empty() => String::new(),
                _ => format!("\"{}\"", c.replace('"', "\"\"")),
            })
            .collect();
        out.push_str(&quoted.join(","));
        out.push('\n');
    }
    out
}

fn phonecalls() -> Config {
    std::env::set_var("CRM_TOKEN", "test-token");
    Config::from_text(
        "state_dir: /nonexistent\ninclude: [rules/phonecalls.yaml]\n",
        root(),
    )
    .unwrap()
}

fn keys(cfg: &Config, text: &str) -> BTreeSet<String> {
    let mut out = Vec::new();
    backfill::run(
        text.as_bytes(),
        &cfg.normalizer.classifier,
        &cfg.rules,
        &opts(),
        Destination::Print {
            out: &mut out,
            format: Format::Jsonl,
        },
    )
    .unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["idempotency_key"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn classic_column_layouts_give_the_same_calls_and_keys() {
    let cfg = phonecalls();
    let mut files = 0;
    for cdr in cdr_files() {
        let text = std::fs::read_to_string(&cdr).unwrap();
        let name = cdr.file_name().unwrap().to_string_lossy().to_string();
        let (full, _) = records_of(text.as_bytes());
        let full_keys = keys(&cfg, &text);
        for (uid, uf) in [(true, true), (true, false), (false, true), (false, false)] {
            let layout = format!("{name} uniqueid={uid} userfield={uf}");
            let c = classic(&text, uid, uf);
            let (recs, summary) = records_of(c.as_bytes());
            assert_eq!(summary.malformed, 0, "{layout}");
            // The attended transfer's consultation leg (a Local ;2 half)
            // cannot be joined to its call without linkedid.
            let transfer = name == "transfer-attended.cdr.csv";
            assert_eq!(summary.not_calls, u64::from(transfer), "{layout}");
            assert_eq!(recs.len(), full.len(), "{layout}");
            for (a, b) in recs.iter().zip(&full) {
                assert_eq!(a.direction, b.direction, "{layout}");
                assert_eq!(a.caller_number, b.caller_number, "{layout}");
                assert_eq!(a.dialed_number, b.dialed_number, "{layout}");
                assert_eq!(a.disposition, b.disposition, "{layout}");
                assert_eq!(a.started_at, b.started_at, "{layout}");
                assert_eq!(a.answered_by, b.answered_by, "{layout}");
                if !transfer {
                    assert_eq!(a.ended_at, b.ended_at, "{layout}");
                    assert_eq!(a.final_answered_by, b.final_answered_by, "{layout}");
                    assert_eq!(a.extensions_rung, b.extensions_rung, "{layout}");
                }
                if uid {
                    assert_eq!(a.session_id, b.session_id, "{layout}");
                } else {
                    assert!(a.session_id.starts_with("cdr-"), "{layout}");
                }
            }
            assert_eq!(keys(&cfg, &c), full_keys, "{layout}");
        }
        files += 1;
    }
    assert_eq!(files, 23);
}

#[test]
fn malformed_rows_are_reported_with_their_line_and_skipped() {
    let cdr = root().join("tests/fixtures/ami/asterisk-20/load-dev.cdr.csv");
    let text = std::fs::read_to_string(cdr).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len();
    // Damage: a truncated row (power cut mid-write), garbage, a bad date,
    // broken quoting, a bad number; and a blank line (ignored).
    let truncated = lines[10][..40].to_string();
    lines.insert(5, "garbage without commas".into());
    lines.insert(50, truncated);
    lines.insert(100, lines[99].replace("2026-11-22 19:", "2026-11-32 19:"));
    lines.insert(150, "\"unterminated,\"quote".into());
    let mut f = split_csv(&lines[199]).unwrap();
    f[12] = "x".into();
    let bad_number: Vec<String> = f
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect();
    lines.insert(200, bad_number.join(","));
    lines.insert(230, String::new());
    let damaged = lines.join("\n");
    let (recs, summary) = records_of(damaged.as_bytes());
    assert_eq!(summary.rows, n as u64 + 5);
    assert_eq!(summary.malformed, 5, "{:?}", summary.errors);
    let lines_reported: Vec<u64> = summary.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines_reported, [6, 51, 101, 151, 201]);
    let msgs: Vec<String> = summary.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(msgs[0], "line 6: 1 field; a cdr_csv row has 16 to 21");
    assert!(msgs[1].contains("quoting"), "{msgs:?}");
    assert!(msgs[2].contains("start \"2026-11-32 19:"), "{msgs:?}");
    assert!(msgs[3].contains("quoting"), "{msgs:?}");
    assert!(msgs[4].contains("duration \"x\""), "{msgs:?}");
    // The damaged copies were extra rows: every call is still there.
    assert_eq!(recs.len(), 150);
    assert_eq!(summary.skipped_rows(), 5);
}

#[test]
fn rotated_files_concatenated_newest_first_group_as_well() {
    // `zcat -f Master.csv*`: today's file, then yesterday's.
    let cdr = root().join("tests/fixtures/ami/asterisk-20/load-dev.cdr.csv");
    let yesterday = std::fs::read_to_string(cdr).unwrap();
    let today = yesterday
        .replace("\"2026-11-22 ", "\"2026-11-23 ")
        .replace("\"1795375", "\"day2-1795375");
    let (both, summary) = records_of(format!("{today}{yesterday}").as_bytes());
    assert_eq!(both.len(), 300);
    assert_eq!(summary.late_rows, 0);
    let (one, _) = records_of(yesterday.as_bytes());
    let cfg = phonecalls();
    let k_both = keys(&cfg, &format!("{today}{yesterday}"));
    let k_one = keys(&cfg, &yesterday);
    assert_eq!(k_both.len(), 300);
    assert!(k_one.is_subset(&k_both));
    assert_eq!(&both[150..], &one[..], "yesterday's calls unchanged");
}
