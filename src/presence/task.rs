//! The daemon's presence task: presence source events from the AMI clients
//! and the model events the normalizer task committed, into the hub.
//!
//! Both inputs are bounded channels filled with `try_send` by their
//! producers (the AMI socket readers, the normalizer task), so presence can
//! never slow the call path; what does not fit is counted in
//! `callhook_presence_dropped_total{queue}` (the AMI client then asks for
//! fresh state lists; a dropped model batch is repaired by the call's
//! record or, for a leg that never ends, by `presence.max_ringing` /
//! `calls.max_age`).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::hub::PresenceHub;
use crate::model::ModelEvent;
use crate::source::{now_epoch, PresenceSourceEvent};

/// How often calls the model never ended are expired and dialing legs
/// past their grace are decided.
pub const TICK: Duration = Duration::from_millis(250);
/// Source events applied under one lock.
const BATCH: usize = 256;

/// Room for model batches between the normalizer task and presence.
pub const MODEL_QUEUE: usize = 4096;

/// Runs until `token` is cancelled or both inputs are closed.
pub async fn run(
    hub: PresenceHub,
    mut sources: mpsc::Receiver<PresenceSourceEvent>,
    mut model: mpsc::Receiver<Vec<ModelEvent>>,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut sources_open, mut model_open) = (true, true);
    let mut batch: Vec<PresenceSourceEvent> = Vec::with_capacity(BATCH);
    while sources_open || model_open {
        tokio::select! {
            _ = token.cancelled() => break,
            ev = sources.recv(), if sources_open => match ev {
                Some(ev) => {
                    batch.push(ev);
                    while batch.len() < BATCH {
                        match sources.try_recv() {
                            Ok(ev) => batch.push(ev),
                            Err(_) => break,
                        }
                    }
                    hub.handle_sources(batch.iter());
                    batch.clear();
                }
                None => sources_open = false,
            },
            evs = model.recv(), if model_open => match evs {
                Some(evs) => { hub.handle_model(&evs); }
                None => model_open = false,
            },
            _ = tick.tick() => { hub.tick(now_epoch()); }
        }
    }
}

/// Sends a committed batch of model events to the presence task (legs and
/// call records only); never waits.
pub fn send_model(tx: &mpsc::Sender<Vec<ModelEvent>>, events: &[ModelEvent]) {
    let evs: Vec<ModelEvent> = events
        .iter()
        .filter(|e| matches!(e, ModelEvent::Leg(_) | ModelEvent::Call(_)))
        .cloned()
        .collect();
    if evs.is_empty() {
        return;
    }
    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(evs) {
        crate::metrics::metrics()
            .presence_dropped
            .with_label_values(&["model"])
            .inc();
    }
}

/// The daemon's presence wiring: the hub, the channels into the task, and
/// the task itself.
pub struct PresenceWiring {
    /// The shared table (for the HTTP side and tests).
    pub hub: PresenceHub,
    sources: Option<mpsc::Sender<PresenceSourceEvent>>,
    model: Option<mpsc::Sender<Vec<ModelEvent>>>,
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PresenceWiring {
    /// Creates the hub and, when presence is enabled, starts the task.
    /// `pbx_ids` are the configured AMI PBXs.
    pub fn start<'a>(
        cfg: &super::PresenceConfig,
        normalizer: &crate::normalize::NormalizerConfig,
        pbx_ids: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut tracker = super::PresenceTracker::from_config(cfg, normalizer);
        let now = now_epoch();
        for id in pbx_ids {
            tracker.set_ami(id, now);
        }
        let hub = PresenceHub::new(tracker, super::hub::DEFAULT_CHANGES);
        let token = CancellationToken::new();
        if !cfg.enabled {
            return Self {
                hub,
                sources: None,
                model: None,
                token,
                task: None,
            };
        }
        let (stx, srx) = mpsc::channel(cfg.queue_capacity.max(1));
        let (mtx, mrx) = mpsc::channel(MODEL_QUEUE);
        let task = tokio::spawn(run(hub.clone(), srx, mrx, token.clone()));
        Self {
            hub,
            sources: Some(stx),
            model: Some(mtx),
            token,
            task: Some(task),
        }
    }

    /// What the AMI client of `pbx` needs to feed presence (none when
    /// presence is disabled).
    pub fn output(
        &self,
        pbx: &str,
        cfg: &super::PresenceConfig,
        classifier: &crate::normalize::Classifier,
    ) -> Option<crate::ami::state_sync::PresenceOutput> {
        let tx = self.sources.clone()?;
        Some(crate::ami::state_sync::PresenceOutput {
            tx,
            extensions: cfg.extensions_for(pbx),
            context: cfg.context_for(pbx).to_string(),
            classifier: classifier.clone(),
        })
    }

    /// Drops this side's sender of source events (the clients keep theirs).
    pub fn sources_started(&mut self) {
        self.sources = None;
    }

    /// The sender for committed model events (none when disabled).
    pub fn model(&self) -> Option<&mpsc::Sender<Vec<ModelEvent>>> {
        self.model.as_ref()
    }

    /// Stops the task once what was queued is applied (bounded wait).
    pub async fn stop(mut self) {
        self.model = None;
        self.sources = None;
        if let Some(task) = self.task.take() {
            let cancel = self.token.clone();
            let mut task = task;
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                cancel.cancel();
                let _ = task.await;
            }
        }
    }
}
