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
//! transaction (each inside its own savepoint when there are several, so
//! one failing operation does not undo the others; a lone one that fails
//! rolls the transaction back), then answers each caller. A commit that contains an
//! enqueue or an admin change runs with `synchronous=FULL` (the WAL is
//! fsynced before the caller hears "stored"); pure bookkeeping of the
//! dispatcher (claiming rows, recording attempts) runs with
//! `synchronous=NORMAL`, which survives a process crash (`kill -9`) and at
//! worst, on power loss, re-sends a request whose success was not yet on disk
//! (at-least-once either way). When a group holds both, the bookkeeping is
//! committed first, on its own, so the dispatcher never waits for an
//! enqueue's fsync (and never sees the group's enqueues before they are
//! fsynced). Outcomes of attempts are batched once more (see
//! [`completion`]): every outcome queued when the writer gets to them is
//! one job. Callers never touch SQLite: [`Outbox::submit`]
//! only queues (no I/O, a few µs) and returns a receipt that resolves after
//! the commit; [`Outbox::enqueue`] is `submit(..).await`. Reads for the admin
//! API ([`Outbox::list`], [`Outbox::stats`]) use a second, read-only
//! connection on a blocking thread, so they never hold up writes. A third
//! thread (`callhook-outbox-ckpt`) copies the WAL into the database
//! (`PRAGMA wal_checkpoint(PASSIVE)`, automatic checkpoints are off), so
//! the writer's commits never pay for the database fsync: once a second
//! with `synchronous=FULL`, every 100 ms with NORMAL. With NORMAL the
//! checkpoint is the only fsync of the WAL, of everything written since
//! the last one: at 1 000 events/s ~50 MB a second (every commit writes
//! each page it changed as a 4 KiB frame), and a once-a-second
//! checkpoint's fsync of that stalled the writer's WAL writes behind it
//! (NORMAL's samples over its p99 gathered right after each checkpoint; at
//! 100 ms they spread and the p99 halved in the same runs). With FULL each
//! commit has fsynced the WAL already and a checkpoint adds the database's
//! fsync, which competes with the commits': FULL's p99 was higher at
//! 100 ms than at 1 s. Hot queries name
//! their index (`INDEXED BY`): without statistics SQLite would otherwise
//! pick the `status` index and scan every waiting row (a 10× slowdown with a
//! backlog of a few thousand rows).
//!
//! **Measured** (2 vCPU VM, ext4, release build, `synchronous=FULL` vs
//! `NORMAL`): one caller enqueuing one request at a time waits p50 0.5 ms /
//! p99 1–1.5 ms (FULL) vs 0.06 / 0.3 ms (NORMAL); a batch of 10 commits in
//! 0.85 ms vs 0.5 ms; [`Outbox::submit`] costs the caller ≈ 1 µs, and 20 000
//! concurrent submits are group-committed at ≈ 30 000 rows/s in both modes.
//! End to end to a local sink (`benches/deliver.rs`, ratios to direct
//! reqwest in the same run, on a shared machine whose load moved the
//! baseline itself by up to 2× within a run): 0.28–0.45× (FULL) of the
//! baseline's deliveries/s, bound by CPU (~99 µs per delivery, 43 of them
//! in the writer, against ~34 µs per direct request); see the README's
//! Performance section for the latency and its fsync baseline. FULL is
//! the default.
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

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, Notify};

use crate::log_limit::LogLimiter;
use crate::metrics::metrics;
use crate::source::now_epoch;

use super::DeliveryRequest;

mod admin;
mod completion;
mod conceal;
mod handoff;
pub mod live;
pub mod repair;
mod schema;
mod tx;
mod types;
mod writer;

