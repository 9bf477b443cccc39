//! Pushes in cluster mode: any instance accepts, the team's owner applies.
//!
//! The push endpoint of any instance checks the token and the fields as
//! usual, then stores the request as received (team, receive time,
//! content type, body) in the replicated push stream, subject
//! `PREFIX.push.<team>`, and answers 2xx only once JetStream has
//! acknowledged it. `Nats-Msg-Id` is a hash of team, content type and
//! body: a pusher that retries after a lost answer stores it once.
//!
//! The team's owner consumes the team's durable consumer in order: each
//! push goes to the normalizer with an acknowledgement channel, like a
//! local push, and the stream message is acknowledged once the push's
//! deliveries are stored. The next push goes to the normalizer only then:
//! when one could not be stored (NATS failing over), it and every later
//! push in hand are negatively acknowledged in stream order and come back
//! in that order, so a call's pushes are never applied out of order (a
//! hangup before its ringing would leave a call that never ends).
//!
//! When ownership moves, the new owner first restores the team's sessions
//! in progress from the calls bucket (`app::handover`), then starts here:
//! it deletes the team's durable consumer and creates it afresh, so the
//! pushes the previous owner had fetched but not acknowledged (it died, or
//! gave the team up) come again at once and in stream order, before the
//! newer ones, instead of after an `ack_wait`. Nothing accepted is lost; a
//! push the previous owner applied and committed but had not acknowledged
//! yet is a duplicate of the restored session (its duplicate keys are part
//! of the stored snapshot).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::names::{self, Names};
use super::Cluster;
use crate::http::push::{parse_body, parse_fields, PushForward, Teams};
use crate::source::{PbxId, SourceEvent};

/// Stores accepted pushes in the stream.
#[derive(Debug, Clone)]
pub struct PushStream {
    js: jetstream::Context,
    names: Names,
}

impl PushStream {
    /// The push stream of a cluster.
    pub fn new(c: &Cluster) -> Self {
        Self {
            js: c.js.clone(),
            names: c.names.clone(),
        }
    }
}

impl PushForward for PushStream {
    fn forward(
        &self,
        team: &str,
        received_at: f64,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> BoxFuture<'static, Result<bool, String>> {
        let js = self.js.clone();
        let subject = self.names.push_subject(team);
        let ctype = content_type.unwrap_or("").to_string();
        let id = format!(
            "p-{}",
            names::digest(&[team, &ctype, &String::from_utf8_lossy(&body)], 16)
        );
        let team = team.to_string();
        Box::pin(async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id.as_str());
            h.insert("Callhook-Team", team.as_str());
            h.insert("Callhook-Received-At", format!("{received_at:.6}").as_str());
            if !ctype.is_empty() {
                h.insert("Content-Type", ctype.as_str());
            }
            let ack = js
                .publish_with_headers(subject, h, body)
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            Ok(ack.duplicate)
        })
    }
}

fn is_not_found(k: &async_nats::jetstream::stream::ConsumerErrorKind) -> bool {
    matches!(k, async_nats::jetstream::stream::ConsumerErrorKind::JetStream(e)
        if e.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND)
}

/// Applies the pushes of `team` while `stop` is not cancelled (ownership).
pub async fn consume(
    cluster: Cluster,
    team: String,
    teams: watch::Receiver<std::sync::Arc<Teams>>,
    token_param: String,
    tx: mpsc::Sender<SourceEvent>,
    stop: CancellationToken,
) {
    let name = cluster.names.push_consumer(&team);
    let cfg = consumer::pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: cluster.names.push_subject(&team),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
        max_deliver: -1,
        ..Default::default()
    };
    let mut fresh = false;
    let consumer = loop {
        let r = async {
            let s = cluster
                .js
                .get_stream(cluster.names.push_stream())
                .await
                .map_err(|e| e.to_string())?;
            if !fresh {
                // What the previous owner held comes back now, in order.
                match s.delete_consumer(&name).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e.kind()) => {}
                    Err(e) => return Err(e.to_string()),
                }
                fresh = true;
            }
            s.get_or_create_consumer(&name, cfg.clone())
                .await
                .map_err(|e| e.to_string())
        };
        match r.await {
            Ok(c) => break c,
            Err(e) => {
                tracing::debug!(target: "callhook::cluster", team = %team, error = %e, "push consumer not ready");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let team_id: PbxId = PbxId::from(team.as_str());
    while !stop.is_cancelled() {
        let batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_secs(5))
            .messages();
        let mut batch = tokio::select! {
            _ = stop.cancelled() => return,
            b = batch => match b {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(target: "callhook::cluster", team = %team, error = %e, "push fetch failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        // After a failure: what is still in hand goes back, in order.
        let mut failed = false;
        while let Some(m) = batch.next().await {
            let Ok(msg) = m else { break };
            if failed {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                continue;
            }
            let header = |k: &str| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(k))
                    .map(|v| v.as_str().to_string())
            };
            let received_at = header("Callhook-Received-At")
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(crate::source::now_epoch);
            let ctype = header("Content-Type");
            let tz = teams
                .borrow()
                .0
                .iter()
                .find(|(id, _)| id.as_ref() == team)
                .map(|(_, t)| t.timezone.clone());
            let Some(tz) = tz else {
                // The team was removed from the config: keep its pushes.
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(30))))
                    .await;
                continue;
            };
            let ev = match parse_body(ctype.as_deref(), &msg.payload)
                .and_then(|f| parse_fields(f, &tz, &token_param))
            {
                Ok(ev) => ev,
                Err(e) => {
                    // It was valid when accepted; a config change made it not.
                    tracing::warn!(target: "callhook::cluster", team = %team, error = %e.error, "stored push no longer parses: dropped");
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            let (ack, answer) = oneshot::channel();
            let sev = SourceEvent::Push {
                team: team_id.clone(),
                received_at,
                event: Box::new(ev),
                ack: Some(ack),
            };
            if tx.send(sev).await.is_err() {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                return;
            }
            match answer.await {
                Ok(Ok(_)) => {
                    let _ = msg.double_ack().await;
                }
                _ => {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                    failed = true;
                }
            }
        }
        if failed {
            // Give the store a moment (a stream electing a leader).
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
