//! A CRM's answer: JSON → actions, with the same value checks as the
//! YAML and the route's `crm.allow` list. See [`super::action`] for the
//! format.

use serde_json::Value;

use super::action::{Action, ActionKind, DialTarget};
use super::check::*;
use crate::template::TextTemplate;

/// Most actions one CRM answer may give.
pub const MAX_CRM_ACTIONS: usize = 16;

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn field(o: &serde_json::Map<String, Value>, k: &str) -> Result<Option<String>, String> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => text(v)
            .map(Some)
            .ok_or_else(|| format!("`{k}` must be a string or a number")),
    }
}

fn required(o: &serde_json::Map<String, Value>, k: &str, action: &str) -> Result<String, String> {
    field(o, k)?.ok_or_else(|| format!("`{action}` needs `{k}`"))
}

fn strings(v: &Value, k: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| text(x).ok_or_else(|| format!("`{k}` must hold strings")))
            .collect(),
        other => text(other)
            .map(|s| vec![s])
            .ok_or_else(|| format!("`{k}` must be a string or a list of strings")),
    }
}

fn checked(s: String, check: fn(&str) -> Result<(), String>) -> Result<TextTemplate, String> {
    check(&s)?;
    Ok(TextTemplate::Const(s))
}

fn json_action(v: &Value) -> Result<Action, String> {
    let o = v.as_object().ok_or("an action must be a JSON object")?;
    let name = field(o, "action")?.ok_or("missing `action`")?;
    let kind = ActionKind::parse(&name).ok_or_else(|| format!("unknown action {name:?}"))?;
    Ok(match kind {
        ActionKind::Dial => {
            let mut targets = Vec::new();
            for k in ["channel", "channels"] {
                if let Some(v) = o.get(k).filter(|v| !v.is_null()) {
                    for c in strings(v, k)? {
                        targets.push(DialTarget::Channel(checked(c, check_channel)?));
                    }
                }
            }
            if let Some(e) = field(o, "extension")? {
                targets.push(DialTarget::Extension(checked(e, check_extension)?));
            }
            if targets.is_empty() {
                return Err("`dial` needs `extension`, `channel` or `channels`".into());
            }
            let timeout = match field(o, "timeout")? {
                None => None,
                Some(t) => {
                    Some(parse_timeout(&t).ok_or_else(|| format!("bad dial timeout {t:?}"))?)
                }
            };
            let options = field(o, "options")?.unwrap_or_default();
            check_options(&options)?;
            Action::Dial {
                targets,
                timeout,
                options,
            }
        }
        ActionKind::Voicemail => {
            let options = field(o, "options")?.unwrap_or_default();
            check_options(&options)?;
            Action::Voicemail {
                mailbox: checked(required(o, "mailbox", "voicemail")?, check_mailbox)?,
                options,
            }
        }
        ActionKind::Conference => {
            let mut profiles = [None, None];
            for (i, k) in ["bridge_profile", "user_profile"].iter().enumerate() {
                if let Some(p) = field(o, k)? {
                    check_name(&p, "profile")?;
                    profiles[i] = Some(p);
                }
            }
            let [bridge_profile, user_profile] = profiles;
            Action::Conference {
                room: checked(required(o, "room", "conference")?, |s| {
                    check_name(s, "room")
                })?,
                bridge_profile,
                user_profile,
            }
        }
        ActionKind::Playback => {
            let files = match (o.get("file"), o.get("files")) {
                (Some(f), _) | (None, Some(f)) => strings(f, "files")?,
                (None, None) => return Err("`playback` needs `file` or `files`".into()),
            };
            if files.is_empty() {
                return Err("`playback` needs a file".into());
            }
            for f in &files {
                check_sound(f)?;
            }
            Action::Playback(files)
        }
        ActionKind::Set => {
            let vars = o
                .get("variables")
                .and_then(Value::as_object)
                .ok_or("`set` needs `variables`: an object")?;
            let mut out = Vec::new();
            for (k, v) in vars {
                check_var_name(k)?;
                let v =
                    text(v).ok_or_else(|| format!("variable {k} must be a string or a number"))?;
                out.push((k.clone(), checked(v, check_value)?));
            }
            Action::Set(out)
        }
        ActionKind::Hangup => {
            let cause = match field(o, "cause")? {
                None => 16,
                Some(c) => parse_cause(&c).ok_or_else(|| format!("bad hangup cause {c:?}"))?,
            };
            Action::Hangup(cause)
        }
        ActionKind::Goto => {
            let context = required(o, "context", "goto")?;
            check_name(&context, "context")?;
            let priority = field(o, "priority")?.unwrap_or_else(|| "1".into());
            check_priority(&priority)?;
            Action::Goto {
                context,
                extension: checked(
                    field(o, "extension")?.unwrap_or_else(|| "s".into()),
                    check_extension,
                )?,
                priority,
            }
        }
    })
}

