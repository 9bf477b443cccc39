//! The call model: what callhook tells the rest of the world about calls.
//!
//! One call is one session id (the PBX's `Linkedid`, or on Asterisk ≤ 11 the
//! Uniqueid of the call's first channel). A call has *legs*, one per extension
//! that took part (a ringing phone, the phone that placed an outgoing call),
//! and each leg and the call itself move monotonically through
//! `ringing → answered → hungup` (states may be skipped, never revisited).
//!
//! The model speaks for the people on the call: a machine answering (the PBX
//! before a queue, an IVR, voicemail) is not the call being answered; the
//! caller on every leg of an incoming call is the outside caller, never the
//! agent's own number; an outgoing call belongs to the extension that placed
//! it (even when a CRM click-to-call made the PBX ring that phone first).
//!
//! These types are pure data. Their JSON form is the stable `replay` /
//! webhook schema documented in the README; field names are part of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a leg or call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The PBX offered the call to the extension (or, for the calling
    /// extension, the call is ringing out).
    Ringing,
    /// A person answered.
    Answered,
    /// The leg or call is over.
    Hungup,
}

impl State {
    /// Lower-case name (`ringing`, `answered`, `hungup`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ringing => "ringing",
            State::Answered => "answered",
            State::Hungup => "hungup",
        }
    }
}

/// Which way the call goes, as a CRM user reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From outside (a trunk) to extensions.
    Incoming,
    /// From an extension to an outside number (including click-to-call).
    Outgoing,
    /// Between extensions.
    Internal,
}

impl Direction {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
            Direction::Internal => "internal",
        }
    }
}

/// How a call (or leg) ended, in CDR vocabulary plus `ABANDONED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// A person answered.
    Answered,
    /// Nobody answered (rang out, caller gave up while ringing, cancelled).
    NoAnswer,
    /// The called party was busy.
    Busy,
    /// The call could not be placed (unavailable, congestion).
    Failed,
    /// The caller gave up while waiting in a queue.
    Abandoned,
}

impl Disposition {
    /// The CDR-style spelling (`ANSWERED`, `NO ANSWER`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Answered => "ANSWERED",
            Disposition::NoAnswer => "NO ANSWER",
            Disposition::Busy => "BUSY",
            Disposition::Failed => "FAILED",
            Disposition::Abandoned => "ABANDONED",
        }
    }
}

impl Serialize for Disposition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Disposition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.to_ascii_uppercase().replace('_', " ").as_str() {
            "ANSWERED" => Disposition::Answered,
            "NO ANSWER" => Disposition::NoAnswer,
            "BUSY" => Disposition::Busy,
            "FAILED" => Disposition::Failed,
            "ABANDONED" => Disposition::Abandoned,
            _ => {
                return Err(serde::de::Error::invalid_value(
                    serde::de::Unexpected::Str(&s),
                    &"ANSWERED, NO ANSWER, BUSY, FAILED or ABANDONED",
                ))
            }
        })
    }
}

/// The part an extension plays in a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The extension placed the call (outgoing/internal, click-to-call).
    Caller,
    /// The call was offered to the extension.
    Callee,
}

/// Why a call record was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Every party hung up (the normal case).
    Hangup,
    /// The PBX no longer had the call after a reconnect: it ended while we
    /// were disconnected; the end time is approximate.
    Reconnect,
    /// No hangup was seen within the configured maximum call age.
    MaxAge,
}

/// Epoch seconds, serialized as RFC 3339 with microseconds (UTC).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Timestamp(pub f64);

impl Timestamp {
    /// RFC 3339 text, e.g. `2026-11-22T19:10:48.127205Z`.
    pub fn to_rfc3339(self) -> String {
        // Microseconds first: epoch µs fit exactly in an f64, epoch ns do not.
        let nanos = (self.0 * 1e6).round() as i128 * 1000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => {
                let fmt = time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
                );
                t.format(&fmt).unwrap_or_else(|_| format!("{}", self.0))
            }
            Err(_) => format!("{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

/// From RFC 3339 text (as serialized) or epoch seconds.
impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum T {
            N(f64),
            S(String),
        }
        match T::deserialize(d)? {
            T::N(n) => Ok(Timestamp(n)),
            T::S(s) => s
                .parse::<jiff::Timestamp>()
                .map(|t| Timestamp(t.as_second() as f64 + f64::from(t.subsec_nanosecond()) / 1e9))
                .map_err(|e| {
                    serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time: {e}"))
                }),
        }
    }
}

