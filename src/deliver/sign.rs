//! Standard Webhooks signing (HMAC-SHA256, `v1`).
//!
//! When a target has `signing:`, every attempt carries three headers:
//!
//! - `webhook-id`: the delivery's `event_id`, identical across retries,
//!   restarts and replays, so the receiver can use it as its idempotency key;
//! - `webhook-timestamp`: unix seconds of *this* attempt (receivers refuse
//!   stale timestamps, typically beyond ±5 min, so it is renewed per attempt);
//! - `webhook-signature`: `v1,` + base64(HMAC-SHA256(key, `{id}.{timestamp}.{body}`)).
//!
//! The key is the base64-decoded part after `whsec_`; a secret without that
//! prefix is used as raw bytes. Headers other than these three are not signed
//! (Standard Webhooks leaves them out on purpose: proxies rewrite them). The
//! implementation passes the specification's published test vector.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A signing key (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Reads a secret: `whsec_<base64>` (decoded) or anything else (raw bytes).
    pub fn from_secret(secret: &str) -> Result<Self, String> {
        let key = match secret.strip_prefix("whsec_") {
            Some(b64) => STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("the part after whsec_ is not valid base64: {e}"))?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err("the signing key is empty".into());
        }
        Ok(Self(key))
    }

    /// The `webhook-signature` value for one attempt: `v1,<base64>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vector() {
        let k = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            k.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(!format!("{k:?}").contains("MfKQ"));
    }

    #[test]
    fn raw_secrets_and_bad_base64() {
        let raw = SigningKey::from_secret("plain-secret").unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"plain-secret").unwrap();
        mac.update(b"id.5.body");
        let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(raw.sign("id", 5, b"body"), want);
        assert!(SigningKey::from_secret("whsec_***").is_err());
        assert!(SigningKey::from_secret("").is_err());
        assert!(SigningKey::from_secret("whsec_").is_err());
    }
}
