//! The `agi:` section: as written ([`RawAgi`]), checked, and compiled into
//! the listener's settings ([`AgiSettings`]) and the routing table
//! ([`Router`], swapped on reload).
//!
//! ```yaml
//! agi:
//!   listen: 127.0.0.1:4573        # FastAGI listener (Asterisk: AGI(agi://host/route))
//!   allow_from: [127.0.0.1, 192.0.2.10, 10.1.0.0/16]   # who may connect (default: loopback only)
//!   max_sessions: 256             # calls at once (default 256)
//!   max_sessions_per_ip: 256      # per PBX address (default 256)
//!   env_timeout: 5s               # the environment block must arrive within this (default 5s)
//!   command_timeout: 10s          # quick commands: ANSWER, SET/GET VARIABLE (default 10s)
//!   media_timeout: 5m             # one sound file (default 5m)
//!   session_timeout: 4h           # the whole call, Dial included (default 4h)
//!   max_line: 8192                # longest line accepted from Asterisk, bytes (default 8192)
//!   pbx: main                     # %PBX% in templates (default: the only PBX's id, else `agi`)
//!   timezone: America/Mexico_City # of `time:` conditions without one (default UTC)
//!   extension_channel: "PJSIP/{extension}"   # how `dial: { extension: … }` dials (default)
//!   crm_cache_entries: 10000      # bound of the CRM answer cache (default 10000)
//!   rewrite: [ { field: dialed, match: "_9X.", strip: 1 } ]   # as the rules' rewrite
//!   routes: [ … ]                 # see route.rs
//!   no_route: [ { hangup: unallocated } ]   # when no route matches (default: nothing, the dialplan goes on)
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::action::{compile_actions, Action, RawAction, RunSettings};
use super::call::AgiCall;
use super::crm::CrmCache;
use super::protocol::WireLimits;
use super::route::{RawRoute, Route};
use crate::deliver::Target;
use crate::normalize::channel::Classifier;
use crate::rules::{
    compile_rewrites, name_matcher, number_pattern, NameMatcher, NumberPattern, Rewrite,
    RewriteSpec, Scalar, Words,
};
use crate::template::{TemplateContext, TemplateError, Templates};

/// `agi:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgi {
    /// Listener address.
    pub listen: Option<String>,
    /// Addresses and networks allowed to connect.
    pub allow_from: Option<Vec<String>>,
    /// Calls at once.
    pub max_sessions: Option<usize>,
    /// Calls at once per client address.
    pub max_sessions_per_ip: Option<usize>,
    /// Deadline of the environment block.
    pub env_timeout: Option<Scalar>,
    /// Deadline of quick commands.
    pub command_timeout: Option<Scalar>,
    /// Deadline of one sound file.
    pub media_timeout: Option<Scalar>,
    /// Deadline of the whole session.
    pub session_timeout: Option<Scalar>,
    /// Longest line.
    pub max_line: Option<usize>,
    /// PBX id for templates.
    pub pbx: Option<String>,
    /// Default zone of `time:` conditions.
    pub timezone: Option<String>,
    /// Channel of `dial: { extension }`.
    pub extension_channel: Option<String>,
    /// Bound of the CRM cache.
    pub crm_cache_entries: Option<usize>,
    /// Number rewriting.
    #[serde(default)]
    pub rewrite: Vec<RewriteSpec>,
    /// Routes, in order.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// When no route matches.
    pub no_route: Option<Vec<RawAction>>,
}

/// A problem in the `agi:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgiProblem {
    /// Dotted path from the document root (`agi.routes[2].when.dialed`).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The offending text, to point at.
    pub needle: Option<String>,
}

/// An allowed address or network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `192.0.2.10`, `::1`, `fd00::/8`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let net: IpAddr = a.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { net, prefix })
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The listener's settings (a change needs a restart).
#[derive(Debug, Clone, PartialEq)]
pub struct AgiSettings {
    /// Address.
    pub listen: SocketAddr,
    /// Who may connect.
    pub allow_from: Vec<Cidr>,
    /// Calls at once.
    pub max_sessions: usize,
    /// Per client address.
    pub max_sessions_per_ip: usize,
    /// Environment deadline.
    pub env_timeout: Duration,
    /// Whole-session deadline.
    pub session_timeout: Duration,
    /// Wire limits.
    pub wire: WireLimits,
}

