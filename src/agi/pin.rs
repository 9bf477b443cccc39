//! PIN-protected routes, as Asterisk's `Authenticate()` does it: answer,
//! prompt, collect digits, compare, three tries, then goodbye and hang up.
//!
//! ```yaml
//! pin:
//!   hash: "$argon2id$v=19$m=19456,t=2,p=1$…"   # or ${INTL_PIN_HASH}; argon2id/argon2i/argon2d PHC string
//!   prompt: agent-pass        # GET DATA prompt (default agent-pass, as Authenticate())
//!   invalid: auth-incorrect   # played after a wrong PIN (default auth-incorrect)
//!   goodbye: vm-goodbye       # played after the last wrong PIN (default vm-goodbye)
//!   tries: 3                  # default 3
//!   max_digits: 8             # GET DATA's digit limit (default 10); # ends entry early
//!   timeout: 5s               # GET DATA's timeout (default 5s)
//! ```
//!
//! The PIN is never in the configuration, only its argon2 hash (make one
//! with `callhook hash-pin`, or any argon2 tool that prints a PHC
//! string). Hashing runs off the async threads. Every wrong PIN is logged
//! (route, channel, caller; never the digits) and counted in
//! `callhook_agi_auth_failures_total{route,reason="pin"}`; after the last
//! one the call is hung up (`HANGUP`) and the session closed. A 4-digit PIN
//! has only 10 000 values: the hash keeps it out of the file, not safe
//! from a guesser who has the file, so keep the file private.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::action::{ChannelState, Runner};
use super::call::AgiCall;
use super::config::{expand, Build};
use super::session::{Session, SessionError};
use crate::rules::Scalar;

/// `pin:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPin {
    /// The PHC hash.
    pub hash: String,
    /// Prompt (default `agent-pass`).
    pub prompt: Option<String>,
    /// After a wrong PIN (default `auth-incorrect`).
    pub invalid: Option<String>,
    /// After the last wrong PIN (default `vm-goodbye`).
    pub goodbye: Option<String>,
    /// Tries (default 3).
    pub tries: Option<u32>,
    /// Most digits (default 10).
    pub max_digits: Option<u32>,
    /// GET DATA timeout (default 5s).
    pub timeout: Option<Scalar>,
}

/// A validated PIN check.
#[derive(Clone)]
pub struct Pin {
    hash: Arc<str>,
    /// Prompt.
    pub prompt: String,
    /// After a wrong PIN.
    pub invalid: String,
    /// After the last one.
    pub goodbye: String,
    /// Tries.
    pub tries: u32,
    /// Digit limit.
    pub max_digits: u32,
    /// GET DATA timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pin")
            .field("prompt", &self.prompt)
            .field("tries", &self.tries)
            .finish_non_exhaustive()
    }
}

/// Checks a PHC string: parsable, and an argon2 variant.
pub fn check_hash(h: &str) -> Result<(), String> {
    let p = PasswordHash::new(h).map_err(|e| format!("not a PHC hash string ({e})"))?;
    match p.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => {}
        other => {
            return Err(format!(
                "unsupported hash algorithm {other:?}: use argon2id"
            ))
        }
    }
    if p.hash.is_none() || p.salt.is_none() {
        return Err("the hash string has no salt or no hash".into());
    }
    Ok(())
}

