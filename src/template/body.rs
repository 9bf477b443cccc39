//! `json:` and `form:` bodies, and headers.

use crate::yaml::{Mapping, Value as Yaml};
use serde_json::Value;

use super::helpers::VALUE_HELPERS;
use super::url::encode_component;
use super::{
    short, EventKind, RenderError, TemplateContext, TemplateError, Templates, TextTemplate,
};

/// A compiled `json:` body: the YAML tree with templated strings.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonTemplate {
    root: JNode,
}

#[derive(Debug, Clone, PartialEq)]
enum JNode {
    Object(Vec<(String, JNode)>),
    Array(Vec<JNode>),
    Const(Value),
    /// A string template; the result is a JSON string.
    Str(TextTemplate),
    /// A single-expression template rendered as JSON text (`{{json x}}`):
    /// the result keeps the value's type.
    Typed(TextTemplate),
}

/// A compiled `form:` body.
#[derive(Debug, Clone, PartialEq)]
pub struct FormTemplate {
    fields: Vec<(String, TextTemplate)>,
}

/// Replaces control characters (CR, LF, NUL… but not tab) by spaces, so a
/// rendered value can never end a header line.
pub fn sanitize_header_value(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\t') {
        return s.to_string();
    }
    s.chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn scalar_text(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        Yaml::Null => Some(String::new()),
        _ => None,
    }
}

