//! `callhook test` with the real binary: every ready rule set under `rules/`
//! has its tests in `rules/tests/` and they pass; a failing test is shown
//! as a diff and exits non-zero.

mod support_daemon;
mod support_tmp;

use std::path::{Path, PathBuf};

use support_daemon::temp_dir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn callhook_test(files: &[PathBuf]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .arg("test")
        .args(files)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn every_rule_set_has_tests_and_they_pass() {
    let mut files = Vec::new();
    for f in std::fs::read_dir(root().join("rules")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            let t = root().join("rules/tests").join(p.file_name().unwrap());
            assert!(t.exists(), "{} has no tests ({})", p.display(), t.display());
            files.push(t);
        }
    }
    files.sort();
    assert!(files.len() >= 6);
    let out = callhook_test(&files);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn a_failing_test_shows_what_differs_and_exits_non_zero() {
    let dir = temp_dir("ruletest-fail");
    let t = dir.join("t.yaml");
    std::fs::write(
        &t,
        format!(
            r#"rules: {rules}
tests:
  - name: the queue call pops two agents
    capture: {capture}
    expect:
      - url: "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5559876543&ext=1002&queue=ventas"
      - url: "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5559876543&ext=1001&queue=ventas"
  - name: but not a POST
    event: {{ type: leg, state: ringing, direction: incoming, role: callee, extension: "7" }}
    expect:
      - {{ method: POST, headers: {{ X-Test: "1" }} }}
  - name: and nothing for an outgoing leg
    event: {{ type: leg, state: ringing, direction: outgoing, role: caller }}
    expect: [ {{ url: "http://nowhere/" }} ]
"#,
            rules = root().join("rules/screen-pop.yaml").display(),
            capture = root()
                .join("tests/fixtures/ami/asterisk-20/queue-answered.ami")
                .display(),
        ),
    )
    .unwrap();
    let out = callhook_test(&[t]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "  ok    the queue call pops two agents",
        "  FAIL  but not a POST",
        "request 1: method\n            want: POST\n            got:  GET",
        "request 1: header X-Test\n            want: 1\n            got:  (absent)",
        "  FAIL  and nothing for an outgoing leg",
        "expected 1 request, got 0",
        "1 passed, 2 failed",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
}

#[test]
fn a_broken_test_file_names_the_line() {
    let dir = temp_dir("ruletest-broken");
    let t = dir.join("t.yaml");
    std::fs::write(
        &t,
        format!(
            "rules: {}\ntests:\n  - name: x\n    evnt: {{ type: leg }}\n    expect: []\n",
            root().join("rules/screen-pop.yaml").display()
        ),
    )
    .unwrap();
    let out = callhook_test(std::slice::from_ref(&t));
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{}:4:5: tests[0].evnt: unknown key `evnt` (did you mean `event`?)",
            t.display()
        )),
        "{stdout}"
    );
}
