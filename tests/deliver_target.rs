//! Target configuration as users write it: the documented example, TLS
//! files, secrets from files.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use callhook::deliver::{validate_targets, RawTarget};

mod support_tmp;
use support_tmp::TestDir;

fn tls_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support_http/tls"
    ))
}

#[test]
fn documented_example_validates() {
    std::env::set_var(
        "CRM_WEBHOOK_SECRET",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    );
    std::env::set_var("CRM_TOKEN", "tok-xyz");
    // The example from `deliver::target`'s documentation, with the TLS
    // file names of the test material.
    let yaml = r#"
crm:
  rate_limit: 20/s
  burst: 1
  timeout: 5s
  concurrency: 4
  retry:
    max_attempts: 10
    max_age: 1h
    initial_backoff: 1s
    max_backoff: 5m
    jitter: 0.2
  retry_after_max: 5m
  breaker:
    failure_threshold: 5
    open_for: 30s
  tls:
    ca_file: ca.pem
    client_cert_file: client.pem
    client_key_file: client.key
  signing:
    secret: "${CRM_WEBHOOK_SECRET}"
  headers:
    Authorization: "Bearer ${CRM_TOKEN}"
"#;
    let raw: BTreeMap<String, RawTarget> = callhook::yaml::de::from_str(yaml).unwrap();
    let t = validate_targets(&raw, tls_dir()).unwrap_or_else(|e| panic!("{e:#?}"));
    let crm = &t["crm"];
    assert_eq!(crm.rate.unwrap().to_string(), "20/s");
    assert_eq!(crm.timeout, Duration::from_secs(5));
    assert_eq!(crm.retry.max_backoff, Duration::from_secs(300));
    assert_eq!(crm.breaker.open_for, Duration::from_secs(30));
    assert!(crm.signing.is_some());
    let dbg = format!("{t:?}");
    assert!(
        !dbg.contains("tok-xyz") && !dbg.contains("MfKQ9r8"),
        "{dbg}"
    );
}

#[test]
fn secret_file_and_mismatched_tls_pairs() {
    let dir = TestDir::new("target-it");
    std::fs::write(dir.join("secret"), "raw-secret\n").unwrap();
    let ca = tls_dir().join("ca.pem");
    let yaml = format!(
        r#"
ok: {{ signing: {{ secret_file: secret }}, tls: {{ ca_file: "{ca}" }} }}
key-is-a-cert: {{ tls: {{ client_cert_file: "{ca}", client_key_file: "{ca}" }} }}
both: {{ signing: {{ secret: x, secret_file: secret }} }}
"#,
        ca = ca.display()
    );
    let raw: BTreeMap<String, RawTarget> = callhook::yaml::de::from_str(&yaml).unwrap();
    let errs = validate_targets(&raw, &dir).unwrap_err();
    let paths: Vec<String> = errs.iter().map(|e| e.path.to_string()).collect();
    assert_eq!(
        paths,
        [
            "targets.both.signing",
            "targets.key-is-a-cert.tls.client_cert_file"
        ],
        "{errs:#?}"
    );
    let ok: BTreeMap<String, RawTarget> = raw.into_iter().filter(|(k, _)| k == "ok").collect();
    assert!(validate_targets(&ok, &dir).is_ok());
}
