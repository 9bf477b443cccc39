//! Streaming the CDR table: a thread with its own small runtime runs the
//! query and hands parsed rows over a bounded channel, so the backfill
//! itself stays synchronous and memory stays bounded (the channel holds at
//! most [`QUEUE`] rows; the driver reads the result from the socket as it
//! is consumed).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Duration;

use futures::StreamExt;
use sqlx::{ConnectOptions, Connection, Row};

use super::connect::{DbKind, DbUrl};
use super::schema::{columns_query, select, Mapping, TableColumn, TableName};
use crate::backfill::cdr::{to_row, Columns};
use crate::backfill::{BackfillError, CdrRow, RowError, RowSource};

/// Rows parsed ahead of the backfill at most.
const QUEUE: usize = 512;
/// Longest wait for the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the next row (a server that stops answering).
const ROW_TIMEOUT: Duration = Duration::from_secs(120);

/// What to read.
#[derive(Debug, Clone)]
pub(super) struct ReadSpec {
    pub url: DbUrl,
    pub table: TableName,
    pub overrides: Vec<(String, String)>,
    /// The cursor to start at: start text and uniqueid (inclusive).
    pub from_start: String,
    pub from_uniqueid: String,
}

// Nearly every message is a row: boxing it would allocate once per row.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Ready(Mapping),
    Row(Result<CdrRow, RowError>),
    End,
    Failed(String),
}

/// The rows of a CDR table, from a cursor on, as a [`RowSource`].
pub struct SqlRows {
    rx: Receiver<Msg>,
    mapping: Mapping,
    rows: u64,
    shown: String,
    ended: bool,
}

impl SqlRows {
    /// Connects, finds the columns and starts reading (in the background).
    pub(super) fn open(spec: ReadSpec) -> Result<SqlRows, BackfillError> {
        let shown = format!("{} table {}", spec.url.shown(), spec.table);
        let (tx, rx) = sync_channel(QUEUE);
        let thread_spec = spec.clone();
        std::thread::Builder::new()
            .name("cdr-db".into())
            .spawn(move || read(thread_spec, tx))
            .map_err(|e| BackfillError::Database {
                db: shown.clone(),
                message: format!("starting the reader: {e}"),
            })?;
        match rx.recv() {
            Ok(Msg::Ready(mapping)) => Ok(SqlRows {
                rx,
                mapping,
                rows: 0,
                shown,
                ended: false,
            }),
            Ok(Msg::Failed(message)) => Err(BackfillError::Database { db: shown, message }),
            _ => Err(BackfillError::Database {
                db: shown,
                message: "the reader stopped".into(),
            }),
        }
    }

    /// Which column holds which field.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }
}

impl RowSource for SqlRows {
    fn next_row(&mut self) -> Result<Option<Result<CdrRow, RowError>>, BackfillError> {
        if self.ended {
            return Ok(None);
        }
        match self.rx.recv() {
            Ok(Msg::Row(r)) => {
                self.rows += 1;
                Ok(Some(r))
            }
            Ok(Msg::End) => {
                self.ended = true;
                Ok(None)
            }
            Ok(Msg::Failed(message)) => Err(BackfillError::Database {
                db: self.shown.clone(),
                message: format!("after {} rows: {message}", self.rows),
            }),
            Ok(Msg::Ready(_)) | Err(_) => Err(BackfillError::Database {
                db: self.shown.clone(),
                message: format!("the reader stopped after {} rows", self.rows),
            }),
        }
    }

    fn position(&self) -> u64 {
        self.rows
    }

    fn counts_bytes(&self) -> bool {
        false
    }
}

