//! The FastAGI wire format: lines, the environment block, replies, and
//! how command arguments are quoted. Pure parsing plus one buffered,
//! cancel-safe line reader; no policy (deadlines and dead-channel handling
//! are in [`super::session`]).
//!
//! What Asterisk sends (see `tests/fixtures/agi/README.md` for the bytes):
//!
//! - The **environment**: `key: value\n` lines, LF only, ended by an empty
//!   line, in as many TCP reads as the kernel likes (2 usually, 15 seen).
//!   Empty values keep their separator (`agi_arg_3: \n`): the value is
//!   everything after the first `": "`, so it may be empty or contain
//!   `": "` itself.
//! - **Replies**: `200 result=N[ (data)][ endpos=N]`. `N` may be negative
//!   (`-1`), empty (`200 result= (timeout)`) or a string of digits whose
//!   leading zeros matter (GET DATA `0000`), so it is kept as text. Data may
//!   contain spaces and parentheses. `100 Trying` comes before some
//!   replies; `510`, `511` and `520` are one line, except the `520-…` usage
//!   text, which runs to the line starting with `520 ` and may arrive in
//!   several reads.
//! - **`HANGUP`**: a notification, not a reply. It comes on its own line
//!   whenever the channel hangs up: while no command is pending, or right
//!   after (never inside) a reply.

use std::fmt;

use bytes::{Buf, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Size limits of what the peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Longest line, in bytes (without the newline).
    pub max_line: usize,
    /// Most lines in the environment block.
    pub max_env_lines: usize,
    /// Most lines in one reply (the `520` usage text).
    pub max_reply_lines: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        Self {
            max_line: 8192,
            max_env_lines: 256,
            max_reply_lines: 256,
        }
    }
}

/// The peer broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A line longer than the limit (no newline within `max_line` bytes).
    #[error("line longer than {0} bytes")]
    LineTooLong(usize),
    /// More environment lines than the limit.
    #[error("environment block longer than {0} lines")]
    EnvTooLong(usize),
    /// A reply with more lines than the limit.
    #[error("reply longer than {0} lines")]
    ReplyTooLong(usize),
    /// An environment line that is not `key: value`.
    #[error("not an environment line: {0:?}")]
    BadEnvLine(String),
    /// A line that is no reply.
    #[error("not an AGI reply: {0:?}")]
    BadReply(String),
}

/// Why reading failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection closed (Asterisk never does this first).
    #[error("connection closed by the peer")]
    Eof,
    /// A socket error.
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
    /// Bad bytes.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// A buffered line reader. [`next_line`](Self::next_line) is cancel-safe:
/// bytes read before a cancellation stay in the buffer.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buf: BytesMut,
    eof: bool,
    max_line: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader refusing lines longer than `max_line` bytes.
    pub fn new(inner: R, max_line: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(4096),
            eof: false,
            max_line: max_line.max(16),
        }
    }

    /// A complete line already in the buffer, without its `\n` (and a `\r`
    /// before it). Text is decoded as UTF-8, invalid bytes replaced.
    pub fn buffered_line(&mut self) -> Result<Option<String>, ProtocolError> {
        match self.buf.iter().position(|b| *b == b'\n') {
            Some(i) if i > self.max_line => Err(ProtocolError::LineTooLong(self.max_line)),
            Some(i) => {
                let mut line = self.buf.split_to(i + 1);
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                Ok(Some(String::from_utf8_lossy(&line).into_owned()))
            }
            None if self.buf.len() > self.max_line => {
                Err(ProtocolError::LineTooLong(self.max_line))
            }
            None => Ok(None),
        }
    }

    /// The next line, reading as needed. Cancel-safe.
    pub async fn next_line(&mut self) -> Result<String, ReadError> {
        loop {
            if let Some(l) = self.buffered_line()? {
                return Ok(l);
            }
            if self.eof {
                return Err(ReadError::Eof);
            }
            self.fill().await?;
        }
    }

    /// Reads what has arrived without waiting; returns whether the peer
    /// has closed.
    pub fn fill_now(&mut self) -> Result<bool, std::io::Error> {
        while !self.eof && self.buf.len() <= self.max_line {
            match self.fill().now_or_never() {
                Some(Ok(())) => continue,
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(self.eof)
    }

    /// Whether the peer has closed its side.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Bytes received but not yet taken as lines.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    async fn fill(&mut self) -> Result<(), std::io::Error> {
        self.buf.reserve(4096);
        let n = self.inner.read_buf(&mut self.buf).await?;
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// Drops buffered bytes (after a protocol error, before closing).
    pub fn discard(&mut self) {
        self.buf.advance(self.buf.len());
    }
}

/// The environment block, in the order Asterisk sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgiEnv {
    vars: Vec<(String, String)>,
}

