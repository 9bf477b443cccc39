//! Rules: which call events become which webhooks.
//!
//! A rule set is compiled once from YAML ([`RulesSpec`] → [`compile`] →
//! [`RuleSet`]); every problem in it is reported at once, with the setting's
//! path, a hint and a piece of the offending text. Compiled rules are then
//! evaluated for every model event ([`RuleSet::evaluate`]), producing fully
//! rendered [`DeliveryRequest`]s. Both steps are pure and synchronous
//! (`compile` reads the environment for `env:`; use [`compile_with_env`]
//! to pass it explicitly).
//!
//! # The YAML
//!
//! ```yaml
//! env: [CRM_TOKEN]             # variables templates may read as {{env.CRM_TOKEN}}
//!                              # (only listed variables are readable);
//!                              # a listed variable that is not set is an error
//! rewrite:                     # number rewriting, in order, before matching and templating
//!   - field: dialed            # caller | dialed | both
//!     match: "_9X."            # number pattern the whole number must match
//!     strip: 1                 # remove N leading characters (optional)
//!     prefix: ""               # then prepend this (optional)
//!   - field: dialed
//!     match: "_XXXXXXX"        # exactly 7 digits remain
//!     prefix: "0261"
//! rules:
//!   - name: screen-pop         # unique; used in metrics, logs and event ids
//!     when: { state: ringing, direction: incoming }
//!     target: crm              # a target from the configuration
//!     url: "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=%CALLER_ID%&ext=%EXTENSION%"
//!     max_age: 30s             # not delivered later than event time + 30 s
//!   - name: colgado-entrante
//!     when: { scope: call, state: colgado, direction: entrante }
//!     target: crm
//!     url: "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=%*CALLER_ID*%&tiempo=%*DURACION*%&modo=ColgadoEntrante"
//!   - name: call-log
//!     when: { scope: call, state: hungup }
//!     target: crm
//!     method: POST             # default: GET without a body, POST with one
//!     headers: { Authorization: "Bearer {{env.CRM_TOKEN}}" }
//!     json: { id: "{{call.session_id}}", from: "%CALLER_ID%", duration: "{{call.duration}}",
//!             started: "{{date call.started_at \"%Y-%m-%dT%H:%M:%S\"}}" }
//!                              # or form: {…} or body: "text" (only one of the three)
//!     idempotency_key: "{{call.session_id}}-{{call.caller_number}}"
//!     stop: true               # later rules are not evaluated for this event
//! ```
//!
//! Keys per rule: `name`, `when`, `target`, `url` (required except `when`),
//! `method`, `headers`, `json` | `form` | `body`, `idempotency_key`,
//! `max_age` (`500ms`, `30s`, `5m`, `2h`, `1d`, or a number of seconds),
//! `stop` (default false). Unknown keys are errors. Templates (URL,
//! headers, bodies, idempotency key) are described in [`crate::template`].
//!
//! # Conditions (`when:`)
//!
//! Every condition given must hold; a YAML list means any of its values
//! (`state: [ringing, answered]`). With no `when:`, a rule matches every
//! leg event.
//!
//! | Condition | Values | Matches |
//! |---|---|---|
//! | `scope` | `leg` (default), `call` (one value) | `leg`: leg events. `call`: call_state events (call `ringing`, `answered`) and call records (call `hungup`) |
//! | `state` | `ringing`/`timbre`, `answered`/`descolgado`, `hungup`/`colgado` | the leg's or the call's new state (a call record is `hungup`) |
//! | `direction` | `incoming`/`entrante`, `outgoing`/`saliente`, `internal`/`interna`/`interno` | the call's direction |
//! | `extension` | exact (`1001`), a dialplan pattern with `_` (`_1XXX`), or `/regex/` | leg scope: the leg's extension. Call scope: any extension known to take part: on call_state events `answered_by` and, on outgoing/internal calls, the calling extension (`caller_number`); on call records also every extension in `extensions_rung` and `final_answered_by` (`external` never counts). A call_state `ringing` event of an incoming call has no extension yet: use leg scope for per-extension screen-pops |
//! | `queue` | exact or `/regex/` | the queue; never matches a call without one |
//! | `pbx` | exact | the PBX id |
//! | `disposition` | `ANSWERED`, `NO ANSWER` (also `NO_ANSWER`, any case), `BUSY`, `FAILED`, `ABANDONED` | hungup legs and call records (other events have none and never match) |
//! | `role` | `caller`, `callee` | the leg's role (leg scope only; an error with `scope: call`) |
//! | `caller` | number pattern | the caller number after `rewrite`; never matches when there is none |
//! | `dialed` | number pattern | the dialed number after `rewrite`; never matches when there is none |
//!
//! Words are case-insensitive. Unknown words, empty lists, `role` with
//! `scope: call`, and `disposition` in a rule whose `state` excludes
//! `hungup` are errors. Quote numbers with leading zeros or `+` (YAML reads
//! `0261` as text but `+54261` as a number).
//!
//! **Number patterns** (`caller`, `dialed`, `rewrite[].match`): `/…/` is a
//! regex on the whole number (anchored for you: `/55|66/` means
//! `^(?:55|66)$`). Anything else is an Asterisk dialplan pattern, with an
//! optional leading `_`: `X` = any digit, `Z` = 1-9, `N` = 2-9, `[1-5]`,
//! `[13-5]` = one of, `.` = one or more of anything, `!` = zero or more,
//! every other character literal. So `2X` is 2 then one digit,
//! `_NXXNXXXXXX` a 10-digit NANP number, `_9X.` 9 then at least two more
//! characters. Lower-case `x`, `z`, `n` are pattern letters only after `_`
//! (so `caller: anonymous` is literal).
//!
//! # Rewriting
//!
//! Each `rewrite` step, in order, looks at the caller and/or dialed number
//! as left by the previous steps; if the whole number matches `match`, it
//! removes `strip` leading characters and prepends `prefix`. With the
//! example above, a dialed `95551234` becomes `5551234` (step 1) and then
//! `02615551234` (step 2). Rewritten numbers are what conditions
//! (`caller`, `dialed`), placeholders (`%CALLER_ID%`, `%DIALED%`) and
//! templates (`{{call.caller_number}}`) see; the model event itself is not
//! changed. The `extension` condition and `%EXTENSION%` use the number as
//! it was (on outgoing calls the calling extension is the caller number).
//!
//! # Evaluation
//!
//! For each event, rules are tried in file order; each matching rule
//! renders one request, and a matching rule with `stop: true` ends the
//! evaluation for that event. A rule's request carries:
//!
//! - `event_id`: stable across retries, restarts and replays:
//!   `{leg_id}/{state}/{rule}` for leg events (`leg_id` is
//!   `{session_id}/{extension}`),
//!   `{session_id}/call/{state}/{rule}` for call_state events,
//!   `{session_id}/call/hungup/{rule}` for call records.
//! - `created_at`: the event's time (leg/call_state `at`, record
//!   `ended_at`), epoch seconds; `expires_at` = `created_at + max_age`.
//! - `idempotency_key`: the rendered template (none when not configured or
//!   when it renders empty).
//! - `Content-Type` for bodies, unless a header sets it.
//!
//! Matches are counted in `callhook_rule_matches_total{rule}`. A template
//! that fails to render for a real event (rare: templates are checked
//! against sample events when loaded) is logged with the rule name,
//! counted in `callhook_render_errors_total{rule}`, and that request is
//! skipped.

