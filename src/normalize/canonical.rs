//! Every AMI generation's event spellings → one canonical event.
//!
//! Asterisk 12+ describes channels with a standard header block (and a
//! `Dest*` copy for the dialed side); 1.6–11 have a short header set per
//! event (`Dial` + `SubEvent`, `Bridge` + `Bridgestate`, `Join`/`Leave`,
//! `UniqueID` spelled with a capital ID, member channels given by *name* in
//! `AgentCalled`); 1.4 says `State` and `CallerID` and `Link`/`Unlink`.
//! [`canonicalize`] maps all of them to [`Canon`], so the call state machine
//! handles one shape only. Events callhook has no use for map to `None`.

use super::fields::{Fields, Key as K};
use crate::ami::AmiMessage;

/// Channel state, from `ChannelState` (number), `ChannelStateDesc` or 1.4's `State`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChanState {
    /// 0 Down (and the other pre-call states).
    Down,
    /// 4 Ring: the caller side, running dialplan.
    Ring,
    /// 5 Ringing: the callee side is being alerted.
    Ringing,
    /// 6 Up.
    Up,
    /// 7 Busy.
    Busy,
}

impl ChanState {
    fn parse(num: Option<&str>, desc: Option<&str>) -> Option<Self> {
        if let Some(n) = num.and_then(|n| n.trim().parse::<u8>().ok()) {
            return Some(match n {
                4 => ChanState::Ring,
                5 => ChanState::Ringing,
                6 => ChanState::Up,
                7 => ChanState::Busy,
                _ => ChanState::Down,
            });
        }
        let d = desc?.trim();
        Some(match d.to_ascii_lowercase().as_str() {
            "ring" => ChanState::Ring,
            "ringing" => ChanState::Ringing,
            "up" => ChanState::Up,
            "busy" => ChanState::Busy,
            _ => ChanState::Down,
        })
    }
}

/// The description of one channel carried by an event (possibly partial).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChanInfo<'a> {
    /// Uniqueid.
    pub uid: Option<&'a str>,
    /// Channel name.
    pub name: Option<&'a str>,
    /// Linkedid (Asterisk 12+ only).
    pub linkedid: Option<&'a str>,
    /// State, when the event says.
    pub state: Option<ChanState>,
    /// CallerIDNum.
    pub caller_num: Option<&'a str>,
    /// CallerIDName.
    pub caller_name: Option<&'a str>,
    /// ConnectedLineNum.
    pub connected_num: Option<&'a str>,
    /// ConnectedLineName.
    pub connected_name: Option<&'a str>,
    /// Context.
    pub context: Option<&'a str>,
    /// Exten / Extension.
    pub exten: Option<&'a str>,
}

/// A reference to a channel that may be given by uniqueid, name, or both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChanRef<'a> {
    /// Uniqueid, when given.
    pub uid: Option<&'a str>,
    /// Name, when given.
    pub name: Option<&'a str>,
}

