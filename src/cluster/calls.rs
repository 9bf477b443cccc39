//! Live call state in the `<prefix>_calls` bucket, so that the next owner
//! of a PBX or push team resumes the calls in progress (a call that started
//! under one instance and ended after it died still gets exactly one
//! record). Push sessions are stored the same way, keyed by team.
//!
//! The state of a call is opaque here: the bytes of the normalizer's
//! per-call snapshot. One key per PBX and session (`<pbx token>.<hash of
//! the session>`), its value an envelope with the session id. A PBX's
//! calls are found by subject: the bucket's stream is asked for the
//! subjects under `$KV.<bucket>.<pbx token>.` (a subject filter on the
//! stream info, which 2.9 servers answer), so loading one PBX reads only
//! its own keys, however many other PBXs and teams the bucket holds. A
//! call that ended has its subject purged from the stream (no delete
//! marker is left behind), so the bucket holds exactly the calls in
//! progress. An entry that cannot be decoded (not an envelope, or a state
//! that is not base64: written by something else, or damaged) is of no use
//! to any owner; the load that finds it purges it (up to its own revision,
//! so a newer write of the key survives), with a warning and
//! `callhook_cluster_undecodable_call_states_total`, instead of leaving it
//! to be skipped by every owner after. (A state that decodes but that the
//! normalizer cannot use is deleted by the owner's rewrite after a take.)
//! The owner writes the calls a batch changed before it takes
//! the next batch; the next owner reads them before its AMI client logs
//! in, and the post-login reconciliation closes or continues them.
//!
//! [`ClusterStore::commit_batch`](super::store::ClusterStore) writes a
//! batch's call changes once its deliveries are stored (never ahead of
//! them), before the batch's pushes are answered; the app loads a PBX's
//! (team's) calls when this instance takes its lease and restores them in
//! the normalizer before starting the AMI client (the push consumer).

use async_nats::jetstream::kv;
use base64::Engine;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::names::{digest, token};
use super::{Cluster, ClusterError};
use crate::metrics::metrics;

/// What is stored per call.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    session: String,
    /// The snapshot, base64.
    state: String,
}

/// A batch's changes to one PBX's calls: (session id, new state or `None`
/// when the call ended).
pub type CallChanges = Vec<(String, Option<Vec<u8>>)>;

/// The bucket of live calls.
#[derive(Clone)]
pub struct CallBucket {
    kv: kv::Store,
}

impl std::fmt::Debug for CallBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallBucket").finish_non_exhaustive()
    }
}

fn key(pbx: &str, session: &str) -> String {
    format!("{}.{}", token(pbx), digest(&[session], 12))
}

impl CallBucket {
    /// The bucket of a connected cluster (created by [`Cluster::connect`]).
    pub async fn new(c: &Cluster) -> Result<Self, ClusterError> {
        Ok(Self {
            kv: c.bucket(&c.names.calls_bucket()).await?,
        })
    }

    /// Applies the changes of one batch to `pbx`'s calls: `Some(bytes)` is
    /// the call's new state, `None` that it ended.
    pub async fn save(&self, pbx: &str, changes: CallChanges) -> Result<(), ClusterError> {
        // One key per session (a batch names each session once): the
        // writes go out together and the batch waits for every ack.
        let writes = changes.into_iter().map(|(session, state)| {
            let k = key(pbx, &session);
            async move {
                match state {
                    Some(bytes) => {
                        let env = Envelope {
                            session,
                            state: base64::engine::general_purpose::STANDARD.encode(bytes),
                        };
                        let v = serde_json::to_vec(&env)
                            .map_err(|e| ClusterError::js("call state", e))?;
                        self.kv
                            .put(&k, v.into())
                            .await
                            .map(|_| ())
                            .map_err(|e| ClusterError::js("call state put", e))
                    }
                    // Every message of the key goes, markers included.
                    None => self
                        .kv
                        .stream
                        .purge()
                        .filter(self.subject(&k))
                        .await
                        .map(|_| ())
                        .map_err(|e| ClusterError::js("call state purge", e)),
                }
            }
        });
        for r in futures::future::join_all(writes).await {
            r?;
        }
        Ok(())
    }

    /// The calls of `pbx` in progress: (session id, state bytes). Only
    /// `pbx`'s subjects are listed (see the module). An entry that cannot
    /// be decoded is left out and purged (see the module).
    pub async fn load(&self, pbx: &str) -> Result<Vec<(String, Vec<u8>)>, ClusterError> {
        let mut subjects = self
            .kv
            .stream
            .info_with_subjects(format!("{}{}.>", self.kv.prefix, token(pbx)))
            .await
            .map_err(|e| ClusterError::js("call state subjects", e))?;
        let mut mine = Vec::new();
        while let Some(s) = subjects.next().await {
            let (subject, _) = s.map_err(|e| ClusterError::js("call state subjects", e))?;
            if let Some(k) = subject.strip_prefix(&self.kv.prefix) {
                mine.push(k.to_string());
            }
        }
        let mut out = Vec::with_capacity(mine.len());
        for k in mine {
            let Some(e) = self
                .kv
                .entry(&k)
                .await
                .map_err(|e| ClusterError::js("call state get", e))?
            else {
                continue;
            };
            if e.operation != kv::Operation::Put {
                continue;
            }
            match decode(&e.value) {
                Some(c) => out.push(c),
                None => self.purge_undecodable(pbx, &k, e.revision).await,
            }
        }
        out.sort();
        Ok(out)
    }

    /// The stream subject that holds key `k`'s messages.
    fn subject(&self, k: &str) -> String {
        format!("{}{k}", self.kv.prefix)
    }

    /// Removes an entry [`decode`] refused: the messages of its key up to
    /// and including `revision` (a value written since then is kept; the
    /// bucket's stream denies single-message deletes). A failure leaves it
    /// for the next load.
    async fn purge_undecodable(&self, pbx: &str, k: &str, revision: u64) {
        let purged = self
            .kv
            .stream
            .purge()
            .filter(self.subject(k))
            .sequence(revision.saturating_add(1))
            .await;
        match purged {
            Ok(_) => {
                metrics().cluster.undecodable_call_states.inc();
                tracing::warn!(target: "callhook::cluster", pbx, key = %k, revision, "undecodable live call state purged from the calls bucket");
            }
            Err(e) => {
                tracing::warn!(target: "callhook::cluster", pbx, key = %k, revision, error = %e, "undecodable live call state skipped; purging it failed (tried again at the next load)")
            }
        }
    }
}

/// A stored entry as (session id, state bytes); `None` when it is not an
/// envelope or its state is not base64.
fn decode(v: &[u8]) -> Option<(String, Vec<u8>)> {
    let e = serde_json::from_slice::<Envelope>(v).ok()?;
    let state = base64::engine::general_purpose::STANDARD
        .decode(e.state)
        .ok()?;
    Some((e.session, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_envelopes_with_base64_states_decode() {
        let good = serde_json::to_vec(&Envelope {
            session: "1795375684.197".into(),
            state: base64::engine::general_purpose::STANDARD.encode(b"\x00state"),
        })
        .unwrap();
        assert_eq!(
            decode(&good),
            Some(("1795375684.197".to_string(), b"\x00state".to_vec()))
        );
        for bad in [
            &b"garbage"[..],
            b"",
            b"{}",
            br#"{"session":"1.2"}"#,
            br#"{"session":"1.2","state":"not base64!"}"#,
            br#"{"session":7,"state":""}"#,
            b"\xff\xfe{\"session\"",
        ] {
            assert_eq!(decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
