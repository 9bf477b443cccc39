//! `GET /v1/live`: the live stream over a WebSocket (JSON text frames).
//!
//! Credentials (see [`super::auth`]): `?ticket=…`, or the ticket in
//! `Sec-WebSocket-Protocol: callhook, ticket.<T>` (the server answers
//! `callhook`; a browser must offer it too), or `?tenant=&extension=&key=`.
//! The query string is convenient but lands in proxy logs; the protocol
//! header does not (a ticket is short-lived either way; a key in a URL is
//! a real leak, so keys belong to server-side clients). The upgrade is
//! accepted before the credential is checked, so that a browser can see
//! why: 4001 no credential, 4002 bad credential, 4003 expired, 4004
//! protocol error, 4008 too slow, 4009 heartbeat missed, 4029 too many
//! clients; 1001 when the server stops. Connections beyond
//! `connections_per_minute_per_ip`, and any from an address blocked for
//! failed authentications ([`super::guard`]), get `429` with `Retry-After`
//! without an upgrade.
//!
//! Heartbeat: a WebSocket ping every `heartbeat`; a client that answered
//! nothing (no pong, no message) for two intervals is dropped
//! (`callhook_live_heartbeat_timeouts_total`). Client messages above
//! `max_message` bytes close the connection (1009).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::auth::{self, CredentialQuery, CLOSE_HEARTBEAT, CLOSE_LIMIT};
use super::guard::Denied;
use super::session::{Next, Session};
use super::Live;
use crate::http::server::ConnectionHandle;
use crate::metrics::metrics;

/// Query of `GET /v1/live`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct LiveQuery {
    /// Credentials.
    #[serde(flatten)]
    pub cred: CredentialQuery,
    /// Last seq seen (resume).
    pub resume: Option<u64>,
}

/// The peer of a request (the server's handle, else axum's ConnectInfo).
pub fn peer(
    conn: &Option<Extension<ConnectionHandle>>,
    info: &Option<ConnectInfo<SocketAddr>>,
) -> Option<SocketAddr> {
    conn.as_ref()
        .map(|c| c.peer())
        .or_else(|| info.as_ref().map(|i| i.0))
}

/// The handler.
pub async fn handle(
    State(live): State<Arc<Live>>,
    Query(q): Query<LiveQuery>,
    headers: HeaderMap,
    conn: Option<Extension<ConnectionHandle>>,
    info: Option<ConnectInfo<SocketAddr>>,
    ws: WebSocketUpgrade,
) -> Response {
    let ip = peer(&conn, &info).map(|p| p.ip());
    if let Some(ip) = ip {
        if !live.admit_connection(ip) {
            metrics().live_refused.with_label_values(&["rate"]).inc();
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "60")],
                "too many connections from this address\n",
            )
                .into_response();
        }
    }
    let cred = match live.authenticate(ip, "websocket", &q.cred, &headers) {
        Ok(p) => Ok(p),
        Err(Denied::Failed(e)) => Err(e),
        Err(Denied::Blocked(left)) => return Denied::blocked_response(left),
    };
    let held = conn.as_ref().map(|c| c.hold());
    let shutdown = conn.as_ref().map(|c| c.shutdown()).unwrap_or_default();
    let max = live.config().max_message;
    ws.protocols(["callhook"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let _held = held;
            serve(live, socket, cred, q.resume, shutdown).await;
        })
}

/// Whether a receive error is a client message above `max_message`
/// (tungstenite's capacity error; axum does not expose its type, so its
/// text: `tests/live_limits.rs` fails if that ever changes).
fn too_big(e: &axum::Error) -> bool {
    let s = e.to_string();
    s.contains("Message too long") || s.contains("Space limit exceeded")
}

async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

async fn serve(
    live: Arc<Live>,
    mut socket: WebSocket,
    cred: Result<auth::Principal, auth::AuthError>,
    resume: Option<u64>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let principal = match cred {
        Ok(p) => p,
        Err(e) => {
            let _ = socket
                .send(Message::Text(super::message::error(
                    e.label(),
                    &e.to_string(),
                )))
                .await;
            return close(socket, e.close_code(), "authentication failed").await;
        }
    };
    let (mut session, first) = match Session::start(&live, principal, resume, "websocket") {
        Ok(s) => s,
        Err(r) => {
            metrics().live_refused.with_label_values(&[r.label()]).inc();
            return close(socket, CLOSE_LIMIT, "too many clients").await;
        }
    };
    for m in first {
        if socket.send(Message::Text(m.to_string())).await.is_err() {
            return;
        }
    }
    let every = live.config().heartbeat;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return close(socket, 1001, "server shutting down").await,
            next = session.next() => match next {
                Next::Send(texts) => {
                    for t in texts {
                        if socket.send(Message::Text(t.to_string())).await.is_err() {
                            return;
                        }
                    }
                }
                Next::Close(code, why) => return close(socket, code, why).await,
            },
            m = socket.recv() => {
                heard = Instant::now();
                match m {
                    Some(Err(e)) if too_big(&e) => {
                        metrics().live_refused.with_label_values(&["message_too_big"]).inc();
                        return close(socket, 1009, "message too big").await;
                    }
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Text(t))) => match session.on_client(&t) {
                        Next::Send(texts) => {
                            for t in texts {
                                if socket.send(Message::Text(t.to_string())).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Next::Close(code, why) => return close(socket, code, why).await,
                    },
                    Some(Ok(Message::Binary(_))) => return close(socket, auth::CLOSE_PROTOCOL, "binary frames are not supported").await,
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > every * 2 {
                    metrics().live_heartbeat_timeouts.inc();
                    return close(socket, CLOSE_HEARTBEAT, "no answer to ping").await;
                }
                if socket.send(Message::Ping(b"hb".to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}
