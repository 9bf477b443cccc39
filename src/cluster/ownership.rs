//! Who owns what: each PBX's AMI connection and each push team's
//! normalizer belongs to exactly one live instance, through a lease.
//!
//! **Members.** Every instance writes its key in the members bucket every
//! tick (`lease_ttl / 4`); the bucket's `max_age` is `lease_ttl`, so an
//! instance that stops writing disappears from it after `lease_ttl`. A
//! member counts for the assignment once it has been seen for two ticks
//! (a joining instance does not make everybody hand over at once).
//!
//! **Assignment.** Every instance computes the same assignment from the
//! same sorted lists: bounded-load rendezvous hashing — each item goes to
//! the member with the highest hash of (item, member) that still has room
//! (at most ⌈items / members⌉ each). Items spread evenly; a join or a leave
//! moves about one member's share, not everything.
//!
//! **Leases.** One key per item in the leases bucket (`pbx.<id>`,
//! `team.<id>`), whose `max_age` is `lease_ttl`. The desired owner takes a
//! free item with `create` (fails if the key exists), renews it every tick
//! with `update` on the revision it holds (compare-and-set), and an owner
//! whose item is now desired by another settled member deletes its key
//! (on the revision) so the new owner takes it at its next tick — once
//! this instance's normalizer has dropped the item after its last commit
//! ([`OwnershipHandle::drained`]): the next owner loads the item's live
//! calls only after the last write of the previous one. A lease
//! nobody renews vanishes after `lease_ttl`: another instance takes it
//! within `lease_ttl` + one tick (≈ 12.5 s with the default 10 s). An
//! item free for four ticks is taken by whoever sees it (no item stays
//! orphaned if its desired owner cannot take it): four ticks, one `lease_ttl`.
//!
//! **Fencing.** An instance owns an item only while its last successful
//! renewal is younger than ¾ `lease_ttl` ([`OwnershipHandle::holds`], on
//! the monotonic clock, which also runs while the process is stopped):
//! an instance cut off from NATS, or stopped (SIGSTOP) and continued,
//! gives up its PBXs before anybody else may have taken them, and events
//! it still reads from them are not turned into deliveries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::names::{self, digest, lease_key};
use super::Cluster;
use crate::metrics::metrics;
use crate::source::now_epoch;

/// Rounds an item must stay free before an instance that is not its
/// desired owner takes it (its desired owner may see another membership
/// for a moment: no item changes hands for that).
const ORPHAN_ROUNDS: u32 = 4;

/// What can be owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A PBX's AMI connection.
    Pbx,
    /// A push team's normalizer.
    Team,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Pbx => "pbx",
            Kind::Team => "team",
        }
    }
}

/// One ownable thing.
pub type Item = (Kind, String);

/// A lease's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseValue {
    holder: String,
    instance: String,
    since: f64,
}

/// What became of a held lease in a round.
enum Renewal {
    Renewed(u64),
    /// The renewal failed and the lease cannot be read (NATS unreachable,
    /// a failover): still held, fenced once its last renewal is too old.
    Unknown,
    Lost,
    /// Desired elsewhere (or no longer configured): released once drained.
    HandOver(u64),
}

/// A renewal of the lease at revision `rev` failed: still ours if a newer
/// revision says so (the update landed but its answer was lost), not
/// renewed if it is still at `rev` or cannot be read (NATS unreachable, a
/// failover: the fence decides), lost otherwise (another holder, or gone).
async fn after_failed_renewal(leases: &kv::Store, key: &str, me: &str, rev: u64) -> Renewal {
    match leases.entry(key).await {
        Ok(Some(e)) if e.operation == kv::Operation::Put => {
            match serde_json::from_slice::<LeaseValue>(&e.value) {
                Ok(v) if v.holder == me && e.revision == rev => Renewal::Unknown,
                Ok(v) if v.holder == me => Renewal::Renewed(e.revision),
                _ => Renewal::Lost,
            }
        }
        Ok(_) => Renewal::Lost,
        Err(_) => Renewal::Unknown,
    }
}

