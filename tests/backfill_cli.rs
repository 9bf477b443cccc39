//! `callhook backfill`, the real binary, against a local HTTP sink: the
//! phonecalls rule set delivers one call-log request per call, and running
//! the same backfill again (the cron case) sends nothing more.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "support_http/mod.rs"]
mod support_http;
mod support_tmp;

use support_http::{state_dir, Sink};
use support_tmp::TestDir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load_dev() -> PathBuf {
    root().join("tests/fixtures/ami/asterisk-20/load-dev.cdr.csv")
}

/// A config whose phonecalls rule set points at the sink (and is not rate
/// limited to 5/s), in a fresh state directory.
fn config(sink: &Sink, dedupe_window: &str) -> (TestDir, PathBuf) {
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
    let (_dir, cfg) = config(&sink, "100000d");

    let dry = callhook(args(&cfg, &["--dry-run", "--format", "jsonl"])).await;
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert_eq!(String::from_utf8_lossy(&dry.stdout).lines().count(), 150);
    assert_eq!(sink.count(), 0, "a dry run sends nothing");

    let first = callhook(args(&cfg, &["--deliver"])).await;
    let err = stderr(&first);
    assert!(first.status.success(), "{err}");
    assert!(err.contains("read 276 rows: 150 calls"), "{err}");
    assert!(
        err.contains("150 requests: 150 queued, 0 already delivered, 0 already queued, 0 failed"),
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
        err.contains("150 requests: 0 queued, 150 already delivered, 0 already queued, 0 failed"),
        "{err}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(sink.count(), 150, "nothing sent twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_refuses_what_it_cannot_do_safely_and_reports_bad_rows() {
    let sink = Sink::start().await;
    let (_dir, cfg) = config(&sink, "7d");
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
    // A damaged file: rows reported with their line, the rest read (a
    // window wide enough for the fixture's date, for the dry run too).
    let (dir, cfg) = config(&sink, "100000d");
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
}

fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A `Master.csv` of answered incoming calls, one row each, that ended
/// `ended_ago` seconds before `now`, written in the local time of a PBX at
/// UTC`offset_h` (as cdr_csv does), with uniqueids carrying the real epoch.
fn recent_cdr(path: &Path, now: i64, calls: &[(i64, i64)]) {
    let local = |t: i64, offset_h: i64| {
        let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
        time::OffsetDateTime::from_unix_timestamp(t + offset_h * 3600)
            .unwrap()
            .format(&f)
            .unwrap()
    };
    let mut text = String::new();
    for (i, (ended_ago, offset_h)) in calls.iter().enumerate() {
        let end = now - ended_ago;
        let start = end - 20;
        let id = format!("{start}.{i}");
        text.push_str(&format!(
            "\"\",\"555100{i}\",\"2125550200\",\"from-pstn\",\"\"\"C{i}\"\" <555100{i}>\",\"SIP/pstn-0000{i:04}\",\"SIP/1001-0001{i:04}\",\"Dial\",\"SIP/1001,30\",\"{}\",\"{}\",\"{}\",20,15,\"ANSWERED\",\"DOCUMENTATION\",\"{id}\",\"\",\"{id}\",\"{id}\",{i}\n",
            local(start, *offset_h),
            local(start + 5, *offset_h),
            local(end, *offset_h),
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// A config with every default (no `outbox:` section), the phonecalls rule
/// set aimed at the sink, an absolute state_dir.
fn default_config(sink: &Sink) -> (TestDir, PathBuf) {
    let (dir, cfg) = config(sink, "7d");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("outbox:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cfg, text).unwrap();
    (dir, cfg)
}

/// The `callhook backfill …` commands of the README's cron example.
fn readme_cron_lines() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme
        .split("```cron\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a cron block in the README");
    let lines: Vec<Vec<String>> = block
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cmd = &l[l.find("callhook backfill").expect("a backfill line")..];
            cmd.split_whitespace().skip(1).map(String::from).collect()
        })
        .collect();
    assert_eq!(lines.len(), 2, "hourly and nightly: {block}");
    lines
}

/// Runs like cron: an empty environment but for PATH and what the rules
/// read, in a working directory that is not the daemon's.
async fn as_cron(args: Vec<String>, cwd: &Path) -> Output {
    let cwd = cwd.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_callhook"))
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CRM_TOKEN", "cli-token")
            .current_dir(cwd)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_cron_lines_work_with_the_defaults() {
    let sink = Sink::start().await;
    let (dir, cfg) = default_config(&sink);
    let cdr = dir.join("Master.csv");
    let now = epoch_now();
    // A PBX five hours behind UTC: three calls in the last hour, one three
    // hours ago (only the nightly run takes it), one ten days ago (beyond
    // what the outbox remembers: never).
    recent_cdr(
        &cdr,
        now,
        &[
            (1800, -5),
            (1700, -5),
            (1600, -5),
            (3 * 3600, -5),
            (10 * 86400, -5),
        ],
    );
    let cwd = dir.join("cron-home");
    std::fs::create_dir_all(&cwd).unwrap();
    let lines = readme_cron_lines();
    let fill = |line: &Vec<String>| -> Vec<String> {
        line.iter()
            .map(|a| match a.as_str() {
                "/var/log/asterisk/cdr-csv/Master.csv" => cdr.display().to_string(),
                "/etc/callhook/callhook.yaml" => cfg.display().to_string(),
                _ => a.clone(),
            })
            .collect()
    };

    let hourly = as_cron(fill(&lines[0]), &cwd).await;
    let err = stderr(&hourly);
    assert!(hourly.status.success(), "{err}");
    assert!(
        err.contains("3 calls in the period, 3 requests: 3 queued, 0 already delivered, 0 already queued, 0 failed"),
        "{err}"
    );
    // Nobody delivers them: the backfill says so.
    assert!(err.contains("no `callhook run` is using"), "{err}");

    let nightly = as_cron(fill(&lines[1]), &cwd).await;
    let err = stderr(&nightly);
    assert!(nightly.status.success(), "{err}");
    assert!(
        err.contains("4 calls in the period, 4 requests: 1 queued, 0 already delivered, 3 already queued, 0 failed"),
        "{err}"
    );
    assert!(
        !cwd.join("callhook-data").exists(),
        "nothing in cron's working directory"
    );
    assert_eq!(sink.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn already_delivered_is_told_from_already_queued() {
    let sink = Sink::start().await;
    let (dir, cfg) = default_config(&sink);
    let cdr = dir.join("Master.csv");
    let now = epoch_now();
    recent_cdr(&cdr, now, &[(1800, 0)]);
    let run = |extra: &[&str]| {
        let mut a = vec![
            "backfill".to_string(),
            "--cdr".into(),
            cdr.display().to_string(),
            "--config".into(),
            cfg.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        callhook(a)
    };
    let first = run(&["--deliver", "--timeout", "60s"]).await;
    let err = stderr(&first);
    assert!(first.status.success(), "{err}");
    assert!(err.contains("1 requests: 1 queued"), "{err}");
    assert!(err.contains("done: 1 delivered, 0 dead"), "{err}");
    assert_eq!(sink.count(), 1);
    // A second call appears; the first was delivered, the second is queued
    // (no daemon sends it), then both are already there.
    recent_cdr(&cdr, now, &[(1800, 0), (1200, 0)]);
    let second = run(&[]).await;
    let err = stderr(&second);
    assert!(second.status.success(), "{err}");
    assert!(
        err.contains("2 requests: 1 queued, 1 already delivered, 0 already queued, 0 failed"),
        "{err}"
    );
    let third = run(&[]).await;
    let err = stderr(&third);
    assert!(
        err.contains("2 requests: 0 queued, 1 already delivered, 1 already queued, 0 failed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_covers_the_same_period_as_a_real_run() {
    let sink = Sink::start().await;
    let (dir, cfg) = default_config(&sink);
    let cdr = dir.join("Master.csv");
    let now = epoch_now();
    // One call an hour ago, one ten days ago (outside the default 7 d).
    recent_cdr(&cdr, now, &[(3600, 0), (10 * 86400, 0)]);
    let run = |extra: &[&str]| {
        let mut a = vec![
            "backfill".to_string(),
            "--cdr".into(),
            cdr.display().to_string(),
            "--config".into(),
            cfg.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        callhook(a)
    };
    let dry = run(&["--dry-run", "--format", "jsonl"]).await;
    let err = stderr(&dry);
    assert!(dry.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&dry.stdout).lines().count(),
        1,
        "{err}"
    );
    assert!(err.contains("1 calls in the period"), "{err}");
    assert!(
        err.contains("(no --since: calls that ended in the last 6d 23h"),
        "{err}"
    );
    // Further back than a real run may go: refused the same way.
    let dry = run(&["--dry-run", "--since", "30d"]).await;
    let real = run(&["--since", "30d"]).await;
    for o in [&dry, &real] {
        assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
        assert!(stderr(o).contains("dedupe_window"), "{}", stderr(o));
    }
    // And the real run takes exactly what the dry run printed.
    let real = run(&[]).await;
    assert!(
        stderr(&real).contains("1 requests: 1 queued"),
        "{}",
        stderr(&real)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_beside_a_daemon_leaves_the_sending_to_it() {
    let sink = Sink::start().await;
    let (dir, cfg) = default_config(&sink);
    let cdr = dir.join("Master.csv");
    let now = epoch_now();
    recent_cdr(&cdr, now, &[(1800, 0)]);
    // Hold the state_dir lock as `callhook run` does.
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("callhook.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let base = vec![
        "backfill".to_string(),
        "--cdr".into(),
        cdr.display().to_string(),
        "--config".into(),
        cfg.display().to_string(),
    ];
    let mut deliver = base.clone();
    deliver.push("--deliver".into());
    let o = callhook(deliver).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("would send beside it"),
        "{}",
        stderr(&o)
    );
    let o = callhook(base).await;
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("1 queued"), "{err}");
    assert!(err.contains("delivers them within seconds"), "{err}");
    assert!(!err.contains("warning"), "{err}");
    drop(lock);
}
