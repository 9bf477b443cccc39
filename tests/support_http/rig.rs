//! An outbox with a running dispatcher, on a state directory of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use callhook::deliver::dispatcher::{spawn, spawn_with_idle_wake, DispatcherHandle};
use callhook::deliver::outbox::OutboxOptions;
use callhook::deliver::{DeliveryRequest, Outbox, Target};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{state_dir, targets, Targets, WAIT};

/// The outbox, its dispatcher and the targets channel it watches.
pub struct Rig {
    pub outbox: Arc<Outbox>,
    pub handle: DispatcherHandle,
    pub shutdown: CancellationToken,
    /// Send new targets for a reload (kept: the channel stays open).
    pub targets: watch::Sender<Targets>,
    /// The state directory, removed when the rig drops.
    pub dir: crate::support_tmp::TestDir,
}

impl Rig {
    /// Targets from `name: {...}` YAML.
    pub fn start(name: &str, yaml: &str) -> Rig {
        Self::with_targets(name, targets(yaml), None)
    }

    /// Validated targets; `idle_wake` replaces the dispatcher's 5 s
    /// safety-net wake-up.
    pub fn with_targets(
        name: &str,
        targets: BTreeMap<String, Target>,
        idle_wake: Option<Duration>,
    ) -> Rig {
        let dir = state_dir(name);
        let outbox = Arc::new(Outbox::open(&dir, OutboxOptions::default()).unwrap());
        let (tx, rx) = watch::channel(Arc::new(targets));
        let shutdown = CancellationToken::new();
        let handle = match idle_wake {
            Some(w) => spawn_with_idle_wake(outbox.clone(), rx, shutdown.clone(), w),
            None => spawn(outbox.clone(), rx, shutdown.clone()),
        };
        Rig {
            outbox,
            handle,
            shutdown,
            targets: tx,
            dir,
        }
    }

    /// Stores the requests (all of them new) and wakes the dispatcher.
    pub async fn enqueue(&self, reqs: &[DeliveryRequest]) {
        let o = self.outbox.enqueue(reqs).await.unwrap();
        assert_eq!(o.inserted, reqs.len(), "{o:?}");
        self.handle.notify();
    }

    /// Stops the dispatcher (the state directory goes with the rig).
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.handle.stopped())
            .await
            .expect("dispatcher stops");
    }
}