/// What an instance knows of the cluster, for `/api/cluster` and `/readyz`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ClusterView {
    /// This instance (`name/nonce`).
    pub instance: String,
    /// Live members (their keys), as last seen.
    pub members: Vec<String>,
    /// The members the assignment counts (seen for two ticks): when every
    /// instance reports the same ones, ownership is stable.
    pub settled: Vec<String>,
    /// Items this instance owns.
    pub owned: Vec<String>,
    /// Every item's owner as last seen (`pbx:ID` → member key, or none).
    pub owners: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Default)]
struct Held {
    revision: u64,
    renewed: Option<Instant>,
}

/// An item handed over: no longer owned (fenced), its lease kept until the
/// normalizer has drained it (or the lease expires by itself).
#[derive(Debug)]
struct Releasing {
    revision: u64,
    drained: bool,
    since: Instant,
}

#[derive(Debug, Default)]
struct Shared {
    held: HashMap<Item, Held>,
    releasing: HashMap<Item, Releasing>,
    view: ClusterView,
}

/// Handle on the ownership task.
#[derive(Clone, Debug)]
pub struct OwnershipHandle {
    shared: Arc<Mutex<Shared>>,
    owned: watch::Receiver<Arc<BTreeSet<Item>>>,
    fence: Duration,
    stopped: CancellationToken,
    wake: Arc<tokio::sync::Notify>,
}

impl OwnershipHandle {
    /// Says that an item given up is drained: what this instance's
    /// normalizer wrote for it is committed and it holds nothing of it any
    /// more. Its lease is then deleted so the next owner takes it.
    pub fn drained(&self, kind: Kind, id: &str) {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = s.releasing.get_mut(&(kind, id.to_string())) {
            r.drained = true;
            self.wake.notify_one();
        }
    }

    /// Whether this instance owns `item` right now (a lease renewed within
    /// ¾ of its time to live).
    pub fn holds(&self, kind: Kind, id: &str) -> bool {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        s.held
            .get(&(kind, id.to_string()))
            .and_then(|h| h.renewed)
            .is_some_and(|t| t.elapsed() < self.fence)
    }

    /// The set of owned items, updated when it changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<BTreeSet<Item>>> {
        self.owned.clone()
    }

    /// What this instance knows of the cluster.
    pub fn view(&self) -> ClusterView {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .view
            .clone()
    }

    /// Resolves once the task has stopped (its leases released).
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }
}

/// The key of this process in the members bucket.
pub fn member_key(c: &Cluster) -> String {
    let nonce = c.id.rsplit('/').next().unwrap_or("0");
    format!("{}-{nonce}", names::token(&c.cfg.instance))
}

/// Bounded-load rendezvous assignment: item → member (same on every
/// instance for the same inputs).
pub fn assign(items: &[Item], members: &[String]) -> BTreeMap<Item, String> {
    let mut out = BTreeMap::new();
    if members.is_empty() {
        return out;
    }
    let cap = items.len().div_ceil(members.len());
    let mut load: HashMap<&str, usize> = HashMap::new();
    let mut sorted: Vec<&Item> = items.iter().collect();
    sorted.sort();
    sorted.dedup();
    for item in sorted {
        let key = lease_key(item.0.as_str(), &item.1);
        let mut ranked: Vec<(String, &String)> =
            members.iter().map(|m| (digest(&[&key, m], 8), m)).collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0));
        if let Some((_, m)) = ranked
            .iter()
            .find(|(_, m)| load.get(m.as_str()).copied().unwrap_or(0) < cap)
        {
            *load.entry(m.as_str()).or_default() += 1;
            out.insert(item.clone(), (*m).clone());
        }
    }
    out
}

