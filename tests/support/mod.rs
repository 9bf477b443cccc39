//! Helpers shared by the AMI integration tests: fixtures, expected events
//! computed independently from the captures, and bounded waits.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use callhook::ami::client::ClientConfig;
use callhook::ami::{AmiCodec, AmiFrame, AmiMessage, MessageKind};
use callhook::source::SourceEvent;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

pub const USER: &str = "amiuser";
pub const SECRET: &str = "amipass-1234";

/// Safety net for every wait (never a synchronisation mechanism).
pub const WAIT: Duration = Duration::from_secs(5);

/// The raw bytes of `tests/fixtures/ami/<rel>`.
pub fn fixture(rel: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/ami/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every frame of a capture.
pub fn decode_all(bytes: &[u8]) -> Vec<AmiFrame> {
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = codec.decode(&mut buf).expect("decode") {
        out.push(f);
    }
    while let Some(f) = codec.decode_eof(&mut buf).expect("decode_eof") {
        out.push(f);
    }
    out
}

/// Event names the client must drop (the brief's noise list).
pub const NOISE: &[&str] = &[
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

/// The unsolicited, non-noise events of a capture, in order: events without
/// an ActionID, plus the broadcast `OriginateResponse`.
pub fn expected_events(capture: &[u8]) -> Vec<AmiMessage> {
    decode_all(capture)
        .into_iter()
        .filter_map(|f| match f {
            AmiFrame::Message(m) => Some(m),
            _ => None,
        })
        .filter(|m| match m.kind() {
            MessageKind::Event(e) => {
                let unsolicited =
                    m.action_id().is_none() || e.eq_ignore_ascii_case("OriginateResponse");
                unsolicited && !NOISE.iter().any(|n| n.eq_ignore_ascii_case(e))
            }
            _ => false,
        })
        .collect()
}

/// The list items named `event` (carrying an ActionID) of a capture.
pub fn list_items(capture: &[u8], event: &str) -> Vec<AmiMessage> {
    decode_all(capture)
        .into_iter()
        .filter_map(|f| match f {
            AmiFrame::Message(m) => Some(m),
            _ => None,
        })
        .filter(|m| m.event() == Some(event) && m.action_id().is_some())
        .collect()
}

/// `m` without its ActionID field(s).
pub fn without_action_id(m: &AmiMessage) -> AmiMessage {
    AmiMessage::from_pairs(
        m.fields()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("ActionID"))
            .map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

/// A client config for tests: small timeouts and backoff.
pub fn config(pbx: &str, addr: SocketAddr) -> ClientConfig {
    let mut c = ClientConfig::new(pbx, addr.ip().to_string(), addr.port(), USER, SECRET);
    c.connect_timeout = Duration::from_secs(1);
    c.ping_interval = Duration::from_secs(5);
    c.ping_timeout = Duration::from_secs(2);
    c.action_timeout = Duration::from_secs(3);
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(500);
    c
}

/// The next source event (panics after [`WAIT`]).
pub async fn next_event(rx: &mut mpsc::Receiver<SourceEvent>) -> SourceEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a source event")
        .expect("events channel closed")
}

/// The next event, which must be a snapshot; returns its channels.
pub async fn next_snapshot(rx: &mut mpsc::Receiver<SourceEvent>) -> Vec<AmiMessage> {
    match next_event(rx).await {
        SourceEvent::AmiSnapshot { channels, .. } => channels,
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// The next event, which must be a disconnect notice.
pub async fn next_disconnect(rx: &mut mpsc::Receiver<SourceEvent>) {
    match next_event(rx).await {
        SourceEvent::AmiDisconnected { .. } => {}
        other => panic!("expected AmiDisconnected, got {other:?}"),
    }
}

/// The next `n` events, which must all be AMI events.
pub async fn next_ami(rx: &mut mpsc::Receiver<SourceEvent>, n: usize) -> Vec<AmiMessage> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next_event(rx).await {
            SourceEvent::Ami { msg, .. } => out.push(msg),
            other => panic!(
                "expected AMI event #{} of {n}, got {other:?}",
                out.len() + 1
            ),
        }
    }
    out
}

/// Event names of a list of messages (for readable assertion failures).
pub fn names(msgs: &[AmiMessage]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.event().unwrap_or("?").to_string())
        .collect()
}
