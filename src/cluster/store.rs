//! The delivery store on JetStream: the same contract as the SQLite outbox
//! ([`DeliveryStore`]), on the replicated work-queue stream.
//!
//! **Submit.** Each request goes to `PREFIX.d.<target>.<partition>`
//! (partition = hash of PBX and session id) as one JSON message (the
//! request and its body), with `Nats-Msg-Id` derived from PBX, target and
//! event id: the same event published twice within `dedupe_window` (two
//! instances during a handover, a retry after a lost ack) is stored once.
//! A request with an `Idempotency-Key` is first looked up in the
//! idempotency bucket (kept `idempotency_window`, 7 days by default):
//! present means a duplicate. Published requests are sent without waiting
//! for each ack (one round trip for a whole batch), and the batch resolves
//! once every ack came back: stored on a majority of the replicas.
//!
//! **Ids.** Dead deliveries are numbered by the dead stream's sequence
//! (small numbers, what an operator retries); waiting ones by
//! [`WAITING_ID_BASE`] + the deliveries stream's sequence.
//!
//! **What the admin API sees.** `pending` (waiting in the stream, in flight
//! included) and `dead` rows; delivered and expired deliveries are removed
//! from the work queue and not listed (metrics count them).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use base64::Engine;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::calls::{CallBucket, CallChanges};
use super::names::{self, Names};
use super::{Cluster, ClusterError};
use crate::deliver::outbox::{
    excerpt, mask_url, sensitive_name, DeliveryRow, EnqueueOutcome, ListFilter, LiveCall,
    LiveCallWrite, OutboxStats, Status,
};
use crate::deliver::store::{DeliveryStore, StoreError};
use crate::deliver::DeliveryRequest;
use crate::metrics::metrics;
use crate::source::now_epoch;

/// Ids of waiting deliveries start here (dead ones are below).
pub const WAITING_ID_BASE: i64 = 1_000_000_000_000;

/// A delivery as stored in the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Wire {
    /// The request (its body is in `body`).
    pub req: DeliveryRequest,
    /// The body, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// When it was stored (epoch seconds).
    pub enqueued_at: f64,
    /// Dead deliveries: attempts made.
    #[serde(default)]
    pub attempts: u32,
    /// Dead deliveries: last status or failure kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<String>,
    /// Dead deliveries: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Dead deliveries: when.
    #[serde(default)]
    pub updated_at: f64,
}

