//! `callhook backfill`, the real binary, against a local HTTP sink: the
//! phonecalls rule set delivers one call-log request per call, and running
//! the same backfill again (the cron case) sends nothing more.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "support_http/mod.rs"]
mod support_http;

use support_http::{state_dir, Sink};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load_dev() -> PathBuf {
    root().join("tests/fixtures/ami/asterisk-20/load-dev.cdr.csv")
}

/// A config whose phonecalls rule set points at the sink (and is not rate
/// limited to 5/s), in a fresh state directory.
fn config(sink: &Sink, dedupe_window: &str) -> (PathBuf, PathBuf) {
    let dir = state_dir("backfill-cli");
    std::fs::create_dir_all(&dir).unwrap();
    let rules = std::fs::read_to_string(root().join("rules/phonecalls.yaml"))
        .unwrap()
        .replace("http://127.0.0.1:8080", &sink.url(""))
        .replace("rate_limit: 5/s", "rate_limit: 1000/s");
    std::fs::write(dir.join("phonecalls.yaml"), rules).unwrap();
    let cfg = dir.join("callhook.yaml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir: {}\noutbox: {{ dedupe_window: {dedupe_window} }}\ninclude: [phonecalls.yaml]\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    (dir, cfg)
}

async fn callhook(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_callhook"))
            .args(&args)
            .env("CRM_TOKEN", "cli-token")
            .env("CALLHOOK_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn args(cfg: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "backfill".into(),
        "--cdr".into(),
        load_dev().display().to_string(),
        "--config".into(),
        cfg.display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_twice_delivers_each_call_once() {
    let sink = Sink::start().await;
    // Fixture calls are dated 2026-11-22: a window long enough for any today.
    let (dir, cfg) = config(&sink, "100000d");

    let dry = callhook(args(&cfg, &["--dry-run", "--format", "jsonl"])).await;
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert_eq!(String::from_utf8_lossy(&dry.stdout).lines().count(), 150);
    assert_eq!(sink.count(), 0, "a dry run sends nothing");

    let first = callhook(args(&cfg, &["--deliver"])).await;
    let err = stderr(&first);
    assert!(first.status.success(), "{err}");
    assert!(err.contains("read 276 rows: 150 calls"), "{err}");
    assert!(
        err.contains("150 requests: 150 queued, 0 already sent, 0 failed"),
        "{err}"
    );
    assert!(err.contains("done: 150 delivered, 0 dead"), "{err}");
    let got = sink.received();
    assert_eq!(got.len(), 150);
    let keys: BTreeSet<String> = got
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(keys.len(), 150, "one request per idempotency key");
    for r in &got {
        assert_eq!(r.method, "GET");
        assert_eq!(r.path(), "/direct/items/phonecalls/create");
        assert!(
            r.uri.contains("token=cli-token&initiated=2026-11-22T"),
            "{}",
            r.uri
        );
    }

    // The nightly run over the same period: nothing new.
    let again = callhook(args(&cfg, &["--deliver", "--since", "100d"])).await;
    let err = stderr(&again);
    assert!(again.status.success(), "{err}");
    assert!(
        err.contains("150 requests: 0 queued, 150 already sent, 0 failed"),
        "{err}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(sink.count(), 150, "nothing sent twice");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_refuses_what_it_cannot_do_safely_and_reports_bad_rows() {
    let sink = Sink::start().await;
    let (dir, cfg) = config(&sink, "7d");
    // Further back than the outbox remembers keys.
    let o = callhook(args(&cfg, &["--since", "400d"])).await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("dedupe_window"), "{err}");
    // Bad values.
    for bad in [
        vec!["--since", "last tuesday"],
        vec!["--cdr-timezone", "Mars/Olympus"],
        vec!["--group-window", "forever"],
    ] {
        let o = callhook(args(&cfg, &bad)).await;
        assert!(!o.status.success(), "{bad:?}");
        assert!(stderr(&o).contains(bad[0]), "{bad:?}: {}", stderr(&o));
    }
    // A damaged file: rows reported with their line, the rest read.
    let damaged = dir.join("Master.csv");
    let text = std::fs::read_to_string(load_dev()).unwrap();
    std::fs::write(&damaged, format!("{text}oops,not a row\n")).unwrap();
    let o = callhook(vec![
        "backfill".into(),
        "--cdr".into(),
        damaged.display().to_string(),
        "--config".into(),
        cfg.display().to_string(),
        "--dry-run".into(),
        "--since".into(),
        "2026-11-22".into(),
    ])
    .await;
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("1 malformed rows skipped"), "{err}");
    assert!(err.contains("Master.csv: line 277: 2 fields"), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("# rule phonecalls")
            .count(),
        150
    );
    assert_eq!(sink.count(), 0);
    let _ = std::fs::remove_dir_all(dir);
}