impl AgiSettings {
    /// Whether `ip` may connect.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.allow_from.iter().any(|c| c.contains(ip))
    }
}

/// The routing table and everything a call needs (swapped on reload).
#[derive(Debug)]
pub struct Router {
    /// Routes, in order.
    pub routes: Vec<Route>,
    /// When no route matches.
    pub no_route: Vec<Action>,
    /// Every template of the routes.
    pub templates: Templates,
    /// `{{env.X}}` values.
    pub env: Map<String, Value>,
    /// Number rewriting.
    pub(crate) rewrites: Vec<Rewrite>,
    /// Extension vs trunk.
    pub classifier: Classifier,
    /// `%PBX%`.
    pub pbx: String,
    /// How actions run.
    pub run: RunSettings,
    /// Targets (CRM lookups).
    pub targets: Arc<BTreeMap<String, Target>>,
    /// CRM answers.
    pub cache: CrmCache,
}

impl Router {
    /// The call described by `env`.
    pub fn call(&self, env: super::protocol::AgiEnv) -> AgiCall {
        AgiCall::new(
            env,
            &self.classifier,
            &self.rewrites,
            &self.pbx,
            crate::source::now_epoch(),
        )
    }

    /// Route names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.name.as_str()).collect()
    }
}

/// The whole validated section.
#[derive(Debug, Clone)]
pub struct AgiConfig {
    /// Listener settings.
    pub settings: AgiSettings,
    /// Routing.
    pub router: Arc<Router>,
}

/// What the section is checked against.
pub struct BuildContext<'a> {
    /// Validated targets.
    pub targets: &'a Arc<BTreeMap<String, Target>>,
    /// The classifier of the `classify:` section.
    pub classifier: &'a Classifier,
    /// Configured PBX ids.
    pub pbx_ids: &'a [String],
    /// The top-level `env:` list.
    pub env: &'a [String],
}

/// Collects the problems of one load.
pub(super) struct Build {
    /// The problems.
    pub(super) problems: Vec<AgiProblem>,
}

impl Build {
    /// One problem.
    pub(super) fn push(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: Option<&str>,
        needle: Option<&str>,
    ) {
        self.problems.push(AgiProblem {
            path: path.into(),
            message: message.into(),
            hint: hint.map(str::to_string),
            needle: needle.map(str::to_string),
        });
    }

    /// See the callers.
    pub(super) fn template_errors(&mut self, path: &str, es: Vec<TemplateError>) {
        for e in es {
            self.problems.push(AgiProblem {
                path: format!("{path}{}", e.at),
                message: e.message,
                hint: e.hint,
                needle: e.needle,
            });
        }
    }

    /// See the callers.
    pub(super) fn duration(
        &mut self,
        v: &Option<Scalar>,
        path: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let Some(s) = v else { return default };
        match crate::values::parse_duration(&s.0) {
            Some(d) if d >= min && d <= max => d,
            Some(_) => {
                self.push(
                    path,
                    format!("{:?} is out of range ({min:?} to {max:?})", s.0),
                    None,
                    Some(&s.0),
                );
                default
            }
            None => {
                self.push(
                    path,
                    format!("{:?} is not a duration", s.0),
                    Some("write e.g. 500ms, 5s, 2m"),
                    Some(&s.0),
                );
                default
            }
        }
    }

    /// See the callers.
    pub(super) fn names(
        &mut self,
        w: &Option<Words>,
        path: &str,
        dialplan: bool,
    ) -> Option<Vec<NameMatcher>> {
        let w = w.as_ref()?;
        if w.items.is_empty() {
            self.push(
                path,
                "an empty list matches nothing",
                Some("remove it to match any value"),
                None,
            );
        }
        let mut out = Vec::new();
        for item in &w.items {
            match name_matcher(item, dialplan) {
                Ok(m) => out.push(m),
                Err((msg, hint)) => self.push(path, msg, hint.as_deref(), Some(item)),
            }
        }
        Some(out)
    }

