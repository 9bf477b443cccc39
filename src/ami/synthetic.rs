//! Synthetic AMI streams for load tests and benchmarks, built from the
//! documented Asterisk 12+ event formats or from a real capture.
//!
//! * [`renumbered`]: the events of a real capture played `copies` times one
//!   after the other, each copy moved in time and with its own uniqueids and
//!   channel names, so the copies are distinct calls (a 150-call load ×20
//!   gives 3,000 calls).
//! * [`burst`]: `calls` calls that all start at once (five events each: the
//!   caller's `Newchannel`, `DialBegin`, the callee's `Newstate` Up, two
//!   `Hangup`s), every call set up before the first one ends.
//!
//! Both return events only (no banner, no responses); prefix [`BANNER`] for a
//! complete connection capture.

use std::fmt::Write as _;

/// The greeting of an Asterisk 20 manager connection, with its line end.
pub const BANNER: &[u8] = b"Asterisk Call Manager/9.0.0\r\n";

/// The event packets of `capture` (banner, responses and anything that is
/// not an `Event:` packet left out), `copies` times in a row. Copy `k` is
/// moved `k` times the capture's time span (plus 10 s) into the future:
/// every `Timestamp` and every uniqueid-like value (`<epoch>.<seq>`,
/// optionally after `name-`) is shifted, and every 8-hex-digit channel
/// suffix (`SIP/1001-0000001a`, `Local/1001@q-0000004c;1`) gets `k · 2^20`
/// added. Line ends are kept as they are.
pub fn renumbered(capture: &[u8], copies: usize) -> Vec<u8> {
    let packets = event_packets(capture);
    let (first, last) = time_span(&packets);
    let span = (last - first).max(0.0).ceil() as u64 + 10;
    let size: usize = packets.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(size.saturating_mul(copies) + copies * 64);
    for k in 0..copies as u64 {
        for p in &packets {
            if k == 0 {
                out.extend_from_slice(p);
            } else {
                shift_packet(p, k * span, (k as u32).wrapping_mul(1 << 20), &mut out);
            }
        }
    }
    out
}

/// `calls` calls starting at once, then all hanging up: `5 · calls` events.
/// Call `i` comes in on `SIP/pstn` from `+1555…i`, rings extension
/// `1000 + i % 9000` and is answered; each call yields one answered call
/// record.
pub fn burst(calls: usize) -> Vec<u8> {
    let t0 = 1_800_000_000.0_f64;
    let mut out = String::with_capacity(calls * 5 * 520);
    let ts = |i: usize, phase: f64| format!("{:.6}", t0 + phase + i as f64 * 1e-5);
    for i in 0..calls {
        let c = Call::new(i);
        let t = ts(i, 0.0);
        event(&mut out, "Newchannel", &t, &c.root_block("0", "Down"));
        let dial = format!(
            "{}{}DialString: {}\r\n",
            c.root_block("4", "Ring"),
            c.leg_block("Dest", "0", "Down"),
            c.ext
        );
        event(&mut out, "DialBegin", &ts(i, 0.2), &dial);
        event(
            &mut out,
            "Newstate",
            &ts(i, 1.0),
            &c.leg_block("", "6", "Up"),
        );
    }
    for i in 0..calls {
        let c = Call::new(i);
        let t = ts(i, 30.0);
        let leg = format!(
            "{}Cause: 16\r\nCause-txt: Normal Clearing\r\n",
            c.leg_block("", "6", "Up")
        );
        event(&mut out, "Hangup", &t, &leg);
        let root = format!(
            "{}Cause: 16\r\nCause-txt: Normal Clearing\r\n",
            c.root_block("6", "Up")
        );
        event(&mut out, "Hangup", &ts(i, 30.1), &root);
    }
    out.into_bytes()
}

/// One call of a [`burst`].
struct Call {
    root: String,
    leg: String,
    caller: String,
    ext: u32,
    root_chan: String,
    leg_chan: String,
}

