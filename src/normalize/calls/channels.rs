//! The channel table: every live channel of one PBX, by Uniqueid and by
//! name, and the tombstones of finished ones.

use super::call::Call;
use super::{meaningful_exten, push_exact, PbxCalls, Str};
use crate::normalize::canonical::{ChanInfo, ChanRef, ChanState};
use crate::normalize::channel::Party;
use crate::normalize::NormalizerConfig;
use compact_str::ToCompactString;

/// One channel as the normalizer knows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Chan {
    pub(super) uid: Str,
    pub(super) name: Str,
    pub(super) party: Party,
    /// Party when created: a masquerade may later rename the channel.
    pub(super) party_at_create: Party,
    pub(super) call: Str,
    pub(super) created_at: f64,
    pub(super) state: ChanState,
    /// Caller id at creation (the phone's own identity for extensions).
    pub(super) first_caller_num: Option<Str>,
    pub(super) first_caller_name: Option<Str>,
    /// Current caller id (Newchannel, NewCallerid).
    pub(super) caller_num: Option<Str>,
    pub(super) caller_name: Option<Str>,
    pub(super) connected_num: Option<Str>,
    /// The first dialplan extension that means something (not `s`/`h`).
    pub(super) first_exten: Option<Str>,
    /// Has a Linkedid (Asterisk 12+): grouping is the PBX's.
    pub(super) linked: bool,
    /// ≤ 11: tied to another channel by the stream.
    pub(super) tied: bool,
    /// Offered the call (dialed, called by a queue, rung by Originate).
    pub(super) offered: bool,
    /// For a Local `;1` half that was offered: the extension it stands for.
    pub(super) offered_ext: Option<Str>,
    pub(super) up_at: Option<f64>,
    pub(super) hungup_at: Option<f64>,
    /// Strongest dial outcome for this channel as a destination.
    pub(super) dial_status: Option<Str>,
    pub(super) cause: Option<u16>,
    /// ≤ 11: masqueraded away (its device went into another channel); it
    /// only waits for its hangup.
    pub(super) zombie: bool,
}

impl Chan {
    pub(super) fn live(&self) -> bool {
        self.hungup_at.is_none()
    }

    /// A ≤ 11 masquerade moved the devices behind the two channels: what
    /// is known about each device swaps (the channels keep their Uniqueid,
    /// call, grouping facts, whether the call was offered to them, and
    /// their hangup).
    pub(super) fn swap_device(&mut self, other: &mut Chan) {
        use std::mem::swap;
        swap(&mut self.party, &mut other.party);
        swap(&mut self.party_at_create, &mut other.party_at_create);
        swap(&mut self.created_at, &mut other.created_at);
        swap(&mut self.state, &mut other.state);
        swap(&mut self.first_caller_num, &mut other.first_caller_num);
        swap(&mut self.first_caller_name, &mut other.first_caller_name);
        swap(&mut self.caller_num, &mut other.caller_num);
        swap(&mut self.caller_name, &mut other.caller_name);
        swap(&mut self.connected_num, &mut other.connected_num);
        swap(&mut self.first_exten, &mut other.first_exten);
        swap(&mut self.up_at, &mut other.up_at);
        swap(&mut self.dial_status, &mut other.dial_status);
    }
}

impl PbxCalls {
    /// A new channel of `session` would go past `calls.max_live` (calls, or
    /// four times as many channels): counted, warned about, not created.
    fn at_capacity(&self, cfg: &NormalizerConfig, session: &str) -> bool {
        let calls_full =
            self.calls.len() >= cfg.max_live_calls && !self.calls.contains_key(session);
        let chans_full = self.chans.len() >= cfg.max_live_calls.saturating_mul(4);
        if !(calls_full || chans_full) {
            return false;
        }
        super::refused_at_capacity(
            &self.pbx,
            self.calls.len(),
            cfg.max_live_calls,
            "a new call's events are ignored",
        );
        true
    }

    pub(super) fn resolve(&self, r: &ChanRef<'_>) -> Option<Str> {
        if let Some(uid) = r.uid {
            if self.chans.contains_key(uid) {
                return Some(uid.to_compact_string());
            }
        }
        r.name.and_then(|n| self.by_name.get(n).cloned())
    }