/// Starts the ownership task for the items `items` names (replaced on
/// reload). It stops on `shutdown`, releasing its leases.
pub async fn start(
    cluster: Cluster,
    items: watch::Receiver<Vec<Item>>,
    shutdown: CancellationToken,
) -> Result<OwnershipHandle, super::ClusterError> {
    let leases = cluster.bucket(&cluster.names.leases_bucket()).await?;
    let members = cluster.bucket(&cluster.names.members_bucket()).await?;
    let ttl = cluster.cfg.lease_ttl;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (tx, rx) = watch::channel(Arc::new(BTreeSet::new()));
    let stopped = CancellationToken::new();
    let wake = Arc::new(tokio::sync::Notify::new());
    let h = OwnershipHandle {
        shared: shared.clone(),
        owned: rx,
        fence: ttl.mul_f64(0.75),
        stopped: stopped.clone(),
        wake: wake.clone(),
    };
    let task = Task {
        me: member_key(&cluster),
        cluster,
        leases,
        members,
        ttl,
        shared,
        tx,
        seen: HashMap::new(),
        free_since: HashMap::new(),
        wake,
    };
    tokio::spawn(async move {
        task.run(items, shutdown).await;
        stopped.cancel();
    });
    Ok(h)
}

struct Task {
    cluster: Cluster,
    me: String,
    leases: kv::Store,
    members: kv::Store,
    ttl: Duration,
    shared: Arc<Mutex<Shared>>,
    tx: watch::Sender<Arc<BTreeSet<Item>>>,
    /// Members and how many consecutive ticks they were seen.
    seen: HashMap<String, u32>,
    /// Items seen free, since which tick count.
    free_since: HashMap<Item, u32>,
    /// Rung when a handed-over item is drained.
    wake: Arc<tokio::sync::Notify>,
}

impl Task {
    fn tick(&self) -> Duration {
        self.ttl / 4
    }

