//! `GET /v1/live/sse`: the same stream as Server-Sent Events, for clients
//! that cannot use WebSockets. Each message is one event with `id: <seq>`
//! and `data: <json>` (no `event:` name, so `EventSource.onmessage` gets
//! them all; the JSON's `type` tells them apart). A reconnecting
//! `EventSource` sends `Last-Event-ID`, which resumes like the WebSocket's
//! `resume` (also accepted as `?resume=N`). A comment line every
//! `heartbeat` keeps proxies from closing the stream. Credential failures
//! answer `401` with the reason in the body and `X-Callhook-Close-Code`
//! (4001/4002/4003, as the WebSocket's close codes); limits answer
//! `429` (connection rate, or an address blocked for failed
//! authentications, with `Retry-After`) or `503` (clients).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::stream::{self, Stream};

use super::guard::Denied;
use super::session::{Next, Session};
use super::ws::{peer, LiveQuery};
use super::Live;
use crate::http::server::ConnectionHandle;
use crate::metrics::metrics;

/// The handler.
pub async fn handle(
    State(live): State<Arc<Live>>,
    Query(q): Query<LiveQuery>,
    headers: HeaderMap,
    conn: Option<Extension<ConnectionHandle>>,
    info: Option<ConnectInfo<SocketAddr>>,
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
    let principal = match live.authenticate(ip, "sse", &q.cred, &headers) {
        Ok(p) => p,
        Err(Denied::Blocked(left)) => return Denied::blocked_response(left),
        Err(Denied::Failed(e)) => {
            return (
                StatusCode::UNAUTHORIZED,
                [("x-callhook-close-code", e.close_code().to_string())],
                format!("{e}\n"),
            )
                .into_response();
        }
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(q.resume);
    let (session, first) = match Session::start(&live, principal, resume, "sse") {
        Ok(s) => s,
        Err(r) => {
            metrics().live_refused.with_label_values(&[r.label()]).inc();
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "5")],
                format!("{r}\n"),
            )
                .into_response();
        }
    };
    let held = conn.as_ref().map(|c| c.hold());
    let shutdown = conn.as_ref().map(|c| c.shutdown()).unwrap_or_default();
    let heartbeat = live.config().heartbeat;
    Sse::new(events(session, first, held, shutdown))
        .keep_alive(KeepAlive::new().interval(heartbeat).text("hb"))
        .into_response()
}

fn event(text: &str) -> Event {
    let id = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
        .unwrap_or(0);
    Event::default().id(id.to_string()).data(text)
}

struct State2 {
    session: Session,
    pending: std::collections::VecDeque<Arc<str>>,
    _held: Option<crate::http::server::Held>,
    shutdown: tokio_util::sync::CancellationToken,
    done: bool,
}

fn events(
    session: Session,
    first: Vec<Arc<str>>,
    held: Option<crate::http::server::Held>,
    shutdown: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let st = State2 {
        session,
        pending: first.into(),
        _held: held,
        shutdown,
        done: false,
    };
    stream::unfold(st, |mut st| async move {
        loop {
            if let Some(t) = st.pending.pop_front() {
                return Some((Ok(event(&t)), st));
            }
            if st.done {
                return None;
            }
            let next = tokio::select! {
                _ = st.shutdown.cancelled() => Next::Close(1001, "server shutting down"),
                n = st.session.next() => n,
            };
            match next {
                Next::Send(t) => st.pending.extend(t),
                Next::Close(code, why) => {
                    st.done = true;
                    let body = super::message::error("closed", &format!("{code} {why}"));
                    st.pending.push_back(body.into());
                }
            }
        }
    })
}
