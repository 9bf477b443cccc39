//! The outbox: every delivery, durably, from enqueue to its final outcome.
//!
//! **Storage.** One SQLite file, `<state_dir>/outbox.sqlite3`, in WAL mode
//! (bundled SQLite, no server). The schema is versioned with
//! `PRAGMA user_version` (currently 1); a newer file is refused rather than
//! misread. Rows keep the whole rendered request (method, URL, headers as
//! JSON, body as a blob) plus its state: `status` (`pending`, `inflight`,
//! `done`, `dead`, `expired`), `attempts`, `next_attempt_at`, the last HTTP
//! status and an excerpt (≤ 2 KB) of the last response or error. `id` is an
//! autoincrement and therefore the creation order.
//!
//! **One writer, group commit.** All writes go to a dedicated thread
//! (`callhook-outbox`) that owns the write connection. It takes every
//! operation queued at that moment (up to 512) and commits them in ONE
//! transaction (each inside its own savepoint, so one failing operation does
//! not undo the others), then answers each caller. A commit that contains an
//! enqueue or an admin change runs with `synchronous=FULL` (the WAL is
//! fsynced before the caller hears "stored"); pure bookkeeping of the
//! dispatcher (claiming rows, recording attempts) runs with
//! `synchronous=NORMAL`, which survives a process crash (`kill -9`) and at
//! worst, on power loss, re-sends a request whose success was not yet on disk
//! (at-least-once either way). Callers never touch SQLite: [`Outbox::submit`]
//! only queues (no I/O, a few µs) and returns a receipt that resolves after
//! the commit; [`Outbox::enqueue`] is `submit(..).await`. Reads for the admin
//! API ([`Outbox::list`], [`Outbox::stats`]) use a second, read-only
//! connection on a blocking thread, so they never hold up writes. A third
//! thread (`callhook-outbox-ckpt`) copies the WAL into the database once a
//! second (`PRAGMA wal_checkpoint(PASSIVE)`, automatic checkpoints are off),
//! so the writer's commits never pay for the database fsync. Hot queries name
//! their index (`INDEXED BY`): without statistics SQLite would otherwise
//! pick the `status` index and scan every waiting row (a 10× slowdown with a
//! backlog of a few thousand rows).
//!
//! **Measured** (2 vCPU VM, ext4, release build, `synchronous=FULL` vs
//! `NORMAL`): one caller enqueuing one request at a time waits p50 0.5 ms /
//! p99 1–1.5 ms (FULL) vs 0.06 / 0.3 ms (NORMAL); a batch of 10 commits in
//! 0.85 ms vs 0.5 ms; [`Outbox::submit`] costs the caller ≈ 1 µs, and 20 000
//! concurrent submits are group-committed at ≈ 30 000 rows/s in both modes.
//! End to end to a local sink: ≈ 7 400 deliveries/s (FULL) vs ≈ 8 800/s
//! (NORMAL); at a steady 500 events/s, event → request at the sink p50
//! 1.3 ms / p99 11–14 ms (FULL) vs 0.6 / 3.8 ms (NORMAL). FULL is the default.
//!
//! **Deduplication** (a request that is a duplicate is not inserted, and
//! counts in `callhook_deliveries_duplicate_total`):
//! - same `(target, idempotency_key)` enqueued within `dedupe_window`
//!   (default 7 days), whatever became of the first one (even `done`, even
//!   pruned: keys live in their own table for the whole window). This makes
//!   `callhook replay` or a backfill run twice harmless when rules define a
//!   key;
//! - same `(target, event_id)` while the first one is still `pending` or
//!   `inflight`, with or without a key: the same event never waits twice in
//!   the queue. Once it has finished, replaying an event without a key sends
//!   it again on purpose.
//!
//! **Cap.** When `max_rows` (default 1 000 000) deliveries are waiting
//! (`pending` + `inflight`), new ones are refused: `rejected_full` in the
//! outcome, `callhook_outbox_full_total` and
//! `callhook_deliveries_total{outcome="rejected"}`, a warning in the log.
//! Refusing the newest keeps what is already queued intact and in order
//! (dropping the oldest would silently punch holes into calls that are
//! half-delivered). The same applies when more than 100 000 requests are
//! queued in memory for a writer that cannot keep up (a stalled disk).
//!
//! **Order.** For each `(target, session_id)` exactly one unfinished row is
//! the *head* (the oldest one); only heads can be claimed, so the deliveries
//! of one call to one target leave strictly one at a time, in creation order,
//! across retries. A head that becomes `done`, `dead` or `expired` hands over
//! to the next row. Claiming is an index range scan over ready heads, with a
//! per-target limit: memory stays bounded however large the backlog.
//!
//! **Crash safety.** At open, rows left `inflight` by a process that died
//! mid-request go back to `pending`, keeping their attempt count: the
//! request is sent again with the same `webhook-id` and `Idempotency-Key`
//! (at-least-once).
//!
//! **Retention.** [`Outbox::prune`] (run by the dispatcher every 5 minutes)
//! deletes `done` and `expired` rows older than `done_retention` (default
//! 24 h) and idempotency keys older than `dedupe_window`. `dead` rows stay
//! until an operator retries them ([`Outbox::retry`],
//! [`Outbox::retry_all_dead`]), so no call log is silently lost.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll as TaskPoll};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use crate::metrics::metrics;
use crate::source::now_epoch;

use super::DeliveryRequest;

/// Schema version written to `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;
/// Largest stored excerpt of a response body or error, in bytes.
pub const EXCERPT_MAX: usize = 2048;
/// Requests queued in memory for the writer beyond which submits are refused.
pub const MAX_QUEUED: usize = 100_000;
/// Operations committed together at most.
const GROUP_MAX: usize = 512;
/// How often the WAL is checkpointed into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Rows deleted per prune transaction.
const PRUNE_CHUNK: usize = 5000;

/// How hard commits are pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Enqueues and admin changes fsync the WAL before they are acknowledged.
    #[default]
    Full,
    /// Nothing is fsynced at commit (survives a crash of the process, not of
    /// the machine). For measurements and throwaway setups.
    Normal,
}

