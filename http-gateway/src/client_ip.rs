//! Who the client is: the socket peer, unless the peer is a trusted proxy, in which case the
//! nearest untrusted address in `X-Forwarded-For` (read from the right, since every proxy
//! appends the address it saw) is the client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;
use tower_governor::GovernorError;
use tower_governor::key_extractor::KeyExtractor;

use crate::call::ClientIp;

/// Middleware: decides the client address once per request and stores it as [`ClientIp`], for
/// the rate limiter and for the audit trail in the core.
pub async fn assign_client_ip(
    State(trusted_proxies): State<Arc<[IpNet]>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    if let Some(peer) = peer {
        let client = client_ip(peer, request.headers(), &trusted_proxies);
        request.extensions_mut().insert(ClientIp(client));
    }
    next.run(request).await
}

/// The rate limiter's key: the client address stored by [`assign_client_ip`].
#[derive(Debug, Clone, Copy)]
pub struct ClientIpKey;

impl KeyExtractor for ClientIpKey {
    type Key = IpAddr;

    fn extract<T>(&self, request: &http::Request<T>) -> Result<IpAddr, GovernorError> {
        request
            .extensions()
            .get::<ClientIp>()
            .map(|ip| ip.0)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// The client address of a request that arrived from `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|entry| entry.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()))
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", forwarded.parse().expect("valid header"));
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("valid ip")
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = ["10.0.0.0/8".parse().expect("net")];
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_peer_yields_the_nearest_untrusted_forwarded_address() {
        let trusted = ["10.0.0.0/8".parse().expect("net")];
        let forwarded = headers("6.6.6.6, 198.51.100.7, 10.1.1.1");
        assert_eq!(
            client_ip(ip("10.0.0.2"), &forwarded, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn garbage_forwarded_header_falls_back_to_the_peer() {
        let trusted = ["10.0.0.0/8".parse().expect("net")];
        assert_eq!(
            client_ip(ip("10.0.0.2"), &headers("not-an-ip"), &trusted),
            ip("10.0.0.2")
        );
    }
}
