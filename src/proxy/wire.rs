//! Bytes the proxy writes to its clients: PBX messages re-encoded with the
//! client's own ActionID, and the proxy's own responses, laid out as
//! Asterisk lays them out (`Response:`, then `ActionID:`, then the rest;
//! CRLF line ends; a blank line ends a packet).

use crate::ami::AmiMessage;

/// What to do with a message's `ActionID` on the way to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionId<'a> {
    /// Leave it as it is (unsolicited events).
    Keep,
    /// Give it this value (the client's own id), or remove it when the
    /// client sent none.
    Restore(Option<&'a str>),
}

fn line(out: &mut Vec<u8>, k: &str, v: &str) {
    // The codec never yields a line break inside a value; stay safe anyway.
    let clean = |s: &str, out: &mut Vec<u8>| {
        out.extend(s.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
    };
    if k.is_empty() {
        clean(v, out);
    } else {
        clean(k, out);
        out.extend_from_slice(b": ");
        clean(v, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `msg` as one packet.
pub fn encode(msg: &AmiMessage, id: ActionId<'_>, out: &mut Vec<u8>) {
    let mut placed = false;
    let mut first = true;
    for (k, v) in msg.fields() {
        if k.eq_ignore_ascii_case("ActionID") {
            match id {
                ActionId::Keep => line(out, k, v),
                ActionId::Restore(Some(orig)) if !placed => line(out, "ActionID", orig),
                ActionId::Restore(_) => {}
            }
            placed = true;
            continue;
        }
        line(out, k, v);
        if first {
            first = false;
            if let ActionId::Restore(Some(orig)) = id {
                // Asterisk puts the ActionID right after Response:/Event:;
                // if the PBX's message has one further down it is skipped.
                if !msg.has("ActionID") {
                    line(out, "ActionID", orig);
                    placed = true;
                }
            }
        }
    }
    if let Some(body) = msg.body() {
        // Asterisk ≤ 13 `Response: Follows`: raw text, then the marker.
        out.extend(body.bytes().filter(|b| *b != b'\r'));
        if !body.is_empty() && !body.ends_with('\n') {
            out.push(b'\n');
        }
        out.extend_from_slice(b"--END COMMAND--\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response the proxy writes itself: `Response: KIND`, the client's
/// ActionID when it sent one, then `fields`.
pub fn response(kind: &str, action_id: Option<&str>, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    line(&mut out, "Response", kind);
    if let Some(id) = action_id {
        line(&mut out, "ActionID", id);
    }
    for (k, v) in fields {
        line(&mut out, k, v);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `Response: Error` with a `Message`.
pub fn error(action_id: Option<&str>, message: &str) -> Vec<u8> {
    response("Error", action_id, &[("Message", message)])
}

/// `Response: Success` with a `Message`.
pub fn success(action_id: Option<&str>, message: &str) -> Vec<u8> {
    response("Success", action_id, &[("Message", message)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ami::{AmiCodec, AmiFrame};
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    fn decode(bytes: &[u8]) -> Vec<AmiMessage> {
        let mut codec = AmiCodec::new().without_banner();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Ok(Some(f)) = codec.decode(&mut buf) {
            if let AmiFrame::Message(m) = f {
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn restores_the_clients_action_id() {
        let m = AmiMessage::from_pairs([
            ("Event", "CoreShowChannel"),
            ("ActionID", "cp-1.2.3/main-1-9"),
            ("Channel", "SIP/1001-1"),
        ]);
        let mut out = Vec::new();
        encode(&m, ActionId::Restore(Some("mine")), &mut out);
        assert_eq!(
            out,
            b"Event: CoreShowChannel\r\nActionID: mine\r\nChannel: SIP/1001-1\r\n\r\n".to_vec()
        );
        let mut out = Vec::new();
        encode(&m, ActionId::Restore(None), &mut out);
        assert_eq!(
            out,
            b"Event: CoreShowChannel\r\nChannel: SIP/1001-1\r\n\r\n".to_vec()
        );
        let mut out = Vec::new();
        encode(&m, ActionId::Keep, &mut out);
        assert_eq!(decode(&out), vec![m]);
    }

    #[test]
    fn adds_an_action_id_when_the_pbx_sent_none() {
        let m = AmiMessage::from_pairs([("Response", "Success"), ("Message", "ok")]);
        let mut out = Vec::new();
        encode(&m, ActionId::Restore(Some("7")), &mut out);
        assert_eq!(
            out,
            b"Response: Success\r\nActionID: 7\r\nMessage: ok\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn follows_bodies_round_trip() {
        let mut m = AmiMessage::from_pairs([
            ("Response", "Follows"),
            ("Privilege", "Command"),
            ("ActionID", "x"),
        ]);
        m.set_body("line one\n\nline: three");
        let mut out = Vec::new();
        encode(&m, ActionId::Restore(Some("y")), &mut out);
        let back = decode(&out);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].action_id(), Some("y"));
        assert_eq!(back[0].body(), Some("line one\n\nline: three"));
    }

    #[test]
    fn own_responses() {
        assert_eq!(
            error(Some("1"), "Permission denied"),
            b"Response: Error\r\nActionID: 1\r\nMessage: Permission denied\r\n\r\n".to_vec()
        );
        assert_eq!(
            success(None, "Authentication accepted"),
            b"Response: Success\r\nMessage: Authentication accepted\r\n\r\n".to_vec()
        );
    }
}
