//! Where webhooks may go: https URLs whose addresses are public. Checked when an endpoint is
//! saved and again on every connection, on the addresses DNS actually returned, so that a name
//! that later resolves somewhere private (DNS rebinding) is still refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The longest URL an endpoint (or Twenty's base URL) may have: what browsers and most servers
/// take.
pub const MAX_URL_LEN: usize = 2048;

/// What the operator allows (both off in production; on for development and tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct UrlPolicy {
    pub allow_private: bool,
    pub allow_http: bool,
}

/// Whether two stored URLs reach the same origin (scheme, host and port). Credentials kept for
/// one origin (an endpoint's custom headers, Twenty's API key) must not follow a URL to another
/// unless they are sent again.
pub fn same_origin(stored: &str, new: &str) -> bool {
    match (Url::parse(stored), Url::parse(new)) {
        (Ok(stored), Ok(new)) => stored.origin() == new.origin(),
        _ => false,
    }
}

impl UrlPolicy {
    /// [`UrlPolicy::check_url`] for a URL being saved, which is also bounded in length as
    /// stored (parsing percent-encodes what is not ASCII): every delivery sends it and every
    /// list answers it. Not checked when sending, so that a URL saved before the bound still
    /// delivers.
    pub fn check_new_url(&self, raw: &str) -> Result<Url, String> {
        let url = self.check_url(raw)?;
        if url.as_str().len() > MAX_URL_LEN {
            return Err(format!("must be at most {MAX_URL_LEN} characters"));
        }
        Ok(url)
    }

    /// Parses and checks an endpoint URL's form, and its address when the host is an IP.
    pub fn check_url(&self, raw: &str) -> Result<Url, String> {
        let url = Url::parse(raw.trim()).map_err(|_| "must be an absolute URL".to_owned())?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err("must use https".to_owned()),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials; use a custom header".to_owned());
        }
        let host = url
            .host_str()
            .ok_or_else(|| "must have a host".to_owned())?;
        if let Some(ip) = literal_ip(host) {
            self.check_ip(ip)?;
        }
        Ok(url)
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if !self.allow_private && is_forbidden(ip) {
            return Err(format!("points at a non-public address ({ip})"));
        }
        Ok(())
    }

    /// Resolves the URL's host now and refuses it when no public address comes back.
    pub async fn check_resolves(&self, url: &Url) -> Result<(), String> {
        let host = url.host_str().unwrap_or_default();
        if literal_ip(host).is_some() || self.allow_private {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| format!("host {host} does not resolve"))?
            .collect();
        // Which address is not said: the answer would map internal names for the caller.
        if addresses.iter().any(|addr| is_forbidden(addr.ip())) {
            return Err(format!("host {host} resolves to a non-public address"));
        }
        Ok(())
    }
}

fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Loopback, private, link-local (including cloud metadata at 169.254.169.254), CGNAT,
/// multicast, unspecified, broadcast, reserved and documentation ranges, for IPv4 and IPv6
/// (an address that carries an IPv4 one is judged by it; local-use NAT64 and Teredo are refused).
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..=127).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return forbidden_v4(v4);
    }
    let segments = ip.segments();
    ip.is_multicast()
        || (segments[0] == 0x64 && segments[1] == 0xff9b && segments[2] == 1) // local-use NAT64 64:ff9b:1::/48
        || (segments[0] == 0x2001 && segments[1] == 0) // Teredo 2001::/32 (its IPv4 part is obfuscated)
        || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
}

/// The IPv4 address inside an IPv6 one that carries it: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d` (which also covers `::` and `::1`), NAT64 `64:ff9b::/96` and
/// 6to4 `2002::/16`. Such an address reaches that IPv4 host, so it is judged as that host.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let v4 = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff, high, low]
        | [0, 0, 0, 0, 0, 0, high, low]
        | [0x64, 0xff9b, 0, 0, 0, 0, high, low]
        | [0x2002, high, low, ..] => Some(v4(high, low)),
        _ => None,
    }
}

/// A resolver for the delivery client that drops forbidden addresses and fails when none is
/// left, so the check applies to the address actually connected to.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: UrlPolicy,
}

impl GuardedResolver {
    pub fn new(policy: UrlPolicy) -> Arc<Self> {
        Arc::new(Self { policy })
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| policy.check_ip(addr.ip()).is_ok())
                .collect();
            if allowed.is_empty() {
                return Err(
                    format!("blocked: {host} resolves only to non-public addresses").into(),
                );
            }
            let addresses: Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_non_public_range_is_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "198.18.0.1",
            "::127.0.0.1",
            "::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(
                is_forbidden(ip.parse().expect("ip")),
                "{ip} should be forbidden"
            );
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(
                !is_forbidden(ip.parse().expect("ip")),
                "{ip} should be allowed"
            );
        }
    }

    #[test]
    fn urls_must_be_https_public_and_without_credentials() {
        let strict = UrlPolicy::default();
        assert!(strict.check_url("https://example.com/hook").is_ok());
        assert!(strict.check_url("http://example.com/hook").is_err());
        assert!(strict.check_url("https://127.0.0.1/hook").is_err());
        assert!(strict.check_url("https://[::1]/hook").is_err());
        assert!(strict.check_url("https://user:pw@example.com/").is_err());
        assert!(strict.check_url("ftp://example.com/").is_err());
        let open = UrlPolicy {
            allow_private: true,
            allow_http: true,
        };
        assert!(open.check_url("http://127.0.0.1:8080/hook").is_ok());
    }
}
