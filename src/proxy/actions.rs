//! What a proxy user may send: an allow-list of action names with, per
//! action, the values its headers may take.
//!
//! * `actions: [Status, Originate]` — names compare case-insensitively
//!   (`Action: originate` is `Originate`); `*` allows every action.
//! * `limits: { Originate: { Context: [from-internal], Application: [] } }`
//!   — for each listed header (name case-insensitive): a non-empty list
//!   means the header must be present and **every** occurrence must be one
//!   of the values (exact, case-sensitive as Asterisk compares contexts;
//!   a value ending in `*` is a prefix); `""` in the list also lets it be
//!   absent; `[]` means the header must be absent. The example allows
//!   Originates into `from-internal` only, and none that runs an
//!   application directly (`Application: System` would run a shell
//!   command on the PBX).
//!
//! The session actions (`Login`, `Challenge`, `Logoff`, `Ping`, `Events`)
//! are answered by the proxy itself and need no entry; `Filter` and
//! `WaitEvent` are never forwarded (they would change or stall the shared
//! connection). See [`super::session`].

use std::collections::BTreeMap;

use crate::ami::AmiMessage;
use crate::yaml::{Path as At, Problem};

/// A compiled allow-list.
#[derive(Debug, Clone, Default)]
pub struct ActionPolicy {
    any: bool,
    /// Allowed names, lower-case.
    names: Vec<String>,
    /// Per action (lower-case): the header limits.
    limits: Vec<(String, Vec<HeaderLimit>)>,
}

#[derive(Debug, Clone)]
struct HeaderLimit {
    header: String,
    allowed: Vec<String>,
    may_be_absent: bool,
}

/// Why an action is refused (for the log; the client gets
/// `Permission denied`, as from Asterisk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The action is not on the list.
    NotAllowed,
    /// A header is missing, forbidden or has a value not on its list.
    Header(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotAllowed => f.write_str("action not allowed for this user"),
            Refusal::Header(h) => write!(f, "header {h} not allowed"),
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

fn value_ok(patterns: &[String], v: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => v.starts_with(prefix),
        None => p == v,
    })
}

impl ActionPolicy {
    /// Compiles `actions` and `limits`, pushing a problem per mistake.
    pub fn build(
        actions: &[String],
        limits: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
        at_actions: &At,
        at_limits: &At,
        errors: &mut Vec<Problem>,
    ) -> Self {
        let mut p = ActionPolicy::default();
        for (i, a) in actions.iter().enumerate() {
            let a = a.trim();
            if a == "*" {
                p.any = true;
            } else if valid_name(a) {
                p.names.push(a.to_ascii_lowercase());
            } else {
                errors.push(
                    Problem::new(at_actions.index(i), format!("{a:?} is not an action name"))
                        .hint("an AMI action such as Originate, or * for every action"),
                );
            }
        }
        for (action, headers) in limits {
            let lc = action.trim().to_ascii_lowercase();
            let here = at_limits.key(action.clone());
            if !p.allows_name(&lc) {
                errors.push(
                    Problem::new(here.clone(), format!("{action} is not in actions"))
                        .hint("limits apply to allowed actions: add it to actions or remove this"),
                );
            }
            let mut list = Vec::new();
            for (h, values) in headers {
                if !valid_name(h.trim()) {
                    errors.push(Problem::new(
                        here.key(h.clone()),
                        format!("{h:?} is not a header name"),
                    ));
                    continue;
                }
                if values.iter().any(|v| v.contains(['\r', '\n'])) {
                    errors.push(Problem::new(
                        here.key(h.clone()),
                        "a value contains a line break",
                    ));
                    continue;
                }
                list.push(HeaderLimit {
                    header: h.trim().to_string(),
                    may_be_absent: values.is_empty() || values.iter().any(String::is_empty),
                    allowed: values.iter().filter(|v| !v.is_empty()).cloned().collect(),
                });
            }
            p.limits.push((lc, list));
        }
        p
    }

    /// A policy allowing exactly these actions (tests).
    pub fn allow(names: &[&str]) -> Self {
        let mut p = ActionPolicy::default();
        for n in names {
            if *n == "*" {
                p.any = true;
            } else {
                p.names.push(n.to_ascii_lowercase());
            }
        }
        p
    }

    fn allows_name(&self, lc: &str) -> bool {
        self.any || self.names.iter().any(|n| n == lc)
    }

