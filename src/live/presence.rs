//! Extension states from the presence tracker into the live tenants.
//!
//! One task per live tenant follows the [`PresenceHub`]: it takes the
//! tenant's snapshot and the change stream together
//! ([`PresenceHub::subscribe_with_snapshot`]), seeds the tenant from the
//! snapshot, then applies every change in `seq` order. A change whose `seq`
//! is not above the last one applied is a duplicate and skipped; one that
//! skips a number (or a lagged receiver) means changes were lost: the
//! task takes a fresh snapshot and seeds again (counted in
//! `callhook_live_dropped_total{reason="presence_resync"}`). Rows the
//! tracker knows nothing about (`unknown` with no source) leave the state
//! to the model's legs.
//!
//! This only reads the tracker: nothing flows back into it.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::tenant::{ExtCall, ExtState, TenantState};
use super::Live;
use crate::metrics::metrics;
use crate::model::State;
use crate::presence::{
    CallPhase, ExtensionPresence, PresenceHub, PresenceState, StateSource, TenantSnapshot,
};

/// The live form of a tracker row; `None` when the tracker knows nothing.
pub fn ext_state(p: &ExtensionPresence) -> Option<ExtState> {
    if p.state == PresenceState::Unknown && p.source == StateSource::None {
        return None;
    }
    let source = match p.source {
        StateSource::Calls => "calls",
        StateSource::Hint => "hint",
        StateSource::Device => "device",
        StateSource::Registration => "registration",
        StateSource::Inferred => "inferred",
        StateSource::None => "none",
    };
    Some(ExtState {
        extension: p.extension.clone(),
        state: p.state.as_str().to_string(),
        since: p.since,
        call_waiting: p.call_waiting,
        registered: p.registered,
        source,
        calls: p
            .calls
            .iter()
            .map(|c| ExtCall {
                session_id: c.session_id.clone(),
                role: c.role,
                state: match c.phase {
                    CallPhase::Ringing | CallPhase::Dialing => State::Ringing,
                    CallPhase::Talking | CallPhase::OnHold => State::Answered,
                },
                direction: c.direction,
            })
            .collect(),
    })
}

/// Applies one tracker row.
pub fn apply_row(t: &mut TenantState, p: &ExtensionPresence) {
    match ext_state(p) {
        Some(st) => t.report(st),
        None => t.withdraw(&p.extension),
    }
}

/// Seeds a tenant from a snapshot: every row, and rows no longer in the
/// table go back to the model's legs.
pub fn seed(t: &mut TenantState, snap: Option<&TenantSnapshot>) {
    let rows = snap.map_or(&[][..], |s| &s.extensions[..]);
    let keep: BTreeSet<&str> = rows.iter().map(|r| r.extension.as_str()).collect();
    let gone: Vec<String> = t
        .reported
        .keys()
        .filter(|e| !keep.contains(e.as_str()))
        .cloned()
        .collect();
    for e in gone {
        t.withdraw(&e);
    }
    for r in rows {
        apply_row(t, r);
    }
}

/// Whether `extension` exists on a tenant's PBX (a Meetip login's "unknown
/// extension"). `Some(true)` when it is configured (`presence.extensions`,
/// `presence.tenants.<id>.extensions`) or in the tracker's table: a hint, a
/// phone device (SIP/IAX peer, PJSIP endpoint or contact) named after it,
/// or traffic. `Some(false)` only when the directory is closed: the tenant
/// has configured extensions (the admin's statement of which exist) and the
/// PBX is connected and answered its state lists. `None` (cannot tell, so
/// never refuse) otherwise: what the PBX lists cannot prove that a phone
/// does not exist (a DAHDI or Local phone without a hint is in no list; an
/// AMI user may lack the privilege for `SIPpeers`), and the PBX may not be
/// connected yet.
pub fn directory_knows(
    snap: Option<&TenantSnapshot>,
    configured: &BTreeSet<String>,
    extension: &str,
) -> Option<bool> {
    if configured.contains(extension) || snap.is_some_and(|s| s.get(extension).is_some()) {
        return Some(true);
    }
    let connected = snap.is_some_and(|s| s.connected == Some(true));
    (!configured.is_empty() && connected).then_some(false)
}

