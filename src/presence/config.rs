//! The `presence:` config section.
//!
//! ```yaml
//! presence:
//!   enabled: true               # default true: track extension state
//!   extensions: ["1001", "1002"] # always in every tenant's table
//!   context: from-internal      # hint context for ExtensionState on Asterisk ≤ 12
//!   tenants:                    # per PBX id or push team
//!     main: { extensions: ["2001"], context: ext-local }
//!   queue_capacity: 10000       # presence events waiting for the tracker
//!   max_extensions: 10000       # per tenant; more are ignored (and counted)
//!   max_ringing: 10m            # a ringing leg the model never ended is dropped after this
//! ```
//!
//! Every key is optional; an unknown key is an error (`deny_unknown_fields`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::values::parse_duration;
use crate::yaml::{Path as At, Problem};

/// `presence:` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawPresence {
    /// Track extension state (default `true`).
    pub enabled: Option<bool>,
    /// Extensions listed in every tenant's table from the start.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Context of the hints, for `ExtensionState` on PBXs without
    /// `ExtensionStateList` (default `from-internal`).
    pub context: Option<String>,
    /// Per tenant (PBX id or push team).
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenantPresence>,
    /// Room for presence events between the AMI clients and the tracker.
    pub queue_capacity: Option<usize>,
    /// Most extensions per tenant.
    pub max_extensions: Option<usize>,
    /// A ringing leg with no news for this long is dropped (duration).
    pub max_ringing: Option<String>,
}

/// One tenant's presence settings as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTenantPresence {
    /// Extensions of this tenant (added to the global list).
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Hint context of this tenant.
    pub context: Option<String>,
}

/// The validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceConfig {
    /// Track extension state.
    pub enabled: bool,
    /// Extensions of every tenant.
    pub extensions: Vec<String>,
    /// Default hint context.
    pub context: String,
    /// Per-tenant additions.
    pub tenants: BTreeMap<String, TenantPresence>,
    /// Presence queue capacity.
    pub queue_capacity: usize,
    /// Most extensions per tenant.
    pub max_extensions: usize,
    /// Seconds after which a ringing leg with no news is dropped.
    pub max_ringing: f64,
}

/// One tenant's validated additions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TenantPresence {
    /// Its extensions.
    pub extensions: Vec<String>,
    /// Its hint context, if not the default.
    pub context: Option<String>,
}

/// Default hint context (FreePBX and most dialplans include the hints there).
pub const DEFAULT_CONTEXT: &str = "from-internal";

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            extensions: Vec::new(),
            context: DEFAULT_CONTEXT.to_string(),
            tenants: BTreeMap::new(),
            queue_capacity: 10_000,
            max_extensions: 10_000,
            max_ringing: 600.0,
        }
    }
}

impl PresenceConfig {
    /// The configured extensions of `tenant` (global ones first, no duplicates).
    pub fn extensions_for(&self, tenant: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let extra = self.tenants.get(tenant).map(|t| &t.extensions[..]);
        for e in self.extensions.iter().chain(extra.unwrap_or(&[])) {
            if !out.contains(e) {
                out.push(e.clone());
            }
        }
        out
    }

    /// The hint context of `tenant`.
    pub fn context_for(&self, tenant: &str) -> &str {
        self.tenants
            .get(tenant)
            .and_then(|t| t.context.as_deref())
            .unwrap_or(&self.context)
    }
}

/// An extension as callhook accepts it: 1–32 characters of digits, letters
/// and `*#+_.-`.
pub fn valid_extension(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= 32
        && e.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '#' | '+' | '_' | '.' | '-'))
}

