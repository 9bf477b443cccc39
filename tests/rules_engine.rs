//! The rules engine end to end: real captures replayed through the live
//! normalizer, Meetip rules compiled from YAML, rendered requests checked
//! byte for byte; hostile values never change a request's structure.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use callhook::deliver::DeliveryRequest;
use callhook::model::{ModelEvent, State};
use callhook::normalize::{Normalizer, NormalizerConfig};
use callhook::replay::replay;
use callhook::rules::{compile_with_env, RuleError, RuleSet, RulesSpec};
use percent_encoding::percent_decode_str;
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn events(capture: &str) -> Vec<ModelEvent> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ami")
        .join(capture);
    let data = vec![std::fs::read(&path).unwrap()];
    let mut n = Normalizer::new(NormalizerConfig::default());
    let pbx: Arc<str> = "main".into();
    let mut out = Vec::new();
    replay(&data, &pbx, &mut n, |ev| out.push(ev.clone()));
    out
}

fn rules(yaml: &str) -> RuleSet {
    try_rules(yaml).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn try_rules(yaml: &str) -> Result<RuleSet, Vec<RuleError>> {
    let spec = RulesSpec::from_yaml(yaml).unwrap();
    compile_with_env(
        &spec,
        &|t| t == "crm",
        [("CRM_TOKEN".to_string(), "s3cr3t".to_string())],
    )
}

fn run(rs: &RuleSet, evs: &[ModelEvent]) -> Vec<DeliveryRequest> {
    evs.iter().flat_map(|e| rs.evaluate(e)).collect()
}

const MEETIP: &str = r#"
rules:
  - name: screen-pop
    when: { state: ringing, direction: incoming }
    target: crm
    url: "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=%CALLER_ID%&ext=%EXTENSION%"
    max_age: 30s
  - name: colgado-entrante
    when: { scope: call, state: colgado, direction: entrante }
    target: crm
    url: "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=%*CALLER_ID*%&tiempo=%*DURACION*%&modo=ColgadoEntrante"
"#;

#[test]
fn meetip_rules_on_queue_answered() {
    let rs = rules(MEETIP);
    let out = run(&rs, &events("asterisk-20/queue-answered.ami"));
    let got: Vec<(&str, &str)> = out
        .iter()
        .map(|r| (r.rule.as_str(), r.url.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "screen-pop",
                "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5559876543&ext=1002"
            ),
            (
                "screen-pop",
                "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5559876543&ext=1001"
            ),
            (
                "colgado-entrante",
                "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5559876543&tiempo=6&modo=ColgadoEntrante"
            ),
        ]
    );
    let pop = &out[0];
    assert_eq!(pop.method, "GET");
    assert_eq!(pop.body, None);
    assert!(pop.headers.is_empty());
    assert_eq!(pop.target, "crm");
    assert_eq!(pop.session_id, "1795374648.6");
    assert_eq!(pop.pbx, "main");
    assert_eq!(pop.event_id, "1795374648.6/1002/ringing/screen-pop");
    assert!((pop.created_at - 1795374648.631028).abs() < 1e-6);
    assert!((pop.expires_at.unwrap() - pop.created_at - 30.0).abs() < 1e-9);
    let end = &out[2];
    assert_eq!(end.event_id, "1795374648.6/call/hungup/colgado-entrante");
    assert!((end.created_at - 1795374654.132094).abs() < 1e-6);
    assert_eq!(end.expires_at, None);
}

#[test]
fn meetip_rules_on_incoming_answered_and_outgoing() {
    let rs = rules(MEETIP);
    let urls: Vec<String> = run(&rs, &events("asterisk-20/incoming-answered.ami"))
        .into_iter()
        .map(|r| r.url)
        .collect();
    assert_eq!(
        urls,
        vec![
            "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5551234567&ext=1001",
            "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5551234567&tiempo=5&modo=ColgadoEntrante",
        ]
    );
    // Outgoing calls match neither rule.
    assert!(run(&rs, &events("asterisk-20/click-to-call.ami")).is_empty());
    assert!(run(&rs, &events("asterisk-20/outgoing-answered.ami")).is_empty());
}

