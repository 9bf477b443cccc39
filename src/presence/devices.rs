//! The PBX's side of an extension: the devices behind it (its hint's, or
//! the phones named after it), their states and registration, and what the
//! PBX says about the extension as a whole ([`Tenant::pbx_view`]).
//!
//! A device is a phone (`SIP/1004`, `PJSIP/1001`: it can be registered,
//! unreachable, busy) or another state source of a hint (`Custom:DND1004`,
//! `Queue:ventas_pause_SIP/1001`). Registration comes from `PeerStatus`,
//! `SIPpeers` `PeerEntry`, `ContactStatus` (a chan_pjsip endpoint is down
//! once none of its contacts answers), `EndpointList` and the device's own
//! `UNAVAILABLE`/`INVALID`; the latest news wins, in arrival order.

use std::collections::BTreeMap;

use crate::ami::AmiMessage;
use crate::normalize::Party;

use super::derive::PbxView;
use super::event::{PresenceEvent, StateSource};
use super::state::{
    aggregate, contact_status, peer_entry_status, peer_status, ContactChange, DeviceState,
    PresenceState, Reach, Reported,
};
use super::table::{ignored, Ext, Tenant, TrackerConfig};

const MAX_CONTACTS_PER_DEVICE: usize = 32;
const MAX_HINT_DEVICES: usize = 16;

/// What is known about one device (`sip/1001`, `custom:dnd1004`).
#[derive(Debug, Clone, Default)]
pub(super) struct Device {
    /// The state and when it was reported (PBX clock).
    pub(super) state: Option<(DeviceState, f64)>,
    /// Registration / reachability, with its arrival number and time.
    pub(super) reach: Option<(Reach, u64, f64)>,
    /// chan_pjsip contacts: URI → answering.
    pub(super) contacts: BTreeMap<String, bool>,
}

/// `TECH/resource` devices that are phones (not `Custom:`, `Queue:`,
/// `Local/`, parking, …).
pub(super) fn is_phone_device(key: &str) -> bool {
    match key.split_once('/') {
        Some((tech, rest)) => {
            !tech.is_empty() && !rest.is_empty() && !tech.contains(':') && tech != "local"
        }
        None => false,
    }
}

/// `SIP/1004&Custom:DND1004,CustomPresence:1004` → `[sip/1004, custom:dnd1004]`.
pub(super) fn hint_devices(hint: &str) -> Vec<String> {
    let devices = hint.split(',').next().unwrap_or("");
    let mut out: Vec<String> = Vec::new();
    for d in devices.split('&') {
        let d = d.trim().to_ascii_lowercase();
        if !d.is_empty() && !out.contains(&d) && out.len() < MAX_HINT_DEVICES {
            out.push(d);
        }
    }
    out
}

impl Tenant {
    pub(super) fn device(&mut self, key: &str, cx: &TrackerConfig) -> Option<&mut Device> {
        if !self.devices.contains_key(key) {
            if self.devices.len() >= cx.max_extensions.saturating_mul(4) {
                ignored("table_full");
                return None;
            }
            self.devices.insert(key.to_string(), Device::default());
        }
        self.devices.get_mut(key)
    }

    /// The extensions a device belongs to: those whose hint names it, else
    /// (a phone device) the extension it is named after, learnt if new.
    /// `key` is `name` in lower case.
    pub(super) fn device_owners(
        &mut self,
        key: &str,
        name: &str,
        cx: &TrackerConfig,
        t: f64,
    ) -> Vec<String> {
        if let Some(h) = self.hinted.get(key) {
            if !h.is_empty() {
                return h.clone();
            }
        }
        if !is_phone_device(key) {
            return Vec::new();
        }
        let Party::Extension(e) = cx.classifier.classify(name, None) else {
            return Vec::new();
        };
        let e = e.to_string();
        if !self.ensure(&e, false, cx, t) {
            return Vec::new();
        }
        if let Some(x) = self.exts.get_mut(&e) {
            x.own_devices.insert(key.to_string());
        }
        vec![e]
    }

