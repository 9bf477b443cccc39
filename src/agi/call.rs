//! The call as FastAGI describes it: numbers (after the `agi.rewrite`
//! steps), the calling extension, the direction, and the data templates
//! see.
//!
//! - **Caller**: `agi_callerid` (`unknown` or empty: none); name from
//!   `agi_calleridname`.
//! - **Dialed**: `agi_extension`, or `agi_dnid` when the extension is not a
//!   number (`s`, `h`, `i`, … in a macro or a `Goto(…,s,1)`).
//! - **Calling extension**: decided from the *channel*
//!   (`agi_channel` + `agi_context`, by the same `classify:` rules as the
//!   call model), never from the caller ID, which an outside caller can
//!   set to anything. `SIP/1001-0000000a` is extension 1001; a trunk
//!   channel (`SIP/pstn-…`, or any channel created in `from-pstn`) has no
//!   extension.
//! - **Direction**: `incoming` from a trunk; from an extension `internal`
//!   when the dialed number looks like an extension, else `outgoing`.
//!
//! Templates (CRM URL, headers, body, `set:` values, dial channels) see
//! the call as a `call_state` event in state `ringing`
//! (`{{call.caller_number}}`, `{{call.dialed_number}}`,
//! `{{call.session_id}}` = `agi_uniqueid`, `{{call.direction}}`, …), every
//! environment variable by its name in `{{call.extra.agi_channel}}`,
//! `{{call.extra.agi_arg_1}}`, and the placeholders (`%CALLER_ID%`,
//! `%DIALED%`, `%EXTENSION%` = the calling extension, `%ID%`, `%PBX%`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::protocol::AgiEnv;
use crate::model::{CallStateEvent, Direction, ModelEvent, State, Timestamp};
use crate::normalize::channel::{Classifier, Party};
use crate::rules::{apply_rewrites, Rewrite};
use crate::template::{Placeholder, TemplateContext, Values};

/// One call on a FastAGI session.
#[derive(Debug, Clone)]
pub struct AgiCall {
    /// The environment as received.
    pub env: AgiEnv,
    /// `agi_network_script` without a query (`route`).
    pub script: String,
    /// `agi_channel`.
    pub channel: String,
    /// `agi_context`.
    pub context: String,
    /// `agi_uniqueid`.
    pub uniqueid: String,
    /// The caller number after rewriting.
    pub caller: Option<String>,
    /// The caller name.
    pub caller_name: Option<String>,
    /// The dialed number after rewriting.
    pub dialed: Option<String>,
    /// The calling extension (from the channel), when the caller is one.
    pub extension: Option<String>,
    /// Direction.
    pub direction: Direction,
    /// The PBX id templates see.
    pub pbx: String,
    /// The call's model event (templates).
    event: ModelEvent,
}

fn present(v: Option<&str>) -> Option<String> {
    v.map(str::trim)
        .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("unknown"))
        .map(str::to_string)
}

fn is_number(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '*' | '#'))
}

impl AgiCall {
    /// The call described by `env`, numbers rewritten by `rewrites`.
    pub(crate) fn new(
        env: AgiEnv,
        classifier: &Classifier,
        rewrites: &[Rewrite],
        pbx: &str,
        now: f64,
    ) -> Self {
        let channel = env.get("agi_channel").unwrap_or("").to_string();
        let context = env.get("agi_context").unwrap_or("").to_string();
        let uniqueid = env.get("agi_uniqueid").unwrap_or("").to_string();
        let mut caller = present(env.get("agi_callerid"));
        let caller_name = present(env.get("agi_calleridname"));
        let mut dialed = present(env.get("agi_extension"))
            .filter(|e| is_number(e))
            .or_else(|| present(env.get("agi_dnid")));
        let extension =
            match classifier.classify(&channel, Some(context.as_str()).filter(|c| !c.is_empty())) {
                Party::Extension(e) => Some(e.to_string()),
                _ => None,
            };
        apply_rewrites(rewrites, &mut caller, &mut dialed);
        let direction = match (&extension, &dialed) {
            (None, _) => Direction::Incoming,
            (Some(_), Some(d)) if classifier.is_extension_number(d) => Direction::Internal,
            (Some(_), _) => Direction::Outgoing,
        };
        let script = env.script().to_string();
        let extra: BTreeMap<String, String> = env
            .vars()
            .iter()
            .filter(|(k, _)| k.starts_with("agi_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let event = ModelEvent::CallState(CallStateEvent {
            session_id: uniqueid.clone(),
            pbx: pbx.to_string(),
            state: State::Ringing,
            direction,
            caller_number: caller.clone(),
            caller_name: caller_name.clone(),
            dialed_number: dialed.clone(),
            queue: None,
            answered_by: None,
            at: Timestamp(now),
            approximate: false,
            extra,
        });
        Self {
            env,
            script,
            channel,
            context,
            uniqueid,
            caller,
            caller_name,
            dialed,
            extension,
            direction,
            pbx: pbx.to_string(),
            event,
        }
    }

