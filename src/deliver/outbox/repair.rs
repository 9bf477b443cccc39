//! `callhook outbox check` and `callhook outbox recover`: what is wrong
//! with a damaged outbox file, and a fresh one with everything readable.
//!
//! **Check** reads, never writes (safe while the daemon runs): `PRAGMA
//! integrity_check` (every page, record and index of the file) and a scan
//! that decodes every delivery the way the dispatcher does, listing the
//! rows it could not.
//!
//! **Recover** needs the daemon stopped (it takes the state directory's
//! lock). It copies, id by id range, every delivery it can read into a new
//! database: rows that decode are copied as they are (`inflight` ones
//! become `pending`); rows whose content is damaged are copied lossily as
//! `dead` with the reason, so an operator sees what they were; rows that
//! cannot be read at all are counted as lost. The idempotency keys are
//! copied as far as they can be read. Then the damaged file (with its
//! `-wal` and `-shm`) is renamed `outbox.sqlite3.damaged-<unix time>` and
//! the new one takes its place. A range that fails to read is retried one
//! id at a time, so one bad page costs only the rows on it.

use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use serde::Serialize;

use super::schema::{self, COLS};
use super::tx::row_is_sound;
use super::{OutboxError, Result};
use crate::source::now_epoch;

/// Ids read per range.
const CHUNK: i64 = 256;

/// What `check` found.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CheckReport {
    /// The database file.
    pub path: PathBuf,
    /// `PRAGMA integrity_check` lines (`["ok"]` when the file is sound).
    pub integrity: Vec<String>,
    /// Deliveries read.
    pub rows: u64,
    /// Deliveries that cannot be decoded: (id, what is wrong), at most 100.
    pub undecodable: Vec<(i64, String)>,
    /// Ids that could not be read at all (at most 100).
    pub unreadable: Vec<i64>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.integrity == ["ok"] && self.undecodable.is_empty() && self.unreadable.is_empty()
    }
}

/// What `recover` did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RecoverReport {
    /// Deliveries copied as they were.
    pub copied: u64,
    /// Deliveries whose content was damaged, copied as `dead` with the reason.
    pub damaged: u64,
    /// Ids that could not be read at all.
    pub lost: u64,
    /// Idempotency keys copied.
    pub keys: u64,
    /// Whether reading the keys stopped early at a damaged page.
    pub keys_incomplete: bool,
    /// Stored live calls copied (those lost to the damage get no record
    /// if they ended while callhook was down).
    pub live_calls: u64,
    /// Where the damaged file went.
    pub moved_to: PathBuf,
}

fn open_existing(path: &Path, flags: OpenFlags) -> Result<Connection> {
    if !path.exists() {
        return Err(OutboxError::Db(format!(
            "{} does not exist",
            path.display()
        )));
    }
    let c = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(c)
}

/// Largest delivery id ever used (damage-tolerant).
fn max_id(c: &Connection) -> i64 {
    let seq: Option<i64> = c
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'",
            [],
            |r| r.get(0),
        )
        .optional()
        .ok()
        .flatten();
    let max: Option<i64> = c
        .query_row("SELECT MAX(id) FROM deliveries", [], |r| r.get(0))
        .ok()
        .flatten();
    seq.unwrap_or(0).max(max.unwrap_or(0))
}

