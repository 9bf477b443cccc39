//! The proxy's accept loop: connection caps and the failed-login block,
//! applied before a connection costs more than a slot.
//!
//! A connection is refused (closed at once, nothing written) when the
//! proxy already has `max_connections` clients, when its address
//! ([`ClientKey`]: IPv4 address, IPv6 /64) has `max_connections_per_ip`,
//! or when that address used up its failed logins ([`super::login_limit`]).
//! Each refusal counts in `callhook_ami_proxy_connections_refused_total
//! {reason}` and logs at most one line per 10 s. An accept error (out of
//! descriptors) pauses accepting for 100 ms instead of spinning.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::{session, Shared};
use crate::http::server::ClientKey;
use crate::log_limit::LogLimiter;
use crate::metrics::metrics;

static REFUSED_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));
static ACCEPT_ERROR_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// Open connections, in total and per client key.
#[derive(Default)]
struct Slots {
    total: usize,
    per_key: HashMap<ClientKey, usize>,
}

/// Frees a slot when the session ends.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    key: ClientKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_key.remove(&self.key);
            }
        }
        metrics().ami_proxy.connections.set(s.total as i64);
    }
}

/// Accepts until shutdown, then waits for the sessions to end.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let tasks = TaskTracker::new();
    let shutdown = shared.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    if let Some(suppressed) = ACCEPT_ERROR_LOG.check() {
                        warn!(error = %e, suppressed, "AMI proxy cannot accept a connection");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let key = ClientKey::of(peer.ip());
        let refused = if shared.limit.blocked(key) {
            Some("login_blocked")
        } else {
            let mut s = slots.lock().unwrap_or_else(|p| p.into_inner());
            let mine = s.per_key.get(&key).copied().unwrap_or(0);
            if s.total >= shared.cfg.max_connections {
                Some("total_cap")
            } else if mine >= shared.cfg.max_connections_per_ip {
                Some("per_ip_cap")
            } else {
                s.total += 1;
                *s.per_key.entry(key).or_default() += 1;
                metrics().ami_proxy.connections.set(s.total as i64);
                None
            }
        };
        if let Some(reason) = refused {
            metrics()
                .ami_proxy
                .refused
                .with_label_values(&[reason])
                .inc();
            if let Some(suppressed) = REFUSED_LOG.check() {
                warn!(peer = %peer, reason, suppressed, "AMI proxy refused a connection");
            }
            drop(stream);
            continue;
        }
        let slot = Slot {
            slots: slots.clone(),
            key,
        };
        let client = shared.next_client.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        tasks.spawn(async move {
            let _slot = slot;
            session::run(shared, stream, peer, client).await;
        });
    }
    tasks.close();
    tasks.wait().await;
    info!("AMI proxy stopped");
}
