//! One tenant's live state: its sequence counter, the resume ring buffer,
//! its live calls (from the call model), the extension states the presence
//! tracker reported, and its subscribers.
//!
//! An extension's state is the presence tracker's row when the tracker has
//! one (hints, device states, registration, hold, call waiting, DND — see
//! `live::presence`), else what this tenant derives from the model's legs
//! (no tracker, presence disabled, or an extension the tracker knows
//! nothing about). A `presence` message goes out when the state shown
//! changes, whichever side decided it.
//!
//! Everything here runs under the tenant's lock, briefly, and never waits:
//! a frame is pushed to each subscriber's bounded queue with `try_send`; a
//! full queue marks that subscriber as overflowed (its session then sends
//! it a fresh snapshot and a `gap` marker, see `session`) and the frame is
//! not queued for it. Nobody else is slowed down.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::auth::Principal;
use super::message::Frame;
use crate::metrics::metrics;
use crate::model::{Direction, LegEvent, ModelEvent, Role, State, Timestamp};

/// An extension's state as the live channel shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExtState {
    /// The extension.
    pub extension: String,
    /// `idle`, `ringing`, `in_use`, `busy`, `on_hold`, `unavailable`, `unknown`.
    pub state: String,
    /// Since when.
    pub since: Timestamp,
    /// A further call rings on top (call waiting).
    pub call_waiting: bool,
    /// Registered and reachable (`true`), unregistered or unreachable
    /// (`false`), not known (`null`).
    pub registered: Option<bool>,
    /// What decided the state: the tracker's source (`calls`, `hint`,
    /// `device`, `registration`, `inferred`) or `model` (derived here from
    /// the call model's legs).
    pub source: &'static str,
    /// The extension's current calls as the decider saw them.
    pub calls: Vec<ExtCall>,
}

impl ExtState {
    /// Nothing known about `ext`.
    pub fn unknown(ext: &str) -> Self {
        Self {
            extension: ext.to_string(),
            state: "unknown".into(),
            since: Timestamp(crate::source::now_epoch()),
            call_waiting: false,
            registered: None,
            source: "none",
            calls: Vec::new(),
        }
    }

    /// Whether `other` shows something different to a person.
    fn differs(&self, other: &ExtState) -> bool {
        self.state != other.state
            || self.call_waiting != other.call_waiting
            || self.registered != other.registered
    }
}

/// One current call of an extension, in a `presence` message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExtCall {
    /// Session id.
    pub session_id: String,
    /// Whether the extension placed the call or is offered it.
    pub role: Role,
    /// `ringing` (offered, or dialing out) or `answered`.
    pub state: State,
    /// Direction.
    pub direction: Direction,
}

/// A leg of a live call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveLeg {
    /// `ringing` or `answered`.
    pub state: State,
    /// Caller or callee.
    pub role: Role,
    /// First state.
    pub since: Timestamp,
}

/// A call in progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveCall {
    /// Session id.
    pub session_id: String,
    /// Direction.
    pub direction: Direction,
    /// The real caller.
    pub caller_number: Option<String>,
    /// The real caller's name.
    pub caller_name: Option<String>,
    /// Dialed number.
    pub dialed_number: Option<String>,
    /// Queue.
    pub queue: Option<String>,
    /// First event.
    pub started_at: Timestamp,
    /// Who answered (an extension or `external`).
    pub answered_by: Option<String>,
    /// Extensions on the call, with their legs.
    pub legs: BTreeMap<String, LiveLeg>,
}

/// A client of this tenant.
pub struct Subscriber {
    /// Who.
    pub principal: Principal,
    /// Its queue.
    pub tx: mpsc::Sender<Arc<Frame>>,
    /// Set when a frame did not fit.
    pub overflow: Arc<AtomicBool>,
}

/// One tenant.
pub struct TenantState {
    /// The tenant id.
    pub id: String,
    /// Last seq given.
    pub seq: u64,
    ring: VecDeque<Arc<Frame>>,
    ring_cap: usize,
    /// Live calls by session.
    pub calls: BTreeMap<String, LiveCall>,
    /// States reported by the presence tracker.
    pub reported: BTreeMap<String, ExtState>,
    /// States derived from the calls (used where the tracker reported
    /// nothing).
    derived: BTreeMap<String, ExtState>,
    /// The state last announced per extension.
    shown: BTreeMap<String, ExtState>,
    /// Subscribers by id.
    pub subs: BTreeMap<u64, Subscriber>,
    /// Frames emitted during a batch ([`TenantState::begin_batch`]), fanned
    /// out at its end.
    pending: Option<Vec<Arc<Frame>>>,
}

