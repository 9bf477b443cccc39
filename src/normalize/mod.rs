//! The normalizer: source events in, call model out.
//!
//! [`Normalizer::handle`] takes one [`SourceEvent`] and appends the
//! [`ModelEvent`]s it causes; [`Normalizer::tick`] closes what time alone
//! settles (calls past their maximum age, undecided Asterisk ≤ 11 channels).
//! It is synchronous, does no I/O and never fails: an event it cannot use is
//! ignored and counted (`callhook_normalizer_ignored_total{reason}`).
//!
//! Pipeline: [`canonical`] maps every AMI generation's spellings to one
//! shape; [`channel`] says who is on a channel; [`calls`] keeps the per-PBX
//! channel and call tables and emits transitions. Pushed (asterCC-style)
//! events go to [`push`], one table per team, with the same model events.

pub mod calls;
pub mod canonical;
pub mod channel;
mod fields;
pub mod push;

use std::collections::{HashMap, HashSet};

use crate::metrics::metrics;
use crate::model::ModelEvent;
use crate::source::{PbxId, PushEvent, PushReceipt, SourceEvent};

pub use channel::{Classifier, ClassifierConfig, Party};

/// The normalizer's tables (channels, calls, tombstones, PBXs, push
/// sessions): aHash, randomly keyed per process (ids and names come from
/// the PBX), several times faster than the default SipHash on short keys.
pub(crate) type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;
/// A set hashed as [`FastMap`].
pub(crate) type FastSet<K> = HashSet<K, ahash::RandomState>;

/// Normalizer settings.
#[derive(Debug, Clone)]
pub struct NormalizerConfig {
    /// Extension vs trunk decisions.
    pub classifier: Classifier,
    /// A call with no hangup after this many seconds is closed (`max_age`).
    pub max_call_age: f64,
    /// Asterisk ≤ 11 only: how long a ringing channel that nothing ties to a
    /// call yet may wait for its `Dial`/`AgentCalled` before callhook decides
    /// alone (queue member by connected line, or an originated call).
    pub orphan_grace: f64,
    /// How long a finished call's channel ids are remembered, so that late
    /// or duplicated events never open a second call.
    pub late_event_window: f64,
    /// Upper bound on remembered finished channel ids (and, per push team,
    /// finished sessions).
    pub max_tombstones: usize,
    /// Push sources: how long after a call's last push, once it is over,
    /// its record is written (events pushed out of order are folded in).
    pub push_settle: f64,
    /// At most this many calls in progress per PBX or push team (channels:
    /// four times as many). Beyond it a new call is not tracked: its AMI
    /// events are ignored (`callhook_normalizer_ignored_total{reason="max_live"}`,
    /// a rate-limited warning), its pushes refused with `503` so the
    /// dialer retries. Bounds memory against a runaway or hostile source.
    pub max_live_calls: usize,
    /// The PBX and push team ids configured (the daemon, from
    /// `Config::daemon_normalizer`; `None`: any, as replays and backfills).
    /// Calls of any other id — stored by a run whose config had it, or
    /// still in progress when a reload removed it — are closed at the next
    /// tick, as a reconnect that finds none of them would (records
    /// `end_reason: reconnect`, `approximate`), and their stored rows go
    /// with the records.
    pub sources: Option<std::sync::Arc<std::collections::HashSet<String>>>,
}

impl Default for NormalizerConfig {
    fn default() -> Self {
        Self {
            classifier: Classifier::default(),
            max_call_age: 4.0 * 3600.0,
            orphan_grace: 0.5,
            late_event_window: 300.0,
            max_tombstones: 100_000,
            push_settle: 2.0,
            max_live_calls: 50_000,
            sources: None,
        }
    }
}

/// Memory held by the normalizer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// Calls in progress.
    pub calls: usize,
    /// Channels of calls in progress.
    pub channels: usize,
    /// Finished channel ids remembered for late events.
    pub tombstones: usize,
}

/// Turns source events into the call model, for any number of PBXs and
/// push teams.
#[derive(Debug)]
pub struct Normalizer {
    cfg: NormalizerConfig,
    pbxs: FastMap<PbxId, calls::PbxCalls>,
    teams: FastMap<PbxId, push::PushCalls>,
    batch: bool,
    /// Track the calls each batch changes ([`Normalizer::take_dirty`]).
    persist: bool,
    /// Which PBX's changes [`Normalizer::take_dirty_upto`] takes first
    /// (it turns, so one PBX's burst cannot keep the others' waiting).
    first_pick: usize,
}

