//! Targets as written in the file (`targets:`): every key typed, unknown
//! keys refused, secrets redacted in `Debug`. [`super::validate_targets`]
//! turns them into [`super::Target`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

/// A scalar that YAML may write as text or as a number (`timeout: 5`).
#[derive(Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            S(String),
            U(u64),
            I(i64),
            F(f64),
        }
        Ok(Text(match Any::deserialize(d)? {
            Any::S(s) => s,
            Any::U(n) => n.to_string(),
            Any::I(n) => n.to_string(),
            Any::F(n) => n.to_string(),
        }))
    }
}

/// One target, as written in the file.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// `N/s`, `N/m` (`N/min`) or `N/h`; unset means unlimited.
    #[serde(default)]
    pub rate_limit: Option<Text>,
    /// Requests allowed back to back (default 1).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Whole-request timeout (default 5s).
    #[serde(default)]
    pub timeout: Option<Text>,
    /// Requests in flight at once (default 4).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Retry policy.
    #[serde(default)]
    pub retry: RawRetry,
    /// Ceiling for a `Retry-After` answer (default 5m).
    #[serde(default)]
    pub retry_after_max: Option<Text>,
    /// Circuit breaker.
    #[serde(default)]
    pub breaker: RawBreaker,
    /// TLS settings (extra CA, client certificate).
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Standard Webhooks signing.
    #[serde(default)]
    pub signing: Option<RawSigning>,
    /// Static headers added to every request.
    #[serde(default)]
    pub headers: BTreeMap<String, RawHeaderValue>,
}

/// A header value as written (redacted in `Debug`: it may hold a token).
#[derive(Deserialize, Clone)]
#[serde(transparent)]
pub struct RawHeaderValue(pub String);

impl fmt::Debug for RawHeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Retry policy, as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Attempts in all, the first one included (default 10).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// No new attempt after `created_at + max_age` (default 1h).
    #[serde(default)]
    pub max_age: Option<Text>,
    /// First backoff (default 1s).
    #[serde(default)]
    pub initial_backoff: Option<Text>,
    /// Backoff ceiling (default 5m).
    #[serde(default)]
    pub max_backoff: Option<Text>,
    /// Relative jitter, 0 … 1 (default 0.2).
    #[serde(default)]
    pub jitter: Option<f64>,
}

/// Circuit breaker, as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Consecutive failed attempts that open the breaker (default 5).
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    /// The longest wait between probes while they keep failing (default 30s).
    #[serde(default)]
    pub open_for: Option<Text>,
    /// The wait before the first probe after it opens (default 1s, at most
    /// `open_for`); doubled after each failed probe.
    #[serde(default)]
    pub first_probe: Option<Text>,
}

/// TLS files, as written (PEM).
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Extra trusted CA certificates (one or more PEM certificates).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain for mTLS.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// Private key of the client certificate (PKCS#8, RSA or SEC1 PEM).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

/// Signing secret, as written (redacted in `Debug`).
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    /// The secret, usually `${ENV_VAR}`; `whsec_<base64>` or raw text.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

impl fmt::Debug for RawSigning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSigning")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .finish()
    }
}
