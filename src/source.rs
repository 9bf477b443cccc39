//! `SourceEvent`: the only type that crosses from a source (the AMI client,
//! the asterCC-style HTTP push endpoint) into the normalizer; and
//! `PresenceSourceEvent`, what the AMI client hands the presence tracker
//! (extension and device states, registration, hold) on its own bounded
//! channel, never through the normalizer's queue.
//!
//! Sources know their wire formats; the normalizer knows calls. Nothing else
//! travels between them.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::ami::AmiMessage;

/// Identifier of a PBX (from the config), carried by every event it produced.
pub type PbxId = Arc<str>;

/// Something a source observed.
///
/// Cloning a [`SourceEvent::Push`] does not clone its acknowledgement (a
/// oneshot sender cannot be shared): the clone has `ack: None`.
#[derive(Debug)]
pub enum SourceEvent {
    /// An unsolicited AMI event (never a response or a list item).
    Ami {
        /// Which PBX sent it.
        pbx: PbxId,
        /// Local receive time, epoch seconds (used when the event has no `Timestamp`).
        received_at: f64,
        /// The event.
        msg: AmiMessage,
    },
    /// The channels that were up right after a (re)login: the items of
    /// `CoreShowChannels` (Asterisk 12+) or `Status` (older), in order.
    AmiSnapshot {
        /// Which PBX.
        pbx: PbxId,
        /// When the snapshot was taken (local clock, epoch seconds).
        received_at: f64,
        /// The list items (`Event: CoreShowChannel` or `Event: Status`).
        channels: Vec<AmiMessage>,
    },
    /// An `Originate` action this AMI connection sent (click-to-call),
    /// delivered when it was written, before any event it causes. A passive
    /// listener only sees the broadcast `OriginateResponse`; the client knows
    /// what it asked for, and the normalizer uses it (the dialed number from
    /// the agent's first ring on, the outcome when the PBX says little).
    AmiOriginate {
        /// Which PBX.
        pbx: PbxId,
        /// When it was written (local clock, epoch seconds).
        at: f64,
        /// What was asked.
        originate: OriginateSent,
    },
    /// The AMI connection to this PBX was lost; calls stay open until the next
    /// snapshot (or the maximum call age) settles them.
    AmiDisconnected {
        /// Which PBX.
        pbx: PbxId,
        /// When the loss was noticed (local clock, epoch seconds).
        at: f64,
    },
    /// One event pushed over HTTP by a hosted dialer (asterCC style),
    /// authenticated and validated (see `http::push`).
    Push {
        /// The team (tenant) whose token authenticated the push: the `pbx`
        /// of the calls it produces.
        team: PbxId,
        /// Local receive time, epoch seconds (used when the event has no `eventTime`).
        received_at: f64,
        /// The event (boxed: it is much larger than the other variants).
        event: Box<PushEvent>,
        /// Answered by the normalizer task once the deliveries the event
        /// caused are committed to the outbox (`Err` when they could not
        /// be: the pusher should retry). `None`: nobody waits.
        ack: Option<PushAck>,
    },
}

impl Clone for SourceEvent {
    fn clone(&self) -> Self {
        match self {
            SourceEvent::Ami {
                pbx,
                received_at,
                msg,
            } => SourceEvent::Ami {
                pbx: pbx.clone(),
                received_at: *received_at,
                msg: msg.clone(),
            },
            SourceEvent::AmiSnapshot {
                pbx,
                received_at,
                channels,
            } => SourceEvent::AmiSnapshot {
                pbx: pbx.clone(),
                received_at: *received_at,
                channels: channels.clone(),
            },
            SourceEvent::AmiOriginate { pbx, at, originate } => SourceEvent::AmiOriginate {
                pbx: pbx.clone(),
                at: *at,
                originate: originate.clone(),
            },
            SourceEvent::AmiDisconnected { pbx, at } => SourceEvent::AmiDisconnected {
                pbx: pbx.clone(),
                at: *at,
            },
            SourceEvent::Push {
                team,
                received_at,
                event,
                ack: _,
            } => SourceEvent::Push {
                team: team.clone(),
                received_at: *received_at,
                event: event.clone(),
                ack: None,
            },
        }
    }
}

