//! The decision: an extension's evidence in, the state a person would name
//! out. Pure; every rule is a table test below.
//!
//! Two kinds of evidence, which arrive on different paths and so may be a
//! few milliseconds out of order with each other in the daemon (the model's
//! events come after the normalizer's commit, and Asterisk ≤ 11 legs can
//! be decided late and back-dated):
//!
//! * **the call model's legs** — authoritative while the extension has a
//!   call in the model: a callee leg `ringing` makes it `ringing` even
//!   before the hint says so, an answered leg `in_use`, a ringing leg on
//!   top of an answered one is call waiting. A leg is *superseded* when the
//!   PBX said something newer (PBX clock) that contradicts it — no longer
//!   ringing for a ringing leg, idle for an answered or dialing one: the
//!   model has not caught up yet (answer, hangup), so the PBX decides and
//!   the row does not flicker back when the model's late event arrives.
//! * **the PBX's view** ([`PbxView`], computed by the table): the hint,
//!   else the device states, with registration on top. Decides when the
//!   model has no call for the extension (DND `busy`, `unavailable`, a call
//!   the model does not track), and adds what the model does not know:
//!   hold without a `Hold` event (chan_sip's `Hold` hint), and an
//!   Originate ringing the agent's own phone (a *caller* leg that rings:
//!   `ringing` when the PBX says so, otherwise the phone is dialing out,
//!   `in_use`). On an AMI PBX such a *dialing* leg waits up to
//!   [`DIAL_GRACE`] for the PBX's word (which comes within a millisecond
//!   when the extension has a hint), so a click-to-call shows `ringing`
//!   rather than `in_use` then `ringing`.

/// How long a dialing leg waits for the PBX to say whether the phone rings
/// (click-to-call) or dials out, before it counts as `in_use` anyway.
pub const DIAL_GRACE: f64 = 1.0;

use std::collections::{BTreeMap, VecDeque};

use crate::model::{Role, State};

use super::calls::LiveCall;
use super::event::StateSource;
use super::state::{PresenceState, Reported};

/// What the PBX says about an extension, from which source, and when it
/// said it (PBX clock).
pub(crate) type PbxView = Option<(Reported, StateSource, f64)>;

/// Everything known about one extension.
pub(crate) struct Evidence<'a> {
    /// Current calls by leg id.
    pub calls: &'a BTreeMap<String, LiveCall>,
    /// Sessions the extension put on hold.
    pub held: &'a VecDeque<String>,
    /// The PBX's view.
    pub pbx: PbxView,
    /// The extension had calls in the model (so with no PBX view at all,
    /// the end of its calls means idle).
    pub had_calls: bool,
    /// The tenant is a PBX that reports extension states (AMI): dialing
    /// legs wait for its word (see [`DIAL_GRACE`]).
    pub confirm_dialing: bool,
    /// The latest time seen (PBX clock).
    pub now: f64,
}

/// The state, call waiting, and what decided.
pub(crate) fn derive(e: &Evidence<'_>) -> (Reported, StateSource) {
    let mut active = 0usize;
    let mut held = 0usize;
    let mut offered = 0usize;
    let mut dialing = 0usize;
    let newer = |c: &LiveCall| e.pbx.filter(|p| p.2 > c.updated).map(|p| p.0);
    for c in e.calls.values() {
        if let Some(p) = newer(c) {
            let superseded = match c.state {
                State::Ringing if c.role == Role::Callee => {
                    p.state != PresenceState::Ringing && !p.call_waiting
                }
                _ => p.state == PresenceState::Idle,
            };
            if superseded {
                continue;
            }
        } else if e.confirm_dialing
            && c.state == State::Ringing
            && c.role == Role::Caller
            && e.now - c.updated < DIAL_GRACE
        {
            // Dialing out or being rung by an Originate: the PBX will say.
            continue;
        }
        match (c.state, c.role) {
            (State::Ringing, Role::Callee) => offered += 1,
            (State::Ringing, Role::Caller) => dialing += 1,
            _ => {
                active += 1;
                if e.held.iter().any(|s| *s == c.session_id) {
                    held += 1;
                }
            }
        }
    }
    // A dialing leg is the phone being rung (an Originate) when the PBX
    // says the phone rings — or, on "in use and ringing", when a call is
    // already up and nothing else rings; otherwise it is dialing out.
    let pbx = e.pbx.map(|(r, _, _)| r);
    let pbx_state = pbx.map(|r| r.state);
    for _ in 0..dialing {
        let rung = pbx_state == Some(PresenceState::Ringing)
            || (pbx.is_some_and(|r| r.call_waiting) && offered == 0 && active > 0);
        if rung {
            offered += 1;
        } else {
            active += 1;
        }
    }
    if active > 0 {
        let state = if held == active {
            PresenceState::OnHold
        } else if held > 0 {
            // One call held, talking on another (consultation).
            PresenceState::InUse
        } else if pbx_state == Some(PresenceState::OnHold) {
            PresenceState::OnHold
        } else {
            PresenceState::InUse
        };
        return (
            Reported {
                state,
                call_waiting: offered > 0,
            },
            StateSource::Calls,
        );
    }
    if offered > 0 {
        return (Reported::plain(PresenceState::Ringing), StateSource::Calls);
    }
    match e.pbx {
        Some((r, src, _)) => (r, src),
        None if e.had_calls && e.calls.is_empty() => {
            (Reported::plain(PresenceState::Idle), StateSource::Inferred)
        }
        None => (Reported::plain(PresenceState::Unknown), StateSource::None),
    }
}