#[test]
fn every_placeholder_on_a_real_record() {
    let rs = rules(
        r#"
rules:
  - name: all
    when: { scope: call, state: hungup }
    target: crm
    url: "http://h/x?a=%CALLER_ID%&b=%CALLER_NAME%&c=%DIALED%&d=%EXTENSION%&e=%QUEUE_NAME%&f=%ID%&g=%DURATION%&h=%DURACION%&i=%BILLSEC%&j=%STATE%&k=%ESTADO%&l=%DIRECTION%&m=%SENTIDO%&n=%DISPOSITION%&o=%STARTED_AT%&p=%ANSWERED_AT%&q=%ENDED_AT%&r=%PBX%&s=100%25"
"#,
    );
    let out = run(&rs, &events("asterisk-20/queue-answered.ami"));
    assert_eq!(
        out[0].url,
        "http://h/x?a=5559876543&b=Maria%20Lopez&c=2125550200&d=1002&e=ventas&f=1795374648.6&g=6&h=6&i=2&j=hungup&k=colgado&l=incoming&m=entrante&n=ANSWERED&o=2026-11-22T19%3A10%3A48.127205Z&p=2026-11-22T19%3A10%3A51.636850Z&q=2026-11-22T19%3A10%3A54.132094Z&r=main&s=100%25"
    );
}

#[test]
fn call_log_json_post() {
    let rs = rules(
        r#"
env: [CRM_TOKEN]
rules:
  - name: call-log
    when: { scope: call, state: hungup }
    target: crm
    url: "http://crm.example/api/calls"
    method: POST
    headers: { Authorization: "Bearer {{env.CRM_TOKEN}}", X-Rule: "{{rule}}" }
    json:
      id: "{{call.session_id}}"
      from: "%CALLER_ID%"
      duration: "{{call.duration}}"
      secs: "%DURACION%"
      started: "{{date call.started_at \"%Y-%m-%dT%H:%M:%S\"}}"
      local: "{{date call.started_at \"%d/%m/%Y %H:%M\" \"-03:00\"}}"
      rung: "{{json call.extensions_rung}}"
      queue: '{{default call.queue "none"}}'
      answered: "{{call.answered_at}}"
    idempotency_key: "{{call.session_id}}-{{call.caller_number}}"
    stop: true
  - name: never
    when: { scope: call }
    target: crm
    url: "http://h/never"
"#,
    );
    let out = run(&rs, &events("asterisk-20/queue-answered.ami"));
    // stop: true kept "never" from firing for the record; it fired for the
    // call_state events.
    let rules: Vec<&str> = out.iter().map(|r| r.rule.as_str()).collect();
    assert_eq!(rules, vec!["never", "never", "call-log"]);
    let r = &out[2];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.headers,
        vec![
            ("Authorization".to_string(), "Bearer s3cr3t".to_string()),
            ("X-Rule".to_string(), "call-log".to_string()),
            ("Content-Type".to_string(), "application/json".to_string()),
        ]
    );
    assert_eq!(
        r.idempotency_key.as_deref(),
        Some("1795374648.6-5559876543")
    );
    let body = String::from_utf8(r.body.clone().unwrap()).unwrap();
    assert_eq!(
        body,
        r#"{"id":"1795374648.6","from":"5559876543","duration":6.005,"secs":6,"started":"2026-11-22T19:10:48","local":"22/11/2026 16:10","rung":["1002","1001"],"queue":"ventas","answered":"2026-11-22T19:10:51.636850Z"}"#
    );
}

