//! Logging a client in, as Asterisk's `manager.c` does: an optional
//! `Challenge` (`AuthType: MD5` → `Challenge: <random number>`), then
//! `Login` with either `AuthType: MD5` and `Key: md5(challenge + secret)`
//! or the plain `Secret`. Unknown users and wrong secrets get the same
//! answer (`Authentication failed`), after the same delay; secrets are
//! compared in constant time and never logged.

use rand::Rng;

use super::config::ProxyUser;
use super::events::{EventMask, ALL};
use crate::ami::client::md5_key;
use crate::ami::AmiMessage;
use crate::http::admin::token_eq;

/// A fresh challenge: a random decimal number, as `ast_random()` gives.
pub fn new_challenge() -> String {
    rand::thread_rng()
        .gen_range(100_000_000u64..=9_999_999_999u64)
        .to_string()
}

/// The user a `Login` packet authenticates as, or `None`.
pub fn authenticate<'a>(
    users: &'a [ProxyUser],
    login: &AmiMessage,
    challenge: Option<&str>,
) -> Option<&'a ProxyUser> {
    let name = login.get_raw("Username")?.trim();
    // Every user is compared, so the time does not tell whether the name exists.
    let user = users.iter().fold(None, |found, u| {
        if token_eq(&u.username, name) {
            Some(u)
        } else {
            found
        }
    });
    let md5 = login
        .get_raw("AuthType")
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("MD5"));
    let secret = user.map_or("", |u| u.secret.expose());
    let ok = if md5 {
        match (challenge, login.get_raw("Key")) {
            (Some(c), Some(key)) => token_eq(
                &md5_key(c, secret),
                key.trim().to_ascii_lowercase().as_str(),
            ),
            _ => false,
        }
    } else {
        login
            .get_raw("Secret")
            .is_some_and(|given| token_eq(given, secret))
    };
    user.filter(|_| ok)
}

/// The event mask a `Login` asks for: its `Events:` header, or every
/// class when it has none (Asterisk: the user's read permissions).
pub fn login_mask(login: &AmiMessage) -> EventMask {
    login
        .get_raw("Events")
        .and_then(EventMask::parse)
        .unwrap_or(EventMask(ALL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::actions::ActionPolicy;
    use crate::proxy::events::EventFilter;
    use crate::values::Secret;

    fn users() -> Vec<ProxyUser> {
        vec![ProxyUser {
            username: "panel".into(),
            secret: Secret::new("s3cret"),
            pbx: "main".into(),
            actions: ActionPolicy::allow(&["Ping"]),
            events: EventFilter::default(),
        }]
    }

    fn m(pairs: &[(&str, &str)]) -> AmiMessage {
        AmiMessage::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn plain_and_md5() {
        let u = users();
        let plain = m(&[
            ("Action", "Login"),
            ("Username", "panel"),
            ("Secret", "s3cret"),
        ]);
        assert_eq!(
            authenticate(&u, &plain, None).map(|u| u.username.as_str()),
            Some("panel")
        );
        let wrong = m(&[
            ("Action", "Login"),
            ("Username", "panel"),
            ("Secret", "nope"),
        ]);
        assert!(authenticate(&u, &wrong, None).is_none());
        let nobody = m(&[("Action", "Login"), ("Username", "x"), ("Secret", "s3cret")]);
        assert!(authenticate(&u, &nobody, None).is_none());
        let key = md5_key("12345", "s3cret");
        let md5 = m(&[
            ("Action", "Login"),
            ("AuthType", "md5"),
            ("Username", "panel"),
            ("Key", &key),
        ]);
        assert!(authenticate(&u, &md5, Some("12345")).is_some());
        // No challenge asked for, or another challenge: refused.
        assert!(authenticate(&u, &md5, None).is_none());
        assert!(authenticate(&u, &md5, Some("999")).is_none());
        // An empty secret never matches a configured one.
        let empty = m(&[("Action", "Login"), ("Username", "panel"), ("Secret", "")]);
        assert!(authenticate(&u, &empty, None).is_none());
    }

    #[test]
    fn masks() {
        assert_eq!(login_mask(&m(&[("Events", "off")])), EventMask(0));
        assert_eq!(login_mask(&m(&[])), EventMask(ALL));
        assert_eq!(login_mask(&m(&[("Events", "")])), EventMask(ALL));
        assert!(new_challenge().bytes().all(|b| b.is_ascii_digit()));
    }
}
