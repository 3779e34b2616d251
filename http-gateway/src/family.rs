//! Route families: each answers errors in the body shape its callers were built for.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use switchbord_telemetry as telemetry;

use crate::error::ApiError;
use crate::rate_limit::RateLimited;
use crate::request_id::RequestId;

/// Who calls a route, and so which body shape it answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `/compat/*`: `{"success": false, "mode": "compatibility", "error": {…}}`.
    Compat,
    /// Charles' own paths: `{"status": "error", "message": …}`.
    Legacy,
    /// New REST routes (admin): grpc-gateway's `{"code", "message", "details"}`.
    Admin,
}

impl Family {
    /// The family's name in metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::Compat => "compat",
            Self::Legacy => "legacy",
            Self::Admin => "admin",
        }
    }
}

/// Middleware around a family's routes: tells the extractors the family (for
/// [`crate::path::Path`]'s rejections), and rewrites a rate-limit rejection (produced by the
/// limiter, which knows nothing of families) into the family's error shape.
pub async fn render_rejections(
    State(family): State<Family>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(family);
    let request_id = request.extensions().get::<RequestId>().copied();
    let response = next.run(request).await;
    match (response.extensions().get::<RateLimited>(), request_id) {
        (Some(rejection), Some(request_id)) => {
            metrics::counter!(telemetry::RATE_LIMITED, "family" => family.label()).increment(1);
            ApiError::rate_limited(rejection.retry_after).render(family, request_id)
        }
        _ => response,
    }
}
