//! The ready rule sets under `rules/`, each loaded as a user would
//! (`include:` from a config) and run on real captures.

use std::path::Path;
use std::sync::Arc;

use callhook::config::Config;
use callhook::deliver::DeliveryRequest;
use callhook::normalize::Normalizer;
use callhook::replay::replay;
use serde_json::Value;

mod support_app;
mod support_tmp;
use support_tmp::TestDir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn config_including(rule_file: &str) -> Config {
    std::env::set_var("CRM_TOKEN", "test-token");
    std::env::set_var("ASTERCC_PUSH_TOKEN", "test-push-token");
    std::env::set_var(
        "FEED_WEBHOOK_SECRET",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    );
    let text = format!("state_dir: /nonexistent\ninclude: [rules/{rule_file}]\n");
    support_app::config(&text, root())
}

fn requests(cfg: &Config, capture: &str) -> Vec<DeliveryRequest> {
    let bytes = std::fs::read(root().join("tests/fixtures/ami").join(capture)).unwrap();
    let mut n = Normalizer::new(cfg.normalizer.clone());
    let mut out = Vec::new();
    let pbx: Arc<str> = "main".into();
    replay(&[bytes], &pbx, &mut n, |ev| {
        out.extend(cfg.rules.evaluate(ev))
    });
    out
}

fn urls(reqs: &[DeliveryRequest]) -> Vec<String> {
    reqs.iter().map(|r| r.url.clone()).collect()
}

#[test]
fn every_rule_set_and_the_example_config_validate() {
    for f in std::fs::read_dir(root().join("rules")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            let cfg = config_including(p.file_name().unwrap().to_str().unwrap());
            assert!(!cfg.rules.is_empty(), "{}", p.display());
        }
    }
    // The example config reads its secrets as systemd credentials and its
    // template variables from the environment (tests/deploy.rs runs it).
    let creds = TestDir::new("rule-sets-creds");
    for id in ["ami-secret", "admin-token", "acme-push-token"] {
        std::fs::write(creds.join(id), "credential-value-123\n").unwrap();
    }
    std::env::set_var("CREDENTIALS_DIRECTORY", &creds);
    std::env::set_var("CRM_TOKEN", "x");
    Config::load(&root().join("deploy/callhook.example.yaml")).unwrap();
}

#[test]
fn screen_pop_pops_every_ringing_phone_with_the_outside_caller() {
    let cfg = config_including("screen-pop.yaml");
    for capture in [
        "asterisk-20/queue-answered.ami",
        "asterisk-11/queue-answered.ami",
        "asterisk-11/queue-answered-noagentevents.ami",
    ] {
        let reqs = requests(&cfg, capture);
        let mut got = urls(&reqs);
        got.sort();
        assert_eq!(
            got,
            [
                "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5559876543&ext=1001&queue=ventas",
                "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5559876543&ext=1002&queue=ventas",
            ],
            "{capture}"
        );
        assert!(reqs
            .iter()
            .all(|r| r.method == "GET" && r.expires_at == Some(r.created_at + 30.0)));
    }
    assert_eq!(
        urls(&requests(&cfg, "asterisk-20/incoming-answered.ami")),
        ["http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5551234567&ext=1001&queue="]
    );
    // Outgoing, internal and click-to-call calls pop nothing.
    for capture in [
        "asterisk-20/outgoing-answered.ami",
        "asterisk-20/internal.ami",
        "asterisk-20/click-to-call.ami",
    ] {
        assert!(requests(&cfg, capture).is_empty(), "{capture}");
    }
}

