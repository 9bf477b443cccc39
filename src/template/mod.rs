//! Templates: how a rule turns a call event into a URL, headers and a body.
//!
//! Two syntaxes can be mixed anywhere a template is accepted: Meetip-style
//! **placeholders** (`%CALLER_ID%`) and **handlebars** expressions
//! (`{{call.session_id}}`). Templates are parsed and checked once, when the
//! rules are loaded; an unknown placeholder, a handlebars syntax error or a
//! path that does not exist is a configuration error, not a failed webhook.
//!
//! # Placeholders
//!
//! Written `%NAME%` or `%*NAME*%` (both spellings mean the same). Only
//! upper-case names made of letters and `_` are placeholders, so `%20`,
//! `%2F` or `100%` in a URL stay as they are; an unknown upper-case name
//! (`%CALLER_IDD%`) is an error (with a "did you mean"), and so is a known
//! name in lower case (`%caller_id%`). The one exception: two hex letters
//! (`%AB%`, `%FE%`) are taken as percent-encoded text, not a placeholder.
//! A value the event does not have renders as the empty string.
//!
//! The three kinds of event (see `model`): a **leg** event (one
//! extension's leg changed state), a **call_state** event (the call as a
//! whole started ringing or was answered) and a **call** record (the call
//! ended). `CALLER_ID` and `DIALED` are the numbers *after* the rule set's
//! `rewrite` steps.
//!
//! | Placeholder | leg event | call_state event | call record |
//! |---|---|---|---|
//! | `CALLER_ID` | `caller_number` (the outside caller on incoming calls, the calling extension on outgoing/internal ones) | `caller_number` | `caller_number` |
//! | `CALLER_NAME` | `caller_name` | `caller_name` | `caller_name` |
//! | `DIALED` | `dialed_number` (the DID on incoming calls) | `dialed_number` | `dialed_number` |
//! | `EXTENSION` | the leg's extension | outgoing: the calling extension (`caller_number`); otherwise `answered_by` on `answered` (empty when it is `external`), empty on `ringing` | outgoing: the calling extension (`caller_number`); otherwise the first of `final_answered_by`, `answered_by` that is an extension (not `external`), else the first extension rung, else empty |
//! | `QUEUE_NAME` | `queue` | `queue` | `queue` |
//! | `ID` | `session_id` | `session_id` | `session_id` |
//! | `DURATION`, `DURACION` | on `hungup`: the leg's duration, whole seconds (rounded); else empty | empty | `duration`, whole seconds (rounded) |
//! | `BILLSEC` | on `hungup`: seconds talked, rounded (0 if never answered); else empty | empty | `billsec`, rounded |
//! | `STATE` | `ringing` / `answered` / `hungup` | `ringing` / `answered` | `hungup` |
//! | `ESTADO` | `timbre` / `descolgado` / `colgado` | `timbre` / `descolgado` | `colgado` |
//! | `DIRECTION` | `incoming` / `outgoing` / `internal` | same | same |
//! | `SENTIDO` | `entrante` / `saliente` / `interna` | same | same |
//! | `DISPOSITION` | on `hungup`: `ANSWERED`, `NO ANSWER`, `BUSY`, `FAILED`, `ABANDONED`; else empty | empty | the call's disposition |
//! | `STARTED_AT` | the event's time (`at`) | the event's time (`at`) | `started_at` |
//! | `ANSWERED_AT` | on `answered`: `at`; else empty | on `answered`: `at`; else empty | `answered_at` (empty if unanswered) |
//! | `ENDED_AT` | on `hungup`: `at`; else empty | empty | `ended_at` |
//! | `PBX` | the PBX id | same | same |
//! | `RECORDING_URL` | empty | empty | `recording_url` (asterCC push, when the PBX sends one; empty otherwise) |
//!
//! Times are RFC 3339 in UTC with microseconds, as in the model
//! (`2026-11-22T19:10:48.127205Z`); use the `date` helper for other formats.
//!
//! # URLs
//!
//! `url:` must start with `http://` or `https://`, and the scheme, host and
//! port must be written literally (`http://%HOST%/x` and
//! `http://{{env.CALLHOOK_HOST}}/` are errors; credentials in the URL too:
//! use an `Authorization` header). Placeholders and `{{expressions}}` may
//! appear in the path, the query and the fragment. Each value is
//! percent-encoded for the part it lands in: everything except the
//! unreserved characters `A-Z a-z 0-9 - . _ ~` is encoded (so `/`, `?`,
//! `#`, `&`, `=`, `+`, `%`, spaces, CR/LF and non-ASCII text in a value
//! never change the request's structure). Literal text is kept as written
//! (existing `%20` escapes included); literal non-ASCII characters and
//! `" < > \ ^ ` { | }` are percent-encoded; literal spaces and control
//! characters are an error. In a URL, `{{…}}` must be a single expression
//! (no `{{#if}}` blocks).
//!
//! # Handlebars
//!
//! Headers, `body:`, `idempotency_key:` and every string in a `json:` or
//! `form:` map are [handlebars](https://handlebarsjs.com/guide/) templates,
//! rendered in strict mode (a path that does not exist is an error, found
//! when the rules are loaded) and without HTML escaping (callhook encodes
//! for the context itself: JSON-escapes `json:` values, form-encodes
//! `form:` values, percent-encodes URL values). Placeholders work inside
//! them too: `%CALLER_ID%` is the same as `{{ph.CALLER_ID}}`, and inside an
//! expression `{{default %QUEUE_NAME% "none"}}` it stands for the value.
//! Partials (`{{> x}}`) and decorators are not available.
//!
//! The data a template sees:
//!
//! | Path | Value |
//! |---|---|
//! | `event` | the event as in the `replay` JSON schema, with its `type` (`leg`, `call_state`, `call`) |
//! | `call` | the same object as `event` (on leg events too: it has the leg's call fields) |
//! | `leg` | the leg event on leg events, null otherwise |
//! | `rule` | the rule's name |
//! | `env` | environment variables listed in the top-level `env:` list, read when the rules are loaded |
//! | `ph` | every placeholder value by name (`ph.CALLER_ID`); null when missing, `DURATION`/`DURACION`/`BILLSEC` are numbers |
//!
//! On leg events `duration`, `billsec` and `disposition` are always present
//! (null until `hungup`). A rule is checked against every kind of event it
//! can match: `{{call.extensions_rung}}` is accepted in a rule with
//! `scope: call, state: hungup` but not in one that also matches
//! call_state events.
//!
//! Helpers, besides the handlebars built-ins (`if`, `unless`, `each`,
//! `with`, `lookup`, `eq`, `ne`, `gt`, `gte`, `lt`, `lte`, `and`, `or`,
//! `not`, `len`):
//!
//! - `{{date call.started_at "%Y-%m-%d %H:%M:%S"}}`: formats an RFC 3339
//!   time (or epoch seconds). Codes: `%Y %m %d %H %M %S`, `%f`
//!   (microseconds), `%s` (epoch seconds), `%z` (`-0300`), `%:z`
//!   (`-03:00`), `%%`. An optional third argument is the UTC offset to show
//!   the time in: `{{date call.started_at "%H:%M" "-03:00"}}` (`Z`, `UTC`,
//!   `+05`, `+0530`, `+05:30` also accepted). A null time renders empty.
//! - `{{secs call.duration}}`: rounds seconds to a whole number (null stays
//!   null, rendered empty).
//! - `{{default call.queue "none"}}`: the value unless it is null or empty.
//! - `{{json call.extensions_rung}}`: the value as JSON text.
//!
//! # Bodies
//!
//! - `json:` a YAML value (usually a map) sent as JSON (`Content-Type:
//!   application/json` unless a header sets it). Keys are literal; every
//!   string is a template whose result is JSON-escaped, so no value can
//!   break the document's structure. A string that is *exactly one*
//!   expression or placeholder keeps the JSON type of the value it names:
//!   `"{{call.duration}}"` gives the number `6.005`, `"{{secs
//!   call.duration}}"` and `"%DURACION%"` the number `6`,
//!   `"{{call.queue}}"` null when there is no queue, `"{{json
//!   call.extensions_rung}}"` an array, `"{{call.caller_number}}"` a string
//!   (numbers in strings are never turned into JSON numbers: a phone number
//!   stays a string). Anything else (`"{{call.duration}}s"`,
//!   `"%CALLER_ID%"` next to other text) is a string. `json: "{{json
//!   event}}"` sends the whole event. Key order is kept.
//! - `form:` a flat map sent as `application/x-www-form-urlencoded`; keys
//!   and rendered values are percent-encoded (everything but `A-Z a-z 0-9
//!   - . _ ~`).
//! - `body:` a text template sent as is (`Content-Type: text/plain;
//!   charset=utf-8` unless a header sets it).
//!
//! Rendered header values (and the idempotency key) never contain control
//! characters: CR, LF and other controls but tab become spaces, so a value
//! can never start a new header. Header names are literal HTTP tokens;
//! `Host`, `Content-Length`, `Transfer-Encoding` and `Connection` cannot be
//! set.

