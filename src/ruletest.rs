//! `callhook test FILE...`: unit tests for rule sets, like `amtool config
//! routes test` or `vector test`.
//!
//! A test file names the rule set (or a whole config) under test and lists
//! cases; each case gives model events (inline, in the call model's JSON
//! schema) or an AMI capture, and the requests the rules must produce:
//!
//! ```yaml
//! rules: ../screen-pop.yaml        # a rule-set file (as `include:`d), or
//! # config: ../callhook.yaml       # a whole configuration
//! env: { CRM_TOKEN: test-token }   # environment while loading it
//! tests:
//!   - name: an incoming call pops the ringing phone
//!     event: { type: leg, state: ringing, direction: incoming, extension: "1001", caller_number: "5551234567" }
//!     expect:
//!       - method: GET
//!         url: "http://127.0.0.1:8080/pop?pi=5551234567&ext=1001"
//!   - name: outgoing calls pop nothing
//!     capture: ../../tests/fixtures/ami/asterisk-20/outgoing-answered.ami
//!     expect: []
//! ```
//!
//! An inline event only needs the fields the test is about: the others are
//! those of a realistic sample of the same `type` (`leg`, `call_state`,
//! `call`). Each expected request checks only the fields it gives: `rule`,
//! `target`, `method`, `url` and `idempotency_key` exactly, `headers` (each
//! one given), `json` (a subset of a JSON body: the keys given, recursively),
//! `form` (the fields given) or `body` (the text exactly). The list is
//! complete: as many requests, in order; `expect: []` means none.
//! Paths are relative to the test file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value as Json;

use crate::config::Config;
use crate::deliver::DeliveryRequest;
use crate::model::ModelEvent;
use crate::normalize::Normalizer;
use crate::template::{sample_event, EventKind};
use crate::yaml::{self, Path as At, Value as Yaml};

/// A test file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// A rule-set file, loaded as if `include:`d by an empty config.
    #[serde(default)]
    rules: Option<PathBuf>,
    /// A whole configuration file.
    #[serde(default)]
    config: Option<PathBuf>,
    /// Environment variables set while the rule set is loaded.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// The cases.
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    #[serde(default)]
    event: Option<Yaml>,
    #[serde(default)]
    events: Option<Vec<Yaml>>,
    #[serde(default)]
    capture: Option<PathBuf>,
    /// PBX id stamped on a capture's events (default `main`).
    #[serde(default)]
    pbx: Option<String>,
    expect: Vec<Expect>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    json: Option<Yaml>,
    #[serde(default)]
    form: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    /// Its name.
    pub name: String,
    /// What differed (empty: passed).
    pub failures: Vec<String>,
}

/// The outcome of one file.
#[derive(Debug)]
pub struct FileResult {
    /// The file.
    pub path: PathBuf,
    /// Problems that kept it from running (`FILE:LINE:COL: …`).
    pub errors: Vec<String>,
    /// The cases run.
    pub cases: Vec<CaseResult>,
}

impl FileResult {
    /// Whether everything ran and passed.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.cases.iter().all(|c| c.failures.is_empty())
    }

    /// The report: one line per case, the differences under a failed one.
    pub fn render(&self) -> String {
        let mut out = format!("{}\n", self.path.display());
        for e in &self.errors {
            let _ = writeln!(out, "  error: {e}");
        }
        for c in &self.cases {
            if c.failures.is_empty() {
                let _ = writeln!(out, "  ok    {}", c.name);
            } else {
                let _ = writeln!(out, "  FAIL  {}", c.name);
                for f in &c.failures {
                    for (i, l) in f.lines().enumerate() {
                        let _ = writeln!(out, "        {}{l}", if i == 0 { "" } else { "  " });
                    }
                }
            }
        }
        out
    }
}