    /// A device's state (`DeviceStateChange`, list items, `EndpointList`).
    pub fn apply_device_state(
        &mut self,
        name: &str,
        state: DeviceState,
        cx: &TrackerConfig,
        t: f64,
        out: &mut Vec<PresenceEvent>,
    ) {
        let name = name.trim();
        let key = name.to_ascii_lowercase();
        if key.is_empty() {
            return;
        }
        let owners = self.device_owners(&key, name, cx, t);
        if owners.is_empty() {
            // Queue pause pseudo-devices, trunks, unhinted custom states.
            return;
        }
        let seq = self.next_evidence();
        let Some(d) = self.device(&key, cx) else {
            return;
        };
        d.state = Some((state, t));
        if let Some(r) = state.reach() {
            d.reach = Some((r, seq, t));
        }
        for o in owners {
            self.refresh(&o, t, out);
        }
    }

    /// A registration change of a device.
    pub fn apply_reach(
        &mut self,
        name: &str,
        reach: Option<Reach>,
        cx: &TrackerConfig,
        t: f64,
        out: &mut Vec<PresenceEvent>,
    ) {
        let name = name.trim();
        let key = name.to_ascii_lowercase();
        let owners = self.device_owners(&key, name, cx, t);
        if owners.is_empty() {
            return;
        }
        let seq = self.next_evidence();
        let Some(d) = self.device(&key, cx) else {
            return;
        };
        if let Some(r) = reach {
            d.reach = Some((r, seq, t));
        }
        for o in owners {
            self.refresh(&o, t, out);
        }
    }

    /// `PeerStatus` (chan_sip, IAX2).
    pub fn apply_peer_status(
        &mut self,
        m: &AmiMessage,
        cx: &TrackerConfig,
        t: f64,
        out: &mut Vec<PresenceEvent>,
    ) {
        let Some(peer) = m.get("Peer").map(str::trim).filter(|p| !p.is_empty()) else {
            return;
        };
        let key = if peer.contains('/') {
            peer.to_string()
        } else {
            format!("{}/{peer}", m.get("ChannelType").unwrap_or("SIP"))
        };
        let reach = m.get("PeerStatus").and_then(peer_status);
        self.apply_reach(&key, reach, cx, t, out);
    }

    /// A `PeerEntry` of `SIPpeers` / `IAXpeers`.
    pub fn apply_peer_entry(
        &mut self,
        m: &AmiMessage,
        cx: &TrackerConfig,
        t: f64,
        out: &mut Vec<PresenceEvent>,
    ) {
        let Some(name) = m.get("ObjectName").map(str::trim).filter(|p| !p.is_empty()) else {
            return;
        };
        let tech = m.get("Channeltype").unwrap_or("SIP");
        let reach = m.get("Status").and_then(peer_entry_status);
        self.apply_reach(&format!("{tech}/{name}"), reach, cx, t, out);
    }

    /// An `EndpointList` item of `PJSIPShowEndpoints`.
    pub fn apply_endpoint(
        &mut self,
        m: &AmiMessage,
        cx: &TrackerConfig,
        t: f64,
        out: &mut Vec<PresenceEvent>,
    ) {
        let Some(name) = m.get("ObjectName").map(str::trim).filter(|p| !p.is_empty()) else {
            return;
        };
        let key = format!("PJSIP/{name}");
        match m.get("DeviceState").and_then(DeviceState::parse) {
            Some(s) => self.apply_device_state(&key, s, cx, t, out),
            None => self.apply_reach(&key, None, cx, t, out),
        }
    }

    /// `ContactStatus` (chan_pjsip): the endpoint is down once none of its
    /// contacts answers.
    pub fn apply_contact(
        &mut self,
        m: &AmiMessage,
        cx: &TrackerConfig,
        t: f64,
        out: &mut Vec<PresenceEvent>,
    ) {
        let Some(endpoint) = m
            .get("EndpointName")
            .or_else(|| m.get("AOR"))
            .map(str::trim)
            .filter(|p| !p.is_empty())
        else {
            return;
        };
        let change = m
            .get("ContactStatus")
            .map_or(ContactChange::Unknown, contact_status);
        if change == ContactChange::Unknown {
            return;
        }
        let name = format!("PJSIP/{endpoint}");
        let key = name.to_ascii_lowercase();
        let owners = self.device_owners(&key, &name, cx, t);
        if owners.is_empty() {
            return;
        }
        let uri = m.get("URI").unwrap_or("").to_string();
        let seq = self.next_evidence();
        let Some(d) = self.device(&key, cx) else {
            return;
        };
        match change {
            ContactChange::Removed => {
                d.contacts.remove(&uri);
            }
            ContactChange::Up | ContactChange::Down => {
                if d.contacts.len() < MAX_CONTACTS_PER_DEVICE || d.contacts.contains_key(&uri) {
                    d.contacts.insert(uri, change == ContactChange::Up);
                }
            }
            ContactChange::Unknown => {}
        }
        let up = d.contacts.values().any(|v| *v);
        d.reach = Some((if up { Reach::Up } else { Reach::Down }, seq, t));
        for o in owners {
            self.refresh(&o, t, out);
        }
    }

