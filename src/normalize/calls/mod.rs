//! Per-PBX channel and call tables: the call state machine.
//!
//! Grouping. A channel belongs to exactly one call. With a `Linkedid`
//! (Asterisk 12+) the call is the Linkedid, and a Linkedid change merges the
//! two calls. Without one (Asterisk ≤ 11) every channel starts as its own
//! provisional call and calls are merged (union-find style) when the stream
//! ties two channels together: `Dial` Begin, `Bridge` Link, `LocalBridge`,
//! the Local `;1`/`;2` name stem, `AgentCalled`/`AgentConnect`,
//! `Masquerade`, a snapshot's bridged peer. The survivor is the call whose
//! first channel is older, so the session id is the Uniqueid of the call's
//! first channel — what the PBX itself records as the linkedid. A call's
//! former keys (the call merged into it, the key it had before a Linkedid
//! re-keyed it) stay its aliases while it lives: a channel or Linkedid
//! naming one joins it, never a second call under the old key (whose
//! leg ids the live call carries), and at its end they become tombstones.
//!
//! Two ≤ 11 situations have no tie in the stream and are decided by rule
//! (documented in the README):
//! - a ringing extension channel that nothing ties to a call within
//!   `orphan_grace` is a queue member when its connected line is the number
//!   of exactly one caller waiting in a queue (app_queue without
//!   `eventwhencalled`), otherwise it is the first leg of an originated call
//!   (click-to-call);
//! - a Local channel pair created outside any call (features' attended
//!   transfer) that dials on behalf of an extension currently talking in
//!   exactly one call joins that call (the PBX gives it that call's linkedid).
//!
//! Emission. Leg and call states are monotonic and emitted once each; a call
//! that never said anything (a lone channel that never rang, a placeholder)
//! leaves no record. A finished call's channel ids are remembered for
//! `late_event_window`, so late or duplicated events never open a new call.
//!
//! Layout: this file holds [`PbxCalls`] (the per-PBX tables, clock and
//! time-driven decisions); `channels` the channel table and tombstones;
//! `grouping` which call a channel belongs to; `call` one call's facts,
//! call-scope state machine and record; `leg` the leg state machine;
//! `pickup` call pickup and ≤ 11 masquerades (a device taking another
//! channel's place); `originate` click-to-call outcomes;
//! `events` maps each canonical event to these; `snapshot` reconciles
//! after a (re)login. Per-call state (`Call` with its `Leg`s, `Chan`) is
//! plain owned data.

mod call;
mod channels;
mod events;
mod grouping;
mod leg;
mod originate;
mod persist;
mod pickup;
mod snapshot;

pub use persist::{Restored, SNAPSHOT_VERSION};

use std::collections::VecDeque;

use tracing::debug;

use super::{FastMap, NormalizerConfig};
use crate::metrics::metrics;
use crate::model::{EndReason, ModelEvent};
use crate::source::PbxId;

use call::Call;

/// One warning per minute when a PBX or team is at `calls.max_live`.
static AT_CAPACITY: crate::log_limit::LogLimiter =
    crate::log_limit::LogLimiter::new(std::time::Duration::from_secs(60));

/// A new call of `pbx` (a PBX or a push team) was not taken because it
/// already has `calls` calls in progress (`calls.max_live`): counted, and
/// warned about at most once a minute. `what` says what happened to it.
pub(crate) fn refused_at_capacity(pbx: &str, calls: usize, max_live: usize, what: &str) {
    metrics()
        .normalizer_ignored
        .with_label_values(&["max_live"])
        .inc();
    if let Some(suppressed) = AT_CAPACITY.check() {
        tracing::warn!(
            pbx,
            calls,
            max_live,
            suppressed,
            "too many calls in progress (calls.max_live): {what}"
        );
    }
}

/// Ids, names and numbers held per channel and call: inline up to 24 bytes
/// (every Uniqueid, channel name and phone number in practice), so a live
/// call costs a few allocations, not dozens.
pub(super) type Str = compact_str::CompactString;

/// Appends without the usual growth to 4 slots: a call has one or two
/// channels, legs, rung extensions; thousands of live calls add up.
pub(super) fn push_exact<T>(v: &mut Vec<T>, x: T) {
    v.reserve_exact(1);
    v.push(x);
}

/// A held string as the model's (owned, plain) `String`.
pub(super) fn owned(s: &Str) -> String {
    s.as_str().to_owned()
}

/// An optional held string as the model's.
pub(super) fn owned_opt(s: &Option<Str>) -> Option<String> {
    s.as_deref().map(str::to_owned)
}
use channels::Chan;

