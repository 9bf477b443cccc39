//! Extension state on an AMI connection, for the presence tracker.
//!
//! When the client is started with a [`PresenceOutput`] it
//!
//! * forwards the presence events ([`presence_route`]) to the presence
//!   channel with `try_send` — `ExtensionStatus` and `DeviceStateChange`
//!   only there (the normalizer never sees them, as before), `PeerStatus`,
//!   `ContactStatus`, `Hold` and `Unhold` there *and* to the normalizer;
//! * on every (re)login, before the channel resync, asks for the state of
//!   the whole PBX so the table is right at once, not only after the next
//!   change: on AMI ≥ 2 (Asterisk 12+) `ExtensionStateList` (13+),
//!   `DeviceStateList` (13+), `SIPpeers` and `PJSIPShowEndpoints` (a PBX
//!   without chan_sip or chan_pjsip rejects one of them: that is fine); on
//!   AMI 1.x (≤ 11), or when `ExtensionStateList` is rejected (12),
//!   `SIPpeers` and then one `ExtensionState` per configured extension
//!   and per peer the classifier calls an extension (at most
//!   [`MAX_EXTENSION_STATES`], [`MAX_IN_FLIGHT`] at a time). Each answer
//!   goes to the presence channel as one
//!   [`PresenceSourceEvent::AmiStateList`], never to the normalizer.
//!   Presence events that arrive while these answers are pending are held
//!   back (bounded) and delivered after them, so the tracker sees "state at
//!   login, then changes";
//! * when the presence channel was full (events dropped, counted in
//!   `callhook_presence_dropped_total{queue="source"}`), asks for the state
//!   lists again once it has room (at most every [`RESYNC_MIN_INTERVAL`]).

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::client::{ActionResponse, AmiError};
use super::message::Action;
use crate::metrics::metrics;
use crate::normalize::{Classifier, Party};
use crate::source::{now_epoch, PbxId, PresenceSourceEvent};

/// `ExtensionState` actions in flight at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// Most `ExtensionState` actions per login.
pub const MAX_EXTENSION_STATES: usize = 2000;
/// Minimum time between two overflow-triggered state resyncs.
pub const RESYNC_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// Unsolicited presence events kept before they are handed over, at most
/// (a read brings a few hundred events at most).
const PASS_ON: usize = 256;

/// Where an unsolicited event goes besides (or instead of) the normalizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceRoute {
    /// Only to presence (the normalizer has no use for it).
    Only,
    /// To presence and to the normalizer.
    Also,
}

/// The presence route of an unsolicited event, by name.
pub fn presence_route(event: &str) -> Option<PresenceRoute> {
    const ONLY: &[&str] = &["ExtensionStatus", "DeviceStateChange"];
    const ALSO: &[&str] = &["PeerStatus", "ContactStatus", "Hold", "Unhold"];
    if ONLY.iter().any(|n| n.eq_ignore_ascii_case(event)) {
        Some(PresenceRoute::Only)
    } else if ALSO.iter().any(|n| n.eq_ignore_ascii_case(event)) {
        Some(PresenceRoute::Also)
    } else {
        None
    }
}

/// What the client needs to feed presence.
#[derive(Debug, Clone)]
pub struct PresenceOutput {
    /// The presence channel (shared by every client).
    pub tx: mpsc::Sender<PresenceSourceEvent>,
    /// Extensions to ask `ExtensionState` for on PBXs without
    /// `ExtensionStateList`.
    pub extensions: Vec<String>,
    /// The hints' context for `ExtensionState`.
    pub context: String,
    /// Which `SIPpeers` peers are extensions.
    pub classifier: Classifier,
}

/// One state action of the login sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateStep {
    /// A list action (`ExtensionStateList`, `DeviceStateList`, `SIPpeers`,
    /// `PJSIPShowEndpoints`).
    List(&'static str),
    /// `ExtensionState` for one extension.
    Extension(String),
}

impl StateStep {
    /// The action's name.
    pub fn action_name(&self) -> &'static str {
        match self {
            StateStep::List(a) => a,
            StateStep::Extension(_) => "ExtensionState",
        }
    }
}

