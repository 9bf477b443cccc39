//! Which unsolicited events a proxy client receives: the user's filter
//! (event names, extensions) and the session's `Events:` mask.
//!
//! An event goes to a client when all three agree:
//!
//! 1. **Names** (`events:`): the event name is on the list
//!    (case-insensitive; `Queue*` matches by prefix; `*` or no list: all).
//! 2. **Extensions** (`extensions:`, number patterns as in rules: `1001`,
//!    `_10XX`, `/^2\d{3}$/`): the event names at least one channel of
//!    those extensions. The channels an event is about are the values of
//!    every header whose name ends in `Channel` (`Channel`, `DestChannel`,
//!    `TransfererChannel`, …) or is `Channel1`/`Channel2` (Asterisk ≤ 1.8),
//!    `Peer`, `Device`, `Interface`, `Location`, `EndpointName`; each is
//!    reduced to its endpoint (`PJSIP/1001-0000002a` → `1001`,
//!    `Local/1001@from-queue-0000abcd;1` → `1001`). An event naming no
//!    channel at all uses its `Exten` (`ExtensionStatus`); an event with
//!    neither (`FullyBooted`, `Reload`, `Shutdown`) passes.
//! 3. **Classes** (the `Events:` header of the client's `Login`, or a later
//!    `Events` action): as Asterisk, `on`/`yes`/`true` = all, `off`/`no` =
//!    none, a number is a bit mask, otherwise a comma list of classes
//!    (`call,agent`); matched against the event's `Privilege:` header
//!    (`call,all` is class `call`). An event without `Privilege` passes any
//!    mask but `off`.
//!
//! Responses and list items of the client's own actions are not filtered:
//! the action allow-list decides what a client may ask for.

use crate::ami::message::is_no_value;
use crate::ami::AmiMessage;
use crate::normalize::channel::{parse_channel, ParsedChannel};
use crate::rules::NumberPattern;
use crate::yaml::{Path as At, Problem};

/// Asterisk's event classes, in the order of their bits
/// (`EVENT_FLAG_SYSTEM` = bit 0 …, `include/asterisk/manager.h`).
const CLASSES: &[(&str, u32)] = &[
    ("system", 1 << 0),
    ("call", 1 << 1),
    ("log", 1 << 2),
    ("verbose", 1 << 3),
    ("command", 1 << 4),
    ("agent", 1 << 5),
    ("user", 1 << 6),
    ("config", 1 << 7),
    ("dtmf", 1 << 8),
    ("reporting", 1 << 9),
    ("cdr", 1 << 10),
    ("dialplan", 1 << 11),
    ("originate", 1 << 12),
    ("agi", 1 << 13),
    ("cc", 1 << 15),
    ("aoc", 1 << 16),
    ("test", 1 << 17),
    ("security", 1 << 18),
    ("message", 1 << 30),
];

/// Every class (`all`, `on`).
pub const ALL: u32 = i32::MAX as u32;

/// A session's event class mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMask(pub u32);

impl EventMask {
    /// Parses an `Events:`/`EventMask:` value the way Asterisk's
    /// `strings_to_mask` does; `None` for an empty value (Asterisk: "invalid").
    pub fn parse(v: &str) -> Option<EventMask> {
        let v = v.trim();
        if v.is_empty() {
            return None;
        }
        if v.bytes().all(|b| b.is_ascii_digit()) {
            return Some(EventMask(v.parse::<u32>().unwrap_or(ALL)));
        }
        let lc = v.to_ascii_lowercase();
        if matches!(lc.as_str(), "no" | "false" | "n" | "f" | "0" | "off") {
            return Some(EventMask(0));
        }
        if matches!(lc.as_str(), "yes" | "true" | "y" | "t" | "on") {
            return Some(EventMask(ALL));
        }
        let mut bits = 0;
        for word in lc.split(',').map(str::trim) {
            if word == "all" {
                bits |= ALL;
            } else if let Some((_, b)) = CLASSES.iter().find(|(n, _)| *n == word) {
                bits |= b;
            }
        }
        Some(EventMask(bits))
    }

