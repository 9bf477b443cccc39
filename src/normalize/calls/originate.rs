//! Click-to-call: calls the PBX places itself (`Originate`), and what is
//! known about them when their first leg — the agent's phone — fails.
//!
//! An Originate rings the agent's phone first (its channel is the call's
//! first channel; 12+ `DialBegin` has no caller) and, once it answers, runs
//! the dialplan at `Exten` (the customer's number). The call is `outgoing`
//! from that extension, `dialed_number` is the `Exten`.
//!
//! The outcome is the `OriginateResponse` event, broadcast to every AMI
//! session with its ActionID: `Success` once the agent answered (whatever
//! the outside leg then does), `Failure` when the agent's leg failed —
//! busy, no answer, unreachable or unregistered. Its `Reason` is only the
//! last control frame seen and differs between channel drivers, so the
//! disposition comes from what the call did (dial status, hangup cause)
//! and `Reason` is a hint only when nothing else says.
//!
//! - The failed agent leg had a channel (busy, no answer, silent phone): the
//!   response names it by `Uniqueid` when the Originate gave a `ChannelId`;
//!   without one (`Uniqueid: <unknown>`), it is the only live, unanswered,
//!   originated first leg of the phone in the response's `Channel` (dial
//!   string), if exactly one exists. Its call carries the `Exten`.
//! - No channel at all (unregistered or unreachable phone: chan_sip and
//!   chan_pjsip refuse to create it): the response alone makes the record —
//!   session id the `Uniqueid` (the `ChannelId`), or `originate-ACTIONID`;
//!   no legs, nobody rang, disposition from `Reason` (5 busy, 3 no answer,
//!   otherwise `FAILED`).
//!
//! When callhook itself sent the Originate ([`SourceEvent::AmiOriginate`]
//! from the AMI client), it knows the `Exten` and `ChannelId` before the PBX
//! says anything: the agent's legs carry the dialed number from the first
//! ring on, and the outcome is tied to the call even if the response were
//! to come after the agent's hangup or lacked the `Exten`.
//!
//! [`SourceEvent::AmiOriginate`]: crate::source::SourceEvent::AmiOriginate

use compact_str::ToCompactString;
use std::collections::VecDeque;

use super::{owned, owned_opt, PbxCalls, Str};
use crate::metrics::metrics;
use crate::model::{CallFacts, CallRecord, Direction, Disposition, EndReason, ModelEvent};
use crate::normalize::canonical::OriginateOutcome;
use crate::normalize::channel::Party;
use crate::normalize::NormalizerConfig;
use crate::source::OriginateSent;

use super::call::Call;

/// Originates sent and not yet answered by an `OriginateResponse` are
/// forgotten after this long (a first leg rings for its `Timeout`, tens of
/// seconds at most)…
const ORIGINATE_WAIT: f64 = 600.0;
/// …or when this many are waiting.
const MAX_ORIGINATES: usize = 10_000;

/// An `Originate` this connection sent, waiting for its outcome.
#[derive(Debug, Clone)]
pub(super) struct PendingOriginate {
    sent: OriginateSent,
    at: f64,
    /// The first leg it was matched with (without a `ChannelId`).
    leg: Option<Str>,
}

/// Hangup causes of a first leg that could not be reached at all.
fn unreachable_cause(cause: u16) -> bool {
    matches!(cause, 1..=3 | 20 | 27 | 28 | 34 | 38 | 41 | 42 | 47)
}

impl PbxCalls {
    /// The AMI client sent an `Originate`.
    pub fn originate_sent(&mut self, cfg: &NormalizerConfig, o: &OriginateSent, t: f64) {
        self.advance_originates(t);
        while self.originates.len() >= MAX_ORIGINATES {
            self.originates.pop_front();
        }
        self.originates.push_back(PendingOriginate {
            sent: o.clone(),
            at: t,
            leg: None,
        });
        // (Its first leg may exist already if the events overtook us.)
        if let Some(uid) = o.channel_id.clone() {
            self.originated_channel(cfg, &uid);
        }
    }

