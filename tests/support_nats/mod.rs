//! A real 3-node NATS JetStream cluster on loopback for tests: three
//! `nats-server` processes (Debian's 2.9.x, installed by `.ci/run`) with
//! routes between them, free ports, temporary store directories; `start`
//! returns once JetStream is ready by the servers' own word (every node's
//! monitoring `/healthz` is ok — it knows the meta leader and is current
//! with it — and the meta leader's `/jsz` counts every node in the meta
//! group, all current), and dropping it kills the processes and removes
//! the stores. A node that exits while starting (its port taken by another
//! test in the meantime) restarts the cluster on fresh ports.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support_tmp::TestDir;

/// Upper bound of the waits (a safety net on a loaded machine).
pub const NATS_WAIT: Duration = Duration::from_secs(60);
/// Starts on fresh ports after a node could not bind its own.
const START_TRIES: usize = 3;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `nats-server` can be run (CI installs it; a developer machine
/// may not have it, and the tests then say so and fail).
pub fn nats_server() -> String {
    std::env::var("CALLHOOK_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_string())
}

/// One node of the cluster.
pub struct Node {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    /// The monitoring port (`/healthz`, `/jsz`).
    pub http_port: u16,
    pub conf: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// Three routed JetStream servers.
pub struct NatsCluster {
    pub nodes: Vec<Node>,
    /// The stores, configs and logs (removed on drop, kept when panicking).
    pub dir: TestDir,
    /// User and password clients must log in with, when set.
    pub auth: Option<(String, String)>,
}

impl NatsCluster {
    /// Starts three nodes and waits for a JetStream meta leader.
    pub async fn start(name: &str) -> NatsCluster {
        Self::start_n(name, 3).await
    }

    /// Starts three nodes that require a user and password.
    pub async fn start_with_auth(name: &str, user: &str, password: &str) -> NatsCluster {
        Self::start_opts(name, 3, Some((user.to_string(), password.to_string()))).await
    }

    /// Starts `n` routed nodes (1: a single server, still clustered config-free).
    pub async fn start_n(name: &str, n: usize) -> NatsCluster {
        Self::start_opts(name, n, None).await
    }

    async fn start_opts(name: &str, n: usize, auth: Option<(String, String)>) -> NatsCluster {
        let dir = TestDir::new(&format!("nats-{name}"));
        let mut c = NatsCluster {
            nodes: Vec::new(),
            dir,
            auth,
        };
        for attempt in 1..=START_TRIES {
            c.configure(n);
            for i in 0..n {
                c.start_node(i);
            }
            match c.wait_ready().await {
                Ok(took) => {
                    eprintln!("NATS ({n} node(s)) ready after {took:?}");
                    return c;
                }
                Err(exited)
                    if attempt < START_TRIES && exited.contains("address already in use") =>
                {
                    eprintln!("NATS start on fresh ports: {exited}");
                    for i in 0..n {
                        c.kill_node(i);
                    }
                }
                Err(exited) => panic!("{exited}"),
            }
        }
        unreachable!("the last try returns or panics")
    }

    /// Fresh ports, empty stores and the config of `n` nodes.
    fn configure(&mut self, n: usize) {
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        self.nodes.clear();
        for (i, (port, cport, hport)) in ports.iter().enumerate() {
            let node = format!("n{}", i + 1);
            let store = self.dir.join(&node);
            let _ = std::fs::remove_dir_all(&store);
            std::fs::create_dir_all(&store).unwrap();
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, c, _))| format!("nats-route://127.0.0.1:{c}"))
                .collect();
            let cluster = if n > 1 {
                format!(
                    "cluster {{\n  name: callhook-test\n  listen: 127.0.0.1:{cport}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let conf = self.dir.join(format!("{node}.conf"));
            let authorization = match &self.auth {
                Some((u, p)) => format!("authorization {{\n  user: {u}\n  password: \"{p}\"\n}}\n"),
                None => String::new(),
            };
            std::fs::write(
                &conf,
                format!(
                    "server_name: {node}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{hport}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n{cluster}{authorization}",
                    store.display()
                ),
            )
            .unwrap();
            self.nodes.push(Node {
                name: node,
                port: *port,
                cluster_port: *cport,
                http_port: *hport,
                conf,
                child: None,
            });
        }
    }

    /// Starts (or restarts) node `i` with its store as it was.
    pub fn start_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "{} already runs", n.name);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", n.name))).unwrap();
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&n.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): install Debian's nats-server (bash .ci/run does)",
                    nats_server()
                )
            });
        n.child = Some(child);
    }

    /// SIGKILL node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every node's client URL, comma-free list.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// YAML flow list of the client URLs (`[nats://…, …]`).
    pub fn servers_yaml(&self) -> String {
        format!("[{}]", self.urls().join(", "))
    }

    /// A client connected to the cluster (any node).
    pub async fn client(&self) -> async_nats::Client {
        let deadline = Instant::now() + NATS_WAIT;
        loop {
            let urls: Vec<async_nats::ServerAddr> = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .filter_map(|n| n.url().parse().ok())
                .collect();
            let opts = match &self.auth {
                Some((u, p)) => {
                    async_nats::ConnectOptions::with_user_and_password(u.clone(), p.clone())
                }
                None => async_nats::ConnectOptions::new(),
            };
            match opts
                .retry_on_initial_connect()
                .connection_timeout(Duration::from_secs(2))
                .connect(urls)
                .await
            {
                Ok(c) => return c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot connect to NATS: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Waits until JetStream is ready on every running node: each one's
    /// `/healthz` is ok (it knows the meta leader and is current with it)
    /// and, clustered, the meta leader's `/jsz` counts every running node
    /// in the meta group, the others current. How long that took; `Err`
    /// (with its log) when a node exited meanwhile: it never gets ready.
    pub async fn wait_ready(&mut self) -> Result<Duration, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let started = Instant::now();
        let deadline = started + NATS_WAIT;
        loop {
            for n in &mut self.nodes {
                let Some(child) = n.child.as_mut() else {
                    continue;
                };
                if let Ok(Some(status)) = child.try_wait() {
                    n.child = None;
                    let log = std::fs::read_to_string(self.dir.join(format!("{}.log", n.name)))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    return Err(format!(
                        "nats-server {} exited ({status}) while starting: {}",
                        n.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    ));
                }
            }
            let not_yet = match self.ready(&http).await {
                Ok(()) => return Ok(started.elapsed()),
                Err(why) => why,
            };
            assert!(
                Instant::now() < deadline,
                "JetStream never became ready within {NATS_WAIT:?}: {not_yet}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ready, or what is not yet.
    async fn ready(&self, http: &reqwest::Client) -> Result<(), String> {
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
        let get = |n: &Node, path: &str| {
            let url = format!("http://127.0.0.1:{}{path}", n.http_port);
            let name = n.name.clone();
            async move {
                let r = http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
                let ok = r.status().is_success();
                let text = r.text().await.map_err(|e| format!("{name}: {e}"))?;
                Ok::<(bool, String), String>((ok, text))
            }
        };
        for n in &running {
            let (ok, text) = get(n, "/healthz").await?;
            if !ok {
                return Err(format!("{}: {text}", n.name));
            }
        }
        if running.len() < 2 {
            return Ok(());
        }
        for n in &running {
            let (_, text) = get(n, "/jsz").await?;
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let meta = &v["meta_cluster"];
            if meta["leader"].as_str() != Some(n.name.as_str()) {
                continue;
            }
            let size = meta["cluster_size"].as_u64().unwrap_or(0) as usize;
            let current = meta["replicas"]
                .as_array()
                .map_or(0, |r| r.iter().filter(|p| p["current"] == true).count());
            if size == running.len() && current + 1 == running.len() {
                return Ok(());
            }
            return Err(format!("meta leader {}: {meta}", n.name));
        }
        Err("no meta leader yet".into())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
