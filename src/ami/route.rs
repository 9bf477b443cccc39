//! Whose business an AMI message is: one classification for the live client
//! ([`super::client`]) and for `callhook replay` ([`crate::replay`]), so both
//! feed the normalizer exactly the same events.
//!
//! * An `Event:` without a meaningful `ActionID` is **unsolicited**: it goes
//!   to the normalizer, unless it is [noise](NOISE_EVENTS) the normalizer
//!   never uses. The codec is told the same list ([`codec`]), so noise is
//!   recognised from its first line and never even built.
//! * `OriginateResponse` carries the originator's `ActionID` but Asterisk
//!   broadcasts it: it is unsolicited too, and may also answer an action.
//! * Any other event with an `ActionID` answers an action (a list item, or
//!   the `…Complete` event that closes the list): never the model's.
//! * A `Response:` answers an action.

use super::codec::AmiCodec;
use super::message::{AmiMessage, MessageKind};

/// Unsolicited events the normalizer never uses: not built by the codec,
/// never queued. `Newexten` and `Cdr` are not noise.
pub const NOISE_EVENTS: &[&str] = &[
    "VarSet",
    "RTCPSent",
    "RTCPReceived",
    "DeviceStateChange",
    "ExtensionStatus",
    "QueueMemberStatus",
    "SuccessfulAuth",
    "ChallengeSent",
    "RequestBadFormat",
];

/// [`NOISE_EVENTS`] less the events only presence uses
/// ([`PresenceRoute::Only`](super::state_sync::PresenceRoute::Only)): what
/// the codec of a client that feeds presence may skip.
pub const NOISE_EVENTS_WITH_PRESENCE: &[&str] = &[
    "VarSet",
    "RTCPSent",
    "RTCPReceived",
    "QueueMemberStatus",
    "SuccessfulAuth",
    "ChallengeSent",
    "RequestBadFormat",
];

/// True for unsolicited events the normalizer never uses (dropped before the
/// queue). Only meaningful for events without an ActionID.
pub fn is_noise_event(event: &str) -> bool {
    NOISE_EVENTS.iter().any(|n| n.eq_ignore_ascii_case(event))
}

/// The codec for one PBX connection (live or replayed): noise is ignored.
pub fn codec(max_packet: usize) -> AmiCodec {
    AmiCodec::with_max_packet(max_packet).ignoring(NOISE_EVENTS)
}

/// The codec for a connection that also feeds presence: the noise that
/// presence needs (`ExtensionStatus`, `DeviceStateChange`) is built.
pub fn codec_with_presence(max_packet: usize) -> AmiCodec {
    AmiCodec::with_max_packet(max_packet).ignoring(NOISE_EVENTS_WITH_PRESENCE)
}

