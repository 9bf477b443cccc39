//! What a route does with a call: the actions, from the YAML (`actions:`,
//! `fallback:`, `deny:`, `no_route:`) or from a CRM's JSON answer, and how
//! each one becomes AGI commands.
//!
//! | action | YAML | AGI commands | then |
//! |---|---|---|---|
//! | dial | `dial: { channels: [SIP/1001, IAX2/1002], timeout: 20s, options: tT }` or `dial: { extension: "1003" }` | `EXEC Dial "SIP/1001&IAX2/1002,20,tT"`, `GET VARIABLE DIALSTATUS` | done if answered, else the next action (e.g. voicemail) |
//! | voicemail | `voicemail: { mailbox: "1003@default", options: u }` | `EXEC VoiceMail "1003@default,u"` | done |
//! | conference | `conference: { room: sales, bridge_profile: default_bridge, user_profile: default_user }` | `EXEC ConfBridge "sales,…"` | done |
//! | playback | `playback: welcome` or `playback: [welcome, menu]` | `ANSWER` once, `STREAM FILE welcome ""` each | next |
//! | set | `set: { ROUTE: vip, ACCOUNT: "{{call.extra.agi_arg_1}}" }` | `SET VARIABLE ROUTE "vip"` each | next |
//! | hangup | `hangup: busy` or `hangup: 17` | `EXEC Hangup 17` | done |
//! | goto | `goto: { context: from-internal, extension: "1001", priority: 1 }` | `SET CONTEXT`, `SET EXTENSION`, `SET PRIORITY` | done: the dialplan goes on there after AGI() |
//!
//! Channels, the extension, the mailbox, the room, `set` values and the
//! goto extension are templates (`SIP/%DIALED%`, `{{call.extra.agi_arg_1}}`);
//! `dial.extension` becomes a channel through `agi.extension_channel`
//! (default `PJSIP/{extension}`). Every value is checked before it is sent
//! (a channel is `TECH/resource` without `,`, `&`, quotes, spaces or `$`;
//! sound files are relative names; variable names are `NAME` or
//! `FUNC(args)`), and every argument is quoted for Asterisk's parser, so
//! neither a caller ID nor a CRM answer can add arguments, options or
//! commands. A value that fails the check skips that action (logged,
//! `callhook_agi_action_errors_total{route}`).
//!
//! When the channel is dead (the caller hung up), actions that need it are
//! skipped; `set` still runs (the variables are visible in the `h`
//! extension).
//!
//! Hangup causes by name: `normal` 16, `busy` 17, `noanswer` 19,
//! `rejected` 21, `unallocated` 1, `congestion` 34, `unavailable` 20 (or a
//! number 1–127).
//!
//! **The CRM's answer** is a JSON object `{"action": "dial", "extension":
//! "1003"}` or `{"actions": [ … ]}` (at most 16) with the same actions and
//! keys: `dial` (`extension`, `channel` or `channels`, `timeout` in
//! seconds, `options`), `voicemail` (`mailbox`, `options`), `conference`
//! (`room`, `bridge_profile`, `user_profile`), `playback` (`file` or
//! `files`), `set` (`variables`: an object), `hangup` (`cause`), `goto`
//! (`context`, `extension`, `priority`). Its values are never templates.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::check::*;
use crate::rules::{Scalar, Words};
use crate::template::{EventKind, TemplateContext, TemplateError, Templates, TextTemplate};

pub use super::answer::{from_json, MAX_CRM_ACTIONS};
pub use super::check::{check_channel, check_extension, check_var_name, parse_cause};
pub use super::run::{ChannelState, Flow, RunSettings, Runner};

/// One action as written (exactly one key).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    /// Dial one or more channels.
    pub dial: Option<RawDial>,
    /// Leave a voicemail.
    pub voicemail: Option<RawVoicemail>,
    /// Join a ConfBridge conference.
    pub conference: Option<RawConference>,
    /// Play sound files.
    pub playback: Option<Words>,
    /// Set channel variables.
    pub set: Option<BTreeMap<String, Scalar>>,
    /// Hang up with a cause (name or number).
    pub hangup: Option<Scalar>,
    /// Continue the dialplan elsewhere.
    pub goto: Option<RawGoto>,
}

