//! The ends of attempts, batched: [`Outbox::complete`] and
//! [`Outbox::complete_and_claim`].
//!
//! An attempt's outcome is queued in memory; the first outcome queued
//! while none is waiting sends ONE writer job, which, when the writer runs
//! it, takes every outcome queued by then and records them all in the same
//! transaction. At 20 000 deliveries/s that is a handful of outcomes per
//! commit instead of one job, one savepoint and one commit share each.
//!
//! Each outcome is one `UPDATE … RETURNING` (the row must still be
//! `inflight`) and, when the row left the queue (`done`, `dead`,
//! `expired`), one `UPDATE` that makes its call's next row the head. With
//! `complete_and_claim` the same transaction also claims the target's next
//! ready heads, so a dispatcher slot goes straight from one request to the
//! next without a separate poll. [`Outbox::record`] queues an outcome
//! without waiting for it: a slot sends its next delivery (claimed by its
//! previous outcome's transaction, so committed `inflight`) while this
//! one is recorded, and the writer's round trip stays off the HTTP path.
//! The job's outcomes share one savepoint (a savepoint per outcome made
//! SQLite copy the same hot pages into its statement journal once per
//! outcome: ~40 % of the writer's CPU); only
//! when something in it fails are they recorded again one by one, each in
//! its own savepoint, so one that fails does not undo the others.
//!
//! These are bookkeeping commits (`synchronous=NORMAL`, see the writer):
//! a done-mark lost to a power cut only means the request is sent again
//! with the same `webhook-id` and `Idempotency-Key` (at-least-once).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::schema::waiting_sql;
use super::tx::claim_ready;
use super::writer::{Finish, Job, WriterState};
use super::{excerpt, Claimed, Completion, Outbox, OutboxError, Result};
use crate::source::now_epoch;

/// What [`Outbox::complete_and_claim`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Finished {
    /// The outcome was recorded; false when the row was no longer in flight
    /// (a restart had put it back).
    pub recorded: bool,
    /// The target's next ready heads, now `inflight`, oldest due first (as
    /// many as were asked for and ready).
    pub next: Vec<Claimed>,
    /// Rows met while claiming that could not be decoded and were moved
    /// aside (dead with the reason): (id, what is wrong).
    pub damaged: Vec<(i64, String)>,
}

/// An outcome waiting for the writer.
struct Pending {
    id: i64,
    how: Completion,
    /// Claim up to this many of this target's next ready heads in the same
    /// transaction.
    claim: Option<(String, usize)>,
    reply: oneshot::Sender<Result<Finished>>,
}

/// Outcomes queued for the next writer job.
#[derive(Default)]
pub(super) struct Queue(Mutex<Vec<Pending>>);

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Resolves once a queued outcome is committed (see [`Outbox::record`]).
#[must_use = "the outcome is recorded (and the claimed rows handed) after the commit"]
pub struct Recording(oneshot::Receiver<Result<Finished>>);

impl Future for Recording {
    type Output = Result<Finished>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(OutboxError::Closed)))
    }
}

impl Outbox {
    /// Records the end of an attempt on an `inflight` row; false when the
    /// row was not in flight (already recovered by a restart).
    pub async fn complete(&self, id: i64, how: Completion) -> Result<bool> {
        Ok(self.record(id, how, None).await?.recorded)
    }

    /// Records the end of an attempt like [`complete`](Self::complete) and,
    /// with `claim`, claims that target's next ready head in the same
    /// transaction (it becomes `inflight`, as with [`poll`](Self::poll)).
    pub async fn complete_and_claim(
        &self,
        id: i64,
        how: Completion,
        claim: Option<String>,
    ) -> Result<Finished> {
        self.record(id, how, claim.map(|t| (t, 1))).await
    }

