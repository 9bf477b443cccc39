//! Shared by the AMI proxy's end-to-end tests: the daemon's config with an
//! `ami_proxy:` section, a raw AMI client over TCP (for the attacks and for
//! the test's own actions), and the real client libraries' locations.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// Upper bound of every wait (a safety net, never a synchronisation).
pub const WAIT: Duration = Duration::from_secs(30);

/// The PBX login callhook uses against the simulator.
pub const PBX_USER: &str = "amiuser";
/// Its secret.
pub const PBX_SECRET: &str = "e2e-pbx-secret-42";

/// One proxy user of the test config: name, secret, and extra YAML lines
/// (already indented for a list item's keys).
pub struct User<'a> {
    pub name: &'a str,
    pub secret: &'a str,
    pub extra: &'a str,
}

/// A daemon config: one PBX (the simulator) and the proxy on `proxy_port`.
pub fn config(
    state: &std::path::Path,
    sim_port: u16,
    http_port: u16,
    proxy_port: u16,
    settings: &str,
    users: &[User<'_>],
) -> String {
    let mut s = format!(
        "listen: 127.0.0.1:{http_port}\nstate_dir: {}\npbx:\n  - id: main\n    ami: {{ host: 127.0.0.1, port: {sim_port}, username: {PBX_USER}, secret: \"${{E2E_AMI_SECRET}}\", ping_interval: 2s, ping_timeout: 2s, connect_timeout: 2s }}\nami_proxy:\n  listen: 127.0.0.1:{proxy_port}\n{settings}  users:\n",
        state.display()
    );
    for u in users {
        s.push_str(&format!(
            "    - username: {}\n      secret: \"{}\"\n{}",
            u.name, u.secret, u.extra
        ));
    }
    s
}

/// One AMI packet as `(key, value)` pairs, in order.
pub type Packet = Vec<(String, String)>;

/// The value of `key` (case-insensitive) in a packet.
pub fn get<'a>(p: &'a Packet, key: &str) -> Option<&'a str> {
    p.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// A raw AMI client: what any tool (or attacker) can send.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The banner line.
    pub banner: String,
}

impl Raw {
    /// Connects (retrying until the proxy listens) and reads the banner.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let deadline = Instant::now() + WAIT;
        let stream = loop {
            match TcpStream::connect(addr).await {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("the proxy never listened on {addr}: {e}"),
            }
        };
        let mut r = Raw {
            stream,
            buf: Vec::new(),
            banner: String::new(),
        };
        r.banner = r.line().await.expect("banner");
        r
    }

    /// Connects once, without reading anything.
    pub async fn connect_bare(addr: SocketAddr) -> std::io::Result<TcpStream> {
        TcpStream::connect(addr).await
    }

    async fn fill(&mut self) -> Option<()> {
        let mut chunk = [0u8; 8192];
        let n = timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("the proxy answered nothing in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Some(())
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(l);
            }
            self.fill().await?;
        }
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends one action.
    pub async fn send(&mut self, fields: &[(&str, &str)]) {
        let mut s = String::new();
        for (k, v) in fields {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        self.send_raw(s.as_bytes()).await.expect("write");
    }

    /// The next packet; `None` when the proxy closed the connection.
    pub async fn packet(&mut self) -> Option<Packet> {
        let mut p = Vec::new();
        loop {
            let l = self.line().await?;
            if l.is_empty() {
                if p.is_empty() {
                    continue;
                }
                return Some(p);
            }
            match l.split_once(':') {
                Some((k, v)) => p.push((k.trim().to_string(), v.trim().to_string())),
                None => p.push((String::new(), l)),
            }
        }
    }

    /// Packets until one with `ActionID: id` and a `Response:` (events in
    /// between are returned too).
    pub async fn response(&mut self, id: &str) -> (Packet, Vec<Packet>) {
        let mut others = Vec::new();
        loop {
            let p = self
                .packet()
                .await
                .expect("connection closed before the response");
            if get(&p, "ActionID") == Some(id) && get(&p, "Response").is_some() {
                return (p, others);
            }
            others.push(p);
        }
    }

    /// Sends an action with `ActionID: id` and waits for its response.
    pub async fn action(&mut self, id: &str, fields: &[(&str, &str)]) -> Packet {
        let mut all = fields.to_vec();
        all.push(("ActionID", id));
        self.send(&all).await;
        self.response(id).await.0
    }

    /// Logs in with a plain secret; the response.
    pub async fn login(&mut self, user: &str, secret: &str) -> Packet {
        self.action(
            "login-1",
            &[("Action", "Login"), ("Username", user), ("Secret", secret)],
        )
        .await
    }

    /// Sends `UserEvent` (the simulator's cue to drop the PBX link) once
    /// callhook's PBX link is up — the proxy answers "down" until then —
    /// and returns its answer (an error: the outcome is unknown).
    pub async fn trigger(&mut self) -> Packet {
        let deadline = Instant::now() + WAIT;
        for n in 0.. {
            let id = format!("trigger-{n}");
            let r = self
                .action(&id, &[("Action", "UserEvent"), ("UserEvent", "Trigger")])
                .await;
            if !get(&r, "Message").is_some_and(|m| m.contains("connection is down")) {
                return r;
            }
            assert!(Instant::now() < deadline, "the PBX link never came up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        unreachable!()
    }

    /// True once the proxy has closed the connection (reads and drops
    /// whatever comes before).
    pub async fn closed(&mut self) -> bool {
        loop {
            if self.fill().await.is_none() {
                return true;
            }
        }
    }
}

/// Where `.ci/run` installs the published client libraries.
pub fn local_dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".ci/local")
        .join(sub)
}

/// Whether a real client library is installed; when it is not, the test
/// says so and is skipped — unless `CALLHOOK_REQUIRE_AMI_CLIENTS=1` (set
/// by `.ci/run`, which installs them), where a missing library fails.
pub fn library_available(name: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("CALLHOOK_REQUIRE_AMI_CLIENTS").as_deref() == Ok("1") {
        panic!("{name} is not installed (bash .ci/run installs it)");
    }
    eprintln!("SKIPPED: {name} is not installed (bash .ci/run installs it)");
    false
}
