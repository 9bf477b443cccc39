//! The HTTP side of the daemon: the routes, on one or two listeners.
//!
//! | route | listener | auth |
//! |---|---|---|
//! | `GET /healthz` (200 while the process runs) | every listener | none |
//! | push endpoint (`POST /v1/events/astercc` by default, [`push`]) | `listen` | the team's token |
//! | `GET /readyz` (200 when every PBX is logged in and the outbox is writable, else 503 with a JSON reason) | admin | none |
//! | `GET /metrics` (Prometheus text) | admin | none: keep the admin listener private |
//! | `POST /-/reload` (re-reads the configuration like SIGHUP; 200 with `{"reloaded": true, "applied": [...], "restart_required": [keys]}` (those keys keep their running values until a restart), or 400 with every error) | admin | admin token |
//! | the admin API ([`admin`]) | admin | admin token |
//!
//! "admin" is `admin.listen` when it is set (then `listen` serves only the
//! push endpoint and `/healthz`), else `listen` itself. Admin routes need
//! `Authorization: Bearer <admin.token>` (compared in constant time, also
//! in length); without a configured token they answer 404. Anonymous
//! callers learn nothing about the configuration: a refused reload says
//! only `401`.
//!
//! Every listener runs on [`server`] (connection caps, eviction, header,
//! idle and body timeouts, [`limits`]); [`fds`] sizes the caps to the
//! file descriptors the process has.

pub mod admin;
pub mod fds;
pub mod limits;
pub mod push;
pub mod server;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::deliver::store::DeliveryStore;
use crate::metrics::metrics;
use crate::values::Secret;

/// Whether the service can do its job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// True when everything below is.
    pub ready: bool,
    /// PBX id → logged in.
    pub pbx: std::collections::BTreeMap<String, bool>,
    /// The outbox accepted a write recently.
    pub outbox_writable: bool,
    /// Cluster mode: this instance, the members it sees, and who owns
    /// which PBX and push team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ownership::ClusterView>,
    /// The dispatcher can read the outbox (when not, nothing is delivered).
    pub outbox_polling: bool,
    /// Why the dispatcher cannot read the outbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox_error: Option<String>,
}

/// A reload request: the answer is what was applied and what needs a
/// restart, or the list of errors.
pub type ReloadReply = oneshot::Sender<Result<ReloadOutcome, Vec<String>>>;

/// The result of a successful reload (computed by `config::reload`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadOutcome {
    /// What changed and was applied (`rules`, `pbx branch-2 added`, …).
    pub applied: Vec<String>,
    /// Keys whose change waits for a restart (from
    /// `metrics::CONFIG_RESTART_KEYS`); the running daemon keeps the values
    /// it started with.
    pub restart_required: Vec<String>,
}

/// What the handlers need.
#[derive(Clone)]
pub struct ApiState {
    /// Computes readiness on demand.
    pub readiness: Arc<dyn Fn() -> Readiness + Send + Sync>,
    /// Where reload requests go (the app's reload loop).
    pub reload: Option<mpsc::Sender<ReloadReply>>,
    /// Bearer token of the admin API (none: admin routes disabled).
    pub admin_token: Option<Secret>,
    /// The delivery store (SQLite outbox, or the cluster's stream), for
    /// the admin API.
    pub outbox: Option<Arc<dyn DeliveryStore>>,
    /// The push endpoint (none: not mounted).
    pub push: Option<Arc<push::PushState>>,
    /// The live API, `/console` and (on a path) the Meetip channel (none:
    /// not mounted).
    pub live: Option<Arc<crate::live::Live>>,
    /// The Meetip channel, mounted here when it has no listener of its own.
    pub meetip: Option<Arc<crate::meetip::Meetip>>,
}

/// Every route on one listener (no `admin.listen`).
pub fn router(state: ApiState) -> Router {
    let live = live_routes(&state);
    with_push(admin_routes(), &state)
        .with_state(state)
        .merge(live)
}

/// The public listener when `admin.listen` is set: the push endpoint and
/// `/healthz`.
pub fn public_router(state: ApiState) -> Router {
    let live = live_routes(&state);
    with_push(Router::new().route("/healthz", get(healthz)), &state)
        .with_state(state)
        .merge(live)
}

/// The live API (`/v1/live`, `/v1/calls`, …), `/console` and the Meetip
/// path, on the public listener: they carry their own credentials.
fn live_routes(state: &ApiState) -> Router {
    let mut r = Router::new();
    if let Some(l) = &state.live {
        r = r
            .merge(crate::live::api::router(l.clone()))
            .merge(crate::console::router());
    }
    if let Some(m) = &state.meetip {
        if m.config().listen.is_none() {
            r = r.merge(m.router());
        }
    }
    r
}

/// The admin listener: `/healthz`, `/readyz`, `/metrics`, `/-/reload` and
/// the admin API.
pub fn admin_router(state: ApiState) -> Router {
    admin_routes().with_state(state)
}

fn admin_routes() -> Router<ApiState> {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/-/reload", post(reload))
        .merge(admin::router())
}

fn with_push(r: Router<ApiState>, state: &ApiState) -> Router<ApiState> {
    match &state.push {
        Some(p) => r.route(&p.path, post(push::handle)),
        None => r,
    }
}

async fn healthz() -> &'static str {
    "ok\n"
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

async fn reload(State(st): State<ApiState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(refusal) = admin::authorize(&st, &headers) {
        return refusal;
    }
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

/// Serves `router` on `listener` with the default limits until `token` is
/// cancelled (see [`server::serve`] for the options).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    token: CancellationToken,
) -> std::io::Result<()> {
    server::serve(listener, router, server::ServeOptions::new("listen"), token).await
}
