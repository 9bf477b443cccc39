//! End to end: the real `callhook run` binary with an `ami_proxy:` section,
//! the simulated PBX replaying a real capture, and REAL published AMI client
//! libraries logged in to the proxy at the same time — panoramisk (PyPI),
//! asterisk-manager (npm) and Telephony::Asterisk::AMI (Debian) — each with
//! its own user, allow-list and event filter, all sharing callhook's one
//! AMI connection.

mod support_ami_proxy;
mod support_daemon;
mod support_tmp;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use callhook::ami::simulator::{AfterCapture, Simulator};
use callhook::ami::{AmiCodec, AmiFrame};
use serde_json::Value;
use support_ami_proxy::{
    config, get, library_available, local_dir, Raw, User, PBX_SECRET, PBX_USER, WAIT,
};
use support_daemon::{fixture, free_port, temp_dir, Daemon};
use tokio_util::codec::Decoder;

/// The capture the PBX plays once the tools are logged in.
const CAPTURE: &str = "asterisk-20/status-actions.ami";

/// The unsolicited events the simulator replays from a capture, in order:
/// every event without an ActionID (responses and the recorder's lists are
/// not replayed).
fn replayed_events(capture: &[u8]) -> Vec<HashMap<String, String>> {
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::from(capture);
    let mut out = Vec::new();
    while let Ok(Some(f)) = codec.decode(&mut buf) {
        if let AmiFrame::Message(m) = f {
            if m.event().is_some() && m.action_id().is_none() {
                out.push(
                    m.fields()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                        .collect(),
                );
            }
        }
    }
    out
}

/// A client library's script, driven over stdin, reporting JSON lines.
struct Tool {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
    /// Events received so far (keys lower-cased).
    events: Vec<HashMap<String, String>>,
}

/// A JSON object with its keys lower-cased and values as strings (the
/// libraries disagree on key case; repeated keys become arrays: joined).
fn fold(v: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(o) = v.as_object() {
        for (k, v) in o {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            out.insert(k.to_ascii_lowercase(), s);
        }
    }
    out
}

impl Tool {
    fn start(name: &'static str, mut cmd: Command, port: u16, user: &str, secret: &str) -> Tool {
        cmd.env("PX_PORT", port.to_string())
            .env("PX_USER", user)
            .env("PX_SECRET", secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| Value::String(format!("not JSON: {line}")));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Tool {
            name,
            child,
            stdin,
            lines: rx,
            events: Vec::new(),
        }
    }

