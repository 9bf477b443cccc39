//! The JSON messages of the live channel, and the frames that carry them.
//!
//! Every message is an object with `type`, `seq` (per tenant, increasing;
//! a user sees only the messages of their extensions, so their `seq`s have
//! gaps) and `at` (RFC 3339). Types: `hello`, `snapshot`, `presence`,
//! `call.ringing`, `call.answered`, `call.hungup`, `originate.*`, `gap`,
//! `pong`, `error` (see the README for each one's fields).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::model::Timestamp;

/// Which extensions a frame is about (who may see it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concern(pub Vec<String>);

/// One message, serialized once for every client.
#[derive(Debug)]
pub struct Frame {
    /// Per-tenant sequence number.
    pub seq: u64,
    /// The `type`.
    pub kind: &'static str,
    /// The extensions it concerns.
    pub concern: Concern,
    /// The JSON text.
    pub json: Arc<str>,
    /// The extension answering a `call.answered` (for Meetip, the board).
    pub body: Value,
    /// When the hub published it (latency metric).
    pub published: std::time::Instant,
}

impl Frame {
    /// A frame of `kind` with `body`'s fields plus `type`, `seq`, `at`.
    pub fn new(kind: &'static str, seq: u64, at: f64, concern: Vec<String>, body: Value) -> Self {
        let json = render(kind, seq, at, &body);
        Self {
            seq,
            kind,
            concern: Concern(concern),
            json: json.into(),
            body,
            published: std::time::Instant::now(),
        }
    }

    /// A string field of the body.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }
}

/// `{"type":…,"seq":…,"at":…, …body}` as text.
pub fn render(kind: &str, seq: u64, at: f64, body: &Value) -> String {
    let mut m = Map::new();
    m.insert("type".into(), Value::from(kind));
    m.insert("seq".into(), Value::from(seq));
    m.insert("at".into(), Value::from(Timestamp(at).to_rfc3339()));
    if let Value::Object(b) = body {
        for (k, v) in b {
            m.insert(k.clone(), v.clone());
        }
    }
    Value::Object(m).to_string()
}

/// An `error` message (not numbered: seq 0).
pub fn error(code: &str, message: &str) -> String {
    render(
        "error",
        0,
        crate::source::now_epoch(),
        &json!({ "code": code, "message": message }),
    )
}
