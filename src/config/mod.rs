//! Configuration: YAML → typed structs → validated, ready-to-use values.
//!
//! Phases (Vector style):
//!
//! 1. every file (the main one and each `include:`d rule-set file) is
//!    parsed into a tree with positions and deserialized into
//!    [`RawConfig`] / [`RawRuleFile`] by [`crate::yaml`], which reports every
//!    structural problem (syntax, unknown keys, wrong types, missing keys)
//!    and does not stop at the first;
//! 2. the included files are merged, remembering where each rule, rewrite,
//!    `env` entry and target came from;
//! 3. each section is checked by the module that owns it (targets in
//!    `deliver::target`, rules in `rules`, push teams in [`push`], the rest
//!    in [`validate`]): every problem is a [`Problem`] with a path, turned
//!    into FILE:LINE:COL by [`report`] from the parser's spans. Problems
//!    inside values that already failed to parse are dropped (no follow-on
//!    errors). Errors are sorted by file, then position.
//!
//! [`Config`] holds compiled values (classifier regexes, durations,
//! resolved secrets, HTTP clients). Secrets are never written in the file:
//! `secret: "${AMI_SECRET}"` reads an environment variable, `secret_file:
//! /run/secrets/ami` reads a file. A [`Secret`] prints as `<redacted>`.
//!
//! Paths in the file (`include`, `state_dir`, `*_file`, TLS files) are
//! relative to the file's directory.

mod errors;
mod push;
mod raw;
pub mod reload;
mod report;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::values::{expand_vars, parse_duration, parse_listen_addr, read_secret_file, Secret};
pub use errors::{ConfigError, ConfigErrors};
pub use push::{PushConfig, PushTeam, RawPush, RawTeam, DEFAULT_PUSH_PATH};
pub use raw::{RawAdmin, RawAmi, RawCalls, RawClassify, RawConfig, RawOutbox, RawPbx, RawRuleFile};
pub use reload::ReloadOutcome;

use crate::deliver::outbox::OutboxOptions;
use crate::deliver::target::{validate_targets, Target};
use crate::normalize::NormalizerConfig;
use crate::rules::{RuleSet, RulesSpec};
use crate::yaml::{self, Node, Path as At, Problem};
use report::{Origins, Report, SourceFile};

/// A validated PBX.
#[derive(Debug, Clone, PartialEq)]
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
    /// The admin listener (none: admin routes are on `listen`).
    pub admin_listen: Option<SocketAddr>,
    /// Its connection cap.
    pub admin_max_connections: usize,
    /// Limits of every HTTP listener.
    pub http: crate::http::limits::HttpLimits,
    /// The live API (none: not mounted).
    pub live: Option<crate::live::config::LiveConfig>,
    /// The Meetip PRO compatible channel (none: not served).
    pub meetip: Option<crate::meetip::MeetipConfig>,
    /// The `classify:` section as written (reloads compare it).
    pub classify: RawClassify,
    /// Cluster mode (none: one process with the SQLite outbox).
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Things that are allowed but probably not meant (sorted like errors).
    pub warnings: Vec<ConfigError>,
    /// Extension state tracking.
    pub presence: crate::presence::PresenceConfig,
    /// The FastAGI server (none: not started).
    pub agi: Option<crate::agi::AgiConfig>,
    /// The AMI proxy (none: not started).
    pub ami_proxy: Option<crate::proxy::AmiProxyConfig>,
    /// Log settings of the `log:` section (the command line and the
    /// environment may override them).
    pub log: crate::logging::LogSettings,
}

/// What the outbox commands read of a configuration
/// ([`Config::load_outbox`]).
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// Where the outbox lives.
    pub state_dir: PathBuf,
    /// Its options.
    pub outbox: OutboxOptions,
    /// Log settings of the `log:` section.
    pub log: crate::logging::LogSettings,
    /// Cluster mode: the deliveries are in the NATS streams, not the outbox.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// Name of the state directory when `state_dir` is not set.