fn key_text(k: &Yaml) -> Option<String> {
    match k {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn key_path(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        format!(".{k}")
    } else {
        format!("[{k:?}]")
    }
}

/// If `src` (placeholders already turned into handlebars) is exactly one
/// value expression, the template that renders it as JSON text.
fn typed_form(hbs: &str) -> Option<String> {
    let t = hbs.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = match (inner.strip_prefix('{'), inner.strip_suffix('}')) {
        (Some(a), _) => a.strip_suffix('}')?,
        _ => inner,
    };
    let inner = inner.trim_start_matches('~').trim_end_matches('~').trim();
    if inner.is_empty()
        || inner.contains("{{")
        || inner.contains("}}")
        || inner.contains('(')
        || inner.starts_with(['#', '/', '^', '>', '!', '*', '&', '{'])
        || inner == "else"
        || inner.starts_with("else ")
    {
        return None;
    }
    let head = inner.split_whitespace().next()?;
    let has_args = inner.split_whitespace().nth(1).is_some();
    if head == "json" && has_args {
        return Some(format!("{{{{{inner}}}}}"));
    }
    if has_args {
        return VALUE_HELPERS
            .contains(&head)
            .then(|| format!("{{{{json ({inner})}}}}"));
    }
    if VALUE_HELPERS.contains(&head) {
        return None;
    }
    Some(format!("{{{{json {inner}}}}}"))
}

impl Templates {
    /// Compiles a `json:` body.
    pub fn json(&mut self, v: &Yaml) -> Result<JsonTemplate, Vec<TemplateError>> {
        let (t, errs) = self.json_partial(v);
        if errs.is_empty() {
            Ok(t)
        } else {
            Err(errs)
        }
    }

    /// Compiles a `json:` body as far as possible: the template (with
    /// broken strings left out) and the errors. Lets the caller check the
    /// good parts too, to report every problem at once.
    pub fn json_partial(&mut self, v: &Yaml) -> (JsonTemplate, Vec<TemplateError>) {
        let mut errs = Vec::new();
        let root = self.json_node(v, "", &mut errs);
        (JsonTemplate { root }, errs)
    }

    fn json_node(&mut self, v: &Yaml, at: &str, errs: &mut Vec<TemplateError>) -> JNode {
        match v {
            Yaml::Null => JNode::Const(Value::Null),
            Yaml::Bool(b) => JNode::Const(Value::Bool(*b)),
            Yaml::Number(n) => {
                let j = if let Some(i) = n.as_i64() {
                    Some(Value::from(i))
                } else if let Some(u) = n.as_u64() {
                    Some(Value::from(u))
                } else {
                    n.as_f64()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                };
                match j {
                    Some(j) => JNode::Const(j),
                    None => {
                        errs.push(TemplateError::new(format!("{n} is not a JSON number")).at(at));
                        JNode::Const(Value::Null)
                    }
                }
            }
            Yaml::String(s) => self.json_string(s, at, errs),
            Yaml::Sequence(items) => JNode::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| self.json_node(x, &format!("{at}[{i}]"), errs))
                    .collect(),
            ),
            Yaml::Mapping(m) => {
                let mut fields = Vec::with_capacity(m.len());
                for (k, x) in m {
                    match key_text(k) {
                        Some(k) => {
                            let node = self.json_node(x, &format!("{at}{}", key_path(&k)), errs);
                            fields.push((k, node));
                        }
                        None => errs.push(TemplateError::new("JSON keys must be strings").at(at)),
                    }
                }
                JNode::Object(fields)
            }
        }
    }

    fn json_string(&mut self, s: &str, at: &str, errs: &mut Vec<TemplateError>) -> JNode {
        let hbs = match super::to_handlebars(s) {
            Ok(h) => h,
            Err(es) => {
                errs.extend(es.into_iter().map(|e| e.at(at)));
                return JNode::Const(Value::Null);
            }
        };
        if !hbs.contains("{{") {
            return JNode::Const(Value::String(s.to_string()));
        }
        let res = match typed_form(&hbs) {
            Some(typed) => self.register(&typed, s).map(JNode::Typed),
            None => self.register(&hbs, s).map(JNode::Str),
        };
        res.unwrap_or_else(|es| {
            errs.extend(es.into_iter().map(|e| e.at(at)));
            JNode::Const(Value::Null)
        })
    }

    /// Compiles a `form:` map (flat: scalar values only).
    pub fn form(&mut self, m: &Mapping) -> Result<FormTemplate, Vec<TemplateError>> {
        let (t, errs) = self.form_partial(m);
        if errs.is_empty() {
            Ok(t)
        } else {
            Err(errs)
        }
    }

    /// [`form`](Self::form) as far as possible, and the errors.
    pub fn form_partial(&mut self, m: &Mapping) -> (FormTemplate, Vec<TemplateError>) {
        let (fields, errs) = self.flat_map(m, false);
        (FormTemplate { fields }, errs)
    }

    /// Compiles `headers:` (names are literal HTTP tokens).
    pub fn headers(
        &mut self,
        m: &Mapping,
    ) -> Result<Vec<(String, TextTemplate)>, Vec<TemplateError>> {
        let (h, errs) = self.headers_partial(m);
        if errs.is_empty() {
            Ok(h)
        } else {
            Err(errs)
        }
    }

    /// [`headers`](Self::headers) as far as possible, and the errors.
    pub fn headers_partial(
        &mut self,
        m: &Mapping,
    ) -> (Vec<(String, TextTemplate)>, Vec<TemplateError>) {
        self.flat_map(m, true)
    }

    fn flat_map(
        &mut self,
        m: &Mapping,
        headers: bool,
    ) -> (Vec<(String, TextTemplate)>, Vec<TemplateError>) {
        let mut errs = Vec::new();
        let mut out = Vec::with_capacity(m.len());
        for (k, v) in m {
            let Some(name) = key_text(k) else {
                errs.push(TemplateError::new("names must be strings"));
                continue;
            };
            let at = key_path(&name);
            if headers {
                if !is_token(&name) {
                    errs.push(
                        TemplateError::new(format!("{name:?} is not a valid header name"))
                            .hint("header names are letters, digits and !#$%&'*+-.^_`|~, written literally")
                            .needle(short(&name))
                            .at(&at),
                    );
                    continue;
                }
                let lower = name.to_ascii_lowercase();
                if ["host", "content-length", "transfer-encoding", "connection"]
                    .contains(&lower.as_str())
                {
                    errs.push(
                        TemplateError::new(format!("the {name} header cannot be set by a rule"))
                            .hint("callhook sets it from the URL and the body")
                            .needle(name.clone())
                            .at(&at),
                    );
                    continue;
                }
            }
            let Some(text) = scalar_text(v) else {
                errs.push(
                    TemplateError::new(
                        "values must be strings, numbers or booleans (no lists or maps)",
                    )
                    .needle(name.clone())
                    .at(&at),
                );
                continue;
            };
            match self.text(&text) {
                Ok(t) => out.push((name, t)),
                Err(es) => errs.extend(es.into_iter().map(|e| e.at(&at))),
            }
        }
        (out, errs)
    }

    /// Renders a JSON body to bytes (keys in the order written).
    pub fn render_json(
        &self,
        t: &JsonTemplate,
        ctx: &TemplateContext<'_>,
    ) -> Result<Vec<u8>, RenderError> {
        let mut out = Vec::with_capacity(256);
        self.write_node(&t.root, ctx, &mut out)?;
        Ok(out)
    }

    fn write_node(
        &self,
        n: &JNode,
        ctx: &TemplateContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), RenderError> {
        let json_err = |e: serde_json::Error| RenderError(format!("JSON: {e}"));
        match n {
            JNode::Object(fields) => {
                out.push(b'{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, k).map_err(json_err)?;
                    out.push(b':');
                    self.write_node(v, ctx, out)?;
                }
                out.push(b'}');
            }
            JNode::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.write_node(v, ctx, out)?;
                }
                out.push(b']');
            }
            JNode::Const(v) => serde_json::to_writer(&mut *out, v).map_err(json_err)?,
            JNode::Str(t) => {
                let s = self.render(t, ctx)?;
                serde_json::to_writer(&mut *out, &s).map_err(json_err)?;
            }
            JNode::Typed(t) => {
                let s = self.render(t, ctx)?;
                // Re-serialize: only a well-formed JSON value gets through.
                let v: Value = serde_json::from_str(&s).map_err(|e| {
                    RenderError(format!("{:?} did not render to JSON: {e}", t.source()))
                })?;
                serde_json::to_writer(&mut *out, &v).map_err(json_err)?;
            }
        }
        Ok(())
    }

    /// Renders a form body.
    pub fn render_form(
        &self,
        t: &FormTemplate,
        ctx: &TemplateContext<'_>,
    ) -> Result<Vec<u8>, RenderError> {
        let mut out = String::with_capacity(128);
        for (i, (k, v)) in t.fields.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(&encode_component(k));
            out.push('=');
            out.push_str(&encode_component(&self.render(v, ctx)?));
        }
        Ok(out.into_bytes())
    }

    /// Renders a header value (control characters become spaces).
    pub fn render_header(
        &self,
        t: &TextTemplate,
        ctx: &TemplateContext<'_>,
    ) -> Result<String, RenderError> {
        Ok(sanitize_header_value(&self.render(t, ctx)?))
    }

    /// Checks every template of a JSON body against a sample context.
    pub fn check_json(
        &self,
        t: &JsonTemplate,
        ctx: &TemplateContext<'_>,
        kind: EventKind,
    ) -> Vec<TemplateError> {
        let mut errs = Vec::new();
        self.check_node(&t.root, "", ctx, kind, &mut errs);
        errs
    }

    fn check_node(
        &self,
        n: &JNode,
        at: &str,
        ctx: &TemplateContext<'_>,
        kind: EventKind,
        errs: &mut Vec<TemplateError>,
    ) {
        match n {
            JNode::Object(fields) => {
                for (k, v) in fields {
                    self.check_node(v, &format!("{at}{}", key_path(k)), ctx, kind, errs);
                }
            }
            JNode::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.check_node(v, &format!("{at}[{i}]"), ctx, kind, errs);
                }
            }
            JNode::Const(_) => {}
            JNode::Str(t) | JNode::Typed(t) => {
                if let Err(e) = self.check(t, ctx, kind) {
                    errs.push(e.at(at));
                }
            }
        }
    }

    /// Checks every template of a form or header list.
    pub fn check_fields(
        &self,
        fields: &[(String, TextTemplate)],
        ctx: &TemplateContext<'_>,
        kind: EventKind,
    ) -> Vec<TemplateError> {
        fields
            .iter()
            .filter_map(|(k, t)| self.check(t, ctx, kind).err().map(|e| e.at(&key_path(k))))
            .collect()
    }
}