/// Runs one test file. Sets the file's `env:` variables in this process
/// while its rule set loads (and restores them after).
pub fn run_file(path: &Path) -> FileResult {
    let mut result = FileResult {
        path: path.to_path_buf(),
        errors: Vec::new(),
        cases: Vec::new(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            result.errors.push(format!("cannot read the file: {e}"));
            return result;
        }
    };
    let doc = yaml::parse(&text);
    let root = doc.root.clone().unwrap_or_else(yaml::Node::empty_map);
    let here = |p: &At| {
        let pos = root.locate(p);
        format!("{}:{}:{}: ", path.display(), pos.line, pos.col)
    };
    let mut problems = doc.problems;
    let file = if problems.is_empty() {
        let r = yaml::de::from_node::<TestFile>(&root);
        problems.extend(r.problems);
        r.value
    } else {
        None
    };
    if !problems.is_empty() {
        for p in problems {
            let pos = p.pos.unwrap_or_else(|| root.locate(&p.path));
            result.errors.push(format!(
                "{}:{}:{}: {}{}{}",
                path.display(),
                pos.line,
                pos.col,
                if p.path.is_root() {
                    String::new()
                } else {
                    format!("{}: ", p.path)
                },
                p.message,
                p.hint.map(|h| format!(" (hint: {h})")).unwrap_or_default()
            ));
        }
        return result;
    }
    let Some(file) = file else { return result };
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };

    // The rule set under test.
    let saved: Vec<(String, Option<std::ffi::OsString>)> = file
        .env
        .keys()
        .map(|k| (k.clone(), std::env::var_os(k)))
        .collect();
    for (k, v) in &file.env {
        std::env::set_var(k, v);
    }
    let loaded = match (&file.rules, &file.config) {
        (Some(r), None) => {
            let abs = crate::values::resolve_path(dir, r);
            let abs = std::path::absolute(&abs).unwrap_or(abs);
            let text = format!(
                "include: [{}]\n",
                serde_json::to_string(&abs.display().to_string()).unwrap_or_default()
            );
            Config::from_text(&text, dir)
                .map_err(|es| es.iter().map(|e| e.render(&abs)).collect::<Vec<String>>())
        }
        (None, Some(c)) => {
            Config::load(&crate::values::resolve_path(dir, c)).map_err(|e| e.rendered())
        }
        _ => Err(vec![format!(
            "{}give `rules: FILE` (a rule-set file) or `config: FILE` (a whole configuration)",
            here(&At::root())
        )]),
    };
    for (k, v) in saved {
        match v {
            Some(v) => std::env::set_var(&k, v),
            None => std::env::remove_var(&k),
        }
    }
    let cfg = match loaded {
        Ok(c) => c,
        Err(es) => {
            result.errors.extend(es);
            return result;
        }
    };

    for (i, case) in file.tests.iter().enumerate() {
        let at = At::root().key("tests").index(i);
        // What is sent: the env values the outbox would store masked.
        let got = match requests(&cfg, case, dir).and_then(|reqs| {
            reqs.iter()
                .map(|r| crate::deliver::secret::revealed(r, cfg.rules.secrets()))
                .collect::<Result<Vec<_>, _>>()
        }) {
            Ok(g) => g,
            Err(e) => {
                result.errors.push(format!("{}{at}: {e}", here(&at)));
                continue;
            }
        };
        result.cases.push(CaseResult {
            name: case.name.clone(),
            failures: compare(&case.expect, &got),
        });
    }
    result
}

/// The requests the rules produce for a case's events.
fn requests(cfg: &Config, case: &TestCase, dir: &Path) -> Result<Vec<DeliveryRequest>, String> {
    let given = [
        case.event.is_some(),
        case.events.is_some(),
        case.capture.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        return Err("give exactly one of event, events and capture".into());
    }
    let mut out = Vec::new();
    if let Some(c) = &case.capture {
        let p = crate::values::resolve_path(dir, c);
        let bytes = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let pbx: crate::source::PbxId = Arc::from(case.pbx.as_deref().unwrap_or("main"));
        let mut n = Normalizer::new(cfg.normalizer.clone());
        crate::replay::replay(&[bytes], &pbx, &mut n, |ev| {
            out.extend(cfg.rules.evaluate(ev))
        });
        return Ok(out);
    }
    let events: Vec<&Yaml> = match (&case.event, &case.events) {
        (Some(e), _) => vec![e],
        (_, Some(es)) => es.iter().collect(),
        _ => Vec::new(),
    };
    for (i, e) in events.iter().enumerate() {
        let ev = model_event(e).map_err(|m| {
            if case.events.is_some() {
                format!("events[{i}]: {m}")
            } else {
                format!("event: {m}")
            }
        })?;
        out.extend(cfg.rules.evaluate(&ev));
    }
    Ok(out)
}

/// A YAML value as JSON.
fn to_json(v: &Yaml) -> Json {
    match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Json::from(u),
            (_, Some(i), _) => Json::from(i),
            (_, _, Some(f)) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
            _ => Json::Null,
        },
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(items.iter().map(to_json).collect()),
        Yaml::Mapping(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let k = match to_json(k) {
                        Json::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, to_json(v))
                })
                .collect(),
        ),
    }
}

/// An inline event: the given fields over a sample of its type.
fn model_event(v: &Yaml) -> Result<ModelEvent, String> {
    let Json::Object(given) = to_json(v) else {
        return Err("an event is a mapping with a `type`".into());
    };
    let kind = match given.get("type").and_then(Json::as_str) {
        Some("leg") => EventKind::Leg,
        Some("call_state") => EventKind::CallState,
        Some("call") => EventKind::Call,
        other => {
            return Err(format!(
                "type {} is not leg, call_state or call",
                other.map_or("(missing)".to_string(), |t| format!("{t:?}"))
            ))
        }
    };
    let mut base = serde_json::to_value(sample_event(kind)).map_err(|e| e.to_string())?;
    if let Json::Object(b) = &mut base {
        // The sample's times and numbers stay unless given.
        if kind == EventKind::Leg && given.get("state").and_then(Json::as_str) != Some("hungup") {
            for k in ["duration", "billsec", "disposition"] {
                b.remove(k);
            }
        }
        for (k, v) in given {
            b.insert(k, v);
        }
    }
    serde_json::from_value(base).map_err(|e| e.to_string())
}

fn summary(r: &DeliveryRequest) -> String {
    format!(
        "{} {} (rule {}, target {})",
        r.method, r.url, r.rule, r.target
    )
}

