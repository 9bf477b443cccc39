//! One connected client, independent of the transport: what it is sent
//! first (`hello`, `snapshot`, what it missed), what it is sent next, and
//! what happens when it cannot keep up.
//!
//! **Resume.** A client that saw up to `seq` N (the `resume` parameter or
//! message, SSE's `Last-Event-ID`) gets, right after its snapshot, every
//! message after N it may see that the tenant's ring buffer still holds
//! (marked `"replayed": true`, so a `call.ringing` that rang while it was
//! away still pops up); when the buffer no longer reaches back to N it gets
//! a `gap` message instead (`{"from": N, "to": seq}`): the snapshot it just
//! received is the current state.
//!
//! **Slow clients.** A client whose queue ([`super::config::LiveConfig::client_queue`])
//! is full misses the messages that did not fit; as soon as it reads again
//! it gets a `gap` message and a fresh `snapshot` (`"reason": "overflow"`).
//! A client that overflows [`MAX_OVERFLOWS`] times within a minute is
//! disconnected (close code 4008). Both count in
//! `callhook_live_dropped_total{reason}`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::auth::{Principal, Scope, CLOSE_PROTOCOL, CLOSE_SLOW};
use super::message::{self, Frame};
use super::{Live, Refusal, Subscription};
use crate::metrics::metrics;

/// Overflows per minute before a client is disconnected.
pub const MAX_OVERFLOWS: usize = 3;

/// What to send next.
#[derive(Debug)]
pub enum Next {
    /// Text messages, in order.
    Send(Vec<Arc<str>>),
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// A client session.
pub struct Session {
    live: Arc<Live>,
    sub: Subscription,
    last: u64,
    overflows: VecDeque<Instant>,
}

impl Session {
    /// Admits a client; returns the session and its first messages.
    pub fn start(
        live: &Arc<Live>,
        principal: Principal,
        resume: Option<u64>,
        transport: &str,
    ) -> Result<(Self, Vec<Arc<str>>), Refusal> {
        let (sub, snapshot, seq) = live.subscribe(principal)?;
        let p = &sub.principal;
        let tenant = live.config().tenants.get(&p.tenant);
        let hello = message::render(
            "hello",
            seq,
            crate::source::now_epoch(),
            &json!({
                "tenant": p.tenant,
                "code": tenant.map(|t| t.code),
                "extension": p.extension,
                "scope": p.scope,
                "subscribed": if p.scope == Scope::Monitor { json!("*") } else { json!([p.extension]) },
                "transport": transport,
                "heartbeat": live.config().heartbeat.as_secs(),
                "crm_url": live.config().crm_url,
                "crm_auto_open": live.config().crm_auto_open,
                "version": env!("CARGO_PKG_VERSION"),
            }),
        );
        let mut first: Vec<Arc<str>> = vec![hello.into(), snapshot.into()];
        let mut s = Self {
            live: live.clone(),
            sub,
            last: seq,
            overflows: VecDeque::new(),
        };
        if let Some(after) = resume {
            first.extend(s.resume(after));
        }
        Ok((s, first))
    }

    /// Who this is.
    pub fn principal(&self) -> &Principal {
        &self.sub.principal
    }

    /// The highest seq sent.
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    fn resume(&mut self, after: u64) -> Vec<Arc<str>> {
        match self.live.missed(&self.sub, after, self.last) {
            Some(frames) => frames.iter().map(|f| replayed(f).into()).collect(),
            None => {
                metrics()
                    .live_dropped
                    .with_label_values(&["resume_too_old"])
                    .inc();
                vec![message::render(
                    "gap",
                    self.last,
                    crate::source::now_epoch(),
                    &json!({ "from": after, "to": self.last, "reason": "resume buffer exceeded" }),
                )
                .into()]
            }
        }
    }

