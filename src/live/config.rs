//! The `live:` config section: tenants, limits, click-to-call.
//!
//! ```yaml
//! live:
//!   tenants:                       # PBX ids or push teams
//!     main:
//!       key: "${LIVE_KEY_MAIN}"    # or key_file: /run/secrets/live-main
//!       code: 270                  # numeric PBX code (Meetip monitor lines)
//!       monitor_extension: "999"   # key + this extension = the monitor scope
//!       channel: "SIP/{extension}" # click-to-call: the agent's own phone
//!       context: from-internal
//!   heartbeat: 25s                 # ping interval; two missed = dropped
//!   max_clients: 10000             # in total
//!   max_clients_per_tenant: 2000
//!   connections_per_minute_per_ip: 120
//!   auth_failures_per_ip: 10       # wrong credentials from one address…
//!   auth_failures_window: 5m       # …within this window: blocked until it ends
//!   client_queue: 256              # messages waiting per client
//!   resume_buffer: 4096            # messages kept per tenant for `resume`
//!   max_message: 4096              # bytes of a client message
//!   ticket_max_ttl: 1h
//!   crm_url: "http://crm/DbFind.aspx?pi={caller_number}"
//!   crm_auto_open: false
//!   originate:
//!     context: from-internal
//!     priority: 1
//!     timeout: 30s                 # ringing the agent's phone
//!     caller_id: "\"CRM: {number}\" <{number}>"
//!     allow: ["^[0-9]{3,15}$"]     # numbers that may be dialled (regex)
//!     deny: ["^00", "^0900"]       # never (international, premium)
//!     per_user_per_minute: 6
//!     per_user_concurrent: 1
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::values::{expand_vars, parse_duration, read_secret_file, Secret};
use crate::yaml::{Path as At, Problem};

/// `live:` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLive {
    /// Tenants by PBX id / push team.
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenant>,
    /// Ping interval (duration).
    pub heartbeat: Option<String>,
    /// Most clients connected in total.
    pub max_clients: Option<usize>,
    /// Most clients per tenant.
    pub max_clients_per_tenant: Option<usize>,
    /// New connections per minute from one address.
    pub connections_per_minute_per_ip: Option<u32>,
    /// Wrong credentials from one address before it is blocked.
    pub auth_failures_per_ip: Option<u32>,
    /// The window of `auth_failures_per_ip` (duration).
    pub auth_failures_window: Option<String>,
    /// Messages waiting per client before it counts as slow.
    pub client_queue: Option<usize>,
    /// Messages kept per tenant for resumes.
    pub resume_buffer: Option<usize>,
    /// Largest client message (bytes).
    pub max_message: Option<usize>,
    /// Longest validity of a ticket (duration).
    pub ticket_max_ttl: Option<String>,
    /// CRM link of the console's call card (`{caller_number}`, `{extension}`…).
    pub crm_url: Option<String>,
    /// The console opens the CRM link by itself on ringing.
    pub crm_auto_open: Option<bool>,
    /// Click-to-call.
    #[serde(default)]
    pub originate: RawOriginate,
}

/// One tenant as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// The tenant key (`${VAR}` expanded).
    pub key: Option<String>,
    /// A file holding the key.
    pub key_file: Option<std::path::PathBuf>,
    /// The numeric PBX code.
    pub code: Option<u64>,
    /// The monitor extension (default `999`).
    pub monitor_extension: Option<String>,
    /// The agent's phone for click-to-call (`SIP/{extension}`).
    pub channel: Option<String>,
    /// Dialplan context of click-to-call (else `originate.context`).
    pub context: Option<String>,
}

/// `live.originate` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawOriginate {
    /// Dialplan context (default `from-internal`).
    pub context: Option<String>,
    /// Dialplan priority (default 1).
    pub priority: Option<u32>,
    /// How long the agent's phone rings (duration, default 30 s).
    pub timeout: Option<String>,
    /// `CallerID` shown on the agent's phone (`{number}`).
    pub caller_id: Option<String>,
    /// Numbers allowed (regexes; default: any valid number).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Numbers refused (regexes).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Click-to-calls per user per minute (default 6).
    pub per_user_per_minute: Option<u32>,
    /// Click-to-calls in progress per user (default 1).
    pub per_user_concurrent: Option<usize>,
}

/// A validated tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// PBX id / push team.
    pub id: String,
    /// The key.
    pub key: Secret,
    /// Numeric code.
    pub code: u64,
    /// Monitor extension.
    pub monitor_extension: String,
    /// Agent phone template.
    pub channel: String,
    /// Click-to-call context.
    pub context: String,
}

/// Validated click-to-call settings.
#[derive(Debug, Clone)]
pub struct OriginateConfig {
    /// Default context.
    pub context: String,
    /// Priority.
    pub priority: u32,
    /// Agent ring timeout.
    pub timeout: Duration,
    /// CallerID template.
    pub caller_id: String,
    /// Allowed numbers.
    pub allow: Vec<regex::Regex>,
    /// Refused numbers.
    pub deny: Vec<regex::Regex>,
    /// Per user per minute.
    pub per_user_per_minute: u32,
    /// Per user at once.
    pub per_user_concurrent: usize,
}