    /// The PBX's view of one extension (hint, devices, registration).
    pub(super) fn pbx_view(&self, x: &Ext) -> (PbxView, Option<bool>) {
        let hint_phones: Vec<&String> = x
            .hint
            .iter()
            .flat_map(|h| h.devices.iter())
            .filter(|d| is_phone_device(d))
            .collect();
        let phones: Vec<&String> = if hint_phones.is_empty() {
            x.own_devices.iter().collect()
        } else {
            hint_phones
        };
        let reaches: Vec<Option<(Reach, u64, f64)>> = phones
            .iter()
            .map(|d| self.devices.get(*d).and_then(|d| d.reach))
            .collect();
        let all_down = !reaches.is_empty()
            && reaches
                .iter()
                .all(|r| matches!(r, Some((Reach::Down, _, _))));
        let registered = if all_down {
            Some(false)
        } else if reaches.iter().any(|r| matches!(r, Some((Reach::Up, _, _)))) {
            Some(true)
        } else {
            None
        };
        if all_down {
            let last = reaches.iter().flatten().max_by_key(|r| r.1);
            let (down_seq, down_at) = last.map_or((0, 0.0), |r| (r.1, r.2));
            if x.hint.as_ref().is_none_or(|h| h.seq < down_seq) {
                return (
                    Some((
                        Reported::plain(PresenceState::Unavailable),
                        StateSource::Registration,
                        down_at,
                    )),
                    registered,
                );
            }
        }
        let phone_states: Vec<(DeviceState, f64)> = phones
            .iter()
            .filter_map(|d| self.devices.get(*d).and_then(|d| d.state))
            .collect();
        let phone_engaged = phone_states.iter().any(|(s, _)| {
            matches!(
                s,
                DeviceState::Busy
                    | DeviceState::InUse
                    | DeviceState::RingInUse
                    | DeviceState::OnHold
            )
        });
        if let Some(h) = &x.hint {
            let mut r = h.reported;
            // Busy from a hint of phones only, or while a phone of the
            // hint is engaged, is the phone on a call (busy tone, call
            // limit): in use. Busy that can only come from another device
            // of the hint (a DND custom state) is busy.
            let only_phones = h.devices.iter().all(|d| is_phone_device(d));
            if r.state == PresenceState::Busy && (only_phones || phone_engaged) {
                r.state = PresenceState::InUse;
            }
            return (Some((r, StateSource::Hint, h.at)), registered);
        }
        let at = phone_states.iter().map(|s| s.1).fold(f64::MIN, f64::max);
        let view = aggregate(phone_states.iter().map(|s| s.0)).map(|s| {
            let mut r = s.reported();
            if r.state == PresenceState::Busy {
                // A phone device is busy when it is engaged on calls.
                r.state = PresenceState::InUse;
            }
            (r, StateSource::Device, at)
        });
        (view, registered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_of_a_hint() {
        assert_eq!(
            hint_devices("SIP/1004&Custom:DND1004,CustomPresence:1004"),
            ["sip/1004", "custom:dnd1004"]
        );
        assert_eq!(hint_devices(""), Vec::<String>::new());
        assert_eq!(hint_devices("PJSIP/1001&PJSIP/1001"), ["pjsip/1001"]);
        let many = vec!["SIP/1"; 100].join("&");
        assert_eq!(hint_devices(&many).len(), 1);
        assert!(is_phone_device("sip/1001"));
        assert!(is_phone_device("pjsip/my-phone"));
        assert!(!is_phone_device("custom:dnd1004"));
        assert!(!is_phone_device("queue:ventas_pause_sip/1001"));
        assert!(!is_phone_device("local/1001@from-queue"));
        assert!(!is_phone_device("sip/"));
    }
}
