//! Live calls across restarts: one self-contained snapshot per call (its
//! facts and its channels, versioned JSON), the set of calls a batch
//! changed, and restoring them before the post-login reconciliation.
//!
//! Dirty tracking does not follow every field write: a call is dirty when
//! an AMI event names one of its channels (any `…Uniqueid`, `…Linkedid`
//! or `…Channel` header, before and after the event is applied: merges
//! and moves are seen from both sides), when a model event of it is
//! emitted, when a time-driven decision is pending for one of its
//! channels, and every call after a reconciliation. What a stored
//! snapshot misses is at most a detail of an unannounced change; what
//! ends a call (its record) always marks it, so a stored call is removed
//! in the same commit as its record.
//!
//! The changed calls wait in the order they first changed; a commit may
//! take only the oldest few snapshots ([`PbxCalls::take_dirty_upto`]: a
//! burst touches thousands of calls per batch, and writing them all would
//! make each commit as long as the burst is wide). The rest stay marked
//! for the next commit; the deletions of calls that are over are always
//! taken, so the invariant above holds.

use std::collections::VecDeque;

use compact_str::ToCompactString;
use serde::{Deserialize, Serialize};

use super::call::Call;
use super::channels::Chan;
use super::{PbxCalls, Str};
use crate::ami::AmiMessage;
use crate::model::ModelEvent;
use crate::normalize::FastSet;

/// Version of the snapshot format; a snapshot of another version is
/// skipped when restoring (counted, logged by the caller).
pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Deserialize)]
struct Snapshot {
    v: u32,
    call: Call,
    chans: Vec<Chan>,
}

/// A [`Snapshot`] as it is written: the same fields, borrowed from the
/// tables (nothing is cloned to store a call).
#[derive(Serialize)]
struct SnapshotRef<'a> {
    v: u32,
    call: &'a Call,
    chans: Vec<&'a Chan>,
}

/// What [`PbxCalls::restore`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Calls put back.
    pub calls: usize,
    /// Snapshots that could not be used (other version, damaged, a call
    /// already known).
    pub skipped: usize,
}

/// The calls changed since they were last taken, each once, oldest change
/// first.
#[derive(Debug, Default)]
pub(super) struct Dirty {
    set: FastSet<Str>,
    order: VecDeque<Str>,
}

