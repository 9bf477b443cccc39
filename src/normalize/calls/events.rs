//! Canonical events → table changes: the dispatcher of [`PbxCalls::apply`].

use super::{push_exact, status_rank, PbxCalls, Str};
use crate::model::ModelEvent;
use crate::normalize::canonical::{Canon, ChanInfo, ChanState};
use crate::normalize::NormalizerConfig;
use compact_str::ToCompactString;

impl PbxCalls {
    /// Applies one canonical event at time `t`.
    pub fn apply(
        &mut self,
        cfg: &NormalizerConfig,
        ev: &Canon<'_>,
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        self.advance(cfg, t, out);
        match ev {
            Canon::NewChannel(info) => {
                if let Some(uid) = self.ensure(cfg, info, t, true) {
                    self.set_state(cfg, &uid, info.state, t, out);
                    self.touch_call(&uid, t);
                }
            }
            Canon::NewState(info) | Canon::Touch(info) => {
                if let Some(uid) = self.ensure(cfg, info, t, true) {
                    self.set_state(cfg, &uid, info.state, t, out);
                    self.touch_call(&uid, t);
                }
            }
            Canon::CallerId(info) => {
                if let Some(uid) = self.ensure(cfg, info, t, true) {
                    if let Some(ch) = self.chans.get_mut(&uid) {
                        if let Some(n) = info.caller_num {
                            ch.caller_num = Some(n.to_compact_string());
                        }
                        if let Some(n) = info.caller_name {
                            ch.caller_name = Some(n.to_compact_string());
                        }
                    }
                }
            }
            Canon::ConnectedLine(info) | Canon::Exten(info) => {
                self.ensure(cfg, info, t, true);
            }
            Canon::DialBegin {
                caller,
                dest,
                dialstring: _,
            } => self.dial_begin(cfg, caller.as_ref(), dest, t, out),
            Canon::DialEnd {
                caller,
                dest,
                status,
            } => {
                let caller_uid = self.resolve(caller);
                let dest_uid = dest.as_ref().and_then(|d| self.resolve(d));
                if let Some(d) = &dest_uid {
                    if let Some(ch) = self.chans.get_mut(d) {
                        if ch
                            .dial_status
                            .as_deref()
                            .is_none_or(|s| status_rank(status) > status_rank(s))
                        {
                            ch.dial_status = Some(status.to_compact_string());
                        }
                    }
                    if status.eq_ignore_ascii_case("ANSWER") {
                        let d = d.clone();
                        self.up(cfg, &d, t, false, out);
                    }
                } else if let Some(c) = caller_uid {
                    let session = self.chans.get(&c).map(|ch| ch.call.clone());
                    if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
                        push_exact(&mut call.dial_statuses, status.to_compact_string());
                    }
                }
            }
            Canon::Tie(a, b) => {
                if let (Some(a), Some(b)) = (self.resolve(a), self.resolve(b)) {
                    self.tie(&a, &b, t);
                }
            }
            Canon::Masquerade { clone, original } => {
                if let (Some(c), Some(o)) = (self.resolve(clone), self.resolve(original)) {
                    self.masquerade(cfg, &c, &o, t, out);
                }
            }
            Canon::Pickup { picker, target } => {
                let picker = self.ensure(cfg, picker, t, false);
                if let (Some(p), Some(g)) = (picker, self.resolve(target)) {
                    self.pickup(cfg, &p, &g, t, out);
                }
            }
            Canon::QueueJoin { chan, queue } => {
                if let Some(uid) = self.ensure(cfg, chan, t, true) {
                    let session = self.chans.get(&uid).map(|c| c.call.clone());
                    if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
                        if call.queue.is_none() {
                            call.queue = Some(queue.to_compact_string());
                        }
                        call.in_queue = true;
                        call.announced = true;
                        call.last_activity = t;
                    }
                }
            }
            Canon::QueueLeave { chan, .. } | Canon::QueueAbandon { chan, .. } => {
                let abandon = matches!(ev, Canon::QueueAbandon { .. });
                if let Some(uid) = self.resolve(chan) {
                    let session = self.chans.get(&uid).map(|c| c.call.clone());
                    if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
                        if abandon {
                            call.abandoned = true;
                        } else {
                            call.in_queue = false;
                        }
                    }
                }
            }
            Canon::AgentCalled {
                caller,
                dest,
                interface,
                queue,
            } => {
                let caller_uid = self.resolve(caller);
                let dest_uid = self.resolve(dest);
                if let (Some(c), Some(d)) = (&caller_uid, &dest_uid) {
                    self.tie(c, d, t);
                    let session = self.chans.get(d).map(|ch| ch.call.clone());
                    if let (Some(q), Some(call)) =
                        (queue, session.and_then(|s| self.calls.get_mut(&s)))
                    {
                        if call.queue.is_none() {
                            call.queue = Some(q.to_compact_string());
                        }
                    }
                    let hint = interface.and_then(|i| {
                        crate::normalize::channel::interface_extension(&cfg.classifier, i)
                    });
                    let d = d.clone();
                    self.offer(cfg, &d, hint.map(Str::from), t, out);
                }
            }
            Canon::AgentConnect { caller, dest, .. } => {
                if let (Some(c), Some(d)) = (self.resolve(caller), self.resolve(dest)) {
                    self.tie(&c, &d, t);
                    self.up(cfg, &d, t, false, out);
                }
            }
            Canon::Rename { uid, old, new } => {
                let target = uid
                    .filter(|u| self.chans.contains_key(*u))
                    .map(Str::from)
                    .or_else(|| old.and_then(|o| self.by_name.get(o).cloned()));
                if let Some(u) = target {
                    let party = cfg.classifier.classify(new, None);
                    self.regrouped = true;
                    if let Some(ch) = self.chans.get_mut(&u) {
                        let oldname = std::mem::replace(&mut ch.name, new.to_compact_string());
                        ch.party = party;
                        if self.by_name.get(&oldname).is_some_and(|x| *x == u) {
                            self.by_name.remove(&oldname);
                        }
                        self.by_name.insert(new.to_compact_string(), u);
                    }
                }
            }
            Canon::Hangup { chan, cause } => {
                match chan.uid {
                    Some(u) if self.chans.contains_key(u) => {
                        let u = u.to_compact_string();
                        self.hangup(&u, *cause, t, false, out);
                    }
                    Some(u) if !self.tombstones.contains_key(u) => {
                        // Never seen: remember it so a late Newchannel opens nothing.
                        Self::ignored("unknown_channel");
                        self.tombstone(u.to_compact_string(), t);
                    }
                    _ => Self::ignored("late"),
                }
            }
            Canon::OriginateResponse(o) => self.originate_response(cfg, o, t, out),
        }
    }

    pub(super) fn touch_call(&mut self, uid: &str, t: f64) {
        let session = self.chans.get(uid).map(|c| c.call.clone());
        if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
            call.last_activity = t;
        }
    }

    pub(super) fn set_state(
        &mut self,
        cfg: &NormalizerConfig,
        uid: &str,
        state: Option<ChanState>,
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        let Some(state) = state else { return };
        let Some(ch) = self.chans.get_mut(uid) else {
            return;
        };
        if !ch.live() {
            return;
        }
        let prev = ch.state;
        if state != ChanState::Down {
            ch.state = state;
        }
        let (linked, tied, offered) = (ch.linked, ch.tied, ch.offered);
        match state {
            ChanState::Ringing if prev != ChanState::Ringing && !offered => {
                if linked || tied {
                    self.offer(cfg, uid, None, t, out);
                } else if !self.pending.iter().any(|(u, _, _)| u == uid) {
                    // ≤ 11: wait briefly for the event that ties it.
                    self.pending
                        .push((uid.to_compact_string(), t + cfg.orphan_grace, t));
                }
            }
            ChanState::Up => self.up(cfg, uid, t, false, out),
            ChanState::Ring => {
                // A real party started a call (a phone dialing, a trunk call in).
                let session = self.chans.get(uid).map(|c| c.call.clone());
                if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
                    if call.root == uid {
                        call.last_activity = t;
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn dial_begin(
        &mut self,
        cfg: &NormalizerConfig,
        caller: Option<&ChanInfo<'_>>,
        dest: &ChanInfo<'_>,
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        let caller_uid = caller.and_then(|c| self.ensure(cfg, c, t, true));
        let Some(dest_uid) = self.ensure(cfg, dest, t, true) else {
            return;
        };
        match &caller_uid {
            Some(c) => {
                self.tie(c, &dest_uid, t);
                self.consultation(caller, c, t);
                self.caller_dials(c, t, out);
            }
            None => {
                // Originate: the PBX dials the first leg itself.
                let session = self.chans.get(&dest_uid).map(|c| c.call.clone());
                if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
                    if call.root == dest_uid {
                        call.originated = true;
                    }
                }
                self.claim_originate(cfg, &dest_uid);
            }
        }
        self.offer(cfg, &dest_uid, None, t, out);
    }
}
