//! CDR times: the PBX's local wall-clock time, turned into epoch seconds.
//!
//! `cdr_csv` writes `2026-11-22 19:10:26` in the PBX's local time zone (UTC
//! with `usegmtime=yes` in `cdr.conf`), without the offset. A
//! [`CdrTimezone`] says how to read them: a time zone (an IANA name such as
//! `America/Mexico_City`, whose daylight-saving rules are applied to every
//! time, or a fixed offset), or `auto`, which derives the offset of every
//! call from its Uniqueid/Linkedid (Asterisk names channels
//! `[SYSTEMNAME-]EPOCH.SEQ`, the epoch being the UTC second the first
//! channel was created, the same instant as the CDR `start`).
//!
//! Also here: the `--since` / `--until` values ([`parse_bound`]).

use std::fmt;

use jiff::tz::TimeZone;

use crate::values::{parse_offset_seconds, parse_zone};

/// A CDR time as written: seconds since the epoch *as if the wall-clock
/// text were UTC* (the offset is applied per call, see [`CdrTimezone`]).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct LocalTime(pub f64);

impl LocalTime {
    /// The real instant, given the PBX's UTC offset (seconds east) at that time.
    pub fn to_utc(self, offset: i32) -> f64 {
        self.0 - f64::from(offset)
    }

    /// The real instant of this wall-clock time in `zone` (a time skipped
    /// by a spring-forward is read after the change, one that happens twice
    /// as the first).
    pub fn in_zone(self, zone: &TimeZone) -> f64 {
        self.to_utc(zone_offset(zone, self))
    }
}

/// Epoch seconds of a wall-clock time read as UTC.
fn as_if_utc(dt: jiff::civil::DateTime) -> Option<i64> {
    TimeZone::UTC.to_timestamp(dt).ok().map(|t| t.as_second())
}

/// The offset (seconds east of UTC) `zone` has at wall-clock time `local`.
pub fn zone_offset(zone: &TimeZone, local: LocalTime) -> i32 {
    let whole = local.0.floor() as i64;
    jiff::Timestamp::from_second(whole)
        .ok()
        .map(|t| TimeZone::UTC.to_datetime(t))
        .and_then(|dt| zone.to_ambiguous_timestamp(dt).compatible().ok())
        .map_or(0, |t| (whole - t.as_second()) as i32)
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
    let small = |r: std::ops::Range<usize>| -> Option<i8> { i8::try_from(num(r)?).ok() };
    let dt = jiff::civil::DateTime::new(
        i16::try_from(num(0..4)?).ok()?,
        small(5..7)?,
        small(8..10)?,
        small(11..13)?,
        small(14..16)?,
        small(17..19)?,
        0,
    )
    .ok()?;
    let mut secs = as_if_utc(dt)? as f64;
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
#[derive(Debug, Clone, PartialEq)]
pub enum CdrTimezone {
    /// Every CDR time is in this zone (UTC by default; an IANA zone with
    /// its daylight-saving rules, or a fixed offset).
    Zone(TimeZone),
    /// Per call, from its Uniqueid/Linkedid epoch; calls whose ids carry no
    /// usable epoch use the fallback zone.
    Auto {
        /// The zone when an id does not tell.
        fallback: TimeZone,
    },
}

impl Default for CdrTimezone {
    fn default() -> Self {
        CdrTimezone::Zone(TimeZone::UTC)
    }
}

impl CdrTimezone {
    /// Parses an IANA zone (`America/Mexico_City`), `UTC`, `Z`, an offset
    /// (`+02:00`, `-0300`, `+05`), or `auto` (optionally `auto:ZONE` for
    /// the fallback).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Some(rest) = s
            .strip_prefix("auto")
            .or_else(|| s.strip_prefix("AUTO"))
            .or_else(|| s.strip_prefix("Auto"))
        {
            if rest.is_empty() {
                return Some(CdrTimezone::Auto {
                    fallback: TimeZone::UTC,
                });
            }
            let fallback = rest.strip_prefix(':').and_then(parse_zone)?;
            return Some(CdrTimezone::Auto { fallback });
        }
        parse_zone(s).map(CdrTimezone::Zone)
    }

    /// The zone used when nothing else tells (dates in `--since`, ids
    /// without an epoch).
    pub fn base(&self) -> &TimeZone {
        match self {
            CdrTimezone::Zone(z) => z,
            CdrTimezone::Auto { fallback } => fallback,
        }
    }
}

/// A zone as the user writes it: its IANA name, else its offset.
pub fn zone_text(z: &TimeZone) -> String {
    match z.iana_name() {
        Some(n) => n.to_string(),
        None => offset_text(z.to_offset(jiff::Timestamp::UNIX_EPOCH).seconds()),
    }
}

impl fmt::Display for CdrTimezone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CdrTimezone::Zone(z) => f.write_str(&zone_text(z)),
            CdrTimezone::Auto { fallback } if *fallback == TimeZone::UTC => f.write_str("auto"),
            CdrTimezone::Auto { fallback } => write!(f, "auto:{}", zone_text(fallback)),
        }
    }
}

