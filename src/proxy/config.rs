//! The `ami_proxy:` config section.
//!
//! ```yaml
//! ami_proxy:
//!   listen: 127.0.0.1:5040          # required; host:port or a bare port (127.0.0.1)
//!   max_connections: 64             # clients at once
//!   max_connections_per_ip: 16      # per client address (an IPv6 client counts by its /64)
//!   login_timeout: 10s              # from connect to a successful Login
//!   max_packet: 65536               # bytes of one client packet; larger ones are refused
//!   client_queue: 2000              # events waiting for a slow client before it is disconnected
//!   write_timeout: 10s              # a client that accepts no byte for this long is disconnected
//!   max_pending_actions: 16         # actions of one client in flight on the PBX connection
//!   max_actions_per_second: 50      # per client (also its burst); beyond, its socket is not read
//!   max_login_failures: 5           # failed logins per address within login_failure_window ...
//!   login_failure_window: 1m        # ... after which that address is refused until the window passes
//!   login_failure_delay: 1s         # wait before answering a failed login (as Asterisk does)
//!   users:
//!     - username: panel
//!       secret: "${PANEL_AMI_SECRET}" # or secret_file: /run/secrets/panel
//!       pbx: main                     # default: the only configured PBX
//!       actions: [Ping, Status, CoreShowChannels, QueueStatus, Originate]
//!       limits:                       # allowed header values per action
//!         Originate: { Context: [from-internal], Application: [] }
//!       events: [Newchannel, Hangup, "Dial*", "Bridge*", "Queue*"]  # default: every event
//!       extensions: ["1001", "_10XX"] # only events about these extensions' channels
//! ```
//!
//! Every key but `listen` and `users` is optional; unknown keys are errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::actions::ActionPolicy;
use super::events::EventFilter;
use crate::values::{expand_vars, parse_duration, parse_listen_addr, read_secret_file, Secret};
use crate::yaml::{Path as At, Problem};

/// `ami_proxy:` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAmiProxy {
    /// Where clients connect (`host:port`, or a bare port for 127.0.0.1).
    pub listen: Option<String>,
    /// The AMI users of the proxy.
    #[serde(default)]
    pub users: Vec<RawProxyUser>,
    /// Clients connected at once (default 64).
    pub max_connections: Option<usize>,
    /// Clients connected at once from one address (default 16).
    pub max_connections_per_ip: Option<usize>,
    /// Time from connect to a successful login (default `10s`).
    pub login_timeout: Option<String>,
    /// Largest client packet in bytes (default 65536).
    pub max_packet: Option<usize>,
    /// Events waiting for one client (default 2000).
    pub client_queue: Option<usize>,
    /// Longest a write to a client may block (default `10s`).
    pub write_timeout: Option<String>,
    /// Actions of one client in flight (default 16).
    pub max_pending_actions: Option<usize>,
    /// Actions one client may send per second, also its burst (default 50).
    pub max_actions_per_second: Option<u32>,
    /// Failed logins per address within the window (default 5).
    pub max_login_failures: Option<u32>,
    /// The failed-login window (default `1m`).
    pub login_failure_window: Option<String>,
    /// Delay before a failed login is answered (default `1s`).
    pub login_failure_delay: Option<String>,
}

/// One user as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawProxyUser {
    /// The `Username` of its `Login`.
    pub username: String,
    /// Its secret, usually `${ENV_VAR}`.
    pub secret: Option<String>,
    /// A file holding the secret (trailing newline ignored).
    pub secret_file: Option<PathBuf>,
    /// The PBX its actions go to and its events come from.
    pub pbx: Option<String>,
    /// Actions it may send (case-insensitive names, `*` for any).
    #[serde(default)]
    pub actions: Vec<String>,
    /// Per action: header → allowed values (`[]`: must be absent, `""`
    /// in the list: may be absent).
    #[serde(default)]
    pub limits: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// Event names it receives (`Queue*` globs; default every event).
    pub events: Option<Vec<String>>,
    /// Only events about channels of these extensions (number patterns).
    pub extensions: Option<Vec<String>>,
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct AmiProxyConfig {
    /// Listening address.
    pub listen: SocketAddr,
    /// Users.
    pub users: Vec<ProxyUser>,
    /// Connection cap.
    pub max_connections: usize,
    /// Per-address connection cap.
    pub max_connections_per_ip: usize,
    /// Login deadline.
    pub login_timeout: Duration,
    /// Largest client packet.
    pub max_packet: usize,
    /// Events waiting for one client.
    pub client_queue: usize,
    /// Write deadline.
    pub write_timeout: Duration,
    /// Actions of one client in flight.
    pub max_pending_actions: usize,
    /// Actions of one client per second (and its burst).
    pub max_actions_per_second: u32,
    /// Failed logins per address per window.
    pub max_login_failures: u32,
    /// The failed-login window.
    pub login_failure_window: Duration,
    /// Delay before a failed login's answer.
    pub login_failure_delay: Duration,
}