pub const DEFAULT_STATE_DIR: &str = "callhook-data";

impl Config {
    /// Reads, parses and validates a file (and the files it includes).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::single(
                path,
                ConfigError::general(format!("cannot read the file: {e}"), None),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        Self::build(path.to_path_buf(), text, base)
    }

    /// Reads only what commands that work on the outbox need (`deliveries`,
    /// `outbox`): `state_dir`, `outbox` and `log`. Nothing else is built,
    /// so the secrets of the rules, targets and PBXs (`${CRM_TOKEN}`,
    /// `env: [CRM_TOKEN]`) need not be set; a file that does not parse is
    /// still refused, with every error.
    pub fn load_outbox(path: &Path) -> Result<OutboxSettings, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::single(
                path,
                ConfigError::general(format!("cannot read the file: {e}"), None),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        let mut report = Report::default();
        let mut problems: Vec<Problem> = Vec::new();
        let (raw, _) = read_file::<RawConfig>(&mut report, path.to_path_buf(), text);
        let settings = raw.map(|mut raw| OutboxSettings {
            state_dir: state_dir(raw.state_dir.as_deref(), base),
            outbox: validate::outbox(raw.outbox.as_ref(), &mut problems),
            cluster: raw
                .cluster
                .as_ref()
                .map(|c| c.validate(base, &mut problems)),
            log: match std::mem::take(&mut raw.log).validate() {
                Ok(l) => l,
                Err(e) => {
                    problems.push(
                        Problem::new(At::root().key("log").key(e.field), e.message).hint(e.hint),
                    );
                    crate::logging::LogSettings::default()
                }
            },
        });
        for p in problems {
            report.error(p);
        }
        let failed = report.has_errors();
        let (errors, _) = report.finish();
        match settings {
            Some(s) if !failed => Ok(s),
            _ => Err(ConfigErrors {
                file: path.to_path_buf(),
                errors,
                warnings: Vec::new(),
            }),
        }
    }

    /// The normalizer settings of the daemon running this config: as
    /// [`Config::normalizer`], with its sources restricted to the PBX and
    /// push team ids configured (calls of any other id are closed; a replay
    /// or backfill of a capture keeps `sources: None`).
    pub fn daemon_normalizer(&self) -> NormalizerConfig {
        let ids = self
            .pbx
            .iter()
            .map(|p| p.id.clone())
            .chain(
                self.push
                    .iter()
                    .flat_map(|p| p.teams.iter().map(|t| t.name.clone())),
            )
            .collect();
        NormalizerConfig {
            sources: Some(Arc::new(ids)),
            ..self.normalizer.clone()
        }
    }

    /// Parses and validates configuration text (tests, the demo); relative
    /// paths are relative to `base`.
    pub fn from_text(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
        Self::build(base.join("<config>"), text.to_string(), base).map_err(|e| e.errors)
    }

    /// The configuration used when none is given (replay without `--config`).
    pub fn default_replay() -> Config {
        Config {
            listen: None,
            state_dir: PathBuf::from(".").join(DEFAULT_STATE_DIR),
            pbx: Vec::new(),
            normalizer: NormalizerConfig::default(),
            targets: Arc::new(BTreeMap::new()),
            rules: Arc::new(RuleSet::default()),
            admin_token: None,
            outbox: OutboxOptions::default(),
            push: None,
            admin_listen: None,
            admin_max_connections: crate::http::limits::DEFAULT_ADMIN_MAX_CONNECTIONS,
            http: crate::http::limits::HttpLimits::default(),
            live: None,
            meetip: None,
            classify: RawClassify::default(),
            cluster: None,
            warnings: Vec::new(),
            presence: crate::presence::PresenceConfig::default(),
            agi: None,
            ami_proxy: None,
            log: crate::logging::LogSettings::default(),
        }
    }

    /// What `run` additionally requires of a configuration that loads
    /// (`check` reports the same): a source of calls.
    pub fn daemon_errors(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if self.pbx.is_empty() && self.push.is_none() && self.agi.is_none() {
            out.push(ConfigError::general(
                "no source configured: nothing would be received",
                Some("add a `pbx:` entry, a `push:` or an `agi:` section"),
            ));
        }
        out
    }

    /// Warnings about a daemon configuration that loads: it sends nothing,
    /// or has no HTTP listener (no /metrics, /healthz, HTTP reload).
    pub fn daemon_warnings(&self) -> Vec<ConfigError> {
        let mut out = self.warnings.clone();
        let only_agi = self.agi.is_some() && self.pbx.is_empty() && self.push.is_none();
        if self.rules.is_empty() && !only_agi {
            out.push(ConfigError::general(
                "no rules: calls are received but no webhook is ever sent",
                Some("add rules: or include: a rule set from rules/"),
            ));
        }
        if self.listen.is_none() {
            out.push(ConfigError::general(
                "no HTTP listener: no /metrics, /healthz or /readyz, reload only by SIGHUP",
                Some("set listen: 127.0.0.1:9188"),
            ));
        }
        out
    }

    fn build(path: PathBuf, text: String, base: &Path) -> Result<Config, ConfigErrors> {
        let mut report = Report::default();
        let mut problems: Vec<Problem> = Vec::new();
        let (raw, empty) = read_file::<RawConfig>(&mut report, path.clone(), text);
        let Some(mut raw) = raw else {
            let (errors, warnings) = report.finish();
            return Err(ConfigErrors {
                file: path,
                errors,
                warnings,
            });
        };
        if empty {
            report.error_in(
                0,
                Problem::new(At::root(), "the file is empty")
                    .hint("start from deploy/callhook.example.yaml"),
            );
        }

        // Included rule-set files, merged after this file's own items.
        let o = &mut report.origins;
        Origins::add(&mut o.rules, 0, raw.rules.len());
        Origins::add(&mut o.rewrite, 0, raw.rewrite.len());
        Origins::add(&mut o.env, 0, raw.env.len());
        for name in raw.targets.keys() {
            o.targets.insert(name.clone(), 0);
        }
        for (i, inc) in std::mem::take(&mut raw.include).into_iter().enumerate() {
            let file = crate::values::resolve_path(base, &inc);
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    report.error_in(
                        0,
                        Problem::new(
                            At::root().key("include").index(i),
                            format!("cannot read {}: {e}", file.display()),
                        ),
                    );
                    continue;
                }
            };
            let idx = report.files.len();
            let (f, empty) = read_file::<RawRuleFile>(&mut report, file, text);
            if empty {
                report.error_in(
                    idx,
                    Problem::new(At::root(), "the rule-set file is empty")
                        .hint("give it rules: (and the targets, env and rewrite they need)"),
                );
            }
            let Some(f) = f else { continue };
            for (name, t) in f.targets {
                if report.origins.targets.contains_key(&name) {
                    report.error_in(
                        idx,
                        Problem::new(
                            At::root().key("targets").key(name.clone()),
                            format!("target {name:?} is defined twice"),
                        )
                        .hint("rename one of them"),
                    );
                    continue;
                }
                report.origins.targets.insert(name.clone(), idx);
                raw.targets.insert(name, t);
            }
            let o = &mut report.origins;
            Origins::add(&mut o.env, idx, f.env.len());
            Origins::add(&mut o.rewrite, idx, f.rewrite.len());
            Origins::add(&mut o.rules, idx, f.rules.len());
            raw.env.extend(f.env);
            raw.rewrite.extend(f.rewrite);
            raw.rules.extend(f.rules);
        }

        // Sections.
        let listen = validate::listen(raw.listen.as_deref(), &mut problems);
        let state_dir = state_dir(raw.state_dir.as_deref(), base);
        let targets = match validate_targets(&raw.targets, base) {
            Ok(t) => t,
            Err(es) => {
                problems.extend(es.into_iter().map(|e| {
                    Problem::new(e.path, e.message)
                        .hint_opt(e.hint)
                        .needle(e.needle)
                }));
                BTreeMap::new()
            }
        };
        let spec = RulesSpec {
            env: std::mem::take(&mut raw.env),
            rewrite: std::mem::take(&mut raw.rewrite),
            rules: std::mem::take(&mut raw.rules),
        };
        let known: std::collections::HashSet<&str> =
            raw.targets.keys().map(String::as_str).collect();
        let mut rules = match crate::rules::compile(&spec, &|t| known.contains(t)) {
            Ok(r) => r,
            Err(es) => {
                for e in es {
                    let message = match &e.rule_name {
                        Some(n) => format!("(rule {n:?}) {}", e.message),
                        None => e.message,
                    };
                    problems.push(
                        Problem::new(At::parse(&e.field), message)
                            .hint_opt(e.hint)
                            .needle(e.needle),
                    );
                }
                RuleSet::default()
            }
        };
        if let Some(n) = raw.templates.as_ref().and_then(|t| t.max_value_length) {
            if n == 0 {
                problems.push(
                    Problem::new(
                        At::root().key("templates").key("max_value_length"),
                        "must be at least 1 (bytes)",
                    )
                    .hint("the default is 4096"),
                );
            } else {
                rules.set_max_value_length(n);
            }
        }
        let http = raw.http.validate(&mut problems);
        let cluster = raw
            .cluster
            .as_ref()
            .map(|c| c.validate(base, &mut problems));
        let (admin_listen, admin_max_connections) =
            validate::admin_listener(raw.admin.as_ref(), listen, &mut problems);
        let admin_token = validate::admin(raw.admin.as_ref(), base, &mut problems);
        let outbox = validate::outbox(raw.outbox.as_ref(), &mut problems);
        let log = match std::mem::take(&mut raw.log).validate() {
            Ok(l) => l,
            Err(e) => {
                problems
                    .push(Problem::new(At::root().key("log").key(e.field), e.message).hint(e.hint));
                crate::logging::LogSettings::default()
            }
        };
        let pbx = validate::pbx(std::mem::take(&mut raw.pbx), base, &mut problems);
        let classify = std::mem::take(&mut raw.classify);
        let classifier = validate::classify(classify.clone(), &mut problems);
        let defaults = NormalizerConfig::default();
        let push_settle = raw.push.as_ref().and_then(|p| p.settle.clone());
        let push_settle = validate::duration(
            &push_settle,
            At::root().key("push").key("settle"),
            Duration::from_secs_f64(defaults.push_settle),
            &mut problems,
        )
        .as_secs_f64();
        let pbx_ids: Vec<String> = pbx.iter().map(|p| p.id.clone()).collect();
        let tenant_ids: Vec<String> = pbx_ids
            .iter()
            .cloned()
            .chain(raw.push.iter().flat_map(|p| p.teams.keys().cloned()))
            .collect();
        let presence =
            crate::presence::config::validate(raw.presence.take(), &tenant_ids, &mut problems);
        let push = raw
            .push
            .take()
            .map(|p| push::validate_push(p, raw.listen.as_deref(), &pbx_ids, base, &mut problems));
        // The live API and the Meetip channel (tenants: PBXs and push teams).
        let mut known = pbx_ids.clone();
        if let Some(p) = &push {
            known.extend(p.teams.iter().map(|t| t.name.clone()));
        }
        let live = raw.live.take().map(|l| {
            if listen.is_none() {
                problems.push(
                    Problem::new(
                        At::root().key("live"),
                        "the live API needs an HTTP listener",
                    )
                    .hint("set listen: 127.0.0.1:9188 (or another host:port)"),
                );
            }
            l.validate(base, &known, &mut problems)
        });
        let meetip = raw.meetip.take().map(|m| {
            if live.is_none() {
                problems.push(
                    Problem::new(
                        At::root().key("meetip"),
                        "the Meetip channel needs the live section (tenants)",
                    )
                    .hint("add live: { tenants: { PBX_ID: { key: ..., code: ... } } }"),
                );
            }
            m.validate(&mut problems)
        });
        // Stored requests hold the rule set's secrets masked: the
        // dispatcher puts them back from the target at send time.
        let secrets = Arc::new(rules.secrets().clone());
        let mut targets = targets;
        for t in targets.values_mut() {
            t.set_secrets(secrets.clone());
        }
        let targets = Arc::new(targets);
        let agi = raw.agi.take().and_then(|a| {
            let cx = crate::agi::BuildContext {
                targets: &targets,
                classifier: &classifier,
                pbx_ids: &pbx_ids,
                env: &spec.env,
            };
            match crate::agi::build(&a, &cx) {
                Ok(c) => Some(c),
                Err(ps) => {
                    problems.extend(ps.into_iter().map(|p| {
                        Problem::new(At::parse(&p.path), p.message)
                            .hint_opt(p.hint)
                            .needle(p.needle)
                    }));
                    None
                }
            }
        });
        let ami_proxy =
            crate::proxy::config::validate(raw.ami_proxy.take(), &pbx_ids, base, &mut problems);
        let (max_call_age, orphan_grace) = validate::calls(
            &raw.calls,
            (defaults.max_call_age, defaults.orphan_grace),
            &mut problems,
        );
        let max_live_calls = validate::max_live(&raw.calls, defaults.max_live_calls, &mut problems);
        for p in problems {
            report.error(p);
        }
        if report.has_errors() {
            let (errors, warnings) = report.finish();
            return Err(ConfigErrors {
                file: path,
                errors,
                warnings,
            });
        }
        let (_, warnings) = report.finish();
        Ok(Config {
            listen,
            state_dir,
            pbx,
            normalizer: NormalizerConfig {
                push_settle,
                classifier,
                max_call_age,
                orphan_grace,
                max_live_calls,
                ..defaults
            },
            targets,
            rules: Arc::new(rules),
            admin_token,
            outbox,
            push,
            admin_listen,
            admin_max_connections,
            http,
            live,
            meetip,
            classify,
            cluster,
            warnings,
            presence,
            agi,
            ami_proxy,
            log,
        })
    }
}

