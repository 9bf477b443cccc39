//! The AMI clients of the daemon: one per PBX (in cluster mode, per PBX
//! this instance owns), started, stopped and restarted as reloads and
//! ownership change them; their handles for the live API and the proxy.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ami::client::{self, AmiHandle, AuthMode, ClientConfig};
use crate::config::{Config, PbxConfig};
use crate::metrics::metrics;
use crate::presence::task::PresenceFeed;
use crate::source::SourceEvent;

/// Builds one client config per configured PBX.
pub fn client_configs(cfg: &Config) -> Vec<ClientConfig> {
    cfg.pbx.iter().map(client_config).collect()
}

/// The client config of one PBX.
pub fn client_config(p: &PbxConfig) -> ClientConfig {
    let mut c = ClientConfig::new(
        p.id.as_str(),
        p.host.clone(),
        p.port,
        p.username.clone(),
        p.secret.expose(),
    );
    c.auth = if p.md5 {
        AuthMode::Md5
    } else {
        AuthMode::Plain
    };
    c.events = p.events.clone();
    c.ping_interval = p.ping_interval;
    c.ping_timeout = p.ping_timeout;
    c.connect_timeout = p.connect_timeout;
    c.max_packet = p.max_packet;
    c.queue_capacity = p.queue_capacity;
    c.max_stall = p.max_stall;
    c
}

/// One running AMI client.
struct Client {
    cfg: PbxConfig,
    handle: AmiHandle,
    stop: CancellationToken,
}

/// The AMI clients of the daemon, started, stopped and restarted as
/// reloads add, remove and change PBXs.
#[derive(Clone)]
pub(super) struct Clients {
    list: Arc<std::sync::Mutex<Vec<Client>>>,
    events: mpsc::Sender<SourceEvent>,
    parent: CancellationToken,
    /// Presence settings for the clients (none: presence disabled).
    presence: Option<PresenceFeed>,
    /// The running clients by PBX id, for the AMI proxy.
    links: Arc<watch::Sender<Arc<std::collections::BTreeMap<String, AmiHandle>>>>,
    /// The PBXs the AMI proxy serves: their clients build noise events too
    /// (the proxy's tools get every event).
    proxied: Arc<Vec<String>>,
}

impl Clients {
    pub(super) fn new(
        events: mpsc::Sender<SourceEvent>,
        parent: CancellationToken,
        presence: Option<PresenceFeed>,
        proxied: Vec<String>,
    ) -> Self {
        Self {
            list: Arc::new(std::sync::Mutex::new(Vec::new())),
            events,
            parent,
            presence,
            links: Arc::new(watch::channel(Arc::new(std::collections::BTreeMap::new())).0),
            proxied: Arc::new(proxied),
        }
    }

    /// Follows the running clients (the AMI proxy's view of the PBXs).
    pub(super) fn links(&self) -> crate::proxy::Links {
        self.links.subscribe()
    }

    pub(super) fn publish_links(&self) {
        let map: std::collections::BTreeMap<String, AmiHandle> = self
            .lock()
            .iter()
            .map(|c| (c.cfg.id.clone(), c.handle.clone()))
            .collect();
        self.links.send_replace(Arc::new(map));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        self.list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn start(&self, p: &PbxConfig) {
        let mut c = client_config(p);
        c.keep_noise = self.proxied.contains(&p.id);
        info!(pbx = %c.pbx, host = %c.host, port = c.port, "starting AMI client");
        let stop = self.parent.child_token();
        let presence = self.presence.as_ref().map(|f| f.output(&p.id));
        let handle = client::spawn_with_presence(c, self.events.clone(), presence, stop.clone());
        self.lock().push(Client {
            cfg: p.clone(),
            handle,
            stop,
        });
        self.publish_links();
    }

    pub(super) fn handles(&self) -> Vec<AmiHandle> {
        self.lock().iter().map(|c| c.handle.clone()).collect()
    }

    /// Stops the client of `id` and waits (a little) for it to log off.
    pub(super) async fn stop(&self, id: &str) {
        let gone = {
            let mut list = self.lock();
            list.iter()
                .position(|c| c.cfg.id == id)
                .map(|i| list.remove(i))
        };
        self.publish_links();
        if let Some(c) = gone {
            c.stop.cancel();
            if tokio::time::timeout(Duration::from_secs(3), c.handle.stopped())
                .await
                .is_err()
            {
                warn!(pbx = %id, "AMI client did not stop in time");
            }
        }
    }

    /// Makes the running clients those of `pbx`: new ones started,
    /// removed ones stopped, changed ones restarted.
    pub(super) async fn apply(&self, pbx: &[PbxConfig]) {
        let running: Vec<PbxConfig> = self.lock().iter().map(|c| c.cfg.clone()).collect();
        for old in &running {
            match pbx.iter().find(|p| p.id == old.id) {
                None => {
                    info!(pbx = %old.id, "PBX removed by a reload: disconnecting");
                    self.stop(&old.id).await;
                    metrics()
                        .ami_connection_state
                        .remove_label_values(&[&old.id])
                        .ok();
                }
                Some(p) if p != old => {
                    info!(pbx = %old.id, "PBX changed by a reload: reconnecting");
                    self.stop(&old.id).await;
                    self.start(p);
                }
                Some(_) => {}
            }
        }
        for p in pbx {
            if !running.iter().any(|o| o.id == p.id) {
                info!(pbx = %p.id, "PBX added by a reload");
                self.start(p);
            }
        }
    }
}
