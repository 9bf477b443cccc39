//! URL templates: literal scheme/host/port, encoded values elsewhere.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::placeholder::{tokens, Placeholder, TokenKind};
use super::{
    placeholder_error, short, RenderError, TemplateContext, TemplateError, Templates, TextTemplate,
};

/// Everything but the unreserved characters `A-Z a-z 0-9 - . _ ~`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Literal text: keep what a URL may contain as written (including `%`
/// escapes), encode the rest.
const LITERAL: &AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Percent-encodes a value for any URL part (path, query, fragment) or a
/// form field: everything except `A-Z a-z 0-9 - . _ ~`.
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// The part of a URL a value lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlPart {
    /// Before the first literal `?` or `#`.
    Path,
    /// After the first literal `?`, before `#`.
    Query,
    /// After the first literal `#`.
    Fragment,
}

/// A piece of a URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSeg {
    /// Literal text (already encoded where needed).
    Lit(String),
    /// A placeholder, encoded for its part.
    Ph(Placeholder, UrlPart),
    /// A handlebars expression, its output encoded for its part.
    Expr(TextTemplate, UrlPart),
}

/// A compiled URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    /// `scheme://authority` as written (lower-case scheme).
    origin: String,
    segs: Vec<UrlSeg>,
}

impl UrlTemplate {
    /// The literal `scheme://host[:port]`.
    pub fn origin(&self) -> &str {
        &self.origin
    }
    /// The pieces after the origin.
    pub fn segments(&self) -> &[UrlSeg] {
        &self.segs
    }
    /// Whether rendering needs handlebars data.
    pub fn needs_handlebars(&self) -> bool {
        self.segs.iter().any(|s| matches!(s, UrlSeg::Expr(..)))
    }
    /// The handlebars templates in it.
    pub fn templates(&self) -> impl Iterator<Item = &TextTemplate> {
        self.segs.iter().filter_map(|s| match s {
            UrlSeg::Expr(t, _) => Some(t),
            _ => None,
        })
    }
}

fn check_authority(auth: &str) -> Result<(), TemplateError> {
    let bad = |msg: String| Err(TemplateError::new(msg).needle(short(auth)));
    if auth.contains('@') {
        return bad("credentials in the URL are not allowed".into()).map_err(|e: TemplateError| {
            e.hint("send them in a header: headers: { Authorization: \"Basic …\" } (see env:)")
        });
    }
    let (host, port) = if let Some(rest) = auth.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return bad(format!("invalid host {auth:?}: unclosed ["));
        };
        let ip = &rest[..end];
        if ip.is_empty()
            || !ip
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return bad(format!("invalid IPv6 address {ip:?}"));
        }
        let after = &rest[end + 1..];
        match after.strip_prefix(':') {
            Some(p) => ("ipv6", Some(p)),
            None if after.is_empty() => ("ipv6", None),
            None => return bad(format!("invalid host {auth:?}")),
        }
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (auth, None),
        }
    };
    if host.is_empty() {
        return bad("the URL has no host".into());
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return bad(format!("invalid host {host:?}"));
    }
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 5 {
            return bad(format!("invalid port {p:?}"));
        }
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => {}
            _ => return bad(format!("invalid port {p:?}")),
        }
    }
    Ok(())
}

/// A literal path segment (no value in it) that is `.` or `..`.
fn literal_dot_segment(segs: &[UrlSeg]) -> Option<String> {
    let mut seg = String::new();
    let mut has_value = false;
    let check = |seg: &str, has_value: bool| {
        (!has_value && unsafe_segment(seg).is_some_and(|w| w != "empty")).then(|| seg.to_string())
    };
    for s in segs {
        match s {
            UrlSeg::Lit(l) => {
                for c in l.chars() {
                    if matches!(c, '/' | '?' | '#') {
                        if let Some(bad) = check(&seg, has_value) {
                            return Some(bad);
                        }
                        if c != '/' {
                            return None;
                        }
                        seg.clear();
                        has_value = false;
                    } else {
                        seg.push(c);
                    }
                }
            }
            UrlSeg::Ph(_, part) | UrlSeg::Expr(_, part) => {
                if *part != UrlPart::Path {
                    return None;
                }
                has_value = true;
            }
        }
    }
    check(&seg, has_value)
}

