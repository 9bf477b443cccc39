//! Secrets never rest in the outbox in clear.
//!
//! Rules may put credentials into requests (`Authorization: "Bearer
//! {{env.CRM_TOKEN}}"`, `?token={{env.CRM_TOKEN}}`). Every value of the
//! rule set's `env:` list is treated as a secret: before a request is
//! stored, each place where such a value appears in its URL, headers or
//! body, encoded the way it is there (percent-encoded in the URL and form
//! bodies, JSON-escaped in JSON bodies, as is elsewhere), is replaced by
//! `***` and remembered as a [`SecretRef`] (field, byte offset, variable,
//! encoding). The dispatcher puts the *current* value back at send time
//! ([`reveal`]), from the configuration it runs with: rows on disk, the
//! admin API, `deliveries list` and `--dry-run` only ever show `***`; a
//! rotated token is used by waiting deliveries without re-rendering them;
//! a variable removed from the configuration makes its deliveries dead with
//! the reason instead of sending a half-empty credential.
//!
//! Target-level credentials (`targets.*.headers`, `signing`) are never
//! stored at all: the dispatcher adds them to each attempt.
//!
//! Values shorter than [`MIN_SECRET_LEN`] bytes are left in place: they
//! cannot be told apart from the rest of a request (a `1` would match every
//! digit), and a secret that short is no secret. Rows written before this
//! existed (outbox schema 1) are concealed the same way when the daemon
//! starts (`Outbox::conceal_legacy`), with the values configured then.

use std::collections::BTreeMap;
use std::fmt;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

use super::DeliveryRequest;

/// What stands for a secret in a stored request.
pub const MASK: &str = "***";
/// Shorter values are not treated as secrets.
pub const MIN_SECRET_LEN: usize = 8;

/// The same set as `template::url` uses for values (everything but
/// `A-Z a-z 0-9 - . _ ~`), so a secret is found encoded as rendered.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Named secret values (`CRM_TOKEN` → its value). Never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(BTreeMap<String, String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Secrets {
    /// From (name, value) pairs; values shorter than [`MIN_SECRET_LEN`] are
    /// dropped.
    pub fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(
            vars.into_iter()
                .filter(|(_, v)| v.len() >= MIN_SECRET_LEN)
                .collect(),
        )
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of one, if configured.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The names, for messages.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The values.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(String::as_str)
    }

    /// Whether `text` contains one of the values (as is).
    pub fn appear_in(&self, text: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, v)| text.contains(v.as_str()))
            .map(|(k, _)| k.as_str())
    }
}

/// Masks every occurrence of `values` (as is, percent-encoded and
/// JSON-escaped) in text that comes back from a target: a CRM that echoes
/// the request's token in its error page must not put it into
/// `last_error`, the admin API or a log line. Values shorter than
/// [`MIN_SECRET_LEN`] are left alone (as when concealing).
pub fn scrub(text: &str, values: &[&str]) -> String {
    // JSON may also escape `/` as `\/` (PHP's json_encode does).
    let slashed = values
        .iter()
        .filter(|v| v.contains('/'))
        .map(|v| Encoding::Json.apply(v).replace('/', "\\/"));
    let secrets = Secrets::new(
        values
            .iter()
            .map(|v| (*v).to_string())
            .chain(slashed)
            .enumerate()
            .map(|(i, v)| (i.to_string(), v)),
    );
    if secrets.is_empty() {
        return text.to_string();
    }
    let mut refs = Vec::new();
    conceal_text(
        text,
        &secrets,
        &[Encoding::Raw, Encoding::Percent, Encoding::Json],
        Field::Body,
        &mut refs,
    )
    .unwrap_or_else(|| text.to_string())
}

/// The values a scrub must look for: the secrets themselves, and the
/// longest encoded form of the longest one (how much further than an
/// excerpt's end a scrub must read so that no secret is cut in half).
pub fn scrub_reach(values: &[&str]) -> usize {
    values
        .iter()
        .filter(|v| v.len() >= MIN_SECRET_LEN)
        .map(|v| v.len() * 3)
        .max()
        .unwrap_or(0)
}

/// Which part of a request a secret sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// The URL.
    Url,
    /// The value of the n-th rendered header.
    Header(usize),
    /// The body.
    Body,
}

/// How the value is written where it sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Percent-encoded (URL values, form bodies).
    Percent,
    /// Escaped inside a JSON string.
    Json,
    /// As is (headers, text bodies).
    Raw,
}

impl Encoding {
    fn apply(self, v: &str) -> String {
        match self {
            Encoding::Percent => utf8_percent_encode(v, COMPONENT).to_string(),
            Encoding::Json => {
                let q = serde_json::to_string(v).unwrap_or_default();
                q.get(1..q.len().saturating_sub(1))
                    .unwrap_or_default()
                    .to_string()
            }
            Encoding::Raw => v.to_string(),
        }
    }
}

/// Where a secret was taken out of a stored request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// The part.
    pub field: Field,
    /// Byte offset of the [`MASK`] in that part, as stored.
    pub at: usize,
    /// The variable (`CRM_TOKEN`).
    pub var: String,
    /// How to write it back.
    pub enc: Encoding,
}