/// Hashes a PIN (argon2id, default parameters, random salt).
pub fn hash_pin(pin: &str) -> Result<String, String> {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let salt = SaltString::encode_b64(&bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(pin.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify(hash: &str, pin: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(pin.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// How authentication ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    /// The right PIN.
    Accepted,
    /// Every try was wrong: the call was hung up.
    Refused,
    /// The caller hung up first.
    Gone,
}

impl Pin {
    /// A PIN check from its parts (validated by the config layer).
    pub fn new(raw: &RawPin, hash: String, timeout: Duration) -> Self {
        Self {
            hash: hash.into(),
            prompt: raw.prompt.clone().unwrap_or_else(|| "agent-pass".into()),
            invalid: raw
                .invalid
                .clone()
                .unwrap_or_else(|| "auth-incorrect".into()),
            goodbye: raw.goodbye.clone().unwrap_or_else(|| "vm-goodbye".into()),
            tries: raw.tries.unwrap_or(3),
            max_digits: raw.max_digits.unwrap_or(10),
            timeout,
        }
    }

    /// Whether `pin` is right (blocking work on the blocking pool).
    pub async fn matches(&self, pin: String) -> bool {
        let hash = self.hash.clone();
        tokio::task::spawn_blocking(move || verify(&hash, &pin))
            .await
            .unwrap_or(false)
    }

    /// Prompts up to `tries` times; on the last failure plays goodbye and
    /// hangs up.
    pub async fn authenticate<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        run: &Runner<'_>,
        s: &mut Session<R, W>,
        st: &mut ChannelState,
        call: &AgiCall,
    ) -> Result<PinOutcome, SessionError> {
        run.answer(s, st).await?;
        let m = &crate::metrics::metrics().agi;
        let per_try = (self.timeout * (self.max_digits + 1) + run.settings.media_timeout)
            .min(Duration::from_secs(600));
        for attempt in 1..=self.tries {
            if s.is_dead() {
                return Ok(PinOutcome::Gone);
            }
            let deadline = (Instant::now() + per_try).min(run.session_deadline);
            let r = s
                .command(
                    &format!(
                        "GET DATA {} {} {}",
                        self.prompt,
                        self.timeout.as_millis(),
                        self.max_digits
                    ),
                    deadline,
                )
                .await?;
            let digits = r.result.clone().unwrap_or_default();
            if s.is_dead() || r.result_int() == Some(-1) || !r.is_success() {
                return Ok(PinOutcome::Gone);
            }
            if !digits.is_empty() && self.matches(digits).await {
                tracing::info!(route = %run.route, channel = %call.channel, attempt, "AGI PIN accepted");
                return Ok(PinOutcome::Accepted);
            }
            m.auth_failures.with_label_values(&[run.route, "pin"]).inc();
            tracing::warn!(
                route = %run.route,
                channel = %call.channel,
                caller = %call.caller.as_deref().unwrap_or(""),
                extension = %call.extension.as_deref().unwrap_or(""),
                attempt,
                tries = self.tries,
                "AGI wrong PIN"
            );
            let media = (Instant::now() + run.settings.media_timeout).min(run.session_deadline);
            s.command(&format!("STREAM FILE {} \"\"", self.invalid), media)
                .await?;
        }
        if !s.is_dead() {
            let media = (Instant::now() + run.settings.media_timeout).min(run.session_deadline);
            s.command(&format!("STREAM FILE {} \"\"", self.goodbye), media)
                .await?;
        }
        if !s.is_dead() {
            let quick = (Instant::now() + run.settings.command_timeout).min(run.session_deadline);
            s.command("HANGUP", quick).await?;
        }
        Ok(PinOutcome::Refused)
    }
}

/// Checks and compiles `compile`.
pub(super) fn compile(b: &mut Build, p: &RawPin, at: &str) -> Option<Pin> {
    let hash = expand(&p.hash, &format!("{at}.hash"), b);
    let mut ok = true;
    if let Err(e) = check_hash(&hash) {
        b.push(
            format!("{at}.hash"),
            e,
            Some("make one with `callhook hash-pin`"),
            None,
        );
        ok = false;
    }
    for (k, v) in [
        ("prompt", &p.prompt),
        ("invalid", &p.invalid),
        ("goodbye", &p.goodbye),
    ] {
        if let Some(f) = v {
            let valid = !f.is_empty()
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
                && !f.starts_with('/');
            if !valid {
                b.push(
                    format!("{at}.{k}"),
                    format!("{f:?} is not a sound file name"),
                    None,
                    Some(f),
                );
                ok = false;
            }
        }
    }
    if p.tries.is_some_and(|t| !(1..=10).contains(&t)) {
        b.push(format!("{at}.tries"), "must be 1 to 10", None, None);
        ok = false;
    }
    if p.max_digits.is_some_and(|t| !(1..=32).contains(&t)) {
        b.push(format!("{at}.max_digits"), "must be 1 to 32", None, None);
        ok = false;
    }
    let timeout = b.duration(
        &p.timeout,
        &format!("{at}.timeout"),
        Duration::from_secs(5),
        Duration::from_millis(500),
        Duration::from_secs(60),
    );
    ok.then(|| Pin::new(p, hash, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_bad_hashes_are_refused() {
        // Small parameters keep the test fast; verify reads them from the string.
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let h = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"4711", &salt)
            .unwrap()
            .to_string();
        assert!(check_hash(&h).is_ok());
        assert!(verify(&h, "4711"));
        assert!(!verify(&h, "4712"));
        assert!(!verify(&h, ""));
        assert!(check_hash("4711").is_err());
        assert!(check_hash("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
        assert!(check_hash("$argon2id$v=19$m=64,t=1,p=1").is_err());
    }
}
