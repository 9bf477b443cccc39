//! One PBX's events to the proxy's clients.
//!
//! A [`Hub`] task per PBX subscribes to the AMI client's event tap
//! ([`AmiHandle::subscribe_events`]) and, for each event, without ever
//! waiting:
//!
//! * an event whose ActionID carries this proxy's tag
//!   (`{tag}{client}.{k}/…`: the `OriginateResponse` of a client's
//!   asynchronous `Originate`) goes to that client only, whatever its
//!   filter (it is the action's outcome);
//! * any other event goes to every client whose `Events:` mask and user
//!   filter let it through ([`super::events`]).
//!
//! Each client has a bounded queue (`client_queue` events). When it is
//! full the client is **disconnected** (`callhook_ami_proxy_disconnects_total
//! {reason="overflow"}`): a slow reader never slows the PBX connection, the
//! normalizer (the tap is a broadcast the AMI reader never waits for) or
//! the other clients. If the hub itself falls behind the tap (the machine
//! is starved), every client of that PBX is disconnected
//! (`reason="lagged"`): a client never silently misses events.
//!
//! When the PBX's client is replaced (a reload changed `pbx:`) the hub
//! follows [`Links`] to the new one; the clients stay connected.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::events::{EventFilter, EventMask};
use crate::ami::client::{AmiHandle, ConnectionState};
use crate::ami::AmiMessage;
use crate::metrics::metrics;

/// The running AMI clients by PBX id (kept current across reloads).
pub type Links = watch::Receiver<Arc<BTreeMap<String, AmiHandle>>>;

/// What a client's queue carries.
#[derive(Debug)]
pub enum Outgoing {
    /// An unsolicited event that passed the client's filter.
    Event(Arc<AmiMessage>),
    /// An event answering the client's action number `k`.
    Own {
        /// The client's action number (from the ActionID tag).
        k: u64,
        /// The event, ActionID still rewritten.
        msg: Arc<AmiMessage>,
    },
}

/// Why the hub cut a client off.
#[derive(Debug, Default)]
pub struct Kill {
    /// Cancelled when the client must go.
    pub token: CancellationToken,
    /// `overflow` or `lagged`.
    pub reason: OnceLock<&'static str>,
}

impl Kill {
    fn fire(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }
}

/// A logged-in client as the hub sees it.
pub struct Subscriber {
    /// Its user's event filter.
    pub filter: Arc<EventFilter>,
    /// Its current `Events:` mask (changed by the `Events` action).
    pub mask: Arc<AtomicU32>,
    /// Its queue.
    pub tx: mpsc::Sender<Outgoing>,
    /// How the hub cuts it off.
    pub kill: Arc<Kill>,
}

/// The fan-out of one PBX. See the [module documentation](self).
pub struct Hub {
    pbx: String,
    /// This proxy's ActionID tag, e.g. `cp3fa9c1.`.
    tag: String,
    subscribers: Mutex<HashMap<u64, Subscriber>>,
    handle: Mutex<Option<AmiHandle>>,
}

