//! The words callhook uses for an extension's state, and how Asterisk's
//! codes map onto them.
//!
//! Three vocabularies reach us:
//!
//! * `ExtensionStatus` `Status` — the hint's aggregate as **bit flags**
//!   (`0` idle, `1` in use, `2` busy, `4` unavailable, `8` ringing, `16` on
//!   hold; `9` = in use + ringing, `17` = in use + hold; `-1` hint removed,
//!   `-2` extension removed) and, on 13+, `StatusText` (`Idle`, `InUse`,
//!   `Busy`, `Unavailable`, `Ringing`, `InUse&Ringing`, `Hold`,
//!   `InUse&Hold`, `Unknown`). The number wins when both are present; the
//!   text is used when the number is missing or unreadable.
//! * `DeviceStateChange` `State` (`NOT_INUSE`, `INUSE`, `BUSY`, `INVALID`,
//!   `UNAVAILABLE`, `RINGING`, `RINGINUSE`, `ONHOLD`, `UNKNOWN`) and its
//!   human spelling in `EndpointList` `DeviceState` (`Not in use`, `In use`,
//!   `Ring+Inuse`, `On Hold`, …): [`DeviceState`].
//! * Registration: `PeerStatus` / `PeerEntry` `Status` (chan_sip) and
//!   `ContactStatus` (chan_pjsip): [`Reach`].
//!
//! The raw codes mislead on their own (DND set through a custom device
//! state reports `Busy`; an unregistered phone behind a DND hint stays
//! `Idle`): the table ([`super::table`]) combines them with the call model.

use serde::Serialize;

/// What a person watching the phone would call its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// Free: registered (as far as we know) and on no call.
    Idle,
    /// A call is being offered to the extension (its phone rings).
    Ringing,
    /// On a call (talking, or dialing out).
    InUse,
    /// Busy without a call we know of (do-not-disturb, call limit reached).
    Busy,
    /// Every call of the extension is on hold.
    OnHold,
    /// The phone is unregistered or unreachable.
    Unavailable,
    /// Nothing is known (yet), or the PBX removed the hint.
    Unknown,
}

impl PresenceState {
    /// Every state, in declaration order.
    pub const ALL: [PresenceState; 7] = [
        PresenceState::Idle,
        PresenceState::Ringing,
        PresenceState::InUse,
        PresenceState::Busy,
        PresenceState::OnHold,
        PresenceState::Unavailable,
        PresenceState::Unknown,
    ];

    /// The snake_case name (`idle`, `in_use`, …), as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceState::Idle => "idle",
            PresenceState::Ringing => "ringing",
            PresenceState::InUse => "in_use",
            PresenceState::Busy => "busy",
            PresenceState::OnHold => "on_hold",
            PresenceState::Unavailable => "unavailable",
            PresenceState::Unknown => "unknown",
        }
    }
}

/// A state as one source reports it: the state and whether a further call
/// rings on top of it (call waiting: `InUse&Ringing`, `RINGINUSE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    /// The state.
    pub state: PresenceState,
    /// Another call is ringing on top of it.
    pub call_waiting: bool,
}

impl Reported {
    /// A report without call waiting.
    pub fn plain(state: PresenceState) -> Self {
        Self {
            state,
            call_waiting: false,
        }
    }
}

/// `ExtensionStatus` / `ExtensionState` → state, from `Status` (bit flags)
/// or, failing that, `StatusText`. `None` when neither says anything.
pub fn hint_state(status: Option<&str>, text: Option<&str>) -> Option<Reported> {
    if let Some(code) = status.and_then(|s| s.trim().parse::<i64>().ok()) {
        return Some(hint_code(code));
    }
    text.and_then(hint_text)
}

