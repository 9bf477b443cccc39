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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::deliver::outbox::OutboxOptions;
use crate::deliver::target::{validate_targets, RawTarget, Target};
use crate::normalize::{Classifier, ClassifierConfig, NormalizerConfig};
use crate::rules::{RewriteSpec, RuleSet, RuleSpec, RulesSpec};

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
    /// Address of `/metrics`, `/healthz`, `/readyz`, the admin API (and push
    /// endpoints), e.g. `127.0.0.1:9188`. Unset: no HTTP listener.
    pub listen: Option<String>,
    /// Directory of the outbox database (default `./callhook-data`,
    /// relative to the working directory).
    pub state_dir: Option<PathBuf>,
    /// PBXs to connect to.
    #[serde(default)]
    pub pbx: Vec<RawPbx>,
    /// Where deliveries go (see `deliver::target`).
    #[serde(default)]
    pub targets: BTreeMap<String, RawTarget>,
    /// Environment variables templates may read (`{{env.NAME}}`).
    #[serde(default)]
    pub env: Vec<String>,
    /// Number rewriting applied before matching and templating.
    #[serde(default)]
    pub rewrite: Vec<RewriteSpec>,
    /// Rules, evaluated in order (after those of `include` files? no: the
    /// file's own rules first, then each included file's, in order).
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Rule-set files (`rules/screen-pop.yaml`) whose `targets`, `env`,
    /// `rewrite` and `rules` are added to this file's; paths are relative to
    /// this file.
    #[serde(default)]
    pub include: Vec<PathBuf>,
    /// Admin API settings.
    pub admin: Option<RawAdmin>,
    /// Outbox limits.
    pub outbox: Option<RawOutbox>,
    /// Extension vs trunk classification.
    #[serde(default)]
    pub classify: RawClassify,
    /// Call tracking limits.
    #[serde(default)]
    pub calls: RawCalls,
    /// The asterCC-style push endpoint (needs `listen`).
    pub push: Option<RawPush>,
}

/// The asterCC-style push endpoint.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPush {
    /// URL path on the `listen` address (default `/v1/events/astercc`).
    pub path: Option<String>,
    /// Query parameter carrying the team's token (default `token`).
    pub token_param: Option<String>,
    /// Header carrying the team's token (default `X-Callhook-Token`).
    pub token_header: Option<String>,
    /// How long after a call's last push, once it is over, its record is
    /// written (default `2s`): pushes that arrive out of order are folded in.
    pub settle: Option<String>,
    /// Teams (tenants) by name; the name is the `pbx` of their calls.
    #[serde(default)]
    pub teams: BTreeMap<String, RawTeam>,
}

/// One push team.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTeam {
    /// The team's token, usually `${ACME_PUSH_TOKEN}`.
    pub token: Option<String>,
    /// A file holding the token (trailing newline ignored).
    pub token_file: Option<PathBuf>,
    /// UTC offset of `eventTime`s written without one (`+02:00`; default UTC).
    pub timezone: Option<String>,
}

/// A rule-set file named by `include`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRuleFile {
    /// Targets.
    #[serde(default)]
    pub targets: BTreeMap<String, RawTarget>,
    /// Environment variables for templates.
    #[serde(default)]
    pub env: Vec<String>,
    /// Number rewriting.
    #[serde(default)]
    pub rewrite: Vec<RewriteSpec>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// Admin API settings.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Bearer token, usually `${CALLHOOK_ADMIN_TOKEN}`.
    pub token: Option<String>,
    /// A file holding the token.
    pub token_file: Option<PathBuf>,
}

/// Outbox limits.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    /// Waiting deliveries beyond which new ones are refused (default 1000000).
    pub max_rows: Option<usize>,
    /// How long delivered rows are kept (default `24h`).
    pub done_retention: Option<String>,
    /// How long an idempotency key blocks a second enqueue (default `7d`).
    pub dedupe_window: Option<String>,
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
    /// Longest the reader stops reading a full queue's PBX before it drops
    /// events (default `50ms`; keep below manager.conf's `writetimeout`).
    #[serde(default)]
    pub max_stall: Option<String>,
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
    /// Backpressure limit (see `ami::client::ClientConfig::max_stall`).
    pub max_stall: Duration,
}

/// Default path of the push endpoint.
pub const DEFAULT_PUSH_PATH: &str = "/v1/events/astercc";