/// One validated user.
#[derive(Debug, Clone)]
pub struct ProxyUser {
    /// Login name (compared case-sensitively, as Asterisk does).
    pub username: String,
    /// Its secret.
    pub secret: Secret,
    /// Its PBX id.
    pub pbx: String,
    /// What it may send.
    pub actions: ActionPolicy,
    /// What it receives.
    pub events: EventFilter,
}

impl AmiProxyConfig {
    /// Defaults for everything but the address and the users (tests).
    pub fn new(listen: SocketAddr, users: Vec<ProxyUser>) -> Self {
        Self {
            listen,
            users,
            max_connections: 64,
            max_connections_per_ip: 16,
            login_timeout: Duration::from_secs(10),
            max_packet: 64 * 1024,
            client_queue: 2000,
            write_timeout: Duration::from_secs(10),
            max_pending_actions: 16,
            max_actions_per_second: 50,
            max_login_failures: 5,
            login_failure_window: Duration::from_secs(60),
            login_failure_delay: Duration::from_secs(1),
        }
    }

    /// Whether `other` configures the same proxy (reloads compare them).
    pub fn same_as(&self, other: &AmiProxyConfig) -> bool {
        // The Debug form covers every setting but the secrets (redacted).
        format!("{self:?}") == format!("{other:?}")
            && self.users.len() == other.users.len()
            && self
                .users
                .iter()
                .zip(&other.users)
                .all(|(a, b)| a.secret == b.secret)
    }

    /// The PBX ids the users talk to, without duplicates.
    pub fn pbx_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for u in &self.users {
            if !out.contains(&u.pbx) {
                out.push(u.pbx.clone());
            }
        }
        out
    }
}

/// Checks `ami_proxy:` (at `ami_proxy` from the root); `pbx_ids` are the
/// configured PBXs, `base` the config file's directory. Every problem is
/// appended to `errors`; `None` when the section is absent or unusable.
pub fn validate(
    raw: Option<RawAmiProxy>,
    pbx_ids: &[String],
    base: &Path,
    errors: &mut Vec<Problem>,
) -> Option<AmiProxyConfig> {
    let raw = raw?;
    let here = At::root().key("ami_proxy");
    let at = |k: &str| here.key(k);
    let before = errors.len();
    let listen = match raw.listen.as_deref().map(str::trim) {
        None | Some("") => {
            errors.push(
                Problem::new(at("listen"), "is not set")
                    .hint("write host:port, e.g. 127.0.0.1:5040"),
            );
            None
        }
        Some(l) => {
            let a = parse_listen_addr(l);
            if a.is_none() {
                errors.push(
                    Problem::new(at("listen"), format!("{l:?} is not an address"))
                        .hint("write host:port, e.g. 127.0.0.1:5040"),
                );
            }
            a
        }
    };
    let d = AmiProxyConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), Vec::new());
    let count = |v: Option<usize>, key: &str, default: usize, errors: &mut Vec<Problem>| match v {
        None => default,
        Some(0) => {
            errors
                .push(Problem::new(at(key), "must be at least 1").hint(format!("e.g. {default}")));
            default
        }
        Some(n) => n,
    };
    let dur = |v: &Option<String>, key: &str, default: Duration, errors: &mut Vec<Problem>| match v
        .as_deref()
    {
        None => default,
        Some(s) => match parse_duration(s) {
            Some(x) => x,
            None => {
                errors.push(
                    Problem::new(at(key), format!("{s:?} is not a duration"))
                        .hint("write e.g. 500ms, 10s, 1m"),
                );
                default
            }
        },
    };
    let max_connections = count(
        raw.max_connections,
        "max_connections",
        d.max_connections,
        errors,
    );
    let max_connections_per_ip = count(
        raw.max_connections_per_ip,
        "max_connections_per_ip",
        d.max_connections_per_ip,
        errors,
    )
    .min(max_connections);
    let max_packet = count(raw.max_packet, "max_packet", d.max_packet, errors);
    if max_packet < 1024 {
        errors.push(
            Problem::new(at("max_packet"), format!("{max_packet} bytes is too small"))
                .hint("at least 1024 (a Login is about 100 bytes, an Originate a few hundred)"),
        );
    }
    let cfg_max_login_failures = match raw.max_login_failures {
        None => d.max_login_failures,
        Some(0) => {
            errors
                .push(Problem::new(at("max_login_failures"), "must be at least 1").hint("e.g. 5"));
            d.max_login_failures
        }
        Some(n) => n,
    };
    let mut users = Vec::new();
    let mut seen = std::collections::HashSet::new();
    if raw.users.is_empty() {
        errors.push(
            Problem::new(at("users"), "no users: nobody could log in")
                .hint("add users: [{ username: panel, secret: \"${PANEL_AMI_SECRET}\", actions: [Ping] }]"),
        );
    }
    for (i, u) in raw.users.into_iter().enumerate() {
        let uat = at("users").index(i);
        if let Some(user) = validate_user(u, &uat, pbx_ids, base, &mut seen, errors) {
            users.push(user);
        }
    }
    let cfg = AmiProxyConfig {
        listen: listen.unwrap_or(d.listen),
        users,
        max_connections,
        max_connections_per_ip,
        login_timeout: dur(&raw.login_timeout, "login_timeout", d.login_timeout, errors),
        max_packet,
        client_queue: count(raw.client_queue, "client_queue", d.client_queue, errors),
        write_timeout: dur(&raw.write_timeout, "write_timeout", d.write_timeout, errors),
        max_pending_actions: count(
            raw.max_pending_actions,
            "max_pending_actions",
            d.max_pending_actions,
            errors,
        ),
        max_actions_per_second: count(
            raw.max_actions_per_second.map(|n| n as usize),
            "max_actions_per_second",
            d.max_actions_per_second as usize,
            errors,
        )
        .min(u32::MAX as usize) as u32,
        max_login_failures: cfg_max_login_failures,
        login_failure_window: dur(
            &raw.login_failure_window,
            "login_failure_window",
            d.login_failure_window,
            errors,
        ),
        login_failure_delay: dur(
            &raw.login_failure_delay,
            "login_failure_delay",
            d.login_failure_delay,
            errors,
        ),
    };
    (errors.len() == before && listen.is_some()).then_some(cfg)
}