impl Hub {
    /// A hub for `pbx`; `tag` starts every ActionID this proxy writes.
    pub fn new(pbx: String, tag: String) -> Arc<Self> {
        Arc::new(Self {
            pbx,
            tag,
            subscribers: Mutex::new(HashMap::new()),
            handle: Mutex::new(None),
        })
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Subscriber>> {
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The PBX id.
    pub fn pbx(&self) -> &str {
        &self.pbx
    }

    /// The AMI client to send actions to, when it is logged in.
    pub fn handle(&self) -> Option<AmiHandle> {
        let h = self
            .handle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        (h.state() == ConnectionState::LoggedIn).then_some(h)
    }

    /// Any AMI client of this PBX, logged in or not (for its banner).
    pub fn any_handle(&self) -> Option<AmiHandle> {
        self.handle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The ActionID prefix of action `k` of client `client`.
    pub fn id_prefix(&self, client: u64, k: u64) -> String {
        format!("{}{client}.{k}/", self.tag)
    }

    /// Starts delivering events to `client`.
    pub fn register(&self, client: u64, s: Subscriber) {
        self.subs().insert(client, s);
    }

    /// Stops delivering events to `client`.
    pub fn unregister(&self, client: u64) {
        self.subs().remove(&client);
    }

    /// The client and action number an ActionID of ours names.
    fn owner(&self, action_id: &str) -> Option<(u64, u64)> {
        let rest = action_id.strip_prefix(&self.tag)?;
        let (client, rest) = rest.split_once('.')?;
        let (k, _) = rest.split_once('/')?;
        Some((client.parse().ok()?, k.parse().ok()?))
    }

    /// Routes one event (never waits).
    pub fn fan_out(&self, ev: Arc<AmiMessage>) {
        let mut subs = self.subs();
        if let Some((client, k)) = ev.action_id().and_then(|id| self.owner(id)) {
            if let Some(s) = subs.get(&client) {
                if s.tx.try_send(Outgoing::Own { k, msg: ev }).is_err() {
                    s.kill.fire("overflow");
                    subs.remove(&client);
                }
            } else {
                debug!(pbx = %self.pbx, "an answer for a client that has left");
            }
            return;
        }
        let privilege = ev.get("Privilege");
        let mut full = Vec::new();
        for (id, s) in subs.iter() {
            if !EventMask(s.mask.load(Ordering::Relaxed)).allows(privilege) || !s.filter.allows(&ev)
            {
                continue;
            }
            match s.tx.try_send(Outgoing::Event(ev.clone())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => full.push(*id),
                // The session is ending: it unregisters itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        for id in full {
            if let Some(s) = subs.remove(&id) {
                s.kill.fire("overflow");
            }
        }
    }

    fn kill_all(&self, reason: &'static str) {
        for (_, s) in self.subs().drain() {
            s.kill.fire(reason);
        }
    }

    /// Follows the PBX's AMI client in `links` and fans its events out
    /// until `shutdown`.
    pub async fn run(self: Arc<Self>, mut links: Links, shutdown: CancellationToken) {
        loop {
            // The current client of this PBX (a reload may replace it).
            let handle = loop {
                let h = links.borrow_and_update().get(&self.pbx).cloned();
                if let Some(h) = h.filter(|h| h.state() != ConnectionState::Stopped) {
                    break h;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = links.changed() => if r.is_err() {
                        // No more updates: wait for shutdown.
                        shutdown.cancelled().await;
                        return;
                    },
                }
            };
            let mut rx = handle.subscribe_events();
            *self
                .handle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle.clone());
            debug!(pbx = %self.pbx, "AMI proxy following the PBX's AMI client");
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = handle.stopped() => break,
                    r = rx.recv() => match r {
                        Ok(ev) => self.fan_out(ev),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            metrics().ami_proxy.events_lost.with_label_values(&[&self.pbx]).inc_by(n);
                            warn!(pbx = %self.pbx, lost = n, "AMI proxy fell behind the PBX's events; disconnecting its clients so they resync");
                            self.kill_all("lagged");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            info!(pbx = %self.pbx, "the PBX's AMI client was replaced or stopped; AMI proxy clients stay connected");
            *self
                .handle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(
        mask: u32,
        filter: EventFilter,
        cap: usize,
    ) -> (Subscriber, mpsc::Receiver<Outgoing>, Arc<Kill>) {
        let (tx, rx) = mpsc::channel(cap);
        let kill = Arc::new(Kill::default());
        (
            Subscriber {
                filter: Arc::new(filter),
                mask: Arc::new(AtomicU32::new(mask)),
                tx,
                kill: kill.clone(),
            },
            rx,
            kill,
        )
    }

    fn ev(pairs: &[(&str, &str)]) -> Arc<AmiMessage> {
        Arc::new(AmiMessage::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn filters_routes_and_cuts_off() {
        let hub = Hub::new("main".into(), "cpabc.".into());
        let (a, mut ra, _ka) = sub(
            super::super::events::ALL,
            EventFilter::new(Some(&["Hangup"]), None),
            8,
        );
        let (b, mut rb, kb) = sub(super::super::events::ALL, EventFilter::default(), 1);
        hub.register(1, a);
        hub.register(2, b);
        hub.fan_out(ev(&[("Event", "Newchannel"), ("Privilege", "call,all")]));
        assert!(ra.try_recv().is_err(), "filtered out");
        assert!(matches!(rb.try_recv(), Ok(Outgoing::Event(_))));
        // An answer to client 1's action 7 goes to it alone, filter or not.
        let own = ev(&[
            ("Event", "OriginateResponse"),
            ("ActionID", "cpabc.1.7/main-1-3"),
        ]);
        assert_eq!(hub.id_prefix(1, 7), "cpabc.1.7/");
        hub.fan_out(own);
        assert!(matches!(ra.try_recv(), Ok(Outgoing::Own { k: 7, .. })));
        assert!(rb.try_recv().is_err());
        // Another proxy's tag is an ordinary event.
        hub.fan_out(ev(&[
            ("Event", "OriginateResponse"),
            ("ActionID", "cpzzz.1.7/x"),
        ]));
        assert!(matches!(rb.try_recv(), Ok(Outgoing::Event(_))));
        // Client 2 reads nothing more: its queue of 1 fills, then it is cut off.
        hub.fan_out(ev(&[("Event", "Hangup")]));
        assert!(!kb.token.is_cancelled());
        hub.fan_out(ev(&[("Event", "Hangup")]));
        assert!(kb.token.is_cancelled());
        assert_eq!(kb.reason.get(), Some(&"overflow"));
        assert_eq!(hub.subs().len(), 1);
        assert!(matches!(ra.try_recv(), Ok(Outgoing::Event(_))));
    }

    #[test]
    fn masks_apply() {
        let hub = Hub::new("main".into(), "cp.".into());
        let (a, mut ra, _k) = sub(0, EventFilter::default(), 8);
        let mask = a.mask.clone();
        hub.register(1, a);
        hub.fan_out(ev(&[("Event", "Newchannel"), ("Privilege", "call,all")]));
        assert!(ra.try_recv().is_err(), "Events: off");
        mask.store(
            EventMask::parse("call").map_or(0, |m| m.0),
            Ordering::Relaxed,
        );
        hub.fan_out(ev(&[("Event", "Newchannel"), ("Privilege", "call,all")]));
        hub.fan_out(ev(&[("Event", "Newexten"), ("Privilege", "dialplan,all")]));
        assert!(matches!(ra.try_recv(), Ok(Outgoing::Event(e)) if e.event() == Some("Newchannel")));
        assert!(ra.try_recv().is_err());
    }
}
