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

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use crate::values::{expand_vars, parse_duration, read_secret_file, resolve_path};
use crate::yaml::Path as At;

use super::secret::Secrets;
use super::sign::SigningKey;

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

/// A rate: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period.
    pub count: NonZeroU32,
    /// The period (1 s, 1 min or 1 h).
    pub per: Duration,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Why a rate text was refused: message and hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateError {
    /// What is wrong.
    pub message: String,
    /// How to write it.
    pub hint: String,
}

/// Parses `20/s`, `100/min`, `100/m`, `1000/h` (spaces around `/` allowed).
///
/// Near misses (`20/sec`, `20/second`, `20/minute`, `20/hour`, a bare `20`)
/// are refused with a hint naming the accepted spelling.
pub fn parse_rate(text: &str) -> Result<Rate, RateError> {
    let t = text.trim();
    let generic = "write e.g. 20/s, 100/min or 1000/h".to_string();
    let Some((n, unit)) = t.split_once('/') else {
        let hint = match t.parse::<u32>() {
            Ok(n) if n > 0 => format!("write {n}/s"),
            _ => generic,
        };
        return Err(RateError {
            message: format!("{t:?} is not a rate"),
            hint,
        });
    };
    let n = n.trim();
    let unit = unit.trim();
    let count = match n.parse::<u32>().ok().and_then(NonZeroU32::new) {
        Some(c) => c,
        None => {
            return Err(RateError {
                message: format!("{t:?}: the count must be a whole number above 0"),
                hint: "write e.g. 30/min instead of 0.5/s".into(),
            })
        }
    };
    let per = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        _ => {
            let lower = unit.to_ascii_lowercase();
            let suggest = if lower.starts_with("sec") || lower == "second" || lower == "seconds" {
                Some("s")
            } else if lower.starts_with("min") {
                Some("min")
            } else if lower.starts_with("h") {
                Some("h")
            } else {
                None
            };
            return Err(RateError {
                message: format!("{t:?}: unknown rate unit {unit:?}"),
                hint: match suggest {
                    Some(s) => format!("write {n}/{s}"),
                    None => generic,
                },
            });
        }
    };
    Ok(Rate {
        count,
        per: Duration::from_secs(per),
    })
}

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

struct Errors<'a> {
    prefix: At,
    list: &'a mut Vec<TargetError>,
}

impl Errors<'_> {
    fn push(&mut self, key: &str, message: String, hint: Option<&str>, needle: Option<&str>) {
        self.list.push(TargetError {
            path: if key.is_empty() {
                self.prefix.clone()
            } else {
                self.prefix.join(&At::parse(key))
            },
            message,
            hint: hint.map(str::to_string),
            needle: needle.map(str::to_string),
        });
    }

    fn duration(&mut self, key: &str, v: &Option<Text>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(Text(s)) => parse_duration(s).unwrap_or_else(|| {
                self.push(
                    key,
                    format!("{s:?} is not a duration"),
                    Some("write e.g. 500ms, 5s, 5m or 1h"),
                    Some(s),
                );
                default
            }),
        }
    }
}

