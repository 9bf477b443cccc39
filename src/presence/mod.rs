//! Presence: what state each extension is in, per PBX (and push team).
//!
//! [`PresenceTracker`] is pure and synchronous like the normalizer: it takes
//! [`PresenceSourceEvent`]s (the AMI client's `ExtensionStatus`,
//! `DeviceStateChange`, `PeerStatus`, `ContactStatus`, `Hold`/`Unhold` and
//! the state lists it asks for after every login) and the [`ModelEvent`]s
//! the normalizer emitted after their commit, and appends a
//! [`PresenceEvent`] for every extension whose state, call waiting or calls
//! changed. [`PresenceTracker::snapshot`] and
//! [`PresenceTracker::extension`] read the table.
//!
//! It only consumes: nothing here feeds back into the normalizer or the
//! AMI client (the live API's click-to-call goes through the client's
//! action handle, not through presence).
//!
//! * [`state`]: the vocabularies (hint bit flags, device states,
//!   registration words) and how they map to [`PresenceState`];
//! * [`table`]: one tenant's extensions, hints and calls, and the inputs;
//! * [`devices`]: the devices behind the extensions, registration, and the
//!   PBX's view of an extension;
//! * [`derive`]: the decision, evidence in, state out;
//! * [`calls`]: an extension's current calls, from the model's legs;
//! * [`event`]: the public rows and events;
//! * [`hub`]: the shared, lockable table plus a change stream (for the
//!   HTTP side), and [`task`] the daemon's presence task;
//! * [`replay`]: a capture through the same routing, for tests and
//!   `callhook replay --presence`;
//! * [`config`]: the `presence:` config section.

pub mod calls;
pub mod config;
pub mod derive;
pub mod devices;
pub mod event;
pub mod hub;
pub mod replay;
pub mod state;
pub mod table;
pub mod task;

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use crate::ami::AmiMessage;
use crate::metrics::metrics;
use crate::model::ModelEvent;
use crate::source::{PbxId, PresenceSourceEvent};

pub use config::{PresenceConfig, RawPresence};
pub use event::{
    CallPhase, ExtensionPresence, PresenceCall, PresenceEvent, StateSource, TenantSnapshot,
};
pub use hub::PresenceHub;
pub use state::PresenceState;
pub use table::TrackerConfig;

use state::DeviceState;
use table::Tenant;

fn input(kind: &str) {
    metrics().presence_inputs.with_label_values(&[kind]).inc();
}

/// The presence table of every PBX and push team.
#[derive(Debug)]
pub struct PresenceTracker {
    cx: TrackerConfig,
    tenants: HashMap<PbxId, Tenant>,
}

impl PresenceTracker {
    /// An empty tracker.
    pub fn new(cx: TrackerConfig) -> Self {
        Self {
            cx,
            tenants: HashMap::new(),
        }
    }

    /// A tracker for the daemon: the config's presence section, with the
    /// normalizer's classifier and maximum call age.
    pub fn from_config(p: &PresenceConfig, n: &crate::normalize::NormalizerConfig) -> Self {
        Self::new(TrackerConfig {
            classifier: n.classifier.clone(),
            extensions: p.extensions.clone(),
            tenant_extensions: p
                .tenants
                .iter()
                .map(|(k, v)| (k.clone(), v.extensions.clone()))
                .collect(),
            max_extensions: p.max_extensions,
            max_ringing: p.max_ringing,
            max_call_age: n.max_call_age,
        })
    }