/// One call a batch changed, for the live-call store: its snapshot
/// (versioned, self-contained bytes), or `None` when it is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallChange {
    /// The PBX.
    pub pbx: PbxId,
    /// The call's session id.
    pub session: String,
    /// What to store; `None`: delete.
    pub snapshot: Option<Vec<u8>>,
}

impl Normalizer {
    /// A normalizer with the given settings.
    pub fn new(cfg: NormalizerConfig) -> Self {
        Self {
            cfg,
            pbxs: FastMap::default(),
            teams: FastMap::default(),
            batch: false,
            persist: false,
            first_pick: 0,
        }
    }

    /// Tracks the calls (AMI and pushed) each batch changes, for
    /// [`take_dirty`](Self::take_dirty) (the daemon; replays do not).
    pub fn track_changes(&mut self) {
        self.persist = true;
        for t in self.teams.values_mut() {
            t.track_changes();
        }
    }

    /// The calls changed since the last call (AMI calls and push
    /// sessions), to be stored atomically with the deliveries the same
    /// events caused.
    pub fn take_dirty(&mut self) -> Vec<CallChange> {
        self.take_dirty_upto(usize::MAX)
    }

    /// [`take_dirty`](Self::take_dirty), with at most `snapshots` AMI
    /// calls' snapshots (those that changed first; the others stay marked
    /// for the next time). Deletions and push sessions are all taken.
    pub fn take_dirty_upto(&mut self, snapshots: usize) -> Vec<CallChange> {
        let mut budget = snapshots;
        let mut out = Vec::new();
        let n = self.pbxs.len().max(1);
        self.first_pick = (self.first_pick + 1) % n;
        let (later, first) = {
            let mut all: Vec<_> = self.pbxs.iter_mut().collect();
            let first = all.split_off(self.first_pick.min(all.len()));
            (all, first)
        };
        for (pbx, p) in first.into_iter().chain(later) {
            for (session, snapshot) in p.take_dirty_upto(&mut budget) {
                out.push(CallChange {
                    pbx: pbx.clone(),
                    session,
                    snapshot,
                });
            }
        }
        for (team, t) in &mut self.teams {
            for (session, snapshot) in t.take_dirty() {
                out.push(CallChange {
                    pbx: team.clone(),
                    session,
                    snapshot,
                });
            }
        }
        out
    }

    /// Whether AMI calls' changes wait to be taken (left by
    /// [`take_dirty_upto`](Self::take_dirty_upto)).
    pub fn has_dirty(&self) -> bool {
        self.pbxs.values().any(calls::PbxCalls::has_dirty)
    }

    /// Marks changes again whose store failed (or whose pushed calls were
    /// rolled back after they were stored): they are taken with the next
    /// batch, as the model is then (a call over by then is deleted).
    pub fn requeue_dirty(&mut self, changes: &[CallChange]) {
        for c in changes {
            if let Some(p) = self.pbxs.get_mut(&c.pbx) {
                p.mark_session(&c.session);
            } else if let Some(t) = self.teams.get_mut(&c.pbx) {
                t.mark_session(&c.session);
            }
        }
    }

    /// Puts a PBX's stored live calls back (at start, before its first
    /// login: that login's reconciliation closes the calls that ended
    /// meanwhile, their records marked approximate).
    pub fn restore(&mut self, pbx: &PbxId, snapshots: &[Vec<u8>]) -> calls::Restored {
        Self::pbx(&mut self.pbxs, pbx).restore(snapshots)
    }

    /// Puts a push team's stored sessions back (at start, before the push
    /// endpoint takes anything). See `push::persist` for how those whose
    /// end never comes are closed.
    pub fn restore_push(&mut self, team: &PbxId, snapshots: &[Vec<u8>]) -> calls::Restored {
        self.team(team).restore(snapshots)
    }

    fn team(&mut self, team: &PbxId) -> &mut push::PushCalls {
        let (batch, persist) = (self.batch, self.persist);
        self.teams.entry(team.clone()).or_insert_with(|| {
            let mut t = push::PushCalls::new(team.clone());
            if batch {
                t.begin();
            }
            if persist {
                t.track_changes();
            }
            t
        })
    }

    /// Replaces the settings (a reload): the classifier and the time limits
    /// apply to what is handled next; channels already classified keep
    /// their class, calls in progress stay as they are.
    pub fn reconfigure(&mut self, cfg: NormalizerConfig) {
        self.cfg = cfg;
    }

