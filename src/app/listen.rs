//! The daemon's HTTP listeners: binding, `/readyz`'s view of the sources,
//! the delivery store and the cluster, and serving the routers (one
//! listener, or the public and admin listeners apart, and Meetip's own).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::clients::Clients;
use super::AppError;
use crate::ami::client::ConnectionState;
use crate::cluster::ownership::OwnershipHandle;
use crate::config::Config;
use crate::deliver;
use crate::http::server::ServeOptions;
use crate::http::{self, fds, ApiState, Readiness};

/// Binds a listener.
pub(super) async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, AppError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Listen { addr, source })
}

/// What `/readyz` reports: every PBX logged in, the store writable (and,
/// single-node, the outbox polled), in cluster mode members seen.
pub(super) fn readiness(
    ready_clients: Clients,
    ok: Arc<AtomicBool>,
    ready_ownership: Option<OwnershipHandle>,
    ready_delivery: Option<deliver::DispatcherHandle>,
) -> impl Fn() -> Readiness + Send + Sync + 'static {
    move || {
        let pbx: std::collections::BTreeMap<String, bool> = ready_clients
            .handles()
            .iter()
            .map(|h| (h.pbx().to_string(), h.state() == ConnectionState::LoggedIn))
            .collect();
        let outbox_writable = ok.load(Ordering::Relaxed);
        let cluster = ready_ownership.as_ref().map(|o| o.view());
        let polling = ready_delivery.as_ref().map_or(Ok(()), |d| d.polling());
        Readiness {
            ready: outbox_writable
                && polling.is_ok()
                && pbx.values().all(|v| *v)
                && cluster.as_ref().is_none_or(|c| !c.members.is_empty()),
            pbx,
            outbox_writable,
            outbox_polling: polling.is_ok(),
            outbox_error: polling.err(),
            cluster,
        }
    }
}

/// Serves the routers on the bound listeners; the tasks, to await at shutdown.
pub(super) async fn serve_all(
    cfg: &Config,
    listener: Option<tokio::net::TcpListener>,
    admin_listener: Option<tokio::net::TcpListener>,
    state: ApiState,
    meetip: Option<&Arc<crate::meetip::Meetip>>,
    http_token: &CancellationToken,
) -> Result<Vec<JoinHandle<()>>, AppError> {
    let caps = http_caps(cfg, admin_listener.is_some());
    let mut http_tasks = Vec::new();
    let mut serve = |l: tokio::net::TcpListener,
                     router: axum::Router,
                     name: &'static str,
                     cap: usize,
                     routes: &str| {
        let limits = cfg.http.with_max_connections(cap);
        if let Ok(a) = l.local_addr() {
            info!(listener = name, addr = %a, max_connections = limits.max_connections, per_ip = limits.max_connections_per_ip, "HTTP listening ({routes})");
        }
        let opts = ServeOptions {
            name,
            limits,
            shutdown_grace: Duration::from_secs(5),
        };
        let t = http_token.clone();
        http_tasks.push(tokio::spawn(async move {
            if let Err(e) = http::server::serve(l, router, opts, t).await {
                error!(listener = name, error = %e, "HTTP listener failed");
            }
        }));
    };
    match (listener, admin_listener) {
        (Some(l), Some(a)) => {
            serve(
                l,
                http::public_router(state.clone()),
                "listen",
                caps.listen,
                "push endpoint, /healthz",
            );
            serve(
                a,
                http::admin_router(state),
                "admin",
                caps.admin,
                "/metrics, /healthz, /readyz, /-/reload, /api",
            );
        }
        (Some(l), None) => {
            if l.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
                warn!("`listen` is not a loopback address and there is no `admin.listen`: /metrics and /readyz are reachable by anyone who reaches it (reload and /api still need admin.token); set admin.listen: 127.0.0.1:9189");
            }
            serve(
                l,
                http::router(state),
                "listen",
                caps.listen,
                "/metrics, /healthz, /readyz, /-/reload, /api, push endpoint",
            );
        }
        (None, Some(a)) => serve(
            a,
            http::admin_router(state),
            "admin",
            caps.admin,
            "/metrics, /healthz, /readyz, /-/reload, /api",
        ),
        (None, None) => drop(state),
    }
    if let Some(m) = meetip {
        match m.config().listen {
            Some(addr) => {
                let l = bind(addr).await?;
                serve(
                    l,
                    m.own_router(),
                    "meetip",
                    caps.listen,
                    "Meetip PRO WebSocket",
                );
            }
            None => info!(path = %m.config().path, "Meetip PRO WebSocket on the main listener"),
        }
    }
    Ok(http_tasks)
}

/// Connection caps of the listeners: raises the descriptor limit, keeps a
/// reserve for AMI, the outbox and webhooks, and fits the configured caps
/// into the rest (logged).
fn http_caps(cfg: &Config, admin: bool) -> fds::Budget {
    let limit = match fds::raise_nofile_limit() {
        Ok(l) => {
            if let Some(from) = l.raised_from {
                info!(
                    from,
                    to = l.soft,
                    "raised the open-file limit to its hard limit"
                );
            }
            l.soft
        }
        Err(e) => {
            warn!(error = %e, "cannot read or raise the open-file limit; assuming 1024");
            1024
        }
    };
    let concurrency: usize = cfg.targets.values().map(|t| t.concurrency).sum();
    let reserved = fds::reserve(fds::open_fds().unwrap_or(32), cfg.pbx.len(), concurrency);
    let b = fds::budget(
        limit,
        reserved,
        cfg.http.max_connections,
        admin.then_some(cfg.admin_max_connections),
    );
    if b.lowered {
        warn!(
            open_file_limit = limit,
            reserved,
            listen = b.listen,
            admin = b.admin,
            "HTTP connection caps lowered to fit the open-file limit (raise LimitNOFILE= to allow more)"
        );
    }
    b
}
