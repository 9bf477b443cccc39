//! The baselines of `benches/live.rs`: the same bursts of pre-serialized
//! messages fanned out by a bare `tokio::sync::broadcast` to every socket,
//! with nothing of callhook's (no auth, no per-tenant state, no resume ring,
//! no queues of our own).
//!
//! - [`Kind::Raw`], the cheapest fan-out possible with one task per socket:
//!   each burst's WebSocket frames are encoded **once** (a server frame is
//!   unmasked, so its bytes are the same for every client) and each socket
//!   gets them with **one write** per burst (several bursts when it fell
//!   behind: still one write). No per-client encoding, copy or buffer.
//! - [`Kind::Tungstenite`], the previous baseline: raw tokio-tungstenite
//!   server sockets, each encoding every message itself (`feed` each text,
//!   one `flush` per burst).

use std::sync::Arc;

use bytes::Bytes;
use futures::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Messages due at the same moment.
pub struct Burst {
    /// Their JSON texts.
    pub texts: Vec<Arc<str>>,
    /// The same as server WebSocket frames, back to back.
    pub frames: Bytes,
}

impl Burst {
    /// A burst of `texts`, framed once.
    pub fn new(texts: Vec<Arc<str>>) -> Self {
        let mut frames = Vec::new();
        for t in &texts {
            text_frame(t.as_bytes(), &mut frames);
        }
        Self {
            texts,
            frames: frames.into(),
        }
    }
}

/// Appends a server (unmasked, final) text frame of `payload` to `out`.
pub fn text_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Which fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Frames encoded once, one write per burst per socket.
    Raw,
    /// tokio-tungstenite sockets, each encoding every message.
    Tungstenite,
}

impl Kind {
    /// The report's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Raw => "baseline: frames encoded once, 1 write/burst",
            Kind::Tungstenite => "bare broadcast to tokio-tungstenite sockets",
        }
    }
}

/// Accepts WebSocket clients on `listener` until `stop`; each gets `hello`,
/// `snapshot`, then every burst sent on `tx`.
pub async fn serve(
    kind: Kind,
    listener: TcpListener,
    tx: broadcast::Sender<Arc<Burst>>,
    stop: CancellationToken,
) {
    loop {
        let (sock, _) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let rx = tx.subscribe();
        let stop = stop.clone();
        tokio::spawn(async move {
            match kind {
                Kind::Raw => raw(sock, rx, stop).await,
                Kind::Tungstenite => tungstenite(sock, rx, stop).await,
            }
        });
    }
}

const FIRST: [&str; 2] = ["{\"type\":\"hello\"}", "{\"type\":\"snapshot\"}"];

/// The `Sec-WebSocket-Key` of a request head.
fn ws_key(head: &[u8]) -> Option<String> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_string())
    })
}

/// The next burst to send, skipping over any this client lagged behind on;
/// `None` once the bench stops or the sender is gone.
async fn next_burst(
    rx: &mut broadcast::Receiver<Arc<Burst>>,
    stop: &CancellationToken,
) -> Option<Arc<Burst>> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            b = rx.recv() => match b {
                Ok(b) => return Some(b),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        }
    }
}

async fn raw(
    mut sock: TcpStream,
    mut rx: broadcast::Receiver<Arc<Burst>>,
    stop: CancellationToken,
) {
    let _ = sock.set_nodelay(true);
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(n) if n > 0 && head.len() < 8192 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let Some(key) = ws_key(&head) else { return };
    drop(head);
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    for t in FIRST {
        text_frame(t.as_bytes(), &mut out);
    }
    if sock.write_all(&out).await.is_err() {
        return;
    }
    drop(out);
    loop {
        let Some(b) = next_burst(&mut rx, &stop).await else {
            return;
        };
        let done = if rx.is_empty() {
            sock.write_all(&b.frames).await
        } else {
            // Behind: everything that is ready, still in one write.
            let mut all = b.frames.to_vec();
            while let Ok(b) = rx.try_recv() {
                all.extend_from_slice(&b.frames);
            }
            sock.write_all(&all).await
        };
        if done.is_err() {
            return;
        }
    }
}

async fn tungstenite(
    sock: TcpStream,
    mut rx: broadcast::Receiver<Arc<Burst>>,
    stop: CancellationToken,
) {
    let _ = sock.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else {
        return;
    };
    for t in FIRST {
        if ws.send(Message::Text(t.into())).await.is_err() {
            return;
        }
    }
    loop {
        let Some(b) = next_burst(&mut rx, &stop).await else {
            return;
        };
        let mut bursts = vec![b];
        while let Ok(b) = rx.try_recv() {
            bursts.push(b);
        }
        for b in &bursts {
            for t in &b.texts {
                if ws.feed(Message::Text(t.to_string())).await.is_err() {
                    return;
                }
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}
