//! The normalizer task (the daemon's own task, after the wiring): each
//! turn takes what is ready — the source events that have queued (one
//! batch), a handover (cluster mode), a tick, new rules or settings — and
//! ends by starting the batch's commit (`batch::start_batch`). At shutdown
//! it drains what the stopped sources queued.
//!
//! **The disk never stops the events.** A batch's commit (its deliveries
//! and the snapshots of the calls it changed, fsynced by the outbox's
//! writer thread) can take longer than `ami.max_stall` — a burst, a slow
//! or busy disk — and an AMI client that finds the queue full for that
//! long drops events by policy. So while a commit is in flight the task
//! keeps taking events:
//! * **single node**: AMI events are normalized into the next batch
//!   already, up to [`MAX_BATCH_EVENTS`] of them ([`MAX_AHEAD_OUT`] model
//!   events). AMI calls are never rolled back (a failed commit
//!   only marks their calls to be written again), so this changes nothing
//!   a commit decides. Anything a commit may undo — pushes, ticks
//!   (settling pushed calls), handovers — waits for the commit: the
//!   first push stops the taking (it and what follows wait in the
//!   read-ahead, in order). The committed batch's events reach the
//!   observer, in order, before the next batch's.
//! * **cluster mode**, and once the next batch is full: the sources' queue
//!   is read ahead (bounded: [`READ_AHEAD`] events) without touching the
//!   normalizer.
//!
//! A commit's work is bounded too: at most [`MAX_BATCH_SNAPSHOTS`] call
//! snapshots (those that changed first; deletions and deliveries always),
//! the rest in the next commits — a turn that finds only such leftovers
//! commits them at once.
//!
//! The next turn takes the read-ahead first, then the queue (the
//! read-ahead only holds events older than those still queued, so their
//! order is kept), with the same batch limits. Turns check stop,
//! handovers, reloads and the tick before the events (`biased`), so a
//! read-ahead that is always ready never starves them; `drain` at
//! shutdown takes the read-ahead first.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::batch::{end_batch, start_batch, take};
use super::handover::Handover;
use super::Observer;
use crate::cluster::ownership::{Kind, OwnershipHandle};
use crate::deliver::store::DeliveryStore;
use crate::model::ModelEvent;
use crate::normalize::{CallChange, Normalizer, NormalizerConfig};
use crate::notify::Heartbeat;
use crate::rules::RuleSet;
use crate::source::{now_epoch, PbxId, PushAck, PushReceipt, SourceEvent};

/// How often time-driven decisions run (maximum call age, undecided ≤ 11
/// channels, settled pushed calls).
const TICK: Duration = Duration::from_millis(250);

/// A batch (one commit of deliveries and live calls) takes whatever has
/// queued, up to this many source events. When the normalizer falls behind
/// (a burst, a slow disk) batches grow, so one fsync covers many events and
/// the AMI queue keeps draining; at a normal pace a batch is an event or
/// two.
const MAX_BATCH_EVENTS: usize = 16_384;
/// ... and up to this many model events.
const MAX_BATCH_OUT: usize = 8_192;
/// While a batch commits, the next one takes source events (see
/// [`Batch::room_while_committing`]) until they caused this many model
/// events (a memory bound: a model event is a few hundred bytes).
const MAX_AHEAD_OUT: usize = 4 * MAX_BATCH_OUT;
/// A commit writes at most this many live-call snapshots (single node):
/// about 1.5 KiB each, ~40 ms of a 2-core machine's disk. A burst touches
/// far more calls per batch; those wait, marked, for the next commits.
const MAX_BATCH_SNAPSHOTS: usize = 1_024;
/// At most this many events are read ahead while a batch commits: one
/// batch's worth. An AMI event is about 1 KiB (its text, field spans and
/// the queue entry), so a full read-ahead holds about 16 MiB, on top of
/// the sources' queue; past it the queue fills and the clients' stall
/// policy applies as before.
const READ_AHEAD: usize = MAX_BATCH_EVENTS;

