//! The `meetip:` config section.
//!
//! ```yaml
//! meetip:
//!   listen: 0.0.0.0:8089        # its own listener (any path), or
//!   path: /meetip               # a path on `listen` (default when no listen)
//!   fast_reconnect: 10m         # window of the "(ID?,CONECTADO)" phase
//!   logins_per_minute: 10       # login attempts per address
//!   texts: { calling: "Llamando...", ... }   # every text below
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::values::{parse_duration, parse_listen_addr};
use crate::yaml::{Path as At, Problem};

/// Every text the server sends (Spanish defaults, as Meetip PRO).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Texts {
    /// First connect: `(???,CONECTADO)`.
    pub connected: String,
    /// Connect within the fast-reconnect window: `(ID?,CONECTADO)`.
    pub connected_again: String,
    /// Own state: ringing (`-Timbre`).
    pub ringing: String,
    /// Own state: busy (`-Ocupado`).
    pub busy: String,
    /// Own state: free (`-Libre`).
    pub free: String,
    /// Own state: unregistered or unreachable (`-No disponible`; Meetip has
    /// no word for it; empty: no line).
    pub unavailable_state: String,
    /// Click-to-call: own phone picked up, number being called.
    pub calling: String,
    /// Click-to-call: the extension is busy.
    pub extension_busy: String,
    /// Click-to-call: not picked up in time.
    pub timeout: String,
    /// Click-to-call: anything else.
    pub unavailable: String,
    /// Wrong key / unknown tenant / bad extension.
    pub bad_login: String,
    /// Too many login attempts from the address.
    pub too_many_logins: String,
    /// The monitor extension tried to call.
    pub monitor_cannot_call: String,
    /// `(estado,<ext>-…)` words.
    pub status_free: String,
    /// See `status_free`.
    pub status_busy: String,
    /// See `status_free`.
    pub status_ringing: String,
    /// See `status_free` (unregistered / unreachable).
    pub status_unavailable: String,
    /// Monitor line states.
    pub monitor_ringing: String,
    /// See `monitor_ringing`.
    pub monitor_busy: String,
    /// See `monitor_ringing`.
    pub monitor_free: String,
    /// See `monitor_ringing`.
    pub monitor_ended: String,
    /// Monitor line of an unregistered or unreachable extension (Meetip has
    /// no word for it; default `Ocupada`, so a board never offers it as
    /// free; empty: no line).
    pub monitor_unavailable: String,
}

impl Default for Texts {
    fn default() -> Self {
        let s = |v: &str| v.to_string();
        Self {
            connected: s("(???,CONECTADO)"),
            connected_again: s("(ID?,CONECTADO)"),
            ringing: s("-Timbre"),
            busy: s("-Ocupado"),
            free: s("-Libre"),
            unavailable_state: s("-No disponible"),
            calling: s("Llamando..."),
            extension_busy: s("Ocupado"),
            timeout: s("Tiempo de espera agotado"),
            unavailable: s("No disponible"),
            bad_login: s("Error de autenticacion"),
            too_many_logins: s("Demasiados intentos"),
            monitor_cannot_call: s("El monitor no puede llamar"),
            status_free: s("libre"),
            status_busy: s("ocupado"),
            status_ringing: s("timbre"),
            status_unavailable: s("no disponible"),
            monitor_ringing: s("Timbre"),
            monitor_busy: s("Ocupada"),
            monitor_free: s("Libre"),
            monitor_ended: s("terminada"),
            monitor_unavailable: s("Ocupada"),
        }
    }
}

/// `meetip:` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawMeetip {
    /// Own listener.
    pub listen: Option<String>,
    /// Path on `listen` (default `/meetip`).
    pub path: Option<String>,
    /// Fast-reconnect window (duration, default 10 min).
    pub fast_reconnect: Option<String>,
    /// Login attempts per minute per address (default 10).
    pub logins_per_minute: Option<u32>,
    /// Texts.
    #[serde(default)]
    pub texts: Texts,
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct MeetipConfig {
    /// Own listener, if any.
    pub listen: Option<SocketAddr>,
    /// Path on the main listener (when no own listener).
    pub path: String,
    /// Fast-reconnect window.
    pub fast_reconnect: Duration,
    /// Login attempts per minute per address.
    pub logins_per_minute: u32,
    /// Texts.
    pub texts: Texts,
}

impl Default for MeetipConfig {
    fn default() -> Self {
        Self {
            listen: None,
            path: "/meetip".into(),
            fast_reconnect: Duration::from_secs(600),
            logins_per_minute: 10,
            texts: Texts::default(),
        }
    }
}

impl RawMeetip {
    /// Checks the section.
    pub fn validate(self, errors: &mut Vec<Problem>) -> MeetipConfig {
        let d = MeetipConfig::default();
        let err = |path: &str, message: String, hint: &str| {
            Problem::new(At::parse(path), message).hint(hint)
        };
        let listen = self.listen.as_deref().and_then(|l| {
            let a = parse_listen_addr(l);
            if a.is_none() {
                errors.push(err(
                    "meetip.listen",
                    format!("{l:?} is not an address"),
                    "host:port, e.g. 0.0.0.0:8089",
                ));
            }
            a
        });
        let path = self.path.unwrap_or(d.path);
        if !path.starts_with('/') {
            errors.push(err(
                "meetip.path",
                format!("{path:?} does not start with /"),
                "e.g. /meetip",
            ));
        }
        let fast_reconnect = match &self.fast_reconnect {
            None => d.fast_reconnect,
            Some(s) => parse_duration(s).unwrap_or_else(|| {
                errors.push(err(
                    "meetip.fast_reconnect",
                    format!("{s:?} is not a duration"),
                    "e.g. 10m",
                ));
                d.fast_reconnect
            }),
        };
        MeetipConfig {
            listen,
            path,
            fast_reconnect,
            logins_per_minute: self.logins_per_minute.unwrap_or(d.logins_per_minute).max(1),
            texts: self.texts,
        }
    }
}
