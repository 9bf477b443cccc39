//! A stateful simulated Asterisk for restart tests: calls go on whether or
//! not callhook is connected, like on a real PBX. Each call is a copy of
//! the real capture `asterisk-20/incoming-answered.ami` (its call events,
//! with per-call Uniqueids, channel names and caller number, timestamps at
//! the moment they are sent), started every `gap`; events are written to
//! the client logged in at that moment (none: they are lost, as on a PBX
//! nobody listens to), and `CoreShowChannels` lists the channels up now.
//! It accepts any login (plain or MD5).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

const TEMPLATE: &str = "asterisk-20/incoming-answered.ami";
const UIDS: [&str; 2] = ["1795374626.0", "1795374626.1"];
const CHANS: [&str; 2] = ["SIP/pstn-00000000", "SIP/1001-00000001"];
const CALLER: &str = "5551234567";
const BRIDGE: &str = "2f418c4f-fbaa-44e0-a6e5-065be6f5c9d4";
/// Not needed by the call model, and most of the volume.
const SKIP: [&str; 3] = ["VarSet", "Cdr", "Newexten"];

type Fields = Vec<(String, String)>;

#[derive(Default)]
struct State {
    /// Live channels: Uniqueid → latest fields.
    live: BTreeMap<String, (f64, BTreeMap<String, String>)>,
    client: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Calls whose every event was played.
    finished: usize,
}

/// The running PBX.
pub struct LoadPbx {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    pub calls: usize,
    done: tokio::sync::watch::Receiver<bool>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The template's call events: (offset from the first, fields).
fn template() -> Vec<(f64, Fields)> {
    let raw = String::from_utf8(super::support_daemon::fixture(TEMPLATE))
        .unwrap()
        .replace("\r\n", "\n");
    let mut out = Vec::new();
    let mut first = None;
    for block in raw.split("\n\n") {
        let fields: Fields = block
            .lines()
            .filter_map(|l| l.split_once(": ").or_else(|| l.split_once(':')))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |k: &str| fields.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        let Some(ev) = get("Event") else { continue };
        if SKIP.contains(&ev) || !fields.iter().any(|(_, v)| UIDS.contains(&v.as_str())) {
            continue;
        }
        let Some(ts) = get("Timestamp").and_then(|t| t.parse::<f64>().ok()) else {
            continue;
        };
        let t0 = *first.get_or_insert(ts);
        out.push((ts - t0, fields));
    }
    out
}

/// Call `i` of the template: its own ids, names and caller number.
fn instance(tpl: &[(f64, Fields)], i: usize) -> Vec<(f64, Fields)> {
    let uid = |k: usize| format!("1900000000.{}", 2 * i + k);
    let chan = |k: usize| {
        let (tech, _) = CHANS[k].rsplit_once('-').unwrap();
        format!("{tech}-{:08x}", 2 * i + k)
    };
    let caller = format!("555{i:07}");
    let bridge = format!("bridge-{i}");
    tpl.iter()
        .map(|(t, f)| {
            let f = f
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .replace(UIDS[0], &uid(0))
                        .replace(UIDS[1], &uid(1))
                        .replace(CHANS[0], &chan(0))
                        .replace(CHANS[1], &chan(1))
                        .replace(CALLER, &caller)
                        .replace(BRIDGE, &bridge);
                    (k.clone(), v)
                })
                .collect();
            (*t, f)
        })
        .collect()
}

/// The caller number of call `i` (to find its webhooks).
pub fn caller(i: usize) -> String {
    format!("555{i:07}")
}

fn encode(fields: &[(String, String)]) -> Vec<u8> {
    let mut s = String::new();
    for (k, v) in fields {
        s.push_str(k);
        s.push_str(": ");
        s.push_str(v);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn hms(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

impl LoadPbx {
    /// Starts `calls` calls, one every `gap`, after `delay`.
    pub async fn start(calls: usize, gap: Duration, delay: Duration) -> LoadPbx {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let tpl = template();
        assert!(tpl.len() > 5, "template has call events");
        // One timeline of every call's events.
        let mut timeline: Vec<(f64, usize, Fields)> = Vec::new();
        for i in 0..calls {
            let start = delay.as_secs_f64() + i as f64 * gap.as_secs_f64();
            for (t, f) in instance(&tpl, i) {
                timeline.push((start + t, i, f));
            }
        }
        timeline.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let st = state.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut left: BTreeMap<usize, usize> = BTreeMap::new();
            for (_, i, _) in &timeline {
                *left.entry(*i).or_default() += 1;
            }
            for (at, i, mut fields) in timeline {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(at)).await;
                let now = now();
                for (k, v) in fields.iter_mut() {
                    if k == "Timestamp" {
                        *v = format!("{now:.6}");
                    }
                }
                let mut s = st.lock().unwrap();
                let get = |k: &str| fields.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
                if let Some(uid) = get("Uniqueid") {
                    if get("Event").as_deref() == Some("Hangup") {
                        s.live.remove(&uid);
                    } else {
                        let e = s.live.entry(uid).or_insert_with(|| (now, BTreeMap::new()));
                        for (k, v) in &fields {
                            e.1.insert(k.clone(), v.clone());
                        }
                    }
                }
                let bytes = encode(&fields);
                if let Some(c) = &s.client {
                    if c.send(bytes).is_err() {
                        s.client = None;
                    }
                }
                let n = left.get_mut(&i).unwrap();
                *n -= 1;
                if *n == 0 {
                    s.finished += 1;
                }
            }
            let _ = done_tx.send(true);
        });
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move { serve(sock, st).await });
            }
        });
        LoadPbx {
            addr,
            state,
            calls,
            done,
        }
    }

    /// Calls whose every event was played.
    pub fn finished(&self) -> usize {
        self.state.lock().unwrap().finished
    }

    /// Waits until every call was played.
    pub async fn wait_done(&self) {
        let mut d = self.done.clone();
        while !*d.borrow_and_update() {
            if d.changed().await.is_err() {
                break;
            }
        }
    }
}

