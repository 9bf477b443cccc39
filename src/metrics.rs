//! Every Prometheus metric callhook exports is declared here, and only here.
//!
//! Naming: `callhook_` prefix, `_total` for counters, `_seconds` for
//! durations. Labels are bounded: PBX ids come from the config, event names
//! are folded into a fixed set ([`event_label`]), and caller numbers or call
//! ids never become labels.
//!
//! One concept a file: the [`Metrics`] registry (every callhook metric,
//! one flat struct: add new metrics here), the series exported at 0
//! ([`KnownLabels`], `series`), bounded labels (`labels`), and the metric
//! groups of the AMI proxy (`proxy`), the FastAGI server (`agi`) and the
//! process (`process`).

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

mod agi;
mod cluster;
mod labels;
mod process;
mod proxy;
mod series;

pub use agi::AgiMetrics;
pub use cluster::ClusterMetrics;
pub use labels::{action_label, event_label};
pub use process::ProcessMetrics;
pub use proxy::ProxyMetrics;
pub use series::KnownLabels;

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
    /// Outbox rows that could not be decoded (a damaged file) and were
    /// moved aside as dead.
    pub outbox_damaged_rows: IntCounter,
    /// Template values cut to `templates.max_value_length`.
    pub template_values_truncated: IntCounter,
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
    /// 1 for each setting (`key`, one of [`CONFIG_RESTART_KEYS`])
    /// whose reloaded value waits for a restart.
    pub config_restart_required: IntGaugeVec,
    /// Push endpoint requests by team (configured teams, else `unknown`)
    /// and outcome (accepted, duplicate, unauthorized, bad_request, unavailable).
    pub push_requests: IntCounterVec,
    /// Live clients connected (WebSocket, SSE, Meetip).
    pub live_clients: IntGauge,
    /// Live messages delivered to clients, by type (bounded set).
    pub live_messages: IntCounterVec,
    /// Live messages not delivered or clients dropped, by reason
    /// (`slow_client`, `resnapshot`, `slow_disconnected`, `resume_too_old`, `input_full`, `presence_resync`).
    pub live_dropped: IntCounterVec,
    /// Live credential failures by reason (`missing`, `bad_credential`, `expired`).
    pub live_auth_failures: IntCounterVec,
    /// Live connections refused by limit (`rate`, `max_clients`, `max_clients_per_tenant`, `unknown_tenant`, `meetip_login_rate`, `auth_blocked`, `meetip_unknown_extension`, `message_too_big`).
    pub live_refused: IntCounterVec,
    /// Live clients dropped for missing heartbeats.
    pub live_heartbeat_timeouts: IntCounter,
    /// From the hub publishing a message to a client's session taking it.
    pub live_latency_seconds: Histogram,
    /// Click-to-call requests by outcome (final status, or why refused).
    pub originate_requests: IntCounterVec,
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
    /// Open inbound HTTP connections, by listener (`listen`, `admin`).
    pub http_connections: IntGaugeVec,
    /// The connection cap in force, by listener.
    pub http_connection_limit: IntGaugeVec,
    /// Inbound connections accepted, by listener.
    pub http_connections_accepted: IntCounterVec,
    /// Inbound connections refused at once, by listener and reason
    /// (`total_cap`, `per_ip_cap`, `accept_error`).
    pub http_connections_refused: IntCounterVec,
    /// Inbound connections the server closed, by listener and reason
    /// (`header_timeout`, `idle_timeout`, `body_timeout`, `body_too_large`,
    /// `evicted`).
    pub http_connections_closed: IntCounterVec,
    /// Admin requests (reload, admin API, …) without the right token.
    pub admin_unauthorized: IntCounter,
    /// Always 1, labelled with the version and commit.
    pub build_info: IntGaugeVec,
    /// When the configuration last loaded successfully (start or reload).
    pub config_last_reload_success_timestamp_seconds: Gauge,
    /// Deliveries waiting in the outbox, by target.
    pub outbox_waiting: IntGaugeVec,
    /// Age of the oldest waiting delivery, by target (0 when none waits).
    pub outbox_oldest_waiting_age_seconds: GaugeVec,
    /// Targets whose outbox gauges were set (to reset them to 0 when drained).
    outbox_targets: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Process metrics (standard names, refreshed at every render).
    pub process: ProcessMetrics,
    /// The FastAGI server.
    pub agi: AgiMetrics,
    /// The AMI proxy's metrics.
    pub ami_proxy: ProxyMetrics,
    /// Cluster mode's metrics.
    pub cluster: ClusterMetrics,
}

