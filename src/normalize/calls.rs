//! Per-PBX channel and call tables: the call state machine.
//!
//! Grouping. A channel belongs to exactly one call. With a `Linkedid`
//! (Asterisk 12+) the call is the Linkedid, and a Linkedid change merges the
//! two calls. Without one (Asterisk ≤ 11) every channel starts as its own
//! provisional call and calls are merged (union-find style) when the stream
//! ties two channels together: `Dial` Begin, `Bridge` Link, `LocalBridge`,
//! the Local `;1`/`;2` name stem, `AgentCalled`/`AgentConnect`,
//! `Masquerade`, a snapshot's bridged peer. The survivor is the call whose
//! first channel is older, so the session id is the Uniqueid of the call's
//! first channel — what the PBX itself records as the linkedid.
//!
//! Two ≤ 11 situations have no tie in the stream and are decided by rule
//! (documented in the README):
//! - a ringing extension channel that nothing ties to a call within
//!   `orphan_grace` is a queue member when its connected line is the number
//!   of exactly one caller waiting in a queue (app_queue without
//!   `eventwhencalled`), otherwise it is the first leg of an originated call
//!   (click-to-call);
//! - a Local channel pair created outside any call (features' attended
//!   transfer) that dials on behalf of an extension currently talking in
//!   exactly one call joins that call (the PBX gives it that call's linkedid).
//!
//! Emission. Leg and call states are monotonic and emitted once each; a call
//! that never said anything (a lone channel that never rang, a placeholder)
//! leaves no record. A finished call's channel ids are remembered for
//! `late_event_window`, so late or duplicated events never open a new call.

use std::collections::{HashMap, HashSet, VecDeque};

use tracing::debug;

use super::canonical::{Canon, ChanInfo, ChanRef, ChanState};
use super::channel::Party;
use super::NormalizerConfig;
use crate::ami::AmiMessage;
use crate::metrics::metrics;
use crate::model::{
    CallRecord, CallStateEvent, Direction, Disposition, EndReason, LegEvent, ModelEvent, Role,
    State, Timestamp,
};
use crate::source::PbxId;

/// One channel as the normalizer knows it.
#[derive(Debug, Clone)]
struct Chan {
    uid: String,
    name: String,
    party: Party,
    /// Party when created: a masquerade may later rename the channel.
    party_at_create: Party,
    call: String,
    created_at: f64,
    state: ChanState,
    /// Caller id at creation (the phone's own identity for extensions).
    first_caller_num: Option<String>,
    first_caller_name: Option<String>,
    /// Current caller id (Newchannel, NewCallerid).
    caller_num: Option<String>,
    caller_name: Option<String>,
    connected_num: Option<String>,
    /// The first dialplan extension that means something (not `s`/`h`).
    first_exten: Option<String>,
    /// Has a Linkedid (Asterisk 12+): grouping is the PBX's.
    linked: bool,
    /// ≤ 11: tied to another channel by the stream.
    tied: bool,
    /// Offered the call (dialed, called by a queue, rung by Originate).
    offered: bool,
    /// For a Local `;1` half that was offered: the extension it stands for.
    offered_ext: Option<String>,
    up_at: Option<f64>,
    hungup_at: Option<f64>,
    /// Strongest dial outcome for this channel as a destination.
    dial_status: Option<String>,
    cause: Option<u16>,
}

impl Chan {
    fn live(&self) -> bool {
        self.hungup_at.is_none()
    }
}

/// One extension's part in a call.
#[derive(Debug, Clone)]
struct Leg {
    id: String,
    ext: String,
    role: Role,
    chans: Vec<String>,
    state: Option<State>,
    first_at: f64,
    answered_at: Option<f64>,
    hungup_at: Option<f64>,
    approximate: bool,
}

/// One call.
#[derive(Debug, Clone)]
struct Call {
    session: String,
    root: String,
    members: Vec<String>,
    originated: bool,
    originate_exten: Option<String>,
    queue: Option<String>,
    in_queue: bool,
    abandoned: bool,
    dial_statuses: Vec<String>,
    legs: Vec<Leg>,
    rung: Vec<String>,
    answered_at: Option<f64>,
    answered_by: Option<String>,
    ringing_emitted: bool,
    answered_emitted: bool,
    /// Said something (emitted, or a real party started a call).
    announced: bool,
    approximate: bool,
    last_activity: f64,
}