/// Seconds rounded to milliseconds (a float in JSON).
fn ser_secs<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((v * 1000.0).round() / 1000.0)
}

fn ser_opt_secs<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => ser_secs(v, s),
        None => s.serialize_none(),
    }
}

/// A leg changed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegEvent {
    /// The call's session id (the PBX's Linkedid).
    pub session_id: String,
    /// The PBX id from the config (or the push source's team).
    pub pbx: String,
    /// Stable id of this leg within the call (`SESSION/EXT`, `SESSION/EXT#2`
    /// when the same extension is offered the call again after its leg ended).
    pub leg_id: String,
    /// The new state.
    pub state: State,
    /// The call's direction as known at this moment.
    pub direction: Direction,
    /// Caller or callee.
    pub role: Role,
    /// The extension (from the channel name, e.g. `SIP/1001-0000000a` → `1001`).
    pub extension: String,
    /// The real caller's number (the outside caller on incoming calls, the
    /// calling extension on outgoing and internal ones).
    pub caller_number: Option<String>,
    /// The real caller's name.
    pub caller_name: Option<String>,
    /// The number that was dialed (DID on incoming calls).
    pub dialed_number: Option<String>,
    /// The queue the call came through, if any.
    pub queue: Option<String>,
    /// When it happened.
    pub at: Timestamp,
    /// On `hungup`: seconds from the leg's first state to its end.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_secs"
    )]
    pub duration: Option<f64>,
    /// On `hungup`: seconds the extension talked (0 when it never answered).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_secs"
    )]
    pub billsec: Option<f64>,
    /// On `hungup`: how the leg ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disposition: Option<Disposition>,
    /// True when the time is an estimate (learned after a reconnect).
    #[serde(default)]
    pub approximate: bool,
    /// Fields of a pushed event that have no place in the model (asterCC
    /// push: unknown fields and the agent number, by their pushed names),
    /// accumulated over the call, later values winning. Empty (and left
    /// out of the JSON) for AMI calls. Templates read them as
    /// `{{call.extra.NAME}}` (guard with `{{#if call.extra.NAME}}`: a
    /// missing name is an error in strict mode).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// The call as a whole started ringing or was answered by a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallStateEvent {
    /// The call's session id.
    pub session_id: String,
    /// The PBX id.
    pub pbx: String,
    /// `ringing` or `answered` (the end of a call is a [`CallRecord`]).
    pub state: State,
    /// The call's direction as known at this moment.
    pub direction: Direction,
    /// The real caller's number.
    pub caller_number: Option<String>,
    /// The real caller's name.
    pub caller_name: Option<String>,
    /// The dialed number.
    pub dialed_number: Option<String>,
    /// The queue, if any.
    pub queue: Option<String>,
    /// On `answered`: the extension that answered, or `external`.
    pub answered_by: Option<String>,
    /// When it happened.
    pub at: Timestamp,
    /// True when the time is an estimate.
    #[serde(default)]
    pub approximate: bool,
    /// Fields of a pushed event that have no place in the model (asterCC
    /// push: unknown fields and the agent number, by their pushed names),
    /// accumulated over the call, later values winning. Empty (and left
    /// out of the JSON) for AMI calls. Templates read them as
    /// `{{call.extra.NAME}}` (guard with `{{#if call.extra.NAME}}`: a
    /// missing name is an error in strict mode).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// A finished call: the record a call log wants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The call's session id (the PBX's Linkedid).
    pub session_id: String,
    /// The PBX id.
    pub pbx: String,
    /// Direction.
    pub direction: Direction,
    /// The real caller's number.
    pub caller_number: Option<String>,
    /// The real caller's name.
    pub caller_name: Option<String>,
    /// The dialed number (DID on incoming calls).
    pub dialed_number: Option<String>,
    /// The queue, if the call went through one.
    pub queue: Option<String>,
    /// Extensions that were offered the call, in order (outside parties excluded).
    pub extensions_rung: Vec<String>,
    /// The first person who answered: an extension, `external` (the outside
    /// party of an outgoing call), or null.
    pub answered_by: Option<String>,
    /// Who had the call at the end (after transfers).
    pub final_answered_by: Option<String>,
    /// First channel created.
    pub started_at: Timestamp,
    /// The human answer (never the PBX answering a queue or IVR).
    pub answered_at: Option<Timestamp>,
    /// Last party gone.
    pub ended_at: Timestamp,
    /// `ended_at − started_at`, seconds.
    #[serde(serialize_with = "ser_secs")]
    pub duration: f64,
    /// `ended_at − answered_at`, seconds (0 when unanswered).
    #[serde(serialize_with = "ser_secs")]
    pub billsec: f64,
    /// How the call ended.
    pub disposition: Disposition,
    /// Why the record was closed.
    pub end_reason: EndReason,
    /// Where the PBX stored the call's recording, when it says (asterCC
    /// push: `recordurl`, `recording_url`, `monitorfile`…); null for AMI.
    pub recording_url: Option<String>,
    /// True when some times are estimates (reconnect, maximum age).
    #[serde(default)]
    pub approximate: bool,
    /// Fields of a pushed event that have no place in the model (asterCC
    /// push: unknown fields and the agent number, by their pushed names),
    /// accumulated over the call, later values winning. Empty (and left
    /// out of the JSON) for AMI calls. Templates read them as
    /// `{{call.extra.NAME}}` (guard with `{{#if call.extra.NAME}}`: a
    /// missing name is an error in strict mode).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// What a source knows about a finished call apart from its times: the