/// What a message is to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// An unsolicited event for the normalizer.
    Event,
    /// An unsolicited event on the noise list.
    Noise,
    /// `OriginateResponse` with this ActionID: for the normalizer, and maybe
    /// the answer to a pending `Originate`.
    Broadcast(&'a str),
    /// An event answering the action with this ActionID (list item or end).
    ListItem(&'a str),
    /// A response; its ActionID, when it has one.
    Response(Option<&'a str>),
    /// Neither an event nor a response.
    Other,
}

/// Classifies one message (see the [module documentation](self)).
pub fn route(msg: &AmiMessage) -> Route<'_> {
    match msg.kind() {
        MessageKind::Event(name) => match msg.action_id() {
            Some(id) if name.eq_ignore_ascii_case("OriginateResponse") => Route::Broadcast(id),
            Some(id) => Route::ListItem(id),
            None if is_noise_event(name) => Route::Noise,
            None => Route::Event,
        },
        MessageKind::Response(_) => Route::Response(msg.action_id()),
        MessageKind::Other => Route::Other,
    }
}

/// True when `resp` opens a list: `Response: Success` with `EventList: start`,
/// or without `EventList` a `Message` containing "will follow".
pub fn starts_list(resp: &AmiMessage) -> bool {
    let success = resp
        .get("Response")
        .is_some_and(|r| r.eq_ignore_ascii_case("Success"));
    if !success {
        return false;
    }
    if let Some(el) = resp.get("EventList") {
        return el.eq_ignore_ascii_case("start");
    }
    resp.get("Message")
        .is_some_and(|m| m.to_ascii_lowercase().contains("will follow"))
}

/// True when `ev` closes a list: an event named `…Complete` or carrying
/// `EventList: Complete`.
pub fn ends_list(ev: &AmiMessage) -> bool {
    if ev
        .get("EventList")
        .is_some_and(|v| v.eq_ignore_ascii_case("Complete"))
    {
        return true;
    }
    ev.event().is_some_and(|e| {
        e.len() >= 8
            && e.is_char_boundary(e.len() - 8)
            && e[e.len() - 8..].eq_ignore_ascii_case("Complete")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ami::AmiFrame;
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    fn m(pairs: &[(&str, &str)]) -> AmiMessage {
        AmiMessage::from_pairs(pairs.iter().copied())
    }

    /// The presence codec skips exactly the noise presence has no use for.
    #[test]
    fn presence_keeps_its_events() {
        use crate::ami::state_sync::{presence_route, PresenceRoute};
        let expected: Vec<&str> = NOISE_EVENTS
            .iter()
            .copied()
            .filter(|n| presence_route(n) != Some(PresenceRoute::Only))
            .collect();
        assert_eq!(expected, NOISE_EVENTS_WITH_PRESENCE);
        for n in NOISE_EVENTS_WITH_PRESENCE {
            assert!(presence_route(n).is_none(), "{n}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route(&m(&[("Event", "Newchannel")])), Route::Event);
        assert_eq!(route(&m(&[("Event", "varset")])), Route::Noise);
        // An empty ActionID is no ActionID.
        assert_eq!(
            route(&m(&[("Event", "VarSet"), ("ActionID", "")])),
            Route::Noise
        );
        assert_eq!(
            route(&m(&[("Event", "ExtensionStatus"), ("ActionID", "a-1")])),
            Route::ListItem("a-1")
        );
        assert_eq!(
            route(&m(&[("Event", "OriginateResponse"), ("ActionID", "o-1")])),
            Route::Broadcast("o-1")
        );
        assert_eq!(
            route(&m(&[("Response", "Success"), ("ActionID", "x")])),
            Route::Response(Some("x"))
        );
        assert_eq!(route(&m(&[("Response", "Error")])), Route::Response(None));
        assert_eq!(route(&m(&[("Foo", "bar")])), Route::Other);
    }

    /// The codec's ignore decision and [`route`] agree on every variant.
    #[test]
    fn the_codec_ignores_exactly_the_noise() {
        let cases: &[(&[u8], bool)] = &[
            (b"Event: VarSet\r\nChannel: x\r\n\r\n", true),
            (b"Event:  rtcpsent \r\n\r\n", true),
            (b"Event: VarSet\r\nActionID: \r\n\r\n", true),
            (b"Event: VarSet\r\nActionID: <unknown>\r\n\r\n", true),
            (b"Event: VarSet\r\nActionID: 7\r\n\r\n", false),
            (b"Event: VarSet\r\n  actionid : 7\r\n\r\n", false),
            (b"Event: VarSet\r\nX: 1\r\n\x0cActionID: 7\r\n\r\n", false),
            (
                b"Event: VarSet\r\nAction: x\r\nAccountCode: 7\r\n\r\n",
                true,
            ),
            (b"Event: VarSet\r\nActionID: \r\nActionID: 7\r\n\r\n", true),
            (
                b"Event: ExtensionStatus\r\nX: 1\r\nActionID: q-1\r\n\r\n",
                false,
            ),
            (b"Channel: x\r\nEvent: VarSet\r\n\r\n", false),
            (b"Event: Newstate\r\n\r\n", false),
            (b"Event: VarSetX\r\n\r\n", false),
        ];
        for (bytes, ignored) in cases {
            let mut codec1 = codec(1024).without_banner();
            let mut buf = BytesMut::from(*bytes);
            let frame = codec1.decode_eof(&mut buf).unwrap();
            // Byte by byte: the same frame (a late ActionID included).
            let mut codec2 = codec(1024).without_banner();
            let mut buf = BytesMut::new();
            let mut bytewise = None;
            for b in bytes.iter() {
                buf.extend_from_slice(&[*b]);
                if let Some(f) = codec2.decode(&mut buf).unwrap() {
                    bytewise = Some(f);
                }
            }
            if bytewise.is_none() {
                bytewise = codec2.decode_eof(&mut buf).unwrap();
            }
            assert_eq!(bytewise, frame);
            let mut plain = AmiCodec::new().without_banner();
            let mut buf = BytesMut::from(*bytes);
            let Some(AmiFrame::Message(msg)) = plain.decode_eof(&mut buf).unwrap() else {
                panic!("{bytes:?}")
            };
            let text = String::from_utf8_lossy(bytes);
            match frame {
                Some(AmiFrame::Ignored { bytes: n, .. }) => {
                    assert!(*ignored, "{text}");
                    assert_eq!(n, bytes.len());
                    // Whatever the header order, ignored means noise (the
                    // converse needs Event first: a shortcut, not a rule).
                    assert_eq!(route(&msg), Route::Noise, "{text}");
                }
                Some(AmiFrame::Message(built)) => {
                    assert!(!*ignored, "{text}");
                    assert_eq!(built, msg);
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
