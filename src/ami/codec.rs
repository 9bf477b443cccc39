//! AMI framing: a [`tokio_util::codec::Decoder`] turning the raw manager byte
//! stream into [`AmiFrame`]s.
//!
//! # Framing rules
//!
//! The codec frames on **bytes** and only decodes text at the very end, so a
//! split UTF-8 sequence, a Latin-1/CP1251 caller name or plain binary noise
//! never produces an error.
//!
//! * **Lines** end in LF. A single CR right before the LF (the normal CRLF) is
//!   stripped; bare LF is accepted everywhere.
//! * **Banner.** The first non-empty line of a stream is the greeting
//!   (`Asterisk Call Manager/9.0.0`) when it contains no `:` or starts with
//!   `Asterisk Call Manager/`. It is a single line with *no* blank line after
//!   it and becomes [`AmiFrame::Banner`] (without its line end). If the first
//!   line does not look like a banner it is parsed as the first line of a
//!   packet. [`AmiCodec::without_banner`] disables the `:`-less heuristic, for
//!   streams that start mid-way. At any time, a line starting with
//!   `Asterisk Call Manager/` that would open a new packet is also reported as
//!   a banner (two captures concatenated, a proxy reconnecting upstream).
//! * **Packets** are lines ended by an empty line. Each line is split at its
//!   first `:`; the key is trimmed of ASCII whitespace, exactly **one** space
//!   after the colon is removed and the rest of the value is kept verbatim
//!   (leading/trailing spaces included; it may be empty, as in `Exten: `).
//!   A line without `:` is kept as a field with the key `""` and the whole line
//!   as value, so no data is dropped. Repeated keys are kept in wire order.
//!   Keys and values are decoded with [`String::from_utf8_lossy`] (a
//!   packet that is valid UTF-8, the usual case, is taken as it is).
//! * Empty lines between packets (any number) produce no frame.
//! * **Legacy command output** (Asterisk ≤ 13): a packet whose *first* line is
//!   `Response: Follows` (key and value compared case-insensitively) goes on
//!   with header lines for as long as they are `Privilege:`, `ActionID:` or
//!   `Message:` fields; every following line is raw CLI text (bare LF, possibly
//!   empty lines and `:`) up to a line that *ends* with `--END COMMAND--`
//!   (the marker may directly follow the last line of text:
//!   `last line--END COMMAND--`). The text before the marker, lines joined
//!   with `\n` (a CR before an LF is dropped there too), without the newline
//!   preceding the marker, becomes the message body ([`AmiMessage::body`]);
//!   body lines never become fields. After the marker the packet
//!   continues as a normal packet until its blank line. Asterisk 14+ answers
//!   `Command` with `Response: Success` and one `Output:` header per line of
//!   output: that is an ordinary packet with a repeated `Output` key.
//!
//! # Limits and resynchronisation
//!
//! * **Maximum packet size** ([`AmiCodec::DEFAULT_MAX_PACKET`] = 1 MiB,
//!   [`AmiCodec::with_max_packet`]): the bytes of one packet, line ends
//!   included, the terminating empty line excluded. A `Follows` body (all its
//!   lines, empty ones included) counts towards the same limit. As soon as the
//!   limit is crossed (even in the middle of a line that is still arriving)
//!   the partial packet is dropped and the codec switches to *discard* mode:
//!   it throws incoming bytes away as they arrive, keeping at most 16 bytes
//!   of the current line (to recognise the end markers), until the next
//!   packet boundary: the next empty line, or for a `Response: Follows`
//!   packet the `--END COMMAND--` marker and then the next empty line. It
//!   then yields [`AmiFrame::Skipped`] with [`SkipReason::Oversized`] and
//!   `bytes` = every byte of the dropped packet including its terminating
//!   empty line, and carries on with the next packet. Memory therefore stays
//!   bounded by the limit plus one read, whatever the size of the bad packet.
//!   A `Follows` packet whose marker never arrives is discarded until a
//!   marker does (or the stream ends).
//!   An oversized first line is handled the same way (it is not a banner).
//! * **Garbage**: a complete packet without a single valid `Key: Value` line
//!   (a valid key is non-empty after trimming and made of printable ASCII
//!   and spaces) is not returned as a message but as [`AmiFrame::Skipped`]
//!   with [`SkipReason::Garbage`] (`bytes` counted as above).
//! * Content problems are never errors: `decode` only returns `Ok`. The
//!   `io::Error` type exists for the [`Decoder`] contract.
//! * **End of stream** ([`Decoder::decode_eof`]): an incomplete last line is
//!   accepted as a complete line, and a last packet without its empty line is
//!   still returned (a `Follows` packet cut before its marker gets the text
//!   received so far as body; a packet being discarded yields its `Skipped`).
//!
//! # Guarantees
//!
//! * The frames are identical however the stream is split into reads (byte
//!   by byte, random splits): every decision depends only on the bytes, and
//!   the size check on a partial line can only fire if it would also fire
//!   once the line is complete.
//! * Linear time: each byte is searched for a line end once (a `next_index`
//!   is kept across calls, as in tokio-util's `LinesCodec`), complete lines are
//!   consumed from the buffer immediately, so feeding one byte at a time is
//!   not quadratic.
//! * No panics on any input (no `unwrap`, no unchecked indexing).
//!
//!
//! # Ignored events
//!
//! [`AmiCodec::ignoring`] names events that are not worth building (the
//! client's noise list). A packet whose **first** line is `Event: NAME` with
//! NAME on that list (case-insensitive, surrounding spaces ignored) and whose
//! first `ActionID` header, if any, is empty, becomes [`AmiFrame::Ignored`]:
//! it is framed and size-checked like any packet, but no message is built
//! and nothing is allocated. After its first line, the lines that can only
//! be counted (neither empty nor a possible `ActionID`) are taken in runs,
//! found by one search each ([`super::skim`]), not line by line. Anything else is built normally, so a caller
//! that filters built messages by the same list sees the same stream either
//! way; the list only saves work.
//!
//! # Cost
//!
//! Complete lines are found with `memchr` and consumed from the read buffer
//! once per frame (not once per line); each field's key and value are copied
//! into one per-packet string that becomes the message (one UTF-8 validation
//! per packet; only a packet with invalid UTF-8 takes the lossy path, field
//! by field). A built message costs two allocations, an ignored or skipped
//! packet none.
//!
//! [`SkipReason`] is not re-exported by [`crate::ami`]: name it as
//! `callhook::ami::codec::SkipReason` (or just call `reason.as_str()`).

