//! Actions: writing them, their responses and list items, completion and
//! failure of pending actions, keepalive pings, and which actions may be
//! re-sent after a reconnect.

use super::*;

impl Client {
    /// An event carrying an ActionID: a list item for a pending action.
    pub(super) fn list_item(&mut self, sess: &mut Session, msg: AmiMessage) -> Result<(), Lost> {
        let Some(id) = msg.action_id().map(str::to_string) else {
            return Ok(());
        };
        let Some(p) = sess.pending.get_mut(&id) else {
            debug!(target: LOG_TARGET, pbx = %self.pbx,
                "dropping event {} for unknown ActionID {id}",
                msg.event().unwrap_or("?")
            );
            return Ok(());
        };
        let in_list = p.response.as_ref().is_some_and(starts_list);
        let has_eventlist = p.response.as_ref().is_some_and(|r| r.has("EventList"));
        let mut complete = None;
        if in_list && ends_list(&msg) {
            complete = Some(msg);
        } else if in_list
            && !has_eventlist
            && msg
                .event()
                .is_some_and(|e| e.eq_ignore_ascii_case("DBGetResponse"))
        {
            // Old DBGet: a single answer event, no Complete.
            p.items.push(msg);
        } else {
            p.items.push(msg);
            return Ok(());
        }
        let Some(mut p) = sess.pending.remove(&id) else {
            return Ok(());
        };
        let Some(response) = p.response.take() else {
            return Ok(());
        };
        let items = std::mem::take(&mut p.items);
        self.complete(
            sess,
            &id,
            p,
            Ok(ActionResponse {
                response,
                items,
                complete,
            }),
        )
    }

    /// Resolves a pending action removed from the table.
    pub(super) fn complete(
        &mut self,
        sess: &mut Session,
        id: &str,
        p: Pending,
        result: Result<ActionResponse, AmiError>,
    ) -> Result<(), Lost> {
        match p.kind {
            PendingKind::User(cmd) => {
                count_action(&self.pbx, cmd.action.name(), outcome(&result));
                let _ = cmd.reply.send(result);
                Ok(())
            }
            PendingKind::Ping => {
                count_action(&self.pbx, "Ping", outcome(&result));
                if sess.ping.as_deref() == Some(id) {
                    sess.ping = None;
                }
                if let Err(AmiError::Timeout) = result {
                    return Err(Lost(format!(
                        "no answer to Ping within {:?}",
                        self.cfg.ping_timeout
                    )));
                }
                Ok(())
            }
            PendingKind::State(step) => {
                count_action(&self.pbx, step.action_name(), outcome(&result));
                let next = match self.presence.as_mut() {
                    Some(s) => s.on_result(step, result),
                    None => Vec::new(),
                };
                self.write_state_actions(sess, next)
            }
            PendingKind::Resync { action, fell_back } => {
                count_action(&self.pbx, action, outcome(&result));
                match result {
                    Ok(r) => {
                        self.finish_resync(sess, Some(r.items));
                        Ok(())
                    }
                    Err(AmiError::Rejected(m)) if !fell_back => {
                        let other = if action == "Status" {
                            "CoreShowChannels"
                        } else {
                            "Status"
                        };
                        info!(target: LOG_TARGET, pbx = %self.pbx, "{action} rejected ({m}); resyncing with {other}");
                        self.send_resync(sess, other, true)
                    }
                    Err(e) => {
                        warn!(target: LOG_TARGET, pbx = %self.pbx, "channel resync with {action} failed: {e}");
                        self.finish_resync(sess, None);
                        Ok(())
                    }
                }
            }
        }
    }

    /// Writes an action and registers it as pending.
    pub(super) fn write(
        &mut self,
        sess: &mut Session,
        action: &Action,
        kind: PendingKind,
        deadline: Instant,
    ) -> Result<Option<String>, Lost> {
        let (mut id, n) = sess.next_id(&self.pbx);
        if let PendingKind::User(Command {
            id_prefix: Some(prefix),
            ..
        }) = &kind
        {
            id.insert_str(0, prefix);
        }
        let bytes = match action.encode(&id) {
            Ok(b) => b,
            Err(e) => {
                if let PendingKind::User(cmd) = kind {
                    let _ = cmd.reply.send(Err(AmiError::Encode(e)));
                }
                return Ok(None);
            }
        };
        if sess.writer_tx.try_send(bytes).is_err() {
            if let PendingKind::User(cmd) = kind {
                // Not written: it may go out after the next login.
                self.waiting.push_front(cmd);
            }
            return Err(Lost("the writer to the PBX is stuck or closed".into()));
        }
        sess.pending.insert(
            id.clone(),
            Pending {
                kind,
                n,
                deadline,
                response: None,
                items: Vec::new(),
            },
        );
        Ok(Some(id))
    }

