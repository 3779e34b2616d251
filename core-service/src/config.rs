//! Configuration of the core, from flags and environment variables.

use std::net::SocketAddr;

use phonenumber::country;

/// Settings of the gRPC core. Each field is a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct CoreConfig {
    /// Address the gRPC server listens on.
    #[arg(long, env = "SWITCHBORD_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Region (ISO 3166-1 alpha-2, for example DE) in which national phone numbers that start
    /// with 0 are read. Unset: such numbers are refused, since their country is unknown.
    #[arg(long, env = "SWITCHBORD_DEFAULT_REGION", value_parser = parse_region)]
    pub default_region: Option<country::Id>,

    /// Largest number of pooled PostgreSQL connections.
    #[arg(long, env = "SWITCHBORD_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
}

impl CoreConfig {
    /// A configuration for running on `grpc_addr` with every other setting at its default.
    pub fn with_addr(grpc_addr: SocketAddr) -> Self {
        Self {
            grpc_addr,
            default_region: None,
            db_pool_size: 16,
        }
    }
}

/// Parses a region code such as `DE`, case-insensitively.
pub fn parse_region(raw: &str) -> Result<country::Id, String> {
    raw.trim()
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("`{raw}` is not an ISO 3166-1 alpha-2 region code such as DE"))
}
