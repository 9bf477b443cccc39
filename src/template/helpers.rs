//! The handlebars helpers: `date`, `secs`, `default`, `json`.
//!
//! All four return values, so they also work as subexpressions
//! (`{{#if (default call.queue "")}}`). A parameter naming a path that does
//! not exist is an error (strict mode), which turns typos into configuration
//! errors at load time; a parameter that exists but is null is fine.

use handlebars::{
    Context, Handlebars, Helper, HelperDef, PathAndJson, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use serde_json::Value;
use time::{format_description::well_known::Rfc3339, OffsetDateTime, UtcOffset};

/// Registers every helper.
pub fn register(hb: &mut Handlebars<'static>) {
    hb.register_helper("date", Box::new(DateHelper));
    hb.register_helper("secs", Box::new(SecsHelper));
    hb.register_helper("default", Box::new(DefaultHelper));
    hb.register_helper("json", Box::new(JsonHelper));
}

/// Helper names that return a value (usable as `{{json (NAME …)}}`).
pub const VALUE_HELPERS: &[&str] = &[
    "date", "secs", "default", "json", "lookup", "len", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not",
];

fn other(msg: String) -> RenderError {
    RenderErrorReason::Other(msg).into()
}

/// Parameter `i`, which must be given and, if a path, must exist.
fn param<'a, 'rc>(
    h: &'a Helper<'rc>,
    i: usize,
    helper: &'static str,
) -> Result<&'a PathAndJson<'rc>, RenderError> {
    let p = h
        .param(i)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex(helper, i))?;
    if p.is_value_missing() {
        return Err(RenderErrorReason::MissingVariable(p.relative_path().cloned()).into());
    }
    Ok(p)
}

/// `{{date VALUE "FORMAT" ["OFFSET"]}}`.
pub struct DateHelper;

impl HelperDef for DateHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let v = param(h, 0, "date")?.value().clone();
        let fmt = match h.param(1) {
            Some(p) => p
                .value()
                .as_str()
                .ok_or_else(|| other("date: the format must be a string".into()))?
                .to_string(),
            None => "%Y-%m-%dT%H:%M:%S%:z".to_string(),
        };
        let offset = match h.param(2) {
            Some(p) => {
                let s = p
                    .value()
                    .as_str()
                    .ok_or_else(|| other("date: the UTC offset must be a string".into()))?;
                parse_offset(s).ok_or_else(|| {
                    other(format!(
                        "date: bad UTC offset {s:?} (use \"-03:00\", \"+0530\" or \"Z\")"
                    ))
                })?
            }
            None => UtcOffset::UTC,
        };
        // Check the format even when there is no value, so a bad format
        // is caught when the rules are loaded.
        format_time(OffsetDateTime::UNIX_EPOCH, &fmt)?;
        let t = match &v {
            Value::Null => return Ok(ScopedJson::Derived(Value::String(String::new()))),
            Value::String(s) if s.is_empty() => {
                return Ok(ScopedJson::Derived(Value::String(String::new())))
            }
            Value::String(s) => OffsetDateTime::parse(s, &Rfc3339)
                .map_err(|e| other(format!("date: {s:?} is not an RFC 3339 time: {e}")))?,
            Value::Number(n) => {
                let secs = n.as_f64().unwrap_or(0.0);
                OffsetDateTime::from_unix_timestamp_nanos((secs * 1e6).round() as i128 * 1000)
                    .map_err(|e| other(format!("date: {secs} is out of range: {e}")))?
            }
            other_v => return Err(other(format!("date: cannot format {other_v}"))),
        };
        let s = format_time(t.to_offset(offset), &fmt)?;
        Ok(ScopedJson::Derived(Value::String(s)))
    }
}

/// Parses `Z`, `UTC`, `±HH`, `±HHMM`, `±HH:MM`.
pub fn parse_offset(s: &str) -> Option<UtcOffset> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("z") || s.eq_ignore_ascii_case("utc") {
        return Some(UtcOffset::UTC);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1i8, &s[1..]),
        b'-' => (-1i8, &s[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|c| c.is_ascii_digit()) || !(digits.len() == 2 || digits.len() == 4) {
        return None;
    }
    if rest.contains(':') && !(rest.len() == 5 && rest.as_bytes()[2] == b':') {
        return None;
    }
    let h: i8 = digits[..2].parse().ok()?;
    let m: i8 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    if h > 23 || m > 59 {
        return None;
    }
    UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

/// strftime-like formatting: `%Y %m %d %H %M %S %f %z %:z %s %%`.
pub fn format_time(t: OffsetDateTime, fmt: &str) -> Result<String, RenderError> {
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&format!("{:04}", t.year())),
            Some('m') => out.push_str(&format!("{:02}", u8::from(t.month()))),
            Some('d') => out.push_str(&format!("{:02}", t.day())),
            Some('H') => out.push_str(&format!("{:02}", t.hour())),
            Some('M') => out.push_str(&format!("{:02}", t.minute())),
            Some('S') => out.push_str(&format!("{:02}", t.second())),
            Some('f') => out.push_str(&format!("{:06}", t.microsecond())),
            Some('s') => out.push_str(&t.unix_timestamp().to_string()),
            Some('z') => out.push_str(&offset_text(t.offset(), false)),
            Some(':') => match chars.next() {
                Some('z') => out.push_str(&offset_text(t.offset(), true)),
                _ => {
                    return Err(other(
                        "date: unknown format code %: (did you mean %:z?)".into(),
                    ))
                }
            },
            Some('%') => out.push('%'),
            Some(x) => {
                return Err(other(format!(
                    "date: unknown format code %{x} (known: %Y %m %d %H %M %S %f %s %z %:z %%)"
                )))
            }
            None => return Err(other("date: the format ends with a lone %".into())),
        }
    }
    Ok(out)
}

