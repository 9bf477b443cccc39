//! The presence table as the rest of the daemon sees it: readable from any
//! task (the HTTP side, the live API), with a stream of changes.
//!
//! [`PresenceHub`] is a cloneable handle on one [`PresenceTracker`] behind a
//! lock, plus a `broadcast` channel of [`PresenceEvent`]s. Changes are
//! applied and broadcast while the write lock is held, so
//! [`PresenceHub::subscribe_with_snapshot`] (which takes the read lock)
//! returns a snapshot and a receiver with neither a gap nor a duplicate
//! between them: the first event the receiver yields for that tenant has
//! `seq == snapshot.seq + 1`. A receiver that falls behind by more than the
//! channel's capacity gets `RecvError::Lagged` and should take a new
//! snapshot. Nothing here awaits: the lock is held only to apply or copy.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::broadcast;

use super::event::{ExtensionPresence, PresenceEvent, TenantSnapshot};
use super::PresenceTracker;
use crate::model::ModelEvent;
use crate::source::PresenceSourceEvent;

/// Default capacity of the change stream.
pub const DEFAULT_CHANGES: usize = 4096;

/// A shared presence table and its change stream.
#[derive(Clone)]
pub struct PresenceHub {
    inner: Arc<Inner>,
}

struct Inner {
    tracker: RwLock<PresenceTracker>,
    changes: broadcast::Sender<Arc<PresenceEvent>>,
}

impl std::fmt::Debug for PresenceHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceHub")
            .field("tenants", &self.tenants())
            .field("subscribers", &self.inner.changes.receiver_count())
            .finish()
    }
}

impl PresenceHub {
    /// A hub around `tracker`, keeping up to `changes` undelivered events per
    /// subscriber.
    pub fn new(tracker: PresenceTracker, changes: usize) -> Self {
        let (tx, _) = broadcast::channel(changes.max(1));
        Self {
            inner: Arc::new(Inner {
                tracker: RwLock::new(tracker),
                changes: tx,
            }),
        }
    }

    // A poisoned lock only means a panic elsewhere while applying; the
    // table is still the best state we have.
    fn read(&self) -> RwLockReadGuard<'_, PresenceTracker> {
        self.inner.tracker.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, PresenceTracker> {
        self.inner
            .tracker
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` under the write lock and broadcasts what it produced;
    /// returns the number of events.
    pub fn apply(&self, f: impl FnOnce(&mut PresenceTracker, &mut Vec<PresenceEvent>)) -> usize {
        let mut out = Vec::new();
        let mut t = self.write();
        f(&mut t, &mut out);
        let n = out.len();
        for ev in out {
            // No receiver is fine: nobody is watching.
            let _ = self.inner.changes.send(Arc::new(ev));
        }
        drop(t);
        n
    }

    /// Applies source events.
    pub fn handle_sources<'a>(
        &self,
        evs: impl IntoIterator<Item = &'a PresenceSourceEvent>,
    ) -> usize {
        self.apply(|t, out| {
            for ev in evs {
                t.handle_source(ev, out);
            }
        })
    }

    /// Applies model events.
    pub fn handle_model(&self, evs: &[ModelEvent]) -> usize {
        self.apply(|t, out| t.handle_models(evs, out))
    }

    /// Expires calls the model never ended (`now`: local epoch seconds).
    pub fn tick(&self, now: f64) -> usize {
        self.apply(|t, out| t.tick(now, out))
    }

    /// The table of one tenant.
    pub fn snapshot(&self, pbx: &str) -> Option<TenantSnapshot> {
        self.read().snapshot(pbx)
    }

    /// One extension's row.
    pub fn extension(&self, pbx: &str, extension: &str) -> Option<ExtensionPresence> {
        self.read().extension(pbx, extension)
    }

    /// The tenants seen so far.
    pub fn tenants(&self) -> Vec<String> {
        self.read().tenants()
    }

    /// Every change from now on (all tenants).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<PresenceEvent>> {
        self.inner.changes.subscribe()
    }

    /// A tenant's snapshot and the changes after it, consistently.
    pub fn subscribe_with_snapshot(
        &self,
        pbx: &str,
    ) -> (
        Option<TenantSnapshot>,
        broadcast::Receiver<Arc<PresenceEvent>>,
    ) {
        let t = self.read();
        let rx = self.inner.changes.subscribe();
        (t.snapshot(pbx), rx)
    }
}
