//! Targets: where deliveries go and how hard callhook may push them.
//!
//! A target is one receiving system (a CRM, a helpdesk). Rules name a target;
//! everything about *how* a request reaches it lives here:
//!
//! ```yaml
//! targets:
//!   crm:
//!     rate_limit: 20/s          # N/s, N/m (= N/min), N/h; unset = unlimited
//!     burst: 1                  # requests allowed back to back (default 1 = strict spacing)
//!     timeout: 5s               # whole request, connect to last body byte (default 5s)
//!     concurrency: 4            # requests in flight at once (default 4)
//!     retry:
//!       max_attempts: 10        # attempts in all, the first one included (default 10)
//!       max_age: 1h             # no new attempt after created_at + max_age (default 1h)
//!       initial_backoff: 1s     # wait after the first failure (default 1s), doubled each time
//!       max_backoff: 5m         # ceiling of one wait (default 5m)
//!       jitter: 0.2             # ±20 % random spread (default 0.2, 0 … 1)
//!     retry_after_max: 5m       # ceiling for a server's Retry-After (default 5m)
//!     breaker:
//!       failure_threshold: 5    # consecutive failed attempts that open it (default 5)
//!       first_probe: 1s         # one probe this long after it opens (default 1s) …
//!       open_for: 30s           # … then the wait doubles while probes fail, up to this (default 30s)
//!     tls:                      # optional, PEM files, relative to the config file
//!       ca_file: ca.pem         # extra trusted roots (bundle allowed)
//!       client_cert_file: client.pem   # mTLS: both or neither; X.509 v3 (rustls refuses v1)
//!       client_key_file: client.key    # PKCS#8, RSA or SEC1 PEM
//!     signing:                  # optional, Standard Webhooks (webhook-id/-timestamp/-signature)
//!       secret: "${CRM_WEBHOOK_SECRET}"   # or secret_file: path; `whsec_<base64>` or raw text
//!     headers:                  # static extra headers on every request
//!       Authorization: "Bearer ${CRM_TOKEN}"
//! ```
//!
//! Durations accept `500ms`, `20s`, `5m`, `1h`, `1d` (a bare number is
//! seconds). `${VAR}` in `signing.secret` and in header values is read from
//! the environment at load time (an unset variable is an error); a value that
//! has already been expanded by the config layer passes through unchanged.
//!
//! [`validate_targets`] is a pure check that reports *every* problem at once
//! as [`TargetError`]s (dotted path, message, hint, and the offending text as
//! a `needle` the config layer can locate in the file). It also reads the
//! TLS and secret files and builds the HTTP client, so a target that
//! validates can be used as is. Secrets (signing keys, header values,
//! client keys) never appear in `Debug` output.
//!
//! One concept a file: the validated types here, the keys as written in
//! `raw`, rate texts in `rate`, the checks in `validate`.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use crate::yaml::Path as At;

use super::secret::Secrets;
use super::sign::SigningKey;

mod rate;
mod raw;
mod validate;

pub use rate::{parse_rate, Rate, RateError};
pub use raw::{RawBreaker, RawHeaderValue, RawRetry, RawSigning, RawTarget, RawTls, Text};
pub use validate::validate_targets;

/// Default request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of requests in flight per target.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Default number of attempts (the first one included).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// Default time after `created_at` when retrying stops.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// Default first backoff.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Default backoff ceiling.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Default jitter (±20 %).
pub const DEFAULT_JITTER: f64 = 0.2;
/// Default ceiling for `Retry-After`.
pub const DEFAULT_RETRY_AFTER_MAX: Duration = Duration::from_secs(300);
/// Default consecutive failures that open the breaker.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// Default longest wait of an open breaker before its next probe.
pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(30);
/// Default wait of a freshly opened breaker before its first probe.
pub const DEFAULT_FIRST_PROBE: Duration = Duration::from_secs(1);

/// When and how often failed deliveries are tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// No new attempt after `created_at + max_age`.
    pub max_age: Duration,
    /// Wait after the first failure.
    pub initial_backoff: Duration,
    /// Ceiling of one wait.
    pub max_backoff: Duration,
    /// Relative jitter (0.2 = ±20 %).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_age: DEFAULT_MAX_AGE,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            jitter: DEFAULT_JITTER,
        }
    }
}

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed attempts that open it.
    pub failure_threshold: u32,
    /// Wait before the first probe after opening.
    pub first_probe: Duration,
    /// Longest wait before a probe (the doubling stops here).
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            first_probe: DEFAULT_FIRST_PROBE,
            open_for: DEFAULT_OPEN_FOR,
        }
    }
}

/// A validated target, ready to send to.
#[derive(Clone)]
pub struct Target {
    /// Its name in the config (`crm`); a metric label.
    pub name: String,
    /// Rate limit, when any.
    pub rate: Option<Rate>,
    /// Requests allowed back to back under the rate limit.
    pub burst: NonZeroU32,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Ceiling for `Retry-After`.
    pub retry_after_max: Duration,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
    /// Standard Webhooks signing key, when signing is on.
    pub signing: Option<SigningKey>,
    /// Static headers (values from `${VAR}` or with credential-like names
    /// marked sensitive: masked in `--dry-run`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The HTTP client (timeout, TLS, no redirects).
    pub client: reqwest::Client,
    /// The rule set's secrets (`env:` values), put back into stored
    /// requests at send time (see [`crate::deliver::secret`]).
    pub secrets: Arc<Secrets>,
    /// Hash of everything above, to tell whether a reload changed the target.
    pub(crate) fingerprint: [u8; 32],
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("rate", &self.rate.map(|r| r.to_string()))
            .field("burst", &self.burst)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .field("retry_after_max", &self.retry_after_max)
            .field("breaker", &self.breaker)
            .field("signing", &self.signing)
            .field("headers", &header_names)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Whether a reload left this target unchanged (same settings and secrets).
    pub fn same_as(&self, other: &Target) -> bool {
        self.fingerprint == other.fingerprint
    }

    /// Gives the target the rule set's secrets (a changed value changes
    /// the fingerprint, so a reload that rotates a token takes effect).
    pub fn set_secrets(&mut self, secrets: Arc<Secrets>) {
        let mut h = Sha256::new();
        h.update(self.fingerprint);
        for name in secrets.names() {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(secrets.get(name).unwrap_or_default().as_bytes());
            h.update([0]);
        }
        self.fingerprint = h.finalize().into();
        self.secrets = secrets;
    }
}

/// A target problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetError {
    /// Path of the setting (`targets.crm.rate_limit`).
    pub path: At,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The offending text, to locate it in the file (never a secret).
    pub needle: Option<String>,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}