/// The `Status` bit flags.
pub fn hint_code(code: i64) -> Reported {
    use PresenceState::*;
    let plain = Reported::plain;
    if code < 0 {
        // -1 hint removed / not found, -2 extension removed.
        return plain(Unknown);
    }
    if code == 0 {
        return plain(Idle);
    }
    let (inuse, busy, unavail, ringing, hold) = (
        code & 1 != 0,
        code & 2 != 0,
        code & 4 != 0,
        code & 8 != 0,
        code & 16 != 0,
    );
    if hold {
        return Reported {
            state: OnHold,
            call_waiting: ringing,
        };
    }
    if ringing {
        return if inuse || busy {
            Reported {
                state: InUse,
                call_waiting: true,
            }
        } else {
            plain(Ringing)
        };
    }
    if busy {
        plain(Busy)
    } else if inuse {
        plain(InUse)
    } else if unavail {
        plain(Unavailable)
    } else {
        plain(Unknown)
    }
}

/// `StatusText` (13+).
fn hint_text(text: &str) -> Option<Reported> {
    let t: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '&')
        .collect::<String>()
        .to_ascii_lowercase();
    let code = match t.as_str() {
        "idle" => 0,
        "inuse" => 1,
        "busy" => 2,
        "unavailable" => 4,
        "ringing" => 8,
        "inuse&ringing" => 9,
        "hold" | "onhold" => 16,
        "inuse&hold" => 17,
        "unknown" => -1,
        _ => return None,
    };
    Some(hint_code(code))
}

/// An Asterisk device state (`DeviceStateChange`, `DeviceStateList`,
/// `EndpointList`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// `UNKNOWN`: the driver does not know.
    Unknown,
    /// `NOT_INUSE`.
    NotInUse,
    /// `INUSE`.
    InUse,
    /// `BUSY`.
    Busy,
    /// `INVALID`: no such device.
    Invalid,
    /// `UNAVAILABLE`: unregistered, unreachable.
    Unavailable,
    /// `RINGING`.
    Ringing,
    /// `RINGINUSE`: ringing while in use.
    RingInUse,
    /// `ONHOLD`.
    OnHold,
}

impl DeviceState {
    /// Parses `NOT_INUSE` as well as `Not in use` (any case, spaces,
    /// underscores and `+` ignored).
    pub fn parse(s: &str) -> Option<DeviceState> {
        let t: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_uppercase();
        Some(match t.as_str() {
            "UNKNOWN" => DeviceState::Unknown,
            "NOTINUSE" | "IDLE" => DeviceState::NotInUse,
            "INUSE" => DeviceState::InUse,
            "BUSY" => DeviceState::Busy,
            "INVALID" => DeviceState::Invalid,
            "UNAVAILABLE" => DeviceState::Unavailable,
            "RINGING" => DeviceState::Ringing,
            "RINGINUSE" => DeviceState::RingInUse,
            "ONHOLD" => DeviceState::OnHold,
            _ => return None,
        })
    }

    /// What this device state says about reachability: `Unavailable` and
    /// `Invalid` are down, `Unknown` says nothing, anything else is up.
    pub fn reach(self) -> Option<Reach> {
        match self {
            DeviceState::Unavailable | DeviceState::Invalid => Some(Reach::Down),
            DeviceState::Unknown => None,
            _ => Some(Reach::Up),
        }
    }

    /// The state a person would name.
    pub fn reported(self) -> Reported {
        use PresenceState as P;
        match self {
            DeviceState::Unknown => Reported::plain(P::Unknown),
            DeviceState::NotInUse => Reported::plain(P::Idle),
            DeviceState::InUse => Reported::plain(P::InUse),
            DeviceState::Busy => Reported::plain(P::Busy),
            DeviceState::Invalid | DeviceState::Unavailable => Reported::plain(P::Unavailable),
            DeviceState::Ringing => Reported::plain(P::Ringing),
            DeviceState::RingInUse => Reported {
                state: P::InUse,
                call_waiting: true,
            },
            DeviceState::OnHold => Reported::plain(P::OnHold),
        }
    }

