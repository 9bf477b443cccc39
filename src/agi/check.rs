//! The checks every value passes before it reaches Asterisk: YAML
//! literals at load time, rendered templates and CRM answers at run time.
//! A channel is `TECH/resource` without `,` `&` quotes, spaces or `$`
//! (no extra Dial targets or options), sound files are relative names,
//! variable names are `NAME` or `FUNC(args)`, values have no control
//! characters (a newline would end the command and start another).

use super::protocol::quote;

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

pub(crate) fn check_mailbox(s: &str) -> Result<(), String> {
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

pub(crate) fn check_name(s: &str, what: &str) -> Result<(), String> {
    if chars_ok(s, 80, "_+.-") {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid {what}"))
    }
}

pub(crate) fn check_priority(s: &str) -> Result<(), String> {
    if chars_ok(s, 64, "_-") {
        Ok(())
    } else {
        Err(format!("{s:?} is not a priority (a number or a label)"))
    }
}

pub(crate) fn check_sound(s: &str) -> Result<(), String> {
    if chars_ok(s, 128, "_./-") && !s.starts_with('/') && !s.split('/').any(|p| p == "..") {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a sound file name (relative, e.g. custom/welcome)"
        ))
    }
}

pub(crate) fn check_options(s: &str) -> Result<(), String> {
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

pub(crate) fn check_value(s: &str) -> Result<(), String> {
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
pub(crate) fn parse_timeout(s: &str) -> Option<u64> {
    let d = crate::values::parse_duration(s)?;
    let secs = d.as_secs_f64().round() as u64;
    (1..=3600).contains(&secs).then_some(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
