//! The asterCC-style push endpoint: `POST /v1/events/astercc` (path
//! configurable) on the `listen` address.
//!
//! 1. **Authenticate.** The team's token comes from the `X-Callhook-Token`
//!    header, else the `token` query parameter (both names configurable).
//!    It is compared in constant time with every team's token; the match
//!    says which team pushed (its name is the `pbx` of the calls). Missing
//!    or wrong: `401`, nothing is read or recorded.
//! 2. **Parse.** `application/x-www-form-urlencoded` or `application/json`
//!    (an object of scalars; without a `Content-Type`, a body starting with
//!    `{` is JSON), at most 64 KiB and 200 fields. Field names are matched
//!    case-insensitively (accepted spellings below); every other field is
//!    kept, by its pushed name, in the model's `extra` (the token field
//!    never is). A missing `sessionid` or `event`, or an invalid `source`
//!    or `eventTime`, is `400` with `{"accepted":false,"field":…,"error":…}`.
//!    Unknown `event` values are accepted (they cause no transition).
//! 3. **Record.** The event goes into the normalizer's bounded queue
//!    (waiting at most 2 s for room, else `503` with `Retry-After: 1`), and
//!    the handler waits until the normalizer task has committed the
//!    deliveries it caused to the outbox: only then `200
//!    {"accepted":true,"duplicate":false}` (`duplicate: true` when the same
//!    event was already applied). If the outbox refused them, `503`: the
//!    pusher retries and the event is applied again. A push that would open
//!    a new call while the team already has `calls.max_live` calls in
//!    progress is `503` too (nothing applied).
//!
//! | field | spellings | use |
//! |---|---|---|
//! | session | `sessionid`, `session_id` | the call (required) |
//! | event | `event` | `ringing` (`ring`), `answer`/`answered`, `hangup` (`hungup`), any case; anything else is kept without a transition (required) |
//! | source | `source` | `CALLER` / `CALLEE`: which party the event is about |
//! | call type | `calltype`, `call_type` | `dialin`, `dialout`, … (also kept in `extra`) |
//! | other party | `activenum`, `active_num` | the customer's number |
//! | time | `eventTime`, `event_time` | epoch seconds (or milliseconds), `YYYY-MM-DD HH:MM:SS` in the team's `timezone`, or RFC 3339 |
//! | extension | `extension`, `exten`, `agentphone`, `agent_phone` | the agent's phone: the leg |
//! | agent | `agent`, `agentnum`, `agent_num`, `agentid`, `agent_id`, `workno` | the agent (leg when no extension; also kept in `extra`) |
//! | team | `team`, `teamid`, `team_id`, `tenant`, `tenantid`, `tenant_id` | kept in `extra` (the token decides the team) |
//! | queue | `queue`, `queuename`, `queue_name` | `queue` |
//! | caller name | `callername`, `caller_name`, `cidname` | `caller_name` |
//! | DID | `did`, `dnis` | `dialed_number` of incoming calls |
//! | recording | `recordurl`, `record_url`, `recording_url`, `recordingurl`, `monitorfile`, `recordfile` | `recording_url` of the call record |
//! | dial status | `dialstatus`, `dial_status` | disposition (also kept in `extra`) |
//! | billsec | `billsec` | answer time of a hangup with `dialstatus: ANSWER` (also kept in `extra`) |
//!
//! Outcomes are counted in `callhook_push_requests_total{team,outcome}`
//! (`accepted`, `duplicate`, `unauthorized`, `bad_request`,
//! `unavailable`; `team` is `unknown` until the token is recognised).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jiff::tz::TimeZone;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::admin::token_eq;
use super::ApiState;
use crate::metrics::metrics;
use crate::source::{now_epoch, PbxId, PushEvent, PushKind, PushSide, SourceEvent};
use crate::values::Secret;

/// Default path of the push endpoint.
pub const DEFAULT_PUSH_PATH: &str = "/v1/events/astercc";

/// The validated push endpoint settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PushConfig {
    /// URL path.
    pub path: String,
    /// Query parameter with the token.
    pub token_param: String,
    /// Header with the token.
    pub token_header: String,
    /// Teams, by name.
    pub teams: Vec<PushTeam>,
}

/// A validated push team.
#[derive(Debug, Clone, PartialEq)]
pub struct PushTeam {
    /// Name: the `pbx` of its calls.
    pub name: String,
    /// Token (compared in constant time).
    pub token: Secret,
    /// Time zone of `eventTime`s written without an offset.
    pub timezone: TimeZone,
}