    /// Forgets originates that waited too long.
    pub(super) fn advance_originates(&mut self, now: f64) {
        while self
            .originates
            .front()
            .is_some_and(|p| p.at + ORIGINATE_WAIT < now)
        {
            self.originates.pop_front();
        }
    }

    /// A channel was created: is it the first leg of an Originate we sent?
    pub(super) fn originated_channel(&mut self, _cfg: &NormalizerConfig, uid: &str) {
        if self.originates.is_empty() {
            return;
        }
        let Some(exten) = self
            .originates
            .iter()
            .find(|p| p.sent.channel_id.as_deref() == Some(uid))
            .map(|p| p.sent.exten.as_deref().map(Str::from))
        else {
            return;
        };
        let Some(session) = self.chans.get(uid).map(|c| c.call.clone()) else {
            return;
        };
        if let Some(call) = self.calls.get_mut(&session) {
            if call.root == uid {
                call.originated = true;
            }
            if call.originate_exten.is_none() {
                call.originate_exten = exten;
            }
        }
    }

    /// Channel `uid` is the first leg of a call the PBX placed itself (an
    /// Originate's `DialBegin` without caller, or a ≤ 11 ringing channel
    /// nothing dialed): without a `ChannelId`, it is the one Originate we
    /// sent and have not matched yet to that phone, if exactly one exists.
    pub(super) fn claim_originate(&mut self, cfg: &NormalizerConfig, uid: &str) {
        if self.originates.is_empty() {
            return;
        }
        let Some(ext) = self
            .chans
            .get(uid)
            .and_then(|c| c.party_at_create.extension().map(Str::from))
        else {
            return;
        };
        let mut mine = self.originates.iter().enumerate().filter(|(_, p)| {
            p.leg.is_none()
                && p.sent.channel_id.is_none()
                && extension_of_dial_string(cfg, &p.sent.channel).as_deref() == Some(&ext)
        });
        let (Some((i, _)), None) = (mine.next(), mine.next()) else {
            return;
        };
        let exten = self.originates[i].sent.exten.as_deref().map(Str::from);
        self.originates[i].leg = Some(uid.to_compact_string());
        let Some(session) = self.chans.get(uid).map(|c| c.call.clone()) else {
            return;
        };
        if let Some(call) = self.calls.get_mut(&session) {
            if call.originate_exten.is_none() {
                call.originate_exten = exten;
            }
        }
    }