mod body;
mod bound;
mod context;
mod helpers;
mod placeholder;
mod url;

use handlebars::{Handlebars, RenderErrorReason};
use serde_json::Value;

pub use body::{sanitize_header_value, FormTemplate, JsonTemplate};
pub use bound::{bound_values, RawTemplates, DEFAULT_MAX_VALUE_LENGTH};
pub use context::{sample_event, EventKind, TemplateContext};
pub use helpers::{format_time, parse_offset};
pub use placeholder::{
    did_you_mean, estado, sentido, tokens, Placeholder, Token, TokenKind, Values,
    ALL as PLACEHOLDERS,
};
pub use url::{encode_component, RenderedUrl, UrlPart, UrlSeg, UrlTemplate};

/// A template problem found at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Where inside the field (`""`, `.id`, `.items[2]`), appended to the
    /// field's path by the caller.
    pub at: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// A short piece of the template text where the problem is.
    pub needle: Option<String>,
}

impl TemplateError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            at: String::new(),
            message: message.into(),
            hint: None,
            needle: None,
        }
    }
    fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
    fn needle(mut self, n: impl Into<String>) -> Self {
        self.needle = Some(n.into());
        self
    }
    fn at(mut self, at: &str) -> Self {
        self.at = format!("{at}{}", self.at);
        self
    }
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// A template failed to render for a real event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

