//! The `push:` section (the asterCC-style push endpoint): as written,
//! validated, and its checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use jiff::tz::TimeZone;

use crate::values::{expand_vars, parse_zone, read_secret_file, Secret};
use crate::yaml::{Path as At, Problem};

pub use crate::http::push::{PushConfig, PushTeam, DEFAULT_PUSH_PATH};

/// The asterCC-style push endpoint.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPush {
    /// URL path on the `listen` address (default `/v1/events/astercc`).
    pub path: Option<String>,
    /// Query parameter carrying the team's token (default `token`).
    pub token_param: Option<String>,
    /// Header carrying the team's token (default `X-Callhook-Token`).
    pub token_header: Option<String>,
    /// How long after a call's last push, once it is over, its record is
    /// written (default `2s`): pushes that arrive out of order are folded in.
    pub settle: Option<String>,
    /// Teams (tenants) by name; the name is the `pbx` of their calls.
    #[serde(default)]
    pub teams: BTreeMap<String, RawTeam>,
}

/// One push team.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTeam {
    /// The team's token, usually `${ACME_PUSH_TOKEN}`.
    pub token: Option<String>,
    /// A file holding the token (trailing newline ignored).
    pub token_file: Option<PathBuf>,
    /// Time zone of `eventTime`s written without an offset: an IANA name
    /// (`America/Mexico_City`, daylight saving included), `UTC` (default)
    /// or a fixed offset (`-03:00`).
    pub timezone: Option<String>,
}

/// Checks the `push:` section.
pub(crate) fn validate_push(
    p: RawPush,
    listen: Option<&str>,
    pbx_ids: &[String],
    base_dir: &Path,
    errors: &mut Vec<Problem>,
) -> PushConfig {
    let root = At::root().key("push");
    let err = |path: At, message: String, hint: Option<&str>| {
        Problem::new(path, message).hint_opt(hint.map(str::to_string))
    };
    if listen.is_none_or(|l| l.trim().is_empty()) {
        errors.push(err(
            root.clone(),
            "the push endpoint needs an HTTP listener".into(),
            Some("set listen: 0.0.0.0:9188 (or another host:port)"),
        ));
    }
    let path = p.path.unwrap_or_else(|| DEFAULT_PUSH_PATH.to_string());
    let reserved = ["/metrics", "/healthz", "/readyz", "/-/reload", "/api"];
    if !path.starts_with('/')
        || path.len() < 2
        || path.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | ':' | '*' | '{' | '}')
        })
        || path.contains("//")
    {
        errors.push(err(
            root.key("path"),
            format!("{path:?} is not a usable URL path"),
            Some("write an absolute path such as /v1/events/astercc (no query, no : or *)"),
        ));
    } else if reserved
        .iter()
        .any(|r| path == *r || path.starts_with(&format!("{r}/")))
    {
        errors.push(err(
            root.key("path"),
            format!("{path:?} is already used by callhook"),
            Some("choose another path, e.g. /v1/events/astercc"),
        ));
    }
    let token_param = p.token_param.unwrap_or_else(|| "token".into());
    if token_param.is_empty()
        || !token_param
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        errors.push(err(
            root.key("token_param"),
            format!("{token_param:?} is not a query parameter name"),
            Some("letters, digits, _ - ."),
        ));
    }
    let token_header = p.token_header.unwrap_or_else(|| "X-Callhook-Token".into());
    if axum::http::HeaderName::from_bytes(token_header.as_bytes()).is_err() {
        errors.push(err(
            root.key("token_header"),
            format!("{token_header:?} is not a header name"),
            Some("e.g. X-Callhook-Token"),
        ));
    }
    if p.teams.is_empty() {
        errors.push(err(
            root.key("teams"),
            "no teams".into(),
            Some("add one: teams: { acme: { token: \"${ACME_PUSH_TOKEN}\" } }"),
        ));
    }
    let mut teams: Vec<PushTeam> = Vec::new();
    for (name, t) in p.teams {
        let team = root.key("teams").key(name.clone());
        let at = |k: &str| team.key(k);
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            errors.push(err(
                team.clone(),
                format!("{name:?} is not a usable team name"),
                Some("letters, digits, _ - . (it becomes the pbx of the team's calls)"),
            ));
        }
        if pbx_ids.contains(&name) {
            errors.push(err(
                team.clone(),
                format!("{name:?} is also a PBX id"),
                Some("give the team another name: it is the pbx of its calls"),
            ));
        }
        let token = match (&t.token, &t.token_file) {
            (Some(_), Some(_)) => {
                errors.push(err(
                    team.clone(),
                    "both token and token_file are set".into(),
                    Some("keep one"),
                ));
                None
            }
            (Some(v), None) => {
                let (v, missing) = expand_vars(v);
                for var in &missing {
                    errors.push(unset_var(at("token"), var));
                }
                missing.is_empty().then_some(v)
            }
            (None, Some(f)) => {
                let (f, text) = read_secret_file(base_dir, f);
                match text {
                    Ok(v) => Some(v),
                    Err(e) => {
                        errors.push(err(
                            at("token_file"),
                            format!("cannot read {}: {e}", f.display()),
                            None,
                        ));
                        None
                    }
                }
            }
            (None, None) => {
                errors.push(err(
                    at("token"),
                    "no token".into(),
                    Some("set token: \"${TEAM_PUSH_TOKEN}\" or token_file: PATH"),
                ));
                None
            }
        };
        let token = match token {
            Some(v) if v.chars().count() < 8 => {
                errors.push(err(
                    at("token"),
                    "is shorter than 8 characters".into(),
                    Some("use a long random value, e.g. openssl rand -hex 24"),
                ));
                Secret::default()
            }
            Some(v) => {
                if teams.iter().any(|o| o.token.expose() == v) {
                    errors.push(err(
                        at("token"),
                        "is the same as another team's token".into(),
                        Some("the token says which team pushed: give each team its own"),
                    ));
                }
                Secret::new(v)
            }
            None => Secret::default(),
        };
        let timezone = match t.timezone.as_deref() {
            None => TimeZone::UTC,
            Some(z) => parse_zone(z).unwrap_or_else(|| {
                errors.push(err(
                    at("timezone"),
                    format!("{z:?} is not a time zone"),
                    Some("an IANA name such as America/Mexico_City (daylight saving included), UTC, or an offset such as -03:00"),
                ));
                TimeZone::UTC
            }),
        };
        teams.push(PushTeam {
            name,
            token,
            timezone,
        });
    }
    PushConfig {
        path,
        token_param,
        token_header,
        teams,
    }
}

/// The problem of a `${VAR}` that is not set.
pub(crate) fn unset_var(path: At, var: &str) -> Problem {
    Problem::new(path, format!("environment variable {var} is not set"))
        .hint(format!("export {var}=… before starting callhook"))
        .needle(Some(format!("${{{var}}}")))
}
