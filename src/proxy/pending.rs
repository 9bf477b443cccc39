//! A client's forwarded actions still waiting for answers, and how their
//! answers are written back under the client's own ActionID.
//!
//! Each forwarded action gets a number `k` (its ActionID on the PBX
//! connection is `{tag}{client}.{k}/…`, see [`super::fanout`]). Its answer
//! — the response, every list item and the closing `…Complete` event —
//! is written in one go with the client's ActionID restored (or none, when
//! it sent none). An asynchronous `Originate` stays open until its
//! `OriginateResponse`; events of an action that arrive before its
//! response are held (at most [`MAX_HELD`]) and written right after it.
//! The numbers of answered actions whose `OriginateResponse` never came
//! are forgotten beyond [`MAX_IDS`], oldest first.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::wire::{self, ActionId};
use crate::ami::client::{ActionResponse, AmiError};
use crate::ami::AmiMessage;

/// Action numbers remembered for late `OriginateResponse`s.
pub const MAX_IDS: usize = 1024;
/// Early events held per action until its response is written.
pub const MAX_HELD: usize = 16;

/// One forwarded action this client may still get answers for.
struct Pending {
    /// The client's ActionID.
    orig: Option<String>,
    /// Its response has been written.
    answered: bool,
    /// An asynchronous Originate: its `OriginateResponse` is still to come.
    awaits_event: bool,
    /// Events that arrived before the response.
    held: Vec<Arc<AmiMessage>>,
}

/// See the [module documentation](self).
#[derive(Default)]
pub struct Inflight {
    map: BTreeMap<u64, Pending>,
    next: u64,
}

impl Inflight {
    /// Registers a forwarded action (its ActionID as the client sent it);
    /// its number.
    pub fn open(&mut self, orig: Option<String>, awaits_event: bool) -> u64 {
        self.next += 1;
        self.map.insert(
            self.next,
            Pending {
                orig,
                answered: false,
                awaits_event,
                held: Vec::new(),
            },
        );
        self.next
    }

    /// Encodes the answer to action `k` into `buf`; its outcome label
    /// (`None`: not an action of ours any more).
    pub fn answer(
        &mut self,
        k: u64,
        r: Result<ActionResponse, AmiError>,
        buf: &mut Vec<u8>,
    ) -> Option<&'static str> {
        let p = self.map.get_mut(&k)?;
        let outcome = match &r {
            Ok(_) => "success",
            Err(AmiError::Timeout) => "timeout",
            Err(AmiError::Disconnected) => "disconnected",
            Err(_) => "error",
        };
        let id = p.orig.as_deref();
        match r {
            Ok(resp) => {
                wire::encode(&resp.response, ActionId::Restore(id), buf);
                for item in &resp.items {
                    wire::encode(item, ActionId::Restore(id), buf);
                }
                if let Some(c) = &resp.complete {
                    wire::encode(c, ActionId::Restore(id), buf);
                }
                // A queued async Originate's outcome is still to come.
                let queued = resp
                    .response
                    .get("Response")
                    .is_some_and(|v| v.eq_ignore_ascii_case("Success"));
                p.awaits_event &= queued;
            }
            Err(e) => {
                p.awaits_event = false;
                buf.extend(wire::error(id, &error_message(&e)));
            }
        }
        p.answered = true;
        let mut done = !p.awaits_event;
        for ev in std::mem::take(&mut p.held) {
            wire::encode(&ev, ActionId::Restore(id), buf);
            done |= is_originate_response(&ev);
        }
        if done {
            self.map.remove(&k);
        }
        // Forget the oldest answered actions whose events never came.
        while self.map.len() > MAX_IDS {
            let Some(old) = self.map.iter().find(|(_, p)| p.answered).map(|(k, _)| *k) else {
                break;
            };
            self.map.remove(&old);
        }
        Some(outcome)
    }

    /// An event answering action `k` (an `OriginateResponse`): encoded
    /// into `buf` (`Some(1)`), held until the response (`Some(0)`), or
    /// `None` when the action is forgotten.
    pub fn event(&mut self, k: u64, msg: Arc<AmiMessage>, buf: &mut Vec<u8>) -> Option<u64> {
        let p = self.map.get_mut(&k)?;
        if !p.answered {
            if p.held.len() < MAX_HELD {
                p.held.push(msg);
            }
            return Some(0);
        }
        wire::encode(&msg, ActionId::Restore(p.orig.as_deref()), buf);
        if is_originate_response(&msg) {
            self.map.remove(&k);
        }
        Some(1)
    }
}

