//! The headers [`canonicalize`](super::canonical::canonicalize) reads,
//! found in one pass over an event.
//!
//! An event of Asterisk 12+ has 15–40 headers and canonicalizing it asks
//! for up to 30 of them (the channel block, its `Dest*` copy, a few
//! event-specific ones); looking each up on its own scans the headers
//! once per key. [`Fields`] scans them once, at the first question: each
//! header's length and last letter (the message's key tag; a header whose
//! tag matches no known key is passed over without reading its text, though
//! on real events most headers do match one) pick the few known keys it
//! can be (tables built at compile time), and the first header of each
//! key wins, as
//! [`AmiMessage::get_raw`] has it. [`Fields::get`] then is
//! [`AmiMessage::get`] of that header (trimmed, AMI's "no value"
//! spellings absent), without a search: the same answers for every key
//! (a unit test compares them on every event of every capture).

use std::cell::Cell;

use crate::ami::message::is_no_value;
use crate::ami::AmiMessage;

macro_rules! keys {
    ($($key:ident = $name:literal,)*) => {
        /// A header the normalizer reads (its canonical spelling is in
        /// [`NAMES`]; matched ignoring ASCII case).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub(crate) enum Key {
            $(
                #[doc = $name]
                $key,
            )*
        }

        /// Every key's name, in [`Key`] order.
        pub(crate) const NAMES: &[&str] = &[$($name,)*];

        /// Every key, in order.
        #[cfg(test)]
        const KEYS: &[Key] = &[$(Key::$key,)*];
    };
}

keys! {
    Uniqueid = "Uniqueid",
    Channel = "Channel",
    Linkedid = "Linkedid",
    ChannelState = "ChannelState",
    ChannelStateDesc = "ChannelStateDesc",
    State = "State",
    CallerIdNum = "CallerIDNum",
    CallerId = "CallerID",
    CallerIdName = "CallerIDName",
    ConnectedLineNum = "ConnectedLineNum",
    ConnectedLineName = "ConnectedLineName",
    Context = "Context",
    Exten = "Exten",
    Extension = "Extension",
    DestUniqueid = "DestUniqueid",
    DestChannel = "DestChannel",
    DestLinkedid = "DestLinkedid",
    DestChannelState = "DestChannelState",
    DestChannelStateDesc = "DestChannelStateDesc",
    DestState = "DestState",
    DestCallerIdNum = "DestCallerIDNum",
    DestCallerId = "DestCallerID",
    DestCallerIdName = "DestCallerIDName",
    DestConnectedLineNum = "DestConnectedLineNum",
    DestConnectedLineName = "DestConnectedLineName",
    DestContext = "DestContext",
    DestExten = "DestExten",
    DestExtension = "DestExtension",
    DialString = "DialString",
    DialStatus = "DialStatus",
    SubEvent = "SubEvent",
    SrcUniqueId = "SrcUniqueID",
    Source = "Source",
    Destination = "Destination",
    Bridgestate = "Bridgestate",
    Uniqueid1 = "Uniqueid1",
    Channel1 = "Channel1",
    Uniqueid2 = "Uniqueid2",
    Channel2 = "Channel2",
    LocalOneUniqueid = "LocalOneUniqueid",
    LocalOneChannel = "LocalOneChannel",
    LocalTwoUniqueid = "LocalTwoUniqueid",
    LocalTwoChannel = "LocalTwoChannel",
    Clone = "Clone",
    Original = "Original",
    TargetUniqueid = "TargetUniqueid",
    TargetChannel = "TargetChannel",
    Oldname = "Oldname",
    Newname = "Newname",
    Queue = "Queue",
    Interface = "Interface",
    ChannelCalling = "ChannelCalling",
    DestinationChannel = "DestinationChannel",
    AgentCalled = "AgentCalled",
    BridgedChannel = "BridgedChannel",
    Cause = "Cause",
    ActionId = "ActionID",
    Response = "Response",
    Reason = "Reason",
}

const N: usize = NAMES.len();
const _: () = assert!(N <= 64, "one bit per key in a u64");

/// Keys are shorter than this.
const MAX_LEN: usize = 32;

/// The slot of a key of length `len` (< [`MAX_LEN`]) whose last byte,
/// lower-cased, is `last`.
#[inline]
const fn slot(len: usize, last: u8) -> usize {
    (len << 5) | (last & 31) as usize
}

/// Per slot, the keys that fall in it (one bit per [`Key`]).
static SLOTS: [u64; MAX_LEN * 32] = {
    let mut t = [0u64; MAX_LEN * 32];
    let mut i = 0;
    while i < N {
        let b = NAMES[i].as_bytes();
        assert!(!b.is_empty() && b.len() < MAX_LEN);
        t[slot(b.len(), b[b.len() - 1].to_ascii_lowercase())] |= 1 << i;
        i += 1;
    }
    t
};

/// Per key length, the last bytes (`& 31`) of the keys of that length: a
/// header whose tag misses here is no key, and its text is never read.
static LAST: [u32; MAX_LEN] = {
    let mut t = [0u32; MAX_LEN];
    let mut i = 0;
    while i < N {
        let b = NAMES[i].as_bytes();
        t[b.len()] |= 1 << (b[b.len() - 1].to_ascii_lowercase() & 31);
        i += 1;
    }
    t
};

