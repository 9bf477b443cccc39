//! An extension's current calls, kept from the call model's legs.
//!
//! One entry per leg (`leg_id`): created by a `ringing` or `answered` leg
//! event, updated by later ones, removed by the leg's `hungup` (or by the
//! call's record, or by age when the model's end never arrives). Whether a
//! call is on hold comes from the PBX (`Hold`/`Unhold`), per session.

use crate::model::{Direction, LegEvent, Role, State, Timestamp};

use super::event::{CallPhase, PresenceCall};

/// One leg of the extension that has not hung up.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LiveCall {
    pub session_id: String,
    pub leg_id: String,
    pub role: Role,
    /// `Ringing` or `Answered` (never `Hungup`: those are removed).
    pub state: State,
    pub direction: Direction,
    pub caller_number: Option<String>,
    pub caller_name: Option<String>,
    pub dialed_number: Option<String>,
    pub queue: Option<String>,
    /// First state of the leg (PBX clock).
    pub since: f64,
    /// Last leg event (PBX clock): ringing legs expire from here.
    pub updated: f64,
}

impl LiveCall {
    /// A call from its first (ringing or answered) leg event.
    pub fn new(l: &LegEvent) -> Self {
        Self {
            session_id: l.session_id.clone(),
            leg_id: l.leg_id.clone(),
            role: l.role,
            state: l.state,
            direction: l.direction,
            caller_number: l.caller_number.clone(),
            caller_name: l.caller_name.clone(),
            dialed_number: l.dialed_number.clone(),
            queue: l.queue.clone(),
            since: l.at.0,
            updated: l.at.0,
        }
    }

    /// Takes a later leg event of the same leg (states only move forward;
    /// caller, direction, queue may become known later).
    pub fn update(&mut self, l: &LegEvent) {
        if l.state > self.state {
            self.state = l.state;
        }
        self.direction = l.direction;
        self.role = l.role;
        if l.caller_number.is_some() {
            self.caller_number = l.caller_number.clone();
        }
        if l.caller_name.is_some() {
            self.caller_name = l.caller_name.clone();
        }
        if l.dialed_number.is_some() {
            self.dialed_number = l.dialed_number.clone();
        }
        if l.queue.is_some() {
            self.queue = l.queue.clone();
        }
        self.updated = self.updated.max(l.at.0);
    }

    /// Answered (talking or on hold), as opposed to ringing.
    pub fn answered(&self) -> bool {
        self.state == State::Answered
    }

    /// Where the extension stands in the call.
    fn phase(&self, held: bool) -> CallPhase {
        match (self.state, self.role) {
            (State::Answered, _) if held => CallPhase::OnHold,
            (State::Answered, _) | (State::Hungup, _) => CallPhase::Talking,
            (State::Ringing, Role::Callee) => CallPhase::Ringing,
            (State::Ringing, Role::Caller) => CallPhase::Dialing,
        }
    }

    /// True when [`view`](Self::view) would give `v` (without building it).
    pub fn shows_as(&self, held: bool, v: &PresenceCall) -> bool {
        self.session_id == v.session_id
            && self.leg_id == v.leg_id
            && self.role == v.role
            && self.phase(held) == v.phase
            && self.direction == v.direction
            && self.caller_number == v.caller_number
            && self.caller_name == v.caller_name
            && self.dialed_number == v.dialed_number
            && self.queue == v.queue
            && Timestamp(self.since) == v.since
    }

    /// The public view.
    pub fn view(&self, held: bool) -> PresenceCall {
        PresenceCall {
            session_id: self.session_id.clone(),
            leg_id: self.leg_id.clone(),
            role: self.role,
            phase: self.phase(held),
            direction: self.direction,
            caller_number: self.caller_number.clone(),
            caller_name: self.caller_name.clone(),
            dialed_number: self.dialed_number.clone(),
            queue: self.queue.clone(),
            since: Timestamp(self.since),
        }
    }
}
