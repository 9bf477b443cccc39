//! The HTTP/1.1 server under every listener: our own accept loop around
//! hyper's connection builder, so that each connection has a cap, a phase
//! and a deadline.
//!
//! **Phases and deadlines** (each connection has at most one deadline):
//!
//! | phase | from | deadline | evictable |
//! |---|---|---|---|
//! | `Head` | accept | `header_timeout` (a complete request head) | yes |
//! | `Body` | head parsed | `body_timeout` (the whole body, at most `max_body` bytes: else `408`/`413` and close) | yes |
//! | `Handling` | body read | none: the handler bounds itself | no |
//! | `KeepAlive` | response produced | `idle_timeout` (the next complete head; also bounds a slow reader of the response) | yes |
//! | held | [`ConnectionHandle::hold`] | none (a WebSocket, an SSE stream) | no |
//!
//! Bodies are read completely (bounded in size and time) before the router
//! runs, so no handler ever waits on a slow client, and a connection that
//! has not yet delivered a complete request has cost nothing but a slot.
//!
//! **Caps.** At most `max_connections` per listener and
//! `max_connections_per_ip` per client (an IPv4 address, an IPv6 /64: one
//! host usually owns a whole /64). When a new connection would exceed a
//! cap, the oldest *evictable* connection (of that client for the per-client
//! cap, of anyone for the total) is closed to make room: an attacker holding
//! idle or slow connections cannot lock out a client that sends a request
//! at once, even from the same address, because the newest connection is
//! always the last to go and a request being handled is never cut. Only
//! when every slot is handling a request is the new connection refused
//! (`503`, `Retry-After: 1`, then closed): the server is busy for real.
//!
//! **Accounting.** `callhook_http_connections{listener}`,
//! `callhook_http_connection_limit{listener}`,
//! `callhook_http_connections_accepted_total`,
//! `callhook_http_connections_refused_total{listener,reason}` (`total_cap`,
//! `per_ip_cap`, `accept_error`) and
//! `callhook_http_connections_closed_total{listener,reason}`
//! (`header_timeout`, `idle_timeout`, `body_timeout`, `body_too_large`,
//! `evicted`); refusals, evictions and header timeouts also log, at most
//! one line per 10 s each with the number left out. An accept error
//! (`EMFILE`: the process is out of descriptors) pauses accepting for a
//! moment instead of spinning.
//!
//! **Long-lived connections** (the live API): a handler takes
//! [`ConnectionHandle`] from the request extensions and calls
//! [`ConnectionHandle::hold`] before answering `101 Switching Protocols` or
//! starting a streaming body; while the returned [`Held`] guard lives, the
//! connection keeps its slot (it counts against the caps even after hyper
//! hands the upgraded socket over) and has no idle deadline and cannot be
//! evicted. [`ConnectionHandle::shutdown`] is cancelled when the server
//! stops: long-lived handlers must end then.
//!
//! **Shutdown**: stop accepting, close idle connections, let requests being
//! handled finish for up to the grace period, then drop the rest.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::HttpLimits;
use crate::log_limit::LogLimiter;
use crate::metrics::metrics;

/// How a listener runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The `listener` label of its metrics and logs (`listen`, `admin`).
    pub name: &'static str,
    /// Caps, timeouts, body size.
    pub limits: HttpLimits,
    /// How long requests being handled may finish after shutdown begins.
    pub shutdown_grace: Duration,
}

impl ServeOptions {
    /// Options with the default limits.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            limits: HttpLimits::default(),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The client key the per-client cap counts by: an IPv4 address (also
/// IPv4-mapped IPv6), or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => ClientKey(IpAddr::V4(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(a) & !((1u128 << 64) - 1);
                    ClientKey(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Body,
    Handling,
    KeepAlive,
}

struct Entry {
    client: ClientKey,
    phase: Phase,
    holds: usize,
    evicted: bool,
    /// Key in `Table::evictable` while evictable.
    evict_seq: Option<u64>,
    deadline: Option<Instant>,
    kill: CancellationToken,
    changed: Arc<Notify>,
}

impl Entry {
    fn evictable(&self) -> bool {
        !self.evicted && self.holds == 0 && self.phase != Phase::Handling
    }
}

#[derive(Default)]
struct Table {
    conns: HashMap<u64, Entry>,
    /// Evictable connections, oldest (since it became evictable) first.
    evictable: BTreeMap<u64, u64>,
    per_client: HashMap<ClientKey, usize>,
    /// Entries evicted whose task has not yet ended.
    evicting: usize,
    next_id: u64,
    next_seq: u64,
}

enum Admission {
    Admitted {
        id: u64,
        kill: CancellationToken,
        changed: Arc<Notify>,
        evicted: bool,
    },
    Refused(&'static str),
}

impl Table {
    fn open(&self) -> usize {
        self.conns.len() - self.evicting
    }

