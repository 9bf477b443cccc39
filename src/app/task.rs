//! The normalizer task (the daemon's own task, after the wiring): each
//! turn takes what is ready — the source events that have queued (one
//! batch), a handover (cluster mode), a tick, new rules or settings — and
//! ends with the batch committed (`batch::finish_batch`) before the next
//! turn. At shutdown it drains what the stopped sources queued.
//!
//! **Read-ahead during a commit.** A batch's commit (its deliveries and a
//! snapshot of every call it touched, fsynced by the outbox's writer
//! thread) can take longer than `ami.max_stall` in a burst, and an AMI
//! client that finds the queue full for that long drops events by policy.
//! So while the commit is in flight the task keeps emptying the sources'
//! queue into [`Events`]' read-ahead (bounded: [`READ_AHEAD`] events), and
//! does nothing else with them: the normalizer is untouched until the
//! commit has ended, so a batch still commits or rolls back as one. The
//! next turn takes the read-ahead first, then the queue (the read-ahead
//! only holds events older than those still queued, so their order is
//! kept), with the same batch limits. Turns check stop, handovers, reloads
//! and the tick before the events (`biased`), so a read-ahead that is
//! always ready never starves them; `drain` at shutdown takes the
//! read-ahead first.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::batch::{finish_batch, take};
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
        let mut out: Vec<ModelEvent> = Vec::new();
        let mut acks: Vec<(PushAck, PushReceipt)> = Vec::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        while open {
            inp.heartbeat.beat();
            let n = &mut self.normalizer;
            n.begin_batch();
            // Biased: the events branch is always ready while there is a
            // read-ahead, so it comes last.
            tokio::select! {
                biased;
                _ = inp.stop.cancelled() => open = false,
                Some(h) = inp.handover.recv() => handover(n, h),
                Ok(()) = inp.rules.changed() => self.rules = inp.rules.borrow_and_update().clone(),
                Ok(()) = inp.settings.changed() => {
                    n.reconfigure(inp.settings.borrow_and_update().clone());
                }
                _ = tick.tick() => n.tick(now_epoch(), &mut out),
                ev = inp.events.next() => match ev {
                    Some(ev) => {
                        take(n, &self.ownership, ev, &mut out, &mut acks);
                        let mut taken = 1;
                        while out.len() < MAX_BATCH_OUT && taken < MAX_BATCH_EVENTS {
                            match inp.events.try_next() {
                                Some(ev) => take(n, &self.ownership, ev, &mut out, &mut acks),
                                None => break,
                            }
                            taken += 1;
                        }
                    }
                    None => open = false,
                },
            }
            // The sources' queue keeps draining while the batch commits.
            let commit = self.finish(&mut out, &mut acks);
            tokio::pin!(commit);
            loop {
                tokio::select! {
                    biased;
                    () = &mut commit => break,
                    () = inp.events.read_ahead() => {}
                }
            }
        }
    }

    /// Shutdown, once the sources have stopped: what was read ahead and
    /// what they queued, then the last commit. Single node: the records of
    /// pushed calls that are over are written without waiting for them to
    /// settle. Cluster mode: those sessions stay stored; the team's next
    /// owner settles them (a late push still finds its call).
    pub(super) async fn drain(&mut self, events: &mut Events) {
        let mut out = Vec::new();
        let mut acks = Vec::new();
        // Closed: nothing can be queued after what `try_next` takes here.
        events.rx.close();
        self.normalizer.begin_batch();
        while let Some(ev) = events.try_next() {
            take(
                &mut self.normalizer,
                &self.ownership,
                ev,
                &mut out,
                &mut acks,
            );
        }
        if self.ownership.is_none() {
            self.normalizer.settle_pushed(now_epoch(), &mut out);
        }
        self.finish(&mut out, &mut acks).await;
    }

    async fn finish(&mut self, out: &mut Vec<ModelEvent>, acks: &mut Vec<(PushAck, PushReceipt)>) {
        finish_batch(
            &self.rules,
            self.store.as_ref(),
            &self.ownership,
            &self.ok,
            &mut self.normalizer,
            out,
            acks,
            &mut self.observer,
        )
        .await;
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