/// `dial:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDial {
    /// Channels (`SIP/1001`), dialled at once.
    pub channels: Option<Words>,
    /// An extension, dialled through `agi.extension_channel`.
    pub extension: Option<Scalar>,
    /// Ring timeout (`20s`, or seconds).
    pub timeout: Option<Scalar>,
    /// Dial options (`tT`).
    pub options: Option<String>,
}

/// `voicemail:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVoicemail {
    /// `1003` or `1003@context`.
    pub mailbox: Scalar,
    /// VoiceMail options (`u`, `b`, `s`).
    pub options: Option<String>,
}

/// `conference:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConference {
    /// The room.
    pub room: Scalar,
    /// ConfBridge bridge profile.
    pub bridge_profile: Option<String>,
    /// ConfBridge user profile.
    pub user_profile: Option<String>,
}

/// `goto:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGoto {
    /// The context.
    pub context: String,
    /// The extension (default `s`).
    pub extension: Option<Scalar>,
    /// The priority (default 1) or a label.
    pub priority: Option<Scalar>,
}

/// The kinds of action (the names in YAML and JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// `dial`.
    Dial,
    /// `voicemail`.
    Voicemail,
    /// `conference`.
    Conference,
    /// `playback`.
    Playback,
    /// `set`.
    Set,
    /// `hangup`.
    Hangup,
    /// `goto`.
    Goto,
}

impl ActionKind {
    /// Every kind.
    pub const ALL: [ActionKind; 7] = [
        ActionKind::Dial,
        ActionKind::Voicemail,
        ActionKind::Conference,
        ActionKind::Playback,
        ActionKind::Set,
        ActionKind::Hangup,
        ActionKind::Goto,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Dial => "dial",
            ActionKind::Voicemail => "voicemail",
            ActionKind::Conference => "conference",
            ActionKind::Playback => "playback",
            ActionKind::Set => "set",
            ActionKind::Hangup => "hangup",
            ActionKind::Goto => "goto",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
    }
}

/// Where a dial goes.
#[derive(Debug, Clone, PartialEq)]
pub enum DialTarget {
    /// A channel (`SIP/1001`).
    Channel(TextTemplate),
    /// An extension, through `agi.extension_channel`.
    Extension(TextTemplate),
}

/// A compiled action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `EXEC Dial`.
    Dial {
        /// Channels or extensions.
        targets: Vec<DialTarget>,
        /// Ring timeout, seconds.
        timeout: Option<u64>,
        /// Dial options.
        options: String,
    },
    /// `EXEC VoiceMail`.
    Voicemail {
        /// Mailbox.
        mailbox: TextTemplate,
        /// Options.
        options: String,
    },
    /// `EXEC ConfBridge`.
    Conference {
        /// Room.
        room: TextTemplate,
        /// Bridge profile.
        bridge_profile: Option<String>,
        /// User profile.
        user_profile: Option<String>,
    },
    /// `STREAM FILE` each.
    Playback(Vec<String>),
    /// `SET VARIABLE` each.
    Set(Vec<(String, TextTemplate)>),
    /// `EXEC Hangup cause`.
    Hangup(u8),
    /// `SET CONTEXT/EXTENSION/PRIORITY`.
    Goto {
        /// Context.
        context: String,
        /// Extension.
        extension: TextTemplate,
        /// Priority or label.
        priority: String,
    },
}

impl Action {
    /// The kind.
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Dial { .. } => ActionKind::Dial,
            Action::Voicemail { .. } => ActionKind::Voicemail,
            Action::Conference { .. } => ActionKind::Conference,
            Action::Playback(_) => ActionKind::Playback,
            Action::Set(_) => ActionKind::Set,
            Action::Hangup(_) => ActionKind::Hangup,
            Action::Goto { .. } => ActionKind::Goto,
        }
    }
}

