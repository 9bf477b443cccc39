//! The AMI proxy's metrics (`callhook_ami_proxy_*`).

use prometheus::{IntCounterVec, IntGauge, Registry};

use super::{counter_vec, single};

/// The AMI proxy (`ami_proxy:`, `crate::proxy`). `user` labels are the
/// configured proxy users.
pub struct ProxyMetrics {
    /// Clients connected now.
    pub connections: IntGauge,
    /// Connections refused at once, by reason (`total_cap`, `per_ip_cap`,
    /// `login_blocked`: too many failed logins from that address).
    pub refused: IntCounterVec,
    /// Login attempts by result (`success`, `failure`, `timeout`).
    pub logins: IntCounterVec,
    /// Clients disconnected, by reason (`logoff`, `closed`, `overflow`,
    /// `lagged`, `write_timeout`, `write_error`, `read_error`,
    /// `login_failed`, `login_timeout`, `bad_packets`, `shutdown`).
    pub disconnects: IntCounterVec,
    /// Client actions by user and outcome (`success`, `error`, `timeout`,
    /// `disconnected`, `refused`, `link_down`, `local`).
    pub actions: IntCounterVec,
    /// Events written to clients, by user.
    pub events: IntCounterVec,
    /// Events the proxy could not fan out in time, by PBX (its clients
    /// were disconnected).
    pub events_lost: IntCounterVec,
    /// Client packets dropped by the framer, by reason (`oversized`, `garbage`).
    pub packets_skipped: IntCounterVec,
    /// Times a client hit `max_actions_per_second` (its socket was not
    /// read until a token was back), by user.
    pub throttled: IntCounterVec,
}

impl ProxyMetrics {
    pub(super) fn new(r: &Registry) -> Self {
        let connections = single(
            r,
            "callhook_ami_proxy_connections",
            "AMI proxy clients connected now",
            IntGauge::with_opts,
        );
        Self {
            connections,
            refused: counter_vec(
                r,
                "callhook_ami_proxy_connections_refused_total",
                "AMI proxy connections refused at once",
                &["reason"],
            ),
            logins: counter_vec(
                r,
                "callhook_ami_proxy_logins_total",
                "AMI proxy login attempts",
                &["result"],
            ),
            disconnects: counter_vec(
                r,
                "callhook_ami_proxy_disconnects_total",
                "AMI proxy clients disconnected",
                &["reason"],
            ),
            actions: counter_vec(
                r,
                "callhook_ami_proxy_actions_total",
                "AMI proxy client actions",
                &["user", "outcome"],
            ),
            events: counter_vec(
                r,
                "callhook_ami_proxy_events_total",
                "Events the AMI proxy wrote to clients",
                &["user"],
            ),
            events_lost: counter_vec(
                r,
                "callhook_ami_proxy_events_lost_total",
                "Events the AMI proxy could not fan out in time",
                &["pbx"],
            ),
            packets_skipped: counter_vec(
                r,
                "callhook_ami_proxy_packets_skipped_total",
                "AMI proxy client packets dropped by the framer",
                &["reason"],
            ),
            throttled: counter_vec(
                r,
                "callhook_ami_proxy_throttled_total",
                "Times an AMI proxy client hit its action rate",
                &["user"],
            ),
        }
    }
}