/// Largest accepted body.
pub const MAX_BODY: usize = 64 * 1024;
/// Most fields in one event.
pub const MAX_FIELDS: usize = 200;
/// Longest accepted field value.
pub const MAX_VALUE: usize = 4096;
/// How long a push waits for room in the normalizer's queue.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// How long a push waits for its deliveries to be committed.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// The teams the endpoint accepts, with their names as [`PbxId`]s.
#[derive(Debug, Clone, Default)]
pub struct Teams(pub Vec<(PbxId, PushTeam)>);

impl Teams {
    /// From the configuration.
    pub fn new(teams: &[PushTeam]) -> Self {
        Teams(
            teams
                .iter()
                .map(|t| (PbxId::from(t.name.as_str()), t.clone()))
                .collect(),
        )
    }
}

/// What the push handler needs.
#[derive(Debug)]
pub struct PushState {
    /// URL path the endpoint is mounted on.
    pub path: String,
    /// Query parameter carrying the token.
    pub token_param: String,
    /// Header carrying the token.
    pub token_header: HeaderName,
    /// The teams (replaced on reload).
    pub teams: watch::Receiver<Arc<Teams>>,
    /// The normalizer's queue.
    pub tx: mpsc::Sender<SourceEvent>,
    /// How long to wait for room in the queue.
    pub queue_wait: Duration,
    /// How long to wait for the deliveries to be committed.
    pub ack_wait: Duration,
    /// Cluster mode: where accepted pushes are stored instead of the local
    /// queue (the team's owner consumes them).
    pub forward: Option<Arc<dyn PushForward>>,
}

/// Stores an accepted, validated push for another process to apply
/// (cluster mode: a replicated stream); resolves `Ok(duplicate)` once it
/// is stored.
pub trait PushForward: Send + Sync + std::fmt::Debug {
    /// Stores the push of `team` as received.
    fn forward(
        &self,
        team: &str,
        received_at: f64,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> futures::future::BoxFuture<'static, Result<bool, String>>;
}

/// A malformed event: which field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadField {
    /// The field (as the pusher names it), or `None` for the body as a whole.
    pub field: Option<String>,
    /// What is wrong.
    pub error: String,
    /// The status to answer (400, 413 or 415).
    pub status: u16,
}

impl BadField {
    fn field(f: &str, error: impl Into<String>) -> Self {
        Self {
            field: Some(f.to_string()),
            error: error.into(),
            status: 400,
        }
    }
    fn body(status: u16, error: impl Into<String>) -> Self {
        Self {
            field: None,
            error: error.into(),
            status,
        }
    }
}

fn count(team: &str, outcome: &str) {
    metrics()
        .push_requests
        .with_label_values(&[team, outcome])
        .inc();
}

fn reply(status: StatusCode, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Token"),
        );
    }
    r
}

fn unavailable(team: &str, why: &str) -> Response {
    count(team, "unavailable");
    reply(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"accepted": false, "error": why}),
    )
}

/// The team whose token `given` is (every token is compared, in constant time).
pub fn authenticate<'a>(teams: &'a Teams, given: &str) -> Option<&'a (PbxId, PushTeam)> {
    let mut found = None;
    for t in &teams.0 {
        let ok = token_eq(given, t.1.token.expose());
        if ok && !given.is_empty() && found.is_none() {
            found = Some(t);
        }
    }
    found
}

/// `a=1&b=2` → pairs (`+` is a space, percent-escapes decoded, lossy UTF-8).
pub fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    let dec = |x: &str| {
        let x = x.replace('+', " ");
        percent_encoding::percent_decode_str(&x)
            .decode_utf8_lossy()
            .into_owned()
    };
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), String::new()),
        })
        .collect()
}

/// The body's fields, by content type.
pub fn parse_body(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Vec<(String, String)>, BadField> {
    let ct = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let json = match ct.as_str() {
        "application/json" => true,
        "application/x-www-form-urlencoded" => false,
        "" => body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        other if other.ends_with("+json") => true,
        other => {
            return Err(BadField::body(
                415,
                format!("unsupported content type {other:?}: send application/x-www-form-urlencoded or application/json"),
            ))
        }
    };
    if json {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| BadField::body(400, format!("the body is not valid JSON: {e}")))?;
        let Value::Object(m) = v else {
            return Err(BadField::body(400, "the JSON body must be an object"));
        };
        Ok(m.into_iter()
            .filter_map(|(k, v)| {
                let s = match v {
                    Value::Null => return None,
                    Value::String(s) => s,
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    other => other.to_string(),
                };
                Some((k, s))
            })
            .collect())
    } else {
        let text = String::from_utf8_lossy(body);
        Ok(parse_urlencoded(text.trim()))
    }
}