    /// Waits for the next messages (cancel-safe).
    pub async fn next(&mut self) -> Next {
        if self.sub.overflow.load(Ordering::Relaxed) {
            return self.recover();
        }
        let Some(f) = self.sub.rx.recv().await else {
            return Next::Close(1001, "server shutting down");
        };
        let mut out = Vec::new();
        self.push(&f, &mut out);
        while out.len() < 64 {
            match self.sub.rx.try_recv() {
                Ok(f) => self.push(&f, &mut out),
                Err(_) => break,
            }
        }
        if self.sub.overflow.load(Ordering::Relaxed) {
            match self.recover() {
                Next::Send(more) => out.extend(more),
                close => return close,
            }
        }
        Next::Send(out)
    }

    fn push(&mut self, f: &Arc<Frame>, out: &mut Vec<Arc<str>>) {
        if f.seq <= self.last {
            return;
        }
        self.last = f.seq;
        metrics()
            .live_latency_seconds
            .observe(f.published.elapsed().as_secs_f64());
        metrics()
            .live_messages
            .with_label_values(&[label(f.kind)])
            .inc();
        out.push(f.json.clone());
    }

    fn recover_close(&mut self) -> Next {
        metrics()
            .live_dropped
            .with_label_values(&["slow_disconnected"])
            .inc();
        Next::Close(CLOSE_SLOW, "too slow to keep up")
    }

    /// After an overflow: a gap marker and a fresh snapshot, or the end.
    fn recover(&mut self) -> Next {
        let now = Instant::now();
        self.overflows.push_back(now);
        while self
            .overflows
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.overflows.pop_front();
        }
        if self.overflows.len() > MAX_OVERFLOWS {
            return self.recover_close();
        }
        metrics()
            .live_dropped
            .with_label_values(&["resnapshot"])
            .inc();
        let from = self.last;
        let (snap, seq) = self.live.resnapshot(&self.sub, "overflow");
        // Drop what is queued up to the snapshot (it is in it).
        while let Ok(f) = self.sub.rx.try_recv() {
            if f.seq > seq {
                // Cannot put it back: it is newer than the snapshot. Keep it.
                let gap = message::render(
                    "gap",
                    seq,
                    crate::source::now_epoch(),
                    &json!({ "from": from, "to": seq, "reason": "client too slow" }),
                );
                self.last = seq;
                let mut out: Vec<Arc<str>> = vec![gap.into(), snap.into()];
                self.push(&f, &mut out);
                return Next::Send(out);
            }
        }
        let gap = message::render(
            "gap",
            seq,
            crate::source::now_epoch(),
            &json!({ "from": from, "to": seq, "reason": "client too slow" }),
        );
        self.last = seq;
        Next::Send(vec![gap.into(), snap.into()])
    }

    /// A message from the client: `{"type":"ping"}` → `pong`,
    /// `{"type":"resume","seq":N}` → what it missed.
    pub fn on_client(&mut self, text: &str) -> Next {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                return Next::Send(vec![message::error("bad_message", "not JSON").into()]);
            }
        };
        match v.get("type").and_then(Value::as_str) {
            Some("ping") => Next::Send(vec![message::render(
                "pong",
                self.last,
                crate::source::now_epoch(),
                &json!({ "id": v.get("id") }),
            )
            .into()]),
            Some("resume") => match v.get("seq").and_then(Value::as_u64) {
                Some(n) => Next::Send(self.resume(n)),
                None => Next::Send(vec![message::error(
                    "bad_message",
                    "resume needs a numeric seq",
                )
                .into()]),
            },
            _ => Next::Close(CLOSE_PROTOCOL, "unknown message type"),
        }
    }
}

/// A frame's JSON with `"replayed": true`.
fn replayed(f: &Frame) -> String {
    match serde_json::from_str::<Value>(&f.json) {
        Ok(Value::Object(mut m)) => {
            m.insert("replayed".into(), Value::Bool(true));
            Value::Object(m).to_string()
        }
        _ => f.json.to_string(),
    }
}

/// Bounded metric label of a message type.
fn label(kind: &str) -> &'static str {
    match kind {
        "presence" => "presence",
        "call.ringing" => "call.ringing",
        "call.answered" => "call.answered",
        "call.hungup" => "call.hungup",
        k if k.starts_with("originate.") => "originate",
        _ => "other",
    }
}
