//! The admin API: inspect and retry deliveries. Every route needs
//! `Authorization: Bearer <admin.token>` ([`authorize`], also used by
//! `/-/reload`; compared in constant time, also in length); with no token
//! configured the routes answer 404. Refusals are counted in
//! `callhook_admin_unauthorized_total` and logged (rate-limited).
//!
//! - `GET /api/deliveries?status=dead&target=crm&limit=100`: rows, newest first
//!   (secrets masked, body as an excerpt).
//! - `GET /api/deliveries/{id}`: one row.
//! - `POST /api/deliveries/{id}/retry`: a dead (or expired) delivery goes back
//!   to pending with fresh attempts.
//! - `POST /api/deliveries/retry-dead`: every dead delivery.
//! - `GET /api/outbox`: counts by state and the oldest pending age.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::ApiState;
use crate::deliver::outbox::{ListFilter, Status};

/// The admin routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/deliveries", get(list))
        .route("/api/deliveries/retry-dead", post(retry_dead))
        .route("/api/deliveries/:id", get(one))
        .route("/api/deliveries/:id/retry", post(retry))
        .route("/api/outbox", get(stats))
}

/// Constant-time comparison (length leaks, content does not).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `given` is `expected`, in time independent of both contents and
/// lengths (their SHA-256 digests are compared in constant time).
pub fn token_eq(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    constant_time_eq(
        &Sha256::digest(given.as_bytes()),
        &Sha256::digest(expected.as_bytes()),
    )
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

static UNAUTHORIZED_LOG: crate::log_limit::LogLimiter =
    crate::log_limit::LogLimiter::new(std::time::Duration::from_secs(10));

/// `None` when the request carries the admin token, else the refusal (404
/// when no token is configured: the admin routes are off). Shared by the
/// admin API, `/-/reload` and anything else reserved to operators.
pub fn authorize(st: &ApiState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &st.admin_token else {
        return Some(
            (
                StatusCode::NOT_FOUND,
                "admin API disabled (no admin.token)\n",
            )
                .into_response(),
        );
    };
    let given = bearer(headers).unwrap_or("");
    if !given.is_empty() && token_eq(given, token.expose()) {
        None
    } else {
        crate::metrics::metrics().admin_unauthorized.inc();
        if let Some(suppressed) = UNAUTHORIZED_LOG.check() {
            tracing::warn!(
                suppressed,
                "admin request refused: missing or wrong bearer token"
            );
        }
        Some(
            (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Bearer")],
                "missing or wrong bearer token\n",
            )
                .into_response(),
        )
    }
}

fn server_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "admin API: outbox error");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "outbox error (see the log)\n",
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    target: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(r) = authorize(&st, &headers) {
        return r;
    }
    let Some(outbox) = st.outbox.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => match Status::parse(s) {
            Some(s) => Some(s),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(serde_json::json!({"error": format!("unknown status {s:?}"), "field": "status"})),
                )
                    .into_response()
            }
        },
    };
    let filter = ListFilter {
        status,
        target: q.target,
        limit: q.limit.unwrap_or(100).clamp(1, 10_000),
    };
    match outbox.list(filter).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => server_error(e),
    }
}

async fn one(State(st): State<ApiState>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    if let Some(r) = authorize(&st, &headers) {
        return r;
    }
    let Some(outbox) = st.outbox.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match outbox.get(id).await {
        Ok(Some(row)) => Json(row).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such delivery\n").into_response(),
        Err(e) => server_error(e),
    }
}

async fn retry(State(st): State<ApiState>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    if let Some(r) = authorize(&st, &headers) {
        return r;
    }
    let Some(outbox) = st.outbox.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match outbox.retry(id).await {
        Ok(true) => Json(serde_json::json!({"retried": [id]})).into_response(),
        Ok(false) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({"error": "not found, or not dead/expired", "id": id})),
        )
            .into_response(),
        Err(e) => server_error(e),
    }
}

async fn retry_dead(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(r) = authorize(&st, &headers) {
        return r;
    }
    let Some(outbox) = st.outbox.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match outbox.retry_all_dead().await {
        Ok(n) => Json(serde_json::json!({"retried": n})).into_response(),
        Err(e) => server_error(e),
    }
}

async fn stats(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(r) = authorize(&st, &headers) {
        return r;
    }
    let Some(outbox) = st.outbox.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match outbox.stats().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => server_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(token_eq("s3cret-token", "s3cret-token"));
        assert!(!token_eq("s3cret-token", "s3cret-toke"));
        assert!(!token_eq("", "x"));
    }

    #[test]
    fn bearer_tokens() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("authorization", v.parse().unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