#[cfg(test)]
mod tests {
    use super::PresenceState::*;
    use super::*;
    use crate::model::Direction;

    fn call(session: &str, role: Role, state: State) -> LiveCall {
        LiveCall {
            session_id: session.into(),
            leg_id: format!("{session}/x"),
            role,
            state,
            direction: Direction::Incoming,
            caller_number: None,
            caller_name: None,
            dialed_number: None,
            queue: None,
            since: 1.0,
            updated: 1.0,
        }
    }

    fn run(
        calls: Vec<LiveCall>,
        held: &[&str],
        pbx: Option<(PresenceState, bool)>,
        had: bool,
    ) -> (PresenceState, bool, StateSource) {
        run_at(calls, held, pbx, 0.5, had)
    }

    /// `pbx_at`: when the PBX said it (the calls are at 1.0).
    fn run_at(
        calls: Vec<LiveCall>,
        held: &[&str],
        pbx: Option<(PresenceState, bool)>,
        pbx_at: f64,
        had: bool,
    ) -> (PresenceState, bool, StateSource) {
        let calls: BTreeMap<String, LiveCall> =
            calls.into_iter().map(|c| (c.leg_id.clone(), c)).collect();
        let held: VecDeque<String> = held.iter().map(|s| s.to_string()).collect();
        let (r, s) = derive(&Evidence {
            calls: &calls,
            held: &held,
            confirm_dialing: false,
            now: 1.0,
            pbx: pbx.map(|(state, call_waiting)| {
                (
                    Reported {
                        state,
                        call_waiting,
                    },
                    StateSource::Hint,
                    pbx_at,
                )
            }),
            had_calls: had,
        });
        (r.state, r.call_waiting, s)
    }

