//! Every Prometheus metric callhook exports is declared here, and only here.
//!
//! Naming: `callhook_` prefix, `_total` for counters, `_seconds` for
//! durations. Labels are bounded: PBX ids come from the config, event names
//! are folded into a fixed set ([`event_label`]), and caller numbers or call
//! ids never become labels.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metrics, registered in one registry.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// AMI events received, by PBX and event name (bounded set).
    pub ami_events: IntCounterVec,
    /// AMI connection state by PBX: 0 down, 1 connecting, 2 logged in.
    pub ami_connection_state: IntGaugeVec,
    /// AMI connection attempts that followed a lost or failed connection.
    pub ami_reconnects: IntCounterVec,
    /// AMI packets skipped by the framer (reason: oversized, garbage).
    pub ami_packets_skipped: IntCounterVec,
    /// Events dropped because the queue to the normalizer was full.
    pub ami_queue_dropped: IntCounterVec,
    /// Actions sent, by PBX, action and outcome (success, error, timeout, disconnected).
    pub ami_actions: IntCounterVec,
    /// Calls currently tracked by the normalizer, by PBX.
    pub live_calls: IntGaugeVec,
    /// Leg transitions emitted, by state and direction.
    pub leg_transitions: IntCounterVec,
    /// Calls finished, by direction and disposition.
    pub calls_finished: IntCounterVec,
    /// Calls closed without a hangup: reason `max_age` or `reconnect`.
    pub calls_closed_abnormally: IntCounterVec,
    /// Events the normalizer ignored, by reason (late, unknown_channel, …).
    pub normalizer_ignored: IntCounterVec,
    /// Time the normalizer spends on one event.
    pub normalize_seconds: Histogram,
    /// Lines of replay/daemon output that could not be written.
    pub output_errors: IntCounter,
    /// Rule matches, by rule.
    pub rule_matches: IntCounterVec,
    /// Templates that failed to render at fire time, by rule.
    pub render_errors: IntCounterVec,
    /// Deliveries written to the outbox, by target.
    pub deliveries_enqueued: IntCounterVec,
    /// Deliveries not enqueued because their idempotency key was already there, by target.
    pub deliveries_duplicate: IntCounterVec,
    /// Deliveries by final outcome (delivered, dead, expired, rejected), counted once each.
    pub deliveries: IntCounterVec,
    /// HTTP attempts by target and status (`200`, `429`, `5xx`…, or `error`/`timeout`).
    pub delivery_attempts: IntCounterVec,
    /// Attempts scheduled again after a failure, by target.
    pub delivery_retries: IntCounterVec,
    /// Deliveries waiting in the outbox.
    pub outbox_depth: IntGauge,
    /// Age of the oldest waiting delivery.
    pub outbox_oldest_age_seconds: Gauge,
    /// Deliveries refused because the outbox was at its cap.
    pub outbox_full: IntCounter,
    /// HTTP request latency by target.
    pub delivery_seconds: HistogramVec,
    /// From the call event to the first attempt, by target.
    pub event_to_request_seconds: HistogramVec,
    /// Times a delivery waited for its target's rate limit.
    pub rate_limit_waits: IntCounterVec,
    /// Breaker state by target: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// 1 when a target was disabled by a `410 Gone`.
    pub target_disabled: IntGaugeVec,
    /// 1 when the last configuration reload succeeded.
    pub config_last_reload_successful: IntGauge,
    /// Reloads by outcome (success, failure).
    pub config_reloads: IntCounterVec,
    /// Push endpoint requests by team (configured teams, else `unknown`)
    /// and outcome (accepted, duplicate, unauthorized, bad_request, unavailable).
    pub push_requests: IntCounterVec,
    /// Presence inputs by kind (extension_status, device_state,
    /// registration, hold, state_list, model, other).
    pub presence_inputs: IntCounterVec,
    /// Presence inputs ignored, by reason (bad_status, bad_extension,
    /// table_full, too_many_calls).
    pub presence_ignored: IntCounterVec,
    /// Extension state changes, by new state.
    pub presence_changes: IntCounterVec,
    /// Presence inputs dropped because a queue was full (queue: source, model).
    pub presence_dropped: IntCounterVec,
    /// Extensions in the presence tables.
    pub presence_extensions: IntGauge,
    /// Calls dropped from the presence table because the model never ended
    /// them (presence.max_ringing, calls.max_age).
    pub presence_calls_expired: IntCounter,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &M
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    g
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, name: &str, m: T) -> T {
    r.register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    m
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    register(r, name, h)
}