use std::borrow::Cow;
use std::{fmt, io, mem};

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::message::{is_no_value, Span};
use super::{skim, AmiMessage};

/// The start of the greeting line.
const BANNER_PREFIX: &[u8] = b"Asterisk Call Manager/";
/// The end marker of a legacy `Response: Follows` body.
const END_COMMAND: &[u8] = b"--END COMMAND--";
/// Bytes of the current line kept while discarding: the marker plus a CR.
const DISCARD_TAIL: usize = END_COMMAND.len() + 1;
/// Initial number of fields of a packet (a typical event has 10–25).
const FIELDS_HINT: usize = 32;
/// A span vector grown past this many fields is released, not reused.
const KEEP_FIELDS: usize = 4096;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmiFrame {
    /// The one-line greeting, e.g. `Asterisk Call Manager/9.0.0` (no line end).
    Banner(String),
    /// One packet (event, response, list item).
    Message(AmiMessage),
    /// An unsolicited event on the codec's ignore list
    /// ([`AmiCodec::ignoring`]); it was not built.
    Ignored {
        /// The list entry it matched (the list's spelling).
        event: &'static str,
        /// Bytes of the packet, line ends and the terminating empty line
        /// included.
        bytes: usize,
    },
    /// A packet that was dropped; the stream resynchronised after it.
    Skipped {
        /// Why it was dropped.
        reason: SkipReason,
        /// Bytes dropped, line ends and the terminating empty line included.
        bytes: usize,
    },
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Larger than the configured maximum packet size.
    Oversized,
    /// No valid `Key: Value` line in it.
    Garbage,
}

impl SkipReason {
    /// A stable lower-case name (metrics labels, logs).
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::Oversized => "oversized",
            SkipReason::Garbage => "garbage",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the decoder is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waiting for the first non-empty line (possibly the banner).
    Banner,
    /// Between packets (`lines == 0`) or inside a normal packet.
    Headers,
    /// After `Response: Follows`: `Privilege`/`ActionID`/`Message` headers.
    FollowsHeaders,
    /// Raw CLI text until `--END COMMAND--`.
    FollowsBody,
    /// Dropping an oversized packet. `follows`: still waiting for the marker.
    Discard { follows: bool },
}

/// The AMI framing codec. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct AmiCodec {
    max_packet: usize,
    mode: Mode,
    /// Where the line being read starts in the buffer.
    line_start: usize,
    /// Bytes of the buffer already searched for a line end.
    next_index: usize,
    /// Where the packet in progress starts in the buffer: its lines stay
    /// there until it is complete.
    packet_start: usize,
    /// Event names not to build (see [`AmiCodec::ignoring`]).
    ignore: &'static [&'static str],
    /// The fields of the packet in progress, relative to `packet_start`.
    spans: Vec<Span>,
    /// Fields were not recorded (an ignored event, so far): found again
    /// from the packet's text if it is built after all.
    spans_skipped: bool,
    /// Lines of the current packet (0: between packets; a run of an
    /// ignored event's lines taken at once counts as one).
    lines: usize,
    /// Bytes of the current packet (line ends included).
    packet_bytes: usize,
    /// The current packet has at least one valid `Key: Value` line.
    valid: bool,
    /// The current packet is an event on the ignore list (so far).
    ignored: Option<&'static str>,
    /// The current packet's first `ActionID` header was seen.
    action_id_seen: bool,
    /// Raw `Follows` body collected so far.
    body: Vec<u8>,
    /// Lines in `body`.
    body_lines: usize,
    /// The finished `Follows` body (the marker was seen).
    finished_body: Option<String>,
    /// Discard mode: bytes dropped so far.
    skipped: usize,
    /// Discard mode: part of the current line was dropped (it is not empty).
    dirty: bool,
    /// Bytes searched for a line end so far (tests check it never exceeds
    /// the bytes received: nothing is searched twice).
    #[cfg(test)]
    scanned: usize,
}

impl AmiCodec {
    /// Default maximum packet size: 1 MiB.
    pub const DEFAULT_MAX_PACKET: usize = 1024 * 1024;

    /// A codec expecting the banner line first, with a 1 MiB packet limit.
    pub fn new() -> Self {
        Self::with_max_packet(Self::DEFAULT_MAX_PACKET)
    }

    /// A codec expecting the banner line first, with the given packet limit
    /// (bytes, line ends included).
    pub fn with_max_packet(max: usize) -> Self {
        Self {
            max_packet: max,
            mode: Mode::Banner,
            line_start: 0,
            next_index: 0,
            packet_start: 0,
            ignore: &[],
            spans: Vec::with_capacity(FIELDS_HINT),
            spans_skipped: false,
            lines: 0,
            packet_bytes: 0,
            valid: false,
            ignored: None,
            action_id_seen: false,
            body: Vec::new(),
            body_lines: 0,
            finished_body: None,
            skipped: 0,
            dirty: false,
            #[cfg(test)]
            scanned: 0,
        }
    }

    /// Does not expect a banner: for streams that start mid-way. (A line
    /// starting with `Asterisk Call Manager/` where a packet would start is
    /// still reported as a banner.)
    pub fn without_banner(mut self) -> Self {
        if self.mode == Mode::Banner {
            self.mode = Mode::Headers;
        }
        self
    }