/// The validated `live:` section.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Tenants by id.
    pub tenants: BTreeMap<String, Tenant>,
    /// Ping interval.
    pub heartbeat: Duration,
    /// Clients in total.
    pub max_clients: usize,
    /// Clients per tenant.
    pub max_clients_per_tenant: usize,
    /// Connections per minute per address.
    pub connections_per_minute_per_ip: u32,
    /// Wrong credentials per address per window (see [`super::guard`]).
    pub auth_failures_per_ip: u32,
    /// Its window.
    pub auth_failures_window: Duration,
    /// Per-client queue.
    pub client_queue: usize,
    /// Per-tenant resume buffer.
    pub resume_buffer: usize,
    /// Largest client message.
    pub max_message: usize,
    /// Longest ticket validity.
    pub ticket_max_ttl: Duration,
    /// CRM link template.
    pub crm_url: Option<String>,
    /// Open the CRM link automatically.
    pub crm_auto_open: bool,
    /// Click-to-call.
    pub originate: OriginateConfig,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            tenants: BTreeMap::new(),
            heartbeat: Duration::from_secs(25),
            max_clients: 10_000,
            max_clients_per_tenant: 2_000,
            connections_per_minute_per_ip: 120,
            auth_failures_per_ip: 10,
            auth_failures_window: Duration::from_secs(300),
            client_queue: 256,
            resume_buffer: 4096,
            max_message: 4096,
            ticket_max_ttl: Duration::from_secs(3600),
            crm_url: None,
            crm_auto_open: false,
            originate: OriginateConfig {
                context: "from-internal".into(),
                priority: 1,
                timeout: Duration::from_secs(30),
                caller_id: "\"CRM: {number}\" <{number}>".into(),
                allow: Vec::new(),
                deny: Vec::new(),
                per_user_per_minute: 6,
                per_user_concurrent: 1,
            },
        }
    }
}

fn err(path: impl Into<String>, message: impl Into<String>, hint: Option<&str>) -> Problem {
    Problem::new(At::parse(&path.into()), message).hint_opt(hint.map(str::to_string))
}

