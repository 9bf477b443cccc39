//! A fake Asterisk for the FastAGI tests, in two forms:
//!
//! - [`replay`]: plays a recorded session (`tests/fixtures/agi/*.agi.jsonl`)
//!   byte for byte: every `in` record is written as one chunk (the
//!   recorded chunking, or another one), every `out` record must arrive
//!   exactly, and the server must close where the recording does.
//! - [`FakeAsterisk`]: a channel that answers whatever the server sends
//!   with the reply shapes the recordings show (results, `endpos=`,
//!   `(timeout)`, the two-chunk `520` usage, `511` after a hangup for the
//!   commands that need the channel, `HANGUP` as its own line after a
//!   reply), starting with a recorded environment block; it never closes
//!   the socket first, as Asterisk does not.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// Upper bound of every wait (a safety net, never a synchronisation).
pub const WAIT: Duration = Duration::from_secs(20);

/// One record of a transcript.
#[derive(Debug, Clone, PartialEq)]
pub enum Rec {
    /// Asterisk → server.
    In(Vec<u8>),
    /// Server → Asterisk.
    Out(Vec<u8>),
    /// The server closed the socket.
    ServerClose,
}

/// The path of a fixture file.
pub fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/agi/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Every scenario name (the `.agi.jsonl` files).
pub fn scenarios() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixture_path(""))
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            n.strip_suffix(".agi.jsonl").map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

/// A transcript's records (latin-1 text → bytes, exactly).
pub fn transcript(name: &str) -> Vec<Rec> {
    let text = std::fs::read_to_string(fixture_path(&format!("{name}.agi.jsonl"))).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let bytes = || -> Vec<u8> {
            v["bytes"]
                .as_str()
                .unwrap()
                .chars()
                .map(|c| u8::try_from(c as u32).expect("latin-1"))
                .collect()
        };
        match v["dir"].as_str().unwrap() {
            "in" => out.push(Rec::In(bytes())),
            "out" => out.push(Rec::Out(bytes())),
            "meta" if v["what"] == "server-close" => out.push(Rec::ServerClose),
            "meta" if v["what"] == "eof" => panic!("{name}: Asterisk never closes first"),
            _ => {}
        }
    }
    out
}

/// A truth file.
pub fn truth(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture_path(&format!("{name}.truth.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The environment block of a transcript, in its recorded chunks.
pub fn env_chunks(name: &str) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut all = Vec::new();
    for r in transcript(name) {
        match r {
            Rec::In(b) => {
                all.extend_from_slice(&b);
                chunks.push(b);
                if all.windows(2).any(|w| w == b"\n\n") {
                    break;
                }
            }
            _ => break,
        }
    }
    chunks
}

/// How the `in` bytes are cut into writes.
#[derive(Debug, Clone, Copy)]
pub enum Chunking {
    /// As recorded.
    Recorded,
    /// Consecutive `in` records joined into one write.
    Joined,
    /// One byte per write.
    Bytes,
    /// Random cuts (seeded).
    Random(u64),
}

fn rechunk(group: Vec<Vec<u8>>, how: Chunking, rng: &mut u64) -> Vec<Vec<u8>> {
    match how {
        Chunking::Recorded => group,
        Chunking::Joined => vec![group.concat()],
        Chunking::Bytes => group.concat().into_iter().map(|b| vec![b]).collect(),
        Chunking::Random(_) => {
            let all = group.concat();
            let mut out = Vec::new();
            let mut i = 0;
            while i < all.len() {
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                let n = 1 + (*rng % 40) as usize;
                let end = (i + n).min(all.len());
                out.push(all[i..end].to_vec());
                i = end;
            }
            out
        }
    }
}

async fn write_chunks(s: &mut TcpStream, chunks: Vec<Vec<u8>>, pause: bool) {
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        s.write_all(&c).await.unwrap();
        s.flush().await.unwrap();
        if pause && i + 1 < n {
            // Let the server read this chunk on its own.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
}

/// Reads exactly `n` bytes (panics after WAIT or on EOF).
pub async fn read_exact(s: &mut TcpStream, n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    match timeout(WAIT, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => buf,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: nothing within {WAIT:?}"),
    }
}

/// Waits until the server closes (EOF); panics on data or after `within`.
pub async fn expect_close(s: &mut TcpStream, within: Duration, what: &str) {
    let mut buf = [0u8; 256];
    match timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0)) => {}
        Ok(Err(_)) => {} // reset: closed too
        Ok(Ok(n)) => panic!(
            "{what}: expected the server to close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("{what}: the server did not close within {within:?}"),
    }
}

/// Plays transcript `name` against the server at `addr`: `in` bytes in
/// the given chunking, `out` bytes checked exactly, the close expected
/// where recorded.
pub async fn replay(addr: SocketAddr, name: &str, how: Chunking) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut rng = match how {
        Chunking::Random(seed) => seed.max(1),
        _ => 1,
    };
    let mut recs: VecDeque<Rec> = transcript(name).into();
    let mut step = 0;
    while let Some(r) = recs.pop_front() {
        match r {
            Rec::In(b) => {
                let mut group = vec![b];
                while let Some(Rec::In(_)) = recs.front() {
                    if let Some(Rec::In(b)) = recs.pop_front() {
                        group.push(b);
                    }
                }
                let pause = matches!(how, Chunking::Recorded | Chunking::Random(_));
                write_chunks(&mut s, rechunk(group, how, &mut rng), pause).await;
            }
            Rec::Out(want) => {
                step += 1;
                let got = read_exact(&mut s, want.len(), &format!("{name} command {step}")).await;
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want),
                    "{name}: command {step} differs"
                );
            }
            Rec::ServerClose => {
                expect_close(&mut s, WAIT, name).await;
                return;
            }
        }
    }
    panic!("{name}: the transcript has no server-close");
}