impl Call {
    fn new(i: usize) -> Self {
        let epoch = 1_800_000_000 + i / 1000;
        let ext = 1000 + (i % 9000) as u32;
        Self {
            root: format!("{epoch}.{}", 2 * i),
            leg: format!("{epoch}.{}", 2 * i + 1),
            caller: format!("+1555{:07}", i % 10_000_000),
            ext,
            root_chan: format!("SIP/pstn-{:08x}", 2 * i),
            leg_chan: format!("SIP/{ext}-{:08x}", 2 * i + 1),
        }
    }

    /// The caller's standard channel block.
    fn root_block(&self, state: &str, desc: &str) -> String {
        format!(
            "Channel: {}\r\nChannelState: {state}\r\nChannelStateDesc: {desc}\r\nCallerIDNum: {}\r\nCallerIDName: Caller {}\r\nConnectedLineNum: <unknown>\r\nConnectedLineName: <unknown>\r\nLanguage: en\r\nAccountCode: \r\nContext: from-pstn\r\nExten: 2125550100\r\nPriority: 1\r\nUniqueid: {}\r\nLinkedid: {}\r\n",
            self.root_chan, self.caller, self.ext, self.root, self.root
        )
    }

    /// The callee's channel block, its keys prefixed with `prefix`.
    fn leg_block(&self, prefix: &str, state: &str, desc: &str) -> String {
        format!(
            "{p}Channel: {}\r\n{p}ChannelState: {state}\r\n{p}ChannelStateDesc: {desc}\r\n{p}CallerIDNum: {}\r\n{p}CallerIDName: <unknown>\r\n{p}ConnectedLineNum: {}\r\n{p}ConnectedLineName: Caller {}\r\n{p}Language: en\r\n{p}AccountCode: \r\n{p}Context: from-internal\r\n{p}Exten: {}\r\n{p}Priority: 1\r\n{p}Uniqueid: {}\r\n{p}Linkedid: {}\r\n",
            self.leg_chan,
            self.ext,
            self.caller,
            self.ext,
            self.ext,
            self.leg,
            self.root,
            p = prefix
        )
    }
}

fn event(out: &mut String, name: &str, ts: &str, body: &str) {
    let _ = write!(
        out,
        "Event: {name}\r\nPrivilege: call,all\r\nTimestamp: {ts}\r\n{body}\r\n"
    );
}

/// The `Event:` packets of a capture, each with its line ends and its
/// terminating empty line.
fn event_packets(capture: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < capture.len() {
        let end = memchr::memchr(b'\n', &capture[pos..]).map_or(capture.len(), |i| pos + i + 1);
        let line = &capture[pos..end];
        let blank = line == b"\n" || line == b"\r\n";
        if blank {
            let packet = &capture[start..end];
            if packet.len() > 6 && packet[..6].eq_ignore_ascii_case(b"Event:") {
                out.push(packet);
            }
            start = end;
        } else if start == pos && !line.contains(&b':') {
            // A banner (no blank line after it): not part of a packet.
            start = end;
        }
        pos = end;
    }
    out
}

