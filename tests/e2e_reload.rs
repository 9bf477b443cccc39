//! Reload honesty, end to end with the real binary and simulated PBXs: a
//! reload connects a new PBX, disconnects a removed one, reconnects a
//! changed one, applies `classify`, and reports by key (reply, metric) what
//! only a restart can change.

mod support_daemon;
mod support_tmp;

use std::path::Path;

use callhook::ami::simulator::{AfterCapture, Simulator, SimulatorHandle};
use serde_json::Value;
use support_daemon::{fixture, free_port, temp_dir, Daemon};

const USER: &str = "amiuser";
const SECRET: &str = "reload-secret-42";
const ADMIN: &str = "reload-admin-token-0123456789";

fn pbx(id: &str, sim: &SimulatorHandle, ping: &str) -> String {
    format!(
        "  - id: {id}\n    ami: {{ host: 127.0.0.1, port: {}, username: {USER}, secret: \"${{E2E_AMI_SECRET}}\", ping_interval: {ping}, ping_timeout: 2s, connect_timeout: 2s }}\n",
        sim.local_addr().port()
    )
}

fn config(dir: &Path, port: u16, pbxs: &[String], extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:{port}\nadmin: {{ token: \"{ADMIN}\" }}\nstate_dir: {}\n{extra}pbx:\n{}",
        dir.join("state").display(),
        pbxs.concat()
    )
}

async fn reload(d: &Daemon) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(d.url("/-/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_starts_stops_and_restarts_pbx_connections_and_reports_the_rest() {
    let a = Simulator::new(USER, SECRET)
        .session(
            fixture("asterisk-20/queue-answered.ami"),
            AfterCapture::StayOpen,
        )
        .session(fixture("asterisk-20/internal.ami"), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let b = Simulator::new(USER, SECRET)
        .session(
            fixture("asterisk-11/queue-answered.ami"),
            AfterCapture::StayOpen,
        )
        .start()
        .await
        .unwrap();
    let dir = temp_dir("reload-pbx");
    let port = free_port();
    let d = Daemon::start(
        &config(&dir, port, &[pbx("a", &a, "2s")], ""),
        &dir,
        &[("E2E_AMI_SECRET", SECRET)],
    );
    d.wait_http().await;
    tokio::task::block_in_place(|| d.until(|v| v["type"] == "call" && v["pbx"] == "a"));
    assert_eq!(
        d.metric("callhook_config_restart_required{key=\"listen\"}")
            .await,
        Some(0.0)
    );

    // v2: PBX b added, and `listen` changed (needs a restart).
    let other = free_port();
    std::fs::write(
        dir.join("callhook.yaml"),
        config(&dir, other, &[pbx("a", &a, "2s"), pbx("b", &b, "2s")], ""),
    )
    .unwrap();
    let (status, body) = reload(&d).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"], true);
    assert!(
        strings(&body["applied"]).contains(&"pbx b added".to_string()),
        "{body}"
    );
    // The shared event queue was sized for one PBX at start: the second
    // one works, but the queue grows only with a restart.
    assert_eq!(
        strings(&body["restart_required"]),
        ["listen", "pbx.queue_capacity"],
        "{body}"
    );
    // b is connected without a restart: its call arrives.
    let got = tokio::task::block_in_place(|| d.until(|v| v["type"] == "call" && v["pbx"] == "b"));
    assert_eq!(got.last().unwrap()["session_id"], "1795375491.28");
    assert_eq!(
        d.metric("callhook_config_restart_required{key=\"listen\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(a.stats().logins, 1, "a was not touched");

    // v3: b removed, a changed (reconnected), classify changed, listen back.
    std::fs::write(
        dir.join("callhook.yaml"),
        config(
            &dir,
            port,
            &[pbx("a", &a, "3s")],
            "classify: { trunk_contexts: [from-pstn, from-trunk, from-did, from-carrier] }\n",
        ),
    )
    .unwrap();
    let (status, body) = reload(&d).await;
    assert_eq!(status, 200, "{body}");
    let applied = strings(&body["applied"]);
    for want in ["pbx a reconnected", "pbx b removed", "classify"] {
        assert!(applied.contains(&want.to_string()), "{want}: {body}");
    }
    assert!(strings(&body["restart_required"]).is_empty(), "{body}");
    assert_eq!(
        d.metric("callhook_config_restart_required{key=\"listen\"}")
            .await,
        Some(0.0)
    );
    // b was logged off; a logged in again and its second session plays.
    b.wait_for(|s| s.action_count("Logoff") >= 1).await;
    a.wait_for(|s| s.logins >= 2).await;
    tokio::task::block_in_place(|| {
        d.until(|v| v["type"] == "call" && v["pbx"] == "a" && v["direction"] == "internal")
    });
    let ready: Value = serde_json::from_str(
        &reqwest::get(d.url("/readyz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let pbxs: Vec<&String> = ready["pbx"].as_object().unwrap().keys().collect();
    assert_eq!(pbxs, ["a"], "{ready}");

    let (_, status, stderr) = tokio::task::block_in_place(|| d.stop());
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("needs a restart") && stderr.contains("listen"),
        "the log names the key: {stderr}"
    );
    a.shutdown().await;
    b.shutdown().await;
}
