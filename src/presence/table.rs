//! One tenant's table: extensions, the devices behind them, their calls,
//! and the inputs that change them.
//!
//! **Which extensions exist** is learnt: from hints (`ExtensionStatus` /
//! `ExtensionStateList` items whose `Exten` the classifier calls an
//! extension, e.g. not FreePBX's `*761001` DND hints), from phone devices
//! and peers (`SIP/1004` → `1004`, `EndpointList` `1001`), from the call
//! model's legs, and from the config (listed from the start, state
//! `unknown`). Each extension's **devices** are those of its hint
//! (`SIP/1004&Custom:DND1004`), else the phone devices named after it.
//!
//! **Ordering of PBX evidence.** Hint and registration changes are
//! numbered in arrival order (list answers carry no `Timestamp`): when all
//! the phones of an extension are down (unregistered, unreachable,
//! `UNAVAILABLE`) *after* its hint last changed, the extension is
//! `unavailable` even though the hint still says `Idle` — a DND custom
//! device state in the hint masks an unregistered phone that way.
//!
//! Bounded: extensions per tenant ([`TrackerConfig::max_extensions`]),
//! devices (4× that), calls and held sessions per extension, contacts per
//! device. Inputs past a bound are counted and ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tracing::warn;

use crate::ami::AmiMessage;
use crate::metrics::metrics;
use crate::model::{LegEvent, State, Timestamp};
use crate::normalize::{Classifier, Party};

use super::calls::LiveCall;
use super::config::valid_extension;
use super::derive::{derive, Evidence};
use super::devices::{hint_devices, Device};
use super::event::{ExtensionPresence, PresenceCall, PresenceEvent, StateSource, TenantSnapshot};
use super::state::{hint_state, PresenceState, Reported};

/// Settings shared by every tenant.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Extension vs trunk (the normalizer's classifier).
    pub classifier: Classifier,
    /// Configured extensions: for every tenant (`extensions`) and per tenant.
    pub extensions: Vec<String>,
    /// Per-tenant configured extensions.
    pub tenant_extensions: BTreeMap<String, Vec<String>>,
    /// Most extensions per tenant.
    pub max_extensions: usize,
    /// Seconds after which a ringing leg with no news is dropped.
    pub max_ringing: f64,
    /// Seconds after which any leg is dropped (the model's maximum call age).
    pub max_call_age: f64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            classifier: Classifier::default(),
            extensions: Vec::new(),
            tenant_extensions: BTreeMap::new(),
            max_extensions: 10_000,
            max_ringing: 600.0,
            max_call_age: 4.0 * 3600.0,
        }
    }
}

const MAX_CALLS_PER_EXTENSION: usize = 64;
const MAX_HELD_SESSIONS: usize = 16;

pub(super) fn ignored(reason: &str) {
    metrics()
        .presence_ignored
        .with_label_values(&[reason])
        .inc();
}

/// A hint as the PBX last reported it.
#[derive(Debug, Clone)]
pub(super) struct Hint {
    pub(super) text: String,
    pub(super) reported: Reported,
    /// Arrival number of the report.
    pub(super) seq: u64,
    /// When it was reported (PBX clock).
    pub(super) at: f64,
    /// Device keys (lower case), in hint order.
    pub(super) devices: Vec<String>,
}

#[derive(Debug, Clone)]
pub(super) struct Ext {
    pub(super) hint: Option<Hint>,
    /// Phone devices named after the extension (used without a hint).
    pub(super) own_devices: BTreeSet<String>,
    calls: BTreeMap<String, LiveCall>,
    held: VecDeque<String>,
    had_calls: bool,
    row: ExtensionPresence,
}

impl Ext {
    fn new(name: &str, t: f64) -> Self {
        Self {
            hint: None,
            own_devices: BTreeSet::new(),
            calls: BTreeMap::new(),
            held: VecDeque::new(),
            had_calls: false,
            row: ExtensionPresence {
                extension: name.to_string(),
                state: PresenceState::Unknown,
                call_waiting: false,
                since: Timestamp(t),
                source: StateSource::None,
                registered: None,
                hint: None,
                calls: Vec::new(),
            },
        }
    }
}

