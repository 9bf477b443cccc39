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
//!
//! The task runs on a thread of its own (`callhook-presence`, with a
//! single-threaded runtime for its tick), not on the daemon's runtime:
//! the AMI readers and the normalizer task never wait behind presence's
//! work, whatever the runtime's number of workers (one core's worth of
//! ingest is the readers and the normalizer; presence follows on
//! another).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

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
    /// Resolves when the task (on its thread) has ended.
    task: Option<oneshot::Receiver<()>>,
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
        let task = spawn_thread((hub.clone(), srx, mrx, token.clone()));
        Self {
            hub,
            sources: Some(stx),
            model: Some(mtx),
            token,
            task: Some(task),
        }
    }

    /// What the AMI clients need to feed presence (none when presence is
    /// disabled). The settings are those the daemon started with.
    pub fn feed(
        &self,
        cfg: &super::PresenceConfig,
        classifier: &crate::normalize::Classifier,
    ) -> Option<PresenceFeed> {
        Some(PresenceFeed {
            tx: self.sources.clone()?,
            cfg: cfg.clone(),
            classifier: classifier.clone(),
        })
    }

    /// The sender for committed model events (none when disabled).
    pub fn model(&self) -> Option<&mpsc::Sender<Vec<ModelEvent>>> {
        self.model.as_ref()
    }

    /// Stops the task (the table is in memory: nothing to drain).
    pub async fn stop(mut self) {
        self.model = None;
        self.sources = None;
        self.token.cancel();
        if let Some(task) = self.task.take() {
            // Err: the thread is gone already (its end was sent or dropped).
            let _ = task.await;
        }
    }
}

/// Name of the presence thread (`top -H`, `/proc/PID/task/*/comm`).
pub const THREAD_NAME: &str = "callhook-presence";

/// The task's inputs: the hub, both queues, the stop token.
type TaskInputs = (
    PresenceHub,
    mpsc::Receiver<PresenceSourceEvent>,
    mpsc::Receiver<Vec<ModelEvent>>,
    CancellationToken,
);

/// Runs [`run`] on a thread of its own; the receiver resolves when it has
/// ended. If no thread (or runtime) can be made, the task runs on the
/// caller's runtime instead, with a warning: presence still works, it
/// only shares the readers' thread.
fn spawn_thread(inputs: TaskInputs) -> oneshot::Receiver<()> {
    let (done_tx, done_rx) = oneshot::channel();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(error = %e, "cannot build the presence runtime; presence shares the daemon's");
            spawn_here(inputs, done_tx);
            return done_rx;
        }
    };
    // The inputs travel in a slot: if the thread cannot be spawned they
    // are taken back and the task runs here.
    let slot = Arc::new(Mutex::new(Some((inputs, done_tx))));
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            let taken = theirs.lock().ok().and_then(|mut g| g.take());
            if let Some(((hub, sources, model, token), done)) = taken {
                rt.block_on(run(hub, sources, model, token));
                let _ = done.send(());
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the presence thread; presence shares the daemon's");
        if let Some((inputs, done)) = slot.lock().ok().and_then(|mut g| g.take()) {
            spawn_here(inputs, done);
        }
    }
    done_rx
}

/// The task on the caller's runtime (when it cannot have a thread).
fn spawn_here(inputs: TaskInputs, done: oneshot::Sender<()>) {
    let (hub, sources, model, token) = inputs;
    tokio::spawn(async move {
        run(hub, sources, model, token).await;
        let _ = done.send(());
    });
}

/// What starts an AMI client's presence side: the presence queue and the
/// settings (see [`PresenceWiring::feed`]).
#[derive(Debug, Clone)]
pub struct PresenceFeed {
    tx: mpsc::Sender<PresenceSourceEvent>,
    cfg: super::PresenceConfig,
    classifier: crate::normalize::Classifier,
}

impl PresenceFeed {
    /// The client of `pbx`'s presence output.
    pub fn output(&self, pbx: &str) -> crate::ami::state_sync::PresenceOutput {
        crate::ami::state_sync::PresenceOutput {
            tx: self.tx.clone(),
            extensions: self.cfg.extensions_for(pbx),
            context: self.cfg.context_for(pbx).to_string(),
            classifier: self.classifier.clone(),
        }
    }
}
