//! Running actions on a session: the AGI commands of each action, with
//! their deadlines, and what a dead channel still allows.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::action::{Action, ActionKind, DialTarget};
use super::check::*;
use super::protocol::arg;
use super::session::{Session, SessionError};
use crate::template::{TemplateContext, Templates, TextTemplate};

/// What running actions left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on (the call is still ours and not handled).
    Next,
    /// The call is handled (answered dial, voicemail, hangup, goto) or gone.
    Done,
}

/// Settings the actions run with.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// `agi.extension_channel`: `{extension}` is replaced.
    pub extension_channel: String,
    /// Deadline of quick commands (SET VARIABLE, ANSWER…).
    pub command_timeout: Duration,
    /// Deadline of one sound file.
    pub media_timeout: Duration,
}

/// The state of the channel as far as the session knows.
#[derive(Debug, Default)]
pub struct ChannelState {
    /// ANSWER was sent and succeeded.
    pub answered: bool,
}

/// Runs actions on a session.
pub struct Runner<'a> {
    /// The route's name (logs, metrics).
    pub route: &'a str,
    /// Templates the actions were compiled into.
    pub templates: &'a Templates,
    /// The call's template context (prepared).
    pub ctx: &'a TemplateContext<'a>,
    /// Settings.
    pub settings: &'a RunSettings,
    /// When the session must end.
    pub session_deadline: Instant,
}

