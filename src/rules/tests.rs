//! Unit tests of rewriting, matching, evaluation and compile errors.

use super::*;
use crate::model::{
    CallRecord, CallStateEvent, Direction, Disposition, EndReason, LegEvent, Role, State, Timestamp,
};
use crate::template::EventKind;

fn targets(t: &str) -> bool {
    t == "crm" || t == "log"
}

fn set(yaml: &str) -> RuleSet {
    let spec = RulesSpec::from_yaml(yaml).unwrap_or_else(|e| panic!("yaml: {e:?}"));
    compile_with_env(
        &spec,
        &targets,
        [("CRM_TOKEN".to_string(), "tok".to_string())],
    )
    .unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn errors(yaml: &str) -> Vec<RuleError> {
    let spec = RulesSpec::from_yaml(yaml).unwrap_or_else(|e| panic!("yaml: {e:?}"));
    match compile_with_env(&spec, &targets, Vec::new()) {
        Ok(_) => panic!("expected errors for {yaml}"),
        Err(e) => e,
    }
}

fn leg() -> LegEvent {
    LegEvent {
        session_id: "100.1".into(),
        pbx: "main".into(),
        leg_id: "100.1/1001".into(),
        state: State::Ringing,
        direction: Direction::Incoming,
        role: Role::Callee,
        extension: "1001".into(),
        caller_number: Some("5559876543".into()),
        caller_name: Some("Maria Lopez".into()),
        dialed_number: Some("2125550200".into()),
        queue: Some("ventas".into()),
        at: Timestamp(1000.0),
        duration: None,
        billsec: None,
        disposition: None,
        approximate: false,
        extra: Default::default(),
    }
}

fn call_state() -> CallStateEvent {
    CallStateEvent {
        session_id: "100.1".into(),
        pbx: "main".into(),
        state: State::Answered,
        direction: Direction::Outgoing,
        caller_number: Some("1001".into()),
        caller_name: Some("Ana".into()),
        dialed_number: Some("95551234".into()),
        queue: None,
        answered_by: Some("external".into()),
        at: Timestamp(1002.0),
        approximate: false,
        extra: Default::default(),
    }
}

fn record() -> CallRecord {
    CallRecord {
        session_id: "100.1".into(),
        pbx: "main".into(),
        direction: Direction::Incoming,
        caller_number: Some("5559876543".into()),
        caller_name: None,
        dialed_number: Some("2125550200".into()),
        queue: Some("ventas".into()),
        extensions_rung: vec!["1002".into(), "1001".into()],
        answered_by: Some("1002".into()),
        final_answered_by: Some("1003".into()),
        started_at: Timestamp(1000.0),
        answered_at: Some(Timestamp(1003.0)),
        ended_at: Timestamp(1010.4),
        duration: 10.4,
        billsec: 7.4,
        disposition: Disposition::Answered,
        end_reason: EndReason::Hangup,
        recording_url: None,
        approximate: false,
        extra: Default::default(),
    }
}

fn urls(rs: &RuleSet, ev: &ModelEvent) -> Vec<String> {
    rs.evaluate(ev)
        .into_iter()
        .map(|r| format!("{} {}", r.rule, r.url))
        .collect()
}

const REWRITE: &str = r#"
rewrite:
  - { field: dialed, match: "_9X.", strip: 1 }
  - { field: dialed, match: "_XXXXXXX", prefix: "0261" }
  - { field: caller, match: "/\\+54(.*)/", strip: 3, prefix: "0" }
  - { field: both, match: "_00X.", strip: 2, prefix: "+" }
rules:
  - { name: r, target: crm, url: "http://h/?c=%CALLER_ID%&d=%DIALED%" }
"#;

#[test]
fn rewrite_table() {
    let rs = set(REWRITE);
    // (caller, dialed) in → (caller, dialed) out
    type Row<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    let table: &[Row<'_>] = &[
        (None, Some("95551234"), None, Some("02615551234")),
        (None, Some("5551234"), None, Some("02615551234")),
        (None, Some("912"), None, Some("12")),
        (None, Some("9"), None, Some("9")),
        (None, Some("2125550100"), None, Some("2125550100")),
        (None, Some("95"), None, Some("95")),
        (Some("5551234"), None, Some("5551234"), None),
        (Some("+542614123456"), None, Some("02614123456"), None),
        (
            Some("0044207"),
            Some("00349115"),
            Some("+44207"),
            Some("+349115"),
        ),
        (None, None, None, None),
    ];
    for (c, d, wc, wd) in table {
        let mut l = leg();
        l.caller_number = c.map(str::to_string);
        l.dialed_number = d.map(str::to_string);
        let ev = ModelEvent::Leg(l);
        let out = rs.rewrite(&ev);
        let ModelEvent::Leg(o) = out.as_ref() else {
            unreachable!()
        };
        assert_eq!(o.caller_number.as_deref(), *wc, "caller {c:?}");
        assert_eq!(o.dialed_number.as_deref(), *wd, "dialed {d:?}");
    }
    // The rewritten numbers are what the URL gets.
    let mut l = leg();
    l.dialed_number = Some("95551234".into());
    assert_eq!(
        urls(&rs, &ModelEvent::Leg(l)),
        vec!["r http://h/?c=5559876543&d=02615551234"]
    );
    // Nothing to rewrite: borrowed, not copied.
    let ev = ModelEvent::Leg(leg());
    assert!(matches!(rs.rewrite(&ev), Cow::Borrowed(_)));
}

#[test]
fn rewrite_does_not_touch_extensions() {
    let rs = set(r#"
rewrite: [{ field: caller, match: "_X.", prefix: "+" }]
rules:
  - { name: r, target: crm, when: { scope: call, extension: 1001 }, url: "http://h/?e=%EXTENSION%&c=%CALLER_ID%" }
"#);
    assert_eq!(
        urls(&rs, &ModelEvent::CallState(call_state())),
        vec!["r http://h/?e=1001&c=%2B1001"]
    );
}

#[test]
fn every_condition() {
    let l = ModelEvent::Leg(leg());
    let cs = ModelEvent::CallState(call_state());
    let rec = ModelEvent::Call(record());
    let mut hung = leg();
    hung.state = State::Hungup;
    hung.disposition = Some(Disposition::NoAnswer);
    hung.duration = Some(3.0);
    hung.billsec = Some(0.0);
    let hung = ModelEvent::Leg(hung);
    let mut caller_leg = leg();
    caller_leg.role = Role::Caller;
    caller_leg.queue = None;
    caller_leg.caller_number = None;
    let caller_leg = ModelEvent::Leg(caller_leg);

    // (when, event, matches)
    let table: &[(&str, &ModelEvent, bool)] = &[
        ("{}", &l, true),
        ("{}", &cs, false),
        ("{}", &rec, false),
        ("{scope: call}", &l, false),
        ("{scope: call}", &cs, true),
        ("{scope: call}", &rec, true),
        ("{scope: call, state: hungup}", &cs, false),
        ("{scope: call, state: colgado}", &rec, true),
        ("{scope: call, state: descolgado}", &cs, true),
        ("{scope: call, state: [ringing, hungup]}", &cs, false),
        ("{state: ringing}", &l, true),
        ("{state: timbre}", &l, true),
        ("{state: answered}", &l, false),
        ("{state: [answered, ringing]}", &l, true),
        ("{direction: entrante}", &l, true),
        ("{direction: [outgoing, internal]}", &l, false),
        ("{scope: call, direction: saliente}", &cs, true),
        ("{extension: 1001}", &l, true),
        ("{extension: '1002'}", &l, false),
        ("{extension: [1002, 1001]}", &l, true),
        ("{extension: _10XX}", &l, true),
        ("{extension: _2XXX}", &l, false),
        ("{extension: '/10(01|02)/'}", &l, true),
        ("{scope: call, extension: 1001}", &cs, true),
        ("{scope: call, extension: 1001}", &rec, true),
        ("{scope: call, extension: 1003}", &rec, true),
        ("{scope: call, extension: 1004}", &rec, false),
        ("{scope: call, extension: external}", &cs, false),
        ("{queue: ventas}", &l, true),
        ("{queue: soporte}", &l, false),
        ("{queue: '/vent.*/'}", &l, true),
        ("{queue: ventas}", &caller_leg, false),
        ("{pbx: main}", &l, true),
        ("{pbx: [a, b]}", &l, false),
        ("{disposition: NO_ANSWER}", &hung, true),
        ("{disposition: 'no answer'}", &hung, true),
        ("{disposition: [BUSY, FAILED]}", &hung, false),
        ("{disposition: ANSWERED}", &l, false),
        ("{scope: call, disposition: answered}", &rec, true),
        ("{scope: call, disposition: answered}", &cs, false),
        ("{role: callee}", &l, true),
        ("{role: caller}", &l, false),
        ("{role: caller}", &caller_leg, true),
        ("{caller: _NXXNXXXXXX}", &l, true),
        ("{caller: '/555.*/'}", &l, true),
        ("{caller: _1X.}", &l, false),
        ("{caller: _X.}", &caller_leg, false),
        ("{dialed: [_212X., _0X.]}", &l, true),
        ("{scope: call, dialed: _9X.}", &cs, true),
        ("{state: ringing, direction: incoming, extension: 1001, queue: ventas, role: callee, caller: _5X., dialed: _2X.}", &l, true),
        ("{state: ringing, direction: incoming, extension: 1001, queue: ventas, role: caller}", &l, false),
    ];
    for (when, ev, want) in table {
        let rs = set(&format!(
            "rules: [{{ name: r, target: crm, when: {when}, url: 'http://h/' }}]"
        ));
        assert_eq!(
            rs.evaluate(ev).len() == 1,
            *want,
            "when {when} on {:?}",
            EventKind::of(ev)
        );
    }
}

#[test]
fn stop_and_order() {
    let rs = set(r#"
rules:
  - { name: a, target: crm, url: "http://h/a", when: { queue: soporte }, stop: true }
  - { name: b, target: crm, url: "http://h/b" }
  - { name: c, target: log, url: "http://h/c", when: { extension: 1001 }, stop: true }
  - { name: d, target: crm, url: "http://h/d" }
"#);
    assert_eq!(rs.len(), 4);
    assert_eq!(rs.names(), vec!["a", "b", "c", "d"]);
    let out = rs.evaluate(&ModelEvent::Leg(leg()));
    let got: Vec<(&str, &str)> = out
        .iter()
        .map(|r| (r.rule.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(got, vec![("b", "crm"), ("c", "log")]);
    let mut l = leg();
    l.queue = Some("soporte".into());
    let out = rs.evaluate(&ModelEvent::Leg(l));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].rule, "a");
}

#[test]
fn request_fields() {
    let rs = set(r#"
rules:
  - name: log
    when: { scope: call }
    target: crm
    url: "http://h/log"
    form: { id: "%ID%", ext: "%EXTENSION%", dur: "%DURACION%", disp: "%DISPOSITION%" }
    idempotency_key: "{{call.session_id}}-%ESTADO%"
    max_age: 1m
  - name: get
    when: { scope: call }
    target: crm
    url: "http://h/get?s=%STATE%"
"#);
    let out = rs.evaluate(&ModelEvent::Call(record()));
    assert_eq!(out.len(), 2);
    let r = &out[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.event_id, "100.1/call/hungup/log");
    assert_eq!(r.session_id, "100.1");
    assert_eq!(r.pbx, "main");
    assert_eq!(r.created_at, 1010.4);
    assert_eq!(r.expires_at, Some(1070.4));
    assert_eq!(r.idempotency_key.as_deref(), Some("100.1-colgado"));
    assert_eq!(
        r.headers,
        vec![(
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded".to_string()
        )]
    );
    assert_eq!(
        String::from_utf8(r.body.clone().unwrap()).unwrap(),
        "id=100.1&ext=1003&dur=10&disp=ANSWERED"
    );
    let g = &out[1];
    assert_eq!((g.method.as_str(), g.body.is_none()), ("GET", true));
    assert_eq!(g.url, "http://h/get?s=hungup");
    assert_eq!(g.expires_at, None);
    assert_eq!(g.idempotency_key, None);

    let cs = rs.evaluate(&ModelEvent::CallState(call_state()));
    assert_eq!(cs[0].event_id, "100.1/call/answered/log");
    assert_eq!(cs[0].created_at, 1002.0);
    let l = rs.evaluate(&ModelEvent::Leg(leg()));
    assert!(l.is_empty());
}

#[test]
fn extension_placeholder_per_kind() {
    let rs = set(
        "rules: [{ name: r, target: crm, when: {scope: call}, url: 'http://h/?e=%EXTENSION%' }]",
    );
    let e = |ev: ModelEvent| rs.evaluate(&ev).pop().map(|r| r.url).unwrap_or_default();
    // outgoing call_state: the calling extension
    assert_eq!(e(ModelEvent::CallState(call_state())), "http://h/?e=1001");
    // incoming answered: answered_by; ringing: empty
    let mut c = call_state();
    c.direction = Direction::Incoming;
    c.caller_number = Some("555".into());
    c.answered_by = Some("1002".into());
    assert_eq!(e(ModelEvent::CallState(c.clone())), "http://h/?e=1002");
    c.state = State::Ringing;
    c.answered_by = None;
    assert_eq!(e(ModelEvent::CallState(c)), "http://h/?e=");
    // record: final_answered_by, then answered_by, then first rung
    let mut r = record();
    assert_eq!(e(ModelEvent::Call(r.clone())), "http://h/?e=1003");
    r.final_answered_by = Some("external".into());
    assert_eq!(e(ModelEvent::Call(r.clone())), "http://h/?e=1002");
    r.answered_by = None;
    r.final_answered_by = None;
    assert_eq!(e(ModelEvent::Call(r.clone())), "http://h/?e=1002");
    r.extensions_rung.clear();
    assert_eq!(e(ModelEvent::Call(r.clone())), "http://h/?e=");
    r.direction = Direction::Outgoing;
    r.caller_number = Some("1001".into());
    assert_eq!(e(ModelEvent::Call(r)), "http://h/?e=1001");
}

#[test]
fn render_failure_at_fire_time_is_counted_and_skipped() {
    // Passes the load-time check (the sample's caller number is
    // 5559876543, so the date call is skipped) but fails for other callers.
    let rs = set(r#"
rules:
  - name: fragile-unit-test
    target: crm
    url: "http://h/x"
    body: '{{#unless (eq call.caller_number "5559876543")}}{{date call.caller_name "%Y"}}{{/unless}}'
  - { name: after-fragile, target: crm, url: "http://h/y" }
"#);
    let m = crate::metrics::metrics();
    let before = m
        .render_errors
        .with_label_values(&["fragile-unit-test"])
        .get();
    let matches = m
        .rule_matches
        .with_label_values(&["fragile-unit-test"])
        .get();
    let mut l = leg();
    l.caller_number = Some("123".into());
    let out = rs.evaluate(&ModelEvent::Leg(l));
    assert_eq!(
        out.iter().map(|r| r.rule.as_str()).collect::<Vec<_>>(),
        vec!["after-fragile"]
    );
    assert_eq!(
        m.render_errors
            .with_label_values(&["fragile-unit-test"])
            .get(),
        before + 1
    );
    assert_eq!(
        m.rule_matches
            .with_label_values(&["fragile-unit-test"])
            .get(),
        matches + 1
    );
    // The sample-like event renders fine.
    assert_eq!(rs.evaluate(&ModelEvent::Leg(leg())).len(), 2);
}

#[test]
fn all_compile_errors_at_once() {
    let errs = errors(
        r#"
env: [CALLHOOK_SURELY_UNSET_VAR_X, "bad-name"]
rewrite:
  - { field: callee, match: "_[12", strip: 1 }
  - { field: caller, match: "_X." }
rules:
  - name: a
    target: nope
    url: "http://127.0.0.1:8080/x?pi=%CALLER_IDD%&ext=%EXTENSION%"
    when: { state: ringin, direction: inbound, scope: call, role: callee, caller: "/(/" }
  - name: a
    target: crm
    url: "http://%HOST%/x"
    max_age: 30x
    json: { a: 1 }
    body: "x"
  - name: c
    target: crm
    url: "ftp://x/"
    method: "PO ST"
    headers: { "X-A": "{{call.duraton}}", "X-B": "{{#if}}" }
  - name: d
    when: { scope: call }
    target: crm
    url: "http://h/{{call.extensions_rung}}"
    json: { who: "{{leg.extension}}", key: "{{env.CRM_TOKEN}}" }
  - name: e
    when: { disposition: [BUSY, nope], state: ringing, queue: [] }
    target: crm
    url: "http://h/"
    form: { a: [1, 2] }
    idempotency_key: "%caller_id%"
"#,
    );
    if std::env::var("SHOW_ERRS").is_ok() {
        eprintln!("{}", dump(&errs));
    }
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    let want = [
        "env[0]",
        "env[1]",
        "rewrite[0].field",
        "rewrite[0].match",
        "rewrite[1]",
        "rules[0].target",
        "rules[0].when.state",
        "rules[0].when.direction",
        "rules[0].when.caller",
        "rules[0].when.role",
        "rules[0].url",
        "rules[1].name",
        "rules[1].body",
        "rules[1].url",
        "rules[1].max_age",
        "rules[2].url",
        "rules[2].headers.X-A",
        "rules[2].headers.X-B",
        "rules[2].method",
        "rules[3].url",
        "rules[3].json.who",
        "rules[3].json.key",
        "rules[4].when.disposition",
        "rules[4].when.queue",
        "rules[4].form.a",
        "rules[4].idempotency_key",
    ];
    for w in want {
        assert!(fields.contains(&w), "missing {w} in:\n{}", dump(&errs));
    }
    let find = |f: &str| errs.iter().find(|e| e.field == f).unwrap();
    let url = find("rules[0].url");
    assert_eq!(url.message, "unknown placeholder %CALLER_IDD%");
    assert_eq!(url.needle.as_deref(), Some("%CALLER_IDD%"));
    assert!(url
        .hint
        .as_deref()
        .unwrap()
        .starts_with("did you mean %CALLER_ID%?"));
    assert_eq!(url.rule_index, Some(0));
    assert_eq!(url.rule_name.as_deref(), Some("a"));
    let st = find("rules[0].when.state");
    assert!(
        st.hint
            .as_deref()
            .unwrap()
            .starts_with("did you mean ringing?"),
        "{st}"
    );
    assert_eq!(st.needle.as_deref(), Some("ringin"));
    assert!(find("rules[1].url")
        .message
        .contains("host and port must be written literally"));
    assert_eq!(find("rules[1].max_age").needle.as_deref(), Some("30x"));
    assert!(find("rules[1].name").message.contains("two rules"));
    assert!(find("env[0]").message.contains("not set"));
    let d = find("rules[3].url");
    assert!(d.message.contains("call_state"), "{d}");
    assert!(d.hint.as_deref().unwrap().contains("state: hungup"), "{d}");
    assert!(find("rules[3].json.who")
        .hint
        .as_deref()
        .unwrap()
        .contains("`leg` is null"));
    assert!(find("rules[3].json.key").message.contains("env.CRM_TOKEN"));
    // A missing header path is reported even though a sibling header and
    // other fields of that rule are broken too.
    assert!(find("rules[2].headers.X-A")
        .hint
        .as_deref()
        .unwrap()
        .contains("call.duration"));
    assert_eq!(
        find("rules[2].headers.X-B").message,
        "handlebars syntax error at line 1, column 8"
    );
    // The "restrict state" hint only when the path exists on the other kind.
    assert!(!find("rules[3].json.who")
        .hint
        .as_deref()
        .unwrap()
        .contains("restrict"));
    assert!(find("rules[3].json.key")
        .hint
        .as_deref()
        .unwrap()
        .contains("env: [CRM_TOKEN]"));
    assert!(errs.iter().all(|e| !e.to_string().is_empty()));
}

#[test]
fn missing_paths_reported_with_other_errors() {
    let errs = errors(
        r#"
rules:
  - { name: a, target: nope, url: "http://h/", headers: { X-A: "{{call.duraton}}" } }
"#,
    );
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        vec!["rules[0].target", "rules[0].headers.X-A"],
        "{}",
        dump(&errs)
    );
    assert_eq!(errs[1].needle.as_deref(), Some("call.duraton"));
    assert!(errs[1]
        .hint
        .as_deref()
        .unwrap()
        .starts_with("did you mean `call.duration`?"));
}

fn dump(errs: &[RuleError]) -> String {
    errs.iter()
        .map(|e| format!("{e} [needle {:?}]", e.needle))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn display() {
    let e = RuleError {
        rule_index: Some(2),
        rule_name: Some("call-log".into()),
        field: "rules[2].url".into(),
        message: "unknown placeholder %X%".into(),
        hint: Some("valid: …".into()),
        needle: Some("%X%".into()),
    };
    assert_eq!(
        e.to_string(),
        "rules[2].url (rule \"call-log\"): unknown placeholder %X% (hint: valid: …)"
    );
}

#[test]
fn empty_set() {
    let rs = RuleSet::default();
    assert!(rs.is_empty());
    assert!(rs.evaluate(&ModelEvent::Leg(leg())).is_empty());
    let rs = set("{}");
    assert_eq!(rs.len(), 0);
}

#[test]
fn rule_sets_can_be_shared_between_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RuleSet>();
    let rs = set("rules: [{ name: r, when: { scope: [call] }, target: crm, url: 'http://h/' }]");
    assert_eq!(rs.evaluate(&ModelEvent::Call(record())).len(), 1);
}