/// The settings a reload can only apply at the next restart: the `key`
/// label of `callhook_config_restart_required` (see `config::reload`).
pub const CONFIG_RESTART_KEYS: &[&str] = &[
    "listen",
    "state_dir",
    "outbox",
    "admin",
    "push",
    "push.path",
    "push.token_param",
    "push.token_header",
    "pbx.queue_capacity",
    "cluster",
    "presence",
    "agi",
    "agi.listen",
    "agi.limits",
    "ami_proxy",
];

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &M
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    register(r, name, c)
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    register(r, name, g)
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, name: &str, m: T) -> T {
    r.register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    m
}

/// A counter or gauge without labels (`new`: its `with_opts`), registered.
fn single<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    name: &str,
    help: &str,
    new: fn(Opts) -> prometheus::Result<T>,
) -> T {
    let m =
        new(Opts::new(name, help)).unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    register(r, name, m)
}

/// A histogram without labels, registered.
fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    register(r, name, h)
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
        let normalize_seconds = histogram(
            &r,
            "callhook_normalize_seconds",
            "Time spent normalizing one source event",
            vec![1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 1e-2],
        );
        let output_errors = single(
            &r,
            "callhook_output_errors_total",
            "Model events that could not be written to the output",
            IntCounter::with_opts,
        );
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
            outbox_depth: single(
                &r,
                "callhook_outbox_depth",
                "Deliveries waiting in the outbox",
                IntGauge::with_opts,
            ),
            outbox_oldest_age_seconds: single(
                &r,
                "callhook_outbox_oldest_age_seconds",
                "Age of the oldest waiting delivery",
                Gauge::with_opts,
            ),
            outbox_full: single(
                &r,
                "callhook_outbox_full_total",
                "Deliveries refused: outbox at its cap",
                IntCounter::with_opts,
            ),
            outbox_damaged_rows: single(
                &r,
                "callhook_outbox_damaged_rows_total",
                "Outbox rows that could not be decoded and were moved aside as dead",
                IntCounter::with_opts,
            ),
            template_values_truncated: single(
                &r,
                "callhook_template_values_truncated_total",
                "Template values cut to templates.max_value_length",
                IntCounter::with_opts,
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
            config_last_reload_successful: single(
                &r,
                "callhook_config_last_reload_successful",
                "1 when the last reload succeeded",
                IntGauge::with_opts,
            ),
            config_reloads: counter_vec(
                &r,
                "callhook_config_reloads_total",
                "Configuration reloads by outcome",
                &["outcome"],
            ),
            config_restart_required: {
                let g = gauge_vec(
                    &r,
                    "callhook_config_restart_required",
                    "1 when a reloaded setting (key) only takes effect after a restart",
                    &["key"],
                );
                for k in CONFIG_RESTART_KEYS {
                    g.with_label_values(&[k]).set(0);
                }
                g
            },
            push_requests: counter_vec(
                &r,
                "callhook_push_requests_total",
                "Push endpoint requests by team and outcome",
                &["team", "outcome"],
            ),
            live_clients: single(
                &r,
                "callhook_live_clients",
                "Live clients connected",
                IntGauge::with_opts,
            ),
            live_messages: counter_vec(
                &r,
                "callhook_live_messages_total",
                "Live messages delivered to clients, by type",
                &["type"],
            ),
            live_dropped: counter_vec(
                &r,
                "callhook_live_dropped_total",
                "Live messages not delivered or clients dropped, by reason",
                &["reason"],
            ),
            live_auth_failures: counter_vec(
                &r,
                "callhook_live_auth_failures_total",
                "Live credential failures by reason",
                &["reason"],
            ),
            live_refused: counter_vec(
                &r,
                "callhook_live_connections_refused_total",
                "Live connections refused by limit",
                &["reason"],
            ),
            live_heartbeat_timeouts: single(
                &r,
                "callhook_live_heartbeat_timeouts_total",
                "Live clients dropped for missing heartbeats",
                IntCounter::with_opts,
            ),
            live_latency_seconds: histogram(
                &r,
                "callhook_live_latency_seconds",
                "From the hub publishing a live message to a client session taking it",
                vec![1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0],
            ),
            originate_requests: counter_vec(
                &r,
                "callhook_originate_requests_total",
                "Click-to-call requests by outcome",
                &["outcome"],
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
            presence_extensions: single(
                &r,
                "callhook_presence_extensions",
                "Extensions in the presence tables",
                IntGauge::with_opts,
            ),
            presence_calls_expired: single(
                &r,
                "callhook_presence_calls_expired_total",
                "Calls dropped from the presence table because the model never ended them",
                IntCounter::with_opts,
            ),
            http_connections: gauge_vec(
                &r,
                "callhook_http_connections",
                "Open inbound HTTP connections",
                &["listener"],
            ),
            http_connection_limit: gauge_vec(
                &r,
                "callhook_http_connection_limit",
                "Connection cap of the listener (configured, bounded by the file-descriptor budget)",
                &["listener"],
            ),
            http_connections_accepted: counter_vec(
                &r,
                "callhook_http_connections_accepted_total",
                "Inbound HTTP connections accepted",
                &["listener"],
            ),
            http_connections_refused: counter_vec(
                &r,
                "callhook_http_connections_refused_total",
                "Inbound HTTP connections refused at once",
                &["listener", "reason"],
            ),
            http_connections_closed: counter_vec(
                &r,
                "callhook_http_connections_closed_total",
                "Inbound HTTP connections closed by the server (timeouts, limits, eviction)",
                &["listener", "reason"],
            ),
            admin_unauthorized: single(
                &r,
                "callhook_admin_unauthorized_total",
                "Admin requests refused: missing or wrong admin token",
                IntCounter::with_opts,
            ),
            build_info: gauge_vec(
                &r,
                "callhook_build_info",
                "Always 1: the running version and commit",
                &["version", "commit"],
            ),
            config_last_reload_success_timestamp_seconds: single(
                &r,
                "callhook_config_last_reload_success_timestamp_seconds",
                "When the configuration last loaded successfully",
                Gauge::with_opts,
            ),
            outbox_waiting: gauge_vec(
                &r,
                "callhook_outbox_waiting",
                "Deliveries waiting in the outbox, by target",
                &["target"],
            ),
            outbox_oldest_waiting_age_seconds: register(
                &r,
                "callhook_outbox_oldest_waiting_age_seconds",
                GaugeVec::new(
                    Opts::new(
                        "callhook_outbox_oldest_waiting_age_seconds",
                        "Age of the oldest waiting delivery, by target",
                    ),
                    &["target"],
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            outbox_targets: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            process: ProcessMetrics::new(&r),
            ami_proxy: ProxyMetrics::new(&r),
            cluster: ClusterMetrics::new(&r),
            agi: AgiMetrics::new(&r),
            registry: r,
        }
    }

    fn lock_outbox_targets(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.outbox_targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the per-target outbox gauges: `waiting` maps target → (rows
    /// waiting, age of the oldest in seconds); targets seen before and
    /// absent now go back to 0.
    pub fn set_outbox_by_target(&self, waiting: &std::collections::BTreeMap<String, (u64, f64)>) {
        let mut seen = self.lock_outbox_targets();
        for t in seen.iter() {
            if !waiting.contains_key(t) {
                self.outbox_waiting.with_label_values(&[t]).set(0);
                self.outbox_oldest_waiting_age_seconds
                    .with_label_values(&[t])
                    .set(0.0);
            }
        }
        for (t, (n, age)) in waiting {
            self.outbox_waiting
                .with_label_values(&[t])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
            self.outbox_oldest_waiting_age_seconds
                .with_label_values(&[t])
                .set(*age);
            seen.insert(t.clone());
        }
    }

    /// Sets `callhook_build_info{version,commit} 1`.
    pub fn set_build_info(&self, version: &str, commit: &str) {
        self.build_info.with_label_values(&[version, commit]).set(1);
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.process.refresh();
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