    /// The call as a model event (what templates see as `call`).
    pub fn event(&self) -> &ModelEvent {
        &self.event
    }

    /// A template context for this call (`%EXTENSION%` is the calling
    /// extension).
    pub fn template_context<'a>(&'a self, env: &'a Map<String, Value>) -> TemplateContext<'a> {
        let mut ph = Values::of(&self.event);
        ph.set(Placeholder::Extension, self.extension.clone());
        TemplateContext::with_values(&self.event, env, ph)
    }

    /// A call with every usual environment variable (and nine arguments),
    /// to check templates against when the configuration is loaded.
    pub(crate) fn sample(classifier: &Classifier, pbx: &str) -> Self {
        let mut vars: Vec<(String, String)> = [
            ("agi_network", "yes"),
            ("agi_network_script", "route"),
            ("agi_request", "agi://127.0.0.1:4573/route"),
            ("agi_channel", "SIP/1001-0000004b"),
            ("agi_language", "en"),
            ("agi_type", "SIP"),
            ("agi_uniqueid", "1796117751.77"),
            ("agi_version", "20.20.1"),
            ("agi_callerid", "1001"),
            ("agi_calleridname", "Juan Perez"),
            ("agi_callingpres", "0"),
            ("agi_callingani2", "0"),
            ("agi_callington", "0"),
            ("agi_callingtns", "0"),
            ("agi_dnid", "2125550600"),
            ("agi_rdnis", "unknown"),
            ("agi_context", "from-internal"),
            ("agi_extension", "2125550600"),
            ("agi_priority", "3"),
            ("agi_enhanced", "0.0"),
            ("agi_accountcode", ""),
            ("agi_threadid", "140409058330304"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for i in 1..=9 {
            vars.push((format!("agi_arg_{i}"), String::new()));
        }
        Self::new(
            AgiEnv::from_pairs(vars),
            classifier,
            &[],
            pbx,
            1_796_117_751.0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::channel::ClassifierConfig;

    fn env(pairs: &[(&str, &str)]) -> AgiEnv {
        AgiEnv::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn extension_comes_from_the_channel_not_the_caller_id() {
        let c = Classifier::new(&ClassifierConfig::default()).unwrap();
        // An outside caller claiming to be 1001.
        let call = AgiCall::new(
            env(&[
                ("agi_channel", "SIP/pstn-0000004b"),
                ("agi_context", "from-pstn"),
                ("agi_callerid", "1001"),
                ("agi_extension", "2125550600"),
            ]),
            &c,
            &[],
            "main",
            0.0,
        );
        assert_eq!(call.extension, None);
        assert_eq!(call.direction, Direction::Incoming);
        assert_eq!(call.caller.as_deref(), Some("1001"));
        let call = AgiCall::new(
            env(&[
                ("agi_channel", "PJSIP/1002-00000001"),
                ("agi_context", "from-internal"),
                ("agi_callerid", "unknown"),
                ("agi_extension", "s"),
                ("agi_dnid", "1003"),
            ]),
            &c,
            &[],
            "main",
            0.0,
        );
        assert_eq!(call.extension.as_deref(), Some("1002"));
        assert_eq!(call.caller, None);
        assert_eq!(call.dialed.as_deref(), Some("1003"));
        assert_eq!(call.direction, Direction::Internal);
        let m = Map::new();
        let e = TemplateContext::with_values(call.event(), &m, Values::of(call.event()));
        assert_eq!(e.placeholders().get(Placeholder::Extension), "");
        let ctx = call.template_context(&m);
        assert_eq!(ctx.placeholders().get(Placeholder::Extension), "1002");
    }
}
