//! The simulator's view of a capture: a raw `.ami` file parsed once into
//! the frames to replay (byte-exact where possible), the canned answers to
//! the recorder's list actions, the announced AMI version and the capture's
//! own extension states. See [`super::simulator`] for what is replayed.

use std::collections::HashMap;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::client::{ends_list, starts_list};
use super::codec::{AmiCodec, AmiFrame};
use super::message::{AmiMessage, MessageKind};
use super::sim_state::ExtensionStates;
use super::sim_wire::{encode_message, encode_with_id, IdRewrite};
use super::simulator::AfterCapture;

/// AMI version announced when a capture has no banner.
pub(super) const DEFAULT_VERSION: &str = "9.0.0";

/// One frame to replay.
pub(super) struct ReplayFrame {
    pub(super) bytes: Vec<u8>,
    pub(super) timestamp: Option<f64>,
}

/// A canned list answer.
pub(super) struct CannedList {
    response: AmiMessage,
    items: Vec<AmiMessage>,
    complete: AmiMessage,
}

/// A capture parsed once, ready to serve.
pub(super) struct Prepared {
    pub(super) version: String,
    pub(super) frames: Vec<ReplayFrame>,
    /// Canned list answers by lower-case action name.
    pub(super) canned: HashMap<String, CannedList>,
    pub(super) then: AfterCapture,
    /// Frames that had to be re-encoded (their captured bytes did not
    /// decode back to the same message alone).
    pub(super) reencoded: usize,
    /// The capture's own extension states, for `ExtensionState`.
    pub(super) states: ExtensionStates,
}

impl Prepared {
    pub(super) fn new(capture: &[u8], then: AfterCapture) -> Self {
        let decoded = decode_with_raw(capture);
        // ActionIDs whose response opened a list.
        let mut lists: HashMap<String, (AmiMessage, Vec<AmiMessage>)> = HashMap::new();
        for (frame, _) in &decoded {
            if let AmiFrame::Message(m) = frame {
                if matches!(m.kind(), MessageKind::Response(_)) && starts_list(m) {
                    if let Some(id) = m.action_id() {
                        lists
                            .entry(id.to_string())
                            .or_insert_with(|| (m.clone(), Vec::new()));
                    }
                }
            }
        }
        let mut version = None;
        let mut frames = Vec::new();
        let mut canned = HashMap::new();
        let mut reencoded = 0;
        let mut states = ExtensionStates::default();
        let mut replay = |m: &AmiMessage, raw: &[u8]| match captured_bytes(m, raw) {
            Some(b) => b,
            None => {
                reencoded += 1;
                encode_message(m, IdRewrite::Keep)
            }
        };
        for (frame, raw) in decoded {
            match frame {
                AmiFrame::Banner(b) => {
                    if version.is_none() {
                        version = Some(banner_version(&b));
                    }
                }
                AmiFrame::Skipped { .. } | AmiFrame::Ignored { .. } => {}
                AmiFrame::Message(m) => match m.kind() {
                    // Answers to the recorder's own actions.
                    MessageKind::Response(_) => states.learn(&m),
                    MessageKind::Event(_) => {
                        let list = m.action_id().and_then(|id| {
                            let id = id.to_string();
                            lists.get_mut(&id).map(|l| (id, l))
                        });
                        match list {
                            Some((_, (resp, items))) if ends_list(&m) => {
                                if let Some(name) = m.event().map(list_action_name) {
                                    canned.entry(name).or_insert_with(|| CannedList {
                                        response: resp.clone(),
                                        items: std::mem::take(items),
                                        complete: m.clone(),
                                    });
                                }
                            }
                            Some((_, (_, items))) => {
                                states.learn(&m);
                                items.push(m)
                            }
                            None => frames.push(ReplayFrame {
                                timestamp: m.timestamp(),
                                bytes: replay(&m, raw),
                            }),
                        }
                    }
                    MessageKind::Other => frames.push(ReplayFrame {
                        timestamp: None,
                        bytes: replay(&m, raw),
                    }),
                },
            }
        }
        Self {
            version: version.unwrap_or_else(|| DEFAULT_VERSION.to_string()),
            frames,
            canned,
            then,
            reencoded,
            states,
        }
    }
}

