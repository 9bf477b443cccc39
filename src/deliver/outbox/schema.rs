//! The file: permissions, schema and its migrations, the integrity check
//! at open.
//!
//! **Versions** (`PRAGMA user_version`): 1 (first release); 2 adds
//! `refused` (why a request can never be sent: stored dead at once) and
//! `secrets` (where the dispatcher splices environment secrets back in at
//! send time, see `deliver::secret`; NULL on rows written by version 1,
//! which are concealed by `Outbox::conceal_legacy` when the daemon
//! starts). A version-1 file is migrated in place; a newer one is refused.
//!
//! **Permissions.** The state directory is made `0700` and the database
//! files (`outbox.sqlite3`, its `-wal` and `-shm`, which SQLite creates with
//! the database's mode) `0600`, existing ones included: deliveries carry
//! call data and, until concealed, credentials.
//!
//! **Integrity.** [`open_writer`] with `check` runs `PRAGMA quick_check`
//! (every page and record of the file, not index-to-table consistency) and
//! refuses a damaged file with [`OutboxError::Damaged`], which names the
//! recovery command, instead of letting the dispatcher fail every poll.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode};

use super::{OutboxError, Result, SCHEMA_VERSION};
use crate::source::now_epoch;

/// The database file in a state directory.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("outbox.sqlite3")
}

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    target           TEXT NOT NULL,
    rule             TEXT NOT NULL,
    session_id       TEXT NOT NULL,
    pbx              TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    method           TEXT NOT NULL,
    url              TEXT NOT NULL,
    headers          TEXT NOT NULL,
    body             BLOB,
    idempotency_key  TEXT,
    created_at       REAL NOT NULL,
    expires_at       REAL,
    enqueued_at      REAL NOT NULL,
    status           TEXT NOT NULL,
    head             INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_status      TEXT,
    last_error       TEXT,
    updated_at       REAL NOT NULL,
    refused          TEXT,
    secrets          TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_ready
    ON deliveries (target, next_attempt_at) WHERE status = 'pending' AND head = 1;
CREATE INDEX IF NOT EXISTS deliveries_chain
    ON deliveries (target, session_id, id) WHERE status IN ('pending', 'inflight');
CREATE INDEX IF NOT EXISTS deliveries_event
    ON deliveries (target, event_id) WHERE status IN ('pending', 'inflight');
CREATE INDEX IF NOT EXISTS deliveries_expiry
    ON deliveries (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status);
