//! Per-request context: the request id from gRPC metadata and the caller the authentication
//! layer attached.

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};
use uuid::Uuid;

use crate::access::Caller;

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

/// Who is calling, under which request id.
pub struct RequestContext {
    pub request_id: RequestId,
    pub caller: Caller,
}

impl RequestContext {
    pub fn from_request<T>(request: &Request<T>) -> Result<Self, Status> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| {
                tracing::error!(
                    "a request reached a service without passing the authentication layer"
                );
                Status::internal("internal error")
            })?;
        Ok(Self {
            request_id: RequestId::from_metadata(request.metadata()),
            caller,
        })
    }
}