impl TenantState {
    /// An empty tenant keeping `ring_cap` frames for resumes.
    pub fn new(id: &str, ring_cap: usize) -> Self {
        Self {
            id: id.to_string(),
            seq: 0,
            ring: VecDeque::new(),
            ring_cap: ring_cap.max(1),
            calls: BTreeMap::new(),
            reported: BTreeMap::new(),
            derived: BTreeMap::new(),
            shown: BTreeMap::new(),
            subs: BTreeMap::new(),
            pending: None,
        }
    }

    /// Until [`TenantState::end_batch`], frames are numbered and kept but
    /// not yet queued: each subscriber then gets the batch's frames back to
    /// back, so its session finds them together (one write) instead of
    /// being woken for the first one.
    pub fn begin_batch(&mut self) {
        self.pending.get_or_insert_with(Vec::new);
    }

    /// Queues the frames emitted since [`TenantState::begin_batch`].
    pub fn end_batch(&mut self) {
        if let Some(frames) = self.pending.take() {
            self.fan_out(&frames);
        }
    }

    /// Numbers, keeps and fans out one message (at the end of the batch
    /// when one is open).
    pub fn emit(
        &mut self,
        kind: &'static str,
        at: f64,
        concern: Vec<String>,
        body: Value,
    ) -> Arc<Frame> {
        self.seq += 1;
        let f = Arc::new(Frame::new(kind, self.seq, at, concern, body));
        if self.ring.len() >= self.ring_cap {
            self.ring.pop_front();
        }
        self.ring.push_back(f.clone());
        match &mut self.pending {
            Some(p) => p.push(f.clone()),
            None => self.fan_out(std::slice::from_ref(&f)),
        }
        f
    }

