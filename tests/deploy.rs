//! `deploy/` is part of the product: the systemd unit and the example
//! config work together (run here the way the unit runs them), and the
//! Grafana dashboard and the Prometheus alert rules only use metrics that a
//! real scrape of the running binary has. (`systemd-analyze verify`,
//! `systemd-analyze security` and `promtool check|test rules` run in
//! `.ci/run`.)

mod support_daemon;
mod support_http;
mod support_tmp;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use callhook::ami::simulator::{AfterCapture, Simulator};
use regex::Regex;
use serde_json::Value;
use support_daemon::{assert_success, fixture, free_port, temp_dir, Daemon, WAIT};
use support_http::Sink;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

/// The metric names a PromQL expression reads (functions, keywords, label
/// names, label values, ranges and Grafana variables left out).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let label_values = Regex::new(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)[^)]*\)").unwrap();
    let strings = Regex::new(r#""(?:[^"\\]|\\.)*""#).unwrap();
    let matchers = Regex::new(r"\{[^}]*\}").unwrap();
    let ranges = Regex::new(r"\[[^\]]*\]").unwrap();
    let grouping =
        Regex::new(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)").unwrap();
    let vars = Regex::new(r"\$\{?\w+\}?").unwrap();
    let ident = Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*").unwrap();
    let s = label_values.replace_all(expr, "$1");
    let s = strings.replace_all(&s, " ");
    let s = matchers.replace_all(&s, " ");
    let s = ranges.replace_all(&s, " ");
    let s = grouping.replace_all(&s, " ");
    let s = vars.replace_all(&s, " ");
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "Inf",
        "NaN",
    ];
    ident
        .find_iter(&s)
        // Not the tail of a number (`1e3`) …
        .filter(|m| {
            !s[..m.start()]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        })
        // … nor a function.
        .filter(|m| !s[m.end()..].trim_start().starts_with('('))
        .map(|m| m.as_str().to_string())
        .filter(|n| !KEYWORDS.contains(&n.as_str()))
        .collect()
}

#[test]
fn promql_metric_names_are_extracted() {
    let got = metric_names(
        r#"histogram_quantile(0.95, sum by (target, le) (rate(callhook_delivery_seconds_bucket{instance=~"$instance", x="a{b}"}[$__rate_interval]))) / on (target) group_left (pbx) callhook_up > 1e3 and time() - foo:bar offset 5m"#,
    );
    let want: BTreeSet<String> = ["callhook_delivery_seconds_bucket", "callhook_up", "foo:bar"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        metric_names("label_values(callhook_build_info, instance)"),
        ["callhook_build_info".to_string()].into()
    );
}

/// Every `expr` of the dashboard (panels, rows, templating).
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        ("query", Value::String(q)) if q.contains('(') => out.push(q.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let v: Value = serde_json::from_str(&read("grafana/callhook.json")).unwrap();
    let mut out = Vec::new();
    walk(&v, &mut out);
    out
}

/// Every `expr:` of the alert rules (one line each, by convention of the file).
fn rule_exprs() -> Vec<String> {
    read("prometheus/callhook.rules.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect()
}

#[test]
fn every_alert_rule_has_a_promtool_test() {
    let rules = read("prometheus/callhook.rules.yml");
    let tests = read("prometheus/callhook.rules.test.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    assert_eq!(alerts.len(), rule_exprs().len());
    for a in &alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {a}\n        exp_alerts:\n          - exp_labels"
            )),
            "{a} has no test where it fires"
        );
    }
    // The issue's list: AMI down, delivery failures, outbox backlog and
    // oldest age, dead deliveries, reload failed, push auth failures.
    for want in [
        "CallhookAmiDown",
        "CallhookDeliveriesFailing",
        "CallhookOutboxBacklog",
        "CallhookOutboxOldestAge",
        "CallhookDeliveriesDead",
        "CallhookReloadFailed",
        "CallhookPushAuthFailures",
    ] {
        assert!(alerts.contains(&want), "{want}");
    }
}

/// Sample names and full samples of a scrape.
fn parse_scrape(text: &str) -> (BTreeSet<String>, BTreeMap<String, f64>) {
    let mut names = BTreeSet::new();
    let mut samples = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = l.find(['{', ' ']).unwrap_or(l.len());
        names.insert(l[..name_end].to_string());
        if let Some((k, v)) = l.rsplit_once(' ') {
            if let Ok(v) = v.parse() {
                samples.insert(k.to_string(), v);
            }
        }
    }
    (names, samples)
}

