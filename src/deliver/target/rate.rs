//! `rate_limit:` texts: `20/s`, `100/min`, `1000/h`, near misses refused
//! with a hint.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// A rate: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period.
    pub count: NonZeroU32,
    /// The period (1 s, 1 min or 1 h).
    pub per: Duration,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Why a rate text was refused: message and hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateError {
    /// What is wrong.
    pub message: String,
    /// How to write it.
    pub hint: String,
}

/// Parses `20/s`, `100/min`, `100/m`, `1000/h` (spaces around `/` allowed).
///
/// Near misses (`20/sec`, `20/second`, `20/minute`, `20/hour`, a bare `20`)
/// are refused with a hint naming the accepted spelling.
pub fn parse_rate(text: &str) -> Result<Rate, RateError> {
    let t = text.trim();
    let generic = "write e.g. 20/s, 100/min or 1000/h".to_string();
    let Some((n, unit)) = t.split_once('/') else {
        let hint = match t.parse::<u32>() {
            Ok(n) if n > 0 => format!("write {n}/s"),
            _ => generic,
        };
        return Err(RateError {
            message: format!("{t:?} is not a rate"),
            hint,
        });
    };
    let n = n.trim();
    let unit = unit.trim();
    let count = match n.parse::<u32>().ok().and_then(NonZeroU32::new) {
        Some(c) => c,
        None => {
            return Err(RateError {
                message: format!("{t:?}: the count must be a whole number above 0"),
                hint: "write e.g. 30/min instead of 0.5/s".into(),
            })
        }
    };
    let per = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        _ => {
            let lower = unit.to_ascii_lowercase();
            let suggest = if lower.starts_with("sec") || lower == "second" || lower == "seconds" {
                Some("s")
            } else if lower.starts_with("min") {
                Some("min")
            } else if lower.starts_with("h") {
                Some("h")
            } else {
                None
            };
            return Err(RateError {
                message: format!("{t:?}: unknown rate unit {unit:?}"),
                hint: match suggest {
                    Some(s) => format!("write {n}/{s}"),
                    None => generic,
                },
            });
        }
    };
    Ok(Rate {
        count,
        per: Duration::from_secs(per),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let r = parse_rate("20/s").unwrap();
        assert_eq!((r.count.get(), r.per), (20, Duration::from_secs(1)));
        let r = parse_rate("100/min").unwrap();
        assert_eq!((r.count.get(), r.per), (100, Duration::from_secs(60)));
        let r = parse_rate(" 100 / m ").unwrap();
        assert_eq!((r.count.get(), r.per), (100, Duration::from_secs(60)));
        let r = parse_rate("1000/h").unwrap();
        assert_eq!((r.count.get(), r.per), (1000, Duration::from_secs(3600)));
        assert_eq!(r.to_string(), "1000/h");

        let e = parse_rate("20/sec").unwrap_err();
        assert_eq!(e.hint, "write 20/s");
        assert!(e.message.contains("sec"), "{e:?}");
        assert_eq!(parse_rate("20/second").unwrap_err().hint, "write 20/s");
        assert_eq!(parse_rate("5/minute").unwrap_err().hint, "write 5/min");
        assert_eq!(parse_rate("5/hour").unwrap_err().hint, "write 5/h");
        assert_eq!(parse_rate("20").unwrap_err().hint, "write 20/s");
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("0.5/s").unwrap_err().hint.contains("30/min"));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("20/d").unwrap_err().hint.contains("20/s"));
    }
}
