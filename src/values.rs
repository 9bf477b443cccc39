//! Value parsers shared by every configuration section: durations, time
//! zones, `${VAR}` references, secret files, and the [`Secret`] type.
//!
//! A leaf module: it imports nothing from callhook, so that sections owned
//! by lower layers (`deliver::target`, `rules`, `backfill`, `http`) use the
//! same parsers without importing the config module above them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::tz::TimeZone;

/// A secret value (never printed).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Parses a duration: `500ms`, `20s`, `5m`, `4h`, `1d`, `1h30m`,
/// `1.5h`, `2 days` (jiff's "friendly" format, days of 24 h); a bare number
/// is seconds (`7`, `0.5`). Negative durations are refused.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let n: f64 = s.parse().ok()?;
        return (n.is_finite() && n >= 0.0).then(|| Duration::from_secs_f64(n));
    }
    let span: jiff::Span = s.parse().ok()?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .ok()?;
    Duration::try_from(d).ok()
}

/// Parses a time zone: an IANA name with its daylight-saving rules
/// (`America/Mexico_City`, `Europe/Madrid`), `UTC`/`Z`, or a fixed offset
/// (`+02:00`, `-0300`, `+05`).
pub fn parse_zone(s: &str) -> Option<TimeZone> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("z") || s.eq_ignore_ascii_case("utc") {
        return Some(TimeZone::UTC);
    }
    if s.starts_with(['+', '-']) {
        return parse_offset_seconds(s)
            .and_then(|secs| jiff::tz::Offset::from_seconds(secs).ok())
            .map(TimeZone::fixed);
    }
    // Only names that look like tz database names (no paths).
    if s.is_empty()
        || s.starts_with('/')
        || s.contains("..")
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
    {
        return None;
    }
    TimeZone::get(s).ok()
}

/// Seconds east of UTC of `±HH`, `±HHMM`, `±HH:MM` (`Z`/`UTC` are 0).
pub fn parse_offset_seconds(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("z") || s.eq_ignore_ascii_case("utc") {
        return Some(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = match rest.len() {
        2 => (rest, "00"),
        4 => (&rest[..2], &rest[2..]),
        5 if rest.as_bytes()[2] == b':' => (&rest[..2], &rest[3..]),
        _ => return None,
    };
    if !(h.bytes().all(|b| b.is_ascii_digit()) && m.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 23 && m <= 59).then_some(sign * (h * 3600 + m * 60))
}

/// Expands `${VAR}` references from the environment: the text with every
/// set variable substituted (unset ones left out), and the unset names.
/// Only `${NAME}` is a reference (a lone `$` is text; `$${` writes `${`).
pub fn expand_vars(s: &str) -> (String, Vec<String>) {
    expand_with(s, |v| std::env::var(v).ok())
}

/// [`expand_vars`] with an explicit lookup.
pub fn expand_with(s: &str, lookup: impl Fn(&str) -> Option<String>) -> (String, Vec<String>) {
    let mut out = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(esc) = after.strip_prefix("${") {
            out.push_str("${");
            rest = esc;
            continue;
        }
        match after
            .strip_prefix('{')
            .and_then(|a| a.find('}').map(|j| (a, j)))
        {
            Some((a, j)) => {
                let var = &a[..j];
                match lookup(var) {
                    Some(v) => out.push_str(&v),
                    None => missing.push(var.to_string()),
                }
                rest = &a[j + 1..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, missing)
}

/// `file` resolved against `base` (the config file's directory) when relative.
pub fn resolve_path(base: &Path, file: &Path) -> PathBuf {
    if file.is_relative() {
        base.join(file)
    } else {
        file.to_path_buf()
    }
}

/// Reads a secret file (`${VAR}`s in the path expanded, a relative path is
/// relative to `base`, the config file's directory), without its trailing
/// line break. Returns the path it
/// read, for error messages.
pub fn read_secret_file(base: &Path, file: &Path) -> (PathBuf, std::io::Result<String>) {
    // `${CREDENTIALS_DIRECTORY}/ami-secret` (systemd's LoadCredential=).
    let (expanded, missing) = expand_vars(&file.to_string_lossy());
    if !missing.is_empty() {
        let e = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("environment variable {} is not set", missing.join(", ")),
        );
        return (file.to_path_buf(), Err(e));
    }
    let path = resolve_path(base, Path::new(&expanded));
    let text = std::fs::read_to_string(&path).map(|t| t.trim_end_matches(['\r', '\n']).to_string());
    (path, text)
}

/// `host:port`, or a bare port (`9189`, `:9189`) meaning 127.0.0.1.
pub fn parse_listen_addr(s: &str) -> Option<std::net::SocketAddr> {
    let s = s.trim();
    let port = s.strip_prefix(':').unwrap_or(s);
    if let Ok(p) = port.parse::<u16>() {
        return Some(std::net::SocketAddr::from(([127, 0, 0, 1], p)));
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s| parse_duration(s);
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("20s"), Some(Duration::from_secs(20)));
        assert_eq!(d("5m"), Some(Duration::from_secs(300)));
        assert_eq!(d("4h"), Some(Duration::from_secs(14400)));
        assert_eq!(d("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(d("7d"), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(d("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(d("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(d("2 days"), Some(Duration::from_secs(2 * 86400)));
        assert_eq!(d("7"), Some(Duration::from_secs(7)));
        assert_eq!(d("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(d("20/sec"), None);
        assert_eq!(d("soon"), None);
        assert_eq!(d(""), None);
        assert_eq!(d("-5s"), None);
    }

    #[test]
    fn zones_and_offsets() {
        assert_eq!(parse_offset_seconds("+02:00"), Some(7200));
        assert_eq!(parse_offset_seconds("-0300"), Some(-10800));
        assert_eq!(parse_offset_seconds("+05"), Some(18000));
        assert_eq!(parse_offset_seconds("Z"), Some(0));
        assert_eq!(parse_offset_seconds("+2:00"), None);
        assert_eq!(parse_offset_seconds("+24:00"), None);
        assert!(parse_zone("America/Mexico_City").is_some());
        assert!(parse_zone("Europe/Madrid").is_some());
        assert!(parse_zone("UTC").is_some());
        assert!(parse_zone("-03:00").is_some());
        assert!(parse_zone("Mars/Olympus").is_none());
        assert!(parse_zone("../../etc/passwd").is_none());
        assert!(parse_zone("/etc/localtime").is_none());
    }

    #[test]
    fn env_references() {
        let env = |v: &str| (v == "A").then(|| "x".to_string());
        assert_eq!(expand_with("a${A}b", env), ("axb".into(), vec![]));
        assert_eq!(
            expand_with("${A}${B}", env),
            ("x".into(), vec!["B".to_string()])
        );
        assert_eq!(
            expand_with("p$ss $${A} ${", env),
            ("p$ss ${A} ${".into(), vec![])
        );
    }
}
