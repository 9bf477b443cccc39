//! Routing rules: which route a call takes, and who may take it.
//!
//! ```yaml
//! routes:
//!   - name: internal           # unique; a metric label and in logs
//!     when: { script: route, dialed: "_2X" }   # every condition given must hold
//!     actions: [ { dial: { channels: ["SIP/%DIALED%"], timeout: 20s } } ]
//!   - name: international
//!     when: { dialed: "_00." }
//!     allow: ["1001", "_10[0-4]X"]             # calling extensions allowed; others get `deny`
//!     deny: [ { playback: ss-noservice }, { hangup: rejected } ]
//!     pin: { hash: "${INTL_PIN_HASH}" }
//!     actions: [ { dial: { channels: ["SIP/pstn/%DIALED%"], timeout: 60s, options: T } } ]
//! ```
//!
//! Routes are tried in order; the first whose `when` matches takes the
//! call (later routes are not tried, even when this one refuses the call).
//! Conditions, every one optional, a YAML list meaning any of its values:
//!
//! | condition | matches |
//! |---|---|
//! | `script` | the AGI script (`route` in `agi://host/route`): exact or `/regex/` |
//! | `dialed` | the dialed number after `rewrite`: number pattern (`_2X`, `_NXXNXXXXXX`, `/regex/`) |
//! | `caller` | the caller number after `rewrite`: number pattern; never matches a call without one |
//! | `extension` | the calling extension (from the channel, see [`super::call`]): exact, `_pattern` or `/regex/`; never matches a call from a trunk |
//! | `context` | `agi_context`: exact or `/regex/` |
//! | `time` | days and hours in a time zone (see [`crate::rules::schedule`]) |
//!
//! Number patterns are the webhook rules' ([`crate::rules::NumberPattern`]),
//! and so are `rewrite` steps (at `agi.rewrite`).
//!
//! **Authorization.** `allow` lists the calling extensions that may use
//! the route (same matchers as `extension`); a call from any other
//! extension, or from a trunk, runs `deny` (default: hang up with cause
//! 21, call rejected), is logged and counted in
//! `callhook_agi_auth_failures_total{route,reason="denied"}`. Then `pin`
//! (see [`super::pin`]) when given. Only then does the route act:
//! `actions`, or with `crm` the CRM's answer, falling back to `fallback`.

use serde::Deserialize;

use super::action::{Action, RawAction};
use super::call::AgiCall;
use super::config::{Build, BuildContext};
use super::crm::{Crm, RawCrm};
use super::pin::{Pin, RawPin};
use crate::rules::{NameMatcher, NumberPattern, Schedule, TimeSpec, Words};
use crate::template::{TemplateContext, Templates};
use jiff::tz::TimeZone;

/// `when:` of a route as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteWhen {
    /// AGI script names.
    pub script: Option<Words>,
    /// Dialed number patterns.
    pub dialed: Option<Words>,
    /// Caller number patterns.
    pub caller: Option<Words>,
    /// Calling extensions.
    pub extension: Option<Words>,
    /// Contexts.
    pub context: Option<Words>,
    /// Days and hours.
    pub time: Option<TimeSpec>,
}

/// One route as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name.
    pub name: String,
    /// Conditions.
    #[serde(default)]
    pub when: RawRouteWhen,
    /// Calling extensions allowed.
    pub allow: Option<Words>,
    /// What a refused call gets (default: hang up, cause 21).
    pub deny: Option<Vec<RawAction>>,
    /// PIN check.
    pub pin: Option<RawPin>,
    /// Ask the CRM.
    pub crm: Option<RawCrm>,
    /// What the route does (without `crm`).
    pub actions: Option<Vec<RawAction>>,
    /// What runs when the CRM gives no usable answer.
    pub fallback: Option<Vec<RawAction>>,
}

/// Compiled conditions (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct RouteWhen {
    /// Scripts.
    pub script: Option<Vec<NameMatcher>>,
    /// Dialed patterns.
    pub dialed: Option<Vec<NumberPattern>>,
    /// Caller patterns.
    pub caller: Option<Vec<NumberPattern>>,
    /// Extensions.
    pub extension: Option<Vec<NameMatcher>>,
    /// Contexts.
    pub context: Option<Vec<NameMatcher>>,
    /// Schedule.
    pub time: Option<Schedule>,
}

fn any_name(ms: &Option<Vec<NameMatcher>>, v: Option<&str>) -> bool {
    match (ms, v) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(ms), Some(v)) => ms.iter().any(|m| m.is_match(v)),
    }
}

fn any_number(ps: &Option<Vec<NumberPattern>>, v: Option<&str>) -> bool {
    match (ps, v) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(ps), Some(v)) => ps.iter().any(|p| p.is_match(v)),
    }
}

impl RouteWhen {
    /// Whether the call matches at `now`.
    pub fn matches(&self, call: &AgiCall, now: jiff::Timestamp) -> bool {
        any_name(&self.script, Some(call.script.as_str()))
            && any_number(&self.dialed, call.dialed.as_deref())
            && any_number(&self.caller, call.caller.as_deref())
            && any_name(&self.extension, call.extension.as_deref())
            && any_name(&self.context, Some(call.context.as_str()))
            && self.time.as_ref().is_none_or(|s| s.matches(now))
    }
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name.
    pub name: String,
    /// Conditions.
    pub when: RouteWhen,
    /// Allowed calling extensions (`None`: everyone).
    pub allow: Option<Vec<NameMatcher>>,
    /// For refused calls.
    pub deny: Vec<Action>,
    /// PIN check.
    pub pin: Option<Pin>,
    /// CRM lookup.
    pub crm: Option<Crm>,
    /// Actions (or the CRM's).
    pub actions: Vec<Action>,
    /// When the CRM fails.
    pub fallback: Vec<Action>,
}

impl Route {
    /// Whether the caller may use this route.
    pub fn allows(&self, call: &AgiCall) -> bool {
        match &self.allow {
            None => true,
            Some(ms) => call
                .extension
                .as_deref()
                .is_some_and(|e| ms.iter().any(|m| m.is_match(e))),
        }
    }
}

/// The first route whose conditions match.
pub fn select<'r>(routes: &'r [Route], call: &AgiCall, now: jiff::Timestamp) -> Option<&'r Route> {
    routes.iter().find(|r| r.when.matches(call, now))
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

/// Checks and compiles `compile`.
pub(super) fn compile(
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
        .and_then(|p| super::pin::compile(b, p, &format!("{at}.pin")));
    let crm = r
        .crm
        .as_ref()
        .and_then(|c| super::crm::compile(b, c, &format!("{at}.crm"), cx, templates, sample));
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
