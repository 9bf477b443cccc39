//! asterCC-style pushed events → the call model (legs, call states, call
//! records), per team. Pure and synchronous like the AMI side: the HTTP
//! endpoint (`http::push`) authenticates and validates, this module decides.
//!
//! # Sessions and parties
//!
//! A call is one `sessionid` of one team (the team is the `pbx` of every
//! model event). Every pushed event is about one *party* of the call, named
//! by `source`; which party that is depends on the call type:
//!
//! | `calltype` | direction | `source: CALLER` is | `source: CALLEE` is | `activenum` is |
//! |---|---|---|---|---|
//! | `dialin` (`in`, `inbound`, `incoming`, `callin`) | `incoming` | the customer (no leg) | the agent: a leg, role `callee` | the customer: `caller_number` |
//! | `dialout` (`out`, `outbound`, `outgoing`, `callout`, and the dialer kinds `autodial`, `predictive`, `preview`, `progressive`, `campaign`, `callback`) | `outgoing` | the agent: a leg, role `caller` | the customer (no leg) | the customer: `dialed_number` |
//! | anything else (`internal`, `local`…), or none | `internal` | the calling agent: leg, role `caller` | the called agent: leg, role `callee` | the other agent |
//!
//! The agent's leg is `SESSION/EXT` where EXT is the event's extension
//! (`extension`, `exten`, `agentphone`, `phone`), else its agent number
//! (`agent`, `agentnum`, `workno`…). An event about the agent that names
//! neither concerns the call only. Without `source`, an event that names an
//! extension is about the agent (role `callee` unless the call is outgoing),
//! otherwise about the customer (internal calls: the call only).
//!
//! Numbers, first non-empty value wins, recomputed with the direction known
//! at each moment: incoming `caller_number` = `activenum`, `dialed_number` =
//! `did`/`dnis`; outgoing `caller_number` = the agent's extension (as on AMI
//! outgoing calls), `dialed_number` = `activenum`; internal `caller_number` =
//! the CALLER's extension (or the `activenum` of a CALLEE event),
//! `dialed_number` = the `activenum` of a CALLER event (or the CALLEE's
//! extension). The direction is set by the first event that carries a
//! `calltype`.
//!
//! # Transitions (the same monotonic rules and events as AMI)
//!
//! | event | agent (leg) | customer |
//! |---|---|---|
//! | `ringing` | leg `ringing` (and call `ringing`, first time); the extension joins `extensions_rung` (on outgoing calls too: asterCC rings the agent's phone first, like a click-to-call) | the call exists (a record will be written); outgoing: the agent's leg rings out |
//! | `answer`, `answered` | leg `answered`; a `callee` leg answering is the call's answer (`answered_by` = the extension, call `answered`, the calling agent's leg `answered`); a `caller` leg answering is the agent picking up | incoming: the PBX answered the customer (IVR, queue): **not** an answer. Outgoing: the customer answered: call `answered`, `answered_by: external`, the agent's leg `answered` |
//! | `hangup` | leg `hungup` (duration, billsec, disposition) | the customer left: the call is over |
//! | anything else | no transition; its fields (queue, recording, unknown fields) join the call | same |
//!
//! States only move forward and each is emitted once. A leg's first event
//! may be its `hangup`: it emits just `hungup`. An event for a leg that
//! already hung up is *late* (reordered) unless its `eventTime` is after the
//! leg's hangup, in which case the extension is offered the call again
//! (`SESSION/EXT#2`, as on AMI). A late `ringing` only moves the call's
//! start earlier; a late `answer` still answers the call (call `answered`,
//! `answered_at`) but never the leg.
//!
//! **Disposition.** `ANSWERED` when someone answered; otherwise from the
//! `dialstatus` values seen (`NOANSWER`/`CANCEL` → `NO ANSWER`, else `BUSY`
//! → `BUSY`, else `CHANUNAVAIL`/`CONGESTION`/`FAILED` → `FAILED`, the same
//! order as AMI), else `NO ANSWER`. A `hangup` carrying `dialstatus: ANSWER`
//! for a party that was never seen answering counts as an answer at
//! `eventTime − billsec` (at the hangup, `approximate`, without `billsec`).
//! `ABANDONED` is never inferred from pushes.
//!
//! # When a call ends
//!
//! A call is *over* once a hangup was seen and: the customer (or, for an
//! event that names no party, the call) hung up; or every leg hung up and
//! either someone answered, or the call is not incoming, or no customer
//! event was ever pushed for it (an incoming queue call whose agents all
//! missed it waits for the customer's hangup: another agent may ring). The
//! record is written `push_settle` seconds (receive time) after the
//! session's last push, so that events pushed out of order are folded in:
//! a `hangup` that arrives before its `ringing` and `answer` still gives
//! one record with the right times and disposition. Legs still open then
//! hang up with the call. A session that never ends is closed by the same
//! `max_call_age` as AMI calls (measured from its first push, local clock),
//! `end_reason: max_age`, `approximate: true`. A session that never said
//! anything (only unknown events) leaves no record.
//!
//! # Duplicates, late events, memory
//!
//! An event with the same `event`, `source`, extension/agent and
//! `eventTime` as one already applied to the session is a duplicate: no
//! transition, reported as such (the pusher retried). The extension is part
//! of the key so that two agents' hangups in the same second stay distinct.
//! A finished session is remembered (with its duplicate keys) for
//! `late_event_window`, at most `max_tombstones` of them: a late event never
//! reopens it. Per session at most [`MAX_LEGS`] legs, [`MAX_SEEN`] duplicate
//! keys and [`MAX_EXTRA`] extra fields are kept.
//!
//! # Time
//!
//! Event time is `eventTime` (parsed by the endpoint), else the receive
//! time on the team's clock. The team's clock offset (`eventTime` minus
//! receive time) is the largest seen over the last 5–10 minutes: delayed or
//! retried pushes do not drag it (delivery freshness limits use it).
//! Settling and the maximum age run on the local receive clock.
//!
//! # Batches
//!
//! [`PushCalls::begin`] starts a journal of every session the following
//! calls change; [`PushCalls::rollback`] restores them (the outbox refused
//! the batch's deliveries: the pushes are answered 503 and, when retried,
//! applied again instead of being duplicates), [`PushCalls::commit`] drops
//! the journal.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tracing::debug;

