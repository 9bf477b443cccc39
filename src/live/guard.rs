//! The limit on failed authentication per source address, shared by every
//! live surface (the HTTP routes, `/v1/live`, `/v1/live/sse`,
//! `/v1/tickets` and the Meetip login), so that nobody can guess keys or
//! tickets at network speed.
//!
//! - After `auth_failures_per_ip` failures from one address within
//!   `auth_failures_window` (a fixed window opened by the first failure),
//!   every credential from that address is refused until the window ends:
//!   `429` with `Retry-After` on HTTP (and before a WebSocket upgrade), the
//!   `too_many_logins` line and a close on Meetip. Even a correct credential
//!   is refused then (otherwise guessing would go on, with the answer to a
//!   right guess still telling it apart). Other addresses are unaffected.
//! - A failure is a credential that is wrong: unknown tenant, wrong key,
//!   bad signature, malformed ticket, a Meetip light login not allowed. A
//!   request without any credential, and a ticket that is well signed but
//!   expired (a console that outlived its ticket), do not count: neither is
//!   a guess, and an office behind one NAT address must not be locked out
//!   by a stale browser tab.
//! - IPv6 addresses count per /64 (one host's usual allocation), so that an
//!   attacker cannot rotate through its own prefix. At most [`MAX_ADDRESSES`]
//!   addresses are tracked; when that many have failed within their windows
//!   an untracked address is refused too (fail closed), counted.
//! - Counted in `callhook_live_auth_failures_total{reason}` (each failure)
//!   and `callhook_live_connections_refused_total{reason="auth_blocked"}`
//!   (each refusal while blocked); one warning line when an address gets
//!   blocked, at most one every 10 s in all (with the number left out).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::auth::AuthError;
use crate::log_limit::LogLimiter;
use crate::metrics::metrics;

/// Most addresses tracked at once.
pub const MAX_ADDRESSES: usize = 100_000;

static BLOCKED_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// Why a credential was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The credential was wrong, missing or expired.
    Failed(AuthError),
    /// The address is blocked for this much longer.
    Blocked(Duration),
}

impl Denied {
    /// The `429` answer of a blocked address (HTTP routes and upgrades).
    pub fn blocked_response(retry_after: Duration) -> Response {
        let secs = retry_after.as_secs().max(1).to_string();
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs)],
            axum::Json(serde_json::json!({
                "error": "auth_blocked",
                "message": "too many failed authentications from this address",
            })),
        )
            .into_response()
    }
}

/// Failed authentications per address (see the module doc).
#[derive(Debug)]
pub struct AuthGuard {
    max: u32,
    window: Duration,
    map: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    max_keys: usize,
}

/// The key an address counts under (IPv6: its /64).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl AuthGuard {
    /// At most `max` failures per address per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max: max.max(1),
            window,
            map: Mutex::new(HashMap::new()),
            max_keys: MAX_ADDRESSES,
        }
    }

    /// How much longer `ip` is blocked, if it is.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let k = key(ip);
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&k) {
            Some((start, n)) => {
                let left = self.window.checked_sub(now.duration_since(*start))?;
                (*n >= self.max && !left.is_zero()).then_some(left)
            }
            None if m.len() >= self.max_keys => {
                let w = self.window;
                m.retain(|_, (start, _)| now.duration_since(*start) < w);
                (m.len() >= self.max_keys).then_some(Duration::from_secs(1))
            }
            None => None,
        }
    }

    /// Counts a failure from `ip` on `surface` (a log field).
    pub fn failed(&self, ip: IpAddr, surface: &str) {
        let k = key(ip);
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if !m.contains_key(&k) && m.len() >= self.max_keys {
            let w = self.window;
            m.retain(|_, (start, _)| now.duration_since(*start) < w);
            if m.len() >= self.max_keys {
                return;
            }
        }
        let e = m.entry(k).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        if e.1 == self.max {
            drop(m);
            if let Some(suppressed) = BLOCKED_LOG.check() {
                tracing::warn!(
                    address = %k,
                    surface,
                    failures = self.max,
                    window_s = self.window.as_secs(),
                    suppressed,
                    "live: too many failed authentications, address blocked"
                );
            }
        }
    }

    /// Authenticates with `f` for a request from `ip` (none: not limited):
    /// refused at once while blocked; a wrong credential is counted.
    pub fn check<T>(
        &self,
        ip: Option<IpAddr>,
        surface: &str,
        f: impl FnOnce() -> Result<T, AuthError>,
    ) -> Result<T, Denied> {
        if let Some(left) = ip.and_then(|ip| self.blocked(ip)) {
            metrics()
                .live_refused
                .with_label_values(&["auth_blocked"])
                .inc();
            return Err(Denied::Blocked(left));
        }
        f().map_err(|e| {
            metrics()
                .live_auth_failures
                .with_label_values(&[e.label()])
                .inc();
            if e == AuthError::Bad {
                if let Some(ip) = ip {
                    self.failed(ip, surface);
                }
            }
            Denied::Failed(e)
        })
    }
}