#[test]
fn json_number_promotion_only_for_single_expressions() {
    let rs = rules(
        r#"
rules:
  - name: j
    when: { scope: call, state: hungup }
    target: crm
    url: "http://h/"
    json:
      duration: "{{call.duration}}"
      billsec: "{{secs call.billsec}}"
      label: "{{call.duration}} s"
      caller: "{{call.caller_number}}"
      caller_ph: "%CALLER_ID%"
      approx: "{{call.approximate}}"
      none: "{{call.queue}}"
      const: 5
      text: "5"
"#,
    );
    let mut evs = events("asterisk-20/outgoing-answered.ami");
    evs.retain(|e| matches!(e, ModelEvent::Call(_)));
    let out = run(&rs, &evs);
    let v: Value = serde_json::from_slice(out[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(v["duration"], serde_json::json!(6.011));
    assert_eq!(v["billsec"], serde_json::json!(4));
    assert_eq!(v["label"], "6.011 s");
    assert_eq!(v["caller"], "1001");
    assert_eq!(v["caller_ph"], "1001");
    assert_eq!(v["approx"], false);
    assert_eq!(v["none"], Value::Null);
    assert_eq!(v["const"], 5);
    assert_eq!(v["text"], "5");
}

#[test]
fn form_body() {
    let rs = rules(
        r#"
rules:
  - name: f
    when: { state: answered }
    target: crm
    url: "http://h/"
    form: { numero: "%CALLER_ID%", nombre: "%CALLER_NAME%", ext: "%EXTENSION%", estado: "%ESTADO%" }
"#,
    );
    let out = run(&rs, &events("asterisk-20/queue-answered.ami"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].method, "POST");
    assert_eq!(
        out[0].headers,
        vec![(
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded".to_string()
        )]
    );
    assert_eq!(
        out[0].body.as_deref(),
        Some(&b"numero=5559876543&nombre=Maria%20Lopez&ext=1002&estado=descolgado"[..])
    );
}

#[test]
fn event_ids_are_stable() {
    let yaml = r#"
rules:
  - { name: a, target: crm, url: "http://h/a" }
  - { name: b, target: crm, url: "http://h/b" }
  - { name: c, when: { scope: call }, target: crm, url: "http://h/c" }
"#;
    let evs = events("asterisk-20/queue-answered.ami");
    let first = run(&rules(yaml), &evs);
    let second = run(&rules(yaml), &evs);
    let ids = |v: &[DeliveryRequest]| v.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&second));
    // Same event, different rule → different id; every id unique.
    let unique: BTreeSet<String> = ids(&first).into_iter().collect();
    assert_eq!(unique.len(), first.len());
    assert!(unique.contains("1795374648.6/1002/ringing/a"));
    assert!(unique.contains("1795374648.6/1002/ringing/b"));
    assert!(unique.contains("1795374648.6/call/ringing/c"));
    assert!(unique.contains("1795374648.6/call/answered/c"));
    assert!(unique.contains("1795374648.6/call/hungup/c"));
    // The same event evaluated twice gives the same requests.
    let rs = rules(yaml);
    assert_eq!(rs.evaluate(&evs[1]), rs.evaluate(&evs[1]));
}

#[test]
fn any_of_lists_and_conditions_on_real_events() {
    let rs = rules(
        r#"
rules:
  - name: per-member
    when: { state: [timbre, descolgado], queue: ventas, extension: [1001, 1002], role: callee, caller: _NXXNXXXXXX, dialed: "/212.*/" }
    target: crm
    url: "http://h/?e=%EXTENSION%&s=%STATE%"
  - name: missed
    when: { state: hungup, disposition: [NO_ANSWER, BUSY] }
    target: crm
    url: "http://h/missed?e=%EXTENSION%&d=%DISPOSITION%&t=%DURATION%"
"#,
    );
    let urls: Vec<String> = run(&rs, &events("asterisk-20/queue-answered.ami"))
        .into_iter()
        .map(|r| r.url)
        .collect();
    assert_eq!(
        urls,
        vec![
            "http://h/?e=1002&s=ringing",
            "http://h/?e=1001&s=ringing",
            "http://h/?e=1002&s=answered",
            "http://h/missed?e=1001&d=NO%20ANSWER&t=3",
        ]
    );
}

// ---------------------------------------------------------------- hostile

