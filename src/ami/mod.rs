//! Asterisk Manager Interface: framing ([`codec`]), messages ([`message`]),
//! the client task ([`client`]) and what it feeds the presence tracker
//! ([`state_sync`]).

pub mod client;
pub mod codec;
pub mod message;
pub(crate) mod sim_state;
pub mod simulator;
pub mod state_sync;

pub use codec::{AmiCodec, AmiFrame, SkipReason};
pub use message::{Action, AmiMessage, MessageKind};