const USER: &str = "amiuser";
const SECRET: &str = "deploy-e2e-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_use_only_metrics_of_a_real_scrape_and_known_series_start_at_zero(
) {
    let sink = Sink::start().await;
    // A PBX that logs in and plays nothing: the scrape is taken before any event.
    let sim = Simulator::new(USER, SECRET)
        .session(Vec::new(), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let dir = temp_dir("deploy-scrape");
    let (listen, admin) = (free_port(), free_port());
    let cfg = format!(
        r#"listen: 127.0.0.1:{listen}
state_dir: {state}
admin: {{ token: "${{DEPLOY_ADMIN_TOKEN}}", listen: 127.0.0.1:{admin} }}
pbx:
  - id: main
    ami: {{ host: 127.0.0.1, port: {port}, username: {USER}, secret: "${{DEPLOY_AMI_SECRET}}" }}
push:
  teams:
    acme: {{ token: "${{DEPLOY_PUSH_TOKEN}}" }}
targets:
  crm: {{ timeout: 2s }}
rules:
  - name: pop
    when: {{ state: ringing }}
    target: crm
    url: "http://{sink}/pop?pi=%CALLER_ID%"
"#,
        state = dir.join("state").display(),
        port = sim.local_addr().port(),
        sink = sink.addr,
    );
    let started = callhook::source::now_epoch();
    let d = Daemon::start(
        &cfg,
        &dir,
        &[
            ("DEPLOY_ADMIN_TOKEN", "deploy-admin-token"),
            ("DEPLOY_AMI_SECRET", SECRET),
            ("DEPLOY_PUSH_TOKEN", "deploy-push-token-1"),
        ],
    );
    d.wait_http().await;
    // `callhook_ami_events_total{pbx,event}` has an open label set (event
    // names), so it cannot be exported at 0: it appears with the login's
    // `FullyBooted`. Wait for that (a loaded machine may scrape first).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = d.metrics_text().await.unwrap_or_default();
        if text.contains("callhook_ami_events_total{") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let (names, samples) = parse_scrape(&text);
    let mut missing = Vec::new();
    for e in dashboard_exprs().iter().chain(rule_exprs().iter()) {
        let used = metric_names(e);
        assert!(!used.is_empty(), "no metric in {e:?}");
        for n in used {
            if !names.contains(&n) {
                missing.push(format!("{n} (in {e})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in the scrape:\n{}",
        missing.join("\n")
    );
    // Series with known labels exist at 0 before anything happened.
    for s in [
        r#"callhook_ami_reconnects_total{pbx="main"}"#,
        r#"callhook_ami_queue_dropped_total{pbx="main"}"#,
        r#"callhook_ami_packets_skipped_total{pbx="main",reason="oversized"}"#,
        r#"callhook_calls_closed_abnormally_total{pbx="acme",reason="max_age"}"#,
        r#"callhook_live_calls{pbx="acme"}"#,
        r#"callhook_calls_finished_total{direction="incoming",disposition="NO ANSWER"}"#,
        r#"callhook_leg_transitions_total{direction="internal",state="answered"}"#,
        r#"callhook_deliveries_total{outcome="dead",target="crm"}"#,
        r#"callhook_deliveries_total{outcome="delivered",target="crm"}"#,
        r#"callhook_deliveries_enqueued_total{target="crm"}"#,
        r#"callhook_delivery_retries_total{target="crm"}"#,
        r#"callhook_breaker_state{target="crm"}"#,
        r#"callhook_target_disabled{target="crm"}"#,
        r#"callhook_delivery_seconds_count{target="crm"}"#,
        r#"callhook_outbox_waiting{target="crm"}"#,
        r#"callhook_outbox_oldest_waiting_age_seconds{target="crm"}"#,
        r#"callhook_rule_matches_total{rule="pop"}"#,
        r#"callhook_render_errors_total{rule="pop"}"#,
        r#"callhook_config_reloads_total{outcome="failure"}"#,
        r#"callhook_push_requests_total{outcome="unauthorized",team="unknown"}"#,
        r#"callhook_push_requests_total{outcome="accepted",team="acme"}"#,
        r#"callhook_http_connections_refused_total{listener="listen",reason="total_cap"}"#,
        r#"callhook_http_connections_closed_total{listener="admin",reason="evicted"}"#,
        r#"callhook_admin_unauthorized_total"#,
    ] {
        assert_eq!(samples.get(s), Some(&0.0), "{s} is not exported at 0");
    }
    let build = format!(
        r#"callhook_build_info{{commit="{}",version="{}"}}"#,
        callhook::app::BUILD_COMMIT,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(samples.get(&build), Some(&1.0), "{build}");
    let loaded = samples["callhook_config_last_reload_success_timestamp_seconds"];
    assert!(
        loaded >= started - 1.0 && loaded <= callhook::source::now_epoch(),
        "{loaded}"
    );
    assert!(samples["process_resident_memory_bytes"] > 1e6);
    assert!(samples["process_open_fds"] >= 5.0);
    assert!(samples["process_max_fds"] >= samples["process_open_fds"]);
    assert!((samples["process_start_time_seconds"] - started).abs() < 60.0);
    assert!(samples["process_threads"] >= 2.0);
    assert!(samples.contains_key("process_cpu_seconds_total"));
    assert!(samples[r#"callhook_http_connection_limit{listener="listen"}"#] >= 4.0);
}

/// `Key=value` lines of a unit file (all values of repeated keys).
fn unit(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with('#') || l.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            out.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    out
}

fn one<'a>(u: &'a BTreeMap<String, Vec<String>>, k: &str) -> &'a str {
    match u.get(k).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{k}= should be set once: {other:?}"),
    }
}

/// Replaces `from` (which must be in `text`) by `to`.
fn rewrite(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the example config no longer has {from:?}"
    );
    text.replacen(from, to, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_and_the_example_config_work_together() {
    use std::os::unix::net::UnixDatagram;
    let u = unit(&read("callhook.service"));
    let example = read("callhook.example.yaml");
    assert_eq!(one(&u, "Type"), "notify");
    assert_eq!(one(&u, "NotifyAccess"), "main");
    assert_eq!(one(&u, "StateDirectory"), "callhook");
    assert_eq!(one(&u, "StateDirectoryMode"), "0700");
    assert_eq!(one(&u, "UMask"), "0077");
    let nofile: u64 = one(&u, "LimitNOFILE").parse().unwrap();
    assert!(nofile >= 4096);
    // This machine may not allow as many: as much of it as we may set.
    let nofile = nofile.min(callhook::http::fds::raise_nofile_limit().unwrap().hard);
    let watchdog = callhook::config::parse_duration(one(&u, "WatchdogSec")).unwrap();
    let exec: Vec<&str> = one(&u, "ExecStart").split_whitespace().collect();
    assert_eq!(exec[..3], ["/usr/local/bin/callhook", "run", "--config"]);
    let config_path = exec[3];
    assert_eq!(config_path, "/etc/callhook/callhook.yaml");
    // The config's state_dir is the unit's state directory.
    assert!(
        example.contains("\nstate_dir: /var/lib/callhook "),
        "state_dir"
    );
    // Every credential the config reads is loaded by the unit, and only those.
    let creds: BTreeMap<String, String> = u["LoadCredential"]
        .iter()
        .map(|c| {
            let (id, path) = c.split_once(':').unwrap();
            assert!(path.starts_with("/etc/callhook/"), "{c}");
            (id.to_string(), path.to_string())
        })
        .collect();
    let used: BTreeSet<String> = Regex::new(r"\$\{CREDENTIALS_DIRECTORY\}/([A-Za-z0-9_.-]+)")
        .unwrap()
        .captures_iter(&example)
        .map(|c| c[1].to_string())
        .collect();
    assert_eq!(used, creds.keys().cloned().collect::<BTreeSet<_>>());
    // The template variables come from the EnvironmentFile=, whose example
    // defines each of them.
    assert_eq!(one(&u, "EnvironmentFile"), "-/etc/callhook/callhook.env");
    let env_file: Vec<(String, String)> = read("callhook.env.example")
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let env_line = example.lines().find(|l| l.starts_with("env:")).unwrap();
    for var in Regex::new(r"[A-Z][A-Z0-9_]+").unwrap().find_iter(env_line) {
        assert!(
            env_file.iter().any(|(k, _)| k == var.as_str()),
            "{} is not in callhook.env.example",
            var.as_str()
        );
    }

    // Run it as the unit would: credentials in $CREDENTIALS_DIRECTORY, the
    // environment file and Environment= set, LimitNOFILE=, NOTIFY_SOCKET
    // and WATCHDOG_USEC; only the addresses, the state directory, the PBX
    // and the CRM are pointed at this test's.
    let dir = temp_dir("deploy-unit");
    let cred_dir = dir.join("credentials");
    std::fs::create_dir_all(&cred_dir).unwrap();
    let secret_of = |id: &str| format!("{id}-value-0123456789");
    for id in creds.keys() {
        std::fs::write(cred_dir.join(id), format!("{}\n", secret_of(id))).unwrap();
    }
    let sink = Sink::start().await;
    let sim = Simulator::new("callhook", secret_of("ami-secret"))
        .session(
            fixture("asterisk-20/queue-answered.ami"),
            AfterCapture::StayOpen,
        )
        .start()
        .await
        .unwrap();
    let (listen, admin) = (free_port(), free_port());
    let cfg = rewrite(
        &example,
        "listen: 0.0.0.0:9188",
        &format!("listen: 127.0.0.1:{listen}"),
    );
    let cfg = rewrite(
        &cfg,
        "listen: 127.0.0.1:9189",
        &format!("listen: 127.0.0.1:{admin}"),
    );
    let cfg = rewrite(
        &cfg,
        "state_dir: /var/lib/callhook",
        &format!("state_dir: {}", dir.join("state").display()),
    );
    let cfg = rewrite(&cfg, "host: 192.0.2.10", "host: 127.0.0.1");
    let cfg = rewrite(
        &cfg,
        "port: 5038",
        &format!("port: {}", sim.local_addr().port()),
    );
    let cfg = rewrite(
        &cfg,
        "https://crm.example.com",
        &format!("http://{}", sink.addr),
    );
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut env: Vec<(String, String)> = env_file.clone();
    for e in &u["Environment"] {
        let (k, v) = e.split_once('=').unwrap();
        env.push((k.into(), v.into()));
    }
    env.push((
        "CREDENTIALS_DIRECTORY".into(),
        cred_dir.display().to_string(),
    ));
    env.push(("NOTIFY_SOCKET".into(), sock_path.display().to_string()));
    env.push(("WATCHDOG_USEC".into(), watchdog.as_micros().to_string()));
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // `callhook check` agrees.
    std::fs::write(dir.join("check.yaml"), &cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["check", "--config"])
        .arg(dir.join("check.yaml"))
        .envs(env_ref.iter().copied())
        .output()
        .unwrap();
    assert_success(&out);
    let mut d = Daemon::start_limited(&cfg, &dir, &env_ref, nofile);
    d.admin = Some(format!("127.0.0.1:{admin}").parse().unwrap());
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("no READY=1");
    assert!(buf[..n].starts_with(b"READY=1"));
    let c = reqwest::Client::new();
    let admin_token = secret_of("admin-token");
    // Public: push and /healthz; admin: the rest, with the credential token.
    assert_eq!(c.get(d.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(d.url("/metrics")).send().await.unwrap().status(), 404);
    let r = c
        .post(d.url("/v1/events/astercc"))
        .header("X-Callhook-Token", secret_of("acme-push-token"))
        .form(&[("sessionid", "deploy.1"), ("event", "ringing")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(d.admin_url("/api/outbox"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The AMI secret from its credential logs in; the call log goes out
    // with the token from the environment file.
    let deadline = Instant::now() + WAIT;
    while c.get(d.admin_url("/readyz")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = sink.wait_for(1).await;
    let crm_token = &env_file.iter().find(|(k, _)| k == "CRM_TOKEN").unwrap().1;
    assert_eq!(got[0].path(), "/api/calls");
    assert_eq!(
        got[0].header("authorization").as_deref(),
        Some(format!("Bearer {crm_token}").as_str())
    );
    assert_eq!(
        d.metric("process_max_fds").await,
        Some(nofile as f64),
        "LimitNOFILE= in force"
    );
    let (_, status, err) = d.stop();
    assert!(status.success(), "{err}");
}