/// The client's address, when the server knows it (an extractor).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<IpAddr>);

#[axum::async_trait]
impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_after_max_failures_per_address_only() {
        let g = AuthGuard::new(3, Duration::from_secs(60));
        let a = Some(ip("10.0.0.1"));
        for _ in 0..3 {
            assert_eq!(
                g.check(a, "t", || Err::<(), _>(AuthError::Bad)),
                Err(Denied::Failed(AuthError::Bad))
            );
        }
        // Blocked now, even with a right credential.
        assert!(
            matches!(g.check(a, "t", || Ok(())), Err(Denied::Blocked(d)) if d <= Duration::from_secs(60) && d > Duration::from_secs(50))
        );
        // Another address is unaffected.
        assert_eq!(g.check(Some(ip("10.0.0.2")), "t", || Ok(1)), Ok(1));
        // Missing and expired credentials are not guesses.
        let b = Some(ip("10.0.0.3"));
        for _ in 0..10 {
            let _ = g.check(b, "t", || Err::<(), _>(AuthError::Missing));
            let _ = g.check(b, "t", || Err::<(), _>(AuthError::Expired));
        }
        assert_eq!(g.check(b, "t", || Ok(())), Ok(()));
        // No address known: never limited.
        for _ in 0..10 {
            let _ = g.check(None, "t", || Err::<(), _>(AuthError::Bad));
        }
        assert_eq!(g.check(None, "t", || Ok(())), Ok(()));
    }

    #[test]
    fn ipv6_counts_per_64_and_the_window_ends() {
        let g = AuthGuard::new(2, Duration::from_secs(60));
        g.failed(ip("2001:db8:1:2::1"), "t");
        g.failed(ip("2001:db8:1:2:ffff::9"), "t");
        assert!(g.blocked(ip("2001:db8:1:2::77")).is_some());
        assert!(g.blocked(ip("2001:db8:1:3::1")).is_none());
        g.failed(ip("::ffff:10.1.1.1"), "t");
        g.failed(ip("10.1.1.1"), "t");
        assert!(g.blocked(ip("10.1.1.1")).is_some());

        let g = AuthGuard::new(1, Duration::from_millis(20));
        g.failed(ip("10.0.0.9"), "t");
        assert!(g.blocked(ip("10.0.0.9")).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(g.blocked(ip("10.0.0.9")).is_none());
    }

    #[test]
    fn full_table_fails_closed_for_untracked_addresses() {
        let mut g = AuthGuard::new(5, Duration::from_secs(60));
        g.max_keys = 2;
        g.failed(ip("10.0.0.1"), "t");
        g.failed(ip("10.0.0.2"), "t");
        assert!(g.blocked(ip("10.0.0.1")).is_none());
        assert!(g.blocked(ip("10.0.0.3")).is_some());
    }
}