    fn tenant<'a>(
        tenants: &'a mut HashMap<PbxId, Tenant>,
        cx: &TrackerConfig,
        pbx: PbxId,
        t: f64,
    ) -> &'a mut Tenant {
        tenants
            .entry(pbx.clone())
            .or_insert_with(|| Tenant::new(pbx, cx, t))
    }

    /// Handles one input from an AMI connection.
    pub fn handle_source(&mut self, ev: &PresenceSourceEvent, out: &mut Vec<PresenceEvent>) {
        let Self { cx, tenants } = self;
        match ev {
            PresenceSourceEvent::Ami {
                pbx,
                received_at,
                msg,
            } => {
                let ts = msg.timestamp();
                let t0 = ts.unwrap_or(*received_at);
                let tenant = Self::tenant(tenants, cx, pbx.clone(), t0);
                let t = match ts {
                    Some(ts) => {
                        tenant.observe_clock(ts, *received_at);
                        ts
                    }
                    None => tenant.pbx_time(*received_at),
                };
                apply_event(tenant, cx, msg, t, out);
            }
            PresenceSourceEvent::AmiStateList {
                pbx,
                received_at,
                action,
                response,
                items,
            } => {
                input("state_list");
                let tenant = Self::tenant(tenants, cx, pbx.clone(), *received_at);
                let t = tenant.pbx_time(*received_at);
                tenant.set_connected(true);
                apply_list(tenant, cx, action.as_deref(), response, items, t, out);
            }
            PresenceSourceEvent::AmiDisconnected { pbx, at } => {
                let tenant = Self::tenant(tenants, cx, pbx.clone(), *at);
                tenant.set_connected(false);
            }
        }
    }

    /// Handles one event of the call model (after the normalizer's commit).
    pub fn handle_model(&mut self, ev: &ModelEvent, out: &mut Vec<PresenceEvent>) {
        self.handle_models(std::iter::once(ev), out);
    }

    /// Handles a batch of model events (what one source event or one
    /// committed batch caused): each touched extension is recomputed once,
    /// at the end, so a snapshot's `ringing` + `answered` of one leg do not
    /// flash `ringing` — except before a leg's hang-up, so a call that rang
    /// and ended within one batch still shows that it rang.
    pub fn handle_models<'a>(
        &mut self,
        evs: impl IntoIterator<Item = &'a ModelEvent>,
        out: &mut Vec<PresenceEvent>,
    ) {
        let Self { cx, tenants } = self;
        let mut touched = Touched::default();
        for ev in evs {
            match ev {
                ModelEvent::Leg(l) => {
                    input("model");
                    let pbx: PbxId = l.pbx.as_str().into();
                    let tenant = Self::tenant(tenants, cx, pbx.clone(), l.at.0);
                    if l.state == crate::model::State::Hungup {
                        if let Some((ext, t)) = touched.take(&pbx, &l.extension) {
                            tenant.refresh(&ext, t, out);
                        }
                    }
                    if let Some(ext) = tenant.apply_leg(l, cx) {
                        touched.touch(&pbx, ext, l.at.0);
                    }
                }
                ModelEvent::Call(c) => {
                    let pbx: PbxId = c.pbx.as_str().into();
                    if let Some(tenant) = tenants.get_mut(&pbx) {
                        for ext in tenant.apply_call_end(&c.session_id) {
                            touched.touch(&pbx, ext, c.ended_at.0);
                        }
                    }
                }
                ModelEvent::CallState(_) => {}
            }
        }
        for (pbx, ext, t) in touched.into_order() {
            if let Some(tenant) = tenants.get_mut(&pbx) {
                tenant.refresh(&ext, t, out);
            }
        }
    }

    /// Drops calls the model never ended (see [`TrackerConfig::max_ringing`]).
    /// `now` is local epoch seconds; each tenant uses its PBX's clock.
    pub fn tick(&mut self, now: f64, out: &mut Vec<PresenceEvent>) {
        for t in self.tenants.values_mut() {
            let pbx_now = t.pbx_time(now);
            t.expire(&self.cx, pbx_now, out);
        }
    }

    /// Declares `pbx` an AMI PBX before its first event (the daemon does
    /// it for every configured PBX; replay for the replayed one): its
    /// dialing legs wait for the PBX's word on whether the phone rings.
    pub fn set_ami(&mut self, pbx: &str, now: f64) {
        let Self { cx, tenants } = self;
        Self::tenant(tenants, cx, pbx.into(), now).set_ami();
    }

    /// The table of one tenant.
    pub fn snapshot(&self, pbx: &str) -> Option<TenantSnapshot> {
        self.tenants.get(pbx).map(Tenant::snapshot)
    }

    /// One extension's row.
    pub fn extension(&self, pbx: &str, extension: &str) -> Option<ExtensionPresence> {
        self.tenants.get(pbx).and_then(|t| t.row(extension))
    }

    /// The tenants seen so far, sorted.
    pub fn tenants(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tenants.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    /// Extensions in all tables.
    pub fn extensions(&self) -> usize {
        self.tenants.values().map(Tenant::len).sum()
    }
}

