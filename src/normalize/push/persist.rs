//! Pushed calls across restarts, like the AMI side's
//! (`normalize::calls::persist`): one self-contained snapshot per session
//! in progress (versioned JSON of its facts, legs and duplicate keys), the
//! sessions a batch changed, and restoring them at start.
//!
//! Every change to a session in progress goes through [`PushCalls::apply`]
//! or its end, both of which mark it, so the stored set is exactly the
//! sessions in progress as of the last committed batch; a session's row is
//! removed in the same commit as its record. A pushed event that was
//! committed but whose answer was lost (kill -9 between the two) is a
//! duplicate when the dialer retries it after the restart: the duplicate
//! keys are part of the snapshot.
//!
//! Finished sessions (tombstones) are not stored: a push for a call that
//! was finished before a restart opens a new call after it.
//!
//! A restored session keeps its local times (first and last push): one
//! that was over waits out the rest of its settle time; one whose end never
//! comes (the dialer gave up on the pushes it could not deliver while
//! callhook was down) is closed by `calls.max_age` measured from its first
//! push, `end_reason: max_age`, `approximate: true`, at its last event —
//! once, since its row goes with its record.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::session::Session;
use super::PushCalls;
use crate::normalize::calls::Restored;

/// Version of the snapshot format; another version is skipped at restore.
pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    v: u32,
    session: Session,
}

impl PushCalls {
    /// Tracks the sessions each batch changes, for
    /// [`take_dirty`](Self::take_dirty).
    pub fn track_changes(&mut self) {
        self.dirty.get_or_insert_with(HashSet::new);
    }

    pub(super) fn touch(&mut self, sid: &str) {
        if let Some(d) = self.dirty.as_mut() {
            if !d.contains(sid) {
                d.insert(sid.to_string());
            }
        }
    }

    /// Marks a session again (its store failed; taken with the next batch).
    pub fn mark_session(&mut self, sid: &str) {
        self.touch(sid);
    }

    /// The sessions changed since the last call: (session, snapshot),
    /// `None` for one that is over.
    pub fn take_dirty(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let Some(d) = self.dirty.as_mut() else {
            return Vec::new();
        };
        let dirty = std::mem::take(d);
        dirty
            .into_iter()
            .map(|sid| {
                let snap = self.sessions.get(&sid).and_then(encode);
                (sid, snap)
            })
            .collect()
    }

    /// Puts stored sessions back (at start, before any push is taken). A
    /// session already known is left as it is.
    pub fn restore(&mut self, snapshots: &[Vec<u8>]) -> Restored {
        let mut r = Restored::default();
        for bytes in snapshots {
            let s = match serde_json::from_slice::<Snapshot>(bytes) {
                Ok(s) if s.v == SNAPSHOT_VERSION => s.session,
                _ => {
                    r.skipped += 1;
                    continue;
                }
            };
            if self.knows(&s.id) {
                r.skipped += 1;
                continue;
            }
            self.sessions.insert(s.id.clone(), s);
            r.calls += 1;
        }
        self.publish();
        r
    }
}

