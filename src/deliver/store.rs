//! The delivery contract every store implements: what the normalizer's
//! loop (commit a batch's deliveries with its live-call writes, load a
//! PBX's live calls), the admin API and the CLI (list, get, retry, stats)
//! need. The SQLite [`Outbox`] is the default store (deliveries and calls
//! in one transaction); cluster mode stores deliveries in a replicated
//! JetStream stream and the calls in a KV bucket (`crate::cluster::store`).
//! How deliveries are then claimed and completed is each store's own
//! business (its dispatcher).

use futures::future::BoxFuture;

use super::outbox::{
    DeliveryRow, EnqueueOutcome, ListFilter, LiveCall, LiveCallWrite, Outbox, OutboxStats,
};
use super::DeliveryRequest;

/// A store failure, as text (each store has its own error type).
pub type StoreError = String;

/// What committing a batch, listing and retrying deliveries needs.
pub trait DeliveryStore: Send + Sync {
    /// Commits a batch: its deliveries and the live calls the same events
    /// changed, together (resolves once both are durable, or why not).
    /// After a crash the stored calls never run ahead of the stored
    /// deliveries: the next owner's reconciliation cannot skip a record.
    /// The calls are written even when the store refuses requests (a full
    /// backlog): they are what the model holds.
    fn commit_batch(
        &self,
        reqs: Vec<DeliveryRequest>,
        calls: Vec<LiveCallWrite>,
    ) -> BoxFuture<'static, Result<EnqueueOutcome, StoreError>>;
    /// Stores a batch of deliveries (no call changes).
    fn submit(
        &self,
        reqs: Vec<DeliveryRequest>,
    ) -> BoxFuture<'static, Result<EnqueueOutcome, StoreError>> {
        self.commit_batch(reqs, Vec::new())
    }
    /// The stored live calls of one PBX (at start, or when an instance
    /// takes the PBX over in cluster mode), by session.
    fn live_calls(&self, pbx: &str) -> BoxFuture<'_, Result<Vec<LiveCall>, StoreError>>;
    /// Every PBX or push team id with stored live calls (at start of a
    /// single node: those of ids no longer configured are restored and
    /// closed too). A store that restores per PBX on takeover may say none.
    fn live_call_ids(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Deliveries matching a filter, newest first, secrets masked.
    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<DeliveryRow>, StoreError>>;
    /// One delivery.
    fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<DeliveryRow>, StoreError>>;
    /// Sends a dead delivery again; false when there is no such dead one.
    fn retry(&self, id: i64) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Sends every dead delivery again; how many.
    fn retry_all_dead(&self) -> BoxFuture<'_, Result<usize, StoreError>>;
    /// Counts by state.
    fn stats(&self) -> BoxFuture<'_, Result<OutboxStats, StoreError>>;
}

impl DeliveryStore for Outbox {
    fn commit_batch(
        &self,
        reqs: Vec<DeliveryRequest>,
        calls: Vec<LiveCallWrite>,
    ) -> BoxFuture<'static, Result<EnqueueOutcome, StoreError>> {
        // One SQLite transaction.
        let receipt = Outbox::submit_with_calls(self, reqs, calls);
        Box::pin(async move { receipt.await.map_err(|e| e.to_string()) })
    }

    fn live_calls(&self, pbx: &str) -> BoxFuture<'_, Result<Vec<LiveCall>, StoreError>> {
        let pbx = pbx.to_string();
        Box::pin(async move {
            Outbox::live_calls_of(self, &pbx)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn live_call_ids(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let all = Outbox::live_calls(self).await.map_err(|e| e.to_string())?;
            let mut ids: Vec<String> = all.into_iter().map(|c| c.pbx).collect();
            ids.dedup();
            Ok(ids)
        })
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<DeliveryRow>, StoreError>> {
        Box::pin(async move { Outbox::list(self, filter).await.map_err(|e| e.to_string()) })
    }

    fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<DeliveryRow>, StoreError>> {
        Box::pin(async move { Outbox::get(self, id).await.map_err(|e| e.to_string()) })
    }

    fn retry(&self, id: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { Outbox::retry(self, id).await.map_err(|e| e.to_string()) })
    }

    fn retry_all_dead(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            Outbox::retry_all_dead(self)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<OutboxStats, StoreError>> {
        Box::pin(async move { Outbox::stats(self).await.map_err(|e| e.to_string()) })
    }
}
