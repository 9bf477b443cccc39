//! The simulator's answers to the state actions a client sends at login
//! for presence (`ExtensionStateList`, `DeviceStateList`, `SIPpeers`,
//! `PJSIPShowEndpoints`, `ExtensionState`) when the capture holds no list
//! answer of its own to replay — shaped as the real Asterisk answers them:
//!
//! * on AMI 1.x (Asterisk ≤ 11) `ExtensionStateList`, `DeviceStateList`
//!   and `PJSIPShowEndpoints` do not exist: `Response: Error`, `Message:
//!   Invalid/unknown command: X. Use Action: ListCommands to show available
//!   commands.`;
//! * otherwise an empty, well-formed list (`EventList: start`, then the
//!   `…Complete` event with `ListItems: 0`);
//! * `ExtensionState`: the capture's own answer for that extension (its
//!   `ExtensionState` responses, else its `ExtensionStateList` items,
//!   rewritten as a response), else what Asterisk says for an extension
//!   without a hint (`Status: -1`, `StatusText: Unknown`).

use std::collections::HashMap;

use super::message::AmiMessage;

/// `(list message, complete event)` of the list actions answered here.
fn list_shape(action: &str) -> Option<(&'static str, &'static str)> {
    Some(match action {
        "extensionstatelist" => (
            "Extension Statuses will follow",
            "ExtensionStateListComplete",
        ),
        "devicestatelist" => (
            "Device State Changes will follow",
            "DeviceStateListComplete",
        ),
        "sippeers" => ("Peer status list will follow", "PeerlistComplete"),
        "pjsipshowendpoints" => (
            "A listing of Endpoints follows, presented as EndpointList events",
            "EndpointListComplete",
        ),
        _ => return None,
    })
}

/// Actions Asterisk ≤ 11 does not have.
fn missing_before_12(action: &str) -> bool {
    matches!(
        action,
        "extensionstatelist" | "devicestatelist" | "pjsipshowendpoints"
    )
}

/// `ExtensionState`-shaped answers found in a capture, by extension.
#[derive(Debug, Default, Clone)]
pub(crate) struct ExtensionStates {
    by_exten: HashMap<String, AmiMessage>,
}

impl ExtensionStates {
    /// Learns from one captured message: an `ExtensionState` response
    /// (`Message: Extension Status`) or an `ExtensionStatus` list item.
    /// The first answer for an extension wins.
    pub fn learn(&mut self, m: &AmiMessage) {
        let is_answer = m
            .get("Message")
            .is_some_and(|v| v.eq_ignore_ascii_case("Extension Status"));
        let is_item = m
            .event()
            .is_some_and(|e| e.eq_ignore_ascii_case("ExtensionStatus"))
            && m.action_id().is_some();
        if !(is_answer || is_item) {
            return;
        }
        let Some(exten) = m.get("Exten") else {
            return;
        };
        if self.by_exten.len() >= 10_000 || self.by_exten.contains_key(exten) {
            return;
        }
        let mut answer = AmiMessage::new();
        answer.push("Response", "Success");
        answer.push("Message", "Extension Status");
        for k in ["Exten", "Context", "Hint", "Status", "StatusText"] {
            if let Some(v) = m.get_raw(k) {
                answer.push(k, v);
            }
        }
        self.by_exten.insert(exten.to_string(), answer);
    }

    /// The answer to `ExtensionState` for `exten` in `context`.
    pub fn answer(&self, exten: &str, context: &str) -> AmiMessage {
        if let Some(m) = self.by_exten.get(exten) {
            return m.clone();
        }
        let mut m = AmiMessage::new();
        for (k, v) in [
            ("Response", "Success"),
            ("Message", "Extension Status"),
            ("Exten", exten),
            ("Context", context),
            ("Hint", ""),
            ("Status", "-1"),
            ("StatusText", "Unknown"),
        ] {
            m.push(k, v);
        }
        m
    }
}

/// What to send for a state action the capture has no canned list for:
/// the messages (response first), ActionID still to be set by the caller.
/// `None`: not a state action.
pub(crate) fn answer(
    action_lower: &str,
    request: &AmiMessage,
    ami_version: &str,
    states: &ExtensionStates,
) -> Option<Vec<AmiMessage>> {
    let old = ami_version.trim().split('.').next() == Some("1");
    if action_lower == "extensionstate" {
        let exten = request.get("Exten").unwrap_or("");
        let context = request.get("Context").unwrap_or("default");
        return Some(vec![states.answer(exten, context)]);
    }
    let (message, complete) = list_shape(action_lower)?;
    if old && missing_before_12(action_lower) {
        let name = request.get("Action").unwrap_or(action_lower);
        let mut err = AmiMessage::new();
        err.push("Response", "Error");
        err.push(
            "Message",
            format!(
                "Invalid/unknown command: {name}. Use Action: ListCommands to show available commands."
            ),
        );
        return Some(vec![err]);
    }
    let mut start = AmiMessage::new();
    start.push("Response", "Success");
    start.push("EventList", "start");
    start.push("Message", message);
    let mut done = AmiMessage::new();
    done.push("Event", complete);
    done.push("EventList", "Complete");
    done.push("ListItems", "0");
    Some(vec![start, done])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_exist_from_12_on() {
        let req = AmiMessage::from_pairs([("Action", "ExtensionStateList")]);
        let states = ExtensionStates::default();
        let old = answer("extensionstatelist", &req, "1.3", &states).unwrap_or_default();
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].get("Response"), Some("Error"));
        let new = answer("extensionstatelist", &req, "9.0.0", &states).unwrap_or_default();
        assert_eq!(new.len(), 2);
        assert_eq!(new[1].event(), Some("ExtensionStateListComplete"));
        let peers = answer("sippeers", &req, "1.3", &states).unwrap_or_default();
        assert_eq!(peers.len(), 2, "SIPpeers exists on 11");
        assert!(answer("queuestatus", &req, "9.0.0", &states).is_none());
    }

    #[test]
    fn extension_state_from_the_capture_or_unknown() {
        let mut states = ExtensionStates::default();
        states.learn(&AmiMessage::from_pairs([
            ("Event", "ExtensionStatus"),
            ("ActionID", "x"),
            ("Exten", "1001"),
            ("Context", "from-internal"),
            ("Hint", "SIP/1001"),
            ("Status", "0"),
            ("StatusText", "Idle"),
        ]));
        let req = AmiMessage::from_pairs([
            ("Action", "ExtensionState"),
            ("Exten", "1001"),
            ("Context", "from-internal"),
        ]);
        let a = answer("extensionstate", &req, "1.3", &states).unwrap_or_default();
        assert_eq!(a[0].get("Status"), Some("0"));
        assert_eq!(a[0].get("Hint"), Some("SIP/1001"));
        let req = AmiMessage::from_pairs([("Exten", "1099"), ("Context", "c")]);
        let a = answer("extensionstate", &req, "1.3", &states).unwrap_or_default();
        assert_eq!(a[0].get("Status"), Some("-1"));
        assert_eq!(a[0].get("Context"), Some("c"));
    }
}
