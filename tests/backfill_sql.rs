//! `callhook backfill --cdr-db`, the real binary, against real MariaDB and
//! PostgreSQL servers (tests/support_db) loaded with the rows of a
//! `Master.csv` fixture, in the tables Asterisk's CDR drivers write:
//! `cdr_adaptive_odbc`'s (Asterisk's `ast-db-manage` schema: start, answer,
//! end, linkedid, sequence), `cdr_mysql`'s (FreePBX's `asteriskcdrdb.cdr`:
//! calldate, no answer or end) and `cdr_pgsql`'s (calldate as a
//! `timestamp with time zone`).
//!
//! What is asserted: a table gives the same requests as the CSV file
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

use callhook::backfill::cdr::split_csv;
use support_db::{Db, READER_PASSWORD, READER_PASSWORD_IN_URL};
use support_http::{state_dir, Sink};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// 276 rows, 150 calls (answered, busy, no answer, queues, transfers).
fn fixture() -> PathBuf {
    root().join("tests/fixtures/ami/asterisk-20/load-dev.cdr.csv")
}

/// The columns of `cdr_csv` with loguniqueid, loguserfield, newcdrcolumns.
const CSV: [&str; 21] = [
    "accountcode",
    "src",
    "dst",
    "dcontext",
    "clid",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "start",
    "answer",
    "end",
    "duration",
    "billsec",
    "disposition",
    "amaflags",
    "uniqueid",
    "userfield",
    "peeraccount",
    "linkedid",
    "sequence",
];

/// The fixture's rows, by CSV column name.
type CsvRow = std::collections::BTreeMap<&'static str, String>;

fn csv_rows() -> Vec<CsvRow> {
    std::fs::read_to_string(fixture())
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v = split_csv(l).unwrap();
            assert_eq!(v.len(), CSV.len(), "{l}");
            CSV.iter().copied().zip(v).collect()
        })
        .collect()
}

/// A column's type, spelled per server.
#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Text,
    Int,
    Time,
    /// `timestamp with time zone` (PostgreSQL; DATETIME on MariaDB).
    TimeTz,
}

impl Ty {
    fn sql(self, db: &Db) -> &'static str {
        match (self, db.scheme) {
            (Ty::Text, _) => "VARCHAR(150)",
            (Ty::Int, _) => "INTEGER",
            (Ty::Time, "mysql") | (Ty::TimeTz, "mysql") => "DATETIME",
            (Ty::Time, _) => "TIMESTAMP",
            (Ty::TimeTz, _) => "TIMESTAMP WITH TIME ZONE",
        }
    }
}

