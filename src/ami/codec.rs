//! AMI framing (being written).
use super::AmiMessage;
/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmiFrame {
    /// `Asterisk Call Manager/x.y.z`.
    Banner(String),
    /// One packet.
    Message(AmiMessage),
}
/// The codec.
#[derive(Debug, Default)]
pub struct AmiCodec;