fn encode(s: &Session) -> Option<Vec<u8>> {
    #[derive(Serialize)]
    struct Ref<'a> {
        v: u32,
        session: &'a Session,
    }
    serde_json::to_vec(&Ref {
        v: SNAPSHOT_VERSION,
        session: s,
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::model::{EndReason, ModelEvent};
    use crate::normalize::NormalizerConfig;
    use crate::source::{PushEvent, PushKind, PushSide};

    const T0: f64 = 1_800_000_000.0;

    fn cfg() -> NormalizerConfig {
        NormalizerConfig {
            push_settle: 2.0,
            max_call_age: 600.0,
            ..NormalizerConfig::default()
        }
    }

    fn push(
        sid: &str,
        kind: &str,
        side: PushSide,
        calltype: &str,
        ext: &str,
        at: f64,
    ) -> PushEvent {
        PushEvent {
            session_id: sid.into(),
            kind: match kind {
                "ringing" => PushKind::Ringing,
                "answer" => PushKind::Answer,
                "hangup" => PushKind::Hangup,
                o => PushKind::Other(o.into()),
            },
            event: kind.into(),
            side: Some(side),
            call_type: Some(calltype.into()),
            active_num: Some("5551234567".into()),
            event_time: Some(at),
            event_time_raw: Some(format!("{at}")),
            extension: Some(ext.into()),
            ..PushEvent::default()
        }
    }

    /// Three calls interleaved: answered incoming, outgoing, and one whose
    /// end is never pushed.
    fn script() -> Vec<PushEvent> {
        use PushSide::{Callee, Caller};
        vec![
            push("a", "ringing", Callee, "dialin", "1001", T0),
            push("b", "ringing", Caller, "dialout", "1002", T0 + 1.0),
            push("c", "ringing", Callee, "dialin", "1003", T0 + 1.5),
            push("a", "answer", Callee, "dialin", "1001", T0 + 2.0),
            push("b", "answer", Callee, "dialout", "1002", T0 + 3.0),
            push("a", "hangup", Callee, "dialin", "1001", T0 + 9.0),
            push("a", "hangup", Caller, "dialin", "", T0 + 9.0),
            push("b", "hangup", Caller, "dialout", "1002", T0 + 12.0),
        ]
    }

    fn records(out: &[ModelEvent]) -> Vec<&crate::model::CallRecord> {
        out.iter()
            .filter_map(|e| match e {
                ModelEvent::Call(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// Cut after every push (a kill -9): the stored sessions are the live
    /// ones exactly; restored into a new table, with the dialer retrying
    /// the last push (a duplicate now) and sending the rest, every call
    /// gets exactly one record over the two runs, and the call whose end
    /// never comes is closed by the maximum age, approximately.
    #[test]
    fn stored_sessions_restore_and_close_exactly_once_at_every_cut() {
        let evs = script();
        let cfg = cfg();
        for cut in 0..=evs.len() {
            let team: crate::source::PbxId = Arc::from("acme");
            let mut t = PushCalls::new(team.clone());
            t.track_changes();
            let mut out = Vec::new();
            let mut stored = BTreeMap::new();
            for (i, e) in evs[..cut].iter().enumerate() {
                let at = T0 + i as f64 * 0.5;
                t.apply(e, at, &mut out);
                t.tick(&cfg, at, &mut out);
                for (s, b) in t.take_dirty() {
                    match b {
                        Some(b) => stored.insert(s, b),
                        None => stored.remove(&s),
                    };
                }
            }
            assert_eq!(stored.len(), t.live_calls(), "cut {cut}");
            for (s, b) in &stored {
                assert_eq!(
                    t.sessions.get(s).and_then(encode).as_ref(),
                    Some(b),
                    "cut {cut}: {s} stale"
                );
            }
            let mut u = PushCalls::new(team);
            u.track_changes();
            let snaps: Vec<Vec<u8>> = stored.values().cloned().collect();
            let r = u.restore(&snaps);
            assert_eq!((r.calls, r.skipped), (stored.len(), 0), "cut {cut}");
            let mut after = Vec::new();
            let restart = T0 + 20.0;
            if cut > 0 {
                let again = u.apply(&evs[cut - 1], restart, &mut after);
                assert!(
                    again.duplicate || !stored.contains_key(&evs[cut - 1].session_id),
                    "cut {cut}: the retried push was applied twice"
                );
            }
            for e in &evs[cut..] {
                u.apply(e, restart, &mut after);
            }
            u.tick(&cfg, restart + 10.0, &mut after);
            u.tick(&cfg, T0 + 700.0, &mut after);
            assert_eq!(u.live_calls(), 0, "cut {cut}");
            let mut ids: Vec<&str> = records(&out)
                .iter()
                .chain(records(&after).iter())
                .map(|c| c.session_id.as_str())
                .collect();
            ids.sort_unstable();
            assert_eq!(ids, ["a", "b", "c"], "cut {cut}: each call closed once");
            let c = records(&after)
                .into_iter()
                .find(|r| r.session_id == "c")
                .expect("c closed after the restart");
            assert_eq!(c.end_reason, EndReason::MaxAge, "cut {cut}");
            assert!(c.approximate, "cut {cut}");
        }
    }

    /// Snapshots of another version or kind are skipped, never a panic.
    #[test]
    fn foreign_snapshots_are_skipped() {
        let mut t = PushCalls::new(Arc::from("acme"));
        let r = t.restore(&[
            b"{\"v\":99,\"session\":{}}".to_vec(),
            b"{\"v\":1,\"call\":{}}".to_vec(),
            b"garbage".to_vec(),
        ]);
        assert_eq!((r.calls, r.skipped), (0, 3));
        assert_eq!(t.live_calls(), 0);
    }
}