/// One match before masking.
struct Hit {
    start: usize,
    end: usize,
    var: String,
    enc: Encoding,
}

/// Finds every secret in `text` (tried in the given encodings), masks it,
/// and returns the masked text and the positions.
fn conceal_text(
    text: &str,
    secrets: &Secrets,
    encodings: &[Encoding],
    field: Field,
    refs: &mut Vec<SecretRef>,
) -> Option<String> {
    let mut hits: Vec<Hit> = Vec::new();
    for (var, value) in &secrets.0 {
        for enc in encodings {
            let needle = enc.apply(value);
            if needle.is_empty() {
                continue;
            }
            let mut from = 0;
            while let Some(i) = text[from..].find(&needle) {
                let start = from + i;
                hits.push(Hit {
                    start,
                    end: start + needle.len(),
                    var: var.clone(),
                    enc: *enc,
                });
                from = start + needle.len();
            }
        }
    }
    if hits.is_empty() {
        return None;
    }
    // Left to right; of overlapping matches the longest (then the first) wins.
    hits.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for h in hits {
        if h.start < pos {
            continue;
        }
        out.push_str(&text[pos..h.start]);
        refs.push(SecretRef {
            field,
            at: out.len(),
            var: h.var,
            enc: h.enc,
        });
        out.push_str(MASK);
        pos = h.end;
    }
    out.push_str(&text[pos..]);
    Some(out)
}

/// How a body carries values, from its `Content-Type`.
fn body_encodings(headers: &[(String, String)]) -> &'static [Encoding] {
    let ct = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.to_ascii_lowercase())
        .unwrap_or_default();
    if ct.contains("json") {
        &[Encoding::Json]
    } else if ct.contains("x-www-form-urlencoded") {
        &[Encoding::Percent]
    } else {
        &[Encoding::Raw]
    }
}

/// The parts of a request that may hold secrets.
pub struct PartsMut<'a> {
    /// URL.
    pub url: &'a mut String,
    /// Headers.
    pub headers: &'a mut Vec<(String, String)>,
    /// Body.
    pub body: &'a mut Option<Vec<u8>>,
}

/// Masks every secret in a request's parts; returns where they were.
pub fn conceal_parts(p: PartsMut<'_>, secrets: &Secrets) -> Vec<SecretRef> {
    let mut refs = Vec::new();
    if secrets.is_empty() {
        return refs;
    }
    if let Some(u) = conceal_text(
        p.url,
        secrets,
        &[Encoding::Percent, Encoding::Raw],
        Field::Url,
        &mut refs,
    ) {
        *p.url = u;
    }
    let body_enc = body_encodings(p.headers);
    for (i, (_, v)) in p.headers.iter_mut().enumerate() {
        if let Some(m) = conceal_text(v, secrets, &[Encoding::Raw], Field::Header(i), &mut refs) {
            *v = m;
        }
    }
    if let Some(b) = p.body.as_mut() {
        // A body that is not UTF-8 text carries no rendered secret.
        if let Ok(text) = std::str::from_utf8(b) {
            if let Some(m) = conceal_text(text, secrets, body_enc, Field::Body, &mut refs) {
                *b = m.into_bytes();
            }
        }
    }
    refs
}

/// Masks every secret of a rendered request (see the module docs).
pub fn conceal(r: &mut DeliveryRequest, secrets: &Secrets) {
    let mut refs = conceal_parts(
        PartsMut {
            url: &mut r.url,
            headers: &mut r.headers,
            body: &mut r.body,
        },
        secrets,
    );
    r.secrets.append(&mut refs);
}

/// Puts the current values back into `text` for the refs of `field`.
fn reveal_text(
    text: &str,
    field: Field,
    refs: &[SecretRef],
    secrets: &Secrets,
) -> Result<Option<String>, String> {
    let mut mine: Vec<&SecretRef> = refs.iter().filter(|r| r.field == field).collect();
    if mine.is_empty() {
        return Ok(None);
    }
    mine.sort_by_key(|r| r.at);
    let mut out = String::with_capacity(text.len() + 32);
    let mut pos = 0;
    for r in mine {
        let value = secrets.get(&r.var).ok_or_else(|| {
            format!(
                "the secret {} this request was rendered with is no longer configured (env: list); it cannot be sent",
                r.var
            )
        })?;
        let end = r.at + MASK.len();
        if r.at < pos || text.get(r.at..end) != Some(MASK) {
            return Err(format!(
                "the stored request does not hold the secret {} where it should (a damaged row)",
                r.var
            ));
        }
        out.push_str(&text[pos..r.at]);
        out.push_str(&r.enc.apply(value));
        pos = end;
    }
    out.push_str(&text[pos..]);
    Ok(Some(out))
}

/// URL, headers and body of a request with its secrets put back.
pub type Revealed = (String, Vec<(String, String)>, Option<Vec<u8>>);

