//! One FastAGI session on the wire: read the environment, send a command,
//! read its reply, all under deadlines; notice the hangup.
//!
//! - **Replies** are read line by line from a buffer, so a reply split over
//!   reads (the `520` usage text comes in two) or several replies in one
//!   read are the same thing. `100 Trying` lines are skipped.
//! - **`HANGUP`** lines are consumed wherever they appear (before a reply,
//!   or while no command is pending, found before the next command is
//!   sent); from then on the session is *dead*, as it is after any `511`.
//!   A dead session still answers the commands that need no channel (`GET
//!   VARIABLE`, `SET VARIABLE`, `VERBOSE`, `NOOP`); the callers skip the
//!   others.
//! - **Deadlines**: every read and write runs against a deadline given by
//!   the caller (per command, capped by the session's). A missed deadline
//!   is an error and the caller closes the socket: Asterisk never closes
//!   first, so the server always ends the session itself.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use super::protocol::{
    ends_multi, excerpt, multi_reply, parse_reply_line, read_env, AgiEnv, LineReader,
    ProtocolError, ReadError, Reply, ReplyLine, WireLimits,
};

/// Why a session cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The deadline passed before the reply (or the environment) was complete.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// Reading failed: closed, socket error, or bytes that are no AGI.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing failed.
    #[error("write error: {0}")]
    Write(std::io::Error),
    /// A command line with a control character (never sent).
    #[error("refusing to send a command with a control character: {0:?}")]
    BadCommand(String),
}

impl SessionError {
    /// A short kind for metrics: `timeout`, `closed`, `io`, `protocol`.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionError::Timeout(_) => "timeout",
            SessionError::Read(ReadError::Eof) => "closed",
            SessionError::Read(ReadError::Io(_)) | SessionError::Write(_) => "io",
            SessionError::Read(ReadError::Protocol(_)) | SessionError::BadCommand(_) => "protocol",
        }
    }
}

/// A FastAGI session (the server side).
#[derive(Debug)]
pub struct Session<R, W> {
    reader: LineReader<R>,
    writer: W,
    limits: WireLimits,
    hung_up: bool,
    dead: bool,
    commands: usize,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<R, W> {
    /// A session on a connection's two halves.
    pub fn new(reader: R, writer: W, limits: WireLimits) -> Self {
        Self {
            reader: LineReader::new(reader, limits.max_line),
            writer,
            limits,
            hung_up: false,
            dead: false,
            commands: 0,
        }
    }

    /// Reads the environment block; it must be complete by `deadline`.
    pub async fn read_env(&mut self, deadline: Instant) -> Result<AgiEnv, SessionError> {
        let started = Instant::now();
        let max = self.limits.max_env_lines;
        match timeout_at(deadline, read_env(&mut self.reader, max)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SessionError::Timeout(deadline - started)),
        }
    }

    /// Whether Asterisk said `HANGUP`.
    pub fn hung_up(&self) -> bool {
        self.hung_up
    }

    /// Whether the channel is gone (`HANGUP` seen or a `511` reply).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Commands sent so far.
    pub fn commands_sent(&self) -> usize {
        self.commands
    }

    fn take_line(&mut self, line: &str) {
        if line == "HANGUP" {
            self.hung_up = true;
            self.dead = true;
        } else {
            tracing::debug!(line = %excerpt(line), "AGI: line while no command was pending, ignored");
        }
    }

    /// Takes the lines that arrived while no command was pending (a
    /// `HANGUP`), without waiting.
    pub fn drain(&mut self) -> Result<(), SessionError> {
        self.reader
            .fill_now()
            .map_err(|e| SessionError::Read(ReadError::Io(e)))?;
        while let Some(l) = self.reader.buffered_line().map_err(ReadError::from)? {
            self.take_line(&l);
        }
        Ok(())
    }

    /// Waits until the channel hangs up (a `HANGUP` line) or the peer
    /// closes; returns at once if it already has. Cancel-safe: use it in a
    /// `select!` next to other work (a CRM request) to notice a caller who
    /// gives up.
    pub async fn hangup_notice(&mut self) -> Result<(), SessionError> {
        while !self.hung_up {
            let l = self.reader.next_line().await?;
            self.take_line(&l);
        }
        Ok(())
    }

    /// Sends one command line (no newline) and reads its reply by `deadline`.
    pub async fn command(&mut self, line: &str, deadline: Instant) -> Result<Reply, SessionError> {
        if line.chars().any(|c| c.is_control()) {
            return Err(SessionError::BadCommand(excerpt(line)));
        }
        self.drain()?;
        let started = Instant::now();
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let write = async {
            self.writer.write_all(&bytes).await?;
            self.writer.flush().await
        };
        match timeout_at(deadline, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(SessionError::Write(e)),
            Err(_) => return Err(SessionError::Timeout(deadline - started)),
        }
        self.commands += 1;
        let reply = match timeout_at(deadline, self.read_reply()).await {
            Ok(r) => r?,
            Err(_) => return Err(SessionError::Timeout(deadline - started)),
        };
        if reply.is_dead_channel() {
            self.dead = true;
        }
        Ok(reply)
    }

    async fn read_reply(&mut self) -> Result<Reply, ReadError> {
        loop {
            let line = self.reader.next_line().await?;
            match parse_reply_line(&line)? {
                ReplyLine::Hangup => {
                    self.hung_up = true;
                    self.dead = true;
                }
                ReplyLine::Trying => {}
                ReplyLine::Complete(r) => return Ok(r),
                ReplyLine::MultiStart(code, first) => {
                    let mut more = Vec::new();
                    loop {
                        if more.len() >= self.limits.max_reply_lines {
                            return Err(
                                ProtocolError::ReplyTooLong(self.limits.max_reply_lines).into()
                            );
                        }
                        let l = self.reader.next_line().await?;
                        let end = ends_multi(code, &l);
                        more.push(l);
                        if end {
                            return Ok(multi_reply(code, first, more));
                        }
                    }
                }
            }
        }
    }

    /// Ends the session from our side (FIN); Asterisk then ends the AGI.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
    }
}
