//! Whether this instance still holds a delivery it pulled.
//!
//! JetStream hands a message it has not heard about for `ack_wait` to the
//! next pull request, another instance's as well, and a 2.9 server applies
//! an ack, nak or in-progress ack sent for an earlier delivery of a message
//! to its current one: it checks neither the delivery count nor who sends
//! it. An instance that was paused with a message in hand (SIGSTOP, a VM
//! stall, a starved process), or whose message waited in its socket while
//! it was paused, would otherwise send a delivery another instance has sent
//! already (the CRM gets it twice), and its ack would free the partition's
//! next message while the other instance still sends this one (order). So
//! the dispatcher sends, acknowledges, retries or buries a message only
//! while it knows it holds it:
//!
//! - the server delivered the message after the pull request was sent, so
//!   nobody else gets it before `asked + ACK_WAIT` ([`Bound::new`]);
//! - an in-progress ack sent at `t` and confirmed while the bound still held
//!   reached the server in time and moves the bound to `t + ACK_WAIT`
//!   ([`Bound::extend`]; [`Hold::keep`] sends one every
//!   [`PROGRESS_EVERY`]);
//! - otherwise (the bound is near: a long wait, a pause, a message that
//!   waited for the previous one) the server is asked: a confirmed
//!   in-progress ack, then the consumer's state. The message is still ours
//!   if no delivery followed ours (`delivered.consumer_seq` is this
//!   delivery's) and it is still unacknowledged; the in-progress ack then
//!   reset its timer ([`Hold::confirm`]).
//!
//! A message found lost (or whose check the server did not answer) is left
//! alone: no send, no ack, no nak; the instance that has it now decides, or
//! JetStream hands it out again. What this cannot prevent: a pause longer
//! than [`MARGIN`] between the check and the request leaving, or during the
//! request itself (the CRM may then get it twice, with the same
//! `webhook-id` and `Idempotency-Key`); and a message the server has
//! already taken back but not yet handed on (no pull request was waiting
//! at that moment) still looks like ours.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, AckKind};

use crate::metrics::metrics;

/// The consumers' ack wait: redelivery after a dispatcher stopped
/// acknowledging.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// In-progress acks while a delivery is being worked on.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// How much of the hold must be left to act on a message without asking
/// the server (the time from the check to the request or ack leaving).
pub const MARGIN: Duration = Duration::from_secs(2);
/// Longest wait for the server's answer to a hold check.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// The earliest time JetStream may hand the message to someone else, as far
/// as this instance knows (a lower bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    until: Instant,
}

impl Bound {
    /// For a message delivered to a pull request sent at `asked`.
    pub fn new(asked: Instant) -> Self {
        Self {
            until: asked + ACK_WAIT,
        }
    }

    /// Whether the hold lasts `margin` more at `now`.
    pub fn lasts(&self, now: Instant, margin: Duration) -> bool {
        now + margin < self.until
    }

    /// An in-progress ack sent at `sent` was confirmed at `confirmed`: the
    /// server reset the message's timer if it still held it for us, which
    /// it did if the confirmation came before the bound. Whether it did.
    pub fn extend(&mut self, sent: Instant, confirmed: Instant) -> bool {
        if confirmed >= self.until {
            return false;
        }
        self.until = self.until.max(sent + ACK_WAIT);
        true
    }

    /// The server said the message is still ours after an in-progress ack
    /// sent at `sent`.
    pub fn renewed(&mut self, sent: Instant) {
        self.until = self.until.max(sent + ACK_WAIT);
    }
}

/// A pulled message and what is known about holding it.
pub struct Hold<'a> {
    msg: &'a jetstream::Message,
    consumer: &'a consumer::Consumer<consumer::pull::Config>,
    /// This delivery's consumer sequence (0: unknown, never confirmed).
    delivery: u64,
    bound: Mutex<Bound>,
}

impl<'a> Hold<'a> {
    /// `msg`, delivered by `consumer` to a pull request sent at `asked`.
    pub fn new(
        msg: &'a jetstream::Message,
        consumer: &'a consumer::Consumer<consumer::pull::Config>,
        asked: Instant,
    ) -> Self {
        let delivery = msg.info().map(|i| i.consumer_sequence).unwrap_or(0);
        Self {
            msg,
            consumer,
            delivery,
            bound: Mutex::new(Bound::new(asked)),
        }
    }

