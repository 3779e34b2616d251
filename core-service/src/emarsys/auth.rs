//! The Emarsys webhook's own authentication: the shared secret in the `secret` query parameter
//! (forwarded by the gateway as `x-emarsys-secret` metadata), or an HS256 JWT signed with it in
//! `Authorization: Bearer`. Without a configured secret the path is open, as documented.

use std::collections::HashSet;

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;

use crate::config::Secret;

/// Metadata carrying the `secret` query parameter.
pub const SECRET_METADATA: &str = "x-emarsys-secret";
/// Clock skew tolerated for `exp` and `iat`, in seconds.
const LEEWAY_SECONDS: u64 = 60;

#[derive(Clone, Default)]
pub struct EmarsysAuth {
    secret: Option<Secret>,
}

impl EmarsysAuth {
    pub fn new(secret: Option<Secret>) -> Self {
        Self {
            secret: secret.filter(|secret| !secret.expose().is_empty()),
        }
    }

    pub fn verify(&self, headers: &HeaderMap) -> Result<(), Status> {
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        if let Some(sent) = headers
            .get(SECRET_METADATA)
            .and_then(|value| value.to_str().ok())
        {
            return if equal_in_constant_time(sent, secret.expose()) {
                Ok(())
            } else {
                Err(Status::unauthenticated("the secret does not match"))
            };
        }
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(char::is_whitespace))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        match bearer {
            Some(token) => verify_jwt(token, secret.expose()),
            None => Err(Status::unauthenticated(
                "missing secret: send the secret query parameter or an HS256 JWT as Authorization: Bearer",
            )),
        }
    }
}

/// Compares digests, so that neither the content nor the length of the secret leaks through
/// timing.
fn equal_in_constant_time(sent: &str, expected: &str) -> bool {
    let sent = Sha256::digest(sent.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    sent.ct_eq(&expected).into()
}

fn verify_jwt(token: &str, secret: &str) -> Result<(), Status> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECONDS;
    // The token is signed with this endpoint's own secret; an audience (or issuer) it names is
    // not ours to check, and the library would refuse any `aud` when none is configured.
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|_| Status::unauthenticated("the JWT is invalid or expired"))?
    .claims;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default();
    match claims.get("iat").and_then(serde_json::Value::as_u64) {
        Some(issued) if issued > now + LEEWAY_SECONDS => {
            Err(Status::unauthenticated("the JWT was issued in the future"))
        }
        _ => Ok(()),
    }
}