impl Metrics {
    // The panics below can only fire on a programming error in this file
    // (a malformed or duplicated metric name), never on input.
    fn new() -> Self {
        let r = Registry::new();
        let normalize_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "callhook_normalize_seconds",
                "Time spent normalizing one source event",
            )
            .buckets(vec![1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 1e-2]),
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        r.register(Box::new(normalize_seconds.clone()))
            .unwrap_or_else(|e| panic!("histogram: {e}"));
        let output_errors = IntCounter::new(
            "callhook_output_errors_total",
            "Model events that could not be written to the output",
        )
        .unwrap_or_else(|e| panic!("counter: {e}"));
        r.register(Box::new(output_errors.clone()))
            .unwrap_or_else(|e| panic!("counter: {e}"));
        Self {
            ami_events: counter_vec(
                &r,
                "callhook_ami_events_total",
                "AMI events received",
                &["pbx", "event"],
            ),
            ami_connection_state: gauge_vec(
                &r,
                "callhook_ami_connection_state",
                "AMI connection state: 0 down, 1 connecting, 2 logged in",
                &["pbx"],
            ),
            ami_reconnects: counter_vec(
                &r,
                "callhook_ami_reconnects_total",
                "AMI reconnection attempts",
                &["pbx"],
            ),
            ami_packets_skipped: counter_vec(
                &r,
                "callhook_ami_packets_skipped_total",
                "AMI packets skipped by the framer",
                &["pbx", "reason"],
            ),
            ami_queue_dropped: counter_vec(
                &r,
                "callhook_ami_queue_dropped_total",
                "AMI events dropped because the normalizer queue was full",
                &["pbx"],
            ),
            ami_actions: counter_vec(
                &r,
                "callhook_ami_actions_total",
                "AMI actions sent, by outcome",
                &["pbx", "action", "outcome"],
            ),
            live_calls: gauge_vec(
                &r,
                "callhook_live_calls",
                "Calls currently tracked",
                &["pbx"],
            ),
            leg_transitions: counter_vec(
                &r,
                "callhook_leg_transitions_total",
                "Leg state transitions emitted",
                &["state", "direction"],
            ),
            calls_finished: counter_vec(
                &r,
                "callhook_calls_finished_total",
                "Calls finished",
                &["direction", "disposition"],
            ),
            calls_closed_abnormally: counter_vec(
                &r,
                "callhook_calls_closed_abnormally_total",
                "Calls closed without a hangup event",
                &["pbx", "reason"],
            ),
            normalizer_ignored: counter_vec(
                &r,
                "callhook_normalizer_ignored_total",
                "Events the normalizer ignored",
                &["reason"],
            ),
            normalize_seconds,
            output_errors,
            rule_matches: counter_vec(&r, "callhook_rule_matches_total", "Rule matches", &["rule"]),
            render_errors: counter_vec(
                &r,
                "callhook_render_errors_total",
                "Templates that failed to render",
                &["rule"],
            ),
            deliveries_enqueued: counter_vec(
                &r,
                "callhook_deliveries_enqueued_total",
                "Deliveries written to the outbox",
                &["target"],
            ),
            deliveries_duplicate: counter_vec(
                &r,
                "callhook_deliveries_duplicate_total",
                "Deliveries skipped: idempotency key already enqueued",
                &["target"],
            ),
            deliveries: counter_vec(
                &r,
                "callhook_deliveries_total",
                "Deliveries by final outcome",
                &["target", "outcome"],
            ),
            delivery_attempts: counter_vec(
                &r,
                "callhook_delivery_attempts_total",
                "HTTP attempts by status",
                &["target", "status"],
            ),
            delivery_retries: counter_vec(
                &r,
                "callhook_delivery_retries_total",
                "Attempts scheduled again after a failure",
                &["target"],
            ),
            outbox_depth: register(
                &r,
                "callhook_outbox_depth",
                IntGauge::new("callhook_outbox_depth", "Deliveries waiting in the outbox")
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            outbox_oldest_age_seconds: register(
                &r,
                "callhook_outbox_oldest_age_seconds",
                Gauge::new(
                    "callhook_outbox_oldest_age_seconds",
                    "Age of the oldest waiting delivery",
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            outbox_full: register(
                &r,
                "callhook_outbox_full_total",
                IntCounter::new(
                    "callhook_outbox_full_total",
                    "Deliveries refused: outbox at its cap",
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            delivery_seconds: histogram_vec(
                &r,
                "callhook_delivery_seconds",
                "HTTP request latency",
                &["target"],
                vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            event_to_request_seconds: histogram_vec(
                &r,
                "callhook_event_to_request_seconds",
                "From the call event to the first attempt",
                &["target"],
                vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
                ],
            ),
            rate_limit_waits: counter_vec(
                &r,
                "callhook_rate_limit_waits_total",
                "Deliveries that waited for the rate limit",
                &["target"],
            ),
            breaker_state: gauge_vec(
                &r,
                "callhook_breaker_state",
                "Circuit breaker: 0 closed, 1 half-open, 2 open",
                &["target"],
            ),
            target_disabled: gauge_vec(
                &r,
                "callhook_target_disabled",
                "1 when a target answered 410 Gone and was disabled",
                &["target"],
            ),
            config_last_reload_successful: register(
                &r,
                "callhook_config_last_reload_successful",
                IntGauge::new(
                    "callhook_config_last_reload_successful",
                    "1 when the last reload succeeded",
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            config_reloads: counter_vec(
                &r,
                "callhook_config_reloads_total",
                "Configuration reloads by outcome",
                &["outcome"],
            ),
            push_requests: counter_vec(
                &r,
                "callhook_push_requests_total",
                "Push endpoint requests by team and outcome",
                &["team", "outcome"],
            ),
            presence_inputs: counter_vec(
                &r,
                "callhook_presence_inputs_total",
                "Presence inputs by kind",
                &["kind"],
            ),
            presence_ignored: counter_vec(
                &r,
                "callhook_presence_ignored_total",
                "Presence inputs ignored, by reason",
                &["reason"],
            ),
            presence_changes: counter_vec(
                &r,
                "callhook_presence_changes_total",
                "Extension state changes, by new state",
                &["state"],
            ),
            presence_dropped: counter_vec(
                &r,
                "callhook_presence_dropped_total",
                "Presence inputs dropped because a queue was full",
                &["queue"],
            ),
            presence_extensions: register(
                &r,
                "callhook_presence_extensions",
                IntGauge::new(
                    "callhook_presence_extensions",
                    "Extensions in the presence tables",
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            presence_calls_expired: register(
                &r,
                "callhook_presence_calls_expired_total",
                IntCounter::new(
                    "callhook_presence_calls_expired_total",
                    "Calls dropped from the presence table because the model never ended them",
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            registry: r,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Folds an AMI event name into a bounded label set: the events callhook
/// uses keep their name, everything else is `other`.
pub fn event_label(event: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Newchannel",
        "Newstate",
        "NewCallerid",
        "NewConnectedLine",
        "Newexten",
        "DialBegin",
        "DialState",
        "DialEnd",
        "Dial",
        "BridgeCreate",
        "BridgeEnter",
        "BridgeLeave",
        "BridgeDestroy",
        "Bridge",
        "Link",
        "Unlink",
        "LocalBridge",
        "Hangup",
        "HangupRequest",
        "SoftHangupRequest",
        "QueueCallerJoin",
        "QueueCallerLeave",
        "QueueCallerAbandon",
        "Join",
        "Leave",
        "AgentCalled",
        "AgentConnect",
        "AgentComplete",
        "AgentRingNoAnswer",
        "AgentDump",
        "Masquerade",
        "Rename",
        "BlindTransfer",
        "AttendedTransfer",
        "Transfer",
        "OriginateResponse",
        "Cdr",
        "VarSet",
        "FullyBooted",
        "LocalOptimizationBegin",
        "LocalOptimizationEnd",
    ];
    KNOWN
        .iter()
        .find(|k| k.eq_ignore_ascii_case(event))
        .copied()
        .unwrap_or("other")
}