impl AgiEnv {
    /// Builds one from `(key, value)` pairs.
    pub fn from_pairs(vars: Vec<(String, String)>) -> Self {
        Self { vars }
    }

    /// Every variable, in order.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// A variable's value (`agi_channel`); the first one if repeated.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `agi_network_script` without its query: `route` for
    /// `agi://host/route?x=1`. Empty when missing.
    pub fn script(&self) -> &str {
        let s = self.get("agi_network_script").unwrap_or("");
        let s = s.split('?').next().unwrap_or("");
        s.trim_start_matches('/')
    }

    /// The query of `agi_network_script` (`x=1`), when any.
    pub fn script_query(&self) -> Option<&str> {
        self.get("agi_network_script")?
            .split_once('?')
            .map(|(_, q)| q)
    }

    /// `agi_arg_1`, `agi_arg_2`, … as long as they are consecutive.
    pub fn args(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for i in 1.. {
            match self.get(&format!("agi_arg_{i}")) {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out
    }
}

/// Parses one environment line (`agi_arg_3: ` is `("agi_arg_3", "")`).
pub fn parse_env_line(line: &str) -> Result<(String, String), ProtocolError> {
    let bad = || ProtocolError::BadEnvLine(excerpt(line));
    let (k, v) = line.split_once(':').ok_or_else(bad)?;
    let valid_key = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_key {
        return Err(bad());
    }
    let v = v.strip_prefix(' ').unwrap_or(v);
    Ok((k.to_string(), v.to_string()))
}

/// Reads the environment block up to its empty line.
pub async fn read_env<R: AsyncRead + Unpin>(
    r: &mut LineReader<R>,
    max_lines: usize,
) -> Result<AgiEnv, ReadError> {
    let mut vars = Vec::new();
    loop {
        let line = r.next_line().await?;
        if line.is_empty() {
            return Ok(AgiEnv { vars });
        }
        if vars.len() >= max_lines {
            return Err(ProtocolError::EnvTooLong(max_lines).into());
        }
        vars.push(parse_env_line(&line)?);
    }
}

/// A complete reply to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `200`, `510`, `511`, `520`, …
    pub code: u16,
    /// The text after `result=` up to the first space: `0`, `-1`, `53`,
    /// `0000`, or empty (`200 result= (timeout)`). None when the line has
    /// no `result=`.
    pub result: Option<String>,
    /// The text in parentheses (`sales-queue`, `two words`, `timeout`).
    pub data: Option<String>,
    /// `endpos=N` (STREAM FILE and friends).
    pub endpos: Option<i64>,
    /// The first line as received.
    pub line: String,
    /// The lines of a multi-line reply after the first (the `520` usage
    /// text, its `520 End of proper usage.` line included).
    pub more: Vec<String>,
}

impl Reply {
    /// `200`.
    pub fn is_success(&self) -> bool {
        self.code == 200
    }

    /// `511`: the channel is dead (or in an intercept routine).
    pub fn is_dead_channel(&self) -> bool {
        self.code == 511
    }

    /// The result as a number, when it is one.
    pub fn result_int(&self) -> Option<i64> {
        self.result.as_deref()?.parse().ok()
    }
}

/// What one reply line starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyLine {
    /// A complete one-line reply.
    Complete(Reply),
    /// `100 Trying…`: the real reply follows.
    Trying,
    /// `NNN-…`: a multi-line reply that ends with the line `NNN …`.
    MultiStart(u16, String),
    /// `HANGUP`: the channel hung up (not a reply).
    Hangup,
}

fn code_of(line: &str) -> Option<(u16, u8)> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sep = b.get(3).copied().unwrap_or(b' ');
    if sep != b' ' && sep != b'-' {
        return None;
    }
    line[..3].parse().ok().map(|c| (c, sep))
}

/// Classifies one line read while a reply is expected.
pub fn parse_reply_line(line: &str) -> Result<ReplyLine, ProtocolError> {
    if line == "HANGUP" {
        return Ok(ReplyLine::Hangup);
    }
    let (code, sep) = code_of(line).ok_or_else(|| ProtocolError::BadReply(excerpt(line)))?;
    if sep == b'-' {
        return Ok(ReplyLine::MultiStart(code, line.to_string()));
    }
    if code == 100 {
        return Ok(ReplyLine::Trying);
    }
    Ok(ReplyLine::Complete(parse_complete(code, line)))
}

/// Whether `line` ends a multi-line reply with `code` (`520 End of …`).
pub fn ends_multi(code: u16, line: &str) -> bool {
    matches!(code_of(line), Some((c, b' ')) if c == code)
}

/// Builds the reply of a multi-line block (first line, then the rest).
pub fn multi_reply(code: u16, first: String, more: Vec<String>) -> Reply {
    Reply {
        code,
        result: None,
        data: None,
        endpos: None,
        line: first,
        more,
    }
}

