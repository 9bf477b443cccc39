//! One HTTP attempt: build the request, send it, read the answer.
//!
//! Headers, in the order they are applied (a later one replaces an earlier
//! one of the same name):
//!
//! 1. the rendered request's own headers (repeated names kept);
//! 2. the target's static `headers:`;
//! 3. `Idempotency-Key: <key>` when the rule defined one (same value on
//!    every attempt);
//! 4. `webhook-id`, `webhook-timestamp`, `webhook-signature` when the target
//!    signs (see [`super::sign`]).
//!
//! `User-Agent: callhook/<version>` is set unless the request sets its own.
//! Redirects are not followed (a 3xx is a failure, as Standard Webhooks
//! asks). At most 2 KB of the response body is read and kept as an excerpt;
//! the rest is discarded. The target's `timeout` covers the whole exchange.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::Method;

use super::outbox::{excerpt, Claimed, EXCERPT_MAX};
use super::retry::parse_retry_after;
use super::target::Target;

/// The answer to one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The server answered.
    Answer {
        /// Status code.
        status: u16,
        /// `Retry-After`, parsed.
        retry_after: Option<Duration>,
        /// Start of the body (≤ 2 KB, lossy UTF-8).
        excerpt: String,
    },
    /// No answer: the kind is the metric label (`timeout`, `connect`, `error`).
    Failed {
        /// `timeout`, `connect` or `error`.
        kind: &'static str,
        /// What happened (no URL: it may carry credentials).
        message: String,
    },
    /// The stored request cannot be sent at all (bad method, URL or header).
    Invalid(String),
}

/// Builds the header map for one attempt at `unix_ts` (seconds).
pub fn build_headers(target: &Target, d: &Claimed, unix_ts: i64) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    for (k, v) in &d.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        let value =
            HeaderValue::from_str(v).map_err(|_| format!("invalid value for header {k:?}"))?;
        h.append(name, value);
    }
    for (k, v) in &target.headers {
        h.insert(k.clone(), v.clone());
    }
    if let Some(key) = &d.idempotency_key {
        let v =
            HeaderValue::from_str(key).map_err(|_| "invalid Idempotency-Key value".to_string())?;
        h.insert(HeaderName::from_static("idempotency-key"), v);
    }
    if let Some(k) = &target.signing {
        let body = d.body.as_deref().unwrap_or(&[]);
        let sig = k.sign(&d.event_id, unix_ts, body);
        let id = HeaderValue::from_str(&d.event_id)
            .map_err(|_| "event id cannot be a header value".to_string())?;
        h.insert(HeaderName::from_static("webhook-id"), id);
        h.insert(
            HeaderName::from_static("webhook-timestamp"),
            HeaderValue::from(unix_ts),
        );
        let sig = HeaderValue::from_str(&sig).map_err(|_| "bad signature value".to_string())?;
        h.insert(HeaderName::from_static("webhook-signature"), sig);
    }
    Ok(h)
}

fn error_text(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    excerpt(&s)
}

/// Sends one attempt.
pub async fn send(target: &Target, d: &Claimed, now: SystemTime) -> Attempt {
    let unix_ts = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let method = match Method::from_bytes(d.method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => return Attempt::Invalid(format!("invalid method {:?}", d.method)),
    };
    let url = match reqwest::Url::parse(&d.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        Ok(u) => return Attempt::Invalid(format!("unsupported URL scheme {:?}", u.scheme())),
        Err(e) => return Attempt::Invalid(format!("invalid URL: {e}")),
    };
    let headers = match build_headers(target, d, unix_ts) {
        Ok(h) => h,
        Err(e) => return Attempt::Invalid(e),
    };
    let mut req = target.client.request(method, url).headers(headers);
    if let Some(b) = &d.body {
        req = req.body(b.clone());
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let e = e.without_url();
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "error"
            };
            return Attempt::Failed {
                kind,
                message: error_text(&e),
            };
        }
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut body = Vec::new();
    // A body that fails or times out half-way does not change the verdict:
    // the status already arrived.
    while body.len() < EXCERPT_MAX {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    body.truncate(EXCERPT_MAX);
    Attempt::Answer {
        status,
        retry_after,
        excerpt: excerpt(&String::from_utf8_lossy(&body)),
    }
}