    /// Whether `packet` (a client's action, `Action:` header included) may
    /// be forwarded.
    pub fn check(&self, name: &str, packet: &AmiMessage) -> Result<(), Refusal> {
        let lc = name.to_ascii_lowercase();
        if !self.allows_name(&lc) {
            return Err(Refusal::NotAllowed);
        }
        for (_, limits) in self.limits.iter().filter(|(a, _)| *a == lc) {
            for l in limits {
                let mut values = packet.get_all(&l.header).peekable();
                if values.peek().is_none() {
                    if l.may_be_absent {
                        continue;
                    }
                    return Err(Refusal::Header(l.header.clone()));
                }
                for v in values {
                    if !value_ok(&l.allowed, v.trim()) {
                        return Err(Refusal::Header(l.header.clone()));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(pairs: &[(&str, &str)]) -> AmiMessage {
        AmiMessage::from_pairs(pairs.iter().copied())
    }

    fn policy(actions: &[&str], limits: &[(&str, &str, &[&str])]) -> (ActionPolicy, Vec<Problem>) {
        let mut map: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for (a, h, v) in limits {
            map.entry(a.to_string())
                .or_default()
                .insert(h.to_string(), v.iter().map(|s| s.to_string()).collect());
        }
        let mut errors = Vec::new();
        let names: Vec<String> = actions.iter().map(|s| s.to_string()).collect();
        let p = ActionPolicy::build(
            &names,
            &map,
            &At::root().key("a"),
            &At::root().key("l"),
            &mut errors,
        );
        (p, errors)
    }

    #[test]
    fn names_are_case_insensitive() {
        let (p, e) = policy(&["Status", "CoreShowChannels"], &[]);
        assert!(e.is_empty());
        assert_eq!(p.check("status", &msg(&[])), Ok(()));
        assert_eq!(p.check("Command", &msg(&[])), Err(Refusal::NotAllowed));
        let (any, _) = policy(&["*"], &[]);
        assert_eq!(any.check("Command", &msg(&[])), Ok(()));
    }

    #[test]
    fn originate_only_into_some_contexts() {
        let (p, e) = policy(
            &["Originate"],
            &[
                ("Originate", "Context", &["from-internal", "ext-*"]),
                ("Originate", "Application", &[]),
            ],
        );
        assert!(e.is_empty(), "{e:?}");
        let ok = msg(&[
            ("Channel", "PJSIP/1001"),
            ("Context", "from-internal"),
            ("Exten", "5"),
        ]);
        assert_eq!(p.check("Originate", &ok), Ok(()));
        assert_eq!(
            p.check("originate", &msg(&[("Context", "ext-local")])),
            Ok(())
        );
        let other = msg(&[("Context", "from-trunk")]);
        assert_eq!(
            p.check("Originate", &other),
            Err(Refusal::Header("Context".into()))
        );
        let missing = msg(&[("Channel", "PJSIP/1001"), ("Exten", "5")]);
        assert_eq!(
            p.check("Originate", &missing),
            Err(Refusal::Header("Context".into()))
        );
        let app = msg(&[
            ("Context", "from-internal"),
            ("application", "System"),
            ("Data", "id"),
        ]);
        assert_eq!(
            p.check("Originate", &app),
            Err(Refusal::Header("Application".into()))
        );
        // A second Context header cannot smuggle a forbidden value.
        let two = msg(&[("Context", "from-internal"), ("Context", "from-trunk")]);
        assert!(p.check("Originate", &two).is_err());
    }

    #[test]
    fn empty_string_means_optional() {
        let (p, _) = policy(
            &["Redirect"],
            &[("Redirect", "ExtraContext", &["", "from-internal"])],
        );
        assert_eq!(p.check("Redirect", &msg(&[])), Ok(()));
        assert_eq!(
            p.check("Redirect", &msg(&[("ExtraContext", "from-internal")])),
            Ok(())
        );
        assert!(p.check("Redirect", &msg(&[("ExtraContext", "x")])).is_err());
    }

    #[test]
    fn config_mistakes() {
        let (_, e) = policy(&["Bad Name", "Ok"], &[("Hangup", "Channel", &["x"])]);
        let text: Vec<String> = e
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        assert!(text.iter().any(|t| t.starts_with("a[0]: ")), "{text:?}");
        assert!(
            text.iter().any(|t| t.contains("Hangup is not in actions")),
            "{text:?}"
        );
    }
}