/// What the fake channel does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The environment, in chunks.
    pub env: Vec<Vec<u8>>,
    /// What GET DATA returns, in order (`None`: `(timeout)`); after the
    /// list, timeouts.
    pub digits: VecDeque<Option<String>>,
    /// DIALSTATUS after an EXEC Dial.
    pub dialstatus: String,
    /// Hang up during the Nth (1-based) STREAM FILE, as recorded:
    /// `200 result=-1 endpos=16160`, then `HANGUP` on its own.
    pub hangup_on_stream: Option<usize>,
    /// Hang up (a bare `HANGUP` line) this long after the environment.
    pub hangup_after: Option<Duration>,
    /// Send `100 Trying` before every reply.
    pub trying: bool,
    /// Never answer a command starting with this (a stuck PBX).
    pub stall_on: Option<String>,
}

impl Plan {
    /// A channel whose environment is the one recorded in `scenario`.
    pub fn from_fixture(scenario: &str) -> Plan {
        Plan {
            env: env_chunks(scenario),
            digits: VecDeque::new(),
            dialstatus: "ANSWER".into(),
            hangup_on_stream: None,
            hangup_after: None,
            trying: false,
            stall_on: None,
        }
    }

    /// The same, with environment lines replaced (`agi_extension`, …) or
    /// added, in one chunk.
    pub fn with_env(scenario: &str, set: &[(&str, &str)]) -> Plan {
        let mut p = Plan::from_fixture(scenario);
        let text = String::from_utf8(p.env.concat()).unwrap();
        let mut lines: Vec<String> = text
            .trim_end_matches('\n')
            .lines()
            .map(str::to_string)
            .collect();
        for (k, v) in set {
            let line = format!("{k}: {v}");
            match lines.iter_mut().find(|l| l.starts_with(&format!("{k}:"))) {
                Some(l) => *l = line,
                None => lines.push(line),
            }
        }
        p.env = vec![format!("{}\n\n", lines.join("\n")).into_bytes()];
        p
    }

    /// GET DATA answers.
    pub fn digits(mut self, d: &[&str]) -> Plan {
        self.digits = d.iter().map(|s| Some(s.to_string())).collect();
        self
    }
}

/// What the fake saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Every command line, in order.
    pub commands: Vec<String>,
    /// Whether the server closed (always, in a passing test).
    pub closed: bool,
    /// Time from connect to the close.
    pub elapsed: Duration,
}

impl Seen {
    /// Commands starting with `prefix`.
    pub fn with(&self, prefix: &str) -> Vec<&str> {
        self.commands
            .iter()
            .filter(|c| c.starts_with(prefix))
            .map(String::as_str)
            .collect()
    }
}

const DEAD: &str = "511 Command Not Permitted on a dead channel or intercept routine\n";
/// Commands that need a live channel (the others still work after a hangup).
const NEED_CHANNEL: &[&str] = &[
    "ANSWER",
    "STREAM FILE",
    "WAIT FOR DIGIT",
    "CHANNEL STATUS",
    "HANGUP",
    "GET DATA",
    "EXEC",
    "SAY",
];

/// The fake channel.
pub struct FakeAsterisk;

