//! The configuration file as written: serde structs, no checks (those are
//! in [`validate`](super::validate) and in each section's owner).
//!
//! Unknown keys are errors (reported by the YAML layer, every one of them).
//! To add a section owned by another module: define its `Raw…` struct
//! there (`#[derive(Deserialize, Default)]`), add one field here, and check
//! it in [`Config::load`](super::Config::load) by pushing
//! [`Problem`](crate::yaml::Problem)s with paths from the document root.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Deserialize;

use super::push::RawPush;
use crate::deliver::target::RawTarget;
use crate::rules::{RewriteSpec, RuleSpec};

/// The whole file, as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address of the push endpoint and `/healthz`, e.g. `0.0.0.0:9188`;
    /// also of `/metrics`, `/readyz`, `/-/reload` and the admin API unless
    /// `admin.listen` is set. Unset: no HTTP listener.
    pub listen: Option<String>,
    /// Directory of the outbox database. Relative paths are relative to
    /// the config file's directory. Default: `callhook-data` in
    /// `$STATE_DIRECTORY` when systemd sets it (`StateDirectory=`), else
    /// beside the config file.
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
    /// Rules, evaluated in order: the file's own rules first, then each
    /// included file's, in `include` order.
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
    /// The FastAGI call-routing server (see `agi::config`).
    pub agi: Option<crate::agi::RawAgi>,
    /// The AMI proxy for existing tools (see `proxy::config`).
    pub ami_proxy: Option<crate::proxy::RawAmiProxy>,
    /// Connection caps, timeouts and body size of the HTTP listeners.
    #[serde(default)]
    pub http: crate::http::limits::RawHttpLimits,
    /// Cluster mode on NATS JetStream (unset: one process, SQLite outbox).
    pub cluster: Option<crate::cluster::RawCluster>,
    /// Template limits (`max_value_length`), see `template::bound_values`.
    pub templates: Option<crate::template::RawTemplates>,
    /// The live API (WebSocket/SSE, click-to-call) for people at the desk.
    pub live: Option<crate::live::config::RawLive>,
    /// The Meetip PRO compatible WebSocket (needs `live`).
    pub meetip: Option<crate::meetip::RawMeetip>,
    /// Extension state tracking (see `presence::config`).
    pub presence: Option<crate::presence::RawPresence>,
    /// Log format and level (see `logging`).
    #[serde(default)]
    pub log: crate::logging::LogConfig,
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
    /// Separate listener for `/metrics`, `/readyz`, `/-/reload` and the
    /// admin API (`listen` then serves only the push endpoint and
    /// `/healthz`); `host:port`, or a bare port for 127.0.0.1.
    pub listen: Option<String>,
    /// Connection cap of that listener (default 64).
    pub max_connections: Option<usize>,
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
#[derive(Debug, Deserialize, Default, Clone, PartialEq)]
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
    /// At most this many calls in progress per PBX or push team (default 50000).
    pub max_live: Option<usize>,
}
