//! One extension's part in a call: the leg state machine (offered,
//! answered, hung up) and what drives it (offers, answers, hangups).

use super::call::Call;
use super::status_rank;
use super::{owned, owned_opt, push_exact, PbxCalls, Str};
use crate::metrics::metrics;
use crate::model::{
    duration_billsec, Disposition, EndReason, LegEvent, ModelEvent, Role, State, Timestamp,
};
use crate::normalize::canonical::ChanState;
use crate::normalize::channel::Party;
use crate::normalize::NormalizerConfig;
use compact_str::ToCompactString;

/// One extension's part in a call.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Leg {
    pub(super) id: Str,
    pub(super) ext: Str,
    pub(super) role: Role,
    pub(super) chans: Vec<Str>,
    pub(super) state: Option<State>,
    pub(super) first_at: f64,
    pub(super) answered_at: Option<f64>,
    pub(super) hungup_at: Option<f64>,
    pub(super) approximate: bool,
}

impl PbxCalls {
    pub(super) fn leg_disposition(&self, call: &Call, leg: &Leg) -> Disposition {
        if leg.role == Role::Caller {
            return self.disposition(call);
        }
        if leg.answered_at.is_some() {
            return Disposition::Answered;
        }
        let mut best: Option<&str> = None;
        let mut busy_cause = false;
        for c in leg.chans.iter().filter_map(|u| self.chans.get(u)) {
            if let Some(s) = c.dial_status.as_deref() {
                if best.is_none_or(|b| status_rank(s) > status_rank(b)) {
                    best = Some(s);
                }
            }
            busy_cause |= c.cause == Some(17);
        }
        match best.map(str::to_ascii_uppercase).as_deref() {
            Some("BUSY") => Disposition::Busy,
            Some("CHANUNAVAIL") | Some("CONGESTION") => Disposition::Failed,
            _ if busy_cause => Disposition::Busy,
            _ => Disposition::NoAnswer,
        }
    }

    /// Moves leg `idx` of `session` to `state` (if that is forward) and emits.
    pub(super) fn leg_to(
        &mut self,
        session: &str,
        idx: usize,
        state: State,
        t: f64,
        approximate: bool,
        out: &mut Vec<ModelEvent>,
    ) {
        let Some(call) = self.calls.get(session) else {
            return;
        };
        let Some(leg) = call.legs.get(idx) else {
            return;
        };
        if leg.state.is_some_and(|s| s >= state) {
            return;
        }
        if state == State::Ringing || (state == State::Answered && !call.ringing_emitted) {
            self.emit_call_state(session, State::Ringing, t, out);
        }
        let Some(call) = self.calls.get_mut(session) else {
            return;
        };
        let Some(leg) = call.legs.get_mut(idx) else {
            return;
        };
        leg.state = Some(state);
        leg.approximate |= approximate;
        match state {
            State::Answered => leg.answered_at = Some(t),
            State::Hungup => leg.hungup_at = Some(t),
            State::Ringing => {}
        }
        call.announced = true;
        let Some(call) = self.calls.get(session) else {
            return;
        };
        let leg = &call.legs[idx];
        let dir = self.direction(call);
        let (num, name) = self.caller(call, dir);
        let (duration, billsec, disposition) = if state == State::Hungup {
            let (duration, billsec) = duration_billsec(leg.first_at, leg.answered_at, t);
            (
                Some(duration),
                Some(billsec),
                Some(self.leg_disposition(call, leg)),
            )
        } else {
            (None, None, None)
        };
        metrics()
            .leg_transitions
            .with_label_values(&[state.as_str(), dir.as_str()])
            .inc();
        out.push(ModelEvent::Leg(LegEvent {
            session_id: owned(&call.session),
            pbx: self.pbx.to_string(),
            leg_id: owned(&leg.id),
            state,
            direction: dir,
            role: leg.role,
            extension: owned(&leg.ext),
            caller_number: owned_opt(&num),
            caller_name: owned_opt(&name),
            dialed_number: owned_opt(&self.dialed(call)),
            queue: owned_opt(&call.queue),
            at: Timestamp(t),
            duration,
            billsec,
            disposition,
            approximate: leg.approximate || call.approximate,
            extra: Default::default(),
        }));
    }

