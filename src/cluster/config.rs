//! The `cluster:` section: how to reach NATS and how the work is shared.
//!
//! ```yaml
//! cluster:
//!   nats:
//!     servers: [nats://10.0.0.1:4222, nats://10.0.0.2:4222, nats://10.0.0.3:4222]
//!     creds: /etc/callhook/nats.creds     # optional: a NATS credentials file
//!     # user: callhook                    # optional: user + password_file, or token_file
//!     # password_file: /etc/callhook/nats.password
//!     # token_file: /etc/callhook/nats.token
//!     # tls: { ca: ca.pem, cert: client.pem, key: client.key }
//!     connect_timeout: 5s
//!   instance: callhook-a     # this instance's name (default: the host name); unique per instance
//!   replicas: 3              # stream and bucket replicas (1 for a single NATS server)
//!   partitions: 64           # ordering partitions per target
//!   lease_ttl: 10s           # an owner that stops renewing loses its PBXs after this
//!   dedupe_window: 2m        # Nats-Msg-Id duplicate window of the streams
//!   idempotency_window: 7d   # how long Idempotency-Keys block a second delivery
//!   prefix: callhook         # names of the streams, consumers and buckets
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::values::{parse_duration, read_secret_file, resolve_path, Secret};
use crate::yaml::{Path as At, Problem};

/// `cluster:` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// How to reach NATS.
    pub nats: Option<RawNats>,
    /// This instance's name (default: the host name).
    pub instance: Option<String>,
    /// Replicas of every stream and bucket (default 3).
    pub replicas: Option<usize>,
    /// Ordering partitions per target (default 64).
    pub partitions: Option<u32>,
    /// Lease time to live (default `10s`).
    pub lease_ttl: Option<String>,
    /// Duplicate window of the streams (default `2m`).
    pub dedupe_window: Option<String>,
    /// Idempotency-key window (default `7d`).
    pub idempotency_window: Option<String>,
    /// Prefix of stream, consumer and bucket names (default `callhook`).
    pub prefix: Option<String>,
}

/// `cluster.nats` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawNats {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`).
    #[serde(default)]
    pub servers: Vec<String>,
    /// A NATS credentials file (JWT + nkey seed).
    pub creds: Option<PathBuf>,
    /// User name (with `password_file`).
    pub user: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// File holding a token.
    pub token_file: Option<PathBuf>,
    /// TLS settings.
    pub tls: Option<RawNatsTls>,
    /// Connection timeout (default `5s`).
    pub connect_timeout: Option<String>,
}

/// `cluster.nats.tls` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawNatsTls {
    /// CA bundle to verify the servers with.
    pub ca: Option<PathBuf>,
    /// Client certificate (with `key`).
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
}

/// How the client authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum NatsAuth {
    /// No credentials.
    None,
    /// A credentials file (read at connect time).
    Creds(PathBuf),
    /// User and password.
    UserPassword(String, Secret),
    /// A token.
    Token(Secret),
}

/// Validated `cluster:`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Server URLs.
    pub servers: Vec<String>,
    /// Authentication.
    pub auth: NatsAuth,
    /// CA bundle.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// This instance's name.
    pub instance: String,
    /// Stream and bucket replicas.
    pub replicas: usize,
    /// Ordering partitions per target.
    pub partitions: u32,
    /// Lease time to live.
    pub lease_ttl: Duration,
    /// Duplicate window of the streams.
    pub dedupe_window: Duration,
    /// Idempotency-key window.
    pub idempotency_window: Duration,
    /// Prefix of names.
    pub prefix: String,
}

impl ClusterConfig {
    /// Defaults around a list of servers (tests, examples).
    pub fn new(servers: Vec<String>, instance: &str) -> Self {
        Self {
            servers,
            auth: NatsAuth::None,
            tls_ca: None,
            tls_client: None,
            connect_timeout: Duration::from_secs(5),
            instance: instance.to_string(),
            replicas: 3,
            partitions: 64,
            lease_ttl: Duration::from_secs(10),
            dedupe_window: Duration::from_secs(120),
            idempotency_window: Duration::from_secs(7 * 24 * 3600),
            prefix: "callhook".to_string(),
        }
    }
}

/// A name token safe in subjects, stream, consumer and bucket names.
pub fn is_name_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A file path with `${VAR}`s expanded (`${CREDENTIALS_DIRECTORY}/nats.creds`),
/// relative to `base`.
fn path_in(base: &Path, p: &Path) -> PathBuf {
    let (expanded, _) = crate::values::expand_vars(&p.to_string_lossy());
    resolve_path(base, Path::new(&expanded))
}