pub use admin::{mask_url, sensitive_name};
pub use completion::{Finished, Recording};
pub use handoff::{Handed, PollFlag};
pub use live::{LiveCall, LiveCallWrite};
use schema::WAITING;
pub use schema::{db_path, quick_check, secure_state_dir};
use tx::{fix_head, insert_batch, poll_tx, revive, EnqueueDetail};
pub use types::{
    ClaimWant, Claimed, Completion, DeliveryRow, EnqueueOutcome, ListFilter, OutboxStats,
    PollResult, Status,
};
pub use writer::EnqueueReceipt;
use writer::{checkpoint_loop, writer_loop, Finish, Job, ReceiptInner, WriterState};

/// Refusals repeat for every event while the outbox is full: one line per
/// half minute (the metrics count each).
static REFUSED: LogLimiter = LogLimiter::new(Duration::from_secs(30));
/// Requests that can never be sent come from hostile input: same.
static REFUSED_REQUESTS: LogLimiter = LogLimiter::new(Duration::from_secs(30));

/// Schema version written to `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 2;
/// Largest stored excerpt of a response body or error, in bytes.
pub const EXCERPT_MAX: usize = 2048;
/// Requests queued in memory for the writer beyond which submits are refused.
pub const MAX_QUEUED: usize = 100_000;
/// Operations committed together at most.
const GROUP_MAX: usize = 512;
/// How often the WAL is checkpointed into the database with
/// [`Durability::Normal`], by default: often, because there the checkpoint
/// is the only fsync of the WAL (see the module docs).
pub const CHECKPOINT_EVERY_NORMAL: Duration = Duration::from_millis(100);
/// The same with [`Durability::Full`]: every commit has fsynced the WAL
/// already, a checkpoint adds the database's fsync, which competes with
/// the commits' (FULL's p99 was higher at 100 ms than at 1 s).
pub const CHECKPOINT_EVERY_FULL: Duration = Duration::from_secs(1);
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
    /// How often the checkpoint thread copies the WAL into the database;
    /// `None`: by durability ([`CHECKPOINT_EVERY_FULL`],
    /// [`CHECKPOINT_EVERY_NORMAL`]). Not a config key: for measurements.
    pub checkpoint_every: Option<Duration>,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            done_retention: Duration::from_secs(24 * 3600),
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            durability: Durability::Full,
            checkpoint_every: None,
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
    /// The database file is damaged (integrity check at open, or SQLite
    /// reported corruption).
    #[error("the outbox {path} is damaged ({details}); stop callhook and run `callhook outbox recover --config FILE`: it keeps every readable delivery and moves the damaged file aside (`callhook outbox check` shows what is wrong)")]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What SQLite found.
        details: String,
    },
}

impl From<rusqlite::Error> for OutboxError {
    fn from(e: rusqlite::Error) -> Self {
        OutboxError::Db(e.to_string())
    }
}

type Result<T> = std::result::Result<T, OutboxError>;

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