fn parse_complete(code: u16, line: &str) -> Reply {
    let mut r = Reply {
        code,
        result: None,
        data: None,
        endpos: None,
        line: line.to_string(),
        more: Vec::new(),
    };
    let rest = line.get(4..).unwrap_or("");
    let Some(after) = rest.strip_prefix("result=") else {
        return r;
    };
    let end = after.find(' ').unwrap_or(after.len());
    r.result = Some(after[..end].to_string());
    let mut tail = after[end..].trim_start();
    if tail.starts_with('(') {
        // The data runs to the last `)` before the key=value tail (data may
        // hold spaces and parentheses of its own).
        let close = tail
            .rfind(')')
            .filter(|i| tail[i + 1..].split_whitespace().all(|t| t.contains('=')));
        match close {
            Some(i) => {
                r.data = Some(tail[1..i].to_string());
                tail = &tail[i + 1..];
            }
            None => {
                r.data = Some(tail[1..].to_string());
                tail = "";
            }
        }
    }
    for t in tail.split_whitespace() {
        if let Some(v) = t.strip_prefix("endpos=") {
            r.endpos = v.parse().ok();
        }
    }
    r
}

/// A value that cannot be sent as an AGI argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnsafeArg(pub String);

/// Quotes `s` as one AGI argument: `"…"` with `\` and `"` escaped, as
/// Asterisk's argument parser reads it. Control characters (a newline
/// would end the command and start another) are refused.
pub fn quote(s: &str) -> Result<String, UnsafeArg> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(UnsafeArg(format!(
            "control character {:?} in an AGI argument",
            c
        )));
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

/// `s` as one AGI argument, bare when it needs no quotes (no space,
/// quote or backslash: `1`, `SIP/1002,20,tT`), else [`quote`]d.
pub fn arg(s: &str) -> Result<String, UnsafeArg> {
    let bare = !s.is_empty()
        && s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\');
    if bare {
        Ok(s.to_string())
    } else {
        quote(s)
    }
}

/// Splits a command line as Asterisk's `parse_args` does (for tests and
/// for the fake PBX): whitespace separates, `"` groups, `\` escapes.
pub fn split_args(line: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur: Option<String> = None;
    let (mut quoted, mut escaped) = (false, false);
    for c in line.chars() {
        match c {
            '"' if !escaped => {
                quoted = !quoted;
                cur.get_or_insert_with(String::new);
            }
            ' ' | '\t' if !quoted && !escaped => {
                if let Some(w) = cur.take() {
                    out.push(w);
                }
            }
            '\\' if !escaped => escaped = true,
            c => {
                cur.get_or_insert_with(String::new).push(c);
                escaped = false;
            }
        }
    }
    if let Some(w) = cur {
        out.push(w);
    }
    out
}

