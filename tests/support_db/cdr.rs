//! Asterisk's CDR tables, as its drivers write them, filled with the rows
//! of a `Master.csv` fixture: `cdr_adaptive_odbc`'s (Asterisk's
//! `ast-db-manage` schema), `cdr_mysql`'s (FreePBX's `asteriskcdrdb.cdr`),
//! `cdr_pgsql`'s, and a site's own with other names.

use std::path::{Path, PathBuf};

use callhook::backfill::cdr::split_csv;

use super::Db;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// 276 rows, 150 calls (answered, busy, no answer, queues, transfers).
pub fn fixture() -> PathBuf {
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
pub type CsvRow = std::collections::BTreeMap<&'static str, String>;

/// Every `*.cdr.csv` fixture (AMI captures of Asterisk 11 and 20, chan_sip
/// and PJSIP, Originate outcomes, the FastAGI sessions), one after the
/// other as rotated files concatenated: 63 files, 376 rows, 211 calls.
pub fn all_fixtures() -> String {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.to_str().is_some_and(|s| s.ends_with(".cdr.csv")) {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("tests/fixtures"), &mut files);
    files.sort();
    assert!(files.len() > 50, "{files:?}");
    let mut text = String::new();
    for f in files {
        text.push_str(&std::fs::read_to_string(f).unwrap());
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// The rows of `text` (a `Master.csv`), by column name.
pub fn rows_of(text: &str) -> Vec<CsvRow> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v = split_csv(l).unwrap();
            assert_eq!(v.len(), CSV.len(), "{l}");
            CSV.iter().copied().zip(v).collect()
        })
        .collect()
}

/// The rows of [`fixture`].
pub fn csv_rows() -> Vec<CsvRow> {
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
pub enum Ty {
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
pub enum Val {
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

pub type Columns = &'static [(&'static str, Ty, Val)];

/// `cdr_adaptive_odbc` on Asterisk's own schema (`contrib/ast-db-manage`).
pub const ADAPTIVE: Columns = &[
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
pub const CDR_MYSQL: Columns = &[
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
pub const CDR_PGSQL: Columns = &[
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
pub const RENAMED: Columns = &[
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
pub async fn create_table(db: &Db, database: &str, table: &str, columns: Columns) {
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
pub async fn insert(db: &Db, database: &str, table: &str, columns: Columns, rows: &[CsvRow]) {
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