/// Finds the end (exclusive) of the `{{ … }}` starting at 0 in `s`.
fn expr_end(s: &str) -> Option<usize> {
    let triple = s.starts_with("{{{");
    let close = if triple { "}}}" } else { "}}" };
    let from = if triple { 3 } else { 2 };
    s[from..].find(close).map(|i| from + i + close.len())
}

impl Templates {
    /// Compiles a URL template.
    pub fn url(&mut self, src: &str) -> Result<UrlTemplate, Vec<TemplateError>> {
        let lower = src.to_ascii_lowercase();
        let scheme_len = if lower.starts_with("http://") {
            7
        } else if lower.starts_with("https://") {
            8
        } else {
            let literal = !(src.starts_with('%') || src.starts_with("{{"));
            let msg = if literal {
                format!(
                    "invalid URL {:?}: it must start with http:// or https://",
                    short(src)
                )
            } else {
                "the URL's scheme must be written literally".to_string()
            };
            return Err(vec![TemplateError::new(msg)
                .hint(
                    "scheme, host and port are literal: http://crm.example:8080/path?x=%CALLER_ID%",
                )
                .needle(short(src))]);
        };
        let rest = &src[scheme_len..];
        let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let auth = &rest[..auth_end];
        if auth.contains("{{")
            || !tokens(auth).is_empty()
            || auth.contains('%')
            || auth.contains('}')
        {
            return Err(vec![TemplateError::new(format!(
                "the URL's host and port must be written literally, found {auth:?}"
            ))
            .hint("placeholders and {{expressions}} may only appear after the host: in the path, the query or the fragment")
            .needle(short(auth))]);
        }
        check_authority(auth).map_err(|e| vec![e])?;
        let origin = format!("{}{}", &lower[..scheme_len], auth);

        let mut errs = Vec::new();
        let mut segs = Vec::new();
        let mut lit = String::new();
        let mut part = UrlPart::Path;
        let mut bad_char_reported = false;
        let path = &rest[auth_end..];
        let mut i = 0;
        while i < path.len() {
            let r = &path[i..];
            if r.starts_with("{{") {
                let Some(end) = expr_end(r) else {
                    errs.push(TemplateError::new("unclosed {{ in the URL").needle(short(r)));
                    break;
                };
                let expr = &r[..end];
                let inner = expr.trim_start_matches('{').trim_end_matches('}');
                let head = inner.trim_start_matches('~').trim_start();
                if head.is_empty()
                    || head.starts_with(['#', '/', '^', '>', '!', '*', '&'])
                    || head == "else"
                    || head.starts_with("else ")
                    || inner.contains("{{")
                {
                    errs.push(
                        TemplateError::new(format!(
                            "only single {{{{expressions}}}} are allowed in a URL, found {expr:?}"
                        ))
                        .hint("compute conditional parts in the query with helpers, e.g. {{default call.queue \"none\"}}")
                        .needle(short(expr)),
                    );
                } else {
                    match self.text(&format!("{{{{{inner}}}}}")) {
                        Ok(t) => {
                            if !lit.is_empty() {
                                segs.push(UrlSeg::Lit(std::mem::take(&mut lit)));
                            }
                            segs.push(UrlSeg::Expr(t, part));
                        }
                        Err(es) => errs.extend(es),
                    }
                }
                i += end;
                continue;
            }
            let Some(c) = r.chars().next() else { break };
            if c == '%' {
                if let Some(t) = tokens(r).into_iter().find(|t| t.start == 0) {
                    match t.kind {
                        TokenKind::Known(p) => {
                            if !lit.is_empty() {
                                segs.push(UrlSeg::Lit(std::mem::take(&mut lit)));
                            }
                            segs.push(UrlSeg::Ph(p, part));
                        }
                        kind => errs.push(placeholder_error(&t, kind)),
                    }
                    i += t.end;
                    continue;
                }
            }
            match c {
                '?' if part == UrlPart::Path => part = UrlPart::Query,
                '#' if part != UrlPart::Fragment => part = UrlPart::Fragment,
                _ => {}
            }
            if c.is_whitespace() || c.is_control() {
                if !bad_char_reported {
                    bad_char_reported = true;
                    errs.push(
                        TemplateError::new(format!(
                            "invalid URL: it contains {c:?}; write spaces as %20"
                        ))
                        .needle(short(src)),
                    );
                }
            } else {
                let mut buf = [0u8; 4];
                lit.push_str(
                    &percent_encoding::utf8_percent_encode(c.encode_utf8(&mut buf), LITERAL)
                        .to_string(),
                );
            }
            i += c.len_utf8();
        }
        if !lit.is_empty() {
            segs.push(UrlSeg::Lit(lit));
        }
        if let Some(seg) = literal_dot_segment(&segs) {
            errs.push(
                TemplateError::new(format!(
                    "the URL path has the dot segment {seg:?}: it would be resolved to another path"
                ))
                .hint("write the path without . and .. segments")
                .needle(short(src)),
            );
        }
        if errs.is_empty() {
            Ok(UrlTemplate { origin, segs })
        } else {
            Err(errs)
        }
    }

