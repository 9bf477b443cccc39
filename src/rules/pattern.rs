//! Number patterns: Asterisk dialplan patterns and `/regex/`, compiled once
//! to an anchored regex.

use regex::Regex;

/// A compiled number pattern.
#[derive(Debug, Clone)]
pub struct NumberPattern {
    source: String,
    re: Regex,
}

impl PartialEq for NumberPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl NumberPattern {
    /// Compiles a pattern.
    ///
    /// - `/…/`: a regex on the whole number (anchored for you).
    /// - otherwise a dialplan pattern, with an optional leading `_`:
    ///   `X` = `[0-9]`, `Z` = `[1-9]`, `N` = `[2-9]`, `[1-5]` / `[13-5]` a
    ///   character class, `.` one or more of anything, `!` zero or more,
    ///   everything else literal. With the leading `_`, lower-case `x`, `z`,
    ///   `n` are pattern letters too (as in Asterisk); without it they are
    ///   literal.
    pub fn compile(src: &str) -> Result<Self, String> {
        let re = if src.len() >= 2 && src.starts_with('/') && src.ends_with('/') {
            let inner = &src[1..src.len() - 1];
            if inner.is_empty() {
                return Err("empty regex".into());
            }
            format!("^(?:{inner})$")
        } else {
            dialplan_regex(src)?
        };
        let re = Regex::new(&re).map_err(|e| match e {
            regex::Error::Syntax(s) => format!("invalid regex: {}", s.lines().last().unwrap_or(&s)),
            other => format!("invalid regex: {other}"),
        })?;
        Ok(Self {
            source: src.to_string(),
            re,
        })
    }

    /// The pattern as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the whole value matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.re.is_match(value)
    }
}

/// Translates a dialplan pattern into an anchored regex.
fn dialplan_regex(src: &str) -> Result<String, String> {
    let (underscore, body) = match src.strip_prefix('_') {
        Some(b) => (true, b),
        None => (false, src),
    };
    if body.is_empty() {
        return Err("empty pattern".into());
    }
    let mut re = String::from("^");
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        let lc = if underscore {
            c.to_ascii_uppercase()
        } else {
            c
        };
        match lc {
            'X' => re.push_str("[0-9]"),
            'Z' => re.push_str("[1-9]"),
            'N' => re.push_str("[2-9]"),
            '.' => re.push_str(".+"),
            '!' => re.push_str(".*"),
            '[' => {
                let mut class = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == ']' {
                        closed = true;
                        break;
                    }
                    class.push(c);
                }
                if !closed {
                    return Err(format!("unclosed [ in {src:?}"));
                }
                re.push_str(&char_class(&class, src)?);
            }
            ']' => return Err(format!("unmatched ] in {src:?}")),
            _ => re.push_str(&regex::escape(c.encode_utf8(&mut [0u8; 4]))),
        }
    }
    re.push('$');
    Ok(re)
}

/// `13-5` → `[13-5]`, with ranges checked and other characters escaped.
fn char_class(class: &str, src: &str) -> Result<String, String> {
    let cs: Vec<char> = class.chars().collect();
    if cs.is_empty() {
        return Err(format!("empty [] in {src:?}"));
    }
    let mut out = String::from("[");
    let mut i = 0;
    while i < cs.len() {
        if i + 2 < cs.len() && cs[i + 1] == '-' {
            let (a, b) = (cs[i], cs[i + 2]);
            if a > b {
                return Err(format!("bad range {a}-{b} in {src:?}"));
            }
            out.push_str(&format!("{}-{}", esc_class(a), esc_class(b)));
            i += 3;
        } else {
            out.push_str(&esc_class(cs[i]));
            i += 1;
        }
    }
    out.push(']');
    Ok(out)
}

fn esc_class(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        c.to_string()
    } else {
        format!("\\{c}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialplan_patterns() {
        // (pattern, value, matches)
        let table: &[(&str, &str, bool)] = &[
            ("2X", "25", true),
            ("2X", "2", false),
            ("2X", "255", false),
            ("2X", "35", false),
            ("_2X", "29", true),
            ("_NXXNXXXXXX", "2125550100", true),
            ("_NXXNXXXXXX", "1125550100", false),
            ("_NXXNXXXXXX", "2121550100", false),
            ("_NXXNXXXXXX", "212555010", false),
            ("_ZXX", "100", true),
            ("_ZXX", "099", false),
            ("_9X.", "95551234", true),
            ("_9X.", "95", false),
            ("_9X.", "9", false),
            ("_9X!", "95", true),
            ("_9X!", "95551234", true),
            ("_XXXXXXX", "5551234", true),
            ("_XXXXXXX", "55512345", false),
            ("_[1-5]XX", "300", true),
            ("_[1-5]XX", "600", false),
            ("_[13-5]X", "10", true),
            ("_[13-5]X", "20", false),
            ("_[13-5]X", "40", true),
            ("_0[12]!", "01", true),
            ("_0[12]!", "02999", true),
            ("_0[12]!", "03", false),
            ("1001", "1001", true),
            ("1001", "10010", false),
            ("+1NXX", "+1555", true),
            ("+1NXX", "11555", false),
            ("_nxx", "255", true),
            ("anonymous", "anonymous", true),
            ("_.", "anything", true),
            ("_.", "", false),
            ("_!", "", true),
            ("/^5{3}.*/", "5551", true),
            ("/55|66/", "5566", false),
            ("/55|66/", "66", true),
            ("/5+/", "555", true),
            ("/5+/", "5556", false),
        ];
        for (p, v, want) in table {
            let pat = NumberPattern::compile(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert_eq!(pat.is_match(v), *want, "{p} vs {v}");
        }
    }

    #[test]
    fn bad_patterns() {
        for p in [
            "",
            "_",
            "_[12",
            "_1]",
            "_[]",
            "_[5-1]",
            "/(/",
            "//",
            "/a{99999999}/",
        ] {
            assert!(NumberPattern::compile(p).is_err(), "{p}");
        }
        assert!(NumberPattern::compile("/(/")
            .unwrap_err()
            .starts_with("invalid regex"));
    }
}