/// Field names by role (lower case).
const SESSION: &[&str] = &["sessionid", "session_id"];
const EVENT: &[&str] = &["event"];
const SOURCE: &[&str] = &["source"];
const CALLTYPE: &[&str] = &["calltype", "call_type"];
const ACTIVENUM: &[&str] = &["activenum", "active_num"];
const EVENTTIME: &[&str] = &["eventtime", "event_time"];
const EXTENSION: &[&str] = &["extension", "exten", "agentphone", "agent_phone"];
const AGENT: &[&str] = &[
    "agent",
    "agentnum",
    "agent_num",
    "agentid",
    "agent_id",
    "workno",
];
const TENANT: &[&str] = &[
    "team",
    "teamid",
    "team_id",
    "tenant",
    "tenantid",
    "tenant_id",
];
const QUEUE: &[&str] = &["queue", "queuename", "queue_name"];
const CALLERNAME: &[&str] = &["callername", "caller_name", "cidname"];
const DID: &[&str] = &["did", "dnis"];
const RECORDING: &[&str] = &[
    "recordurl",
    "record_url",
    "recording_url",
    "recordingurl",
    "monitorfile",
    "recordfile",
];
const DIALSTATUS: &[&str] = &["dialstatus", "dial_status"];
const BILLSEC: &[&str] = &["billsec"];

/// Fields that become model fields (not kept in `extra`).
const CONSUMED: &[&[&str]] = &[
    SESSION, EVENT, SOURCE, ACTIVENUM, EVENTTIME, EXTENSION, QUEUE, CALLERNAME, DID, RECORDING,
];

/// Parses an `eventTime`: epoch seconds (or milliseconds), RFC 3339, or
/// `YYYY-MM-DD HH:MM:SS[.fff]` (also with `T`) in the team's time zone
/// (daylight saving applied; a time that a spring-forward skips is read
/// as after the change, one that falls twice as the first).
/// Times before 2000 or after 2100 are refused.
pub fn parse_event_time(s: &str, zone: &TimeZone) -> Option<f64> {
    let s = s.trim();
    let t = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let v: f64 = s.parse().ok()?;
        if v > 1e11 {
            v / 1000.0
        } else {
            v
        }
    } else {
        let iso = if s.len() > 10 && s.as_bytes()[10] == b' ' {
            format!("{}T{}", &s[..10], &s[11..])
        } else {
            s.to_string()
        };
        if !iso.contains(':') {
            return None;
        }
        let ts = match iso.parse::<jiff::Timestamp>() {
            Ok(ts) => ts,
            Err(_) => {
                let dt: jiff::civil::DateTime = iso.parse().ok()?;
                zone.to_ambiguous_timestamp(dt).compatible().ok()?
            }
        };
        ts.as_second() as f64 + f64::from(ts.subsec_nanosecond()) / 1e9
    };
    (t.is_finite() && (946_684_800.0..4_102_444_800.0).contains(&t)).then_some(t)
}

