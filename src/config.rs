//! Configuration: YAML → typed structs → validated, ready-to-use values.
//!
//! Phases (Vector style): [`RawConfig`] is what serde reads
//! (`deny_unknown_fields`, so a typo is an error, not a silently ignored
//! key); [`RawConfig::validate`] is a pure step that collects *every*
//! problem at once; [`Config`] holds compiled values (classifier regexes,
//! durations, resolved secrets).
//!
//! Secrets are never written in the file: `secret: "${AMI_SECRET}"` reads an
//! environment variable, `secret_file: /run/secrets/ami` reads a file. A
//! [`Secret`] prints as `<redacted>` in `Debug` output and logs.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::normalize::{Classifier, ClassifierConfig, NormalizerConfig};

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

/// The whole file, as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// PBXs to connect to.
    #[serde(default)]
    pub pbx: Vec<RawPbx>,
    /// Extension vs trunk classification.
    #[serde(default)]
    pub classify: RawClassify,
    /// Call tracking limits.
    #[serde(default)]
    pub calls: RawCalls,
}

/// One PBX.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPbx {
    /// Identifier carried by every event from this PBX (`main`, `branch-2`).
    pub id: String,
    /// AMI connection settings.
    pub ami: RawAmi,
}

/// AMI connection settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAmi {
    /// Host name or address.
    pub host: String,
    /// TCP port (default 5038).
    #[serde(default = "default_port")]
    pub port: u16,
    /// AMI user (manager.conf section).
    pub username: String,
    /// The secret, usually `${ENV_VAR}`.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// `md5` (challenge, default) or `plain`.
    #[serde(default)]
    pub auth: Option<String>,
    /// `Events:` value sent at login (default `on`).
    #[serde(default)]
    pub events: Option<String>,
    /// Keepalive ping interval (default `20s`).
    #[serde(default)]
    pub ping_interval: Option<String>,
    /// How long a ping may go unanswered (default `5s`).
    #[serde(default)]
    pub ping_timeout: Option<String>,
    /// Connect timeout (default `5s`).
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Largest AMI packet accepted (bytes, default 1 MiB).
    #[serde(default)]
    pub max_packet: Option<usize>,
    /// Events buffered between the socket reader and the normalizer (default 10000).
    #[serde(default)]
    pub queue_capacity: Option<usize>,
}

fn default_port() -> u16 {
    5038
}

/// Classification settings (see `normalize::channel`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawClassify {
    /// Regex an extension endpoint matches (default `^[0-9]{2,6}$`).
    pub extension_pattern: Option<String>,
    /// Channel-name regexes that are always extensions.
    #[serde(default)]
    pub extension_channels: Vec<String>,
    /// Channel-name regexes that are always trunks.
    #[serde(default)]
    pub trunk_channels: Vec<String>,
    /// Contexts whose new channels are trunks (default from-pstn, from-trunk, from-did).
    pub trunk_contexts: Option<Vec<String>>,
    /// Endpoint name → extension number.
    #[serde(default)]
    pub endpoint_extensions: HashMap<String, String>,
}

/// Call tracking limits.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCalls {
    /// Close a call with no hangup after this long (default `4h`).
    pub max_age: Option<String>,
    /// Asterisk ≤ 11: wait this long for the event tying a ringing channel (default `500ms`).
    pub orphan_grace: Option<String>,
}

/// A validated PBX.
#[derive(Debug, Clone)]
pub struct PbxConfig {
    /// Id.
    pub id: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub username: String,
    /// Secret.
    pub secret: Secret,
    /// MD5 challenge (true) or plain login.
    pub md5: bool,
    /// Events mask.
    pub events: String,
    /// Keepalive.
    pub ping_interval: Duration,
    /// Ping deadline.
    pub ping_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Max packet.
    pub max_packet: usize,
    /// Queue capacity.
    pub queue_capacity: usize,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// PBXs.
    pub pbx: Vec<PbxConfig>,
    /// Normalizer settings.
    pub normalizer: NormalizerConfig,
}

/// A configuration problem, with where it is when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the setting (`pbx[0].ami.secret`).
    pub path: String,
    /// 1-based line and column in the file, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((l, c)) = self.location {
            write!(f, "line {l}, column {c}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Loading failed: every problem found.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    /// The file.
    pub file: PathBuf,
    /// The problems.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  {}: {e}", self.file.display())?;
        }
        Ok(())
    }
}

