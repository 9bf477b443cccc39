use super::*;

fn errs(text: &str) -> Vec<String> {
    match Config::from_text(text, Path::new(".")) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(|e| e.render(Path::new("c.yaml"))).collect(),
    }
}

#[test]
fn every_error_is_reported_and_secrets_are_redacted() {
    std::env::set_var("CALLHOOK_TEST_SECRET", "s3cret");
    let e = errs(
        r#"
pbx:
  - id: main
    ami: { host: 127.0.0.1, username: u, secret: "${CALLHOOK_TEST_SECRET}" }
  - id: main
    ami: { host: 127.0.0.1, username: u, secret: "${CALLHOOK_TEST_UNSET_VAR}", ping_interval: soon, auth: kerberos }
classify: { extension_pattern: "(" }
"#,
    );
    assert_eq!(e.len(), 5, "{e:#?}");
    for (i, want) in [
        "c.yaml:5:9: pbx[1].id: duplicate PBX id",
        "c.yaml:6:51: pbx[1].ami.secret: environment variable CALLHOOK_TEST_UNSET_VAR",
        "c.yaml:6:95: pbx[1].ami.ping_interval: \"soon\" is not a duration",
        "c.yaml:6:107: pbx[1].ami.auth: unknown auth",
        "c.yaml:7:32: classify.extension_pattern: invalid regex",
    ]
    .iter()
    .enumerate()
    {
        assert!(e[i].starts_with(want), "{i}: {want:?} in {e:#?}");
    }
    let ok = Config::from_text(
        "pbx: [{id: a, ami: {host: h, username: u, secret: \"${CALLHOOK_TEST_SECRET}\"}}]",
        Path::new("."),
    )
    .unwrap();
    assert_eq!(ok.pbx[0].secret.expose(), "s3cret");
    assert!(!format!("{ok:?}").contains("s3cret"));
}

#[test]
fn unknown_keys_are_errors_with_a_location() {
    let e = errs("pbx: []\nclasify: {}\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("c.yaml:2:1: clasify: unknown key `clasify` (did you mean `classify`?)"),
        "{e:?}"
    );
}
