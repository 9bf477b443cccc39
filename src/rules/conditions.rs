//! `when:` conditions: compiled form and matching.

use regex::Regex;

use super::pattern::NumberPattern;
use super::spec::{WhenSpec, Words};
use super::RuleError;
use crate::model::{Direction, Disposition, ModelEvent, Role, State};
use crate::template::{did_you_mean, EventKind};

/// Which events a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Leg events.
    Leg,
    /// Call-state events (ringing, answered) and call records (hungup).
    Call,
}

/// An extension or queue matcher.
#[derive(Debug, Clone)]
pub enum NameMatcher {
    /// Exact text.
    Exact(String),
    /// `_dialplan` pattern or `/regex/`.
    Pattern(NumberPattern),
    /// `/regex/` for names (queues).
    Regex(Regex),
}

impl NameMatcher {
    /// Whether `v` matches.
    pub fn is_match(&self, v: &str) -> bool {
        match self {
            NameMatcher::Exact(s) => s == v,
            NameMatcher::Pattern(p) => p.is_match(v),
            NameMatcher::Regex(r) => r.is_match(v),
        }
    }
}

/// Compiled conditions (`None` = not given).
#[derive(Debug, Clone)]
pub struct Conditions {
    /// Scope.
    pub scope: Scope,
    /// States.
    pub states: Option<Vec<State>>,
    directions: Option<Vec<Direction>>,
    extensions: Option<Vec<NameMatcher>>,
    queues: Option<Vec<NameMatcher>>,
    pbx: Option<Vec<String>>,
    dispositions: Option<Vec<Disposition>>,
    roles: Option<Vec<Role>>,
    caller: Option<Vec<NumberPattern>>,
    dialed: Option<Vec<NumberPattern>>,
}

/// Parses a state word (English or Meetip Spanish, any case).
pub fn parse_state(w: &str) -> Option<State> {
    match w.trim().to_ascii_lowercase().as_str() {
        "ringing" | "timbre" => Some(State::Ringing),
        "answered" | "descolgado" => Some(State::Answered),
        "hungup" | "colgado" => Some(State::Hungup),
        _ => None,
    }
}

/// Parses a direction word.
pub fn parse_direction(w: &str) -> Option<Direction> {
    match w.trim().to_ascii_lowercase().as_str() {
        "incoming" | "entrante" => Some(Direction::Incoming),
        "outgoing" | "saliente" => Some(Direction::Outgoing),
        "internal" | "interna" | "interno" => Some(Direction::Internal),
        _ => None,
    }
}