/// One canonical event.
#[derive(Debug, Clone, PartialEq)]
pub enum Canon<'a> {
    /// A channel was created.
    NewChannel(ChanInfo<'a>),
    /// A channel changed state.
    NewState(ChanInfo<'a>),
    /// A channel's own caller id changed.
    CallerId(ChanInfo<'a>),
    /// A channel's connected line changed.
    ConnectedLine(ChanInfo<'a>),
    /// A channel runs a new dialplan step (dialplan exten known).
    Exten(ChanInfo<'a>),
    /// Any other event describing a channel (bridge enter, queue join, …):
    /// keeps what it says about the channel up to date.
    Touch(ChanInfo<'a>),
    /// A dial attempt started. `caller` is `None` for Originate's first leg.
    DialBegin {
        /// The dialing channel.
        caller: Option<ChanInfo<'a>>,
        /// The dialed channel.
        dest: ChanInfo<'a>,
        /// `DialString`/`Dialstring`.
        dialstring: Option<&'a str>,
    },
    /// A dial attempt ended (12+: per destination; ≤ 11: per Dial(), no destination).
    DialEnd {
        /// The dialing channel.
        caller: ChanRef<'a>,
        /// The destination, when the event names one.
        dest: Option<ChanRef<'a>>,
        /// `ANSWER`, `BUSY`, `NOANSWER`, `CANCEL`, `CHANUNAVAIL`, `CONGESTION`, …
        status: &'a str,
    },
    /// Two channels are connected (≤ 11 Bridge Link, LocalBridge, 1.4 Link,
    /// Status' bridged peer): same call.
    Tie(ChanRef<'a>, ChanRef<'a>),
    /// A caller joined a queue.
    QueueJoin {
        /// The caller channel.
        chan: ChanInfo<'a>,
        /// Queue name.
        queue: &'a str,
    },
    /// A caller left a queue.
    QueueLeave {
        /// The caller channel.
        chan: ChanRef<'a>,
        /// Queue name.
        queue: Option<&'a str>,
    },
    /// A caller gave up waiting in a queue.
    QueueAbandon {
        /// The caller channel.
        chan: ChanRef<'a>,
        /// Queue name.
        queue: Option<&'a str>,
    },
    /// A queue offered the call to a member.
    AgentCalled {
        /// The caller channel.
        caller: ChanRef<'a>,
        /// The member channel (by uniqueid on 12+, by name on ≤ 11).
        dest: ChanRef<'a>,
        /// Member interface (`SIP/1002`, `Local/1002@from-queue/n`).
        interface: Option<&'a str>,
        /// Queue name.
        queue: Option<&'a str>,
    },
    /// A queue member answered.
    AgentConnect {
        /// The caller channel.
        caller: ChanRef<'a>,
        /// The member channel.
        dest: ChanRef<'a>,
        /// Queue name.
        queue: Option<&'a str>,
    },
    /// A phone picked up a call ringing elsewhere (`Pickup`: 12+ with the
    /// picking channel's block and a `Target*` block; 1.8–11 with the two
    /// channel names only).
    Pickup {
        /// The channel of the phone that dialed the pickup code.
        picker: ChanInfo<'a>,
        /// The ringing channel it took the call from.
        target: ChanRef<'a>,
    },
    /// ≤ 11: the clone channel's device went into the original channel
    /// (which keeps its Uniqueid); the clone becomes a zombie.
    Masquerade {
        /// `Clone`.
        clone: ChanRef<'a>,
        /// `Original`.
        original: ChanRef<'a>,
    },
    /// A channel was renamed (≤ 11 masquerades).
    Rename {
        /// Uniqueid of the renamed channel, when given.
        uid: Option<&'a str>,
        /// Old name.
        old: Option<&'a str>,
        /// New name.
        new: &'a str,
    },
    /// A channel hung up.
    Hangup {
        /// The channel.
        chan: ChanInfo<'a>,
        /// Q.850 cause.
        cause: Option<u16>,
    },
    /// An Originate action's outcome (broadcast to every session).
    OriginateResponse(OriginateOutcome<'a>),
}

/// What an `OriginateResponse` says.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OriginateOutcome<'a> {
    /// The ActionID of the Originate (another session's, possibly).
    pub action_id: Option<&'a str>,
    /// The originated channel's uniqueid (on a failure: the `ChannelId`
    /// that was asked for, or none).
    pub uid: Option<&'a str>,
    /// The channel name, or on a failure the dial string asked for.
    pub channel: Option<&'a str>,
    /// The extension the Originate targeted.
    pub exten: Option<&'a str>,
    /// `Success` / `Failure`.
    pub success: bool,
    /// The last control frame the originate saw (0 none, 1 hangup,
    /// 3 ringing, 4 answered, 5 busy, 8 congestion): channel drivers
    /// differ, so only a hint.
    pub reason: Option<u8>,
}

/// Header names of one channel block (plain or `Dest`-prefixed).
struct Keys {
    uid: K,
    channel: K,
    linkedid: K,
    state: K,
    state_desc: K,
    state14: K,
    cid_num: K,
    cid14: K,
    cid_name: K,
    con_num: K,
    con_name: K,
    context: K,
    exten: K,
    extension: K,
}

const PLAIN: Keys = Keys {
    uid: K::Uniqueid,
    channel: K::Channel,
    linkedid: K::Linkedid,
    state: K::ChannelState,
    state_desc: K::ChannelStateDesc,
    state14: K::State,
    cid_num: K::CallerIdNum,
    cid14: K::CallerId,
    cid_name: K::CallerIdName,
    con_num: K::ConnectedLineNum,
    con_name: K::ConnectedLineName,
    context: K::Context,
    exten: K::Exten,
    extension: K::Extension,
};

const DEST: Keys = Keys {
    uid: K::DestUniqueid,
    channel: K::DestChannel,
    linkedid: K::DestLinkedid,
    state: K::DestChannelState,
    state_desc: K::DestChannelStateDesc,
    state14: K::DestState,
    cid_num: K::DestCallerIdNum,
    cid14: K::DestCallerId,
    cid_name: K::DestCallerIdName,
    con_num: K::DestConnectedLineNum,
    con_name: K::DestConnectedLineName,
    context: K::DestContext,
    exten: K::DestExten,
    extension: K::DestExtension,
};

/// Reads a channel block described by `k`.
fn chan_info<'a>(m: &Fields<'a>, k: &Keys) -> ChanInfo<'a> {
    ChanInfo {
        uid: m.get(k.uid),
        name: m.get(k.channel),
        linkedid: m.get(k.linkedid),
        state: ChanState::parse(
            m.get(k.state),
            m.get(k.state_desc).or_else(|| m.get(k.state14)),
        ),
        caller_num: m.get(k.cid_num).or_else(|| m.get(k.cid14)),
        caller_name: m.get(k.cid_name),
        connected_num: m.get(k.con_num),
        connected_name: m.get(k.con_name),
        context: m.get(k.context),
        exten: m.get(k.exten).or_else(|| m.get(k.extension)),
    }
}

fn chan_ref<'a>(uid: Option<&'a str>, name: Option<&'a str>) -> ChanRef<'a> {
    ChanRef { uid, name }
}

/// Maps one AMI event (any generation) to its canonical form.
pub fn canonicalize(msg: &AmiMessage) -> Option<Canon<'_>> {
    let event = msg.event()?;
    // Lower-cased on the stack: every event name callhook knows is short.
    let mut buf = [0u8; 32];
    let owned;
    let ev = match buf.get_mut(..event.len()) {
        Some(b) => {
            b.copy_from_slice(event.as_bytes());
            b.make_ascii_lowercase();
            std::str::from_utf8(b).unwrap_or_default()
        }
        None => {
            owned = event.to_ascii_lowercase();
            owned.as_str()
        }
    };
    // The headers, read in one pass when the first is asked for (never
    // for an event callhook has no use for).
    let m = &Fields::new(msg);
    Some(match ev {
        "newchannel" => Canon::NewChannel(chan_info(m, &PLAIN)),
        "newstate" => Canon::NewState(chan_info(m, &PLAIN)),
        "newcallerid" => Canon::CallerId(chan_info(m, &PLAIN)),
        "newconnectedline" => Canon::ConnectedLine(chan_info(m, &PLAIN)),
        "newexten" => Canon::Exten(chan_info(m, &PLAIN)),
        "dialbegin" => Canon::DialBegin {
            caller: m.get(K::Channel).map(|_| chan_info(m, &PLAIN)),
            dest: chan_info(m, &DEST),
            dialstring: m.get(K::DialString),
        },
        "dialend" => Canon::DialEnd {
            caller: chan_ref(m.get(K::Uniqueid), m.get(K::Channel)),
            dest: Some(chan_ref(m.get(K::DestUniqueid), m.get(K::DestChannel))),
            status: m.get(K::DialStatus).unwrap_or(""),
        },
        "dial" => {
            // 1.6–11: SubEvent Begin/End; 1.4: no SubEvent (always a begin).
            let sub = m.get(K::SubEvent).unwrap_or("Begin");
            if sub.eq_ignore_ascii_case("End") {
                Canon::DialEnd {
                    caller: chan_ref(m.get(K::Uniqueid), m.get(K::Channel)),
                    dest: None,
                    status: m.get(K::DialStatus).unwrap_or(""),
                }
            } else {
                let caller = ChanInfo {
                    uid: m.get(K::Uniqueid).or_else(|| m.get(K::SrcUniqueId)),
                    name: m.get(K::Channel).or_else(|| m.get(K::Source)),
                    caller_num: m.get(K::CallerIdNum).or_else(|| m.get(K::CallerId)),
                    caller_name: m.get(K::CallerIdName),
                    connected_num: m.get(K::ConnectedLineNum),
                    connected_name: m.get(K::ConnectedLineName),
                    ..ChanInfo::default()
                };
                let dest = ChanInfo {
                    uid: m.get(K::DestUniqueid),
                    name: m.get(K::Destination),
                    ..ChanInfo::default()
                };
                Canon::DialBegin {
                    caller: Some(caller),
                    dest,
                    dialstring: m.get(K::DialString),
                }
            }
        }
        "bridge" | "link" => {
            let state = m.get(K::Bridgestate).unwrap_or("Link");
            if ev == "bridge" && !state.eq_ignore_ascii_case("Link") {
                return None;
            }
            Canon::Tie(
                chan_ref(m.get(K::Uniqueid1), m.get(K::Channel1)),
                chan_ref(m.get(K::Uniqueid2), m.get(K::Channel2)),
            )
        }
        "localbridge" => {
            // 12+: LocalOne*/LocalTwo* blocks (already share a Linkedid);
            // ≤ 11: Channel1/2, Uniqueid1/2.
            let a = chan_ref(
                m.get(K::Uniqueid1).or_else(|| m.get(K::LocalOneUniqueid)),
                m.get(K::Channel1).or_else(|| m.get(K::LocalOneChannel)),
            );
            let b = chan_ref(
                m.get(K::Uniqueid2).or_else(|| m.get(K::LocalTwoUniqueid)),
                m.get(K::Channel2).or_else(|| m.get(K::LocalTwoChannel)),
            );
            Canon::Tie(a, b)
        }
        "masquerade" => Canon::Masquerade {
            clone: chan_ref(None, m.get(K::Clone)),
            original: chan_ref(None, m.get(K::Original)),
        },
        "pickup" => Canon::Pickup {
            picker: chan_info(m, &PLAIN),
            target: chan_ref(m.get(K::TargetUniqueid), m.get(K::TargetChannel)),
        },
        "rename" => Canon::Rename {
            uid: m.get(K::Uniqueid),
            old: m.get(K::Channel).or_else(|| m.get(K::Oldname)),
            new: m.get(K::Newname)?,
        },
        "queuecallerjoin" | "join" => Canon::QueueJoin {
            chan: chan_info(m, &PLAIN),
            queue: m.get(K::Queue)?,
        },
        "queuecallerleave" | "leave" => Canon::QueueLeave {
            chan: chan_ref(m.get(K::Uniqueid), m.get(K::Channel)),
            queue: m.get(K::Queue),
        },
        "queuecallerabandon" => Canon::QueueAbandon {
            chan: chan_ref(m.get(K::Uniqueid), m.get(K::Channel)),
            queue: m.get(K::Queue),
        },
        "agentcalled" => {
            if m.has(K::DestUniqueid) || m.has(K::DestChannel) {
                Canon::AgentCalled {
                    caller: chan_ref(m.get(K::Uniqueid), m.get(K::Channel)),
                    dest: chan_ref(m.get(K::DestUniqueid), m.get(K::DestChannel)),
                    interface: m.get(K::Interface),
                    queue: m.get(K::Queue),
                }
            } else {
                // ≤ 11: Uniqueid = caller, ChannelCalling = caller name,
                // DestinationChannel = member channel name, AgentCalled = interface.
                Canon::AgentCalled {
                    caller: chan_ref(m.get(K::Uniqueid), m.get(K::ChannelCalling)),
                    dest: chan_ref(None, m.get(K::DestinationChannel)),
                    interface: m.get(K::AgentCalled),
                    queue: m.get(K::Queue),
                }
            }
        }
        "agentconnect" => {
            if m.has(K::DestUniqueid) || m.has(K::DestChannel) {
                Canon::AgentConnect {
                    caller: chan_ref(m.get(K::Uniqueid), m.get(K::Channel)),
                    dest: chan_ref(m.get(K::DestUniqueid), m.get(K::DestChannel)),
                    queue: m.get(K::Queue),
                }
            } else {
                // ≤ 11: Channel = MEMBER channel, BridgedChannel = member's uniqueid.
                Canon::AgentConnect {
                    caller: chan_ref(m.get(K::Uniqueid), None),
                    dest: chan_ref(m.get(K::BridgedChannel), m.get(K::Channel)),
                    queue: m.get(K::Queue),
                }
            }
        }
        "hangup" => Canon::Hangup {
            chan: chan_info(m, &PLAIN),
            cause: m.get(K::Cause).and_then(|c| c.trim().parse().ok()),
        },
        "originateresponse" => Canon::OriginateResponse(OriginateOutcome {
            action_id: m.get(K::ActionId),
            uid: m
                .get(K::Uniqueid)
                .filter(|u| !u.trim().is_empty() && *u != "<null>"),
            channel: m.get(K::Channel),
            exten: m.get(K::Exten).filter(|e| !e.trim().is_empty()),
            success: m
                .get(K::Response)
                .is_some_and(|r| r.eq_ignore_ascii_case("Success")),
            reason: m.get(K::Reason).and_then(|r| r.trim().parse().ok()),
        }),
        "bridgeenter" | "bridgeleave" | "musiconholdstart" | "musiconholdstop"
        | "hanguprequest" | "softhanguprequest" | "agentcomplete" | "agentringnoanswer"
        | "dialstate" | "blindtransfer" | "attendedtransfer" | "newaccountcode" => {
            // These describe a channel in the standard block on 12+; use them
            // to keep channel facts (and a Linkedid change) current.
            let info = chan_info(m, &PLAIN);
            info.uid?;
            Canon::Touch(info)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(pairs: &[(&str, &str)]) -> AmiMessage {
        AmiMessage::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn dial_begin_11_and_20_map_to_the_same_shape() {
        let m11 = msg(&[
            ("Event", "Dial"),
            ("SubEvent", "Begin"),
            ("Channel", "SIP/pstn-1"),
            ("Destination", "SIP/1001-2"),
            ("CallerIDNum", "555"),
            ("UniqueID", "1.1"),
            ("DestUniqueID", "1.2"),
            ("Dialstring", "1001"),
        ]);
        let m20 = msg(&[
            ("Event", "DialBegin"),
            ("Channel", "SIP/pstn-1"),
            ("CallerIDNum", "555"),
            ("Uniqueid", "1.1"),
            ("DestChannel", "SIP/1001-2"),
            ("DestUniqueid", "1.2"),
            ("DialString", "1001"),
        ]);
        for m in [&m11, &m20] {
            match canonicalize(m) {
                Some(Canon::DialBegin {
                    caller: Some(c),
                    dest,
                    dialstring,
                }) => {
                    assert_eq!(c.uid, Some("1.1"));
                    assert_eq!(c.caller_num, Some("555"));
                    assert_eq!(dest.uid, Some("1.2"));
                    assert_eq!(dest.name, Some("SIP/1001-2"));
                    assert_eq!(dialstring, Some("1001"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn legacy_14_spellings() {
        let m = msg(&[
            ("Event", "Newchannel"),
            ("Channel", "SIP/1001-0a1b"),
            ("State", "Ring"),
            ("CallerID", "1001"),
            ("Uniqueid", "1.5"),
        ]);
        match canonicalize(&m) {
            Some(Canon::NewChannel(c)) => {
                assert_eq!(c.state, Some(ChanState::Ring));
                assert_eq!(c.caller_num, Some("1001"));
            }
            other => panic!("{other:?}"),
        }
        let link = msg(&[
            ("Event", "Link"),
            ("Channel1", "a"),
            ("Channel2", "b"),
            ("Uniqueid1", "1"),
            ("Uniqueid2", "2"),
        ]);
        assert!(matches!(canonicalize(&link), Some(Canon::Tie(_, _))));
        let unlink = msg(&[("Event", "Bridge"), ("Bridgestate", "Unlink")]);
        assert_eq!(canonicalize(&unlink), None);
    }

    #[test]
    fn unknown_values_are_none() {
        let m = msg(&[
            ("Event", "Newchannel"),
            ("Channel", "SIP/pstn-1"),
            ("CallerIDNum", "<unknown>"),
            ("Exten", ""),
            ("Uniqueid", "1.1"),
        ]);
        match canonicalize(&m) {
            Some(Canon::NewChannel(c)) => {
                assert_eq!(c.caller_num, None);
                assert_eq!(c.exten, None);
            }
            other => panic!("{other:?}"),
        }
    }
}
