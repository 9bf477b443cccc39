//! `deploy/callhook-backfill.{service,timer}`: the hourly CDR backfill runs
//! as the daemon's dynamic user with the daemon's state directory,
//! credentials and environment file, so the shipped example config loads
//! the same way and what it enqueues is delivered by the running daemon.
//! (`systemd-analyze verify` and `security` run in `.ci/run`.)

mod support_daemon;
mod support_http;
mod support_tmp;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support_daemon::{free_port, temp_dir, Daemon};
use support_http::Sink;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `Key=value` lines of a unit file (every value of repeated keys).
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

fn get<'a>(u: &'a BTreeMap<String, Vec<String>>, k: &str) -> Vec<&'a str> {
    u.get(k)
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

fn rewrite(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the example config no longer has {from:?}"
    );
    text.replacen(from, to, 1)
}

#[test]
fn the_backfill_units_share_the_daemons_user_state_and_secrets() {
    let daemon = unit(&read("callhook.service"));
    let backfill = unit(&read("callhook-backfill.service"));
    let timer = unit(&read("callhook-backfill.timer"));
    assert_eq!(get(&backfill, "Type"), ["oneshot"]);
    // DynamicUser= gives one user per User= name (default: the unit's name).
    assert_eq!(get(&daemon, "DynamicUser"), ["yes"]);
    assert_eq!(get(&backfill, "DynamicUser"), ["yes"]);
    let daemon_user = get(&daemon, "User");
    assert!(
        daemon_user.is_empty() || daemon_user == ["callhook"],
        "{daemon_user:?}"
    );
    assert_eq!(get(&backfill, "User"), ["callhook"]);
    for k in [
        "StateDirectory",
        "StateDirectoryMode",
        "LoadCredential",
        "EnvironmentFile",
        "UMask",
    ] {
        assert_eq!(get(&backfill, k), get(&daemon, k), "{k}=");
    }
    let run = get(&daemon, "ExecStart")[0]
        .split_whitespace()
        .collect::<Vec<_>>();
    let exec = get(&backfill, "ExecStart")[0]
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(exec[..2], [run[0], "backfill"]);
    let config = exec.iter().position(|a| *a == "--config").unwrap();
    assert_eq!(exec[config + 1], run[3], "the daemon's config");
    assert!(!exec.contains(&"--deliver"), "the daemon delivers");
    assert_eq!(get(&timer, "Persistent"), ["true"]);
    assert_eq!(get(&timer, "WantedBy"), ["timers.target"]);
}

/// A one-call `Master.csv` (cdr_csv layout) for a call that ended a minute ago.
fn master_csv(path: &Path) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let t = |s: i64| {
        time::OffsetDateTime::from_unix_timestamp(s)
            .unwrap()
            .format(&f)
            .unwrap()
    };
    let (start, end) = (now - 80, now - 60);
    let id = format!("{start}.7");
    std::fs::write(
        path,
        format!(
            "\"\",\"5559876543\",\"2125550200\",\"from-pstn\",\"\"\"Maria\"\" <5559876543>\",\"SIP/pstn-00000001\",\"SIP/1001-00000002\",\"Dial\",\"SIP/1001,30\",\"{}\",\"{}\",\"{}\",20,15,\"ANSWERED\",\"DOCUMENTATION\",\"{id}\",\"\",\"{id}\",\"{id}\",1\n",
            t(start),
            t(start + 5),
            t(end)
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timer_backfill_enqueues_into_the_outbox_the_daemon_delivers() {
    let backfill = unit(&read("callhook-backfill.service"));
    let dir = temp_dir("deploy-backfill");
    // The unit's credentials and environment file, as systemd provides them.
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    for c in get(&backfill, "LoadCredential") {
        let id = c.split_once(':').unwrap().0;
        std::fs::write(creds.join(id), format!("{id}-value-0123456789\n")).unwrap();
    }
    let mut env: Vec<(String, String)> = read("callhook.env.example")
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    env.push(("CREDENTIALS_DIRECTORY".into(), creds.display().to_string()));
    for e in get(&backfill, "Environment") {
        let (k, v) = e.split_once('=').unwrap();
        env.push((k.into(), v.into()));
    }
    // The example config, pointed at this test's addresses and directories.
    let sink = Sink::start().await;
    let example = read("callhook.example.yaml");
    let cfg = rewrite(
        &example,
        "listen: 0.0.0.0:9188",
        &format!("listen: 127.0.0.1:{}", free_port()),
    );
    let cfg = rewrite(
        &cfg,
        "listen: 127.0.0.1:9189",
        &format!("listen: 127.0.0.1:{}", free_port()),
    );
    let cfg = rewrite(
        &cfg,
        "state_dir: /var/lib/callhook",
        &format!("state_dir: {}", dir.join("state").display()),
    );
    let cfg = rewrite(&cfg, "host: 192.0.2.10", "host: 127.0.0.1");
    let cfg = rewrite(&cfg, "port: 5038", &format!("port: {}", free_port()));
    let cfg = rewrite(
        &cfg,
        "https://crm.example.com",
        &format!("http://{}", sink.addr),
    );
    let cfg_path: PathBuf = dir.join("callhook.yaml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let cdr = dir.join("Master.csv");
    master_csv(&cdr);
    let exec: Vec<String> = get(&backfill, "ExecStart")[0]
        .split_whitespace()
        .skip(1)
        .map(|a| match a {
            "/var/log/asterisk/cdr-csv/Master.csv" => cdr.display().to_string(),
            "/etc/callhook/callhook.yaml" => cfg_path.display().to_string(),
            _ => a.to_string(),
        })
        .collect();
    let run_backfill = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_callhook"));
        c.args(&exec).env_clear().env("PATH", "/usr/bin:/bin");
        for (k, v) in &env {
            c.env(k, v);
        }
        c.current_dir(&dir).output().unwrap()
    };
    // Before the daemon runs: queued, with a warning that nobody sends.
    let o = tokio::task::block_in_place(run_backfill);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("1 requests: 1 queued"), "{err}");
    assert!(err.contains("no `callhook run` is using"), "{err}");
    // The daemon, started as the unit starts it, delivers it.
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Daemon::start_file(&cfg_path, &env_ref);
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].path(), "/api/calls");
    assert_eq!(
        got[0].header("authorization").as_deref(),
        Some("Bearer change-me")
    );
    // The next hourly run: already delivered, nothing new, no warning.
    let o = tokio::task::block_in_place(run_backfill);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("1 requests: 0 queued, 1 already delivered"),
        "{err}"
    );
    assert!(!err.contains("warning"), "{err}");
    drop(d);
    assert_eq!(sink.count(), 1);
}