/// A problem in a YAML action: path (relative to the action), message,
/// offending text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionProblem {
    /// Relative path (`dial.channels[1]`).
    pub at: String,
    /// What is wrong.
    pub message: String,
    /// Where to point.
    pub needle: Option<String>,
}

struct Compiler<'a, 'c> {
    templates: &'a mut Templates,
    sample: &'a TemplateContext<'c>,
    problems: Vec<ActionProblem>,
}

impl Compiler<'_, '_> {
    fn problem(&mut self, at: &str, message: String, needle: Option<&str>) {
        self.problems.push(ActionProblem {
            at: at.to_string(),
            message,
            needle: needle.map(str::to_string),
        });
    }

    /// A template; a constant is checked by `check` now, a real template
    /// against the sample call (and its rendering checked at run time).
    fn template(
        &mut self,
        at: &str,
        src: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> Option<TextTemplate> {
        match self.templates.text(src) {
            Ok(t @ TextTemplate::Const(_)) => match check(src) {
                Ok(()) => Some(t),
                Err(e) => {
                    self.problem(at, e, Some(src));
                    None
                }
            },
            Ok(t) => match self.templates.check(&t, self.sample, EventKind::CallState) {
                Ok(()) => Some(t),
                Err(e) => {
                    self.template_error(at, e);
                    None
                }
            },
            Err(es) => {
                for e in es {
                    self.template_error(at, e);
                }
                None
            }
        }
    }

    fn template_error(&mut self, at: &str, e: TemplateError) {
        let msg = e.to_string();
        self.problems.push(ActionProblem {
            at: at.to_string(),
            message: msg,
            needle: e.needle,
        });
    }

    fn action(&mut self, a: &RawAction) -> Option<Action> {
        let keys: Vec<&str> = [
            ("dial", a.dial.is_some()),
            ("voicemail", a.voicemail.is_some()),
            ("conference", a.conference.is_some()),
            ("playback", a.playback.is_some()),
            ("set", a.set.is_some()),
            ("hangup", a.hangup.is_some()),
            ("goto", a.goto.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        if keys.len() != 1 {
            let msg = if keys.is_empty() {
                "an action needs one of: dial, voicemail, conference, playback, set, hangup, goto"
                    .to_string()
            } else {
                format!(
                    "one action per list item, found {}: write each as its own `- …` item",
                    keys.join(", ")
                )
            };
            self.problem("", msg, None);
            return None;
        }
        if let Some(d) = &a.dial {
            return self.dial(d);
        }
        if let Some(v) = &a.voicemail {
            let mailbox = self.template("voicemail.mailbox", &v.mailbox.0, check_mailbox);
            let options = v.options.clone().unwrap_or_default();
            if let Err(e) = check_options(&options) {
                self.problem("voicemail.options", e, Some(&options));
            }
            return Some(Action::Voicemail {
                mailbox: mailbox?,
                options,
            });
        }
        if let Some(c) = &a.conference {
            let room = self.template("conference.room", &c.room.0, |s| check_name(s, "room"));
            for (k, v) in [
                ("bridge_profile", &c.bridge_profile),
                ("user_profile", &c.user_profile),
            ] {
                if let Some(p) = v {
                    if let Err(e) = check_name(p, "profile") {
                        self.problem(&format!("conference.{k}"), e, Some(p));
                    }
                }
            }
            return Some(Action::Conference {
                room: room?,
                bridge_profile: c.bridge_profile.clone(),
                user_profile: c.user_profile.clone(),
            });
        }
        if let Some(p) = &a.playback {
            let before = self.problems.len();
            for (i, f) in p.items.iter().enumerate() {
                if let Err(e) = check_sound(f) {
                    self.problem(&format!("playback[{i}]"), e, Some(f));
                }
            }
            if p.items.is_empty() {
                self.problem("playback", "no sound file given".into(), None);
            }
            return (self.problems.len() == before).then(|| Action::Playback(p.items.clone()));
        }
        if let Some(vars) = &a.set {
            let mut out = Vec::new();
            if vars.is_empty() {
                self.problem("set", "no variable given".into(), None);
            }
            for (k, v) in vars {
                if let Err(e) = check_var_name(k) {
                    self.problem(&format!("set.{k}"), e, Some(k));
                    continue;
                }
                if let Some(t) = self.template(&format!("set.{k}"), &v.0, check_value) {
                    out.push((k.clone(), t));
                }
            }
            return Some(Action::Set(out));
        }
        if let Some(c) = &a.hangup {
            return match parse_cause(&c.0) {
                Some(n) => Some(Action::Hangup(n)),
                None => {
                    self.problem(
                        "hangup",
                        format!("{:?} is not a hangup cause (normal, busy, noanswer, rejected, congestion, unallocated, unavailable, or 1-127)", c.0),
                        Some(&c.0),
                    );
                    None
                }
            };
        }
        if let Some(g) = &a.goto {
            if let Err(e) = check_name(&g.context, "context") {
                self.problem("goto.context", e, Some(&g.context));
            }
            let ext = g
                .extension
                .as_ref()
                .map_or("s", |e| e.0.as_str())
                .to_string();
            let extension = self.template("goto.extension", &ext, check_extension);
            let priority = g
                .priority
                .as_ref()
                .map_or("1", |p| p.0.as_str())
                .to_string();
            if let Err(e) = check_priority(&priority) {
                self.problem("goto.priority", e, Some(&priority));
            }
            return Some(Action::Goto {
                context: g.context.clone(),
                extension: extension?,
                priority,
            });
        }
        None
    }

    fn dial(&mut self, d: &RawDial) -> Option<Action> {
        let mut targets = Vec::new();
        if let Some(ch) = &d.channels {
            for (i, c) in ch.items.iter().enumerate() {
                if let Some(t) = self.template(&format!("dial.channels[{i}]"), c, check_channel) {
                    targets.push(DialTarget::Channel(t));
                }
            }
            if ch.items.is_empty() {
                self.problem("dial.channels", "no channel given".into(), None);
            }
        }
        if let Some(e) = &d.extension {
            if let Some(t) = self.template("dial.extension", &e.0, check_extension) {
                targets.push(DialTarget::Extension(t));
            }
        }
        if d.channels.is_none() && d.extension.is_none() {
            self.problem("dial", "give channels: [...] or extension: N".into(), None);
        }
        let timeout = match &d.timeout {
            None => None,
            Some(t) => match parse_timeout(&t.0) {
                Some(s) => Some(s),
                None => {
                    self.problem(
                        "dial.timeout",
                        format!("{:?} is not a ring timeout (1s to 1h, e.g. 20s)", t.0),
                        Some(&t.0),
                    );
                    None
                }
            },
        };
        let options = d.options.clone().unwrap_or_default();
        if let Err(e) = check_options(&options) {
            self.problem("dial.options", e, Some(&options));
        }
        (!targets.is_empty()).then_some(Action::Dial {
            targets,
            timeout,
            options,
        })
    }
}

/// Compiles a list of YAML actions; problems carry `[i].…` paths.
pub fn compile_actions(
    raw: &[RawAction],
    templates: &mut Templates,
    sample: &TemplateContext<'_>,
) -> (Vec<Action>, Vec<ActionProblem>) {
    let mut c = Compiler {
        templates,
        sample,
        problems: Vec::new(),
    };
    let mut out = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let before = c.problems.len();
        let action = c.action(a);
        for p in &mut c.problems[before..] {
            p.at = if p.at.is_empty() {
                format!("[{i}]")
            } else {
                format!("[{i}].{}", p.at)
            };
        }
        if let Some(a) = action {
            if c.problems.len() == before {
                out.push(a);
            }
        }
    }
    (out, c.problems)
}
