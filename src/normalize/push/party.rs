//! Who a pushed event is about, and what a `calltype` means.

use super::nonempty;
use crate::model::{Direction, Role};
use crate::source::{PushEvent, PushSide};

/// The direction a `calltype` means (see the module table).
pub fn direction_of(call_type: &str) -> Direction {
    match call_type.trim().to_ascii_lowercase().as_str() {
        "dialin" | "in" | "inbound" | "incoming" | "callin" => Direction::Incoming,
        "dialout" | "out" | "outbound" | "outgoing" | "callout" | "autodial" | "predictive"
        | "preview" | "progressive" | "campaign" | "callback" => Direction::Outgoing,
        _ => Direction::Internal,
    }
}

/// Who an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Party {
    /// An agent: a leg.
    Agent { ext: String, role: Role },
    /// The customer (outside party): no leg.
    Customer,
    /// Nobody we can name: the call as a whole.
    Call,
}

pub(super) fn party_of(dir: Direction, ev: &PushEvent) -> Party {
    let ext = nonempty(&ev.extension).or(nonempty(&ev.agent)).cloned();
    let agent = |role| match &ext {
        Some(e) => Party::Agent {
            ext: e.clone(),
            role,
        },
        None => Party::Call,
    };
    match (dir, ev.side) {
        (Direction::Incoming, Some(PushSide::Caller)) => Party::Customer,
        (Direction::Incoming, Some(PushSide::Callee)) => agent(Role::Callee),
        (Direction::Outgoing, Some(PushSide::Caller)) => agent(Role::Caller),
        (Direction::Outgoing, Some(PushSide::Callee)) => Party::Customer,
        (Direction::Internal, Some(PushSide::Caller)) => agent(Role::Caller),
        (Direction::Internal, Some(PushSide::Callee)) => agent(Role::Callee),
        (Direction::Incoming, None) if ext.is_some() => agent(Role::Callee),
        (Direction::Outgoing, None) if ext.is_some() => agent(Role::Caller),
        (Direction::Incoming | Direction::Outgoing, None) => Party::Customer,
        (Direction::Internal, None) => agent(Role::Callee),
    }
}
