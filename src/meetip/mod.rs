//! Meetip PRO wire compatibility: the parenthesised text protocol of the
//! Meetip "PBX2CRM API" WebSocket, so existing Meetip pages work unchanged,
//! mapped onto the live hub (same presence, calls and click-to-call).
//!
//! | direction | frame | when |
//! |---|---|---|
//! | server → page | `(???,CONECTADO)` | on connect |
//! | page → server | `<tenant>/<extension>, <key> ` | login (tenant = id or numeric code) |
//! | server → page | `(ID?,CONECTADO)` | on connect, when this address logged in within `fast_reconnect` |
//! | page → server | `<tenant>, <extension>` | light login (only for a tenant/extension this address logged in as) |
//! | server → page | `(info,<bad_login>)` + close | wrong key, unknown tenant, bad extension, light login not allowed, an extension unknown to a closed directory ([`crate::live::presence::directory_knows`]) |
//! | server → page | `(info,<too_many_logins>)` + close | over `logins_per_minute` from the address, or the address is blocked for failed authentications ([`crate::live::guard`]) |
//! | server → page | `(CALL,<caller number>)` | a call rings at my extension (the real caller, as in the model) |
//! | server → page | `(info,-Timbre)` / `(info,-Ocupado)` / `(info,-Libre)` | my state: ringing / in use, busy, on hold / idle |
//! | server → page | `(info,-No disponible)` | my phone is unregistered or unreachable (no Meetip word: `texts.unavailable_state`, empty for no line) |
//! | page → server | `(call, <number>)` | click-to-call from my extension |
//! | server → page | `(info,Llamando...)` | my phone was picked up, the number is being called (`originate.connected`) |
//! | server → page | `(info,Ocupado)` / `(info,Tiempo de espera agotado)` / `(info,No disponible)` | busy / no answer / failed or refused |
//! | page → server | `(status, <ext>)` | state of an extension |
//! | server → page | `(estado,<ext>-libre\|ocupado\|timbre\|no disponible)` / `(status,ErrorNumber)` | answer / unknown extension |
//! | monitor (999) | `(info,<code>-<state>-<ext>-<session>)` | every extension: `Ocupada`, `Libre`, `terminada`, the caller's number when a call rings at the extension, `Timbre` when its own phone rings for a call it places (click-to-call); session `0` when none. States are the presence tracker's (on hold and DND are `Ocupada`; unregistered or unreachable has no Meetip word and is `Ocupada` too, `texts.monitor_unavailable`, so a board never offers it as free) |
//!
//! Texts are configurable ([`config::Texts`]). Caller ids are cleaned of
//! `(`, `)`, `,` and control characters before they reach a page.

pub mod config;
pub mod protocol;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::Value;

pub use config::{MeetipConfig, RawMeetip, Texts};
use protocol::Request;

use crate::http::server::ConnectionHandle;
use crate::live::auth::{self, AuthError, Principal, Scope};
use crate::live::guard::Denied;
use crate::live::limits::RateWindows;
use crate::live::session::{Next, Session};
use crate::live::Live;
use crate::metrics::metrics;

/// How long a page has to log in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The Meetip channel.
pub struct Meetip {
    cfg: MeetipConfig,
    live: Arc<Live>,
    logins: RateWindows<IpAddr>,
    trusted: Mutex<HashMap<(IpAddr, String, String), Instant>>,
}

impl std::fmt::Debug for Meetip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meetip")
            .field("path", &self.cfg.path)
            .finish()
    }
}