    /// Finds (and refreshes) or creates the channel an event describes.
    /// Returns `None` for finished channels and for events that may not
    /// create one.
    pub(super) fn ensure(
        &mut self,
        cfg: &NormalizerConfig,
        info: &ChanInfo<'_>,
        t: f64,
        create: bool,
    ) -> Option<Str> {
        let uid = match info.uid {
            Some(u) => u,
            None => return info.name.and_then(|n| self.by_name.get(n).cloned()),
        };
        if self.tombstones.contains_key(uid) {
            Self::ignored("late");
            return None;
        }
        if self.chans.contains_key(uid) {
            self.refresh(cfg, uid, info, t);
            return Some(uid.to_compact_string());
        }
        if !create {
            Self::ignored("unknown_channel");
            return None;
        }
        // A new leg of a call that is already over is a late event too.
        if info
            .linkedid
            .is_some_and(|l| self.tombstones.contains_key(l))
        {
            Self::ignored("late");
            return None;
        }
        let session = info.linkedid.map_or(uid, |l| self.current(l));
        if self.at_capacity(cfg, session) {
            return None;
        }
        let session = session.to_compact_string();
        let name = info.name.unwrap_or(uid).to_compact_string();
        let party = cfg.classifier.classify(&name, info.context);
        let chan = Chan {
            uid: uid.to_compact_string(),
            name: name.clone(),
            party: party.clone(),
            party_at_create: party,
            call: session.clone(),
            created_at: t,
            state: info.state.unwrap_or(ChanState::Down),
            first_caller_num: info.caller_num.map(Str::from),
            first_caller_name: info.caller_name.map(Str::from),
            caller_num: info.caller_num.map(Str::from),
            caller_name: info.caller_name.map(Str::from),
            connected_num: info.connected_num.map(Str::from),
            first_exten: info.exten.filter(|e| meaningful_exten(e)).map(Str::from),
            linked: info.linkedid.is_some(),
            tied: false,
            offered: false,
            offered_ext: None,
            up_at: None,
            hungup_at: None,
            dial_status: None,
            cause: None,
            zombie: false,
        };
        self.regrouped = true;
        self.by_name.insert(name.clone(), uid.to_compact_string());
        self.chans.insert(uid.to_compact_string(), Box::new(chan));
        let call = self
            .calls
            .entry(session.clone())
            .or_insert_with(|| Box::new(Call::new(&session, &session, t)));
        push_exact(&mut call.members, uid.to_compact_string());
        call.last_activity = t;
        // A Linkedid call may have been opened by a later channel first
        // (events out of order): the root is the channel named like the call.
        if !self.chans.contains_key(&call.root) || uid == session {
            call.root = uid.to_compact_string();
        }
        // ≤ 11 Local halves: `;1` and `;2` of the same name are one pair.
        if !self.chans[uid].linked {
            if let Some(stem) = name.strip_suffix(";2").or_else(|| name.strip_suffix(";1")) {
                let other = if name.ends_with(";2") {
                    format!("{stem};1")
                } else {
                    format!("{stem};2")
                };
                if let Some(o) = self.by_name.get(other.as_str()).cloned() {
                    self.tie(&o, uid, t);
                }
            }
        }
        self.originated_channel(cfg, uid);
        Some(uid.to_compact_string())
    }

    /// Keeps what an event says about a known channel current.
    pub(super) fn refresh(
        &mut self,
        cfg: &NormalizerConfig,
        uid: &str,
        info: &ChanInfo<'_>,
        t: f64,
    ) {
        let mut move_to = None;
        if let Some(ch) = self.chans.get_mut(uid) {
            if ch.first_exten.is_none() {
                if let Some(e) = info.exten.filter(|e| meaningful_exten(e)) {
                    ch.first_exten = Some(e.to_compact_string());
                }
            }
            if let Some(c) = info.connected_num {
                ch.connected_num = Some(c.to_compact_string());
            }
            if let Some(l) = info.linkedid {
                // A call merged into this one (a pickup) or this call's
                // own former key is not a move.
                let l = self.renamed.get(l).map_or(l, |k| k.as_str());
                if ch.linked && l != ch.call && !self.tombstones.contains_key(l) {
                    move_to = Some(l.to_compact_string());
                }
            }
        }
        if let Some(target) = move_to {
            self.relink(cfg, uid, &target, t);
        }
    }

    /// Asterisk 12+ changed a channel's Linkedid: its call joins that call.
    pub(super) fn relink(&mut self, _cfg: &NormalizerConfig, uid: &str, target: &str, t: f64) {
        let Some(from) = self.chans.get(uid).map(|c| c.call.clone()) else {
            return;
        };
        self.regrouped = true;
        if !self.calls.contains_key(target) {
            // The target call is not known (yet): re-key this call under it.
            if let Some(mut call) = self.calls.remove(&from) {
                call.session = target.to_compact_string();
                for m in &call.members {
                    if let Some(ch) = self.chans.get_mut(m) {
                        ch.call = target.to_compact_string();
                    }
                }
                self.calls.insert(target.to_compact_string(), call);
                self.rename(&from, target);
            }
            return;
        }
        self.merge(target, &from, t);
    }

    pub(super) fn tombstone(&mut self, uid: Str, t: f64) {
        self.tombstones.insert(uid.clone(), t);
        self.tomb_order.push_back((t, uid));
    }

    pub(super) fn prune_tombstones(&mut self, cfg: &NormalizerConfig, now: f64) {
        while let Some((at, _)) = self.tomb_order.front() {
            let expired = *at + cfg.late_event_window < now;
            if !(expired || self.tomb_order.len() > cfg.max_tombstones) {
                break;
            }
            if let Some((_, uid)) = self.tomb_order.pop_front() {
                self.tombstones.remove(&uid);
            }
        }
    }
}