    /// Marks `id` evicted and cancels it.
    fn evict(&mut self, id: u64) {
        if let Some(e) = self.conns.get_mut(&id) {
            if let Some(seq) = e.evict_seq.take() {
                self.evictable.remove(&seq);
            }
            e.evicted = true;
            e.kill.cancel();
            self.evicting += 1;
            if let Some(n) = self.per_client.get_mut(&e.client) {
                *n = n.saturating_sub(1);
            }
        }
    }

    fn admit(
        &mut self,
        client: ClientKey,
        cap: usize,
        per_client: usize,
        kill_parent: &CancellationToken,
    ) -> Admission {
        let mut evicted = false;
        if self.per_client.get(&client).copied().unwrap_or(0) >= per_client {
            let victim = self
                .evictable
                .values()
                .copied()
                .find(|id| self.conns.get(id).is_some_and(|e| e.client == client));
            match victim {
                Some(id) => {
                    self.evict(id);
                    evicted = true;
                }
                None => return Admission::Refused("per_ip_cap"),
            }
        } else if self.open() >= cap {
            match self.evictable.values().next().copied() {
                Some(id) => {
                    self.evict(id);
                    evicted = true;
                }
                None => return Admission::Refused("total_cap"),
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let kill = kill_parent.child_token();
        let changed = Arc::new(Notify::new());
        self.conns.insert(
            id,
            Entry {
                client,
                phase: Phase::Head,
                holds: 0,
                evicted: false,
                evict_seq: None,
                deadline: None,
                kill: kill.clone(),
                changed: changed.clone(),
            },
        );
        *self.per_client.entry(client).or_insert(0) += 1;
        Admission::Admitted {
            id,
            kill,
            changed,
            evicted,
        }
    }

    /// Recomputes `id`'s evictability and deadline after a change.
    fn update(&mut self, id: u64, limits: &HttpLimits, f: impl FnOnce(&mut Entry)) -> bool {
        let Some(e) = self.conns.get_mut(&id) else {
            return false;
        };
        if e.evicted {
            return false;
        }
        f(e);
        if let Some(seq) = e.evict_seq.take() {
            self.evictable.remove(&seq);
        }
        let now = Instant::now();
        e.deadline = if e.holds > 0 {
            None
        } else {
            match e.phase {
                Phase::Head => Some(now + limits.header_timeout),
                // The service bounds the body read itself; this is a backstop.
                Phase::Body => Some(now + limits.body_timeout + Duration::from_secs(1)),
                Phase::Handling => None,
                Phase::KeepAlive => Some(now + limits.idle_timeout),
            }
        };
        if e.evictable() {
            let seq = self.next_seq;
            self.next_seq += 1;
            e.evict_seq = Some(seq);
            self.evictable.insert(seq, id);
        }
        e.changed.notify_one();
        true
    }

    fn remove(&mut self, id: u64) {
        if let Some(e) = self.conns.remove(&id) {
            if let Some(seq) = e.evict_seq {
                self.evictable.remove(&seq);
            }
            if e.evicted {
                self.evicting = self.evicting.saturating_sub(1);
            } else if let Some(n) = self.per_client.get_mut(&e.client) {
                *n = n.saturating_sub(1);
            }
            if self.per_client.get(&e.client) == Some(&0) {
                self.per_client.remove(&e.client);
            }
        }
    }
}

struct Shared {
    opts: ServeOptions,
    table: Mutex<Table>,
    shutdown: CancellationToken,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct ConnCtx {
    id: u64,
    peer: SocketAddr,
    shared: Arc<Shared>,
}

impl ConnCtx {
    fn set_phase(&self, phase: Phase) -> bool {
        self.shared
            .table()
            .update(self.id, &self.shared.opts.limits, |e| e.phase = phase)
    }
}

impl Drop for ConnCtx {
    fn drop(&mut self) {
        self.shared.table().remove(self.id);
        metrics()
            .http_connections
            .with_label_values(&[self.shared.opts.name])
            .dec();
    }
}

/// The connection a request came on, in every request's extensions (next
/// to `ConnectInfo<SocketAddr>`).
#[derive(Clone)]
pub struct ConnectionHandle(Arc<ConnCtx>);

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.0.id)
            .field("peer", &self.0.peer)
            .finish()
    }
}

impl ConnectionHandle {
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.0.peer
    }