use super::NormalizerConfig;
use crate::metrics::metrics;
use crate::model::{
    duration_billsec, CallFacts, CallRecord, CallStateEvent, Direction, Disposition, EndReason,
    LegEvent, ModelEvent, Role, State, Timestamp,
};
use crate::source::{PbxId, PushEvent, PushKind, PushReceipt, PushSide};

/// Most legs kept per session (more extensions are ignored and counted).
pub const MAX_LEGS: usize = 64;
/// Most duplicate keys remembered per session (oldest forgotten first).
pub const MAX_SEEN: usize = 256;
/// Most extra fields kept per session (new names beyond are dropped).
pub const MAX_EXTRA: usize = 100;
/// Length of one clock-offset window, seconds.
const CLOCK_WINDOW: f64 = 300.0;

/// The direction a `calltype` means (see the module table).
pub fn direction_of(call_type: &str) -> Direction {
    match call_type.trim().to_ascii_lowercase().as_str() {
        "dialin" | "in" | "inbound" | "incoming" | "callin" => Direction::Incoming,
        "dialout" | "out" | "outbound" | "outgoing" | "callout" | "autodial" | "predictive"
        | "preview" | "progressive" | "campaign" | "callback" => Direction::Outgoing,
        _ => Direction::Internal,
    }
}

/// What makes two pushes the same event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    event: String,
    side: Option<PushSide>,
    party: Option<String>,
    time: Option<String>,
}

impl Key {
    fn of(ev: &PushEvent) -> Self {
        Key {
            event: ev.event.clone(),
            side: ev.side,
            party: nonempty(&ev.extension).or(nonempty(&ev.agent)).cloned(),
            time: ev.event_time_raw.clone(),
        }
    }
}

fn nonempty(v: &Option<String>) -> Option<&String> {
    v.as_ref().filter(|s| !s.trim().is_empty())
}

fn fill(slot: &mut Option<String>, v: Option<&String>) {
    if slot.is_none() {
        if let Some(v) = v {
            *slot = Some(v.clone());
        }
    }
}

/// The team's clock offset: the largest `eventTime − received_at` over the
/// current and the previous window.
#[derive(Debug, Clone, Default)]
struct Clock {
    cur: Option<f64>,
    prev: Option<f64>,
    since: f64,
}

impl Clock {
    fn observe(&mut self, skew: f64, local: f64) {
        if !skew.is_finite() {
            return;
        }
        if local - self.since > CLOCK_WINDOW {
            self.prev = self.cur.take();
            self.since = local;
        }
        self.cur = Some(self.cur.map_or(skew, |c| c.max(skew)));
    }

    fn skew(&self) -> f64 {
        match (self.cur, self.prev) {
            (Some(a), Some(b)) => a.max(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => 0.0,
        }
    }
}

/// Who an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Party {
    /// An agent: a leg.
    Agent { ext: String, role: Role },
    /// The customer (outside party): no leg.
    Customer,
    /// Nobody we can name: the call as a whole.
    Call,
}

fn party_of(dir: Direction, ev: &PushEvent) -> Party {
    let ext = nonempty(&ev.extension).or(nonempty(&ev.agent)).cloned();
    let agent = |role| match &ext {
        Some(e) => Party::Agent {
            ext: e.clone(),
            role,
        },
        None => Party::Call,
    };
    match (dir, ev.side) {
        (Direction::Incoming, Some(PushSide::Caller)) => Party::Customer,
        (Direction::Incoming, Some(PushSide::Callee)) => agent(Role::Callee),
        (Direction::Outgoing, Some(PushSide::Caller)) => agent(Role::Caller),
        (Direction::Outgoing, Some(PushSide::Callee)) => Party::Customer,
        (Direction::Internal, Some(PushSide::Caller)) => agent(Role::Caller),
        (Direction::Internal, Some(PushSide::Callee)) => agent(Role::Callee),
        (Direction::Incoming, None) if ext.is_some() => agent(Role::Callee),
        (Direction::Outgoing, None) if ext.is_some() => agent(Role::Caller),
        (Direction::Incoming | Direction::Outgoing, None) => Party::Customer,
        (Direction::Internal, None) => agent(Role::Callee),
    }
}

/// One agent's part in a call.
#[derive(Debug, Clone)]
struct Leg {
    id: String,
    ext: String,
    role: Role,
    state: Option<State>,
    first_at: f64,
    answered_at: Option<f64>,
    hungup_at: Option<f64>,
    status: Option<String>,
    approximate: bool,
}

/// Which leg an agent event applies to.
enum LegRef {
    /// A leg that has not hung up (possibly just created).
    Live(usize),
    /// A leg that hung up before this (reordered) event.
    Late(usize),
    /// None (too many legs).
    Skip,
}

