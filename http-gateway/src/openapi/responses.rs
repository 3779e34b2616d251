//! Error responses per route family, for `responses(...)` of the path annotations.
//!
//! Statuses follow [`crate::error::http_status`] (grpc-gateway's table) and the gateway's own
//! errors (413 from the body limit, 429 from the rate limit on the compat and legacy paths).
//! There is no 415 (any content type is read as JSON, SPEC §2) and no 422 (a body of the wrong
//! shape is a 400 naming the field).

#![allow(
    dead_code,
    reason = "describes responses built by ApiError::render; never constructed"
)]

use utoipa::IntoResponses;

use super::schemas::{AdminError, CompatError, LegacyError};

/// Errors of the `/compat/*` paths.
#[derive(IntoResponses)]
pub enum CompatErrors {
    /// A field is missing or wrong, or the body is not a JSON object; `error.field` names the
    /// first wrong field.
    #[response(status = 400)]
    BadRequest(CompatError),
    /// No API key, or an unknown, expired or revoked one.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"switchbord\"`")))]
    Unauthenticated(CompatError),
    /// The key's role may not do this.
    #[response(status = 403)]
    PermissionDenied(CompatError),
    /// The phone number and the external reference id name two different contacts.
    #[response(status = 409)]
    Conflict(CompatError),
    /// The body is larger than 1 MiB.
    #[response(status = 413)]
    PayloadTooLarge(CompatError),
    /// More than the per-client-IP limit (100 per minute by default).
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    RateLimited(CompatError),
    /// The core or its database is unavailable.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(CompatError),
}

/// Errors of Charles' own paths.
#[derive(IntoResponses)]
pub enum LegacyErrors {
    /// A field is missing or wrong, or the body is not a JSON object; `field` names the first
    /// wrong field.
    #[response(status = 400)]
    BadRequest(LegacyError),
    /// No API key, or an unknown, expired or revoked one.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"switchbord\"`")))]
    Unauthenticated(LegacyError),
    /// The key's role may not do this.
    #[response(status = 403)]
    PermissionDenied(LegacyError),
    /// The phone number and the external reference id name two different contacts.
    #[response(status = 409)]
    Conflict(LegacyError),
    /// The body is larger than 1 MiB.
    #[response(status = 413)]
    PayloadTooLarge(LegacyError),
    /// More than the per-client-IP limit (100 per minute by default).
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    RateLimited(LegacyError),
    /// The core or its database is unavailable.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(LegacyError),
}

/// Errors of the Emarsys webhook (Charles' body shape; no rate limit).
#[derive(IntoResponses)]
pub enum EmarsysErrors {
    /// `event_name` is missing or contains whitespace, or a field has the wrong type.
    #[response(status = 400)]
    BadRequest(LegacyError),
    /// The `secret` query parameter (or the JWT) is missing or wrong.
    #[response(status = 401)]
    Unauthenticated(LegacyError),
    /// The contact's phone number and external reference id name two different contacts.
    #[response(status = 409)]
    Conflict(LegacyError),
    /// The body is larger than 1 MiB.
    #[response(status = 413)]
    PayloadTooLarge(LegacyError),
    /// The core or its database is unavailable.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(LegacyError),
}

/// Errors of the admin, webhook-configuration and Twenty routes.
#[derive(IntoResponses)]
pub enum AdminErrors {
    /// A field or query parameter is wrong; `details` names each.
    #[response(status = 400)]
    BadRequest(AdminError),
    /// No API key, or an unknown, expired or revoked one.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"switchbord\"`")))]
    Unauthenticated(AdminError),
    /// The key's role may not do this (webhook settings and the Twenty connection need admin).
    #[response(status = 403)]
    PermissionDenied(AdminError),
    /// The addressed object does not exist.
    #[response(status = 404)]
    NotFound(AdminError),
    /// The object already exists or changed meanwhile.
    #[response(status = 409)]
    Conflict(AdminError),
    /// The core or its database is unavailable.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(AdminError),
}

/// The body limit, on admin routes that read a body.
#[derive(IntoResponses)]
pub enum AdminBodyTooLarge {
    /// The body is larger than 1 MiB.
    #[response(status = 413)]
    PayloadTooLarge(AdminError),
}

/// Errors of Twenty's webhook.
#[derive(IntoResponses)]
pub enum TwentyWebhookErrors {
    /// The body is not a Twenty webhook, or no Twenty connection or webhook secret is set.
    #[response(status = 400)]
    BadRequest(AdminError),
    /// The signature, timestamp or nonce is missing, wrong, stale or replayed.
    #[response(status = 401)]
    Unauthenticated(AdminError),
    /// The body is larger than 1 MiB.
    #[response(status = 413)]
    PayloadTooLarge(AdminError),
    /// The core or its database is unavailable.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(AdminError),
}
