//! Checks of the sections the config module owns (`listen`, `pbx`,
//! `classify`, `calls`, `admin`, `outbox`): pure functions from the
//! `Raw…` structs to validated values, pushing a [`Problem`] per mistake.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::push::unset_var;
use super::raw::{RawAdmin, RawCalls, RawClassify, RawOutbox, RawPbx};
use super::PbxConfig;
use crate::deliver::outbox::OutboxOptions;
use crate::normalize::{Classifier, ClassifierConfig};
use crate::values::{expand_vars, parse_duration, read_secret_file, Secret};
use crate::yaml::{Path as At, Problem};

/// A duration setting, its default when unset or wrong.
pub(crate) fn duration(
    v: &Option<String>,
    at: At,
    default: Duration,
    errors: &mut Vec<Problem>,
) -> Duration {
    match v {
        None => default,
        Some(s) => parse_duration(s).unwrap_or_else(|| {
            errors.push(
                Problem::new(at, format!("{s:?} is not a duration"))
                    .hint("write e.g. 500ms, 20s, 5m, 4h, 1d"),
            );
            default
        }),
    }
}

/// `${VAR}`s expanded; unset ones reported.
pub(crate) fn expand(v: &str, at: &At, errors: &mut Vec<Problem>) -> String {
    let (out, missing) = expand_vars(v);
    for var in &missing {
        errors.push(unset_var(at.clone(), var));
    }
    out
}

/// A secret given inline (`${VAR}` expanded) or as a file: `(inline key,
/// file key)` name the settings.
pub(crate) fn secret(
    inline: Option<&String>,
    file: Option<&std::path::PathBuf>,
    at: &At,
    keys: (&str, &str),
    base_dir: &Path,
    errors: &mut Vec<Problem>,
) -> Option<Secret> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            errors.push(
                Problem::new(
                    at.clone(),
                    format!("both {} and {} are set", keys.0, keys.1),
                )
                .hint("keep one"),
            );
            None
        }
        (Some(s), None) => Some(Secret::new(expand(s, &at.key(keys.0), errors))),
        (None, Some(f)) => {
            let (path, text) = read_secret_file(base_dir, f);
            match text {
                Ok(s) => Some(Secret::new(s)),
                Err(e) => {
                    errors.push(Problem::new(
                        at.key(keys.1),
                        format!("cannot read {}: {e}", path.display()),
                    ));
                    None
                }
            }
        }
        (None, None) => None,
    }
}

/// `listen`.
pub(crate) fn listen(v: Option<&str>, errors: &mut Vec<Problem>) -> Option<SocketAddr> {
    match v.map(str::trim) {
        None | Some("") => None,
        Some(l) => match l.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(
                    Problem::new(
                        At::root().key("listen"),
                        format!("{l:?} is not an address: {e}"),
                    )
                    .hint("write host:port, e.g. 127.0.0.1:9188"),
                );
                None
            }
        },
    }
}

/// `pbx:`.
pub(crate) fn pbx(list: Vec<RawPbx>, base_dir: &Path, errors: &mut Vec<Problem>) -> Vec<PbxConfig> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, p) in list.into_iter().enumerate() {
        let here = At::root().key("pbx").index(i);
        let at = |k: &str| here.key(k);
        if p.id.trim().is_empty() {
            errors.push(
                Problem::new(at("id"), "is empty").hint("give every PBX a short id such as `main`"),
            );
        } else if !seen.insert(p.id.clone()) {
            errors.push(Problem::new(
                at("id"),
                format!("duplicate PBX id {:?}", p.id),
            ));
        }
        let a = p.ami;
        let ami = here.key("ami");
        let secret = secret(
            a.secret.as_ref(),
            a.secret_file.as_ref(),
            &ami,
            ("secret", "secret_file"),
            base_dir,
            errors,
        )
        .unwrap_or_else(|| {
            if a.secret.is_none() && a.secret_file.is_none() {
                errors.push(
                    Problem::new(ami.key("secret"), "no secret")
                        .hint("set secret: \"${AMI_SECRET}\" or secret_file: PATH"),
                );
            }
            Secret::default()
        });
        let md5 = match a.auth.as_deref().unwrap_or("md5") {
            "md5" => true,
            "plain" => false,
            other => {
                errors.push(
                    Problem::new(ami.key("auth"), format!("unknown auth {other:?}"))
                        .hint("md5 or plain"),
                );
                true
            }
        };
        if a.host.trim().is_empty() {
            errors.push(Problem::new(ami.key("host"), "is empty").hint("the PBX's address"));
        }
        out.push(PbxConfig {
            id: p.id,
            host: a.host,
            port: a.port,
            username: a.username,
            secret,
            md5,
            events: a.events.unwrap_or_else(|| "on".into()),
            ping_interval: duration(
                &a.ping_interval,
                ami.key("ping_interval"),
                Duration::from_secs(20),
                errors,
            ),
            ping_timeout: duration(
                &a.ping_timeout,
                ami.key("ping_timeout"),
                Duration::from_secs(5),
                errors,
            ),
            connect_timeout: duration(
                &a.connect_timeout,
                ami.key("connect_timeout"),
                Duration::from_secs(5),
                errors,
            ),
            max_packet: a.max_packet.unwrap_or(1024 * 1024),
            queue_capacity: a.queue_capacity.unwrap_or(10_000).max(1),
            max_stall: duration(
                &a.max_stall,
                ami.key("max_stall"),
                crate::ami::client::DEFAULT_MAX_STALL,
                errors,
            ),
        });
    }
    out
}

