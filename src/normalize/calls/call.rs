//! One call: its facts (direction, caller, dialed number, disposition),
//! its call-scope state machine (`ringing` → `answered` → the record) and
//! its end.

use super::channels::Chan;
use super::leg::Leg;
use super::{owned, owned_opt, PbxCalls, Str};
use crate::metrics::metrics;
use crate::model::{
    CallFacts, CallRecord, CallStateEvent, Direction, Disposition, EndReason, ModelEvent, State,
    Timestamp,
};
use crate::normalize::canonical::ChanState;
use crate::normalize::channel::Party;
use compact_str::ToCompactString;

/// One call (serialised for the live-call store, see `persist`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Call {
    pub(super) session: Str,
    pub(super) root: Str,
    pub(super) members: Vec<Str>,
    /// Other session ids this call absorbed against the PBX's Linkedids (a
    /// pickup): events still naming them belong here.
    pub(super) aliases: Vec<Str>,
    pub(super) originated: bool,
    pub(super) originate_exten: Option<Str>,
    /// The `Reason` of a failed `OriginateResponse` for this call.
    pub(super) originate_reason: Option<u8>,
    pub(super) queue: Option<Str>,
    pub(super) in_queue: bool,
    pub(super) abandoned: bool,
    pub(super) dial_statuses: Vec<Str>,
    pub(super) legs: Vec<Leg>,
    pub(super) rung: Vec<Str>,
    pub(super) answered_at: Option<f64>,
    pub(super) answered_by: Option<Str>,
    pub(super) ringing_emitted: bool,
    pub(super) answered_emitted: bool,
    /// Said something (emitted, or a real party started a call).
    pub(super) announced: bool,
    pub(super) approximate: bool,
    pub(super) last_activity: f64,
}

impl Call {
    pub(super) fn new(session: &str, root: &str, t: f64) -> Self {
        Self {
            session: session.to_compact_string(),
            root: root.to_compact_string(),
            members: Vec::new(),
            aliases: Vec::new(),
            originated: false,
            originate_exten: None,
            originate_reason: None,
            queue: None,
            in_queue: false,
            abandoned: false,
            dial_statuses: Vec::new(),
            legs: Vec::new(),
            rung: Vec::new(),
            answered_at: None,
            answered_by: None,
            ringing_emitted: false,
            answered_emitted: false,
            announced: false,
            approximate: false,
            last_activity: t,
        }
    }
}

impl PbxCalls {
    pub(super) fn root_party(&self, call: &Call) -> Party {
        match self.chans.get(&call.root) {
            Some(c) if c.party_at_create.is_party() => c.party_at_create.clone(),
            Some(c) if matches!(c.party_at_create, Party::Local(_)) => {
                // A Local root: the PBX generated the call; the first real
                // party stands for it.
                call.members
                    .iter()
                    .filter_map(|m| self.chans.get(m))
                    .find(|c| c.party_at_create.is_party())
                    .map_or(Party::Placeholder, |c| c.party_at_create.clone())
            }
            _ => Party::Placeholder,
        }
    }

    pub(super) fn is_originated(&self, call: &Call) -> bool {
        call.originated
            || self
                .chans
                .get(&call.root)
                .is_some_and(|c| matches!(c.party_at_create, Party::Local(_)))
    }

    pub(super) fn direction(&self, call: &Call) -> Direction {
        let others = || {
            call.members
                .iter()
                .filter(|m| **m != call.root)
                .filter_map(|m| self.chans.get(m))
        };
        let has_trunk = others().any(|c| matches!(c.party_at_create, Party::Trunk(_)));
        let has_ext = others().any(|c| matches!(c.party_at_create, Party::Extension(_)));
        let root = self.root_party(call);
        if self.is_originated(call) {
            if has_trunk || matches!(root, Party::Trunk(_)) {
                Direction::Outgoing
            } else if has_ext && matches!(root, Party::Extension(_)) {
                Direction::Internal
            } else {
                Direction::Outgoing
            }
        } else {
            match root {
                Party::Trunk(_) => Direction::Incoming,
                _ if has_trunk => Direction::Outgoing,
                _ => Direction::Internal,
            }
        }
    }