/// Parses a disposition (`NO ANSWER`, `no_answer`, `No-Answer`…).
pub fn parse_disposition(w: &str) -> Option<Disposition> {
    let n: String = w
        .trim()
        .chars()
        .map(|c| {
            if c == '_' || c == '-' {
                ' '
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect();
    match n.split_whitespace().collect::<Vec<_>>().join(" ").as_str() {
        "ANSWERED" => Some(Disposition::Answered),
        "NO ANSWER" | "NOANSWER" => Some(Disposition::NoAnswer),
        "BUSY" => Some(Disposition::Busy),
        "FAILED" => Some(Disposition::Failed),
        "ABANDONED" => Some(Disposition::Abandoned),
        _ => None,
    }
}

fn parse_role(w: &str) -> Option<Role> {
    match w.trim().to_ascii_lowercase().as_str() {
        "caller" => Some(Role::Caller),
        "callee" => Some(Role::Callee),
        _ => None,
    }
}

/// Collects errors for one rule.
pub(crate) struct Errs<'a> {
    pub index: usize,
    pub name: Option<&'a str>,
    pub out: &'a mut Vec<RuleError>,
}

impl Errs<'_> {
    pub fn push(
        &mut self,
        field: &str,
        message: String,
        hint: Option<String>,
        needle: Option<String>,
    ) {
        self.out.push(RuleError {
            rule_index: Some(self.index),
            rule_name: self.name.map(str::to_string),
            field: format!("rules[{}].{field}", self.index),
            message,
            hint,
            needle,
        });
    }
}

fn words<T>(
    w: &Option<Words>,
    field: &str,
    errs: &mut Errs<'_>,
    mut parse: impl FnMut(&str) -> Result<T, (String, Option<String>)>,
) -> Option<Vec<T>> {
    let w = w.as_ref()?;
    if w.items.is_empty() {
        errs.push(
            field,
            "an empty list matches nothing".into(),
            Some(format!("remove `{field}` to match any value")),
            None,
        );
        return Some(Vec::new());
    }
    let mut out = Vec::new();
    for item in &w.items {
        match parse(item) {
            Ok(v) => out.push(v),
            Err((msg, hint)) => errs.push(field, msg, hint, Some(item.clone())),
        }
    }
    Some(out)
}

pub(crate) fn word_error(kind: &str, w: &str, valid: &[&str]) -> (String, Option<String>) {
    let list = format!("valid: {}", valid.join(", "));
    let hint = match did_you_mean(w, valid.iter().copied()) {
        Some(s) => format!("did you mean {s}? {list}"),
        None => list,
    };
    (format!("unknown {kind} {w:?}"), Some(hint))
}

/// An exact name, a `_dialplan` pattern (when `dialplan`) or a `/regex/`.
pub(crate) fn name_matcher(
    s: &str,
    dialplan: bool,
) -> Result<NameMatcher, (String, Option<String>)> {
    if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') {
        if dialplan {
            return NumberPattern::compile(s)
                .map(NameMatcher::Pattern)
                .map_err(|e| (e, None));
        }
        return Regex::new(&format!("^(?:{})$", &s[1..s.len() - 1]))
            .map(NameMatcher::Regex)
            .map_err(|e| (format!("invalid regex: {e}"), None));
    }
    if dialplan && s.starts_with('_') {
        return NumberPattern::compile(s)
            .map(NameMatcher::Pattern)
            .map_err(|e| (e, Some("dialplan patterns: _1XXX, _[1-3]XX, _10.".into())));
    }
    if s.is_empty() {
        return Err(("empty value".into(), None));
    }
    Ok(NameMatcher::Exact(s.to_string()))
}

/// A number pattern, with the error message the rules use.
pub(crate) fn number_pattern(s: &str) -> Result<NumberPattern, (String, Option<String>)> {
    NumberPattern::compile(s).map_err(|e| {
        (
            format!("bad number pattern {s:?}: {e}"),
            Some("dialplan pattern (_NXXNXXXXXX, _9X., 2X) or /regex/".into()),
        )
    })
}

