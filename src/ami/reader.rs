//! The read side of one AMI connection: the socket, the codec and the read
//! buffer, with reading and decoding apart so the caller decides when to
//! read.
//!
//! [`FrameReader::buffered`] hands out frames already read, without I/O;
//! [`FrameReader::fill`] reads once more (cancel-safe, for `select!`). The
//! client decodes everything a read brought before it reads again, and
//! stops reading while the normalizer's queue is full (TCP backpressure, see
//! the client's backpressure policy); [`FrameReader::next`] combines both for
//! the login and logoff exchanges.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::codec::{AmiCodec, AmiFrame};
use crate::source::now_epoch;
use tokio_util::codec::Decoder;

/// Bytes asked from the socket per read (at most).
///
/// 1 MiB: a fast stream is read in ~16 times fewer syscalls than with
/// 64 KiB, and the client hands each read's events over together (one
/// normalizer turn and one wake-up of the presence thread per read). On
/// the ingest bench's loopback stream: +8 % events per CPU second of the
/// runtime thread against 64 KiB (256 KiB: no gain), 30 runs each.
const READ_SIZE: usize = 1024 * 1024;
/// Below this much free room the buffer is grown (or compacted) before a
/// read (so a read is never much smaller than [`READ_SIZE`]).
const MIN_ROOM: usize = READ_SIZE / 8;

/// A socket, its codec and its read buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    rd: R,
    codec: AmiCodec,
    buf: BytesMut,
    eof: bool,
    /// When bytes last arrived.
    last_read: Option<Instant>,
    /// The same, as epoch seconds (the receive time of what was read).
    read_at: f64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `rd` framing with `codec`.
    pub fn new(rd: R, codec: AmiCodec) -> Self {
        Self {
            rd,
            codec,
            buf: BytesMut::with_capacity(READ_SIZE),
            eof: false,
            last_read: None,
            read_at: 0.0,
        }
    }

    /// The next frame among the bytes already read (no I/O). After the end
    /// of the stream, also the incomplete last packet.
    pub fn buffered(&mut self) -> Option<AmiFrame> {
        let r = if self.eof {
            self.codec.decode_eof(&mut self.buf)
        } else {
            self.codec.decode(&mut self.buf)
        };
        // The codec never fails (content problems are frames).
        r.ok().flatten()
    }

    /// Reads once more. `Ok(false)`: the peer closed the stream (then
    /// [`Self::buffered`] flushes what is left). Cancel-safe.
    pub async fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.buf.capacity() - self.buf.len() < MIN_ROOM {
            self.buf.reserve(READ_SIZE);
        }
        let n = self.rd.read_buf(&mut self.buf).await?;
        if n == 0 {
            self.eof = true;
        } else {
            self.last_read = Some(Instant::now());
            self.read_at = now_epoch();
        }
        Ok(n > 0)
    }

    /// Bytes read and not yet framed.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// When bytes last arrived, as epoch seconds: the receive time of the
    /// frames now handed out (0 before the first read).
    pub fn read_at(&self) -> f64 {
        self.read_at
    }

    /// When bytes last arrived (`None`: never).
    pub fn last_read(&self) -> Option<Instant> {
        self.last_read
    }

    /// True once the peer has closed the stream.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// The next frame, reading as needed; `None` once the stream is over and
    /// every frame has been handed out.
    pub async fn next(&mut self) -> Option<io::Result<AmiFrame>> {
        loop {
            if let Some(f) = self.buffered() {
                return Some(Ok(f));
            }
            if self.eof {
                return None;
            }
            if let Err(e) = self.fill().await {
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_across_reads_and_the_last_packet_at_eof() {
        let (mut tx, rx) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(b"Asterisk Call Manager/9.0.0\r\nEvent: A\r\nX: 1\r\n\r\nEvent: B")
                .await
                .unwrap();
        });
        let mut r = FrameReader::new(rx, AmiCodec::new());
        let mut got = Vec::new();
        while let Some(f) = r.next().await {
            got.push(f.unwrap());
        }
        writer.await.unwrap();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(&got[2], AmiFrame::Message(m) if m.event() == Some("B")));
        assert!(r.at_eof());
        assert!(r.buffered().is_none());
    }
}
