//! The writer thread: one connection, group commit, a savepoint per job
//! (when a group holds more than one); and
//! the checkpoint thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll as TaskPoll};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::tx::EnqueueDetail;
use super::{Durability, EnqueueOutcome, OutboxError, OutboxOptions, Result, GROUP_MAX, WAITING};
use crate::log_limit::LogLimiter;
use crate::metrics::metrics;

/// A failing disk fails every commit: one line per half minute.
static COMMIT_FAILED: LogLimiter = LogLimiter::new(std::time::Duration::from_secs(30));

pub(super) struct WriterState {
    pub(super) opts: OutboxOptions,
    /// pending + inflight rows.
    pub(super) waiting: i64,
}

pub(super) type Finish = Box<dyn FnOnce(Option<&OutboxError>) + Send>;

/// A job's body: runs inside the group transaction (or gets the error that
/// prevented it), says whether it succeeded, and returns what to do after
/// the commit.
pub(super) type JobFn = Box<
    dyn FnOnce(std::result::Result<&Connection, &OutboxError>, &mut WriterState) -> (bool, Finish)
        + Send,
>;

pub(super) struct Job {
    pub(super) durable: bool,
    pub(super) run: JobFn,
}

/// Resolves when an enqueue has been committed.
#[must_use = "the outcome arrives after the commit"]
pub struct EnqueueReceipt(pub(super) ReceiptInner);

pub(super) enum ReceiptInner {
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

/// Copies the WAL back into the database every `every` (PASSIVE: never
/// blocks the writer or readers), so the WAL stays small, each
/// checkpoint's fsync of it short, and the writer's commits never pay for
/// the database fsync.
pub(super) fn checkpoint_loop(conn: Connection, stop: mpsc::Receiver<()>, every: Duration) {
    // Anything but a timeout (the sender dropped) means stop.
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(target: "callhook::deliver", error = %e, "outbox checkpoint failed");
        }
    }
    // Last one, so a clean stop leaves (almost) nothing in the WAL.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

pub(super) fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, mut st: WriterState) {
    let mut full = true; // the pragma set at open
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if st.opts.durability == Durability::Full && batch.iter().any(|j| j.durable) {
            // Bookkeeping (claims, outcomes, reads) commits first, on its
            // own and without an fsync, so the dispatcher never waits for
            // the enqueues' fsync. Nothing a bookkeeping job reads can be
            // uncommitted enqueues of this group: those are committed
            // (fsynced) next, and their commit signals the dispatcher.
            let (durable, light): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| j.durable);
            if !light.is_empty() {
                commit_group(&conn, light, false, &mut full, &mut st);
            }
            commit_group(&conn, durable, true, &mut full, &mut st);
        } else {
            commit_group(&conn, batch, false, &mut full, &mut st);
        }
    }
}

/// Runs `batch` in one transaction (each job in its own savepoint unless
/// it is alone), commits
/// it (`synchronous=FULL` when `durable`, else NORMAL) and answers the jobs.
fn commit_group(
    conn: &Connection,
    batch: Vec<Job>,
    durable: bool,
    full: &mut bool,
    st: &mut WriterState,
) {
    if durable != *full {
        let sql = if durable {
            "PRAGMA synchronous = FULL"
        } else {
            "PRAGMA synchronous = NORMAL"
        };
        if exec(conn, sql).is_ok() {
            *full = durable;
        }
    }
    let mut finishers = Vec::with_capacity(batch.len());
    let mut any_failed = false;
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        for job in batch {
            let (_, fin) = (job.run)(Err(&e), st);
            finishers.push(fin);
        }
        for f in finishers {
            f(Some(&e));
        }
        return;
    }
    // A job alone in its group needs no savepoint of its own: when it
    // fails, the whole transaction is rolled back instead (a savepoint
    // makes SQLite copy every page the job touches into its statement
    // journal).
    let alone = batch.len() == 1;
    let mut undone = false;
    for job in batch {
        if alone {
            let (ok, fin) = (job.run)(Ok(conn), st);
            if !ok {
                any_failed = true;
                undone = true;
                let _ = conn.execute_batch("ROLLBACK");
            }
            finishers.push(fin);
            continue;
        }
        if let Err(e) = exec(conn, "SAVEPOINT job") {
            let (_, fin) = (job.run)(Err(&e), st);
            finishers.push(fin);
            any_failed = true;
            continue;
        }
        let (ok, fin) = (job.run)(Ok(conn), st);
        if ok {
            let _ = exec(conn, "RELEASE job");
        } else {
            any_failed = true;
            let _ = exec(conn, "ROLLBACK TO job");
            let _ = exec(conn, "RELEASE job");
        }
        finishers.push(fin);
    }
    // The failed job's own error reaches its caller; nothing else was in
    // the transaction it rolled back.
    let commit = if undone { Ok(()) } else { exec(conn, "COMMIT") };
    if let Err(e) = &commit {
        if let Some(suppressed) = COMMIT_FAILED.check() {
            tracing::error!(target: "callhook::deliver", error = %e, suppressed, "outbox commit failed");
        }
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

/// Runs one statement of the writer's own (cached: parsed once).
fn exec(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}
