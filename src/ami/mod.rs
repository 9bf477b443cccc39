//! Asterisk Manager Interface: framing ([`codec`]), messages ([`message`]) and
//! the client task ([`client`]).

pub mod client;
pub mod codec;
pub mod message;
pub mod sim_originate;
pub mod simulator;

pub use codec::{AmiCodec, AmiFrame, SkipReason};
pub use message::{Action, AmiMessage, MessageKind};