/// Extension-state input from an AMI connection, for the presence tracker
/// (`presence`), never for the normalizer. The AMI client sends these with
/// `try_send` on a channel of their own, so they never slow the call path.
#[derive(Debug, Clone)]
pub enum PresenceSourceEvent {
    /// An unsolicited `ExtensionStatus`, `DeviceStateChange`, `PeerStatus`,
    /// `ContactStatus`, `Hold` or `Unhold` (the last four also reach the
    /// normalizer as ordinary events).
    Ami {
        /// Which PBX sent it.
        pbx: PbxId,
        /// Local receive time, epoch seconds (used when the event has no `Timestamp`).
        received_at: f64,
        /// The event.
        msg: AmiMessage,
    },
    /// The answer to a state action the client sent after (re)login:
    /// `ExtensionStateList` (items `Event: ExtensionStatus`), `ExtensionState`
    /// (a single response), `DeviceStateList`, `SIPpeers` (`PeerEntry`),
    /// `PJSIPShowEndpoints` (`EndpointList`).
    AmiStateList {
        /// Which PBX.
        pbx: PbxId,
        /// When the answer was complete (local clock, epoch seconds).
        received_at: f64,
        /// The action that was answered, when known (`None` in a replay of
        /// someone else's capture).
        action: Option<String>,
        /// The `Response:` packet.
        response: AmiMessage,
        /// The list items, in order (empty for a single response).
        items: Vec<AmiMessage>,
    },
    /// The AMI connection to this PBX was lost (states are as last known
    /// until the next state lists).
    AmiDisconnected {
        /// Which PBX.
        pbx: PbxId,
        /// When the loss was noticed (local clock, epoch seconds).
        at: f64,
    },
}

impl PresenceSourceEvent {
    /// The PBX the event is about.
    pub fn pbx(&self) -> &PbxId {
        match self {
            PresenceSourceEvent::Ami { pbx, .. }
            | PresenceSourceEvent::AmiStateList { pbx, .. }
            | PresenceSourceEvent::AmiDisconnected { pbx, .. } => pbx,
        }
    }
}

/// The call-relevant fields of an `Originate` action that was sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OriginateSent {
    /// The ActionID it was sent with (the `OriginateResponse` carries it).
    pub action_id: String,
    /// `Channel`: the dial string of the first leg (`SIP/1001`,
    /// `PJSIP/1001`, `Local/1001@from-internal`).
    pub channel: String,
    /// `Context`, when the first leg then runs the dialplan.
    pub context: Option<String>,
    /// `Exten`: the number the first leg is then connected to.
    pub exten: Option<String>,
    /// `ChannelId` (Asterisk 13+): the Uniqueid the first leg will have.
    pub channel_id: Option<String>,
}

impl OriginateSent {
    /// The call fields of an `Originate` (`None` for any other action).
    pub fn from_action(action: &crate::ami::Action, action_id: &str) -> Option<Self> {
        if !action.name().eq_ignore_ascii_case("Originate") {
            return None;
        }
        let get = |k: &str| {
            action
                .get(k)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        Some(Self {
            action_id: action_id.to_string(),
            channel: get("Channel")?,
            context: get("Context"),
            exten: get("Exten"),
            channel_id: get("ChannelId"),
        })
    }
}

/// What the normalizer made of a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushReceipt {
    /// The same event (session, event, source, leg, `eventTime`) was
    /// already applied: nothing happened this time.
    pub duplicate: bool,
    /// The team is at `calls.max_live` and this push would open a new
    /// call: nothing happened, the pusher should retry later.
    pub full: bool,
}

/// How the normalizer task answers a push: the receipt once the event's
/// deliveries are durable, or why they are not.
pub type PushAck = oneshot::Sender<Result<PushReceipt, String>>;

/// The kind of a pushed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushKind {
    /// `ringing`: the party named by `source` is being offered the call.
    Ringing,
    /// `answer` / `answered`: that party answered.
    Answer,
    /// `hangup`: that party hung up.
    Hangup,
    /// Anything else, kept (lower-cased): it causes no transition, but its
    /// fields (queue, recording, unknown fields) join the call.
    Other(String),
}