fn validate_user(
    u: RawProxyUser,
    at: &At,
    pbx_ids: &[String],
    base: &Path,
    seen: &mut std::collections::HashSet<String>,
    errors: &mut Vec<Problem>,
) -> Option<ProxyUser> {
    let before = errors.len();
    let name = u.username.trim().to_string();
    if name.is_empty() || name.contains(['\r', '\n']) {
        errors.push(
            Problem::new(at.key("username"), "is empty").hint("the Username tools log in with"),
        );
    } else if !seen.insert(name.clone()) {
        errors.push(
            Problem::new(
                at.key("username"),
                format!("user {name:?} is defined twice"),
            )
            .hint("give each tool its own user"),
        );
    }
    let secret = secret(&u, at, base, errors);
    if let Some(s) = &secret {
        if s.expose().is_empty() {
            errors.push(
                Problem::new(at.key("secret"), "is empty").hint("an empty secret lets anyone in"),
            );
        }
    }
    let pbx = match (u.pbx, pbx_ids) {
        (Some(p), ids) if ids.contains(&p) => Some(p),
        (Some(p), ids) => {
            errors.push(
                Problem::new(at.key("pbx"), format!("unknown PBX {p:?}"))
                    .hint(format!("one of: {}", ids.join(", "))),
            );
            None
        }
        (None, [one]) => Some(one.clone()),
        (None, []) => {
            errors.push(
                Problem::new(at.key("pbx"), "no PBX is configured")
                    .hint("the proxy shares a pbx: entry's AMI connection; add one"),
            );
            None
        }
        (None, ids) => {
            errors.push(
                Problem::new(at.key("pbx"), "not set and there are several PBXs")
                    .hint(format!("one of: {}", ids.join(", "))),
            );
            None
        }
    };
    let actions = ActionPolicy::build(
        &u.actions,
        &u.limits,
        &at.key("actions"),
        &at.key("limits"),
        errors,
    );
    let events = EventFilter::build(
        u.events.as_deref(),
        u.extensions.as_deref(),
        &at.key("events"),
        &at.key("extensions"),
        errors,
    );
    if errors.len() != before {
        return None;
    }
    Some(ProxyUser {
        username: name,
        secret: secret?,
        pbx: pbx?,
        actions,
        events,
    })
}