    /// Renders a URL.
    ///
    /// Values are percent-encoded for their part. In the path, a segment
    /// that holds a value must not come out empty, `.` or `..` (also
    /// written `%2E`): URL parsers and servers resolve those
    /// (`/crm/../pop` is `/pop`, `/crm//pop` is `/crm/pop` behind many
    /// proxies), so the request would reach another path with the rule's
    /// credentials. Such a URL is rendered but [`RenderedUrl::refused`]
    /// says why it must not be sent.
    pub fn render_url(
        &self,
        u: &UrlTemplate,
        ctx: &TemplateContext<'_>,
    ) -> Result<RenderedUrl, RenderError> {
        let mut out = String::with_capacity(u.origin.len() + 64);
        out.push_str(&u.origin);
        let mut path = PathCheck::new(out.len());
        for s in &u.segs {
            match s {
                UrlSeg::Lit(l) => {
                    for c in l.chars() {
                        path.literal(&out, c);
                        out.push(c);
                        if c == '/' {
                            path.segment_starts(out.len());
                        }
                    }
                }
                UrlSeg::Ph(p, part) => {
                    if *part == UrlPart::Path {
                        path.value(|| format!("%{}%", p.name()));
                    }
                    out.push_str(&encode_component(ctx.placeholders().get(*p)));
                }
                UrlSeg::Expr(t, part) => {
                    if *part == UrlPart::Path {
                        path.value(|| t.source().to_string());
                    }
                    out.push_str(&encode_component(&self.render(t, ctx)?));
                }
            }
        }
        path.end(&out);
        // The origin is literal and every value is encoded, so this holds
        // by construction; checked anyway, never sent otherwise.
        let ok = (out.starts_with("http://") || out.starts_with("https://"))
            && out[u.origin.len()..]
                .chars()
                .next()
                .is_none_or(|c| matches!(c, '/' | '?' | '#'));
        if !ok {
            return Err(RenderError(format!("rendered URL {out:?} is not valid")));
        }
        Ok(RenderedUrl {
            url: out,
            refused: path.refused,
        })
    }
}

/// A rendered URL, and why it must not be sent, if so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedUrl {
    /// The URL, values encoded.
    pub url: String,
    /// Set when a value made a path segment empty or a dot segment.
    pub refused: Option<String>,
}

/// What a path segment decodes to, when it is one a URL parser or a
/// server would resolve or merge.
fn unsafe_segment(text: &str) -> Option<&'static str> {
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    match decoded.as_ref() {
        "" => Some("empty"),
        "." => Some("\".\" (a dot segment)"),
        ".." => Some("\"..\" (a dot segment)"),
        _ => None,
    }
}