/// Everything about one PBX.
#[derive(Debug)]
pub struct PbxCalls {
    pbx: PbxId,
    chans: FastMap<Str, Box<Chan>>,
    by_name: FastMap<Str, Str>,
    calls: FastMap<Str, Box<Call>>,
    /// Former keys of live calls (merged into another, or re-keyed under a
    /// new Linkedid) → the key the call has now: a channel or Linkedid that
    /// names one joins that call instead of opening a new one under the
    /// old key (whose leg ids the live call still carries). Entries go
    /// when the call ends (its aliases become tombstones).
    renamed: FastMap<Str, Str>,
    tombstones: FastMap<Str, f64>,
    tomb_order: VecDeque<(f64, Str)>,
    /// ≤ 11 ringing channels not tied to anything yet: (uid, decide at, rang at).
    pending: Vec<(Str, f64, f64)>,
    /// Originates this connection sent, waiting for their outcome.
    originates: originate::Originates,
    disconnected_at: Option<f64>,
    live_gauge: prometheus::IntGauge,
    /// PBX clock minus local clock, from the last event with a `Timestamp`:
    /// time-driven decisions ([`Normalizer::tick`](super::Normalizer::tick))
    /// run on the PBX's clock, whatever the local one says.
    skew: f64,
    /// Calls changed since they were last taken to be stored (see
    /// `persist`).
    dirty: persist::Dirty,
    /// The headers of the event being handled that name a channel: (field
    /// index, by id), see `persist::mark_named`.
    named: Vec<(u32, bool)>,
    /// A channel, a call or a channel name came, went or moved to another
    /// call since `persist::mark_named` (set by every change of the
    /// channel, name and call tables' keys and of a channel's call): only
    /// then can the headers of the event name other calls after it.
    regrouped: bool,
}

fn meaningful_exten(e: &str) -> bool {
    let e = e.trim();
    !(e.is_empty() || e.len() == 1 || e.eq_ignore_ascii_case("failed"))
}

/// Orders dial outcomes: the strongest one wins for a destination.
fn status_rank(s: &str) -> u8 {
    match s.to_ascii_uppercase().as_str() {
        "ANSWER" => 5,
        "BUSY" => 4,
        "NOANSWER" => 3,
        "CHANUNAVAIL" | "CONGESTION" => 2,
        "CANCEL" => 1,
        _ => 0,
    }
}

impl PbxCalls {
    /// Empty tables for one PBX.
    pub fn new(pbx: PbxId) -> Self {
        Self {
            chans: FastMap::default(),
            by_name: FastMap::default(),
            calls: FastMap::default(),
            renamed: FastMap::default(),
            tombstones: FastMap::default(),
            tomb_order: VecDeque::new(),
            pending: Vec::new(),
            originates: Default::default(),
            disconnected_at: None,
            live_gauge: metrics().live_calls.with_label_values(&[&pbx]),
            skew: 0.0,
            dirty: Default::default(),
            named: Vec::new(),
            regrouped: false,
            pbx,
        }
    }

    /// The key of the live call `key` names: itself, or the call it was
    /// merged into or re-keyed as.
    fn current<'a>(&'a self, key: &'a str) -> &'a str {
        self.renamed.get(key).map_or(key, |k| k.as_str())
    }

    /// Call `call`'s former key `old` (and every key it had before) now
    /// names `call`.
    fn rename(&mut self, old: &str, call: &str) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        if old != call && !c.aliases.iter().any(|a| a == old) {
            push_exact(&mut c.aliases, Str::from(old));
        }
        for a in &c.aliases {
            self.renamed.insert(a.clone(), c.session.clone());
        }
    }

    /// Records the PBX clock's offset from the local clock.
    pub fn observe_clock(&mut self, event_time: f64, received_at: f64) {
        self.skew = event_time - received_at;
    }

    /// Local time → this PBX's clock.
    pub fn pbx_time(&self, local: f64) -> f64 {
        local + self.skew
    }

    /// Publishes the live-call gauge.
    pub fn publish(&self) {
        self.live_gauge.set(self.calls.len() as i64);
    }

    /// Calls currently tracked.
    pub fn live_calls(&self) -> usize {
        self.calls.len()
    }

    /// Channels currently tracked.
    pub fn channels(&self) -> usize {
        self.chans.len()
    }

    /// Finished channel ids remembered for late events.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    fn ignored(reason: &str) {
        metrics()
            .normalizer_ignored
            .with_label_values(&[reason])
            .inc();
    }

    /// Decides ≤ 11 ringing channels whose grace period is over.
    pub fn advance(&mut self, cfg: &NormalizerConfig, now: f64, out: &mut Vec<ModelEvent>) {
        while let Some(pos) = self.pending.iter().position(|(_, due, _)| *due <= now) {
            let (uid, _, rang_at) = self.pending.remove(pos);
            self.decide_orphan(cfg, &uid, rang_at, out);
        }
        self.prune_tombstones(cfg, now);
        self.advance_originates(now);
    }

    /// Closes calls older than the maximum age.
    pub fn expire(&mut self, cfg: &NormalizerConfig, now: f64, out: &mut Vec<ModelEvent>) {
        let old: Vec<(Str, f64)> = self
            .calls
            .values()
            .filter(|c| {
                let started = self
                    .chans
                    .get(&c.root)
                    .map_or(c.last_activity, |r| r.created_at);
                now - started > cfg.max_call_age
            })
            .map(|c| (c.session.clone(), c.last_activity))
            .collect();
        for (session, last) in old {
            debug!(pbx = %self.pbx, %session, "closing a call past its maximum age");
            self.end_call(
                &session,
                last.max(now - cfg.max_call_age).min(now),
                EndReason::MaxAge,
                out,
            );
        }
    }

    /// The AMI connection was lost.
    pub fn disconnected(&mut self, at: f64) {
        self.disconnected_at = Some(at);
    }
}
