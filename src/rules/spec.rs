//! The rules YAML as written (serde). Nothing here is validated: every
//! check happens in [`compile`](super::compile), which reports all problems
//! at once. Fields that can hold a word, a number or a list take any of
//! them here so that a mistake becomes a precise compile error instead of a
//! generic parse error.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// The whole rules document.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSpec {
    /// Environment variables templates may read as `{{env.NAME}}` (only
    /// these). A listed variable that is not set is an error.
    #[serde(default)]
    pub env: Vec<String>,
    /// Number rewriting, applied in order to every event before matching.
    #[serde(default)]
    pub rewrite: Vec<RewriteSpec>,
    /// The rules, evaluated in order.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

impl RulesSpec {
    /// Parses a YAML document (every problem, with its position).
    pub fn from_yaml(s: &str) -> Result<Self, Vec<crate::yaml::Problem>> {
        crate::yaml::de::from_str(s)
    }
}

/// One rewrite step.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    /// `caller`, `dialed` or `both`.
    pub field: String,
    /// Number pattern the whole number must match.
    #[serde(rename = "match")]
    pub pattern: Scalar,
    /// Leading characters to remove.
    #[serde(default)]
    pub strip: Option<usize>,
    /// Text to prepend (after stripping).
    #[serde(default)]
    pub prefix: Option<Scalar>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name (metrics label, logs, event ids).
    pub name: String,
    /// Conditions; all given must hold.
    #[serde(default)]
    pub when: WhenSpec,
    /// Target name from the configuration.
    pub target: String,
    /// URL template.
    pub url: String,
    /// HTTP method (default `GET` without a body, `POST` with one).
    #[serde(default)]
    pub method: Option<String>,
    /// Header templates, in order.
    #[serde(default)]
    pub headers: Option<crate::yaml::Mapping>,
    /// JSON body (a YAML value with templated strings).
    #[serde(default)]
    pub json: Option<crate::yaml::Value>,
    /// Form body (a flat map with templated values).
    #[serde(default)]
    pub form: Option<crate::yaml::Mapping>,
    /// Text body template.
    #[serde(default)]
    pub body: Option<String>,
    /// Idempotency key template.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Freshness limit (`30s`, `5m`, or seconds).
    #[serde(default)]
    pub max_age: Option<Scalar>,
    /// Stop evaluating later rules when this one matches.
    #[serde(default)]
    pub stop: bool,
}

/// Conditions of a rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhenSpec {
    /// `leg` (default) or `call`.
    #[serde(default)]
    pub scope: Option<Words>,
    /// `ringing`/`timbre`, `answered`/`descolgado`, `hungup`/`colgado`.
    #[serde(default)]
    pub state: Option<Words>,
    /// `incoming`/`entrante`, `outgoing`/`saliente`, `internal`/`interna`/`interno`.
    #[serde(default)]
    pub direction: Option<Words>,
    /// Extension: exact, `_dialplan` pattern or `/regex/`.
    #[serde(default)]
    pub extension: Option<Words>,
    /// Queue: exact or `/regex/`.
    #[serde(default)]
    pub queue: Option<Words>,
    /// PBX id: exact.
    #[serde(default)]
    pub pbx: Option<Words>,
    /// `ANSWERED`, `NO ANSWER` (`NO_ANSWER`), `BUSY`, `FAILED`, `ABANDONED`.
    #[serde(default)]
    pub disposition: Option<Words>,
    /// `caller` / `callee` (leg scope only).
    #[serde(default)]
    pub role: Option<Words>,
    /// Caller number pattern.
    #[serde(default)]
    pub caller: Option<Words>,
    /// Dialed number pattern.
    #[serde(default)]
    pub dialed: Option<Words>,
}

/// A word, a number, or a list of them (`state: ringing`,
/// `extension: [1001, 1002]`). Numbers are kept as written by YAML
/// (`1001` → `"1001"`; quote numbers with leading zeros or `+`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words {
    /// The values.
    pub items: Vec<String>,
    /// Whether a YAML list was written.
    pub list: bool,
}

impl Words {
    /// One value.
    pub fn one(s: impl Into<String>) -> Self {
        Self {
            items: vec![s.into()],
            list: false,
        }
    }
}

/// A text value that may be written as a YAML number (`match: 5551234`,
/// `max_age: 30`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar(pub String);

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a number")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor).map(Scalar)
    }
}

struct WordsVisitor;

impl<'de> Visitor<'de> for WordsVisitor {
    type Value = Words;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a word, a number, or a list of them")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Words, E> {
        Ok(Words::one(v))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Words, E> {
        Ok(Words::one(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Words, E> {
        Ok(Words::one(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Words, E> {
        Ok(Words::one(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Words, E> {
        Ok(Words::one(v.to_string()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Words, E> {
        Ok(Words::one(v.to_string()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Words, A::Error> {
        let mut items = Vec::new();
        while let Some(Scalar(s)) = seq.next_element::<Scalar>()? {
            items.push(s);
        }
        Ok(Words { items, list: true })
    }
}

impl<'de> Deserialize<'de> for Words {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WordsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let s = RulesSpec::from_yaml(
            r#"
env: [CRM_TOKEN]
rewrite:
  - field: dialed
    match: "_9X."
    strip: 1
    prefix: ""
  - { field: dialed, match: "_XXXXXXX", prefix: "0261" }
rules:
  - name: screen-pop
    when: { state: ringing, direction: incoming, extension: [1001, "1002"] }
    target: crm
    url: "http://127.0.0.1:8080/x?pi=%CALLER_ID%"
  - name: call-log
    when: { scope: call, state: hungup }
    target: crm
    url: "http://127.0.0.1:8080/log"
    method: POST
    headers: { Authorization: "Bearer {{env.CRM_TOKEN}}" }
    json: { id: "{{call.session_id}}", n: 5 }
    idempotency_key: "{{call.session_id}}"
    max_age: 30s
    stop: true
"#,
        )
        .unwrap();
        assert_eq!(s.env, vec!["CRM_TOKEN"]);
        assert_eq!(s.rewrite[1].prefix, Some(Scalar("0261".into())));
        assert_eq!(
            s.rules[0].when.extension.as_ref().unwrap().items,
            vec!["1001", "1002"]
        );
        assert!(s.rules[0].when.extension.as_ref().unwrap().list);
        assert_eq!(s.rules[1].max_age, Some(Scalar("30s".into())));
        assert!(s.rules[1].stop);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(RulesSpec::from_yaml("rules: [{name: a, target: t, url: u, stp: true}]").is_err());
        assert!(
            RulesSpec::from_yaml("rules: [{name: a, target: t, url: u, when: {stat: x}}]").is_err()
        );
        assert!(RulesSpec::from_yaml("rulez: []").is_err());
    }
}
