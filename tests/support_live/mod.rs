//! Helpers of the live API tests: a daemon with `live:` on the simulated
//! PBX, and a WebSocket client that reads JSON messages and close codes.
#![allow(dead_code)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const KEY: &str = "main-live-key-0123456789";
pub const OTHER_KEY: &str = "other-live-key-0123456789";
pub const STEP: Duration = Duration::from_secs(20);

/// A daemon config: PBX `main` on `sim_port`, push team `other`, the live
/// section with both tenants, and `extra` appended.
pub fn config(dir: &std::path::Path, sim_port: u16, listen: u16, extra: &str) -> String {
    format!(
        "state_dir: {state}\nlisten: 127.0.0.1:{listen}\npbx:\n  - id: main\n    ami: {{ host: 127.0.0.1, port: {sim_port}, username: amiuser, secret: \"${{E2E_AMI_SECRET}}\", ping_interval: 2s, ping_timeout: 2s, connect_timeout: 2s }}\npush:\n  teams:\n    other: {{ token: other-team-token-0123456789 }}\nlive:\n  tenants:\n    main: {{ key: \"{KEY}\", code: 270 }}\n    other: {{ key: \"{OTHER_KEY}\", code: 271 }}\n  heartbeat: 5s\n  crm_url: \"http://crm.example/DbFind.aspx?pi={{caller_number}}\"\n{extra}",
        state = dir.join("state").display(),
    )
}

/// Held while a test picks free ports and starts its daemon, until the
/// daemon listens: tests of one binary run in parallel, and a port picked
/// (bound, released) by one could otherwise be picked again by another
/// before the first daemon binds it.
pub static PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_port(port: u16) {
    let deadline = tokio::time::Instant::now() + STEP;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connected WebSocket.
pub struct Ws {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages read so far (JSON), in order.
    pub seen: Vec<Value>,
}

/// Connects to `url` with optional `Sec-WebSocket-Protocol` values.
pub async fn connect(url: &str, protocols: Option<&str>) -> Ws {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    Ws {
        ws,
        seen: Vec::new(),
    }
}

/// What the server did next.
#[derive(Debug)]
pub enum Got {
    Json(Value),
    Text(String),
    Closed(Option<u16>),
}

impl Ws {
    /// The next text message or the close (pings are answered by the library).
    pub async fn next(&mut self) -> Got {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no message in time; seen {:?}", self.seen));
            match m {
                None => return Got::Closed(None),
                Some(Err(_)) => return Got::Closed(None),
                Some(Ok(Message::Text(t))) => {
                    return match serde_json::from_str::<Value>(&t) {
                        Ok(v) => {
                            self.seen.push(v.clone());
                            Got::Json(v)
                        }
                        Err(_) => Got::Text(t),
                    }
                }
                Some(Ok(Message::Close(f))) => return Got::Closed(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next JSON message (panics on a close).
    pub async fn json(&mut self) -> Value {
        match self.next().await {
            Got::Json(v) => v,
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    /// The next text frame as is (Meetip).
    pub async fn text(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no frame in time; seen {:?}", self.seen));
            match m {
                Some(Ok(Message::Text(t))) => {
                    self.seen.push(Value::String(t.clone()));
                    return t;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    panic!("closed while waiting for a frame; seen {:?}", self.seen)
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads until a message satisfies `pred`; returns it.
    pub async fn until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        loop {
            match self.next().await {
                Got::Json(v) if pred(&v) => return v,
                Got::Json(_) | Got::Text(_) => {}
                Got::Closed(c) => panic!(
                    "closed ({c:?}) before the expected message; seen {:?}",
                    self.seen
                ),
            }
        }
    }

    /// The close code (reading past any messages).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Got::Closed(c) = self.next().await {
                return c;
            }
        }
    }

    /// Sends a text frame.
    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::Text(text.to_string())).await.unwrap();
    }
}

/// `ws://…/v1/live?…` of a daemon address.
pub fn live_url(addr: std::net::SocketAddr, query: &str) -> String {
    format!("ws://{addr}/v1/live?{query}")
}

/// The key query of an extension of `main`.
pub fn key_query(ext: &str) -> String {
    format!("tenant=main&extension={ext}&key={KEY}")
}

/// Reads frames until the page's own-state lines (`(info,-…)`, repeats
/// folded, the login's one left out when it is not the first wanted) are
/// exactly `want`, failing as soon as they stray; returns every frame read.
pub async fn until_states(ws: &mut Ws, want: &[&str]) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut states: Vec<&str> = Vec::new();
        for l in &lines {
            let l: &String = l;
            if l.starts_with("(info,-") && states.last() != Some(&l.as_str()) {
                states.push(l);
            }
        }
        if !states.is_empty() && states.first() != want.first() {
            states.remove(0);
        }
        if states == want {
            return lines;
        }
        assert!(
            want.starts_with(&states),
            "own states {states:?}, want {want:?}: {lines:?}"
        );
        lines.push(ws.text().await);
    }
}