    /// Queues the end of an attempt for the writer's next job without
    /// waiting (no I/O on the caller's thread) and, with `claim` =
    /// `(target, n)`, claims up to `n` of that target's ready heads in the
    /// same transaction. The returned [`Recording`] resolves after the
    /// commit; the claimed rows may be sent only then.
    pub fn record(&self, id: i64, how: Completion, claim: Option<(String, usize)>) -> Recording {
        let (reply, rx) = oneshot::channel();
        let first = {
            let mut q = self.done.lock();
            q.push(Pending {
                id,
                how,
                claim,
                reply,
            });
            q.len() == 1
        };
        if first {
            let queue = self.done.clone();
            let job = Job {
                durable: false,
                run: Box::new(move |conn, st| run(&queue, conn, st)),
            };
            if !self.send(job) {
                // The writer is gone: the dropped senders answer `Closed`.
                self.done.lock().clear();
            }
        }
        Recording(rx)
    }
}

/// The writer job: records every outcome queued by now.
fn run(
    queue: &Arc<Queue>,
    conn: std::result::Result<&Connection, &OutboxError>,
    st: &mut WriterState,
) -> (bool, Finish) {
    let batch = std::mem::take(&mut *queue.lock());
    let c = match conn {
        Ok(c) => c,
        Err(e) => {
            let e = e.clone();
            let fin: Finish = Box::new(move |_| {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            });
            return (false, fin);
        }
    };
    let now = now_epoch();
    let results = match all(c, st, &batch, now) {
        Ok(r) => r,
        // Something failed (the disk, a damaged page): every outcome again,
        // each on its own, so the others still stand.
        Err(_) => batch.iter().map(|p| one(c, st, p, now)).collect(),
    };
    let fin: Finish = Box::new(move |commit_err| {
        for (p, r) in batch.into_iter().zip(results) {
            let out = match commit_err {
                Some(e) => Err(e.clone()),
                None => r,
            };
            let _ = p.reply.send(out);
        }
    });
    (true, fin)
}

/// Every outcome (and its claim) in ONE savepoint: SQLite copies each page
/// a savepoint touches into its statement journal the first time, and the
/// outcomes of a batch share their pages (the table's and the indexes'
/// last pages), so one savepoint per outcome would copy the same pages
/// again for each. All or nothing: on an error the savepoint is rolled back
/// (the waiting count too) and the caller records them one by one.
fn all(
    c: &Connection,
    st: &mut WriterState,
    batch: &[Pending],
    now: f64,
) -> Result<Vec<Result<Finished>>> {
    let waiting = st.waiting;
    c.prepare_cached("SAVEPOINT outcomes")?.execute([])?;
    let r = batch
        .iter()
        .map(|p| {
            let mut left = 0;
            let mut f = record(c, p, now, &mut left)?;
            st.waiting -= left;
            if let (true, Some((target, n))) = (f.recorded, &p.claim) {
                claim_ready(c, st, target, now, *n, &mut f.next, &mut f.damaged)?;
            }
            Ok(Ok(f))
        })
        .collect::<Result<Vec<_>>>();
    match r {
        Ok(r) => {
            c.prepare_cached("RELEASE outcomes")?.execute([])?;
            Ok(r)
        }
        Err(e) => {
            st.waiting = waiting;
            c.prepare_cached("ROLLBACK TO outcomes")?.execute([])?;
            c.prepare_cached("RELEASE outcomes")?.execute([])?;
            Err(e)
        }
    }
}

/// One outcome, in its own savepoint (after [`all`] failed).
fn one(c: &Connection, st: &mut WriterState, p: &Pending, now: f64) -> Result<Finished> {
    c.prepare_cached("SAVEPOINT outcome")?.execute([])?;
    let mut left = 0;
    let r = record(c, p, now, &mut left).and_then(|mut f| {
        if let (true, Some((target, n))) = (f.recorded, &p.claim) {
            claim_next(c, st, target, *n, now, &mut f)?;
        }
        Ok(f)
    });
    match &r {
        Ok(_) => {
            c.prepare_cached("RELEASE outcome")?.execute([])?;
            st.waiting -= left;
        }
        Err(_) => {
            c.prepare_cached("ROLLBACK TO outcome")?.execute([])?;
            c.prepare_cached("RELEASE outcome")?.execute([])?;
        }
    }
    r
}

