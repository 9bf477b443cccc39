//! End to end: secrets never rest in clear. The real binary, a simulated
//! PBX replaying a real capture and a real sink: a rule that puts a token
//! into a header, the query and the JSON body, and a target with a static
//! credential header and a signing key. The token goes out as configured
//! (the rotated one after a restart), but no file of the state directory
//! ever holds it, `--dry-run` prints `***`, and `deliveries` / `outbox`
//! work with none of the config's secrets set.

mod support_daemon;
mod support_http;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use callhook::ami::simulator::{AfterCapture, Simulator, SimulatorHandle};
use callhook::deliver::outbox::{Outbox, OutboxOptions};
use serde_json::Value;
use support_daemon::{fixture, free_port, temp_dir, Daemon};
use support_http::{Reply, Sink};

const USER: &str = "amiuser";
const AMI_SECRET: &str = "secrets-e2e-ami-secret";
const ADMIN: &str = "admin-token-for-secrets-e2e";
/// Characters that are encoded differently in a URL, a JSON string and a
/// header, so every encoding is looked for.
const TOKEN: &str = "tok/en+S3cret=\"42\"";
const ROTATED: &str = "r0tated/t0ken&new";
const API_KEY: &str = "static-api-key-4711";
const SIGNING: &str = "signing-secret-text-0815";
const CAPTURE: &str = "asterisk-20/queue-answered.ami";

fn env(token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("E2E_AMI_SECRET", AMI_SECRET.to_string()),
        ("E2E_ADMIN_TOKEN", ADMIN.to_string()),
        ("CRM_TOKEN", token.to_string()),
        ("E2E_API_KEY", API_KEY.to_string()),
        ("E2E_SIGNING", SIGNING.to_string()),
    ]
}

fn env_ref<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn config(dir: &Path, sink: &Sink, sim: &SimulatorHandle) -> String {
    let s = sink.addr;
    format!(
        r#"listen: 127.0.0.1:{listen}
state_dir: {state}
admin: {{ token: "${{E2E_ADMIN_TOKEN}}" }}
pbx:
  - id: main
    ami: {{ host: 127.0.0.1, port: {port}, username: {USER}, secret: "${{E2E_AMI_SECRET}}" }}
env: [CRM_TOKEN]
targets:
  crm:
    timeout: 2s
    retry: {{ max_attempts: 1000, max_age: 1h, initial_backoff: 100ms, max_backoff: 300ms }}
    headers: {{ X-Api-Key: "${{E2E_API_KEY}}", X-Plain: "visible" }}
    signing: {{ secret: "${{E2E_SIGNING}}" }}
rules:
  - name: call-log
    when: {{ scope: call, state: hungup }}
    target: crm
    url: "http://{s}/calls?token={{{{env.CRM_TOKEN}}}}&from=%CALLER_ID%"
    headers: {{ Authorization: "Bearer {{{{env.CRM_TOKEN}}}}", X-Echo: "t={{{{env.CRM_TOKEN}}}}" }}
    json: {{ token: "{{{{env.CRM_TOKEN}}}}", from: "%CALLER_ID%" }}
"#,
        listen = free_port(),
        state = dir.join("state").display(),
        port = sim.local_addr().port(),
    )
}

async fn sim() -> SimulatorHandle {
    Simulator::new(USER, AMI_SECRET)
        .session(fixture(CAPTURE), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap()
}

/// Every way a value can be written into the files: as is, URL- and
/// JSON-encoded.
fn forms(v: &str) -> Vec<Vec<u8>> {
    let json = serde_json::to_string(v).unwrap();
    vec![
        v.as_bytes().to_vec(),
        callhook::template::encode_component(v).into_bytes(),
        json.as_bytes()[1..json.len() - 1].to_vec(),
    ]
}

/// Files under `dir` that hold any form of a secret: (file, secret).
fn files_holding(dir: &Path, secrets: &[&str]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map_while(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).unwrap_or_default();
            for s in secrets {
                if forms(s)
                    .iter()
                    .any(|f| bytes.windows(f.len()).any(|w| w == f.as_slice()))
                {
                    found.push((p.display().to_string(), s.to_string()));
                }
            }
        }
    }
    found
}