    /// Makes the connection long-lived while the guard lives: it keeps its
    /// slot (also after an upgrade hands the socket over), has no idle
    /// deadline and is never evicted.
    pub fn hold(&self) -> Held {
        let ctx = self.0.clone();
        ctx.shared
            .table()
            .update(ctx.id, &ctx.shared.opts.limits, |e| e.holds += 1);
        Held(ctx)
    }

    /// Cancelled when the server begins to shut down.
    pub fn shutdown(&self) -> CancellationToken {
        self.0.shared.shutdown.clone()
    }
}

/// A long-lived connection's guard (see [`ConnectionHandle::hold`]).
pub struct Held(Arc<ConnCtx>);

impl Drop for Held {
    fn drop(&mut self) {
        let ctx = &self.0;
        ctx.shared
            .table()
            .update(ctx.id, &ctx.shared.opts.limits, |e| {
                e.holds = e.holds.saturating_sub(1)
            });
    }
}

static REFUSED_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));
static EVICTED_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));
static TIMEOUT_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));
static ACCEPT_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));

fn closed(name: &str, reason: &str) {
    metrics()
        .http_connections_closed
        .with_label_values(&[name, reason])
        .inc();
}

/// What a refused connection is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 31\r\n\r\ntoo many connections, retry...\n";

/// Most evictions waiting for their connection to close before accepting
/// more (bounds the descriptors briefly above the cap).
const MAX_EVICTING: usize = 32;

