//! The pure compile step: [`RulesSpec`] → [`RuleSet`], every error at once.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

use super::conditions::{Conditions, Errs};
use super::pattern::NumberPattern;
use super::spec::{RewriteSpec, RuleSpec, RulesSpec};
use super::{Body, Rewrite, RewriteField, Rule, RuleSet};
use crate::template::{
    sample_event, EventKind, TemplateContext, TemplateError, Templates, TextTemplate, UrlTemplate,
};

/// A problem in the rules, with enough context for the config layer to
/// point at the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// Index in `rules:` (None for `env:` / `rewrite:` problems).
    pub rule_index: Option<usize>,
    /// The rule's name, when it has one.
    pub rule_name: Option<String>,
    /// Dotted path of the setting (`rules[2].url`, `rewrite[0].match`).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// A short piece of the offending YAML text (`%CALLER_IDD%`), to find
    /// its line and column in the file.
    pub needle: Option<String>,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.field)?;
        if let Some(n) = &self.rule_name {
            write!(f, " (rule {n:?})")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleError {}

fn top_error(
    field: String,
    message: String,
    hint: Option<String>,
    needle: Option<String>,
) -> RuleError {
    RuleError {
        rule_index: None,
        rule_name: None,
        field,
        message,
        hint,
        needle,
    }
}

/// Compiles rules, reading the variables listed in `env:` from the process
/// environment (only those: a template never sees the AMI secret or any
/// other variable by accident).
pub fn compile(
    spec: &RulesSpec,
    known_targets: &dyn Fn(&str) -> bool,
) -> Result<RuleSet, Vec<RuleError>> {
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    compile_with_env(spec, known_targets, vars)
}

/// [`compile`] with an explicit environment (for tests and `rules lint`).
pub fn compile_with_env(
    spec: &RulesSpec,
    known_targets: &dyn Fn(&str) -> bool,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<RuleSet, Vec<RuleError>> {
    let mut errors = Vec::new();
    let vars: BTreeMap<String, String> = vars.into_iter().collect();

    // env
    let mut env = Map::new();
    for (i, name) in spec.env.iter().enumerate() {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            errors.push(top_error(
                format!("env[{i}]"),
                format!("{name:?} is not a valid environment variable name"),
                Some("letters, digits and _".into()),
                Some(name.clone()),
            ));
            continue;
        }
        match vars.get(name) {
            Some(v) => {
                env.insert(name.clone(), Value::String(v.clone()));
            }
            None => {
                errors.push(top_error(
                    format!("env[{i}]"),
                    format!("environment variable {name} is not set"),
                    Some("set it, or remove it from env:".into()),
                    Some(name.clone()),
                ));
                // A placeholder, so that the templates reading it are
                // still checked without a follow-on "not available" error.
                env.insert(name.clone(), Value::String(String::new()));
            }
        }
    }

    // rewrite
    let rewrites = compile_rewrites(&spec.rewrite, "rewrite", &mut errors);

    // rules
    let mut templates = Templates::new();
    let mut rules = Vec::new();
    let mut names: HashSet<&str> = HashSet::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let before = errors.len();
        let name_ok = check_name(i, r, &mut names, &mut errors);
        let mut errs = Errs {
            index: i,
            name: name_ok.then_some(r.name.as_str()),
            out: &mut errors,
        };
        if let Some(rule) = compile_rule(r, known_targets, &mut templates, &env, &mut errs) {
            if errors.len() == before {
                rules.push(rule);
            }
        }
    }

    if errors.is_empty() {
        Ok(RuleSet {
            rewrites,
            rules,
            templates,
            max_value: crate::template::DEFAULT_MAX_VALUE_LENGTH,
            secrets: crate::deliver::secret::Secrets::new(
                env.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))),
            ),
            env,
        })
    } else {
        Err(errors)
    }
}

/// Compiles `rewrite:` steps; problems are reported at `{path}[i]…`.
pub(crate) fn compile_rewrites(
    specs: &[RewriteSpec],
    path: &str,
    errors: &mut Vec<RuleError>,
) -> Vec<Rewrite> {
    let mut rewrites = Vec::new();
    for (i, r) in specs.iter().enumerate() {
        let field = match r.field.trim().to_ascii_lowercase().as_str() {
            "caller" => Some(RewriteField::Caller),
            "dialed" => Some(RewriteField::Dialed),
            "both" => Some(RewriteField::Both),
            other => {
                errors.push(top_error(
                    format!("{path}[{i}].field"),
                    format!("unknown field {other:?}"),
                    Some("valid: caller, dialed, both".into()),
                    Some(r.field.clone()),
                ));
                None
            }
        };
        let pattern = match NumberPattern::compile(&r.pattern.0) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(top_error(
                    format!("{path}[{i}].match"),
                    format!("bad number pattern {:?}: {e}", r.pattern.0),
                    Some("dialplan pattern (_9X., _XXXXXXX) or /regex/".into()),
                    Some(r.pattern.0.clone()),
                ));
                None
            }
        };
        let prefix = r.prefix.as_ref().map(|p| p.0.clone()).unwrap_or_default();
        if r.strip.unwrap_or(0) == 0 && prefix.is_empty() {
            errors.push(top_error(
                format!("{path}[{i}]"),
                "this rewrite changes nothing".into(),
                Some("give strip: N and/or prefix: \"…\"".into()),
                Some(r.pattern.0.clone()),
            ));
        }
        if let (Some(field), Some(pattern)) = (field, pattern) {
            rewrites.push(Rewrite {
                field,
                pattern,
                strip: r.strip.unwrap_or(0),
                prefix,
            });
        }
    }
    rewrites
}

