//! `X-Request-Id`: kept when the caller sends a UUID, generated otherwise, returned on every
//! response and forwarded to the core, so that one id follows a request through logs and audit.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(pub Uuid);

impl RequestId {
    /// The id [`assign_request_id`] gave the request; a fresh one for a request it did not see.
    pub fn of(extensions: &axum::http::Extensions) -> Self {
        extensions
            .get::<Self>()
            .copied()
            .unwrap_or_else(|| Self(Uuid::new_v4()))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

/// Middleware: assigns the request id before anything else runs and stamps it on the response.
pub async fn assign_request_id(mut request: Request, next: Next) -> Response {
    let sent = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| Uuid::parse_str(text.trim()).ok());
    let id = RequestId(sent.unwrap_or_else(Uuid::new_v4));
    request.extensions_mut().insert(id);
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path()
    );
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
