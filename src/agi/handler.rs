//! One call, from the environment block to closing the socket.
//!
//! 1. Read the environment (by `env_timeout`).
//! 2. Build the call ([`super::call`]) and pick the first matching route;
//!    none: run `no_route`.
//! 3. Authorization (`allow`), then the PIN (`pin`).
//! 4. Act: the route's `actions`, or the CRM's answer (the route's
//!    `fallback` when the CRM fails; the lookup is abandoned when the
//!    caller hangs up meanwhile).
//! 5. Close the socket. Asterisk never closes first: without this the
//!    channel would sit in AGI() forever. When the actions leave the call
//!    unhandled (a dial nobody answered and nothing after it, a route of
//!    only `set`), the dialplan continues after `AGI()`.
//!
//! Every session ends within `session_timeout`; every command has its own
//! deadline too. The result is counted in
//! `callhook_agi_sessions_total{result}`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{info, warn};

use super::action::{ChannelState, Flow, Runner};
use super::config::{AgiSettings, Router};
use super::pin::PinOutcome;
use super::route::{select, Route};
use super::session::{Session, SessionError};
use crate::metrics::metrics;

/// How a session ended (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionResult {
    /// A route's actions (or the CRM's) ran.
    Routed,
    /// The CRM failed; the route's fallback ran.
    Fallback,
    /// No route matched.
    NoRoute,
    /// The calling extension may not use the route.
    Denied,
    /// Every PIN try was wrong.
    PinRefused,
    /// The caller hung up before the route was done.
    CallerHangup,
    /// Protocol error, timeout, or the connection failed.
    Error,
}

impl SessionResult {
    /// Every result.
    pub const ALL: [SessionResult; 7] = [
        SessionResult::Routed,
        SessionResult::Fallback,
        SessionResult::NoRoute,
        SessionResult::Denied,
        SessionResult::PinRefused,
        SessionResult::CallerHangup,
        SessionResult::Error,
    ];

    /// The label.
    pub fn label(self) -> &'static str {
        match self {
            SessionResult::Routed => "routed",
            SessionResult::Fallback => "fallback",
            SessionResult::NoRoute => "no_route",
            SessionResult::Denied => "denied",
            SessionResult::PinRefused => "pin_refused",
            SessionResult::CallerHangup => "caller_hangup",
            SessionResult::Error => "error",
        }
    }
}

/// Runs one session to its end and closes it.
pub async fn handle<R, W>(
    mut s: Session<R, W>,
    router: Arc<Router>,
    settings: &AgiSettings,
    peer: SocketAddr,
) -> SessionResult
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let started = Instant::now();
    let session_deadline = started + settings.session_timeout;
    let m = &metrics().agi;
    let result = match s
        .read_env((started + settings.env_timeout).min(session_deadline))
        .await
    {
        Err(e) => {
            m.protocol_errors
                .with_label_values(&["env", e.kind()])
                .inc();
            warn!(peer = %peer, error = %e, "AGI session without a complete environment block; closed");
            SessionResult::Error
        }
        Ok(env) => {
            let call = router.call(env);
            match route_call(&mut s, &router, &call, session_deadline).await {
                Ok(r) => r,
                Err(e) => {
                    m.protocol_errors
                        .with_label_values(&["command", e.kind()])
                        .inc();
                    if matches!(e, SessionError::Timeout(_))
                        && started.elapsed() >= settings.session_timeout
                    {
                        warn!(peer = %peer, channel = %call.channel, "AGI session reached session_timeout; closed");
                    } else {
                        warn!(peer = %peer, channel = %call.channel, error = %e, "AGI session failed; closed");
                    }
                    if s.hung_up() {
                        SessionResult::CallerHangup
                    } else {
                        SessionResult::Error
                    }
                }
            }
        }
    };
    m.sessions.with_label_values(&[result.label()]).inc();
    s.close().await;
    result
}

async fn route_call<R, W>(
    s: &mut Session<R, W>,
    router: &Router,
    call: &super::call::AgiCall,
    session_deadline: Instant,
) -> Result<SessionResult, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let m = &metrics().agi;
    let mut ctx = call.template_context(&router.env);
    let now = jiff::Timestamp::now();
    let route: Option<&Route> = select(&router.routes, call, now);
    ctx.prepare(route.map_or("", |r| r.name.as_str()));
    let name = route.map_or("", |r| r.name.as_str());
    let run = Runner {
        route: name,
        templates: &router.templates,
        ctx: &ctx,
        settings: &router.run,
        session_deadline,
    };
    let mut st = ChannelState::default();
    let Some(route) = route else {
        info!(channel = %call.channel, script = %call.script, dialed = %call.dialed.as_deref().unwrap_or(""), "AGI: no route matches");
        run.run(s, &mut st, &router.no_route).await?;
        return Ok(SessionResult::NoRoute);
    };
    m.route_matches.with_label_values(&[name]).inc();
    if !route.allows(call) {
        m.auth_failures.with_label_values(&[name, "denied"]).inc();
        warn!(
            route = %name,
            channel = %call.channel,
            extension = %call.extension.as_deref().unwrap_or("(trunk)"),
            caller = %call.caller.as_deref().unwrap_or(""),
            dialed = %call.dialed.as_deref().unwrap_or(""),
            "AGI: caller not allowed on this route"
        );
        run.run(s, &mut st, &route.deny).await?;
        return Ok(SessionResult::Denied);
    }
    if let Some(pin) = &route.pin {
        match pin.authenticate(&run, s, &mut st, call).await? {
            PinOutcome::Accepted => {}
            PinOutcome::Refused => {
                warn!(route = %name, channel = %call.channel, tries = pin.tries, "AGI: PIN refused, call hung up");
                return Ok(SessionResult::PinRefused);
            }
            PinOutcome::Gone => return Ok(SessionResult::CallerHangup),
        }
    }
    let (actions, result) = match &route.crm {
        None => (Arc::new(route.actions.clone()), SessionResult::Routed),
        Some(crm) => {
            let target = router.targets.get(&crm.target);
            let answer = match target {
                None => Err(super::crm::CrmFailure {
                    kind: "error",
                    message: format!("target {:?} is gone", crm.target),
                }),
                Some(t) => {
                    tokio::select! {
                        r = crm.ask(name, call, &router.templates, &ctx, t, &router.cache) => r,
                        _ = s.hangup_notice() => {
                            info!(route = %name, channel = %call.channel, "AGI: the caller hung up during the CRM lookup");
                            return Ok(SessionResult::CallerHangup);
                        }
                    }
                }
            };
            match answer {
                Ok((a, cached)) => {
                    info!(route = %name, channel = %call.channel, cached, actions = a.len(), "AGI: CRM decided");
                    (a, SessionResult::Routed)
                }
                Err(f) => {
                    warn!(route = %name, channel = %call.channel, kind = f.kind, error = %f.message, "AGI: CRM gave no usable answer; running the fallback");
                    (Arc::new(route.fallback.clone()), SessionResult::Fallback)
                }
            }
        }
    };
    let flow = run.run(s, &mut st, &actions).await?;
    if flow == Flow::Next {
        info!(route = %name, channel = %call.channel, "AGI: route done without handling the call; the dialplan goes on after AGI()");
    }
    Ok(result)
}
