//! Route families: each answers errors in the body shape its callers were built for.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Duration;

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
    /// The family whose callers use `path`: Charles' paths and `/compat/*` by their prefixes,
    /// every other path the admin REST shape.
    pub fn of_path(path: &str) -> Self {
        if path.starts_with("/compat/") {
            Self::Compat
        } else if path.starts_with("/api/v1beta/")
            || path.starts_with("/webhooks/v0/")
            || path.starts_with("/api/v0/webhooks/incoming/emarsys/")
        {
            Self::Legacy
        } else {
            Self::Admin
        }
    }

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

/// Middleware over every route (inside the request metrics): a request that takes longer than
/// `limit` (a core that stalls) is answered 504 in its family's shape, and its call to the core dropped, rather than
/// held for as long as the core takes.
pub async fn answer_within(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let family = Family::of_path(request.uri().path());
    let request_id = RequestId::of(request.extensions());
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout = ?limit, "request timed out");
            ApiError::timed_out(limit).render(family, request_id)
        }
    }
}

/// Middleware over the whole router: a path that no route serves, or a method its route does
/// not take, gets the router's empty 404 or 405; this answers it in the body shape of the
/// family the path belongs to (a Charles client gets `{"status": "error", …}`), keeping the
/// 405's `Allow`. Responses that carry a body of their own are left as they are.
pub async fn render_unrouted(request: Request, next: Next) -> Response {
    let family = Family::of_path(request.uri().path());
    let request_id = RequestId::of(request.extensions());
    let response = next.run(request).await;
    let error = match response.status() {
        _ if response.headers().contains_key(header::CONTENT_TYPE) => return response,
        StatusCode::NOT_FOUND => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no route serves this path",
        ),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(),
        _ => return response,
    };
    let mut rendered = error.render(family, request_id);
    if let Some(allow) = response.headers().get(header::ALLOW) {
        rendered.headers_mut().insert(header::ALLOW, allow.clone());
    }
    rendered
}