    /// Handles one pushed event of `team`, appending what it causes to
    /// `out`; says whether it was a duplicate.
    pub fn handle_push(
        &mut self,
        team: &PbxId,
        received_at: f64,
        ev: &PushEvent,
        out: &mut Vec<ModelEvent>,
    ) -> PushReceipt {
        let started = std::time::Instant::now();
        let max_live = self.cfg.max_live_calls;
        let t = self.team(team);
        if t.live_calls() >= max_live && !t.knows(&ev.session_id) {
            calls::refused_at_capacity(
                team,
                t.live_calls(),
                max_live,
                "a push for a new call is refused",
            );
            return PushReceipt {
                full: true,
                ..PushReceipt::default()
            };
        }
        let r = t.apply(ev, received_at, out);
        t.publish();
        metrics()
            .normalize_seconds
            .observe(started.elapsed().as_secs_f64());
        r
    }

    /// Starts a batch: changes to pushed calls from here on can be undone
    /// with [`rollback_batch`](Self::rollback_batch) (AMI calls are not
    /// journaled).
    pub fn begin_batch(&mut self) {
        self.batch = true;
        for t in self.teams.values_mut() {
            t.begin();
        }
    }

    /// Keeps the batch's changes.
    pub fn commit_batch(&mut self) {
        self.batch = false;
        for t in self.teams.values_mut() {
            t.commit();
        }
    }

    /// Undoes the batch's changes to pushed calls: their pushes, answered
    /// with an error, will be applied again when the pusher retries.
    pub fn rollback_batch(&mut self) {
        self.batch = false;
        for t in self.teams.values_mut() {
            t.rollback();
            t.publish();
        }
    }

    /// Whether `pbx` is a push team (as opposed to an AMI PBX).
    pub fn is_push_team(&self, pbx: &str) -> bool {
        self.teams.contains_key(pbx)
    }

    /// Writes the records of pushed calls that are over without waiting for
    /// them to settle (shutdown). `now` is local epoch seconds.
    pub fn settle_pushed(&mut self, now: f64, out: &mut Vec<ModelEvent>) {
        for t in self.teams.values_mut() {
            t.settle_all(now, out);
            t.publish();
        }
    }

