//! Which PBXs and push teams this instance handles, and their live calls
//! following them: in single-node mode every PBX's stored calls are
//! restored at start; in cluster mode the follower makes the AMI clients
//! and push consumers follow the leases this instance holds, restores a
//! taken PBX's calls before its client starts (a taken push team's
//! sessions before its pushes are consumed), and has the normalizer drop
//! (after its last commit) what was given up before the lease is released.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::clients::Clients;
use crate::cluster::ownership::{Item, Kind, OwnershipHandle};
use crate::cluster::Cluster;
use crate::config::{Config, PbxConfig};
use crate::deliver::store::DeliveryStore;
use crate::http::push::Teams;
use crate::normalize::Normalizer;
use crate::source::SourceEvent;

/// What an instance may own in cluster mode: every PBX and push team.
pub(super) fn ownable(cfg: &Config) -> Vec<Item> {
    let mut v: Vec<Item> = cfg.pbx.iter().map(|p| (Kind::Pbx, p.id.clone())).collect();
    if let Some(p) = &cfg.push {
        v.extend(p.teams.iter().map(|t| (Kind::Team, t.name.clone())));
    }
    v
}

/// Whether this instance may turn events of `pbx` into deliveries: always
/// in single-node mode; in cluster mode while it holds the lease.
pub(super) fn owns(o: &Option<OwnershipHandle>, pbx: &str, team: bool) -> bool {
    match o {
        None => true,
        Some(o) => o.holds(if team { Kind::Team } else { Kind::Pbx }, pbx),
    }
}