/// Decodes a whole capture, keeping each frame's raw bytes.
pub(super) fn decode_with_raw(capture: &[u8]) -> Vec<(AmiFrame, &[u8])> {
    let max = AmiCodec::DEFAULT_MAX_PACKET.max(capture.len());
    let mut codec = AmiCodec::with_max_packet(max);
    let mut buf = BytesMut::from(capture);
    let total = capture.len();
    let mut start = 0usize;
    let mut out = Vec::new();
    let mut eof = false;
    loop {
        let r = if eof {
            codec.decode_eof(&mut buf)
        } else {
            codec.decode(&mut buf)
        };
        match r {
            Ok(Some(frame)) => {
                let end = total.saturating_sub(buf.len()).max(start);
                out.push((frame, capture.get(start..end).unwrap_or(&[])));
                start = end;
            }
            Ok(None) if !eof => eof = true,
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// The captured bytes of `m` when they decode back to `m` alone.
fn captured_bytes(m: &AmiMessage, raw: &[u8]) -> Option<Vec<u8>> {
    let terminated = raw.ends_with(b"\n\n") || raw.ends_with(b"\n\r\n");
    if !terminated {
        return None;
    }
    let mut codec = AmiCodec::new().without_banner();
    let mut buf = BytesMut::from(raw);
    match codec.decode(&mut buf) {
        Ok(Some(AmiFrame::Message(back))) if &back == m && buf.is_empty() => Some(raw.to_vec()),
        _ => None,
    }
}

/// `Asterisk Call Manager/9.0.0` → `9.0.0`.
fn banner_version(banner: &str) -> String {
    banner
        .rsplit('/')
        .next()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(DEFAULT_VERSION)
        .to_string()
}

/// The action that produced a list, from its `…Complete` event name.
fn list_action_name(complete: &str) -> String {
    let lower = complete.to_ascii_lowercase();
    let base = lower.strip_suffix("complete").unwrap_or(&lower);
    match base {
        "peerlist" => "sippeers".to_string(),
        "endpointlist" => "pjsipshowendpoints".to_string(),
        other => other.to_string(),
    }
}

/// A canned list answered with the client's ActionID.
pub(super) fn canned_list(list: &CannedList, id: Option<&str>) -> Vec<u8> {
    let rewrite = IdRewrite::Set(id);
    let mut out = encode_with_id(&list.response, id);
    for item in &list.items {
        out.extend_from_slice(&encode_message(item, rewrite));
    }
    out.extend_from_slice(&encode_with_id(&list.complete, id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_action_names() {
        assert_eq!(
            list_action_name("CoreShowChannelsComplete"),
            "coreshowchannels"
        );
        assert_eq!(list_action_name("StatusComplete"), "status");
        assert_eq!(list_action_name("PeerlistComplete"), "sippeers");
    }

    #[test]
    fn prepares_a_capture_with_lists() {
        let cap = b"Asterisk Call Manager/1.3\r\n\
Response: Success\r\nActionID: rec-login\r\nMessage: Authentication accepted\r\n\r\n\
Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n\
Response: Success\r\nActionID: s\r\nMessage: Channel status will follow\r\n\r\n\
Event: Status\r\nChannel: SIP/1-1\r\nActionID: s\r\n\r\n\
Event: StatusComplete\r\nActionID: s\r\nItems: 1\r\n\r\n\
Event: OriginateResponse\r\nActionID: o\r\nResponse: Success\r\n\r\n\
Event: Hangup\r\nTimestamp: 1.5\r\nChannel: SIP/1-1\r\n\r\n";
        let p = Prepared::new(cap, AfterCapture::StayOpen);
        assert_eq!(p.version, "1.3");
        assert_eq!(p.frames.len(), 3);
        assert!(p.frames[0].bytes.starts_with(b"Event: FullyBooted\r\n"));
        assert!(p.frames[1].bytes.starts_with(b"Event: OriginateResponse"));
        assert_eq!(p.frames[2].timestamp, Some(1.5));
        let status = p.canned.get("status").map(|l| l.items.len());
        assert_eq!(status, Some(1));
        let list = canned_list(&p.canned["status"], Some("c-1-3"));
        let text = String::from_utf8_lossy(&list);
        assert_eq!(text.matches("ActionID: c-1-3").count(), 3);
        assert!(!text.contains("ActionID: s\r\n"));
    }

    #[test]
    fn real_captures_replay_byte_exact() {
        for (rel, lists) in [
            ("asterisk-20/status-actions.ami", 6),
            ("asterisk-11/status-actions.ami", 5),
            ("asterisk-20/reconnect-after.ami", 2),
            ("asterisk-11/reconnect-after.ami", 2),
            ("asterisk-20/click-to-call.ami", 0),
        ] {
            let path = format!("{}/tests/fixtures/ami/{rel}", env!("CARGO_MANIFEST_DIR"));
            let cap = std::fs::read(&path).unwrap_or_default();
            assert!(!cap.is_empty(), "{path}");
            let p = Prepared::new(&cap, AfterCapture::StayOpen);
            assert_eq!(p.reencoded, 0, "{rel}");
            assert_eq!(p.canned.len(), lists, "{rel}: {:?}", p.canned.keys());
            let replayed: usize = p.frames.iter().map(|f| f.bytes.len()).sum();
            assert!(replayed > cap.len() / 2, "{rel}");
            assert!(p.frames.iter().all(|f| !f.bytes.starts_with(b"Response:")));
        }
    }

    #[test]
    fn garbage_capture_does_not_panic() {
        let p = Prepared::new(
            b"\xff\xfe\r\n\r\n:::\r\n\r\nno colon\n",
            AfterCapture::Close,
        );
        assert!(p.frames.len() <= 2);
        let p = Prepared::new(b"", AfterCapture::Close);
        assert_eq!(p.version, DEFAULT_VERSION);
        assert!(p.frames.is_empty());
    }
}