/// Whether a header of this length and last byte (lower-cased) may be a key.
#[inline]
fn may_be_key(len: usize, last: u8) -> bool {
    len < MAX_LEN && LAST[len] & (1 << (last & 31)) != 0
}

/// The first header of each [`Key`] in one event, as received, read on
/// first use (an event nobody asks about costs nothing) and in place.
pub(crate) struct Fields<'a> {
    m: &'a AmiMessage,
    read: Cell<bool>,
    raw: [Cell<Option<&'a str>>; N],
}

impl<'a> Fields<'a> {
    /// The fields of `m`, not read yet.
    pub(crate) fn new(m: &'a AmiMessage) -> Self {
        Self {
            m,
            read: Cell::new(false),
            raw: [const { Cell::new(None) }; N],
        }
    }

    /// Reads the headers once: those whose tag may be a key are compared
    /// with the keys of their slot not seen yet.
    #[inline(never)]
    fn read(&self) {
        self.read.set(true);
        // Keys not seen yet: a later header of a key seen is skipped.
        let mut missing: u64 = if N == 64 { u64::MAX } else { (1 << N) - 1 };
        for (_, k, v) in self.m.fields_where(may_be_key) {
            let kb = k.as_bytes();
            let Some(&last) = kb.last() else { continue };
            let mut cand = SLOTS[slot(kb.len(), last.to_ascii_lowercase())] & missing;
            while cand != 0 {
                let i = cand.trailing_zeros() as usize;
                cand &= cand - 1;
                // Most headers come spelled as the key is: compared as
                // bytes first (whole words), then ignoring case.
                let name = NAMES[i].as_bytes();
                if name == kb || name.eq_ignore_ascii_case(kb) {
                    self.raw[i].set(Some(v));
                    missing &= !(1 << i);
                    break;
                }
            }
        }
    }

    #[inline]
    fn raw(&self, key: Key) -> Option<&'a str> {
        if !self.read.get() {
            self.read();
        }
        self.raw[key as usize].get()
    }

    /// [`AmiMessage::get`] of `key`: the first value, trimmed; `None`
    /// when absent, empty or a "no value" spelling.
    #[inline]
    pub(crate) fn get(&self, key: Key) -> Option<&'a str> {
        self.raw(key).map(trim).filter(|v| !is_no_value(v))
    }

    /// [`AmiMessage::has`]: the key is present, whatever its value.
    #[inline]
    pub(crate) fn has(&self, key: Key) -> bool {
        self.raw(key).is_some()
    }
}

/// `str::trim`, without its Unicode search when the value starts and
/// ends with a visible ASCII character (nearly every AMI value).
#[inline]
pub(crate) fn trim(v: &str) -> &str {
    let solid = |b: u8| b.is_ascii() && !matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
    match v.as_bytes() {
        [f, .., l] if solid(*f) && solid(*l) => v,
        [b] if solid(*b) => v,
        _ => v.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_one_key() {
        for (i, a) in NAMES.iter().enumerate() {
            for b in &NAMES[i + 1..] {
                assert!(!a.eq_ignore_ascii_case(b), "{a} twice");
            }
        }
    }

    #[test]
    fn the_fast_trim_is_str_trim() {
        for b in 0u8..=127 {
            assert_eq!(
                (b as char).is_whitespace(),
                (b as char).to_string().trim().is_empty(),
            );
        }
        for v in [
            "",
            " ",
            "a",
            " a",
            "a ",
            "\u{a0}a",
            "a\u{a0}",
            "\u{b}x",
            "x\u{c}",
            "1001",
            "\u{3000}",
            "é",
            " é ",
            "<unknown>",
            "\r\n",
        ] {
            assert_eq!(trim(v), v.trim(), "{v:?}");
        }
    }

    /// The same answers as the message's own lookups, for every key, on
    /// every event of every capture (and on repeated, empty, "no value"
    /// and differently cased headers).
    #[test]
    fn the_same_answers_as_the_message_lookups() {
        let check = |m: &AmiMessage| {
            let f = Fields::new(m);
            for (i, name) in NAMES.iter().enumerate() {
                let key = KEYS[i];
                assert_eq!(f.get(key), m.get(name), "{name} in {m:?}");
                assert_eq!(f.has(key), m.has(name), "{name} in {m:?}");
            }
        };
        check(&AmiMessage::from_pairs([
            ("Event", "Newchannel"),
            ("UNIQUEID", " 1.1 "),
            ("Uniqueid", "1.2"),
            ("channel", "<unknown>"),
            ("Channel", "SIP/1-1"),
            ("Exten", ""),
            ("Linkedid", "\u{a0}x"),
            ("destchannelstatedesc", "Up"),
            ("", "x"),
            ("Reason", "unknown"),
        ]));
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ami");
        let mut seen = 0;
        for dir in std::fs::read_dir(&root).unwrap() {
            let dir = dir.unwrap().path();
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            for p in files {
                let p = p.unwrap().path();
                if p.extension().is_none_or(|e| e != "ami") {
                    continue;
                }
                let bytes = std::fs::read(&p).unwrap();
                let mut codec = crate::ami::AmiCodec::new();
                let mut buf = bytes::BytesMut::from(&bytes[..]);
                while let Ok(Some(frame)) =
                    tokio_util::codec::Decoder::decode_eof(&mut codec, &mut buf)
                {
                    if let crate::ami::AmiFrame::Message(m) = frame {
                        check(&m);
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen > 1000, "{seen} events");
    }
}