    /// Unsolicited events named in `events` (case-insensitive) become
    /// [`AmiFrame::Ignored`] instead of messages; see the
    /// [module documentation](self#ignored-events).
    pub fn ignoring(mut self, events: &'static [&'static str]) -> Self {
        self.ignore = events;
        self
    }

    /// The configured maximum packet size.
    pub fn max_packet(&self) -> usize {
        self.max_packet
    }

    /// Forgets the packet in progress (not the mode).
    fn reset_packet(&mut self) {
        if self.spans.capacity() > KEEP_FIELDS {
            self.spans = Vec::with_capacity(FIELDS_HINT);
        } else {
            self.spans.clear();
        }
        self.spans_skipped = false;
        self.lines = 0;
        self.packet_bytes = 0;
        self.valid = false;
        self.ignored = None;
        self.action_id_seen = false;
        self.body = Vec::new();
        self.body_lines = 0;
        self.finished_body = None;
    }

    /// A packet is in progress: its lines are kept in the buffer.
    fn packet_open(&self) -> bool {
        self.lines > 0
            && matches!(
                self.mode,
                Mode::Headers | Mode::FollowsHeaders | Mode::FollowsBody
            )
    }

    /// Drops the packet in progress and starts discarding.
    fn enter_discard(&mut self, follows: bool) {
        self.skipped = self.packet_bytes;
        self.dirty = false;
        self.reset_packet();
        self.mode = Mode::Discard { follows };
    }

    /// Would `extra` more bytes push the current packet over the limit?
    fn too_big(&self, extra: usize) -> bool {
        self.packet_bytes.saturating_add(extra) > self.max_packet
    }

    /// Records one field (`cut` of the line starting at `begin` in the
    /// buffer), unless the packet is being ignored.
    #[inline]
    fn record(&mut self, begin: usize, line: &[u8], cut: &Cut) {
        if self.ignored.is_some() {
            self.spans_skipped = true;
            return;
        }
        let at = begin - self.packet_start;
        let key = line.get(cut.key.clone()).unwrap_or_default();
        self.spans.push(Span::new(
            (at + cut.key.start, at + cut.key.end),
            (at + cut.value, at + line.len()),
            key,
        ));
    }

    /// Builds the packet in progress from its text (`text` starts at
    /// `packet_start`).
    fn build(&mut self, text: &[u8]) -> AmiMessage {
        if self.spans_skipped {
            self.spans = scan_fields(text);
        }
        let mut msg = match std::str::from_utf8(text) {
            Ok(t) => AmiMessage::from_parts(t.to_owned(), self.spans.clone()),
            Err(_) => lossy_message(text, &self.spans),
        };
        if let Some(body) = self.finished_body.take() {
            msg.set_body(body);
        }
        msg
    }

    /// Ends the current packet. `text_end`: where its text ends in `buf`;
    /// `term_len`: bytes of its terminating line.
    fn finish_packet(&mut self, buf: &[u8], text_end: usize, term_len: usize) -> AmiFrame {
        let bytes = self.packet_bytes + term_len;
        if matches!(self.mode, Mode::FollowsHeaders | Mode::FollowsBody) && self.body_lines > 0 {
            let body = mem::take(&mut self.body);
            self.finished_body = Some(String::from_utf8_lossy(&body).into_owned());
        }
        self.mode = Mode::Headers;
        let frame = if !self.valid {
            AmiFrame::Skipped {
                reason: SkipReason::Garbage,
                bytes,
            }
        } else if let Some(event) = self.ignored {
            AmiFrame::Ignored { event, bytes }
        } else {
            let text = buf.get(self.packet_start..text_end).unwrap_or_default();
            AmiFrame::Message(self.build(text))
        };
        self.reset_packet();
        frame
    }

    /// Handles one complete line: `buf[begin..end]` (no LF; a CR may
    /// remain); `raw_len` is its length on the wire, line end included.
    fn on_line(
        &mut self,
        buf: &[u8],
        begin: usize,
        end: usize,
        raw_len: usize,
    ) -> Option<AmiFrame> {
        let line = strip_cr(buf.get(begin..end).unwrap_or_default());
        match self.mode {
            Mode::Headers => self.header_line(buf, begin, line, raw_len),
            Mode::Discard { follows } => self.discard_line(follows, line, raw_len),
            Mode::Banner => {
                if line.is_empty() {
                    return None;
                }
                if self.too_big(raw_len) {
                    self.enter_discard(false);
                    return self.discard_line(false, line, raw_len);
                }
                self.mode = Mode::Headers;
                if line.starts_with(BANNER_PREFIX) || memchr::memchr(b':', line).is_none() {
                    return Some(AmiFrame::Banner(lossy(line)));
                }
                self.header_line(buf, begin, line, raw_len)
            }
            Mode::FollowsHeaders => {
                if self.too_big(raw_len) {
                    self.enter_discard(true);
                    return self.discard_line(true, line, raw_len);
                }
                if let Some(cut) = cut_line(line) {
                    if is_follows_header(line.get(cut.key.clone()).unwrap_or_default()) {
                        self.packet_bytes += raw_len;
                        self.lines += 1;
                        self.record(begin, line, &cut);
                        return None;
                    }
                }
                self.mode = Mode::FollowsBody;
                self.body_line(line, raw_len)
            }
            Mode::FollowsBody => self.body_line(line, raw_len),
        }
    }

    /// A line of a normal packet (or between packets).
    fn header_line(
        &mut self,
        buf: &[u8],
        begin: usize,
        line: &[u8],
        raw_len: usize,
    ) -> Option<AmiFrame> {
        if line.is_empty() {
            if self.lines == 0 {
                return None;
            }
            return Some(self.finish_packet(buf, begin, raw_len));
        }
        if self.too_big(raw_len) {
            self.enter_discard(false);
            return self.discard_line(false, line, raw_len);
        }
        if self.lines == 0 {
            if line.starts_with(BANNER_PREFIX) {
                return Some(AmiFrame::Banner(lossy(line)));
            }
            self.packet_start = begin;
        }
        self.packet_bytes += raw_len;
        self.lines += 1;
        if self.ignored.is_some() && !may_be_action_id(line) {
            // An ignored event: only an ActionID could change that.
            self.spans_skipped = true;
            return None;
        }
        let Some(cut) = cut_line(line) else {
            // No colon: the whole line is the value of an empty key.
            let cut = Cut {
                key: 0..0,
                value: 0,
            };
            self.record(begin, line, &cut);
            return None;
        };
        let key = line.get(cut.key.clone()).unwrap_or_default();
        if !self.valid && is_valid_key(key) {
            self.valid = true;
        }
        if self.lines == 1 {
            self.first_field(key, line.get(cut.value..).unwrap_or_default());
        } else if self.ignored.is_some()
            && !self.action_id_seen
            && key.eq_ignore_ascii_case(b"ActionID")
        {
            // As `AmiMessage::action_id`: the first one, if meaningful.
            self.action_id_seen = true;
            let value = line.get(cut.value..).unwrap_or_default();
            if !is_no_value(String::from_utf8_lossy(value).trim()) {
                self.ignored = None;
            }
        }
        self.record(begin, line, &cut);
        None
    }

    /// The hot path of an ignored event (most of a real stream's lines):
    /// takes a line of it that [`Self::header_line`] would only count —
    /// not its end, not a possible `ActionID`, not over the limit — and
    /// says so; any other line is left to [`Self::on_line`].
    #[inline]
    fn skips_line(&mut self, line: &[u8], raw_len: usize) -> bool {
        if self.ignored.is_none() || self.mode != Mode::Headers {
            return false;
        }
        let line = strip_cr(line);
        if line.is_empty() || may_be_action_id(line) || self.too_big(raw_len) {
            return false;
        }
        self.packet_bytes += raw_len;
        self.lines += 1;
        self.spans_skipped = true;
        true
    }

    /// The short path of an ignored event's lines: takes, at once, the run
    /// of its complete lines from `pos` on that [`Self::header_line`]
    /// would only count (see [`super::skim`]), searching only bytes not
    /// searched yet and no further than the packet limit allows (a line
    /// that would cross it is left to the line-by-line path, which knows
    /// what to do). Returns the run's length.
    #[inline]
    fn plain_run(&mut self, buf: &[u8], pos: usize) -> Option<usize> {
        if self.ignored.is_none()
            || self.mode != Mode::Headers
            || self.lines == 0
            || self.next_index > pos
        {
            return None;
        }
        // The line end before `pos` (of this packet's last line) starts
        // the search, so the line at `pos` is judged too.
        let room = self.max_packet.saturating_sub(self.packet_bytes);
        let end = buf.len().min(pos.saturating_add(room));
        let rest = buf.get(pos.checked_sub(1)?..end)?;
        if rest.first() != Some(&b'\n') {
            return None;
        }
        let run = skim::plain_run(rest)?;
        // Searched: the run, and when no line ended it, the rest too (it
        // holds no line end).
        let searched = if run.ended { run.len } else { rest.len() - 1 };
        self.next_index = self.next_index.max(pos + searched);
        #[cfg(test)]
        {
            self.scanned += searched;
        }
        self.packet_bytes += run.len;
        self.lines += 1;
        self.spans_skipped = true;
        Some(run.len)
    }

    /// The first line of a packet: `Response: Follows`, or an ignored event.
    fn first_field(&mut self, key: &[u8], value: &[u8]) {
        if key.eq_ignore_ascii_case(b"Response") {
            if String::from_utf8_lossy(value)
                .trim()
                .eq_ignore_ascii_case("Follows")
            {
                self.mode = Mode::FollowsHeaders;
            }
        } else if !self.ignore.is_empty() && key.eq_ignore_ascii_case(b"Event") {
            let name = value.trim_ascii();
            self.ignored = self
                .ignore
                .iter()
                .find(|n| n.as_bytes().eq_ignore_ascii_case(name))
                .copied();
        }
    }

    /// A line of a `Follows` body (possibly carrying the end marker).
    fn body_line(&mut self, line: &[u8], raw_len: usize) -> Option<AmiFrame> {
        if self.too_big(raw_len) {
            self.enter_discard(true);
            return self.discard_line(true, line, raw_len);
        }
        self.packet_bytes += raw_len;
        self.lines += 1;
        match line.strip_suffix(END_COMMAND) {
            Some(text) => {
                if !text.is_empty() {
                    self.push_body_line(text);
                }
                let body = mem::take(&mut self.body);
                self.body_lines = 0;
                self.finished_body = Some(String::from_utf8_lossy(&body).into_owned());
                self.mode = Mode::Headers;
            }
            None => self.push_body_line(line),
        }
        None
    }

    fn push_body_line(&mut self, text: &[u8]) {
        if self.body_lines > 0 {
            self.body.push(b'\n');
        }
        self.body.extend_from_slice(text);
        self.body_lines += 1;
    }

    /// A complete line while discarding.
    fn discard_line(&mut self, follows: bool, line: &[u8], raw_len: usize) -> Option<AmiFrame> {
        self.skipped = self.skipped.saturating_add(raw_len);
        let dirty = mem::take(&mut self.dirty);
        if follows {
            if line.ends_with(END_COMMAND) {
                self.mode = Mode::Discard { follows: false };
            }
            return None;
        }
        if !dirty && line.is_empty() {
            self.mode = Mode::Headers;
            return Some(AmiFrame::Skipped {
                reason: SkipReason::Oversized,
                bytes: mem::take(&mut self.skipped),
            });
        }
        None
    }

    /// No complete line is left (`buf[line_start..]` is incomplete): enforce
    /// the limit, then drop from the buffer all but the packet in progress
    /// and that line (while discarding: all but its last few bytes).
    fn on_partial(&mut self, buf: &mut BytesMut) {
        let partial = buf.get(self.line_start..).unwrap_or_default();
        // A lone CR may be the start of an empty line, which is not counted.
        let pending = if partial == b"\r" { 0 } else { partial.len() };
        match self.mode {
            Mode::Banner | Mode::Headers => {
                if self.too_big(pending) {
                    self.enter_discard(false);
                }
            }
            Mode::FollowsHeaders | Mode::FollowsBody => {
                if self.too_big(pending) {
                    self.enter_discard(true);
                }
            }
            Mode::Discard { .. } => {}
        }
        let keep = if self.packet_open() {
            self.packet_start
        } else {
            self.line_start
        };
        let keep = keep.min(buf.len());
        buf.advance(keep);
        self.line_start -= keep.min(self.line_start);
        self.packet_start -= keep.min(self.packet_start);
        if let Mode::Discard { .. } = self.mode {
            if buf.len() > DISCARD_TAIL {
                let drop = buf.len() - DISCARD_TAIL;
                buf.advance(drop);
                self.skipped = self.skipped.saturating_add(drop);
                self.dirty = true;
            }
            self.line_start = 0;
        }
        self.next_index = buf.len();
    }

    /// End of stream with no complete line left: flush the packet in progress.
    fn finish_eof(&mut self, buf: &[u8]) -> Option<AmiFrame> {
        match self.mode {
            Mode::Banner => None,
            Mode::Headers if self.lines == 0 => None,
            Mode::Headers | Mode::FollowsHeaders | Mode::FollowsBody => {
                Some(self.finish_packet(buf, buf.len(), 0))
            }
            Mode::Discard { .. } => {
                self.mode = Mode::Headers;
                self.dirty = false;
                Some(AmiFrame::Skipped {
                    reason: SkipReason::Oversized,
                    bytes: mem::take(&mut self.skipped),
                })
            }
        }
    }

    /// A frame was returned: everything before `pos` is consumed.
    fn consumed(&mut self, buf: &mut BytesMut, pos: usize) {
        buf.advance(pos.min(buf.len()));
        self.line_start = 0;
        self.next_index = 0;
        self.packet_start = 0;
    }
}

