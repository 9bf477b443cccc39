//! Series exported at 0 before their first event: the label values the
//! configuration makes known ([`KnownLabels`]) and the fixed label sets.

use super::Metrics;

impl Metrics {
    /// Exports every series whose labels are known from the configuration
    /// at 0, so dashboards and alerts see them before the first event.
    /// Called at start and after each successful reload.
    pub fn init_known_series(&self, known: &KnownLabels<'_>) {
        for p in known.pbx {
            self.ami_connection_state.with_label_values(&[p]);
            self.ami_reconnects.with_label_values(&[p]);
            self.ami_queue_dropped.with_label_values(&[p]);
            for reason in ["oversized", "garbage"] {
                self.ami_packets_skipped.with_label_values(&[p, reason]);
            }
        }
        for p in known.pbx.iter().chain(known.teams) {
            self.live_calls.with_label_values(&[p]);
            for reason in ["max_age", "reconnect"] {
                self.calls_closed_abnormally.with_label_values(&[p, reason]);
            }
        }
        for state in STATES {
            for dir in DIRECTIONS {
                self.leg_transitions.with_label_values(&[state, dir]);
            }
        }
        for dir in DIRECTIONS {
            for disp in DISPOSITIONS {
                self.calls_finished.with_label_values(&[dir, disp]);
            }
        }
        for t in known.targets {
            self.deliveries_enqueued.with_label_values(&[t]);
            self.deliveries_duplicate.with_label_values(&[t]);
            for outcome in ["delivered", "dead", "expired", "rejected"] {
                self.deliveries.with_label_values(&[t, outcome]);
            }
            // The attempt outcomes that are not HTTP codes (`deliver::outcome`).
            for status in ["timeout", "connect", "error", "invalid"] {
                self.delivery_attempts.with_label_values(&[t, status]);
            }
            self.delivery_retries.with_label_values(&[t]);
            self.rate_limit_waits.with_label_values(&[t]);
            self.breaker_state.with_label_values(&[t]);
            self.target_disabled.with_label_values(&[t]);
            self.delivery_seconds.with_label_values(&[t]);
            self.event_to_request_seconds.with_label_values(&[t]);
            self.outbox_waiting.with_label_values(&[t]);
            self.outbox_oldest_waiting_age_seconds
                .with_label_values(&[t]);
            self.lock_outbox_targets().insert(t.to_string());
        }
        for rule in known.rules {
            self.rule_matches.with_label_values(&[rule]);
            self.render_errors.with_label_values(&[rule]);
        }
        for outcome in ["success", "failure"] {
            self.config_reloads.with_label_values(&[outcome]);
        }
        for team in known.teams.iter().chain(["unknown"].iter()) {
            for outcome in PUSH_OUTCOMES {
                self.push_requests.with_label_values(&[team, outcome]);
            }
        }
        for l in known.listeners {
            self.http_connections.with_label_values(&[l]);
            self.http_connection_limit.with_label_values(&[l]);
            self.http_connections_accepted.with_label_values(&[l]);
            for reason in ["total_cap", "per_ip_cap", "accept_error"] {
                self.http_connections_refused
                    .with_label_values(&[l, reason]);
            }
            for reason in [
                "header_timeout",
                "idle_timeout",
                "body_timeout",
                "body_too_large",
                "evicted",
            ] {
                self.http_connections_closed.with_label_values(&[l, reason]);
            }
        }
    }
}

/// Leg and call states (`model::State`), for series exported at 0.
const STATES: [&str; 3] = ["ringing", "answered", "hungup"];
/// Directions (`model::Direction`).
const DIRECTIONS: [&str; 3] = ["incoming", "outgoing", "internal"];
/// Dispositions (`model::Disposition`).
const DISPOSITIONS: [&str; 5] = ["ANSWERED", "NO ANSWER", "BUSY", "FAILED", "ABANDONED"];
/// Outcomes of `callhook_push_requests_total` (`http::push`).
const PUSH_OUTCOMES: [&str; 5] = [
    "accepted",
    "duplicate",
    "unauthorized",
    "bad_request",
    "unavailable",
];

/// The label values the configuration makes known (see
/// [`Metrics::init_known_series`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct KnownLabels<'a> {
    /// PBX ids.
    pub pbx: &'a [&'a str],
    /// Push team names.
    pub teams: &'a [&'a str],
    /// Target names.
    pub targets: &'a [&'a str],
    /// Rule names.
    pub rules: &'a [&'a str],
    /// HTTP listeners (`listen`, `admin`).
    pub listeners: &'a [&'a str],
}
