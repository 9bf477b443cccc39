//! The live HTTP routes: the two streams, click-to-call, state queries and
//! ticket minting. Same credentials as the streams ([`super::auth`]).
//!
//! - `POST /v1/calls` `{"extension":"1001","number":"02122853348"}` →
//!   `202 {"id":…,"status":"queued"}`; `400` invalid number, `403` another
//!   extension's phone, a monitor credential, or a number refused by
//!   `originate.allow`/`deny`; `429` over the per-user rate or concurrency;
//!   `409` when the tenant has no AMI connection (a push team). Every
//!   request (accepted or not) is one `audit` log line.
//! - `GET /v1/calls/{id}`: the request's status (`queued`,
//!   `ringing_own_phone`, `connected`, `busy`, `no_answer`, `failed`), the
//!   session id of the resulting call, the `Reason`, and `outside` once the
//!   call ended. Only its own user (or a monitor of the tenant) sees it.
//! - `GET /v1/calls/live`: the tenant's calls in progress (filtered to the
//!   user's extension unless monitor).
//! - `GET /v1/extensions` (monitor: all; agent: its own) and
//!   `GET /v1/extensions/{ext}`: state, since, current calls.
//! - `POST /v1/tickets` `{"tenant","key","extension","scope","ttl"}` →
//!   `{"ticket":…,"expires_at":…}` (for CRMs that prefer not to sign themselves).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::auth::{self, CredentialQuery, Principal, Scope};
use super::guard::{Denied, Peer};
use super::originate::AmiOutcome;
use super::Live;
use crate::ami::Action;
use crate::metrics::metrics;

/// Every live route, with the hub as state.
pub fn router(live: Arc<Live>) -> Router {
    Router::new()
        .route("/v1/live", get(super::ws::handle))
        .route("/v1/live/sse", get(super::sse::handle))
        .route("/v1/calls", post(create_call))
        .route("/v1/calls/live", get(live_calls))
        .route("/v1/calls/:id", get(get_call))
        .route("/v1/extensions", get(extensions))
        .route("/v1/extensions/:ext", get(extension))
        .route("/v1/tickets", post(ticket))
        .with_state(live)
}

fn problem(code: StatusCode, error: &str, message: &str) -> Response {
    (code, Json(json!({ "error": error, "message": message }))).into_response()
}

#[allow(clippy::result_large_err)] // the refusal is returned as is
fn who(
    live: &Live,
    peer: Option<std::net::IpAddr>,
    q: &CredentialQuery,
    headers: &HeaderMap,
) -> Result<Principal, Response> {
    live.authenticate(peer, "http", q, headers)
        .map_err(|d| match d {
            Denied::Blocked(left) => Denied::blocked_response(left),
            Denied::Failed(e) => {
                let mut r = problem(StatusCode::UNAUTHORIZED, e.label(), &e.to_string());
                r.headers_mut().insert(
                    "www-authenticate",
                    axum::http::HeaderValue::from_static("Bearer"),
                );
                r
            }
        })
}

/// Body of `POST /v1/calls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCall {
    /// The caller's own extension.
    pub extension: String,
    /// The number to dial.
    pub number: String,
}

/// A dialable number: 1–32 of digits, `+` (first only), `*`, `#`.
pub fn valid_number(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.char_indices()
            .all(|(i, c)| c.is_ascii_digit() || c == '*' || c == '#' || (c == '+' && i == 0))
        && n.chars().any(|c| c.is_ascii_digit())
}

fn audit(p: &Principal, number: &str, outcome: &str, id: Option<&str>) {
    info!(target: "audit", tenant = %p.tenant, extension = %p.extension, number = %number, outcome, request_id = id.unwrap_or("-"), "click-to-call");
}

/// Why a click-to-call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable reason (also the metric label).
    pub error: &'static str,
    /// In words.
    pub message: &'static str,
}

fn refused(status: StatusCode, error: &'static str, message: &'static str) -> Refused {
    Refused {
        status,
        error,
        message,
    }
}

