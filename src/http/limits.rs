//! Limits of the HTTP listeners (`http:` in the config): connection caps,
//! timeouts and body size, shared by `listen` and `admin.listen` (and by
//! anything mounted on them later, such as long-lived live-API streams).
//!
//! ```yaml
//! http:
//!   max_connections: 1024        # per listener; also bounded by the file-descriptor budget
//!   max_connections_per_ip: 64   # an IPv6 client counts by its /64
//!   header_timeout: 10s          # a new connection must deliver its request head within this
//!   idle_timeout: 30s            # a kept-alive connection may wait this long for its next request
//!   body_timeout: 10s            # a request body must arrive completely within this
//!   max_body: 65536              # bytes; larger bodies are answered 413
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::values::parse_duration;
use crate::yaml::{Path as At, Problem};

/// The `http:` section as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawHttpLimits {
    /// Open connections per listener (default 1024).
    pub max_connections: Option<usize>,
    /// Open connections per client address (default 64).
    pub max_connections_per_ip: Option<usize>,
    /// Time from accept to a complete request head (default `10s`).
    pub header_timeout: Option<String>,
    /// Time a kept-alive connection may sit between requests (default `30s`).
    pub idle_timeout: Option<String>,
    /// Time to receive a whole request body (default `10s`).
    pub body_timeout: Option<String>,
    /// Largest request body in bytes (default 65536).
    pub max_body: Option<usize>,
}

/// Validated limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open connections (further bounded by the fd budget at start).
    pub max_connections: usize,
    /// Open connections per client address (IPv4 address, IPv6 /64).
    pub max_connections_per_ip: usize,
    /// From accept to a complete first request head.
    pub header_timeout: Duration,
    /// From a response to the next complete request head.
    pub idle_timeout: Duration,
    /// To receive a whole request body.
    pub body_timeout: Duration,
    /// Largest request body.
    pub max_body: usize,
}

/// Default connection cap per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default per-client cap.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
/// Default connection cap of the admin listener (`admin.max_connections`).
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            max_body: 64 * 1024,
        }
    }
}

impl HttpLimits {
    /// The same limits with another connection cap (the per-IP cap never
    /// exceeds it).
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self.max_connections_per_ip = self.max_connections_per_ip.min(self.max_connections);
        self
    }
}

impl RawHttpLimits {
    /// Checks every value, pushing one problem (at `http.KEY`) per mistake.
    pub fn validate(&self, errors: &mut Vec<Problem>) -> HttpLimits {
        let d = HttpLimits::default();
        let err = |path: &str, message: String, hint: &str| {
            Problem::new(At::root().key("http").key(path), message).hint(hint)
        };
        let count =
            |v: Option<usize>, path: &str, default: usize, errors: &mut Vec<Problem>| match v {
                None => default,
                Some(0) => {
                    errors.push(err(path, "must be at least 1".into(), "e.g. 64"));
                    default
                }
                Some(n) => n,
            };
        let dur =
            |v: &Option<String>, path: &str, default: Duration, errors: &mut Vec<Problem>| match v
                .as_deref()
            {
                None => default,
                Some(s) => match parse_duration(s) {
                    Some(x) if x >= Duration::from_millis(10) => x,
                    Some(_) => {
                        errors.push(err(path, format!("{s:?} is too short"), "at least 10ms"));
                        default
                    }
                    None => {
                        errors.push(err(
                            path,
                            format!("{s:?} is not a duration"),
                            "write e.g. 500ms, 10s, 1m",
                        ));
                        default
                    }
                },
            };
        let max_connections = count(
            self.max_connections,
            "max_connections",
            d.max_connections,
            errors,
        );
        let per_ip = count(
            self.max_connections_per_ip,
            "max_connections_per_ip",
            d.max_connections_per_ip,
            errors,
        );
        let header_timeout = dur(
            &self.header_timeout,
            "header_timeout",
            d.header_timeout,
            errors,
        );
        let idle_timeout = dur(&self.idle_timeout, "idle_timeout", d.idle_timeout, errors);
        let body_timeout = dur(&self.body_timeout, "body_timeout", d.body_timeout, errors);
        let max_body = match self.max_body {
            None => d.max_body,
            Some(n) if n < 1024 => {
                errors.push(err(
                    "max_body",
                    format!("{n} bytes is too small"),
                    "at least 1024 (push events need a few KiB)",
                ));
                d.max_body
            }
            Some(n) => n,
        };
        HttpLimits {
            max_connections,
            max_connections_per_ip: per_ip.min(max_connections),
            header_timeout,
            idle_timeout,
            body_timeout,
            max_body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_every_error_at_once() {
        let mut errors = Vec::new();
        let l = RawHttpLimits::default().validate(&mut errors);
        assert!(errors.is_empty());
        assert_eq!(l, HttpLimits::default());
        let raw = RawHttpLimits {
            max_connections: Some(0),
            max_connections_per_ip: Some(500),
            header_timeout: Some("soon".into()),
            idle_timeout: Some("1ms".into()),
            body_timeout: Some("2s".into()),
            max_body: Some(10),
        };
        let l = raw.validate(&mut errors);
        let paths: Vec<String> = errors.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(
            paths,
            [
                "http.max_connections",
                "http.header_timeout",
                "http.idle_timeout",
                "http.max_body"
            ]
        );
        assert_eq!(l.body_timeout, Duration::from_secs(2));
        assert_eq!(l.max_connections_per_ip, 500);
        // The per-IP cap never exceeds the total.
        let raw = RawHttpLimits {
            max_connections: Some(100),
            max_connections_per_ip: Some(500),
            ..RawHttpLimits::default()
        };
        assert_eq!(raw.validate(&mut errors).max_connections_per_ip, 100);
        assert_eq!(l.with_max_connections(10).max_connections_per_ip, 10);
    }
}
