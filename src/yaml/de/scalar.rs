//! A plain scalar as YAML 1.2's core schema reads it (`~` null, `true`,
//! `0x1F`, `.inf`, …), and which integers keep what was written.

use crate::yaml::is_null;

/// A plain scalar as the core schema reads it.
pub(super) enum Resolved<'a> {
    Null,
    Bool(bool),
    U(u64),
    I(i64),
    F(f64),
    Str(&'a str),
}

pub(super) fn resolve(text: &str, plain: bool) -> Resolved<'_> {
    if !plain {
        return Resolved::Str(text);
    }
    if is_null(text) {
        return Resolved::Null;
    }
    match text {
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::F(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::F(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::F(f64::NAN),
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return n;
    }
    if is_float(text) {
        if let Ok(f) = text.parse::<f64>() {
            return Resolved::F(f);
        }
    }
    Resolved::Str(text)
}

pub(super) fn parse_int(text: &str) -> Option<Resolved<'_>> {
    let (neg, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(h) = digits.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = digits.strip_prefix("0o") {
        (8, o)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let u = u64::from_str_radix(digits, radix).ok()?;
    Some(if neg {
        Resolved::I(0i64.checked_sub_unsigned(u)?)
    } else {
        Resolved::U(u)
    })
}

fn is_float(t: &str) -> bool {
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mant, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mant_ok = match mant.split_once('.') {
        Some((a, b)) => {
            (!a.is_empty() || !b.is_empty())
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => !mant.is_empty() && mant.bytes().all(|c| c.is_ascii_digit()),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit())
    });
    mant_ok && exp_ok
}

/// Written with a leading `0` or `+` (`0261`, `+52155`): kept as text by
/// `deserialize_any`.
pub(super) fn keeps_text(text: &str) -> bool {
    let d = text.strip_prefix('-').unwrap_or(text);
    text.starts_with('+')
        || (d.len() > 1 && d.starts_with('0') && !d[1..].starts_with(['.', 'e', 'E']))
}