    /// Whether an event with this `Privilege:` value passes.
    pub fn allows(&self, privilege: Option<&str>) -> bool {
        if self.0 == 0 {
            return false;
        }
        if self.0 == ALL {
            return true;
        }
        let Some(p) = privilege else {
            return true;
        };
        let mut bits = 0;
        for word in p.split(',').map(str::trim) {
            if let Some((_, b)) = CLASSES.iter().find(|(n, _)| n.eq_ignore_ascii_case(word)) {
                bits |= b;
            }
        }
        // An event of no known class (only `all`): sent to any non-empty mask.
        bits == 0 || bits & self.0 != 0
    }

    /// True unless events are off.
    pub fn is_on(&self) -> bool {
        self.0 != 0
    }
}

/// A user's event filter.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Lower-case names; a trailing `*` is a prefix. `None`: every event.
    names: Option<Vec<String>>,
    /// `None`: every extension.
    extensions: Option<Vec<NumberPattern>>,
}

impl EventFilter {
    /// Compiles `events:` and `extensions:`, pushing a problem per mistake.
    pub fn build(
        names: Option<&[String]>,
        extensions: Option<&[String]>,
        at_names: &At,
        at_ext: &At,
        errors: &mut Vec<Problem>,
    ) -> Self {
        let mut f = EventFilter::default();
        if let Some(list) = names {
            let mut out = Vec::new();
            for (i, n) in list.iter().enumerate() {
                let n = n.trim();
                if n == "*" {
                    out.clear();
                    f.names = None;
                    return Self::with_extensions(f, extensions, at_ext, errors);
                }
                let stem = n.strip_suffix('*').unwrap_or(n);
                if stem.is_empty()
                    || !stem
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    errors.push(
                        Problem::new(at_names.index(i), format!("{n:?} is not an event name"))
                            .hint("e.g. Newchannel, Hangup, \"Queue*\", or \"*\" for all"),
                    );
                    continue;
                }
                out.push(n.to_ascii_lowercase());
            }
            f.names = Some(out);
        }
        Self::with_extensions(f, extensions, at_ext, errors)
    }

    fn with_extensions(
        mut f: EventFilter,
        extensions: Option<&[String]>,
        at: &At,
        errors: &mut Vec<Problem>,
    ) -> Self {
        if let Some(list) = extensions {
            let mut out = Vec::new();
            for (i, e) in list.iter().enumerate() {
                match NumberPattern::compile(e.trim()) {
                    Ok(p) => out.push(p),
                    Err(msg) => errors.push(
                        Problem::new(at.index(i), format!("{e:?}: {msg}"))
                            .hint("an extension (1001) or a pattern (_10XX, /^2\\d{3}$/)"),
                    ),
                }
            }
            f.extensions = Some(out);
        }
        f
    }

    /// A filter from already valid parts (tests).
    pub fn new(names: Option<&[&str]>, extensions: Option<&[&str]>) -> Self {
        EventFilter {
            names: names.map(|l| l.iter().map(|n| n.to_ascii_lowercase()).collect()),
            extensions: extensions.map(|l| {
                l.iter()
                    .filter_map(|e| NumberPattern::compile(e).ok())
                    .collect()
            }),
        }
    }

    /// Whether the name and extension parts let `event` through.
    pub fn allows(&self, event: &AmiMessage) -> bool {
        let Some(name) = event.event() else {
            return false;
        };
        if let Some(names) = &self.names {
            let lc = name.to_ascii_lowercase();
            let hit = names.iter().any(|n| match n.strip_suffix('*') {
                Some(prefix) => lc.starts_with(prefix),
                None => *n == lc,
            });
            if !hit {
                return false;
            }
        }
        match &self.extensions {
            None => true,
            Some(patterns) => {
                let mut any = false;
                for e in subjects(event) {
                    any = true;
                    if patterns.iter().any(|p| p.is_match(&e)) {
                        return true;
                    }
                }
                !any
            }
        }
    }
}

