//! The Meetip PRO text protocol, as pure functions: what the page sends,
//! parsed leniently (spaces, case, a trailing newline), and the lines the
//! server sends.

/// A line from the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `<tenant>/<extension>, <key>`: first-phase login.
    Login {
        /// Tenant id or numeric code.
        tenant: String,
        /// Extension.
        extension: String,
        /// Tenant key.
        key: String,
    },
    /// `<tenant>, <extension>`: fast-reconnect login.
    Relogin {
        /// Tenant id or code.
        tenant: String,
        /// Extension.
        extension: String,
    },
    /// `(call, <number>)`.
    Call(String),
    /// `(status, <ext>)`.
    Status(String),
    /// Anything else.
    Unknown,
}

/// Parses one text frame.
pub fn parse(line: &str) -> Request {
    let t = line.trim();
    if let Some(inner) = t.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        let (cmd, arg) = inner.split_once(',').unwrap_or((inner, ""));
        let arg = arg.trim().to_string();
        return match cmd.trim().to_ascii_lowercase().as_str() {
            "call" if !arg.is_empty() => Request::Call(arg),
            "status" if !arg.is_empty() => Request::Status(arg),
            _ => Request::Unknown,
        };
    }
    let Some((left, right)) = t.split_once(',') else {
        return Request::Unknown;
    };
    let (left, right) = (left.trim(), right.trim());
    if let Some((tenant, ext)) = left.split_once('/') {
        let (tenant, ext) = (tenant.trim(), ext.trim());
        if tenant.is_empty() || ext.is_empty() || right.is_empty() {
            return Request::Unknown;
        }
        return Request::Login {
            tenant: tenant.to_string(),
            extension: ext.to_string(),
            key: right.to_string(),
        };
    }
    if left.is_empty() || right.is_empty() || right.contains([',', ' ']) {
        return Request::Unknown;
    }
    Request::Relogin {
        tenant: left.to_string(),
        extension: right.to_string(),
    }
}

/// `(info,<text>)`.
pub fn info(text: &str) -> String {
    format!("(info,{})", clean(text))
}

/// `(CALL,<number>)`.
pub fn call(number: &str) -> String {
    format!("(CALL,{})", clean(number))
}

/// `(estado,<ext>-<word>)`.
pub fn estado(ext: &str, word: &str) -> String {
    format!("(estado,{}-{})", clean(ext), clean(word))
}

/// `(status,ErrorNumber)`.
pub fn status_error() -> String {
    "(status,ErrorNumber)".to_string()
}

/// `(info,<code>-<state>-<ext>-<transaction>)` (monitor).
pub fn monitor(code: u64, state: &str, ext: &str, transaction: &str) -> String {
    let txn = if transaction.is_empty() {
        "0"
    } else {
        transaction
    };
    format!(
        "(info,{code}-{}-{}-{})",
        clean(state),
        clean(ext),
        clean(txn)
    )
}

/// Caller ids are hostile: no parentheses, commas or control characters
/// reach the page's parser.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | ','))
        .take(128)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_page_sends() {
        assert_eq!(
            parse("270/1001, s3cret "),
            Request::Login {
                tenant: "270".into(),
                extension: "1001".into(),
                key: "s3cret".into()
            }
        );
        assert_eq!(
            parse("main, 1001"),
            Request::Relogin {
                tenant: "main".into(),
                extension: "1001".into()
            }
        );
        assert_eq!(
            parse(" (call, 02122853348)"),
            Request::Call("02122853348".into())
        );
        assert_eq!(parse(" (status, 1002 ) "), Request::Status("1002".into()));
        assert_eq!(parse("(CALL,5)"), Request::Call("5".into()));
        for junk in [
            "",
            "hello",
            "(call,)",
            "(nope, 1)",
            "/1001, k",
            "a/b,",
            "a, b c",
            "((",
            "\u{0}",
        ] {
            assert_eq!(parse(junk), Request::Unknown, "{junk:?}");
        }
    }

    #[test]
    fn formats_lines() {
        assert_eq!(call("5559876543"), "(CALL,5559876543)");
        assert_eq!(call("55)5(,x\n"), "(CALL,555x)");
        assert_eq!(
            monitor(270, "974319404", "3103", "1508337505.3520740"),
            "(info,270-974319404-3103-1508337505.3520740)"
        );
        assert_eq!(monitor(270, "Libre", "3103", ""), "(info,270-Libre-3103-0)");
        assert_eq!(estado("1002", "libre"), "(estado,1002-libre)");
        assert_eq!(info("-Timbre"), "(info,-Timbre)");
    }
}
