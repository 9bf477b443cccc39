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

use super::action::{compile_actions, Action, ActionKind, RawAction, RunSettings};
use super::call::AgiCall;
use super::crm::{Crm, CrmBody, CrmCache, RawCrm, DEFAULT_TIMEOUT, MAX_TIMEOUT};
use super::pin::{check_hash, Pin, RawPin};
use super::protocol::WireLimits;
use super::route::{RawRoute, RawRouteWhen, Route, RouteWhen};
use crate::deliver::Target;
use crate::normalize::channel::Classifier;
use crate::rules::{
    compile_rewrites, name_matcher, number_pattern, NameMatcher, NumberPattern, Rewrite,
    RewriteSpec, Scalar, Schedule, Words,
};
use crate::template::{EventKind, TemplateContext, TemplateError, Templates};

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

struct Build {
    problems: Vec<AgiProblem>,
}

impl Build {
    fn push(
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

    fn template_errors(&mut self, path: &str, es: Vec<TemplateError>) {
        for e in es {
            self.problems.push(AgiProblem {
                path: format!("{path}{}", e.at),
                message: e.message,
                hint: e.hint,
                needle: e.needle,
            });
        }
    }

    fn duration(
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

    fn names(&mut self, w: &Option<Words>, path: &str, dialplan: bool) -> Option<Vec<NameMatcher>> {
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

    fn numbers(&mut self, w: &Option<Words>, path: &str) -> Option<Vec<NumberPattern>> {
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

    fn actions(
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

fn expand(s: &str, path: &str, b: &mut Build) -> String {
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
        if let Some(route) = compile_route(&mut b, r, &at, &tz, cx, &mut templates, &sample) {
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

fn compile_when(b: &mut Build, w: &RawRouteWhen, at: &str, tz: &TimeZone) -> RouteWhen {
    let time = w
        .time
        .as_ref()
        .and_then(|t| match Schedule::compile(t, tz) {
            Ok(s) => Some(s),
            Err(es) => {
                for e in es {
                    b.push(
                        format!("{at}.time.{}", e.field),
                        e.message,
                        None,
                        Some(&e.needle)
                            .filter(|n| !n.is_empty())
                            .map(|s| s.as_str()),
                    );
                }
                None
            }
        });
    RouteWhen {
        script: b.names(&w.script, &format!("{at}.script"), false),
        dialed: b.numbers(&w.dialed, &format!("{at}.dialed")),
        caller: b.numbers(&w.caller, &format!("{at}.caller")),
        extension: b.names(&w.extension, &format!("{at}.extension"), true),
        context: b.names(&w.context, &format!("{at}.context"), false),
        time,
    }
}

fn compile_pin(b: &mut Build, p: &RawPin, at: &str) -> Option<Pin> {
    let hash = expand(&p.hash, &format!("{at}.hash"), b);
    let mut ok = true;
    if let Err(e) = check_hash(&hash) {
        b.push(
            format!("{at}.hash"),
            e,
            Some("make one with `callhook hash-pin`"),
            None,
        );
        ok = false;
    }
    for (k, v) in [
        ("prompt", &p.prompt),
        ("invalid", &p.invalid),
        ("goodbye", &p.goodbye),
    ] {
        if let Some(f) = v {
            let valid = !f.is_empty()
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
                && !f.starts_with('/');
            if !valid {
                b.push(
                    format!("{at}.{k}"),
                    format!("{f:?} is not a sound file name"),
                    None,
                    Some(f),
                );
                ok = false;
            }
        }
    }
    if p.tries.is_some_and(|t| !(1..=10).contains(&t)) {
        b.push(format!("{at}.tries"), "must be 1 to 10", None, None);
        ok = false;
    }
    if p.max_digits.is_some_and(|t| !(1..=32).contains(&t)) {
        b.push(format!("{at}.max_digits"), "must be 1 to 32", None, None);
        ok = false;
    }
    let timeout = b.duration(
        &p.timeout,
        &format!("{at}.timeout"),
        Duration::from_secs(5),
        Duration::from_millis(500),
        Duration::from_secs(60),
    );
    ok.then(|| Pin::new(p, hash, timeout))
}

fn compile_crm(
    b: &mut Build,
    c: &RawCrm,
    at: &str,
    cx: &BuildContext<'_>,
    templates: &mut Templates,
    sample: &TemplateContext<'_>,
) -> Option<Crm> {
    let before = b.problems.len();
    if !cx.targets.contains_key(&c.target) {
        let known: Vec<&str> = cx.targets.keys().map(String::as_str).collect();
        let hint = if known.is_empty() {
            "define it under targets:".to_string()
        } else {
            format!("targets: {}", known.join(", "))
        };
        b.push(
            format!("{at}.target"),
            format!("unknown target {:?}", c.target),
            Some(&hint),
            Some(&c.target),
        );
    }
    let kind = EventKind::CallState;
    let url = match templates.url(&c.url) {
        Ok(u) => {
            for t in u.templates() {
                if let Err(e) = templates.check(t, sample, kind) {
                    b.template_errors(&format!("{at}.url"), vec![e]);
                }
            }
            Some(u)
        }
        Err(es) => {
            b.template_errors(&format!("{at}.url"), es);
            None
        }
    };
    let headers = match &c.headers {
        None => Vec::new(),
        Some(m) => {
            let (h, es) = templates.headers_partial(m);
            b.template_errors(&format!("{at}.headers"), es);
            let es = templates.check_fields(&h, sample, kind);
            b.template_errors(&format!("{at}.headers"), es);
            h
        }
    };
    let bodies = [c.json.is_some(), c.form.is_some(), c.body.is_some()];
    if bodies.iter().filter(|x| **x).count() > 1 {
        b.push(at, "give only one of json, form, body", None, None);
    }
    let body = if let Some(j) = &c.json {
        let (t, es) = templates.json_partial(j);
        b.template_errors(&format!("{at}.json"), es);
        let es = templates.check_json(&t, sample, kind);
        b.template_errors(&format!("{at}.json"), es);
        CrmBody::Json(t)
    } else if let Some(f) = &c.form {
        let (t, es) = templates.form_partial(f);
        b.template_errors(&format!("{at}.form"), es);
        let es = templates.check_fields(t.fields(), sample, kind);
        b.template_errors(&format!("{at}.form"), es);
        CrmBody::Form(t)
    } else if let Some(s) = &c.body {
        match templates.text(s) {
            Ok(t) => {
                if let Err(e) = templates.check(&t, sample, kind) {
                    b.template_errors(&format!("{at}.body"), vec![e]);
                }
                CrmBody::Text(t)
            }
            Err(es) => {
                b.template_errors(&format!("{at}.body"), es);
                CrmBody::None
            }
        }
    } else {
        CrmBody::None
    };
    let method = c
        .method
        .clone()
        .unwrap_or_else(|| {
            if matches!(body, CrmBody::None) {
                "GET"
            } else {
                "POST"
            }
            .into()
        })
        .to_ascii_uppercase();
    if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "PATCH") {
        b.push(
            format!("{at}.method"),
            format!("{method:?} is not GET, POST, PUT or PATCH"),
            None,
            Some(&method),
        );
    }
    let timeout = b.duration(
        &c.timeout,
        &format!("{at}.timeout"),
        DEFAULT_TIMEOUT,
        Duration::from_millis(50),
        MAX_TIMEOUT,
    );
    let cache_ttl = c.cache.as_ref().map(|_| {
        b.duration(
            &c.cache,
            &format!("{at}.cache"),
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(86400),
        )
    });
    let allow = match &c.allow {
        None => ActionKind::ALL.to_vec(),
        Some(w) => {
            let mut out = Vec::new();
            for item in &w.items {
                match ActionKind::parse(item) {
                    Some(k) => out.push(k),
                    None => b.push(
                        format!("{at}.allow"),
                        format!("unknown action {item:?}"),
                        Some("dial, voicemail, conference, playback, set, hangup, goto"),
                        Some(item),
                    ),
                }
            }
            if w.items.is_empty() {
                b.push(
                    format!("{at}.allow"),
                    "an empty list allows no answer: every call would fall back",
                    None,
                    None,
                );
            }
            out
        }
    };
    (b.problems.len() == before).then_some(Crm {
        target: c.target.clone(),
        method,
        url: url?,
        headers,
        body,
        timeout,
        cache_ttl,
        allow,
    })
}

fn compile_route(
    b: &mut Build,
    r: &RawRoute,
    at: &str,
    tz: &TimeZone,
    cx: &BuildContext<'_>,
    templates: &mut Templates,
    sample: &TemplateContext<'_>,
) -> Option<Route> {
    let before = b.problems.len();
    let when = compile_when(b, &r.when, &format!("{at}.when"), tz);
    let allow = b.names(&r.allow, &format!("{at}.allow"), true);
    let deny = match &r.deny {
        Some(a) => b.actions(a, &format!("{at}.deny"), templates, sample),
        None => vec![Action::Hangup(21)],
    };
    if r.deny.is_some() && r.allow.is_none() {
        b.push(
            format!("{at}.deny"),
            "deny without allow never runs",
            Some("add allow: [extensions]"),
            None,
        );
    }
    let pin = r
        .pin
        .as_ref()
        .and_then(|p| compile_pin(b, p, &format!("{at}.pin")));
    let crm = r
        .crm
        .as_ref()
        .and_then(|c| compile_crm(b, c, &format!("{at}.crm"), cx, templates, sample));
    let actions = match (&r.actions, &r.crm) {
        (Some(a), None) => b.actions(a, &format!("{at}.actions"), templates, sample),
        (Some(_), Some(_)) => {
            b.push(
                format!("{at}.actions"),
                "a route with crm acts on the CRM's answer",
                Some("put what runs when the CRM fails under fallback:"),
                None,
            );
            Vec::new()
        }
        (None, None) => {
            b.push(
                at,
                "a route needs actions (or crm)",
                Some("e.g. actions: [ { dial: { channels: [\"SIP/%DIALED%\"] } } ]"),
                Some(&r.name).filter(|n| !n.is_empty()).map(|s| s.as_str()),
            );
            Vec::new()
        }
        (None, Some(_)) => Vec::new(),
    };
    let fallback = match (&r.fallback, &r.crm) {
        (Some(f), Some(_)) => b.actions(f, &format!("{at}.fallback"), templates, sample),
        (Some(_), None) => {
            b.push(
                format!("{at}.fallback"),
                "fallback runs only when a CRM lookup fails, and this route has no crm",
                Some("use actions:"),
                None,
            );
            Vec::new()
        }
        (None, _) => Vec::new(),
    };
    (b.problems.len() == before).then(|| Route {
        name: r.name.clone(),
        when,
        allow,
        deny,
        pin,
        crm,
        actions,
        fallback,
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