/// Walks every delivery id up to the largest, calling `f` with each row
/// (decoded by `read`), and `lost` with ids whose read failed.
fn scan<T>(
    c: &Connection,
    read: impl Fn(&Row<'_>) -> T,
    mut f: impl FnMut(i64, T),
    mut lost: impl FnMut(i64),
) -> Result<()> {
    let top = max_id(c);
    let mut range = c.prepare(&format!(
        "SELECT {COLS} FROM deliveries WHERE id BETWEEN ?1 AND ?2 ORDER BY id"
    ))?;
    let mut one = c.prepare(&format!("SELECT {COLS} FROM deliveries WHERE id = ?1"))?;
    let mut from = 1;
    while from <= top {
        let to = from + CHUNK - 1;
        let mut got = Vec::new();
        let ok = (|| -> rusqlite::Result<()> {
            let mut rows = range.query(params![from, to])?;
            while let Some(r) = rows.next()? {
                got.push((r.get::<_, i64>(0)?, read(r)));
            }
            Ok(())
        })();
        match ok {
            Ok(()) => got.into_iter().for_each(|(id, v)| f(id, v)),
            Err(_) => {
                // A bad page in this range: one id at a time.
                for id in from..=to {
                    match one.query_row(params![id], |r| Ok(read(r))).optional() {
                        Ok(Some(v)) => f(id, v),
                        Ok(None) => {}
                        Err(_) => lost(id),
                    }
                }
            }
        }
        from = to + 1;
    }
    Ok(())
}

/// Checks the outbox in `state_dir` without changing it.
pub fn check(state_dir: &Path) -> Result<CheckReport> {
    let path = schema::db_path(state_dir);
    let c = open_existing(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut report = CheckReport {
        path,
        ..Default::default()
    };
    report.integrity = match c.prepare("PRAGMA integrity_check(100)").and_then(|mut st| {
        st.query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()
    }) {
        Ok(lines) => lines,
        Err(e) => vec![e.to_string()],
    };
    let mut undecodable = Vec::new();
    let mut unreadable = Vec::new();
    let mut rows = 0u64;
    let scanned = scan(
        &c,
        row_is_sound,
        |id, v| {
            rows += 1;
            if let Err(why) = v {
                if undecodable.len() < 100 {
                    undecodable.push((id, why));
                }
            }
        },
        |id| {
            if unreadable.len() < 100 {
                unreadable.push(id);
            }
        },
    );
    if let Err(e) = scanned {
        report
            .integrity
            .push(format!("cannot scan the deliveries: {e}"));
    }
    report.rows = rows;
    report.undecodable = undecodable;
    report.unreadable = unreadable;
    Ok(report)
}

fn lossy(r: &Row<'_>, i: usize) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match r.get_ref(i) {
        Ok(ValueRef::Null) | Err(_) => Value::Null,
        Ok(ValueRef::Integer(n)) => Value::Integer(n),
        Ok(ValueRef::Real(f)) => Value::Real(f),
        Ok(ValueRef::Text(b)) => Value::Text(String::from_utf8_lossy(b).into_owned()),
        Ok(ValueRef::Blob(b)) => Value::Blob(b.to_vec()),
    }
}

/// A row to copy: its columns (lossy) and, when it did not decode, why.
type Copy = (Vec<rusqlite::types::Value>, Option<String>);

/// Copies what is readable of the outbox in `state_dir` into a fresh
/// database and puts it in place; the damaged file is kept beside it. The
/// caller holds the state directory's lock (no daemon running).
pub fn recover(state_dir: &Path) -> Result<RecoverReport> {
    let path = schema::db_path(state_dir);
    let old = open_existing(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let work = state_dir.join(format!(".recover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (new, _) = schema::open_writer(&work, false, false)?;
    let mut report = RecoverReport::default();
    let now = now_epoch();
    new.execute_batch("BEGIN")?;
    {
        let mut insert = new.prepare(&format!(
            "INSERT INTO deliveries ({COLS}, head) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
             ?19, ?20, ?21, ?22, 0)"
        ))?;
        let mut failed: Option<OutboxError> = None;
        let mut copies: Vec<Copy> = Vec::new();
        scan(
            &old,
            |r| {
                let cols: Vec<_> = (0..22).map(|i| lossy(r, i)).collect();
                (cols, row_is_sound(r).err())
            },
            |_, c| copies.push(c),
            |_| report.lost += 1,
        )?;
        for (mut cols, damage) in copies {
            use rusqlite::types::Value;
            match &damage {
                None => {
                    if matches!(cols.get(14), Some(Value::Text(s)) if s == "inflight") {
                        cols[14] = Value::Text("pending".into());
                    }
                    report.copied += 1;
                }
                Some(why) => {
                    cols[14] = Value::Text("dead".into());
                    cols[17] = Value::Text("damaged".into());
                    cols[18] = Value::Text(super::excerpt(&format!(
                        "recovered from a damaged outbox: {why}"
                    )));
                    cols[19] = Value::Real(now);
                    report.damaged += 1;
                }
            }
            // Fill NOT NULL columns a damaged row may lack.
            for (i, fallback) in [
                (1, Value::Text(String::new())),
                (2, Value::Text(String::new())),
                (3, Value::Text(String::new())),
                (4, Value::Text(String::new())),
                (5, Value::Text(String::new())),
                (6, Value::Text("GET".into())),
                (7, Value::Text(String::new())),
                (8, Value::Text("[]".into())),
                (11, Value::Real(now)),
                (13, Value::Real(now)),
                (15, Value::Integer(0)),
                (16, Value::Real(now)),
                (19, Value::Real(now)),
            ] {
                if matches!(cols[i], Value::Null) {
                    cols[i] = fallback;
                }
            }
            if !matches!(cols[15], Value::Integer(_)) {
                cols[15] = Value::Integer(0);
            }
            if let Err(e) = insert.execute(rusqlite::params_from_iter(cols)) {
                failed.get_or_insert(OutboxError::from(e));
            }
        }
        if let Some(e) = failed {
            let _ = new.execute_batch("ROLLBACK");
            return Err(e);
        }
        // Idempotency keys, as far as they read.
        let mut put = new
            .prepare("INSERT OR REPLACE INTO dedupe (target, key, seen_at) VALUES (?1, ?2, ?3)")?;
        let keys = (|| -> rusqlite::Result<Vec<(String, String, f64)>> {
            let mut st = old.prepare("SELECT target, key, seen_at FROM dedupe")?;
            let mut rows = st.query([])?;
            let mut out = Vec::new();
            loop {
                match rows.next() {
                    Ok(Some(r)) => {
                        if let (Ok(t), Ok(k), Ok(s)) = (r.get(0), r.get(1), r.get(2)) {
                            out.push((t, k, s));
                        }
                    }
                    Ok(None) => return Ok(out),
                    Err(_) => {
                        report.keys_incomplete = true;
                        return Ok(out);
                    }
                }
            }
        })()
        .unwrap_or_else(|_| {
            report.keys_incomplete = true;
            Vec::new()
        });
        for (t, k, s) in keys {
            put.execute(params![t, k, s])?;
            report.keys += 1;
        }
        // Live calls, as far as they read (a file from before they were
        // stored has none).
        let mut put = new.prepare(
            "INSERT OR REPLACE INTO live_calls (pbx, session, snapshot, updated_at) \
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        if let Ok(mut st) = old.prepare("SELECT pbx, session, snapshot, updated_at FROM live_calls")
        {
            if let Ok(mut rows) = st.query([]) {
                while let Ok(Some(r)) = rows.next() {
                    let (Ok(p), Ok(s), Ok(b), Ok(u)) = (
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, Vec<u8>>(2),
                        r.get::<_, f64>(3),
                    ) else {
                        continue;
                    };
                    put.execute(params![p, s, b, u])?;
                    report.live_calls += 1;
                }
            }
        }
    }
    // Every chain gets its head back (heads were copied as 0).
    new.execute(
        "UPDATE deliveries SET head = 1 WHERE id IN (SELECT MIN(id) FROM deliveries \
         WHERE status IN ('pending', 'inflight') GROUP BY target, session_id)",
        [],
    )?;
    new.execute_batch("COMMIT")?;
    let _ = new.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    drop(new);
    drop(old);
    // Swap: the damaged file (and its WAL, which must never be applied to
    // the new one) aside, the new one in.
    let stamp = now as i64;
    let aside = PathBuf::from(format!("{}.damaged-{stamp}", path.display()));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to).map_err(|e| OutboxError::Dir {
                path: from.clone(),
                message: format!("cannot move it to {}: {e}", to.display()),
            })?;
        }
    }
    let fresh = schema::db_path(&work);
    std::fs::rename(&fresh, &path).map_err(|e| OutboxError::Dir {
        path: fresh.clone(),
        message: format!("cannot move it to {}: {e}", path.display()),
    })?;
    let _ = std::fs::remove_dir_all(&work);
    report.moved_to = aside;
    Ok(report)
}