/// scheme+authority, path segment count, query keys, fragment present.
fn structure(url: &str) -> (String, usize, Vec<String>, bool) {
    let scheme_end = url.find("://").unwrap() + 3;
    let rest = &url[scheme_end..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = url[..scheme_end + auth_end].to_string();
    let rest = &rest[auth_end..];
    let (before_frag, frag) = match rest.split_once('#') {
        Some((a, _)) => (a, true),
        None => (rest, false),
    };
    let (path, query) = before_frag.split_once('?').unwrap_or((before_frag, ""));
    let keys = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split('=').next().unwrap().to_string())
        .collect();
    (origin, path.split('/').count(), keys, frag)
}

fn query_value(url: &str, key: &str) -> String {
    let q = url.split_once('?').unwrap().1;
    let q = q.split('#').next().unwrap();
    let v = q
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap();
    percent_decode_str(v).decode_utf8().unwrap().into_owned()
}

const HOSTILE_RULES: &str = r#"
env: [CRM_TOKEN]
rules:
  - name: h
    target: crm
    url: "https://crm.example:8443/a/%CALLER_NAME%/b/{{call.queue}}?pi=%CALLER_ID%&n=%CALLER_NAME%&q={{default call.queue \"none\"}}#%QUEUE_NAME%"
    headers: { X-Name: "%CALLER_NAME%", X-Q: "{{call.queue}}", Authorization: "Bearer {{env.CRM_TOKEN}}" }
    json: { name: "%CALLER_NAME%", q: "{{call.queue}}", both: "{{call.caller_number}}-{{call.caller_name}}", n: 1 }
    idempotency_key: "%CALLER_NAME%"
"#;

fn hostile_leg(base: &ModelEvent, name: &str, number: &str, queue: &str) -> ModelEvent {
    let mut ev = base.clone();
    if let ModelEvent::Leg(l) = &mut ev {
        l.caller_name = Some(name.to_string());
        l.caller_number = Some(number.to_string());
        l.queue = Some(queue.to_string());
    }
    ev
}

fn check_hostile(rs: &RuleSet, base: &ModelEvent, name: &str, number: &str, queue: &str) {
    let ev = hostile_leg(base, name, number, queue);
    let out = rs.evaluate(&ev);
    assert_eq!(out.len(), 1, "{name:?}");
    let r = &out[0];
    let (origin, segs, keys, frag) = structure(&r.url);
    assert_eq!(origin, "https://crm.example:8443", "{name:?} {}", r.url);
    assert_eq!(segs, 5, "{name:?} {}", r.url);
    assert_eq!(keys, vec!["pi", "n", "q"], "{name:?} {}", r.url);
    assert!(frag);
    assert_eq!(r.url.matches('#').count(), 1);
    assert!(r.url.is_ascii() && !r.url.contains(' '));
    assert_eq!(query_value(&r.url, "n"), name);
    assert_eq!(query_value(&r.url, "pi"), number);
    assert_eq!(r.headers.len(), 4, "{name:?}");
    for (k, v) in &r.headers {
        assert!(!v.contains(['\r', '\n', '\0']), "{k}: {v:?}");
    }
    assert!(!r
        .idempotency_key
        .as_deref()
        .unwrap_or("")
        .contains(['\r', '\n']));
    let v: Value = serde_json::from_slice(r.body.as_ref().unwrap()).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4);
    assert_eq!(v["name"], name);
    assert_eq!(v["q"], queue);
    assert_eq!(v["both"], format!("{number}-{name}"));
    assert_eq!(v["n"], 1);
}

fn a_ringing_leg() -> ModelEvent {
    events("asterisk-20/queue-answered.ami")
        .into_iter()
        .find(|e| matches!(e, ModelEvent::Leg(l) if l.state == State::Ringing))
        .unwrap()
}

