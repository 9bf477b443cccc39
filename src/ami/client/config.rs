//! How one AMI connection is configured: address, login, timeouts,
//! backoff, queue and stall limits (the daemon's `pbx[].ami` section maps
//! onto it).

use super::*;

/// How the client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// `Challenge` + `Login` with `Key: md5(challenge + secret)` (default).
    #[default]
    Md5,
    /// `Login` with the secret in clear text.
    Plain,
}

/// Configuration of one AMI connection.
#[derive(Clone)]
pub struct ClientConfig {
    /// The PBX id (labels, logs, ActionIDs, source events).
    pub pbx: PbxId,
    /// Host name or address of the manager interface.
    pub host: String,
    /// TCP port (5038 by default on Asterisk).
    pub port: u16,
    /// Manager user.
    pub username: String,
    /// Manager secret (never logged).
    pub secret: String,
    /// Authentication method.
    pub auth: AuthMode,
    /// `Events:` value sent with the login: `on` or a class mask (`call,agent`).
    pub events: String,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Interval between keepalive pings.
    pub ping_interval: Duration,
    /// A ping unanswered for this long means the connection is dead.
    pub ping_timeout: Duration,
    /// Deadline of every action, counted from submission.
    pub action_timeout: Duration,
    /// First reconnect delay (before jitter).
    pub backoff_initial: Duration,
    /// Maximum reconnect delay.
    pub backoff_max: Duration,
    /// Maximum AMI packet size accepted by the framer.
    pub max_packet: usize,
    /// Recommended capacity of the events channel; also bounds the events
    /// held back while a resync list is being collected.
    pub queue_capacity: usize,
    /// List the live channels after every login (and after overflows).
    pub resync: bool,
    /// Longest the client stops reading the socket while the normalizer's
    /// queue is full (TCP backpressure) before it drops events instead. Keep
    /// it below Asterisk's `writetimeout` (manager.conf, 100 ms by default):
    /// a manager session whose write blocks that long is disconnected.
    pub max_stall: Duration,
    /// Build the noise events too (the codec skips them otherwise), for
    /// the AMI proxy's tap ([`AmiHandle::subscribe_events`]); the
    /// normalizer still never sees them.
    pub keep_noise: bool,
}

impl ClientConfig {
    /// A configuration with the defaults: MD5 auth, `Events: on`, connect
    /// timeout 5 s, ping every 20 s with a 5 s deadline, action timeout 10 s,
    /// backoff 500 ms → 30 s, 1 MiB packets, queue capacity 10 000, resync on,
    /// stalls of at most 50 ms.
    pub fn new(
        pbx: impl Into<PbxId>,
        host: impl Into<String>,
        port: u16,
        username: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        Self {
            pbx: pbx.into(),
            host: host.into(),
            port,
            username: username.into(),
            secret: secret.into(),
            auth: AuthMode::Md5,
            events: "on".to_string(),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(5),
            action_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_packet: AmiCodec::DEFAULT_MAX_PACKET,
            queue_capacity: 10_000,
            resync: true,
            max_stall: DEFAULT_MAX_STALL,
            keep_noise: false,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("pbx", &self.pbx)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .field("auth", &self.auth)
            .field("events", &self.events)
            .field("connect_timeout", &self.connect_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("action_timeout", &self.action_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("max_packet", &self.max_packet)
            .field("queue_capacity", &self.queue_capacity)
            .field("resync", &self.resync)
            .field("max_stall", &self.max_stall)
            .field("keep_noise", &self.keep_noise)
            .finish()
    }
}