/// One tenant (a PBX or a push team).
#[derive(Debug)]
pub(crate) struct Tenant {
    id: Arc<str>,
    /// An AMI PBX (it reports extension states), not a push team.
    ami: bool,
    /// Latest time seen (PBX clock).
    now: f64,
    seq: u64,
    connected: Option<bool>,
    /// Arrival counter of PBX evidence.
    evidence: u64,
    /// PBX clock minus local clock, from the last `Timestamp` seen.
    offset: f64,
    pub(super) exts: BTreeMap<String, Ext>,
    pub(super) devices: HashMap<String, Device>,
    /// Device key → extensions whose hint names it.
    pub(super) hinted: HashMap<String, Vec<String>>,
    /// Session id → extensions with a call of it.
    sessions: HashMap<String, BTreeSet<String>>,
}

impl Tenant {
    pub fn new(id: Arc<str>, cx: &TrackerConfig, t: f64) -> Self {
        let mut me = Self {
            id,
            ami: false,
            now: t,
            seq: 0,
            connected: None,
            evidence: 0,
            offset: 0.0,
            exts: BTreeMap::new(),
            devices: HashMap::new(),
            hinted: HashMap::new(),
            sessions: HashMap::new(),
        };
        let extra = cx
            .tenant_extensions
            .get(&*me.id)
            .cloned()
            .unwrap_or_default();
        for e in cx.extensions.iter().chain(extra.iter()) {
            me.ensure(e, true, cx, t);
        }
        me
    }

    /// PBX time of a local time (epoch seconds).
    pub fn pbx_time(&self, local: f64) -> f64 {
        local + self.offset
    }

    /// Learns the clock offset from an event's `Timestamp`.
    pub fn observe_clock(&mut self, ts: f64, received_at: f64) {
        if ts.is_finite() && received_at.is_finite() && received_at > 0.0 {
            self.offset = ts - received_at;
        }
    }

    pub(super) fn next_evidence(&mut self) -> u64 {
        self.evidence += 1;
        self.evidence
    }

    /// The extension's entry, created when allowed (configured, or the
    /// classifier calls it an extension) and the table has room.
    pub(super) fn ensure(&mut self, name: &str, force: bool, cx: &TrackerConfig, t: f64) -> bool {
        if self.exts.contains_key(name) {
            return true;
        }
        if !valid_extension(name) {
            ignored("bad_extension");
            return false;
        }
        if !force && !cx.classifier.is_extension_number(name) {
            return false;
        }
        if self.exts.len() >= cx.max_extensions {
            ignored("table_full");
            if self.exts.len() == cx.max_extensions {
                warn!(pbx = %self.id, max = cx.max_extensions, "presence table full: further extensions are ignored (presence.max_extensions)");
            }
            return false;
        }
        self.exts.insert(name.to_string(), Ext::new(name, t));
        metrics().presence_extensions.inc();
        true
    }

    // ----- inputs -------------------------------------------------------

    /// An `ExtensionStatus` (event or list item) or an `ExtensionState`
    /// answer. Returns the extension when it is in the table.
    pub fn apply_hint(
        &mut self,
        m: &AmiMessage,
        cx: &TrackerConfig,
        t: f64,
        out: &mut Vec<PresenceEvent>,
    ) -> Option<String> {
        let exten = m.get("Exten").map(str::trim).filter(|e| !e.is_empty())?;
        let Some(reported) = hint_state(m.get("Status"), m.get("StatusText")) else {
            ignored("bad_status");
            return None;
        };
        let known = self.exts.contains_key(exten);
        if !known && reported.state == PresenceState::Unknown {
            // "No such hint" for an extension we do not track.
            return None;
        }
        if !self.ensure(exten, false, cx, t) {
            return None;
        }
        let exten = exten.to_string();
        let text = m.get("Hint").unwrap_or("").trim().to_string();
        let seq = self.next_evidence();
        let devices = hint_devices(&text);
        let old = self
            .exts
            .get(&exten)
            .and_then(|x| x.hint.as_ref())
            .map(|h| h.devices.clone())
            .unwrap_or_default();
        if old != devices {
            self.unindex_hint(&exten, &old);
            for d in &devices {
                let owners = self.hinted.entry(d.clone()).or_default();
                if !owners.contains(&exten) {
                    owners.push(exten.clone());
                }
            }
        }
        if let Some(x) = self.exts.get_mut(&exten) {
            x.hint = Some(Hint {
                text,
                reported,
                seq,
                at: t,
                devices,
            });
        }
        self.refresh(&exten, t, out);
        Some(exten)
    }

