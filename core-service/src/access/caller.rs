//! Who is calling: attached to each request by the authentication layer.

use std::net::IpAddr;

use uuid::Uuid;

use super::role::Role;

/// The authenticated (or, on opted-out legacy paths, anonymous) caller of one RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: Option<Uuid>,
    pub key_name: Option<String>,
    pub role: Option<Role>,
    /// The RPC being called, `/package.Service/Method`.
    pub rpc: String,
    /// The client's address: the one the gateway saw, else the gRPC peer.
    pub source_ip: Option<IpAddr>,
}

impl Caller {
    /// The caller of a public RPC or of an opted-out legacy ingestion path.
    pub fn anonymous(rpc: &str, source_ip: Option<IpAddr>) -> Self {
        Self {
            key_id: None,
            key_name: None,
            role: None,
            rpc: rpc.to_owned(),
            source_ip,
        }
    }

    /// Work done by the service itself (bootstrap, command-line administration).
    pub fn system(action: &str) -> Self {
        Self::anonymous(action, None)
    }
}
