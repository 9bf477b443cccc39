//! `deploy/cluster/` works: the example cluster config checks, its
//! credentials are the ones the unit and its drop-in load, and it runs
//! against a 3-node NATS cluster that requires the password (the way
//! `nats-server.conf` sets it up), with two PBXs and a push team owned and
//! calls delivered. (`nats-server -t` and `systemd-analyze verify` of the
//! units with their drop-ins run in `.ci/run`.)

mod support_daemon;
mod support_http;
mod support_nats;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use callhook::ami::simulator::{AfterCapture, Simulator};
use regex::Regex;
use serde_json::Value;
use support_daemon::{fixture, free_port, temp_dir, Daemon};
use support_http::Sink;
use support_nats::NatsCluster;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn credentials_used(text: &str) -> BTreeSet<String> {
    Regex::new(r"\$\{CREDENTIALS_DIRECTORY\}/([A-Za-z0-9_.-]+)")
        .unwrap()
        .captures_iter(text)
        .map(|c| c[1].to_string())
        .collect()
}

fn credentials_loaded(units: &[&str]) -> BTreeSet<String> {
    units
        .iter()
        .flat_map(|u| u.lines())
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .map(|c| c.split_once(':').unwrap().0.to_string())
        .collect()
}

/// A credentials directory with a file for each id.
fn cred_dir(dir: &Path, ids: &BTreeSet<String>, nats_password: &str) -> PathBuf {
    let d = dir.join("credentials");
    std::fs::create_dir_all(&d).unwrap();
    for id in ids {
        let v = if id == "nats-password" {
            nats_password.to_string()
        } else {
            format!("{id}-value-0123456789")
        };
        std::fs::write(d.join(id), format!("{v}\n")).unwrap();
    }
    d
}

fn rewrite(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the cluster example no longer has {from:?}"
    );
    text.replacen(from, to, 1)
}

#[test]
fn the_cluster_example_checks_and_its_credentials_are_loaded() {
    let example = read("cluster/callhook.cluster.yaml");
    let used = credentials_used(&example);
    assert!(used.contains("nats-password"));
    let loaded = credentials_loaded(&[
        &read("callhook.service"),
        &read("cluster/callhook.service.d/cluster.conf"),
    ]);
    assert_eq!(used, loaded, "LoadCredential= lines vs the config");
    let dir = temp_dir("deploy-cluster-check");
    let creds = cred_dir(&dir, &used, "pw");
    let cfg = dir.join("callhook.yaml");
    std::fs::write(&cfg, &example).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["check", "--config"])
        .arg(&cfg)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env("CRM_TOKEN", "x")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The NATS node config names the password variable the drop-in's
    // EnvironmentFile= provides.
    assert!(read("cluster/nats-server.conf").contains("$CALLHOOK_NATS_PASSWORD"));
    assert!(read("cluster/nats-server.service.d/callhook.conf")
        .contains("EnvironmentFile=/etc/nats/callhook.env"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_example_runs_against_a_password_protected_nats_cluster() {
    let password = "nats-pw-for-this-test-only";
    let nats = NatsCluster::start_with_auth("deploy", "callhook", password).await;
    let example = read("cluster/callhook.cluster.yaml");
    let dir = temp_dir("deploy-cluster-run");
    let creds = cred_dir(&dir, &credentials_used(&example), password);
    let sink = Sink::start().await;
    let mut sims = Vec::new();
    for _ in 0..2 {
        sims.push(
            Simulator::new("callhook", "ami-secret-value-0123456789")
                .session(
                    fixture("asterisk-20/queue-answered.ami"),
                    AfterCapture::StayOpen,
                )
                .start()
                .await
                .unwrap(),
        );
    }
    let (listen, admin) = (free_port(), free_port());
    let mut cfg = rewrite(
        &example,
        "listen: 0.0.0.0:9188",
        &format!("listen: 127.0.0.1:{listen}"),
    );
    cfg = rewrite(
        &cfg,
        "listen: 127.0.0.1:9189",
        &format!("listen: 127.0.0.1:{admin}"),
    );
    cfg = rewrite(
        &cfg,
        "state_dir: /var/lib/callhook",
        &format!("state_dir: {}", dir.join("state").display()),
    );
    cfg = rewrite(
        &cfg,
        "servers: [nats://10.0.0.1:4222, nats://10.0.0.2:4222, nats://10.0.0.3:4222]",
        &format!("servers: {}", nats.servers_yaml()),
    );
    for (host, sim) in ["192.0.2.10", "192.0.2.11"].iter().zip(&sims) {
        cfg = rewrite(
            &cfg,
            &format!("host: {host}\n      port: 5038"),
            &format!("host: 127.0.0.1\n      port: {}", sim.local_addr().port()),
        );
    }
    cfg = rewrite(
        &cfg,
        "https://crm.example.com/api/calls",
        &sink.url("/api/calls"),
    );
    let d = Daemon::start(
        &cfg,
        &dir,
        &[
            ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
            ("CRM_TOKEN", "crm-token"),
        ],
    );
    d.wait_http().await;
    // One instance owns both PBXs and the team, and says so in /readyz.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = match reqwest::get(d.admin_url("/readyz")).await {
            Ok(r) => {
                serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or(Value::Null)
            }
            Err(_) => Value::Null,
        };
        let owned = v["cluster"]["owned"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if owned.len() == 3 && v["ready"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "not ready: {v}\n{}", d.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The call of each PBX is delivered once, with the template variable.
    let got = sink.wait_for(2).await;
    let pbxs: BTreeSet<String> = got
        .iter()
        .map(|r| {
            assert_eq!(
                r.header("authorization").as_deref(),
                Some("Bearer crm-token")
            );
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            v["pbx"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        pbxs,
        ["branch-north", "branch-south"].map(String::from).into()
    );
    assert!(
        !d.stderr().contains(password),
        "the NATS password reached the log"
    );
}
