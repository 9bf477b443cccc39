//! Real TLS handshakes: outbox → dispatcher → an HTTPS sink on 127.0.0.1.
//!
//! The sink is a tokio-rustls acceptor (ring provider, like reqwest's)
//! answering each request by hand with `200 ok` over the TLS stream. The
//! certificates are the throwaway material in `tests/support_http/tls/`
//! (see its README): one CA signs the server certificate (`127.0.0.1`,
//! `localhost`) and the client certificate. The targets name those files
//! relative to that directory, as a config file next to them would.
//!
//! Each test uses its own target names. Refused targets get two quick
//! attempts, so "retried, never delivered" ends in a deterministic `dead`.

mod support_http;
mod support_tmp;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use callhook::deliver::outbox::Status;
use callhook::deliver::{validate_targets, DeliveryRow, RawTarget, Target};
use support_http::rig::Rig;
use support_http::{request, rows, wait_rows, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

fn tls_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support_http/tls"
    ))
}

fn certs(name: &str) -> Vec<CertificateDer<'static>> {
    let path = tls_dir().join(name);
    let certs: Vec<_> = CertificateDer::pem_file_iter(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!certs.is_empty(), "{} holds no certificate", path.display());
    certs
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The server side: `server.pem`/`server.key`; with `require_client_cert`,
/// only clients presenting a certificate signed by `ca.pem` get through.
fn server_config(require_client_cert: bool) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let mut roots = RootCertStore::empty();
        for c in certs("ca.pem") {
            roots.add(c).unwrap();
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::from_pem_file(tls_dir().join("server.key")).unwrap();
    let mut config = builder.with_single_cert(certs("server.pem"), key).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What happened to one incoming connection.
#[derive(Debug, Clone)]
enum Conn {
    /// Handshake done, one request answered `200 ok`.
    Served {
        /// `POST /path HTTP/1.1`.
        request_line: String,
        /// The request body.
        body: Vec<u8>,
        /// The certificate chain the client presented.
        client_chain: Vec<CertificateDer<'static>>,
    },
    /// The handshake failed (server-side error text).
    HandshakeFailed(String),
    /// Handshake done but the HTTP exchange broke.
    Broken(String),
}

/// An HTTPS server on 127.0.0.1 recording every connection.
struct TlsSink {
    addr: SocketAddr,
    conns: watch::Receiver<Vec<Conn>>,
    server: tokio::task::JoinHandle<()>,
}

impl TlsSink {
    async fn start(require_client_cert: bool) -> TlsSink {
        let acceptor = TlsAcceptor::from(server_config(require_client_cert));
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = watch::channel(Vec::new());
        let tx = Arc::new(tx);
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let conn = match tokio::time::timeout(WAIT, serve(acceptor, tcp)).await {
                        Ok(c) => c,
                        Err(_) => Conn::Broken("timed out".into()),
                    };
                    tx.send_modify(|v| v.push(conn));
                });
            }
        });
        TlsSink {
            addr,
            conns,
            server,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Waits (at most [`WAIT`]) until `f` holds for the connections so far.
    async fn wait(&self, what: &str, f: impl Fn(&[Conn]) -> bool) -> Vec<Conn> {
        let mut rx = self.conns.clone();
        let got = match tokio::time::timeout(WAIT, rx.wait_for(|c| f(c))).await {
            Ok(Ok(c)) => Some(c.clone()),
            _ => None,
        };
        got.unwrap_or_else(|| panic!("timed out waiting for {what}: {:#?}", *self.conns.borrow()))
    }
}

