//! The FastAGI server's metrics (`callhook_agi_*`).

use prometheus::{HistogramVec, IntCounterVec, IntGauge, Registry};

use super::{counter_vec, histogram_vec, single};

/// The FastAGI server's metrics (`agi::`). Route labels come from the
/// configuration.
pub struct AgiMetrics {
    /// Open AGI sessions.
    pub sessions_open: IntGauge,
    /// Sessions by result (routed, fallback, no_route, denied,
    /// pin_refused, caller_hangup, error).
    pub sessions: IntCounterVec,
    /// Connections closed at once, by reason (not_allowed, total_cap,
    /// per_ip_cap, accept_error).
    pub refused: IntCounterVec,
    /// Sessions ended by a protocol problem, by phase (env, command) and
    /// kind (timeout, closed, io, protocol).
    pub protocol_errors: IntCounterVec,
    /// Calls that took a route, by route.
    pub route_matches: IntCounterVec,
    /// Authorization failures by route and reason (denied, pin).
    pub auth_failures: IntCounterVec,
    /// CRM lookups by route and result (ok, cached, timeout, error, invalid).
    pub crm_requests: IntCounterVec,
    /// CRM lookup time by route (cache hits not included).
    pub crm_seconds: HistogramVec,
    /// Actions skipped because a value failed its check, by route.
    pub action_errors: IntCounterVec,
}

impl AgiMetrics {
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            sessions_open: single(
                r,
                "callhook_agi_sessions",
                "Open FastAGI sessions",
                IntGauge::with_opts,
            ),
            sessions: counter_vec(
                r,
                "callhook_agi_sessions_total",
                "FastAGI sessions by result",
                &["result"],
            ),
            refused: counter_vec(
                r,
                "callhook_agi_connections_refused_total",
                "FastAGI connections closed at once, by reason",
                &["reason"],
            ),
            protocol_errors: counter_vec(
                r,
                "callhook_agi_protocol_errors_total",
                "FastAGI sessions ended by a protocol problem, by phase and kind",
                &["phase", "kind"],
            ),
            route_matches: counter_vec(
                r,
                "callhook_agi_route_matches_total",
                "Calls that took an AGI route",
                &["route"],
            ),
            auth_failures: counter_vec(
                r,
                "callhook_agi_auth_failures_total",
                "AGI authorization failures by route and reason (denied, pin)",
                &["route", "reason"],
            ),
            crm_requests: counter_vec(
                r,
                "callhook_agi_crm_requests_total",
                "AGI CRM lookups by route and result",
                &["route", "result"],
            ),
            crm_seconds: histogram_vec(
                r,
                "callhook_agi_crm_seconds",
                "AGI CRM lookup time",
                &["route"],
                vec![0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0],
            ),
            action_errors: counter_vec(
                r,
                "callhook_agi_action_errors_total",
                "AGI actions skipped because a value failed its check",
                &["route"],
            ),
        }
    }

    /// Exports the series of the configured routes (and the fixed label
    /// sets) at 0.
    pub fn init_series(&self, routes: &[&str]) {
        for result in [
            "routed",
            "fallback",
            "no_route",
            "denied",
            "pin_refused",
            "caller_hangup",
            "error",
        ] {
            self.sessions.with_label_values(&[result]);
        }
        for reason in ["not_allowed", "total_cap", "per_ip_cap", "accept_error"] {
            self.refused.with_label_values(&[reason]);
        }
        for route in routes {
            self.route_matches.with_label_values(&[route]);
            self.action_errors.with_label_values(&[route]);
            for reason in ["denied", "pin"] {
                self.auth_failures.with_label_values(&[route, reason]);
            }
        }
    }
}