/// Outbox settings.
#[derive(Debug, Clone)]
pub struct OutboxOptions {
    /// Waiting deliveries (`pending` + `inflight`) beyond which new ones are refused.
    pub max_rows: usize,
    /// How long `done` and `expired` rows are kept.
    pub done_retention: Duration,
    /// How long an idempotency key blocks a second enqueue.
    pub dedupe_window: Duration,
    /// Commit durability of enqueues.
    pub durability: Durability,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            done_retention: Duration::from_secs(24 * 3600),
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            durability: Durability::Full,
        }
    }
}

/// An outbox failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}: {message}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// SQLite reported an error.
    #[error("outbox database error: {0}")]
    Db(String),
    /// The file was written by a newer callhook.
    #[error("the outbox schema version is {found}, newer than this callhook understands ({supported}); upgrade callhook or move the state directory away")]
    Schema {
        /// Version in the file.
        found: i64,
        /// Version this build writes.
        supported: i64,
    },
    /// The writer thread has stopped.
    #[error("the outbox writer has stopped")]
    Closed,
}

impl From<rusqlite::Error> for OutboxError {
    fn from(e: rusqlite::Error) -> Self {
        OutboxError::Db(e.to_string())
    }
}

type Result<T> = std::result::Result<T, OutboxError>;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for its turn or its next attempt.
    Pending,
    /// Claimed by the dispatcher (an attempt is being made).
    Inflight,
    /// Delivered (2xx).
    Done,
    /// Given up; kept until retried by an operator.
    Dead,
    /// Not sent: its `expires_at` passed first.
    Expired,
}

