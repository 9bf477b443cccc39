//! Asterisk Manager Interface: framing ([`codec`]), messages ([`message`]),
//! reading a connection ([`reader`]), whose business a message is
//! ([`route`]) and the client task ([`client`]).

pub mod client;
pub mod codec;
pub mod message;
pub mod reader;
pub mod route;
pub mod simulator;
pub mod synthetic;

pub use codec::{AmiCodec, AmiFrame, SkipReason};
pub use message::{Action, AmiMessage, MessageKind};
