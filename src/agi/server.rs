//! The FastAGI listener: one task per call, under caps.
//!
//! - **Who**: a connection from an address outside `allow_from` (default
//!   loopback) is closed at once, before a byte is read. FastAGI has no
//!   authentication of its own and no TLS: put the listener on a private
//!   address and list the PBXs.
//! - **How many**: at most `max_sessions` calls at once and
//!   `max_sessions_per_ip` per client address (an IPv6 client counts by its
//!   /64). A connection over a cap is closed at once: Asterisk then fails
//!   the AGI (`AGISTATUS=FAILURE`) and the dialplan continues, so the
//!   caller is never left waiting on callhook. Calls in progress are never
//!   cut to make room.
//! - **How long**: the environment block within `env_timeout` (a
//!   slow-dripping or silent peer holds a slot no longer), each command
//!   within its deadline, the whole session within `session_timeout`.
//!
//! Refusals are counted in `callhook_agi_connections_refused_total{reason}`
//! (`not_allowed`, `total_cap`, `per_ip_cap`, `accept_error`) and logged
//! at most once per 10 s; open sessions are the gauge `callhook_agi_sessions`.
//!
//! **Reload** swaps the routing table (routes, rewrites, CRM settings):
//! calls in progress finish with the table they started with. The listener's
//! own settings need a restart. **Shutdown**: stop accepting; calls still in
//! progress after the grace period are closed (a call inside `Dial` goes on;
//! Asterisk ends the AGI when Dial returns).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{AgiSettings, Router};
use super::handler::handle;
use super::session::Session;
use crate::http::server::ClientKey;
use crate::log_limit::LogLimiter;
use crate::metrics::metrics;

static REFUSED_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));
static ACCEPT_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));

#[derive(Default)]
struct Counts {
    total: usize,
    per_client: HashMap<ClientKey, usize>,
}

/// A slot in the counts, released on drop.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    client: ClientKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                c.per_client.remove(&self.client);
            }
        }
        metrics().agi.sessions_open.dec();
    }
}

fn admit(
    counts: &Arc<Mutex<Counts>>,
    client: ClientKey,
    s: &AgiSettings,
) -> Result<Slot, &'static str> {
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    if c.total >= s.max_sessions {
        return Err("total_cap");
    }
    let n = c.per_client.entry(client).or_insert(0);
    if *n >= s.max_sessions_per_ip {
        return Err("per_ip_cap");
    }
    *n += 1;
    c.total += 1;
    metrics().agi.sessions_open.inc();
    Ok(Slot {
        counts: counts.clone(),
        client,
    })
}

/// How long calls in progress may go on after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves FastAGI on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    settings: AgiSettings,
    router: watch::Receiver<Arc<Router>>,
    shutdown: CancellationToken,
) {
    let m = &metrics().agi;
    let counts = Arc::new(Mutex::new(Counts::default()));
    let tracker = TaskTracker::new();
    let hard = CancellationToken::new();
    let settings = Arc::new(settings);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                m.refused.with_label_values(&["accept_error"]).inc();
                if let Some(suppressed) = ACCEPT_LOG.check() {
                    tracing::error!(error = %e, suppressed, "AGI accept failed (out of file descriptors?): pausing accepts briefly");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !settings.allowed(peer.ip()) {
            m.refused.with_label_values(&["not_allowed"]).inc();
            if let Some(suppressed) = REFUSED_LOG.check() {
                tracing::warn!(peer = %peer, suppressed, "AGI connection from an address outside agi.allow_from; closed");
            }
            drop(stream);
            continue;
        }
        let slot = match admit(&counts, ClientKey::of(peer.ip()), &settings) {
            Ok(s) => s,
            Err(reason) => {
                m.refused.with_label_values(&[reason]).inc();
                if let Some(suppressed) = REFUSED_LOG.check() {
                    tracing::warn!(peer = %peer, reason, suppressed, "AGI connection over the session cap; closed (the dialplan continues after AGI())");
                }
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.borrow().clone();
        let settings = settings.clone();
        let hard = hard.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let (r, w) = stream.into_split();
            let session = Session::new(r, w, settings.wire);
            tokio::select! {
                _ = handle(session, router, &settings, peer) => {}
                _ = hard.cancelled() => {
                    tracing::info!(peer = %peer, "AGI session closed at shutdown");
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        hard.cancel();
        tracker.wait().await;
    }
}