/// `+02:00`, `-03:30` of an offset in seconds east of UTC.
pub fn offset_text(s: i32) -> String {
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
pub fn implied_offset(local_start: LocalTime, id_epoch: i64) -> Option<i32> {
    let diff = local_start.0.floor() - id_epoch as f64;
    let quarter = (diff / 900.0).round();
    if (diff - quarter * 900.0).abs() > 2.0 || quarter.abs() > 56.0 {
        return None;
    }
    Some((quarter * 900.0) as i32)
}

/// A `--since` / `--until` value that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither a duration (200h, 7d, 90m) nor a date (2026-11-01, 2026-11-01 08:00, 2026-11-01T08:00:00+02:00)")]
pub struct BadBound(pub String);

/// Reads a range bound: a duration back from `now` (`200h`, `7d`, `30m`,
/// `90s`), a date (`2026-11-01`, midnight) or a date and time
/// (`2026-11-01 08:00`, `2026-11-01T08:00:00`, optionally with `Z` or an
/// offset). Dates and times without an offset are read in `zone` (the
/// CDR time zone). Returns epoch seconds.
pub fn parse_bound(s: &str, now: f64, zone: &TimeZone) -> Result<f64, BadBound> {
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
        let date: jiff::civil::Date = t.parse().map_err(|_| bad())?;
        let local = as_if_utc(date.to_datetime(jiff::civil::Time::midnight())).ok_or_else(bad)?;
        return Ok(LocalTime(local as f64).in_zone(zone));
    }
    // Date and time, with an optional offset at the end.
    let (body, off) = split_offset(t);
    let off = match off {
        Some(o) => Some(parse_offset_seconds(o).ok_or_else(bad)?),
        None => None,
    };
    let body = if body.len() == 16 {
        format!("{body}:00")
    } else {
        body.to_string()
    };
    let local = parse_local(&body).ok_or_else(bad)?;
    Ok(match off {
        Some(o) => local.to_utc(o),
        None => local.in_zone(zone),
    })
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

    fn off(s: &str) -> i32 {
        parse_offset_seconds(s).unwrap()
    }

    fn zone(s: &str) -> TimeZone {
        parse_zone(s).unwrap()
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
            Some(CdrTimezone::Zone(zone("-03:00")))
        );
        assert_eq!(
            CdrTimezone::parse("auto"),
            Some(CdrTimezone::Auto {
                fallback: TimeZone::UTC
            })
        );
        assert_eq!(
            CdrTimezone::parse("auto:+05:30"),
            Some(CdrTimezone::Auto {
                fallback: zone("+05:30")
            })
        );
        assert_eq!(
            CdrTimezone::parse("Europe/Madrid"),
            Some(CdrTimezone::Zone(zone("Europe/Madrid")))
        );
        assert_eq!(CdrTimezone::parse("Mars/Olympus"), None);
        assert_eq!(CdrTimezone::parse("auto:x"), None);
        assert_eq!(
            CdrTimezone::parse("auto:+05:30").unwrap().to_string(),
            "auto:+05:30"
        );
        assert_eq!(
            CdrTimezone::parse("auto:America/Mexico_City")
                .unwrap()
                .to_string(),
            "auto:America/Mexico_City"
        );
        assert_eq!(CdrTimezone::Zone(zone("-0330")).to_string(), "-03:30");
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
        assert_eq!(implied_offset(LocalTime(1795374627.0), 1795374626), Some(0));
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
        let utc = &TimeZone::UTC;
        assert_eq!(parse_bound("200h", now, utc), Ok(now - 200.0 * 3600.0));
        assert_eq!(parse_bound("7d", now, utc), Ok(now - 7.0 * 86400.0));
        assert_eq!(parse_bound("2026-11-22", now, utc), Ok(1795305600.0));
        assert_eq!(
            parse_bound("2026-11-22", now, &zone("+02:00")),
            Ok(1795305600.0 - 7200.0)
        );
        assert_eq!(parse_bound("2026-11-22 19:10", now, utc), Ok(1795374600.0));
        assert_eq!(
            parse_bound("2026-11-22T19:10:26Z", now, &zone("+02:00")),
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

    #[test]
    fn zones_follow_daylight_saving() {
        let madrid = zone("Europe/Madrid");
        let local = |s: &str| parse_local(s).unwrap();
        let utc = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_second() as f64;
        assert_eq!(
            local("2026-01-15 12:00:00").in_zone(&madrid),
            utc("2026-01-15T11:00:00Z")
        );
        assert_eq!(
            local("2026-07-15 12:00:00").in_zone(&madrid),
            utc("2026-07-15T10:00:00Z")
        );
        // Spring forward (02:00 → 03:00 on 2026-03-29): the skipped 02:30 is
        // read after the change; fall back (03:00 → 02:00 on 2026-10-25): the
        // twice-seen 02:30 is the first, summer one.
        assert_eq!(
            local("2026-03-29 02:30:00").in_zone(&madrid),
            utc("2026-03-29T01:30:00Z")
        );
        assert_eq!(
            local("2026-03-29 03:30:00").in_zone(&madrid),
            utc("2026-03-29T01:30:00Z")
        );
        assert_eq!(
            local("2026-10-25 02:30:00").in_zone(&madrid),
            utc("2026-10-25T00:30:00Z")
        );
        assert_eq!(
            local("2026-10-25 03:30:00").in_zone(&madrid),
            utc("2026-10-25T02:30:00Z")
        );
        // Mexico City dropped daylight saving after October 2022.
        let mx = zone("America/Mexico_City");
        assert_eq!(
            local("2022-07-01 12:00:00").in_zone(&mx),
            utc("2022-07-01T17:00:00Z")
        );
        assert_eq!(
            local("2026-07-01 12:00:00").in_zone(&mx),
            utc("2026-07-01T18:00:00Z")
        );
        // --since dates are read in the zone too.
        assert_eq!(
            parse_bound("2026-07-15", 0.0, &madrid),
            Ok(utc("2026-07-14T22:00:00Z"))
        );
    }
}