    /// Rank in Asterisk's aggregation (`ast_devstate_aggregate_add`).
    fn rank(self) -> u8 {
        match self {
            DeviceState::Invalid => 0,
            DeviceState::Unknown => 1,
            DeviceState::Unavailable => 2,
            DeviceState::NotInUse => 3,
            DeviceState::OnHold => 4,
            DeviceState::Ringing => 5,
            DeviceState::InUse => 6,
            DeviceState::Busy => 7,
            DeviceState::RingInUse => 8,
        }
    }
}

/// Combines the states of a hint's devices the way Asterisk does: ringing
/// on one device and in use / on hold / busy on another is `RINGINUSE`,
/// otherwise the highest ranked state wins (`NOT_INUSE` beats
/// `UNAVAILABLE`, so one unregistered phone of two does not make the
/// extension unavailable). `None` for no devices.
pub fn aggregate(states: impl IntoIterator<Item = DeviceState>) -> Option<DeviceState> {
    let mut agg: Option<DeviceState> = None;
    let (mut ringing, mut inuse) = (false, false);
    for s in states {
        match s {
            DeviceState::Ringing => ringing = true,
            DeviceState::InUse | DeviceState::OnHold | DeviceState::Busy => inuse = true,
            _ => {}
        }
        agg = Some(match agg {
            _ if ringing && inuse => DeviceState::RingInUse,
            None => s,
            Some(a) if s.rank() > a.rank() => s,
            Some(a) => a,
        });
    }
    agg
}

/// Whether a phone is registered and answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reach {
    /// Registered / reachable.
    Up,
    /// Unregistered, unreachable, rejected.
    Down,
}

/// `PeerStatus` `PeerStatus` (chan_sip, IAX2): `Registered`, `Reachable`,
/// `Lagged` are up; `Unregistered`, `Unreachable`, `Rejected` are down.
pub fn peer_status(s: &str) -> Option<Reach> {
    match s.trim().to_ascii_lowercase().as_str() {
        "registered" | "reachable" | "lagged" => Some(Reach::Up),
        "unregistered" | "unreachable" | "rejected" => Some(Reach::Down),
        _ => None,
    }
}

/// `PeerEntry` `Status` (SIPpeers): `OK (5 ms)` and `LAGGED (…)` are up,
/// `UNREACHABLE` is down; `UNKNOWN` and `Unmonitored` say nothing
/// (qualify off, or no answer yet).
pub fn peer_entry_status(s: &str) -> Option<Reach> {
    let s = s.trim().to_ascii_uppercase();
    if s.starts_with("OK") || s.starts_with("LAGGED") {
        Some(Reach::Up)
    } else if s.starts_with("UNREACHABLE") {
        Some(Reach::Down)
    } else {
        None
    }
}

/// What a `ContactStatus` (chan_pjsip) says about one contact: present and
/// answering (`Created`, `Reachable`, `Updated`, `Unqualified`,
/// `NonQualified`), present but unreachable, or gone (`Removed`).
pub fn contact_status(s: &str) -> ContactChange {
    match s.trim().to_ascii_lowercase().as_str() {
        "created" | "reachable" | "updated" | "unqualified" | "nonqualified" => ContactChange::Up,
        "unreachable" => ContactChange::Down,
        "removed" => ContactChange::Removed,
        _ => ContactChange::Unknown,
    }
}

