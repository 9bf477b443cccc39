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
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::protocol::{arg, quote};
use super::session::{Session, SessionError};
use crate::rules::{Scalar, Words};
use crate::template::{EventKind, TemplateContext, TemplateError, Templates, TextTemplate};

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

// ---- value checks (YAML literals, rendered templates and CRM answers alike)

fn chars_ok(s: &str, max: usize, extra: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// `TECH/resource`: no separators, quotes, spaces or `$`.
pub fn check_channel(s: &str) -> Result<(), String> {
    let ok = s.split_once('/').is_some_and(|(tech, res)| {
        chars_ok(tech, 16, "")
            && tech.starts_with(|c: char| c.is_ascii_alphabetic())
            && chars_ok(res, 200, "_+*#.@:/=~!-")
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a channel (TECH/resource, e.g. PJSIP/1001)"
        ))
    }
}

/// An extension: digits, letters, `+ * # _ -`.
pub fn check_extension(s: &str) -> Result<(), String> {
    if chars_ok(s, 64, "+*#_-") {
        Ok(())
    } else {
        Err(format!("{s:?} is not an extension"))
    }
}

fn check_mailbox(s: &str) -> Result<(), String> {
    let ok = s.split('&').all(|m| {
        let (b, c) = m.split_once('@').unwrap_or((m, "default"));
        chars_ok(b, 64, "_-") && chars_ok(c, 80, "_-")
    });
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a mailbox (1003 or 1003@context)"))
    }
}

fn check_name(s: &str, what: &str) -> Result<(), String> {
    if chars_ok(s, 80, "_+.-") {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid {what}"))
    }
}

fn check_priority(s: &str) -> Result<(), String> {
    if chars_ok(s, 64, "_-") {
        Ok(())
    } else {
        Err(format!("{s:?} is not a priority (a number or a label)"))
    }
}

fn check_sound(s: &str) -> Result<(), String> {
    if chars_ok(s, 128, "_./-") && !s.starts_with('/') && !s.split('/').any(|p| p == "..") {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a sound file name (relative, e.g. custom/welcome)"
        ))
    }
}

fn check_options(s: &str) -> Result<(), String> {
    if s.is_empty() || chars_ok(s, 64, "()^#:_-") {
        Ok(())
    } else {
        Err(format!("{s:?} are not valid application options"))
    }
}

/// `NAME` or `FUNC(args)`.
pub fn check_var_name(s: &str) -> Result<(), String> {
    let (name, args) = match s.split_once('(') {
        Some((n, rest)) => match rest.strip_suffix(')') {
            Some(a) => (n, Some(a)),
            None => return Err(format!("{s:?} is not a variable name")),
        },
        None => (s, None),
    };
    let name_ok = chars_ok(name, 64, "_") && !name.starts_with(|c: char| c.is_ascii_digit());
    let args_ok = args.is_none_or(|a| a.is_empty() || chars_ok(a, 64, "_,-"));
    if name_ok && args_ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a variable name (NAME or FUNC(args))"))
    }
}

fn check_value(s: &str) -> Result<(), String> {
    if s.chars().count() > 1024 {
        return Err("value longer than 1024 characters".into());
    }
    quote(s).map(|_| ()).map_err(|e| e.0)
}

/// A hangup cause: a name or 1–127.
pub fn parse_cause(s: &str) -> Option<u8> {
    let n = match s
        .trim()
        .to_ascii_lowercase()
        .replace(['_', '-', ' '], "")
        .as_str()
    {
        "normal" | "normalclearing" => 16,
        "busy" | "userbusy" => 17,
        "noanswer" => 19,
        "unavailable" | "subscriberabsent" => 20,
        "rejected" | "callrejected" => 21,
        "unallocated" => 1,
        "congestion" | "nocircuit" => 34,
        other => other.parse::<u8>().ok()?,
    };
    (1..=127).contains(&n).then_some(n)
}

/// A ring timeout: `20s`, `1m` or seconds (1 s – 1 h).
fn parse_timeout(s: &str) -> Option<u64> {
    let d = crate::values::parse_duration(s)?;
    let secs = d.as_secs_f64().round() as u64;
    (1..=3600).contains(&secs).then_some(secs)
}

// ---- compiling YAML actions

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

// ---- parsing a CRM answer

/// Most actions one CRM answer may give.
pub const MAX_CRM_ACTIONS: usize = 16;

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn field(o: &serde_json::Map<String, Value>, k: &str) -> Result<Option<String>, String> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => text(v)
            .map(Some)
            .ok_or_else(|| format!("`{k}` must be a string or a number")),
    }
}