impl Meetip {
    /// The channel on top of `live`.
    pub fn new(cfg: MeetipConfig, live: Arc<Live>) -> Arc<Self> {
        let logins = RateWindows::new(cfg.logins_per_minute, Duration::from_secs(60));
        Arc::new(Self {
            cfg,
            live,
            logins,
            trusted: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MeetipConfig {
        &self.cfg
    }

    /// The route at `path` (main listener).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(&self.cfg.path, get(handle))
            .with_state(self.clone())
    }

    /// Every path (own listener).
    pub fn own_router(self: &Arc<Self>) -> Router {
        Router::new().fallback(get(handle)).with_state(self.clone())
    }

    fn is_trusted(&self, ip: IpAddr, tenant: Option<(&str, &str)>) -> bool {
        let mut t = self.trusted.lock().unwrap_or_else(|e| e.into_inner());
        let w = self.cfg.fast_reconnect;
        t.retain(|_, at| at.elapsed() < w);
        t.keys()
            .any(|(a, ten, ext)| *a == ip && tenant.is_none_or(|(x, y)| x == ten && y == ext))
    }

    fn trust(&self, ip: IpAddr, p: &Principal) {
        let mut t = self.trusted.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() < 100_000 {
            t.insert((ip, p.tenant.clone(), p.extension.clone()), Instant::now());
        }
    }

    /// A tenant by id or numeric code.
    fn tenant_id(&self, name: &str) -> Option<String> {
        let tenants = &self.live.config().tenants;
        if tenants.contains_key(name) {
            return Some(name.to_string());
        }
        let code: u64 = name.parse().ok()?;
        tenants
            .values()
            .find(|t| t.code == code)
            .map(|t| t.id.clone())
    }

    fn login(&self, ip: IpAddr, r: Request) -> Result<Principal, &str> {
        let t = &self.cfg.texts;
        if !self.logins.hit(&ip) {
            metrics()
                .live_refused
                .with_label_values(&["meetip_login_rate"])
                .inc();
            return Err(&t.too_many_logins);
        }
        let checked = self.live.guard().check(Some(ip), "meetip", || match r {
            Request::Login {
                tenant,
                extension,
                key,
            } => {
                let id = self.tenant_id(&tenant).ok_or(AuthError::Bad)?;
                auth::verify_key(self.live.config(), &id, &extension, &key)
            }
            Request::Relogin { tenant, extension } => {
                let id = self.tenant_id(&tenant).ok_or(AuthError::Bad)?;
                if !self.is_trusted(ip, Some((&id, &extension)))
                    || !auth::valid_extension(&extension)
                {
                    return Err(AuthError::Bad);
                }
                let monitor = self
                    .live
                    .config()
                    .tenants
                    .get(&id)
                    .is_some_and(|t| t.monitor_extension == extension);
                Ok(Principal {
                    tenant: id,
                    extension,
                    scope: if monitor {
                        Scope::Monitor
                    } else {
                        Scope::Agent
                    },
                })
            }
            _ => Err(AuthError::Missing),
        });
        match checked {
            Ok(p)
                if p.scope == Scope::Agent
                    && self.live.knows_extension(&p.tenant, &p.extension) == Some(false) =>
            {
                // A right key for an extension the PBX does not have (see
                // `live::presence::directory_knows`): not a guess, not counted
                // as a failure.
                metrics()
                    .live_refused
                    .with_label_values(&["meetip_unknown_extension"])
                    .inc();
                Err(&t.bad_login)
            }
            Ok(p) => Ok(p),
            Err(Denied::Blocked(_)) => Err(&t.too_many_logins),
            Err(Denied::Failed(_)) => Err(&t.bad_login),
        }
    }
}

async fn handle(
    State(m): State<Arc<Meetip>>,
    conn: Option<Extension<ConnectionHandle>>,
    info: Option<ConnectInfo<SocketAddr>>,
    ws: WebSocketUpgrade,
) -> Response {
    let ip = crate::live::ws::peer(&conn, &info)
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    if !m.live.admit_connection(ip) {
        metrics().live_refused.with_label_values(&["rate"]).inc();
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too many connections\n",
        )
            .into_response();
    }
    let held = conn.as_ref().map(|c| c.hold());
    let shutdown = conn.as_ref().map(|c| c.shutdown()).unwrap_or_default();
    ws.max_message_size(1024)
        .max_frame_size(1024)
        .on_upgrade(move |socket| async move {
            let _held = held;
            serve(m, socket, ip, shutdown).await;
        })
}

async fn send(socket: &mut WebSocket, line: String) -> bool {
    socket.send(Message::Text(line)).await.is_ok()
}

async fn serve(
    m: Arc<Meetip>,
    mut socket: WebSocket,
    ip: IpAddr,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let texts = m.cfg.texts.clone();
    let hello = if m.is_trusted(ip, None) {
        texts.connected_again.clone()
    } else {
        texts.connected.clone()
    };
    if !send(&mut socket, hello).await {
        return;
    }
    let line = match tokio::time::timeout(LOGIN_TIMEOUT, next_text(&mut socket)).await {
        Ok(Some(l)) => l,
        _ => return,
    };
    let principal = match m.login(ip, protocol::parse(&line)) {
        Ok(p) => p,
        Err(text) => {
            let _ = send(&mut socket, protocol::info(text)).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    m.trust(ip, &principal);
    let Ok((mut session, _first)) = Session::start(&m.live, principal.clone(), None, "meetip")
    else {
        let _ = send(&mut socket, protocol::info(&texts.unavailable)).await;
        let _ = socket.send(Message::Close(None)).await;
        return;
    };
    let code = m
        .live
        .config()
        .tenants
        .get(&principal.tenant)
        .map_or(0, |t| t.code);
    if principal.scope == Scope::Agent {
        let st = m
            .live
            .with_tenant(&principal.tenant, |t| t.state_of(&principal.extension))
            .flatten();
        if let Some(line) = st.and_then(|s| own_state(&texts, &s.state)) {
            if !send(&mut socket, line).await {
                return;
            }
        }
    }
    let every = m.live.config().heartbeat;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => { let _ = socket.send(Message::Close(None)).await; return }
            next = session.next() => match next {
                Next::Send(msgs) => {
                    for j in msgs {
                        for line in translate(&m, &principal, code, &j) {
                            if !send(&mut socket, line).await {
                                return;
                            }
                        }
                    }
                }
                Next::Close(..) => { let _ = socket.send(Message::Close(None)).await; return }
            },
            msg = socket.recv() => {
                heard = Instant::now();
                let text = match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                };
                if let Some(line) = answer(&m, &principal, &text) {
                    if !send(&mut socket, line).await {
                        return;
                    }
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > every * 2 {
                    metrics().live_heartbeat_timeouts.inc();
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                if socket.send(Message::Ping(b"hb".to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn next_text(socket: &mut WebSocket) -> Option<String> {
    loop {
        match socket.recv().await? {
            Ok(Message::Text(t)) => return Some(t),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

fn own_state(t: &Texts, state: &str) -> Option<String> {
    let text = match state {
        "ringing" => &t.ringing,
        "in_use" | "busy" | "on_hold" => &t.busy,
        "idle" => &t.free,
        "unavailable" if !t.unavailable_state.is_empty() => &t.unavailable_state,
        _ => return None,
    };
    Some(protocol::info(text))
}

/// A page's request after login → the answer line, if any.
fn answer(m: &Meetip, p: &Principal, text: &str) -> Option<String> {
    let t = &m.cfg.texts;
    match protocol::parse(text) {
        Request::Call(number) => {
            if p.scope == Scope::Monitor {
                return Some(protocol::info(&t.monitor_cannot_call));
            }
            match crate::live::api::place_call(&m.live, p, &p.extension, &number) {
                Ok(_) => None,
                Err(_) => Some(protocol::info(&t.unavailable)),
            }
        }
        Request::Status(ext) => {
            let st = m
                .live
                .with_tenant(&p.tenant, |tn| {
                    tn.extensions().contains(&ext).then(|| tn.state_of(&ext))
                })
                .flatten();
            Some(match st {
                None => protocol::status_error(),
                Some(s) => {
                    let word = match s.map(|s| s.state).as_deref() {
                        Some("ringing") => &t.status_ringing,
                        Some("in_use" | "busy" | "on_hold") => &t.status_busy,
                        Some("unavailable") => &t.status_unavailable,
                        _ => &t.status_free,
                    };
                    protocol::estado(&ext, word)
                }
            })
        }
        _ => None,
    }
}

/// A live JSON message → the Meetip lines for this page.
fn translate(m: &Meetip, p: &Principal, code: u64, json: &str) -> Vec<String> {
    let t = &m.cfg.texts;
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let ext = s("extension");
    let monitor = p.scope == Scope::Monitor;
    match s("type") {
        "presence" if !monitor && ext == p.extension => {
            own_state(t, s("state")).into_iter().collect()
        }
        "presence" if monitor => {
            let calls = v
                .get("calls")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let txn = calls
                .first()
                .and_then(|c| c.get("session_id").and_then(Value::as_str))
                .unwrap_or("")
                .to_string();
            // An offered call's ringing is the caller's number line (from
            // `call.ringing`); `Timbre` is the agent's own phone ringing for
            // a call it places (click-to-call). A hint that rings before
            // the model knows the call is left to the number line.
            let own_phone_ringing = calls
                .iter()
                .any(|c| c["role"] == "caller" && c["state"] == "ringing");
            let word = match s("state") {
                "ringing" if !own_phone_ringing => return Vec::new(),
                "ringing" => &t.monitor_ringing,
                "in_use" | "busy" | "on_hold" => &t.monitor_busy,
                "idle" => &t.monitor_free,
                "unavailable" if !t.monitor_unavailable.is_empty() => &t.monitor_unavailable,
                _ => return Vec::new(),
            };
            vec![protocol::monitor(code, word, ext, &txn)]
        }
        "call.ringing" if s("role") == "callee" => {
            let number = s("caller_number");
            if monitor {
                vec![protocol::monitor(code, number, ext, s("session_id"))]
            } else if ext == p.extension && !number.is_empty() {
                vec![protocol::call(number)]
            } else {
                Vec::new()
            }
        }
        "call.hungup" if monitor => vec![protocol::monitor(
            code,
            &t.monitor_ended,
            ext,
            s("session_id"),
        )],
        "originate.connected" if !monitor => vec![protocol::info(&t.calling)],
        "originate.busy" if !monitor => vec![protocol::info(&t.extension_busy)],
        "originate.no_answer" if !monitor => vec![protocol::info(&t.timeout)],
        "originate.failed" if !monitor => vec![protocol::info(&t.unavailable)],
        _ => Vec::new(),
    }
}
