//! `callhook check` with the real binary: every error in one run (structural
//! ones included), positions from the parser (never inside a comment), no
//! follow-on errors, sorted by file and position, the same refusals as
//! `run`, and warnings.

mod support_daemon;
mod support_tmp;

use std::path::Path;
use std::process::Output;

use support_daemon::{assert_success, temp_dir};

fn check(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"));
    cmd.args(["check", "--config"]).arg(path);
    cmd.env_remove("CALLHOOK_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The error lines (`FILE:LINE:COL: …`) of a failed check.
fn error_lines(out: &Output) -> Vec<String> {
    assert!(!out.status.success(), "check accepted it");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("  warning:"))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn a_typo_in_a_key_does_not_hide_the_rule_errors_behind_it() {
    let dir = temp_dir("check-all");
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        r#"pbx:
  - id: main
    ami: { host: 127.0.0.1, username: u, secret: s, auht: md5 }
targets:
  crm: { rate_limit: 20/sec, timeout: soon }
rules:
  - name: a
    target: nope
    url: "http://127.0.0.1/%CALLER_IDD%"
  - name: a
    target: crm
    url: "http://127.0.0.1/x"
    max_age: never
  - name: c
    target: crm
    url: "http://127.0.0.1/x"
    method: "P O S T"
    when: { state: sleeping }
"#,
    )
    .unwrap();
    let lines = error_lines(&check(&path, &[]));
    let f = path.display().to_string();
    let want = [
        ":3:53: pbx[0].ami.auht: unknown key `auht` (did you mean `auth`?)",
        ":5:22: targets.crm.rate_limit:",
        ":5:39: targets.crm.timeout:",
        ":8:13: rules[0].target: (rule \"a\") unknown target \"nope\"",
        ":9:28: rules[0].url: (rule \"a\") unknown placeholder %CALLER_IDD%",
        ":10:11: rules[1].name: two rules are named \"a\"",
        ":13:14: rules[1].max_age:",
        ":17:14: rules[2].method: (rule \"c\") invalid HTTP method",
        ":18:20: rules[2].when.state: (rule \"c\")",
    ];
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (l, w) in lines.iter().zip(want) {
        assert!(
            l.starts_with(&format!("{f}{w}")),
            "want {w:?}, got {l:?}\nall: {lines:#?}"
        );
    }
    let err = String::from_utf8_lossy(&check(&path, &[]).stderr).to_string();
    assert!(err.contains("9 errors"), "{err}");
}

#[test]
fn positions_come_from_the_parser_never_from_a_comment() {
    let dir = temp_dir("check-comments");
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/log.yaml"),
        r#"# Example: rate_limit: 20/sec, url with %CALLER_IDD% or target: crn
targets:
  crm: { rate_limit: 20/sec }   # rate_limit: 20/sec
rules:
  # target: crn
  - name: log   # %CALLER_IDD%
    target: crn
    url: "http://127.0.0.1/%CALLER_IDD%"
"#,
    )
    .unwrap();
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        "# include: [rules/log.yaml]\npbx: [{ id: main, ami: { host: h, username: u, secret: s } }]\ninclude: [rules/log.yaml]\n",
    )
    .unwrap();
    let lines = error_lines(&check(&path, &[]));
    let inc = dir.join("rules/log.yaml").display().to_string();
    let want = [
        format!("{inc}:3:22: targets.crm.rate_limit:"),
        format!("{inc}:7:13: rules[0].target:"),
        format!("{inc}:8:28: rules[0].url:"),
    ];
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (l, w) in lines.iter().zip(&want) {
        assert!(l.starts_with(w.as_str()), "want {w:?}, got {l:?}");
    }
}

#[test]
fn an_unset_variable_is_one_error_not_two() {
    let dir = temp_dir("check-env");
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        r#"pbx: [{ id: main, ami: { host: h, username: u, secret: s } }]
targets: { crm: {} }
env: [CHECK_TEST_UNSET_TOKEN]
rules:
  - name: log
    target: crm
    url: "http://127.0.0.1/log"
    headers: { Authorization: "Bearer {{env.CHECK_TEST_UNSET_TOKEN}}" }
"#,
    )
    .unwrap();
    let lines = error_lines(&check(&path, &[]));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains(":3:7: env[0]: environment variable CHECK_TEST_UNSET_TOKEN is not set"),
        "{lines:#?}"
    );
    // Set, it is fine.
    let out = check(&path, &[("CHECK_TEST_UNSET_TOKEN", "t")]);
    assert_success(&out);
}

#[test]
fn errors_are_sorted_by_file_then_position() {
    let dir = temp_dir("check-sort");
    std::fs::write(
        dir.join("b.yaml"),
        "rules:\n  - { name: b1, target: crm, url: \"http://x/%NOPE%\" }\nbogus: 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        "targets: { crm: { burst: 0 } }\nrules:\n  - { name: a1, target: crm, url: \"http://x/\", stp: true }\n",
    )
    .unwrap();
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        "pbx: [{ id: main, ami: { host: h, username: u, secret: s, port: many } }]\ninclude: [a.yaml, b.yaml]\nrules:\n  - { name: m1, target: crm, url: \"http://x/\", max_age: x }\n",
    )
    .unwrap();
    let lines = error_lines(&check(&path, &[]));
    let at: Vec<String> = lines
        .iter()
        .map(|l| {
            let file = Path::new(l.split(':').next().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            let lc: Vec<&str> = l.splitn(4, ':').skip(1).take(2).collect();
            format!("{file}:{}:{}", lc[0], lc[1])
        })
        .collect();
    assert_eq!(
        at,
        [
            "c.yaml:1:65",
            "c.yaml:4:57",
            "a.yaml:1:26",
            "a.yaml:1:26",
            "a.yaml:3:48",
            "b.yaml:2:45",
            "b.yaml:3:1",
        ],
        "{lines:#?}"
    );
}

#[test]
fn check_refuses_what_run_refuses_and_warns() {
    let dir = temp_dir("check-refuse");
    for (name, text, want) in [
        ("empty.yaml", "", "the file is empty"),
        ("comments.yaml", "# nothing yet\n", "the file is empty"),
        (
            "nosource.yaml",
            "listen: 127.0.0.1:0\n",
            "no source configured",
        ),
        ("list.yaml", "- a\n- b\n", "expected struct RawConfig"),
        ("syntax.yaml", "pbx: [\n", "YAML syntax error"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = check(&path, &[]);
        assert!(!out.status.success(), "{name} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{name}: {err}");
        // `run` refuses it too.
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
            .args(["run", "--config"])
            .arg(&path)
            .env_remove("CALLHOOK_CONFIG")
            .output()
            .unwrap();
        assert!(!run.status.success(), "run accepted {name}");
    }
    // Loads, but sends nothing and has no listener: ok with two warnings.
    let path = dir.join("quiet.yaml");
    std::fs::write(
        &path,
        "pbx: [{ id: main, ami: { host: h, username: u, secret: s } }]\n",
    )
    .unwrap();
    let out = check(&path, &[]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("ok (1 PBX, 0 targets, 0 rules, 2 warnings)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: ") && stderr.contains("no rules"),
        "{stderr}"
    );
    assert!(stderr.contains("no HTTP listener"), "{stderr}");
}

#[test]
fn callhook_config_names_the_file_for_check() {
    let dir = temp_dir("check-env-config");
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:0\npbx: [{ id: main, ami: { host: h, username: u, secret: s } }]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .arg("check")
        .env("CALLHOOK_CONFIG", &path)
        .output()
        .unwrap();
    assert_success(&out);
}