mod compile;
mod conditions;
mod pattern;
pub mod schedule;
pub mod spec;

use std::borrow::Cow;

use serde_json::{Map, Value};

pub(crate) use compile::compile_rewrites;
pub use compile::{compile, compile_with_env, RuleError};
pub use conditions::{
    involved_extensions, parse_direction, parse_disposition, parse_state, NameMatcher, Scope,
};
pub(crate) use conditions::{name_matcher, number_pattern};
pub use pattern::NumberPattern;
pub use schedule::{Schedule, ScheduleError, TimeSpec};
pub use spec::{RewriteSpec, RuleSpec, RulesSpec, Scalar, WhenSpec, Words};

use crate::deliver::secret::{conceal, Secrets};
use crate::deliver::DeliveryRequest;
use crate::model::ModelEvent;
use crate::template::{
    bound_values, sanitize_header_value, FormTemplate, JsonTemplate, RenderError, TemplateContext,
    Templates, TextTemplate, UrlTemplate,
};
use conditions::Conditions;

/// Which number a rewrite step applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RewriteField {
    Caller,
    Dialed,
    Both,
}

/// A compiled rewrite step.
#[derive(Debug, Clone)]
pub(crate) struct Rewrite {
    field: RewriteField,
    pattern: NumberPattern,
    strip: usize,
    prefix: String,
}