    /// The extension channel that placed an outgoing/internal call.
    pub(super) fn caller_chan<'s>(&'s self, call: &Call) -> Option<&'s Chan> {
        let root = self.chans.get(&call.root)?;
        if matches!(root.party_at_create, Party::Extension(_)) {
            return Some(root);
        }
        call.members
            .iter()
            .filter_map(|m| self.chans.get(m))
            .find(|c| matches!(c.party_at_create, Party::Extension(_)))
            .map(|c| &**c)
    }

    pub(super) fn caller(&self, call: &Call, dir: Direction) -> (Option<Str>, Option<Str>) {
        match dir {
            Direction::Incoming => match self.chans.get(&call.root) {
                Some(r) => (r.caller_num.clone(), r.caller_name.clone()),
                None => (None, None),
            },
            _ => match self.caller_chan(call) {
                Some(c) => (
                    c.first_caller_num
                        .clone()
                        .or_else(|| c.party_at_create.extension().map(Str::from)),
                    c.first_caller_name.clone(),
                ),
                None => (None, None),
            },
        }
    }

    pub(super) fn dialed(&self, call: &Call) -> Option<Str> {
        self.chans
            .get(&call.root)
            .and_then(|r| r.first_exten.clone())
            .or_else(|| call.originate_exten.clone())
    }

    pub(super) fn disposition(&self, call: &Call) -> Disposition {
        if call.answered_at.is_some() {
            return Disposition::Answered;
        }
        if call.queue.is_some() {
            return if call.abandoned {
                Disposition::Abandoned
            } else {
                Disposition::NoAnswer
            };
        }
        let mut statuses: Vec<&str> = call.dial_statuses.iter().map(Str::as_str).collect();
        for m in &call.members {
            if let Some(s) = self.chans.get(m).and_then(|c| c.dial_status.as_deref()) {
                statuses.push(s);
            }
        }
        let any = |want: &[&str]| {
            statuses
                .iter()
                .any(|s| want.iter().any(|w| s.eq_ignore_ascii_case(w)))
        };
        if any(&["NOANSWER", "CANCEL"]) {
            Disposition::NoAnswer
        } else if any(&["BUSY"]) {
            Disposition::Busy
        } else if any(&["CHANUNAVAIL", "CONGESTION"]) {
            Disposition::Failed
        } else if call
            .members
            .iter()
            .any(|m| *m != call.root && self.chans.get(m).is_some_and(|c| c.cause == Some(17)))
        {
            Disposition::Busy
        } else if let Some(d) = self.first_leg_outcome(call) {
            d
        } else {
            Disposition::NoAnswer
        }
    }

    pub(super) fn emit_call_state(
        &mut self,
        session: &str,
        state: State,
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        let Some(call) = self.calls.get(session) else {
            return;
        };
        let done = match state {
            State::Ringing => call.ringing_emitted,
            State::Answered => call.answered_emitted,
            State::Hungup => true,
        };
        if done {
            return;
        }
        let dir = self.direction(call);
        let (num, name) = self.caller(call, dir);
        let ev = CallStateEvent {
            session_id: owned(&call.session),
            pbx: self.pbx.to_string(),
            state,
            direction: dir,
            caller_number: owned_opt(&num),
            caller_name: owned_opt(&name),
            dialed_number: owned_opt(&self.dialed(call)),
            queue: owned_opt(&call.queue),
            answered_by: if state == State::Answered {
                owned_opt(&call.answered_by)
            } else {
                None
            },
            at: Timestamp(t),
            approximate: call.approximate,
            extra: Default::default(),
        };
        if let Some(call) = self.calls.get_mut(session) {
            match state {
                State::Ringing => call.ringing_emitted = true,
                State::Answered => {
                    call.ringing_emitted = true;
                    call.answered_emitted = true
                }
                State::Hungup => {}
            }
            call.announced = true;
        }
        out.push(ModelEvent::CallState(ev));
    }

    /// Closes a call: open legs end, the record is emitted, memory is freed.
    pub(super) fn end_call(
        &mut self,
        session: &str,
        t: f64,
        reason: EndReason,
        out: &mut Vec<ModelEvent>,
    ) {
        let approx = reason != EndReason::Hangup;
        if approx {
            if let Some(c) = self.calls.get_mut(session) {
                c.approximate = true;
            }
        }
        let open: Vec<usize> = self
            .calls
            .get(session)
            .map(|c| {
                c.legs
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.state != Some(State::Hungup))
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
        for i in open {
            self.leg_to(session, i, State::Hungup, t, approx, out);
        }
        let Some(call) = self.calls.get(session) else {
            return;
        };
        if call.announced || self.root_announces(call) {
            let rec = self.record(call, t, reason);
            metrics()
                .calls_finished
                .with_label_values(&[rec.direction.as_str(), rec.disposition.as_str()])
                .inc();
            if reason != EndReason::Hangup {
                let r = match reason {
                    EndReason::MaxAge => "max_age",
                    _ => "reconnect",
                };
                metrics()
                    .calls_closed_abnormally
                    .with_label_values(&[&self.pbx, r])
                    .inc();
            }
            out.push(ModelEvent::Call(rec));
        }
        if let Some(call) = self.calls.remove(session) {
            self.regrouped = true;
            // The session id itself: a late channel or Linkedid naming it
            // must not reopen the call.
            if !call.members.iter().any(|m| m == session) {
                self.tombstone(session.to_compact_string(), t);
            }
            for a in call.aliases {
                self.renamed.remove(&a);
                if !call.members.contains(&a) {
                    self.tombstone(a, t);
                }
            }
            for m in call.members {
                if let Some(ch) = self.chans.remove(&m) {
                    if self.by_name.get(&ch.name).is_some_and(|u| *u == m) {
                        self.by_name.remove(&ch.name);
                    }
                    self.pending.retain(|(u, _, _)| *u != m);
                }
                self.tombstone(m, t);
            }
        }
    }

    /// A real party started this call (an incoming trunk call, a phone dialing).
    pub(super) fn root_announces(&self, call: &Call) -> bool {
        self.chans.get(&call.root).is_some_and(|r| {
            r.party_at_create.is_party()
                && (matches!(r.party_at_create, Party::Trunk(_)) || r.first_exten.is_some())
                && (r.state != ChanState::Down || r.up_at.is_some())
        })
    }

    pub(super) fn record(&self, call: &Call, t: f64, reason: EndReason) -> CallRecord {
        let dir = self.direction(call);
        let (num, name) = self.caller(call, dir);
        let started = self.chans.get(&call.root).map_or(t, |r| r.created_at).min(
            call.members
                .iter()
                .filter_map(|m| self.chans.get(m))
                .map(|c| c.created_at)
                .fold(f64::MAX, f64::min),
        );
        // Who had the call at the end: of the parties that answered (the
        // caller excepted), the one that stayed longest.
        let mut final_by: Option<(f64, f64, Str)> = None;
        for c in call
            .members
            .iter()
            .filter(|m| **m != call.root)
            .filter_map(|m| self.chans.get(m))
        {
            let Some(up) = c.up_at else { continue };
            let who = match &c.party_at_create {
                Party::Extension(e) => e.clone(),
                Party::Trunk(_) if dir == Direction::Outgoing => Str::const_new("external"),
                _ => continue,
            };
            let end = c.hungup_at.unwrap_or(f64::MAX);
            if final_by
                .as_ref()
                .is_none_or(|(e, u, _)| end > *e || (end == *e && up > *u))
            {
                final_by = Some((end, up, who));
            }
        }
        let final_answered_by = if call.answered_at.is_some() {
            final_by
                .map(|(_, _, w)| w)
                .or_else(|| call.answered_by.clone())
        } else {
            None::<Str>
        };
        CallRecord::new(
            CallFacts {
                session_id: owned(&call.session),
                pbx: self.pbx.to_string(),
                direction: dir,
                caller_number: owned_opt(&num),
                caller_name: owned_opt(&name),
                dialed_number: owned_opt(&self.dialed(call)),
                queue: owned_opt(&call.queue),
                extensions_rung: call.rung.iter().map(owned).collect(),
                answered_by: owned_opt(&call.answered_by),
                final_answered_by: owned_opt(&final_answered_by),
                disposition: self.disposition(call),
                end_reason: reason,
                recording_url: None,
                approximate: call.approximate,
                extra: Default::default(),
            },
            started,
            call.answered_at,
            t,
        )
    }
}
