//! The delivery contract every store implements: what the rules side
//! (submit), the admin API and the CLI (list, get, retry, stats) need.
//! The SQLite [`Outbox`] is the default store; cluster mode stores
//! deliveries in a replicated JetStream stream (`crate::cluster::store`).
//! How deliveries are then claimed and completed is each store's own
//! business (its dispatcher).

use futures::future::BoxFuture;

use super::outbox::{DeliveryRow, EnqueueOutcome, ListFilter, Outbox, OutboxStats};
use super::DeliveryRequest;

/// A store failure, as text (each store has its own error type).
pub type StoreError = String;

/// What submitting, listing and retrying deliveries needs.
pub trait DeliveryStore: Send + Sync {
    /// Stores a batch; resolves once it is durable (or why not).
    fn submit(
        &self,
        reqs: Vec<DeliveryRequest>,
    ) -> BoxFuture<'static, Result<EnqueueOutcome, StoreError>>;
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
    fn submit(
        &self,
        reqs: Vec<DeliveryRequest>,
    ) -> BoxFuture<'static, Result<EnqueueOutcome, StoreError>> {
        let receipt = Outbox::submit(self, reqs);
        Box::pin(async move { receipt.await.map_err(|e| e.to_string()) })
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