    /// See the callers.
    pub(super) fn numbers(&mut self, w: &Option<Words>, path: &str) -> Option<Vec<NumberPattern>> {
        let w = w.as_ref()?;
        if w.items.is_empty() {
            self.push(
                path,
                "an empty list matches nothing",
                Some("remove it to match any value"),
                None,
            );
        }
        let mut out = Vec::new();
        for item in &w.items {
            match number_pattern(item) {
                Ok(p) => out.push(p),
                Err((msg, hint)) => self.push(path, msg, hint.as_deref(), Some(item)),
            }
        }
        Some(out)
    }

    /// See the callers.
    pub(super) fn actions(
        &mut self,
        raw: &[RawAction],
        path: &str,
        templates: &mut Templates,
        sample: &TemplateContext<'_>,
    ) -> Vec<Action> {
        let (a, problems) = compile_actions(raw, templates, sample);
        for p in problems {
            self.push(
                format!("{path}{}", p.at),
                p.message,
                None,
                p.needle.as_deref(),
            );
        }
        a
    }
}

/// `${VAR}` expanded, unset ones reported.
pub(super) fn expand(s: &str, path: &str, b: &mut Build) -> String {
    let (v, missing) = crate::values::expand_vars(s);
    for m in missing {
        b.push(
            path,
            format!("environment variable {m} is not set"),
            Some("set it, or write the value"),
            None,
        );
    }
    v
}

