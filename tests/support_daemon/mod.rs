//! Running the real `callhook` binary in end-to-end tests: start it with a
//! config, read its stdout, stop it with SIGTERM or SIGKILL, talk to its
//! HTTP listener.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound of every wait (a safety net, never a synchronisation).
pub const WAIT: Duration = Duration::from_secs(30);

/// A fresh directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("callhook-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A free TCP port on 127.0.0.1 (bound then released: tiny race, fine in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The bytes of `tests/fixtures/ami/<rel>`.
pub fn fixture(rel: &str) -> Vec<u8> {
    let p = format!("{}/tests/fixtures/ami/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The daemon, its stdout lines arriving on a channel.
pub struct Daemon {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub listen: Option<SocketAddr>,
}

impl Daemon {
    /// Writes `config` to `dir/callhook.yaml` and runs `callhook run`
    /// (`--print jsonl`), with extra environment variables.
    pub fn start(config: &str, dir: &Path, env: &[(&str, &str)]) -> Daemon {
        let path = dir.join("callhook.yaml");
        std::fs::write(&path, config).unwrap();
        Self::start_file(&path, env)
    }

    /// Runs `callhook run` on an existing config file.
    pub fn start_file(path: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_callhook"));
        cmd.args(["run", "--config"])
            .arg(path)
            .args(["--print", "jsonl"])
            .env("CALLHOOK_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let listen = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("listen:"))
            .and_then(|a| a.trim().parse().ok());
        Daemon {
            child,
            lines: rx,
            listen,
        }
    }

    /// Model events until one satisfies `pred` (panics after WAIT).
    pub fn until(&self, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("timed out; so far: {got:#?}"));
            let v: Value = serde_json::from_str(&line).unwrap();
            let done = pred(&v);
            got.push(v);
            if done {
                return got;
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGHUP (reload).
    pub fn hup(&self) {
        self.signal("-HUP");
    }

    /// SIGTERM, then every remaining line until stdout closes; the exit status and stderr.
    pub fn stop(mut self) -> (Vec<Value>, ExitStatus, String) {
        self.signal("-TERM");
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            rest.push(serde_json::from_str(&line).unwrap());
        }
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).ok();
        }
        (rest, status, err)
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }

    /// Base URL of the daemon's HTTP listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen.expect("config has listen:"))
    }

    /// Waits until `GET url` answers (the listener is up).
    pub async fn wait_http(&self) {
        let deadline = Instant::now() + WAIT;
        let client = reqwest::Client::new();
        while client.get(self.url("/healthz")).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the daemon's HTTP listener never came up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of one metric sample (`name{labels}` exactly as rendered), if present.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = reqwest::get(self.url("/metrics"))
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

    /// Polls until `pred` holds on the admin API's `/api/outbox` stats.
    pub async fn wait_outbox(&self, token: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client
                .get(self.url("/api/outbox"))
                .bearer_auth(token)
                .send()
                .await
            {
                if let Ok(text) = r.text().await {
                    if let Ok(v) = serde_json::from_str::<Value>(&text) {
                        if pred(&v) {
                            return v;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "outbox never reached the expected state"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
