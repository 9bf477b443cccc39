//! Helpers for the delivery tests: an HTTP sink whose answers can be
//! scripted at runtime, delivery requests, targets, state directories,
//! bounded polling, and an outbox with its dispatcher ([`rig`]).
#![allow(dead_code)]

pub mod rig;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use callhook::deliver::outbox::{ListFilter, Status};
use callhook::deliver::{
    validate_targets, DeliveryRequest, DeliveryRow, Outbox, RawTarget, Target,
};
use tokio::sync::watch;

use crate::support_tmp::TestDir;

/// Upper bound of every wait (a safety net, never a synchronisation).
pub const WAIT: Duration = Duration::from_secs(15);

/// A request as the sink saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Arrival time.
    pub at: Instant,
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Vec<u8>,
}

impl Received {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<binary>").to_string())
    }
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// A bare status.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
    /// Adds a header.
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    /// Sets the body.
    pub fn body(mut self, b: &str) -> Self {
        self.body = b.into();
        self
    }
    /// Answers after a delay.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

#[derive(Default)]
struct Script {
    /// Per path: answers used once each, in order.
    queued: HashMap<String, VecDeque<Reply>>,
    /// Per path: the answer once the queue is empty.
    defaults: HashMap<String, Reply>,
    /// For any other path.
    fallback: Option<Reply>,
}

struct SinkState {
    received: Mutex<Vec<Received>>,
    script: Mutex<Script>,
}

/// A local HTTP server recording every request.
pub struct Sink {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<SinkState>,
    server: tokio::task::JoinHandle<()>,
}

async fn handle(
    State(s): State<Arc<SinkState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    // The answer is chosen before the arrival is visible: a test that
    // changes the script once it sees N requests changes the N+1-th answer.
    let reply = {
        let mut sc = s.script.lock().unwrap();
        let queued = sc.queued.get_mut(&path).and_then(VecDeque::pop_front);
        queued
            .or_else(|| sc.defaults.get(&path).cloned())
            .or_else(|| sc.fallback.clone())
            .unwrap_or_else(|| Reply::status(200))
    };
    s.received.lock().unwrap().push(Received {
        at: Instant::now(),
        method: method.to_string(),
        uri: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body: body.to_vec(),
    });
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        reply.body,
    )
        .into_response();
    for (k, v) in reply.headers {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    resp
}

impl Sink {
    /// Starts on a free port.
    pub async fn start() -> Sink {
        Self::start_on(0).await.expect("bind the sink")
    }

    /// Starts on a given port (0: any).
    pub async fn start_on(port: u16) -> std::io::Result<Sink> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SinkState {
            received: Mutex::new(Vec::new()),
            script: Mutex::new(Script::default()),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sink {
            addr,
            state,
            server,
        })
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers used once each, in order, for `path`.
    pub fn queue(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .script
            .lock()
            .unwrap()
            .queued
            .entry(path.to_string())
            .or_default()
            .extend(replies);
    }

    /// The answer for `path` once its queue is empty.
    pub fn set_default(&self, path: &str, reply: Reply) {
        self.state
            .script
            .lock()
            .unwrap()
            .defaults
            .insert(path.to_string(), reply);
    }

    /// The answer for every path without its own script.
    pub fn set_fallback(&self, reply: Reply) {
        self.state.script.lock().unwrap().fallback = Some(reply);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    /// Requests received for one path.
    pub fn for_path(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path() == path)
            .collect()
    }

    /// The values of the query parameter `key` of the requests for `path`.
    pub fn query_values(&self, path: &str, key: &str) -> BTreeSet<String> {
        let prefix = format!("{key}=");
        self.for_path(path)
            .iter()
            .filter_map(|r| {
                r.uri
                    .split(['?', '&'])
                    .find_map(|p| p.strip_prefix(prefix.as_str()))
                    .map(str::to_string)
            })
            .collect()
    }

    /// Waits until at least `n` requests arrived (panics after [`WAIT`]).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.received();
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "sink got {} requests, expected {n}",
                r.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops listening.
    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A fresh, unique state directory under the system temp dir
/// (`callhook-<name>-XXXXXX`), removed when dropped unless the test panics.
pub fn state_dir(name: &str) -> TestDir {
    TestDir::new(name)
}

/// Epoch seconds now.
pub fn now() -> f64 {
    callhook::source::now_epoch()
}

/// A JSON POST for `session`/`state` to `url`.
pub fn request(target: &str, session: &str, state: &str, url: &str) -> DeliveryRequest {
    DeliveryRequest {
        target: target.into(),
        rule: "crm-calls".into(),
        session_id: session.into(),
        pbx: "main".into(),
        event_id: format!("{session}/leg-1/{state}/crm-calls"),
        method: "POST".into(),
        url: url.into(),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: Some(format!(r#"{{"session":"{session}","state":"{state}"}}"#).into_bytes()),
        idempotency_key: Some(format!("{session}-{state}")),
        created_at: now(),
        expires_at: None,
        refused: None,
        secrets: Vec::new(),
    }
}

/// Parses `name: {...}` YAML and validates it.
pub fn targets(yaml: &str) -> BTreeMap<String, Target> {
    let raw: BTreeMap<String, RawTarget> = callhook::yaml::de::from_str(yaml).expect("target yaml");
    validate_targets(&raw, std::path::Path::new(".")).expect("valid targets")
}

/// What the dispatcher watches.
pub type Targets = Arc<BTreeMap<String, Target>>;

/// A watch channel carrying targets.
pub fn target_channel(yaml: &str) -> (watch::Sender<Targets>, watch::Receiver<Targets>) {
    watch::channel(Arc::new(targets(yaml)))
}

/// Every row of the outbox (oldest first).
pub async fn rows(outbox: &Outbox) -> Vec<DeliveryRow> {
    let mut r = outbox
        .list(ListFilter {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    r.reverse();
    r
}

/// Polls the outbox until `f` holds for its rows (panics after [`WAIT`]).
pub async fn wait_rows(
    outbox: &Outbox,
    what: &str,
    f: impl Fn(&[DeliveryRow]) -> bool,
) -> Vec<DeliveryRow> {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = rows(outbox).await;
        if f(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// True when every row has this status.
pub fn all(rows: &[DeliveryRow], s: Status) -> bool {
    !rows.is_empty() && rows.iter().all(|r| r.status == s)
}