impl Call {
    fn new(session: &str, root: &str, t: f64) -> Self {
        Self {
            session: session.to_string(),
            root: root.to_string(),
            members: Vec::new(),
            originated: false,
            originate_exten: None,
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

/// Everything about one PBX.
#[derive(Debug)]
pub struct PbxCalls {
    pbx: PbxId,
    chans: HashMap<String, Chan>,
    by_name: HashMap<String, String>,
    calls: HashMap<String, Call>,
    tombstones: HashMap<String, f64>,
    tomb_order: VecDeque<(f64, String)>,
    /// ≤ 11 ringing channels not tied to anything yet: (uid, decide at, rang at).
    pending: Vec<(String, f64, f64)>,
    disconnected_at: Option<f64>,
    live_gauge: prometheus::IntGauge,
    /// PBX clock minus local clock, from the last event with a `Timestamp`:
    /// time-driven decisions ([`Normalizer::tick`](super::Normalizer::tick))
    /// run on the PBX's clock, whatever the local one says.
    skew: f64,
}

fn meaningful_exten(e: &str) -> bool {
    let e = e.trim();
    !(e.is_empty() || e.len() == 1 || e.eq_ignore_ascii_case("failed"))
}

/// Orders dial outcomes: the strongest one wins for a destination.
fn status_rank(s: &str) -> u8 {
    match s.to_ascii_uppercase().as_str() {
        "ANSWER" => 5,
        "BUSY" => 4,
        "NOANSWER" => 3,
        "CHANUNAVAIL" | "CONGESTION" => 2,
        "CANCEL" => 1,
        _ => 0,
    }
}

impl PbxCalls {
    /// Empty tables for one PBX.
    pub fn new(pbx: PbxId) -> Self {
        Self {
            chans: HashMap::new(),
            by_name: HashMap::new(),
            calls: HashMap::new(),
            tombstones: HashMap::new(),
            tomb_order: VecDeque::new(),
            pending: Vec::new(),
            disconnected_at: None,
            live_gauge: metrics().live_calls.with_label_values(&[&pbx]),
            skew: 0.0,
            pbx,
        }
    }

    /// Records the PBX clock's offset from the local clock.
    pub fn observe_clock(&mut self, event_time: f64, received_at: f64) {
        self.skew = event_time - received_at;
    }

    /// Local time → this PBX's clock.
    pub fn pbx_time(&self, local: f64) -> f64 {
        local + self.skew
    }

    /// Publishes the live-call gauge.
    pub fn publish(&self) {
        self.live_gauge.set(self.calls.len() as i64);
    }

    /// Calls currently tracked.
    pub fn live_calls(&self) -> usize {
        self.calls.len()
    }

    /// Channels currently tracked.
    pub fn channels(&self) -> usize {
        self.chans.len()
    }

    /// Finished channel ids remembered for late events.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    fn ignored(reason: &str) {
        metrics()
            .normalizer_ignored
            .with_label_values(&[reason])
            .inc();
    }

    // ------------------------------------------------------------------
    // Channel table
    // ------------------------------------------------------------------

    fn resolve(&self, r: &ChanRef<'_>) -> Option<String> {
        if let Some(uid) = r.uid {
            if self.chans.contains_key(uid) {
                return Some(uid.to_string());
            }
        }
        r.name.and_then(|n| self.by_name.get(n).cloned())
    }

    /// Finds (and refreshes) or creates the channel an event describes.
    /// Returns `None` for finished channels and for events that may not
    /// create one.
    fn ensure(
        &mut self,
        cfg: &NormalizerConfig,
        info: &ChanInfo<'_>,
        t: f64,
        create: bool,
    ) -> Option<String> {
        let uid = match info.uid {
            Some(u) => u,
            None => return info.name.and_then(|n| self.by_name.get(n).cloned()),
        };
        if self.tombstones.contains_key(uid) {
            Self::ignored("late");
            return None;
        }
        if self.chans.contains_key(uid) {
            self.refresh(cfg, uid, info, t);
            return Some(uid.to_string());
        }
        if !create {
            Self::ignored("unknown_channel");
            return None;
        }
        // A new leg of a call that is already over is a late event too.
        if info
            .linkedid
            .is_some_and(|l| self.tombstones.contains_key(l))
        {
            Self::ignored("late");
            return None;
        }
        let name = info.name.unwrap_or(uid).to_string();
        let party = cfg.classifier.classify(&name, info.context);
        let session = info.linkedid.unwrap_or(uid).to_string();
        let chan = Chan {
            uid: uid.to_string(),
            name: name.clone(),
            party: party.clone(),
            party_at_create: party,
            call: session.clone(),
            created_at: t,
            state: info.state.unwrap_or(ChanState::Down),
            first_caller_num: info.caller_num.map(str::to_string),
            first_caller_name: info.caller_name.map(str::to_string),
            caller_num: info.caller_num.map(str::to_string),
            caller_name: info.caller_name.map(str::to_string),
            connected_num: info.connected_num.map(str::to_string),
            first_exten: info
                .exten
                .filter(|e| meaningful_exten(e))
                .map(str::to_string),
            linked: info.linkedid.is_some(),
            tied: false,
            offered: false,
            offered_ext: None,
            up_at: None,
            hungup_at: None,
            dial_status: None,
            cause: None,
        };
        self.by_name.insert(name.clone(), uid.to_string());
        self.chans.insert(uid.to_string(), chan);
        let call = self
            .calls
            .entry(session.clone())
            .or_insert_with(|| Call::new(&session, &session, t));
        call.members.push(uid.to_string());
        call.last_activity = t;
        // A Linkedid call may have been opened by a later channel first
        // (events out of order): the root is the channel named like the call.
        if !self.chans.contains_key(&call.root) || uid == session {
            call.root = uid.to_string();
        }
        // ≤ 11 Local halves: `;1` and `;2` of the same name are one pair.
        if !self.chans[uid].linked {
            if let Some(stem) = name.strip_suffix(";2").or_else(|| name.strip_suffix(";1")) {
                let other = if name.ends_with(";2") {
                    format!("{stem};1")
                } else {
                    format!("{stem};2")
                };
                if let Some(o) = self.by_name.get(&other).cloned() {
                    self.tie(&o, uid, t);
                }
            }
        }
        Some(uid.to_string())
    }

    /// Keeps what an event says about a known channel current.
    fn refresh(&mut self, cfg: &NormalizerConfig, uid: &str, info: &ChanInfo<'_>, t: f64) {
        let mut move_to = None;
        if let Some(ch) = self.chans.get_mut(uid) {
            if ch.first_exten.is_none() {
                if let Some(e) = info.exten.filter(|e| meaningful_exten(e)) {
                    ch.first_exten = Some(e.to_string());
                }
            }
            if let Some(c) = info.connected_num {
                ch.connected_num = Some(c.to_string());
            }
            if let Some(l) = info.linkedid {
                if ch.linked && l != ch.call && !self.tombstones.contains_key(l) {
                    move_to = Some(l.to_string());
                }
            }
        }
        if let Some(target) = move_to {
            self.relink(cfg, uid, &target, t);
        }
    }

    /// Asterisk 12+ changed a channel's Linkedid: its call joins that call.
    fn relink(&mut self, _cfg: &NormalizerConfig, uid: &str, target: &str, t: f64) {
        let Some(from) = self.chans.get(uid).map(|c| c.call.clone()) else {
            return;
        };
        if !self.calls.contains_key(target) {
            // The target call is not known (yet): re-key this call under it.
            if let Some(mut call) = self.calls.remove(&from) {
                call.session = target.to_string();
                for m in &call.members {
                    if let Some(ch) = self.chans.get_mut(m) {
                        ch.call = target.to_string();
                    }
                }
                self.calls.insert(target.to_string(), call);
            }
            return;
        }
        self.merge(target, &from, t);
    }

    // ------------------------------------------------------------------
    // Grouping
    // ------------------------------------------------------------------

    /// Two channels are connected: on ≤ 11 their calls become one.
    fn tie(&mut self, a: &str, b: &str, t: f64) {
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
    fn older(&self, a: &str, b: &str) -> bool {
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
    fn merge(&mut self, keep: &str, gone: &str, t: f64) {
        if keep == gone {
            return;
        }
        let Some(g) = self.calls.remove(gone) else {
            return;
        };
        if g.announced {
            debug!(pbx = %self.pbx, keep, gone, "merging a call that already emitted events");
            Self::ignored("merged_after_announce");
        }
        for m in &g.members {
            if let Some(ch) = self.chans.get_mut(m) {
                ch.call = keep.to_string();
            }
        }
        let Some(k) = self.calls.get_mut(keep) else {
            return;
        };
        k.members.extend(g.members);
        k.originated |= g.originated && !k.announced && k.legs.is_empty();
        if k.originate_exten.is_none() {
            k.originate_exten = g.originate_exten;
        }
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
                k.legs.push(leg);
            }
        }
        for r in g.rung {
            if !k.rung.contains(&r) {
                k.rung.push(r);
            }
        }
        if k.answered_at.is_none() {
            k.answered_at = g.answered_at;
            k.answered_by = g.answered_by;
        }
        k.announced |= g.announced;
        k.approximate |= g.approximate;
        k.last_activity = t;
    }

    // ------------------------------------------------------------------
    // Derived call facts
    // ------------------------------------------------------------------

    fn root_party(&self, call: &Call) -> Party {
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

    fn is_originated(&self, call: &Call) -> bool {
        call.originated
            || self
                .chans
                .get(&call.root)
                .is_some_and(|c| matches!(c.party_at_create, Party::Local(_)))
    }

    fn direction(&self, call: &Call) -> Direction {
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
    fn caller_chan<'s>(&'s self, call: &Call) -> Option<&'s Chan> {
        let root = self.chans.get(&call.root)?;
        if matches!(root.party_at_create, Party::Extension(_)) {
            return Some(root);
        }
        call.members
            .iter()
            .filter_map(|m| self.chans.get(m))
            .find(|c| matches!(c.party_at_create, Party::Extension(_)))
    }

    fn caller(&self, call: &Call, dir: Direction) -> (Option<String>, Option<String>) {
        match dir {
            Direction::Incoming => match self.chans.get(&call.root) {
                Some(r) => (r.caller_num.clone(), r.caller_name.clone()),
                None => (None, None),
            },
            _ => match self.caller_chan(call) {
                Some(c) => (
                    c.first_caller_num
                        .clone()
                        .or_else(|| c.party_at_create.extension().map(str::to_string)),
                    c.first_caller_name.clone(),
                ),
                None => (None, None),
            },
        }
    }

    fn dialed(&self, call: &Call) -> Option<String> {
        self.chans
            .get(&call.root)
            .and_then(|r| r.first_exten.clone())
            .or_else(|| call.originate_exten.clone())
    }

    fn disposition(&self, call: &Call) -> Disposition {
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
        let mut statuses: Vec<&str> = call.dial_statuses.iter().map(String::as_str).collect();
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
            .any(|m| m != &call.root && self.chans.get(m).is_some_and(|c| c.cause == Some(17)))
        {
            Disposition::Busy
        } else {
            Disposition::NoAnswer
        }
    }

    fn leg_disposition(&self, call: &Call, leg: &Leg) -> Disposition {
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

    // ------------------------------------------------------------------
    // Emission
    // ------------------------------------------------------------------

    fn emit_call_state(&mut self, session: &str, state: State, t: f64, out: &mut Vec<ModelEvent>) {
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
            session_id: call.session.clone(),
            pbx: self.pbx.to_string(),
            state,
            direction: dir,
            caller_number: num,
            caller_name: name,
            dialed_number: self.dialed(call),
            queue: call.queue.clone(),
            answered_by: if state == State::Answered {
                call.answered_by.clone()
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

    /// Moves leg `idx` of `session` to `state` (if that is forward) and emits.
    fn leg_to(
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
            (
                Some((t - leg.first_at).max(0.0)),
                Some(leg.answered_at.map_or(0.0, |a| (t - a).max(0.0))),
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
            session_id: call.session.clone(),
            pbx: self.pbx.to_string(),
            leg_id: leg.id.clone(),
            state,
            direction: dir,
            role: leg.role,
            extension: leg.ext.clone(),
            caller_number: num,
            caller_name: name,
            dialed_number: self.dialed(call),
            queue: call.queue.clone(),
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
    fn leg_for(&mut self, uid: &str, ext: &str, role: Role, t: f64) -> Option<(String, usize)> {
        let session = self.chans.get(uid)?.call.clone();
        let call = self.calls.get_mut(&session)?;
        if let Some(i) = call
            .legs
            .iter()
            .position(|l| l.ext == ext && l.state != Some(State::Hungup))
        {
            if !call.legs[i].chans.iter().any(|c| c == uid) {
                call.legs[i].chans.push(uid.to_string());
            }
            return Some((session, i));
        }
        let n = call.legs.iter().filter(|l| l.ext == ext).count();
        let id = if n == 0 {
            format!("{}/{}", call.session, ext)
        } else {
            format!("{}/{}#{}", call.session, ext, n + 1)
        };
        call.legs.push(Leg {
            id,
            ext: ext.to_string(),
            role,
            chans: vec![uid.to_string()],
            state: None,
            first_at: t,
            answered_at: None,
            hungup_at: None,
            approximate: false,
        });
        Some((session, call.legs.len() - 1))
    }

    /// The call was offered to channel `uid` (it rings, or is being dialed).
    fn offer(
        &mut self,
        cfg: &NormalizerConfig,
        uid: &str,
        ext_hint: Option<String>,
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
                    call.rung.push(ext.clone());
                }
            }
            self.leg_to(&session, idx, State::Ringing, t, false, out);
        }
    }

    /// The root channel started dialing: the caller's own leg rings out.
    fn caller_dials(&mut self, uid: &str, t: f64, out: &mut Vec<ModelEvent>) {
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
    fn up(
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
        let offered = ch.offered;
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
            _ => "external".to_string(),
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
    fn hangup(
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

    /// Closes a call: open legs end, the record is emitted, memory is freed.
    fn end_call(&mut self, session: &str, t: f64, reason: EndReason, out: &mut Vec<ModelEvent>) {
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
            // The session id itself: a late channel or Linkedid naming it
            // must not reopen the call.
            if !call.members.iter().any(|m| m == session) {
                self.tombstone(session.to_string(), t);
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
    fn root_announces(&self, call: &Call) -> bool {
        self.chans.get(&call.root).is_some_and(|r| {
            r.party_at_create.is_party()
                && (matches!(r.party_at_create, Party::Trunk(_)) || r.first_exten.is_some())
                && (r.state != ChanState::Down || r.up_at.is_some())
        })
    }

    fn tombstone(&mut self, uid: String, t: f64) {
        self.tombstones.insert(uid.clone(), t);
        self.tomb_order.push_back((t, uid));
    }

    fn prune_tombstones(&mut self, cfg: &NormalizerConfig, now: f64) {
        while let Some((at, _)) = self.tomb_order.front() {
            let expired = *at + cfg.late_event_window < now;
            if !(expired || self.tomb_order.len() > cfg.max_tombstones) {
                break;
            }
            if let Some((_, uid)) = self.tomb_order.pop_front() {
                self.tombstones.remove(&uid);
            }
        }
    }

    fn record(&self, call: &Call, t: f64, reason: EndReason) -> CallRecord {
        let dir = self.direction(call);
        let (num, name) = self.caller(call, dir);
        let started = self
            .chans
            .get(&call.root)
            .map_or(t, |r| r.created_at)
            .min(
                call.members
                    .iter()
                    .filter_map(|m| self.chans.get(m))
                    .map(|c| c.created_at)
                    .fold(f64::MAX, f64::min),
            )
            .min(t);
        // Who had the call at the end: of the parties that answered (the
        // caller excepted), the one that stayed longest.
        let mut final_by: Option<(f64, f64, String)> = None;
        for c in call
            .members
            .iter()
            .filter(|m| **m != call.root)
            .filter_map(|m| self.chans.get(m))
        {
            let Some(up) = c.up_at else { continue };
            let who = match &c.party_at_create {
                Party::Extension(e) => e.clone(),
                Party::Trunk(_) if dir == Direction::Outgoing => "external".to_string(),
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
            None
        };
        CallRecord {
            session_id: call.session.clone(),
            pbx: self.pbx.to_string(),
            direction: dir,
            caller_number: num,
            caller_name: name,
            dialed_number: self.dialed(call),
            queue: call.queue.clone(),
            extensions_rung: call.rung.clone(),
            answered_by: call.answered_by.clone(),
            final_answered_by,
            started_at: Timestamp(started),
            answered_at: call.answered_at.map(Timestamp),
            ended_at: Timestamp(t),
            duration: (t - started).max(0.0),
            billsec: call.answered_at.map_or(0.0, |a| (t - a).max(0.0)),
            disposition: self.disposition(call),
            end_reason: reason,
            recording_url: None,
            approximate: call.approximate,
            extra: Default::default(),
        }
    }

    // ------------------------------------------------------------------
    // Time
    // ------------------------------------------------------------------

    /// Decides ≤ 11 ringing channels whose grace period is over.
    pub fn advance(&mut self, cfg: &NormalizerConfig, now: f64, out: &mut Vec<ModelEvent>) {
        while let Some(pos) = self.pending.iter().position(|(_, due, _)| *due <= now) {
            let (uid, _, rang_at) = self.pending.remove(pos);
            self.decide_orphan(cfg, &uid, rang_at, out);
        }
        self.prune_tombstones(cfg, now);
    }

    fn decide_orphan(
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
            let candidates: Vec<String> = self
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
        self.offer(cfg, uid, None, rang_at, out);
    }

    /// Closes calls older than the maximum age.
    pub fn expire(&mut self, cfg: &NormalizerConfig, now: f64, out: &mut Vec<ModelEvent>) {
        let old: Vec<(String, f64)> = self
            .calls
            .values()
            .filter(|c| {
                let started = self
                    .chans
                    .get(&c.root)
                    .map_or(c.last_activity, |r| r.created_at);
                now - started > cfg.max_call_age
            })
            .map(|c| (c.session.clone(), c.last_activity))
            .collect();
        for (session, last) in old {
            debug!(pbx = %self.pbx, session, "closing a call past its maximum age");
            self.end_call(
                &session,
                last.max(now - cfg.max_call_age).min(now),
                EndReason::MaxAge,
                out,
            );
        }
    }

    /// The AMI connection was lost.
    pub fn disconnected(&mut self, at: f64) {
        self.disconnected_at = Some(at);
    }

    // ------------------------------------------------------------------
    // Events
    // ------------------------------------------------------------------

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
                            ch.caller_num = Some(n.to_string());
                        }
                        if let Some(n) = info.caller_name {
                            ch.caller_name = Some(n.to_string());
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
                            ch.dial_status = Some(status.to_string());
                        }
                    }
                    if status.eq_ignore_ascii_case("ANSWER") {
                        let d = d.clone();
                        self.up(cfg, &d, t, false, out);
                    }
                } else if let Some(c) = caller_uid {
                    let session = self.chans.get(&c).map(|ch| ch.call.clone());
                    if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
                        call.dial_statuses.push(status.to_string());
                    }
                }
            }
            Canon::Tie(a, b) => {
                if let (Some(a), Some(b)) = (self.resolve(a), self.resolve(b)) {
                    self.tie(&a, &b, t);
                }
            }
            Canon::QueueJoin { chan, queue } => {
                if let Some(uid) = self.ensure(cfg, chan, t, true) {
                    let session = self.chans.get(&uid).map(|c| c.call.clone());
                    if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
                        if call.queue.is_none() {
                            call.queue = Some(queue.to_string());
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
                            call.queue = Some(q.to_string());
                        }
                    }
                    let hint = interface
                        .and_then(|i| super::channel::interface_extension(&cfg.classifier, i));
                    let d = d.clone();
                    self.offer(cfg, &d, hint, t, out);
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
                    .map(str::to_string)
                    .or_else(|| old.and_then(|o| self.by_name.get(o).cloned()));
                if let Some(u) = target {
                    let party = cfg.classifier.classify(new, None);
                    if let Some(ch) = self.chans.get_mut(&u) {
                        let oldname = std::mem::replace(&mut ch.name, new.to_string());
                        ch.party = party;
                        if self.by_name.get(&oldname).is_some_and(|x| *x == u) {
                            self.by_name.remove(&oldname);
                        }
                        self.by_name.insert(new.to_string(), u);
                    }
                }
            }
            Canon::Hangup { chan, cause } => {
                match chan.uid {
                    Some(u) if self.chans.contains_key(u) => {
                        let u = u.to_string();
                        self.hangup(&u, *cause, t, false, out);
                    }
                    Some(u) if !self.tombstones.contains_key(u) => {
                        // Never seen: remember it so a late Newchannel opens nothing.
                        Self::ignored("unknown_channel");
                        self.tombstone(u.to_string(), t);
                    }
                    _ => Self::ignored("late"),
                }
            }
            Canon::OriginateResponse {
                uid,
                exten,
                success: _,
            } => {
                if let Some(u) = uid.filter(|u| self.chans.contains_key(*u)) {
                    let session = self.chans.get(u).map(|c| c.call.clone());
                    let is_root = session
                        .as_ref()
                        .and_then(|s| self.calls.get(s))
                        .is_some_and(|c| c.root == *u);
                    if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
                        if is_root {
                            call.originated = true;
                        }
                        if call.originate_exten.is_none() {
                            call.originate_exten = exten.map(str::to_string);
                        }
                    }
                }
            }
        }
    }

    fn touch_call(&mut self, uid: &str, t: f64) {
        let session = self.chans.get(uid).map(|c| c.call.clone());
        if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
            call.last_activity = t;
        }
    }

    fn set_state(
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
                        .push((uid.to_string(), t + cfg.orphan_grace, t));
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

    fn dial_begin(
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
            }
        }
        self.offer(cfg, &dest_uid, None, t, out);
    }