    /// The live leg for `ext` in the channel's call, created when missing.
    /// Returns (session, leg index).
    pub(super) fn leg_for(
        &mut self,
        uid: &str,
        ext: &str,
        role: Role,
        t: f64,
    ) -> Option<(Str, usize)> {
        let session = self.chans.get(uid)?.call.clone();
        let call = self.calls.get_mut(&session)?;
        if let Some(i) = call
            .legs
            .iter()
            .position(|l| l.ext == ext && l.state != Some(State::Hungup))
        {
            if !call.legs[i].chans.iter().any(|c| c == uid) {
                push_exact(&mut call.legs[i].chans, uid.to_compact_string());
            }
            return Some((session, i));
        }
        let n = call.legs.iter().filter(|l| l.ext == ext).count();
        let id = if n == 0 {
            compact_str::format_compact!("{}/{}", call.session, ext)
        } else {
            compact_str::format_compact!("{}/{}#{}", call.session, ext, n + 1)
        };
        push_exact(
            &mut call.legs,
            Leg {
                id,
                ext: ext.to_compact_string(),
                role,
                chans: vec![uid.to_compact_string()],
                state: None,
                first_at: t,
                answered_at: None,
                hungup_at: None,
                approximate: false,
            },
        );
        Some((session, call.legs.len() - 1))
    }

    /// The call was offered to channel `uid` (it rings, or is being dialed).
    pub(super) fn offer(
        &mut self,
        cfg: &NormalizerConfig,
        uid: &str,
        ext_hint: Option<Str>,
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        let Some(ch) = self.chans.get(uid) else {
            return;
        };
        if !ch.live() {
            return;
        }
        let is_root = self.calls.get(&ch.call).is_some_and(|c| c.root == uid);
        let ext = match &ch.party {
            Party::Extension(e) => Some(e.clone()),
            Party::Local(e) if !ch.name.ends_with(";2") && !ch.name.ends_with(",2") => ext_hint
                .or_else(|| Some(e.clone()))
                .filter(|e| cfg.classifier.is_extension_number(e)),
            _ => None,
        };
        if let Some(ch) = self.chans.get_mut(uid) {
            ch.offered = true;
            if matches!(ch.party, Party::Local(_)) {
                ch.offered_ext = ext.clone();
            }
        }
        self.pending.retain(|(u, _, _)| u != uid);
        let Some(ext) = ext else {
            if let Some(call) = self
                .chans
                .get(uid)
                .and_then(|c| self.calls.get_mut(&c.call))
            {
                call.announced = true;
            }
            return;
        };
        let role = if is_root { Role::Caller } else { Role::Callee };
        if is_root {
            if let Some(call) = self
                .chans
                .get(uid)
                .and_then(|c| self.calls.get_mut(&c.call))
            {
                call.originated = true;
            }
        }
        if let Some((session, idx)) = self.leg_for(uid, &ext, role, t) {
            // Every extension the PBX offered the call to "rang", including
            // the phone an Originate rings first.
            if let Some(call) = self.calls.get_mut(&session) {
                if !call.rung.contains(&ext) {
                    push_exact(&mut call.rung, ext.clone());
                }
            }
            self.leg_to(&session, idx, State::Ringing, t, false, out);
        }
    }

    /// The root channel started dialing: the caller's own leg rings out.
    pub(super) fn caller_dials(&mut self, uid: &str, t: f64, out: &mut Vec<ModelEvent>) {
        let Some(ch) = self.chans.get(uid) else {
            return;
        };
        let Some(call) = self.calls.get(&ch.call) else {
            return;
        };
        if call.root != uid {
            return;
        }
        if let Party::Extension(ext) = ch.party_at_create.clone() {
            if let Some((session, idx)) = self.leg_for(uid, &ext, Role::Caller, t) {
                self.leg_to(&session, idx, State::Ringing, t, false, out);
            }
        } else if let Some(call) = self.calls.get_mut(&ch.call.clone()) {
            call.announced = true;
        }
    }

