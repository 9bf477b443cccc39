//! Logs: where they go (stderr), how they look (text or JSON lines), how
//! much (a level or `tracing` filter), and the `log:` config section.
//!
//! Precedence, highest first: the command line (`--log-format`), the
//! environment (`CALLHOOK_LOG` for the level, `CALLHOOK_LOG_FORMAT`), the
//! config file's `log:` section, the defaults (text, `info`).
//!
//! Text logs carry ANSI colours only when stderr is a terminal and
//! `NO_COLOR` is unset or empty (<https://no-color.org>): under systemd, in
//! a pipe or a file they are plain text. JSON logs are one object per line
//! (`timestamp`, `level`, `target`, `message` and the event's fields, e.g.
//! `pbx`), never coloured.

use std::io::IsTerminal;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// The default level when nothing says otherwise.
pub const DEFAULT_LEVEL: &str = "info";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (`2026-05-01T10:00:00.123Z  INFO callhook::ami::client: …`).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Parses `text` / `json` (any case).
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The `log:` section of the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: Option<LogFormat>,
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or a `tracing`
    /// filter (`info,callhook::deliver=debug`). Default `info`.
    pub level: Option<String>,
}

/// Validated log settings (what the config says; the command line and
/// environment may still override them in [`init`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSettings {
    /// Format from the config, if set.
    pub format: Option<LogFormat>,
    /// Filter from the config, if set (checked to parse).
    pub level: Option<String>,
}

/// A problem in the `log:` section: the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log.{field}: {message}")]
pub struct LogConfigError {
    /// The key inside `log:` (`level`).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: &'static str,
}

impl LogConfig {
    /// Checks the section.
    pub fn validate(self) -> Result<LogSettings, LogConfigError> {
        if let Some(l) = &self.level {
            check_filter(l).map_err(|message| LogConfigError {
                field: "level",
                message,
                hint: "one of off, error, warn, info, debug, trace, or a filter such as info,callhook::deliver=debug",
            })?;
        }
        Ok(LogSettings {
            format: self.format,
            level: self.level,
        })
    }
}

fn check_filter(s: &str) -> Result<EnvFilter, String> {
    if s.trim().is_empty() {
        return Err("is empty".into());
    }
    // A bare word is a target for `tracing` (`loud` would mean "everything
    // from a module called loud"): here it must be a level.
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !d.contains(['=', '[']) && !LEVELS.contains(&d.to_ascii_lowercase().as_str()) {
            return Err(format!("{d:?} is not a log level"));
        }
    }
    let f = EnvFilter::builder()
        .parse(s)
        .map_err(|e| format!("{s:?} is not a log level or filter ({e})"))?;
    Ok(quiet_template_engine(f, s))
}

/// The template engine's own debug and trace lines print the values it
/// renders, the rule set's secrets (`{{env.CRM_TOKEN}}`) among them: it
/// logs at `warn` at most unless the filter names it (`handlebars=debug`).
fn quiet_template_engine(f: EnvFilter, spec: &str) -> EnvFilter {
    if spec.contains("handlebars") {
        return f;
    }
    match "handlebars=warn".parse() {
        Ok(d) => f.add_directive(d),
        Err(_) => f,
    }
}

/// True when text logs should be coloured: stderr is a terminal and
/// `NO_COLOR` is unset or empty.
pub fn use_colour() -> bool {
    colour_allowed(
        std::env::var_os("NO_COLOR").as_deref(),
        std::io::stderr().is_terminal(),
    )
}

fn colour_allowed(no_color: Option<&std::ffi::OsStr>, terminal: bool) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global logger on stderr. `format` is the command line's
/// choice (`--log-format`, which also reads `CALLHOOK_LOG_FORMAT`);
/// `settings` the config's. Returns a warning to show when the
/// environment held an unusable value (it is ignored). Calling it again is
/// a no-op (the first logger stays).
pub fn init(format: Option<LogFormat>, settings: &LogSettings) -> Option<String> {
    let mut warning = None;
    let format = format.or(settings.format).unwrap_or_default();
    let env_level = std::env::var("CALLHOOK_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let filter = match env_level.as_deref().map(check_filter) {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            warning = Some(format!("CALLHOOK_LOG: {e}: ignored"));
            config_filter(settings)
        }
        None => config_filter(settings),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(use_colour()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_ansi(false)
            .try_init(),
    };
    warning
}

fn config_filter(settings: &LogSettings) -> EnvFilter {
    settings
        .level
        .as_deref()
        .and_then(|l| check_filter(l).ok())
        .unwrap_or_else(|| quiet_template_engine(EnvFilter::new(DEFAULT_LEVEL), DEFAULT_LEVEL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_allowed(None, true));
        assert!(colour_allowed(Some(OsStr::new("")), true));
        assert!(!colour_allowed(Some(OsStr::new("1")), true));
        assert!(!colour_allowed(None, false));
    }

    #[test]
    fn levels_and_filters_are_checked() {
        let ok = |l: &str| {
            LogConfig {
                format: None,
                level: Some(l.into()),
            }
            .validate()
        };
        assert!(ok("debug").is_ok());
        assert!(ok("info,callhook::deliver=trace").is_ok());
        let e = ok("loud").unwrap_err();
        assert_eq!(e.field, "level");
        assert!(ok("").is_err());
        assert_eq!(LogFormat::parse("JSON"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("xml"), None);
    }
}