/// The normalizer and what its batches are committed with.
pub(super) struct NormalizerTask {
    pub(super) normalizer: Normalizer,
    pub(super) rules: Arc<RuleSet>,
    pub(super) store: Arc<dyn DeliveryStore>,
    /// Cluster mode: what this instance owns (events of the rest are fenced).
    pub(super) ownership: Option<OwnershipHandle>,
    /// Whether the store accepts writes (readiness).
    pub(super) ok: Arc<AtomicBool>,
    /// Sees every committed batch.
    pub(super) observer: Option<Observer>,
    /// The batch being taken.
    pub(super) next: Batch,
}

/// What a batch has taken so far.
#[derive(Default)]
pub(super) struct Batch {
    out: Vec<ModelEvent>,
    acks: Vec<(PushAck, PushReceipt)>,
    /// Source events taken.
    taken: usize,
}

impl Batch {
    fn full(&self) -> bool {
        self.out.len() >= MAX_BATCH_OUT || self.taken >= MAX_BATCH_EVENTS
    }

    /// Whether it may take more while the last batch commits: up to
    /// [`MAX_BATCH_EVENTS`] source events whatever they caused (up to
    /// [`MAX_AHEAD_OUT`] model events): the next commit catches up.
    fn room_while_committing(&self) -> bool {
        self.taken < MAX_BATCH_EVENTS && self.out.len() < MAX_AHEAD_OUT
    }

    fn is_empty(&self) -> bool {
        self.taken == 0 && self.out.is_empty() && self.acks.is_empty()
    }
}

/// Whether an event may join the next batch while one commits: an AMI
/// one (never undone by a failed commit).
fn overlaps(ev: &SourceEvent) -> bool {
    !matches!(ev, SourceEvent::Push { .. })
}

/// What the task waits on.
pub(super) struct Inputs {
    /// The sources' queue.
    pub(super) events: Events,
    /// Ownership changes (cluster mode).
    pub(super) handover: mpsc::UnboundedReceiver<Handover>,
    /// The rules, replaced on reload.
    pub(super) rules: watch::Receiver<Arc<RuleSet>>,
    /// The normalizer's settings, replaced on reload.
    pub(super) settings: watch::Receiver<NormalizerConfig>,
    /// Shutdown.
    pub(super) stop: CancellationToken,
    /// Beaten every turn (the watchdog).
    pub(super) heartbeat: Heartbeat,
}

/// The sources' queue with what was read ahead of it during a commit.
pub(super) struct Events {
    rx: mpsc::Receiver<SourceEvent>,
    /// Taken from `rx` while a batch committed, not yet normalized; older
    /// than anything still in `rx`.
    ahead: VecDeque<SourceEvent>,
    /// `rx` said every sender is gone.
    closed: bool,
}

impl Events {
    pub(super) fn new(rx: mpsc::Receiver<SourceEvent>) -> Self {
        Events {
            rx,
            ahead: VecDeque::new(),
            closed: false,
        }
    }

    /// The next event: at once from the read-ahead, else when one is
    /// queued; `None` once every source is gone and nothing is left.
    /// Cancel-safe (nothing is taken unless it is returned).
    async fn next(&mut self) -> Option<SourceEvent> {
        if let Some(ev) = self.ahead.pop_front() {
            return Some(ev);
        }
        if self.closed {
            return None;
        }
        self.rx.recv().await
    }

    /// The next event if one is ready, in order.
    fn try_next(&mut self) -> Option<SourceEvent> {
        self.ahead.pop_front().or_else(|| self.rx.try_recv().ok())
    }