/// Where the outbox lives: `state_dir` relative to the config file's
/// directory; unset, `callhook-data` in systemd's `$STATE_DIRECTORY` or
/// beside the config file.
fn state_dir(written: Option<&Path>, base: &Path) -> PathBuf {
    match written {
        Some(p) => crate::values::resolve_path(base, p),
        None => match std::env::var_os("STATE_DIRECTORY") {
            // systemd may list several, `:`-separated: the first one.
            Some(s) if !s.is_empty() => {
                let s = s.to_string_lossy();
                PathBuf::from(s.split(':').next().unwrap_or(&s)).join(DEFAULT_STATE_DIR)
            }
            _ => base.join(DEFAULT_STATE_DIR),
        },
    }
}

/// Parses one file into `T`, recording the file and its problems.
/// Returns the value (`None` when it could not be built) and whether the
/// file is empty.
fn read_file<T: serde::de::DeserializeOwned + Default>(
    report: &mut Report,
    path: PathBuf,
    text: String,
) -> (Option<T>, bool) {
    let idx = report.files.len();
    let doc = yaml::parse(&text);
    let syntax_failed = doc.root.is_none() && !doc.problems.is_empty();
    let empty = doc.problems.is_empty() && doc.root.as_ref().is_none_or(Node::is_null);
    let root = match doc.root {
        Some(r) if !r.is_null() => r,
        _ => Node::empty_map(),
    };
    report.files.push(SourceFile {
        path,
        text,
        root,
        poisoned: Vec::new(),
    });
    for p in doc.problems {
        report.error_in(idx, p);
    }
    if syntax_failed {
        return (None, false);
    }
    let r = yaml::de::from_node::<T>(&report.files[idx].root);
    for p in r.problems {
        report.error_in(idx, p);
    }
    report.files[idx].poisoned = r.poisoned;
    (r.value, empty)
}

#[cfg(test)]
mod tests;