    pub(super) fn submit(&mut self, sess: &mut Session, cmd: Command) -> Result<(), Lost> {
        if cmd.reply.is_closed() {
            return Ok(());
        }
        if cmd.deadline <= Instant::now() {
            count_action(&self.pbx, cmd.action.name(), "timeout");
            let _ = cmd.reply.send(Err(AmiError::Timeout));
            return Ok(());
        }
        let action = cmd.action.clone();
        let deadline = cmd.deadline;
        let proxied = cmd.proxied;
        let id = self.write(sess, &action, PendingKind::User(cmd), deadline)?;
        // The normalizer learns what a click-to-call asked for (a passive
        // listener only sees the broadcast OriginateResponse). Not for a
        // proxied tool: the model sees its calls as if it had its own login.
        if let Some(originate) = id
            .filter(|_| !proxied)
            .and_then(|id| OriginateSent::from_action(&action, &id))
        {
            let ev = SourceEvent::AmiOriginate {
                pbx: self.pbx.clone(),
                at: now_epoch(),
                originate,
            };
            self.forward_event(sess, ev);
        }
        Ok(())
    }

    pub(super) fn send_ping(&mut self, sess: &mut Session) -> Result<(), Lost> {
        if sess.ping.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + self.cfg.ping_timeout;
        sess.ping = self.write(sess, &Action::new("Ping"), PendingKind::Ping, deadline)?;
        Ok(())
    }

    /// Settles the actions in flight when a session ends.
    pub(super) fn fail_pending(&mut self, sess: &mut Session, lost: bool) {
        let now = Instant::now();
        let mut requeue: Vec<(u64, Command)> = Vec::new();
        for (_, p) in sess.pending.drain() {
            let PendingKind::User(cmd) = p.kind else {
                continue;
            };
            if lost
                && is_idempotent(cmd.action.name())
                && !cmd.reply.is_closed()
                && cmd.deadline > now
            {
                requeue.push((p.n, cmd));
            } else if lost {
                count_action(&self.pbx, cmd.action.name(), "disconnected");
                let _ = cmd.reply.send(Err(AmiError::Disconnected));
            } else {
                let _ = cmd.reply.send(Err(AmiError::Shutdown));
            }
        }
        requeue.sort_by_key(|(n, _)| *n);
        for (_, cmd) in requeue.into_iter().rev() {
            self.waiting.push_front(cmd);
        }
        sess.ping = None;
        if sess.resync_in_flight {
            // Interrupted: the next login must resync even if `resync` is off.
            self.overflow.resync_needed = true;
            sess.resync_in_flight = false;
        }
    }
}

/// True for the read-only actions that may be re-sent after a reconnect.
pub fn is_idempotent(action: &str) -> bool {
    const READ_ONLY: &[&str] = &[
        "Ping",
        "Status",
        "CoreShowChannels",
        "CoreStatus",
        "CoreSettings",
        "QueueStatus",
        "QueueSummary",
        "Queues",
        "ExtensionState",
        "ExtensionStateList",
        "DeviceStateList",
        "PresenceState",
        "PresenceStateList",
        "Getvar",
        "DBGet",
        "ListCommands",
        "SIPpeers",
        "SIPshowpeer",
        "SIPpeerstatus",
        "IAXpeers",
        "IAXpeerlist",
        "PJSIPShowEndpoints",
        "PJSIPShowEndpoint",
        "PJSIPShowContacts",
        "PJSIPShowAors",
        "PJSIPShowRegistrationsOutbound",
        "BridgeList",
        "BridgeInfo",
        "ConfbridgeList",
        "ConfbridgeListRooms",
        "MeetmeList",
        "MailboxCount",
        "MailboxStatus",
        "Agents",
        "ShowDialPlan",
        "CoreShowChannelMap",
    ];
    READ_ONLY.iter().any(|a| a.eq_ignore_ascii_case(action))
}

pub(super) fn is_success(m: &AmiMessage) -> bool {
    m.get("Response")
        .is_some_and(|r| r.eq_ignore_ascii_case("Success"))
}

pub(super) fn is_error(m: &AmiMessage) -> bool {
    m.get("Response")
        .is_some_and(|r| r.eq_ignore_ascii_case("Error") || r.eq_ignore_ascii_case("Failure"))
}

pub(super) fn outcome(r: &Result<ActionResponse, AmiError>) -> &'static str {
    match r {
        Ok(_) => "success",
        Err(AmiError::Timeout) => "timeout",
        Err(AmiError::Disconnected) => "disconnected",
        Err(_) => "error",
    }
}

pub(super) fn count_action(pbx: &str, action: &str, outcome: &str) {
    metrics()
        .ami_actions
        .with_label_values(&[pbx, action_label(action), outcome])
        .inc();
}