fn required(o: &serde_json::Map<String, Value>, k: &str, action: &str) -> Result<String, String> {
    field(o, k)?.ok_or_else(|| format!("`{action}` needs `{k}`"))
}

fn strings(v: &Value, k: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| text(x).ok_or_else(|| format!("`{k}` must hold strings")))
            .collect(),
        other => text(other)
            .map(|s| vec![s])
            .ok_or_else(|| format!("`{k}` must be a string or a list of strings")),
    }
}

fn checked(s: String, check: fn(&str) -> Result<(), String>) -> Result<TextTemplate, String> {
    check(&s)?;
    Ok(TextTemplate::Const(s))
}

fn json_action(v: &Value) -> Result<Action, String> {
    let o = v.as_object().ok_or("an action must be a JSON object")?;
    let name = field(o, "action")?.ok_or("missing `action`")?;
    let kind = ActionKind::parse(&name).ok_or_else(|| format!("unknown action {name:?}"))?;
    Ok(match kind {
        ActionKind::Dial => {
            let mut targets = Vec::new();
            for k in ["channel", "channels"] {
                if let Some(v) = o.get(k).filter(|v| !v.is_null()) {
                    for c in strings(v, k)? {
                        targets.push(DialTarget::Channel(checked(c, check_channel)?));
                    }
                }
            }
            if let Some(e) = field(o, "extension")? {
                targets.push(DialTarget::Extension(checked(e, check_extension)?));
            }
            if targets.is_empty() {
                return Err("`dial` needs `extension`, `channel` or `channels`".into());
            }
            let timeout = match field(o, "timeout")? {
                None => None,
                Some(t) => {
                    Some(parse_timeout(&t).ok_or_else(|| format!("bad dial timeout {t:?}"))?)
                }
            };
            let options = field(o, "options")?.unwrap_or_default();
            check_options(&options)?;
            Action::Dial {
                targets,
                timeout,
                options,
            }
        }
        ActionKind::Voicemail => {
            let options = field(o, "options")?.unwrap_or_default();
            check_options(&options)?;
            Action::Voicemail {
                mailbox: checked(required(o, "mailbox", "voicemail")?, check_mailbox)?,
                options,
            }
        }
        ActionKind::Conference => {
            let mut profiles = [None, None];
            for (i, k) in ["bridge_profile", "user_profile"].iter().enumerate() {
                if let Some(p) = field(o, k)? {
                    check_name(&p, "profile")?;
                    profiles[i] = Some(p);
                }
            }
            let [bridge_profile, user_profile] = profiles;
            Action::Conference {
                room: checked(required(o, "room", "conference")?, |s| {
                    check_name(s, "room")
                })?,
                bridge_profile,
                user_profile,
            }
        }
        ActionKind::Playback => {
            let files = match (o.get("file"), o.get("files")) {
                (Some(f), _) | (None, Some(f)) => strings(f, "files")?,
                (None, None) => return Err("`playback` needs `file` or `files`".into()),
            };
            if files.is_empty() {
                return Err("`playback` needs a file".into());
            }
            for f in &files {
                check_sound(f)?;
            }
            Action::Playback(files)
        }
        ActionKind::Set => {
            let vars = o
                .get("variables")
                .and_then(Value::as_object)
                .ok_or("`set` needs `variables`: an object")?;
            let mut out = Vec::new();
            for (k, v) in vars {
                check_var_name(k)?;
                let v =
                    text(v).ok_or_else(|| format!("variable {k} must be a string or a number"))?;
                out.push((k.clone(), checked(v, check_value)?));
            }
            Action::Set(out)
        }
        ActionKind::Hangup => {
            let cause = match field(o, "cause")? {
                None => 16,
                Some(c) => parse_cause(&c).ok_or_else(|| format!("bad hangup cause {c:?}"))?,
            };
            Action::Hangup(cause)
        }
        ActionKind::Goto => {
            let context = required(o, "context", "goto")?;
            check_name(&context, "context")?;
            let priority = field(o, "priority")?.unwrap_or_else(|| "1".into());
            check_priority(&priority)?;
            Action::Goto {
                context,
                extension: checked(
                    field(o, "extension")?.unwrap_or_else(|| "s".into()),
                    check_extension,
                )?,
                priority,
            }
        }
    })
}