    fn bound(&self) -> std::sync::MutexGuard<'_, Bound> {
        self.bound.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends confirmed in-progress acks every [`PROGRESS_EVERY`] while the
    /// hold is known (a slow CRM, a rate-limit wait); never returns. Once
    /// it is not known, they stop: another instance may have the message,
    /// and they would keep its delivery alive.
    pub async fn keep(&self) {
        let mut every = tokio::time::interval(PROGRESS_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            if self.bound().lasts(Instant::now(), Duration::ZERO) {
                let sent = Instant::now();
                if self.progress().await {
                    let ok = self.bound().extend(sent, Instant::now());
                    if !ok {
                        tracing::debug!(target: "callhook::cluster", delivery = self.delivery, "in-progress ack confirmed too late to extend the hold");
                    }
                }
            }
        }
    }

    /// An in-progress ack the server confirmed.
    async fn progress(&self) -> bool {
        matches!(
            tokio::time::timeout(ASK_TIMEOUT, self.msg.double_ack_with(AckKind::Progress)).await,
            Ok(Ok(()))
        )
    }

    /// Whether this instance may act on the message now (send it, ack,
    /// nak or bury it): the hold lasts [`MARGIN`] more, or the server says
    /// the message is still ours. False counts it in
    /// `callhook_cluster_lost_holds_total` and logs why.
    pub async fn confirm(&self, before: &str) -> bool {
        if self.bound().lasts(Instant::now(), MARGIN) {
            return true;
        }
        let why = match self.ask().await {
            Ok(true) => return true,
            Ok(false) => "JetStream handed it to another consumer or it was acknowledged",
            Err(e) => {
                tracing::debug!(target: "callhook::cluster", delivery = self.delivery, error = %e, "hold check failed");
                "JetStream did not answer the hold check"
            }
        };
        metrics().cluster.lost_holds.inc();
        tracing::warn!(target: "callhook::cluster", delivery = self.delivery, before, why, "held past the ack wait: left to JetStream (no send, no ack)");
        false
    }

    /// The server's view: a confirmed in-progress ack, then the consumer's
    /// last delivery and pending count.
    async fn ask(&self) -> Result<bool, String> {
        if self.delivery == 0 {
            return Ok(false);
        }
        let sent = Instant::now();
        if !self.progress().await {
            return Err("in-progress ack not confirmed".into());
        }
        let info = tokio::time::timeout(ASK_TIMEOUT, self.consumer.get_info())
            .await
            .map_err(|_| "consumer info timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let ours = info.delivered.consumer_sequence == self.delivery && info.num_ack_pending > 0;
        if ours {
            self.bound().renewed(sent);
        }
        Ok(ours)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_held_for_the_ack_wait_after_its_pull_request() {
        let asked = Instant::now();
        let b = Bound::new(asked);
        assert!(b.lasts(asked + Duration::from_secs(7), MARGIN));
        assert!(!b.lasts(asked + Duration::from_secs(8), MARGIN));
        assert!(b.lasts(asked + Duration::from_secs(9), Duration::ZERO));
        assert!(!b.lasts(asked + ACK_WAIT, Duration::ZERO));
    }

    #[test]
    fn a_progress_ack_extends_the_hold_only_if_confirmed_before_it_ends() {
        let asked = Instant::now();
        let mut b = Bound::new(asked);
        // Sent at 6 s, confirmed at 6.1 s: held until 16 s.
        let s = asked + Duration::from_secs(6);
        assert!(b.extend(s, s + Duration::from_millis(100)));
        assert!(b.lasts(asked + Duration::from_secs(13), MARGIN));
        assert!(!b.lasts(asked + Duration::from_secs(16), Duration::ZERO));
        // Sent in time but confirmed after the bound (a pause): the server
        // may have handed it on before it saw the ack; nothing extends.
        let late = asked + Duration::from_secs(15);
        assert!(!b.extend(late, asked + Duration::from_secs(17)));
        assert!(!b.lasts(asked + Duration::from_secs(16), Duration::ZERO));
        // The server's own word renews it from the ack's sending.
        let s = asked + Duration::from_secs(20);
        b.renewed(s);
        assert!(b.lasts(s + Duration::from_secs(7), MARGIN));
    }

    #[test]
    fn an_older_confirmation_never_shortens_the_hold() {
        let asked = Instant::now();
        let mut b = Bound::new(asked);
        assert!(b.extend(
            asked + Duration::from_secs(5),
            asked + Duration::from_secs(5)
        ));
        assert!(b.extend(
            asked + Duration::from_secs(1),
            asked + Duration::from_secs(6)
        ));
        assert!(b.lasts(asked + Duration::from_secs(14), Duration::ZERO));
        b.renewed(asked);
        assert!(b.lasts(asked + Duration::from_secs(14), Duration::ZERO));
    }
}
