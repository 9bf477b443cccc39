//! The normalizer task's batches: feeding source events to the normalizer
//! (fenced by ownership in cluster mode), evaluating the rules, starting
//! the commit of a batch's deliveries with its live-call writes
//! (`start_batch`: the commit owns what it writes, so the task may take
//! the next batch meanwhile), and, once it is durable, answering the
//! pushes and showing the events (`end_batch`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use tracing::{error, info, warn};

use super::handover::owns;
use super::Observer;
use crate::cluster::ownership::OwnershipHandle;
use crate::deliver::outbox::{EnqueueOutcome, LiveCallWrite};
use crate::deliver::store::{DeliveryStore, StoreError};
use crate::deliver::DeliveryRequest;
use crate::log_limit::LogLimiter;
use crate::metrics::metrics;
use crate::model::ModelEvent;
use crate::normalize::{CallChange, Normalizer};
use crate::rules::RuleSet;
use crate::source::{PushAck, PushReceipt, SourceEvent};

/// Feeds one source event to the normalizer, keeping a push's
/// acknowledgement for when its batch is committed. In cluster mode,
/// events of a PBX or team this instance does not own (any more) are
/// dropped (a push is answered with an error: it stays in the stream).
pub(super) fn take(
    n: &mut Normalizer,
    ownership: &Option<OwnershipHandle>,
    ev: SourceEvent,
    out: &mut Vec<ModelEvent>,
    acks: &mut Vec<(PushAck, PushReceipt)>,
) {
    let (pbx, team) = match &ev {
        SourceEvent::Push { team, .. } => (team, true),
        SourceEvent::Ami { pbx, .. }
        | SourceEvent::AmiSnapshot { pbx, .. }
        | SourceEvent::AmiOriginate { pbx, .. }
        | SourceEvent::AmiDisconnected { pbx, .. } => (pbx, false),
    };
    if !owns(ownership, pbx, team) {
        metrics().cluster.fenced_events.inc();
        if let SourceEvent::Push { ack: Some(a), .. } = ev {
            let _ = a.send(Err("this instance no longer owns the team".into()));
        }
        return;
    }
    match ev {
        SourceEvent::Push {
            team,
            received_at,
            event,
            ack,
        } => {
            let r = n.handle_push(&team, received_at, &event, out);
            if let Some(a) = ack {
                acks.push((a, r));
            }
        }
        ev => n.handle(&ev, out),
    }
}

fn event_pbx(e: &ModelEvent) -> &str {
    match e {
        ModelEvent::Leg(l) => &l.pbx,
        ModelEvent::CallState(c) => &c.pbx,
        ModelEvent::Call(c) => &c.pbx,
    }
}

/// A batch on its way to the store: what is done with it once the
/// commit has ended ([`end_batch`]).
pub(super) struct Committing {
    out: Vec<ModelEvent>,
    acks: Vec<(PushAck, PushReceipt)>,
    /// The calls the commit writes (their snapshots moved to the store).
    changes: Vec<CallChange>,
}

/// The commit of a batch: resolves once it is durable, or says why not.
pub(super) type Commit = BoxFuture<'static, Result<(), String>>;

/// Starts the commit of a batch: its model events and acks, the changed
/// calls (at most `max_snapshots` snapshots, see
/// `Normalizer::take_dirty_upto`), evaluates the rules, and hands
/// deliveries and calls to the store. The
/// commit owns what it writes: the normalizer may take the next batch's
/// events while it runs.
#[allow(clippy::too_many_arguments)]
pub(super) fn start_batch(
    rules: &RuleSet,
    store: &Arc<dyn DeliveryStore>,
    ownership: &Option<OwnershipHandle>,
    ok: &Arc<AtomicBool>,
    normalizer: &mut Normalizer,
    mut out: Vec<ModelEvent>,
    acks: Vec<(PushAck, PushReceipt)>,
    max_snapshots: usize,
) -> (Committing, Commit) {
    let mut changes = normalizer.take_dirty_upto(max_snapshots);
    if ownership.is_some() {
        // Cluster mode: what an instance no longer owns is neither sent nor
        // stored (the next owner writes that PBX's calls now).
        let before = out.len();
        out.retain(|e| {
            let p = event_pbx(e);
            owns(ownership, p, normalizer.is_push_team(p))
        });
        changes.retain(|c| owns(ownership, &c.pbx, normalizer.is_push_team(&c.pbx)));
        metrics()
            .cluster
            .fenced_events
            .inc_by((before - out.len()) as u64);
    }
    // The snapshots move to the store; the batch keeps which calls they
    // were (all `end_batch` needs to mark them again).
    let calls: Vec<LiveCallWrite> = changes
        .iter_mut()
        .map(|c| LiveCallWrite {
            pbx: c.pbx.to_string(),
            session: c.session.clone(),
            snapshot: c.snapshot.take(),
        })
        .collect();
    let reqs = requests(rules, &out, |p| normalizer.clock_offset(p));
    let commit: Commit = if reqs.is_empty() && calls.is_empty() {
        Box::pin(std::future::ready(Ok(())))
    } else {
        let stored = store.commit_batch(reqs, calls);
        let ok = ok.clone();
        Box::pin(async move { judge(stored.await, &ok) })
    };
    (Committing { out, acks, changes }, commit)
}

