//! The one mapping from gRPC status codes to HTTP, and the error bodies of each route family.
//!
//! gRPC → HTTP follows grpc-gateway's table. Field violations that the core sends as a
//! `google.rpc.BadRequest` detail are listed in the body, so the caller learns which field is
//! wrong. A 5xx never carries internal detail.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};
use switchbord_api::violations;
use tonic::Code;
use tonic_types::StatusExt;

use crate::family::Family;
use crate::request_id::RequestId;

/// HTTP status for a gRPC code (grpc-gateway's table).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// One wrong field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

/// An error on its way to an HTTP client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code, for example `invalid_argument`.
    pub code: &'static str,
    pub message: String,
    pub violations: Vec<Violation>,
    /// Seconds the client should wait before retrying (429, 503).
    pub retry_after: Option<u64>,
    /// The gRPC code the admin body reports.
    pub grpc_code: Code,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            violations: Vec::new(),
            retry_after: None,
            grpc_code: match status {
                StatusCode::BAD_REQUEST => Code::InvalidArgument,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => {
                    Code::ResourceExhausted
                }
                StatusCode::NOT_FOUND => Code::NotFound,
                _ => Code::Unknown,
            },
        }
    }

    /// A 400 naming `field`.
    pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::invalid_fields(vec![Violation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// A 400 naming every field in `violations`, as many as [`violations::keep_listed`] keeps.
    pub fn invalid_fields(violations: Vec<Violation>) -> Self {
        Self::invalid_fields_and_more(violations, 0)
    }

    /// As [`ApiError::invalid_fields`], for a caller that found `unlisted` more violations
    /// than it kept: the last one listed says how many are not.
    pub fn invalid_fields_and_more(mut violations: Vec<Violation>, unlisted: usize) -> Self {
        violations::keep_listed(&mut violations, unlisted, |violation| {
            &mut violation.description
        });
        let message = summary(&violations);
        Self {
            violations,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
        }
    }

    /// The core's violations of `field` named `as_sent` instead: a value the gateway read from
    /// a header the core knows by its field's name (`idempotency_key`, sent as
    /// `Idempotency-Key`).
    pub fn naming(mut self, field: &str, as_sent: &str) -> Self {
        let mut renamed = false;
        for violation in &mut self.violations {
            if violation.field == field {
                as_sent.clone_into(&mut violation.field);
                renamed = true;
            }
        }
        if renamed {
            self.message = summary(&self.violations);
        }
        self
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self {
            grpc_code: Code::Unimplemented,
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take this method (see Allow)",
            )
        }
    }

    /// The request took longer than the gateway waits for the core.
    pub fn timed_out(limit: std::time::Duration) -> Self {
        Self {
            grpc_code: Code::DeadlineExceeded,
            ..Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_exceeded",
                format!(
                    "no answer within {}; a write may or may not have been applied",
                    humantime::format_duration(limit)
                ),
            )
        }
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests; retry in {retry_after} s"),
            )
        }
    }

    /// Renders the error in the body shape of `family`, carrying `request_id`.
    pub fn render(self, family: Family, request_id: RequestId) -> Response {
        let details: Vec<Json> = self
            .violations
            .iter()
            .map(
                |violation| json!({"field": violation.field, "description": violation.description}),
            )
            .collect();
        let field = self
            .violations
            .first()
            .map(|violation| violation.field.clone());
        let body = match family {
            Family::Compat => json!({
                "success": false,
                "mode": "compatibility",
                "error": {
                    "code": self.code,
                    "message": self.message,
                    "field": field,
                    "details": details,
                },
                "request_id": request_id.to_string(),
            }),
            Family::Admin => json!({
                "code": self.grpc_code as i32,
                "message": self.message,
                "details": details,
                "request_id": request_id.to_string(),
            }),
            Family::Legacy => json!({
                "success": false,
                "status": "error",
                "message": self.message,
                "code": self.code,
                "field": field,
                "errors": details,
                "request_id": request_id.to_string(),
            }),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="switchbord""#),
            );
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let http = http_status(status.code());
        let violations: Vec<Violation> = status
            .get_details_bad_request()
            .map(|bad_request| {
                bad_request
                    .field_violations
                    .into_iter()
                    .map(|violation| Violation {
                        field: violation.field,
                        description: violation.description,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let message = match status.code() {
            Code::Unavailable => "the service is temporarily unavailable; retry later".to_owned(),
            _ if http.is_server_error() => "internal error".to_owned(),
            _ if !violations.is_empty() => summary(&violations),
            _ => status.message().to_owned(),
        };
        if http.is_server_error() {
            tracing::warn!(code = ?status.code(), message = status.message(), "core call failed");
        }
        Self {
            status: http,
            code: code_name(status.code()),
            message,
            violations,
            retry_after: (status.code() == Code::Unavailable).then_some(1),
            grpc_code: status.code(),
        }
    }
}

fn summary(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ")
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_gateway_table() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::DataLoss, 500),
        ];
        for (code, expected) in table {
            assert_eq!(http_status(code).as_u16(), expected, "{code:?}");
        }
    }
}