/// The validated push endpoint settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PushConfig {
    /// URL path.
    pub path: String,
    /// Query parameter with the token.
    pub token_param: String,
    /// Header with the token.
    pub token_header: String,
    /// Teams, by name.
    pub teams: Vec<PushTeam>,
}

/// A validated push team.
#[derive(Debug, Clone, PartialEq)]
pub struct PushTeam {
    /// Name: the `pbx` of its calls.
    pub name: String,
    /// Token (compared in constant time).
    pub token: Secret,
    /// Offset of `eventTime`s without one, seconds east of UTC.
    pub utc_offset: i32,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listener address.
    pub listen: Option<SocketAddr>,
    /// Outbox directory.
    pub state_dir: PathBuf,
    /// PBXs.
    pub pbx: Vec<PbxConfig>,
    /// Normalizer settings.
    pub normalizer: NormalizerConfig,
    /// Targets, ready to use (HTTP clients built).
    pub targets: Arc<BTreeMap<String, Target>>,
    /// Compiled rules.
    pub rules: Arc<RuleSet>,
    /// Admin API token (none: admin routes disabled).
    pub admin_token: Option<Secret>,
    /// Outbox limits.
    pub outbox: OutboxOptions,
    /// The push endpoint (none: not mounted).
    pub push: Option<PushConfig>,
}

/// A configuration problem, with where it is when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file it is in, when not the main config file.
    pub file: Option<PathBuf>,
    /// Dotted path of the setting (`pbx[0].ami.secret`).
    pub path: String,
    /// 1-based line and column in the file, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl ConfigError {
    /// `FILE:LINE:COL: path: message (hint: …)`, with `main` as the file
    /// when the error is not about an included one.
    pub fn render(&self, main: &Path) -> String {
        let mut out = self.file.as_deref().unwrap_or(main).display().to_string();
        if let Some((l, c)) = self.location {
            out.push_str(&format!(":{l}:{c}"));
        }
        out.push_str(": ");
        out.push_str(&self.to_string());
        out
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
            writeln!(f, "  {}", e.render(&self.file))?;
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
    let (out, missing) = expand_vars(s);
    for var in missing {
        errors.push(ConfigError {
            file: None,
            path: path.to_string(),
            location: None,
            message: format!("environment variable {var} is not set"),
            hint: Some(format!("export {var}=… before starting callhook")),
        });
    }
    out
}

