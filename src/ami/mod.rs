//! Asterisk Manager Interface: framing ([`codec`]), messages ([`message`]),
//! reading a connection ([`reader`]), whose business a message is
//! ([`route`]), the client task ([`client`]) and what it feeds the presence
//! tracker ([`state_sync`]); a simulated Asterisk for tests and the demo
//! ([`simulator`], with its capture, connection, wire, state and
//! Originate parts in the `sim_*` modules).

pub mod client;
pub mod codec;
pub mod message;
pub mod reader;
pub mod route;
mod sim_capture;
mod sim_conn;
pub mod sim_originate;
pub(crate) mod sim_state;
mod sim_wire;
pub mod simulator;
mod skim;
pub mod state_sync;
pub mod synthetic;

pub use codec::{AmiCodec, AmiFrame, SkipReason};
pub use message::{Action, AmiMessage, MessageKind};