    /// ≤ 11: a Local pair created outside any call that dials on behalf of
    /// an extension talking in exactly one call belongs to that call.
    fn consultation(&mut self, caller: Option<&ChanInfo<'_>>, caller_uid: &str, t: f64) {
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
        let talking: HashSet<String> = self
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

    // ------------------------------------------------------------------
    // Snapshot after (re)login
    // ------------------------------------------------------------------

    /// Reconciles with the channels the PBX reports as up.
    pub fn snapshot(
        &mut self,
        cfg: &NormalizerConfig,
        items: &[AmiMessage],
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        self.advance(cfg, t, out);
        let present: HashSet<&str> = items.iter().filter_map(|m| m.get("Uniqueid")).collect();
        // 1. Channels that ended while we were away.
        let gone: Vec<String> = self
            .chans
            .values()
            .filter(|c| c.live() && !present.contains(c.uid.as_str()))
            .map(|c| c.uid.clone())
            .collect();
        for uid in &gone {
            if let Some(ch) = self.chans.get_mut(uid) {
                ch.cause = ch.cause.or(Some(16));
            }
            self.hangup(uid, None, t, true, out);
        }
        // 2. Channels that started while we were away.
        let mut new = Vec::new();
        for m in items {
            let Some(uid) = m.get("Uniqueid") else {
                continue;
            };
            if self.chans.contains_key(uid) || self.tombstones.contains_key(uid) {
                continue;
            }
            let age = m
                .get("Duration")
                .and_then(parse_hms)
                .or_else(|| m.get("Seconds").and_then(|s| s.trim().parse::<f64>().ok()))
                .unwrap_or(0.0);
            let info = ChanInfo {
                uid: Some(uid),
                name: m.get("Channel"),
                linkedid: m.get("Linkedid"),
                state: None,
                caller_num: m.get("CallerIDNum"),
                caller_name: m.get("CallerIDName"),
                connected_num: m.get("ConnectedLineNum"),
                connected_name: m.get("ConnectedLineName"),
                context: m.get("Context"),
                exten: m.get("Exten").or_else(|| m.get("Extension")),
            };
            if let Some(u) = self.ensure(cfg, &info, t - age, true) {
                new.push((u, m));
            }
        }
        for (uid, m) in &new {
            let peer = m
                .get("BridgedUniqueid")
                .or_else(|| m.get("BridgedUniqueID"));
            if let Some(p) = peer.filter(|p| self.chans.contains_key(*p)) {
                let p = p.to_string();
                self.tie(&p, uid, t);
            }
            let session = self.chans.get(uid).map(|c| c.call.clone());
            if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
                call.approximate = true;
                call.announced = true;
            }
        }
        for (uid, m) in &new {
            let up = m
                .get("ChannelStateDesc")
                .or_else(|| m.get("State"))
                .is_some_and(|s| s.eq_ignore_ascii_case("Up"));
            if up {
                self.up(cfg, uid, t, true, out);
            }
        }
        self.disconnected_at = None;
    }
}

/// `00:01:07` → 67 seconds.
fn parse_hms(s: &str) -> Option<f64> {
    let mut total = 0.0;
    for part in s.trim().split(':') {
        total = total * 60.0 + part.trim().parse::<f64>().ok()?;
    }
    Some(total)
}