impl Conditions {
    /// Compiles `when:`, reporting every problem.
    pub(crate) fn compile(w: &WhenSpec, errs: &mut Errs<'_>) -> Conditions {
        let scope = match &w.scope {
            None => Scope::Leg,
            Some(s) if s.items.len() != 1 => {
                errs.push(
                    "when.scope",
                    "scope takes one value: leg or call".into(),
                    None,
                    s.items.first().cloned(),
                );
                Scope::Leg
            }
            Some(s) => match s.items[0].trim().to_ascii_lowercase().as_str() {
                "leg" => Scope::Leg,
                "call" => Scope::Call,
                other => {
                    let (m, h) = word_error("scope", other, &["leg", "call"]);
                    errs.push("when.scope", m, h, Some(s.items[0].clone()));
                    Scope::Leg
                }
            },
        };
        const STATES: &[&str] = &[
            "ringing",
            "answered",
            "hungup",
            "timbre",
            "descolgado",
            "colgado",
        ];
        const DIRS: &[&str] = &[
            "incoming", "outgoing", "internal", "entrante", "saliente", "interna", "interno",
        ];
        const DISPS: &[&str] = &["ANSWERED", "NO ANSWER", "BUSY", "FAILED", "ABANDONED"];
        let states = words(&w.state, "when.state", errs, |s| {
            parse_state(s).ok_or_else(|| word_error("state", s, STATES))
        });
        let directions = words(&w.direction, "when.direction", errs, |s| {
            parse_direction(s).ok_or_else(|| word_error("direction", s, DIRS))
        });
        let dispositions = words(&w.disposition, "when.disposition", errs, |s| {
            parse_disposition(s).ok_or_else(|| word_error("disposition", s, DISPS))
        });
        let roles = words(&w.role, "when.role", errs, |s| {
            parse_role(s).ok_or_else(|| word_error("role", s, &["caller", "callee"]))
        });
        let extensions = words(&w.extension, "when.extension", errs, |s| {
            name_matcher(s, true)
        });
        let queues = words(&w.queue, "when.queue", errs, |s| name_matcher(s, false));
        let pbx = words(&w.pbx, "when.pbx", errs, |s| Ok(s.to_string()));
        let caller = words(&w.caller, "when.caller", errs, number_pattern);
        let dialed = words(&w.dialed, "when.dialed", errs, number_pattern);

        if scope == Scope::Call && roles.is_some() {
            errs.push(
                "when.role",
                "role only exists on legs, but this rule has scope: call".into(),
                Some("remove role, or use scope: leg".into()),
                w.role.as_ref().and_then(|r| r.items.first().cloned()),
            );
        }
        if let (Some(d), Some(st)) = (&dispositions, &states) {
            if !d.is_empty() && !st.is_empty() && !st.contains(&State::Hungup) {
                errs.push(
                    "when.disposition",
                    "disposition is only known on hungup, but this rule only matches other states"
                        .into(),
                    Some("add hungup to state, or remove disposition".into()),
                    None,
                );
            }
        }
        Conditions {
            scope,
            states,
            directions,
            extensions,
            queues,
            pbx,
            dispositions,
            roles,
            caller,
            dialed,
        }
    }

    /// The kinds of event this rule can match.
    pub fn kinds(&self) -> Vec<EventKind> {
        match self.scope {
            Scope::Leg => vec![EventKind::Leg],
            Scope::Call => {
                let st = self.states.as_deref();
                let any = |s: State| st.is_none_or(|v| v.is_empty() || v.contains(&s));
                let mut k = Vec::new();
                if any(State::Ringing) || any(State::Answered) {
                    k.push(EventKind::CallState);
                }
                if any(State::Hungup) {
                    k.push(EventKind::Call);
                }
                k
            }
        }
    }

    /// Whether the (rewritten) event matches; `original` is the event
    /// before rewriting (extensions are matched on it).
    pub fn matches(&self, ev: &ModelEvent, original: &ModelEvent) -> bool {
        let kind = EventKind::of(ev);
        let scope_ok = match self.scope {
            Scope::Leg => kind == EventKind::Leg,
            Scope::Call => kind != EventKind::Leg,
        };
        if !scope_ok {
            return false;
        }
        let (state, direction, queue, pbx, caller, dialed) = match ev {
            ModelEvent::Leg(l) => (
                l.state,
                l.direction,
                &l.queue,
                &l.pbx,
                &l.caller_number,
                &l.dialed_number,
            ),
            ModelEvent::CallState(c) => (
                c.state,
                c.direction,
                &c.queue,
                &c.pbx,
                &c.caller_number,
                &c.dialed_number,
            ),
            ModelEvent::Call(r) => (
                State::Hungup,
                r.direction,
                &r.queue,
                &r.pbx,
                &r.caller_number,
                &r.dialed_number,
            ),
        };
        if !any_of(&self.states, |s| *s == state)
            || !any_of(&self.directions, |d| *d == direction)
            || !any_of(&self.pbx, |p| p == pbx)
        {
            return false;
        }
        if !opt_any_of(&self.queues, queue.as_deref(), |m, q| m.is_match(q))
            || !opt_any_of(&self.caller, caller.as_deref(), |p, v| p.is_match(v))
            || !opt_any_of(&self.dialed, dialed.as_deref(), |p, v| p.is_match(v))
        {
            return false;
        }
        let disposition = match ev {
            ModelEvent::Leg(l) => l.disposition,
            ModelEvent::CallState(_) => None,
            ModelEvent::Call(r) => Some(r.disposition),
        };
        if !opt_any_of(&self.dispositions, disposition.as_ref(), |a, b| a == b) {
            return false;
        }
        if let Some(roles) = &self.roles {
            match ev {
                ModelEvent::Leg(l) if roles.contains(&l.role) => {}
                _ => return false,
            }
        }
        if let Some(ms) = &self.extensions {
            let exts = involved_extensions(original);
            if !exts.iter().any(|e| ms.iter().any(|m| m.is_match(e))) {
                return false;
            }
        }
        true
    }
}