/// Earliest and latest `Timestamp` of the packets (0, 0 when none).
fn time_span(packets: &[&[u8]]) -> (f64, f64) {
    let mut span: Option<(f64, f64)> = None;
    for p in packets {
        for line in p.split(|&b| b == b'\n') {
            let Some(v) = line.strip_prefix(b"Timestamp: ") else {
                continue;
            };
            let Some(t) = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
            else {
                continue;
            };
            span = Some(span.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
        }
    }
    span.unwrap_or((0.0, 0.0))
}

/// Copies `packet` to `out`, shifting epoch-like values by `secs` and
/// channel suffixes by `suffix`.
fn shift_packet(packet: &[u8], secs: u64, suffix: u32, out: &mut Vec<u8>) {
    for line in packet.split_inclusive(|&b| b == b'\n') {
        let Some(colon) = memchr::memchr(b':', line) else {
            out.extend_from_slice(line);
            continue;
        };
        let body_end = line
            .iter()
            .rposition(|&b| b != b'\n' && b != b'\r')
            .map_or(colon + 1, |i| (i + 1).max(colon + 1));
        out.extend_from_slice(&line[..colon + 1]);
        let value = &line[colon + 1..body_end];
        match shift_epoch(value, secs) {
            Some(v) => out.extend_from_slice(&v),
            None => shift_suffixes(value, suffix, out),
        }
        out.extend_from_slice(&line[body_end..]);
    }
}

/// ` 1795375063.381` (or ` pbx-1795375063.381`) with the epoch moved.
fn shift_epoch(value: &[u8], secs: u64) -> Option<Vec<u8>> {
    let dot = value.iter().rposition(|&b| b == b'.')?;
    let frac = &value[dot + 1..];
    if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let int_start = value[..dot]
        .iter()
        .rposition(|b| !b.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let digits = &value[int_start..dot];
    let before = value[..int_start].last();
    if !(9..=10).contains(&digits.len()) || !matches!(before, None | Some(b' ') | Some(b'-')) {
        return None;
    }
    let epoch: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let mut v = value[..int_start].to_vec();
    v.extend_from_slice((epoch + secs).to_string().as_bytes());
    v.extend_from_slice(&value[dot..]);
    Some(v)
}

/// Copies `value`, adding `add` to every `-XXXXXXXX` (8 lower-case hex
/// digits not followed by another alphanumeric character).
fn shift_suffixes(value: &[u8], add: u32, out: &mut Vec<u8>) {
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        out.push(b);
        i += 1;
        if b != b'-' || i + 8 > value.len() {
            continue;
        }
        let hex = &value[i..i + 8];
        let next = value.get(i + 8);
        let is_hex = hex
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        if !is_hex || next.is_some_and(u8::is_ascii_alphanumeric) {
            continue;
        }
        let Some(n) = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u32::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        let _ = write!(Bytes(out), "{:08x}", n.wrapping_add(add));
        i += 8;
    }
}

/// `fmt::Write` into a byte vector.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumbering_moves_ids_and_time() {
        let cap = b"Asterisk Call Manager/9.0.0\r\nResponse: Success\r\nActionID: 1\r\n\r\nEvent: Newchannel\r\nTimestamp: 1795375063.710555\r\nChannel: Local/1001@q-0000004c;1\r\nUniqueid: 1795375063.381\r\nLinkedid: pbx-1795375063.381\r\nExten: 2125550100\r\n\r\nEvent: Hangup\r\nTimestamp: 1795375083.2\r\nChannel: SIP/my-trunk-0000001a\r\nSIPCALLID: 21de2205603548cb15793b6f0b641c67\r\n\r\n";
        let out = String::from_utf8(renumbered(cap, 2)).unwrap();
        let copies: Vec<&str> = out.split("Event: Newchannel").collect();
        assert_eq!(copies.len(), 3, "{out}");
        assert!(!out.contains("Response"));
        assert!(!out.contains("Asterisk Call Manager"));
        // Copy 1: 20 s span + 10 s later, suffixes + 2^20.
        let second = copies[2];
        assert!(
            second.contains("Timestamp: 1795375093.710555\r\n"),
            "{second}"
        );
        assert!(second.contains("Uniqueid: 1795375093.381\r\n"));
        assert!(second.contains("Linkedid: pbx-1795375093.381\r\n"));
        assert!(second.contains("Channel: Local/1001@q-0010004c;1\r\n"));
        assert!(second.contains("Channel: SIP/my-trunk-0010001a\r\n"));
        // Not an id: kept.
        assert!(second.contains("Exten: 2125550100\r\n"));
        assert!(second.contains("SIPCALLID: 21de2205603548cb15793b6f0b641c67\r\n"));
        // Copy 0 is byte-exact.
        assert!(copies[1].contains("Uniqueid: 1795375063.381\r\n"));
    }

    #[test]
    fn burst_has_five_events_per_call() {
        let b = burst(3);
        let text = String::from_utf8(b).unwrap();
        assert_eq!(text.matches("\r\n\r\n").count(), 15);
        assert_eq!(text.matches("Event: Hangup").count(), 6);
        assert!(text.contains("DestChannel: SIP/1000-00000001\r\n"));
        assert!(text.contains("Uniqueid: 1800000000.5\r\n"));
    }
}