#[test]
fn meetip_web_commands_paste_unchanged() {
    let cfg = config_including("meetip.yaml");
    let got = urls(&requests(&cfg, "asterisk-20/queue-answered.ami"));
    assert_eq!(
        got,
        [
            "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5559876543&ext=1002&modo=TimbreEntrante",
            "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5559876543&ext=1001&modo=TimbreEntrante",
            "http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=5559876543&tiempo=6&modo=ColgadoEntrante",
        ]
    );
    let got = urls(&requests(&cfg, "asterisk-20/outgoing-answered.ami"));
    assert_eq!(
        got,
        ["http://127.0.0.1:8080/CRM/forms/general/DbFind.aspx?pi=02122853348&ext=1001&tiempo=6&modo=ColgadoSaliente"]
    );
}

#[test]
fn call_log_posts_one_record_per_call_with_a_stable_key() {
    let cfg = config_including("call-log.yaml");
    let reqs = requests(&cfg, "asterisk-20/load-dev.ami");
    let truth: Value = serde_json::from_slice(
        &std::fs::read(root().join("tests/fixtures/ami/asterisk-20/load-dev.truth.json")).unwrap(),
    )
    .unwrap();
    let calls = truth["calls"].as_array().unwrap();
    assert_eq!(reqs.len(), calls.len());
    let keys: std::collections::BTreeSet<_> = reqs
        .iter()
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect();
    assert_eq!(keys.len(), reqs.len(), "one key per call");
    for r in &reqs {
        assert_eq!(r.method, "POST");
        // Stored masked; the dispatcher sends the configured value.
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| k == "Authorization" && v == "Bearer ***"));
        let sent = callhook::deliver::secret::revealed(r, cfg.rules.secrets()).unwrap();
        assert!(sent
            .headers
            .iter()
            .any(|(k, v)| k == "Authorization" && v == "Bearer test-token"));
        let body: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
        let id = body["call_id"].as_str().unwrap();
        let t = calls.iter().find(|c| c["linkedid"] == id).unwrap();
        assert_eq!(body["disposition"], t["disposition"], "{id}");
        assert_eq!(body["direction"], t["direction"], "{id}");
        assert_eq!(body["caller"], t["caller_number"], "{id}");
        assert!(body["duration"].is_number());
        assert_eq!(
            r.idempotency_key.as_deref(),
            Some(format!("call-main-{id}").as_str())
        );
    }
    // The same traffic again gives the same keys (replays never duplicate).
    let again = requests(&cfg, "asterisk-20/load-dev.ami");
    assert_eq!(
        again.iter().map(|r| &r.idempotency_key).collect::<Vec<_>>(),
        reqs.iter().map(|r| &r.idempotency_key).collect::<Vec<_>>()
    );
}

#[test]
fn signed_feed_sends_every_transition_to_a_signing_target() {
    let cfg = config_including("signed-feed.yaml");
    assert!(
        cfg.targets["feed"].signing.is_some(),
        "the feed target signs"
    );
    let reqs = requests(&cfg, "asterisk-20/queue-answered.ami");
    let types: Vec<String> = reqs
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
            assert_eq!(v["data"]["session_id"], "1795374648.6");
            v["type"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        types,
        [
            "call.ringing",
            "leg.ringing",
            "leg.ringing",
            "leg.answered",
            "call.answered",
            "leg.hungup",
            "leg.hungup",
            "call.hungup"
        ]
    );
    let ids: std::collections::BTreeSet<_> = reqs.iter().map(|r| r.event_id.clone()).collect();
    assert_eq!(ids.len(), reqs.len(), "webhook-id is unique per event");
}

#[test]
fn the_minimal_config_from_the_readme_is_valid_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("# callhook.yaml\n")
        .expect("quick start config");
    let yaml = &readme[start..];
    let yaml = &yaml[..yaml.find("```").unwrap()];
    std::env::set_var("AMI_SECRET", "x");
    let cfg = support_app::config(yaml, root());
    assert_eq!(cfg.pbx.len(), 1);
    assert_eq!(cfg.rules.names(), ["screen-pop", "colgado-entrante"]);
    assert_eq!(cfg.listen.map(|a| a.port()), Some(9188));
}