fn offset_text(o: UtcOffset, colon: bool) -> String {
    let (h, m, _) = o.as_hms();
    let sign = if h < 0 || m < 0 { '-' } else { '+' };
    let (h, m) = (h.unsigned_abs(), m.unsigned_abs());
    if colon {
        format!("{sign}{h:02}:{m:02}")
    } else {
        format!("{sign}{h:02}{m:02}")
    }
}

/// `{{secs VALUE}}`: a number of seconds rounded to a whole number.
pub struct SecsHelper;

impl HelperDef for SecsHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let v = param(h, 0, "secs")?.value();
        let n = match v {
            Value::Null => return Ok(ScopedJson::Derived(Value::Null)),
            Value::Number(n) => n.as_f64().unwrap_or(0.0),
            Value::String(s) if s.trim().is_empty() => return Ok(ScopedJson::Derived(Value::Null)),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| other(format!("secs: {s:?} is not a number")))?,
            v => return Err(other(format!("secs: {v} is not a number"))),
        };
        Ok(ScopedJson::Derived(Value::from(n.round() as i64)))
    }
}

/// `{{default VALUE FALLBACK}}`: VALUE unless it is null or `""`.
pub struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let v = param(h, 0, "default")?.value();
        let fallback = param(h, 1, "default")?.value();
        let empty = matches!(v, Value::Null) || v.as_str() == Some("");
        Ok(ScopedJson::Derived(if empty {
            fallback.clone()
        } else {
            v.clone()
        }))
    }
}

/// `{{json VALUE}}`: VALUE serialized as JSON text.
pub struct JsonHelper;

impl HelperDef for JsonHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let v = param(h, 0, "json")?.value();
        let s = serde_json::to_string(v).map_err(|e| other(format!("json: {e}")))?;
        Ok(ScopedJson::Derived(Value::String(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hb() -> Handlebars<'static> {
        let mut h = Handlebars::new();
        h.set_strict_mode(true);
        h.register_escape_fn(handlebars::no_escape);
        register(&mut h);
        h
    }

    fn render(t: &str) -> Result<String, String> {
        let data = json!({
            "call": {
                "started_at": "2026-11-22T19:10:48.127205Z",
                "answered_at": null,
                "duration": 6.505,
                "queue": null,
                "name": "a\"b",
                "rung": ["1002", "1001"]
            }
        });
        hb().render_template(t, &data).map_err(|e| e.to_string())
    }

    #[test]
    fn date_formats_with_offsets() {
        let cases = [
            (
                r#"{{date call.started_at "%Y-%m-%d %H:%M:%S"}}"#,
                "2026-11-22 19:10:48",
            ),
            (
                r#"{{date call.started_at "%d/%m/%Y %H:%M" "-03:00"}}"#,
                "22/11/2026 16:10",
            ),
            (
                r#"{{date call.started_at "%H:%M%z" "+0530"}}"#,
                "00:40+0530",
            ),
            (
                r#"{{date call.started_at "%H:%M:%S.%f%:z" "Z"}}"#,
                "19:10:48.127205+00:00",
            ),
            (r#"{{date call.started_at "%s %%"}}"#, "1795374648 %"),
            (r#"{{date call.answered_at "%Y"}}"#, ""),
            (r#"{{date 0 "%Y-%m-%d"}}"#, "1970-01-01"),
        ];
        for (t, want) in cases {
            assert_eq!(render(t).unwrap(), want, "{t}");
        }
    }

    #[test]
    fn date_rejects_bad_formats_and_offsets() {
        assert!(render(r#"{{date call.started_at "%Q"}}"#).is_err());
        assert!(render(r#"{{date call.answered_at "%Q"}}"#).is_err());
        assert!(render(r#"{{date call.started_at "%Y" "3 hours"}}"#).is_err());
        assert!(render(r#"{{date call.startd_at "%Y"}}"#).is_err());
    }

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset("-03:00"), UtcOffset::from_hms(-3, 0, 0).ok());
        assert_eq!(parse_offset("+0530"), UtcOffset::from_hms(5, 30, 0).ok());
        assert_eq!(parse_offset("+05"), UtcOffset::from_hms(5, 0, 0).ok());
        assert_eq!(parse_offset("UTC"), Some(UtcOffset::UTC));
        for bad in ["", "3", "+3", "+24:00", "+05:5", "+0:530", "-03:00x"] {
            assert_eq!(parse_offset(bad), None, "{bad}");
        }
    }

    #[test]
    fn secs_default_json() {
        assert_eq!(render("{{secs call.duration}}").unwrap(), "7");
        assert_eq!(render("{{secs call.queue}}").unwrap(), "");
        assert_eq!(render(r#"{{default call.queue "none"}}"#).unwrap(), "none");
        assert_eq!(
            render(r#"{{default call.duration "none"}}"#).unwrap(),
            "6.505"
        );
        assert_eq!(render("{{json call.rung}}").unwrap(), r#"["1002","1001"]"#);
        assert_eq!(render("{{json call.name}}").unwrap(), r#""a\"b""#);
        assert_eq!(render("{{json (secs call.duration)}}").unwrap(), "7");
        assert!(render(r#"{{default call.queu "none"}}"#).is_err());
        assert!(render("{{json call.nope}}").is_err());
        assert!(render("{{secs call.name}}").is_err());
    }
}