/// At most 80 characters of `s`, for messages.
pub fn excerpt(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Yields the given chunks, one per read.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(c) = self.0.pop_front() {
                let n = c.len().min(buf.remaining());
                buf.put_slice(&c[..n]);
                if n < c.len() {
                    self.0.push_front(c[n..].to_vec());
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn reader(chunks: &[&str]) -> LineReader<Chunks> {
        LineReader::new(
            Chunks(chunks.iter().map(|c| c.as_bytes().to_vec()).collect()),
            8192,
        )
    }

    fn reply(line: &str) -> Reply {
        match parse_reply_line(line).unwrap() {
            ReplyLine::Complete(r) => r,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn env_in_many_reads_keeps_empty_values() {
        let mut r = reader(&[
            "agi_network: yes\nagi_network_script: route?x=1\n",
            "agi_arg_1: sales\nagi_ar",
            "g_2: 5551234567\nagi_arg_3: \nagi_arg_4: last arg\n",
            "agi_accountcode: \n\n200 result=0\n",
        ]);
        let env = read_env(&mut r, 256).await.unwrap();
        assert_eq!(env.script(), "route");
        assert_eq!(env.script_query(), Some("x=1"));
        assert_eq!(env.args(), vec!["sales", "5551234567", "", "last arg"]);
        assert_eq!(env.get("agi_accountcode"), Some(""));
        // What follows the blank line stays buffered.
        assert_eq!(r.next_line().await.unwrap(), "200 result=0");
    }

    #[tokio::test]
    async fn env_limits_and_garbage() {
        let mut r = reader(&["agi_a: 1\nagi_b: 2\nagi_c: 3\n"]);
        assert!(matches!(
            read_env(&mut r, 2).await,
            Err(ReadError::Protocol(ProtocolError::EnvTooLong(2)))
        ));
        let mut r = reader(&["GET / HTTP/1.1\r\n"]);
        assert!(matches!(
            read_env(&mut r, 10).await,
            Err(ReadError::Protocol(ProtocolError::BadEnvLine(_)))
        ));
        let mut r = reader(&["agi_network: yes\n"]);
        assert!(matches!(read_env(&mut r, 10).await, Err(ReadError::Eof)));
        let long = "x".repeat(9000);
        let mut r = reader(&[&long]);
        assert!(matches!(
            r.next_line().await,
            Err(ReadError::Protocol(ProtocolError::LineTooLong(8192)))
        ));
    }

    #[test]
    fn env_line_edge_cases() {
        assert_eq!(
            parse_env_line("agi_arg_3: ").unwrap(),
            ("agi_arg_3".into(), "".into())
        );
        assert_eq!(
            parse_env_line("agi_arg_3:").unwrap(),
            ("agi_arg_3".into(), "".into())
        );
        assert_eq!(parse_env_line("agi_calleridname: a: b").unwrap().1, "a: b");
        assert_eq!(parse_env_line("agi_x:  two").unwrap().1, " two");
        assert!(parse_env_line(": x").is_err());
        assert!(parse_env_line("no colon").is_err());
    }

    #[test]
    fn replies() {
        let r = reply("200 result=0");
        assert_eq!(
            (r.code, r.result.as_deref(), r.data.clone()),
            (200, Some("0"), None)
        );
        let r = reply("200 result=1 (sales-queue)");
        assert_eq!(r.data.as_deref(), Some("sales-queue"));
        let r = reply("200 result=1 (two words)");
        assert_eq!(r.data.as_deref(), Some("two words"));
        let r = reply("200 result= (timeout)");
        assert_eq!(r.result.as_deref(), Some(""));
        assert_eq!(r.data.as_deref(), Some("timeout"));
        assert_eq!(r.result_int(), None);
        let r = reply("200 result=0000");
        assert_eq!(r.result.as_deref(), Some("0000"));
        let r = reply("200 result=53 endpos=13760");
        assert_eq!((r.result_int(), r.endpos), (Some(53), Some(13760)));
        let r = reply("200 result=-1 endpos=16160");
        assert_eq!((r.result_int(), r.endpos), (Some(-1), Some(16160)));
        let r = reply("200 result=1 (Juan (the) Perez) endpos=5");
        assert_eq!(r.data.as_deref(), Some("Juan (the) Perez"));
        assert_eq!(r.endpos, Some(5));
        let r = reply("200 result=1 (a) b)");
        assert_eq!(r.data.as_deref(), Some("a) b"));
        let r = reply("200 result=1 (unclosed");
        assert_eq!(r.data.as_deref(), Some("unclosed"));
        let r = reply("511 Command Not Permitted on a dead channel or intercept routine");
        assert!(r.is_dead_channel() && r.result.is_none());
        assert_eq!(reply("510 Invalid or unknown command").code, 510);
        assert_eq!(parse_reply_line("HANGUP").unwrap(), ReplyLine::Hangup);
        assert_eq!(
            parse_reply_line("100 result=0 Trying...").unwrap(),
            ReplyLine::Trying
        );
        assert!(matches!(
            parse_reply_line("520-Invalid command syntax.  Proper usage follows:").unwrap(),
            ReplyLine::MultiStart(520, _)
        ));
        assert!(ends_multi(520, "520 End of proper usage."));
        assert!(!ends_multi(520, "520-more"));
        assert!(!ends_multi(520, "Usage: foo"));
        for bad in ["", "20", "abc def", "2000 x", "HANGUPX", "200x result=1"] {
            assert!(parse_reply_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quoting_round_trips_through_asterisks_parser() {
        for v in [
            "",
            "two words",
            "quo\"te",
            "back\\slash",
            "a,b",
            "${X}",
            "ñandú",
        ] {
            let q = quote(v).unwrap();
            assert_eq!(
                split_args(&format!("SET VARIABLE X {q}")),
                vec!["SET", "VARIABLE", "X", v]
            );
        }
        for v in ["1", "SIP/1002,20,tT", "", "a b", "x\"y"] {
            let a = arg(v).unwrap();
            assert_eq!(
                split_args(&format!("EXEC Dial {a}")),
                vec!["EXEC", "Dial", v]
            );
        }
        assert_eq!(arg("SIP/1002,20,tT").unwrap(), "SIP/1002,20,tT");
        assert!(arg("a\nb").is_err());
        assert!(quote("a\nHANGUP").is_err());
        assert!(quote("a\rb").is_err());
        assert_eq!(
            split_args("STREAM FILE beep \"\""),
            vec!["STREAM", "FILE", "beep", ""]
        );
        assert_eq!(
            split_args("EXEC NoOp two words"),
            vec!["EXEC", "NoOp", "two", "words"]
        );
    }
}