/// Follows the hub for every live tenant until `token` is cancelled;
/// `cfg` gives each tenant's configured extensions.
pub fn spawn(
    live: &Arc<Live>,
    hub: &PresenceHub,
    cfg: &crate::presence::PresenceConfig,
    token: &CancellationToken,
) {
    let configured = live
        .tenant_ids()
        .into_iter()
        .map(|t| {
            let exts = cfg.extensions_for(&t).into_iter().collect();
            (t, exts)
        })
        .collect();
    live.attach_presence(hub.clone(), configured);
    for tenant in live.tenant_ids() {
        tokio::spawn(follow(live.clone(), hub.clone(), tenant, token.clone()));
    }
}

/// Follows one tenant (see the module doc).
pub async fn follow(live: Arc<Live>, hub: PresenceHub, tenant: String, token: CancellationToken) {
    loop {
        let (snap, mut rx) = hub.subscribe_with_snapshot(&tenant);
        let mut last = snap.as_ref().map_or(0, |s| s.seq);
        live.seed_presence(&tenant, snap.as_ref());
        loop {
            let ev = tokio::select! {
                _ = token.cancelled() => return,
                r = rx.recv() => r,
            };
            match ev {
                Ok(ev) if ev.pbx.as_str() != tenant => {}
                Ok(ev) if ev.seq <= last => {}
                Ok(ev) if ev.seq == last + 1 => {
                    last = ev.seq;
                    live.report_presence(&tenant, &ev.presence);
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    metrics()
                        .live_dropped
                        .with_label_values(&["presence_resync"])
                        .inc();
                    break;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::auth::{Principal, Scope};
    use crate::model::Timestamp;

    fn row(ext: &str, state: PresenceState, source: StateSource) -> ExtensionPresence {
        ExtensionPresence {
            extension: ext.into(),
            state,
            call_waiting: false,
            since: Timestamp(10.0),
            source,
            registered: Some(state != PresenceState::Unavailable),
            hint: None,
            calls: Vec::new(),
        }
    }

    fn states(t: &TenantState) -> Vec<(String, String)> {
        let p = Principal {
            tenant: "main".into(),
            extension: "999".into(),
            scope: Scope::Monitor,
        };
        let snap = t.snapshot(&p);
        snap["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["extension"].as_str().unwrap().to_string(),
                    e["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn the_directory_refuses_only_when_closed() {
        let mut snap = TenantSnapshot {
            pbx: "main".into(),
            seq: 4,
            connected: None,
            extensions: vec![row("1001", PresenceState::Idle, StateSource::Hint)],
        };
        let open = BTreeSet::new();
        let listed: BTreeSet<String> = ["1002".to_string()].into();
        assert_eq!(directory_knows(None, &open, "1001"), None);
        assert_eq!(directory_knows(Some(&snap), &open, "1001"), Some(true));
        assert_eq!(directory_knows(None, &listed, "1002"), Some(true));
        // Not connected yet: cannot tell.
        assert_eq!(directory_knows(Some(&snap), &listed, "4711"), None);
        snap.connected = Some(true);
        assert_eq!(directory_knows(Some(&snap), &listed, "4711"), Some(false));
        // Nothing configured: what the PBX lists proves no absence.
        assert_eq!(directory_knows(Some(&snap), &open, "4711"), None);
        // A phone without a hint (a peer, or traffic) is known.
        let mut peer = row("1003", PresenceState::Idle, StateSource::Registration);
        peer.hint = None;
        snap.extensions.push(peer);
        assert_eq!(directory_knows(Some(&snap), &listed, "1003"), Some(true));
    }

    #[test]
    fn seed_then_rows_win_and_unknown_leaves_it_to_the_model() {
        let mut t = TenantState::new("main", 16);
        let snap = TenantSnapshot {
            pbx: "main".into(),
            seq: 4,
            connected: Some(true),
            extensions: vec![
                row("1001", PresenceState::Idle, StateSource::Hint),
                row("1004", PresenceState::Busy, StateSource::Hint),
            ],
        };
        seed(&mut t, Some(&snap));
        assert_eq!(
            states(&t),
            [
                ("1001".into(), "idle".into()),
                ("1004".into(), "busy".into())
            ]
        );
        // Two presence messages, one per row; the same row again: nothing.
        assert_eq!(t.seq, 2);
        apply_row(&mut t, &row("1004", PresenceState::Busy, StateSource::Hint));
        assert_eq!(t.seq, 2);
        apply_row(
            &mut t,
            &row(
                "1004",
                PresenceState::Unavailable,
                StateSource::Registration,
            ),
        );
        assert_eq!(t.seq, 3);
        assert_eq!(t.state_of("1004").unwrap().registered, Some(false));
        // The tracker forgets 1004 (a new snapshot without it): back to
        // the model, which knows nothing either.
        let snap = TenantSnapshot {
            extensions: vec![row("1001", PresenceState::Idle, StateSource::Hint)],
            ..snap
        };
        seed(&mut t, Some(&snap));
        assert!(t.state_of("1004").is_none());
        apply_row(
            &mut t,
            &row("1001", PresenceState::Unknown, StateSource::None),
        );
        assert!(t.state_of("1001").is_none());
    }

    fn live_main() -> Arc<Live> {
        let mut c = crate::live::config::LiveConfig::default();
        c.tenants.insert(
            "main".into(),
            crate::live::config::Tenant {
                id: "main".into(),
                key: crate::config::Secret::new("k".repeat(16)),
                code: 1,
                monitor_extension: "999".into(),
                channel: "SIP/{extension}".into(),
                context: "from-internal".into(),
            },
        );
        Live::new(c, Arc::new(|_: &str| None))
    }

    fn status(ext: &str, code: &str, at: f64) -> crate::source::PresenceSourceEvent {
        let t = format!("{at}");
        crate::source::PresenceSourceEvent::Ami {
            pbx: "main".into(),
            received_at: at,
            msg: crate::ami::AmiMessage::from_pairs([
                ("Event", "ExtensionStatus"),
                ("Timestamp", t.as_str()),
                ("Exten", ext),
                ("Hint", "SIP/x&Custom:DNDx"),
                ("Status", code),
            ]),
        }
    }

    async fn eventually(live: &Live, ext: &str, want: &str) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let got = live
                .with_tenant("main", |t| t.state_of(ext).map(|s| s.state))
                .flatten();
            if got.as_deref() == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{ext}: {got:?}, want {want}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn follows_from_the_snapshot_and_resyncs_after_a_lag() {
        use crate::presence::{PresenceTracker, TrackerConfig};
        // Room for one change only: a burst makes the follower lag.
        let hub = PresenceHub::new(PresenceTracker::new(TrackerConfig::default()), 1);
        hub.handle_sources([&status("1001", "2", 10.0)]);
        let live = live_main();
        let token = CancellationToken::new();
        spawn(&live, &hub, &Default::default(), &token);
        // Seeded from the snapshot: DND (busy) before any change.
        eventually(&live, "1001", "busy").await;
        hub.handle_sources([&status("1001", "0", 11.0)]);
        eventually(&live, "1001", "idle").await;
        let before = metrics()
            .live_dropped
            .with_label_values(&["presence_resync"])
            .get();
        let burst: Vec<_> = (0..50)
            .map(|i| {
                status(
                    &format!("20{i:02}"),
                    if i % 2 == 0 { "1" } else { "4" },
                    12.0,
                )
            })
            .collect();
        hub.handle_sources(burst.iter());
        // Whatever was lost, the table is right in the end.
        eventually(&live, "2049", "unavailable").await;
        eventually(&live, "2048", "in_use").await;
        eventually(&live, "2000", "in_use").await;
        let after = metrics()
            .live_dropped
            .with_label_values(&["presence_resync"])
            .get();
        assert!(after > before, "a lagged follower takes a new snapshot");
        token.cancel();
    }
}
