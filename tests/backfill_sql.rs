//! `callhook backfill --cdr-db`, the real binary, against real MariaDB and
//! PostgreSQL servers (tests/support_db) loaded with the rows of a
//! `Master.csv` fixture, in the tables Asterisk's CDR drivers write:
//! `cdr_adaptive_odbc`'s (Asterisk's `ast-db-manage` schema: start, answer,
//! end, linkedid, sequence), `cdr_mysql`'s (FreePBX's `asteriskcdrdb.cdr`:
//! calldate, no answer or end) and `cdr_pgsql`'s (calldate as a
//! `timestamp with time zone`).
//!
//! What is asserted: a table holding the rows of every `*.cdr.csv`
//! fixture gives the same requests as the CSV files
//! (same bodies, same idempotency keys), so a call backfilled from both is
//! sent once; the cursor is saved and the next run goes on from it; a call
//! in progress waits for the next run; columns of other names map; a bad
//! row is reported and skipped; the password never shows (stdout, stderr
//! at debug level, the cursor file); a dead server, a wrong password and a
//! missing table each get a clear error.
//!
//! Every test has its own database on the shared servers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "support_db/mod.rs"]
mod support_db;
#[path = "support_http/mod.rs"]
mod support_http;
mod support_tmp;

use support_db::cdr::{
    all_fixtures, create_table, csv_rows, fixture, insert, rows_of, Columns, CsvRow, ADAPTIVE,
    CDR_MYSQL, CDR_PGSQL, RENAMED,
};
use support_db::{Db, READER_PASSWORD, READER_PASSWORD_IN_URL};
use support_http::{state_dir, Sink};
use support_tmp::TestDir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A config whose phonecalls rule set points at the sink, in a fresh state
/// directory.
fn config(sink_url: &str) -> (TestDir, PathBuf) {
    let dir = state_dir("backfill-sql");
    std::fs::create_dir_all(&dir).unwrap();
    let rules = std::fs::read_to_string(root().join("rules/phonecalls.yaml"))
        .unwrap()
        .replace("http://127.0.0.1:8080", sink_url)
        .replace("rate_limit: 5/s", "rate_limit: 1000/s");
    std::fs::write(dir.join("phonecalls.yaml"), rules).unwrap();
    let cfg = dir.join("callhook.yaml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir: {}\noutbox: {{ dedupe_window: 100000d }}\ninclude: [phonecalls.yaml]\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    (dir, cfg)
}

async fn callhook(args: Vec<String>, env: Vec<(&'static str, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_callhook"))
            .args(&args)
            .env("CRM_TOKEN", "sql-token")
            .env("CALLHOOK_LOG", "warn")
            .env_remove("CALLHOOK_CDR_DB")
            .env_remove("CALLHOOK_CDR_DB_PASSWORD")
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The requests a dry run prints, sorted (a table is read in start order,
/// the file in its own).
fn requests(o: &Output) -> Vec<String> {
    let (out, err) = text(o);
    assert!(o.status.success(), "{err}");
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

fn keys(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["idempotency_key"].as_str().unwrap().to_string()
        })
        .collect()
}

fn session(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["session_id"].as_str().unwrap().to_string()
}

/// The linkedids of calls with a row whose `end − start` is not its
/// `duration` (Asterisk rounds durations from microseconds; the CSV's
/// times are truncated to seconds).
fn rounded_calls(rows: &[CsvRow]) -> BTreeSet<String> {
    let t = |s: &str| callhook::backfill::times::parse_local(s).map(|t| t.0);
    rows.iter()
        .filter(|r| {
            let (Some(start), Some(end)) = (t(&r["start"]), t(&r["end"])) else {
                return false;
            };
            let duration: f64 = r["duration"].parse().unwrap();
            let billsec: f64 = r["billsec"].parse().unwrap();
            let answer_off = t(&r["answer"]).is_some_and(|a| end - a != billsec);
            end - start != duration || answer_off
        })
        .map(|r| r["linkedid"].clone())
        .collect()
}

/// The requests of a dry run over `csv`, and its summary's first line.
async fn csv_dry_run_of(cfg: &Path, csv: &Path) -> (Vec<String>, String) {
    let o = callhook(
        strings(&[
            "backfill",
            "--cdr",
            &csv.display().to_string(),
            "--config",
            &cfg.display().to_string(),
            "--dry-run",
            "--format",
            "jsonl",
        ]),
        vec![],
    )
    .await;
    (requests(&o), summary_line(&o))
}

/// The summary's first line (`read N rows: M calls; skipped …`).
fn summary_line(o: &Output) -> String {
    let (_, err) = text(o);
    err.lines()
        .find(|l| l.starts_with("read "))
        .unwrap_or_else(|| panic!("no summary: {err}"))
        .to_string()
}

async fn csv_dry_run(cfg: &Path) -> Vec<String> {
    let (r, _) = csv_dry_run_of(cfg, &fixture()).await;
    assert_eq!(r.len(), 150);
    r
}

fn db_args(cfg: &Path, url: &str, extra: &[&str]) -> Vec<String> {
    let mut a = strings(&[
        "backfill",
        "--cdr-db",
        url,
        "--config",
        &cfg.display().to_string(),
    ]);
    a.extend(strings(extra));
    a
}

/// Every standard table of `db`'s kind gives the CSV file's requests.
async fn tables_give_the_csv_requests(db: &Db, tag: &str, schemas: &[(&str, Columns)]) {
    let (dir, cfg) = config("http://127.0.0.1:9");
    let text = all_fixtures();
    let csv = dir.join("all.cdr.csv");
    std::fs::write(&csv, &text).unwrap();
    let (from_csv, csv_summary) = csv_dry_run_of(&cfg, &csv).await;
    assert_eq!(from_csv.len(), 211, "{csv_summary}");
    assert!(csv_summary.contains("skipped 0 rows"), "{csv_summary}");
    let rows = rows_of(&text);
    for (name, columns) in schemas {
        let database = db.create_database(&format!("same_{tag}_{name}")).await;
        create_table(db, &database, "cdr", columns).await;
        insert(db, &database, "cdr", columns, &rows).await;
        let o = callhook(
            db_args(
                &cfg,
                &db.reader_url(&database),
                &["--dry-run", "--format", "jsonl", "--no-cursor"],
            ),
            vec![],
        )
        .await;
        assert_eq!(summary_line(&o), csv_summary, "{name}");
        let from_db = requests(&o);
        assert_eq!(keys(&from_db), keys(&from_csv), "{name}: the same keys");
        if columns.iter().any(|(c, _, _)| *c == "answer") {
            assert_eq!(from_db, from_csv, "{name}: the same requests");
        } else {
            // No answer or end column: they are start + duration − billsec
            // and start + duration, as for a CSV export without them. Only
            // calls whose whole-second times disagree with Asterisk's
            // rounded durations may differ (by that second).
            let rounded = rounded_calls(&rows);
            let diff: Vec<String> = from_db
                .iter()
                .filter(|l| !from_csv.contains(l))
                .map(|l| session(l))
                .collect();
            assert!(
                diff.iter().all(|s| rounded.contains(s)),
                "{name}: {diff:?} differ, of which only {rounded:?} may"
            );
            assert!(diff.len() <= rounded.len());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_tables_give_the_csv_requests() {
    let Some(db) = support_db::mariadb() else {
        return;
    };
    tables_give_the_csv_requests(
        db,
        "my",
        &[("adaptive", ADAPTIVE), ("cdr_mysql", CDR_MYSQL)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_tables_give_the_csv_requests() {
    let Some(db) = support_db::postgres() else {
        return;
    };
    tables_give_the_csv_requests(
        db,
        "pg",
        &[("adaptive", ADAPTIVE), ("cdr_pgsql", CDR_PGSQL)],
    )
    .await;
}

/// `--deliver` output: the summary and what was sent.
async fn deliver(args: Vec<String>, env: Vec<(&'static str, String)>) -> String {
    let o = callhook(args, env).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    format!("{out}{err}")
}

fn csv_args(cfg: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = strings(&[
        "backfill",
        "--cdr",
        &fixture().display().to_string(),
        "--config",
        &cfg.display().to_string(),
    ]);
    a.extend(strings(extra));
    a
}

/// A call backfilled from the CSV file and from the table (either order)
/// is one delivery, sent once.
async fn delivered_once(db: &Db, database: &str, csv_first: bool) {
    let sink = Sink::start().await;
    let (_dir, cfg) = config(&sink.url(""));
    let database = db.create_database(database).await;
    create_table(db, &database, "cdr", ADAPTIVE).await;
    insert(db, &database, "cdr", ADAPTIVE, &csv_rows()).await;
    let url = db.reader_url(&database);
    let first_all = "150 requests: 150 queued, 0 already delivered, 0 already queued, 0 failed";
    let again = "150 requests: 0 queued, 150 already delivered, 0 already queued, 0 failed";
    let (a, b) = if csv_first {
        (
            deliver(csv_args(&cfg, &["--deliver"]), vec![]).await,
            deliver(db_args(&cfg, &url, &["--deliver"]), vec![]).await,
        )
    } else {
        (
            deliver(db_args(&cfg, &url, &["--deliver"]), vec![]).await,
            deliver(csv_args(&cfg, &["--deliver"]), vec![]).await,
        )
    };
    assert!(a.contains(first_all), "{a}");
    assert!(b.contains(again), "{b}");
    let got = sink.received();
    assert_eq!(got.len(), 150, "each call sent once");
    let keys: BTreeSet<String> = got
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(keys.len(), 150);
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_and_csv_deliver_each_call_once() {
    let Some(db) = support_db::mariadb() else {
        return;
    };
    delivered_once(db, "once_my", true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_and_csv_deliver_each_call_once() {
    let Some(db) = support_db::postgres() else {
        return;
    };
    delivered_once(db, "once_pg", false).await;
}

/// The only cursor file under the state directory.
fn cursor_file(dir: &Path) -> (PathBuf, String) {
    let d = dir.join("state/cdr-cursors");
    let files: Vec<PathBuf> = std::fs::read_dir(&d)
        .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    (files[0].clone(), text)
}

/// A one-row answered call that ended `ago` seconds before now, dated in
/// UTC (its uniqueid says so too).
fn recent_call(ago: i64) -> CsvRow {
    let now = support_http::now() as i64;
    let t = |s: i64| {
        jiff::Timestamp::from_second(s)
            .unwrap()
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    let id = format!("{}.9001", now - ago - 20);
    let mut r = csv_rows()
        .into_iter()
        .find(|r| r["uniqueid"] == "1795375092.563")
        .unwrap();
    r.insert("start", t(now - ago - 20));
    r.insert("answer", t(now - ago - 17));
    r.insert("end", t(now - ago));
    r.insert("duration", "20".into());
    r.insert("billsec", "17".into());
    r.insert("dst", "02122809999".into());
    r.insert("uniqueid", id.clone());
    r.insert("linkedid", id);
    r
}

/// Two runs over a growing table send every call once; the second starts
/// at the cursor the first saved; a call still in progress waits for the
/// run after it has settled.
async fn cursor_resumes(db: &Db, database: &str) {
    let sink = Sink::start().await;
    let (dir, cfg) = config(&sink.url(""));
    let database = db.create_database(database).await;
    create_table(db, &database, "cdr", ADAPTIVE).await;
    let rows = csv_rows();
    // The calls whose first row is before the middle, then the others
    // (Asterisk inserts a call's rows as its channels hang up).
    let mut first_start = std::collections::BTreeMap::<String, String>::new();
    for r in &rows {
        let e = first_start
            .entry(r["linkedid"].clone())
            .or_insert(r["start"].clone());
        if r["start"] < *e {
            *e = r["start"].clone();
        }
    }
    let (early, late): (Vec<CsvRow>, Vec<CsvRow>) = rows
        .iter()
        .cloned()
        .partition(|r| first_start[&r["linkedid"]].as_str() < "2026-11-22 19:18:20");
    assert!(!early.is_empty() && !late.is_empty());
    insert(db, &database, "cdr", ADAPTIVE, &early).await;
    let url = db.reader_url(&database);

    let one = deliver(db_args(&cfg, &url, &["--deliver"]), vec![]).await;
    assert!(one.contains(&format!("read {} rows", early.len())), "{one}");
    assert!(
        one.contains("--since; the next run starts at start 2026-11-22 "),
        "{one}"
    );
    let (path, saved) = cursor_file(&dir);
    assert!(
        path.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .contains(&database),
        "{}",
        path.display()
    );
    assert!(saved.contains("reader:***@127.0.0.1"), "{saved}");
    let n1 = sink.count();
    assert!(n1 > 0 && n1 < 150, "{n1}");

    insert(db, &database, "cdr", ADAPTIVE, &late).await;
    let two = deliver(db_args(&cfg, &url, &["--deliver"]), vec![]).await;
    assert!(two.contains("the saved cursor"), "{two}");
    assert!(
        two.contains(&format!(
            "; {} rows of calls an earlier run handed out",
            early.len()
        )),
        "{two}"
    );
    assert!(
        two.contains(&format!("{} queued, 0 already delivered", 150 - n1)),
        "{two}"
    );
    let got = sink.received();
    assert_eq!(got.len(), 150);
    let keys: BTreeSet<String> = got
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(keys.len(), 150, "no call sent twice");

    // Nothing new: nothing sent.
    let three = deliver(db_args(&cfg, &url, &["--deliver"]), vec![]).await;
    assert!(three.contains(" 0 queued"), "{three}");

    // A call that ended a moment ago may have rows still to come.
    insert(db, &database, "cdr", ADAPTIVE, &[recent_call(5)]).await;
    let four = deliver(db_args(&cfg, &url, &["--deliver"]), vec![]).await;
    assert!(
        four.contains("1 calls still in progress (read again next run)"),
        "{four}"
    );
    assert!(four.contains(" 0 queued"), "{four}");
    // Once it has settled, the next run sends it, reading from the new
    // cursor: only the recent rows.
    let five = deliver(
        db_args(&cfg, &url, &["--deliver", "--settle", "1s"]),
        vec![],
    )
    .await;
    assert!(five.contains("read 1 rows: 1 calls"), "{five}");
    assert!(five.contains("1 queued"), "{five}");
    assert_eq!(sink.count(), 151);
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_cursor_resumes() {
    let Some(db) = support_db::mariadb() else {
        return;
    };
    cursor_resumes(db, "cursor_my").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_cursor_resumes() {
    let Some(db) = support_db::postgres() else {
        return;
    };
    cursor_resumes(db, "cursor_pg").await;
}

/// A table of another name and schema with other column names maps with
/// --cdr-table / --cdr-column; a row with a bad value is reported (by its
/// uniqueid) and skipped, the others give the CSV's requests.
async fn renamed_columns(db: &Db, database: &str) {
    let (_dir, cfg) = config("http://127.0.0.1:9");
    let from_csv = csv_dry_run(&cfg).await;
    let database = db.create_database(database).await;
    let table = if db.scheme == "mysql" {
        format!("{database}.calls")
    } else {
        db.admin_exec(
            &database,
            &strings(&["CREATE SCHEMA pbx", "GRANT USAGE ON SCHEMA pbx TO reader"]),
        )
        .await;
        "pbx.calls".to_string()
    };
    create_table(db, &database, &table, RENAMED).await;
    let mut rows = csv_rows();
    let mut bad = recent_call(3600);
    bad.insert("duration", "five".into());
    bad.insert("uniqueid", "1795375099.777".into());
    bad.insert("linkedid", "1795375099.777".into());
    rows.push(bad);
    insert(db, &database, &table, RENAMED, &rows).await;
    let url = db.reader_url(&database);

    // Unmapped: the missing columns are named, with what the table has.
    let o = callhook(
        db_args(&cfg, &url, &["--cdr-table", &table, "--dry-run"]),
        vec![],
    )
    .await;
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains("has no src column (map one with --cdr-column src=COLUMN)"),
        "{err}"
    );
    assert!(err.contains("has no start or calldate column"), "{err}");
    assert!(err.contains("its columns: source, destination, "), "{err}");

    let o = callhook(
        db_args(
            &cfg,
            &url,
            &[
                "--cdr-table",
                &table,
                "--cdr-column",
                "src=source",
                "--cdr-column",
                "dst=destination",
                "--cdr-column",
                "clid=callerid",
                "--cdr-column",
                "channel=chan",
                "--cdr-column",
                "calldate=began",
                "--cdr-column",
                "linkedid=call_id",
                "--dry-run",
                "--format",
                "jsonl",
                "--no-cursor",
            ],
        ),
        vec![],
    )
    .await;
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("read 277 rows: 150 calls; skipped 1 rows (1 malformed"),
        "{err}"
    );
    assert!(
        err.contains("row uniqueid 1795375099.777, start ")
            && err.contains("duration \"five\" is not a whole number"),
        "{err}"
    );
    assert_eq!(requests(&o), from_csv);
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_renamed_columns_and_bad_rows() {
    let Some(db) = support_db::mariadb() else {
        return;
    };
    renamed_columns(db, "renamed_my").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_renamed_columns_and_bad_rows() {
    let Some(db) = support_db::postgres() else {
        return;
    };
    renamed_columns(db, "renamed_pg").await;
}

fn assert_no_password(what: &str, text: &str, passwords: &[&str]) {
    for p in passwords {
        assert!(!text.contains(p), "{what} shows the password {p:?}: {text}");
    }
}

/// The password, from the URL, the environment or a file, shows nowhere
/// (debug logging on); wrong credentials, a dead server, a missing
/// database or table each fail with a clear error and exit status 4.
async fn credentials_and_errors(db: &Db, database: &str) {
    let (dir, cfg) = config("http://127.0.0.1:9");
    let database = db.create_database(database).await;
    create_table(db, &database, "cdr", ADAPTIVE).await;
    insert(db, &database, "cdr", ADAPTIVE, &csv_rows()[..20]).await;
    let secrets = [READER_PASSWORD, READER_PASSWORD_IN_URL];
    let debug = || vec![("CALLHOOK_LOG", "debug,sqlx=trace".to_string())];

    // In the URL (it then also names the cursor's file: never the password).
    let out = deliver(db_args(&cfg, &db.reader_url(&database), &[]), debug()).await;
    assert!(out.contains("read 20 rows"), "{out}");
    assert_no_password("a run", &out, &secrets);
    let (path, saved) = cursor_file(&dir);
    assert_no_password("the cursor", &saved, &secrets);
    assert_no_password("the cursor's name", &path.display().to_string(), &secrets);

    // From the environment and from a file.
    let bare = db.url("reader", &database);
    let out = deliver(
        db_args(&cfg, &bare, &["--dry-run", "--no-cursor"]),
        vec![
            ("CALLHOOK_CDR_DB_PASSWORD", READER_PASSWORD.to_string()),
            ("CALLHOOK_LOG", "debug".into()),
        ],
    )
    .await;
    assert!(out.contains("read 20 rows"), "{out}");
    assert_no_password("a run", &out, &secrets);
    let pw = dir.join("cdr-db.pw");
    std::fs::write(&pw, format!("{READER_PASSWORD}\n")).unwrap();
    let out = deliver(
        db_args(
            &cfg,
            &bare,
            &[
                "--dry-run",
                "--no-cursor",
                "--cdr-db-password-file",
                &pw.display().to_string(),
            ],
        ),
        debug(),
    )
    .await;
    assert!(out.contains("read 20 rows"), "{out}");
    assert_no_password("a run", &out, &secrets);

    // Failures: exit status 4, the URL shown masked.
    let fails = |args: Vec<String>, env: Vec<(&'static str, String)>| async move {
        let o = callhook(args, env).await;
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(4), "{out}{err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: the CDR database "), "{err}");
        format!("{out}{err}")
    };
    let wrong = db.url("reader:Wr0ng-s3cret", &database);
    let err = fails(db_args(&cfg, &wrong, &["--dry-run"]), debug()).await;
    assert_no_password("a failed login", &err, &["Wr0ng-s3cret"]);
    assert!(err.contains("reader:***@127.0.0.1"), "{err}");
    let said = if db.scheme == "mysql" {
        "Access denied for user 'reader'"
    } else {
        "password authentication failed for user \"reader\""
    };
    assert!(err.contains(said), "{err}");

    let err = fails(
        db_args(&cfg, &db.reader_url("no_such_db"), &["--dry-run"]),
        vec![],
    )
    .await;
    assert_no_password("a missing database", &err, &secrets);
    assert!(err.contains("no_such_db"), "{err}");

    let err = fails(
        db_args(
            &cfg,
            &db.reader_url(&database),
            &["--dry-run", "--cdr-table", "cdr_missing"],
        ),
        vec![],
    )
    .await;
    assert_no_password("a missing table", &err, &secrets);
    assert!(
        err.contains("table cdr_missing not found (or it has no columns this user may read)"),
        "{err}"
    );

    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!(
        "{}://reader:{READER_PASSWORD_IN_URL}@127.0.0.1:{port}/{database}",
        db.scheme
    );
    let err = fails(db_args(&cfg, &dead, &["--dry-run"]), debug()).await;
    assert_no_password("a dead server", &err, &secrets);
    assert!(err.contains("connecting: "), "{err}");
    assert!(
        err.contains(&format!("reader:***@127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_credentials_and_errors() {
    let Some(db) = support_db::mariadb() else {
        return;
    };
    credentials_and_errors(db, "creds_my").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_credentials_and_errors() {
    let Some(db) = support_db::postgres() else {
        return;
    };
    credentials_and_errors(db, "creds_pg").await;
}

/// A "server" that accepts and then says nothing, or answers garbage: the
/// backfill fails with a clear error in bounded time (the connection
/// timeout is 20 s), never hangs, never shows the password.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_or_garbage_server_fails_cleanly() {
    use tokio::io::AsyncWriteExt;
    let (_dir, cfg) = config("http://127.0.0.1:9");
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_port = garbage.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = garbage.accept().await {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n\xff\xfe\x00\x01garbage")
                .await;
        }
    });
    // All four at once: the two silent ones take the 20 s timeout each.
    let mut runs = Vec::new();
    for scheme in ["mysql", "postgres"] {
        for (port, said) in [
            (silent_port, "connecting: no answer within 20s"),
            (garbage_port, "connecting: "),
        ] {
            let url = format!("{scheme}://reader:{READER_PASSWORD_IN_URL}@127.0.0.1:{port}/cdr");
            let args = db_args(&cfg, &url, &["--dry-run"]);
            runs.push(async move {
                let started = std::time::Instant::now();
                let o = callhook(args, vec![]).await;
                (scheme, port, said, o, started.elapsed())
            });
        }
    }
    for (scheme, port, said, o, took) in futures::future::join_all(runs).await {
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(4), "{scheme}:{port}: {out}{err}");
        assert!(err.contains(said), "{scheme}:{port}: {err}");
        assert!(err.contains("reader:***@127.0.0.1"), "{err}");
        let all = format!("{out}{err}");
        assert_no_password(
            "a hostile server",
            &all,
            &[READER_PASSWORD, READER_PASSWORD_IN_URL],
        );
        assert!(took < std::time::Duration::from_secs(60), "{took:?}");
    }
}
