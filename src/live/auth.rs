//! Who is connecting: a tenant key plus an extension (as Meetip does), or a
//! short-lived signed ticket a CRM mints server-side so that the tenant key
//! never reaches the browser.
//!
//! **Ticket** = `v1.<payload>.<signature>`, both parts base64url without
//! padding; the payload is the JSON `{"t":tenant,"e":extension,"s":scope,
//! "x":expiry}` (`s` is `agent` or `monitor`, `x` epoch seconds) and the
//! signature is `HMAC-SHA256(tenant key, "v1." + payload)`. Any language can
//! mint one (see the README); `POST /v1/tickets` mints one for a caller
//! holding the key. Verification: the tenant is read from the payload, the
//! signature checked in constant time (`hmac`'s `verify_slice`), then the
//! expiry. Keys are compared in constant time too (SHA-256 of both sides,
//! then byte-wise without early exit), so neither content nor length leaks.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::{LiveConfig, Tenant};

/// What a credential grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One extension: its own state, calls and click-to-call.
    Agent,
    /// Every extension of the tenant (read only: no click-to-call).
    Monitor,
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant (PBX id / push team).
    pub tenant: String,
    /// The extension (the monitor extension for the monitor scope).
    pub extension: String,
    /// What it may see and do.
    pub scope: Scope,
}

impl Principal {
    /// Whether events of `extension` are for this user.
    pub fn sees(&self, extension: &str) -> bool {
        self.scope == Scope::Monitor || self.extension == extension
    }
}

/// Why a credential was refused (each has its WebSocket close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Nothing was presented.
    #[error("no credential")]
    Missing,
    /// Unknown tenant, wrong key, bad signature, malformed ticket.
    #[error("bad credential")]
    Bad,
    /// A valid ticket past its expiry.
    #[error("ticket expired")]
    Expired,
}

impl AuthError {
    /// The close code (4001 missing, 4002 bad, 4003 expired).
    pub fn close_code(self) -> u16 {
        match self {
            AuthError::Missing => 4001,
            AuthError::Bad => 4002,
            AuthError::Expired => 4003,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Bad => "bad_credential",
            AuthError::Expired => "expired",
        }
    }
}

/// Close code of a client protocol error.
pub const CLOSE_PROTOCOL: u16 = 4004;
/// Close code of a client too slow to keep up.
pub const CLOSE_SLOW: u16 = 4008;
/// Close code when a limit is reached (clients per tenant/total).
pub const CLOSE_LIMIT: u16 = 4029;
/// Close code of a missed heartbeat.
pub const CLOSE_HEARTBEAT: u16 = 4009;

/// Constant-time equality of two secrets (any lengths).
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

#[derive(Serialize, Deserialize)]
struct Payload {
    t: String,
    e: String,
    s: Scope,
    x: u64,
}

fn sign(key: &str, signed: &str) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).ok()?;
    mac.update(signed.as_bytes());
    Some(mac)
}

/// Mints a ticket for `extension` of `tenant`, valid until `expiry` (epoch s).
pub fn mint(tenant: &Tenant, extension: &str, scope: Scope, expiry: u64) -> String {
    let p = Payload {
        t: tenant.id.clone(),
        e: extension.to_string(),
        s: scope,
        x: expiry,
    };
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&p).unwrap_or_default());
    let signed = format!("v1.{payload}");
    let sig = sign(tenant.key.expose(), &signed)
        .map(|m| URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("{signed}.{sig}")
}

/// Checks a ticket at time `now` (epoch seconds).
pub fn verify_ticket(cfg: &LiveConfig, ticket: &str, now: u64) -> Result<Principal, AuthError> {
    if ticket.len() > 2048 {
        return Err(AuthError::Bad);
    }
    let mut parts = ticket.trim().splitn(3, '.');
    let (Some("v1"), Some(payload), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Bad);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Bad)?;
    let p: Payload = serde_json::from_slice(&bytes).map_err(|_| AuthError::Bad)?;
    let tenant = cfg.tenants.get(&p.t).ok_or(AuthError::Bad)?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| AuthError::Bad)?;
    let mac = sign(tenant.key.expose(), &format!("v1.{payload}")).ok_or(AuthError::Bad)?;
    mac.verify_slice(&sig).map_err(|_| AuthError::Bad)?;
    if p.x <= now {
        return Err(AuthError::Expired);
    }
    if p.x > now + cfg.ticket_max_ttl.as_secs() + 60 {
        // Longer than allowed: minted with another policy (or forged with a leaked key).
        return Err(AuthError::Bad);
    }
    if p.e.is_empty() || p.e.len() > 64 {
        return Err(AuthError::Bad);
    }
    Ok(Principal {
        tenant: p.t,
        extension: p.e,
        scope: p.s,
    })
}

/// Checks a tenant key for `extension`; the tenant's monitor extension
/// gets the monitor scope.
pub fn verify_key(
    cfg: &LiveConfig,
    tenant: &str,
    extension: &str,
    key: &str,
) -> Result<Principal, AuthError> {
    if tenant.is_empty() && extension.is_empty() && key.is_empty() {
        return Err(AuthError::Missing);
    }
    let t = cfg.tenants.get(tenant).ok_or(AuthError::Bad)?;
    // Compare even for an invalid extension: same work either way.
    let ok = secret_eq(key.as_bytes(), t.key.expose().as_bytes());
    if !ok || !valid_extension(extension) {
        return Err(AuthError::Bad);
    }
    let scope = if extension == t.monitor_extension {
        Scope::Monitor
    } else {
        Scope::Agent
    };
    Ok(Principal {
        tenant: tenant.to_string(),
        extension: extension.to_string(),
        scope,
    })
}