impl JsonTemplate {
    /// Whether rendering needs handlebars data.
    pub fn needs_handlebars(&self) -> bool {
        fn any(n: &JNode) -> bool {
            match n {
                JNode::Object(f) => f.iter().any(|(_, v)| any(v)),
                JNode::Array(i) => i.iter().any(any),
                JNode::Const(_) => false,
                JNode::Str(_) | JNode::Typed(_) => true,
            }
        }
        any(&self.root)
    }
}

impl FormTemplate {
    /// The fields.
    pub fn fields(&self) -> &[(String, TextTemplate)] {
        &self.fields
    }
    /// Whether rendering needs handlebars data.
    pub fn needs_handlebars(&self) -> bool {
        self.fields.iter().any(|(_, t)| t.needs_handlebars())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{sample_event, TemplateContext};
    use super::*;
    use serde_json::Map;

    fn render_json(yaml: &str, kind: EventKind) -> Value {
        let mut ts = Templates::new();
        let v: Yaml = crate::yaml::de::from_str(yaml).unwrap();
        let t = ts.json(&v).unwrap();
        let ev = sample_event(kind);
        let env = Map::new();
        let mut ctx = TemplateContext::new(&ev, &env);
        ctx.prepare("r");
        assert!(ts.check_json(&t, &ctx, kind).is_empty());
        let bytes = ts.render_json(&t, &ctx).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn typed_forms() {
        assert_eq!(
            typed_form("{{call.duration}}").as_deref(),
            Some("{{json call.duration}}")
        );
        assert_eq!(
            typed_form("{{ call.duration }}").as_deref(),
            Some("{{json call.duration}}")
        );
        assert_eq!(
            typed_form("{{{call.duration}}}").as_deref(),
            Some("{{json call.duration}}")
        );
        assert_eq!(
            typed_form("{{secs call.duration}}").as_deref(),
            Some("{{json (secs call.duration)}}")
        );
        assert_eq!(
            typed_form("{{json call}}").as_deref(),
            Some("{{json call}}")
        );
        assert_eq!(
            typed_form("{{@root.ph.DURACION}}").as_deref(),
            Some("{{json @root.ph.DURACION}}")
        );
        for s in [
            "{{call.duration}}s",
            "x{{call.duration}}",
            "{{a}}{{b}}",
            "{{#if a}}1{{/if}}",
            "{{default (secs a) 0}}",
            "{{log a}}",
            "{{else}}",
            "{{!comment}}",
        ] {
            assert_eq!(typed_form(s), None, "{s}");
        }
    }

    #[test]
    fn json_leaves_keep_value_types() {
        let v = render_json(
            r#"
id: "{{call.session_id}}"
from: "%CALLER_ID%"
duration: "{{call.duration}}"
secs: "{{secs call.duration}}"
duracion: "%DURACION%"
label: "{{call.duration}}s"
answered: "{{call.approximate}}"
rung: "{{json call.extensions_rung}}"
queue_or: '{{default call.queue "none"}}'
nested: { list: [1, "x", "%EXTENSION%"], n: null, t: true }
"#,
            EventKind::Call,
        );
        assert_eq!(v["id"], "1795374648.6");
        assert_eq!(v["from"], "5559876543");
        assert_eq!(v["duration"], 6.005);
        assert_eq!(v["secs"], 6);
        assert_eq!(v["duracion"], 6);
        assert_eq!(v["label"], "6.005s");
        assert_eq!(v["answered"], false);
        assert_eq!(v["rung"], serde_json::json!(["1002", "1001"]));
        assert_eq!(v["queue_or"], "ventas");
        assert_eq!(
            v["nested"],
            serde_json::json!({"list": [1, "x", "1002"], "n": null, "t": true})
        );
    }

    #[test]
    fn json_keeps_key_order_and_whole_event() {
        let mut ts = Templates::new();
        let t = ts
            .json(&crate::yaml::de::from_str("{z: 1, a: 2, m: 3}").unwrap())
            .unwrap();
        let ev = sample_event(EventKind::Leg);
        let env = Map::new();
        let ctx = TemplateContext::new(&ev, &env);
        assert_eq!(ts.render_json(&t, &ctx).unwrap(), br#"{"z":1,"a":2,"m":3}"#);
        let v = render_json(r#""{{json event}}""#, EventKind::Leg);
        assert_eq!(v["type"], "leg");
        assert_eq!(v["leg_id"], "1795374648.6/1002");
    }

    #[test]
    fn bad_json_templates_are_reported_with_paths() {
        let mut ts = Templates::new();
        let v: Yaml =
            crate::yaml::de::from_str(r#"{a: "%NOPE%", b: [ "{{#if}}" ], "c d": "%CALLER_IDD%"}"#)
                .unwrap();
        let errs = ts.json(&v).unwrap_err();
        let ats: Vec<&str> = errs.iter().map(|e| e.at.as_str()).collect();
        assert_eq!(ats, vec![".a", ".b[0]", "[\"c d\"]"]);
    }

    #[test]
    fn headers_are_validated_and_sanitized() {
        let mut ts = Templates::new();
        let m: Mapping =
            crate::yaml::de::from_str("{'Bad Name': x, Host: y, X-List: [1], X-Ok: 'a%NOPE%'}")
                .unwrap();
        let errs = ts.headers(&m).unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert_eq!(sanitize_header_value("a\r\nX-Evil: 1"), "a  X-Evil: 1");
        assert_eq!(sanitize_header_value("tab\there\0"), "tab\there ");
    }

    #[test]
    fn form_encoding() {
        let mut ts = Templates::new();
        let m: Mapping =
            crate::yaml::de::from_str("{name: '%CALLER_NAME%', 'a b': 'x&y=z+ñ', n: 5}").unwrap();
        let t = ts.form(&m).unwrap();
        let ev = sample_event(EventKind::Leg);
        let env = Map::new();
        let mut ctx = TemplateContext::new(&ev, &env);
        ctx.prepare("r");
        let body = ts.render_form(&t, &ctx).unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "name=Maria%20Lopez&a%20b=x%26y%3Dz%2B%C3%B1&n=5"
        );
    }
}
