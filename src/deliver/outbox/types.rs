//! The outbox's vocabulary: where a delivery stands, what an enqueue did,
//! the rows the admin API and the dispatcher get, and how an attempt ended.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for its turn or its next attempt.
    Pending,
    /// Claimed by the dispatcher (an attempt is being made).
    Inflight,
    /// Delivered (2xx).
    Done,
    /// Given up; kept until retried by an operator.
    Dead,
    /// Not sent: its `expires_at` passed first.
    Expired,
}

impl Status {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Inflight => "inflight",
            Status::Done => "done",
            Status::Dead => "dead",
            Status::Expired => "expired",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "inflight" => Status::Inflight,
            "done" => Status::Done,
            "dead" => Status::Dead,
            "expired" => Status::Expired,
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Outbox::enqueue`] did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EnqueueOutcome {
    /// Rows written.
    pub inserted: usize,
    /// Requests skipped as duplicates (idempotency key or event still waiting).
    pub duplicates: usize,
    /// Of the duplicates: the earlier delivery is still waiting (pending or
    /// in flight).
    pub duplicates_waiting: usize,
    /// Of the duplicates: the earlier delivery was delivered.
    pub duplicates_delivered: usize,
    /// Of the duplicates: the earlier delivery is dead or expired.
    pub duplicates_failed: usize,
    /// Of the duplicates: the key is remembered but its delivery finished
    /// more than `done_retention` ago and was pruned (delivered or expired).
    pub duplicates_pruned: usize,
    /// Requests refused because the outbox was full.
    pub rejected_full: usize,
    /// Requests that can never be sent (`DeliveryRequest::refused`): stored
    /// `dead` at once with the reason.
    pub refused: usize,
}

/// Filter for [`Outbox::list`].
#[derive(Debug, Clone)]
pub struct ListFilter {
    /// Only rows in this state.
    pub status: Option<Status>,
    /// Only rows for this target.
    pub target: Option<String>,
    /// At most this many rows (newest first).
    pub limit: usize,
}

impl Default for ListFilter {
    fn default() -> Self {
        Self {
            status: None,
            target: None,
            limit: 100,
        }
    }
}

/// A stored delivery, for the admin API: secrets are masked (values of
/// credential-like headers and query parameters), the body is a text excerpt.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeliveryRow {
    /// Row id (creation order).
    pub id: i64,
    /// Target name.
    pub target: String,
    /// Rule that produced it.
    pub rule: String,
    /// Call session id.
    pub session_id: String,
    /// PBX id.
    pub pbx: String,
    /// Stable event id (`webhook-id`).
    pub event_id: String,
    /// HTTP method.
    pub method: String,
    /// URL (credential-like query values masked).
    pub url: String,
    /// Headers (credential-like values masked).
    pub headers: Vec<(String, String)>,
    /// Start of the body as text (≤ 2 KB, lossy UTF-8).
    pub body_excerpt: Option<String>,
    /// Body size in bytes.
    pub body_len: usize,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Event time (epoch seconds).
    pub created_at: f64,
    /// Freshness limit (epoch seconds).
    pub expires_at: Option<f64>,
    /// When it entered the outbox (epoch seconds).
    pub enqueued_at: f64,
    /// State.
    pub status: Status,
    /// Attempts made.
    pub attempts: u32,
    /// Earliest next attempt (epoch seconds), for pending rows.
    pub next_attempt_at: f64,
    /// Last HTTP status (`503`) or failure kind (`timeout`, `connect`, `error`).
    pub last_status: Option<String>,
    /// Excerpt of the last response body or error (≤ 2 KB).
    pub last_error: Option<String>,
    /// Last change (epoch seconds).
    pub updated_at: f64,
}

/// Counts by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboxStats {
    /// Waiting rows.
    pub pending: u64,
    /// Rows being sent.
    pub inflight: u64,
    /// Given-up rows.
    pub dead: u64,
    /// Expired rows (until pruned).
    pub expired: u64,
    /// Delivered rows (until pruned).
    pub done: u64,
    /// Seconds the oldest waiting row has been in the outbox.
    pub oldest_pending_age: Option<f64>,
    /// Waiting rows (`pending` + `inflight`) per target.
    pub waiting_by_target: BTreeMap<String, u64>,
}

/// A delivery claimed for an attempt (the full request).
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// Row id.
    pub id: i64,
    /// Target name.
    pub target: String,
    /// Rule name.
    pub rule: String,
    /// Call session id.
    pub session_id: String,
    /// PBX id.
    pub pbx: String,
    /// Stable event id.
    pub event_id: String,
    /// HTTP method.
    pub method: String,
    /// URL.
    pub url: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Option<Vec<u8>>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Event time.
    pub created_at: f64,
    /// Freshness limit.
    pub expires_at: Option<f64>,
    /// Attempts made before this one.
    pub attempts: u32,
    /// Why it can never be sent, when known at enqueue (then the attempt
    /// fails at once).
    pub refused: Option<String>,
    /// Where secrets are masked in the URL, headers and body: the
    /// dispatcher puts them back at send time (see `deliver::secret`).
    pub secrets: Vec<crate::deliver::secret::SecretRef>,
}

/// One target's share of a [`Outbox::poll`].
#[derive(Debug, Clone)]
pub struct ClaimWant {
    /// Target name.
    pub target: String,
    /// Claim at most this many ready heads (0: only report `next_ready`).
    pub limit: usize,
}

/// What [`Outbox::poll`] found.
#[derive(Debug, Clone, Default)]
pub struct PollResult {
    /// Rows now `inflight`, to be sent.
    pub claimed: Vec<Claimed>,
    /// Rows just marked `expired`: (id, target).
    pub expired: Vec<(i64, String)>,
    /// Per target asked: when its earliest remaining head becomes ready.
    pub next_ready: BTreeMap<String, f64>,
    /// Earliest `expires_at` among pending rows.
    pub next_expiry: Option<f64>,
    /// Rows that could not be decoded and were moved aside (dead with the
    /// reason): (id, what is wrong).
    pub damaged: Vec<(i64, String)>,
}

/// How an attempt ended, for [`Outbox::complete`].
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    /// 2xx.
    Delivered {
        /// The status code.
        status: u16,
    },
    /// Try again at `at` (epoch seconds).
    Retry {
        /// Next attempt.
        at: f64,
        /// Status code or failure kind.
        status: String,
        /// Response or error excerpt.
        error: Option<String>,
    },
    /// Given up after this attempt.
    Dead {
        /// Status code or failure kind.
        status: String,
        /// Response or error excerpt, and why it was given up.
        error: Option<String>,
    },
    /// Its `expires_at` passed before the attempt (nothing was sent).
    Expired,
}