/// Follows the path segments of a URL being rendered and checks each one
/// that holds a value.
struct PathCheck {
    in_path: bool,
    start: usize,
    values: Vec<String>,
    refused: Option<String>,
}

impl PathCheck {
    fn new(start: usize) -> Self {
        Self {
            in_path: true,
            start,
            values: Vec::new(),
            refused: None,
        }
    }

    /// `c` is about to be appended to `out`.
    fn literal(&mut self, out: &str, c: char) {
        if self.in_path && matches!(c, '/' | '?' | '#') {
            self.close(out);
            if c != '/' {
                self.in_path = false;
            }
        }
    }

    fn segment_starts(&mut self, at: usize) {
        if self.in_path {
            self.start = at;
            self.values.clear();
        }
    }

    fn value(&mut self, name: impl FnOnce() -> String) {
        if self.in_path {
            self.values.push(name());
        }
    }

    fn end(&mut self, out: &str) {
        if self.in_path {
            self.close(out);
            self.in_path = false;
        }
    }

    fn close(&mut self, out: &str) {
        if self.values.is_empty() || self.refused.is_some() {
            return;
        }
        if let Some(what) = unsafe_segment(&out[self.start..]) {
            let hint = if what == "empty" {
                " (give it a fallback: {{default %CALLER_ID% \"unknown\"}})"
            } else {
                ""
            };
            self.refused = Some(format!(
                "the URL path segment made of {} would be {what}: the request would reach another path, so it is not sent{hint}",
                self.values.join(" + ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{sample_event, EventKind, TemplateContext};
    use super::*;
    use serde_json::Map;

    fn compile(src: &str) -> Result<UrlTemplate, Vec<TemplateError>> {
        Templates::new().url(src)
    }

    #[test]
    fn placeholders_know_their_part() {
        let u = compile("http://h/a/%EXTENSION%?pi=%CALLER_ID%&x=a%20b#%ID%").unwrap();
        let parts: Vec<(Placeholder, UrlPart)> = u
            .segments()
            .iter()
            .filter_map(|s| match s {
                UrlSeg::Ph(p, part) => Some((*p, *part)),
                _ => None,
            })
            .collect();
        assert_eq!(
            parts,
            vec![
                (Placeholder::Extension, UrlPart::Path),
                (Placeholder::CallerId, UrlPart::Query),
                (Placeholder::Id, UrlPart::Fragment),
            ]
        );
        assert_eq!(u.origin(), "http://h");
    }

    #[test]
    fn literal_scheme_host_port() {
        for bad in [
            "http://%HOST%/x",
            "http://{{env.CALLHOOK_HOST}}/x",
            "http://crm:%PORT%/x",
            "%SCHEME%://crm/x",
            "{{x}}://crm/x",
            "ftp://crm/x",
            "crm/x",
            "http:///x",
            "http://crm:99999/x",
            "http://crm:/x",
            "http://user:pw@crm/x",
            "http://cr m/x",
            "http://crm/a b",
            "http://crm/{{#if call.queue}}q{{/if}}",
            "http://crm/{{call.x",
            "http://crm/?a=%CALLER_IDD%",
        ] {
            assert!(compile(bad).is_err(), "{bad}");
        }
        for good in [
            "http://127.0.0.1:8080/CRM/x.aspx?pi=%CALLER_ID%",
            "https://crm.example.com",
            "HTTPS://crm.example.com?x=1",
            "http://[::1]:8080/x",
            "http://crm/x?q=%20%2F&y={{call.session_id}}#f",
        ] {
            assert!(compile(good).is_ok(), "{good}: {:?}", compile(good));
        }
    }

    #[test]
    fn values_are_encoded_literals_kept() {
        let mut ts = Templates::new();
        let u = ts
            .url("http://h/p/%CALLER_NAME%/{{call.session_id}}?n=%CALLER_NAME%&lit=a%20b|ñ#x")
            .unwrap();
        let ev = sample_event(EventKind::Leg);
        let env = Map::new();
        let mut ctx = TemplateContext::new(&ev, &env);
        ctx.prepare("r");
        assert_eq!(
            ts.render_url(&u, &ctx).unwrap(),
            RenderedUrl {
                url: "http://h/p/Maria%20Lopez/1795374648.6?n=Maria%20Lopez&lit=a%20b%7C%C3%B1#x"
                    .into(),
                refused: None
            }
        );
    }

    fn render_with_caller(src: &str, caller: &str) -> RenderedUrl {
        let mut ts = Templates::new();
        let u = ts.url(src).unwrap();
        let mut ev = sample_event(EventKind::Leg);
        if let crate::model::ModelEvent::Leg(l) = &mut ev {
            l.caller_number = Some(caller.to_string());
        }
        let env = Map::new();
        let mut ctx = TemplateContext::new(&ev, &env);
        ctx.prepare("r");
        ts.render_url(&u, &ctx).unwrap()
    }

    #[test]
    fn values_never_make_dot_or_empty_path_segments() {
        for (src, caller) in [
            ("http://h/crm/%CALLER_ID%/pop", ".."),
            ("http://h/crm/%CALLER_ID%/pop", "."),
            ("http://h/crm/%CALLER_ID%/pop", ""),
            ("http://h/crm/%CALLER_ID%", ""),
            ("http://h/crm/%CALLER_ID%?x=1", ".."),
            ("http://h/crm/.%CALLER_ID%/pop", "."),
            ("http://h/crm/%2E%CALLER_ID%/pop", "."),
            ("http://h/crm/{{call.caller_number}}/pop", ".."),
            ("http://h/crm/{{call.caller_number}}%CALLER_ID%/pop", "."),
        ] {
            let r = render_with_caller(src, caller);
            let why = r
                .refused
                .unwrap_or_else(|| panic!("{src} with {caller:?}: {}", r.url));
            assert!(why.contains("another path"), "{why}");
        }
        // Dots and emptiness elsewhere are fine.
        for (src, caller) in [
            ("http://h/crm/%CALLER_ID%/pop", "..."),
            ("http://h/crm/x%CALLER_ID%/pop", ".."),
            ("http://h/crm/%CALLER_ID%.json", ""),
            ("http://h/crm/pop?c=%CALLER_ID%", ".."),
            ("http://h/crm/pop?c=%CALLER_ID%", ""),
            ("http://h/crm/pop#%CALLER_ID%", ".."),
            ("http://h/crm/%CALLER_ID%/pop", "a/../b"),
        ] {
            let r = render_with_caller(src, caller);
            assert_eq!(r.refused, None, "{src} with {caller:?}");
        }
        assert_eq!(
            render_with_caller("http://h/crm/%CALLER_ID%/pop", "a/../b").url,
            "http://h/crm/a%2F..%2Fb/pop"
        );
    }

    #[test]
    fn literal_dot_segments_are_config_errors() {
        for bad in [
            "http://h/a/../b",
            "http://h/a/./b",
            "http://h/a/%2E%2E/b?x=%CALLER_ID%",
            "http://h/a/..",
        ] {
            let e = compile(bad).unwrap_err();
            assert!(e[0].message.contains("dot segment"), "{bad}: {e:?}");
        }
        for good in [
            "http://h/a/.../b",
            "http://h/a/b/",
            "http://h/a/b?x=..#..",
            "http://h//a",
        ] {
            assert!(compile(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn encode_component_keeps_only_unreserved() {
        assert_eq!(encode_component("aZ09-._~"), "aZ09-._~");
        assert_eq!(
            encode_component("/?#@&=%+ :\r\n"),
            "%2F%3F%23%40%26%3D%25%2B%20%3A%0D%0A"
        );
        assert_eq!(encode_component("ñ"), "%C3%B1");
    }
}