fn is_originate_response(m: &AmiMessage) -> bool {
    m.event()
        .is_some_and(|e| e.eq_ignore_ascii_case("OriginateResponse"))
}

/// The `Message:` of an action that produced no response.
fn error_message(e: &AmiError) -> String {
    match e {
        AmiError::Rejected(m) => m.clone(),
        AmiError::Timeout => "No answer from the PBX in time (callhook AMI proxy)".into(),
        AmiError::Disconnected => {
            "The PBX connection was lost while the action was pending; its outcome is unknown (callhook AMI proxy)".into()
        }
        AmiError::Shutdown => "callhook is shutting down".into(),
        AmiError::Encode(e) => format!("Invalid action: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(pairs: &[(&str, &str)]) -> AmiMessage {
        AmiMessage::from_pairs(pairs.iter().copied())
    }

    fn text(buf: &[u8]) -> String {
        String::from_utf8_lossy(buf).into_owned()
    }

    #[test]
    fn errors_read_like_asterisk() {
        assert_eq!(
            error_message(&AmiError::Rejected("No such channel".into())),
            "No such channel"
        );
        assert!(error_message(&AmiError::Disconnected).contains("outcome is unknown"));
    }

    #[test]
    fn a_list_comes_back_whole_under_the_clients_id() {
        let mut f = Inflight::default();
        let k = f.open(Some("mine".into()), false);
        let resp = ActionResponse {
            response: msg(&[
                ("Response", "Success"),
                ("ActionID", "cp1.1.1/main-1-5"),
                ("EventList", "start"),
            ]),
            items: vec![msg(&[
                ("Event", "CoreShowChannel"),
                ("ActionID", "cp1.1.1/main-1-5"),
            ])],
            complete: Some(msg(&[
                ("Event", "CoreShowChannelsComplete"),
                ("ActionID", "cp1.1.1/main-1-5"),
                ("ListItems", "1"),
            ])),
        };
        let mut buf = Vec::new();
        assert_eq!(f.answer(k, Ok(resp), &mut buf), Some("success"));
        let t = text(&buf);
        assert_eq!(t.matches("ActionID: mine\r\n").count(), 3, "{t}");
        assert!(!t.contains("cp1."), "{t}");
        assert!(f.map.is_empty());
        // A second answer for the same action is not ours any more.
        assert_eq!(f.answer(k, Err(AmiError::Timeout), &mut Vec::new()), None);
    }

    #[test]
    fn an_async_originate_waits_for_its_event_early_or_late() {
        let mut f = Inflight::default();
        let ok = || ActionResponse {
            response: msg(&[
                ("Response", "Success"),
                ("Message", "Originate successfully queued"),
            ]),
            items: Vec::new(),
            complete: None,
        };
        let ev = || {
            Arc::new(msg(&[
                ("Event", "OriginateResponse"),
                ("ActionID", "x"),
                ("Response", "Success"),
            ]))
        };
        // Late: response, then event.
        let k = f.open(Some("o1".into()), true);
        let mut buf = Vec::new();
        f.answer(k, Ok(ok()), &mut buf);
        assert_eq!(f.event(k, ev(), &mut buf), Some(1));
        assert!(f.map.is_empty());
        assert_eq!(text(&buf).matches("ActionID: o1\r\n").count(), 2);
        // Early: the event is held until the response.
        let k = f.open(None, true);
        let mut buf = Vec::new();
        assert_eq!(f.event(k, ev(), &mut buf), Some(0));
        assert!(buf.is_empty());
        f.answer(k, Ok(ok()), &mut buf);
        let t = text(&buf);
        assert!(t.find("Response: Success").unwrap() < t.find("Event: OriginateResponse").unwrap());
        assert!(
            !t.contains("ActionID"),
            "no ActionID sent, none returned: {t}"
        );
        assert!(f.map.is_empty());
    }

    #[test]
    fn forgotten_beyond_the_cap() {
        let mut f = Inflight::default();
        let ok = || ActionResponse {
            response: msg(&[("Response", "Success")]),
            items: Vec::new(),
            complete: None,
        };
        for _ in 0..MAX_IDS + 10 {
            let k = f.open(None, true);
            f.answer(k, Ok(ok()), &mut Vec::new());
        }
        assert_eq!(f.map.len(), MAX_IDS);
        assert_eq!(
            f.event(
                1,
                Arc::new(msg(&[("Event", "OriginateResponse")])),
                &mut Vec::new()
            ),
            None
        );
    }
}
