//! Asterisk Manager Interface: framing ([`codec`]), messages ([`message`]) and
//! the client task ([`client`]).

pub mod client;
pub mod codec;
pub mod message;

pub use codec::{AmiCodec, AmiFrame};
pub use message::{Action, AmiMessage, MessageKind};