impl RawLive {
    /// Checks the section, pushing every problem to `errors`. `known` are the
    /// PBX ids and push teams (a tenant must be one of them).
    pub fn validate(self, base: &Path, known: &[String], errors: &mut Vec<Problem>) -> LiveConfig {
        let d = LiveConfig::default();
        let dur = |v: &Option<String>, path: &str, default: Duration, errors: &mut Vec<Problem>| {
            match v {
                None => default,
                Some(s) => match parse_duration(s) {
                    Some(x) if !x.is_zero() => x,
                    _ => {
                        errors.push(err(
                            path,
                            format!("{s:?} is not a duration"),
                            Some("e.g. 25s, 5m, 1h"),
                        ));
                        default
                    }
                },
            }
        };
        let positive =
            |v: Option<usize>, path: &str, default: usize, errors: &mut Vec<Problem>| match v {
                None => default,
                Some(0) => {
                    errors.push(err(path, "must be at least 1", None));
                    default
                }
                Some(n) => n,
            };
        let mut tenants = BTreeMap::new();
        let mut codes = BTreeMap::new();
        for (id, t) in self.tenants {
            let at = |k: &str| format!("live.tenants.{id}.{k}");
            if !known.contains(&id) {
                errors.push(err(
                    format!("live.tenants.{id}"),
                    format!("{id:?} is neither a PBX id nor a push team"),
                    Some("tenants are named after pbx[].id or push.teams"),
                ));
            }
            let key = match (&t.key, &t.key_file) {
                (Some(_), Some(_)) => {
                    errors.push(err(
                        at("key"),
                        "both key and key_file are set",
                        Some("keep one"),
                    ));
                    String::new()
                }
                (Some(k), None) => {
                    let (v, missing) = expand_vars(k);
                    for m in missing {
                        errors.push(err(
                            at("key"),
                            format!("environment variable {m} is not set"),
                            None,
                        ));
                    }
                    v
                }
                (None, Some(f)) => match read_secret_file(base, f) {
                    (_, Ok(s)) => s,
                    (p, Err(e)) => {
                        errors.push(err(
                            at("key_file"),
                            format!("cannot read {}: {e}", p.display()),
                            None,
                        ));
                        String::new()
                    }
                },
                (None, None) => {
                    errors.push(err(
                        at("key"),
                        "no key",
                        Some("set key: \"${LIVE_KEY}\" or key_file: PATH"),
                    ));
                    String::new()
                }
            };
            if !key.is_empty() && key.len() < 16 {
                errors.push(err(
                    at("key"),
                    "is shorter than 16 characters",
                    Some("use a long random key: openssl rand -hex 24"),
                ));
            }
            let code = t.code.unwrap_or(0);
            if t.code.is_none() {
                errors.push(err(
                    at("code"),
                    "no code",
                    Some("the numeric PBX code, e.g. code: 270"),
                ));
            } else if let Some(other) = codes.insert(code, id.clone()) {
                errors.push(err(
                    at("code"),
                    format!("code {code} is also tenant {other:?}'s"),
                    None,
                ));
            }
            let monitor_extension = t.monitor_extension.unwrap_or_else(|| "999".into());
            let channel = t.channel.unwrap_or_else(|| "SIP/{extension}".into());
            if !channel.contains("{extension}") {
                errors.push(err(
                    at("channel"),
                    format!("{channel:?} does not contain {{extension}}"),
                    Some("e.g. PJSIP/{extension}"),
                ));
            }
            tenants.insert(
                id.clone(),
                Tenant {
                    id: id.clone(),
                    key: Secret::new(key),
                    code,
                    monitor_extension,
                    channel,
                    context: t.context.unwrap_or_default(),
                },
            );
        }
        let o = self.originate;
        let regexes = |v: &[String], path: &str, errors: &mut Vec<Problem>| {
            v.iter()
                .enumerate()
                .filter_map(|(i, p)| match regex::Regex::new(p) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        errors.push(err(
                            format!("{path}[{i}]"),
                            format!("invalid regex {p:?}: {e}"),
                            None,
                        ));
                        None
                    }
                })
                .collect::<Vec<_>>()
        };
        let originate = OriginateConfig {
            context: o.context.unwrap_or(d.originate.context),
            priority: o.priority.unwrap_or(1),
            timeout: dur(
                &o.timeout,
                "live.originate.timeout",
                d.originate.timeout,
                errors,
            ),
            caller_id: o.caller_id.unwrap_or(d.originate.caller_id),
            allow: regexes(&o.allow, "live.originate.allow", errors),
            deny: regexes(&o.deny, "live.originate.deny", errors),
            per_user_per_minute: o.per_user_per_minute.unwrap_or(6).max(1),
            per_user_concurrent: positive(
                o.per_user_concurrent,
                "live.originate.per_user_concurrent",
                1,
                errors,
            ),
        };
        for t in tenants.values_mut() {
            if t.context.is_empty() {
                t.context = originate.context.clone();
            }
        }
        LiveConfig {
            tenants,
            heartbeat: dur(&self.heartbeat, "live.heartbeat", d.heartbeat, errors),
            max_clients: positive(self.max_clients, "live.max_clients", d.max_clients, errors),
            max_clients_per_tenant: positive(
                self.max_clients_per_tenant,
                "live.max_clients_per_tenant",
                d.max_clients_per_tenant,
                errors,
            ),
            connections_per_minute_per_ip: self
                .connections_per_minute_per_ip
                .unwrap_or(d.connections_per_minute_per_ip)
                .max(1),
            auth_failures_per_ip: positive(
                self.auth_failures_per_ip.map(|n| n as usize),
                "live.auth_failures_per_ip",
                d.auth_failures_per_ip as usize,
                errors,
            ) as u32,
            auth_failures_window: dur(
                &self.auth_failures_window,
                "live.auth_failures_window",
                d.auth_failures_window,
                errors,
            ),
            client_queue: positive(
                self.client_queue,
                "live.client_queue",
                d.client_queue,
                errors,
            ),
            resume_buffer: positive(
                self.resume_buffer,
                "live.resume_buffer",
                d.resume_buffer,
                errors,
            ),
            max_message: positive(self.max_message, "live.max_message", d.max_message, errors),
            ticket_max_ttl: dur(
                &self.ticket_max_ttl,
                "live.ticket_max_ttl",
                d.ticket_max_ttl,
                errors,
            ),
            crm_url: self.crm_url,
            crm_auto_open: self.crm_auto_open.unwrap_or(false),
            originate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_reports_every_problem() {
        let raw: RawLive = crate::yaml::de::from_str(
            "tenants:\n  main: { key: short, code: 270 }\n  other: { code: 270, key: 0123456789abcdef0 }\n  ghost: { key: 0123456789abcdef0 }\noriginate: { deny: ['('] }\nheartbeat: soon\n",
        )
        .unwrap();
        let mut errors = Vec::new();
        let c = raw.validate(
            Path::new("."),
            &["main".into(), "other".into()],
            &mut errors,
        );
        let paths: Vec<String> = errors.iter().map(|e| e.path.to_string()).collect();
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        assert!(paths.contains(&"live.tenants.main.key"), "{paths:?}");
        assert!(paths.contains(&"live.tenants.other.code"), "{paths:?}");
        assert!(paths.contains(&"live.tenants.ghost"), "{paths:?}");
        assert!(paths.contains(&"live.tenants.ghost.code"), "{paths:?}");
        assert!(paths.contains(&"live.originate.deny[0]"), "{paths:?}");
        assert!(paths.contains(&"live.heartbeat"), "{paths:?}");
        assert_eq!(c.tenants["main"].monitor_extension, "999");
        assert_eq!(c.tenants["main"].context, "from-internal");
        assert!(crate::yaml::de::from_str::<RawLive>("tenantz: {}").is_err());
    }
}