/// A duration setting: `default` when absent; a problem at `path` (and
/// `default`) when it does not parse or is shorter than `min`.
fn duration(
    v: &Option<String>,
    path: At,
    default: Duration,
    min: Duration,
    problems: &mut Vec<Problem>,
) -> Duration {
    let Some(s) = v.as_deref() else {
        return default;
    };
    match parse_duration(s) {
        Some(d) if d >= min => d,
        Some(_) => {
            problems.push(
                Problem::new(path, format!("{s:?} is too short")).hint(format!("at least {min:?}")),
            );
            default
        }
        None => {
            problems.push(
                Problem::new(path, format!("{s:?} is not a duration"))
                    .hint("write e.g. 10s, 2m, 7d"),
            );
            default
        }
    }
}

/// A file named at `path`, resolved against `base`: a problem when it
/// cannot be read (its metadata), the resolved path either way.
fn readable_file(base: &Path, p: &Path, path: At, problems: &mut Vec<Problem>) -> PathBuf {
    let full = path_in(base, p);
    if let Err(e) = std::fs::metadata(&full) {
        problems.push(cannot_read(path, &full, e));
    }
    full
}

fn cannot_read(path: At, full: &Path, e: std::io::Error) -> Problem {
    Problem::new(path, format!("cannot read {}: {e}", full.display()))
}

