//! Fresh deliveries handed to the dispatcher by the enqueue that stored
//! them: [`Outbox::offer_slots`], [`Outbox::take_handed`].
//!
//! Without it a delivery waits for two commits before it is sent: its
//! enqueue (fsynced) and then the dispatcher's poll, which the outbox's
//! writer runs after whatever it is doing then (at 1 000 events/s, usually
//! the next enqueue's fsync). Instead the dispatcher offers the free slots
//! of the targets that take requests; an enqueue that inserts deliveries
//! for such a target claims up to that many ready heads in its own
//! transaction, and once that transaction is committed (fsynced: nothing is
//! sent before it is stored) the rows wait here, `inflight`, for the
//! dispatcher, which the commit wakes. The offer is used up as rows are
//! claimed and withdrawn whenever the dispatcher takes the handed rows; a
//! row claimed against an offer that was withdrawn meanwhile finds no slot
//! and goes back to `pending` (at worst a wasted claim, never a lost row;
//! rows still here at a shutdown are put back by `requeue_inflight`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

use super::tx::claim_ready;
use super::writer::WriterState;
use super::{Claimed, Outbox, Result};

/// Rows an enqueue claimed for the dispatcher.
#[derive(Debug, Default)]
pub struct Handed {
    /// Now `inflight`, to be sent.
    pub rows: Vec<Claimed>,
    /// Rows met while claiming that could not be decoded and were moved
    /// aside (dead with the reason): (id, what is wrong).
    pub damaged: Vec<(i64, String)>,
}

#[derive(Default)]
struct State {
    /// Free slots per target the next enqueues may fill.
    offers: BTreeMap<String, usize>,
    /// Bumped whenever the offers are replaced or withdrawn.
    generation: u64,
    handed: Handed,
}

/// Shared by the outbox's writer and the dispatcher.
#[derive(Default)]
pub(super) struct Handoff(Mutex<State>);

impl Handoff {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Outbox {
    /// Offers free dispatcher slots (per target) to the next enqueues,
    /// replacing earlier offers.
    pub fn offer_slots(&self, offers: BTreeMap<String, usize>) {
        let mut s = self.handoff.lock();
        s.offers = offers;
        s.generation += 1;
    }

    /// Withdraws every offer and returns the rows committed enqueues
    /// claimed for the dispatcher since the last call.
    pub fn take_handed(&self) -> Handed {
        let mut s = self.handoff.lock();
        s.offers.clear();
        s.generation += 1;
        std::mem::take(&mut s.handed)
    }
}

/// Rows claimed inside an enqueue's transaction, handed over only after
/// its commit.
#[derive(Default)]
pub(super) struct Claim {
    handed: Handed,
}

/// In the enqueue's transaction: claims up to the offered number of ready
/// heads of each target in `targets`.
pub(super) fn claim_offered<'a>(
    c: &Connection,
    st: &mut WriterState,
    handoff: &Handoff,
    targets: impl Iterator<Item = &'a String>,
    now: f64,
) -> Result<Claim> {
    let mut out = Claim::default();
    for t in targets {
        let (n, generation) = {
            let mut s = handoff.lock();
            let generation = s.generation;
            match s.offers.get_mut(t.as_str()) {
                Some(n) if *n > 0 => (std::mem::take(n), generation),
                _ => continue,
            }
        };
        let before = (out.handed.rows.len(), out.handed.damaged.len(), st.waiting);
        // The claim is bookkeeping: should it fail, the enqueue still
        // commits (its rows stay pending for the dispatcher's poll).
        c.prepare_cached("SAVEPOINT handoff")?.execute([])?;
        let claimed = claim_ready(
            c,
            st,
            t,
            now,
            n,
            &mut out.handed.rows,
            &mut out.handed.damaged,
        );
        if let Err(e) = claimed {
            tracing::debug!(target: "callhook::deliver", error = %e, "outbox: claiming fresh rows for the dispatcher failed (they wait for its poll)");
            c.prepare_cached("ROLLBACK TO handoff")?.execute([])?;
            out.handed.rows.truncate(before.0);
            out.handed.damaged.truncate(before.1);
            st.waiting = before.2;
        }
        c.prepare_cached("RELEASE handoff")?.execute([])?;
        let unused = n - (out.handed.rows.len() - before.0).min(n);
        if unused > 0 {
            let mut s = handoff.lock();
            if s.generation == generation {
                if let Some(left) = s.offers.get_mut(t.as_str()) {
                    *left += unused;
                }
            }
        }
    }
    Ok(out)
}

/// After the enqueue's commit: the claimed rows wait for the dispatcher.
pub(super) fn hand_over(handoff: &Arc<Handoff>, claim: Claim) {
    if claim.handed.rows.is_empty() && claim.handed.damaged.is_empty() {
        return;
    }
    let mut s = handoff.lock();
    s.handed.rows.extend(claim.handed.rows);
    s.handed.damaged.extend(claim.handed.damaged);
}