    /// An `OriginateResponse`.
    pub(super) fn originate_response(
        &mut self,
        cfg: &NormalizerConfig,
        o: &OriginateOutcome<'_>,
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        // Ours? Then what we asked fills what the event leaves out.
        let sent = o.action_id.and_then(|id| {
            let i = self
                .originates
                .iter()
                .position(|p| p.sent.action_id == id)?;
            self.originates.remove(i)
        });
        let (sent, leg) = match sent {
            Some(p) => (Some(p.sent), p.leg),
            None => (None, None),
        };
        let uid = o
            .uid
            .map(Str::from)
            .or_else(|| {
                sent.as_ref()
                    .and_then(|s| s.channel_id.as_deref().map(Str::from))
            })
            .or(leg);
        let exten = o.exten.map(Str::from).or_else(|| {
            sent.as_ref()
                .and_then(|s| s.exten.as_deref().map(Str::from))
        });
        let channel = o
            .channel
            .map(Str::from)
            .or_else(|| sent.as_ref().map(|s| Str::from(s.channel.as_str())));
        let known = uid
            .clone()
            .filter(|u| self.chans.contains_key(u))
            .or_else(|| {
                (!o.success)
                    .then(|| {
                        channel
                            .as_deref()
                            .and_then(|c| self.failed_first_leg(cfg, c))
                    })
                    .flatten()
            });
        if let Some(u) = known {
            let session = self.chans.get(&u).map(|c| c.call.clone());
            let is_root = session
                .as_ref()
                .and_then(|s| self.calls.get(s))
                .is_some_and(|c| c.root == u);
            if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
                if is_root {
                    call.originated = true;
                }
                if call.originate_exten.is_none() {
                    call.originate_exten = exten;
                }
                if !o.success {
                    call.originate_reason = o.reason.or(Some(0));
                }
            }
            return;
        }
        if o.success {
            return;
        }
        // The first leg failed before it had a channel.
        let session = match (uid, o.action_id) {
            (Some(u), _) => u,
            (None, Some(id)) => compact_str::format_compact!("originate-{id}"),
            (None, None) => compact_str::format_compact!("originate-{t:.6}"),
        };
        if self.tombstones.contains_key(&session) || self.calls.contains_key(&session) {
            Self::ignored("late");
            return;
        }
        let caller = channel
            .as_deref()
            .and_then(|c| extension_of_dial_string(cfg, c));
        let disposition = match o.reason {
            Some(5) => Disposition::Busy,
            Some(3) => Disposition::NoAnswer,
            _ => Disposition::Failed,
        };
        let rec = CallRecord::new(
            CallFacts {
                session_id: owned(&session),
                pbx: self.pbx.to_string(),
                direction: Direction::Outgoing,
                caller_number: owned_opt(&caller),
                caller_name: None,
                dialed_number: owned_opt(&exten),
                queue: None,
                extensions_rung: Vec::new(),
                answered_by: None,
                final_answered_by: None,
                disposition,
                end_reason: EndReason::Hangup,
                recording_url: None,
                approximate: false,
                extra: Default::default(),
            },
            t,
            None,
            t,
        );
        metrics()
            .calls_finished
            .with_label_values(&[rec.direction.as_str(), rec.disposition.as_str()])
            .inc();
        out.push(ModelEvent::Call(rec));
        self.tombstone(session, t);
    }

    /// Without a Uniqueid: the only live, unanswered, originated first leg
    /// of the phone `dial_string` names that no response claimed yet.
    fn failed_first_leg(&self, cfg: &NormalizerConfig, dial_string: &str) -> Option<Str> {
        let ext = extension_of_dial_string(cfg, dial_string)?;
        let mut found = self.calls.values().filter(|c| {
            c.originate_exten.is_none()
                && c.originate_reason.is_none()
                && self.is_originated(c)
                && self.chans.get(&c.root).is_some_and(|r| {
                    r.live() && r.up_at.is_none() && r.party_at_create.extension() == Some(&ext)
                })
        });
        match (found.next(), found.next()) {
            (Some(c), None) => Some(c.root.clone()),
            (Some(_), Some(_)) => {
                Self::ignored("ambiguous_originate");
                None
            }
            _ => None,
        }
    }

    /// How an originated call whose first leg never answered ended, when
    /// its channel says (`None`: nothing decisive).
    pub(super) fn first_leg_outcome(&self, call: &Call) -> Option<Disposition> {
        if !self.is_originated(call) {
            return None;
        }
        let root = self.chans.get(&call.root)?;
        if root.up_at.is_some() {
            return None;
        }
        match root.cause {
            Some(17) => return Some(Disposition::Busy),
            Some(c) if unreachable_cause(c) => return Some(Disposition::Failed),
            _ => {}
        }
        match call.originate_reason? {
            5 => Some(Disposition::Busy),
            8 => Some(Disposition::Failed),
            _ => None,
        }
    }
}

/// The extension an Originate's `Channel` dials (`SIP/1001`, `PJSIP/1001`,
/// `Local/1001@from-internal`), if it is one.
fn extension_of_dial_string(cfg: &NormalizerConfig, dial_string: &str) -> Option<Str> {
    match cfg.classifier.classify(dial_string, None) {
        Party::Extension(e) => Some(e),
        Party::Local(e) if cfg.classifier.is_extension_number(&e) => Some(e),
        _ => None,
    }
}

/// The pending originates of one PBX.
pub(super) type Originates = VecDeque<PendingOriginate>;
