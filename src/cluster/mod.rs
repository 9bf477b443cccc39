//! Cluster mode on NATS JetStream: the one module that knows NATS.
//!
//! With a `cluster:` section, several callhook instances share the work of
//! one site; without it nothing here runs (SQLite outbox, one process).
//!
//! ```text
//! AMI (owned PBXs) ─┐                                                            ┌─▶ dispatcher (any instance) ─▶ HTTP
//!                   ├─▶ normalizer ─▶ rules ─▶ DeliveryStore::commit_batch ─▶ CALLHOOK_DELIVERIES (work queue, R3)
//! push (owned teams)┘    ▲     │               (Nats-Msg-Id, idem KV)          subjects d.<target>.<partition>
//!        ▲               │     └─ live calls, after the deliveries ─▶ calls KV   one consumer per partition, 1 in flight
//! any instance ─▶ CALLHOOK_PUSH (R3) ─▶ team owner        (read by the next owner of a PBX/team)
//! ```
//!
//! - [`config`]: the `cluster:` section;
//! - [`names`]: stream/subject/bucket names and the deterministic ids;
//! - [`store`]: the delivery store on JetStream ([`crate::deliver::DeliveryStore`]);
//! - [`dispatch`]: the dispatcher that pulls the partitions;
//! - [`hold`]: whether a pulled delivery is still this instance's to send,
//!   acknowledge or retry;
//! - [`rate`]: the cluster-wide per-target rate limit;
//! - [`ownership`]: leases on PBXs and push teams, members, balancing;
//! - [`push`]: pushes stored in the replicated stream and consumed by the team's owner;
//! - [`calls`]: live call state per PBX or push team and session (the
//!   normalizer's per-call snapshots, written with each batch after its
//!   deliveries, loaded by the next owner before its AMI client logs in or
//!   its push consumer starts).
//!
//! **What is guaranteed.** A delivery is acknowledged to the normalizer
//! once JetStream has stored it on a majority of the replicas; it is
//! removed only after its final outcome (delivered, expired, or moved to
//! the dead stream, which keeps it for an operator). Deliveries of one call
//! to one target are never concurrent and leave in creation order (one
//! partition, `max_ack_pending = 1`). A dispatcher that dies mid-request
//! leads to a redelivery after `ack_wait` (at-least-once, same
//! `webhook-id` and `Idempotency-Key`); slow requests send in-progress acks.
//! One that was paused past `ack_wait` with a message in hand (or in its
//! socket) does not send, ack or nak it once it runs again: it checks it
//! still holds it first ([`hold`]).
//! The same event processed twice (a handover) has the same `Nats-Msg-Id`
//! and is dropped by the stream within `dedupe_window`; idempotency keys
//! block a second delivery for `idempotency_window`.

pub mod calls;
pub mod config;
pub mod dispatch;
pub mod hold;
pub mod names;
pub mod ownership;
pub mod push;
pub mod rate;
pub mod store;

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

pub use config::{ClusterConfig, RawCluster};
pub use names::Names;

/// A cluster failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// Connecting to NATS failed.
    #[error("cannot connect to NATS ({servers}): {message}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// Why.
        message: String,
    },
    /// A JetStream request failed.
    #[error("NATS JetStream: {0}")]
    JetStream(String),
}

impl ClusterError {
    fn js(what: &str, e: impl std::fmt::Display) -> Self {
        ClusterError::JetStream(format!("{what}: {e}"))
    }
}

/// The stream behind a KV bucket, as the KV API expects it (`KV_<bucket>`,
/// subjects `$KV.<bucket>.>`, one message per key and revision, rollups,
/// direct gets), with features 2.9 servers have.
fn kv_stream(bucket: &str, history: i64, max_age: Duration, replicas: usize) -> stream::Config {
    let window = if max_age.is_zero() {
        Duration::from_secs(120)
    } else {
        max_age.min(Duration::from_secs(120))
    };
    stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history.max(1),
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        duplicate_window: window,
        ..Default::default()
    }
}

