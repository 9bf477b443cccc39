//! One call (session) in progress: its facts, numbers, disposition, when it
//! is over, and its record.

use std::collections::{BTreeMap, VecDeque};

use super::leg::Leg;
use super::party::direction_of;
use super::{fill, nonempty, Key, MAX_EXTRA, MAX_SEEN};
use crate::model::{CallFacts, CallRecord, Direction, Disposition, EndReason, Role};
use crate::source::{PushEvent, PushSide};

/// One call (session) in progress.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Session {
    pub(super) id: String,
    pub(super) direction: Option<Direction>,
    /// First non-empty values, by where they were seen (numbers are
    /// computed from these with the direction known at each moment).
    pub(super) active: Option<String>,
    pub(super) active_on_caller: Option<String>,
    pub(super) active_on_callee: Option<String>,
    pub(super) did: Option<String>,
    pub(super) ext_any: Option<String>,
    pub(super) ext_caller: Option<String>,
    pub(super) ext_callee: Option<String>,
    pub(super) caller_name: Option<String>,
    pub(super) queue: Option<String>,
    pub(super) recording_url: Option<String>,
    pub(super) extra: BTreeMap<String, String>,
    pub(super) legs: Vec<Leg>,
    pub(super) rung: Vec<String>,
    pub(super) started_at: f64,
    pub(super) hangup_at: Option<f64>,
    pub(super) answered_at: Option<f64>,
    pub(super) answered_by: Option<String>,
    pub(super) ringing_emitted: bool,
    pub(super) answered_emitted: bool,
    pub(super) announced: bool,
    pub(super) customer_seen: bool,
    pub(super) customer_gone: bool,
    pub(super) statuses: Vec<String>,
    pub(super) seen: VecDeque<Key>,
    pub(super) first_local: f64,
    pub(super) last_local: f64,
    pub(super) last_event_at: f64,
    pub(super) approximate: bool,
}

impl Session {
    pub(super) fn new(id: &str, t: f64, local: f64) -> Self {
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

    pub(super) fn dir(&self) -> Direction {
        self.direction.unwrap_or(Direction::Internal)
    }

    pub(super) fn caller_number(&self) -> Option<String> {
        match self.dir() {
            Direction::Incoming => self.active.clone(),
            Direction::Outgoing => self.ext_caller.clone().or_else(|| self.ext_any.clone()),
            Direction::Internal => self
                .ext_caller
                .clone()
                .or_else(|| self.active_on_callee.clone()),
        }
    }

    pub(super) fn dialed_number(&self) -> Option<String> {
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
    pub(super) fn absorb(&mut self, ev: &PushEvent, t: f64, local: f64) {
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

    pub(super) fn remember(&mut self, key: Key) {
        if self.seen.len() >= MAX_SEEN {
            self.seen.pop_front();
        }
        self.seen.push_back(key);
    }

    pub(super) fn disposition(&self) -> Disposition {
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

    /// Whether nothing more is expected (see the module docs).
    pub(super) fn over(&self) -> bool {
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
    pub(super) fn end_time(&self) -> f64 {
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

    pub(super) fn record(&self, team: &str, ended: f64, reason: EndReason) -> CallRecord {
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
