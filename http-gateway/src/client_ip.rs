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

/// The client address of a request that arrived from `peer`: the entries of
/// `X-Forwarded-For` are read from the right, past trusted proxies, to the first untrusted one.
/// An entry that is not an address (a client can write anything to the left of what the proxies
/// appended) ends the walk at the last proxy that was read: it must not discard the entries
/// the proxies wrote, or a client could make itself look like its proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    let mut nearest = peer;
    for entry in entries.into_iter().rev() {
        let Some(ip) = forwarded_address(entry) else {
            return nearest;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        nearest = ip;
    }
    nearest
}

/// One `X-Forwarded-For` entry as proxies write it: `203.0.113.9`, `203.0.113.9:4711`,
/// `2001:db8::1` or `[2001:db8::1]:443`.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|socket| socket.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse().ok())
        })?;
    Some(ip.to_canonical())
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
    fn a_clients_garbage_does_not_hide_what_the_proxies_appended() {
        let trusted = ["10.0.0.0/8".parse().expect("net")];
        for forwarded in ["x, 198.51.100.7", "unknown,198.51.100.7, 10.1.1.1"] {
            assert_eq!(
                client_ip(ip("10.0.0.2"), &headers(forwarded), &trusted),
                ip("198.51.100.7"),
                "{forwarded}"
            );
        }
        // Garbage that a proxy wrote: the nearest proxy is all that is known.
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                &headers("198.51.100.7, unknown, 10.1.1.1"),
                &trusted
            ),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn entries_with_ports_and_brackets_are_addresses() {
        let trusted = ["10.0.0.0/8".parse().expect("net")];
        for (forwarded, client) in [
            ("198.51.100.7:4711", "198.51.100.7"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::2]", "2001:db8::2"),
            ("2001:db8::3, 10.1.1.1:80", "2001:db8::3"),
        ] {
            assert_eq!(
                client_ip(ip("10.0.0.2"), &headers(forwarded), &trusted),
                ip(client),
                "{forwarded}"
            );
        }
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