/// An extension name safe to put in an action.
fn usable(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= 32
        && e.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '#' | '+' | '_' | '.' | '-'))
}

/// The per-client presence state (see the module documentation).
#[derive(Debug)]
pub struct StateSync {
    pbx: PbxId,
    out: PresenceOutput,
    /// State actions written and not answered yet.
    in_flight: usize,
    /// Extensions waiting for their `ExtensionState`.
    queue: VecDeque<String>,
    /// Extensions already queued this login.
    asked: BTreeSet<String>,
    /// Ask `ExtensionState` per extension (no `ExtensionStateList`).
    per_extension: bool,
    held: VecDeque<PresenceSourceEvent>,
    max_held: usize,
    /// Unsolicited events not handed over yet: they go together at the
    /// end of each read ([`StateSync::flush`]), so the presence thread is
    /// woken once per read, not once per event.
    outgoing: Vec<PresenceSourceEvent>,
    resync_needed: bool,
    last_resync: Option<Instant>,
    overflow_logged: bool,
    closed_logged: bool,
}

impl StateSync {
    /// Presence for client `pbx`; at most `max_held` events are held back
    /// while the state lists are collected.
    pub fn new(pbx: PbxId, out: PresenceOutput, max_held: usize) -> Self {
        Self {
            pbx,
            out,
            in_flight: 0,
            queue: VecDeque::new(),
            asked: BTreeSet::new(),
            per_extension: false,
            held: VecDeque::new(),
            max_held: max_held.max(1),
            outgoing: Vec::new(),
            resync_needed: false,
            last_resync: None,
            overflow_logged: false,
            closed_logged: false,
        }
    }

    /// The actions to send right after a login. `modern`: AMI ≥ 2.
    pub fn begin(&mut self, modern: bool) -> Vec<(Action, StateStep)> {
        self.in_flight = 0;
        self.queue.clear();
        self.asked.clear();
        self.per_extension = !modern;
        self.resync_needed = false;
        self.last_resync = Some(Instant::now());
        let lists: &[&'static str] = if modern {
            &[
                "ExtensionStateList",
                "DeviceStateList",
                "SIPpeers",
                "PJSIPShowEndpoints",
            ]
        } else {
            &["SIPpeers"]
        };
        let mut next: Vec<(Action, StateStep)> = lists
            .iter()
            .map(|a| (Action::new(*a), StateStep::List(a)))
            .collect();
        if !modern {
            let exts = self.out.extensions.clone();
            self.enqueue(exts);
            next.extend(self.pump_queue());
        }
        self.in_flight += next.len();
        next
    }

    fn enqueue(&mut self, exts: impl IntoIterator<Item = String>) {
        for e in exts {
            if self.asked.len() >= MAX_EXTENSION_STATES {
                break;
            }
            if usable(&e) && self.asked.insert(e.clone()) {
                self.queue.push_back(e);
            }
        }
    }

    fn pump_queue(&mut self) -> Vec<(Action, StateStep)> {
        let mut next = Vec::new();
        while self.in_flight + next.len() < MAX_IN_FLIGHT {
            let Some(e) = self.queue.pop_front() else {
                break;
            };
            let a = Action::new("ExtensionState")
                .field("Exten", e.as_str())
                .field("Context", self.out.context.as_str());
            next.push((a, StateStep::Extension(e)));
        }
        next
    }