/// Validates and places a click-to-call for `p` from `extension` to
/// `number` (HTTP API and Meetip): returns the request id at once; the
/// outcome follows as `originate.*` messages. Audited and counted.
pub fn place_call(
    live: &Arc<Live>,
    p: &Principal,
    extension: &str,
    number: &str,
) -> Result<String, Refused> {
    let number = number.trim();
    let r = check_call(live, p, extension, number);
    if let Err(e) = &r {
        metrics()
            .originate_requests
            .with_label_values(&[e.error])
            .inc();
        audit(
            p,
            if e.error == "invalid_number" {
                "-"
            } else {
                number
            },
            e.error,
            None,
        );
    }
    let (tenant, ami) = r?;
    let o = &live.config().originate;
    let id: String = {
        let mut rng = rand::thread_rng();
        (0..16)
            .map(|_| format!("{:x}", rng.gen_range(0..16u8)))
            .collect()
    };
    let channel_id = format!("callhook-{id}");
    let req = live
        .registry()
        .add(&id, &p.tenant, &p.extension, number, Some(&channel_id));
    live.announce_queued(req);
    audit(p, number, "queued", Some(&id));
    let action = Action::new("Originate")
        .field(
            "Channel",
            tenant.channel.replace("{extension}", &p.extension),
        )
        .field("Context", tenant.context.as_str())
        .field("Exten", number)
        .field("Priority", o.priority.to_string())
        .field("CallerID", o.caller_id.replace("{number}", number))
        .field("Timeout", o.timeout.as_millis().to_string())
        .field("ChannelId", channel_id.as_str())
        .field("Variable", format!("CALLHOOK_REQUEST={id}"))
        .field("Async", "true");
    let wait = o.timeout + std::time::Duration::from_secs(15);
    let hub = live.clone();
    let rid = id.clone();
    tokio::spawn(async move {
        let outcome = match ami.originate(action, wait).await {
            Ok(r) => AmiOutcome::Event {
                success: r
                    .event
                    .get("Response")
                    .is_some_and(|v| v.eq_ignore_ascii_case("Success")),
                reason: r.event.get("Reason").unwrap_or("").to_string(),
                uniqueid: r.event.get("Uniqueid").map(str::to_string),
            },
            Err(e) => AmiOutcome::Error(e.to_string()),
        };
        hub.originate_outcome(&rid, outcome).await;
    });
    Ok(id)
}

fn check_call(
    live: &Arc<Live>,
    p: &Principal,
    extension: &str,
    number: &str,
) -> Result<(super::config::Tenant, crate::ami::client::AmiHandle), Refused> {
    if p.scope != Scope::Agent {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a monitor credential cannot place calls",
        ));
    }
    if extension != p.extension {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "forbidden",
            "you may only dial from your own extension",
        ));
    }
    if !valid_number(number) {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "invalid_number",
            "a number has only digits, a leading +, * and #",
        ));
    }
    let o = &live.config().originate;
    if o.deny.iter().any(|r| r.is_match(number))
        || (!o.allow.is_empty() && !o.allow.iter().any(|r| r.is_match(number)))
    {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "number_not_allowed",
            "this number may not be dialled",
        ));
    }
    let tenant = live
        .config()
        .tenants
        .get(&p.tenant)
        .cloned()
        .ok_or(refused(
            StatusCode::FORBIDDEN,
            "forbidden",
            "unknown tenant",
        ))?;
    let ami = live.ami(&p.tenant).ok_or(refused(
        StatusCode::CONFLICT,
        "no_pbx",
        "this tenant has no AMI connection to place calls with",
    ))?;
    if live.registry().in_progress(&p.tenant, &p.extension) >= o.per_user_concurrent {
        return Err(refused(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_in_progress",
            "a click-to-call of yours is still in progress",
        ));
    }
    if !live.admit_originate(&p.tenant, &p.extension) {
        return Err(refused(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many click-to-calls this minute",
        ));
    }
    Ok((tenant, ami))
}

