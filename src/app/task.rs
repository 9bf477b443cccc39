//! The normalizer task (the daemon's own task, after the wiring): each
//! turn takes what is ready — the source events that have queued (one
//! batch), a handover (cluster mode), a tick, new rules or settings — and
//! ends with the batch committed (`batch::finish_batch`) before the next
//! turn. At shutdown it drains what the stopped sources queued.

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
    pub(super) events: mpsc::Receiver<SourceEvent>,
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
            tokio::select! {
                ev = inp.events.recv() => match ev {
                    Some(ev) => {
                        take(n, &self.ownership, ev, &mut out, &mut acks);
                        let mut taken = 1;
                        while out.len() < MAX_BATCH_OUT && taken < MAX_BATCH_EVENTS {
                            match inp.events.try_recv() {
                                Ok(ev) => take(n, &self.ownership, ev, &mut out, &mut acks),
                                Err(_) => break,
                            }
                            taken += 1;
                        }
                    }
                    None => open = false,
                },
                Some(h) = inp.handover.recv() => handover(n, h),
                _ = tick.tick() => n.tick(now_epoch(), &mut out),
                _ = inp.stop.cancelled() => open = false,
                Ok(()) = inp.rules.changed() => self.rules = inp.rules.borrow_and_update().clone(),
                Ok(()) = inp.settings.changed() => {
                    n.reconfigure(inp.settings.borrow_and_update().clone());
                }
            }
            self.finish(&mut out, &mut acks).await;
        }
    }

    /// Shutdown, once the sources have stopped: what they queued, then the
    /// last commit. Single node: the records of pushed calls that are over
    /// are written without waiting for them to settle. Cluster mode: those
    /// sessions stay stored; the team's next owner settles them (a late
    /// push still finds its call).
    pub(super) async fn drain(&mut self, events: &mut mpsc::Receiver<SourceEvent>) {
        let mut out = Vec::new();
        let mut acks = Vec::new();
        events.close();
        self.normalizer.begin_batch();
        while let Ok(ev) = events.try_recv() {
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