impl From<handlebars::RenderError> for RenderError {
    fn from(e: handlebars::RenderError) -> Self {
        RenderError(render_reason(&e))
    }
}

fn render_reason(e: &handlebars::RenderError) -> String {
    match e.reason() {
        RenderErrorReason::MissingVariable(Some(p)) => {
            format!("`{}` does not exist", clean_path(p))
        }
        r => r.to_string(),
    }
}

fn clean_path(p: &str) -> &str {
    p.strip_prefix("@root.").unwrap_or(p)
}

/// A compiled text template: constant text or a registered handlebars
/// template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextTemplate {
    /// No placeholders and no expressions.
    Const(String),
    /// A handlebars template registered under `name`.
    Handlebars {
        /// Registry name.
        name: String,
        /// The text as written.
        source: String,
    },
}

impl TextTemplate {
    /// Whether rendering needs handlebars data.
    pub fn needs_handlebars(&self) -> bool {
        matches!(self, TextTemplate::Handlebars { .. })
    }
    /// The text as written.
    pub fn source(&self) -> &str {
        match self {
            TextTemplate::Const(s) => s,
            TextTemplate::Handlebars { source, .. } => source,
        }
    }
}

/// One handlebars registry with every template of a rule set, plus the
/// helpers. Strict mode, no HTML escaping.
pub struct Templates {
    hb: Handlebars<'static>,
    next: usize,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("templates", &self.hb.get_templates().len())
            .finish()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// An empty registry with the helpers.
    pub fn new() -> Self {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        helpers::register(&mut hb);
        Self { hb, next: 0 }
    }

    /// Compiles a text template (placeholders and handlebars).
    pub fn text(&mut self, src: &str) -> Result<TextTemplate, Vec<TemplateError>> {
        let hbs = to_handlebars(src)?;
        if !hbs.contains("{{") {
            return Ok(TextTemplate::Const(src.to_string()));
        }
        self.register(&hbs, src)
    }

