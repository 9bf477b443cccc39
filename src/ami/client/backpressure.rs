//! Handing events to the normalizer's queue: the backlog while it is full,
//! resuming, giving up after `max_stall`, dropping and counting (see the
//! [backpressure policy](super#reading-and-backpressure-policy)).

use super::*;

impl Client {
    /// At the end of a session: the events still waiting for room get
    /// [`END_FLUSH`] to get into the queue (there is no socket to protect
    /// any more), then the rest is dropped and counted.
    pub(super) async fn flush_backlog(&mut self) {
        self.stall_since = None;
        let until = Instant::now() + END_FLUSH;
        while let Some(ev) = self.backlog.pop_front() {
            match tokio::time::timeout_at(until, self.events.send(ev)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    // Closed: nobody is listening any more.
                    self.backlog.clear();
                }
                Err(_) => {
                    self.dropped();
                    while self.backlog.pop_front().is_some() {
                        self.dropped();
                    }
                }
            }
        }
    }

    pub(super) fn queue_has_room(&self) -> bool {
        let max = self.events.max_capacity().max(1);
        self.events.capacity() * 2 >= max
    }

    /// Hands an unsolicited event to the subscribers of
    /// [`AmiHandle::subscribe_events`], without waiting; no copy is made
    /// while there are none.
    pub(super) fn publish(&self, msg: &AmiMessage) {
        if self.tap.receiver_count() > 0 {
            let _ = self.tap.send(Arc::new(msg.clone()));
        }
    }

    /// Forwards an unsolicited event to the normalizer (and the tap), held
    /// back while a resync runs.
    pub(super) fn forward(&mut self, sess: &mut Session, msg: AmiMessage) {
        self.publish(&msg);
        // What every login brings says nothing about whether the link works.
        if !msg
            .event()
            .is_some_and(|e| e.eq_ignore_ascii_case("FullyBooted"))
        {
            self.session_events += 1;
        }
        let ev = SourceEvent::Ami {
            pbx: self.pbx.clone(),
            received_at: sess.reader.read_at(),
            msg,
        };
        self.forward_event(sess, ev);
    }

    /// Forwards a source event in stream order (held back while a resync
    /// runs).
    pub(super) fn forward_event(&mut self, sess: &mut Session, ev: SourceEvent) {
        if sess.resync_in_flight {
            if sess.held.len() < self.cfg.queue_capacity.max(1) {
                sess.held.push_back(ev);
            } else {
                self.dropped();
            }
        } else {
            self.deliver(ev);
        }
    }

    /// Hands an event to the normalizer's queue without waiting. When the
    /// queue is full the event waits in the backlog (and the socket is not
    /// read until the backlog is gone) unless a stall already lasted
    /// [`ClientConfig::max_stall`]: then it is dropped and counted. False
    /// when dropped.
    pub(super) fn deliver(&mut self, ev: SourceEvent) -> bool {
        if !self.backlog.is_empty() {
            self.backlog.push_back(ev);
            return true;
        }
        match self.events.try_send(ev) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(ev)) => {
                if self.overflow.active {
                    self.dropped();
                    return false;
                }
                self.backlog.push_back(ev);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                if !self.events_closed_logged {
                    self.events_closed_logged = true;
                    warn!(target: LOG_TARGET, pbx = %self.pbx, "the events channel is closed; AMI events are discarded");
                }
                false
            }
        }
    }

    /// The queue has room again: the backlog goes first, in order.
    pub(super) fn resume(&mut self, permit: mpsc::OwnedPermit<SourceEvent>) {
        // The normalizer took something: the stall clock starts again.
        self.stall_since = None;
        if let Some(ev) = self.backlog.pop_front() {
            permit.send(ev);
        }
        while let Some(ev) = self.backlog.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    self.backlog.push_front(ev);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }

    /// The socket has not been read for `max_stall`: drop the backlog and
    /// read on, dropping what does not fit until the resync (the PBX would
    /// soon disconnect a session whose writes block).
    pub(super) fn give_up_stall(&mut self) {
        let n = self.backlog.len();
        warn!(target: LOG_TARGET, pbx = %self.pbx,
            "the normalizer took no event for {:?} and the read-ahead is full: dropping {n} waiting events and reading on",
            self.cfg.max_stall
        );
        while self.backlog.pop_front().is_some() {
            self.dropped();
        }
        self.stall_since = None;
    }

    pub(super) fn dropped(&mut self) {
        metrics()
            .ami_queue_dropped
            .with_label_values(&[&self.pbx])
            .inc();
        if !self.overflow.active {
            self.overflow.active = true;
            warn!(target: LOG_TARGET, pbx = %self.pbx,
                "normalizer queue is full: dropping AMI events until it drains, then resyncing"
            );
        }
        self.overflow.dropped += 1;
        self.overflow.resync_needed = true;
    }
}