/// An unsolicited presence event.
fn apply_event(
    tenant: &mut Tenant,
    cx: &TrackerConfig,
    msg: &AmiMessage,
    t: f64,
    out: &mut Vec<PresenceEvent>,
) {
    let Some(name) = msg.event() else {
        return;
    };
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    if is("ExtensionStatus") {
        input("extension_status");
        tenant.apply_hint(msg, cx, t, out);
    } else if is("DeviceStateChange") {
        input("device_state");
        apply_device_item(tenant, cx, msg, t, out);
    } else if is("PeerStatus") {
        input("registration");
        tenant.apply_peer_status(msg, cx, t, out);
    } else if is("ContactStatus") {
        input("registration");
        tenant.apply_contact(msg, cx, t, out);
    } else if is("Hold") {
        input("hold");
        let on = !msg
            .get("Status")
            .is_some_and(|s| s.eq_ignore_ascii_case("Off"));
        tenant.apply_hold(msg, on, cx, t, out);
    } else if is("Unhold") {
        input("hold");
        tenant.apply_hold(msg, false, cx, t, out);
    } else if is("PeerEntry") {
        tenant.apply_peer_entry(msg, cx, t, out);
    } else if is("EndpointList") {
        tenant.apply_endpoint(msg, cx, t, out);
    } else {
        input("other");
    }
}

fn apply_device_item(
    tenant: &mut Tenant,
    cx: &TrackerConfig,
    msg: &AmiMessage,
    t: f64,
    out: &mut Vec<PresenceEvent>,
) {
    let (Some(device), Some(state)) = (
        msg.get("Device"),
        msg.get("State").and_then(DeviceState::parse),
    ) else {
        return;
    };
    tenant.apply_device_state(device, state, cx, t, out);
}

/// The answer to a state action.
fn apply_list(
    tenant: &mut Tenant,
    cx: &TrackerConfig,
    action: Option<&str>,
    response: &AmiMessage,
    items: &[AmiMessage],
    t: f64,
    out: &mut Vec<PresenceEvent>,
) {
    // ExtensionState answers in the response itself.
    if response.has("Exten") && response.has("Status") {
        tenant.apply_hint(response, cx, t, out);
    }
    let is_ext_list = action.is_some_and(|a| a.eq_ignore_ascii_case("ExtensionStateList"))
        || (!items.is_empty()
            && items.iter().all(|m| {
                m.event()
                    .is_some_and(|e| e.eq_ignore_ascii_case("ExtensionStatus"))
            }));
    let mut listed: BTreeSet<String> = BTreeSet::new();
    for m in items {
        let Some(name) = m.event() else {
            continue;
        };
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("ExtensionStatus") {
            if let Some(e) = tenant.apply_hint(m, cx, t, out) {
                listed.insert(e);
            }
        } else if is("DeviceStateChange") {
            apply_device_item(tenant, cx, m, t, out);
        } else if is("PeerEntry") {
            tenant.apply_peer_entry(m, cx, t, out);
        } else if is("EndpointList") {
            tenant.apply_endpoint(m, cx, t, out);
        }
    }
    if is_ext_list {
        tenant.drop_hints_except(&listed, t, out);
    }
}

/// The extensions a batch of model events touched, (tenant, extension) →
/// latest time, in the order they were first touched. Constant time per
/// touch: a burst's batch holds thousands of legs on thousands of
/// extensions (a list searched per leg made a batch quadratic).
#[derive(Default)]
struct Touched {
    /// In first-touch order; `None` once taken.
    order: Vec<Option<(PbxId, String, f64)>>,
    /// Where each one is in `order`.
    at: HashMap<(PbxId, String), usize>,
}

impl Touched {
    fn touch(&mut self, pbx: &PbxId, ext: String, t: f64) {
        match self.at.entry((pbx.clone(), ext)) {
            Entry::Occupied(e) => {
                if let Some(x) = self.order.get_mut(*e.get()).and_then(Option::as_mut) {
                    x.2 = x.2.max(t);
                }
            }
            Entry::Vacant(e) => {
                let (p, ext) = e.key().clone();
                e.insert(self.order.len());
                self.order.push(Some((p, ext, t)));
            }
        }
    }