/// Parses a CRM answer into actions, refusing kinds not in `allow`.
pub fn from_json(v: &Value, allow: &[ActionKind]) -> Result<Vec<Action>, String> {
    let list: Vec<&Value> = match v.get("actions") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(_) => return Err("`actions` must be a list".into()),
        None if v.get("action").is_some() => vec![v],
        None => return Err("the answer has neither `action` nor `actions`".into()),
    };
    if list.is_empty() {
        return Err("`actions` is empty".into());
    }
    if list.len() > MAX_CRM_ACTIONS {
        return Err(format!("more than {MAX_CRM_ACTIONS} actions"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.into_iter().enumerate() {
        let action = json_action(a).map_err(|e| format!("action {}: {e}", i + 1))?;
        if !allow.contains(&action.kind()) {
            return Err(format!(
                "action {}: `{}` is not allowed for this route (crm.allow)",
                i + 1,
                action.kind().name()
            ));
        }
        out.push(action);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crm_answers() {
        let all = ActionKind::ALL;
        let a = from_json(&json!({"action": "dial", "extension": "1003"}), &all).unwrap();
        assert_eq!(
            a,
            vec![Action::Dial {
                targets: vec![DialTarget::Extension(TextTemplate::Const("1003".into()))],
                timeout: None,
                options: String::new()
            }]
        );
        let a = from_json(
            &json!({"actions": [
                {"action": "set", "variables": {"VIP": 1, "ACCOUNT": "ACME Corp"}},
                {"action": "dial", "channels": ["SIP/1003", "SIP/1004"], "timeout": 20, "options": "tT"},
                {"action": "voicemail", "mailbox": "1003@default"},
            ]}),
            &all,
        )
        .unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[1].kind(), ActionKind::Dial);
        for (bad, why) in [
            (
                json!({"action": "dial", "extension": "1003,60,tTL(1)"}),
                "not an extension",
            ),
            (
                json!({"action": "dial", "channel": "SIP/1&SIP/2"}),
                "not a channel",
            ),
            (json!({"action": "exec", "app": "System"}), "unknown action"),
            (
                json!({"action": "set", "variables": {"A": "x\ny"}}),
                "control character",
            ),
            (
                json!({"action": "goto", "context": "a b"}),
                "not a valid context",
            ),
            (json!({"foo": 1}), "neither"),
            (json!({"actions": []}), "empty"),
            (json!([1, 2]), "neither"),
            (json!({"action": "dial"}), "needs"),
        ] {
            let e = from_json(&bad, &all).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = from_json(
            &json!({"action": "goto", "context": "intl"}),
            &[ActionKind::Dial],
        )
        .unwrap_err();
        assert!(e.contains("not allowed"), "{e}");
        let many: Vec<Value> = (0..17).map(|_| json!({"action": "hangup"})).collect();
        assert!(from_json(&json!({ "actions": many }), &all).is_err());
    }
}