fn valid_context(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 80
        && c.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks `presence:`; `tenants` are the configured PBX ids and push teams.
/// Every problem is appended to `errors`.
pub fn validate(
    raw: Option<RawPresence>,
    tenants: &[String],
    errors: &mut Vec<Problem>,
) -> PresenceConfig {
    let mut cfg = PresenceConfig::default();
    let Some(raw) = raw else {
        return cfg;
    };
    let root = At::root().key("presence");
    let ext_hint = "1 to 32 characters: digits, letters, * # + _ . -";
    let ctx_hint = "a dialplan context name such as from-internal";
    let check_exts = |at: At, list: &[String], errors: &mut Vec<Problem>| {
        let mut out: Vec<String> = Vec::new();
        for (i, e) in list.iter().enumerate() {
            let e = e.trim();
            if valid_extension(e) {
                if !out.iter().any(|x| x == e) {
                    out.push(e.to_string());
                }
            } else {
                errors.push(
                    Problem::new(at.index(i), format!("{e:?} is not an extension")).hint(ext_hint),
                );
            }
        }
        out
    };
    cfg.enabled = raw.enabled.unwrap_or(true);
    cfg.extensions = check_exts(root.key("extensions"), &raw.extensions, errors);
    if let Some(c) = raw.context {
        if valid_context(&c) {
            cfg.context = c;
        } else {
            errors.push(
                Problem::new(root.key("context"), format!("{c:?} is not a context")).hint(ctx_hint),
            );
        }
    }
    for (name, t) in raw.tenants {
        let at = root.key("tenants").key(name.as_str());
        if !tenants.contains(&name) {
            errors.push(
                Problem::new(
                    at.clone(),
                    format!("{name:?} is neither a configured PBX id nor a push team"),
                )
                .hint("use the id of a pbx entry or the name of a push team"),
            );
        }
        let extensions = check_exts(at.key("extensions"), &t.extensions, errors);
        let context = match t.context {
            Some(c) if valid_context(&c) => Some(c),
            Some(c) => {
                errors.push(
                    Problem::new(at.key("context"), format!("{c:?} is not a context"))
                        .hint(ctx_hint),
                );
                None
            }
            None => None,
        };
        cfg.tenants.insert(
            name,
            TenantPresence {
                extensions,
                context,
            },
        );
    }
    if let Some(q) = raw.queue_capacity {
        cfg.queue_capacity = q.clamp(16, 1_000_000);
    }
    if let Some(m) = raw.max_extensions {
        cfg.max_extensions = m.clamp(1, 1_000_000);
    }
    if let Some(v) = raw.max_ringing {
        match parse_duration(&v) {
            Some(d) if d >= Duration::from_secs(1) => cfg.max_ringing = d.as_secs_f64(),
            _ => errors.push(
                Problem::new(
                    root.key("max_ringing"),
                    format!("{v:?} is not a duration of at least 1s"),
                )
                .hint("write e.g. 10m"),
            ),
        }
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RawPresence, Vec<Problem>> {
        crate::yaml::de::from_str(text)
    }

    #[test]
    fn defaults_and_a_full_section() {
        let mut errors = Vec::new();
        assert_eq!(validate(None, &[], &mut errors), PresenceConfig::default());
        let raw = parse(
            "enabled: true\nextensions: ['1001', '1002', '1001']\ncontext: ext-local\n\
             tenants:\n  main: { extensions: ['2001'], context: other }\n\
             queue_capacity: 500\nmax_extensions: 50\nmax_ringing: 2m\n",
        )
        .unwrap_or_default();
        let c = validate(Some(raw), &["main".into()], &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(c.extensions, ["1001", "1002"]);
        assert_eq!(c.extensions_for("main"), ["1001", "1002", "2001"]);
        assert_eq!(c.extensions_for("other"), ["1001", "1002"]);
        assert_eq!(c.context_for("main"), "other");
        assert_eq!(c.context_for("x"), "ext-local");
        assert_eq!(c.queue_capacity, 500);
        assert_eq!(c.max_extensions, 50);
        assert_eq!(c.max_ringing, 120.0);
    }

    #[test]
    fn every_problem_is_reported() {
        assert!(
            parse("extensionz: []\n").is_err(),
            "unknown keys are errors"
        );
        assert!(parse("tenants: { a: { extension: [] } }\n").is_err());
        let raw = parse(
            "extensions: ['10 01', '']\ncontext: 'a b'\ntenants: { nope: { extensions: ['x;y'] } }\nmax_ringing: soon\n",
        )
        .unwrap_or_default();
        let mut errors = Vec::new();
        validate(Some(raw), &["main".into()], &mut errors);
        let paths: Vec<String> = errors.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(
            paths,
            [
                "presence.extensions[0]",
                "presence.extensions[1]",
                "presence.context",
                "presence.tenants.nope",
                "presence.tenants.nope.extensions[0]",
                "presence.max_ringing"
            ]
        );
    }
}
