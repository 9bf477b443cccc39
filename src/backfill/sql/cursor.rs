//! The saved cursor: where the next run of a CDR table starts, and which
//! calls after that point were already handed out.
//!
//! One JSON file per server, database and table in
//! `STATE_DIR/cdr-cursors/` (named without credentials), written
//! atomically (temporary file, fsync, rename) and only after every request
//! of the run is committed to the outbox: a run that fails or is killed
//! leaves the previous cursor, and the next run reads those rows again
//! (the outbox's idempotency keys keep what was already enqueued from being
//! sent twice).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backfill::times::{parse_local, LocalTime};

/// A row's place in the reading order: start (the table's wall-clock
/// text), then uniqueid. Only the database compares uniqueids (its
/// collation decides their order); callhook compares starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowKey {
    /// `YYYY-MM-DD HH:MM:SS[.ffffff]`.
    pub start: String,
    /// The row's uniqueid (empty when the table has none).
    pub uniqueid: String,
}

impl RowKey {
    /// The key at wall-clock time `t`, before every uniqueid.
    pub fn at(t: LocalTime) -> Self {
        RowKey {
            start: local_text(t),
            uniqueid: String::new(),
        }
    }

    /// The start as a time (`None` for a key that is not one).
    pub fn time(&self) -> Option<LocalTime> {
        parse_local(&self.start)
    }
}

/// `YYYY-MM-DD HH:MM:SS`, with `.ffffff` when `t` has a fraction.
pub fn local_text(t: LocalTime) -> String {
    let micros = (t.0 * 1e6).round() as i64;
    let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let Ok(ts) = jiff::Timestamp::from_second(secs) else {
        return "1970-01-01 00:00:00".into();
    };
    let dt = jiff::tz::TimeZone::UTC.to_datetime(ts);
    let base = dt.strftime("%Y-%m-%d %H:%M:%S").to_string();
    if frac == 0 {
        base
    } else {
        format!("{base}.{frac:06}")
    }
}

/// The file's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Format version (1).
    pub version: u32,
    /// The table, as shown in messages (no credentials).
    pub source: String,
    /// The next run reads from here (inclusive).
    pub from: RowKey,
    /// The newest `end` read so far (the table's own clock).
    pub newest_end: Option<String>,
    /// Calls handed out whose first row is at or after `from`: their
    /// group key (see `backfill::group::group_key`) → that first row.
    pub done: BTreeMap<String, RowKey>,
}

/// Why the cursor could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct CursorError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

impl Cursor {
    /// Reads `path`; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Cursor>, CursorError> {
        let err = |message: String| CursorError {
            path: path.to_path_buf(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e.to_string())),
        };
        let c: Cursor =
            serde_json::from_str(&text).map_err(|e| err(format!("not a cursor file: {e}")))?;
        if c.version != 1 {
            return Err(err(format!(
                "cursor format {} (this callhook reads 1)",
                c.version
            )));
        }
        if c.from.time().is_none() {
            return Err(err(format!(
                "cursor start {:?} is not a time",
                c.from.start
            )));
        }
        Ok(Some(c))
    }

    /// Writes `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), CursorError> {
        let err = |message: String| CursorError {
            path: path.to_path_buf(),
            message,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| err(format!("creating the directory: {e}")))?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| err(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(|e| err(e.to_string()))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_text() {
        let t = parse_local("2026-11-22 19:10:26.000250").unwrap();
        assert_eq!(local_text(t), "2026-11-22 19:10:26.000250");
        assert_eq!(
            local_text(parse_local("2026-11-22 19:10:26").unwrap()),
            "2026-11-22 19:10:26"
        );
        assert_eq!(RowKey::at(t).time(), Some(t));
    }

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::Builder::new()
            .prefix("callhook-cursor-")
            .tempdir()
            .unwrap();
        // A directory that does not exist yet: saving creates it.
        let path = dir.path().join("state").join("x.json");
        assert!(Cursor::load(&path).unwrap().is_none());
        let c = Cursor {
            version: 1,
            source: "mysql://cdr:***@db/asteriskcdrdb table cdr".into(),
            from: RowKey::at(LocalTime(1795374626.0)),
            newest_end: Some("2026-11-22 19:10:31".into()),
            done: BTreeMap::from([("l:1".to_string(), RowKey::at(LocalTime(1795374627.0)))]),
        };
        c.save(&path).unwrap();
        assert_eq!(Cursor::load(&path).unwrap(), Some(c));
        std::fs::write(&path, "{broken").unwrap();
        assert!(Cursor::load(&path).is_err());
    }
}
