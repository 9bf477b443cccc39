//! What a reload changes: which settings the running daemon applies and
//! which ones only a restart can change, by key.
//!
//! Applied at once: `rules`, `targets`, `env`, `rewrite`, `include`, push
//! team tokens and time zones, `pbx` (a PBX added, removed or changed is
//! connected, disconnected or reconnected), `classify`, `calls` and
//! `push.settle` (they apply to what the normalizer sees next; channels
//! already classified keep their class), the AGI routing table (`agi.routes`,
//! `agi.rewrite`, `agi.no_route` and the other per-call settings: calls in
//! progress keep the table they started with).
//!
//! Need a restart ([`RESTART_KEYS`]): `listen`, `state_dir`, `outbox`,
//! `admin` (the token), the push endpoint's mount (`push` added or removed,
//! `push.path`, `push.token_param`, `push.token_header`), and a larger
//! shared event queue (`pbx.queue_capacity`: the sum over PBXs is sized at
//! start), `presence` (the tracker and the clients' state actions keep
//! the settings they started with), the FastAGI server added or removed
//! (`agi`), its `agi.listen`, and its listener limits (`agi.limits`:
//! `allow_from`, the session caps, `env_timeout`, `session_timeout`,
//! `max_line`), and the AMI proxy (`ami_proxy`: any change of the section,
//! its users included; connected tools keep their sessions).

use super::Config;

/// Every key a reload can report as needing a restart (a bounded metric label).
pub use crate::metrics::CONFIG_RESTART_KEYS as RESTART_KEYS;

pub use crate::http::ReloadOutcome;

/// Total capacity of the shared event queue for a config.
pub fn queue_capacity(cfg: &Config, push_room: usize) -> usize {
    cfg.pbx.iter().map(|p| p.queue_capacity).sum::<usize>()
        + if cfg.push.is_some() { push_room } else { 0 }
}

/// The keys that differ between the config the process started with and
/// `new` and that only a restart applies. `queue` is the size of the
/// running queue.
pub fn restart_required(
    started: &Config,
    new: &Config,
    queue: usize,
    push_room: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |key: &str, changed: bool| {
        if changed {
            out.push(key.to_string());
        }
    };
    diff("listen", started.listen != new.listen);
    diff("state_dir", started.state_dir != new.state_dir);
    let (a, b) = (&started.outbox, &new.outbox);
    diff(
        "outbox",
        (a.max_rows, a.done_retention, a.dedupe_window, a.durability)
            != (b.max_rows, b.done_retention, b.dedupe_window, b.durability),
    );
    diff("admin", started.admin_token != new.admin_token);
    match (&started.push, &new.push) {
        (Some(a), Some(b)) => {
            diff("push.path", a.path != b.path);
            diff("push.token_param", a.token_param != b.token_param);
            diff("push.token_header", a.token_header != b.token_header);
        }
        (None, None) => {}
        _ => diff("push", true),
    }
    diff("cluster", started.cluster != new.cluster);
    diff(
        "pbx.queue_capacity",
        queue_capacity(new, push_room) > queue.max(1),
    );
    diff("presence", started.presence != new.presence);
    match (&started.agi, &new.agi) {
        (Some(a), Some(b)) => {
            let (a, b) = (&a.settings, &b.settings);
            diff("agi.listen", a.listen != b.listen);
            let limits = |s: &crate::agi::AgiSettings| crate::agi::AgiSettings {
                listen: b.listen,
                ..s.clone()
            };
            diff("agi.limits", limits(a) != limits(b));
        }
        (None, None) => {}
        _ => diff("agi", true),
    }
    let same_proxy = match (&started.ami_proxy, &new.ami_proxy) {
        (Some(a), Some(b)) => a.same_as(b),
        (None, None) => true,
        _ => false,
    };
    diff("ami_proxy", !same_proxy);
    out
}

/// What a reload from `old` (the running config) to `new` applies.
pub fn applied(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if !std::sync::Arc::ptr_eq(&old.rules, &new.rules) && old.rules.len() + new.rules.len() > 0 {
        out.push(format!("rules ({})", new.rules.len()));
    }
    let changed_targets = new
        .targets
        .iter()
        .filter(|(k, t)| old.targets.get(*k).is_none_or(|o| !o.same_as(t)))
        .count()
        + old
            .targets
            .keys()
            .filter(|k| !new.targets.contains_key(*k))
            .count();
    if changed_targets > 0 {
        out.push(format!("targets ({changed_targets} changed)"));
    }
    for p in &new.pbx {
        match old.pbx.iter().find(|o| o.id == p.id) {
            None => out.push(format!("pbx {} added", p.id)),
            Some(o) if o != p => out.push(format!("pbx {} reconnected", p.id)),
            Some(_) => {}
        }
    }
    for o in &old.pbx {
        if !new.pbx.iter().any(|p| p.id == o.id) {
            out.push(format!("pbx {} removed", o.id));
        }
    }
    if old.classify != new.classify {
        out.push("classify".into());
    }
    let (a, b) = (&old.normalizer, &new.normalizer);
    if (a.max_call_age, a.orphan_grace, a.max_live_calls)
        != (b.max_call_age, b.orphan_grace, b.max_live_calls)
    {
        out.push("calls".into());
    }
    if a.push_settle != b.push_settle {
        out.push("push.settle".into());
    }
    if let (Some(a), Some(b)) = (&old.push, &new.push) {
        if a.teams != b.teams {
            out.push("push.teams".into());
        }
    }
    if let (Some(a), Some(b)) = (&old.agi, &new.agi) {
        if !std::sync::Arc::ptr_eq(&a.router, &b.router) {
            out.push(format!("agi routes ({})", b.router.routes.len()));
        }
    }
    out
}
