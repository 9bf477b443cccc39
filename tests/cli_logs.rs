//! The real binary's logs on stderr, read while it runs against simulated
//! PBXs: exactly one line per AMI connection state change (connecting,
//! logged in, lost with its reason and the delay before the next attempt,
//! login failed, cannot connect, stopped); JSON lines with `--log-format
//! json` or `log: { format: json }`; no ANSI escapes when stderr is not a
//! terminal.

mod support_daemon;
mod support_tmp;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use callhook::ami::simulator::{AfterCapture, Simulator};
use serde_json::Value;
use support_daemon::{fixture, free_port, temp_dir};

const USER: &str = "amiuser";
const SECRET: &str = "logs-secret-42";
const WAIT: Duration = Duration::from_secs(30);

/// `callhook run` with stderr read line by line as it comes.
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Run {
    fn start(config: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
        let path = dir.join("callhook.yaml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_callhook"));
        cmd.args(args)
            .args(["run", "--config"])
            .arg(&path)
            .env("LOGS_AMI_SECRET", SECRET)
            .env_remove("CALLHOOK_LOG")
            .env_remove("CALLHOOK_LOG_FORMAT")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Run {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Reads lines until `pred` holds on everything seen so far.
    fn until(&mut self, what: &str, mut pred: impl FnMut(&[String]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !pred(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "waiting for {what}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, then the rest of stderr.
    fn stop(mut self) -> Vec<String> {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        while let Ok(l) = self.lines.recv_timeout(WAIT) {
            self.seen.push(l);
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}\n{}", self.seen.join("\n"));
        self.seen
    }
}

fn pbx(id: &str, port: u16, secret_var: &str) -> String {
    format!(
        "  - id: {id}\n    ami: {{ host: 127.0.0.1, port: {port}, username: {USER}, secret: \"${{{secret_var}}}\", ping_interval: 2s, ping_timeout: 2s, connect_timeout: 2s }}\n"
    )
}

/// The state-change lines of one PBX, as (kind, message).
fn state_lines(json: &[Value], pbx: &str) -> Vec<(&'static str, String)> {
    json.iter()
        .filter(|v| v["target"] == "callhook::ami::client" && v["pbx"] == pbx)
        .filter_map(|v| {
            let m = v["message"].as_str().unwrap_or("").to_string();
            let kind = if m.starts_with("connecting to AMI at") {
                "connecting"
            } else if m.starts_with("logged in to AMI at") {
                "logged_in"
            } else if m.starts_with("AMI connection lost: ") {
                "lost"
            } else if m.starts_with("AMI login failed") {
                "login_failed"
            } else if m.starts_with("cannot connect to AMI") {
                "refused"
            } else if m == "AMI client stopped" {
                "stopped"
            } else {
                return None;
            };
            Some((kind, m))
        })
        .collect()
}

fn parse_all(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_ami_state_change() {
    let sim = Simulator::new(USER, SECRET)
        .session(
            fixture("asterisk-20/reconnect-before.ami"),
            AfterCapture::Close,
        )
        .session(
            fixture("asterisk-20/reconnect-after.ami"),
            AfterCapture::StayOpen,
        )
        .start()
        .await
        .unwrap();
    let dir = temp_dir("logs-states");
    let config = format!(
        "state_dir: {}\npbx:\n{}",
        dir.join("state").display(),
        pbx("main", sim.local_addr().port(), "LOGS_AMI_SECRET")
    );
    let mut run =
        tokio::task::block_in_place(|| Run::start(&config, &dir, &["--log-format", "json"], &[]));
    tokio::task::block_in_place(|| {
        run.until("the second login", |seen| {
            seen.iter()
                .filter(|l| l.contains("logged in to AMI"))
                .count()
                >= 2
        })
    });
    sim.wait_for(|s| s.replays_completed >= 2).await;
    let lines = tokio::task::block_in_place(|| run.stop());
    let json = parse_all(&lines);
    let states = state_lines(&json, "main");
    let kinds: Vec<&str> = states.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            "connecting",
            "logged_in",
            "lost",
            "connecting",
            "logged_in",
            "stopped"
        ],
        "{lines:#?}"
    );
    // The drop says why and how long until the next attempt.
    let lost = json
        .iter()
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("AMI connection lost"))
        })
        .unwrap();
    assert_eq!(lost["level"], "WARN");
    let msg = lost["message"].as_str().unwrap();
    assert!(
        msg.contains("; reconnecting in ") && msg.ends_with('s'),
        "{msg}"
    );
    let retry = lost["retry_in_secs"].as_f64().unwrap();
    assert!((0.0..=30.0).contains(&retry), "{lost}");
    assert!(json
        .iter()
        .all(|v| v["timestamp"].is_string() && v["level"].is_string()));
    assert!(
        !lines.iter().any(|l| l.contains(SECRET)),
        "secret in the logs"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_and_refused_connections_are_one_line_per_attempt() {
    // A PBX that refuses our secret, and a port nobody listens on.
    let sim = Simulator::new(USER, "another-secret")
        .session(Vec::<u8>::new(), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let closed = free_port();
    let dir = temp_dir("logs-failures");
    // The format comes from the config this time.
    let config = format!(
        "state_dir: {}\nlog: {{ format: json, level: info }}\npbx:\n{}{}",
        dir.join("state").display(),
        pbx("wrong-secret", sim.local_addr().port(), "LOGS_AMI_SECRET"),
        pbx("nobody", closed, "LOGS_AMI_SECRET"),
    );
    let mut run = tokio::task::block_in_place(|| Run::start(&config, &dir, &[], &[]));
    let failures = |seen: &[String], what: &str| seen.iter().filter(|l| l.contains(what)).count();
    tokio::task::block_in_place(|| {
        run.until("three failures of each", |seen| {
            failures(seen, "AMI login failed") >= 3 && failures(seen, "cannot connect to AMI") >= 3
        })
    });
    let lines = tokio::task::block_in_place(|| run.stop());
    let json = parse_all(&lines);
    for (pbx, failed) in [("wrong-secret", "login_failed"), ("nobody", "refused")] {
        let states = state_lines(&json, pbx);
        let kinds: Vec<&str> = states.iter().map(|(k, _)| *k).collect();
        // connecting, failed, connecting, failed, …, (connecting,) stopped.
        let (last, body) = kinds.split_last().unwrap();
        assert_eq!(*last, "stopped", "{pbx}: {kinds:?}");
        for (i, k) in body.iter().enumerate() {
            let want = if i % 2 == 0 { "connecting" } else { failed };
            assert_eq!(*k, want, "{pbx}: {kinds:?}");
        }
        for (k, m) in &states {
            if k == &failed {
                assert!(m.contains("; reconnecting in "), "{m}");
            }
        }
    }
    let failed = state_lines(&json, "wrong-secret");
    assert!(
        failed
            .iter()
            .any(|(_, m)| m.contains(&format!("as user {USER}"))),
        "{failed:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains(SECRET)),
        "secret in the logs"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_are_plain_off_a_terminal() {
    let sim = Simulator::new(USER, SECRET)
        .session(Vec::<u8>::new(), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let dir = temp_dir("logs-plain");
    let config = format!(
        "state_dir: {}\nlog: {{ format: json }}\npbx:\n{}",
        dir.join("state").display(),
        pbx("main", sim.local_addr().port(), "LOGS_AMI_SECRET")
    );
    // The command line wins over the config's `format: json`; a level from
    // CALLHOOK_LOG shows debug lines.
    let mut run = tokio::task::block_in_place(|| {
        Run::start(
            &config,
            &dir,
            &["--log-format", "text"],
            &[("CALLHOOK_LOG", "debug")],
        )
    });
    tokio::task::block_in_place(|| {
        run.until("the login", |seen| {
            seen.iter().any(|l| l.contains("logged in to AMI"))
        })
    });
    let lines = tokio::task::block_in_place(|| run.stop());
    let text = lines.join("\n");
    assert!(
        !text.contains('\x1b'),
        "ANSI escapes in piped logs:\n{text:?}"
    );
    assert!(lines.iter().all(|l| !l.starts_with('{')), "{text}");
    assert!(
        text.contains(" INFO callhook::ami::client: logged in to AMI"),
        "{text}"
    );
    assert!(text.contains("DEBUG "), "CALLHOOK_LOG=debug: {text}");
    sim.shutdown().await;
}

/// On a terminal (a pty from util-linux `script`), text logs are coloured
/// unless `NO_COLOR` is set.
#[test]
fn colour_on_a_terminal_unless_no_color() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("no `script` (util-linux) here: skipped");
        return;
    }
    let dir = temp_dir("logs-tty");
    let cfg = dir.join("callhook.yaml");
    std::fs::write(
        &cfg,
        format!("state_dir: {}\n", dir.join("state").display()),
    )
    .unwrap();
    // A malformed CDR row is logged as a warning.
    let cdr = dir.join("Master.csv");
    std::fs::write(&cdr, "oops,not a row\n").unwrap();
    let cmd = format!(
        "{} backfill --cdr {} --config {} --dry-run --no-progress",
        env!("CARGO_BIN_EXE_callhook"),
        cdr.display(),
        cfg.display()
    );
    let on_tty = |no_color: Option<&str>| {
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .env_remove("CALLHOOK_LOG")
            .env_remove("CALLHOOK_LOG_FORMAT")
            .stdin(Stdio::null());
        match no_color {
            Some(v) => c.env("NO_COLOR", v),
            None => c.env_remove("NO_COLOR"),
        };
        let o = c.output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(text.contains("skipping malformed CDR row"), "{text:?}");
        text
    };
    assert!(on_tty(None).contains("\x1b["), "colours on a terminal");
    assert!(
        on_tty(Some("")).contains("\x1b["),
        "an empty NO_COLOR is unset"
    );
    assert!(!on_tty(Some("1")).contains("\x1b["), "NO_COLOR=1");
}