/// One call (session) in progress.
#[derive(Debug, Clone)]
struct Session {
    id: String,
    direction: Option<Direction>,
    /// First non-empty values, by where they were seen (numbers are
    /// computed from these with the direction known at each moment).
    active: Option<String>,
    active_on_caller: Option<String>,
    active_on_callee: Option<String>,
    did: Option<String>,
    ext_any: Option<String>,
    ext_caller: Option<String>,
    ext_callee: Option<String>,
    caller_name: Option<String>,
    queue: Option<String>,
    recording_url: Option<String>,
    extra: BTreeMap<String, String>,
    legs: Vec<Leg>,
    rung: Vec<String>,
    started_at: f64,
    hangup_at: Option<f64>,
    answered_at: Option<f64>,
    answered_by: Option<String>,
    ringing_emitted: bool,
    answered_emitted: bool,
    announced: bool,
    customer_seen: bool,
    customer_gone: bool,
    statuses: Vec<String>,
    seen: VecDeque<Key>,
    first_local: f64,
    last_local: f64,
    last_event_at: f64,
    approximate: bool,
}

/// A finished session, remembered for late and duplicated pushes.
#[derive(Debug, Clone)]
struct Tomb {
    at: f64,
    seen: Vec<Key>,
}

/// A session's state before the current batch touched it.
#[derive(Debug)]
enum Saved {
    Absent,
    Live(Box<Session>),
    Tomb(Tomb),
}

impl Session {
    fn new(id: &str, t: f64, local: f64) -> Self {
        Self {
            id: id.to_string(),
            direction: None,
            active: None,
            active_on_caller: None,
            active_on_callee: None,
            did: None,
            ext_any: None,
            ext_caller: None,
            ext_callee: None,
            caller_name: None,
            queue: None,
            recording_url: None,
            extra: BTreeMap::new(),
            legs: Vec::new(),
            rung: Vec::new(),
            started_at: t,
            hangup_at: None,
            answered_at: None,
            answered_by: None,
            ringing_emitted: false,
            answered_emitted: false,
            announced: false,
            customer_seen: false,
            customer_gone: false,
            statuses: Vec::new(),
            seen: VecDeque::new(),
            first_local: local,
            last_local: local,
            last_event_at: t,
            approximate: false,
        }
    }

    fn dir(&self) -> Direction {
        self.direction.unwrap_or(Direction::Internal)
    }

    fn caller_number(&self) -> Option<String> {
        match self.dir() {
            Direction::Incoming => self.active.clone(),
            Direction::Outgoing => self.ext_caller.clone().or_else(|| self.ext_any.clone()),
            Direction::Internal => self
                .ext_caller
                .clone()
                .or_else(|| self.active_on_callee.clone()),
        }
    }

    fn dialed_number(&self) -> Option<String> {
        match self.dir() {
            Direction::Incoming => self.did.clone(),
            Direction::Outgoing => self.active.clone(),
            Direction::Internal => self
                .active_on_caller
                .clone()
                .or_else(|| self.ext_callee.clone()),
        }
    }

    /// Takes in what an event says about the call (not its transition).
    fn absorb(&mut self, ev: &PushEvent, t: f64, local: f64) {
        self.started_at = self.started_at.min(t);
        self.last_event_at = self.last_event_at.max(t);
        self.last_local = self.last_local.max(local);
        if self.direction.is_none() {
            if let Some(ct) = ev.call_type.as_deref().filter(|c| !c.trim().is_empty()) {
                self.direction = Some(direction_of(ct));
            }
        }
        let active = nonempty(&ev.active_num);
        let ext = nonempty(&ev.extension).or(nonempty(&ev.agent));
        fill(&mut self.active, active);
        fill(&mut self.ext_any, ext);
        match ev.side {
            Some(PushSide::Caller) => {
                fill(&mut self.active_on_caller, active);
                fill(&mut self.ext_caller, ext);
            }
            Some(PushSide::Callee) | None => {
                fill(&mut self.active_on_callee, active);
                fill(&mut self.ext_callee, ext);
            }
        }
        fill(&mut self.did, nonempty(&ev.did));
        fill(&mut self.caller_name, nonempty(&ev.caller_name));
        fill(&mut self.queue, nonempty(&ev.queue));
        if let Some(r) = nonempty(&ev.recording_url) {
            self.recording_url = Some(r.clone());
        }
        if let Some(s) = nonempty(&ev.dial_status) {
            if self.statuses.len() < MAX_SEEN {
                self.statuses.push(s.to_ascii_uppercase());
            }
        }
        for (k, v) in &ev.extra {
            if self.extra.len() < MAX_EXTRA || self.extra.contains_key(k) {
                self.extra.insert(k.clone(), v.clone());
            }
        }
    }

    fn remember(&mut self, key: Key) {
        if self.seen.len() >= MAX_SEEN {
            self.seen.pop_front();
        }
        self.seen.push_back(key);
    }

    fn disposition(&self) -> Disposition {
        if self.answered_at.is_some() {
            return Disposition::Answered;
        }
        let any = |want: &[&str]| self.statuses.iter().any(|s| want.contains(&s.as_str()));
        if any(&["NOANSWER", "NO ANSWER", "NO_ANSWER", "CANCEL"]) {
            Disposition::NoAnswer
        } else if any(&["BUSY"]) {
            Disposition::Busy
        } else if any(&["CHANUNAVAIL", "CONGESTION", "FAILED"]) {
            Disposition::Failed
        } else {
            Disposition::NoAnswer
        }
    }