    /// A state action was answered (or failed); returns the actions to send
    /// next.
    pub fn on_result(
        &mut self,
        step: StateStep,
        result: Result<ActionResponse, AmiError>,
    ) -> Vec<(Action, StateStep)> {
        self.in_flight = self.in_flight.saturating_sub(1);
        let name = step.action_name();
        match result {
            Ok(r) => {
                if self.per_extension && step == StateStep::List("SIPpeers") {
                    let peers: Vec<String> = r
                        .items
                        .iter()
                        .filter_map(|m| m.get("ObjectName"))
                        .filter(|p| {
                            matches!(
                                self.out.classifier.classify(&format!("SIP/{p}"), None),
                                Party::Extension(_)
                            )
                        })
                        .map(str::to_string)
                        .collect();
                    self.enqueue(peers);
                }
                let ev = PresenceSourceEvent::AmiStateList {
                    pbx: self.pbx.clone(),
                    received_at: now_epoch(),
                    action: Some(name.to_string()),
                    response: r.response,
                    items: r.items,
                };
                self.deliver(ev);
            }
            Err(AmiError::Rejected(m)) if step == StateStep::List("ExtensionStateList") => {
                debug!(pbx = %self.pbx, "ExtensionStateList rejected ({m}); asking ExtensionState per extension");
                self.per_extension = true;
                let exts = self.out.extensions.clone();
                self.enqueue(exts);
            }
            Err(AmiError::Rejected(m)) => {
                // SIPpeers without chan_sip, PJSIPShowEndpoints without pjsip, …
                debug!(pbx = %self.pbx, "{name} rejected: {m}");
            }
            Err(e) => {
                warn!(pbx = %self.pbx, "presence state action {name} failed: {e}");
            }
        }
        let next = self.pump_queue();
        self.in_flight += next.len();
        if self.in_flight == 0 {
            self.flush_held();
        }
        next
    }

