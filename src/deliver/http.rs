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
use super::secret;
use super::target::Target;
use super::DeliveryRequest;

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
    /// The request cannot be sent at all, now or ever (refused by the
    /// rules, bad method, URL or header, a URL too long for HTTP): the
    /// delivery is dead at once with this reason.
    Invalid(String),
}

/// What a request is made of, wherever it comes from: a claimed outbox
/// row (the dispatcher) or a freshly rendered request (`--dry-run`). Both
/// go through [`build`], so what `--dry-run` prints is what is sent.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// URL as rendered.
    pub url: &'a str,
    /// The rendered headers.
    pub headers: &'a [(String, String)],
    /// Body.
    pub body: Option<&'a [u8]>,
    /// `Idempotency-Key`.
    pub idempotency_key: Option<&'a str>,
    /// Stable event id (`webhook-id`).
    pub event_id: &'a str,
    /// Why it must never be sent, when the rules said so.
    pub refused: Option<&'a str>,
}

impl<'a> From<&'a Claimed> for Parts<'a> {
    fn from(d: &'a Claimed) -> Self {
        Parts {
            method: &d.method,
            url: &d.url,
            headers: &d.headers,
            body: d.body.as_deref(),
            idempotency_key: d.idempotency_key.as_deref(),
            event_id: &d.event_id,
            refused: d.refused.as_deref(),
        }
    }
}

impl<'a> From<&'a DeliveryRequest> for Parts<'a> {
    fn from(r: &'a DeliveryRequest) -> Self {
        Parts {
            method: &r.method,
            url: &r.url,
            headers: &r.headers,
            body: r.body.as_deref(),
            idempotency_key: r.idempotency_key.as_deref(),
            event_id: &r.event_id,
            refused: r.refused.as_deref(),
        }
    }
}

/// A request exactly as it goes on the wire (the body is the rendered one).
#[derive(Debug, Clone)]
pub struct Built {
    /// Method.
    pub method: Method,
    /// The URL as sent (parsed and normalised once, here).
    pub url: reqwest::Url,
    /// Every header callhook sets (the HTTP client adds `Host`,
    /// `Content-Length` and `User-Agent` unless set).
    pub headers: HeaderMap,
}

/// Why a request cannot be built: permanent, the same request never will.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

/// The path of an absolute URL as written (before any normalisation).
fn raw_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = &rest[rest.find('/').unwrap_or(rest.len())..];
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// Builds the request for one attempt at `unix_ts` (seconds): method, URL
/// and headers checked the way the HTTP client would, so that nothing that
/// can never be sent is retried as if the target were down. `target`
/// adds its static headers and signature (none: only the request's own).
pub fn build(target: Option<&Target>, p: Parts<'_>, unix_ts: i64) -> Result<Built, BuildError> {
    if let Some(why) = p.refused {
        return Err(BuildError(why.to_string()));
    }
    let method = Method::from_bytes(p.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| BuildError(format!("invalid method {:?}", p.method)))?;
    let url = match reqwest::Url::parse(p.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        Ok(u) => {
            return Err(BuildError(format!(
                "unsupported URL scheme {:?}",
                u.scheme()
            )))
        }
        Err(e) => return Err(BuildError(format!("invalid URL: {e}"))),
    };
    // Parsing resolves `.` and `..` (also written %2E): the request would
    // reach another path than the one rendered. Rules never render one
    // (see `template::url`); rows from elsewhere are refused here.
    let dot = raw_path(p.url).split('/').any(|seg| {
        let d = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
        d == "." || d == ".."
    });
    if dot {
        return Err(BuildError(format!(
            "the URL path has a dot segment: it would be sent to {:?} instead",
            url.path()
        )));
    }
    // What the HTTP client does with the URL later: a URL it cannot carry
    // (e.g. longer than 64 KiB) must fail here, permanently.
    if let Err(e) = http::Uri::try_from(url.as_str()) {
        return Err(BuildError(format!(
            "the URL cannot be sent ({} bytes): {e}",
            url.as_str().len()
        )));
    }
    let headers = build_headers(target, p, unix_ts).map_err(BuildError)?;
    Ok(Built {
        method,
        url,
        headers,
    })
}