    async fn run(mut self, mut items: watch::Receiver<Vec<Item>>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.tick());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
                r = items.changed() => if r.is_err() { shutdown.cancelled().await; break; },
                _ = self.wake.notified() => {
                    self.release_drained().await;
                    continue;
                }
            }
            let list = items.borrow_and_update().clone();
            self.round(&list).await;
        }
        self.release_all().await;
    }

    /// Deletes the leases of the handed-over items that are drained (the
    /// next owner takes them at its next tick); forgets those whose lease
    /// has expired by itself meanwhile.
    async fn release_drained(&mut self) {
        let ready: Vec<(Item, u64)> = {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            let ttl = self.ttl;
            s.releasing
                .retain(|_, r| r.drained || r.since.elapsed() < ttl);
            let ready: Vec<(Item, u64)> = s
                .releasing
                .iter()
                .filter(|(_, r)| r.drained)
                .map(|(i, r)| (i.clone(), r.revision))
                .collect();
            for (i, _) in &ready {
                s.releasing.remove(i);
            }
            ready
        };
        let ops = ready.into_iter().map(|(item, rev)| {
            let leases = self.leases.clone();
            async move {
                let key = lease_key(item.0.as_str(), &item.1);
                let _ = leases.delete_expect_revision(&key, Some(rev)).await;
                tracing::info!(target: "callhook::cluster", item = %format!("{}:{}", item.0.as_str(), item.1), "handed over (drained, lease released)");
            }
        });
        futures::future::join_all(ops).await;
    }

    fn lease_value(&self) -> bytes::Bytes {
        serde_json::to_vec(&LeaseValue {
            holder: self.me.clone(),
            instance: self.cluster.id.clone(),
            since: now_epoch(),
        })
        .unwrap_or_default()
        .into()
    }

    async fn round(&mut self, items: &[Item]) {
        self.release_drained().await;
        let fence = self.ttl.mul_f64(0.75);
        // 1. Fence: leases not renewed in time are no longer ours.
        {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            s.held.retain(|item, h| {
                let fresh = h.renewed.is_some_and(|t| t.elapsed() < fence);
                if !fresh {
                    tracing::warn!(target: "callhook::cluster", item = %format!("{}:{}", item.0.as_str(), item.1), "lease not renewed in time: giving it up");
                }
                fresh
            });
        }
        // 2. Membership.
        let me_value = bytes::Bytes::from(self.cluster.id.clone());
        if let Err(e) = self.members.put(&self.me, me_value).await {
            tracing::warn!(target: "callhook::cluster", error = %e, "cannot announce this instance");
        }
        let mut live = BTreeSet::new();
        match self.members.keys().await {
            Ok(mut keys) => {
                while let Some(k) = keys.next().await {
                    match k {
                        Ok(k) => {
                            live.insert(k);
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(e) => {
                tracing::debug!(target: "callhook::cluster", error = %e, "cannot list members");
                live.extend(self.seen.keys().cloned());
            }
        }
        live.insert(self.me.clone());
        self.seen.retain(|k, _| live.contains(k));
        for k in &live {
            *self.seen.entry(k.clone()).or_default() += 1;
        }
        let settled: Vec<String> = self
            .seen
            .iter()
            .filter(|(k, n)| **n >= 2 || **k == self.me)
            .map(|(k, _)| k.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let desired = assign(items, &settled);
        // 3. Renew, hand over, or take.
        let held: Vec<(Item, u64)> = {
            let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            s.held
                .iter()
                .map(|(i, h)| (i.clone(), h.revision))
                .collect()
        };
        let wanted: BTreeSet<&Item> = items.iter().collect();
        let value = self.lease_value();
        let mut ops = Vec::new();
        let me = self.me.clone();
        for (item, rev) in &held {
            let key = lease_key(item.0.as_str(), &item.1);
            let mine = desired.get(item).is_none_or(|m| *m == self.me);
            let leases = self.leases.clone();
            let value = value.clone();
            let keep = mine && wanted.contains(item);
            let (item, rev) = (item.clone(), *rev);
            let me = me.clone();
            ops.push(async move {
                if keep {
                    match leases.update(&key, value, rev).await {
                        Ok(r) => (item, Renewal::Renewed(r)),
                        Err(e) => {
                            tracing::warn!(target: "callhook::cluster", lease = %key, error = %e, "lease renewal failed");
                            (item, after_failed_renewal(&leases, &key, &me, rev).await)
                        }
                    }
                } else {
                    (item, Renewal::HandOver(rev))
                }
            });
        }
        let renewed = futures::future::join_all(ops).await;
        let now = Instant::now();
        {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            for (item, r) in renewed {
                match r {
                    Renewal::Renewed(rev) => {
                        if let Some(h) = s.held.get_mut(&item) {
                            h.revision = rev;
                            h.renewed = Some(now);
                        }
                    }
                    Renewal::Unknown => {}
                    Renewal::Lost => {
                        s.held.remove(&item);
                        tracing::info!(target: "callhook::cluster", item = %format!("{}:{}", item.0.as_str(), item.1), "ownership given up");
                    }
                    Renewal::HandOver(revision) => {
                        s.held.remove(&item);
                        tracing::info!(target: "callhook::cluster", item = %format!("{}:{}", item.0.as_str(), item.1), "ownership given up: handing over once drained");
                        s.releasing.insert(
                            item,
                            Releasing {
                                revision,
                                drained: false,
                                since: now,
                            },
                        );
                    }
                }
            }
        }
        let held_now: BTreeSet<Item> = {
            let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            s.held.keys().cloned().collect()
        };
        let round_no = self.seen.get(&self.me).copied().unwrap_or(0);
        let mut takes = Vec::new();
        let mut owners: BTreeMap<String, Option<String>> = BTreeMap::new();
        for item in items {
            if held_now.contains(item) {
                continue;
            }
            let key = lease_key(item.0.as_str(), &item.1);
            let leases = self.leases.clone();
            let value = value.clone();
            let desired_mine = desired.get(item).is_some_and(|m| *m == self.me);
            let item = item.clone();
            takes.push(async move {
                let current = leases
                    .entry(&key)
                    .await
                    .ok()
                    .flatten()
                    .filter(|e| e.operation == kv::Operation::Put);
                let holder = current
                    .as_ref()
                    .and_then(|e| serde_json::from_slice::<LeaseValue>(&e.value).ok())
                    .map(|v| v.holder);
                (item, key, desired_mine, holder, leases, value)
            });
        }
        let seen_leases = futures::future::join_all(takes).await;
        let mut creates = Vec::new();
        for (item, key, desired_mine, holder, leases, value) in seen_leases {
            owners.insert(format!("{}:{}", item.0.as_str(), item.1), holder.clone());
            if holder.is_some() {
                self.free_since.remove(&item);
                continue;
            }
            let first_free = *self.free_since.entry(item.clone()).or_insert(round_no);
            let orphaned = round_no.saturating_sub(first_free) >= ORPHAN_ROUNDS;
            if desired_mine || orphaned {
                creates.push(async move {
                    match leases.create(&key, value).await {
                        Ok(rev) => Some((item, rev)),
                        Err(_) => None,
                    }
                });
            }
        }
        let created = futures::future::join_all(creates).await;
        let now = Instant::now();
        {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            for (item, rev) in created.into_iter().flatten() {
                tracing::info!(target: "callhook::cluster", item = %format!("{}:{}", item.0.as_str(), item.1), "ownership taken");
                self.free_since.remove(&item);
                s.held.insert(
                    item,
                    Held {
                        revision: rev,
                        renewed: Some(now),
                    },
                );
            }
            for item in s.held.keys() {
                owners.insert(
                    format!("{}:{}", item.0.as_str(), item.1),
                    Some(self.me.clone()),
                );
            }
            let owned: BTreeSet<Item> = s.held.keys().cloned().collect();
            s.view = ClusterView {
                instance: self.cluster.id.clone(),
                members: live.iter().cloned().collect(),
                settled: settled.clone(),
                owned: owned
                    .iter()
                    .map(|(k, id)| format!("{}:{id}", k.as_str()))
                    .collect(),
                owners,
            };
            let m = &metrics().cluster;
            m.members.set(live.len() as i64);
            m.owned
                .with_label_values(&["pbx"])
                .set(owned.iter().filter(|i| i.0 == Kind::Pbx).count() as i64);
            m.owned
                .with_label_values(&["team"])
                .set(owned.iter().filter(|i| i.0 == Kind::Team).count() as i64);
            if **self.tx.borrow() != owned {
                self.tx.send_replace(Arc::new(owned));
            }
        }
        self.free_since.retain(|i, _| wanted.contains(i));
    }

    /// Clean stop (after the normalizer's last commit): leases deleted so
    /// others take over at once.
    async fn release_all(&mut self) {
        let held: Vec<(Item, u64)> = {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<(Item, u64)> = s
                .held
                .iter()
                .map(|(i, h)| (i.clone(), h.revision))
                .collect();
            v.extend(s.releasing.iter().map(|(i, r)| (i.clone(), r.revision)));
            s.held.clear();
            s.releasing.clear();
            v
        };
        self.tx.send_replace(Arc::new(BTreeSet::new()));
        let ops = held.into_iter().map(|(item, rev)| {
            let leases = self.leases.clone();
            async move {
                let key = lease_key(item.0.as_str(), &item.1);
                let _ = leases.delete_expect_revision(&key, Some(rev)).await;
            }
        });
        futures::future::join_all(ops).await;
        let _ = self.members.delete(&self.me).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Item> {
        (0..n).map(|i| (Kind::Pbx, format!("pbx{i}"))).collect()
    }

    #[test]
    fn balanced_and_stable() {
        let ms: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let its = items(200);
        let a = assign(&its, &ms);
        assert_eq!(a.len(), 200);
        for m in &ms {
            let n = a.values().filter(|v| *v == m).count();
            assert!((66..=67).contains(&n), "{m}: {n}");
        }
        // Same inputs, same answer, whatever the order.
        let mut rev = its.clone();
        rev.reverse();
        assert_eq!(assign(&rev, &ms), a);
        // A member leaves: only its items move.
        let two: Vec<String> = ms[..2].to_vec();
        let b = assign(&its, &two);
        let moved = its
            .iter()
            .filter(|i| a[*i] != "c" && a[*i] != b[*i])
            .count();
        assert!(moved <= 20, "{moved} items moved that did not have to");
        // A member joins: about a quarter moves.
        let mut four = ms.clone();
        four.push("d".into());
        let c = assign(&its, &four);
        let moved = its.iter().filter(|i| a[*i] != c[*i]).count();
        assert!(moved <= 80, "{moved}");
        assert!(assign(&its, &[]).is_empty());
    }
}