/// Expands `${VAR}` references from the environment: the text with every
/// set variable substituted (unset ones left out), and the unset names.
pub fn expand_vars(s: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) => {
                let var = &after[..j];
                match std::env::var(var) {
                    Ok(v) => out.push_str(&v),
                    Err(_) => missing.push(var.to_string()),
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
    (out, missing)
}

/// Reads a secret file (a relative path is relative to `base`, the config
/// file's directory), without its trailing line break. Returns the path it
/// read, for error messages.
pub fn read_secret_file(base: &Path, file: &Path) -> (PathBuf, std::io::Result<String>) {
    let path = if file.is_relative() {
        base.join(file)
    } else {
        file.to_path_buf()
    };
    let text = std::fs::read_to_string(&path).map(|t| t.trim_end_matches(['\r', '\n']).to_string());
    (path, text)
}

impl RawConfig {
    /// Parses YAML text (syntax and shape only).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|e| ConfigError {
            file: None,
            path: String::new(),
            location: e.location().map(|l| (l.line(), l.column())),
            message: e.to_string(),
            hint: None,
        })
    }

    /// Checks the PBX, classification and call settings and builds the
    /// usable config (targets and rules come from `Config::load`), reporting
    /// every problem.
    pub fn validate(self, base_dir: &Path) -> Result<Config, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let dur =
            |v: &Option<String>, path: String, default: Duration, errors: &mut Vec<ConfigError>| {
                match v {
                    None => default,
                    Some(s) => parse_duration(s).unwrap_or_else(|| {
                        errors.push(ConfigError {
                            file: None,
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
                    file: None,
                    path: at("id"),
                    location: None,
                    message: "is empty".into(),
                    hint: Some("give every PBX a short id such as `main`".into()),
                });
            } else if !seen.insert(p.id.clone()) {
                errors.push(ConfigError {
                    file: None,
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
                        file: None,
                        path: at("ami"),
                        location: None,
                        message: "both secret and secret_file are set".into(),
                        hint: Some("keep one".into()),
                    });
                    Secret::default()
                }
                (Some(s), None) => Secret::new(expand_env(s, &at("ami.secret"), &mut errors)),
                (None, Some(f)) => {
                    let (f, text) = read_secret_file(base_dir, f);
                    match text {
                        Ok(s) => Secret::new(s),
                        Err(e) => {
                            errors.push(ConfigError {
                                file: None,
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
                        file: None,
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
                        file: None,
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
                max_stall: dur(
                    &a.max_stall,
                    at("ami.max_stall"),
                    crate::ami::client::DEFAULT_MAX_STALL,
                    &mut errors,
                ),
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
                        file: None,
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
        let push_settle = self.push.as_ref().and_then(|p| p.settle.clone());
        let push_settle = dur(
            &push_settle,
            "push.settle".into(),
            Duration::from_secs_f64(defaults.push_settle),
            &mut errors,
        )
        .as_secs_f64();
        let pbx_ids: Vec<String> = pbx.iter().map(|p| p.id.clone()).collect();
        let push = self
            .push
            .map(|p| validate_push(p, self.listen.as_deref(), &pbx_ids, base_dir, &mut errors));
        let normalizer = NormalizerConfig {
            push_settle,
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
            Ok(Config {
                pbx,
                normalizer,
                push,
                ..Config::default_replay()
            })
        } else {
            Err(errors)
        }
    }
}

/// Checks the `push:` section.
fn validate_push(
    p: RawPush,
    listen: Option<&str>,
    pbx_ids: &[String],
    base_dir: &Path,
    errors: &mut Vec<ConfigError>,
) -> PushConfig {
    let err = |path: &str, message: String, hint: Option<&str>| ConfigError {
        file: None,
        path: path.to_string(),
        location: None,
        message,
        hint: hint.map(str::to_string),
    };
    if listen.is_none_or(|l| l.trim().is_empty()) {
        errors.push(err(
            "push",
            "the push endpoint needs an HTTP listener".into(),
            Some("set listen: 0.0.0.0:9188 (or another host:port)"),
        ));
    }
    let path = p.path.unwrap_or_else(|| DEFAULT_PUSH_PATH.to_string());
    let reserved = ["/metrics", "/healthz", "/readyz", "/-/reload", "/api"];
    if !path.starts_with('/')
        || path.len() < 2
        || path.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | ':' | '*' | '{' | '}')
        })
        || path.contains("//")
    {
        errors.push(err(
            "push.path",
            format!("{path:?} is not a usable URL path"),
            Some("write an absolute path such as /v1/events/astercc (no query, no : or *)"),
        ));
    } else if reserved
        .iter()
        .any(|r| path == *r || path.starts_with(&format!("{r}/")))
    {
        errors.push(err(
            "push.path",
            format!("{path:?} is already used by callhook"),
            Some("choose another path, e.g. /v1/events/astercc"),
        ));
    }
    let token_param = p.token_param.unwrap_or_else(|| "token".into());
    if token_param.is_empty()
        || !token_param
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        errors.push(err(
            "push.token_param",
            format!("{token_param:?} is not a query parameter name"),
            Some("letters, digits, _ - ."),
        ));
    }
    let token_header = p.token_header.unwrap_or_else(|| "X-Callhook-Token".into());
    if axum::http::HeaderName::from_bytes(token_header.as_bytes()).is_err() {
        errors.push(err(
            "push.token_header",
            format!("{token_header:?} is not a header name"),
            Some("e.g. X-Callhook-Token"),
        ));
    }
    if p.teams.is_empty() {
        errors.push(err(
            "push.teams",
            "no teams".into(),
            Some("add one: teams: { acme: { token: \"${ACME_PUSH_TOKEN}\" } }"),
        ));
    }
    let mut teams: Vec<PushTeam> = Vec::new();
    for (name, t) in p.teams {
        let at = |k: &str| format!("push.teams.{name}.{k}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            errors.push(err(
                &format!("push.teams.{name}"),
                format!("{name:?} is not a usable team name"),
                Some("letters, digits, _ - . (it becomes the pbx of the team's calls)"),
            ));
        }
        if pbx_ids.contains(&name) {
            errors.push(err(
                &format!("push.teams.{name}"),
                format!("{name:?} is also a PBX id"),
                Some("give the team another name: it is the pbx of its calls"),
            ));
        }
        let token = match (&t.token, &t.token_file) {
            (Some(_), Some(_)) => {
                errors.push(err(
                    &format!("push.teams.{name}"),
                    "both token and token_file are set".into(),
                    Some("keep one"),
                ));
                None
            }
            (Some(v), None) => Some(expand_env(v, &at("token"), errors)),
            (None, Some(f)) => {
                let (f, text) = read_secret_file(base_dir, f);
                match text {
                    Ok(v) => Some(v),
                    Err(e) => {
                        errors.push(err(
                            &at("token_file"),
                            format!("cannot read {}: {e}", f.display()),
                            None,
                        ));
                        None
                    }
                }
            }
            (None, None) => {
                errors.push(err(
                    &at("token"),
                    "no token".into(),
                    Some("set token: \"${TEAM_PUSH_TOKEN}\" or token_file: PATH"),
                ));
                None
            }
        };
        let token = match token {
            Some(v) if v.chars().count() < 8 => {
                errors.push(err(
                    &at("token"),
                    "is shorter than 8 characters".into(),
                    Some("use a long random value, e.g. openssl rand -hex 24"),
                ));
                Secret::default()
            }
            Some(v) => {
                if teams.iter().any(|o| o.token.expose() == v) {
                    errors.push(err(
                        &at("token"),
                        "is the same as another team's token".into(),
                        Some("the token says which team pushed: give each team its own"),
                    ));
                }
                Secret::new(v)
            }
            None => Secret::default(),
        };
        let utc_offset = match t.timezone.as_deref() {
            None => 0,
            Some(z) => match crate::template::parse_offset(z) {
                Some(o) => o.whole_seconds(),
                None => {
                    errors.push(err(
                        &at("timezone"),
                        format!("{z:?} is not a UTC offset"),
                        Some("write +02:00, -03:00 or Z"),
                    ));
                    0
                }
            },
        };
        teams.push(PushTeam {
            name,
            token,
            utc_offset,
        });
    }
    PushConfig {
        path,
        token_param,
        token_header,
        teams,
    }
}