    #[test]
    fn the_model_decides_while_it_has_calls() {
        use Role::*;
        let ring = call("a", Callee, State::Ringing);
        let talk = call("a", Callee, State::Answered);
        let waiting = call("b", Callee, State::Ringing);
        let dial = call("c", Caller, State::Ringing);
        type Case<'a> = (
            Vec<LiveCall>,
            Vec<&'a str>,
            Option<(PresenceState, bool)>,
            (PresenceState, bool),
        );
        let cases: Vec<Case> = vec![
            // A ringing leg rings before the hint says so, and while the
            // hint already says answered (the model lags behind it).
            (
                vec![ring.clone()],
                vec![],
                Some((Idle, false)),
                (Ringing, false),
            ),
            (
                vec![ring.clone()],
                vec![],
                Some((InUse, false)),
                (Ringing, false),
            ),
            (vec![ring.clone()], vec![], None, (Ringing, false)),
            // Answered: in use, whatever a late hint says.
            (
                vec![talk.clone()],
                vec![],
                Some((Idle, false)),
                (InUse, false),
            ),
            (
                vec![talk.clone()],
                vec![],
                Some((Ringing, false)),
                (InUse, false),
            ),
            // Call waiting.
            (
                vec![talk.clone(), waiting.clone()],
                vec![],
                Some((InUse, true)),
                (InUse, true),
            ),
            // Hold from the Hold event (PJSIP: the hint stays InUse) or
            // from the hint (chan_sip).
            (
                vec![talk.clone()],
                vec!["a"],
                Some((InUse, false)),
                (OnHold, false),
            ),
            (
                vec![talk.clone()],
                vec![],
                Some((OnHold, false)),
                (OnHold, false),
            ),
            (
                vec![talk.clone(), call("d", Callee, State::Answered)],
                vec!["a"],
                None,
                (InUse, false),
            ),
            // Dialing out is in use; an Originate ringing the agent's phone rings.
            (
                vec![dial.clone()],
                vec![],
                Some((InUse, false)),
                (InUse, false),
            ),
            (vec![dial.clone()], vec![], None, (InUse, false)),
            (
                vec![dial.clone()],
                vec![],
                Some((Ringing, false)),
                (Ringing, false),
            ),
        ];
        for (i, (calls, held, pbx, want)) in cases.into_iter().enumerate() {
            let (s, cw, src) = run(calls, &held, pbx, true);
            assert_eq!((s, cw), want, "case {i}");
            assert_eq!(src, StateSource::Calls, "case {i}");
        }
    }

    #[test]
    fn newer_pbx_news_supersedes_a_lagging_leg() {
        use Role::*;
        let ring = call("a", Callee, State::Ringing);
        let talk = call("a", Callee, State::Answered);
        let dial = call("c", Caller, State::Ringing);
        // Answered, or gone elsewhere, after the leg rang.
        assert_eq!(
            run_at(vec![ring.clone()], &[], Some((InUse, false)), 2.0, true).0,
            InUse
        );
        assert_eq!(
            run_at(vec![ring.clone()], &[], Some((Idle, false)), 2.0, true).0,
            Idle
        );
        // Still ringing, or call waiting: the leg stands.
        assert_eq!(
            run_at(vec![ring.clone()], &[], Some((Ringing, false)), 2.0, true).0,
            Ringing
        );
        assert_eq!(
            run_at(
                vec![talk.clone(), call("b", Callee, State::Ringing)],
                &[],
                Some((InUse, true)),
                2.0,
                true
            ),
            (InUse, true, StateSource::Calls)
        );
        // Hung up before the model says so.
        assert_eq!(
            run_at(vec![talk.clone()], &[], Some((Idle, false)), 2.0, true).0,
            Idle
        );
        assert_eq!(
            run_at(vec![dial.clone()], &[], Some((Idle, false)), 2.0, true).0,
            Idle
        );
        // A newer "in use" or "on hold" never ends an answered call.
        assert_eq!(
            run_at(vec![talk.clone()], &[], Some((InUse, false)), 2.0, true).0,
            InUse
        );
        assert_eq!(
            run_at(vec![talk], &[], Some((OnHold, false)), 2.0, true).0,
            OnHold
        );
    }

    #[test]
    fn a_dialing_leg_is_dialing_out_or_being_rung() {
        use Role::*;
        let dial = call("c", Caller, State::Ringing);
        let talk = call("a", Callee, State::Answered);
        let ring = call("b", Callee, State::Ringing);
        // Click-to-call while talking: the PBX says in use + ringing and
        // nothing else rings: the agent's phone is being rung on top.
        assert_eq!(
            run_at(
                vec![talk.clone(), dial.clone()],
                &[],
                Some((InUse, true)),
                2.0,
                true
            ),
            (InUse, true, StateSource::Calls)
        );
        // Dialing out while another call rings: in use, that call waiting.
        assert_eq!(
            run_at(
                vec![ring.clone(), dial.clone()],
                &[],
                Some((InUse, true)),
                2.0,
                true
            ),
            (InUse, true, StateSource::Calls)
        );
        // On an AMI PBX, a fresh dialing leg waits for the PBX's word.
        let calls: BTreeMap<String, LiveCall> = [(dial.leg_id.clone(), dial.clone())].into();
        let held = VecDeque::new();
        let e = |now: f64| Evidence {
            calls: &calls,
            held: &held,
            pbx: Some((Reported::plain(Idle), StateSource::Hint, 0.5)),
            had_calls: true,
            confirm_dialing: true,
            now,
        };
        assert_eq!(derive(&e(1.2)).0.state, Idle, "within the grace");
        assert_eq!(
            derive(&e(1.0 + DIAL_GRACE + 0.1)).0.state,
            InUse,
            "after it"
        );
    }

    #[test]
    fn the_pbx_decides_without_calls() {
        assert_eq!(run(vec![], &[], Some((Busy, false)), true).0, Busy);
        assert_eq!(run(vec![], &[], Some((Ringing, false)), false).0, Ringing);
        assert!(run(vec![], &[], Some((InUse, true)), false).1);
        assert_eq!(
            run(vec![], &[], None, true),
            (Idle, false, StateSource::Inferred)
        );
        assert_eq!(
            run(vec![], &[], None, false),
            (Unknown, false, StateSource::None)
        );
        // A held session without a call (Hold before the leg) changes nothing.
        assert_eq!(run(vec![], &["a"], Some((Idle, false)), true).0, Idle);
    }
}
