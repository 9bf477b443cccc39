//! The `push:` section: defaults, and every problem reported at once.

use std::path::Path;

use callhook::config::{Config, DEFAULT_PUSH_PATH};

mod support_tmp;
use support_tmp::TestDir;

fn errors(text: &str) -> Vec<String> {
    match Config::from_text(text, Path::new(".")) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn defaults_and_secrets() {
    std::env::set_var("PUSH_CFG_ACME_TOKEN", "acme-0123456789");
    let dir = TestDir::new("push-cfg");
    std::fs::write(dir.join("beta.token"), "beta-0123456789\n").unwrap();
    let text = "listen: 127.0.0.1:0\npush:\n  teams:\n    acme: { token: \"${PUSH_CFG_ACME_TOKEN}\", timezone: \"-03:00\" }\n    beta: { token_file: beta.token }\n";
    let cfg = Config::from_text(text, &dir).unwrap();
    let p = cfg.push.as_ref().unwrap();
    assert_eq!(p.path, DEFAULT_PUSH_PATH);
    assert_eq!(p.token_param, "token");
    assert_eq!(p.token_header, "X-Callhook-Token");
    assert_eq!(p.teams.len(), 2);
    assert_eq!(p.teams[0].name, "acme");
    assert_eq!(p.teams[0].token.expose(), "acme-0123456789");
    assert_eq!(
        p.teams[0]
            .timezone
            .to_offset(jiff::Timestamp::UNIX_EPOCH)
            .seconds(),
        -3 * 3600
    );
    assert_eq!(p.teams[1].token.expose(), "beta-0123456789");
    assert_eq!(cfg.normalizer.push_settle, 2.0);
    assert!(
        !format!("{cfg:?}").contains("0123456789"),
        "tokens are redacted"
    );
    // No push section: nothing mounted.
    assert!(Config::from_text("listen: 127.0.0.1:0\n", &dir)
        .unwrap()
        .push
        .is_none());
}

#[test]
fn every_push_problem_is_reported_at_once() {
    let e = errors(
        r#"
pbx:
  - id: main
    ami: { host: 127.0.0.1, username: u, secret: s }
push:
  path: /metrics
  token_param: "a b"
  token_header: "bad header"
  settle: soon
  teams:
    main: { token: "main-0123456789" }
    acme: { token: "shared-0123456789", timezone: Mars }
    beta: { token: "shared-0123456789" }
    gamma: {}
    delta: { token: "x", token_file: /nonexistent }
    "bad name": { token: "bad-0123456789" }
    short: { token: "abc" }
"#,
    );
    let want = [
        "push: the push endpoint needs an HTTP listener",
        "push.path: \"/metrics\" is already used by callhook",
        "push.token_param:",
        "push.token_header:",
        "push.settle:",
        "push.teams.main: \"main\" is also a PBX id",
        "push.teams.acme.timezone: \"Mars\" is not a time zone",
        "push.teams.beta.token: is the same as another team's token",
        "push.teams.gamma.token: no token",
        "push.teams.delta: both token and token_file are set",
        "push.teams.bad name: \"bad name\" is not a usable team name",
        "push.teams.short.token: is shorter than 8 characters",
    ];
    for w in want {
        assert!(
            e.iter().any(|x| x.starts_with(w)),
            "missing {w:?} in {e:#?}"
        );
    }
    assert_eq!(e.len(), want.len(), "{e:#?}");
    assert!(errors("listen: 127.0.0.1:0\npush: { teams: {} }\n")
        .iter()
        .any(|x| x.starts_with("push.teams: no teams")),);
    for bad in ["v1/events", "/a b", "/x/:id", "/api/deliveries"] {
        let e = errors(&format!(
            "listen: 127.0.0.1:0\npush: {{ path: \"{bad}\", teams: {{ a: {{ token: \"a-0123456789\" }} }} }}\n"
        ));
        assert!(
            e.iter().any(|x| x.starts_with("push.path")),
            "{bad}: {e:#?}"
        );
    }
}

#[test]
fn unknown_push_keys_are_errors() {
    let e = errors(
        "listen: 127.0.0.1:0\npush:\n  teams: { a: { token: \"a-0123456789\", tz: \"+01:00\" } }\n",
    );
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("tz"), "{e:?}");
    let e = errors(
        "listen: 127.0.0.1:0\npush:\n  pth: /x\n  teams: { a: { token: \"a-0123456789\" } }\n",
    );
    assert!(e[0].contains("pth"), "{e:?}");
}
