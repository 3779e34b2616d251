//! Path parameters whose rejection answers in the route family's error shape, naming the
//! parameter, where axum's own `Path` answers a plain-text 400 that no Charles or compat client
//! can read.

use axum::extract::FromRequestParts;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::http::request::Parts;
use axum::response::Response;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::family::Family;
use crate::request_id::RequestId;

/// axum's `Path`, with the rejection rendered as the route's family renders any error. Routes
/// outside a family are the admin routes.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => {
                let family = parts
                    .extensions
                    .get::<Family>()
                    .copied()
                    .unwrap_or(Family::Admin);
                Err(problem(&rejection).render(family, RequestId::of(&parts.extensions)))
            }
        }
    }
}

/// The parameter at fault, when axum names it, and what is wrong with it.
fn problem(rejection: &PathRejection) -> ApiError {
    let PathRejection::FailedToDeserializePathParams(error) = rejection else {
        return ApiError::invalid_field("path", rejection.body_text());
    };
    match error.kind() {
        ErrorKind::InvalidUtf8InPathParam { key } => {
            ApiError::invalid_field(key.as_str(), "is not UTF-8 once percent-decoded")
        }
        ErrorKind::ParseErrorAtKey {
            key, expected_type, ..
        } => ApiError::invalid_field(key.as_str(), format!("must be a {expected_type}")),
        _ => ApiError::invalid_field("path", error.body_text()),
    }
}
