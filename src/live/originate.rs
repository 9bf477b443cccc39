//! Click-to-call requests and their outcome: the AMI `OriginateResponse`
//! combined with what the call model saw.
//!
//! | `Reason` | meaning (last control frame) | what the model saw of the agent's leg | outcome |
//! |---|---|---|---|
//! | 4 answered | the agent picked up | — | `connected` (the number is being called) |
//! | 5 busy | the agent's phone refused (486) | — | `busy` |
//! | 3 ringing | rang until the Timeout | — | `no_answer` |
//! | 8 congestion | the agent leg could not be reached | — | `failed` |
//! | 1 hung up | the agent leg ended | leg hung up BUSY → `busy`; NO ANSWER → `no_answer` | else `failed` |
//! | 0 failed | no channel, or failed without a control frame | leg hung up BUSY → `busy` | else `failed` |
//! | none (timeout, connection lost) | unknown | — | `failed` (never re-sent) |
//!
//! **Uncertain**: Reason 0 covers an unregistered phone, an unreachable one,
//! and a registered phone that never answers the INVITE (chan_sip, see
//! `fixtures/ami/originate/README.md`); other channel drivers give other
//! Reasons for the same thing (chan_pjsip), which is why a model-seen BUSY
//! wins over 0/1. A `connected` only says the agent answered: the outside
//! result (ANSWERED, BUSY, NO ANSWER, CONGESTION) comes later, from the call
//! record (`outside` of `GET /v1/calls/{id}`, `originate.ended`). For a
//! non-4 Reason the decision waits up to [`MODEL_GRACE`] for the model's
//! view of the agent leg (the Hangup follows the OriginateResponse).
//!
//! `ringing_own_phone` comes from the model: the agent's leg rang. On
//! Asterisk 12+ the call is known in advance (`ChannelId` = the request's
//! id = the call's session id); on Asterisk 11, which ignores `ChannelId`,
//! the first new outgoing call of the agent's extension after the request is
//! taken to be it (and the OriginateResponse's Uniqueid confirms it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::model::{Disposition, ModelEvent, Role, State};

/// How long a non-answered Reason waits for the model's view of the leg.
pub const MODEL_GRACE: Duration = Duration::from_secs(2);
/// Finished requests kept for `GET /v1/calls/{id}`.
const KEEP: usize = 10_000;

/// Where a click-to-call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Sent to the PBX, nothing seen yet.
    Queued,
    /// The agent's own phone rings.
    RingingOwnPhone,
    /// The agent answered; the number is being called.
    Connected,
    /// The agent's phone was busy.
    Busy,
    /// The agent did not pick up in time.
    NoAnswer,
    /// Anything else (unavailable, congestion, unknown outcome).
    Failed,
}

impl Status {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::RingingOwnPhone => "ringing_own_phone",
            Status::Connected => "connected",
            Status::Busy => "busy",
            Status::NoAnswer => "no_answer",
            Status::Failed => "failed",
        }
    }

    /// No further status follows (except the outside result of `connected`).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Connected | Status::Busy | Status::NoAnswer | Status::Failed
        )
    }
}

/// The outside party's result, from the call record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outside {
    /// The record's disposition.
    pub disposition: Disposition,
    /// Who answered (`external` when the number did).
    pub answered_by: Option<String>,
    /// Seconds talked.
    pub billsec: f64,
}

/// One click-to-call.
#[derive(Debug, Clone, Serialize)]
pub struct CallRequest {
    /// Request id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// The agent's extension.
    pub extension: String,
    /// The number dialled.
    pub number: String,
    /// Status.
    pub status: Status,
    /// The resulting call's session id in the model.
    pub session_id: Option<String>,
    /// `Reason` of the OriginateResponse.
    pub reason: Option<String>,
    /// Why it failed, in words.
    pub detail: Option<String>,
    /// Outside result, once the call ended.
    pub outside: Option<Outside>,
    /// Epoch seconds.
    pub created_at: f64,
    /// Epoch seconds.
    pub updated_at: f64,
    #[serde(skip)]
    agent_leg: Option<Disposition>,
    #[serde(skip)]
    pending: Option<(String, Instant)>,
    #[serde(skip)]
    created: Instant,
}

/// A change to announce: `originate.<status>` when `ended` is false,
/// `originate.ended` (the outside result is known) when true.
#[derive(Debug, Clone)]
pub struct Change {
    /// The request after the change.
    pub request: CallRequest,
    /// The call ended (the record arrived).
    pub ended: bool,
}

