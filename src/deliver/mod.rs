//! Delivery: the durable outbox and the dispatcher that sends webhooks.
//!
//! The contract with the rules engine is [`DeliveryRequest`]: a fully
//! rendered HTTP request plus what delivery needs to order, deduplicate,
//! expire and sign it. Everything downstream of the rules works on these.

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
}