impl Runner<'_> {
    fn quick(&self) -> Instant {
        (Instant::now() + self.settings.command_timeout).min(self.session_deadline)
    }

    fn media(&self) -> Instant {
        (Instant::now() + self.settings.media_timeout).min(self.session_deadline)
    }

    fn render(
        &self,
        t: &TextTemplate,
        check: fn(&str) -> Result<(), String>,
    ) -> Result<String, String> {
        let s = self
            .templates
            .render(t, self.ctx)
            .map_err(|e| e.to_string())?;
        check(&s)?;
        Ok(s)
    }

    fn skip(&self, what: &str, why: &str) {
        crate::metrics::metrics()
            .agi
            .action_errors
            .with_label_values(&[self.route])
            .inc();
        tracing::warn!(route = %self.route, action = what, error = %why, "AGI action skipped");
    }

    /// Sends ANSWER unless the channel was answered already.
    pub async fn answer<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        s: &mut Session<R, W>,
        st: &mut ChannelState,
    ) -> Result<(), SessionError> {
        if !st.answered && !s.is_dead() {
            let r = s.command("ANSWER", self.quick()).await?;
            st.answered = r.is_success() && r.result_int() == Some(0);
        }
        Ok(())
    }

    /// Runs `actions` in order until one handles the call.
    pub async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        s: &mut Session<R, W>,
        st: &mut ChannelState,
        actions: &[Action],
    ) -> Result<Flow, SessionError> {
        for a in actions {
            // After a hangup only `set` runs (the h extension sees it).
            if s.is_dead() && a.kind() != ActionKind::Set {
                continue;
            }
            if self.one(s, st, a).await? == Flow::Done {
                return Ok(Flow::Done);
            }
        }
        Ok(if s.is_dead() { Flow::Done } else { Flow::Next })
    }

    async fn exec<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        s: &mut Session<R, W>,
        app: &str,
        args: &str,
    ) -> Result<(), SessionError> {
        match arg(args) {
            Ok(q) => {
                s.command(&format!("EXEC {app} {q}"), self.session_deadline)
                    .await?;
            }
            Err(e) => self.skip(app, &e.0),
        }
        Ok(())
    }

    async fn one<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        s: &mut Session<R, W>,
        st: &mut ChannelState,
        a: &Action,
    ) -> Result<Flow, SessionError> {
        match a {
            Action::Dial {
                targets,
                timeout,
                options,
            } => {
                let mut chans = Vec::new();
                for t in targets {
                    let r = match t {
                        DialTarget::Channel(c) => self.render(c, check_channel),
                        DialTarget::Extension(e) => self.render(e, check_extension).and_then(|e| {
                            let c = self.settings.extension_channel.replace("{extension}", &e);
                            check_channel(&c).map(|()| c)
                        }),
                    };
                    match r {
                        Ok(c) => chans.push(c),
                        Err(e) => {
                            self.skip("dial", &e);
                            return Ok(Flow::Next);
                        }
                    }
                }
                let mut args = chans.join("&");
                match (timeout, options.is_empty()) {
                    (Some(t), true) => args.push_str(&format!(",{t}")),
                    (Some(t), false) => args.push_str(&format!(",{t},{options}")),
                    (None, false) => args.push_str(&format!(",,{options}")),
                    (None, true) => {}
                }
                self.exec(s, "Dial", &args).await?;
                if s.is_dead() {
                    return Ok(Flow::Done);
                }
                let r = s.command("GET VARIABLE DIALSTATUS", self.quick()).await?;
                let status = r.data.unwrap_or_default();
                tracing::info!(route = %self.route, dialstatus = %status, "AGI dial finished");
                Ok(if status == "ANSWER" || s.is_dead() {
                    Flow::Done
                } else {
                    Flow::Next
                })
            }
            Action::Voicemail { mailbox, options } => match self.render(mailbox, check_mailbox) {
                Ok(m) => {
                    let args = if options.is_empty() {
                        m
                    } else {
                        format!("{m},{options}")
                    };
                    self.exec(s, "VoiceMail", &args).await?;
                    Ok(Flow::Done)
                }
                Err(e) => {
                    self.skip("voicemail", &e);
                    Ok(Flow::Next)
                }
            },
            Action::Conference {
                room,
                bridge_profile,
                user_profile,
            } => match self.render(room, |r| check_name(r, "room")) {
                Ok(mut args) => {
                    match (bridge_profile, user_profile) {
                        (Some(b), Some(u)) => args.push_str(&format!(",{b},{u}")),
                        (Some(b), None) => args.push_str(&format!(",{b}")),
                        (None, Some(u)) => args.push_str(&format!(",,{u}")),
                        (None, None) => {}
                    }
                    self.exec(s, "ConfBridge", &args).await?;
                    Ok(Flow::Done)
                }
                Err(e) => {
                    self.skip("conference", &e);
                    Ok(Flow::Next)
                }
            },
            Action::Playback(files) => {
                self.answer(s, st).await?;
                for f in files {
                    if s.is_dead() {
                        break;
                    }
                    s.command(&format!("STREAM FILE {f} \"\""), self.media())
                        .await?;
                }
                Ok(Flow::Next)
            }
            Action::Set(vars) => {
                for (k, v) in vars {
                    match self
                        .render(v, check_value)
                        .and_then(|v| arg(&v).map_err(|e| e.0))
                    {
                        Ok(q) => {
                            s.command(&format!("SET VARIABLE {k} {q}"), self.quick())
                                .await?;
                        }
                        Err(e) => self.skip("set", &e),
                    }
                }
                Ok(Flow::Next)
            }
            Action::Hangup(cause) => {
                s.command(&format!("EXEC Hangup {cause}"), self.quick())
                    .await?;
                Ok(Flow::Done)
            }
            Action::Goto {
                context,
                extension,
                priority,
            } => match self.render(extension, check_extension) {
                Ok(e) => {
                    s.command(&format!("SET CONTEXT {context}"), self.quick())
                        .await?;
                    s.command(&format!("SET EXTENSION {e}"), self.quick())
                        .await?;
                    s.command(&format!("SET PRIORITY {priority}"), self.quick())
                        .await?;
                    Ok(Flow::Done)
                }
                Err(e) => {
                    self.skip("goto", &e);
                    Ok(Flow::Next)
                }
            },
        }
    }
}