    fn unindex_hint(&mut self, exten: &str, devices: &[String]) {
        for d in devices {
            if let Some(owners) = self.hinted.get_mut(d) {
                owners.retain(|o| o != exten);
                if owners.is_empty() {
                    self.hinted.remove(d);
                }
            }
        }
    }

    /// The PBX no longer lists a hint for these extensions
    /// (`ExtensionStateList` answered without them).
    pub fn drop_hints_except(
        &mut self,
        keep: &BTreeSet<String>,
        t: f64,
        out: &mut Vec<PresenceEvent>,
    ) {
        let gone: Vec<String> = self
            .exts
            .iter()
            .filter(|(name, x)| x.hint.is_some() && !keep.contains(*name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let old = self
                .exts
                .get_mut(&name)
                .and_then(|x| x.hint.take())
                .map(|h| h.devices)
                .unwrap_or_default();
            self.unindex_hint(&name, &old);
            self.refresh(&name, t, out);
        }
    }

    /// `Hold` / `Unhold` (12+), or ≤ 11's `Hold` with `Status: On|Off`, on
    /// the channel of the extension that put the call on hold.
    pub fn apply_hold(
        &mut self,
        m: &AmiMessage,
        on: bool,
        cx: &TrackerConfig,
        t: f64,
        out: &mut Vec<PresenceEvent>,
    ) {
        let Some(channel) = m.get("Channel") else {
            return;
        };
        let Party::Extension(e) = cx.classifier.classify(channel, None) else {
            return;
        };
        let e = e.to_string();
        let Some(x) = self.exts.get_mut(&e) else {
            return;
        };
        let sessions: Vec<String> = match m.get("Linkedid").filter(|l| !l.is_empty()) {
            Some(l) => vec![l.to_string()],
            // ≤ 11: no call id on the event; every answered call of the extension.
            None => x
                .calls
                .values()
                .filter(|c| c.answered())
                .map(|c| c.session_id.clone())
                .collect(),
        };
        for s in sessions {
            x.held.retain(|h| *h != s);
            if on {
                if x.held.len() >= MAX_HELD_SESSIONS {
                    x.held.pop_front();
                }
                x.held.push_back(s);
            }
        }
        self.refresh(&e, t, out);
    }

    /// A leg of the call model; returns the extension to refresh.
    pub fn apply_leg(&mut self, l: &LegEvent, cx: &TrackerConfig) -> Option<String> {
        let t = l.at.0;
        if !self.ensure(&l.extension, true, cx, t) {
            return None;
        }
        let x = self.exts.get_mut(&l.extension)?;
        x.had_calls = true;
        match l.state {
            State::Ringing | State::Answered => {
                if let Some(c) = x.calls.get_mut(&l.leg_id) {
                    c.update(l);
                } else if x.calls.len() < MAX_CALLS_PER_EXTENSION {
                    x.calls.insert(l.leg_id.clone(), LiveCall::new(l));
                    self.sessions
                        .entry(l.session_id.clone())
                        .or_default()
                        .insert(l.extension.clone());
                } else {
                    ignored("too_many_calls");
                    return None;
                }
            }
            State::Hungup => {
                x.calls.remove(&l.leg_id);
                self.forget_session_if_done(&l.extension, &l.session_id);
            }
        }
        Some(l.extension.clone())
    }

    fn forget_session_if_done(&mut self, ext: &str, session: &str) {
        let Some(x) = self.exts.get_mut(ext) else {
            return;
        };
        if x.calls.values().any(|c| c.session_id == session) {
            return;
        }
        x.held.retain(|h| h != session);
        if let Some(s) = self.sessions.get_mut(session) {
            s.remove(ext);
            if s.is_empty() {
                self.sessions.remove(session);
            }
        }
    }

    /// The call is over (its record): whatever legs of it are left go.
    /// Returns the extensions to refresh.
    pub fn apply_call_end(&mut self, session: &str) -> Vec<String> {
        let Some(exts) = self.sessions.remove(session) else {
            return Vec::new();
        };
        let mut touched = Vec::new();
        for e in exts {
            if let Some(x) = self.exts.get_mut(&e) {
                let before = x.calls.len();
                x.calls.retain(|_, c| c.session_id != session);
                x.held.retain(|h| h != session);
                if x.calls.len() != before {
                    touched.push(e);
                }
            }
        }
        touched
    }

    /// Drops legs the model never ended: ringing ones after `max_ringing`
    /// without news, any after `max_call_age`. `now` is PBX time.
    pub fn expire(&mut self, cx: &TrackerConfig, now: f64, out: &mut Vec<PresenceEvent>) {
        let mut touched: Vec<(String, String)> = Vec::new();
        for (name, x) in &mut self.exts {
            x.calls.retain(|_, c| {
                let stale = (c.state == State::Ringing && now - c.updated > cx.max_ringing)
                    || now - c.since > cx.max_call_age;
                if stale {
                    touched.push((name.clone(), c.session_id.clone()));
                }
                !stale
            });
        }
        for (name, session) in touched {
            metrics().presence_calls_expired.inc();
            self.forget_session_if_done(&name, &session);
            self.refresh(&name, now, out);
        }
        // Dialing legs whose grace ran out without a word from the PBX.
        let dialing: Vec<String> = self
            .exts
            .iter()
            .filter(|(_, x)| {
                x.calls
                    .values()
                    .any(|c| c.state == State::Ringing && c.role == crate::model::Role::Caller)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in dialing {
            self.refresh(&name, now, out);
        }
    }

    /// The AMI connection was lost (or is back): states stay as last known.
    pub fn set_connected(&mut self, c: bool) {
        self.connected = Some(c);
        self.ami = true;
    }

    /// This tenant is an AMI PBX (dialing legs wait for its word).
    pub fn set_ami(&mut self) {
        self.ami = true;
    }

    // ----- derivation ---------------------------------------------------

    /// Recomputes one extension's row; emits an event when its state, call
    /// waiting or calls changed.
    pub fn refresh(&mut self, name: &str, t: f64, out: &mut Vec<PresenceEvent>) {
        if t.is_finite() && t > self.now {
            self.now = t;
        }
        let Some(x) = self.exts.get(name) else {
            return;
        };
        let (pbx, registered) = self.pbx_view(x);
        let (reported, source) = derive(&Evidence {
            calls: &x.calls,
            held: &x.held,
            pbx,
            had_calls: x.had_calls,
            confirm_dialing: self.ami,
            now: self.now,
        });
        let mut live: Vec<&LiveCall> = x.calls.values().collect();
        live.sort_by(|a, b| a.since.total_cmp(&b.since));
        let held = |c: &LiveCall| x.held.iter().any(|h| *h == c.session_id);
        // Most refreshes change nothing: the views (and the hint) are only
        // built when they differ from the row's.
        let same_calls = x.row.calls.len() == live.len()
            && live
                .iter()
                .zip(&x.row.calls)
                .all(|(c, v)| c.shows_as(held(c), v));
        let calls: Option<Vec<PresenceCall>> =
            (!same_calls).then(|| live.iter().map(|c| c.view(held(c))).collect());
        let hint_text = x.hint.as_ref().map(|h| h.text.as_str());
        let hint = (x.row.hint.as_deref() != hint_text).then(|| hint_text.map(str::to_string));
        let id = self.id.clone();
        let Some(x) = self.exts.get_mut(name) else {
            return;
        };
        let row = &mut x.row;
        row.registered = registered;
        if let Some(hint) = hint {
            row.hint = hint;
        }
        row.source = source;
        let state_changed =
            row.state != reported.state || row.call_waiting != reported.call_waiting;
        if !state_changed && calls.is_none() {
            return;
        }
        let previous = row.state;
        let previous_call_waiting = row.call_waiting;
        if state_changed {
            row.since = Timestamp(t);
            metrics()
                .presence_changes
                .with_label_values(&[reported.state.as_str()])
                .inc();
        }
        row.state = reported.state;
        row.call_waiting = reported.call_waiting;
        if let Some(calls) = calls {
            row.calls = calls;
        }
        self.seq += 1;
        out.push(PresenceEvent {
            pbx: id.to_string(),
            seq: self.seq,
            at: Timestamp(t),
            previous,
            previous_call_waiting,
            presence: row.clone(),
        });
    }

    // ----- reads --------------------------------------------------------

    /// The whole table.
    pub fn snapshot(&self) -> TenantSnapshot {
        TenantSnapshot {
            pbx: self.id.to_string(),
            seq: self.seq,
            connected: self.connected,
            extensions: self.exts.values().map(|x| x.row.clone()).collect(),
        }
    }

    /// One row.
    pub fn row(&self, ext: &str) -> Option<ExtensionPresence> {
        self.exts.get(ext).map(|x| x.row.clone())
    }

    /// Extensions in the table.
    pub fn len(&self) -> usize {
        self.exts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::state::DeviceState;

    fn msg(pairs: &[(&str, &str)]) -> AmiMessage {
        AmiMessage::from_pairs(pairs.iter().copied())
    }

    fn tenant() -> (Tenant, TrackerConfig) {
        let cx = TrackerConfig {
            extensions: vec!["2001".into()],
            ..TrackerConfig::default()
        };
        (Tenant::new("t".into(), &cx, 1.0), cx)
    }

    fn hint(t: &mut Tenant, cx: &TrackerConfig, exten: &str, hint: &str, status: &str, at: f64) {
        let m = msg(&[
            ("Event", "ExtensionStatus"),
            ("Exten", exten),
            ("Hint", hint),
            ("Status", status),
        ]);
        t.apply_hint(&m, cx, at, &mut Vec::new());
    }

    fn state(t: &Tenant, ext: &str) -> PresenceState {
        t.row(ext).map_or(PresenceState::Unknown, |r| r.state)
    }

    #[test]
    fn configured_and_learnt_extensions() {
        let (mut t, cx) = tenant();
        assert_eq!(state(&t, "2001"), PresenceState::Unknown);
        // FreePBX DND hints are not extensions; a number-like one is.
        hint(&mut t, &cx, "*761001", "Custom:DND1001", "0", 2.0);
        hint(&mut t, &cx, "1001", "SIP/1001", "0", 2.0);
        assert!(t.row("*761001").is_none());
        assert_eq!(state(&t, "1001"), PresenceState::Idle);
        // "No such hint" does not create one.
        hint(&mut t, &cx, "1099", "", "-1", 2.0);
        assert!(t.row("1099").is_none());
        // Peers and phone devices do; trunks and queue pseudo-devices do not.
        let mut out = Vec::new();
        t.apply_peer_entry(
            &msg(&[
                ("ObjectName", "1005"),
                ("Channeltype", "SIP"),
                ("Status", "OK (5 ms)"),
            ]),
            &cx,
            3.0,
            &mut out,
        );
        t.apply_peer_entry(&msg(&[("ObjectName", "pstn")]), &cx, 3.0, &mut out);
        t.apply_device_state(
            "Queue:ventas_pause_SIP/1001",
            DeviceState::InUse,
            &cx,
            3.0,
            &mut out,
        );
        assert_eq!(t.row("1005").and_then(|r| r.registered), Some(true));
        assert!(t.row("pstn").is_none());
        assert_eq!(
            state(&t, "1001"),
            PresenceState::Idle,
            "a queue pause is not presence"
        );
    }

    #[test]
    fn registration_masks_a_dnd_hint() {
        let (mut t, cx) = tenant();
        hint(&mut t, &cx, "1004", "SIP/1004&Custom:DND1004", "0", 2.0);
        let mut out = Vec::new();
        t.apply_peer_status(
            &msg(&[("Peer", "SIP/1004"), ("PeerStatus", "Unregistered")]),
            &cx,
            3.0,
            &mut out,
        );
        assert_eq!(state(&t, "1004"), PresenceState::Unavailable);
        // A newer hint report decides again.
        hint(&mut t, &cx, "1004", "SIP/1004&Custom:DND1004", "2", 4.0);
        assert_eq!(
            state(&t, "1004"),
            PresenceState::Busy,
            "DND from the custom device"
        );
        t.apply_peer_status(
            &msg(&[("Peer", "SIP/1004"), ("PeerStatus", "Registered")]),
            &cx,
            5.0,
            &mut out,
        );
        assert_eq!(state(&t, "1004"), PresenceState::Busy);
    }

    #[test]
    fn a_busy_phone_is_in_use() {
        let (mut t, cx) = tenant();
        // A hint of phones only: busy = the phone is engaged (busy tone).
        hint(&mut t, &cx, "1001", "PJSIP/1001", "2", 2.0);
        assert_eq!(state(&t, "1001"), PresenceState::InUse);
        // A DND hint whose phone is in use: in use.
        let mut out = Vec::new();
        t.apply_device_state("SIP/1004", DeviceState::InUse, &cx, 2.0, &mut out);
        hint(&mut t, &cx, "1004", "SIP/1004&Custom:DND1004", "2", 3.0);
        assert_eq!(state(&t, "1004"), PresenceState::InUse);
    }

    #[test]
    fn pjsip_contacts() {
        let (mut t, cx) = tenant();
        let mut out = Vec::new();
        let c = |uri: &str, st: &str| {
            msg(&[
                ("Event", "ContactStatus"),
                ("URI", uri),
                ("ContactStatus", st),
                ("AOR", "1001"),
                ("EndpointName", "1001"),
            ])
        };
        t.apply_contact(&c("sip:a", "Created"), &cx, 1.0, &mut out);
        t.apply_contact(&c("sip:b", "Created"), &cx, 1.0, &mut out);
        assert_eq!(t.row("1001").and_then(|r| r.registered), Some(true));
        t.apply_contact(&c("sip:a", "Removed"), &cx, 2.0, &mut out);
        assert_eq!(
            t.row("1001").and_then(|r| r.registered),
            Some(true),
            "b is left"
        );
        t.apply_contact(&c("sip:b", "Unreachable"), &cx, 3.0, &mut out);
        assert_eq!(state(&t, "1001"), PresenceState::Unavailable);
        t.apply_contact(&c("sip:b", "Reachable"), &cx, 4.0, &mut out);
        assert_eq!(t.row("1001").and_then(|r| r.registered), Some(true));
    }

    #[test]
    fn bounded() {
        let cx = TrackerConfig {
            max_extensions: 3,
            ..TrackerConfig::default()
        };
        let mut t = Tenant::new("t".into(), &cx, 1.0);
        for i in 0..10 {
            hint(&mut t, &cx, &format!("10{i:02}"), "", "0", 1.0);
        }
        assert_eq!(t.len(), 3);
        // Hostile names never enter the table.
        hint(&mut t, &cx, "10\u{0}1", "", "0", 1.0);
        assert_eq!(t.len(), 3);
    }
}
