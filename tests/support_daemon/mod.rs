//! Running the real `callhook` binary in end-to-end tests: start it with a
//! config, read its stdout, stop it with SIGTERM or SIGKILL (or kill and
//! restart it at random moments), talk to its HTTP listener, read its
//! outbox.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support_tmp::TestDir;

/// Upper bound of every wait (a safety net, never a synchronisation).
pub const WAIT: Duration = Duration::from_secs(30);

/// A fresh directory for one test (`callhook-e2e-<name>-XXXXXX`), removed
/// when dropped unless the test panics.
pub fn temp_dir(name: &str) -> TestDir {
    TestDir::new(&format!("e2e-{name}"))
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

/// The daemon, its stdout lines arriving on a channel, its stderr collected.
pub struct Daemon {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    /// `listen:` of the config.
    pub listen: Option<SocketAddr>,
    /// `admin.listen` of the config (admin routes and /metrics live there).
    pub admin: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    stderr_done: Option<std::thread::JoinHandle<()>>,
    /// A directory the daemon owns ([`Daemon::owning`]): removed after the
    /// process is gone.
    dir: Option<TestDir>,
}

/// The top-level `listen:` and `admin.listen` of a config (inline
/// `admin: { …, listen: X }` or an indented `listen:` under `admin:`).
fn listen_addrs(text: &str) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let listen = text
        .lines()
        .find_map(|l| l.strip_prefix("listen:"))
        .and_then(|a| a.trim().parse().ok());
    let mut admin = None;
    let mut in_admin = false;
    for l in text.lines() {
        if l.starts_with("admin:") {
            in_admin = true;
            if let Some(i) = l.find("listen:") {
                let rest = &l[i + 7..];
                let end = rest.find([',', '}']).unwrap_or(rest.len());
                admin = rest[..end].trim().parse().ok();
                break;
            }
        } else if in_admin && l.starts_with(' ') {
            if let Some(a) = l.trim().strip_prefix("listen:") {
                admin = a.trim().parse().ok();
                break;
            }
        } else {
            in_admin = false;
        }
    }
    (listen, admin)
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
        Self::start_cmd(path, env, |_| {})
    }

    /// Like [`Daemon::start`], with the process limited to `nofile` open
    /// files (soft and hard limit, set between fork and exec).
    pub fn start_limited(config: &str, dir: &Path, env: &[(&str, &str)], nofile: u64) -> Daemon {
        let path = dir.join("callhook.yaml");
        std::fs::write(&path, config).unwrap();
        Self::start_cmd(&path, env, move |cmd| {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit (async-signal-safe) runs in the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: nofile as libc::rlim_t,
                        rlim_max: nofile as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
    }

    /// Runs `callhook run --config path` after `customize(&mut cmd)`.
    pub fn start_cmd(
        path: &Path,
        env: &[(&str, &str)],
        customize: impl FnOnce(&mut Command),
    ) -> Daemon {
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
        customize(&mut cmd);
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
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_done = child.stderr.take().map(|e| {
            let buf = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(e).lines().map_while(Result::ok) {
                    let mut b = buf.lock().unwrap();
                    b.push_str(&line);
                    b.push('\n');
                }
            })
        });
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let (listen, admin) = listen_addrs(&text);
        Daemon {
            child,
            lines: rx,
            listen,
            admin,
            stderr,
            stderr_done,
            dir: None,
        }
    }

    /// The daemon keeps `dir` (its config and state, made by a helper that
    /// returns only the daemon) until it is dropped, stopped or killed.
    pub fn owning(mut self, dir: TestDir) -> Daemon {
        self.dir = Some(dir);
        self
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Base URL of the admin routes: `admin.listen`, else `listen`.
    pub fn admin_url(&self, path: &str) -> String {
        match self.admin {
            Some(a) => format!("http://{a}{path}"),
            None => self.url(path),
        }
    }

    /// The whole `/metrics` text (from the admin listener when there is one).
    pub async fn metrics_text(&self) -> Option<String> {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
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
        if let Some(t) = self.stderr_done.take() {
            let _ = t.join();
        }
        let err = self.stderr();
        (rest, status, err)
    }

    /// `kills` times: up for a random time in `up_ms`, kill -9, down for a
    /// random time in `down_ms`, started again on `config` and answering
    /// HTTP. Each kill is logged, with `note()` appended; returns the last
    /// daemon started.
    pub async fn kill9_restarts(
        mut self,
        config: &Path,
        env: &[(&str, &str)],
        kills: usize,
        up_ms: Range<u64>,
        down_ms: Range<u64>,
        note: impl Fn() -> String,
    ) -> Daemon {
        use rand::Rng;
        for k in 0..kills {
            let up = rand::thread_rng().gen_range(up_ms.clone());
            tokio::time::sleep(Duration::from_millis(up)).await;
            tokio::task::block_in_place(|| self.kill9());
            let down = rand::thread_rng().gen_range(down_ms.clone());
            eprintln!("kill {k}: after {up} ms up, {down} ms down{}", note());
            tokio::time::sleep(Duration::from_millis(down)).await;
            self = Daemon::start_file(config, env);
            self.wait_http().await;
        }
        self
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

    /// Waits until `GET /healthz` answers (the listener is up; the admin
    /// listener when there is one).
    pub async fn wait_http(&self) {
        let deadline = Instant::now() + WAIT;
        let client = reqwest::Client::new();
        while client.get(self.admin_url("/healthz")).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the daemon's HTTP listener never came up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of one metric sample (`name{labels}` exactly as rendered), if present.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = self.metrics_text().await?;
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
                .get(self.admin_url("/api/outbox"))
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

/// Asserts that a finished `callhook` command succeeded (its stderr is
/// the failure message).
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The deliveries of a daemon's outbox (`<state>/outbox.sqlite3`, opened
/// read-only): rows per (rule, session) and the rows still waiting.
pub struct OutboxRows {
    /// (rule, session) → rows.
    pub per_session: BTreeMap<(String, String), usize>,
    /// Rows pending or in flight.
    pub waiting: usize,
}

fn outbox_db(state: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        state.join("outbox.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// See [`OutboxRows`].
pub fn outbox_rows(state: &Path) -> OutboxRows {
    let c = outbox_db(state);
    let mut st = c
        .prepare("SELECT rule, session_id, COUNT(*) FROM deliveries GROUP BY rule, session_id")
        .unwrap();
    let per_session = st
        .query_map([], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                r.get::<_, i64>(2)? as usize,
            ))
        })
        .unwrap()
        .collect::<Result<BTreeMap<_, _>, _>>()
        .unwrap();
    let waiting: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'inflight')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    OutboxRows {
        per_session,
        waiting: waiting as usize,
    }
}

/// The JSON bodies of `rule`'s rows, per session.
pub fn outbox_bodies(state: &Path, rule: &str) -> BTreeMap<String, Value> {
    let c = outbox_db(state);
    let mut st = c
        .prepare("SELECT session_id, body FROM deliveries WHERE rule = ?1")
        .unwrap();
    st.query_map([rule], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
    })
    .unwrap()
    .map(|r| {
        let (s, b) = r.unwrap();
        (s, serde_json::from_slice(&b).unwrap())
    })
    .collect()
}

impl OutboxRows {
    /// The sessions with rows of `rule`, and how many each.
    pub fn sessions(&self, rule: &str) -> BTreeMap<&str, usize> {
        self.per_session
            .iter()
            .filter(|((r, _), _)| r == rule)
            .map(|((_, s), n)| (s.as_str(), *n))
            .collect()
    }

    /// The sessions with an `opened` row and no `closed` row.
    pub fn unclosed(&self, opened: &str, closed: &str) -> Vec<&str> {
        let closed = self.sessions(closed);
        self.sessions(opened)
            .into_keys()
            .filter(|s| !closed.contains_key(s))
            .collect()
    }
}

/// Polls the outbox until nothing waits and every `opened` session has a
/// `closed` row, or until `deadline` (what is missing then is the caller's
/// to assert).
pub async fn wait_closed(state: &Path, opened: &str, closed: &str, deadline: Instant) {
    loop {
        let rows = outbox_rows(state);
        if (rows.waiting == 0 && rows.unclosed(opened, closed).is_empty())
            || Instant::now() > deadline
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
