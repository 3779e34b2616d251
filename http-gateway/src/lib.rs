//! The Switchbord HTTP/JSON gateway.
//!
//! Every route decodes JSON, calls the core over gRPC, and shapes the answer the way its caller
//! expects (Charles-compatible bodies on the legacy and compat paths). The gateway has no
//! database and no business rules: validation, identity and storage belong to the core.
//! `google.rpc` status codes become HTTP statuses in one place, [`error`].

pub mod config;
pub mod error;

mod admin;
mod body;
mod call;
mod client_ip;
mod contacts;
mod core_client;
mod decode;
mod emarsys;
mod family;
mod flows;
mod journeys;
mod openapi;
mod operations;
mod page;
mod path;
mod query;
mod rate_limit;
mod request_id;
mod routes;
mod server;
mod time;
mod twenty;
mod webhooks;

pub use config::GatewayConfig;
pub use request_id::RequestId;
pub use routes::ServedRoute;
pub use server::{GatewayServer, GatewayStartupError, served_routes};