/// input of [`CallRecord::new`], which owns the time arithmetic.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFacts {
    /// The call's session id.
    pub session_id: String,
    /// The PBX id (or push team).
    pub pbx: String,
    /// Direction.
    pub direction: Direction,
    /// The real caller's number.
    pub caller_number: Option<String>,
    /// The real caller's name.
    pub caller_name: Option<String>,
    /// The dialed number.
    pub dialed_number: Option<String>,
    /// The queue, if any.
    pub queue: Option<String>,
    /// Extensions offered the call, in order.
    pub extensions_rung: Vec<String>,
    /// The first person who answered.
    pub answered_by: Option<String>,
    /// Who had the call at the end.
    pub final_answered_by: Option<String>,
    /// How the call ended.
    pub disposition: Disposition,
    /// Why the record was closed.
    pub end_reason: EndReason,
    /// The recording's location, when the source says.
    pub recording_url: Option<String>,
    /// True when some times are estimates.
    pub approximate: bool,
    /// Pushed fields with no place in the model.
    pub extra: BTreeMap<String, String>,
}

/// Seconds from `start` to `end` and seconds talked (from `answered` to
/// `end`, 0 when unanswered), never negative: the one duration/billsec
/// arithmetic of records and hung-up legs.
pub fn duration_billsec(start: f64, answered: Option<f64>, end: f64) -> (f64, f64) {
    (
        (end - start).max(0.0),
        answered.map_or(0.0, |a| (end - a).max(0.0)),
    )
}

impl CallRecord {
    /// The record of a call that started at `started`, was answered by a
    /// person at `answered` and ended at `ended` (epoch seconds). The times
    /// are made consistent (`started ≤ answered ≤ ended`: a start after the
    /// end moves back to the end, an answer is clamped into the call) and
    /// `duration` and `billsec` derived from them.
    pub fn new(facts: CallFacts, started: f64, answered: Option<f64>, ended: f64) -> Self {
        let started = started.min(ended);
        let answered = answered.map(|a| a.clamp(started, ended));
        let (duration, billsec) = duration_billsec(started, answered, ended);
        let CallFacts {
            session_id,
            pbx,
            direction,
            caller_number,
            caller_name,
            dialed_number,
            queue,
            extensions_rung,
            answered_by,
            final_answered_by,
            disposition,
            end_reason,
            recording_url,
            approximate,
            extra,
        } = facts;
        Self {
            session_id,
            pbx,
            direction,
            caller_number,
            caller_name,
            dialed_number,
            queue,
            extensions_rung,
            answered_by,
            final_answered_by,
            started_at: Timestamp(started),
            answered_at: answered.map(Timestamp),
            ended_at: Timestamp(ended),
            duration,
            billsec,
            disposition,
            end_reason,
            recording_url,
            approximate,
            extra,
        }
    }
}