/// Claims the target's next ready heads for the slot. Bookkeeping on top of
/// the outcome: should it fail, the outcome stands and the slot goes back
/// to the dispatcher's loop.
fn claim_next(
    c: &Connection,
    st: &mut WriterState,
    target: &str,
    n: usize,
    now: f64,
    f: &mut Finished,
) -> Result<()> {
    let (damaged, waiting) = (f.damaged.len(), st.waiting);
    c.prepare_cached("SAVEPOINT claim")?.execute([])?;
    let mut claimed = Vec::new();
    match claim_ready(c, st, target, now, n, &mut claimed, &mut f.damaged) {
        Ok(()) => f.next = claimed,
        Err(e) => {
            tracing::debug!(target: "callhook::deliver", error = %e, "outbox: claiming a slot's next delivery failed (the loop's poll will)");
            c.prepare_cached("ROLLBACK TO claim")?.execute([])?;
            f.damaged.truncate(damaged);
            st.waiting = waiting;
        }
    }
    c.prepare_cached("RELEASE claim")?.execute([])?;
    Ok(())
}

/// Records one outcome; `left` is set to 1 when the row left the queue.
fn record(c: &Connection, p: &Pending, now: f64, left: &mut i64) -> Result<Finished> {
    let cut = |s: &Option<String>| s.as_deref().map(excerpt);
    let key = |r: &rusqlite::Row<'_>| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?));
    macro_rules! ret {
        () => {
            " AND status = 'inflight' RETURNING target, session_id"
        };
    }
    let chain: Option<(String, String)> = match &p.how {
        Completion::Delivered { status } => c
            .prepare_cached(concat!(
                "UPDATE deliveries SET status = 'done', head = 0, attempts = attempts + 1, \
                 last_status = ?2, last_error = NULL, updated_at = ?3 WHERE id = ?1",
                ret!()
            ))?
            .query_row(params![p.id, status.to_string(), now], key)
            .optional()?,
        Completion::Retry { at, status, error } => {
            // Stays its call's head, waiting for its next attempt.
            let hit = c
                .prepare_cached(concat!(
                    "UPDATE deliveries SET status = 'pending', attempts = attempts + 1, \
                     next_attempt_at = ?2, last_status = ?3, last_error = ?4, updated_at = ?5 \
                     WHERE id = ?1",
                    ret!()
                ))?
                .query_row(params![p.id, at, status, cut(error), now], key)
                .optional()?;
            return Ok(Finished {
                recorded: hit.is_some(),
                ..Default::default()
            });
        }
        Completion::Dead { status, error } => c
            .prepare_cached(concat!(
                "UPDATE deliveries SET status = 'dead', head = 0, attempts = attempts + 1, \
                 last_status = ?2, last_error = ?3, updated_at = ?4 WHERE id = ?1",
                ret!()
            ))?
            .query_row(params![p.id, status, cut(error), now], key)
            .optional()?,
        Completion::Expired => c
            .prepare_cached(concat!(
                "UPDATE deliveries SET status = 'expired', head = 0, updated_at = ?2 \
                 WHERE id = ?1",
                ret!()
            ))?
            .query_row(params![p.id, now], key)
            .optional()?,
    };
    let Some((target, session)) = chain else {
        return Ok(Finished::default());
    };
    *left = 1;
    next_head(c, &target, &session)?;
    Ok(Finished {
        recorded: true,
        ..Default::default()
    })
}

/// Hands a call's turn to its next row after its head (the row just
/// finished, which was in flight) left the queue: the oldest waiting row
/// becomes the head, unless it is itself in flight. Only heads are
/// claimed, and enqueue, retry and repair keep at most one head and
/// nothing else in flight per call (`fix_head`), so no other head can
/// exist here: one statement instead of `fix_head`'s four.
fn next_head(c: &Connection, target: &str, session: &str) -> Result<()> {
    c.prepare_cached(concat!(
        "UPDATE deliveries SET head = 1 WHERE id = (\
         SELECT id FROM deliveries INDEXED BY deliveries_chain \
         WHERE target = ?1 AND session_id = ?2 AND ",
        waiting_sql!(),
        " ORDER BY id LIMIT 1) AND status = 'pending' AND head = 0"
    ))?
    .execute(params![target, session])?;
    Ok(())
}