/// Validates pushed fields into a [`PushEvent`]. `token_param` (the token's
/// query parameter name) is never kept.
pub fn parse_fields(
    fields: Vec<(String, String)>,
    zone: &TimeZone,
    token_param: &str,
) -> Result<PushEvent, BadField> {
    if fields.len() > MAX_FIELDS {
        return Err(BadField::body(
            400,
            format!("more than {MAX_FIELDS} fields"),
        ));
    }
    // name (as pushed) by lower-cased name; later values win.
    let mut by_lc: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (k, v) in fields {
        if k.is_empty() {
            continue;
        }
        if v.len() > MAX_VALUE {
            return Err(BadField::field(
                &k,
                format!("longer than {MAX_VALUE} bytes"),
            ));
        }
        by_lc.insert(k.to_ascii_lowercase(), (k, v));
    }
    by_lc.remove(&token_param.to_ascii_lowercase());
    let get = |names: &[&str]| -> Option<(String, String)> {
        names.iter().find_map(|n| {
            by_lc
                .get(*n)
                .map(|(k, v)| (k.clone(), v.trim().to_string()))
                .filter(|(_, v)| !v.is_empty())
        })
    };
    let text = |names: &[&str]| get(names).map(|(_, v)| v);
    let (_, session_id) =
        get(SESSION).ok_or_else(|| BadField::field("sessionid", "is required"))?;
    if session_id.len() > 128 || session_id.chars().any(char::is_control) {
        return Err(BadField::field(
            "sessionid",
            "must be at most 128 characters, without control characters",
        ));
    }
    let (_, event) = get(EVENT).ok_or_else(|| BadField::field("event", "is required"))?;
    let event = event.to_ascii_lowercase();
    if event.len() > 64 || event.chars().any(char::is_control) {
        return Err(BadField::field("event", "must be at most 64 characters"));
    }
    let kind = match event.as_str() {
        "ringing" | "ring" => PushKind::Ringing,
        "answer" | "answered" => PushKind::Answer,
        "hangup" | "hungup" => PushKind::Hangup,
        other => PushKind::Other(other.to_string()),
    };
    let side = match get(SOURCE) {
        None => None,
        Some((k, v)) => match v.to_ascii_uppercase().as_str() {
            "CALLER" => Some(PushSide::Caller),
            "CALLEE" => Some(PushSide::Callee),
            _ => {
                return Err(BadField::field(
                    &k,
                    format!("{v:?} is not CALLER or CALLEE"),
                ))
            }
        },
    };
    let (event_time, event_time_raw) = match get(EVENTTIME) {
        None => (None, None),
        Some((k, v)) => match parse_event_time(&v, zone) {
            Some(t) => (Some(t), Some(v)),
            None => {
                return Err(BadField::field(
                    &k,
                    format!("{v:?} is not a time (epoch seconds, YYYY-MM-DD HH:MM:SS or RFC 3339)"),
                ))
            }
        },
    };
    let party = |names: &[&str]| -> Result<Option<String>, BadField> {
        match get(names) {
            Some((k, v)) if v.len() > 64 || v.contains('/') || v.chars().any(char::is_control) => {
                Err(BadField::field(
                    &k,
                    "must be at most 64 characters, without / or control characters",
                ))
            }
            Some((_, v)) => Ok(Some(v)),
            None => Ok(None),
        }
    };
    let extension = party(EXTENSION)?;
    let agent = party(AGENT)?;
    let extra: BTreeMap<String, String> = by_lc
        .iter()
        .filter(|(lc, _)| !CONSUMED.iter().any(|names| names.contains(&lc.as_str())))
        .map(|(_, (k, v))| (k.clone(), v.clone()))
        .collect();
    Ok(PushEvent {
        session_id,
        kind,
        event,
        side,
        call_type: text(CALLTYPE).map(|c| c.to_ascii_lowercase()),
        active_num: text(ACTIVENUM),
        event_time,
        event_time_raw,
        extension,
        agent,
        tenant: text(TENANT),
        queue: text(QUEUE),
        caller_name: text(CALLERNAME),
        did: text(DID),
        recording_url: text(RECORDING),
        dial_status: text(DIALSTATUS).map(|s| s.to_ascii_uppercase()),
        billsec: text(BILLSEC)
            .and_then(|b| b.parse::<f64>().ok())
            .filter(|b| b.is_finite() && *b >= 0.0),
        extra,
    })
}

