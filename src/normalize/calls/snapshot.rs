//! Reconciliation with the channels the PBX reports after a (re)login.

use compact_str::ToCompactString;
use std::collections::HashSet;

use super::{PbxCalls, Str};
use crate::ami::AmiMessage;
use crate::model::ModelEvent;
use crate::normalize::canonical::ChanInfo;
use crate::normalize::NormalizerConfig;

impl PbxCalls {
    /// Reconciles with the channels the PBX reports as up.
    pub fn snapshot(
        &mut self,
        cfg: &NormalizerConfig,
        items: &[AmiMessage],
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        self.advance(cfg, t, out);
        let present: HashSet<&str> = items.iter().filter_map(|m| m.get("Uniqueid")).collect();
        // 1. Channels that ended while we were away.
        let gone: Vec<Str> = self
            .chans
            .values()
            .filter(|c| c.live() && !present.contains(c.uid.as_str()))
            .map(|c| c.uid.clone())
            .collect();
        for uid in &gone {
            if let Some(ch) = self.chans.get_mut(uid) {
                ch.cause = ch.cause.or(Some(16));
            }
            self.hangup(uid, None, t, true, out);
        }
        // 2. Channels that started while we were away.
        let mut new = Vec::new();
        for m in items {
            let Some(uid) = m.get("Uniqueid") else {
                continue;
            };
            if self.chans.contains_key(uid) || self.tombstones.contains_key(uid) {
                continue;
            }
            let age = m
                .get("Duration")
                .and_then(parse_hms)
                .or_else(|| m.get("Seconds").and_then(|s| s.trim().parse::<f64>().ok()))
                .unwrap_or(0.0);
            let info = ChanInfo {
                uid: Some(uid),
                name: m.get("Channel"),
                linkedid: m.get("Linkedid"),
                state: None,
                caller_num: m.get("CallerIDNum"),
                caller_name: m.get("CallerIDName"),
                connected_num: m.get("ConnectedLineNum"),
                connected_name: m.get("ConnectedLineName"),
                context: m.get("Context"),
                exten: m.get("Exten").or_else(|| m.get("Extension")),
            };
            if let Some(u) = self.ensure(cfg, &info, t - age, true) {
                new.push((u, m));
            }
        }
        for (uid, m) in &new {
            let peer = m
                .get("BridgedUniqueid")
                .or_else(|| m.get("BridgedUniqueID"));
            if let Some(p) = peer.filter(|p| self.chans.contains_key(*p)) {
                let p = p.to_compact_string();
                self.tie(&p, uid, t);
            }
            let session = self.chans.get(uid).map(|c| c.call.clone());
            if let Some(call) = session.and_then(|s| self.calls.get_mut(&s)) {
                call.approximate = true;
                call.announced = true;
            }
        }
        for (uid, m) in &new {
            let up = m
                .get("ChannelStateDesc")
                .or_else(|| m.get("State"))
                .is_some_and(|s| s.eq_ignore_ascii_case("Up"));
            if up {
                self.up(cfg, uid, t, true, out);
            }
        }
        self.disconnected_at = None;
    }
}

/// `00:01:07` → 67 seconds.
fn parse_hms(s: &str) -> Option<f64> {
    let mut total = 0.0;
    for part in s.trim().split(':') {
        total = total * 60.0 + part.trim().parse::<f64>().ok()?;
    }
    Some(total)
}