fn check_name<'a>(
    i: usize,
    r: &'a RuleSpec,
    names: &mut HashSet<&'a str>,
    errors: &mut Vec<RuleError>,
) -> bool {
    let mut err = |message: String, hint: Option<&str>| {
        errors.push(RuleError {
            rule_index: Some(i),
            rule_name: None,
            field: format!("rules[{i}].name"),
            message,
            hint: hint.map(str::to_string),
            needle: (!r.name.is_empty()).then(|| r.name.clone()),
        })
    };
    if r.name.trim().is_empty() {
        err("a rule needs a name".into(), Some("name: screen-pop"));
        return false;
    }
    if r.name.len() > 100 || r.name.contains('/') || r.name.chars().any(char::is_control) {
        err(
            format!("invalid rule name {:?}", r.name),
            Some("up to 100 characters, no / and no control characters"),
        );
        return false;
    }
    if !names.insert(r.name.as_str()) {
        err(
            format!("two rules are named {:?}", r.name),
            Some("rule names must be unique"),
        );
        return false;
    }
    true
}

fn push_template_errors(errs: &mut Errs<'_>, field: &str, es: Vec<TemplateError>) {
    for e in es {
        errs.push(&format!("{field}{}", e.at), e.message, e.hint, e.needle);
    }
}

