//! Grouping: which call a channel belongs to (module docs of [`super`]).

use compact_str::ToCompactString;
use std::collections::HashSet;

use tracing::debug;

use super::{push_exact, PbxCalls, Str};
use crate::model::{ModelEvent, State};
use crate::normalize::canonical::ChanInfo;
use crate::normalize::channel::Party;
use crate::normalize::NormalizerConfig;

impl PbxCalls {
    /// Two channels are connected: on ≤ 11 their calls become one.
    pub(super) fn tie(&mut self, a: &str, b: &str, t: f64) {
        let (Some(ca), Some(cb)) = (self.chans.get(a), self.chans.get(b)) else {
            return;
        };
        if ca.linked && cb.linked {
            return; // the PBX's Linkedid is authoritative
        }
        let (call_a, call_b) = (ca.call.clone(), cb.call.clone());
        for u in [a, b] {
            if let Some(c) = self.chans.get_mut(u) {
                c.tied = true;
            }
        }
        self.pending.retain(|(u, _, _)| u != a && u != b);
        if call_a == call_b {
            return;
        }
        let (keep, gone) = if self.older(&call_a, &call_b) {
            (call_a, call_b)
        } else {
            (call_b, call_a)
        };
        self.merge(&keep, &gone, t);
    }

    /// True when call `a`'s first channel is older than call `b`'s.
    pub(super) fn older(&self, a: &str, b: &str) -> bool {
        let key = |call: &str| -> (f64, u64, u64) {
            let root = self.calls.get(call).map(|c| c.root.as_str()).unwrap_or("");
            let created = self.chans.get(root).map_or(f64::MAX, |c| c.created_at);
            let (hi, lo) = root.split_once('.').unwrap_or((root, "0"));
            (
                created,
                hi.parse().unwrap_or(u64::MAX),
                lo.parse().unwrap_or(u64::MAX),
            )
        };
        let (ka, kb) = (key(a), key(b));
        ka.0 < kb.0 || (ka.0 == kb.0 && (ka.1, ka.2) <= (kb.1, kb.2))
    }

    /// Folds call `gone` into call `keep`.
    pub(super) fn merge(&mut self, keep: &str, gone: &str, t: f64) {
        if keep == gone {
            return;
        }
        let Some(g) = self.calls.remove(gone) else {
            return;
        };
        self.regrouped = true;
        if g.announced {
            debug!(pbx = %self.pbx, keep, gone, "merging a call that already emitted events");
            Self::ignored("merged_after_announce");
        }
        for m in &g.members {
            if let Some(ch) = self.chans.get_mut(m) {
                ch.call = keep.to_compact_string();
            }
        }
        let Some(k) = self.calls.get_mut(keep) else {
            return;
        };
        k.members.extend(g.members);
        k.aliases.extend(g.aliases);
        k.originated |= g.originated && !k.announced && k.legs.is_empty();
        if k.originate_exten.is_none() {
            k.originate_exten = g.originate_exten;
        }
        k.originate_reason = k.originate_reason.or(g.originate_reason);
        if k.queue.is_none() {
            k.queue = g.queue;
        }
        k.in_queue |= g.in_queue;
        k.abandoned |= g.abandoned;
        k.dial_statuses.extend(g.dial_statuses);
        for leg in g.legs {
            if let Some(l) = k
                .legs
                .iter_mut()
                .find(|l| l.ext == leg.ext && l.state != Some(State::Hungup))
            {
                l.chans.extend(leg.chans);
            } else {
                push_exact(&mut k.legs, leg);
            }
        }
        for r in g.rung {
            if !k.rung.contains(&r) {
                push_exact(&mut k.rung, r);
            }
        }
        if k.answered_at.is_none() {
            k.answered_at = g.answered_at;
            k.answered_by = g.answered_by;
        }
        k.announced |= g.announced;
        k.approximate |= g.approximate;
        k.last_activity = t;
        self.rename(gone, keep);
    }

    pub(super) fn decide_orphan(
        &mut self,
        cfg: &NormalizerConfig,
        uid: &str,
        rang_at: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        let Some(ch) = self.chans.get(uid) else {
            return;
        };
        if ch.tied || ch.offered || !ch.live() {
            return;
        }
        // A queue member rung by app_queue without eventwhencalled: its
        // connected line is the waiting caller.
        if let (Party::Extension(_), Some(cl)) = (&ch.party, ch.connected_num.clone()) {
            let my_call = ch.call.clone();
            let candidates: Vec<Str> = self
                .calls
                .values()
                .filter(|c| c.session != my_call && c.in_queue && c.answered_at.is_none())
                .filter(|c| {
                    self.chans
                        .get(&c.root)
                        .is_some_and(|r| r.live() && r.caller_num.as_deref() == Some(cl.as_str()))
                })
                .map(|c| c.root.clone())
                .collect();
            if let [root] = candidates.as_slice() {
                let root = root.clone();
                self.tie(&root, uid, rang_at);
                self.offer(cfg, uid, None, rang_at, out);
                return;
            }
        }
        // Nothing dialed it: the PBX rings it on its own (Originate).
        if let Some(call) = self.calls.get_mut(&ch.call.clone()) {
            call.originated = true;
        }
        self.claim_originate(cfg, uid);
        self.offer(cfg, uid, None, rang_at, out);
    }

    /// ≤ 11: a Local pair created outside any call that dials on behalf of
    /// an extension talking in exactly one call belongs to that call.
    pub(super) fn consultation(&mut self, caller: Option<&ChanInfo<'_>>, caller_uid: &str, t: f64) {
        let Some(ch) = self.chans.get(caller_uid) else {
            return;
        };
        if ch.linked {
            return;
        }
        let session = ch.call.clone();
        let Some(call) = self.calls.get(&session) else {
            return;
        };
        let root_is_local = self
            .chans
            .get(&call.root)
            .is_some_and(|r| matches!(r.party_at_create, Party::Local(_)));
        if !root_is_local || call.announced {
            return;
        }
        let Some(on_behalf) = caller.and_then(|c| c.caller_num) else {
            return;
        };
        let talking: HashSet<Str> = self
            .chans
            .values()
            .filter(|c| {
                c.call != session
                    && c.live()
                    && c.up_at.is_some()
                    && c.party.extension() == Some(on_behalf)
            })
            .map(|c| c.call.clone())
            .collect();
        if talking.len() == 1 {
            if let Some(target) = talking.into_iter().next() {
                let anchor = self.calls.get(&target).map(|c| c.root.clone());
                if let Some(anchor) = anchor {
                    let root = call.root.clone();
                    self.tie(&anchor, &root, t);
                }
            }
        }
    }
}