impl Rewrite {
    fn apply(&self, n: &mut String) -> bool {
        if !self.pattern.is_match(n) {
            return false;
        }
        let cut = n
            .char_indices()
            .nth(self.strip)
            .map(|(i, _)| i)
            .unwrap_or(n.len());
        *n = format!("{}{}", self.prefix, &n[cut..]);
        true
    }
}

/// A compiled body.
#[derive(Debug, Clone)]
enum Body {
    None,
    Json(JsonTemplate),
    Form(FormTemplate),
    Text(TextTemplate),
}

/// A compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    target: String,
    cond: Conditions,
    method: String,
    url: UrlTemplate,
    headers: Vec<(String, TextTemplate)>,
    body: Body,
    idempotency_key: Option<TextTemplate>,
    max_age: Option<f64>,
    stop: bool,
}

impl Rule {
    fn needs_handlebars(&self) -> bool {
        self.url.needs_handlebars()
            || self.headers.iter().any(|(_, t)| t.needs_handlebars())
            || self
                .idempotency_key
                .as_ref()
                .is_some_and(|t| t.needs_handlebars())
            || match &self.body {
                Body::None => false,
                Body::Json(j) => j.needs_handlebars(),
                Body::Form(f) => f.needs_handlebars(),
                Body::Text(t) => t.needs_handlebars(),
            }
    }
}

/// Compiled rules, ready to evaluate. Cheap to share (`Arc`) between tasks.
#[derive(Debug)]
pub struct RuleSet {
    rewrites: Vec<Rewrite>,
    rules: Vec<Rule>,
    templates: Templates,
    env: Map<String, Value>,
    /// Longest value a template sees (`templates.max_value_length`).
    max_value: usize,
    /// The `env:` values, masked in every request before it is stored.
    secrets: Secrets,
}

impl Default for RuleSet {
    fn default() -> Self {
        Self {
            rewrites: Vec::new(),
            rules: Vec::new(),
            templates: Templates::default(),
            env: Map::new(),
            max_value: crate::template::DEFAULT_MAX_VALUE_LENGTH,
            secrets: Secrets::default(),
        }
    }
}

/// `{leg_id}/{state}/{rule}`, `{session}/call/{state}/{rule}`.
pub fn event_id(ev: &ModelEvent, rule: &str) -> String {
    match ev {
        // `leg_id` already starts with the session id (`SESSION/EXT`).
        ModelEvent::Leg(l) => format!("{}/{}/{rule}", l.leg_id, l.state.as_str()),
        ModelEvent::CallState(c) => format!("{}/call/{}/{rule}", c.session_id, c.state.as_str()),
        ModelEvent::Call(r) => format!("{}/call/hungup/{rule}", r.session_id),
    }
}

/// The event's time, epoch seconds.
pub fn event_time(ev: &ModelEvent) -> f64 {
    match ev {
        ModelEvent::Leg(l) => l.at.0,
        ModelEvent::CallState(c) => c.at.0,
        ModelEvent::Call(r) => r.ended_at.0,
    }
}

/// Applies rewrite steps, in order, to a caller and a dialed number;
/// returns whether anything changed.
pub(crate) fn apply_rewrites(
    rewrites: &[Rewrite],
    caller: &mut Option<String>,
    dialed: &mut Option<String>,
) -> bool {
    let mut changed = false;
    for rw in rewrites {
        if matches!(rw.field, RewriteField::Caller | RewriteField::Both) {
            if let Some(n) = caller.as_mut() {
                changed |= rw.apply(n);
            }
        }
        if matches!(rw.field, RewriteField::Dialed | RewriteField::Both) {
            if let Some(n) = dialed.as_mut() {
                changed |= rw.apply(n);
            }
        }
    }
    changed
}

fn numbers_mut(ev: &mut ModelEvent) -> (&mut Option<String>, &mut Option<String>) {
    match ev {
        ModelEvent::Leg(l) => (&mut l.caller_number, &mut l.dialed_number),
        ModelEvent::CallState(c) => (&mut c.caller_number, &mut c.dialed_number),
        ModelEvent::Call(r) => (&mut r.caller_number, &mut r.dialed_number),
    }
}

