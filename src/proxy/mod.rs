//! The AMI proxy: existing AMI tools (operator panels, CRM connectors,
//! cron scripts) log in to callhook instead of the PBX and share
//! callhook's one AMI connection per PBX (`ami_proxy:` in the config).
//!
//! ```text
//!                  ┌─ AMI client (ami::client) ──try_send──▶ normalizer …
//!  PBX ◀── AMI ──▶ │        │ event tap (broadcast, never waited for)
//!                  │        ▼
//!                  │  fanout::Hub ──bounded queue per client──▶ session ──▶ tool
//!                  │        ▲                                     │
//!                  └────────┴──── AmiHandle::send_with ◀──────────┘ actions
//! ```
//!
//! The proxy is an edge next to the AMI client, like the push endpoint is
//! an edge next to the HTTP server: it consumes the client's tap and
//! sends actions through its handle, and **never feeds the normalizer**
//! (a proxied `Originate` is not even announced to it: the model sees a
//! proxied tool's calls exactly as it would with the tool on its own AMI
//! login).
//!
//! * [`config`]: the `ami_proxy:` section (users, caps, timeouts).
//! * [`listener`]: accept loop, connection caps, failed-login block.
//! * [`session`]: one client — banner, login ([`login`]), local and
//!   forwarded actions, events; [`pending`]: its forwarded actions and
//!   their answers under its own ActionIDs.
//! * [`actions`]: a user's allow-list; [`events`]: a user's event filter
//!   and the session's `Events:` mask.
//! * [`fanout`]: one PBX's events to the clients, bounded per client.
//! * [`login_limit`]: failed logins per address; [`rate`]: a client's
//!   action rate; [`wire`]: bytes out.
//!
//! **When the PBX link is down**, clients stay connected and logged in:
//! `Ping` and the other local actions still work, forwarded actions get
//! `Response: Error` at once, actions in flight when the link dropped get
//! an error saying their outcome is unknown (never re-sent), and no events
//! arrive meanwhile. When the AMI client has logged in again, events flow
//! again (the PBX's `FullyBooted` reaches clients that read `system`
//! events, a sign to re-read state); a client's session, its mask and its
//! ActionIDs are unaffected. A reload that replaces the PBX's client is
//! followed the same way.

pub mod actions;
pub mod config;
pub mod events;
pub mod fanout;
mod listener;
pub mod login;
pub mod login_limit;
pub mod pending;
pub mod rate;
pub mod session;
pub mod wire;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use rand::Rng;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{AmiProxyConfig, ProxyUser, RawAmiProxy};
pub use fanout::Links;

use fanout::Hub;
use login_limit::LoginLimit;

/// What every session shares.
pub(crate) struct Shared {
    cfg: AmiProxyConfig,
    /// One hub per PBX a user talks to.
    hubs: HashMap<String, Arc<Hub>>,
    limit: LoginLimit,
    next_client: AtomicU64,
    shutdown: CancellationToken,
}

impl Shared {
    /// The greeting: the banner of a PBX's current AMI connection (the
    /// first PBX of the users that has one).
    fn banner(&self) -> Option<String> {
        self.cfg
            .pbx_ids()
            .iter()
            .filter_map(|p| self.hubs.get(p))
            .find_map(|h| h.any_handle().and_then(|h| h.banner()))
    }
}

/// A running proxy.
pub struct AmiProxy {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl AmiProxy {
    /// Starts the proxy on `listener` (or binds `cfg.listen`), following
    /// the AMI clients in `links`, until `shutdown`.
    pub async fn start(
        cfg: AmiProxyConfig,
        listener: Option<TcpListener>,
        links: Links,
        shutdown: CancellationToken,
    ) -> io::Result<AmiProxy> {
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(cfg.listen).await?,
        };
        let addr = listener.local_addr()?;
        // A tag no other proxy on the same PBX uses, so that answers
        // broadcast by Asterisk (OriginateResponse) find their client.
        let tag = format!("cp{:06x}.", rand::thread_rng().gen::<u32>() & 0xff_ffff);
        let mut tasks = Vec::new();
        let mut hubs = HashMap::new();
        for pbx in cfg.pbx_ids() {
            let hub = Hub::new(pbx.clone(), tag.clone());
            tasks.push(tokio::spawn(
                hub.clone().run(links.clone(), shutdown.clone()),
            ));
            hubs.insert(pbx, hub);
        }
        info!(
            addr = %addr,
            users = cfg.users.len(),
            max_connections = cfg.max_connections,
            "AMI proxy listening"
        );
        if !addr.ip().is_loopback() {
            warn!(addr = %addr, "the AMI proxy listens beyond loopback: AMI has no TLS, so keep it on a private network and firewall it to the tools' hosts");
        }
        let shared = Arc::new(Shared {
            limit: LoginLimit::new(cfg.max_login_failures, cfg.login_failure_window),
            cfg,
            hubs,
            next_client: AtomicU64::new(1),
            shutdown,
        });
        tasks.push(tokio::spawn(listener::accept_loop(listener, shared)));
        Ok(AmiProxy { addr, tasks })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until it has stopped (after shutdown) and every session ended.
    pub async fn stopped(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