/// The secret, inline (`${VAR}` expanded) or from a file.
fn secret(u: &RawProxyUser, at: &At, base: &Path, errors: &mut Vec<Problem>) -> Option<Secret> {
    match (&u.secret, &u.secret_file) {
        (Some(_), Some(_)) => {
            errors.push(
                Problem::new(at.clone(), "both secret and secret_file are set").hint("keep one"),
            );
            None
        }
        (Some(s), None) => {
            let (out, missing) = expand_vars(s);
            for var in &missing {
                errors.push(
                    Problem::new(
                        at.key("secret"),
                        format!("environment variable {var} is not set"),
                    )
                    .hint(format!("export {var}=… before starting callhook"))
                    .needle(Some(format!("${{{var}}}"))),
                );
            }
            missing.is_empty().then(|| Secret::new(out))
        }
        (None, Some(f)) => {
            let (path, text) = read_secret_file(base, f);
            match text {
                Ok(s) => Some(Secret::new(s)),
                Err(e) => {
                    errors.push(Problem::new(
                        at.key("secret_file"),
                        format!("cannot read {}: {e}", path.display()),
                    ));
                    None
                }
            }
        }
        (None, None) => {
            errors.push(
                Problem::new(at.key("secret"), "no secret")
                    .hint("set secret: \"${PANEL_AMI_SECRET}\" or secret_file: PATH"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawAmiProxy {
        let doc = crate::yaml::parse(yaml);
        let root = doc.root.expect("yaml");
        let r = crate::yaml::de::from_node::<RawAmiProxy>(&root);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        r.value.expect("value")
    }

    fn check(yaml: &str, pbx: &[&str]) -> (Option<AmiProxyConfig>, Vec<String>) {
        let ids: Vec<String> = pbx.iter().map(|s| s.to_string()).collect();
        let mut errors = Vec::new();
        let c = validate(Some(raw(yaml)), &ids, Path::new("."), &mut errors);
        (
            c,
            errors
                .into_iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect(),
        )
    }

    #[test]
    fn a_full_section() {
        let (c, e) = check(
            "listen: 127.0.0.1:5040\nclient_queue: 10\nlogin_timeout: 3s\nusers:\n  - username: panel\n    secret: s3cret\n    actions: [Ping, Originate]\n    limits: { Originate: { Context: [from-internal], Application: [] } }\n    events: [Newchannel, \"Dial*\"]\n    extensions: [\"10XX\"]\n",
            &["main"],
        );
        assert!(e.is_empty(), "{e:?}");
        let c = c.expect("config");
        assert_eq!(c.listen.port(), 5040);
        assert_eq!(c.client_queue, 10);
        assert_eq!(c.login_timeout, Duration::from_secs(3));
        assert_eq!(c.users[0].pbx, "main");
        assert_eq!(c.users[0].secret.expose(), "s3cret");
        assert_eq!(c.pbx_ids(), ["main"]);
    }

    #[test]
    fn every_mistake_is_reported() {
        let (c, e) = check(
            "listen: nowhere\nmax_connections: 0\nlogin_timeout: soon\nusers:\n  - username: a\n    secret: \"${CALLHOOK_TEST_UNSET_PROXY_VAR}\"\n  - username: a\n    actions: [Ping]\n    pbx: other\n    extensions: [\"[\"]\n",
            &["main", "b"],
        );
        assert!(c.is_none());
        let joined = e.join("\n");
        for want in [
            "ami_proxy.listen: \"nowhere\" is not an address",
            "ami_proxy.max_connections: must be at least 1",
            "ami_proxy.login_timeout: \"soon\" is not a duration",
            "ami_proxy.users[0].secret: environment variable CALLHOOK_TEST_UNSET_PROXY_VAR is not set",
            "ami_proxy.users[0].pbx: not set and there are several PBXs",
            "ami_proxy.users[1].username: user \"a\" is defined twice",
            "ami_proxy.users[1].secret: no secret",
            "ami_proxy.users[1].pbx: unknown PBX \"other\"",
            "ami_proxy.users[1].extensions[0]:",
        ] {
            assert!(joined.contains(want), "missing {want:?} in\n{joined}");
        }
    }

    #[test]
    fn reloads_compare_settings_and_secrets() {
        let yaml = |secret: &str, queue: u32| {
            format!("listen: 5040\nclient_queue: {queue}\nusers:\n  - {{ username: a, secret: {secret}, actions: [Ping] }}\n")
        };
        let get = |y: String| check(&y, &["main"]).0.expect("config");
        let a = get(yaml("one", 10));
        assert!(a.same_as(&get(yaml("one", 10))));
        assert!(!a.same_as(&get(yaml("two", 10))), "a new secret");
        assert!(!a.same_as(&get(yaml("one", 11))), "a new limit");
        assert_eq!(a.max_actions_per_second, 50);
    }

    #[test]
    fn no_users_and_no_pbx() {
        let (c, e) = check("listen: 5040\n", &[]);
        assert!(c.is_none());
        assert!(e.iter().any(|x| x.contains("no users")), "{e:?}");
    }
}
