//! The data a template sees for one event, and the sample events the rules
//! compiler renders every template against.

use serde_json::{Map, Value};

use super::placeholder::Values;
use crate::model::{
    CallRecord, CallStateEvent, Direction, Disposition, EndReason, LegEvent, ModelEvent, Role,
    State, Timestamp,
};

/// The three kinds of model event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// [`ModelEvent::Leg`].
    Leg,
    /// [`ModelEvent::CallState`] (call `ringing` / `answered`).
    CallState,
    /// [`ModelEvent::Call`] (the finished call record, call `hungup`).
    Call,
}

impl EventKind {
    /// The kind of an event.
    pub fn of(ev: &ModelEvent) -> Self {
        match ev {
            ModelEvent::Leg(_) => EventKind::Leg,
            ModelEvent::CallState(_) => EventKind::CallState,
            ModelEvent::Call(_) => EventKind::Call,
        }
    }

    /// Name for messages (`leg events`).
    pub fn label(self) -> &'static str {
        match self {
            EventKind::Leg => "leg events",
            EventKind::CallState => "call_state events (call ringing/answered)",
            EventKind::Call => "call records (call hungup)",
        }
    }
}

/// Leg fields that the model omits before `hungup`; templates always see
/// them (null until the leg hangs up), so a template is valid or not
/// regardless of the leg's state.
const LEG_OPTIONAL: [&str; 3] = ["duration", "billsec", "disposition"];

/// What templates see for one event (see the module docs for the shape).
///
/// Placeholder values are computed up front (URLs need them); the
/// handlebars data is built on first use by [`TemplateContext::prepare`].
#[derive(Debug)]
pub struct TemplateContext<'a> {
    ev: &'a ModelEvent,
    env: &'a Map<String, Value>,
    ph: Values,
    hb: Option<handlebars::Context>,
}

impl<'a> TemplateContext<'a> {
    /// A context for `ev` (already rewritten) with the rule set's `env` map.
    pub fn new(ev: &'a ModelEvent, env: &'a Map<String, Value>) -> Self {
        Self {
            ev,
            env,
            ph: Values::of(ev),
            hb: None,
        }
    }

    /// A context for a rewritten event `ev`; `%EXTENSION%` is taken from
    /// `original` (see [`Values::of_rewritten`]).
    pub fn with_original(
        ev: &'a ModelEvent,
        original: &ModelEvent,
        env: &'a Map<String, Value>,
    ) -> Self {
        Self {
            ev,
            env,
            ph: Values::of_rewritten(ev, original),
            hb: None,
        }
    }

    /// A context for `ev` with placeholder values computed elsewhere.
    pub fn with_values(ev: &'a ModelEvent, env: &'a Map<String, Value>, ph: Values) -> Self {
        Self {
            ev,
            env,
            ph,
            hb: None,
        }
    }

    /// Placeholder values.
    pub fn placeholders(&self) -> &Values {
        &self.ph
    }

    /// Builds the handlebars data if needed and sets `rule` to `rule`.
    pub fn prepare(&mut self, rule: &str) {
        let hb = self.hb.get_or_insert_with(|| {
            handlebars::Context::from(build_data(self.ev, self.env, &self.ph))
        });
        if let Value::Object(m) = hb.data_mut() {
            m.insert("rule".into(), Value::String(rule.to_string()));
        }
    }

    /// The handlebars data, once [`prepare`](Self::prepare)d.
    pub fn handlebars(&self) -> Option<&handlebars::Context> {
        self.hb.as_ref()
    }
}

fn build_data(ev: &ModelEvent, env: &Map<String, Value>, ph: &Values) -> Value {
    let mut event = serde_json::to_value(ev).unwrap_or(Value::Null);
    if let (ModelEvent::Leg(_), Value::Object(m)) = (ev, &mut event) {
        for k in LEG_OPTIONAL {
            m.entry(k).or_insert(Value::Null);
        }
    }
    let leg = match ev {
        ModelEvent::Leg(_) => event.clone(),
        _ => Value::Null,
    };
    let mut m = Map::new();
    m.insert("call".into(), event.clone());
    m.insert("event".into(), event);
    m.insert("leg".into(), leg);
    m.insert("rule".into(), Value::String(String::new()));
    m.insert("env".into(), Value::Object(env.clone()));
    m.insert("ph".into(), ph.to_json());
    Value::Object(m)
}