impl Status {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Inflight => "inflight",
            Status::Done => "done",
            Status::Dead => "dead",
            Status::Expired => "expired",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "inflight" => Status::Inflight,
            "done" => Status::Done,
            "dead" => Status::Dead,
            "expired" => Status::Expired,
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Outbox::enqueue`] did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EnqueueOutcome {
    /// Rows written.
    pub inserted: usize,
    /// Requests skipped as duplicates (idempotency key or event still waiting).
    pub duplicates: usize,
    /// Of the duplicates: the earlier delivery is still waiting (pending or
    /// in flight).
    pub duplicates_waiting: usize,
    /// Of the duplicates: the earlier delivery was delivered.
    pub duplicates_delivered: usize,
    /// Of the duplicates: the earlier delivery is dead or expired.
    pub duplicates_failed: usize,
    /// Of the duplicates: the key is remembered but its delivery finished
    /// more than `done_retention` ago and was pruned (delivered or expired).
    pub duplicates_pruned: usize,
    /// Requests refused because the outbox was full.
    pub rejected_full: usize,
}

/// Filter for [`Outbox::list`].
#[derive(Debug, Clone)]
pub struct ListFilter {
    /// Only rows in this state.
    pub status: Option<Status>,
    /// Only rows for this target.
    pub target: Option<String>,
    /// At most this many rows (newest first).
    pub limit: usize,
}

impl Default for ListFilter {
    fn default() -> Self {
        Self {
            status: None,
            target: None,
            limit: 100,
        }
    }
}

/// A stored delivery, for the admin API: secrets are masked (values of
/// credential-like headers and query parameters), the body is a text excerpt.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeliveryRow {
    /// Row id (creation order).
    pub id: i64,
    /// Target name.
    pub target: String,
    /// Rule that produced it.
    pub rule: String,
    /// Call session id.
    pub session_id: String,
    /// PBX id.
    pub pbx: String,
    /// Stable event id (`webhook-id`).
    pub event_id: String,
    /// HTTP method.
    pub method: String,
    /// URL (credential-like query values masked).
    pub url: String,
    /// Headers (credential-like values masked).
    pub headers: Vec<(String, String)>,
    /// Start of the body as text (≤ 2 KB, lossy UTF-8).
    pub body_excerpt: Option<String>,
    /// Body size in bytes.
    pub body_len: usize,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Event time (epoch seconds).
    pub created_at: f64,
    /// Freshness limit (epoch seconds).
    pub expires_at: Option<f64>,
    /// When it entered the outbox (epoch seconds).
    pub enqueued_at: f64,
    /// State.
    pub status: Status,
    /// Attempts made.
    pub attempts: u32,
    /// Earliest next attempt (epoch seconds), for pending rows.
    pub next_attempt_at: f64,
    /// Last HTTP status (`503`) or failure kind (`timeout`, `connect`, `error`).
    pub last_status: Option<String>,
    /// Excerpt of the last response body or error (≤ 2 KB).
    pub last_error: Option<String>,
    /// Last change (epoch seconds).
    pub updated_at: f64,
}

/// Counts by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboxStats {
    /// Waiting rows.
    pub pending: u64,
    /// Rows being sent.
    pub inflight: u64,
    /// Given-up rows.
    pub dead: u64,
    /// Expired rows (until pruned).
    pub expired: u64,
    /// Delivered rows (until pruned).
    pub done: u64,
    /// Seconds the oldest waiting row has been in the outbox.
    pub oldest_pending_age: Option<f64>,
    /// Waiting rows (`pending` + `inflight`) per target.
    pub waiting_by_target: BTreeMap<String, u64>,
}

/// A delivery claimed for an attempt (the full request).
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// Row id.
    pub id: i64,
    /// Target name.
    pub target: String,
    /// Rule name.
    pub rule: String,
    /// Call session id.
    pub session_id: String,
    /// PBX id.
    pub pbx: String,
    /// Stable event id.
    pub event_id: String,
    /// HTTP method.
    pub method: String,
    /// URL.
    pub url: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Option<Vec<u8>>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Event time.
    pub created_at: f64,
    /// Freshness limit.
    pub expires_at: Option<f64>,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// One target's share of a [`Outbox::poll`].
#[derive(Debug, Clone)]
pub struct ClaimWant {
    /// Target name.
    pub target: String,
    /// Claim at most this many ready heads (0: only report `next_ready`).
    pub limit: usize,
}

/// What [`Outbox::poll`] found.
#[derive(Debug, Clone, Default)]
pub struct PollResult {
    /// Rows now `inflight`, to be sent.
    pub claimed: Vec<Claimed>,
    /// Rows just marked `expired`: (id, target).
    pub expired: Vec<(i64, String)>,
    /// Per target asked: when its earliest remaining head becomes ready.
    pub next_ready: BTreeMap<String, f64>,
    /// Earliest `expires_at` among pending rows.
    pub next_expiry: Option<f64>,
}

/// How an attempt ended, for [`Outbox::complete`].
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    /// 2xx.
    Delivered {
        /// The status code.
        status: u16,
    },
    /// Try again at `at` (epoch seconds).
    Retry {
        /// Next attempt.
        at: f64,
        /// Status code or failure kind.
        status: String,
        /// Response or error excerpt.
        error: Option<String>,
    },
    /// Given up after this attempt.
    Dead {
        /// Status code or failure kind.
        status: String,
        /// Response or error excerpt, and why it was given up.
        error: Option<String>,
    },
    /// Its `expires_at` passed before the attempt (nothing was sent).
    Expired,
}

/// Cuts text to at most [`EXCERPT_MAX`] bytes on a character boundary.
pub fn excerpt(s: &str) -> String {
    if s.len() <= EXCERPT_MAX {
        return s.to_string();
    }
    let mut end = EXCERPT_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

// ---------------------------------------------------------------------------
// Writer thread.

struct WriterState {
    opts: OutboxOptions,
    /// pending + inflight rows.
    waiting: i64,
}

type Finish = Box<dyn FnOnce(Option<&OutboxError>) + Send>;

/// A job's body: runs inside the group transaction (or gets the error that
/// prevented it), says whether it succeeded, and returns what to do after
/// the commit.
type JobFn = Box<
    dyn FnOnce(std::result::Result<&Connection, &OutboxError>, &mut WriterState) -> (bool, Finish)
        + Send,
>;

struct Job {
    durable: bool,
    run: JobFn,
}

/// Resolves when an enqueue has been committed.
#[must_use = "the outcome arrives after the commit"]
pub struct EnqueueReceipt(ReceiptInner);

enum ReceiptInner {
    Ready(Option<Result<EnqueueOutcome>>),
    Waiting(oneshot::Receiver<Result<EnqueueDetail>>),
}

impl Future for EnqueueReceipt {
    type Output = Result<EnqueueOutcome>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> TaskPoll<Self::Output> {
        match &mut self.0 {
            ReceiptInner::Ready(r) => TaskPoll::Ready(r.take().unwrap_or(Err(OutboxError::Closed))),
            ReceiptInner::Waiting(rx) => match Pin::new(rx).poll(cx) {
                TaskPoll::Ready(Ok(r)) => TaskPoll::Ready(r.map(|d| d.outcome)),
                TaskPoll::Ready(Err(_)) => TaskPoll::Ready(Err(OutboxError::Closed)),
                TaskPoll::Pending => TaskPoll::Pending,
            },
        }
    }
}

/// The durable outbox. Cheap to share (`Arc<Outbox>`); every method may be
/// called from async code without blocking the runtime.
pub struct Outbox {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    reader: Arc<Mutex<Connection>>,
    queued: Arc<AtomicUsize>,
    notify: Arc<Notify>,
    path: PathBuf,
    opts: OutboxOptions,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.path)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

const SCHEMA: &str = r#"
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
    updated_at       REAL NOT NULL
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
"#;

const COLS: &str = "id, target, rule, session_id, pbx, event_id, method, url, headers, body, \
     idempotency_key, created_at, expires_at, enqueued_at, status, attempts, next_attempt_at, \
     last_status, last_error, updated_at";

const WAITING: &str = "status IN ('pending', 'inflight')";

impl Outbox {
    /// Opens (or creates) `<state_dir>/outbox.sqlite3`, puts rows left
    /// `inflight` back to `pending`, and starts the writer thread.
    pub fn open(state_dir: &Path, opts: OutboxOptions) -> Result<Outbox> {
        Self::open_with(state_dir, opts, true)
    }

    /// Like [`Outbox::open`], but leaves `inflight` rows alone: for a
    /// short-lived process (`callhook backfill`) that enqueues while a
    /// daemon may be sending from the same outbox (its attempts in flight
    /// must not be handed out a second time).
    pub fn open_shared(state_dir: &Path, opts: OutboxOptions) -> Result<Outbox> {
        Self::open_with(state_dir, opts, false)
    }

    fn open_with(state_dir: &Path, opts: OutboxOptions, recover: bool) -> Result<Outbox> {
        std::fs::create_dir_all(state_dir).map_err(|e| OutboxError::Dir {
            path: state_dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let path = state_dir.join("outbox.sqlite3");
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OutboxError::Db(format!(
                "cannot switch {} to WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Checkpoints (copying the WAL into the database, with an fsync)
        // run on their own thread, not in the writer's commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(OutboxError::Schema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let init = (|| -> Result<usize> {
            conn.execute_batch(SCHEMA)?;
            if version < SCHEMA_VERSION {
                conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            if !recover {
                return Ok(0);
            }
            let now = now_epoch();
            Ok(conn.execute(
                "UPDATE deliveries SET status = 'pending', updated_at = ?1 WHERE status = 'inflight'",
                params![now],
            )?)
        })();
        let recovered = match init {
            Ok(n) => {
                conn.execute_batch("COMMIT")?;
                n
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        if recovered > 0 {
            tracing::warn!(
                target: "callhook::deliver",
                rows = recovered,
                "outbox: deliveries left in flight by the previous run go out again"
            );
        }
        let waiting: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM deliveries WHERE {WAITING}"),
            [],
            |r| r.get(0),
        )?;
        metrics().outbox_depth.set(waiting);

        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(Duration::from_secs(10))?;

        let (tx, rx) = mpsc::channel::<Job>();
        let state = WriterState {
            opts: opts.clone(),
            waiting,
        };
        let checkpoint_conn = Connection::open(&path)?;
        checkpoint_conn.busy_timeout(Duration::from_secs(10))?;
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let checkpointer = std::thread::Builder::new()
            .name("callhook-outbox-ckpt".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stop_rx))
            .map_err(|e| OutboxError::Db(format!("cannot start the checkpoint thread: {e}")))?;
        let writer = std::thread::Builder::new()
            .name("callhook-outbox".into())
            .spawn(move || writer_loop(conn, rx, state))
            .map_err(|e| OutboxError::Db(format!("cannot start the writer thread: {e}")))?;
        Ok(Outbox {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            checkpointer: Mutex::new(Some((stop_tx, checkpointer))),
            reader: Arc::new(Mutex::new(reader)),
            queued: Arc::new(AtomicUsize::new(0)),
            notify: Arc::new(Notify::new()),
            path,
            opts,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The settings it was opened with.
    pub fn options(&self) -> &OutboxOptions {
        &self.opts
    }

    /// Signalled after every commit that inserted rows or made rows ready
    /// again (the dispatcher listens, so nothing waits for a poll).
    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    fn send(&self, job: Job) -> bool {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        }
    }

    /// Runs `f` in the writer's next transaction; `on_commit` runs after a
    /// successful commit (metrics), before the caller hears the result.
    fn call<R, F, C>(&self, durable: bool, f: F, on_commit: C) -> oneshot::Receiver<Result<R>>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &mut WriterState) -> Result<R> + Send + 'static,
        C: FnOnce(&R) + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            durable,
            run: Box::new(move |conn, st| {
                let r = match conn {
                    Ok(c) => f(c, st),
                    Err(e) => Err(e.clone()),
                };
                let ok = r.is_ok();
                let finish: Finish = Box::new(move |commit_err| {
                    let out = match (commit_err, r) {
                        (Some(e), _) => Err(e.clone()),
                        (None, r) => {
                            if let Ok(v) = &r {
                                on_commit(v);
                            }
                            r
                        }
                    };
                    let _ = tx.send(out);
                });
                (ok, finish)
            }),
        };
        // When the writer is gone the sender is dropped with the job: the
        // receiver then reports `Closed`.
        self.send(job);
        rx
    }

    async fn run<R, F>(&self, durable: bool, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &mut WriterState) -> Result<R> + Send + 'static,
    {
        self.call(durable, f, |_| {})
            .await
            .unwrap_or(Err(OutboxError::Closed))
    }

    /// Queues a batch for the next group commit without waiting: no I/O
    /// happens on the caller's thread. The receipt resolves once the batch is
    /// committed (`synchronous=FULL`: on disk).
    pub fn submit(&self, reqs: Vec<DeliveryRequest>) -> EnqueueReceipt {
        let n = reqs.len();
        if n == 0 {
            return EnqueueReceipt(ReceiptInner::Ready(Some(Ok(EnqueueOutcome::default()))));
        }
        let queued = self.queued.fetch_add(n, Ordering::AcqRel);
        if queued + n > MAX_QUEUED {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            let mut per = BTreeMap::<String, u64>::new();
            for r in &reqs {
                *per.entry(r.target.clone()).or_default() += 1;
            }
            record_rejected(&per);
            tracing::warn!(
                target: "callhook::deliver",
                rows = n,
                "outbox writer backlog is full: deliveries refused"
            );
            return EnqueueReceipt(ReceiptInner::Ready(Some(Ok(EnqueueOutcome {
                rejected_full: n,
                ..Default::default()
            }))));
        }
        let counter = self.queued.clone();
        let notify = self.notify.clone();
        let rx = self.call(
            true,
            move |conn, st| {
                counter.fetch_sub(n, Ordering::AcqRel);
                insert_batch(conn, st, &reqs, now_epoch())
            },
            move |d: &EnqueueDetail| {
                let m = metrics();
                for (t, c) in &d.inserted {
                    m.deliveries_enqueued.with_label_values(&[t]).inc_by(*c);
                }
                for (t, c) in &d.duplicates {
                    m.deliveries_duplicate.with_label_values(&[t]).inc_by(*c);
                }
                record_rejected(&d.rejected);
                if d.outcome.rejected_full > 0 {
                    tracing::warn!(
                        target: "callhook::deliver",
                        rows = d.outcome.rejected_full,
                        "outbox is at its cap (max_rows): deliveries refused"
                    );
                }
                if d.outcome.inserted > 0 {
                    notify.notify_one();
                }
            },
        );
        EnqueueReceipt(ReceiptInner::Waiting(rx))
    }

    /// Stores a batch in one transaction and waits for the commit.
    pub async fn enqueue(&self, reqs: &[DeliveryRequest]) -> Result<EnqueueOutcome> {
        self.submit(reqs.to_vec()).await
    }

    /// Expires due rows and claims ready heads (they become `inflight`).
    pub async fn poll(&self, now: f64, wants: Vec<ClaimWant>) -> Result<PollResult> {
        self.run(false, move |c, st| poll_tx(c, st, now, &wants))
            .await
    }

    /// Records the end of an attempt on an `inflight` row; false when the
    /// row was not in flight (already recovered by a restart).
    pub async fn complete(&self, id: i64, how: Completion) -> Result<bool> {
        self.run(false, move |c, st| {
            complete_tx(c, st, id, &how, now_epoch())
        })
        .await
    }

    /// Puts claimed rows back to `pending` without using an attempt
    /// (breaker opened, shutdown, target disabled).
    pub async fn release(&self, ids: Vec<i64>) -> Result<usize> {
        self.run(false, move |c, _| {
            let now = now_epoch();
            let mut n = 0;
            let mut st = c.prepare_cached(
                "UPDATE deliveries SET status = 'pending', updated_at = ?2 WHERE id = ?1 AND status = 'inflight'",
            )?;
            for id in ids {
                n += st.execute(params![id, now])?;
            }
            Ok(n)
        })
        .await
    }

    /// Puts every `inflight` row back to `pending` (what `open` does after a
    /// crash; the dispatcher calls it when it stops).
    pub async fn requeue_inflight(&self) -> Result<usize> {
        self.run(true, |c, _| {
            Ok(c.execute(
                "UPDATE deliveries SET status = 'pending', updated_at = ?1 WHERE status = 'inflight'",
                params![now_epoch()],
            )?)
        })
        .await
    }

    /// Sends a `dead` row again: back to `pending`, attempts reset, due now.
    /// False when there is no dead row with that id.
    pub async fn retry(&self, id: i64) -> Result<bool> {
        let notify = self.notify.clone();
        self.call(
            true,
            move |c, st| {
                let row: Option<(String, String)> = c
                    .query_row(
                        "SELECT target, session_id FROM deliveries WHERE id = ?1 AND status = 'dead'",
                        params![id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let Some((target, session)) = row else {
                    return Ok(false);
                };
                revive(c, Some(id), now_epoch())?;
                st.waiting += 1;
                fix_head(c, &target, &session)?;
                Ok(true)
            },
            move |ok| {
                if *ok {
                    notify.notify_one();
                }
            },
        )
        .await
        .unwrap_or(Err(OutboxError::Closed))
    }

    /// Sends every `dead` row again; returns how many.
    pub async fn retry_all_dead(&self) -> Result<usize> {
        let notify = self.notify.clone();
        self.call(
            true,
            move |c, st| {
                let keys: Vec<(String, String)> = c
                    .prepare(
                        "SELECT DISTINCT target, session_id FROM deliveries WHERE status = 'dead'",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<std::result::Result<_, _>>()?;
                let n = revive(c, None, now_epoch())?;
                st.waiting += n as i64;
                for (t, s) in keys {
                    fix_head(c, &t, &s)?;
                }
                Ok(n)
            },
            move |n| {
                if *n > 0 {
                    notify.notify_one();
                }
            },
        )
        .await
        .unwrap_or(Err(OutboxError::Closed))
    }

    /// Deletes `done`/`expired` rows older than `done_retention` and
    /// idempotency keys older than `dedupe_window`, in chunks so enqueues are
    /// never held up for long. Returns the delivery rows deleted.
    pub async fn prune(&self, now: f64) -> Result<usize> {
        let rows_before = now - self.opts.done_retention.as_secs_f64();
        let keys_before = now - self.opts.dedupe_window.as_secs_f64();
        let mut total = 0;
        loop {
            let n = self
                .run(false, move |c, _| {
                    Ok(c.execute(
                        "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries \
                         WHERE status IN ('done', 'expired') AND updated_at < ?1 LIMIT ?2)",
                        params![rows_before, PRUNE_CHUNK as i64],
                    )?)
                })
                .await?;
            total += n;
            if n < PRUNE_CHUNK {
                break;
            }
        }
        loop {
            let n = self
                .run(false, move |c, _| {
                    Ok(c.execute(
                        "DELETE FROM dedupe WHERE (target, key) IN \
                         (SELECT target, key FROM dedupe WHERE seen_at < ?1 LIMIT ?2)",
                        params![keys_before, PRUNE_CHUNK as i64],
                    )?)
                })
                .await?;
            if n < PRUNE_CHUNK {
                break;
            }
        }
        Ok(total)
    }

    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| OutboxError::Db(format!("reader task failed: {e}")))?
    }

    /// Rows matching a filter, newest first, without secrets.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<DeliveryRow>> {
        self.read(move |c| {
            let mut sql = format!("SELECT {COLS} FROM deliveries WHERE 1 = 1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if let Some(s) = filter.status {
                sql.push_str(" AND status = ?");
                args.push(s.as_str().to_string().into());
            }
            if let Some(t) = filter.target {
                sql.push_str(" AND target = ?");
                args.push(t.into());
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            args.push((filter.limit.min(i64::MAX as usize) as i64).into());
            let mut st = c.prepare(&sql)?;
            let rows = st
                .query_map(rusqlite::params_from_iter(args), admin_row)?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// One row, without secrets.
    pub async fn get(&self, id: i64) -> Result<Option<DeliveryRow>> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLS} FROM deliveries WHERE id = ?1"),
                params![id],
                admin_row,
            )
            .optional()?)
        })
        .await
    }

    /// Counts by state; also refreshes the `outbox_depth` and
    /// `outbox_oldest_age_seconds` gauges, and per target
    /// `outbox_waiting` and `outbox_oldest_waiting_age_seconds`.
    pub async fn stats(&self) -> Result<OutboxStats> {
        let s = self
            .read(|c| {
                let mut s = OutboxStats::default();
                let mut st = c.prepare("SELECT status, COUNT(*) FROM deliveries GROUP BY status")?;
                let mut rows = st.query([])?;
                while let Some(r) = rows.next()? {
                    let status: String = r.get(0)?;
                    let n: i64 = r.get(1)?;
                    let n = n.max(0) as u64;
                    match Status::parse(&status) {
                        Some(Status::Pending) => s.pending = n,
                        Some(Status::Inflight) => s.inflight = n,
                        Some(Status::Done) => s.done = n,
                        Some(Status::Dead) => s.dead = n,
                        Some(Status::Expired) => s.expired = n,
                        None => {}
                    }
                }
                let oldest: Option<f64> = c
                    .query_row(
                        "SELECT MIN(e) FROM (\
                           SELECT (SELECT enqueued_at FROM deliveries WHERE status = 'pending' ORDER BY id LIMIT 1) AS e \
                           UNION ALL \
                           SELECT (SELECT enqueued_at FROM deliveries WHERE status = 'inflight' ORDER BY id LIMIT 1))",
                        [],
                        |r| r.get(0),
                    )
                    .optional()?
                    .flatten();
                s.oldest_pending_age = oldest.map(|t| (now_epoch() - t).max(0.0));
                let mut st = c.prepare(&format!(
                    "SELECT target, COUNT(*), MIN(enqueued_at) FROM deliveries WHERE {WAITING} GROUP BY target"
                ))?;
                let mut rows = st.query([])?;
                let now = now_epoch();
                let mut by_target = BTreeMap::new();
                while let Some(r) = rows.next()? {
                    let t: String = r.get(0)?;
                    let n: i64 = r.get(1)?;
                    let oldest: Option<f64> = r.get(2)?;
                    let n = n.max(0) as u64;
                    by_target.insert(t.clone(), (n, oldest.map_or(0.0, |o| (now - o).max(0.0))));
                    s.waiting_by_target.insert(t, n);
                }
                Ok((s, by_target))
            })
            .await?;
        let (s, by_target) = s;
        let m = metrics();
        m.set_outbox_by_target(&by_target);
        m.outbox_depth.set((s.pending + s.inflight) as i64);
        m.outbox_oldest_age_seconds
            .set(s.oldest_pending_age.unwrap_or(0.0));
        Ok(s)
    }

    /// Stops the writer after the operations already queued, and waits for
    /// it. Later calls fail with [`OutboxError::Closed`]. Dropping the outbox
    /// does the same.
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        let ckpt = self
            .checkpointer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((stop, h)) = ckpt {
            drop(stop);
            let _ = h.join();
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.close();
    }
}

fn record_rejected(per: &BTreeMap<String, u64>) {
    let m = metrics();
    for (t, c) in per {
        m.outbox_full.inc_by(*c);
        m.deliveries.with_label_values(&[t, "rejected"]).inc_by(*c);
    }
}

/// Copies the WAL back into the database once a second (PASSIVE: never
/// blocks the writer or readers), so the WAL stays small and the writer's
/// commits never pay for the database fsync.
fn checkpoint_loop(conn: Connection, stop: mpsc::Receiver<()>) {
    // Anything but a timeout (the sender dropped) means stop.
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(target: "callhook::deliver", error = %e, "outbox checkpoint failed");
        }
    }
    // Last one, so a clean stop leaves (almost) nothing in the WAL.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, mut st: WriterState) {
    let mut full = true; // the pragma set at open
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let want_full = st.opts.durability == Durability::Full && batch.iter().any(|j| j.durable);
        if want_full != full {
            let v = if want_full { "FULL" } else { "NORMAL" };
            if conn.pragma_update(None, "synchronous", v).is_ok() {
                full = want_full;
            }
        }
        let mut finishers = Vec::with_capacity(batch.len());
        let mut any_failed = false;
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Err(e) => {
                let e = OutboxError::from(e);
                for job in batch {
                    let (_, fin) = (job.run)(Err(&e), &mut st);
                    finishers.push(fin);
                }
                for f in finishers {
                    f(Some(&e));
                }
                continue;
            }
            Ok(()) => {
                for job in batch {
                    if let Err(e) = conn.execute_batch("SAVEPOINT job") {
                        let e = OutboxError::from(e);
                        let (_, fin) = (job.run)(Err(&e), &mut st);
                        finishers.push(fin);
                        any_failed = true;
                        continue;
                    }
                    let (ok, fin) = (job.run)(Ok(&conn), &mut st);
                    if ok {
                        let _ = conn.execute_batch("RELEASE job");
                    } else {
                        any_failed = true;
                        let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                    }
                    finishers.push(fin);
                }
            }
        }
        let commit = conn.execute_batch("COMMIT").map_err(OutboxError::from);
        if let Err(e) = &commit {
            tracing::error!(target: "callhook::deliver", error = %e, "outbox commit failed");
            let _ = conn.execute_batch("ROLLBACK");
            any_failed = true;
        }
        if any_failed {
            // A job may have changed the counter before failing: recount.
            if let Ok(n) = conn.query_row(
                &format!("SELECT COUNT(*) FROM deliveries WHERE {WAITING}"),
                [],
                |r| r.get::<_, i64>(0),
            ) {
                st.waiting = n;
            }
        }
        metrics().outbox_depth.set(st.waiting);
        let err = commit.err();
        for f in finishers {
            f(err.as_ref());
        }
    }
}

// ---------------------------------------------------------------------------
// Transactions (run on the writer thread).

struct EnqueueDetail {
    outcome: EnqueueOutcome,
    inserted: BTreeMap<String, u64>,
    duplicates: BTreeMap<String, u64>,
    rejected: BTreeMap<String, u64>,
}

fn insert_batch(
    c: &Connection,
    st: &mut WriterState,
    reqs: &[DeliveryRequest],
    now: f64,
) -> Result<EnqueueDetail> {
    let mut d = EnqueueDetail {
        outcome: EnqueueOutcome::default(),
        inserted: BTreeMap::new(),
        duplicates: BTreeMap::new(),
        rejected: BTreeMap::new(),
    };
    let window_start = now - st.opts.dedupe_window.as_secs_f64();
    let mut event_dup = c.prepare_cached(&format!(
        "SELECT 1 FROM deliveries INDEXED BY deliveries_event \
         WHERE target = ?1 AND event_id = ?2 AND {WAITING} LIMIT 1"
    ))?;
    let mut key_seen =
        c.prepare_cached("SELECT seen_at FROM dedupe WHERE target = ?1 AND key = ?2")?;
    let mut key_put = c.prepare_cached(
        "INSERT OR REPLACE INTO dedupe (target, key, seen_at) VALUES (?1, ?2, ?3)",
    )?;
    let mut key_status = c.prepare_cached(
        "SELECT status FROM deliveries INDEXED BY deliveries_key \
         WHERE target = ?1 AND idempotency_key = ?2 ORDER BY id DESC LIMIT 1",
    )?;
    let mut chain_busy = c.prepare_cached(&format!(
        "SELECT 1 FROM deliveries INDEXED BY deliveries_chain \
         WHERE target = ?1 AND session_id = ?2 AND {WAITING} LIMIT 1"
    ))?;
    let mut insert = c.prepare_cached(
        "INSERT INTO deliveries (target, rule, session_id, pbx, event_id, method, url, headers, \
         body, idempotency_key, created_at, expires_at, enqueued_at, status, head, attempts, \
         next_attempt_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'pending', ?14, 0, ?13, ?13)",
    )?;
    for r in reqs {
        let dup_event = event_dup.exists(params![r.target, r.event_id])?;
        let dup_key = match &r.idempotency_key {
            Some(k) => key_seen
                .query_row(params![r.target, k], |row| row.get::<_, f64>(0))
                .optional()?
                .is_some_and(|seen| seen >= window_start),
            None => false,
        };
        if dup_event || dup_key {
            // What became of the earlier one (for reports such as backfill's
            // "already delivered" / "already queued").
            let earlier = match (&r.idempotency_key, dup_event) {
                (Some(k), false) => key_status
                    .query_row(params![r.target, k], |row| row.get::<_, String>(0))
                    .optional()?,
                _ => Some("pending".to_string()),
            };
            match earlier.as_deref().and_then(Status::parse) {
                Some(Status::Pending | Status::Inflight) => d.outcome.duplicates_waiting += 1,
                Some(Status::Done) => d.outcome.duplicates_delivered += 1,
                Some(Status::Dead | Status::Expired) => d.outcome.duplicates_failed += 1,
                None => d.outcome.duplicates_pruned += 1,
            }
            d.outcome.duplicates += 1;
            *d.duplicates.entry(r.target.clone()).or_default() += 1;
            continue;
        }
        if st.waiting >= st.opts.max_rows as i64 {
            d.outcome.rejected_full += 1;
            *d.rejected.entry(r.target.clone()).or_default() += 1;
            continue;
        }
        if let Some(k) = &r.idempotency_key {
            key_put.execute(params![r.target, k, now])?;
        }
        let head = !chain_busy.exists(params![r.target, r.session_id])?;
        let headers = serde_json::to_string(&r.headers)
            .map_err(|e| OutboxError::Db(format!("cannot encode headers: {e}")))?;
        insert.execute(params![
            r.target,
            r.rule,
            r.session_id,
            r.pbx,
            r.event_id,
            r.method,
            r.url,
            headers,
            r.body,
            r.idempotency_key,
            r.created_at,
            r.expires_at,
            now,
            head as i64,
        ])?;
        st.waiting += 1;
        d.outcome.inserted += 1;
        *d.inserted.entry(r.target.clone()).or_default() += 1;
    }
    Ok(d)
}

/// Makes the oldest unfinished row of `(target, session)` its only head,
/// unless one of its rows is in flight (then no pending row may be a head
/// until that attempt ends).
fn fix_head(c: &Connection, target: &str, session: &str) -> Result<()> {
    let busy = c
        .prepare_cached(&format!(
            "SELECT 1 FROM deliveries INDEXED BY deliveries_chain \
             WHERE target = ?1 AND session_id = ?2 AND {WAITING} \
             AND status = 'inflight' LIMIT 1"
        ))?
        .exists(params![target, session])?;
    let first: Option<(i64, i64)> = if busy {
        None
    } else {
        c.prepare_cached(&format!(
            "SELECT id, head FROM deliveries INDEXED BY deliveries_chain \
             WHERE target = ?1 AND session_id = ?2 AND {WAITING} \
             ORDER BY id LIMIT 1"
        ))?
        .query_row(params![target, session], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
    };
    let keep = first.map(|f| f.0).unwrap_or(-1);
    c.prepare_cached(&format!(
        "UPDATE deliveries INDEXED BY deliveries_chain SET head = 0 \
         WHERE target = ?1 AND session_id = ?2 AND {WAITING} \
         AND status = 'pending' AND head = 1 AND id != ?3"
    ))?
    .execute(params![target, session, keep])?;
    if let Some((id, 0)) = first {
        c.prepare_cached("UPDATE deliveries SET head = 1 WHERE id = ?1")?
            .execute(params![id])?;
    }
    Ok(())
}

/// Dead rows back to pending (one id, or all when `id` is `None`).
fn revive(c: &Connection, id: Option<i64>, now: f64) -> Result<usize> {
    const SET: &str = "UPDATE deliveries SET status = 'pending', head = 0, attempts = 0, \
                       next_attempt_at = ?1, updated_at = ?1 WHERE status = 'dead'";
    Ok(match id {
        Some(id) => c.execute(&format!("{SET} AND id = ?2"), params![now, id])?,
        None => c.execute(SET, params![now])?,
    })
}

fn claimed_row(r: &Row<'_>) -> rusqlite::Result<Claimed> {
    let headers: String = r.get(8)?;
    Ok(Claimed {
        id: r.get(0)?,
        target: r.get(1)?,
        rule: r.get(2)?,
        session_id: r.get(3)?,
        pbx: r.get(4)?,
        event_id: r.get(5)?,
        method: r.get(6)?,
        url: r.get(7)?,
        headers: serde_json::from_str(&headers).unwrap_or_default(),
        body: r.get(9)?,
        idempotency_key: r.get(10)?,
        created_at: r.get(11)?,
        expires_at: r.get(12)?,
        attempts: r.get::<_, i64>(15)?.clamp(0, u32::MAX as i64) as u32,
    })
}

fn poll_tx(
    c: &Connection,
    st: &mut WriterState,
    now: f64,
    wants: &[ClaimWant],
) -> Result<PollResult> {
    let mut out = PollResult::default();
    // 1. Expire what is past its freshness limit, heads or not (a non-head
    // that expired would never be sent anyway; expiring it early keeps the
    // call's chain short).
    let due: Vec<(i64, String, String)> = c
        .prepare_cached(
            "SELECT id, target, session_id FROM deliveries INDEXED BY deliveries_expiry \
             WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= ?1 LIMIT 1000",
        )?
        .query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<std::result::Result<_, _>>()?;
    if !due.is_empty() {
        let mut upd = c.prepare_cached(
            "UPDATE deliveries SET status = 'expired', head = 0, updated_at = ?2 WHERE id = ?1",
        )?;
        let mut keys = BTreeSet::new();
        for (id, t, s) in due {
            upd.execute(params![id, now])?;
            st.waiting -= 1;
            keys.insert((t.clone(), s));
            out.expired.push((id, t));
        }
        for (t, s) in keys {
            fix_head(c, &t, &s)?;
        }
    }
    out.next_expiry = c
        .prepare_cached(
            "SELECT MIN(expires_at) FROM deliveries INDEXED BY deliveries_expiry \
             WHERE status = 'pending' AND expires_at IS NOT NULL",
        )?
        .query_row([], |r| r.get(0))?;
    // 2. Claim ready heads per target.
    let mut select = c.prepare_cached(&format!(
        "SELECT {COLS} FROM deliveries INDEXED BY deliveries_ready \
         WHERE target = ?1 AND status = 'pending' AND head = 1 \
         AND next_attempt_at <= ?2 ORDER BY next_attempt_at, id LIMIT ?3"
    ))?;
    let mut mark = c.prepare_cached(
        "UPDATE deliveries SET status = 'inflight', updated_at = ?2 WHERE id = ?1",
    )?;
    let mut next = c.prepare_cached(
        "SELECT MIN(next_attempt_at) FROM deliveries INDEXED BY deliveries_ready \
         WHERE target = ?1 AND status = 'pending' AND head = 1",
    )?;
    for w in wants {
        if w.limit > 0 {
            let rows: Vec<Claimed> = select
                .query_map(params![w.target, now, w.limit as i64], claimed_row)?
                .collect::<std::result::Result<_, _>>()?;
            for r in &rows {
                mark.execute(params![r.id, now])?;
            }
            out.claimed.extend(rows);
        }
        if let Some(t) = next.query_row(params![w.target], |r| r.get::<_, Option<f64>>(0))? {
            out.next_ready.insert(w.target.clone(), t);
        }
    }
    Ok(out)
}

fn complete_tx(
    c: &Connection,
    st: &mut WriterState,
    id: i64,
    how: &Completion,
    now: f64,
) -> Result<bool> {
    let row: Option<(String, String)> = c
        .prepare_cached(
            "SELECT target, session_id FROM deliveries WHERE id = ?1 AND status = 'inflight'",
        )?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((target, session)) = row else {
        return Ok(false);
    };
    let cut = |s: &Option<String>| s.as_deref().map(excerpt);
    match how {
        Completion::Delivered { status } => {
            c.prepare_cached(
                "UPDATE deliveries SET status = 'done', head = 0, attempts = attempts + 1, \
                 last_status = ?2, last_error = NULL, updated_at = ?3 WHERE id = ?1",
            )?
            .execute(params![id, status.to_string(), now])?;
        }
        Completion::Retry { at, status, error } => {
            c.prepare_cached(
                "UPDATE deliveries SET status = 'pending', attempts = attempts + 1, \
                 next_attempt_at = ?2, last_status = ?3, last_error = ?4, updated_at = ?5 WHERE id = ?1",
            )?
            .execute(params![id, at, status, cut(error), now])?;
            return Ok(true);
        }
        Completion::Dead { status, error } => {
            c.prepare_cached(
                "UPDATE deliveries SET status = 'dead', head = 0, attempts = attempts + 1, \
                 last_status = ?2, last_error = ?3, updated_at = ?4 WHERE id = ?1",
            )?
            .execute(params![id, status, cut(error), now])?;
        }
        Completion::Expired => {
            c.prepare_cached(
                "UPDATE deliveries SET status = 'expired', head = 0, updated_at = ?2 WHERE id = ?1",
            )?
            .execute(params![id, now])?;
        }
    }
    st.waiting -= 1;
    fix_head(c, &target, &session)?;
    Ok(true)
}

// ---------------------------------------------------------------------------
// Admin rows: masking.

/// Whether a header or query parameter name looks like a credential.
pub fn sensitive_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "auth",
        "token",
        "secret",
        "key",
        "password",
        "passwd",
        "signature",
        "cookie",
        "session",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// Masks values of credential-like query parameters (`?api_key=…`).
pub fn mask_url(url: &str) -> String {
    let Some((base, rest)) = url.split_once('?') else {
        return url.to_string();
    };
    let (query, frag) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let masked: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if sensitive_name(k) => format!("{k}=***"),
            _ => p.to_string(),
        })
        .collect();
    let mut out = format!("{base}?{}", masked.join("&"));
    if let Some(f) = frag {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn admin_row(r: &Row<'_>) -> rusqlite::Result<DeliveryRow> {
    let headers: String = r.get(8)?;
    let headers: Vec<(String, String)> = serde_json::from_str(&headers).unwrap_or_default();
    let body: Option<Vec<u8>> = r.get(9)?;
    let status: String = r.get(14)?;
    let url: String = r.get(7)?;
    Ok(DeliveryRow {
        id: r.get(0)?,
        target: r.get(1)?,
        rule: r.get(2)?,
        session_id: r.get(3)?,
        pbx: r.get(4)?,
        event_id: r.get(5)?,
        method: r.get(6)?,
        url: mask_url(&url),
        headers: headers
            .into_iter()
            .map(|(k, v)| {
                let v = if sensitive_name(&k) {
                    "***".to_string()
                } else {
                    v
                };
                (k, v)
            })
            .collect(),
        body_len: body.as_ref().map_or(0, Vec::len),
        body_excerpt: body.map(|b| {
            let end = b.len().min(EXCERPT_MAX);
            excerpt(&String::from_utf8_lossy(&b[..end]))
        }),
        idempotency_key: r.get(10)?,
        created_at: r.get(11)?,
        expires_at: r.get(12)?,
        enqueued_at: r.get(13)?,
        status: Status::parse(&status).unwrap_or(Status::Pending),
        attempts: r.get::<_, i64>(15)?.clamp(0, u32::MAX as i64) as u32,
        next_attempt_at: r.get(16)?,
        last_status: r.get(17)?,
        last_error: r.get(18)?,
        updated_at: r.get(19)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking() {
        assert_eq!(
            mask_url("https://crm/x?a=1&api_key=s3&Token=t#frag"),
            "https://crm/x?a=1&api_key=***&Token=***#frag"
        );
        assert_eq!(mask_url("https://crm/x"), "https://crm/x");
        assert!(sensitive_name("Authorization"));
        assert!(sensitive_name("X-Api-Key"));
        assert!(!sensitive_name("Content-Type"));
        let long = "é".repeat(2000);
        let e = excerpt(&long);
        assert!(e.len() <= EXCERPT_MAX && e.is_char_boundary(e.len()));
    }
}
