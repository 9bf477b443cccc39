//! The call-scope states: ringing and answered, each emitted once.

use super::session::Session;
use crate::model::{CallStateEvent, ModelEvent, Role, State, Timestamp};

impl Session {
    pub(super) fn emit_call_state(
        &mut self,
        team: &str,
        state: State,
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        let done = match state {
            State::Ringing => self.ringing_emitted,
            State::Answered => self.answered_emitted,
            State::Hungup => true,
        };
        if done {
            return;
        }
        match state {
            State::Ringing => self.ringing_emitted = true,
            State::Answered => {
                self.ringing_emitted = true;
                self.answered_emitted = true;
            }
            State::Hungup => {}
        }
        self.announced = true;
        out.push(ModelEvent::CallState(CallStateEvent {
            session_id: self.id.clone(),
            pbx: team.to_string(),
            state,
            direction: self.dir(),
            caller_number: self.caller_number(),
            caller_name: self.caller_name.clone(),
            dialed_number: self.dialed_number(),
            queue: self.queue.clone(),
            answered_by: if state == State::Answered {
                self.answered_by.clone()
            } else {
                None
            },
            at: Timestamp(t),
            approximate: self.approximate,
            extra: self.extra.clone(),
        }));
    }

    /// The call was answered by `by` at `t` (the earliest answer wins).
    pub(super) fn call_answered(
        &mut self,
        team: &str,
        by: Option<String>,
        t: f64,
        approx: bool,
        out: &mut Vec<ModelEvent>,
    ) {
        match self.answered_at {
            Some(a) if a <= t => return,
            Some(_) => {
                // An earlier answer pushed late: the record says who was first.
                self.answered_at = Some(t);
                self.answered_by = by;
                return;
            }
            None => {}
        }
        self.answered_at = Some(t);
        self.answered_by = by;
        self.emit_call_state(team, State::Answered, t, out);
        let callers: Vec<usize> = self
            .legs
            .iter()
            .enumerate()
            .filter(|(_, l)| l.role == Role::Caller && l.hungup_at.is_none())
            .map(|(i, _)| i)
            .collect();
        for i in callers {
            self.leg_to(team, i, State::Answered, t, approx, out);
        }
    }
}