/// A sample event of a kind with every optional field present: rendering
/// a template against it in strict mode fails only on paths that do not
/// exist for that kind.
pub fn sample_event(kind: EventKind) -> ModelEvent {
    let session = "1795374648.6".to_string();
    match kind {
        EventKind::Leg => ModelEvent::Leg(LegEvent {
            session_id: session.clone(),
            pbx: "main".into(),
            leg_id: format!("{session}/1002"),
            state: State::Hungup,
            direction: Direction::Incoming,
            role: Role::Callee,
            extension: "1002".into(),
            caller_number: Some("5559876543".into()),
            caller_name: Some("Maria Lopez".into()),
            dialed_number: Some("2125550200".into()),
            queue: Some("ventas".into()),
            at: Timestamp(1795374654.132088),
            duration: Some(5.501),
            billsec: Some(2.495),
            disposition: Some(Disposition::Answered),
            approximate: false,
            extra: Default::default(),
        }),
        EventKind::CallState => ModelEvent::CallState(CallStateEvent {
            session_id: session,
            pbx: "main".into(),
            state: State::Answered,
            direction: Direction::Incoming,
            caller_number: Some("5559876543".into()),
            caller_name: Some("Maria Lopez".into()),
            dialed_number: Some("2125550200".into()),
            queue: Some("ventas".into()),
            answered_by: Some("1002".into()),
            at: Timestamp(1795374651.63685),
            approximate: false,
            extra: Default::default(),
        }),
        EventKind::Call => ModelEvent::Call(CallRecord {
            session_id: session,
            pbx: "main".into(),
            direction: Direction::Incoming,
            caller_number: Some("5559876543".into()),
            caller_name: Some("Maria Lopez".into()),
            dialed_number: Some("2125550200".into()),
            queue: Some("ventas".into()),
            extensions_rung: vec!["1002".into(), "1001".into()],
            answered_by: Some("1002".into()),
            final_answered_by: Some("1002".into()),
            started_at: Timestamp(1795374648.127205),
            answered_at: Some(Timestamp(1795374651.63685)),
            ended_at: Timestamp(1795374654.132094),
            duration: 6.005,
            billsec: 2.495,
            disposition: Disposition::Answered,
            end_reason: EndReason::Hangup,
            recording_url: Some("https://pbx.example.com/rec/1795374648.6.wav".into()),
            approximate: false,
            extra: Default::default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leg_context_has_every_leg_field() {
        let mut ev = sample_event(EventKind::Leg);
        if let ModelEvent::Leg(l) = &mut ev {
            l.state = State::Ringing;
            l.duration = None;
            l.billsec = None;
            l.disposition = None;
        }
        let env = Map::new();
        let mut c = TemplateContext::new(&ev, &env);
        c.prepare("r");
        let d = c.handlebars().unwrap().data();
        assert_eq!(d["leg"]["duration"], Value::Null);
        assert!(d["leg"].as_object().unwrap().contains_key("disposition"));
        assert_eq!(d["call"], d["event"]);
        assert_eq!(d["event"]["type"], "leg");
        assert_eq!(d["rule"], "r");
        assert_eq!(d["ph"]["CALLER_ID"], "5559876543");
        assert_eq!(d["ph"]["DURATION"], Value::Null);
    }

    #[test]
    fn call_context_has_null_leg() {
        let ev = sample_event(EventKind::Call);
        let env = Map::new();
        let mut c = TemplateContext::new(&ev, &env);
        c.prepare("x");
        c.prepare("y");
        let d = c.handlebars().unwrap().data();
        assert_eq!(d["leg"], Value::Null);
        assert_eq!(d["event"]["type"], "call");
        assert_eq!(d["rule"], "y");
        assert_eq!(d["ph"]["DURACION"], 6);
    }
}