/// Expands `${VAR}` from the environment; unset variables are reported by name.
fn expand_env(s: &str) -> Result<String, Vec<String>> {
    match expand_vars(s) {
        (out, missing) if missing.is_empty() => Ok(out),
        (_, missing) => Err(missing),
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Validates every target, collecting every problem.
///
/// `base_dir` is the directory of the config file: relative TLS and secret
/// file paths are resolved against it.
pub fn validate_targets(
    raw: &BTreeMap<String, RawTarget>,
    base_dir: &Path,
) -> Result<BTreeMap<String, Target>, Vec<TargetError>> {
    let mut errors = Vec::new();
    let mut out = BTreeMap::new();
    for (name, r) in raw {
        if let Some(t) = validate_one(name, r, base_dir, &mut errors) {
            out.insert(name.clone(), t);
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn validate_one(
    name: &str,
    r: &RawTarget,
    base_dir: &Path,
    list: &mut Vec<TargetError>,
) -> Option<Target> {
    let before = list.len();
    let mut e = Errors {
        prefix: At::root().key("targets").key(name),
        list,
    };
    let mut hasher = Sha256::new();
    hasher.update(format!("{name}\0{r:?}\0").as_bytes());

    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        e.push(
            "",
            format!("{name:?} is not a valid target name"),
            Some("use letters, digits, `_`, `-` or `.` (it becomes a metric label)"),
            Some(name),
        );
    }

    let rate = r
        .rate_limit
        .as_ref()
        .and_then(|Text(t)| match parse_rate(t) {
            Ok(rate) => Some(rate),
            Err(err) => {
                e.push("rate_limit", err.message, Some(&err.hint), Some(t));
                None
            }
        });
    let burst = match r.burst {
        None => NonZeroU32::MIN,
        Some(b) => NonZeroU32::new(b).unwrap_or_else(|| {
            e.push(
                "burst",
                "must be at least 1".into(),
                Some("burst: 1 spaces requests evenly"),
                None,
            );
            NonZeroU32::MIN
        }),
    };
    if r.burst.is_some() && r.rate_limit.is_none() {
        e.push(
            "burst",
            "burst without rate_limit has no effect".into(),
            Some("add rate_limit: N/s or remove burst"),
            None,
        );
    }
    let timeout = e.duration("timeout", &r.timeout, DEFAULT_TIMEOUT);
    if timeout.is_zero() {
        e.push(
            "timeout",
            "must be above 0".into(),
            Some("write e.g. timeout: 5s"),
            None,
        );
    }
    let concurrency = r.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 {
        e.push(
            "concurrency",
            "must be at least 1".into(),
            Some("concurrency: 1 sends one request at a time"),
            None,
        );
    }
    let rr = &r.retry;
    let max_attempts = rr.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if max_attempts == 0 {
        e.push(
            "retry.max_attempts",
            "must be at least 1 (the first attempt counts)".into(),
            Some("max_attempts: 1 means never retry"),
            None,
        );
    }
    let max_age = e.duration("retry.max_age", &rr.max_age, DEFAULT_MAX_AGE);
    let initial_backoff = e.duration(
        "retry.initial_backoff",
        &rr.initial_backoff,
        DEFAULT_INITIAL_BACKOFF,
    );
    let max_backoff = e.duration("retry.max_backoff", &rr.max_backoff, DEFAULT_MAX_BACKOFF);
    if initial_backoff.is_zero() {
        e.push(
            "retry.initial_backoff",
            "must be above 0".into(),
            Some("write e.g. 1s"),
            None,
        );
    }
    if max_backoff < initial_backoff {
        e.push(
            "retry.max_backoff",
            format!("{max_backoff:?} is below initial_backoff ({initial_backoff:?})"),
            Some("max_backoff must be at least initial_backoff"),
            None,
        );
    }
    let jitter = rr.jitter.unwrap_or(DEFAULT_JITTER);
    if !(0.0..=1.0).contains(&jitter) {
        e.push(
            "retry.jitter",
            format!("{jitter} is outside 0 … 1"),
            Some("jitter: 0.2 spreads retries by ±20 %"),
            None,
        );
    }
    let retry_after_max = e.duration(
        "retry_after_max",
        &r.retry_after_max,
        DEFAULT_RETRY_AFTER_MAX,
    );
    let failure_threshold = r
        .breaker
        .failure_threshold
        .unwrap_or(DEFAULT_FAILURE_THRESHOLD);
    if failure_threshold == 0 {
        e.push(
            "breaker.failure_threshold",
            "must be at least 1".into(),
            Some("the breaker opens after this many consecutive failures"),
            None,
        );
    }
    let open_for = e.duration("breaker.open_for", &r.breaker.open_for, DEFAULT_OPEN_FOR);
    let first_probe = match &r.breaker.first_probe {
        // Unset: 1 s, or open_for when that is shorter (older configs).
        None => DEFAULT_FIRST_PROBE.min(open_for),
        Some(_) => {
            let f = e.duration(
                "breaker.first_probe",
                &r.breaker.first_probe,
                DEFAULT_FIRST_PROBE,
            );
            if f.is_zero() || f > open_for {
                e.push(
                    "breaker.first_probe",
                    format!("{f:?} must be above 0 and at most open_for ({open_for:?})"),
                    Some("first_probe: 1s, open_for: 30s probes after 1, 2, 4 … 30 s"),
                    None,
                );
            }
            f
        }
    };

    // Signing.
    let signing = match &r.signing {
        None => None,
        Some(s) => {
            let text = match (&s.secret, &s.secret_file) {
                (Some(_), Some(_)) => {
                    e.push(
                        "signing",
                        "both secret and secret_file are set".into(),
                        Some("keep one"),
                        None,
                    );
                    None
                }
                (None, None) => {
                    e.push(
                        "signing",
                        "no secret".into(),
                        Some("set secret: \"${WEBHOOK_SECRET}\" or secret_file: PATH"),
                        None,
                    );
                    None
                }
                (Some(v), None) => match expand_env(v) {
                    Ok(v) => Some(v),
                    Err(missing) => {
                        for var in missing {
                            e.push(
                                "signing.secret",
                                format!("environment variable {var} is not set"),
                                Some(&format!("export {var}=… before starting callhook")),
                                Some(&var),
                            );
                        }
                        None
                    }
                },
                (None, Some(f)) => {
                    let (path, text) = read_secret_file(base_dir, f);
                    match text {
                        Ok(v) => Some(v),
                        Err(err) => {
                            e.push(
                                "signing.secret_file",
                                format!("cannot read {}: {err}", path.display()),
                                None,
                                Some(&f.display().to_string()),
                            );
                            None
                        }
                    }
                }
            };
            match text.map(|t| {
                hasher.update(t.as_bytes());
                SigningKey::from_secret(&t)
            }) {
                None => None,
                Some(Ok(k)) => Some(k),
                Some(Err(msg)) => {
                    e.push(
                        "signing.secret",
                        msg,
                        Some("a whsec_ secret is `whsec_` followed by standard base64"),
                        None,
                    );
                    None
                }
            }
        }
    };

    // Static headers.
    let mut headers = Vec::new();
    for (k, RawHeaderValue(v)) in &r.headers {
        let key = format!("headers.{k}");
        let name = match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                e.push(
                    &key,
                    format!("{k:?} is not a valid header name"),
                    Some("letters, digits and -"),
                    Some(k),
                );
                None
            }
        };
        // A value read from the environment or with a credential-like
        // name is a secret: masked in `--dry-run` and never logged.
        let secret = v.contains("${") || super::outbox::sensitive_name(k);
        let value = match expand_env(v) {
            Ok(v) => {
                hasher.update(format!("{k}\0{v}\0").as_bytes());
                match HeaderValue::from_str(&v) {
                    Ok(mut hv) => {
                        hv.set_sensitive(secret);
                        Some(hv)
                    }
                    Err(_) => {
                        e.push(
                            &key,
                            "the value has characters a header cannot carry".into(),
                            Some("no newlines or control characters"),
                            None,
                        );
                        None
                    }
                }
            }
            Err(missing) => {
                for var in missing {
                    e.push(
                        &key,
                        format!("environment variable {var} is not set"),
                        Some(&format!("export {var}=… before starting callhook")),
                        Some(&var),
                    );
                }
                None
            }
        };
        if let (Some(n), Some(v)) = (name, value) {
            headers.push((n, v));
        }
    }

    // HTTP client: timeout, no redirects (3xx is a failure, Standard
    // Webhooks), TLS.
    let mut builder = reqwest::Client::builder()
        .timeout(if timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            timeout
        })
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("callhook/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(concurrency.max(1));
    if let Some(tls) = &r.tls {
        let read = |key: &str, p: &Path, e: &mut Errors<'_>| -> Option<Vec<u8>> {
            let path = resolve_path(base_dir, p);
            match std::fs::read(&path) {
                Ok(b) => Some(b),
                Err(err) => {
                    e.push(
                        key,
                        format!("cannot read {}: {err}", path.display()),
                        None,
                        Some(&p.display().to_string()),
                    );
                    None
                }
            }
        };
        if let Some(ca) = &tls.ca_file {
            if let Some(pem) = read("tls.ca_file", ca, &mut e) {
                hasher.update(&pem);
                match reqwest::Certificate::from_pem_bundle(&pem) {
                    Ok(certs) if !certs.is_empty() => {
                        for c in certs {
                            builder = builder.add_root_certificate(c);
                        }
                    }
                    Ok(_) => e.push(
                        "tls.ca_file",
                        format!("{} holds no PEM certificate", ca.display()),
                        Some("expected -----BEGIN CERTIFICATE----- blocks"),
                        Some(&ca.display().to_string()),
                    ),
                    Err(err) => e.push(
                        "tls.ca_file",
                        format!("{}: {err}", ca.display()),
                        Some("expected -----BEGIN CERTIFICATE----- blocks"),
                        Some(&ca.display().to_string()),
                    ),
                }
            }
        }
        match (&tls.client_cert_file, &tls.client_key_file) {
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => e.push(
                "tls",
                "client_cert_file and client_key_file go together".into(),
                Some("set both for mTLS, or neither"),
                None,
            ),
            (Some(c), Some(k)) => {
                let cert = read("tls.client_cert_file", c, &mut e);
                let key = read("tls.client_key_file", k, &mut e);
                if let (Some(cert), Some(key)) = (cert, key) {
                    hasher.update(&cert);
                    hasher.update(&key);
                    let mut pem = cert;
                    if !pem.ends_with(b"\n") {
                        pem.push(b'\n');
                    }
                    pem.extend_from_slice(&key);
                    match reqwest::Identity::from_pem(&pem) {
                        Ok(id) => builder = builder.identity(id),
                        Err(err) => e.push(
                            "tls.client_cert_file",
                            format!(
                                "the client certificate and key do not load: {}",
                                error_chain(&err)
                            ),
                            Some("PEM certificate chain + PKCS#8, RSA or SEC1 PEM key"),
                            Some(&c.display().to_string()),
                        ),
                    }
                }
            }
        }
    }
    if e.list.len() > before {
        return None;
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(err) => {
            e.push(
                "tls",
                format!("cannot build the HTTP client: {}", error_chain(&err)),
                Some("check the TLS files"),
                None,
            );
            return None;
        }
    };
    Some(Target {
        name: name.to_string(),
        rate,
        burst,
        timeout,
        concurrency,
        retry: RetryPolicy {
            max_attempts,
            max_age,
            initial_backoff,
            max_backoff,
            jitter,
        },
        retry_after_max,
        breaker: BreakerConfig {
            failure_threshold,
            first_probe,
            open_for,
        },
        signing,
        headers,
        client,
        secrets: Arc::default(),
        fingerprint: hasher.finalize().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> BTreeMap<String, RawTarget> {
        crate::yaml::de::from_str(yaml).unwrap()
    }

    #[test]
    fn rates() {
        let r = parse_rate("20/s").unwrap();
        assert_eq!((r.count.get(), r.per), (20, Duration::from_secs(1)));
        let r = parse_rate("100/min").unwrap();
        assert_eq!((r.count.get(), r.per), (100, Duration::from_secs(60)));
        let r = parse_rate(" 100 / m ").unwrap();
        assert_eq!((r.count.get(), r.per), (100, Duration::from_secs(60)));
        let r = parse_rate("1000/h").unwrap();
        assert_eq!((r.count.get(), r.per), (1000, Duration::from_secs(3600)));
        assert_eq!(r.to_string(), "1000/h");

        let e = parse_rate("20/sec").unwrap_err();
        assert_eq!(e.hint, "write 20/s");
        assert!(e.message.contains("sec"), "{e:?}");
        assert_eq!(parse_rate("20/second").unwrap_err().hint, "write 20/s");
        assert_eq!(parse_rate("5/minute").unwrap_err().hint, "write 5/min");
        assert_eq!(parse_rate("5/hour").unwrap_err().hint, "write 5/h");
        assert_eq!(parse_rate("20").unwrap_err().hint, "write 20/s");
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("0.5/s").unwrap_err().hint.contains("30/min"));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("20/d").unwrap_err().hint.contains("20/s"));
    }

    #[test]
    fn defaults_and_full_example() {
        std::env::set_var("CALLHOOK_TARGET_TEST_TOKEN", "tok-123");
        std::env::set_var(
            "CALLHOOK_TARGET_TEST_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let raw = parse(
            r#"
crm:
  rate_limit: 20/s
  timeout: 5s
  retry: { max_attempts: 10, max_age: 1h }
plain: {}
full:
  rate_limit: 100/min
  burst: 5
  timeout: 2
  concurrency: 8
  retry: { max_attempts: 3, max_age: 10m, initial_backoff: 50ms, max_backoff: 2s, jitter: 0 }
  retry_after_max: 30s
  breaker: { failure_threshold: 2, open_for: 1s }
  signing: { secret: "${CALLHOOK_TARGET_TEST_SECRET}" }
  headers: { Authorization: "Bearer ${CALLHOOK_TARGET_TEST_TOKEN}", X-Static: "1" }
"#,
        );
        let t = validate_targets(&raw, Path::new(".")).unwrap();
        let crm = &t["crm"];
        assert_eq!(crm.rate.unwrap().count.get(), 20);
        assert_eq!(crm.burst.get(), 1);
        assert_eq!(crm.timeout, Duration::from_secs(5));
        assert_eq!(crm.concurrency, 4);
        assert_eq!(crm.retry, RetryPolicy::default());
        assert_eq!(crm.breaker, BreakerConfig::default());
        assert_eq!(crm.retry_after_max, Duration::from_secs(300));
        assert!(crm.signing.is_none());
        let plain = &t["plain"];
        assert!(plain.rate.is_none());
        let full = &t["full"];
        assert_eq!(full.rate.unwrap().per, Duration::from_secs(60));
        assert_eq!(full.burst.get(), 5);
        assert_eq!(full.timeout, Duration::from_secs(2));
        assert_eq!(full.concurrency, 8);
        assert_eq!(full.retry.max_attempts, 3);
        assert_eq!(full.retry.initial_backoff, Duration::from_millis(50));
        assert_eq!(full.retry.jitter, 0.0);
        assert_eq!(full.breaker.failure_threshold, 2);
        assert!(full.signing.is_some());
        assert_eq!(full.headers.len(), 2);
        assert_eq!(full.headers[0].1.to_str().unwrap(), "Bearer tok-123");
        let dbg = format!("{t:?}{raw:?}");
        assert!(!dbg.contains("tok-123"), "{dbg}");
        assert!(!dbg.contains("MfKQ9r8"), "{dbg}");
        assert!(!dbg.contains("CALLHOOK_TARGET_TEST_TOKEN"), "{dbg}");
        // Fingerprints: equal for the same text, different for a change.
        let again = validate_targets(&raw, Path::new(".")).unwrap();
        assert!(again["full"].same_as(full));
        assert!(!again["crm"].same_as(full));
    }

    #[test]
    fn every_error_is_reported_with_hints() {
        let raw = parse(
            r#"
crm:
  rate_limit: 20/sec
  timeout: soon
  concurrency: 0
  retry: { max_attempts: 0, initial_backoff: 10s, max_backoff: 1s, jitter: 3 }
  breaker: { failure_threshold: 0 }
  signing: { secret: "${CALLHOOK_TARGET_TEST_UNSET}" }
  tls: { ca_file: /nonexistent/ca.pem, client_cert_file: c.pem }
  headers: { "Bad Header": x }
"#,
        );
        let errs = validate_targets(&raw, Path::new(".")).unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let has = |p: &str| errs.iter().any(|e| e.path.to_string() == p);
        for p in [
            "targets.crm.rate_limit",
            "targets.crm.timeout",
            "targets.crm.concurrency",
            "targets.crm.retry.max_attempts",
            "targets.crm.retry.max_backoff",
            "targets.crm.retry.jitter",
            "targets.crm.breaker.failure_threshold",
            "targets.crm.signing.secret",
            "targets.crm.tls.ca_file",
            "targets.crm.tls",
            "targets.crm.headers.Bad Header",
        ] {
            assert!(has(p), "missing {p}: {text:#?}");
        }
        let rate = errs
            .iter()
            .find(|e| e.path.to_string() == "targets.crm.rate_limit")
            .unwrap();
        assert_eq!(rate.hint.as_deref(), Some("write 20/s"));
        assert_eq!(rate.needle.as_deref(), Some("20/sec"));
        assert!(text
            .iter()
            .any(|t| t.contains("CALLHOOK_TARGET_TEST_UNSET")));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = crate::yaml::de::from_str::<BTreeMap<String, RawTarget>>("crm: { rate: 20/s }")
            .unwrap_err();
        assert!(e[0].message.contains("`rate`"), "{e:?}");
        let e = crate::yaml::de::from_str::<BTreeMap<String, RawTarget>>(
            "crm: { retry: { attempts: 3 } }",
        )
        .unwrap_err();
        assert!(e[0].message.contains("`attempts`"), "{e:?}");
    }

    #[test]
    fn bad_tls_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("callhook-target-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), "not a certificate\n").unwrap();
        std::fs::write(
            dir.join("c.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(dir.join("k.pem"), "garbage\n").unwrap();
        std::fs::write(dir.join("secret"), "whsec_not*base64\n").unwrap();
        let raw = parse(
            "crm: { tls: { ca_file: ca.pem, client_cert_file: c.pem, client_key_file: k.pem }, signing: { secret_file: secret } }",
        );
        let errs = validate_targets(&raw, &dir).unwrap_err();
        let paths: Vec<String> = errs.iter().map(|e| e.path.to_string()).collect();
        for p in [
            "targets.crm.tls.ca_file",
            "targets.crm.tls.client_cert_file",
            "targets.crm.signing.secret",
        ] {
            assert!(paths.iter().any(|x| x == p), "{errs:#?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