/// Where each part of a merged configuration came from, to point errors at
/// a file, line and column.
struct Sources {
    /// (path, text) of the main file (index 0) and each included file.
    files: Vec<(PathBuf, String)>,
    /// For each merged rule: the file it came from.
    rule_file: Vec<usize>,
    /// For each merged rewrite: the file it came from.
    rewrite_file: Vec<usize>,
    /// Target name → file.
    target_file: HashMap<String, usize>,
}

/// 1-based line and column of byte offset `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Finds `needle` in `text`, preferring the first occurrence after `anchor`.
fn locate(text: &str, needle: &str, anchor: Option<&str>) -> Option<(usize, usize)> {
    if needle.is_empty() {
        return None;
    }
    let start = anchor.and_then(|a| text.find(a)).unwrap_or(0);
    text.get(start..)
        .and_then(|t| t.find(needle))
        .map(|i| i + start)
        .or_else(|| text.find(needle))
        .map(|i| line_col(text, i))
}

impl Sources {
    /// Fills `file` and `location` of an error about `file_idx` using `needle`.
    fn place(
        &self,
        mut e: ConfigError,
        file_idx: usize,
        needle: Option<&str>,
        anchor: Option<&str>,
    ) -> ConfigError {
        if let Some((path, text)) = self.files.get(file_idx) {
            if file_idx > 0 {
                e.file = Some(path.clone());
            }
            if let Some(n) = needle {
                e.location = locate(text, n, anchor);
            }
        }
        e
    }
}

