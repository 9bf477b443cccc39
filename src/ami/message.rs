//! The AMI message: an ordered multimap of `Key: Value` fields.
//!
//! Real AMI traffic repeats keys (`Variable`, `ChanVariable`, `Output`), spells
//! the same key differently across Asterisk generations (`Uniqueid` vs
//! `UniqueID`, `CallerIDNum` vs `CallerIDnum`) and uses the literal
//! `<unknown>` for "no value". [`AmiMessage`] keeps every field in wire order
//! and offers case-insensitive lookups that treat `<unknown>` and empty values
//! as absent ([`AmiMessage::get`]), next to raw access ([`AmiMessage::get_raw`]).
//!
//! # Layout
//!
//! A message is two allocations whatever its number of fields: one string
//! holding its text (for a received packet: the packet's bytes as they came,
//! line ends included) and one vector of spans (where each key and value
//! starts and ends, plus a small case-folded tag of the key). Lookups
//! compare tags first (length and first and last letter, case folded), so a
//! miss costs one integer comparison per field and nothing is ever
//! lower-cased or allocated. The codec copies a packet into its string in
//! one go (one UTF-8 validation per packet, see [`super::codec`]).
//!
//! [`Action`] is the outgoing side: an action with its fields, encoded with
//! CRLF line ends as Asterisk expects.

use std::fmt;

/// One AMI packet (an event, a response, or a list item).
#[derive(Clone, Default)]
pub struct AmiMessage {
    /// The text the spans point into.
    text: String,
    /// Where each field is in `text`.
    spans: Vec<Span>,
    /// One bit per key tag present ([`tag_bit`]): most lookups of an absent
    /// key end here.
    keys: u64,
    /// Raw text of a legacy `Response: Follows` command output (Asterisk ≤ 13),
    /// without the closing `--END COMMAND--` marker.
    body: Option<String>,
}

/// One field of a message: `text[key..key_end]` is the key,
/// `text[value..end]` the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    key: u32,
    key_end: u32,
    value: u32,
    end: u32,
    /// [`key_tag`] of the key.
    tag: u32,
}

impl Span {
    /// A span over `text[key.0..key.1]` (whose bytes are `key_bytes`) and
    /// `text[value.0..value.1]`. Offsets beyond `u32` saturate (the field then
    /// reads as empty; no packet that large is ever accepted).
    pub(crate) fn new(key: (usize, usize), value: (usize, usize), key_bytes: &[u8]) -> Self {
        let at = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        Self {
            key: at(key.0),
            key_end: at(key.1),
            value: at(value.0),
            end: at(value.1),
            tag: key_tag(key_bytes),
        }
    }

    /// The key's and the value's ranges.
    pub(crate) fn ranges(&self) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        (
            self.key as usize..self.key_end as usize,
            self.value as usize..self.end as usize,
        )
    }
}

/// A cheap case-insensitive fingerprint of a key: its length and its first
/// and last bytes, ASCII-lower-cased. Equal keys (ignoring ASCII case) have
/// equal tags.
#[inline]
pub(crate) fn key_tag(key: &[u8]) -> u32 {
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX).min(0xffff);
    let first = key.first().map_or(0, u8::to_ascii_lowercase);
    let last = key.last().map_or(0, u8::to_ascii_lowercase);
    (len << 16) | (u32::from(first) << 8) | u32::from(last)
}

