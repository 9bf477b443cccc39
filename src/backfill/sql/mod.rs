//! CDR backfill from a database: the `cdr` table that `cdr_mysql`,
//! `cdr_adaptive_odbc` (MySQL/MariaDB, PostgreSQL) or `cdr_pgsql` fill.
//! Another [`RowSource`](super::RowSource) for the same pipeline as
//! `Master.csv`: the same grouping, records, rules, outbox and idempotency
//! keys, so a call backfilled from the CSV file and from the table is sent
//! once.
//!
//! ```text
//! cdr table ─▶ reader thread ─▶ bounded channel ─▶ Grouper ─▶ record::build ─▶ rules ─▶ outbox
//!  (one query, rows       (text → CdrRow as       (skips calls      (holds back calls
//!   in (start, uniqueid)   a CSV line; bad rows    handed out by     that may still be
//!   order, streamed)       reported by key)        earlier runs)     in progress)
//! ```
//!
//! [`connect`] parses the URL and keeps the password out of every message;
//! [`schema`] maps the table's columns to the CDR fields and builds the
//! query; [`reader`] streams it; [`cursor`] is the saved position.
//!
//! # Incremental runs
//!
//! Asterisk inserts a row when its channel hangs up, so a row's `start`
//! (`calldate`) can be hours older than rows already in the table: a call
//! in progress is invisible until it ends. The cursor therefore never
//! passes the *horizon*, the newest `end` in the table minus the grouping
//! window (`--group-window`, `calls.max_age`: no call lasts longer), nor
//! the first row of a call held back as in progress. Each run reads from
//! the saved cursor (`start ≥ cursor`, then `uniqueid ≥` at the same
//! start, in the database's own order), which is about one window of rows
//! already read plus the new ones; the calls among them that an earlier
//! run handed out are remembered in the cursor file (by group key) and
//! skipped before grouping, so they are neither built nor counted twice.
//!
//! A call read at the end of the rows is *in progress* (held back, read
//! again by the next run, counted in `Summary::in_progress`) unless its
//! last row ended at least `settle` (default 10 min) before the newest
//! `end` in the table or before now: rows of one call are inserted when
//! each of its channels hangs up, which for all but transfers is within
//! seconds. Calls the grouping window closes while reading are complete.
//!
//! The first run (no cursor) reads from `since − window − 14 h` (a call
//! that ended at `since` began at most a window earlier, and the table's
//! wall-clock times are at most 14 h off UTC). `--since` later than the
//! cursor moves the start forward. The cursor is saved only by a run that
//! enqueues ([`CursorUse::ReadWrite`]), after the outbox committed every
//! request; a dry run or a run for a closed period reads it or not at all.

pub mod connect;
pub mod cursor;
pub mod reader;
pub mod schema;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use crate::normalize::Classifier;
use crate::rules::RuleSet;

use super::group::group_key;
use super::pipeline::{build_call, count_call, drive, period, Sender};
use super::times::LocalTime;
use super::{BackfillError, CdrRow, Destination, Options, Summary};

pub use self::connect::{DbKind, DbUrl};
pub use self::cursor::{Cursor, CursorError, RowKey};
pub use self::reader::SqlRows;
pub use self::schema::{parse_overrides, Mapping, TableName};

/// How much later than a call's last row the table or the clock must be
/// before the call is taken as complete, by default.
pub const DEFAULT_SETTLE: f64 = 600.0;
/// The largest distance between a table's wall-clock time and UTC.
const MAX_OFFSET: f64 = 14.0 * 3600.0;

/// The table to read.
#[derive(Debug, Clone)]
pub struct SqlSource {
    /// The server (password held apart).
    pub url: DbUrl,
    /// The table.
    pub table: TableName,
    /// `(field, column)` overrides of the standard names.
    pub columns: Vec<(String, String)>,
    /// See the module docs (seconds).
    pub settle: f64,
}

impl SqlSource {
    /// The table as shown in messages.
    pub fn shown(&self) -> String {
        format!("{} table {}", self.url.shown(), self.table)
    }

    /// Where this table's cursor is kept under `state_dir`.
    pub fn cursor_path(&self, state_dir: &Path) -> PathBuf {
        state_dir
            .join("cdr-cursors")
            .join(format!("{}.json", self.url.slug(&self.table.to_string())))
    }
}

/// The table's rows from `from` on (inclusive), as a
/// [`RowSource`](super::RowSource) (for [`super::for_each_call_from`]).
pub fn rows(src: &SqlSource, from: &RowKey) -> Result<SqlRows, BackfillError> {
    SqlRows::open(reader::ReadSpec {
        url: src.url.clone(),
        table: src.table.clone(),
        overrides: src.columns.clone(),
        from_start: from.start.clone(),
        from_uniqueid: from.uniqueid.clone(),
    })
}

/// What a run does with the saved cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorUse {
    /// Neither reads nor writes it (`--no-cursor`, a closed period).
    Off,
    /// Starts from it, leaves it (a dry run).
    Read(PathBuf),
    /// Starts from it and saves the next one (a run that enqueues).
    ReadWrite(PathBuf),
}

impl CursorUse {
    fn path(&self) -> Option<&Path> {
        match self {
            CursorUse::Off => None,
            CursorUse::Read(p) | CursorUse::ReadWrite(p) => Some(p),
        }
    }
}

