//! The agent console: a small page served by callhook itself at
//! `/console`, embedded in the binary (plain HTML, CSS and JS; no CDN, no
//! build step). It logs in with a tenant key (exchanged once for a ticket
//! at `POST /v1/tickets`) or opens with `/console?ticket=…`, then follows
//! `/v1/live`: the agent view (own state, incoming-call card with the CRM
//! link, click-to-call with live progress, last calls) or, for a monitor
//! credential, the supervisor board of every extension. It survives a page
//! reload (the ticket stays in the tab's sessionStorage; the snapshot
//! restores the call card) and a server restart (reconnect with backoff,
//! resume from the last seq).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("index.html");
const JS: &str = include_str!("console.js");
const CSS: &str = include_str!("console.css");

/// Security headers of every console file: no framing, no foreign scripts.
const CSP: &str =
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'";

fn file(ctype: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

/// `/console`, `/console/console.js`, `/console/console.css`.
pub fn router() -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/console.js",
            get(|| async { file("text/javascript; charset=utf-8", JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { file("text/css; charset=utf-8", CSS) }),
        )
}