    /// Channel `uid` is up.
    pub(super) fn up(
        &mut self,
        cfg: &NormalizerConfig,
        uid: &str,
        t: f64,
        approx: bool,
        out: &mut Vec<ModelEvent>,
    ) {
        let Some(ch) = self.chans.get_mut(uid) else {
            return;
        };
        if ch.up_at.is_some() || !ch.live() {
            return;
        }
        ch.up_at = Some(t);
        ch.state = ChanState::Up;
        let party = ch.party.clone();
        let session = ch.call.clone();
        let Some(call) = self.calls.get(&session) else {
            return;
        };
        let is_root = call.root == uid;
        let originated = self.is_originated(call);
        if is_root {
            if originated {
                if let Party::Extension(ext) = party {
                    if let Some((s, i)) = self.leg_for(uid, &ext, Role::Caller, t) {
                        self.leg_to(&s, i, State::Answered, t, approx, out);
                    }
                }
            }
            // Otherwise the PBX answered the caller (queue, IVR): not an answer.
            return;
        }
        self.answered(cfg, uid, t, approx, out);
    }

    /// The party on channel `uid` (not the call's first channel) answered:
    /// its leg is answered, and the call with it if it is the first answer.
    pub(super) fn answered(
        &mut self,
        cfg: &NormalizerConfig,
        uid: &str,
        t: f64,
        approx: bool,
        out: &mut Vec<ModelEvent>,
    ) {
        let Some(ch) = self.chans.get(uid) else {
            return;
        };
        let party = ch.party.clone();
        let offered = ch.offered;
        if !party.is_party() {
            return;
        }
        if let Party::Extension(ext) = &party {
            if !offered {
                self.offer(cfg, uid, None, t, out);
            }
            if let Some((s, i)) = self.leg_for(uid, ext, Role::Callee, t) {
                self.leg_to(&s, i, State::Answered, t, approx, out);
            }
        }
        let session = match self.chans.get(uid) {
            Some(c) => c.call.clone(),
            None => return,
        };
        let by = match &party {
            Party::Extension(e) => e.clone(),
            _ => Str::const_new("external"),
        };
        let first = self
            .calls
            .get(&session)
            .is_some_and(|c| c.answered_at.is_none());
        if first {
            if let Some(call) = self.calls.get_mut(&session) {
                call.answered_at = Some(t);
                call.answered_by = Some(by);
                call.in_queue = false;
            }
            self.emit_call_state(&session, State::Answered, t, out);
            // The calling extension's leg is answered with the call.
            let caller_leg = self.calls.get(&session).and_then(|c| {
                c.legs
                    .iter()
                    .position(|l| l.role == Role::Caller && l.state != Some(State::Hungup))
            });
            if let Some(i) = caller_leg {
                self.leg_to(&session, i, State::Answered, t, approx, out);
            }
        }
    }

    /// Channel `uid` hung up.
    pub(super) fn hangup(
        &mut self,
        uid: &str,
        cause: Option<u16>,
        t: f64,
        approx: bool,
        out: &mut Vec<ModelEvent>,
    ) {
        let Some(ch) = self.chans.get_mut(uid) else {
            return;
        };
        if !ch.live() {
            return;
        }
        ch.hungup_at = Some(t);
        if cause.is_some() {
            ch.cause = cause;
        }
        let name = ch.name.clone();
        let session = ch.call.clone();
        if self.by_name.get(&name).is_some_and(|u| u == uid) {
            self.regrouped = true;
            self.by_name.remove(&name);
        }
        self.pending.retain(|(u, _, _)| u != uid);
        // Legs whose channels are all gone are over.
        let done: Vec<usize> = match self.calls.get(&session) {
            Some(call) => call
                .legs
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    l.state != Some(State::Hungup)
                        && l.chans.iter().any(|c| c == uid)
                        && l.chans
                            .iter()
                            .all(|c| self.chans.get(c).is_none_or(|c| !c.live()))
                })
                .map(|(i, _)| i)
                .collect(),
            None => return,
        };
        for i in done {
            self.leg_to(&session, i, State::Hungup, t, approx, out);
        }
        let over = self.calls.get(&session).is_some_and(|call| {
            let parties = call
                .members
                .iter()
                .filter_map(|m| self.chans.get(m))
                .filter(|c| c.party.is_party() || c.party_at_create.is_party());
            let mut any = false;
            let mut live = false;
            for c in parties {
                any = true;
                live |= c.live() && c.party.is_party();
            }
            any && !live
        });
        if over {
            let reason = if approx {
                EndReason::Reconnect
            } else {
                EndReason::Hangup
            };
            self.end_call(&session, t, reason, out);
        }
    }
}