    /// While a batch commits: the next event if it may join the next batch
    /// already (see [`overlaps`]) and `take` says it may; otherwise reads
    /// ahead (returns `None`). Never returns while there is nothing to do.
    /// Cancel-safe.
    async fn while_committing(&mut self, take: bool) -> Option<SourceEvent> {
        if take {
            if let Some(ev) = self.try_next_overlapping() {
                return Some(ev);
            }
            if self.ahead.is_empty() && !self.closed {
                match self.rx.recv().await {
                    Some(ev) if overlaps(&ev) => return Some(ev),
                    Some(ev) => self.ahead.push_back(ev),
                    None => self.closed = true,
                }
                return None;
            }
        }
        self.read_ahead().await;
        None
    }

    /// The next event if it is ready and may join the next batch while one
    /// commits; one that may not stays first in line.
    fn try_next_overlapping(&mut self) -> Option<SourceEvent> {
        if let Some(front) = self.ahead.front() {
            return if overlaps(front) {
                self.ahead.pop_front()
            } else {
                None
            };
        }
        match self.rx.try_recv() {
            Ok(ev) if overlaps(&ev) => Some(ev),
            Ok(ev) => {
                self.ahead.push_back(ev);
                None
            }
            Err(_) => None,
        }
    }

    /// Waits for queued events and moves them to the read-ahead, up to
    /// [`READ_AHEAD`]; never returns when that is full or the sources are
    /// gone. Cancel-safe.
    async fn read_ahead(&mut self) {
        if self.closed || self.ahead.len() >= READ_AHEAD {
            return std::future::pending().await;
        }
        match self.rx.recv().await {
            Some(ev) => self.ahead.push_back(ev),
            None => {
                self.closed = true;
                return;
            }
        }
        while self.ahead.len() < READ_AHEAD {
            match self.rx.try_recv() {
                Ok(ev) => self.ahead.push_back(ev),
                Err(_) => break,
            }
        }
    }
}

impl NormalizerTask {
    /// Turns until shutdown (or until every source is gone).
    pub(super) async fn run(&mut self, inp: &mut Inputs) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Single node: the next batch's AMI events are normalized while a
        // batch commits (cluster mode: handovers move calls between
        // batches, so nothing is taken ahead of them).
        let overlap = self.ownership.is_none();
        let mut open = true;
        // Whether the last commit succeeded: only then are snapshots left
        // over by it committed at once (a failing store is not retried in
        // a loop: the next events or the tick do).
        let mut stored = true;
        while open {
            inp.heartbeat.beat();
            let n = &mut self.normalizer;
            let b = &mut self.next;
            n.begin_batch();
            // Biased: the events branch is always ready while there is a
            // read-ahead, so it comes after the rest; last, a batch that
            // already holds something (taken while the last one committed,
            // or snapshots that did not fit in it) is committed at once.
            tokio::select! {
                biased;
                _ = inp.stop.cancelled() => open = false,
                Some(h) = inp.handover.recv() => handover(n, h),
                Ok(()) = inp.rules.changed() => self.rules = inp.rules.borrow_and_update().clone(),
                Ok(()) = inp.settings.changed() => {
                    n.reconfigure(inp.settings.borrow_and_update().clone());
                }
                _ = tick.tick() => n.tick(now_epoch(), &mut b.out),
                ev = inp.events.next(), if !b.full() => match ev {
                    Some(ev) => fill(n, &self.ownership, b, ev, |b| !b.full(), || {
                        inp.events.try_next()
                    }),
                    None => open = false,
                },
                () = std::future::ready(()), if !b.is_empty() || (stored && n.has_dirty()) => {}
            }
            let snapshots = if overlap {
                MAX_BATCH_SNAPSHOTS
            } else {
                usize::MAX
            };
            let (batch, commit) = self.start(snapshots);
            tokio::pin!(commit);
            // While it commits: the next batch's AMI events, then reading
            // ahead.
            let result = loop {
                let b = &mut self.next;
                let more = overlap && b.room_while_committing();
                tokio::select! {
                    biased;
                    r = &mut commit => break r,
                    ev = inp.events.while_committing(more) => {
                        // None: read ahead.
                        let Some(ev) = ev else { continue };
                        let n = &mut self.normalizer;
                        fill(n, &self.ownership, b, ev, Batch::room_while_committing, || {
                            inp.events.try_next_overlapping()
                        });
                    }
                }
            };
            stored = result.is_ok();
            end_batch(&mut self.normalizer, batch, result, &mut self.observer);
        }
    }

    /// Shutdown, once the sources have stopped: what the last turns took
    /// ahead, what was read ahead and what the sources queued, then the
    /// last commit, with every change. Single node: the records of pushed
    /// calls that are over are written without waiting for them to
    /// settle. Cluster mode: those sessions stay stored; the team's next
    /// owner settles them (a late push still finds its call).
    pub(super) async fn drain(&mut self, events: &mut Events) {
        // Closed: nothing can be queued after what `try_next` takes here.
        events.rx.close();
        self.normalizer.begin_batch();
        while let Some(ev) = events.try_next() {
            let b = &mut self.next;
            b.taken += 1;
            take(
                &mut self.normalizer,
                &self.ownership,
                ev,
                &mut b.out,
                &mut b.acks,
            );
        }
        if self.ownership.is_none() {
            self.normalizer
                .settle_pushed(now_epoch(), &mut self.next.out);
        }
        let (batch, commit) = self.start(usize::MAX);
        let result = commit.await;
        end_batch(&mut self.normalizer, batch, result, &mut self.observer);
    }

    /// Starts the commit of the batch taken so far (see `start_batch`).
    fn start(&mut self, max_snapshots: usize) -> (super::batch::Committing, super::batch::Commit) {
        let b = std::mem::take(&mut self.next);
        start_batch(
            &self.rules,
            &self.store,
            &self.ownership,
            &self.ok,
            &mut self.normalizer,
            b.out,
            b.acks,
            max_snapshots,
        )
    }
}

