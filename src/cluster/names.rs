//! Names in NATS: streams, subjects, consumers, buckets and keys, and the
//! deterministic ids (partition, `Nats-Msg-Id`, key hashes) derived from
//! what the PBX said, so that two instances processing the same events
//! produce the same names.

use sha2::{Digest, Sha256};

use super::config::is_name_token;

/// Hex of the first `n` bytes of SHA-256 over the parts (each followed by
/// a NUL, so `("ab","c")` and `("a","bc")` differ).
pub fn digest(parts: &[&str], n: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize()[..n.min(32)]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A token for a name that may contain anything (a target, a PBX id, a
/// team): the name itself when it is a safe token, else `x` + a hash.
pub fn token(name: &str) -> String {
    if is_name_token(name) && !name.starts_with('x') {
        name.to_string()
    } else {
        format!("x{}", digest(&[name], 8))
    }
}

/// The ordering partition of a call for a target: stable for a session id.
pub fn partition(pbx: &str, session_id: &str, partitions: u32) -> u32 {
    let d = Sha256::new()
        .chain_update(pbx.as_bytes())
        .chain_update([0u8])
        .chain_update(session_id.as_bytes())
        .finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % partitions.max(1)
}

/// Every name of one cluster (one `prefix`).
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// The names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The work-queue stream of deliveries.
    pub fn deliveries_stream(&self) -> String {
        format!("{}_DELIVERIES", self.prefix.to_ascii_uppercase())
    }

    /// Its subjects.
    pub fn deliveries_subjects(&self) -> String {
        format!("{}.d.>", self.prefix)
    }

    /// The subject of one partition of one target.
    pub fn delivery_subject(&self, target: &str, partition: u32) -> String {
        format!("{}.d.{}.{partition}", self.prefix, token(target))
    }

    /// The durable consumer of one partition of one target.
    pub fn delivery_consumer(&self, target: &str, partition: u32) -> String {
        format!("d_{}_{partition}", token(target))
    }

    /// The stream of dead deliveries (kept until retried or `max_age`).
    pub fn dead_stream(&self) -> String {
        format!("{}_DEAD", self.prefix.to_ascii_uppercase())
    }

    /// Its subjects.
    pub fn dead_subjects(&self) -> String {
        format!("{}.dead.>", self.prefix)
    }

    /// The dead subject of a target.
    pub fn dead_subject(&self, target: &str) -> String {
        format!("{}.dead.{}", self.prefix, token(target))
    }

    /// The work-queue stream of accepted pushes.
    pub fn push_stream(&self) -> String {
        format!("{}_PUSH", self.prefix.to_ascii_uppercase())
    }

    /// Its subjects.
    pub fn push_subjects(&self) -> String {
        format!("{}.push.>", self.prefix)
    }

    /// The push subject of a team.
    pub fn push_subject(&self, team: &str) -> String {
        format!("{}.push.{}", self.prefix, token(team))
    }

    /// The durable consumer of a team's pushes.
    pub fn push_consumer(&self, team: &str) -> String {
        format!("p_{}", token(team))
    }

    /// Bucket of ownership leases.
    pub fn leases_bucket(&self) -> String {
        format!("{}_leases", self.prefix)
    }

    /// Bucket of live instances.
    pub fn members_bucket(&self) -> String {
        format!("{}_members", self.prefix)
    }

    /// Bucket of long-window idempotency keys.
    pub fn idempotency_bucket(&self) -> String {
        format!("{}_idem", self.prefix)
    }

    /// Bucket of shared rate-limit state.
    pub fn rates_bucket(&self) -> String {
        format!("{}_rates", self.prefix)
    }

    /// Bucket of live call state.
    pub fn calls_bucket(&self) -> String {
        format!("{}_calls", self.prefix)
    }
}

/// The lease key of an owned thing (`pbx.<token>`, `team.<token>`).
pub fn lease_key(kind: &str, id: &str) -> String {
    format!("{kind}.{}", token(id))
}

/// `Nats-Msg-Id` of a delivery: the same for the same event, rule and
/// target on any instance (the event id is built from the PBX's
/// uniqueid/linkedid and the transition).
pub fn delivery_msg_id(pbx: &str, target: &str, event_id: &str) -> String {
    format!("d-{}", digest(&[pbx, target, event_id], 16))
}

/// KV key of an idempotency key of a target.
pub fn idempotency_key(target: &str, key: &str) -> String {
    format!("k{}", digest(&[target, key], 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_safe() {
        assert_eq!(token("crm"), "crm");
        assert!(token("my crm.prod").starts_with('x'));
        assert_ne!(token("xyz"), "xyz");
        assert_eq!(token("a.b"), token("a.b"));
        let p = partition("pbx1", "1700000000.12", 64);
        assert_eq!(p, partition("pbx1", "1700000000.12", 64));
        assert!(p < 64);
        assert_eq!(
            delivery_msg_id("p", "crm", "s/call/hungup/log"),
            delivery_msg_id("p", "crm", "s/call/hungup/log")
        );
        assert_ne!(
            delivery_msg_id("p", "crm", "s/call/hungup/log"),
            delivery_msg_id("q", "crm", "s/call/hungup/log")
        );
        assert_ne!(digest(&["ab", "c"], 8), digest(&["a", "bc"], 8));
        let n = Names::new("callhook");
        assert_eq!(n.delivery_subject("crm", 3), "callhook.d.crm.3");
        assert_eq!(n.deliveries_stream(), "CALLHOOK_DELIVERIES");
    }

    #[test]
    fn partitions_spread() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[partition("p", &format!("17000.{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
