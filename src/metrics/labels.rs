//! Bounded label values from names the network chooses: AMI event and
//! action names folded into fixed sets.

/// Folds an AMI event name into a bounded label set: the events callhook
/// uses keep their name, everything else is `other`.
pub fn event_label(event: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Newchannel",
        "Newstate",
        "NewCallerid",
        "NewConnectedLine",
        "Newexten",
        "DialBegin",
        "DialState",
        "DialEnd",
        "Dial",
        "BridgeCreate",
        "BridgeEnter",
        "BridgeLeave",
        "BridgeDestroy",
        "Bridge",
        "Link",
        "Unlink",
        "LocalBridge",
        "Hangup",
        "HangupRequest",
        "SoftHangupRequest",
        "QueueCallerJoin",
        "QueueCallerLeave",
        "QueueCallerAbandon",
        "Join",
        "Leave",
        "AgentCalled",
        "AgentConnect",
        "AgentComplete",
        "AgentRingNoAnswer",
        "AgentDump",
        "Masquerade",
        "Rename",
        "BlindTransfer",
        "AttendedTransfer",
        "Transfer",
        "OriginateResponse",
        "Cdr",
        "VarSet",
        "FullyBooted",
        "LocalOptimizationBegin",
        "LocalOptimizationEnd",
    ];
    KNOWN
        .iter()
        .find(|k| k.eq_ignore_ascii_case(event))
        .copied()
        .unwrap_or("other")
}

/// Folds an AMI action name into a bounded label set (AMI proxy clients
/// may send any name): the common actions keep their canonical spelling,
/// everything else is `other`.
pub fn action_label(action: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Login",
        "Logoff",
        "Challenge",
        "Ping",
        "Events",
        "Originate",
        "Hangup",
        "Redirect",
        "Atxfer",
        "BlindTransfer",
        "Bridge",
        "Park",
        "Command",
        "Getvar",
        "Setvar",
        "UserEvent",
        "Status",
        "CoreShowChannels",
        "CoreStatus",
        "CoreSettings",
        "QueueStatus",
        "QueueSummary",
        "QueueAdd",
        "QueueRemove",
        "QueuePause",
        "Queues",
        "ExtensionState",
        "ExtensionStateList",
        "DeviceStateList",
        "PresenceState",
        "PresenceStateList",
        "DBGet",
        "DBPut",
        "DBDel",
        "ListCommands",
        "SIPpeers",
        "SIPshowpeer",
        "PJSIPShowEndpoints",
        "PJSIPShowEndpoint",
        "PJSIPShowContacts",
        "BridgeList",
        "BridgeInfo",
        "ConfbridgeList",
        "MeetmeList",
        "MailboxCount",
        "MailboxStatus",
        "Agents",
        "MixMonitor",
        "StopMixMonitor",
        "PlayDTMF",
        "AbsoluteTimeout",
    ];
    KNOWN
        .iter()
        .find(|k| k.eq_ignore_ascii_case(action))
        .copied()
        .unwrap_or("other")
}