    fn register(&mut self, hbs: &str, src: &str) -> Result<TextTemplate, Vec<TemplateError>> {
        let name = format!("t{}", self.next);
        self.next += 1;
        match self.hb.register_template_string(&name, hbs) {
            Ok(()) => Ok(TextTemplate::Handlebars {
                name,
                source: src.to_string(),
            }),
            Err(e) => {
                let pos = if hbs == src {
                    e.pos()
                        .map(|(l, c)| format!(" at line {l}, column {c}"))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                // The parser's "expected a, b, c, …" lists say little to a
                // user; other reasons (mismatched blocks) do.
                let detail = match e.reason() {
                    handlebars::TemplateErrorReason::InvalidSyntax(_) => String::new(),
                    r => format!(": {r}"),
                };
                Err(vec![TemplateError::new(format!(
                    "handlebars syntax error{pos}{detail}"
                ))
                .hint("expressions look like {{call.caller_number}} or {{date call.started_at \"%Y-%m-%d\"}}; write \\{{ for a literal {{")
                .needle(short(src))])
            }
        }
    }

    /// Renders a text template.
    pub fn render(
        &self,
        t: &TextTemplate,
        ctx: &TemplateContext<'_>,
    ) -> Result<String, RenderError> {
        match t {
            TextTemplate::Const(s) => Ok(s.clone()),
            TextTemplate::Handlebars { name, .. } => {
                let data = ctx.handlebars().ok_or_else(|| {
                    RenderError("template data was not prepared (internal error)".into())
                })?;
                Ok(self.hb.render_with_context(name, data)?)
            }
        }
    }

    /// Renders `t` against a sample context of kind `kind` (prepared) and
    /// turns a failure into a configuration error that says which path is
    /// missing and what exists instead.
    pub fn check(
        &self,
        t: &TextTemplate,
        ctx: &TemplateContext<'_>,
        kind: EventKind,
    ) -> Result<(), TemplateError> {
        let TextTemplate::Handlebars { name, source } = t else {
            return Ok(());
        };
        let Some(data) = ctx.handlebars() else {
            return Ok(());
        };
        let Err(e) = self.hb.render_with_context(name, data) else {
            return Ok(());
        };
        Err(check_error(&e, source, data.data(), kind))
    }
}

fn check_error(
    e: &handlebars::RenderError,
    source: &str,
    data: &Value,
    kind: EventKind,
) -> TemplateError {
    match e.reason() {
        RenderErrorReason::MissingVariable(Some(p)) if clean_path(p).starts_with("env.") => {
            let path = clean_path(p);
            let var = &path[4..];
            TemplateError::new(format!("`{path}` is not available"))
                .hint(format!(
                    "templates see only the variables listed in the top-level env: list; add `env: [{var}]`"
                ))
                .needle(path)
        }
        RenderErrorReason::MissingVariable(Some(p)) => {
            let path = clean_path(p);
            let mut err =
                TemplateError::new(format!("`{path}` does not exist on {}", kind.label()));
            if let Some(h) = path_hint(path, data, kind) {
                err = err.hint(h);
            }
            let needle = if source.contains(path) {
                path.to_string()
            } else {
                short(source)
            };
            err.needle(needle)
        }
        RenderErrorReason::MissingVariable(None) => TemplateError::new(format!(
            "a value this template uses does not exist on {}",
            kind.label()
        ))
        .needle(short(source)),
        RenderErrorReason::HelperNotFound(h) => {
            let known = [
                "date", "secs", "default", "json", "if", "unless", "each", "with", "lookup", "eq",
                "ne", "gt", "gte", "lt", "lte", "and", "or", "not", "len",
            ];
            let mut hint = format!("helpers: {}", known.join(", "));
            if let Some(s) = did_you_mean(h, known) {
                hint = format!("did you mean `{s}`? {hint}");
            }
            TemplateError::new(format!("unknown helper `{h}`"))
                .hint(hint)
                .needle(if source.contains(h.as_str()) {
                    h.clone()
                } else {
                    short(source)
                })
        }
        RenderErrorReason::PartialNotFound(_) => {
            TemplateError::new("partials are not available in templates").needle(short(source))
        }
        r => TemplateError::new(format!("{r} (on {})", kind.label())).needle(short(source)),
    }
}

/// "did you mean" and the fields that exist, for a missing path.
fn path_hint(path: &str, data: &Value, kind: EventKind) -> Option<String> {
    let segs: Vec<&str> = path.split(['.', '/']).filter(|s| !s.is_empty()).collect();
    let mut cur = data;
    let mut walked: Vec<&str> = Vec::new();
    for seg in &segs {
        match cur {
            Value::Object(m) => match m.get(*seg) {
                Some(v) => {
                    walked.push(seg);
                    cur = v;
                }
                None => {
                    let keys: Vec<&str> = m.keys().map(String::as_str).collect();
                    let prefix = if walked.is_empty() {
                        String::new()
                    } else {
                        format!("{}.", walked.join("."))
                    };
                    let list = if walked.is_empty() {
                        format!("top-level names: {}", keys.join(", "))
                    } else {
                        format!(
                            "fields of `{}` on {}: {}",
                            walked.join("."),
                            kind.label(),
                            keys.join(", ")
                        )
                    };
                    return Some(match did_you_mean(seg, keys.iter().copied()) {
                        Some(s) => format!("did you mean `{prefix}{s}`? {list}"),
                        None => list,
                    });
                }
            },
            Value::Null if walked == ["leg"] => {
                return Some(format!(
                    "`leg` is null on {}: use `call.…` (or `event.…`), or `scope: leg`",
                    kind.label()
                ))
            }
            _ => return None,
        }
    }
    None
}

/// A prefix of a template short enough to search for in the file.
pub(crate) fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(40) {
        Some((i, _)) => line[..i].to_string(),
        None => line.to_string(),
    }
}