/// One contact's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactChange {
    /// Present and answering.
    Up,
    /// Present, not answering.
    Down,
    /// Gone.
    Removed,
    /// Nothing usable.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::PresenceState::*;
    use super::*;

    fn rep(state: PresenceState, cw: bool) -> Reported {
        Reported {
            state,
            call_waiting: cw,
        }
    }

    #[test]
    fn every_documented_status_code() {
        for (code, want) in [
            (-2, rep(Unknown, false)),
            (-1, rep(Unknown, false)),
            (0, rep(Idle, false)),
            (1, rep(InUse, false)),
            (2, rep(Busy, false)),
            (4, rep(Unavailable, false)),
            (8, rep(Ringing, false)),
            (9, rep(InUse, true)),
            (16, rep(OnHold, false)),
            (17, rep(OnHold, false)),
            (24, rep(OnHold, true)),
            (10, rep(InUse, true)),
            (32, rep(Unknown, false)),
        ] {
            assert_eq!(hint_code(code), want, "{code}");
        }
    }

    #[test]
    fn number_wins_text_is_the_fallback() {
        assert_eq!(hint_state(Some("1"), Some("Idle")), Some(rep(InUse, false)));
        assert_eq!(
            hint_state(None, Some("InUse&Ringing")),
            Some(rep(InUse, true))
        );
        assert_eq!(
            hint_state(Some("x"), Some("Hold")),
            Some(rep(OnHold, false))
        );
        assert_eq!(hint_state(Some(" 8 "), None), Some(rep(Ringing, false)));
        assert_eq!(hint_state(None, Some("banana")), None);
        assert_eq!(hint_state(None, None), None);
    }

    #[test]
    fn device_states_in_both_spellings() {
        for (s, want) in [
            ("NOT_INUSE", DeviceState::NotInUse),
            ("Not in use", DeviceState::NotInUse),
            ("INUSE", DeviceState::InUse),
            ("In use", DeviceState::InUse),
            ("RINGINUSE", DeviceState::RingInUse),
            ("Ring+Inuse", DeviceState::RingInUse),
            ("ONHOLD", DeviceState::OnHold),
            ("On Hold", DeviceState::OnHold),
            ("UNAVAILABLE", DeviceState::Unavailable),
            ("Invalid", DeviceState::Invalid),
            ("BUSY", DeviceState::Busy),
            ("RINGING", DeviceState::Ringing),
            ("UNKNOWN", DeviceState::Unknown),
        ] {
            assert_eq!(DeviceState::parse(s), Some(want), "{s}");
        }
        assert_eq!(DeviceState::parse("?"), None);
        assert_eq!(DeviceState::parse(""), None);
    }

    #[test]
    fn aggregation_follows_asterisk() {
        use DeviceState::*;
        // The DND hint: phone unregistered, custom state NOT_INUSE.
        assert_eq!(aggregate([Unavailable, NotInUse]), Some(NotInUse));
        assert_eq!(aggregate([NotInUse, Busy]), Some(Busy));
        assert_eq!(aggregate([Ringing, InUse]), Some(RingInUse));
        assert_eq!(aggregate([OnHold, Ringing]), Some(RingInUse));
        assert_eq!(aggregate([Invalid]), Some(Invalid));
        assert_eq!(aggregate([Unknown, Invalid]), Some(Unknown));
        assert_eq!(aggregate([NotInUse, Ringing]), Some(Ringing));
        assert_eq!(aggregate(std::iter::empty()), None);
    }

    #[test]
    fn registration_words() {
        assert_eq!(peer_status("Registered"), Some(Reach::Up));
        assert_eq!(peer_status("Reachable"), Some(Reach::Up));
        assert_eq!(peer_status("Unreachable"), Some(Reach::Down));
        assert_eq!(peer_status("Unregistered"), Some(Reach::Down));
        assert_eq!(peer_status("Rejected"), Some(Reach::Down));
        assert_eq!(peer_status("whatever"), None);
        assert_eq!(peer_entry_status("OK (5 ms)"), Some(Reach::Up));
        assert_eq!(peer_entry_status("UNREACHABLE"), Some(Reach::Down));
        assert_eq!(peer_entry_status("Unmonitored"), None);
        assert_eq!(peer_entry_status("UNKNOWN"), None);
        assert_eq!(contact_status("Removed"), ContactChange::Removed);
        assert_eq!(contact_status("Created"), ContactChange::Up);
        assert_eq!(contact_status("Unreachable"), ContactChange::Down);
        assert_eq!(contact_status("Unknown"), ContactChange::Unknown);
    }

    #[test]
    fn names() {
        let names: Vec<&str> = PresenceState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "idle",
                "ringing",
                "in_use",
                "busy",
                "on_hold",
                "unavailable",
                "unknown"
            ]
        );
        assert_eq!(
            serde_json::to_value(PresenceState::OnHold).ok(),
            Some(serde_json::json!("on_hold"))
        );
    }
}