/// The AMI's answer to one request.
#[derive(Debug, Clone)]
pub enum AmiOutcome {
    /// `OriginateResponse`: `Response` Success, `Reason`, `Uniqueid`.
    Event {
        /// `Response: Success`.
        success: bool,
        /// `Reason`.
        reason: String,
        /// `Uniqueid` (the session of the call).
        uniqueid: Option<String>,
    },
    /// No outcome (rejected, timeout, connection lost).
    Error(String),
}

/// Every click-to-call of the process.
#[derive(Debug, Default)]
pub struct Registry {
    by_id: HashMap<String, CallRequest>,
    order: VecDeque<String>,
    by_session: HashMap<String, String>,
}

impl Registry {
    /// Registers a new request (status `queued`).
    pub fn add(
        &mut self,
        id: &str,
        tenant: &str,
        extension: &str,
        number: &str,
        session: Option<&str>,
    ) -> CallRequest {
        let now = crate::source::now_epoch();
        let r = CallRequest {
            id: id.to_string(),
            tenant: tenant.to_string(),
            extension: extension.to_string(),
            number: number.to_string(),
            status: Status::Queued,
            session_id: None,
            reason: None,
            detail: None,
            outside: None,
            created_at: now,
            updated_at: now,
            agent_leg: None,
            pending: None,
            created: Instant::now(),
        };
        if let Some(s) = session {
            self.by_session.insert(s.to_string(), id.to_string());
        }
        self.by_id.insert(id.to_string(), r.clone());
        self.order.push_back(id.to_string());
        while self.order.len() > KEEP {
            if let Some(old) = self.order.pop_front() {
                if let Some(r) = self.by_id.remove(&old) {
                    if let Some(s) = r.session_id {
                        self.by_session.remove(&s);
                    }
                }
                self.by_session.retain(|_, v| *v != old);
            }
        }
        r
    }

    /// One request.
    pub fn get(&self, id: &str) -> Option<&CallRequest> {
        self.by_id.get(id)
    }

    /// Requests of a user that are not final.
    pub fn in_progress(&self, tenant: &str, extension: &str) -> usize {
        self.by_id
            .values()
            .filter(|r| r.tenant == tenant && r.extension == extension && !r.status.is_final())
            .count()
    }

    fn set(r: &mut CallRequest, s: Status, changes: &mut Vec<Change>) {
        if r.status == s || r.status.is_final() {
            return;
        }
        r.status = s;
        r.updated_at = crate::source::now_epoch();
        changes.push(Change {
            request: r.clone(),
            ended: false,
        });
        if s.is_final() && r.outside.is_some() {
            changes.push(Change {
                request: r.clone(),
                ended: true,
            });
        }
    }

    /// A model event of `tenant`.
    pub fn on_model(&mut self, tenant: &str, ev: &ModelEvent, changes: &mut Vec<Change>) {
        let sid = ev.session_id();
        let id = match self.by_session.get(sid) {
            Some(id) => Some(id.clone()),
            None => match ev {
                // Asterisk 11: the agent's first new outgoing call.
                ModelEvent::Leg(l) if l.role == Role::Caller && l.state == State::Ringing => self
                    .by_id
                    .values()
                    .filter(|r| {
                        r.tenant == tenant
                            && r.extension == l.extension
                            && r.status == Status::Queued
                            && r.session_id.is_none()
                            && r.created.elapsed() < Duration::from_secs(120)
                    })
                    .min_by(|a, b| a.created.cmp(&b.created))
                    .map(|r| r.id.clone()),
                _ => None,
            },
        };
        let Some(id) = id else { return };
        let Some(r) = self.by_id.get_mut(&id) else {
            return;
        };
        if r.tenant != tenant {
            return;
        }
        if r.session_id.is_none() {
            r.session_id = Some(sid.to_string());
            self.by_session.insert(sid.to_string(), id.clone());
        }
        match ev {
            ModelEvent::Leg(l) if l.extension == r.extension => match l.state {
                State::Ringing => Self::set(r, Status::RingingOwnPhone, changes),
                State::Answered => Self::set(r, Status::Connected, changes),
                State::Hungup => {
                    r.agent_leg = l.disposition;
                    if r.pending.is_some() {
                        Self::decide(r, changes);
                    }
                }
            },
            ModelEvent::Call(rec) => {
                r.outside = Some(Outside {
                    disposition: rec.disposition,
                    answered_by: rec.answered_by.clone(),
                    billsec: rec.billsec,
                });
                r.updated_at = crate::source::now_epoch();
                if r.status.is_final() {
                    changes.push(Change {
                        request: r.clone(),
                        ended: true,
                    });
                } else if r.pending.is_some() {
                    Self::decide(r, changes);
                }
            }
            _ => {}
        }
    }

