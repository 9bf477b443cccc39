//! Delivery: the durable outbox and the dispatcher that sends webhooks.
//!
//! The contract with the rules engine is [`DeliveryRequest`]: a fully
//! rendered HTTP request plus what delivery needs to order, deduplicate,
//! expire and sign it. Everything downstream of the rules works on these.
//!
//! ```text
//! rules ──DeliveryRequest──▶ Outbox::submit/enqueue ──(group commit, SQLite WAL)──▶ outbox.sqlite3
//!                                                                                     │ poll: ready heads
//! CRM ◀──HTTP── attempt task ◀── rate limit ◀── breaker ◀── dispatcher loop ◀────────────┘
//! ```
//!
//! One concept per module:
//!
//! - [`target`]: target settings (`targets:` in the config) and their validation;
//! - [`outbox`]: the durable SQLite outbox (dedupe, cap, order, crash recovery, admin);
//! - [`dispatcher`]: the loop that claims ready deliveries and starts attempts;
//! - `attempt`: one slot's attempts (send, judge, record, take the next);
//! - [`outcome`]: the one judge of an attempt's answer (metric label, breaker,
//!   retry or dead), shared with the cluster dispatcher;
//! - [`retry`]: outcome classification, backoff, `Retry-After`;
//! - [`limit`]: per-target rate limit;
//! - [`breaker`]: per-target circuit breaker;
//! - [`sign`]: Standard Webhooks signatures;
//! - [`secret`]: credentials masked at rest, put back at send time;
//! - [`http`]: building and sending one attempt.
//!
//! Guarantees, in short: a request is acknowledged to the caller only once
//! committed to disk; every delivery ends exactly once as `done`, `dead`
//! (kept, retryable by an operator) or `expired` (never sent after its
//! `expires_at`); delivery is at-least-once (the same `webhook-id` and
//! `Idempotency-Key` on every attempt, including after a crash); deliveries
//! of one call to one target leave strictly in creation order.

mod attempt;
pub mod breaker;
pub mod dispatcher;
pub mod http;
pub mod limit;
pub mod outbox;
pub mod outcome;
pub mod retry;
pub mod secret;
pub mod sign;
pub mod store;
pub mod target;

pub use dispatcher::{spawn, DispatcherHandle};
pub use outbox::{
    DeliveryRow, Durability, EnqueueOutcome, EnqueueReceipt, ListFilter, Outbox, OutboxError,
    OutboxOptions, OutboxStats, Status,
};
pub use target::{validate_targets, RawTarget, Target, TargetError};

use serde::{Deserialize, Serialize};

/// A rendered request the rules decided to send, not yet stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRequest {
    /// Target name from the config (`crm`): rate limit, retries, TLS, signing.
    pub target: String,
    /// Rule name that produced it (for logs, metrics and the admin API).
    pub rule: String,
    /// The call's session id: with `target`, the ordering key (deliveries of
    /// one call to one target go out in creation order).
    pub session_id: String,
    /// PBX id.
    pub pbx: String,
    /// Stable id of the event that caused it (`SESSION/LEG/STATE/RULE`,
    /// used as the Standard Webhooks `webhook-id`): identical across
    /// retries, restarts and replays of the same traffic.
    pub event_id: String,
    /// HTTP method (`GET`, `POST`, …).
    pub method: String,
    /// Absolute URL, placeholders already rendered and encoded.
    pub url: String,
    /// Headers, rendered.
    pub headers: Vec<(String, String)>,
    /// Body bytes, rendered (JSON, form or text), when any.
    pub body: Option<Vec<u8>>,
    /// `Idempotency-Key` value, when the rule defines one; a second request
    /// with the same target and key within the retention window is not
    /// enqueued.
    pub idempotency_key: Option<String>,
    /// When the event happened (epoch seconds).
    pub created_at: f64,
    /// Freshness limit (epoch seconds): not delivered after this instant,
    /// marked `expired` instead (rule `max_age`, e.g. a screen-pop).
    pub expires_at: Option<f64>,
    /// Why this request must never be sent, when the rules already know
    /// (a value made a URL path segment empty or `..`): it is stored `dead`
    /// at once with this reason, and never blocks the call's next delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Where secrets were masked (`***`) in the URL, headers and body: the
    /// dispatcher puts the configured values back at send time (see
    /// [`secret`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<secret::SecretRef>,
}

impl DeliveryRequest {
    /// Moves the request to another clock: `created_at` becomes `at` and
    /// `expires_at` keeps its distance from it. The outbox and dispatcher run
    /// on the local clock; events carry the PBX's clock (see
    /// `Normalizer::clock_offset`), and replays of old captures count as
    /// fresh.
    pub fn rebase(&mut self, at: f64) {
        if let Some(e) = self.expires_at.as_mut() {
            *e = at + (*e - self.created_at);
        }
        self.created_at = at;
    }
}
