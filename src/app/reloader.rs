//! Reloads (SIGHUP or `POST /-/reload`): the file is read and validated
//! again; on success the rules, targets, normalizer settings, push teams
//! and FastAGI routes are swapped, the AMI clients (or, in cluster mode,
//! what may be owned) follow `pbx:`, and what needs a restart is reported.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::clients::Clients;
use super::handover::ownable;
use super::init_series;
use crate::cluster::ownership::Item;
use crate::config::{reload, Config, PbxConfig, ReloadOutcome};
use crate::deliver::Target;
use crate::http::push::Teams;
use crate::http::ReloadReply;
use crate::metrics::metrics;
use crate::normalize::NormalizerConfig;
use crate::rules::RuleSet;
use crate::source::now_epoch;

/// Cluster mode: what the ownership follower and task read (the configured
/// PBXs, what may be owned).
pub(super) type ClusterFeeds = (watch::Sender<Vec<PbxConfig>>, watch::Sender<Vec<Item>>);

/// What a reload replaces.
pub(super) struct Reloader {
    /// The config file (none: reload unavailable).
    pub config_path: Option<PathBuf>,
    /// The configuration the daemon started with.
    pub started: Config,
    /// The event queue's capacity as started (a larger one needs a restart).
    pub capacity: usize,
    /// The queue's room for pushes.
    pub push_queue: usize,
    pub targets: watch::Sender<Arc<BTreeMap<String, Target>>>,
    pub rules: watch::Sender<Arc<RuleSet>>,
    pub normalizer: watch::Sender<NormalizerConfig>,
    pub clients: Clients,
    /// Cluster mode: the configured PBXs and what may be owned.
    pub cluster: Option<ClusterFeeds>,
    pub push_teams: watch::Sender<Arc<Teams>>,
    pub agi_router: Option<watch::Sender<Arc<crate::agi::Router>>>,
}

impl Reloader {
    /// Answers reload requests until the channel closes.
    pub(super) async fn run(self, mut rx: mpsc::Receiver<ReloadReply>) {
        let mut running = self.started.clone();
        while let Some(reply) = rx.recv().await {
            let result = match &self.config_path {
                None => Err(vec!["no configuration file to reload".to_string()]),
                Some(p) => match Config::load(p) {
                    Ok(new) => {
                        let outcome = ReloadOutcome {
                            applied: reload::applied(&running, &new),
                            restart_required: reload::restart_required(
                                &self.started,
                                &new,
                                self.capacity,
                                self.push_queue,
                            ),
                        };
                        self.targets.send_replace(new.targets.clone());
                        self.rules.send_replace(new.rules.clone());
                        self.normalizer.send_replace(new.daemon_normalizer());
                        if let Some((pbx, items)) = &self.cluster {
                            // The owned ones follow (follow_ownership).
                            pbx.send_replace(new.pbx.clone());
                            items.send_replace(ownable(&new));
                        } else {
                            self.clients.apply(&new.pbx).await;
                        }
                        if self.started.push.is_some() {
                            if let Some(p) = &new.push {
                                self.push_teams.send_replace(Arc::new(Teams::new(&p.teams)));
                            }
                        }
                        if let (Some(tx), Some(a)) = (&self.agi_router, &new.agi) {
                            metrics().agi.init_series(&a.router.names());
                            tx.send_replace(a.router.clone());
                        }
                        init_series(&new);
                        metrics()
                            .config_last_reload_success_timestamp_seconds
                            .set(now_epoch());
                        for k in reload::RESTART_KEYS {
                            let pending = outcome.restart_required.iter().any(|x| x == k);
                            metrics()
                                .config_restart_required
                                .with_label_values(&[k])
                                .set(i64::from(pending));
                        }
                        for k in &outcome.restart_required {
                            warn!(key = %k, "reloaded setting needs a restart to take effect; the running value stays");
                        }
                        info!(
                            rules = new.rules.len(),
                            targets = new.targets.len(),
                            pbx = new.pbx.len(),
                            applied = %outcome.applied.join(", "),
                            "configuration reloaded"
                        );
                        running = new;
                        Ok(outcome)
                    }
                    Err(e) => {
                        let errors = e.rendered();
                        for x in &errors {
                            error!(error = %x, "reload rejected, the previous configuration stays");
                        }
                        Err(errors)
                    }
                },
            };
            let ok = result.is_ok();
            metrics().config_last_reload_successful.set(ok as i64);
            metrics()
                .config_reloads
                .with_label_values(&[if ok { "success" } else { "failure" }])
                .inc();
            let _ = reply.send(result);
        }
    }
}