/// Parses a CRM answer into actions, refusing kinds not in `allow`.
pub fn from_json(v: &Value, allow: &[ActionKind]) -> Result<Vec<Action>, String> {
    let list: Vec<&Value> = match v.get("actions") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(_) => return Err("`actions` must be a list".into()),
        None if v.get("action").is_some() => vec![v],
        None => return Err("the answer has neither `action` nor `actions`".into()),
    };
    if list.is_empty() {
        return Err("`actions` is empty".into());
    }
    if list.len() > MAX_CRM_ACTIONS {
        return Err(format!("more than {MAX_CRM_ACTIONS} actions"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.into_iter().enumerate() {
        let action = json_action(a).map_err(|e| format!("action {}: {e}", i + 1))?;
        if !allow.contains(&action.kind()) {
            return Err(format!(
                "action {}: `{}` is not allowed for this route (crm.allow)",
                i + 1,
                action.kind().name()
            ));
        }
        out.push(action);
    }
    Ok(out)
}

// ---- running actions

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn checks_refuse_injection() {
        for bad in [
            "SIP/1001,60,tT",
            "SIP/1001&SIP/evil",
            "SIP/1001\"",
            "SIP/10 01",
            "SIP/${EXTEN}",
            "SIP/1001\n",
            "1001",
            "/1001",
            "SIP/",
        ] {
            assert!(check_channel(bad).is_err(), "{bad:?}");
        }
        for good in [
            "SIP/1001",
            "PJSIP/1001@example.com",
            "IAX2/peer/5551234",
            "SIP/pstn/+15551234",
            "Local/1001@from-internal",
        ] {
            assert!(check_channel(good).is_ok(), "{good:?}");
        }
        assert!(check_var_name("CDR(userfield)").is_ok());
        assert!(check_var_name("ROUTE_TARGET").is_ok());
        for bad in ["1X", "A B", "X=1", "FUNC(a b)", "FUNC(", ""] {
            assert!(check_var_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_sound("custom/welcome").is_ok());
        assert!(check_sound("../etc/passwd").is_err());
        assert!(check_sound("/etc/passwd").is_err());
        assert!(check_value("a\nHANGUP").is_err());
        assert!(check_value("two words \"quoted\"").is_ok());
        assert_eq!(parse_cause("busy"), Some(17));
        assert_eq!(parse_cause("CALL_REJECTED"), Some(21));
        assert_eq!(parse_cause("128"), None);
        assert_eq!(parse_cause("0"), None);
    }

    #[test]
    fn crm_answers() {
        let all = ActionKind::ALL;
        let a = from_json(&json!({"action": "dial", "extension": "1003"}), &all).unwrap();
        assert_eq!(
            a,
            vec![Action::Dial {
                targets: vec![DialTarget::Extension(TextTemplate::Const("1003".into()))],
                timeout: None,
                options: String::new()
            }]
        );
        let a = from_json(
            &json!({"actions": [
                {"action": "set", "variables": {"VIP": 1, "ACCOUNT": "ACME Corp"}},
                {"action": "dial", "channels": ["SIP/1003", "SIP/1004"], "timeout": 20, "options": "tT"},
                {"action": "voicemail", "mailbox": "1003@default"},
            ]}),
            &all,
        )
        .unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[1].kind(), ActionKind::Dial);
        for (bad, why) in [
            (
                json!({"action": "dial", "extension": "1003,60,tTL(1)"}),
                "not an extension",
            ),
            (
                json!({"action": "dial", "channel": "SIP/1&SIP/2"}),
                "not a channel",
            ),
            (json!({"action": "exec", "app": "System"}), "unknown action"),
            (
                json!({"action": "set", "variables": {"A": "x\ny"}}),
                "control character",
            ),
            (
                json!({"action": "goto", "context": "a b"}),
                "not a valid context",
            ),
            (json!({"foo": 1}), "neither"),
            (json!({"actions": []}), "empty"),
            (json!([1, 2]), "neither"),
            (json!({"action": "dial"}), "needs"),
        ] {
            let e = from_json(&bad, &all).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = from_json(
            &json!({"action": "goto", "context": "intl"}),
            &[ActionKind::Dial],
        )
        .unwrap_err();
        assert!(e.contains("not allowed"), "{e}");
        let many: Vec<Value> = (0..17).map(|_| json!({"action": "hangup"})).collect();
        assert!(from_json(&json!({ "actions": many }), &all).is_err());
    }
}
