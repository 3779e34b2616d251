//! Who the client is: the socket peer, unless the peer is a trusted proxy, in which case the
//! nearest untrusted address in `X-Forwarded-For` (read from the right, since every proxy
//! appends the address it saw) is the client.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
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

/// The rate limiter's key: the client address stored by [`assign_client_ip`], or for IPv6 its
/// /64 network, which one subscriber holds whole: keyed by address, a client could take a new
/// bucket for every request.
#[derive(Debug, Clone, Copy)]
pub struct ClientIpKey;

impl KeyExtractor for ClientIpKey {
    type Key = IpAddr;

    fn extract<T>(&self, request: &http::Request<T>) -> Result<IpAddr, GovernorError> {
        request
            .extensions()
            .get::<ClientIp>()
            .map(|ip| rate_limit_bucket(ip.0))
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// `ip` for IPv4, its /64 network for IPv6.
fn rate_limit_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
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
    // Split as bytes: a byte that is not visible ASCII, which a client may write to the left of
    // what the proxies appended on the same line, must not void the whole line.
    let entries: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
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
fn forwarded_address(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim();
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
    fn a_clients_bytes_that_are_not_visible_ascii_do_not_void_the_proxies_entries() {
        let trusted = ["10.0.0.0/8".parse().expect("net")];
        let mut forwarded = HeaderMap::new();
        forwarded.insert(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes("é, 198.51.100.7, 10.1.1.1".as_bytes())
                .expect("a header value may carry such bytes"),
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &forwarded, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn an_ipv6_client_is_limited_by_its_64_network_and_an_ipv4_one_by_its_address() {
        let key = |client: &str| {
            let mut request = http::Request::new(());
            request.extensions_mut().insert(ClientIp(ip(client)));
            ClientIpKey.extract(&request).expect("a key")
        };
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("198.51.100.7"), key("198.51.100.8"));
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