/// What differs between the expected and the produced requests.
fn compare(want: &[Expect], got: &[DeliveryRequest]) -> Vec<String> {
    let mut out = Vec::new();
    if want.len() != got.len() {
        let mut m = format!(
            "expected {} request{}, got {}",
            want.len(),
            if want.len() == 1 { "" } else { "s" },
            got.len()
        );
        for (i, r) in got.iter().enumerate() {
            let _ = write!(m, "\n  got [{}] {}", i + 1, summary(r));
        }
        out.push(m);
    }
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        let n = i + 1;
        let mut field = |name: &str, want: &Option<String>, got: &str| {
            if let Some(w) = want {
                if w != got {
                    out.push(format!("request {n}: {name}\n  want: {w}\n  got:  {got}"));
                }
            }
        };
        field("rule", &w.rule, &g.rule);
        field("target", &w.target, &g.target);
        field("method", &w.method, &g.method);
        field("url", &w.url, &g.url);
        if w.idempotency_key.is_some() {
            field(
                "idempotency_key",
                &w.idempotency_key,
                g.idempotency_key.as_deref().unwrap_or("(none)"),
            );
        }
        for (k, v) in &w.headers {
            let got_v = g
                .headers
                .iter()
                .find(|(hk, _)| hk.eq_ignore_ascii_case(k))
                .map(|(_, hv)| hv.as_str());
            if got_v != Some(v.as_str()) {
                out.push(format!(
                    "request {n}: header {k}\n  want: {v}\n  got:  {}",
                    got_v.unwrap_or("(absent)")
                ));
            }
        }
        let body = g
            .body
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned());
        if let Some(wb) = &w.body {
            let gb = body.as_deref().unwrap_or("(no body)");
            if wb != gb {
                out.push(format!("request {n}: body\n  want: {wb}\n  got:  {gb}"));
            }
        }
        if let Some(wj) = &w.json {
            match body.as_deref().map(serde_json::from_str::<Json>) {
                Some(Ok(gj)) => {
                    for d in json_subset(&to_json(wj), &gj, "json") {
                        out.push(format!("request {n}: {d}"));
                    }
                }
                _ => out.push(format!(
                    "request {n}: json\n  want: a JSON body\n  got:  {}",
                    body.as_deref().unwrap_or("(no body)")
                )),
            }
        }
        if !w.form.is_empty() {
            let fields = crate::http::push::parse_urlencoded(body.as_deref().unwrap_or(""));
            for (k, v) in &w.form {
                let got_v = fields
                    .iter()
                    .find(|(fk, _)| fk == k)
                    .map(|(_, fv)| fv.as_str());
                if got_v != Some(v.as_str()) {
                    out.push(format!(
                        "request {n}: form field {k}\n  want: {v}\n  got:  {}",
                        got_v.unwrap_or("(absent)")
                    ));
                }
            }
        }
    }
    out
}

/// Differences where `got` does not contain `want` (objects: the keys of
/// `want`, recursively; everything else: equal).
fn json_subset(want: &Json, got: &Json, at: &str) -> Vec<String> {
    match (want, got) {
        (Json::Object(w), Json::Object(g)) => w
            .iter()
            .flat_map(|(k, wv)| match g.get(k) {
                Some(gv) => json_subset(wv, gv, &format!("{at}.{k}")),
                None => vec![format!("{at}.{k}\n  want: {wv}\n  got:  (absent)")],
            })
            .collect(),
        (Json::Number(a), Json::Number(b)) if a.as_f64() == b.as_f64() => Vec::new(),
        (w, g) if w == g => Vec::new(),
        (w, g) => vec![format!("{at}\n  want: {w}\n  got:  {g}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_events_fill_in_a_sample() {
        let v: Yaml = yaml::de::from_str(
            "{ type: leg, state: ringing, extension: \"1001\", caller_number: \"555\" }",
        )
        .unwrap();
        let ModelEvent::Leg(l) = model_event(&v).unwrap() else {
            panic!()
        };
        assert_eq!(l.extension, "1001");
        assert_eq!(l.caller_number.as_deref(), Some("555"));
        assert_eq!(l.state, crate::model::State::Ringing);
        assert!(l.disposition.is_none() && l.duration.is_none());
        let bad: Yaml = yaml::de::from_str("{ type: leg, state: sleeping }").unwrap();
        assert!(model_event(&bad).unwrap_err().contains("sleeping"));
        let bad: Yaml = yaml::de::from_str("{ state: ringing }").unwrap();
        assert!(model_event(&bad).unwrap_err().contains("(missing)"));
    }

    #[test]
    fn json_subsets() {
        let got: Json = serde_json::json!({"a": 1, "b": {"c": "x", "d": [1, 2]}});
        assert!(json_subset(&serde_json::json!({"b": {"c": "x"}}), &got, "json").is_empty());
        let d = json_subset(&serde_json::json!({"a": "1", "b": {"e": 1}}), &got, "json");
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("json.a\n  want: \"1\"\n  got:  1"));
        assert!(d[1].starts_with("json.b.e"));
    }
}
