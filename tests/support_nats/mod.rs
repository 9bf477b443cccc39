//! A real 3-node NATS JetStream cluster on loopback for tests: three
//! `nats-server` processes (Debian's 2.9.x, installed by `.ci/run`) with
//! routes between them, free ports, temporary store directories; `start`
//! returns once the cluster has a JetStream meta leader (asked through the
//! client), and dropping it kills the processes and removes the stores.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound of the waits (a safety net on a loaded machine).
pub const NATS_WAIT: Duration = Duration::from_secs(60);

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
    pub dir: PathBuf,
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
        let dir = std::env::temp_dir().join(format!("callhook-nats-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let node = format!("n{}", i + 1);
            let store = dir.join(&node);
            std::fs::create_dir_all(&store).unwrap();
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, c))| format!("nats-route://127.0.0.1:{c}"))
                .collect();
            let cluster = if n > 1 {
                format!(
                    "cluster {{\n  name: callhook-test\n  listen: 127.0.0.1:{cport}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let conf = dir.join(format!("{node}.conf"));
            let authorization = match &auth {
                Some((u, p)) => format!("authorization {{\n  user: {u}\n  password: \"{p}\"\n}}\n"),
                None => String::new(),
            };
            std::fs::write(
                &conf,
                format!(
                    "server_name: {node}\nlisten: 127.0.0.1:{port}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n{cluster}{authorization}",
                    store.display()
                ),
            )
            .unwrap();
            nodes.push(Node {
                name: node,
                port: *port,
                cluster_port: *cport,
                conf,
                child: None,
            });
        }
        let mut c = NatsCluster { nodes, dir, auth };
        for i in 0..n {
            c.start_node(i);
        }
        c.wait_ready().await;
        c
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

    /// Waits until JetStream has a meta leader: an R`n` stream can be
    /// created (and deleted). (Account info is not asked: async-nats
    /// expects fields 2.9 servers do not send.)
    pub async fn wait_ready(&self) {
        let client = self.client().await;
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + NATS_WAIT;
        let replicas = self.nodes.iter().filter(|n| n.child.is_some()).count();
        loop {
            let probe = async {
                let s = js
                    .get_or_create_stream(async_nats::jetstream::stream::Config {
                        name: "CALLHOOK_TEST_PROBE".into(),
                        subjects: vec!["callhook-test-probe".into()],
                        num_replicas: replicas,
                        storage: async_nats::jetstream::stream::StorageType::Memory,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                drop(s);
                js.delete_stream("CALLHOOK_TEST_PROBE")
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            };
            match tokio::time::timeout(Duration::from_secs(5), probe).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) if Instant::now() >= deadline => {
                    panic!(
                        "JetStream never became ready: {e}; logs in {}",
                        self.dir.display()
                    )
                }
                Err(_) if Instant::now() >= deadline => {
                    panic!(
                        "JetStream never became ready (timeout); logs in {}",
                        self.dir.display()
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