/// What happened to the cursor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CursorReport {
    /// Where the rows were read from.
    pub read_from: Option<RowKey>,
    /// Whether that came from a saved cursor (else from `since`).
    pub from_saved: bool,
    /// The cursor saved for the next run.
    pub saved: Option<RowKey>,
}

/// Runs a backfill from the table (see the module docs). Blocking, like
/// [`super::run`].
pub fn run(
    src: &SqlSource,
    cursor_use: &CursorUse,
    classifier: &Classifier,
    rules: &RuleSet,
    opts: &Options,
    dest: Destination<'_>,
) -> Result<(Summary, CursorReport), BackfillError> {
    let mut summary = Summary::default();
    let opts = period(opts, &dest, &mut summary)?;
    let mut report = CursorReport::default();
    let saved = match cursor_use.path() {
        Some(p) => Cursor::load(p).map_err(|e| BackfillError::Cursor(e.to_string()))?,
        None => None,
    };
    // Where to start: the saved cursor, unless `since` is later.
    let since = opts.since.unwrap_or(f64::NEG_INFINITY);
    let since_key = RowKey::at(LocalTime(since - opts.window - MAX_OFFSET));
    let from = match &saved {
        Some(c)
            if c.from
                .time()
                .is_some_and(|t| t.0 >= since_key.time().map_or(0.0, |s| s.0)) =>
        {
            report.from_saved = true;
            c.from.clone()
        }
        _ => since_key,
    };
    let from_time = from.time().map_or(f64::NEG_INFINITY, |t| t.0);
    report.read_from = Some(from.clone());
    let done = RefCell::new(saved.as_ref().map(|c| c.done.clone()).unwrap_or_default());
    let prev_newest = saved
        .as_ref()
        .and_then(|c| c.newest_end.as_deref())
        .and_then(super::times::parse_local)
        .map(|t| t.0);

    let mut rows = rows(src, &from)?;
    let mut sender = Sender::new(rules, dest, opts.now);
    let newest = Cell::new(prev_newest.unwrap_or(f64::NEG_INFINITY));
    let seen_before = Cell::new(0u64);
    // The first row (stream order = the database's order) of every call
    // held back: the earliest one bounds the next cursor.
    let mut held: Option<(u64, RowKey)> = None;
    let first_row = |rows: &[CdrRow]| -> Option<(u64, RowKey)> {
        rows.iter().min_by_key(|r| r.line).map(|r| {
            (
                r.line,
                RowKey {
                    start: cursor::local_text(r.start),
                    uniqueid: r.uniqueid.clone().unwrap_or_default(),
                },
            )
        })
    };
    drive(
        &mut rows,
        &opts,
        &mut summary,
        |row| {
            newest.set(newest.get().max(row.end.0));
            let before = done.borrow().contains_key(&group_key(row));
            if before {
                seen_before.set(seen_before.get() + 1);
            }
            before
        },
        |group, at_end, summary| {
            let key = group.first().map(group_key).unwrap_or_default();
            let first = first_row(&group);
            let last_end = group
                .iter()
                .map(|r| r.end.0)
                .fold(f64::NEG_INFINITY, f64::max);
            let (built, n) = build_call(group, classifier, &opts);
            if at_end {
                let by_table = newest.get() - last_end >= src.settle;
                let by_clock = built
                    .as_ref()
                    .is_ok_and(|b| b.record.ended_at.0 <= opts.now - src.settle);
                if !(by_table || by_clock) {
                    summary.in_progress += 1;
                    if let Some(f) = first {
                        if held.as_ref().is_none_or(|h| f.0 < h.0) {
                            held = Some(f);
                        }
                    }
                    return Ok(());
                }
            }
            if let Some((_, f)) = first {
                done.borrow_mut().insert(key, f);
            }
            match count_call(built, n, &opts, summary) {
                Some((record, true)) => sender.call(record, summary),
                _ => Ok(()),
            }
        },
    )?;
    summary.rows_seen_before = seen_before.get();
    sender.finish(&mut summary)?;

    if let CursorUse::ReadWrite(path) = cursor_use {
        // Never past the horizon nor a call in progress; never back.
        let newest = newest.get();
        let mut next = from.clone();
        if newest.is_finite() {
            let horizon = newest - opts.window;
            next = match &held {
                Some((_, h)) if h.time().is_some_and(|t| t.0 < horizon) => h.clone(),
                _ if horizon > from_time => RowKey::at(LocalTime(horizon)),
                _ => from.clone(),
            };
        } else if let Some((_, h)) = &held {
            next = h.clone();
        }
        let next_time = next.time().map_or(f64::NEG_INFINITY, |t| t.0);
        // Calls that start before the cursor are never read again.
        let mut done = done.into_inner();
        done.retain(|_, k| k.time().is_none_or(|t| t.0 >= next_time));
        let c = Cursor {
            version: 1,
            source: src.shown(),
            from: next.clone(),
            newest_end: newest
                .is_finite()
                .then(|| cursor::local_text(LocalTime(newest))),
            done,
        };
        c.save(path)
            .map_err(|e| BackfillError::Cursor(e.to_string()))?;
        report.saved = Some(next);
    }
    Ok((summary, report))
}