/// The parts of a stored request with its secrets put back.
pub fn reveal(
    url: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
    refs: &[SecretRef],
    secrets: &Secrets,
) -> Result<Revealed, String> {
    let url = reveal_text(url, Field::Url, refs, secrets)?.unwrap_or_else(|| url.to_string());
    let mut hs = headers.to_vec();
    for (i, (_, v)) in hs.iter_mut().enumerate() {
        if let Some(x) = reveal_text(v, Field::Header(i), refs, secrets)? {
            *v = x;
        }
    }
    let body = match body {
        None => None,
        Some(b) if !refs.iter().any(|r| r.field == Field::Body) => Some(b.to_vec()),
        Some(b) => {
            let text = std::str::from_utf8(b)
                .map_err(|_| "the stored body is no longer text (a damaged row)".to_string())?;
            reveal_text(text, Field::Body, refs, secrets)?.map(String::into_bytes)
        }
    };
    Ok((url, hs, body))
}

/// A rendered request as it is sent: its secrets put back (rule-set
/// tests compare what goes out, not what is stored).
pub fn revealed(r: &DeliveryRequest, secrets: &Secrets) -> Result<DeliveryRequest, String> {
    if r.secrets.is_empty() {
        return Ok(r.clone());
    }
    let (url, headers, body) = reveal(&r.url, &r.headers, r.body.as_deref(), &r.secrets, secrets)?;
    Ok(DeliveryRequest {
        url,
        headers,
        body,
        secrets: Vec::new(),
        ..r.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::new([
            ("CRM_TOKEN".to_string(), "s3cr3t/t0ken+x".to_string()),
            ("OTHER".to_string(), "another-secret".to_string()),
            ("SHORT".to_string(), "abc".to_string()),
        ])
    }

    #[test]
    fn echoed_secrets_are_scrubbed_in_every_encoding() {
        let v = ["s3cr3t/t0ken+x", "abc"];
        let text = "bad token s3cr3t/t0ken+x (s3cr3t%2Ft0ken%2Bx) {\"t\":\"s3cr3t\\/t0ken+x\"} abc";
        let out = scrub(text, &v);
        assert!(!out.contains("t0ken"), "{out}");
        assert!(out.ends_with(" abc"), "short values stay: {out}");
        assert_eq!(scrub("nothing here", &v), "nothing here");
        assert_eq!(scrub_reach(&v), 14 * 3);
    }

    #[test]
    fn secrets_are_masked_in_every_part_and_put_back_encoded_as_they_were() {
        let s = secrets();
        assert_eq!(s.names().collect::<Vec<_>>(), ["CRM_TOKEN", "OTHER"]);
        let mut url = "http://h/x?token=s3cr3t%2Ft0ken%2Bx&b=another-secret&abc=1".to_string();
        let mut headers = vec![
            (
                "Authorization".to_string(),
                "Bearer s3cr3t/t0ken+x".to_string(),
            ),
            ("Content-Type".to_string(), "application/json".to_string()),
        ];
        let mut body =
            Some(br#"{"k":"s3cr3t/t0ken+x","n":"another-secret another-secret"}"#.to_vec());
        let (u0, h0, b0) = (url.clone(), headers.clone(), body.clone());
        let refs = conceal_parts(
            PartsMut {
                url: &mut url,
                headers: &mut headers,
                body: &mut body,
            },
            &s,
        );
        assert_eq!(url, "http://h/x?token=***&b=***&abc=1");
        assert_eq!(headers[0].1, "Bearer ***");
        assert_eq!(
            String::from_utf8(body.clone().unwrap()).unwrap(),
            r#"{"k":"***","n":"*** ***"}"#
        );
        assert_eq!(refs.len(), 6);
        let (u, h, b) = reveal(&url, &headers, body.as_deref(), &refs, &s).unwrap();
        assert_eq!((u, h, b), (u0, h0, b0));
        // Rotated: the new value goes out, encoded for its place.
        let rotated = Secrets::new([
            ("CRM_TOKEN".to_string(), "n3w t0ken&more".to_string()),
            ("OTHER".to_string(), "another-secret".to_string()),
        ]);
        let (u, h, _) = reveal(&url, &headers, body.as_deref(), &refs, &rotated).unwrap();
        assert_eq!(
            u,
            "http://h/x?token=n3w%20t0ken%26more&b=another-secret&abc=1"
        );
        assert_eq!(h[0].1, "Bearer n3w t0ken&more");
        // Removed: refused with the reason.
        let gone = Secrets::new([("OTHER".to_string(), "another-secret".to_string())]);
        let e = reveal(&url, &headers, body.as_deref(), &refs, &gone).unwrap_err();
        assert!(
            e.contains("CRM_TOKEN") && e.contains("no longer configured"),
            "{e}"
        );
    }

    #[test]
    fn encodings_match_the_template_ones() {
        for v in ["a b/c?d#e&f=g+h%", "ñ\"\\\n", "plain-Value_1.2~"] {
            assert_eq!(
                Encoding::Percent.apply(v),
                crate::template::encode_component(v)
            );
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(format!("\"{}\"", Encoding::Json.apply(v)), json);
        }
    }

    #[test]
    fn debug_never_shows_values() {
        assert_eq!(format!("{:?}", secrets()), r#"{"CRM_TOKEN", "OTHER"}"#);
    }
}