/// Serves `router` on `listener` with `opts` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let name = opts.name;
    let m = metrics();
    m.http_connection_limit
        .with_label_values(&[name])
        .set(i64::try_from(opts.limits.max_connections).unwrap_or(i64::MAX));
    m.http_connections.with_label_values(&[name]);
    let shared = Arc::new(Shared {
        opts,
        table: Mutex::new(Table::default()),
        shutdown: shutdown.clone(),
    });
    let hard = CancellationToken::new();
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                m.http_connections_refused
                    .with_label_values(&[name, "accept_error"])
                    .inc();
                if let Some(suppressed) = ACCEPT_LOG.check() {
                    tracing::error!(listener = name, error = %e, suppressed, "HTTP accept failed (out of file descriptors?): pausing accepts briefly");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        m.http_connections_accepted.with_label_values(&[name]).inc();
        let limits = shared.opts.limits;
        let admission = shared.table().admit(
            ClientKey::of(peer.ip()),
            limits.max_connections,
            limits.max_connections_per_ip,
            &hard,
        );
        match admission {
            Admission::Refused(reason) => {
                m.http_connections_refused
                    .with_label_values(&[name, reason])
                    .inc();
                if let Some(suppressed) = REFUSED_LOG.check() {
                    tracing::warn!(listener = name, client = %peer.ip(), reason, suppressed, "HTTP connection refused: every slot is handling a request");
                }
                let _ = stream.try_write(REFUSAL);
                drop(stream);
            }
            Admission::Admitted {
                id,
                kill,
                changed,
                evicted,
            } => {
                if evicted {
                    closed(name, "evicted");
                    if let Some(suppressed) = EVICTED_LOG.check() {
                        tracing::warn!(listener = name, client = %peer.ip(), suppressed, "HTTP connection cap reached: closed the oldest idle connection to admit a new one");
                    }
                }
                m.http_connections.with_label_values(&[name]).inc();
                let ctx = Arc::new(ConnCtx {
                    id,
                    peer,
                    shared: shared.clone(),
                });
                ctx.set_phase(Phase::Head);
                let router = router.clone();
                tracker.spawn(connection(stream, ctx, router, kill, changed));
                // Let evicted connections close before taking more.
                while shared.table().evicting > MAX_EVICTING {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    let grace = shared.opts.shutdown_grace;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        hard.cancel();
        tracker.wait().await;
    }
    Ok(())
}

/// Serves one connection until it ends, times out, is evicted or the
/// server stops.
async fn connection(
    stream: TcpStream,
    ctx: Arc<ConnCtx>,
    router: Router,
    kill: CancellationToken,
    changed: Arc<Notify>,
) {
    let _ = stream.set_nodelay(true);
    let name = ctx.shared.opts.name;
    let shutdown = ctx.shared.shutdown.clone();
    let svc_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let ctx = svc_ctx.clone();
        let router = router.clone();
        async move { Ok::<_, Infallible>(handle(ctx, router, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(64 * 1024);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = ctx
            .shared
            .table()
            .conns
            .get(&ctx.id)
            .map(|e| (e.deadline, e.phase));
        let Some((deadline, phase)) = deadline else {
            break;
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            _ = &mut conn => break,
            _ = changed.notified() => {}
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = sleep => {
                let reason = match phase {
                    Phase::Head => "header_timeout",
                    Phase::Body => "body_timeout",
                    Phase::KeepAlive | Phase::Handling => "idle_timeout",
                };
                closed(name, reason);
                if reason == "header_timeout" {
                    if let Some(suppressed) = TIMEOUT_LOG.check() {
                        tracing::warn!(listener = name, client = %ctx.peer.ip(), suppressed, "HTTP connection closed: no complete request head within http.header_timeout");
                    }
                } else {
                    tracing::debug!(listener = name, client = %ctx.peer.ip(), reason, "HTTP connection closed");
                }
                break;
            }
        }
    }
}

/// The server's own refusals: a JSON `{"error": …}` and `Connection: close`.
fn refuse(status: StatusCode, error: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": error }).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// One request: read the body within the limits, then run the router.
async fn handle(
    ctx: Arc<ConnCtx>,
    mut router: Router,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let name = ctx.shared.opts.name;
    let limits = ctx.shared.opts.limits;
    ctx.set_phase(Phase::Body);
    let too_large = || {
        closed(name, "body_too_large");
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than {} bytes", limits.max_body),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(
        limits.body_timeout,
        Limited::new(body, limits.max_body).collect(),
    )
    .await
    {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(_)) => return refuse(StatusCode::BAD_REQUEST, "unreadable request body"),
        Err(_) => {
            closed(name, "body_timeout");
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive within http.body_timeout",
            );
        }
    };
    // Evicted meanwhile: the connection is going away, run nothing.
    if !ctx.set_phase(Phase::Handling) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "connection closed, retry");
    }
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(ConnectInfo(ctx.peer));
    req.extensions_mut().insert(ConnectionHandle(ctx.clone()));
    let resp = match tower_service::Service::call(&mut router, req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    ctx.set_phase(Phase::KeepAlive);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_keyed_by_address_or_ipv6_prefix() {
        let k = |s: &str| ClientKey::of(s.parse().unwrap());
        assert_eq!(k("::ffff:192.0.2.1"), k("192.0.2.1"));
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::2"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_ne!(k("192.0.2.1"), k("192.0.2.2"));
    }

    #[test]
    fn admission_evicts_the_oldest_idle_and_never_a_busy_one() {
        let limits = HttpLimits::default();
        let parent = CancellationToken::new();
        let mut t = Table::default();
        let a = ClientKey::of("192.0.2.1".parse().unwrap());
        let b = ClientKey::of("192.0.2.2".parse().unwrap());
        let id = |adm: Admission| match adm {
            Admission::Admitted { id, evicted, .. } => (id, evicted),
            Admission::Refused(r) => panic!("refused: {r}"),
        };
        let (c0, _) = id(t.admit(a, 2, 2, &parent));
        t.update(c0, &limits, |e| e.phase = Phase::Head);
        let (c1, _) = id(t.admit(a, 2, 2, &parent));
        t.update(c1, &limits, |e| e.phase = Phase::Head);
        // c0 is handling a request: c1 is the one to go.
        t.update(c0, &limits, |e| e.phase = Phase::Handling);
        let (c2, ev) = id(t.admit(b, 2, 2, &parent));
        assert!(ev);
        assert!(t.conns[&c1].evicted && !t.conns[&c0].evicted);
        t.update(c2, &limits, |e| e.phase = Phase::Handling);
        // Everything is busy: refused.
        assert!(matches!(
            t.admit(b, 2, 2, &parent),
            Admission::Refused("total_cap")
        ));
        t.remove(c1);
        assert_eq!(t.open(), 2);
        // Per client: b at its cap of 1 with nothing idle.
        assert!(matches!(
            t.admit(b, 10, 1, &parent),
            Admission::Refused("per_ip_cap")
        ));
        // A held connection is not evictable either.
        t.update(c0, &limits, |e| {
            e.phase = Phase::KeepAlive;
            e.holds = 1
        });
        assert!(matches!(
            t.admit(a, 10, 1, &parent),
            Admission::Refused("per_ip_cap")
        ));
        t.update(c0, &limits, |e| e.holds = 0);
        let (_, ev) = id(t.admit(a, 10, 1, &parent));
        assert!(ev && t.conns[&c0].evicted);
    }
}