/// How a column is filled from a CSV row.
#[derive(Clone, Copy)]
enum Val {
    /// The CSV field; empty is NULL for non-text columns.
    Field(&'static str),
    /// The CSV field; an empty time is MySQL's zero date on MariaDB (as
    /// `cdr_adaptive_odbc` leaves an unanswered call's `answer` there).
    ZeroDate(&'static str),
    /// `amaflags` as the number `cdr_mysql` / `cdr_pgsql` write.
    AmaNumber,
    /// Always this.
    Fixed(&'static str),
}

type Columns = &'static [(&'static str, Ty, Val)];

/// `cdr_adaptive_odbc` on Asterisk's own schema (`contrib/ast-db-manage`).
const ADAPTIVE: Columns = &[
    ("accountcode", Ty::Text, Val::Field("accountcode")),
    ("src", Ty::Text, Val::Field("src")),
    ("dst", Ty::Text, Val::Field("dst")),
    ("dcontext", Ty::Text, Val::Field("dcontext")),
    ("clid", Ty::Text, Val::Field("clid")),
    ("channel", Ty::Text, Val::Field("channel")),
    ("dstchannel", Ty::Text, Val::Field("dstchannel")),
    ("lastapp", Ty::Text, Val::Field("lastapp")),
    ("lastdata", Ty::Text, Val::Field("lastdata")),
    ("start", Ty::Time, Val::Field("start")),
    ("answer", Ty::Time, Val::ZeroDate("answer")),
    ("end", Ty::Time, Val::Field("end")),
    ("duration", Ty::Int, Val::Field("duration")),
    ("billsec", Ty::Int, Val::Field("billsec")),
    ("disposition", Ty::Text, Val::Field("disposition")),
    ("amaflags", Ty::Text, Val::Field("amaflags")),
    ("userfield", Ty::Text, Val::Field("userfield")),
    ("uniqueid", Ty::Text, Val::Field("uniqueid")),
    ("linkedid", Ty::Text, Val::Field("linkedid")),
    ("peeraccount", Ty::Text, Val::Field("peeraccount")),
    ("sequence", Ty::Int, Val::Field("sequence")),
];

/// `cdr_mysql` on FreePBX's `asteriskcdrdb.cdr` (calldate; linkedid and
/// sequence as FreePBX 14+ has them).
const CDR_MYSQL: Columns = &[
    ("calldate", Ty::Time, Val::Field("start")),
    ("clid", Ty::Text, Val::Field("clid")),
    ("src", Ty::Text, Val::Field("src")),
    ("dst", Ty::Text, Val::Field("dst")),
    ("dcontext", Ty::Text, Val::Field("dcontext")),
    ("channel", Ty::Text, Val::Field("channel")),
    ("dstchannel", Ty::Text, Val::Field("dstchannel")),
    ("lastapp", Ty::Text, Val::Field("lastapp")),
    ("lastdata", Ty::Text, Val::Field("lastdata")),
    ("duration", Ty::Int, Val::Field("duration")),
    ("billsec", Ty::Int, Val::Field("billsec")),
    ("disposition", Ty::Text, Val::Field("disposition")),
    ("amaflags", Ty::Int, Val::AmaNumber),
    ("accountcode", Ty::Text, Val::Field("accountcode")),
    ("uniqueid", Ty::Text, Val::Field("uniqueid")),
    ("userfield", Ty::Text, Val::Field("userfield")),
    ("did", Ty::Text, Val::Fixed("")),
    ("recordingfile", Ty::Text, Val::Fixed("")),
    ("linkedid", Ty::Text, Val::Field("linkedid")),
    ("sequence", Ty::Int, Val::Field("sequence")),
];

/// `cdr_pgsql`'s table (its documented schema, with the newer columns).
const CDR_PGSQL: Columns = &[
    ("calldate", Ty::TimeTz, Val::Field("start")),
    ("clid", Ty::Text, Val::Field("clid")),
    ("src", Ty::Text, Val::Field("src")),
    ("dst", Ty::Text, Val::Field("dst")),
    ("dcontext", Ty::Text, Val::Field("dcontext")),
    ("channel", Ty::Text, Val::Field("channel")),
    ("dstchannel", Ty::Text, Val::Field("dstchannel")),
    ("lastapp", Ty::Text, Val::Field("lastapp")),
    ("lastdata", Ty::Text, Val::Field("lastdata")),
    ("duration", Ty::Int, Val::Field("duration")),
    ("billsec", Ty::Int, Val::Field("billsec")),
    ("disposition", Ty::Text, Val::Field("disposition")),
    ("amaflags", Ty::Int, Val::AmaNumber),
    ("accountcode", Ty::Text, Val::Field("accountcode")),
    ("uniqueid", Ty::Text, Val::Field("uniqueid")),
    ("userfield", Ty::Text, Val::Field("userfield")),
    ("peeraccount", Ty::Text, Val::Field("peeraccount")),
    ("linkedid", Ty::Text, Val::Field("linkedid")),
    ("sequence", Ty::Int, Val::Field("sequence")),
];

/// A site's own table: other column names (mapped with --cdr-column) and
/// `duration` as text, so that a row can hold a bad one.
const RENAMED: Columns = &[
    ("source", Ty::Text, Val::Field("src")),
    ("destination", Ty::Text, Val::Field("dst")),
    ("dcontext", Ty::Text, Val::Field("dcontext")),
    ("callerid", Ty::Text, Val::Field("clid")),
    ("chan", Ty::Text, Val::Field("channel")),
    ("dstchannel", Ty::Text, Val::Field("dstchannel")),
    ("lastapp", Ty::Text, Val::Field("lastapp")),
    ("lastdata", Ty::Text, Val::Field("lastdata")),
    ("began", Ty::Time, Val::Field("start")),
    ("answer", Ty::Time, Val::Field("answer")),
    ("end", Ty::Time, Val::Field("end")),
    ("duration", Ty::Text, Val::Field("duration")),
    ("billsec", Ty::Int, Val::Field("billsec")),
    ("disposition", Ty::Text, Val::Field("disposition")),
    ("uniqueid", Ty::Text, Val::Field("uniqueid")),
    ("userfield", Ty::Text, Val::Field("userfield")),
    ("call_id", Ty::Text, Val::Field("linkedid")),
    ("sequence", Ty::Int, Val::Field("sequence")),
];

fn quote(db: &Db, name: &str) -> String {
    if db.scheme == "mysql" {
        format!("`{name}`")
    } else {
        format!("\"{name}\"")
    }
}

/// Creates `table` in `database` with `columns` (and the read grant).
async fn create_table(db: &Db, database: &str, table: &str, columns: Columns) {
    let cols: Vec<String> = columns
        .iter()
        .map(|(n, t, _)| format!("{} {}", quote(db, n), t.sql(db)))
        .collect();
    let mut sql = vec![format!("CREATE TABLE {table} ({})", cols.join(", "))];
    if db.scheme == "postgres" {
        sql.push(format!("GRANT SELECT ON {table} TO reader"));
    }
    db.admin_exec(database, &sql).await;
}

/// Inserts `rows` into `table`, as the CDR driver would.
async fn insert(db: &Db, database: &str, table: &str, columns: Columns, rows: &[CsvRow]) {
    use sqlx::Connection;
    let names: Vec<String> = columns.iter().map(|(n, _, _)| quote(db, n)).collect();
    let value = |row: &CsvRow, t: Ty, v: Val| -> Option<String> {
        let s = match v {
            Val::Field(f) | Val::ZeroDate(f) => row[f].clone(),
            Val::AmaNumber => match row["amaflags"].as_str() {
                "OMIT" => "1",
                "BILLING" => "2",
                _ => "3",
            }
            .to_string(),
            Val::Fixed(s) => s.to_string(),
        };
        match v {
            Val::ZeroDate(_) if s.is_empty() && db.scheme == "mysql" => {
                Some("0000-00-00 00:00:00".into())
            }
            _ if s.is_empty() && t != Ty::Text => None,
            _ => Some(s),
        }
    };
    let params: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, t, _))| {
            if db.scheme == "mysql" {
                "?".to_string()
            } else {
                format!("CAST(${} AS {})", i + 1, t.sql(db))
            }
        })
        .collect();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        names.join(", "),
        params.join(", ")
    );
    macro_rules! load {
        ($conn:ty) => {{
            let mut c = <$conn>::connect(&db.admin_url(database)).await.unwrap();
            let mut tx = c.begin().await.unwrap();
            for row in rows {
                let mut q = sqlx::query(&sql);
                for (_, t, v) in columns {
                    q = q.bind(value(row, *t, *v));
                }
                q.execute(&mut *tx)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            tx.commit().await.unwrap();
            let _ = c.close().await;
        }};
    }
    if db.scheme == "mysql" {
        load!(sqlx::MySqlConnection)
    } else {
        load!(sqlx::PgConnection)
    }
}

/// A config whose phonecalls rule set points at the sink, in a fresh state
/// directory.
fn config(sink_url: &str) -> (PathBuf, PathBuf) {
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

async fn csv_dry_run(cfg: &Path) -> Vec<String> {
    let o = callhook(
        strings(&[
            "backfill",
            "--cdr",
            &fixture().display().to_string(),
            "--config",
            &cfg.display().to_string(),
            "--dry-run",
            "--format",
            "jsonl",
        ]),
        vec![],
    )
    .await;
    let r = requests(&o);
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
    let from_csv = csv_dry_run(&cfg).await;
    let rows = csv_rows();
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
        let (_, err) = text(&o);
        assert!(
            err.contains("read 276 rows: 150 calls; skipped 0 rows"),
            "{name}: {err}"
        );
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
    let _ = std::fs::remove_dir_all(dir);
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
