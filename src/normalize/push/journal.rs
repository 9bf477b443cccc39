//! A batch's journal: every session a batch changed, restorable when the
//! outbox refuses the batch's deliveries.

use super::{PushCalls, Session, Tomb};
use std::collections::HashMap;

/// A session's state before the current batch touched it.
#[derive(Debug)]
pub(super) enum Saved {
    Absent,
    Live(Box<Session>),
    Tomb(Tomb),
}

impl PushCalls {
    /// Starts journaling changes (see the module docs).
    pub fn begin(&mut self) {
        self.journal = Some(HashMap::new());
    }

    /// Keeps the changes since [`begin`](Self::begin).
    pub fn commit(&mut self) {
        self.journal = None;
    }

    /// Undoes every change since [`begin`](Self::begin).
    pub fn rollback(&mut self) {
        let Some(j) = self.journal.take() else {
            return;
        };
        for (sid, saved) in j {
            self.sessions.remove(&sid);
            let had_tomb = self.tombs.remove(&sid).is_some();
            match saved {
                Saved::Absent => {}
                Saved::Live(s) => {
                    self.sessions.insert(sid, *s);
                }
                Saved::Tomb(t) => {
                    if !had_tomb {
                        self.tomb_order.push_back((t.at, sid.clone()));
                    }
                    self.tombs.insert(sid, t);
                }
            }
        }
    }

    pub(super) fn save(&mut self, sid: &str) {
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        if j.contains_key(sid) {
            return;
        }
        let saved = if let Some(s) = self.sessions.get(sid) {
            Saved::Live(Box::new(s.clone()))
        } else if let Some(t) = self.tombs.get(sid) {
            Saved::Tomb(t.clone())
        } else {
            Saved::Absent
        };
        j.insert(sid.to_string(), saved);
    }
}
