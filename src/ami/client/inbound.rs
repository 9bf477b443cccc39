//! What arrives on a session, frame by frame: events to the normalizer
//! (and presence, and the tap), responses and list items to the actions
//! waiting for them, counted in `ami_events`.

use super::*;

impl Client {
    pub(super) fn on_frame(&mut self, sess: &mut Session, frame: AmiFrame) -> Result<(), Lost> {
        match frame {
            AmiFrame::Message(msg) => self.on_message(sess, msg),
            AmiFrame::Ignored { event, .. } => {
                self.count_event(event);
                Ok(())
            }
            AmiFrame::Skipped { reason, bytes } => {
                metrics()
                    .ami_packets_skipped
                    .with_label_values(&[&self.pbx, reason.as_str()])
                    .inc();
                warn!(target: LOG_TARGET, pbx = %self.pbx, "skipped an AMI packet of {bytes} bytes ({})", reason.as_str());
                Ok(())
            }
            AmiFrame::Banner(b) => {
                debug!(target: LOG_TARGET, pbx = %self.pbx, "ignoring a banner in the middle of the stream: {b}");
                Ok(())
            }
        }
    }

    /// Counts one received event in `ami_events` (counters are looked up
    /// once per spelling of an event name, at most [`MAX_EVENT_NAMES`]).
    pub(super) fn count_event(&mut self, name: &str) {
        let tag = key_tag(name.as_bytes());
        if let Some((_, _, c)) = self
            .event_counters
            .iter()
            .find(|(t, n, _)| *t == tag && **n == *name)
        {
            c.inc();
            return;
        }
        let c = metrics()
            .ami_events
            .with_label_values(&[&self.pbx, event_label(name)]);
        c.inc();
        if self.event_counters.len() < MAX_EVENT_NAMES {
            self.event_counters.push((tag, name.into(), c));
        }
    }

    pub(super) fn on_message(&mut self, sess: &mut Session, msg: AmiMessage) -> Result<(), Lost> {
        if let Some(name) = msg.event() {
            self.count_event(name);
        }
        match route(&msg) {
            r @ (Route::Event | Route::Noise) => {
                // Presence events go there first (some only there); the
                // codec of a client with presence builds them.
                let name = msg.event().unwrap_or_default();
                if let Some(pr) = self.presence.as_ref().and_then(|_| presence_route(name)) {
                    if pr == PresenceRoute::Also {
                        self.forward(sess, msg.clone());
                    } else {
                        self.publish(&msg);
                    }
                    let ev = PresenceSourceEvent::Ami {
                        pbx: self.pbx.clone(),
                        received_at: now_epoch(),
                        msg,
                    };
                    if let Some(s) = self.presence.as_mut() {
                        s.forward(ev);
                    }
                    return Ok(());
                }
                if r == Route::Event {
                    self.forward(sess, msg);
                } else {
                    self.publish(&msg);
                }
                Ok(())
            }
            Route::Broadcast(id) => {
                // Broadcast: an event for everyone, and maybe the answer to
                // a pending (synchronous or awaited) Originate.
                if let Some(mut p) = sess.pending.remove(id) {
                    let id = id.to_string();
                    let awaited =
                        matches!(&p.kind, PendingKind::User(c) if c.await_event.is_some());
                    let mut items = std::mem::take(&mut p.items);
                    if awaited {
                        items.insert(0, p.response.take().unwrap_or_default());
                    }
                    let resp = ActionResponse {
                        response: msg.clone(),
                        items,
                        complete: None,
                    };
                    let result = if is_error(&msg) && !awaited {
                        Err(AmiError::Rejected(
                            msg.get("Reason").unwrap_or("originate failed").to_string(),
                        ))
                    } else {
                        Ok(resp)
                    };
                    self.complete(sess, &id, p, result)?;
                }
                self.forward(sess, msg);
                Ok(())
            }
            Route::ListItem(_) => self.list_item(sess, msg),
            Route::Response(None) => {
                debug!(target: LOG_TARGET, pbx = %self.pbx, "dropping a response without ActionID");
                Ok(())
            }
            Route::Response(Some(id)) => {
                let id = id.to_string();
                let Some(p) = sess.pending.get_mut(&id) else {
                    debug!(target: LOG_TARGET, pbx = %self.pbx, "dropping a response for unknown ActionID {id}");
                    return Ok(());
                };
                if p.response.is_some() {
                    debug!(target: LOG_TARGET, pbx = %self.pbx, "dropping a second response for ActionID {id}");
                    return Ok(());
                }
                if starts_list(&msg) {
                    p.response = Some(msg);
                    return Ok(());
                }
                if let PendingKind::User(c) = &p.kind {
                    if let (Some(wait), true) = (c.await_event, is_success(&msg)) {
                        // Queued: the outcome is the OriginateResponse event.
                        p.response = Some(msg);
                        p.deadline = Instant::now() + wait;
                        return Ok(());
                    }
                }
                let Some(mut p) = sess.pending.remove(&id) else {
                    return Ok(());
                };
                let result = if is_error(&msg) {
                    Err(AmiError::Rejected(
                        msg.get("Message").unwrap_or("error").to_string(),
                    ))
                } else {
                    Ok(ActionResponse {
                        response: msg,
                        items: std::mem::take(&mut p.items),
                        complete: None,
                    })
                };
                self.complete(sess, &id, p, result)
            }
            Route::Other => {
                debug!(target: LOG_TARGET, pbx = %self.pbx, "dropping a packet that is neither an event nor a response");
                Ok(())
            }
        }
    }
}
