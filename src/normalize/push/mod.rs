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
//!
//! # Layout
//!
//! This file holds [`PushCalls`] (one team's table of sessions and its
//! time-driven decisions); `party` says who an event is about; `session`
//! one call's facts, numbers and record; `leg` the leg state machine;
//! `call` the call-scope states; `events` maps ringing/answer/hangup to
//! these; `duplicates` the duplicate keys and finished-session tombstones;
//! `journal` the batch rollback; `clock` the team's clock offset. Per-session
//! state (`Session` with its `Leg`s, `Tomb`) is plain owned data.

mod call;
mod clock;
mod duplicates;
mod events;
mod journal;
mod leg;
mod party;
mod persist;
mod session;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};

use tracing::debug;

use super::{FastMap, NormalizerConfig};
use crate::metrics::metrics;
use crate::model::{EndReason, ModelEvent, State};
use crate::source::{PbxId, PushEvent, PushKind, PushReceipt};

use clock::Clock;
use duplicates::{Key, Tomb};
use journal::Saved;
use party::{party_of, Party};
use session::Session;

pub use party::direction_of;

/// Most legs kept per session (more extensions are ignored and counted).
pub const MAX_LEGS: usize = 64;
/// Most duplicate keys remembered per session (oldest forgotten first).
pub const MAX_SEEN: usize = 256;
/// Most extra fields kept per session (new names beyond are dropped).
pub const MAX_EXTRA: usize = 100;

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

/// Every call of one push team.
#[derive(Debug)]
pub struct PushCalls {
    team: PbxId,
    sessions: FastMap<String, Session>,
    tombs: FastMap<String, Tomb>,
    tomb_order: VecDeque<(f64, String)>,
    clock: Clock,
    journal: Option<HashMap<String, Saved>>,
    /// Sessions changed since the last [`PushCalls::take_dirty`], when
    /// tracked (see `persist`).
    dirty: Option<HashSet<String>>,
    live_gauge: prometheus::IntGauge,
}

impl PushCalls {
    /// Empty tables for one team.
    pub fn new(team: PbxId) -> Self {
        Self {
            live_gauge: metrics().live_calls.with_label_values(&[&team]),
            team,
            sessions: FastMap::default(),
            tombs: FastMap::default(),
            tomb_order: VecDeque::new(),
            clock: Clock::default(),
            journal: None,
            dirty: None,
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

    /// Whether `session` is a call in progress or a finished one still
    /// remembered (a push for it opens no new call).
    pub fn knows(&self, session: &str) -> bool {
        self.sessions.contains_key(session) || self.tombs.contains_key(session)
    }

    /// Finished sessions remembered for late pushes.
    pub fn tombstones(&self) -> usize {
        self.tombs.len()
    }

    /// Publishes the live-call gauge.
    pub fn publish(&self) {
        self.live_gauge.set(self.sessions.len() as i64);
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
                return PushReceipt {
                    duplicate: true,
                    full: false,
                };
            }
            self.save(sid);
            if let Some(tomb) = self.tombs.get_mut(sid) {
                if tomb.seen.len() < MAX_SEEN {
                    tomb.seen.push(key);
                }
            }
            debug!(team = %self.team, session = sid, event = %ev.event, "push for a finished call ignored");
            Self::ignored("late");
            return PushReceipt {
                duplicate: false,
                full: false,
            };
        }
        if self
            .sessions
            .get(sid)
            .is_some_and(|s| s.seen.contains(&key))
        {
            return PushReceipt {
                duplicate: true,
                full: false,
            };
        }
        self.save(sid);
        self.touch(sid);
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
        PushReceipt {
            duplicate: false,
            full: false,
        }
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

    /// Closes every call now (its source is no longer configured):
    /// `end_reason: reconnect`, approximate, at its last event.
    pub fn close_all(&mut self, now: f64, out: &mut Vec<ModelEvent>) {
        let mut all: Vec<(String, f64)> = self
            .sessions
            .values()
            .map(|s| (s.id.clone(), s.end_time().max(s.last_event_at)))
            .collect();
        all.sort_by(|a, b| a.1.total_cmp(&b.1));
        for (sid, t) in all {
            self.end(&sid, t, EndReason::Reconnect, now, out);
        }
    }

    fn end(&mut self, sid: &str, t: f64, reason: EndReason, now: f64, out: &mut Vec<ModelEvent>) {
        self.save(sid);
        self.touch(sid);
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
}
