//! Bounded template values: no value from an event is longer than
//! `templates.max_value_length` when a template sees it.
//!
//! A caller name of 100 KB (a hostile or broken PBX) would otherwise make
//! a URL no HTTP client can send, or a body no CRM wants. Every text field
//! of the event that templates read (numbers, names, queue, extensions,
//! recording URL, `extra` values) is cut to its first `max` bytes, at a
//! character boundary, without a marker; each cut counts in
//! `callhook_template_values_truncated_total`. The call's identity
//! (`session_id`, `leg_id`, `pbx`) is never cut: it keys ordering and
//! event ids. The model event itself is not changed (`replay` prints it
//! whole).

use std::borrow::Cow;

use serde::Deserialize;

use crate::model::ModelEvent;

/// Default longest value, in bytes (the push endpoint's own limit).
pub const DEFAULT_MAX_VALUE_LENGTH: usize = 4096;

/// `templates:` in the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplates {
    /// Longest value a template sees, in bytes (default 4096).
    #[serde(default)]
    pub max_value_length: Option<usize>,
}

fn cut(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

fn too_long(s: &str, max: usize) -> bool {
    s.len() > max
}

/// The event with every template-visible text value cut to `max` bytes
/// (borrowed when nothing is longer).
pub fn bound_values(ev: &ModelEvent, max: usize) -> Cow<'_, ModelEvent> {
    let opt = |o: &Option<String>| o.as_deref().is_some_and(|s| too_long(s, max));
    let extra =
        |m: &std::collections::BTreeMap<String, String>| m.values().any(|v| too_long(v, max));
    let long = match ev {
        ModelEvent::Leg(l) => {
            too_long(&l.extension, max)
                || opt(&l.caller_number)
                || opt(&l.caller_name)
                || opt(&l.dialed_number)
                || opt(&l.queue)
                || extra(&l.extra)
        }
        ModelEvent::CallState(c) => {
            opt(&c.caller_number)
                || opt(&c.caller_name)
                || opt(&c.dialed_number)
                || opt(&c.queue)
                || opt(&c.answered_by)
                || extra(&c.extra)
        }
        ModelEvent::Call(r) => {
            opt(&r.caller_number)
                || opt(&r.caller_name)
                || opt(&r.dialed_number)
                || opt(&r.queue)
                || opt(&r.answered_by)
                || opt(&r.final_answered_by)
                || opt(&r.recording_url)
                || r.extensions_rung.iter().any(|e| too_long(e, max))
                || extra(&r.extra)
        }
    };
    if !long {
        return Cow::Borrowed(ev);
    }
    let mut ev = ev.clone();
    let mut n = 0u64;
    let mut c = |s: &mut String| n += cut(s, max) as u64;
    {
        let mut o = |v: &mut Option<String>| {
            if let Some(s) = v.as_mut() {
                c(s)
            }
        };
        match &mut ev {
            ModelEvent::Leg(l) => {
                o(&mut l.caller_number);
                o(&mut l.caller_name);
                o(&mut l.dialed_number);
                o(&mut l.queue);
                l.extra.values_mut().for_each(&mut c);
                c(&mut l.extension);
            }
            ModelEvent::CallState(s) => {
                o(&mut s.caller_number);
                o(&mut s.caller_name);
                o(&mut s.dialed_number);
                o(&mut s.queue);
                o(&mut s.answered_by);
                s.extra.values_mut().for_each(&mut c);
            }
            ModelEvent::Call(r) => {
                o(&mut r.caller_number);
                o(&mut r.caller_name);
                o(&mut r.dialed_number);
                o(&mut r.queue);
                o(&mut r.answered_by);
                o(&mut r.final_answered_by);
                o(&mut r.recording_url);
                r.extensions_rung.iter_mut().for_each(&mut c);
                r.extra.values_mut().for_each(&mut c);
            }
        }
    }
    crate::metrics::metrics()
        .template_values_truncated
        .inc_by(n);
    Cow::Owned(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{sample_event, EventKind};

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let mut ev = sample_event(EventKind::Leg);
        assert!(matches!(bound_values(&ev, 16), Cow::Borrowed(_)));
        if let ModelEvent::Leg(l) = &mut ev {
            l.caller_name = Some("é".repeat(50_000));
            l.extra.insert("crm".into(), "x".repeat(100));
        }
        let b = bound_values(&ev, 7);
        let ModelEvent::Leg(l) = b.as_ref() else {
            unreachable!()
        };
        assert_eq!(l.caller_name.as_deref(), Some("ééé"));
        assert_eq!(l.extra["crm"], "xxxxxxx");
        assert_eq!(l.caller_number.as_deref(), Some("5559876"));
        assert_eq!(l.session_id, "1795374648.6", "identity is never cut");
        assert!(l.leg_id.len() > 7);
    }
}
