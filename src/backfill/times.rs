//! CDR times: the PBX's local wall-clock time, turned into epoch seconds.
//!
//! `cdr_csv` writes `2026-11-22 19:10:26` in the PBX's local time zone (UTC
//! with `usegmtime=yes` in `cdr.conf`), without the offset. A
//! [`CdrTimezone`] says how to read them: a fixed offset, or `auto`, which
//! derives the offset of every call from its Uniqueid/Linkedid (Asterisk
//! names channels `[SYSTEMNAME-]EPOCH.SEQ`, the epoch being the UTC second
//! the first channel was created, the same instant as the CDR `start`), so
//! daylight-saving changes are followed call by call.
//!
//! Also here: the `--since` / `--until` values ([`parse_bound`]).

use std::fmt;

use time::macros::format_description;
use time::{Date, PrimitiveDateTime, UtcOffset};

use crate::template::parse_offset;

/// A CDR time as written: seconds since the epoch *as if the wall-clock
/// text were UTC* (the offset is applied per call, see [`CdrTimezone`]).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct LocalTime(pub f64);

impl LocalTime {
    /// The real instant, given the PBX's UTC offset at that time.
    pub fn to_utc(self, offset: UtcOffset) -> f64 {
        self.0 - f64::from(offset.whole_seconds())
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS` (also with `T`, and with a fraction such
/// as `.123456`); `None` for anything else.
pub fn parse_local(s: &str) -> Option<LocalTime> {
    let b = s.trim().as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r)?.iter().try_fold(0u32, |a, c| {
            c.is_ascii_digit().then(|| a * 10 + u32::from(c - b'0'))
        })
    };
    let sep_ok = b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b' ' || b[10] == b'T')
        && b[13] == b':'
        && b[16] == b':';
    if !sep_ok {
        return None;
    }
    let month = time::Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let date = Date::from_calendar_date(
        i32::try_from(num(0..4)?).ok()?,
        month,
        u8::try_from(num(8..10)?).ok()?,
    )
    .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(14..16)?).ok()?,
        u8::try_from(num(17..19)?).ok()?,
    )
    .ok()?;
    let mut secs = PrimitiveDateTime::new(date, t)
        .assume_utc()
        .unix_timestamp() as f64;
    let frac = &b[19..];
    if !frac.is_empty() {
        let digits = frac.strip_prefix(b".")?;
        if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut f = 0.0;
        let mut scale = 0.1;
        for d in digits {
            f += f64::from(d - b'0') * scale;
            scale /= 10.0;
        }
        secs += f;
    }
    Some(LocalTime(secs))
}

/// How CDR times map to real time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdrTimezone {
    /// Every CDR time is at this UTC offset (`+00:00` by default).
    Fixed(UtcOffset),
    /// Per call, from its Uniqueid/Linkedid epoch; calls whose ids carry no
    /// usable epoch use the fallback offset.
    Auto {
        /// The offset when an id does not tell.
        fallback: UtcOffset,
    },
}

impl Default for CdrTimezone {
    fn default() -> Self {
        CdrTimezone::Fixed(UtcOffset::UTC)
    }
}

impl CdrTimezone {
    /// Parses `UTC`, `Z`, `+02:00`, `-0300`, `+05`, or `auto` (optionally
    /// `auto:+01:00` for the fallback).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Some(rest) = s
            .strip_prefix("auto")
            .or_else(|| s.strip_prefix("AUTO"))
            .or_else(|| s.strip_prefix("Auto"))
        {
            if rest.is_empty() {
                return Some(CdrTimezone::Auto {
                    fallback: UtcOffset::UTC,
                });
            }
            let fb = rest.strip_prefix(':').and_then(parse_offset)?;
            return Some(CdrTimezone::Auto { fallback: fb });
        }
        parse_offset(s).map(CdrTimezone::Fixed)
    }

    /// The offset used when nothing else tells (dates in `--since`, ids
    /// without an epoch).
    pub fn base(self) -> UtcOffset {
        match self {
            CdrTimezone::Fixed(o) => o,
            CdrTimezone::Auto { fallback } => fallback,
        }
    }
}

impl fmt::Display for CdrTimezone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CdrTimezone::Fixed(o) => f.write_str(&offset_text(*o)),
            CdrTimezone::Auto { fallback } if *fallback == UtcOffset::UTC => f.write_str("auto"),
            CdrTimezone::Auto { fallback } => write!(f, "auto:{}", offset_text(*fallback)),
        }
    }
}

/// `+02:00`, `-03:30`.
pub fn offset_text(o: UtcOffset) -> String {
    let s = o.whole_seconds();
    let sign = if s < 0 { '-' } else { '+' };
    let a = s.unsigned_abs();
    format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
}

/// The UTC epoch second an Asterisk id (`1795374626.0`,
/// `pbx1-1795374626.12`) was minted at, when it looks like one.
pub fn id_epoch(id: &str) -> Option<i64> {
    let id = id.trim();
    let tail = id.rsplit_once('-').map_or(id, |(_, t)| t);
    let (secs, seq) = tail.split_once('.')?;
    if secs.len() < 9
        || secs.len() > 11
        || seq.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !seq.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    secs.parse().ok()
}

/// The UTC offset a call's local start implies, given the epoch of its
/// first channel's id: a multiple of 15 minutes within ±14 h, the two
/// within 2 s of each other (an id is minted a moment before the CDR
/// starts). `None` when they do not fit (a custom id, another clock).
pub fn implied_offset(local_start: LocalTime, id_epoch: i64) -> Option<UtcOffset> {
    let diff = local_start.0.floor() - id_epoch as f64;
    let quarter = (diff / 900.0).round();
    if (diff - quarter * 900.0).abs() > 2.0 || quarter.abs() > 56.0 {
        return None;
    }
    UtcOffset::from_whole_seconds((quarter * 900.0) as i32).ok()
}

/// A `--since` / `--until` value that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither a duration (200h, 7d, 90m) nor a date (2026-11-01, 2026-11-01 08:00, 2026-11-01T08:00:00+02:00)")]
pub struct BadBound(pub String);

/// Reads a range bound: a duration back from `now` (`200h`, `7d`, `30m`,
/// `90s`), a date (`2026-11-01`, midnight) or a date and time
/// (`2026-11-01 08:00`, `2026-11-01T08:00:00`, optionally with `Z` or an
/// offset). Dates and times without an offset are read at `offset` (the
/// CDR time zone). Returns epoch seconds.
pub fn parse_bound(s: &str, now: f64, offset: UtcOffset) -> Result<f64, BadBound> {
    let t = s.trim();
    let bad = || BadBound(s.to_string());
    if t.is_empty() {
        return Err(bad());
    }
    if let Some(d) = crate::values::parse_duration(t) {
        // A bare number would be seconds: accept it only with a unit, so a
        // year such as `2026` is not read as 2026 s.
        if t.bytes().any(|b| b.is_ascii_alphabetic()) {
            return Ok(now - d.as_secs_f64());
        }
    }
    if t.len() == 10 {
        let date =
            Date::parse(t, format_description!("[year]-[month]-[day]")).map_err(|_| bad())?;
        let local = PrimitiveDateTime::new(date, time::Time::MIDNIGHT)
            .assume_utc()
            .unix_timestamp() as f64;
        return Ok(LocalTime(local).to_utc(offset));
    }
    // Date and time, with an optional offset at the end.
    let (body, off) = split_offset(t);
    let off = match off {
        Some(o) => parse_offset(o).ok_or_else(bad)?,
        None => offset,
    };
    let body = if body.len() == 16 {
        format!("{body}:00")
    } else {
        body.to_string()
    };
    let local = parse_local(&body).ok_or_else(bad)?;
    Ok(local.to_utc(off))
}

/// Splits `2026-11-01T08:00:00+02:00` into the time and `+02:00` (or `Z`).
fn split_offset(t: &str) -> (&str, Option<&str>) {
    if let Some(b) = t.strip_suffix('Z').or_else(|| t.strip_suffix('z')) {
        return (b, Some("Z"));
    }
    // An offset sign after the time part (position > 10 skips the date's dashes).
    match t.rfind(['+', '-']) {
        Some(i) if i > 10 => (&t[..i], Some(&t[i..])),
        _ => (t, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn off(s: &str) -> UtcOffset {
        parse_offset(s).unwrap()
    }

    #[test]
    fn local_times() {
        assert_eq!(
            parse_local("2026-11-22 19:10:26"),
            Some(LocalTime(1795374626.0))
        );
        assert_eq!(
            parse_local("2026-11-22T19:10:26.250"),
            Some(LocalTime(1795374626.25))
        );
        for bad in [
            "",
            "2026-11-22",
            "2026-13-22 19:10:26",
            "2026-11-22 25:10:26",
            "2026-11-22 19:10:26x",
            "2026-11-22 19:10:26.",
            "22/11/2026 19:10:26",
            "2026-11-22 19:10:2é",
        ] {
            assert_eq!(parse_local(bad), None, "{bad}");
        }
        assert_eq!(LocalTime(1795374626.0).to_utc(off("+02:00")), 1795367426.0);
    }

    #[test]
    fn timezones() {
        assert_eq!(CdrTimezone::parse("UTC"), Some(CdrTimezone::default()));
        assert_eq!(
            CdrTimezone::parse("-03:00"),
            Some(CdrTimezone::Fixed(off("-03:00")))
        );
        assert_eq!(
            CdrTimezone::parse("auto"),
            Some(CdrTimezone::Auto {
                fallback: UtcOffset::UTC
            })
        );
        assert_eq!(
            CdrTimezone::parse("auto:+05:30"),
            Some(CdrTimezone::Auto {
                fallback: off("+05:30")
            })
        );
        assert_eq!(CdrTimezone::parse("Europe/Madrid"), None);
        assert_eq!(CdrTimezone::parse("auto:x"), None);
        assert_eq!(
            CdrTimezone::parse("auto:+05:30").unwrap().to_string(),
            "auto:+05:30"
        );
        assert_eq!(CdrTimezone::Fixed(off("-0330")).to_string(), "-03:30");
    }

    #[test]
    fn ids_and_implied_offsets() {
        assert_eq!(id_epoch("1795374626.0"), Some(1795374626));
        assert_eq!(id_epoch("pbx-east-1795374626.12"), Some(1795374626));
        assert_eq!(id_epoch("my-custom-id"), None);
        assert_eq!(id_epoch("12.3"), None);
        assert_eq!(id_epoch("1795374626."), None);
        let local = LocalTime(1795374626.0 + 7200.0);
        assert_eq!(implied_offset(local, 1795374626), Some(off("+02:00")));
        assert_eq!(
            implied_offset(LocalTime(1795374627.0), 1795374626),
            Some(UtcOffset::UTC)
        );
        assert_eq!(
            implied_offset(LocalTime(1795374626.0 - 5.5 * 3600.0), 1795374626),
            Some(off("-05:30"))
        );
        assert_eq!(
            implied_offset(LocalTime(1795374626.0 + 100.0), 1795374626),
            None
        );
        assert_eq!(
            implied_offset(LocalTime(1795374626.0 + 20.0 * 3600.0), 1795374626),
            None
        );
    }

    #[test]
    fn bounds() {
        let now = 1795374626.0;
        let utc = UtcOffset::UTC;
        assert_eq!(parse_bound("200h", now, utc), Ok(now - 200.0 * 3600.0));
        assert_eq!(parse_bound("7d", now, utc), Ok(now - 7.0 * 86400.0));
        assert_eq!(parse_bound("2026-11-22", now, utc), Ok(1795305600.0));
        assert_eq!(
            parse_bound("2026-11-22", now, off("+02:00")),
            Ok(1795305600.0 - 7200.0)
        );
        assert_eq!(parse_bound("2026-11-22 19:10", now, utc), Ok(1795374600.0));
        assert_eq!(
            parse_bound("2026-11-22T19:10:26Z", now, off("+02:00")),
            Ok(1795374626.0)
        );
        assert_eq!(
            parse_bound("2026-11-22T21:10:26+02:00", now, utc),
            Ok(1795374626.0)
        );
        for bad in ["", "2026", "yesterday", "2026-11-31", "2026-11-22 19", "5x"] {
            assert!(parse_bound(bad, now, utc).is_err(), "{bad}");
        }
    }
}