    fn tell(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Lines until one has `key`; events met on the way are kept.
    fn until(&mut self, key: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "{}: no {key:?} in time; events so far: {}",
                    self.name,
                    self.events.len()
                )
            });
            if let Some(ev) = v.get("event") {
                self.events.push(fold(ev));
                if key == "event" {
                    return v;
                }
                continue;
            }
            if v.get(key).is_some() {
                return v;
            }
            panic!(
                "{}: unexpected line {v} while waiting for {key:?}",
                self.name
            );
        }
    }

    /// Waits until `n` events have arrived.
    fn events_until(&mut self, n: usize) {
        while self.events.len() < n {
            self.until("event");
        }
    }

    fn wait_exit(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script(name: &str) -> String {
    format!("{}/tests/proxy_clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn python_tool(port: u16, user: &str, secret: &str) -> Tool {
    let mut cmd = Command::new("python3");
    cmd.arg(script("panoramisk_client.py"))
        .env("PYTHONPATH", local_dir("python"));
    Tool::start("panoramisk", cmd, port, user, secret)
}

fn node_tool(port: u16, user: &str, secret: &str) -> Tool {
    let mut cmd = Command::new("node");
    cmd.arg(script("node_client.js"))
        .env("NODE_PATH", local_dir("node/node_modules"));
    Tool::start("asterisk-manager", cmd, port, user, secret)
}

fn perl_tool(port: u16, user: &str, secret: &str) -> Tool {
    let mut cmd = Command::new("perl");
    cmd.arg(script("perl_client.pl"));
    Tool::start("Telephony::Asterisk::AMI", cmd, port, user, secret)
}

fn perl_module_installed() -> bool {
    Command::new("perl")
        .args(["-MTelephony::Asterisk::AMI", "-MJSON::PP", "-e", "1"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A list as a library reported it: (ActionID of every packet, item count,
/// the Complete event's ListItems).
fn list_shape(list: &Value) -> (Vec<String>, usize, Option<String>) {
    let packets: Vec<HashMap<String, String>> = list.as_array().unwrap().iter().map(fold).collect();
    let ids = packets
        .iter()
        .map(|p| p.get("actionid").cloned().unwrap_or_default())
        .collect();
    let items = packets
        .iter()
        .filter(|p| p.get("event").is_some_and(|e| e == "CoreShowChannel"))
        .count();
    let complete = packets
        .iter()
        .find(|p| {
            p.get("event")
                .is_some_and(|e| e == "CoreShowChannelsComplete")
        })
        .and_then(|p| p.get("listitems").cloned());
    (ids, items, complete)
}

/// Whether an event names a channel (or device) of `ext`.
fn mentions(ev: &HashMap<String, String>, ext: &str) -> bool {
    ev.values()
        .any(|v| v.contains(&format!("/{ext}-")) || v.ends_with(&format!("/{ext}")) || v == ext)
}

/// Whether an event names any channel at all.
fn has_channel(ev: &HashMap<String, String>) -> bool {
    ev.iter()
        .any(|(k, v)| k.ends_with("channel") && v.contains('/'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_client_libraries_share_one_ami_connection() {
    let py = library_available(
        "panoramisk",
        local_dir("python/panoramisk/__init__.py").exists(),
    );
    let js = library_available(
        "asterisk-manager (npm)",
        local_dir("node/node_modules/asterisk-manager/package.json").exists(),
    );
    let pl = library_available("Telephony::Asterisk::AMI", perl_module_installed());
    if !(py && js && pl) {
        return;
    }
    // Session 0: no events until the test's own tool sends UserEvent (the
    // PBX then drops the link); session 1: the capture, then stay open.
    let sim = Simulator::new(PBX_USER, PBX_SECRET)
        .session(Vec::new(), AfterCapture::CloseOnAction("UserEvent".into()))
        .session(fixture(CAPTURE), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let dir = temp_dir("ami-proxy-libs");
    let (http, proxy) = (free_port(), free_port());
    let users = [
        User {
            name: "panel",
            secret: "panel-s3cret",
            extra: "      actions: [Ping, CoreShowChannels, Status]\n",
        },
        User {
            name: "crm",
            secret: "crm-s3cret",
            extra: "      actions: [CoreShowChannels]\n      extensions: [\"1002\"]\n",
        },
        User {
            name: "cron",
            secret: "cron-s3cret",
            extra:
                "      actions: [CoreShowChannels]\n      events: [Newchannel, Hangup, \"Dial*\"]\n",
        },
        User {
            name: "admin",
            secret: "admin-s3cret",
            extra: "      actions: [UserEvent]\n      events: []\n",
        },
    ];
    let cfg = config(
        &dir.join("state"),
        sim.local_addr().port(),
        http,
        proxy,
        "",
        &users,
    );
    let daemon = Daemon::start(&cfg, &dir, &[("E2E_AMI_SECRET", PBX_SECRET)]);
    sim.wait_for(|s| s.logins >= 1).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], proxy));
    // The proxy is up once a raw connection gets the banner.
    let mut admin = Raw::connect(addr).await;
    assert!(
        admin.banner.starts_with("Asterisk Call Manager/"),
        "{}",
        admin.banner
    );
    let r = admin.login("admin", "admin-s3cret").await;
    assert_eq!(get(&r, "Response"), Some("Success"), "{r:?}");

    let (mut python, mut node, mut perl) = tokio::task::block_in_place(|| {
        let mut python = python_tool(proxy, "panel", "panel-s3cret");
        let mut node = node_tool(proxy, "crm", "crm-s3cret");
        let mut perl = perl_tool(proxy, "cron", "cron-s3cret");
        for t in [&mut python, &mut node, &mut perl] {
            let v = t.until("ready");
            assert_eq!(v["ready"], true, "{}: {v}", t.name);
        }
        (python, node, perl)
    });

    // The PBX drops the link on UserEvent: the action's outcome is unknown.
    let r = admin.trigger().await;
    assert_eq!(get(&r, "Response"), Some("Error"), "{r:?}");
    assert!(
        get(&r, "Message").is_some_and(|m| m.contains("outcome is unknown")),
        "{r:?}"
    );

    // callhook reconnects; the capture's events fan out to the tools.
    let all = replayed_events(&fixture(CAPTURE));
    assert!(all.len() > 50, "the capture has events: {}", all.len());
    let names = |evs: &[HashMap<String, String>]| -> Vec<String> {
        evs.iter().map(|e| e["event"].clone()).collect()
    };
    tokio::task::block_in_place(|| {
        // panoramisk: every event (plus the proxy's FullyBooted greeting at
        // login, which has no Uptime), in order.
        let greeted = |t: &Tool| {
            t.events
                .iter()
                .filter(|e| e["event"] == "FullyBooted" && !e.contains_key("uptime"))
                .count()
        };
        python.events_until(all.len() + 1);
        assert_eq!(greeted(&python), 1);
        let got: Vec<HashMap<String, String>> = python
            .events
            .iter()
            .filter(|e| e["event"] != "FullyBooted" || e.contains_key("uptime"))
            .cloned()
            .collect();
        assert_eq!(
            names(&got),
            names(&all),
            "panoramisk: every event, in order"
        );
        for (g, w) in got.iter().zip(&all) {
            assert_eq!(g.get("uniqueid"), w.get("uniqueid"));
        }

        // asterisk-manager (extensions: [1002]): events about 1002's
        // channels, or about no channel at all; never one only about others.
        node.tell("ping");
        node.until("pong");
        assert!(!node.events.is_empty());
        for e in &node.events {
            assert!(
                mentions(e, "1002") || !has_channel(e),
                "crm got an event about another extension: {e:?}"
            );
        }
        let of_1002 = |e: &&HashMap<String, String>| {
            e["event"] == "Newchannel" && e.get("channel").is_some_and(|c| c.contains("/1002-"))
        };
        let want_1002 = all.iter().filter(of_1002).count();
        let got_1002 = node.events.iter().filter(of_1002).count();
        assert!(want_1002 >= 1);
        assert_eq!(got_1002, want_1002, "crm got 1002's Newchannel");
        assert!(node.events.len() < all.len(), "crm's filter removed events");

        // Two lists at once per tool, three tools at once: each list goes
        // only to the one that asked, with its own ActionID.
        python.tell("list");
        node.tell("list");
        perl.tell("list");
        let mut seen_ids = Vec::new();
        for t in [&mut python, &mut node] {
            for _ in 0..2 {
                let v = t.until("list");
                let (ids, items, complete) = list_shape(&v["list"]);
                assert_eq!(items, 4, "{}: {v}", t.name);
                assert_eq!(complete.as_deref(), Some("4"), "{}: {v}", t.name);
                assert!(
                    ids.iter().all(|i| i == &ids[0] && !i.is_empty()),
                    "{}: {ids:?}",
                    t.name
                );
                assert!(
                    !seen_ids.contains(&(t.name, ids[0].clone())),
                    "{}: a list twice",
                    t.name
                );
                seen_ids.push((t.name, ids[0].clone()));
            }
        }
        let v = perl.until("list");
        let (ids, items, complete) = list_shape(&v["list"]);
        assert_eq!((items, complete.as_deref()), (4, Some("4")), "perl: {v}");
        assert!(ids.iter().all(|i| i == &ids[0]), "perl: {ids:?}");
        // Telephony::Asterisk::AMI (events: Newchannel, Hangup, Dial*):
        // exactly those events of the capture, in order (its events were
        // read while it waited for its list).
        let want: Vec<String> = names(&all)
            .into_iter()
            .filter(|n| n == "Newchannel" || n == "Hangup" || n.starts_with("Dial"))
            .collect();
        assert_eq!(names(&perl.events), want, "cron's event filter");

        // Forbidden actions are refused, never forwarded.
        python.tell("forbidden");
        let v = python.until("refused");
        let r = fold(&v["refused"]);
        assert_eq!(r.get("response").map(String::as_str), Some("Error"), "{v}");
        assert_eq!(
            r.get("message").map(String::as_str),
            Some("Permission denied"),
            "{v}"
        );
        perl.tell("forbidden");
        let v = perl.until("refused");
        assert_eq!(
            fold(&v["refused"]).get("message").map(String::as_str),
            Some("Permission denied")
        );

        // Logoff ends only that tool's session.
        perl.tell("quit");
        let v = perl.until("bye");
        assert_eq!(v["bye"], "Goodbye", "{v}");
        assert!(perl.wait_exit().success());
        python.tell("ping");
        let v = python.until("pong");
        assert_eq!(
            fold(&v["pong"]).get("ping").map(String::as_str),
            Some("Pong"),
            "{v}"
        );
        node.tell("ping");
        let v = node.until("pong");
        assert_eq!(
            fold(&v["pong"]).get("ping").map(String::as_str),
            Some("Pong"),
            "{v}"
        );
        for t in [&mut python, &mut node] {
            t.tell("quit");
            let v = t.until("bye");
            assert_eq!(
                fold(&v["bye"]).get("response").map(String::as_str),
                Some("Goodbye"),
                "{}: {v}",
                t.name
            );
        }
        assert!(python.wait_exit().success());
        assert!(node.wait_exit().success());
    });

    // The PBX saw the lists (callhook's own resyncs plus the tools' five)
    // and never a refused action.
    let stats = sim.stats();
    assert!(stats.action_count("CoreShowChannels") >= 5, "{stats:?}");
    assert_eq!(stats.action_count("Command"), 0);
    assert_eq!(stats.action_count("Originate"), 0);
    assert_eq!(
        stats.logins, 2,
        "one AMI login per PBX connection: {stats:?}"
    );
    let m = |s: &'static str| async move { daemon_metric(http, s).await };
    assert_eq!(
        m("callhook_ami_proxy_logins_total{result=\"success\"}").await,
        Some(4.0)
    );
    assert!(
        m("callhook_ami_proxy_actions_total{outcome=\"refused\",user=\"panel\"}").await
            >= Some(1.0)
    );
    assert!(m("callhook_ami_proxy_disconnects_total{reason=\"logoff\"}").await >= Some(3.0));
    let (_, status, stderr) = tokio::task::block_in_place(|| daemon.stop());
    assert!(status.success(), "{status:?}\n{stderr}");
    for secret in [
        PBX_SECRET,
        "panel-s3cret",
        "crm-s3cret",
        "cron-s3cret",
        "admin-s3cret",
    ] {
        assert!(!stderr.contains(secret), "a secret in the logs");
    }
    sim.shutdown().await;
}

async fn daemon_metric(http: u16, sample: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{http}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn check_reports_every_ami_proxy_mistake_with_its_position() {
    let dir = temp_dir("ami-proxy-check");
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        r#"pbx:
  - id: main
    ami: { host: 127.0.0.1, username: u, secret: s }
ami_proxy:
  listen: nowhere
  max_connections: 0
  login_timeout: soon
  client_qeue: 5
  users:
    - username: panel
      secret: "${CALLHOOK_PROXY_TEST_UNSET}"
      actions: [Ping, "Bad Name"]
      limits: { Hangup: { Channel: [x] } }
      events: ["Dial*", "no good"]
      extensions: ["["]
    - username: panel
      pbx: other
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("CALLHOOK_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = path.display().to_string();
    let want = [
        ":5:11: ami_proxy.listen: \"nowhere\" is not an address",
        ":6:20: ami_proxy.max_connections: must be at least 1",
        ":7:18: ami_proxy.login_timeout: \"soon\" is not a duration",
        ":8:3: ami_proxy.client_qeue: unknown key `client_qeue` (did you mean `client_queue`?)",
        ":11:16: ami_proxy.users[0].secret: environment variable CALLHOOK_PROXY_TEST_UNSET is not set",
        ":12:23: ami_proxy.users[0].actions[1]: \"Bad Name\" is not an action name",
        ":13:17: ami_proxy.users[0].limits.Hangup: Hangup is not in actions",
        ":14:25: ami_proxy.users[0].events[1]: \"no good\" is not an event name",
        ":15:20: ami_proxy.users[0].extensions[0]:",
        ":16:7: ami_proxy.users[1].secret: no secret",
        ":16:17: ami_proxy.users[1].username: user \"panel\" is defined twice",
        ":17:12: ami_proxy.users[1].pbx: unknown PBX \"other\"",
    ];
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("  warning:"))
        .map(str::trim)
        .collect();
    assert_eq!(lines.len(), want.len(), "{err}");
    for (l, w) in lines.iter().zip(want) {
        assert!(
            l.starts_with(&format!("{f}{w}")),
            "want {w:?}, got {l:?}\n{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_proxy_reports_a_restart_and_keeps_serving() {
    let sim = Simulator::new(PBX_USER, PBX_SECRET)
        .session(Vec::new(), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let dir = temp_dir("ami-proxy-reload");
    let (http, proxy) = (free_port(), free_port());
    let user = |secret: &'static str| {
        [User {
            name: "panel",
            secret,
            extra: "      actions: [Ping]\n",
        }]
    };
    let state = dir.join("state");
    let port = sim.local_addr().port();
    let cfg = config(&state, port, http, proxy, "", &user("first-s3cret"));
    let daemon = Daemon::start(&cfg, &dir, &[("E2E_AMI_SECRET", PBX_SECRET)]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], proxy));
    let mut tool = Raw::connect(addr).await;
    assert_eq!(
        get(&tool.login("panel", "first-s3cret").await, "Response"),
        Some("Success")
    );
    let restart = "callhook_config_restart_required{key=\"ami_proxy\"}";
    assert_eq!(daemon_metric(http, restart).await, Some(0.0));
    // A new secret needs a restart: reported, the running users stay.
    std::fs::write(
        dir.join("callhook.yaml"),
        config(&state, port, http, proxy, "", &user("second-s3cret")),
    )
    .unwrap();
    let before = daemon_metric(http, "callhook_config_reloads_total{outcome=\"success\"}").await;
    daemon.hup();
    let deadline = Instant::now() + WAIT;
    while daemon_metric(http, "callhook_config_reloads_total{outcome=\"success\"}").await == before
    {
        assert!(Instant::now() < deadline, "the reload never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(daemon_metric(http, restart).await, Some(1.0));
    let r = tool.action("p1", &[("Action", "Ping")]).await;
    assert_eq!(
        get(&r, "Ping"),
        Some("Pong"),
        "the connected tool keeps its session"
    );
    let mut again = Raw::connect(addr).await;
    assert_eq!(
        get(&again.login("panel", "first-s3cret").await, "Response"),
        Some("Success")
    );
    let (_, status, stderr) = tokio::task::block_in_place(|| daemon.stop());
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(
        stderr.contains("ami_proxy"),
        "the restart-required key is logged"
    );
    sim.shutdown().await;
}