fn compile_rule(
    r: &RuleSpec,
    known_targets: &dyn Fn(&str) -> bool,
    templates: &mut Templates,
    env: &Map<String, Value>,
    errs: &mut Errs<'_>,
) -> Option<Rule> {
    if r.target.trim().is_empty() || !known_targets(&r.target) {
        errs.push(
            "target",
            format!("unknown target {:?}", r.target),
            Some("targets are defined in the configuration's targets: section".into()),
            Some(r.target.clone()),
        );
    }

    let cond = Conditions::compile(&r.when, errs);

    let url = match templates.url(&r.url) {
        Ok(u) => Some(u),
        Err(es) => {
            push_template_errors(errs, "url", es);
            None
        }
    };

    // Headers and bodies are compiled as far as possible: the parts that
    // compiled are still checked against the samples below.
    let mut complete = true;
    let headers = match &r.headers {
        None => Vec::new(),
        Some(m) => {
            let (h, es) = templates.headers_partial(m);
            complete &= es.is_empty();
            push_template_errors(errs, "headers", es);
            h
        }
    };

    let given: Vec<&str> = [
        r.json.as_ref().map(|_| "json"),
        r.form.as_ref().map(|_| "form"),
        r.body.as_ref().map(|_| "body"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let body = if given.len() > 1 {
        errs.push(
            given[1],
            format!(
                "give only one of json, form and body (this rule has {})",
                given.join(" and ")
            ),
            None,
            Some(r.name.clone()),
        );
        complete = false;
        Body::None
    } else if let Some(j) = &r.json {
        let (t, es) = templates.json_partial(j);
        complete &= es.is_empty();
        push_template_errors(errs, "json", es);
        Body::Json(t)
    } else if let Some(f) = &r.form {
        let (t, es) = templates.form_partial(f);
        complete &= es.is_empty();
        push_template_errors(errs, "form", es);
        Body::Form(t)
    } else if let Some(b) = &r.body {
        match templates.text(b) {
            Ok(t) => Body::Text(t),
            Err(es) => {
                complete = false;
                push_template_errors(errs, "body", es);
                Body::None
            }
        }
    } else {
        Body::None
    };

    let method = match &r.method {
        None if given.is_empty() => "GET".to_string(),
        None => "POST".to_string(),
        Some(m) => {
            let up = m.trim().to_ascii_uppercase();
            if up.is_empty() || !up.bytes().all(|b| b.is_ascii_uppercase()) {
                errs.push(
                    "method",
                    format!("invalid HTTP method {m:?}"),
                    Some("GET, POST, PUT, PATCH or DELETE".into()),
                    Some(m.clone()),
                );
            }
            up
        }
    };

    let idempotency_key = match &r.idempotency_key {
        None => None,
        Some(k) => match templates.text(k) {
            Ok(t) => Some(t),
            Err(es) => {
                complete = false;
                push_template_errors(errs, "idempotency_key", es);
                None
            }
        },
    };

    let max_age = match &r.max_age {
        None => None,
        Some(s) => {
            match crate::values::parse_duration(&s.0) {
                Some(d) if d.as_secs_f64() > 0.0 => Some(d.as_secs_f64()),
                _ => {
                    errs.push(
                    "max_age",
                    format!("invalid duration {:?}", s.0),
                    Some("a positive duration such as 30s, 500ms, 5m, 2h (a bare number is seconds)".into()),
                    Some(s.0.clone()),
                );
                    None
                }
            }
        }
    };

    // Even when other fields are wrong, the templates that compiled are
    // checked, so that every problem is reported at once; the caller drops
    // a rule that has errors.
    let kinds = cond.kinds();
    let parts = Parts {
        url: url.as_ref(),
        headers: &headers,
        body: &body,
        idempotency_key: idempotency_key.as_ref(),
    };
    check_against_samples(&r.name, &kinds, &parts, templates, env, errs);

    let url = url?;
    if !complete {
        return None;
    }
    Some(Rule {
        name: r.name.clone(),
        target: r.target.clone(),
        cond,
        method,
        url,
        headers,
        body,
        idempotency_key,
        max_age,
        stop: r.stop,
    })
}

/// The templates of a rule (some possibly missing after errors).
struct Parts<'a> {
    url: Option<&'a UrlTemplate>,
    headers: &'a [(String, TextTemplate)],
    body: &'a Body,
    idempotency_key: Option<&'a TextTemplate>,
}

fn check_kind(
    parts: &Parts<'_>,
    templates: &Templates,
    ctx: &TemplateContext<'_>,
    kind: EventKind,
) -> Vec<(String, TemplateError)> {
    let mut found: Vec<(String, TemplateError)> = Vec::new();
    for t in parts.url.into_iter().flat_map(|u| u.templates()) {
        if let Err(e) = templates.check(t, ctx, kind) {
            found.push(("url".into(), e));
        }
    }
    for e in templates.check_fields(parts.headers, ctx, kind) {
        found.push((format!("headers{}", e.at), e));
    }
    match parts.body {
        Body::Json(j) => {
            for e in templates.check_json(j, ctx, kind) {
                found.push((format!("json{}", e.at), e));
            }
        }
        Body::Form(f) => {
            for e in templates.check_fields(f.fields(), ctx, kind) {
                found.push((format!("form{}", e.at), e));
            }
        }
        Body::Text(t) => {
            if let Err(e) = templates.check(t, ctx, kind) {
                found.push(("body".into(), e));
            }
        }
        Body::None => {}
    }
    if let Some(k) = parts.idempotency_key {
        if let Err(e) = templates.check(k, ctx, kind) {
            found.push(("idempotency_key".into(), e));
        }
    }
    found
}

/// Renders every template of the rule in strict mode against a sample of
/// every kind of event the rule can match.
fn check_against_samples(
    name: &str,
    kinds: &[EventKind],
    parts: &Parts<'_>,
    templates: &Templates,
    env: &Map<String, Value>,
    errs: &mut Errs<'_>,
) {
    // (field, needle) → the error and the kinds it failed on.
    let mut found: Vec<(String, TemplateError, Vec<EventKind>)> = Vec::new();
    for kind in kinds {
        let ev = sample_event(*kind);
        let mut ctx = TemplateContext::new(&ev, env);
        ctx.prepare(name);
        for (field, e) in check_kind(parts, templates, &ctx, *kind) {
            match found
                .iter_mut()
                .find(|(f, x, _)| *f == field && x.needle == e.needle)
            {
                Some((_, _, ks)) => ks.push(*kind),
                None => found.push((field, e, vec![*kind])),
            }
        }
    }
    for (field, mut e, failed) in found {
        if failed.len() > 1 {
            let all: Vec<&str> = failed.iter().map(|k| k.label()).collect();
            e.message = e.message.replace(failed[0].label(), &all.join(" and "));
        }
        let ok_on: Vec<EventKind> = kinds
            .iter()
            .copied()
            .filter(|k| !failed.contains(k))
            .collect();
        let hint = if ok_on.is_empty() {
            e.hint
        } else {
            // It exists on the other kind this call-scope rule matches.
            let state = if ok_on.contains(&EventKind::Call) {
                "state: hungup"
            } else {
                "state: [ringing, answered]"
            };
            let more = format!(
                "it exists on {}: this rule matches both; restrict it with {state}",
                ok_on
                    .iter()
                    .map(|k| k.label())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Some(match e.hint {
                Some(h) => format!("{more}; {h}"),
                None => more,
            })
        };
        errs.push(&field, e.message, hint, e.needle);
    }
}
