//! The gateway's gRPC connection to the core, and the metadata every call carries.

use switchbord_api::v1::contact_service_client::ContactServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::request_id::RequestId;

/// Clients of the core's services over one shared HTTP/2 channel (cheap to clone).
#[derive(Clone)]
pub struct CoreClient {
    pub contacts: ContactServiceClient<Channel>,
}

impl CoreClient {
    /// Connects lazily, so the gateway can start before the core and reconnects on its own.
    pub fn connect_lazy(core_url: &str) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(core_url.to_owned())?
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            contacts: ContactServiceClient::new(channel),
        })
    }
}

/// Wraps `message` in a gRPC request that carries the caller's request id.
pub fn grpc_request<T>(message: T, request_id: RequestId) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = MetadataValue::try_from(request_id.to_string()) {
        request.metadata_mut().insert("x-request-id", value);
    }
    request
}
