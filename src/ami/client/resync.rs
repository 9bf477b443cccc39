//! The lists asked for after every login: the presence state lists and
//! the channel snapshot (`CoreShowChannels` / `Status`), and delivering
//! the snapshot before the events held back meanwhile.

use super::*;

impl Client {
    /// Asks for the presence state lists (nothing without presence).
    pub(super) fn start_state_sync(&mut self, sess: &mut Session) -> Result<(), Lost> {
        let modern = sess.modern;
        let actions = match self.presence.as_mut() {
            Some(s) => s.begin(modern),
            None => return Ok(()),
        };
        self.write_state_actions(sess, actions)
    }

    pub(super) fn write_state_actions(
        &mut self,
        sess: &mut Session,
        actions: Vec<(Action, StateStep)>,
    ) -> Result<(), Lost> {
        for (action, step) in actions {
            let deadline = Instant::now() + self.cfg.action_timeout;
            if self
                .write(sess, &action, PendingKind::State(step), deadline)?
                .is_none()
            {
                if let Some(s) = self.presence.as_mut() {
                    s.unsent();
                }
            }
        }
        Ok(())
    }

    pub(super) fn start_resync(&mut self, sess: &mut Session) -> Result<(), Lost> {
        let action = if sess.modern {
            "CoreShowChannels"
        } else {
            "Status"
        };
        self.send_resync(sess, action, false)
    }

    pub(super) fn send_resync(
        &mut self,
        sess: &mut Session,
        action: &'static str,
        fell_back: bool,
    ) -> Result<(), Lost> {
        sess.resync_in_flight = true;
        let deadline = Instant::now() + self.cfg.action_timeout;
        self.write(
            sess,
            &Action::new(action),
            PendingKind::Resync { action, fell_back },
            deadline,
        )
        .map(|_| ())
    }

    /// Delivers the snapshot (if any), then the events held meanwhile.
    pub(super) fn finish_resync(&mut self, sess: &mut Session, channels: Option<Vec<AmiMessage>>) {
        sess.resync_in_flight = false;
        if let Some(channels) = channels {
            let n = channels.len();
            if self.deliver(SourceEvent::AmiSnapshot {
                pbx: self.pbx.clone(),
                received_at: now_epoch(),
                channels,
            }) {
                debug!(target: LOG_TARGET, pbx = %self.pbx, "delivered a snapshot of {n} channels");
            }
        }
        while let Some(ev) = sess.held.pop_front() {
            self.deliver(ev);
        }
    }
}
