//! What the presence tracker tells the rest of the service: one row per
//! extension ([`ExtensionPresence`]), a change of a row ([`PresenceEvent`]),
//! and a tenant's whole table ([`TenantSnapshot`]).
//!
//! These types are pure data; their JSON form (`replay --presence --format
//! jsonl`, and later the live API) uses the field names below.

use serde::Serialize;

use super::state::PresenceState;
use crate::model::{Direction, Role, Timestamp};

/// Where an extension stands in one of its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallPhase {
    /// The call is offered to the extension (its phone rings).
    Ringing,
    /// The extension placed the call; nobody answered yet.
    Dialing,
    /// Answered: the extension is talking.
    Talking,
    /// Answered, and the extension put it on hold.
    OnHold,
}

/// One current call of an extension, from the call model's legs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresenceCall {
    /// The call's session id (as in the call model and webhooks).
    pub session_id: String,
    /// The leg's id in the call model (`SESSION/EXT`).
    pub leg_id: String,
    /// Whether the extension placed the call or was offered it.
    pub role: Role,
    /// Where the extension stands in it.
    pub phase: CallPhase,
    /// The call's direction as known at this moment.
    pub direction: Direction,
    /// The real caller's number (the outside caller on incoming calls, the
    /// calling extension on outgoing and internal ones).
    pub caller_number: Option<String>,
    /// The real caller's name.
    pub caller_name: Option<String>,
    /// The number that was dialed.
    pub dialed_number: Option<String>,
    /// The queue the call came through.
    pub queue: Option<String>,
    /// When the extension joined the call (its leg's first state).
    pub since: Timestamp,
}

/// What decided an extension's state (for debugging and the board).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateSource {
    /// The call model's legs (ringing and answered calls).
    Calls,
    /// The PBX's hint (`ExtensionStatus`, `ExtensionStateList`).
    Hint,
    /// Device states (`DeviceStateChange`, `DeviceStateList`), for
    /// extensions without a hint.
    Device,
    /// Registration (`PeerStatus`, `ContactStatus`, `SIPpeers`,
    /// `PJSIPShowEndpoints`, an `UNAVAILABLE` device).
    Registration,
    /// No PBX state at all: the extension's calls ended, so it is idle.
    Inferred,
    /// Nothing is known.
    None,
}

/// The current state of one extension.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExtensionPresence {
    /// The extension (`1001`).
    pub extension: String,
    /// The state.
    pub state: PresenceState,
    /// A further call rings on top of `state` (call waiting:
    /// `in_use` + ringing).
    pub call_waiting: bool,
    /// Since when the extension is in this state (PBX clock; for an
    /// extension never seen changing, when it was first seen).
    pub since: Timestamp,
    /// What decided the state.
    pub source: StateSource,
    /// Registered and reachable (`true`), unregistered or unreachable
    /// (`false`), or not known (`null`).
    pub registered: Option<bool>,
    /// The PBX hint (`SIP/1004&Custom:DND1004`), when known.
    pub hint: Option<String>,
    /// The extension's current calls, oldest first.
    pub calls: Vec<PresenceCall>,
}

impl ExtensionPresence {
    /// The word a person would use: the state's name, with `+ringing` on
    /// call waiting (`in_use+ringing`).
    pub fn human(&self) -> String {
        if self.call_waiting {
            format!("{}+ringing", self.state.as_str())
        } else {
            self.state.as_str().to_string()
        }
    }
}

/// An extension's row changed: its state, call waiting, or its calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresenceEvent {
    /// The PBX (or push team) id: the tenant.
    pub pbx: String,
    /// Per-tenant sequence number, increasing by one per event (a
    /// [`TenantSnapshot`] carries the last one it includes).
    pub seq: u64,
    /// When the change happened (PBX clock).
    pub at: Timestamp,
    /// The state before this change.
    pub previous: PresenceState,
    /// Call waiting before this change.
    pub previous_call_waiting: bool,
    /// The row after the change.
    #[serde(flatten)]
    pub presence: ExtensionPresence,
}

impl PresenceEvent {
    /// True when the state (or call waiting) changed, not only the calls.
    pub fn state_changed(&self) -> bool {
        self.previous != self.presence.state
            || self.previous_call_waiting != self.presence.call_waiting
    }
}

/// The whole table of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantSnapshot {
    /// The PBX (or push team) id.
    pub pbx: String,
    /// The `seq` of the last [`PresenceEvent`] this snapshot includes; the
    /// next change of this tenant has `seq + 1`.
    pub seq: u64,
    /// The AMI connection: `true` after a state list was received, `false`
    /// once it was lost (states are then as last known); `null` for push
    /// teams and PBXs not heard from.
    pub connected: Option<bool>,
    /// Every extension, sorted by extension.
    pub extensions: Vec<ExtensionPresence>,
}

impl TenantSnapshot {
    /// The row of one extension.
    pub fn get(&self, extension: &str) -> Option<&ExtensionPresence> {
        self.extensions.iter().find(|e| e.extension == extension)
    }
}
