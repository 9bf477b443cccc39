//! The AMI message: an ordered multimap of `Key: Value` fields.
//!
//! Real AMI traffic repeats keys (`Variable`, `ChanVariable`, `Output`), spells
//! the same key differently across Asterisk generations (`Uniqueid` vs
//! `UniqueID`, `CallerIDNum` vs `CallerIDnum`) and uses the literal
//! `<unknown>` for "no value". [`AmiMessage`] keeps every field in wire order
//! and offers case-insensitive lookups that treat `<unknown>` and empty values
//! as absent ([`AmiMessage::get`]), next to raw access ([`AmiMessage::get_raw`]).
//!
//! [`Action`] is the outgoing side: an action with its fields, encoded with
//! CRLF line ends as Asterisk expects.

use std::fmt;

/// One AMI packet (an event, a response, or a list item).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AmiMessage {
    fields: Vec<(String, String)>,
    /// Raw text of a legacy `Response: Follows` command output (Asterisk ≤ 13),
    /// without the closing `--END COMMAND--` marker.
    body: Option<String>,
}

/// What a message is, from its first meaningful header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind<'a> {
    /// `Event: NAME`.
    Event(&'a str),
    /// `Response: Success|Error|Follows|Goodbye|…`.
    Response(&'a str),
    /// Neither header is present.
    Other,
}

impl AmiMessage {
    /// An empty message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a message from `(key, value)` pairs (tests, synthetic events).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            fields: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            body: None,
        }
    }

    /// Appends a field, keeping wire order.
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.fields.push((key.into(), value.into()));
    }

    /// Sets the legacy `Response: Follows` body.
    pub fn set_body(&mut self, body: impl Into<String>) {
        self.body = Some(body.into());
    }

    /// The legacy `Response: Follows` body, if any.
    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }

    /// All fields in wire order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when the message has no field and no body.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.body.is_none()
    }

    /// The first value of `key` (case-insensitive), exactly as received.
    pub fn get_raw(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// The first meaningful value of `key` (case-insensitive): `None` when the
    /// key is absent, empty, or one of AMI's "no value" spellings
    /// (`<unknown>`, `unknown`, `<Unknown>`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_raw(key).map(str::trim).filter(|v| !is_no_value(v))
    }

    /// Every value of a repeated key (case-insensitive), in wire order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// True when `key` is present (case-insensitive), whatever its value.
    pub fn has(&self, key: &str) -> bool {
        self.get_raw(key).is_some()
    }

    /// `Event`/`Response` classification.
    pub fn kind(&self) -> MessageKind<'_> {
        if let Some(e) = self.get_raw("Event") {
            MessageKind::Event(e.trim())
        } else if let Some(r) = self.get_raw("Response") {
            MessageKind::Response(r.trim())
        } else {
            MessageKind::Other
        }
    }

    /// The event name, when this is an event.
    pub fn event(&self) -> Option<&str> {
        match self.kind() {
            MessageKind::Event(e) => Some(e),
            _ => None,
        }
    }

    /// The `ActionID` header, when present and non-empty.
    pub fn action_id(&self) -> Option<&str> {
        self.get("ActionID")
    }

    /// The `Timestamp` header (`timestampevents = yes`) as epoch seconds.
    pub fn timestamp(&self) -> Option<f64> {
        self.get("Timestamp")
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|t| t.is_finite() && *t > 0.0)
    }

    /// Approximate heap size in bytes (for bounded queues and metrics).
    pub fn approx_size(&self) -> usize {
        self.fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
            + self.body.as_ref().map_or(0, String::len)
    }
}

/// True for AMI's spellings of "no value".
pub fn is_no_value(v: &str) -> bool {
    v.is_empty() || v.eq_ignore_ascii_case("<unknown>") || v.eq_ignore_ascii_case("unknown")
}

impl fmt::Debug for AmiMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.fields {
            // Never print secrets that might travel in an action echo.
            if k.eq_ignore_ascii_case("Secret") || k.eq_ignore_ascii_case("Key") {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        if let Some(b) = &self.body {
            m.entry(&"<body>", b);
        }
        m.finish()
    }
}

/// An action to send to Asterisk.
///
/// `ActionID` is assigned by the client; values containing CR or LF are
/// rejected at encode time (they would inject extra headers).
#[derive(Clone, PartialEq, Eq)]
pub struct Action {
    name: String,
    fields: Vec<(String, String)>,
}

/// An action could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    /// A key or value contains CR or LF (header injection).
    #[error("action field {0:?} contains a line break")]
    LineBreak(String),
}

impl Action {
    /// A new action `Action: name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            fields: Vec::new(),
        }
    }

    /// Adds a field (repeatable, e.g. `Variable`).
    pub fn field(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.fields.push((key.into(), value.into()));
        self
    }

    /// The action name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// First value of a field (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Encodes the action with the given ActionID: `Action: …\r\nActionID: …\r\n…\r\n\r\n`.
    pub fn encode(&self, action_id: &str) -> Result<Vec<u8>, ActionError> {
        let mut out = Vec::with_capacity(64 + self.fields.len() * 32);
        let mut line = |k: &str, v: &str| -> Result<(), ActionError> {
            if k.contains(['\r', '\n']) || v.contains(['\r', '\n']) {
                return Err(ActionError::LineBreak(k.to_string()));
            }
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
            Ok(())
        };
        line("Action", &self.name)?;
        line("ActionID", action_id)?;
        for (k, v) in &self.fields {
            line(k, v)?;
        }
        out.extend_from_slice(b"\r\n");
        Ok(out)
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Action");
        s.field("name", &self.name);
        for (k, v) in &self.fields {
            if k.eq_ignore_ascii_case("Secret") || k.eq_ignore_ascii_case("Key") {
                s.field(k, &"<redacted>");
            } else {
                s.field(k, v);
            }
        }
        s.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_case_insensitive_and_skip_unknown() {
        let m = AmiMessage::from_pairs([
            ("Event", "Dial"),
            ("UniqueID", "1.2"),
            ("CallerIDNum", "<unknown>"),
            ("Exten", ""),
            ("Variable", "A=1"),
            ("Variable", "B=2"),
        ]);
        assert_eq!(m.get("Uniqueid"), Some("1.2"));
        assert_eq!(m.get("callerIDnum"), None);
        assert_eq!(m.get_raw("CallerIDNum"), Some("<unknown>"));
        assert_eq!(m.get("Exten"), None);
        assert!(m.has("Exten"));
        assert_eq!(m.get_all("variable").collect::<Vec<_>>(), ["A=1", "B=2"]);
        assert_eq!(m.kind(), MessageKind::Event("Dial"));
    }

    #[test]
    fn action_encoding_rejects_header_injection() {
        let a = Action::new("Originate").field("Channel", "SIP/1001");
        assert_eq!(
            a.encode("x-1").unwrap(),
            b"Action: Originate\r\nActionID: x-1\r\nChannel: SIP/1001\r\n\r\n".to_vec()
        );
        let bad = Action::new("Originate").field("CallerID", "a\r\nAction: Logoff");
        assert!(bad.encode("x-2").is_err());
    }

    #[test]
    fn debug_redacts_secrets() {
        let a = Action::new("Login").field("Secret", "hunter2");
        assert!(!format!("{a:?}").contains("hunter2"));
    }
}