    /// Takes one out (it is refreshed now, not at the end).
    fn take(&mut self, pbx: &PbxId, ext: &str) -> Option<(String, f64)> {
        let i = self.at.remove(&(pbx.clone(), ext.to_string()))?;
        self.order
            .get_mut(i)
            .and_then(Option::take)
            .map(|(_, e, t)| (e, t))
    }

    /// What is left, in first-touch order.
    fn into_order(self) -> impl Iterator<Item = (PbxId, String, f64)> {
        self.order.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Direction, LegEvent, Role, State, Timestamp};

    fn leg(state: State, at: f64) -> ModelEvent {
        ModelEvent::Leg(LegEvent {
            session_id: "push-1".into(),
            pbx: "acme".into(),
            leg_id: "push-1/8001".into(),
            state,
            direction: Direction::Incoming,
            role: Role::Callee,
            extension: "8001".into(),
            caller_number: Some("5551234567".into()),
            caller_name: None,
            dialed_number: Some("2125550100".into()),
            queue: Some("sales".into()),
            at: Timestamp(at),
            duration: None,
            billsec: None,
            disposition: None,
            approximate: false,
            extra: Default::default(),
        })
    }

    #[test]
    fn push_teams_from_the_model_alone() {
        let mut t = PresenceTracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        for (state, at) in [
            (State::Ringing, 1.0),
            (State::Answered, 3.0),
            (State::Hungup, 9.0),
        ] {
            t.handle_model(&leg(state, at), &mut out);
        }
        let states: Vec<&str> = out.iter().map(|e| e.presence.state.as_str()).collect();
        assert_eq!(states, ["ringing", "in_use", "idle"]);
        assert_eq!(out[0].presence.calls[0].queue.as_deref(), Some("sales"));
        assert_eq!(out[2].presence.source, StateSource::Inferred);
        let seqs: Vec<u64> = out.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        let snap = t.snapshot("acme").expect("a table for the team");
        assert_eq!(snap.seq, 3);
        assert_eq!(snap.connected, None, "a push team has no AMI connection");
        assert!(t
            .extension("acme", "8001")
            .is_some_and(|r| r.calls.is_empty()));
        assert_eq!(t.tenants(), ["acme"]);
    }

    #[test]
    fn a_ringing_and_answered_leg_in_one_batch_does_not_flash_ringing() {
        // The reconnect snapshot re-creates an answered call as ringing +
        // answered in one go.
        let mut t = PresenceTracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        t.handle_models(
            &[leg(State::Ringing, 5.0), leg(State::Answered, 5.0)],
            &mut out,
        );
        let states: Vec<&str> = out.iter().map(|e| e.presence.state.as_str()).collect();
        assert_eq!(states, ["in_use"]);
        // A call that rang and ended within one batch still shows it rang.
        let mut t = PresenceTracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        t.handle_models(
            &[leg(State::Ringing, 5.0), leg(State::Hungup, 5.001)],
            &mut out,
        );
        let states: Vec<&str> = out.iter().map(|e| e.presence.state.as_str()).collect();
        assert_eq!(states, ["ringing", "idle"]);
    }

    #[test]
    fn touched_keeps_the_first_touch_order_and_the_latest_time() {
        let (a, b): (PbxId, PbxId) = ("a".into(), "b".into());
        let mut t = Touched::default();
        t.touch(&a, "1001".into(), 2.0);
        t.touch(&b, "1001".into(), 1.0);
        t.touch(&a, "1002".into(), 1.0);
        t.touch(&a, "1001".into(), 1.5);
        t.touch(&b, "1001".into(), 3.0);
        assert_eq!(t.take(&a, "1002"), Some(("1002".into(), 1.0)));
        assert_eq!(t.take(&a, "1002"), None);
        // Taken, then touched again: it comes after the others.
        t.touch(&a, "1002".into(), 4.0);
        let left: Vec<(String, String, f64)> = t
            .into_order()
            .map(|(p, e, t)| (p.to_string(), e, t))
            .collect();
        assert_eq!(
            left,
            [
                ("a".into(), "1001".into(), 2.0),
                ("b".into(), "1001".into(), 3.0),
                ("a".into(), "1002".into(), 4.0)
            ]
        );
    }
}