/// A secret read from a file at `path` (trimmed): a problem when it cannot
/// be read or is empty.
fn secret_file(base: &Path, file: &Path, path: At, problems: &mut Vec<Problem>) -> Option<Secret> {
    let (full, r) = read_secret_file(base, file);
    match r {
        Ok(s) if !s.trim().is_empty() => Some(Secret::new(s.trim().to_string())),
        Ok(_) => {
            problems.push(Problem::new(path, format!("{} is empty", full.display())));
            None
        }
        Err(e) => {
            problems.push(cannot_read(path, &full, e));
            None
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "callhook".to_string())
}

impl RawCluster {
    /// Checks every value, one problem (at `cluster.KEY`) per mistake;
    /// `base` resolves relative file names.
    pub fn validate(&self, base: &Path, problems: &mut Vec<Problem>) -> ClusterConfig {
        let at = |k: &str| At::root().key("cluster").key(k);
        let nat = |k: &str| At::root().key("cluster").key("nats").key(k);
        let mut c = ClusterConfig::new(Vec::new(), "");
        match &self.nats {
            None => problems.push(
                Problem::new(at("nats"), "cluster mode needs `nats: { servers: [...] }`")
                    .hint("e.g. nats: { servers: [nats://127.0.0.1:4222] }"),
            ),
            Some(n) => {
                if n.servers.is_empty() {
                    problems.push(
                        Problem::new(nat("servers"), "at least one NATS server is needed")
                            .hint("e.g. [nats://10.0.0.1:4222, nats://10.0.0.2:4222]"),
                    );
                }
                for (i, s) in n.servers.iter().enumerate() {
                    if s.parse::<async_nats::ServerAddr>().is_err() {
                        problems.push(
                            Problem::new(
                                nat("servers").index(i),
                                format!("{s:?} is not a NATS server address"),
                            )
                            .hint("nats://HOST:PORT or tls://HOST:PORT"),
                        );
                    }
                }
                c.servers = n.servers.clone();
                c.connect_timeout = duration(
                    &n.connect_timeout,
                    nat("connect_timeout"),
                    c.connect_timeout,
                    Duration::from_millis(100),
                    problems,
                );
                let ways = [
                    n.creds.is_some(),
                    n.user.is_some() || n.password_file.is_some(),
                    n.token_file.is_some(),
                ];
                if ways.iter().filter(|w| **w).count() > 1 {
                    problems.push(
                        Problem::new(
                            at("nats"),
                            "give one of creds, user + password_file, token_file",
                        )
                        .hint("they are different ways to log in"),
                    );
                }
                if let Some(f) = &n.creds {
                    c.auth = NatsAuth::Creds(readable_file(base, f, nat("creds"), problems));
                } else if let Some(f) = &n.token_file {
                    if let Some(t) = secret_file(base, f, nat("token_file"), problems) {
                        c.auth = NatsAuth::Token(t);
                    }
                } else if n.user.is_some() || n.password_file.is_some() {
                    match (&n.user, &n.password_file) {
                        (Some(u), Some(f)) => {
                            if let Some(p) = secret_file(base, f, nat("password_file"), problems) {
                                c.auth = NatsAuth::UserPassword(u.clone(), p);
                            }
                        }
                        (None, _) => problems.push(Problem::new(
                            nat("password_file"),
                            "password_file needs `user`",
                        )),
                        (_, None) => {
                            problems.push(Problem::new(nat("user"), "user needs `password_file`"))
                        }
                    }
                }
                if let Some(t) = &n.tls {
                    let tls = |k: &str| nat("tls").key(k);
                    let mut file = |p: &Option<PathBuf>, k: &str| {
                        p.as_ref()
                            .map(|p| readable_file(base, p, tls(k), &mut *problems))
                    };
                    c.tls_ca = file(&t.ca, "ca");
                    let (cert, key) = (file(&t.cert, "cert"), file(&t.key, "key"));
                    match (cert, key) {
                        (Some(cert), Some(key)) => c.tls_client = Some((cert, key)),
                        (None, None) => {}
                        (Some(_), None) => {
                            problems.push(Problem::new(tls("cert"), "cert needs `key`"))
                        }
                        (None, Some(_)) => {
                            problems.push(Problem::new(tls("key"), "key needs `cert`"))
                        }
                    }
                }
            }
        }
        c.instance = match &self.instance {
            Some(i) if !i.trim().is_empty() && i.len() <= 64 && !i.contains(['\n', '\r']) => {
                i.trim().to_string()
            }
            Some(i) => {
                problems.push(
                    Problem::new(
                        at("instance"),
                        format!("{i:?} is not a usable instance name"),
                    )
                    .hint("1 to 64 characters on one line, unique per instance"),
                );
                host_name()
            }
            None => host_name(),
        };
        match self.replicas {
            None => {}
            Some(r) if (1..=5).contains(&r) => c.replicas = r,
            Some(r) => problems.push(
                Problem::new(
                    at("replicas"),
                    format!("{r} replicas: JetStream allows 1 to 5"),
                )
                .hint("3 for a 3-node NATS cluster"),
            ),
        }
        match self.partitions {
            None => {}
            Some(p) if (1..=1024).contains(&p) => c.partitions = p,
            Some(p) => problems.push(
                Problem::new(at("partitions"), format!("{p} partitions: use 1 to 1024"))
                    .hint("64 is plenty for most sites"),
            ),
        }
        c.lease_ttl = duration(
            &self.lease_ttl,
            at("lease_ttl"),
            c.lease_ttl,
            Duration::from_secs(2),
            problems,
        );
        c.dedupe_window = duration(
            &self.dedupe_window,
            at("dedupe_window"),
            c.dedupe_window,
            Duration::from_secs(1),
            problems,
        );
        c.idempotency_window = duration(
            &self.idempotency_window,
            at("idempotency_window"),
            c.idempotency_window,
            Duration::from_secs(60),
            problems,
        );
        if let Some(p) = &self.prefix {
            if is_name_token(p) {
                c.prefix = p.clone();
            } else {
                problems.push(
                    Problem::new(
                        at("prefix"),
                        format!("{p:?} cannot be part of stream names"),
                    )
                    .hint("letters, digits, _ and -, at most 32"),
                );
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(servers: &[&str]) -> RawCluster {
        RawCluster {
            nats: Some(RawNats {
                servers: servers.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_errors() {
        let mut p = Vec::new();
        let c = raw(&["nats://127.0.0.1:4222"]).validate(Path::new("."), &mut p);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.replicas, 3);
        assert_eq!(c.partitions, 64);
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert!(!c.instance.is_empty());

        let mut r = raw(&[]);
        r.replicas = Some(7);
        r.partitions = Some(0);
        r.lease_ttl = Some("1s".into());
        r.prefix = Some("a.b".into());
        let mut p = Vec::new();
        r.validate(Path::new("."), &mut p);
        assert_eq!(p.len(), 5, "{p:?}");

        let mut p = Vec::new();
        RawCluster::default().validate(Path::new("."), &mut p);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn name_tokens() {
        assert!(is_name_token("crm_1-a"));
        assert!(!is_name_token("a.b"));
        assert!(!is_name_token("a*"));
        assert!(!is_name_token(""));
    }
}