/// Everything the normalizer emits, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ModelEvent {
    /// A leg transition.
    #[serde(rename = "leg")]
    Leg(LegEvent),
    /// A call-scope `ringing`/`answered` transition.
    #[serde(rename = "call_state")]
    CallState(CallStateEvent),
    /// A finished call (the call-scope `hungup` transition).
    #[serde(rename = "call")]
    Call(CallRecord),
}

impl ModelEvent {
    /// The session id the event belongs to.
    pub fn session_id(&self) -> &str {
        match self {
            ModelEvent::Leg(l) => &l.session_id,
            ModelEvent::CallState(c) => &c.session_id,
            ModelEvent::Call(c) => &c.session_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_micros() {
        assert_eq!(
            Timestamp(1795374648.127205).to_rfc3339(),
            "2026-11-22T19:10:48.127205Z"
        );
    }

    fn facts() -> CallFacts {
        CallFacts {
            session_id: "1.0".into(),
            pbx: "main".into(),
            direction: Direction::Incoming,
            caller_number: None,
            caller_name: None,
            dialed_number: None,
            queue: None,
            extensions_rung: Vec::new(),
            answered_by: None,
            final_answered_by: None,
            disposition: Disposition::NoAnswer,
            end_reason: EndReason::Hangup,
            recording_url: None,
            approximate: false,
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn record_times_are_consistent() {
        let r = CallRecord::new(facts(), 10.0, Some(12.0), 15.5);
        assert_eq!((r.duration, r.billsec), (5.5, 3.5));
        assert_eq!(r.answered_at, Some(Timestamp(12.0)));
        let r = CallRecord::new(facts(), 10.0, None, 15.0);
        assert_eq!((r.duration, r.billsec), (5.0, 0.0));
        // An end before the start, an answer outside the call.
        let r = CallRecord::new(facts(), 20.0, Some(25.0), 15.0);
        assert_eq!(r.started_at, Timestamp(15.0));
        assert_eq!(r.answered_at, Some(Timestamp(15.0)));
        assert_eq!((r.duration, r.billsec), (0.0, 0.0));
        let r = CallRecord::new(facts(), 10.0, Some(5.0), 15.0);
        assert_eq!((r.duration, r.billsec), (5.0, 5.0));
    }

    #[test]
    fn record_json_uses_documented_names() {
        let r = CallRecord {
            session_id: "1.0".into(),
            pbx: "main".into(),
            direction: Direction::Incoming,
            caller_number: Some("5551234567".into()),
            caller_name: None,
            dialed_number: Some("2125550100".into()),
            queue: None,
            extensions_rung: vec!["1001".into()],
            answered_by: Some("1001".into()),
            final_answered_by: Some("1001".into()),
            started_at: Timestamp(10.0),
            answered_at: Some(Timestamp(12.0)),
            ended_at: Timestamp(15.0004),
            duration: 5.0004,
            billsec: 3.0,
            disposition: Disposition::NoAnswer,
            end_reason: EndReason::Hangup,
            recording_url: None,
            approximate: false,
            extra: BTreeMap::new(),
        };
        let v = serde_json::to_value(ModelEvent::Call(r)).unwrap();
        assert_eq!(v["type"], "call");
        assert_eq!(v["direction"], "incoming");
        assert_eq!(v["disposition"], "NO ANSWER");
        assert_eq!(v["duration"], 5.0);
        assert_eq!(v["end_reason"], "hangup");
        assert_eq!(v["recording_url"], serde_json::Value::Null);
        assert!(v.get("extra").is_none(), "empty extra is left out");
    }
}
