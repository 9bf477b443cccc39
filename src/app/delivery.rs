//! Where deliveries are stored and who sends them: the SQLite outbox and
//! its dispatcher (one process), or the cluster's streams and partition
//! dispatcher. Both behind [`DeliveryStore`].

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{lock_state_dir, AppError};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::deliver::outbox::Outbox;
use crate::deliver::store::DeliveryStore;
use crate::deliver::{self};

/// Where deliveries are stored and who sends them.
pub(super) enum Delivery {
    /// One process: the SQLite outbox in `state_dir` (locked) and its dispatcher.
    Local {
        outbox: Arc<Outbox>,
        dispatcher: deliver::DispatcherHandle,
        _lock: std::fs::File,
    },
    /// Cluster mode: the replicated stream and the partition dispatcher.
    Cluster {
        cluster: Box<Cluster>,
        store: Arc<crate::cluster::store::ClusterStore>,
        dispatcher: crate::cluster::dispatch::ClusterDispatcher,
    },
}

impl Delivery {
    pub(super) async fn start(
        cfg: &Config,
        targets: watch::Receiver<Arc<std::collections::BTreeMap<String, deliver::Target>>>,
        token: CancellationToken,
    ) -> Result<Delivery, AppError> {
        if let Some(cc) = &cfg.cluster {
            let cluster = Cluster::connect(cc.clone())
                .await
                .map_err(AppError::Cluster)?;
            let store = Arc::new(
                crate::cluster::store::ClusterStore::new(&cluster)
                    .await
                    .map_err(AppError::Cluster)?,
            );
            info!(instance = %cluster.id, servers = %cc.servers.join(","), replicas = cc.replicas, partitions = cc.partitions, "cluster mode: connected to NATS JetStream");
            let dispatcher =
                crate::cluster::dispatch::spawn(cluster.clone(), store.clone(), targets, token);
            return Ok(Delivery::Cluster {
                cluster: Box::new(cluster),
                store,
                dispatcher,
            });
        }
        // One daemon per outbox: the lock lives as long as the daemon and
        // is released by the OS even on kill -9. (Short-lived tools such as
        // `backfill` and `deliveries` share the outbox on purpose and take no lock.)
        let lock = lock_state_dir(&cfg.state_dir)?;
        let outbox = Outbox::open(&cfg.state_dir, cfg.outbox.clone()).map_err(|source| {
            AppError::Outbox {
                dir: cfg.state_dir.clone(),
                source,
            }
        })?;
        let outbox = Arc::new(outbox);
        info!(dir = %cfg.state_dir.display(), targets = cfg.targets.len(), rules = cfg.rules.len(), "outbox open");
        // Rows stored in clear by an older version: masked before anything else.
        match outbox
            .conceal_stored(Arc::new(cfg.rules.secrets().clone()))
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(rows = n, "secrets stored in clear in the outbox masked"),
            Err(e) => warn!(error = %e, "cannot mask secrets stored in the outbox"),
        }
        let dispatcher = deliver::spawn(outbox.clone(), targets, token);
        Ok(Delivery::Local {
            outbox,
            dispatcher,
            _lock: lock,
        })
    }

    pub(super) fn store(&self) -> Arc<dyn DeliveryStore> {
        match self {
            Delivery::Local { outbox, .. } => outbox.clone(),
            Delivery::Cluster { store, .. } => store.clone(),
        }
    }

    pub(super) fn outbox(&self) -> Option<Arc<Outbox>> {
        match self {
            Delivery::Local { outbox, .. } => Some(outbox.clone()),
            Delivery::Cluster { .. } => None,
        }
    }

    /// The single-node dispatcher, whose outbox polling `/readyz` reports
    /// (cluster mode: none; the stream's health is in the cluster view).
    pub(super) fn polling_probe(&self) -> Option<deliver::DispatcherHandle> {
        match self {
            Delivery::Local { dispatcher, .. } => Some(dispatcher.clone()),
            Delivery::Cluster { .. } => None,
        }
    }

    pub(super) fn cluster(&self) -> Option<&Cluster> {
        match self {
            Delivery::Local { .. } => None,
            Delivery::Cluster { cluster, .. } => Some(cluster),
        }
    }

    pub(super) async fn stopped(&self) {
        match self {
            Delivery::Local { dispatcher, .. } => dispatcher.stopped().await,
            Delivery::Cluster { dispatcher, .. } => dispatcher.stopped().await,
        }
    }

    pub(super) fn close(&self) {
        if let Delivery::Local { outbox, .. } = self {
            outbox.close();
        }
    }
}