impl Wire {
    /// Wraps a request (the body moves to base64).
    pub fn new(mut req: DeliveryRequest, now: f64) -> Self {
        let body = req
            .body
            .take()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b));
        Self {
            req,
            body,
            enqueued_at: now,
            attempts: 0,
            last_status: None,
            last_error: None,
            updated_at: now,
        }
    }

    /// The request with its body.
    pub fn request(&self) -> Result<DeliveryRequest, String> {
        let mut r = self.req.clone();
        r.body = match &self.body {
            None => None,
            Some(b) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| format!("body is not base64: {e}"))?,
            ),
        };
        Ok(r)
    }

    /// Encodes for the stream.
    pub fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// Decodes a stream message.
    pub fn decode(b: &[u8]) -> Result<Wire, String> {
        serde_json::from_slice(b).map_err(|e| format!("undecodable delivery: {e}"))
    }

    /// The admin view.
    pub fn row(&self, id: i64, status: Status) -> DeliveryRow {
        let r = &self.req;
        let body = self.request().ok().and_then(|r| r.body);
        DeliveryRow {
            id,
            target: r.target.clone(),
            rule: r.rule.clone(),
            session_id: r.session_id.clone(),
            pbx: r.pbx.clone(),
            event_id: r.event_id.clone(),
            method: r.method.clone(),
            url: mask_url(&r.url),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| {
                    let v = if sensitive_name(k) {
                        "***".to_string()
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect(),
            body_excerpt: body.as_ref().map(|b| excerpt(&String::from_utf8_lossy(b))),
            body_len: body.as_ref().map_or(0, Vec::len),
            idempotency_key: r.idempotency_key.clone(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            enqueued_at: self.enqueued_at,
            status,
            attempts: self.attempts,
            next_attempt_at: self.enqueued_at,
            last_status: self.last_status.clone(),
            last_error: self.last_error.clone(),
            updated_at: self.updated_at,
        }
    }
}

/// The JetStream delivery store.
#[derive(Clone)]
pub struct ClusterStore {
    js: jetstream::Context,
    names: Names,
    partitions: u32,
    idem: kv::Store,
    calls: CallBucket,
}

impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStore").finish_non_exhaustive()
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> StoreError {
    format!("NATS JetStream: {what}: {e}")
}

impl ClusterStore {
    /// The store of a connected cluster.
    pub async fn new(c: &Cluster) -> Result<Self, ClusterError> {
        Ok(Self {
            js: c.js.clone(),
            names: c.names.clone(),
            partitions: c.cfg.partitions,
            idem: c.bucket(&c.names.idempotency_bucket()).await?,
            calls: CallBucket::new(c).await?,
        })
    }

    /// The subject of a request.
    pub fn subject(&self, r: &DeliveryRequest) -> String {
        self.names.delivery_subject(
            &r.target,
            names::partition(&r.pbx, &r.session_id, self.partitions),
        )
    }

    async fn publish_all(&self, reqs: Vec<DeliveryRequest>) -> Result<EnqueueOutcome, StoreError> {
        let mut out = EnqueueOutcome::default();
        let now = now_epoch();
        let mut seen = HashSet::new();
        let mut acks = Vec::with_capacity(reqs.len());
        let mut keys = Vec::new();
        let mut refused = Vec::new();
        for r in reqs {
            let m = metrics();
            if let Some(why) = r.refused.clone() {
                // Never sendable: stored dead at once with the reason (it
                // holds back nothing of its call).
                let mut headers = async_nats::HeaderMap::new();
                let id = names::delivery_msg_id(&r.pbx, &r.target, &r.event_id);
                headers.insert("Nats-Msg-Id", format!("dead-{id}").as_str());
                let subject = self.names.dead_subject(&r.target);
                let target = r.target.clone();
                let mut w = Wire::new(r, now);
                w.last_status = Some("refused".into());
                w.last_error = Some(why);
                let ack = self
                    .js
                    .publish_with_headers(subject, headers, w.encode())
                    .await
                    .map_err(|e| err("publish", e))?;
                refused.push((target, ack));
                continue;
            }
            if let Some(k) = &r.idempotency_key {
                let key = names::idempotency_key(&r.target, k);
                let known = !seen.insert(key.clone())
                    || self
                        .idem
                        .get(&key)
                        .await
                        .map_err(|e| err("idempotency lookup", e))?
                        .is_some();
                if known {
                    out.duplicates += 1;
                    m.deliveries_duplicate.with_label_values(&[&r.target]).inc();
                    continue;
                }
                keys.push(key);
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                names::delivery_msg_id(&r.pbx, &r.target, &r.event_id).as_str(),
            );
            let subject = self.subject(&r);
            let target = r.target.clone();
            let ack = self
                .js
                .publish_with_headers(subject, headers, Wire::new(r, now).encode())
                .await
                .map_err(|e| err("publish", e))?;
            acks.push((target, ack));
        }
        for (target, ack) in acks {
            let a = ack.await.map_err(|e| err("publish", e))?;
            let m = metrics();
            if a.duplicate {
                out.duplicates += 1;
                m.deliveries_duplicate.with_label_values(&[&target]).inc();
            } else {
                out.inserted += 1;
                m.deliveries_enqueued.with_label_values(&[&target]).inc();
            }
        }
        for (target, ack) in refused {
            let a = ack.await.map_err(|e| err("publish", e))?;
            if a.duplicate {
                out.duplicates += 1;
                metrics()
                    .deliveries_duplicate
                    .with_label_values(&[&target])
                    .inc();
            } else {
                out.refused += 1;
                metrics()
                    .deliveries
                    .with_label_values(&[&target, "dead"])
                    .inc();
            }
        }
        if out.refused > 0 {
            tracing::warn!(target: "callhook::cluster", rows = out.refused, "requests that can never be sent stored dead with the reason (see `callhook deliveries list --dead`)");
        }
        for key in keys {
            match self
                .idem
                .create(&key, bytes::Bytes::from_static(b"1"))
                .await
            {
                Ok(_) => {}
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    tracing::warn!(target: "callhook::cluster", error = %e, "cannot record an idempotency key (the stream's dedupe window still applies)")
                }
            }
        }
        Ok(out)
    }

    async fn stream(&self, name: &str) -> Result<jetstream::stream::Stream, StoreError> {
        self.js
            .get_stream(name)
            .await
            .map_err(|e| err(&format!("stream {name}"), e))
    }

    /// Rows of one stream, newest first.
    async fn rows_of(
        &self,
        stream: &str,
        status: Status,
        base: i64,
        filter: &ListFilter,
        out: &mut Vec<DeliveryRow>,
    ) -> Result<(), StoreError> {
        let mut s = self.stream(stream).await?;
        let state = s
            .info()
            .await
            .map_err(|e| err(&format!("stream {stream}"), e))?
            .state
            .clone();
        if state.messages == 0 {
            return Ok(());
        }
        let mut seq = state.last_sequence;
        // Bounded scan: at most 4× the limit of sequences (deleted ones
        // are gaps in a work queue).
        let mut budget = filter.limit.saturating_mul(4).max(64) as u64;
        while seq >= state.first_sequence.max(1) && out.len() < filter.limit && budget > 0 {
            budget -= 1;
            if let Ok(m) = s.get_raw_message(seq).await {
                if let Ok(w) = Wire::decode(&m.payload) {
                    if filter.target.as_ref().is_none_or(|t| *t == w.req.target) {
                        out.push(w.row(base + m.sequence as i64, status));
                    }
                }
            }
            seq -= 1;
        }
        Ok(())
    }

    async fn retry_seq(&self, seq: u64) -> Result<bool, StoreError> {
        let dead = self.stream(&self.names.dead_stream()).await?;
        let m = match dead.get_raw_message(seq).await {
            Ok(m) => m,
            Err(_) => return Ok(false),
        };
        let mut w = Wire::decode(&m.payload)?;
        w.attempts = 0;
        w.last_status = None;
        w.last_error = None;
        w.enqueued_at = now_epoch();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("retry-{seq}").as_str());
        let subject = self.subject(&w.req);
        self.js
            .publish_with_headers(subject, headers, w.encode())
            .await
            .map_err(|e| err("publish", e))?
            .await
            .map_err(|e| err("publish", e))?;
        dead.delete_message(seq)
            .await
            .map_err(|e| err("delete a dead delivery", e))?;
        Ok(true)
    }

    /// A batch: its deliveries into the stream first, then its call
    /// changes into the calls bucket. A crash in between leaves the stored
    /// calls behind the deliveries, never ahead: the next owner's
    /// reconciliation may say again what was already stored (same event
    /// ids: deduplicated), never skip it.
    async fn commit(
        self,
        reqs: Vec<DeliveryRequest>,
        calls: Vec<LiveCallWrite>,
    ) -> Result<EnqueueOutcome, StoreError> {
        let out = if reqs.is_empty() {
            EnqueueOutcome::default()
        } else {
            self.publish_all(reqs).await?
        };
        let mut by_pbx: BTreeMap<String, CallChanges> = BTreeMap::new();
        for w in calls {
            by_pbx
                .entry(w.pbx)
                .or_default()
                .push((w.session, w.snapshot));
        }
        for (pbx, changes) in by_pbx {
            self.calls
                .save(&pbx, changes)
                .await
                .map_err(|e| err("live calls", e))?;
        }
        Ok(out)
    }
}