/// An extension as users write it: 1–32 of `[0-9A-Za-z_*#+-]`.
pub fn valid_extension(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= 32
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'*' | b'#' | b'+' | b'-'))
}

/// The credential of a request, from (in order) a ticket (query `ticket`,
/// `Sec-WebSocket-Protocol: callhook, ticket.<T>`, `Authorization: Bearer
/// <T>`), then a key (query `tenant`/`extension`/`key`, or `Authorization:
/// Basic` with user `tenant/extension` and the key as password).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct CredentialQuery {
    /// A ticket.
    pub ticket: Option<String>,
    /// Tenant id.
    pub tenant: Option<String>,
    /// Extension.
    pub extension: Option<String>,
    /// Tenant key.
    pub key: Option<String>,
}

/// Authenticates a request from its query and headers.
pub fn authenticate(
    cfg: &LiveConfig,
    q: &CredentialQuery,
    headers: &axum::http::HeaderMap,
    now: u64,
) -> Result<Principal, AuthError> {
    if let Some(t) = q.ticket.as_deref().filter(|t| !t.is_empty()) {
        return verify_ticket(cfg, t, now);
    }
    if let Some(t) = protocol_ticket(headers) {
        return verify_ticket(cfg, &t, now);
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(t) = auth.strip_prefix("Bearer ") {
        return verify_ticket(cfg, t.trim(), now);
    }
    if let Some(b) = auth.strip_prefix("Basic ") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|_| AuthError::Bad)?;
        let s = String::from_utf8(raw).map_err(|_| AuthError::Bad)?;
        let (user, key) = s.split_once(':').ok_or(AuthError::Bad)?;
        let (tenant, ext) = user.split_once('/').ok_or(AuthError::Bad)?;
        return verify_key(cfg, tenant, ext, key);
    }
    verify_key(
        cfg,
        q.tenant.as_deref().unwrap_or(""),
        q.extension.as_deref().unwrap_or(""),
        q.key.as_deref().unwrap_or(""),
    )
}

/// `Sec-WebSocket-Protocol: callhook, ticket.<T>` → `<T>`.
pub fn protocol_ticket(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix("ticket.").map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn cfg() -> LiveConfig {
        let mut c = LiveConfig::default();
        for (id, key) in [
            ("main", "main-key-0123456789"),
            ("other", "other-key-0123456789"),
        ] {
            c.tenants.insert(
                id.into(),
                Tenant {
                    id: id.into(),
                    key: Secret::new(key),
                    code: 1,
                    monitor_extension: "999".into(),
                    channel: "SIP/{extension}".into(),
                    context: "from-internal".into(),
                },
            );
        }
        c
    }

    #[test]
    fn tickets_round_trip_expire_and_resist_tampering() {
        let c = cfg();
        let t = mint(&c.tenants["main"], "1001", Scope::Agent, 1000);
        let p = verify_ticket(&c, &t, 900).unwrap();
        assert_eq!(
            (p.tenant.as_str(), p.extension.as_str(), p.scope),
            ("main", "1001", Scope::Agent)
        );
        assert_eq!(verify_ticket(&c, &t, 1000), Err(AuthError::Expired));
        // Another payload with the old signature.
        let forged = mint(&c.tenants["main"], "1002", Scope::Monitor, 1000);
        let (head, _) = forged.rsplit_once('.').unwrap();
        let (_, sig) = t.rsplit_once('.').unwrap();
        assert_eq!(
            verify_ticket(&c, &format!("{head}.{sig}"), 900),
            Err(AuthError::Bad)
        );
        // Signed with another tenant's key but claiming main.
        let mut wrong = c.tenants["other"].clone();
        wrong.id = "main".into();
        assert_eq!(
            verify_ticket(&c, &mint(&wrong, "1001", Scope::Agent, 1000), 900),
            Err(AuthError::Bad)
        );
        for junk in ["", "v1", "v1..", "v2.a.b", "v1.!!!.x", &"v1.".repeat(1000)] {
            assert_eq!(verify_ticket(&c, junk, 900), Err(AuthError::Bad), "{junk}");
        }
        // Far beyond the maximum validity.
        let long = mint(&c.tenants["main"], "1001", Scope::Agent, 900 + 10 * 3600);
        assert_eq!(verify_ticket(&c, &long, 900), Err(AuthError::Bad));
    }

    #[test]
    fn keys() {
        let c = cfg();
        assert_eq!(
            verify_key(&c, "main", "1001", "main-key-0123456789").map(|p| p.scope),
            Ok(Scope::Agent)
        );
        assert_eq!(
            verify_key(&c, "main", "999", "main-key-0123456789").map(|p| p.scope),
            Ok(Scope::Monitor)
        );
        assert_eq!(
            verify_key(&c, "main", "1001", "other-key-0123456789"),
            Err(AuthError::Bad)
        );
        assert_eq!(
            verify_key(&c, "nope", "1001", "main-key-0123456789"),
            Err(AuthError::Bad)
        );
        assert_eq!(
            verify_key(&c, "main", "10 01", "main-key-0123456789"),
            Err(AuthError::Bad)
        );
        assert_eq!(verify_key(&c, "", "", ""), Err(AuthError::Missing));
        assert!(secret_eq(b"a", b"a") && !secret_eq(b"a", b"ab"));
    }
}
