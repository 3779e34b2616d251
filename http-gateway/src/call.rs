//! What every call to the core carries from the HTTP request: request id, client address and
//! the caller's credential. The gateway only forwards the credential; the core decides.

use std::convert::Infallible;
use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use switchbord_api::auth::names_bearer;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

use crate::request_id::RequestId;

/// The most credential bytes forwarded as sent, all credentials together (both headers and an
/// Emarsys secret from the query): keys are about 60 bytes, and an Emarsys JWT a few hundred
/// (8 KiB leaves room for many claims). Metadata travels in HTTP/2 headers, which the core
/// bounds at 16 KiB in all; more failed the call as 500.
const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;
/// Forwarded instead of a credential past the budget (or one metadata cannot carry: a control
/// byte, which a header cannot hold either), in the header's own scheme: a credential that is no
/// key and no JWT, which the core refuses as it refuses any wrong one (401). Dropped, or without
/// the scheme, it would read as none, and a path open to anonymous callers would take the call.
/// (A value with bytes past ASCII is forwarded as sent; the core refuses it as unreadable.)
const UNFORWARDABLE_KEY: &str = "unforwardable-credential";
const UNFORWARDABLE_AUTHORIZATION: &str = "Bearer unforwardable-credential";

/// The client address, as decided by [`crate::client_ip`] and stored by the middleware.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

pub struct CallContext {
    pub request_id: RequestId,
    client_ip: Option<IpAddr>,
    api_key: Option<HeaderValue>,
    authorization: Option<HeaderValue>,
}

impl CallContext {
    fn from_parts(parts: &Parts) -> Self {
        let header = |headers: &HeaderMap, name| headers.get(name).cloned();
        Self {
            request_id: RequestId::of(&parts.extensions),
            client_ip: parts.extensions.get::<ClientIp>().map(|ip| ip.0),
            api_key: header(&parts.headers, "x-api-key"),
            authorization: header(&parts.headers, header::AUTHORIZATION.as_str()),
        }
    }

    /// Wraps `message` in a gRPC request with the request id, client address and credential.
    pub fn grpc_request<T>(&self, message: T) -> tonic::Request<T> {
        self.grpc_request_with_secret(message, None)
    }

    /// As [`CallContext::grpc_request`], also carrying `secret` (an Emarsys secret sent in the
    /// query) as `x-emarsys-secret`, within the same budget as the credential headers.
    pub fn grpc_request_with_secret<T>(
        &self,
        message: T,
        secret: Option<&[u8]>,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        if let Ok(value) = MetadataValue::try_from(self.request_id.to_string()) {
            metadata.insert("x-request-id", value);
        }
        if let Some(ip) = self.client_ip
            && let Ok(value) = MetadataValue::try_from(ip.to_string())
        {
            metadata.insert("x-switchbord-client-ip", value);
        }
        let bearer = self
            .authorization
            .as_ref()
            .map(HeaderValue::as_bytes)
            // Another scheme is no credential of ours: not forwarded, nor counted.
            .filter(|authorization| names_bearer(authorization));
        // A secret metadata cannot carry is left out, as before it shared the budget: the core
        // then checks the call's Bearer JWT, if any.
        let secret = secret.filter(|secret| AsciiMetadataValue::try_from(*secret).is_ok());
        let mut budget = MAX_CREDENTIAL_BYTES;
        for (name, value, stand_in) in [
            (
                "x-api-key",
                self.api_key.as_ref().map(HeaderValue::as_bytes),
                UNFORWARDABLE_KEY,
            ),
            ("authorization", bearer, UNFORWARDABLE_AUTHORIZATION),
            ("x-emarsys-secret", secret, UNFORWARDABLE_KEY),
        ] {
            let Some(value) = value else {
                continue;
            };
            let as_sent = (value.len() <= budget)
                .then(|| AsciiMetadataValue::try_from(value).ok())
                .flatten();
            let forwarded = match as_sent {
                Some(as_sent) => {
                    budget -= value.len();
                    as_sent
                }
                None => AsciiMetadataValue::from_static(stand_in),
            };
            metadata.insert(name, forwarded);
        }
        request
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CallContext {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_parts(parts))
    }
}

impl CallContext {
    /// The response of an admin route: the JSON on success, else the error in the admin body
    /// shape, both carrying this call's request id.
    pub fn admin_response(
        &self,
        result: Result<serde_json::Value, crate::error::ApiError>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        match result {
            Ok(body) => axum::Json(body).into_response(),
            Err(error) => error.render(crate::family::Family::Admin, self.request_id),
        }
    }
}