/// Ends a batch once its commit has: keeps (or, if its deliveries could
/// not be committed, rolls back) the batch's changes to pushed calls,
/// answers the pushes and shows the events to the observer.
pub(super) fn end_batch(
    normalizer: &mut Normalizer,
    batch: Committing,
    result: Result<(), String>,
    observer: &mut Option<Observer>,
) {
    let Committing {
        mut out,
        acks,
        changes,
    } = batch;
    match &result {
        Ok(()) => normalizer.commit_batch(),
        Err(e) if e.starts_with(OUTBOX_FULL) => {
            // The calls were stored with what the outbox took; pushed ones
            // are rolled back (their pushes answered 503 will come again),
            // so their rows are written again as they are now.
            normalizer.rollback_batch();
            let pushed: Vec<_> = changes
                .into_iter()
                .filter(|c| normalizer.is_push_team(&c.pbx))
                .collect();
            normalizer.requeue_dirty(&pushed);
            out.retain(|e| !normalizer.is_push_team(event_pbx(e)));
        }
        Err(_) => {
            // Not stored: written with the next batch.
            normalizer.requeue_dirty(&changes);
            normalizer.rollback_batch();
            // Pushed calls will say it again when the pushes are retried.
            out.retain(|e| !normalizer.is_push_team(event_pbx(e)));
        }
    }
    if !out.is_empty() {
        if let Some(o) = observer.as_mut() {
            o(&out);
        }
    }
    for (ack, receipt) in acks {
        let _ = ack.send(result.clone().map(|()| receipt));
    }
}

/// How a refusal by the cap or the backlog starts (the batch's calls were
/// stored all the same).
const OUTBOX_FULL: &str = "outbox full";

/// These repeat for every event while the outbox cannot take more (a full
/// disk, the cap): one line per half minute, with the count left out.
static OUTBOX_FAILED: LogLimiter = LogLimiter::new(Duration::from_secs(30));
static OUTBOX_REFUSED: LogLimiter = LogLimiter::new(Duration::from_secs(30));

/// Evaluates the rules for a batch of model events and commits the
/// deliveries; returns once they are durable, or why they are not (logged:
/// the outbox failed, or was full and refused some).
/// `clock_offset(pbx)` converts event time to local time (freshness limits
/// and latency metrics run on the local clock).
pub async fn deliver_batch(
    rules: &RuleSet,
    outbox: &dyn DeliveryStore,
    ok: &AtomicBool,
    events: &[ModelEvent],
    calls: Vec<LiveCallWrite>,
    clock_offset: impl Fn(&str) -> f64,
) -> Result<(), String> {
    let reqs = requests(rules, events, clock_offset);
    if reqs.is_empty() && calls.is_empty() {
        return Ok(());
    }
    judge(outbox.commit_batch(reqs, calls).await, ok)
}

/// The deliveries the rules make of a batch's model events, their times
/// on the local clock (`clock_offset(pbx)`: event time minus local time).
fn requests(
    rules: &RuleSet,
    events: &[ModelEvent],
    clock_offset: impl Fn(&str) -> f64,
) -> Vec<DeliveryRequest> {
    let mut reqs: Vec<DeliveryRequest> = events.iter().flat_map(|e| rules.evaluate(e)).collect();
    for r in &mut reqs {
        let local = r.created_at - clock_offset(&r.pbx);
        r.rebase(local);
    }
    reqs
}

/// What a commit's outcome means for the batch (logged; `ok` says whether
/// the store accepts writes).
fn judge(stored: Result<EnqueueOutcome, StoreError>, ok: &AtomicBool) -> Result<(), String> {
    match stored {
        Ok(o) => {
            if !ok.swap(true, Ordering::Relaxed) {
                info!("the outbox accepts writes again");
            }
            if o.rejected_full > 0 {
                if let Some(suppressed) = OUTBOX_REFUSED.check() {
                    warn!(
                        rejected = o.rejected_full,
                        suppressed, "outbox full: deliveries refused"
                    );
                }
                return Err(format!(
                    "{OUTBOX_FULL}: {} deliveries refused",
                    o.rejected_full
                ));
            }
            Ok(())
        }
        Err(e) => {
            ok.store(false, Ordering::Relaxed);
            if let Some(suppressed) = OUTBOX_FAILED.check() {
                error!(error = %e, suppressed, "cannot write deliveries to the outbox");
            }
            Err(format!("cannot write deliveries to the outbox: {e}"))
        }
    }
}