#[test]
fn hostile_values_never_change_structure() {
    let rs = rules(HOSTILE_RULES);
    let base = a_ringing_leg();
    for v in [
        "x&token=evil#",
        "a\r\nX-Evil: 1",
        "\"}{\"",
        "\"},\"admin\":true,\"x\":{\"",
        "../../etc/passwd",
        "/?#@&=%+:",
        "%CALLER_ID%",
        "{{env.CRM_TOKEN}}",
        "%00%0d%0a",
        "héllo wörld ☎",
        "",
        "\u{202e}\u{0}\u{7f}",
        "http://evil.example/",
        "a b+c",
    ] {
        check_hostile(&rs, &base, v, v, v);
    }
    // Values are data, never templates.
    let out = rs.evaluate(&hostile_leg(&base, "{{env.CRM_TOKEN}}", "1", "%CALLER_ID%"));
    let v: Value = serde_json::from_slice(out[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(v["name"], "{{env.CRM_TOKEN}}");
    assert_eq!(v["q"], "%CALLER_ID%");
}

#[test]
fn ten_thousand_random_hostile_values() {
    let rs = rules(HOSTILE_RULES);
    let base = a_ringing_leg();
    let alphabet: Vec<char> = "/?#@&=%+:;,\r\n\t \0\"'\\{}[]<>|^`~.-_aZ09%2F%0A"
        .chars()
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_ca11);
    let mut value = || -> String {
        let len = rng.gen_range(0..24);
        (0..len)
            .map(|_| match rng.gen_range(0..4) {
                0 => char::from(rng.gen_range(0u8..=127)),
                1 => char::from_u32(rng.gen_range(0x80..0x11000)).unwrap_or('\u{fffd}'),
                _ => alphabet[rng.gen_range(0..alphabet.len())],
            })
            .collect()
    };
    for _ in 0..10_000 {
        let (a, b, c) = (value(), value(), value());
        check_hostile(&rs, &base, &a, &b, &c);
    }
}

// ----------------------------------------------------------------- errors

#[test]
fn several_bad_rules_give_every_error() {
    let errs = try_rules(
        r#"
rules:
  - name: pop
    when: { state: timbre, direction: entrante }
    target: crm
    url: "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=%CALLER_IDD%&ext=%EXTENSION%"
  - name: host
    target: crm
    url: "http://%HOST%/x"
  - name: tgt
    target: crmm
    url: "http://h/"
    max_age: 30x
  - name: hb
    when: { scope: call, state: hungup, role: callee }
    target: crm
    url: "http://h/"
    json: { d: "{{call.duraton}}" }
    form: { a: b }
"#,
    )
    .unwrap_err();
    let got: Vec<(&str, Option<&str>)> = errs
        .iter()
        .map(|e| (e.field.as_str(), e.needle.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("rules[0].url", Some("%CALLER_IDD%")),
            ("rules[1].url", Some("%HOST%")),
            ("rules[2].target", Some("crmm")),
            ("rules[2].max_age", Some("30x")),
            ("rules[3].when.role", Some("callee")),
            ("rules[3].form", Some("hb")),
        ],
        "{errs:#?}"
    );
    assert!(errs[0]
        .hint
        .as_deref()
        .unwrap()
        .starts_with("did you mean %CALLER_ID%?"));
    assert!(errs
        .iter()
        .all(|e| e.rule_index.is_some() && e.rule_name.is_some()));
}

#[test]
fn missing_paths_are_config_errors() {
    let errs = try_rules(
        r#"
rules:
  - name: hb
    when: { scope: call, state: hungup }
    target: crm
    url: "http://h/{{call.sesion_id}}"
    json: { d: "{{call.duraton}}", ok: "{{call.extensions_rung}}" }
  - name: both-kinds
    when: { scope: call }
    target: crm
    url: "http://h/"
    body: "{{call.extensions_rung}}"
"#,
    )
    .unwrap_err();
    let got: Vec<(&str, Option<&str>)> = errs
        .iter()
        .map(|e| (e.field.as_str(), e.needle.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("rules[0].url", Some("call.sesion_id")),
            ("rules[0].json.d", Some("call.duraton")),
            ("rules[1].body", Some("call.extensions_rung")),
        ]
    );
    assert!(errs[0]
        .hint
        .as_deref()
        .unwrap()
        .starts_with("did you mean `call.session_id`?"));
    assert!(errs[2]
        .hint
        .as_deref()
        .unwrap()
        .contains("restrict it with state: hungup"));
}