/// Parses a duration such as `500ms`, `20s`, `5m`, `4h`, `1d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => n,
        "ms" => n / 1000.0,
        "m" | "min" | "mins" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Expands `${VAR}` references from the environment.
fn expand_env(s: &str, path: &str, errors: &mut Vec<ConfigError>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) => {
                let var = &after[..j];
                match std::env::var(var) {
                    Ok(v) => out.push_str(&v),
                    Err(_) => errors.push(ConfigError {
                        path: path.to_string(),
                        location: None,
                        message: format!("environment variable {var} is not set"),
                        hint: Some(format!("export {var}=… before starting callhook")),
                    }),
                }
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

impl RawConfig {
    /// Parses YAML text (syntax and shape only).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|e| ConfigError {
            path: String::new(),
            location: e.location().map(|l| (l.line(), l.column())),
            message: e.to_string(),
            hint: None,
        })
    }

    /// Checks everything and builds the usable config, reporting every problem.
    pub fn validate(self, base_dir: &Path) -> Result<Config, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let dur =
            |v: &Option<String>, path: String, default: Duration, errors: &mut Vec<ConfigError>| {
                match v {
                    None => default,
                    Some(s) => parse_duration(s).unwrap_or_else(|| {
                        errors.push(ConfigError {
                            path,
                            location: None,
                            message: format!("{s:?} is not a duration"),
                            hint: Some("write e.g. 500ms, 20s, 5m, 4h".into()),
                        });
                        default
                    }),
                }
            };
        let mut seen = std::collections::HashSet::new();
        let mut pbx = Vec::new();
        for (i, p) in self.pbx.into_iter().enumerate() {
            let at = |k: &str| format!("pbx[{i}].{k}");
            if p.id.trim().is_empty() {
                errors.push(ConfigError {
                    path: at("id"),
                    location: None,
                    message: "is empty".into(),
                    hint: Some("give every PBX a short id such as `main`".into()),
                });
            } else if !seen.insert(p.id.clone()) {
                errors.push(ConfigError {
                    path: at("id"),
                    location: None,
                    message: format!("duplicate PBX id {:?}", p.id),
                    hint: None,
                });
            }
            let a = p.ami;
            let secret = match (&a.secret, &a.secret_file) {
                (Some(_), Some(_)) => {
                    errors.push(ConfigError {
                        path: at("ami"),
                        location: None,
                        message: "both secret and secret_file are set".into(),
                        hint: Some("keep one".into()),
                    });
                    Secret::default()
                }
                (Some(s), None) => Secret::new(expand_env(s, &at("ami.secret"), &mut errors)),
                (None, Some(f)) => {
                    let f = if f.is_relative() {
                        base_dir.join(f)
                    } else {
                        f.clone()
                    };
                    match std::fs::read_to_string(&f) {
                        Ok(s) => Secret::new(s.trim_end_matches(['\r', '\n'])),
                        Err(e) => {
                            errors.push(ConfigError {
                                path: at("ami.secret_file"),
                                location: None,
                                message: format!("cannot read {}: {e}", f.display()),
                                hint: None,
                            });
                            Secret::default()
                        }
                    }
                }
                (None, None) => {
                    errors.push(ConfigError {
                        path: at("ami.secret"),
                        location: None,
                        message: "no secret".into(),
                        hint: Some("set secret: \"${AMI_SECRET}\" or secret_file: PATH".into()),
                    });
                    Secret::default()
                }
            };
            let md5 = match a.auth.as_deref().unwrap_or("md5") {
                "md5" => true,
                "plain" => false,
                other => {
                    errors.push(ConfigError {
                        path: at("ami.auth"),
                        location: None,
                        message: format!("unknown auth {other:?}"),
                        hint: Some("md5 or plain".into()),
                    });
                    true
                }
            };
            pbx.push(PbxConfig {
                id: p.id,
                host: a.host,
                port: a.port,
                username: a.username,
                secret,
                md5,
                events: a.events.unwrap_or_else(|| "on".into()),
                ping_interval: dur(
                    &a.ping_interval,
                    at("ami.ping_interval"),
                    Duration::from_secs(20),
                    &mut errors,
                ),
                ping_timeout: dur(
                    &a.ping_timeout,
                    at("ami.ping_timeout"),
                    Duration::from_secs(5),
                    &mut errors,
                ),
                connect_timeout: dur(
                    &a.connect_timeout,
                    at("ami.connect_timeout"),
                    Duration::from_secs(5),
                    &mut errors,
                ),
                max_packet: a.max_packet.unwrap_or(1024 * 1024),
                queue_capacity: a.queue_capacity.unwrap_or(10_000).max(1),
            });
        }
        let mut cc = ClassifierConfig::default();
        if let Some(p) = self.classify.extension_pattern {
            cc.extension_pattern = p;
        }
        cc.extension_channels = self.classify.extension_channels;
        cc.trunk_channels = self.classify.trunk_channels;
        if let Some(t) = self.classify.trunk_contexts {
            cc.trunk_contexts = t;
        }
        cc.endpoint_extensions = self.classify.endpoint_extensions;
        let classifier = match Classifier::new(&cc) {
            Ok(c) => c,
            Err(es) => {
                for e in es {
                    errors.push(ConfigError {
                        path: format!("classify.{}", e.field),
                        location: None,
                        message: format!("invalid regex {:?}: {}", e.pattern, e.source),
                        hint: None,
                    });
                }
                Classifier::default()
            }
        };
        let defaults = NormalizerConfig::default();
        let normalizer = NormalizerConfig {
            classifier,
            max_call_age: dur(
                &self.calls.max_age,
                "calls.max_age".into(),
                Duration::from_secs_f64(defaults.max_call_age),
                &mut errors,
            )
            .as_secs_f64(),
            orphan_grace: dur(
                &self.calls.orphan_grace,
                "calls.orphan_grace".into(),
                Duration::from_secs_f64(defaults.orphan_grace),
                &mut errors,
            )
            .as_secs_f64(),
            ..defaults
        };
        if errors.is_empty() {
            Ok(Config { pbx, normalizer })
        } else {
            Err(errors)
        }
    }
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            file: path.to_path_buf(),
            errors,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(vec![ConfigError {
                path: String::new(),
                location: None,
                message: format!("cannot read the file: {e}"),
                hint: None,
            }])
        })?;
        let raw = RawConfig::parse(&text).map_err(|e| fail(vec![e]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        raw.validate(base).map_err(fail)
    }

    /// The configuration used when none is given (replay without `--config`).
    pub fn default_replay() -> Config {
        Config {
            pbx: Vec::new(),
            normalizer: NormalizerConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("20s"), Some(Duration::from_secs(20)));
        assert_eq!(parse_duration("4h"), Some(Duration::from_secs(14400)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("20/sec"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn every_error_is_reported_and_secrets_are_redacted() {
        std::env::set_var("CALLHOOK_TEST_SECRET", "s3cret");
        let raw = RawConfig::parse(
            r#"
pbx:
  - id: main
    ami: { host: 127.0.0.1, username: u, secret: "${CALLHOOK_TEST_SECRET}" }
  - id: main
    ami: { host: 127.0.0.1, username: u, secret: "${CALLHOOK_TEST_UNSET_VAR}", ping_interval: soon, auth: kerberos }
classify: { extension_pattern: "(" }
"#,
        )
        .unwrap();
        let errs = raw.validate(Path::new(".")).unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 5, "{text:#?}");
        assert!(text.iter().any(|t| t.contains("duplicate PBX id")));
        assert!(text.iter().any(|t| t.contains("CALLHOOK_TEST_UNSET_VAR")));
        assert!(text.iter().any(|t| t.contains("ping_interval")));
        assert!(text.iter().any(|t| t.contains("kerberos")));
        assert!(text.iter().any(|t| t.contains("extension_pattern")));
        let ok = RawConfig::parse(
            "pbx: [{id: a, ami: {host: h, username: u, secret: \"${CALLHOOK_TEST_SECRET}\"}}]",
        )
        .unwrap()
        .validate(Path::new("."))
        .unwrap();
        assert_eq!(ok.pbx[0].secret.expose(), "s3cret");
        assert!(!format!("{ok:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_keys_are_errors_with_a_location() {
        let e = RawConfig::parse("pbx: []\nclasify: {}\n").unwrap_err();
        assert_eq!(e.location.map(|l| l.0), Some(2));
        assert!(e.message.contains("clasify"));
    }
}