impl Dirty {
    /// Marks `session` (once: hashed once).
    fn insert(&mut self, session: Str) {
        if self.set.insert(session.clone()) {
            self.order.push_back(session);
        }
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

/// Whether a header of this length and last letter (lower case) can be
/// one [`names_channel`] accepts: most headers are rejected here, from
/// the message's key tags, without reading their text.
#[inline]
fn may_name_channel(len: usize, last: u8) -> bool {
    match last {
        b'd' => len >= 8,
        b'l' => len >= 7,
        b'e' => len == 5,
        b't' => len == 6,
        _ => false,
    }
}

/// Whether an AMI header names a channel (by Uniqueid or Linkedid) or a
/// channel name. Most headers are rejected by their last letter alone.
#[inline]
fn names_channel(key: &str) -> (bool, bool) {
    let k = key.as_bytes();
    let ends = |suffix: &[u8]| {
        k.len() >= suffix.len() && k[k.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    match k.last().map(u8::to_ascii_lowercase) {
        Some(b'd') => (ends(b"uniqueid") || ends(b"linkedid"), false),
        Some(b'l') => (
            false,
            ends(b"channel") || k.eq_ignore_ascii_case(b"original"),
        ),
        Some(b'e') => (false, k.eq_ignore_ascii_case(b"clone")),
        Some(b't') => (false, k.eq_ignore_ascii_case(b"target")),
        _ => (false, false),
    }
}

impl PbxCalls {
    /// Marks the calls of the channels `msg` names, before the event is
    /// applied; remembers which headers those were for
    /// [`mark_named_again`](Self::mark_named_again).
    pub fn mark_named(&mut self, msg: &AmiMessage) {
        let mut named = std::mem::take(&mut self.named);
        named.clear();
        self.regrouped = false;
        let mut last = None;
        for (i, k, v) in msg.fields_where(may_name_channel) {
            let (id, name) = names_channel(k);
            if id || name {
                named.push((u32::try_from(i).unwrap_or(u32::MAX), id));
                self.mark_value(v, id, &mut last);
            }
        }
        self.named = named;
    }

    /// After the event is applied: marks the calls of the channels the
    /// same headers name now (a merge, a move, a channel just created),
    /// without scanning the message again. When no channel, call or name
    /// came, went or moved meanwhile (`regrouped`, most events), they name
    /// the calls marked before, and nothing is looked up again.
    pub fn mark_named_again(&mut self, msg: &AmiMessage) {
        if !self.regrouped {
            return;
        }
        let named = std::mem::take(&mut self.named);
        let mut last = None;
        for &(i, id) in &named {
            if let Some((_, v)) = msg.field(i as usize) {
                self.mark_value(v, id, &mut last);
            }
        }
        self.named = named;
    }

    /// Marks the call of the channel `v` names: by Uniqueid/Linkedid when
    /// `id` (a call's own id included), else by channel name. `last`: the
    /// call this event marked last (an event's headers mostly name one
    /// call: it is inserted once).
    #[inline]
    fn mark_value(&mut self, v: &str, id: bool, last: &mut Option<Str>) {
        let v = crate::normalize::fields::trim(v);
        let call = if id {
            match self.chans.get(v) {
                Some(c) => Some(&c.call),
                None => self.calls.get_key_value(v).map(|(k, _)| k),
            }
        } else {
            self.by_name
                .get(v)
                .and_then(|u| self.chans.get(u))
                .map(|c| &c.call)
        };
        if let Some(call) = call {
            if last.as_ref() != Some(call) {
                *last = Some(call.clone());
                self.dirty.insert(call.clone());
            }
        }
    }

    /// Marks the calls the model events name.
    pub fn mark_emitted(&mut self, events: &[ModelEvent]) {
        for e in events {
            let (pbx, session) = match e {
                ModelEvent::Leg(l) => (&l.pbx, &l.session_id),
                ModelEvent::CallState(c) => (&c.pbx, &c.session_id),
                ModelEvent::Call(c) => (&c.pbx, &c.session_id),
            };
            if pbx.as_str() == &*self.pbx {
                self.dirty.insert(session.to_compact_string());
            }
        }
    }

    /// Before a time-driven decision: marks the calls of the channels
    /// waiting for one.
    pub fn mark_pending(&mut self) {
        let waiting: Vec<Str> = self
            .pending
            .iter()
            .filter_map(|(u, _, _)| self.chans.get(u).map(|c| c.call.clone()))
            .collect();
        for s in waiting {
            self.dirty.insert(s);
        }
    }

    /// Marks one call.
    pub fn mark_session(&mut self, session: &str) {
        self.dirty.insert(session.to_compact_string());
    }

    /// Marks every call (after a reconciliation).
    pub fn mark_all(&mut self) {
        let all: Vec<Str> = self.calls.keys().cloned().collect();
        for s in all {
            self.dirty.insert(s);
        }
    }

    /// Whether some change waits to be taken.
    pub fn has_dirty(&self) -> bool {
        self.dirty.len() > 0
    }

    /// The calls changed since they were last taken: (session, snapshot),
    /// `None` for a call that is over (or merged into another). Every
    /// deletion, and the snapshots of the calls that changed first, up to
    /// `*budget` of them (decreased by those taken); the other calls stay
    /// marked, in order.
    pub fn take_dirty_upto(&mut self, budget: &mut usize) -> Vec<(String, Option<Vec<u8>>)> {
        let order = std::mem::take(&mut self.dirty.order);
        let mut out = Vec::with_capacity(order.len().min(*budget));
        let mut rest = VecDeque::new();
        for s in order {
            let snap = match self.calls.get(&s) {
                None => None,
                Some(_) if *budget == 0 => {
                    rest.push_back(s);
                    continue;
                }
                Some(c) => {
                    *budget -= 1;
                    self.encode(c)
                }
            };
            self.dirty.set.remove(&s);
            out.push((s.to_string(), snap));
        }
        self.dirty.order = rest;
        out
    }

    /// Every change: [`take_dirty_upto`](Self::take_dirty_upto) without a
    /// limit.
    pub fn take_dirty(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut all = usize::MAX;
        self.take_dirty_upto(&mut all)
    }

    fn encode(&self, call: &Call) -> Option<Vec<u8>> {
        let chans: Vec<&Chan> = call
            .members
            .iter()
            .filter_map(|u| self.chans.get(u).map(|c| &**c))
            .collect();
        serde_json::to_vec(&SnapshotRef {
            v: SNAPSHOT_VERSION,
            call,
            chans,
        })
        .ok()
    }

    /// Puts stored calls back (at start, before the first login's
    /// reconciliation closes those that ended meanwhile). A call or
    /// channel already known is left as it is.
    pub fn restore(&mut self, snapshots: &[Vec<u8>]) -> Restored {
        let mut r = Restored::default();
        self.regrouped = true;
        for bytes in snapshots {
            let snap = match serde_json::from_slice::<Snapshot>(bytes) {
                Ok(s) if s.v == SNAPSHOT_VERSION => s,
                _ => {
                    r.skipped += 1;
                    continue;
                }
            };
            let session = snap.call.session.clone();
            if self.calls.contains_key(&session)
                || snap.chans.iter().any(|c| self.chans.contains_key(&c.uid))
            {
                r.skipped += 1;
                continue;
            }
            for c in snap.chans {
                if c.live() {
                    self.by_name.insert(c.name.clone(), c.uid.clone());
                }
                self.chans.insert(c.uid.clone(), Box::new(c));
            }
            for a in &snap.call.aliases {
                self.renamed.insert(a.clone(), session.clone());
            }
            self.calls.insert(session, Box::new(snap.call));
            r.calls += 1;
        }
        self.publish();
        r
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::model::ModelEvent;
    use crate::normalize::{Normalizer, NormalizerConfig};
    use crate::source::{PbxId, SourceEvent};

    fn capture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ami")
            .join(name);
        std::fs::read(p).unwrap()
    }

    /// The capture's events as the live client hands them over.
    fn source_events(bytes: &[u8], pbx: &PbxId) -> Vec<SourceEvent> {
        use crate::ami::{AmiCodec, AmiFrame};
        use crate::replay::{Routed, Router};
        use tokio_util::codec::Decoder;
        let mut codec = AmiCodec::new();
        let mut buf = bytes::BytesMut::from(bytes);
        let mut router = Router::default();
        let mut out = Vec::new();
        let mut t = 0.0_f64;
        while let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
            let AmiFrame::Message(m) = frame else {
                continue;
            };
            match router.route(m) {
                Routed::Event(m) => {
                    t = t.max(m.timestamp().unwrap_or(t));
                    out.push(SourceEvent::Ami {
                        pbx: pbx.clone(),
                        received_at: t,
                        msg: m,
                    });
                }
                Routed::Snapshot(channels) => out.push(SourceEvent::AmiSnapshot {
                    pbx: pbx.clone(),
                    received_at: t,
                    channels,
                }),
                Routed::Dropped => {}
            }
        }
        out
    }

    fn records(evs: &[ModelEvent]) -> Vec<&crate::model::CallRecord> {
        evs.iter()
            .filter_map(|e| match e {
                ModelEvent::Call(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_tag_filter_keeps_every_header_that_names_a_channel() {
        use super::{may_name_channel, names_channel};
        use crate::ami::AmiMessage;
        let keys = [
            "Uniqueid",
            "UniqueID",
            "DestUniqueid",
            "Linkedid",
            "DestLinkedID",
            "Channel",
            "DestChannel",
            "CHANNEL",
            "Original",
            "Clone",
            "Target",
            "BridgeUniqueid",
            "TransfererUniqueid",
            "Event",
            "Exten",
            "Context",
            "CallerIDName",
            "Privilege",
            "Id",
            "d",
            "Xchannel",
            "Clones",
        ];
        let m = AmiMessage::from_pairs(keys.iter().map(|k| (*k, "v")));
        let kept: Vec<&str> = m.fields_where(may_name_channel).map(|f| f.1).collect();
        for k in keys {
            let (id, name) = names_channel(k);
            if id || name {
                assert!(
                    kept.contains(&k),
                    "{k} named a channel but was filtered out"
                );
            }
        }
        assert!(!kept.contains(&"Event") && !kept.contains(&"Exten"));
    }

    /// A capture cut at every event: the calls stored at the cut, restored
    /// into a new normalizer and reconciled with an empty channel list,
    /// give each call that was live at the cut exactly one record, marked
    /// approximate, and the stored set follows the model exactly.
    #[test]
    fn stored_calls_restore_and_close_exactly_once_at_every_cut() {
        for name in CAPTURES {
            cuts(name);
        }
    }

    /// Stored calls of a PBX no longer configured (a restart after it was
    /// removed): restored, closed by the first tick (approximate,
    /// `reconnect`), every stored row deleted with them, nothing twice.
    #[test]
    fn calls_of_a_removed_pbx_are_closed_once_and_their_rows_deleted() {
        let pbx: PbxId = Arc::from("gone");
        let events = source_events(&capture(CAPTURES[0]), &pbx);
        let mut n = Normalizer::new(NormalizerConfig::default());
        n.track_changes();
        let mut out = Vec::new();
        let mut stored = std::collections::BTreeMap::new();
        for ev in &events[..events.len() / 2] {
            n.handle(ev, &mut out);
            for c in n.take_dirty() {
                match c.snapshot {
                    Some(b) => stored.insert(c.session, b),
                    None => stored.remove(&c.session),
                };
            }
        }
        assert!(!stored.is_empty());
        let keep: std::collections::HashSet<String> = ["main".to_string()].into();
        let mut m = Normalizer::new(NormalizerConfig {
            sources: Some(Arc::new(keep)),
            ..NormalizerConfig::default()
        });
        m.track_changes();
        let snaps: Vec<Vec<u8>> = stored.values().cloned().collect();
        assert_eq!(m.restore_stored(&pbx, &snaps).calls, stored.len());
        let mut after = Vec::new();
        m.tick(crate::source::now_epoch(), &mut after);
        assert_eq!(m.live_calls(), 0);
        let closed = records(&after);
        assert!(!closed.is_empty());
        for c in &closed {
            assert!(c.approximate);
            assert_eq!(c.end_reason, crate::model::EndReason::Reconnect);
        }
        let changes = m.take_dirty();
        for s in stored.keys() {
            assert!(
                changes
                    .iter()
                    .any(|c| &c.session == s && c.snapshot.is_none()),
                "{s} not deleted"
            );
        }
        let mut again = Vec::new();
        m.tick(crate::source::now_epoch() + 1.0, &mut again);
        assert!(records(&again).is_empty());
    }

    /// A commit may take only the snapshots of the calls that changed
    /// first: the others stay marked, in order, for the next one, while
    /// the deletion of a call that is over is always taken at once.
    #[test]
    fn a_limited_take_keeps_the_rest_in_order_and_takes_every_deletion() {
        let pbx: PbxId = Arc::from("main");
        let mut bytes = crate::ami::synthetic::BANNER.to_vec();
        bytes.extend(crate::ami::synthetic::burst(6));
        let events = source_events(&bytes, &pbx);
        let mut n = Normalizer::new(NormalizerConfig::default());
        n.track_changes();
        let mut out = Vec::new();
        let session = |i: usize| format!("1800000000.{}", 2 * i);
        let taken = |changes: Vec<crate::normalize::CallChange>| -> Vec<(String, bool)> {
            changes
                .into_iter()
                .map(|c| (c.session, c.snapshot.is_some()))
                .collect()
        };
        // Six calls ringing and answered (three events each).
        for ev in &events[..18] {
            n.handle(ev, &mut out);
        }
        let first = taken(n.take_dirty_upto(4));
        assert_eq!(
            first,
            (0..4).map(|i| (session(i), true)).collect::<Vec<_>>()
        );
        assert!(n.has_dirty());
        // The first call ends (its two hangups).
        for ev in &events[18..20] {
            n.handle(ev, &mut out);
        }
        assert!(records(&out).iter().any(|c| c.session_id == session(0)));
        let second = taken(n.take_dirty_upto(1));
        assert_eq!(second, vec![(session(4), true), (session(0), false)]);
        assert_eq!(taken(n.take_dirty()), vec![(session(5), true)]);
        assert!(!n.has_dirty());
    }

    const CAPTURES: [&str; 6] = [
        "asterisk-20/queue-answered.ami",
        "asterisk-20/incoming-answered.ami",
        "asterisk-20/click-to-call.ami",
        "asterisk-20/internal.ami",
        "asterisk-11/queue-answered.ami",
        "asterisk-11/incoming-busy.ami",
    ];

    fn cuts(name: &str) {
        let pbx: PbxId = Arc::from("main");
        let bytes = capture(name);
        let mut all = Vec::new();
        crate::replay::replay(
            std::slice::from_ref(&bytes),
            &pbx,
            &mut Normalizer::new(NormalizerConfig::default()),
            |e| all.push(e.clone()),
        );
        let total = records(&all).len();
        assert!(total >= 1);
        let events = source_events(&bytes, &pbx);
        let mut closed_by_restore = 0;
        for cut in 0..=events.len() {
            let mut n = Normalizer::new(NormalizerConfig::default());
            n.track_changes();
            let mut out = Vec::new();
            let mut stored = std::collections::BTreeMap::new();
            for ev in &events[..cut] {
                n.handle(ev, &mut out);
                for c in n.take_dirty() {
                    match c.snapshot {
                        Some(b) => stored.insert(c.session, b),
                        None => stored.remove(&c.session),
                    };
                }
            }
            assert_eq!(
                stored.len(),
                n.live_calls(),
                "{name} cut {cut}: stored = live"
            );
            // And each as it is now: no change went unmarked.
            if let Some(p) = n.pbxs.get(&pbx) {
                for (s, b) in &stored {
                    let now = p.calls.get(s.as_str()).and_then(|c| p.encode(c));
                    assert_eq!(now.as_ref(), Some(b), "{name} cut {cut}: {s} stale");
                }
            }
            let before = records(&out).len();
            let mut m = Normalizer::new(NormalizerConfig::default());
            let snaps: Vec<Vec<u8>> = stored.values().cloned().collect();
            let r = m.restore(&pbx, &snaps);
            assert_eq!((r.calls, r.skipped), (stored.len(), 0), "cut {cut}");
            let mut after = Vec::new();
            m.handle(
                &SourceEvent::AmiSnapshot {
                    pbx: pbx.clone(),
                    received_at: crate::source::now_epoch(),
                    channels: Vec::new(),
                },
                &mut after,
            );
            let closed = records(&after);
            let announced = closed.len();
            closed_by_restore += announced;
            assert!(announced <= stored.len(), "cut {cut}");
            assert!(closed.iter().all(|c| c.approximate), "cut {cut}");
            assert_eq!(m.live_calls(), 0, "cut {cut}");
            // Every call gets at most one record over the two runs.
            let mut ids: Vec<&str> = records(&out)
                .iter()
                .chain(closed.iter())
                .map(|c| c.session_id.as_str())
                .collect();
            let n_ids = ids.len();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), n_ids, "{name} cut {cut}: a call closed twice");
            let _ = (before, total);
        }
        assert!(
            closed_by_restore > 0,
            "{name}: no cut had a call to restore"
        );
    }
}
