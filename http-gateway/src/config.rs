//! Configuration of the gateway, from flags and environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

/// Settings of the HTTP gateway. Each field is a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    /// Address the HTTP gateway listens on.
    #[arg(long, env = "SWITCHBORD_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Requests per minute per client IP on the compatibility and legacy paths; 0 turns the
    /// limit off (for benchmarks).
    #[arg(long, env = "SWITCHBORD_RATE_LIMIT_PER_MINUTE", default_value_t = 100)]
    pub rate_limit_per_minute: u32,

    /// Comma-separated IP addresses or CIDR ranges of reverse proxies whose X-Forwarded-For
    /// header is trusted. A forwarded header from any other peer is ignored.
    #[arg(
        long,
        env = "SWITCHBORD_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_network
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// Longest time a request may take, the core's answer included; after it the caller gets
    /// 504 (`deadline_exceeded`) and the call to the core is dropped. Each connection attempt
    /// to the core gives up after 5 s (503).
    #[arg(long, env = "SWITCHBORD_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

impl GatewayConfig {
    /// A configuration for running on `http_addr` with every other setting at its default.
    pub fn with_addr(http_addr: SocketAddr) -> Self {
        Self {
            http_addr,
            rate_limit_per_minute: 100,
            trusted_proxies: Vec::new(),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Parses `10.0.0.0/8` or a single address such as `10.0.0.1` (a /32 or /128 network).
pub fn parse_network(raw: &str) -> Result<IpNet, String> {
    let raw = raw.trim();
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{raw}` is neither an IP address nor a CIDR range"))
}