impl DeliveryStore for ClusterStore {
    fn commit_batch(
        &self,
        reqs: Vec<DeliveryRequest>,
        calls: Vec<LiveCallWrite>,
    ) -> BoxFuture<'static, Result<EnqueueOutcome, StoreError>> {
        Box::pin(self.clone().commit(reqs, calls))
    }

    fn live_calls(&self, pbx: &str) -> BoxFuture<'_, Result<Vec<LiveCall>, StoreError>> {
        let pbx = pbx.to_string();
        Box::pin(async move {
            let calls = self
                .calls
                .load(&pbx)
                .await
                .map_err(|e| err("live calls", e))?;
            Ok(calls
                .into_iter()
                .map(|(session, snapshot)| LiveCall {
                    pbx: pbx.clone(),
                    session,
                    snapshot,
                })
                .collect())
        })
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<DeliveryRow>, StoreError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            if matches!(filter.status, None | Some(Status::Dead)) {
                self.rows_of(
                    &self.names.dead_stream(),
                    Status::Dead,
                    0,
                    &filter,
                    &mut out,
                )
                .await?;
            }
            if matches!(
                filter.status,
                None | Some(Status::Pending | Status::Inflight)
            ) {
                self.rows_of(
                    &self.names.deliveries_stream(),
                    Status::Pending,
                    WAITING_ID_BASE,
                    &filter,
                    &mut out,
                )
                .await?;
            }
            Ok(out)
        })
    }

    fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<DeliveryRow>, StoreError>> {
        Box::pin(async move {
            let (stream, status, base) = if id >= WAITING_ID_BASE {
                (
                    self.names.deliveries_stream(),
                    Status::Pending,
                    WAITING_ID_BASE,
                )
            } else {
                (self.names.dead_stream(), Status::Dead, 0)
            };
            if id - base <= 0 {
                return Ok(None);
            }
            let s = self.stream(&stream).await?;
            Ok(match s.get_raw_message((id - base) as u64).await {
                Ok(m) => Wire::decode(&m.payload).ok().map(|w| w.row(id, status)),
                Err(_) => None,
            })
        })
    }

    fn retry(&self, id: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            if id <= 0 || id >= WAITING_ID_BASE {
                return Ok(false);
            }
            self.retry_seq(id as u64).await
        })
    }

    fn retry_all_dead(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let mut s = self.stream(&self.names.dead_stream()).await?;
            let state = s
                .info()
                .await
                .map_err(|e| err("dead stream", e))?
                .state
                .clone();
            let mut n = 0;
            if state.messages == 0 {
                return Ok(0);
            }
            for seq in state.first_sequence..=state.last_sequence {
                if self.retry_seq(seq).await? {
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<OutboxStats, StoreError>> {
        Box::pin(async move {
            let mut s = OutboxStats::default();
            let d = self.stream(&self.names.deliveries_stream()).await?;
            let mut subjects = d
                .info_with_subjects(self.names.deliveries_subjects())
                .await
                .map_err(|e| err("deliveries stream", e))?;
            let state = subjects.info.state.clone();
            let mut by_token: BTreeMap<String, u64> = BTreeMap::new();
            while let Some(x) = subjects.next().await {
                let (subject, n) = x.map_err(|e| err("deliveries stream", e))?;
                // PREFIX.d.<target token>.<partition>
                let token = subject.split('.').nth(2).unwrap_or("").to_string();
                *by_token.entry(token).or_default() += n as u64;
            }
            s.pending = state.messages;
            if state.messages > 0 {
                let first = state.first_timestamp.unix_timestamp_nanos() as f64 / 1e9;
                s.oldest_pending_age = Some((now_epoch() - first).max(0.0));
            }
            s.waiting_by_target = by_token;
            let mut dead = self.stream(&self.names.dead_stream()).await?;
            s.dead = dead
                .info()
                .await
                .map_err(|e| err("dead stream", e))?
                .state
                .messages;
            let m = metrics();
            m.outbox_depth.set(s.pending as i64);
            m.outbox_oldest_age_seconds
                .set(s.oldest_pending_age.unwrap_or(0.0));
            Ok(s)
        })
    }
}

/// Shared handle.
pub type SharedStore = Arc<ClusterStore>;