/// Which party of the call a pushed event is about (`source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PushSide {
    /// `CALLER`: the party that placed the call.
    Caller,
    /// `CALLEE`: the party that was called.
    Callee,
}

/// A pushed event, validated: the fields callhook understands, and every
/// other field as pushed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PushEvent {
    /// `sessionid`: the call (required, never empty).
    pub session_id: String,
    /// `event`, parsed.
    pub kind: PushKind,
    /// `event` as pushed, lower-cased (part of the duplicate key).
    pub event: String,
    /// `source`: which party the event is about, when given.
    pub side: Option<PushSide>,
    /// `calltype`, lower-cased (`dialin`, `dialout`, …), when given.
    pub call_type: Option<String>,
    /// `activenum`: the other party's number (the customer on `dialin` and
    /// `dialout` calls).
    pub active_num: Option<String>,
    /// `eventTime`, parsed to epoch seconds, when given.
    pub event_time: Option<f64>,
    /// `eventTime` as pushed (part of the duplicate key).
    pub event_time_raw: Option<String>,
    /// The agent's extension / phone (`extension`, `exten`, `agentphone`…).
    pub extension: Option<String>,
    /// The agent's number / id (`agent`, `agentnum`, `workno`…); also kept in `extra`.
    pub agent: Option<String>,
    /// The team / tenant as pushed (`teamid`, `tenant`…); also kept in
    /// `extra`. The authenticated team is [`SourceEvent::Push::team`].
    pub tenant: Option<String>,
    /// The queue (`queue`, `queuename`).
    pub queue: Option<String>,
    /// The caller's name (`callername`, `cidname`).
    pub caller_name: Option<String>,
    /// The number dialed by an incoming caller (`did`, `dnis`).
    pub did: Option<String>,
    /// Where the recording is (`recordurl`, `recording_url`, `monitorfile`…).
    pub recording_url: Option<String>,
    /// The dial outcome (`dialstatus`: `ANSWER`, `BUSY`, `NOANSWER`,
    /// `CHANUNAVAIL`, `CONGESTION`, `CANCEL`…), upper-cased; also kept in `extra`.
    pub dial_status: Option<String>,
    /// Seconds talked (`billsec`), when given as a number; also kept in `extra`.
    pub billsec: Option<f64>,
    /// Every field without a model field of its own, by its pushed name
    /// (unknown fields, `calltype`, the agent, the tenant, `dialstatus`…).
    pub extra: BTreeMap<String, String>,
}

impl Default for PushKind {
    fn default() -> Self {
        PushKind::Other(String::new())
    }
}

/// The current wall-clock time as epoch seconds.
pub fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ami::Action;

    #[test]
    fn originate_fields_of_an_action() {
        let a = Action::new("Originate")
            .field("Channel", "PJSIP/1001")
            .field("Context", "from-internal")
            .field("Exten", "02122853348")
            .field("ChannelId", "c2c-1")
            .field("Async", "true");
        let o = OriginateSent::from_action(&a, "main-1-2").unwrap();
        assert_eq!(o.action_id, "main-1-2");
        assert_eq!(o.channel, "PJSIP/1001");
        assert_eq!(o.exten.as_deref(), Some("02122853348"));
        assert_eq!(o.context.as_deref(), Some("from-internal"));
        assert_eq!(o.channel_id.as_deref(), Some("c2c-1"));
        let no_exten = Action::new("originate")
            .field("Channel", "SIP/1001")
            .field("Application", "Playback")
            .field("Exten", " ");
        let o = OriginateSent::from_action(&no_exten, "x").unwrap();
        assert_eq!((o.exten, o.channel_id), (None, None));
        assert_eq!(
            OriginateSent::from_action(&Action::new("Originate"), "x"),
            None,
            "no Channel: not a call"
        );
        assert_eq!(
            OriginateSent::from_action(&Action::new("Ping").field("Channel", "SIP/1"), "x"),
            None
        );
    }
}