/// The durable outbox. Cheap to share (`Arc<Outbox>`); every method may be
/// called from async code without blocking the runtime.
pub struct Outbox {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    reader: Arc<Mutex<Connection>>,
    queued: Arc<AtomicUsize>,
    notify: Arc<Notify>,
    done: Arc<completion::Queue>,
    handoff: Arc<handoff::Handoff>,
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
        let (conn, recovered) = schema::open_writer(state_dir, recover, recover)?;
        let path = schema::db_path(state_dir);
        if recover {
            let healed = tx::repair_heads(&conn)?;
            if healed > 0 {
                tracing::warn!(target: "callhook::deliver", calls = healed, "outbox: calls whose deliveries had lost their place in line got it back");
            }
        }
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
            .spawn({
                let every = opts.checkpoint_every.unwrap_or(match opts.durability {
                    Durability::Full => CHECKPOINT_EVERY_FULL,
                    Durability::Normal => CHECKPOINT_EVERY_NORMAL,
                });
                move || checkpoint_loop(checkpoint_conn, stop_rx, every)
            })
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
            done: Arc::default(),
            handoff: Arc::default(),
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
        C: FnOnce(&mut R) + Send + 'static,
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
                        (None, mut r) => {
                            if let Ok(v) = &mut r {
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
        self.submit_with_calls(reqs, Vec::new())
    }

    /// Like [`submit`](Self::submit), and stores the live calls the same
    /// events changed in the same transaction (see [`live`]): after a
    /// crash the stored calls are exactly those whose deliveries so far
    /// are committed. The calls are written even when the requests are
    /// refused (the backlog or the cap): they are what the model holds.
    pub fn submit_with_calls(
        &self,
        mut reqs: Vec<DeliveryRequest>,
        calls: Vec<LiveCallWrite>,
    ) -> EnqueueReceipt {
        let mut n = reqs.len();
        if n == 0 && calls.is_empty() {
            return EnqueueReceipt(ReceiptInner::Ready(Some(Ok(EnqueueOutcome::default()))));
        }
        let mut pre_rejected = 0;
        let queued = self.queued.fetch_add(n, Ordering::AcqRel);
        if n > 0 && queued + n > MAX_QUEUED {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            let mut per = BTreeMap::<String, u64>::new();
            for r in &reqs {
                *per.entry(r.target.clone()).or_default() += 1;
            }
            record_rejected(&per);
            if let Some(suppressed) = REFUSED.check() {
                tracing::warn!(
                    target: "callhook::deliver",
                    rows = n,
                    suppressed,
                    "outbox writer backlog is full: deliveries refused"
                );
            }
            if calls.is_empty() {
                return EnqueueReceipt(ReceiptInner::Ready(Some(Ok(EnqueueOutcome {
                    rejected_full: n,
                    ..Default::default()
                }))));
            }
            pre_rejected = n;
            reqs.clear();
            n = 0;
        }
        let counter = self.queued.clone();
        let notify = self.notify.clone();
        let (handoff, handoff_w) = (self.handoff.clone(), self.handoff.clone());
        let rx = self.call(
            true,
            move |conn, st| {
                counter.fetch_sub(n, Ordering::AcqRel);
                let now = now_epoch();
                let mut d = insert_batch(conn, st, &reqs, now)?;
                live::write(conn, &calls, now)?;
                d.outcome.rejected_full += pre_rejected;
                d.claim = handoff::claim_offered(conn, st, &handoff_w, d.inserted.keys(), now)?;
                Ok(d)
            },
            move |d: &mut EnqueueDetail| {
                handoff::hand_over(&handoff, std::mem::take(&mut d.claim));
                let m = metrics();
                for (t, c) in &d.inserted {
                    m.deliveries_enqueued.with_label_values(&[t]).inc_by(*c);
                }
                for (t, c) in &d.duplicates {
                    m.deliveries_duplicate.with_label_values(&[t]).inc_by(*c);
                }
                record_rejected(&d.rejected);
                if d.outcome.rejected_full > 0 {
                    if let Some(suppressed) = REFUSED.check() {
                        tracing::warn!(
                            target: "callhook::deliver",
                            rows = d.outcome.rejected_full,
                            suppressed,
                            "outbox is at its cap (max_rows): deliveries refused"
                        );
                    }
                }
                for (t, c) in &d.refused {
                    m.deliveries.with_label_values(&[t, "dead"]).inc_by(*c);
                }
                if d.outcome.refused > 0 && REFUSED_REQUESTS.check().is_some() {
                    tracing::warn!(
                        target: "callhook::deliver",
                        rows = d.outcome.refused,
                        "requests that can never be sent stored dead with the reason (see `callhook deliveries list --dead`)"
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
        let (notify, poll) = (self.notify.clone(), self.poll_flag());
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
                    poll.raise();
                    notify.notify_one();
                }
            },
        )
        .await
        .unwrap_or(Err(OutboxError::Closed))
    }

    /// Sends every `dead` row again; returns how many.
    pub async fn retry_all_dead(&self) -> Result<usize> {
        let (notify, poll) = (self.notify.clone(), self.poll_flag());
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
                    poll.raise();
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