    /// The AMI's answer.
    pub fn on_ami(&mut self, id: &str, outcome: AmiOutcome, changes: &mut Vec<Change>) {
        let Some(r) = self.by_id.get_mut(id) else {
            return;
        };
        match outcome {
            AmiOutcome::Event {
                success,
                reason,
                uniqueid,
            } => {
                if let Some(u) =
                    uniqueid.filter(|u| !u.is_empty() && !u.eq_ignore_ascii_case("<null>"))
                {
                    if r.session_id.is_none() {
                        r.session_id = Some(u.clone());
                    }
                    self.by_session.insert(u, id.to_string());
                }
                r.reason = Some(reason.clone());
                if success && reason == "4" {
                    Self::set(r, Status::Connected, changes);
                    return;
                }
                r.pending = Some((reason, Instant::now() + MODEL_GRACE));
                if r.agent_leg.is_some() || r.outside.is_some() {
                    Self::decide(r, changes);
                }
            }
            AmiOutcome::Error(e) => {
                r.detail = Some(e);
                Self::set(r, Status::Failed, changes);
            }
        }
    }

    /// Decides the requests whose model grace is over.
    pub fn tick(&mut self, changes: &mut Vec<Change>) {
        let now = Instant::now();
        for r in self.by_id.values_mut() {
            if r.pending.as_ref().is_some_and(|(_, t)| *t <= now) {
                Self::decide(r, changes);
            }
        }
    }

    fn decide(r: &mut CallRequest, changes: &mut Vec<Change>) {
        let Some((reason, _)) = r.pending.take() else {
            return;
        };
        let (status, detail) = outcome(&reason, r.agent_leg);
        r.detail = Some(detail.to_string());
        Self::set(r, status, changes);
    }
}

/// The table of the module documentation.
pub fn outcome(reason: &str, agent_leg: Option<Disposition>) -> (Status, &'static str) {
    match (reason.trim(), agent_leg) {
        ("4", _) => (Status::Connected, "answered"),
        ("5", _) => (Status::Busy, "the extension is busy"),
        ("3", _) => (Status::NoAnswer, "not picked up in time"),
        ("8", _) => (Status::Failed, "congestion"),
        (_, Some(Disposition::Busy)) => (Status::Busy, "the extension is busy"),
        ("1", Some(Disposition::NoAnswer)) => (Status::NoAnswer, "not picked up in time"),
        ("1", _) => (Status::Failed, "hung up"),
        _ => (Status::Failed, "the extension is not available"),
    }
}

/// Counts by outcome (for tests and the README).
pub fn status_counts(reg: &Registry) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for r in reg.by_id.values() {
        *m.entry(r.status.as_str()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_table() {
        assert_eq!(outcome("4", None).0, Status::Connected);
        assert_eq!(outcome("5", None).0, Status::Busy);
        assert_eq!(outcome("3", None).0, Status::NoAnswer);
        assert_eq!(outcome("8", None).0, Status::Failed);
        assert_eq!(outcome("0", None).0, Status::Failed);
        assert_eq!(outcome("0", Some(Disposition::Busy)).0, Status::Busy);
        assert_eq!(outcome("0", Some(Disposition::NoAnswer)).0, Status::Failed);
        assert_eq!(
            outcome("1", Some(Disposition::NoAnswer)).0,
            Status::NoAnswer
        );
        assert_eq!(outcome("1", None).0, Status::Failed);
        assert_eq!(outcome("garbage", None).0, Status::Failed);
    }

    #[test]
    fn waits_for_the_model_then_decides() {
        let mut reg = Registry::default();
        let mut ch = Vec::new();
        reg.add("r1", "main", "1001", "555", Some("callhook-r1"));
        reg.on_ami(
            "r1",
            AmiOutcome::Event {
                success: false,
                reason: "0".into(),
                uniqueid: Some("callhook-r1".into()),
            },
            &mut ch,
        );
        assert!(ch.is_empty());
        reg.by_id
            .get_mut("r1")
            .map(|r| r.pending.as_mut().map(|p| p.1 = Instant::now()));
        reg.tick(&mut ch);
        assert_eq!(ch.last().map(|c| c.request.status), Some(Status::Failed));
        assert_eq!(status_counts(&reg).get("failed"), Some(&1));
    }
}
