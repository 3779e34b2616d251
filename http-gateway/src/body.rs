//! Reading request bodies the way old upstreams send them.
//!
//! The content type is not checked: Charles-era senders post JSON as `text/plain` or with no
//! content type at all, so every body is read as JSON. It must be a JSON object of at most
//! [`MAX_BODY_BYTES`].

use axum::body::{Body, Bytes};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value as Json};

use crate::error::ApiError;

/// Largest accepted body (1 MiB); larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Reads `body` as a JSON object.
pub async fn read_json_object(body: Body) -> Result<Map<String, Json>, ApiError> {
    read_json_bytes(body).await.map(|(_, object)| object)
}

/// Reads `body` as a JSON object, keeping the bytes as received.
pub async fn read_json_bytes(body: Body) -> Result<(Bytes, Map<String, Json>), ApiError> {
    let bytes = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|error| {
            if error.downcast_ref::<LengthLimitError>().is_some() {
                ApiError::payload_too_large(MAX_BODY_BYTES)
            } else {
                ApiError::invalid_field("body", "could not be read")
            }
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_field(
            "body",
            "is empty; send a JSON object",
        ));
    }
    match serde_json::from_slice::<Json>(&bytes) {
        Ok(Json::Object(object)) => Ok((bytes, object)),
        Ok(_) => Err(ApiError::invalid_field("body", "must be a JSON object")),
        Err(error) => Err(ApiError::invalid_field(
            "body",
            format!(
                "is not valid JSON (line {}, column {})",
                error.line(),
                error.column()
            ),
        )),
    }
}
