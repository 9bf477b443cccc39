//! [`validate_targets`]: raw targets → [`Target`]s, every problem reported
//! at once as a [`TargetError`]; reads the TLS and secret files and builds
//! each target's HTTP client.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use crate::values::{expand_vars, parse_duration, read_secret_file, resolve_path};
use crate::yaml::Path as At;

use super::{
    parse_rate, BreakerConfig, RawHeaderValue, RawTarget, RetryPolicy, Target, TargetError, Text,
    DEFAULT_CONCURRENCY, DEFAULT_FAILURE_THRESHOLD, DEFAULT_FIRST_PROBE, DEFAULT_INITIAL_BACKOFF,
    DEFAULT_JITTER, DEFAULT_MAX_AGE, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_BACKOFF, DEFAULT_OPEN_FOR,
    DEFAULT_RETRY_AFTER_MAX, DEFAULT_TIMEOUT,
};
use crate::deliver::sign::SigningKey;

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
        let secret = v.contains("${") || crate::deliver::outbox::sensitive_name(k);
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
        let tmp = tempfile::Builder::new()
            .prefix("callhook-target-tls-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
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
        let errs = validate_targets(&raw, dir).unwrap_err();
        let paths: Vec<String> = errs.iter().map(|e| e.path.to_string()).collect();
        for p in [
            "targets.crm.tls.ca_file",
            "targets.crm.tls.client_cert_file",
            "targets.crm.signing.secret",
        ] {
            assert!(paths.iter().any(|x| x == p), "{errs:#?}");
        }
    }
}
