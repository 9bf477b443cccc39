//! The leg state machine: one agent's part in a call.

use super::session::Session;
use super::{PushCalls, MAX_LEGS};
use crate::metrics::metrics;
use crate::model::{
    duration_billsec, Direction, Disposition, LegEvent, ModelEvent, Role, State, Timestamp,
};

/// One agent's part in a call.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Leg {
    pub(super) id: String,
    pub(super) ext: String,
    pub(super) role: Role,
    pub(super) state: Option<State>,
    pub(super) first_at: f64,
    pub(super) answered_at: Option<f64>,
    pub(super) hungup_at: Option<f64>,
    pub(super) status: Option<String>,
    pub(super) approximate: bool,
}

/// Which leg an agent event applies to.
pub(super) enum LegRef {
    /// A leg that has not hung up (possibly just created).
    Live(usize),
    /// A leg that hung up before this (reordered) event.
    Late(usize),
    /// None (too many legs).
    Skip,
}

impl Session {
    pub(super) fn leg_disposition(&self, leg: &Leg) -> Disposition {
        if leg.role == Role::Caller {
            return self.disposition();
        }
        if leg.answered_at.is_some() {
            return Disposition::Answered;
        }
        match leg.status.as_deref() {
            Some("BUSY") => Disposition::Busy,
            Some("CHANUNAVAIL" | "CONGESTION" | "FAILED") => Disposition::Failed,
            _ => Disposition::NoAnswer,
        }
    }

    /// Moves leg `idx` forward to `state` and emits (nothing if not forward).
    pub(super) fn leg_to(
        &mut self,
        team: &str,
        idx: usize,
        state: State,
        t: f64,
        approximate: bool,
        out: &mut Vec<ModelEvent>,
    ) {
        let Some(leg) = self.legs.get(idx) else {
            return;
        };
        if leg.state.is_some_and(|s| s >= state) {
            return;
        }
        if state == State::Ringing || (state == State::Answered && !self.ringing_emitted) {
            self.emit_call_state(team, State::Ringing, t, out);
        }
        let leg = &mut self.legs[idx];
        leg.state = Some(state);
        leg.approximate |= approximate;
        match state {
            State::Ringing => {}
            State::Answered => leg.answered_at = Some(t),
            State::Hungup => leg.hungup_at = Some(t),
        }
        self.announced = true;
        let leg = &self.legs[idx];
        let (duration, billsec, disposition) = if state == State::Hungup {
            let (duration, billsec) = duration_billsec(leg.first_at, leg.answered_at, t);
            (
                Some(duration),
                Some(billsec),
                Some(self.leg_disposition(leg)),
            )
        } else {
            (None, None, None)
        };
        let dir = self.dir();
        metrics()
            .leg_transitions
            .with_label_values(&[state.as_str(), dir.as_str()])
            .inc();
        out.push(ModelEvent::Leg(LegEvent {
            session_id: self.id.clone(),
            pbx: team.to_string(),
            leg_id: leg.id.clone(),
            state,
            direction: dir,
            role: leg.role,
            extension: leg.ext.clone(),
            caller_number: self.caller_number(),
            caller_name: self.caller_name.clone(),
            dialed_number: self.dialed_number(),
            queue: self.queue.clone(),
            at: Timestamp(t),
            duration,
            billsec,
            disposition,
            approximate: leg.approximate || self.approximate,
            extra: self.extra.clone(),
        }));
    }

    /// The leg an agent event is about; `reoffer` says whether an event
    /// after the leg's hangup opens a new leg (`#2`).
    pub(super) fn leg_for(&mut self, ext: &str, role: Role, t: f64, reoffer: bool) -> LegRef {
        if let Some(i) = self.legs.iter().rposition(|l| l.ext == ext) {
            let leg = &self.legs[i];
            match leg.hungup_at {
                None => return LegRef::Live(i),
                Some(h) if !(reoffer && t > h) => return LegRef::Late(i),
                Some(_) => {}
            }
        }
        if self.legs.len() >= MAX_LEGS {
            PushCalls::ignored("too_many_legs");
            return LegRef::Skip;
        }
        let n = self.legs.iter().filter(|l| l.ext == ext).count();
        let id = if n == 0 {
            format!("{}/{}", self.id, ext)
        } else {
            format!("{}/{}#{}", self.id, ext, n + 1)
        };
        self.legs.push(Leg {
            id,
            ext: ext.to_string(),
            role,
            state: None,
            first_at: t,
            answered_at: None,
            hungup_at: None,
            status: None,
            approximate: false,
        });
        LegRef::Live(self.legs.len() - 1)
    }

    pub(super) fn note_rung(&mut self, ext: &str, role: Role) {
        let offered = role == Role::Callee || self.dir() == Direction::Outgoing;
        if offered && !self.rung.iter().any(|e| e == ext) {
            self.rung.push(ext.to_string());
        }
    }
}