fn any_of<T>(cond: &Option<Vec<T>>, f: impl Fn(&T) -> bool) -> bool {
    cond.as_ref().is_none_or(|v| v.iter().any(f))
}

/// A condition on a value the event may not have: not given → true; given
/// and the value is missing → false.
fn opt_any_of<T, V: ?Sized>(
    cond: &Option<Vec<T>>,
    v: Option<&V>,
    f: impl Fn(&T, &V) -> bool,
) -> bool {
    match (cond, v) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(c), Some(v)) => c.iter().any(|m| f(m, v)),
    }
}

fn person(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| *s != "external" && !s.is_empty())
}

/// The extensions an event is about, for the `extension` condition:
/// a leg's extension; on call scope, every extension known to take part.
pub fn involved_extensions(ev: &ModelEvent) -> Vec<&str> {
    match ev {
        ModelEvent::Leg(l) => vec![l.extension.as_str()],
        ModelEvent::CallState(c) => {
            let mut v = Vec::new();
            if c.direction != Direction::Incoming {
                v.extend(c.caller_number.as_deref());
            }
            v.extend(person(&c.answered_by));
            v
        }
        ModelEvent::Call(r) => {
            let mut v: Vec<&str> = Vec::new();
            if r.direction != Direction::Incoming {
                v.extend(r.caller_number.as_deref());
            }
            v.extend(r.extensions_rung.iter().map(String::as_str));
            v.extend(person(&r.answered_by));
            v.extend(person(&r.final_answered_by));
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_in_both_languages() {
        for (w, s) in [
            ("ringing", State::Ringing),
            ("Timbre", State::Ringing),
            ("descolgado", State::Answered),
            ("ANSWERED", State::Answered),
            ("colgado", State::Hungup),
            ("hungup", State::Hungup),
        ] {
            assert_eq!(parse_state(w), Some(s), "{w}");
        }
        for (w, d) in [
            ("incoming", Direction::Incoming),
            ("entrante", Direction::Incoming),
            ("saliente", Direction::Outgoing),
            ("Outgoing", Direction::Outgoing),
            ("interna", Direction::Internal),
            ("interno", Direction::Internal),
            ("internal", Direction::Internal),
        ] {
            assert_eq!(parse_direction(w), Some(d), "{w}");
        }
        for (w, d) in [
            ("NO ANSWER", Disposition::NoAnswer),
            ("no_answer", Disposition::NoAnswer),
            ("No-Answer", Disposition::NoAnswer),
            ("answered", Disposition::Answered),
            ("busy", Disposition::Busy),
            ("Failed", Disposition::Failed),
            ("abandoned", Disposition::Abandoned),
        ] {
            assert_eq!(parse_disposition(w), Some(d), "{w}");
        }
        assert_eq!(parse_state("hangup"), None);
        assert_eq!(parse_direction("inbound"), None);
        assert_eq!(parse_disposition("CANCEL"), None);
    }
}