/// `classify:`.
pub(crate) fn classify(c: RawClassify, errors: &mut Vec<Problem>) -> Classifier {
    let mut cc = ClassifierConfig::default();
    if let Some(p) = c.extension_pattern {
        cc.extension_pattern = p;
    }
    cc.extension_channels = c.extension_channels;
    cc.trunk_channels = c.trunk_channels;
    if let Some(t) = c.trunk_contexts {
        cc.trunk_contexts = t;
    }
    cc.endpoint_extensions = c.endpoint_extensions;
    match Classifier::new(&cc) {
        Ok(c) => c,
        Err(es) => {
            for e in es {
                errors.push(Problem::new(
                    At::root().key("classify").join(&At::parse(e.field)),
                    format!("invalid regex {:?}: {}", e.pattern, e.source),
                ));
            }
            Classifier::default()
        }
    }
}

/// `calls:`: the maximum number of live calls per PBX or team.
pub(crate) fn max_live(c: &RawCalls, default: usize, errors: &mut Vec<Problem>) -> usize {
    match c.max_live {
        None => default,
        Some(0) => {
            errors.push(Problem::new(
                At::root().key("calls").key("max_live"),
                "must be at least 1",
            ));
            default
        }
        Some(n) => n,
    }
}

/// `calls:`: (max_age, orphan_grace) in seconds.
pub(crate) fn calls(c: &RawCalls, defaults: (f64, f64), errors: &mut Vec<Problem>) -> (f64, f64) {
    let at = At::root().key("calls");
    (
        duration(
            &c.max_age,
            at.key("max_age"),
            Duration::from_secs_f64(defaults.0),
            errors,
        )
        .as_secs_f64(),
        duration(
            &c.orphan_grace,
            at.key("orphan_grace"),
            Duration::from_secs_f64(defaults.1),
            errors,
        )
        .as_secs_f64(),
    )
}

/// `admin:`: the token.
pub(crate) fn admin(
    a: Option<&RawAdmin>,
    base_dir: &Path,
    errors: &mut Vec<Problem>,
) -> Option<Secret> {
    let a = a?;
    secret(
        a.token.as_ref(),
        a.token_file.as_ref(),
        &At::root().key("admin"),
        ("token", "token_file"),
        base_dir,
        errors,
    )
    .filter(|t| !t.expose().is_empty())
}

/// `admin.listen` and `admin.max_connections`: the admin listener and its cap.
pub(crate) fn admin_listener(
    a: Option<&RawAdmin>,
    listen: Option<SocketAddr>,
    errors: &mut Vec<Problem>,
) -> (Option<SocketAddr>, usize) {
    let at = At::root().key("admin");
    let default = crate::http::limits::DEFAULT_ADMIN_MAX_CONNECTIONS;
    let Some(a) = a else { return (None, default) };
    let addr = match a.listen.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(l) => match crate::values::parse_listen_addr(l) {
            Some(addr) if listen.is_some_and(|m| m.port() == addr.port() && addr.port() != 0) => {
                errors.push(
                    Problem::new(
                        at.key("listen"),
                        format!("{l:?} uses the same port as listen"),
                    )
                    .hint("give the admin listener its own port, e.g. 127.0.0.1:9189"),
                );
                None
            }
            Some(addr) => Some(addr),
            None => {
                errors.push(
                    Problem::new(at.key("listen"), format!("{l:?} is not an address"))
                        .hint("write host:port (127.0.0.1:9189), or a port for 127.0.0.1"),
                );
                None
            }
        },
    };
    let max = match a.max_connections {
        None => default,
        Some(0) => {
            errors.push(
                Problem::new(at.key("max_connections"), "must be at least 1").hint("e.g. 64"),
            );
            default
        }
        Some(n) => n,
    };
    (addr, max)
}

/// `outbox:`.
pub(crate) fn outbox(o: Option<&RawOutbox>, errors: &mut Vec<Problem>) -> OutboxOptions {
    let mut out = OutboxOptions::default();
    let Some(o) = o else { return out };
    let at = At::root().key("outbox");
    if let Some(m) = o.max_rows {
        out.max_rows = m.max(1);
    }
    out.done_retention = duration(
        &o.done_retention,
        at.key("done_retention"),
        out.done_retention,
        errors,
    );
    out.dedupe_window = duration(
        &o.dedupe_window,
        at.key("dedupe_window"),
        out.dedupe_window,
        errors,
    );
    out
}
