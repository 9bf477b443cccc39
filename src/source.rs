//! `SourceEvent`: the only type that crosses from a source (the AMI client,
//! later the HTTP push endpoint) into the normalizer.
//!
//! Sources know their wire formats; the normalizer knows calls. Nothing else
//! travels between them.

use std::sync::Arc;

use crate::ami::AmiMessage;

/// Identifier of a PBX (from the config), carried by every event it produced.
pub type PbxId = Arc<str>;

/// Something a source observed.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// An unsolicited AMI event (never a response or a list item).
    Ami {
        /// Which PBX sent it.
        pbx: PbxId,
        /// Local receive time, epoch seconds (used when the event has no `Timestamp`).
        received_at: f64,
        /// The event.
        msg: AmiMessage,
    },
    /// The channels that were up right after a (re)login: the items of
    /// `CoreShowChannels` (Asterisk 12+) or `Status` (older), in order.
    AmiSnapshot {
        /// Which PBX.
        pbx: PbxId,
        /// When the snapshot was taken (local clock, epoch seconds).
        received_at: f64,
        /// The list items (`Event: CoreShowChannel` or `Event: Status`).
        channels: Vec<AmiMessage>,
    },
    /// The AMI connection to this PBX was lost; calls stay open until the next
    /// snapshot (or the maximum call age) settles them.
    AmiDisconnected {
        /// Which PBX.
        pbx: PbxId,
        /// When the loss was noticed (local clock, epoch seconds).
        at: f64,
    },
}

/// The current wall-clock time as epoch seconds.
pub fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