/// Checks and compiles the section, reporting every problem.
pub fn build(raw: &RawAgi, cx: &BuildContext<'_>) -> Result<AgiConfig, Vec<AgiProblem>> {
    let mut b = Build {
        problems: Vec::new(),
    };
    let listen = match raw.listen.as_deref() {
        None => {
            b.push(
                "agi.listen",
                "the AGI server needs a listen address",
                Some("e.g. listen: 127.0.0.1:4573"),
                None,
            );
            None
        }
        Some(l) => match crate::values::parse_listen_addr(l) {
            Some(a) => Some(a),
            None => {
                b.push(
                    "agi.listen",
                    format!("{l:?} is not an address:port"),
                    Some("e.g. 127.0.0.1:4573 or 0.0.0.0:4573"),
                    Some(l),
                );
                None
            }
        },
    };
    let mut allow_from = Vec::new();
    match &raw.allow_from {
        None => {
            allow_from.extend(Cidr::parse("127.0.0.0/8"));
            allow_from.extend(Cidr::parse("::1"));
        }
        Some(list) => {
            if list.is_empty() {
                b.push(
                    "agi.allow_from",
                    "an empty list lets nobody connect",
                    Some("list the PBX addresses, e.g. [192.0.2.10]"),
                    None,
                );
            }
            for (i, a) in list.iter().enumerate() {
                match Cidr::parse(a) {
                    Some(c) => allow_from.push(c),
                    None => b.push(
                        format!("agi.allow_from[{i}]"),
                        format!("{a:?} is not an address or network"),
                        Some("e.g. 192.0.2.10, 10.1.0.0/16, ::1"),
                        Some(a),
                    ),
                }
            }
        }
    }
    let count = |b: &mut Build, v: Option<usize>, path: &str, default: usize| match v {
        None => default,
        Some(0) => {
            b.push(path, "must be at least 1", None, None);
            default
        }
        Some(n) => n,
    };
    let max_sessions = count(&mut b, raw.max_sessions, "agi.max_sessions", 256);
    let max_sessions_per_ip = count(
        &mut b,
        raw.max_sessions_per_ip,
        "agi.max_sessions_per_ip",
        256,
    )
    .min(max_sessions);
    let ms = Duration::from_millis;
    let env_timeout = b.duration(
        &raw.env_timeout,
        "agi.env_timeout",
        Duration::from_secs(5),
        ms(100),
        Duration::from_secs(60),
    );
    let command_timeout = b.duration(
        &raw.command_timeout,
        "agi.command_timeout",
        Duration::from_secs(10),
        ms(100),
        Duration::from_secs(300),
    );
    let media_timeout = b.duration(
        &raw.media_timeout,
        "agi.media_timeout",
        Duration::from_secs(300),
        ms(100),
        Duration::from_secs(3600),
    );
    let session_timeout = b.duration(
        &raw.session_timeout,
        "agi.session_timeout",
        Duration::from_secs(4 * 3600),
        Duration::from_secs(1),
        Duration::from_secs(7 * 86400),
    );
    let mut wire = WireLimits::default();
    match raw.max_line {
        Some(n) if !(256..=1 << 20).contains(&n) => b.push(
            "agi.max_line",
            "must be between 256 and 1048576",
            None,
            None,
        ),
        Some(n) => wire.max_line = n,
        None => {}
    }
    let pbx = raw.pbx.clone().unwrap_or_else(|| match cx.pbx_ids {
        [one] => one.clone(),
        _ => "agi".into(),
    });
    let tz = match raw.timezone.as_deref() {
        None => TimeZone::UTC,
        Some(z) => crate::values::parse_zone(z).unwrap_or_else(|| {
            b.push(
                "agi.timezone",
                format!("unknown time zone {z:?}"),
                Some("an IANA name such as America/Mexico_City, UTC, or -03:00"),
                Some(z),
            );
            TimeZone::UTC
        }),
    };
    let extension_channel = raw
        .extension_channel
        .clone()
        .unwrap_or_else(|| "PJSIP/{extension}".into());
    if !extension_channel.contains("{extension}")
        || super::action::check_channel(&extension_channel.replace("{extension}", "1001")).is_err()
    {
        b.push(
            "agi.extension_channel",
            format!("{extension_channel:?} is not a channel with {{extension}}"),
            Some("e.g. PJSIP/{extension} or SIP/{extension}"),
            Some(&extension_channel),
        );
    }
    let cache_entries = count(
        &mut b,
        raw.crm_cache_entries,
        "agi.crm_cache_entries",
        10_000,
    );

    // env for templates: the top-level list, read now.
    let mut env = Map::new();
    for name in cx.env {
        if let Ok(v) = std::env::var(name) {
            env.insert(name.clone(), Value::String(v));
        }
    }
    let mut rule_errors = Vec::new();
    let rewrites = compile_rewrites(&raw.rewrite, "agi.rewrite", &mut rule_errors);
    for e in rule_errors {
        b.push(e.field, e.message, e.hint.as_deref(), e.needle.as_deref());
    }

    let mut templates = Templates::new();
    let sample_call = AgiCall::sample(cx.classifier, &pbx);
    let mut sample = sample_call.template_context(&env);
    sample.prepare("route");
    let mut routes = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let at = format!("agi.routes[{i}]");
        if r.name.trim().is_empty() {
            b.push(format!("{at}.name"), "a route needs a name", None, None);
        } else if !r
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            b.push(
                format!("{at}.name"),
                format!("{:?}: names are letters, digits, _ - .", r.name),
                None,
                Some(&r.name),
            );
        } else if !seen.insert(&r.name) {
            b.push(
                format!("{at}.name"),
                format!("a second route named {:?}", r.name),
                Some("names are unique"),
                Some(&r.name),
            );
        }
        if let Some(route) = super::route::compile(&mut b, r, &at, &tz, cx, &mut templates, &sample)
        {
            routes.push(route);
        }
    }
    let no_route = match &raw.no_route {
        Some(a) => b.actions(a, "agi.no_route", &mut templates, &sample),
        None => Vec::new(),
    };
    if !b.problems.is_empty() {
        return Err(b.problems);
    }
    let Some(listen) = listen else {
        return Err(b.problems);
    };
    drop(sample);
    Ok(AgiConfig {
        settings: AgiSettings {
            listen,
            allow_from,
            max_sessions,
            max_sessions_per_ip,
            env_timeout,
            session_timeout,
            wire,
        },
        router: Arc::new(Router {
            routes,
            no_route,
            templates,
            env,
            rewrites,
            classifier: cx.classifier.clone(),
            pbx,
            run: RunSettings {
                extension_channel,
                command_timeout,
                media_timeout,
            },
            targets: cx.targets.clone(),
            cache: CrmCache::new(cache_entries),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = Cidr::parse("192.0.2.10").unwrap();
        assert!(one.contains("192.0.2.10".parse().unwrap()));
        assert!(!one.contains("192.0.2.11".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "host", "10.0.0/8", "::/129"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }
}