/// `POST {path}`.
pub async fn handle(
    State(st): State<ApiState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(p) = st.push.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let received_at = now_epoch();
    let given = headers
        .get(&p.token_header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            query.as_deref().and_then(|q| {
                parse_urlencoded(q)
                    .into_iter()
                    .rev()
                    .find(|(k, _)| *k == p.token_param)
                    .map(|(_, v)| v)
            })
        })
        .unwrap_or_default();
    let teams = p.teams.borrow().clone();
    let Some((team, cfg)) = authenticate(&teams, &given) else {
        count("unknown", "unauthorized");
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"accepted": false, "error": "missing or wrong token"}),
        );
    };
    let bad = |b: BadField| {
        count(team, "bad_request");
        let status = StatusCode::from_u16(b.status).unwrap_or(StatusCode::BAD_REQUEST);
        reply(
            status,
            json!({"accepted": false, "field": b.field, "error": b.error}),
        )
    };
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return bad(BadField::body(
                413,
                format!("the body is larger than {MAX_BODY} bytes (or was cut)"),
            ))
        }
    };
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let ev = match parse_body(ctype, &bytes)
        .and_then(|f| parse_fields(f, &cfg.timezone, &p.token_param))
    {
        Ok(ev) => ev,
        Err(b) => return bad(b),
    };
    if let Some(f) = &p.forward {
        return match tokio::time::timeout(p.ack_wait, f.forward(team, received_at, ctype, bytes))
            .await
        {
            Ok(Ok(duplicate)) => {
                count(team, if duplicate { "duplicate" } else { "accepted" });
                reply(
                    StatusCode::OK,
                    json!({"accepted": true, "duplicate": duplicate}),
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(team = %team, error = %e, "push not stored");
                unavailable(team, "not stored (cluster unavailable), retry")
            }
            Err(_) => unavailable(team, "not stored in time, retry"),
        };
    }
    let (ack, answer) = oneshot::channel();
    let sev = SourceEvent::Push {
        team: team.clone(),
        received_at,
        event: Box::new(ev),
        ack: Some(ack),
    };
    match p.tx.send_timeout(sev, p.queue_wait).await {
        Ok(()) => {}
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
            return unavailable(team, "busy: the event queue is full, retry")
        }
        Err(mpsc::error::SendTimeoutError::Closed(_)) => {
            return unavailable(team, "shutting down, retry")
        }
    }
    match tokio::time::timeout(p.ack_wait, answer).await {
        Ok(Ok(Ok(r))) if r.full => unavailable(
            team,
            "too many calls in progress for this team (calls.max_live), retry",
        ),
        Ok(Ok(Ok(r))) => {
            count(team, if r.duplicate { "duplicate" } else { "accepted" });
            reply(
                StatusCode::OK,
                json!({"accepted": true, "duplicate": r.duplicate}),
            )
        }
        Ok(Ok(Err(e))) => {
            // Repeats for every push while the outbox fails (a full disk).
            static NOT_RECORDED: crate::log_limit::LogLimiter =
                crate::log_limit::LogLimiter::new(std::time::Duration::from_secs(30));
            if let Some(suppressed) = NOT_RECORDED.check() {
                tracing::warn!(team = %team, error = %e, suppressed, "push not recorded");
            }
            unavailable(team, "not recorded (outbox unavailable), retry")
        }
        Ok(Err(_)) => unavailable(team, "shutting down, retry"),
        Err(_) => unavailable(team, "not recorded in time, retry"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::Secret;

    fn fields(s: &str) -> Vec<(String, String)> {
        parse_urlencoded(s)
    }

    #[test]
    fn form_fields_map_to_the_event_and_extra() {
        let ev = parse_fields(
            fields("sessionid=abc.1&event=Answered&source=callee&calltype=dialin&activenum=5551234&eventTime=2026-01-02+03%3A04%3A05&exten=1001&workno=A7&teamid=acme&queuename=ventas&recordurl=http%3A%2F%2Fr%2F1.wav&crm_id=42&token=sekret"),
            &fixed(3600),
            "token",
        )
        .unwrap();
        assert_eq!(ev.session_id, "abc.1");
        assert_eq!(ev.kind, PushKind::Answer);
        assert_eq!(ev.event, "answered");
        assert_eq!(ev.side, Some(PushSide::Callee));
        assert_eq!(ev.call_type.as_deref(), Some("dialin"));
        assert_eq!(ev.active_num.as_deref(), Some("5551234"));
        // 2026-01-02 03:04:05 at +01:00 = 02:04:05Z.
        assert_eq!(ev.event_time, Some(1767319445.0));
        assert_eq!(ev.event_time_raw.as_deref(), Some("2026-01-02 03:04:05"));
        assert_eq!(ev.extension.as_deref(), Some("1001"));
        assert_eq!(ev.agent.as_deref(), Some("A7"));
        assert_eq!(ev.tenant.as_deref(), Some("acme"));
        assert_eq!(ev.queue.as_deref(), Some("ventas"));
        assert_eq!(ev.recording_url.as_deref(), Some("http://r/1.wav"));
        let keys: Vec<&str> = ev.extra.keys().map(String::as_str).collect();
        assert_eq!(keys, ["calltype", "crm_id", "teamid", "workno"]);
    }

    #[test]
    fn malformed_events_name_the_field() {
        let f = |s: &str| parse_fields(fields(s), &TimeZone::UTC, "token").unwrap_err();
        assert_eq!(f("event=ringing").field.as_deref(), Some("sessionid"));
        assert_eq!(
            f("sessionid=&event=ringing").field.as_deref(),
            Some("sessionid")
        );
        assert_eq!(f("sessionid=1").field.as_deref(), Some("event"));
        assert_eq!(
            f("sessionid=1&event=ringing&Source=both").field.as_deref(),
            Some("Source")
        );
        assert_eq!(
            f("sessionid=1&event=ringing&eventTime=yesterday")
                .field
                .as_deref(),
            Some("eventTime")
        );
        assert_eq!(
            f("sessionid=1&event=ringing&extension=a/b")
                .field
                .as_deref(),
            Some("extension")
        );
        // Unknown event types are kept.
        let ev = parse_fields(
            fields("sessionid=1&event=Transfer"),
            &TimeZone::UTC,
            "token",
        )
        .unwrap();
        assert_eq!(ev.kind, PushKind::Other("transfer".into()));
    }

    fn fixed(secs: i32) -> TimeZone {
        TimeZone::fixed(jiff::tz::Offset::from_seconds(secs).unwrap())
    }

    #[test]
    fn event_times() {
        let utc = TimeZone::UTC;
        assert_eq!(parse_event_time("1767319445", &utc), Some(1767319445.0));
        assert_eq!(
            parse_event_time("1767319445123", &utc),
            Some(1767319445.123)
        );
        assert_eq!(
            parse_event_time("2026-01-02T02:04:05Z", &fixed(7200)),
            Some(1767319445.0)
        );
        assert_eq!(
            parse_event_time("2026-01-02 04:04:05+02:00", &utc),
            Some(1767319445.0)
        );
        assert_eq!(
            parse_event_time("2026-01-02 04:04:05.5", &fixed(7200)),
            Some(1767319445.5)
        );
        assert_eq!(parse_event_time("0", &utc), None);
        assert_eq!(parse_event_time("soon", &utc), None);
        assert_eq!(parse_event_time("2026-01-02", &utc), None);
    }

    #[test]
    fn event_times_follow_daylight_saving() {
        let at = |s: &str, z: &str| {
            parse_event_time(s, &crate::values::parse_zone(z).unwrap()).unwrap() as i64
        };
        let utc = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_second();
        // Madrid: +01:00 in winter, +02:00 in summer.
        assert_eq!(
            at("2026-01-15 12:00:00", "Europe/Madrid"),
            utc("2026-01-15T11:00:00Z")
        );
        assert_eq!(
            at("2026-07-15 12:00:00", "Europe/Madrid"),
            utc("2026-07-15T10:00:00Z")
        );
        // The hour skipped on 2026-03-29 (02:00 → 03:00) is read after the change.
        assert_eq!(
            at("2026-03-29 02:30:00", "Europe/Madrid"),
            utc("2026-03-29T01:30:00Z")
        );
        // The hour that falls twice on 2026-10-25 is read as the first (summer) one.
        assert_eq!(
            at("2026-10-25 02:30:00", "Europe/Madrid"),
            utc("2026-10-25T00:30:00Z")
        );
        // Mexico City kept daylight saving until October 2022, not after.
        assert_eq!(
            at("2022-07-01 12:00:00", "America/Mexico_City"),
            utc("2022-07-01T17:00:00Z")
        );
        assert_eq!(
            at("2026-07-01 12:00:00", "America/Mexico_City"),
            utc("2026-07-01T18:00:00Z")
        );
    }

    #[test]
    fn json_bodies_and_content_types() {
        let f = parse_body(
            Some("application/json; charset=utf-8"),
            br#"{"sessionid": 17, "event": "ringing", "vip": true, "skip": null, "tags": ["a"]}"#,
        )
        .unwrap();
        assert!(f.contains(&("sessionid".into(), "17".into())));
        assert!(f.contains(&("vip".into(), "true".into())));
        assert!(f.contains(&("tags".into(), "[\"a\"]".into())));
        assert!(!f.iter().any(|(k, _)| k == "skip"));
        assert_eq!(parse_body(None, b" {\"a\":\"b\"}").unwrap().len(), 1);
        assert_eq!(parse_body(None, b"a=b&c=d").unwrap().len(), 2);
        assert_eq!(
            parse_body(Some("text/xml"), b"<a/>").unwrap_err().status,
            415
        );
        assert_eq!(
            parse_body(Some("application/json"), b"[1]")
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn tokens_pick_the_team() {
        let team = |n: &str, t: &str| PushTeam {
            name: n.into(),
            token: Secret::new(t),
            timezone: TimeZone::UTC,
        };
        let teams = Teams::new(&[team("acme", "acme-token-1"), team("beta", "beta-token-2")]);
        assert_eq!(
            authenticate(&teams, "beta-token-2").map(|t| &*t.0),
            Some("beta")
        );
        assert!(authenticate(&teams, "beta-token-3").is_none());
        assert!(authenticate(&teams, "").is_none());
    }
}
