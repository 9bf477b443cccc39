//! How the simulator writes AMI: messages as `Key: Value` lines with the
//! ActionID kept, replaced or added, and the fixed answers (responses,
//! `Pong`, `Goodbye`, empty lists).

use super::message::AmiMessage;

#[derive(Clone, Copy)]
pub(super) enum IdRewrite<'a> {
    Keep,
    /// Replace every ActionID value (or drop the field with `None`).
    Set(Option<&'a str>),
}

/// Encodes a message as `Key: Value` lines, CRLF, blank line.
pub(super) fn encode_message(m: &AmiMessage, id: IdRewrite<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.approx_size() + 8);
    let mut line = |k: &str, v: &str| {
        if !k.is_empty() {
            out.extend_from_slice(clean(k).as_bytes());
            out.extend_from_slice(b": ");
        }
        out.extend_from_slice(clean(v).as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    for (k, v) in m.fields() {
        if k.eq_ignore_ascii_case("ActionID") {
            match id {
                IdRewrite::Keep => line(k, v),
                IdRewrite::Set(Some(new)) => line(k, new),
                IdRewrite::Set(None) => {}
            }
        } else {
            line(k, v);
        }
    }
    if let Some(body) = m.body() {
        out.extend_from_slice(body.replace('\r', "").as_bytes());
        out.extend_from_slice(b"\n--END COMMAND--\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\r', '\n']) {
        std::borrow::Cow::Owned(s.replace(['\r', '\n'], " "))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

pub(super) fn response(pairs: &[(&str, &str)], id: Option<&str>) -> Vec<u8> {
    let mut m = AmiMessage::new();
    let mut pairs = pairs.iter();
    if let Some((k, v)) = pairs.next() {
        m.push(*k, *v);
    }
    if let Some(id) = id {
        m.push("ActionID", id);
    }
    for (k, v) in pairs {
        m.push(*k, *v);
    }
    encode_message(&m, IdRewrite::Keep)
}

pub(super) fn pong(id: Option<&str>) -> Vec<u8> {
    let ts = format!("{:.6}", crate::source::now_epoch());
    response(
        &[
            ("Response", "Success"),
            ("Ping", "Pong"),
            ("Timestamp", &ts),
        ],
        id,
    )
}

pub(super) fn goodbye(id: Option<&str>) -> Vec<u8> {
    response(
        &[
            ("Response", "Goodbye"),
            ("Message", "Thanks for all the fish."),
        ],
        id,
    )
}

/// Encodes `m` with its ActionID set to `id` (added after the first line
/// when the captured message had none).
pub(super) fn encode_with_id(m: &AmiMessage, id: Option<&str>) -> Vec<u8> {
    if m.has("ActionID") || id.is_none() {
        return encode_message(m, IdRewrite::Set(id));
    }
    let mut with = AmiMessage::new();
    for (i, (k, v)) in m.fields().enumerate() {
        with.push(k, v);
        if i == 0 {
            with.push("ActionID", id.unwrap_or(""));
        }
    }
    encode_message(&with, IdRewrite::Keep)
}

pub(super) fn empty_list(message: &str, complete: &str, id: Option<&str>) -> Vec<u8> {
    let mut out = response(
        &[
            ("Response", "Success"),
            ("EventList", "start"),
            ("Message", message),
        ],
        id,
    );
    out.extend_from_slice(&response(
        &[
            ("Event", complete),
            ("EventList", "Complete"),
            ("ListItems", "0"),
        ],
        id,
    ));
    out
}