/// True for headers whose value names a channel or device.
fn is_channel_key(k: &str) -> bool {
    let lc = k.to_ascii_lowercase();
    lc.ends_with("channel")
        || matches!(
            lc.as_str(),
            "channel1" | "channel2" | "peer" | "device" | "interface" | "location" | "endpointname"
        )
}

/// The endpoints (extensions) an event is about.
pub fn subjects(event: &AmiMessage) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (k, v) in event.fields() {
        let v = v.trim();
        if is_no_value(v) || !is_channel_key(k) {
            continue;
        }
        let e = if v.contains('/') {
            match parse_channel(v) {
                ParsedChannel::Device { endpoint, .. } => endpoint,
                ParsedChannel::Local { exten, .. } => exten,
                ParsedChannel::Placeholder => continue,
            }
        } else {
            v.to_string()
        };
        if !out.contains(&e) {
            out.push(e);
        }
    }
    if out.is_empty() {
        if let Some(x) = event.get("Exten") {
            out.push(x.trim().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(pairs: &[(&str, &str)]) -> AmiMessage {
        AmiMessage::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn masks_like_asterisk() {
        assert_eq!(EventMask::parse("on"), Some(EventMask(ALL)));
        assert_eq!(EventMask::parse("off"), Some(EventMask(0)));
        assert_eq!(EventMask::parse(""), None);
        assert_eq!(EventMask::parse("1"), Some(EventMask(1)));
        assert_eq!(EventMask::parse("call,agent"), Some(EventMask(2 | 32)));
        let call = EventMask::parse("call").expect("mask");
        assert!(call.allows(Some("call,all")));
        assert!(!call.allows(Some("dialplan,all")));
        assert!(call.allows(None));
        assert!(!EventMask(0).allows(None));
        assert!(EventMask(ALL).allows(Some("security,all")));
    }

    #[test]
    fn names_and_globs() {
        let f = EventFilter::new(Some(&["Newchannel", "queue*"]), None);
        assert!(f.allows(&ev(&[("Event", "newchannel")])));
        assert!(f.allows(&ev(&[("Event", "QueueCallerJoin")])));
        assert!(!f.allows(&ev(&[("Event", "Hangup")])));
        assert!(!f.allows(&ev(&[("Response", "Success")])));
    }

    #[test]
    fn extensions_by_channel() {
        let f = EventFilter::new(None, Some(&["1001", "_20XX"]));
        assert!(f.allows(&ev(&[
            ("Event", "Newchannel"),
            ("Channel", "PJSIP/1001-0000002a")
        ])));
        assert!(!f.allows(&ev(&[
            ("Event", "Newchannel"),
            ("Channel", "PJSIP/1002-0000002b")
        ])));
        // Either side of a dial.
        assert!(f.allows(&ev(&[
            ("Event", "DialBegin"),
            ("Channel", "PJSIP/trunk-00000001"),
            ("DestChannel", "SIP/2005-00000002"),
        ])));
        assert!(f.allows(&ev(&[
            ("Event", "Hangup"),
            ("Channel", "Local/1001@from-queue-0000abcd;1")
        ])));
        assert!(f.allows(&ev(&[("Event", "PeerStatus"), ("Peer", "PJSIP/1001")])));
        assert!(f.allows(&ev(&[("Event", "ContactStatus"), ("EndpointName", "1001")])));
        assert!(f.allows(&ev(&[
            ("Event", "ExtensionStatus"),
            ("Exten", "2001"),
            ("Context", "x")
        ])));
        assert!(!f.allows(&ev(&[("Event", "ExtensionStatus"), ("Exten", "3001")])));
        // About no channel at all: passes.
        assert!(f.allows(&ev(&[("Event", "FullyBooted")])));
        // `<unknown>` names nothing.
        assert!(f.allows(&ev(&[("Event", "X"), ("BridgedChannel", "<unknown>")])));
    }
}