/// A connection to the cluster and the streams and buckets it uses.
#[derive(Clone)]
pub struct Cluster {
    /// Settings.
    pub cfg: ClusterConfig,
    /// Names.
    pub names: Names,
    /// The client.
    pub client: async_nats::Client,
    /// JetStream.
    pub js: jetstream::Context,
    /// This process's id in leases and members: `instance/nonce`.
    pub id: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("servers", &self.cfg.servers)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects and creates (or checks) the streams and buckets.
    pub async fn connect(cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        let servers = cfg.servers.join(", ");
        let fail = |message: String| ClusterError::Connect {
            servers: servers.clone(),
            message,
        };
        let addrs: Vec<async_nats::ServerAddr> = cfg
            .servers
            .iter()
            .map(|s| s.parse().map_err(|e| fail(format!("{s}: {e}"))))
            .collect::<Result<_, _>>()?;
        let mut opts = match &cfg.auth {
            config::NatsAuth::Creds(p) => async_nats::ConnectOptions::with_credentials_file(p)
                .await
                .map_err(|e| fail(format!("credentials file {}: {e}", p.display())))?,
            config::NatsAuth::UserPassword(u, p) => {
                async_nats::ConnectOptions::with_user_and_password(
                    u.clone(),
                    p.expose().to_string(),
                )
            }
            config::NatsAuth::Token(t) => {
                async_nats::ConnectOptions::with_token(t.expose().to_string())
            }
            config::NatsAuth::None => async_nats::ConnectOptions::new(),
        };
        if let Some(ca) = &cfg.tls_ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((c, k)) = &cfg.tls_client {
            opts = opts.add_client_certificate(c.clone(), k.clone());
        }
        let nonce = names::digest(
            &[
                &cfg.instance,
                &std::process::id().to_string(),
                &format!("{:?}", std::time::SystemTime::now()),
            ],
            4,
        );
        let id = format!("{}/{nonce}", cfg.instance);
        let client = opts
            .name(format!("callhook {id}"))
            .connection_timeout(cfg.connect_timeout)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(addrs)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        let c = Cluster {
            names: Names::new(&cfg.prefix),
            cfg,
            client,
            js,
            id,
        };
        tokio::time::timeout(Duration::from_secs(60), c.ensure())
            .await
            .map_err(|_| fail("JetStream did not answer within 60 s".into()))??;
        Ok(c)
    }

    /// Creates the streams and buckets, or checks they exist.
    async fn ensure(&self) -> Result<(), ClusterError> {
        let r = self.cfg.replicas;
        let window = self.cfg.dedupe_window;
        let streams = [
            stream::Config {
                name: self.names.deliveries_stream(),
                subjects: vec![self.names.deliveries_subjects()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: r,
                duplicate_window: window,
                description: Some("callhook deliveries (work queue per target partition)".into()),
                ..Default::default()
            },
            stream::Config {
                name: self.names.dead_stream(),
                subjects: vec![self.names.dead_subjects()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                num_replicas: r,
                duplicate_window: window,
                max_age: Duration::from_secs(30 * 24 * 3600),
                description: Some("callhook dead deliveries (until retried)".into()),
                ..Default::default()
            },
            stream::Config {
                name: self.names.push_stream(),
                subjects: vec![self.names.push_subjects()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: r,
                duplicate_window: window,
                description: Some("callhook accepted pushes (consumed by the team's owner)".into()),
                ..Default::default()
            },
        ];
        for s in streams {
            let name = s.name.clone();
            self.retrying(|| async {
                self.js
                    .get_or_create_stream(s.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| ClusterError::js(&format!("stream {name}"), e))
            })
            .await?;
        }
        let ttl = self.cfg.lease_ttl;
        let buckets = [
            (self.names.leases_bucket(), ttl, 1),
            (self.names.members_bucket(), ttl, 1),
            (
                self.names.idempotency_bucket(),
                self.cfg.idempotency_window,
                1,
            ),
            (self.names.rates_bucket(), Duration::from_secs(3600), 1),
            (self.names.calls_bucket(), Duration::ZERO, 1),
        ];
        for (bucket, max_age, history) in buckets {
            // The bucket's stream is created here rather than by
            // `create_key_value`, which first asks for the account info in
            // a shape 2.9 servers do not send.
            let cfg = kv_stream(&bucket, history, max_age, r);
            self.retrying(|| async {
                self.js
                    .get_or_create_stream(cfg.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| ClusterError::js(&format!("bucket {bucket}"), e))
            })
            .await?;
        }
        Ok(())
    }

    /// Runs `f` until it succeeds (JetStream may be electing a leader),
    /// up to 20 times.
    async fn retrying<F, Fut>(&self, mut f: F) -> Result<(), ClusterError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), ClusterError>>,
    {
        let mut last = None;
        for _ in 0..20 {
            match f().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(target: "callhook::cluster", error = %e, "JetStream not ready, retrying");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| ClusterError::JetStream("not ready".into())))
    }

    /// A bucket (created by [`Cluster::connect`]).
    pub async fn bucket(&self, name: &str) -> Result<kv::Store, ClusterError> {
        self.js
            .get_key_value(name)
            .await
            .map_err(|e| ClusterError::js(&format!("bucket {name}"), e))
    }
}