/// A change of ownership the normalizer task applies between two batches
/// (cluster mode).
pub(super) enum Handover {
    /// Given up: the normalizer drops the calls of this PBX or team (after
    /// its batch in progress is committed); `done` once it has.
    Forget {
        id: String,
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// Taken: the PBX's stored live calls (a push team's sessions) go back
    /// into the normalizer; `done` once they are (its AMI client, or the
    /// team's push consumer, starts after that).
    Restore {
        item: Item,
        snapshots: Vec<Vec<u8>>,
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// Some time after a take: the sessions stored for the item are written
    /// again with the next batch, as the normalizer has them (deleted when
    /// it does not know them). What a previous owner wrote after this
    /// instance loaded the calls (its lease expired during a commit longer
    /// than [`DRAIN_WAIT`]) is undone, so no stale call is left for the
    /// owner after this one.
    Rewrite { item: Item, sessions: Vec<String> },
}

/// How long a handed-over item may take to drain before its lease is left
/// to expire by itself.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// After a take, how long (beyond the lease's time to live) until the
/// stored calls are written again ([`Handover::Rewrite`]): by then a
/// previous owner is fenced (its lease's age) and a commit it had in flight
/// has ended (JetStream requests time out after 5 s; a commit is the
/// deliveries, then the calls).
const REWRITE_MARGIN: Duration = Duration::from_secs(15);

/// How often loading a taken PBX's calls is tried before its AMI client
/// starts without them (its calls in progress then start afresh from the
/// login's snapshot; a team's from their next push).
const LOAD_TRIES: u32 = 3;

/// Reads the stored live calls of a PBX (or push team) this instance just
/// took.
async fn load_calls(store: &dyn DeliveryStore, pbx: &str) -> Vec<Vec<u8>> {
    for attempt in 1..=LOAD_TRIES {
        match tokio::time::timeout(Duration::from_secs(10), store.live_calls(pbx)).await {
            Ok(Ok(calls)) => return calls.into_iter().map(|c| c.snapshot).collect(),
            Ok(Err(e)) => {
                warn!(pbx, attempt, error = %e, "cannot read the live calls of a PBX taken over")
            }
            Err(_) => warn!(
                pbx,
                attempt, "reading the live calls of a PBX taken over timed out"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
    }
    error!(pbx, "starting without the calls in progress of the previous owner: calls that end before the login (or their next push) get no record");
    Vec::new()
}

/// Cluster mode: makes the AMI clients and push consumers follow what this
/// instance owns (and the configured PBXs, replaced on reload). What is
/// given up is forgotten by the normalizer; a PBX taken has its stored live
/// calls restored in the normalizer before its AMI client starts, so the
/// post-login reconciliation closes or continues them; a push team taken
/// has its stored sessions restored before its push consumer starts, so
/// the pushes the previous owner did not apply continue them.
#[allow(clippy::too_many_arguments)]
pub(super) async fn follow_ownership(
    cluster: Cluster,
    store: Arc<dyn DeliveryStore>,
    ownership: OwnershipHandle,
    mut owned: watch::Receiver<Arc<std::collections::BTreeSet<Item>>>,
    mut pbx: watch::Receiver<Vec<PbxConfig>>,
    clients: Clients,
    teams: watch::Receiver<Arc<Teams>>,
    token_param: String,
    events: mpsc::Sender<SourceEvent>,
    handover: mpsc::UnboundedSender<Handover>,
    stop: CancellationToken,
) {
    let mut consumers: std::collections::BTreeMap<String, CancellationToken> = Default::default();
    let mut before = std::collections::BTreeSet::<Item>::new();
    loop {
        let now = owned.borrow_and_update().clone();
        let list: Vec<PbxConfig> = pbx
            .borrow_and_update()
            .iter()
            .filter(|p| now.contains(&(Kind::Pbx, p.id.clone())))
            .cloned()
            .collect();
        for gone in before.difference(&now) {
            if gone.0 == Kind::Team {
                if let Some(t) = consumers.remove(&gone.1) {
                    t.cancel();
                }
            }
            info!(kind = ?gone.0, id = %gone.1, "no longer owned here");
            // Its lease is released once the normalizer has committed what
            // it wrote for it (the next owner then loads its calls); if that
            // takes too long the lease expires by itself.
            let (done, forgotten) = tokio::sync::oneshot::channel();
            let _ = handover.send(Handover::Forget {
                id: gone.1.clone(),
                done,
            });
            let o = ownership.clone();
            let (kind, id) = gone.clone();
            tokio::spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(DRAIN_WAIT, forgotten).await {
                    o.drained(kind, &id);
                }
            });
        }
        // PBXs and teams taken: their calls back first (all at once), then
        // the clients and push consumers.
        let taken: Vec<Item> = list
            .iter()
            .map(|p| (Kind::Pbx, p.id.clone()))
            .chain(now.iter().filter(|i| i.0 == Kind::Team).cloned())
            .filter(|i| !before.contains(i))
            .collect();
        let loaded = futures::future::join_all(taken.into_iter().map(|item| {
            let store = store.clone();
            async move {
                let calls = load_calls(store.as_ref(), &item.1).await;
                (item, calls)
            }
        }))
        .await;
        for (item, _) in &loaded {
            tokio::spawn(rewrite_later(
                item.clone(),
                cluster.cfg.lease_ttl + REWRITE_MARGIN,
                store.clone(),
                ownership.clone(),
                handover.clone(),
                stop.clone(),
            ));
        }
        for (item, snapshots) in loaded {
            if snapshots.is_empty() {
                continue;
            }
            let (done, restored) = tokio::sync::oneshot::channel();
            let _ = handover.send(Handover::Restore {
                item,
                snapshots,
                done,
            });
            tokio::select! {
                _ = restored => {}
                _ = stop.cancelled() => break,
            }
        }
        clients.apply(&list).await;
        for (kind, id) in now.iter() {
            if *kind == Kind::Team && !consumers.contains_key(id) {
                let t = stop.child_token();
                consumers.insert(id.clone(), t.clone());
                tokio::spawn(crate::cluster::push::consume(
                    cluster.clone(),
                    id.clone(),
                    teams.clone(),
                    token_param.clone(),
                    events.clone(),
                    t,
                ));
            }
        }
        before = (*now).clone();
        tokio::select! {
            _ = stop.cancelled() => break,
            r = owned.changed() => if r.is_err() { break },
            r = pbx.changed() => if r.is_err() { break },
        }
    }
    for t in consumers.values() {
        t.cancel();
    }
}

/// Asks the normalizer to write `item`'s stored calls again `after` a take
/// (see [`Handover::Rewrite`]), if this instance still owns it.
async fn rewrite_later(
    item: Item,
    after: Duration,
    store: Arc<dyn DeliveryStore>,
    ownership: OwnershipHandle,
    handover: mpsc::UnboundedSender<Handover>,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(after) => {}
    }
    if !ownership.holds(item.0, &item.1) {
        return;
    }
    match tokio::time::timeout(Duration::from_secs(10), store.live_calls(&item.1)).await {
        Ok(Ok(calls)) if calls.is_empty() => {}
        Ok(Ok(calls)) => {
            let sessions = calls.into_iter().map(|c| c.session).collect();
            let _ = handover.send(Handover::Rewrite { item, sessions });
        }
        Ok(Err(e)) => {
            warn!(id = %item.1, error = %e, "cannot read the stored calls to write them again after the takeover")
        }
        Err(_) => {
            warn!(id = %item.1, "reading the stored calls to write them again after the takeover timed out")
        }
    }
}

/// Puts the live calls stored by the previous run back into the model
/// (AMI calls and push sessions), before the first login's reconciliation
/// closes those that ended while callhook was down (exactly once: a call's
/// removal is committed with its record). Calls of ids no longer
/// configured are restored too and closed by the first tick
/// (`NormalizerConfig::sources`). Every stored row is written again with
/// the first batch: as restored, or deleted when it could not be used.
pub(super) async fn restore_live_calls(normalizer: &mut Normalizer, store: &dyn DeliveryStore) {
    normalizer.track_changes();
    let ids = match store.live_call_ids().await {
        Ok(ids) => ids,
        Err(e) => {
            warn!(error = %e, "cannot read the stored live calls: calls in progress before the restart get no record");
            return;
        }
    };
    for pbx in ids {
        let mine = match store.live_calls(&pbx).await {
            Ok(s) => s,
            Err(e) => {
                warn!(%pbx, error = %e, "cannot read the stored live calls: calls in progress before the restart get no record");
                continue;
            }
        };
        let id: crate::source::PbxId = pbx.as_str().into();
        let snaps: Vec<Vec<u8>> = mine.iter().map(|c| c.snapshot.clone()).collect();
        let r = normalizer.restore_stored(&id, &snaps);
        info!(%pbx, calls = r.calls, skipped = r.skipped, "live calls restored; the login's snapshot (push sessions: their own pushes or calls.max_age) settles those that ended meanwhile");
        let again: Vec<crate::normalize::CallChange> = mine
            .iter()
            .map(|c| crate::normalize::CallChange {
                pbx: id.clone(),
                session: c.session.clone(),
                snapshot: None,
            })
            .collect();
        normalizer.requeue_dirty(&again);
    }
}