impl Drop for TlsSink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One connection: handshake, one HTTP/1.1 request, `200 ok`, close.
async fn serve(acceptor: TlsAcceptor, tcp: tokio::net::TcpStream) -> Conn {
    let mut tls = match acceptor.accept(tcp).await {
        Ok(s) => s,
        Err(e) => return Conn::HandshakeFailed(e.to_string()),
    };
    let client_chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tls.read(&mut chunk).await {
            Ok(0) => return Conn::Broken("eof in the request head".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Conn::Broken(format!("reading the head: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match tls.read(&mut chunk).await {
            Ok(0) => return Conn::Broken("eof in the request body".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Conn::Broken(format!("reading the body: {e}")),
        }
    }
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
    if let Err(e) = tls.write_all(answer).await {
        return Conn::Broken(format!("writing the answer: {e}"));
    }
    let _ = tls.shutdown().await;
    Conn::Served {
        request_line: head.lines().next().unwrap_or_default().to_string(),
        body: buf[head_end..head_end + len].to_vec(),
        client_chain,
    }
}

/// A rig whose targets come from YAML, file names relative to the TLS
/// material.
fn start(name: &str, yaml: &str) -> Rig {
    let raw: BTreeMap<String, RawTarget> = callhook::yaml::de::from_str(yaml).expect("target yaml");
    let targets: BTreeMap<String, Target> =
        validate_targets(&raw, tls_dir()).unwrap_or_else(|e| panic!("{e:#?}"));
    Rig::with_targets(name, targets, None)
}

/// Waits until the row for target `done` is done and the one for `dead` is dead.
async fn wait_done_and_dead(rig: &Rig, done: &str, dead: &str) -> (DeliveryRow, DeliveryRow) {
    let st = |r: &[DeliveryRow], t: &str| r.iter().find(|r| r.target == t).map(|r| r.status);
    let r = wait_rows(&rig.outbox, "one done, one dead", |r| {
        st(r, done) == Some(Status::Done) && st(r, dead) == Some(Status::Dead)
    })
    .await;
    let get = |t: &str| r.iter().find(|r| r.target == t).unwrap().clone();
    (get(done), get(dead))
}

/// A refused attempt: a transport failure of the given kind (never an HTTP
/// status), tried again until `max_attempts`, never delivered.
fn assert_transport_failure(row: &DeliveryRow, kind: &str, needle: &str) {
    assert_eq!(row.attempts, 2, "retried until max_attempts: {row:#?}");
    assert_eq!(row.last_status.as_deref(), Some(kind), "{row:#?}");
    let err = row.last_error.as_deref().unwrap_or_default();
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
}

fn broken(c: &[Conn]) -> Vec<&str> {
    c.iter()
        .filter_map(|c| match c {
            Conn::Broken(e) => Some(e.as_str()),
            _ => None,
        })
        .collect()
}

fn served(c: &[Conn]) -> Vec<&Conn> {
    c.iter()
        .filter(|c| matches!(c, Conn::Served { .. }))
        .collect()
}

fn handshake_failures(c: &[Conn]) -> Vec<&str> {
    c.iter()
        .filter_map(|c| match c {
            Conn::HandshakeFailed(e) => Some(e.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_is_trusted_only_with_the_ca_file() {
    let sink = TlsSink::start(false).await;
    let rig = start(
        "tls-server",
        r"
t-tls-ca: { tls: { ca_file: ca.pem } }
t-tls-no-ca:
  retry: { max_attempts: 2, initial_backoff: 20ms, max_backoff: 20ms, jitter: 0 }
",
    );
    let with_ca = request("t-tls-ca", "sess-ca", "answered", &sink.url("/calls"));
    let without = request("t-tls-no-ca", "sess-no-ca", "answered", &sink.url("/calls"));
    rig.enqueue(&[with_ca.clone(), without]).await;

    let (done, dead) = wait_done_and_dead(&rig, "t-tls-ca", "t-tls-no-ca").await;
    assert_eq!(
        (done.attempts, done.last_status.as_deref()),
        (1, Some("200"))
    );
    // Public roots only: the test CA is an unknown issuer, and the client
    // gives up inside the handshake, so it counts as a connect failure.
    assert_transport_failure(&dead, "connect", "invalid peer certificate: UnknownIssuer");

    let conns = sink
        .wait("one request served, two handshakes refused", |c| {
            served(c).len() == 1 && handshake_failures(c).len() == 2
        })
        .await;
    match served(&conns)[0] {
        Conn::Served {
            request_line,
            body,
            client_chain,
        } => {
            assert_eq!(request_line, "POST /calls HTTP/1.1");
            assert_eq!(body, with_ca.body.as_ref().unwrap());
            assert!(client_chain.is_empty(), "no client certificate configured");
        }
        _ => unreachable!(),
    }
    for e in handshake_failures(&conns) {
        // The client aborted with an alert.
        assert!(e.contains("UnknownCA"), "{e}");
    }
    assert_eq!(broken(&conns), Vec::<&str>::new());
    assert_eq!(rows(&rig.outbox).await.len(), 2);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_the_client_certificate() {
    let sink = TlsSink::start(true).await;
    let rig = start(
        "tls-mutual",
        r"
t-mtls-cert:
  tls: { ca_file: ca.pem, client_cert_file: client.pem, client_key_file: client.key }
t-mtls-ca-only:
  tls: { ca_file: ca.pem }
  retry: { max_attempts: 2, initial_backoff: 20ms, max_backoff: 20ms, jitter: 0 }
",
    );
    let with_cert = request("t-mtls-cert", "sess-cert", "ringing", &sink.url("/m"));
    let ca_only = request("t-mtls-ca-only", "sess-ca-only", "ringing", &sink.url("/m"));
    rig.enqueue(&[with_cert.clone(), ca_only]).await;

    let (done, dead) = wait_done_and_dead(&rig, "t-mtls-cert", "t-mtls-ca-only").await;
    assert_eq!(
        (done.attempts, done.last_status.as_deref()),
        (1, Some("200"))
    );
    // TLS 1.3: the client's side of the handshake completes before the server
    // has looked at its (empty) certificate, so the connector succeeds; the
    // server's `certificate_required` alert only surfaces while the request
    // is being sent, which reqwest reports as a request error, not a connect
    // error.
    assert_transport_failure(&dead, "error", "received fatal alert: CertificateRequired");

    let conns = sink
        .wait("one request served, two handshakes refused", |c| {
            served(c).len() == 1 && handshake_failures(c).len() == 2
        })
        .await;
    match served(&conns)[0] {
        Conn::Served {
            request_line,
            body,
            client_chain,
        } => {
            assert_eq!(request_line, "POST /m HTTP/1.1");
            assert_eq!(body, with_cert.body.as_ref().unwrap());
            assert_eq!(
                client_chain.first(),
                certs("client.pem").first(),
                "the configured client certificate was presented"
            );
        }
        _ => unreachable!(),
    }
    for e in handshake_failures(&conns) {
        assert!(e.contains("peer sent no certificates"), "{e}");
    }
    assert_eq!(broken(&conns), Vec::<&str>::new());
    rig.stop().await;
}