async fn serve(sock: tokio::net::TcpStream, st: Arc<Mutex<State>>) {
    let (mut rd, mut wr) = sock.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let _ = tx.send(b"Asterisk Call Manager/9.0.0\r\n".to_vec());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    'conn: loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let block: Vec<u8> = buf.drain(..end + 4).collect();
            let text = String::from_utf8_lossy(&block).into_owned();
            let fields: Fields = text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            let get = |k: &str| {
                fields
                    .iter()
                    .find(|(x, _)| x.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let action = get("Action").to_ascii_lowercase();
            let id = get("ActionID");
            let resp = |extra: &[(&str, &str)]| {
                let mut f: Fields = vec![("Response".into(), "Success".into())];
                if !id.is_empty() {
                    f.push(("ActionID".into(), id.clone()));
                }
                f.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                encode(&f)
            };
            match action.as_str() {
                "challenge" => {
                    let _ = tx.send(resp(&[("Challenge", "840415273")]));
                }
                "login" => {
                    let mut s = st.lock().unwrap();
                    let _ = tx.send(resp(&[("Message", "Authentication accepted")]));
                    // From now on this client gets the events.
                    s.client = Some(tx.clone());
                }
                "ping" => {
                    let ts = format!("{:.6}", now());
                    let _ = tx.send(resp(&[("Ping", "Pong"), ("Timestamp", &ts)]));
                }
                "logoff" => {
                    let _ = tx.send(encode(&[
                        ("Response".into(), "Goodbye".into()),
                        ("ActionID".into(), id.clone()),
                    ]));
                    break 'conn;
                }
                "coreshowchannels" => {
                    // Under the lock: no event falls between the list and
                    // the stream.
                    let s = st.lock().unwrap();
                    let _ = tx.send(resp(&[
                        ("EventList", "start"),
                        ("Message", "Channels will follow"),
                    ]));
                    let now = now();
                    for (uid, (since, f)) in &s.live {
                        let g = |k: &str| f.get(k).cloned().unwrap_or_default();
                        let item: Fields = vec![
                            ("Event".into(), "CoreShowChannel".into()),
                            ("ActionID".into(), id.clone()),
                            ("Channel".into(), g("Channel")),
                            ("ChannelState".into(), g("ChannelState")),
                            ("ChannelStateDesc".into(), g("ChannelStateDesc")),
                            ("CallerIDNum".into(), g("CallerIDNum")),
                            ("CallerIDName".into(), g("CallerIDName")),
                            ("ConnectedLineNum".into(), g("ConnectedLineNum")),
                            ("ConnectedLineName".into(), g("ConnectedLineName")),
                            ("Context".into(), g("Context")),
                            ("Exten".into(), g("Exten")),
                            ("Uniqueid".into(), uid.clone()),
                            ("Linkedid".into(), g("Linkedid")),
                            ("Duration".into(), hms(now - since)),
                        ];
                        let _ = tx.send(encode(&item));
                    }
                    let n = s.live.len().to_string();
                    let _ = tx.send(encode(&[
                        ("Event".into(), "CoreShowChannelsComplete".into()),
                        ("ActionID".into(), id.clone()),
                        ("EventList".into(), "Complete".into()),
                        ("ListItems".into(), n),
                    ]));
                }
                _ => {
                    let mut f: Fields = vec![("Response".into(), "Error".into())];
                    if !id.is_empty() {
                        f.push(("ActionID".into(), id.clone()));
                    }
                    f.push(("Message".into(), "Invalid/unknown command".into()));
                    let _ = tx.send(encode(&f));
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