async fn create_call(
    State(live): State<Arc<Live>>,
    Query(q): Query<CredentialQuery>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Result<Json<NewCall>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let p = match who(&live, peer, &q, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Ok(Json(c)) = body else {
        metrics()
            .originate_requests
            .with_label_values(&["bad_request"])
            .inc();
        audit(&p, "-", "bad_request", None);
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected {\"extension\": \"…\", \"number\": \"…\"}",
        );
    };
    match place_call(&live, &p, &c.extension, &c.number) {
        Ok(id) => (
            StatusCode::ACCEPTED,
            [("location", format!("/v1/calls/{id}"))],
            Json(json!({ "id": id, "status": "queued", "extension": p.extension, "number": c.number.trim() })),
        )
            .into_response(),
        Err(e) => problem(e.status, e.error, e.message),
    }
}

async fn get_call(
    State(live): State<Arc<Live>>,
    Path(id): Path<String>,
    Query(q): Query<CredentialQuery>,
    Peer(peer): Peer,
    headers: HeaderMap,
) -> Response {
    let p = match who(&live, peer, &q, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let r = live.registry().get(&id).cloned();
    match r {
        Some(r) if r.tenant == p.tenant && p.sees(&r.extension) => Json(r).into_response(),
        _ => problem(StatusCode::NOT_FOUND, "not_found", "no such click-to-call"),
    }
}

async fn live_calls(
    State(live): State<Arc<Live>>,
    Query(q): Query<CredentialQuery>,
    Peer(peer): Peer,
    headers: HeaderMap,
) -> Response {
    let p = match who(&live, peer, &q, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let calls = live.with_tenant(&p.tenant, |t| {
        t.calls
            .values()
            .filter(|c| c.legs.keys().any(|e| p.sees(e)))
            .cloned()
            .collect::<Vec<_>>()
    });
    Json(json!({ "tenant": p.tenant, "calls": calls.unwrap_or_default() })).into_response()
}

async fn extensions(
    State(live): State<Arc<Live>>,
    Query(q): Query<CredentialQuery>,
    Peer(peer): Peer,
    headers: HeaderMap,
) -> Response {
    let p = match who(&live, peer, &q, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let rows = live.with_tenant(&p.tenant, |t| {
        let mut exts: Vec<String> = t.extensions().into_iter().filter(|e| p.sees(e)).collect();
        if p.scope == Scope::Agent && exts.is_empty() {
            exts.push(p.extension.clone());
        }
        exts.iter().map(|e| t.extension_view(e)).collect::<Vec<_>>()
    });
    Json(json!({ "tenant": p.tenant, "extensions": rows.unwrap_or_default() })).into_response()
}

async fn extension(
    State(live): State<Arc<Live>>,
    Path(ext): Path<String>,
    Query(q): Query<CredentialQuery>,
    Peer(peer): Peer,
    headers: HeaderMap,
) -> Response {
    let p = match who(&live, peer, &q, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !p.sees(&ext) {
        return problem(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this credential sees only its own extension",
        );
    }
    let known = live.with_tenant(&p.tenant, |t| {
        (t.extensions().contains(&ext) || ext == p.extension).then(|| t.extension_view(&ext))
    });
    match known.flatten() {
        Some(v) => Json(v).into_response(),
        None => problem(StatusCode::NOT_FOUND, "not_found", "unknown extension"),
    }
}

/// Body of `POST /v1/tickets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    /// Tenant.
    pub tenant: String,
    /// Tenant key.
    pub key: String,
    /// Extension the ticket is for.
    pub extension: String,
    /// `agent` (default) or `monitor`.
    pub scope: Option<Scope>,
    /// Validity in seconds (default and maximum: `ticket_max_ttl`).
    pub ttl: Option<u64>,
}

async fn ticket(
    State(live): State<Arc<Live>>,
    Peer(peer): Peer,
    body: Result<Json<TicketRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(t)) = body else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected tenant, key, extension",
        );
    };
    let cfg = live.config();
    let p = match live.guard().check(peer, "tickets", || {
        auth::verify_key(cfg, &t.tenant, &t.extension, &t.key)
    }) {
        Ok(p) => p,
        Err(Denied::Blocked(left)) => return Denied::blocked_response(left),
        Err(Denied::Failed(_)) => {
            return problem(
                StatusCode::UNAUTHORIZED,
                "bad_credential",
                "wrong tenant, extension or key",
            )
        }
    };
    let Some(tenant) = cfg.tenants.get(&p.tenant) else {
        return problem(StatusCode::UNAUTHORIZED, "bad_credential", "unknown tenant");
    };
    let max = cfg.ticket_max_ttl.as_secs();
    let ttl = t.ttl.unwrap_or(max).clamp(1, max);
    let exp = crate::source::now_epoch() as u64 + ttl;
    let scope = t.scope.unwrap_or(p.scope);
    Json(json!({ "ticket": auth::mint(tenant, &t.extension, scope, exp), "expires_at": exp }))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::valid_number;

    #[test]
    fn numbers() {
        for ok in ["02122853348", "+34911222333", "*72", "1001#"] {
            assert!(valid_number(ok), "{ok}");
        }
        for bad in [
            "",
            "+",
            "12+3",
            "123 456",
            "12a",
            "1;2",
            &"1".repeat(33),
            "٣٣٣",
        ] {
            assert!(!valid_number(bad), "{bad}");
        }
    }
}