    fn pbx<'a>(
        pbxs: &'a mut FastMap<PbxId, calls::PbxCalls>,
        id: &PbxId,
    ) -> &'a mut calls::PbxCalls {
        pbxs.entry(id.clone())
            .or_insert_with(|| calls::PbxCalls::new(id.clone()))
    }

    /// Handles one source event, appending what it causes to `out`.
    pub fn handle(&mut self, ev: &SourceEvent, out: &mut Vec<ModelEvent>) {
        if let SourceEvent::Push {
            team,
            received_at,
            event,
            ..
        } = ev
        {
            self.handle_push(team, *received_at, event, out);
            return;
        }
        let started = std::time::Instant::now();
        let Self {
            cfg, pbxs, persist, ..
        } = self;
        let persist = *persist;
        let emitted = out.len();
        let p = match ev {
            SourceEvent::Ami {
                pbx,
                received_at,
                msg,
            } => {
                let p = Self::pbx(pbxs, pbx);
                if persist {
                    p.mark_named(msg);
                    p.mark_pending();
                }
                let t = match msg.timestamp() {
                    Some(t) => {
                        p.observe_clock(t, *received_at);
                        t
                    }
                    None => p.pbx_time(*received_at),
                };
                match canonical::canonicalize(msg) {
                    Some(c) => p.apply(cfg, &c, t, out),
                    // Not a call event (VarSet, Cdr, RTCP, …): only time advances.
                    None => p.advance(cfg, t, out),
                }
                if persist {
                    p.mark_named_again(msg);
                    p.mark_emitted(&out[emitted..]);
                }
                p
            }
            SourceEvent::AmiSnapshot {
                pbx,
                received_at,
                channels,
            } => {
                let p = Self::pbx(pbxs, pbx);
                let t = p.pbx_time(*received_at);
                if persist {
                    p.mark_all();
                }
                p.snapshot(cfg, channels, t, out);
                if persist {
                    p.mark_all();
                    p.mark_emitted(&out[emitted..]);
                }
                p
            }
            SourceEvent::AmiOriginate { pbx, at, originate } => {
                let p = Self::pbx(pbxs, pbx);
                let t = p.pbx_time(*at);
                p.originate_sent(cfg, originate, t);
                p
            }
            SourceEvent::AmiDisconnected { pbx, at } => {
                let p = Self::pbx(pbxs, pbx);
                let t = p.pbx_time(*at);
                p.disconnected(t);
                p
            }
            SourceEvent::Push { .. } => return,
        };
        metrics()
            .normalize_seconds
            .observe(started.elapsed().as_secs_f64());
        p.publish();
    }

    /// Settles what time alone decides (maximum call age, undecided ≤ 11
    /// channels). `now` is local epoch seconds; each PBX's decisions run on
    /// that PBX's clock (its events' `Timestamp`s), so a PBX whose clock is
    /// off never has its calls expired early or late.
    pub fn tick(&mut self, now: f64, out: &mut Vec<ModelEvent>) {
        self.close_removed(now, out);
        for p in self.pbxs.values_mut() {
            let now = p.pbx_time(now);
            let emitted = out.len();
            if self.persist {
                p.mark_pending();
            }
            p.advance(&self.cfg, now, out);
            p.expire(&self.cfg, now, out);
            if self.persist {
                p.mark_emitted(&out[emitted..]);
            }
            p.publish();
        }
        for t in self.teams.values_mut() {
            t.tick(&self.cfg, now, out);
            t.publish();
        }
    }

    /// Closes the calls of ids no longer configured (see
    /// [`NormalizerConfig::sources`]).
    fn close_removed(&mut self, now: f64, out: &mut Vec<ModelEvent>) {
        let Some(keep) = self.cfg.sources.clone() else {
            return;
        };
        for (id, p) in &mut self.pbxs {
            if keep.contains(&**id) || p.live_calls() == 0 {
                continue;
            }
            tracing::warn!(pbx = %id, calls = p.live_calls(), "closing the calls of a PBX that is no longer configured (approximate records)");
            let t = p.pbx_time(now);
            let emitted = out.len();
            p.mark_all();
            p.snapshot(&self.cfg, &[], t, out);
            p.mark_emitted(&out[emitted..]);
            p.publish();
        }
        for (id, t) in &mut self.teams {
            if keep.contains(&**id) || t.live_calls() == 0 {
                continue;
            }
            tracing::warn!(team = %id, calls = t.live_calls(), "closing the calls of a push team that is no longer configured (approximate records)");
            t.close_all(now, out);
            t.publish();
        }
    }

    /// Puts back stored calls of any kind (AMI calls, push sessions: each
    /// snapshot says which) for `id` (at start). Ids no longer configured
    /// are restored too: the next tick closes their calls.
    pub fn restore_stored(&mut self, id: &PbxId, snapshots: &[Vec<u8>]) -> calls::Restored {
        #[derive(serde::Deserialize)]
        struct Peek {
            session: Option<serde::de::IgnoredAny>,
        }
        let (pushed, ami): (Vec<Vec<u8>>, Vec<Vec<u8>>) = snapshots
            .iter()
            .cloned()
            .partition(|b| serde_json::from_slice::<Peek>(b).is_ok_and(|p| p.session.is_some()));
        let mut r = calls::Restored::default();
        for (n, is_push) in [(ami, false), (pushed, true)] {
            if n.is_empty() {
                continue;
            }
            let x = if is_push {
                self.restore_push(id, &n)
            } else {
                self.restore(id, &n)
            };
            r.calls += x.calls;
            r.skipped += x.skipped;
        }
        r
    }

    /// Drops everything known about a PBX or push team without emitting
    /// anything (cluster mode: another instance owns it now and carries
    /// its calls on). Returns the calls dropped.
    pub fn forget(&mut self, pbx: &str) -> usize {
        let mut n = 0;
        if let Some(p) = self.pbxs.remove(pbx) {
            n += p.live_calls();
            metrics().live_calls.with_label_values(&[pbx]).set(0);
        }
        if let Some(t) = self.teams.remove(pbx) {
            n += t.live_calls();
            metrics().live_calls.with_label_values(&[pbx]).set(0);
        }
        n
    }

    /// Number of calls currently tracked (all PBXs and push teams).
    pub fn live_calls(&self) -> usize {
        self.pbxs
            .values()
            .map(calls::PbxCalls::live_calls)
            .sum::<usize>()
            + self
                .teams
                .values()
                .map(push::PushCalls::live_calls)
                .sum::<usize>()
    }

    /// How far this PBX's (or push team's) clock (its events' `Timestamp`s
    /// or `eventTime`s) is ahead of the local clock, in seconds (0 when
    /// unknown). Event time minus this is local time.
    pub fn clock_offset(&self, pbx: &str) -> f64 {
        match self.pbxs.get(pbx) {
            Some(p) => p.pbx_time(0.0),
            None => self.teams.get(pbx).map_or(0.0, |t| t.pbx_time(0.0)),
        }
    }

    /// What the normalizer holds in memory (all PBXs).
    pub fn tracked(&self) -> Tracked {
        let mut t = Tracked::default();
        for p in self.pbxs.values() {
            t.calls += p.live_calls();
            t.channels += p.channels();
            t.tombstones += p.tombstones();
        }
        for p in self.teams.values() {
            t.calls += p.live_calls();
            t.tombstones += p.tombstones();
        }
        t
    }
}