/// Takes `first` into the batch, then what `next` has ready for as long
/// as `room` says the batch has room.
fn fill(
    n: &mut Normalizer,
    ownership: &Option<OwnershipHandle>,
    b: &mut Batch,
    first: SourceEvent,
    room: fn(&Batch) -> bool,
    mut next: impl FnMut() -> Option<SourceEvent>,
) {
    let mut ev = Some(first);
    while let Some(e) = ev {
        b.taken += 1;
        take(n, ownership, e, &mut b.out, &mut b.acks);
        ev = if room(b) { next() } else { None };
    }
}

/// Applies a change of ownership between two batches.
fn handover(n: &mut Normalizer, h: Handover) {
    match h {
        Handover::Forget { id, done } => {
            // Its calls (push sessions too) are in the calls bucket as of
            // the last committed batch: the next owner resumes them,
            // settles included.
            let calls = n.forget(&id);
            if calls > 0 {
                info!(pbx = %id, calls, "calls in progress handed over to the new owner");
            }
            let _ = done.send(());
        }
        Handover::Restore {
            item: (kind, id),
            snapshots,
            done,
        } => {
            let pid: PbxId = id.as_str().into();
            if kind == Kind::Team {
                let r = n.restore_push(&pid, &snapshots);
                info!(team = %id, calls = r.calls, skipped = r.skipped, "push sessions of the previous owner restored before the team's pushes are consumed");
            } else {
                let r = n.restore(&pid, &snapshots);
                info!(pbx = %id, calls = r.calls, skipped = r.skipped, "live calls of the previous owner restored; the login's snapshot settles those that ended meanwhile");
            }
            let _ = done.send(());
        }
        Handover::Rewrite {
            item: (kind, id),
            sessions,
        } => {
            let pid: PbxId = id.as_str().into();
            // Known to the normalizer even with no call (so the marks hold).
            if kind == Kind::Team {
                n.restore_push(&pid, &[]);
            } else {
                n.restore(&pid, &[]);
            }
            let again: Vec<CallChange> = sessions
                .into_iter()
                .map(|session| CallChange {
                    pbx: pid.clone(),
                    session,
                    snapshot: None,
                })
                .collect();
            tracing::debug!(id = %id, calls = again.len(), "stored calls written again after the takeover");
            n.requeue_dirty(&again);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: usize) -> SourceEvent {
        SourceEvent::AmiDisconnected {
            pbx: "p".into(),
            at: i as f64,
        }
    }

    fn at(e: Option<SourceEvent>) -> Option<usize> {
        match e {
            Some(SourceEvent::AmiDisconnected { at, .. }) => Some(at as usize),
            _ => None,
        }
    }

    #[tokio::test]
    async fn the_read_ahead_comes_first_and_keeps_the_order() {
        let (tx, rx) = mpsc::channel(16);
        let mut events = Events::new(rx);
        for i in 0..5 {
            tx.send(ev(i)).await.unwrap();
        }
        events.read_ahead().await;
        assert_eq!(events.ahead.len(), 5);
        tx.send(ev(5)).await.unwrap();
        assert_eq!(at(events.next().await), Some(0));
        let rest: Vec<_> = std::iter::from_fn(|| at(events.try_next())).collect();
        assert_eq!(rest, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn the_read_ahead_is_bounded_and_then_waits() {
        let (tx, rx) = mpsc::channel(READ_AHEAD + 10);
        let mut events = Events::new(rx);
        for i in 0..READ_AHEAD + 10 {
            tx.try_send(ev(i)).unwrap();
        }
        events.read_ahead().await;
        assert_eq!(events.ahead.len(), READ_AHEAD);
        let more = tokio::time::timeout(Duration::from_millis(20), events.read_ahead()).await;
        assert!(more.is_err(), "a full read-ahead must not take more");
        // What stayed queued follows the read-ahead.
        let all: Vec<_> = std::iter::from_fn(|| at(events.try_next())).collect();
        assert_eq!(all, (0..READ_AHEAD + 10).collect::<Vec<_>>());
    }

    fn push(i: usize) -> SourceEvent {
        SourceEvent::Push {
            team: "t".into(),
            received_at: i as f64,
            event: Box::default(),
            ack: None,
        }
    }

    /// While a batch commits, AMI events may join the next batch; the
    /// first push stops that (a failed commit may undo pushes): it and
    /// what follows are read ahead, in order, for the next turn.
    #[tokio::test]
    async fn a_push_waits_for_the_commit_and_keeps_its_place() {
        let (tx, rx) = mpsc::channel(16);
        let mut events = Events::new(rx);
        tx.send(ev(0)).await.unwrap();
        tx.send(push(1)).await.unwrap();
        tx.send(ev(2)).await.unwrap();
        assert_eq!(at(events.while_committing(true).await), Some(0));
        assert!(events.try_next_overlapping().is_none());
        assert!(events.while_committing(true).await.is_none());
        assert!(events.try_next_overlapping().is_none(), "behind the push");
        let rest: Vec<f64> = std::iter::from_fn(|| events.try_next())
            .map(|e| match e {
                SourceEvent::Push { received_at, .. } => received_at,
                SourceEvent::AmiDisconnected { at, .. } => at,
                _ => f64::NAN,
            })
            .collect();
        assert_eq!(rest, vec![1.0, 2.0]);
    }

    #[tokio::test]
    async fn gone_sources_end_after_the_read_ahead() {
        let (tx, rx) = mpsc::channel(4);
        let mut events = Events::new(rx);
        tx.send(ev(0)).await.unwrap();
        drop(tx);
        events.read_ahead().await;
        events.read_ahead().await;
        assert!(events.closed);
        let idle = tokio::time::timeout(Duration::from_millis(20), events.read_ahead()).await;
        assert!(idle.is_err(), "no busy loop once the sources are gone");
        assert_eq!(at(events.next().await), Some(0));
        assert!(events.next().await.is_none());
    }
}