/// Rewrites placeholders into handlebars: `%X%` outside expressions becomes
/// `{{@root.ph.X}}`, inside an expression (not in a string literal) it
/// becomes `@root.ph.X`. Reports unknown placeholders and forbidden
/// partials/decorators.
fn to_handlebars(src: &str) -> Result<String, Vec<TemplateError>> {
    let mut out = String::with_capacity(src.len() + 16);
    let mut errs = Vec::new();
    let mut in_expr = false;
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < src.len() {
        let rest = &src[i..];
        let Some(c) = rest.chars().next() else { break };
        if !in_expr {
            if rest.starts_with("\\{{") {
                out.push_str("\\{{");
                i += 3;
                continue;
            }
            if let Some(open) = rest.strip_prefix("{{") {
                let after = open.trim_start_matches(['{', '~', ' ', '\t', '\n', '\r']);
                let after = after.strip_prefix('#').unwrap_or(after).trim_start();
                if after.starts_with('>') || after.starts_with('*') {
                    errs.push(
                        TemplateError::new(
                            "partials and decorators are not available in templates",
                        )
                        .needle(short(rest)),
                    );
                }
                in_expr = true;
                out.push_str("{{");
                i += 2;
                continue;
            }
        } else if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            out.push(c);
            i += c.len_utf8();
            continue;
        } else if c == '"' || c == '\'' {
            quote = Some(c);
            out.push(c);
            i += 1;
            continue;
        } else if rest.starts_with("}}") {
            in_expr = false;
            out.push_str("}}");
            i += 2;
            continue;
        }
        if c == '%' {
            if let Some(t) = tokens(rest).into_iter().find(|t| t.start == 0) {
                match t.kind {
                    TokenKind::Known(p) => {
                        if in_expr {
                            out.push_str(&format!("@root.ph.{}", p.name()));
                        } else {
                            out.push_str(&format!("{{{{@root.ph.{}}}}}", p.name()));
                        }
                    }
                    kind => {
                        errs.push(placeholder_error(&t, kind));
                        out.push_str(t.text);
                    }
                }
                i += t.end;
                continue;
            }
        }
        out.push(c);
        i += c.len_utf8();
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

fn placeholder_error(t: &Token<'_>, kind: TokenKind) -> TemplateError {
    match kind {
        TokenKind::WrongCase(p) => {
            TemplateError::new(format!("placeholders are upper case: {}", t.text))
                .hint(format!("write %{}%", p.name()))
                .needle(t.text)
        }
        _ => TemplateError::new(format!("unknown placeholder {}", t.text))
            .hint(placeholder::unknown_hint(t.name))
            .needle(t.text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn render_on(t: &str, kind: EventKind) -> Result<String, String> {
        let mut ts = Templates::new();
        let tpl = ts.text(t).map_err(|e| {
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let ev = sample_event(kind);
        let env = Map::new();
        let mut ctx = TemplateContext::new(&ev, &env);
        ctx.prepare("rule-x");
        ts.check(&tpl, &ctx, kind).map_err(|e| e.to_string())?;
        ts.render(&tpl, &ctx).map_err(|e| e.to_string())
    }

    #[test]
    fn placeholders_inside_handlebars() {
        let cases = [
            ("pi=%CALLER_ID%", "pi=5559876543"),
            ("%*CALLER_ID*%/%ID%", "5559876543/1795374648.6"),
            ("{{default %QUEUE_NAME% \"none\"}}", "ventas"),
            (
                "{{#each call.extensions_rung}}%EXTENSION%{{this}};{{/each}}",
                "10021002;10021001;",
            ),
            ("{{default call.queue \"%NOPE%\"}}", "ventas"),
            ("100% sure %20", "100% sure %20"),
            ("{{rule}} {{event.type}} {{leg.extension}}", ""),
            ("literal \\{{x}}", "literal {{x}}"),
        ];
        for (t, want) in cases {
            let got = render_on(t, EventKind::Call);
            if t.contains("leg.extension") {
                assert!(got.unwrap_err().contains("`leg` is null"), "{t}");
                continue;
            }
            assert_eq!(got.unwrap(), want, "{t}");
        }
        assert_eq!(
            render_on(
                "{{rule}} {{event.type}} {{leg.extension}} %ESTADO%",
                EventKind::Leg
            )
            .unwrap(),
            "rule-x leg 1002 colgado"
        );
    }

    #[test]
    fn check_explains_missing_paths() {
        let e = render_on("{{call.duraton}}", EventKind::Leg).unwrap_err();
        assert!(
            e.contains("`call.duraton` does not exist on leg events"),
            "{e}"
        );
        assert!(e.contains("did you mean `call.duration`?"), "{e}");
        let e = render_on("{{call.extensions_rung}}", EventKind::CallState).unwrap_err();
        assert!(e.contains("call_state"), "{e}");
        let e = render_on("{{cal.x}}", EventKind::Call).unwrap_err();
        assert!(e.contains("did you mean `call`?"), "{e}");
        let e = render_on("{{dat call.started_at}}", EventKind::Call).unwrap_err();
        assert!(
            e.contains("unknown helper `dat`") && e.contains("did you mean `date`?"),
            "{e}"
        );
    }

    #[test]
    fn syntax_and_placeholder_errors_are_collected() {
        let mut ts = Templates::new();
        let e = ts
            .text("%CALLER_IDD% and %caller_id% and %NOPE%")
            .unwrap_err();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].needle.as_deref(), Some("%CALLER_IDD%"));
        assert!(e[0]
            .hint
            .as_deref()
            .unwrap()
            .starts_with("did you mean %CALLER_ID%?"));
        assert!(e[1].message.contains("upper case"));
        let e = ts.text("{{#if call.queue}}x").unwrap_err();
        assert!(
            e[0].message.starts_with("handlebars syntax error"),
            "{:?}",
            e
        );
        let e = ts.text("{{> other}}").unwrap_err();
        assert!(e[0].message.contains("partials"), "{:?}", e);
    }

    #[test]
    fn constants_skip_handlebars() {
        let mut ts = Templates::new();
        assert_eq!(
            ts.text("Bearer abc %20").unwrap(),
            TextTemplate::Const("Bearer abc %20".into())
        );
        assert!(ts.text("{{rule}}").unwrap().needs_handlebars());
        assert!(ts.text("%ID%").unwrap().needs_handlebars());
    }
}