/// Builds the header map for one attempt at `unix_ts` (seconds).
pub fn build_headers(
    target: Option<&Target>,
    d: Parts<'_>,
    unix_ts: i64,
) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    for (k, v) in d.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        let value =
            HeaderValue::from_str(v).map_err(|_| format!("invalid value for header {k:?}"))?;
        h.append(name, value);
    }
    if let Some(target) = target {
        for (k, v) in &target.headers {
            h.insert(k.clone(), v.clone());
        }
    }
    if let Some(key) = d.idempotency_key {
        let v =
            HeaderValue::from_str(key).map_err(|_| "invalid Idempotency-Key value".to_string())?;
        h.insert(HeaderName::from_static("idempotency-key"), v);
    }
    if let Some(k) = target.and_then(|t| t.signing.as_ref()) {
        let body = d.body.unwrap_or(&[]);
        let sig = k.sign(d.event_id, unix_ts, body);
        let id = HeaderValue::from_str(d.event_id)
            .map_err(|_| "event id cannot be a header value".to_string())?;
        h.insert(HeaderName::from_static("webhook-id"), id);
        h.insert(
            HeaderName::from_static("webhook-timestamp"),
            HeaderValue::from(unix_ts),
        );
        let mut sig = HeaderValue::from_str(&sig).map_err(|_| "bad signature value".to_string())?;
        sig.set_sensitive(true);
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
    // Secrets masked at rest are put back here, from the configuration
    // running now (a rotated token is used, a removed one refuses).
    let revealed;
    let d = if d.secrets.is_empty() || d.refused.is_some() {
        d
    } else {
        match secret::reveal(
            &d.url,
            &d.headers,
            d.body.as_deref(),
            &d.secrets,
            &target.secrets,
        ) {
            Ok((url, headers, body)) => {
                revealed = Claimed {
                    url,
                    headers,
                    body,
                    ..d.clone()
                };
                &revealed
            }
            Err(why) => return Attempt::Invalid(why),
        }
    };
    let built = match build(Some(target), Parts::from(d), unix_ts) {
        Ok(b) => b,
        Err(BuildError(why)) => return Attempt::Invalid(why),
    };
    let mut req = target
        .client
        .request(built.method, built.url)
        .headers(built.headers);
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
    // Read a little past the excerpt so that a secret the target echoes
    // at its end is whole when it is masked.
    let sent = sent_secrets(target);
    let sent: Vec<&str> = sent.iter().map(String::as_str).collect();
    let limit = EXCERPT_MAX + secret::scrub_reach(&sent);
    let mut body = Vec::new();
    // A body that fails or times out half-way does not change the verdict:
    // the status already arrived.
    while body.len() < limit {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    body.truncate(limit);
    Attempt::Answer {
        status,
        retry_after,
        excerpt: excerpt(&secret::scrub(&String::from_utf8_lossy(&body), &sent)),
    }
}

/// What an attempt may have carried that its answer must not repeat: the
/// rule set's secrets, and the target's sensitive header values (whole,
/// and their credential after a scheme such as `Bearer`).
fn sent_secrets(target: &Target) -> Vec<String> {
    let mut v: Vec<String> = target.secrets.values().map(str::to_string).collect();
    for (_, h) in &target.headers {
        if !h.is_sensitive() {
            continue;
        }
        if let Ok(s) = h.to_str() {
            v.push(s.to_string());
            if let Some((_, cred)) = s.trim().rsplit_once(' ') {
                v.push(cred.to_string());
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> Parts<'_> {
        Parts {
            method: "get",
            url,
            headers: &[],
            body: None,
            idempotency_key: Some("k-1"),
            event_id: "e",
            refused: None,
        }
    }

    #[test]
    fn the_builder_refuses_what_can_never_be_sent() {
        assert_eq!(raw_path("http://h:1/a/b?x#y"), "/a/b");
        assert_eq!(raw_path("http://h?x"), "");
        let b = build(None, parts("http://h:1?x=1"), 0).unwrap();
        assert_eq!(b.url.as_str(), "http://h:1/?x=1", "as sent");
        assert_eq!(b.method, Method::GET);
        assert_eq!(b.headers["idempotency-key"], "k-1");
        for (url, why) in [
            ("http://h/a/../b", "dot segment"),
            ("http://h/a/%2e%2E/b", "dot segment"),
            ("http://h/a/./b", "dot segment"),
            ("ftp://h/x", "scheme"),
            ("http:// h/x", "invalid URL"),
        ] {
            let e = build(None, parts(url), 0).unwrap_err();
            assert!(e.0.contains(why), "{url}: {e}");
        }
        let long = format!("http://h/x?n={}", "N".repeat(70_000));
        assert!(build(None, parts(&long), 0)
            .unwrap_err()
            .0
            .contains("cannot be sent"));
        let mut p = parts("http://h/x");
        p.refused = Some("because");
        assert_eq!(build(None, p, 0).unwrap_err().0, "because");
        let bad = [("X".to_string(), "a\nb".to_string())];
        let mut p = parts("http://h/x");
        p.headers = &bad;
        assert!(build(None, p, 0).is_err());
    }
}