impl FakeAsterisk {
    /// Connects to `addr`, plays `plan`, answers until the server closes.
    pub async fn call(addr: SocketAddr, mut plan: Plan) -> Seen {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut seen = Seen::default();
        let env = std::mem::take(&mut plan.env);
        let n = env.len();
        for (i, c) in env.into_iter().enumerate() {
            if s.write_all(&c).await.is_err() {
                seen.closed = true;
                seen.elapsed = started.elapsed();
                return seen;
            }
            if i + 1 < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let mut dead = false;
        let mut streams = 0;
        let mut buf = Vec::new();
        let hangup_at = plan.hangup_after.map(|d| Instant::now() + d);
        loop {
            // Read a line (or notice the close), hanging up on time.
            let line = loop {
                if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let l: Vec<u8> = buf.drain(..=i).collect();
                    break Some(String::from_utf8_lossy(&l[..l.len() - 1]).into_owned());
                }
                let mut chunk = [0u8; 4096];
                let read = async {
                    match hangup_at {
                        Some(t) if !dead => {
                            tokio::time::timeout_at(t, s.read(&mut chunk)).await.ok()
                        }
                        _ => Some(s.read(&mut chunk).await),
                    }
                };
                match timeout(WAIT * 3, read).await {
                    Err(_) => panic!(
                        "the server neither spoke nor closed for {:?}; so far {:?}",
                        WAIT * 3,
                        seen.commands
                    ),
                    Ok(None) => {
                        dead = true;
                        let _ = s.write_all(b"HANGUP\n").await;
                    }
                    Ok(Some(Ok(0))) | Ok(Some(Err(_))) => break None,
                    Ok(Some(Ok(n))) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let Some(line) = line else {
                seen.closed = true;
                seen.elapsed = started.elapsed();
                return seen;
            };
            seen.commands.push(line.clone());
            let up = line.to_ascii_uppercase();
            if plan
                .stall_on
                .as_deref()
                .is_some_and(|p| up.starts_with(&p.to_ascii_uppercase()))
            {
                continue;
            }
            if plan.trying {
                let _ = s.write_all(b"100 result=0 Trying...\n").await;
            }
            if dead && NEED_CHANNEL.iter().any(|c| up.starts_with(c)) {
                let _ = s.write_all(DEAD.as_bytes()).await;
                continue;
            }
            let args = callhook::agi::protocol::split_args(&line);
            let mut after: Option<&[u8]> = None;
            let reply: String = if up == "ANSWER" {
                "200 result=0\n".into()
            } else if up.starts_with("SET VARIABLE") {
                if args.len() < 4 {
                    usage_520(&mut s, "Sets a variable to the current channel.\n").await;
                    continue;
                }
                "200 result=1\n".into()
            } else if up.starts_with("GET VARIABLE") {
                match args.get(2).map(String::as_str) {
                    Some("DIALSTATUS") => format!("200 result=1 ({})\n", plan.dialstatus),
                    _ => "200 result=0\n".into(),
                }
            } else if up.starts_with("GET DATA") {
                if args.len() < 3 {
                    usage_520(&mut s, "Stream the given <replaceable>file</replaceable>, and receive DTMF data.\nReturns the digits received from the channel at the other end.\n").await;
                    continue;
                }
                match plan.digits.pop_front().flatten() {
                    Some(d) => format!("200 result={d}\n"),
                    None => "200 result= (timeout)\n".into(),
                }
            } else if up.starts_with("STREAM FILE") {
                streams += 1;
                if plan.hangup_on_stream == Some(streams) {
                    dead = true;
                    after = Some(b"HANGUP\n");
                    "200 result=-1 endpos=16160\n".into()
                } else {
                    "200 result=0 endpos=2400\n".into()
                }
            } else if up.starts_with("EXEC HANGUP") {
                dead = true;
                after = Some(b"HANGUP\n");
                "200 result=-1\n".into()
            } else if up.starts_with("EXEC DIAL") {
                if plan.dialstatus == "ANSWER" {
                    "200 result=-1\n".into()
                } else {
                    "200 result=0\n".into()
                }
            } else if up.starts_with("EXEC ") {
                "200 result=0\n".into()
            } else if up == "HANGUP" {
                dead = true;
                after = Some(b"HANGUP\n");
                "200 result=1\n".into()
            } else if up.starts_with("SET CONTEXT")
                || up.starts_with("SET EXTENSION")
                || up.starts_with("SET PRIORITY")
                || up.starts_with("NOOP")
                || up.starts_with("VERBOSE")
            {
                "200 result=0\n".into()
            } else {
                "510 Invalid or unknown command\n".into()
            };
            if s.write_all(reply.as_bytes()).await.is_err() {
                seen.elapsed = started.elapsed();
                return seen;
            }
            if let Some(a) = after {
                tokio::time::sleep(Duration::from_millis(40)).await;
                let _ = s.write_all(a).await;
            }
        }
    }
}

/// The `520` usage reply in the two chunks Asterisk sends, 40 ms apart.
async fn usage_520(s: &mut TcpStream, text: &str) {
    let _ = s
        .write_all(b"520-Invalid command syntax.  Proper usage follows:\n")
        .await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    let _ = s
        .write_all(format!("{text}520 End of proper usage.\n").as_bytes())
        .await;
}
