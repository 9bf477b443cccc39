//! The failed-login limit per client address: after `max` failed logins
//! within `window`, connections from that address are refused until the
//! oldest of those failures is older than the window. Together with the
//! delay before each `Authentication failed` and the close that follows
//! it (one guess per connection, as Asterisk), a brute force is slow and
//! loud. Addresses are counted like the HTTP listeners count them
//! ([`ClientKey`]: an IPv4 address, an IPv6 /64); the table is bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use std::time::Instant;

use crate::http::server::ClientKey;

/// Addresses remembered at most (the oldest entries go first).
const MAX_ADDRESSES: usize = 10_000;

/// See the [module documentation](self).
#[derive(Debug)]
pub struct LoginLimit {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<ClientKey, VecDeque<Instant>>>,
}

impl LoginLimit {
    /// At most `max` failures per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max: max.max(1),
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, VecDeque<Instant>>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn expire(&self, q: &mut VecDeque<Instant>, now: Instant) {
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
    }

    /// True when `key` used up its failures.
    pub fn blocked(&self, key: ClientKey) -> bool {
        self.blocked_at(key, Instant::now())
    }

    fn blocked_at(&self, key: ClientKey, now: Instant) -> bool {
        let mut map = self.lock();
        let Some(q) = map.get_mut(&key) else {
            return false;
        };
        self.expire(q, now);
        if q.is_empty() {
            map.remove(&key);
            return false;
        }
        q.len() >= self.max as usize
    }

    /// Records a failed login from `key`.
    pub fn failed(&self, key: ClientKey) {
        self.failed_at(key, Instant::now())
    }

    fn failed_at(&self, key: ClientKey, now: Instant) {
        let mut map = self.lock();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&key) {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
            if map.len() >= MAX_ADDRESSES {
                // Still full of recent failures: forget the stalest address.
                if let Some(old) = map
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(k, _)| *k)
                {
                    map.remove(&old);
                }
            }
        }
        let q = map.entry(key).or_default();
        self.expire(q, now);
        q.push_back(now);
        while q.len() > self.max as usize {
            q.pop_front();
        }
    }

    /// Forgets `key`'s failures (a successful login).
    pub fn succeeded(&self, key: ClientKey) {
        self.lock().remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn key(n: u8) -> ClientKey {
        ClientKey::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)))
    }

    #[test]
    fn blocks_for_the_window() {
        let l = LoginLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..2 {
            l.failed_at(key(1), t0 + Duration::from_secs(i));
        }
        assert!(!l.blocked_at(key(1), t0 + Duration::from_secs(2)));
        l.failed_at(key(1), t0 + Duration::from_secs(2));
        assert!(l.blocked_at(key(1), t0 + Duration::from_secs(3)));
        assert!(
            !l.blocked_at(key(2), t0 + Duration::from_secs(3)),
            "other addresses are not affected"
        );
        // The first failure leaves the window: one more guess.
        assert!(!l.blocked_at(key(1), t0 + Duration::from_secs(60)));
        assert!(!l.blocked_at(key(1), t0 + Duration::from_secs(200)));
    }

    #[test]
    fn success_forgets() {
        let l = LoginLimit::new(2, Duration::from_secs(60));
        l.failed(key(1));
        l.succeeded(key(1));
        l.failed(key(1));
        assert!(!l.blocked(key(1)));
    }

    #[test]
    fn bounded() {
        let l = LoginLimit::new(1, Duration::from_secs(60));
        for a in 0..=255u8 {
            for b in 0..50u8 {
                l.failed(ClientKey::of(IpAddr::V4(Ipv4Addr::new(10, b, 0, a))));
            }
        }
        assert!(l.lock().len() <= MAX_ADDRESSES);
    }
}
