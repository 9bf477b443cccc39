//! A per-target rate limit that holds for the whole cluster.
//!
//! The limit is a GCRA (like the single-node `governor` limiter) whose
//! state — the next free send slot, epoch seconds — is one key per target
//! in the rates bucket. An instance that needs permits claims a few slots
//! at once by compare-and-set on the key's revision: with `T` = period per
//! request and `b` = burst, the claim of `k` slots starts at
//! `max(next, now − (b − 1)·T)` and moves `next` to `start + k·T`. Slots
//! are disjoint across instances, so the cluster never sends more than
//! the rate plus the burst, whatever the number of instances; a request
//! whose slot is ahead waits for it. `k` grows with the requests waiting
//! on this instance (up to 0.1 s of traffic), so a busy cluster pays one
//! round trip per batch of requests, an idle one wastes nothing. Unused
//! claimed slots are used by the next request of the same instance while
//! they are not older than the burst allows. Instances' clocks should be
//! NTP-synchronised (a skew of `d` shifts that instance's slots by `d`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv;

use crate::deliver::target::Rate;
use crate::source::now_epoch;

/// The cluster-wide limiter of one target.
pub struct SharedLimiter {
    kv: kv::Store,
    key: String,
    period: f64,
    burst: u32,
    max_claim: usize,
    waiting: AtomicUsize,
    pool: tokio::sync::Mutex<VecDeque<f64>>,
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("key", &self.key)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl SharedLimiter {
    /// The limiter of `target` (its key in `kv`).
    pub fn new(kv: kv::Store, target: &str, rate: Rate, burst: u32) -> Self {
        let period = rate.per.as_secs_f64() / f64::from(rate.count.get());
        let per_100ms = (0.1 / period).floor() as usize;
        Self {
            kv,
            key: format!("rate.{}", super::names::token(target)),
            period,
            burst: burst.max(1),
            max_claim: per_100ms.clamp(1, 100),
            waiting: AtomicUsize::new(0),
            pool: tokio::sync::Mutex::new(VecDeque::new()),
        }
    }

    /// Waits for a permit; true when it had to wait.
    pub async fn acquire(&self) -> bool {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let slot = loop {
            let mut pool = self.pool.lock().await;
            let oldest = now_epoch() - f64::from(self.burst) * self.period;
            while pool.front().is_some_and(|s| *s < oldest) {
                pool.pop_front();
            }
            if let Some(s) = pool.pop_front() {
                break s;
            }
            let k = self
                .waiting
                .load(Ordering::Acquire)
                .clamp(1, self.max_claim);
            match self.claim(k).await {
                Ok(slots) => pool.extend(slots),
                Err(e) => {
                    drop(pool);
                    tracing::warn!(target: "callhook::cluster", key = %self.key, error = %e, "rate limit state unavailable; waiting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let wait = slot - now_epoch();
        if wait > 0.0005 {
            tokio::time::sleep(Duration::from_secs_f64(wait.min(3600.0))).await;
            true
        } else {
            false
        }
    }

    /// Claims `k` slots by compare-and-set; their send times.
    async fn claim(&self, k: usize) -> Result<Vec<f64>, String> {
        for _ in 0..50 {
            let entry = self.kv.entry(&self.key).await.map_err(|e| e.to_string())?;
            let (next, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse::<f64>().ok())
                        .unwrap_or(0.0),
                    Some(e.revision),
                ),
                Some(e) => (0.0, Some(e.revision)),
                None => (0.0, None),
            };
            let now = now_epoch();
            let start = next.max(now - f64::from(self.burst - 1) * self.period);
            let end = start + k as f64 * self.period;
            let value = bytes::Bytes::from(format!("{end:.6}"));
            let ok = match revision {
                Some(r) => self.kv.update(&self.key, value, r).await.is_ok(),
                None => self.kv.create(&self.key, value).await.is_ok(),
            };
            if ok {
                return Ok((0..k).map(|i| start + i as f64 * self.period).collect());
            }
            // Another instance claimed meanwhile: read again.
        }
        Err("too many concurrent claims".into())
    }
}
