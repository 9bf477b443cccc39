//! A fake Asterisk that streams pre-rendered bytes as fast as loopback
//! takes them (the simulated PBX paces its writes per event; this one
//! writes 64 KiB chunks back to back): the ingest benchmark's input and
//! the burst tests' worst case. One connection: banner, any login accepted
//! (MD5 or plain), `CoreShowChannels` answered with an empty list — the
//! first one then starts the stream — and `Ping` and `Logoff` answered,
//! between chunks too. Plain threads, so it keeps writing whatever the
//! runtime under test does.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use bytes::BytesMut;
use callhook::ami::synthetic::BANNER;
use callhook::ami::{AmiCodec, AmiFrame};
use tokio_util::codec::Decoder;

/// The fake PBX (see the module doc).
pub struct FastAmi {
    /// Where it listens (127.0.0.1, a port the OS picked).
    pub addr: SocketAddr,
    /// What every action asked so far was called, in order.
    actions: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl FastAmi {
    /// Serves one connection; `on_stream` runs on the writing thread just
    /// before the stream's first byte is written.
    pub fn start(stream: Arc<Vec<u8>>, on_stream: impl FnOnce() + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (conn_tx, conn_rx) = mpsc::channel::<TcpStream>();
        let (action_tx, action_rx) = mpsc::channel::<(String, Option<String>)>();
        let actions = Arc::new(Mutex::new(Vec::new()));
        let seen = actions.clone();
        let acceptor = thread::spawn(move || {
            let Ok((sock, _)) = listener.accept() else {
                return;
            };
            let _ = sock.set_nodelay(true);
            let reader = sock.try_clone().expect("clone");
            let _ = conn_tx.send(sock);
            read_actions(reader, action_tx);
        });
        let writer = thread::spawn(move || {
            let Ok(mut sock) = conn_rx.recv() else {
                return;
            };
            let _ = sock.write_all(BANNER);
            let mut on_stream = Some(on_stream);
            let answer = |sock: &mut TcpStream, name: &str, id: Option<&str>| {
                if let Ok(mut v) = seen.lock() {
                    v.push(name.to_string());
                }
                answer(sock, name, id)
            };
            loop {
                let Ok((name, id)) = action_rx.recv() else {
                    return;
                };
                if answer(&mut sock, &name, id.as_deref()).is_err() {
                    return;
                }
                if !name.eq_ignore_ascii_case("CoreShowChannels") {
                    continue;
                }
                let Some(f) = on_stream.take() else {
                    continue;
                };
                f();
                for chunk in stream.chunks(64 * 1024) {
                    if sock.write_all(chunk).is_err() {
                        return;
                    }
                    while let Ok((name, id)) = action_rx.try_recv() {
                        if answer(&mut sock, &name, id.as_deref()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            addr,
            actions,
            threads: vec![acceptor, writer],
        }
    }

    /// How many actions named `name` (any case) were asked so far.
    pub fn action_count(&self, name: &str) -> usize {
        self.actions.lock().map_or(0, |v| {
            v.iter().filter(|a| a.eq_ignore_ascii_case(name)).count()
        })
    }

    /// Waits until the client is gone (both threads end on EOF).
    pub fn stop(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Reads actions until EOF, forwarding `(name, ActionID)`.
fn read_actions(mut sock: TcpStream, tx: mpsc::Sender<(String, Option<String>)>) {
    let mut codec = AmiCodec::new().without_banner();
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match sock.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(f)) = codec.decode(&mut buf) {
            if let AmiFrame::Message(m) = f {
                let name = m.get("Action").unwrap_or_default().to_string();
                if tx.send((name, m.action_id().map(str::to_string))).is_err() {
                    return;
                }
            }
        }
    }
}

fn answer(sock: &mut TcpStream, action: &str, id: Option<&str>) -> std::io::Result<()> {
    let id = id.unwrap_or("");
    let text = match action.to_ascii_lowercase().as_str() {
        "challenge" => format!("Response: Success\r\nActionID: {id}\r\nChallenge: 840223142\r\n\r\n"),
        "coreshowchannels" => format!(
            "Response: Success\r\nActionID: {id}\r\nEventList: start\r\nMessage: Channels will follow\r\n\r\nEvent: CoreShowChannelsComplete\r\nActionID: {id}\r\nEventList: Complete\r\nListItems: 0\r\n\r\n"
        ),
        "ping" => format!("Response: Success\r\nActionID: {id}\r\nPing: Pong\r\n\r\n"),
        "logoff" => {
            sock.write_all(format!("Response: Goodbye\r\nActionID: {id}\r\nMessage: Thanks\r\n\r\n").as_bytes())?;
            let _ = sock.shutdown(std::net::Shutdown::Both);
            return Err(std::io::Error::other("logged off"));
        }
        _ => format!("Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"),
    };
    sock.write_all(text.as_bytes())
}