impl RawConfig {
    /// Merges the included rule-set files into this config, then validates
    /// everything; errors carry their file, line and column when found.
    fn validate_with_sources(
        mut self,
        base: &Path,
        main: (PathBuf, String),
    ) -> Result<Config, Vec<ConfigError>> {
        let mut src = Sources {
            files: vec![main],
            rule_file: vec![0; self.rules.len()],
            rewrite_file: vec![0; self.rewrite.len()],
            target_file: self.targets.keys().map(|k| (k.clone(), 0)).collect(),
        };
        let mut errors = Vec::new();
        for (i, inc) in std::mem::take(&mut self.include).into_iter().enumerate() {
            let path = if inc.is_relative() {
                base.join(&inc)
            } else {
                inc.clone()
            };
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    let err = ConfigError {
                        file: None,
                        path: format!("include[{i}]"),
                        location: None,
                        message: format!("cannot read {}: {e}", path.display()),
                        hint: None,
                    };
                    errors.push(src.place(err, 0, inc.to_str(), None));
                    continue;
                }
            };
            let parsed: Result<RawRuleFile, _> = if text.trim().is_empty() {
                Ok(RawRuleFile::default())
            } else {
                serde_yaml::from_str(&text)
            };
            let idx = src.files.len();
            src.files.push((path.clone(), text));
            match parsed {
                Ok(f) => {
                    for (name, t) in f.targets {
                        if self.targets.contains_key(&name) {
                            let err = ConfigError {
                                file: None,
                                path: format!("targets.{name}"),
                                location: None,
                                message: format!("target {name:?} is defined twice"),
                                hint: Some("rename one of them".into()),
                            };
                            errors.push(src.place(err, idx, Some(&format!("{name}:")), None));
                            continue;
                        }
                        src.target_file.insert(name.clone(), idx);
                        self.targets.insert(name, t);
                    }
                    self.env.extend(f.env);
                    src.rewrite_file
                        .extend(std::iter::repeat_n(idx, f.rewrite.len()));
                    self.rewrite.extend(f.rewrite);
                    src.rule_file
                        .extend(std::iter::repeat_n(idx, f.rules.len()));
                    self.rules.extend(f.rules);
                }
                Err(e) => errors.push(ConfigError {
                    file: Some(path),
                    path: String::new(),
                    location: e.location().map(|l| (l.line(), l.column())),
                    message: e.to_string(),
                    hint: None,
                }),
            }
        }
        let listen = match self.listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(l) => match l.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(e) => {
                    let err = ConfigError {
                        file: None,
                        path: "listen".into(),
                        location: None,
                        message: format!("{l:?} is not an address: {e}"),
                        hint: Some("write host:port, e.g. 127.0.0.1:9188".into()),
                    };
                    errors.push(src.place(err, 0, Some(l), None));
                    None
                }
            },
        };
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./callhook-data"));
        // Targets.
        let targets = match validate_targets(&self.targets, base) {
            Ok(t) => t,
            Err(es) => {
                for e in es {
                    let name = e
                        .path
                        .strip_prefix("targets.")
                        .and_then(|r| r.split('.').next())
                        .unwrap_or("");
                    let idx = src.target_file.get(name).copied().unwrap_or(0);
                    let err = ConfigError {
                        file: None,
                        path: e.path.clone(),
                        location: None,
                        message: e.message.clone(),
                        hint: e.hint.clone(),
                    };
                    let anchor = format!("{name}:");
                    errors.push(src.place(err, idx, e.needle.as_deref(), Some(&anchor)));
                }
                BTreeMap::new()
            }
        };
        // Rules.
        let spec = RulesSpec {
            env: std::mem::take(&mut self.env),
            rewrite: std::mem::take(&mut self.rewrite),
            rules: std::mem::take(&mut self.rules),
        };
        let known: std::collections::HashSet<String> = self.targets.keys().cloned().collect();
        let rules = match crate::rules::compile(&spec, &|t| known.contains(t)) {
            Ok(r) => r,
            Err(es) => {
                for e in es {
                    let idx = match e.rule_index {
                        Some(i) => src.rule_file.get(i).copied().unwrap_or(0),
                        None => e
                            .field
                            .strip_prefix("rewrite[")
                            .and_then(|r| r.split(']').next())
                            .and_then(|n| n.parse::<usize>().ok())
                            .and_then(|i| src.rewrite_file.get(i).copied())
                            .unwrap_or(0),
                    };
                    let local = e.rule_index.map(|i| {
                        let before = src.rule_file.iter().take(i).filter(|f| **f == idx).count();
                        (i, before)
                    });
                    let path = match local {
                        // Name the rule by its position in its own file.
                        Some((i, l)) if idx > 0 => {
                            e.field
                                .replacen(&format!("rules[{i}]"), &format!("rules[{l}]"), 1)
                        }
                        _ => e.field.clone(),
                    };
                    let message = match &e.rule_name {
                        Some(n) => format!("(rule {n:?}) {}", e.message),
                        None => e.message.clone(),
                    };
                    let err = ConfigError {
                        file: None,
                        path,
                        location: None,
                        message,
                        hint: e.hint.clone(),
                    };
                    let anchor = e.rule_name.as_ref().map(|n| format!("name: {n}"));
                    errors.push(src.place(err, idx, e.needle.as_deref(), anchor.as_deref()));
                }
                RuleSet::default()
            }
        };
        let admin_token = match self.admin.take() {
            None => None,
            Some(RawAdmin {
                token: Some(_),
                token_file: Some(_),
            }) => {
                errors.push(ConfigError {
                    file: None,
                    path: "admin".into(),
                    location: None,
                    message: "both token and token_file are set".into(),
                    hint: Some("keep one".into()),
                });
                None
            }
            Some(RawAdmin { token: Some(t), .. }) => {
                let t = expand_env(&t, "admin.token", &mut errors);
                (!t.is_empty()).then(|| Secret::new(t))
            }
            Some(RawAdmin {
                token_file: Some(f),
                ..
            }) => {
                let (f, text) = read_secret_file(base, &f);
                match text {
                    Ok(t) => Some(Secret::new(t)),
                    Err(e) => {
                        errors.push(ConfigError {
                            file: None,
                            path: "admin.token_file".into(),
                            location: None,
                            message: format!("cannot read {}: {e}", f.display()),
                            hint: None,
                        });
                        None
                    }
                }
            }
            Some(_) => None,
        };
        let mut outbox = OutboxOptions::default();
        if let Some(o) = self.outbox.take() {
            if let Some(m) = o.max_rows {
                outbox.max_rows = m.max(1);
            }
            for (v, field, slot) in [
                (
                    o.done_retention,
                    "outbox.done_retention",
                    &mut outbox.done_retention,
                ),
                (
                    o.dedupe_window,
                    "outbox.dedupe_window",
                    &mut outbox.dedupe_window,
                ),
            ] {
                if let Some(v) = v {
                    match parse_duration(&v) {
                        Some(d) => *slot = d,
                        None => errors.push(ConfigError {
                            file: None,
                            path: field.into(),
                            location: None,
                            message: format!("{v:?} is not a duration"),
                            hint: Some("write e.g. 24h, 7d".into()),
                        }),
                    }
                }
            }
        }
        let main_text = src.files.first().map(|f| f.1.clone()).unwrap_or_default();
        match self.validate(base) {
            Ok(mut cfg) => {
                if errors.is_empty() {
                    cfg.listen = listen;
                    cfg.state_dir = state_dir;
                    cfg.targets = Arc::new(targets);
                    cfg.rules = Arc::new(rules);
                    cfg.admin_token = admin_token;
                    cfg.outbox = outbox;
                    Ok(cfg)
                } else {
                    Err(errors)
                }
            }
            Err(es) => {
                // Point base-section errors at their setting when it is unique.
                let es = es.into_iter().map(|mut e| {
                    if e.location.is_none() {
                        let key = e.path.rsplit('.').next().unwrap_or("");
                        if !key.is_empty() && main_text.matches(&format!("{key}:")).count() == 1 {
                            e.location = locate(&main_text, &format!("{key}:"), None);
                        }
                    }
                    e
                });
                errors.extend(es);
                Err(errors)
            }
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
                file: None,
                path: String::new(),
                location: None,
                message: format!("cannot read the file: {e}"),
                hint: None,
            }])
        })?;
        let raw = RawConfig::parse(&text).map_err(|e| fail(vec![e]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        raw.validate_with_sources(base, (path.to_path_buf(), text))
            .map_err(fail)
    }

    /// Parses and validates configuration text (tests, the demo).
    pub fn from_text(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
        let raw = RawConfig::parse(text).map_err(|e| vec![e])?;
        raw.validate_with_sources(base, (base.join("<config>"), text.to_string()))
    }

    /// The configuration used when none is given (replay without `--config`).
    pub fn default_replay() -> Config {
        Config {
            listen: None,
            state_dir: PathBuf::from("./callhook-data"),
            pbx: Vec::new(),
            normalizer: NormalizerConfig::default(),
            targets: Arc::new(BTreeMap::new()),
            rules: Arc::new(RuleSet::default()),
            admin_token: None,
            outbox: OutboxOptions::default(),
            push: None,
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