    /// Pushes `frames` to each concerned subscriber's queue, subscriber by
    /// subscriber; a full queue marks it overflowed and it gets no more.
    fn fan_out(&self, frames: &[Arc<Frame>]) {
        for s in self.subs.values() {
            for f in frames {
                if !f.concern.0.iter().any(|e| s.principal.sees(e)) {
                    continue;
                }
                if s.overflow.load(Ordering::Relaxed) {
                    break;
                }
                match s.tx.try_send(f.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.overflow.store(true, Ordering::Relaxed);
                        metrics()
                            .live_dropped
                            .with_label_values(&["slow_client"])
                            .inc();
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        }
    }

    /// The frames after `after` that `p` may see, up to `upto`; `None`
    /// when the ring no longer reaches back that far.
    pub fn missed(&self, p: &Principal, after: u64, upto: u64) -> Option<Vec<Arc<Frame>>> {
        if after >= self.seq {
            return Some(Vec::new());
        }
        let oldest = self.ring.front().map_or(self.seq + 1, |f| f.seq);
        if after + 1 < oldest {
            return None;
        }
        Some(
            self.ring
                .iter()
                .filter(|f| f.seq > after && f.seq <= upto)
                .filter(|f| f.concern.0.iter().any(|e| p.sees(e)))
                .cloned()
                .collect(),
        )
    }

    /// The current state of an extension: the tracker's, else derived from
    /// its calls.
    pub fn state_of(&self, ext: &str) -> Option<ExtState> {
        self.reported
            .get(ext)
            .or_else(|| self.derived.get(ext))
            .cloned()
    }

    /// Every extension known (reported, derived, or on a call).
    pub fn extensions(&self) -> BTreeSet<String> {
        let mut s: BTreeSet<String> = self.reported.keys().cloned().collect();
        s.extend(self.derived.keys().cloned());
        for c in self.calls.values() {
            s.extend(c.legs.keys().cloned());
        }
        s
    }

    /// The live calls of an extension.
    pub fn calls_of(&self, ext: &str) -> Vec<&LiveCall> {
        self.calls
            .values()
            .filter(|c| c.legs.contains_key(ext))
            .collect()
    }

    /// One extension's row: state, since, calls.
    pub fn extension_view(&self, ext: &str) -> Value {
        let st = self.state_of(ext).unwrap_or_else(|| ExtState::unknown(ext));
        json!({
            "extension": ext,
            "state": st.state,
            "since": st.since,
            "call_waiting": st.call_waiting,
            "registered": st.registered,
            "source": st.source,
            "calls": self.calls_of(ext),
        })
    }

    /// The snapshot body for `p`.
    pub fn snapshot(&self, p: &Principal) -> Value {
        let exts: Vec<Value> = self
            .extensions()
            .into_iter()
            .filter(|e| p.sees(e))
            .map(|e| self.extension_view(&e))
            .collect();
        let mut exts = exts;
        if p.scope == super::auth::Scope::Agent && exts.is_empty() {
            exts.push(self.extension_view(&p.extension));
        }
        let calls: Vec<&LiveCall> = self
            .calls
            .values()
            .filter(|c| c.legs.keys().any(|e| p.sees(e)))
            .collect();
        json!({ "extensions": exts, "calls": calls })
    }

    /// A state from the presence tracker (it wins over the model's legs).
    pub fn report(&mut self, st: ExtState) {
        let ext = st.extension.clone();
        self.reported.insert(ext.clone(), st);
        self.refresh(&ext);
    }

    /// The tracker no longer knows anything about `ext`: its state comes
    /// from the model's legs again.
    pub fn withdraw(&mut self, ext: &str) {
        if self.reported.remove(ext).is_some() {
            self.refresh(ext);
        }
    }

    /// Announces the extension's state if it differs from the last one
    /// announced.
    fn refresh(&mut self, ext: &str) {
        let cur = match self.state_of(ext) {
            Some(c) => c,
            // Nothing decides any more: say so, once.
            None if self.shown.contains_key(ext) => ExtState::unknown(ext),
            None => return,
        };
        if self.shown.get(ext).is_none_or(|old| old.differs(&cur)) {
            self.emit_presence(&cur);
            self.shown.insert(ext.to_string(), cur);
        }
    }

    fn emit_presence(&mut self, st: &ExtState) {
        let body = json!({
            "extension": st.extension,
            "state": st.state,
            "since": st.since,
            "call_waiting": st.call_waiting,
            "registered": st.registered,
            "source": st.source,
            // Meetip's monitor names the call in its state lines.
            "calls": st.calls,
        });
        self.emit("presence", st.since.0, vec![st.extension.clone()], body);
    }

    /// Re-derives an extension's state from its calls (shown only where
    /// the tracker reported nothing).
    fn derive(&mut self, ext: &str, at: f64) {
        let calls: Vec<ExtCall> = self
            .calls_of(ext)
            .iter()
            .filter_map(|c| {
                c.legs.get(ext).map(|l| ExtCall {
                    session_id: c.session_id.clone(),
                    role: l.role,
                    state: l.state,
                    direction: c.direction,
                })
            })
            .collect();
        let answered = calls.iter().any(|l| l.state == State::Answered);
        let ringing = calls
            .iter()
            .any(|l| l.state == State::Ringing && l.role == Role::Callee);
        let dialing = calls
            .iter()
            .any(|l| l.state == State::Ringing && l.role == Role::Caller);
        let state = if answered || dialing {
            "in_use"
        } else if ringing {
            "ringing"
        } else {
            "idle"
        };
        let mut st = ExtState {
            extension: ext.to_string(),
            state: state.into(),
            since: Timestamp(at),
            call_waiting: answered && ringing,
            registered: None,
            source: "model",
            calls,
        };
        if let Some(old) = self.derived.get(ext) {
            if !old.differs(&st) {
                st.since = old.since;
            }
        }
        self.derived.insert(ext.to_string(), st);
        self.refresh(ext);
    }

    /// Applies one model event: updates the live calls and emits
    /// `call.*` messages (and derived `presence`).
    pub fn apply_model(&mut self, ev: &ModelEvent) {
        match ev {
            ModelEvent::Leg(l) => self.apply_leg(l),
            ModelEvent::CallState(c) => {
                if let Some(call) = self.calls.get_mut(&c.session_id) {
                    call.direction = c.direction;
                    if c.caller_number.is_some() {
                        call.caller_number = c.caller_number.clone();
                    }
                    if c.dialed_number.is_some() {
                        call.dialed_number = c.dialed_number.clone();
                    }
                    if c.queue.is_some() {
                        call.queue = c.queue.clone();
                    }
                }
                if c.state == State::Answered && c.answered_by.as_deref() == Some("external") {
                    let concern: Vec<String> = self
                        .calls
                        .get(&c.session_id)
                        .map(|call| call.legs.keys().cloned().collect())
                        .unwrap_or_default();
                    if let Some(call) = self.calls.get_mut(&c.session_id) {
                        call.answered_by = Some("external".into());
                    }
                    let body = json!({
                        "session_id": c.session_id,
                        "extension": concern.first(),
                        "answered_by": "external",
                        "direction": c.direction,
                        "caller_number": c.caller_number,
                        "caller_name": c.caller_name,
                        "dialed_number": c.dialed_number,
                        "queue": c.queue,
                    });
                    self.emit("call.answered", c.at.0, concern, body);
                }
            }
            ModelEvent::Call(r) => {
                if let Some(call) = self.calls.remove(&r.session_id) {
                    for ext in call.legs.keys() {
                        self.derive(ext, r.ended_at.0);
                    }
                }
            }
        }
    }

    fn apply_leg(&mut self, l: &LegEvent) {
        let call = self
            .calls
            .entry(l.session_id.clone())
            .or_insert_with(|| LiveCall {
                session_id: l.session_id.clone(),
                direction: l.direction,
                caller_number: l.caller_number.clone(),
                caller_name: l.caller_name.clone(),
                dialed_number: l.dialed_number.clone(),
                queue: l.queue.clone(),
                started_at: l.at,
                answered_by: None,
                legs: BTreeMap::new(),
            });
        call.direction = l.direction;
        if l.caller_number.is_some() {
            call.caller_number = l.caller_number.clone();
        }
        if l.caller_name.is_some() {
            call.caller_name = l.caller_name.clone();
        }
        if l.dialed_number.is_some() {
            call.dialed_number = l.dialed_number.clone();
        }
        if l.queue.is_some() {
            call.queue = l.queue.clone();
        }
        let body = |extra: Value| {
            let mut b = json!({
                "session_id": l.session_id,
                "extension": l.extension,
                "role": l.role,
                "direction": l.direction,
                "caller_number": l.caller_number,
                "caller_name": l.caller_name,
                "dialed_number": l.dialed_number,
                "queue": l.queue,
            });
            if let (Value::Object(b), Value::Object(e)) = (&mut b, extra) {
                b.extend(e);
            }
            b
        };
        match l.state {
            State::Ringing => {
                call.legs.insert(
                    l.extension.clone(),
                    LiveLeg {
                        state: State::Ringing,
                        role: l.role,
                        since: l.at,
                    },
                );
                self.emit(
                    "call.ringing",
                    l.at.0,
                    vec![l.extension.clone()],
                    body(json!({})),
                );
            }
            State::Answered => {
                let leg = call.legs.entry(l.extension.clone()).or_insert(LiveLeg {
                    state: State::Answered,
                    role: l.role,
                    since: l.at,
                });
                leg.state = State::Answered;
                if l.role == Role::Callee && call.answered_by.is_none() {
                    call.answered_by = Some(l.extension.clone());
                }
                // Every extension of the call learns who answered
                // ("answered elsewhere"); the caller's own leg answering
                // (its phone picked up) concerns only itself.
                let concern: Vec<String> = if l.role == Role::Callee {
                    call.legs.keys().cloned().collect()
                } else {
                    vec![l.extension.clone()]
                };
                let by = if l.role == Role::Callee {
                    Some(l.extension.clone())
                } else {
                    call.answered_by.clone()
                };
                self.emit(
                    "call.answered",
                    l.at.0,
                    concern,
                    body(json!({ "answered_by": by })),
                );
            }
            State::Hungup => {
                call.legs.remove(&l.extension);
                let answered_by = call.answered_by.clone();
                self.emit(
                    "call.hungup",
                    l.at.0,
                    vec![l.extension.clone()],
                    body(json!({
                        "duration": l.duration,
                        "billsec": l.billsec,
                        "disposition": l.disposition,
                        "answered_by": answered_by,
                    })),
                );
            }
        }
        self.derive(&l.extension, l.at.0);
    }
}