async fn pending_tried(d: &Daemon) -> Vec<Value> {
    let deadline = Instant::now() + support_daemon::WAIT;
    loop {
        let text = reqwest::Client::new()
            .get(d.url("/api/deliveries?status=pending"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let rows: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
        if rows.iter().any(|r| r["attempts"].as_u64() >= Some(2)) {
            return rows;
        }
        assert!(Instant::now() < deadline, "no retried delivery: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn callhook(args: &[&str], cfg: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(args)
        .arg("--config")
        .arg(cfg)
        .env_remove("CRM_TOKEN")
        .env("CALLHOOK_LOG", "warn")
        .output()
        .unwrap()
}

/// The token is stored nowhere in clear, goes out exactly as configured
/// (after a restart: the rotated value, without re-rendering), and the
/// outbox commands need none of the secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_rest_in_clear_and_go_out_as_configured_now() {
    let sink = Sink::start().await;
    sink.set_default("/calls", Reply::status(503));
    let sim = sim().await;
    let dir = temp_dir("secrets-rest");
    let cfg = dir.join("callhook.yaml");
    let e = env(TOKEN);
    let d = Daemon::start(&config(&dir, &sink, &sim), &dir, &env_ref(&e));
    d.wait_http().await;

    // Stored and retried: the sink saw the token, the files never did.
    let rows = pending_tried(&d).await;
    let seen = sink.for_path("/calls");
    let first = seen.first().expect("an attempt reached the sink");
    assert_eq!(
        first.header("authorization").as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(
        first.header("x-echo").as_deref(),
        Some(&*format!("t={TOKEN}"))
    );
    assert_eq!(first.header("x-api-key").as_deref(), Some(API_KEY));
    assert_eq!(first.header("x-plain").as_deref(), Some("visible"));
    assert!(first.header("webhook-signature").is_some());
    assert!(
        first.uri.contains(&format!(
            "token={}&",
            callhook::template::encode_component(TOKEN)
        )),
        "{}",
        first.uri
    );
    let body: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(body["token"], TOKEN);
    let state = dir.join("state");
    let all = [TOKEN, API_KEY, SIGNING];
    assert_eq!(files_holding(&state, &all), Vec::<(String, String)>::new());
    let row = rows
        .iter()
        .find(|r| r["attempts"].as_u64() >= Some(2))
        .unwrap();
    assert!(row["url"].as_str().unwrap().contains("token=***"), "{row}");
    assert!(!row.to_string().contains(TOKEN), "{row}");

    // The outbox commands, with none of the secrets in the environment.
    let out = callhook(&["deliveries", "list", "--json"], &cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("***") && text.contains("/calls"), "{text}");
    for s in all {
        assert!(!text.contains(s), "{s} in {text}");
    }
    let out = callhook(&["deliveries", "list"], &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(TOKEN));
    let out = callhook(&["outbox", "check"], &cfg);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Rotated while the delivery waits: the new value goes out.
    let (_, status, _) = d.stop();
    assert!(status.success());
    assert_eq!(files_holding(&state, &all), Vec::<(String, String)>::new());
    sink.set_default("/calls", Reply::status(200));
    let before = sink.for_path("/calls").len();
    let e = env(ROTATED);
    let d = Daemon::start_file(&cfg, &env_ref(&e));
    let deadline = Instant::now() + support_daemon::WAIT;
    let sent = loop {
        let got = sink.for_path("/calls");
        if let Some(r) = got
            .iter()
            .skip(before)
            .find(|r| r.header("x-echo").is_some())
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "nothing sent after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sent.header("authorization").as_deref(),
        Some(&*format!("Bearer {ROTATED}"))
    );
    let body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(body["token"], ROTATED);
    assert!(
        sent.uri.contains(&format!(
            "token={}&",
            callhook::template::encode_component(ROTATED)
        )),
        "{}",
        sent.uri
    );
    let (_, status, _) = d.stop();
    assert!(status.success());
    assert_eq!(
        files_holding(&state, &[TOKEN, ROTATED, API_KEY, SIGNING]),
        Vec::<(String, String)>::new()
    );
}

/// `replay --dry-run` prints `***` for every secret: the rules' `env:`
/// values, the target's credential headers, credential query parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_masks_every_secret() {
    let sink = Sink::start().await;
    let sim = sim().await;
    let dir = temp_dir("secrets-dry");
    let cfg = dir.join("callhook.yaml");
    std::fs::write(&cfg, config(&dir, &sink, &sim)).unwrap();
    let capture = dir.join("capture.ami");
    std::fs::write(&capture, fixture(CAPTURE)).unwrap();
    for format in ["text", "jsonl"] {
        let out = Command::new(env!("CARGO_BIN_EXE_callhook"))
            .arg("replay")
            .arg(&capture)
            .args(["--dry-run", "--format", format, "--config"])
            .arg(&cfg)
            .envs(env(TOKEN))
            .env("CALLHOOK_LOG", "warn")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("/calls"), "{text}");
        assert!(text.contains("visible"), "{text}");
        for s in [TOKEN, API_KEY, SIGNING] {
            for f in forms(s) {
                let f = String::from_utf8(f).unwrap();
                assert!(!text.contains(&f), "{format}: {f} in {text}");
            }
        }
        // A credential-like header is masked whole; the rules' env values
        // anywhere else as `***` in place.
        assert!(
            text.to_ascii_lowercase().contains("authorization"),
            "{format}: {text}"
        );
        assert!(text.contains("t=***"), "{format}: {text}");
    }
}

/// Rows an older version stored with the token in clear are masked when
/// the daemon starts, and still go out with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_stored_in_clear_before_are_masked_at_start() {
    let sink = Sink::start().await;
    let sim = sim().await;
    let dir = temp_dir("secrets-legacy");
    let state = dir.join("state");
    let mut req = support_http::request("crm", "legacy-1", "hungup", &sink.url("/legacy"));
    req.url = format!(
        "{}?token={}",
        sink.url("/legacy"),
        callhook::template::encode_component(TOKEN)
    );
    req.headers = vec![("Authorization".into(), format!("Bearer {TOKEN}"))];
    {
        let outbox = Outbox::open(&state, OutboxOptions::default()).unwrap();
        assert_eq!(outbox.enqueue(&[req]).await.unwrap().inserted, 1);
        outbox.close();
    }
    assert!(!files_holding(&state, &[TOKEN]).is_empty());
    let cfg = dir.join("callhook.yaml");
    std::fs::write(&cfg, config(&dir, &sink, &sim)).unwrap();
    let e = env(TOKEN);
    let d = Daemon::start_file(&cfg, &env_ref(&e));
    let deadline = Instant::now() + support_daemon::WAIT;
    while sink.for_path("/legacy").is_empty() {
        assert!(Instant::now() < deadline, "the stored row was not sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = &sink.for_path("/legacy")[0];
    assert_eq!(
        r.header("authorization").as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    let (_, status, _) = d.stop();
    assert!(status.success());
    assert_eq!(
        files_holding(&state, &[TOKEN]),
        Vec::<(String, String)>::new()
    );
}

/// `backfill --dry-run` with the shipped phonecalls rule set (token in the
/// query): `***`, never the token.
#[test]
fn backfill_dry_run_masks_the_token() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = temp_dir("secrets-backfill");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        root.join("rules/phonecalls.yaml"),
        dir.join("phonecalls.yaml"),
    )
    .unwrap();
    let cfg = dir.join("callhook.yaml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir: {}\noutbox: {{ dedupe_window: 100000d }}\ninclude: [phonecalls.yaml]\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    for format in ["text", "jsonl"] {
        let out = Command::new(env!("CARGO_BIN_EXE_callhook"))
            .args([
                "backfill",
                "--dry-run",
                "--since",
                "3000d",
                "--format",
                format,
                "--cdr",
            ])
            .arg(root.join("tests/fixtures/ami/asterisk-20/load-dev.cdr.csv"))
            .arg("--config")
            .arg(&cfg)
            .env("CRM_TOKEN", TOKEN)
            .env("CALLHOOK_LOG", "warn")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("token=***"), "{format}: {text}");
        for f in forms(TOKEN) {
            let f = String::from_utf8(f).unwrap();
            assert!(!text.contains(&f), "{format}: {f} in {text}");
        }
    }
}

/// A CRM that echoes what it got (the token in every encoding, the static
/// API key, the whole `Authorization` value) in its error page, one of
/// them straddling the end of the kept excerpt: `last_error` says `***`,
/// and no state file or log line (trace level) holds any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_echoing_the_credentials_gets_them_masked_in_last_error_and_logs() {
    let sink = Sink::start().await;
    let enc = callhook::template::encode_component(TOKEN);
    let json = serde_json::to_string(TOKEN).unwrap();
    let head = format!("denied: Authorization=Bearer {TOKEN} q={enc} j={json} key={API_KEY} ");
    // 2 KB are kept: the last echo starts just before the cut.
    let pad = "p".repeat(2048 - head.len() - 5);
    let body = format!("{head}{pad}{TOKEN} tail");
    sink.set_default("/calls", Reply::status(500).body(&body));
    let sim = sim().await;
    let dir = temp_dir("secrets-echo");
    let e = env(TOKEN);
    let mut e = env_ref(&e);
    e.push(("CALLHOOK_LOG", "trace"));
    let d = Daemon::start(&config(&dir, &sink, &sim), &dir, &e);
    d.wait_http().await;
    let rows = pending_tried(&d).await;
    let row = rows
        .iter()
        .find(|r| r["attempts"].as_u64() >= Some(2))
        .unwrap();
    let last = row["last_error"].as_str().unwrap_or_default();
    assert!(
        last.starts_with("denied: Authorization=Bearer *** q=*** j=\"***\" key=*** "),
        "{last}"
    );
    let text = row.to_string();
    for s in [TOKEN, API_KEY] {
        for f in forms(s) {
            let f = String::from_utf8(f).unwrap();
            assert!(!text.contains(&f), "{f} in {text}");
        }
    }
    // Cut in the middle would leave a prefix of the token: not even that.
    assert!(!last.contains(&TOKEN[..6]), "{last}");
    let (_, status, err) = d.stop();
    assert!(status.success());
    let state = dir.join("state");
    assert_eq!(
        files_holding(&state, &[TOKEN, API_KEY]),
        Vec::<(String, String)>::new()
    );
    for s in [TOKEN, API_KEY] {
        for f in forms(s) {
            let f = String::from_utf8(f).unwrap();
            let line = err.lines().find(|l| l.contains(&f));
            assert!(line.is_none(), "{f} in the log: {line:?}");
        }
    }
}
