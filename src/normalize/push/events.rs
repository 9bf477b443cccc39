//! What `ringing`, `answer` and `hangup` do to the legs and the call (the
//! transition table in the module docs).

use super::leg::LegRef;
use super::nonempty;
use super::party::Party;
use super::session::Session;
use crate::model::{Direction, ModelEvent, Role, State};
use crate::source::PushEvent;

impl Session {
    pub(super) fn ringing(
        &mut self,
        team: &str,
        party: &Party,
        ev: &PushEvent,
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        match party {
            Party::Agent { ext, role } => {
                match self.leg_for(ext, *role, t, ev.event_time.is_some()) {
                    LegRef::Live(i) => {
                        self.note_rung(ext, *role);
                        if self.legs[i].state.is_none() {
                            self.leg_to(team, i, State::Ringing, t, false, out);
                        } else {
                            self.legs[i].first_at = self.legs[i].first_at.min(t);
                        }
                    }
                    LegRef::Late(_) => self.note_rung(ext, *role),
                    LegRef::Skip => {}
                }
            }
            Party::Customer => {
                self.announced = true;
                // Outgoing: the customer's phone rings, the agent's leg rings out.
                if self.dir() == Direction::Outgoing {
                    if let Some(ext) = nonempty(&ev.extension).or(nonempty(&ev.agent)).cloned() {
                        if let LegRef::Live(i) = self.leg_for(&ext, Role::Caller, t, false) {
                            self.leg_to(team, i, State::Ringing, t, false, out);
                        }
                    }
                }
            }
            Party::Call => self.announced = true,
        }
    }

    pub(super) fn answer(
        &mut self,
        team: &str,
        party: &Party,
        ev: &PushEvent,
        t: f64,
        approx: bool,
        out: &mut Vec<ModelEvent>,
    ) {
        match party {
            Party::Agent { ext, role } => {
                match self.leg_for(ext, *role, t, ev.event_time.is_some()) {
                    LegRef::Live(i) => {
                        if self.legs[i].state.is_none() {
                            self.note_rung(ext, *role);
                        }
                        self.legs[i].first_at = self.legs[i].first_at.min(t);
                        self.leg_to(team, i, State::Answered, t, approx, out);
                        if *role == Role::Callee {
                            self.call_answered(team, Some(ext.clone()), t, approx, out);
                        }
                    }
                    LegRef::Late(i) => {
                        if *role == Role::Callee {
                            let leg = &mut self.legs[i];
                            leg.answered_at = Some(leg.answered_at.map_or(t, |a| a.min(t)));
                            self.call_answered(team, Some(ext.clone()), t, approx, out);
                        }
                    }
                    LegRef::Skip => {}
                }
            }
            Party::Customer => {
                self.announced = true;
                if self.dir() == Direction::Outgoing {
                    self.call_answered(team, Some("external".into()), t, approx, out);
                }
                // Incoming: the PBX answered the customer (IVR, queue): not an answer.
            }
            Party::Call => self.call_answered(team, None, t, approx, out),
        }
    }

    pub(super) fn hangup(
        &mut self,
        team: &str,
        party: &Party,
        ev: &PushEvent,
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        self.hangup_at = Some(self.hangup_at.map_or(t, |h| h.max(t)));
        let status = nonempty(&ev.dial_status).map(|s| s.to_ascii_uppercase());
        // `dialstatus: ANSWER` on a hangup is an answer we may not have seen.
        if matches!(status.as_deref(), Some("ANSWER" | "ANSWERED")) {
            let at = ev
                .billsec
                .map_or(t, |b| t - b.max(0.0))
                .max(self.started_at.min(t));
            let approx = ev.billsec.is_none();
            let dir = self.dir();
            match party {
                Party::Agent {
                    ext,
                    role: Role::Callee,
                } if dir != Direction::Outgoing => {
                    // Only for a leg still open (or not seen yet) that never answered.
                    let unanswered = self
                        .legs
                        .iter()
                        .rev()
                        .find(|l| &l.ext == ext)
                        .is_none_or(|l| l.answered_at.is_none() && l.hungup_at.is_none());
                    if unanswered {
                        if approx {
                            self.approximate = true;
                        }
                        self.answer(team, party, ev, at, approx, out);
                    }
                }
                _ if dir == Direction::Outgoing && self.answered_at.is_none() => {
                    if approx {
                        self.approximate = true;
                    }
                    self.call_answered(team, Some("external".into()), at, approx, out);
                }
                _ => {}
            }
        }
        match party {
            Party::Agent { ext, role } => {
                if let LegRef::Live(i) = self.leg_for(ext, *role, t, false) {
                    if self.legs[i].state.is_none() {
                        self.note_rung(ext, *role);
                    }
                    self.legs[i].status = status;
                    self.leg_to(team, i, State::Hungup, t, false, out);
                }
            }
            Party::Customer | Party::Call => {
                self.announced = true;
                self.customer_gone = true;
            }
        }
    }
}
