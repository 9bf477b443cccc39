//! The connection life cycle: connect, log in, one session's read/route
//! loop, loss and reconnect, shutdown; the periodic housekeeping
//! (deadlines, the writer, the resync after an overflow).

use super::*;

impl Client {
    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::new(self.cfg.backoff_initial, self.cfg.backoff_max);
        let mut at_once: Option<Duration> = None;
        let mut first = true;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            if !first {
                metrics()
                    .ami_reconnects
                    .with_label_values(&[&self.pbx])
                    .inc();
            }
            first = false;
            self.conn_seq += 1;
            self.set_state(ConnectionState::Connecting);
            info!(target: LOG_TARGET, pbx = %self.pbx, "connecting to AMI at {}:{}", self.cfg.host, self.cfg.port);
            // Exactly one log line per state change: connecting, logged in
            // (in `connect_and_login`), down with its reason and the delay
            // before the next attempt, stopped.
            let down = match self.connect().await {
                Ok(sess) => {
                    self.set_state(ConnectionState::LoggedIn);
                    let since = Instant::now();
                    self.session_events = 0;
                    match self.session(sess).await {
                        SessionEnd::Shutdown => break,
                        SessionEnd::Lost(reason) => {
                            self.set_state(ConnectionState::Down);
                            self.deliver(SourceEvent::AmiDisconnected {
                                pbx: self.pbx.clone(),
                                at: now_epoch(),
                            });
                            if let Some(s) = self.presence.as_mut() {
                                s.disconnected(now_epoch());
                            }
                            let lasted = since.elapsed();
                            if self.session_events > 0 {
                                // The link works: reconnect at once (at most
                                // one connection per backoff_initial).
                                backoff.reset();
                                at_once = Some(self.cfg.backoff_initial.saturating_sub(lasted));
                            } else if lasted >= STABLE_SESSION {
                                backoff.reset();
                            }
                            format!("AMI connection lost: {reason}")
                        }
                    }
                }
                Err(ConnectError::Shutdown) => break,
                Err(ConnectError::Auth(msg)) => {
                    self.set_state(ConnectionState::Down);
                    format!(
                        "AMI login failed at {}:{} as user {}: {msg}",
                        self.cfg.host, self.cfg.port, self.cfg.username
                    )
                }
                Err(ConnectError::Io(msg)) | Err(ConnectError::Protocol(msg)) => {
                    self.set_state(ConnectionState::Down);
                    format!(
                        "cannot connect to AMI at {}:{}: {msg}",
                        self.cfg.host, self.cfg.port
                    )
                }
            };
            let delay = match at_once.take() {
                Some(d) => d,
                None => backoff.next_delay(&mut rand::thread_rng()),
            };
            warn!(
                target: LOG_TARGET,
                pbx = %self.pbx,
                retry_in_secs = delay.as_secs_f64(),
                "{down}; reconnecting in {:.1}s",
                delay.as_secs_f64()
            );
            if !self.wait(delay).await {
                break;
            }
        }
        self.stop();
    }

    pub(super) fn set_state(&self, s: ConnectionState) {
        metrics()
            .ami_connection_state
            .with_label_values(&[&self.pbx])
            .set(s.gauge());
        self.state.send_replace(s);
    }

    /// Waits `delay` while queueing commands and expiring them. False on shutdown.
    pub(super) async fn wait(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        let shutdown = self.shutdown.clone();
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = sleep_until(until) => return true,
                cmd = self.commands.recv(), if !self.commands_closed => match cmd {
                    Some(c) => self.waiting.push_back(c),
                    None => self.commands_closed = true,
                },
                _ = tick.tick() => self.expire_waiting(),
            }
        }
    }

    pub(super) fn expire_waiting(&mut self) {
        let now = Instant::now();
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        for c in self.waiting.drain(..) {
            if c.reply.is_closed() {
                continue;
            }
            if c.deadline <= now {
                count_action(&self.pbx, c.action.name(), "timeout");
                let _ = c.reply.send(Err(AmiError::Timeout));
                continue;
            }
            keep.push_back(c);
        }
        self.waiting = keep;
    }

    /// Ends the task: every waiting caller gets `Shutdown`.
    pub(super) fn stop(mut self) {
        self.commands.close();
        while let Ok(c) = self.commands.try_recv() {
            let _ = c.reply.send(Err(AmiError::Shutdown));
        }
        for c in self.waiting.drain(..) {
            let _ = c.reply.send(Err(AmiError::Shutdown));
        }
        self.set_state(ConnectionState::Stopped);
        info!(target: LOG_TARGET, pbx = %self.pbx, "AMI client stopped");
    }

    pub(super) async fn session(&mut self, mut sess: Session) -> SessionEnd {
        let end = match self.session_start(&mut sess) {
            Ok(()) => self.session_loop(&mut sess).await,
            Err(Lost(r)) => SessionEnd::Lost(r),
        };
        match &end {
            SessionEnd::Shutdown => {
                self.logoff(&mut sess).await;
                self.fail_pending(&mut sess, false);
            }
            SessionEnd::Lost(_) => {
                self.fail_pending(&mut sess, true);
                // Events received before the loss still go out, in order.
                while let Some(ev) = sess.held.pop_front() {
                    self.deliver(ev);
                }
            }
        }
        sess.writer.abort();
        self.flush_backlog().await;
        end
    }

    pub(super) fn session_start(&mut self, sess: &mut Session) -> Result<(), Lost> {
        // Presence state lists first: a PBX answers in order, so they come
        // back before the channel snapshot starts the event flow.
        self.start_state_sync(sess)?;
        if self.cfg.resync || self.overflow.resync_needed {
            self.overflow.resync_needed = false;
            self.start_resync(sess)?;
        }
        self.expire_waiting();
        while let Some(cmd) = self.waiting.pop_front() {
            self.submit(sess, cmd)?;
        }
        Ok(())
    }

    pub(super) async fn session_loop(&mut self, sess: &mut Session) -> SessionEnd {
        let shutdown = self.shutdown.clone();
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ping_every = self.cfg.ping_interval.max(Duration::from_millis(1));
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Everything already read, for as long as the queue takes it.
            let mut framed = false;
            while self.backlog.is_empty() {
                let Some(frame) = sess.reader.buffered() else {
                    break;
                };
                framed = true;
                if let Err(Lost(reason)) = self.on_frame(sess, frame) {
                    return SessionEnd::Lost(reason);
                }
            }
            if framed {
                // This read's presence events go together (one wake-up of
                // the presence thread per read, not per event).
                if let Some(p) = self.presence.as_mut() {
                    p.flush();
                }
                // Let the normalizer take this read's events while they are
                // still in the cache (on a single-threaded runtime it would
                // otherwise only run once the queue is full).
                tokio::task::yield_now().await;
            }
            let stalled = !self.backlog.is_empty();
            let eof = sess.reader.at_eof();
            if !stalled && eof {
                return SessionEnd::Lost("connection closed by the PBX".into());
            }
            // While stalled, the socket is still read ahead into the byte
            // buffer up to READ_AHEAD; only then does reading stop, and the
            // stall clock run (not after EOF: no session to protect).
            let read = !eof && (!stalled || sess.reader.buffered_bytes() < READ_AHEAD);
            let stopped = stalled && !read && !eof;
            if stopped {
                self.stall_since.get_or_insert_with(Instant::now);
            } else {
                self.stall_since = None;
            }
            let give_up = self
                .stall_since
                .map_or_else(Instant::now, |t| t + self.cfg.max_stall);
            let step = tokio::select! {
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                read = sess.reader.fill(), if read => match read {
                    Ok(_) => Ok(()),
                    Err(e) => Err(Lost(format!("read error: {e}"))),
                },
                permit = self.events.clone().reserve_owned(), if stalled => {
                    match permit {
                        Ok(p) => self.resume(p),
                        Err(_) => self.backlog.clear(),
                    }
                    Ok(())
                },
                _ = sleep_until(give_up), if stopped => {
                    // Only if the normalizer still took nothing: when room
                    // came at the same moment (a long batch on the same
                    // thread), the permit branch takes it next.
                    if self.events.capacity() == 0 {
                        self.give_up_stall();
                    }
                    Ok(())
                },
                cmd = self.commands.recv(), if !self.commands_closed => match cmd {
                    Some(c) => self.submit(sess, c),
                    None => { self.commands_closed = true; Ok(()) }
                },
                _ = housekeeping.tick() => self.housekeeping(sess),
                _ = ping.tick() => self.send_ping(sess),
            };
            if let Err(Lost(reason)) = step {
                return SessionEnd::Lost(reason);
            }
        }
    }

    pub(super) fn housekeeping(&mut self, sess: &mut Session) -> Result<(), Lost> {
        let now = Instant::now();
        // The answer to a keepalive may be queued behind events (unread
        // while they wait for room, or behind a long stream): bytes arriving
        // prove the connection alive.
        let stalled = !self.backlog.is_empty();
        let quiet = sess
            .reader
            .last_read()
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.ping_timeout);
        let expired: Vec<String> = sess
            .pending
            .iter()
            .filter(|(_, p)| !matches!(p.kind, PendingKind::Ping) || (quiet && !stalled))
            .filter(|(_, p)| {
                p.deadline <= now || matches!(&p.kind, PendingKind::User(c) if c.reply.is_closed())
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(p) = sess.pending.remove(&id) {
                if matches!(&p.kind, PendingKind::User(c) if c.reply.is_closed()) {
                    debug!(target: LOG_TARGET, pbx = %self.pbx, "caller of {id} is gone; a late answer will be dropped");
                    continue;
                }
                self.complete(sess, &id, p, Err(AmiError::Timeout))?;
            }
        }
        if sess.writer.is_finished() {
            return Err(Lost("writing to the PBX failed".into()));
        }
        if let Some(p) = self.presence.as_mut() {
            p.flush();
        }
        if self.presence.as_mut().is_some_and(StateSync::wants_resync) {
            info!(target: LOG_TARGET, pbx = %self.pbx, "presence queue has room again; asking for the state lists");
            self.start_state_sync(sess)?;
        }
        if self.overflow.resync_needed && !sess.resync_in_flight && self.queue_has_room() {
            let recent = self
                .overflow
                .last_resync
                .is_some_and(|t| t.elapsed() < OVERFLOW_RESYNC_MIN_INTERVAL);
            if !recent {
                info!(
                    target: LOG_TARGET,
                    pbx = %self.pbx,
                    "normalizer queue has room again after {} dropped events; resyncing channels",
                    self.overflow.dropped
                );
                self.overflow.active = false;
                self.overflow.dropped = 0;
                self.overflow.resync_needed = false;
                self.overflow.last_resync = Some(now);
                self.start_resync(sess)?;
            }
        }
        Ok(())
    }
}
