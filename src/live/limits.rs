//! Per-key rate windows (connections per address, click-to-calls per user,
//! Meetip logins per address), bounded in memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `limit` hits per key per `window` (fixed windows). Keys past
/// `max_keys` are refused outright, with a sweep of stale windows first, so
/// a flood of distinct keys cannot grow memory.
pub struct RateWindows<K> {
    limit: u32,
    window: Duration,
    max_keys: usize,
    map: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K> std::fmt::Debug for RateWindows<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateWindows")
            .field("limit", &self.limit)
            .field("window", &self.window)
            .finish()
    }
}

impl<K: Eq + Hash + Clone> RateWindows<K> {
    /// `limit` hits per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window,
            max_keys: 100_000,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a hit for `key`; false when over the limit.
    pub fn hit(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if !m.contains_key(key) && m.len() >= self.max_keys {
            let w = self.window;
            m.retain(|_, (start, _)| now.duration_since(*start) < w);
            if m.len() >= self.max_keys {
                return false;
            }
        }
        let e = m.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        if e.1 >= self.limit {
            return false;
        }
        e.1 += 1;
        true
    }

    /// Whether `key` had a hit within the window (without counting one).
    pub fn seen_within(&self, key: &K, within: Duration) -> bool {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key)
            .is_some_and(|(start, n)| *n > 0 && start.elapsed() < within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_and_bounds_keys() {
        let mut r = RateWindows::new(2, Duration::from_secs(60));
        assert!(r.hit(&1) && r.hit(&1) && !r.hit(&1));
        assert!(r.hit(&2));
        r.max_keys = 2;
        assert!(!r.hit(&3));
        let r = RateWindows::new(1, Duration::from_millis(1));
        assert!(r.hit(&1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(r.hit(&1));
    }
}