impl Default for AmiCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for AmiCodec {
    type Item = AmiFrame;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<AmiFrame>, io::Error> {
        // Lines are handled where they are; the buffer is only advanced
        // once per frame (or when it holds no complete line any more).
        let mut pos = self.line_start;
        loop {
            if let Some(run) = self.plain_run(buf, pos) {
                pos += run;
                self.line_start = pos;
            }
            let from = self.next_index.max(pos);
            let rest = buf.get(from..).unwrap_or_default();
            let found = memchr::memchr(b'\n', rest);
            #[cfg(test)]
            {
                self.scanned += found.map_or(rest.len(), |i| i + 1);
            }
            match found {
                Some(offset) => {
                    let end = from + offset;
                    let begin = pos;
                    pos = end + 1;
                    self.line_start = pos;
                    self.next_index = pos;
                    if self.skips_line(buf.get(begin..end).unwrap_or_default(), pos - begin) {
                        continue;
                    }
                    if let Some(frame) = self.on_line(buf, begin, end, pos - begin) {
                        self.consumed(buf, pos);
                        return Ok(Some(frame));
                    }
                }
                None => {
                    self.on_partial(buf);
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<AmiFrame>, io::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        let begin = self.line_start;
        let end = buf.len();
        if begin < end {
            // The last line has no line end: take it as complete.
            self.line_start = end;
            self.next_index = end;
            if let Some(frame) = self.on_line(buf, begin, end, end - begin) {
                self.consumed(buf, end);
                return Ok(Some(frame));
            }
        }
        let frame = self.finish_eof(buf);
        self.consumed(buf, end);
        Ok(frame)
    }
}

/// Where a `Key: Value` line splits (offsets in the line).
struct Cut {
    /// The key, trimmed of ASCII whitespace.
    key: std::ops::Range<usize>,
    /// Where the value starts (one space after the colon skipped).
    value: usize,
}

/// Could this line be an `ActionID` header (its key, trimmed, starts with
/// `A`)?
#[inline]
fn may_be_action_id(line: &[u8]) -> bool {
    line.first()
        .is_some_and(|&b| b.eq_ignore_ascii_case(&b'a') || b.is_ascii_whitespace())
}

/// Splits at the first `:`, trims the key, skips one space after the colon.
#[inline]
fn cut_line(line: &[u8]) -> Option<Cut> {
    // Keys are short: a plain loop beats a vectorised search here.
    let colon = line.iter().position(|&b| b == b':')?;
    let raw_key = line.get(..colon).unwrap_or_default();
    let start = raw_key
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(colon);
    let end = raw_key
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    let value = if line.get(colon + 1) == Some(&b' ') {
        colon + 2
    } else {
        colon + 1
    };
    Some(Cut {
        key: start..end,
        value,
    })
}

/// A valid key: non-empty, printable ASCII and spaces.
fn is_valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.iter().all(|&b| b.is_ascii_graphic() || b == b' ')
}

/// The fields of a plain packet's text, as the codec records them (for an
/// ignored event that is built after all).
fn scan_fields(text: &[u8]) -> Vec<Span> {
    let mut spans = Vec::with_capacity(FIELDS_HINT);
    let mut at = 0;
    for raw in text.split_inclusive(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        let line = strip_cr(line);
        if !line.is_empty() {
            let cut = cut_line(line).unwrap_or(Cut {
                key: 0..0,
                value: 0,
            });
            let key = line.get(cut.key.clone()).unwrap_or_default();
            spans.push(Span::new(
                (at + cut.key.start, at + cut.key.end),
                (at + cut.value, at + line.len()),
                key,
            ));
        }
        at += raw.len();
    }
    spans
}

/// A packet whose text is not valid UTF-8: every key and value decoded
/// lossily on its own.
fn lossy_message(text: &[u8], spans: &[Span]) -> AmiMessage {
    let mut msg = AmiMessage::new();
    for s in spans {
        let (key, value) = s.ranges();
        let key = text.get(key).unwrap_or_default();
        let value = text.get(value).unwrap_or_default();
        msg.push(String::from_utf8_lossy(key), String::from_utf8_lossy(value));
    }
    msg
}

/// `Privilege`, `ActionID` or `Message`: the headers of a `Follows` response.
fn is_follows_header(key: &[u8]) -> bool {
    [&b"Privilege"[..], b"ActionID", b"Message"]
        .iter()
        .any(|k| key.eq_ignore_ascii_case(k))
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn lossy(bytes: &[u8]) -> String {
    match String::from_utf8_lossy(bytes) {
        Cow::Borrowed(s) => s.to_string(),
        Cow::Owned(s) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` in one chunk, then flushes at EOF.
    fn decode_all(mut codec: AmiCodec, input: &[u8]) -> Vec<AmiFrame> {
        decode_chunks(&mut codec, [input])
    }

    /// Feeds `chunks` one after the other (draining frames after each), then EOF.
    fn decode_chunks<'a>(
        codec: &mut AmiCodec,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<AmiFrame> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut total = 0;
        for chunk in chunks {
            total += chunk.len();
            buf.extend_from_slice(chunk);
            while let Some(f) = codec.decode(&mut buf).expect("decode never fails") {
                out.push(f);
            }
        }
        while let Some(f) = codec.decode_eof(&mut buf).expect("decode_eof never fails") {
            out.push(f);
        }
        assert!(
            codec.scanned <= total,
            "searched {} bytes of {total}: some were searched twice",
            codec.scanned
        );
        out
    }

    fn bytewise(codec: AmiCodec, input: &[u8]) -> Vec<AmiFrame> {
        let mut codec = codec;
        decode_chunks(&mut codec, input.chunks(1))
    }

    /// Decodes whole and byte by byte, asserts both agree, returns the frames.
    fn frames(codec: AmiCodec, input: &[u8]) -> Vec<AmiFrame> {
        let whole = decode_all(codec.clone(), input);
        assert_eq!(whole, bytewise(codec, input), "chunking changed the frames");
        whole
    }

    fn msg(pairs: &[(&str, &str)]) -> AmiFrame {
        AmiFrame::Message(AmiMessage::from_pairs(pairs.iter().copied()))
    }

    fn messages(frames: &[AmiFrame]) -> Vec<&AmiMessage> {
        frames
            .iter()
            .filter_map(|f| match f {
                AmiFrame::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn banner_then_packet_without_blank_line_between() {
        let input = b"Asterisk Call Manager/9.0.0\r\nResponse: Success\r\nActionID: 1\r\nMessage: Authentication accepted\r\n\r\n";
        assert_eq!(
            frames(AmiCodec::new(), input),
            vec![
                AmiFrame::Banner("Asterisk Call Manager/9.0.0".into()),
                msg(&[
                    ("Response", "Success"),
                    ("ActionID", "1"),
                    ("Message", "Authentication accepted")
                ]),
            ]
        );
    }

    #[test]
    fn banner_detection_rules() {
        // No colon: a banner whatever it says.
        assert_eq!(
            frames(AmiCodec::new(), b"Some PBX 1.0\r\nEvent: A\r\n\r\n")[0],
            AmiFrame::Banner("Some PBX 1.0".into())
        );
        // Leading empty lines are skipped.
        assert_eq!(
            frames(AmiCodec::new(), b"\r\n\nAsterisk Call Manager/1.3\r\n")[0],
            AmiFrame::Banner("Asterisk Call Manager/1.3".into())
        );
        // A first line with a colon is a packet line.
        assert_eq!(
            frames(AmiCodec::new(), b"Event: A\r\nX: 1\r\n\r\n"),
            vec![msg(&[("Event", "A"), ("X", "1")])]
        );
        // without_banner: a colon-less first line is not a banner...
        assert_eq!(
            frames(
                AmiCodec::new().without_banner(),
                b"junk\r\nEvent: A\r\n\r\n"
            ),
            vec![msg(&[("", "junk"), ("Event", "A")])]
        );
        // ...but the real greeting still is, also mid-stream (reconnect).
        let input = b"Event: A\r\n\r\nAsterisk Call Manager/9.0.0\r\nResponse: Success\r\n\r\n";
        assert_eq!(
            frames(AmiCodec::new().without_banner(), input),
            vec![
                msg(&[("Event", "A")]),
                AmiFrame::Banner("Asterisk Call Manager/9.0.0".into()),
                msg(&[("Response", "Success")]),
            ]
        );
    }

    #[test]
    fn crlf_bare_lf_and_mixed_line_ends() {
        let crlf = b"Event: Dial\r\nChannel: SIP/1001-0000000b\r\n\r\n";
        let lf = b"Event: Dial\nChannel: SIP/1001-0000000b\n\n";
        let mixed = b"Event: Dial\nChannel: SIP/1001-0000000b\r\n\n";
        let want = vec![msg(&[("Event", "Dial"), ("Channel", "SIP/1001-0000000b")])];
        for input in [&crlf[..], lf, mixed] {
            assert_eq!(frames(AmiCodec::new().without_banner(), input), want);
        }
        // Only one CR is stripped: a second one belongs to the value.
        assert_eq!(
            frames(AmiCodec::new().without_banner(), b"A: b\r\r\n\r\n"),
            vec![msg(&[("A", "b\r")])]
        );
    }

    #[test]
    fn empty_values_and_verbatim_spacing() {
        let input = b"Event: Hangup\r\nExten: \r\nReportBlock:\r\nValue:   minrtt=0;  \r\n  Key  : v\r\nURL: http://x:80/\r\n\r\n";
        assert_eq!(
            frames(AmiCodec::new().without_banner(), input),
            vec![msg(&[
                ("Event", "Hangup"),
                ("Exten", ""),
                ("ReportBlock", ""),
                ("Value", "  minrtt=0;  "),
                ("Key", "v"),
                ("URL", "http://x:80/"),
            ])]
        );
    }

    #[test]
    fn repeated_keys_keep_wire_order() {
        let input = b"Response: Success\r\nMessage: Command output follows\r\nOutput: line 1\r\nOutput: \r\nOutput: a: b\r\n\r\n";
        let f = frames(AmiCodec::new().without_banner(), input);
        let m = messages(&f);
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[0].get_all("Output").collect::<Vec<_>>(),
            ["line 1", "", "a: b"]
        );
        assert_eq!(m[0].body(), None);
    }

    #[test]
    fn line_without_colon_is_kept() {
        assert_eq!(
            frames(
                AmiCodec::new().without_banner(),
                b"Event: X\r\nno colon here\r\n\r\n"
            ),
            vec![msg(&[("Event", "X"), ("", "no colon here")])]
        );
    }

    #[test]
    fn follows_body_with_blank_lines_colons_and_marker_on_own_line() {
        let input = b"Response: Follows\r\nPrivilege: Command\r\nActionID: st-10\r\nSIP/1003!from-internal!1002\n\nName: value: x\nlast\n--END COMMAND--\r\n\r\nEvent: After\r\n\r\n";
        let f = frames(AmiCodec::new().without_banner(), input);
        assert_eq!(f.len(), 2);
        let AmiFrame::Message(m) = &f[0] else {
            panic!("{f:?}")
        };
        assert_eq!(m.get("Response"), Some("Follows"));
        assert_eq!(m.action_id(), Some("st-10"));
        assert_eq!(m.get("Privilege"), Some("Command"));
        assert_eq!(m.len(), 3, "body lines must not become fields: {m:?}");
        assert_eq!(
            m.body(),
            Some("SIP/1003!from-internal!1002\n\nName: value: x\nlast")
        );
        assert_eq!(f[1], msg(&[("Event", "After")]));
    }

    #[test]
    fn follows_marker_directly_after_text() {
        let input = b"response: follows\r\nPrivilege: Command\r\nActionID: 7\r\nline 1\nline 2--END COMMAND--\r\n\r\nEvent: After\r\n\r\n";
        let f = frames(AmiCodec::new().without_banner(), input);
        let m = messages(&f);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].body(), Some("line 1\nline 2"));
        assert_eq!(m[1].event(), Some("After"));
    }

    #[test]
    fn follows_edge_cases() {
        // Empty output, marker right after the headers.
        let f = frames(
            AmiCodec::new().without_banner(),
            b"Response: Follows\r\nPrivilege: Command\r\n--END COMMAND--\r\n\r\n",
        );
        assert_eq!(messages(&f)[0].body(), Some(""));
        // Body starting with an empty line, CRLF body lines, a header-like
        // first body line that is not Privilege/ActionID/Message.
        let f = frames(
            AmiCodec::new().without_banner(),
            b"Response: Follows\r\nActionID: 1\r\n\r\nChannel: x\r\n--END COMMAND--\n\n",
        );
        assert_eq!(f.len(), 1);
        let m = messages(&f)[0];
        assert_eq!(m.body(), Some("\nChannel: x"));
        assert_eq!(m.len(), 2);
        // Follows only counts as the first line of a packet.
        let f = frames(
            AmiCodec::new().without_banner(),
            b"Event: X\r\nResponse: Follows\r\n\r\nEvent: Y\r\n\r\n",
        );
        assert_eq!(messages(&f).len(), 2);
        // Truncated at EOF before the marker: the text so far is the body.
        let f = frames(
            AmiCodec::new().without_banner(),
            b"Response: Follows\r\nPrivilege: Command\r\nabc\ndef",
        );
        assert_eq!(messages(&f)[0].body(), Some("abc\ndef"));
    }

    #[test]
    fn oversized_packet_is_skipped_then_next_decoded() {
        let big = format!("Event: Big\r\nValue: {}\r\n\r\n", "x".repeat(200));
        let input = format!("Asterisk Call Manager/9.0.0\r\n{big}Event: Small\r\nA: 1\r\n\r\n");
        let f = frames(AmiCodec::with_max_packet(64), input.as_bytes());
        assert_eq!(
            f,
            vec![
                AmiFrame::Banner("Asterisk Call Manager/9.0.0".into()),
                AmiFrame::Skipped {
                    reason: SkipReason::Oversized,
                    bytes: big.len()
                },
                msg(&[("Event", "Small"), ("A", "1")]),
            ]
        );
        // Exactly at the limit (the terminating empty line is not counted).
        let exact = b"Event: E\r\nAbc: 0123456789\r\n\r\n";
        let f = frames(AmiCodec::with_max_packet(exact.len() - 2), exact);
        assert!(matches!(f[..], [AmiFrame::Message(_)]), "{f:?}");
        let f = frames(AmiCodec::with_max_packet(exact.len() - 3), exact);
        assert_eq!(
            f,
            vec![AmiFrame::Skipped {
                reason: SkipReason::Oversized,
                bytes: exact.len()
            }]
        );
    }

    #[test]
    fn oversized_follows_body_skipped_to_marker() {
        let body = "row: with colon\n\n".repeat(20);
        let follows = format!("Response: Follows\r\nActionID: 9\r\n{body}--END COMMAND--\r\n\r\n");
        let input = format!("{follows}Event: Next\r\n\r\n");
        let f = frames(
            AmiCodec::with_max_packet(64).without_banner(),
            input.as_bytes(),
        );
        assert_eq!(
            f,
            vec![
                AmiFrame::Skipped {
                    reason: SkipReason::Oversized,
                    bytes: follows.len()
                },
                msg(&[("Event", "Next")]),
            ]
        );
    }

    #[test]
    fn oversized_packet_is_discarded_without_buffering() {
        // 100 MiB packet arriving in 64 KiB reads: the buffer never grows.
        // With the default 1 MiB limit the partial line is kept until it
        // crosses the limit, then the buffer stays at a few bytes.
        let mut codec = AmiCodec::new().without_banner();
        let mut buf = BytesMut::new();
        let chunk = vec![b'y'; 64 * 1024];
        buf.extend_from_slice(b"Event: Huge\r\nData: ");
        let mut total = buf.len();
        for i in 0..1600 {
            buf.extend_from_slice(&chunk);
            total += chunk.len();
            assert_eq!(codec.decode(&mut buf).unwrap(), None);
            assert!(buf.len() <= AmiCodec::DEFAULT_MAX_PACKET, "{}", buf.len());
            if i >= 16 {
                assert!(buf.len() <= DISCARD_TAIL, "buffer grew to {}", buf.len());
            }
            assert!(codec.spans.len() <= 1 && codec.body.is_empty());
        }
        buf.extend_from_slice(b"\r\n\r\nEvent: Next\r\n\r\n");
        total += 4;
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(AmiFrame::Skipped {
                reason: SkipReason::Oversized,
                bytes: total
            })
        );
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(msg(&[("Event", "Next")]))
        );
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn oversized_at_eof_is_reported() {
        let input = format!("Event: A\r\nB: {}", "z".repeat(100));
        let f = frames(
            AmiCodec::with_max_packet(32).without_banner(),
            input.as_bytes(),
        );
        assert_eq!(
            f,
            vec![AmiFrame::Skipped {
                reason: SkipReason::Oversized,
                bytes: input.len()
            }]
        );
    }

    #[test]
    fn garbage_packet_is_skipped() {
        let garbage: &[u8] = b"\x00\x01\xfe\xff binary\r\n\x7f\x80\r\n\r\n";
        let mut input = b"Asterisk Call Manager/9.0.0\r\n".to_vec();
        input.extend_from_slice(garbage);
        input.extend_from_slice(b"Event: Ok\r\n\r\n: no key\r\n\r\n");
        assert_eq!(
            frames(AmiCodec::new(), &input),
            vec![
                AmiFrame::Banner("Asterisk Call Manager/9.0.0".into()),
                AmiFrame::Skipped {
                    reason: SkipReason::Garbage,
                    bytes: garbage.len()
                },
                msg(&[("Event", "Ok")]),
                AmiFrame::Skipped {
                    reason: SkipReason::Garbage,
                    bytes: 12
                },
            ]
        );
        // A binary key is not a valid header either.
        let f = frames(AmiCodec::new().without_banner(), b"\xff\x01: x\r\n\r\n");
        assert!(matches!(
            f[..],
            [AmiFrame::Skipped {
                reason: SkipReason::Garbage,
                ..
            }]
        ));
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily() {
        let input = b"Event: Newchannel\r\nCallerIDName: Jos\xe9 \xff\r\nK\xe9y: v\r\n\r\nEvent: Next\r\n\r\n";
        let f = frames(AmiCodec::new().without_banner(), input);
        assert_eq!(
            f,
            vec![
                msg(&[
                    ("Event", "Newchannel"),
                    ("CallerIDName", "Jos\u{fffd} \u{fffd}"),
                    ("K\u{fffd}y", "v"),
                ]),
                msg(&[("Event", "Next")]),
            ]
        );
        // A UTF-8 sequence split across reads is reassembled.
        let mut codec = AmiCodec::new().without_banner();
        let name = "CallerIDName: Łukasz Żółw\r\n\r\n".as_bytes();
        let f = decode_chunks(&mut codec, [&b"Event: X\r\n"[..], &name[..15], &name[15..]]);
        assert_eq!(
            f,
            vec![msg(&[("Event", "X"), ("CallerIDName", "Łukasz Żółw")])]
        );
    }

    #[test]
    fn several_blank_lines_between_packets() {
        let input = b"Asterisk Call Manager/9.0.0\r\n\r\n\r\nEvent: A\r\n\r\n\r\n\n\r\n\nEvent: B\r\n\r\n\r\n";
        assert_eq!(
            frames(AmiCodec::new(), input),
            vec![
                AmiFrame::Banner("Asterisk Call Manager/9.0.0".into()),
                msg(&[("Event", "A")]),
                msg(&[("Event", "B")]),
            ]
        );
    }

    #[test]
    fn interleaved_responses_and_events() {
        let input = b"Event: Newstate\r\nUniqueid: 1.1\r\n\r\nResponse: Success\r\nActionID: st-01-ping\r\nPing: Pong\r\n\r\nEvent: CoreShowChannel\r\nActionID: st-04\r\n\r\nEvent: Hangup\r\nUniqueid: 1.1\r\n\r\n";
        let f = frames(AmiCodec::new().without_banner(), input);
        let m = messages(&f);
        assert_eq!(f.len(), 4);
        assert_eq!(m[0].event(), Some("Newstate"));
        assert_eq!(m[1].action_id(), Some("st-01-ping"));
        assert_eq!(m[1].get("Ping"), Some("Pong"));
        assert_eq!(m[2].action_id(), Some("st-04"));
        assert_eq!(m[3].event(), Some("Hangup"));
    }

    #[test]
    fn packet_at_eof_without_blank_line() {
        // Complete last line, no empty line.
        assert_eq!(
            frames(
                AmiCodec::new().without_banner(),
                b"Event: A\r\n\r\nEvent: B\r\nX: 1\r\n"
            ),
            vec![msg(&[("Event", "A")]), msg(&[("Event", "B"), ("X", "1")])]
        );
        // Incomplete last line.
        assert_eq!(
            frames(AmiCodec::new().without_banner(), b"Event: B\r\nX: 1"),
            vec![msg(&[("Event", "B"), ("X", "1")])]
        );
        // Only a partial line, and a lone CR.
        assert_eq!(
            frames(AmiCodec::new().without_banner(), b"Event: B"),
            vec![msg(&[("Event", "B")])]
        );
        assert_eq!(
            frames(AmiCodec::new().without_banner(), b"Event: B\r\n\r"),
            vec![msg(&[("Event", "B")])]
        );
        // Nothing at all.
        assert_eq!(frames(AmiCodec::new(), b""), vec![]);
        assert_eq!(frames(AmiCodec::new(), b"\r\n\r\n"), vec![]);
        // decode_eof keeps returning None once flushed.
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(&b"Event: A"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_some());
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn byte_at_a_time_is_linear() {
        // One 256 KiB line fed one byte at a time: a decoder rescanning the
        // buffer on every call would do ~3·10^10 comparisons here.
        // (`decode_chunks` also asserts that no byte is searched twice.)
        let mut input = b"Event: Big\r\nValue: ".to_vec();
        input.extend(std::iter::repeat_n(b'v', 256 * 1024));
        input.extend_from_slice(b"\r\n\r\n");
        let f = bytewise(AmiCodec::new().without_banner(), &input);
        assert_eq!(
            messages(&f)[0].get_raw("Value").map(str::len),
            Some(256 * 1024)
        );
    }

    /// Ignored events taken in runs of lines (`skim`) frame exactly as
    /// line by line: at every split offset, with an `ActionID` that makes
    /// one built after all, a limit crossed inside a run, and a long
    /// ignored line fed byte by byte (nothing searched twice).
    #[test]
    fn skimmed_ignored_events_frame_as_line_by_line() {
        const NOISE: &[&str] = &["VarSet"];
        let mut input = Vec::new();
        for i in 0..3 {
            input.extend_from_slice(b"Event: VarSet\r\nPrivilege: dialplan,all\r\n");
            for j in 0..12 {
                input.extend_from_slice(format!("Variable{j}: {i}\r\n").as_bytes());
            }
            input.extend_from_slice(b"AccountCode: \r\nUniqueid: 1.2\r\n\r\n");
        }
        input.extend_from_slice(b"Event: VarSet\nChannel: x\n\tContinued: y\nActionID: 9\n\n");
        input.extend_from_slice(b"Event: Newstate\r\nChannel: x\r\n\r\n");
        let whole = frames(AmiCodec::new().without_banner().ignoring(NOISE), &input);
        let ignored = whole
            .iter()
            .filter(|f| matches!(f, AmiFrame::Ignored { .. }))
            .count();
        assert_eq!(ignored, 3, "{whole:?}");
        let built: Vec<_> = messages(&whole).iter().map(|m| m.event()).collect();
        assert_eq!(built, [Some("VarSet"), Some("Newstate")]);
        for cut in 0..=input.len() {
            let mut codec = AmiCodec::new().without_banner().ignoring(NOISE);
            let got = decode_chunks(&mut codec, [&input[..cut], &input[cut..]]);
            assert_eq!(got, whole, "split at {cut}");
        }
        // A limit crossed inside a run: oversized at the same line as the
        // codec without a noise list.
        for max in [40, 100, 180, 300] {
            let skimmed = frames(
                AmiCodec::with_max_packet(max)
                    .without_banner()
                    .ignoring(NOISE),
                &input,
            );
            let plain = frames(AmiCodec::with_max_packet(max).without_banner(), &input);
            let skips = |f: &[AmiFrame]| -> Vec<usize> {
                f.iter()
                    .filter_map(|f| match f {
                        AmiFrame::Skipped { bytes, .. } => Some(*bytes),
                        _ => None,
                    })
                    .collect()
            };
            assert_eq!(skips(&skimmed), skips(&plain), "max {max}");
        }
        let mut long = b"Event: VarSet\r\nValue: ".to_vec();
        long.extend(std::iter::repeat_n(b'v', 64 * 1024));
        long.extend_from_slice(b"\r\nUniqueid: 1\r\n\r\n");
        let f = bytewise(AmiCodec::new().without_banner().ignoring(NOISE), &long);
        assert_eq!(
            f,
            [AmiFrame::Ignored {
                event: "VarSet",
                bytes: long.len()
            }]
        );
    }

    #[test]
    fn skip_reason_names() {
        assert_eq!(SkipReason::Oversized.as_str(), "oversized");
        assert_eq!(SkipReason::Garbage.as_str(), "garbage");
        assert_eq!(SkipReason::Garbage.to_string(), "garbage");
        assert_eq!(
            AmiCodec::default().max_packet(),
            AmiCodec::DEFAULT_MAX_PACKET
        );
    }
}