/// The reader thread.
fn read(spec: ReadSpec, tx: SyncSender<Msg>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Msg::Failed(format!("starting the runtime: {e}")));
            return;
        }
    };
    let url = spec.url.clone();
    let result = rt.block_on(async {
        match spec.url.kind() {
            DbKind::MySql => {
                let opts = spec.url.mysql()?;
                let conn = connect(opts.connect()).await?;
                read_with::<sqlx::MySql>(conn, &spec, &tx).await
            }
            DbKind::Postgres => {
                let opts = spec.url.postgres()?;
                let conn = connect(opts.connect()).await?;
                read_with::<sqlx::Postgres>(conn, &spec, &tx).await
            }
        }
    });
    match result {
        Ok(()) => {
            let _ = tx.send(Msg::End);
        }
        Err(e) => {
            let _ = tx.send(Msg::Failed(url.mask(&e)));
        }
    }
}

async fn connect<C, F>(f: F) -> Result<C, String>
where
    F: std::future::Future<Output = Result<C, sqlx::Error>>,
{
    match tokio::time::timeout(CONNECT_TIMEOUT, f).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connecting: {e}")),
        Err(_) => Err(format!(
            "connecting: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Runs `sql` with text parameters and calls `each` with every row's
/// values as text (`Err` for a value that cannot be read as text); stops
/// when `each` returns false.
async fn text_rows<DB>(
    conn: &mut DB::Connection,
    sql: &str,
    params: &[Option<String>],
    mut each: impl FnMut(Vec<Result<Option<String>, String>>) -> bool,
) -> Result<(), String>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> Option<String>: sqlx::Decode<'r, DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let mut q = sqlx::query::<DB>(sql);
    for p in params {
        q = q.bind(p.clone());
    }
    let mut stream = q.fetch(&mut *conn);
    loop {
        let next = match tokio::time::timeout(ROW_TIMEOUT, stream.next()).await {
            Ok(n) => n,
            Err(_) => {
                return Err(format!(
                    "the server sent nothing for {}s",
                    ROW_TIMEOUT.as_secs()
                ))
            }
        };
        let Some(row) = next else { return Ok(()) };
        let row = row.map_err(|e| e.to_string())?;
        let values = (0..row.len())
            .map(|i| {
                row.try_get::<Option<String>, usize>(i)
                    .map_err(|e| e.to_string())
            })
            .collect();
        if !each(values) {
            return Ok(());
        }
    }
}

async fn read_with<DB>(
    mut conn: DB::Connection,
    spec: &ReadSpec,
    tx: &SyncSender<Msg>,
) -> Result<(), String>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> Option<String>: sqlx::Decode<'r, DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let kind = spec.url.kind();
    let mut have = Vec::new();
    text_rows::<DB>(
        &mut conn,
        columns_query(kind),
        &[spec.table.schema.clone(), Some(spec.table.table.clone())],
        |v| {
            let mut v = v.into_iter().map(|x| x.ok().flatten().unwrap_or_default());
            let name = v.next().unwrap_or_default();
            let data_type = v.next().unwrap_or_default();
            have.push(TableColumn { name, data_type });
            true
        },
    )
    .await
    .map_err(|e| format!("listing the columns of {}: {e}", spec.table))?;
    let mapping = Mapping::new(&spec.table, &have, &spec.overrides)?;
    let fields = mapping.fields();
    let Some(columns) = Columns::from_header(&fields) else {
        return Err("the table lacks src, dst, channel or a start column".into());
    };
    let sql = select(kind, &spec.table, &mapping);
    let has_uid = mapping.column("uniqueid").is_some();
    if tx.send(Msg::Ready(mapping)).is_err() {
        return Ok(());
    }
    let mut params = vec![Some(spec.from_start.clone())];
    if has_uid {
        if kind == DbKind::MySql {
            params.push(Some(spec.from_start.clone()));
        }
        params.push(Some(spec.from_uniqueid.clone()));
    }
    let mut line = 0u64;
    let mut gone = false;
    text_rows::<DB>(&mut conn, &sql, &params, |values| {
        line += 1;
        let row = parse(line, &fields, values, &columns);
        if tx.send(Msg::Row(row)).is_err() {
            gone = true;
            return false;
        }
        true
    })
    .await
    .map_err(|e| format!("reading {}: {e}", spec.table))?;
    if !gone {
        let _ = conn.close().await;
    }
    Ok(())
}

/// One table row's text values → a row, as a CSV line would give it.
fn parse(
    line: u64,
    fields: &[String],
    values: Vec<Result<Option<String>, String>>,
    columns: &Columns,
) -> Result<CdrRow, RowError> {
    let mut text = Vec::with_capacity(values.len());
    let mut bad = None;
    for (f, v) in fields.iter().zip(values) {
        match v {
            Ok(v) => text.push(normalize(f, v.unwrap_or_default())),
            Err(e) => {
                bad.get_or_insert_with(|| format!("column {f}: {e}"));
                text.push(String::new());
            }
        }
    }
    let get = |name: &str| {
        fields
            .iter()
            .position(|f| f == name)
            .and_then(|i| text.get(i))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let key = match (get("uniqueid"), get("start")) {
        (Some(u), Some(s)) => format!("uniqueid {u}, start {s}"),
        (Some(u), None) => format!("uniqueid {u}"),
        (None, s) => format!(
            "start {}, channel {}",
            s.unwrap_or_else(|| "(none)".into()),
            get("channel").unwrap_or_else(|| "(none)".into())
        ),
    };
    if let Some(message) = bad {
        return Err(RowError {
            line,
            message,
            key: Some(key),
        });
    }
    to_row(line, text, Some(columns)).map_err(|mut e| {
        e.key = Some(key);
        e
    })
}

/// Database spellings → the CSV's: MySQL's zero date is no date, numeric
/// durations lose their fraction, numeric dispositions (an integer
/// column, as `cdr_mysql`/`cdr_pgsql` write there) become names.
fn normalize(field: &str, v: String) -> String {
    match field {
        "start" | "answer" | "end" if v.trim_start().starts_with("0000-00-00") => String::new(),
        "duration" | "billsec" => match v.trim().split_once('.') {
            Some((whole, frac))
                if frac.bytes().all(|b| b.is_ascii_digit())
                    && !whole.is_empty()
                    && whole
                        .trim_start_matches('-')
                        .bytes()
                        .all(|b| b.is_ascii_digit()) =>
            {
                whole.to_string()
            }
            _ => v,
        },
        "disposition" => match v.trim() {
            "0" | "1" => "NO ANSWER".into(),
            "2" => "FAILED".into(),
            "4" => "BUSY".into(),
            "8" => "ANSWERED".into(),
            "16" => "CONGESTION".into(),
            _ => v,
        },
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_spellings() {
        assert_eq!(normalize("answer", "0000-00-00 00:00:00".into()), "");
        assert_eq!(normalize("duration", "12.500000".into()), "12");
        assert_eq!(normalize("billsec", "7".into()), "7");
        assert_eq!(normalize("billsec", "x.5".into()), "x.5");
        assert_eq!(normalize("disposition", "8".into()), "ANSWERED");
        assert_eq!(normalize("disposition", "BUSY".into()), "BUSY");
        assert_eq!(normalize("src", "0000-00-00".into()), "0000-00-00");
    }

    #[test]
    fn bad_rows_name_their_key() {
        let fields: Vec<String> = ["src", "dst", "channel", "start", "duration", "uniqueid"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let columns = Columns::from_header(&fields).unwrap();
        let v = |d: &str| {
            vec![
                Ok(Some("1001".into())),
                Ok(Some("1002".into())),
                Ok(Some("SIP/1001-1".into())),
                Ok(Some("2026-11-22 19:10:26".into())),
                Ok(Some(d.to_string())),
                Ok(Some("1795374626.0".into())),
            ]
        };
        let r = parse(1, &fields, v("5"), &columns).unwrap();
        assert_eq!(r.duration, 5);
        let e = parse(2, &fields, v("five"), &columns).unwrap_err();
        assert_eq!(
            e.to_string(),
            "row uniqueid 1795374626.0, start 2026-11-22 19:10:26: duration \"five\" is not a whole number"
        );
        let mut bad = v("5");
        bad[1] = Err("invalid utf-8".into());
        let e = parse(3, &fields, bad, &columns).unwrap_err();
        assert!(e.to_string().contains("column dst: invalid utf-8"), "{e}");
    }
}