impl RuleSet {
    /// Sets the longest value (bytes) a template sees; longer ones are cut
    /// (see [`crate::template::bound_values`]).
    pub fn set_max_value_length(&mut self, max: usize) {
        self.max_value = max.max(1);
    }

    /// The secrets of the rule set (every `env:` value): the dispatcher
    /// needs them to put them back into stored requests.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rule names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.rules.iter().map(|r| r.name.as_str()).collect()
    }

    /// The event with `rewrite` applied to its caller and dialed numbers
    /// (borrowed when nothing changes).
    pub fn rewrite<'e>(&self, ev: &'e ModelEvent) -> Cow<'e, ModelEvent> {
        if self.rewrites.is_empty() {
            return Cow::Borrowed(ev);
        }
        let mut copy = ev.clone();
        let changed = {
            let (caller, dialed) = numbers_mut(&mut copy);
            apply_rewrites(&self.rewrites, caller, dialed)
        };
        if changed {
            Cow::Owned(copy)
        } else {
            Cow::Borrowed(ev)
        }
    }

    /// The requests the rules produce for one event, in rule order.
    pub fn evaluate(&self, ev: &ModelEvent) -> Vec<DeliveryRequest> {
        let mut out = Vec::new();
        if self.rules.is_empty() {
            return out;
        }
        let rewritten = self.rewrite(ev);
        let bounded = bound_values(&rewritten, self.max_value);
        let rev: &ModelEvent = &bounded;
        let mut ctx: Option<TemplateContext<'_>> = None;
        let m = crate::metrics::metrics();
        for rule in &self.rules {
            if !rule.cond.matches(rev, ev) {
                continue;
            }
            m.rule_matches
                .with_label_values(&[rule.name.as_str()])
                .inc();
            let ctx = ctx.get_or_insert_with(|| TemplateContext::with_original(rev, ev, &self.env));
            if rule.needs_handlebars() {
                ctx.prepare(&rule.name);
            }
            match self.render(rule, rev, ctx) {
                Ok(req) => out.push(req),
                Err(e) => {
                    m.render_errors
                        .with_label_values(&[rule.name.as_str()])
                        .inc();
                    tracing::warn!(
                        rule = %rule.name,
                        session_id = %rev.session_id(),
                        error = %e,
                        "rule template failed to render; request skipped"
                    );
                }
            }
            if rule.stop {
                break;
            }
        }
        out
    }

    fn render(
        &self,
        rule: &Rule,
        ev: &ModelEvent,
        ctx: &TemplateContext<'_>,
    ) -> Result<DeliveryRequest, RenderError> {
        let t = &self.templates;
        let rendered = t.render_url(&rule.url, ctx)?;
        let mut headers = Vec::with_capacity(rule.headers.len() + 1);
        for (k, v) in &rule.headers {
            headers.push((k.clone(), t.render_header(v, ctx)?));
        }
        let (body, content_type) = match &rule.body {
            Body::None => (None, None),
            Body::Json(j) => (Some(t.render_json(j, ctx)?), Some("application/json")),
            Body::Form(f) => (
                Some(t.render_form(f, ctx)?),
                Some("application/x-www-form-urlencoded"),
            ),
            Body::Text(b) => (
                Some(t.render(b, ctx)?.into_bytes()),
                Some("text/plain; charset=utf-8"),
            ),
        };
        if let Some(ct) = content_type {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                headers.push(("Content-Type".into(), ct.into()));
            }
        }
        let idempotency_key = match &rule.idempotency_key {
            None => None,
            Some(k) => {
                Some(sanitize_header_value(&t.render(k, ctx)?)).filter(|s| !s.trim().is_empty())
            }
        };
        let created_at = event_time(ev);
        let mut req = DeliveryRequest {
            target: rule.target.clone(),
            rule: rule.name.clone(),
            session_id: ev.session_id().to_string(),
            pbx: match ev {
                ModelEvent::Leg(l) => l.pbx.clone(),
                ModelEvent::CallState(c) => c.pbx.clone(),
                ModelEvent::Call(r) => r.pbx.clone(),
            },
            event_id: event_id(ev, &rule.name),
            method: rule.method.clone(),
            url: rendered.url,
            headers,
            body,
            idempotency_key,
            created_at,
            expires_at: rule.max_age.map(|a| created_at + a),
            refused: rendered.refused,
            secrets: Vec::new(),
        };
        conceal(&mut req, &self.secrets);
        Ok(req)
    }
}

#[cfg(test)]
mod tests;
