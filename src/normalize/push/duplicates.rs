//! What makes two pushes the same event, and finished sessions remembered
//! (with their duplicate keys) for late and duplicated pushes.

use super::{nonempty, PushCalls};
use crate::normalize::NormalizerConfig;
use crate::source::{PushEvent, PushSide};

/// What makes two pushes the same event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(super) struct Key {
    pub(super) event: String,
    pub(super) side: Option<PushSide>,
    pub(super) party: Option<String>,
    pub(super) time: Option<String>,
}

impl Key {
    pub(super) fn of(ev: &PushEvent) -> Self {
        Key {
            event: ev.event.clone(),
            side: ev.side,
            party: nonempty(&ev.extension).or(nonempty(&ev.agent)).cloned(),
            time: ev.event_time_raw.clone(),
        }
    }
}

/// A finished session, remembered for late and duplicated pushes.
#[derive(Debug, Clone)]
pub(super) struct Tomb {
    pub(super) at: f64,
    pub(super) seen: Vec<Key>,
}

impl PushCalls {
    /// Forgets tombstones past `late_event_window` or beyond `max_tombstones`.
    pub(super) fn prune(&mut self, cfg: &NormalizerConfig, now: f64) {
        while let Some((at, _)) = self.tomb_order.front() {
            let expired = *at + cfg.late_event_window < now;
            if !(expired || self.tomb_order.len() > cfg.max_tombstones) {
                break;
            }
            let Some((at, sid)) = self.tomb_order.pop_front() else {
                break;
            };
            if self.tombs.get(&sid).is_some_and(|t| t.at == at) {
                self.save(&sid);
                self.tombs.remove(&sid);
            }
        }
    }
}