    /// An action of the sequence could not be written (bad name): it will
    /// not be answered.
    pub fn unsent(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.flush_held();
        }
    }

    /// An unsolicited presence event (held back while answers are pending).
    pub fn forward(&mut self, ev: PresenceSourceEvent) {
        if self.in_flight > 0 {
            if self.held.len() < self.max_held {
                self.held.push_back(ev);
            } else {
                self.dropped();
            }
        } else {
            self.outgoing.push(ev);
            if self.outgoing.len() >= PASS_ON {
                self.flush();
            }
        }
    }

    /// Hands over the unsolicited events [`forward`](Self::forward) kept
    /// (the client calls it once it has handled what a read brought).
    pub fn flush(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        let mut evs = std::mem::take(&mut self.outgoing);
        for ev in evs.drain(..) {
            self.send(ev);
        }
        // The buffer is kept for the next read.
        self.outgoing = evs;
    }

    fn flush_held(&mut self) {
        while let Some(ev) = self.held.pop_front() {
            self.deliver(ev);
        }
    }

    /// `try_send` to presence, after what was kept (in order); never
    /// waits.
    fn deliver(&mut self, ev: PresenceSourceEvent) {
        self.flush();
        self.send(ev);
    }

    fn send(&mut self, ev: PresenceSourceEvent) {
        match self.out.tx.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped(),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                if !self.closed_logged {
                    self.closed_logged = true;
                    warn!(pbx = %self.pbx, "the presence channel is closed; presence events are discarded");
                }
            }
        }
    }

    fn dropped(&mut self) {
        metrics()
            .presence_dropped
            .with_label_values(&["source"])
            .inc();
        if !self.overflow_logged {
            self.overflow_logged = true;
            warn!(pbx = %self.pbx, "presence queue is full: dropping presence events, state lists will be asked again");
        }
        self.resync_needed = true;
    }

    /// True (once) when the state lists should be asked again now: events
    /// were dropped, the queue is at least half empty, nothing is pending
    /// and the last resync is old enough.
    pub fn wants_resync(&mut self) -> bool {
        if !self.resync_needed || self.in_flight > 0 {
            return false;
        }
        let max = self.out.tx.max_capacity().max(1);
        if self.out.tx.capacity() * 2 < max {
            return false;
        }
        if self
            .last_resync
            .is_some_and(|t| t.elapsed() < RESYNC_MIN_INTERVAL)
        {
            return false;
        }
        self.overflow_logged = false;
        true
    }

    /// The connection was lost: what was held goes out, then the notice.
    pub fn disconnected(&mut self, at: f64) {
        self.in_flight = 0;
        self.queue.clear();
        self.flush_held();
        let ev = PresenceSourceEvent::AmiDisconnected {
            pbx: self.pbx.clone(),
            at,
        };
        self.deliver(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ami::AmiMessage;

    fn sync(exts: &[&str]) -> (StateSync, mpsc::Receiver<PresenceSourceEvent>) {
        let (tx, rx) = mpsc::channel(4);
        let out = PresenceOutput {
            tx,
            extensions: exts.iter().map(|s| s.to_string()).collect(),
            context: "from-internal".into(),
            classifier: Classifier::default(),
        };
        (StateSync::new("p".into(), out, 2), rx)
    }

    fn ok(items: Vec<AmiMessage>) -> Result<ActionResponse, AmiError> {
        Ok(ActionResponse {
            response: AmiMessage::from_pairs([("Response", "Success")]),
            items,
            complete: None,
        })
    }

    fn names(a: &[(Action, StateStep)]) -> Vec<String> {
        a.iter()
            .map(|(a, s)| match s {
                StateStep::Extension(e) => format!("{}:{e}", a.name()),
                StateStep::List(_) => a.name().to_string(),
            })
            .collect()
    }

    #[test]
    fn routes() {
        assert_eq!(presence_route("extensionstatus"), Some(PresenceRoute::Only));
        assert_eq!(
            presence_route("DeviceStateChange"),
            Some(PresenceRoute::Only)
        );
        assert_eq!(presence_route("PeerStatus"), Some(PresenceRoute::Also));
        assert_eq!(presence_route("Hold"), Some(PresenceRoute::Also));
        assert_eq!(presence_route("Newchannel"), None);
    }

    #[test]
    fn modern_login_asks_the_lists_and_falls_back_on_12() {
        let (mut s, _rx) = sync(&["1001", "10 01"]);
        let first = s.begin(true);
        assert_eq!(
            names(&first),
            [
                "ExtensionStateList",
                "DeviceStateList",
                "SIPpeers",
                "PJSIPShowEndpoints"
            ]
        );
        let next = s.on_result(
            StateStep::List("ExtensionStateList"),
            Err(AmiError::Rejected("Invalid/unknown command".into())),
        );
        assert_eq!(
            names(&next),
            ["ExtensionState:1001"],
            "unusable names are skipped"
        );
        assert_eq!(
            next[0].0.get("Context"),
            Some("from-internal"),
            "{:?}",
            next[0].0
        );
    }

    #[test]
    fn old_login_asks_peers_then_each_extension() {
        let (mut s, mut rx) = sync(&["1001"]);
        let first = s.begin(false);
        assert_eq!(names(&first), ["SIPpeers", "ExtensionState:1001"]);
        let peer = |n: &str| AmiMessage::from_pairs([("Event", "PeerEntry"), ("ObjectName", n)]);
        let next = s.on_result(
            StateStep::List("SIPpeers"),
            ok(vec![peer("1001"), peer("1002"), peer("pstn")]),
        );
        assert_eq!(names(&next), ["ExtensionState:1002"]);
        assert!(matches!(
            rx.try_recv(),
            Ok(PresenceSourceEvent::AmiStateList { action: Some(a), .. }) if a == "SIPpeers"
        ));
    }

    #[test]
    fn events_wait_for_the_answers_and_overflow_asks_again() {
        let (mut s, mut rx) = sync(&[]);
        let _ = s.begin(true);
        let ev = |i: usize| PresenceSourceEvent::Ami {
            pbx: "p".into(),
            received_at: i as f64,
            msg: AmiMessage::from_pairs([("Event", "ExtensionStatus")]),
        };
        s.forward(ev(1));
        s.forward(ev(2));
        s.forward(ev(3)); // over max_held: dropped
        assert!(rx.try_recv().is_err(), "held while the lists are pending");
        for a in [
            "ExtensionStateList",
            "DeviceStateList",
            "SIPpeers",
            "PJSIPShowEndpoints",
        ] {
            let _ = s.on_result(StateStep::List(a), ok(vec![]));
        }
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push(e);
        }
        // 4 answers fill the queue of 4; the held events overflow.
        assert_eq!(got.len(), 4);
        assert!(!s.wants_resync(), "too soon after the login");
        s.last_resync = None;
        assert!(s.wants_resync(), "the queue is empty again");
    }
}