CREATE INDEX IF NOT EXISTS deliveries_key
    ON deliveries (target, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS dedupe (
    target   TEXT NOT NULL,
    key      TEXT NOT NULL,
    seen_at  REAL NOT NULL,
    PRIMARY KEY (target, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_seen ON dedupe (seen_at);
CREATE TABLE IF NOT EXISTS live_calls (
    pbx        TEXT NOT NULL,
    session    TEXT NOT NULL,
    snapshot   BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (pbx, session)
) WITHOUT ROWID;
"#;

/// The columns every row read selects, as a literal (for `concat!`: the
/// writer's hot statements are `&'static str`, not formatted per call).
macro_rules! cols_sql {
    () => {
        "id, target, rule, session_id, pbx, event_id, method, url, headers, body, \
         idempotency_key, created_at, expires_at, enqueued_at, status, attempts, next_attempt_at, \
         last_status, last_error, updated_at, refused, secrets"
    };
}
pub(super) use cols_sql;

pub(super) const COLS: &str = cols_sql!();

/// Columns added after version 1, with their type.
const ADDED: [(&str, &str); 2] = [("refused", "TEXT"), ("secrets", "TEXT")];

/// Whether an SQLite error means the file itself is damaged.
pub(super) fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// An error at open: damage is [`OutboxError::Damaged`].
fn open_error(path: &Path, e: rusqlite::Error) -> OutboxError {
    if is_damage(&e) {
        OutboxError::Damaged {
            path: path.to_path_buf(),
            details: e.to_string(),
        }
    } else {
        OutboxError::from(e)
    }
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)?;
    if meta.permissions().mode() & 0o777 & !mode == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(true)
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> std::io::Result<bool> {
    Ok(false)
}

/// Creates the state directory (0700) and tightens it and the database
/// files if group or others could read them.
pub fn secure_state_dir(state_dir: &Path) -> Result<()> {
    let dir_err = |e: std::io::Error| OutboxError::Dir {
        path: state_dir.to_path_buf(),
        message: e.to_string(),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(dir_err)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(state_dir).map_err(dir_err)?;
    if restrict(state_dir, 0o700).map_err(dir_err)? {
        tracing::warn!(target: "callhook::deliver", dir = %state_dir.display(), "state directory was readable by others: now 0700");
    }
    let db = db_path(state_dir);
    if !db.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&db)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(dir_err(e)),
            }
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{suffix}", db.display()));
        match restrict(&f, 0o600) {
            Ok(true) => {
                tracing::warn!(target: "callhook::deliver", file = %f.display(), "outbox file was readable by others: now 0600")
            }
            Ok(false) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(dir_err(e)),
        }
    }
    Ok(())
}

/// `PRAGMA quick_check`: `Ok` or what is wrong (first problems).
pub fn quick_check(conn: &Connection) -> std::result::Result<(), String> {
    let run = || -> rusqlite::Result<Vec<String>> {
        let mut st = conn.prepare("PRAGMA quick_check(10)")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    };
    match run() {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => Ok(()),
        Ok(lines) => Err(lines.join("; ")),
        Err(e) => Err(e.to_string()),
    }
}

/// Opens the write connection: WAL, `synchronous=FULL`, no automatic
/// checkpoints, statement journals in memory, `secure_delete` (deleted or
/// rewritten content is zeroed, so a concealed secret does not linger in
/// free pages), the schema at the
/// current version. With `check`, a damaged file is refused. With
/// `recover`, rows left `inflight` by a crashed run go back to `pending`
/// (returns how many).
pub(super) fn open_writer(
    state_dir: &Path,
    check: bool,
    recover: bool,
) -> Result<(Connection, usize)> {
    secure_state_dir(state_dir)?;
    let path = db_path(state_dir);
    let err = |e| open_error(&path, e);
    let conn = Connection::open(&path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OutboxError::Db(format!(
            "cannot switch {} to WAL mode (got {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    // Checkpoints (copying the WAL into the database, with an fsync)
    // run on their own thread, not in the writer's commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(err)?;
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(err)?;
    // Savepoints keep the pages they change in a statement journal: in
    // memory, not in a temporary file that every savepoint past 64 KiB
    // writes to (the writer's savepoints are one group's worth).
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(err)?;
    // Every statement of the writer is prepared once and kept (rusqlite
    // keeps 16 by default: fewer than the writer runs, so it would parse
    // some again on every group).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    if check {
        if let Err(details) = quick_check(&conn) {
            return Err(OutboxError::Damaged { path, details });
        }
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version > SCHEMA_VERSION {
        return Err(OutboxError::Schema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    let init = (|| -> rusqlite::Result<usize> {
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        if version < SCHEMA_VERSION {
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        if !recover {
            return Ok(0);
        }
        conn.execute(
            "UPDATE deliveries SET status = 'pending', updated_at = ?1 WHERE status = 'inflight'",
            params![now_epoch()],
        )
    })();
    match init {
        Ok(n) => {
            conn.execute_batch("COMMIT").map_err(err)?;
            Ok((conn, n))
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(err(e))
        }
    }
}

/// Adds the columns a version-1 table lacks.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let have: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('deliveries')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (col, ty) in ADDED {
        if !have.iter().any(|h| h.eq_ignore_ascii_case(col)) {
            conn.execute_batch(&format!("ALTER TABLE deliveries ADD COLUMN {col} {ty}"))?;
        }
    }
    Ok(())
}

/// Prepared statements the writer keeps.
const STATEMENT_CACHE: usize = 128;

/// A waiting row (`pending` or `inflight`), as a literal for `concat!`.
macro_rules! waiting_sql {
    () => {
        "status IN ('pending', 'inflight')"
    };
}
pub(super) use waiting_sql;

pub(super) const WAITING: &str = waiting_sql!();