    fn leg_disposition(&self, leg: &Leg) -> Disposition {
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

    fn emit_call_state(&mut self, team: &str, state: State, t: f64, out: &mut Vec<ModelEvent>) {
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

    /// Moves leg `idx` forward to `state` and emits (nothing if not forward).
    fn leg_to(
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
    fn leg_for(&mut self, ext: &str, role: Role, t: f64, reoffer: bool) -> LegRef {
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

    fn note_rung(&mut self, ext: &str, role: Role) {
        let offered = role == Role::Callee || self.dir() == Direction::Outgoing;
        if offered && !self.rung.iter().any(|e| e == ext) {
            self.rung.push(ext.to_string());
        }
    }

    /// The call was answered by `by` at `t` (the earliest answer wins).
    fn call_answered(
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

    fn ringing(
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

    fn answer(
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

    fn hangup(
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

    /// Whether nothing more is expected (see the module docs).
    fn over(&self) -> bool {
        if self.hangup_at.is_none() {
            return false;
        }
        if self.customer_gone {
            return true;
        }
        if self.legs.iter().any(|l| l.hungup_at.is_none()) {
            return false;
        }
        if self.legs.is_empty() {
            return !self.customer_seen;
        }
        let answered =
            self.answered_at.is_some() || self.legs.iter().any(|l| l.answered_at.is_some());
        answered || !self.customer_seen || self.dir() != Direction::Incoming
    }

    /// When the last party left (never before the start or the answer).
    fn end_time(&self) -> f64 {
        let mut t = self.started_at;
        for v in [self.hangup_at, self.answered_at].into_iter().flatten() {
            t = t.max(v);
        }
        for l in &self.legs {
            for v in [l.hungup_at, l.answered_at].into_iter().flatten() {
                t = t.max(v);
            }
        }
        t
    }

    fn record(&self, team: &str, ended: f64, reason: EndReason) -> CallRecord {
        let final_answered_by = if self.answered_at.is_none() {
            None
        } else if self.answered_by.as_deref() == Some("external") {
            Some("external".to_string())
        } else {
            self.legs
                .iter()
                .filter(|l| l.role == Role::Callee)
                .filter_map(|l| {
                    l.answered_at
                        .map(|a| (l.hungup_at.unwrap_or(f64::MAX), a, l))
                })
                .max_by(|x, y| x.0.total_cmp(&y.0).then(x.1.total_cmp(&y.1)))
                .map(|(_, _, l)| l.ext.clone())
                .or_else(|| self.answered_by.clone())
        };
        CallRecord::new(
            CallFacts {
                session_id: self.id.clone(),
                pbx: team.to_string(),
                direction: self.dir(),
                caller_number: self.caller_number(),
                caller_name: self.caller_name.clone(),
                dialed_number: self.dialed_number(),
                queue: self.queue.clone(),
                extensions_rung: self.rung.clone(),
                answered_by: self.answered_by.clone(),
                final_answered_by,
                disposition: self.disposition(),
                end_reason: reason,
                recording_url: self.recording_url.clone(),
                approximate: self.approximate,
                extra: self.extra.clone(),
            },
            self.started_at,
            self.answered_at,
            ended,
        )
    }
}

/// Every call of one push team.
#[derive(Debug)]
pub struct PushCalls {
    team: PbxId,
    sessions: HashMap<String, Session>,
    tombs: HashMap<String, Tomb>,
    tomb_order: VecDeque<(f64, String)>,
    clock: Clock,
    journal: Option<HashMap<String, Saved>>,
    live_gauge: prometheus::IntGauge,
}

impl PushCalls {
    /// Empty tables for one team.
    pub fn new(team: PbxId) -> Self {
        Self {
            live_gauge: metrics().live_calls.with_label_values(&[&team]),
            team,
            sessions: HashMap::new(),
            tombs: HashMap::new(),
            tomb_order: VecDeque::new(),
            clock: Clock::default(),
            journal: None,
        }
    }

    fn ignored(reason: &str) {
        metrics()
            .normalizer_ignored
            .with_label_values(&[reason])
            .inc();
    }

    /// Local time → the team's clock (its `eventTime`s).
    pub fn pbx_time(&self, local: f64) -> f64 {
        local + self.clock.skew()
    }

    /// Calls in progress.
    pub fn live_calls(&self) -> usize {
        self.sessions.len()
    }

    /// Finished sessions remembered for late pushes.
    pub fn tombstones(&self) -> usize {
        self.tombs.len()
    }

    /// Publishes the live-call gauge.
    pub fn publish(&self) {
        self.live_gauge.set(self.sessions.len() as i64);
    }

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

    fn save(&mut self, sid: &str) {
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

    /// Applies one pushed event received at local time `received_at`.
    pub fn apply(
        &mut self,
        ev: &PushEvent,
        received_at: f64,
        out: &mut Vec<ModelEvent>,
    ) -> PushReceipt {
        let t = match ev.event_time {
            Some(et) => {
                self.clock.observe(et - received_at, received_at);
                et
            }
            None => self.pbx_time(received_at),
        };
        let key = Key::of(ev);
        let sid = ev.session_id.as_str();
        if let Some(tomb) = self.tombs.get(sid) {
            if tomb.seen.contains(&key) {
                return PushReceipt { duplicate: true };
            }
            self.save(sid);
            if let Some(tomb) = self.tombs.get_mut(sid) {
                if tomb.seen.len() < MAX_SEEN {
                    tomb.seen.push(key);
                }
            }
            debug!(team = %self.team, session = sid, event = %ev.event, "push for a finished call ignored");
            Self::ignored("late");
            return PushReceipt { duplicate: false };
        }
        if self
            .sessions
            .get(sid)
            .is_some_and(|s| s.seen.contains(&key))
        {
            return PushReceipt { duplicate: true };
        }
        self.save(sid);
        let team = self.team.clone();
        let s = self
            .sessions
            .entry(sid.to_string())
            .or_insert_with(|| Session::new(sid, t, received_at));
        s.remember(key);
        s.absorb(ev, t, received_at);
        let party = party_of(s.dir(), ev);
        if party == Party::Customer {
            s.customer_seen = true;
        }
        match &ev.kind {
            PushKind::Ringing => s.ringing(&team, &party, ev, t, out),
            PushKind::Answer => s.answer(&team, &party, ev, t, false, out),
            PushKind::Hangup => s.hangup(&team, &party, ev, t, out),
            PushKind::Other(_) => {}
        }
        PushReceipt { duplicate: false }
    }

    /// Closes calls that are over and settled, and calls past the maximum
    /// age; forgets old tombstones. `now` is local epoch seconds.
    pub fn tick(&mut self, cfg: &NormalizerConfig, now: f64, out: &mut Vec<ModelEvent>) {
        let mut done: Vec<(String, f64, EndReason)> = Vec::new();
        for s in self.sessions.values() {
            if s.over() && now >= s.last_local + cfg.push_settle {
                done.push((s.id.clone(), s.end_time(), EndReason::Hangup));
            } else if now - s.first_local > cfg.max_call_age {
                let now_t = self.pbx_time(now);
                let end = s
                    .last_event_at
                    .max(now_t - cfg.max_call_age)
                    .min(now_t)
                    .max(s.end_time().min(now_t));
                done.push((s.id.clone(), end, EndReason::MaxAge));
            }
        }
        done.sort_by(|a, b| a.1.total_cmp(&b.1));
        for (sid, t, reason) in done {
            if reason == EndReason::MaxAge {
                debug!(team = %self.team, session = sid, "closing a pushed call past its maximum age");
            }
            self.end(&sid, t, reason, now, out);
        }
        self.prune(cfg, now);
    }

    /// Closes every call that is over without waiting for it to settle
    /// (shutdown).
    pub fn settle_all(&mut self, now: f64, out: &mut Vec<ModelEvent>) {
        let done: Vec<(String, f64)> = self
            .sessions
            .values()
            .filter(|s| s.over())
            .map(|s| (s.id.clone(), s.end_time()))
            .collect();
        for (sid, t) in done {
            self.end(&sid, t, EndReason::Hangup, now, out);
        }
    }

    fn end(&mut self, sid: &str, t: f64, reason: EndReason, now: f64, out: &mut Vec<ModelEvent>) {
        self.save(sid);
        let Some(mut s) = self.sessions.remove(sid) else {
            return;
        };
        let approx = reason != EndReason::Hangup;
        if approx {
            s.approximate = true;
        }
        let open: Vec<usize> = s
            .legs
            .iter()
            .enumerate()
            .filter(|(_, l)| l.hungup_at.is_none())
            .map(|(i, _)| i)
            .collect();
        for i in open {
            s.leg_to(&self.team, i, State::Hungup, t, approx, out);
        }
        if s.announced {
            let rec = s.record(&self.team, t, reason);
            metrics()
                .calls_finished
                .with_label_values(&[rec.direction.as_str(), rec.disposition.as_str()])
                .inc();
            if reason == EndReason::MaxAge {
                metrics()
                    .calls_closed_abnormally
                    .with_label_values(&[&self.team, "max_age"])
                    .inc();
            }
            out.push(ModelEvent::Call(rec));
        }
        self.tombs.insert(
            sid.to_string(),
            Tomb {
                at: now,
                seen: s.seen.into_iter().collect(),
            },
        );
        self.tomb_order.push_back((now, sid.to_string()));
    }

    fn prune(&mut self, cfg: &NormalizerConfig, now: f64) {
        while let Some((at, _)) = self.tomb_order.front() {
            let expired = *at + cfg.late_event_window < now;
            if !(expired || self.tomb_order.len() > cfg.max_tombstones) {
                break;
            }
            let Some((at, sid)) = self.tomb_order.pop_front() else {
                break;
            };
            if self.tombs.get(&sid).is_some_and(|t| t.at == at) {
                self.save(&sid);
                self.tombs.remove(&sid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: f64 = 1_800_000_000.0;

    fn cfg() -> NormalizerConfig {
        NormalizerConfig {
            push_settle: 2.0,
            max_call_age: 3600.0,
            ..NormalizerConfig::default()
        }
    }

    fn ev(kind: &str, side: Option<PushSide>, calltype: &str, ext: &str, at: f64) -> PushEvent {
        PushEvent {
            session_id: "s1".into(),
            kind: match kind {
                "ringing" => PushKind::Ringing,
                "answer" => PushKind::Answer,
                "hangup" => PushKind::Hangup,
                o => PushKind::Other(o.into()),
            },
            event: kind.into(),
            side,
            call_type: Some(calltype.into()),
            active_num: Some("5551234567".into()),
            event_time: Some(at),
            event_time_raw: Some(format!("{at}")),
            extension: (!ext.is_empty()).then(|| ext.to_string()),
            ..PushEvent::default()
        }
    }

    fn callee(kind: &str, at: f64) -> PushEvent {
        ev(kind, Some(PushSide::Callee), "dialin", "1001", at)
    }

    fn records(out: &[ModelEvent]) -> Vec<&CallRecord> {
        out.iter()
            .filter_map(|e| match e {
                ModelEvent::Call(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn legs(out: &[ModelEvent]) -> Vec<&LegEvent> {
        out.iter()
            .filter_map(|e| match e {
                ModelEvent::Leg(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    /// Every leg's states strictly increase and each is emitted once; the
    /// call states too; exactly `n` records.
    fn assert_coherent(out: &[ModelEvent], n: usize) {
        let mut by_leg: HashMap<&str, Vec<State>> = HashMap::new();
        for l in legs(out) {
            by_leg.entry(&l.leg_id).or_default().push(l.state);
        }
        for (id, states) in by_leg {
            assert!(
                states.windows(2).all(|w| w[0] < w[1]),
                "leg {id} not monotonic: {states:?}"
            );
        }
        let calls: Vec<State> = out
            .iter()
            .filter_map(|e| match e {
                ModelEvent::CallState(c) => Some(c.state),
                _ => None,
            })
            .collect();
        assert!(calls.windows(2).all(|w| w[0] < w[1]), "{calls:?}");
        let recs = records(out);
        assert_eq!(recs.len(), n, "{out:#?}");
        for r in recs {
            assert!(r.started_at.0 <= r.ended_at.0);
            if let Some(a) = r.answered_at {
                assert!(r.started_at.0 <= a.0 && a.0 <= r.ended_at.0);
                assert_eq!(r.disposition, Disposition::Answered);
            }
            assert!((r.duration - (r.ended_at.0 - r.started_at.0)).abs() < 1e-6);
        }
    }

    fn permutations<T: Clone>(v: &[T]) -> Vec<Vec<T>> {
        if v.len() <= 1 {
            return vec![v.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..v.len() {
            let mut rest = v.to_vec();
            let x = rest.remove(i);
            for mut p in permutations(&rest) {
                p.insert(0, x.clone());
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn every_ordering_of_ringing_answer_hangup_gives_one_answered_record() {
        let evs = [
            callee("ringing", T0),
            callee("answer", T0 + 3.0),
            callee("hangup", T0 + 10.0),
        ];
        for order in permutations(&evs) {
            let mut p = PushCalls::new("acme".into());
            let mut out = Vec::new();
            for (i, e) in order.iter().enumerate() {
                p.apply(e, T0 + 20.0 + i as f64 * 0.01, &mut out);
            }
            p.tick(&cfg(), T0 + 21.0, &mut out);
            assert!(records(&out).is_empty(), "settling");
            p.tick(&cfg(), T0 + 23.0, &mut out);
            assert_coherent(&out, 1);
            let r = records(&out)[0];
            let kinds: Vec<_> = order.iter().map(|e| e.event.as_str()).collect();
            assert_eq!(r.disposition, Disposition::Answered, "{kinds:?}");
            assert_eq!(r.started_at.0, T0, "{kinds:?}");
            assert_eq!(r.answered_at.map(|a| a.0), Some(T0 + 3.0), "{kinds:?}");
            assert_eq!(r.ended_at.0, T0 + 10.0, "{kinds:?}");
            assert_eq!(r.billsec, 7.0);
            assert_eq!(r.answered_by.as_deref(), Some("1001"));
            assert_eq!(r.final_answered_by.as_deref(), Some("1001"));
            assert_eq!(r.extensions_rung, vec!["1001".to_string()]);
            assert_eq!(r.direction, Direction::Incoming);
            assert_eq!(r.caller_number.as_deref(), Some("5551234567"));
            assert_eq!(r.end_reason, EndReason::Hangup);
            // The leg ends exactly once, whatever the order.
            let hung = legs(&out)
                .iter()
                .filter(|l| l.state == State::Hungup)
                .count();
            assert_eq!(hung, 1, "{kinds:?}");
            // A late push after the record never reopens it.
            let mut more = Vec::new();
            let r = p.apply(&callee("ringing", T0 + 1.0), T0 + 30.0, &mut more);
            assert!(!r.duplicate);
            assert!(more.is_empty());
            assert_eq!(p.live_calls(), 0);
        }
    }

    #[test]
    fn every_ordering_without_answer_gives_one_no_answer_record() {
        let evs = [callee("ringing", T0), callee("hangup", T0 + 10.0)];
        for order in permutations(&evs) {
            let mut p = PushCalls::new("acme".into());
            let mut out = Vec::new();
            for e in &order {
                p.apply(e, T0 + 20.0, &mut out);
            }
            p.tick(&cfg(), T0 + 30.0, &mut out);
            assert_coherent(&out, 1);
            let r = records(&out)[0];
            assert_eq!(r.disposition, Disposition::NoAnswer);
            assert_eq!(r.answered_at, None);
            assert_eq!(r.duration, 10.0);
            assert_eq!(r.billsec, 0.0);
        }
    }

    #[test]
    fn every_ordering_with_the_customer_side_gives_one_record() {
        // dialin: customer (CALLER) rings, agent rings, answers, both hang up.
        let caller = |k: &str, at: f64| ev(k, Some(PushSide::Caller), "dialin", "", at);
        let evs = [
            caller("ringing", T0),
            callee("ringing", T0 + 1.0),
            callee("answer", T0 + 4.0),
            caller("hangup", T0 + 9.0),
            callee("hangup", T0 + 9.5),
        ];
        for order in permutations(&evs) {
            let mut p = PushCalls::new("acme".into());
            let mut out = Vec::new();
            for e in &order {
                p.apply(e, T0 + 20.0, &mut out);
            }
            p.tick(&cfg(), T0 + 30.0, &mut out);
            assert_coherent(&out, 1);
            let r = records(&out)[0];
            assert_eq!(r.disposition, Disposition::Answered);
            assert_eq!(r.started_at.0, T0);
            assert_eq!(r.ended_at.0, T0 + 9.5);
            assert_eq!(r.answered_at.map(|a| a.0), Some(T0 + 4.0));
        }
    }

    #[test]
    fn hangup_only_gives_one_no_answer_record_with_just_hungup() {
        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        p.apply(&callee("hangup", T0), T0, &mut out);
        let l = legs(&out);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].state, State::Hungup);
        assert_eq!(l[0].disposition, Some(Disposition::NoAnswer));
        assert!(out.iter().all(|e| !matches!(e, ModelEvent::CallState(_))));
        p.tick(&cfg(), T0 + 5.0, &mut out);
        assert_coherent(&out, 1);
        assert_eq!(records(&out)[0].disposition, Disposition::NoAnswer);
    }

    #[test]
    fn dialstatus_gives_busy_and_answer_on_hangup_counts() {
        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        let mut h = callee("hangup", T0 + 2.0);
        h.dial_status = Some("BUSY".into());
        p.apply(&callee("ringing", T0), T0, &mut out);
        p.apply(&h, T0 + 2.0, &mut out);
        p.tick(&cfg(), T0 + 10.0, &mut out);
        assert_eq!(records(&out)[0].disposition, Disposition::Busy);
        assert_eq!(legs(&out)[1].disposition, Some(Disposition::Busy));

        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        let mut h = callee("hangup", T0 + 20.0);
        h.dial_status = Some("ANSWER".into());
        h.billsec = Some(15.0);
        p.apply(&callee("ringing", T0), T0, &mut out);
        p.apply(&h, T0 + 20.0, &mut out);
        p.tick(&cfg(), T0 + 30.0, &mut out);
        assert_coherent(&out, 1);
        let r = records(&out)[0];
        assert_eq!(r.disposition, Disposition::Answered);
        assert_eq!(r.answered_at.map(|a| a.0), Some(T0 + 5.0));
        assert_eq!(r.billsec, 15.0);
        assert!(!r.approximate);
    }

    #[test]
    fn duplicates_are_reported_and_do_nothing() {
        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        assert!(!p.apply(&callee("ringing", T0), T0, &mut out).duplicate);
        let n = out.len();
        assert!(
            p.apply(&callee("ringing", T0), T0 + 1.0, &mut out)
                .duplicate
        );
        assert_eq!(out.len(), n);
        // Another agent's ringing at the same second is not a duplicate.
        let other = ev("ringing", Some(PushSide::Callee), "dialin", "1002", T0);
        assert!(!p.apply(&other, T0 + 1.0, &mut out).duplicate);
        p.apply(&callee("hangup", T0 + 5.0), T0 + 5.0, &mut out);
        p.apply(
            &ev("hangup", Some(PushSide::Callee), "dialin", "1002", T0 + 5.0),
            T0 + 5.0,
            &mut out,
        );
        p.tick(&cfg(), T0 + 10.0, &mut out);
        assert_eq!(records(&out).len(), 1);
        // After the record: still a duplicate.
        assert!(
            p.apply(&callee("hangup", T0 + 5.0), T0 + 11.0, &mut out)
                .duplicate
        );
    }

    #[test]
    fn outgoing_call_maps_caller_and_customer() {
        let agent = |k: &str, at: f64| ev(k, Some(PushSide::Caller), "dialout", "1001", at);
        let cust = |k: &str, at: f64| ev(k, Some(PushSide::Callee), "dialout", "1001", at);
        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        for e in [
            agent("ringing", T0),
            agent("answer", T0 + 2.0),
            cust("ringing", T0 + 3.0),
            cust("answer", T0 + 8.0),
            cust("hangup", T0 + 20.0),
            agent("hangup", T0 + 20.5),
        ] {
            p.apply(&e, T0 + 30.0, &mut out);
        }
        p.tick(&cfg(), T0 + 40.0, &mut out);
        assert_coherent(&out, 1);
        let r = records(&out)[0];
        assert_eq!(r.direction, Direction::Outgoing);
        assert_eq!(r.caller_number.as_deref(), Some("1001"));
        assert_eq!(r.dialed_number.as_deref(), Some("5551234567"));
        assert_eq!(r.answered_by.as_deref(), Some("external"));
        assert_eq!(r.final_answered_by.as_deref(), Some("external"));
        assert_eq!(r.answered_at.map(|a| a.0), Some(T0 + 8.0));
        let l = legs(&out);
        assert!(l
            .iter()
            .all(|l| l.role == Role::Caller && l.extension == "1001"));
        assert_eq!(
            l.iter().map(|l| l.state).collect::<Vec<_>>(),
            [State::Ringing, State::Answered, State::Hungup]
        );
        assert_eq!(l[2].disposition, Some(Disposition::Answered));
    }

    #[test]
    fn incoming_queue_call_waits_for_the_customer_after_a_missed_agent() {
        let caller = |k: &str, at: f64| ev(k, Some(PushSide::Caller), "dialin", "", at);
        let agent = |k: &str, x: &str, at: f64| ev(k, Some(PushSide::Callee), "dialin", x, at);
        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        p.apply(&caller("ringing", T0), T0, &mut out);
        p.apply(&agent("ringing", "1001", T0 + 1.0), T0 + 1.0, &mut out);
        p.apply(&agent("hangup", "1001", T0 + 16.0), T0 + 16.0, &mut out);
        p.tick(&cfg(), T0 + 30.0, &mut out);
        assert!(records(&out).is_empty(), "the customer is still waiting");
        p.apply(&agent("ringing", "1002", T0 + 31.0), T0 + 31.0, &mut out);
        p.apply(&agent("answer", "1002", T0 + 33.0), T0 + 33.0, &mut out);
        p.apply(&caller("hangup", T0 + 40.0), T0 + 40.0, &mut out);
        p.tick(&cfg(), T0 + 50.0, &mut out);
        assert_coherent(&out, 1);
        let r = records(&out)[0];
        assert_eq!(r.extensions_rung, vec!["1001", "1002"]);
        assert_eq!(r.answered_by.as_deref(), Some("1002"));
        // The agent's missing hangup: its leg ends with the call.
        assert!(legs(&out)
            .iter()
            .any(|l| l.extension == "1002" && l.state == State::Hungup));
    }

    #[test]
    fn reoffer_after_hangup_opens_a_second_leg() {
        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        let caller = ev("ringing", Some(PushSide::Caller), "dialin", "", T0);
        p.apply(&caller, T0, &mut out);
        p.apply(&callee("ringing", T0 + 1.0), T0 + 1.0, &mut out);
        p.apply(&callee("hangup", T0 + 5.0), T0 + 5.0, &mut out);
        p.apply(&callee("ringing", T0 + 8.0), T0 + 8.0, &mut out);
        let ids: Vec<&str> = legs(&out).iter().map(|l| l.leg_id.as_str()).collect();
        assert_eq!(ids, ["s1/1001", "s1/1001", "s1/1001#2"]);
    }

    #[test]
    fn max_age_closes_a_session_that_never_hangs_up() {
        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        p.apply(&callee("ringing", T0), T0, &mut out);
        p.apply(&callee("answer", T0 + 2.0), T0 + 2.0, &mut out);
        let c = NormalizerConfig {
            max_call_age: 60.0,
            ..cfg()
        };
        p.tick(&c, T0 + 59.0, &mut out);
        assert!(records(&out).is_empty());
        p.tick(&c, T0 + 61.0, &mut out);
        assert_coherent(&out, 1);
        let r = records(&out)[0];
        assert_eq!(r.end_reason, EndReason::MaxAge);
        assert!(r.approximate);
        assert_eq!(p.live_calls(), 0);
        assert_eq!(legs(&out).last().map(|l| l.state), Some(State::Hungup));
    }

    #[test]
    fn unknown_events_keep_fields_but_say_nothing() {
        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        let mut e = ev("transfer", Some(PushSide::Callee), "dialin", "1001", T0);
        e.extra.insert("crm_id".into(), "42".into());
        e.recording_url = Some("https://rec/1.wav".into());
        p.apply(&e, T0, &mut out);
        assert!(out.is_empty());
        let c = NormalizerConfig {
            max_call_age: 60.0,
            ..cfg()
        };
        p.tick(&c, T0 + 61.0, &mut out);
        assert!(
            out.is_empty(),
            "a session that said nothing leaves no record"
        );

        let mut p = PushCalls::new("acme".into());
        p.apply(&e, T0, &mut out);
        p.apply(&callee("ringing", T0 + 1.0), T0 + 1.0, &mut out);
        p.apply(&callee("hangup", T0 + 3.0), T0 + 3.0, &mut out);
        p.tick(&c, T0 + 10.0, &mut out);
        let r = records(&out)[0];
        assert_eq!(r.extra.get("crm_id").map(String::as_str), Some("42"));
        assert_eq!(r.recording_url.as_deref(), Some("https://rec/1.wav"));
        assert!(legs(&out).iter().all(|l| l.extra.contains_key("crm_id")));
    }

    #[test]
    fn rollback_restores_sessions_so_a_retry_applies_again() {
        let mut p = PushCalls::new("acme".into());
        let mut out = Vec::new();
        p.apply(&callee("ringing", T0), T0, &mut out);
        p.begin();
        p.apply(&callee("answer", T0 + 1.0), T0 + 1.0, &mut out);
        p.apply(&callee("hangup", T0 + 2.0), T0 + 2.0, &mut out);
        p.tick(&cfg(), T0 + 5.0, &mut out);
        assert_eq!(records(&out).len(), 1);
        p.rollback();
        assert_eq!(p.live_calls(), 1);
        assert_eq!(p.tombstones(), 0);
        let mut again = Vec::new();
        assert!(
            !p.apply(&callee("answer", T0 + 1.0), T0 + 6.0, &mut again)
                .duplicate
        );
        p.apply(&callee("hangup", T0 + 2.0), T0 + 6.0, &mut again);
        p.tick(&cfg(), T0 + 9.0, &mut again);
        assert_coherent(&again, 1);
        assert_eq!(records(&again)[0].disposition, Disposition::Answered);
        // A committed batch stays.
        p.begin();
        p.apply(&callee("hangup", T0 + 2.0), T0 + 10.0, &mut again);
        p.commit();
        p.rollback();
        assert_eq!(p.tombstones(), 1);
    }

    #[test]
    fn clock_offset_ignores_delayed_pushes() {
        let mut c = Clock::default();
        c.observe(-0.2, 1000.0);
        c.observe(-60.0, 1001.0);
        assert_eq!(c.skew(), -0.2);
        c.observe(-3600.0, 1400.0);
        assert_eq!(c.skew(), -0.2, "previous window still counts");
        c.observe(-3600.0, 1800.0);
        assert_eq!(c.skew(), -3600.0, "a real clock change is learned");
    }

    #[test]
    fn calltypes_map_to_directions() {
        assert_eq!(direction_of("dialin"), Direction::Incoming);
        assert_eq!(direction_of("DIALOUT"), Direction::Outgoing);
        assert_eq!(direction_of("predictive"), Direction::Outgoing);
        assert_eq!(direction_of("internal"), Direction::Internal);
        assert_eq!(direction_of("whatever"), Direction::Internal);
    }
}
