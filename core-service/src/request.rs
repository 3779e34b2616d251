//! Per-request context: the request id from gRPC metadata and the caller the authentication
//! layer attached.

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
    /// The id of a call with these headers. Decided once, where the call is first observed
    /// ([`crate::call_observer`]), which keeps it in the request's extensions: the log's spans,
    /// the audit trail and the outbox then name the same id.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let sent = headers
            .get(REQUEST_ID_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| Uuid::parse_str(text.trim()).ok());
        Self(sent.unwrap_or_else(Uuid::new_v4))
    }

    /// The id decided for `request`, or, for a request that did not pass the observer (as in
    /// unit tests), one decided from its metadata.
    fn of<T>(request: &Request<T>) -> Self {
        request
            .extensions()
            .get::<Self>()
            .copied()
            .unwrap_or_else(|| Self::from_headers(&request.metadata().clone().into_headers()))
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
            request_id: RequestId::of(request),
            caller,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_audited_under_the_id_it_was_observed_with() {
        let observed = RequestId(Uuid::new_v4());
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(REQUEST_ID_METADATA, "not-a-uuid".parse().expect("metadata"));
        request.extensions_mut().insert(observed);
        request.extensions_mut().insert(Caller::anonymous(
            "/switchbord.v1.ContactService/UpsertContact",
            None,
        ));
        let context = RequestContext::from_request(&request).expect("context");
        assert_eq!(context.request_id, observed);
    }
}
