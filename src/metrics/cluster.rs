//! Cluster mode's metrics (`callhook_cluster_*`).

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Registry};

use super::{gauge_vec, single};

/// Cluster mode (`cluster:`, `crate::cluster`).
pub struct ClusterMetrics {
    /// Live instances this one sees.
    pub members: IntGauge,
    /// Leases this instance holds, by kind (`pbx`, `team`).
    pub owned: IntGaugeVec,
    /// Model events not turned into deliveries because this instance no
    /// longer owned their PBX or team (after a lost lease).
    pub fenced_events: IntCounter,
    /// Entries of the calls bucket that could not be decoded, purged by
    /// the load that found them (`cluster::calls`).
    pub undecodable_call_states: IntCounter,
    /// Pulled deliveries this instance left to JetStream without sending,
    /// acknowledging or retrying them, because it could not confirm it
    /// still held them (held past the ack wait: paused, stalled;
    /// `cluster::hold`).
    pub lost_holds: IntCounter,
}

impl ClusterMetrics {
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            members: single(
                r,
                "callhook_cluster_members",
                "Cluster mode: live instances this one sees",
                IntGauge::with_opts,
            ),
            owned: gauge_vec(
                r,
                "callhook_cluster_owned",
                "Cluster mode: leases this instance holds, by kind",
                &["kind"],
            ),
            fenced_events: single(
                r,
                "callhook_cluster_fenced_events_total",
                "Cluster mode: events dropped because their PBX or team is no longer owned here",
                IntCounter::with_opts,
            ),
            undecodable_call_states: single(
                r,
                "callhook_cluster_undecodable_call_states_total",
                "Cluster mode: entries of the calls bucket that could not be decoded, purged",
                IntCounter::with_opts,
            ),
            lost_holds: single(
                r,
                "callhook_cluster_lost_holds_total",
                "Cluster mode: pulled deliveries left to JetStream unsent or unacknowledged, held past the ack wait",
                IntCounter::with_opts,
            ),
        }
    }
}
