//! Per-request context taken from gRPC metadata.

use tonic::metadata::MetadataMap;
use uuid::Uuid;

/// Metadata key that carries the caller's request id (the gateway's `X-Request-Id`).
pub const REQUEST_ID_METADATA: &str = "x-request-id";

/// The id a request is logged and audited under: the caller's when it sent a valid UUID, else
/// a fresh one, so that every write can be traced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(pub Uuid);

impl RequestId {
    pub fn from_metadata(metadata: &MetadataMap) -> Self {
        let sent = metadata
            .get(REQUEST_ID_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| Uuid::parse_str(text.trim()).ok());
        Self(sent.unwrap_or_else(Uuid::new_v4))
    }
}