/// The bit of a key tag in [`AmiMessage`]'s key mask.
#[inline]
fn tag_bit(tag: u32) -> u64 {
    1 << (tag.wrapping_mul(0x9E37_79B1) >> 26)
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

    /// A message from the codec: `spans` point into `text`.
    pub(crate) fn from_parts(text: String, spans: Vec<Span>) -> Self {
        let keys = spans.iter().fold(0, |m, s| m | tag_bit(s.tag));
        Self {
            text,
            spans,
            keys,
            body: None,
        }
    }

    /// Builds a message from `(key, value)` pairs (tests, synthetic events).
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut m = Self::new();
        for (k, v) in pairs {
            m.push(k.as_ref(), v.as_ref());
        }
        m
    }

    /// Appends a field, keeping wire order.
    pub fn push(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        let start = self.text.len();
        self.text.push_str(key);
        let split = self.text.len();
        self.text.push_str(value);
        let span = Span::new((start, split), (split, self.text.len()), key.as_bytes());
        self.keys |= tag_bit(span.tag);
        self.spans.push(span);
    }

    /// Sets the legacy `Response: Follows` body.
    pub fn set_body(&mut self, body: impl Into<String>) {
        self.body = Some(body.into());
    }

    /// The legacy `Response: Follows` body, if any.
    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }

    #[inline]
    fn key_of(&self, s: &Span) -> &str {
        self.text
            .get(s.key as usize..s.key_end as usize)
            .unwrap_or_default()
    }

    #[inline]
    fn value_of(&self, s: &Span) -> &str {
        self.text
            .get(s.value as usize..s.end as usize)
            .unwrap_or_default()
    }

    /// All fields in wire order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.spans
            .iter()
            .map(|s| (self.key_of(s), self.value_of(s)))
    }

    /// The fields (index in wire order, key, value) whose key passes
    /// `keep(length, last byte ASCII-lower-cased)`, decided from the
    /// key's tag without reading the text (a key longer than 65,535 bytes
    /// has length 65,535 there).
    pub fn fields_where(
        &self,
        keep: impl Fn(usize, u8) -> bool,
    ) -> impl Iterator<Item = (usize, &str, &str)> {
        self.spans.iter().enumerate().filter_map(move |(i, s)| {
            let (len, last) = ((s.tag >> 16) as usize, (s.tag & 0xff) as u8);
            keep(len, last).then(|| (i, self.key_of(s), self.value_of(s)))
        })
    }

    /// The field at `i` in wire order.
    pub fn field(&self, i: usize) -> Option<(&str, &str)> {
        self.spans
            .get(i)
            .map(|s| (self.key_of(s), self.value_of(s)))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when the message has no field and no body.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.body.is_none()
    }

    /// The spans whose key is `key` (ASCII case-insensitive).
    #[inline]
    fn matching<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Span> + 'a {
        let tag = key_tag(key.as_bytes());
        let spans = if self.keys & tag_bit(tag) == 0 {
            &[][..]
        } else {
            &self.spans[..]
        };
        let text = self.text.as_bytes();
        spans.iter().filter(move |s| {
            s.tag == tag
                && text
                    .get(s.key as usize..s.key_end as usize)
                    .is_some_and(|k| k.eq_ignore_ascii_case(key.as_bytes()))
        })
    }

    /// The first value of `key` (case-insensitive), exactly as received.
    pub fn get_raw(&self, key: &str) -> Option<&str> {
        self.matching(key).next().map(|s| self.value_of(s))
    }

    /// The first meaningful value of `key` (case-insensitive): `None` when the
    /// key is absent, empty, or one of AMI's "no value" spellings
    /// (`<unknown>`, `unknown`, `<Unknown>`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_raw(key).map(str::trim).filter(|v| !is_no_value(v))
    }

    /// Every value of a repeated key (case-insensitive), in wire order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.matching(key).map(|s| self.value_of(s))
    }

    /// True when `key` is present (case-insensitive), whatever its value.
    pub fn has(&self, key: &str) -> bool {
        self.matching(key).next().is_some()
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

    /// True when this is the event `name` (ASCII case-insensitive).
    pub fn is_event(&self, name: &str) -> bool {
        self.event().is_some_and(|e| e.eq_ignore_ascii_case(name))
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
        self.text.capacity()
            + self.spans.capacity() * std::mem::size_of::<Span>()
            + self.body.as_ref().map_or(0, String::capacity)
    }
}

impl PartialEq for AmiMessage {
    /// Same fields in the same order (keys compared exactly) and same body.
    fn eq(&self, other: &Self) -> bool {
        self.spans.len() == other.spans.len()
            && self.body == other.body
            && self.fields().eq(other.fields())
    }
}

impl Eq for AmiMessage {}

/// True for AMI's spellings of "no value".
pub fn is_no_value(v: &str) -> bool {
    v.is_empty() || v.eq_ignore_ascii_case("<unknown>") || v.eq_ignore_ascii_case("unknown")
}

impl fmt::Debug for AmiMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in self.fields() {
            // Never print secrets that might travel in an action echo.
            if k.eq_ignore_ascii_case("Secret") || k.eq_ignore_ascii_case("Key") {
                m.entry(&k, &"<redacted>");
            } else {
                m.entry(&k, &v);
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
    fn tags_never_hide_a_match() {
        // Keys of equal length and equal first/last letters share a tag: the
        // full comparison still decides.
        let m = AmiMessage::from_pairs([("Channel", "a"), ("CHANNEL", "b"), ("Chaxxel", "c")]);
        assert_eq!(m.get_all("channel").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(m.get("ChaXXel"), Some("c"));
        assert_eq!(key_tag(b"Uniqueid"), key_tag(b"UNIQUEID"));
        assert_ne!(key_tag(b"Uniqueid"), key_tag(b"Uniqueid1"));
        // Empty keys (lines without a colon) are found too.
        let m = AmiMessage::from_pairs([("", "raw line"), ("Event", " X ")]);
        assert_eq!(m.get_raw(""), Some("raw line"));
        assert!(m.is_event("x"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn fields_where_sees_length_and_last_letter() {
        let m = AmiMessage::from_pairs([
            ("Event", "Dial"),
            ("UniqueID", "1.2"),
            ("Channel", "SIP/1"),
            ("", "raw"),
        ]);
        let ids: Vec<_> = m.fields_where(|_, last| last == b'd').collect();
        assert_eq!(ids, [(1, "UniqueID", "1.2")]);
        let long: Vec<_> = m.fields_where(|len, _| len >= 7).map(|f| f.0).collect();
        assert_eq!(long, [1, 2]);
        assert_eq!(m.fields_where(|len, _| len == 0).count(), 1);
    }

    #[test]
    fn equality_is_by_fields_not_layout() {
        let mut a = AmiMessage::new();
        a.push("Event", "Dial");
        a.push("Uniqueid", "1.2");
        let b = AmiMessage::from_pairs([("Event", "Dial"), ("Uniqueid", "1.2")]);
        assert_eq!(a, b);
        // Same bytes, split differently between key and value: not equal.
        let c = AmiMessage::from_pairs([("EventD", "ial"), ("Uniqueid", "1.2")]);
        assert_ne!(a, c);
        let mut d = b.clone();
        d.set_body("x");
        assert_ne!(b, d);
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
