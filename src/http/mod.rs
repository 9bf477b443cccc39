//! The HTTP side of the daemon, on the `listen` address: `/metrics`,
//! `/healthz`, `/readyz`, `POST /-/reload`, the admin API ([`admin`]) and,
//! when configured, the asterCC-style push endpoint ([`push`], `POST
//! /v1/events/astercc` by default).
//!
//! - `/metrics`: Prometheus text (every metric of `crate::metrics`).
//! - `/healthz`: 200 while the process runs.
//! - `/readyz`: 200 when every PBX is logged in and the outbox is writable,
//!   503 otherwise, with a JSON body saying what is not ready.
//! - `POST /-/reload`: re-reads the configuration (like SIGHUP); 200 with
//!   `{"reloaded": true, "applied": [...], "restart_required": [keys]}` when
//!   the new one is in force (keys in `restart_required` keep their running
//!   values until a restart), 400 with every error when it was rejected (the
//!   old one stays).
//!
//! The admin routes need `Authorization: Bearer <admin.token>`; without a
//! configured token they are disabled (404).

pub mod admin;
pub mod push;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::deliver::outbox::Outbox;
use crate::metrics::metrics;

/// Whether the service can do its job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// True when everything below is.
    pub ready: bool,
    /// PBX id → logged in.
    pub pbx: std::collections::BTreeMap<String, bool>,
    /// The outbox accepted a write recently.
    pub outbox_writable: bool,
}

/// A reload request: the answer is what was applied and what needs a
/// restart, or the list of errors.
pub type ReloadReply = oneshot::Sender<Result<crate::config::ReloadOutcome, Vec<String>>>;

/// What the handlers need.
#[derive(Clone)]
pub struct ApiState {
    /// Computes readiness on demand.
    pub readiness: Arc<dyn Fn() -> Readiness + Send + Sync>,
    /// Where reload requests go (the app's reload loop).
    pub reload: Option<mpsc::Sender<ReloadReply>>,
    /// Bearer token of the admin API (none: admin routes disabled).
    pub admin_token: Option<Secret>,
    /// The outbox, for the admin API.
    pub outbox: Option<Arc<Outbox>>,
    /// The push endpoint (none: not mounted).
    pub push: Option<Arc<push::PushState>>,
}

/// The full router.
pub fn router(state: ApiState) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/-/reload", post(reload))
        .merge(admin::router());
    if let Some(p) = &state.push {
        r = r.route(&p.path, post(push::handle));
    }
    r.with_state(state)
}

async fn metrics_text() -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics().render(),
    )
        .into_response()
}

async fn readyz(State(st): State<ApiState>) -> Response {
    let r = (st.readiness)();
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r)).into_response()
}

async fn reload(State(st): State<ApiState>) -> Response {
    let Some(tx) = st.reload else {
        return (StatusCode::NOT_FOUND, "reload is not available\n").into_response();
    };
    let (reply, rx) = oneshot::channel();
    if tx.send(reply).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match rx.await {
        Ok(Ok(outcome)) => (
            StatusCode::OK,
            Json(serde_json::json!({
                "reloaded": true,
                "applied": outcome.applied,
                "restart_required": outcome.restart_required,
            })),
        )
            .into_response(),
        Ok(Err(errors)) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "reloaded": false, "errors": errors })),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

/// Serves `router` on `listener` until `token` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    token: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
}
